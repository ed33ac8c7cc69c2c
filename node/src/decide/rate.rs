//! A token bucket for per-trunk call-rate caps with shaping: `rate` tokens per second,
//! holding at most one second's worth, so a trunk may burst to its cap. A call over the
//! rate may borrow a future token if its turn comes within the shaping delay: it then
//! waits that long instead of being refused (a short queue before 503).

use std::time::{Duration, Instant};

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

    /// Reserves a token at `now`: `Some(wait)` if the call may go after `wait` (zero
    /// when a token is there), `None` if its turn is further away than `max_wait`.
    pub fn reserve(&mut self, now: Instant, max_wait: Duration) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Some(Duration::ZERO);
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
        if wait <= max_wait {
            self.tokens -= 1.0;
            Some(wait)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_to_the_cap_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        let now = |ms| Some(Duration::from_millis(ms));
        let taken = (0..15)
            .filter(|_| b.reserve(t0, Duration::ZERO).is_some())
            .count();
        assert_eq!(taken, 10, "one second's worth of burst");
        assert_eq!(
            b.reserve(t0 + Duration::from_millis(50), Duration::ZERO),
            None,
            "half a token after 50 ms"
        );
        assert_eq!(
            b.reserve(t0 + Duration::from_millis(100), Duration::ZERO),
            now(0),
            "one token after 100 ms"
        );
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..15)
                .filter(|_| b.reserve(later, Duration::ZERO).is_some())
                .count(),
            10,
            "never more than the cap"
        );
    }

    #[test]
    fn shaping_delays_calls_whose_turn_is_near() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        for _ in 0..10 {
            assert_eq!(
                b.reserve(t0, Duration::from_millis(250)),
                Some(Duration::ZERO)
            );
        }
        // Each further call waits one more tenth of a second, up to the shaping limit.
        let waits: Vec<Option<u128>> = (0..4)
            .map(|_| {
                b.reserve(t0, Duration::from_millis(250))
                    .map(|d| d.as_millis())
            })
            .collect();
        assert_eq!(waits, vec![Some(100), Some(200), None, None]);
        // Time pays the debt back: two tokens were borrowed; 250 ms later half a token is
        // there, so the next call waits 50 ms.
        assert_eq!(
            b.reserve(t0 + Duration::from_millis(250), Duration::from_millis(250))
                .map(|d| d.as_millis()),
            Some(50)
        );
    }
}
