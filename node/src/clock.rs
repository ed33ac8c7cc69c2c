//! Wall-clock time as the call log counts it: milliseconds since the Unix epoch.
//! One place, so the call path, the call-log writer and the follow-up worker agree
//! (and none of them imports another just for the time).

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
