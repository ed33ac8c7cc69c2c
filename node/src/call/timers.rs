//! A call's own timers, kept in the call's task: ring timeouts, the
//! `sip.max_ring_seconds` guard, the end guard, queue, IVR, judgement and session
//! checks. Each used to be a tokio task of its own (spawned, sleeping, then sending
//! the call a message; the ring timers aborted again at answer): three task spawns
//! and an abort for every call. Here a timer is an entry in a small list the call
//! owns and its task sleeps until the earliest one (see `call::drive`). Sans-IO: time
//! is an argument.

use super::CallMsg;
use std::time::Instant;

/// Names a timer, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerId(u64);

/// The call's pending timers. A call has a handful at most, so a list beats a heap.
#[derive(Default)]
pub struct Timers {
    pending: Vec<(Instant, TimerId, CallMsg)>,
    next: u64,
}

#[cfg(test)]
impl Timers {
    /// How many timers are pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
impl TimerId {
    /// A timer id for tests that compare them.
    pub fn for_test(n: u64) -> TimerId {
        TimerId(n)
    }
}

impl Timers {
    /// `msg` is due at `at`.
    pub fn at(&mut self, at: Instant, msg: CallMsg) -> TimerId {
        let id = TimerId(self.next);
        self.next += 1;
        self.pending.push((at, id, msg));
        id
    }

    /// `msg` is due `delay` after `now` (a delay too far to add, which none
    /// configurable is, waits a year).
    pub fn after(&mut self, now: Instant, delay: std::time::Duration, msg: CallMsg) -> TimerId {
        let at = now
            .checked_add(delay)
            .unwrap_or(now + std::time::Duration::from_secs(365 * 86_400));
        self.at(at, msg)
    }

    /// Forgets a timer (nothing if it already fired).
    pub fn cancel(&mut self, id: TimerId) {
        self.pending.retain(|(_, i, _)| *i != id);
    }

    /// When the earliest timer is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|(at, _, _)| *at).min()
    }

    /// The earliest timer due at `now`, taken out; of timers due at the same instant,
    /// the one set first.
    pub fn pop_due(&mut self, now: Instant) -> Option<CallMsg> {
        let i = self
            .pending
            .iter()
            .enumerate()
            .filter(|(_, (at, _, _))| *at <= now)
            .min_by_key(|(_, (at, id, _))| (*at, id.0))
            .map(|(i, _)| i)?;
        Some(self.pending.remove(i).2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn kind(m: Option<CallMsg>) -> &'static str {
        match m {
            None => "none",
            Some(CallMsg::RingGuard) => "ring_guard",
            Some(CallMsg::EndGuard) => "end_guard",
            Some(CallMsg::QueueTimeout) => "queue",
            Some(CallMsg::RingTimeout(_)) => "ring",
            Some(_) => "other",
        }
    }

    #[test]
    fn timers_fire_in_due_order_once_and_cancelled_ones_never() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = Timers::default();
        assert_eq!(t.next_due(), None);
        let guard = t.at(t0 + s(480), CallMsg::RingGuard);
        let ring = t.at(t0 + s(30), CallMsg::RingTimeout(1));
        t.at(t0 + s(10), CallMsg::QueueTimeout);
        t.at(t0 + s(10), CallMsg::EndGuard);
        assert_eq!(t.next_due(), Some(t0 + s(10)));
        // (at, expected): nothing early; same instant in the order set; one per pop.
        let steps = [
            (t0 + s(9), "none"),
            (t0 + s(10), "queue"),
            (t0 + s(10), "end_guard"),
            (t0 + s(10), "none"),
        ];
        for (now, want) in steps {
            assert_eq!(kind(t.pop_due(now)), want, "at {:?}", now - t0);
        }
        t.cancel(ring);
        t.cancel(ring); // twice is harmless
        assert_eq!(t.next_due(), Some(t0 + s(480)));
        assert_eq!(
            kind(t.pop_due(t0 + s(100))),
            "none",
            "the cancelled ring timer"
        );
        t.cancel(guard);
        assert_eq!((t.pending.len(), t.next_due()), (0, None));
        assert_eq!(kind(t.pop_due(t0 + s(1000))), "none");
    }
}
