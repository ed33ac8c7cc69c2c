//! The call-log writer: calls hand it their records (never blocking a call) and one
//! thread writes them to the store in batches.
//!
//! - A call is in the store from admission: its record in progress (state `active`) is
//!   written within [`ACTIVE_DELAY`] of the call starting, and again at answer (both
//!   coalesced: a call that ends first is written once, as ended). So a crash (kill -9)
//!   loses at most the calls admitted in the last [`ACTIVE_DELAY`] plus [`LINGER`] (a
//!   call that ended waits that long for its final record's commit) and one batch
//!   write: under a second. The rows of a node that died are finalised by
//!   [`recover`].
//! - Final records and events wait up to [`LINGER`] for others to share their write:
//!   a commit costs the same for one record as for hundreds, and at a few hundred calls
//!   per second a node (each node of a cluster carries a share) would otherwise commit
//!   once per call.
//! - The final record replaces it when the call ends; validity is judged then, when
//!   earlier calls of the same caller are known.
//! - If the store fails, the batch is kept and retried with backoff, in order. After
//!   [`STALL`] of failing, [`CallLog::ready`] turns false: the node reports not-ready and
//!   refuses new INVITEs, so the queue holds only what calls already admitted still
//!   send (a few messages each, [`MESSAGES_PER_CALL`]) and is bounded by admission
//!   (see [`CallLog::ready`]). Nothing is dropped; the records are written once the store
//!   is back.
//! - Every second the writer records the node's sign of life in the store
//!   (`Store::node_alive`): a node that died is known to have died after that moment.
//!   It is also the write an idle node still makes: failing for [`STALL`], the node
//!   turns not ready as after failing record writes.
//!
//! The same writer queues the call's follow-ups (webhook events, notices, GA4) into the
//! store's outbox, in the transaction that stores the record.

use crate::clock::now_ms;
use crate::decide::ivr::chose_by_key;
use crate::decide::validity::{judge, Facts};
use crate::follow_up::hooks::WebhookCache;
use crate::follow_up::plan::{callback_pool, CallEvent, Callback, Planner};
use crate::metrics::{CallMetrics, FollowUpMetrics};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tsunagu_store::{
    ActiveCall, CallRecord, CallResult, CallState, CallerKind, NewFollowUp, NumberKind, Store,
    TrackingNumber,
};

/// A finished call and the number it was made to (validity rule, pool, follow-ups).
pub struct LogEntry {
    pub record: CallRecord,
    pub number: Arc<TrackingNumber>,
    /// The caller's number was asserted or verified by its trunk (it may get an SMS).
    pub caller_verified: bool,
    /// The caller was played the number's IVR menu: a rule requiring an IVR key
    /// applies (see `decide::validity::Facts::ivr_offered`).
    pub ivr_offered: bool,
}

enum LogMsg {
    Entry(Box<LogEntry>),
    /// A call's record in progress (admitted, or answered).
    Active(Box<ActiveCall>),
    Event(Box<CallEvent>),
    /// Answered once everything queued before it is written.
    Flush(mpsc::Sender<()>),
}

/// How long a call's record in progress may wait before it is written (coalescing the
/// admission and answer updates, and skipping calls that end sooner). Also the most a
/// kill -9 can lose of calls just admitted.
pub const ACTIVE_DELAY: Duration = Duration::from_millis(500);
/// How long a checkpoint (an answer, a re-INVITE: what another node needs to resume the
/// call) may wait: the most of a call's life a kill -9 can leave unresumable.
pub const CHECKPOINT_DELAY: Duration = Duration::from_millis(50);
/// How long writes may fail before the node stops taking new calls.
pub const STALL: Duration = Duration::from_secs(2);
/// Every second: the node's sign of life (the cadence peers that cannot hear this
/// node judge its sign of life by).
const HEARTBEAT: Duration = tsunagu_cluster::STORE_SIGN_EVERY;
/// How long the first record of a batch waits for more before the batch is written
/// (unless the batch is full, a flush is asked for, or records in progress are due).
/// Measured (`loadtest/cluster_ladder.py --per-node`, one node at 300 calls/s): the
/// writer's CPU per call fell from 0.220 to 0.109 ms, at 900 calls/s from 0.113 to 0.064.
pub const LINGER: Duration = Duration::from_millis(20);
/// While anything waits to be written, the writer sleeps and collects what calls sent
/// in this long, rather than waking for each message: a call sends it up to
/// [`MESSAGES_PER_CALL`] messages, and a wake-up (the writer's, and the sending
/// runtime thread's system call to wake it) cost more than the message. An idle
/// writer still wakes at the first message. Measured (`loadtest/cluster_ladder.py
/// --rates 600 --per-node`, a node at 200 calls/s): see README "The cluster ladder".
pub const TICK: Duration = LINGER;
/// The most messages one call sends the writer while it is not [`CallLog::ready`]: in
/// progress at admission and at answer, `call.started` and `call.answered` events, and
/// its final record. (Records in progress at queueing and forwarding attempts, and
/// checkpoints of session changes, are sent only while the writer is ready: see
/// `Call::note_progress` and `Call::checkpoint_now`.)
pub const MESSAGES_PER_CALL: usize = 5;

/// Shared between the writer thread and its handles.
struct Shared {
    /// Messages waiting for the writer.
    queued: AtomicI64,
    /// Writes have been failing for more than [`STALL`].
    stalled: AtomicBool,
    /// Above this many waiting messages the node takes no new calls.
    high_water: i64,
}

#[derive(Clone)]
pub struct CallLog {
    tx: mpsc::Sender<LogMsg>,
    shared: Arc<Shared>,
    /// Records promised and not written yet ([`CallLog::promise`]).
    promised: Arc<(std::sync::Mutex<usize>, std::sync::Condvar)>,
}

/// A final record that will be written later, from another thread (a recorded call's,
/// once its recording is closed): [`CallLog::flush`] waits for it. Given back when
/// dropped, written or not.
pub struct Promise(Arc<(std::sync::Mutex<usize>, std::sync::Condvar)>);

impl Drop for Promise {
    fn drop(&mut self) {
        let (count, kept) = &*self.0;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        kept.notify_all();
    }
}

const BATCH: usize = 512;

/// What the writer needs besides the store.
pub struct Writer {
    pub store: Arc<dyn Store>,
    pub metrics: CallMetrics,
    pub follow_up_metrics: FollowUpMetrics,
    pub planner: Planner,
    /// Woken when follow-ups were queued (the delivery worker waits on it).
    pub wake: Arc<Notify>,
    pub webhooks: WebhookCache,
    /// This node and its incarnation, for the heartbeat.
    pub node_id: String,
    /// Changes when the node rejoins its cluster as a new incarnation.
    pub epoch: Arc<std::sync::atomic::AtomicU64>,
    /// Above this many waiting messages the node takes no new calls (see
    /// [`CallLog::ready`]).
    pub high_water: usize,
    /// Calls per tracking number and clock hour whose notices go
    /// (`notify.notices_per_number_per_hour`, 0: no limit), counted in the store for
    /// the whole cluster ([`decide_notices`]).
    pub notices_per_hour: u32,
    /// Where records the store refuses for good are set aside (see [`write_apart`]):
    /// `<data_dir>/call_log_rejected.jsonl`.
    pub rejected: std::path::PathBuf,
    /// The length of `rejected` before a write of this process's that failed: the next
    /// one cuts back to it (see [`append_line`]).
    pub rejected_cut: std::cell::Cell<Option<u64>>,
    /// Whether a record's notices go (by call id), decided at its first try and kept
    /// until it is written: each retry of a batch took from its number's hourly
    /// quota again, and counted its withheld guards again (a review).
    pub notices_decided: std::cell::RefCell<HashMap<String, bool>>,
}

impl CallLog {
    /// Starts the writer thread; it ends (after flushing) when every `CallLog` is dropped.
    pub fn start(w: Writer) -> (CallLog, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            queued: AtomicI64::new(0),
            stalled: AtomicBool::new(false),
            high_water: w.high_water as i64,
        });
        let writer_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("call-log".into())
            .spawn(move || writer(w, rx, writer_shared))
            .expect("spawn call-log thread");
        let promised = Arc::default();
        (
            CallLog {
                tx,
                shared,
                promised,
            },
            handle,
        )
    }

    fn send(&self, msg: LogMsg) {
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(msg).is_err() {
            tracing::error!("call-log writer is gone; record lost");
        }
    }

    /// A call's final record.
    pub fn write(&self, entry: LogEntry) {
        self.send(LogMsg::Entry(Box::new(entry)));
    }

    /// A call's record in progress (state `active`): at admission, when it queues, at
    /// each forwarding attempt and at answer; with a checkpoint once answered and after each change
    /// of the session (what another node needs to take the call over).
    pub fn active(&self, record: CallRecord, checkpoint: Option<String>) {
        self.send(LogMsg::Active(Box::new(ActiveCall { record, checkpoint })));
    }

    /// A call event for webhooks (queued in order with the call's record).
    pub fn event(&self, event: CallEvent) {
        self.send(LogMsg::Event(Box::new(event)));
    }

    /// Whether new calls may be admitted: writes are not failing for more than
    /// [`STALL`], and fewer than the high-water mark of messages wait. This is what
    /// bounds the writer's queue: calls are admitted only below the mark, and each call
    /// admitted sends at most [`MESSAGES_PER_CALL`] messages, so the queue never exceeds
    /// the mark plus that many per call the node can hold (`node.max_calls`).
    pub fn ready(&self) -> bool {
        !self.shared.stalled.load(Ordering::Relaxed)
            && self.shared.queued.load(Ordering::Relaxed) < self.shared.high_water
    }

    /// A final record to come from another thread: until it is written (the promise
    /// dropped after [`CallLog::write`]), [`CallLog::flush`] waits for it. Without it
    /// a recorded call's record, written when its recording closed, could come after
    /// the node's last flush at shutdown and be lost (the call already counted as
    /// logged, nothing wrote a substitute).
    pub fn promise(&self) -> Promise {
        *self.promised.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Promise(self.promised.clone())
    }

    /// Blocks until every record queued so far, and every one promised, is in the
    /// store, or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (count, kept) = &*self.promised;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = kept
                .wait_timeout(n, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(n);
        let left = deadline.saturating_duration_since(Instant::now());
        let (tx, rx) = mpsc::channel();
        // Sent and counted like every message the writer takes (a flush counted apart
        // left the count one short for good: a review). A writer gone drops `tx`, so
        // the wait ends at once.
        self.send(LogMsg::Flush(tx));
        rx.recv_timeout(left).is_ok()
    }
}

#[derive(Default)]
struct Batch {
    events: Vec<CallEvent>,
    entries: Vec<LogEntry>,
    /// Calls in progress written with this batch.
    active: Vec<ActiveCall>,
}

impl Batch {
    fn len(&self) -> usize {
        self.events.len() + self.entries.len() + self.active.len()
    }
}

/// Records in progress waiting for [`ACTIVE_DELAY`], by call id (a newer one replaces
/// an older; a final record removes it).
#[derive(Default)]
struct InProgress {
    calls: HashMap<String, ActiveCall>,
    /// When the oldest waiting one arrived.
    since: Option<Instant>,
    /// When the oldest waiting checkpoint arrived.
    checkpoint_since: Option<Instant>,
}

impl InProgress {
    /// A newer record replaces an older one; a checkpoint stays until a newer one.
    fn put(&mut self, mut a: ActiveCall, now: Instant) {
        self.since.get_or_insert(now);
        if a.checkpoint.is_some() {
            self.checkpoint_since.get_or_insert(now);
        }
        if a.checkpoint.is_none() {
            a.checkpoint = self
                .calls
                .get_mut(&a.record.call_id)
                .and_then(|old| old.checkpoint.take());
        }
        self.calls.insert(a.record.call_id.clone(), a);
    }

    /// A final record supersedes the call's record in progress; true if one waited.
    fn ended(&mut self, call_id: &str) -> bool {
        self.calls.remove(call_id).is_some()
    }

    fn due(&self, now: Instant) -> bool {
        self.next_due().is_some_and(|t| now >= t)
    }

    /// When the waiting records are due, if any wait.
    fn next_due(&self) -> Option<Instant> {
        let plain = self.since.map(|t| t + ACTIVE_DELAY);
        let checkpoint = self.checkpoint_since.map(|t| t + CHECKPOINT_DELAY);
        plain.into_iter().chain(checkpoint).min()
    }

    /// The waiting records of calls from the callers of `entries` to the same
    /// advertisers: written with the entries' batch, before them, so that the duplicate
    /// check of a call that ends first sees an earlier call of its caller still in
    /// progress (see `complete_records`).
    fn take_callers_of(&mut self, entries: &[LogEntry]) -> Vec<ActiveCall> {
        if self.calls.is_empty() || entries.is_empty() {
            return Vec::new();
        }
        let callers: HashSet<(&str, &str)> = entries
            .iter()
            .filter(|e| duplicate_window_ms(e).is_some())
            .map(|e| caller_of(&e.record))
            .collect();
        if callers.is_empty() {
            return Vec::new();
        }
        self.calls
            .extract_if(|_, a| callers.contains(&caller_of(&a.record)))
            .map(|(_, a)| a)
            .collect()
    }

    fn take(&mut self) -> Vec<ActiveCall> {
        self.since = None;
        self.checkpoint_since = None;
        self.calls.drain().map(|(_, r)| r).collect()
    }
}

fn writer(w: Writer, rx: mpsc::Receiver<LogMsg>, shared: Arc<Shared>) {
    let mut batch = Batch::default();
    let mut in_progress = InProgress::default();
    let mut flushes = Vec::new();
    let mut beat = Instant::now();
    // Since when the sign of life has failed to be written, if it has.
    let mut beat_failing: Option<Instant> = None;
    let mut open = true;
    // When the batch got its first record (it is written at most LINGER later).
    let mut first_at: Option<Instant> = None;
    // The last drain stopped at a full batch: more may wait in the channel.
    let mut backlog = false;
    while open || batch.len() > 0 || !in_progress.calls.is_empty() {
        let now = Instant::now();
        let mut wait = (beat + HEARTBEAT).saturating_duration_since(now);
        if let Some(t) = in_progress.next_due() {
            wait = wait.min(t.saturating_duration_since(now));
        }
        if let Some(first) = first_at {
            wait = wait.min((first + LINGER).saturating_duration_since(now));
        }
        // `at`: when the message arrived, at the latest (see `arrived`).
        let take = |msg: LogMsg,
                    at: Instant,
                    batch: &mut Batch,
                    in_progress: &mut InProgress,
                    flushes: &mut Vec<mpsc::Sender<()>>| {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            match msg {
                LogMsg::Entry(e) => {
                    // A call that ended before its record in progress was written is
                    // written once, as ended.
                    in_progress.ended(&e.record.call_id);
                    batch.entries.push(*e)
                }
                LogMsg::Active(r) => in_progress.put(*r, at),
                LogMsg::Event(e) => batch.events.push(*e),
                LogMsg::Flush(done) => flushes.push(done),
            }
        };
        let holding = batch.len() > 0 || !in_progress.calls.is_empty();
        // When what this pass takes in arrived, at the latest, and what its deadlines
        // run from: after a tick, the tick's start (so a checkpoint is written within
        // CHECKPOINT_DELAY of arriving, ticks or not); otherwise the end of the wait.
        // (What came in during the previous pass's write is dated at most that late.)
        let mut received = None;
        let arrived = match next_wait(open, holding, backlog, wait) {
            Wait::Collect(d) => {
                std::thread::sleep(d);
                w.metrics.log_wakeups.inc();
                now
            }
            Wait::Receive(d) => {
                match rx.recv_timeout(d) {
                    Ok(msg) => received = Some(msg),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // All senders gone: write what is left (in progress included), end.
                    Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
                }
                w.metrics.log_wakeups.inc();
                Instant::now()
            }
            Wait::No => now,
        };
        if let Some(msg) = received {
            take(msg, arrived, &mut batch, &mut in_progress, &mut flushes);
        }
        backlog = false;
        while open && flushes.is_empty() {
            if batch.len() >= BATCH {
                backlog = true;
                break;
            }
            match rx.try_recv() {
                Ok(msg) => take(msg, arrived, &mut batch, &mut in_progress, &mut flushes),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => open = false,
            }
        }
        let now = Instant::now();
        let due = in_progress.due(now) || !flushes.is_empty() || !open;
        if due {
            batch.active = in_progress.take();
        }
        if batch.len() > 0 {
            first_at.get_or_insert(arrived);
        }
        let lingering =
            !due && batch.len() < BATCH && first_at.is_some_and(|first| now < first + LINGER);
        let pending = |batch: &Batch, in_progress: &InProgress| {
            shared.queued.load(Ordering::Relaxed) + (batch.len() + in_progress.calls.len()) as i64
        };
        w.metrics.log_pending.set(pending(&batch, &in_progress));
        if batch.len() > 0 && !lingering {
            let same_callers = in_progress.take_callers_of(&batch.entries);
            batch.active.extend(same_callers);
            write_with_retry(&w, &mut batch, &shared);
            // Written: the store takes writes, whatever the last sign of life said.
            beat_failing = None;
            first_at = None;
            w.metrics.log_pending.set(pending(&batch, &in_progress));
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        if now >= beat + HEARTBEAT {
            beat = now;
            let written = heartbeat(&w);
            note_heartbeat(&w, &shared, written, &mut beat_failing);
        }
    }
}

/// How the writer waits before its next drain of the channel.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    /// Sleep this long, not listening: messages collect in the channel.
    Collect(Duration),
    /// Block until the first message, or this long.
    Receive(Duration),
    /// Drain at once (more waits in the channel, or it is closed).
    No,
}

/// `open`: senders remain; `holding`: records wait to be written; `backlog`: the last
/// drain stopped at a full batch; `until`: the nearest deadline (heartbeat, records in
/// progress due, the batch's linger).
fn next_wait(open: bool, holding: bool, backlog: bool, until: Duration) -> Wait {
    match (open, holding, backlog) {
        (false, _, _) | (true, _, true) => Wait::No,
        (true, true, false) => Wait::Collect(until.min(TICK)),
        (true, false, false) => Wait::Receive(until),
    }
}

/// Records the node's sign of life; false if the store could not be written. Refused
/// when the store knows a newer incarnation of this node id (another process runs as
/// this node: two nodes must not share an id) or the cluster declared this one down
/// (it rejoins: see `cluster_link`): written, as far as the store goes.
fn heartbeat(w: &Writer) -> bool {
    let epoch = w.epoch.load(Ordering::Relaxed);
    match w.store.node_alive(&w.node_id, epoch, now_ms()) {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(
                node = %w.node_id,
                epoch,
                "the store refused this incarnation's sign of life (declared down, or a newer incarnation of this node id runs)"
            );
            true
        }
        Err(e) => {
            tracing::debug!(%e, "heartbeat not written");
            false
        }
    }
}

/// The sign of life is the store write an idle node still makes: failing for
/// [`STALL`] (from the end of the first failed try, so two tries at least: one try
/// can take the store's whole timeout), the node turns not ready as after failing
/// record writes; written again, ready. An idle node with a store that could not be
/// written (locked, disk full) reported ready until a call came and its records
/// failed (a review).
fn note_heartbeat(w: &Writer, shared: &Shared, written: bool, failing: &mut Option<Instant>) {
    if written {
        *failing = None;
        set_stalled(w, shared, false, "the node's sign of life");
        return;
    }
    let since = *failing.get_or_insert_with(Instant::now);
    if since.elapsed() >= STALL {
        set_stalled(w, shared, true, "the node's sign of life");
    }
}

/// The store is (`stalled`) or is no longer failing `what`: readiness, the gauge and
/// one log line on each change.
fn set_stalled(w: &Writer, shared: &Shared, stalled: bool, what: &str) {
    if shared.stalled.swap(stalled, Ordering::Relaxed) == stalled {
        return;
    }
    w.metrics.log_stalled.set(i64::from(stalled));
    if stalled {
        tracing::error!(
            what,
            "the store cannot be written: not ready, refusing new calls until it can"
        );
    } else {
        tracing::info!(what, "the store is written again; taking new calls");
    }
}

/// The final record of a call a node left in progress when it died (killed, crashed, or
/// declared dead by its peers): result `failed`, reason `node_lost`, ended at the node's
/// last sign of life (never before the call started or was answered). Talk time runs
/// from the answer to then.
pub fn lost_call(mut record: CallRecord, last_seen: Option<i64>) -> CallRecord {
    record.stage = None; // a final record tells no stage
    let floor = record
        .answered_at
        .unwrap_or(record.started_at)
        .max(record.started_at);
    let ended = last_seen.unwrap_or(floor).max(floor);
    let seconds = |ms: i64| ((ms.max(0) + 500) / 1000).min(i64::from(u32::MAX)) as u32;
    record.ring_seconds = seconds(record.answered_at.unwrap_or(ended) - record.started_at);
    record.talk_seconds = record.answered_at.map(|a| seconds(ended - a)).unwrap_or(0);
    record.ended_at = ended;
    record.result = CallResult::Failed;
    record.sip_code = 500;
    record.state = CallState::Ended;
    record.end_reason = Some("node_lost".into());
    record
}

/// The number a call in progress was taken on, for its final record and follow-ups
/// when another run or another node finishes it: the owner, advertiser and tracking
/// parameters of its record (what they were when the call came), and the number's
/// settings now (validity rule, notices, GA4) only if the number is still the same
/// operator's. `current` is the number as the store has it now, if at all. A number
/// moved to another advertiser meanwhile had the call logged under the new one, and
/// one deleted and created again by another operator had it logged, listed, notified
/// and its recording served to that operator (a review).
pub fn number_for_record(current: Option<TrackingNumber>, record: &CallRecord) -> TrackingNumber {
    let settings = current
        .filter(|n| n.operator_id == record.operator_id)
        .unwrap_or_default();
    TrackingNumber {
        number: record.tracking_number.clone(),
        operator_id: record.operator_id.clone(),
        advertiser_id: record.advertiser_id.clone(),
        tracking_params: record.tracking_params.clone(),
        ..settings
    }
}

/// Logs, through `log`, the calls a previous run of `node_id` left in progress (it was
/// killed or crashed: see [`lost_call`]). Runs at start, before the node takes calls,
/// so nothing of this run is mistaken for them. Returns how many there were.
pub fn recover(
    store: &dyn Store,
    log: &CallLog,
    node_id: &str,
    last_seen: Option<i64>,
) -> tsunagu_store::Result<usize> {
    let left = store.active_calls_of(node_id)?;
    for tsunagu_store::ActiveCall { record, .. } in &left {
        // A number this version cannot read: logged on the record's own copy of what
        // matters (owner, advertiser, parameters); it stopped the node's start.
        let current = match store.get_number(&record.tracking_number) {
            Err(tsunagu_store::StoreError::Corrupt(_)) => None,
            read => read?,
        };
        let number = number_for_record(current, record);
        log.write(LogEntry {
            record: lost_call(record.clone(), last_seen),
            number: Arc::new(number),
            caller_verified: false,
            ivr_offered: false,
        });
    }
    Ok(left.len())
}

/// Tries in a row a batch fails for a reason retrying does not mend before it is
/// written apart (see [`write_apart`]).
const PERMANENT_TRIES: u32 = 3;

/// Whether a store error is one retrying does not mend: a row or value it cannot
/// decode, a conflict. An outage (`Unavailable`, `TimedOut`) is waited out.
fn is_permanent(e: &tsunagu_store::StoreError) -> bool {
    use tsunagu_store::StoreError as E;
    matches!(e, E::Corrupt(_) | E::Conflict(_) | E::InUse(_))
}

/// Writes the batch, retrying with backoff while the store fails. A call's events come
/// before its record in the channel, so writing events first keeps their order. A
/// batch that fails [`PERMANENT_TRIES`] times in a row for a reason retrying does not
/// mend is written apart ([`write_apart`]): one bad row stalled every record behind
/// it, the node's sign of life with them, for ever (a review).
fn write_with_retry(w: &Writer, batch: &mut Batch, shared: &Shared) {
    let mut backoff = Duration::from_millis(50);
    let failing_since = Instant::now();
    let mut permanent = 0;
    loop {
        let started = Instant::now();
        match write_batch(w, batch) {
            Ok(queued) => {
                if !batch.entries.is_empty() {
                    w.metrics
                        .store_write_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                w.metrics.log_written.inc_by(batch.entries.len() as u64);
                w.metrics.active_written.inc_by(batch.active.len() as u64);
                batch.entries.clear();
                batch.active.clear();
                set_stalled(w, shared, false, "call records");
                if queued {
                    w.wake.notify_one();
                }
                return;
            }
            Err(e) => {
                w.metrics.log_write_errors.inc();
                // Counted until a write succeeds: a passing failure between two
                // permanent ones (a flaky store) must not keep the batch whole.
                if is_permanent(&e) {
                    permanent += 1;
                }
                if permanent >= PERMANENT_TRIES && write_apart(w, batch) {
                    set_stalled(w, shared, false, "call records");
                    w.wake.notify_one();
                    return;
                }
                if failing_since.elapsed() >= STALL {
                    set_stalled(w, shared, true, "call records");
                }
                tracing::warn!(%e, records = batch.entries.len(), in_progress = batch.active.len(), events = batch.events.len(), retry_in_ms = backoff.as_millis() as u64, "call-log write failed; will retry");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Writes a batch that keeps failing for good one item at a time, in the batch's
/// order: each event, each call in progress, then each final record. An item still
/// refused for good on its own is given up: an event or a call in progress is dropped
/// and logged (the call's final record, or its next record in progress, replaces the
/// row), a final record is set aside as a JSON line in the rejected file
/// (`Writer::rejected`, `tsunagu_call_log_rejected_total`), so none is lost. False,
/// with the batch as far as it got, when the store fails for a passing reason
/// meanwhile or the rejected file cannot be written (the retry loop goes on).
fn write_apart(w: &Writer, batch: &mut Batch) -> bool {
    // By start: a caller's earlier call is stored before a later one is judged against
    // it (the duplicate window), as within one batch, whichever ended first.
    let mut entries = std::mem::take(&mut batch.entries);
    entries.sort_by(|a, b| {
        (a.record.started_at, &a.record.call_id).cmp(&(b.record.started_at, &b.record.call_id))
    });
    let events = std::mem::take(&mut batch.events)
        .into_iter()
        .map(|e| Batch {
            events: vec![e],
            ..Batch::default()
        });
    let active = std::mem::take(&mut batch.active)
        .into_iter()
        .map(|a| Batch {
            active: vec![a],
            ..Batch::default()
        });
    let records = entries.into_iter().map(|e| Batch {
        entries: vec![e],
        ..Batch::default()
    });
    let mut parts = events.chain(active).chain(records);
    while let Some(mut part) = parts.next() {
        let done = match write_batch(w, &mut part) {
            Ok(_) => {
                w.metrics.log_written.inc_by(part.entries.len() as u64);
                w.metrics.active_written.inc_by(part.active.len() as u64);
                true
            }
            Err(e) if is_permanent(&e) => {
                tracing::error!(%e, "the store refuses an item of the call log for good");
                match part.entries.first() {
                    Some(entry) => set_aside(w, &entry.record),
                    None => true, // an event or a record in progress: dropped
                }
            }
            Err(_) => false,
        };
        if !done {
            for left in std::iter::once(part).chain(parts) {
                batch.events.extend(left.events);
                batch.active.extend(left.active);
                batch.entries.extend(left.entries);
            }
            return false;
        }
    }
    true
}

/// Appends `record` to the rejected file (a JSON line, on disk before this returns)
/// and counts it; false if the file cannot be written (the record then stays in the
/// batch: nothing is dropped).
fn set_aside(w: &Writer, record: &CallRecord) -> bool {
    let line = match serde_json::to_string(record) {
        Ok(line) => line,
        Err(e) => {
            serde_json::json!({"unserialisable": e.to_string(), "record": format!("{record:?}")})
                .to_string()
        }
    };
    let written = append_line(&w.rejected, &line, &w.rejected_cut);
    match written {
        Ok(()) => {
            w.metrics.log_rejected.inc();
            w.notices_decided.borrow_mut().remove(&record.call_id);
            tracing::error!(call_id = %record.call_id, file = %w.rejected.display(), "call record set aside: the store refuses it");
            true
        }
        Err(e) => {
            tracing::error!(call_id = %record.call_id, %e, file = %w.rejected.display(), "a call record the store refuses cannot be set aside either: kept, and tried again");
            false
        }
    }
}

/// Appends `line` and its newline to the file at `path` in one write, on disk before
/// this returns. What a write of this process's that failed left (a disk that filled
/// mid-line: its record stayed in the batch and is written again) is cut off first:
/// `cut` holds the file's length before that write. `writeln!` wrote the JSON and the
/// newline apart, and a disk filling between them joined two records on one line (a
/// review). Nothing else is ever cut: a file whose last line has no newline (edited by
/// hand) gets one before the new line.
fn append_line(
    path: &std::path::Path,
    line: &str,
    cut: &std::cell::Cell<Option<u64>>,
) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    let mut len = f.metadata()?.len();
    if let Some(before) = cut.get().filter(|b| *b < len) {
        tracing::warn!(file = %path.display(), bytes = len - before, "what a failed write left in the set-aside file removed (its record is written again)");
        f.set_len(before)?;
        len = before;
    }
    let mut bytes = Vec::with_capacity(line.len() + 2);
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            bytes.push(b'\n');
        }
    }
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    cut.set(Some(len));
    f.seek(SeekFrom::Start(len))?;
    f.write_all(&bytes)?;
    f.sync_data()?;
    cut.set(None);
    Ok(())
}

/// One attempt at the batch; true if follow-ups were queued. Events that were written
/// are removed from the batch, so a retry does not queue them twice.
fn write_batch(w: &Writer, batch: &mut Batch) -> tsunagu_store::Result<bool> {
    let store = &*w.store;
    let mut queued = false;
    if !batch.events.is_empty() {
        let mut items = Vec::new();
        for e in &batch.events {
            items.extend(w.planner.for_event(e, &w.webhooks.of(&e.operator_id)));
        }
        if !items.is_empty() {
            store.enqueue_follow_ups(&items)?;
            queued = true;
        }
        batch.events.clear();
    }
    if !batch.active.is_empty() {
        // Before the final records of this batch: a call in progress that ended since
        // is then replaced by its final record, never the other way round.
        store.upsert_active_calls(&batch.active)?;
    }
    if batch.entries.is_empty() {
        return Ok(queued);
    }
    let records = complete_records(store, &batch.entries)?;
    // The hourly bound on notices first: past it, no callback number is leased either
    // (it reaches people in the notices).
    let decisions = decide_notices(w, &records, &batch.entries)?;
    let mut follow_ups: Vec<(usize, NewFollowUp)> = Vec::new();
    for (i, ((r, e), (first_try, notices))) in records
        .iter()
        .zip(&batch.entries)
        .zip(decisions)
        .enumerate()
    {
        let callback = match callback_pool(r, &e.number, e.caller_verified) {
            Callback::Lease(pool) if notices => lease_callback(w, r, pool)?,
            Callback::Withheld => {
                if first_try {
                    w.follow_up_metrics.callbacks_withheld.inc();
                }
                None
            }
            Callback::Lease(_) | Callback::None => None,
        };
        let items = w.planner.after_call(
            r,
            &e.number,
            &w.webhooks.of(&r.operator_id),
            callback.as_deref(),
            e.caller_verified,
            notices,
        );
        if first_try && !e.caller_verified && w.planner.caller_sms_wanted(r, &e.number) {
            let unverified = crate::follow_up::metrics::UNVERIFIED;
            w.follow_up_metrics.guards.withheld(unverified);
        }
        follow_ups.extend(items.into_iter().map(|f| (i, f)));
    }
    store.insert_calls(&records, &follow_ups)?;
    let mut decided = w.notices_decided.borrow_mut();
    for r in &records {
        decided.remove(&r.call_id);
    }
    Ok(queued || !follow_ups.is_empty())
}

/// Decides whether each record's notices go, once per record however often its batch
/// is tried (kept in `notices_decided` until the record is written): those that want
/// notices take a place in their tracking number's quota for the clock hour the call
/// ended in, counted in the store for the whole cluster (one request for the batch;
/// counted per node, a cluster of N nodes sent N times the setting). Withheld ones
/// are counted in the metric. Returns, by record, (whether this was its first try,
/// whether its notices go).
fn decide_notices(
    w: &Writer,
    records: &[CallRecord],
    entries: &[LogEntry],
) -> tsunagu_store::Result<Vec<(bool, bool)>> {
    let known: Vec<Option<bool>> = {
        let decided = w.notices_decided.borrow();
        records
            .iter()
            .map(|r| decided.get(&r.call_id).copied())
            .collect()
    };
    // Records tried for the first time whose notices are wanted: by index.
    let claimed: Vec<usize> = (0..records.len())
        .filter(|&i| known[i].is_none() && w.notices_per_hour > 0)
        .filter(|&i| w.planner.notices_wanted(&records[i], &entries[i].number))
        .collect();
    let claims: Vec<tsunagu_store::NoticeClaim> = claimed
        .iter()
        .map(|&i| tsunagu_store::NoticeClaim {
            number: &records[i].tracking_number,
            hour: tsunagu_store::NoticeClaim::hour_of(records[i].ended_at),
            call_id: &records[i].call_id,
        })
        .collect();
    let mut decisions: Vec<(bool, bool)> = known
        .iter()
        .map(|k| (k.is_none(), k.unwrap_or(true)))
        .collect();
    if !claims.is_empty() {
        let allowed = w.store.take_notices(&claims, w.notices_per_hour)?;
        for (&i, ok) in claimed.iter().zip(allowed) {
            if !ok {
                w.follow_up_metrics.notices_withheld.inc();
            }
            decisions[i].1 = ok;
        }
    }
    let mut decided = w.notices_decided.borrow_mut();
    for (r, &(first, notices)) in records.iter().zip(&decisions) {
        if first {
            decided.insert(r.call_id.clone(), notices);
        }
    }
    Ok(decisions)
}

/// Leases a number of the callback pool that rings `r`'s caller. Idempotent per
/// caller (its session is the caller's number), so a retried batch, and the caller's
/// next missed call while the lease lives, get the same number.
fn lease_callback(
    w: &Writer,
    r: &CallRecord,
    pool_id: &str,
) -> tsunagu_store::Result<Option<String>> {
    // A pool whose settings this version cannot read (a newer release wrote it, during
    // an upgrade) is as good as gone here: the error, retried, stalled the whole log
    // (a review).
    let pool = match w.store.pool_by_id(pool_id) {
        Err(tsunagu_store::StoreError::Corrupt(e)) => {
            tracing::warn!(pool_id, call_id = %r.call_id, error = %e, "callback pool cannot be read; notice goes without a callback number");
            None
        }
        read => read?,
    };
    let Some(pool) = pool.filter(|p| p.operator_id == r.operator_id) else {
        tracing::warn!(pool_id, call_id = %r.call_id, "callback pool is gone; notice goes without a callback number");
        return Ok(None);
    };
    let params = BTreeMap::from([
        ("callback_of".to_string(), r.call_id.clone()),
        ("callback_to".to_string(), r.caller_number.clone()),
    ]);
    // One callback number per caller while its lease lives: a caller missed again
    // gets the same number, its lease extended (its parameters stay the first
    // missed call's). Each missed call leased one, so one verified caller's short
    // calls emptied a small callback pool for its hold time, up to a week (a review).
    let session = format!("callback:{}", r.caller_number);
    let lease = match w
        .store
        .issue_lease(&pool, Some(&session), &params, now_ms())
    {
        // A lease row this version cannot read: as an empty pool, not a stalled log.
        Err(tsunagu_store::StoreError::Corrupt(e)) => {
            tracing::warn!(pool_id, call_id = %r.call_id, error = %e, "callback lease cannot be read; notice goes without a callback number");
            None
        }
        read => read?,
    };
    let counter = match &lease {
        Some(_) => &w.follow_up_metrics.callbacks_issued,
        None => &w.follow_up_metrics.callback_pool_empty,
    };
    counter.inc();
    Ok(lease.map(|l| l.number))
}

/// The duplicate window of the entry's number, if its call is judged against earlier
/// calls of its caller (a window is set and the caller is known). Only then are its
/// caller's calls in progress written early (`InProgress::take_callers_of`): a load
/// test from one caller number to a number without a window costs no extra write.
fn duplicate_window_ms(e: &LogEntry) -> Option<i64> {
    let window_ms = i64::from(e.number.validity.duplicate_window_seconds) * 1000;
    (window_ms > 0 && caller_known(&e.record)).then_some(window_ms)
}

/// The caller's number is known (not anonymous, not empty): its calls can repeat.
fn caller_known(r: &CallRecord) -> bool {
    r.caller_kind != CallerKind::Anonymous && !r.caller_number.is_empty()
}

/// Who called whom, as the duplicate check groups calls.
fn caller_of(r: &CallRecord) -> (&str, &str) {
    (r.advertiser_id.as_str(), r.caller_number.as_str())
}

/// Completes each record before it is stored: the lease's tracking parameters for pool
/// numbers (attribution; for callback numbers also the call it calls back), and
/// validity, looking for earlier calls in the store and earlier in this batch.
fn complete_records(
    store: &dyn Store,
    batch: &[LogEntry],
) -> tsunagu_store::Result<Vec<CallRecord>> {
    let mut out: Vec<CallRecord> = Vec::with_capacity(batch.len());
    for e in batch {
        let r = &e.record;
        let rule = e.number.validity;
        let earlier = if let Some(window_ms) = duplicate_window_ms(e) {
            let since = r.started_at - window_ms;
            let before = (r.started_at, r.call_id.as_str());
            let in_batch = batch.iter().any(|o| {
                let o = &o.record;
                caller_of(o) == caller_of(r)
                    && o.started_at >= since
                    && (o.started_at, o.call_id.as_str()) < before
            });
            in_batch || store.earlier_call(&r.advertiser_id, &r.caller_number, since, before)?
        } else {
            false
        };
        let facts = Facts {
            result: r.result,
            talk_seconds: r.talk_seconds,
            caller_known: caller_known(r),
            earlier_call_in_window: earlier,
            ivr_offered: e.ivr_offered,
            ivr_digit: chose_by_key(e.number.ivr.as_ref(), r.ivr_digits.as_deref().unwrap_or("")),
            judgement_digit: r.judgement_digit.is_some(),
        };
        let mut record = r.clone();
        record.validity = judge(&rule, &facts);
        if e.number.kind != NumberKind::Static {
            // A lease row that cannot be read: the record without its parameters,
            // not a record refused (set aside) with every other call of the number.
            let lease = match store.lease_at(&r.tracking_number, r.started_at) {
                Err(tsunagu_store::StoreError::Corrupt(e)) => {
                    tracing::warn!(call_id = %r.call_id, error = %e, "the call's lease cannot be read: logged without its tracking parameters");
                    None
                }
                read => read?,
            };
            if let Some(lease) = lease {
                if e.number.kind == NumberKind::Callback {
                    record.callback_of = lease.params.get("callback_of").cloned();
                }
                record.tracking_params.extend(lease.params);
            }
        }
        out.push(record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock hour in milliseconds.
    const HOUR_MS: i64 = 3_600_000;
    use tsunagu_store::conformance::sample_call;
    use tsunagu_store::{CallQuery, FollowUpKind, SqliteStore, Validity, ValidityRule};

    /// (the file before, what a failed write of ours left, a line appended) -> the
    /// file after: what the failed write left is cut, nothing else; a last line
    /// without its newline (edited by hand) keeps its record.
    #[test]
    fn set_aside_lines_are_whole() {
        let rows: Vec<(&str, Option<u64>, &str, &str)> = vec![
            ("", None, "b", "b\n"),
            ("a\n", None, "b", "a\nb\n"),
            ("a\n{\"cut", Some(2), "b", "a\nb\n"),
            ("a\n{\"a\"}", None, "b", "a\n{\"a\"}\nb\n"),
            ("{\"cut", Some(0), "b", "b\n"),
            ("a\n", Some(2), "b", "a\nb\n"),
            // A length past the file's (it was cut by hand since): nothing cut.
            ("a\n", Some(9), "b", "a\nb\n"),
        ];
        for (before, failed_at, line, after) in rows {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("call_log_rejected.jsonl");
            if !before.is_empty() {
                std::fs::write(&path, before).unwrap();
            }
            let cut = std::cell::Cell::new(failed_at);
            append_line(&path, line, &cut).unwrap();
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                after,
                "{before:?} {failed_at:?}"
            );
            assert_eq!(cut.get(), None);
        }
    }

    #[test]
    fn lost_calls_end_at_the_last_sign_of_life() {
        let base = |answered: Option<i64>| {
            let mut r = sample_call("op", "adv", 10_000);
            r.state = CallState::Active;
            r.answered_at = answered;
            r
        };
        // (answered at, last seen) -> (ended at, ring s, talk s)
        let rows = [
            (Some(12_000), Some(40_000), (40_000, 2, 28)),
            (None, Some(40_000), (40_000, 30, 0)),
            // Seen last before the answer was written: never ends before it.
            (Some(12_000), Some(11_000), (12_000, 2, 0)),
            (None, None, (10_000, 0, 0)),
        ];
        for (answered, seen, (ended, ring, talk)) in rows {
            let r = lost_call(base(answered), seen);
            assert_eq!(
                (r.ended_at, r.ring_seconds, r.talk_seconds),
                (ended, ring, talk),
                "{answered:?} {seen:?}"
            );
            assert_eq!(r.result, CallResult::Failed);
            assert_eq!(r.state, CallState::Ended);
            assert_eq!(r.end_reason.as_deref(), Some("node_lost"));
        }
    }

    /// A call finished by another run or node is logged under its record's owner,
    /// advertiser and parameters; the number's settings now count only while it is
    /// still that operator's.
    #[test]
    fn a_lost_or_taken_over_call_keeps_its_records_owner() {
        use tsunagu_store::conformance::sample_number;
        let mut record = sample_call("op_a", "adv_x", 10_000);
        record.tracking_params = [("lease".to_string(), "1".to_string())].into();
        let now = |op: &str, adv: &str| {
            let mut n = sample_number(op, adv);
            n.number = record.tracking_number.clone();
            n.notify = Some(Default::default());
            n
        };
        // (the number now, whether its settings count)
        let rows = [
            (None, false),
            (Some(now("op_a", "adv_x")), true),
            (Some(now("op_a", "adv_y")), true),
            (Some(now("op_b", "adv_z")), false),
        ];
        for (current, settings) in rows {
            let n = number_for_record(current.clone(), &record);
            assert_eq!(
                (
                    n.number.as_str(),
                    n.operator_id.as_str(),
                    n.advertiser_id.as_str()
                ),
                (record.tracking_number.as_str(), "op_a", "adv_x"),
                "{current:?}"
            );
            assert_eq!(n.tracking_params, record.tracking_params);
            assert_eq!(n.notify.is_some(), settings, "{current:?}");
        }
    }

    #[test]
    fn checkpoints_are_written_sooner_than_plain_records_in_progress() {
        let active = |id: &str, checkpoint: bool| {
            let mut record = sample_call("op", "adv", 10_000);
            record.call_id = id.to_string();
            ActiveCall {
                record,
                checkpoint: checkpoint.then(|| "{}".to_string()),
            }
        };
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // (puts: (at ms, call, with a checkpoint)) -> due at ms
        let rows: [(&[(u64, &str, bool)], u64); 4] = [
            (&[(0, "a", false)], 500),
            (&[(0, "a", true)], 50),
            (&[(0, "a", false), (100, "b", true)], 150),
            // A newer plain record of a call keeps its checkpoint (and its urgency).
            (&[(0, "a", true), (10, "a", false)], 50),
        ];
        for (puts, due) in rows {
            let mut p = InProgress::default();
            for (at, id, cp) in puts {
                p.put(active(id, *cp), ms(*at));
            }
            assert_eq!(p.next_due(), Some(ms(due)), "{puts:?}");
            assert!(!p.due(ms(due - 1)) && p.due(ms(due)), "{puts:?}");
            assert!(p
                .take()
                .iter()
                .all(|a| a.record.call_id != "a" || puts[0].2 == a.checkpoint.is_some()));
            assert_eq!(p.next_due(), None);
        }
    }

    #[test]
    fn the_writer_collects_for_a_tick_rather_than_waking_per_message() {
        let long = Duration::from_millis(900);
        let tick = TICK.min(long);
        // (senders remain, records wait, last drain stopped at a full batch) -> wait
        let rows = [
            ((true, true, false), Wait::Collect(tick)),
            ((true, false, false), Wait::Receive(long)),
            ((true, true, true), Wait::No),
            ((true, false, true), Wait::No),
            ((false, true, false), Wait::No),
            ((false, false, false), Wait::No),
        ];
        for ((open, holding, backlog), want) in rows {
            assert_eq!(
                next_wait(open, holding, backlog, long),
                want,
                "{open} {holding} {backlog}"
            );
        }
        // A deadline nearer than a tick is kept.
        let near = Duration::from_millis(3);
        assert_eq!(
            next_wait(true, true, false, near),
            Wait::Collect(near.min(TICK))
        );
    }

    /// A record promised (a recorded call's, written when its recording closes) is
    /// waited for by a flush: the last flush at shutdown does not end before it.
    #[test]
    fn a_flush_waits_for_a_promised_record() {
        let d = Dup::new();
        let entry = d.call("promised", 10_000, 30);
        let (log, handle) = CallLog::start(d.w);
        let promise = log.promise();
        assert!(
            !log.flush(Duration::from_millis(200)),
            "a record is still to come"
        );
        log.write(entry);
        drop(promise);
        assert!(log.flush(Duration::from_secs(10)));
        assert!(d.store.get_call(&d.op, "promised").unwrap().is_some());
        // One never written (its call gone with its recorder) is given back too.
        drop(log.promise());
        assert!(log.flush(Duration::from_secs(10)));
        // Nothing is waiting once the flushes are answered: the count readiness reads
        // is back at zero (each flush left it one short).
        assert_eq!(log.shared.queued.load(Ordering::Relaxed), 0);
        drop(log);
        handle.join().unwrap();
    }

    /// Calls sending their records one by one wake the writer about once a tick, not
    /// once each (a wake-up costs the writer and the sending thread a system call), and
    /// every record is still written.
    #[test]
    fn a_stream_of_records_wakes_the_writer_once_a_tick() {
        let d = Dup::new();
        let wakeups = d.w.metrics.log_wakeups.clone();
        let (log, handle) = CallLog::start(d.w);
        let sent = 200;
        let before = wakeups.get();
        let started = Instant::now();
        for i in 0..sent {
            let mut record = sample_call(&d.op, "adv_1", 10_000 + i);
            record.call_id = format!("call_{i:04}");
            log.active(record, None);
            std::thread::sleep(Duration::from_millis(1));
        }
        let woke = wakeups.get() - before;
        // One per tick, and a few for deadlines (records in progress come due after
        // ACTIVE_DELAY): a slow machine stretches the ticks and the bound alike.
        let ticks = (started.elapsed().as_millis() / TICK.as_millis()) as u64;
        assert!(
            woke <= ticks + 10,
            "{woke} wake-ups for {sent} messages in {ticks} ticks"
        );
        assert!(log.flush(Duration::from_secs(10)));
        drop(log);
        handle.join().unwrap();
        assert_eq!(d.store.active_calls_of("n1").unwrap().len(), sent as usize);
    }

    /// A callback pool a newer release wrote (settings this version cannot read) gives
    /// the missed call's notice no callback number; its error, retried with the batch,
    /// stalled the whole call log (a review).
    #[test]
    fn an_unreadable_callback_pool_does_not_stall_the_log() {
        let d = Dup::new();
        let adv = d.store.create_advertiser(&d.op, "shop", None).unwrap().id;
        let mode = tsunagu_store::PoolMode::Callback;
        let (pool, numbers) = tsunagu_store::conformance::sample_pool(&d.op, &adv, mode, 1, 60, 0);
        d.store.create_pool(&pool, &numbers).unwrap();
        let r = sample_call(&d.op, &adv, 10_000);
        assert!(lease_callback(&d.w, &r, &pool.id).unwrap().is_some());
        let c = rusqlite::Connection::open(d._dir.path().join("t.db")).unwrap();
        let newer = "UPDATE pools SET settings = '{\"from_a_newer_version\":1,' || substr(settings, 2) WHERE id = ?1";
        assert_eq!(c.execute(newer, [&pool.id]).unwrap(), 1);
        let mut later = r.clone();
        later.call_id = "call_later".into();
        assert_eq!(lease_callback(&d.w, &later, &pool.id).unwrap(), None);
    }

    /// A caller missed twice holds one callback number (its lease extended), not one
    /// per missed call; another caller gets the pool's next.
    #[test]
    fn a_caller_missed_again_keeps_its_callback_number() {
        let d = Dup::new();
        let adv = d.store.create_advertiser(&d.op, "shop", None).unwrap().id;
        let mode = tsunagu_store::PoolMode::Callback;
        let (pool, numbers) = tsunagu_store::conformance::sample_pool(&d.op, &adv, mode, 2, 600, 0);
        d.store.create_pool(&pool, &numbers).unwrap();
        let first = sample_call(&d.op, &adv, 10_000);
        let mut again = first.clone();
        again.call_id = "call_again".into();
        let mut other = first.clone();
        other.call_id = "call_other".into();
        other.caller_number = "09099998888".into();
        let n1 = lease_callback(&d.w, &first, &pool.id).unwrap();
        assert!(n1.is_some());
        assert_eq!(lease_callback(&d.w, &again, &pool.id).unwrap(), n1);
        let n2 = lease_callback(&d.w, &other, &pool.id).unwrap();
        assert!(n2.is_some() && n2 != n1, "{n1:?} {n2:?}");
    }

    /// A record the store refuses for good (here: its call's row in progress damaged,
    /// so the owner check cannot read it) is set aside in the rejected file after a
    /// few tries, and the records behind it are written: it stalled them all, the
    /// node's sign of life with them, for ever.
    #[test]
    fn a_record_the_store_refuses_for_good_is_set_aside() {
        let d = Dup::new();
        let rejected = d.w.metrics.log_rejected.clone();
        let file = d.w.rejected.clone();
        let bad = tsunagu_store::conformance::sample_active_call(&d.op, "call_bad", "n1", 1);
        d.store.upsert_active_calls(&[bad]).unwrap();
        let c = rusqlite::Connection::open(d._dir.path().join("t.db")).unwrap();
        let damaged = "UPDATE active_calls SET epoch = 'not a number' WHERE call_id = 'call_bad'";
        assert_eq!(c.execute(damaged, []).unwrap(), 1);
        let (bad, good) = (
            d.call("call_bad", 10_000, 30),
            d.call("call_good", 20_000, 30),
        );
        let (log, handle) = CallLog::start(d.w);
        log.write(bad);
        log.write(good);
        assert!(log.flush(Duration::from_secs(20)), "the log is not stalled");
        assert!(d.store.get_call(&d.op, "call_good").unwrap().is_some());
        assert!(d.store.get_call(&d.op, "call_bad").unwrap().is_none());
        assert_eq!(rejected.get(), 1);
        let set_aside = std::fs::read_to_string(&file).unwrap();
        assert!(
            set_aside.contains("\"call_id\":\"call_bad\""),
            "{set_aside}"
        );
        assert_eq!(set_aside.lines().count(), 1);
        drop(log);
        handle.join().unwrap();
        // Its damaged row in progress stays, and does not stop the next start's
        // recovery from reading the node's other calls.
        assert!(d.store.active_calls_of("n1").unwrap().is_empty());
    }

    /// A record whose batch is tried again (here: beside a record the store refuses
    /// for good) takes its notice from its number's hourly quota once: each try took
    /// it again, and past the quota the notice was withheld (a review).
    #[test]
    fn a_record_tried_again_takes_its_notice_once() {
        let mut d = Dup::new();
        let mut number = (*d.number).clone();
        number.notify = Some(tsunagu_store::Notify {
            on: tsunagu_store::NotifyOn::All,
            email_to: vec!["shop@example.com".into()],
            ..Default::default()
        });
        d.number = Arc::new(number);
        d.w.planner.email = true;
        d.w.notices_per_hour = 1;
        let withheld = d.w.follow_up_metrics.notices_withheld.clone();
        let bad = tsunagu_store::conformance::sample_active_call(&d.op, "call_bad", "n1", 1);
        d.store.upsert_active_calls(&[bad]).unwrap();
        let c = rusqlite::Connection::open(d._dir.path().join("t.db")).unwrap();
        let damaged = "UPDATE active_calls SET epoch = 'not a number' WHERE call_id = 'call_bad'";
        assert_eq!(c.execute(damaged, []).unwrap(), 1);
        // This clock hour's (counts of hours past are forgotten).
        let hour_start = tsunagu_store::NoticeClaim::hour_of(now_ms()) * HOUR_MS;
        let mut bad = d.call("call_bad", hour_start + 10_000, 30);
        bad.record.tracking_number = "0500000000".into(); // its own quota
        let good = d.call("call_good", hour_start + 20_000, 30);
        let (log, handle) = CallLog::start(d.w);
        log.write(bad);
        log.write(good);
        assert!(log.flush(Duration::from_secs(20)));
        drop(log);
        handle.join().unwrap();
        assert_eq!(withheld.get(), 0, "the good record's notice went");
        let queued = d.store.claim_follow_ups(i64::MAX / 2, 100, 1_000).unwrap();
        assert!(
            queued
                .iter()
                .any(|f| f.item.kind == FollowUpKind::Email && f.item.payload.contains("call_good")),
            "{queued:?}"
        );
    }

    /// A writer on a fresh store, a number whose calls count once an hour, and a call
    /// to it from the same caller starting at a given time with a given talk time.
    struct Dup {
        _dir: Arc<tempfile::TempDir>,
        store: Arc<dyn Store>,
        op: String,
        number: Arc<TrackingNumber>,
        w: Writer,
        shared: Shared,
    }

    impl Dup {
        fn new() -> Dup {
            let dir = Arc::new(tempfile::tempdir().unwrap());
            let store: Arc<dyn Store> =
                Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
            let op = store.create_operator("op").unwrap().id;
            let mut number = tsunagu_store::conformance::sample_number(&op, "adv_1");
            number.validity = ValidityRule {
                min_talk_seconds: 10,
                duplicate_window_seconds: 3600,
                ..ValidityRule::default()
            };
            Dup::with(dir, store, op, Arc::new(number), "n1")
        }

        /// Another node's writer on the same store file, through a connection of its
        /// own (as another process has), with this one's operator and number.
        fn beside(&self, node_id: &str) -> Dup {
            let path = self._dir.path().join("t.db");
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
            let number = self.number.clone();
            Dup::with(self._dir.clone(), store, self.op.clone(), number, node_id)
        }

        fn with(
            dir: Arc<tempfile::TempDir>,
            store: Arc<dyn Store>,
            op: String,
            number: Arc<TrackingNumber>,
            node_id: &str,
        ) -> Dup {
            let w = Writer {
                store: store.clone(),
                metrics: CallMetrics::default(),
                follow_up_metrics: FollowUpMetrics::default(),
                planner: Planner {
                    email: false,
                    sms: false,
                    utc_offset_minutes: 540,
                },
                wake: Arc::new(Notify::new()),
                webhooks: WebhookCache::load(store.clone()).unwrap(),
                node_id: node_id.into(),
                epoch: Arc::new(1.into()),
                high_water: 1000,
                notices_per_hour: 0,
                rejected: dir.path().join("call_log_rejected.jsonl"),
                rejected_cut: Default::default(),
                notices_decided: Default::default(),
            };
            let shared = Shared {
                queued: AtomicI64::new(0),
                stalled: AtomicBool::new(false),
                high_water: 1000,
            };
            Dup {
                _dir: dir,
                store,
                op,
                number,
                w,
                shared,
            }
        }

        fn call(&self, id: &str, start: i64, talk: u32) -> LogEntry {
            let mut r = sample_call(&self.op, "adv_1", start);
            r.call_id = id.into();
            r.talk_seconds = talk;
            r.owner_epoch = 1; // this writer's incarnation owns its calls in progress
            LogEntry {
                record: r,
                number: self.number.clone(),
                caller_verified: false,
                ivr_offered: true,
            }
        }

        /// Writes `entries` as one batch, with the records in progress the writer
        /// would write with them (see the writer loop).
        fn write(&self, entries: Vec<LogEntry>, in_progress: &mut InProgress) {
            let active = in_progress.take_callers_of(&entries);
            let mut batch = Batch {
                events: Vec::new(),
                entries,
                active,
            };
            write_with_retry(&self.w, &mut batch, &self.shared);
        }

        /// Validity by call id.
        fn validity(&self) -> BTreeMap<String, Validity> {
            let mut got = BTreeMap::new();
            let query = CallQuery {
                operator_id: self.op.clone(),
                ..Default::default()
            };
            self.store
                .scan_calls(&query, &mut |r| {
                    got.insert(r.call_id, r.validity);
                    true
                })
                .unwrap();
            got
        }
    }

    /// Past `notify.notices_per_number_per_hour` a call's notices are withheld (and
    /// counted), its webhooks are not; the next clock hour they go again.
    #[test]
    fn notices_past_the_hourly_rate_are_withheld() {
        let mut d = Dup::new();
        d.w.planner.email = true;
        d.w.notices_per_hour = 2;
        d.w.planner.sms = true;
        let mut number = (*d.number).clone();
        // An SMS recipient that is also the caller (a From naming it) is a notice all
        // the same.
        let caller = d.call("c", 0, 30).record.caller_number;
        number.notify = Some(tsunagu_store::Notify {
            on: tsunagu_store::NotifyOn::All,
            email_to: vec!["a@example.com".into(), "b@example.com".into()],
            sms_to: vec![caller],
            ..Default::default()
        });
        d.number = Arc::new(number);
        let hour = HOUR_MS;
        // The hour before this one, then this one (counts of hours past are forgotten).
        let last_hour = (tsunagu_store::NoticeClaim::hour_of(now_ms()) - 1) * hour;
        let mut in_progress = InProgress::default();
        for (i, start) in [10_000, 20_000, 30_000, hour + 10_000]
            .map(|t| last_hour + t)
            .into_iter()
            .enumerate()
        {
            d.write(vec![d.call(&format!("c{i}"), start, 30)], &mut in_progress);
        }
        let queued = d.store.claim_follow_ups(i64::MAX, 100, 60_000).unwrap();
        let of = |kind| queued.iter().filter(|f| f.item.kind == kind).count();
        assert_eq!(
            (of(FollowUpKind::Email), of(FollowUpKind::Sms)),
            (6, 3),
            "two calls of the first hour and one of the next: two e-mails and an SMS each"
        );
        assert_eq!(d.w.follow_up_metrics.notices_withheld.get(), 1);
    }

    /// The hourly quota is the cluster's: two nodes' writers on one store share it
    /// (each counted its own, and a cluster of N nodes sent N times the setting), and
    /// a call counted before keeps its place when claimed again (a retried batch).
    #[test]
    fn nodes_share_a_number_s_hourly_notices() {
        let mut d = Dup::new();
        let mut number = (*d.number).clone();
        number.notify = Some(tsunagu_store::Notify {
            on: tsunagu_store::NotifyOn::All,
            email_to: vec!["a@example.com".into()],
            ..Default::default()
        });
        d.number = Arc::new(number);
        let mut e = d.beside("n2");
        for w in [&mut d.w, &mut e.w] {
            w.planner.email = true;
            w.notices_per_hour = 3;
        }
        let mut in_progress = InProgress::default();
        // Calls of this clock hour (counts of hours past are forgotten).
        let hour = tsunagu_store::NoticeClaim::hour_of(now_ms());
        let at = |s: i64| hour * HOUR_MS + s * 1000;
        d.write(vec![d.call("call_n0", at(0), 30)], &mut in_progress);
        e.write(vec![e.call("call_n1", at(1), 30)], &mut in_progress);
        d.write(vec![d.call("call_n2", at(2), 30)], &mut in_progress);
        // The fourth call of the hour, through either node, is past the quota.
        e.write(vec![e.call("call_n3", at(3), 30)], &mut in_progress);
        d.write(vec![d.call("call_n4", at(4), 30)], &mut in_progress);
        let queued = d.store.claim_follow_ups(i64::MAX, 100, 60_000).unwrap();
        let mailed: Vec<&str> = ["call_n0", "call_n1", "call_n2", "call_n3", "call_n4"]
            .into_iter()
            .filter(|id| {
                let mail = |f: &&tsunagu_store::FollowUp| f.item.kind == FollowUpKind::Email;
                queued
                    .iter()
                    .filter(mail)
                    .any(|f| f.item.payload.contains(id))
            })
            .collect();
        assert_eq!(mailed, ["call_n0", "call_n1", "call_n2"]);
        let withheld = |d: &Dup| d.w.follow_up_metrics.notices_withheld.get();
        assert_eq!((withheld(&d), withheld(&e)), (1, 1));
        // A record counted before keeps its place when its batch is tried again.
        let again = [tsunagu_store::NoticeClaim {
            number: &d.call("call_n0", 0, 0).record.tracking_number,
            hour: tsunagu_store::NoticeClaim::hour_of(at(0) + 32_000),
            call_id: "call_n0",
        }];
        assert_eq!(e.store.take_notices(&again, 3).unwrap(), [true]);
    }

    /// A rule asking for an IVR key asks for a key the menu routes: an invalid key
    /// alone is no choice, one before a valid key does not matter.
    #[test]
    fn an_invalid_ivr_key_is_no_choice() {
        let mut d = Dup::new();
        let mut number = (*d.number).clone();
        number.validity.duplicate_window_seconds = 0;
        number.validity.require_ivr_digit = true;
        number.ivr = Some(tsunagu_store::Ivr {
            prompt: "ivr_menu".into(),
            routes: BTreeMap::from([("1".into(), number.destinations.clone())]),
            timeout_seconds: 5,
            attempts: 2,
            invalid_prompt: None,
            default_key: Some("1".into()),
        });
        d.number = Arc::new(number);
        let mut entries = Vec::new();
        for (id, digits) in [
            ("routed", "1"),
            ("second_try", "71"),
            ("invalid", "7"),
            ("silent", ""),
        ] {
            let mut e = d.call(id, 1_000_000, 30);
            e.record.ivr_digits = Some(digits.to_string()).filter(|d| !d.is_empty());
            entries.push(e);
        }
        // A caller never played the menu (closed hours forwarded it, or its audio
        // was not G.711): judged on its talk time (it was `invalid_no_digit`).
        let mut skipped = d.call("not_offered", 1_000_000, 30);
        skipped.ivr_offered = false;
        entries.push(skipped);
        d.write(entries, &mut InProgress::default());
        use Validity::*;
        let want = [
            ("invalid", InvalidNoDigit),
            ("not_offered", Valid),
            ("routed", Valid),
            ("second_try", Valid),
            ("silent", InvalidNoDigit),
        ];
        let want: BTreeMap<String, Validity> = want
            .into_iter()
            .map(|(id, v)| (id.to_string(), v))
            .collect();
        assert_eq!(d.validity(), want);
    }

    #[test]
    fn duplicates_are_judged_across_batches_and_within_one() {
        let d = Dup::new();
        let none = &mut InProgress::default();
        d.write(vec![d.call("c1", 1_000_000, 30)], none);
        // Same batch: a repeat within the hour, then a short call 2 hours later, then
        // a repeat of that (listed first: the batch's order does not matter).
        let later = 1_000_000 + 2 * 3_600_000;
        d.write(
            vec![
                d.call("c4", later + 180_000, 30),
                d.call("c2", 1_000_000 + 60_000, 30),
                d.call("c3", later + 120_000, 3),
            ],
            none,
        );
        use Validity::*;
        let want = [
            ("c1", Valid),
            ("c2", InvalidDuplicate),
            ("c3", InvalidShort),
            ("c4", InvalidDuplicate),
        ];
        let want: BTreeMap<String, Validity> = want
            .into_iter()
            .map(|(id, v)| (id.to_string(), v))
            .collect();
        assert_eq!(d.validity(), want);
        assert_eq!(d.w.metrics.log_written.get(), 4);
    }

    /// Calls end in any order and start in the same millisecond: of the caller's calls
    /// exactly one is valid, the earliest (by start, then call id).
    #[test]
    fn the_earliest_call_is_valid_whatever_order_the_calls_end_in() {
        use Validity::*;
        let t = 1_000_000;
        // (calls in the order they end: id, start, still in progress (not yet written)
        // when an earlier one ends) -> the valid one
        let cases: [(&[(&str, i64)], &str); 5] = [
            (&[("a", t), ("b", t + 10)], "a"),
            (&[("b", t + 10), ("a", t)], "a"),
            (&[("b", t), ("a", t)], "a"),
            (&[("a", t), ("b", t)], "a"),
            (&[("c", t + 5), ("b", t), ("a", t + 1)], "b"),
        ];
        for (order, valid) in cases {
            // Every call is admitted (its record in progress waits in the writer), then
            // they end one batch at a time.
            let d = Dup::new();
            let mut in_progress = InProgress::default();
            let now = Instant::now();
            for (id, start) in order {
                let mut r = d.call(id, *start, 30).record;
                r.state = CallState::Active;
                let a = ActiveCall {
                    record: r,
                    checkpoint: None,
                };
                in_progress.put(a, now);
            }
            for (id, start) in order {
                in_progress.ended(id);
                d.write(vec![d.call(id, *start, 30)], &mut in_progress);
            }
            let got = d.validity();
            for (id, v) in &got {
                let want = if id == valid { Valid } else { InvalidDuplicate };
                assert_eq!(*v, want, "{order:?}: {id}");
            }
            assert_eq!(got.len(), order.len());
        }
    }

    /// Records in progress are written early only for a caller whose call ends and is
    /// judged for duplicates: a number without a window, or an anonymous caller, leaves
    /// them to coalesce (a load test from one caller number costs no extra writes).
    #[test]
    fn only_a_duplicate_check_writes_a_caller_s_calls_in_progress_early() {
        let d = Dup::new();
        let mut no_window = (*d.number).clone();
        no_window.validity.duplicate_window_seconds = 0;
        let no_window = Arc::new(no_window);
        let waiting = |id: &str| ActiveCall {
            record: d.call(id, 1_000, 30).record,
            checkpoint: None,
        };
        let ended = |number: &Arc<TrackingNumber>, anonymous: bool| {
            let mut e = d.call("ended", 2_000, 30);
            e.number = number.clone();
            if anonymous {
                e.record.caller_kind = CallerKind::Anonymous;
            }
            e
        };
        // (number of the call that ended, anonymous caller) -> records taken
        let rows = [
            (&no_window, false, 0),
            (&d.number, true, 0),
            (&d.number, false, 1),
        ];
        for (number, anonymous, taken) in rows {
            let mut in_progress = InProgress::default();
            in_progress.put(waiting("running"), Instant::now());
            let got = in_progress.take_callers_of(&[ended(number, anonymous)]);
            assert_eq!(got.len(), taken, "{anonymous}");
            assert_eq!(in_progress.calls.len(), 1 - taken);
        }
    }
}
