//! Cluster coordination (SPEC section 6): membership with our own failure detector,
//! incarnations and a lease ([`membership`]), which node owns a key ([`placement`]),
//! cluster-wide line counts and queues ([`lines`]), whether an operator may retire a
//! member ([`retire`]) — all sans-IO — and
//! the async side that carries their messages between nodes over ractor_cluster with
//! mutual TLS ([`net`], [`protocol`], [`driver`]).

pub mod driver;
pub mod lines;
pub mod membership;
pub mod metrics;
pub mod net;
pub mod placement;
pub mod protocol;
pub mod retire;
pub mod signs;

pub use driver::{Cluster, Host, Lease, Registered, Settings, Status, STORE_SIGN_EVERY};
pub use metrics::ClusterMetrics;
