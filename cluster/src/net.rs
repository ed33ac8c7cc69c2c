//! Carrying frames between nodes over ractor_cluster, hardened.
//!
//! ractor_cluster (the project's actor system) runs the sessions: the magic-cookie
//! challenge with the cluster's shared secret, then one ordered stream per pair of
//! nodes, and process groups through which each node's [`Mailbox`] actor reaches the
//! others' (`tsunagu/<node>`). Its own listener awaits each TLS handshake inline, with
//! no timeout and no limit, so one silent connection would stop every later node from
//! joining: connections are therefore accepted and dialled here — mutual TLS against the
//! cluster's CA, a handshake deadline, a cap on handshakes per source and in all, with
//! a budget of their own for the addresses of known members (see [`Members`]) — and
//! only then handed to ractor_cluster's node server as established TLS streams. (Its
//! listener still runs, as the node server insists on one, on 127.0.0.1 with an
//! ephemeral port and the same mutual TLS; nothing is told about it.) Its sessions
//! would also wait for ever on a peer that stops inside the secret's challenge: a
//! session that has not passed it within [`HANDSHAKE`] of its TLS is stopped
//! ([`ChallengeDeadline`]).
//!
//! A frame is one message of ours (see [`crate::protocol`]), opaque here: bytes in,
//! bytes out.

use prometheus_client::metrics::counter::Counter;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus};
use ractor_cluster::node::{NodeServerSessionInformation, NodeSessionMessage};
use ractor_cluster::{NetworkStream, NodeEventSubscription, NodeServer, NodeServerMessage};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long a TLS handshake between nodes may take, and then again ractor_cluster's
/// challenge with the secret.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// Handshakes in progress from one source at once (a peer needs one or two). A source
/// is a member's exact address, or a stranger's address (IPv4) or /64 (IPv6): see
/// [`source_of`].
const PER_SOURCE: usize = 4;
/// Handshakes in progress at once from strangers (addresses not in [`Members`]). Once
/// mutual TLS succeeded the peer holds the cluster's certificate: it is a member, and
/// its session no longer counts.
const TOTAL: usize = 64;
/// Handshakes in progress at once from the addresses of known members. A budget of
/// their own, not shared with strangers': anyone who can reach the port can keep
/// [`TOTAL`] silent handshakes open (16 IPv4 addresses, renewing every [`HANDSHAKE`]),
/// and if members drew on the same budget a restarting node or one re-dialling after
/// a lost link would be refused at accept, the cluster could not heal, and a restarted
/// node would declare its healthy peers down. Strangers can take at most a member
/// address's own [`PER_SOURCE`], and only from that very address.
const MEMBERS_TOTAL: usize = 64;
/// The most addresses [`Members`] holds (seeds, the store's registry, and peers whose
/// mutual TLS succeeded), so that it cannot grow without bound; past it the oldest
/// address learnt from a session is forgotten first.
const MAX_MEMBERS: usize = 256;
/// The largest frame a peer may send (ractor_cluster checks it before allocating).
const MAX_FRAME: u64 = 4 * 1024 * 1024;

/// What the transport needs.
pub struct NetConfig {
    /// This node's name (its `node.id`).
    pub name: String,
    /// Where peers connect.
    pub listen: SocketAddr,
    /// The shared secret (ractor_cluster's cookie).
    pub secret: String,
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

/// The local end of the frames: every node's mailbox is in the group `tsunagu`, in
/// `tsunagu/<its name>` and in `tsunagu/<its name>#<its incarnation>` (moved to the
/// new one when it rejoins: [`Net::set_epoch`]); a frame cast to it comes out of
/// [`Net::start`]'s receiver.
pub struct Mailbox {
    group: String,
    incarnation: String,
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

const ALL: &str = "tsunagu";

fn group_of(name: &str) -> String {
    format!("{ALL}/{name}")
}

fn incarnation_group(name: &str, epoch: u64) -> String {
    format!("{ALL}/{name}#{epoch}")
}

/// The remote mailboxes in `group` (a peer's name's, or one incarnation's), each with
/// the session (ractor_cluster's node id) that carries it. Usually one; two while a process with the same name holds an older
/// session (frozen with its TCP open) beside a newer process's. ractor_cluster
/// numbers sessions in the order they open, so the highest is the newest: frames go
/// there. The first listed was taken, and a member's replacement (a second process
/// started with a frozen node's id) sent its heartbeats but had every answer queued
/// for the frozen process, so it never held its lease (a live test).
fn remote_mailboxes(group: &str) -> impl Iterator<Item = (u64, ractor::ActorCell)> {
    ractor::pg::get_members(&group.to_string())
        .into_iter()
        .filter_map(|c| match c.get_id() {
            ActorId::Remote { node_id, .. } => Some((node_id, c)),
            ActorId::Local(_) => None,
        })
}

impl Actor for Mailbox {
    type Msg = Vec<u8>;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, me: ActorRef<Vec<u8>>, _: ()) -> Result<(), ActorProcessingErr> {
        ractor::pg::join(ALL.to_string(), vec![me.get_cell()]);
        ractor::pg::join(self.group.clone(), vec![me.get_cell()]);
        ractor::pg::join(self.incarnation.clone(), vec![me.get_cell()]);
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Vec<u8>>,
        frame: Vec<u8>,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let _ = self.tx.send(frame);
        Ok(())
    }
}

/// At most one log line a second: [`Throttle::allow`] says whether this one may go,
/// and how many were held back since the last that went. (The node's lines about
/// what peers send use it too: one per message let a peer flood the log.)
#[derive(Default)]
pub struct Throttle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// A throttle for a `static`.
    pub const fn new() -> Throttle {
        Throttle {
            state: Mutex::new((None, 0)),
        }
    }

    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.0 {
            Some(last) if now.saturating_duration_since(last) < Duration::from_secs(1) => {
                s.1 = s.1.saturating_add(1);
                None
            }
            _ => {
                let held = std::mem::take(&mut s.1);
                s.0 = Some(now);
                Some(held)
            }
        }
    }
}

/// The addresses of known cluster members, which the listener gives a handshake budget
/// of their own ([`MEMBERS_TOTAL`]): the IPs of the configured seeds and of the nodes
/// in the store's registry (set together by the driver each time it reads the
/// registry, [`Members::set_listed`]), and of peers whose session passed the secret
/// ([`Members::session`]). Bounded by [`MAX_MEMBERS`]; cheap to clone (shared).
///
/// Limits: membership is by the connection's source address, so a member that dials
/// from an address other than the one it is listed with is a stranger until its first
/// session (and its own dialling still reaches the others), and a stranger that shares
/// a member's address (same host, same NAT) can take that address's [`PER_SOURCE`]
/// slots, no more.
#[derive(Clone, Default)]
pub struct Members(Arc<RwLock<MemberSet>>);

#[derive(Default)]
struct MemberSet {
    /// Seeds and registry, as last set.
    listed: HashSet<IpAddr>,
    /// Peers whose session passed the secret's challenge, oldest first (listed or not).
    sessions: VecDeque<IpAddr>,
}

impl MemberSet {
    fn trim(&mut self) {
        while self.listed.len() + self.sessions.len() > MAX_MEMBERS {
            if self.sessions.pop_front().is_none() {
                break;
            }
        }
    }
}

impl Members {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, MemberSet> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the listed addresses (the seeds' and the registry's, together); at
    /// most [`MAX_MEMBERS`] are kept, before any learnt from sessions.
    pub fn set_listed(&self, ips: impl IntoIterator<Item = IpAddr>) {
        let mut listed = HashSet::new();
        for ip in ips {
            if listed.len() >= MAX_MEMBERS {
                break;
            }
            listed.insert(ip.to_canonical());
        }
        let mut set = self.write();
        set.listed = listed;
        set.trim();
    }

    /// `ip` completed mutual TLS with the cluster's CA: it holds a member's
    /// certificate. Kept even when listed, so that a member the registry stops listing
    /// (a store read that failed, a node marked down that restarts) is still known.
    pub fn session(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let mut set = self.write();
        set.sessions.retain(|x| *x != ip);
        set.sessions.push_back(ip);
        set.trim();
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let set = self.0.read().unwrap_or_else(|p| p.into_inner());
        set.listed.contains(&ip) || set.sessions.contains(&ip)
    }

    /// Addresses known, each once.
    pub fn len(&self) -> usize {
        let set = self.0.read().unwrap_or_else(|p| p.into_inner());
        let learnt = set.sessions.iter().filter(|ip| !set.listed.contains(ip));
        set.listed.len() + learnt.count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The source a stranger's handshakes count against: its IPv4 address, or the /64 its
/// IPv6 address is in. One host is routinely given a whole /64 (SLAAC, privacy
/// addresses, a /64 per VM), so keyed by exact IPv6 address one host would have
/// 2^64 sources and take all of [`TOTAL`] alone. IPv4-mapped IPv6 addresses (a
/// dual-stack listener) count as the IPv4 address, not as one shared /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(net))
        }
        v4 => v4,
    }
}

/// Handshakes in progress (our accepting side), released on drop: members' by exact
/// address and strangers' by [`source_of`], in two tables with budgets of their own.
#[derive(Default)]
struct Counts(Mutex<Tables>);

#[derive(Default)]
struct Tables {
    members: HashMap<IpAddr, usize>,
    strangers: HashMap<IpAddr, usize>,
}

impl Tables {
    fn of(&mut self, member: bool) -> &mut HashMap<IpAddr, usize> {
        if member {
            &mut self.members
        } else {
            &mut self.strangers
        }
    }
}

struct Slot {
    counts: Arc<Counts>,
    member: bool,
    source: IpAddr,
}

impl Counts {
    /// A slot for a handshake from `ip` (`member`: in [`Members`]), or none if its
    /// source holds [`PER_SOURCE`] or its class (members, strangers) holds its total
    /// ([`MEMBERS_TOTAL`], [`TOTAL`]). A refused source leaves no entry behind (each
    /// table holds at most its total's sources, however many a flood comes from).
    fn take(self: &Arc<Self>, ip: IpAddr, member: bool) -> Option<Slot> {
        let (source, total_cap) = if member {
            (ip.to_canonical(), MEMBERS_TOTAL)
        } else {
            (source_of(ip), TOTAL)
        };
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let m = t.of(member);
        let total: usize = m.values().sum();
        let mine = m.get(&source).copied().unwrap_or(0);
        if mine >= PER_SOURCE || total >= total_cap {
            return None;
        }
        *m.entry(source).or_default() += 1;
        Some(Slot {
            counts: self.clone(),
            member,
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        let m = t.of(self.member);
        if let Some(n) = m.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.source);
            }
        }
    }
}

/// Why a connection to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("cluster node server: {0}")]
    Server(String),
}

/// The running transport.
#[derive(Clone)]
pub struct Net {
    name: String,
    /// This node's mailbox, and the group of its incarnation it is in.
    mailbox: ractor::ActorCell,
    incarnation: Arc<Mutex<String>>,
    server: ActorRef<NodeServerMessage>,
    connector: TlsConnector,
    members: Members,
    /// The address dials go out from: the listener's, so that a peer counts them in
    /// the members' handshake budget (its registry lists that address), not as a
    /// stranger's (an unbound dial leaves from whatever address the route picks,
    /// e.g. 127.0.0.1 for a node listening on 127.0.0.2). None when listening on
    /// every address.
    source: Option<IpAddr>,
    /// The sessions that passed the challenge, by the id ractor_cluster gives the
    /// peer's node (the one its actors' ids carry here), for [`Net::reset`].
    sessions: Sessions,
}

type Sessions = Arc<Mutex<HashMap<u64, ActorRef<NodeSessionMessage>>>>;

impl Net {
    /// Starts the node server, this node's mailbox and the listener; frames for this
    /// node come out of the returned receiver.
    /// `sessions_cut` counts the sessions [`ChallengeDeadline`] stops.
    pub async fn start(
        cfg: NetConfig,
        epoch: u64,
        sessions_cut: Counter,
    ) -> Result<(Net, mpsc::UnboundedReceiver<Vec<u8>>), NetError> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| NetError::Listen(cfg.listen, e))?;
        let sessions = Sessions::default();
        let members = Members::default();
        let server = NodeServer::new(
            0,
            cfg.secret.clone(),
            cfg.name.clone(),
            cfg.listen.ip().to_string(),
            Some(ractor_cluster::IncomingEncryptionMode::Tls(
                cfg.acceptor.clone(),
            )),
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(IpAddr::from([127, 0, 0, 1]))
        .with_max_inbound_frame_size(MAX_FRAME);
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| NetError::Server(e.to_string()))?;
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "challenge-deadline".into(),
                subscription: Box::new(ChallengeDeadline {
                    members: members.clone(),
                    sessions: sessions.clone(),
                    cut: Arc::default(),
                    refused: Throttle::default(),
                    counted: sessions_cut,
                }),
            })
            .map_err(|e| NetError::Server(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let incarnation = incarnation_group(&cfg.name, epoch);
        let (mailbox, _) = Actor::spawn(
            None,
            Mailbox {
                group: group_of(&cfg.name),
                incarnation: incarnation.clone(),
                tx,
            },
            (),
        )
        .await
        .map_err(|e| NetError::Server(e.to_string()))?;
        tokio::spawn(accept_loop(
            listener,
            cfg.acceptor,
            server.clone(),
            members.clone(),
        ));
        Ok((
            Net {
                name: cfg.name,
                mailbox: mailbox.get_cell(),
                incarnation: Arc::new(Mutex::new(incarnation)),
                server,
                connector: cfg.connector,
                members,
                source: Some(cfg.listen.ip()).filter(|ip| !ip.is_unspecified()),
                sessions,
            },
            rx,
        ))
    }

    /// Dials a peer: TCP, mutual TLS (its certificate must name `addr`'s IP), then the
    /// session and the secret's challenge run in ractor_cluster.
    pub async fn connect(&self, addr: SocketAddr) -> Result<(), NetError> {
        let err = |e: String| NetError::Connect(addr, e);
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(|e| err(e.to_string()))?;
        if let Some(ip) = self.source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| err(format!("binding to {ip}: {e}")))?;
        }
        let tcp = tokio::time::timeout(HANDSHAKE, socket.connect(addr))
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let local_addr = tcp.local_addr().map_err(|e| err(e.to_string()))?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let stream = tokio::time::timeout(HANDSHAKE, self.connector.connect(name, tcp))
            .await
            .map_err(|_| err("TLS handshake timed out".into()))?
            .map_err(|e| err(format!("TLS: {e}")))?;
        self.members.session(addr.ip());
        self.server
            .cast(NodeServerMessage::ConnectionOpened {
                stream: Box::new(NetworkStream::TlsClient {
                    peer_addr: addr,
                    local_addr,
                    stream,
                }),
                is_server: false,
            })
            .map_err(|e| err(e.to_string()))
    }

    /// The addresses the listener treats as members' (see [`Members`]); the driver
    /// sets the seeds' and the registry's.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// Sends a frame to node `to`'s mailbox: to its incarnation `epoch`'s where it is
    /// given and known here, else to the newest session's (see [`remote_mailboxes`]);
    /// false if no session to it is up. By incarnation, a process that wakes beside
    /// the replacement started with its id (and dials before it learns so: its store
    /// unreadable) draws none of the replacement's frames, whichever session is newer.
    pub fn send(&self, to: &str, epoch: Option<u64>, frame: Vec<u8>) -> bool {
        let newest = |group: &str| {
            remote_mailboxes(group)
                .max_by_key(|(session, _)| *session)
                .map(|(_, cell)| cell)
        };
        let cell = epoch
            .and_then(|e| newest(&incarnation_group(to, e)))
            .or_else(|| newest(&group_of(to)));
        let Some(cell) = cell else {
            return false;
        };
        ActorRef::<Vec<u8>>::from(cell).cast(frame).is_ok()
    }

    /// This node rejoined as incarnation `epoch`: its mailbox moves to that
    /// incarnation's group. (A frame a peer addresses to the old incarnation still
    /// reaches it where no other process holds that one: [`Net::send`] falls back to
    /// the name's newest session.)
    pub fn set_epoch(&self, epoch: u64) {
        let next = incarnation_group(&self.name, epoch);
        let mut group = self.incarnation.lock().unwrap_or_else(|p| p.into_inner());
        if *group == next {
            return;
        }
        ractor::pg::leave(group.clone(), vec![self.mailbox.clone()]);
        ractor::pg::join(next.clone(), vec![self.mailbox.clone()]);
        *group = next;
    }

    /// Stops the session with peer `to`, if there is one, so that the next dial opens
    /// a fresh connection (the old one may be stuck in TCP's retransmission back-off
    /// after a cut, for up to minutes); true if one was stopped.
    pub fn reset(&self, to: &str) -> bool {
        let nodes: HashSet<u64> = remote_mailboxes(&group_of(to))
            .map(|(session, _)| session)
            .collect();
        let stopping: Vec<ActorRef<NodeSessionMessage>> = {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            nodes
                .iter()
                .filter_map(|n| sessions.get(n).cloned())
                .collect()
        };
        for s in &stopping {
            s.stop(Some(
                "peer not heard here (while others hear it, or since it was declared down): reconnecting".into(),
            ));
        }
        !stopping.is_empty()
    }

    /// The peers a session is up with, each with what names that session (the ids of
    /// the peer's actors it carries): a session replaced by a new one, even between two
    /// looks, reads differently.
    pub fn sessions(&self) -> std::collections::BTreeMap<String, String> {
        let prefix = format!("{ALL}/");
        ractor::pg::which_groups()
            .into_iter()
            .filter_map(|g| g.strip_prefix(&prefix).map(str::to_string))
            // A name's group, not an incarnation's (`name#epoch`: node ids have no `#`).
            .filter(|n| *n != self.name && !n.contains('#'))
            .filter_map(|n| {
                let mut ids: Vec<String> = ractor::pg::get_members(&group_of(&n))
                    .iter()
                    .map(|c| c.get_id())
                    .filter(|id| !id.is_local())
                    .map(|id| format!("{id}"))
                    .collect();
                ids.sort();
                (!ids.is_empty()).then(|| (n, ids.join(",")))
            })
            .collect()
    }

    /// The peers a session is up with (by name).
    pub fn peers(&self) -> Vec<String> {
        self.sessions().into_keys().collect()
    }
}

/// Stops a session that has not passed ractor_cluster's challenge with the secret
/// within [`HANDSHAKE`] of being handed over. ractor_cluster has no deadline of its
/// own there: a peer holding the cluster's certificate (its TLS done, so no longer
/// holding a handshake slot) that sends half a frame, or nothing, would keep its
/// session, its socket and its task for ever; enough of them exhaust descriptors.
struct ChallengeDeadline {
    /// Where a session that passed makes its peer's address a member's.
    members: Members,
    /// The sessions that passed, until they end (so bounded by the live sessions), by
    /// the peer's node id (also what [`Net::reset`] stops).
    sessions: Sessions,
    /// Log lines about cut sessions, at most one a second.
    cut: Arc<Throttle>,
    /// Log lines about sessions that ended before authenticating, at most one a second.
    refused: Throttle,
    /// `tsunagu_cluster_sessions_cut_total`.
    counted: Counter,
}

impl NodeEventSubscription for ChallengeDeadline {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        let sessions = self.sessions.clone();
        let cut = self.cut.clone();
        let counted = self.counted.clone();
        // Called inside the node server's handler, on the runtime.
        tokio::spawn(async move {
            tokio::time::sleep(HANDSHAKE).await;
            let ended = matches!(
                ses.actor.get_status(),
                ActorStatus::Stopping | ActorStatus::Stopped
            );
            if ended || passed(&sessions, &ses) {
                return;
            }
            counted.inc();
            if let Some(more) = cut.allow(Instant::now()) {
                tracing::warn!(peer = %ses.peer_addr, more, "cluster connection cut: the secret's challenge not passed in time");
            }
            ses.actor.stop(Some("challenge timed out".into()));
        });
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        // A member from its secret on, not from its TLS handshake: a peer holding a
        // certificate of the cluster's CA but not the secret drew on the members'
        // handshake budget from many addresses and pushed learnt members out (a
        // review).
        let peer = ses.peer_addr.parse::<SocketAddr>().map(|a| a.ip());
        if let Ok(ip) = peer.or_else(|_| ses.peer_addr.parse::<IpAddr>()) {
            self.members.session(ip);
        }
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ses.node_id, ses.actor);
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        // Checked and removed under one lock: a session of the same node that passed
        // its challenge in between is not removed with this one.
        let passed = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let this = sessions
                .get(&ses.node_id)
                .is_some_and(|a| a.get_id() == ses.actor.get_id());
            if this {
                sessions.remove(&ses.node_id);
            }
            this
        };
        if !passed {
            // A peer with the cluster's certificate whose secret is not the cluster's
            // (or one this node gave up on): the operator needs to know which.
            if let Some(more) = self.refused.allow(Instant::now()) {
                tracing::warn!(peer = %ses.peer_addr, more, "cluster connection closed before the secret's challenge was passed (a wrong cluster.secret?)");
            }
        }
    }
}

/// Whether session `ses` passed the secret's challenge (is the one listed for its node).
fn passed(sessions: &Sessions, ses: &NodeServerSessionInformation) -> bool {
    sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&ses.node_id)
        .is_some_and(|a| a.get_id() == ses.actor.get_id())
}

/// Accepts peers: a handshake slot (per source and in all, members' apart from
/// strangers'), the mutual TLS handshake within [`HANDSHAKE`], each on its own task,
/// then the stream goes to the node server (its address a member's once the session
/// passes the secret's challenge).
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    server: ActorRef<NodeServerMessage>,
    members: Members,
) {
    let counts = Arc::new(Counts::default());
    // Refusals are logged at most once a second, with how many were not: a flood of
    // connections must not fill the disk with a line each.
    let refusals = Arc::new(Throttle::default());
    loop {
        let (tcp, peer_addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning.
                tracing::warn!(%e, "cluster listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let member = members.contains(peer_addr.ip());
        let Some(slot) = counts.take(peer_addr.ip(), member) else {
            if let Some(more) = refusals.allow(Instant::now()) {
                tracing::warn!(%peer_addr, member, more, "cluster listener: too many handshakes in progress from this source or in all (`more`: refusals not logged since the last line)");
            }
            continue;
        };
        let acceptor = acceptor.clone();
        let server = server.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(local_addr) = tcp.local_addr() else {
                return;
            };
            let shake = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await;
            drop(slot);
            let stream = match shake {
                // A member once its session passes the secret's challenge
                // (`ChallengeDeadline::node_session_authenticated`).
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    if let Some(more) = refusals.allow(Instant::now()) {
                        tracing::warn!(%peer_addr, %e, more, "cluster connection refused: TLS");
                    }
                    return;
                }
                Err(_) => {
                    if let Some(more) = refusals.allow(Instant::now()) {
                        tracing::warn!(%peer_addr, more, "cluster connection refused: TLS handshake timed out");
                    }
                    return;
                }
            };
            let _ = server.cast(NodeServerMessage::ConnectionOpened {
                stream: Box::new(NetworkStream::TlsServer {
                    peer_addr,
                    local_addr,
                    stream,
                }),
                is_server: true,
            });
        });
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_throttle_lets_one_line_a_second_and_counts_the_rest() {
        let t = Throttle::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(t.allow(at(0)), Some(0));
        assert_eq!(t.allow(at(10)), None);
        assert_eq!(t.allow(at(999)), None);
        assert_eq!(t.allow(at(1_000)), Some(2));
        assert_eq!(t.allow(at(1_500)), None);
        assert_eq!(t.allow(at(5_000)), Some(1));
        assert_eq!(t.allow(at(5_001)), None);
    }

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    /// An address in the IPv6 /64 `net` (host part `host`).
    fn ip6(net: u16, host: u64) -> IpAddr {
        IpAddr::from(Ipv6Addr::from(
            (0x2001_0db8_u128 << 96) | (u128::from(net) << 64) | u128::from(host),
        ))
    }

    fn sizes(counts: &Counts) -> (usize, usize) {
        let t = counts.0.lock().unwrap();
        (t.members.len(), t.strangers.len())
    }

    /// Handshake slots: four per source, 64 in all, given back when a handshake ends;
    /// a flood from many addresses neither passes the total nor grows the table.
    #[test]
    fn handshake_slots_are_capped_per_source_and_in_all() {
        let counts = Arc::new(Counts::default());
        let mut held = Vec::new();
        for _ in 0..PER_SOURCE {
            held.push(counts.take(ip(0), false).expect("a slot"));
        }
        assert!(
            counts.take(ip(0), false).is_none(),
            "the fifth from one source"
        );
        // Fifteen more sources fill the 64.
        for src in 1..(TOTAL / PER_SOURCE) as u32 {
            for _ in 0..PER_SOURCE {
                held.push(counts.take(ip(src), false).expect("a slot"));
            }
        }
        assert_eq!(held.len(), TOTAL);
        for src in 100..10_100 {
            assert!(counts.take(ip(src), false).is_none(), "past the total");
        }
        assert_eq!(
            sizes(&counts),
            (0, TOTAL / PER_SOURCE),
            "refused sources leave no entry"
        );
        drop(held.pop());
        assert!(
            counts.take(ip(5000), false).is_some(),
            "a slot given back is free"
        );
        held.clear();
        assert_eq!(sizes(&counts), (0, 0), "all given back");
    }

    /// What `take` decides, row by row: (address, member?, slot given?). Slots given
    /// are held to the end of the table unless a row says otherwise.
    #[test]
    fn members_have_their_own_budget_and_their_own_cap() {
        let counts = Arc::new(Counts::default());
        let mut strangers = Vec::new();
        // Strangers from 16 IPv4 addresses hold all of TOTAL.
        for src in 0..(TOTAL / PER_SOURCE) as u32 {
            for _ in 0..PER_SOURCE {
                strangers.push(counts.take(ip(src), false).expect("a stranger's slot"));
            }
        }
        let mut held = Vec::new();
        let rows: &[(IpAddr, bool, bool, &str)] = &[
            (ip(1000), false, false, "a new stranger: TOTAL is full"),
            // (a) members still get slots while strangers hold all of TOTAL.
            (ip(900), true, true, "a member, while strangers hold TOTAL"),
            (ip(901), true, true, "another member"),
            (ip(900), true, true, "member 900: 2nd"),
            (ip(900), true, true, "member 900: 3rd"),
            (ip(900), true, true, "member 900: 4th"),
            // (b) a member's own per-source cap still applies.
            (ip(900), true, false, "member 900: 5th, past PER_SOURCE"),
            (ip(901), true, true, "member 901 is not held back by 900"),
        ];
        for (n, &(addr, member, given, why)) in rows.iter().enumerate() {
            let slot = counts.take(addr, member);
            assert_eq!(slot.is_some(), given, "row {n}: {why}");
            held.extend(slot);
        }
        assert_eq!(sizes(&counts), (2, TOTAL / PER_SOURCE));
        // The members' budget is bounded too: MEMBERS_TOTAL in all.
        let mut more = Vec::new();
        for src in 2000..2000 + MEMBERS_TOTAL as u32 {
            more.extend(counts.take(ip(src), true));
        }
        assert_eq!(held.len() + more.len(), MEMBERS_TOTAL, "members in all");
        assert!(counts.take(ip(901), true).is_none(), "past MEMBERS_TOTAL");
        more.clear();
        // (d) slots are given back on drop: a stranger's, then a member's.
        drop(strangers.pop());
        assert!(
            counts.take(ip(1000), false).is_some(),
            "a stranger's slot given back is free"
        );
        held.clear();
        assert_eq!(
            sizes(&counts).0,
            0,
            "members' slots given back leave no entry"
        );
        strangers.clear();
        assert_eq!(sizes(&counts), (0, 0), "all given back");
    }

    /// (c) Several addresses of one IPv6 /64 share one stranger's budget; another /64
    /// is another source; a member's IPv6 address is its own source even within a
    /// /64 that strangers fill.
    #[test]
    fn addresses_of_one_v6_64_share_one_strangers_budget() {
        let counts = Arc::new(Counts::default());
        let mut held = Vec::new();
        let rows: &[(IpAddr, bool, bool, &str)] = &[
            (ip6(1, 1), false, true, "first of the /64"),
            (ip6(1, 2), false, true, "another address, same /64"),
            (ip6(1, 0xffff_ffff), false, true, "a third"),
            (
                ip6(1, u64::MAX),
                false,
                true,
                "a fourth: PER_SOURCE reached",
            ),
            (
                ip6(1, 77),
                false,
                false,
                "a fifth address of the /64: refused",
            ),
            (ip6(2, 1), false, true, "the next /64 is another source"),
            (ip6(1, 5), true, true, "a member inside the full /64"),
        ];
        for (n, &(addr, member, given, why)) in rows.iter().enumerate() {
            let slot = counts.take(addr, member);
            assert_eq!(slot.is_some(), given, "row {n}: {why}");
            held.extend(slot);
        }
        assert_eq!(
            sizes(&counts),
            (1, 2),
            "one entry per /64, refused leave none"
        );
        // A flood from a million addresses of one /64 holds PER_SOURCE, no more.
        for host in 1_000..1_001_000 {
            assert!(counts.take(ip6(1, host), false).is_none());
        }
        assert_eq!(sizes(&counts), (1, 2));
        held.clear();
        assert_eq!(sizes(&counts), (0, 0), "all given back");
    }

    /// IPv4 stays per address; an IPv4-mapped IPv6 address (a dual-stack listener)
    /// counts as its IPv4 address, not as one /64 shared by every IPv4 peer.
    #[test]
    fn sources_are_v4_addresses_and_v6_networks() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(source_of(a), a);
        assert_ne!(source_of(a), source_of(b));
        assert_eq!(source_of("::ffff:192.0.2.1".parse().unwrap()), a);
        assert_eq!(
            source_of("2001:db8:0:1:aaaa::1".parse().unwrap()),
            "2001:db8:0:1::".parse::<IpAddr>().unwrap()
        );
    }

    /// Members: seeds and registry set together (a refresh drops what is no longer
    /// listed), sessions added, the whole bounded by MAX_MEMBERS (oldest session out
    /// first; listed addresses first).
    #[test]
    fn members_are_listed_or_learnt_and_bounded() {
        let m = Members::default();
        assert!(!m.contains(ip(1)));
        m.set_listed([ip(1), ip(2), ip(2)]);
        assert!(m.contains(ip(1)) && m.contains(ip(2)));
        assert!(
            m.contains("::ffff:10.0.0.1".parse().unwrap()),
            "mapped = v4"
        );
        assert_eq!(m.len(), 2);
        m.session(ip(3));
        m.session(ip(1)); // already listed: not counted twice
        assert_eq!(m.len(), 3);
        m.set_listed([ip(2)]);
        assert!(
            m.contains(ip(1)),
            "no longer listed (a failed registry read, a member marked down), but known from its session"
        );
        assert!(m.contains(ip(3)), "a session's address stays");
        m.set_listed([ip(2), ip(4)]);
        m.set_listed([ip(2)]);
        assert!(!m.contains(ip(4)), "listed only, then no longer: forgotten");
        for n in 10..10_000 {
            m.session(ip(n));
        }
        assert_eq!(m.len(), MAX_MEMBERS);
        assert!(m.contains(ip(2)), "listed addresses are kept");
        assert!(
            !m.contains(ip(3)) && !m.contains(ip(10)),
            "oldest sessions out"
        );
        assert!(m.contains(ip(9_999)));
        m.set_listed((0..10_000).map(ip));
        assert_eq!(m.len(), MAX_MEMBERS, "a huge registry is cut at the bound");
    }
}
