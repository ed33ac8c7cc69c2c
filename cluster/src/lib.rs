//! Cluster coordination (SPEC section 6): membership with our own failure detector,
//! incarnations and a lease ([`membership`]), which node owns a key ([`placement`]),
//! cluster-wide line counts and queues ([`lines`]) — all sans-IO state machines — and
//! the async side that carries their messages between nodes over ractor_cluster with
//! mutual TLS ([`net`], [`protocol`], [`driver`]).

pub mod driver;
pub mod lines;
pub mod membership;
pub mod metrics;
pub mod net;
pub mod placement;
pub mod protocol;

pub use driver::{
    Cluster, Host, Lease, Registered, RetireRefusal, Settings, Status, STORE_SIGN_EVERY,
};
pub use metrics::ClusterMetrics;
