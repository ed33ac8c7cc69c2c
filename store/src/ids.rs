//! Identifiers and API keys: random (call ids time-ordered), URL-safe, and stored
//! hashed (keys only).

use rand::RngExt;
use sha2::{Digest, Sha256};

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// A new identifier such as `op_5f0c2a9e1b7d3c44`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_hex(8))
}

/// A new identifier that sorts by creation time, such as
/// `call_0019ac3b5e21_5f0c2a9e1b7d3c44` (milliseconds since the epoch in hex, then 64
/// random bits). Call records are keyed by it: new rows land at the end of the key
/// index instead of anywhere in it. With 32 random bits two calls of a busy cluster in
/// the same millisecond would share an id every few months, and the second's record
/// was dropped as a duplicate of the first's (a review).
pub fn new_time_id(prefix: &str) -> String {
    let ms = u64::try_from(crate::now_ms()).unwrap_or(0);
    format!("{prefix}_{ms:012x}_{}", random_hex(8))
}

/// A new API key: 128 random bits, shown to the user once.
pub fn new_api_key() -> String {
    format!("tsk_{}", random_hex(16))
}

/// A new advertiser's key (see `Store::add_advertiser_key`): as [`new_api_key`],
/// with its own prefix.
pub fn new_advertiser_key() -> String {
    format!("{ADVERTISER_KEY_PREFIX}{}", random_hex(16))
}

/// What an advertiser's key starts with.
pub const ADVERTISER_KEY_PREFIX: &str = "tsa_";

/// The form an API key is stored and looked up in (hex SHA-256). An advertiser's
/// key (`tsa_`) is hashed with a label of its own: a node of an older release, which
/// knows no advertiser's keys, looks it up as the plain hash, finds nothing and
/// answers 401, where finding its row it would have taken it for an operator's key
/// (on ScyllaDB, where nodes of two releases share the store during an upgrade).
pub fn hash_api_key(key: &str) -> String {
    let mut h = Sha256::new();
    if key.starts_with(ADVERTISER_KEY_PREFIX) {
        h.update(b"tsunagu advertiser key\0");
    }
    h.update(key.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// An operator's key is stored as its plain SHA-256 (as every release has); an
    /// advertiser's under a label, so a release that does not know it finds nothing.
    #[test]
    fn an_advertisers_key_is_not_found_as_a_plain_hash() {
        let plain = |k: &str| -> String {
            Sha256::digest(k.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let op = super::new_api_key();
        assert_eq!(super::hash_api_key(&op), plain(&op));
        let adv = super::new_advertiser_key();
        assert!(adv.starts_with("tsa_") && adv.len() == 36, "{adv}");
        assert_ne!(super::hash_api_key(&adv), plain(&adv));
        assert_eq!(super::hash_api_key(&adv).len(), 64);
    }

    /// A call id: the time in 12 hex digits, then 64 random bits; ids made one after
    /// another sort in order of making (within a millisecond, by chance).
    #[test]
    fn call_ids_carry_the_time_and_64_random_bits() {
        let id = super::new_time_id("call");
        let parts: Vec<&str> = id.split('_').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!((parts[1].len(), parts[2].len()), (12, 16), "{id}");
        assert!(parts[1..]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit())));
        let ms = i64::from_str_radix(parts[1], 16).unwrap();
        assert!((crate::now_ms() - ms).abs() < 60_000);
    }
}
