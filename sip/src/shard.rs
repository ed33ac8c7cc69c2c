//! Sharding of the SIP core by Call-ID, so signalling uses every core.
//!
//! The SIP core (transactions, the Call-ID → call table, overload admission) is a
//! single-threaded state machine; one of them keeps up with one core's worth of
//! signalling. A node runs several, each a task of its own on the multi-threaded
//! runtime, and every message goes to the one its Call-ID picks:
//!
//! - everything of one dialog carries one Call-ID: an INVITE, its retransmissions,
//!   CANCEL and ACK, the responses to what the node sent, BYE, re-INVITEs;
//! - a call's commands carry the Call-ID of the leg they are for (each leg has its
//!   own, so the two legs of a call may live on two shards: they share nothing in the
//!   core);
//!
//! so each shard owns its transactions and routes alone: no lock, no message between
//! shards. Order is kept per Call-ID (one queue per shard), which is all SIP asks.
//!
//! The hash is keyed per process ([`RandomState`]): a peer cannot choose Call-IDs
//! that all land on one shard and make its queue, and so its overload admission,
//! refuse the calls of everybody else on it.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// At most this many shards (a config value past it is refused by validation).
pub const MAX_SHARDS: usize = 64;

/// Which shard a Call-ID belongs to; cheap to clone (clones agree).
#[derive(Debug, Clone)]
pub struct Shards {
    hasher: RandomState,
    count: usize,
}

impl Shards {
    /// `count` shards (clamped to 1..=[`MAX_SHARDS`]).
    pub fn new(count: usize) -> Shards {
        Shards {
            hasher: RandomState::new(),
            count: count.clamp(1, MAX_SHARDS),
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The shard of `call_id`, in `0..count`.
    pub fn of(&self, call_id: &str) -> usize {
        if self.count == 1 {
            return 0;
        }
        // The remainder is below `count` (≤ 64): the cast cannot truncate.
        (self.hasher.hash_one(call_id) % self.count as u64) as usize
    }
}

/// The CPUs this process may run on (its affinity mask: `taskset` and cgroup CPU sets
/// count), at least one.
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One shard per CPU the node may run on (`sip.shards = 0`).
pub fn per_cpu() -> usize {
    usable_cpus().clamp(1, MAX_SHARDS)
}

/// UDP receive threads per listener for `shards` shards: one per four. A receive
/// thread checks, parses and queues a datagram in a few microseconds, a shard's work on
/// the same message is several times that, so one thread feeds four shards; more
/// threads read the same socket (the kernel hands each datagram to one of them).
pub fn udp_receivers(shards: usize) -> usize {
    shards.div_ceil(4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_id_always_lands_on_the_same_shard_and_clones_agree() {
        let s = Shards::new(8);
        let c = s.clone();
        for i in 0..1000 {
            let id = format!("{i}@10.0.0.1");
            assert_eq!(s.of(&id), s.of(&id));
            assert_eq!(s.of(&id), c.of(&id), "a clone routes alike");
            assert!(s.of(&id) < 8);
        }
    }

    #[test]
    fn calls_spread_over_every_shard() {
        let s = Shards::new(4);
        let mut per = [0usize; 4];
        for i in 0..4000 {
            per[s.of(&format!("call-{i}"))] += 1;
        }
        // 1,000 each on average; a keyed hash stays well within ±20 %.
        for n in per {
            assert!((800..=1200).contains(&n), "{per:?}");
        }
    }

    #[test]
    fn counts_are_bounded() {
        for (asked, got) in [(0, 1), (1, 1), (3, 3), (64, 64), (65, 64), (usize::MAX, 64)] {
            assert_eq!(Shards::new(asked).count(), got, "{asked}");
        }
        assert_eq!(Shards::new(1).of("anything"), 0);
        assert!((1..=MAX_SHARDS).contains(&per_cpu()));
    }

    #[test]
    fn one_receive_thread_per_four_shards() {
        for (shards, threads) in [(1, 1), (2, 1), (4, 1), (5, 2), (16, 4), (64, 16)] {
            assert_eq!(udp_receivers(shards), threads, "{shards}");
        }
    }
}
