//! Fair shares for the outbox worker, as pure bookkeeping (no I/O, time passed in):
//! which claimed follow-up may start now, which waits in memory for a slot of its
//! destination, and which goes back to the outbox untried. So one receiver that
//! black-holes (every delivery a timeout) holds at most `per_destination` deliveries
//! and as many waiting rows, one operator's webhooks at most `per_operator`, and the
//! rest of the worker's capacity keeps serving everyone else.
//!
//! A destination is a `host:port` (webhooks, GA4, the SMS gateway) or the SMTP relay.
//! A row waits in memory only while its claim cannot run out: at most one round of its
//! destination's running deliveries, each bounded by the delivery timeout.
//!
//! Rows handed back are spread over the time their destination needs for what it was
//! handed back lately (see [`Lanes::release_delay`]): all due again together, a black
//! hole's backlog came back as one block at every delivery timeout, and past about
//! 5,000 rows (what the worker looks past in 10 s) every other operator's rows waited
//! behind it for good, since claims take the oldest due rows first (a review).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How much of the worker one destination or operator may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deliveries running to one destination; as many more may wait for it.
    pub per_destination: usize,
    /// Rows of one operator's webhooks held (running or waiting).
    pub per_operator: usize,
    /// Rows held in all (running or waiting): what the worker claims at most.
    pub total: usize,
    /// The longest a row is handed back for (the delivery timeout).
    pub max_release: Duration,
}

/// What to do with a claimed row.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// Deliver it now.
    Start(T),
    /// Kept: it starts when a delivery to its destination finishes.
    Waiting,
    /// Its destination or operator has its share, or the worker is full: back to the
    /// outbox, untried; `busy` says whether its own destination had its share (only
    /// such rows count as its backlog: see [`Lanes::release_delay`]).
    Release(T, bool),
}

/// Guess of one delivery's time for a destination never seen.
const UNKNOWN_TYPICAL: Duration = Duration::from_secs(1);
/// Shortest hand-back (a destination that frees up fast gets its rows again soon).
const MIN_RELEASE: Duration = Duration::from_millis(250);
/// Destinations whose typical delivery time (and hand-back count) is remembered.
const REMEMBERED: usize = 4096;
/// Half-life of a destination's count of rows handed back.
const PRESSURE_HALF_LIFE: Duration = Duration::from_secs(600);
/// The longest a destination's handed-back rows are spread over: the longest retry
/// wait, so a receiver that comes back has its backlog within the hour, as its
/// failed rows.
const MAX_SPREAD: Duration = Duration::from_secs(3600);

/// Rows of one destination handed back lately: a count halved every
/// [`PRESSURE_HALF_LIFE`], as of `at`.
#[derive(Debug, Clone, Copy)]
struct Pressure {
    rows: f64,
    at: Instant,
}

impl Pressure {
    /// The count as of `now` (as of `at` for a `now` before it).
    fn at(&self, now: Instant) -> f64 {
        let halvings =
            now.saturating_duration_since(self.at).as_secs_f64() / PRESSURE_HALF_LIFE.as_secs_f64();
        self.rows * 0.5f64.powf(halvings)
    }
}

#[derive(Debug)]
pub struct Lanes<T> {
    limits: Limits,
    running: HashMap<String, usize>,
    waiting: HashMap<String, VecDeque<T>>,
    /// Rows held per operator (running and waiting).
    operators: HashMap<String, usize>,
    held: usize,
    running_total: usize,
    /// Typical delivery time per destination (moving average).
    typical: HashMap<String, Duration>,
    /// Rows handed back per destination, lately.
    released: HashMap<String, Pressure>,
}

impl<T> Lanes<T> {
    pub fn new(limits: Limits) -> Lanes<T> {
        Lanes {
            limits,
            running: HashMap::new(),
            waiting: HashMap::new(),
            operators: HashMap::new(),
            held: 0,
            running_total: 0,
            typical: HashMap::new(),
            released: HashMap::new(),
        }
    }

    /// Rows the worker may still claim.
    pub fn room(&self) -> usize {
        self.limits.total.saturating_sub(self.held)
    }

    pub fn running(&self) -> usize {
        self.running_total
    }

    /// Places a claimed row of `destination` (and, for webhooks, of `operator`).
    pub fn offer(&mut self, destination: &str, operator: Option<&str>, item: T) -> Offer<T> {
        let op_held = operator.map_or(0, |o| self.operators.get(o).copied().unwrap_or(0));
        let running = self.running.get(destination).copied().unwrap_or(0);
        let waiting = self.waiting.get(destination).map_or(0, VecDeque::len);
        // Its destination's own share is full whichever share refuses it: a black hole
        // fills its operator's share with its own rows, and its rows then go back for
        // the operator's reason.
        let busy = running >= self.limits.per_destination && waiting >= self.limits.per_destination;
        if busy || self.held >= self.limits.total || op_held >= self.limits.per_operator {
            return Offer::Release(item, busy);
        }
        let offer = if running < self.limits.per_destination {
            *self.running.entry(destination.to_string()).or_default() += 1;
            self.running_total += 1;
            Offer::Start(item)
        } else {
            self.waiting
                .entry(destination.to_string())
                .or_default()
                .push_back(item);
            Offer::Waiting
        };
        self.held += 1;
        if let Some(o) = operator {
            *self.operators.entry(o.to_string()).or_default() += 1;
        }
        offer
    }

    /// A delivery to `destination` (of `operator`) finished after `took`; returns the
    /// row of the same destination that starts in its place, if one was waiting.
    pub fn finish(
        &mut self,
        destination: &str,
        operator: Option<&str>,
        took: Option<Duration>,
    ) -> Option<T> {
        if self.typical.len() >= REMEMBERED && !self.typical.contains_key(destination) {
            self.typical.clear();
        }
        // None: nothing was tried (a row handed back untried), so nothing is learnt
        // of the destination (its hand-back's time pulled the typical time down and
        // sent a black hole's rows back sooner: a review).
        if let Some(took) = took {
            let typical = self.typical.entry(destination.to_string()).or_insert(took);
            *typical = (*typical * 3 + took) / 4;
        }
        self.held = self.held.saturating_sub(1);
        if let Some(o) = operator {
            decrement(&mut self.operators, o);
        }
        if let Some(queue) = self.waiting.get_mut(destination) {
            if let Some(next) = queue.pop_front() {
                if queue.is_empty() {
                    self.waiting.remove(destination);
                }
                return Some(next); // the slot passes on: running counts stay
            }
        }
        decrement(&mut self.running, destination);
        self.running_total = self.running_total.saturating_sub(1);
        None
    }

    /// How long a row of `destination` handed back at `now` waits: until its
    /// destination has probably worked through what it holds now, between
    /// [`MIN_RELEASE`] and the delivery timeout (a black hole's rows come back once
    /// per timeout); for a row of a destination whose own share was full (`busy`), plus
    /// `unit` (a random number in 0..1) of a spread over the time the destination
    /// needs for the rows handed back to it lately ([`Lanes::note_release`]), at most
    /// [`MAX_SPREAD`]: a large backlog comes due a little at a time, at about the pace
    /// its destination takes it, and rows of other destinations are not stuck behind
    /// it. A row handed back because its operator or the worker was full is no
    /// backlog of its destination's: its base wait alone (counted, a healthy
    /// receiver's rows waited minutes behind their operator's black hole: a review).
    fn release_delay(&self, destination: &str, now: Instant, unit: f64, busy: bool) -> Duration {
        let typical = self
            .typical
            .get(destination)
            .copied()
            .unwrap_or(UNKNOWN_TYPICAL);
        let per_destination = self.limits.per_destination.max(1);
        let held = self.running.get(destination).copied().unwrap_or(0)
            + self.waiting.get(destination).map_or(0, VecDeque::len);
        let rounds = 1 + held / per_destination;
        let base = typical
            .saturating_mul(rounds as u32)
            .clamp(MIN_RELEASE, self.limits.max_release.max(MIN_RELEASE));
        if !busy {
            return base;
        }
        let lately = self.released.get(destination).map_or(0.0, |p| p.at(now));
        let spread = typical
            .mul_f64(lately / per_destination as f64)
            .min(MAX_SPREAD);
        base + spread.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The waits of a batch of rows handed back at `now` (each its destination and
    /// whether that destination's own share was full: see [`Offer::Release`]), `unit`
    /// drawing each one's random share (see [`Lanes::release_delay`]). The batch's
    /// busy rows are all counted first ([`Lanes::note_release`]), so its first rows are
    /// spread as widely as its last (counted one by one, 54 of 800 rows at a 1 s
    /// receiver came due in the first 10 s: a review).
    pub fn release_delays(
        &mut self,
        rows: &[(&str, bool)],
        now: Instant,
        mut unit: impl FnMut() -> f64,
    ) -> Vec<Duration> {
        for (destination, _) in rows.iter().filter(|(_, busy)| *busy) {
            self.note_release(destination, now);
        }
        rows.iter()
            .map(|(destination, busy)| self.release_delay(destination, now, unit(), *busy))
            .collect()
    }

    /// Counts one more row of `destination` handed back at `now` because its share
    /// was full.
    fn note_release(&mut self, destination: &str, now: Instant) {
        if self.released.len() >= REMEMBERED && !self.released.contains_key(destination) {
            // Forget the faded first: clearing all made a black hole's backlog come
            // due as one block again (a review).
            self.released.retain(|_, p| p.at(now) >= 1.0);
            if self.released.len() >= REMEMBERED {
                self.released.clear();
            }
        }
        let p = self
            .released
            .entry(destination.to_string())
            .or_insert(Pressure { rows: 0.0, at: now });
        p.rows = p.at(now) + 1.0;
        p.at = p.at.max(now);
    }

    /// Every waiting row (the worker is stopping and hands them back). Running rows
    /// still report [`Lanes::finish`].
    pub fn take_waiting(&mut self) -> Vec<(String, T)> {
        let mut out = Vec::new();
        for (dest, queue) in self.waiting.drain() {
            for item in queue {
                out.push((dest.clone(), item));
            }
        }
        self.held = self.running_total;
        out
    }
}

fn decrement(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        per_destination: 2,
        per_operator: 3,
        total: 6,
        max_release: Duration::from_secs(10),
    };

    #[derive(Debug)]
    enum Step {
        /// destination, operator, item → expected offer (S start, W wait, R release
        /// with the destination's own share full, r release for another share)
        Offer(&'static str, Option<&'static str>, u32, char),
        /// destination, operator, took ms → the item that starts next
        Finish(&'static str, Option<&'static str>, u64, Option<u32>),
        /// expected room
        Room(usize),
    }

    /// A black hole fills its share and is refused more; others keep starting.
    #[test]
    fn shares_per_destination_operator_and_total() {
        use Step::*;
        let steps = [
            Offer("hole:80", Some("op_a"), 1, 'S'),
            Offer("hole:80", Some("op_a"), 2, 'S'),
            Offer("hole:80", Some("op_a"), 3, 'W'),
            // op_a holds 3 = per_operator: released even toward another destination,
            // whose own share is not full (no backlog of its).
            Offer("other:80", Some("op_a"), 4, 'r'),
            Offer("hole:80", None, 5, 'W'),
            Offer("hole:80", None, 6, 'R'), // two running, two waiting
            // Its operator full too: still its own destination's backlog.
            Offer("hole:80", Some("op_a"), 9, 'R'),
            Offer("good:443", Some("op_b"), 7, 'S'),
            Offer("sms:443", None, 8, 'S'),
            Room(0),
            Offer("good:443", Some("op_b"), 10, 'r'), // total reached
            // A hole delivery times out: the first waiting row takes its slot.
            Finish("hole:80", Some("op_a"), 10_000, Some(3)),
            Room(1),
            Finish("hole:80", Some("op_a"), 10_000, Some(5)),
            Finish("good:443", Some("op_b"), 50, None),
            Room(3),
            Offer("good:443", Some("op_b"), 11, 'S'),
            Offer("other:80", Some("op_a"), 12, 'S'),
            Finish("hole:80", Some("op_a"), 10_000, None),
            Finish("hole:80", None, 10_000, None),
            Room(3),
        ];
        let mut lanes: Lanes<u32> = Lanes::new(LIMITS);
        for (i, step) in steps.iter().enumerate() {
            match *step {
                Offer(dest, op, item, want) => {
                    let got = match lanes.offer(dest, op, item) {
                        super::Offer::Start(x) if x == item => 'S',
                        super::Offer::Waiting => 'W',
                        super::Offer::Release(x, true) if x == item => 'R',
                        super::Offer::Release(x, false) if x == item => 'r',
                        other => panic!("step {i}: {other:?}"),
                    };
                    assert_eq!(got, want, "step {i}: {step:?}");
                }
                Finish(dest, op, ms, want) => {
                    let got = lanes.finish(dest, op, Some(Duration::from_millis(ms)));
                    assert_eq!(got, want, "step {i}: {step:?}");
                }
                Room(want) => assert_eq!(lanes.room(), want, "step {i}"),
            }
        }
    }

    #[test]
    fn release_delay_follows_the_destination_pace() {
        let now = Instant::now();
        let mut lanes: Lanes<u32> = Lanes::new(LIMITS);
        // Nothing handed back lately: the base wait alone, whatever `unit`.
        assert_eq!(
            lanes.release_delay("new:80", now, 1.0, true),
            UNKNOWN_TYPICAL
        );
        // A fast receiver: its rows come back soon.
        lanes.offer("fast:80", None, 1);
        lanes.finish("fast:80", None, Some(Duration::from_millis(20)));
        assert_eq!(lanes.release_delay("fast:80", now, 1.0, true), MIN_RELEASE);
        // A black hole: once per delivery timeout.
        for i in 0..4 {
            lanes.offer("hole:80", None, i);
        }
        for _ in 0..2 {
            lanes.finish("hole:80", None, Some(Duration::from_secs(10)));
        }
        assert_eq!(
            lanes.release_delay("hole:80", now, 1.0, true),
            Duration::from_secs(10)
        );
        // A receiver of 400 ms holding three rows (two running): two rounds ahead.
        for i in 0..4 {
            lanes.offer("slow:80", None, i);
        }
        lanes.finish("slow:80", None, Some(Duration::from_millis(400)));
        assert_eq!(
            lanes.release_delay("slow:80", now, 1.0, true),
            Duration::from_millis(800)
        );
    }

    /// A destination's handed-back rows are spread over the time it needs for the rows
    /// handed back to it lately: a black hole's backlog of thousands comes due a
    /// little at a time (at most an hour out), a receiver handed a few rows back gets
    /// them again within a second, rows handed back for their operator's or the
    /// worker's share are no backlog of their destination's, and the count fades.
    #[test]
    fn a_backlog_comes_due_at_its_destination_s_pace() {
        let now = Instant::now();
        let mut lanes: Lanes<u32> = Lanes::new(LIMITS); // two per destination
        for i in 0..2 {
            lanes.offer("hole:80", None, i);
        }
        lanes.finish("hole:80", None, Some(Duration::from_secs(10)));
        let secs = Duration::from_secs;
        // (rows counted before, the row's `unit`, busy) -> its wait.
        let cases: [(u32, f64, bool, Duration); 6] = [
            // One row counted: the base and half a delivery time per slot.
            (1, 1.0, true, secs(10 + 5)),
            (0, 0.5, true, secs(10) + Duration::from_millis(2500)),
            (0, 0.0, true, secs(10)),
            // 101 rows at 10 s over two slots: 505 s of spread.
            (100, 1.0, true, secs(10 + 505)),
            // 10,001: capped at an hour.
            (9_900, 1.0, true, secs(10) + MAX_SPREAD),
            // Handed back for its operator's share: the base alone.
            (0, 1.0, false, secs(10)),
        ];
        for (counted, unit, busy, want) in cases {
            for _ in 0..counted {
                lanes.note_release("hole:80", now);
            }
            let got = lanes.release_delay("hole:80", now, unit, busy);
            let diff = got.max(want) - got.min(want);
            assert!(
                diff <= Duration::from_millis(10),
                "{counted} more, unit {unit}, busy {busy}: {got:?} against {want:?}"
            );
        }
        // A batch is counted whole before its waits are drawn: its first row is spread
        // as widely as its last (100 rows of a slow:80 taking 10 s over two slots).
        lanes.offer("slow:80", None, 7);
        lanes.finish("slow:80", None, Some(secs(10)));
        let batch = vec![("slow:80", true); 100];
        let waits = lanes.release_delays(&batch, now, || 1.0);
        assert_eq!(waits.first(), waits.last());
        assert_eq!(waits[0], secs(10 + 500));
        // A fast receiver handed five rows back gets them within a second.
        lanes.offer("fast:80", None, 9);
        lanes.finish("fast:80", None, Some(Duration::from_millis(20)));
        for _ in 0..5 {
            lanes.note_release("fast:80", now);
        }
        assert!(lanes.release_delay("fast:80", now, 1.0, true) < secs(1));
        // Two hours (twelve half-lives) on, the black hole's 10,001 have faded to
        // about two and a half.
        let later = now + secs(7200);
        let faded = lanes.release_delay("hole:80", later, 1.0, true);
        assert!(faded < secs(10 + 15), "{faded:?}");
    }

    #[test]
    fn stopping_hands_back_waiting_rows() {
        let mut lanes: Lanes<u32> = Lanes::new(LIMITS);
        for i in 0..4 {
            lanes.offer("hole:80", None, i);
        }
        let back = lanes.take_waiting();
        assert_eq!(
            back,
            vec![("hole:80".to_string(), 2), ("hole:80".to_string(), 3)]
        );
        assert_eq!(lanes.running(), 2);
        assert_eq!(lanes.room(), 4);
        assert_eq!(lanes.finish("hole:80", None, None), None);
        assert_eq!(lanes.running(), 1);
    }
}
