//! The SIP edge: transports (UDP, TCP, TLS), an RFC 3261 transaction layer, and the
//! routing of messages to the call that owns them.
//!
//! Parsing uses `rsipstack::sip` (the maintained continuation of rsip's message model).
//! The transaction layer is our own sans-IO state machine ([`transaction`]): time is an
//! argument, so its retransmission and timeout rules are tested on a fake clock, and it
//! costs no task or timer per transaction. [`endpoint`] is the thin async driver that
//! owns the sockets. Call actors see a small surface: [`SipEvent`]s in, [`Command`]s out.
//!
//! Everything from the network is bounded before it costs anything: strangers are
//! dropped by the receivers ([`source`]), stream framing checks every length
//! ([`framing`]), the queue to the core is bounded in messages and bytes, TCP/TLS
//! connections are capped and time out, and header bytes are checked before parsing.
//! New calls are refused early, at the receivers, when messages wait too long for the
//! core ([`overload`]). The core runs as several shards, one per CPU, each owning the
//! Call-IDs that hash to it ([`shard`]).

pub mod build;
pub mod endpoint;
pub mod framing;
pub mod metrics;
pub mod overload;
pub mod parse;
mod sanitize;
mod segmented;
pub mod shard;
pub mod source;
pub mod transaction;
mod transport;
pub mod udp;
pub mod via;

pub use endpoint::{
    Command, EdgeSettings, Endpoint, EndpointHandle, InviteHandler, NewInvite, Reject, SendGate,
    SipEvent, Undelivered,
};
pub use overload::OverloadSettings;
pub use parse::{Info, ParseError, Peer, Transport};
pub use rsipstack::sip::{Method, Request, Response, SipMessage};
pub use source::{SourcePolicy, TrustAll, TrustedSources, Untrusted};
pub use transport::{StreamLimits, TlsSetup};
