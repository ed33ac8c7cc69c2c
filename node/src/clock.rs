//! Wall-clock time as the call log counts it: milliseconds since the Unix epoch.
//! One place, so the call path, the call-log writer and the follow-up worker agree
//! (and none of them imports another just for the time).

/// The current time in milliseconds since the Unix epoch (the store's definition).
pub use tsunagu_store::now_ms;
