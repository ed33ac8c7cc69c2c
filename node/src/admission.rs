//! Admission of new INVITEs, on the SIP endpoint's task (so it never blocks): source
//! trunk (403), what the INVITE asks (read once into an [`InviteView`]: hop count 483,
//! option tags 420, session interval 422, SDP offer 488), tracking number (404), then
//! capacity — draining node, node-wide call cap, trunk channel and call-rate caps, two
//! free RTP ports — answered 503 with Retry-After. A call over its trunk's rate whose turn comes within the
//! trunk's shaping delay is started late instead of refused. An admitted call's task
//! is started here, through the node's call table (`supervisor::Calls`).

use crate::call::CallArgs;
use crate::clock::now_ms;
use crate::context::{CallSlot, NoSlot, NodeContext};
use crate::decide::rate::TokenBucket;
use crate::directory::Directory;
use crate::invite::{InviteView, Refusal};
use crate::metrics::{RejectLabel, TrunkLabel};
use crate::supervisor::Calls;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tsunagu_sip::{InviteHandler, NewInvite, Reject};

pub struct Admission {
    pub ctx: Arc<NodeContext>,
    pub directory: Directory,
    pub calls: Arc<Calls>,
    pub cps: Vec<Option<Mutex<TokenBucket>>>,
}

impl Admission {
    pub fn new(ctx: Arc<NodeContext>, directory: Directory, calls: Arc<Calls>) -> Admission {
        let now = Instant::now();
        let cps = ctx
            .routing
            .trunks
            .iter()
            .map(|t| (t.max_cps > 0).then(|| Mutex::new(TokenBucket::new(t.max_cps, now))))
            .collect();
        Admission {
            ctx,
            directory,
            calls,
            cps,
        }
    }

    /// Refuses an INVITE (counted by code and reason) and hands it back for the answer.
    fn refuse(
        &self,
        code: u16,
        reason: &'static str,
        invite: NewInvite,
    ) -> Result<(), (Reject, NewInvite)> {
        Err((self.reject(code, reason), invite))
    }

    /// 420 Bad Extension listing the option tags the INVITE requires and we lack.
    fn refuse_extensions(
        &self,
        tags: String,
        invite: NewInvite,
    ) -> Result<(), (Reject, NewInvite)> {
        let mut reject = self.reject(420, "extension_required");
        reject.unsupported = Some(tags);
        Err((reject, invite))
    }

    /// The refusal for `code`, counted by code and reason, with the headers it needs.
    fn reject(&self, code: u16, reason: &'static str) -> Reject {
        self.ctx
            .metrics
            .calls
            .rejected
            .get_or_create(&RejectLabel { code, reason })
            .inc();
        Reject {
            code,
            retry_after: (code == 503).then_some(self.ctx.retry_after),
            min_se: (code == 422).then_some(self.ctx.min_se),
            unsupported: None,
        }
    }
}

impl InviteHandler for Admission {
    fn on_invite(&self, invite: NewInvite) -> Result<(), (Reject, NewInvite)> {
        let ctx = &self.ctx;
        if ctx.draining.load(Ordering::Relaxed) {
            return self.refuse(503, "draining", invite);
        }
        if !ctx.cluster_lease() {
            // Frozen, cut off or declared down: others may be taking over.
            return self.refuse(503, "cluster_lease", invite);
        }
        if !ctx.log.ready() {
            // The call log cannot be written (store failing) or is far behind: a call
            // admitted now might never be logged.
            return self.refuse(503, "store_unavailable", invite);
        }
        // Sources in no trunk at all never get here (the SIP edge drops them unanswered,
        // `sip.untrusted`); this refuses a trunk's outbound address that is not also
        // one of its inbound networks (callees may not place calls).
        let Some(trunk) = ctx.routing.inbound_trunk(invite.peer.addr.ip()) else {
            tracing::info!(source = %invite.peer.addr, "INVITE from a source no trunk allows");
            return self.refuse(403, "source_not_allowed", invite);
        };
        // The INVITE, read once: these refusals need no lookup, and the call takes
        // the view over.
        let view = InviteView::of(&invite.request);
        match view.refusal(ctx.min_se) {
            None => {}
            Some(Refusal::Extensions(tags)) => return self.refuse_extensions(tags, invite),
            Some(other) => {
                let (code, reason) = other.code_and_reason();
                return self.refuse(code, reason, invite);
            }
        }
        let Some(number) = self.directory.get(&view.dialled) else {
            return self.refuse(404, "unknown_number", invite);
        };
        let t = &ctx.routing.trunks[trunk];
        // Counted now, in the same step as the limits are checked; given back if the
        // INVITE is refused below.
        let slot = match CallSlot::try_take(ctx, trunk) {
            Ok(slot) => slot,
            Err(NoSlot::NodeFull) => return self.refuse(503, "node_full", invite),
            Err(NoSlot::TrunkChannels) => return self.refuse(503, "trunk_channels", invite),
        };
        let mut wait = std::time::Duration::ZERO;
        if let Some(bucket) = &self.cps[trunk] {
            let reserved = bucket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reserve(Instant::now(), t.shaping);
            match reserved {
                Some(w) => wait = w,
                None => return self.refuse(503, "trunk_cps", invite),
            }
        }
        // The relay's ports, leased now: a node out of them refuses here, before the
        // 100 Trying and with Retry-After, rather than admitting calls that fail (at
        // 1.5x this machine's capacity, a third of all calls did, after their 100).
        let Ok(media_ports) = ctx.ports.allocate_two() else {
            return self.refuse(503, "rtp_ports", invite);
        };
        ctx.trunk_counters[trunk].inbound.inc();
        let advertiser_lines = self.directory.advertiser_lines(&number.advertiser_id);
        let args = CallArgs {
            ctx: ctx.clone(),
            caller: view.caller(t.trusted),
            started: Instant::now(),
            shaping: wait,
            started_at_ms: now_ms(),
            invite,
            view,
            number,
            inbound_trunk: trunk,
            advertiser_lines,
            id: tsunagu_store::new_time_id("call"),
            logged: Arc::new(AtomicBool::new(false)),
            media_ports,
            slot,
        };
        if !wait.is_zero() {
            // Shaped: the call starts when its turn comes. It counts as accepted: the
            // endpoint sends 100 Trying as this returns Ok, so the caller waits quietly.
            ctx.metrics
                .calls
                .shaped
                .get_or_create(&TrunkLabel {
                    trunk: t.name.clone(),
                })
                .inc();
        }
        self.calls.spawn(args);
        Ok(())
    }
}

/// Admission is built after the endpoint (it needs the endpoint's handle); until then
/// new INVITEs are answered 503.
#[derive(Default)]
pub(crate) struct LateHandler(std::sync::OnceLock<Admission>);

impl LateHandler {
    pub(crate) fn set(&self, admission: Admission) {
        let _ = self.0.set(admission);
    }
}

impl InviteHandler for LateHandler {
    fn on_invite(&self, invite: NewInvite) -> Result<(), (Reject, NewInvite)> {
        match self.0.get() {
            Some(a) => a.on_invite(invite),
            None => Err((
                Reject {
                    code: 503,
                    retry_after: Some(1),
                    min_se: None,
                    unsupported: None,
                },
                invite,
            )),
        }
    }
}
