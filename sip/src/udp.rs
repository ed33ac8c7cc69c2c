//! SIP over UDP: binding a listener and reading it (`sip.udp_receive`).
//!
//! Who reads the socket is a trade between two costs:
//!
//! - **The runtime** (a task of the node's runtime): a datagram wakes one thread, which
//!   checks, parses and queues it and often runs the shard that handles it next. The
//!   cheapest per call below capacity, but near and past capacity the task waits its
//!   turn behind thousands of call tasks, the kernel's buffer overflows and drops at
//!   random (the 200 OK and ACKs of admitted calls as much as new INVITEs), and the
//!   overload control, which sees only the queue behind the receiver, is blind.
//! - **Threads of their own** (`sip-udp-rx`): the kernel's scheduler gives them their
//!   share whatever the runtime is doing, so the socket is drained, the backlog builds
//!   where [`crate::overload`] measures it, and new INVITEs are refused at the cost of a
//!   parse. The price is a second thread woken per datagram at moderate load (measured:
//!   8–18 % more CPU per call on a 2-core host; README "Reading SIP over UDP").
//! - **Auto** (the default) takes both: the runtime reads, and a standby thread per
//!   receive thread watches the socket's head of line every [`WATCH`]. When the same
//!   datagram still waits [`LAG`] later, the runtime is late: the standby starts reading
//!   and the runtime's reader stands aside (as with `threads`, the runtime then only
//!   runs the shards), until a probe task spawned on the runtime has run within
//!   [`ON_TIME`] for [`RELEASE_AFTER`] with no shard refusing calls. Idle, the standby
//!   costs a wake-up and a peek per [`WATCH`], whatever the call rate.
//!
//! Every reader shares the same handling of a datagram (`Inbound::frame`) and of
//! receive errors.

use crate::parse::{Peer, Transport};
use crate::transport::{Inbound, IncomingTx, MAX_DATAGRAM};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::Notify;

/// Who reads a UDP listener (`sip.udp_receive`; see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UdpReceive {
    /// The runtime reads; standby threads read too while it is late.
    #[default]
    Auto,
    /// Threads of their own read, always.
    Threads,
    /// The runtime reads, always.
    Runtime,
}

/// How often an idle standby looks at the socket.
pub const WATCH: Duration = Duration::from_millis(10);
/// How long the datagram at the head of the socket's queue may wait unread before the
/// standby reads: a tenth of the overload control's default target (50 ms), so the
/// backlog moves to where that control sees it long before it would refuse.
pub const LAG: Duration = Duration::from_millis(5);
/// How often an engaged standby probes the runtime.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A probe that runs within this long of being spawned finds the runtime on time.
pub const ON_TIME: Duration = Duration::from_millis(1);
/// How long the runtime must stay on time (and no shard refuse) before the standby
/// stops reading: long enough not to flap at the edge of capacity.
pub const RELEASE_AFTER: Duration = Duration::from_secs(2);

/// Whether standby threads read a listener now; the runtime's reader stands aside
/// meanwhile (it would only take its turn behind the calls' tasks) and resumes when
/// the last one stops.
#[derive(Default)]
struct Engaged {
    reading: AtomicUsize,
    released: Notify,
}

impl Engaged {
    fn start(&self) {
        self.reading.fetch_add(1, Ordering::SeqCst);
    }

    fn stop(&self) {
        if self.reading.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.released.notify_waiters();
        }
    }

    /// Returns once no standby reads (at once when none does).
    async fn until_released(&self) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.reading.load(Ordering::SeqCst) == 0 {
                return;
            }
            released.await;
        }
    }
}

/// A standby's turn at reading. Ended when dropped, so that a standby thread that
/// ends in any way (a panic included) never leaves the runtime's reader standing aside
/// on a socket nobody reads.
struct Turn<'a> {
    engaged: &'a Engaged,
    metrics: &'a crate::metrics::SipMetrics,
}

impl<'a> Turn<'a> {
    fn start(engaged: &'a Engaged, metrics: &'a crate::metrics::SipMetrics) -> Turn<'a> {
        metrics.udp_standby_reading.inc();
        engaged.start();
        Turn { engaged, metrics }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.engaged.stop();
        self.metrics.udp_standby_reading.dec();
    }
}

/// Binds a UDP listener; returns the socket the core sends from and a second handle
/// on the same socket for receive threads (dropped when only the runtime reads).
pub(crate) fn bind_udp(
    addr: SocketAddr,
    buffer: usize,
) -> std::io::Result<(UdpSocket, std::net::UdpSocket)> {
    let std_sock = std::net::UdpSocket::bind(addr)?;
    std_sock.set_nonblocking(true)?;
    set_buffers(&std_sock, buffer);
    let receiving = std_sock.try_clone()?;
    Ok((UdpSocket::from_std(std_sock)?, receiving))
}

/// Asks the kernel for large socket buffers (capped by net.core.[rw]mem_max).
pub fn set_buffers<S: std::os::fd::AsFd>(sock: &S, bytes: usize) {
    let sock = socket2::SockRef::from(sock);
    let _ = sock.set_recv_buffer_size(bytes);
    let _ = sock.set_send_buffer_size(bytes);
}

/// Starts reading a bound listener (`sock` and `receiving` from [`bind_udp`]) as
/// `mode` says, with `threads` receive (or standby) threads. Must be called within the
/// node's runtime. The readers end when the core is gone.
pub(crate) fn start_receiving(
    mode: UdpReceive,
    sock: Arc<UdpSocket>,
    receiving: std::net::UdpSocket,
    inbound: Inbound,
    threads: usize,
) -> std::io::Result<()> {
    match mode {
        UdpReceive::Runtime => spawn_receive_task(sock, inbound, None),
        UdpReceive::Threads => {
            for _ in 1..threads {
                spawn_receiver(receiving.try_clone()?, inbound.clone())?;
            }
            spawn_receiver(receiving, inbound)?;
        }
        UdpReceive::Auto => {
            let runtime = tokio::runtime::Handle::current();
            let engaged = Arc::new(Engaged::default());
            for _ in 1..threads {
                let sock = receiving.try_clone()?;
                spawn_standby(sock, inbound.clone(), runtime.clone(), engaged.clone())?;
            }
            spawn_standby(receiving, inbound.clone(), runtime, engaged.clone())?;
            spawn_receive_task(sock, inbound, Some(engaged));
        }
    }
    Ok(())
}

/// A current-thread runtime for a receive thread (its socket's readiness, the pause
/// after an error).
fn thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// A receive thread: reads the socket for the life of the core.
fn spawn_receiver(sock: std::net::UdpSocket, inbound: Inbound) -> std::io::Result<()> {
    let runtime = thread_runtime()?;
    let Some(first) = inbound.tx.first().cloned() else {
        return Ok(()); // no core to feed
    };
    std::thread::Builder::new()
        .name("sip-udp-rx".into())
        .spawn(move || {
            runtime.block_on(async move {
                let sock = match UdpSocket::from_std(sock) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(%e, "SIP UDP receiver could not start");
                        return;
                    }
                };
                // The shards end together (when the node drops its endpoint).
                tokio::select! {
                    _ = receive(&sock, &inbound) => {}
                    _ = first.closed() => {}
                }
            })
        })?;
    Ok(())
}

/// The runtime's reader: one task per listener, ending with the core; with standby
/// threads, it stands aside while they read.
fn spawn_receive_task(sock: Arc<UdpSocket>, inbound: Inbound, standby: Option<Arc<Engaged>>) {
    let Some(first) = inbound.tx.first().cloned() else {
        return; // no core to feed
    };
    tokio::spawn(async move {
        let read = async {
            let Some(standby) = standby else {
                return receive(&sock, &inbound).await;
            };
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                standby.until_released().await;
                receive_one(&sock, &mut buf, &inbound).await;
            }
        };
        tokio::select! {
            _ = read => {}
            _ = first.closed() => {}
        }
    });
}

/// A standby thread (`UdpReceive::Auto`): watches the socket's head of line and reads
/// while the runtime is late. `runtime` is the node's runtime, which it probes.
fn spawn_standby(
    sock: std::net::UdpSocket,
    inbound: Inbound,
    runtime: tokio::runtime::Handle,
    engaged: Arc<Engaged>,
) -> std::io::Result<()> {
    let own = thread_runtime()?;
    let Some(first) = inbound.tx.first().cloned() else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("sip-udp-standby".into())
        .spawn(move || {
            let mut sock = sock;
            loop {
                std::thread::sleep(WATCH);
                if first.is_closed() {
                    return;
                }
                if !waits_unread(&sock) {
                    continue;
                }
                inbound.metrics.udp_standby_engagements.inc();
                tracing::debug!("the runtime is late reading SIP over UDP: the standby reads");
                let turn = Turn::start(&engaged, &inbound.metrics);
                let back = own.block_on(read_while_late(sock, &inbound, &first, &runtime));
                drop(turn);
                match back {
                    Some(s) => sock = s,
                    None => return, // the core is gone, or the socket could not be read
                }
            }
        })?;
    Ok(())
}

/// What identifies the datagram at the head of a socket's queue: its source and its
/// first bytes (a Via branch or Call-ID tells SIP messages apart within them).
#[derive(Debug, PartialEq, Eq)]
struct Head {
    from: SocketAddr,
    bytes: Vec<u8>,
}

/// Bytes of the head datagram compared.
const HEAD_BYTES: usize = 256;

fn head(sock: &std::net::UdpSocket) -> Option<Head> {
    let mut buf = [0u8; HEAD_BYTES];
    let (n, from) = sock.peek_from(&mut buf).ok()?;
    Some(Head {
        from,
        bytes: buf[..n.min(HEAD_BYTES)].to_vec(),
    })
}

/// Whether the datagram at the head of the queue is still there [`LAG`] later: nobody
/// read the socket in that time while it held something.
fn waits_unread(sock: &std::net::UdpSocket) -> bool {
    let Some(before) = head(sock) else {
        return false;
    };
    std::thread::sleep(LAG);
    late(Some(&before), head(sock).as_ref())
}

/// The head of line seen before and after [`LAG`]: the runtime is late when the same
/// datagram waits at both.
fn late(before: Option<&Head>, after: Option<&Head>) -> bool {
    matches!((before, after), (Some(a), Some(b)) if a == b)
}

/// When an engaged standby stops reading, from the probes of the runtime.
#[derive(Debug, Default)]
struct Release {
    /// Since when every probe was on time and no shard refused.
    on_time_since: Option<Instant>,
}

impl Release {
    /// A probe's outcome (`None`: it has not run yet, a probe interval after it was
    /// spawned) and whether a shard refuses calls; true when the standby should stop.
    fn on_probe(&mut self, delay: Option<Duration>, refusing: bool, now: Instant) -> bool {
        if delay.is_some_and(|d| d <= ON_TIME) && !refusing {
            let since = *self.on_time_since.get_or_insert(now);
            now.duration_since(since) >= RELEASE_AFTER
        } else {
            self.on_time_since = None;
            false
        }
    }
}

/// A probe not yet run.
const PENDING: u64 = u64::MAX;

/// Reads the socket on the standby's own runtime until the node's runtime is on time
/// again; gives the socket back then (`None` when the core is gone).
async fn read_while_late(
    sock: std::net::UdpSocket,
    inbound: &Inbound,
    first: &IncomingTx,
    runtime: &tokio::runtime::Handle,
) -> Option<std::net::UdpSocket> {
    let sock = match UdpSocket::from_std(sock) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%e, "SIP UDP standby could not read its socket");
            return None;
        }
    };
    let probe = Arc::new(AtomicU64::new(PENDING));
    let mut sent = false;
    let mut release = Release::default();
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            _ = receive_one(&sock, &mut buf, inbound) => {}
            _ = ticks.tick() => {
                let outcome = probe.load(Ordering::Relaxed);
                if sent {
                    let delay = (outcome != PENDING).then(|| Duration::from_micros(outcome));
                    let refusing = inbound.overload.any_refusing();
                    if release.on_probe(delay, refusing, Instant::now()) {
                        // Deregistered from this thread's runtime: an idle standby is
                        // not woken by the socket.
                        return sock.into_std().ok();
                    }
                }
                if !sent || outcome != PENDING {
                    probe.store(PENDING, Ordering::Relaxed);
                    let p = probe.clone();
                    let spawned = Instant::now();
                    runtime.spawn(async move {
                        let waited = spawned.elapsed().as_micros().min(u128::from(PENDING - 1));
                        p.store(waited as u64, Ordering::Relaxed);
                    });
                    sent = true;
                }
            }
            _ = first.closed() => return None,
        }
    }
}

/// How long a UDP receiver pauses after an error that may repeat at once.
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Errors a UDP receive reports about one datagram or one peer (an ICMP answer to
/// something sent), not about the socket: the next receive is tried at once.
fn receive_error_is_transient(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused | ConnectionReset | Interrupted | WouldBlock | HostUnreachable
    )
}

async fn receive(sock: &UdpSocket, inbound: &Inbound) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        receive_one(sock, &mut buf, inbound).await;
    }
}

/// Receives one datagram and hands it to the core (or answers it), or pauses after an
/// error that may repeat. Cancel-safe.
async fn receive_one(sock: &UdpSocket, buf: &mut [u8], inbound: &Inbound) {
    let (n, src) = match sock.recv_from(buf).await {
        Ok(x) => x,
        Err(e) => {
            // ICMP port-unreachable surfaces here on some systems; keep serving.
            tracing::debug!(%e, "udp receive error");
            if !receive_error_is_transient(e.kind()) {
                // Anything else may repeat at once (and the reader would spin):
                // pause as the stream listener does.
                tokio::time::sleep(RECEIVE_ERROR_PAUSE).await;
            }
            return;
        }
    };
    let peer = Peer {
        transport: Transport::Udp,
        addr: src,
    };
    if let Some((reply, to)) = inbound.frame(&buf[..n], peer) {
        let _ = sock.try_send_to(&reply, to.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_about_one_datagram_are_retried_without_a_pause() {
        use std::io::ErrorKind::*;
        // (what the receive reported, retried at once)
        let rows = [
            (ConnectionRefused, true), // ICMP port unreachable for something we sent
            (ConnectionReset, true),
            (HostUnreachable, true),
            (Interrupted, true),
            (WouldBlock, true),
            (OutOfMemory, false), // ENOBUFS/ENOMEM: would fail again at once
            (PermissionDenied, false),
            (Other, false),
        ];
        for (kind, transient) in rows {
            assert_eq!(receive_error_is_transient(kind), transient, "{kind:?}");
        }
    }

    fn head_of(from: &str, bytes: &[u8]) -> Head {
        Head {
            from: from.parse().unwrap(),
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn the_runtime_is_late_when_the_same_datagram_waits_at_both_looks() {
        let a = head_of(
            "127.0.0.1:5060",
            b"INVITE sip:1@x SIP/2.0\r\nVia: ...;branch=z9hG4bK1",
        );
        let b = head_of(
            "127.0.0.1:5060",
            b"INVITE sip:1@x SIP/2.0\r\nVia: ...;branch=z9hG4bK2",
        );
        let c = head_of(
            "127.0.0.2:5060",
            b"INVITE sip:1@x SIP/2.0\r\nVia: ...;branch=z9hG4bK1",
        );
        // (before, after, late)
        let rows = [
            (None, None, false),         // nothing waits
            (Some(&a), None, false),     // read meanwhile
            (None, Some(&a), false),     // arrived meanwhile
            (Some(&a), Some(&b), false), // read, and another arrived
            (Some(&a), Some(&c), false), // same bytes from another source
            (Some(&a), Some(&a), true),  // the same datagram waited LAG
        ];
        for (before, after, expected) in rows {
            assert_eq!(late(before, after), expected, "{before:?} {after:?}");
        }
    }

    #[test]
    fn the_standby_stops_after_the_runtime_stayed_on_time() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let on_time = Some(Duration::from_micros(300));
        let late = Some(Duration::from_millis(3));
        // (probe, a shard refuses, at, stop)
        let rows = [
            (on_time, false, ms(0), false),
            (on_time, false, ms(1_000), false),
            (late, false, ms(1_250), false), // starts again
            (on_time, false, ms(1_500), false),
            (on_time, false, ms(3_250), false),
            (None, false, ms(3_500), false), // a probe that has not run: late
            (on_time, false, ms(3_750), false),
            (on_time, true, ms(4_000), false), // refusing calls: not on time
            (on_time, false, ms(4_250), false),
            (on_time, false, ms(6_000), false),
            (on_time, false, ms(6_250), true), // 2 s on time since 4,250
        ];
        let mut release = Release::default();
        for (i, (delay, refusing, at, stop)) in rows.into_iter().enumerate() {
            assert_eq!(release.on_probe(delay, refusing, at), stop, "row {i}");
        }
    }

    /// However a standby's turn ends, the runtime's reader is let back.
    #[test]
    fn a_turn_that_ends_by_a_panic_lets_the_runtime_read_again() {
        let engaged = Engaged::default();
        let metrics = crate::metrics::SipMetrics::default();
        let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _turn = Turn::start(&engaged, &metrics);
            assert_eq!(engaged.reading.load(Ordering::SeqCst), 1);
            panic!("a standby thread dies mid-turn");
        }));
        assert!(ended.is_err());
        assert_eq!(engaged.reading.load(Ordering::SeqCst), 0);
        assert_eq!(metrics.udp_standby_reading.get(), 0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), engaged.until_released())
                .await
                .expect("the runtime's reader is released");
        });
    }

    const OPTIONS: &[u8] = b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    /// A node's runtime that cannot run anything for a while: its standby reads the
    /// socket meanwhile (the message reaches the core's queue while the runtime is
    /// still blocked), and stops once the runtime is on time again.
    #[test]
    fn a_standby_reads_while_the_runtime_is_blocked_and_stops_after() {
        use crate::metrics::SipMetrics;
        use crate::overload::RefusalGate;
        use crate::shard::Shards;
        use crate::source::{SourcePolicy, TrustedSources, Untrusted};
        use std::net::IpAddr;
        use std::sync::atomic::AtomicBool;

        struct Everyone;
        impl TrustedSources for Everyone {
            fn is_trusted(&self, _: IpAddr) -> bool {
                true
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let metrics = SipMetrics::default();
        let inbound = Inbound {
            tx: Arc::new([tx]),
            shards: Shards::new(1),
            metrics: metrics.clone(),
            sources: SourcePolicy {
                trusted: Arc::new(Everyone),
                untrusted: Untrusted::Drop,
            },
            max_queued_bytes: 1 << 20,
            overload: Arc::new(RefusalGate::new(5, 1)),
            force_rport: false,
        };
        let addr = runtime.block_on(async {
            let (sock, receiving) = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
            let addr = sock.local_addr().unwrap();
            start_receiving(UdpReceive::Auto, Arc::new(sock), receiving, inbound, 1).unwrap();
            addr
        });
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();

        peer.send_to(OPTIONS, addr).unwrap();
        assert!(rx.blocking_recv().is_some());

        // Blocked: only the standby can read.
        let blocked = Arc::new(AtomicBool::new(true));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let flag = blocked.clone();
        runtime.spawn(async move {
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(600));
            flag.store(false, Ordering::SeqCst);
        });
        started_rx.recv().unwrap();
        peer.send_to(OPTIONS, addr).unwrap();
        assert!(rx.blocking_recv().is_some());
        assert!(
            blocked.load(Ordering::SeqCst),
            "the message was queued only once the runtime was free again"
        );
        assert!(metrics.udp_standby_engagements.get() >= 1);
        assert_eq!(metrics.udp_standby_reading.get(), 1);

        // The runtime on time again: the standby stops after RELEASE_AFTER of probes
        // that each ran within ON_TIME (1 ms). The other tests of this binary run
        // meanwhile on a 2-core machine and make probes late (the standby then rightly
        // reads on): they end within about 10 s, so the deadline leaves room past them
        // (at 5 s, a loaded machine failed it with the standby working as meant).
        let deadline = Instant::now() + RELEASE_AFTER + Duration::from_secs(20);
        while metrics.udp_standby_reading.get() != 0 {
            assert!(Instant::now() < deadline, "the standby kept reading");
            std::thread::sleep(PROBE_EVERY);
        }
        peer.send_to(OPTIONS, addr).unwrap();
        assert!(rx.blocking_recv().is_some());
        drop(runtime);
    }
}
