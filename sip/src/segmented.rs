//! A hash map kept in many small segments, so that growing it never stalls the SIP core.
//!
//! A `HashMap` grows by moving every entry into a table twice the size, all at once.
//! The transaction tables of a shard hold every transaction of the last 32 s (UDP
//! transactions linger that long to absorb retransmissions): hundreds of thousands of
//! entries at a few thousand calls per second, and moving them took 13 ms at 57,000
//! entries, 72 ms at 229,000 and 160 ms at 459,000 (measured here with
//! transaction-sized entries). During that move the shard answers nothing: every call
//! whose message arrived then was late by as much, which was the SIP setup tail at
//! moderate load (captured on the wire: stalls of 20–66 ms at the same moments of two
//! runs, while the callee answered in under 2 ms).
//!
//! Here a key picks one of [`SEGMENTS`] maps by a keyed hash; each grows on its own,
//! 1/256 of the entries at a time. Segments fill evenly, so they still grow at about
//! the same time, but one after another, spread over thousands of inserts: the same
//! work, and no single insert that moves more than a 256th of the table.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Segments per map: a power of two (the segment is picked by a mask).
pub const SEGMENTS: usize = 256;

pub(crate) struct Segmented<K, V> {
    segments: Box<[HashMap<K, V>]>,
    hasher: RandomState,
    len: usize,
}

impl<K: Hash + Eq, V> Default for Segmented<K, V> {
    fn default() -> Self {
        Segmented {
            segments: (0..SEGMENTS).map(|_| HashMap::new()).collect(),
            hasher: RandomState::new(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq, V> Segmented<K, V> {
    fn segment(&self, key: &K) -> usize {
        // The low bits of a 64-bit keyed hash: the mask keeps it below SEGMENTS.
        (self.hasher.hash_one(key) as usize) & (SEGMENTS - 1)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.segments[self.segment(key)].get(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let s = self.segment(key);
        self.segments[s].get_mut(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let s = self.segment(&key);
        let old = self.segments[s].insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let s = self.segment(key);
        let old = self.segments[s].remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Keeps the entries of segment `i` (of [`SEGMENTS`]) for which `keep` says so;
    /// returns how many were removed. A sweep of the whole map one segment at a time
    /// does its work in 1/256 steps, as growth does.
    pub fn retain_segment(&mut self, i: usize, mut keep: impl FnMut(&K, &mut V) -> bool) -> usize {
        let segment = &mut self.segments[i & (SEGMENTS - 1)];
        let before = segment.len();
        segment.retain(|k, v| keep(k, v));
        let removed = before - segment.len();
        self.len -= removed;
        removed
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most entries one segment holds (how much one growth step moves at most).
    #[cfg(test)]
    pub fn largest_segment(&self) -> usize {
        self.segments.iter().map(HashMap::len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Behaves as one map: each row an operation and what it returns, then the length.
    #[test]
    fn behaves_like_a_map() {
        let mut m: Segmented<String, u32> = Segmented::default();
        assert!(m.is_empty());
        assert_eq!(m.insert("a".into(), 1), None);
        assert_eq!(m.insert("b".into(), 2), None);
        assert_eq!(m.insert("a".into(), 3), Some(1), "a replaced value");
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&"a".into()), Some(&3));
        *m.get_mut(&"b".into()).unwrap() += 10;
        assert_eq!(m.get(&"b".into()), Some(&12));
        assert_eq!(m.remove(&"a".into()), Some(3));
        assert_eq!(m.remove(&"a".into()), None, "removed once");
        assert_eq!(m.get(&"zz".into()), None);
        assert_eq!(m.len(), 1);
    }

    /// Entries spread over the segments, so no growth step moves more than a small
    /// share of the table (one plain map would move all 100,000 at once).
    #[test]
    fn entries_spread_so_each_growth_step_is_small() {
        let mut m = Segmented::default();
        for i in 0..100_000u32 {
            m.insert(format!("z9hG4bK{i}"), i);
        }
        assert_eq!(m.len(), 100_000);
        // 390 per segment on average; a keyed hash stays well under twice that.
        assert!(m.largest_segment() < 600, "{}", m.largest_segment());
        for i in 0..100_000u32 {
            assert_eq!(m.remove(&format!("z9hG4bK{i}")), Some(i));
        }
        assert!(m.is_empty());
    }
}
