//! What another node needs to take a call over (SPEC 6), written with the call's record
//! in progress and kept in the store as JSON (opaque to it).
//!
//! - An answered call ([`Answered`]): both dialogs as this node sees them — Call-ID,
//!   From and To with both tags, the next CSeq we would send, the remote target and
//!   route set, where requests go and by which transport — the SDP this node last sent
//!   on each leg (the next offer goes on from its session version), each party's media
//!   address and telephone-event type, the session timer, the recording so far, and
//!   the lines (call queuing) it holds, which the node taking it over adopts.
//!   Written at answer and after every change of the session (re-INVITE, UPDATE,
//!   refresh).
//! - A call still ringing a destination ([`Ringing`]): that INVITE, so that a survivor
//!   can CANCEL it (an unanswered call cannot be resumed: the caller's INVITE
//!   transaction died with its node).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tsunagu_sip::{Peer, Transport};

/// The format; a node refuses a checkpoint of a format it does not know.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// Nodes that carried the call, in order (the writer last).
    pub nodes: Vec<String>,
    pub state: State,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Answered(Box<Answered>),
    Ringing(Box<Ringing>),
}

/// An answered call's state (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    /// The caller's dialog (the node is its UAS).
    pub a: Dialog,
    /// The callee's dialog (the node is its UAC).
    pub b: Dialog,
    /// Session timer interval (seconds) if one was agreed.
    pub session_seconds: Option<u32>,
    /// The node refreshes the caller's session itself (the caller asked it to and the
    /// callee does no timers). Absent in checkpoints written before 2026-12-06: no.
    #[serde(default)]
    pub session_by_node: bool,
    /// The caller was last told it refreshes (not the node, nor the callee through
    /// the node). Absent in checkpoints written before 2026-12-06 evening: taken as
    /// "unless the node does".
    #[serde(default)]
    pub session_caller_refreshes: Option<bool>,
    /// The node refreshes the callee's leg too (the callee named it its refresher:
    /// see `session::SessionTimer::callee_by_node`). Absent (written only when true)
    /// in checkpoints written before 2026-12-07 afternoon: no.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session_callee_by_node: bool,
    /// The callee's Min-SE from its 422 to the node's timer (see
    /// `Call::timer_refused`). Absent when none, and in checkpoints written before
    /// 2026-12-07 afternoon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_callee_min_se: Option<u32>,
    /// The recording so far, if the call is recorded.
    pub recording: Option<Recording>,
    /// The callee's codec (for prompts to it after the caller hangs up).
    pub b_payload_type: u8,
    /// The lines (call queuing) the call holds: the node that takes it over holds
    /// them in its place. Absent in checkpoints written before 2026-12-02: none.
    #[serde(default)]
    pub lines: Vec<HeldLine>,
    /// What its final record says of the call before the answer, which the node
    /// finishing it must say too (a call taken over was logged without its IVR
    /// digits, so a number that asks for one judged it invalid; without its caller's
    /// verification, so no caller SMS; without the closed-hours marker: a review).
    /// Absent in checkpoints written before 2026-12-06 10:00: nothing known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ivr_digits: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub caller_verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_result: Option<tsunagu_store::CallResult>,
    /// The caller was played the IVR menu (see `decide::validity::Facts`); None in a
    /// checkpoint written before 2026-12-06 late night (then guessed from the number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ivr_offered: Option<bool>,
}

/// A line an answered call holds: its key and the key's limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLine {
    pub key: String,
    pub limit: u32,
}

/// The INVITE of the attempt still ringing (what a CANCEL of it repeats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ringing {
    pub uri: String,
    pub hop: Hop,
    /// The Via sent-by and branch of the INVITE.
    pub sent_by: SocketAddr,
    pub branch: String,
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
}

/// One leg's dialog, from this node's side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialog {
    pub call_id: String,
    /// Our From in requests we send (with our tag).
    pub local: String,
    /// Our To in requests we send (the far end, with its tag).
    pub remote: String,
    /// The CSeq of the next request we send.
    pub next_cseq: u32,
    /// The Request-URI of requests we send (the far end's Contact).
    pub target: String,
    /// Route set (Route header values, in order).
    pub routes: Vec<String>,
    /// Where requests go.
    pub hop: Hop,
    /// The SDP this node last sent on this leg.
    pub sdp: String,
    /// Where the far end receives RTP (from its SDP).
    pub media: Option<SocketAddr>,
    /// The telephone-event payload type the far end sends, if any.
    pub dtmf: Option<u8>,
    /// The formats of the far end's audio stream (None: not known, as in a checkpoint
    /// written before 2026-12-05 evening): its keys in the other party's
    /// telephone-event type count when that type is none of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formats: Option<Vec<u8>>,
    /// The party takes UPDATE in the dialog (its Allow lists it, or it sent none):
    /// else its refreshes go to it as re-INVITEs after a takeover too. Written only
    /// when false; a checkpoint without it (any before 2026-12-06 late night, or a
    /// party that takes UPDATE) says true. It was not kept: a caller whose Allow left
    /// UPDATE out was sent UPDATEs after a takeover, answered 405 and was hung up at
    /// its session's end (a review).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub takes_update: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A [`Peer`] in a stable form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub transport: HopTransport,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HopTransport {
    Udp,
    Tcp,
    Tls,
}

impl From<Peer> for Hop {
    fn from(p: Peer) -> Hop {
        let transport = match p.transport {
            Transport::Udp => HopTransport::Udp,
            Transport::Tcp => HopTransport::Tcp,
            Transport::Tls => HopTransport::Tls,
        };
        Hop {
            transport,
            addr: p.addr,
        }
    }
}

impl From<Hop> for Peer {
    fn from(h: Hop) -> Peer {
        let transport = match h.transport {
            HopTransport::Udp => Transport::Udp,
            HopTransport::Tcp => Transport::Tcp,
            HopTransport::Tls => Transport::Tls,
        };
        Peer {
            transport,
            addr: h.addr,
        }
    }
}

/// A call's recording: its parts so far (one per node that carried it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    /// `both`, `caller` or `callee`.
    pub mode: String,
    pub parts: Vec<tsunagu_store::RecordingPart>,
}

impl Checkpoint {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A stored checkpoint; None if it does not parse or is of another format.
    pub fn decode(text: &str) -> Option<Checkpoint> {
        serde_json::from_str::<Checkpoint>(text)
            .ok()
            .filter(|c| c.version == VERSION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialog(call_id: &str) -> Dialog {
        Dialog {
            call_id: call_id.into(),
            local: "<sip:0501234567@192.0.2.1>;tag=ours".into(),
            remote: "<sip:09012345678@192.0.2.9>;tag=theirs".into(),
            next_cseq: 3,
            target: "sip:caller@192.0.2.9:5060".into(),
            routes: vec!["<sip:192.0.2.8;lr>".into()],
            hop: Hop {
                transport: HopTransport::Tcp,
                addr: "192.0.2.8:5060".parse().unwrap(),
            },
            sdp: "v=0\r\n".into(),
            media: Some("192.0.2.9:4000".parse().unwrap()),
            dtmf: Some(101),
            formats: Some(vec![0, 8, 101]),
            takes_update: false,
        }
    }

    #[test]
    fn round_trips_and_refuses_what_it_does_not_know() {
        let answered = Answered {
            a: dialog("a"),
            b: dialog("b"),
            session_seconds: Some(90),
            session_by_node: true,
            session_caller_refreshes: Some(false),
            session_callee_by_node: true,
            session_callee_min_se: Some(3600),
            recording: Some(Recording {
                mode: "both".into(),
                parts: vec![tsunagu_store::RecordingPart {
                    node: "n1".into(),
                    path: "2026-12-02/call_1.wav".into(),
                    offset_ms: 0,
                }],
            }),
            b_payload_type: 8,
            lines: vec![HeldLine {
                key: "number:0501234567".into(),
                limit: 2,
            }],
            ivr_digits: "2".into(),
            caller_verified: true,
            closed_result: Some(tsunagu_store::CallResult::NoAnswer),
            ivr_offered: Some(true),
        };
        let hop = answered.a.hop;
        let c = Checkpoint {
            version: VERSION,
            nodes: vec!["n1".into()],
            state: State::Answered(Box::new(answered)),
        };
        assert_eq!(Checkpoint::decode(&c.encode()), Some(c.clone()));
        // A checkpoint written before formats were kept reads as not knowing them.
        let no_formats = c.encode().replace(",\"formats\":[0,8,101]", "");
        assert_ne!(no_formats, c.encode(), "the field was cut out");
        match Checkpoint::decode(&no_formats).map(|c| c.state) {
            Some(State::Answered(a)) => assert_eq!((a.a.formats, a.b.formats), (None, None)),
            other => panic!("{other:?}"),
        }
        // One written before whether a party takes UPDATE was kept reads as taking it.
        let no_update = c.encode().replace(",\"takes_update\":false", "");
        assert_ne!(no_update, c.encode(), "the field was cut out");
        match Checkpoint::decode(&no_update).map(|c| c.state) {
            Some(State::Answered(a)) => assert!(a.a.takes_update && a.b.takes_update),
            other => panic!("{other:?}"),
        }
        // A checkpoint written before lines were carried reads as holding none.
        let older = c.encode().replace(
            ",\"lines\":[{\"key\":\"number:0501234567\",\"limit\":2}]",
            "",
        );
        assert_ne!(older, c.encode(), "the field was cut out");
        match Checkpoint::decode(&older).map(|c| c.state) {
            Some(State::Answered(a)) => assert!(a.lines.is_empty()),
            other => panic!("{other:?}"),
        }
        // One written before the node refreshed sessions: the caller refreshes.
        let older = c.encode().replace(",\"session_by_node\":true", "");
        assert_ne!(older, c.encode(), "the field was cut out");
        match Checkpoint::decode(&older).map(|c| c.state) {
            Some(State::Answered(a)) => assert!(!a.session_by_node),
            other => panic!("{other:?}"),
        }
        // One written before the caller's part was kept: not known.
        let older = c
            .encode()
            .replace(",\"session_caller_refreshes\":false", "");
        assert_ne!(older, c.encode(), "the field was cut out");
        match Checkpoint::decode(&older).map(|c| c.state) {
            Some(State::Answered(a)) => assert_eq!(a.session_caller_refreshes, None),
            other => panic!("{other:?}"),
        }
        // One written before the callee's part was kept: the node does not refresh
        // it, and knows no floor of its.
        let older = c
            .encode()
            .replace(",\"session_callee_by_node\":true", "")
            .replace(",\"session_callee_min_se\":3600", "");
        assert_eq!(
            older.matches("session_callee").count(),
            0,
            "the fields were cut out"
        );
        // Written only when set: an older node reads nothing new of a call without them.
        let mut unset = c.clone();
        if let State::Answered(a) = &mut unset.state {
            (a.session_callee_by_node, a.session_callee_min_se) = (false, None);
        }
        assert_eq!(unset.encode().matches("session_callee").count(), 0);
        match Checkpoint::decode(&older).map(|c| c.state) {
            Some(State::Answered(a)) => {
                assert!(!a.session_callee_by_node);
                assert_eq!(a.session_callee_min_se, None);
            }
            other => panic!("{other:?}"),
        }
        // One written before the call's own facts were carried: none known.
        let facts =
            ",\"ivr_digits\":\"2\",\"caller_verified\":true,\"closed_result\":\"no_answer\"";
        let older = c.encode().replace(facts, "");
        assert_ne!(older, c.encode(), "the fields were cut out");
        match Checkpoint::decode(&older).map(|c| c.state) {
            Some(State::Answered(a)) => {
                assert_eq!(
                    (a.ivr_digits.as_str(), a.caller_verified, a.closed_result),
                    ("", false, None)
                )
            }
            other => panic!("{other:?}"),
        }
        let other = c.encode().replace("\"version\":1", "\"version\":2");
        assert_eq!(Checkpoint::decode(&other), None, "another format");
        assert_eq!(Checkpoint::decode("{"), None);
        let peer: Peer = hop.into();
        assert_eq!(Hop::from(peer), hop);
        let ringing = Checkpoint {
            version: VERSION,
            nodes: vec!["n1".into()],
            state: State::Ringing(Box::new(Ringing {
                uri: "sip:0311112222@192.0.2.5:5060".into(),
                hop,
                sent_by: "192.0.2.1:5060".parse().unwrap(),
                branch: "z9hG4bKx".into(),
                from: "<sip:a@192.0.2.1>;tag=f".into(),
                to: "<sip:0311112222@192.0.2.5:5060>".into(),
                call_id: "b-leg".into(),
                cseq: 1,
            })),
        };
        assert_eq!(Checkpoint::decode(&ringing.encode()), Some(ringing));
    }
}
