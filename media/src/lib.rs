//! Media anchoring: every call's audio passes through the node, so it can be counted
//! now and played to, recorded and listened to later.
//!
//! - [`sdp`]: rewriting each leg's SDP to the node's address and port (pure).
//! - [`ports`]: the RTP port pool; a port returns to the pool when its lease drops.
//! - [`relay`]: one task per call relaying RTP both ways with symmetric latching and
//!   counting packets, bytes and sequence-number gaps; [`latch`] decides which
//!   sources a port accepts (`media.latch`), [`rtp`] which datagrams are RTP.
//! - [`recording`], [`wav`], [`g711`]: call recording to WAV, written as it grows.
//! - [`prompt`]: prompts encoded at load, played by the relay; [`stream`]: how
//!   prompts and relayed audio share one outgoing RTP stream.
//! - [`dtmf`]: RFC 4733 telephone-events and SIP INFO digits.

pub mod destination;
pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod latch;
pub mod metrics;
pub mod ports;
pub mod prompt;
pub mod recording;
pub mod relay;
pub mod rtp;
pub mod sdp;
pub mod stream;
pub mod wav;

pub use latch::Latch;
pub use metrics::MediaMetrics;
pub use ports::{Gate, MediaPort, PortPool};
pub use prompt::{Prompt, Prompts};
pub use recording::{RecordMode, Recorder};
pub use relay::{MediaEvent, OnEvent, Relay, RelayStats, Side};

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no free RTP port in the configured range")]
    PortsExhausted,
}
