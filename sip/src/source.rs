//! Who the SIP edge answers. A carrier's node talks to its trunks only: a message from
//! any other address is dropped by the receivers before it is queued, parsed into a
//! transaction or answered, so the node cannot be used to reflect traffic at a spoofed
//! victim and a flood from strangers costs no transaction state (RFC 3261's 32 s of
//! memory per request). Optionally (`reject`) a request from a stranger gets one 403,
//! built statelessly and never retransmitted.
//!
//! The set of trusted addresses belongs to the node (its trunks' inbound networks and
//! outbound targets); the sip crate only asks it, through [`TrustedSources`], so this
//! crate stays independent of the configuration. The node hands a [`SourcePolicy`] in
//! at start; it is immutable. To change trunks at run time later (the cluster), the
//! node's [`TrustedSources`] can swap its own contents (an atomic pointer swap per
//! change, a plain read per message): the receive path keeps calling one method.

use std::net::IpAddr;
use std::sync::Arc;

/// Answers whether a source address belongs to a trunk. Called for every received
/// datagram and every accepted connection: it must be cheap and must not block.
pub trait TrustedSources: Send + Sync + 'static {
    fn is_trusted(&self, ip: IpAddr) -> bool;
}

/// Trusts every address: tests and tools that have no trunks.
pub struct TrustAll;

impl TrustedSources for TrustAll {
    fn is_trusted(&self, _ip: IpAddr) -> bool {
        true
    }
}

/// What a message from an untrusted source gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Untrusted {
    /// Nothing: dropped and counted.
    #[default]
    Drop,
    /// A request (not ACK) gets one stateless 403; everything else is dropped.
    Reject,
}

/// The trusted sources and what the others get.
#[derive(Clone)]
pub struct SourcePolicy {
    pub trusted: Arc<dyn TrustedSources>,
    pub untrusted: Untrusted,
}

impl SourcePolicy {
    pub fn trust_all() -> SourcePolicy {
        SourcePolicy {
            trusted: Arc::new(TrustAll),
            untrusted: Untrusted::Drop,
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.is_trusted(ip)
    }
}

/// What kind of message a datagram or frame starts as, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Ack,
    Response,
}

pub fn kind(data: &[u8]) -> Kind {
    if data.starts_with(b"SIP/") {
        Kind::Response
    } else if data.starts_with(b"ACK ") {
        Kind::Ack
    } else {
        Kind::Request
    }
}

/// What the edge does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Parse it and hand it to the SIP core.
    Accept,
    /// Nothing at all.
    Drop,
    /// One stateless 403, nothing else (no transaction, no retransmission).
    Reject,
}

pub fn verdict(trusted: bool, untrusted: Untrusted, kind: Kind) -> Verdict {
    match (trusted, untrusted, kind) {
        (true, _, _) => Verdict::Accept,
        (false, Untrusted::Reject, Kind::Request) => Verdict::Reject,
        (false, _, _) => Verdict::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        use Kind::*;
        use Untrusted::{Drop as D, Reject as R};
        let rows = [
            (true, D, Request, Verdict::Accept),
            (true, D, Ack, Verdict::Accept),
            (true, D, Response, Verdict::Accept),
            (true, R, Request, Verdict::Accept),
            (false, D, Request, Verdict::Drop),
            (false, D, Ack, Verdict::Drop),
            (false, D, Response, Verdict::Drop),
            (false, R, Request, Verdict::Reject),
            (false, R, Ack, Verdict::Drop),
            (false, R, Response, Verdict::Drop),
        ];
        for (trusted, policy, kind, want) in rows {
            assert_eq!(
                verdict(trusted, policy, kind),
                want,
                "{trusted} {policy:?} {kind:?}"
            );
        }
    }

    #[test]
    fn kinds() {
        let rows: [(&[u8], Kind); 5] = [
            (b"SIP/2.0 200 OK\r\n", Kind::Response),
            (b"ACK sip:a@b SIP/2.0\r\n", Kind::Ack),
            (b"INVITE sip:a@b SIP/2.0\r\n", Kind::Request),
            (b"ACKNOWLEDGE sip:a@b SIP/2.0\r\n", Kind::Request),
            (b"", Kind::Request),
        ];
        for (data, want) in rows {
            assert_eq!(kind(data), want, "{}", String::from_utf8_lossy(data));
        }
    }
}
