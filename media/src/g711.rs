//! G.711 (ITU-T G.711): μ-law (PCMU, payload type 0) and A-law (PCMA, 8) bytes to
//! 16-bit linear samples through two 256-entry tables built at compile time (recording),
//! and linear samples to bytes (prompts, encoded once when loaded).

/// Linear value of one μ-law byte.
const fn ulaw(byte: u8) -> i16 {
    let u = !byte;
    let t = (((u & 0x0f) as i32) << 3) + 0x84;
    let t = t << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// Linear value of one A-law byte.
const fn alaw(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let mut t = ((a & 0x0f) as i32) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

const fn table(mu_law: bool) -> [i16; 256] {
    let mut out = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = if mu_law { ulaw(i as u8) } else { alaw(i as u8) };
        i += 1;
    }
    out
}

static ULAW: [i16; 256] = table(true);
static ALAW: [i16; 256] = table(false);

/// RTP payload types this module decodes.
pub const PCMU: u8 = 0;
pub const PCMA: u8 = 8;

/// Appends the samples of a PCMU or PCMA payload to `out`; false for any other type.
pub fn decode(payload_type: u8, payload: &[u8], out: &mut Vec<i16>) -> bool {
    let table = match payload_type {
        PCMU => &ULAW,
        PCMA => &ALAW,
        _ => return false,
    };
    out.extend(payload.iter().map(|&b| table[b as usize]));
    true
}

/// The μ-law byte of one linear sample.
pub fn ulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// The A-law byte of one linear sample.
pub fn alaw_encode(sample: i16) -> u8 {
    let (mask, magnitude) = if sample >= 0 {
        (0xd5, i32::from(sample))
    } else {
        (0x55, -i32::from(sample) - 1)
    };
    let v = magnitude >> 3;
    // Segment: the number of bits above the lowest five.
    let segment = (0..8).find(|s| v < (0x20 << s)).unwrap_or(8);
    if segment >= 8 {
        return (0x7f ^ mask) as u8;
    }
    let mantissa = if segment < 2 {
        (v >> 1) & 0x0f
    } else {
        (v >> segment) & 0x0f
    };
    (((segment << 4) | mantissa) ^ mask) as u8
}

/// The payload bytes of `samples` in `payload_type` (PCMU or PCMA).
pub fn encode(payload_type: u8, samples: &[i16]) -> Vec<u8> {
    let f = if payload_type == PCMA {
        alaw_encode
    } else {
        ulaw_encode
    };
    samples.iter().map(|&s| f(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_inverts_decoding() {
        for b in 0..=255u8 {
            let u = ULAW[b as usize];
            assert_eq!(ULAW[ulaw_encode(u) as usize], u, "ulaw {b:#x}");
            let a = ALAW[b as usize];
            assert_eq!(alaw_encode(a), b, "alaw {b:#x}");
        }
        // Reference bytes from Python's audioop (lin2ulaw/lin2alaw).
        assert_eq!(ulaw_encode(0), 0xff);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(0), 0xd5);
        assert_eq!(alaw_encode(i16::MAX), 0xaa);
        assert_eq!(alaw_encode(i16::MIN), 0x2a);
        assert_eq!(encode(PCMU, &[0, 0]), vec![0xff, 0xff]);
    }

    /// Reference values from Python's audioop (ulaw2lin/alaw2lin).
    #[test]
    fn reference_values() {
        let u: &[(u8, i16)] = &[
            (0x00, -32124),
            (0x7f, 0),
            (0x80, 32124),
            (0xff, 0),
            (0x0f, -16764),
            (0x9c, 9852),
        ];
        let a: &[(u8, i16)] = &[
            (0x55, -8),
            (0xd5, 8),
            (0x2a, -32256),
            (0xaa, 32256),
            (0x00, -5504),
            (0x80, 5504),
        ];
        for (byte, want) in u {
            assert_eq!(ULAW[*byte as usize], *want, "ulaw {byte:#x}");
        }
        for (byte, want) in a {
            assert_eq!(ALAW[*byte as usize], *want, "alaw {byte:#x}");
        }
        let mut out = Vec::new();
        assert!(decode(PCMA, &[0xd5, 0x55], &mut out));
        assert!(
            !decode(101, &[1, 2, 3, 4], &mut out),
            "telephone-event is not audio"
        );
        assert_eq!(out, vec![8, -8]);
    }
}
