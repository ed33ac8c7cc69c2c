//! Interarrival jitter of one RTP stream (RFC 3550 6.4.1, computed as its appendix
//! A.8 does): the mean deviation of the difference between packets' spacing on the
//! wire and their spacing in RTP time, smoothed over 16 packets. Pure: the arrival
//! time is an argument.
//!
//! The static audio payload types with an 8 kHz RTP clock are measured ([`measured`]:
//! G.711, G.729, G.722, whose RTP clock is 8 kHz though it samples at 16, GSM, G.723,
//! G.728, DVI4/8000, LPC, QCELP; RFC 3551 table 4): a dynamic type's clock is whatever
//! the SDP's rtpmap says, which the relay does not read; comfort noise comes in
//! silences' own rhythm and telephone-events reuse timestamps on purpose, so neither
//! is measured. Arrival
//! times are the relay's wake-up time (packets read in one burst share it), in
//! microseconds.

/// RTP clock units per millisecond: the 8 kHz clock of every type measured.
const UNITS_PER_MS: u64 = 8;

/// Whether packets of payload type `pt` are measured: the static audio types of an
/// 8 kHz RTP clock (RFC 3551 table 4): PCMU 0, GSM 3, G723 4, DVI4/8000 5, LPC 7,
/// PCMA 8, G722 9, QCELP 12, G728 15, G729 18. Not comfort noise (13), not the types
/// of other clocks (DVI4/16000 6, L16 10-11, DVI4 at 11 and 22 kHz 16-17, MPA 14),
/// not dynamic types.
pub fn measured(pt: u8) -> bool {
    matches!(pt, 0 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 15 | 18)
}
/// A transit change past this (one second of samples) is a new stream (a restart on
/// the same SSRC, a party's clock jump), not jitter: the meter starts again there.
const RESTART_UNITS: u32 = 8_000;

#[derive(Debug, Default, Clone)]
pub struct JitterMeter {
    /// The stream (SSRC, payload type) and its last packet's transit time (arrival
    /// in RTP units less its timestamp, wrapping).
    last: Option<(u32, u8, u32)>,
    /// The jitter estimate times 16 (RFC 3550 A.8's integer form), in RTP units.
    scaled: u32,
    /// The highest estimate seen (the call's worst stretch), in RTP units.
    peak: u32,
    /// Whether two packets of one stream were compared (else there is no estimate).
    measured: bool,
}

impl JitterMeter {
    /// One accepted packet of `ssrc` with payload type `pt` and RTP timestamp `ts`,
    /// arrived at `arrival_us` (any fixed origin). The peak in microseconds when this
    /// packet raised it (or made the first measurement): what the relay publishes.
    pub fn on_packet(&mut self, ssrc: u32, pt: u8, ts: u32, arrival_us: u64) -> Option<u64> {
        if !measured(pt) {
            return None;
        }
        let before = (self.measured, self.peak);
        // Wrapping: only differences of transits count.
        let arrival = (arrival_us.wrapping_mul(UNITS_PER_MS) / 1000) as u32;
        let transit = arrival.wrapping_sub(ts);
        match self.last {
            Some((s, p, last)) if s == ssrc && p == pt => {
                let d = transit.wrapping_sub(last) as i32;
                let d = d.unsigned_abs();
                if d > RESTART_UNITS {
                    self.scaled = 0;
                } else {
                    self.measured = true;
                    // J += (|D| - J) / 16, as J*16: J16 += |D| - J16/16 (rounded).
                    self.scaled = self
                        .scaled
                        .saturating_add(d)
                        .saturating_sub((self.scaled + 8) >> 4);
                    self.peak = self.peak.max(self.scaled >> 4);
                }
            }
            // A new stream (or the first packet): no spacing to compare yet.
            _ => self.scaled = 0,
        }
        self.last = Some((ssrc, pt, transit));
        (before != (self.measured, self.peak)).then(|| self.peak_us())
    }

    /// The highest estimate seen, in microseconds (0 before two packets of a stream).
    pub fn peak_us(&self) -> u64 {
        u64::from(self.peak) * 1000 / UNITS_PER_MS
    }

    /// The highest estimate seen, once two packets of a stream were compared (None
    /// before, and for streams the meter does not measure).
    pub fn peak(&self) -> Option<u64> {
        self.measured.then(|| self.peak_us())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packets every 20 ms (160 samples) arriving with the given offsets from their
    /// schedule (ms): the peak jitter estimate (µs), as RFC 3550 A.8 computes it.
    fn peak(offsets_ms: &[u64], pt: u8) -> u64 {
        let mut m = JitterMeter::default();
        for (i, off) in offsets_ms.iter().enumerate() {
            let i = i as u64;
            m.on_packet(7, pt, (i * 160) as u32, 1_000_000 + i * 20_000 + off * 1000);
        }
        m.peak_us()
    }

    #[test]
    fn jitter_of_streams() {
        // (arrival offsets in ms, payload type) -> peak jitter in µs
        let rows: &[(&[u64], u8, u64)] = &[
            // On time, every packet: none.
            (&[0, 0, 0, 0, 0, 0], 0, 0),
            // A steady lateness is no jitter (only changes of transit count).
            (&[30, 30, 30, 30], 8, 0),
            // One packet 16 ms late: |D| = 16 ms twice (late, then back), each moving
            // the estimate a sixteenth of the way: 1 ms, then 1.875 ms (J*16 = 248,
            // reported as 248 >> 4 = 15 samples, as A.8 reports it).
            (&[0, 16, 0, 0], 0, 1875),
            // Alternating 0 / 8 ms: the estimate climbs toward 8 ms (4.875 after 15).
            (&[0, 8, 0, 8, 0, 8, 0, 8, 0, 8, 0, 8, 0, 8, 0, 8], 0, 4875),
            // G.729 and G.722 (an 8 kHz RTP clock too): measured alike.
            (&[0, 16, 0, 0], 18, 1875),
            (&[0, 16, 0, 0], 9, 1875),
            // A dynamic type's clock is unknown, comfort noise has no rhythm: not
            // measured.
            (&[0, 16, 0, 16], 96, 0),
            (&[0, 16, 0, 16], 13, 0),
            (&[0, 16, 0, 16], 6, 0),
            // A jump of more than a second is a restart, not jitter.
            (&[0, 2000, 2000, 2000], 0, 0),
        ];
        for (offsets, pt, want) in rows {
            assert_eq!(peak(offsets, *pt), *want, "{offsets:?} pt {pt}");
        }
        // Measured (Some) once two packets of a stream were compared, even at 0; never
        // for a format not measured, nor from one packet.
        let mut m = JitterMeter::default();
        assert_eq!(m.on_packet(1, 0, 0, 0), None);
        assert_eq!(m.peak(), None, "one packet");
        assert_eq!(
            m.on_packet(1, 0, 160, 20_000),
            Some(0),
            "the first measurement"
        );
        assert_eq!(m.peak(), Some(0), "two on time");
        assert_eq!(
            m.on_packet(1, 0, 320, 40_000),
            None,
            "the peak did not rise"
        );
        assert_eq!(
            m.on_packet(1, 0, 480, 76_000),
            Some(1000),
            "16 ms late: raised"
        );
        let mut other = JitterMeter::default();
        other.on_packet(1, 96, 0, 0);
        other.on_packet(1, 96, 160, 30_000);
        assert_eq!(other.peak(), None, "a dynamic type");
    }

    /// A new SSRC starts a new stream: its first packet's transit is not compared with
    /// the old stream's; timestamps may wrap.
    #[test]
    fn new_streams_and_wrapping() {
        let mut m = JitterMeter::default();
        m.on_packet(1, 0, 0, 0);
        m.on_packet(2, 0, 123_456, 20_000); // another stream: no comparison
        assert_eq!(m.peak_us(), 0);
        let mut w = JitterMeter::default();
        let start = u32::MAX - 100;
        for i in 0..4u32 {
            w.on_packet(
                3,
                0,
                start.wrapping_add(i * 160),
                5_000_000 + u64::from(i) * 20_000,
            );
        }
        assert_eq!(w.peak_us(), 0, "wrapping timestamps, on time");
        assert_eq!(w.scaled, 0, "the estimate itself, not only its peak");
    }
}
