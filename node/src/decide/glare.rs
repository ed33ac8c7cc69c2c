//! Glare (RFC 3261 14.1): when a re-INVITE refused 491 Request Pending (the other
//! side has one of its own pending) is sent again. Pure; the node's takeover and its
//! own session refreshes both wait so.

use std::time::Duration;

/// When to send a re-INVITE refused 491 again: 2.1 to 4 s if the node
/// made the dialog's Call-ID (the callee's leg), else 0 to 2 s, in 10 ms steps; `r` is
/// a random number.
pub fn delay(own_call_id: bool, r: u32) -> Duration {
    let ms = if own_call_id {
        2_100 + (r % 191) * 10
    } else {
        (r % 201) * 10
    };
    Duration::from_millis(u64::from(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glare_waits_follow_rfc_3261() {
        // (the node made the Call-ID, random number) -> wait in ms
        let cases: &[(bool, u32, u64)] = &[
            (false, 0, 0),
            (false, 200, 2_000),
            (false, 201, 0),
            (false, u32::MAX, (u32::MAX % 201) as u64 * 10),
            (true, 0, 2_100),
            (true, 190, 4_000),
            (true, 191, 2_100),
            (true, u32::MAX, 2_100 + (u32::MAX % 191) as u64 * 10),
        ];
        for (own, r, ms) in cases {
            assert_eq!(delay(*own, *r), Duration::from_millis(*ms), "{own} {r}");
        }
        for r in [0, 1, 7, 1_000, u32::MAX] {
            assert!(delay(false, r) <= Duration::from_secs(2));
            let own = delay(true, r);
            assert!(own >= Duration::from_millis(2_100) && own <= Duration::from_secs(4));
        }
    }
}
