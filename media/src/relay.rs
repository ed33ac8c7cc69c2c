//! The RTP relay of one call: the caller-facing port (A) and the callee-facing port
//! (B), one task, one reused buffer per side. A packet from the caller arriving on A
//! leaves from B toward the callee, and the reverse. Each side's far address starts as
//! the one its SDP announced and latches to the source of the first packet received
//! (symmetric RTP, for callers behind NAT); new SDP for a side resets its latch.
//! Dropping the [`Relay`] stops the task and
//! returns both ports to the pool.

use crate::metrics::{DirectionLabel, MediaMetrics};
use crate::ports::MediaPort;
use crate::recording::{Mixer, OnClosed, Outcome, RecordMode, Sink};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Faces the caller.
    A,
    /// Faces the callee.
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Counters of one call, readable while the call runs.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub packets_a_to_b: AtomicU64,
    pub packets_b_to_a: AtomicU64,
    pub bytes_a_to_b: AtomicU64,
    pub bytes_b_to_a: AtomicU64,
    pub lost_a_to_b: AtomicU64,
    pub lost_b_to_a: AtomicU64,
}

impl RelayStats {
    pub fn packets(&self) -> (u64, u64) {
        (
            self.packets_a_to_b.load(Ordering::Relaxed),
            self.packets_b_to_a.load(Ordering::Relaxed),
        )
    }
    pub fn lost(&self) -> u64 {
        self.lost_a_to_b.load(Ordering::Relaxed) + self.lost_b_to_a.load(Ordering::Relaxed)
    }
}

/// Sequence-number gap counting for one direction.
#[derive(Default)]
struct LossCounter {
    last: Option<u16>,
}

impl LossCounter {
    /// Returns how many packets are missing before this one. Reordered or duplicate
    /// packets (behind the highest seen) count nothing; a jump of more than 3000 is
    /// taken as a stream restart, not loss.
    fn on_packet(&mut self, seq: u16) -> u64 {
        let lost = match self.last {
            None => 0,
            Some(last) => {
                let delta = seq.wrapping_sub(last);
                if delta == 0 || delta > 0x8000 {
                    return 0; // duplicate or late
                }
                if delta > 3000 {
                    0
                } else {
                    u64::from(delta - 1)
                }
            }
        };
        self.last = Some(seq);
        lost
    }
}

enum Control {
    SetRemote(Side, SocketAddr),
    StartRecording(Box<Mixer>, Sink),
    StopRecording(OnClosed),
}

/// A recording in progress inside the relay task.
struct Recording {
    mixer: Box<Mixer>,
    sink: Sink,
    started: std::time::Instant,
}

impl Recording {
    fn now(&self) -> u64 {
        (self.started.elapsed().as_micros() as u64) * u64::from(crate::wav::SAMPLE_RATE) / 1_000_000
    }
}

pub struct Relay {
    control: mpsc::UnboundedSender<Control>,
    pub stats: Arc<RelayStats>,
    a_local: SocketAddr,
    b_local: SocketAddr,
}

impl Relay {
    /// Starts relaying between two leased ports. Must be called inside a tokio runtime.
    pub fn start(a: MediaPort, b: MediaPort, metrics: MediaMetrics) -> Relay {
        let (control, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(RelayStats::default());
        let (a_local, b_local) = (a.local(), b.local());
        // The task ends when the Relay (the control sender) is dropped, after handling
        // what was sent before (e.g. a StopRecording); that returns both ports.
        tokio::spawn(run(a, b, rx, stats.clone(), metrics));
        Relay {
            control,
            stats,
            a_local,
            b_local,
        }
    }

    /// The node's address the given side's far end must send to (goes into that leg's SDP).
    pub fn local(&self, side: Side) -> SocketAddr {
        match side {
            Side::A => self.a_local,
            Side::B => self.b_local,
        }
    }

    /// Where the far end of `side` said (in SDP) it receives audio.
    pub fn set_remote(&self, side: Side, addr: SocketAddr) {
        let _ = self.control.send(Control::SetRemote(side, addr));
    }

    /// Starts recording what both far ends send, into `sink`.
    pub fn start_recording(&self, mode: RecordMode, sink: Sink) {
        let _ = self
            .control
            .send(Control::StartRecording(Box::new(Mixer::new(mode)), sink));
    }

    /// Ends the recording; `done` runs once the file is complete (also if the relay
    /// task is gone, with an error).
    pub fn stop_recording(&self, done: OnClosed) {
        if let Err(mpsc::error::SendError(Control::StopRecording(done))) =
            self.control.send(Control::StopRecording(done))
        {
            done(Outcome {
                seconds: 0.0,
                error: Some("the media relay had stopped".into()),
            });
        }
    }
}

struct Direction {
    packets: prometheus_client::metrics::counter::Counter,
    bytes: prometheus_client::metrics::counter::Counter,
    lost: prometheus_client::metrics::counter::Counter,
}

impl Direction {
    fn new(m: &MediaMetrics, direction: &'static str) -> Direction {
        let l = DirectionLabel { direction };
        Direction {
            packets: m.packets.get_or_create(&l).clone(),
            bytes: m.bytes.get_or_create(&l).clone(),
            lost: m.lost.get_or_create(&l).clone(),
        }
    }
}

struct SideState {
    remote: Option<SocketAddr>,
    latched: bool,
    loss: LossCounter,
}

thread_local! {
    /// One receive buffer per runtime thread, shared by every relay on it: a call holds
    /// no buffer of its own (packets are forwarded before the next await).
    static PACKET: std::cell::RefCell<[u8; 2048]> = const { std::cell::RefCell::new([0u8; 2048]) };
}

/// Packets forwarded per wake-up before yielding to other calls.
const BURST: usize = 32;

/// Receives what is waiting on `from` and forwards it toward `to_side`'s far end
/// (and into the recording, if one runs).
#[allow(clippy::too_many_arguments)]
fn drain(
    from: &tokio::net::UdpSocket,
    from_side: &mut SideState,
    side: Side,
    out: &tokio::net::UdpSocket,
    to_remote: Option<SocketAddr>,
    dir: &Direction,
    counters: [&AtomicU64; 3],
    mut rec: Option<&mut Recording>,
) {
    let now = rec.as_ref().map(|r| r.now()).unwrap_or(0);
    PACKET.with(|buf| {
        let mut buf = buf.borrow_mut();
        for _ in 0..BURST {
            let Ok((n, src)) = from.try_recv_from(&mut buf[..]) else {
                return;
            };
            latch(from_side, src);
            let pkt = &buf[..n];
            let rtp = rtp_rs::RtpReader::new(pkt).ok();
            if let (Some(r), Some(rec)) = (&rtp, rec.as_deref_mut()) {
                rec.mixer.push(
                    side,
                    r.ssrc(),
                    r.timestamp(),
                    r.payload_type(),
                    r.payload(),
                    now,
                );
            }
            if let Some(dst) = to_remote {
                let seq = rtp.map(|r| u16::from(r.sequence_number()));
                forward(pkt, seq, out, dst, &mut from_side.loss, dir, counters);
            }
        }
    });
}

async fn run(
    a: MediaPort,
    b: MediaPort,
    mut control: mpsc::UnboundedReceiver<Control>,
    stats: Arc<RelayStats>,
    metrics: MediaMetrics,
) {
    let mut sa = SideState {
        remote: None,
        latched: false,
        loss: LossCounter::default(),
    };
    let mut sb = SideState {
        remote: None,
        latched: false,
        loss: LossCounter::default(),
    };
    let a_to_b = Direction::new(&metrics, "caller_to_callee");
    let b_to_a = Direction::new(&metrics, "callee_to_caller");
    let mut rec: Option<Recording> = None;
    // While recording, audio goes to the file about once a second (no timer otherwise).
    let mut tick: Option<tokio::time::Interval> = None;
    loop {
        tokio::select! {
            r = a.socket.readable() => {
                if r.is_ok() {
                    let to = sb.remote;
                    let counters = [&stats.packets_a_to_b, &stats.bytes_a_to_b, &stats.lost_a_to_b];
                    drain(&a.socket, &mut sa, Side::A, &b.socket, to, &a_to_b, counters, rec.as_mut());
                }
            }
            r = b.socket.readable() => {
                if r.is_ok() {
                    let to = sa.remote;
                    let counters = [&stats.packets_b_to_a, &stats.bytes_b_to_a, &stats.lost_b_to_a];
                    drain(&b.socket, &mut sb, Side::B, &a.socket, to, &b_to_a, counters, rec.as_mut());
                }
            }
            _ = async { tick.as_mut().expect("checked").tick().await }, if tick.is_some() => {
                if let Some(r) = rec.as_mut() {
                    let now = r.now();
                    r.sink.append(r.mixer.drain(now));
                }
            }
            c = control.recv() => match c {
                Some(Control::SetRemote(side, addr)) => {
                    // New SDP from that side (an answer, or another destination after a
                    // failed attempt): send there, and latch again on its next packet.
                    let s = if side == Side::A { &mut sa } else { &mut sb };
                    s.remote = Some(addr);
                    s.latched = false;
                }
                Some(Control::StartRecording(mixer, sink)) => {
                    rec = Some(Recording { mixer, sink, started: std::time::Instant::now() });
                    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick = Some(every);
                }
                Some(Control::StopRecording(done)) => match rec.take().inspect(|_| tick = None) {
                    Some(mut r) => {
                        r.sink.append(r.mixer.finish());
                        r.sink.close(done);
                    }
                    None => done(Outcome { seconds: 0.0, error: Some("no recording was running".into()) }),
                },
                None => break,
            }
        }
    }
    if let Some(mut r) = rec {
        // The call went away without stopping the recording (e.g. its actor crashed):
        // keep what was recorded.
        r.sink.append(r.mixer.finish());
    }
}

fn latch(side: &mut SideState, src: SocketAddr) {
    if !side.latched {
        side.remote = Some(src);
        side.latched = true;
    }
}

fn forward(
    pkt: &[u8],
    seq: Option<u16>,
    out: &tokio::net::UdpSocket,
    dst: SocketAddr,
    loss: &mut LossCounter,
    dir: &Direction,
    [packets, bytes, lost]: [&AtomicU64; 3],
) {
    if let Some(seq) = seq {
        let gap = loss.on_packet(seq);
        if gap > 0 {
            lost.fetch_add(gap, Ordering::Relaxed);
            dir.lost.inc_by(gap);
        }
    }
    if out.try_send_to(pkt, dst).is_ok() {
        packets.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
        dir.packets.inc();
        dir.bytes.inc_by(pkt.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PortPool;

    #[test]
    fn loss_counting() {
        let cases: &[(&[u16], u64)] = &[
            (&[1, 2, 3, 4], 0),
            (&[1, 2, 5], 2),
            (&[65534, 65535, 0, 1], 0),
            (&[65534, 1], 2),
            (&[10, 9, 11], 0),
            (&[10, 10, 11], 0),
            (&[1, 9000], 0),
        ];
        for (seqs, want) in cases {
            let mut c = LossCounter::default();
            let got: u64 = seqs.iter().map(|s| c.on_packet(*s)).sum();
            assert_eq!(got, *want, "{seqs:?}");
        }
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[0xff; 160]);
        p
    }

    fn pool(first: u16) -> Arc<PortPool> {
        PortPool::new(
            "127.0.0.1".parse().unwrap(),
            first,
            first + 10,
            65536,
            MediaMetrics::default(),
        )
    }

    fn relay_from(pool: &Arc<PortPool>) -> Relay {
        Relay::start(
            pool.allocate().unwrap(),
            pool.allocate().unwrap(),
            MediaMetrics::default(),
        )
    }

    #[tokio::test]
    async fn relays_both_ways_with_latching() {
        let pool = pool(41200);
        let relay = relay_from(&pool);
        let caller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // The callee's SDP names its address; the caller is learned by latching.
        relay.set_remote(Side::B, callee.local_addr().unwrap());
        let mut buf = [0u8; 2048];
        for seq in [1u16, 2, 4] {
            caller
                .send_to(&rtp(seq), relay.local(Side::A))
                .await
                .unwrap();
            let (n, from) = callee.recv_from(&mut buf).await.unwrap();
            assert_eq!(n, 172);
            assert_eq!(from, relay.local(Side::B), "the callee sees only the node");
        }
        callee
            .send_to(&rtp(100), relay.local(Side::B))
            .await
            .unwrap();
        let (_, from) = caller.recv_from(&mut buf).await.unwrap();
        assert_eq!(from, relay.local(Side::A));
        assert_eq!(relay.stats.packets(), (3, 1));
        assert_eq!(relay.stats.lost(), 1, "sequence 3 never came");
        let free_before = pool.free_ports();
        drop(relay);
        tokio::task::yield_now().await;
        for _ in 0..100 {
            if pool.free_ports() == free_before + 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.free_ports(),
            free_before + 2,
            "ports return when the relay stops"
        );
    }

    #[tokio::test]
    async fn records_both_sides_until_stopped() {
        let pool = pool(41220);
        let relay = relay_from(&pool);
        let caller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay.set_remote(Side::A, caller.local_addr().unwrap());
        relay.set_remote(Side::B, callee.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.wav");
        let recorder = crate::Recorder::start();
        relay.start_recording(
            RecordMode::Both,
            recorder.open(path.clone(), RecordMode::Both),
        );
        let mut buf = [0u8; 2048];
        for seq in 0..5u16 {
            caller
                .send_to(&rtp(seq), relay.local(Side::A))
                .await
                .unwrap();
            callee.recv_from(&mut buf).await.unwrap();
            callee
                .send_to(&rtp(seq), relay.local(Side::B))
                .await
                .unwrap();
            caller.recv_from(&mut buf).await.unwrap();
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        relay.stop_recording(Box::new(move |o| {
            let _ = tx.send(o);
        }));
        let outcome = rx.await.unwrap();
        assert_eq!(outcome.error, None);
        // Five 160-byte packets per side (same timestamp: placed over each other).
        assert!(outcome.seconds >= 160.0 / 8000.0, "{outcome:?}");
        let wav = std::fs::read(&path).unwrap();
        assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2, "stereo");
        // rtp() carries payload type 0 (PCMU) bytes 0xff = silence (0): both channels present.
        assert_eq!(
            wav.len() as u32 - 44,
            u32::from_le_bytes(wav[40..44].try_into().unwrap())
        );
        drop(relay);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let not_recording = relay_from(&pool);
        not_recording.stop_recording(Box::new(move |o| {
            let _ = tx.send(o);
        }));
        assert!(
            rx.await.unwrap().error.is_some(),
            "stopping with no recording reports it"
        );
    }
}
