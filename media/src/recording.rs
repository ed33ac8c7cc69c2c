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
    /// Samples from the mixer's `emitted` index on.
    buf: VecDeque<i16>,
}

pub struct Mixer {
    mode: RecordMode,
    tracks: [Track; 2],
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
        let fresh = Anchor {
            ssrc,
            first_ts: timestamp,
            base: now,
        };
        let anchor = match track.anchor {
            Some(a) if a.ssrc == ssrc => a,
            _ => fresh,
        };
        let offset = timestamp.wrapping_sub(anchor.first_ts);
        if offset > u32::MAX / 2 {
            return; // older than the stream's first packet
        }
        let mut pos = anchor.base + u64::from(offset);
        let anchor = if pos.abs_diff(now) > MAX_SKEW_SAMPLES {
            pos = now;
            fresh
        } else {
            anchor
        };
        track.anchor = Some(anchor);
        let mut samples = &self.scratch[..];
        if pos < emitted {
            let late = (emitted - pos) as usize;
            if late >= samples.len() {
                return;
            }
            samples = &samples[late..];
            pos = emitted;
        }
        let at = (pos - emitted) as usize;
        if track.buf.len() < at + samples.len() {
            track.buf.resize(at + samples.len(), 0);
        }
        for (i, s) in samples.iter().enumerate() {
            track.buf[at + i] = *s;
        }
    }

    /// Frames that are final at `now` (older than the jitter allowance), interleaved.
    pub fn drain(&mut self, now: u64) -> Vec<i16> {
        let target = now.saturating_sub(JITTER_SAMPLES);
        self.emit_until(target)
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
}

pub type OnClosed = Box<dyn FnOnce(Outcome) + Send>;

enum Msg {
    Open(u64, PathBuf, u16),
    Append(u64, Vec<i16>),
    Close(u64, Option<OnClosed>),
}

/// Handle to the recorder thread.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    next: std::sync::Arc<AtomicU64>,
}

/// One open recording; closed by [`Sink::close`] or, without a callback, on drop.
pub struct Sink {
    id: u64,
    tx: mpsc::Sender<Msg>,
    closed: bool,
}

impl Recorder {
    pub fn start() -> Recorder {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || run(rx))
            .expect("spawn recorder thread");
        Recorder {
            tx,
            next: std::sync::Arc::new(AtomicU64::new(1)),
        }
    }

    pub fn open(&self, path: PathBuf, mode: RecordMode) -> Sink {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Msg::Open(id, path, mode.channels()));
        Sink {
            id,
            tx: self.tx.clone(),
            closed: false,
        }
    }
}

impl Sink {
    pub fn append(&self, samples: Vec<i16>) {
        if !samples.is_empty() {
            let _ = self.tx.send(Msg::Append(self.id, samples));
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
}

fn run(rx: mpsc::Receiver<Msg>) {
    let mut files: HashMap<u64, Open> = HashMap::new();
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Open(id, path, channels) => {
                let open = match WavFile::create(&path, channels) {
                    Ok(f) => Open {
                        file: Some(f),
                        error: None,
                    },
                    Err(e) => {
                        tracing::warn!(%e, path = %path.display(), "cannot create recording");
                        Open {
                            file: None,
                            error: Some(format!("cannot create {}: {e}", path.display())),
                        }
                    }
                };
                files.insert(id, open);
            }
            Msg::Append(id, samples) => {
                let Some(o) = files.get_mut(&id) else {
                    continue;
                };
                if o.error.is_some() {
                    continue; // keep what was written; do not write past a hole
                }
                if let Some(f) = o.file.as_mut() {
                    if let Err(e) = f.append(&samples) {
                        tracing::warn!(%e, "recording write failed");
                        o.error = Some(format!("write failed: {e}"));
                    }
                }
            }
            Msg::Close(id, done) => {
                let Some(o) = files.remove(&id) else { continue };
                let outcome = Outcome {
                    seconds: o.file.as_ref().map(|f| f.seconds()).unwrap_or(0.0),
                    error: o.error,
                };
                if let Some(done) = done {
                    done(outcome);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcmu(n: usize, byte: u8) -> Vec<u8> {
        vec![byte; n]
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
                error: None
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
