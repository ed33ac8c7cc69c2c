//! [`ScyllaStore`]: the [`Store`] trait on the `scylla` driver. Statements are in
//! `queries.rs`, decisions in `logic.rs`; this file reads, decides and writes.

use super::exec;
use super::logic::*;
use super::ownership::{epoch_column, epoch_of};
use super::queries::{self as q, Kind};
use super::schema;
use super::settings::{Consistency, ScyllaSettings};
use crate::model::*;
use crate::{judge_prompt_put, now_ms, PromptPut, PromptQuota, Result, Store, StoreError};
use futures_util::StreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency as Cl, SerialConsistency};
use scylla::value::{CqlValue, Row};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A row of `api_keys_by_operator` as [`q::KEYS_OF`] reads it: id, key hash, prefix,
/// creation time, advertiser.
type KeyRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// Rows of `calls_by_caller` live this long: the duplicate check sees calls of the last
/// 400 days (a `duplicate_window_seconds` longer than that sees only those).
pub(super) const CALLER_INDEX_TTL_SECONDS: i32 = 400 * 86_400;
/// Lease history (attribution of calls to leases) is kept 35 days after the lease ends.
pub(super) const LEASE_HISTORY_MARGIN_SECONDS: i64 = 35 * 86_400;
/// A session's slot rows stay a day past their lease and cool-down.
pub(super) const SESSION_SLOT_MARGIN_SECONDS: i64 = 86_400;
/// A capped count kept as slots 0..cap of a partition (see `Inner::take_slot`): its
/// statements, how long a slot lives, and what it counts (for errors).
struct CappedCount {
    read: &'static str,
    take: &'static str,
    ttl_seconds: i32,
    what: &'static str,
}

/// Caller SMS counts are kept three days (the trait forgets those older than yesterday).
const CALLER_SMS: CappedCount = CappedCount {
    read: q::SMS_OF,
    take: q::SMS_TAKE,
    ttl_seconds: 3 * 86_400,
    what: "caller SMS counts",
};
/// A notice count lives for its hour and two more (the writer asks about the hour a
/// call ended in, which may be the one before).
const NOTICES: CappedCount = CappedCount {
    read: q::NOTICES_OF,
    take: q::NOTICE_TAKE,
    ttl_seconds: 3 * 3_600,
    what: "notice counts",
};
/// Compare-and-set rounds before a contended operation reports the store unavailable.
pub(super) const CAS_ROUNDS: usize = 16;
/// Pool numbers tried per read of the pool before reading it again.
pub(super) const CANDIDATES_PER_READ: usize = 32;
/// Calls of one call-log batch written at once.
pub(super) const CONCURRENT_CALLS: usize = 32;
/// Rows per page of scans (call logs, start-up loads).
const PAGE_ROWS: i32 = 1_000;

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(corrupt)
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// The outcome of a compare-and-set: applied, and the row's current values when not
/// (the columns of the condition, or the whole row for `IF NOT EXISTS`).
pub(super) struct Cas {
    pub(super) applied: bool,
    pub(super) row: HashMap<String, CqlValue>,
}

impl Cas {
    pub(super) fn i64(&self, name: &str) -> Option<i64> {
        match self.row.get(name) {
            Some(CqlValue::BigInt(v)) => Some(*v),
            _ => None,
        }
    }

    pub(super) fn text(&self, name: &str) -> Option<String> {
        match self.row.get(name) {
            Some(CqlValue::Text(v)) | Some(CqlValue::Ascii(v)) => Some(v.clone()),
            _ => None,
        }
    }

    pub(super) fn bool(&self, name: &str) -> Option<bool> {
        match self.row.get(name) {
            Some(CqlValue::Boolean(v)) => Some(*v),
            _ => None,
        }
    }

    pub(super) fn i64_list(&self, name: &str) -> Option<Vec<i64>> {
        match self.row.get(name) {
            Some(CqlValue::List(items)) => Some(
                items
                    .iter()
                    .filter_map(|v| match v {
                        CqlValue::BigInt(i) => Some(*i),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// The ScyllaDB backend. Opened with [`ScyllaStore::connect`]: creates the keyspace if
/// needed, applies pending migrations, prepares every statement.
pub struct ScyllaStore {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

pub(super) struct Inner {
    session: Session,
    prepared: HashMap<&'static str, PreparedStatement>,
    /// The block of outbox ids this process hands out: (next, end).
    ids: tokio::sync::Mutex<(i64, i64)>,
}

impl Drop for ScyllaStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl ScyllaStore {
    /// Connects to the cluster, creates the keyspace (replication from `settings`) if it
    /// does not exist, applies pending migrations and prepares the statements.
    pub fn connect(settings: &ScyllaSettings) -> Result<ScyllaStore> {
        if let Some(problem) = settings.problem() {
            return Err(StoreError::Unavailable(problem));
        }
        let runtime = exec::runtime().map_err(unavailable)?;
        let handle = runtime.handle().clone();
        let inner = match exec::block_on(&handle, open(settings)) {
            Ok(inner) => inner,
            Err(e) => {
                // Dropping a runtime inside another one's async context panics (the node
                // opens its store there): let its threads go in the background.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        Ok(ScyllaStore {
            inner: Arc::new(inner),
            runtime: Some(runtime),
            handle,
        })
    }

    fn wait<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        exec::block_on(&self.handle, f)
    }
}

fn tls_config(files: &super::settings::TlsFiles) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| StoreError::Unavailable(format!("{}: {e}", p.display())))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(&files.ca_file)?) {
        let cert = cert.map_err(|e| StoreError::Unavailable(format!("store.tls.ca_file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| StoreError::Unavailable(format!("store.tls.ca_file: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unavailable)?
        .with_root_certificates(roots);
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| StoreError::Unavailable(format!("store.tls.cert_file: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| StoreError::Unavailable(format!("store.tls.key_file: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| StoreError::Unavailable(format!("store.tls: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

async fn open(settings: &ScyllaSettings) -> Result<Inner> {
    let (consistency, serial) = match settings.consistency {
        Consistency::LocalQuorum => (Cl::LocalQuorum, SerialConsistency::LocalSerial),
        Consistency::Quorum => (Cl::Quorum, SerialConsistency::Serial),
    };
    // Token-aware routing (requests go to a replica of their partition), preferring
    // the local datacenter when one is named.
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &settings.datacenter {
        policy = policy.prefer_datacenter(dc.clone());
    }
    let profile = ExecutionProfile::builder()
        .consistency(consistency)
        .serial_consistency(Some(serial))
        .request_timeout(Some(settings.request_timeout))
        .load_balancing_policy(policy.build())
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&settings.nodes)
        .connection_timeout(settings.request_timeout)
        .default_execution_profile_handle(profile.into_handle());
    if let Some(user) = &settings.username {
        builder = builder.user(user.clone(), settings.password.clone().unwrap_or_default());
    }
    if let Some(files) = &settings.tls {
        builder = builder.tls_context(Some(tls_config(files)?));
    }
    let session = builder.build().await.map_err(unavailable)?;

    let keyspace = schema::keyspace_cql(
        &settings.keyspace,
        settings.replication,
        settings.datacenter.as_deref(),
    );
    session
        .query_unpaged(keyspace, ())
        .await
        .map_err(unavailable)?;
    session
        .await_schema_agreement()
        .await
        .map_err(unavailable)?;
    session
        .use_keyspace(&settings.keyspace, false)
        .await
        .map_err(unavailable)?;
    super::migrate::migrate(&session, &settings.keyspace).await?;

    let mut prepared = HashMap::new();
    for (cql, kind) in q::ALL {
        let mut st = session
            .prepare(*cql)
            .await
            .map_err(|e| StoreError::Unavailable(format!("preparing `{cql}`: {e}")))?;
        // Reads may be retried and sent speculatively; writes are retried by the
        // callers that know they are idempotent.
        st.set_is_idempotent(matches!(kind, Kind::Read | Kind::Scan));
        if *kind == Kind::Scan {
            st.set_page_size(PAGE_ROWS);
        }
        prepared.insert(*cql, st);
    }
    let inner = Inner {
        session,
        prepared,
        ids: tokio::sync::Mutex::new((0, 0)),
    };
    inner.first::<(Option<String>,)>(q::PING, ()).await?;
    Ok(inner)
}

impl Inner {
    /// A place for `call_id` among the `cap` slots of a capped count's partition
    /// (`key`, `period`): a caller's SMS of a day ([`Store::take_caller_sms`]), a
    /// number's notices of an hour ([`Store::take_notices`]). True when it has one: its
    /// own, or the lowest free slot, taken by compare-and-set (read again when another
    /// node took it first); false past the cap.
    async fn take_slot(
        &self,
        count: &CappedCount,
        (key, period): (&str, i64),
        call_id: &str,
        cap: u32,
    ) -> Result<bool> {
        for _ in 0..CAS_ROUNDS {
            let taken: Vec<(i32, String)> = self
                .rows::<(i32, Option<String>)>(count.read, (key, period))
                .await?
                .into_iter()
                .map(|(s, id)| (s, id.unwrap_or_default()))
                .collect();
            match sms_slot(&taken, call_id, cap) {
                SmsSlot::AlreadyCounted => return Ok(true),
                SmsSlot::OverCap => return Ok(false),
                SmsSlot::Take(slot) => {
                    let values = (key, period, slot, call_id, count.ttl_seconds);
                    if self.cas(count.take, values).await?.applied {
                        return Ok(true);
                    }
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "{} are contended; try again",
            count.what
        )))
    }

    /// Registers the incarnation after `epoch` of `info`'s node (compare-and-set on
    /// `epoch`, read with its sign of life `last_seen`): the new epoch and that sign,
    /// or None if another registration came first.
    async fn next_incarnation(
        &self,
        info: &NodeInfo,
        now_ms: i64,
        epoch: i64,
        last_seen: Option<i64>,
    ) -> Result<Option<(u64, Option<i64>)>> {
        let next = epoch.saturating_add(1);
        let (cluster, api) = (info.cluster_addr.as_deref(), info.api_addr.as_deref());
        let values = (
            next,
            now_ms,
            now_ms,
            cluster,
            api,
            info.node_id.as_str(),
            epoch,
        );
        let applied = self.cas(q::NODE_NEXT, values).await?.applied;
        Ok(applied.then(|| (epoch_of(next), last_seen)))
    }

    pub(super) fn st(&self, cql: &'static str) -> Result<&PreparedStatement> {
        self.prepared
            .get(cql)
            .ok_or_else(|| StoreError::Corrupt(format!("statement not prepared: {cql}")))
    }

    pub(super) async fn write(&self, cql: &'static str, values: impl SerializeRow) -> Result<()> {
        self.session
            .execute_unpaged(self.st(cql)?, values)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Every row of a (paged) read.
    pub(super) async fn rows<T>(
        &self,
        cql: &'static str,
        values: impl SerializeRow,
    ) -> Result<Vec<T>>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let mut out = Vec::new();
        self.each(cql, values, |row: T| {
            out.push(row);
            true
        })
        .await?;
        Ok(out)
    }

    /// Streams the rows of a (paged) read to `visit` until it returns false.
    pub(super) async fn each<T>(
        &self,
        cql: &'static str,
        values: impl SerializeRow,
        mut visit: impl FnMut(T) -> bool,
    ) -> Result<()>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let pager = self
            .session
            .execute_iter(self.st(cql)?.clone(), values)
            .await
            .map_err(unavailable)?;
        let mut rows = pager.rows_stream::<T>().map_err(corrupt)?;
        while let Some(row) = rows.next().await {
            if !visit(row.map_err(unavailable)?) {
                break;
            }
        }
        Ok(())
    }

    pub(super) async fn first<T>(
        &self,
        cql: &'static str,
        values: impl SerializeRow,
    ) -> Result<Option<T>>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let result = self
            .session
            .execute_unpaged(self.st(cql)?, values)
            .await
            .map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(corrupt)?;
        rows.maybe_first_row::<T>().map_err(corrupt)
    }

    pub(super) async fn cas(&self, cql: &'static str, values: impl SerializeRow) -> Result<Cas> {
        let result = self
            .session
            .execute_unpaged(self.st(cql)?, values)
            .await
            .map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(corrupt)?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let Some(row) = rows.maybe_first_row::<Row>().map_err(corrupt)? else {
            return Err(StoreError::Corrupt(format!("no [applied] row from {cql}")));
        };
        let row: HashMap<String, CqlValue> = names
            .into_iter()
            .zip(row.columns)
            .filter_map(|(n, v)| v.map(|v| (n, v)))
            .collect();
        let applied = matches!(row.get("[applied]"), Some(CqlValue::Boolean(true)));
        Ok(Cas { applied, row })
    }

    /// `n` outbox ids from this process's block, taking a new block by compare-and-set
    /// when it runs out.
    pub(super) async fn next_ids(&self, n: usize) -> Result<Vec<i64>> {
        let mut block = self.ids.lock().await;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if block.0 >= block.1 {
                *block = self.take_id_block().await?;
            }
            out.push(block.0);
            block.0 += 1;
        }
        Ok(out)
    }

    pub(super) async fn take_id_block(&self) -> Result<(i64, i64)> {
        for _ in 0..CAS_ROUNDS {
            let next = self
                .first::<(Option<i64>,)>(q::ID_GET, ("outbox",))
                .await?
                .and_then(|(n,)| n);
            match next {
                None => {
                    if self
                        .cas(q::ID_FIRST, ("outbox", 1 + ID_BLOCK))
                        .await?
                        .applied
                    {
                        return Ok((1, 1 + ID_BLOCK));
                    }
                }
                Some(start) => {
                    let end = start.saturating_add(ID_BLOCK);
                    if self.cas(q::ID_NEXT, (end, "outbox", start)).await?.applied {
                        return Ok((start, end));
                    }
                }
            }
        }
        Err(StoreError::Unavailable(
            "outbox id blocks are contended".into(),
        ))
    }

    pub(super) async fn enqueue(&self, item: &NewFollowUp, id: i64, now: i64) -> Result<()> {
        self.write(
            q::OB_INSERT,
            (
                shard_of(id),
                id,
                item.kind.as_str(),
                item.operator_id.as_str(),
                item.target.as_str(),
                item.payload.as_str(),
                now,
                now,
            ),
        )
        .await
    }

    pub(super) async fn get_operator(&self, id: &str) -> Result<Option<Operator>> {
        Ok(self
            .first::<(String, Option<String>, Option<i64>)>(q::OP_GET, (id,))
            .await?
            .map(|(id, name, created_at)| Operator {
                id,
                name: name.unwrap_or_default(),
                created_at: created_at.unwrap_or(0),
            }))
    }

    /// Writes a new key: its row by hash (a compare-and-set: a hash taken is a
    /// conflict), then its row in the operator's listing.
    pub(super) async fn put_key(&self, key: &ApiKey, key_hash: &str) -> Result<()> {
        let (op, id) = (key.operator_id.as_str(), key.id.as_str());
        let (prefix, adv) = (key.prefix.as_deref(), key.advertiser_id.as_deref());
        let values = (key_hash, id, op, prefix, key.created_at, adv);
        if !self.cas(q::KEY_INSERT, values).await?.applied {
            return Err(StoreError::Conflict("api key".into()));
        }
        let listed = (op, id, key_hash, prefix, key.created_at, adv);
        self.write(q::KEY_INDEX_INSERT, listed).await
    }

    /// Deletes a key: its row by hash first (it stops working), then its row in the
    /// operator's listing (a listing row without a hash, from a failed write, is
    /// deleted alone).
    pub(super) async fn drop_key(
        &self,
        operator_id: &str,
        key_id: &str,
        key_hash: Option<&str>,
    ) -> Result<()> {
        if let Some(hash) = key_hash {
            self.write(q::KEY_DELETE, (hash,)).await?;
        }
        self.write(q::KEY_INDEX_DELETE, (operator_id, key_id)).await
    }

    /// The operator's keys as listed, or with `advertiser` that advertiser's alone.
    async fn keys_of(&self, operator_id: &str, advertiser: Option<&str>) -> Result<Vec<KeyRow>> {
        let mut keys = self.rows::<KeyRow>(q::KEYS_OF, (operator_id,)).await?;
        keys.retain(|k| advertiser.is_none_or(|a| k.4.as_deref() == Some(a)));
        Ok(keys)
    }

    /// Deletes the operator's keys, or with `advertiser` that advertiser's alone.
    pub(super) async fn drop_keys_of(
        &self,
        operator_id: &str,
        advertiser: Option<&str>,
    ) -> Result<()> {
        for (key_id, hash, _, _, _) in self.keys_of(operator_id, advertiser).await? {
            self.drop_key(operator_id, &key_id, hash.as_deref()).await?;
        }
        Ok(())
    }

    pub(super) async fn get_advertiser(
        &self,
        operator_id: &str,
        id: &str,
    ) -> Result<Option<Advertiser>> {
        Ok(self
            .first::<AdvertiserRow>(q::ADV_GET, (operator_id, id))
            .await?
            .map(advertiser_from))
    }
}

type AdvertiserRow = (String, String, Option<String>, Option<i64>, Option<String>);
pub(super) type SlotRow = (
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);
pub(super) type CallScanRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);
type WebhookRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
);
type OutboxFullRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i64>,
    Option<i64>,
    Option<bool>,
);
/// An attempt count as the outbox table holds it (`int`).
fn cql_attempts(attempts: u32) -> i32 {
    i32::try_from(attempts).unwrap_or(i32::MAX)
}

type NodeFullRow = (
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<bool>,
    Option<bool>,
);

fn advertiser_from((operator_id, id, name, created_at, lines): AdvertiserRow) -> Advertiser {
    Advertiser {
        id,
        operator_id,
        name: name.unwrap_or_default(),
        created_at: created_at.unwrap_or(0),
        lines: lines.and_then(|l| serde_json::from_str(&l).ok()),
    }
}

pub(super) fn slot_from(
    (slot, claim, number, params, issued_at, expires_at): SlotRow,
) -> SessionSlot {
    SessionSlot {
        slot,
        claim,
        number,
        params,
        issued_at: issued_at.unwrap_or(0),
        expires_at: expires_at.unwrap_or(0),
    }
}

fn webhook_from((id, operator_id, url, secret, events, created_at): WebhookRow) -> Webhook {
    Webhook {
        id,
        operator_id: operator_id.unwrap_or_default(),
        url: url.unwrap_or_default(),
        secret: secret.unwrap_or_default(),
        events: events
            .and_then(|e| serde_json::from_str(&e).ok())
            .unwrap_or_default(),
        created_at: created_at.unwrap_or(0),
    }
}

impl Store for ScyllaStore {
    fn create_operator(&self, name: &str) -> Result<Operator> {
        let op = Operator {
            id: crate::new_id("op"),
            name: name.to_string(),
            created_at: now_ms(),
        };
        self.wait(
            self.inner
                .write(q::OP_INSERT, (op.id.as_str(), name, op.created_at)),
        )?;
        Ok(op)
    }

    fn get_operator(&self, id: &str) -> Result<Option<Operator>> {
        self.wait(self.inner.get_operator(id))
    }

    fn list_operators(&self) -> Result<Vec<Operator>> {
        let mut ops: Vec<Operator> = self
            .wait(
                self.inner
                    .rows::<(String, Option<String>, Option<i64>)>(q::OP_ALL, ()),
            )?
            .into_iter()
            .map(|(id, name, created_at)| Operator {
                id,
                name: name.unwrap_or_default(),
                created_at: created_at.unwrap_or(0),
            })
            .collect();
        ops.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(ops)
    }

    fn rename_operator(&self, id: &str, name: &str) -> Result<Option<Operator>> {
        self.wait(async {
            if !self.inner.cas(q::OP_RENAME, (name, id)).await?.applied {
                return Ok(None);
            }
            self.inner.get_operator(id).await
        })
    }

    fn delete_operator(&self, id: &str) -> Result<Option<Vec<String>>> {
        self.wait(async {
            let owned = self
                .inner
                .rows::<AdvertiserRow>(q::ADV_OF, (id,))
                .await?
                .len();
            if owned > 0 {
                return Err(StoreError::InUse(format!(
                    "operator {id} still owns {owned} advertiser(s)"
                )));
            }
            // Its keys go first: deleted after the operator, a write that failed in
            // between (or a retried DELETE, then 404) left keys that still opened its
            // data and that no listing showed (a review). A retried DELETE of an
            // operator already gone still takes what keys were left.
            self.inner.drop_keys_of(id, None).await?;
            // Its webhooks and prompts too, before the operator (as its keys): a
            // retried DELETE takes what was left.
            let hooks = self.inner.rows::<(String,)>(q::WH_OF, (id,)).await?;
            for (hook,) in hooks {
                self.inner.cas(q::WH_DELETE, (hook.as_str(), id)).await?;
                self.inner
                    .write(q::WH_INDEX_DELETE, (id, hook.as_str()))
                    .await?;
            }
            let prompts = self
                .inner
                .rows::<(String, Option<Vec<u8>>, Option<i64>)>(q::PROMPT_OF_OPERATOR, (id,))
                .await?;
            let mut names = Vec::new();
            for (name, _, _) in prompts {
                self.inner
                    .write(q::PROMPT_DELETE, (id, name.as_str()))
                    .await?;
                names.push(name);
            }
            let applied = self.inner.cas(q::OP_DELETE, (id,)).await?.applied;
            // And again after it: a key made between the listing above and the
            // delete read its operator before it was gone and kept itself (a review).
            self.inner.drop_keys_of(id, None).await?;
            Ok(applied.then_some(names))
        })
    }

    fn add_api_key(&self, operator_id: &str, key_hash: &str, prefix: &str) -> Result<ApiKey> {
        let key = ApiKey::new(operator_id, prefix, None);
        self.wait(async {
            self.inner.put_key(&key, key_hash).await?;
            // A key created while its operator was being deleted would outlive the
            // delete's listing of its keys: the operator is read again once the key is
            // written, and the key taken back if it is gone (here, where keys are
            // written, not at every request's lookup).
            if self.inner.get_operator(operator_id).await?.is_none() {
                self.inner
                    .drop_key(operator_id, &key.id, Some(key_hash))
                    .await?;
                return Err(StoreError::InUse(format!(
                    "operator {operator_id} was deleted meanwhile"
                )));
            }
            Ok(())
        })?;
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
        self.wait(async {
            if self
                .inner
                .get_advertiser(operator_id, advertiser_id)
                .await?
                .is_none()
            {
                return Ok(None);
            }
            // Counted before the write: two made at once may both pass the cap (by
            // one each; SQLite counts and writes in one transaction).
            let held = self
                .inner
                .keys_of(operator_id, Some(advertiser_id))
                .await?
                .len();
            if held >= cap {
                return Err(StoreError::InUse(format!(
                    "advertiser {advertiser_id} has {held} keys, the most it may have: revoke one first"
                )));
            }
            self.inner.put_key(&key, key_hash).await?;
            // As for an operator's key: an advertiser deleted meanwhile takes it back.
            if self
                .inner
                .get_advertiser(operator_id, advertiser_id)
                .await?
                .is_none()
            {
                self.inner
                    .drop_key(operator_id, &key.id, Some(key_hash))
                    .await?;
                return Ok(None);
            }
            Ok(Some(key.clone()))
        })
    }

    fn key_owner(&self, key_hash: &str) -> Result<Option<KeyOwner>> {
        Ok(self
            .wait(
                self.inner
                    .first::<(Option<String>, Option<String>)>(q::KEY_OPERATOR, (key_hash,)),
            )?
            .and_then(|(op, advertiser_id)| {
                op.map(|operator_id| KeyOwner {
                    operator_id,
                    advertiser_id,
                })
            }))
    }

    fn list_api_keys(&self, operator_id: &str) -> Result<Vec<ApiKey>> {
        let mut keys: Vec<ApiKey> = self
            .wait(self.inner.keys_of(operator_id, None))?
            .into_iter()
            .map(|(id, _, prefix, created_at, advertiser_id)| ApiKey {
                id,
                operator_id: operator_id.to_string(),
                prefix,
                created_at: created_at.unwrap_or(0),
                advertiser_id,
            })
            .collect();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    fn revoke_api_key(
        &self,
        operator_id: &str,
        key_id: &str,
        advertiser: Option<&str>,
    ) -> Result<bool> {
        self.wait(async {
            let keys = self.inner.keys_of(operator_id, advertiser).await?;
            let Some((_, hash, _, _, _)) = keys.into_iter().find(|k| k.0 == key_id) else {
                return Ok(false);
            };
            self.inner
                .drop_key(operator_id, key_id, hash.as_deref())
                .await?;
            Ok(true)
        })
    }

    fn issue_lease_capped(
        &self,
        pool: &Pool,
        session: Option<&str>,
        params: &BTreeMap<String, String>,
        now_ms: i64,
        caps: LeaseCaps<'_>,
    ) -> Result<IssueOutcome> {
        self.wait(self.inner.lease(pool, session, params, now_ms, caps))
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
        let lines = lines.map(|l| json(&l)).transpose()?;
        self.wait(self.inner.write(
            q::ADV_INSERT,
            (
                operator_id,
                adv.id.as_str(),
                name,
                adv.created_at,
                lines.as_deref(),
            ),
        ))?;
        Ok(adv)
    }

    fn get_advertiser(&self, operator_id: &str, id: &str) -> Result<Option<Advertiser>> {
        self.wait(self.inner.get_advertiser(operator_id, id))
    }

    fn list_advertisers(&self, operator_id: &str) -> Result<Vec<Advertiser>> {
        let mut all: Vec<Advertiser> = self
            .wait(self.inner.rows::<AdvertiserRow>(q::ADV_OF, (operator_id,)))?
            .into_iter()
            .map(advertiser_from)
            .collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    fn update_advertiser(&self, adv: &Advertiser, read: &Advertiser) -> Result<Update> {
        let lines = adv.lines.map(|l| json(&l)).transpose()?;
        let (op, id) = (adv.operator_id.as_str(), adv.id.as_str());
        self.wait(async {
            for _ in 0..CAS_ROUNDS {
                let Some(row) = self
                    .inner
                    .first::<AdvertiserRow>(q::ADV_GET, (op, id))
                    .await?
                else {
                    return Ok(Update::Missing);
                };
                // Compared as read back, and written only if the columns are still what
                // was just read (the condition of the lightweight transaction; a null
                // `lines` is compared as null).
                let (current_name, current_lines) = (row.2.clone(), row.4.clone());
                if advertiser_from(row) != *read {
                    return Ok(Update::Changed);
                }
                let values = (
                    adv.name.as_str(),
                    lines.as_deref(),
                    op,
                    id,
                    current_name.as_deref(),
                    current_lines.as_deref(),
                );
                if self.inner.cas(q::ADV_UPDATE, values).await?.applied {
                    return Ok(Update::Updated);
                }
            }
            Err(StoreError::Unavailable(format!(
                "advertiser {id} is being changed concurrently"
            )))
        })
    }

    fn advertisers_with_lines(&self) -> Result<Vec<Advertiser>> {
        Ok(self
            .wait(self.inner.rows::<AdvertiserRow>(q::ADV_ALL, ()))?
            .into_iter()
            .map(advertiser_from)
            .filter(|a| a.lines.is_some())
            .collect())
    }

    fn delete_advertiser(&self, operator_id: &str, id: &str) -> Result<bool> {
        self.wait(async {
            let owned = self
                .inner
                .rows::<(Option<String>,)>(q::NUM_OF_ADVERTISER, (operator_id, id))
                .await?
                .len();
            if owned > 0 {
                return Err(StoreError::InUse(format!(
                    "advertiser {id} still owns {owned} number(s)"
                )));
            }
            // Its keys first (as an operator's): deleted after it, a write failing in
            // between left keys that still read its calls and that no listing under
            // the advertiser showed (a review). A key made meanwhile takes itself back
            // on seeing the advertiser gone (`add_advertiser_key`).
            self.inner.drop_keys_of(operator_id, Some(id)).await?;
            let applied = self
                .inner
                .cas(q::ADV_DELETE, (operator_id, id))
                .await?
                .applied;
            // And again after it: a key made between the listing and the delete read
            // the advertiser before it was gone and kept itself (a review).
            self.inner.drop_keys_of(operator_id, Some(id)).await?;
            Ok(applied)
        })
    }

    fn create_number(&self, number: &TrackingNumber) -> Result<()> {
        let settings = json(number)?;
        self.wait(async {
            let n = number;
            let values = (
                n.number.as_str(),
                n.operator_id.as_str(),
                n.advertiser_id.as_str(),
                settings.as_str(),
            );
            if !self.inner.cas(q::NUM_INSERT, values).await?.applied {
                return Err(StoreError::Conflict(format!("number {}", n.number)));
            }
            self.inner
                .write(
                    q::NUM_INDEX_PUT,
                    (
                        n.operator_id.as_str(),
                        n.advertiser_id.as_str(),
                        n.number.as_str(),
                        settings.as_str(),
                    ),
                )
                .await
        })
    }

    fn get_number(&self, number: &str) -> Result<Option<TrackingNumber>> {
        let row = self.wait(
            self.inner
                .first::<(Option<String>, Option<String>, Option<String>)>(q::NUM_GET, (number,)),
        )?;
        match row {
            Some((_, _, Some(settings))) => parse("number settings", &settings).map(Some),
            Some(_) => Err(StoreError::Corrupt(format!(
                "number {number} has no settings"
            ))),
            None => Ok(None),
        }
    }

    fn count_numbers(&self, operator_id: &str) -> Result<usize> {
        // The numbers alone (the clustering column), not their settings.
        let rows = self.wait(
            self.inner
                .rows::<(String,)>(q::NUM_IDS_OF_OPERATOR, (operator_id,)),
        )?;
        Ok(rows.len())
    }

    fn list_numbers(
        &self,
        operator_id: &str,
        advertiser_id: Option<&str>,
    ) -> Result<Vec<TrackingNumber>> {
        let rows = self.wait(async {
            match advertiser_id {
                Some(adv) => {
                    self.inner
                        .rows::<(Option<String>,)>(q::NUM_OF_ADVERTISER, (operator_id, adv))
                        .await
                }
                None => {
                    self.inner
                        .rows::<(Option<String>,)>(q::NUM_OF_OPERATOR, (operator_id,))
                        .await
                }
            }
        })?;
        let mut numbers: Vec<TrackingNumber> = rows
            .into_iter()
            .map(|(s,)| parse::<TrackingNumber>("number settings", s.as_deref().unwrap_or("")))
            .filter_map(|n| crate::readable_listed("a number's", n))
            .collect();
        numbers.sort_by(|a, b| a.number.cmp(&b.number));
        Ok(numbers)
    }

    fn update_number(&self, number: &TrackingNumber, read: &TrackingNumber) -> Result<Update> {
        let settings = json(number)?;
        let n = number;
        self.wait(async {
            for _ in 0..CAS_ROUNDS {
                let current = self
                    .inner
                    .first::<(Option<String>, Option<String>, Option<String>)>(
                        q::NUM_GET,
                        (n.number.as_str(),),
                    )
                    .await?;
                let Some((Some(op), adv, current)) = current else {
                    return Ok(Update::Missing);
                };
                if op != n.operator_id {
                    return Ok(Update::Missing);
                }
                // Compared as read back, and written only if the text is still what
                // was just read (the condition of the lightweight transaction).
                let current = current.unwrap_or_default();
                // Unreadable now (a newer version wrote it): not what was read.
                if parse::<TrackingNumber>("number settings", &current)
                    .ok()
                    .as_ref()
                    != Some(read)
                {
                    return Ok(Update::Changed);
                }
                let adv = adv.unwrap_or_default();
                let values = (
                    n.advertiser_id.as_str(),
                    settings.as_str(),
                    n.number.as_str(),
                    op.as_str(),
                    adv.as_str(),
                    current.as_str(),
                );
                if !self.inner.cas(q::NUM_UPDATE, values).await?.applied {
                    continue;
                }
                if adv != n.advertiser_id {
                    self.inner
                        .write(
                            q::NUM_INDEX_DELETE,
                            (op.as_str(), adv.as_str(), n.number.as_str()),
                        )
                        .await?;
                }
                self.inner
                    .write(
                        q::NUM_INDEX_PUT,
                        (
                            op.as_str(),
                            n.advertiser_id.as_str(),
                            n.number.as_str(),
                            settings.as_str(),
                        ),
                    )
                    .await?;
                return Ok(Update::Updated);
            }
            Err(StoreError::Unavailable(format!(
                "number {} is being changed concurrently",
                n.number
            )))
        })
    }

    fn delete_number(&self, operator_id: &str, number: &str) -> Result<bool> {
        self.wait(async {
            let current = self
                .inner
                .first::<(Option<String>, Option<String>, Option<String>)>(q::NUM_GET, (number,))
                .await?;
            let Some((Some(op), adv, _)) = current else {
                return Ok(false);
            };
            if op != operator_id {
                return Ok(false);
            }
            let adv = adv.unwrap_or_default();
            let values = (number, operator_id, adv.as_str());
            if !self.inner.cas(q::NUM_DELETE, values).await?.applied {
                return Ok(false);
            }
            self.inner
                .write(q::NUM_INDEX_DELETE, (operator_id, adv.as_str(), number))
                .await?;
            Ok(true)
        })
    }

    fn all_numbers(&self) -> Result<Vec<(String, Result<TrackingNumber>)>> {
        Ok(self
            .wait(self.inner.rows::<(String, Option<String>)>(q::NUM_ALL, ()))?
            .into_iter()
            .map(|(number, s)| {
                let read = parse("number settings", s.as_deref().unwrap_or(""))
                    .map_err(|e| e.about(&number));
                (number, read)
            })
            .collect())
    }

    fn create_pool(&self, pool: &Pool, numbers: &[TrackingNumber]) -> Result<()> {
        let settings = json(pool)?;
        let rows: Vec<(&str, String)> = numbers
            .iter()
            .map(|n| json(n).map(|s| (n.number.as_str(), s)))
            .collect::<Result<_>>()?;
        self.wait(async {
            // Each number by compare-and-set; on a conflict the ones taken are given back,
            // so a refused pool leaves nothing behind. The pool row is written last.
            let mut taken: Vec<&(&str, String)> = Vec::new();
            for row in &rows {
                let values = (
                    row.0,
                    pool.operator_id.as_str(),
                    pool.advertiser_id.as_str(),
                    row.1.as_str(),
                );
                if !self.inner.cas(q::NUM_INSERT, values).await?.applied {
                    for (number, settings) in taken {
                        self.inner
                            .cas(q::NUM_UNDO, (*number, settings.as_str()))
                            .await?;
                    }
                    return Err(StoreError::Conflict("one of the pool's numbers".into()));
                }
                taken.push(row);
            }
            for (number, settings) in &rows {
                self.inner
                    .write(
                        q::NUM_INDEX_PUT,
                        (
                            pool.operator_id.as_str(),
                            pool.advertiser_id.as_str(),
                            *number,
                            settings.as_str(),
                        ),
                    )
                    .await?;
            }
            for (position, number) in pool.numbers.iter().enumerate() {
                let position = i32::try_from(position).unwrap_or(i32::MAX);
                self.inner
                    .write(q::NL_INSERT, (number.as_str(), pool.id.as_str(), position))
                    .await?;
                self.inner
                    .write(q::PN_INSERT, (pool.id.as_str(), number.as_str(), position))
                    .await?;
            }
            self.inner
                .write(
                    q::POOL_INDEX_PUT,
                    (
                        pool.operator_id.as_str(),
                        pool.id.as_str(),
                        settings.as_str(),
                    ),
                )
                .await?;
            self.inner
                .write(
                    q::POOL_INSERT,
                    (
                        pool.id.as_str(),
                        pool.operator_id.as_str(),
                        settings.as_str(),
                    ),
                )
                .await
        })
    }

    fn get_pool(&self, operator_id: &str, id: &str) -> Result<Option<Pool>> {
        match self.wait(
            self.inner
                .first::<(Option<String>, Option<String>)>(q::POOL_GET, (id,)),
        )? {
            Some((Some(op), Some(settings))) if op == operator_id => {
                parse("pool settings", &settings).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn list_pools(&self, operator_id: &str) -> Result<Vec<Pool>> {
        Ok(self
            .wait(
                self.inner
                    .rows::<(Option<String>,)>(q::POOLS_OF, (operator_id,)),
            )?
            .into_iter()
            .map(|(s,)| parse::<Pool>("pool settings", s.as_deref().unwrap_or("")))
            .filter_map(|p| crate::readable_listed("a pool's", p))
            .collect())
    }

    fn pool_by_id(&self, id: &str) -> Result<Option<Pool>> {
        match self.wait(
            self.inner
                .first::<(Option<String>, Option<String>)>(q::POOL_GET, (id,)),
        )? {
            Some((_, Some(settings))) => parse("pool settings", &settings).map(Some),
            _ => Ok(None),
        }
    }

    fn update_pool(&self, pool: &Pool, read: &Pool) -> Result<Update> {
        let settings = json(pool)?;
        let (op, id) = (pool.operator_id.as_str(), pool.id.as_str());
        self.wait(async {
            for _ in 0..CAS_ROUNDS {
                let current = self
                    .inner
                    .first::<(Option<String>, Option<String>)>(q::POOL_GET, (id,))
                    .await?;
                let Some((Some(owner), current)) = current else {
                    return Ok(Update::Missing);
                };
                if owner != op {
                    return Ok(Update::Missing);
                }
                // Compared as read back, written only if the text is still what was read.
                let current = current.unwrap_or_default();
                // Unreadable now (a newer version wrote it): not what was read.
                if parse::<Pool>("pool settings", &current).ok().as_ref() != Some(read) {
                    return Ok(Update::Changed);
                }
                let values = (settings.as_str(), id, op, current.as_str());
                if !self.inner.cas(q::POOL_UPDATE, values).await?.applied {
                    continue;
                }
                self.inner
                    .write(q::POOL_INDEX_PUT, (op, id, settings.as_str()))
                    .await?;
                return Ok(Update::Updated);
            }
            Err(StoreError::Unavailable(format!(
                "pool {id} is being changed concurrently"
            )))
        })
    }

    fn lease_at(&self, number: &str, at_ms: i64) -> Result<Option<Lease>> {
        type LeaseRow = (
            Option<String>,
            String,
            Option<String>,
            Option<String>,
            i64,
            Option<i64>,
        );
        let row = self.wait(self.inner.first::<LeaseRow>(q::LH_AT, (number, at_ms)))?;
        match row {
            Some((pool_id, number, session, params, issued_at, Some(expires_at)))
                if expires_at > at_ms =>
            {
                Ok(Some(Lease {
                    number,
                    pool_id: pool_id.unwrap_or_default(),
                    session,
                    params: params
                        .and_then(|p| serde_json::from_str(&p).ok())
                        .unwrap_or_default(),
                    issued_at,
                    expires_at,
                }))
            }
            _ => Ok(None),
        }
    }

    fn leased_count(&self, pool_id: &str, now_ms: i64) -> Result<usize> {
        Ok(self
            .wait(
                self.inner
                    .rows::<(String, Option<i32>, Option<i64>, Option<i64>)>(q::PN_OF, (pool_id,)),
            )?
            .into_iter()
            .filter(|(_, _, _, expires)| expires.unwrap_or(0) > now_ms)
            .count())
    }

    fn insert_calls(
        &self,
        calls: &[CallRecord],
        follow_ups: &[(usize, NewFollowUp)],
    ) -> Result<()> {
        self.wait(self.inner.insert_calls(calls, follow_ups))
    }

    fn upsert_active_calls(&self, calls: &[ActiveCall]) -> Result<()> {
        self.wait(self.inner.upsert_active_calls(calls))
    }

    fn active_calls_of(&self, node: &str) -> Result<Vec<ActiveCall>> {
        self.wait(self.inner.active_calls_of(node))
    }

    fn claim_call(
        &self,
        call_id: &str,
        from: (&str, u64),
        to: (&str, u64),
    ) -> Result<Option<ActiveCall>> {
        self.wait(self.inner.claim_call(call_id, from, to))
    }

    fn register_node(&self, info: &NodeInfo, now_ms: i64) -> Result<(u64, Option<i64>)> {
        let id = info.node_id.as_str();
        let (cluster, api) = (info.cluster_addr.as_deref(), info.api_addr.as_deref());
        self.wait(async {
            for _ in 0..CAS_ROUNDS {
                let before = self
                    .inner
                    .first::<(Option<i64>, Option<i64>)>(q::NODE_GET, (id,))
                    .await?;
                match before {
                    None => {
                        let values = (id, now_ms, now_ms, cluster, api);
                        if self.inner.cas(q::NODE_FIRST, values).await?.applied {
                            return Ok((1, None));
                        }
                    }
                    Some((epoch, last_seen)) => {
                        let epoch = epoch.unwrap_or(0);
                        let next = self.inner.next_incarnation(info, now_ms, epoch, last_seen);
                        if let Some(registered) = next.await? {
                            return Ok(registered);
                        }
                    }
                }
            }
            Err(StoreError::Unavailable(format!(
                "node {id} is being registered concurrently"
            )))
        })
    }

    fn register_node_after(
        &self,
        info: &NodeInfo,
        now_ms: i64,
        after: u64,
    ) -> Result<Option<(u64, Option<i64>)>> {
        let after = epoch_column(after);
        self.wait(async {
            let before = self
                .inner
                .first::<(Option<i64>, Option<i64>)>(q::NODE_GET, (info.node_id.as_str(),))
                .await?;
            match before {
                // An unreadable epoch reads as 0, as `register_node` and `nodes` read it.
                Some((epoch, last_seen)) if epoch.unwrap_or(0) == after => {
                    let next = self.inner.next_incarnation(info, now_ms, after, last_seen);
                    next.await
                }
                _ => Ok(None),
            }
        })
    }

    fn node_alive(&self, node: &str, epoch: u64, now_ms: i64) -> Result<bool> {
        let epoch = epoch_column(epoch);
        let cas = self.wait(self.inner.cas(q::NODE_ALIVE, (now_ms, node, epoch, now_ms)))?;
        let seen = cas.i64("last_seen");
        let accepted = heartbeat_accepted(
            cas.applied,
            epoch,
            now_ms,
            cas.i64("epoch"),
            cas.bool("down"),
            seen,
        );
        if let (true, false, Some(seen)) = (accepted, cas.applied, seen) {
            // This node's clock went back: the sign moves one past the last all the
            // same (readers judge signs by their moves, tsunagu_cluster::signs). Not
            // applied: another write moved it meanwhile (a move too), unless that
            // write declared this incarnation down or replaced it.
            let next = self.wait(self.inner.cas(
                q::NODE_ALIVE_NEXT,
                (seen.saturating_add(1), node, epoch, seen),
            ))?;
            return Ok(next.applied
                || (next.i64("epoch") == Some(epoch) && next.bool("down") == Some(false)));
        }
        Ok(accepted)
    }

    /// The marker's standing is one partition's read (the default read the whole
    /// registry), then the mark's compare-and-set: not atomic together, as the trait
    /// says (two sides of a cut marking each other in the same instant can both pass).
    fn mark_node_down_by(&self, node: &str, epoch: u64, by: (&str, u64)) -> Result<bool> {
        if (by.0, by.1) != (node, epoch) {
            let row = self.wait(
                self.inner
                    .first::<(Option<i64>, Option<bool>)>(q::NODE_STANDING, (by.0,)),
            )?;
            let standing =
                row.is_some() && super::ownership::incarnation_current(row, epoch_column(by.1));
            if !standing {
                return Ok(false);
            }
        }
        self.mark_node_down(node, epoch)
    }

    fn mark_node_down(&self, node: &str, epoch: u64) -> Result<bool> {
        Ok(self
            .wait(self.inner.cas(q::NODE_DOWN, (node, epoch_column(epoch))))?
            .applied)
    }

    fn retire_node(&self, node: &str, epoch: u64) -> Result<bool> {
        Ok(self
            .wait(self.inner.cas(q::NODE_RETIRE, (node, epoch_column(epoch))))?
            .applied)
    }

    fn nodes(&self) -> Result<Vec<NodeRow>> {
        let mut nodes: Vec<NodeRow> = self
            .wait(self.inner.rows::<NodeFullRow>(q::NODES_ALL, ()))?
            .into_iter()
            .map(
                |(node_id, epoch, started_at, last_seen, cluster_addr, api_addr, down, retired)| {
                    NodeRow {
                        node_id,
                        epoch: epoch_of(epoch.unwrap_or(0)),
                        started_at: started_at.unwrap_or(0),
                        last_seen: last_seen.unwrap_or(0),
                        cluster_addr,
                        api_addr,
                        down: down.unwrap_or(false),
                        retired: retired.unwrap_or(false),
                    }
                },
            )
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    fn record_change(&self, kind: &str, key: &str) -> Result<i64> {
        self.wait(self.inner.record_change(kind, key))
    }

    fn changes_since(&self, seq: i64, limit: usize) -> Result<Changes> {
        self.wait(self.inner.changes_since(seq, limit))
    }

    fn put_prompt(
        &self,
        operator_id: &str,
        name: &str,
        wav: &[u8],
        quota: PromptQuota,
    ) -> Result<PromptPut> {
        self.wait(async {
            for _ in 0..CAS_ROUNDS {
                let rows = self
                    .inner
                    .rows::<(String, Option<Vec<u8>>, Option<i64>)>(
                        q::PROMPT_OF_OPERATOR,
                        (operator_id,),
                    )
                    .await?;
                // Every row carries the partition's static counter.
                let counter = rows.first().and_then(|r| r.2);
                let others = rows
                    .iter()
                    .filter(|r| r.0 != name)
                    .map(|r| r.1.as_ref().map_or(0, |w| w.len() as u64));
                let verdict = judge_prompt_put(others, wav.len() as u64, quota);
                if verdict != PromptPut::Saved {
                    return Ok(verdict);
                }
                let next = counter.unwrap_or(0).saturating_add(1);
                let cas = match counter {
                    None => {
                        let values = (next, wav, now_ms(), operator_id, name);
                        self.inner.cas(q::PROMPT_PUT_FIRST, values).await?
                    }
                    Some(c) => {
                        let values = (next, wav, now_ms(), operator_id, name, c);
                        self.inner.cas(q::PROMPT_PUT, values).await?
                    }
                };
                if cas.applied {
                    return Ok(PromptPut::Saved);
                }
            }
            Err(StoreError::Unavailable(format!(
                "prompts of operator {operator_id} are being uploaded concurrently; try again"
            )))
        })
    }

    fn delete_prompt(&self, operator_id: &str, name: &str) -> Result<bool> {
        self.wait(async {
            let existed = self
                .inner
                .first::<(Option<Vec<u8>>,)>(q::PROMPT_GET, (operator_id, name))
                .await?
                .is_some();
            self.inner
                .write(q::PROMPT_DELETE, (operator_id, name))
                .await?;
            Ok(existed)
        })
    }

    fn prompt(&self, operator_id: &str, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .wait(
                self.inner
                    .first::<(Option<Vec<u8>>,)>(q::PROMPT_GET, (operator_id, name)),
            )?
            .map(|(wav,)| wav.unwrap_or_default()))
    }

    fn all_prompts(&self) -> Result<Vec<(String, String, Vec<u8>)>> {
        let mut all: Vec<(String, String, Vec<u8>)> = self
            .wait(
                self.inner
                    .rows::<(String, String, Option<Vec<u8>>)>(q::PROMPT_ALL, ()),
            )?
            .into_iter()
            .map(|(op, name, wav)| (op, name, wav.unwrap_or_default()))
            .collect();
        all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(all)
    }

    fn enqueue_follow_ups(&self, items: &[NewFollowUp]) -> Result<()> {
        let now = now_ms();
        self.wait(async {
            let ids = self.inner.next_ids(items.len()).await?;
            for (item, id) in items.iter().zip(ids) {
                self.inner.enqueue(item, id, now).await?;
            }
            Ok(())
        })
    }

    fn earlier_call(
        &self,
        advertiser_id: &str,
        caller: &str,
        since_ms: i64,
        (before_ms, before_id): (i64, &str),
    ) -> Result<bool> {
        // "" sorts before every call id: the window starts at the first call of since_ms.
        let bounds = (advertiser_id, caller, since_ms, "", before_ms, before_id);
        Ok(self
            .wait(self.inner.first::<(i64,)>(q::EARLIER_CALL, bounds))?
            .is_some())
    }

    fn get_call(&self, operator_id: &str, call_id: &str) -> Result<Option<CallRecord>> {
        match self.wait(
            self.inner
                .first::<(Option<String>, Option<String>)>(q::CALL_GET, (call_id,)),
        )? {
            Some((Some(op), Some(record))) if op == operator_id => {
                record_from(&record, Some(call_id), CallState::Ended).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn scan_calls(
        &self,
        query: &CallQuery,
        visit: &mut dyn FnMut(CallRecord) -> bool,
    ) -> Result<()> {
        self.wait(self.inner.scan_calls(query, visit))
    }

    fn create_webhook(&self, h: &Webhook, limit: usize) -> Result<()> {
        // Without a transaction the count is read first: requests in parallel may
        // pass it together (bounded by how many are in flight at once).
        if self.list_webhooks(&h.operator_id)?.len() >= limit {
            return Err(StoreError::InUse(format!(
                "an operator has at most {limit} webhooks"
            )));
        }
        let events = json(&h.events)?;
        self.wait(async {
            let values = (
                h.id.as_str(),
                h.operator_id.as_str(),
                h.url.as_str(),
                h.secret.as_str(),
                events.as_str(),
                h.created_at,
            );
            if !self.inner.cas(q::WH_INSERT, values).await?.applied {
                return Err(StoreError::Conflict(format!("webhook {}", h.id)));
            }
            self.inner
                .write(q::WH_INDEX_PUT, (h.operator_id.as_str(), h.id.as_str()))
                .await
        })
    }

    fn list_webhooks(&self, operator_id: &str) -> Result<Vec<Webhook>> {
        let mut hooks = self.wait(async {
            let ids = self
                .inner
                .rows::<(String,)>(q::WH_OF, (operator_id,))
                .await?;
            let mut hooks = Vec::new();
            for (id,) in ids {
                if let Some(row) = self
                    .inner
                    .first::<WebhookRow>(q::WH_GET, (id.as_str(),))
                    .await?
                {
                    let hook = webhook_from(row);
                    if hook.operator_id == operator_id {
                        hooks.push(hook);
                    }
                }
            }
            Ok::<_, StoreError>(hooks)
        })?;
        hooks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(hooks)
    }

    fn delete_webhook(&self, operator_id: &str, id: &str) -> Result<bool> {
        self.wait(async {
            if !self
                .inner
                .cas(q::WH_DELETE, (id, operator_id))
                .await?
                .applied
            {
                return Ok(false);
            }
            self.inner
                .write(q::WH_INDEX_DELETE, (operator_id, id))
                .await?;
            Ok(true)
        })
    }

    fn get_webhook(&self, id: &str) -> Result<Option<Webhook>> {
        Ok(self
            .wait(self.inner.first::<WebhookRow>(q::WH_GET, (id,)))?
            .map(webhook_from))
    }

    fn all_webhooks(&self) -> Result<Vec<Webhook>> {
        let mut hooks: Vec<Webhook> = self
            .wait(self.inner.rows::<WebhookRow>(q::WH_ALL, ()))?
            .into_iter()
            .map(webhook_from)
            .collect();
        hooks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(hooks)
    }

    fn claim_follow_ups(&self, now_ms: i64, limit: usize, claim_ms: i64) -> Result<Vec<FollowUp>> {
        self.wait(async {
            let reads = (0..OUTBOX_SHARDS as i32)
                .map(|shard| self.inner.rows::<OutboxFullRow>(q::OB_SHARD, (shard,)));
            let mut full = HashMap::new();
            let mut rows = Vec::new();
            // Only kinds this version delivers are claimed (see the SQLite claim): a
            // row of a newer release's kind waits for a node of that release. Dead
            // rows are pruned whatever their kind.
            let mut claimable = Vec::new();
            for shard in futures_util::future::join_all(reads).await {
                for r in shard? {
                    let row = OutboxRow {
                        id: r.0,
                        attempts: r.5.unwrap_or(0),
                        next_at: r.6.unwrap_or(0),
                        dead: r.8.unwrap_or(false),
                    };
                    let known = r.1.as_deref().and_then(|k| k.parse::<FollowUpKind>().ok());
                    if known.is_some() {
                        claimable.push(row.clone());
                    }
                    rows.push(row);
                    full.insert(r.0, r);
                }
            }
            // Dead rows past their retention go (the embedded store prunes as much).
            let prunes = prunable_rows(&rows, now_ms, OUTBOX_DEAD_PRUNED_PER_CLAIM)
                .into_iter()
                .map(|r| self.inner.write(q::OB_DELETE, (shard_of(r.id), r.id)));
            futures_util::future::try_join_all(prunes).await?;
            // Shards claim concurrently; within a shard one row after another (its rows
            // share a Paxos partition: concurrent claims there would contend).
            let until = now_ms.saturating_add(claim_ms);
            let mut by_shard: BTreeMap<i32, Vec<&OutboxRow>> = BTreeMap::new();
            for row in due_rows(&claimable, now_ms, limit) {
                by_shard.entry(shard_of(row.id)).or_default().push(row);
            }
            let claims = by_shard.into_values().map(|rows| async move {
                let mut won = Vec::new();
                for row in rows {
                    let attempts = row.attempts.saturating_add(1);
                    let values = (
                        until,
                        attempts,
                        shard_of(row.id),
                        row.id,
                        row.next_at,
                        row.attempts,
                    );
                    // Not applied: another claimer has it.
                    if self.inner.cas(q::OB_CLAIM, values).await?.applied {
                        won.push((row.id, attempts));
                    }
                }
                Ok::<_, StoreError>(won)
            });
            let mut claimed = Vec::new();
            for won in futures_util::future::try_join_all(claims).await? {
                for (id, attempts) in won {
                    let Some((id, kind, op, target, payload, _, _, created_at, _)) =
                        full.remove(&id)
                    else {
                        continue;
                    };
                    let kind: FollowUpKind = kind
                        .as_deref()
                        .unwrap_or("")
                        .parse()
                        .map_err(StoreError::Corrupt)?;
                    claimed.push(FollowUp {
                        id,
                        item: NewFollowUp {
                            kind,
                            operator_id: op.unwrap_or_default(),
                            target: target.unwrap_or_default(),
                            payload: payload.unwrap_or_default(),
                        },
                        attempts: u32::try_from(attempts).unwrap_or(0),
                        created_at: created_at.unwrap_or(0),
                        claimed_until: until,
                    });
                }
            }
            claimed.sort_by_key(|f| f.id);
            Ok(claimed)
        })
    }

    fn follow_up_delivered(&self, id: i64) -> Result<()> {
        self.wait(self.inner.write(q::OB_DELETE, (shard_of(id), id)))
    }

    fn follow_up_failed(
        &self,
        claim: OutboxClaim,
        retry_at_ms: Option<i64>,
        error: &str,
    ) -> Result<bool> {
        let (id, until, attempts) = (claim.id, claim.until, cql_attempts(claim.attempts));
        self.wait(async {
            let outcome = match retry_at_ms {
                Some(at) => {
                    self.inner
                        .cas(q::OB_RETRY, (at, error, shard_of(id), id, until, attempts))
                        .await?
                }
                None => {
                    self.inner
                        .cas(q::OB_DEAD, (error, shard_of(id), id, until, attempts))
                        .await?
                }
            };
            Ok(outcome.applied)
        })
    }

    fn follow_up_counts(&self) -> Result<(u64, u64)> {
        self.wait(async {
            let reads = (0..OUTBOX_SHARDS as i32)
                .map(|shard| self.inner.rows::<(Option<bool>,)>(q::OB_COUNT, (shard,)));
            let (mut pending, mut dead) = (0u64, 0u64);
            for shard in futures_util::future::join_all(reads).await {
                for (d,) in shard? {
                    if d.unwrap_or(false) {
                        dead += 1;
                    } else {
                        pending += 1;
                    }
                }
            }
            Ok((pending, dead))
        })
    }

    fn release_follow_ups(&self, claims: &[(OutboxClaim, i64)]) -> Result<()> {
        self.wait(async {
            for (c, next_at_ms) in claims {
                let attempts = cql_attempts(c.attempts);
                let values = (
                    *next_at_ms,
                    attempts.saturating_sub(1).max(0),
                    shard_of(c.id),
                    c.id,
                    c.until,
                    attempts,
                );
                // Not applied: the claim was lost, and the row is its new claimer's.
                self.inner.cas(q::OB_CLAIM, values).await?;
            }
            Ok(())
        })
    }

    fn take_caller_sms(&self, caller: &str, day: i64, call_id: &str, cap: u32) -> Result<bool> {
        self.wait(
            self.inner
                .take_slot(&CALLER_SMS, (caller, day), call_id, cap),
        )
    }

    fn take_notices(&self, claims: &[NoticeClaim<'_>], cap: u32) -> Result<Vec<bool>> {
        // One partition (number, hour) at a time, its claims in order (concurrent
        // claims on one partition would race each other for the same slot); the
        // partitions at once: a batch of calls to many numbers costs about one round
        // of lightweight transactions, not one per call in a row on the writer.
        let mut groups: std::collections::BTreeMap<(&str, i64), Vec<usize>> =
            std::collections::BTreeMap::new();
        for (i, c) in claims.iter().enumerate() {
            groups.entry((c.number, c.hour)).or_default().push(i);
        }
        self.wait(async {
            let inner = &self.inner;
            let rounds = groups.values().map(|indexes| async move {
                let mut out = Vec::with_capacity(indexes.len());
                for &i in indexes {
                    let c = &claims[i];
                    let ok = inner
                        .take_slot(&NOTICES, (c.number, c.hour), c.call_id, cap)
                        .await?;
                    out.push((i, ok));
                }
                Ok::<_, StoreError>(out)
            });
            let mut allowed = vec![false; claims.len()];
            for group in futures_util::future::join_all(rounds).await {
                for (i, ok) in group? {
                    allowed[i] = ok;
                }
            }
            Ok(allowed)
        })
    }

    fn ping(&self) -> Result<()> {
        self.wait(self.inner.first::<(Option<String>,)>(q::PING, ()))
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node opens its store from inside its own runtime: a cluster that cannot be
    /// reached must come back as an error there, not as a panic while the backend's
    /// runtime is dropped.
    #[test]
    fn a_failed_connect_inside_a_runtime_is_an_error() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let mut settings = ScyllaSettings::new(vec!["127.0.0.1:1".into()]);
        settings.request_timeout = std::time::Duration::from_secs(2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async { ScyllaStore::connect(&settings).map(|_| ()) });
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    }
}
