//! The RTP port pool. Each lease is an even port with its bound UDP socket; when the
//! [`MediaPort`] drops (call ended, actor crashed) the port goes to the back of the
//! queue, so a just-freed port is reused last and stray packets find no new call.
//! The pool also carries the node's source policy ([`Latch`]) to the relays of the
//! ports it leases.
//!
//! **Sockets stay bound and are reused.** Creating and closing two UDP sockets per call
//! was a visible share of the kernel's work at 3,000 calls/s (`inet_create`,
//! `sk_alloc`, socket destruction and its RCU callbacks). A released port keeps its
//! socket in the free queue and its next lease reuses it; a port is bound afresh only
//! on its first lease, when its socket could not be kept, or after it was busy in
//! another process.
//!
//! - *Nothing of the previous call reaches the next.* Datagrams still queued when the
//!   port was released (the end of the call's audio) are read and discarded before the
//!   socket is leased again, at most [`DRAIN_MAX`] of them, counted in
//!   `tsunagu_rtp_stray_packets_drained_total`. If more are queued, the socket is
//!   closed and the port bound afresh, as before.
//! - *A free port receives nothing.* At release the socket is connected to its own
//!   address, so the kernel delivers it only datagrams sent from itself (none): what is
//!   sprayed at a free port finds no socket and is refused exactly as at an unbound
//!   port (ICMP port unreachable), using no receive memory. The lease disconnects it
//!   again. This was chosen over shrinking a free socket's receive buffer to the
//!   kernel minimum, which still lets it queue datagrams while the queue is under about
//!   4.6 KB, and always one more of any size (a reassembled 64 KB datagram counts over
//!   100 KB): never read while the port is free, over thousands of free ports a single
//!   spray would pin hundreds of MB of the kernel's UDP memory (`udp_mem`), which live
//!   calls and SIP share. The connect and disconnect are one system call each.
//! - *What a free port holds.* A descriptor and the socket's kernel structures. Their
//!   number is bounded by the range, as at full load, and by default also by half the
//!   descriptors the process may open (the soft `RLIMIT_NOFILE`; the unit's and
//!   compose's 65,536 keep the whole default range), so that a node started from a
//!   shell's 1,024 does not run out of descriptors for SIP connections and files once
//!   calls have cycled through its range. Released sockets beyond the bound are closed,
//!   as before; [`PortPool::set_idle_sockets_max`] sets another bound. The end of a
//!   call's audio queued at its release stays until the next lease drains it: at most
//!   the receive buffer the socket had in use. Kept sockets never cost a call: when
//!   the process is out of descriptors a lease takes a kept socket from anywhere in
//!   the queue and closes `RELEASE_ON_EMFILE` (256) more; and a lease stops at the first
//!   out-of-descriptors error, trying at most [`MAX_BIND_ATTEMPTS`] ports in all.
//! - *Free sockets stay tokio sockets*, registered with the reactor of the runtime
//!   that leased them: taking them out at release (`into_std`) and registering them
//!   again at lease (`from_std`) is an `epoll_ctl` pair whose removal frees its entry
//!   through RCU, and measured 1.9 µs of the 2.6 µs a reused lease took that way
//!   (`ports/reactor_register_and_deregister` in the benches). A connected-to-itself
//!   free socket gets no packets, so it costs the reactor nothing. But a tokio socket
//!   works only with the reactor that registered it: one kept from a runtime that has
//!   ended (a test's, a restarted node's) would be leased dead, the relay's
//!   `readable()` failing at once, forever. So each kept socket carries the id of its
//!   runtime, and a lease from another runtime registers it again with its own.
//!   Releasing needs no runtime (a port dropped outside one is kept all the same).
//! - The drain reads the descriptor itself, not through tokio, whose cached readiness
//!   may not yet know of a datagram that arrived.
//!
//! `Drop` makes its one system call (`connect`) before taking the pool's lock, which is
//! held only to push the port.

use crate::latch::Latch;
use crate::{MediaError, MediaMetrics};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// At most this many ports are tried by one lease: past them the lease fails
/// (`PortsExhausted`) rather than trying every free port of a range another process
/// squats. Ports that failed go to the back of the queue, so the next lease tries
/// others.
pub const MAX_BIND_ATTEMPTS: usize = 32;

/// Kept sockets of free ports closed when the process runs out of descriptors.
const RELEASE_ON_EMFILE: usize = 256;

/// Whether a bind failed for want of a descriptor (the process's or the system's
/// limit), which no other port would avoid.
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// At most this many datagrams are read off a reused socket before its lease; a socket
/// holding more is closed and its port bound afresh.
pub const DRAIN_MAX: u64 = 1024;

/// `media.unverified_audio_seconds` when not set.
pub const DEFAULT_UNVERIFIED_AUDIO_SECONDS: u32 = 5;
/// Audio goes in 20 ms packets.
const PACKETS_PER_SECOND: u32 = 50;

pub struct PortPool {
    address: IpAddr,
    /// The configured range (`media.ports`).
    range: std::ops::RangeInclusive<u16>,
    free: Mutex<VecDeque<FreePort>>,
    socket_buffer: usize,
    latch: Latch,
    /// `media.consent`: relays send toward a side only once a packet from it arrived.
    consent: std::sync::atomic::AtomicBool,
    /// `media.unverified_audio_seconds`, in packets (20 ms each): how much audio goes
    /// to a side's SDP address (unless a trunk's) before a packet came from it.
    unverified_packets: std::sync::atomic::AtomicU32,
    metrics: MediaMetrics,
    /// Asked once per batch of packets a relay would send; `false` withholds them
    /// (a clustered node without its lease; see [`PortPool::set_gate`]).
    gate: std::sync::OnceLock<Gate>,
    /// Which media addresses are trunks' ([`PortPool::set_trunk_addresses`]).
    trunks: std::sync::OnceLock<TrunkAddresses>,
    /// The host's other addresses ([`PortPool::set_host_addresses`]).
    host: std::sync::OnceLock<Vec<IpAddr>>,
    /// Free ports holding their socket, or being released with it.
    idle: AtomicUsize,
    /// At most this many free ports keep their socket ([`PortPool::set_idle_sockets_max`]).
    idle_max: AtomicUsize,
    /// Tests: binds attempted, and an error every bind returns instead of binding.
    #[cfg(test)]
    binds: (AtomicUsize, Mutex<Option<i32>>),
}

/// A port in the free queue.
struct FreePort {
    port: u16,
    /// The socket of its last lease, connected to itself (it receives nothing); None
    /// if the port was never bound or its socket was closed.
    socket: Option<Kept>,
}

/// A free port's socket.
struct Kept {
    socket: tokio::net::UdpSocket,
    /// The runtime whose reactor it is registered with.
    runtime: tokio::runtime::Id,
}

/// Whether the node may send media now.
pub type Gate = Arc<dyn Fn() -> bool + Send + Sync>;

/// Whether an address is a trunk's (the node's `Routing::is_trunk_address`).
pub type TrunkAddresses = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// A leased RTP port and its bound socket.
pub struct MediaPort {
    /// Some until the port drops (the socket then goes back to the pool).
    socket: Option<tokio::net::UdpSocket>,
    /// The runtime whose reactor the socket is registered with.
    runtime: tokio::runtime::Id,
    pub port: u16,
    pool: Arc<PortPool>,
}

impl MediaPort {
    /// The port's bound socket.
    pub fn socket(&self) -> &tokio::net::UdpSocket {
        self.socket
            .as_ref()
            .expect("a MediaPort holds its socket until it drops")
    }

    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(self.pool.address, self.port)
    }

    /// Whether the relay using this port may send now ([`PortPool::set_gate`]).
    pub(crate) fn open(&self) -> bool {
        self.pool.open()
    }

    /// The source policy of the relay using this port.
    pub fn latch(&self) -> Latch {
        self.pool.latch
    }

    /// Whether the relay using this port sends toward a side only once a packet from
    /// it arrived (`media.consent`).
    pub fn consent(&self) -> bool {
        self.pool.consent.load(Ordering::Relaxed)
    }

    /// Whether `ip`, named in a side's SDP, is a trunk's address
    /// ([`PortPool::set_trunk_addresses`]).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.pool.trunks.get().is_some_and(|t| t(ip))
    }

    /// How many packets the relay using this port sends toward a side's SDP address
    /// (unless a trunk's) before a packet came from it.
    pub fn unverified_packets(&self) -> u32 {
        self.pool.unverified_packets.load(Ordering::Relaxed)
    }

    /// Why the relay using this port must not send to `dst`, if it must not
    /// ([`crate::destination`]); `trusted`: `dst` is a trunk's ([`MediaPort::trusts`]).
    pub(crate) fn refuses(&self, dst: SocketAddr, trusted: bool) -> Option<&'static str> {
        let host = self.pool.host.get().map_or(&[][..], Vec::as_slice);
        crate::destination::refused(dst, self.pool.address, host, &self.pool.range, trusted)
    }
}

impl Drop for MediaPort {
    fn drop(&mut self) {
        let (pool, own, runtime) = (&self.pool, self.local(), self.runtime);
        let kept = self.socket.take().and_then(|socket| {
            // Reserve a place among the idle sockets, or close this one as before.
            let max = pool.idle_max.load(Ordering::Relaxed);
            pool.idle
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()?;
            if park(&socket, own).is_err() {
                pool.idle.fetch_sub(1, Ordering::Relaxed);
                return None; // closed
            }
            Some(Kept { socket, runtime })
        });
        pool.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(FreePort {
                port: self.port,
                socket: kept,
            });
        pool.metrics.ports_in_use.dec();
    }
}

/// Makes a released socket deaf while its port is free: connected to its own address,
/// it receives only what it sends itself (nothing).
fn park(socket: &tokio::net::UdpSocket, own: SocketAddr) -> io::Result<()> {
    socket2::SockRef::from(socket).connect(&own.into())
}

/// Half the descriptors this process may open (the soft `RLIMIT_NOFILE`): by default
/// the most free ports keeping their socket. Unbounded if the limit cannot be read.
fn half_the_descriptor_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return usize::MAX;
    }
    usize::try_from(limit.rlim_cur / 2).unwrap_or(usize::MAX)
}

/// What draining a free socket found.
#[derive(Debug, PartialEq, Eq)]
struct Drained {
    /// Datagrams read and discarded.
    packets: u64,
    /// Whether the queue was found empty (else the most allowed were read, and more may
    /// wait).
    empty: bool,
}

/// Reads and discards what is queued on a free (non-blocking) socket, at most `max`
/// datagrams.
fn drain(socket: &socket2::Socket, max: u64) -> Drained {
    // One byte is enough to take a datagram off the queue; the rest of it is discarded.
    let mut byte = [std::mem::MaybeUninit::new(0u8); 1];
    let mut packets = 0;
    for _ in 0..max {
        match socket.recv(&mut byte) {
            Ok(_) => packets += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Drained {
                    packets,
                    empty: true,
                }
            }
            // A pending socket error is consumed by reading it; go on.
            Err(_) => {}
        }
    }
    Drained {
        packets,
        empty: false,
    }
}

/// Undoes [`park`]'s connect, so that the socket receives from anyone again: a connect
/// to an address of family `AF_UNSPEC`, which std has no call for.
fn disconnect(socket: &socket2::Socket) -> io::Result<()> {
    let family_only = std::mem::size_of::<socket2::sa_family_t>() as socket2::socklen_t;
    // SAFETY: all zeros is a valid address storage, of family AF_UNSPEC (0); the length
    // covers only the family field, which is all the kernel reads of it.
    let unspecified =
        unsafe { socket2::SockAddr::new(socket2::SockAddrStorage::zeroed(), family_only) };
    socket.connect(&unspecified)
}

/// Why a free socket was not reused.
#[derive(Debug, thiserror::Error)]
enum NotReused {
    #[error("more than {DRAIN_MAX} stray datagrams queued")]
    Flooded,
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl PortPool {
    /// A pool of the even ports in `first..=last` whose odd neighbour is in the range too,
    /// with the default source policy.
    pub fn new(
        address: IpAddr,
        first: u16,
        last: u16,
        socket_buffer: usize,
        metrics: MediaMetrics,
    ) -> Arc<PortPool> {
        PortPool::with_latch(
            address,
            first,
            last,
            socket_buffer,
            Latch::default(),
            metrics,
        )
    }

    /// [`PortPool::new`] whose relays apply `latch` (`media.latch`).
    pub fn with_latch(
        address: IpAddr,
        first: u16,
        last: u16,
        socket_buffer: usize,
        latch: Latch,
        metrics: MediaMetrics,
    ) -> Arc<PortPool> {
        // In u32: `first + 1` must not wrap at 65535 (ports 0.. would be leased).
        let start = u32::from(first) + u32::from(first % 2);
        let free: VecDeque<FreePort> = (start..u32::from(last))
            .step_by(2)
            .filter_map(|p| u16::try_from(p).ok())
            .map(|port| FreePort { port, socket: None })
            .collect();
        metrics
            .ports_total
            .set(i64::try_from(free.len()).unwrap_or(i64::MAX));
        Arc::new(PortPool {
            address,
            range: first..=last,
            free: Mutex::new(free),
            socket_buffer,
            latch,
            consent: std::sync::atomic::AtomicBool::new(false),
            unverified_packets: std::sync::atomic::AtomicU32::new(
                DEFAULT_UNVERIFIED_AUDIO_SECONDS * PACKETS_PER_SECOND,
            ),
            metrics,
            gate: std::sync::OnceLock::new(),
            trunks: std::sync::OnceLock::new(),
            host: std::sync::OnceLock::new(),
            idle: AtomicUsize::new(0),
            idle_max: AtomicUsize::new(half_the_descriptor_limit()),
            #[cfg(test)]
            binds: Default::default(),
        })
    }

    /// Relays started from now on send toward a side only once a packet from it
    /// arrived (`media.consent`), not to the address its SDP names before that.
    pub fn set_consent(&self, on: bool) {
        self.consent.store(on, Ordering::Relaxed);
    }

    /// Relays started from now on send at most `seconds` of audio (relayed, or
    /// generated: prompts, ringback, queue audio) toward a side's SDP address, unless a
    /// trunk's, before a packet came from that side (`media.unverified_audio_seconds`;
    /// see [`crate::latch::Peer::destination`]).
    pub fn set_unverified_audio_seconds(&self, seconds: u32) {
        self.set_unverified_packets(seconds.saturating_mul(PACKETS_PER_SECOND));
    }

    pub(crate) fn set_unverified_packets(&self, packets: u32) {
        self.unverified_packets.store(packets, Ordering::Relaxed);
    }

    /// The addresses of the host's interfaces besides the media address: refused as
    /// media destinations as the media address is outside a trunk's (a party's SDP
    /// naming the host's private address at the port of a service bound to every
    /// address reached it: a review). Kept in canonical form (an IPv4 address written
    /// as IPv6 is the IPv4 one). The first set stays.
    pub fn set_host_addresses(&self, host: Vec<IpAddr>) {
        let _ = self
            .host
            .set(host.into_iter().map(|ip| ip.to_canonical()).collect());
    }

    /// Media addresses for which `trunks` says yes are a trunk's (a carrier's media
    /// anchor, not a party who could be anyone): audio goes there before a packet
    /// came from it without the `media.unverified_audio_seconds` bound. The first
    /// set stays; unset, no address is.
    pub fn set_trunk_addresses(&self, trunks: TrunkAddresses) {
        let _ = self.trunks.set(trunks);
    }

    /// From now on the relays of this pool send only while `gate` says so (the first
    /// gate set stays). Received packets are still read (and dropped), so a node that
    /// lost its lease neither relays nor plays audio to parties another node now serves.
    pub fn set_gate(&self, gate: Gate) {
        let _ = self.gate.set(gate);
    }

    /// From now on at most `max` free ports keep their socket (by default half the
    /// process's descriptor limit); the sockets of ports released beyond it are closed,
    /// as before sockets were reused. `0` binds a socket for every lease.
    pub fn set_idle_sockets_max(&self, max: usize) {
        self.idle_max.store(max, Ordering::Relaxed);
    }

    /// Free ports holding their socket.
    pub fn idle_sockets(&self) -> usize {
        self.idle.load(Ordering::Relaxed)
    }

    /// Whether the relays may send now.
    pub(crate) fn open(&self) -> bool {
        self.gate.get().is_none_or(|open| open())
    }

    pub fn free_ports(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Two ports for one call's relay (caller side, callee side), or none: one leased
    /// alone goes back to the pool when it drops.
    pub fn allocate_two(self: &Arc<Self>) -> Result<(MediaPort, MediaPort), MediaError> {
        let a = self.allocate()?;
        Ok((a, self.allocate()?))
    }

    /// Leases a port, with the socket it kept if it has one; ports another process
    /// holds are skipped (and kept for later). Must be called inside a tokio runtime.
    pub fn allocate(self: &Arc<Self>) -> Result<MediaPort, MediaError> {
        let here = tokio::runtime::Handle::current().id();
        let attempts = self.free_ports().min(MAX_BIND_ATTEMPTS);
        for _ in 0..attempts {
            let Some(FreePort { port, socket }) = self
                .free
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
            else {
                break;
            };
            if let Some(socket) = socket {
                self.idle.fetch_sub(1, Ordering::Relaxed);
                match self.reuse(socket, here) {
                    Ok(socket) => return Ok(self.lease(port, socket, here)),
                    // The socket is closed by now: bind the port afresh.
                    Err(e) => tracing::debug!(port, %e, "RTP socket not reused"),
                }
            }
            match self.bind(port) {
                Ok(socket) => return Ok(self.lease(port, socket, here)),
                Err(e) if out_of_descriptors(&e) => {
                    // Every other fresh port would fail the same way: this one keeps
                    // its place, and no socket is created for each free port on every
                    // call (which burned the CPU of a node at its descriptor limit under
                    // overload). Free ports' kept sockets yield to calls: the lease
                    // takes one of them (it needs no new descriptor), and a few more are
                    // closed so SIP, the API and the store get descriptors again.
                    self.free
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_front(FreePort { port, socket: None });
                    tracing::debug!(port, %e, "no descriptor for an RTP socket");
                    let kept = self.take_kept();
                    self.close_idle(RELEASE_ON_EMFILE);
                    if let Some((port, socket)) = kept {
                        match self.reuse(socket, here) {
                            Ok(socket) => return Ok(self.lease(port, socket, here)),
                            // Its socket is closed: the port goes back, to be bound
                            // afresh once descriptors are free (else the range shrank
                            // for good).
                            Err(_) => self
                                .free
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push_back(FreePort { port, socket: None }),
                        }
                    }
                    break;
                }
                Err(e) => {
                    tracing::debug!(port, %e, "RTP port busy, skipping");
                    self.free
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(FreePort { port, socket: None });
                }
            }
        }
        self.metrics.port_exhaustions.inc();
        Err(MediaError::PortsExhausted)
    }

    /// The first free port that kept its socket, out of the queue.
    fn take_kept(&self) -> Option<(u16, Kept)> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let at = free.iter().position(|f| f.socket.is_some())?;
        let FreePort { port, socket } = free.remove(at)?;
        drop(free);
        self.idle.fetch_sub(1, Ordering::Relaxed);
        socket.map(|kept| (port, kept))
    }

    /// Closes up to `n` sockets kept by free ports (their ports stay free).
    fn close_idle(&self, n: usize) {
        let closed: Vec<Kept> = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            free.iter_mut()
                .filter_map(|f| f.socket.take())
                .take(n)
                .collect()
        };
        self.idle.fetch_sub(closed.len(), Ordering::Relaxed);
        drop(closed); // closed outside the lock
    }

    fn lease(
        self: &Arc<Self>,
        port: u16,
        socket: tokio::net::UdpSocket,
        runtime: tokio::runtime::Id,
    ) -> MediaPort {
        self.metrics.ports_in_use.inc();
        MediaPort {
            socket: Some(socket),
            runtime,
            port,
            pool: self.clone(),
        }
    }

    /// A new socket bound to `port`.
    fn bind(&self, port: u16) -> io::Result<tokio::net::UdpSocket> {
        #[cfg(test)]
        {
            self.binds.0.fetch_add(1, Ordering::Relaxed);
            if let Some(code) = *self.binds.1.lock().unwrap() {
                return Err(io::Error::from_raw_os_error(code));
            }
        }
        let s = std::net::UdpSocket::bind((self.address, port))?;
        s.set_nonblocking(true)?;
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(self.socket_buffer);
        tokio::net::UdpSocket::from_std(s)
    }

    /// A free port's socket, emptied of what the previous call left, open again to
    /// every source, and registered with the reactor of runtime `here`.
    fn reuse(
        &self,
        kept: Kept,
        here: tokio::runtime::Id,
    ) -> Result<tokio::net::UdpSocket, NotReused> {
        let raw = socket2::SockRef::from(&kept.socket);
        let drained = drain(&raw, DRAIN_MAX);
        self.metrics.stray_packets_drained.inc_by(drained.packets);
        if !drained.empty {
            return Err(NotReused::Flooded);
        }
        disconnect(&raw)?;
        if kept.runtime == here {
            return Ok(kept.socket);
        }
        // Kept from another runtime (perhaps ended): register it with this one's reactor.
        let socket = kept.socket.into_std()?;
        Ok(tokio::net::UdpSocket::from_std(socket)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn localhost() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    /// A pool of the even ports in `first..=last` on 127.0.0.1.
    fn pool(first: u16, last: u16, metrics: &MediaMetrics) -> Arc<PortPool> {
        PortPool::new(localhost(), first, last, 65536, metrics.clone())
    }

    /// The kernel's id of a socket (`SO_COOKIE`): equal means the same socket.
    fn cookie(port: &MediaPort) -> u64 {
        socket2::SockRef::from(port.socket()).cookie().unwrap()
    }

    /// The next datagram `socket` receives, within 5 s.
    async fn next(socket: &tokio::net::UdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
            .await
            .expect("a datagram within 5 s")
            .unwrap();
        buf[..n].to_vec()
    }

    #[tokio::test]
    async fn leases_even_ports_and_returns_them_on_drop() {
        let pool = pool(41001, 41008, &MediaMetrics::default());
        assert_eq!(pool.free_ports(), 3, "41002, 41004, 41006");
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        let c = pool.allocate().unwrap();
        assert!([a.port, b.port, c.port].iter().all(|p| p % 2 == 0));
        assert!(matches!(pool.allocate(), Err(MediaError::PortsExhausted)));
        let freed = a.port;
        drop(a);
        assert_eq!(pool.free_ports(), 1);
        assert_eq!(pool.allocate().unwrap().port, freed);
        drop((b, c));
    }

    #[test]
    fn ranges_at_the_top_of_the_port_space_do_not_wrap() {
        // Each row: (first, last) → the even ports leased.
        let table: &[(u16, u16, &[u16])] = &[
            (65530, 65535, &[65530, 65532, 65534]),
            (65531, 65535, &[65532, 65534]),
            (65535, 65535, &[]),
            (65534, 65534, &[]),
            (1, 6, &[2, 4]),
        ];
        for (first, last, want) in table {
            let pool = pool(*first, *last, &MediaMetrics::default());
            let free: Vec<u16> = pool.free.lock().unwrap().iter().map(|f| f.port).collect();
            assert_eq!(free, *want, "{first}-{last}");
        }
    }

    #[tokio::test]
    async fn skips_ports_held_elsewhere() {
        let squatter = std::net::UdpSocket::bind("127.0.0.1:41102").unwrap();
        let pool = pool(41102, 41105, &MediaMetrics::default());
        let got = pool.allocate().unwrap();
        assert_eq!(got.port, 41104);
        drop(squatter);
    }

    /// A range another process squats costs a lease at most MAX_BIND_ATTEMPTS binds:
    /// the lease fails (counted) instead of trying every port, and the ports it tried
    /// go to the back, so the next lease finds a free one.
    #[tokio::test]
    async fn a_squatted_range_costs_a_lease_a_bounded_number_of_binds() {
        // 41720-41808: no other test of this crate uses these ports (tests run at once).
        let first = 41720u16;
        let squatted = MAX_BIND_ATTEMPTS as u16 + 8;
        let squatters: Vec<_> = (0..squatted)
            .map(|i| std::net::UdpSocket::bind(("127.0.0.1", first + 2 * i)).unwrap())
            .collect();
        let metrics = MediaMetrics::default();
        let pool = pool(first, first + 2 * (squatted + 4), &metrics);
        assert!(matches!(pool.allocate(), Err(MediaError::PortsExhausted)));
        assert_eq!(metrics.port_exhaustions.get(), 1);
        let got = pool
            .allocate()
            .expect("the queue moved past the squatted ports");
        assert!(got.port >= first + 2 * squatted, "{}", got.port);
        drop(squatters);
    }

    /// Out of descriptors, a lease makes one bind attempt, not one per free port, and
    /// takes a kept socket from further back in the queue (it needs no new descriptor);
    /// the other kept sockets are closed to give descriptors back.
    #[tokio::test]
    async fn out_of_descriptors_a_lease_takes_a_kept_socket() {
        let metrics = MediaMetrics::default();
        let first = 41500u16;
        let pool = pool(first, first + 40, &metrics);
        let (a, b) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        let released = [a.port, b.port];
        drop((a, b)); // kept, at the back behind 16 fresh ports
        *pool.binds.1.lock().unwrap() = Some(libc::EMFILE);
        pool.binds.0.store(0, Ordering::Relaxed);
        let got = pool.allocate().expect("a kept socket");
        assert!(released.contains(&got.port), "{}", got.port);
        assert_eq!(pool.binds.0.load(Ordering::Relaxed), 1, "one bind attempt");
        // The other kept socket was closed: nothing is left that needs no descriptor.
        assert!(matches!(pool.allocate(), Err(MediaError::PortsExhausted)));
        assert_eq!(pool.binds.0.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.port_exhaustions.get(), 1);
        // Descriptors back: fresh ports bind again.
        *pool.binds.1.lock().unwrap() = None;
        assert!(pool.allocate().is_ok());
        drop(got);
    }

    #[test]
    fn which_bind_errors_mean_no_descriptor() {
        let table = [
            (libc::EMFILE, true),
            (libc::ENFILE, true),
            (libc::EADDRINUSE, false),
            (libc::EACCES, false),
        ];
        for (code, want) in table {
            let e = io::Error::from_raw_os_error(code);
            assert_eq!(out_of_descriptors(&e), want, "{e}");
        }
    }

    /// A released port keeps its socket, still at the back of the queue; the next
    /// lease of the port gets the same socket, and the cap closes those beyond it.
    #[tokio::test]
    async fn released_sockets_are_reused_up_to_the_cap() {
        // Each row: idle_max, then how many of the three ports keep their socket.
        let table = [(usize::MAX, 3), (3, 3), (1, 1), (0, 0)];
        for (i, (max, kept)) in table.into_iter().enumerate() {
            let first = 41120 + 10 * i as u16;
            let pool = pool(first, first + 6, &MediaMetrics::default());
            pool.set_idle_sockets_max(max);
            let leased: Vec<MediaPort> = (0..3).map(|_| pool.allocate().unwrap()).collect();
            let before: Vec<(u16, u64)> = leased.iter().map(|p| (p.port, cookie(p))).collect();
            drop(leased);
            assert_eq!(pool.idle_sockets(), kept, "max {max}");
            let again: Vec<MediaPort> = (0..3).map(|_| pool.allocate().unwrap()).collect();
            let after: Vec<(u16, u64)> = again.iter().map(|p| (p.port, cookie(p))).collect();
            let ports = |v: &[(u16, u64)]| v.iter().map(|(p, _)| *p).collect::<Vec<_>>();
            assert_eq!(
                ports(&after),
                ports(&before),
                "same order: first freed, first leased"
            );
            let reused = before.iter().zip(&after).filter(|(b, a)| b == a).count();
            assert_eq!(reused, kept, "max {max}");
            assert_eq!(pool.idle_sockets(), 0);
        }
    }

    /// What was queued on a port when it was released (the end of the previous call's
    /// audio) is drained and counted before the next lease: the new lease finds its
    /// socket empty, and receives what is sent to it after the lease from anyone.
    #[tokio::test]
    async fn the_previous_call_s_packets_are_drained_before_the_next_lease() {
        let metrics = MediaMetrics::default();
        let pool = pool(41160, 41162, &metrics);
        let port = pool.allocate().unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..5u8 {
            peer.send_to(&[i; 172], port.local()).await.unwrap();
        }
        port.socket().readable().await.unwrap();
        let (old, to) = (cookie(&port), port.local());
        drop(port);
        let port = pool.allocate().unwrap();
        assert_eq!(cookie(&port), old, "reused");
        let drained = metrics.stray_packets_drained.get();
        assert!((1..=5).contains(&drained), "drained {drained}");
        let mut buf = [0u8; 2048];
        assert_eq!(
            port.socket().try_recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing of the previous call is left"
        );
        let stranger = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
        stranger.send_to(b"new call", to).await.unwrap();
        assert_eq!(next(port.socket()).await, b"new call");
    }

    /// An attacker spraying a free port (many small datagrams, and large ones that a
    /// minimum receive buffer would still take one of) is refused as at an unbound
    /// port: nothing is queued, so nothing is drained, and the port is leased again
    /// with its socket and works. Both for a pool on one address and on the wildcard.
    #[tokio::test]
    async fn a_free_port_refuses_what_is_sprayed_at_it() {
        for (i, address) in ["127.0.0.1", "0.0.0.0"].into_iter().enumerate() {
            let metrics = MediaMetrics::default();
            let first = 41180 + 10 * i as u16;
            let pool = PortPool::new(
                address.parse().unwrap(),
                first,
                first + 2,
                65536,
                metrics.clone(),
            );
            let port = pool.allocate().unwrap();
            let (old, to) = (cookie(&port), SocketAddr::new(localhost(), port.port));
            drop(port);
            assert_eq!(pool.idle_sockets(), 1, "{address}");
            // A probe connected to the free port learns it is closed (ICMP port
            // unreachable), as with no socket there.
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            probe
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            probe.connect(to).unwrap();
            probe.send(b"anyone?").unwrap();
            assert_eq!(
                probe.recv(&mut [0u8; 64]).unwrap_err().kind(),
                io::ErrorKind::ConnectionRefused,
                "{address}"
            );
            let sprayer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for n in 0..2000 {
                let _ = sprayer.send_to(&[0xaa; 172], to);
                if n % 100 == 0 {
                    let _ = sprayer.send_to(&vec![0xbb; 60_000], to);
                }
            }
            let port = pool.allocate().unwrap();
            assert_eq!(cookie(&port), old, "{address}: reused");
            assert_eq!(metrics.stray_packets_drained.get(), 0, "{address}");
            sprayer.send_to(b"after the lease", to).unwrap();
            assert_eq!(next(port.socket()).await, b"after the lease", "{address}");
        }
    }

    /// A port may drop outside any runtime, even after the runtime that leased it has
    /// ended: nothing panics, the socket is kept, and another runtime leases it and
    /// receives on it.
    #[test]
    fn ports_released_outside_a_runtime_are_reused_by_another() {
        let pool = pool(41600, 41604, &MediaMetrics::default());
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (a, b) = first.block_on(async { (pool.allocate().unwrap(), pool.allocate().unwrap()) });
        let cookies = [cookie(&a), cookie(&b)];
        drop(a); // no runtime entered here
        drop(first);
        drop(b); // its reactor is gone
        assert_eq!(pool.idle_sockets(), 2);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        second.block_on(async {
            let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            for want in cookies {
                let port = pool.allocate().unwrap();
                assert_eq!(cookie(&port), want);
                peer.send_to(b"hello", port.local()).await.unwrap();
                assert_eq!(next(port.socket()).await, b"hello");
            }
        });
    }

    /// The drain reads at most its bound and says whether it emptied the queue.
    #[test]
    fn draining_is_bounded() {
        // Each row: datagrams queued, the bound, then what draining finds.
        let table = [
            (
                0,
                5,
                Drained {
                    packets: 0,
                    empty: true,
                },
            ),
            (
                3,
                5,
                Drained {
                    packets: 3,
                    empty: true,
                },
            ),
            (
                5,
                5,
                Drained {
                    packets: 5,
                    empty: false,
                },
            ),
            (
                8,
                5,
                Drained {
                    packets: 5,
                    empty: false,
                },
            ),
        ];
        for (queued, max, want) in table {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.set_nonblocking(true).unwrap();
            let to = socket.local_addr().unwrap();
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..queued {
                sender.send_to(&[0; 20], to).unwrap();
            }
            let raw = socket2::SockRef::from(&socket);
            assert_eq!(drain(&raw, max), want, "{queued} queued");
        }
    }
}
