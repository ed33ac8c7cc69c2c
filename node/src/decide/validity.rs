//! 有効コール判定: whether a finished call counts for the advertiser.
//!
//! Order of the rules: a repeat call from the same caller to the same advertiser
//! within the duplicate window is `invalid_duplicate` whatever its length; otherwise an
//! answered call with talk time at or above the threshold is `valid`; everything else
//! (short calls, and calls never answered) is `invalid_short`. Withheld callers are
//! never duplicates: there is no number to compare. A rule that requires an IVR key
//! or a judgement key makes a call without it `invalid_no_digit` (after the
//! duplicate check, before talk time); the IVR key only of a caller played the menu.

use tsunagu_store::{CallResult, Validity, ValidityRule};

/// The facts validity is judged on.
pub struct Facts {
    pub result: CallResult,
    pub talk_seconds: u32,
    /// The caller has a number (not anonymous).
    pub caller_known: bool,
    /// An earlier call from this caller to this advertiser started within the window.
    pub earlier_call_in_window: bool,
    /// The caller was played the IVR menu (a caller closed hours forwarded, or whose
    /// audio the menu cannot play to, never was): only then is its key required.
    pub ivr_offered: bool,
    /// The caller chose a route of the IVR menu with a key (`decide::ivr::chose_by_key`).
    pub ivr_digit: bool,
    /// The callee pressed a judgement key.
    pub judgement_digit: bool,
}

pub fn judge(rule: &ValidityRule, f: &Facts) -> Validity {
    if rule.duplicate_window_seconds > 0 && f.caller_known && f.earlier_call_in_window {
        Validity::InvalidDuplicate
    } else if (rule.require_ivr_digit && f.ivr_offered && !f.ivr_digit)
        || (rule.require_judgement_digit && !f.judgement_digit)
    {
        Validity::InvalidNoDigit
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
            ..ValidityRule::default()
        };
        let no_dup = ValidityRule {
            min_talk_seconds: 10,
            duplicate_window_seconds: 0,
            ..ValidityRule::default()
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
                ivr_offered: true,
                ivr_digit: false,
                judgement_digit: false,
            };
            assert_eq!(
                judge(rule, &facts),
                *want,
                "{result:?} talk={talk} known={known} earlier={earlier}"
            );
        }
    }

    #[test]
    fn rules_requiring_a_key() {
        let ivr = ValidityRule {
            min_talk_seconds: 10,
            duplicate_window_seconds: 86400,
            require_ivr_digit: true,
            ..ValidityRule::default()
        };
        let judged = ValidityRule {
            require_judgement_digit: true,
            ..ValidityRule::default()
        };
        // (rule, talk, earlier call, ivr key, judgement key) → validity
        let cases: &[(&ValidityRule, u32, bool, bool, bool, Validity)] = &[
            (&ivr, 60, false, true, false, Valid),
            (&ivr, 60, false, false, false, InvalidNoDigit),
            (&ivr, 60, true, false, false, InvalidDuplicate),
            (&ivr, 5, false, true, false, InvalidShort),
            (&judged, 60, false, false, true, Valid),
            (&judged, 60, false, true, false, InvalidNoDigit),
        ];
        for (rule, talk, earlier, ivr_digit, judgement_digit, want) in cases {
            let facts = Facts {
                result: Answered,
                talk_seconds: *talk,
                caller_known: true,
                earlier_call_in_window: *earlier,
                ivr_offered: true,
                ivr_digit: *ivr_digit,
                judgement_digit: *judgement_digit,
            };
            assert_eq!(
                judge(rule, &facts),
                *want,
                "{talk} {earlier} {ivr_digit} {judgement_digit}"
            );
        }

        // A caller never played the menu: no key was asked of it.
        let facts = Facts {
            result: Answered,
            talk_seconds: 60,
            caller_known: true,
            earlier_call_in_window: false,
            ivr_offered: false,
            ivr_digit: false,
            judgement_digit: false,
        };
        assert_eq!(judge(&ivr, &facts), Valid);
    }
}
