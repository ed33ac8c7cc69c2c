//! Byte-level checks of a message's header section before the parser sees it, and the
//! one place where folded header lines are unfolded (RFC 3261 7.3.1: a line break
//! followed by a space or tab is whitespace).
//!
//! Unfolding here, once, means every header lookup afterwards sees one clean value
//! (`Content-Type:` followed by a folded `application/sdp` is simply
//! `application/sdp`), instead of each lookup trimming its own way. A header section
//! with a control character (NUL included; tab, CR and LF are the only ones allowed,
//! and CR only before LF) or bytes that are not UTF-8 is refused: RFC 3261's grammar
//! allows neither, and text that reaches logs, call records and other parsers must not
//! carry them.

use crate::parse::ParseError;
use std::borrow::Cow;

/// Where the header section ends: just after the last header's line break (so the
/// blank line and the body follow), or the whole message when it has no blank line.
fn header_end(data: &[u8]) -> usize {
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data.len(), |i| i + 2)
}

fn is_wsp(b: Option<&u8>) -> bool {
    matches!(b, Some(b' ' | b'\t'))
}

/// The message with its header lines unfolded (borrowed when nothing was folded, the
/// common case), or why its header section is refused.
pub fn check_and_unfold(data: &[u8]) -> Result<Cow<'_, [u8]>, ParseError> {
    let end = header_end(data);
    // A datagram's header section is capped as a stream's is (the framer's): every
    // Via is copied into each response, kept for the transaction's 32 s.
    if end > crate::framing::MAX_HEADER {
        return Err(ParseError::TooLarge);
    }
    let head = &data[..end];
    let mut folded = false;
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' => folded |= is_wsp(head.get(i + 1)),
            // A CR only as half of a line break: a lone one would pass into a value
            // copied to the other leg, where a parser that ends lines at CR reads
            // what follows it as a header of its own (injection).
            b'\r' if head.get(i + 1) != Some(&b'\n') => {
                return Err(ParseError::Syntax(
                    "a CR not followed by LF in the header section".into(),
                ))
            }
            b'\t' | b'\r' => {}
            0..=0x1f | 0x7f => {
                return Err(ParseError::Syntax(format!(
                    "control character 0x{b:02x} in the header section"
                )))
            }
            _ => {}
        }
    }
    if std::str::from_utf8(head).is_err() {
        return Err(ParseError::Syntax("header section is not UTF-8".into()));
    }
    if !folded {
        return Ok(Cow::Borrowed(data));
    }
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < end {
        let brk = match head[i] {
            b'\r' if head.get(i + 1) == Some(&b'\n') => 2,
            b'\n' => 1,
            _ => 0,
        };
        if brk > 0 && is_wsp(head.get(i + brk)) {
            i += brk;
            while is_wsp(head.get(i)) {
                i += 1;
            }
            if !is_wsp(out.last()) {
                out.push(b' ');
            }
            continue;
        }
        out.push(head[i]);
        i += 1;
    }
    out.extend_from_slice(&data[end..]);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header section past the cap is refused as too large: answered 513 (RFC 3261
    /// 21.5.11), where it was 400 (a live torture run).
    #[test]
    fn a_header_section_past_the_cap_is_too_large() {
        let mut big = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
        while big.len() <= crate::framing::MAX_HEADER {
            big.extend_from_slice(b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx\r\n");
        }
        big.extend_from_slice(b"\r\n");
        let refused = check_and_unfold(&big).unwrap_err();
        assert_eq!(refused.status(), 513, "{refused}");
        assert_eq!(ParseError::Syntax("x".into()).status(), 400);
    }

    /// Each row: message → unfolded message, or None when refused.
    #[test]
    fn unfolding_and_refusals() {
        let rows: &[(&[u8], Option<&[u8]>)] = &[
            (b"A\r\nX: 1\r\n\r\nbody", Some(b"A\r\nX: 1\r\n\r\nbody")),
            (
                b"A\r\nContent-Type:\r\n application/sdp\r\n\r\nv=0",
                Some(b"A\r\nContent-Type: application/sdp\r\n\r\nv=0"),
            ),
            (
                b"A\r\nX: a\r\n\t  b\r\n  c\r\nY: d\r\n\r\n",
                Some(b"A\r\nX: a b c\r\nY: d\r\n\r\n"),
            ),
            (b"A\r\nX: a \r\n b\r\n\r\n", Some(b"A\r\nX: a b\r\n\r\n")),
            (
                b"A\r\nX: 1\r\n\r\n\r\n body \x00 kept",
                Some(b"A\r\nX: 1\r\n\r\n\r\n body \x00 kept"),
            ),
            (
                b"A\r\nX: tab\there\r\n\r\n",
                Some(b"A\r\nX: tab\there\r\n\r\n"),
            ),
            (
                "A\r\nSubject: café\r\n\r\n".as_bytes(),
                Some("A\r\nSubject: café\r\n\r\n".as_bytes()),
            ),
            (b"A\r\nX: nul\x00here\r\n\r\n", None),
            (
                b"A\r\nPrivacy: none\rP-Asserted-Identity: <sip:0120@x>\r\n\r\n",
                None,
            ),
            (b"A\r\nMin-SE: 90\r\r\n\r\n", None),
            (b"A\rX: 1\r\n\r\n", None),
            (b"A\r\nX: bell\x07\r\n\r\n", None),
            (b"A\r\nX: del\x7f\r\n\r\n", None),
            (b"A\x00\r\nX: 1\r\n\r\n", None),
            (b"A\r\nX: \xff\xfe\r\n\r\n", None),
        ];
        for (input, want) in rows {
            let got = check_and_unfold(input).ok();
            assert_eq!(
                got.as_deref(),
                *want,
                "{}",
                String::from_utf8_lossy(input).escape_debug()
            );
        }
        let plain = b"A\r\nX: 1\r\n\r\n";
        assert!(matches!(check_and_unfold(plain), Ok(Cow::Borrowed(_))));
    }
}
