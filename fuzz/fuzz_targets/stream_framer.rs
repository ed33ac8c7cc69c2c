//! The TCP/TLS stream framer (`tsunagu_sip::framing::Framer`, the one every stream
//! connection uses), fed a byte stream split at arbitrary points as TCP delivers it.
//! Checked on every input: no panic; never an empty frame; every call either returns
//! a message (consuming bytes) or asks for more or fails; the buffer stays bounded; and
//! the messages and the outcome are the same however the stream was split (compared
//! with the whole stream pushed at once).
//!
//! Input layout: the first byte says how many split lengths follow (each one byte,
//! 1-256 bytes per piece, cycled); the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tsunagu_sip::framing::{FrameError, Framer, MAX_MESSAGE};

/// Every message framed, and the error that stopped the stream, if any.
fn frame(pieces: impl Iterator<Item = Vec<u8>>) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut framer = Framer::new();
    let mut out = Vec::new();
    for piece in pieces {
        framer.push(&piece);
        // At most one message per buffered byte, plus the final "need more".
        for _ in 0..=framer.buffered() {
            let before = framer.buffered();
            match framer.next_message() {
                Ok(Some(msg)) => {
                    assert!(!msg.is_empty(), "a zero-length frame");
                    assert!(msg.len() <= MAX_MESSAGE, "a frame over the limit");
                    assert_eq!(
                        framer.buffered() + msg.len() <= before,
                        true,
                        "a message consumes its bytes"
                    );
                    out.push(msg.to_vec());
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        assert!(
            framer.buffered() <= MAX_MESSAGE + piece.len(),
            "the buffer is bounded ({} bytes)",
            framer.buffered()
        );
        // The loop above must have ended on "need more": one more call agrees.
        assert_eq!(framer.next_message().ok().flatten(), None, "no progress left undone");
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let sizes: Vec<usize> = if sizes.is_empty() {
        vec![1]
    } else {
        sizes.iter().map(|s| usize::from(*s) + 1).collect()
    };
    let mut pieces = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < stream.len() {
        let len = sizes[i % sizes.len()].min(stream.len() - at);
        pieces.push(stream[at..at + len].to_vec());
        at += len;
        i += 1;
    }
    let split = frame(pieces.into_iter());
    let whole = frame(std::iter::once(stream.to_vec()));
    assert_eq!(split, whole, "framing depends on how the stream was split");
});
