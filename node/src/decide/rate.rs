//! A token bucket for per-trunk call-rate caps: `rate` tokens per second, holding at
//! most one second's worth, so a trunk may burst to its cap but not beyond.

use std::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    /// Takes a token if one is available at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_to_the_cap_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        let taken = (0..15).filter(|_| b.try_take(t0)).count();
        assert_eq!(taken, 10, "one second's worth of burst");
        assert!(
            !b.try_take(t0 + Duration::from_millis(50)),
            "half a token after 50 ms"
        );
        assert!(
            b.try_take(t0 + Duration::from_millis(100)),
            "one token after 100 ms"
        );
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..15).filter(|_| b.try_take(later)).count(),
            10,
            "never more than the cap"
        );
    }
}
