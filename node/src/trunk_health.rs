//! OPTIONS keepalives toward each trunk's outbound target (`options_interval_seconds`).
//! A trunk that misses two pings in a row is marked down and skipped when forwarding
//! (unless every trunk of the route is down: then they are all tried in order); one
//! answered ping marks it up again. Any response counts as alive — a peer that says
//! 404 or 405 to OPTIONS is still there.

use crate::context::NodeContext;
use crate::metrics::TrunkLabel;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tsunagu_sip::build::{new_branch, new_call_id, new_tag, RequestSpec};
use tsunagu_sip::endpoint::CallSink;
use tsunagu_sip::{Method, Peer, SipEvent, Transport};

/// Misses in a row before a trunk is marked down.
pub const MISSES_TO_DOWN: u32 = 2;

/// The up/down state of one trunk, driven by ping results (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub up: bool,
    misses: u32,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            up: true,
            misses: 0,
        }
    }
}

impl Probe {
    /// Records one ping result; returns the new state if it changed.
    pub fn on_result(&mut self, answered: bool) -> Option<bool> {
        let was = self.up;
        if answered {
            self.misses = 0;
            self.up = true;
        } else {
            self.misses += 1;
            if self.misses >= MISSES_TO_DOWN {
                self.up = false;
            }
        }
        (self.up != was).then_some(self.up)
    }
}

/// The order to try a route's trunks in: those up first, in configured order; if none
/// is up, all of them (a stale probe must not block every call).
pub fn trunk_order(route: &[usize], up: impl Fn(usize) -> bool) -> Vec<usize> {
    let live: Vec<usize> = route.iter().copied().filter(|t| up(*t)).collect();
    if live.is_empty() {
        route.to_vec()
    } else {
        live
    }
}

struct Responses(mpsc::UnboundedSender<SipEvent>);

impl CallSink for Responses {
    fn deliver(&self, event: SipEvent) -> Result<(), tsunagu_sip::Undelivered> {
        // Unbounded: only the answers to this pinger's own OPTIONS come here.
        self.0
            .send(event)
            .map_err(|e| tsunagu_sip::Undelivered::Gone(e.0))
    }
}

/// Starts one pinger task per trunk that has an outbound target and an interval.
pub fn start(ctx: &Arc<NodeContext>, intervals: &[u32]) {
    for (index, interval) in intervals.iter().enumerate() {
        let Some(peer) = ctx.routing.trunks[index].outbound else {
            continue;
        };
        if *interval == 0 {
            continue;
        }
        tokio::spawn(ping_loop(
            ctx.clone(),
            index,
            peer,
            Duration::from_secs(u64::from(*interval)),
        ));
    }
}

async fn ping_loop(ctx: Arc<NodeContext>, index: usize, peer: Peer, interval: Duration) {
    let name = ctx.routing.trunks[index].name.clone();
    let label = TrunkLabel {
        trunk: name.clone(),
    };
    let up_gauge = ctx.metrics.calls.trunk_up.get_or_create(&label).clone();
    let failures = ctx
        .metrics
        .calls
        .trunk_ping_failures
        .get_or_create(&label)
        .clone();
    up_gauge.set(1);
    let wait = interval.min(Duration::from_secs(5));
    let mut probe = Probe::default();
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let answered = ping(&ctx, peer, wait).await;
        if !answered {
            failures.inc();
        }
        if let Some(up) = probe.on_result(answered) {
            tracing::warn!(trunk = %name, target = %peer.addr, up, "trunk state changed");
            ctx.trunk_up[index].store(up, Ordering::Relaxed);
            up_gauge.set(i64::from(up));
        }
    }
}

/// Sends one OPTIONS and waits up to `wait` for any final response.
async fn ping(ctx: &NodeContext, peer: Peer, wait: Duration) -> bool {
    let ep = &ctx.endpoint;
    let local = ep
        .local(peer.transport)
        .or_else(|| ep.local(Transport::Udp));
    let Some(local) = local else { return false };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let call_id = new_call_id();
    ep.register(&call_id, Arc::new(Responses(tx)));
    let uri = format!("sip:{}", peer.addr);
    ep.request(
        RequestSpec {
            method: Method::Options,
            uri: uri.clone(),
            transport: peer.transport,
            sent_by: local,
            branch: new_branch(),
            from: format!("<sip:tsunagu@{local}>;tag={}", new_tag()),
            to: format!("<{uri}>"),
            call_id: call_id.clone(),
            cseq: 1,
            contact: None,
            routes: Vec::new(),
            max_forwards: 70,
            extra: Vec::new(),
            body: None,
        },
        peer,
    );
    let answered = tokio::time::timeout(wait, async {
        while let Some(ev) = rx.recv().await {
            match ev {
                SipEvent::Response { response, .. } if response.status_code.code() >= 200 => {
                    return true
                }
                SipEvent::Timeout { .. } => return false,
                _ => {}
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    ep.unregister(&call_id);
    answered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_misses_mark_down_one_answer_marks_up() {
        let mut p = Probe::default();
        let steps: &[(bool, Option<bool>, bool)] = &[
            (true, None, true),
            (false, None, true),
            (true, None, true), // a miss then an answer: never down
            (false, None, true),
            (false, Some(false), false),
            (false, None, false),
            (true, Some(true), true),
        ];
        for (i, (answered, change, up)) in steps.iter().enumerate() {
            assert_eq!(p.on_result(*answered), *change, "step {i}");
            assert_eq!(p.up, *up, "step {i}");
        }
    }

    #[test]
    fn down_trunks_are_skipped_unless_all_are_down() {
        let cases: &[(&[usize], &[usize], &[usize])] = &[
            (&[0, 1, 2], &[], &[0, 1, 2]),
            (&[0, 1, 2], &[0], &[1, 2]),
            (&[0, 1, 2], &[1], &[0, 2]),
            (&[0, 1], &[0, 1], &[0, 1]),
            (&[], &[], &[]),
        ];
        for (route, down, want) in cases {
            assert_eq!(
                trunk_order(route, |t| !down.contains(&t)),
                want.to_vec(),
                "{route:?} down {down:?}"
            );
        }
    }
}
