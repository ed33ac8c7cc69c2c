//! Cluster coordination (SPEC section 6): membership with our own failure detector and
//! incarnations ([`membership`]), which node owns a key ([`placement`]), and
//! cluster-wide line counts and queues ([`lines`]). The state machines here are sans-IO
//! (time and messages in, messages and events out); the node's driver carries their
//! messages between nodes.

pub mod lines;
pub mod membership;
pub mod placement;

/// The identity of a node in the cluster (its `node.id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(pub String);
