//! Call recording (2者間通話録音). [`Mixer`] is the sans-IO core: RTP audio of each
//! side goes in with the time as an argument, placed by RTP timestamp, and interleaved
//! frames (caller left, callee right; or one side, mono) come out once they are older
//! than the jitter allowance. [`Recorder`] is the one thread that owns every open WAV
//! file; relays send it a chunk about once a second, so a crash loses at most the
//! last second.

use crate::g711;
use crate::relay::Side;
use crate::wav::{WavFile, SAMPLE_RATE};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// Which parties are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordMode {
    /// Stereo: caller left, callee right.
    Both,
    /// Mono, the caller only.
    Caller,
    /// Mono, the callee only.
    Callee,
}

impl RecordMode {
    /// The tracks recorded, in channel order (index 0 = caller, 1 = callee).
    fn tracks(self) -> &'static [usize] {
        match self {
            RecordMode::Both => &[0, 1],
            RecordMode::Caller => &[0],
            RecordMode::Callee => &[1],
        }
    }

    pub fn channels(self) -> u16 {
        self.tracks().len() as u16
    }
}

/// Audio younger than this is held back, so late packets still land in place.
pub const JITTER_SAMPLES: u64 = SAMPLE_RATE as u64 / 5;
/// A packet whose timestamp puts it further than this from the wall clock re-anchors
/// its stream (a timestamp jump must not make the buffer grow without bound).
const MAX_SKEW_SAMPLES: u64 = 5 * SAMPLE_RATE as u64;
/// The most one drain emits (10 s): past it a drain skips (see [`Mixer::drain`]).
const MAX_CATCH_UP_SAMPLES: u64 = 10 * SAMPLE_RATE as u64;
/// What one track may hold ahead of what was emitted (60 s, under 1 MiB): a backstop
/// should the recording not be drained; normally it holds the skew plus a second.
const MAX_BUFFERED_SAMPLES: usize = 60 * SAMPLE_RATE as usize;

/// Where a packet's first sample goes (absolute sample index; None for time before the
/// recording began) and its stream's anchor afterwards. A packet is placed by its RTP
/// timestamp's signed distance from its stream's first packet (up to 2^31 samples
/// either way, as RFC 3550 serial arithmetic reads it); a position further than
/// [`MAX_SKEW_SAMPLES`] from `now`, forward or back, or a new SSRC, re-anchors the
/// stream at `now`. So no timestamp a peer sends moves audio more than the skew away
/// from the wall clock, and a stream that jumps back keeps being recorded.
fn place(anchor: Option<Anchor>, ssrc: u32, timestamp: u32, now: u64) -> (Option<u64>, Anchor) {
    let fresh = Anchor {
        ssrc,
        first_ts: timestamp,
        base: now,
    };
    let Some(a) = anchor.filter(|a| a.ssrc == ssrc) else {
        return (Some(now), fresh);
    };
    // Reinterpreting the wrapped difference as i32 is the serial-number distance.
    let offset = i64::from(timestamp.wrapping_sub(a.first_ts) as i32);
    let base = i64::try_from(a.base).unwrap_or(i64::MAX);
    let pos = base.saturating_add(offset);
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    if pos.abs_diff(now_i) > MAX_SKEW_SAMPLES {
        return (Some(now), fresh);
    }
    (u64::try_from(pos).ok(), a)
}

#[derive(Clone, Copy)]
struct Anchor {
    ssrc: u32,
    first_ts: u32,
    /// Absolute sample index of `first_ts`.
    base: u64,
}

#[derive(Default)]
struct Track {
    anchor: Option<Anchor>,
    /// The newest timestamp of the anchored stream (serial order).
    newest: Option<u32>,
    /// Samples from the mixer's `emitted` index on.
    buf: VecDeque<i16>,
}

pub struct Mixer {
    mode: RecordMode,
    tracks: [Track; 2],
    /// Some party's audio was placed (see [`Outcome::heard`]).
    heard: bool,
    /// Absolute sample index up to which frames have been emitted.
    emitted: u64,
    scratch: Vec<i16>,
}

fn index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

impl Mixer {
    pub fn new(mode: RecordMode) -> Mixer {
        Mixer {
            mode,
            tracks: [Track::default(), Track::default()],
            heard: false,
            emitted: 0,
            scratch: Vec::with_capacity(320),
        }
    }

    /// One RTP packet from `side`'s far end, at `now` samples since recording began.
    pub fn push(
        &mut self,
        side: Side,
        ssrc: u32,
        timestamp: u32,
        payload_type: u8,
        payload: &[u8],
        now: u64,
    ) {
        if !self.mode.tracks().contains(&index(side)) {
            return;
        }
        self.scratch.clear();
        if !g711::decode(payload_type, payload, &mut self.scratch) {
            return;
        }
        let emitted = self.emitted;
        let track = &mut self.tracks[index(side)];
        let (pos, mut anchor) = place(track.anchor, ssrc, timestamp, now);
        if anchor.first_ts == timestamp && anchor.base == now {
            track.newest = None; // a new anchor: a new sequence
        }
        let in_sequence = track
            .newest
            .is_none_or(|n| timestamp.wrapping_sub(n) as i32 > 0);
        if in_sequence {
            track.newest = Some(timestamp);
        }
        let Some(mut pos) = pos else {
            track.anchor = Some(anchor);
            return; // for time before the recording began
        };
        let len = self.scratch.len() as u64;
        if in_sequence && pos.saturating_add(len) <= emitted {
            // The stream's newest packet is wholly late: its sender's clock runs slow
            // (a sound card), or its delay rose for good, by more than the jitter
            // allowance. Re-anchored where it arrives, it is heard again (else it would
            // be dropped until the skew limit, minutes of one side's silence). A single
            // reordered packet (older than the newest) is only dropped.
            anchor = Anchor {
                ssrc,
                first_ts: timestamp,
                base: now,
            };
            pos = now;
        }
        track.anchor = Some(anchor);
        let mut samples = &self.scratch[..];
        if pos < emitted {
            // Late: keep what is not emitted yet (`late` < the payload's length).
            let late = usize::try_from(emitted - pos).unwrap_or(usize::MAX);
            let Some(rest) = samples.get(late..).filter(|r| !r.is_empty()) else {
                return;
            };
            samples = rest;
            pos = emitted;
        }
        let at = usize::try_from(pos - emitted).unwrap_or(usize::MAX);
        let Some(end) = at
            .checked_add(samples.len())
            .filter(|e| *e <= MAX_BUFFERED_SAMPLES)
        else {
            return; // past what may wait (the recording is not being drained)
        };
        if track.buf.len() < end {
            track.buf.resize(end, 0);
        }
        for (slot, s) in track.buf.range_mut(at..end).zip(samples) {
            *slot = *s;
        }
        self.heard = true;
    }

    /// Whether some party's audio was placed (not only silence filling gaps).
    pub fn heard(&self) -> bool {
        self.heard
    }

    /// Frames that are final at `now` (older than the jitter allowance), interleaved.
    /// The recording is drained every second; a drain that finds more than
    /// [`MAX_CATCH_UP_SAMPLES`] due (the node was frozen: SIGSTOP, a paused VM) emits
    /// what the tracks hold (the audio received before the freeze) and at most that
    /// much silence after it, skipping the rest of the gap. It emitted the whole gap
    /// in one buffer, an hour's freeze 115 MB and a tenth of a second of CPU per
    /// recorded call, appended as silence (a review); the file is shorter than the
    /// call instead, which its `recording_status` says (`truncated`).
    pub fn drain(&mut self, now: u64) -> Vec<i16> {
        let target = now.saturating_sub(JITTER_SAMPLES);
        if target.saturating_sub(self.emitted) <= MAX_CATCH_UP_SAMPLES {
            return self.emit_until(target);
        }
        // The buffered audio first (at most a minute a track), then the silence.
        let held = self.tracks.iter().map(|t| t.buf.len()).max().unwrap_or(0) as u64;
        let mut out = self.emit_until(self.emitted + held);
        let skip = target
            .saturating_sub(self.emitted)
            .saturating_sub(MAX_CATCH_UP_SAMPLES);
        self.emitted += skip; // the tracks are empty now: nothing to drop
        out.extend(self.emit_until(target));
        out
    }

    /// Everything buffered, at the end of the recording.
    pub fn finish(&mut self) -> Vec<i16> {
        let longest = self.tracks.iter().map(|t| t.buf.len()).max().unwrap_or(0);
        self.emit_until(self.emitted + longest as u64)
    }

    fn emit_until(&mut self, target: u64) -> Vec<i16> {
        if target <= self.emitted {
            return Vec::new();
        }
        let n = (target - self.emitted) as usize;
        let tracks = self.mode.tracks();
        let mut out = Vec::with_capacity(n * tracks.len());
        for _ in 0..n {
            for &s in tracks {
                out.push(self.tracks[s].buf.pop_front().unwrap_or(0));
            }
        }
        self.emitted = target;
        out
    }
}

/// How a recording ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub seconds: f64,
    /// The first write error, if any (the file holds what was written before it).
    pub error: Option<String>,
    /// Any party's audio was recorded: a file of `seconds` may be silence alone (gaps
    /// are filled), which is no recording of the call. Set by the relay, which mixes.
    pub heard: bool,
}

pub type OnClosed = Box<dyn FnOnce(Outcome) + Send>;

enum Msg {
    Open(u64, PathBuf, u16),
    Append(u64, Vec<i16>),
    /// Audio of this recording was dropped: the writer is behind (see [`MAX_QUEUED`]).
    Dropped(u64),
    Close(u64, Option<OnClosed>),
}

/// Audio waiting for the recorder thread, at most (bytes): about a second of 2,000
/// stereo calls. Past it (a disk or network share that stalls) appends are dropped and
/// the recording reports an error, rather than the node's memory growing with every
/// recorded call for as long as the stall lasts.
pub const MAX_QUEUED: usize = 64 << 20;

/// Handle to the recorder thread.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    next: std::sync::Arc<AtomicU64>,
    /// Bytes of audio sent and not yet written.
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
}

/// One open recording; closed by [`Sink::close`] or, without a callback, on drop.
pub struct Sink {
    id: u64,
    tx: mpsc::Sender<Msg>,
    closed: bool,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
    /// Some audio of it was dropped (said once to the writer).
    dropped: std::cell::Cell<bool>,
}

impl Recorder {
    pub fn start() -> Recorder {
        Recorder::with_limit(MAX_QUEUED)
    }

    /// A recorder whose queue holds at most `limit` bytes of audio.
    pub fn with_limit(limit: usize) -> Recorder {
        let (tx, rx) = mpsc::channel();
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let q = queued.clone();
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || run(rx, q))
            .expect("spawn recorder thread");
        Recorder {
            tx,
            next: std::sync::Arc::new(AtomicU64::new(1)),
            queued,
            limit,
        }
    }

    /// Bytes of audio waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn open(&self, path: PathBuf, mode: RecordMode) -> Sink {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Msg::Open(id, path, mode.channels()));
        Sink {
            id,
            tx: self.tx.clone(),
            closed: false,
            queued: self.queued.clone(),
            limit: self.limit,
            dropped: std::cell::Cell::new(false),
        }
    }
}

impl Sink {
    pub fn append(&self, samples: Vec<i16>) {
        if samples.is_empty() {
            return;
        }
        let bytes = samples.len() * 2;
        let before = self.queued.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            if !self.dropped.replace(true) {
                let _ = self.tx.send(Msg::Dropped(self.id));
            }
            return;
        }
        if self.tx.send(Msg::Append(self.id, samples)).is_err() {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Closes the file; `done` runs (on the recorder thread) once it is complete. If
    /// the recorder is gone, `done` runs here with an error.
    pub fn close(mut self, done: OnClosed) {
        self.closed = true;
        if let Err(mpsc::SendError(Msg::Close(_, Some(done)))) =
            self.tx.send(Msg::Close(self.id, Some(done)))
        {
            done(Outcome {
                seconds: 0.0,
                error: Some("recorder thread is gone".into()),
                heard: false,
            });
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.tx.send(Msg::Close(self.id, None));
        }
    }
}

struct Open {
    file: Option<WavFile>,
    error: Option<String>,
    /// The directory the file's name is in (synced with it at close).
    dir: Option<PathBuf>,
}

/// A closed recording whose outcome waits for its file to be on disk (see
/// [`finish_closes`]).
struct Closing {
    file: Option<WavFile>,
    dir: Option<PathBuf>,
    outcome: Outcome,
    done: Option<OnClosed>,
}

/// Messages handled before the closes they include are synced and reported: closes
/// are finished in batches (one directory sync for many files), and never wait behind
/// a stream of appends that does not end.
const CLOSE_BATCH: usize = 256;

fn run(rx: mpsc::Receiver<Msg>, queued: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let mut files: HashMap<u64, Open> = HashMap::new();
    let mut closing: Vec<Closing> = Vec::new();
    while let Ok(msg) = rx.recv() {
        handle(msg, &mut files, &mut closing, &queued);
        for _ in 1..CLOSE_BATCH {
            match rx.try_recv() {
                Ok(msg) => handle(msg, &mut files, &mut closing, &queued),
                Err(_) => break,
            }
        }
        finish_closes(
            std::mem::take(&mut closing),
            |f| f.sync(),
            crate::wav::sync_dir,
        );
    }
}

/// Reports closed recordings once their files are on disk: each file synced, then
/// each directory their names are in, once. A recording was reported (and its call
/// record written `complete`, `recording.ready` sent) with its audio still in the
/// page cache: a power cut left it shorter than its record, or gone (a review). A
/// sync that fails (the disk reports a write error only now, a network share its
/// quota) is the recording's error.
fn finish_closes(
    closing: Vec<Closing>,
    sync_file: impl Fn(&WavFile) -> std::io::Result<()>,
    sync_dir: impl Fn(&std::path::Path) -> std::io::Result<()>,
) {
    let mut closing = closing;
    for c in &mut closing {
        if let Some(Err(e)) = c.file.as_ref().map(&sync_file) {
            tracing::warn!(%e, "a recording could not be synced to disk");
            c.outcome
                .error
                .get_or_insert_with(|| format!("not synced to disk: {e}"));
        }
    }
    let dirs: std::collections::BTreeSet<PathBuf> = closing
        .iter()
        .filter(|c| c.file.is_some())
        .filter_map(|c| c.dir.clone())
        .collect();
    for dir in dirs {
        if let Err(e) = sync_dir(&dir) {
            tracing::warn!(%e, dir = %dir.display(), "a recordings directory could not be synced to disk");
            for c in closing.iter_mut().filter(|c| c.dir.as_ref() == Some(&dir)) {
                c.outcome
                    .error
                    .get_or_insert_with(|| format!("directory not synced to disk: {e}"));
            }
        }
    }
    for c in closing {
        drop(c.file);
        if let Some(done) = c.done {
            done(c.outcome);
        }
    }
}

/// One message of the recorder thread's.
fn handle(
    msg: Msg,
    files: &mut HashMap<u64, Open>,
    closing: &mut Vec<Closing>,
    queued: &std::sync::atomic::AtomicUsize,
) {
    match msg {
        Msg::Open(id, path, channels) => {
            let dir = path.parent().map(std::path::Path::to_path_buf);
            let open = match WavFile::create(&path, channels) {
                Ok(f) => Open {
                    file: Some(f),
                    error: None,
                    dir,
                },
                Err(e) => {
                    tracing::warn!(%e, path = %path.display(), "cannot create recording");
                    Open {
                        file: None,
                        error: Some(format!("cannot create {}: {e}", path.display())),
                        dir,
                    }
                }
            };
            files.insert(id, open);
        }
        Msg::Append(id, samples) => {
            queued.fetch_sub(samples.len() * 2, Ordering::Relaxed);
            let Some(o) = files.get_mut(&id) else {
                return;
            };
            if o.error.is_some() {
                return; // keep what was written; do not write past a hole
            }
            if let Some(f) = o.file.as_mut() {
                if let Err(e) = f.append(&samples) {
                    tracing::warn!(%e, "recording write failed");
                    o.error = Some(format!("write failed: {e}"));
                }
            }
        }
        Msg::Dropped(id) => {
            if let Some(o) = files.get_mut(&id) {
                o.error.get_or_insert_with(|| {
                    tracing::warn!("the recorder fell behind: audio of a recording was dropped");
                    "the recorder fell behind (storage too slow): audio was dropped".into()
                });
            }
        }
        Msg::Close(id, done) => {
            let Some(o) = files.remove(&id) else { return };
            closing.push(Closing {
                outcome: Outcome {
                    seconds: o.file.as_ref().map(|f| f.seconds()).unwrap_or(0.0),
                    error: o.error,
                    heard: false,
                },
                file: o.file,
                dir: o.dir,
                done,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcmu(n: usize, byte: u8) -> Vec<u8> {
        vec![byte; n]
    }

    /// Silence filling time is not audio heard; a packet of either side's is, one of a
    /// side not recorded or not G.711 is not.
    #[test]
    fn heard_means_a_partys_audio_was_placed() {
        let mut m = Mixer::new(RecordMode::Caller);
        assert_eq!(m.drain(8000).len(), 8000 - JITTER_SAMPLES as usize);
        assert!(!m.heard(), "a second of silence is not audio");
        m.push(Side::B, 2, 0, g711::PCMU, &pcmu(160, 0x80), 8000);
        m.push(Side::A, 1, 0, 18, &pcmu(20, 0x80), 8000);
        assert!(
            !m.heard(),
            "the callee's side is not recorded; G.729 is not decoded"
        );
        m.push(Side::A, 1, 0, g711::PCMU, &pcmu(160, 0x80), 8000);
        assert!(m.heard());
    }

    /// A drain after the node was frozen for an hour emits at most ten seconds (the
    /// rest skipped), not the hour as silence in one buffer; the recording goes on.
    #[test]
    fn a_drain_after_a_freeze_is_bounded() {
        let mut m = Mixer::new(RecordMode::Both);
        m.push(Side::A, 1, 0, g711::PCMU, &pcmu(160, 0x80), 0);
        let hour = 3600 * 8000;
        let out = m.drain(hour);
        // The caller's packet received before the freeze, then ten seconds.
        assert_eq!(out.len(), 2 * (160 + MAX_CATCH_UP_SAMPLES as usize));
        assert!(out[..320].iter().step_by(2).all(|s| *s == 32124), "kept");
        // Audio after the freeze lands where it belongs, and comes out next.
        m.push(Side::A, 1, 160, g711::PCMU, &pcmu(160, 0x80), hour);
        let next = m.drain(hour + JITTER_SAMPLES + 160);
        let jitter = JITTER_SAMPLES as usize;
        assert_eq!(next.len(), 2 * (jitter + 160));
        let caller: Vec<i16> = next.iter().step_by(2).copied().collect();
        assert!(
            caller[jitter..].iter().all(|s| *s == 32124),
            "the caller's packet"
        );
    }

    #[test]
    fn sides_are_placed_by_timestamp_and_interleaved() {
        let mut m = Mixer::new(RecordMode::Both);
        // Caller: 160 samples at t=0 (μ-law 0x80 = +32124); callee starts 80 samples later.
        m.push(Side::A, 1, 1000, g711::PCMU, &pcmu(160, 0x80), 0);
        m.push(Side::B, 2, 5000, g711::PCMU, &pcmu(160, 0x00), 80);
        // Out of order: caller's second packet arrives before we drain, its third late.
        m.push(Side::A, 1, 1320, g711::PCMU, &pcmu(160, 0x80), 330);
        assert!(
            m.drain(JITTER_SAMPLES).is_empty(),
            "nothing is final before the jitter allowance"
        );
        let out = m.drain(JITTER_SAMPLES + 400);
        assert_eq!(out.len(), 400 * 2);
        let frame = |i: usize| (out[2 * i], out[2 * i + 1]);
        assert_eq!(frame(0), (32124, 0));
        assert_eq!(frame(80), (32124, -32124));
        assert_eq!(frame(159), (32124, -32124));
        assert_eq!(
            frame(160),
            (0, -32124),
            "caller's 2nd packet missing: silence"
        );
        assert_eq!(frame(240), (0, 0));
        assert_eq!(frame(320), (32124, 0), "3rd packet placed by timestamp");
        // A packet for time already emitted is dropped; a later one lands.
        m.push(Side::A, 1, 1160, g711::PCMU, &pcmu(160, 0x80), 700);
        assert_eq!(
            m.finish().len(),
            80 * 2,
            "only the tail of the 3rd packet was left"
        );
    }

    /// Each row: mode → channels and which side is heard.
    #[test]
    fn modes() {
        for (mode, want) in [
            (RecordMode::Both, vec![32124, -32124]),
            (RecordMode::Caller, vec![32124]),
            (RecordMode::Callee, vec![-32124]),
        ] {
            let mut m = Mixer::new(mode);
            m.push(Side::A, 1, 0, g711::PCMU, &pcmu(1, 0x80), 0);
            m.push(Side::B, 2, 0, g711::PCMU, &pcmu(1, 0x00), 0);
            m.push(Side::B, 2, 1, 101, &[1, 2, 3, 4], 0); // telephone-event: ignored
            assert_eq!(m.finish(), want, "{mode:?}");
        }
    }

    /// A sender whose clock runs 0.5 % slow (its timestamps advance 159.2 samples per
    /// 20 ms of wall clock) for 100 s: it falls behind by more than the jitter
    /// allowance after about 40 s, and is then re-anchored, not dropped; almost every
    /// sample of its side is audio. A packet reordered behind the newest is dropped.
    #[test]
    fn a_slow_senders_audio_is_kept() {
        let mut m = Mixer::new(RecordMode::Caller);
        let mut out = Vec::new();
        let mut ts: f64 = 0.0;
        for k in 0..5_000u64 {
            let now = k * 160;
            m.push(Side::A, 1, ts as u32, g711::PCMU, &pcmu(160, 0x80), now);
            ts += 159.2;
            if now % 8_000 == 0 {
                out.extend(m.drain(now));
            }
        }
        out.extend(m.finish());
        let audio = out.iter().filter(|&&s| s == 32124).count();
        assert!(
            audio as f64 >= 0.99 * out.len() as f64,
            "{audio} of {} samples are audio",
            out.len()
        );
        // Reordered: an old packet arriving late does not move the stream.
        let mut m = Mixer::new(RecordMode::Caller);
        m.push(Side::A, 1, 0, g711::PCMU, &pcmu(160, 0x80), 0);
        m.push(Side::A, 1, 3_200, g711::PCMU, &pcmu(160, 0x80), 3_200);
        assert!(!m.drain(3_200).is_empty());
        m.push(Side::A, 1, 160, g711::PCMU, &pcmu(160, 0x00), 3_300);
        m.push(Side::A, 1, 3_360, g711::PCMU, &pcmu(160, 0x80), 3_360);
        let rest = m.finish();
        assert!(
            rest.iter().all(|&s| s != -32124),
            "the reordered packet is dropped"
        );
    }

    #[test]
    fn timestamp_jumps_and_new_streams_reanchor() {
        let mut m = Mixer::new(RecordMode::Caller);
        m.push(Side::A, 1, 0, g711::PCMU, &pcmu(160, 0x80), 0);
        // A jump of an hour in RTP time is not an hour of audio.
        m.push(Side::A, 1, 8000 * 3600, g711::PCMU, &pcmu(160, 0x80), 160);
        // A new SSRC (another stream) starts where the wall clock is.
        m.push(Side::A, 9, 77, g711::PCMU, &pcmu(160, 0x80), 320);
        let out = m.finish();
        assert_eq!(out.len(), 480);
        assert!(out.iter().all(|&s| s == 32124));
    }

    /// Hostile and unusual RTP timestamps. Each row: packets of 160 samples as
    /// (ssrc, timestamp, now), then how many samples `finish` returns (all of them
    /// audio: nothing is placed in a gap). No row may buffer more than the skew allows.
    #[test]
    fn hostile_timestamps_neither_overflow_nor_allocate() {
        const HALF: u32 = 1 << 31;
        let hour = 8000 * 3600;
        // (name, packets as (ssrc, timestamp, now), samples out)
        type Row<'a> = (&'a str, &'a [(u32, u32, u64)], usize);
        let table: &[Row] = &[
            ("forward 2^31 - 1", &[(1, 0, 0), (1, HALF - 1, 160)], 320),
            ("forward exactly 2^31", &[(1, 0, 0), (1, HALF, 160)], 320),
            ("forward 2^31 + 1", &[(1, 0, 0), (1, HALF + 1, 160)], 320),
            (
                "back an hour, then on from there",
                &[(1, hour, 0), (1, 0, 160), (1, 160, 320)],
                480,
            ),
            (
                "wrapping past u32::MAX",
                &[(1, u32::MAX - 159, 0), (1, 0, 160)],
                320,
            ),
            (
                "reordered before the first packet",
                &[(1, 1000, 0), (1, 840, 5)],
                160,
            ),
            (
                "a quarter of the clock each packet",
                &[
                    (1, 0, 0),
                    (1, 1 << 30, 160),
                    (1, HALF, 320),
                    (1, 3 << 30, 480),
                    (1, 0, 640),
                ],
                800,
            ),
            ("a clock near the end of u64", &[(1, 0, u64::MAX - 10)], 0),
            (
                "first packet far ahead of emitted",
                &[(1, 0, MAX_BUFFERED_SAMPLES as u64)],
                0,
            ),
        ];
        for (name, packets, want) in table {
            let mut m = Mixer::new(RecordMode::Caller);
            for (ssrc, ts, now) in *packets {
                m.push(Side::A, *ssrc, *ts, g711::PCMU, &pcmu(160, 0x80), *now);
                let held = m.tracks[0].buf.len();
                assert!(held <= MAX_BUFFERED_SAMPLES, "{name}: {held} samples held");
            }
            let out = m.finish();
            assert_eq!(out.len(), *want, "{name}");
            assert!(
                out.iter().all(|&s| s == 32124),
                "{name}: a gap in the audio"
            );
        }
    }

    /// A writer that stalls (here: opening a FIFO nobody reads, as a hung network
    /// share would) holds at most its limit of queued audio however much the calls
    /// send; the recording says audio was lost.
    #[test]
    fn a_stalled_writer_holds_no_more_than_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stall.wav");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo");
        let limit = 64 * 1024;
        let rec = Recorder::with_limit(limit);
        let stalled = rec.open(fifo.clone(), RecordMode::Both);
        for _ in 0..100 {
            stalled.append(vec![1; 8000]); // 16 KB each: 1.6 MB offered
            assert!(rec.queued_bytes() <= limit, "{}", rec.queued_bytes());
        }
        // The share comes back: the writer goes on, and reports the loss.
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ =
                std::io::Read::read_to_end(&mut std::fs::File::open(&fifo).unwrap(), &mut bytes);
        });
        let (tx, rx) = mpsc::channel();
        stalled.close(Box::new(move |o| tx.send(o).unwrap()));
        let o = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert!(o.error.is_some(), "{o:?}");
        reader.join().unwrap();
        assert_eq!(rec.queued_bytes(), 0);
    }

    /// Closes are reported after their files and directories were synced, each once,
    /// a failed sync the recording's error (here: the file of `a/x` fails, the
    /// directory `b` fails); a recording without a file syncs nothing.
    #[test]
    fn closes_are_reported_once_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let close = |name: &str, with_file: bool| {
            let path = dir.path().join(name);
            let tx = tx.clone();
            let label = name.to_string();
            Closing {
                file: with_file.then(|| WavFile::create(&path, 1).unwrap()),
                dir: path.parent().map(std::path::Path::to_path_buf),
                outcome: Outcome {
                    seconds: 0.0,
                    error: None,
                    heard: false,
                },
                done: Some(Box::new(move |o: Outcome| {
                    tx.send((label, o.error)).unwrap()
                })),
            }
        };
        let closing = vec![
            close("a/x.wav", true),
            close("a/y.wav", true),
            close("b/z.wav", true),
            close("c/none.wav", false),
        ];
        let synced_dirs = std::sync::Mutex::new(Vec::new());
        let files = std::sync::Mutex::new(0);
        finish_closes(
            closing,
            |_| {
                // Files are synced in the order closed: the first is a/x.wav's.
                let mut n = files.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    Err(std::io::Error::other("EIO"))
                } else {
                    Ok(())
                }
            },
            |d| {
                synced_dirs.lock().unwrap().push(d.to_path_buf());
                if d.ends_with("b") {
                    Err(std::io::Error::other("EIO"))
                } else {
                    Ok(())
                }
            },
        );
        drop(tx);
        let mut got: Vec<(String, Option<String>)> = rx.iter().collect();
        got.sort();
        assert_eq!(*files.lock().unwrap(), 3, "every file synced once");
        assert_eq!(
            *synced_dirs.lock().unwrap(),
            vec![dir.path().join("a"), dir.path().join("b")],
            "each directory once, none for a close without a file"
        );
        let errors: Vec<(&str, bool)> =
            got.iter().map(|(n, e)| (n.as_str(), e.is_some())).collect();
        assert_eq!(
            errors,
            [
                ("a/x.wav", true),
                ("a/y.wav", false),
                ("b/z.wav", true),
                ("c/none.wav", false)
            ]
        );
    }

    #[test]
    fn recorder_writes_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::start();
        let sink = rec.open(dir.path().join("a/b.wav"), RecordMode::Both);
        sink.append(vec![1, 2, 3, 4]);
        let (tx, rx) = mpsc::channel();
        sink.close(Box::new(move |o| tx.send(o).unwrap()));
        let o = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(
            o,
            Outcome {
                seconds: 8.0 / 32000.0,
                error: None,
                heard: false,
            }
        );
        assert_eq!(
            std::fs::read(dir.path().join("a/b.wav")).unwrap().len(),
            44 + 8
        );
        let bad = rec.open(
            dir.path().join("a/b.wav/not-a-dir/c.wav"),
            RecordMode::Caller,
        );
        let (tx, rx) = mpsc::channel();
        bad.close(Box::new(move |o| tx.send(o).unwrap()));
        assert!(rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap()
            .error
            .is_some());
    }
}
