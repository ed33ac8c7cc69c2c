//! Which node owns a key (a number's or an advertiser's lines): rendezvous hashing
//! (highest random weight) over the live members. Every node computes the same owner
//! from the same member list, a key moves only when its owner leaves or a member that
//! outranks it for that key joins, and keys spread evenly. The hash is ours (FNV-1a
//! then a 64-bit finaliser), fixed forever, so nodes of different builds agree during a
//! rolling upgrade.

/// FNV-1a over the bytes, then splitmix64's finaliser (FNV alone spreads short keys
/// that differ in one digit poorly).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff; // separates ("ab","c") from ("a","bc")
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The owner of `key` among `members` (names); None if there are none.
pub fn owner<'a>(key: &str, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    members
        .into_iter()
        .max_by_key(|m| (stable_hash(&[key.as_bytes(), m.as_bytes()]), *m))
}

/// Where `member` ranks for `key` among `members` (0: the owner, 1: the owner once
/// the owner is gone, ...); None if it is not among them.
pub fn rank<'a>(
    key: &str,
    members: impl IntoIterator<Item = &'a str>,
    member: &str,
) -> Option<usize> {
    let mut order: Vec<(u64, &str)> = members
        .into_iter()
        .map(|m| (stable_hash(&[key.as_bytes(), m.as_bytes()]), m))
        .collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    order.dedup();
    order.iter().position(|(_, m)| *m == member)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_N1: u64 = 0x693062d7db934da5;
    const HASH_N2: u64 = 0x9dcdc365de2e10b6;

    #[test]
    fn the_hash_is_fixed() {
        // Changing these values breaks rolling upgrades: old and new nodes would
        // disagree on owners.
        assert_eq!(stable_hash(&[b"number:0501234567", b"n1"]), HASH_N1);
        assert_eq!(stable_hash(&[b"number:0501234567", b"n2"]), HASH_N2);
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
    }

    /// The owner ranks first, and the owner of what is left when it goes, second.
    #[test]
    fn ranks_follow_owners() {
        let three = ["n1", "n2", "n3"];
        for k in ["a", "b", "orphaned calls", "number:0501234567"] {
            let first = owner(k, three).unwrap();
            assert_eq!(rank(k, three, first), Some(0), "{k}");
            let rest: Vec<&str> = three.iter().copied().filter(|m| *m != first).collect();
            let second = owner(k, rest.iter().copied()).unwrap();
            assert_eq!(rank(k, three, second), Some(1), "{k}");
            let third = rest.iter().copied().find(|m| *m != second).unwrap();
            assert_eq!(rank(k, three, third), Some(2), "{k}");
            assert_eq!(rank(k, three, "n9"), None);
        }
    }

    #[test]
    fn owners_are_stable_and_spread() {
        let three = ["n1", "n2", "n3"];
        let mut per = std::collections::HashMap::new();
        let keys: Vec<String> = (0..3000).map(|i| format!("number:05{i:08}")).collect();
        for k in &keys {
            *per.entry(owner(k, three).unwrap()).or_insert(0) += 1;
        }
        for n in three {
            let got = per[n];
            assert!((800..1200).contains(&got), "{n} owns {got} of 3000");
        }
        // n2 leaves: only its keys move, and each to one of the others.
        for k in &keys {
            let before = owner(k, three).unwrap();
            let after = owner(k, ["n1", "n3"]).unwrap();
            if before != "n2" {
                assert_eq!(before, after, "{k} moved although its owner stayed");
            }
        }
        // The order of the member list does not matter.
        for k in keys.iter().take(100) {
            assert_eq!(owner(k, ["n3", "n1", "n2"]), owner(k, three));
        }
        assert_eq!(owner("k", std::iter::empty()), None);
    }
}
