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

/// A new identifier that sorts by creation time, such as `call_0019ac3b5e21_5f0c2a9e`
/// (milliseconds since the epoch in hex, then 32 random bits). Call records are keyed
/// by it: new rows land at the end of the key index instead of anywhere in it.
pub fn new_time_id(prefix: &str) -> String {
    let ms = u64::try_from(crate::now_ms()).unwrap_or(0);
    format!("{prefix}_{ms:012x}_{}", random_hex(4))
}

/// A new API key: 128 random bits, shown to the user once.
pub fn new_api_key() -> String {
    format!("tsk_{}", random_hex(16))
}

/// The form an API key is stored and looked up in (hex SHA-256).
pub fn hash_api_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
