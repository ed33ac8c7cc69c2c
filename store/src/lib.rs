//! Persistent state behind one [`Store`] trait: operators and their API keys,
//! advertisers, tracking numbers, and call logs.
//!
//! Backends: [`SqliteStore`] (embedded, the default; SQLite in WAL mode) and, later,
//! ScyllaDB for clusters. Every backend must pass [`conformance`], a suite written
//! against the trait alone.
//!
//! The trait is blocking: SQLite is a blocking library and its calls take microseconds.
//! Async callers (the HTTP API) run store calls on `spawn_blocking`; the call path never
//! touches the store directly (call logs go through a batching writer).

mod clock;
pub mod conformance;
mod ids;
mod model;
mod prompt_quota;
pub mod schedule;
pub mod scylla;
mod sqlite;

pub use clock::now_ms;
pub use ids::{
    hash_api_key, new_advertiser_key, new_api_key, new_id, new_time_id, ADVERTISER_KEY_PREFIX,
};
pub use model::*;
pub use prompt_quota::{judge_prompt_put, PromptPut, PromptQuota};
#[cfg(feature = "scylla")]
pub use scylla::ScyllaStore;
pub use scylla::{Consistency as ScyllaConsistency, ScyllaSettings, TlsFiles as ScyllaTlsFiles};
pub use sqlite::{Durability, SqliteStore};

/// Errors a store operation can report.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0}")]
    InUse(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// A scan ran past its query's deadline and was stopped (nothing was changed).
    #[error("{0}")]
    TimedOut(String),
}

impl StoreError {
    /// A scan stopped at its query's deadline ([`CallQuery::deadline`]).
    pub fn scan_timed_out() -> StoreError {
        StoreError::TimedOut(
            "the search ran past its time budget; narrow it (a time range, a number, an advertiser)"
                .into(),
        )
    }

    /// An unreadable row's error naming what it is of (`about`: the number of a
    /// number's settings); any other error as it is.
    pub fn about(self, about: &str) -> StoreError {
        match self {
            StoreError::Corrupt(m) => StoreError::Corrupt(format!("{about}: {m}")),
            other => other,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A listed row's settings (`what`: "a number's", "a pool's"), if this version can
/// read them (else logged: see [`Store::list_numbers`]).
pub(crate) fn readable_listed<T>(what: &str, read: Result<T>) -> Option<T> {
    read.inspect_err(|e| tracing::warn!(%e, "{what} settings cannot be read: left out of the list"))
        .ok()
}

use std::collections::BTreeMap;

/// A page from `fetched`, up to `limit` rows read in order plus one more if there is
/// one (one row past the page tells whether another follows): the page, and the key
/// of its last row (`key`) where the next page starts, None on the last page.
pub(crate) fn page_of<T>(
    mut fetched: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let more = fetched.len() > limit;
    fetched.truncate(limit);
    let next = if more { fetched.last().map(key) } else { None };
    (fetched, next)
}

/// Whether member `by` (name, incarnation) is that incarnation in good standing in
/// the registry `nodes` (see [`Store::nodes`]): registered, not declared down, not
/// restarted since.
pub fn in_good_standing(nodes: &[NodeRow], by: (&str, u64)) -> bool {
    nodes
        .iter()
        .any(|n| (n.node_id.as_str(), n.epoch) == by && !n.down)
}

/// The operations every backend provides. Reads of operator-owned data take the
/// operator id, so a backend can never hand one operator another's rows.
pub trait Store: Send + Sync + 'static {
    // Operators (admin).
    fn create_operator(&self, name: &str) -> Result<Operator>;
    fn get_operator(&self, id: &str) -> Result<Option<Operator>>;
    fn list_operators(&self) -> Result<Vec<Operator>>;
    fn rename_operator(&self, id: &str, name: &str) -> Result<Option<Operator>>;
    /// Deletes an operator that owns no advertisers ([`StoreError::InUse`] otherwise),
    /// with its API keys, webhooks and prompts; the names of the prompts it deleted
    /// (None: no such operator). Its pools and its call records stay.
    fn delete_operator(&self, id: &str) -> Result<Option<Vec<String>>>;
    /// Adds an API key (by hash) with the prefix it is listed by, e.g. `tsk_5f0c2a9e`.
    fn add_api_key(&self, operator_id: &str, key_hash: &str, prefix: &str) -> Result<ApiKey>;
    /// Adds a key limited to one of the operator's advertisers (see
    /// [`ApiKey::advertiser_id`]): None when the operator has no such advertiser;
    /// [`StoreError::InUse`] when the advertiser has `cap` keys already. A key made
    /// while its advertiser is deleted does not outlive it.
    fn add_advertiser_key(
        &self,
        operator_id: &str,
        advertiser_id: &str,
        key_hash: &str,
        prefix: &str,
        cap: usize,
    ) -> Result<Option<ApiKey>>;
    /// Whom an API key (by hash) speaks for.
    fn key_owner(&self, key_hash: &str) -> Result<Option<KeyOwner>>;

    // API key management and capped issuance (the HTTP API's abuse defences).
    /// An operator's keys, oldest first (ids and prefixes, never the keys).
    fn list_api_keys(&self, operator_id: &str) -> Result<Vec<ApiKey>>;
    /// Revokes one of the operator's keys at once, with `advertiser` only if it is
    /// that advertiser's key (the advertiser's endpoint revokes its own keys alone);
    /// false if there is no such key, or it is not that advertiser's.
    fn revoke_api_key(
        &self,
        operator_id: &str,
        key_id: &str,
        advertiser: Option<&str>,
    ) -> Result<bool>;
    /// [`Store::issue_lease`] where a `session` may hold at most `caps.per_session`
    /// live leases of the pool and the client `caps.client` names at most its cap (an
    /// extension of a session's live lease is not a new one). SQLite checks both in
    /// the same compare-and-set step; ScyllaDB checks the session's cap so, and the
    /// client's by a count read just before (parallel requests of one client may pass
    /// it together: see the README).
    fn issue_lease_capped(
        &self,
        pool: &Pool,
        session: Option<&str>,
        params: &BTreeMap<String, String>,
        now_ms: i64,
        caps: LeaseCaps<'_>,
    ) -> Result<IssueOutcome>;

    // Advertisers (operator-scoped).
    fn create_advertiser(
        &self,
        operator_id: &str,
        name: &str,
        lines: Option<LineLimit>,
    ) -> Result<Advertiser>;
    fn get_advertiser(&self, operator_id: &str, id: &str) -> Result<Option<Advertiser>>;
    fn list_advertisers(&self, operator_id: &str) -> Result<Vec<Advertiser>>;
    /// Replaces an advertiser's name and line limit with `adv`'s, if they are still
    /// `read`'s: a compare-and-set like [`Store::update_number`] (two PATCHes at once
    /// each kept one change and lost the other's).
    fn update_advertiser(&self, adv: &Advertiser, read: &Advertiser) -> Result<Update>;
    /// Every advertiser with a line limit, of all operators (the call path's copy).
    fn advertisers_with_lines(&self) -> Result<Vec<Advertiser>>;
    /// Deletes an advertiser that owns no numbers ([`StoreError::InUse`] otherwise),
    /// with its keys ([`Store::add_advertiser_key`]). Its call records stay.
    fn delete_advertiser(&self, operator_id: &str, id: &str) -> Result<bool>;

    // Tracking numbers. `get_number` and `all_numbers` are unscoped: the call path
    // looks numbers up by the dialled digits alone.
    /// Creates a number; [`StoreError::Conflict`] if the number exists (for any operator).
    fn create_number(&self, number: &TrackingNumber) -> Result<()>;
    fn get_number(&self, number: &str) -> Result<Option<TrackingNumber>>;
    /// The operator's numbers (of one advertiser) in number order, those this version
    /// can read: one it cannot (see [`Store::all_numbers`]) is logged and left out,
    /// not the whole list's error (it had every list and prompt deletion of the
    /// operator fail).
    fn list_numbers(
        &self,
        operator_id: &str,
        advertiser_id: Option<&str>,
    ) -> Result<Vec<TrackingNumber>>;
    /// One page of [`Store::list_numbers`]: up to `limit` numbers after `after`, in
    /// number order, and where the next page starts if more follow (a row this
    /// version cannot read is left out and still moves the page on, so a page can be
    /// short without being the last). This default reads and decodes the whole list
    /// for each page (a backend whose index is not in number order: ScyllaDB's is by
    /// advertiser, then number), so a page costs what the whole list did; the
    /// operator's cap (`api.max_numbers_per_operator`) bounds it.
    fn list_numbers_page(
        &self,
        operator_id: &str,
        advertiser_id: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<NumberPage> {
        let listed = self.list_numbers(operator_id, advertiser_id)?.into_iter();
        let after_cursor = |n: &TrackingNumber| after.is_none_or(|a| n.number.as_str() > a);
        let fetched: Vec<_> = listed
            .filter(after_cursor)
            .take(limit.saturating_add(1))
            .collect();
        let (numbers, next) = page_of(fetched, limit, |n| n.number.clone());
        Ok(NumberPage { numbers, next })
    }
    /// Replaces a number's settings with `number`, if they are still `read` (what the
    /// change was made from): a compare-and-set, so that of two changes made from the
    /// same read one wins and the other is told (two PATCHes, or a PATCH racing a
    /// pool's creation, silently lost one change: a live torture run).
    fn update_number(&self, number: &TrackingNumber, read: &TrackingNumber) -> Result<Update>;
    fn delete_number(&self, operator_id: &str, number: &str) -> Result<bool>;
    /// How many numbers the operator has (static and pools' alike): what its cap
    /// (`api.max_numbers_per_operator`) is checked against.
    fn count_numbers(&self, operator_id: &str) -> Result<usize>;
    /// Every number with its settings, each row read on its own: one this version
    /// cannot read (written by a newer version during an upgrade or a rollback, or
    /// damaged) is an [`StoreError::Corrupt`] naming the number, and the others still
    /// load (one such row used to stop every node of the older version from starting).
    fn all_numbers(&self) -> Result<Vec<(String, Result<TrackingNumber>)>>;

    // Number pools and leases.
    /// Creates a pool and its numbers in one step; [`StoreError::Conflict`] if any of
    /// the numbers exists.
    fn create_pool(&self, pool: &Pool, numbers: &[TrackingNumber]) -> Result<()>;
    fn get_pool(&self, operator_id: &str, id: &str) -> Result<Option<Pool>>;
    /// The operator's pools whose settings this version can read (one it cannot is
    /// logged and left out, as in [`Store::list_numbers`]).
    fn list_pools(&self, operator_id: &str) -> Result<Vec<Pool>>;
    /// Unscoped: a web page issues from a pool by its id (the pool names the origins
    /// it allows).
    fn pool_by_id(&self, id: &str) -> Result<Option<Pool>>;
    /// Replaces a pool's settings (not its numbers) with `pool`'s, if they are still
    /// `read`'s: a compare-and-set like [`Store::update_number`].
    fn update_pool(&self, pool: &Pool, read: &Pool) -> Result<Update>;
    /// Leases a number of `pool` at `now_ms`, atomically (compare-and-set: no number is
    /// ever held by two leases, also across processes). In dynamic and callback mode a `session`
    /// with a live lease gets the same number with its lease extended. Otherwise the
    /// free number issued longest ago (never-issued first) is leased. None when every
    /// number is leased or cooling down.
    fn issue_lease(
        &self,
        pool: &Pool,
        session: Option<&str>,
        params: &BTreeMap<String, String>,
        now_ms: i64,
    ) -> Result<Option<Lease>> {
        let uncapped = LeaseCaps::default();
        Ok(
            match self.issue_lease_capped(pool, session, params, now_ms, uncapped)? {
                IssueOutcome::Leased(lease) => Some(lease),
                IssueOutcome::Exhausted
                | IssueOutcome::SessionFull { .. }
                | IssueOutcome::ClientFull { .. } => None,
            },
        )
    }
    /// The lease a number was under at `at_ms`, if any (attribution of a call).
    fn lease_at(&self, number: &str, at_ms: i64) -> Result<Option<Lease>>;
    /// Numbers of the pool under a live lease at `now_ms`.
    fn leased_count(&self, pool_id: &str, now_ms: i64) -> Result<usize>;

    // Call logs.
    /// Writes finished calls and the follow-ups they cause, in one atomic step (a call's
    /// webhooks and notices are never lost nor sent for a call that was not logged).
    /// Idempotent by `call_id`: a record written twice is kept once, and the follow-ups
    /// of a record already stored are not queued again. The call leaves the calls in
    /// progress (see [`Store::upsert_active_calls`]) in the same step. A record whose
    /// call in progress another incarnation owns (`node`, `owner_epoch`) is not written.
    fn insert_calls(&self, calls: &[CallRecord], follow_ups: &[(usize, NewFollowUp)])
        -> Result<()>;
    /// Writes calls in progress (state `active`, durable from admission): inserts new
    /// ones and replaces those still in progress (e.g. at answer). A call that already
    /// has its final record is left alone. `insert_calls` removes a call from here.
    /// Each is written only by the incarnation that owns the call (`record.node` and
    /// `record.owner_epoch`), and not at all by an incarnation the store knows was
    /// declared down or superseded by a newer one; a checkpoint, when given, replaces
    /// the stored one.
    fn upsert_active_calls(&self, calls: &[ActiveCall]) -> Result<()>;
    /// The calls in progress carried by `node` (unscoped: taking over or finalising a
    /// node's calls after it died), oldest first, with their owning epoch.
    /// The calls in progress `node` owns, those this version can read: one it cannot
    /// (a newer release's record, a damaged row) is logged and left out, not the whole
    /// list's error (it stopped a takeover of all the others, and a node's start).
    fn active_calls_of(&self, node: &str) -> Result<Vec<ActiveCall>>;
    /// Moves a call in progress from incarnation `from` to `to` (compare-and-set on its
    /// owner: the fencing token of a takeover). The call as stored if this claim won,
    /// None if another did or the call ended.
    fn claim_call(
        &self,
        call_id: &str,
        from: (&str, u64),
        to: (&str, u64),
    ) -> Result<Option<ActiveCall>>;
    /// A node starts: its incarnation (epoch) goes up by one and its addresses are
    /// recorded. Returns the new epoch and the previous incarnation's last sign of life
    /// (None for a node never seen).
    fn register_node(&self, info: &NodeInfo, now_ms: i64) -> Result<(u64, Option<i64>)>;
    /// [`Store::register_node`] for a node that rejoins: only while the registry still
    /// lists incarnation `after` of it, as the node just read (compare-and-set); None
    /// when another process registered one since (two processes with one node id: the
    /// caller reads again and decides again). Read then registered in two calls, a
    /// replacement registering in between had the id taken back from it.
    fn register_node_after(
        &self,
        info: &NodeInfo,
        now_ms: i64,
        after: u64,
    ) -> Result<Option<(u64, Option<i64>)>>;
    /// A sign of life of `node` in incarnation `epoch` at `now_ms`; false if the store
    /// knows a newer incarnation or this one was declared down (it must not act as the
    /// node any more, and must rejoin as a new incarnation).
    fn node_alive(&self, node: &str, epoch: u64, now_ms: i64) -> Result<bool>;
    /// The cluster declared `node` in incarnation `epoch` down: true if this call did
    /// (compare-and-set: the first of several survivors wins), false if it already was
    /// or a newer incarnation runs.
    fn mark_node_down(&self, node: &str, epoch: u64) -> Result<bool>;
    /// [`Store::mark_node_down`] by member `by` (name, incarnation), only while `by`
    /// is that incarnation in good standing (not declared down, not restarted since;
    /// marking itself down as it leaves, it is): both sides of a cut cluster, each
    /// counting itself a majority, marked each other down, every node then read its
    /// own row down and dropped its calls, and no claim of a node declared down is
    /// taken, so every call was lost (a review). The first side's mark stands; the
    /// other side's are refused. SQLite checks and marks in one statement; ScyllaDB
    /// reads the marker's row, then marks (not atomic together).
    fn mark_node_down_by(&self, node: &str, epoch: u64, by: (&str, u64)) -> Result<bool>;
    /// An operator takes `node` out of the cluster for good (`tsunagu cluster forget`):
    /// its incarnation `epoch` is marked retired, and down (fenced: if it still runs,
    /// its next sign of life fails and it must rejoin). Members stop listing it; a
    /// node of that name that starts again is a new incarnation, not retired. True if
    /// this call retired it; false if a newer incarnation runs or none is known.
    fn retire_node(&self, node: &str, epoch: u64) -> Result<bool>;
    /// Every node ever registered, by name.
    fn nodes(&self) -> Result<Vec<NodeRow>>;

    // The provisioning change feed: every node follows it to keep its copies current.
    /// Records that something of `kind` (`number`, `advertiser`, `webhooks`, `prompt`)
    /// with this key changed; returns the change's number.
    fn record_change(&self, kind: &str, key: &str) -> Result<i64>;
    /// Up to `limit` changes after number `seq`, in order; `complete` is false when
    /// older changes were pruned (the caller reloads everything).
    fn changes_since(&self, seq: i64, limit: usize) -> Result<Changes>;

    // Operators' own prompts (shared by every node).
    /// Stores (or replaces) an operator's prompt unless the operator's prompts, less
    /// the one it replaces, would then pass `quota` ([`judge_prompt_put`]): checked
    /// and written at once, so uploads through several nodes cannot pass it together.
    fn put_prompt(
        &self,
        operator_id: &str,
        name: &str,
        wav: &[u8],
        quota: PromptQuota,
    ) -> Result<PromptPut>;
    fn delete_prompt(&self, operator_id: &str, name: &str) -> Result<bool>;
    fn prompt(&self, operator_id: &str, name: &str) -> Result<Option<Vec<u8>>>;
    /// Every operator's prompts: (operator id, name, WAV).
    fn all_prompts(&self) -> Result<Vec<(String, String, Vec<u8>)>>;
    /// Queues follow-ups that belong to no finished call (e.g. `call.started`).
    fn enqueue_follow_ups(&self, items: &[NewFollowUp]) -> Result<()>;
    /// Whether a call from `caller` to `advertiser_id` (ended, or in progress) started at
    /// or after `since_ms` and before `before`: a start time and call id, compared in
    /// that order, so that of two calls started in the same millisecond exactly one is
    /// the earlier.
    fn earlier_call(
        &self,
        advertiser_id: &str,
        caller: &str,
        since_ms: i64,
        before: (i64, &str),
    ) -> Result<bool>;
    fn get_call(&self, operator_id: &str, call_id: &str) -> Result<Option<CallRecord>>;
    /// Streams the calls matching `query` to `visit`, in the query's order, until
    /// `visit` returns false. Rows are not collected in memory.
    fn scan_calls(
        &self,
        query: &CallQuery,
        visit: &mut dyn FnMut(CallRecord) -> bool,
    ) -> Result<()>;

    // Webhooks.
    /// Adds `hook` unless its operator has `limit` webhooks already
    /// ([`StoreError::InUse`]): counted and added at once, so that requests in
    /// parallel cannot pass the count together (SQLite: one write transaction;
    /// ScyllaDB: the count is read first, as close as it has without a counter).
    fn create_webhook(&self, hook: &Webhook, limit: usize) -> Result<()>;
    fn list_webhooks(&self, operator_id: &str) -> Result<Vec<Webhook>>;
    fn delete_webhook(&self, operator_id: &str, id: &str) -> Result<bool>;
    /// Unscoped: the delivery worker looks a webhook up by the id its outbox row names.
    fn get_webhook(&self, id: &str) -> Result<Option<Webhook>>;
    /// Every operator's webhooks (a node caches them in memory at start).
    fn all_webhooks(&self) -> Result<Vec<Webhook>>;

    // The follow-up outbox: at-least-once delivery, durable across restarts.
    /// Claims up to `limit` follow-ups due at `now_ms`, oldest first, and hides them
    /// from other claimers for `claim_ms` (a worker that dies mid-delivery releases
    /// them that way). Each claim counts as an attempt.
    fn claim_follow_ups(&self, now_ms: i64, limit: usize, claim_ms: i64) -> Result<Vec<FollowUp>>;
    /// A follow-up was delivered: it leaves the outbox.
    fn follow_up_delivered(&self, id: i64) -> Result<()>;
    /// A delivery failed: try again at `retry_at_ms`, or never (`None`: kept as dead).
    /// Written only while the row still shows `claim` ([`OutboxClaim`]); false when
    /// the claim was lost to another worker (the row is left as that worker has it).
    fn follow_up_failed(
        &self,
        claim: OutboxClaim,
        retry_at_ms: Option<i64>,
        error: &str,
    ) -> Result<bool>;
    /// Follow-ups waiting for delivery, and dead ones.
    fn follow_up_counts(&self) -> Result<(u64, u64)>;
    /// Hands claimed follow-ups back untried (their destination was busy): each due
    /// again at its time (store milliseconds), and the claim's attempt is not counted.
    /// A row whose claim was lost (see [`OutboxClaim`]) is left as its new claimer has
    /// it.
    fn release_follow_ups(&self, claims: &[(OutboxClaim, i64)]) -> Result<()>;
    /// Counts one SMS to a caller's number on `day` (a day number in the node's time
    /// zone) for the call `call_id`, if fewer than `cap` were counted for that number
    /// and day; true when this SMS may be sent. Idempotent per call (a retried delivery
    /// is not counted twice); counts older than yesterday are forgotten.
    fn take_caller_sms(&self, caller: &str, day: i64, call_id: &str, cap: u32) -> Result<bool>;
    /// Counts calls' notices (e-mail and SMS to a number's `notify` recipients) against
    /// their tracking number's quota for a clock hour, for the whole cluster: for each
    /// claim, in order, true when its notices may go (fewer than `cap` calls were
    /// counted for that number and hour; this one is then counted). Idempotent per call
    /// (a retried batch is not counted twice); counts of hours more than two before the
    /// current one are forgotten. The call-log writer asks once per batch.
    fn take_notices(&self, claims: &[NoticeClaim<'_>], cap: u32) -> Result<Vec<bool>>;

    /// A cheap round trip that fails when the store cannot serve requests.
    fn ping(&self) -> Result<()>;
}
