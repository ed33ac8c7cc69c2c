//! Cluster coordination (SPEC section 6): membership over ractor_cluster with our own
//! heartbeat, cluster-wide line counts, queues and number leases, and takeover of a
//! dead node's calls.
//!
//! Not built yet: a node runs alone, and what would be cluster-wide is node-local
//! (the call-slot counters in `tsunagu::context`, the number directory). This crate
//! holds the single fact the rest of the workspace may already rely on: the identity
//! of the local node.

/// The identity of a node in the cluster (its `node.id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(pub String);
