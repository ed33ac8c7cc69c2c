//! IVR menu decisions: what a key, or silence, does after the menu has been played
//! `played` times. Pure; the call actor plays the prompts and keeps the timers.

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

pub fn on_key(ivr: &Ivr, key: char, played: u32) -> IvrStep {
    let key = key.to_string();
    if ivr.routes.contains_key(&key) {
        IvrStep::Route(key)
    } else if played < ivr.attempts {
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
        let keys: &[(&Ivr, char, u32, IvrStep)] = &[
            (&plain, '1', 1, Route("1".into())),
            (&plain, '#', 2, Route("#".into())),
            (&plain, '7', 1, Invalid),
            (&plain, '7', 2, GiveUp),
        ];
        for (ivr, key, played, want) in keys {
            assert_eq!(on_key(ivr, *key, *played), *want, "{key} after {played}");
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
}
