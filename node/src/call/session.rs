//! Session timers in the call actor (see [`crate::decide::session_timer`]): the
//! caller's Session-Expires travels to the callee, the agreed interval back to the
//! caller, refreshes travel between the legs with their headers, and a session that
//! sees no refresh in time is hung up on both legs. Where the caller asked the node to
//! refresh and the callee does no timers, the node re-INVITEs the caller itself at
//! half the interval (the same session, so the same SDP version).

use super::legs::{Headers, Leg};
use super::timers::{TimerId, Timers};
use super::{Call, CallMsg, Phase};
use crate::decide::session_timer::{
    after_refusal, check_after, delta_seconds, on_callee_answer, parse, refresh_after, shares_of,
    AfterRefusal, Refresher, SessionExpires, LEAST_MIN_SE,
};
use std::time::{Duration, Instant};
use tsunagu_media::Side;

use tsunagu_sip::parse::{has_option_tag, header, retry_after_seconds, HasHeaders};
use tsunagu_sip::Method;
use tsunagu_sip::{Request, Response};

/// A message's Min-SE (RFC 4028 5), its number as [`delta_seconds`] reads it: the one reading of
/// it for requests ([`TimerAsk`]), 422s to the node's refreshes and re-offers, and the
/// refusals passed on.
pub(super) fn min_se<M: HasHeaders>(msg: &M) -> Option<u32> {
    header(msg, "Min-SE").and_then(delta_seconds)
}

/// What a request says of session timers (RFC 4028), read once: its Session-Expires
/// as sent and as it parses, its Min-SE if that parses, and whether its sender can
/// refresh (`Supported: timer`).
#[derive(Debug, Clone, Default)]
pub(super) struct TimerAsk {
    /// It named a Session-Expires (readable or not).
    named: bool,
    session_expires: Option<SessionExpires>,
    min_se: Option<u32>,
    supports: bool,
}

impl TimerAsk {
    pub(super) fn of(req: &Request) -> TimerAsk {
        let sent = header(req, "Session-Expires");
        TimerAsk {
            session_expires: sent.and_then(parse),
            named: sent.is_some(),
            min_se: min_se(req),
            supports: has_option_tag(req, "Supported", "timer"),
        }
    }

    /// The session-timer headers to pass on to the other leg. Only values that parse
    /// go on (a Session-Expires of 20 digits, a Min-SE past 32 bits would otherwise
    /// reach the other leg as they came), and as the node writes them: the interval
    /// and a refresher it reads, a Min-SE of at least [`LEAST_MIN_SE`] but never above
    /// the interval (a lab's node runs shorter sessions than RFC 4028's floor: a
    /// Min-SE above the Session-Expires beside it would have the callee refuse it).
    pub(super) fn headers(&self) -> Headers {
        let mut out = Headers::new();
        if let Some(se) = self.session_expires {
            out.push(("Session-Expires", se.to_string()));
            if let Some(min) = self.min_se {
                let min = min.max(LEAST_MIN_SE).min(se.interval);
                out.push(("Min-SE", min.to_string()));
            }
        }
        if self.supports {
            out.push(("Supported", "timer".into()));
        }
        out
    }

    /// Whether its sender, refreshing the session, goes on doing so though it named
    /// no timer: it says `Supported: timer` and named none (see [`unasked_timer`]);
    /// otherwise the node takes the part.
    pub(super) fn keeps_refreshing_unasked(&self) -> bool {
        self.supports && !self.named
    }

    /// Whether its sender said `Supported: timer`.
    pub(super) fn supports(&self) -> bool {
        self.supports
    }

    /// Whether it asks for less than `floor` (refused 422, as the first INVITE's
    /// [`crate::decide::session_timer::too_small`] would be).
    pub(super) fn too_small(&self, floor: u32) -> bool {
        self.session_expires.is_some_and(|s| s.interval < floor)
    }
}

/// The session-timer headers of a 2xx to `request` (a refresh), to pass on with the
/// answer. A 2xx without Session-Expires to a sender that asked for one and can
/// refresh (`Supported: timer`: RFC 4028 8, a proxy may have added the header for a
/// sender that cannot) while the node keeps the session's timer of `kept` s gets one
/// naming the sender refresher, never longer than it asked: without it the sender
/// reads "no expiration" (RFC 4028 7.2), stops refreshing, and the node's check hangs
/// the call up (a callee that does no timers answers the caller's refreshes so; a
/// review). A sender asking the other side to refresh (`refresher=uas`) is answered
/// so (RFC 4028 9, table 2: it was named `uac` with `Require: timer`, and both then
/// refreshed) where that side does (`uas_ok`: the node for the caller; the caller,
/// whose refreshes pass through, for the callee), else told nothing of timers (a
/// callee's own request is not answered `uas` for the node's refreshes of its leg:
/// see [`SessionTimer::callee_by_node`]). A sender that neither asked nor said
/// `Supported: timer` hears nothing of timers, unless it is the caller and its leg is
/// refreshed by it or, for a caller that does no timers, by the node
/// (`refresher_asking`): a request of its without
/// Session-Expires (or with one but without `Supported: timer`) gets the session's
/// in the 2xx (RFC 4028 9 lets the UAS add one),
/// `uac` with `Require: timer` where it says `Supported: timer` (it goes on
/// refreshing), else `uas` (the node takes the part); told nothing, the caller reads
/// "no expiration" (RFC 4028 7.2), stops refreshing, and the node's check hung up a
/// healthy call (a live torture run: a hold without Session-Expires).
pub(super) fn answer_headers(
    resp: &Response,
    request: &TimerAsk,
    kept: Option<u32>,
    uas_ok: bool,
    from_caller: bool,
    refresher_asking: bool,
) -> Vec<(&'static str, String)> {
    let supports = request.supports;
    let asked = request.session_expires.filter(|_| supports);
    let mut out = Vec::new();
    if !supports && !request.named && !refresher_asking {
        return out;
    }
    let answered = header(resp, "Session-Expires").filter(|v| parse(v).is_some());
    if let (Some(se), Some(sent)) = (answered.and_then(parse), request.session_expires) {
        if from_caller && se.refresher != Some(Refresher::Uas) {
            if sent.refresher == Some(Refresher::Uas) || !supports {
                // The caller asked the node's side to refresh (or cannot refresh:
                // no `Supported: timer`) and the callee names the node's side too:
                // the caller is answered `uas` (RFC 4028 9), the node refreshes both
                // legs (see `Call::refresher_after`). Passed on as written it read
                // `uac`.
                out.push(("Session-Expires", format!("{};refresher=uas", se.interval)));
                return out;
            }
            if se.refresher.is_none() {
                // A callee timer without a refresher (RFC 4028 9 wants one): the
                // caller, who can, refreshes, and is told so (passed on bare, the
                // node read it as the callee refreshing: a review).
                out.push(("Session-Expires", format!("{};refresher=uac", se.interval)));
                out.push(("Require", "timer".into()));
                return out;
            }
        }
    }
    if let Some(se) = answered.and_then(parse) {
        out.push(("Session-Expires", se.to_string()));
        if has_option_tag(resp, "Require", "timer") {
            out.push(("Require", "timer".into()));
        }
    } else if let Some((asked, kept)) = asked.zip(kept) {
        let interval = asked.interval.min(kept);
        if asked.refresher == Some(Refresher::Uas) {
            if uas_ok {
                out.push(("Session-Expires", format!("{interval};refresher=uas")));
            }
        } else {
            out.push(("Session-Expires", format!("{interval};refresher=uac")));
            out.push(("Require", "timer".into()));
        }
    } else if let (true, None, Some(kept)) = (refresher_asking, asked, kept) {
        out = unasked_timer(request, kept);
    }
    out
}

/// The session's timer (of `kept` s) for a 2xx to a request of the party that
/// refreshes the session which named none, or named one without `Supported: timer`
/// (RFC 4028 9 lets the UAS add one): `uac` with `Require: timer` where the party
/// says `Supported: timer` and named none (it goes on refreshing), else `uas` (the
/// node takes the part); never longer than the request asked.
pub(super) fn unasked_timer(request: &TimerAsk, kept: u32) -> Vec<(&'static str, String)> {
    let interval = request
        .session_expires
        .map_or(kept, |s| s.interval.min(kept));
    if request.keeps_refreshing_unasked() {
        vec![
            ("Session-Expires", format!("{interval};refresher=uac")),
            ("Require", "timer".into()),
        ]
    } else {
        vec![("Session-Expires", format!("{interval};refresher=uas"))]
    }
}

/// An agreed session timer: its interval, and the check armed for when the next
/// refresh is due (one at a time: each refresh replaces it).
#[derive(Debug, Clone, Copy)]
pub(super) struct SessionTimer {
    pub interval: u32,
    pub generation: u32,
    check: TimerId,
    /// The node refreshes the caller's leg itself (see the module doc).
    pub by_node: bool,
    /// When it sends its next refresh.
    send: Option<TimerId>,
    /// The node's refreshes refused since the last that went through, each counted
    /// for the tries' shares its wait spans (see [`SessionTimer::refused`],
    /// [`Call::refresh_refused`]).
    refusals: u8,
    /// The caller's Min-SE from a 422 to the node's refresh: named in the node's
    /// refreshes from then on (RFC 4028 7.1).
    min_se: Option<u32>,
    /// The caller was last told it refreshes (not the node, nor the callee through
    /// the node): what the node's own re-INVITEs to it name (see
    /// [`Call::timer_to`]).
    pub caller_refreshes: bool,
    /// The callee's Min-SE from its 422 to the node's timer: while the session's
    /// interval is below it, requests to the callee carry no timer (see
    /// [`Call::timer_to`], [`Call::timer_refused`]). Checkpointed.
    pub callee_min_se: Option<u32>,
    /// The callee answered the node's timer naming the node's side its refresher
    /// (`refresher=uac` in its 2xx, where the request named it `uas`: RFC 4028 9
    /// wants that kept, not every callee does): the node refreshes the callee's leg
    /// as well, right after each of its refreshes of the caller's that went through
    /// (see [`Call::refresh_callee`]); where the caller refreshes instead, its
    /// refreshes reach the callee through the node, which names itself to the callee
    /// the same way (and refreshes the callee once more when the caller takes the
    /// part, which would otherwise leave the callee's leg a whole interval without a
    /// refresh: a live torture run). Checkpointed.
    pub callee_by_node: bool,
    /// The node's refreshes of the callee's leg refused since the last that went
    /// through, counted as `refusals` is (see [`Call::callee_refresh_refused`]).
    callee_refusals: u8,
}

/// What a refresh makes of the session timer: the interval and generation of the next
/// check, and the check it replaces.
#[derive(Debug, PartialEq)]
struct Refresh {
    interval: u32,
    generation: u32,
    replaces: Option<TimerId>,
}

impl SessionTimer {
    /// A refusal of the node's refresh, of the caller's leg or (`callee`) of the
    /// callee's, answered `code` with `min_se` and `retry_after`: counted, and what
    /// comes next ([`after_refusal`]). A wait uses up the tries it spans
    /// ([`shares_of`]): a long `Retry-After` leaves fewer, so the last still comes
    /// before the session's check.
    fn refused(
        &mut self,
        callee: bool,
        code: u16,
        min_se: Option<u32>,
        retry_after: Option<u32>,
    ) -> AfterRefusal {
        let interval = self.interval;
        let count = if callee {
            &mut self.callee_refusals
        } else {
            &mut self.refusals
        };
        *count = count.saturating_add(1);
        let next = after_refusal(code, min_se, retry_after, interval, *count);
        if let AfterRefusal::After(wait) = next {
            *count = count.saturating_add(shares_of(wait, interval).saturating_sub(1));
        }
        next
    }

    /// The next check after a refresh naming `interval` (0: none named, the current
    /// one goes on), or None without a session timer. The previous check is replaced,
    /// never left pending: each refresh used to add one, and a party refreshing in a
    /// loop grew the call's timer list without bound, every message of the call
    /// scanning it (a review).
    fn refreshed(current: Option<SessionTimer>, interval: u32) -> Option<Refresh> {
        let interval = match (interval, current) {
            (0, Some(s)) => s.interval,
            (i, _) => i,
        };
        (interval > 0).then(|| Refresh {
            interval,
            generation: current.map_or(0, |s| s.generation).wrapping_add(1),
            replaces: current.map(|s| s.check),
        })
    }
}

/// The refresher a request of the node's to the party on `side` names (the party is
/// that request's UAS, so `uas` names the party, `uac` the node's side), given
/// whether the node refreshes the caller's leg, whether the caller does, and whether
/// the node refreshes the callee's too (see [`SessionTimer::callee_by_node`]); None:
/// the party is told nothing of timers. The caller always hears who refreshes its
/// leg: itself, or the node's side (the node, or the callee's refreshes passed on).
/// The callee hears `uas` where it is the refresher, `uac` where the node refreshes
/// it; elsewhere nothing: the node sends it no refreshes of its own, so naming the
/// node's side would have the callee wait for refreshes that never come, and a timer
/// turned off at the callee harms nothing.
pub(super) fn timer_role(
    side: Side,
    by_node: bool,
    caller_refreshes: bool,
    callee_by_node: bool,
) -> Option<&'static str> {
    match side {
        Side::A if caller_refreshes => Some("uas"),
        Side::A => Some("uac"),
        Side::B if callee_refreshes(by_node, caller_refreshes) => Some("uas"),
        Side::B if by_node && callee_by_node => Some("uac"),
        Side::B => None,
    }
}

/// Whether the callee refreshes the session: neither the node nor the caller does
/// (its refreshes reach the caller through the node).
pub(super) fn callee_refreshes(by_node: bool, caller_refreshes: bool) -> bool {
    !by_node && !caller_refreshes
}

/// A refresh naming `interval` (0: none named) at `now`: the session's next check is
/// armed on `timers`, replacing the pending one (see [`SessionTimer::refreshed`]), and
/// so is the node's own next refresh where it is the refresher. `by_node` says
/// whether it is (None: as before).
fn refresh(
    session: &mut Option<SessionTimer>,
    interval: u32,
    by_node: Option<bool>,
    timers: &mut Timers,
    now: Instant,
) {
    let Some(next) = SessionTimer::refreshed(*session, interval) else {
        return; // no session timer
    };
    if let Some(previous) = next.replaces {
        timers.cancel(previous);
    }
    if let Some(previous) = session.and_then(|s| s.send) {
        timers.cancel(previous);
    }
    let by_node = by_node.unwrap_or(session.is_some_and(|s| s.by_node));
    let check = timers.after(
        now,
        check_after(next.interval),
        CallMsg::SessionCheck(next.generation),
    );
    let send = by_node.then(|| {
        timers.after(
            now,
            refresh_after(next.interval),
            CallMsg::SessionRefresh(next.generation),
        )
    });
    *session = Some(SessionTimer {
        interval: next.interval,
        generation: next.generation,
        check,
        by_node,
        send,
        refusals: 0,
        min_se: session.and_then(|s| s.min_se),
        caller_refreshes: session.is_some_and(|s| s.caller_refreshes),
        callee_min_se: session.and_then(|s| s.callee_min_se),
        callee_by_node: session.is_some_and(|s| s.callee_by_node),
        callee_refusals: 0,
    });
}

impl Call {
    /// The callee answered: agrees the caller's session timer and answers the caller
    /// with it.
    pub(super) fn answer_with_session(&mut self, resp: &Response, sdp: Option<&str>) {
        let agreed = on_callee_answer(
            self.a_view.session_expires.as_deref(),
            self.a_view.supports_timer,
            header(resp, "Session-Expires"),
            self.a_answered,
            crate::decide::session_timer::callee_floor(self.ctx.min_se),
        );
        let ep = self.ctx.endpoint.clone();
        match agreed {
            Some(a) => {
                let mut extra = vec![("Session-Expires", a.header.as_str())];
                if a.require {
                    extra.push(("Require", "timer"));
                }
                self.a.respond_with(&ep, 200, sdp, &extra);
                tracing::debug!(interval = a.interval, refresher = %a.header, "session timer");
                self.restart_session(a.interval, Some(a.by_node));
                // `Require: timer` goes with `refresher=uac`: the caller refreshes.
                self.caller_told(Some(a.require));
                if let Some(s) = self.session.as_mut() {
                    s.callee_by_node = a.callee_by_node;
                }
            }
            None => self.a.respond(&ep, 200, sdp),
        }
    }

    /// The session's clock restarts, a full interval to its next check: at its start
    /// (answered, or resumed after a takeover) with `interval` and `by_node` (whether
    /// the node refreshes the caller's leg), or after a refresh went through
    /// (`interval` 0 keeps the current one; `by_node` None, who refreshes too).
    pub(super) fn restart_session(&mut self, interval: u32, by_node: Option<bool>) {
        refresh(
            &mut self.session,
            interval,
            by_node,
            &mut self.timers,
            Instant::now(),
        );
    }

    /// The node's refresh of the caller's session is due (which refresh generation):
    /// a re-INVITE with the session as it is (its answer: [`Call::on_own_answer`]).
    /// While another offer is pending (its 2xx refreshes the session too), a second
    /// later.
    pub(super) fn send_session_refresh(&mut self, generation: u32) {
        let Some(s) = self
            .session
            .filter(|s| s.generation == generation && s.by_node)
        else {
            return;
        };
        if self.phase != Phase::Answered || self.judging {
            return;
        }
        if self.offer_pending() {
            return self.refresh_again_in(Duration::from_secs(1));
        }
        let Some(offer) = self.a.last_sdp.clone() else {
            return; // never answered with a session: nothing to refresh
        };
        // In this re-INVITE the node is the UAC: `uac` names it the refresher
        // (RFC 4028 7.4).
        // The node refreshes, so the caller was not told it does: the timer names
        // the node (`uac`, this request's sender).
        let mut headers = Vec::new();
        let timer_added = self.timer_to(Side::A, &mut headers);
        let ep = self.ctx.endpoint.clone();
        let sent = self.a.reoffer(&ep, Method::Invite, Some(offer), headers);
        tracing::debug!(interval = s.interval, "session refreshed by the node");
        // A refused refresh is sent again by `refresh_refused`, not as a restore is.
        self.own_reinvite = Some(super::OwnReinvite {
            side: Side::A,
            cseq: sent.cseq,
            key: sent.key,
            refresh: true,
            timer_added,
            offer: None,
            timer_retried: true,
        });
    }

    /// The node's refresh is tried again after `delay` (an offer of someone else's
    /// pending, or the refresh refused), if the node still refreshes.
    pub(super) fn refresh_again_in(&mut self, delay: Duration) {
        let Some(s) = self.session.filter(|s| s.by_node) else {
            return;
        };
        if let Some(previous) = s.send {
            self.timers.cancel(previous);
        }
        let later = self.after(delay, CallMsg::SessionRefresh(s.generation));
        if let Some(s) = self.session.as_mut() {
            s.send = Some(later);
        }
    }

    /// The caller refused the node's refresh (not 408 or 481, which end the session),
    /// answering `resp`: sent again as [`after_refusal`] decides (491: after RFC 3261
    /// 14.1's wait, 0 to 2 s as the caller made its Call-ID, within the tries' share
    /// of the time before the session's check).
    pub(super) fn refresh_refused(&mut self, resp: &Response) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let code = resp.status_code.code();
        let retry_after = retry_after_seconds(resp);
        let wait = match s.refused(false, code, min_se(resp), retry_after) {
            AfterRefusal::Glare(most) => {
                crate::decide::glare::delay(false, rand::random()).min(most)
            }
            AfterRefusal::Longer(interval) => {
                // Sent again with it, and the Min-SE (RFC 4028 7.1), from now on.
                s.interval = interval;
                s.min_se = Some(interval);
                Duration::ZERO
            }
            AfterRefusal::After(wait) => wait,
            AfterRefusal::GiveUp => {
                tracing::info!(
                    code,
                    "the caller refuses the node's session refresh; left to the session's check"
                );
                return;
            }
        };
        self.refresh_again_in(wait);
    }

    /// A caller's 422 to a re-offer carrying the node's timer: the interval becomes
    /// its Min-SE, named from then on (RFC 4028 7.1), when the node follows it (see
    /// [`after_refusal`]); that interval, or None.
    pub(super) fn follow_callers_floor(&mut self, resp: &Response) -> Option<u32> {
        let s = self.session.as_mut()?;
        let code = resp.status_code.code();
        match after_refusal(code, min_se(resp), None, s.interval, 1) {
            AfterRefusal::Longer(interval) => {
                s.interval = interval;
                s.min_se = Some(interval);
                Some(interval)
            }
            _ => None,
        }
    }

    /// A 422 (Session Interval Too Small) from the party on `side` to a request of the
    /// node's that carried the session's timer (see [`Call::timer_to`]), learnt once
    /// for every later request: the caller's Min-SE is followed as after a refused
    /// refresh (the interval becomes it, named from then on, see
    /// [`Call::follow_callers_floor`]); the callee's is remembered (the highest it
    /// named), and no timer goes to the callee while the interval is below it (the
    /// callee's floor is above what the caller agreed). Whether the request is worth
    /// sending again: the caller's, when its Min-SE is followed; the callee's always
    /// (the interval it refused may have been raised since by the caller's 422, as
    /// in a takeover, whose two re-INVITEs go out at once). A relayed re-offer, a
    /// takeover's re-INVITE, a restore and the node's refresh of the callee's leg
    /// each send theirs again once (the callee's 422 used to be followed by two of
    /// them with flags of their own, the restore's not at all: it left the callee on
    /// the crossed session).
    pub(super) fn timer_refused(&mut self, side: Side, resp: &Response) -> bool {
        if resp.status_code.code() != 422 {
            return false;
        }
        if side == Side::A {
            return self.follow_callers_floor(resp).is_some();
        }
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        // A 422 without a readable Min-SE breaks RFC 4028 (6): read as refusing any.
        let min = min_se(resp).unwrap_or(u32::MAX);
        s.callee_min_se = Some(s.callee_min_se.map_or(min, |m| m.max(min)));
        true
    }

    /// A 2xx to the node's own refresh: the clock restarts as for any refresh, and the
    /// node goes on refreshing unless the caller took the part (`refresher=uas` in its
    /// answer: the UAS of this transaction).
    pub(super) fn on_own_refresh_answer(&mut self, resp: &Response) {
        let answered = header(resp, "Session-Expires");
        let caller_refreshes = answered
            .and_then(parse)
            .is_some_and(|s| s.refresher == Some(Refresher::Uas));
        // A callee that refreshes goes on doing so (its refreshes reach the caller
        // through the node): the node refreshes only where neither party does.
        let callee_refreshes = self
            .session
            .is_some_and(|s| callee_refreshes(s.by_node, s.caller_refreshes));
        self.renew_session(answered, Some(!caller_refreshes && !callee_refreshes));
        self.caller_told(Some(caller_refreshes));
    }

    /// A 2xx from the party on `side` to a request that carried the node's session
    /// timer (see [`Call::timer_to`]): the caller's renews it as the node's own refresh
    /// ([`Call::on_own_refresh_answer`]), the callee's as its own
    /// ([`Call::on_callee_refresh_answer`]).
    pub(super) fn on_timer_answer(&mut self, side: Side, resp: &Response) {
        match side {
            Side::A => self.on_own_refresh_answer(resp),
            Side::B => self.on_callee_refresh_answer(resp),
        }
    }

    /// A callee's 2xx to a request of the node's that carried the session's timer
    /// (see [`Call::timer_to`]: the callee refreshes, or the node refreshes it): the
    /// clock restarts, and the callee goes on refreshing if its answer names it
    /// (`uas`, the UAS of this request); one that answered without a timer turned its
    /// own off, so the node refreshes the caller's leg itself from then on (the caller
    /// was told the node's side refreshes); one naming the node's side (`uac`) has
    /// the node refresh its leg too (it was read as one without a timer, and hung up
    /// the call at its interval: a review).
    pub(super) fn on_callee_refresh_answer(&mut self, resp: &Response) {
        let answered = header(resp, "Session-Expires");
        let refresher = answered.and_then(parse).map(|s| s.refresher);
        let callee_refreshes = refresher == Some(Some(Refresher::Uas));
        self.renew_session(answered, Some(!callee_refreshes));
        self.caller_told(Some(false));
        if let Some(s) = self.session.as_mut() {
            // A timer without a refresher names the node's side, as in `agree`.
            s.callee_by_node = matches!(refresher, Some(None | Some(Refresher::Uac)));
        }
    }

    /// The callee's own refresh was answered 2xx naming `told` (the Session-Expires
    /// the callee got: the caller's, or the one the node wrote): where it names the
    /// callee the refresher (`uac`, that request's UAC), the node no longer refreshes
    /// the callee's leg (it went on re-INVITEing a callee that refreshed itself: a
    /// review).
    pub(super) fn callee_may_refresh_itself(&mut self, told: Option<&str>) {
        let callee = told
            .and_then(parse)
            .is_some_and(|s| s.refresher == Some(Refresher::Uac));
        if let (true, Some(s)) = (callee, self.session.as_mut()) {
            s.callee_by_node = false;
        }
    }

    /// The node refreshes the callee's leg (see [`SessionTimer::callee_by_node`]) in
    /// this refresh generation: a re-INVITE with the session it has, sent right after
    /// the caller took the node's own refresh. While another offer is out on the
    /// call, a second later (an answer that refreshes the session starts a new
    /// generation, and this one is dropped); a refusal is sent again as
    /// [`Call::callee_refresh_refused`] says, a 422 for the node's timer once at
    /// once (see [`Call::timer_refused`]).
    pub(super) fn refresh_callee(&mut self, generation: u32) {
        let due = self
            .session
            .is_some_and(|s| s.generation == generation && s.callee_by_node);
        if !due || self.phase != Phase::Answered || self.judging {
            return;
        }
        if self.offer_pending() {
            self.after(Duration::from_secs(1), CallMsg::CalleeRefresh(generation));
            return;
        }
        let Some(offer) = self.leg(Side::B).and_then(|b| b.last_sdp().clone()) else {
            return;
        };
        tracing::debug!("the callee's leg refreshed by the node");
        self.send_own_reinvite(Side::B, offer, true, false, false);
    }

    /// The callee refused the node's refresh of its leg (not 408 or 481, which end
    /// the session; a 422 for the timer was followed first): sent again after
    /// [`after_refusal`]'s wait, at most [`REFRESH_TRIES`] times in a row, each before
    /// the callee's check would come, then the session ends as expired. It was never
    /// sent again, and the callee, left unrefreshed, hung up at its interval (a
    /// review); then sent again without end while the caller's leg kept the call
    /// alive (a live torture run).
    pub(super) fn callee_refresh_refused(&mut self, resp: &Response) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let code = resp.status_code.code();
        let retry_after = retry_after_seconds(resp);
        let wait = match s.refused(true, code, None, retry_after) {
            AfterRefusal::Glare(most) => {
                crate::decide::glare::delay(true, rand::random()).min(most)
            }
            AfterRefusal::After(wait) => wait,
            AfterRefusal::Longer(_) | AfterRefusal::GiveUp => {
                // The callee's leg goes unrefreshed: its session ends (RFC 4028 10),
                // here rather than by the callee's BYE, or never where the callee
                // keeps refusing without one (a live torture run).
                tracing::info!(code, "the callee refuses the node's refresh of its leg");
                return self.expire_session("the callee refuses the node's refreshes");
            }
        };
        let generation = s.generation;
        self.after(wait, CallMsg::CalleeRefresh(generation));
    }

    /// Who refreshes the caller's leg after a refresh relayed from `from` was answered
    /// by a 2xx naming `answered` (its Session-Expires) and its sender told `passed`
    /// (see [`answer_headers`]): (whether the node does, whether the caller does,
    /// whether the node refreshes the callee's leg too; None: unchanged). From the caller: a caller that asked the node's side
    /// to refresh and was told so while the callee named the node's side as well has
    /// the node refresh both legs (RFC 4028 9: the caller keeps `uas`); a callee
    /// answering with its own timer refreshes, or has the caller refresh (its
    /// refreshes reach the caller through the node, the caller's reach it); a caller
    /// named `uas` in a 2xx the node wrote has the node refresh, one named `uac`
    /// refreshes itself. From the callee: the caller's 2xx says whether it refreshes
    /// (`uas`: it is the UAS of that request).
    pub(super) fn refresher_after(
        &self,
        from: Side,
        answered: Option<&str>,
        passed: &[(&'static str, String)],
    ) -> (Option<bool>, Option<bool>, Option<bool>) {
        let refresher = |v: &str| parse(v).map(|s| s.refresher);
        if from == Side::B {
            let caller = answered
                .and_then(refresher)
                .map(|r| r == Some(Refresher::Uas));
            return (None, caller, None);
        }
        let told = passed
            .iter()
            .find(|(name, _)| *name == "Session-Expires")
            .and_then(|(_, v)| parse(v));
        match (answered.and_then(refresher), told) {
            (Some(r), Some(t))
                if t.refresher == Some(Refresher::Uas) && r != Some(Refresher::Uas) =>
            {
                (Some(true), Some(false), Some(true))
            }
            // Passed on as it is: `uac` names the caller's side (the caller,
            // through the node), `uas` the callee (one without a refresher went
            // to the caller as `uac`: see `answer_headers`).
            (Some(r), _) => (Some(false), Some(r != Some(Refresher::Uas)), Some(false)),
            (None, Some(s)) => {
                let by_node = s.refresher == Some(Refresher::Uas);
                (Some(by_node), Some(!by_node), None)
            }
            (None, None) => (None, None, None),
        }
    }

    /// The caller was told (or told the node) whether it refreshes: kept for the
    /// node's own re-INVITEs to it (None: nothing said).
    pub(super) fn caller_told(&mut self, caller_refreshes: Option<bool>) {
        if let (Some(s), Some(refreshes)) = (self.session.as_mut(), caller_refreshes) {
            s.caller_refreshes = refreshes;
        }
    }

    /// A refresh went through agreeing `session_expires` (the 2xx's, or the one the
    /// node wrote into the 2xx it passed on: the caller keeps to that, and a node
    /// keeping the longer one it had refreshed too late, so the caller hung up; None:
    /// the interval goes on).
    pub(super) fn renew_session(&mut self, session_expires: Option<&str>, by_node: Option<bool>) {
        if self.session.is_some() {
            // Never below the node's Min-SE, as when the session started (see
            // `session_timer::agree`).
            let interval = session_expires
                .and_then(parse)
                .map(|s| {
                    s.interval
                        .max(crate::decide::session_timer::callee_floor(self.ctx.min_se))
                })
                .unwrap_or(0);
            self.restart_session(interval, by_node);
        }
    }

    /// The session's check time came: no refresh since, so both legs are hung up.
    pub(super) fn session_check(&mut self, generation: u32) {
        if self.session.is_some_and(|s| s.generation == generation) {
            self.expire_session("session expired without a refresh");
        }
    }

    /// The session is over (`why`): both legs are hung up, the call logged
    /// `session_expired`. Not while the callee judges a call its caller left: the
    /// caller's BYE crossing the node's refresh had that refresh's 481 (or timeout)
    /// hang up the callee mid-judgement and log the call `session_expired` (a review).
    pub(super) fn expire_session(&mut self, why: &'static str) {
        if self.phase != Phase::Answered || self.judging {
            return;
        }
        tracing::info!(why, "hanging up both legs");
        self.ctx.metrics.calls.sessions_expired.inc();
        self.end_reason = Some("session_expired");
        self.hang_up_both();
    }

    /// Adds the session's timer to a re-INVITE or UPDATE the node sends the party on
    /// `side` without one of its own (relayed from a party that does no timers, or the
    /// node's: a takeover's, a restore's): each is a session refresh that renegotiates
    /// the timer (RFC 4028 7.4, 9), and a party answering one that named none without
    /// Session-Expires turned its timer off. The caller then stopped refreshing and the
    /// node's check hung the call up an interval later (a review); so did a callee that
    /// refreshed the session (a takeover's re-INVITE, a caller's hold relayed, each
    /// without the timer: the next review). What it names is [`timer_role`]'s. Whether
    /// the party's answer speaks of the node's timer, not of the request's sender's:
    /// the node added it, or withheld it from a callee that refused its interval (see
    /// [`Call::timer_refused`]: the callee's 2xx without a timer then has the node
    /// refresh the caller's leg; read as the sender's, it left the node waiting for a
    /// callee that had turned its timer off: a review).
    pub(super) fn timer_to(&self, side: Side, headers: &mut super::legs::Headers) -> bool {
        let Some(s) = self.session else { return false };
        if headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("Session-Expires"))
        {
            return false;
        }
        let Some(role) = timer_role(side, s.by_node, s.caller_refreshes, s.callee_by_node) else {
            return false;
        };
        // Withheld where the callee refused this interval; `Supported: timer` goes all
        // the same (RFC 4028 7.1: in every request of a UAC that supports timers).
        if side != Side::B || s.callee_min_se.is_none_or(|min| s.interval >= min) {
            headers.push((
                "Session-Expires",
                format!("{};refresher={role}", s.interval),
            ));
        }
        // A Min-SE the caller taught the node (a 422) goes with every one to it (RFC
        // 4028 7.1), not with the node's own refreshes alone; the callee's own floor
        // was in the interval it agreed to.
        if let (Side::A, Some(min)) = (side, s.min_se) {
            headers.push(("Min-SE", min.to_string()));
        }
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("Supported"))
        {
            headers.push(("Supported", "timer".into()));
        }
        true
    }

    /// Whether an offer is out on a dialog of the call (a relayed re-offer, a
    /// re-INVITE of the node's own, a takeover's, a 2xx's offer waiting for its ACK):
    /// one at a time (RFC 3261 14.2).
    pub(super) fn offer_pending(&self) -> bool {
        self.resuming.is_some() || self.offer_pending_besides_takeover()
    }

    /// [`Call::offer_pending`] less the takeover's own re-INVITEs (what a takeover's
    /// retry waits for).
    pub(super) fn offer_pending_besides_takeover(&self) -> bool {
        self.reoffer.is_some() || self.own_reinvite.is_some() || self.late_ack.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Who each party is told refreshes, in a request of the node's to it.
    #[test]
    fn requests_to_a_party_name_who_refreshes_its_leg() {
        // (side, the node refreshes, the caller refreshes, the node refreshes the
        // callee too) -> the refresher named.
        let cases = [
            (Side::A, true, false, false, Some("uac")),
            (Side::A, true, false, true, Some("uac")),
            (Side::A, false, true, false, Some("uas")),
            // The callee refreshes: the caller hears the node's side.
            (Side::A, false, false, false, Some("uac")),
            (Side::B, false, false, false, Some("uas")),
            (Side::B, false, false, true, Some("uas")),
            // Nobody refreshes toward the callee: it hears nothing.
            (Side::B, true, false, false, None),
            (Side::B, false, true, false, None),
            // The caller refreshes: its refreshes reach the callee as they are, and
            // the node's requests say nothing of timers.
            (Side::B, false, true, true, None),
            // The node refreshes both legs (the callee answered `uac`).
            (Side::B, true, false, true, Some("uac")),
        ];
        for (side, by_node, caller, callee_by_node, named) in cases {
            assert_eq!(
                timer_role(side, by_node, caller, callee_by_node),
                named,
                "{side:?} by_node={by_node} caller={caller} callee_by_node={callee_by_node}"
            );
        }
    }

    fn invite(extra: &str) -> Request {
        let text = format!(
            "INVITE sip:0501234567@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
             From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:0501234567@127.0.0.1>\r\nCall-ID: c1\r\n\
             CSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match tsunagu_sip::parse::parse(text.as_bytes()).unwrap().0 {
            tsunagu_sip::SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    /// The node's refreshes refused with `Retry-After` (caller's leg and callee's, each
    /// counted apart): each wait uses up the tries it spans, so a 1800 s session's
    /// tries all come within the 868 s before its check: 300 s, then one share
    /// (217 s), then none; a refusal without Retry-After waits a share.
    #[test]
    fn refusals_with_retry_after_use_up_the_tries() {
        use crate::decide::session_timer::AfterRefusal::*;
        let s = Duration::from_secs;
        let mut timer = SessionTimer {
            interval: 1800,
            generation: 1,
            check: TimerId::for_test(1),
            by_node: true,
            send: None,
            refusals: 0,
            min_se: None,
            caller_refreshes: false,
            callee_min_se: None,
            callee_by_node: true,
            callee_refusals: 0,
        };
        // A party answering 503 Retry-After: 300 every time is tried after 300 s, then
        // 217 (the first wait used up two of the three tries' shares), then given up:
        // 517 s in all, before the session's check 868 s after the refresh.
        for callee in [false, true] {
            assert_eq!(timer.refused(callee, 503, None, Some(300)), After(s(300)));
            assert_eq!(timer.refused(callee, 503, None, Some(300)), After(s(217)));
            assert_eq!(timer.refused(callee, 503, None, Some(300)), GiveUp);
        }
        assert!(s(300 + 217) < check_after(1800) - refresh_after(1800));
        assert_eq!((timer.refusals, timer.callee_refusals), (4, 4));
        timer.refusals = 0;
        for _ in 0..3 {
            assert_eq!(timer.refused(false, 500, None, None), After(s(217)));
        }
        assert_eq!(timer.refused(false, 500, None, None), GiveUp);
    }

    /// Each row: the current timer (interval, generation, check), the interval a
    /// refresh names → the next check's interval and generation, and the check it
    /// replaces.
    #[test]
    fn a_refresh_replaces_the_pending_check() {
        let timer = |interval, generation, check| SessionTimer {
            interval,
            generation,
            check: TimerId::for_test(check),
            by_node: false,
            send: None,
            refusals: 0,
            min_se: None,
            caller_refreshes: false,
            callee_min_se: None,
            callee_by_node: false,
            callee_refusals: 0,
        };
        let rows: &[(Option<SessionTimer>, u32, Option<Refresh>)] = &[
            (None, 0, None),
            (
                None,
                1800,
                Some(Refresh {
                    interval: 1800,
                    generation: 1,
                    replaces: None,
                }),
            ),
            (
                Some(timer(1800, 1, 7)),
                0,
                Some(Refresh {
                    interval: 1800,
                    generation: 2,
                    replaces: Some(TimerId::for_test(7)),
                }),
            ),
            (
                Some(timer(1800, 5, 9)),
                600,
                Some(Refresh {
                    interval: 600,
                    generation: 6,
                    replaces: Some(TimerId::for_test(9)),
                }),
            ),
            (
                Some(timer(90, u32::MAX, 3)),
                0,
                Some(Refresh {
                    interval: 90,
                    generation: 0,
                    replaces: Some(TimerId::for_test(3)),
                }),
            ),
        ];
        for (current, interval, want) in rows {
            assert_eq!(
                &SessionTimer::refreshed(*current, *interval),
                want,
                "{current:?} {interval}"
            );
        }
    }

    /// However often a session is refreshed, one check is pending: each refresh
    /// replaced, not added to, the call's timers.
    #[test]
    fn refreshes_keep_one_session_check_pending() {
        let (mut timers, mut session) = (Timers::default(), None);
        let t0 = Instant::now();
        refresh(&mut session, 0, None, &mut timers, t0);
        assert!(session.is_none() && timers.len() == 0, "no timer, no check");
        for i in 0..100u64 {
            let interval = if i == 0 { 1800 } else { 0 };
            refresh(
                &mut session,
                interval,
                None,
                &mut timers,
                t0 + Duration::from_secs(i),
            );
        }
        assert_eq!(timers.len(), 1, "one check pending");
        let s = session.unwrap();
        assert_eq!((s.interval, s.generation), (1800, 100));
        assert_eq!(
            timers.next_due(),
            Some(t0 + Duration::from_secs(99) + check_after(1800))
        );
    }

    /// Where the node refreshes, each refresh also replaces the node's next one, due
    /// at half the interval; a session it does not refresh has none.
    #[test]
    fn the_node_s_own_refresh_is_one_and_due_at_half_the_interval() {
        let (mut timers, mut session) = (Timers::default(), None);
        let t0 = Instant::now();
        refresh(&mut session, 90, Some(true), &mut timers, t0);
        for i in 1..50u64 {
            refresh(
                &mut session,
                0,
                None,
                &mut timers,
                t0 + Duration::from_secs(i),
            );
        }
        assert_eq!(timers.len(), 2, "one check and one refresh pending");
        assert!(session.unwrap().by_node);
        assert_eq!(
            timers.next_due(),
            Some(t0 + Duration::from_secs(49) + Duration::from_secs(45))
        );
        refresh(&mut session, 90, Some(false), &mut timers, t0);
        assert_eq!(
            timers.len(),
            1,
            "the caller refreshes: no refresh of the node's"
        );
    }

    fn ok(extra: &str) -> Response {
        let text = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
             From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>;tag=2\r\nCall-ID: c1\r\n\
             CSeq: 2 UPDATE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match tsunagu_sip::parse::parse(text.as_bytes()).unwrap().0 {
            tsunagu_sip::SipMessage::Response(r) => r,
            _ => unreachable!(),
        }
    }

    /// A refresh's 2xx goes back with the answerer's timer; one without any, to a
    /// sender that asked while the node keeps a timer, names the sender refresher
    /// (else the sender reads "no expiration", stops, and the node hangs up).
    #[test]
    fn a_refresh_answer_keeps_its_sender_refreshing() {
        let own = |k: &'static str, v: &str| (k, v.to_string());
        // (the 2xx's headers, the refresh asked 1800 s with Supported: timer, the
        // session's interval kept by the node) -> headers passed on
        let rows: &[(&str, bool, Option<u32>, Vec<(&'static str, String)>)] = &[
            (
                "Session-Expires: 600;refresher=uas\r\n",
                true,
                Some(1800),
                vec![own("Session-Expires", "600;refresher=uas")],
            ),
            (
                "Session-Expires: 600;refresher=uac\r\nRequire: timer\r\n",
                true,
                Some(600),
                vec![
                    own("Session-Expires", "600;refresher=uac"),
                    own("Require", "timer"),
                ],
            ),
            (
                "",
                true,
                Some(1800),
                vec![
                    own("Session-Expires", "1800;refresher=uac"),
                    own("Require", "timer"),
                ],
            ),
            ("", false, Some(1800), vec![]),
            // Neither asked nor said it could: nothing of the answerer's timer.
            (
                "Session-Expires: 600;refresher=uac\r\nRequire: timer\r\n",
                false,
                Some(600),
                vec![],
            ),
            ("", true, None, vec![]),
            ("Require: timer\r\n", true, None, vec![]),
            // As the node writes it: other parameters left out, the refresher in its
            // own spelling (a live torture run had them passed as written).
            (
                "Session-Expires: 600 ; x=y ; Refresher = UAS\r\n",
                true,
                Some(600),
                vec![own("Session-Expires", "600;refresher=uas")],
            ),
        ];
        let asking = TimerAsk::of(&invite("Session-Expires: 1800\r\nSupported: timer\r\n"));
        let silent = TimerAsk::of(&invite(""));
        for (extra, asked, interval, want) in rows {
            let request = if *asked { &asking } else { &silent };
            assert_eq!(
                &answer_headers(&ok(extra), request, *interval, true, true, false),
                want,
                "{extra:?}"
            );
        }
        // Asked by a sender that said nothing of `Supported: timer`: not made refresher;
        // asked for less than the node keeps: that.
        let unable = TimerAsk::of(&invite("Session-Expires: 1800\r\n"));
        assert_eq!(
            answer_headers(&ok(""), &unable, Some(1800), true, true, false),
            vec![]
        );
        let shorter = TimerAsk::of(&invite("Session-Expires: 900\r\nSupported: timer\r\n"));
        assert_eq!(
            answer_headers(&ok(""), &shorter, Some(1800), true, true, false),
            vec![
                own("Session-Expires", "900;refresher=uac"),
                own("Require", "timer")
            ]
        );
        // Asking the other side to refresh keeps that where it does, else hears
        // nothing of timers (never `uac` with `Require: timer`: RFC 4028 table 2).
        let by_node = TimerAsk::of(&invite(
            "Session-Expires: 1800;refresher=uas\r\nSupported: timer\r\n",
        ));
        assert_eq!(
            answer_headers(&ok(""), &by_node, Some(1800), true, true, false),
            vec![own("Session-Expires", "1800;refresher=uas")]
        );
        assert_eq!(
            answer_headers(&ok(""), &by_node, Some(1800), false, false, false),
            vec![]
        );
        // A callee timer without a refresher, to a caller that can refresh: told
        // `uac` (it refreshes); to one that cannot, or asked `uas`: `uas`.
        let able = TimerAsk::of(&invite(
            "Session-Expires: 1800;refresher=uac\r\nSupported: timer\r\n",
        ));
        assert_eq!(
            answer_headers(
                &ok("Session-Expires: 1200\r\n"),
                &able,
                Some(1800),
                true,
                true,
                false
            ),
            vec![
                own("Session-Expires", "1200;refresher=uac"),
                own("Require", "timer")
            ]
        );
        assert_eq!(
            answer_headers(
                &ok("Session-Expires: 1200\r\n"),
                &by_node,
                Some(1800),
                true,
                true,
                false
            ),
            vec![own("Session-Expires", "1200;refresher=uas")]
        );
        // The caller, the session's refresher, asked nothing (a hold without
        // Session-Expires): told the session's, going on refreshing where it says it
        // can, else the node takes the part; a 2xx with a timer of its own passes.
        let silent_able = TimerAsk::of(&invite("Supported: timer\r\n"));
        let unsupported_900 = TimerAsk::of(&invite("Session-Expires: 900\r\n"));
        let rows: &[(&TimerAsk, &str, Vec<(&'static str, String)>)] = &[
            (
                &silent_able,
                "",
                vec![
                    own("Session-Expires", "1800;refresher=uac"),
                    own("Require", "timer"),
                ],
            ),
            (
                &silent,
                "",
                vec![own("Session-Expires", "1800;refresher=uas")],
            ),
            (
                &silent_able,
                "Session-Expires: 600;refresher=uas\r\n",
                vec![own("Session-Expires", "600;refresher=uas")],
            ),
            // An interval without `Supported: timer`: the node takes the part, never
            // for longer than asked (it wrote the session's 1800: a review).
            (
                &unsupported_900,
                "",
                vec![own("Session-Expires", "900;refresher=uas")],
            ),
        ];
        for (request, extra, want) in rows {
            assert_eq!(
                &answer_headers(&ok(extra), request, Some(1800), true, true, true),
                want,
                "{extra:?}"
            );
            assert_eq!(
                answer_headers(&ok(extra), request, None, true, true, true).is_empty(),
                extra.is_empty(),
                "no session kept: {extra:?}"
            );
        }
    }

    /// Only session headers that parse go to the other leg.
    #[test]
    fn session_headers_passed_on() {
        let se = ("Session-Expires", "1800;refresher=uac".to_string());
        let min = ("Min-SE", "90".to_string());
        let rows: &[(&str, Headers)] = &[
            (
                "Session-Expires: 1800;refresher=uac\r\nMin-SE: 90\r\n",
                vec![se.clone(), min.clone()],
            ),
            (
                "Session-Expires: 99999999999999999999\r\nMin-SE: 90\r\n",
                vec![],
            ),
            (
                "Session-Expires: 1800;refresher=uac\r\nMin-SE: 18446744073709551615\r\n",
                vec![se.clone()],
            ),
            ("Min-SE: 90\r\n", vec![]),
            ("Supported: timer\r\n", vec![("Supported", "timer".into())]),
            // As the node writes them: a refresher it reads, no other parameter, a
            // Min-SE of at least 90 (a live torture run had these passed as written).
            (
                "Session-Expires: 1800;refresher=bob\r\nMin-SE: 0\r\n",
                vec![("Session-Expires", "1800".into()), min.clone()],
            ),
            (
                "Session-Expires: 1800 ; x=y ; Refresher = UAC\r\nMin-SE: 600\r\n",
                vec![se.clone(), ("Min-SE", "600".into())],
            ),
            // A lab's short session: the floor never above the interval.
            (
                "Session-Expires: 60\r\nMin-SE: 0\r\n",
                vec![("Session-Expires", "60".into()), ("Min-SE", "60".into())],
            ),
        ];
        for (extra, want) in rows {
            assert_eq!(&TimerAsk::of(&invite(extra)).headers(), want, "{extra:?}");
        }
    }
}
