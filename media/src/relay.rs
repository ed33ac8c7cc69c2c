//! The RTP relay of one call: the caller-facing port (A) and the callee-facing port
//! (B), one task, one reused buffer per runtime thread. A packet from the caller
//! arriving on A leaves from B toward the callee, and the reverse. A port accepts
//! only RTP from its side's far end as that side's SDP announced it (the node's
//! `media.latch` policy, see [`crate::latch`]); anything else is dropped and counted
//! (`tsunagu_rtp_foreign_packets_total`). With the default policy the port latches to
//! the first RTP packet from the SDP's IP (symmetric RTP, for far ends behind NAT);
//! new SDP that moves a side's address resets its latch.
//!
//! The task also plays prompts into a side (relayed audio toward that side is muted
//! meanwhile; see [`crate::stream`] for how the two share one RTP stream), reports
//! DTMF key presses each side sends (RFC 4733), and feeds the recording. Dropping the
//! [`Relay`] stops the task and returns both ports to the pool.

use crate::dtmf::EventDetector;
use crate::latch::{judge, Foreign, Latch, Peer, Verdict};
use crate::metrics::{DirectionLabel, ForeignLabel, MediaMetrics};
use crate::ports::MediaPort;
use crate::prompt::{Prompt, FRAME_SAMPLES};
use crate::recording::{Mixer, OnClosed, Outcome, RecordMode, Sink};
use crate::sdp::PayloadTypes;
use crate::stream::{new_ssrc, OutStream};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// The highest interarrival jitter estimate (RFC 3550) of the audio each side sent
    /// (the formats [`crate::jitter::measured`]), in microseconds, plus one (0: not
    /// measured; see [`crate::jitter`]).
    pub jitter_a_us: AtomicU64,
    pub jitter_b_us: AtomicU64,
    /// RTP packets accepted from either party (relayed or not: a prompt may be playing
    /// toward the other): what says the call's media is alive (`media.timeout_seconds`).
    pub received: AtomicU64,
    /// When the last of them came: microseconds since [`clock_base`], plus one (0:
    /// none yet). Read once per wake-up that received something, as the relay reads
    /// the time anyway.
    pub last_received_us: AtomicU64,
}

/// The instant [`RelayStats::last_received_us`] counts from (the first relay's start).
fn clock_base() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

impl RelayStats {
    pub fn packets(&self) -> (u64, u64) {
        (
            self.packets_a_to_b.load(Ordering::Relaxed),
            self.packets_b_to_a.load(Ordering::Relaxed),
        )
    }
    /// RTP packets accepted from either party so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// When the last RTP packet of either party was accepted, if any was: where a
    /// call ended for silence stopped talking (its dead air is not talk time).
    pub fn last_received(&self) -> Option<Instant> {
        match self.last_received_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(clock_base() + Duration::from_micros(us - 1)),
        }
    }

    pub fn lost(&self) -> u64 {
        self.lost_a_to_b.load(Ordering::Relaxed) + self.lost_b_to_a.load(Ordering::Relaxed)
    }

    /// The highest interarrival jitter of the audio from (the caller, the callee), in
    /// microseconds; None where no two packets of one stream in a measured format
    /// came that way ([`crate::jitter::measured`]).
    pub fn jitter_us(&self) -> (Option<u64>, Option<u64>) {
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed).checked_sub(1);
        (read(&self.jitter_a_us), read(&self.jitter_b_us))
    }
}

/// Sequence-number gap counting for one direction.
#[derive(Default)]
struct LossCounter {
    /// The stream's SSRC and the highest sequence number seen in it.
    last: Option<(u32, u16)>,
}

impl LossCounter {
    /// Returns how many packets are missing before this one. Reordered or duplicate
    /// packets (behind the highest seen) count nothing; a jump of more than 3000 is
    /// taken as a stream restart, not loss. A new SSRC is a new stream (another
    /// device after a re-INVITE, a new callee): counting starts again from its first
    /// packet (else a new stream starting below the old one's numbers read as late
    /// packets, and nothing was counted for up to 32,768 packets).
    fn on_packet(&mut self, ssrc: u32, seq: u16) -> u64 {
        let lost = match self.last {
            Some((s, _)) if s != ssrc => 0,
            None => 0,
            Some((_, last)) => {
                let delta = seq.wrapping_sub(last);
                if delta == 0 {
                    return 0; // duplicate
                }
                if delta > 0x8000 {
                    // Behind: a late packet, or, more than 3000 behind, the stream
                    // restarting lower on the same SSRC, counted from here (every packet
                    // read as late, nothing counted until the numbers passed the old
                    // high: about 200 s for a jump of 10,000, a review).
                    if last.wrapping_sub(seq) > 3000 {
                        self.last = Some((ssrc, seq));
                    }
                    return 0;
                }
                if delta > 3000 {
                    0
                } else {
                    u64::from(delta - 1)
                }
            }
        };
        self.last = Some((ssrc, seq));
        lost
    }
}

/// What the relay tells its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    /// The far end of `side` pressed a key (once per press).
    Digit { side: Side, key: char },
    /// A prompt that was not looped has been played to its end.
    PromptDone { side: Side, id: u32 },
}

/// Where a relay sends its [`MediaEvent`]s (the call actor's mailbox).
pub type OnEvent = Arc<dyn Fn(MediaEvent) + Send + Sync>;

/// A prompt being played into one side.
struct Player {
    prompt: Arc<Prompt>,
    payload_type: u8,
    looped: bool,
    id: u32,
    next: usize,
}

enum Control {
    SetRemote(Side, SocketAddr),
    /// That side's far end is gone (a forwarding attempt failed): accept nothing from
    /// it and send it nothing until new SDP names another.
    ClearRemote(Side),
    /// The telephone-event payload type the far end of a side names in its SDP, and
    /// its audio formats.
    SetDtmf(Side, Option<u8>, PayloadTypes),
    Play(Side, Player),
    StopPlaying(Side),
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
        let samples =
            self.started.elapsed().as_micros() * u128::from(crate::wav::SAMPLE_RATE) / 1_000_000;
        u64::try_from(samples).unwrap_or(u64::MAX)
    }
}

/// The relay task's inbox: what its call asks of it. A queue that grows only when used
/// and a wake-up, rather than a channel: a tokio channel allocates a 32-slot block at
/// once, about 2 KiB per call for a handful of messages in the call's life.
#[derive(Default)]
struct Inbox {
    queue: std::sync::Mutex<std::collections::VecDeque<Control>>,
    wake: tokio::sync::Notify,
    /// The Relay was dropped: end after what is queued.
    closed: std::sync::atomic::AtomicBool,
    /// The task has ended (nothing sent now will be handled).
    ended: std::sync::atomic::AtomicBool,
}

impl Inbox {
    /// Queues `c`, or gives it back if the task has ended.
    fn send(&self, c: Control) -> Result<(), Control> {
        if self.ended.load(Ordering::Acquire) {
            return Err(c);
        }
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(c);
        self.wake.notify_one();
        Ok(())
    }

    /// The oldest message not taken yet.
    fn pop(&self) -> Option<Control> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }
}

/// Marks the inbox ended when the relay task stops, however it stops.
struct Ended(Arc<Inbox>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Release);
        // Anything queued meanwhile will not be handled: a recording's caller still
        // hears that it is over (its call record waits for that).
        let left = std::mem::take(&mut *self.0.queue.lock().unwrap_or_else(|p| p.into_inner()));
        for c in left {
            if let Control::StopRecording(done) = c {
                done(Outcome {
                    seconds: 0.0,
                    error: Some("the media relay had stopped".into()),
                    heard: false,
                });
            }
        }
    }
}

pub struct Relay {
    control: Arc<Inbox>,
    pub stats: Arc<RelayStats>,
    a_local: SocketAddr,
    b_local: SocketAddr,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.control.closed.store(true, Ordering::Release);
        self.control.wake.notify_one();
    }
}

impl Relay {
    /// Starts relaying between two leased ports; events go to `on_event`. Must be
    /// called inside a tokio runtime.
    pub fn start(a: MediaPort, b: MediaPort, metrics: MediaMetrics, on_event: OnEvent) -> Relay {
        let control = Arc::new(Inbox::default());
        let stats = Arc::new(RelayStats::default());
        clock_base(); // set before the first packet is timed against it
        let (a_local, b_local) = (a.local(), b.local());
        // The task ends when the Relay is dropped, after handling what was sent before
        // (e.g. a StopRecording); that returns both ports.
        tokio::spawn(run(a, b, control.clone(), stats.clone(), metrics, on_event));
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

    /// Where the far end of `side` said (in SDP) it receives audio: the relay sends
    /// there and accepts that side's packets only from there (per [`Latch`]). Until
    /// this is called a side accepts nothing; the same address again keeps the latch.
    pub fn set_remote(&self, side: Side, addr: SocketAddr) {
        let _ = self.control.send(Control::SetRemote(side, addr));
    }

    /// Forgets the far end of `side` (its SDP address and latch): until
    /// [`Relay::set_remote`] names another, that side accepts nothing and nothing is
    /// sent to it. A failed forwarding attempt's callee, which may have sent SDP in a
    /// 183, must not go on hearing the caller or talking to them while the next
    /// destination rings.
    pub fn clear_remote(&self, side: Side) {
        let _ = self.control.send(Control::ClearRemote(side));
    }

    /// Which payload type carries the telephone-events the far end of `side` sends,
    /// as its own SDP names it, and the formats of that SDP's audio stream
    /// ([`PayloadTypes::UNKNOWN`] if not known). Its packets in the other party's
    /// telephone-event type count as keys too, unless that type is one of its formats:
    /// RFC 3264 has each party send in the types of the SDP it received, and an
    /// answer may number telephone-event differently from its offer.
    pub fn set_dtmf(&self, side: Side, payload_type: Option<u8>, formats: PayloadTypes) {
        let _ = self
            .control
            .send(Control::SetDtmf(side, payload_type, formats));
    }

    /// Plays `prompt` into `side` in `payload_type` (PCMU 0 or PCMA 8), replacing
    /// what is relayed toward that side and any prompt playing there. A prompt that
    /// is not looped reports [`MediaEvent::PromptDone`] with `id` when it ends.
    pub fn play(&self, side: Side, prompt: Arc<Prompt>, payload_type: u8, looped: bool, id: u32) {
        let player = Player {
            prompt,
            payload_type,
            looped,
            id,
            next: 0,
        };
        let _ = self.control.send(Control::Play(side, player));
    }

    /// Stops the prompt playing into `side`; relayed audio flows again.
    pub fn stop_playing(&self, side: Side) {
        let _ = self.control.send(Control::StopPlaying(side));
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
        if let Err(Control::StopRecording(done)) = self.control.send(Control::StopRecording(done)) {
            done(Outcome {
                seconds: 0.0,
                error: Some("the media relay had stopped".into()),
                heard: false,
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

/// The foreign-packet counters, fetched once per relay (no label lookup per packet).
struct Refused {
    source: prometheus_client::metrics::counter::Counter,
    not_rtp: prometheus_client::metrics::counter::Counter,
}

impl Refused {
    fn new(m: &MediaMetrics) -> Refused {
        let get = |reason| m.foreign.get_or_create(&ForeignLabel { reason }).clone();
        Refused {
            source: get("source"),
            not_rtp: get("not_rtp"),
        }
    }

    fn count(&self, why: Foreign) {
        match why {
            Foreign::Source => self.source.inc(),
            Foreign::NotRtp => self.not_rtp.inc(),
        };
    }
}

struct SideState {
    side: Side,
    /// Where this side's far end is: from its SDP, and latched from its packets.
    peer: Peer,
    loss: LossCounter,
    /// Interarrival jitter of what this side's far end sends.
    jitter: crate::jitter::JitterMeter,
    /// The stream sent toward this side's far end.
    out: OutStream,
    player: Option<Player>,
    dtmf_payload_type: Option<u8>,
    /// The audio formats of this side's far end's SDP.
    formats: PayloadTypes,
    dtmf: EventDetector,
}

impl SideState {
    fn new(side: Side) -> SideState {
        SideState {
            side,
            peer: Peer::default(),
            loss: LossCounter::default(),
            jitter: Default::default(),
            out: OutStream::new(new_ssrc()),
            player: None,
            dtmf_payload_type: None,
            formats: PayloadTypes::UNKNOWN,
            dtmf: EventDetector::default(),
        }
    }
}

/// Whether a packet of payload type `pt` from `from`'s far end is a telephone-event:
/// in the type its own SDP names, or in the type of the SDP it received (the other
/// party's, relayed) when that is none of its own audio formats.
fn is_key(from: &SideState, to: &SideState, pt: u8) -> bool {
    Some(pt) == from.dtmf_payload_type
        || (Some(pt) == to.dtmf_payload_type && !from.formats.contains(pt))
}

thread_local! {
    /// One receive buffer per runtime thread, shared by every relay on it: a call holds
    /// no buffer of its own (packets are forwarded before the next await).
    static PACKET: std::cell::RefCell<[u8; 2048]> = const { std::cell::RefCell::new([0u8; 2048]) };
}

/// Packets forwarded per wake-up before yielding to other calls.
const BURST: usize = 32;

/// One direction of the relay: the socket and state packets come from and go out of.
struct Flow<'a> {
    from: &'a tokio::net::UdpSocket,
    from_side: &'a mut SideState,
    out: &'a tokio::net::UdpSocket,
    to_side: &'a mut SideState,
    dir: &'a Direction,
    /// Packets sent, bytes sent and packets lost in this direction, packets accepted
    /// from either side, when the last was, and the peak jitter of this direction
    /// (see [`RelayStats`]).
    counters: [&'a AtomicU64; 6],
    latch: Latch,
    /// What may go toward a side that has sent nothing yet.
    unverified: Unverified<'a>,
    refused: &'a Refused,
    /// Asked at each send whether this node may send (its cluster lease): asked once
    /// per burst, a node frozen (SIGSTOP) mid-burst sent the rest of the burst when it
    /// woke, after its calls had moved (seen once in the frozen-node takeover test).
    gate: &'a MediaPort,
}

/// Receives what is waiting on the path's socket and forwards what the source policy
/// accepts toward the other side's far end (unless a prompt plays there), reporting
/// key presses and feeding the recording, if one runs. Refused packets are counted and
/// go nowhere: not to the other side, not to the recording, not to DTMF detection.
fn drain(p: Flow<'_>, mut rec: Option<&mut Recording>, on_event: &OnEvent) {
    let now = Instant::now();
    let now_us = u64::try_from(now.saturating_duration_since(clock_base()).as_micros())
        .unwrap_or(u64::MAX - 1);
    // Whether a packet was accepted: its time is stored once per wake-up, not per
    // packet.
    let mut accepted = false;
    let rec_now = rec.as_ref().map(|r| r.now()).unwrap_or(0);
    PACKET.with(|buf| {
        let mut buf = buf.borrow_mut();
        for _ in 0..BURST {
            let Ok((n, src)) = p.from.try_recv_from(&mut buf[..]) else {
                return;
            };
            // A datagram that fills the buffer was cut short (the kernel drops the
            // rest): not relayed as if whole (a live torture run had 2,048 bytes of a
            // 3,000-byte packet relayed, its padding flag pointing into the audio).
            // Audio packets are far smaller.
            let whole = n < buf.len();
            let pkt = &mut buf[..n];
            let parsed = if whole {
                crate::rtp::parse(pkt).ok()
            } else {
                None
            };
            match judge(p.latch, &p.from_side.peer, src, parsed.is_some()) {
                Verdict::Drop(why) => {
                    p.refused.count(why);
                    continue;
                }
                Verdict::LatchTo(addr) => p.from_side.peer.latched = Some(addr),
                Verdict::Accept => {}
            }
            let Some(r) = parsed else {
                continue; // judged above: only RTP is accepted
            };
            p.counters[3].fetch_add(1, Ordering::Relaxed);
            accepted = true;
            let seq = u16::from(r.sequence_number());
            if let Some(rec) = rec.as_deref_mut() {
                let side = p.from_side.side;
                rec.mixer.push(
                    side,
                    r.ssrc(),
                    r.timestamp(),
                    r.payload_type(),
                    r.payload(),
                    rec_now,
                );
            }
            if is_key(p.from_side, p.to_side, r.payload_type()) {
                if let Some(key) = p
                    .from_side
                    .dtmf
                    .on_packet(r.ssrc(), r.timestamp(), r.payload())
                {
                    on_event(MediaEvent::Digit {
                        side: p.from_side.side,
                        key,
                    });
                }
            }
            let jitter = &mut p.from_side.jitter;
            if let Some(peak) = jitter.on_packet(r.ssrc(), r.payload_type(), r.timestamp(), now_us)
            {
                p.counters[5].fetch_max(peak + 1, Ordering::Relaxed);
            }
            let gap = p.from_side.loss.on_packet(r.ssrc(), seq);
            if gap > 0 {
                p.counters[2].fetch_add(gap, Ordering::Relaxed);
                p.dir.lost.inc_by(gap);
            }
            if p.to_side.player.is_some() || !p.gate.open() {
                continue; // a prompt plays there, or no lease
            }
            let Some(dst) = p.unverified.destination(&mut p.to_side.peer) else {
                continue; // nowhere to send yet
            };
            p.to_side.out.relay(pkt, now);
            if p.out.try_send_to(pkt, dst).is_ok() {
                p.counters[0].fetch_add(1, Ordering::Relaxed);
                p.counters[1].fetch_add(n as u64, Ordering::Relaxed);
                p.dir.packets.inc();
                p.dir.bytes.inc_by(n as u64);
            }
        }
    });
    if accepted {
        p.counters[4].store(now_us + 1, Ordering::Relaxed);
    }
}

/// What decides whether audio goes to a side that has sent nothing yet.
#[derive(Clone, Copy)]
struct Unverified<'a> {
    /// `media.consent`.
    consent: bool,
    /// `media.unverified_audio_seconds`, in packets.
    budget: u32,
    /// `tsunagu_rtp_unverified_audio_withheld_total`.
    withheld: &'a prometheus_client::metrics::counter::Counter,
}

impl Unverified<'_> {
    /// Where a packet toward `peer` goes ([`Peer::destination`]), counting one
    /// withheld for want of a packet from it.
    fn destination(&self, peer: &mut Peer) -> Option<SocketAddr> {
        let to = peer.destination(self.consent, self.budget);
        if to.is_none() && peer.withholding() {
            self.withheld.inc();
        }
        to
    }
}

/// Sends the next frame of the prompt playing into `s`, if any (see
/// [`Peer::destination`]); ends a prompt that is not looped at its last
/// frame.
fn play_frame(
    socket: &tokio::net::UdpSocket,
    s: &mut SideState,
    unverified: Unverified<'_>,
    now: Instant,
    on_event: &OnEvent,
) {
    let Some(p) = s.player.as_mut() else { return };
    if let Some(dst) = unverified.destination(&mut s.peer) {
        let mut pkt = [0u8; 12 + FRAME_SAMPLES];
        pkt[..12].copy_from_slice(&s.out.generate(p.payload_type, FRAME_SAMPLES as u32, now));
        pkt[12..].copy_from_slice(p.prompt.frame(p.payload_type, p.next));
        let _ = socket.try_send_to(&pkt, dst);
    }
    p.next += 1;
    if p.next >= p.prompt.frames() {
        if p.looped {
            p.next = 0;
        } else {
            let id = p.id;
            s.player = None;
            on_event(MediaEvent::PromptDone { side: s.side, id });
        }
    }
}

/// The relay's task. Not an async fn: that would keep its arguments twice (as passed,
/// and moved into its body) for the call's whole life; here what needs no await is
/// done first and the future captures only what the loop uses: 1,136 bytes instead of
/// 1,480 (debug build), for every call held (see the README's "Load testing").
fn run(
    a: MediaPort,
    b: MediaPort,
    control: Arc<Inbox>,
    stats: Arc<RelayStats>,
    metrics: MediaMetrics,
    on_event: OnEvent,
) -> impl std::future::Future<Output = ()> {
    let ended = Ended(control.clone());
    let [a_to_b, b_to_a] = crate::metrics::DIRECTIONS.map(|d| Direction::new(&metrics, d));
    let refused = Refused::new(&metrics);
    let (latch, consent, budget) = (a.latch(), a.consent(), a.unverified_packets());
    let withheld = metrics.unverified_withheld.clone();
    async move {
        let unverified = Unverified {
            consent,
            budget,
            withheld: &withheld,
        };
        let _ended = ended;
        let mut sa = SideState::new(Side::A);
        let mut sb = SideState::new(Side::B);
        let mut rec: Option<Recording> = None;
        // While recording, audio goes to the file about once a second (no timer otherwise).
        let mut tick: Option<tokio::time::Interval> = None;
        // While a prompt plays, a frame leaves every 20 ms (no timer otherwise).
        let mut frames: Option<tokio::time::Interval> = None;
        loop {
            // What the call asked is applied before any packet read after it (new SDP before
            // the packets it allows, a stop before later audio); the wake-up below only ends
            // the wait. `closed` is read first: what was sent before it is queued by then.
            let closed = control.closed.load(Ordering::Acquire);
            while let Some(c) = control.pop() {
                match c {
                    Control::SetRemote(side, addr) => {
                        // New SDP from that side (an answer, a re-INVITE, or another
                        // destination after a failed attempt): accept and send there; the
                        // latch is redone only if the address changed.
                        let s = if side == Side::A { &mut sa } else { &mut sb };
                        let trusted = a.trusts(addr.ip());
                        match a.refuses(addr, trusted) {
                            None => {
                                s.peer.signal(addr);
                                s.peer.trusted = trusted;
                            }
                            Some(reason) => {
                                tracing::info!(%addr, reason, "media address refused");
                                metrics
                                    .destinations_refused
                                    .get_or_create(&ForeignLabel { reason })
                                    .inc();
                                s.peer.forget();
                            }
                        }
                    }
                    Control::ClearRemote(side) => {
                        let s = if side == Side::A { &mut sa } else { &mut sb };
                        s.peer.forget();
                        s.dtmf_payload_type = None;
                        s.formats = PayloadTypes::UNKNOWN;
                    }
                    Control::SetDtmf(side, pt, formats) => {
                        let s = if side == Side::A { &mut sa } else { &mut sb };
                        s.dtmf_payload_type = pt;
                        s.formats = formats;
                    }
                    Control::Play(side, player) => {
                        let s = if side == Side::A { &mut sa } else { &mut sb };
                        s.player = Some(player);
                        if frames.is_none() {
                            // Burst: frames delayed by a busy core are caught up, so a prompt
                            // keeps real time (its timestamps advance 160 per frame anyway).
                            let mut every = tokio::time::interval(Duration::from_millis(20));
                            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                            frames = Some(every);
                        }
                    }
                    Control::StopPlaying(side) => {
                        let s = if side == Side::A { &mut sa } else { &mut sb };
                        s.player = None;
                    }
                    Control::StartRecording(mixer, sink) => {
                        rec = Some(Recording {
                            mixer,
                            sink,
                            started: std::time::Instant::now(),
                        });
                        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
                        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        tick = Some(every);
                    }
                    Control::StopRecording(done) => match rec.take().inspect(|_| tick = None) {
                        Some(mut r) => {
                            r.sink.append(r.mixer.finish());
                            let heard = r.mixer.heard();
                            r.sink
                                .close(Box::new(move |o| done(Outcome { heard, ..o })));
                        }
                        None => done(Outcome {
                            seconds: 0.0,
                            error: Some("no recording was running".into()),
                            heard: false,
                        }),
                    },
                }
            }
            if closed {
                break;
            }
            tokio::select! {
                r = a.socket().readable() => {
                    if r.is_ok() {
                        let counters = [&stats.packets_a_to_b, &stats.bytes_a_to_b, &stats.lost_a_to_b, &stats.received, &stats.last_received_us, &stats.jitter_a_us];
                        let path = Flow { from: a.socket(), from_side: &mut sa, out: b.socket(), to_side: &mut sb, dir: &a_to_b, counters, latch, unverified, refused: &refused, gate: &a };
                        drain(path, rec.as_mut(), &on_event);
                    }
                }
                r = b.socket().readable() => {
                    if r.is_ok() {
                        let counters = [&stats.packets_b_to_a, &stats.bytes_b_to_a, &stats.lost_b_to_a, &stats.received, &stats.last_received_us, &stats.jitter_b_us];
                        let path = Flow { from: b.socket(), from_side: &mut sb, out: a.socket(), to_side: &mut sa, dir: &b_to_a, counters, latch, unverified, refused: &refused, gate: &a };
                        drain(path, rec.as_mut(), &on_event);
                    }
                }
                _ = async { frames.as_mut().expect("checked").tick().await }, if frames.is_some() => {
                    let now = Instant::now();
                    if a.open() {
                        play_frame(a.socket(), &mut sa, unverified, now, &on_event);
                        play_frame(b.socket(), &mut sb, unverified, now, &on_event);
                    }
                    if sa.player.is_none() && sb.player.is_none() {
                        frames = None;
                    }
                }
                _ = async { tick.as_mut().expect("checked").tick().await }, if tick.is_some() => {
                    if let Some(r) = rec.as_mut() {
                        let now = r.now();
                        r.sink.append(r.mixer.drain(now));
                    }
                }
                _ = control.wake.notified() => {}
            }
        }
        if let Some(mut r) = rec {
            // The call went away without stopping the recording (e.g. its actor crashed):
            // keep what was recorded.
            r.sink.append(r.mixer.finish());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PortPool;
    use tokio::sync::mpsc;

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
            // Restarting 10,000 lower: counted from there (a gap of 2 after it).
            (&[20_000, 10_000, 10_003], 2),
            // A late packet 3000 behind is late, and changes nothing.
            (&[5000, 2000, 5002], 1),
        ];
        for (seqs, want) in cases {
            let mut c = LossCounter::default();
            let got: u64 = seqs.iter().map(|s| c.on_packet(1, *s)).sum();
            assert_eq!(got, *want, "{seqs:?}");
        }
        // A new stream (SSRC) starting below the old one's numbers: its own gaps
        // count from its first packet (one SSRC, they read as late packets).
        let mut c = LossCounter::default();
        let got: u64 = [(1, 30000), (1, 30001), (2, 1), (2, 2), (2, 5)]
            .iter()
            .map(|(ssrc, seq)| c.on_packet(*ssrc, *seq))
            .sum();
        assert_eq!(got, 2);
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

    /// A caller (side A) and a callee (side B) on loopback, each named to the relay
    /// as its side's SDP would.
    async fn parties(relay: &Relay) -> (tokio::net::UdpSocket, tokio::net::UdpSocket) {
        let caller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay.set_remote(Side::A, caller.local_addr().unwrap());
        relay.set_remote(Side::B, callee.local_addr().unwrap());
        (caller, callee)
    }

    fn relay_from(pool: &Arc<PortPool>) -> Relay {
        Relay::start(
            pool.allocate().unwrap(),
            pool.allocate().unwrap(),
            MediaMetrics::default(),
            Arc::new(|_| {}),
        )
    }

    #[test]
    fn a_stop_recording_queued_as_the_task_ends_still_gets_its_answer() {
        let inbox = Arc::new(Inbox::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let ended = Ended(inbox.clone());
        assert!(inbox
            .send(Control::StopRecording(Box::new(move |o| {
                let _ = tx.send(o);
            })))
            .is_ok());
        drop(ended);
        assert!(rx.try_recv().unwrap().error.is_some());
        assert!(
            inbox.send(Control::StopPlaying(Side::A)).is_err(),
            "nothing is queued once the task has ended"
        );
    }

    #[tokio::test]
    async fn a_closed_gate_withholds_relayed_audio() {
        // The node without its cluster lease: packets are read and dropped, not sent.
        let pool = pool(41340);
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (asked_tx, mut asked) = mpsc::unbounded_channel();
        let gate_open = open.clone();
        pool.set_gate(Arc::new(move || {
            let now = gate_open.load(Ordering::SeqCst);
            let _ = asked_tx.send(now);
            now
        }));
        let relay = relay_from(&pool);
        let caller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay.set_remote(Side::A, caller.local_addr().unwrap());
        relay.set_remote(Side::B, callee.local_addr().unwrap());
        caller.send_to(&rtp(1), relay.local(Side::A)).await.unwrap();
        // The relay asked the gate for the batch holding packet 1 (a current-thread
        // runtime: that batch is done before this task runs again).
        while within(asked.recv()).await != Some(false) {}
        open.store(true, Ordering::SeqCst);
        caller.send_to(&rtp(2), relay.local(Side::A)).await.unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = within(callee.recv_from(&mut buf)).await.unwrap();
        assert!(n > 12);
        assert_eq!(
            u16::from_be_bytes([buf[2], buf[3]]),
            2,
            "packet 1 arrived while the gate was closed and went nowhere"
        );
    }

    #[tokio::test]
    async fn a_gate_closing_mid_burst_stops_the_rest_of_the_burst() {
        // A node frozen between two packets of one wake-up must not send the rest when
        // it wakes without its lease: the gate is asked for every packet. Here it is
        // open for the first packet asked about and closed after, until reopened.
        let pool = pool(41420);
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let reopened = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, r) = (asked.clone(), reopened.clone());
        pool.set_gate(Arc::new(move || {
            a.fetch_add(1, Ordering::SeqCst) == 0 || r.load(Ordering::SeqCst)
        }));
        let relay = relay_from(&pool);
        let caller = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay.set_remote(Side::A, caller.local_addr().unwrap());
        relay.set_remote(Side::B, callee.local_addr().unwrap());
        // Three packets queued before the relay runs (blocking sends: this task does
        // not yield on a current-thread runtime), so one wake-up reads all three.
        for seq in 1..=3 {
            caller.send_to(&rtp(seq), relay.local(Side::A)).unwrap();
        }
        let mut buf = [0u8; 2048];
        let (n, _) = within(callee.recv_from(&mut buf)).await.unwrap();
        assert_eq!((n > 12, u16::from_be_bytes([buf[2], buf[3]])), (true, 1));
        reopened.store(true, Ordering::SeqCst);
        caller.send_to(&rtp(4), relay.local(Side::A)).unwrap();
        within(callee.recv_from(&mut buf)).await.unwrap();
        assert_eq!(
            u16::from_be_bytes([buf[2], buf[3]]),
            4,
            "packets 2 and 3 came after the gate closed and went nowhere"
        );
        assert!(asked.load(Ordering::SeqCst) >= 4, "asked for each packet");
    }

    #[tokio::test]
    async fn plays_prompts_into_one_side_and_reports_key_presses() {
        let pool = pool(41240);
        let (relay, _, mut events) = relay_with_events(&pool);
        let (caller, callee) = parties(&relay).await;
        relay.set_dtmf(Side::A, Some(101), PayloadTypes::of([8, 101]));
        // A three-frame prompt in PCMA to the caller.
        let prompt = Arc::new(Prompt::from_samples(&[1000; 480]));
        relay.play(Side::A, prompt.clone(), 8, false, 7);
        let mut buf = [0u8; 2048];
        let mut seqs = Vec::new();
        for _ in 0..3 {
            let (n, from) = within(caller.recv_from(&mut buf)).await.unwrap();
            assert_eq!((n, from), (172, relay.local(Side::A)));
            assert_eq!(buf[1] & 0x7f, 8, "PCMA");
            assert_eq!(&buf[12..n], prompt.frame(8, seqs.len()));
            seqs.push(u16::from_be_bytes([buf[2], buf[3]]));
        }
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(
            within(events.recv()).await,
            Some(MediaEvent::PromptDone {
                side: Side::A,
                id: 7
            })
        );
        // The callee's audio flows to the caller again, continuing the stream.
        callee
            .send_to(&rtp(500), relay.local(Side::B))
            .await
            .unwrap();
        within(caller.recv_from(&mut buf)).await.unwrap();
        assert_eq!(
            u16::from_be_bytes([buf[2], buf[3]]),
            4,
            "sequence continues"
        );
        assert_eq!(buf[1] & 0x80, 0x80, "marker after the switch");
        // A key press from the caller: reported once for its three packets.
        for flags in [0x0a, 0x8a, 0x8a] {
            let mut ev = vec![0x80, 101, 0, 9, 0, 0, 0x10, 0, 0, 0, 0, 1];
            ev.extend_from_slice(&[5, flags, 0, 160]);
            caller.send_to(&ev, relay.local(Side::A)).await.unwrap();
            within(callee.recv_from(&mut buf)).await.unwrap();
        }
        assert_eq!(
            within(events.recv()).await,
            Some(MediaEvent::Digit {
                side: Side::A,
                key: '5'
            })
        );
        // A looped prompt plays until stopped; nothing reaches the caller from the
        // callee meanwhile.
        relay.play(Side::A, prompt.clone(), 0, true, 8);
        callee
            .send_to(&rtp(501), relay.local(Side::B))
            .await
            .unwrap();
        for i in 0..5 {
            let (n, _) = within(caller.recv_from(&mut buf)).await.unwrap();
            assert_eq!(buf[1] & 0x7f, 0, "PCMU, not the callee's packet");
            assert_eq!(&buf[12..n], prompt.frame(0, i % 3), "frame {i}");
        }
        relay.stop_playing(Side::A);
        assert!(
            events.try_recv().is_err(),
            "a looped prompt never ends by itself"
        );
    }

    /// With `media.consent`, a prompt toward a caller whose SDP names an address that
    /// never sent a packet goes nowhere (an SDP naming a victim gets nothing); once a
    /// packet comes from that side, prompts reach it.
    #[tokio::test]
    async fn with_consent_nothing_goes_to_a_side_before_its_first_packet() {
        let pool = pool(41360);
        pool.set_consent(true);
        let (relay, _, mut events) = relay_with_events(&pool);
        let (caller, _callee) = parties(&relay).await;
        let prompt = Arc::new(Prompt::from_samples(&[1000; 480]));
        relay.play(Side::A, prompt.clone(), 8, false, 1);
        // The prompt's three frames are done (each sent, or withheld) when it reports
        // its end; a datagram sent on loopback is queued at once.
        assert_eq!(
            within(events.recv()).await,
            Some(MediaEvent::PromptDone {
                side: Side::A,
                id: 1
            })
        );
        let mut buf = [0u8; 2048];
        assert!(
            caller.try_recv_from(&mut buf).is_err(),
            "nothing toward an address that never sent a packet"
        );
        // The caller speaks: its side is latched, and a prompt reaches it (looped, so
        // that frames keep coming whichever of the packet and the prompt the relay
        // takes first).
        caller.send_to(&rtp(1), relay.local(Side::A)).await.unwrap();
        relay.play(Side::A, prompt.clone(), 8, true, 2);
        let (n, from) = within(caller.recv_from(&mut buf)).await.unwrap();
        assert_eq!((n, from), (172, relay.local(Side::A)));
        assert_eq!(buf[1] & 0x7f, 8, "the prompt, in PCMA");
        relay.stop_playing(Side::A);
    }

    /// A prompt toward a caller whose SDP names an address that never sent a packet
    /// (it could be anyone's): the first frames of `media.unverified_audio_seconds`
    /// (3 here) go there, the rest are withheld and counted; once the caller sends a
    /// packet, prompts reach it in full.
    #[tokio::test]
    async fn an_unverified_address_gets_a_bounded_share_of_a_prompt() {
        let pool = pool(41560);
        pool.set_unverified_packets(3);
        let (relay, metrics, mut events) = relay_with_events(&pool);
        let (caller, _callee) = parties(&relay).await;
        let prompt = Arc::new(Prompt::from_samples(&[1000; 160 * 10]));
        let heard = frames_heard(&relay, &mut events, &caller, &prompt).await;
        assert_eq!(heard, 3, "the budget, then nothing");
        let mut buf = [0u8; 2048];
        assert_eq!(metrics.unverified_withheld.get(), 7);
        // The caller sends: latched, every frame of the next prompt reaches it.
        caller.send_to(&rtp(1), relay.local(Side::A)).await.unwrap();
        relay.play(Side::A, prompt.clone(), 0, true, 2);
        for _ in 0..12 {
            let (n, from) = within(caller.recv_from(&mut buf)).await.unwrap();
            assert_eq!((n, from), (172, relay.local(Side::A)));
        }
        relay.stop_playing(Side::A);
    }

    /// Plays `prompt` once toward side A and counts the frames `caller` got by its end
    /// (sent on loopback before the relay reports the end: all queued by then).
    async fn frames_heard(
        relay: &Relay,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<MediaEvent>,
        caller: &tokio::net::UdpSocket,
        prompt: &Arc<Prompt>,
    ) -> usize {
        relay.play(Side::A, prompt.clone(), 0, false, 1);
        assert_eq!(
            within(events.recv()).await,
            Some(MediaEvent::PromptDone {
                side: Side::A,
                id: 1
            })
        );
        queued(caller)
    }

    /// How many datagrams wait on `sock` (read and dropped).
    fn queued(sock: &tokio::net::UdpSocket) -> usize {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while sock.try_recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    }

    /// `f`, within 5 s (a test fails rather than hangs).
    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("within 5 s")
    }

    /// The callee's audio toward a caller whose SDP names an address that never sent
    /// a packet: 3 packets (the budget, shared with generated audio), the rest withheld
    /// and counted; once the caller sends, all of it.
    #[tokio::test]
    async fn an_unverified_address_gets_a_bounded_share_of_relayed_audio() {
        let pool = pool(41580);
        pool.set_unverified_packets(3);
        let (relay, metrics, _events) = relay_with_events(&pool);
        let (caller, callee) = parties(&relay).await;
        for seq in 0..10 {
            callee
                .send_to(&rtp(seq), relay.local(Side::B))
                .await
                .unwrap();
        }
        // The relay counts every packet it accepts: all ten handled.
        until("ten packets from the callee", || {
            relay.stats.received() == 10
        })
        .await;
        assert_eq!(queued(&caller), 3, "the budget, then nothing");
        assert_eq!(metrics.unverified_withheld.get(), 7);
        caller.send_to(&rtp(1), relay.local(Side::A)).await.unwrap();
        until("the caller's packet", || relay.stats.received() == 11).await;
        let mut buf = [0u8; 2048];
        callee
            .send_to(&rtp(10), relay.local(Side::B))
            .await
            .unwrap();
        let (n, from) = within(caller.recv_from(&mut buf)).await.unwrap();
        assert_eq!(
            (n, from),
            (172, relay.local(Side::A)),
            "heard from: relayed"
        );
    }

    /// A media address inside a trunk's networks (a carrier's anchor) gets audio
    /// before it sends, whatever the budget; under `media.latch = "strict"` a party's
    /// first packet marks it heard from like under the default policy, so a prompt
    /// reaches it in full past the budget.
    #[tokio::test]
    async fn trunks_and_strictly_latched_parties_get_audio_past_the_budget() {
        let prompt = Arc::new(Prompt::from_samples(&[1000; 160 * 10]));
        // A trunk's address, budget 0: every frame of the prompt.
        let pool = pool(41640);
        pool.set_unverified_packets(0);
        pool.set_trunk_addresses(Arc::new(|ip: std::net::IpAddr| ip.is_loopback()));
        let (relay, _, mut events) = relay_with_events(&pool);
        let (caller, _callee) = parties(&relay).await;
        let got = frames_heard(&relay, &mut events, &caller, &prompt).await;
        assert_eq!(got, 10, "a trunk's address is not bounded");
        // Strict latching, budget 3: after the caller's first packet, all ten frames.
        let pool = PortPool::with_latch(
            "127.0.0.1".parse().unwrap(),
            41660,
            41670,
            65536,
            Latch::Strict,
            MediaMetrics::default(),
        );
        pool.set_unverified_packets(3);
        let (relay, _, mut events) = relay_with_events(&pool);
        let (caller, _callee) = parties(&relay).await;
        caller.send_to(&rtp(1), relay.local(Side::A)).await.unwrap();
        until("the caller's packet", || relay.stats.received() == 1).await;
        let got = frames_heard(&relay, &mut events, &caller, &prompt).await;
        assert_eq!(got, 10, "a strictly latched caller hears all of it");
    }

    /// Jitter is measured per direction from what each side sends: G.711 from the
    /// caller whose timestamps run 200 ms apart while the packets come at once reads
    /// as jitter on the caller's side; the callee's G.729 (an 8 kHz RTP clock too),
    /// its timestamps 100 ms apart, on the callee's: each direction its own figure.
    #[tokio::test]
    async fn jitter_is_measured_per_direction() {
        let pool = pool(41720);
        let relay = relay_from(&pool);
        let (caller, callee) = parties(&relay).await;
        let packet = |pt: u8, seq: u16, ts: u32| {
            let mut p = vec![0x80, pt];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 1]);
            p.extend_from_slice(&[0xd5; 160]);
            p
        };
        assert_eq!(relay.stats.jitter_us(), (None, None));
        for seq in 0..4u16 {
            let ts = u32::from(seq) * 1600;
            let (g711, g729) = (packet(8, seq, ts), packet(18, seq, ts / 2));
            caller.send_to(&g711, relay.local(Side::A)).await.unwrap();
            callee.send_to(&g729, relay.local(Side::B)).await.unwrap();
        }
        until("eight packets", || relay.stats.received() == 8).await;
        let (from_caller, from_callee) = relay.stats.jitter_us();
        assert!(from_caller.is_some_and(|us| us > 0), "{from_caller:?}");
        assert!(
            from_callee.is_some_and(|us| us > 0),
            "G.729: {from_callee:?}"
        );
        assert!(from_caller > from_callee, "{from_caller:?} {from_callee:?}");
    }

    #[tokio::test]
    async fn relays_both_ways_with_latching() {
        let pool = pool(41200);
        let relay = relay_from(&pool);
        // The caller's SDP names one port, but it sends from another (behind NAT, same
        // public IP): the default policy latches that port and sends back to it.
        let signalled = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let caller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay.set_remote(Side::A, signalled.local_addr().unwrap());
        relay.set_remote(Side::B, callee.local_addr().unwrap());
        let mut buf = [0u8; 2048];
        assert_eq!(relay.stats.last_received(), None, "nothing received yet");
        let first_sent = std::time::Instant::now();
        for seq in [1u16, 2, 4] {
            caller
                .send_to(&rtp(seq), relay.local(Side::A))
                .await
                .unwrap();
            let (n, from) = within(callee.recv_from(&mut buf)).await.unwrap();
            assert_eq!(n, 172);
            assert_eq!(from, relay.local(Side::B), "the callee sees only the node");
        }
        callee
            .send_to(&rtp(100), relay.local(Side::B))
            .await
            .unwrap();
        let (_, from) = within(caller.recv_from(&mut buf)).await.unwrap();
        assert_eq!(from, relay.local(Side::A));
        assert_eq!(relay.stats.packets(), (3, 1));
        assert_eq!(relay.stats.lost(), 1, "sequence 3 never came");
        // When the last packet came (what a media timeout ends the talk at).
        let last = relay.stats.last_received().expect("a packet's time");
        assert!(
            last + std::time::Duration::from_millis(1) >= first_sent
                && last <= std::time::Instant::now(),
            "{last:?}"
        );
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

    /// An RTP packet whose payload is 160 bytes of `byte` (what a receiver checks).
    fn rtp_of(seq: u16, ssrc: u32, byte: u8) -> Vec<u8> {
        let mut p = vec![0x80, 0x08];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[byte; 160]);
        p
    }

    /// The payload byte of the next packet `socket` receives, and its source.
    async fn next_payload(socket: &tokio::net::UdpSocket) -> (u8, SocketAddr) {
        let mut buf = [0u8; 2048];
        let (n, from) = within(socket.recv_from(&mut buf)).await.unwrap();
        assert!(n > 12, "RTP with a payload: {:?}", &buf[..n]);
        (buf[n - 1], from)
    }

    fn refused(metrics: &MediaMetrics, reason: &'static str) -> u64 {
        metrics
            .foreign
            .get_or_create(&ForeignLabel { reason })
            .get()
    }

    /// Polls `cond` (an observable effect of the relay task) for up to 5 s.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// One sprayed RTP packet (loud payload) to each port of the call.
    async fn spray(from: &tokio::net::UdpSocket, ports: [SocketAddr; 2]) {
        for port in ports {
            from.send_to(&rtp_of(9, 0xbad, SPRAY), port).await.unwrap();
        }
    }

    const CALLER: u8 = 0x11;
    const CALLEE: u8 = 0x22;
    const SPRAY: u8 = 0xaa;

    /// A third socket sprays both ports of a call with RTP, RTCP and garbage, before
    /// and after the parties' packets: the parties receive only each other, the
    /// recording only them, and the sprayed packets are counted. Packets to one port
    /// are handled in arrival order, so "the next packet the party receives is the
    /// other party's" proves that everything sprayed before it was dropped.
    #[tokio::test]
    async fn a_third_socket_spraying_the_ports_reaches_no_party_nor_the_recording() {
        let pool = pool(41260);
        let metrics = MediaMetrics::default();
        let relay = Relay::start(
            pool.allocate().unwrap(),
            pool.allocate().unwrap(),
            metrics.clone(),
            Arc::new(|_| {}),
        );
        let (a_port, b_port) = (relay.local(Side::A), relay.local(Side::B));
        let ports = [a_port, b_port];
        let caller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Another host (any 127/8 address is local on Linux), and another port of the
        // parties' own host.
        let stranger = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
        let neighbour = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let recorder = crate::Recorder::start();
        let path = dir.path().join("r.wav");
        relay.set_remote(Side::A, caller.local_addr().unwrap());
        relay.start_recording(
            RecordMode::Both,
            recorder.open(path.clone(), RecordMode::Both),
        );

        // The callee's SDP is not known yet: its early packets, and the stranger's,
        // go nowhere.
        callee.send_to(&rtp_of(1, 2, CALLEE), b_port).await.unwrap();
        spray(&stranger, ports).await;
        until("3 refused packets", || refused(&metrics, "source") == 3).await;
        relay.set_remote(Side::B, callee.local_addr().unwrap());
        caller.send_to(&rtp_of(1, 1, CALLER), a_port).await.unwrap();
        assert_eq!(next_payload(&callee).await, (CALLER, b_port));
        callee.send_to(&rtp_of(2, 2, CALLEE), b_port).await.unwrap();
        assert_eq!(next_payload(&caller).await, (CALLEE, a_port));

        // Both latched: the stranger and the neighbour are refused, and so is what is
        // not RTP, from anyone.
        for attacker in [&stranger, &neighbour] {
            spray(attacker, ports).await;
            for port in ports {
                attacker
                    .send_to(b"\x00\x01\x00\x00garbage", port)
                    .await
                    .unwrap();
            }
        }
        let rtcp = [0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        caller.send_to(&rtcp, a_port).await.unwrap();
        callee
            .send_to(&[0x00, 0x01, 0x00, 0x00], b_port)
            .await
            .unwrap();
        // Nor a packet too large for the buffer, even from the latched caller.
        let mut oversize = rtp_of(2, 1, 0x55);
        oversize.resize(3_000, 0x55);
        caller.send_to(&oversize, a_port).await.unwrap();
        caller.send_to(&rtp_of(2, 1, CALLER), a_port).await.unwrap();
        assert_eq!(next_payload(&callee).await, (CALLER, b_port));
        callee.send_to(&rtp_of(3, 2, CALLEE), b_port).await.unwrap();
        assert_eq!(next_payload(&caller).await, (CALLEE, a_port));
        assert_eq!(refused(&metrics, "source"), 3 + 8);
        assert_eq!(refused(&metrics, "not_rtp"), 3);
        assert_eq!(relay.stats.packets(), (2, 2), "only the parties' packets");

        // The recording holds the parties and nothing of the spray.
        let (tx, rx) = tokio::sync::oneshot::channel();
        relay.stop_recording(Box::new(move |o| {
            let _ = tx.send(o);
        }));
        assert_eq!(rx.await.unwrap().error, None);
        let wav = std::fs::read(&path).unwrap();
        let samples: Vec<i16> = wav[44..]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        let decoded = |byte: u8| {
            let mut v = Vec::new();
            assert!(crate::g711::decode(crate::g711::PCMA, &[byte], &mut v));
            v[0]
        };
        let (caller_s, callee_s, spray_s) = (decoded(CALLER), decoded(CALLEE), decoded(SPRAY));
        assert!(
            samples.iter().step_by(2).any(|s| *s == caller_s),
            "caller recorded"
        );
        assert!(
            samples.iter().skip(1).step_by(2).any(|s| *s == callee_s),
            "callee recorded"
        );
        assert!(
            !samples.contains(&spray_s),
            "the spray is not in the recording"
        );
    }

    /// A call on reused ports: what the previous call left queued on them (sent from the
    /// very address the new call's caller uses, which the latch would accept) and what
    /// was sprayed at them while they were free never reaches the new call; the
    /// caller's first packet of the new call is the first the callee receives.
    #[tokio::test]
    async fn nothing_sent_to_a_port_before_its_lease_reaches_the_next_call() {
        let metrics = MediaMetrics::default();
        let pool = PortPool::new(
            "127.0.0.1".parse().unwrap(),
            41700,
            41703,
            65536,
            metrics.clone(),
        );
        let caller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // The previous call ends with the caller's last packets unread.
        let (a, b) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        let ports = [a.local(), b.local()];
        for seq in 0..3 {
            caller
                .send_to(&rtp_of(seq, 1, SPRAY), ports[0])
                .await
                .unwrap();
        }
        a.socket().readable().await.unwrap();
        drop((a, b));
        // While the ports are free.
        spray(&caller, ports).await;
        let relay = Relay::start(
            pool.allocate().unwrap(),
            pool.allocate().unwrap(),
            metrics.clone(),
            Arc::new(|_| {}),
        );
        assert_eq!([relay.local(Side::A), relay.local(Side::B)], ports);
        assert!(metrics.stray_packets_drained.get() >= 1, "drained");
        relay.set_remote(Side::A, caller.local_addr().unwrap());
        relay.set_remote(Side::B, callee.local_addr().unwrap());
        caller
            .send_to(&rtp_of(10, 1, CALLER), ports[0])
            .await
            .unwrap();
        assert_eq!(next_payload(&callee).await, (CALLER, ports[1]));
        assert_eq!(relay.stats.packets(), (1, 0));
    }

    /// The latch follows the SDP: the same address again (a session refresh) keeps it,
    /// a new address redoes it.
    #[tokio::test]
    async fn new_sdp_redoes_the_latch_only_when_the_address_changes() {
        let pool = pool(41280);
        let relay = relay_from(&pool);
        let signalled = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let natted = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let moved = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (a_port, b_port) = (relay.local(Side::A), relay.local(Side::B));
        relay.set_remote(Side::A, signalled.local_addr().unwrap());
        relay.set_remote(Side::B, callee.local_addr().unwrap());
        natted.send_to(&rtp_of(1, 1, 1), a_port).await.unwrap();
        assert_eq!(next_payload(&callee).await.0, 1);
        // A re-INVITE with the same SDP address: the callee still reaches the latched
        // port, and the caller's packets from it still pass.
        relay.set_remote(Side::A, signalled.local_addr().unwrap());
        callee.send_to(&rtp_of(1, 2, 2), b_port).await.unwrap();
        assert_eq!(next_payload(&natted).await, (2, a_port));
        natted.send_to(&rtp_of(2, 1, 3), a_port).await.unwrap();
        assert_eq!(next_payload(&callee).await.0, 3);
        // A re-INVITE moving the caller's media: audio goes to the new address until
        // the caller's first packet latches again.
        relay.set_remote(Side::A, moved.local_addr().unwrap());
        callee.send_to(&rtp_of(2, 2, 4), b_port).await.unwrap();
        assert_eq!(next_payload(&moved).await, (4, a_port));
        moved.send_to(&rtp_of(3, 1, 5), a_port).await.unwrap();
        assert_eq!(next_payload(&callee).await.0, 5);
        natted.send_to(&rtp_of(4, 1, 6), a_port).await.unwrap();
        moved.send_to(&rtp_of(5, 1, 7), a_port).await.unwrap();
        assert_eq!(
            next_payload(&callee).await.0,
            7,
            "the old latched port is refused"
        );
        drop(signalled);
    }

    /// A relay on two ports of `pool`, its metrics, and what it reports.
    fn relay_with_events(
        pool: &Arc<PortPool>,
    ) -> (
        Relay,
        MediaMetrics,
        tokio::sync::mpsc::UnboundedReceiver<MediaEvent>,
    ) {
        let metrics = MediaMetrics::default();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let relay = Relay::start(
            pool.allocate().unwrap(),
            pool.allocate().unwrap(),
            metrics.clone(),
            Arc::new(move |e| {
                let _ = tx.send(e);
            }),
        );
        (relay, metrics, events)
    }

    /// The end packet of a key press of 5 (telephone-event, payload type 101).
    fn key_five_end() -> Vec<u8> {
        let mut key = vec![0x80, 101, 0, 2, 0, 0, 0x10, 0, 0, 0, 0, 1];
        key.extend_from_slice(&[5, 0x8a, 0, 160]);
        key
    }

    /// A callee that sent SDP (a 183) and then failed is forgotten: its packets are
    /// refused and the caller's go nowhere until the next destination's SDP. Packets
    /// to one port are handled in order, so a key press reported after the caller's
    /// packet proves that packet was handled (the old callee's socket, on loopback,
    /// would already hold it).
    #[tokio::test]
    async fn a_failed_callee_is_forgotten_until_the_next_one_signals() {
        let (relay, metrics, mut events) = relay_with_events(&pool(41440));
        let (a_port, b_port) = (relay.local(Side::A), relay.local(Side::B));
        let caller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let failed = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let next = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay.set_remote(Side::A, caller.local_addr().unwrap());
        relay.set_dtmf(Side::A, Some(101), PayloadTypes::of([8, 101]));
        relay.set_remote(Side::B, failed.local_addr().unwrap());
        failed.send_to(&rtp_of(1, 2, 1), b_port).await.unwrap();
        assert_eq!(
            next_payload(&caller).await.0,
            1,
            "early media while it rang"
        );
        relay.clear_remote(Side::B);
        failed.send_to(&rtp_of(2, 2, 2), b_port).await.unwrap();
        until("the failed callee's packet refused", || {
            refused(&metrics, "source") == 1
        })
        .await;
        caller.send_to(&rtp_of(1, 1, 3), a_port).await.unwrap();
        let key = key_five_end();
        caller.send_to(&key, a_port).await.unwrap();
        assert_eq!(
            within(events.recv()).await,
            Some(MediaEvent::Digit {
                side: Side::A,
                key: '5'
            })
        );
        let mut buf = [0u8; 2048];
        assert_eq!(
            failed
                .try_recv_from(&mut buf)
                .map(|(n, _)| n)
                .map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "the failed callee heard the caller after it failed"
        );
        relay.set_remote(Side::B, next.local_addr().unwrap());
        caller.send_to(&rtp_of(3, 1, 4), a_port).await.unwrap();
        assert_eq!(
            next_payload(&next).await.0,
            4,
            "the next callee hears the caller"
        );
    }

    /// The caller's offer names telephone-event 101, the callee's answer 100 (RFC 3264
    /// lets an answer number it its own way, and has each party send in the types of
    /// the SDP it received): the caller's keys in 100 are heard, as in 101. A type the
    /// caller's own SDP gives an audio codec is never read as keys.
    #[tokio::test]
    async fn keys_in_the_other_partys_telephone_event_type_are_heard() {
        let (relay, _metrics, mut events) = relay_with_events(&pool(41480));
        let a_port = relay.local(Side::A);
        let caller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay.set_remote(Side::A, caller.local_addr().unwrap());
        relay.set_remote(Side::B, callee.local_addr().unwrap());
        relay.set_dtmf(Side::A, Some(101), PayloadTypes::of([8, 101]));
        relay.set_dtmf(Side::B, Some(100), PayloadTypes::of([8, 100]));
        let key_in = |pt: u8, key: u8, seq: u8| {
            let mut p = vec![0x80, pt, 0, seq, 0, 0, 0x10 * seq, 0, 0, 0, 0, 1];
            p.extend_from_slice(&[key, 0x8a, 0, 160]);
            p
        };
        let key = |key| Some(MediaEvent::Digit { side: Side::A, key });
        caller.send_to(&key_in(100, 5, 1), a_port).await.unwrap();
        assert_eq!(
            within(events.recv()).await,
            key('5'),
            "in the callee's number"
        );
        caller.send_to(&key_in(101, 7, 2), a_port).await.unwrap();
        assert_eq!(within(events.recv()).await, key('7'), "in its own");
        // The caller's SDP gives 100 to a codec: its packets in 100 are audio. A key in
        // 101 after them is the next event: the 100 ones made none.
        relay.set_dtmf(Side::A, Some(101), PayloadTypes::of([8, 100, 101]));
        caller.send_to(&key_in(100, 3, 3), a_port).await.unwrap();
        caller.send_to(&key_in(101, 9, 4), a_port).await.unwrap();
        assert_eq!(within(events.recv()).await, key('9'));
    }

    /// SDP naming a destination the node must not send to (cloud metadata, a LAN's
    /// multicast) leaves that side without one: counted, nothing sent there, and the
    /// next good SDP works as usual.
    #[tokio::test]
    async fn media_addresses_the_node_must_not_send_to_are_refused() {
        let (relay, metrics, mut events) = relay_with_events(&pool(41460));
        let refused_to = |reason| {
            metrics
                .destinations_refused
                .get_or_create(&ForeignLabel { reason })
                .get()
        };
        let caller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay.set_remote(Side::A, caller.local_addr().unwrap());
        relay.set_dtmf(Side::A, Some(101), PayloadTypes::of([8, 101]));
        relay.set_remote(Side::B, "169.254.169.254:80".parse().unwrap());
        relay.set_remote(Side::B, "224.0.0.251:5353".parse().unwrap());
        until("both refused", || {
            refused_to("link_local") == 1 && refused_to("multicast") == 1
        })
        .await;
        // The caller talks, then presses a key: once the key is reported, the audio
        // before it was handled (one port's packets in order) and went nowhere.
        caller
            .send_to(&rtp_of(1, 1, 1), relay.local(Side::A))
            .await
            .unwrap();
        let key = key_five_end();
        caller.send_to(&key, relay.local(Side::A)).await.unwrap();
        assert_eq!(
            within(events.recv()).await,
            Some(MediaEvent::Digit {
                side: Side::A,
                key: '5'
            })
        );
        assert_eq!(
            relay.stats.packets(),
            (0, 0),
            "nothing was sent to the refused addresses"
        );
        relay.set_remote(Side::B, callee.local_addr().unwrap());
        caller
            .send_to(&rtp_of(3, 1, 3), relay.local(Side::A))
            .await
            .unwrap();
        assert_eq!(
            next_payload(&callee).await.0,
            3,
            "a good address works as usual"
        );
    }

    /// `strict` refuses the NAT'd port the default policy latches; `off` (unsafe) lets
    /// anyone in, as the relay did before the source check.
    #[tokio::test]
    async fn strict_and_off_policies() {
        for (latch, first, natted_passes) in
            [(Latch::Strict, 41300, false), (Latch::Off, 41320, true)]
        {
            let pool = PortPool::with_latch(
                "127.0.0.1".parse().unwrap(),
                first,
                first + 10,
                65536,
                latch,
                MediaMetrics::default(),
            );
            let relay = relay_from(&pool);
            let signalled = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let natted = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let a_port = relay.local(Side::A);
            relay.set_remote(Side::A, signalled.local_addr().unwrap());
            relay.set_remote(Side::B, callee.local_addr().unwrap());
            natted.send_to(&rtp_of(1, 1, 1), a_port).await.unwrap();
            signalled.send_to(&rtp_of(2, 1, 2), a_port).await.unwrap();
            let want = if natted_passes { 1 } else { 2 };
            assert_eq!(next_payload(&callee).await.0, want, "{latch:?}");
        }
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
            within(callee.recv_from(&mut buf)).await.unwrap();
            callee
                .send_to(&rtp(seq), relay.local(Side::B))
                .await
                .unwrap();
            within(caller.recv_from(&mut buf)).await.unwrap();
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
