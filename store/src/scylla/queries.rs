//! Every CQL statement the backend prepares, with the kind that sets its consistency
//! ([`Kind`]). The partition key each one reads or writes is in its WHERE clause; the
//! overview is at the top of `mod.rs`. Kept as plain text so tests can check them
//! without a server: no ALLOW FILTERING, every compare-and-set has an IF.

/// How a statement is executed: its consistency level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A read of one partition: LOCAL_QUORUM (or QUORUM, `store.consistency`).
    Read,
    /// A read that walks a whole table page by page (start-up loads, admin listings):
    /// LOCAL_QUORUM, paged.
    Scan,
    /// A write: LOCAL_QUORUM.
    Write,
    /// A compare-and-set (lightweight transaction, `IF ...`): Paxos at LOCAL_SERIAL (or
    /// SERIAL), committed at LOCAL_QUORUM.
    CompareAndSet,
}

// Operators (partition: id).
pub const OP_INSERT: &str = "INSERT INTO operators (id, name, created_at) VALUES (?, ?, ?)";
pub const OP_GET: &str = "SELECT id, name, created_at FROM operators WHERE id = ?";
pub const OP_ALL: &str = "SELECT id, name, created_at FROM operators";
pub const OP_RENAME: &str = "UPDATE operators SET name = ? WHERE id = ? IF EXISTS";
pub const OP_DELETE: &str = "DELETE FROM operators WHERE id = ? IF EXISTS";

// API keys (partition: key_hash; by operator: operator_id).
pub const KEY_INSERT: &str = "INSERT INTO api_keys (key_hash, id, operator_id, prefix, created_at, advertiser_id) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS";
pub const KEY_INDEX_INSERT: &str = "INSERT INTO api_keys_by_operator (operator_id, id, key_hash, prefix, created_at, advertiser_id) VALUES (?, ?, ?, ?, ?, ?)";
pub const KEY_OPERATOR: &str = "SELECT operator_id, advertiser_id FROM api_keys WHERE key_hash = ?";
pub const KEYS_OF: &str =
    "SELECT id, key_hash, prefix, created_at, advertiser_id FROM api_keys_by_operator WHERE operator_id = ?";
pub const KEY_DELETE: &str = "DELETE FROM api_keys WHERE key_hash = ?";
pub const KEY_INDEX_DELETE: &str =
    "DELETE FROM api_keys_by_operator WHERE operator_id = ? AND id = ?";

// Advertisers (partition: operator_id).
pub const ADV_INSERT: &str =
    "INSERT INTO advertisers (operator_id, id, name, created_at, lines) VALUES (?, ?, ?, ?, ?)";
pub const ADV_GET: &str = "SELECT operator_id, id, name, created_at, lines FROM advertisers WHERE operator_id = ? AND id = ?";
pub const ADV_OF: &str =
    "SELECT operator_id, id, name, created_at, lines FROM advertisers WHERE operator_id = ?";
pub const ADV_ALL: &str = "SELECT operator_id, id, name, created_at, lines FROM advertisers";
pub const ADV_ANY: &str = "SELECT id FROM advertisers WHERE operator_id = ? LIMIT 1";
pub const ADV_UPDATE: &str =
    "UPDATE advertisers SET name = ?, lines = ? WHERE operator_id = ? AND id = ? IF name = ? AND lines = ?";
pub const ADV_DELETE: &str = "DELETE FROM advertisers WHERE operator_id = ? AND id = ? IF EXISTS";

// Numbers (partition: number; by operator: operator_id).
pub const NUM_INSERT: &str = "INSERT INTO numbers (number, operator_id, advertiser_id, settings) VALUES (?, ?, ?, ?) IF NOT EXISTS";
pub const NUM_GET: &str =
    "SELECT operator_id, advertiser_id, settings FROM numbers WHERE number = ?";
pub const NUM_ALL: &str = "SELECT number, settings FROM numbers";
pub const NUM_UPDATE: &str = "UPDATE numbers SET advertiser_id = ?, settings = ? WHERE number = ? IF operator_id = ? AND advertiser_id = ? AND settings = ?";
pub const NUM_DELETE: &str =
    "DELETE FROM numbers WHERE number = ? IF operator_id = ? AND advertiser_id = ?";
pub const NUM_UNDO: &str = "DELETE FROM numbers WHERE number = ? IF settings = ?";
pub const NUM_INDEX_PUT: &str = "INSERT INTO numbers_by_operator (operator_id, advertiser_id, number, settings) VALUES (?, ?, ?, ?)";
pub const NUM_INDEX_DELETE: &str =
    "DELETE FROM numbers_by_operator WHERE operator_id = ? AND advertiser_id = ? AND number = ?";
pub const NUM_OF_OPERATOR: &str = "SELECT settings FROM numbers_by_operator WHERE operator_id = ?";
pub const NUM_IDS_OF_OPERATOR: &str =
    "SELECT number FROM numbers_by_operator WHERE operator_id = ?";
pub const NUM_OF_ADVERTISER: &str =
    "SELECT settings FROM numbers_by_operator WHERE operator_id = ? AND advertiser_id = ?";
pub const NUM_ANY_OF_ADVERTISER: &str =
    "SELECT number FROM numbers_by_operator WHERE operator_id = ? AND advertiser_id = ? LIMIT 1";

// Pools (partition: id; by operator: operator_id).
pub const POOL_INSERT: &str = "INSERT INTO pools (id, operator_id, settings) VALUES (?, ?, ?)";
pub const POOL_INDEX_PUT: &str =
    "INSERT INTO pools_by_operator (operator_id, id, settings) VALUES (?, ?, ?)";
pub const POOL_GET: &str = "SELECT operator_id, settings FROM pools WHERE id = ?";
pub const POOLS_OF: &str = "SELECT settings FROM pools_by_operator WHERE operator_id = ?";
pub const POOL_UPDATE: &str =
    "UPDATE pools SET settings = ? WHERE id = ? IF operator_id = ? AND settings = ?";

// Leases. number_leases (partition: number) is the authority; pool_numbers (partition:
// pool_id) is what issuers read to pick; session_leases (partition: pool_id, session)
// holds a session's slots; lease_history (partition: number) answers `lease_at`.
pub const NL_INSERT: &str = "INSERT INTO number_leases (number, pool_id, position, last_issued_at, issued_at, expires_at) VALUES (?, ?, ?, 0, 0, 0)";
pub const NL_GET: &str = "SELECT last_issued_at, expires_at FROM number_leases WHERE number = ?";
pub const NL_TAKE: &str = "UPDATE number_leases SET last_issued_at = ?, issued_at = ?, expires_at = ?, session = ?, params = ? WHERE number = ? IF pool_id = ? AND expires_at <= ?";
pub const NL_EXTEND: &str =
    "UPDATE number_leases SET expires_at = ? WHERE number = ? IF session = ? AND issued_at = ?";
pub const PN_INSERT: &str = "INSERT INTO pool_numbers (pool_id, number, position, last_issued_at, expires_at) VALUES (?, ?, ?, 0, 0)";
pub const PN_OF: &str =
    "SELECT number, position, last_issued_at, expires_at FROM pool_numbers WHERE pool_id = ?";
pub const PN_SET: &str =
    "UPDATE pool_numbers SET last_issued_at = ?, expires_at = ? WHERE pool_id = ? AND number = ?";
pub const SL_OF: &str = "SELECT slot, claim, number, params, issued_at, expires_at FROM session_leases WHERE pool_id = ? AND session = ?";
pub const SL_NEW: &str = "INSERT INTO session_leases (pool_id, session, slot, claim, issued_at, expires_at) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?";
pub const SL_REUSE: &str = "UPDATE session_leases USING TTL ? SET claim = ?, number = null, params = null, issued_at = ?, expires_at = ? WHERE pool_id = ? AND session = ? AND slot = ? IF claim = ?";
pub const SL_FILL: &str = "UPDATE session_leases USING TTL ? SET number = ?, params = ?, issued_at = ?, expires_at = ? WHERE pool_id = ? AND session = ? AND slot = ? IF claim = ?";
pub const SL_EXTEND: &str = "UPDATE session_leases USING TTL ? SET expires_at = ? WHERE pool_id = ? AND session = ? AND slot = ? IF claim = ?";
pub const SL_RELEASE: &str = "UPDATE session_leases SET expires_at = 0 WHERE pool_id = ? AND session = ? AND slot = ? IF claim = ?";
pub const CL_OF: &str = "SELECT expires_at FROM client_leases WHERE pool_id = ? AND client = ?";
pub const CL_PUT: &str = "INSERT INTO client_leases (pool_id, client, number, expires_at) VALUES (?, ?, ?, ?) USING TTL ?";
pub const LH_PUT: &str = "INSERT INTO lease_history (number, issued_at, expires_at, pool_id, session, params) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?";
pub const LH_AT: &str = "SELECT pool_id, number, session, params, issued_at, expires_at FROM lease_history WHERE number = ? AND issued_at <= ? LIMIT 1";

// Calls. calls (partition: call_id); calls_by_day (partition: operator_id, day);
// call_days (partition: operator_id); calls_by_caller (partition: advertiser_id,
// caller_number).
pub const CALL_CLAIM: &str = "INSERT INTO calls (call_id, operator_id, started_at, record, follow_up_ids, complete) VALUES (?, ?, ?, ?, ?, false) IF NOT EXISTS";
pub const CALL_COMPLETE: &str = "UPDATE calls SET complete = true WHERE call_id = ?";
pub const CALL_GET: &str = "SELECT operator_id, record FROM calls WHERE call_id = ?";
pub const CALL_STATE: &str = "SELECT follow_up_ids, complete FROM calls WHERE call_id = ?";
pub const CALL_BY_DAY_PUT: &str = "INSERT INTO calls_by_day (operator_id, day, started_at, call_id, advertiser_id, tracking_number, result, validity, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";
pub const CALL_DAY_PUT: &str = "INSERT INTO call_days (operator_id, day) VALUES (?, ?)";
pub const CALL_BY_CALLER_PUT: &str = "INSERT INTO calls_by_caller (advertiser_id, caller_number, started_at, call_id) VALUES (?, ?, ?, ?) USING TTL ?";
pub const CALL_DAYS: &str =
    "SELECT day FROM call_days WHERE operator_id = ? AND day >= ? AND day <= ?";
pub const CALLS_ASC: &str = "SELECT call_id, advertiser_id, tracking_number, result, validity, record FROM calls_by_day WHERE operator_id = ? AND day = ? AND (started_at, call_id) > (?, ?) AND (started_at, call_id) < (?, ?) ORDER BY started_at ASC, call_id ASC";
pub const CALLS_DESC: &str = "SELECT call_id, advertiser_id, tracking_number, result, validity, record FROM calls_by_day WHERE operator_id = ? AND day = ? AND (started_at, call_id) > (?, ?) AND (started_at, call_id) < (?, ?) ORDER BY started_at DESC, call_id DESC";
pub const EARLIER_CALL: &str = "SELECT started_at FROM calls_by_caller WHERE advertiser_id = ? AND caller_number = ? AND (started_at, call_id) >= (?, ?) AND (started_at, call_id) < (?, ?) LIMIT 1";

// Calls in progress. active_calls (partition: call_id) is the authority: its owner
// (node, epoch) is the fencing token of every write (see ownership.rs); by node
// (partition: node) and by operator (partition: operator_id) are indexes.
pub const ACT_LOCATE: &str =
    "SELECT node, operator_id, started_at FROM active_calls WHERE call_id = ?";
pub const ACT_OWNER: &str = "SELECT node, epoch, ending FROM active_calls WHERE call_id = ?";
pub const ACT_GET: &str = "SELECT node, epoch, ending, started_at, record, checkpoint FROM active_calls WHERE call_id = ?";
pub const ACT_NEW: &str = "INSERT INTO active_calls (call_id, operator_id, node, epoch, started_at, record, checkpoint) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS";
pub const ACT_UPDATE: &str = "UPDATE active_calls SET record = ? WHERE call_id = ? IF node = ? AND epoch = ? AND ending = null";
pub const ACT_UPDATE_CHECKPOINT: &str = "UPDATE active_calls SET record = ?, checkpoint = ? WHERE call_id = ? IF node = ? AND epoch = ? AND ending = null";
pub const ACT_CLAIM: &str = "UPDATE active_calls SET node = ?, epoch = ? WHERE call_id = ? IF node = ? AND epoch = ? AND ending = null";
pub const ACT_ENDING: &str =
    "UPDATE active_calls SET ending = true WHERE call_id = ? IF node = ? AND epoch = ?";
pub const ACT_NODE_PUT: &str =
    "INSERT INTO active_calls_by_node (node, started_at, call_id) VALUES (?, ?, ?)";
pub const ACT_OP_PUT: &str = "INSERT INTO active_calls_by_operator (operator_id, started_at, call_id, record) VALUES (?, ?, ?, ?)";
pub const ACT_DELETE: &str = "DELETE FROM active_calls WHERE call_id = ?";
pub const ACT_NODE_DELETE: &str =
    "DELETE FROM active_calls_by_node WHERE node = ? AND started_at = ? AND call_id = ?";
pub const ACT_OP_DELETE: &str =
    "DELETE FROM active_calls_by_operator WHERE operator_id = ? AND started_at = ? AND call_id = ?";
pub const ACT_OF_NODE: &str = "SELECT call_id FROM active_calls_by_node WHERE node = ?";
pub const ACT_OF_OPERATOR: &str =
    "SELECT record FROM active_calls_by_operator WHERE operator_id = ?";

// Nodes (partition: node_id).
pub const NODE_GET: &str = "SELECT epoch, last_seen FROM nodes WHERE node_id = ?";
pub const NODE_STANDING: &str = "SELECT epoch, down FROM nodes WHERE node_id = ?";
pub const NODE_FIRST: &str = "INSERT INTO nodes (node_id, epoch, started_at, last_seen, cluster_addr, api_addr, down) VALUES (?, 1, ?, ?, ?, ?, false) IF NOT EXISTS";
pub const NODE_NEXT: &str = "UPDATE nodes SET epoch = ?, started_at = ?, last_seen = ?, cluster_addr = ?, api_addr = ?, down = false, retired = false WHERE node_id = ? IF epoch = ?";
pub const NODE_ALIVE: &str = "UPDATE nodes SET last_seen = ? WHERE node_id = ? IF epoch = ? AND down = false AND last_seen < ?";
/// The sign of life one past the last, when the writer's clock went back (NODE_ALIVE
/// not applied): it still moves, which is what readers judge.
pub const NODE_ALIVE_NEXT: &str = "UPDATE nodes SET last_seen = ? WHERE node_id = ? IF epoch = ? AND down = false AND last_seen = ?";
pub const NODE_DOWN: &str =
    "UPDATE nodes SET down = true WHERE node_id = ? IF epoch = ? AND down = false";
pub const NODE_RETIRE: &str =
    "UPDATE nodes SET retired = true, down = true WHERE node_id = ? IF epoch = ?";
pub const NODES_ALL: &str =
    "SELECT node_id, epoch, started_at, last_seen, cluster_addr, api_addr, down, retired FROM nodes";

// The change feed (partition: bucket).
pub const CH_HEAD: &str = "SELECT head FROM changes WHERE bucket = ? LIMIT 1";
pub const CH_ADD_FIRST: &str = "UPDATE changes SET head = ?, kind = ?, item_key = ?, at = ? WHERE bucket = ? AND seq = ? IF head = null";
pub const CH_ADD: &str =
    "UPDATE changes SET head = ?, kind = ?, item_key = ?, at = ? WHERE bucket = ? AND seq = ? IF head = ?";
pub const CH_SINCE: &str =
    "SELECT seq, kind, item_key FROM changes WHERE bucket = ? AND seq > ? LIMIT ?";
pub const CH_DROP: &str = "DELETE FROM changes WHERE bucket = ?";
pub const CH_META_GET: &str = "SELECT latest_bucket FROM changes_meta WHERE id = 0";
pub const CH_META_SET: &str = "UPDATE changes_meta SET latest_bucket = ? WHERE id = 0";

// Prompts (partition: operator_id).
// An upload reads the operator's partition (its prompts and the static `quota`
// counter), checks the cap, and writes the prompt while moving the counter: a
// compare-and-set on the partition (store/cql/004_prompt_quota.cql).
pub const PROMPT_OF_OPERATOR: &str = "SELECT name, wav, quota FROM prompts WHERE operator_id = ?";
pub const PROMPT_PUT_FIRST: &str = "UPDATE prompts SET quota = ?, wav = ?, updated_at = ? WHERE operator_id = ? AND name = ? IF quota = null";
pub const PROMPT_PUT: &str = "UPDATE prompts SET quota = ?, wav = ?, updated_at = ? WHERE operator_id = ? AND name = ? IF quota = ?";
pub const PROMPT_GET: &str = "SELECT wav FROM prompts WHERE operator_id = ? AND name = ?";
pub const PROMPT_DELETE: &str = "DELETE FROM prompts WHERE operator_id = ? AND name = ?";
pub const PROMPT_ALL: &str = "SELECT operator_id, name, wav FROM prompts";

// Webhooks (partition: id; by operator: operator_id).
pub const WH_INSERT: &str = "INSERT INTO webhooks (id, operator_id, url, secret, events, created_at) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS";
pub const WH_INDEX_PUT: &str = "INSERT INTO webhooks_by_operator (operator_id, id) VALUES (?, ?)";
pub const WH_GET: &str =
    "SELECT id, operator_id, url, secret, events, created_at FROM webhooks WHERE id = ?";
pub const WH_OF: &str = "SELECT id FROM webhooks_by_operator WHERE operator_id = ?";
pub const WH_ALL: &str = "SELECT id, operator_id, url, secret, events, created_at FROM webhooks";
pub const WH_DELETE: &str = "DELETE FROM webhooks WHERE id = ? IF operator_id = ?";
pub const WH_INDEX_DELETE: &str =
    "DELETE FROM webhooks_by_operator WHERE operator_id = ? AND id = ?";

// The outbox (partition: shard) and id blocks (partition: name).
pub const OB_INSERT: &str = "INSERT INTO outbox (shard, id, kind, operator_id, target, payload, attempts, next_at, created_at, dead) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, false)";
pub const OB_SHARD: &str = "SELECT id, kind, operator_id, target, payload, attempts, next_at, created_at, dead FROM outbox WHERE shard = ?";
pub const OB_CLAIM: &str = "UPDATE outbox SET next_at = ?, attempts = ? WHERE shard = ? AND id = ? IF next_at = ? AND attempts = ? AND dead = false";
pub const OB_DELETE: &str = "DELETE FROM outbox WHERE shard = ? AND id = ?";
// Outcomes and hand-backs hold while the row shows the writer's claim (store::OutboxClaim);
// a hand-back is OB_CLAIM's compare-and-set, back one attempt.
pub const OB_RETRY: &str = "UPDATE outbox SET next_at = ?, last_error = ? WHERE shard = ? AND id = ? IF next_at = ? AND attempts = ? AND dead = false";
pub const OB_DEAD: &str = "UPDATE outbox SET dead = true, last_error = ? WHERE shard = ? AND id = ? IF next_at = ? AND attempts = ? AND dead = false";
pub const OB_COUNT: &str = "SELECT dead FROM outbox WHERE shard = ?";
pub const ID_GET: &str = "SELECT next FROM id_blocks WHERE name = ?";
pub const ID_FIRST: &str = "INSERT INTO id_blocks (name, next) VALUES (?, ?) IF NOT EXISTS";
pub const ID_NEXT: &str = "UPDATE id_blocks SET next = ? WHERE name = ? IF next = ?";

// SMS to callers (partition: caller, day).
pub const SMS_OF: &str = "SELECT slot, call_id FROM caller_sms WHERE caller = ? AND day = ?";
pub const SMS_TAKE: &str = "INSERT INTO caller_sms (caller, day, slot, call_id) VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL ?";

pub const NOTICES_OF: &str = "SELECT slot, call_id FROM notices WHERE number = ? AND hour = ?";
pub const NOTICE_TAKE: &str = "INSERT INTO notices (number, hour, slot, call_id) VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL ?";

pub const PING: &str = "SELECT release_version FROM system.local";

/// Every statement and how it runs; all are prepared when the store opens.
pub const ALL: &[(&str, Kind)] = &[
    (OP_INSERT, Kind::Write),
    (OP_GET, Kind::Read),
    (OP_ALL, Kind::Scan),
    (OP_RENAME, Kind::CompareAndSet),
    (OP_DELETE, Kind::CompareAndSet),
    (KEY_INSERT, Kind::CompareAndSet),
    (KEY_INDEX_INSERT, Kind::Write),
    (KEY_OPERATOR, Kind::Read),
    (KEYS_OF, Kind::Read),
    (KEY_DELETE, Kind::Write),
    (KEY_INDEX_DELETE, Kind::Write),
    (ADV_INSERT, Kind::Write),
    (ADV_GET, Kind::Read),
    (ADV_OF, Kind::Read),
    (ADV_ALL, Kind::Scan),
    (ADV_ANY, Kind::Read),
    (ADV_UPDATE, Kind::CompareAndSet),
    (ADV_DELETE, Kind::CompareAndSet),
    (NUM_INSERT, Kind::CompareAndSet),
    (NUM_GET, Kind::Read),
    (NUM_ALL, Kind::Scan),
    (NUM_UPDATE, Kind::CompareAndSet),
    (NUM_DELETE, Kind::CompareAndSet),
    (NUM_UNDO, Kind::CompareAndSet),
    (NUM_INDEX_PUT, Kind::Write),
    (NUM_INDEX_DELETE, Kind::Write),
    (NUM_OF_OPERATOR, Kind::Read),
    (NUM_IDS_OF_OPERATOR, Kind::Read),
    (NUM_OF_ADVERTISER, Kind::Read),
    (NUM_ANY_OF_ADVERTISER, Kind::Read),
    (POOL_INSERT, Kind::Write),
    (POOL_INDEX_PUT, Kind::Write),
    (POOL_GET, Kind::Read),
    (POOLS_OF, Kind::Read),
    (POOL_UPDATE, Kind::CompareAndSet),
    (NL_INSERT, Kind::Write),
    (NL_GET, Kind::Read),
    (NL_TAKE, Kind::CompareAndSet),
    (NL_EXTEND, Kind::CompareAndSet),
    (PN_INSERT, Kind::Write),
    (PN_OF, Kind::Read),
    (PN_SET, Kind::Write),
    (SL_OF, Kind::Read),
    (SL_NEW, Kind::CompareAndSet),
    (SL_REUSE, Kind::CompareAndSet),
    (SL_FILL, Kind::CompareAndSet),
    (SL_EXTEND, Kind::CompareAndSet),
    (SL_RELEASE, Kind::CompareAndSet),
    (CL_OF, Kind::Read),
    (CL_PUT, Kind::Write),
    (LH_PUT, Kind::Write),
    (LH_AT, Kind::Read),
    (CALL_CLAIM, Kind::CompareAndSet),
    (CALL_COMPLETE, Kind::Write),
    (CALL_GET, Kind::Read),
    (CALL_STATE, Kind::Read),
    (CALL_BY_DAY_PUT, Kind::Write),
    (CALL_DAY_PUT, Kind::Write),
    (CALL_BY_CALLER_PUT, Kind::Write),
    (CALL_DAYS, Kind::Read),
    (CALLS_ASC, Kind::Scan),
    (CALLS_DESC, Kind::Scan),
    (EARLIER_CALL, Kind::Read),
    (ACT_LOCATE, Kind::Read),
    (ACT_OWNER, Kind::Read),
    (ACT_GET, Kind::Read),
    (ACT_NEW, Kind::CompareAndSet),
    (ACT_UPDATE, Kind::CompareAndSet),
    (ACT_UPDATE_CHECKPOINT, Kind::CompareAndSet),
    (ACT_CLAIM, Kind::CompareAndSet),
    (ACT_ENDING, Kind::CompareAndSet),
    (ACT_NODE_PUT, Kind::Write),
    (ACT_OP_PUT, Kind::Write),
    (ACT_DELETE, Kind::Write),
    (ACT_NODE_DELETE, Kind::Write),
    (ACT_OP_DELETE, Kind::Write),
    (ACT_OF_NODE, Kind::Scan),
    (ACT_OF_OPERATOR, Kind::Scan),
    (NODE_GET, Kind::Read),
    (NODE_STANDING, Kind::Read),
    (NODE_FIRST, Kind::CompareAndSet),
    (NODE_NEXT, Kind::CompareAndSet),
    (NODE_ALIVE, Kind::CompareAndSet),
    (NODE_ALIVE_NEXT, Kind::CompareAndSet),
    (NODE_DOWN, Kind::CompareAndSet),
    (NODE_RETIRE, Kind::CompareAndSet),
    (NODES_ALL, Kind::Scan),
    (CH_HEAD, Kind::Read),
    (CH_ADD_FIRST, Kind::CompareAndSet),
    (CH_ADD, Kind::CompareAndSet),
    (CH_SINCE, Kind::Read),
    (CH_DROP, Kind::Write),
    (CH_META_GET, Kind::Read),
    (CH_META_SET, Kind::Write),
    (PROMPT_OF_OPERATOR, Kind::Read),
    (PROMPT_PUT_FIRST, Kind::CompareAndSet),
    (PROMPT_PUT, Kind::CompareAndSet),
    (PROMPT_GET, Kind::Read),
    (PROMPT_DELETE, Kind::Write),
    (PROMPT_ALL, Kind::Scan),
    (WH_INSERT, Kind::CompareAndSet),
    (WH_INDEX_PUT, Kind::Write),
    (WH_GET, Kind::Read),
    (WH_OF, Kind::Read),
    (WH_ALL, Kind::Scan),
    (WH_DELETE, Kind::CompareAndSet),
    (WH_INDEX_DELETE, Kind::Write),
    (OB_INSERT, Kind::Write),
    (OB_SHARD, Kind::Read),
    (OB_CLAIM, Kind::CompareAndSet),
    (OB_DELETE, Kind::Write),
    (OB_RETRY, Kind::CompareAndSet),
    (OB_DEAD, Kind::CompareAndSet),
    (OB_COUNT, Kind::Read),
    (ID_GET, Kind::Read),
    (ID_FIRST, Kind::CompareAndSet),
    (ID_NEXT, Kind::CompareAndSet),
    (SMS_OF, Kind::Read),
    (SMS_TAKE, Kind::CompareAndSet),
    (NOTICES_OF, Kind::Read),
    (NOTICE_TAKE, Kind::CompareAndSet),
    (PING, Kind::Read),
];

/// Every table the statements use (the migrations must create each).
pub const TABLES: &[&str] = &[
    "operators",
    "api_keys",
    "api_keys_by_operator",
    "advertisers",
    "numbers",
    "numbers_by_operator",
    "pools",
    "pools_by_operator",
    "number_leases",
    "pool_numbers",
    "session_leases",
    "client_leases",
    "lease_history",
    "calls",
    "calls_by_day",
    "call_days",
    "calls_by_caller",
    "active_calls",
    "active_calls_by_node",
    "active_calls_by_operator",
    "nodes",
    "changes",
    "changes_meta",
    "prompts",
    "webhooks",
    "webhooks_by_operator",
    "outbox",
    "id_blocks",
    "caller_sms",
    "notices",
];

/// The table a statement reads or writes.
pub fn table_of(cql: &str) -> Option<&str> {
    let words: Vec<&str> = cql.split_whitespace().collect();
    let after = |w: &str| {
        words
            .iter()
            .position(|x| x.eq_ignore_ascii_case(w))
            .and_then(|i| words.get(i + 1).copied())
    };
    match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
        Some("SELECT") | Some("DELETE") => after("FROM"),
        Some("INSERT") => after("INTO"),
        Some("UPDATE") => words.get(1).copied(),
        _ => None,
    }
}

/// Whether a statement is a compare-and-set (has an `IF` clause).
pub fn is_conditional(cql: &str) -> bool {
    cql.split_whitespace().any(|w| w == "IF")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_names_a_known_table_and_no_filtering() {
        for (cql, _) in ALL {
            let table = table_of(cql).unwrap_or_else(|| panic!("no table in {cql}"));
            assert!(
                TABLES.contains(&table) || table == "system.local",
                "{table} in {cql}"
            );
            assert!(!cql.contains("ALLOW FILTERING"), "{cql}");
        }
    }

    #[test]
    fn compare_and_set_kinds_match_their_if_clauses() {
        for (cql, kind) in ALL {
            assert_eq!(
                is_conditional(cql),
                *kind == Kind::CompareAndSet,
                "kind {kind:?} of {cql}"
            );
        }
    }

    #[test]
    fn every_statement_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for (cql, _) in ALL {
            assert!(seen.insert(*cql), "listed twice: {cql}");
        }
    }

    #[test]
    fn reads_name_their_partition_key() {
        // Point and partition reads restrict the partition key; only the listed
        // start-up/admin scans read a whole table.
        let scans = [
            OP_ALL, ADV_ALL, NUM_ALL, NODES_ALL, PROMPT_ALL, WH_ALL, PING,
        ];
        for (cql, kind) in ALL {
            if cql.starts_with("SELECT") && !scans.contains(cql) {
                assert!(cql.contains(" WHERE "), "{kind:?} without WHERE: {cql}");
            }
        }
    }

    #[test]
    fn every_column_a_statement_names_is_created() {
        // Without a server, this is what catches a misspelt or forgotten column: every
        // word of a statement that is not CQL, a value or its table must be a column
        // the migrations create (or add) in that table.
        const CQL: &[&str] = &[
            "SELECT", "FROM", "WHERE", "AND", "IF", "NOT", "EXISTS", "INSERT", "INTO", "VALUES",
            "UPDATE", "SET", "DELETE", "USING", "TTL", "LIMIT", "ORDER", "BY", "ASC", "DESC",
            "NULL", "TRUE", "FALSE",
        ];
        let tables = super::super::schema::created_columns();
        for (cql, _) in ALL {
            let table = table_of(cql).unwrap();
            if table.starts_with("system.") {
                continue;
            }
            let columns = &tables[table];
            let words = cql
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty() && !w.starts_with(|c: char| c.is_ascii_digit()));
            for w in words {
                if w == table || CQL.contains(&w.to_ascii_uppercase().as_str()) {
                    continue;
                }
                assert!(columns.contains(w), "{table} has no column {w}: {cql}");
            }
        }
    }

    #[test]
    fn tables_are_found_in_statements() {
        let cases = [
            (OP_GET, "operators"),
            (KEY_INSERT, "api_keys"),
            (SL_REUSE, "session_leases"),
            (CH_DROP, "changes"),
            ("DROP TABLE x", ""),
        ];
        for (cql, want) in cases {
            assert_eq!(table_of(cql).unwrap_or(""), want, "{cql}");
        }
    }
}
