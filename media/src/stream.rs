//! The RTP stream the node sends toward one far end. Packets relayed from the other
//! side and frames the node generates (prompts, ringback) leave as one stream: one
//! SSRC for the whole call, sequence numbers that continue by one and timestamps that
//! advance with the wall clock at every switch between the two, with the marker bit
//! set on the first packet after a switch (RFC 3550 5.1). Endpoints that drop packets
//! on an SSRC change or a sequence jump thus hear the prompt and the conversation
//! alike. Sans-IO: headers are rewritten in place, time is an argument.

use std::time::Instant;

/// The 12-byte RTP header fields the stream writes.
const HEADER: usize = 12;

pub struct OutStream {
    ssrc: u32,
    /// Last sequence number and timestamp sent, and when; None before the first packet.
    last: Option<(u16, u32, Instant)>,
    /// Whether the last packet was generated (the next generated one follows it by
    /// exactly one frame).
    generating: bool,
    /// The relayed stream the offsets below apply to, and the offsets.
    source: Option<u32>,
    seq_delta: u16,
    ts_delta: u32,
}

impl OutStream {
    pub fn new(ssrc: u32) -> OutStream {
        OutStream {
            ssrc,
            last: None,
            generating: false,
            source: None,
            seq_delta: 0,
            ts_delta: 0,
        }
    }

    /// Rewrites a relayed packet's header. False if it is too short to be RTP (it is
    /// then forwarded untouched).
    pub fn relay(&mut self, pkt: &mut [u8], now: Instant) -> bool {
        if pkt.len() < HEADER || pkt[0] >> 6 != 2 {
            return false;
        }
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        if self.generating || self.source != Some(ssrc) {
            // A new source, or back from a prompt: continue our numbering from here.
            match self.last {
                None => (self.seq_delta, self.ts_delta) = (0, 0),
                Some((last_seq, last_ts, at)) => {
                    self.seq_delta = last_seq.wrapping_add(1).wrapping_sub(seq);
                    self.ts_delta = last_ts.wrapping_add(elapsed(at, now)).wrapping_sub(ts);
                    pkt[1] |= 0x80;
                }
            }
            self.source = Some(ssrc);
            self.generating = false;
        }
        let out_seq = seq.wrapping_add(self.seq_delta);
        let out_ts = ts.wrapping_add(self.ts_delta);
        pkt[2..4].copy_from_slice(&out_seq.to_be_bytes());
        pkt[4..8].copy_from_slice(&out_ts.to_be_bytes());
        pkt[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        // A reordered (older) packet keeps its place and does not move `last` back.
        let newer = self
            .last
            .is_none_or(|(s, _, _)| (1..0x8000).contains(&out_seq.wrapping_sub(s)));
        if newer {
            self.last = Some((out_seq, out_ts, now));
        }
        true
    }

    /// The header of the next generated frame of `samples` samples.
    pub fn generate(&mut self, payload_type: u8, samples: u32, now: Instant) -> [u8; HEADER] {
        let (seq, ts, marker) = match self.last {
            None => (1, 0, true),
            // Frame after frame of one prompt (a late tick's catch-up burst included):
            // contiguous. After a pause of more than a second (a prompt played again
            // after an IVR timeout, nothing relayed meanwhile) the wall clock counts,
            // with the marker: contiguous timestamps would read as seconds late.
            Some((s, t, at)) if self.generating && elapsed(at, now) <= PAUSE_SAMPLES => {
                (s.wrapping_add(1), t.wrapping_add(samples), false)
            }
            Some((s, t, at)) => (
                s.wrapping_add(1),
                t.wrapping_add(elapsed(at, now).max(samples)),
                true,
            ),
        };
        self.generating = true;
        self.last = Some((seq, ts, now));
        let mut h = [0u8; HEADER];
        h[0] = 0x80;
        h[1] = (payload_type & 0x7f) | if marker { 0x80 } else { 0 };
        h[2..4].copy_from_slice(&seq.to_be_bytes());
        h[4..8].copy_from_slice(&ts.to_be_bytes());
        h[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        h
    }
}

/// Generated frames further apart than this (one second) start a new talkspurt.
const PAUSE_SAMPLES: u32 = 8_000;

/// Samples (8 kHz) between two instants, at least one. Past 2^32 samples (6.2 days)
/// the count wraps, as RTP timestamps do.
fn elapsed(from: Instant, to: Instant) -> u32 {
    let micros = to.saturating_duration_since(from).as_micros();
    // Truncating to u32 is the RTP timestamp wrap.
    ((micros.saturating_mul(8) / 1000) as u32).max(1)
}

/// A fresh random SSRC (the standard library's per-process random hash keys).
pub fn new_ssrc() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rtp(marker: bool, seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xff; 160]);
        p
    }

    /// (marker, seq, ts, ssrc) of a header.
    fn fields(p: &[u8]) -> (bool, u16, u32, u32) {
        (
            p[1] & 0x80 != 0,
            u16::from_be_bytes([p[2], p[3]]),
            u32::from_be_bytes(p[4..8].try_into().unwrap()),
            u32::from_be_bytes(p[8..12].try_into().unwrap()),
        )
    }

    enum Step {
        /// A relayed packet (seq, ts, ssrc) at t ms.
        Relay(u16, u32, u32, u64),
        /// A generated frame at t ms.
        Generate(u64),
    }
    use Step::*;

    #[test]
    fn one_stream_across_sources_and_prompts() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Each step and the header that leaves: (marker, seq, ts), always SSRC 7.
        let table: &[(Step, (bool, u16, u32))] = &[
            // Prompt first: starts at 1/0 with the marker, then one frame apart.
            (Generate(0), (true, 1, 0)),
            (Generate(20), (false, 2, 160)),
            // The callee's audio: continues from the prompt, 20 ms later.
            (Relay(5000, 90000, 42, 40), (true, 3, 320)),
            (Relay(5001, 90160, 42, 60), (false, 4, 480)),
            // A reordered packet keeps its place.
            (Relay(5000, 90000, 42, 61), (false, 3, 320)),
            (Relay(5002, 90320, 42, 80), (false, 5, 640)),
            // A new source (another destination answered) 100 ms later.
            (Relay(17, 3, 99, 180), (true, 6, 1440)),
            // A prompt again.
            (Generate(1180), (true, 7, 9440)),
            (Generate(1200), (false, 8, 9600)),
            // Back to the same source: re-based, not its old offsets.
            (Relay(60, 9000, 99, 1220), (true, 9, 9760)),
            // A prompt, then the same again 3 s later with nothing between: the wall
            // clock counts, with the marker.
            (Generate(1240), (true, 10, 9920)),
            (Generate(1260), (false, 11, 10080)),
            (Generate(4260), (true, 12, 34080)),
            (Generate(4280), (false, 13, 34240)),
        ];
        let mut s = OutStream::new(7);
        for (i, (step, want)) in table.iter().enumerate() {
            let got = match *step {
                Relay(seq, ts, ssrc, ms) => {
                    let mut p = rtp(false, seq, ts, ssrc);
                    assert!(s.relay(&mut p, at(ms)));
                    fields(&p)
                }
                Generate(ms) => fields(&s.generate(0, 160, at(ms))),
            };
            assert_eq!((got.0, got.1, got.2), *want, "step {i}");
            assert_eq!(got.3, 7, "step {i}: our SSRC");
        }
    }

    #[test]
    fn relayed_stream_passes_numbering_through_until_a_switch() {
        let mut s = OutStream::new(7);
        let now = Instant::now();
        let mut p = rtp(true, 65535, u32::MAX, 1);
        assert!(s.relay(&mut p, now));
        assert_eq!(fields(&p), (true, 65535, u32::MAX, 7));
        let mut p = rtp(false, 0, 159, 1);
        assert!(s.relay(&mut p, now));
        assert_eq!(fields(&p), (false, 0, 159, 7), "wraps");
        assert!(!s.relay(&mut [0x80, 0, 1], now), "too short");
        assert!(!s.relay(&mut [0u8; 20], now), "not version 2");
    }
}
