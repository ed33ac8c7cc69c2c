//! The steps a call runs before and after its conversation, with audio the parties
//! hear: the closed-hours prompt, the IVR menu, the recording notice, the queue, then
//! forwarding (with ringback while the caller hears the node's early media); and the
//! post-call judgement of the callee. Each step either finishes at once and goes on to
//! the next [`Stage`], or plays a prompt and goes on when the relay reports its end
//! ([`After`]), a key, or a timer.

use super::legs::Leg;
use super::{Call, CallMsg, FarEnd, Phase};
use crate::decide::ivr::{on_key, on_silence, IvrStep};
use crate::metrics::{OutcomeLabel, PurposeLabel};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tsunagu_media::{sdp, MediaEvent, Prompt, Side};
use tsunagu_sip::Method;
use tsunagu_store::{CallResult, Ivr};

/// What a call does next, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    Ivr,
    Notice,
    Lines,
}

/// What happens when a prompt that is not looped ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    /// Go on with the call.
    Continue(Stage),
    /// Release the caller with this result and SIP status.
    GiveUp(CallResult, u16),
    /// The IVR menu ended: wait for a key.
    IvrListen,
    /// The invalid-key prompt ended: play the menu again.
    IvrMenu,
    /// The judgement prompt ended: wait for the callee's key.
    JudgeListen,
}

/// An IVR in progress.
pub(super) struct IvrState {
    menu: Ivr,
    /// Times the menu has been played.
    played: u32,
    /// Invalid keys pressed (each a try: see `decide::ivr`).
    invalid: u32,
    /// Which wait a timeout belongs to.
    wait: u32,
}

impl Call {
    /// Runs the call from `stage` on.
    pub(super) fn proceed(&mut self, stage: Stage) {
        match stage {
            Stage::Ivr => match self.number.ivr.clone() {
                Some(menu) if self.closed_result.is_none() => self.start_ivr(menu),
                _ => self.proceed(Stage::Notice),
            },
            Stage::Notice => {
                let notice = self
                    .number
                    .recording
                    .as_ref()
                    .and_then(|r| r.notice.clone());
                if let Some(name) = notice {
                    if self.play_to_caller(&name, "recording_notice", After::Continue(Stage::Lines))
                    {
                        return;
                    }
                    // Not played (see `start_recording`): the call goes on unrecorded;
                    // unless it ended there (no RTP port: refused 503, or the IVR's
                    // caller hung up).
                    self.recording_withheld = true;
                    if matches!(self.phase, Phase::Ending | Phase::Done) {
                        return;
                    }
                }
                self.proceed(Stage::Lines)
            }
            Stage::Lines => self.take_line(),
        }
    }

    /// Starts the media relay if the call has none yet; false if no RTP port is free
    /// (the call is then refused 503).
    pub(super) fn ensure_relay(&mut self) -> bool {
        if self.relay.is_some() {
            return true;
        }
        // Leased at admission; a call taken over from another node leases them now.
        let leased = self
            .media_ports
            .take()
            .map_or_else(|| self.ctx.ports.allocate_two(), Ok);
        let (a, b) = match leased {
            Ok(ports) => ports,
            Err(_) => {
                tracing::warn!("no RTP ports free");
                self.give_up(CallResult::Failed, 503);
                return false;
            }
        };
        let me = self.me.clone();
        let on_event: tsunagu_media::OnEvent = Arc::new(move |e| {
            let _ = me.send_message(CallMsg::Media(e));
        });
        self.relay = Some(tsunagu_media::Relay::start(
            a,
            b,
            self.ctx.metrics.media.clone(),
            on_event,
        ));
        true
    }

    /// Answers the caller with the node's own SDP — 183 (early media) or 200 — once;
    /// returns the codec the caller was answered with. None if the caller's INVITE
    /// offers no G.711 audio (then the call goes on without prompts).
    fn answer_caller(&mut self, code: u16) -> Option<u8> {
        if let Some(pt) = self.a_answer {
            if code == 200 && !self.a_answered {
                let ep = self.ctx.endpoint.clone();
                let sdp = self.a.last_sdp.clone();
                self.a.respond(&ep, 200, sdp.as_deref());
                self.a_answered = true;
            }
            return Some(pt);
        }
        let answer = self.own_answer(self.a_view.offer.as_deref()?)?;
        // The caller's own offer says where it receives (a checkpoint keeps it too).
        self.set_far_end(Side::A, FarEnd::answered(&answer));
        let ep = self.ctx.endpoint.clone();
        self.a.respond(&ep, code, Some(&answer.sdp));
        self.a_answered = code == 200;
        // The session the node offers the caller from now on goes on from this one
        // (its origin's session id and version: RFC 3264 8).
        self.a.last_sdp = Some(answer.sdp);
        self.a_answer = Some(answer.payload_type);
        Some(answer.payload_type)
    }

    /// The node's own answer to the caller's `offer`, at the relay's port facing the
    /// caller (a menu, a queue, a judgement: the node is the caller's peer).
    fn own_answer(&self, offer: &str) -> Option<sdp::Answer> {
        let local = self.relay.as_ref()?.local(Side::A);
        sdp::answer(offer, local.ip(), local.port(), now_session())
    }

    /// A re-INVITE or UPDATE from a caller the node answered itself (a menu, a queue)
    /// while nobody else is on the call: the node is the caller's only peer, so it
    /// answers the offer as it answered the INVITE (a codec it does not play in is
    /// refused 488; an offerless re-INVITE gets the current session as the offer, and
    /// the answer in its ACK is not read). They were refused 491 although nothing was
    /// pending: the caller tried again every few seconds for as long as the menu or
    /// the queue lasted, and some carriers hang up after a few (a review).
    pub(super) fn answer_offer_here(
        &mut self,
        req: tsunagu_sip::Request,
        info: tsunagu_sip::Info,
        key: tsunagu_sip::transaction::TxKey,
    ) {
        let ep = self.ctx.endpoint.clone();
        let playing = self.a_answer;
        let body = match tsunagu_sip::parse::sdp_body(&req, &req.body) {
            Some(offer) => {
                let answer = self
                    .own_answer(&offer)
                    .filter(|a| Some(a.payload_type) == playing);
                let Some(answer) = answer else {
                    tracing::info!(method = %req.method, "an offer to the node's own answer it cannot take: 488");
                    return ep.respond(&req, &info, &key, 488, None, &[], None);
                };
                self.set_far_end(Side::A, FarEnd::answered(&answer));
                self.a.next_body(Some(answer.sdp))
            }
            None if req.method == Method::Invite => self.a.last_sdp.clone(),
            None => None,
        };
        tracing::debug!(method = %req.method, "an offer answered by the node itself");
        self.refresh_target(Side::A, tsunagu_sip::parse::header(&req, "Contact"));
        let contact = super::legs::contact(&ep, self.a.peer.transport);
        ep.respond(
            &req,
            &info,
            &key,
            200,
            None,
            &[("Contact", contact.as_str())],
            body.as_deref().map(|s| ("application/sdp", s.as_bytes())),
        );
    }

    /// The prompt `name` as this call's operator sees it; a missing one is logged and
    /// counted (the number named it; the call goes on without it).
    fn prompt(&self, name: &str) -> Option<Arc<Prompt>> {
        let found = self.ctx.prompts.get(&self.number.operator_id, name);
        if found.is_none() {
            tracing::warn!(prompt = name, "no such prompt; skipped");
            self.ctx.metrics.calls.prompts_missing.inc();
        }
        found
    }

    /// Starts `prompt` in the relay toward `side`: looped when nothing follows it,
    /// else `after` runs when it ends.
    fn start_playing(
        &mut self,
        side: Side,
        prompt: Arc<Prompt>,
        payload_type: u8,
        after: Option<After>,
    ) -> bool {
        let Some(relay) = self.relay.as_ref() else {
            return false;
        };
        self.prompt_ids += 1;
        relay.play(side, prompt, payload_type, after.is_none(), self.prompt_ids);
        self.playing = after.map(|a| (self.prompt_ids, a));
        true
    }

    /// Plays the prompt `name` into `side` in `payload_type`; false if the node has no
    /// such prompt for this operator.
    fn play(
        &mut self,
        side: Side,
        name: &str,
        purpose: &'static str,
        payload_type: u8,
        after: Option<After>,
    ) -> bool {
        let Some(prompt) = self.prompt(name) else {
            return false;
        };
        let played = self.start_playing(side, prompt, payload_type, after);
        self.counted(purpose, name, side, played)
    }

    fn counted(&self, purpose: &'static str, name: &str, side: Side, played: bool) -> bool {
        if played {
            tracing::debug!(prompt = name, ?side, "playing");
            self.ctx
                .metrics
                .calls
                .prompts_played
                .get_or_create(&PurposeLabel { purpose })
                .inc();
        }
        played
    }

    /// Plays a prompt to the caller as early media (or in the answered IVR call). With
    /// `after` None it loops until stopped. False if it could not be played.
    pub(super) fn play_to_caller(
        &mut self,
        name: &str,
        purpose: &'static str,
        after: After,
    ) -> bool {
        self.play_to_caller_as(name, purpose, Some(after))
    }

    pub(super) fn loop_to_caller(&mut self, name: &str, purpose: &'static str) -> bool {
        self.play_to_caller_as(name, purpose, None)
    }

    fn play_to_caller_as(
        &mut self,
        name: &str,
        purpose: &'static str,
        after: Option<After>,
    ) -> bool {
        // Looked up first: a missing prompt must not answer the caller with early media.
        let Some(prompt) = self.prompt(name) else {
            return false;
        };
        if !self.ensure_relay() {
            return false;
        }
        let Some(pt) = self.answer_caller(183) else {
            tracing::info!("the caller offered no G.711 audio; prompt skipped");
            return false;
        };
        let played = self.start_playing(Side::A, prompt, pt, after);
        self.counted(purpose, name, Side::A, played)
    }

    /// The caller has the node's early media: they hear the node's ringback until the
    /// callee sends early media of its own or answers.
    pub(super) fn ringback(&mut self) {
        if let Some(pt) = self.a_answer {
            self.start_playing(Side::A, self.ctx.ringback.clone(), pt, None);
        }
    }

    /// Stops what plays to the caller (the callee's audio flows instead).
    pub(super) fn stop_caller_audio(&mut self) {
        if let (Some(_), Some(relay)) = (&self.a_answer, &self.relay) {
            relay.stop_playing(Side::A);
            self.playing = None;
        }
    }

    pub(super) fn on_media(&mut self, event: MediaEvent) {
        match event {
            MediaEvent::PromptDone { id, .. } => {
                let Some((playing, after)) = self.playing else {
                    return;
                };
                if playing != id {
                    return;
                }
                self.playing = None;
                self.after_prompt(after);
            }
            MediaEvent::Digit { side, key } => self.on_key(side, key, "rfc4733"),
        }
    }

    /// A key from either party (RFC 4733 or SIP INFO).
    pub(super) fn on_key(&mut self, side: Side, key: char, source: &'static str) {
        let now = Instant::now();
        if echoed_key(self.last_key, (side, key, source), now) {
            // One press signalled both ways (some SBCs send RFC 4733 and INFO): it
            // counted twice, an invalid key using two of the menu's tries (a review).
            tracing::debug!(?side, %key, source, "the same key by the other signal: taken once");
            return;
        }
        self.last_key = Some((side, key, source, now));
        tracing::debug!(?side, %key, source, "key");
        self.ctx
            .metrics
            .calls
            .digits
            .get_or_create(&crate::metrics::SourceLabel { source })
            .inc();
        match side {
            Side::A if self.ivr.is_some() && self.phase == Phase::Trying => self.ivr_key(key),
            Side::B if self.judging => {
                self.judgement_digit = Some(key);
                self.end_judgement("digit");
            }
            _ => {}
        }
    }

    fn after_prompt(&mut self, after: After) {
        if self.phase != Phase::Trying && after != After::JudgeListen {
            return;
        }
        match after {
            After::Continue(stage) => self.proceed(stage),
            After::GiveUp(result, code) => self.give_up(result, code),
            After::IvrListen => {
                if let Some(ivr) = self.ivr.as_mut() {
                    ivr.wait += 1;
                    let wait = ivr.wait;
                    let seconds = u64::from(ivr.menu.timeout_seconds.max(1));
                    self.after(Duration::from_secs(seconds), CallMsg::IvrTimeout(wait));
                }
            }
            After::IvrMenu => self.play_menu(),
            After::JudgeListen => {
                let seconds = self
                    .number
                    .judgement
                    .as_ref()
                    .map(|j| j.seconds)
                    .unwrap_or(5);
                self.after(
                    Duration::from_secs(u64::from(seconds.max(1))),
                    CallMsg::JudgementTimeout,
                );
            }
        }
    }

    /// The IVR answers the caller (the menu needs their keys, which many networks
    /// carry only once a call is answered) and plays the menu.
    fn start_ivr(&mut self, menu: Ivr) {
        if !self.ensure_relay() {
            return;
        }
        if self.answer_caller(200).is_none() {
            tracing::info!("the caller offered no G.711 audio; IVR skipped");
            self.ctx
                .metrics
                .calls
                .ivr
                .get_or_create(&OutcomeLabel { outcome: "skipped" })
                .inc();
            return self.proceed(Stage::Notice);
        }
        self.ivr = Some(Box::new(IvrState {
            menu,
            played: 0,
            invalid: 0,
            wait: 0,
        }));
        self.ivr_offered = true;
        self.play_menu();
    }

    fn play_menu(&mut self) {
        let Some(ivr) = self.ivr.as_mut() else { return };
        ivr.played += 1;
        ivr.wait += 1; // a timer of the previous round no longer counts
        let name = ivr.menu.prompt.clone();
        let pt = self.a_answer.unwrap_or(0);
        if !self.play(Side::A, &name, "ivr_menu", pt, Some(After::IvrListen)) {
            // No menu to play: wait for a key all the same.
            self.after_prompt(After::IvrListen);
        }
    }

    fn ivr_key(&mut self, key: char) {
        let Some(ivr) = self.ivr.as_ref() else { return };
        let step = on_key(&ivr.menu, key, ivr.played, ivr.invalid);
        self.ivr_digits.push(key);
        self.ivr_step(step, "routed");
    }

    pub(super) fn ivr_timeout(&mut self, wait: u32) {
        let Some(ivr) = self.ivr.as_ref() else { return };
        if ivr.wait != wait || self.phase != Phase::Trying {
            return;
        }
        let step = on_silence(&ivr.menu, ivr.played);
        self.ivr_step(step, "default");
    }

    fn ivr_step(&mut self, step: IvrStep, routed: &'static str) {
        let Some(ivr) = self.ivr.as_mut() else { return };
        ivr.wait += 1;
        let outcome = match step {
            IvrStep::Route(key) => {
                let destinations = ivr.menu.routes.get(&key).cloned().unwrap_or_default();
                tracing::info!(%key, how = routed, "IVR routed");
                self.ivr = None;
                self.stop_caller_audio();
                let mut n = (*self.number).clone();
                n.destinations = destinations;
                self.number = Arc::new(n);
                self.proceed(Stage::Notice);
                routed
            }
            IvrStep::Invalid => {
                ivr.invalid += 1;
                let name = ivr
                    .menu
                    .invalid_prompt
                    .clone()
                    .unwrap_or_else(|| "ivr_invalid".into());
                let pt = self.a_answer.unwrap_or(0);
                if !self.play(Side::A, &name, "ivr_invalid", pt, Some(After::IvrMenu)) {
                    self.play_menu();
                }
                "invalid"
            }
            IvrStep::Replay => {
                self.play_menu();
                "replayed"
            }
            IvrStep::GiveUp => {
                tracing::info!("IVR got no valid key; releasing the caller");
                self.ivr = None;
                self.give_up(CallResult::Rejected, 480);
                "no_input"
            }
        };
        self.ctx
            .metrics
            .calls
            .ivr
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// The caller hung up an answered call: the callee hears the judgement prompt and
    /// may press a key. False if the number has no judgement (or its prompt is missing).
    pub(super) fn start_judgement(&mut self) -> bool {
        let Some(j) = self.number.judgement.clone() else {
            return false;
        };
        if self.b.is_none() {
            return false;
        }
        let Some(pt) = self.b_payload_type else {
            // The callee answered without G.711: PCMU it never agreed to went to it,
            // unheard, and the judgement timed out (a review). None, counted.
            tracing::info!("no judgement: the callee's audio is not G.711");
            self.ctx
                .metrics
                .calls
                .judgements
                .get_or_create(&OutcomeLabel { outcome: "skipped" })
                .inc();
            return false;
        };
        if !self.play(
            Side::B,
            &j.prompt,
            "judgement",
            pt,
            Some(After::JudgeListen),
        ) {
            return false;
        }
        self.talk_end = Some(Instant::now());
        self.judging = true;
        tracing::debug!("judgement: waiting for the callee's key");
        true
    }

    /// Ends the judgement (a key, or time ran out): hangs up the callee.
    pub(super) fn end_judgement(&mut self, outcome: &'static str) {
        if !self.judging {
            return;
        }
        self.judging = false;
        self.ctx
            .metrics
            .calls
            .judgements
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        let ep = self.ctx.endpoint.clone();
        if let Some(b) = self.b.as_mut() {
            b.bye(&ep);
        }
        self.end_and_wait();
    }

    /// The callee left during its judgement (its BYE, or its 481 to a takeover's
    /// re-INVITE): the call ends, the judgement counted `hung_up`.
    pub(super) fn callee_left_judgement(&mut self) {
        self.ctx
            .metrics
            .calls
            .judgements
            .get_or_create(&OutcomeLabel { outcome: "hung_up" })
            .inc();
        self.judging = false;
        self.finish();
    }

    /// Hangs up the caller (one the node answered itself, an IVR; or any answered call
    /// whose callee is gone, a takeover's 481) and ends the call.
    pub(super) fn hang_up_caller(&mut self) {
        let ep = self.ctx.endpoint.clone();
        let (spec, peer) = self.a.request(&ep, Method::Bye);
        ep.request(spec, peer);
        self.end_and_wait();
    }
}

/// An SDP session id for the node's own answers.
fn now_session() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1)
}

/// How close in time the same key from a party by the other signal is one press.
const ECHO_WINDOW: Duration = Duration::from_millis(300);

/// Whether key `key` of `side` by signal `source` at `now` repeats `last`, the last
/// key taken, by the other signal within [`ECHO_WINDOW`]: one press sent both as RFC
/// 4733 and as SIP INFO. The same signal twice is two presses.
fn echoed_key(
    last: Option<(Side, char, &'static str, Instant)>,
    (side, key, source): (Side, char, &'static str),
    now: Instant,
) -> bool {
    last.is_some_and(|(s, k, src, at)| {
        s == side && k == key && src != source && now.saturating_duration_since(at) < ECHO_WINDOW
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_signalled_both_ways_is_one_press() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let last = Some((Side::A, '7', "rfc4733", t0));
        // Each row: the key now (side, key, signal), when, whether it is the same press.
        let rows = [
            ((Side::A, '7', "info"), ms(50), true),
            ((Side::A, '7', "info"), ms(299), true),
            ((Side::A, '7', "info"), ms(300), false),
            // The same signal again is the caller pressing again.
            ((Side::A, '7', "rfc4733"), ms(50), false),
            ((Side::A, '8', "info"), ms(50), false),
            ((Side::B, '7', "info"), ms(50), false),
        ];
        for (now_key, at, want) in rows {
            assert_eq!(echoed_key(last, now_key, at), want, "{now_key:?}");
        }
        assert!(!echoed_key(None, (Side::A, '7', "info"), t0));
    }
}
