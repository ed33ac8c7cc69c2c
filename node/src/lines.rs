//! Call queuing (コールキューイング): at most `max_lines` calls of a number connected or
//! being connected at once; callers over the limit wait in FIFO order (hearing
//! ringback) and take the first line that frees, or give up after `max_wait_seconds`.
//!
//! [`LineTable`] is the sans-IO core (decisions only, table-tested). [`Lines`] shares it
//! on one node behind a mutex and wakes the next waiter through its call actor; a
//! cluster can later put the same table behind a per-number actor. A held line is a
//! [`LineGuard`] released on drop, so a crashed call frees its line; a waiter whose
//! actor died is skipped when its turn comes.

use prometheus_client::metrics::gauge::Gauge;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// What a call is told when it asks for a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Granted,
    /// Queued at this position (1 = next).
    Queued(usize),
}

#[derive(Default)]
struct Line {
    busy: u32,
    waiting: VecDeque<u64>,
}

/// Line counts and queues by key (a tracking number).
#[derive(Default)]
pub struct LineTable {
    lines: HashMap<String, Line>,
}

impl LineTable {
    pub fn ask(&mut self, key: &str, max: u32, caller: u64) -> Ask {
        let line = self.lines.entry(key.to_string()).or_default();
        if line.busy < max && line.waiting.is_empty() {
            line.busy += 1;
            Ask::Granted
        } else {
            line.waiting.push_back(caller);
            Ask::Queued(line.waiting.len())
        }
    }

    /// A line is released: the waiter it passes to, if any (the line stays busy for it).
    pub fn release(&mut self, key: &str) -> Option<u64> {
        let line = self.lines.get_mut(key)?;
        match line.waiting.pop_front() {
            Some(next) => Some(next),
            None => {
                line.busy = line.busy.saturating_sub(1);
                if line.busy == 0 {
                    self.lines.remove(key);
                }
                None
            }
        }
    }

    /// A waiter gave up (hung up, timed out): leaves the queue. False if it was not in it
    /// (e.g. a line had just been passed to it).
    pub fn leave(&mut self, key: &str, caller: u64) -> bool {
        let Some(line) = self.lines.get_mut(key) else {
            return false;
        };
        let before = line.waiting.len();
        line.waiting.retain(|c| *c != caller);
        before != line.waiting.len()
    }

    pub fn waiting(&self) -> usize {
        self.lines.values().map(|l| l.waiting.len()).sum()
    }
}

/// Something that can be told a line is now its own (a call actor).
pub trait Waiter: Send + Sync {
    /// False if the waiter is gone.
    fn take_line(&self) -> bool;
}

/// The node's lines: the table and the waiters to wake.
/// The table and, by ticket, the waiters to wake.
type Shared = (LineTable, HashMap<u64, Arc<dyn Waiter>>);

#[derive(Clone, Default)]
pub struct Lines {
    inner: Arc<Mutex<Shared>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    /// Calls waiting in all queues, kept current by every change.
    waiting: Gauge,
}

/// A held line of `key`; dropping it passes the line on.
pub struct LineGuard {
    lines: Lines,
    key: String,
}

impl Drop for LineGuard {
    fn drop(&mut self) {
        self.lines.release(&self.key);
    }
}

impl Lines {
    /// Lines that report the number of waiting calls to `waiting`.
    pub fn new(waiting: Gauge) -> Lines {
        Lines {
            waiting,
            ..Lines::default()
        }
    }

    fn count_waiting(&self, table: &LineTable) {
        self.waiting.set(table.waiting() as i64);
    }

    /// Asks for a line of `key`: the guard at once, or a queue ticket (the waiter's
    /// `take_line` is called when the line is its own; it then calls [`Lines::guard`]).
    pub fn ask(
        &self,
        key: &str,
        max: u32,
        waiter: Arc<dyn Waiter>,
    ) -> Result<LineGuard, (u64, usize)> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.0.ask(key, max, id) {
            Ask::Granted => Ok(self.guard(key)),
            Ask::Queued(position) => {
                inner.1.insert(id, waiter);
                self.count_waiting(&inner.0);
                Err((id, position))
            }
        }
    }

    /// The guard of a line that was passed to a waiter.
    pub fn guard(&self, key: &str) -> LineGuard {
        LineGuard {
            lines: self.clone(),
            key: key.to_string(),
        }
    }

    /// A waiter stops waiting. False if the line was already passed to it (it must then
    /// take the guard and drop it, to pass the line on).
    pub fn leave(&self, key: &str, ticket: u64) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.1.remove(&ticket);
        let left = inner.0.leave(key, ticket);
        self.count_waiting(&inner.0);
        left
    }

    fn release(&self, key: &str) {
        loop {
            let next = {
                let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                let next = inner.0.release(key);
                self.count_waiting(&inner.0);
                match next {
                    Some(id) => inner.1.remove(&id),
                    None => return,
                }
            };
            // Wake outside the lock. A waiter that is gone passes the line on again.
            match next {
                Some(w) if w.take_line() => return,
                _ => continue,
            }
        }
    }

    pub fn waiting(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .waiting()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_with_a_line_limit() {
        let mut t = LineTable::default();
        assert_eq!(t.ask("n", 2, 1), Ask::Granted);
        assert_eq!(t.ask("n", 2, 2), Ask::Granted);
        assert_eq!(t.ask("n", 2, 3), Ask::Queued(1));
        assert_eq!(t.ask("n", 2, 4), Ask::Queued(2));
        assert_eq!(t.ask("other", 2, 5), Ask::Granted, "lines are per number");
        assert_eq!(t.waiting(), 2);
        assert_eq!(t.release("n"), Some(3), "first in, first served");
        assert!(t.leave("n", 4), "4 hangs up while waiting");
        assert!(!t.leave("n", 4));
        assert_eq!(t.release("n"), None);
        assert_eq!(t.release("n"), None);
        assert_eq!(t.ask("n", 2, 6), Ask::Granted);
        assert_eq!(t.ask("n", 2, 7), Ask::Granted, "both lines free again");
        assert_eq!(t.ask("n", 2, 8), Ask::Queued(1));
    }

    #[test]
    fn a_newcomer_never_jumps_the_queue() {
        let mut t = LineTable::default();
        assert_eq!(t.ask("n", 1, 1), Ask::Granted);
        assert_eq!(t.ask("n", 1, 2), Ask::Queued(1));
        // The line passes straight to 2: it stays busy, so 3 queues.
        assert_eq!(t.release("n"), Some(2));
        assert_eq!(t.ask("n", 1, 3), Ask::Queued(1));
    }

    struct Flag(std::sync::atomic::AtomicBool, bool);
    impl Waiter for Flag {
        fn take_line(&self) -> bool {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            self.1
        }
    }

    #[test]
    fn lines_pass_on_drop_and_skip_waiters_that_are_gone() {
        let lines = Lines::default();
        let first = lines
            .ask("n", 1, Arc::new(Flag(Default::default(), true)))
            .ok()
            .unwrap();
        let gone = Arc::new(Flag(Default::default(), false));
        let alive = Arc::new(Flag(Default::default(), true));
        assert!(lines.ask("n", 1, gone.clone()).is_err());
        assert!(lines.ask("n", 1, alive.clone()).is_err());
        assert_eq!(lines.waiting.get(), 2, "the gauge follows the queue");
        drop(first);
        assert!(
            gone.0.load(std::sync::atomic::Ordering::SeqCst),
            "offered to the first waiter"
        );
        assert!(
            alive.0.load(std::sync::atomic::Ordering::SeqCst),
            "then to the next one"
        );
        assert_eq!(lines.waiting.get(), 0);
        drop(lines.guard("n"));
        assert!(
            lines
                .ask("n", 1, Arc::new(Flag(Default::default(), true)))
                .is_ok(),
            "free again"
        );
    }
}
