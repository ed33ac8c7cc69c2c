//! Framing of SIP messages on a byte stream (TCP, TLS; RFC 3261 18.3): where one
//! message ends and the next begins, from the blank line after the headers and the
//! Content-Length header.
//!
//! [`scan`] is the decision, a pure function of the buffered bytes; [`Framer`] is the
//! incremental state a connection keeps between reads (the same one the fuzz target
//! `stream_framer` drives). Everything a peer controls is bounded: the header section
//! must end within [`MAX_HEADER`] bytes, a whole message is at most [`MAX_MESSAGE`],
//! and Content-Length is parsed with checked arithmetic, so no value (`l:
//! 18446744073709551566` included) can wrap into a zero-length frame. A read never
//! rescans what was searched before: the header-end search resumes where it stopped,
//! and once the header is framed only the body's length is awaited.

use bytes::{Buf, Bytes, BytesMut};

/// The largest message accepted on a stream (as on UDP: a datagram's limit).
pub const MAX_MESSAGE: usize = 65_535;

/// The largest header section (start line, headers and the blank line) accepted on a
/// stream. Ordinary SIP headers take one or two kilobytes; 16 KiB leaves room for long
/// Via and Record-Route lists while a peer that never ends its headers is cut early.
pub const MAX_HEADER: usize = 16_384;

/// Why a stream cannot be framed; the connection is closed (there is no way to find
/// the next message's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("header section longer than {MAX_HEADER} bytes")]
    HeaderTooLong,
    #[error("no Content-Length (required on streams)")]
    MissingLength,
    #[error("Content-Length is not a number")]
    BadLength,
    #[error("Content-Length headers disagree")]
    ConflictingLength,
    #[error("message longer than {MAX_MESSAGE} bytes")]
    TooLong,
}

/// What the bytes at the start of a stream buffer are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The header section has not ended within the first `searched` bytes: read more
    /// (and resume the search there).
    More {
        searched: usize,
    },
    /// Leading CR/LF (RFC 5626 keepalives) to drop; never zero.
    Skip(usize),
    /// The message at the start is `total` bytes long (header, blank line and body);
    /// never zero. The buffer may not hold all of it yet.
    Message {
        total: usize,
    },
    Invalid(FrameError),
}

/// Frames the message at the start of `buf`. `searched` is how many leading bytes an
/// earlier call already searched for the end of the header section without finding
/// it (0 for a fresh message); the search resumes three bytes before, so a blank line
/// split across reads is found.
pub fn scan(buf: &[u8], searched: usize) -> Scan {
    let skip = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if skip > 0 {
        return Scan::Skip(skip);
    }
    // Only the first MAX_HEADER bytes may hold the header section.
    let window = &buf[..buf.len().min(MAX_HEADER)];
    let from = searched.saturating_sub(3).min(window.len());
    let Some(end) = window[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i)
    else {
        return if buf.len() >= MAX_HEADER {
            Scan::Invalid(FrameError::HeaderTooLong)
        } else {
            Scan::More {
                searched: window.len(),
            }
        };
    };
    let length = match content_length(&buf[..end]) {
        Ok(Some(n)) => n,
        // A stream message without Content-Length cannot be framed (RFC 3261 18.3).
        Ok(None) => return Scan::Invalid(FrameError::MissingLength),
        Err(e) => return Scan::Invalid(e),
    };
    // end < MAX_HEADER and length <= MAX_MESSAGE: no overflow, but checked anyway.
    match (end + 4).checked_add(length) {
        Some(total) if total <= MAX_MESSAGE => Scan::Message { total },
        _ => Scan::Invalid(FrameError::TooLong),
    }
}

/// The Content-Length of a header section (start line first, no blank line), if it
/// has one: the long or compact (`l`) name, in any case, continuation lines (folding)
/// included. Several headers must agree.
fn content_length(head: &[u8]) -> Result<Option<usize>, FrameError> {
    let mut found: Option<usize> = None;
    let mut lines = head.split(|b| *b == b'\n').skip(1).peekable();
    while let Some(line) = lines.next() {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        if !name.eq_ignore_ascii_case(b"content-length") && !name.eq_ignore_ascii_case(b"l") {
            continue;
        }
        let mut value = Digits::default();
        value.feed(&line[colon + 1..])?;
        while let Some(next) =
            lines.next_if(|l| l.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
        {
            value.feed(next)?;
        }
        let n = value.finish()?;
        match found {
            Some(earlier) if earlier != n => return Err(FrameError::ConflictingLength),
            _ => found = Some(n),
        }
    }
    Ok(found)
}

fn trim(s: &[u8]) -> &[u8] {
    let ws = |b: &u8| b.is_ascii_whitespace();
    let start = s.iter().position(|b| !ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

/// A decimal number read across folded pieces: digits in one run, whitespace around
/// them, nothing else; anything above [`MAX_MESSAGE`] is refused as it is read.
#[derive(Default)]
struct Digits {
    value: usize,
    digits: usize,
    ended: bool,
}

impl Digits {
    fn feed(&mut self, piece: &[u8]) -> Result<(), FrameError> {
        for &b in piece {
            match b {
                b'0'..=b'9' if !self.ended => {
                    self.value = self
                        .value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(usize::from(b - b'0')))
                        .filter(|v| *v <= MAX_MESSAGE)
                        .ok_or(FrameError::TooLong)?;
                    self.digits += 1;
                }
                b' ' | b'\t' | b'\r' => self.ended |= self.digits > 0,
                _ => return Err(FrameError::BadLength),
            }
        }
        // A line break inside the value is whitespace too.
        self.ended |= self.digits > 0;
        Ok(())
    }

    fn finish(self) -> Result<usize, FrameError> {
        if self.digits == 0 {
            Err(FrameError::BadLength)
        } else {
            Ok(self.value)
        }
    }
}

/// The framing state of one stream connection: the bytes received and not yet framed,
/// how far the header search got, and the length of the message being completed.
/// Holds at most [`MAX_MESSAGE`] plus one read's worth of bytes.
#[derive(Default)]
pub struct Framer {
    buf: BytesMut,
    searched: usize,
    total: Option<usize>,
}

impl Framer {
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read into directly (with at least `spare` bytes of room); bytes
    /// appended to it are framed by the next [`Framer::next_message`].
    pub fn read_buffer(&mut self, spare: usize) -> &mut BytesMut {
        self.buf.reserve(spare);
        &mut self.buf
    }

    /// Bytes received and not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message (never empty), `None` until more bytes are needed, or
    /// the reason the stream cannot be framed. Keepalive CR/LF are dropped here.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(total) = self.total {
                if self.buf.len() < total {
                    return Ok(None);
                }
                self.total = None;
                self.searched = 0;
                return Ok(Some(self.buf.split_to(total).freeze()));
            }
            match scan(&self.buf, self.searched) {
                Scan::More { searched } => {
                    self.searched = searched;
                    return Ok(None);
                }
                Scan::Skip(n) => {
                    self.buf.advance(n);
                    self.searched = 0;
                }
                Scan::Message { total } => self.total = Some(total),
                Scan::Invalid(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BYE: &[u8] = b"BYE sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabc";

    /// Each row: buffer, bytes searched before → the scan.
    #[test]
    fn scan_table() {
        let long_header = [
            b"BYE sip:a@b SIP/2.0\r\nX: ".as_slice(),
            &[b'a'; MAX_HEADER],
            b"\r\nContent-Length: 0\r\n\r\n",
        ]
        .concat();
        let huge_body = [
            b"BYE sip:a@b SIP/2.0\r\nX: ".as_slice(),
            &[b'a'; MAX_HEADER - 100],
            b"\r\nContent-Length: 60000\r\n\r\n",
        ]
        .concat();
        let with_len = |v: &str| format!("BYE sip:a@b SIP/2.0\r\nContent-Length:{v}\r\n\r\n");
        let cases: Vec<(&str, Vec<u8>, usize, Scan)> = vec![
            ("whole", BYE.to_vec(), 0, Scan::Message { total: BYE.len() }),
            (
                "followed by the next",
                [BYE, b"OPTIONS"].concat(),
                0,
                Scan::Message { total: BYE.len() },
            ),
            (
                "body not all here yet",
                BYE[..BYE.len() - 1].to_vec(),
                0,
                Scan::Message { total: BYE.len() },
            ),
            (
                "header not ended",
                b"BYE sip:a@b SIP/2.0\r\nCall-ID: x".to_vec(),
                0,
                Scan::More { searched: 31 },
            ),
            (
                "blank line split across reads",
                b"BYE sip:a@b SIP/2.0\r\nl: 0\r\n\r\n".to_vec(),
                27,
                Scan::Message { total: 29 },
            ),
            ("keepalive", b"\r\n\r\nBYE".to_vec(), 0, Scan::Skip(4)),
            ("only keepalive", b"\n".to_vec(), 0, Scan::Skip(1)),
            (
                "compact, odd case, spaces",
                b"BYE sip:a@b SIP/2.0\r\nL :  0 \r\n\r\n".to_vec(),
                0,
                Scan::Message { total: 32 },
            ),
            (
                "folded Content-Length",
                b"BYE sip:a@b SIP/2.0\r\nContent-Length:\r\n 2\r\n\r\nab".to_vec(),
                0,
                Scan::Message { total: 46 },
            ),
            (
                "no Content-Length",
                b"BYE sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n".to_vec(),
                0,
                Scan::Invalid(FrameError::MissingLength),
            ),
            (
                "not a number",
                with_len(" x").into_bytes(),
                0,
                Scan::Invalid(FrameError::BadLength),
            ),
            (
                "negative",
                with_len(" -1").into_bytes(),
                0,
                Scan::Invalid(FrameError::BadLength),
            ),
            (
                "empty",
                with_len(" ").into_bytes(),
                0,
                Scan::Invalid(FrameError::BadLength),
            ),
            (
                "two numbers",
                with_len(" 1 2").into_bytes(),
                0,
                Scan::Invalid(FrameError::BadLength),
            ),
            (
                "wraps usize (the critical one)",
                b"BYE sip:a@b SIP/2.0\r\nl: 18446744073709551566\r\n\r\n".to_vec(),
                0,
                Scan::Invalid(FrameError::TooLong),
            ),
            (
                "beyond any integer",
                with_len(" 99999999999999999999999999999999").into_bytes(),
                0,
                Scan::Invalid(FrameError::TooLong),
            ),
            (
                "over the message limit",
                with_len(" 999999").into_bytes(),
                0,
                Scan::Invalid(FrameError::TooLong),
            ),
            (
                "header plus body over the limit",
                huge_body,
                0,
                Scan::Invalid(FrameError::TooLong),
            ),
            (
                "leading zeros",
                with_len(" 0000000000000000000000000000003").into_bytes(),
                0,
                Scan::Message { total: 75 },
            ),
            (
                "disagreeing lengths",
                b"BYE sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
                0,
                Scan::Invalid(FrameError::ConflictingLength),
            ),
            (
                "agreeing lengths",
                b"BYE sip:a@b SIP/2.0\r\nl: 2\r\nContent-Length: 2\r\n\r\nab".to_vec(),
                0,
                Scan::Message { total: 50 },
            ),
            (
                "header section never ends",
                vec![b'a'; MAX_HEADER],
                MAX_HEADER - 1,
                Scan::Invalid(FrameError::HeaderTooLong),
            ),
            (
                "header section ends past the limit",
                long_header,
                0,
                Scan::Invalid(FrameError::HeaderTooLong),
            ),
            (
                "Content-Length in the start line is not a header",
                b"l: 5 sip:a@b SIP/2.0\r\nl: 0\r\n\r\n".to_vec(),
                0,
                Scan::Message { total: 30 },
            ),
        ];
        for (name, buf, searched, want) in cases {
            assert_eq!(scan(&buf, searched), want, "{name}");
        }
    }

    /// The framer's output, one message at a time, for a stream delivered in `pieces`.
    fn frame(pieces: &[&[u8]]) -> (Vec<Bytes>, Option<FrameError>) {
        let mut f = Framer::new();
        let mut out = Vec::new();
        for p in pieces {
            f.push(p);
            loop {
                match f.next_message() {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    #[test]
    fn messages_are_the_same_however_the_stream_is_split() {
        let stream = [
            b"\r\n\r\n".as_slice(),
            BYE,
            b"\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n",
            BYE,
        ]
        .concat();
        let whole = frame(&[&stream]);
        assert_eq!(whole.0.len(), 3);
        assert_eq!(whole.1, None);
        for cut in 0..stream.len() {
            for cut2 in cut..stream.len() {
                let split = frame(&[&stream[..cut], &stream[cut..cut2], &stream[cut2..]]);
                assert_eq!(split, whole, "cut at {cut} and {cut2}");
            }
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frame(&bytes), whole, "byte by byte");
    }

    #[test]
    fn the_overflowing_length_closes_the_stream_instead_of_spinning() {
        let (msgs, err) = frame(&[b"OPTIONS sip:a@b SIP/2.0\r\nl: 18446744073709551566\r\n\r\n"]);
        assert!(msgs.is_empty());
        assert_eq!(err, Some(FrameError::TooLong));
    }

    #[test]
    fn the_header_search_resumes_where_it_stopped() {
        let mut f = Framer::new();
        f.push(b"BYE sip:a@b SIP/2.0\r\n");
        assert_eq!(f.next_message(), Ok(None));
        assert_eq!(f.searched, 21);
        f.push(b"Content-Length: 0\r\n\r");
        assert_eq!(f.next_message(), Ok(None));
        assert_eq!(f.searched, 41);
        f.push(b"\n");
        assert_eq!(f.next_message().unwrap().unwrap().len(), 42);
        assert_eq!((f.buffered(), f.searched), (0, 0));
    }
}
