//! Media anchoring: every call's audio passes through the node, so it can be counted
//! now and played to, recorded and listened to later.
//!
//! - [`sdp`]: rewriting each leg's SDP to the node's address and port (pure).
//! - [`ports`]: the RTP port pool; a port returns to the pool when its lease drops.
//! - [`relay`]: one task per call relaying RTP both ways with symmetric latching and
//!   counting packets, bytes and sequence-number gaps.
//! - [`recording`], [`wav`], [`g711`]: call recording to WAV, written as it grows.

pub mod g711;
pub mod metrics;
pub mod ports;
pub mod recording;
pub mod relay;
pub mod sdp;
pub mod wav;

pub use metrics::MediaMetrics;
pub use ports::{MediaPort, PortPool};
pub use recording::{RecordMode, Recorder};
pub use relay::{Relay, RelayStats, Side};

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no free RTP port in the configured range")]
    PortsExhausted,
}
