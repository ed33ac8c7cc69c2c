//! Provisioning that reaches every node: the node keeps copies of what the call path
//! reads (the number directory, advertisers' line limits, webhooks, operators'
//! prompts); a change made through any node's API is recorded in the store's change
//! feed and announced to the peers, and every node follows the feed.
//!
//! - The node that made the change refreshes its own copy at once, records the change
//!   (`Store::record_change`) and tells its peers (`Cluster::changed`): they apply it
//!   within a round trip.
//! - Every node also reads the feed every [`POLL`], and at start and when it rejoins,
//!   so a node that missed an announcement (it was cut off, or joined later) catches
//!   up; if the feed no longer reaches back to where it stopped, it reloads everything.

use crate::directory::Directory;
use crate::follow_up::hooks::WebhookCache;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tsunagu_cluster::Cluster;
use tsunagu_store::{Change, Store};

/// How often a node reads the feed besides the announcements.
pub const POLL: Duration = Duration::from_secs(2);
/// Changes read at once.
const PAGE: usize = 1000;

/// What a change is about (the feed's `kind`).
pub mod kind {
    pub const NUMBER: &str = "number";
    /// Key `operator/advertiser`.
    pub const ADVERTISER: &str = "advertiser";
    /// Key: the operator whose webhooks changed.
    pub const WEBHOOKS: &str = "webhooks";
    /// Key `operator/name`.
    pub const PROMPT: &str = "prompt";
}

#[derive(Clone)]
pub struct Provisioning(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    directory: Directory,
    webhooks: WebhookCache,
    prompts: tsunagu_media::Prompts,
    cluster: OnceLock<Cluster>,
    /// The last change applied.
    seen: AtomicI64,
    /// `seen`, exported (`tsunagu_provisioning_change`).
    seen_gauge: prometheus_client::metrics::gauge::Gauge,
    /// One catch-up at a time.
    busy: Mutex<()>,
    /// A catch-up asked for by a notice ([`Provisioning::catch_up_soon`]) that has not
    /// begun reading yet: later notices are folded into it.
    queued: AtomicBool,
    /// Catch-ups that read the feed (for tests and the log).
    runs: AtomicU64,
}

impl Provisioning {
    /// Follows the feed from its current end (what is in the store now was loaded with
    /// the copies); operators' prompts are loaded from the store here.
    pub fn start(
        store: Arc<dyn Store>,
        directory: Directory,
        webhooks: WebhookCache,
        prompts: tsunagu_media::Prompts,
        seen_gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> Result<Provisioning, tsunagu_store::StoreError> {
        let seen = store.changes_since(i64::MAX, 0)?.latest;
        seen_gauge.set(seen);
        let p = Provisioning(Arc::new(Inner {
            store,
            directory,
            webhooks,
            prompts,
            cluster: OnceLock::new(),
            seen: AtomicI64::new(seen),
            seen_gauge,
            busy: Mutex::new(()),
            queued: AtomicBool::new(false),
            runs: AtomicU64::new(0),
        }));
        p.load_prompts()?;
        Ok(p)
    }

    pub fn attach(&self, cluster: Cluster) {
        let _ = self.0.cluster.set(cluster);
    }

    /// Reads the feed every [`POLL`] for as long as the node runs.
    pub fn spawn_follower(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tick.tick().await;
                let p = this.clone();
                let _ = tokio::task::spawn_blocking(move || p.catch_up()).await;
            }
        });
    }

    /// This node changed something through its API (already in the store): its copy,
    /// then the feed and the peers. Blocking (store reads and a write): the API calls
    /// it on the blocking pool, in the same job as the write it announces.
    pub fn changed(&self, kind: &'static str, key: String) {
        self.apply(kind, &key);
        match self.0.store.record_change(kind, &key) {
            Ok(seq) => {
                if let Some(c) = self.0.cluster.get() {
                    c.changed(seq);
                }
            }
            Err(e) => {
                tracing::warn!(%e, kind, "provisioning change not recorded; peers catch up at their next full reload")
            }
        }
    }

    /// A peer says provisioning changed up to change `seq` (None: a member came up
    /// and may have changed anything while unheard): catches up on the blocking pool,
    /// unless that change is applied already or a catch-up is queued that has not
    /// begun (it reads this change too). A peer's burst of notices (one frame can
    /// carry thousands) costs one or two reads of the feed, not a blocking job each.
    /// The catch-up's task, when this notice started one.
    pub fn catch_up_soon(&self, seq: Option<i64>) -> Option<tokio::task::JoinHandle<()>> {
        if seq.is_some_and(|seq| seq <= self.0.seen.load(Ordering::Relaxed)) {
            return None;
        }
        if self.0.queued.swap(true, Ordering::AcqRel) {
            return None;
        }
        let this = self.clone();
        Some(tokio::task::spawn_blocking(move || {
            let _one = this.0.busy.lock().unwrap_or_else(|p| p.into_inner());
            // From here a new notice queues another catch-up: this one may have
            // read the feed before that change.
            this.0.queued.store(false, Ordering::Release);
            this.catch_up_locked();
        }))
    }

    /// Catch-ups that read the feed since the node started.
    pub fn catch_up_runs(&self) -> u64 {
        self.0.runs.load(Ordering::Relaxed)
    }

    /// Applies every change after the last one seen (blocking: store reads).
    pub fn catch_up(&self) {
        let _one = self.0.busy.lock().unwrap_or_else(|p| p.into_inner());
        self.catch_up_locked();
    }

    /// [`Provisioning::catch_up`] with `busy` held.
    fn catch_up_locked(&self) {
        self.0.runs.fetch_add(1, Ordering::Relaxed);
        loop {
            let seen = self.0.seen.load(Ordering::Relaxed);
            let page = match self.0.store.changes_since(seen, PAGE) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(%e, "provisioning feed unavailable");
                    return;
                }
            };
            if !page.complete {
                tracing::warn!(
                    seen,
                    latest = page.latest,
                    "the provisioning feed no longer reaches back this far: reloading everything"
                );
                self.reload_all(page.latest);
                return;
            }
            let Some(last) = page.items.last().map(|c| c.seq) else {
                return;
            };
            for Change { kind, key, .. } in &page.items {
                self.apply(kind, key);
            }
            self.0.seen.store(last, Ordering::Relaxed);
            self.0.seen_gauge.set(last);
            if page.items.len() < PAGE {
                return;
            }
        }
    }

    fn apply(&self, kind: &str, key: &str) {
        match kind {
            kind::NUMBER => self.0.directory.refresh(key),
            kind::ADVERTISER => {
                if let Some((op, adv)) = key.split_once('/') {
                    self.0.directory.refresh_advertiser(op, adv);
                }
            }
            kind::WEBHOOKS => self.0.webhooks.refresh(key),
            kind::PROMPT => {
                if let Some((op, name)) = key.split_once('/') {
                    self.refresh_prompt(op, name);
                }
            }
            other => tracing::warn!(kind = other, "unknown provisioning change"),
        }
    }

    fn refresh_prompt(&self, operator: &str, name: &str) {
        match self.0.store.prompt(operator, name) {
            Ok(Some(wav)) => match tsunagu_media::Prompt::from_wav(&wav) {
                Ok(p) => self.0.prompts.insert_own(operator, name, p),
                Err(e) => tracing::warn!(%e, operator, name, "stored prompt is not a usable WAV"),
            },
            Ok(None) => self.0.prompts.remove_own(operator, name),
            Err(e) => tracing::warn!(%e, operator, name, "prompt refresh failed"),
        }
    }

    fn load_prompts(&self) -> Result<(), tsunagu_store::StoreError> {
        for (op, name, wav) in self.0.store.all_prompts()? {
            match tsunagu_media::Prompt::from_wav(&wav) {
                Ok(p) => self.0.prompts.insert_own(&op, &name, p),
                Err(e) => {
                    tracing::warn!(%e, operator = %op, name, "stored prompt is not a usable WAV")
                }
            }
        }
        Ok(())
    }

    /// Reloads every copy from the store (the feed was pruned past where this node
    /// stopped, or the node rejoined after being cut off).
    pub fn reload_all(&self, latest: i64) {
        if let Err(e) = self
            .0
            .directory
            .reload()
            .and_then(|_| self.0.webhooks.reload())
            .and_then(|_| self.load_prompts())
        {
            tracing::warn!(%e, "provisioning reload failed; the next poll tries again");
            return;
        }
        self.0.seen.store(latest, Ordering::Relaxed);
        self.0.seen_gauge.set(latest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsunagu_store::SqliteStore;

    /// One frame from a peer can carry thousands of change notices: they fold into one
    /// read of the feed (each used to start a blocking job that queued on the same
    /// lock, starving the blocking pool), and a notice of a change already applied
    /// reads nothing.
    #[tokio::test]
    async fn a_burst_of_change_notices_reads_the_feed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let p = Provisioning::start(
            store.clone(),
            Directory::load(store.clone()).unwrap(),
            WebhookCache::load(store.clone()).unwrap(),
            tsunagu_media::Prompts::load(&dir.path().join("prompts")).unwrap(),
            Default::default(),
        )
        .unwrap();
        let seq = store.record_change(kind::NUMBER, "0312345678").unwrap();
        let handles: Vec<_> = {
            // Another catch-up (the follower's) holds the feed while the burst comes.
            let _busy = p.0.busy.lock().unwrap();
            (0..100_000)
                .filter_map(|_| p.catch_up_soon(Some(seq)))
                .collect()
        };
        assert_eq!(handles.len(), 1, "one catch-up for the burst");
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(p.catch_up_runs(), 1);
        assert_eq!(p.0.seen.load(Ordering::Relaxed), seq);
        assert!(p.catch_up_soon(Some(seq)).is_none(), "applied already");
        assert!(p.catch_up_soon(Some(seq - 1)).is_none());
        assert_eq!(p.catch_up_runs(), 1);
    }
}
