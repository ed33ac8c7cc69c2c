//! Session timers (RFC 4028) as the B2BUA runs them. The caller's Session-Expires goes
//! to the callee with the INVITE, and the interval the callee answers (with its
//! refresher) comes back to the caller in the 200, so both legs agree: refreshes the
//! refresher sends pass through the node to the other leg, refreshing both. If the
//! callee does not do session timers but the caller does, the caller refreshes
//! (`refresher=uac`), unless it asked the node to (`refresher=uas`, which RFC 4028 9
//! says the answer keeps): then the node re-INVITEs the caller at half the interval.
//! Either way the node hangs up both legs when no refresh
//! (a re-INVITE or UPDATE answered 2xx) arrives in time — a call whose party vanished
//! does not hold its ports and lines for ever. Pure: header values in, decisions out.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

/// A Session-Expires value: `delta-seconds[;refresher=uac|uas]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    pub interval: u32,
    pub refresher: Option<Refresher>,
}

/// As the node writes it: the interval and a refresher it could read, nothing else
/// (a value passed to the other leg is this, never the party's text: a live torture
/// run had `refresher=bob` reach the callee as written).
impl std::fmt::Display for SessionExpires {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.interval)?;
        match self.refresher {
            Some(Refresher::Uac) => f.write_str(";refresher=uac"),
            Some(Refresher::Uas) => f.write_str(";refresher=uas"),
            None => Ok(()),
        }
    }
}

/// RFC 4028 4: no Min-SE is below 90 s. One a party sent lower (`Min-SE: 0`) goes
/// to the other leg as 90 (what a request without one means).
pub const LEAST_MIN_SE: u32 = 90;

/// The number of a Min-SE or Session-Expires value (RFC 4028 4, 5: both
/// `delta-seconds *(SEMI param)`; spaces around the number allowed, parameters left
/// to the caller): None when it is anything else (`soon`, `-1`, a number past 32
/// bits), which every reader treats as none. Min-SE was read as the whole value, so
/// one with a parameter (`600;x=y`) counted as none and a 422 carrying it could be
/// neither followed nor passed on (a review).
pub fn delta_seconds(value: &str) -> Option<u32> {
    value.split(';').next()?.trim().parse().ok()
}

pub fn parse(value: &str) -> Option<SessionExpires> {
    let interval = delta_seconds(value)?;
    let refresher = value.split(';').skip(1).find_map(|p| {
        let (name, v) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match v.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Uac),
            "uas" => Some(Refresher::Uas),
            _ => None,
        }
    });
    Some(SessionExpires {
        interval,
        refresher,
    })
}

/// The session timer of an answered call: what the 200 to the caller carries and how
/// often the node must see a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// Session-Expires for the caller's 200.
    pub header: String,
    /// Whether the 200 needs `Require: timer` (the caller is the refresher).
    pub require: bool,
    pub interval: u32,
    /// The node refreshes the caller's leg itself: the caller asked `refresher=uas`
    /// and the callee does no session timers (so none of its refreshes comes to relay),
    /// or names the node's side too.
    pub by_node: bool,
    /// The node refreshes the callee's leg as well: the caller asked `refresher=uas`
    /// and the callee's 200 names the node's side (`uac`, or no refresher): both legs
    /// wait for the node. The caller was told `uac` (RFC 4028 9 keeps the request's
    /// `uas`), could not refresh, and the session expired (a live torture run).
    pub callee_by_node: bool,
}

/// Decides the caller's session timer from the caller's request (Session-Expires, and
/// whether it said `Supported: timer`) and the callee's 200 (its Session-Expires).
/// None: no session timer (the caller neither supports them nor had one asked for
/// it, or nobody asked). A Session-Expires without `Supported: timer` is a proxy's,
/// asked for a caller that does no timers: the 200 names the node's side (`uas`,
/// without `Require`: RFC 4028 9), which refreshes the caller's leg unless the callee
/// does (its refreshes pass on); the node told it nothing, and the proxy read the
/// session as one without a timer. An interval below `floor` (the node's Min-SE) is
/// raised to it: a callee answering `Session-Expires: 1` had the node hang the call
/// up after a second (a live torture run; RFC 4028 forbids it going below the
/// Min-SE, 90 s when none was sent).
pub fn agree(
    request: Option<&str>,
    caller_supports: bool,
    callee: Option<&str>,
    floor: u32,
) -> Option<Agreed> {
    let request = request.and_then(parse).map(|r| match caller_supports {
        true => r,
        false => SessionExpires {
            refresher: Some(Refresher::Uas),
            ..r
        },
    });
    if !caller_supports && request.is_none() {
        // The caller cannot be told to refresh, and nobody asked for it; a callee
        // timer still works on its own leg (it sends BYE itself when nobody
        // refreshes).
        return None;
    }
    let (interval, refresher, by_node) = match (callee.and_then(parse), request) {
        (Some(c), Some(r))
            if r.refresher == Some(Refresher::Uas) && c.refresher != Some(Refresher::Uas) =>
        {
            (c.interval, Refresher::Uas, true)
        }
        (Some(c), _) => (c.interval, c.refresher.unwrap_or(Refresher::Uac), false),
        // The caller's choice stands (RFC 4028 9); none named, the caller refreshes.
        (None, Some(r)) => {
            let refresher = r.refresher.unwrap_or(Refresher::Uac);
            (r.interval, refresher, refresher == Refresher::Uas)
        }
        (None, None) => return None,
    };
    let interval = interval.max(floor);
    let role = match refresher {
        Refresher::Uac => "uac",
        Refresher::Uas => "uas",
    };
    Some(Agreed {
        header: format!("{interval};refresher={role}"),
        require: refresher == Refresher::Uac,
        interval,
        by_node,
        callee_by_node: by_node && callee.and_then(parse).is_some(),
    })
}

/// When the node, as the refresher, sends its refresh: at half the interval (RFC 4028
/// 10), at least a second after the last.
pub fn refresh_after(interval: u32) -> Duration {
    Duration::from_secs(u64::from((interval / 2).max(1)))
}

/// The caller's session timer once the callee answers: [`agree`], unless the caller
/// was answered before (by the node itself, an IVR menu): that 200 named no timer, so
/// the caller refreshes nothing, and a timer armed now would hang up the call at its
/// interval.
pub fn on_callee_answer(
    request: Option<&str>,
    caller_supports: bool,
    callee: Option<&str>,
    caller_answered: bool,
    floor: u32,
) -> Option<Agreed> {
    if caller_answered {
        return None;
    }
    agree(request, caller_supports, callee, floor)
}

/// The least session interval a callee may give (RFC 4028 4: Min-SE is 90 s when
/// the request names none, and the node passes on only the caller's): the node's own
/// minimum if lower (tests and labs run short ones), else 90 s. A callee's 600 s is
/// lawful whatever the node's own minimum for callers.
pub fn callee_floor(node_min_se: u32) -> u32 {
    node_min_se.min(90)
}

/// What the node does after the caller refused its refresh (not 408 or 481, which end
/// the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Again after RFC 3261 14.1's wait (491: an offer of the caller's crossed it),
    /// at most this long.
    Glare(Duration),
    /// Again at once with this interval, the caller's Min-SE (422, RFC 4028 10).
    Longer(u32),
    /// Again after this wait (a passing refusal).
    After(Duration),
    /// No more: the session's check decides.
    GiveUp,
}

/// How many refusals in a row the node's own refresh is sent again after (a refusal
/// whose wait spans several tries' shares counts for each: see [`shares_of`]).
pub const REFRESH_TRIES: u8 = 3;

/// Decides [`AfterRefusal`] for the `refusals`-th refusal in a row (from 1; as
/// counted with [`shares_of`]) with `code`, the response's `min_se` (as
/// [`delta_seconds`] reads it) and `retry_after` (seconds), of a session of `interval`
/// s. A passing refusal's `Retry-After` (a 500 or 503 saying when to come back, RFC
/// 3261 21.5.4) is waited for as far as one more try still fits before the
/// session's check: a callee's leg refreshed again a second later was refused again,
/// each try a CSeq (a live torture run). At most
/// [`REFRESH_TRIES`] in a row: a caller refusing every refresh had one sent every
/// second or two until the session's check, each taking a CSeq (a review). The waits
/// share the time between the refresh and the session's check, so every try comes
/// before it (an eighth of the interval put the later ones past it in sessions under
/// about four minutes). A Min-SE over [`MAX_MIN_SE`] is not followed: the node's
/// check would supervise nothing for that long.
pub fn after_refusal(
    code: u16,
    min_se: Option<u32>,
    retry_after: Option<u32>,
    interval: u32,
    refusals: u8,
) -> AfterRefusal {
    if refusals > REFRESH_TRIES {
        return AfterRefusal::GiveUp;
    }
    let share = share(interval);
    match (code, min_se) {
        (491, _) => AfterRefusal::Glare(share),
        (422, Some(min)) if min > interval && min <= MAX_MIN_SE => AfterRefusal::Longer(min),
        (422, Some(min)) if min > MAX_MIN_SE => AfterRefusal::GiveUp,
        _ => {
            let asked = Duration::from_secs(u64::from(retry_after.unwrap_or(0)));
            // The tries left after this one, each a share apart, still fit before the
            // check when this wait is at most that many shares.
            let most = share * u32::from(REFRESH_TRIES + 1 - refusals);
            AfterRefusal::After(share.max(asked.min(most)))
        }
    }
}

/// One try's share of the time between the node's refresh and the session's check
/// (each of [`REFRESH_TRIES`] and the check's own).
fn share(interval: u32) -> Duration {
    check_after(interval).saturating_sub(refresh_after(interval)) / (u32::from(REFRESH_TRIES) + 1)
}

/// How many of the tries' shares (see [`after_refusal`]) a wait of `wait` takes in a
/// session of `interval` s, at least one: a refusal's count goes up by that many, so
/// a long `Retry-After` uses up the tries it waits through and the last one still
/// comes before the session's check.
pub fn shares_of(wait: Duration, interval: u32) -> u8 {
    let share = share(interval);
    if share.is_zero() {
        return 1;
    }
    let whole = wait.as_nanos().div_ceil(share.as_nanos()).max(1);
    u8::try_from(whole).unwrap_or(u8::MAX)
}

/// The longest Min-SE the node's refresh follows (two hours).
pub const MAX_MIN_SE: u32 = 7200;

/// When the node gives up on a session with no refresh: the interval less a third of
/// it or 32 s, whichever is less (RFC 4028 10: the non-refresher's BYE).
pub fn check_after(interval: u32) -> Duration {
    Duration::from_secs(u64::from(interval - (interval / 3).min(32)))
}

/// Whether an INVITE's Session-Expires is below the node's floor (`min_se`): it is
/// then refused 422 with `Min-SE`. A missing or unreadable value asks for no session
/// timer and is accepted.
pub fn too_small(session_expires: Option<&str>, min_se: u32) -> bool {
    session_expires
        .and_then(parse)
        .is_some_and(|s| s.interval < min_se)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        let rows = [
            ("1800", Some((1800, None))),
            ("90;refresher=uac", Some((90, Some(Refresher::Uac)))),
            (" 600 ; Refresher = UAS ", Some((600, Some(Refresher::Uas)))),
            ("600;x=y;refresher=uas", Some((600, Some(Refresher::Uas)))),
            ("600;refresher=bob", Some((600, None))),
            ("soon", None),
            ("", None),
        ];
        for (value, want) in rows {
            let got = parse(value).map(|s| (s.interval, s.refresher));
            assert_eq!(got, want, "{value:?}");
        }
    }

    #[test]
    fn agreement() {
        // (caller's Session-Expires, caller supports timer, callee's) → (header, require,
        // interval, the node refreshes)
        let rows: &[(
            Option<&str>,
            bool,
            Option<&str>,
            Option<(&str, bool, u32, bool)>,
        )] = &[
            (
                Some("1800"),
                true,
                Some("1800;refresher=uac"),
                Some(("1800;refresher=uac", true, 1800, false)),
            ),
            (
                Some("1800"),
                true,
                Some("900;refresher=uas"),
                Some(("900;refresher=uas", false, 900, false)),
            ),
            (
                Some("1800"),
                true,
                None,
                Some(("1800;refresher=uac", true, 1800, false)),
            ),
            // The caller asks the node to refresh and the callee does no timers: the
            // node does; with a callee that does, the callee's refreshes are relayed.
            (
                Some("1800;refresher=uas"),
                true,
                None,
                Some(("1800;refresher=uas", false, 1800, true)),
            ),
            (
                Some("1800;refresher=uas"),
                true,
                Some("1800;refresher=uas"),
                Some(("1800;refresher=uas", false, 1800, false)),
            ),
            // The callee names the node's side too: the caller keeps `uas`, and the
            // node refreshes both legs (see the row check below).
            (
                Some("1800;refresher=uas"),
                true,
                Some("900;refresher=uac"),
                Some(("900;refresher=uas", false, 900, true)),
            ),
            (
                Some("1800;refresher=uas"),
                true,
                Some("900"),
                Some(("900;refresher=uas", false, 900, true)),
            ),
            (
                Some("1800;refresher=uac"),
                true,
                None,
                Some(("1800;refresher=uac", true, 1800, false)),
            ),
            (
                None,
                true,
                Some("600"),
                Some(("600;refresher=uac", true, 600, false)),
            ),
            // A caller's Session-Expires without `Supported: timer` (a proxy's): the
            // node's side refreshes, the callee where it does, else the node.
            (
                Some("1800"),
                false,
                Some("1800;refresher=uac"),
                Some(("1800;refresher=uas", false, 1800, true)),
            ),
            (
                Some("1800;refresher=uac"),
                false,
                None,
                Some(("1800;refresher=uas", false, 1800, true)),
            ),
            (
                Some("1800"),
                false,
                Some("900;refresher=uas"),
                Some(("900;refresher=uas", false, 900, false)),
            ),
            (None, false, Some("600;refresher=uas"), None),
            (None, true, None, None),
            // A callee going below the node's Min-SE (90 here) is raised to it.
            (
                Some("1800"),
                true,
                Some("1;refresher=uas"),
                Some(("90;refresher=uas", false, 90, false)),
            ),
            (
                Some("1800"),
                true,
                Some("89"),
                Some(("90;refresher=uac", true, 90, false)),
            ),
            (
                Some("1;refresher=uas"),
                true,
                None,
                Some(("90;refresher=uas", false, 90, true)),
            ),
        ];
        for (req, supports, callee, want) in rows {
            let got = agree(*req, *supports, *callee, 90);
            let got = got
                .as_ref()
                .map(|a| (a.header.as_str(), a.require, a.interval, a.by_node));
            assert_eq!(got, *want, "{req:?} {supports} {callee:?}");
        }
    }

    /// Where the node refreshes the callee's leg too: the caller asked the node's side
    /// (`uas`) and the callee named it as well (`uac`, or no refresher).
    #[test]
    fn the_node_refreshes_the_callee_where_both_name_it() {
        let rows = [
            (Some("1800;refresher=uas"), Some("900;refresher=uac"), true),
            (Some("1800;refresher=uas"), Some("900"), true),
            (Some("1800;refresher=uas"), Some("900;refresher=uas"), false),
            (Some("1800;refresher=uas"), None, false),
            (Some("1800"), Some("900;refresher=uac"), false),
            (Some("1800;refresher=uac"), Some("900;refresher=uac"), false),
        ];
        for (req, callee, want) in rows {
            let a = agree(req, true, callee, 90).expect("a timer");
            assert_eq!(a.callee_by_node, want, "{req:?} {callee:?}");
        }
    }

    /// A caller the node answered itself (an IVR) gets no timer when the callee
    /// answers, whatever the two asked; otherwise as [`agree`].
    #[test]
    fn a_caller_answered_by_the_node_gets_no_timer_later() {
        let callee = Some("90;refresher=uac");
        assert!(on_callee_answer(Some("90"), true, callee, true, 90).is_none());
        assert!(on_callee_answer(Some("90"), true, None, true, 90).is_none());
        let got = on_callee_answer(Some("90"), true, callee, false, 90).map(|a| a.interval);
        assert_eq!(got, Some(90));
    }

    /// The floor a callee is held to: the node's minimum when lower than RFC 4028's
    /// 90 s, else 90 s (a node that asks callers for 1800 s still takes a callee's
    /// lawful 600: a review).
    #[test]
    fn a_callee_is_held_to_the_rfc_floor_not_the_nodes() {
        assert_eq!(callee_floor(1800), 90);
        assert_eq!(callee_floor(90), 90);
        assert_eq!(callee_floor(2), 2);
        let got = agree(
            Some("1800"),
            true,
            Some("600;refresher=uas"),
            callee_floor(1800),
        );
        assert_eq!(got.map(|a| a.interval), Some(600));
    }

    #[test]
    fn timing_and_floor() {
        assert_eq!(check_after(90), Duration::from_secs(60));
        assert_eq!(check_after(1800), Duration::from_secs(1768));
        assert_eq!(check_after(6), Duration::from_secs(4));
        let rows = [
            (None, false),
            (Some("90"), false),
            (Some("89"), true),
            (Some("60;refresher=uac"), true),
            (Some("garbage"), false),
        ];
        for (value, small) in rows {
            assert_eq!(too_small(value, 90), small, "{value:?}");
        }
    }

    /// (Min-SE or Session-Expires as received) -> the number every reader takes.
    #[test]
    fn delta_seconds_values() {
        for (value, want) in [
            ("3600", Some(3600)),
            (" 3600 ", Some(3600)),
            ("4294967295", Some(u32::MAX)),
            ("4294967296", None),
            ("600;x=y", Some(600)),
            (" 600 ; x=y", Some(600)),
            (";600", None),
            ("soon", None),
            ("-1", None),
            ("", None),
        ] {
            assert_eq!(delta_seconds(value), want, "{value:?}");
        }
    }

    #[test]
    fn what_follows_a_refused_refresh() {
        use AfterRefusal::*;
        let s = Duration::from_secs;
        // (code, Min-SE, interval, refusals in a row) -> what next
        let rows: &[(u16, Option<u32>, u32, u8, AfterRefusal)] = &[
            (491, None, 1800, 1, Glare(s(217))),
            (491, None, 1800, 3, Glare(s(217))),
            (491, None, 1800, 4, GiveUp),
            (422, Some(3600), 1800, 1, Longer(3600)),
            (422, Some(7200), 1800, 1, Longer(7200)),
            (422, Some(7201), 1800, 1, GiveUp),
            (422, Some(u32::MAX), 1800, 1, GiveUp),
            // Not longer, or unreadable (see `delta_seconds_values`): a passing refusal.
            // 1800 s: refresh at 900, check at 1768, the 868 s between shared by four.
            (422, Some(900), 1800, 1, After(s(217))),
            (422, None, 1800, 1, After(s(217))),
            (500, None, 1800, 1, After(s(217))),
            (488, None, 1800, 3, After(s(217))),
            (488, None, 1800, 4, GiveUp),
            // 90 s: refresh at 45, check at 60: the three tries within the 15 s.
            (403, None, 90, 1, After(Duration::from_millis(3_750))),
            (500, None, 1, 1, After(Duration::ZERO)),
        ];
        for &(code, min_se, interval, refusals, want) in rows {
            assert_eq!(
                after_refusal(code, min_se, None, interval, refusals),
                want,
                "{code} {min_se:?} {interval} {refusals}"
            );
        }
    }

    /// A passing refusal's Retry-After is waited for, as far as the tries left still
    /// fit before the session's check (1800 s: shares of 217 s, check 868 s after the
    /// refresh); a shorter one than the share changes nothing; a glare or a longer
    /// Min-SE does not wait for it.
    #[test]
    fn a_refusal_saying_when_to_come_back_is_waited_for() {
        use AfterRefusal::*;
        let s = Duration::from_secs;
        // (code, Retry-After, refusals in a row) -> what next
        let rows: &[(u16, Option<u32>, u8, AfterRefusal)] = &[
            (500, Some(300), 1, After(s(300))),
            (503, Some(300), 2, After(s(300))),
            (503, Some(100), 1, After(s(217))),
            (500, Some(0), 1, After(s(217))),
            // Capped: three shares after the first refusal, two after the second,
            // one (the share) after the third.
            (503, Some(3600), 1, After(s(651))),
            (503, Some(3600), 2, After(s(434))),
            (503, Some(3600), 3, After(s(217))),
            (503, Some(3600), 4, GiveUp),
            (491, Some(300), 1, Glare(s(217))),
        ];
        for &(code, retry_after, refusals, want) in rows {
            assert_eq!(
                after_refusal(code, None, retry_after, 1800, refusals),
                want,
                "{code} {retry_after:?} {refusals}"
            );
        }
        assert_eq!(
            after_refusal(422, Some(3600), Some(300), 1800, 1),
            Longer(3600)
        );
        // The shares each wait takes: the tries it waits through are used up.
        for (wait, shares) in [
            (0, 1),
            (217, 1),
            (218, 2),
            (300, 2),
            (651, 3),
            (99_999, 255),
        ] {
            assert_eq!(shares_of(s(wait), 1800), shares, "{wait}");
        }
        assert_eq!(shares_of(s(5), 1), 1, "no share at all");
        // The walk through a run of such refusals, with the shares counted, is the
        // call's (`call::session::tests::refusals_with_retry_after_use_up_the_tries`).
    }
}
