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
    /// Changes this node made whose record in the feed failed (see
    /// [`Provisioning::changed`]), recorded again by the follower; at most
    /// [`UNRECORDED_MAX`].
    unrecorded: Mutex<std::collections::BTreeSet<(&'static str, String)>>,
}

/// The most changes kept for recording again; past it one is dropped (with a store
/// down that long, its key may change again, and the peers reload at their next start).
const UNRECORDED_MAX: usize = 10_000;

impl Provisioning {
    /// Follows the feed from change `seen`, the feed's end read before the copies were
    /// loaded: a change made while they loaded is applied at the first catch-up (twice
    /// at worst, which is harmless). The feed's end read here, after the loads, skipped
    /// changes made in between, for good (a review). Operators' prompts are loaded
    /// from the store here.
    pub fn start(
        store: Arc<dyn Store>,
        directory: Directory,
        webhooks: WebhookCache,
        prompts: tsunagu_media::Prompts,
        seen: i64,
        seen_gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> Result<Provisioning, tsunagu_store::StoreError> {
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
            unrecorded: Mutex::default(),
        }));
        p.migrate_prompts();
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
                let _ = tokio::task::spawn_blocking(move || {
                    p.record_again();
                    p.catch_up()
                })
                .await;
            }
        });
    }

    /// This node changed something through its API (already in the store): its copy,
    /// then the feed and the peers. Blocking (store reads and a write): the API calls
    /// it on the blocking pool, in the same job as the write it announces.
    pub fn changed(&self, kind: &'static str, key: String) {
        // A copy not refreshed now is at the next catch-up: the change is in the feed.
        let _ = self.apply(kind, &key);
        let _ = self.record(kind, key);
    }

    /// Records a change of this node's in the feed and tells the peers; one that could
    /// not be recorded (the write itself is done) is recorded again by the follower
    /// every poll until it is. It was only logged, and the peers kept the old copy
    /// until that key changed again (a review).
    fn record(&self, kind: &'static str, key: String) -> bool {
        match self.0.store.record_change(kind, &key) {
            Ok(seq) => {
                if let Some(c) = self.0.cluster.get() {
                    c.changed(seq);
                }
                true
            }
            Err(e) => {
                tracing::warn!(%e, kind, "provisioning change not recorded; recorded again at the next poll");
                let mut pending = self.0.unrecorded.lock().unwrap_or_else(|p| p.into_inner());
                pending.insert((kind, key));
                while pending.len() > UNRECORDED_MAX {
                    pending.pop_first();
                }
                false
            }
        }
    }

    /// Records again the changes whose record failed (blocking: store writes).
    /// Stops at the first that fails again: each try against a store that times out
    /// waits its timeout.
    fn record_again(&self) {
        let pending =
            std::mem::take(&mut *self.0.unrecorded.lock().unwrap_or_else(|p| p.into_inner()));
        let mut pending = pending.into_iter();
        for (kind, key) in pending.by_ref() {
            if !self.record(kind, key) {
                break;
            }
        }
        // What was not tried waits for the next poll.
        self.0
            .unrecorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(pending);
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
            let (applied, complete) =
                applied_in_order(&page.items, |c| self.apply(&c.kind, &c.key));
            if let Some(last) = applied {
                self.0.seen.store(last, Ordering::Relaxed);
                self.0.seen_gauge.set(last);
            }
            if !complete || page.items.len() < PAGE {
                return;
            }
        }
    }

    /// Refreshes the copy a change names; false if the store could not be reached (the
    /// change is to be applied again). A row the store has but this node cannot read
    /// (`Corrupt`: written by a newer release during a rolling upgrade, say) is logged
    /// and passed: waiting on it would stop every later change reaching this node.
    fn apply(&self, kind: &str, key: &str) -> bool {
        let done = match kind {
            kind::NUMBER => self.0.directory.refresh(key),
            kind::ADVERTISER => match key.split_once('/') {
                Some((op, adv)) => self.0.directory.refresh_advertiser(op, adv),
                None => Ok(()),
            },
            kind::WEBHOOKS => self.0.webhooks.refresh(key),
            kind::PROMPT => match key.split_once('/') {
                Some((op, name)) => self.refresh_prompt(op, name),
                None => Ok(()),
            },
            other => {
                tracing::warn!(kind = other, "unknown provisioning change");
                Ok(())
            }
        };
        match &done {
            Ok(()) => true,
            Err(
                e @ (tsunagu_store::StoreError::Unavailable(_)
                | tsunagu_store::StoreError::TimedOut(_)),
            ) => {
                tracing::warn!(kind, key, %e, "provisioning change not applied; the next catch-up tries again");
                false
            }
            Err(e) => {
                tracing::error!(kind, key, %e, "provisioning change cannot be applied here; passed");
                true
            }
        }
    }

    fn refresh_prompt(&self, operator: &str, name: &str) -> tsunagu_store::Result<()> {
        match self.0.store.prompt(operator, name)? {
            Some(wav) => match tsunagu_media::Prompt::from_wav(&wav) {
                Ok(p) => self.0.prompts.insert_own(operator, name, p),
                Err(e) => tracing::warn!(%e, operator, name, "stored prompt is not a usable WAV"),
            },
            // Deleted through another node: gone from this node's disk too (it came
            // back from there at the next start: a review).
            None => {
                if let Err(e) = self.0.prompts.delete_own(operator, name) {
                    tracing::warn!(%e, operator, name, "deleted prompt's file not removed");
                }
            }
        }
        Ok(())
    }

    /// Once per prompts directory: operators' prompts on this node's disk that the store
    /// does not have go into it. Builds before 2026-12-02 kept uploads on disk only,
    /// and the store's set now replaces what the disk holds at start; without this
    /// such prompts would stop playing (a check of the day's fixes). A mark file
    /// says it was done: after it, a prompt on disk that the store lacks was deleted
    /// elsewhere.
    fn migrate_prompts(&self) {
        let Some(mark) = self.0.prompts.migrated_mark() else {
            return;
        };
        if mark.exists() {
            return;
        }
        let stored: std::collections::HashSet<(String, String)> = match self.0.store.all_prompts() {
            Ok(all) => all.into_iter().map(|(op, name, _)| (op, name)).collect(),
            Err(e) => return tracing::warn!(%e, "prompts on disk not checked against the store"),
        };
        let quota = tsunagu_store::PromptQuota {
            prompts: usize::MAX,
            bytes: u64::MAX,
        };
        let mut moved = 0;
        let missing = |op: &str, name: &str| !stored.contains(&(op.to_string(), name.to_string()));
        for (op, name, wav) in self.0.prompts.own_files(missing) {
            match self.0.store.put_prompt(&op, &name, &wav, quota) {
                Ok(_) => moved += 1,
                Err(e) => {
                    return tracing::warn!(%e, operator = %op, name, "a prompt on disk not stored; tried again at the next start")
                }
            }
        }
        if moved > 0 {
            tracing::info!(
                prompts = moved,
                "operators' prompts found on disk only were stored"
            );
        }
        if let Some(dir) = mark.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(&mark, b"") {
            tracing::warn!(%e, "prompt migration mark not written");
        }
    }

    /// Operators' prompts as the store has them, replacing what the node held (what
    /// was read from its disk at start included): a prompt deleted while the node was
    /// away, or behind in the feed, stayed playable and accepted by its API (a review).
    fn load_prompts(&self) -> Result<(), tsunagu_store::StoreError> {
        let mut all = Vec::new();
        for (op, name, wav) in self.0.store.all_prompts()? {
            match tsunagu_media::Prompt::from_wav(&wav) {
                Ok(p) => all.push((op, name, p)),
                Err(e) => {
                    tracing::warn!(%e, operator = %op, name, "stored prompt is not a usable WAV")
                }
            }
        }
        self.0.prompts.replace_own(all);
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

/// Applies `changes` in order until one fails: the sequence number of the last one
/// applied (None: none was), and whether all were. A catch-up moved past a change it
/// failed to apply (a store read timing out), and that change was never applied on
/// this node (a review): the next catch-up starts again at the failed one.
fn applied_in_order(
    changes: &[Change],
    mut apply: impl FnMut(&Change) -> bool,
) -> (Option<i64>, bool) {
    let mut last = None;
    for c in changes {
        if !apply(c) {
            return (last, false);
        }
        last = Some(c.seq);
    }
    (last, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsunagu_store::SqliteStore;

    /// Provisioning over `store` from the feed's end now, with fresh copies.
    fn started(store: &Arc<dyn Store>, prompts: tsunagu_media::Prompts) -> Provisioning {
        Provisioning::start(
            store.clone(),
            Directory::load(store.clone(), Default::default()).unwrap(),
            WebhookCache::load(store.clone()).unwrap(),
            prompts,
            store.changes_since(i64::MAX, 0).unwrap().latest,
            Default::default(),
        )
        .unwrap()
    }

    /// Each row: which changes (by sequence number) fail to apply → the last applied
    /// and whether all were.
    #[test]
    fn a_catch_up_stops_at_the_first_change_it_cannot_apply() {
        let changes: Vec<Change> = (1..=4)
            .map(|seq| Change {
                seq,
                kind: kind::NUMBER.to_string(),
                key: format!("05{seq}"),
            })
            .collect();
        let rows: &[(&[i64], (Option<i64>, bool))] = &[
            (&[], (Some(4), true)),
            (&[1], (None, false)),
            (&[3], (Some(2), false)),
            (&[2, 4], (Some(1), false)),
        ];
        for (failing, want) in rows {
            let mut tried = Vec::new();
            let got = applied_in_order(&changes, |c| {
                tried.push(c.seq);
                !failing.contains(&c.seq)
            });
            assert_eq!(got, *want, "{failing:?}");
            assert_eq!(
                tried.last(),
                Some(&failing.first().copied().unwrap_or(4)),
                "stops at the failure"
            );
        }
    }

    /// A prompt deleted through another node while this one was away stays on its
    /// disk; at start the store's set replaces what the disk held, and one deleted
    /// while it runs goes from its disk too.
    #[tokio::test]
    async fn prompts_deleted_elsewhere_do_not_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let prompts_dir = dir.path().join("prompts");
        // A second of silence: 8 kHz, 16-bit mono.
        let mut wav = tsunagu_media::wav::header(1, 16_000).to_vec();
        wav.resize(44 + 16_000, 0);
        let prompt = || tsunagu_media::Prompt::from_wav(&wav).unwrap();
        // Left on this node's disk by an upload the store no longer has.
        let earlier = tsunagu_media::Prompts::load(&prompts_dir).unwrap();
        earlier.save_own("op_1", "gone", prompt(), &wav).unwrap();
        earlier.save_own("op_1", "kept", prompt(), &wav).unwrap();
        let quota = tsunagu_store::PromptQuota {
            prompts: 10,
            bytes: 1 << 20,
        };
        store.put_prompt("op_1", "kept", &wav, quota).unwrap();
        // This directory's prompts went into the store before (the mark says so): one
        // the store lacks now was deleted elsewhere.
        std::fs::write(prompts_dir.join(".operators-in-store"), b"").unwrap();
        let prompts = tsunagu_media::Prompts::load(&prompts_dir).unwrap();
        assert!(prompts.get("op_1", "gone").is_some(), "read from the disk");
        let p = started(&store, prompts.clone());
        assert!(prompts.get("op_1", "gone").is_none(), "not in the store");
        assert!(prompts.get("op_1", "kept").is_some());
        // Deleted through another node: gone from memory and from this disk.
        store.delete_prompt("op_1", "kept").unwrap();
        store.record_change(kind::PROMPT, "op_1/kept").unwrap();
        p.catch_up();
        assert!(prompts.get("op_1", "kept").is_none());
        let again = tsunagu_media::Prompts::load(&prompts_dir).unwrap();
        assert!(again.get("op_1", "kept").is_none(), "its file removed");
    }

    /// The first start over a prompts directory of an older build (uploads kept on
    /// disk only) stores the prompts the store lacks, so they keep playing; it marks
    /// the directory done.
    #[tokio::test]
    async fn prompts_kept_on_disk_only_go_into_the_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let prompts_dir = dir.path().join("prompts");
        let mut wav = tsunagu_media::wav::header(1, 16_000).to_vec();
        wav.resize(44 + 16_000, 0);
        let disk = tsunagu_media::Prompts::load(&prompts_dir).unwrap();
        let prompt = tsunagu_media::Prompt::from_wav(&wav).unwrap();
        disk.save_own("op_1", "old", prompt, &wav).unwrap();
        let prompts = tsunagu_media::Prompts::load(&prompts_dir).unwrap();
        started(&store, prompts.clone());
        assert!(prompts.get("op_1", "old").is_some(), "still playable");
        assert!(store.prompt("op_1", "old").unwrap().is_some(), "stored");
        assert!(prompts_dir.join(".operators-in-store").exists());
    }

    /// A change made while the node loads its copies (after the feed's end was read,
    /// before the copies were) is applied at the first catch-up.
    #[tokio::test]
    async fn a_change_made_while_the_copies_load_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let op = store.create_operator("op").unwrap();
        let adv = store.create_advertiser(&op.id, "shop", None).unwrap();
        let seen = store.changes_since(i64::MAX, 0).unwrap().latest;
        let directory = Directory::load(store.clone(), Default::default()).unwrap();
        // Meanwhile another node creates a number and records it in the feed.
        let mut n = tsunagu_store::conformance::sample_number(&op.id, &adv.id);
        n.number = "0312345678".into();
        store.create_number(&n).unwrap();
        store.record_change(kind::NUMBER, &n.number).unwrap();
        let p = Provisioning::start(
            store.clone(),
            directory.clone(),
            WebhookCache::load(store.clone()).unwrap(),
            tsunagu_media::Prompts::load(&dir.path().join("prompts")).unwrap(),
            seen,
            Default::default(),
        )
        .unwrap();
        assert!(
            directory.get(&n.number).is_none(),
            "loaded before it was made"
        );
        p.catch_up();
        assert!(
            directory.get(&n.number).is_some(),
            "applied at the first catch-up"
        );
    }

    /// One frame from a peer can carry thousands of change notices: they fold into one
    /// read of the feed (each used to start a blocking job that queued on the same
    /// lock, starving the blocking pool), and a notice of a change already applied
    /// reads nothing.
    #[tokio::test]
    async fn a_burst_of_change_notices_reads_the_feed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let p = started(
            &store,
            tsunagu_media::Prompts::load(&dir.path().join("prompts")).unwrap(),
        );
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
