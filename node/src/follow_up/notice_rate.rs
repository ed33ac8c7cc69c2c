//! How many notices (e-mail and SMS to the advertiser's `notify` recipients) one
//! tracking number causes per hour: an autodialer making short unanswered calls to a
//! free-phone number costs its caller nothing, and each call sent up to ten SMS and ten
//! e-mails (a review). Past `notify.notices_per_number_per_hour` in the current clock
//! hour a call's notices are withheld and counted; the call is still logged and its
//! webhooks and GA4 conversion still go.
//!
//! Pure state with the time as an argument; the call-log writer owns it (one thread).
//! Per node: a cluster of N nodes sends at most N times the setting.

use std::collections::HashMap;

const HOUR_MS: i64 = 3_600_000;

#[derive(Debug)]
pub struct NoticeRate {
    per_hour: u32,
    /// The clock hour `counts` is of.
    hour: i64,
    /// Calls given notices this hour, by tracking number: at most one entry per
    /// number that had a notice this hour (the numbers are the operators' own).
    counts: HashMap<String, u32>,
}

impl NoticeRate {
    /// `per_hour` 0: no limit.
    pub fn new(per_hour: u32) -> NoticeRate {
        NoticeRate {
            per_hour,
            hour: i64::MIN,
            counts: HashMap::new(),
        }
    }

    /// Whether a call to `number` at `now_ms` may send its notices (and counts it).
    pub fn allow(&mut self, number: &str, now_ms: i64) -> bool {
        if self.per_hour == 0 {
            return true;
        }
        let hour = now_ms.div_euclid(HOUR_MS);
        if hour != self.hour {
            self.hour = hour;
            self.counts.clear();
        }
        match self.counts.get_mut(number) {
            Some(n) if *n >= self.per_hour => false,
            Some(n) => {
                *n += 1;
                true
            }
            None => {
                self.counts.insert(number.to_string(), 1);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (number, time, allowed) in order, two a number an hour.
    #[test]
    fn two_calls_a_number_an_hour() {
        let mut r = NoticeRate::new(2);
        let rows: &[(&str, i64, bool)] = &[
            ("0501", 0, true),
            ("0501", 1_000, true),
            ("0501", 2_000, false),
            ("0502", 2_000, true),
            ("0501", HOUR_MS - 1, false),
            ("0501", HOUR_MS, true),
            ("0501", HOUR_MS + 1, true),
            ("0501", HOUR_MS + 2, false),
            // A clock that steps back to an earlier hour starts that hour afresh.
            ("0501", 5, true),
        ];
        for (i, (number, at, want)) in rows.iter().enumerate() {
            assert_eq!(r.allow(number, *at), *want, "row {i}");
        }
        let mut off = NoticeRate::new(0);
        assert!((0..1000).all(|i| off.allow("0501", i)));
    }
}
