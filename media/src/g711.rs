//! G.711 decoding (ITU-T G.711): μ-law (PCMU, payload type 0) and A-law (PCMA, 8) bytes
//! to 16-bit linear samples, through two 256-entry tables built at compile time.

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

#[cfg(test)]
mod tests {
    use super::*;

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
