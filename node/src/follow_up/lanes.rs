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

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

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
    /// Its destination or operator has its share: back to the outbox, untried.
    Release(T),
}

/// Guess of one delivery's time for a destination never seen.
const UNKNOWN_TYPICAL: Duration = Duration::from_secs(1);
/// Shortest hand-back (a destination that frees up fast gets its rows again soon).
const MIN_RELEASE: Duration = Duration::from_millis(250);
/// Destinations whose typical delivery time is remembered.
const REMEMBERED: usize = 4096;

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
        if self.held >= self.limits.total || op_held >= self.limits.per_operator {
            return Offer::Release(item);
        }
        let running = self.running.get(destination).copied().unwrap_or(0);
        let waiting = self.waiting.get(destination).map_or(0, VecDeque::len);
        let offer = if running < self.limits.per_destination {
            *self.running.entry(destination.to_string()).or_default() += 1;
            self.running_total += 1;
            Offer::Start(item)
        } else if waiting < self.limits.per_destination {
            self.waiting
                .entry(destination.to_string())
                .or_default()
                .push_back(item);
            Offer::Waiting
        } else {
            return Offer::Release(item);
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

    /// How long a row of `destination` is handed back for: until its destination has
    /// probably worked through what it holds now, between [`MIN_RELEASE`] and the
    /// delivery timeout (a black hole's rows come back once per timeout).
    pub fn release_delay(&self, destination: &str) -> Duration {
        let typical = self
            .typical
            .get(destination)
            .copied()
            .unwrap_or(UNKNOWN_TYPICAL);
        let held = self.running.get(destination).copied().unwrap_or(0)
            + self.waiting.get(destination).map_or(0, VecDeque::len);
        let rounds = 1 + held / self.limits.per_destination.max(1);
        typical
            .saturating_mul(rounds as u32)
            .clamp(MIN_RELEASE, self.limits.max_release.max(MIN_RELEASE))
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
        /// destination, operator, item → expected offer (S start, W wait, R release)
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
            // op_a holds 3 = per_operator: released even toward another destination.
            Offer("other:80", Some("op_a"), 4, 'R'),
            Offer("hole:80", None, 5, 'W'),
            Offer("hole:80", None, 6, 'R'), // two running, two waiting
            Offer("good:443", Some("op_b"), 7, 'S'),
            Offer("sms:443", None, 8, 'S'),
            Room(0),
            Offer("good:443", Some("op_b"), 10, 'R'), // total reached
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
                        super::Offer::Release(x) if x == item => 'R',
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
        let mut lanes: Lanes<u32> = Lanes::new(LIMITS);
        assert_eq!(lanes.release_delay("new:80"), UNKNOWN_TYPICAL);
        // A fast receiver: its rows come back soon.
        lanes.offer("fast:80", None, 1);
        lanes.finish("fast:80", None, Some(Duration::from_millis(20)));
        assert_eq!(lanes.release_delay("fast:80"), MIN_RELEASE);
        // A black hole: once per delivery timeout.
        for i in 0..4 {
            lanes.offer("hole:80", None, i);
        }
        for _ in 0..2 {
            lanes.finish("hole:80", None, Some(Duration::from_secs(10)));
        }
        assert_eq!(lanes.release_delay("hole:80"), Duration::from_secs(10));
        // A receiver of 400 ms holding three rows (two running): two rounds ahead.
        for i in 0..4 {
            lanes.offer("slow:80", None, i);
        }
        lanes.finish("slow:80", None, Some(Duration::from_millis(400)));
        assert_eq!(lanes.release_delay("slow:80"), Duration::from_millis(800));
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
