//! Calls that move between nodes (SPEC 6).
//!
//! Every call keeps a checkpoint in the store ([`super::checkpoint`]): at each
//! forwarding attempt (the INVITE ringing), at answer, and after each change of the
//! session. When its node dies (or drains), another node claims the call in the store
//! (compare-and-set on its owner and epoch) and resumes it here: it allocates media
//! ports, re-INVITEs each party with SDP pointing at its own ports and a Contact at
//! itself (a target refresh: later requests come here), and relays again once a party
//! answers. The call's record is written once, by its last owner, with the nodes that
//! carried it and when it moved; talk time counts from the first answer.

use super::checkpoint::{Answered, Checkpoint, Dialog, HeldLine, Ringing, State, VERSION};
use super::legs::{ALeg, BLeg, Leg};
use super::{Call, CallHandle, CallMsg, CallRef, Exit, FarEnd, Phase};
use crate::context::{CallSlot, NodeContext};
use crate::decide::caller::Caller;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tsunagu_media::{sdp, RecordMode, Side};
use tsunagu_sip::build::RequestSpec;
use tsunagu_sip::parse::sdp_body;
use tsunagu_sip::{Method, Response};
use tsunagu_store::{CallRecord, CallResult, CallerKind, RecordingPart, TrackingNumber};

/// A call this node claimed, to resume.
pub struct ResumeArgs {
    pub ctx: Arc<NodeContext>,
    /// The call as stored, now owned by this node.
    pub record: CallRecord,
    pub answered: Box<Answered>,
    /// Nodes that carried it so far.
    pub nodes: Vec<String>,
    pub number: Arc<TrackingNumber>,
    pub logged: Arc<AtomicBool>,
    /// When the node that ran it was last heard, for a member declared down (store
    /// milliseconds); None for a call handed over by a draining node.
    pub quiet_since_ms: Option<i64>,
}

/// Resuming: our re-INVITEs waiting for the parties' answers.
pub(super) struct Resuming {
    /// Our re-INVITE on each leg (caller, callee).
    pending: [Reinvite; 2],
    /// When the call's node was last heard (store milliseconds), for a call claimed
    /// from a member declared down; None for one handed over by a live node.
    quiet_since_ms: Option<i64>,
    started: Instant,
    /// What the call came with, until the media is set up.
    answered: Option<Box<Answered>>,
    /// A party had left (481): the takeover's outcome is counted, and the other
    /// party's answer is only acknowledged and its media anchored here (its
    /// judgement, a callee's, plays through this node).
    left: bool,
    /// The callee's re-INVITE carries the session's timer (it refreshes the session:
    /// see [`Call::timer_to`]): its 2xx says whether it goes on doing so.
    callee_timer: bool,
    /// A party refused the session's timer (422): asked again, once, with what
    /// [`Call::timer_refused`] learnt (the caller's floor; the callee without a
    /// timer, its 2xx then having the node refresh the caller's leg). By side.
    timer_retried: [bool; 2],
}

/// Where the takeover re-INVITE of one leg stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reinvite {
    /// Sent with this CSeq, not answered yet.
    Sent(u32),
    /// Refused 491 (the party has a re-INVITE of its own pending): sent again when
    /// [`CallMsg::TakeoverRetry`] fires.
    Refused,
    /// Answered (or no longer waited for).
    Done,
}

/// How long a party's 491 Request Pending is waited out before the takeover fails.
/// A party refuses our re-INVITE while one of its own is pending (RFC 3261 14.2), and
/// one it sent the dead node stays pending until its Timer B (64*T1, 32 s): so a bit
/// longer than that.
const GLARE_SPAN: Duration = Duration::from_secs(40);

fn index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

fn elapsed_since_ms(then_ms: i64) -> Duration {
    let now = crate::clock::now_ms();
    Duration::from_millis(now.saturating_sub(then_ms).max(0) as u64)
}

/// The instant of wall-clock time `at_ms` (a call's start or answer on another node,
/// the moment a dead node was last heard) on this node's monotonic clock; now, for a
/// time in the future.
pub(super) fn instant_at(at_ms: i64) -> Instant {
    let now = Instant::now();
    now.checked_sub(elapsed_since_ms(at_ms)).unwrap_or(now)
}

impl Call {
    /// The checkpoint of the call as it stands: answered (both dialogs), ringing (the
    /// INVITE of the attempt), or none yet.
    pub(super) fn checkpoint(&self) -> Option<Checkpoint> {
        let state = match (&self.answered, &self.b) {
            (Some(_), Some(b)) => {
                let [far_a, far_b] = self.far_ends.get();
                let mut a = self.a.dialog();
                (a.media, a.dtmf, a.formats) = (far_a.media, far_a.dtmf, far_a.formats.known());
                let mut bd = b.dialog();
                (bd.media, bd.dtmf, bd.formats) = (far_b.media, far_b.dtmf, far_b.formats.known());
                State::Answered(Box::new(Answered {
                    a,
                    b: bd,
                    session_seconds: self.session.map(|s| s.interval),
                    session_by_node: self.session.is_some_and(|s| s.by_node),
                    session_caller_refreshes: self.session.map(|s| s.caller_refreshes),
                    session_callee_by_node: self.session.is_some_and(|s| s.callee_by_node),
                    session_callee_min_se: self.session.and_then(|s| s.callee_min_se),
                    recording: self.recording_state(),
                    // NO_G711 for a callee without G.711 (the checkpoint's field
                    // stays a number, as older nodes read it).
                    b_payload_type: self.b_payload_type.unwrap_or(NO_G711),
                    lines: self
                        .held_lines
                        .iter()
                        .map(|l| HeldLine {
                            key: l.key.clone(),
                            limit: l.limit,
                        })
                        .collect(),
                    ivr_digits: self.ivr_digits.clone(),
                    caller_verified: self.caller_verified,
                    closed_result: self.closed_result,
                    ivr_offered: Some(self.ivr_offered),
                }))
            }
            (None, Some(b)) if self.phase == Phase::Trying => {
                let i = &b.invite;
                State::Ringing(Box::new(Ringing {
                    uri: i.uri.clone(),
                    hop: b.peer.into(),
                    sent_by: i.sent_by,
                    branch: i.branch.clone(),
                    from: i.from.clone(),
                    to: i.to.clone(),
                    call_id: i.call_id.clone(),
                    cseq: i.cseq,
                }))
            }
            _ => return None,
        };
        Some(Checkpoint {
            version: VERSION,
            nodes: self.carried_by(),
            state,
        })
    }

    /// Nodes that carried the call, this one last.
    pub(super) fn carried_by(&self) -> Vec<String> {
        let mut nodes = self.nodes.clone();
        if nodes.last() != Some(&self.ctx.node_id) {
            nodes.push(self.ctx.node_id.clone());
        }
        nodes
    }

    fn recording_state(&self) -> Option<super::checkpoint::Recording> {
        let here = self.recording.as_ref().map(|rel| RecordingPart {
            node: self.ctx.node_id.clone(),
            path: rel.clone(),
            offset_ms: self.recording_offset_ms,
        });
        recording_state(self.recording_mode, &self.recording_parts, here)
    }

    /// Writes the call's record in progress with its checkpoint (through the call-log
    /// writer's batches, like every record in progress). Without checkpoints (a node
    /// on its own, or `cluster.checkpoints = false`) only the answer is written
    /// (`always`), as a plain record in progress.
    pub(super) fn checkpoint_now(&mut self, always: bool) {
        if !self.ctx.checkpoints {
            if always {
                self.ctx.log.active(self.progress_record(), None);
            }
            return;
        }
        if !always && !self.ctx.log.ready() {
            // The store is failing or far behind: only what MESSAGES_PER_CALL counts
            // is queued, so the queue stays bounded; the call's next checkpoint (or
            // its last stored one) serves a takeover.
            return;
        }
        let cp = self.checkpoint().map(|c| c.encode());
        self.ctx.log.active(self.progress_record(), cp);
    }

    /// A call claimed from another node (see the module doc). It starts answered; the
    /// media and the re-INVITEs follow at its first message.
    /// Takes the box so that its allocation is freed here (see `Call::new`).
    pub(super) fn resumed(args: Box<ResumeArgs>, me: CallRef) -> Result<Box<Call>, String> {
        let ResumeArgs {
            ctx,
            record: r,
            answered,
            nodes,
            number,
            logged,
            quiet_since_ms,
        } = *args;
        let routing = ctx.routing.clone();
        let allowed = |ip: std::net::IpAddr| routing.is_trunk_address(ip);
        let a = ALeg::restore(&answered.a, &allowed)
            .ok_or("the checkpoint's caller dialog cannot be restored")?;
        let destination = r.destination_number.clone().unwrap_or_default();
        let b = BLeg::restore(&ctx.endpoint, &answered.b, &destination, &allowed);
        ctx.endpoint
            .register(&a.info.call_id, Arc::new(CallHandle(me.clone())));
        ctx.endpoint
            .register(b.call_id(), Arc::new(CallHandle(me.clone())));
        let answered_at = r.answered_at.unwrap_or(r.started_at);
        let now = Instant::now();
        let started = instant_at(r.started_at);
        let answered_instant = instant_at(answered_at);
        let caller = Caller {
            number: r.caller_number.clone(),
            kind: r.caller_kind,
            identity: None,
            withheld: r.caller_kind == CallerKind::Anonymous,
        };
        let span = tracing::info_span!("call", call_id = %r.call_id, number = %number.number, caller = %caller.number);
        let slot = CallSlot::take(&ctx, usize::MAX);
        let last_trunk = r
            .trunk
            .as_ref()
            .and_then(|t| ctx.routing.trunks.iter().position(|x| &x.name == t));
        let recording_parts = answered
            .recording
            .as_ref()
            .map(|rec| rec.parts.clone())
            .unwrap_or_default();
        let mut call = Box::new(Call::blank(
            ctx,
            me.clone(),
            r.call_id.clone(),
            span,
            number,
            a,
            caller,
        ));
        call.b = Some(b);
        call.started = started;
        call.started_at_ms = r.started_at;
        call.answered = Some((answered_instant, answered_at));
        call.phase = Phase::Answered;
        call.result = CallResult::Answered;
        call.upstream_code = 200;
        call.a_answered = true;
        // Its caller acknowledged the answer where it ran (the call was checkpointed
        // answered): an ACK timeout here is a re-INVITE's.
        call.a_acked = true;
        call.attempts = r.attempts.clone();
        call.last_trunk = last_trunk;
        call.logged = logged;
        call.b_payload_type = Some(answered.b_payload_type).filter(|pt| matches!(pt, 0 | 8));
        call.nodes = nodes;
        call.taken_over_at = Some(crate::clock::now_ms());
        call.recording_parts = recording_parts;
        call.b_offer = answered.b.sdp.clone();
        call.ivr_digits = answered.ivr_digits.clone();
        call.caller_verified = answered.caller_verified;
        call.closed_result = answered.closed_result;
        // From the checkpoint; an older one's guessed: played if the number has a
        // menu and closed hours did not send the call past it.
        call.ivr_offered = answered.ivr_offered.unwrap_or_else(|| {
            !answered.ivr_digits.is_empty()
                || (call.number.ivr.is_some() && answered.closed_result.is_none())
        });
        call._slot = Some(slot);
        // The lines it held where it ran: held here now (counted even over the limit).
        call.held_lines = answered
            .lines
            .iter()
            .map(|l| call.ctx.lines.adopt(&l.key, &call.id, l.limit))
            .collect();
        call.resuming = Some(Box::new(Resuming {
            pending: [Reinvite::Done; 2],
            quiet_since_ms,
            started: now,
            answered: Some(answered),
            left: false,
            callee_timer: false,
            timer_retried: [false; 2],
        }));
        if me.send_message(CallMsg::Resume).is_err() {
            // Stopped before it began: the supervisor forgets the caller's Call-ID,
            // and the callee's is forgotten here (it stayed routed to nothing, a
            // review), as a call that ran forgets it at its end.
            if let Some(b) = &call.b {
                call.ep().unregister(b.call_id());
            }
            return Err("the call ended before it resumed".to_string());
        }
        Ok(call)
    }

    /// Sets up media and re-INVITEs both parties (the first message of a resumed call).
    pub(super) fn resume_media(&mut self) {
        let Some(answered) = self.resuming.as_mut().and_then(|r| r.answered.take()) else {
            return;
        };
        if !self.ensure_relay() {
            return self.takeover_failed("no RTP ports free");
        }
        for (side, d) in [(Side::A, &answered.a), (Side::B, &answered.b)] {
            self.set_far_end(
                side,
                FarEnd {
                    media: d.media,
                    dtmf: d.dtmf,
                    // Without formats (an older checkpoint) only the party's own
                    // number counts.
                    formats: sdp::PayloadTypes::from_known(d.formats.as_deref()),
                },
            );
        }
        let Some(relay) = self.relay.as_ref() else {
            return;
        };
        let offer = |d: &Dialog, local: std::net::SocketAddr| {
            // Its version goes up as the leg sends it (`continue_origin`: the addresses
            // changed).
            sdp::rewrite(&d.sdp, local.ip(), local.port()).map(|r| r.sdp)
        };
        let (a_local, b_local) = (relay.local(Side::A), relay.local(Side::B));
        let (Some(a_offer), Some(b_offer)) =
            (offer(&answered.a, a_local), offer(&answered.b, b_local))
        else {
            return self.takeover_failed("the checkpoint's SDP cannot be offered again");
        };
        // The session's timer first: the caller's re-INVITE carries it, and the
        // callee's where the callee refreshes (a refresh; see `timer_to`).
        if let Some(interval) = answered.session_seconds {
            self.restart_session(interval, Some(answered.session_by_node));
            let caller = answered.session_caller_refreshes;
            self.caller_told(Some(caller.unwrap_or(!answered.session_by_node)));
            if let Some(s) = self.session.as_mut() {
                s.callee_by_node = answered.session_callee_by_node;
                s.callee_min_se = answered.session_callee_min_se;
            }
        }
        let mut a_headers = Vec::new();
        self.timer_to(Side::A, &mut a_headers);
        let mut b_headers = Vec::new();
        let callee_timer = self.timer_to(Side::B, &mut b_headers);
        let ep = self.ctx.endpoint.clone();
        let Some(b) = self.b.as_mut() else {
            return self.takeover_failed("no callee dialog");
        };
        let b_cseq = b
            .reoffer(&ep, Method::Invite, Some(b_offer), b_headers)
            .cseq;
        let a_cseq = self
            .a
            .reoffer(&ep, Method::Invite, Some(a_offer), a_headers)
            .cseq;
        if let Some(r) = self.resuming.as_mut() {
            r.pending = [Reinvite::Sent(a_cseq), Reinvite::Sent(b_cseq)];
            r.callee_timer = callee_timer;
        }
        if let Some(rec) = &answered.recording {
            self.restart_recording(&rec.mode);
        }
        // At once, not when both parties have answered: a node taking the call over
        // from this one meanwhile (a kill, a drain; a party answering 491 keeps this
        // open for up to 40 s) restored the previous node's CSeqs, which the parties
        // had seen already, and left this node and its recording part out (a review).
        // Only while the writer keeps up (`false`), as every checkpoint past the
        // answer: within the messages a call may queue.
        self.checkpoint_now(false);
        self.arm_media_check();
        tracing::info!(from = ?self.nodes, "call taken over: re-INVITEs sent to both parties");
    }

    /// Recording goes on here as a new part.
    /// Records the next part of a call taken over, in the mode its earlier parts were
    /// recorded in (the checkpoint's), whatever the number says now: the parts are
    /// joined into one file, and a number whose recording was turned off meanwhile
    /// must not leave the earlier parts out of the record.
    fn restart_recording(&mut self, mode: &str) {
        let mode = match mode {
            "caller" => RecordMode::Caller,
            "callee" => RecordMode::Callee,
            _ => RecordMode::Both,
        };
        let offset = self
            .answered
            .map(|(_, at)| crate::clock::now_ms().saturating_sub(at))
            .unwrap_or(0);
        self.recording_offset_ms = offset;
        // Named by node and part number: a call that comes back to a node (n1, n2,
        // n1) does not overwrite its earlier part there.
        let part = self.recording_parts.len() + 1;
        // The call's mode even if this part does not start (the disk refused it): the
        // earlier parts stay in its checkpoints (see `recording_state`).
        self.recording_mode = Some(mode);
        self.start_recording_part(&format!("{}.{}-{part}", self.id, self.ctx.node_id), mode);
    }

    /// Which of our takeover re-INVITEs a response answers, if any.
    pub(super) fn takeover_side(&self, info: &tsunagu_sip::Info) -> Option<Side> {
        let r = self.resuming.as_ref()?;
        if info.cseq_method != Method::Invite {
            return None;
        }
        let side = self.side_of(&info.call_id)?;
        (r.pending[index(side)] == Reinvite::Sent(info.cseq)).then_some(side)
    }

    /// A party answered our takeover re-INVITE.
    pub(super) fn on_takeover_answer(&mut self, side: Side, resp: Response) {
        let code = resp.status_code.code();
        if code < 200 {
            return;
        }
        let Some(r) = self.resuming.as_mut() else {
            return;
        };
        let Reinvite::Sent(cseq) = std::mem::replace(&mut r.pending[index(side)], Reinvite::Done)
        else {
            return;
        };
        if code == 491 && self.phase == Phase::Answered {
            let delay = crate::decide::glare::delay(side == Side::B, rand::random());
            if r.started.elapsed() + delay < GLARE_SPAN {
                r.pending[index(side)] = Reinvite::Refused;
                self.ctx.metrics.calls.takeover_glare.inc();
                tracing::info!(
                    ?side,
                    ?delay,
                    "takeover re-INVITE refused 491: sent again later"
                );
                self.after(delay, CallMsg::TakeoverRetry(side));
                return;
            }
        }
        if (200..300).contains(&code) {
            self.ack_2xx(side, cseq);
        }
        if self.phase != Phase::Answered {
            // A party hung up meanwhile (a BYE before its answer, then 481): the call
            // ends as it was ending, for its reason; the other answer is still ACKed.
            self.forget_takeover_once_answered();
            return;
        }
        if self.resuming.as_ref().is_some_and(|r| r.left) {
            // The other party left first: its outcome was counted once (a 2xx here
            // counted the call resumed as well, and checkpointed a call that ends).
            if (200..300).contains(&code) {
                self.refresh_target(side, tsunagu_sip::parse::header(&resp, "Contact"));
                if let Some(body) = sdp_body(&resp, &resp.body) {
                    self.anchor_sdp(side, &body);
                }
            } else if side == Side::B && self.judging {
                // The callee is gone too: its judgement has nobody to hear it.
                self.forget_takeover_once_answered();
                return self.callee_left_judgement();
            }
            self.forget_takeover_once_answered();
            return;
        }
        if code == 481 {
            return self.left_before_takeover(side);
        }
        // A party refusing the session's interval the node named to it (the caller's
        // floor above it; the callee's above what the caller agreed) is asked again
        // at once with what the node learnt, rather than the call hung up for it.
        let timer_sent = self
            .resuming
            .as_ref()
            .is_some_and(|r| (side == Side::A || r.callee_timer) && !r.timer_retried[index(side)]);
        if code == 422 && timer_sent && self.timer_refused(side, &resp) {
            if let Some(r) = self.resuming.as_mut() {
                r.timer_retried[index(side)] = true;
                r.pending[index(side)] = Reinvite::Refused;
            }
            tracing::info!(
                ?side,
                "a party refused the session's timer (422): asked again with what it said"
            );
            return self.retry_takeover(side);
        }
        if !(200..300).contains(&code) {
            return self.takeover_failed(&format!("a party answered {code}"));
        }
        self.refresh_target(side, tsunagu_sip::parse::header(&resp, "Contact"));
        if let Some(body) = sdp_body(&resp, &resp.body) {
            self.anchor_sdp(side, &body);
        }
        // The caller's carried the session's timer, and the callee's where the callee
        // refreshes: their 2xx renews it.
        if side == Side::A || self.resuming.as_ref().is_some_and(|r| r.callee_timer) {
            self.on_timer_answer(side, &resp);
        }
        let done = self
            .resuming
            .as_ref()
            .is_some_and(|r| r.pending.iter().all(|p| *p == Reinvite::Done));
        if done {
            if let Some(r) = self.resuming.take() {
                let seconds = r.started.elapsed().as_secs_f64();
                self.ctx.metrics.calls.takeover_seconds.observe(seconds);
                self.ctx.metrics.calls.taken_over("resumed");
                tracing::info!(
                    ms = (seconds * 1000.0) as u64,
                    "both parties now talk through this node"
                );
            }
            self.checkpoint_now(true);
        }
    }

    /// The party no longer has the dialog (481 to the re-INVITE): it hung up, or was
    /// hung up, while the call's node was going, and its BYE (or its 200 to the
    /// node's BYE) never reached this node. The call ends as the parties ended it:
    /// the other party gets a BYE, and the record no end reason (a call already ending
    /// when its node drained or died was logged `takeover_failed`: a review).
    fn left_before_takeover(&mut self, side: Side) {
        tracing::info!(
            ?side,
            "a party had left the call before it was taken over: ending it"
        );
        self.ctx.metrics.calls.taken_over("ended");
        // The party left while its node was going: the talk ends when that node was
        // last heard (a member declared down), not when this node learnt of it.
        let quiet = self.resuming.as_ref().and_then(|r| r.quiet_since_ms);
        if let Some(r) = self.resuming.as_mut() {
            r.left = true;
        }
        self.forget_takeover_once_answered();
        if let Some(ms) = quiet {
            let ms = self.answered.map_or(ms, |(_, at)| ms.max(at));
            self.talk_end = Some(instant_at(ms));
            self.ended_ms = Some(ms);
        }
        match side {
            Side::A => {
                // As after any caller's BYE: the callee may stay on for its judgement.
                let talk_end = self.talk_end;
                if self.judging || self.start_judgement() {
                    self.talk_end = talk_end.or(self.talk_end);
                    return;
                }
                if let Some(b) = self.b.as_mut() {
                    b.bye(&self.ctx.endpoint);
                }
                self.end_and_wait();
            }
            Side::B => self.hang_up_caller(),
        }
    }

    /// Sends the re-INVITE a party refused 491 again (the same offer, the next CSeq).
    pub(super) fn retry_takeover(&mut self, side: Side) {
        let refused = self
            .resuming
            .as_ref()
            .is_some_and(|r| r.pending[index(side)] == Reinvite::Refused);
        if !refused || self.phase != Phase::Answered {
            return;
        }
        if self.offer_pending_besides_takeover() {
            // Another offer on the dialog (one at a time, RFC 3261 14.2; a 2xx's offer
            // awaiting its ACK included, which this check once missed): a second later.
            self.after(Duration::from_secs(1), CallMsg::TakeoverRetry(side));
            return;
        }
        let ep = self.ctx.endpoint.clone();
        let mut headers = Vec::new();
        // A callee that refused the timer gets none (see `timer_refused`); its answer
        // is still read as one about the node's timer (without one, the node
        // refreshes the caller's leg).
        let timer = self.timer_to(side, &mut headers);
        if let (Side::B, Some(r)) = (side, self.resuming.as_mut()) {
            r.callee_timer = timer || r.timer_retried[index(Side::B)];
        }
        let Some(leg) = self.leg(side) else {
            return self.takeover_failed("no callee dialog");
        };
        let offer = leg.last_sdp().clone();
        let cseq = leg.reoffer(&ep, Method::Invite, offer, headers).cseq;
        if let Some(r) = self.resuming.as_mut() {
            r.pending[index(side)] = Reinvite::Sent(cseq);
        }
        self.checkpoint_now(false); // its CSeq went up (see `resume_media`)
    }

    /// A takeover re-INVITE got no answer in time.
    pub(super) fn on_takeover_timeout(&mut self) -> bool {
        let Some(r) = self.resuming.as_ref() else {
            return false;
        };
        if !r.pending.iter().any(|p| matches!(p, Reinvite::Sent(_))) {
            return false;
        }
        if r.left {
            // A party left first: the outcome is counted and the call ending as
            // its parties end it (the judgement's own timer included); the other's
            // unanswered re-INVITE changes nothing (it counted `failed` too, and
            // hung the callee up mid-judgement).
            self.resuming = None;
            return true;
        }
        self.takeover_failed("a party did not answer the re-INVITE");
        true
    }

    /// The takeover's state goes once no party's re-INVITE is outstanding.
    /// A re-INVITE refused 491 is still sent again while the call is answered (a
    /// callee judging a call its caller left must hear the judgement through this
    /// node: a review found its re-INVITE never sent again).
    fn forget_takeover_once_answered(&mut self) {
        let answered = self.phase == Phase::Answered;
        if self.resuming.as_ref().is_none_or(|r| {
            r.pending.iter().all(|p| match p {
                Reinvite::Sent(_) => false,
                Reinvite::Refused => !answered,
                Reinvite::Done => true,
            })
        }) {
            self.resuming = None;
        }
    }

    /// The call cannot go on here: both parties are hung up and the call is logged
    /// (unless it is ending already, for its own reason: then nothing changes).
    fn takeover_failed(&mut self, why: &str) {
        // The other party's re-INVITE may still be answered: kept, so a late 2xx is
        // still ACKed ([`Call::on_takeover_answer`]).
        self.forget_takeover_once_answered();
        if self.phase != Phase::Answered {
            tracing::debug!(
                why,
                "takeover re-INVITE unanswered by a call already ending"
            );
            return;
        }
        tracing::warn!(why, "takeover failed: hanging up both parties");
        self.ctx.metrics.calls.taken_over("failed");
        self.end_reason = Some("takeover_failed");
        self.hang_up_both();
    }
}

/// Runs a call claimed from another node until it ends (its arguments boxed: see
/// [`super::run`]).
pub async fn resume(args: Box<ResumeArgs>, me: CallRef) -> Exit {
    match Call::resumed(args, me.clone()) {
        Ok(call) => super::drive(call, me).await,
        Err(e) => Exit::Failed(e),
    }
}

/// The CANCEL of a ringing attempt a dead node left (see [`Ringing`]).
pub fn cancel_of(r: &Ringing) -> RequestSpec {
    let hop: tsunagu_sip::Peer = r.hop.into();
    RequestSpec {
        method: Method::Invite,
        uri: r.uri.clone(),
        transport: hop.transport,
        sent_by: r.sent_by,
        branch: r.branch.clone(),
        from: r.from.clone(),
        to: r.to.clone(),
        call_id: r.call_id.clone(),
        cseq: r.cseq,
        contact: None,
        routes: Vec::new(),
        max_forwards: 70,
        extra: Vec::new(),
        body: None,
    }
    .cancel()
}

/// A checkpoint's `b_payload_type` for a callee that answered without G.711 (not a
/// payload type: RTP's are 0..=127).
const NO_G711: u8 = 255;

/// What a checkpoint says of a call's recording: its mode, the parts earlier nodes
/// recorded and this node's own (`here`), if any. Earlier parts are kept when this node
/// records nothing (its recordings disk refused the new part): they were dropped, and
/// the next node's record lost the first nodes' audio (a review).
fn recording_state(
    mode: Option<RecordMode>,
    earlier: &[RecordingPart],
    here: Option<RecordingPart>,
) -> Option<super::checkpoint::Recording> {
    let mode = match mode? {
        RecordMode::Both => "both",
        RecordMode::Caller => "caller",
        RecordMode::Callee => "callee",
    };
    let parts: Vec<RecordingPart> = earlier.iter().cloned().chain(here).collect();
    (!parts.is_empty()).then(|| super::checkpoint::Recording {
        mode: mode.to_string(),
        parts,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;
    use tsunagu_media::RecordMode;
    use tsunagu_store::RecordingPart;

    /// A checkpoint keeps the parts of a recording: earlier nodes' and this one's;
    /// earlier ones also when this node records nothing; none without a mode or parts.
    #[test]
    fn a_checkpoint_keeps_every_recording_part() {
        let part = |node: &str| RecordingPart {
            node: node.into(),
            path: format!("2026-12-06/{node}.wav"),
            offset_ms: 0,
        };
        let nodes = |r: Option<super::super::checkpoint::Recording>| {
            r.map(|r| r.parts.into_iter().map(|p| p.node).collect::<Vec<_>>())
        };
        let both = Some(RecordMode::Both);
        let rows = [
            (both, vec![], Some(part("n2")), Some(vec!["n2"])),
            (
                both,
                vec![part("n1")],
                Some(part("n2")),
                Some(vec!["n1", "n2"]),
            ),
            // This node's disk refused its part: the first node's audio stays named.
            (both, vec![part("n1")], None, Some(vec!["n1"])),
            (both, vec![], None, None),
            (None, vec![part("n1")], Some(part("n2")), None),
        ];
        for (mode, earlier, here, want) in rows {
            let got = nodes(super::recording_state(mode, &earlier, here));
            let want = want.map(|w| w.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(got, want, "{mode:?} {earlier:?}");
        }
    }

    /// A call resumed two minutes after it started is two minutes old here (the
    /// max-call sweep measures it); a start in the future is now.
    #[test]
    fn a_resumed_call_is_as_old_as_its_start() {
        let two_minutes_ago = crate::clock::now_ms() - 120_000;
        let age = super::instant_at(two_minutes_ago).elapsed();
        assert!(
            age >= Duration::from_secs(119) && age < Duration::from_secs(130),
            "{age:?}"
        );
        let ahead = super::instant_at(crate::clock::now_ms() + 60_000);
        assert!(ahead.elapsed() < Duration::from_secs(1));
    }
}
