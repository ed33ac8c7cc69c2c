//! Everything a peer's bytes meet in the media crate outside the relay's sockets: SDP
//! rewriting, the node's own answer and codec narrowing; an RTP packet's header checks,
//! the source decision, RFC 4733 event detection and recording placement by its
//! timestamp; SIP INFO digit bodies; uploaded prompt WAV files. Any panic, overflow,
//! hang or huge allocation here is a bug (hostile numbers must be checked).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tsunagu_media::dtmf::{info_digit, EventDetector};
use tsunagu_media::latch::{judge, Latch, Peer};
use tsunagu_media::recording::Mixer;
use tsunagu_media::{rtp, sdp, wav, RecordMode, Side};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let addr = "127.0.0.1".parse().unwrap();
        let _ = sdp::rewrite(text, addr, 20000);
        let _ = sdp::answer(text, addr, 20002, 1);
        let _ = sdp::restrict(text, &[0, 8, 101]);
        let _ = sdp::telephone_event(text);
        let _ = info_digit("application/dtmf-relay", text);
        let _ = info_digit("application/dtmf", text);
    }
    let _ = wav::read_prompt(data);

    // The same bytes as a stream of RTP packets, each prefixed by a length byte, with
    // the recording's clock advancing 160 samples per packet.
    let mut mixer = Mixer::new(RecordMode::Both);
    let mut events = EventDetector::default();
    let peer = Peer {
        signalled: Some("127.0.0.1:4000".parse().unwrap()),
        ..Peer::default()
    };
    let src = "127.0.0.1:4002".parse().unwrap();
    let (mut rest, mut now) = (data, 0u64);
    while let Some((&len, tail)) = rest.split_first() {
        let (pkt, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        now += 160;
        let parsed = rtp::parse(pkt);
        for latch in [Latch::Strict, Latch::Address, Latch::Off] {
            let _ = judge(latch, &peer, src, parsed.is_ok());
        }
        if let Ok(r) = parsed {
            let side = if r.ssrc() & 1 == 0 { Side::A } else { Side::B };
            mixer.push(side, r.ssrc(), r.timestamp(), r.payload_type(), r.payload(), now);
            let _ = events.on_packet(r.ssrc(), r.timestamp(), r.payload());
            if now % 8000 == 0 {
                let _ = mixer.drain(now);
            }
        }
    }
    let _ = mixer.finish();
});
