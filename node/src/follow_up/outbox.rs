//! The delivery worker: claims due follow-ups from the store's outbox, delivers them
//! concurrently, and records the outcome: delivered rows leave the outbox, failed ones
//! are retried with exponential backoff until `notify.max_attempts`, then kept as dead.
//! New rows wake it at once; retries are found by a one-second poll.

use super::deliver::{Deliverer, Failure};
use crate::clock::now_ms;
use crate::metrics::{FollowUpMetrics, KindLabel};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tsunagu_store::{FollowUp, Store};

/// Follow-ups claimed at once (and delivered concurrently).
const BATCH: usize = 32;
const POLL: Duration = Duration::from_secs(1);

/// Delay before attempt `attempts + 1`: base, 2x base, 4x base, ... at most an hour.
pub fn retry_delay(base: Duration, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    (base * factor).min(Duration::from_secs(3600))
}

pub struct Worker {
    pub store: Arc<dyn Store>,
    pub deliverer: Arc<Deliverer>,
    pub metrics: FollowUpMetrics,
    pub max_attempts: u32,
    pub retry_base: Duration,
    /// How long a claim hides a row from other workers (longer than any delivery).
    pub claim: Duration,
    pub wake: Arc<Notify>,
}

impl Worker {
    /// Runs until `stop` turns true. Rows in flight at that moment are finished first.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        // The gauges count the whole outbox: refreshed once per poll interval, not per
        // batch (a backlog would otherwise be counted again every 32 rows).
        let mut counted: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                return;
            }
            let store = this.store.clone();
            let claim_ms = this.claim.as_millis() as i64;
            let count = counted.is_none_or(|t| t.elapsed() >= POLL);
            let claimed = tokio::task::spawn_blocking(move || {
                let claimed = store.claim_follow_ups(now_ms(), BATCH, claim_ms)?;
                let counts = if count {
                    Some(store.follow_up_counts()?)
                } else {
                    None
                };
                Ok::<_, tsunagu_store::StoreError>((claimed, counts))
            })
            .await;
            let batch = match claimed {
                Ok(Ok((batch, counts))) => {
                    if let Some((pending, dead)) = counts {
                        this.metrics.pending.set(pending as i64);
                        this.metrics.dead.set(dead as i64);
                        counted = Some(Instant::now());
                    }
                    batch
                }
                Ok(Err(e)) => {
                    tracing::warn!(%e, "outbox unavailable; retrying");
                    Vec::new()
                }
                Err(e) => {
                    tracing::error!(%e, "outbox claim task failed");
                    Vec::new()
                }
            };
            let full = batch.len() == BATCH;
            let mut tasks = this.deliver_all(batch);
            if !full {
                // The outbox is drained for now: wait for new rows, a retry's time, or stop.
                tokio::select! {
                    _ = this.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stop.changed() => {}
                }
            }
            while tasks.join_next().await.is_some() {}
        }
    }

    fn deliver_all(self: &Arc<Self>, batch: Vec<FollowUp>) -> JoinSet<()> {
        let mut set = JoinSet::new();
        for f in batch {
            let this = self.clone();
            set.spawn(async move { this.deliver_one(f).await });
        }
        set
    }

    async fn deliver_one(&self, f: FollowUp) {
        let label = KindLabel {
            kind: f.item.kind.as_str(),
        };
        let started = Instant::now();
        let span = tracing::info_span!("follow_up", id = f.id, kind = %f.item.kind, target = %f.item.target, attempt = f.attempts);
        let outcome =
            tracing::Instrument::instrument(self.deliverer.deliver(&f), span.clone()).await;
        self.metrics
            .delivery_seconds
            .observe(started.elapsed().as_secs_f64());
        let store = self.store.clone();
        let id = f.id;
        let update: Box<dyn FnOnce() -> tsunagu_store::Result<()> + Send> = match outcome {
            Ok(()) => {
                self.metrics.delivered.get_or_create(&label).inc();
                span.in_scope(|| tracing::debug!("delivered"));
                Box::new(move || store.follow_up_delivered(id))
            }
            Err(failure) => {
                self.metrics.failures.get_or_create(&label).inc();
                let (error, retry_at) = match failure {
                    Failure::Retry(e) if f.attempts < self.max_attempts => {
                        let delay = retry_delay(self.retry_base, f.attempts);
                        (e, Some(now_ms() + delay.as_millis() as i64))
                    }
                    Failure::Retry(e) | Failure::Permanent(e) => (e, None),
                };
                if retry_at.is_none() {
                    self.metrics.given_up.get_or_create(&label).inc();
                    span.in_scope(|| tracing::warn!(%error, "follow-up given up"));
                } else {
                    span.in_scope(|| tracing::info!(%error, "follow-up failed; will retry"));
                }
                Box::new(move || store.follow_up_failed(id, retry_at, &error))
            }
        };
        // If the store is down the row's claim runs out and it is delivered again:
        // at-least-once, which is why every event carries an id to de-duplicate on.
        match tokio::task::spawn_blocking(update).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%e, id, "could not record a delivery outcome"),
            Err(e) => tracing::error!(%e, id, "delivery outcome task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let base = Duration::from_secs(1);
        let got: Vec<u64> = [1, 2, 3, 4, 12, 13, 40]
            .iter()
            .map(|&a| retry_delay(base, a).as_secs())
            .collect();
        assert_eq!(got, vec![1, 2, 4, 8, 2048, 3600, 3600]);
        assert_eq!(
            retry_delay(Duration::from_millis(200), 1),
            Duration::from_millis(200)
        );
    }
}
