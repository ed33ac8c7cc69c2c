//! What every call on a node shares: the SIP endpoint, RTP ports, routing, the call
//! log and metrics. Built once at start and handed to call actors in an `Arc`.

use crate::call_log::CallLog;
use crate::decide::routing::Routing;
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tsunagu_media::PortPool;
use tsunagu_sip::EndpointHandle;

pub struct NodeContext {
    pub node_id: String,
    /// This run's incarnation of the node (a new one when it rejoins its cluster).
    pub epoch: Arc<std::sync::atomic::AtomicU64>,
    /// The newest incarnation whose calls this node dropped to rejoin (0: none): a
    /// claim made for it that lands later is not resumed (see `supervisor::resumable`).
    pub dropped_epoch: std::sync::atomic::AtomicU64,
    /// Another process registered a newer incarnation of this node id (two processes
    /// with one id): this one stops at once, with no drain (see `cluster_link::rejoin`
    /// and `server::run`).
    pub superseded: tokio::sync::Notify,
    /// The node's cluster, if `[cluster]` is configured (set once it joined).
    pub cluster: std::sync::OnceLock<tsunagu_cluster::Cluster>,
    pub endpoint: EndpointHandle,
    pub ports: Arc<PortPool>,
    pub routing: Routing,
    pub log: CallLog,
    /// Read on the call path only to route callback numbers (see `call::callback_route`).
    pub store: Arc<dyn tsunagu_store::Store>,
    pub recorder: tsunagu_media::Recorder,
    pub webhooks: crate::follow_up::hooks::WebhookCache,
    pub lines: crate::lines::Lines,
    pub recordings_dir: std::path::PathBuf,
    /// Whether the recordings disk has room for a new recording (see `recording_space`).
    pub recording_space: crate::recording_space::RecordingSpace,
    pub prompts: tsunagu_media::Prompts,
    /// The ringback tone played to callers who were sent early media.
    pub ringback: Arc<tsunagu_media::Prompt>,
    pub metrics: Metrics,
    pub system_number: Option<String>,
    /// Guard timer for a call that is ending but whose far end never confirms.
    pub end_guard: Duration,
    /// A caller still not answered this long after admission is answered 480 and the
    /// call ended (`sip.max_ring_seconds`: the safety net behind every ring timer).
    pub max_ring: Duration,
    /// An answered call without RTP from either party this long is ended
    /// (`media.timeout_seconds`; None: off).
    pub media_timeout: Option<Duration>,
    pub max_calls: usize,
    pub retry_after: u32,
    /// Min-SE: the smallest session-timer interval accepted.
    pub min_se: u32,
    pub active: AtomicUsize,
    /// Calls open per trunk (index as in `routing.trunks`).
    pub trunk_channels: Vec<AtomicUsize>,
    /// Calls counted per trunk (index as in `routing.trunks`).
    pub trunk_counters: Vec<crate::metrics::TrunkCounters>,
    /// Whether each trunk answers its OPTIONS keepalives (always true without them).
    pub trunk_up: Vec<AtomicBool>,
    pub draining: AtomicBool,
    /// Calls write checkpoints (clustered, `cluster.checkpoints`): see call/takeover.rs.
    pub checkpoints: bool,
}

impl NodeContext {
    pub fn active_calls(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether the node may act in its cluster (always, outside one): see
    /// `tsunagu_cluster::Cluster::lease_valid`.
    pub fn cluster_lease(&self) -> bool {
        self.cluster.get().is_none_or(|c| c.lease_valid())
    }
}

/// Holds a node-wide and a per-trunk call slot; released on drop, so a crashed call
/// frees its slots too.
pub struct CallSlot {
    ctx: Arc<NodeContext>,
    _channel: TrunkChannel,
}

/// One of a trunk's `max_channels`, held while a call uses the trunk: the call that
/// came from it (inside [`CallSlot`]) or a forwarding attempt sent to it (a carrier's
/// channels count both directions). Given back when dropped.
pub struct TrunkChannel {
    ctx: Arc<NodeContext>,
    trunk: usize,
}

impl TrunkChannel {
    /// A channel of `trunk`, only if it holds fewer than its `max_channels` (0: no
    /// limit), checked and counted in one atomic step.
    pub fn try_take(ctx: &Arc<NodeContext>, trunk: usize) -> Option<TrunkChannel> {
        if let Some(c) = ctx.trunk_channels.get(trunk) {
            let max_channels = ctx.routing.trunks.get(trunk).map_or(0, |t| t.max_channels);
            if !reserve_below(c, channel_limit(max_channels)) {
                return None;
            }
        }
        TrunkChannel::shown(ctx, trunk, 1);
        Some(TrunkChannel {
            ctx: ctx.clone(),
            trunk,
        })
    }

    /// A channel whatever the limit.
    fn take(ctx: &Arc<NodeContext>, trunk: usize) -> TrunkChannel {
        if let Some(c) = ctx.trunk_channels.get(trunk) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        TrunkChannel::shown(ctx, trunk, 1);
        TrunkChannel {
            ctx: ctx.clone(),
            trunk,
        }
    }

    /// `tsunagu_trunk_channels` follows the count (`delta` +1 taken, -1 given back).
    fn shown(ctx: &NodeContext, trunk: usize, delta: i64) {
        if let Some(t) = ctx.trunk_counters.get(trunk) {
            t.channels.inc_by(delta);
        }
    }
}

impl Drop for TrunkChannel {
    fn drop(&mut self) {
        if let Some(c) = self.ctx.trunk_channels.get(self.trunk) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
        TrunkChannel::shown(&self.ctx, self.trunk, -1);
    }
}

/// Why admission got no call slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// `node.max_calls` reached.
    NodeFull,
    /// The trunk's `max_channels` reached.
    TrunkChannels,
}

/// Counts one more in `counter` if that keeps it at most `limit`, in one atomic step.
fn reserve_below(counter: &AtomicUsize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

/// A trunk's `max_channels` as a limit for [`reserve_below`]: 0 is none.
fn channel_limit(max_channels: u32) -> usize {
    match max_channels {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

impl CallSlot {
    /// A slot for a new call from `trunk`, only if the node holds fewer than its
    /// `max_calls` and the trunk fewer than its `max_channels` (0: no limit). Each
    /// count is checked and taken in one atomic step: INVITEs that several SIP shards
    /// admit at the same instant cannot pass a limit together (they did while the
    /// check was at admission and the count in the call's task, an await later).
    pub fn try_take(ctx: &Arc<NodeContext>, trunk: usize) -> Result<CallSlot, NoSlot> {
        if !reserve_below(&ctx.active, ctx.max_calls) {
            return Err(NoSlot::NodeFull);
        }
        let Some(channel) = TrunkChannel::try_take(ctx, trunk) else {
            ctx.active.fetch_sub(1, Ordering::Relaxed);
            return Err(NoSlot::TrunkChannels);
        };
        ctx.metrics.calls.active.inc();
        Ok(CallSlot {
            ctx: ctx.clone(),
            _channel: channel,
        })
    }

    /// A slot whatever the limits (a call taken over from a dead node is never
    /// refused by them: see README "Trade-offs and limits").
    pub fn take(ctx: &Arc<NodeContext>, trunk: usize) -> CallSlot {
        ctx.active.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.calls.active.inc();
        CallSlot {
            ctx: ctx.clone(),
            _channel: TrunkChannel::take(ctx, trunk),
        }
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.ctx.active.fetch_sub(1, Ordering::Relaxed);
        self.ctx.metrics.calls.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads taking slots at the same instant never pass the limit together, and a
    /// limit of 0 on a trunk is none.
    #[test]
    fn slots_taken_at_once_never_pass_their_limit() {
        for (limit, threads, want) in [(2u32, 8, 2usize), (5, 8, 5), (0, 8, 8)] {
            let trunk = AtomicUsize::new(0);
            let node = AtomicUsize::new(0);
            let start = std::sync::Barrier::new(threads);
            let taken = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        start.wait();
                        if reserve_below(&trunk, channel_limit(limit)) {
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                        reserve_below(&node, 6);
                    });
                }
            });
            assert_eq!(taken.into_inner(), want, "trunk limit {limit}");
            assert_eq!(trunk.into_inner(), want);
            assert_eq!(node.into_inner(), 6, "node limit 6");
        }
    }
}
