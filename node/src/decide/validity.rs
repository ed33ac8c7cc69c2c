//! 有効コール判定: whether a finished call counts for the advertiser.
//!
//! Order of the rules: a repeat call from the same caller to the same advertiser
//! within the duplicate window is `invalid_duplicate` whatever its length; otherwise an
//! answered call with talk time at or above the threshold is `valid`; everything else
//! (short calls, and calls never answered) is `invalid_short`. Withheld callers are
//! never duplicates: there is no number to compare.

use tsunagu_store::{CallResult, Validity, ValidityRule};

/// The facts validity is judged on.
pub struct Facts {
    pub result: CallResult,
    pub talk_seconds: u32,
    /// The caller has a number (not anonymous).
    pub caller_known: bool,
    /// An earlier call from this caller to this advertiser started within the window.
    pub earlier_call_in_window: bool,
}

pub fn judge(rule: &ValidityRule, f: &Facts) -> Validity {
    if rule.duplicate_window_seconds > 0 && f.caller_known && f.earlier_call_in_window {
        Validity::InvalidDuplicate
    } else if f.result == CallResult::Answered && f.talk_seconds >= rule.min_talk_seconds {
        Validity::Valid
    } else {
        Validity::InvalidShort
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CallResult::*;
    use Validity::*;

    #[test]
    fn rules() {
        let rule = ValidityRule {
            min_talk_seconds: 10,
            duplicate_window_seconds: 86400,
        };
        let no_dup = ValidityRule {
            min_talk_seconds: 10,
            duplicate_window_seconds: 0,
        };
        let cases: &[(&ValidityRule, CallResult, u32, bool, bool, Validity)] = &[
            (&rule, Answered, 10, true, false, Valid),
            (&rule, Answered, 9, true, false, InvalidShort),
            (&rule, Answered, 600, true, true, InvalidDuplicate),
            (&rule, NoAnswer, 0, true, false, InvalidShort),
            (&rule, Busy, 0, true, true, InvalidDuplicate),
            (&rule, Answered, 60, false, true, Valid), // anonymous: never a duplicate
            (&no_dup, Answered, 60, true, true, Valid), // window 0: no duplicate check
            (&ValidityRule::default(), Answered, 0, true, false, Valid),
            (
                &ValidityRule::default(),
                Cancelled,
                0,
                true,
                false,
                InvalidShort,
            ),
        ];
        for (rule, result, talk, known, earlier, want) in cases {
            let facts = Facts {
                result: *result,
                talk_seconds: *talk,
                caller_known: *known,
                earlier_call_in_window: *earlier,
            };
            assert_eq!(
                judge(rule, &facts),
                *want,
                "{result:?} talk={talk} known={known} earlier={earlier}"
            );
        }
    }
}
