//! The call-log writer: finished calls are queued here by their actors (never blocking
//! a call) and written in batches by one thread. Validity is judged at write time,
//! when earlier calls of the same caller are known. If the store fails, the batch is
//! kept and retried with backoff, so a call that ended always gets its record; records
//! still queued at shutdown are flushed before the node exits.
//!
//! The same writer queues the call's follow-ups (webhook events, notices, GA4) into the
//! store's outbox, in the transaction that stores the record.

use crate::clock::now_ms;
use crate::decide::validity::{judge, Facts};
use crate::follow_up::hooks::WebhookCache;
use crate::follow_up::plan::{callback_pool, CallEvent, Planner};
use crate::metrics::{CallMetrics, FollowUpMetrics};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tsunagu_store::{CallRecord, CallerKind, NewFollowUp, NumberKind, Store, TrackingNumber};

/// A finished call and the number it was made to (validity rule, pool, follow-ups).
pub struct LogEntry {
    pub record: CallRecord,
    pub number: Arc<TrackingNumber>,
    /// The caller's number was asserted or verified by its trunk (it may get an SMS).
    pub caller_verified: bool,
}

enum LogMsg {
    Entry(LogEntry),
    Event(Box<CallEvent>),
    /// Answered once everything queued before it is written.
    Flush(mpsc::Sender<()>),
}

#[derive(Clone)]
pub struct CallLog {
    tx: mpsc::Sender<LogMsg>,
    metrics: CallMetrics,
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
}

impl CallLog {
    /// Starts the writer thread; it ends (after flushing) when every `CallLog` is dropped.
    pub fn start(w: Writer) -> (CallLog, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let metrics = w.metrics.clone();
        let handle = std::thread::Builder::new()
            .name("call-log".into())
            .spawn(move || writer(w, rx))
            .expect("spawn call-log thread");
        (CallLog { tx, metrics }, handle)
    }

    pub fn write(&self, entry: LogEntry) {
        self.metrics.log_pending.inc();
        if self.tx.send(LogMsg::Entry(entry)).is_err() {
            tracing::error!("call-log writer is gone; record lost");
        }
    }

    /// A call event for webhooks (queued in order with the call's record).
    pub fn event(&self, event: CallEvent) {
        let _ = self.tx.send(LogMsg::Event(Box::new(event)));
    }

    /// Blocks until every record queued so far is in the store, or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.tx.send(LogMsg::Flush(tx)).is_ok() && rx.recv_timeout(timeout).is_ok()
    }
}

#[derive(Default)]
struct Batch {
    events: Vec<CallEvent>,
    entries: Vec<LogEntry>,
}

impl Batch {
    fn len(&self) -> usize {
        self.events.len() + self.entries.len()
    }
}

fn writer(w: Writer, rx: mpsc::Receiver<LogMsg>) {
    let mut batch = Batch::default();
    let mut flushes = Vec::new();
    let take = |msg, batch: &mut Batch, flushes: &mut Vec<_>| match msg {
        LogMsg::Entry(e) => batch.entries.push(e),
        LogMsg::Event(e) => batch.events.push(*e),
        LogMsg::Flush(done) => flushes.push(done),
    };
    loop {
        match rx.recv() {
            Ok(msg) => take(msg, &mut batch, &mut flushes),
            Err(_) => return, // all senders gone and queue empty
        }
        while batch.len() < BATCH && flushes.is_empty() {
            match rx.try_recv() {
                Ok(msg) => take(msg, &mut batch, &mut flushes),
                Err(_) => break,
            }
        }
        if batch.len() > 0 {
            write_with_retry(&w, &mut batch);
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes the batch, retrying with backoff while the store fails. A call's events come
/// before its record in the channel, so writing events first keeps their order.
fn write_with_retry(w: &Writer, batch: &mut Batch) {
    let mut backoff = Duration::from_millis(50);
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
                w.metrics.log_pending.dec_by(batch.entries.len() as i64);
                batch.entries.clear();
                if queued {
                    w.wake.notify_one();
                }
                return;
            }
            Err(e) => {
                w.metrics.log_write_errors.inc();
                tracing::warn!(%e, records = batch.entries.len(), events = batch.events.len(), retry_in_ms = backoff.as_millis() as u64, "call-log write failed; will retry");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
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
    if batch.entries.is_empty() {
        return Ok(queued);
    }
    let records = complete_records(store, &batch.entries)?;
    let mut follow_ups: Vec<(usize, NewFollowUp)> = Vec::new();
    for (i, (r, e)) in records.iter().zip(&batch.entries).enumerate() {
        let callback = match callback_pool(r, &e.number) {
            Some(pool) => lease_callback(w, r, pool)?,
            None => None,
        };
        let items = w.planner.after_call(
            r,
            &e.number,
            &w.webhooks.of(&r.operator_id),
            callback.as_deref(),
            e.caller_verified,
        );
        if !e.caller_verified && w.planner.caller_sms_wanted(r, &e.number) {
            let unverified = crate::follow_up::metrics::UNVERIFIED;
            w.follow_up_metrics.guards.withheld(unverified);
        }
        follow_ups.extend(items.into_iter().map(|f| (i, f)));
    }
    store.insert_calls(&records, &follow_ups)?;
    Ok(queued || !follow_ups.is_empty())
}

/// Leases a number of the callback pool that rings `r`'s caller. Idempotent per call
/// (its session is the call id), so a retried batch gets the same number.
fn lease_callback(
    w: &Writer,
    r: &CallRecord,
    pool_id: &str,
) -> tsunagu_store::Result<Option<String>> {
    let Some(pool) = w
        .store
        .pool_by_id(pool_id)?
        .filter(|p| p.operator_id == r.operator_id)
    else {
        tracing::warn!(pool_id, call_id = %r.call_id, "callback pool is gone; notice goes without a callback number");
        return Ok(None);
    };
    let params = BTreeMap::from([
        ("callback_of".to_string(), r.call_id.clone()),
        ("callback_to".to_string(), r.caller_number.clone()),
    ]);
    let session = format!("callback:{}", r.call_id);
    let lease = w
        .store
        .issue_lease(&pool, Some(&session), &params, now_ms())?;
    let counter = match &lease {
        Some(_) => &w.follow_up_metrics.callbacks_issued,
        None => &w.follow_up_metrics.callback_pool_empty,
    };
    counter.inc();
    Ok(lease.map(|l| l.number))
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
        let window_ms = i64::from(rule.duplicate_window_seconds) * 1000;
        let known = r.caller_kind != CallerKind::Anonymous && !r.caller_number.is_empty();
        let earlier = if window_ms > 0 && known {
            let since = r.started_at - window_ms;
            let in_batch = out.iter().any(|o| {
                o.advertiser_id == r.advertiser_id
                    && o.caller_number == r.caller_number
                    && o.started_at >= since
                    && o.started_at < r.started_at
            });
            in_batch
                || store
                    .last_call_started(&r.advertiser_id, &r.caller_number, since, r.started_at)?
                    .is_some()
        } else {
            false
        };
        let facts = Facts {
            result: r.result,
            talk_seconds: r.talk_seconds,
            caller_known: known,
            earlier_call_in_window: earlier,
            ivr_digit: r.ivr_digits.as_deref().is_some_and(|d| !d.is_empty()),
            judgement_digit: r.judgement_digit.is_some(),
        };
        let mut record = r.clone();
        record.validity = judge(&rule, &facts);
        if e.number.kind != NumberKind::Static {
            if let Some(lease) = store.lease_at(&r.tracking_number, r.started_at)? {
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
    use tsunagu_store::conformance::sample_call;
    use tsunagu_store::{CallQuery, SqliteStore, Validity, ValidityRule};

    #[test]
    fn duplicates_are_judged_across_batches_and_within_one() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let op = store.create_operator("op").unwrap();
        let rule = ValidityRule {
            min_talk_seconds: 10,
            duplicate_window_seconds: 3600,
            ..ValidityRule::default()
        };
        let mut number = tsunagu_store::conformance::sample_number(&op.id, "adv_1");
        number.validity = rule;
        let number = Arc::new(number);
        let at = |start: i64, talk: u32| {
            let mut r = sample_call(&op.id, "adv_1", start);
            r.talk_seconds = talk;
            LogEntry {
                record: r,
                number: number.clone(),
                caller_verified: false,
            }
        };
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
        };
        let batch = |entries| Batch {
            events: Vec::new(),
            entries,
        };
        write_with_retry(&w, &mut batch(vec![at(1_000_000, 30)]));
        // Same batch: a repeat within the hour, then a short call 2 hours later.
        write_with_retry(
            &w,
            &mut batch(vec![
                at(1_000_000 + 60_000, 30),
                at(1_000_000 + 2 * 3_600_000 + 120_000, 3),
                at(1_000_000 + 2 * 3_600_000 + 180_000, 30),
            ]),
        );
        let mut got = Vec::new();
        store
            .scan_calls(
                &CallQuery {
                    operator_id: op.id.clone(),
                    ..Default::default()
                },
                &mut |r| {
                    got.push(r.validity);
                    true
                },
            )
            .unwrap();
        assert_eq!(
            got,
            vec![
                Validity::Valid,
                Validity::InvalidDuplicate,
                Validity::InvalidShort,
                Validity::InvalidDuplicate
            ]
        );
        assert_eq!(w.metrics.log_written.get(), 4);
    }
}
