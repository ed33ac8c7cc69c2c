//! IVR menu decisions: what a key, or silence, does after the menu has been played
//! `played` times and `invalid` keys were pressed. Pure; the call actor plays the
//! prompts and keeps the timers.
//!
//! Every invalid key is a try of its own, whether or not the menu came round again:
//! counted only by the menu's plays, keys pressed while the invalid-key prompt played
//! (before the menu's next round) were never the last try, so a caller sending keys
//! faster than the prompt held the call for its whole `max_call_seconds` (a live
//! torture run sent 600 in a second).

use tsunagu_store::Ivr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IvrStep {
    /// Forward to the destinations of this key.
    Route(String),
    /// Say the key is not valid, then play the menu again.
    Invalid,
    /// Play the menu again.
    Replay,
    /// Release the caller: the menu was played `attempts` times without a valid key.
    GiveUp,
}

/// A key after `played` rounds of the menu and `invalid` invalid keys before it.
pub fn on_key(ivr: &Ivr, key: char, played: u32, invalid: u32) -> IvrStep {
    let key = key.to_string();
    if ivr.routes.contains_key(&key) {
        IvrStep::Route(key)
    } else if played < ivr.attempts && invalid.saturating_add(1) < ivr.attempts {
        IvrStep::Invalid
    } else {
        IvrStep::GiveUp
    }
}

pub fn on_silence(ivr: &Ivr, played: u32) -> IvrStep {
    match &ivr.default_key {
        Some(k) if ivr.routes.contains_key(k) => IvrStep::Route(k.clone()),
        _ if played < ivr.attempts => IvrStep::Replay,
        _ => IvrStep::GiveUp,
    }
}

/// Whether the caller chose a route with a key: the last key of `digits` (the keys
/// logged in `ivr_digits`) is one the menu routes. A routed key ends the menu, so it
/// is always the last one; invalid keys before it are logged too (`71`) and an
/// invalid key alone is not a choice (validity's `require_ivr_digit` asks for a
/// choice: a caller who pressed 7 on a menu of 1 and 2 and was released, or sent
/// on by the default key, did not answer the menu). Without the menu (deleted
/// since) any key counts, as the log cannot tell.
pub fn chose_by_key(menu: Option<&Ivr>, digits: &str) -> bool {
    let Some(last) = digits.chars().last() else {
        return false;
    };
    menu.is_none_or(|m| {
        let mut buf = [0u8; 4];
        m.routes.contains_key(&*last.encode_utf8(&mut buf))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tsunagu_store::Destination;
    use IvrStep::*;

    fn menu(default_key: Option<&str>) -> Ivr {
        let d = |n: &str| {
            vec![Destination {
                number: n.into(),
                ring_seconds: 10,
            }]
        };
        Ivr {
            prompt: "ivr_menu".into(),
            routes: BTreeMap::from([("1".into(), d("0311112222")), ("#".into(), d("0322223333"))]),
            timeout_seconds: 5,
            attempts: 2,
            invalid_prompt: None,
            default_key: default_key.map(str::to_string),
        }
    }

    #[test]
    fn keys_and_silence() {
        let plain = menu(None);
        let with_default = menu(Some("#"));
        // (menu, key, menu rounds played, invalid keys before) -> step; two tries.
        let keys: &[(&Ivr, char, u32, u32, IvrStep)] = &[
            (&plain, '1', 1, 0, Route("1".into())),
            (&plain, '#', 2, 1, Route("#".into())),
            (&plain, '1', 1, 9, Route("1".into())),
            (&plain, '7', 1, 0, Invalid),
            (&plain, '7', 2, 1, GiveUp),
            // A second invalid key before the menu came round again: the last try.
            (&plain, '7', 1, 1, GiveUp),
            (&plain, '7', 1, u32::MAX, GiveUp),
        ];
        for (ivr, key, played, invalid, want) in keys {
            assert_eq!(
                on_key(ivr, *key, *played, *invalid),
                *want,
                "{key} after {played} rounds and {invalid} invalid keys"
            );
        }
        let silences: &[(&Ivr, u32, IvrStep)] = &[
            (&plain, 1, Replay),
            (&plain, 2, GiveUp),
            (&with_default, 1, Route("#".into())),
            (&with_default, 2, Route("#".into())),
        ];
        for (ivr, played, want) in silences {
            assert_eq!(on_silence(ivr, *played), *want, "after {played}");
        }
    }

    #[test]
    fn a_choice_is_a_routed_last_key() {
        let plain = menu(None);
        let cases: &[(Option<&Ivr>, &str, bool)] = &[
            (Some(&plain), "", false),
            (Some(&plain), "1", true),
            (Some(&plain), "71", true),
            (Some(&plain), "7", false),
            (Some(&plain), "77", false),
            (Some(&plain), "#", true),
            (None, "7", true),
            (None, "", false),
        ];
        for (ivr, digits, want) in cases {
            assert_eq!(chose_by_key(*ivr, digits), *want, "{digits:?}");
        }
    }
}
