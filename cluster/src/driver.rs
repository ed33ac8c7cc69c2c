//! The running cluster on one node: the thin async side of [`crate::membership`] and
//! [`crate::lines`]. One task sends heartbeats (with the lines given back since the
//! last one), declares silent peers down, dials the members the store lists, and hands
//! every frame from a peer to the state machines; what they want sent goes out through
//! [`crate::net`], what concerns the node goes to its [`Host`].
//!
//! Fencing: messages of an incarnation this node saw declared down are refused (the
//! sender is told it is stale); this node itself acts only while it holds its lease
//! ([`Cluster::lease_valid`]): when the lease lapses (a freeze, a cut link) its line
//! tables are suspended until it either hears from its peers again (and rebuilds them)
//! or learns it was declared down ([`Host::stale`]: from a peer, or from the store's
//! registry, which a node cut off from its peers still reads) and rejoins as a new
//! incarnation. Who may declare a silent peer down at all is the majority's call
//! ([`crate::membership`]), fed with the store's signs of life by each registry read.

use crate::lines::{Answer, LineMsg, LineService, Output};
use crate::membership::{Event, Membership, State, Timing, Verdict};
use crate::metrics::ClusterMetrics;
use crate::net::{Net, NetConfig, NetError};
use crate::protocol::{Frame, Msg};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A node the store knows, as the cluster needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub name: String,
    pub epoch: u64,
    pub cluster_addr: Option<SocketAddr>,
    /// Its sign of life in the store (a time by its own clock, strictly increasing
    /// from one write to the next).
    pub sign: i64,
    /// How long ago that was by this node's wall clock (read only for a first
    /// sight of an incarnation: see [`crate::signs`]).
    pub sign_age: Duration,
    /// An operator retired this incarnation (`tsunagu cluster forget`).
    pub retired: bool,
    /// This incarnation was declared down (by the cluster, recorded in the store).
    pub down: bool,
}

/// How often a node records its sign of life in the store (the node's call-log
/// writer uses this): a member whose last one is older than the detector's window
/// plus this is silent in the store too.
pub const STORE_SIGN_EVERY: Duration = Duration::from_secs(1);

/// How long a node that cannot read the members from the store waits before asking
/// again, at start and when it rejoins.
const ROSTER_RETRY: Duration = Duration::from_millis(500);
/// How often, at most, the session with one member heard only through others is
/// stopped and dialled afresh (see [`due_resets`]).
const RESET_EVERY: Duration = Duration::from_secs(5);
/// How long a member stays declared down and silent before a session still open to
/// it is stopped (see [`Cluster::reset_cut_sessions`]).
const DOWN_SESSION_RESET: Duration = Duration::from_secs(10);

/// What the cluster needs from the node it runs in.
pub trait Host: Send + Sync + 'static {
    /// Every node registered in the store (this one included or not), with the
    /// incarnations declared down and the retired ones marked; None when the store
    /// cannot be read now (which says nothing about the members: an empty list would
    /// read as "nobody is alive in the store").
    fn registered(&self) -> Option<Vec<Registered>>;
    /// `name` in incarnation `epoch` was declared down (by this node or another).
    /// `finaliser`: this node is the one of the survivors that cleans up after it (the
    /// owner of the key `node:<name>` among the live members, `survivors`).
    fn member_down(&self, name: &str, epoch: u64, finaliser: bool, survivors: &[String]);
    fn member_up(&self, name: &str, epoch: u64);
    /// Provisioning changed in the store, up to change `seq` at least.
    fn changed(&self, seq: i64);
    /// This incarnation was declared down by the others: stop acting and rejoin
    /// ([`Cluster::rejoin`]) as a new incarnation.
    fn stale(&self);
    /// The owner answered a line request of one of this node's calls.
    fn line_answer(&self, key: &str, call: &str, answer: Answer);
    /// `from` (incarnation `epoch`, draining) asks this node to take these calls over;
    /// answer with [`Cluster::handed_over`] for those claimed.
    fn hand_over(&self, from: &str, epoch: u64, calls: Vec<String>);
    /// `from` took these calls of this node over: drop them silently.
    fn handed_over(&self, from: &str, calls: Vec<String>);
}

/// How a node joins its cluster.
pub struct Settings {
    pub net: NetConfig,
    pub epoch: u64,
    /// Addresses dialled at start besides the ones the store lists.
    pub seeds: Vec<SocketAddr>,
    pub timing: Timing,
}

/// A member as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberStatus {
    pub name: String,
    pub epoch: u64,
    pub state: &'static str,
    /// Seconds in that state.
    pub for_seconds: f64,
    pub rtt_ms: Option<f64>,
    pub connected: bool,
    /// Up by the word of other members only: not heard here within the detector's
    /// window, heard by a member this node hears (a cut link between the two).
    pub heard_through_others: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub name: String,
    pub epoch: u64,
    pub lease_valid: bool,
    /// This node's side of the cluster is a majority (see `membership`): false while
    /// the network to members the store shows alive is cut.
    pub majority: bool,
    pub lines_rebuilding: bool,
    /// Lines held and callers waiting in the tables this node owns.
    pub lines_held: usize,
    pub lines_waiting: usize,
    /// Of the lines held, those of calls of members that left, waiting for their
    /// takeover (see [`crate::lines::RESERVED_FOR`]).
    pub lines_reserved: usize,
    pub members: Vec<MemberStatus>,
}

/// The node's lease as one number that any thread may read without a lock (every RTP
/// batch and SIP message leaving the node does): this node may act until then.
#[derive(Debug)]
pub struct Lease {
    base: Instant,
    /// Milliseconds after `base`; u64::MAX without end, 0 when declared down.
    until_ms: std::sync::atomic::AtomicU64,
}

impl Lease {
    fn new() -> Lease {
        Lease {
            base: Instant::now(),
            until_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    /// Whether this node holds its lease at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        let at = now.saturating_duration_since(self.base).as_millis() as u64;
        at < self.until_ms.load(Ordering::Relaxed)
    }

    fn set(&self, until: Option<Instant>) {
        let ms = match until {
            None => u64::MAX,
            Some(t) => t.saturating_duration_since(self.base).as_millis() as u64,
        };
        // SeqCst (as `stale`'s writes and reads in `publish_lease`): the write must
        // not pass the check of `stale` that follows it.
        self.until_ms.store(ms, Ordering::SeqCst);
    }

    fn void(&self) {
        self.until_ms.store(0, Ordering::SeqCst);
    }
}

struct Shared {
    lease: Arc<Lease>,
    membership: Mutex<Membership>,
    lines: Arc<Mutex<LineService>>,
    net: Net,
    host: Arc<dyn Host>,
    metrics: ClusterMetrics,
    /// Declared down by the others: waiting for the node to rejoin.
    stale: AtomicBool,
    /// The lease lapsed: line tables suspended until peers are heard again.
    suspended: AtomicBool,
    /// This node's side was a majority at the last tick (for the log on a change).
    majority: AtomicBool,
    /// This node is leaving the cluster for good ([`Cluster::leaving`]): it never
    /// rejoins.
    leaving: AtomicBool,
    /// The configured seeds: dialled while no session is up, and their addresses are
    /// members' for the listener.
    seeds: Vec<SocketAddr>,
    /// Registry reads while no peer was heard and the store showed some alive.
    unheard_reads: std::sync::atomic::AtomicU64,
    /// The members' signs of life as read (their ages by this node's clock).
    signs: Mutex<crate::signs::SignWatch>,
    /// When the session with each member was last stopped for [`due_resets`].
    resets: Mutex<HashMap<String, Instant>>,
    /// The members with a session at the last tick, and what named it (see
    /// [`Cluster::reconcile_after_reconnects`]).
    sessions: Mutex<std::collections::BTreeMap<String, String>>,
}

/// This node's membership of the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster(Arc<Shared>);

impl Cluster {
    /// Joins: starts the transport and the driver task. `lines` is the node's line
    /// service (shared with its calls).
    pub async fn start(
        settings: Settings,
        host: Arc<dyn Host>,
        lines: Arc<Mutex<LineService>>,
        metrics: ClusterMetrics,
    ) -> Result<Cluster, NetError> {
        let name = settings.net.name.clone();
        let (net, rx) =
            Net::start(settings.net, settings.epoch, metrics.sessions_cut.clone()).await?;
        net.members()
            .set_listed(settings.seeds.iter().map(SocketAddr::ip));
        let membership = Membership::new(&name, settings.epoch, settings.timing);
        let cluster = Cluster(Arc::new(Shared {
            lease: Arc::new(Lease::new()),
            membership: Mutex::new(membership),
            lines,
            net,
            host,
            metrics,
            stale: AtomicBool::new(false),
            suspended: AtomicBool::new(false),
            majority: AtomicBool::new(true),
            leaving: AtomicBool::new(false),
            seeds: settings.seeds.clone(),
            unheard_reads: Default::default(),
            signs: Mutex::default(),
            resets: Mutex::default(),
            sessions: Mutex::default(),
        }));
        cluster.expect_registered().await;
        tokio::spawn(cluster.clone().run(rx));
        Ok(cluster)
    }

    fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.0.membership.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, LineService> {
        self.0.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> String {
        self.membership().name().to_string()
    }

    pub fn epoch(&self) -> u64 {
        self.membership().epoch()
    }

    /// This node leaves the cluster for good (its drain is over), first step: it acts
    /// on nothing more, and nothing it learns makes it rejoin (the store row it is
    /// about to mark down, a peer's Stale answer). Then the node marks itself down in
    /// the store and calls [`Cluster::announce_leave`].
    pub fn leaving(&self) {
        self.0.leaving.store(true, Ordering::Relaxed);
        self.0.stale.store(true, Ordering::SeqCst);
        self.publish_lease();
    }

    /// This node leaves the cluster for good, last step (after [`Cluster::leaving`] and
    /// the store's mark): it tells every peer it is down (a down notice about itself,
    /// taken from a member in good standing), so they count it out at once rather than
    /// after its silence.
    pub fn announce_leave(&self) {
        let (me, epoch) = {
            let m = self.membership();
            (m.name().to_string(), m.epoch())
        };
        for peer in self.peers_up() {
            self.send(
                &peer,
                vec![Msg::Down {
                    node: me.clone(),
                    epoch,
                }],
            );
        }
    }

    /// Declared down and not rejoined yet, and not leaving for good: a rejoin is due.
    pub fn needs_rejoin(&self) -> bool {
        self.0.stale.load(Ordering::Relaxed) && !self.0.leaving.load(Ordering::Relaxed)
    }

    /// Whether this node may act (admit calls, grant lines): it holds its lease and
    /// was not declared down. Read from the published lease (as every RTP batch and
    /// SIP message is), without the membership's lock: admission asks at every call.
    pub fn lease_valid(&self) -> bool {
        !self.0.stale.load(Ordering::Relaxed) && self.0.lease.valid_at(Instant::now())
    }

    /// The lease as a lock-free value, for the media relays and the SIP edge: nothing
    /// leaves the node while it does not hold its lease (a frozen node that wakes up
    /// after its calls were taken over sends no RTP and no BYE).
    pub fn lease(&self) -> Arc<Lease> {
        self.0.lease.clone()
    }

    /// Publishes the membership's lease to the lock-free copy. A node declared down
    /// (or leaving) between the check and the write voids the lease itself, and is
    /// seen here after the write: a lease set meanwhile is voided again, never left
    /// standing until the next tick.
    fn publish_lease(&self) {
        if !self.0.stale.load(Ordering::SeqCst) {
            let until = self.membership().lease_until(Instant::now());
            self.0.lease.set(until);
        }
        if self.0.stale.load(Ordering::SeqCst) {
            self.0.lease.void();
        }
    }

    /// Sends the messages for peers among `outputs` at once, in order, and returns the
    /// answers for this node's calls (for [`Cluster::dispatch`]). Called with the line
    /// service still locked: two threads that each drained it (the driver's, a call's)
    /// and sent after unlocking could put a release ahead of the snapshot it came
    /// after, and the owner, which takes a snapshot to cover what its sender did
    /// before, would count a line nobody holds. Frames to one peer keep their order
    /// over its session.
    pub fn send_in_order(&self, outputs: Vec<Output>) -> Vec<Output> {
        let mut local = Vec::new();
        for o in outputs {
            match o {
                Output::Send { to, msg } => self.send(&to, vec![Msg::Line(msg)]),
                answer => local.push(answer),
            }
        }
        local
    }

    /// Sends what the line service produced: frames to owners and holders, answers to
    /// this node's calls.
    pub fn dispatch(&self, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Send { to, msg } => self.send(&to, vec![Msg::Line(msg)]),
                Output::Local { key, call, answer } => self.0.host.line_answer(&key, &call, answer),
            }
        }
    }

    /// Sends `msgs` to member `to`, in the incarnation this node's view has of it.
    fn send(&self, to: &str, msgs: Vec<Msg>) {
        self.send_where(to, |m| m.member_epoch(to), msgs);
    }

    /// Sends `msgs` to `to` in incarnation `epoch` (None: whichever runs; see
    /// [`Net::send`]).
    fn send_to(&self, to: &str, to_epoch: Option<u64>, msgs: Vec<Msg>) {
        self.send_where(to, |_| to_epoch, msgs);
    }

    /// Sends `msgs` to `to` in the incarnation `target` picks from this node's view
    /// (read under the same lock as the sender's own name and incarnation).
    fn send_where(
        &self,
        to: &str,
        target: impl FnOnce(&Membership) -> Option<u64>,
        msgs: Vec<Msg>,
    ) {
        let (from, epoch, to_epoch) = {
            let m = self.membership();
            (m.name().to_string(), m.epoch(), target(&m))
        };
        let frame = Frame { from, epoch, msgs }.encode();
        self.0.metrics.frames_sent.inc();
        if !self.0.net.send(to, to_epoch, frame) {
            self.0.metrics.frames_unsent.inc();
        }
    }

    /// Peers up in this node's view (this node excluded).
    pub fn peers_up(&self) -> Vec<String> {
        let m = self.membership();
        m.up()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n != m.name())
            .collect()
    }

    /// Asks `to` to take `calls` over (a drain), in messages of at most
    /// [`crate::protocol::MAX_HANDOVER`].
    pub fn hand_over(&self, to: &str, calls: Vec<String>) {
        for chunk in calls.chunks(crate::protocol::MAX_HANDOVER) {
            self.send(
                to,
                vec![Msg::HandOver {
                    calls: chunk.to_vec(),
                }],
            );
        }
    }

    /// Tells `to` which of the calls it handed over this node claimed.
    pub fn handed_over(&self, to: &str, calls: Vec<String>) {
        for chunk in calls.chunks(crate::protocol::MAX_HANDOVER) {
            self.send(
                to,
                vec![Msg::HandedOver {
                    calls: chunk.to_vec(),
                }],
            );
        }
    }

    /// Tells every peer that provisioning changed (up to change `seq`).
    pub fn changed(&self, seq: i64) {
        for peer in self.0.net.peers() {
            // To whichever process runs under the name (its newest session): a
            // change is news to any incarnation, and one this view has not heard yet
            // must not miss it.
            self.send_to(&peer, None, vec![Msg::Changed { seq }]);
        }
    }

    /// The node rejoins as incarnation `epoch` after [`Host::stale`]: a new membership
    /// (seeded from the store) and line service; nothing of the old one is trusted.
    pub async fn rejoin(&self, epoch: u64) {
        let (name, timing) = {
            let m = self.membership();
            (m.name().to_string(), m.timing())
        };
        *self.membership() = Membership::rejoined(&name, epoch, timing, Instant::now());
        self.0.net.set_epoch(epoch);
        *self.lines() = LineService::new(&name);
        self.0.suspended.store(false, Ordering::Relaxed);
        // Still stale (granting nothing, taking no line messages) until the membership
        // knows the members the store lists: a new incarnation alone in its view would
        // own every key and grant against empty tables.
        self.expect_registered().await;
        if self.0.leaving.load(Ordering::Relaxed) {
            return; // leaving for good (it began meanwhile): stays stale
        }
        self.0.stale.store(false, Ordering::Relaxed);
        self.lines_to_view(LineService::view);
        self.publish_lease();
        tracing::warn!(epoch, "rejoined the cluster as a new incarnation");
    }

    /// Seeds the membership with the nodes the store lists: they count as up until
    /// heard from or silent for the detector's window, so a starting node never
    /// mistakes a partial view for the whole cluster (its line tables wait for them).
    /// Asked until the store answers: with no list (a read that failed taken as
    /// "nobody") a new incarnation would be alone in its view, a majority of one with
    /// a lease without end, owning every line key while cut off (review, 2026-12-06).
    async fn expect_registered(&self) {
        let mut tries = 0u32;
        let registered = loop {
            if let Some(read) = self.roster().await {
                break read;
            }
            if self.0.leaving.load(Ordering::Relaxed) {
                return;
            }
            if tries.is_multiple_of(20) {
                tracing::warn!(tries, "cannot read the cluster's members from the store yet; retrying (logged every 10 s)");
            }
            tries = tries.saturating_add(1);
            tokio::time::sleep(ROSTER_RETRY).await;
        };
        let now = Instant::now();
        self.know(&registered);
        self.note_signs(&registered);
        {
            let mut m = self.membership();
            for r in registered {
                if r.name != m.name() {
                    m.expect(&r.name, r.epoch, now);
                }
            }
        }
        self.after_events();
    }

    pub fn status(&self) -> Status {
        let now = Instant::now();
        let connected: BTreeSet<String> = self.0.net.peers().into_iter().collect();
        // The line service first, released before the membership is locked: threads
        // holding the line service lock the membership to send (never the reverse).
        let (held, waiting, reserved, rebuilding) = {
            let lines = self.lines();
            let (held, waiting) = lines.table_counts();
            (held, waiting, lines.reserved_lines(), lines.rebuilding())
        };
        let m = self.membership();
        Status {
            name: m.name().to_string(),
            epoch: m.epoch(),
            lease_valid: self.lease_valid(),
            majority: m.reported_majority(now),
            lines_rebuilding: rebuilding,
            lines_held: held,
            lines_waiting: waiting,
            lines_reserved: reserved,
            members: m
                .members()
                .map(|(name, mem)| MemberStatus {
                    name: name.clone(),
                    epoch: mem.epoch,
                    state: mem.state.as_str(),
                    for_seconds: now.saturating_duration_since(mem.since).as_secs_f64(),
                    rtt_ms: mem.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    connected: connected.contains(name),
                    heard_through_others: m.only_heard_through_others(name, now),
                })
                .collect(),
        }
    }

    async fn run(self, mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let timing = self.membership().timing();
        let mut tick = tokio::time::interval(timing.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                frame = rx.recv() => match frame {
                    Some(bytes) => self.on_frame(&bytes),
                    None => return,
                },
                _ = tick.tick() => {
                    ticks += 1;
                    self.on_tick();
                    // About every second: send again what a missing session may have
                    // lost, and dial who we have no session with.
                    if ticks % 4 == 1 {
                        let out = {
                            let mut lines = self.lines();
                            lines.retry();
                            lines.expire_reservations(Instant::now());
                            let reserved = lines.reserved_lines();
                            self.0.metrics.lines_reserved.set(i64::try_from(reserved).unwrap_or(i64::MAX));
                            self.send_in_order(lines.drain())
                        };
                        self.dispatch(out);
                        let me = self.clone();
                        tokio::spawn(async move { me.dial().await });
                    }
                }
            }
        }
    }

    /// The nodes the store lists, read now, or None if it could not be read: the
    /// retired ones are retired in this view (see [`Cluster::retire`]), those declared
    /// down are down in it (a node that joined after the others declared one down
    /// must not take that incarnation's heartbeats as fresh if it wakes up), and
    /// neither is returned.
    async fn roster(&self) -> Option<Vec<Registered>> {
        let host = self.0.host.clone();
        let read = tokio::task::spawn_blocking(move || host.registered())
            .await
            .ok()
            .flatten()?;
        let now = Instant::now();
        let (me, my_epoch) = {
            let m = self.membership();
            (m.name().to_string(), m.epoch())
        };
        // The store says this incarnation is over before any peer can: the majority
        // declared it down while the network between us was cut, an operator retired
        // it, or another process registered this node's id since (a frozen process
        // resumed beside its replacement: the node then stops rather than rejoin).
        let over = read.iter().any(|r| {
            r.name == me && (r.epoch > my_epoch || (r.epoch == my_epoch && (r.down || r.retired)))
        });
        if over {
            self.declared_down();
        }
        let (gone, registered): (Vec<Registered>, Vec<Registered>) =
            read.into_iter().partition(|r| r.retired || r.down);
        for r in gone.into_iter().filter(|r| r.name != me) {
            if r.retired {
                self.retire(&r.name, r.epoch);
            } else {
                self.membership().known_down(&r.name, r.epoch, now);
            }
        }
        self.after_events();
        Some(registered)
    }

    /// The incarnation and state of member `name` in this node's view, if listed.
    pub fn member(&self, name: &str) -> Option<(u64, State)> {
        self.membership()
            .members()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, m)| (m.epoch, m.state))
    }

    /// `name` in incarnation `epoch` was retired (recorded in the store, by this node
    /// or another): it is no longer listed or counted here. Logged and counted once.
    pub fn retire(&self, name: &str, epoch: u64) {
        let retired = self.membership().retire(name, epoch, Instant::now());
        if retired {
            tracing::warn!(
                member = name,
                epoch,
                "cluster member retired by an operator"
            );
            self.0.metrics.transition("retired");
            self.after_events();
            self.update_gauges();
        }
    }

    /// Tells the listener which addresses are members' (their handshakes have a
    /// budget strangers cannot take, see [`crate::net::Members`]): the seeds' and
    /// those of the nodes the store lists, as just read.
    fn know(&self, registered: &[Registered]) {
        let listed: Vec<IpAddr> = self
            .0
            .seeds
            .iter()
            .map(SocketAddr::ip)
            .chain(
                registered
                    .iter()
                    .filter_map(|r| r.cluster_addr)
                    .map(|a| a.ip()),
            )
            .collect();
        self.0.net.members().set_listed(listed);
    }

    /// Tells the membership which registered members the store shows alive (see
    /// [`Membership::store_signs`]); says so, every 30 s, while this node has heard
    /// no peer although the store shows some alive (a wrong secret or certificate,
    /// a network that does not reach them): it then takes no calls.
    fn note_signs(&self, registered: &[Registered]) {
        let mut m = self.membership();
        let window = m.timing().down_after + STORE_SIGN_EVERY;
        let me = m.name().to_string();
        let now = Instant::now();
        let mut signs = self.0.signs.lock().unwrap_or_else(|p| p.into_inner());
        signs.keep_only(registered.iter().map(|r| r.name.as_str()));
        let alive: Vec<(String, u64)> = registered
            .iter()
            .filter(|r| r.name != me)
            .filter(|r| signs.age(&r.name, r.epoch, r.sign, r.sign_age, now) <= window)
            .map(|r| (r.name.clone(), r.epoch))
            .collect();
        drop(signs);
        let unheard = !m.heard_any() && !alive.is_empty();
        m.store_signs(alive, now);
        drop(m);
        if unheard && self.0.unheard_reads.fetch_add(1, Ordering::Relaxed) % 30 == 5 {
            tracing::error!("no cluster member answers although the store shows members alive: check cluster.secret, the cluster certificates and the network; this node takes no calls until it joins");
        }
    }

    /// Dials the seeds and every registered member without a session.
    async fn dial(&self) {
        // An unreadable store changes nothing of what the last read told.
        let read = self.roster().await;
        if self.0.stale.load(Ordering::SeqCst) {
            // Declared down (or another process runs as this node): no new session
            // until it rejoins. A newer session of a process whose id another now
            // holds would draw the frames its peers address to no incarnation (those
            // go to a name's newest session: see `Net::send`).
            return;
        }
        if let Some(registered) = &read {
            self.know(registered);
            self.note_signs(registered);
        }
        let registered = read.unwrap_or_default();
        let me = self.name();
        let connected: BTreeSet<String> = self.0.net.peers().into_iter().collect();
        let mut targets: Vec<SocketAddr> = registered
            .iter()
            .filter(|r| r.name != me && !connected.contains(&r.name))
            .filter_map(|r| r.cluster_addr)
            .collect();
        if connected.is_empty() {
            targets.extend(self.0.seeds.iter().copied());
        }
        targets.sort();
        targets.dedup();
        for addr in targets {
            if let Err(e) = self.0.net.connect(addr).await {
                tracing::debug!(%e, "cluster dial failed");
            }
        }
    }

    fn on_tick(&self) {
        let now = Instant::now();
        let (seq, peers, hears) = {
            let mut m = self.membership();
            m.tick(now);
            let seq = m.heartbeat(now);
            let mut peers: BTreeSet<String> = m.up().into_iter().map(|(n, _)| n).collect();
            peers.remove(m.name());
            (seq, peers, m.hears(now))
        };
        // The sessions up, looked at once a tick: the heartbeats' peers and the
        // reconnects (`reconcile_after_reconnects`) both read them.
        let sessions = self.0.net.sessions();
        let peers: BTreeSet<String> = peers.into_iter().chain(sessions.keys().cloned()).collect();
        for peer in peers {
            let hears = hears.iter().filter(|h| h.node != peer).cloned().collect();
            let mut msgs = vec![Msg::Heartbeat { seq, hears }];
            msgs.extend(
                self.lines()
                    .take_lazy_releases(&peer)
                    .into_iter()
                    .map(Msg::Line),
            );
            self.send(&peer, msgs);
        }
        self.after_events();
        self.check_lease(now);
        self.publish_lease();
        self.update_gauges();
        self.reset_cut_sessions(now);
        self.reconcile_after_reconnects(sessions);
    }

    /// Line frames sent while a session was down are lost (a release, a grant): when a
    /// member of the view has a new session (after none, or replacing another between
    /// two ticks) and every member has one, the line tables are rebuilt from every
    /// holder's report ([`LineService::reconcile`]). Not while one member is still
    /// unreachable: a rebuild would wait for its report, and grant nothing meanwhile;
    /// its own session's return is the occasion.
    fn reconcile_after_reconnects(&self, now: std::collections::BTreeMap<String, String>) {
        let back: Vec<String> = {
            let mut last = self.0.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let back = now
                .iter()
                .filter(|(name, id)| last.get(*name) != Some(*id))
                .map(|(name, _)| name.clone())
                .collect();
            // A few members' names: kept for the next tick.
            last.clone_from(&now);
            back
        };
        if back.is_empty() {
            return;
        }
        let me = self.name();
        let out = {
            let mut lines = self.lines();
            let others: Vec<&String> = lines.members().iter().filter(|m| **m != me).collect();
            let due = others.iter().any(|m| back.contains(m))
                && others.iter().all(|m| now.contains_key(*m));
            if !due {
                return;
            }
            tracing::debug!(members = ?back, "sessions back: line tables rebuilt from every holder's report");
            lines.reconcile();
            self.send_in_order(lines.drain())
        };
        self.dispatch(out);
    }

    /// Stops the sessions with members this node does not hear while others do (see
    /// [`due_resets`]), so that the dial that follows opens a fresh connection.
    fn reset_cut_sessions(&self, now: Instant) {
        let cut = {
            let m = self.membership();
            let mut cut = m.heard_only_through_others(now);
            // And members declared down and silent for a while: a session to a
            // process frozen with its TCP open queued heartbeats and notices for it
            // without end (about 1 KB/s) until it died (a review).
            cut.extend(m.down_and_silent(now, DOWN_SESSION_RESET));
            cut
        };
        let due = {
            let mut resets = self.0.resets.lock().unwrap_or_else(|p| p.into_inner());
            due_resets(&cut, &mut resets, now)
        };
        for name in due {
            if self.0.net.reset(&name) {
                self.0.metrics.sessions_reset.inc();
                tracing::info!(member = %name, "not heard here (while others hear it, or since it was declared down): its session stopped, to be dialled afresh");
            }
        }
    }

    /// Suspends the line tables while the lease is lapsed, and rebuilds them once it
    /// is held again (the world may have changed meanwhile).
    fn check_lease(&self, now: Instant) {
        let valid = self.membership().lease_valid(now);
        let was_suspended = self.0.suspended.load(Ordering::Relaxed);
        if !valid && !was_suspended {
            tracing::warn!("cluster lease lapsed (no peer acknowledged a heartbeat within the lease): not granting lines");
            self.0.suspended.store(true, Ordering::Relaxed);
            self.lines().suspend();
        } else if valid && was_suspended {
            tracing::info!("cluster lease held again: rebuilding line tables");
            self.0.suspended.store(false, Ordering::Relaxed);
            self.lines_to_view(LineService::resume);
        }
    }

    /// Gives the line service the members up in this node's view, each in its
    /// incarnation (`change`: a view change, or the end of a suspension) and sends what
    /// it produced. By name alone, a member that restarted under the same name was
    /// taken for the holder of its old incarnation's lines (a review).
    fn lines_to_view(&self, change: impl FnOnce(&mut LineService, Vec<(String, u64)>)) {
        let members = self.membership().up();
        let out = {
            let mut lines = self.lines();
            change(&mut lines, members);
            self.send_in_order(lines.drain())
        };
        self.dispatch(out);
    }

    fn on_frame(&self, bytes: &[u8]) {
        self.0.metrics.frames_received.inc();
        let Some(frame) = Frame::decode(bytes) else {
            self.0.metrics.frames_refused.inc();
            return;
        };
        let now = Instant::now();
        let (me, my_epoch) = {
            let m = self.membership();
            (m.name().to_string(), m.epoch())
        };
        if frame.from == me {
            return;
        }
        // Declared down, and until the rejoined incarnation has read the store: what
        // peers say is not taken. A frozen node wakes to frames queued while it slept
        // (a heartbeat of an incarnation the store has since marked down, that
        // incarnation's old down notices): taken into the new view before the store's
        // marks, they made a member of it, which declared a healthy member down as
        // the finaliser of its calls (a live torture run). Peers heartbeat every
        // 250 ms: what is dropped now is said again once the view is seeded.
        if self.0.stale.load(Ordering::SeqCst) {
            return;
        }
        let mut replies = Vec::new();
        let mut line_msgs = Vec::new();
        for msg in frame.msgs {
            match msg {
                Msg::Heartbeat { seq, hears } => {
                    let mut m = self.membership();
                    match m.on_heartbeat(&frame.from, frame.epoch, now) {
                        Verdict::Fresh => {
                            m.on_hears(&frame.from, frame.epoch, &hears, now);
                            replies.push(Msg::Ack { seq });
                        }
                        Verdict::Stale => replies.push(Msg::Stale { epoch: frame.epoch }),
                    }
                }
                Msg::Ack { seq } => {
                    self.membership().on_ack(&frame.from, frame.epoch, seq, now);
                    self.publish_lease();
                }
                // Down notices are taken only from members in good standing: a node
                // that wakes from a freeze, declared down itself, must not take
                // healthy members down with its old view. (A stale verdict is not
                // fenced so: after a partition both sides see the other down, and
                // each must be able to tell the other to rejoin.)
                Msg::Down { node, epoch }
                    if !self.membership().in_good_standing(&frame.from, frame.epoch) =>
                {
                    tracing::debug!(from = %frame.from, sender_epoch = frame.epoch, %node, epoch, "down notice from a member not in good standing ignored");
                }
                Msg::Stale { epoch } => {
                    if epoch == my_epoch {
                        self.declared_down();
                    }
                }
                Msg::Down { node, epoch } if node == me => {
                    if epoch == my_epoch {
                        self.declared_down();
                    }
                }
                // A member leaving for good says so itself (`Cluster::leave`).
                Msg::Down { node, epoch } if node == frame.from => {
                    self.membership().on_leave(&node, epoch, now)
                }
                Msg::Down { node, epoch } => self.membership().on_down_notice(&node, epoch, now),
                Msg::Changed { seq } => self.0.host.changed(seq),
                Msg::Line(l) => line_msgs.push(l),
                // Hand-overs only between members in good standing (the store's
                // compare-and-set on the owner's incarnation guards the claim anyway).
                Msg::HandOver { calls } | Msg::HandedOver { calls }
                    if calls.len() > crate::protocol::MAX_HANDOVER
                        || !self.membership().in_good_standing(&frame.from, frame.epoch) =>
                {
                    self.0.metrics.frames_refused.inc();
                }
                Msg::HandOver { calls } => self.0.host.hand_over(&frame.from, frame.epoch, calls),
                Msg::HandedOver { calls } => self.0.host.handed_over(&frame.from, calls),
            }
        }
        if !line_msgs.is_empty() {
            self.on_line_msgs(&frame.from, frame.epoch, line_msgs, now, &mut replies);
        }
        if !replies.is_empty() {
            // To the incarnation that sent them: an acknowledgement or a stale
            // verdict is about that one.
            self.send_to(&frame.from, Some(frame.epoch), replies);
        }
        self.after_events();
    }

    /// Line messages of a peer: taken from a member up in this incarnation (a frame of
    /// a member not heard of yet is its first sign of life); refused from an
    /// incarnation declared down, which is told it is stale.
    fn on_line_msgs(
        &self,
        from: &str,
        epoch: u64,
        msgs: Vec<LineMsg>,
        now: Instant,
        replies: &mut Vec<Msg>,
    ) {
        let known = self.membership().up_epoch(from);
        if known != Some(epoch) {
            if self.membership().on_heartbeat(from, epoch, now) == Verdict::Stale {
                replies.push(Msg::Stale { epoch });
                return;
            }
            self.after_events(); // the view includes it before its messages
        }
        if self.0.stale.load(Ordering::Relaxed) {
            return;
        }
        let now_ms = wall_ms();
        let out = {
            let mut lines = self.lines();
            for m in msgs {
                lines.on_message(from, m, now_ms);
            }
            self.send_in_order(lines.drain())
        };
        self.dispatch(out);
    }

    /// The others declared this incarnation down: from now on it acts on nothing until
    /// the node has rejoined as a new one.
    fn declared_down(&self) {
        if self.0.stale.swap(true, Ordering::SeqCst) {
            return;
        }
        // The SIP and RTP gates read the lease alone: closed now, not at the next tick.
        self.publish_lease();
        tracing::error!(
            "this incarnation was declared down by the cluster: dropping its calls and rejoining"
        );
        self.lines().suspend();
        self.0.metrics.stale.inc();
        self.0.host.stale();
    }

    /// Hands membership changes to the node and the line service.
    fn after_events(&self) {
        let mut changed = false;
        loop {
            let Some(ev) = self.membership().poll_event() else {
                break;
            };
            changed = true;
            match ev {
                Event::Up { name, epoch } => {
                    tracing::info!(member = %name, epoch, "cluster member up");
                    self.0.metrics.transition("up");
                    self.0.host.member_up(&name, epoch);
                }
                Event::Down { name, epoch } if self.0.stale.load(Ordering::SeqCst) => {
                    // Not acted on (no notice, no takeover) by an incarnation the
                    // cluster declared down, or one rejoining before its view is seeded.
                    tracing::info!(member = %name, epoch, "cluster member down in the view of a stale incarnation: not acted on");
                }
                Event::Down { name, epoch } => {
                    tracing::warn!(member = %name, epoch, "cluster member down");
                    self.0.metrics.transition("down");
                    for peer in self.0.net.peers() {
                        if peer != name {
                            // As a change (see `changed`): to whichever runs.
                            self.send_to(
                                &peer,
                                None,
                                vec![Msg::Down {
                                    node: name.clone(),
                                    epoch,
                                }],
                            );
                        }
                    }
                    let (finaliser, survivors) = {
                        let m = self.membership();
                        let up: Vec<String> = m.up().into_iter().map(|(n, _)| n).collect();
                        let finaliser = crate::placement::owner(
                            &format!("node:{name}"),
                            up.iter().map(String::as_str),
                        ) == Some(m.name());
                        (finaliser, up)
                    };
                    self.0.host.member_down(&name, epoch, finaliser, &survivors);
                }
            }
        }
        if changed && !self.0.stale.load(Ordering::Relaxed) {
            self.lines_to_view(LineService::view);
            self.update_gauges();
        }
    }

    fn update_gauges(&self) {
        let m = self.membership();
        let up = m.members().filter(|(_, x)| x.state == State::Up).count() + 1;
        let down = m.members().filter(|(_, x)| x.state == State::Down).count();
        self.0.metrics.members(up as i64, down as i64);
        let now = Instant::now();
        let through_others = m.heard_only_through_others(now).len();
        self.0
            .metrics
            .heard_through_others
            .set(through_others as i64);
        let majority = m.reported_majority(now);
        self.0.metrics.majority.set(i64::from(majority));
        if self.0.majority.swap(majority, Ordering::Relaxed) != majority {
            if majority {
                tracing::info!("this node's side of the cluster is a majority again");
            } else {
                tracing::error!("cut off from members the store shows alive, and not a majority without them: declaring nobody down, holding no lease (no calls admitted, no RTP or SIP sent) until the network heals or the majority declares this node down");
            }
        }
        for (_, x) in m.members() {
            if let Some(rtt) = x.rtt {
                self.0.metrics.rtt.observe(rtt.as_secs_f64());
            }
        }
    }
}

/// Which of the members heard only through others (`cut`) to reset now: each at most
/// every [`RESET_EVERY`]. A link that was cut leaves its TCP connection in
/// retransmission back-off, seconds to minutes between tries, and the session is
/// still counted up, so nothing dials: after the heal the member stayed unheard here
/// for 15–28 s in a live torture run (and its line requests unanswered). `last`
/// keeps when each was reset; members no longer cut leave it.
fn due_resets(cut: &[String], last: &mut HashMap<String, Instant>, now: Instant) -> Vec<String> {
    last.retain(|name, _| cut.contains(name));
    let due: Vec<String> = cut
        .iter()
        .filter(|name| {
            last.get(*name)
                .is_none_or(|t| now.saturating_duration_since(*t) >= RESET_EVERY)
        })
        .cloned()
        .collect();
    for name in &due {
        last.insert(name.clone(), now);
    }
    due
}

/// How long ago `t` was, for logs.
pub fn ago(t: Instant) -> Duration {
    Instant::now().saturating_duration_since(t)
}

/// This node's wall clock, in ms since the Unix epoch: what the line service takes a
/// peer's queue stamps against (see [`LineService::on_message`]).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_sessions_are_reset_at_most_every_five_seconds() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut last = HashMap::new();
        let cut = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        // (ms, members heard only through others) -> reset now
        let rows: &[(u64, &[&str], &[&str])] = &[
            (0, &[], &[]),
            (250, &["b"], &["b"]),
            (500, &["b"], &[]),
            (4_999, &["b", "c"], &["c"]),
            (5_250, &["b", "c"], &["b"]),
            // b heard again: forgotten, so a new cut resets it at once.
            (5_500, &["c"], &[]),
            (5_750, &["b", "c"], &["b"]),
            (10_000, &["b", "c"], &["c"]),
        ];
        for (ms, now_cut, want) in rows {
            let got = due_resets(&cut(now_cut), &mut last, at(*ms));
            assert_eq!(got, cut(want), "at {ms} ms");
        }
    }
}
