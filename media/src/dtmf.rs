//! DTMF detection. RFC 4733 telephone-events arrive as several RTP packets per key
//! press, all carrying the event's start timestamp, the last (end) one sent three
//! times; [`EventDetector`] reports each press once, on its first packet. SIP INFO
//! carries a digit in its body (`application/dtmf-relay` `Signal=5`, or
//! `application/dtmf` `5`); [`info_digit`] reads it.

/// The key of an RFC 4733 event code (0–9, `*`, `#`, A–D); None for other events.
pub fn key(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

/// Telephone-events of one stream, de-duplicated.
#[derive(Debug, Default)]
pub struct EventDetector {
    /// The stream (SSRC) and start timestamp of the last event reported.
    last: Option<(u32, u32)>,
}

/// How far behind the last key's timestamp a packet is still that key's (or an
/// earlier one's) late packet: 2^20 samples, over two minutes at 8 kHz and 21 s at
/// 48 kHz, longer than any press and the packets that trail it.
const LATE_WINDOW: u32 = 1 << 20;

impl EventDetector {
    /// One telephone-event packet: its stream, RTP timestamp and payload. Returns the
    /// key when this packet starts a new event: one later than the last reported
    /// (serial order: a late end retransmission of an earlier key, arriving after the
    /// next key began, is not a press), or the first of another stream. A timestamp
    /// more than [`LATE_WINDOW`] behind the last key is the stream's timestamps
    /// restarting lower (a media server or transfer keeping the SSRC), not a late
    /// packet: it starts a new key (every key after such a restart was ignored until
    /// the timestamps caught up, up to 2^31 samples: a review).
    pub fn on_packet(&mut self, ssrc: u32, timestamp: u32, payload: &[u8]) -> Option<char> {
        let event = *payload.first()?;
        if payload.len() < 4 {
            return None;
        }
        if let Some((last_ssrc, last_ts)) = self.last {
            let behind = last_ts.wrapping_sub(timestamp);
            let ahead = timestamp.wrapping_sub(last_ts) as i32 > 0;
            if last_ssrc == ssrc && !ahead && behind <= LATE_WINDOW {
                return None;
            }
        }
        let k = key(event)?;
        self.last = Some((ssrc, timestamp));
        Some(k)
    }
}

/// The digit of a SIP INFO body, by its content type.
pub fn info_digit(content_type: &str, body: &str) -> Option<char> {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let value = match ct.as_str() {
        "application/dtmf-relay" => body.lines().find_map(|l| {
            let (name, value) = l.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("signal")
                .then(|| value.trim())
        })?,
        "application/dtmf" => body.trim(),
        _ => return None,
    };
    let mut chars = value.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_digit() || matches!(c, '*' | '#') => Some(c),
        (Some(c), None) if ('A'..='D').contains(&c.to_ascii_uppercase()) => {
            Some(c.to_ascii_uppercase())
        }
        // Some gateways send the event code: 10 = *, 11 = #.
        _ => value.parse::<u8>().ok().filter(|n| *n <= 15).and_then(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_key_press() {
        // (timestamp, payload) → reported key
        let table: &[(u32, &[u8], Option<char>)] = &[
            (1000, &[5, 0x0a, 0, 160], Some('5')),
            (1000, &[5, 0x0a, 1, 64], None),
            (1000, &[5, 0x8a, 3, 32], None), // end, and its two retransmissions
            (1000, &[5, 0x8a, 3, 32], None),
            (2600, &[5, 0x0a, 0, 160], Some('5')), // the same key again
            (4000, &[11, 0x0a, 0, 160], Some('#')),
            (5000, &[10, 0x0a, 0, 160], Some('*')),
            (6000, &[16, 0x0a, 0, 160], None), // flash: not a key
            (7000, &[1, 0x0a], None),          // short
            (8000, &[13, 0x0a, 0, 160], Some('B')),
            (1000, &[5, 0x8a, 3, 32], None), // a late end of an earlier key
            (u32::MAX - 100, &[9, 0x8a, 3, 32], None), // before, across the wrap
            (8100, &[2, 0x0a, 0, 160], Some('2')),
        ];
        let mut d = EventDetector::default();
        for (i, (ts, payload, want)) in table.iter().enumerate() {
            assert_eq!(d.on_packet(7, *ts, payload), *want, "row {i}");
        }
        // The stream's timestamps restart far lower (same SSRC): a new press, and the
        // packets of that press after it are its own.
        assert_eq!(
            d.on_packet(7, 8100u32.wrapping_sub(1 << 21), &[6, 0x0a, 0, 160]),
            Some('6')
        );
        assert_eq!(
            d.on_packet(7, 8100u32.wrapping_sub(1 << 21), &[6, 0x8a, 3, 32]),
            None
        );
        // Another stream (a new SSRC after a re-INVITE) starts afresh, whatever its
        // timestamps.
        assert_eq!(d.on_packet(8, 10, &[4, 0x0a, 0, 160]), Some('4'));
        assert_eq!(d.on_packet(8, 10, &[4, 0x8a, 0, 160]), None);
    }

    /// Hostile telephone-event payloads (RFC 4733 2.3: event, E/R/volume, duration):
    /// every event code, short payloads and extreme fields report a key only for the
    /// sixteen keys, and nothing panics.
    #[test]
    fn hostile_events() {
        let table: &[(&[u8], Option<char>)] = &[
            (&[], None),
            (&[5], None),
            (&[5, 0x8a, 0], None),
            (&[255, 0xff, 0xff, 0xff], None),
            (&[16, 0, 0, 0], None),
            (&[127, 0x3f, 0xff, 0xff], None),
            (&[15, 0xff, 0xff, 0xff], Some('D')),
            (&[0, 0x80, 0, 0], Some('0')), // an end packet alone (the start was lost)
            (&[9, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef], Some('9')), // longer: extra bytes ignored
        ];
        for (i, (payload, want)) in table.iter().enumerate() {
            let mut d = EventDetector::default();
            assert_eq!(
                d.on_packet(1, i as u32, payload),
                *want,
                "row {i}: {payload:?}"
            );
        }
        for event in 0..=255u8 {
            let want = (event <= 15).then(|| key(event)).flatten();
            assert_eq!(
                EventDetector::default().on_packet(1, 0, &[event, 0, 0, 160]),
                want
            );
        }
    }

    #[test]
    fn info_bodies() {
        let table = [
            (
                "application/dtmf-relay",
                "Signal=5\r\nDuration=160\r\n",
                Some('5'),
            ),
            (
                "application/dtmf-relay",
                "signal = #\nDuration=100",
                Some('#'),
            ),
            ("Application/DTMF-Relay; x=y", "Signal=11\r\n", Some('#')),
            ("application/dtmf", "7", Some('7')),
            ("application/dtmf", "a", Some('A')),
            ("application/dtmf", "77", None),
            ("application/dtmf-relay", "Duration=160", None),
            ("text/plain", "5", None),
            ("application/dtmf", "", None),
            // Hostile bodies: numbers out of range, signs, many lines, non-ASCII.
            ("application/dtmf-relay", "Signal=256\r\n", None),
            (
                "application/dtmf-relay",
                "Signal=99999999999999999999\r\n",
                None,
            ),
            ("application/dtmf-relay", "Signal=-1\r\n", None),
            ("application/dtmf-relay", "Signal=16\r\n", None),
            ("application/dtmf-relay", "Signal=\r\n", None),
            ("application/dtmf-relay", "Signal=５\r\n", None),
            ("application/dtmf-relay", "=\r\n==\r\nSignal==5", None),
            ("application/dtmf", "\u{0}", None),
        ];
        for (ct, body, want) in table {
            assert_eq!(info_digit(ct, body), want, "{ct} {body:?}");
        }
    }
}
