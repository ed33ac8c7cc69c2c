//! The recordings disk: free space and retention. Recordings are the one thing a node
//! writes without bound (about 115 MB an hour per stereo call), by default on the
//! store's file system; a disk they fill stops the store, and with it every call of
//! every operator. So a node starts no recording while that disk has less than
//! `node.recordings_min_free_mb` free, or while the disk does not answer (a hung NFS
//! mount: the check itself blocks), and, with `node.recordings_retention_days`, deletes
//! day folders (`<recordings_dir>/<YYYY-MM-DD>/`) past that age. Calls go on
//! unrecorded meanwhile, counted and alerted (`tsunagu_recordings_skipped_total`).
//!
//! One thread (`recordings-disk`) reads the free space every [`CHECK_EVERY`], another
//! (`recordings-sweep`, with a retention) sweeps hourly; the call path reads what the
//! first last found (two atomics) and never touches the disk for it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a day folder of recordings is named (`<recordings_dir>/<UTC date>/`): where
/// calls write (`call::start_recording_part`) and what the sweep reads.
pub const DAY_FORMAT: &str = "%Y-%m-%d";

/// How often the free space is read.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A check older than this means the disk does not answer (the checking thread is
/// blocked in it): no recording starts until it answers again.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// How often the retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Why a recording is not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Less than the configured minimum free on the recordings disk.
    DiskFull,
    /// The recordings disk has not answered a check for [`STALE_AFTER`].
    DiskStalled,
}

impl Skip {
    pub const ALL: [Skip; 2] = [Skip::DiskFull, Skip::DiskStalled];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::DiskFull => "disk_full",
            Skip::DiskStalled => "disk_stalled",
        }
    }
}

/// Whether a recording may start, from the last check: `free` bytes found at
/// `checked` (None: never checked yet, at start), against `min_free` bytes, at `now`.
pub fn decide(
    free: Option<u64>,
    checked: Option<Instant>,
    min_free: u64,
    now: Instant,
) -> Result<(), Skip> {
    if min_free == 0 {
        return Ok(()); // the guard is off
    }
    let (Some(free), Some(checked)) = (free, checked) else {
        return Err(Skip::DiskStalled);
    };
    if now.saturating_duration_since(checked) > STALE_AFTER {
        return Err(Skip::DiskStalled);
    }
    if free < min_free {
        return Err(Skip::DiskFull);
    }
    Ok(())
}

/// The day folders among `names` (entries of the recordings directory) past
/// `retention_days` on `today`: a folder is kept for the retention's whole days after
/// its own (90 days: the folder of 2026-09-07 goes on 2026-12-06). Only names that are
/// exactly a date (`YYYY-MM-DD`) count; anything else there is not the node's.
pub fn expired<'a>(
    names: impl IntoIterator<Item = &'a str>,
    today: chrono::NaiveDate,
    retention_days: u32,
) -> Vec<&'a str> {
    if retention_days == 0 {
        return Vec::new();
    }
    let Some(oldest_kept) =
        today.checked_sub_days(chrono::Days::new(u64::from(retention_days) - 1))
    else {
        return Vec::new();
    };
    names
        .into_iter()
        .filter(|n| {
            // Exactly the name the format writes (the parser takes `2026-9-01` too).
            chrono::NaiveDate::parse_from_str(n, DAY_FORMAT)
                .is_ok_and(|day| day < oldest_kept && day.format(DAY_FORMAT).to_string() == **n)
        })
        .collect()
}

/// What the checking thread found, shared with the call path.
struct Shared {
    free: AtomicU64,
    /// Milliseconds since `epoch` of the last check that answered, plus one (0: none).
    checked_ms: AtomicU64,
    epoch: Instant,
    min_free: u64,
    skipped: [prometheus_client::metrics::counter::Counter; 2],
    free_gauge: prometheus_client::metrics::gauge::Gauge,
}

/// The call path's view of the recordings disk (cheap to clone).
#[derive(Clone)]
pub struct RecordingSpace(Arc<Shared>);

/// The metrics the recordings disk reports (registered by `metrics`).
#[derive(Clone, Default)]
pub struct SpaceMetrics {
    pub skipped: prometheus_client::metrics::family::Family<
        SkipLabel,
        prometheus_client::metrics::counter::Counter,
    >,
    pub free_bytes: prometheus_client::metrics::gauge::Gauge,
    pub expired: prometheus_client::metrics::counter::Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct SkipLabel {
    pub reason: &'static str,
}

impl SpaceMetrics {
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        for s in Skip::ALL {
            drop(
                self.skipped
                    .get_or_create(&SkipLabel { reason: s.as_str() }),
            );
        }
        r.register(
            "recordings_skipped",
            "Recordings not started (the call went on unrecorded), by reason: disk_full (less than node.recordings_min_free_mb free where recordings are written), disk_stalled (that disk has not answered a check for 5 s, e.g. a hung NFS mount)",
            self.skipped.clone(),
        );
        r.register(
            "recordings_disk_free_bytes",
            "Bytes free (for the node's user) on the file system of node.recordings_dir, read every second",
            self.free_bytes.clone(),
        );
        r.register(
            "recordings_expired",
            "Recording files deleted by node.recordings_retention_days (whole day folders past the retention)",
            self.expired.clone(),
        );
    }
}

impl RecordingSpace {
    /// Watches `dir` (created if missing) on a thread of its own: free space against
    /// `min_free_mb` (0: no guard) and, with `retention_days` > 0, the hourly sweep.
    pub fn start(
        dir: PathBuf,
        min_free_mb: u64,
        retention_days: u32,
        metrics: &SpaceMetrics,
    ) -> std::io::Result<RecordingSpace> {
        let space = RecordingSpace::new(min_free_mb, metrics);
        if retention_days > 0 {
            // A thread of its own: a long sweep (months of folders, a slow NFS) on the
            // checking thread left the check stale and stopped every recording as
            // `disk_stalled` (a review).
            let (swept, expired) = (dir.clone(), metrics.expired.clone());
            std::thread::Builder::new()
                .name("recordings-sweep".into())
                .spawn(move || sweep_hourly(&swept, retention_days, &expired))?;
        }
        let shared = space.0.clone();
        std::thread::Builder::new()
            .name("recordings-disk".into())
            .spawn(move || watch(&dir, &shared))?;
        Ok(space)
    }

    /// Never refuses (no directory watched; a guard of 0): for tests and tools.
    pub fn unwatched() -> RecordingSpace {
        RecordingSpace::new(0, &SpaceMetrics::default())
    }

    fn new(min_free_mb: u64, metrics: &SpaceMetrics) -> RecordingSpace {
        let skipped = Skip::ALL.map(|s| {
            metrics
                .skipped
                .get_or_create(&SkipLabel { reason: s.as_str() })
                .clone()
        });
        RecordingSpace(Arc::new(Shared {
            free: AtomicU64::new(0),
            checked_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            min_free: min_free_mb.saturating_mul(1 << 20),
            skipped,
            free_gauge: metrics.free_bytes.clone(),
        }))
    }

    /// Whether a recording may start now; a refusal is counted.
    pub fn allows(&self) -> Result<(), Skip> {
        let s = &self.0;
        let checked = match s.checked_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(s.epoch + Duration::from_millis(ms - 1)),
        };
        let free = checked.map(|_| s.free.load(Ordering::Relaxed));
        let verdict = decide(free, checked, s.min_free, Instant::now());
        if let Err(skip) = verdict {
            let i = Skip::ALL.iter().position(|k| *k == skip).unwrap_or(0);
            s.skipped[i].inc();
        }
        verdict
    }

    /// A check answered: `free` bytes at `at`.
    fn checked(&self, free: u64, at: Instant) {
        let s = &self.0;
        s.free.store(free, Ordering::Relaxed);
        s.free_gauge.set(i64::try_from(free).unwrap_or(i64::MAX));
        let ms = u64::try_from(at.saturating_duration_since(s.epoch).as_millis())
            .unwrap_or(u64::MAX - 1);
        s.checked_ms.store(ms + 1, Ordering::Release);
    }
}

/// The checking thread's loop (it never ends; the process does).
fn watch(dir: &Path, shared: &Arc<Shared>) {
    let space = RecordingSpace(shared.clone());
    let mut said = false;
    loop {
        let _ = std::fs::create_dir_all(dir);
        match free_bytes(dir) {
            Ok(free) => {
                space.checked(free, Instant::now());
                said = false;
            }
            Err(e) if !said => {
                said = true;
                tracing::warn!(dir = %dir.display(), %e, "cannot read the free space of the recordings directory: no recording starts until it can be read");
            }
            Err(_) => {}
        }
        std::thread::sleep(CHECK_EVERY);
    }
}

/// The sweeping thread's loop: at start, then every [`SWEEP_EVERY`].
fn sweep_hourly(
    dir: &Path,
    retention_days: u32,
    expired: &prometheus_client::metrics::counter::Counter,
) {
    loop {
        let removed = sweep(dir, chrono::Utc::now().date_naive(), retention_days);
        if removed > 0 {
            expired.inc_by(removed);
            tracing::info!(
                files = removed,
                retention_days,
                "recordings past their retention deleted"
            );
        }
        std::thread::sleep(SWEEP_EVERY);
    }
}

/// Bytes free for an unprivileged user on the file system of `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a NUL in the recordings directory's path"))?;
    // SAFETY: `path` is a valid C string and `stat` a plain struct the call fills.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers live across the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Both `c_ulong`: 64 bits on the Linux targets the node builds for.
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Deletes the day folders of `dir` past `retention_days` on `today`; the files
/// deleted. Only real directories named as dates (never a link).
fn sweep(dir: &Path, today: chrono::NaiveDate, retention_days: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    let mut removed = 0;
    for day in expired(names.iter().map(String::as_str), today, retention_days) {
        let folder = dir.join(day);
        let files = std::fs::read_dir(&folder).map_or(0, |e| e.count() as u64);
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => removed += files,
            Err(e) => {
                tracing::warn!(folder = %folder.display(), %e, "cannot delete recordings past their retention")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_starts_only_with_room_and_a_disk_that_answers() {
        let now = Instant::now();
        let ago = |s: u64| Some(now - Duration::from_secs(s));
        const MB: u64 = 1 << 20;
        // (free, checked, min free) -> verdict
        let rows: &[(Option<u64>, Option<Instant>, u64, Result<(), Skip>)] = &[
            (Some(2 * MB), ago(1), MB, Ok(())),
            (Some(MB), ago(1), MB, Ok(())),
            (Some(MB - 1), ago(1), MB, Err(Skip::DiskFull)),
            (Some(2 * MB), ago(6), MB, Err(Skip::DiskStalled)),
            (Some(0), ago(5), MB, Err(Skip::DiskFull)),
            (None, None, MB, Err(Skip::DiskStalled)),
            // The guard off: whatever the disk says.
            (Some(0), ago(60), 0, Ok(())),
            (None, None, 0, Ok(())),
        ];
        for (free, checked, min, want) in rows {
            assert_eq!(
                decide(*free, *checked, *min, now),
                *want,
                "{free:?} {checked:?} {min}"
            );
        }
    }

    #[test]
    fn day_folders_past_the_retention_expire() {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 6).unwrap();
        let names = [
            "2026-12-06",
            "2026-09-08",
            "2026-09-07",
            "2026-09-06",
            "2025-01-01",
            "notes",
            "2026-9-01",
            "2026-13-01",
            "2026-12-07",
        ];
        let rows: &[(u32, &[&str])] = &[
            (0, &[]),
            (90, &["2026-09-07", "2026-09-06", "2025-01-01"]),
            (1, &["2026-09-08", "2026-09-07", "2026-09-06", "2025-01-01"]),
            (u32::MAX, &[]),
        ];
        for (days, want) in rows {
            assert_eq!(expired(names, today, *days), *want, "{days}");
        }
    }

    /// The sweep deletes expired day folders with their files and nothing else: not a
    /// file or a link named like a day, not a newer folder.
    #[test]
    fn the_sweep_deletes_only_expired_day_folders() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for day in ["2026-01-01", "2026-12-06"] {
            std::fs::create_dir(d.join(day)).unwrap();
            std::fs::write(d.join(day).join("a.wav"), b"x").unwrap();
            std::fs::write(d.join(day).join("b.wav"), b"x").unwrap();
        }
        std::fs::write(d.join("2026-01-02"), b"a file").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep.wav"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("2026-01-03")).unwrap();
        let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 6).unwrap();
        assert_eq!(sweep(d, today, 30), 2);
        assert!(!d.join("2026-01-01").exists());
        assert!(d.join("2026-12-06").join("a.wav").exists());
        assert!(d.join("2026-01-02").exists());
        assert!(outside.path().join("keep.wav").exists());
    }

    /// Off the disk: a space that was never checked refuses (stalled); checked with
    /// room it allows; refusals are counted by reason.
    #[test]
    fn the_call_path_reads_the_last_check() {
        let metrics = SpaceMetrics::default();
        let space = RecordingSpace::new(1, &metrics);
        assert_eq!(space.allows(), Err(Skip::DiskStalled));
        space.checked(2 << 20, Instant::now());
        assert_eq!(space.allows(), Ok(()));
        space.checked(1000, Instant::now());
        assert_eq!(space.allows(), Err(Skip::DiskFull));
        let count = |reason| metrics.skipped.get_or_create(&SkipLabel { reason }).get();
        assert_eq!((count("disk_full"), count("disk_stalled")), (1, 1));
        assert_eq!(metrics.free_bytes.get(), 1000);
        assert_eq!(RecordingSpace::unwatched().allows(), Ok(()));
    }
}
