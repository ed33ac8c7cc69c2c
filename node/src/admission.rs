//! Admission of new INVITEs, on the SIP endpoint's task (so it never blocks): source
//! trunk (403), hop count (483), tracking number (404), SDP offer (488), then capacity
//! — draining node, node-wide call cap, trunk channel and call-rate caps — answered
//! 503 with Retry-After. A call over its trunk's rate whose turn comes within the
//! trunk's shaping delay is started late instead of refused. An admitted call's task
//! is started here, through the node's call table (`supervisor::Calls`).

use crate::call::{identify_caller, CallArgs};
use crate::clock::now_ms;
use crate::context::NodeContext;
use crate::decide::caller::normalize;
use crate::decide::rate::TokenBucket;
use crate::directory::Directory;
use crate::metrics::{RejectLabel, TrunkLabel};
use crate::supervisor::Calls;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tsunagu_sip::parse::{header, header_values, request_user, sdp_body};
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
        if header(&invite.request, "Max-Forwards").and_then(|m| m.trim().parse::<u32>().ok())
            == Some(0)
        {
            return self.refuse(483, "too_many_hops", invite);
        }
        let dialled = request_user(&invite.request)
            .map(|u| normalize(&u))
            .unwrap_or_default();
        let Some(number) = self.directory.get(&dialled) else {
            return self.refuse(404, "unknown_number", invite);
        };
        if let Some(tags) = unsupported_requirements(&header_values(&invite.request, "Require")) {
            return self.refuse_extensions(tags, invite);
        }
        if crate::decide::session_timer::too_small(
            header(&invite.request, "Session-Expires"),
            ctx.min_se,
        ) {
            return self.refuse(422, "session_interval_too_small", invite);
        }
        if sdp_body(&invite.request, &invite.request.body).is_none() {
            return self.refuse(488, "no_sdp_offer", invite);
        }
        if ctx.active_calls() >= ctx.max_calls {
            return self.refuse(503, "node_full", invite);
        }
        let t = &ctx.routing.trunks[trunk];
        if t.max_channels > 0 && ctx.trunk_channels[trunk].load(Ordering::Relaxed) >= t.max_channels
        {
            return self.refuse(503, "trunk_channels", invite);
        }
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
        let Ok(media_ports) = crate::call::lease_two(&ctx.ports) else {
            return self.refuse(503, "rtp_ports", invite);
        };
        ctx.trunk_counters[trunk].inbound.inc();
        let advertiser_lines = self.directory.advertiser_lines(&number.advertiser_id);
        let args = CallArgs {
            ctx: ctx.clone(),
            caller: identify_caller(&invite.request, t.trusted),
            started: Instant::now(),
            started_at_ms: now_ms(),
            invite,
            number,
            inbound_trunk: trunk,
            advertiser_lines,
            id: tsunagu_store::new_time_id("call"),
            logged: Arc::new(AtomicBool::new(false)),
            media_ports: Some(media_ports),
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
            self.calls.spawn_after(wait, args);
            return Ok(());
        }
        self.calls.spawn(args);
        Ok(())
    }
}

/// Option tags (RFC 3261 20.32) a caller may require of us: session timers (RFC 4028,
/// see `decide::session_timer`) and reliable provisionals (RFC 3262, `call::reliable`:
/// sent reliably to callers that require them; one that only supports them gets
/// ordinary 18x). Anything else (e.g. `precondition`) is refused 420.
const SUPPORTED: [&str; 2] = ["timer", "100rel"];

/// The required option tags we do not support, comma-separated, if any.
pub fn unsupported_requirements(require: &[&str]) -> Option<String> {
    let missing: Vec<&str> = require
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty() && !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_extensions() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (&[], None),
            (&["timer"], None),
            (&["Timer"], None),
            (&["100rel"], None),
            (&["timer", "100rel", "precondition"], Some("precondition")),
            (
                &["precondition", "sec-agree"],
                Some("precondition, sec-agree"),
            ),
            (&[""], None),
        ];
        for (require, want) in cases {
            assert_eq!(
                unsupported_requirements(require).as_deref(),
                *want,
                "{require:?}"
            );
        }
    }
}
