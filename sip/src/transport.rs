//! Sockets: UDP listeners and TCP/TLS connections (accepted, or opened on demand),
//! and what every received datagram or stream frame meets before the SIP core: the
//! source check ([`crate::source`]), the incoming queue's bounds (messages and bytes)
//! and parsing.
//!
//! Stream connections are bounded on every side a peer controls: their number (in
//! total and per source address, a slot taken before a byte is read), their silence
//! (no bytes, or a message left unfinished, for the idle timeout closes them), what
//! waits to be written to them (a peer that stops reading is disconnected), and the
//! framing ([`crate::framing`]). A failing accept (out of file descriptors) pauses the
//! listener instead of spinning on it.

use crate::build::{reject_unparsed, reject_untrusted};
use crate::framing::{FrameError, Framer};
use crate::metrics::{CodeLabel, MethodLabel, ReasonLabel, SipMetrics};
use crate::overload::RefusalGate;
use crate::parse::{method_name, parse, Info, Peer, Transport};
use crate::shard::Shards;
use crate::source::{kind, verdict, SourcePolicy, Untrusted, Verdict};
use bytes::Bytes;
use rsipstack::sip::{Method, SipMessage};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// A parsed message on its way to the endpoint core.
pub(crate) struct Incoming {
    pub msg: SipMessage,
    pub info: Info,
    pub peer: Peer,
    /// The bytes it was charged against the queue's byte bound.
    pub cost: usize,
    /// When it joined the queue (its sojourn is what admission decides on).
    pub queued_at: std::time::Instant,
}

pub(crate) type IncomingTx = mpsc::UnboundedSender<Incoming>;

/// The largest UDP datagram read.
pub(crate) const MAX_DATAGRAM: usize = 65_535;

/// Messages waiting for the SIP core past which received messages are dropped
/// unparsed: the queue's message bound (ten times the overload mark, so calls in
/// progress keep being served while new ones are refused).
pub const BACKLOG_LIMIT: i64 = 10 * crate::endpoint::OVERLOAD_BACKLOG;

/// Whether a message of `len` bytes may join an incoming queue that holds `messages`
/// messages of `bytes` bytes in all, with the byte bound `max_bytes`. The bounds are
/// checked before the message is added, so two receivers racing may overshoot them by
/// one message each (at most 64 KiB): the bound stays a bound.
pub fn queue_admits(messages: i64, bytes: i64, len: usize, max_bytes: usize) -> bool {
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    let max = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    messages < BACKLOG_LIMIT && bytes.saturating_add(len) <= max
}

/// What the receivers do with a request before it is queued ([`crate::overload`]).
enum Admit {
    Queue,
    /// A retransmission of an INVITE refused lately, or its ACK.
    Drop,
    /// A new INVITE while the core is late: its 503.
    Answer(Vec<u8>),
}

/// Everything a receiver (UDP or stream) needs to hand messages to the SIP core.
#[derive(Clone)]
pub(crate) struct Inbound {
    /// The queue of each shard of the core, in shard order ([`crate::shard`]).
    pub tx: Arc<[IncomingTx]>,
    /// Which shard a message goes to (by its Call-ID).
    pub shards: Shards,
    pub metrics: SipMetrics,
    pub sources: SourcePolicy,
    pub max_queued_bytes: usize,
    /// Set by each shard while its messages wait too long: new INVITEs for it are
    /// refused here.
    pub overload: Arc<RefusalGate>,
    /// Every request over UDP is answered at its source port (`sip.force_rport`).
    pub force_rport: bool,
}

impl Inbound {
    /// Refuses a new INVITE for `shard` while that shard is late, and drops what
    /// repeats a refusal.
    fn admit(
        &self,
        req: &rsipstack::sip::Request,
        info: &Info,
        shard: usize,
        now: std::time::Instant,
    ) -> Admit {
        let gate = &self.overload;
        match req.method {
            Method::Invite if info.to_tag.is_none() => {
                let m = &self.metrics;
                let repeat = gate.recent.contains(&info.call_id, info.cseq, now);
                match (repeat, gate.refusing(shard)) {
                    (true, true) => {
                        m.refused_repeats_dropped.inc();
                        return Admit::Drop;
                    }
                    // Refused while the shard was late, and retransmitted: its 503 was
                    // lost. The shard is on time again, so one more datagram is cheap,
                    // and without it the caller would wait for its Timer B (32 s).
                    (true, false) => {
                        m.refused_repeats_answered.inc();
                    }
                    (false, false) => {
                        gate.queued.insert(shard, &info.call_id, info.cseq, now);
                        return Admit::Queue;
                    }
                    // A retransmission of an INVITE the core already has: it answers it
                    // from the call's transaction.
                    (false, true) if gate.queued.contains(shard, &info.call_id, info.cseq, now) => {
                        return Admit::Queue;
                    }
                    (false, true) => {
                        m.overload_rejections.inc();
                        gate.recent.insert(&info.call_id, info.cseq, now);
                    }
                }
                m.responses_sent.get_or_create(&CodeLabel::of(503)).inc();
                let tag = crate::build::new_tag();
                Admit::Answer(crate::build::response(
                    req,
                    503,
                    Some(&tag),
                    &[("Retry-After", &gate.retry_after)],
                    None,
                ))
            }
            Method::Ack if gate.recent.contains(&info.call_id, info.cseq, now) => {
                self.metrics.refused_repeats_dropped.inc();
                Admit::Drop
            }
            // A caller that counts the 503 as a failure may CANCEL the INVITE (SIPp
            // does): it is answered here, without a transaction, as the core would
            // (no such transaction), so it neither queues nor retransmits for 32 s.
            Method::Cancel if gate.recent.contains(&info.call_id, info.cseq, now) => {
                self.metrics.refused_repeats_dropped.inc();
                let tag = crate::build::new_tag();
                Admit::Answer(crate::build::response(req, 481, Some(&tag), &[], None))
            }
            _ => Admit::Queue,
        }
    }

    /// Handles one received datagram or stream frame: dropped or refused if its source
    /// is not trusted, dropped if the queue is full, else parsed and queued; the answer
    /// to send back at once (a 400 for a malformed request, a stateless 403, a 503
    /// past capacity), if any, and where to: a message that parsed is answered where
    /// its Via says ([`Peer::reply_to`]), one that did not at its source.
    pub(crate) fn frame(&self, data: &[u8], peer: Peer) -> Option<(Vec<u8>, Peer)> {
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            return None; // keepalive (RFC 5626 CRLF)
        }
        let trusted = self.sources.is_trusted(peer.addr.ip());
        match verdict(trusted, self.sources.untrusted, kind(data)) {
            Verdict::Accept => {}
            Verdict::Drop => {
                self.metrics.untrusted_dropped.inc();
                return None;
            }
            Verdict::Reject => {
                let reply = reject_untrusted(data);
                match &reply {
                    Some(_) => self.metrics.untrusted_rejected.inc(),
                    None => self.metrics.untrusted_dropped.inc(),
                };
                return reply.map(|r| (r, peer));
            }
        }
        let m = &self.metrics;
        if !queue_admits(
            m.incoming_backlog.get(),
            m.incoming_backlog_bytes.get(),
            data.len(),
            self.max_queued_bytes,
        ) {
            // The core is far behind: drop what arrives, as a full socket buffer would
            // (UDP senders retransmit), instead of queueing without bound.
            m.backlog_drops.inc();
            return None;
        }
        match parse(data) {
            Ok((mut msg, mut info)) => {
                if self.force_rport {
                    info.reply_port = None;
                }
                let shard = self.shards.of(&info.call_id);
                let now = std::time::Instant::now();
                if let SipMessage::Request(req) = &mut msg {
                    crate::via::stamp(req, peer.addr);
                    let admit = self.admit(req, &info, shard, now);
                    if !matches!(admit, Admit::Queue) {
                        // The core counts what it is handed; what stops here is
                        // received all the same (repeats of refusals included).
                        m.requests_received
                            .get_or_create(&MethodLabel {
                                method: method_name(req.method),
                            })
                            .inc();
                    }
                    match admit {
                        Admit::Queue => {}
                        Admit::Drop => return None,
                        Admit::Answer(reply) => return Some((reply, peer.reply_to(&info))),
                    }
                }
                let cost = data.len();
                let cost_i64 = i64::try_from(cost).unwrap_or(i64::MAX);
                m.incoming_backlog.inc();
                m.incoming_backlog_bytes.inc_by(cost_i64);
                let incoming = Incoming {
                    msg,
                    info,
                    peer,
                    cost,
                    queued_at: now,
                };
                // `shards` and `tx` are made together: every shard has its queue.
                let sent = match self.tx.get(shard) {
                    Some(tx) => tx.send(incoming).is_ok(),
                    None => false,
                };
                if !sent {
                    m.incoming_backlog.dec();
                    m.incoming_backlog_bytes.dec_by(cost_i64);
                }
                None
            }
            Err(e) => {
                m.parse_errors.inc();
                tracing::debug!(%e, peer = %peer.addr, "malformed SIP message");
                reject_unparsed(data, e.status(), &e.to_string()).map(|r| (r, peer))
            }
        }
    }
}

/// TLS for SIP: the acceptor of TLS listeners and the connector for outbound TLS.
#[derive(Clone, Default)]
pub struct TlsSetup {
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub connector: Option<tokio_rustls::TlsConnector>,
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 4096;

/// Bytes that may wait to be written to one connection. A peer that reads normally
/// never gets near it (the kernel's send buffer comes first); one that stopped reading
/// is disconnected when it is reached, instead of buffering its traffic without bound.
pub const WRITE_QUEUE_BYTES: usize = 1 << 20;

/// How long the listener pauses after a failed accept (file descriptors exhausted,
/// kernel out of memory): the failing connection stays queued, so retrying at once
/// would spin a core.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Bounds of the TCP/TLS connections (the node fills them from `[sip]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Connections open at once from trusted sources; the node's own outbound ones
    /// have a budget of the same size besides (see `Table`).
    pub max_connections: usize,
    /// Connections open at once with one remote IP address.
    pub max_per_source: usize,
    /// A connection with no bytes for this long, or with a message started and not
    /// finished for this long, is closed.
    pub idle_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_connections: 1024,
            max_per_source: 64,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Why a connection is not opened or accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TotalLimit,
    SourceLimit,
}

impl Refusal {
    fn label(self) -> ReasonLabel {
        ReasonLabel {
            reason: match self {
                Refusal::TotalLimit => "total_limit",
                Refusal::SourceLimit => "source_limit",
            },
        }
    }
}

/// Whether one more connection fits, with `total` open and `from_source` open with
/// its remote address.
pub fn admit_connection(
    total: usize,
    from_source: usize,
    limits: &StreamLimits,
) -> Result<(), Refusal> {
    if total >= limits.max_connections {
        Err(Refusal::TotalLimit)
    } else if from_source >= limits.max_per_source {
        Err(Refusal::SourceLimit)
    } else {
        Ok(())
    }
}

/// One open (or opening) connection, as seen by senders.
#[derive(Clone)]
struct Conn {
    id: u64,
    tx: mpsc::UnboundedSender<Bytes>,
    /// Bytes queued for the writer and not yet written.
    queued: Arc<AtomicUsize>,
    /// Tells the connection's task to close (its write queue overflowed).
    close: Arc<Notify>,
}

enum Enqueue {
    Queued,
    Overflow,
    Closed,
}

impl Conn {
    fn new(id: u64) -> (Conn, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Conn {
            id,
            tx,
            queued: Arc::default(),
            close: Arc::default(),
        };
        (conn, rx)
    }

    fn enqueue(&self, data: Bytes) -> Enqueue {
        let len = data.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) > WRITE_QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return Enqueue::Overflow;
        }
        if self.tx.send(data).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return Enqueue::Closed;
        }
        Enqueue::Queued
    }
}

/// Connections from strangers (sources no trunk trusts), in `sip.untrusted =
/// "reject"` mode, where they may connect to be answered 403: a budget of their own,
/// 32 at once and one per address, so that they can never take the slots of trunks
/// or of the node's own outbound connections; idle, closed after 120 s (or the node's
/// own idle timeout, if shorter).
pub const STRANGER_LIMITS: StreamLimits = StreamLimits {
    max_connections: 32,
    max_per_source: 1,
    idle_timeout: Duration::from_secs(120),
};

/// The connection table of one transport: senders by remote address.
#[derive(Default)]
struct Table {
    conns: HashMap<SocketAddr, Conn>,
}

/// The counts the limits are checked against, one for TCP and TLS together: each kept
/// its own, so one address held twice `sip.tcp_max_connections_per_source` and the
/// node twice the descriptors the README told operators to allow (a review).
#[derive(Default)]
pub(crate) struct Budget {
    per_source: HashMap<IpAddr, usize>,
    /// Connections open with trusted sources (`limits`; with those the node reopened to
    /// answer them), with strangers ([`STRANGER_LIMITS`]), and the node's own outbound
    /// ones (`limits`' total, no per-address cap): three budgets, so that inbound connections (a trunk's wide
    /// network, each address up to its cap) can never leave the node unable to dial
    /// a callee's trunk, nor a trunk's connections keep the node from dialling back.
    trusted: usize,
    strangers: usize,
    outbound: usize,
}

/// [`Budget`] shared by the stream transports.
pub(crate) type SharedBudget = Arc<Mutex<Budget>>;

impl Budget {
    /// The count of a stranger's connection, or of anyone else's.
    fn count(&mut self, stranger: bool) -> &mut usize {
        if stranger {
            &mut self.strangers
        } else {
            &mut self.trusted
        }
    }

    /// Counts a connection with `ip` if its budget allows it: a stranger's against
    /// [`STRANGER_LIMITS`], anyone else's against `limits`.
    fn reserve(
        &mut self,
        ip: IpAddr,
        limits: &StreamLimits,
        stranger: bool,
    ) -> Result<(), Refusal> {
        let from_source = self.per_source.get(&ip).copied().unwrap_or(0);
        let limits = if stranger { &STRANGER_LIMITS } else { limits };
        let count = self.count(stranger);
        admit_connection(*count, from_source, limits)?;
        *count += 1;
        *self.per_source.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    /// Counts an outbound connection if the outbound budget allows it.
    fn reserve_outbound(&mut self, limits: &StreamLimits) -> Result<(), Refusal> {
        if self.outbound >= limits.max_connections {
            return Err(Refusal::TotalLimit);
        }
        self.outbound += 1;
        Ok(())
    }

    fn release_outbound(&mut self) {
        self.outbound = self.outbound.saturating_sub(1);
    }

    fn release(&mut self, ip: IpAddr, stranger: bool) {
        let count = self.count(stranger);
        *count = count.saturating_sub(1);
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }
}

/// A connection's place in the limits, held by its task; given back when dropped.
struct Slot {
    budget: SharedBudget,
    ip: IpAddr,
    stranger: bool,
    /// One the node opened (the outbound budget).
    outbound: bool,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if self.outbound {
            budget.release_outbound();
        } else {
            budget.release(self.ip, self.stranger);
        }
        self.gauge.dec();
    }
}

/// Open stream connections (TCP, or TLS over TCP) by remote address; a send to an
/// unknown address connects. Outbound TLS verifies the far end's certificate for its
/// IP address (trunks are configured by address).
#[derive(Clone)]
pub(crate) struct StreamConnections {
    table: Arc<Mutex<Table>>,
    budget: SharedBudget,
    next_id: Arc<AtomicU64>,
    inbound: Inbound,
    transport: Transport,
    tls: TlsSetup,
    limits: StreamLimits,
}

impl StreamConnections {
    pub fn new(
        inbound: Inbound,
        transport: Transport,
        tls: TlsSetup,
        limits: StreamLimits,
        budget: SharedBudget,
    ) -> Self {
        StreamConnections {
            table: Arc::default(),
            budget,
            next_id: Arc::default(),
            inbound,
            transport,
            tls,
            limits,
        }
    }

    fn metrics(&self) -> &SipMetrics {
        &self.inbound.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a connection with `ip`, or counts the refusal.
    fn reserve(&self, ip: IpAddr, stranger: bool) -> Option<Slot> {
        self.take_slot(ip, stranger, false)
    }

    /// Takes a slot for a connection the node opens to `ip` (the outbound budget).
    fn reserve_outbound(&self, ip: IpAddr) -> Option<Slot> {
        self.take_slot(ip, false, true)
    }

    fn take_slot(&self, ip: IpAddr, stranger: bool, outbound: bool) -> Option<Slot> {
        let reserved = {
            let mut budget = self.budget();
            if outbound {
                budget.reserve_outbound(&self.limits)
            } else {
                budget.reserve(ip, &self.limits, stranger)
            }
        };
        match reserved {
            Ok(()) => {
                self.metrics().stream_connections.inc();
                Some(Slot {
                    budget: self.budget.clone(),
                    ip,
                    stranger,
                    outbound,
                    gauge: self.metrics().stream_connections.clone(),
                })
            }
            Err(r) => {
                self.metrics()
                    .connections_refused
                    .get_or_create(&r.label())
                    .inc();
                None
            }
        }
    }

    fn closed(&self, reason: &'static str) {
        self.metrics()
            .connections_closed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Sends `data` to `addr` on the connection open with it, or on a new one: a new
    /// connection only toward a trusted source (a trunk), never toward a stranger, so
    /// that what is sent to strangers (their 403s) cannot make the node open, and hold
    /// in the trunks' budget, connections to any address they name. The trust check
    /// runs only when there is no connection to use (not for every message).
    ///
    /// A response whose connection has closed goes to the source address at its Via's
    /// sent-by port (RFC 3261 18.2.2), on a connection open there or a new one, not to
    /// the closed connection's (ephemeral) source port. That new connection is the
    /// source's, counted as if it had opened it (its address's cap, the inbound
    /// budget): the source chose the port and can keep it open, so reopened connections
    /// must not use up the budget the node dials callees' trunks from.
    pub fn send(&self, addr: SocketAddr, data: Bytes) {
        let Some(mut data) = self.queue_on_open(addr, data, None) else {
            return;
        };
        let mut addr = addr;
        let reopen = crate::via::reopen_port(&data, self.transport);
        if let Some(port) = reopen {
            if port != addr.port() {
                addr.set_port(port);
                data = match self.queue_on_open(addr, data, None) {
                    Some(data) => data,
                    None => return,
                };
            }
        }
        if !self.inbound.sources.is_trusted(addr.ip()) {
            tracing::debug!(%addr, "no connection with this stranger; message not sent");
            self.metrics()
                .connections_refused
                .get_or_create(&ReasonLabel {
                    reason: "untrusted",
                })
                .inc();
            return;
        }
        let slot = match reopen {
            Some(_) => self.reserve(addr.ip(), false),
            None => self.reserve_outbound(addr.ip()),
        };
        let Some(slot) = slot else {
            tracing::warn!(%addr, "SIP connection limit reached; message not sent");
            return;
        };
        self.dial(addr, data, slot);
    }

    /// An immediate answer (a 403 to a stranger, a 400) to a message read on the
    /// connection `id`: on that connection while it is open, else nowhere.
    fn reply(&self, addr: SocketAddr, id: u64, data: Bytes) {
        if self.queue_on_open(addr, data, Some(id)).is_some() {
            tracing::debug!(%addr, "the connection a reply was for has closed; not sent");
        }
    }

    /// Queues `data` on the connection open with `addr` (connection `id` only, if
    /// given), closing one whose peer stopped reading. Gives `data` back when there is
    /// no such connection, or it has just ended: whether to open one is the caller's.
    fn queue_on_open(&self, addr: SocketAddr, data: Bytes, id: Option<u64>) -> Option<Bytes> {
        // One lock and no copy on the common path.
        let mut table = self.lock();
        let Some(conn) = table
            .conns
            .get(&addr)
            .filter(|c| id.is_none_or(|id| c.id == id))
        else {
            return Some(data);
        };
        match conn.enqueue(data.clone()) {
            Enqueue::Queued => None,
            Enqueue::Overflow => {
                conn.close.notify_one();
                table.conns.remove(&addr);
                drop(table);
                tracing::info!(%addr, "SIP peer stopped reading; connection closed");
                self.closed("write_queue");
                None
            }
            Enqueue::Closed => {
                table.conns.remove(&addr);
                Some(data)
            }
        }
    }

    /// Opens a connection to `addr` in the budget `slot` was taken from and sends
    /// `data` on it.
    fn dial(&self, addr: SocketAddr, data: Bytes, slot: Slot) {
        let (conn, rx) = Conn::new(self.next_id.fetch_add(1, Ordering::Relaxed));
        conn.enqueue(data);
        self.lock().conns.insert(addr, conn.clone());
        let this = self.clone();
        tokio::spawn(async move {
            // Bounded: a peer that drops SYNs would hold the slot for the kernel's
            // two minutes of retries.
            let connect = tokio::time::timeout(HANDSHAKE, TcpStream::connect(addr)).await;
            let tcp = match connect.unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            }) {
                Ok(s) => s,
                Err(e) => {
                    // Counted, logged at debug: a peer can make the node try often
                    // (responses to a connection it closed), and trunks that stop
                    // answering are reported by the trunk keepalives.
                    this.metrics().connect_failures.inc();
                    tracing::debug!(%addr, %e, "TCP connect failed");
                    return this.forget(addr, conn.id);
                }
            };
            let _ = tcp.set_nodelay(true);
            if this.transport != Transport::Tls {
                return this.run(tcp, addr, conn, rx, slot).await;
            }
            let Some(connector) = this.tls.connector.clone() else {
                tracing::warn!(%addr, "no TLS client settings; cannot connect");
                return this.forget(addr, conn.id);
            };
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            match this.handshake(addr, connector.connect(name, tcp)).await {
                Some(tls) => this.run(tls, addr, conn, rx, slot).await,
                None => this.forget(addr, conn.id),
            }
        });
    }

    /// A TLS handshake within [`HANDSHAKE`]; a failure or timeout is logged and counted.
    async fn handshake<S, E: std::fmt::Display>(
        &self,
        addr: SocketAddr,
        shake: impl std::future::Future<Output = Result<S, E>>,
    ) -> Option<S> {
        let why = match tokio::time::timeout(HANDSHAKE, shake).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        // Counted, and logged at debug only: anyone who can connect can fail as many
        // handshakes as it likes, one line each flooded the log (a review).
        tracing::debug!(%addr, %why, "TLS handshake failed");
        self.metrics().tls_handshake_failures.inc();
        None
    }

    /// Removes the connection `id` of `addr` from the table (not a newer one).
    fn forget(&self, addr: SocketAddr, id: u64) {
        let mut table = self.lock();
        if table.conns.get(&addr).is_some_and(|c| c.id == id) {
            table.conns.remove(&addr);
        }
    }

    pub fn spawn_listener(&self, listener: TcpListener) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        this.metrics().accept_errors.inc();
                        use std::io::ErrorKind::*;
                        if !matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
                            // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays in the
                            // backlog and accept fails again at once; pause, don't spin.
                            tracing::warn!(%e, "SIP accept failed; pausing the listener");
                            tokio::time::sleep(ACCEPT_PAUSE).await;
                        }
                        continue;
                    }
                };
                if let Some((slot, stream)) = this.admit(stream, addr) {
                    let conn = this.clone();
                    tokio::spawn(async move { conn.serve_accepted(stream, addr, slot).await });
                }
            }
        });
    }

    /// The checks of a new inbound connection before a byte is read: a trusted source
    /// (in reject mode strangers may connect, to be answered 403), and a free slot.
    /// A refused connection is closed at once.
    fn admit(&self, stream: TcpStream, addr: SocketAddr) -> Option<(Slot, TcpStream)> {
        let sources = &self.inbound.sources;
        if sources.untrusted == Untrusted::Drop && !sources.is_trusted(addr.ip()) {
            self.metrics().untrusted_dropped.inc();
            self.metrics()
                .connections_refused
                .get_or_create(&ReasonLabel {
                    reason: "untrusted",
                })
                .inc();
            return None;
        }
        let stranger = !sources.is_trusted(addr.ip());
        let Some(slot) = self.reserve(addr.ip(), stranger) else {
            tracing::debug!(%addr, stranger, "SIP connection refused: limit reached");
            return None;
        };
        let _ = stream.set_nodelay(true);
        Some((slot, stream))
    }

    async fn serve_accepted(&self, stream: TcpStream, addr: SocketAddr, slot: Slot) {
        let (conn, rx) = Conn::new(self.next_id.fetch_add(1, Ordering::Relaxed));
        match &self.tls.acceptor {
            None => {
                self.lock().conns.insert(addr, conn.clone());
                self.run(stream, addr, conn, rx, slot).await
            }
            Some(acceptor) => {
                if let Some(tls) = self.handshake(addr, acceptor.accept(stream)).await {
                    self.lock().conns.insert(addr, conn.clone());
                    self.run(tls, addr, conn, rx, slot).await
                }
            }
        }
    }

    async fn run<S>(
        &self,
        stream: S,
        addr: SocketAddr,
        conn: Conn,
        mut rx: mpsc::UnboundedReceiver<Bytes>,
        slot: Slot,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let queued = conn.queued.clone();
        let writer_task = tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                let ok = writer.write_all(&data).await.is_ok() && writer.flush().await.is_ok();
                queued.fetch_sub(data.len(), Ordering::Relaxed);
                if !ok {
                    break;
                }
            }
        });
        let peer = Peer {
            transport: self.transport,
            addr,
        };
        let idle = if slot.stranger {
            self.limits.idle_timeout.min(STRANGER_LIMITS.idle_timeout)
        } else {
            self.limits.idle_timeout
        };
        let mut framer = Framer::new();
        let mut deadline = Instant::now() + idle;
        'read: loop {
            let partial_before = framer.buffered() > 0;
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, reader.read_buf(framer.read_buffer(READ_CHUNK))) => r,
                _ = conn.close.notified() => break 'read,
            };
            match read {
                Err(_) => {
                    tracing::debug!(%addr, "SIP connection idle; closed");
                    self.closed("idle");
                    break;
                }
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
            }
            let mut completed = false;
            loop {
                match framer.next_message() {
                    Ok(Some(msg)) => {
                        completed = true;
                        if let Some((reply, _)) = self.inbound.frame(&msg, peer) {
                            self.reply(addr, conn.id, Bytes::from(reply));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.framing_failed(addr, e);
                        break 'read;
                    }
                }
            }
            // Silence is measured from the last byte; an unfinished message from its
            // first byte, so dribbling cannot hold a connection open for ever.
            if !partial_before || completed || framer.buffered() == 0 {
                deadline = Instant::now() + idle;
            }
        }
        self.forget(addr, conn.id);
        writer_task.abort();
    }

    fn framing_failed(&self, addr: SocketAddr, e: FrameError) {
        // Counted, logged at debug only (as a failed handshake).
        tracing::debug!(%addr, %e, "SIP stream cannot be framed; connection closed");
        self.metrics().parse_errors.inc();
        self.closed("framing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{TrustedSources, Untrusted};

    const OPTIONS: &[u8] = b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    struct Only(IpAddr);

    impl TrustedSources for Only {
        fn is_trusted(&self, ip: IpAddr) -> bool {
            ip == self.0
        }
    }

    fn inbound(untrusted: Untrusted) -> (Inbound, mpsc::UnboundedReceiver<Incoming>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inbound = Inbound {
            tx: Arc::new([tx]),
            shards: Shards::new(1),
            metrics: SipMetrics::default(),
            sources: SourcePolicy {
                trusted: Arc::new(Only("127.0.0.1".parse().unwrap())),
                untrusted,
            },
            max_queued_bytes: 4096,
            overload: Arc::new(RefusalGate::new(5, 1)),
            force_rport: false,
        };
        (inbound, rx)
    }

    fn peer(addr: &str) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn the_incoming_queue_is_bounded_in_messages_and_bytes() {
        let (inb, mut rx) = inbound(Untrusted::Drop);
        let m = &inb.metrics;
        assert!(inb.frame(OPTIONS, peer("127.0.0.1:5070")).is_none());
        assert_eq!(rx.try_recv().map(|i| i.cost).ok(), Some(OPTIONS.len()));
        assert_eq!(m.incoming_backlog.get(), 1);
        assert_eq!(m.incoming_backlog_bytes.get(), OPTIONS.len() as i64);
        m.incoming_backlog.set(BACKLOG_LIMIT);
        assert!(inb.frame(OPTIONS, peer("127.0.0.1:5070")).is_none());
        assert!(rx.try_recv().is_err(), "dropped at the message bound");
        assert_eq!(m.backlog_drops.get(), 1);
        m.incoming_backlog.set(0);
        m.incoming_backlog_bytes
            .set(4096 - OPTIONS.len() as i64 + 1);
        assert!(inb.frame(OPTIONS, peer("127.0.0.1:5070")).is_none());
        assert!(rx.try_recv().is_err(), "dropped at the byte bound");
        assert_eq!(m.backlog_drops.get(), 2);
    }

    fn request(method: &str, call_id: &str, cseq: u32, to_tag: &str) -> Vec<u8> {
        format!(
            "{method} sip:0501234567@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{call_id}{cseq}\r\n\
From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:0501234567@127.0.0.1>{to_tag}\r\nCall-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    /// While the core is late (the gate set by it), a new INVITE gets its 503 from
    /// the receiver and is not queued; its retransmission and its ACK are dropped; the
    /// messages of calls in progress, the retransmission of an INVITE queued before
    /// the refusals began, and a retry with a new CSeq are handled as usual.
    #[test]
    fn a_late_core_has_new_invites_refused_at_the_receiver() {
        let (inb, mut rx) = inbound(Untrusted::Drop);
        let from = peer("127.0.0.1:5070");
        let m = inb.metrics.clone();
        let taken = request("INVITE", "taken", 1, "");
        assert!(inb.frame(&taken, from).is_none(), "admitting: queued");
        assert!(rx.try_recv().is_ok());
        inb.overload.set(0, true);
        let invite = request("INVITE", "new", 1, "");
        // Each row: (message, answered with, queued, repeats dropped so far).
        let rows: Vec<(Vec<u8>, Option<&str>, bool, u64)> = vec![
            // The call taken before: its retransmission goes to the core.
            (taken.clone(), None, true, 0),
            (invite.clone(), Some("SIP/2.0 503 "), false, 0),
            (invite.clone(), None, false, 1),
            (request("ACK", "new", 1, ";tag=x"), None, false, 2),
            (
                request("CANCEL", "new", 1, ""),
                Some("SIP/2.0 481 "),
                false,
                3,
            ),
            (
                request("INVITE", "new", 2, ""),
                Some("SIP/2.0 503 "),
                false,
                3,
            ),
            (request("BYE", "up", 2, ";tag=x"), None, true, 3),
            (request("INVITE", "up", 3, ";tag=x"), None, true, 3),
            (request("ACK", "up", 1, ";tag=x"), None, true, 3),
            (request("CANCEL", "up", 1, ""), None, true, 3),
            (OPTIONS.to_vec(), None, true, 3),
        ];
        for (i, (msg, answer, queued, repeats)) in rows.into_iter().enumerate() {
            let reply = inb
                .frame(&msg, from)
                .map(|(r, _)| String::from_utf8(r).unwrap());
            match answer {
                Some(status) => {
                    let reply = reply.unwrap_or_else(|| panic!("row {i}: no answer"));
                    assert!(reply.starts_with(status), "row {i}: {reply}");
                    if status.contains("503") {
                        assert!(reply.contains("Retry-After: 5\r\n"), "row {i}: {reply}");
                    }
                }
                None => assert!(reply.is_none(), "row {i}: {reply:?}"),
            }
            assert_eq!(rx.try_recv().is_ok(), queued, "row {i}: queued");
            assert_eq!(m.refused_repeats_dropped.get(), repeats, "row {i}");
        }
        assert_eq!(m.overload_rejections.get(), 2);
        inb.overload.set(0, false);
        // On time again: a refused INVITE retransmitted (its 503 was lost) gets its 503
        // again, is not queued as a new call, and its ACK is still dropped.
        let again = inb
            .frame(&invite, from)
            .map(|(r, _)| String::from_utf8(r).unwrap());
        assert!(again.is_some_and(|r| r.starts_with("SIP/2.0 503 ")));
        assert!(
            rx.try_recv().is_err(),
            "a refused INVITE is not queued later"
        );
        assert_eq!(m.refused_repeats_answered.get(), 1);
        assert!(inb
            .frame(&request("ACK", "new", 1, ";tag=x"), from)
            .is_none());
        assert!(rx.try_recv().is_err());
        assert_eq!(m.overload_rejections.get(), 2, "not a new refusal");
        // Everything that stopped at the receiver was received: two refusals and two
        // repeats of INVITEs, two ACKs and a CANCEL of refused calls (the queued ones
        // are counted by the core).
        let received = |method| {
            m.requests_received
                .get_or_create(&MethodLabel { method })
                .get()
        };
        assert_eq!(
            (received("INVITE"), received("ACK"), received("CANCEL")),
            (4, 2, 1)
        );
        assert!(inb
            .frame(&request("INVITE", "later", 1, ""), from)
            .is_none());
        assert!(rx.try_recv().is_ok(), "admitting again: queued");
    }

    /// With two shards, each message goes to the queue of its Call-ID's shard, and a
    /// late shard has only its own new INVITEs refused: calls hashed to the other shard
    /// are admitted.
    #[test]
    fn messages_go_to_their_shard_and_only_a_late_shard_refuses() {
        let (tx0, mut rx0) = mpsc::unbounded_channel();
        let (tx1, mut rx1) = mpsc::unbounded_channel();
        let (mut one, _) = inbound(Untrusted::Drop);
        one.tx = Arc::new([tx0, tx1]);
        one.shards = Shards::new(2);
        one.overload = Arc::new(RefusalGate::new(5, 2));
        let inb = one;
        // From an ephemeral source port (the Via names 5070).
        let from = peer("127.0.0.1:40000");
        // A Call-ID of each shard.
        let on = |shard: usize| {
            (0..)
                .map(|i| format!("c{i}"))
                .find(|id| inb.shards.of(id) == shard)
                .unwrap()
        };
        let (a, b) = (on(0), on(1));
        for (call_id, shard) in [(&a, 0), (&b, 1)] {
            assert!(inb
                .frame(&request("INVITE", call_id, 1, ""), from)
                .is_none());
            assert!(inb
                .frame(&request("BYE", call_id, 2, ";tag=x"), from)
                .is_none());
            let (mine, other) = if shard == 0 {
                (&mut rx0, &mut rx1)
            } else {
                (&mut rx1, &mut rx0)
            };
            for _ in 0..2 {
                assert_eq!(mine.try_recv().unwrap().info.call_id, *call_id);
            }
            assert!(other.try_recv().is_err(), "nothing on the other shard");
        }
        inb.overload.set(1, true);
        let refused = inb.frame(&request("INVITE", &b, 3, ""), from);
        let (reply, to) = refused.expect("refused");
        assert!(reply.starts_with(b"SIP/2.0 503 "));
        // The Via names 127.0.0.1:5070 without rport: the 503 goes there (RFC 3261
        // 18.2.2), whatever port the INVITE came from.
        assert_eq!(to.addr, "127.0.0.1:5070".parse().unwrap());
        assert!(rx1.try_recv().is_err(), "refused, not queued");
        assert!(inb.frame(&request("INVITE", &a, 3, ""), from).is_none());
        assert_eq!(
            rx0.try_recv().unwrap().info.call_id,
            a,
            "the calm shard admits"
        );
    }

    #[test]
    fn queue_bounds() {
        let rows = [
            (0, 0, 100, 1000, true),
            (0, 900, 100, 1000, true),
            (0, 901, 100, 1000, false),
            (BACKLOG_LIMIT - 1, 0, 100, 1000, true),
            (BACKLOG_LIMIT, 0, 100, 1000, false),
            (0, i64::MAX, 100, 1000, false),
            (0, 0, usize::MAX, usize::MAX, true),
        ];
        for (messages, bytes, len, max, want) in rows {
            assert_eq!(
                queue_admits(messages, bytes, len, max),
                want,
                "{messages} {bytes} {len} {max}"
            );
        }
    }

    #[test]
    fn untrusted_sources_get_nothing_or_one_403() {
        let (inb, mut rx) = inbound(Untrusted::Drop);
        assert!(inb.frame(OPTIONS, peer("127.0.0.2:5070")).is_none());
        assert!(rx.try_recv().is_err(), "never reaches the core");
        assert_eq!(inb.metrics.untrusted_dropped.get(), 1);

        let (inb, mut rx) = inbound(Untrusted::Reject);
        let (reply, to) = inb.frame(OPTIONS, peer("127.0.0.2:5070")).expect("a 403");
        assert!(reply.starts_with(b"SIP/2.0 403 Forbidden\r\n"));
        assert_eq!(
            to,
            peer("127.0.0.2:5070"),
            "a stranger's 403 goes to its source"
        );
        assert!(rx.try_recv().is_err(), "no transaction either");
        let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        assert!(inb.frame(response, peer("127.0.0.2:5070")).is_none());
        assert!(
            rx.try_recv().is_err(),
            "responses from strangers are dropped"
        );
        assert_eq!(inb.metrics.untrusted_rejected.get(), 1);
        assert_eq!(inb.metrics.untrusted_dropped.get(), 1);
    }

    #[test]
    fn connection_limits() {
        let limits = StreamLimits {
            max_connections: 10,
            max_per_source: 3,
            idle_timeout: Duration::from_secs(1),
        };
        let rows = [
            (0, 0, Ok(())),
            (9, 2, Ok(())),
            (10, 0, Err(Refusal::TotalLimit)),
            (5, 3, Err(Refusal::SourceLimit)),
            (10, 3, Err(Refusal::TotalLimit)),
        ];
        for (total, from_source, want) in rows {
            assert_eq!(
                admit_connection(total, from_source, &limits),
                want,
                "{total} {from_source}"
            );
        }
        let mut table = Budget::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            table.reserve(a, &limits, false).unwrap();
        }
        assert_eq!(table.reserve(a, &limits, false), Err(Refusal::SourceLimit));
        table.release(a, false);
        assert_eq!(table.reserve(a, &limits, false), Ok(()));
        for _ in 0..3 {
            table.release(a, false);
        }
        assert!(
            table.per_source.is_empty() && table.trusted + table.strangers + table.outbound == 0,
            "nothing kept"
        );
    }

    /// The node's own connections have a budget of their own: trunks' inbound
    /// connections filling theirs leave the node able to dial, and dialling out
    /// takes nothing of the per-address cap of inbound ones.
    #[test]
    fn inbound_connections_never_keep_the_node_from_dialling() {
        let limits = StreamLimits {
            max_connections: 4,
            max_per_source: 2,
            idle_timeout: Duration::from_secs(1),
        };
        let mut table = Budget::default();
        let trunk = |i: u8| -> IpAddr { format!("10.0.0.{i}").parse().unwrap() };
        for i in 0..4 {
            assert_eq!(table.reserve(trunk(i / 2), &limits, false), Ok(()));
        }
        assert_eq!(
            table.reserve(trunk(9), &limits, false),
            Err(Refusal::TotalLimit)
        );
        for _ in 0..4 {
            assert_eq!(table.reserve_outbound(&limits), Ok(()), "dialling out");
        }
        assert_eq!(table.reserve_outbound(&limits), Err(Refusal::TotalLimit));
        table.release_outbound();
        assert_eq!(table.reserve_outbound(&limits), Ok(()));
        // A trunk at its per-address cap inbound: the node still dials it.
        assert_eq!(
            table.reserve(trunk(0), &limits, false),
            Err(Refusal::TotalLimit)
        );
        assert_eq!(table.per_source.get(&trunk(0)), Some(&2));
    }

    /// Strangers (reject mode) fill a budget of their own, one per address, and the
    /// trusted sources' connections are still admitted when it is full.
    #[test]
    fn strangers_cannot_take_the_trunks_connections() {
        let limits = StreamLimits {
            max_connections: 10,
            max_per_source: 3,
            idle_timeout: Duration::from_secs(1),
        };
        let mut table = Budget::default();
        let stranger = |i: usize| -> IpAddr { format!("192.0.2.{}", i % 250).parse().unwrap() };
        let mut held = 0;
        for i in 0..100 {
            if table.reserve(stranger(i), &limits, true).is_ok() {
                held += 1;
            }
        }
        assert_eq!(held, STRANGER_LIMITS.max_connections);
        let first = stranger(0);
        table.release(first, true);
        table.release(stranger(1), true);
        assert_eq!(table.reserve(first, &limits, true), Ok(()));
        assert_eq!(
            table.reserve(first, &limits, true),
            Err(Refusal::SourceLimit),
            "one per address"
        );
        let trunk: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(
                table.reserve(trunk, &limits, false),
                Ok(()),
                "the trunk still connects"
            );
        }
        assert_eq!(
            table.reserve(trunk, &limits, false),
            Err(Refusal::SourceLimit)
        );
    }

    #[test]
    fn a_peer_that_stops_reading_overflows_its_write_queue() {
        let (conn, _rx) = Conn::new(1);
        let chunk = Bytes::from(vec![b'x'; WRITE_QUEUE_BYTES / 4]);
        for _ in 0..4 {
            assert!(matches!(conn.enqueue(chunk.clone()), Enqueue::Queued));
        }
        assert!(matches!(
            conn.enqueue(Bytes::from_static(b"x")),
            Enqueue::Overflow
        ));
        assert_eq!(conn.queued.load(Ordering::Relaxed), WRITE_QUEUE_BYTES);
    }

    /// Plain TCP connections of `inb` (10 at most, 3 per source).
    fn tcp_connections(inb: &Inbound) -> StreamConnections {
        let limits = StreamLimits {
            max_connections: 10,
            max_per_source: 3,
            idle_timeout: Duration::from_secs(5),
        };
        StreamConnections::new(
            inb.clone(),
            Transport::Tcp,
            TlsSetup::default(),
            limits,
            SharedBudget::default(),
        )
    }

    /// A message toward a stranger with no connection open is not sent: the node never
    /// dials a stranger (the 403s of `sip.untrusted = "reject"` go on the stranger's
    /// own connection only), so strangers cannot make it open, and hold in the trunks'
    /// budget, connections to any address they name. A trunk is dialled.
    #[tokio::test]
    async fn strangers_are_never_dialled() {
        use tokio::io::AsyncReadExt;
        let (inb, _rx) = inbound(Untrusted::Reject);
        let conns = tcp_connections(&inb);
        let stranger = TcpListener::bind("127.0.0.2:0").await.unwrap();
        conns.send(stranger.local_addr().unwrap(), Bytes::from_static(OPTIONS));
        assert!(conns.lock().conns.is_empty(), "no connection opened");
        {
            let budget = conns.budget();
            assert_eq!(budget.trusted + budget.strangers, 0, "no slot taken");
        }
        let untrusted = ReasonLabel {
            reason: "untrusted",
        };
        assert_eq!(
            inb.metrics
                .connections_refused
                .get_or_create(&untrusted)
                .get(),
            1
        );

        let trunk = TcpListener::bind("127.0.0.1:0").await.unwrap();
        conns.send(trunk.local_addr().unwrap(), Bytes::from_static(OPTIONS));
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), trunk.accept())
            .await
            .expect("the trunk is dialled")
            .unwrap();
        let mut got = vec![0u8; OPTIONS.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, OPTIONS);
    }

    /// RFC 3261 18.2.2: a response toward a connection that has closed (here, a source
    /// port nothing listens on any more) goes on a new connection to the source address
    /// at its Via's sent-by port; a second response finds that connection open.
    #[tokio::test]
    async fn a_response_whose_connection_closed_goes_to_the_vias_port() {
        use tokio::io::AsyncReadExt;
        let (inb, _rx) = inbound(Untrusted::Reject);
        let conns = tcp_connections(&inb);
        let listening = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let via_port = listening.local_addr().unwrap().port();
        // The closed connection's source port: bound once, nothing listens there now.
        let gone = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let response = |code: u16| {
            Bytes::from(format!(
                "SIP/2.0 {code} X\r\nVia: SIP/2.0/TCP 127.0.0.1:{via_port};branch=z9hG4bK1;received=127.0.0.1\r\nContent-Length: 0\r\n\r\n"
            ))
        };
        conns.send(gone, response(180));
        conns.send(gone, response(200));
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), listening.accept())
            .await
            .expect("the Via's port is dialled")
            .unwrap();
        let want = [response(180), response(200)].concat();
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want, "both responses, on one connection");
        assert!(!conns.lock().conns.contains_key(&gone));
    }

    /// Connections reopened for responses are their source's (its cap, the inbound
    /// budget): a source that closes its connections and names a new Via port each
    /// time cannot take the outbound budget the node dials trunks from (with all of it
    /// reopened, the next request to a trunk found no slot).
    #[tokio::test]
    async fn reopened_connections_do_not_use_up_the_outbound_budget() {
        let (inb, _rx) = inbound(Untrusted::Reject);
        let conns = tcp_connections(&inb);
        let mut listeners = Vec::new();
        for i in 0..10 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            listeners.push(l);
            // Each "closed connection" is a port nothing has on the table.
            let gone: SocketAddr = format!("127.0.0.1:{}", 1 + i).parse().unwrap();
            conns.send(
                gone,
                Bytes::from(format!(
                    "SIP/2.0 180 X\r\nVia: SIP/2.0/TCP 127.0.0.1:{port};branch=z9hG4bK{i}\r\nContent-Length: 0\r\n\r\n"
                )),
            );
        }
        {
            let budget = conns.budget();
            assert_eq!(budget.trusted, 3, "the source's cap of 3");
            assert_eq!(budget.outbound, 0, "none from the outbound budget");
        }
        let trunk = TcpListener::bind("127.0.0.1:0").await.unwrap();
        conns.send(trunk.local_addr().unwrap(), Bytes::from_static(OPTIONS));
        assert_eq!(conns.budget().outbound, 1);
        tokio::time::timeout(Duration::from_secs(5), trunk.accept())
            .await
            .expect("the trunk is dialled")
            .unwrap();
    }
}
