//! Forwarding attempts: the caller's call sent to each destination in turn, on each
//! trunk of the destination's route in turn (a trunk at its channel limit or marked
//! down skipped), a redirect followed where the trunk allows it; each attempt's ring
//! timer (a silent trunk left after [`NO_RESPONSE`], a ringing callee at its ring
//! time), its cancellation, its outcome in the call's log, and the call given up when
//! no destination is left. What to try next is decided in [`crate::decide::outcome`].

use super::legs::{BLeg, Outbound};
use super::{reliable, session, Call, CallHandle, CallMsg, FarEnd};
use crate::clock::now_ms;
use crate::context::TrunkChannel;
use crate::decide::outcome::{next_step, Failure, Step};
use crate::decide::redirect::redirect_target;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tsunagu_media::{sdp, Side};
use tsunagu_sip::Response;
use tsunagu_store::{CallResult, CallerIdMode, Destination};

/// How long a forwarded INVITE may go without any response (not even 100 Trying)
/// before its trunk counts as not answering: a trunk that is up answers within
/// milliseconds (RFC 3261 17.2.1 has a 100 within 200 ms). At the ring time, or at
/// Timer B (32 s), a black-holed trunk (a dead link, a TCP connect that never
/// completes) was taken for a callee who did not answer: the route's next trunk was
/// tried only for rings longer than 32 s (a review).
pub(super) const NO_RESPONSE: Duration = Duration::from_secs(5);

/// How long the INVITE of an attempt the node cancelled may go without its final
/// response: 64*T1 (RFC 3261 9.1; 3.2 s in unit tests, where `reliable::T1` is shorter).
const CANCEL_WAIT: Duration = reliable::T1.saturating_mul(64);

impl Call {
    /// Anchors media and sends the first forwarding attempt.
    pub(super) fn forward(&mut self) {
        if !self.ensure_relay() {
            return;
        }
        let offer = self.a_view.offer.as_deref();
        self.b_offer = offer
            .and_then(|o| self.anchor_sdp(Side::A, o))
            .unwrap_or_default();
        if let Some(pt) = &self.a_answer {
            // The caller already has the node's answer: offer the callee that codec.
            let mut keep = vec![*pt];
            keep.extend(sdp::telephone_event(&self.b_offer));
            self.b_offer = sdp::restrict(&self.b_offer, &keep);
        }
        self.try_attempt();
    }

    /// Sends the INVITE of the current (destination, trunk) attempt.
    pub(super) fn try_attempt(&mut self) {
        self.retry_after = None;
        self.callee_min_se = None;
        let dest = match &self.redirect {
            Some(d) => d.clone(),
            None => match self.number.destinations.get(self.dest_index) {
                Some(d) => d.clone(),
                None => return self.give_up(CallResult::Failed, 502),
            },
        };
        if self.trunk_pos == 0 {
            // Fixed per destination, so a trunk changing state mid-call cannot shift the order.
            self.dest_trunks = self.trunks_for(&dest.number);
        }
        let Some(&trunk) = self.dest_trunks.get(self.trunk_pos) else {
            tracing::warn!(destination = %dest.number, "no route to destination");
            return self.after_failure(Failure::Status(503));
        };
        let Some(target) = self.ctx.routing.trunks[trunk].outbound else {
            return self.after_failure(Failure::Status(503));
        };
        // The previous attempt's channel first (a redirect moves on from it).
        self.b_channel = None;
        let Some(channel) = TrunkChannel::try_take(&self.ctx, trunk) else {
            tracing::info!(trunk = %self.ctx.routing.trunks[trunk].name, "the trunk's channels are all in use: not sent");
            self.ctx.trunk_counters[trunk].channels_full.inc();
            // In the record's attempts, so the log says why the trunk was passed over.
            self.attempts.push(tsunagu_store::Attempt {
                destination: dest.number.clone(),
                trunk: self.ctx.routing.trunks[trunk].name.clone(),
                started_at: now_ms(),
                sip_code: 503,
                outcome: "trunk_channels".into(),
            });
            return self.after_failure(Failure::Status(503));
        };
        self.b_channel = Some(channel);
        let presented = match self.number.caller_id {
            CallerIdMode::Caller if self.caller.withheld => "anonymous".to_string(),
            CallerIdMode::Caller => self.caller.number.clone(),
            CallerIdMode::System => self
                .ctx
                .system_number
                .clone()
                .unwrap_or_else(|| self.number.number.clone()),
        };
        let peer = target;
        if let Some(old) = self.b.take() {
            self.ep().unregister(old.call_id());
        }
        // The caller's identity is asserted only to trunks we trust (RFC 3325), and not
        // when the callee is to see the system number (a trunk may display it).
        let asserted = self
            .caller
            .identity
            .as_deref()
            .filter(|_| self.ctx.routing.trunks[trunk].trusted)
            // Only an identity someone vouched for (a trusted trunk's PAI, or a
            // carrier that verifies its From numbers): a From from anyone else is a
            // claim, and asserting it would launder a spoofed caller id (RFC 3325 9.1).
            .filter(|_| self.caller_verified)
            .filter(|_| self.number.caller_id != CallerIdMode::System);
        let privacy = crate::decide::caller::privacy_for_callee(
            self.a_view.privacy.as_deref(),
            self.caller.withheld,
            asserted.is_some(),
        );
        let b = BLeg::invite(
            self.ep(),
            Outbound {
                destination: &dest.number,
                presented: &presented,
                peer,
                sdp: &self.b_offer,
                max_forwards: self.a_view.forwards(),
                privacy: privacy.as_deref(),
                asserted,
                // Not for a caller the node answered itself (a menu, a queue): its 200
                // named no timer, so the caller refreshes nothing, and a callee told
                // `refresher=uac` hung the call up at its interval (a review).
                session: if self.a_answered {
                    Default::default()
                } else {
                    session::TimerAsk::of(&self.a.invite).headers()
                },
            },
        );
        self.attempt += 1;
        self.attempts.push(tsunagu_store::Attempt {
            destination: dest.number.clone(),
            trunk: self.ctx.routing.trunks[trunk].name.clone(),
            started_at: now_ms(),
            sip_code: 0,
            outcome: String::new(),
        });
        self.pending_failure = None;
        self.b_early_answer = None;
        self.last_trunk = Some(trunk);
        self.ctx.trunk_counters[trunk].outbound.inc();
        tracing::debug!(destination = %dest.number, trunk = %self.ctx.routing.trunks[trunk].name, attempt = self.attempt, "forwarding");
        let handle = CallHandle(self.me.clone());
        self.ep().register(b.call_id(), Arc::new(handle));
        self.ep().request(b.invite.clone(), b.peer);
        self.b = Some(b);
        self.ringback();
        // One timer per attempt: a trunk that says nothing by NO_RESPONSE is left then
        // (`CallMsg::NoResponse`), and the first response replaces the timer with the
        // ring time's (`heard_from_trunk`).
        let ring = Duration::from_secs(u64::from(dest.ring_seconds.max(1)));
        self.ring_ends = Instant::now().checked_add(ring);
        let timer = self.after(ring.min(NO_RESPONSE), CallMsg::NoResponse(self.attempt));
        self.stop_ring_timer();
        self.ring_timer = Some(timer);
        // What a survivor needs to CANCEL this attempt if this node dies now, and what
        // the live call stream tells (ringing, and where).
        self.note_progress();
    }

    /// The attempt's first response: its ring timer moves from [`NO_RESPONSE`] to the
    /// ring time.
    pub(super) fn heard_from_trunk(&mut self) {
        let (Some(_), Some(at)) = (self.ring_timer, self.ring_ends) else {
            return;
        };
        self.stop_ring_timer();
        self.ring_timer = Some(self.timers.at(at, CallMsg::RingTimeout(self.attempt)));
    }

    /// Cancels the current attempt's ring timer.
    pub(super) fn stop_ring_timer(&mut self) {
        if let Some(t) = self.ring_timer.take() {
            self.timers.cancel(t);
        }
    }

    /// The route's trunks for a destination, those marked down by keepalives skipped.
    pub(super) fn trunks_for(&self, destination: &str) -> Vec<usize> {
        let route = self.ctx.routing.outbound_trunks(destination);
        crate::trunk_health::trunk_order(route, |t| self.ctx.trunk_up[t].load(Ordering::Relaxed))
    }

    pub(super) fn ring_timeout(&mut self) {
        let ep = self.ctx.endpoint.clone();
        match self.b.as_ref().map(|b| b.provisional) {
            None => {}
            Some(false) => self.nothing_from_the_trunk(),
            Some(true) => {
                tracing::debug!("ring timeout");
                self.pending_failure = Some(Failure::RingTimeout);
                if let Some(b) = self.b.as_mut() {
                    b.cancel(&ep);
                }
                self.after(CANCEL_WAIT, CallMsg::CancelUnanswered(self.attempt));
            }
        }
    }

    /// Nothing at all (not even 100 Trying) came back for the attempt's INVITE, by
    /// [`NO_RESPONSE`] or its ring time: its trunk is not answering, a trunk problem
    /// as a timeout is (the route's next trunk next). No CANCEL may go yet (RFC 3261
    /// 9.1), and waiting for Timer B would hold the caller 32 s: the attempt fails now,
    /// and the leg answers late responses by itself (`abandoned`).
    pub(super) fn nothing_from_the_trunk(&mut self) {
        if self.b.is_none() {
            return;
        }
        tracing::info!("nothing from the trunk for the attempt's INVITE; moving on");
        self.ctx.metrics.calls.attempts_abandoned.inc();
        self.stop_ring_timer();
        let channel = self.b_channel.take();
        self.let_callee_go(channel); // its CANCEL held until a provisional comes
        self.after_failure(Failure::Timeout);
    }

    /// The INVITE of an attempt the node cancelled has no final response 64*T1 after
    /// the CANCEL: RFC 3261 9.1 has the UAC consider it cancelled. A callee that
    /// answered the CANCEL and never its INVITE (or neither) held the call there: the
    /// next destination was never tried, and a caller an IVR had answered heard
    /// ringback until the INVITE's transaction was swept, minutes later (a review).
    /// The call moves on; the leg answers late responses by itself (`abandoned`).
    pub(super) fn cancel_unanswered(&mut self) {
        if self.b.is_none() {
            return;
        }
        tracing::info!("the cancelled attempt's INVITE got no final response in 32 s; moving on");
        self.ctx.metrics.calls.attempts_abandoned.inc();
        let channel = self.b_channel.take();
        self.let_callee_go(channel); // cancelled already: not sent again
        let failure = self.pending_failure.take().unwrap_or(Failure::RingTimeout);
        self.after_failure(failure);
    }

    pub(super) fn after_failure(&mut self, failure: Failure) {
        self.attempt_ended(failure.code(), failure.outcome());
        self.b_channel = None;
        // The failed callee may have sent SDP (early media in a 183): it must neither
        // hear the caller nor reach them while the next destination rings.
        if let Some(relay) = self.relay.as_ref() {
            relay.clear_remote(Side::B);
        }
        self.note_far_end(Side::B, FarEnd::NONE);
        let trunks = self.dest_trunks.len();
        let has_next_trunk = self.trunk_pos + 1 < trunks;
        let has_next_dest = self.dest_index + 1 < self.number.destinations.len();
        match next_step(failure, has_next_trunk, has_next_dest) {
            Step::NextTrunk => {
                self.trunk_pos += 1;
                self.try_attempt();
            }
            Step::NextDestination => {
                // A redirected destination that failed also moves on to the next one.
                self.redirect = None;
                self.dest_index += 1;
                self.trunk_pos = 0;
                self.try_attempt();
            }
            Step::GiveUp { result, upstream } => self.give_up(result, upstream),
        }
    }

    /// Ends an unanswered call with a final response to the caller.
    pub(super) fn give_up(&mut self, result: CallResult, upstream: u16) {
        // An unanswered call to the closed-hours destination logs why it went there.
        self.result = match (self.closed_result, result) {
            (
                Some(closed),
                CallResult::Busy | CallResult::NoAnswer | CallResult::Failed | CallResult::Rejected,
            ) => closed,
            _ => result,
        };
        // A callee's 422 reaches the caller with its Min-SE, where the caller asked an
        // interval below it (it is the caller's, passed on) and the Min-SE is one the
        // node would follow itself (at most two hours); otherwise it is the node's 502.
        let asked = self
            .a_view
            .session_expires
            .as_deref()
            .and_then(crate::decide::session_timer::parse)
            .map(|s| s.interval);
        let min_se = self
            .callee_min_se
            .filter(|min| {
                upstream == 422
                    && asked.is_some_and(|asked| asked < *min)
                    && *min <= crate::decide::session_timer::MAX_MIN_SE
            })
            .map(|m| m.to_string());
        let upstream = if upstream == 422 && min_se.is_none() {
            502
        } else {
            upstream
        };
        self.upstream_code = upstream;
        if self.a_answered {
            // The IVR answered the caller: hang up instead of refusing.
            return self.hang_up_caller();
        }
        let ep = self.ctx.endpoint.clone();
        // A callee's "try again in N s" on the final answers that may carry it (RFC
        // 3261 20.33: 404, 480, 486, 603; not a 5xx, which is the node's 502) goes
        // to the caller's carrier, which can then hold its retries off.
        let retry = self
            .retry_after
            .filter(|_| matches!(upstream, 404 | 480 | 486 | 603))
            .map(|s| s.to_string());
        let extra: Vec<(&str, &str)> = retry
            .as_deref()
            .map(|s| ("Retry-After", s))
            .into_iter()
            .chain(min_se.as_deref().map(|m| ("Min-SE", m)))
            .collect();
        self.a.respond_with(&ep, upstream, None, &extra);
        self.finish();
    }

    /// Closes the open forwarding attempt in the log (the first outcome counts).
    pub(super) fn attempt_ended(&mut self, sip_code: u16, outcome: &str) {
        if let Some(a) = self.attempts.last_mut().filter(|a| a.outcome.is_empty()) {
            a.sip_code = sip_code;
            a.outcome = outcome.to_string();
        }
    }

    /// A 3xx from a trunk that follows redirects: the current destination becomes the
    /// number the Contact names, tried on its own route. False if not followed.
    pub(super) fn follow_redirect(&mut self, resp: &Response, code: u16) -> bool {
        let follows = self
            .last_trunk
            .is_some_and(|t| self.ctx.routing.trunks[t].follow_redirects);
        if !follows {
            return false;
        }
        let contacts = tsunagu_sip::parse::header_values(resp, "Contact");
        let Some(number) = redirect_target(&contacts, self.redirects_followed) else {
            return false;
        };
        let ring_seconds = self
            .number
            .destinations
            .get(self.dest_index)
            .map(|d| d.ring_seconds)
            .unwrap_or(30);
        tracing::info!(to = %number, "following a redirect");
        self.attempt_ended(code, "redirected");
        self.redirects_followed += 1;
        self.redirect = Some(Destination {
            number,
            ring_seconds,
        });
        self.trunk_pos = 0;
        self.pending_failure = None;
        self.try_attempt();
        true
    }

    /// The destination last forwarded to: the callee's leg's, or (that leg handed
    /// away unanswered: a ring timeout, the node ending the call) the last attempt's.
    pub(super) fn destination(&self) -> Option<String> {
        self.b
            .as_ref()
            .map(|b| b.destination.clone())
            .or_else(|| self.attempts.last().map(|a| a.destination.clone()))
    }
}
