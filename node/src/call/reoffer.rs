//! Re-offers in an answered call: a re-INVITE or UPDATE (hold, resume, codec change,
//! session refresh) from one party is relayed to the other with its SDP pointed at the
//! node, and the answer travels back. One at a time (RFC 3261 14.2: a second is 491);
//! a re-INVITE its sender cancels is cancelled on the other leg too, and one the other
//! party accepted all the same is undone with the session it had before (also one
//! accepted after its sender was told it timed out).

use super::legs;
use super::{session, Call, OwnReinvite, Phase};
use tsunagu_media::{sdp, Side};
use tsunagu_sip::parse::{header, header_values, sdp_body};
use tsunagu_sip::{Method, Request, Response};

/// A relayed re-INVITE that got no final answer in time (see
/// [`Call::late_answer_to_timed_out`]).
pub(super) struct TimedOutReinvite {
    /// The party it was sent to.
    to: Side,
    cseq: u32,
    /// It carried an offer (else its 2xx brings one).
    offered: bool,
    /// What that party had from the node before it.
    previous: Option<String>,
}

/// A re-INVITE or UPDATE relayed to the other leg, waiting for its answer.
pub(super) struct Reoffer {
    pub(super) from: Side,
    /// The method sent on (the sender's, or INVITE for an UPDATE to a party that does
    /// not take it: see [`Reoffer::converted`]); the sender's is its `request`'s.
    pub(super) method: Method,
    pub(super) request: Request,
    pub(super) info: tsunagu_sip::Info,
    pub(super) key: tsunagu_sip::transaction::TxKey,
    /// CSeq of the relayed request on the other leg.
    pub(super) cseq: u32,
    /// Its client transaction there.
    pub(super) sent: tsunagu_sip::transaction::TxKey,
    /// A re-INVITE without an offer: the other leg's 2xx brings one, and its ACK waits
    /// for the answer in the sender's ACK.
    pub(super) late: bool,
    /// The sender's offer as the node relayed it: what the relay, the hold and the
    /// telephone-event type become once the other leg accepts it (a 2xx); a refused
    /// offer (488, 491, ...) leaves the session as it was (RFC 3261 section 14.2).
    pub(super) offer: Option<sdp::Rewritten>,
    /// The call ended while it was pending: the sender was answered 487, and the other
    /// leg's answer, when it comes, is only acknowledged.
    pub(super) abandoned: bool,
    /// The CANCEL of the relayed re-INVITE, until it is sent.
    pub(super) cancel: Option<(tsunagu_sip::build::RequestSpec, tsunagu_sip::Peer)>,
    /// The other leg answered it provisionally: a CANCEL may go (RFC 3261 9.1).
    pub(super) provisional: bool,
    /// Its sender cancelled it before that: the CANCEL goes with the first provisional.
    pub(super) cancel_wanted: bool,
    /// The body the other party had from the node before this offer: offered again if
    /// it accepts the offer after its sender cancelled it.
    pub(super) previous: Option<String>,
    /// The node added the session's timer to it (see [`Call::timer_to`]): the
    /// caller's answer renews the node's timer with the caller, and its
    /// Session-Expires is not the sender's to hear.
    pub(super) timer_added: bool,
    /// What the request said of session timers.
    pub(super) ask: session::TimerAsk,
    /// Sent again once already after a 422 to the node's timer (see
    /// [`Call::retry_with_timer_learnt`]).
    pub(super) timer_retried: bool,
}

/// The headers a refusal of a relayed re-offer passes on to its sender, as the other
/// party's response `resp` has them, for the code `passed` the sender gets: what the
/// sender needs to act on it, which the RFCs require with those codes (they were
/// dropped, so a 422 reached the sender without its Min-SE and could not be retried,
/// a 405 without Allow; a review). Each is checked and written afresh, never a peer's
/// text passed as it came: Min-SE (422, RFC 4028 6) as a number, Unsupported (420,
/// RFC 3261 8.2.2.3) and Allow (405, 20.5) as lists of tokens, Retry-After (any
/// refusal, 20.33) as its seconds alone. A Min-SE below RFC 4028's least (90) is
/// passed as it is: it is the refuser's floor, not the node's to raise.
fn refusal_headers(resp: &Response, passed: u16) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    // Every line of the header, each element a token, at most 32 of them.
    let tokens = |name: &str| {
        let listed: Vec<&str> = header_values(resp, name)
            .into_iter()
            .map(str::trim)
            .filter(|t| t.len() <= 32 && tsunagu_sip::parse::is_token(t))
            .take(32)
            .collect();
        (!listed.is_empty()).then(|| listed.join(", "))
    };
    match passed {
        422 => {
            if let Some(min) = super::session::min_se(resp) {
                out.push(("Min-SE", min.to_string()));
            }
        }
        420 => out.extend(tokens("Unsupported").map(|v| ("Unsupported", v))),
        405 => out.extend(tokens("Allow").map(|v| ("Allow", v))),
        _ => {}
    }
    if passed >= 300 {
        if let Some(s) = tsunagu_sip::parse::retry_after_seconds(resp) {
            out.push(("Retry-After", s.to_string()));
        }
    }
    out
}

impl Reoffer {
    /// An UPDATE sent on as a re-INVITE (the other party's Allow leaves UPDATE out;
    /// see `legs::takes_update`), carrying the sender's offer, or without one the
    /// session that party has (its answer then stays on its leg; the sender's 200
    /// carries no SDP, as its UPDATE carried none).
    fn converted(&self) -> bool {
        self.request.method != self.method
    }
}

impl Call {
    /// Passes a re-INVITE or UPDATE (hold, resume, codec change, session refresh) from
    /// one leg to the other with the SDP pointed at the node, and remembers it so the
    /// answer can travel back. One at a time: a second gets 491 (RFC 3261 14.2).
    pub(super) fn relay_reoffer(
        &mut self,
        from: Side,
        req: Request,
        info: tsunagu_sip::Info,
        key: tsunagu_sip::transaction::TxKey,
    ) {
        let ep = self.ctx.endpoint.clone();
        // One offer at a time on a dialog (RFC 3261 14.2), the node's own included: a
        // takeover's re-INVITEs (sent, or to be sent again after a 491).
        if self.offer_pending() {
            // The sender's own offer still pending (a second before the first's
            // answer): 500 with Retry-After 0 to 10 s (RFC 3261 14.2, RFC 3311 5.2);
            // glare with the other party's, or the node's, or the sender's first
            // already answered (cancelled, 487) while the other party's answer is
            // awaited: 491. All were 491.
            if self
                .reoffer
                .as_ref()
                .is_some_and(|p| p.from == from && !p.abandoned)
            {
                let after = (rand::random::<u8>() % 11).to_string();
                let extra = [("Retry-After", after.as_str())];
                ep.respond(&req, &info, &key, 500, None, &extra, None);
            } else {
                ep.respond(&req, &info, &key, 491, None, &[], None);
            }
            return;
        }
        let to = from.other();
        let offer = match sdp_body(&req, &req.body) {
            Some(body) => match self.rewrite_sdp(from, &body) {
                Some(rewritten) => Some(rewritten),
                None => {
                    // Not an offer the node can anchor: refused, and the session goes
                    // on as it was (RFC 3261 14.2).
                    tracing::info!(method = %req.method, ?from, "re-offer without a usable SDP: 488");
                    return ep.respond(&req, &info, &key, 488, None, &[], None);
                }
            },
            None => None,
        };
        // A refresh asking for less than the floor is refused as the first INVITE
        // would be (RFC 4028 9: 422 with Min-SE); it was passed on. The caller's floor
        // is the node's minimum; the callee's the one it was given (see `callee_floor`).
        let floor = match from {
            Side::A => self.ctx.min_se,
            Side::B => crate::decide::session_timer::callee_floor(self.ctx.min_se),
        };
        let ask = session::TimerAsk::of(&req);
        if ask.too_small(floor) {
            let min_se = floor.to_string();
            return ep.respond(
                &req,
                &info,
                &key,
                422,
                None,
                &[("Min-SE", min_se.as_str())],
                None,
            );
        }
        if req.method == Method::Invite {
            // The other party may take its time (a person, a slow PBX): without a
            // provisional answer the sender retransmits and, past 32 s, gives up
            // (RFC 3261 17.2.1: a 100 when the answer may take over 200 ms).
            ep.respond(&req, &info, &key, 100, None, &[], None);
        }
        let sdp = offer.as_ref().map(|o| o.sdp.clone());
        let late = sdp.is_none() && req.method == Method::Invite;
        let method = req.method;
        let mut headers = ask.headers();
        let timer_added = self.timer_to(to, &mut headers);
        let Some(leg) = self.leg(to) else {
            return ep.respond(&req, &info, &key, 481, None, &[], None);
        };
        let previous = leg.last_sdp().clone();
        // A party that does not take UPDATE (its Allow leaves it out) gets the same
        // offer in a re-INVITE, and one without an offer (a session refresh) as a
        // re-INVITE of the session it has: relayed as UPDATE, it came back 405 and a
        // caller refreshing by UPDATE was hung up when its session ran out (a review).
        let converted = method == Method::Update
            && !leg.takes_update()
            && (sdp.is_some() || previous.is_some());
        let (sent, sdp) = if converted {
            (Method::Invite, sdp.or_else(|| previous.clone()))
        } else {
            (method, sdp)
        };
        let relayed = leg.reoffer(&ep, sent, sdp, headers);
        tracing::debug!(%method, %sent, from = ?from, "re-offer relayed");
        self.reoffer = Some(Box::new(Reoffer {
            from,
            method: sent,
            request: req,
            info,
            key,
            cseq: relayed.cseq,
            sent: relayed.key,
            late,
            offer,
            abandoned: false,
            cancel: relayed.cancel,
            provisional: false,
            cancel_wanted: false,
            previous,
            timer_added,
            ask,
            timer_retried: false,
        }));
    }

    /// A 422 (Session Interval Too Small) to a relayed re-offer the node added its
    /// session timer to: the timer is the node's, so the node learns from it (see
    /// [`Call::timer_refused`]: the caller's Min-SE followed, RFC 4028 10 and 7.1; the
    /// callee's remembered, no timer to it) and sends the same offer again, once, with
    /// the same CSeq rule as any request; the sender hears only the final answer. It
    /// was passed the 422, which it could not act on (its request named no timer), so
    /// its hold or codec change failed. A Min-SE the node does not follow (over two
    /// hours, [`crate::decide::session_timer::MAX_MIN_SE`]) is passed on as before.
    /// The callee's answer to the offer sent again is still read as one about the
    /// node's timer (without one, the node refreshes the caller's leg). `Err` gives
    /// the re-offer back when it is not such a case.
    fn retry_with_timer_learnt(
        &mut self,
        mut p: Box<Reoffer>,
        resp: &Response,
    ) -> Result<(), Box<Reoffer>> {
        let code = resp.status_code.code();
        let to = p.from.other();
        if code != 422 || !p.timer_added || p.timer_retried || !self.timer_refused(to, resp) {
            return Err(p);
        }
        let mut headers = p.ask.headers();
        self.timer_to(to, &mut headers);
        let interval = self.session.map_or(0, |s| s.interval);
        let ep = self.ctx.endpoint.clone();
        let Some(leg) = self.leg(to) else {
            return Err(p);
        };
        let sdp = p.offer.as_ref().map(|o| o.sdp.clone());
        let relayed = leg.reoffer(&ep, p.method, sdp, headers);
        tracing::info!(
            interval,
            method = %p.method,
            ?to,
            "a session interval refused (422): the re-offer sent again (the caller's floor named; to the callee without a timer)"
        );
        p.cseq = relayed.cseq;
        p.sent = relayed.key;
        p.cancel = relayed.cancel;
        p.provisional = false;
        p.timer_retried = true;
        self.reoffer = Some(p);
        Ok(())
    }

    /// The sender of a pending re-INVITE cancelled it: it is answered 487 (RFC 3261
    /// 9.2) and the node cancels its own re-INVITE on the other leg (at once if that
    /// leg answered it provisionally, else with its first provisional answer, RFC
    /// 3261 9.1): the other party's session stays where the sender's does. It was not
    /// cancelled, and its re-INVITE completed there (a live torture run). The other
    /// leg's answer, when it comes, is only acknowledged; one that accepted the offer
    /// before the CANCEL reached it (the race RFC 3261 leaves to the parties) moves the
    /// other party's session where the sender's did not, until the next offer. An
    /// offerless re-INVITE goes on: the other leg's 2xx brings an offer, whose ACK
    /// must carry the answer only the sender can give.
    pub(super) fn reoffer_cancelled(&mut self, key: &tsunagu_sip::transaction::TxKey) {
        let pending = self
            .reoffer
            .as_ref()
            .is_some_and(|p| p.key == *key && p.method == Method::Invite && !p.late);
        if pending {
            tracing::debug!(
                "a pending re-INVITE cancelled by its sender: 487, and cancelled on the other leg"
            );
            self.abandon_reoffer();
            if let Some(p) = self.reoffer.as_mut() {
                p.cancel_wanted = true;
            }
            self.send_reoffer_cancel();
        }
    }

    /// Sends the CANCEL of the relayed re-INVITE, once, when its sender wanted it and
    /// the other leg has answered provisionally.
    pub(super) fn send_reoffer_cancel(&mut self) {
        let Some(p) = self.reoffer.as_mut() else {
            return;
        };
        if !(p.cancel_wanted && p.provisional) {
            return;
        }
        if let Some((spec, peer)) = p.cancel.take() {
            self.ctx.endpoint.request(spec, peer);
        }
    }

    /// The other party accepted a re-offer whose sender had cancelled it (its 2xx
    /// crossed the node's CANCEL): it moved to a session its sender never took (on hold
    /// while the sender is not, say). The node offers it the session it had before,
    /// in a re-INVITE of its own; its answer is applied like any other (a review found
    /// the two left disagreeing until the next offer).
    pub(super) fn restore_after_crossing(&mut self, side: Side, previous: Option<String>) {
        let Some(previous) = previous else { return };
        tracing::info!(
            ?side,
            "a re-offer its sender no longer waits for was accepted all the same: the previous session offered again"
        );
        self.send_own_reinvite(side, previous, false, false, false);
    }

    /// Sends a re-INVITE of the node's own offering `offer` to `side` (a restore, or
    /// with `refresh` the node's refresh of the callee's leg), with the session's
    /// timer where [`Call::timer_to`] adds one. `timer_added`: the first one carried
    /// it, so this one's answer is read as about the node's timer too; `retried`: it
    /// is the one sent again after a 422 to the node's timer.
    pub(super) fn send_own_reinvite(
        &mut self,
        side: Side,
        offer: String,
        refresh: bool,
        timer_added: bool,
        retried: bool,
    ) {
        let ep = self.ctx.endpoint.clone();
        let mut headers = Vec::new();
        let timer_added = self.timer_to(side, &mut headers) || timer_added;
        let Some(leg) = self.leg(side) else { return };
        let relayed = leg.reoffer(&ep, Method::Invite, Some(offer.clone()), headers);
        self.own_reinvite = Some(OwnReinvite {
            side,
            cseq: relayed.cseq,
            key: relayed.key,
            refresh,
            timer_added,
            offer: Some(offer),
            timer_retried: retried,
        });
    }

    /// The answer to a re-INVITE of the node's own ([`Call::restore_after_crossing`],
    /// or the node's session refresh of a party): a 2xx is acknowledged and its SDP
    /// applied (a refresh's restarts the session's clock; the caller's is followed by
    /// the callee's where the node refreshes both legs); a refusal leaves things as
    /// they are, except a refresh answered 408 or 481: the party is gone (RFC 4028 10,
    /// RFC 3261 12.2.1.2), and the call ends as an expired session; and a restore
    /// refused 422 for the node's timer, sent again with what that taught (see
    /// [`Call::timer_refused`]).
    pub(super) fn on_own_answer(&mut self, own: OwnReinvite, resp: Response) {
        let code = resp.status_code.code();
        if code < 200 {
            return;
        }
        self.own_reinvite = None;
        // Not once the call is ending, nor to a callee judging it (a restore sent
        // again after the BYE got 481, and one reached a judging callee: a review).
        let learnt = code == 422
            && own.timer_added
            && !own.timer_retried
            && self.phase == Phase::Answered
            && !self.judging;
        if let Some(offer) = own.offer.clone().filter(|_| learnt) {
            if self.timer_refused(own.side, &resp) {
                tracing::info!(side = ?own.side, refresh = own.refresh, "a session interval refused (422): the same session offered again");
                return self.send_own_reinvite(own.side, offer, own.refresh, true, true);
            }
        }
        if !(200..300).contains(&code) {
            tracing::info!(code, side = ?own.side, refresh = own.refresh, "the node's own offer was refused");
            if own.refresh && matches!(code, 408 | 481) {
                self.expire_session("a party did not take the node's session refresh");
            } else if own.refresh && own.side == Side::A {
                self.refresh_refused(&resp);
            } else if own.refresh {
                self.callee_refresh_refused(&resp);
            }
            return;
        }
        self.ack_2xx(own.side, own.cseq);
        self.refresh_target(own.side, header(&resp, "Contact"));
        let answered =
            sdp_body(&resp, &resp.body).and_then(|body| self.rewrite_sdp(own.side, &body));
        if let Some(rewritten) = answered {
            self.apply_sdp(own.side, &rewritten);
        }
        if own.timer_added {
            // Every re-INVITE of the node's to the caller carries the session's timer
            // (a refresh, or see `timer_to`), and one to a callee that refreshes: its
            // 2xx renews it.
            self.on_timer_answer(own.side, &resp);
        }
        // What a takeover needs changed with it (the session's interval and who
        // refreshes, the party's media and target): it was left to the next relayed
        // offer (a review).
        self.checkpoint_now(false);
        if let (true, Side::A, Some(s)) = (own.refresh, own.side, self.session) {
            self.refresh_callee(s.generation); // where the node refreshes it too
        }
    }

    /// A client transaction of the call's timed out (no final answer in 32 s): the
    /// relayed re-offer's is answered 408 to its sender; the restoring re-INVITE's
    /// leaves the session as it is; the node's own refresh's ends the session (RFC
    /// 4028 10: the caller is gone). Each is matched by its own transaction: a timeout
    /// of anything else used to end a pending re-offer of the same method, and the
    /// restoring one's was not heard at all, so every later re-offer of either party
    /// was refused 491 for the rest of the call, session refreshes included (a review).
    pub(super) fn reoffer_timed_out(&mut self, key: &tsunagu_sip::transaction::TxKey) {
        if self.reoffer.as_ref().is_some_and(|p| p.sent == *key) {
            if let Some(p) = self.reoffer.take() {
                self.offer_not_taken(&p);
                if p.method == Method::Invite {
                    self.timed_out_reinvite = Some(Box::new(TimedOutReinvite {
                        to: p.from.other(),
                        cseq: p.cseq,
                        offered: p.offer.is_some(),
                        previous: p.previous.clone(),
                    }));
                }
                if !p.abandoned {
                    tracing::info!(method = %p.method, "a relayed re-offer got no final answer: 408 to its sender");
                    self.ctx
                        .endpoint
                        .respond(&p.request, &p.info, &p.key, 408, None, &[], None);
                }
            }
        }
        if let Some(own) = self.own_reinvite.take_if(|own| own.key == *key) {
            tracing::info!(
                refresh = own.refresh,
                "the node's own offer got no final answer"
            );
            if own.refresh {
                self.expire_session("a party did not take the node's session refresh");
            }
        }
    }

    /// A 2xx from `side` to the relayed re-INVITE with CSeq `cseq` after it timed out
    /// ([`Call::reoffer_timed_out`]; true when it was that one). It is acknowledged,
    /// else the party sends it for 32 s and then hangs up the call (RFC 3261
    /// 13.3.1.4): it used to find no ACK to repeat and get none. The sender was told
    /// 408 and keeps its session, so the party that took the offer is offered the
    /// previous session again, as after a crossing CANCEL; a 2xx to an offerless one
    /// carries the party's offer, answered in the ACK with the session the node had
    /// with it (its new media address is not taken: the node's relay stays where it
    /// was).
    pub(super) fn late_answer_to_timed_out(
        &mut self,
        side: Side,
        cseq: u32,
        resp: &Response,
    ) -> bool {
        let Some(t) = self
            .timed_out_reinvite
            .take_if(|t| t.to == side && t.cseq == cseq)
        else {
            return false;
        };
        tracing::info!(
            ?side,
            "a 2xx to a re-INVITE that had timed out: acknowledged"
        );
        // Its 2xx refreshes the party's target all the same (RFC 3261 12.2.1.2).
        self.refresh_target(side, header(resp, "Contact"));
        let ep = self.ctx.endpoint.clone();
        if let Some(leg) = self.leg(side) {
            let answer = if t.offered {
                None
            } else {
                leg.last_sdp().clone()
            };
            leg.ack_at(&ep, cseq, answer.as_deref());
        }
        if t.offered && !self.offer_pending() && self.phase == Phase::Answered {
            self.restore_after_crossing(side, t.previous);
        }
        true
    }

    /// A relayed offer that the other party refused, or that was cancelled or timed
    /// out before it took it: that party's session is the one before the offer, and the
    /// node's next offer of its own to it (a session refresh, a takeover's) is that
    /// one, a version past the one not taken (RFC 3264 8), never the offer not taken
    /// (a hold the sender cancelled, offered again by the node's refresh, put the call
    /// on hold; a review found the cancelled and timed-out paths did not restore).
    fn offer_not_taken(&mut self, p: &Reoffer) {
        if p.offer.is_none() {
            return;
        }
        if let Some(leg) = self.leg(p.from.other()) {
            leg.next_body(p.previous.clone());
        }
    }

    /// The call is ending with a re-offer pending (or its sender cancelled it, see
    /// `reoffer_cancelled`): its sender is answered 487 (RFC 3261 15.1.2: a UAS that
    /// receives a BYE answers the dialog's pending requests; the same when the node
    /// hangs up). It was left unanswered, its server transaction kept for minutes, and
    /// the other leg's late 2xx relayed into the ended dialog (a live torture run).
    pub(super) fn abandon_reoffer(&mut self) {
        let Some(p) = self.reoffer.as_mut().filter(|p| !p.abandoned) else {
            return;
        };
        p.abandoned = true;
        tracing::debug!(method = %p.method, "a re-offer given up while pending: 487");
        self.ctx
            .endpoint
            .respond(&p.request, &p.info, &p.key, 487, None, &[], None);
    }

    /// The other leg answered a relayed re-offer: ACK it (INVITE 2xx) and answer the
    /// leg that sent it, with the SDP pointed at the node.
    pub(super) fn on_reoffer_answer(&mut self, resp: Response) {
        let code = resp.status_code.code();
        if code < 200 {
            if let Some(p) = self.reoffer.as_mut() {
                p.provisional = true;
            }
            self.send_reoffer_cancel();
            return;
        }
        let Some(p) = self.reoffer.take() else { return };
        let ep = self.ctx.endpoint.clone();
        let to = p.from.other();
        if p.abandoned {
            if (200..300).contains(&code) && p.method == Method::Invite {
                self.ack_2xx(to, p.cseq);
                if p.cancel_wanted && p.offer.is_some() && self.phase == Phase::Answered {
                    self.restore_after_crossing(to, p.previous);
                }
            } else if code >= 300 {
                self.offer_not_taken(&p);
            }
            return;
        }
        let p = match self.retry_with_timer_learnt(p, &resp) {
            Ok(()) => return,
            Err(p) => p,
        };
        if code >= 300 {
            self.offer_not_taken(&p);
        }
        let answered = sdp_body(&resp, &resp.body)
            .filter(|_| code < 300)
            .and_then(|body| self.rewrite_sdp(to, &body));
        if (200..300).contains(&code) && p.offer.is_some() && answered.is_none() {
            // A 2xx that must bring the answer and brings none the node can anchor:
            // the sender would get a 2xx without one (RFC 3264: it must have it), and
            // the node would act on an offer nobody answered. The other leg's 2xx is
            // acknowledged; the sender is refused 488 and the node keeps the session
            // as it was (the other leg, which broke the rule, may think otherwise;
            // its media still reaches the node's port). A live torture run. (A 2xx to
            // an offerless re-INVITE whose offer the node cannot anchor is not
            // handled so: its ACK would have to carry an answer.)
            tracing::warn!(method = %p.method, ?to, "a 2xx to a relayed re-offer without a usable SDP: 488 to its sender, the session unchanged");
            if p.method == Method::Invite {
                self.ack_2xx(to, p.cseq);
            }
            ep.respond(&p.request, &p.info, &p.key, 488, None, &[], None);
            return;
        }
        if let (200..=299, Some(offer)) = (code, &p.offer) {
            self.apply_sdp(p.from, offer);
        }
        if (200..300).contains(&code) {
            // A re-INVITE or UPDATE that succeeded is a target refresh of both
            // dialogs: the sender's by its request's Contact (RFC 3261 12.2.2, RFC
            // 3311 5.2; applied on success only, RFC 6141 4), the other party's by its
            // 2xx's (12.2.1.2).
            self.refresh_target(p.from, header(&p.request, "Contact"));
            self.refresh_target(to, header(&resp, "Contact"));
        }
        let answer = answered.map(|rewritten| {
            self.apply_sdp(to, &rewritten);
            rewritten.sdp
        });
        // The answer as the next body of the offerer's session (the leg keeps it); an
        // UPDATE without an offer sent on as a re-INVITE had the session offered, and
        // its sender gets no SDP (see `Reoffer::converted`).
        let answer = if p.converted() && p.offer.is_none() {
            None
        } else {
            self.leg(p.from).and_then(|leg| leg.next_body(answer))
        };
        if (200..300).contains(&code) && p.method == Method::Invite {
            if p.late && answer.is_some() {
                // The 2xx carries `to`'s offer: ACKed with the answer the sender's
                // ACK brings ([`Call::on_ack`]).
                self.late_ack = Some((to, p.cseq, p.info.cseq));
            } else {
                self.ack_2xx(to, p.cseq);
            }
        }
        let transport = match (p.from, &self.b) {
            (Side::B, Some(b)) => b.peer.transport,
            _ => self.a.peer.transport,
        };
        let contact = legs::contact(&ep, transport);
        // A refreshing callee's request without a timer (a hold), to which the node
        // added the session's toward the caller: its 2xx carries the session's, as a
        // refreshing caller's does (see `session::unasked_timer`). Answered without
        // one, the callee turned its timer off and nobody refreshed (a review).
        let callee_unasked = p.from == Side::B
            && p.timer_added
            && self
                .session
                .is_some_and(|s| session::callee_refreshes(s.by_node, s.caller_refreshes));
        let timer = if callee_unasked {
            let kept = self.session.map_or(0, |s| s.interval);
            session::unasked_timer(&p.ask, kept)
        } else if p.timer_added {
            Vec::new()
        } else {
            session::answer_headers(
                &resp,
                &p.ask,
                self.session.map(|s| s.interval),
                // Who refreshes toward the sender: the node toward the caller; the
                // caller (through the node) toward the callee, unless the node
                // refreshes the caller itself.
                p.from == Side::A || self.session.is_some_and(|s| !s.by_node),
                p.from == Side::A,
                // The caller's leg is refreshed by the caller, or by the node for a
                // caller that does no timers (a proxy asked for it: see `agree`),
                // read from this request (a call taken over has no INVITE to read).
                p.from == Side::A
                    && self
                        .session
                        .is_some_and(|s| s.caller_refreshes || (s.by_node && !p.ask.supports())),
            )
        };
        // A 422 the node did not follow (see `retry_with_timer_learnt`) is about the
        // node's timer, which the sender never asked for: a 422 to a request without
        // Session-Expires breaks RFC 4028 (6), so the sender gets 500.
        let passed = if code == 422 && p.timer_added {
            500
        } else {
            code
        };
        let refusal = refusal_headers(&resp, passed);
        let extra: Vec<(&str, &str)> = if code < 300 {
            if p.timer_added {
                self.on_timer_answer(p.from.other(), &resp);
                if callee_unasked && !p.ask.keeps_refreshing_unasked() {
                    // The callee cannot refresh (no `Supported: timer`): the node
                    // does, both legs (the callee was told the node's side refreshes
                    // its leg; the node refreshed the caller's only: a live torture
                    // run).
                    self.restart_session(0, Some(true));
                    if let Some(s) = self.session.as_mut() {
                        s.callee_by_node = true;
                    }
                }
            } else {
                // What the sender was told: the 2xx's timer, else the one the node
                // wrote into it.
                let written = timer
                    .iter()
                    .find(|(name, _)| *name == "Session-Expires")
                    .map(|(_, v)| v.as_str());
                let answered = header(&resp, "Session-Expires");
                // The caller's timer now: the 2xx's (the callee's, passed on, or
                // the caller's own), else what the node told the caller.
                let told = answered.or(written.filter(|_| p.from == Side::A));
                let (by_node, caller, callee_by_node) =
                    self.refresher_after(p.from, answered, &timer);
                self.renew_session(told, by_node);
                self.caller_told(caller);
                if let (Some(s), Some(both)) = (self.session.as_mut(), callee_by_node) {
                    s.callee_by_node = both;
                }
                if p.from == Side::B {
                    self.callee_may_refresh_itself(answered.or(written));
                }
            }
            std::iter::once(("Contact", contact.as_str()))
                .chain(timer.iter().map(|(k, v)| (*k, v.as_str())))
                .collect()
        } else {
            refusal.iter().map(|(k, v)| (*k, v.as_str())).collect()
        };
        ep.respond(
            &p.request,
            &p.info,
            &p.key,
            passed,
            None,
            &extra,
            answer.as_deref().map(|s| ("application/sdp", s.as_bytes())),
        );
        if code < 300 {
            // The session changed: what a takeover needs changed with it.
            self.checkpoint_now(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: u16, extra: &str) -> Response {
        let text = format!(
            "SIP/2.0 {code} No\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
             From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>;tag=2\r\nCall-ID: c1\r\n\
             CSeq: 2 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match tsunagu_sip::parse::parse(text.as_bytes()).unwrap().0 {
            tsunagu_sip::SipMessage::Response(r) => r,
            _ => unreachable!(),
        }
    }

    /// (code of the other party's refusal, its headers, code passed on) -> headers the
    /// sender gets.
    #[test]
    fn a_refusal_passes_on_what_its_sender_needs() {
        let rows: &[(u16, &str, u16, &[(&str, &str)])] = &[
            (422, "Min-SE: 600\r\n", 422, &[("Min-SE", "600")]),
            (422, "Min-SE:  600 \r\n", 422, &[("Min-SE", "600")]),
            // Its parameters are not passed on (RFC 4028 5 allows generic ones).
            (422, "Min-SE: 600;x=y\r\n", 422, &[("Min-SE", "600")]),
            (422, "Min-SE: 99999999999\r\n", 422, &[]),
            // Below RFC 4028's least (90) it is still the refuser's floor, which the
            // sender must meet to be taken: passed as it came, not raised.
            (422, "Min-SE: 30\r\n", 422, &[("Min-SE", "30")]),
            // The node's own timer refused: 500 to a sender that never asked.
            (422, "Min-SE: 600\r\n", 500, &[]),
            (
                420,
                "Unsupported: foo, bar\r\n",
                420,
                &[("Unsupported", "foo, bar")],
            ),
            (
                420,
                "Unsupported: foo, b@d, ,bar\r\n",
                420,
                &[("Unsupported", "foo, bar")],
            ),
            (420, "Unsupported: <x>\r\n", 420, &[]),
            (
                405,
                "Allow: INVITE,ACK,BYE,CANCEL\r\n",
                405,
                &[("Allow", "INVITE, ACK, BYE, CANCEL")],
            ),
            // Only the header its code needs.
            (405, "Unsupported: foo\r\nMin-SE: 600\r\n", 405, &[]),
            (
                486,
                "Retry-After: 30 (busy);duration=5\r\n",
                486,
                &[("Retry-After", "30")],
            ),
            (503, "Retry-After: soon\r\n", 503, &[]),
            (
                422,
                "Min-SE: 600\r\nRetry-After: 5\r\n",
                422,
                &[("Min-SE", "600"), ("Retry-After", "5")],
            ),
            (488, "", 488, &[]),
        ];
        for (code, extra, passed, want) in rows {
            let got = refusal_headers(&refusal(*code, extra), *passed);
            let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(got, *want, "{code} {extra:?} as {passed}");
        }
    }
}
