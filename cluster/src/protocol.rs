//! What nodes say to each other: one frame (JSON, so a capture is readable) carries who
//! sent it, in which incarnation, and one or more messages — a heartbeat takes the
//! lines given back since the last one along.

use crate::lines::LineMsg;
use crate::membership::Heard;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub from: String,
    pub epoch: u64,
    pub msgs: Vec<Msg>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Sent every heartbeat interval to every peer; answered [`Msg::Ack`] (or
    /// [`Msg::Stale`] when the sender's incarnation was declared down). `hears`: the
    /// other members the sender heard itself, and how long ago (see
    /// [`crate::membership`]); absent from a node of a release before it, and then
    /// empty, so members of both releases understand each other during an upgrade.
    Heartbeat {
        seq: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        hears: Vec<Heard>,
    },
    Ack {
        seq: u64,
    },
    /// Your incarnation `epoch` was declared down: rejoin as a new one.
    Stale {
        epoch: u64,
    },
    /// `node` in incarnation `epoch` was declared down (by the sender or the store).
    Down {
        node: String,
        epoch: u64,
    },
    /// Provisioning changed in the store up to this change number: catch up.
    Changed {
        seq: i64,
    },
    Line(LineMsg),
    /// A draining node asks the receiver to take these answered calls over (claim each
    /// in the store from the sender's incarnation and re-INVITE its parties); at most
    /// [`MAX_HANDOVER`] per message.
    HandOver {
        calls: Vec<String>,
    },
    /// The receiver claimed these calls of a [`Msg::HandOver`]: the sender drops them
    /// silently.
    HandedOver {
        calls: Vec<String>,
    },
}

/// Calls named in one hand-over message (more are refused: a peer cannot make a node
/// claim without bound).
pub const MAX_HANDOVER: usize = 256;

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A frame from a peer; None if it is not one (counted and dropped by the caller),
    /// or names a node with a name no node can have ([`is_node_name`]).
    pub fn decode(bytes: &[u8]) -> Option<Frame> {
        let frame: Frame = serde_json::from_slice(bytes).ok()?;
        frame.names_are_node_names().then_some(frame)
    }

    /// Whether every node the frame names (its sender, a node declared down, the
    /// members a heartbeat says it hears) has a node's name.
    fn names_are_node_names(&self) -> bool {
        is_node_name(&self.from)
            && self.msgs.iter().all(|m| match m {
                Msg::Down { node, .. } => is_node_name(node),
                Msg::Heartbeat { hears, .. } => hears.iter().all(|h| is_node_name(&h.node)),
                _ => true,
            })
    }
}

/// A node's name (`node.id`; the rule is the configuration's).
pub use tsunagu_config::is_node_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let f = Frame {
            from: "n1".into(),
            epoch: 3,
            msgs: vec![
                Msg::Heartbeat {
                    seq: 9,
                    hears: vec![Heard {
                        node: "n2".into(),
                        epoch: 4,
                        ago_ms: 120,
                    }],
                },
                Msg::Line(LineMsg::Release {
                    key: "number:0501".into(),
                    call: "call_1".into(),
                    forwarded: false,
                }),
            ],
        };
        assert_eq!(Frame::decode(&f.encode()), Some(f));
        assert_eq!(Frame::decode(b"\x00\xff"), None);
        // A heartbeat of a release without `hears`, and one without it to such a node.
        let old = br#"{"from":"n1","epoch":3,"msgs":[{"Heartbeat":{"seq":9}}]}"#;
        let taken = Frame::decode(old).expect("an older node's heartbeat");
        assert_eq!(
            taken.msgs,
            vec![Msg::Heartbeat {
                seq: 9,
                hears: vec![]
            }]
        );
        assert_eq!(taken.encode(), old.to_vec());
        assert_eq!(Frame::decode(br#"{"from":"x"}"#), None);
    }

    /// A frame naming a node with a name no node can have is refused whole: its
    /// sender, a node declared down, a member a heartbeat hears.
    #[test]
    fn frames_naming_impossible_nodes_are_refused() {
        let long = "n".repeat(65);
        let rows: &[(&str, bool)] = &[
            (r#"{"from":"n1.example-host_2","epoch":1,"msgs":[]}"#, true),
            (r#"{"from":"n1\nWARN forged","epoch":1,"msgs":[]}"#, false),
            (r#"{"from":"","epoch":1,"msgs":[]}"#, false),
            (
                r#"{"from":"n1","epoch":1,"msgs":[{"Down":{"node":"n2\u001b[2J","epoch":1}}]}"#,
                false,
            ),
            (
                r#"{"from":"n1","epoch":1,"msgs":[{"Down":{"node":"n2","epoch":1}}]}"#,
                true,
            ),
            (
                r#"{"from":"n1","epoch":1,"msgs":[{"Heartbeat":{"seq":1,"hears":[{"node":"a b","epoch":1,"ago_ms":1}]}}]}"#,
                false,
            ),
        ];
        for (text, taken) in rows {
            assert_eq!(Frame::decode(text.as_bytes()).is_some(), *taken, "{text}");
        }
        let f = format!(r#"{{"from":"{long}","epoch":1,"msgs":[]}}"#);
        assert!(Frame::decode(f.as_bytes()).is_none());
        assert!(is_node_name(&long[..64]));
    }
}
