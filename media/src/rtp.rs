//! Whether a datagram arriving on a relay port is an RTP packet the relay may forward.
//! Everything else (STUN, RTCP sent to the RTP port, truncated or garbage packets) is
//! dropped: the relay forwards RTP only, and a packet whose header lengths point past
//! its end must never reach the code that reads fields at those offsets.
//!
//! Header lengths are checked by `rtp-rs` ([`rtp_rs::RtpReader::new`]: version 2, the
//! 12-byte fixed header, CSRC count × 4, the extension's length words and the padding
//! count all within the packet; its sums stay far below `usize::MAX`: at most
//! 12 + 15 × 4 + 4 + 65535 × 4). On top of that, RTCP is refused by its packet type.

use rtp_rs::RtpReader;

/// Why a datagram is not RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotRtp {
    /// Too short, not version 2, or a CSRC list, extension or padding past the end.
    #[error("malformed RTP header")]
    Header,
    /// An RTCP packet: its second byte is its type, 192..=223, which RTP reads as the
    /// marker bit and payload types 64..=95 (RFC 5761 section 4). Only 200..=204 were
    /// refused: reduced-size feedback (205, 206) and XR (207) from a party that muxes
    /// anyway went on to the other party as audio (a review). Unmarked packets of
    /// those payload types are RTP (a party may negotiate them).
    #[error("RTCP on the RTP port")]
    Rtcp,
}

/// Parses `pkt` as RTP, or says why it is not.
pub fn parse(pkt: &[u8]) -> Result<RtpReader<'_>, NotRtp> {
    let r = RtpReader::new(pkt).map_err(|_| NotRtp::Header)?;
    if r.mark() && (64..=95).contains(&r.payload_type()) {
        return Err(NotRtp::Rtcp);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 12-byte header with the first two bytes given, then `rest`.
    fn pkt(b0: u8, b1: u8, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![b0, b1, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7];
        p.extend_from_slice(rest);
        p
    }

    #[test]
    fn hostile_headers_are_not_rtp() {
        let payload = [0xd5u8; 160];
        // Extension header claiming 0xffff words (262,140 bytes) in a 20-byte packet.
        let huge_ext = pkt(0x90, 8, &[0xbe, 0xde, 0xff, 0xff, 1, 2, 3, 4]);
        // Extension flag with no room for the extension header.
        let cut_ext = pkt(0x90, 8, &[0xbe, 0xde]);
        // 15 CSRCs (60 bytes) announced, 8 bytes present.
        let cut_csrc = pkt(0x8f, 8, &[0; 8]);
        // Padding count 255 in a 4-byte payload; padding flag with no byte after the header.
        let big_pad = pkt(0xa0, 8, &[1, 2, 3, 255]);
        let no_pad_byte = pkt(0xa0, 8, &[]);
        // One CSRC and a one-word extension, all present, then the payload: RTP.
        let mut full = pkt(0x91, 8, &[0, 0, 0, 9, 0xbe, 0xde, 0, 1, 0, 0, 0, 0]);
        full.extend_from_slice(&payload);
        // Padding that fits: 3 payload bytes and a count of 2 → 2-byte payload.
        let fitting_pad = pkt(0xa0, 0, &[7, 7, 2]);
        let table: &[(&str, &[u8], Result<usize, NotRtp>)] = &[
            ("empty", &[], Err(NotRtp::Header)),
            ("one byte", &[0x80], Err(NotRtp::Header)),
            ("eleven bytes", &[0x80; 11], Err(NotRtp::Header)),
            (
                "version 0 (STUN)",
                &pkt(0x00, 1, &payload),
                Err(NotRtp::Header),
            ),
            ("version 1", &pkt(0x40, 8, &payload), Err(NotRtp::Header)),
            ("version 3", &pkt(0xc0, 8, &payload), Err(NotRtp::Header)),
            ("huge extension length", &huge_ext, Err(NotRtp::Header)),
            ("extension header cut", &cut_ext, Err(NotRtp::Header)),
            ("CSRC list past the end", &cut_csrc, Err(NotRtp::Header)),
            ("padding past the end", &big_pad, Err(NotRtp::Header)),
            ("padding flag, no count", &no_pad_byte, Err(NotRtp::Header)),
            ("RTCP SR", &pkt(0x80, 200, &[0; 16]), Err(NotRtp::Rtcp)),
            ("RTCP RR", &pkt(0x81, 201, &[0; 24]), Err(NotRtp::Rtcp)),
            ("RTCP BYE", &pkt(0x81, 203, &[0; 4]), Err(NotRtp::Rtcp)),
            ("RTCP APP", &pkt(0x80, 204, &[0; 8]), Err(NotRtp::Rtcp)),
            ("RTCP RTPFB", &pkt(0x81, 205, &[0; 8]), Err(NotRtp::Rtcp)),
            ("RTCP PSFB", &pkt(0x81, 206, &[0; 8]), Err(NotRtp::Rtcp)),
            ("RTCP XR", &pkt(0x80, 207, &[0; 8]), Err(NotRtp::Rtcp)),
            ("RTCP type 192", &pkt(0x80, 192, &[0; 8]), Err(NotRtp::Rtcp)),
            ("RTCP type 223", &pkt(0x80, 223, &[0; 8]), Err(NotRtp::Rtcp)),
            // Unmarked, those payload types are RTP a party may have negotiated.
            ("payload type 64", &pkt(0x80, 64, &payload), Ok(160)),
            ("payload type 95", &pkt(0x80, 95, &payload), Ok(160)),
            ("PCMA", &pkt(0x80, 8, &payload), Ok(160)),
            ("PCMU with marker", &pkt(0x80, 0x80, &payload), Ok(160)),
            (
                "telephone-event",
                &pkt(0x80, 101, &[5, 0x0a, 0, 160]),
                Ok(4),
            ),
            ("CSRC and extension present", &full, Ok(160)),
            ("padding that fits", &fitting_pad, Ok(1)),
            ("header only", &pkt(0x80, 8, &[]), Ok(0)),
            // Marked, payload types outside 64..=95 are RTP.
            (
                "payload type 63, marked",
                &pkt(0x80, 0x80 | 63, &payload),
                Ok(160),
            ),
            (
                "payload type 96, marked",
                &pkt(0x80, 0x80 | 96, &payload),
                Ok(160),
            ),
        ];
        for (name, bytes, want) in table {
            let got = parse(bytes).map(|r| r.payload().len());
            assert_eq!(got, *want, "{name}");
        }
    }
}
