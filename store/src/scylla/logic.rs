//! The decisions of the ScyllaDB backend as pure functions of rows already read:
//! call-log partitions and page bounds, which pool number to try, which session slot
//! to take, which outbox rows are due, change-feed buckets, TTLs, and the mapping of
//! call records to rows. The driver code in `store.rs` only reads, calls these, and
//! writes; these are tested without a server.

use crate::model::{CallQuery, CallRecord, CallState, SortOrder, OUTBOX_DEAD_RETENTION_MS};
use crate::{Result, StoreError};

const DAY_MS: i64 = 86_400_000;

/// The UTC day (days since 1970-01-01) of a time in milliseconds: the call-log
/// partition a call lands in with its operator.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// The largest TTL CQL accepts (20 years).
pub const MAX_TTL_SECONDS: i64 = 630_720_000;

/// A TTL that keeps a row until `margin_s` seconds after `until_ms`, counted from
/// `now_ms` (times come from callers: never below 1 s nor above the CQL maximum).
pub fn ttl_seconds(until_ms: i64, now_ms: i64, margin_s: i64) -> i32 {
    let secs = until_ms.saturating_sub(now_ms).max(0) / 1000;
    secs.saturating_add(margin_s).clamp(1, MAX_TTL_SECONDS) as i32
}

/// A call-log row of `calls_by_day`: the key and filter columns beside the whole record.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRow {
    pub operator_id: String,
    pub day: i64,
    pub started_at: i64,
    pub call_id: String,
    pub advertiser_id: String,
    pub tracking_number: String,
    pub result: String,
    pub validity: String,
    pub record: String,
}

impl CallRow {
    pub fn of(r: &CallRecord) -> Result<CallRow> {
        Ok(CallRow {
            operator_id: r.operator_id.clone(),
            day: day_of(r.started_at),
            started_at: r.started_at,
            call_id: r.call_id.clone(),
            advertiser_id: r.advertiser_id.clone(),
            tracking_number: r.tracking_number.clone(),
            result: r.result.as_str().into(),
            validity: r.validity.as_str().into(),
            record: record_json(r)?,
        })
    }
}

/// A call record as stored (JSON, the model's own serde form).
pub fn record_json(r: &CallRecord) -> Result<String> {
    serde_json::to_string(r).map_err(|e| StoreError::Corrupt(format!("call {}: {e}", r.call_id)))
}

/// A stored call record back, checked against the key it was stored under; finished
/// records always read as `ended`, calls in progress as `active`. A finished record has
/// no owning incarnation (`owner_epoch` 0: fencing is about calls in progress).
pub fn record_from(json: &str, call_id: Option<&str>, state: CallState) -> Result<CallRecord> {
    let mut r: CallRecord =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("call record: {e}")))?;
    if let Some(id) = call_id {
        if r.call_id != id {
            return Err(StoreError::Corrupt(format!(
                "call record under {id} is for {}",
                r.call_id
            )));
        }
    }
    if state == CallState::Ended {
        r.owner_epoch = 0;
        r.stage = None; // a final record tells no stage
    }
    r.state = state;
    Ok(r)
}

/// The (started_at, call_id) bounds of one call-log query, both exclusive, with the
/// cursor applied: `(t, "")` sorts before every call of instant `t` (ids are never
/// empty), so `> (from, "")` keeps calls at `from` and `< (to, "")` drops those at `to`.
pub fn scan_bounds(q: &CallQuery) -> ((i64, String), (i64, String)) {
    let mut lower = (q.from_ms.unwrap_or(i64::MIN), String::new());
    let mut upper = (q.to_ms.unwrap_or(i64::MAX), String::new());
    if let Some(after) = &q.after {
        match q.order {
            SortOrder::Asc if *after > lower => lower = after.clone(),
            SortOrder::Desc if *after < upper => upper = after.clone(),
            _ => {}
        }
    }
    (lower, upper)
}

/// The days whose partitions a query must visit, in the order it visits them,
/// from the operator's days that have calls (`days`, any order).
pub fn scan_days(q: &CallQuery, days: &[i64]) -> Vec<i64> {
    let ((lo, _), (hi, hi_id)) = scan_bounds(q);
    // The upper bound is exclusive only at `hi` itself with an empty id.
    let last = if hi_id.is_empty() {
        day_of(hi.saturating_sub(1))
    } else {
        day_of(hi)
    };
    let first = day_of(lo);
    let mut out: Vec<i64> = days
        .iter()
        .copied()
        .filter(|d| *d >= first && *d <= last)
        .collect();
    out.sort_unstable();
    out.dedup();
    if q.order == SortOrder::Desc {
        out.reverse();
    }
    out
}

/// The range of days to list from `call_days` (inclusive), or None when the query
/// can match nothing.
pub fn day_range(q: &CallQuery) -> Option<(i64, i64)> {
    let ((lo, lo_id), (hi, hi_id)) = scan_bounds(q);
    if (lo, &lo_id) >= (hi, &hi_id) {
        return None;
    }
    let last = if hi_id.is_empty() {
        day_of(hi.saturating_sub(1))
    } else {
        day_of(hi)
    };
    Some((day_of(lo), last))
}

/// Whether a row matches the query's filters that are not part of the key.
pub fn matches_filters(
    q: &CallQuery,
    advertiser_id: &str,
    tracking_number: &str,
    result: &str,
    validity: &str,
) -> bool {
    q.advertiser_id
        .as_deref()
        .is_none_or(|a| a == advertiser_id)
        && q.tracking_number
            .as_deref()
            .is_none_or(|n| n == tracking_number)
        && q.result.is_none_or(|r| r.as_str() == result)
        && q.validity.is_none_or(|v| v.as_str() == validity)
}

/// One number of a pool as `pool_numbers` has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolNumber {
    pub number: String,
    pub position: i32,
    pub last_issued_at: i64,
    pub expires_at: i64,
}

/// The numbers free at `now` (lease and cool-down over), in the order they are tried:
/// issued longest ago first (never issued = 0), ties in pool order.
pub fn free_in_order(rows: &[PoolNumber], now: i64, recycle_ms: i64) -> Vec<&PoolNumber> {
    let mut free: Vec<&PoolNumber> = rows
        .iter()
        .filter(|r| r.expires_at.saturating_add(recycle_ms) <= now)
        .collect();
    free.sort_by_key(|r| (r.last_issued_at, r.position));
    free
}

/// The bound of the compare-and-set that takes a number: it is free when its lease
/// ended at or before this.
pub fn free_if_expired_by(now: i64, recycle_ms: i64) -> i64 {
    now.saturating_sub(recycle_ms)
}

/// A slot row of `session_leases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSlot {
    pub slot: i32,
    pub claim: Option<String>,
    pub number: Option<String>,
    pub params: Option<String>,
    pub issued_at: i64,
    pub expires_at: i64,
}

impl SessionSlot {
    pub fn live(&self, now: i64) -> bool {
        self.expires_at > now
    }
}

/// The session's live lease to extend (dynamic and callback pools): the one that
/// ends last among those holding a number.
pub fn lease_to_extend(slots: &[SessionSlot], now: i64) -> Option<&SessionSlot> {
    slots
        .iter()
        .filter(|s| s.live(now) && s.number.is_some())
        .max_by_key(|s| (s.expires_at, s.slot))
}

/// When a client holding leases that end at `live` (its live ones) has reached
/// `cap`: the end that brings it under the cap again (its (held - cap + 1)-th to
/// end: more than one must end if it holds more than its cap) or `now` if it holds
/// none; else None.
pub fn client_cap_reached(live: &[i64], cap: u32, now: i64) -> Option<i64> {
    if live.len() < cap as usize {
        return None;
    }
    let mut ends = live.to_vec();
    ends.sort_unstable();
    Some(ends.get(live.len() - cap as usize).copied().unwrap_or(now))
}

/// What a session may do about a new lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotChoice {
    /// Take this slot: absent (insert `IF NOT EXISTS`) or ended (replace `IF claim =`
    /// the claim seen).
    Take {
        slot: i32,
        seen_claim: Option<String>,
    },
    /// The session holds its cap of live leases; the earliest ends at `retry_at_ms`.
    Full { retry_at_ms: i64 },
}

/// The slot a session's next lease goes in: the lowest one not live, among
/// `0..cap` when capped (so a session never holds more than `cap`), else any.
pub fn choose_slot(slots: &[SessionSlot], now: i64, cap: Option<u32>) -> SlotChoice {
    let live: Vec<&SessionSlot> = slots.iter().filter(|s| s.live(now)).collect();
    if let Some(cap) = cap {
        if live.len() >= cap as usize {
            let retry_at_ms = live.iter().map(|s| s.expires_at).min().unwrap_or(now);
            return SlotChoice::Full { retry_at_ms };
        }
    }
    let limit = cap
        .map(|c| c.min(i32::MAX as u32) as i32)
        .unwrap_or(i32::MAX);
    let mut slot = 0;
    while slot < limit {
        match slots.iter().find(|s| s.slot == slot) {
            None => {
                return SlotChoice::Take {
                    slot,
                    seen_claim: None,
                }
            }
            Some(s) if !s.live(now) => {
                return SlotChoice::Take {
                    slot,
                    seen_claim: s.claim.clone(),
                }
            }
            Some(_) => slot += 1,
        }
    }
    // Every slot below the cap is live although fewer than cap are: cannot happen
    // (slots are distinct); answer as full.
    SlotChoice::Full {
        retry_at_ms: live.iter().map(|s| s.expires_at).min().unwrap_or(now),
    }
}

/// Outbox shards: a row's shard is its id modulo this.
pub const OUTBOX_SHARDS: i64 = 16;

pub fn shard_of(id: i64) -> i32 {
    id.rem_euclid(OUTBOX_SHARDS) as i32
}

/// An outbox row as read for claiming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub attempts: i32,
    pub next_at: i64,
    pub dead: bool,
}

/// The rows to try to claim at `now`: due and not dead, oldest first, at most `limit`.
pub fn due_rows(rows: &[OutboxRow], now: i64, limit: usize) -> Vec<&OutboxRow> {
    let mut due: Vec<&OutboxRow> = rows
        .iter()
        .filter(|r| !r.dead && r.next_at <= now)
        .collect();
    due.sort_by_key(|r| (r.next_at, r.id));
    due.truncate(limit);
    due
}

/// The dead rows a claim at `now` prunes: given up (their `next_at`, the last
/// claim's end) more than [`OUTBOX_DEAD_RETENTION_MS`] ago, oldest first, at most
/// `limit` (as the embedded store does).
pub fn prunable_rows(rows: &[OutboxRow], now: i64, limit: usize) -> Vec<&OutboxRow> {
    let before = now.saturating_sub(OUTBOX_DEAD_RETENTION_MS);
    let mut old: Vec<&OutboxRow> = rows
        .iter()
        .filter(|r| r.dead && r.next_at < before)
        .collect();
    old.sort_by_key(|r| (r.next_at, r.id));
    old.truncate(limit);
    old
}

/// Ids handed out per block (see `id_blocks`).
pub const ID_BLOCK: i64 = 65_536;

/// Changes per bucket of the feed, and buckets kept (100,000 changes, as the embedded
/// store keeps).
pub const CHANGE_BUCKET: i64 = 10_000;
pub const CHANGE_BUCKETS_KEPT: i64 = 10;

pub fn change_bucket(seq: i64) -> i64 {
    seq.max(0) / CHANGE_BUCKET
}

/// The last change number a bucket holds.
pub fn bucket_last(bucket: i64) -> i64 {
    bucket
        .saturating_mul(CHANGE_BUCKET)
        .saturating_add(CHANGE_BUCKET - 1)
}

/// Whether changes after `seq` are all still kept, given the newest change and its bucket.
pub fn feed_complete(seq: i64, latest: i64) -> bool {
    if seq >= latest {
        return true;
    }
    let oldest_kept = change_bucket(latest) - (CHANGE_BUCKETS_KEPT - 1);
    change_bucket(seq.saturating_add(1)) >= oldest_kept
}

/// The bucket dropped when `bucket` starts (older than the kept window), if any.
pub fn bucket_to_drop(new_bucket: i64) -> Option<i64> {
    let old = new_bucket - CHANGE_BUCKETS_KEPT;
    (old >= 0).then_some(old)
}

/// The next change number after the newest (`head` in `bucket`; 0 when the feed is
/// empty), its bucket, and whether it starts that bucket (then the compare-and-set is
/// `IF head = null` on the new bucket, else `IF head = <head>`).
pub fn next_change(bucket: i64, head: i64) -> (i64, i64, bool) {
    let next = head.saturating_add(1);
    let next_bucket = change_bucket(next);
    (next, next_bucket, head == 0 || next_bucket != bucket)
}

/// Whether a heartbeat of incarnation `epoch` at `now` is accepted, from the outcome of
/// its compare-and-set (`IF epoch = ? AND down = false AND last_seen < now`) and, when
/// not applied, the row's current values: a later sign of life already recorded still
/// means alive (last_seen never goes back); another epoch, a down mark or no row means
/// the incarnation must stop.
pub fn heartbeat_accepted(
    applied: bool,
    epoch: i64,
    now: i64,
    row_epoch: Option<i64>,
    row_down: Option<bool>,
    row_last_seen: Option<i64>,
) -> bool {
    applied
        || (row_epoch == Some(epoch)
            && row_down == Some(false)
            && row_last_seen.is_some_and(|seen| seen >= now))
}

/// A counted slot to take (a caller SMS of the day, a call's notices of the hour):
/// the call's own (already counted), or the lowest free one below the cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmsSlot {
    AlreadyCounted,
    Take(i32),
    OverCap,
}

pub fn sms_slot(taken: &[(i32, String)], call_id: &str, cap: u32) -> SmsSlot {
    if taken.iter().any(|(_, c)| c == call_id) {
        return SmsSlot::AlreadyCounted;
    }
    let cap = cap.min(i32::MAX as u32) as i32;
    (0..cap)
        .find(|s| !taken.iter().any(|(t, _)| t == s))
        .map(SmsSlot::Take)
        .unwrap_or(SmsSlot::OverCap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::sample_call;
    use crate::model::{CallResult, RecordingPart, Validity};

    #[test]
    fn days_are_utc_and_floor_before_the_epoch() {
        for (ms, day) in [
            (0, 0),
            (DAY_MS - 1, 0),
            (DAY_MS, 1),
            (-1, -1),
            (1_767_225_600_000, 20_454),
            (i64::MIN, i64::MIN.div_euclid(DAY_MS)),
        ] {
            assert_eq!(day_of(ms), day, "{ms}");
        }
    }

    #[test]
    fn a_client_reaches_its_cap_with_as_many_live_leases() {
        // (ends of the client's live leases, cap, now) -> when it may try again
        let cases: [(&[i64], u32, i64, Option<i64>); 6] = [
            (&[], 2, 100, None),
            (&[500], 2, 100, None),
            (&[500, 300], 2, 100, Some(300)),
            // Over its cap (a race, a lowered cap): two must end.
            (&[500, 300, 900], 2, 100, Some(500)),
            (&[500, 300, 900], 1, 100, Some(900)),
            (&[], 0, 100, Some(100)),
        ];
        for (live, cap, now, want) in cases {
            assert_eq!(client_cap_reached(live, cap, now), want, "{live:?} {cap}");
        }
    }

    #[test]
    fn ttls_are_clamped() {
        assert_eq!(ttl_seconds(61_000, 1_000, 10), 70);
        assert_eq!(
            ttl_seconds(0, 1_000, 0),
            1,
            "never zero (zero means forever)"
        );
        assert_eq!(ttl_seconds(i64::MAX, i64::MIN, 5), MAX_TTL_SECONDS as i32);
        assert_eq!(
            ttl_seconds(i64::MIN, i64::MAX, i64::MAX),
            MAX_TTL_SECONDS as i32
        );
    }

    #[test]
    fn call_rows_round_trip_and_are_checked() {
        let mut call = sample_call("op_1", "adv_1", 1_767_225_600_123);
        call.result = CallResult::Busy;
        call.validity = Validity::InvalidShort;
        // A call taken over: the fields of the move are part of the stored record.
        call.nodes = vec!["n1".into(), "n2".into()];
        call.taken_over_at = Some(1_767_225_700_000);
        call.recording_parts = vec![RecordingPart {
            node: "n2".into(),
            path: "d/c.part2.wav".into(),
            offset_ms: 9_000,
        }];
        let row = CallRow::of(&call).unwrap();
        assert_eq!(
            (row.day, row.result.as_str(), row.validity.as_str()),
            (20_454, "busy", "invalid_short")
        );
        let back = record_from(&row.record, Some(&call.call_id), CallState::Ended).unwrap();
        assert_eq!(back, call);
        let mut owned = call.clone();
        owned.owner_epoch = 7;
        let owned_json = record_json(&owned).unwrap();
        let logged = record_from(&owned_json, None, CallState::Ended).unwrap();
        assert_eq!(logged.owner_epoch, 0, "a finished record has no owner");
        let active = record_from(&owned_json, None, CallState::Active).unwrap();
        assert_eq!((active.state, active.owner_epoch), (CallState::Active, 7));
        assert!(matches!(
            record_from(&row.record, Some("call_other"), CallState::Ended),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            record_from("{not json", None, CallState::Ended),
            Err(StoreError::Corrupt(_))
        ));
    }

    fn q(order: SortOrder) -> CallQuery {
        CallQuery {
            operator_id: "op".into(),
            order,
            ..Default::default()
        }
    }

    #[test]
    fn page_bounds_follow_the_range_and_the_cursor() {
        let cases = [
            (q(SortOrder::Asc), (i64::MIN, ""), (i64::MAX, "")),
            (
                CallQuery {
                    from_ms: Some(10),
                    to_ms: Some(20),
                    ..q(SortOrder::Asc)
                },
                (10, ""),
                (20, ""),
            ),
            (
                CallQuery {
                    from_ms: Some(10),
                    after: Some((15, "c".into())),
                    ..q(SortOrder::Asc)
                },
                (15, "c"),
                (i64::MAX, ""),
            ),
            (
                // A cursor before the range does not widen it.
                CallQuery {
                    from_ms: Some(10),
                    after: Some((5, "c".into())),
                    ..q(SortOrder::Asc)
                },
                (10, ""),
                (i64::MAX, ""),
            ),
            (
                CallQuery {
                    to_ms: Some(20),
                    after: Some((15, "c".into())),
                    ..q(SortOrder::Desc)
                },
                (i64::MIN, ""),
                (15, "c"),
            ),
            (
                CallQuery {
                    to_ms: Some(20),
                    after: Some((25, "c".into())),
                    ..q(SortOrder::Desc)
                },
                (i64::MIN, ""),
                (20, ""),
            ),
        ];
        for (query, lo, hi) in cases {
            let ((a, b), (c, d)) = scan_bounds(&query);
            assert_eq!(((a, b.as_str()), (c, d.as_str())), (lo, hi), "{query:?}");
        }
    }

    #[test]
    fn scans_visit_only_the_days_in_range_in_order() {
        let days = [3, 1, 2, 5, 9];
        let at = |d: i64| d * DAY_MS;
        let cases = [
            (q(SortOrder::Asc), vec![1, 2, 3, 5, 9]),
            (q(SortOrder::Desc), vec![9, 5, 3, 2, 1]),
            (
                // to_ms at midnight excludes that day.
                CallQuery {
                    from_ms: Some(at(2)),
                    to_ms: Some(at(5)),
                    ..q(SortOrder::Asc)
                },
                vec![2, 3],
            ),
            (
                CallQuery {
                    from_ms: Some(at(2)),
                    to_ms: Some(at(5) + 1),
                    ..q(SortOrder::Asc)
                },
                vec![2, 3, 5],
            ),
            (
                CallQuery {
                    after: Some((at(3) + 5, "x".into())),
                    ..q(SortOrder::Asc)
                },
                vec![3, 5, 9],
            ),
            (
                CallQuery {
                    after: Some((at(3) + 5, "x".into())),
                    ..q(SortOrder::Desc)
                },
                vec![3, 2, 1],
            ),
            (
                CallQuery {
                    from_ms: Some(at(6)),
                    to_ms: Some(at(6)),
                    ..q(SortOrder::Asc)
                },
                vec![],
            ),
        ];
        for (query, want) in cases {
            assert_eq!(scan_days(&query, &days), want, "{query:?}");
        }
        assert_eq!(
            day_range(&CallQuery {
                from_ms: Some(at(6)),
                to_ms: Some(at(6)),
                ..q(SortOrder::Asc)
            }),
            None
        );
        assert_eq!(
            day_range(&q(SortOrder::Asc)),
            Some((day_of(i64::MIN), day_of(i64::MAX - 1)))
        );
    }

    #[test]
    fn filters_match_like_the_embedded_store() {
        let query = CallQuery {
            advertiser_id: Some("adv".into()),
            result: Some(CallResult::Busy),
            ..q(SortOrder::Asc)
        };
        assert!(matches_filters(&query, "adv", "050", "busy", "valid"));
        assert!(!matches_filters(&query, "adv2", "050", "busy", "valid"));
        assert!(!matches_filters(&query, "adv", "050", "answered", "valid"));
        assert!(matches_filters(&q(SortOrder::Asc), "a", "b", "c", "d"));
    }

    fn pn(number: &str, position: i32, last: i64, expires: i64) -> PoolNumber {
        PoolNumber {
            number: number.into(),
            position,
            last_issued_at: last,
            expires_at: expires,
        }
    }

    #[test]
    fn the_free_number_issued_longest_ago_is_tried_first() {
        let rows = [
            pn("c", 2, 0, 0),
            pn("a", 0, 500, 1_000),
            pn("b", 1, 0, 0),
            pn("d", 3, 100, 5_000),
        ];
        let order = |now, recycle| {
            free_in_order(&rows, now, recycle)
                .iter()
                .map(|r| r.number.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(order(1_000, 0), vec!["b", "c", "a"]);
        assert_eq!(order(1_000, 1), vec!["b", "c"], "a cools down");
        assert_eq!(order(10_000, 0), vec!["b", "c", "d", "a"]);
        assert_eq!(free_if_expired_by(1_000, 10), 990);
        assert_eq!(free_if_expired_by(i64::MIN, 10), i64::MIN);
        let huge = [pn("x", 0, 0, i64::MAX)];
        assert!(free_in_order(&huge, i64::MAX - 1, i64::MAX).is_empty());
    }

    fn slot(slot: i32, expires_at: i64, number: Option<&str>) -> SessionSlot {
        SessionSlot {
            slot,
            claim: Some(format!("c{slot}")),
            number: number.map(str::to_string),
            params: None,
            issued_at: 0,
            expires_at,
        }
    }

    #[test]
    fn sessions_take_the_lowest_slot_below_their_cap() {
        let now = 100;
        let take = |slot: i32, seen: Option<&str>| SlotChoice::Take {
            slot,
            seen_claim: seen.map(str::to_string),
        };
        let cases: Vec<(Vec<SessionSlot>, Option<u32>, SlotChoice)> = vec![
            (vec![], Some(2), take(0, None)),
            (vec![slot(0, 200, Some("n"))], Some(2), take(1, None)),
            (
                vec![slot(0, 200, Some("n")), slot(1, 150, Some("m"))],
                Some(2),
                SlotChoice::Full { retry_at_ms: 150 },
            ),
            (
                vec![slot(0, 100, Some("n")), slot(1, 150, Some("m"))],
                Some(2),
                take(0, Some("c0")),
            ),
            (
                vec![slot(0, 200, Some("n"))],
                Some(0),
                SlotChoice::Full { retry_at_ms: 200 },
            ),
            (vec![], Some(0), SlotChoice::Full { retry_at_ms: now }),
            (
                vec![slot(0, 200, None), slot(1, 200, None), slot(2, 200, None)],
                None,
                take(3, None),
            ),
            (vec![slot(1, 200, None)], Some(2), take(0, None)),
        ];
        for (slots, cap, want) in cases {
            assert_eq!(choose_slot(&slots, now, cap), want, "{slots:?} cap {cap:?}");
        }
    }

    #[test]
    fn the_live_lease_that_ends_last_is_extended() {
        let slots = [
            slot(0, 300, Some("a")),
            slot(1, 500, Some("b")),
            slot(2, 900, None),
            slot(3, 50, Some("c")),
        ];
        assert_eq!(
            lease_to_extend(&slots, 100).unwrap().number.as_deref(),
            Some("b")
        );
        assert!(lease_to_extend(&slots, 1_000).is_none());
    }

    #[test]
    fn due_outbox_rows_oldest_first_within_the_limit() {
        let row = |id, next_at, dead| OutboxRow {
            id,
            attempts: 0,
            next_at,
            dead,
        };
        let rows = [
            row(5, 10, false),
            row(3, 10, false),
            row(1, 50, false),
            row(2, 5, true),
            row(4, 1, false),
        ];
        let ids = |now, limit| {
            due_rows(&rows, now, limit)
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(20, 10), vec![4, 3, 5]);
        assert_eq!(ids(20, 2), vec![4, 3]);
        assert_eq!(ids(100, 10), vec![4, 3, 5, 1]);
        assert!(ids(0, 10).is_empty());
        assert_eq!((shard_of(17), shard_of(-1)), (1, 15));
    }

    #[test]
    fn dead_outbox_rows_are_pruned_after_their_retention_oldest_first() {
        let day = 86_400_000;
        let row = |id, next_at, dead| OutboxRow {
            id,
            attempts: 0,
            next_at,
            dead,
        };
        let now = 100 * day;
        let rows = [
            row(1, now - 31 * day, true),
            row(2, now - 29 * day, true),
            row(3, now - 40 * day, false), // overdue, not dead: delivered, never pruned
            row(4, now - 45 * day, true),
            row(5, now - 30 * day, true), // exactly thirty days: kept
        ];
        let ids = |limit| {
            prunable_rows(&rows, now, limit)
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(10), vec![4, 1]);
        assert_eq!(ids(1), vec![4]);
        assert!(prunable_rows(&rows, i64::MIN, 10).is_empty());
    }

    #[test]
    fn change_buckets_and_completeness() {
        assert_eq!(
            (
                change_bucket(1),
                change_bucket(9_999),
                change_bucket(10_000)
            ),
            (0, 0, 1)
        );
        assert_eq!(bucket_last(0), 9_999);
        assert_eq!(change_bucket(i64::MAX), i64::MAX / CHANGE_BUCKET);
        assert!(feed_complete(0, 0));
        assert!(feed_complete(0, 99_999), "bucket 0 is still kept");
        assert!(
            !feed_complete(0, 100_000),
            "bucket 0 was dropped when bucket 10 began"
        );
        assert!(feed_complete(9_999, 100_000));
        assert!(feed_complete(i64::MAX, 5));
        assert_eq!(bucket_to_drop(9), None);
        assert_eq!(bucket_to_drop(10), Some(0));
    }

    #[test]
    fn next_change_numbers_and_buckets() {
        assert_eq!(
            next_change(0, 0),
            (1, 0, true),
            "empty feed: bucket 0 starts"
        );
        assert_eq!(next_change(0, 1), (2, 0, false));
        assert_eq!(next_change(0, 9_998), (9_999, 0, false));
        assert_eq!(next_change(0, 9_999), (10_000, 1, true), "bucket 1 starts");
        assert_eq!(next_change(1, 10_000), (10_001, 1, false));
    }

    #[test]
    fn heartbeats() {
        let now = 2_000;
        let cases = [
            (true, None, None, None, true),
            // Not applied because a later heartbeat is recorded: alive.
            (false, Some(1), Some(false), Some(2_000), true),
            (false, Some(1), Some(false), Some(5_000), true),
            (false, Some(2), Some(false), Some(5_000), false),
            (false, Some(1), Some(true), Some(5_000), false),
            (false, None, None, None, false),
            (false, Some(1), Some(false), Some(1_999), false),
        ];
        for (applied, epoch, down, seen, want) in cases {
            assert_eq!(
                heartbeat_accepted(applied, 1, now, epoch, down, seen),
                want,
                "{applied} {epoch:?} {down:?} {seen:?}"
            );
        }
    }

    #[test]
    fn caller_sms_slots() {
        let taken = vec![(0, "a".to_string()), (1, "b".to_string())];
        assert_eq!(sms_slot(&taken, "a", 2), SmsSlot::AlreadyCounted);
        assert_eq!(sms_slot(&taken, "c", 2), SmsSlot::OverCap);
        assert_eq!(sms_slot(&taken, "c", 3), SmsSlot::Take(2));
        assert_eq!(sms_slot(&[(1, "b".into())], "c", 3), SmsSlot::Take(0));
        assert_eq!(sms_slot(&[], "c", 0), SmsSlot::OverCap);
    }
}
