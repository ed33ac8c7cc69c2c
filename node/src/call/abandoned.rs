//! A forwarding attempt the call moved on from before its callee said anything: at
//! the destination's ring time no provisional (not even 100 Trying) had come, and RFC
//! 3261 9.1 forbids a CANCEL until one does. Waiting for Timer B (32 s) held the
//! caller that long; instead the call tries its next destination (or gives up) at
//! once, and the leg is handed to the SIP core under its Call-ID, where it answers
//! for itself whatever becomes of the call: a late provisional gets its CANCEL, a
//! late 2xx its ACK and a BYE (nobody is left connected to nobody), the BYE's answer
//! frees its trunk channel, and a final failure or a timeout ends it. A leg the call hung up itself
//! (answered with nothing it could use) comes here too, for the other forks of its
//! INVITE that answer after it.

use super::legs::BLeg;
use crate::context::{NodeContext, TrunkChannel};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tsunagu_sip::endpoint::CallSink;
use tsunagu_sip::{EndpointHandle, Method, SipEvent, Undelivered};

/// How long an abandoned leg holds its trunk channel at most. Its INVITE's final
/// response is all it waits for, and two paths had it wait for ever, holding the
/// channel: the final response reaching the call just before the hand-over (the call,
/// no longer knowing the leg, dropped it; its retransmissions were absorbed by the
/// transaction), and a callee that took the CANCEL and kept ringing, each provisional
/// keeping the INVITE alive (a review). Two of RFC 3261's 64*T1: a cancelled INVITE's
/// final answer is due within one (9.1), an unanswered one's Timer B is one.
pub const ABANDONED_FOR: Duration = super::reliable::T1.saturating_mul(128);

/// How long the leg still answers for itself after that (a late 2xx gets its ACK and
/// a BYE): as long as the SIP core keeps a forwarded INVITE without an answer (a
/// destination's longest ring, 300 s, and 32 s more), and once more for the answer's
/// retransmissions. Let go then, the leg's route is bounded whatever the callee does.
const ROUTE_KEPT_FOR: Duration = Duration::from_secs(300 + 2 * 32);

pub struct Abandoned {
    leg: Mutex<BLeg>,
    ep: EndpointHandle,
    ctx: Arc<NodeContext>,
    /// The trunk channel the attempt holds until the leg is done (its INVITE may
    /// still be answered), or [`ABANDONED_FOR`].
    channel: Mutex<Option<TrunkChannel>>,
    /// Past its first wait: a late answer's BYE, once answered, ends it (nothing
    /// else would until [`ROUTE_KEPT_FOR`]).
    late: AtomicBool,
}

impl Abandoned {
    /// Takes `leg` over from its call (its Call-ID now reaches this instead), with
    /// the trunk channel it holds for at most [`ABANDONED_FOR`]; the leg itself is
    /// let go after [`ROUTE_KEPT_FOR`] more, whatever became of it.
    pub fn hand_over(leg: BLeg, ctx: &Arc<NodeContext>, channel: Option<TrunkChannel>) {
        let ep = ctx.endpoint.clone();
        let call_id = leg.call_id().to_string();
        // A leg hung up already (its 2xx unusable, its call crashed) waits only for
        // its INVITE's other forks: RFC 6026's Timer M, 64*T1 after that 2xx.
        let first_wait = if leg.hung_up_any() {
            super::reliable::T1.saturating_mul(64)
        } else {
            ABANDONED_FOR
        };
        let this = Arc::new(Abandoned {
            leg: Mutex::new(leg),
            ep: ep.clone(),
            ctx: ctx.clone(),
            channel: Mutex::new(channel),
            late: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&this);
        ep.register(&call_id, this);
        tokio::spawn(async move {
            tokio::time::sleep(first_wait).await;
            let Some(this) = weak.upgrade() else { return };
            this.give_channel_back();
            this.late.store(true, Ordering::Release);
            // Answered: the other forks' 2xx come within RFC 6026's Timer M (64*T1
            // after the first), long before this; no later one is waited for.
            let answered = this
                .leg
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .hung_up_any();
            drop(this);
            if answered {
                ep.unregister(&call_id);
                return;
            }
            tokio::time::sleep(ROUTE_KEPT_FOR).await;
            // Still there (its Call-ID is the attempt's own, never used again).
            if weak.upgrade().is_some() {
                ep.unregister(&call_id);
            }
        });
    }

    fn give_channel_back(&self) {
        drop(
            self.channel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }

    fn done(&self, leg: &BLeg) {
        self.give_channel_back();
        self.ep.unregister(leg.call_id());
    }
}

impl CallSink for Abandoned {
    fn deliver(&self, event: SipEvent) -> Result<(), Undelivered> {
        let mut leg = self.leg.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            SipEvent::Response { response, info } => {
                let code = response.status_code.code();
                match (info.cseq_method, code) {
                    (Method::Invite, 100..=199) => {
                        leg.provisional = true;
                        // Sent now that it may be; not after a 2xx (hung up): a
                        // provisional passed on by its call can come after one.
                        if !leg.hung_up_any() {
                            leg.cancel(&self.ep);
                        }
                    }
                    (Method::Invite, 200..=299) => {
                        let routing = &self.ctx.routing;
                        leg.hang_up_answer(&self.ep, &response, &|ip| routing.is_trunk_address(ip));
                    }
                    // A failure (487 after our CANCEL), ACKed by the transaction.
                    (Method::Invite, _) => self.done(&leg),
                    // The callee is free again; another fork of the INVITE may still
                    // answer until the first wait ends, which lets the leg go.
                    (Method::Bye, 200..) if self.late.load(Ordering::Acquire) => self.done(&leg),
                    (Method::Bye, 200..) => self.give_channel_back(),
                    _ => {}
                }
                Ok(())
            }
            // The INVITE's: nothing will answer it now. A CANCEL's or a BYE's is not
            // the INVITE's end: a callee that ignored the CANCEL and rang on was
            // forgotten 32 s later, its 200 then reaching nobody (a review).
            SipEvent::Timeout { key } => {
                match key.method {
                    Method::Invite => self.done(&leg),
                    Method::Bye => self.give_channel_back(),
                    _ => {}
                }
                Ok(())
            }
            // A request of the callee's (a BYE after its 2xx): the core answers it.
            other @ SipEvent::Request { .. } => Err(Undelivered::Gone(other)),
            _ => Ok(()),
        }
    }
}
