//! The node's side of its cluster (`[cluster]`): joining, and what the cluster asks of
//! the node ([`tsunagu_cluster::Host`]) — the registered members, the calls of a member
//! declared down, provisioning changes, line answers, and rejoining when this node's
//! own incarnation was declared down.
//!
//! A member declared down: one survivor (the finaliser, see `Host::member_down`) marks
//! it down in the store (compare-and-set on its incarnation) and logs each call it left
//! in progress once, as failed with reason `node_lost`, ended at its last sign of life;
//! the owners of line keys drop its lines (`tsunagu_cluster::lines`), so queued
//! callers elsewhere move up.
//!
//! This node declared down (frozen past the detector, cut off): it drops every call
//! silently (others logged them), registers a new incarnation, and rejoins; meanwhile
//! its lease is void, so it admits nothing.

use crate::call::checkpoint::{Answered, Checkpoint, State};
use crate::call_log::{lost_call, number_for_record, LogEntry};
use crate::context::NodeContext;
use crate::provisioning::Provisioning;
use crate::supervisor::SupervisorMsg;
use ractor::ActorRef;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tsunagu_cluster::lines::Answer;
use tsunagu_cluster::{placement, Cluster, Host, Registered};
use tsunagu_config::egress::MemberListeners;
use tsunagu_config::Config;
use tsunagu_store::{NodeInfo, Store};

/// What the cluster's callbacks reach in the node.
pub struct NodeHost {
    pub ctx: Arc<NodeContext>,
    pub provisioning: Provisioning,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub info: NodeInfo,
    pub cluster: OnceLock<Cluster>,
    /// The other nodes' listeners, which follow-ups may never reach: refreshed from
    /// each roster read.
    egress_members: MemberListeners,
    /// A rejoin is under way.
    rejoining: Arc<AtomicBool>,
}

impl NodeHost {
    pub fn new(
        ctx: Arc<NodeContext>,
        provisioning: Provisioning,
        supervisor: ActorRef<SupervisorMsg>,
        info: NodeInfo,
        egress_members: MemberListeners,
    ) -> NodeHost {
        NodeHost {
            ctx,
            egress_members,
            provisioning,
            supervisor,
            info,
            cluster: OnceLock::new(),
            rejoining: Arc::new(AtomicBool::new(false)),
        }
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.ctx.store
    }
}

impl Host for NodeHost {
    fn registered(&self) -> Option<Vec<Registered>> {
        match self.store().nodes() {
            Ok(nodes) => {
                self.egress_members.set(listeners(&nodes));
                let now = crate::clock::now_ms();
                Some(
                    nodes
                        .into_iter()
                        .map(|n| Registered {
                            // Retired only with `down`: a build without the flag clears
                            // `down` alone when it restarts a retired node
                            // (tsunagu_cluster::retire).
                            retired: n.retired && n.down,
                            down: n.down,
                            name: n.node_id,
                            epoch: n.epoch,
                            cluster_addr: n.cluster_addr.and_then(|a| a.parse().ok()),
                            sign: n.last_seen,
                            sign_age: sign_age(n.last_seen, now),
                        })
                        .collect(),
                )
            }
            Err(e) => {
                tracing::warn!(%e, "cannot read the cluster's members from the store");
                None
            }
        }
    }

    fn member_down(&self, name: &str, epoch: u64, finaliser: bool, survivors: &[String]) {
        let job = TakeOver {
            ctx: self.ctx.clone(),
            supervisor: self.supervisor.clone(),
            dead: name.to_string(),
            dead_epoch: epoch,
            finaliser,
            survivors: survivors.to_vec(),
            last_seen: None,
        };
        tokio::spawn(job.run());
    }

    fn member_up(&self, name: &str, epoch: u64) {
        tracing::info!(member = name, epoch, "cluster member up");
        // What it provisioned while we did not hear it.
        self.provisioning.catch_up_soon(None);
    }

    fn changed(&self, seq: i64) {
        self.provisioning.catch_up_soon(Some(seq));
    }

    fn stale(&self) {
        if self.rejoining.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(cluster) = self.cluster.get().cloned() else {
            // Still starting: `join` looks again once the cluster is set.
            self.rejoining.store(false, Ordering::Release);
            return;
        };
        let (ctx, supervisor, info, provisioning) = (
            self.ctx.clone(),
            self.supervisor.clone(),
            self.info.clone(),
            self.provisioning.clone(),
        );
        let rejoining = self.rejoining.clone();
        tokio::spawn(async move {
            loop {
                let rejoined = rejoin(
                    ctx.clone(),
                    supervisor.clone(),
                    info.clone(),
                    provisioning.clone(),
                    cluster.clone(),
                )
                .await;
                if !rejoined {
                    // Superseded: the process stops (`rejoining` stays set, so no
                    // other rejoin starts meanwhile).
                    break;
                }
                rejoining.store(false, Ordering::Release);
                // Declared down again while rejoining (its `stale` call found a rejoin
                // under way and returned): once more, or it would stay stale for good.
                if !cluster.needs_rejoin() || rejoining.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
        });
    }

    fn line_answer(&self, key: &str, call: &str, answer: Answer) {
        self.ctx.lines.answer(key, call, answer);
    }

    fn hand_over(&self, from: &str, epoch: u64, calls: Vec<String>) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        if self.ctx.draining.load(Ordering::Relaxed) {
            // Draining too: the calls stay with their node (it ends them at its deadline).
            tracing::warn!(
                from,
                calls = calls.len(),
                "draining: calls handed over refused"
            );
            return;
        }
        let (ctx, supervisor, from) = (self.ctx.clone(), self.supervisor.clone(), from.to_string());
        tokio::spawn(async move {
            let claimed = take_handed_over(&ctx, &supervisor, &from, epoch, calls).await;
            if !claimed.is_empty() {
                tracing::info!(from = %from, calls = claimed.len(), "took over calls of a draining member");
                cluster.handed_over(&from, claimed);
            }
        });
    }

    fn handed_over(&self, from: &str, calls: Vec<String>) {
        let (ctx, supervisor, from) = (self.ctx.clone(), self.supervisor.clone(), from.to_string());
        tokio::spawn(async move {
            let (store, me) = (ctx.store.clone(), ctx.node_id.clone());
            let epoch = ctx.epoch.load(Ordering::Relaxed);
            let named = calls.clone();
            let checked =
                tokio::task::spawn_blocking(move || taken_from_here(&*store, &me, epoch, calls))
                    .await;
            let (gone, kept) = match checked {
                Ok(Ok(split)) => split,
                failed => {
                    // Unreadable store: the peer's word stands (keeping calls it did take
                    // would have this node hang them up at its drain deadline).
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the check did not finish".to_string(),
                    };
                    tracing::warn!(%error, to = %from, "cannot check calls handed over; taking the peer's word");
                    (named, Vec::new())
                }
            };
            if !kept.is_empty() {
                tracing::warn!(from = %from, calls = kept.len(), "calls said to be handed over are still this node's in the store: kept");
                ctx.metrics
                    .calls
                    .handed_over_refused
                    .inc_by(kept.len() as u64);
            }
            tracing::info!(to = %from, calls = gone.len(), "calls handed over: dropped here");
            let _ = supervisor.cast(SupervisorMsg::HandedOff(gone));
        });
    }
}

/// The API and cluster listeners the store registers for the cluster's nodes (down and
/// retired ones too: one may come back at the same address).
fn listeners(nodes: &[tsunagu_store::NodeRow]) -> Vec<SocketAddr> {
    nodes
        .iter()
        .flat_map(|n| [&n.api_addr, &n.cluster_addr])
        .filter_map(|a| a.as_deref()?.parse().ok())
        .collect()
}

/// How long ago a sign of life dated `last_seen` (store milliseconds) was recorded, as
/// of `now_ms`; zero for one dated ahead of this node's clock.
fn sign_age(last_seen: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_ms.saturating_sub(last_seen)).unwrap_or(0))
}

/// Splits the calls a peer says it took over into those this node may drop (the store
/// no longer gives them to this incarnation: the peer's claim won, or the call ended)
/// and those it keeps (still this incarnation's in the store). A `HandedOver` frame's
/// sender is taken from the frame, so the store's owner, which only a claim's
/// compare-and-set changes, is what decides whether a call moved.
pub fn taken_from_here(
    store: &dyn Store,
    me: &str,
    epoch: u64,
    calls: Vec<String>,
) -> tsunagu_store::Result<(Vec<String>, Vec<String>)> {
    let mine: std::collections::HashSet<String> = store
        .active_calls_of(me)?
        .into_iter()
        .filter(|c| c.record.owner_epoch == epoch)
        .map(|c| c.record.call_id)
        .collect();
    Ok(calls.into_iter().partition(|id| !mine.contains(id)))
}

/// What a previous run of this node id left in the store (killed, crashed): once
/// joined, this node treats each earlier incarnation as a member declared down and
/// itself as its only survivor: answered calls are claimed and resumed here (unless a
/// peer already took them), ringing attempts cancelled, the rest logged lost.
pub fn adopt_leftovers(
    ctx: &Arc<NodeContext>,
    supervisor: &ActorRef<SupervisorMsg>,
    last_seen: Option<i64>,
) {
    let (ctx, supervisor) = (ctx.clone(), supervisor.clone());
    tokio::spawn(async move {
        let (s, me) = (ctx.store.clone(), ctx.node_id.clone());
        let Some(left) = until_done("the calls a previous run left", move || {
            s.active_calls_of(&me)
        })
        .await
        else {
            return;
        };
        let epoch = ctx.epoch.load(Ordering::Relaxed);
        let old: std::collections::BTreeSet<u64> = left
            .iter()
            .map(|c| c.record.owner_epoch)
            .filter(|e| *e < epoch)
            .collect();
        for dead_epoch in old {
            tracing::warn!(
                dead_epoch,
                "adopting the calls a previous run of this node left"
            );
            TakeOver::alone(
                &ctx,
                &supervisor,
                ctx.node_id.clone(),
                dead_epoch,
                last_seen,
            )
            .run()
            .await;
        }
    });
}

/// How long a node must be out of this node's view and its sign of life still (as
/// this node reads it: see [`tsunagu_cluster::signs`]) before the calls it left count
/// as left to nobody, for the member that ranks first for [`SWEEPER_KEY`] (each later
/// rank waits this much longer): well past the failure detector's 2 s and the
/// finaliser's grace, so a death the cluster saw is its finaliser's to handle.
const ORPHANED_AFTER: Duration = Duration::from_secs(10);
/// How often the orphan sweep looks (see [`sweep_orphans`]).
const ORPHAN_SWEEP: Duration = Duration::from_secs(5);
/// The key the live members rank by for the sweep (see [`is_orphaned`]).
const SWEEPER_KEY: &str = "orphaned calls";
/// How long an incarnation the sweep took up (or found without calls) is left alone.
const SWEPT_FOR: Duration = Duration::from_secs(60);

/// Whether the sweep of a member ranking `rank` for [`SWEEPER_KEY`] looks at the calls
/// of registered node `n`, whose sign of life has not moved for `still` as this node
/// reads it: not this node, not up in its view (`up`) (a retired node too: an
/// operator may retire one whose finaliser died before it finished), and still for
/// [`ORPHANED_AFTER`] times one more than `rank` (a node alive behind a partition
/// still signs; a restarted one signs with its new run and adopts its old rows
/// itself). The first-ranked member sweeps first, the next a little later, so a first
/// that drains (it claims nothing), freezes or lags leaves nothing behind. Stillness
/// is read on this node's own clock from the sign's moves, never from the hosts' wall
/// clocks: a node whose clock ran 10 s behind was swept alive (a review).
pub(crate) fn is_orphaned(
    n: &tsunagu_store::NodeRow,
    still: Duration,
    me: &str,
    up: &[String],
    rank: usize,
) -> bool {
    let after =
        ORPHANED_AFTER.saturating_mul(u32::try_from(rank).unwrap_or(u32::MAX).saturating_add(1));
    n.node_id != me && !up.contains(&n.node_id) && still > after
}

/// Calls left to nobody: a member declared down is finalised by one survivor, but a
/// finaliser that dies before it finished (in its grace, or before claiming), one
/// that drains (it claims nothing), or a node that died where no member saw it
/// (alone on the store, or before it joined) left its rows in progress until that
/// node id started again, which a decommissioned node never does: answered calls in
/// silence, no record written (a review). Every [`ORPHAN_SWEEP`] each live member
/// reads the registered nodes and takes each orphaned one's incarnations with calls
/// left ([`is_orphaned`]) as their finaliser and only survivor (the start's adoption
/// of its own earlier runs, for another's): answered calls claimed and resumed here
/// (a claim is a compare-and-set on the owner, so a finaliser still at work loses
/// nothing), the rest logged once (a record written twice is one record). Not before
/// [`tsunagu_cluster::membership::UNHEARD_GRACE`] after this node joined or rejoined
/// (members it has not heard yet are not in its view), and an incarnation it took up
/// or found without calls is left alone for [`SWEPT_FOR`].
pub fn sweep_orphans(ctx: &Arc<NodeContext>, supervisor: &ActorRef<SupervisorMsg>) {
    let (ctx, supervisor) = (ctx.clone(), supervisor.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ORPHAN_SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut signs = tsunagu_cluster::signs::SignWatch::default();
        let mut swept: std::collections::HashMap<(String, u64), std::time::Instant> =
            Default::default();
        // This node's incarnation and when the sweep first saw it in good standing.
        let mut standing: Option<(u64, std::time::Instant)> = None;
        loop {
            tick.tick().await;
            let Some(cluster) = ctx.cluster.get() else {
                continue;
            };
            if cluster.needs_rejoin()
                || !cluster.lease_valid()
                || ctx.draining.load(Ordering::Relaxed)
            {
                continue; // not a member in good standing, or leaving
            }
            let now = std::time::Instant::now();
            let since = match standing {
                Some((epoch, t)) if epoch == cluster.epoch() => t,
                _ => standing.insert((cluster.epoch(), now)).1,
            };
            // Signs are read from the start; nothing is swept before the grace.
            let acting =
                now.saturating_duration_since(since) >= tsunagu_cluster::membership::UNHEARD_GRACE;
            let up = cluster.peers_up();
            let me = ctx.node_id.clone();
            let rank = placement::rank(
                SWEEPER_KEY,
                up.iter().map(String::as_str).chain([me.as_str()]),
                &me,
            )
            .unwrap_or(0);
            let s = ctx.store.clone();
            let Ok(Ok(rows)) = tokio::task::spawn_blocking(move || s.nodes()).await else {
                continue; // the store unreadable: next time
            };
            let wall = crate::clock::now_ms();
            signs.keep_only(rows.iter().map(|n| n.node_id.as_str()));
            swept.retain(|_, t| now.saturating_duration_since(*t) < SWEPT_FOR);
            for n in rows {
                let still = signs.age(
                    &n.node_id,
                    n.epoch,
                    n.last_seen,
                    sign_age(n.last_seen, wall),
                    now,
                );
                if !acting
                    || !is_orphaned(&n, still, &me, &up, rank)
                    || swept.contains_key(&(n.node_id.clone(), n.epoch))
                {
                    continue;
                }
                adopt_orphaned(&ctx, &supervisor, &n, &mut swept, now).await;
            }
        }
    });
}

/// The orphan sweep's work for one node `n` it found left to nobody: each incarnation
/// with calls in progress not taken up lately (in `swept`) is adopted whole; the node
/// is then left alone for [`SWEPT_FOR`], calls or not.
async fn adopt_orphaned(
    ctx: &Arc<NodeContext>,
    supervisor: &ActorRef<SupervisorMsg>,
    n: &tsunagu_store::NodeRow,
    swept: &mut std::collections::HashMap<(String, u64), std::time::Instant>,
    now: std::time::Instant,
) {
    let (s, id) = (ctx.store.clone(), n.node_id.clone());
    let Ok(Ok(calls)) = tokio::task::spawn_blocking(move || s.active_calls_of(&id)).await else {
        return; // this one next time; the others now
    };
    let epochs: std::collections::BTreeSet<u64> =
        calls.iter().map(|c| c.record.owner_epoch).collect();
    for epoch in epochs {
        if epoch != n.epoch && swept.contains_key(&(n.node_id.clone(), epoch)) {
            continue; // an earlier run of that node id, taken up lately
        }
        swept.insert((n.node_id.clone(), epoch), now);
        // The row's sign of life is its last incarnation's; an earlier one was gone
        // when the last started.
        let last_seen = if epoch == n.epoch {
            n.last_seen
        } else {
            n.started_at
        };
        let done = TakeOver::alone(ctx, supervisor, n.node_id.clone(), epoch, Some(last_seen))
            .run()
            .await;
        if done > 0 {
            ctx.metrics.calls.orphans_adopted.inc();
            tracing::warn!(
                member = %n.node_id,
                epoch,
                calls = done,
                "calls in progress left to nobody: adopted"
            );
        }
    }
    swept.insert((n.node_id.clone(), n.epoch), now);
}

/// How long a takeover keeps asking a store that fails: a failed call delays it, never
/// cancels it. One failed read (a ScyllaDB timeout in the trouble that silenced the
/// dead member) ended the job: its answered calls were never claimed, its others never
/// logged, and their rows stayed active (a review).
const STORE_PATIENCE: Duration = Duration::from_secs(600);

/// `call` (a read, or marking a member down) on the blocking pool until it succeeds
/// (0.5 s doubling to 5 s between tries),
/// at most [`STORE_PATIENCE`]; None, logged as an error naming `what`, after that.
async fn until_done<T: Send + 'static>(
    what: &'static str,
    call: impl Fn() -> tsunagu_store::Result<T> + Send + Sync + 'static,
) -> Option<T> {
    until_done_within(what, STORE_PATIENCE, call).await
}

/// [`until_done`] for at most `patience`.
async fn until_done_within<T: Send + 'static>(
    what: &'static str,
    patience: Duration,
    call: impl Fn() -> tsunagu_store::Result<T> + Send + Sync + 'static,
) -> Option<T> {
    let call = Arc::new(call);
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(500);
    loop {
        let attempt = call.clone();
        match tokio::task::spawn_blocking(move || attempt()).await {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(%e, what, "store call failed; trying again");
            }
            Ok(Err(e)) => {
                tracing::error!(%e, what, ?patience, "store call failed for its whole patience; giving up");
                return None;
            }
            Err(e) => {
                tracing::error!(%e, what, "store call task failed");
                return None;
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The calls named in a hand-over that `from` (incarnation `epoch`) still owns in the
/// store, answered with a checkpoint: each is claimed and resumed here; the ids claimed.
async fn take_handed_over(
    ctx: &Arc<NodeContext>,
    supervisor: &ActorRef<SupervisorMsg>,
    from: &str,
    epoch: u64,
    calls: Vec<String>,
) -> Vec<String> {
    let wanted: std::collections::HashSet<String> = calls.into_iter().collect();
    let (s, owner) = (ctx.store.clone(), from.to_string());
    let found = tokio::task::spawn_blocking(move || s.active_calls_of(&owner)).await;
    let Ok(Ok(active)) = found else {
        tracing::warn!(from, "cannot read the calls a draining member hands over");
        return Vec::new();
    };
    let mut claimed = Vec::new();
    for call in active {
        if !wanted.contains(&call.record.call_id) || call.record.owner_epoch != epoch {
            continue;
        }
        let cp = call.checkpoint.as_deref().and_then(Checkpoint::decode);
        if let Some((nodes, State::Answered(answered))) = cp.map(|c| (c.nodes, c.state)) {
            let id = call.record.call_id.clone();
            if claim_and_resume(ctx, supervisor, from, call.record, answered, nodes, None).await {
                claimed.push(id);
            }
        }
    }
    claimed
}

/// Claims one answered call from `from` (compare-and-set on its owner and epoch) and
/// resumes it here; whether this node won it.
async fn claim_and_resume(
    ctx: &Arc<NodeContext>,
    supervisor: &ActorRef<SupervisorMsg>,
    from: &str,
    record: tsunagu_store::CallRecord,
    answered: Box<Answered>,
    nodes: Vec<String>,
    quiet_since_ms: Option<i64>,
) -> bool {
    let from = (from.to_string(), record.owner_epoch);
    let to = (ctx.node_id.clone(), ctx.epoch.load(Ordering::Relaxed));
    let (s, id, number) = (
        ctx.store.clone(),
        record.call_id.clone(),
        record.tracking_number.clone(),
    );
    // A store that fails is tried again, as the other reads of a takeover are: the
    // claim had one try, and one lock timeout left the call with the dead member,
    // its parties in silence and no record written (a review).
    let tried = AtomicBool::new(false);
    // 20 s, not the takeover's 10 minutes: the calls of a round are claimed one after
    // another, and the others' parties wait in silence behind this one.
    let claimed = until_done_within("claiming a call", CLAIM_PATIENCE, move || {
        let again = tried.swap(true, Ordering::Relaxed);
        let won = try_claim(&*s, &id, (&from.0, from.1), (&to.0, to.1), again)?;
        // Once won, the call is this node's to run: a number that cannot be read now
        // must not make it "lost to another node" (nobody would run it); it runs with
        // the record's own (below), as for a number deleted meanwhile.
        let number = s.get_number(&number).ok().flatten();
        Ok((won, number))
    })
    .await;
    let (Some((Some(won), number)), r) = (claimed, &record) else {
        return false; // another node won it, or the call ended meanwhile
    };
    let number = number_for_record(number, r);
    let args = crate::call::takeover::ResumeArgs {
        ctx: ctx.clone(),
        record: won.record,
        answered,
        nodes,
        number: Arc::new(number),
        logged: Arc::new(AtomicBool::new(false)),
        quiet_since_ms,
    };
    supervisor
        .cast(SupervisorMsg::Resume(Box::new(args)))
        .is_ok()
}

/// How long a claim keeps trying a store that fails.
const CLAIM_PATIENCE: Duration = Duration::from_secs(20);

/// One try at claiming call `id` from incarnation `from` for `to` (see
/// [`tsunagu_store::Store::claim_call`]). `again`: a try before failed, and may have
/// gone through all the same (a write whose answer was lost, a timeout of a write that
/// landed), so a call `to` already owns is won, not "another node's".
fn try_claim(
    s: &dyn tsunagu_store::Store,
    id: &str,
    from: (&str, u64),
    to: (&str, u64),
    again: bool,
) -> tsunagu_store::Result<Option<tsunagu_store::ActiveCall>> {
    match s.claim_call(id, from, to)? {
        None if again => Ok(s
            .active_calls_of(to.0)?
            .into_iter()
            .find(|a| a.record.call_id == id && a.record.owner_epoch == to.1)),
        won => Ok(won),
    }
}

/// How long a draining node keeps trying to read the calls it hands over.
const HAND_OVER_READ: Duration = Duration::from_secs(5);

/// How long a draining node waits for its peers to claim what it handed over before it
/// asks again (once).
const HAND_OVER_AGAIN: Duration = Duration::from_secs(2);

/// The drain of a clustered node: every answered call is handed to a peer at once
/// (rendezvous share among the peers up), which claims it and re-INVITEs its parties,
/// so the drain takes seconds, not the longest call. Calls not answered finish here
/// (or are ended at the drain deadline). Without a peer up, nothing is handed over.
pub async fn hand_over_all(
    ctx: &Arc<NodeContext>,
    cluster: &Cluster,
    supervisor: &ActorRef<SupervisorMsg>,
) {
    // Peers handed calls that claimed none of them (draining too, or going down): the
    // next round places the calls among the others. A second round put them on the
    // same peer again, and two nodes drained together hung up the calls each had
    // placed on the other at their deadlines (a review).
    let mut declined: std::collections::BTreeSet<String> = Default::default();
    for round in 0..2 {
        let up = cluster.peers_up();
        let others: Vec<String> = up
            .iter()
            .filter(|p| !declined.contains(*p))
            .cloned()
            .collect();
        // If every peer declined, all are asked again (one may have failed to read the
        // store once: with two nodes, leaving it out ended every call at the deadline).
        let peers = if others.is_empty() { up } else { others };
        if peers.is_empty() {
            tracing::warn!("draining without a peer up: calls finish here");
            return;
        }
        // Checkpoints still waiting in the call-log writer go to the store first: the
        // peers read them there.
        let log = ctx.log.clone();
        let _ = tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(5))).await;
        let (s, me, epoch) = (
            ctx.store.clone(),
            ctx.node_id.clone(),
            ctx.epoch.load(Ordering::Relaxed),
        );
        // Tried again for a few seconds, within the drain: one failed read gave the
        // hand-over up, and every answered call was hung up at the deadline (a review).
        let read = until_done_within(
            "reading the calls to hand over",
            HAND_OVER_READ,
            move || s.active_calls_of(&me),
        );
        let Some(active) = read.await else {
            tracing::warn!("cannot read this node's calls to hand them over");
            return;
        };
        let mut by_peer: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for call in active {
            let answered = call.record.answered_at.is_some()
                && call.record.owner_epoch == epoch
                && call
                    .checkpoint
                    .as_deref()
                    .and_then(Checkpoint::decode)
                    .is_some_and(|c| matches!(c.state, State::Answered(_)));
            if !answered {
                continue;
            }
            if let Some(peer) =
                placement::owner(&call.record.call_id, peers.iter().map(String::as_str))
            {
                by_peer
                    .entry(peer.to_string())
                    .or_default()
                    .push(call.record.call_id);
            }
        }
        let handed: usize = by_peer.values().map(Vec::len).sum();
        if handed == 0 {
            return;
        }
        let before = ctx.active_calls();
        let mut named = Vec::with_capacity(handed);
        for (peer, calls) in &by_peer {
            tracing::info!(%peer, calls = calls.len(), round, "handing calls over");
            named.extend(calls.iter().cloned());
            cluster.hand_over(peer, calls.clone());
        }
        // The calls the peers claim end here: wait for them (or ask again).
        let deadline = tokio::time::Instant::now() + HAND_OVER_AGAIN;
        while ctx.active_calls() + handed > before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(still_here) = drop_moved(ctx, supervisor, named).await {
            for (peer, calls) in by_peer {
                if calls.iter().all(|c| still_here.contains(c)) {
                    tracing::warn!(%peer, "a peer claimed none of the calls handed to it: placed among the others");
                    declined.insert(peer);
                }
            }
        }
    }
}

/// Of the calls just handed over, those the store gives to another node now but that
/// still run here (the peer's `HandedOver` lost): dropped as if it had come. Without
/// this such a call ran on both nodes, and this one hung up both parties at its drain
/// deadline. The calls still this node's, if the store could be read.
async fn drop_moved(
    ctx: &Arc<NodeContext>,
    supervisor: &ActorRef<SupervisorMsg>,
    named: Vec<String>,
) -> Option<std::collections::HashSet<String>> {
    let (store, me) = (ctx.store.clone(), ctx.node_id.clone());
    let epoch = ctx.epoch.load(Ordering::Relaxed);
    let checked =
        tokio::task::spawn_blocking(move || taken_from_here(&*store, &me, epoch, named)).await;
    let Ok(Ok((gone, here))) = checked else {
        return None; // unreadable: the peers' HandedOver frames decide
    };
    // Those already dropped on the peer's word are no longer running: a no-op for them.
    if !gone.is_empty() {
        let _ = supervisor.cast(SupervisorMsg::HandedOff(gone));
    }
    Some(here.into_iter().collect())
}

/// The node's lease as the gate of what leaves it (SIP messages, RTP): open while the
/// node is not clustered, has not joined yet, or holds its lease. The cluster starts
/// after the SIP endpoint and the media ports, so the lease is filled in once joined.
#[derive(Clone, Default)]
pub struct LeaseGate(Arc<OnceLock<Arc<tsunagu_cluster::Lease>>>);

impl LeaseGate {
    pub fn set(&self, lease: Arc<tsunagu_cluster::Lease>) {
        let _ = self.0.set(lease);
    }

    pub fn open(&self) -> bool {
        self.0
            .get()
            .is_none_or(|l| l.valid_at(std::time::Instant::now()))
    }

    /// A gate closure counting what it withholds on `path`.
    pub fn closure(
        &self,
        withheld: prometheus_client::metrics::counter::Counter,
    ) -> Arc<dyn Fn() -> bool + Send + Sync> {
        let gate = self.clone();
        Arc::new(move || {
            let open = gate.open();
            if !open {
                withheld.inc();
            }
            open
        })
    }
}

/// What a survivor does for the calls of a member declared down: its share of the
/// answered ones (those whose rendezvous owner among the survivors it is) it claims and
/// resumes; the finaliser marks the member down in the store, cancels the attempts
/// still ringing, logs the unanswered calls once as lost, and after a grace period
/// claims whatever answered call no one took (views of the survivors may differ).
struct TakeOver {
    ctx: Arc<NodeContext>,
    supervisor: ActorRef<SupervisorMsg>,
    dead: String,
    dead_epoch: u64,
    finaliser: bool,
    survivors: Vec<String>,
    /// The dead incarnation's last sign of life when known better than the store's
    /// row for its node id (which a restarted node's new run keeps refreshing).
    last_seen: Option<i64>,
}

/// How long the finaliser leaves the other survivors to claim their share.
const CLAIM_GRACE: Duration = Duration::from_secs(2);

impl TakeOver {
    /// The job of a finaliser that is the only survivor, taking `dead`'s incarnation
    /// `dead_epoch` whole (a previous run of this node at its start, a node the orphan
    /// sweep found left to nobody).
    fn alone(
        ctx: &Arc<NodeContext>,
        supervisor: &ActorRef<SupervisorMsg>,
        dead: String,
        dead_epoch: u64,
        last_seen: Option<i64>,
    ) -> TakeOver {
        TakeOver {
            ctx: ctx.clone(),
            supervisor: supervisor.clone(),
            dead,
            dead_epoch,
            finaliser: true,
            survivors: vec![ctx.node_id.clone()],
            last_seen,
        }
    }

    /// Runs the job; how many calls it claimed or logged.
    async fn run(self) -> u64 {
        let store = self.ctx.store.clone();
        if self.finaliser {
            let (s, name, epoch) = (store.clone(), self.dead.clone(), self.dead_epoch);
            let ctx = self.ctx.clone();
            // Marked down before its calls are read: the store then refuses the rows a
            // frozen member that wakes up would still write. Only while this node is in
            // good standing itself (see `Store::mark_node_down_by`), as the incarnation
            // it is at each try (one that rejoined meanwhile was refused for ten
            // minutes: a review).
            let marked = until_done("marking a member down", move || {
                let me = (ctx.node_id.as_str(), ctx.epoch.load(Ordering::Relaxed));
                let marked = s.mark_node_down_by(&name, epoch, me)?;
                // Refused for want of standing: this node is the one declared down (the
                // other side of a cut got there first). Its rounds would log the
                // other side's live calls lost and cancel their ringing callees.
                let standing = marked || tsunagu_store::in_good_standing(&s.nodes()?, me);
                Ok((marked, standing))
            })
            .await;
            match marked {
                Some((true, _)) => {
                    tracing::warn!(member = %self.dead, epoch, "member marked down in the store");
                }
                Some((false, false)) => {
                    tracing::warn!(member = %self.dead, epoch, "not marking a member down: this node is not in good standing in the store (declared down itself)");
                    return 0;
                }
                _ => {}
            }
        }
        let mut done = self.round(false).await;
        if self.finaliser {
            tokio::time::sleep(CLAIM_GRACE).await;
            done += self.round(true).await;
        }
        done
    }

    /// One pass over the dead member's calls in progress; `all`: this node claims every
    /// answered call still there (the finaliser, after the grace period). How many
    /// calls it claimed or logged.
    async fn round(&self, all: bool) -> u64 {
        let (s, dead) = (self.ctx.store.clone(), self.dead.clone());
        let found = until_done("the calls of a member declared down", move || {
            let calls = s.active_calls_of(&dead)?;
            let last_seen = s
                .nodes()?
                .into_iter()
                .find(|n| n.node_id == dead)
                .map(|n| n.last_seen);
            Ok((calls, last_seen))
        })
        .await;
        let Some((calls, stored)) = found else {
            return 0; // logged: the member's calls stay for its next start
        };
        let last_seen = self.last_seen.or(stored);
        let me = self.ctx.node_id.clone();
        let (mut lost, mut claimed) = (0, 0);
        for call in calls {
            if call.record.owner_epoch != self.dead_epoch {
                // A newer incarnation of the same node id (restarted since) runs it.
                continue;
            }
            let cp = call.checkpoint.as_deref().and_then(Checkpoint::decode);
            match cp.map(|c| (c.nodes, c.state)) {
                Some((nodes, State::Answered(answered))) if call.record.answered_at.is_some() => {
                    let mine = claims_here(
                        all,
                        self.ctx.draining.load(Ordering::Relaxed),
                        placement::owner(
                            &call.record.call_id,
                            self.survivors.iter().map(String::as_str),
                        ) == Some(me.as_str()),
                    );
                    if mine && self.claim(call.record, answered, nodes, last_seen).await {
                        claimed += 1;
                    }
                }
                other if self.finaliser => {
                    if let Some((_, State::Ringing(r))) = &other {
                        // The callee still rings for a caller that is gone.
                        let spec = crate::call::takeover::cancel_of(r);
                        self.ctx.endpoint.request(spec, r.hop.into());
                    }
                    lost += 1;
                    self.log_lost(call.record, last_seen).await;
                }
                _ => {}
            }
        }
        if lost > 0 {
            self.ctx.metrics.calls.calls_recovered.inc_by(lost);
            tracing::warn!(member = %self.dead, calls = lost, "unanswered calls of a member declared down logged as failed (node_lost)");
        }
        lost + claimed
    }

    /// Claims one answered call and resumes it here (`last_seen`: when the member
    /// was last heard); whether this node won it.
    async fn claim(
        &self,
        record: tsunagu_store::CallRecord,
        answered: Box<Answered>,
        nodes: Vec<String>,
        last_seen: Option<i64>,
    ) -> bool {
        let id = record.call_id.clone();
        let won = claim_and_resume(
            &self.ctx,
            &self.supervisor,
            &self.dead,
            record,
            answered,
            nodes,
            last_seen,
        )
        .await;
        if won {
            tracing::warn!(call_id = %id, from = %self.dead, "claimed a call of a member declared down");
        }
        won
    }

    async fn log_lost(&self, record: tsunagu_store::CallRecord, last_seen: Option<i64>) {
        let (s, log) = (self.ctx.store.clone(), self.ctx.log.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let current = s.get_number(&record.tracking_number).ok().flatten();
            let number = number_for_record(current, &record);
            log.write(LogEntry {
                record: lost_call(record, last_seen),
                number: Arc::new(number),
                caller_verified: false,
                ivr_offered: false,
            });
        })
        .await;
    }
}

/// Whether a survivor claims an answered call of a member declared down in its round
/// (`all`: the finaliser's second round, or a sweep's), given whether it is draining
/// and whether it is the call's owner among the survivors. A draining node claims
/// nothing (the call would be ended at its own drain deadline): its share goes to the
/// finaliser's second round, or, where the finaliser is draining, to the orphan sweep
/// of a member that is not (see [`sweep_orphans`]). The finaliser claimed what was
/// left whatever it was doing, and a draining one hung those calls up at its deadline
/// (a review).
fn claims_here(all: bool, draining: bool, owner: bool) -> bool {
    !draining && (all || owner)
}

/// Drops every call silently, registers a new incarnation and rejoins the cluster;
/// false instead of registering when another process took over this node id (see
/// [`superseded`]): then the node stops (`NodeContext::superseded`).
async fn rejoin(
    ctx: Arc<NodeContext>,
    supervisor: ActorRef<SupervisorMsg>,
    info: NodeInfo,
    provisioning: Provisioning,
    cluster: Cluster,
) -> bool {
    // Claims this incarnation made that land from now on are not resumed (see
    // `supervisor::resumable`): its calls are dropped, and its finaliser takes them.
    ctx.dropped_epoch
        .fetch_max(ctx.epoch.load(Ordering::Relaxed), Ordering::SeqCst);
    let dropped = supervisor
        .call(SupervisorMsg::VanishAll, Some(Duration::from_secs(5)))
        .await;
    if let Ok(ractor::rpc::CallResult::Success(n)) = dropped {
        tracing::warn!(calls = n, "calls of the stale incarnation dropped");
    }
    // The calls' tasks end at their next message; wait (briefly) so that none acts
    // under the new incarnation.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while ctx.active_calls() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What those calls sent while the lease was void was withheld, but their client
    // transactions would send it again once the new incarnation holds its lease (a
    // BYE to a party another node now serves): forgotten.
    ctx.endpoint.send(tsunagu_sip::Command::Forget);
    let store = ctx.store.clone();
    let mine = ctx.epoch.load(Ordering::Relaxed);
    // Read, decided, and registered only while the registry still lists what was
    // read (compare-and-set): a replacement registering in between is seen on the
    // next read, and this process stops.
    let registered = loop {
        let s = store.clone();
        let rows = match tokio::task::spawn_blocking(move || s.nodes()).await {
            Ok(Ok(rows)) => rows,
            other => {
                tracing::warn!(?other, "cannot read the cluster's registry yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Some(newer) = superseded(&rows, &info.node_id, mine) {
            tracing::error!(
                node = %info.node_id,
                epoch = mine,
                newer,
                "another process runs as this node (a newer incarnation of its id): this one stops"
            );
            ctx.superseded.notify_one();
            return false;
        }
        let listed = rows
            .iter()
            .find(|r| r.node_id == info.node_id)
            .map(|r| r.epoch);
        let (s, i) = (store.clone(), info.clone());
        let now = crate::clock::now_ms();
        let registered = tokio::task::spawn_blocking(move || match listed {
            Some(after) => s.register_node_after(&i, now, after),
            None => s.register_node(&i, now).map(Some), // no row to compare with
        })
        .await;
        match registered {
            Ok(Ok(Some(r))) => break r,
            Ok(Ok(None)) => {
                tracing::warn!(
                    "another incarnation of this node registered as it rejoined; reading again"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => {
                tracing::warn!(?other, "cannot register a new incarnation yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let (epoch, _) = registered;
    ctx.epoch.store(epoch, Ordering::Relaxed);
    cluster.rejoin(epoch).await;
    let p = provisioning.clone();
    let _ = tokio::task::spawn_blocking(move || p.catch_up()).await;
    tracing::warn!(epoch, "rejoined the cluster");
    true
}

/// The newer incarnation of node `me` the registry `rows` lists than `epoch`, the
/// last this process registered: another process registered it (this one registers
/// only at its start and in [`rejoin`], one rejoin at a time), so two processes run
/// with one node id — a paused VM resumed beside its replacement, or a copy of a
/// configuration. The older one stops rather than rejoin: rejoining, it registered a
/// newer incarnation still, which had the other drop its calls and rejoin in turn,
/// and so on, each round dropping calls (a review). None: this process's
/// incarnation is the newest (declared down, or retired by an operator: it rejoins),
/// or the newer one is over (it left, was declared down or retired: this process
/// rejoins, and the id is served again; stopping left it served by nobody, a review).
fn superseded(rows: &[tsunagu_store::NodeRow], me: &str, epoch: u64) -> Option<u64> {
    rows.iter()
        .find(|r| r.node_id == me && r.epoch > epoch && !r.down && !r.retired)
        .map(|r| r.epoch)
}

/// This node leaves the cluster for good (its drain is over, its calls logged): it
/// stops acting, marks this incarnation down in the store, then tells its peers, so
/// they count it out at once (the majority rule would otherwise count it alive for its
/// sign of life's window: a two-node cluster's survivor would hold no lease right
/// after taking every call over).
pub async fn leave(ctx: &Arc<NodeContext>, cluster: &Cluster) {
    cluster.leaving();
    let (store, me) = (ctx.store.clone(), ctx.node_id.clone());
    let epoch = ctx.epoch.load(Ordering::Relaxed);
    match tokio::task::spawn_blocking(move || store.mark_node_down(&me, epoch)).await {
        Ok(Ok(_)) => tracing::info!(epoch, "marked down in the store: leaving the cluster"),
        Ok(Err(e)) => tracing::warn!(%e, "could not mark this node down in the store"),
        Err(e) => tracing::warn!(%e, "marking this node down failed"),
    }
    cluster.announce_leave();
    // The notices go out on the sessions' tasks: a moment for them to leave before
    // the runtime stops (a peer that misses one counts this node out from the store
    // instead, within a second).
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The cluster's shared secret (`cluster.secret` or `cluster.secret_file`), if the node
/// is in a cluster.
pub fn secret(config: &Config) -> Result<Option<String>, String> {
    let c = &config.cluster;
    if c.listen.is_none() {
        return Ok(None);
    }
    match (&c.secret, &c.secret_file) {
        (Some(s), _) => Ok(Some(s.clone())),
        (None, Some(f)) => {
            let s = std::fs::read_to_string(f)
                .map_err(|e| format!("cluster.secret_file {}: {e}", f.display()))?;
            let s = s.trim().to_string();
            // Held to the rule of `cluster.secret`: an empty file left only mutual TLS,
            // and the internal API's token derived from it was anyone's to compute (a
            // review).
            if let Some(e) = tsunagu_config::cluster_secret_error(&s) {
                return Err(format!(
                    "cluster.secret_file {}: the secret {e}",
                    f.display()
                ));
            }
            Ok(Some(s))
        }
        (None, None) => Ok(None),
    }
}

/// The bearer token nodes present to each other's internal API endpoints (fetching a
/// recording another node holds): derived from the secret, so the secret itself never
/// travels in a request.
pub fn internal_token(secret: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("tsunagu-internal-api:{secret}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Joins the cluster configured in `[cluster]`, if any.
pub async fn join(
    config: &Config,
    host: Arc<NodeHost>,
    metrics: tsunagu_cluster::ClusterMetrics,
) -> Result<Option<Cluster>, String> {
    let c = &config.cluster;
    let Some(listen) = c.listen else {
        return Ok(None);
    };
    let tls = c
        .tls
        .as_ref()
        .ok_or("cluster.tls: required with cluster.listen")?;
    let (acceptor, connector) =
        crate::tls::cluster(tls).map_err(|e| format!("cluster.tls: {e}"))?;
    let secret = secret(config)?.ok_or("cluster.secret: required with cluster.listen")?;
    let epoch = host.ctx.epoch.load(Ordering::Relaxed);
    let settings = tsunagu_cluster::Settings {
        net: tsunagu_cluster::net::NetConfig {
            name: config.node.id.clone(),
            listen,
            secret,
            acceptor,
            connector,
        },
        epoch,
        seeds: c
            .seeds
            .iter()
            .copied()
            .filter(|s: &SocketAddr| *s != listen)
            .collect(),
        timing: tsunagu_cluster::membership::Timing::default(),
    };
    let lines = host.ctx.lines.service();
    let cluster = Cluster::start(settings, host.clone(), lines, metrics)
        .await
        .map_err(|e| e.to_string())?;
    let _ = host.cluster.set(cluster.clone());
    host.ctx.lines.attach(cluster.clone());
    host.provisioning.attach(cluster.clone());
    if cluster.needs_rejoin() {
        // Declared stale while starting (its `stale` call found no cluster yet):
        // another process registered this node's id meanwhile, or the majority
        // declared this incarnation down. Acted on now, not left stale for good.
        host.stale();
    }
    Ok(Some(cluster))
}

#[cfg(test)]
mod tests {
    /// A newer incarnation of this node id in the registry than the last this process
    /// registered is another process's: this one stops. Its own (declared down,
    /// retired), or another node's, is not.
    #[test]
    fn another_process_with_this_node_id_supersedes_this_one() {
        let row = |id: &str, epoch: u64, down: bool, retired: bool| tsunagu_store::NodeRow {
            node_id: id.into(),
            epoch,
            started_at: 0,
            last_seen: 0,
            cluster_addr: None,
            api_addr: None,
            down,
            retired,
        };
        // (registry, this process's epoch) -> the newer incarnation
        let cases = [
            (vec![row("me", 4, true, false)], 4, None), // declared down: rejoins
            (vec![row("me", 4, true, true)], 4, None),  // retired: rejoins
            (vec![row("me", 5, false, false)], 4, Some(5)),
            (vec![row("me", 5, true, false)], 4, None), // it left, or was declared down
            (vec![row("me", 5, true, true)], 4, None),  // retired
            (
                vec![row("other", 9, false, false), row("me", 4, true, false)],
                4,
                None,
            ),
            (vec![row("other", 9, false, false)], 4, None), // unlisted: rejoins
        ];
        for (rows, epoch, want) in cases {
            assert_eq!(superseded(&rows, "me", epoch), want, "{rows:?}");
        }
    }

    /// Who claims an answered call of a member declared down.
    #[test]
    fn a_draining_node_claims_nothing() {
        // (all, draining, owner) -> claims
        let cases = [
            ((false, false, true), true),
            ((false, false, false), false),
            ((true, false, false), true),
            ((true, true, false), false),
            ((false, true, true), false),
            ((true, true, true), false),
        ];
        for ((all, draining, owner), want) in cases {
            assert_eq!(
                claims_here(all, draining, owner),
                want,
                "all={all} draining={draining} owner={owner}"
            );
        }
    }

    /// Which registered nodes the orphan sweep looks at.
    #[test]
    fn orphans_are_out_of_view_and_still() {
        let row = |id: &str, retired: bool| tsunagu_store::NodeRow {
            node_id: id.into(),
            epoch: 3,
            started_at: 0,
            last_seen: 0,
            cluster_addr: None,
            api_addr: None,
            down: true,
            retired,
        };
        let up = vec!["up".to_string()];
        let s = Duration::from_secs;
        // (node, retired, still for, rank) -> swept
        let cases = [
            (("me", false), s(60), 0, false),   // this node: never
            (("up", false), s(60), 0, false),   // in the view: its members' care
            (("dead", false), s(11), 0, true),  // still past 10 s: yes
            (("dead", false), s(9), 0, false),  // its finaliser's still
            (("dead", false), s(11), 1, false), // the second rank waits 20 s
            (("dead", false), s(21), 1, true),
            (("dead", true), s(600), 0, true), // retired by an operator too
            (("dead", false), s(600), usize::MAX, false),
        ];
        for ((id, retired), still, rank, want) in cases {
            assert_eq!(
                is_orphaned(&row(id, retired), still, "me", &up, rank),
                want,
                "{id} retired={retired} still={still:?} rank={rank}"
            );
        }
    }

    /// A store read that fails is tried again (0.5 s, then 1 s later) until it
    /// succeeds: a takeover is delayed by a failing store, not cancelled.
    #[tokio::test]
    async fn a_failed_store_read_is_tried_again() {
        let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = tries.clone();
        let read = move || {
            if counted.fetch_add(1, Ordering::Relaxed) < 2 {
                Err(tsunagu_store::StoreError::Unavailable("down".into()))
            } else {
                Ok(7)
            }
        };
        assert_eq!(super::until_done("a test read", read).await, Some(7));
        assert_eq!(tries.load(Ordering::Relaxed), 3);
    }

    /// A bounded retry (a drain's read of the calls it hands over) tries for its
    /// patience, 2 s here (0.5 and 1 s apart: three tries), then gives up.
    #[tokio::test]
    async fn a_bounded_retry_gives_up_after_its_patience() {
        let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = tries.clone();
        let read = move || {
            counted.fetch_add(1, Ordering::Relaxed);
            Err::<u32, _>(tsunagu_store::StoreError::Unavailable("down".into()))
        };
        let got = super::until_done_within("a test read", Duration::from_secs(2), read).await;
        assert_eq!(got, None);
        assert_eq!(tries.load(Ordering::Relaxed), 3);
    }

    /// A claim tried again after a failure finds a call its first try moved all the
    /// same (its answer lost) and runs it: without a try before, a call owned by the
    /// claimer already is not its to resume; another incarnation's is never taken.
    #[test]
    fn a_claim_tried_again_finds_what_its_first_try_moved() {
        use tsunagu_store::{conformance::sample_active_call, SqliteStore, Store};
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        s.upsert_active_calls(&[sample_active_call("op", "call-1", "dead", 1)])
            .unwrap();
        let first = super::try_claim(&s, "call-1", ("dead", 1), ("me", 2), false).unwrap();
        assert!(
            first.is_some(),
            "the first try moved it (its answer lost, say)"
        );
        let again = super::try_claim(&s, "call-1", ("dead", 1), ("me", 2), true).unwrap();
        assert_eq!(again.map(|a| a.record.owner_epoch), Some(2), "won");
        let fresh = super::try_claim(&s, "call-1", ("dead", 1), ("me", 2), false).unwrap();
        assert!(fresh.is_none(), "not after a first try that did not fail");
        let stale = super::try_claim(&s, "call-1", ("dead", 1), ("me", 3), true).unwrap();
        assert!(
            stale.is_none(),
            "another incarnation's call is not this one's"
        );
    }

    /// A cluster secret read from a file is held to the rule of a configured one: a
    /// short one is refused at start (the admin token's test is the server's).
    #[test]
    fn secrets_in_files_are_held_to_the_same_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let base = || {
            let mut c = tsunagu_config::Config::from_toml("").unwrap();
            c.node.data_dir = dir.path().to_path_buf();
            c
        };
        let cluster = |secret: &str| {
            let mut c = base();
            c.cluster.listen = Some("127.0.0.1:0".parse().unwrap());
            c.cluster.secret_file = Some(file("secret", secret).into());
            c
        };
        assert!(super::secret(&cluster("\n")).is_err(), "empty");
        assert!(super::secret(&cluster("fifteen chars!!")).is_err());
        assert_eq!(
            super::secret(&cluster("sixteen chars!!!\n"))
                .unwrap()
                .as_deref(),
            Some("sixteen chars!!!")
        );
    }
    use super::*;
    use tsunagu_store::conformance::sample_active_call;
    use tsunagu_store::SqliteStore;

    /// A sign of life ages by this node's clock, never negatively, never overflowing.
    #[test]
    fn signs_of_life_age_by_this_nodes_clock() {
        assert_eq!(sign_age(1_000, 3_500), Duration::from_millis(2_500));
        assert_eq!(sign_age(1_000, 1_000), Duration::ZERO);
        assert_eq!(sign_age(5_000, 1_000), Duration::ZERO, "ahead of our clock");
        assert_eq!(
            sign_age(i64::MIN, i64::MAX),
            Duration::from_millis(i64::MAX as u64)
        );
    }

    /// A member's `HandedOver` names a call it never claimed (still this incarnation's
    /// in the store) beside one it claimed, one that ended and one of this node's
    /// previous incarnation: only the one the store still gives to this incarnation is
    /// kept.
    #[test]
    fn only_calls_the_store_moved_are_dropped_on_a_peers_word() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let op = store.create_operator("handover").unwrap();
        let call = |id: &str, epoch: u64| sample_active_call(&op.id, id, "n1", epoch);
        store
            .upsert_active_calls(&[call("kept", 2), call("claimed", 2), call("older", 1)])
            .unwrap();
        store
            .claim_call("claimed", ("n1", 2), ("n2", 1))
            .unwrap()
            .expect("n2's claim wins");
        let named = ["kept", "claimed", "ended", "older"]
            .map(String::from)
            .to_vec();
        let (gone, kept) = taken_from_here(&store, "n1", 2, named).unwrap();
        assert_eq!(gone, ["claimed", "ended", "older"]);
        assert_eq!(kept, ["kept"]);
    }
}
