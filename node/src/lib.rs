//! The tsunagu node: call actors and their supervisor, admission of new calls, the
//! call-log writer, and the wiring that starts the SIP edge, media and the API.

pub mod admission;
pub mod call;
pub mod call_log;
pub mod clock;
pub mod cluster_link;
pub mod context;
pub mod decide;
pub mod directory;
pub mod follow_up;
pub mod host;
pub mod invite;
#[cfg(test)]
mod layout;
pub mod lines;
pub mod log_output;
pub mod metrics;
pub mod process;
pub mod provisioning;
pub mod recording_space;
pub mod server;
pub mod supervisor;
pub mod tls;
pub mod trunk_health;
