//! The delivery worker: claims due follow-ups from the store's outbox, delivers them
//! concurrently, and records the outcome: delivered rows leave the outbox, failed ones
//! are retried with exponential backoff until `notify.max_attempts`, then kept as dead.
//! New rows wake it at once; retries are found by a one-second poll.
//!
//! No delivery waits for another: each runs in its own task and reports back when done,
//! while the worker keeps claiming. [`Lanes`] gives each destination (and each
//! operator's webhooks) a bounded share, so a receiver that black-holes holds a few
//! slots for a timeout each and the rest keep flowing; rows over a share go back to the
//! outbox untried, due again once their destination has probably caught up.

use super::deliver::{Deliverer, Failure};
use super::hooks::WebhookCache;
use super::http::{destination, parse_url};
use super::lanes::{Lanes, Limits, Offer};
use super::metrics::{FollowUpMetrics, KindLabel};
use crate::clock::now_ms;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tsunagu_config::NotifyConfig;
use tsunagu_store::{FollowUp, FollowUpKind, OutboxClaim, Store};

/// Follow-ups claimed at most in one store round trip.
const BATCH: usize = 64;
const POLL: Duration = Duration::from_secs(1);
/// Claims in a row that hand rows back (their destination or operator full) before
/// the worker waits for the next poll or wake: 8 batches look past 512 rows of busy
/// destinations for rows of idle ones.
const MAX_HAND_BACK_ROUNDS: u32 = 8;
/// Time beyond the delivery timeout for the store reads and writes around a delivery.
const STORE_MARGIN: Duration = Duration::from_secs(2);

/// Delay before attempt `attempts + 1`: base, 2x base, 4x base, ... at most an hour
/// (checked: `Duration * u32` panics past its range, as a huge base made it).
pub fn retry_delay(base: Duration, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    let hour = Duration::from_secs(3600);
    base.checked_mul(factor).unwrap_or(hour).min(hour)
}

pub struct Worker {
    store: Arc<dyn Store>,
    deliverer: Arc<Deliverer>,
    metrics: FollowUpMetrics,
    webhooks: WebhookCache,
    max_attempts: u32,
    retry_base: Duration,
    /// The longest one delivery may take, store reads included.
    delivery_limit: Duration,
    limits: Limits,
    wake: Arc<Notify>,
}

/// A claimed row and the shares it counts against.
struct Job {
    f: FollowUp,
    destination: String,
    /// The operator, for webhooks (operator-chosen destinations).
    operator: Option<String>,
}

/// A delivery finished (sent by its task, also if the task panicked).
struct Done {
    destination: String,
    operator: Option<String>,
    /// How long the delivery took; None if none was tried (see `Lanes::finish`).
    took: Option<Duration>,
}

/// Reports a delivery's end to the worker when dropped, so a task that panics still
/// frees its share.
struct Report {
    tx: mpsc::UnboundedSender<Done>,
    done: Option<Done>,
    started: Instant,
    /// A delivery was tried: its time is the destination's.
    tried: bool,
    in_flight: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Report {
    fn drop(&mut self) {
        self.in_flight.dec();
        if let Some(mut d) = self.done.take() {
            d.took = self.tried.then(|| self.started.elapsed());
            let _ = self.tx.send(d);
        }
    }
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        deliverer: Arc<Deliverer>,
        metrics: FollowUpMetrics,
        webhooks: WebhookCache,
        cfg: &NotifyConfig,
        wake: Arc<Notify>,
    ) -> Worker {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let per_destination = cfg.per_destination.max(1) as usize;
        Worker {
            store,
            deliverer,
            metrics,
            webhooks,
            max_attempts: cfg.max_attempts,
            retry_base: Duration::from_millis(cfg.retry_base_ms),
            delivery_limit: timeout + STORE_MARGIN,
            limits: Limits {
                per_destination,
                // A destination holds up to twice `per_destination` (running and
                // waiting): with three times it an operator's black-holed webhook
                // leaves its other webhooks `per_destination` deliveries (with twice,
                // it held the operator's whole share: a review).
                per_operator: per_destination * 3,
                total: (cfg.max_in_flight as usize).max(per_destination * 2),
                max_release: timeout,
            },
            wake,
        }
    }

    /// How long a claim hides a row from other workers: a waiting row's wait (one
    /// delivery of its destination) plus its own delivery, with room to spare.
    fn claim(&self) -> Duration {
        self.delivery_limit * 2 + Duration::from_secs(5)
    }

    /// Runs until `stop` turns true. Rows in flight at that moment are finished first;
    /// rows waiting for their destination are handed back.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut lanes: Lanes<Job> = Lanes::new(this.limits);
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The gauges count the whole outbox: refreshed once per poll interval.
        let mut counted: Option<Instant> = None;
        let mut claim_now = true;
        // Claims in a row that handed rows back (see below).
        let mut handing_back = 0;
        loop {
            if *stop.borrow() {
                break;
            }
            // Finished deliveries first, on every pass: passes that claim and hand rows
            // back (a backlog for a slow destination) must not keep them from freeing
            // their slots, or the rows waiting for those slots would never start.
            while let Ok(done) = done_rx.try_recv() {
                if let Some(next) =
                    lanes.finish(&done.destination, done.operator.as_deref(), done.took)
                {
                    this.start(next, &done_tx);
                }
            }
            if claim_now && lanes.room() > 0 {
                let want = lanes.room().min(BATCH);
                let batch = this.claim_rows(want, &mut counted).await;
                // A full batch may have more behind it; rows handed back may hide rows
                // of idle destinations behind them: either way, claim again at once.
                claim_now = batch.len() == want;
                let mut back: Vec<(Job, bool)> = Vec::new();
                for f in batch {
                    let job = this.job(f);
                    let (dest, op) = (job.destination.clone(), job.operator.clone());
                    match lanes.offer(&dest, op.as_deref(), job) {
                        Offer::Start(job) => this.start(job, &done_tx),
                        Offer::Waiting => {}
                        Offer::Release(job, busy) => back.push((job, busy)),
                    }
                }
                if back.is_empty() {
                    handing_back = 0;
                } else {
                    // Rows handed back may hide rows of idle destinations behind them:
                    // claim again, but not without end (each round is two writes, and
                    // a backlog of thousands for one destination would keep this loop
                    // writing): past a few rounds, the next poll or wake claims again.
                    handing_back += 1;
                    claim_now = handing_back < MAX_HAND_BACK_ROUNDS;
                    let rows: Vec<(&str, bool)> = back
                        .iter()
                        .map(|(j, busy)| (j.destination.as_str(), *busy))
                        .collect();
                    let waits = lanes.release_delays(&rows, Instant::now(), rand::random);
                    let back = back.into_iter().map(|(j, _)| j).zip(waits).collect();
                    this.hand_back(back).await;
                }
                continue;
            }
            tokio::select! {
                Some(done) = done_rx.recv() => {
                    if let Some(next) = lanes.finish(&done.destination, done.operator.as_deref(), done.took) {
                        this.start(next, &done_tx);
                    }
                }
                _ = this.wake.notified() => claim_now = true,
                _ = poll.tick() => claim_now = true,
                // A dropped sender means stop too (and must not spin this loop).
                changed = stop.changed() => if changed.is_err() { break },
            }
        }
        let waiting: Vec<(Job, Duration)> = lanes
            .take_waiting()
            .into_iter()
            .map(|(_, j)| (j, Duration::ZERO))
            .collect();
        this.hand_back(waiting).await;
        while lanes.running() > 0 {
            match done_rx.recv().await {
                Some(d) => {
                    lanes.finish(&d.destination, d.operator.as_deref(), d.took);
                }
                None => break,
            }
        }
    }

    async fn claim_rows(&self, limit: usize, counted: &mut Option<Instant>) -> Vec<FollowUp> {
        let store = self.store.clone();
        let claim_ms = self.claim().as_millis() as i64;
        let count = counted.is_none_or(|t| t.elapsed() >= POLL);
        let claimed = tokio::task::spawn_blocking(move || {
            let claimed = store.claim_follow_ups(now_ms(), limit, claim_ms)?;
            let counts = if count {
                Some(store.follow_up_counts()?)
            } else {
                None
            };
            Ok::<_, tsunagu_store::StoreError>((claimed, counts))
        })
        .await;
        match claimed {
            Ok(Ok((batch, counts))) => {
                if let Some((pending, dead)) = counts {
                    self.metrics.pending.set(pending as i64);
                    self.metrics.dead.set(dead as i64);
                    *counted = Some(Instant::now());
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
        }
    }

    /// The shares a row counts against: its destination (a webhook's URL host and
    /// port, from the in-memory cache; else the node's gateway or relay) and, for
    /// webhooks, its operator.
    fn job(&self, f: FollowUp) -> Job {
        let (destination, operator) = match self.deliverer.channel_destination(f.item.kind) {
            Some(d) => (d.to_string(), None),
            None => {
                let hooks = self.webhooks.of(&f.item.operator_id);
                let url = hooks
                    .iter()
                    .find(|h| h.id == f.item.target)
                    .map(|h| h.url.as_str());
                let dest = url
                    .and_then(|u| parse_url(u).ok())
                    .map(|u| destination(&u))
                    .unwrap_or_else(|| format!("webhook:{}", f.item.target));
                (dest, Some(f.item.operator_id.clone()))
            }
        };
        debug_assert!(f.item.kind == FollowUpKind::Webhook || operator.is_none());
        Job {
            f,
            destination,
            operator,
        }
    }

    fn start(self: &Arc<Self>, job: Job, done: &mpsc::UnboundedSender<Done>) {
        let mut report = Report {
            tx: done.clone(),
            done: Some(Done {
                destination: job.destination.clone(),
                operator: job.operator.clone(),
                took: None,
            }),
            started: Instant::now(),
            tried: true,
            in_flight: self.metrics.guards.in_flight.clone(),
        };
        report.in_flight.inc();
        let this = self.clone();
        let late = claim_runs_out(now_ms(), self.delivery_limit, job.f.claimed_until);
        tokio::spawn(async move {
            if late {
                report.tried = false;
                // Its claim would run out before the delivery could finish (it
                // waited for its destination behind a slow store): another worker
                // may claim it meanwhile, and both would deliver it (a review).
                // Handed back untried, due again at once.
                this.hand_back(vec![(job, Duration::ZERO)]).await;
            } else {
                this.deliver_one(job.f).await;
            }
            drop(report);
        });
    }

    /// Hands rows back to the outbox untried, each due again after its wait.
    async fn hand_back(&self, jobs: Vec<(Job, Duration)>) {
        if jobs.is_empty() {
            return;
        }
        self.metrics.guards.deferred.inc_by(jobs.len() as u64);
        let now = now_ms();
        let claims: Vec<(OutboxClaim, i64)> = jobs
            .iter()
            .map(|(j, wait)| {
                let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                (j.f.claim(), now.saturating_add(wait))
            })
            .collect();
        let store = self.store.clone();
        let released = tokio::task::spawn_blocking(move || store.release_follow_ups(&claims)).await;
        // If the store cannot take them back, their claims run out and they come back
        // anyway (counted as an attempt).
        match released {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%e, rows = jobs.len(), "could not hand rows back"),
            Err(e) => tracing::error!(%e, "hand-back task failed"),
        }
    }

    async fn deliver_one(&self, f: FollowUp) {
        let label = KindLabel {
            kind: f.item.kind.as_str(),
        };
        let started = Instant::now();
        let span = tracing::info_span!("follow_up", id = f.id, kind = %f.item.kind, target = ?f.item.target, attempt = f.attempts);
        let delivery = tokio::time::timeout(self.delivery_limit, self.deliverer.deliver(&f));
        let outcome = match tracing::Instrument::instrument(delivery, span.clone()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Retry(format!(
                "took longer than {} ms",
                self.delivery_limit.as_millis()
            ))),
        };
        self.metrics
            .delivery_seconds
            .observe(started.elapsed().as_secs_f64());
        let store = self.store.clone();
        let (id, claim) = (f.id, f.claim());
        // A delivered (or withheld) row leaves the outbox whoever holds it now; a
        // failure is written only under this worker's claim (false: lost).
        let update: Box<dyn FnOnce() -> tsunagu_store::Result<bool> + Send> = match outcome {
            Ok(()) => {
                self.metrics.delivered.get_or_create(&label).inc();
                span.in_scope(|| tracing::debug!("delivered"));
                Box::new(move || store.follow_up_delivered(id).map(|()| true))
            }
            Err(Failure::Withheld(why)) => {
                span.in_scope(|| tracing::info!(%why, "follow-up withheld"));
                Box::new(move || store.follow_up_delivered(id).map(|()| true))
            }
            Err(failure) => {
                self.metrics.failures.get_or_create(&label).inc();
                let (error, retry_at) = match failure {
                    Failure::Retry(e) if f.attempts < self.max_attempts => {
                        let delay = retry_delay(self.retry_base, f.attempts);
                        (e, Some(now_ms() + delay.as_millis() as i64))
                    }
                    Failure::Retry(e) | Failure::Permanent(e) | Failure::Withheld(e) => (e, None),
                };
                if retry_at.is_none() {
                    self.metrics.given_up.get_or_create(&label).inc();
                    span.in_scope(|| tracing::warn!(%error, "follow-up given up"));
                } else {
                    span.in_scope(|| tracing::info!(%error, "follow-up failed; will retry"));
                }
                Box::new(move || store.follow_up_failed(claim, retry_at, &error))
            }
        };
        // If the store is down the row's claim runs out and it is delivered again:
        // at-least-once, which is why every event carries an id to de-duplicate on.
        match tokio::task::spawn_blocking(update).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                self.metrics.claims_lost.inc();
                span.in_scope(|| {
                    tracing::warn!(
                        "claim ran out before the outcome was written; another worker has the row"
                    )
                });
            }
            Ok(Err(e)) => tracing::warn!(%e, id, "could not record a delivery outcome"),
            Err(e) => tracing::error!(%e, id, "delivery outcome task failed"),
        }
    }
}

/// Whether a delivery started at `now_ms`, which may take `limit`, would outlast the
/// claim held until `claimed_until` (ms).
fn claim_runs_out(now_ms: i64, limit: Duration, claimed_until: i64) -> bool {
    let limit = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_add(limit) > claimed_until
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row that waited for its destination starts only if its delivery can finish
    /// within its claim.
    #[test]
    fn a_delivery_starts_only_within_its_claim() {
        let limit = Duration::from_secs(12);
        let rows = [
            (0, 30_000, false),
            (18_000, 30_000, false),
            (18_001, 30_000, true),
            (40_000, 30_000, true),
            (i64::MAX, 30_000, true),
        ];
        for (now, until, late) in rows {
            assert_eq!(claim_runs_out(now, limit, until), late, "{now} {until}");
        }
    }

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
        assert_eq!(
            retry_delay(Duration::from_millis(u64::MAX), 20),
            Duration::from_secs(3600),
            "no overflow"
        );
    }
}
