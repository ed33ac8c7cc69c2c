//! The call-log writer: finished calls are queued here by their actors (never blocking
//! a call) and written in batches by one thread. Validity is judged at write time,
//! when earlier calls of the same caller are known. If the store fails, the batch is
//! kept and retried with backoff, so a call that ended always gets its record; records
//! still queued at shutdown are flushed before the node exits.

use crate::decide::validity::{judge, Facts};
use crate::metrics::CallMetrics;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tsunagu_store::{CallRecord, CallerKind, Store, ValidityRule};

/// A finished call and the rule its validity is judged by.
pub struct LogEntry {
    pub record: CallRecord,
    pub rule: ValidityRule,
    /// The tracking number is a pool number: attribute the call to the lease it was
    /// under when the call started.
    pub pooled: bool,
}

enum LogMsg {
    Entry(LogEntry),
    /// Answered once everything queued before it is written.
    Flush(mpsc::Sender<()>),
}

#[derive(Clone)]
pub struct CallLog {
    tx: mpsc::Sender<LogMsg>,
    metrics: CallMetrics,
}

const BATCH: usize = 512;

impl CallLog {
    /// Starts the writer thread; it ends (after flushing) when every `CallLog` is dropped.
    pub fn start(
        store: Arc<dyn Store>,
        metrics: CallMetrics,
    ) -> (CallLog, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let m = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("call-log".into())
            .spawn(move || writer(store, rx, m))
            .expect("spawn call-log thread");
        (CallLog { tx, metrics }, handle)
    }

    pub fn write(&self, entry: LogEntry) {
        self.metrics.log_pending.inc();
        if self.tx.send(LogMsg::Entry(entry)).is_err() {
            tracing::error!("call-log writer is gone; record lost");
        }
    }

    /// Blocks until every record queued so far is in the store, or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.tx.send(LogMsg::Flush(tx)).is_ok() && rx.recv_timeout(timeout).is_ok()
    }
}

fn writer(store: Arc<dyn Store>, rx: mpsc::Receiver<LogMsg>, metrics: CallMetrics) {
    let mut batch: Vec<LogEntry> = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    loop {
        match rx.recv() {
            Ok(LogMsg::Entry(e)) => batch.push(e),
            Ok(LogMsg::Flush(done)) => flushes.push(done),
            Err(_) => return, // all senders gone and queue empty
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(LogMsg::Entry(e)) => batch.push(e),
                Ok(LogMsg::Flush(done)) => {
                    flushes.push(done);
                    break;
                }
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            write_with_retry(&*store, &mut batch, &metrics);
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

fn write_with_retry(store: &dyn Store, batch: &mut Vec<LogEntry>, metrics: &CallMetrics) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let started = Instant::now();
        let result =
            complete_records(store, batch).and_then(|records| store.insert_calls(&records));
        match result {
            Ok(()) => {
                metrics
                    .store_write_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.log_written.inc_by(batch.len() as u64);
                metrics.log_pending.dec_by(batch.len() as i64);
                batch.clear();
                return;
            }
            Err(e) => {
                metrics.log_write_errors.inc();
                tracing::warn!(%e, records = batch.len(), retry_in_ms = backoff.as_millis() as u64, "call-log write failed; will retry");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Completes each record before it is stored: the lease's tracking parameters for pool
/// numbers (attribution), and validity, looking for earlier calls in the store and
/// earlier in this batch.
fn complete_records(
    store: &dyn Store,
    batch: &[LogEntry],
) -> tsunagu_store::Result<Vec<CallRecord>> {
    let mut out: Vec<CallRecord> = Vec::with_capacity(batch.len());
    for e in batch {
        let r = &e.record;
        let window_ms = i64::from(e.rule.duplicate_window_seconds) * 1000;
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
        };
        let mut record = r.clone();
        record.validity = judge(&e.rule, &facts);
        if e.pooled {
            if let Some(lease) = store.lease_at(&r.tracking_number, r.started_at)? {
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
    use tsunagu_store::{CallQuery, SqliteStore, Validity};

    #[test]
    fn duplicates_are_judged_across_batches_and_within_one() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let op = store.create_operator("op").unwrap();
        let rule = ValidityRule {
            min_talk_seconds: 10,
            duplicate_window_seconds: 3600,
        };
        let at = |start: i64, talk: u32| {
            let mut r = sample_call(&op.id, "adv_1", start);
            r.talk_seconds = talk;
            LogEntry {
                record: r,
                rule,
                pooled: false,
            }
        };
        let metrics = CallMetrics::default();
        let mut first = vec![at(1_000_000, 30)];
        write_with_retry(&*store, &mut first, &metrics);
        // Same batch: a repeat within the hour, then a short call 2 hours later.
        let mut second = vec![
            at(1_000_000 + 60_000, 30),
            at(1_000_000 + 2 * 3_600_000 + 120_000, 3),
            at(1_000_000 + 2 * 3_600_000 + 180_000, 30),
        ];
        write_with_retry(&*store, &mut second, &metrics);
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
        assert_eq!(metrics.log_written.get(), 4);
    }
}
