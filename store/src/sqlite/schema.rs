//! The embedded store's schema: its migrations, applied in order at start, each once
//! even when several processes open a new file at the same time.

use super::unavailable;
use crate::{Result, StoreError};
use rusqlite::Connection;

/// Schema versions, applied in order at start (PRAGMA user_version counts them).
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE operators (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE api_keys (
    key_hash TEXT PRIMARY KEY,
    operator_id TEXT NOT NULL REFERENCES operators(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);
CREATE TABLE advertisers (
    id TEXT PRIMARY KEY,
    operator_id TEXT NOT NULL REFERENCES operators(id),
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX advertisers_by_operator ON advertisers(operator_id);
CREATE TABLE numbers (
    number TEXT PRIMARY KEY,
    operator_id TEXT NOT NULL,
    advertiser_id TEXT NOT NULL REFERENCES advertisers(id),
    settings TEXT NOT NULL
);
CREATE INDEX numbers_by_operator ON numbers(operator_id, advertiser_id);
CREATE TABLE calls (
    call_id TEXT PRIMARY KEY,
    operator_id TEXT NOT NULL,
    advertiser_id TEXT NOT NULL,
    tracking_number TEXT NOT NULL,
    caller_number TEXT NOT NULL,
    caller_kind TEXT NOT NULL,
    destination_number TEXT,
    started_at INTEGER NOT NULL,
    answered_at INTEGER,
    ended_at INTEGER NOT NULL,
    ring_seconds INTEGER NOT NULL,
    talk_seconds INTEGER NOT NULL,
    result TEXT NOT NULL,
    validity TEXT NOT NULL,
    ivr_digits TEXT,
    judgement_digit TEXT,
    recording TEXT,
    tracking_params TEXT NOT NULL,
    node TEXT NOT NULL,
    sip_code INTEGER NOT NULL,
    trunk TEXT,
    rtp_packets_in INTEGER NOT NULL,
    rtp_packets_out INTEGER NOT NULL,
    rtp_lost INTEGER NOT NULL
);
CREATE INDEX calls_by_operator_time ON calls(operator_id, started_at, call_id);
CREATE INDEX calls_by_advertiser_caller ON calls(advertiser_id, caller_number, started_at);
"#,
    r#"
CREATE TABLE pools (
    id TEXT PRIMARY KEY,
    operator_id TEXT NOT NULL,
    settings TEXT NOT NULL
);
CREATE INDEX pools_by_operator ON pools(operator_id);
CREATE TABLE leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pool_id TEXT NOT NULL,
    number TEXT NOT NULL,
    session TEXT,
    params TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX leases_by_number ON leases(number, issued_at);
CREATE INDEX leases_by_pool_session ON leases(pool_id, session, expires_at);
-- The current state of every pool number, so picking a free one reads a few rows of an
-- index instead of the whole lease history.
CREATE TABLE pool_numbers (
    number TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    last_issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX pool_numbers_by_age ON pool_numbers(pool_id, last_issued_at, position);
"#,
    r#"
ALTER TABLE calls ADD COLUMN callback_of TEXT;
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    operator_id TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX webhooks_by_operator ON webhooks(operator_id);
-- Follow-ups (webhooks, GA4, e-mail, SMS) waiting for delivery. Delivered rows are
-- deleted; rows that exhausted their attempts stay with dead = 1.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    operator_id TEXT NOT NULL,
    target TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    last_error TEXT,
    dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_due ON outbox(dead, next_at, id);
"#,
    r#"
ALTER TABLE calls ADD COLUMN recording_status TEXT;
"#,
    r#"
ALTER TABLE advertisers ADD COLUMN lines TEXT;
ALTER TABLE calls ADD COLUMN attempts TEXT;
"#,
    r#"
-- SMS sent to callers, per number and day, for notify.caller_sms_per_day.
CREATE TABLE caller_sms (
    call_id TEXT PRIMARY KEY,
    caller TEXT NOT NULL,
    day INTEGER NOT NULL
);
CREATE INDEX caller_sms_by_caller ON caller_sms(caller, day);
CREATE INDEX caller_sms_by_day ON caller_sms(day);
"#,
    // API keys get an id (to list and revoke them by) and the prefix they are shown
    // by; keys made before have no prefix (only their hash was ever stored).
    r#"
ALTER TABLE api_keys ADD COLUMN id TEXT;
ALTER TABLE api_keys ADD COLUMN prefix TEXT;
UPDATE api_keys SET id = 'key_' || lower(hex(randomblob(8)));
CREATE UNIQUE INDEX api_keys_by_id ON api_keys(id);
CREATE INDEX api_keys_by_operator ON api_keys(operator_id, created_at);
"#,
    r#"
ALTER TABLE calls ADD COLUMN end_reason TEXT;
-- Calls in progress, durable from admission: the whole record as JSON (state active),
-- replaced at answer, deleted in the transaction that writes the call's final row. A
-- node that dies leaves its rows here for whoever finalises them (SPEC 6).
CREATE TABLE active_calls (
    call_id TEXT PRIMARY KEY,
    operator_id TEXT NOT NULL,
    node TEXT NOT NULL,
    -- The owning incarnation of `node`: the fencing token of every write.
    epoch INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    record TEXT NOT NULL,
    checkpoint TEXT
);
ALTER TABLE calls ADD COLUMN nodes TEXT;
ALTER TABLE calls ADD COLUMN taken_over_at INTEGER;
ALTER TABLE calls ADD COLUMN recording_parts TEXT;
CREATE INDEX active_calls_by_node ON active_calls(node);
-- Every node that ever ran on this store: its incarnation (epoch, +1 at each start),
-- its last sign of life (the call-log writer's heartbeat), where its peers and the API
-- reach it, and whether the cluster declared this incarnation down.
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    cluster_addr TEXT,
    api_addr TEXT,
    down INTEGER NOT NULL DEFAULT 0
);
-- Provisioning changes (numbers, advertisers, webhooks, prompts), in order: every node
-- follows this feed to keep its in-memory copies current (SPEC 6).
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    at INTEGER NOT NULL
);
-- Operators' own prompts, so that one uploaded through any node plays on every node.
CREATE TABLE prompts (
    operator_id TEXT NOT NULL,
    name TEXT NOT NULL,
    wav BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (operator_id, name)
);
"#,
    r#"
-- The duplicate check counts calls in progress too (a caller's earlier call may still
-- ring when a later one ends). Rows written before this migration have no caller: they
-- are gone within a call's length.
ALTER TABLE active_calls ADD COLUMN advertiser_id TEXT;
ALTER TABLE active_calls ADD COLUMN caller_number TEXT;
CREATE INDEX active_calls_by_caller ON active_calls(advertiser_id, caller_number, started_at);
"#,
    r#"
-- The client (address key) a page lease was issued to, so its live leases of a pool
-- can be capped (api.issue.max_leases_per_address). Older leases have none.
ALTER TABLE leases ADD COLUMN client TEXT;
CREATE INDEX leases_by_pool_client ON leases(pool_id, client, expires_at);
"#,
    r#"
-- The lease history is pruned by end time (rows whose lease ended over a day ago),
-- a few rows per issue: found through this index, never by a scan.
CREATE INDEX leases_by_expiry ON leases(expires_at);
"#,
    r#"
-- A node an operator took out of the cluster for good (tsunagu cluster forget): its
-- incarnation is retired, and no member lists it any more. Starting it again replaces
-- the row (a new incarnation, not retired).
ALTER TABLE nodes ADD COLUMN retired INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- An operator's calls in progress (GET /v1/calls?state=active) are found through this
-- index, not by reading every call in progress of every operator.
CREATE INDEX active_calls_by_operator ON active_calls(operator_id, started_at);
"#,
    r#"
-- Calls whose notices went, per tracking number and clock hour, for
-- notify.notices_per_number_per_hour counted across the cluster (it was counted by
-- each node's writer: N nodes sent N times it). Kept for the hour and the one before.
CREATE TABLE notices (
    call_id TEXT PRIMARY KEY,
    number TEXT NOT NULL,
    hour INTEGER NOT NULL
);
CREATE INDEX notices_by_number ON notices(number, hour);
CREATE INDEX notices_by_hour ON notices(hour);
"#,
    r#"
-- The highest RTP interarrival jitter of a call's audio (microseconds; null where not
-- measured, and for calls logged before).
ALTER TABLE calls ADD COLUMN rtp_jitter_us INTEGER;
"#,
    r#"
-- An advertiser's key: limited to that advertiser's calls, recordings and call
-- stream (null: an operator's key, which sees the whole operator).
ALTER TABLE api_keys ADD COLUMN advertiser_id TEXT;
CREATE INDEX api_keys_by_advertiser ON api_keys(operator_id, advertiser_id);
"#,
];

/// Applies pending migrations. Each runs in an IMMEDIATE transaction that reads the
/// schema version under the write lock: nodes sharing one file that start at the same
/// time apply each migration once (the others wait on the busy timeout, then find it
/// applied) instead of failing on a column or table the first one already added.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    loop {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let version: usize = tx
            .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
            .map_err(unavailable)? as usize;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "database schema version {version} is newer than this build knows ({})",
                MIGRATIONS.len()
            )));
        }
        let Some(sql) = MIGRATIONS.get(version) else {
            return Ok(()); // up to date (the transaction rolls back: nothing written)
        };
        tx.execute_batch(sql).map_err(unavailable)?;
        tx.pragma_update(None, "user_version", (version + 1) as i64)
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        tracing::info!(version = version + 1, "store schema migrated");
    }
}
