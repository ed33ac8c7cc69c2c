//! Wall-clock time as the call log counts it: milliseconds since the Unix epoch. One
//! definition for the store's backends, the API and the node, so that every record,
//! lease and sign of life is stamped alike.

/// The current time in milliseconds since the Unix epoch (0 for a clock set before
/// it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_the_projects_start_and_moves_forward() {
        let a = super::now_ms();
        // 2026-01-01T00:00:00Z: a clock reading before it is not this machine's.
        assert!(a > 1_767_225_600_000, "{a}");
        assert!(super::now_ms() >= a);
    }
}
