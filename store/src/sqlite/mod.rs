//! The embedded backend: SQLite (bundled) in WAL mode, one writer connection and a
//! small pool of readers, so long exports never block call-log writes. Several
//! processes on one machine may share the file (a multi-node test cluster).

use crate::model::*;
use crate::{judge_prompt_put, now_ms, PromptPut, PromptQuota, Result, Store, StoreError};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, ErrorCode, OptionalExtension};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod rows;
mod schema;

use rows::*;
use schema::migrate;

const READER_POOL: usize = 4;
/// Virtual-machine steps between checks of a scan's deadline: a few microseconds of
/// work, so a search stops within a millisecond or so of its budget.
const PROGRESS_OPS: i32 = 1000;

/// Changes the provisioning feed keeps (see `record_change`).
const CHANGES_KEPT: i64 = 100_000;

pub struct SqliteStore {
    path: PathBuf,
    durability: Durability,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

/// How long a row of the lease history is kept after its lease ended (a day: far past
/// any call that could have matched it).
const LEASE_HISTORY_MS: i64 = 86_400_000;
/// Lease rows that ended long enough ago deleted, at most, per lease issued: more than
/// one, so the history shrinks back after a burst.
const PRUNE_PER_LEASE: i64 = 16;

/// A failed statement as the store's error: a value that does not decode (a row a
/// newer release or a damage wrote: wrong type, not UTF-8, out of range) is
/// [`StoreError::Corrupt`], which retrying does not mend; anything else the store
/// being unavailable (busy, locked, I/O). Decode failures were `Unavailable`, so
/// loops that wait out an outage (the provisioning catch-up) waited on a bad row for
/// ever (a review).
fn unavailable(e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    match e {
        E::FromSqlConversionFailure(..)
        | E::InvalidColumnType(..)
        | E::IntegralValueOutOfRange(..)
        | E::Utf8Error(..) => StoreError::Corrupt(e.to_string()),
        e => StoreError::Unavailable(e.to_string()),
    }
}

/// Writes `key` (an operator's, or with its `advertiser_id` an advertiser's) under
/// `hash`.
fn insert_key(c: &Connection, key: &ApiKey, hash: &str) -> rusqlite::Result<usize> {
    c.execute(
        "INSERT INTO api_keys (key_hash, operator_id, created_at, id, prefix, advertiser_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            hash,
            key.operator_id,
            key.created_at,
            key.id,
            key.prefix,
            key.advertiser_id
        ],
    )
}

/// A key's write failed: a key of that hash or id exists (409), or the store is out.
fn key_error(e: rusqlite::Error) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict("api key".into())
    } else {
        unavailable(e)
    }
}

/// A UNIQUE or PRIMARY KEY violation (not, say, a foreign key: that is a bug, not a conflict).
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    const SQLITE_CONSTRAINT_PRIMARYKEY: i32 = 1555;
    const SQLITE_CONSTRAINT_UNIQUE: i32 = 2067;
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::ConstraintViolation
            && matches!(f.extended_code, SQLITE_CONSTRAINT_PRIMARYKEY | SQLITE_CONSTRAINT_UNIQUE))
}

/// When commits reach the disk (SQLite's `synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is synced to the WAL file: a power cut loses nothing committed.
    #[default]
    Full,
    /// The WAL is synced at checkpoints only: a power cut may lose the last commits
    /// (never corrupts the file); a process crash loses nothing either way.
    Normal,
}

fn open_connection(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    wal_mode(&conn)?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Turns on WAL (a no-op once the file is in WAL mode: the mode is kept in the file).
/// Switching a new file needs its exclusive lock, and SQLite answers BUSY at once
/// instead of waiting (no busy handler there) when another process opens the file at
/// the same moment, as nodes of one machine starting together do: retried for as long
/// as the busy timeout.
fn wal_mode(conn: &Connection) -> rusqlite::Result<()> {
    let mut tries = 0;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations,
    /// every commit synced ([`Durability::Full`]).
    pub fn open(path: &Path) -> Result<SqliteStore> {
        SqliteStore::open_with(path, Durability::Full)
    }

    /// [`SqliteStore::open`] with the given durability of commits.
    pub fn open_with(path: &Path, durability: Durability) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut conn = open_connection(path, durability).map_err(unavailable)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            durability,
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Runs `f` on the writer connection. Its transactions are IMMEDIATE, all of
    /// them: one that reads before it writes (an ownership check, a count) would
    /// otherwise start as a read and fail at once with SQLITE_BUSY, without waiting
    /// for the busy timeout, when another process holds or just took the write lock.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    /// Deletes the row `id` of `table` if `operator_id` owns it; true if one was.
    /// `table` is one of ours (never from a request).
    fn delete_owned(&self, table: &'static str, operator_id: &str, id: &str) -> Result<bool> {
        let n = self
            .write(|c| {
                c.execute(
                    &format!("DELETE FROM {table} WHERE id = ?1 AND operator_id = ?2"),
                    params![id, operator_id],
                )
            })
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    /// The compare-and-set of every PATCH: in one transaction, reads the row with
    /// `current` (None: no such row; `Some(Err)`: a row that does not decode, which is
    /// not what was read: `Changed`) and only if it is still `read` writes it with
    /// `write`.
    /// Compared as decoded, not as stored text: an older row's text may lack fields
    /// that now have defaults.
    fn compare_and_set<T: PartialEq>(
        &self,
        read: &T,
        current: impl FnOnce(&Connection) -> rusqlite::Result<Option<Result<T>>>,
        write: impl FnOnce(&Connection) -> rusqlite::Result<usize>,
    ) -> Result<Update> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let outcome = match current(&tx)? {
                None => Ok(Update::Missing),
                // Unreadable now (a newer version wrote it, or it was damaged): not
                // what was read. The caller reads again, and says what it finds.
                Some(Err(_)) => Ok(Update::Changed),
                Some(Ok(now)) if now != *read => Ok(Update::Changed),
                Some(Ok(_)) => {
                    write(&tx)?;
                    tx.commit()?;
                    Ok(Update::Updated)
                }
            };
            Ok(outcome)
        })
        .map_err(unavailable)?
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.reader()?;
        let out = f(&conn);
        self.give_back(conn);
        out
    }

    /// A read connection from the pool, or a new one when all are in use.
    fn reader(&self) -> Result<Connection> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(c) => Ok(c),
            None => open_connection(&self.path, self.durability).map_err(unavailable),
        }
    }

    /// Returns a read connection to the pool (closed if the pool is full).
    fn give_back(&self, conn: Connection) {
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < READER_POOL {
            pool.push(conn);
        }
    }

    /// [`Self::read`] that SQLite interrupts once `deadline` has passed (checked every
    /// [`PROGRESS_OPS`] virtual-machine steps, so a scan of rows that all fail a filter
    /// stops too, not only one that hands rows out): [`StoreError::TimedOut`] then.
    fn read_until<T>(
        &self,
        deadline: Option<Instant>,
        f: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<T> {
        let Some(deadline) = deadline else {
            return self.read(f);
        };
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let mut conn = self.reader()?;
        conn.progress_handler(
            PROGRESS_OPS,
            Some(move || {
                let late = Instant::now() >= deadline;
                flag.store(late, Ordering::Relaxed);
                late
            }),
        )
        .map_err(unavailable)?;
        let out = f(&conn);
        // A pooled connection must not keep this query's handler.
        if conn.progress_handler(0, None::<fn() -> bool>).is_ok() {
            self.give_back(conn);
        }
        if fired.load(Ordering::Relaxed) {
            return Err(StoreError::scan_timed_out());
        }
        out
    }

    /// Leases a number (see [`Store::issue_lease`]), with optional caps on the
    /// session's and the client's live leases checked inside the same IMMEDIATE
    /// transaction.
    fn lease(
        &self,
        pool: &Pool,
        session: Option<&str>,
        params: &BTreeMap<String, String>,
        now: i64,
        caps: LeaseCaps<'_>,
    ) -> Result<IssueOutcome> {
        // u32 seconds * 1000 fits an i64; the sums with `now` saturate.
        let hold_ms = i64::from(pool.hold_seconds) * 1000;
        let recycle_ms = i64::from(pool.recycle_seconds) * 1000;
        let expires_at = now.saturating_add(hold_ms);
        let params_json = serde_json::to_string(params).unwrap_or_else(|_| "{}".into());
        self.write(|c| {
            // IMMEDIATE takes the database write lock first: the read-then-insert below is
            // a compare-and-set even against other processes sharing the file.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let (Some(session), PoolMode::Dynamic | PoolMode::Callback) = (session, pool.mode) {
                let live = tx
                    .query_row(
                        &format!("SELECT {LEASE_COLUMNS}, id FROM leases WHERE pool_id = ?1 AND session = ?2 AND expires_at > ?3 ORDER BY expires_at DESC LIMIT 1"),
                        params![pool.id, session, now],
                        |r| Ok((r.get::<_, i64>(6)?, lease_from(r)?)),
                    )
                    .optional()?;
                if let Some((id, mut lease)) = live {
                    lease.expires_at = lease.expires_at.max(expires_at);
                    tx.execute("UPDATE leases SET expires_at = ?2 WHERE id = ?1", params![id, lease.expires_at])?;
                    tx.execute("UPDATE pool_numbers SET expires_at = ?2 WHERE number = ?1", params![lease.number, lease.expires_at])?;
                    tx.commit()?;
                    return Ok(IssueOutcome::Leased(lease));
                }
            }
            if let (Some(session), Some(cap)) = (session, caps.per_session) {
                if let Some(retry_at_ms) = cap_reached(&tx, Holder::Session, &pool.id, session, cap, now)? {
                    return Ok(IssueOutcome::SessionFull { retry_at_ms });
                }
            }
            if let Some((client, cap)) = caps.client {
                if let Some(retry_at_ms) = cap_reached(&tx, Holder::Client, &pool.id, client, cap, now)? {
                    return Ok(IssueOutcome::ClientFull { retry_at_ms });
                }
            }
            // The free number issued longest ago (never issued = 0, first), ties in pool
            // order, whose settings this version can read: an unreadable one (a newer
            // version wrote it during an upgrade) is not routed by a node that never
            // read it, so a visitor given it would call a dead number (a review). It
            // is skipped, and logged; the next readable one is issued.
            // At most UNREADABLE_SKIPPED of them are looked past (the pool is then
            // exhausted: its overflow), and one line is logged per issue: they keep
            // their place first in line, and a page's every issue read them all and
            // logged each, holding the write lock (a review).
            let number: Option<String> = {
                let mut free = tx.prepare_cached(
                    "SELECT pn.number, n.settings FROM pool_numbers pn LEFT JOIN numbers n ON n.number = pn.number \
                     WHERE pn.pool_id = ?1 AND pn.expires_at + ?2 <= ?3 ORDER BY pn.last_issued_at, pn.position",
                )?;
                let mut rows = free.query(params![pool.id, recycle_ms, now])?;
                let mut found = None;
                let mut skipped = Vec::new();
                while let Some(row) = rows.next()? {
                    let number: String = row.get(0)?;
                    if number_from_text(settings_text(row, 1)?).is_ok() {
                        found = Some(number);
                        break;
                    }
                    skipped.push(number);
                    if skipped.len() == UNREADABLE_SKIPPED {
                        break;
                    }
                }
                if !skipped.is_empty() {
                    tracing::warn!(pool = %pool.id, ?skipped, "pool numbers whose settings cannot be read (or that are gone) were not issued");
                }
                found
            };
            let Some(number) = number else {
                return Ok(IssueOutcome::Exhausted);
            };
            let lease = Lease { number, pool_id: pool.id.clone(), session: session.map(str::to_string), params: params.clone(), issued_at: now, expires_at };
            tx.execute(
                "UPDATE pool_numbers SET last_issued_at = ?2, expires_at = ?3 WHERE number = ?1",
                params![lease.number, lease.issued_at, lease.expires_at],
            )?;
            tx.execute(
                "INSERT INTO leases (pool_id, number, session, params, issued_at, expires_at, client) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![lease.pool_id, lease.number, lease.session, params_json, lease.issued_at, lease.expires_at, caps.client.map(|(c, _)| c)],
            )?;
            // The history is pruned as it grows (anyone with a page's origin adds rows):
            // up to PRUNE_PER_LEASE rows whose lease ended over LEASE_HISTORY_MS ago, the
            // longest ended first, found through `leases_by_expiry` (never a scan). No
            // call can match them (a call takes the lease live at its start), and rows
            // still live (long holds, extended sessions) do not stand in the way.
            tx.prepare_cached(
                "DELETE FROM leases WHERE id IN (SELECT id FROM leases WHERE expires_at < ?2 ORDER BY expires_at LIMIT ?1)",
            )?
            .execute(params![PRUNE_PER_LEASE, now.saturating_sub(LEASE_HISTORY_MS)])?;
            tx.commit()?;
            Ok(IssueOutcome::Leased(lease))
        })
        .map_err(unavailable)
    }

    /// Checkpoints the WAL into the database file and truncates it; false when a reader
    /// still uses the WAL (an open read snapshot pins it and makes it grow).
    pub fn checkpoint(&self) -> Result<bool> {
        self.write(|c| {
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .map(|busy| busy == 0)
        .map_err(unavailable)
    }
}

/// How many free numbers of a pool whose settings cannot be read an issue looks past
/// before it calls the pool exhausted (see `issue_lease_capped`).
const UNREADABLE_SKIPPED: usize = 16;

/// Who a lease cap counts for: the `leases` column naming it.
#[derive(Clone, Copy)]
enum Holder {
    Session,
    Client,
}

/// When `who` (a session or a client) holds `cap` live leases of the pool or more:
/// when it is back under its cap, the end of its (held - cap + 1)-th lease to end
/// (more than one must end if it holds more, after the cap was lowered); None while
/// it is under.
fn cap_reached(
    tx: &rusqlite::Transaction,
    holder: Holder,
    pool_id: &str,
    who: &str,
    cap: u32,
    now: i64,
) -> rusqlite::Result<Option<i64>> {
    let live = match holder {
        Holder::Session => "FROM leases WHERE pool_id = ?1 AND session = ?2 AND expires_at > ?3",
        Holder::Client => "FROM leases WHERE pool_id = ?1 AND client = ?2 AND expires_at > ?3",
    };
    let held: i64 = tx
        .prepare_cached(&format!("SELECT COUNT(*) {live}"))?
        .query_row(params![pool_id, who, now], |r| r.get(0))?;
    let over = held - i64::from(cap);
    if over < 0 {
        return Ok(None);
    }
    let end: Option<i64> = tx
        .prepare_cached(&format!(
            "SELECT expires_at {live} ORDER BY expires_at LIMIT 1 OFFSET ?4"
        ))?
        .query_row(params![pool_id, who, now, over], |r| r.get(0))
        .optional()?;
    Ok(Some(end.unwrap_or(now)))
}

impl SqliteStore {
    /// A new incarnation of `info`'s node (its epoch up by one, its addresses
    /// recorded), unconditionally, or only while the registry lists incarnation
    /// `after` of it (None returned otherwise): see [`Store::register_node_after`].
    fn register_incarnation(
        &self,
        info: &NodeInfo,
        now_ms: i64,
        after: Option<u64>,
    ) -> Result<Option<(u64, Option<i64>)>> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT epoch, last_seen FROM nodes WHERE node_id = ?1",
                    [&info.node_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some(after) = after {
                if before.map(|(e, _)| e) != Some(after as i64) {
                    return Ok(None); // another incarnation since: nothing written
                }
            }
            let epoch = before.map(|(e, _)| e + 1).unwrap_or(1);
            tx.execute(
                "INSERT OR REPLACE INTO nodes (node_id, epoch, started_at, last_seen, cluster_addr, api_addr, down) \
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5, 0)",
                params![info.node_id, epoch, now_ms, info.cluster_addr, info.api_addr],
            )?;
            tx.commit()?;
            Ok(Some((epoch as u64, before.map(|(_, seen)| seen))))
        })
        .map_err(unavailable)
    }
}

/// The statements of a capped count of calls per key and period (see
/// [`take_counted`]): each row names the call it counts.
struct CappedCount {
    counted: &'static str,
    count: &'static str,
    insert: &'static str,
}

/// SMS to a caller's number per day (`notify.caller_sms_per_day`).
const CALLER_SMS: CappedCount = CappedCount {
    counted: "SELECT 1 FROM caller_sms WHERE call_id = ?1",
    count: "SELECT COUNT(*) FROM caller_sms WHERE caller = ?1 AND day = ?2",
    insert: "INSERT INTO caller_sms (call_id, caller, day) VALUES (?1, ?2, ?3)",
};

/// Calls given notices per tracking number and clock hour
/// (`notify.notices_per_number_per_hour`).
const NOTICES: CappedCount = CappedCount {
    counted: "SELECT 1 FROM notices WHERE call_id = ?1",
    count: "SELECT COUNT(*) FROM notices WHERE number = ?1 AND hour = ?2",
    insert: "INSERT INTO notices (call_id, number, hour) VALUES (?1, ?2, ?3)",
};

/// Whether `call_id` may go under a count capped at `cap` per (`key`, `period`): it
/// was counted before (a retry), or fewer than `cap` are counted there and it is
/// counted now. Within the caller's write transaction.
fn take_counted(
    tx: &rusqlite::Transaction<'_>,
    count: &CappedCount,
    (key, period): (&str, i64),
    call_id: &str,
    cap: u32,
) -> rusqlite::Result<bool> {
    if tx.prepare_cached(count.counted)?.exists([call_id])? {
        return Ok(true);
    }
    let taken: i64 = tx
        .prepare_cached(count.count)?
        .query_row(params![key, period], |r| r.get(0))?;
    if taken >= i64::from(cap) {
        return Ok(false);
    }
    tx.prepare_cached(count.insert)?
        .execute(params![call_id, key, period])?;
    Ok(true)
}

impl Store for SqliteStore {
    fn create_operator(&self, name: &str) -> Result<Operator> {
        let op = Operator {
            id: crate::new_id("op"),
            name: name.to_string(),
            created_at: now_ms(),
        };
        self.write(|c| {
            c.execute(
                "INSERT INTO operators (id, name, created_at) VALUES (?1, ?2, ?3)",
                params![op.id, op.name, op.created_at],
            )
        })
        .map_err(unavailable)?;
        Ok(op)
    }

    fn get_operator(&self, id: &str) -> Result<Option<Operator>> {
        self.read(|c| {
            c.query_row(
                "SELECT id, name, created_at FROM operators WHERE id = ?1",
                [id],
                operator_from,
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn list_operators(&self) -> Result<Vec<Operator>> {
        self.read(|c| {
            let mut st = c
                .prepare("SELECT id, name, created_at FROM operators ORDER BY created_at, id")
                .map_err(unavailable)?;
            let rows = st.query_map([], operator_from).map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })
    }

    fn rename_operator(&self, id: &str, name: &str) -> Result<Option<Operator>> {
        let n = self
            .write(|c| {
                c.execute(
                    "UPDATE operators SET name = ?2 WHERE id = ?1",
                    params![id, name],
                )
            })
            .map_err(unavailable)?;
        if n == 0 {
            return Ok(None);
        }
        self.get_operator(id)
    }

    fn delete_operator(&self, id: &str) -> Result<Option<Vec<String>>> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let owned: i64 = tx.query_row(
                "SELECT COUNT(*) FROM advertisers WHERE operator_id = ?1",
                [id],
                |r| r.get(0),
            )?;
            if owned > 0 {
                return Ok(Err(StoreError::InUse(format!(
                    "operator {id} still owns {owned} advertiser(s)"
                ))));
            }
            // Its webhooks and prompts go with it, in the same transaction: they were
            // left behind, the prompts counting on the disk of every node (a review).
            let prompts: Vec<String> = tx
                .prepare("DELETE FROM prompts WHERE operator_id = ?1 RETURNING name")?
                .query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            tx.execute("DELETE FROM webhooks WHERE operator_id = ?1", [id])?;
            let n = tx.execute("DELETE FROM operators WHERE id = ?1", [id])?;
            if n == 0 {
                return Ok(Ok(None)); // dropped: nothing is committed
            }
            tx.commit()?;
            Ok(Ok(Some(prompts)))
        })
        .map_err(unavailable)?
    }

    fn add_api_key(&self, operator_id: &str, key_hash: &str, prefix: &str) -> Result<ApiKey> {
        let key = ApiKey::new(operator_id, prefix, None);
        self.write(|c| insert_key(c, &key, key_hash))
            .map_err(key_error)?;
        Ok(key)
    }

    fn add_advertiser_key(
        &self,
        operator_id: &str,
        advertiser_id: &str,
        key_hash: &str,
        prefix: &str,
        cap: usize,
    ) -> Result<Option<ApiKey>> {
        let key = ApiKey::new(operator_id, prefix, Some(advertiser_id));
        // One transaction: the advertiser is there, under its cap, when the key is
        // written (a delete of the advertiser waits for it, and takes the key along).
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let exists: i64 = tx.query_row(
                "SELECT COUNT(*) FROM advertisers WHERE id = ?1 AND operator_id = ?2",
                [advertiser_id, operator_id],
                |r| r.get(0),
            )?;
            if exists == 0 {
                return Ok(Ok(None));
            }
            let held: i64 = tx.query_row(
                "SELECT COUNT(*) FROM api_keys WHERE operator_id = ?1 AND advertiser_id = ?2",
                [operator_id, advertiser_id],
                |r| r.get(0),
            )?;
            if usize::try_from(held).unwrap_or(usize::MAX) >= cap {
                return Ok(Err(StoreError::InUse(format!(
                    "advertiser {advertiser_id} has {held} keys, the most it may have: revoke one first"
                ))));
            }
            insert_key(&tx, &key, key_hash)?;
            tx.commit()?;
            Ok(Ok(Some(key.clone())))
        })
        .map_err(key_error)?
    }

    fn key_owner(&self, key_hash: &str) -> Result<Option<KeyOwner>> {
        self.read(|c| {
            c.query_row(
                "SELECT operator_id, advertiser_id FROM api_keys WHERE key_hash = ?1",
                [key_hash],
                |r| {
                    Ok(KeyOwner {
                        operator_id: r.get(0)?,
                        advertiser_id: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn list_api_keys(&self, operator_id: &str) -> Result<Vec<ApiKey>> {
        self.read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id, operator_id, prefix, created_at, advertiser_id FROM api_keys \
                     WHERE operator_id = ?1 ORDER BY created_at, rowid",
                )
                .map_err(unavailable)?;
            let rows = st
                .query_map([operator_id], |r| {
                    Ok(ApiKey {
                        id: r.get(0)?,
                        operator_id: r.get(1)?,
                        prefix: r.get(2)?,
                        created_at: r.get(3)?,
                        advertiser_id: r.get(4)?,
                    })
                })
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })
    }

    fn revoke_api_key(
        &self,
        operator_id: &str,
        key_id: &str,
        advertiser: Option<&str>,
    ) -> Result<bool> {
        let n = self
            .write(|c| {
                c.execute(
                    "DELETE FROM api_keys WHERE id = ?1 AND operator_id = ?2 \
                     AND (?3 IS NULL OR advertiser_id = ?3)",
                    params![key_id, operator_id, advertiser],
                )
            })
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    fn issue_lease_capped(
        &self,
        pool: &Pool,
        session: Option<&str>,
        params: &BTreeMap<String, String>,
        now: i64,
        caps: LeaseCaps<'_>,
    ) -> Result<IssueOutcome> {
        self.lease(pool, session, params, now, caps)
    }

    fn create_advertiser(
        &self,
        operator_id: &str,
        name: &str,
        lines: Option<LineLimit>,
    ) -> Result<Advertiser> {
        let adv = Advertiser {
            id: crate::new_id("adv"),
            operator_id: operator_id.to_string(),
            name: name.to_string(),
            created_at: now_ms(),
            lines,
        };
        let lines = lines.map(|l| serde_json::to_string(&l).unwrap_or_default());
        self.write(|c| {
            c.execute(
                "INSERT INTO advertisers (id, operator_id, name, created_at, lines) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![adv.id, adv.operator_id, adv.name, adv.created_at, lines],
            )
        })
        .map_err(unavailable)?;
        Ok(adv)
    }

    fn get_advertiser(&self, operator_id: &str, id: &str) -> Result<Option<Advertiser>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {ADVERTISER_COLUMNS} FROM advertisers WHERE id = ?1 AND operator_id = ?2"),
                [id, operator_id],
                advertiser_from,
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn list_advertisers(&self, operator_id: &str) -> Result<Vec<Advertiser>> {
        self.read(|c| {
            let mut st = c
                .prepare(&format!("SELECT {ADVERTISER_COLUMNS} FROM advertisers WHERE operator_id = ?1 ORDER BY created_at, id"))
                .map_err(unavailable)?;
            let rows = st.query_map([operator_id], advertiser_from).map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(unavailable)
        })
    }

    fn update_advertiser(&self, adv: &Advertiser, read: &Advertiser) -> Result<Update> {
        let lines = adv
            .lines
            .map(|l| serde_json::to_string(&l).unwrap_or_default());
        self.compare_and_set(
            read,
            |c| {
                c.query_row(
                    &format!("SELECT {ADVERTISER_COLUMNS} FROM advertisers WHERE id = ?1 AND operator_id = ?2"),
                    params![adv.id, adv.operator_id],
                    advertiser_from,
                )
                .optional()
                .map(|row| row.map(Ok))
            },
            |c| {
                c.execute(
                    "UPDATE advertisers SET name = ?3, lines = ?4 WHERE id = ?1 AND operator_id = ?2",
                    params![adv.id, adv.operator_id, adv.name, lines],
                )
            },
        )
    }

    fn advertisers_with_lines(&self) -> Result<Vec<Advertiser>> {
        self.read(|c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {ADVERTISER_COLUMNS} FROM advertisers WHERE lines IS NOT NULL"
                ))
                .map_err(unavailable)?;
            let rows = st.query_map([], advertiser_from).map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })
    }

    fn delete_advertiser(&self, operator_id: &str, id: &str) -> Result<bool> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let owned: i64 = tx.query_row(
                "SELECT COUNT(*) FROM numbers WHERE advertiser_id = ?1 AND operator_id = ?2",
                [id, operator_id],
                |r| r.get(0),
            )?;
            if owned > 0 {
                return Ok(Err(StoreError::InUse(format!(
                    "advertiser {id} still owns {owned} number(s)"
                ))));
            }
            let n = tx.execute(
                "DELETE FROM advertisers WHERE id = ?1 AND operator_id = ?2",
                [id, operator_id],
            )?;
            tx.execute(
                "DELETE FROM api_keys WHERE operator_id = ?1 AND advertiser_id = ?2",
                [operator_id, id],
            )?;
            tx.commit()?;
            Ok(Ok(n > 0))
        })
        .map_err(unavailable)?
    }

    fn create_number(&self, number: &TrackingNumber) -> Result<()> {
        let settings =
            serde_json::to_string(number).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(|c| {
            c.execute(
                "INSERT INTO numbers (number, operator_id, advertiser_id, settings) VALUES (?1, ?2, ?3, ?4)",
                params![number.number, number.operator_id, number.advertiser_id, settings],
            )
        })
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("number {}", number.number))
            } else {
                unavailable(e)
            }
        })?;
        Ok(())
    }

    fn get_number(&self, number: &str) -> Result<Option<TrackingNumber>> {
        let settings: Option<Option<String>> = self.read(|c| {
            c.query_row(
                "SELECT settings FROM numbers WHERE number = ?1",
                [number],
                |r| settings_text(r, 0),
            )
            .optional()
            .map_err(unavailable)
        })?;
        settings.map(number_from_text).transpose()
    }

    fn list_numbers(
        &self,
        operator_id: &str,
        advertiser_id: Option<&str>,
    ) -> Result<Vec<TrackingNumber>> {
        let rows: Vec<Option<String>> = self.read(|c| {
            let mut st = c
                .prepare(
                    "SELECT settings FROM numbers WHERE operator_id = ?1 AND (?2 IS NULL OR advertiser_id = ?2) ORDER BY number",
                )
                .map_err(unavailable)?;
            let rows = st.query_map(params![operator_id, advertiser_id], |r| settings_text(r, 0)).map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(unavailable)
        })?;
        Ok(rows
            .into_iter()
            .map(number_from_text)
            .filter_map(|n| crate::readable_listed("a number's", n))
            .collect())
    }

    fn list_numbers_page(
        &self,
        operator_id: &str,
        advertiser_id: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<NumberPage> {
        // One row past the page tells whether another follows.
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        // The page's numbers chosen first, settings read for them alone: the order
        // is of numbers, not of whole rows (up to 64 KiB each). Each page walks the
        // operator's index and sorts its numbers (SQLite's plan, measured with
        // EXPLAIN QUERY PLAN: with or without a cursor): cheap per number, and no
        // schema change for an index by operator and number (a node of the version
        // before refuses a newer schema, during a rolling upgrade too).
        const PAGE: &str = "SELECT number, settings FROM numbers WHERE number IN (SELECT number FROM numbers WHERE operator_id = ?1 AND (?2 IS NULL OR advertiser_id = ?2) AND (?3 IS NULL OR number > ?3) ORDER BY number LIMIT ?4) ORDER BY number";
        let rows: Vec<(String, Option<String>)> = self.read(|c| {
            let mut st = c.prepare_cached(PAGE).map_err(unavailable)?;
            let rows = st
                .query_map(params![operator_id, advertiser_id, after, fetch], |r| {
                    Ok((r.get(0)?, settings_text(r, 1)?))
                })
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })?;
        let (rows, next) = crate::page_of(rows, limit, |(number, _)| number.clone());
        let numbers = rows
            .into_iter()
            .map(|(_, settings)| number_from_text(settings))
            .filter_map(|n| crate::readable_listed("a number's", n))
            .collect();
        Ok(NumberPage { numbers, next })
    }

    fn update_number(&self, number: &TrackingNumber, read: &TrackingNumber) -> Result<Update> {
        let settings =
            serde_json::to_string(number).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.compare_and_set(
            read,
            |c| {
                c.query_row(
                    "SELECT settings FROM numbers WHERE number = ?1 AND operator_id = ?2",
                    params![number.number, number.operator_id],
                    |r| settings_text(r, 0),
                )
                .optional()
                .map(|row| row.map(number_from_text))
            },
            |c| {
                c.execute(
                    "UPDATE numbers SET advertiser_id = ?3, settings = ?4 WHERE number = ?1 AND operator_id = ?2",
                    params![number.number, number.operator_id, number.advertiser_id, settings],
                )
            },
        )
    }

    fn delete_number(&self, operator_id: &str, number: &str) -> Result<bool> {
        let n = self
            .write(|c| {
                c.execute(
                    "DELETE FROM numbers WHERE number = ?1 AND operator_id = ?2",
                    [number, operator_id],
                )
            })
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    fn count_numbers(&self, operator_id: &str) -> Result<usize> {
        let n: i64 = self.read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM numbers WHERE operator_id = ?1",
                [operator_id],
                |r| r.get(0),
            )
            .map_err(unavailable)
        })?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn all_numbers(&self) -> Result<Vec<(String, Result<TrackingNumber>)>> {
        // The settings as text, per row: a damaged one (not text, not UTF-8) is that
        // number's error, not the whole load's (read as a String it failed the query,
        // and the node did not start).
        let rows: Vec<(String, Option<String>)> = self.read(|c| {
            let mut st = c
                .prepare("SELECT number, settings FROM numbers")
                .map_err(unavailable)?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, settings_text(r, 1)?)))
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })?;
        Ok(rows
            .into_iter()
            .map(|(number, settings)| {
                let read = number_from_text(settings).map_err(|e| e.about(&number));
                (number, read)
            })
            .collect())
    }

    fn create_pool(&self, pool: &Pool, numbers: &[TrackingNumber]) -> Result<()> {
        let settings =
            serde_json::to_string(pool).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let rows: Vec<(String, String)> = numbers
            .iter()
            .map(|n| serde_json::to_string(n).map(|s| (n.number.clone(), s)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute("INSERT INTO pools (id, operator_id, settings) VALUES (?1, ?2, ?3)", params![pool.id, pool.operator_id, settings])?;
            for (number, settings) in &rows {
                tx.execute(
                    "INSERT INTO numbers (number, operator_id, advertiser_id, settings) VALUES (?1, ?2, ?3, ?4)",
                    params![number, pool.operator_id, pool.advertiser_id, settings],
                )?;
            }
            for (position, number) in pool.numbers.iter().enumerate() {
                tx.execute(
                    "INSERT INTO pool_numbers (number, pool_id, position, last_issued_at, expires_at) VALUES (?1, ?2, ?3, 0, 0)",
                    params![number, pool.id, position as i64],
                )?;
            }
            tx.commit()
        })
        .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict("one of the pool's numbers".into()) } else { unavailable(e) })
    }

    fn get_pool(&self, operator_id: &str, id: &str) -> Result<Option<Pool>> {
        let settings = self.read(|c| {
            c.query_row(
                "SELECT settings FROM pools WHERE id = ?1 AND operator_id = ?2",
                [id, operator_id],
                |r| settings_text(r, 0),
            )
            .optional()
            .map_err(unavailable)
        })?;
        settings.map(pool_from_text).transpose()
    }

    fn pool_by_id(&self, id: &str) -> Result<Option<Pool>> {
        let settings = self.read(|c| {
            c.query_row("SELECT settings FROM pools WHERE id = ?1", [id], |r| {
                settings_text(r, 0)
            })
            .optional()
            .map_err(unavailable)
        })?;
        settings.map(pool_from_text).transpose()
    }

    fn list_pools(&self, operator_id: &str) -> Result<Vec<Pool>> {
        let rows: Vec<Option<String>> = self.read(|c| {
            let mut st = c
                .prepare("SELECT settings FROM pools WHERE operator_id = ?1 ORDER BY id")
                .map_err(unavailable)?;
            let rows = st
                .query_map([operator_id], |r| settings_text(r, 0))
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })?;
        Ok(rows
            .into_iter()
            .map(pool_from_text)
            .filter_map(|p| crate::readable_listed("a pool's", p))
            .collect())
    }

    fn update_pool(&self, pool: &Pool, read: &Pool) -> Result<Update> {
        let settings =
            serde_json::to_string(pool).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.compare_and_set(
            read,
            |c| {
                c.query_row(
                    "SELECT settings FROM pools WHERE id = ?1 AND operator_id = ?2",
                    params![pool.id, pool.operator_id],
                    |r| settings_text(r, 0),
                )
                .optional()
                .map(|row| row.map(pool_from_text))
            },
            |c| {
                c.execute(
                    "UPDATE pools SET settings = ?3 WHERE id = ?1 AND operator_id = ?2",
                    params![pool.id, pool.operator_id, settings],
                )
            },
        )
    }

    fn lease_at(&self, number: &str, at_ms: i64) -> Result<Option<Lease>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {LEASE_COLUMNS} FROM leases WHERE number = ?1 AND issued_at <= ?2 AND expires_at > ?2 ORDER BY issued_at DESC LIMIT 1"),
                params![number, at_ms],
                lease_from,
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn leased_count(&self, pool_id: &str, now_ms: i64) -> Result<usize> {
        self.read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM pool_numbers WHERE pool_id = ?1 AND expires_at > ?2",
                params![pool_id, now_ms],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as usize)
            .map_err(unavailable)
        })
    }

    fn insert_calls(
        &self,
        calls: &[CallRecord],
        follow_ups: &[(usize, NewFollowUp)],
    ) -> Result<()> {
        let now = now_ms();
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut inserted = vec![false; calls.len()];
            {
                let mut st = tx.prepare_cached(&format!(
                    "INSERT OR IGNORE INTO calls ({CALL_COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32)"
                ))?;
                let mut ended = tx.prepare_cached("DELETE FROM active_calls WHERE call_id = ?1")?;
                // A call in progress owned by another incarnation (taken over) is not
                // this writer's to end: its record is fenced off.
                let mut owner = tx.prepare_cached(
                    "SELECT node, epoch FROM active_calls WHERE call_id = ?1",
                )?;
                for (i, r) in calls.iter().enumerate() {
                    let held: Option<(String, i64)> = owner
                        .query_row([&r.call_id], |x| Ok((x.get(0)?, x.get(1)?)))
                        .optional()?;
                    if held.is_some_and(|(n, e)| n != r.node || e as u64 != r.owner_epoch) {
                        continue;
                    }
                    let params_json = serde_json::to_string(&r.tracking_params).unwrap_or_else(|_| "{}".into());
                    st.execute(params![
                        r.call_id,
                        r.operator_id,
                        r.advertiser_id,
                        r.tracking_number,
                        r.caller_number,
                        r.caller_kind.as_str(),
                        r.destination_number,
                        r.started_at,
                        r.answered_at,
                        r.ended_at,
                        r.ring_seconds,
                        r.talk_seconds,
                        r.result.as_str(),
                        r.validity.as_str(),
                        r.ivr_digits,
                        r.judgement_digit,
                        r.recording,
                        params_json,
                        r.node,
                        r.sip_code,
                        r.trunk,
                        r.rtp_packets_in as i64,
                        r.rtp_packets_out as i64,
                        r.rtp_lost as i64,
                        r.callback_of,
                        r.recording_status.map(|s| s.as_str()),
                        (!r.attempts.is_empty())
                            .then(|| serde_json::to_string(&r.attempts).unwrap_or_default()),
                        r.end_reason,
                        (!r.nodes.is_empty())
                            .then(|| serde_json::to_string(&r.nodes).unwrap_or_default()),
                        r.taken_over_at,
                        (!r.recording_parts.is_empty()).then(|| {
                            serde_json::to_string(&r.recording_parts).unwrap_or_default()
                        }),
                        r.rtp_jitter_us.and_then(|us| i64::try_from(us).ok()),
                    ])?;
                    inserted[i] = tx.changes() == 1;
                    ended.execute([&r.call_id])?;
                }
            }
            // Follow-ups of a record that was already stored were queued then.
            for (of, item) in follow_ups {
                if inserted.get(*of).copied().unwrap_or(false) {
                    enqueue(&tx, item, now)?;
                }
            }
            tx.commit()
        })
        .map_err(unavailable)
    }

    fn upsert_active_calls(&self, calls: &[ActiveCall]) -> Result<()> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                // A call whose final row exists is over: its late update is ignored; a
                // call another incarnation owns now (taken over) is not replaced; an
                // incarnation declared down or superseded writes nothing.
                let mut st = tx.prepare_cached(
                    "INSERT INTO active_calls (call_id, operator_id, node, epoch, started_at, record, checkpoint, advertiser_id, caller_number) \
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 WHERE NOT EXISTS (SELECT 1 FROM calls WHERE call_id = ?1) \
                     AND NOT EXISTS (SELECT 1 FROM nodes WHERE node_id = ?3 AND (epoch != ?4 OR down = 1)) \
                     ON CONFLICT (call_id) DO UPDATE SET record = excluded.record, \
                     checkpoint = coalesce(excluded.checkpoint, active_calls.checkpoint) \
                     WHERE active_calls.node = excluded.node AND active_calls.epoch = excluded.epoch",
                )?;
                for a in calls {
                    let r = &a.record;
                    let json = serde_json::to_string(r).unwrap_or_default();
                    st.execute(params![
                        r.call_id,
                        r.operator_id,
                        r.node,
                        r.owner_epoch as i64,
                        r.started_at,
                        json,
                        a.checkpoint,
                        r.advertiser_id,
                        r.caller_number
                    ])?;
                }
            }
            tx.commit()
        })
        .map_err(unavailable)
    }

    fn active_calls_of(&self, node: &str) -> Result<Vec<ActiveCall>> {
        // Every column read per row (see `settings_text`): a damaged one is that
        // call's error, not the whole list's.
        type Row = (Option<String>, Option<i64>, Option<String>);
        let rows: Vec<Row> = self.read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT record, epoch, checkpoint FROM active_calls WHERE node = ?1 \
                     ORDER BY started_at, call_id",
                )
                .map_err(unavailable)?;
            let rows = st
                .query_map([node], |r| {
                    let epoch = r.get_ref(1)?.as_i64().ok();
                    Ok((settings_text(r, 0)?, epoch, settings_text(r, 2)?))
                })
                .map_err(unavailable)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable);
            rows
        })?;
        Ok(rows
            .into_iter()
            .map(|(json, epoch, checkpoint)| {
                // The owner from the row (the record's own copy predates a claim).
                let (Some(json), Some(epoch)) = (json, epoch) else {
                    return Err(StoreError::Corrupt(
                        "a call in progress's record is not text or its epoch not a number".into(),
                    ));
                };
                let mut record = active_from(json)?;
                record.node = node.to_string();
                record.owner_epoch = epoch as u64;
                Ok(ActiveCall { record, checkpoint })
            })
            .filter_map(|call| crate::readable_listed("a call in progress's", call))
            .collect())
    }

    fn claim_call(
        &self,
        call_id: &str,
        from: (&str, u64),
        to: (&str, u64),
    ) -> Result<Option<ActiveCall>> {
        let claimed: Option<(String, Option<String>)> = self
            .write(|c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let n = tx
                    .prepare_cached(
                        // Nor by an incarnation the cluster declared down (or a newer
                        // one replaced): its claim would leave the call owned by nobody
                        // alive, and no survivor looks at that incarnation again.
                        "UPDATE active_calls SET node = ?4, epoch = ?5 \
                         WHERE call_id = ?1 AND node = ?2 AND epoch = ?3 \
                         AND NOT EXISTS (SELECT 1 FROM nodes WHERE node_id = ?4 AND (epoch != ?5 OR down = 1))",
                    )?
                    .execute(params![call_id, from.0, from.1 as i64, to.0, to.1 as i64])?;
                let row = if n == 1 {
                    tx.prepare_cached(
                        "SELECT record, checkpoint FROM active_calls WHERE call_id = ?1",
                    )?
                    .query_row([call_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?
                } else {
                    None
                };
                tx.commit()?;
                Ok(row)
            })
            .map_err(unavailable)?;
        claimed
            .map(|(json, checkpoint)| {
                let mut record = active_from(json)?;
                record.node = to.0.to_string();
                record.owner_epoch = to.1;
                Ok(ActiveCall { record, checkpoint })
            })
            .transpose()
    }

    fn register_node(&self, info: &NodeInfo, now_ms: i64) -> Result<(u64, Option<i64>)> {
        self.register_incarnation(info, now_ms, None)?
            .ok_or_else(|| StoreError::Unavailable("node registration refused".into()))
    }

    fn register_node_after(
        &self,
        info: &NodeInfo,
        now_ms: i64,
        after: u64,
    ) -> Result<Option<(u64, Option<i64>)>> {
        self.register_incarnation(info, now_ms, Some(after))
    }

    fn node_alive(&self, node: &str, epoch: u64, now_ms: i64) -> Result<bool> {
        self.write(|c| {
            c.prepare_cached(
                "UPDATE nodes SET last_seen = max(last_seen + 1, ?3) WHERE node_id = ?1 AND epoch = ?2 AND down = 0",
            )?
            .execute(params![node, epoch as i64, now_ms])
            .map(|n| n == 1)
        })
        .map_err(unavailable)
    }

    fn mark_node_down(&self, node: &str, epoch: u64) -> Result<bool> {
        self.write(|c| {
            c.prepare_cached(
                "UPDATE nodes SET down = 1 WHERE node_id = ?1 AND epoch = ?2 AND down = 0",
            )?
            .execute(params![node, epoch as i64])
            .map(|n| n == 1)
        })
        .map_err(unavailable)
    }

    fn mark_node_down_by(&self, node: &str, epoch: u64, by: (&str, u64)) -> Result<bool> {
        self.write(|c| {
            c.prepare_cached(
                "UPDATE nodes SET down = 1 WHERE node_id = ?1 AND epoch = ?2 AND down = 0 \
                 AND ((?3 = ?1 AND ?4 = ?2) OR EXISTS \
                 (SELECT 1 FROM nodes WHERE node_id = ?3 AND epoch = ?4 AND down = 0))",
            )?
            .execute(params![node, epoch as i64, by.0, by.1 as i64])
            .map(|n| n == 1)
        })
        .map_err(unavailable)
    }

    fn retire_node(&self, node: &str, epoch: u64) -> Result<bool> {
        self.write(|c| {
            c.prepare_cached(
                "UPDATE nodes SET retired = 1, down = 1 WHERE node_id = ?1 AND epoch = ?2",
            )?
            .execute(params![node, epoch as i64])
            .map(|n| n == 1)
        })
        .map_err(unavailable)
    }

    fn nodes(&self) -> Result<Vec<NodeRow>> {
        self.read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT node_id, epoch, started_at, last_seen, cluster_addr, api_addr, down, retired \
                     FROM nodes ORDER BY node_id",
                )
                .map_err(unavailable)?;
            let rows = st
                .query_map([], |r| {
                    Ok(NodeRow {
                        node_id: r.get(0)?,
                        epoch: r.get::<_, i64>(1)? as u64,
                        started_at: r.get(2)?,
                        last_seen: r.get(3)?,
                        cluster_addr: r.get(4)?,
                        api_addr: r.get(5)?,
                        down: r.get::<_, i64>(6)? != 0,
                        retired: r.get::<_, i64>(7)? != 0,
                    })
                })
                .map_err(unavailable)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable);
            rows
        })
    }

    fn record_change(&self, kind: &str, key: &str) -> Result<i64> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.prepare_cached("INSERT INTO changes (kind, key, at) VALUES (?1, ?2, ?3)")?
                .execute(params![kind, key, now_ms()])?;
            let seq = tx.last_insert_rowid();
            // The feed keeps the last CHANGES_KEPT changes: a node further behind
            // reloads everything (see `changes_since`).
            tx.prepare_cached("DELETE FROM changes WHERE seq <= ?1")?
                .execute([seq - CHANGES_KEPT])?;
            tx.commit()?;
            Ok(seq)
        })
        .map_err(unavailable)
    }

    fn changes_since(&self, seq: i64, limit: usize) -> Result<Changes> {
        self.read(|c| {
            // One snapshot for the three reads: pruning by another node between them
            // could otherwise call a page complete that skipped changes.
            let c = c.unchecked_transaction().map_err(unavailable)?;
            let oldest: Option<i64> = c
                .query_row("SELECT min(seq) FROM changes", [], |r| r.get(0))
                .map_err(unavailable)?;
            let latest: i64 = c
                .query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
                    r.get(0)
                })
                .map_err(unavailable)?;
            let complete = oldest.is_none_or(|o| o <= seq.saturating_add(1)) || seq >= latest;
            let mut st = c
                .prepare_cached(
                    "SELECT seq, kind, key FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(unavailable)?;
            let items = st
                .query_map(params![seq, limit.min(i64::MAX as usize) as i64], |r| {
                    Ok(Change {
                        seq: r.get(0)?,
                        kind: r.get(1)?,
                        key: r.get(2)?,
                    })
                })
                .map_err(unavailable)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)?;
            drop(st);
            c.commit().map_err(unavailable)?;
            Ok(Changes {
                items,
                latest,
                complete,
            })
        })
    }

    fn put_prompt(
        &self,
        operator_id: &str,
        name: &str,
        wav: &[u8],
        quota: PromptQuota,
    ) -> Result<PromptPut> {
        self.write(|c| {
            // IMMEDIATE: the sizes read are the ones the insert lands beside, whichever
            // process (node) writes next.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let others: Vec<u64> = tx
                .prepare_cached(
                    "SELECT length(wav) FROM prompts WHERE operator_id = ?1 AND name <> ?2",
                )?
                .query_map(params![operator_id, name], |r| r.get::<_, i64>(0))?
                .map(|b| b.map(|b| b.max(0) as u64))
                .collect::<rusqlite::Result<_>>()?;
            let verdict = judge_prompt_put(others, wav.len() as u64, quota);
            if verdict == PromptPut::Saved {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO prompts (operator_id, name, wav, updated_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![operator_id, name, wav, now_ms()])?;
            }
            tx.commit()?;
            Ok(verdict)
        })
        .map_err(unavailable)
    }

    fn delete_prompt(&self, operator_id: &str, name: &str) -> Result<bool> {
        self.write(|c| {
            c.prepare_cached("DELETE FROM prompts WHERE operator_id = ?1 AND name = ?2")?
                .execute(params![operator_id, name])
                .map(|n| n == 1)
        })
        .map_err(unavailable)
    }

    fn prompt(&self, operator_id: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.read(|c| {
            c.prepare_cached("SELECT wav FROM prompts WHERE operator_id = ?1 AND name = ?2")
                .map_err(unavailable)?
                .query_row(params![operator_id, name], |r| r.get(0))
                .optional()
                .map_err(unavailable)
        })
    }

    fn all_prompts(&self) -> Result<Vec<(String, String, Vec<u8>)>> {
        self.read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT operator_id, name, wav FROM prompts ORDER BY operator_id, name",
                )
                .map_err(unavailable)?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(unavailable)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable);
            rows
        })
    }

    fn enqueue_follow_ups(&self, items: &[NewFollowUp]) -> Result<()> {
        let now = now_ms();
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for item in items {
                enqueue(&tx, item, now)?;
            }
            tx.commit()
        })
        .map_err(unavailable)
    }

    fn create_webhook(&self, h: &Webhook, limit: usize) -> Result<()> {
        let events = serde_json::to_string(&h.events).unwrap_or_else(|_| "[]".into());
        // Counted and inserted in one write transaction: other nodes sharing the
        // file wait for it too.
        let added = self
            .write(|c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let count: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM webhooks WHERE operator_id = ?1",
                    params![h.operator_id],
                    |r| r.get(0),
                )?;
                if usize::try_from(count).unwrap_or(usize::MAX) >= limit {
                    return Ok(false);
                }
                tx.execute(
                    &format!(
                        "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                    ),
                    params![h.id, h.operator_id, h.url, h.secret, events, h.created_at],
                )?;
                tx.commit()?;
                Ok(true)
            })
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("webhook {}", h.id))
                } else {
                    unavailable(e)
                }
            })?;
        if !added {
            return Err(StoreError::InUse(format!(
                "an operator has at most {limit} webhooks"
            )));
        }
        Ok(())
    }

    fn list_webhooks(&self, operator_id: &str) -> Result<Vec<Webhook>> {
        self.read(|c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE operator_id = ?1 ORDER BY created_at, id"
                ))
                .map_err(unavailable)?;
            let rows = st.query_map([operator_id], webhook_from).map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })
    }

    fn delete_webhook(&self, operator_id: &str, id: &str) -> Result<bool> {
        self.delete_owned("webhooks", operator_id, id)
    }

    fn all_webhooks(&self) -> Result<Vec<Webhook>> {
        self.read(|c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id"
                ))
                .map_err(unavailable)?;
            let rows = st.query_map([], webhook_from).map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })
    }

    fn get_webhook(&self, id: &str) -> Result<Option<Webhook>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1"),
                [id],
                webhook_from,
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn claim_follow_ups(&self, now: i64, limit: usize, claim_ms: i64) -> Result<Vec<FollowUp>> {
        self.write(|c| {
            // IMMEDIATE: select-then-hide is one step, also against other processes.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // A dead row's next_at is when it was given up (its last claim's).
            tx.prepare_cached(
                "DELETE FROM outbox WHERE id IN \
                 (SELECT id FROM outbox WHERE dead = 1 AND next_at < ?1 ORDER BY next_at LIMIT ?2)",
            )?
            .execute(params![
                now.saturating_sub(OUTBOX_DEAD_RETENTION_MS),
                OUTBOX_DEAD_PRUNED_PER_CLAIM as i64
            ])?;
            let claimed = {
                // Only kinds this version delivers: a row of a kind a newer release
                // added failed the whole claim, every time, and stopped every
                // follow-up of every operator (a review). It waits for a node of
                // that release.
                let kinds = FollowUpKind::TEXTS
                    .iter()
                    .map(|k| format!("'{k}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut st = tx.prepare_cached(&format!(
                    "UPDATE outbox SET next_at = ?2, attempts = attempts + 1 WHERE id IN \
                     (SELECT id FROM outbox WHERE dead = 0 AND next_at <= ?1 AND kind IN ({kinds}) \
                     ORDER BY next_at, id LIMIT ?3) \
                     RETURNING id, kind, operator_id, target, payload, attempts, created_at",
                ))?;
                let until = now.saturating_add(claim_ms);
                // Each row read column by column: one whose values do not decode (a
                // damaged row) is given up (dead) on its own; it failed the claim,
                // every time, and no follow-up went out.
                let rows = st.query_map(params![now, until, limit as i64], |r| {
                    let id: i64 = r.get(0)?;
                    let int = |i| r.get_ref(i).ok().and_then(|v| v.as_i64().ok());
                    let follow_up = (|| {
                        Some(FollowUp {
                            id,
                            item: NewFollowUp {
                                kind: settings_text(r, 1).ok()??.parse().ok()?,
                                operator_id: settings_text(r, 2).ok()??,
                                target: settings_text(r, 3).ok()??,
                                payload: settings_text(r, 4).ok()??,
                            },
                            attempts: u32::try_from(int(5)?).ok()?,
                            created_at: int(6)?,
                            claimed_until: until,
                        })
                    })();
                    Ok((id, follow_up))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut good = Vec::with_capacity(claimed.len());
            for (id, follow_up) in claimed {
                match follow_up {
                    Some(f) => good.push(f),
                    None => {
                        tracing::error!(id, "an outbox row cannot be read: given up");
                        tx.execute("UPDATE outbox SET dead = 1 WHERE id = ?1", [id])?;
                    }
                }
            }
            tx.commit()?;
            Ok(good)
        })
        .map(|mut v| {
            v.sort_by_key(|f| f.id);
            v
        })
        .map_err(unavailable)
    }

    fn follow_up_delivered(&self, id: i64) -> Result<()> {
        self.write(|c| c.execute("DELETE FROM outbox WHERE id = ?1", [id]))
            .map_err(unavailable)?;
        Ok(())
    }

    fn follow_up_failed(
        &self,
        claim: OutboxClaim,
        retry_at: Option<i64>,
        error: &str,
    ) -> Result<bool> {
        let written = self
            .write(|c| {
                c.execute(
                    "UPDATE outbox SET next_at = COALESCE(?2, next_at), dead = ?3, last_error = ?4 \
                     WHERE id = ?1 AND next_at = ?5 AND attempts = ?6 AND dead = 0",
                    params![
                        claim.id,
                        retry_at,
                        retry_at.is_none(),
                        error,
                        claim.until,
                        claim.attempts
                    ],
                )
            })
            .map_err(unavailable)?;
        Ok(written == 1)
    }

    fn release_follow_ups(&self, claims: &[(OutboxClaim, i64)]) -> Result<()> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut st = tx.prepare_cached(
                    "UPDATE outbox SET next_at = ?2, attempts = MAX(attempts - 1, 0) \
                     WHERE id = ?1 AND next_at = ?3 AND attempts = ?4 AND dead = 0",
                )?;
                for (c, next_at) in claims {
                    st.execute(params![c.id, next_at, c.until, c.attempts])?;
                }
            }
            tx.commit()
        })
        .map_err(unavailable)
    }

    fn take_caller_sms(&self, caller: &str, day: i64, call_id: &str, cap: u32) -> Result<bool> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.prepare_cached("DELETE FROM caller_sms WHERE day < ?1")?
                .execute([day.saturating_sub(1)])?;
            let allowed = take_counted(&tx, &CALLER_SMS, (caller, day), call_id, cap)?;
            tx.commit()?;
            Ok(allowed)
        })
        .map_err(unavailable)
    }

    fn take_notices(&self, claims: &[NoticeClaim<'_>], cap: u32) -> Result<Vec<bool>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        // Counts are kept for this clock hour and the two before, whatever hours the
        // claims name: a node whose writer stalled claims for an hour past, and
        // another node's prune by its own claims' hours had emptied that hour's count.
        let kept_from = NoticeClaim::hour_of(now_ms()).saturating_sub(2);
        self.write(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.prepare_cached("DELETE FROM notices WHERE hour < ?1")?
                .execute([kept_from])?;
            let allowed = claims
                .iter()
                .map(|c| take_counted(&tx, &NOTICES, (c.number, c.hour), c.call_id, cap))
                .collect::<rusqlite::Result<Vec<bool>>>()?;
            tx.commit()?;
            Ok(allowed)
        })
        .map_err(unavailable)
    }

    fn follow_up_counts(&self) -> Result<(u64, u64)> {
        self.read(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(dead = 0), 0), COALESCE(SUM(dead = 1), 0) FROM outbox",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(unavailable)
        })
    }

    fn earlier_call(
        &self,
        advertiser_id: &str,
        caller: &str,
        since_ms: i64,
        (before_ms, before_id): (i64, &str),
    ) -> Result<bool> {
        // Once per finished call with a duplicate window: the statement is cached on
        // the pooled reader, not prepared each time.
        self.read(|c| {
            c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM calls WHERE advertiser_id = ?1 AND caller_number = ?2 \
                 AND started_at >= ?3 AND (started_at, call_id) < (?4, ?5)) \
                 OR EXISTS (SELECT 1 FROM active_calls WHERE advertiser_id = ?1 AND caller_number = ?2 \
                 AND started_at >= ?3 AND (started_at, call_id) < (?4, ?5))",
            )
            .and_then(|mut st| {
                st.query_row(
                    params![advertiser_id, caller, since_ms, before_ms, before_id],
                    |r| r.get::<_, bool>(0),
                )
            })
            .map_err(unavailable)
        })
    }

    fn get_call(&self, operator_id: &str, call_id: &str) -> Result<Option<CallRecord>> {
        self.read(|c| {
            c.query_row(
                &format!(
                    "SELECT {CALL_COLUMNS} FROM calls WHERE call_id = ?1 AND operator_id = ?2"
                ),
                [call_id, operator_id],
                call_from,
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn scan_calls(&self, q: &CallQuery, visit: &mut dyn FnMut(CallRecord) -> bool) -> Result<()> {
        if q.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(StoreError::scan_timed_out());
        }
        if q.state == CallState::Active {
            return self.scan_active(q, visit);
        }
        let mut sql = format!("SELECT {CALL_COLUMNS} FROM calls WHERE operator_id = ?");
        let mut args: Vec<Value> = vec![Value::Text(q.operator_id.clone())];
        let mut filter = |clause: &str, v: Value| {
            sql.push_str(clause);
            args.push(v);
        };
        if let Some(t) = q.from_ms {
            filter(" AND started_at >= ?", Value::Integer(t));
        }
        if let Some(t) = q.to_ms {
            filter(" AND started_at < ?", Value::Integer(t));
        }
        if let Some(a) = &q.advertiser_id {
            filter(" AND advertiser_id = ?", Value::Text(a.clone()));
        }
        if let Some(n) = &q.tracking_number {
            filter(" AND tracking_number = ?", Value::Text(n.clone()));
        }
        if let Some(r) = q.result {
            filter(" AND result = ?", Value::Text(r.as_str().into()));
        }
        if let Some(v) = q.validity {
            filter(" AND validity = ?", Value::Text(v.as_str().into()));
        }
        let (cmp, dir) = match q.order {
            SortOrder::Asc => (">", "ASC"),
            SortOrder::Desc => ("<", "DESC"),
        };
        if let Some((t, id)) = &q.after {
            sql.push_str(&format!(
                " AND (started_at {cmp} ? OR (started_at = ? AND call_id {cmp} ?))"
            ));
            args.extend([
                Value::Integer(*t),
                Value::Integer(*t),
                Value::Text(id.clone()),
            ]);
        }
        sql.push_str(&format!(" ORDER BY started_at {dir}, call_id {dir}"));
        if let Some(limit) = q.limit {
            // Bound, not formatted: a usize past i64::MAX is not valid SQL.
            sql.push_str(" LIMIT ?");
            args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        }
        self.read_until(q.deadline, |c| {
            let mut st = c.prepare(&sql).map_err(unavailable)?;
            let mut rows = st.query(params_from_iter(args)).map_err(unavailable)?;
            while let Some(row) = rows.next().map_err(unavailable)? {
                let record = call_from(row).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if !visit(record) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn ping(&self) -> Result<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(unavailable))
    }
}

impl SqliteStore {
    /// The operator's calls in progress matching `q` (the table holds only calls in
    /// progress: few rows, filtered here), in the query's order.
    fn scan_active(&self, q: &CallQuery, visit: &mut dyn FnMut(CallRecord) -> bool) -> Result<()> {
        let rows: Vec<String> = self.read(|c| {
            let mut st = c
                .prepare_cached("SELECT record FROM active_calls WHERE operator_id = ?1")
                .map_err(unavailable)?;
            let rows = st
                .query_map([&q.operator_id], |r| r.get::<_, String>(0))
                .map_err(unavailable)?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(unavailable);
            rows
        })?;
        let mut calls: Vec<CallRecord> = rows
            .into_iter()
            .map(active_from)
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|r| active_matches(q, r))
            .collect();
        calls.sort_by(|a, b| (a.started_at, &a.call_id).cmp(&(b.started_at, &b.call_id)));
        if q.order == SortOrder::Desc {
            calls.reverse();
        }
        for r in calls.into_iter().take(q.limit.unwrap_or(usize::MAX)) {
            if !visit(r) {
                break;
            }
        }
        Ok(())
    }
}

/// Whether an active call matches a query's filters and lies after its cursor.
fn active_matches(q: &CallQuery, r: &CallRecord) -> bool {
    let after = match (&q.after, q.order) {
        (None, _) => true,
        (Some((t, id)), SortOrder::Asc) => (r.started_at, &r.call_id) > (*t, id),
        (Some((t, id)), SortOrder::Desc) => (r.started_at, &r.call_id) < (*t, id),
    };
    after
        && q.from_ms.is_none_or(|t| r.started_at >= t)
        && q.to_ms.is_none_or(|t| r.started_at < t)
        && q.advertiser_id
            .as_ref()
            .is_none_or(|a| &r.advertiser_id == a)
        && q.tracking_number
            .as_ref()
            .is_none_or(|n| &r.tracking_number == n)
        && q.result.is_none_or(|x| r.result == x)
        && q.validity.is_none_or(|v| r.validity == v)
}

#[cfg(test)]
mod tests {
    use super::schema::MIGRATIONS;
    use super::*;

    #[test]
    fn conformance_suite_passes_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        crate::conformance::run_all(&store);
        crate::conformance::the_webhook_limit_holds_against_parallel_creations(&store);
    }

    #[test]
    fn nodes_starting_together_on_a_new_file_migrate_it_once() {
        // Three nodes of a cluster on one machine, started at the same instant on a
        // file that does not exist yet: each migration is applied once, nobody fails.
        for round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.db");
            let start = std::sync::Arc::new(std::sync::Barrier::new(3));
            let openers: Vec<_> = (0..3)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        SqliteStore::open(&path).map(|_| ())
                    })
                })
                .collect();
            for o in openers {
                let opened = o.join().unwrap();
                assert!(opened.is_ok(), "round {round}: {opened:?}");
            }
        }
    }

    /// A number row this version cannot read (one a newer version wrote, with a field
    /// this one does not know) is an error of its own, naming the number; the others
    /// still read.
    #[test]
    fn an_unreadable_number_is_reported_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let op = s.create_operator("a").unwrap();
        let adv = s.create_advertiser(&op.id, "shop", None).unwrap();
        let good = crate::conformance::sample_number(&op.id, &adv.id);
        let mut bad = crate::conformance::sample_number(&op.id, &adv.id);
        bad.number = format!("{}9", &good.number[..good.number.len() - 1]);
        let mut damaged = crate::conformance::sample_number(&op.id, &adv.id);
        damaged.number = format!("{}8", &good.number[..good.number.len() - 1]);
        s.create_number(&good).unwrap();
        s.create_number(&bad).unwrap();
        s.create_number(&damaged).unwrap();
        s.write(|c| {
            c.execute(
                "UPDATE numbers SET settings = '{\"from_a_newer_version\":1,' || substr(settings, 2) WHERE number = ?1",
                params![bad.number],
            )?;
            // Not text at all (a damaged page, a foreign tool): that number's error
            // too, not the whole load's.
            c.execute(
                "UPDATE numbers SET settings = x'ff00fe' WHERE number = ?1",
                params![damaged.number],
            )?;
            Ok(())
        })
        .unwrap();
        let all = s.all_numbers().unwrap();
        assert_eq!(all.len(), 3);
        let read: Vec<&TrackingNumber> = all.iter().filter_map(|(_, n)| n.as_ref().ok()).collect();
        assert_eq!(read, vec![&good]);
        let unread: Vec<String> = all
            .iter()
            .filter_map(|(_, n)| n.as_ref().err())
            .map(|e| e.to_string())
            .collect();
        assert!(
            unread.len() == 2
                && unread.iter().any(|e| e.contains(&bad.number))
                && unread.iter().any(|e| e.contains(&damaged.number)),
            "{unread:?}"
        );
        // The operator's list goes on without them (it failed whole).
        assert_eq!(s.list_numbers(&op.id, None).unwrap(), vec![good.clone()]);
        for unreadable in [&bad.number, &damaged.number] {
            assert!(matches!(
                s.get_number(unreadable),
                Err(StoreError::Corrupt(_))
            ));
        }
        // A change made from a read before it became unreadable is not written: the
        // row is not what was read (it was a 500; the API reads again and says 409).
        for before in [&bad, &damaged] {
            assert_eq!(s.update_number(before, before).unwrap(), Update::Changed);
        }
        assert!(matches!(
            s.get_number(&bad.number),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// Rows a newer release wrote do not stop the rest: an outbox row of a kind this
    /// version does not deliver is left for a node of that release (the claim failed
    /// whole, every time, and no follow-up went out); a call in progress whose record
    /// cannot be read (a newer release's, a damaged one) is left out of its node's list
    /// (which failed whole: no takeover of the others, no start after a crash).
    #[test]
    fn rows_of_a_newer_release_do_not_stop_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let op = s.create_operator("a").unwrap();
        let item = |target: &str| NewFollowUp {
            kind: FollowUpKind::Webhook,
            operator_id: op.id.clone(),
            target: target.into(),
            payload: "{}".into(),
        };
        let targets = [
            "https://a.example/1",
            "https://a.example/2",
            "https://a.example/3",
        ];
        s.enqueue_follow_ups(&targets.map(item)).unwrap();
        s.write(|c| {
            c.execute(
                "UPDATE outbox SET kind = 'fax' WHERE target = 'https://a.example/1'",
                [],
            )?;
            // A damaged one (its payload not text) is given up on its own.
            c.execute(
                "UPDATE outbox SET payload = x'ff00' WHERE target = 'https://a.example/3'",
                [],
            )
        })
        .unwrap();
        let claimed = s.claim_follow_ups(i64::MAX / 2, 10, 1_000).unwrap();
        let targets: Vec<&str> = claimed.iter().map(|f| f.item.target.as_str()).collect();
        assert_eq!(targets, vec!["https://a.example/2"]);
        let dead: i64 = s
            .read(|c| {
                c.query_row(
                    "SELECT dead FROM outbox WHERE target = 'https://a.example/3'",
                    [],
                    |r| r.get(0),
                )
                .map_err(unavailable)
            })
            .unwrap();
        assert_eq!(dead, 1);

        let calls: Vec<ActiveCall> = ["call_a", "call_b", "call_c", "call_d"]
            .iter()
            .map(|id| crate::conformance::sample_active_call(&op.id, id, "n1", 1))
            .collect();
        s.upsert_active_calls(&calls).unwrap();
        s.write(|c| {
            c.execute(
                // A result a newer release added.
                "UPDATE active_calls SET record = json_set(record, '$.result', 'transferred') WHERE call_id = 'call_a'",
                [],
            )?;
            c.execute("UPDATE active_calls SET record = x'ff00' WHERE call_id = 'call_b'", [])?;
            c.execute("UPDATE active_calls SET epoch = 'x' WHERE call_id = 'call_d'", [])
        })
        .unwrap();
        let left: Vec<String> = s
            .active_calls_of("n1")
            .unwrap()
            .into_iter()
            .map(|a| a.record.call_id)
            .collect();
        assert_eq!(left, vec!["call_c".to_string()]);

        // A value that does not decode is Corrupt, not the store being unavailable
        // (loops that wait out an outage waited on it for ever).
        let adv = s.create_advertiser(&op.id, "shop", None).unwrap();
        s.write(|c| {
            c.execute(
                "UPDATE advertisers SET name = x'ff00' WHERE id = ?1",
                [&adv.id],
            )
        })
        .unwrap();
        assert!(matches!(
            s.get_advertiser(&op.id, &adv.id),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// An issue looks past free numbers whose settings cannot be read, at most
    /// [`UNREADABLE_SKIPPED`] of them: then the pool counts as exhausted (its overflow).
    #[test]
    fn an_issue_looks_past_a_bounded_number_of_unreadable_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let op = s.create_operator("a").unwrap();
        let adv = s.create_advertiser(&op.id, "shop", None).unwrap();
        let size = UNREADABLE_SKIPPED + 2;
        let (pool, numbers) =
            crate::conformance::sample_pool(&op.id, &adv.id, PoolMode::OneTime, size, 60, 0);
        s.create_pool(&pool, &numbers).unwrap();
        let unreadable = |upto: usize| {
            for n in &pool.numbers[..upto] {
                s.write(|c| {
                    c.execute(
                        "UPDATE numbers SET settings = '{\"from_a_newer_version\":1,' || substr(settings, 2) WHERE number = ?1 AND settings NOT LIKE '{\"from_a_newer_version\"%'",
                        params![n],
                    )
                })
                .unwrap();
            }
        };
        let issue = || {
            s.issue_lease(&pool, None, &BTreeMap::new(), 1_000)
                .unwrap()
                .map(|l| l.number)
        };
        unreadable(3);
        assert_eq!(
            issue(),
            Some(pool.numbers[3].clone()),
            "the first readable one"
        );
        unreadable(UNREADABLE_SKIPPED + 1);
        // The first UNREADABLE_SKIPPED free ones are unreadable (the fourth is leased):
        // exhausted, though one further on could be read.
        assert_eq!(issue(), None);
    }

    /// The lease history is pruned as it grows: each issue deletes up to 16 rows whose
    /// lease ended over a day before, the longest ended first; live leases stay, and a
    /// long-lived lease issued first does not stop the pruning of those after it.
    #[test]
    fn the_lease_history_is_pruned_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let op = s.create_operator("a").unwrap();
        let adv = s.create_advertiser(&op.id, "shop", None).unwrap();
        let (pool, numbers) =
            crate::conformance::sample_pool(&op.id, &adv.id, PoolMode::OneTime, 20, 60, 0);
        s.create_pool(&pool, &numbers).unwrap();
        let rows = |s: &SqliteStore| {
            s.read(|c| {
                c.query_row("SELECT COUNT(*) FROM leases", [], |r| r.get::<_, i64>(0))
                    .map_err(unavailable)
            })
            .unwrap()
        };
        let none = BTreeMap::new();
        // First, and so lowest in id: a lease of another pool held for a week.
        let (week, week_numbers) =
            crate::conformance::sample_pool(&op.id, &adv.id, PoolMode::OneTime, 1, 604_800, 0);
        s.create_pool(&week, &week_numbers).unwrap();
        s.issue_lease(&week, None, &none, 1_000).unwrap().unwrap();
        for _ in 0..20 {
            s.issue_lease(&pool, None, &none, 1_000).unwrap().unwrap();
        }
        let ended = 1_000 + 60_000;
        s.issue_lease(&pool, None, &none, ended + LEASE_HISTORY_MS)
            .unwrap()
            .unwrap();
        assert_eq!(rows(&s), 22, "nothing ended over a day ago yet");
        let later = ended + LEASE_HISTORY_MS + 1;
        s.issue_lease(&pool, None, &none, later).unwrap().unwrap();
        assert_eq!(rows(&s), 23 - PRUNE_PER_LEASE, "16 old rows gone");
        let live = s.issue_lease(&pool, None, &none, later).unwrap().unwrap();
        assert_eq!(
            rows(&s),
            4,
            "the last old rows gone; the week's lease and the three recent kept"
        );
        let found = s.lease_at(&live.number, later).unwrap();
        assert_eq!(found.map(|l| l.number), Some(live.number));
    }

    #[test]
    fn two_connections_to_one_file_never_share_a_lease() {
        // Two handles on one file stand for two nodes sharing the embedded store.
        let dir = tempfile::tempdir().unwrap();
        let a = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let b = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        crate::conformance::concurrent_issuers_never_share_a_number(&[&a, &b]);
        crate::conformance::the_client_cap_holds_against_parallel_issuers(&[&a, &b]);
        crate::conformance::parallel_uploads_never_pass_the_prompt_cap(&[&a, &b]);
    }

    /// An operator's calls in progress are read through an index (the query the API's
    /// `state=active` listing runs), not by a scan of every operator's.
    #[test]
    fn calls_in_progress_are_found_by_operator_through_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let _store = SqliteStore::open(&path).unwrap();
        let c = open_connection(&path, Durability::Full).unwrap();
        let plan: Vec<String> = c
            .prepare("EXPLAIN QUERY PLAN SELECT record FROM active_calls WHERE operator_id = ?1")
            .unwrap()
            .query_map(["op_1"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("USING INDEX active_calls_by_operator")),
            "{plan:?}"
        );
    }

    /// Another process holds the write lock for 300 ms (as a node committing does): a
    /// call-log batch, which checks ownership before it writes, waits for it (the busy
    /// timeout) instead of failing at once.
    #[test]
    fn a_batch_that_reads_first_waits_for_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).unwrap();
        let op = store.create_operator("op").unwrap();
        let call = crate::conformance::sample_call(&op.id, "adv_1", 1_000);
        let id = call.call_id.clone();
        let mut other = open_connection(&path, Durability::Full).unwrap();
        let tx = other
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        let (started, began) = std::sync::mpsc::channel();
        let writing = std::thread::spawn(move || {
            started.send(()).unwrap();
            let r = store.insert_calls(&[call], &[]);
            (r, store)
        });
        began.recv().unwrap();
        // The other writer's transaction lasts 300 ms from the batch's start (what it
        // does, not a wait for the batch), and the batch is still waiting at its end.
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            !writing.is_finished(),
            "the batch waits for the other writer"
        );
        tx.commit().unwrap();
        let (r, store) = writing.join().unwrap();
        r.expect("written once the other writer is done");
        assert!(store.get_call(&op.id, &id).unwrap().is_some());
    }

    #[test]
    fn keys_made_before_ids_get_one_and_no_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            // The schema as it was before API keys had ids.
            let ids = MIGRATIONS
                .iter()
                .position(|m| m.contains("api_keys ADD COLUMN id"))
                .unwrap();
            let mut conn = open_connection(&path, Durability::Full).unwrap();
            for (i, sql) in MIGRATIONS[..ids].iter().enumerate() {
                conn.execute_batch(sql).unwrap();
                conn.pragma_update(None, "user_version", (i + 1) as i64)
                    .unwrap();
            }
            let tx = conn.transaction().unwrap();
            tx.execute(
                "INSERT INTO operators (id, name, created_at) VALUES ('op_old', 'old', 1)",
                [],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO api_keys (key_hash, operator_id, created_at) VALUES ('h', 'op_old', 1)",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let keys = store.list_api_keys("op_old").unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys[0].id.starts_with("key_"), "{:?}", keys[0]);
        assert_eq!(keys[0].prefix, None);
        assert!(store.revoke_api_key("op_old", &keys[0].id, None).unwrap());
        assert_eq!(store.key_owner("h").unwrap(), None);
    }

    #[test]
    fn reopening_keeps_data_and_does_not_remigrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let id = SqliteStore::open(&path)
            .unwrap()
            .create_operator("a")
            .unwrap()
            .id;
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(again.get_operator(&id).unwrap().unwrap().name, "a");
    }
}
