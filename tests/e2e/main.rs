//! End-to-end tests: real `tsunagu` nodes driven by real SIPp over loopback, and the
//! HTTP API exercised as a user would. Run with `scripts/test.sh` (installs SIPp).

mod api;
mod api_abuse;
mod calls;
mod cluster;
mod cluster_cli;
mod cluster_failover;
mod cluster_harness;
mod cluster_partition;
mod dialogs;
mod durability;
mod follow_up;
mod harness;
mod media_security;
mod offer_answer;
mod party;
mod pools;
mod process;
mod prompts;
mod recording;
mod screens;
mod sip_edge;
mod takeover;
mod takeover_recording;
mod takeover_sipp;
mod tls;
mod torture;
