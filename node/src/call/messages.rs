//! The SIP messages of a call's two dialogs: what the SIP core delivers (requests,
//! responses, timeouts) dispatched by leg and method. The caller's requests (ACK,
//! CANCEL, BYE, INFO, re-offers, PRACK) and the callee's (BYE, re-offers, INFO), each
//! in CSeq order; the callee's responses to the forwarded INVITE (provisional, early
//! media, the answer, failures and redirects) and to the node's other requests.

use super::flow::After;
use super::legs::Leg;
use super::{cseq_in_order, refuse_method, reliable, to_tag, Call, Phase, INFO_KEYS_PER_SECOND};
use crate::clock::now_ms;
use crate::decide::outcome::Failure;
use crate::follow_up::plan::EventKind;
use crate::metrics::TrunkCodeLabel;
use std::time::{Duration, Instant};
use tsunagu_media::{sdp, Side};
use tsunagu_sip::parse::{header, retry_after_seconds, sdp_body};
use tsunagu_sip::{Method, Request, Response, SipEvent};
use tsunagu_store::CallResult;

impl Call {
    pub(super) fn on_sip(&mut self, ev: SipEvent) {
        // For the callee's leg this call let go (`let_callee_go`), queued here before
        // the handler took its Call-ID over: passed on to it through the SIP core (a
        // provisional the deferred CANCEL waits for was dropped here, and the callee
        // rang on for nobody).
        let of_leg_let_go = match &ev {
            SipEvent::Request { info, .. } | SipEvent::Response { info, .. } => {
                self.let_go.as_deref() == Some(info.call_id.as_str())
            }
            _ => false,
        };
        if of_leg_let_go {
            return self.ctx.endpoint.redeliver(ev);
        }
        match ev {
            // A CANCEL of the caller's INVITE, or of a re-INVITE pending in either
            // dialog (every CANCEL of a re-INVITE cancelled the call: a live torture
            // run found one answered 200 and ignored, and one during a held answer
            // would have ended the call).
            SipEvent::Cancelled { key, new_tag } if key == self.a.key => {
                if let Some(tag) = new_tag {
                    self.a.adopt_tag(tag);
                }
                self.caller_cancelled()
            }
            SipEvent::Cancelled { key, .. } => self.reoffer_cancelled(&key),
            SipEvent::Request {
                request,
                info,
                key,
                peer,
            } => {
                let side = self.side_of(&info.call_id);
                // Of the call's dialog only with both tags, from the leg's far end or a
                // trunk: a guessed Call-ID cannot hang up a call or press its keys.
                let source = peer.addr.ip();
                let owned = match side {
                    Some(Side::A) => {
                        self.a.owns(&info)
                            && (source == self.a.peer.addr.ip()
                                || self.ctx.routing.is_trunk_address(source))
                    }
                    _ => self.b.as_ref().is_some_and(|b| {
                        b.owns(&info)
                            && (source == b.peer.addr.ip()
                                || self.ctx.routing.is_trunk_address(source))
                    }),
                };
                if !owned {
                    return self.refuse_foreign(&request, &info, key.as_ref(), source);
                }
                match (side, key) {
                    (Some(side), None) => self.on_ack(side, &request, &info), // of our 2xx
                    (Some(side), Some(key)) if !self.in_order(side, &request, &info, &key) => {}
                    (Some(Side::A), Some(key)) => self.on_a_request(request, info, key),
                    (Some(Side::B), Some(key)) => self.on_b_request(request, info, key),
                    (None, _) => {}
                }
            }
            SipEvent::Response { response, info } if self.takeover_side(&info).is_some() => {
                if let Some(side) = self.takeover_side(&info) {
                    self.on_takeover_answer(side, response);
                }
            }
            SipEvent::Response { response, info }
                if self.own_reinvite.as_ref().is_some_and(|own| {
                    self.side_of(&info.call_id) == Some(own.side)
                        && own.cseq == info.cseq
                        && info.cseq_method == Method::Invite
                }) =>
            {
                if let Some(own) = self.own_reinvite.clone() {
                    self.on_own_answer(own, response);
                }
            }
            SipEvent::Response { response, info } => {
                let side = self.side_of(&info.call_id);
                let answers_reoffer = self.reoffer.as_ref().is_some_and(|p| {
                    side == Some(p.from.other())
                        && p.cseq == info.cseq
                        && p.method == info.cseq_method
                });
                let late_2xx = info.cseq_method == Method::Invite
                    && (200..300).contains(&response.status_code.code());
                if answers_reoffer {
                    self.on_reoffer_answer(response);
                } else if late_2xx
                    && side.is_some_and(|side| {
                        self.late_answer_to_timed_out(side, info.cseq, &response)
                    })
                {
                    // Acknowledged: the re-INVITE it answers had timed out.
                } else if side == Some(Side::B) {
                    self.on_b_response(response, info.cseq_method, info.cseq);
                } else if side == Some(Side::A)
                    && info.cseq_method == Method::Invite
                    && (200..300).contains(&response.status_code.code())
                {
                    // A 2xx to a re-INVITE the node sent the caller, again: the ACK
                    // was lost (else the caller hangs up after 32 s, RFC 3261 13.3.1.4).
                    let ep = self.ctx.endpoint.clone();
                    self.a.reack(&ep, info.cseq);
                } else if side == Some(Side::A)
                    && self.phase == Phase::Ending
                    && info.cseq_method == Method::Bye
                    && response.status_code.code() >= 200
                {
                    // The caller answered our BYE (not a relayed INFO's late answer).
                    self.finish();
                }
            }
            SipEvent::Timeout { key } if self.phase == Phase::Answered => {
                if key.method == Method::Invite && self.on_takeover_timeout() {
                    return;
                }
                self.reoffer_timed_out(&key);
            }
            SipEvent::Timeout { key } => {
                if self.phase == Phase::Ending {
                    self.finish();
                } else if self.phase == Phase::Trying && key.method == Method::Invite {
                    let f = self.pending_failure.take().unwrap_or(Failure::Timeout);
                    self.after_failure(f);
                }
            }
            SipEvent::AckTimeout => {
                if !self.a_acked {
                    // The caller never confirmed the call's 200 (it may never have had
                    // it): logged failed with no talk time, as for `prack_timeout`, so
                    // a trunk that loses ACKs does not make valid 32 s conversations.
                    if self.answered.take().is_some() {
                        self.result = CallResult::Failed;
                    }
                }
                // Either way the node ended it: the call's 200, or the 2xx of a
                // re-INVITE (RFC 3261 13.3.1.4), never acknowledged.
                self.end_reason.get_or_insert("ack_timeout");
                if matches!(self.phase, Phase::Ending | Phase::Done) || self.judging {
                    // Already ending (a party hung up; the judgement runs after the
                    // caller's BYE): the BYEs are out. Hanging up again sent a second
                    // BYE on each dialog, the callee's already ended (a review).
                    tracing::debug!("a 200 of ours was never acknowledged; the call is ending");
                    return;
                }
                tracing::warn!("a 200 of ours was never acknowledged; hanging up");
                self.hang_up_both();
            }
        }
    }

    /// A request naming one of the call's Call-IDs but not of its dialog (tags or
    /// source do not match): 481, and nothing else happens.
    pub(super) fn refuse_foreign(
        &self,
        req: &Request,
        info: &tsunagu_sip::Info,
        key: Option<&tsunagu_sip::transaction::TxKey>,
        source: std::net::IpAddr,
    ) {
        // One line a second at most (`more`: how many were not logged before this
        // one): a peer knowing a Call-ID can send these as fast as it likes.
        static SAID: tsunagu_cluster::net::Throttle = tsunagu_cluster::net::Throttle::new();
        if let Some(more) = SAID.allow(std::time::Instant::now()) {
            tracing::warn!(method = %req.method, %source, more, "in-dialog request whose tags or source do not match the call's dialog: 481");
        }
        self.ctx.metrics.calls.foreign_requests.inc();
        if let Some(key) = key {
            self.ctx
                .endpoint
                .respond(req, info, key, 481, None, &[], None);
        }
    }

    pub(super) fn caller_cancelled(&mut self) {
        if self.phase == Phase::Answered && self.a.holds_final() {
            return self.cancelled_before_its_answer();
        }
        if self.phase != Phase::Trying {
            return; // too late: already answered or ending
        }
        tracing::debug!("caller cancelled");
        self.leave_queue();
        // A result decided already stands: the caller hung up during the prompt that
        // comes before its refusal (closed hours, the queue's timeout), as most do; it
        // was logged `cancelled`, and out-of-hours and queue-timeout counts came short
        // (a review).
        // So does the closed hours' own: a caller who hangs up while the closed
        // destination rings is an unanswered call to it, `out_of_hours` or `absent`
        // as the README says (it was logged `cancelled`: a review).
        self.result = match self.playing {
            Some((_, After::GiveUp(decided, _))) => decided,
            _ => self.closed_result.unwrap_or(CallResult::Cancelled),
        };
        self.upstream_code = 487;
        let ep = self.ctx.endpoint.clone();
        self.a.respond(&ep, 487, None);
        self.leave_callee_and_finish();
    }

    pub(super) fn on_a_request(
        &mut self,
        req: Request,
        info: tsunagu_sip::Info,
        key: tsunagu_sip::transaction::TxKey,
    ) {
        let ep = self.ctx.endpoint.clone();
        match req.method {
            Method::Bye if self.phase == Phase::Answered && self.a.holds_final() => {
                // A BYE on its early dialog (its answer waits for its PRACK): as a
                // CANCEL, its INVITE is answered 487 (RFC 3261 15.1.2).
                ep.respond(&req, &info, &key, 200, None, &[], None);
                self.cancelled_before_its_answer();
            }
            Method::Bye => {
                ep.respond(&req, &info, &key, 200, None, &[], None);
                if self.phase == Phase::Answered {
                    tracing::debug!("caller hung up");
                    self.abandon_reoffer();
                    if self.judging || self.start_judgement() {
                        return; // the callee stays on for the judgement
                    }
                    if let Some(b) = self.b.as_mut() {
                        b.bye(&ep);
                    }
                    self.end_and_wait();
                } else if self.phase == Phase::Trying {
                    self.caller_cancelled();
                }
            }
            Method::Invite | Method::Update if self.phase == Phase::Answered => {
                self.relay_reoffer(Side::A, req, info, key)
            }
            Method::Invite | Method::Update if self.phase == Phase::Trying && self.a_answered => {
                self.answer_offer_here(req, info, key)
            }
            Method::Invite | Method::Update => ep.respond(&req, &info, &key, 491, None, &[], None),
            Method::Info => self.on_info(Side::A, &req, &info, &key),
            Method::PRack => {
                // RAck is mandatory in a PRACK (RFC 3262 7.2): without one that reads,
                // the request is malformed (400); one that names no provisional of
                // ours is 481.
                let rack = header(&req, "RAck").and_then(reliable::parse_rack);
                let rseq = rack
                    .and_then(|r| reliable::for_invite(r, self.a.info.cseq))
                    .filter(|r| self.a.outstanding(*r));
                let code = match (rseq, rack) {
                    (Some(_), _) => 200,
                    (None, Some(_)) => 481,
                    (None, None) => 400,
                };
                ep.respond(&req, &info, &key, code, None, &[], None);
                if let Some(r) = rseq {
                    // After the PRACK's 200: what waited for it (the INVITE's 2xx).
                    let held = self.a.holds_final();
                    self.a.prack(&ep, r);
                    if held && !self.a.holds_final() && self.answered.is_some() {
                        // The caller has the 200 only now: its talk starts now (the
                        // wait for the PRACK was counted as talk; a review), in the
                        // record in progress and the checkpoint too.
                        self.answered = Some((Instant::now(), now_ms()));
                        self.checkpoint_now(true);
                    }
                }
            }
            Method::Options => ep.respond(&req, &info, &key, 200, None, &[], None),
            _ => refuse_method(&ep, &req, &info, &key),
        }
    }

    /// The ACK of a 2xx of ours from `side`'s far end: the caller's first confirms the
    /// call; one that answers an offer the node passed on in a 2xx (a re-INVITE
    /// without one) lets the other leg's held ACK go, with that answer.
    pub(super) fn on_ack(&mut self, side: Side, req: &Request, info: &tsunagu_sip::Info) {
        if side == Side::A && info.cseq == self.a.info.cseq {
            self.a_acked = true;
        }
        let Some((to, cseq, _)) = self
            .late_ack
            .filter(|(to, _, sender)| *to == side.other() && *sender == info.cseq)
        else {
            return;
        };
        self.late_ack = None;
        let answer = sdp_body(req, &req.body).and_then(|body| self.anchor_sdp(side, &body));
        let ep = self.ctx.endpoint.clone();
        if let Some(leg) = self.leg(to) {
            let answer = leg.next_body(answer);
            leg.ack_at(&ep, cseq, answer.as_deref());
        }
    }

    /// Whether an in-dialog request from `side`'s far end comes in CSeq order; one
    /// below the last is answered 500 (RFC 3261 12.2.2) and goes no further.
    pub(super) fn in_order(
        &mut self,
        side: Side,
        req: &Request,
        info: &tsunagu_sip::Info,
        key: &tsunagu_sip::transaction::TxKey,
    ) -> bool {
        let last = &mut self.remote_cseq[usize::from(side == Side::B)];
        if cseq_in_order(last, info.from_tag.as_deref(), info.cseq) {
            return true;
        }
        // One line a second at most, as for foreign requests (`refuse_foreign`).
        static SAID: tsunagu_cluster::net::Throttle = tsunagu_cluster::net::Throttle::new();
        if let Some(more) = SAID.allow(std::time::Instant::now()) {
            tracing::info!(method = %req.method, cseq = info.cseq, ?side, more, "in-dialog request out of CSeq order: 500");
        }
        self.ctx
            .endpoint
            .respond(req, info, key, 500, None, &[], None);
        false
    }

    /// SIP INFO: a key (`application/dtmf-relay` or `application/dtmf`) is taken as
    /// pressed; any INFO is answered 200.
    pub(super) fn on_info(
        &mut self,
        side: Side,
        req: &Request,
        info: &tsunagu_sip::Info,
        key: &tsunagu_sip::transaction::TxKey,
    ) {
        self.ctx
            .endpoint
            .respond(req, info, key, 200, None, &[], None);
        let content_type = header(req, "Content-Type").unwrap_or_default();
        let body = String::from_utf8_lossy(&req.body);
        if let Some(k) = tsunagu_media::dtmf::info_digit(content_type, &body) {
            self.on_key(side, k, "info");
            if self.phase == Phase::Answered && !self.judging {
                self.relay_info_key(side.other(), k);
            }
        }
    }

    /// A key one party sent by SIP INFO in the conversation reaches the other the same
    /// way (`application/dtmf-relay`, written afresh: nothing else of the sender's
    /// body passes). It was answered 200 and dropped, so a caller whose carrier signals
    /// keys by INFO could not work the advertiser's own menu or voicemail (a live
    /// torture run). Keys sent as RFC 4733 events pass in the audio as they are.
    pub(super) fn relay_info_key(&mut self, to: Side, key: char) {
        // At most INFO_KEYS_PER_SECOND a second: a person presses a few, and each one
        // the other party never answers is retransmitted about eleven times (a
        // review). The rest is answered 200 and not passed on.
        let now = Instant::now();
        let (since, count) = match self.info_relayed {
            Some((since, count))
                if now.saturating_duration_since(since) < Duration::from_secs(1) =>
            {
                (since, count)
            }
            _ => (now, 0),
        };
        if count >= INFO_KEYS_PER_SECOND {
            tracing::debug!(%key, "a key by INFO past the rate passed on: dropped");
            return;
        }
        self.info_relayed = Some((since, count + 1));
        let ep = self.ctx.endpoint.clone();
        let Some((mut spec, peer)) = self.leg(to).map(|leg| leg.request(&ep, Method::Info)) else {
            return;
        };
        let body = format!("Signal={key}\r\nDuration=160\r\n");
        spec.body = Some(("application/dtmf-relay", body.into_bytes()));
        ep.request(spec, peer);
    }

    pub(super) fn on_b_request(
        &mut self,
        req: Request,
        info: tsunagu_sip::Info,
        key: tsunagu_sip::transaction::TxKey,
    ) {
        let ep = self.ctx.endpoint.clone();
        match req.method {
            Method::Bye if self.judging => {
                ep.respond(&req, &info, &key, 200, None, &[], None);
                self.callee_left_judgement();
            }
            Method::Bye if self.phase == Phase::Answered && self.a.holds_final() => {
                // The caller never had the answer (it waits for the caller's PRACK):
                // its dialog is early and the node may not BYE it (RFC 3261 15); its
                // INVITE is refused instead, and the call was never answered.
                ep.respond(&req, &info, &key, 200, None, &[], None);
                tracing::debug!("callee hung up before the caller's PRACK released its answer");
                self.drop_held_answer(CallResult::Failed, 480, false);
            }
            Method::Bye if self.phase == Phase::Answered => {
                ep.respond(&req, &info, &key, 200, None, &[], None);
                tracing::debug!("callee hung up");
                let (spec, peer) = self.a.request(&ep, Method::Bye);
                ep.request(spec, peer);
                self.end_and_wait();
            }
            Method::Bye => ep.respond(&req, &info, &key, 200, None, &[], None),
            Method::Invite | Method::Update if self.judging => {
                // The caller has left (its dialog ended with its BYE: nothing more
                // may be sent in it, RFC 3261 15); the callee hears the judgement
                // prompt from the node. A refresh without an offer is answered here;
                // an offer is refused and the session stays as it is (RFC 3261 14.2).
                // It was relayed into the ended dialog, whose 481 came back and had
                // the callee hang up, the judgement lost (a review).
                let refresh = req.method == Method::Update && sdp_body(&req, &req.body).is_none();
                match self.b.as_ref().map(|b| b.peer.transport) {
                    Some(transport) if refresh => {
                        let contact = super::legs::contact(&ep, transport);
                        let extra = [("Contact", contact.as_str())];
                        ep.respond(&req, &info, &key, 200, None, &extra, None);
                    }
                    _ => ep.respond(&req, &info, &key, 488, None, &[], None),
                }
            }
            Method::Invite | Method::Update if self.phase == Phase::Answered => {
                self.relay_reoffer(Side::B, req, info, key)
            }
            Method::Invite | Method::Update => ep.respond(&req, &info, &key, 491, None, &[], None),
            Method::Info => self.on_info(Side::B, &req, &info, &key),
            Method::Options => ep.respond(&req, &info, &key, 200, None, &[], None),
            _ => refuse_method(&ep, &req, &info, &key),
        }
    }

    pub(super) fn on_b_response(&mut self, resp: Response, method: Method, cseq: u32) {
        let code = resp.status_code.code();
        let ep = self.ctx.endpoint.clone();
        if method != Method::Invite {
            if self.phase == Phase::Ending && method == Method::Bye && code >= 200 {
                self.finish();
            }
            return;
        }
        if let (200.., Some(t)) = (code, self.last_trunk) {
            self.ctx
                .metrics
                .calls
                .trunk_responses
                .get_or_create(&TrunkCodeLabel {
                    trunk: self.ctx.routing.trunks[t].name.clone(),
                    code: tsunagu_sip::metrics::code_label(code),
                })
                .inc();
        }
        match code {
            100..=199 => {
                // A provisional answer: a CANCEL may be sent from now on (RFC 3261
                // 9.1), so one the call wanted meanwhile goes out.
                let Some(b) = self.b.as_mut() else { return };
                let first = !std::mem::replace(&mut b.provisional, true);
                if b.cancel_pending {
                    b.cancel(&ep);
                }
                if first {
                    self.heard_from_trunk();
                }
                if code == 100 {
                    return;
                }
                if self.phase != Phase::Trying || self.pending_failure.is_some() {
                    return;
                }
                let sdp = self.callee_sdp(&resp);
                if sdp.is_some() {
                    self.b_early_answer = Some(to_tag(&resp).unwrap_or_default().to_string());
                }
                if self.a_answer.is_some() {
                    // The caller hears the node's media: the callee's early media
                    // replaces the ringback; no further provisional goes upstream.
                    if sdp.is_some() {
                        self.stop_caller_audio();
                    }
                    self.observe_setup();
                    return;
                }
                let upstream = if sdp.is_some() { 183 } else { 180 };
                self.observe_setup();
                self.a.respond(&ep, upstream, sdp.as_deref());
            }
            200..=299 => {
                let Some(b) = self.b.as_mut() else { return };
                if !b.keeps(&resp) {
                    // A second callee of a forked INVITE answered too: not left
                    // connected to nobody.
                    tracing::info!("a fork of the forwarded INVITE answered too; hung up");
                    let routing = &self.ctx.routing;
                    b.hang_up_answer(&ep, &resp, &|ip| routing.is_trunk_address(ip));
                    return;
                }
                if self.phase == Phase::Answered || b.is_answered() {
                    // A retransmitted 2xx (the INVITE's, or a re-INVITE's): the ACK
                    // sent for it was lost; sent again with its CSeq and body. Also
                    // while the call ends: a re-INVITE's 2xx coming again after the
                    // node's BYE was taken for a first answer, acknowledged with the
                    // first INVITE's CSeq, its route set overwritten, and a second BYE
                    // sent (a review).
                    b.reack(&ep, cseq);
                    return;
                }
                let routing = &self.ctx.routing;
                // False for a route set past the cap: no request of the dialog could be
                // sent (one Route line per entry), so it is no answer to take.
                let routable = b.established(&resp, &|ip| routing.is_trunk_address(ip));
                b.ack(&ep);
                if self.phase != Phase::Trying {
                    // Answered after the caller gave up: hang up the callee.
                    b.bye(&ep);
                    return;
                }
                // The answer to the caller's offer: in the 200, or already in an 18x
                // (the caller was sent it then; the 200 repeats it, RFC 6337 3.1).
                let early = self
                    .b_early_answer
                    .as_deref()
                    // (An 18x without a To tag, against RFC 3261, names no fork:
                    // taken as the answering one's.)
                    .filter(|tag| tag.is_empty() || Some(*tag) == to_tag(&resp))
                    .and_then(|_| self.a.last_sdp.clone());
                let sdp = if routable {
                    self.callee_sdp(&resp).or(early)
                } else {
                    None
                };
                let Some(sdp) = sdp else {
                    // Answered with no answer the node can anchor (none, or not SDP)
                    // or a dialog it cannot route: passed on, the caller would have a
                    // call without media or one it could not end. The callee is hung
                    // up and the attempt failed.
                    tracing::warn!(
                        code,
                        routable,
                        "the callee answered without a usable SDP answer or route set; hung up"
                    );
                    // Hung up and handed to `abandoned`: another fork of the INVITE
                    // answering later (the call has moved on, or ended) is ACKed and
                    // hung up there, where it reached nobody (a review). Its trunk
                    // channel is free at once, as for any failed attempt (the next
                    // may need it).
                    self.let_callee_go(None);
                    self.stop_ring_timer();
                    return self.after_failure(Failure::UnusableAnswer);
                };
                self.attempt_ended(code, "answered");
                self.stop_ring_timer();
                self.stop_caller_audio();
                self.observe_setup();
                self.answered = Some((Instant::now(), now_ms()));
                self.result = CallResult::Answered;
                self.upstream_code = 200;
                self.phase = Phase::Answered;
                self.stop_ring_guard();
                self.answer_with_session(&resp, Some(&sdp));
                self.a.answered();
                // Recording first: the checkpoint carries it, so a node taking the
                // call over records the next part.
                self.start_recording();
                self.checkpoint_now(true);
                self.arm_media_check();
                self.emit(EventKind::Answered);
                tracing::debug!("answered");
            }
            _ => {
                if self.phase == Phase::Ending {
                    self.finish(); // the cancelled attempt is over
                    return;
                }
                if self.phase != Phase::Trying {
                    return;
                }
                if (300..400).contains(&code) && self.follow_redirect(&resp, code) {
                    return;
                }
                let failure = match self.pending_failure.take() {
                    Some(f) if code == 487 => f,
                    _ => Failure::Status(code),
                };
                self.retry_after = retry_after_seconds(&resp);
                self.callee_min_se = super::session::min_se(&resp).filter(|_| code == 422);
                tracing::debug!(code, "forwarded leg failed");
                self.after_failure(failure);
            }
        }
    }

    /// The callee's SDP in a response, anchored for the caller.
    pub(super) fn callee_sdp(&mut self, resp: &Response) -> Option<String> {
        let body = sdp_body(resp, &resp.body)?;
        let anchored = self.anchor_sdp(Side::B, &body)?;
        // The codec the callee answered with, for prompts played to it (the judgement):
        // from whichever response carried the answer, an 18x or the 200.
        // None: the callee answered without G.711 (no judgement prompt can reach it).
        self.b_payload_type = sdp::g711(&body);
        Some(anchored)
    }
}
