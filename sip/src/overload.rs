//! Admission by queueing delay: the node refuses new calls when received messages wait
//! too long for the SIP core, not when too many of them wait.
//!
//! A count of waiting messages says nothing about how late they are (5,000 OPTIONS are
//! quick, 5,000 INVITEs with SDP are not), and a bound large enough to ride out a burst
//! holds seconds of work once the node is past capacity: callers retransmit, give up,
//! and the node spends its CPU on calls nobody waits for any more (the "collapse" of a
//! SIP server under overload, RFC 6357). So, as CoDel does for packets (RFC 8289), the
//! core measures each message's *sojourn* (received → taken off the queue) and
//! [`DelayAdmission`] decides:
//!
//! - a sojourn at or above `target` that has lasted `interval` (one message above it is
//!   a burst, not overload) starts refusing: new INVITEs get a 503 with Retry-After
//!   straight from the receivers ([`RefusalGate`]), before they are queued or given a
//!   transaction, so a refusal costs a parse and one datagram;
//! - the first message below `target`, or an empty queue, stops refusing.
//!
//! A shard has two queues, and [`ShardAdmission`] judges each on its own: messages from
//! the network, and the calls' commands (requests and responses to send). Past this
//! machine's capacity the commands waited 0.2–0.5 s while received messages waited
//! 10 ms (measured at 6,000 cps): one rule fed from both would have been reset by every
//! punctual received message and never refused.
//!
//! Messages of calls in progress (ACK, BYE, responses, re-INVITEs) are always queued:
//! refusing new work is what keeps the old work on time. Retransmissions of a refused
//! INVITE, and its ACK, are dropped by the receivers ([`RecentlyRefused`]) while the
//! shard refuses: the 503 was sent and answering again would only feed the overload.
//! Once it is on time again, a retransmission means the 503 was lost: it gets it
//! again. Retransmissions of an INVITE queued before the refusals began are queued too
//! ([`RecentlyQueued`]): that call is the core's, not a new one.
//!
//! Pure state machines with the time as an argument; the endpoint owns them.

use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The admission policy (the node fills it from `[sip]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadSettings {
    /// Queueing delay that, sustained for `interval`, starts refusing new INVITEs.
    pub target: Duration,
    /// How long the delay must stay at or above `target` before refusals start.
    pub interval: Duration,
    /// Seconds in the Retry-After of the 503.
    pub retry_after: u32,
}

impl Default for OverloadSettings {
    /// 50 ms of waiting for 100 ms: well under SIP's first retransmission (T1, 500 ms),
    /// so a caller admitted at the edge of overload still gets its 100 Trying before it
    /// retransmits; well above what a node at its clean rate shows (a few ms).
    fn default() -> Self {
        OverloadSettings {
            target: Duration::from_millis(50),
            interval: Duration::from_millis(100),
            retry_after: 5,
        }
    }
}

/// The core's side: fed with the sojourn of every message it takes off the queue.
#[derive(Debug)]
pub struct DelayAdmission {
    target: Duration,
    interval: Duration,
    /// When the sojourn first reached `target` without dropping below it since.
    above_since: Option<Instant>,
    refusing: bool,
}

impl DelayAdmission {
    pub fn new(settings: &OverloadSettings) -> DelayAdmission {
        DelayAdmission {
            target: settings.target,
            interval: settings.interval,
            above_since: None,
            refusing: false,
        }
    }

    /// A message waited `sojourn` before the core took it, at `now`. Returns whether
    /// new INVITEs are refused from now on.
    pub fn on_dequeue(&mut self, sojourn: Duration, now: Instant) -> bool {
        if sojourn < self.target {
            self.above_since = None;
            self.refusing = false;
        } else {
            let since = *self.above_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.interval {
                self.refusing = true;
            }
        }
        self.refusing
    }

    /// Nothing waits: nothing is late.
    pub fn on_idle(&mut self) {
        self.above_since = None;
        self.refusing = false;
    }

    pub fn refusing(&self) -> bool {
        self.refusing
    }
}

/// Which of a shard's queues something waited in ([`ShardAdmission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Messages from the network.
    Received,
    /// The calls' commands (a request or response to send, a call to register).
    Commands,
}

/// A shard's admission: one [`DelayAdmission`] per queue; new INVITEs are refused while
/// either is late.
#[derive(Debug)]
pub struct ShardAdmission {
    received: DelayAdmission,
    commands: DelayAdmission,
}

impl ShardAdmission {
    pub fn new(settings: &OverloadSettings) -> ShardAdmission {
        ShardAdmission {
            received: DelayAdmission::new(settings),
            commands: DelayAdmission::new(settings),
        }
    }

    /// The core takes something that waited `sojourn` in `queue`, at `now` (before
    /// handling it, so a late INVITE is itself refused). Returns whether refusing
    /// changed, and to what.
    pub fn on_dequeue(&mut self, queue: Queue, sojourn: Duration, now: Instant) -> Option<bool> {
        let was = self.refusing();
        self.queue(queue).on_dequeue(sojourn, now);
        self.changed(was)
    }

    /// Nothing waits in `queue`: the next one is on time. Returns as [`Self::on_dequeue`].
    pub fn on_idle(&mut self, queue: Queue) -> Option<bool> {
        let was = self.refusing();
        self.queue(queue).on_idle();
        self.changed(was)
    }

    fn queue(&mut self, queue: Queue) -> &mut DelayAdmission {
        match queue {
            Queue::Received => &mut self.received,
            Queue::Commands => &mut self.commands,
        }
    }

    fn changed(&self, was: bool) -> Option<bool> {
        let refusing = self.refusing();
        (refusing != was).then_some(refusing)
    }

    /// Whether new INVITEs are refused now.
    pub fn refusing(&self) -> bool {
        self.received.refusing() || self.commands.refusing()
    }
}

/// The receivers' side: whether to refuse new INVITEs now, per shard of the core (set
/// by each shard from its own queue: an INVITE waits in the queue of the shard its
/// Call-ID picks, see [`crate::shard`]), and the INVITEs refused lately.
#[derive(Debug)]
pub struct RefusalGate {
    refusing: Box<[AtomicBool]>,
    pub recent: RecentlyRefused,
    /// The new INVITEs queued lately: their retransmissions are not new calls.
    pub queued: RecentlyQueued,
    /// The Retry-After value of every overload 503 (formatted once).
    pub retry_after: String,
}

impl RefusalGate {
    /// A gate for `shards` shards (at least one).
    pub fn new(retry_after: u32, shards: usize) -> RefusalGate {
        RefusalGate {
            refusing: (0..shards.max(1)).map(|_| AtomicBool::new(false)).collect(),
            recent: RecentlyRefused::new(RECENT_REFUSALS),
            queued: RecentlyQueued::new(shards, QUEUED_PER_GENERATION),
            retry_after: retry_after.to_string(),
        }
    }

    /// Shard `shard` refuses (or admits again); a shard past the gate's is ignored.
    pub fn set(&self, shard: usize, refusing: bool) {
        if let Some(flag) = self.refusing.get(shard) {
            flag.store(refusing, Ordering::Relaxed);
        }
    }

    /// Whether any shard refuses new INVITEs now.
    pub fn any_refusing(&self) -> bool {
        self.refusing
            .iter()
            .any(|flag| flag.load(Ordering::Relaxed))
    }

    /// Whether new INVITEs for shard `shard` are refused now.
    pub fn refusing(&self, shard: usize) -> bool {
        self.refusing
            .get(shard)
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    }
}

/// Queued INVITEs a shard remembers per generation ([`RecentlyQueued`]): 16 s at
/// 4,000 new calls a second for one shard; past it, the rest of a generation is not
/// remembered (their retransmissions may be refused as new calls, as they all were
/// before this set). At most about 4 MiB per shard.
pub const QUEUED_PER_GENERATION: usize = 65_536;

/// How long a generation of [`RecentlyQueued`] lasts: an entry is kept for one to two
/// generations, and two cover an INVITE's retransmissions (Timer B, 64·T1 = 32 s).
pub const GENERATION: Duration = Duration::from_secs(16);

/// The new INVITEs the receivers queued lately, by shard, Call-ID and CSeq number
/// (keyed hashes, as in [`RecentlyRefused`]). A caller whose 100 Trying is late or lost
/// retransmits its INVITE; if the shard has meanwhile started refusing, that
/// retransmission must reach the core (which answers it from the call's transaction),
/// not get a 503 with a tag of its own: the caller would count the call failed while
/// the node goes on to connect it (measured past capacity: hundreds of calls per run
/// answered 200 that no caller acknowledged). Two generations per shard, swapped
/// every [`GENERATION`]; a lock per shard, held for one hash-set operation.
#[derive(Debug)]
pub struct RecentlyQueued {
    shards: Box<[Mutex<Generations>]>,
    hasher: RandomState,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Generations {
    current: HashSet<u64>,
    previous: HashSet<u64>,
    /// When `current` began.
    since: Option<Instant>,
}

impl Generations {
    /// Moves on to the generation of `now`.
    fn age(&mut self, now: Instant) {
        let Some(since) = self.since else {
            self.since = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= GENERATION * 2 {
            self.previous.clear();
            self.current.clear();
            self.since = Some(now);
        } else if elapsed >= GENERATION {
            self.previous = std::mem::take(&mut self.current);
            self.since = Some(since + GENERATION);
        }
    }
}

impl RecentlyQueued {
    pub fn new(shards: usize, capacity: usize) -> RecentlyQueued {
        RecentlyQueued {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            capacity,
        }
    }

    fn shard(&self, shard: usize) -> Option<std::sync::MutexGuard<'_, Generations>> {
        self.shards
            .get(shard)
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Remembers the INVITE `cseq` of `call_id`, queued for `shard` at `now`.
    pub fn insert(&self, shard: usize, call_id: &str, cseq: u32, now: Instant) {
        let h = self.hasher.hash_one((call_id, cseq));
        if let Some(mut g) = self.shard(shard) {
            g.age(now);
            if g.current.len() < self.capacity {
                g.current.insert(h);
            }
        }
    }

    /// Whether the INVITE `cseq` of `call_id` was queued for `shard` lately.
    pub fn contains(&self, shard: usize, call_id: &str, cseq: u32, now: Instant) -> bool {
        let h = self.hasher.hash_one((call_id, cseq));
        self.shard(shard).is_some_and(|mut g| {
            g.age(now);
            g.current.contains(&h) || g.previous.contains(&h)
        })
    }
}

/// Refused Call-IDs remembered, about 13 s of refusals at 5,000 a second: most of an
/// INVITE's retransmissions (Timer B, 32 s, with the gaps doubling) fall in it, and one
/// that comes later is merely refused again. 1.5 MiB at most.
pub const RECENT_REFUSALS: usize = 65_536;

/// A bounded set of refused INVITEs, by Call-ID and CSeq number (kept as keyed hashes:
/// the set holds no peer text, and an attacker cannot aim collisions at a key it does
/// not know); the oldest is forgotten when it is full, and all of them once
/// [`FORGET_AFTER`] has passed since the last refusal. While it is empty a lookup costs
/// one atomic load: the INVITEs and ACKs of a node that is not (or no longer) refusing
/// take no lock.
#[derive(Debug)]
pub struct RecentlyRefused {
    inner: Mutex<Recent>,
    hasher: RandomState,
    /// Entries in the set (kept beside it so lookups can skip an empty set).
    len: AtomicUsize,
}

#[derive(Debug)]
struct Recent {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    capacity: usize,
    /// When the last refusal was remembered.
    last: Option<Instant>,
}

/// Refusals are forgotten this long after the last one: an INVITE's retransmissions
/// stop by then (Timer B, 64·T1), so nothing more repeats them.
pub const FORGET_AFTER: Duration = Duration::from_secs(32);

impl RecentlyRefused {
    pub fn new(capacity: usize) -> RecentlyRefused {
        RecentlyRefused {
            inner: Mutex::new(Recent {
                order: VecDeque::new(),
                set: HashSet::new(),
                capacity: capacity.max(1),
                last: None,
            }),
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
        }
    }

    /// Remembers the INVITE `cseq` of `call_id` as refused at `now`.
    pub fn insert(&self, call_id: &str, cseq: u32, now: Instant) {
        let h = self.hasher.hash_one((call_id, cseq));
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        r.last = Some(now);
        if !r.set.insert(h) {
            return;
        }
        r.order.push_back(h);
        if r.order.len() > r.capacity {
            if let Some(old) = r.order.pop_front() {
                r.set.remove(&old);
            }
        }
        self.len.store(r.set.len(), Ordering::Relaxed);
    }

    /// Whether the INVITE `cseq` of `call_id` (or its ACK) was refused lately, as of
    /// `now`. A new INVITE of the same call (a retry, a higher CSeq) is not.
    pub fn contains(&self, call_id: &str, cseq: u32, now: Instant) -> bool {
        if self.is_empty() {
            return false;
        }
        let h = self.hasher.hash_one((call_id, cseq));
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if r.last
            .is_some_and(|last| now.saturating_duration_since(last) >= FORGET_AFTER)
        {
            // The overload is long over: empty again, lookups skip the lock.
            r.set.clear();
            r.order.clear();
            self.len.store(0, Ordering::Relaxed);
            return false;
        }
        r.set.contains(&h)
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn refuses_only_when_the_delay_lasts() {
        // Each row: (ms since start, sojourn ms) → refusing after it.
        let table: &[(u64, u64, bool)] = &[
            (0, 1, false),
            (10, 80, false),  // above target: the clock starts
            (60, 90, false),  // 50 ms above: a burst so far
            (109, 70, false), // 99 ms
            (110, 60, true),  // 100 ms above: refusing
            (150, 200, true),
            (160, 49, false), // below target: admitting again
            (170, 60, false), // the clock starts over
            (269, 60, false),
            (270, 55, true),
        ];
        let mut a = DelayAdmission::new(&OverloadSettings::default());
        let t0 = Instant::now();
        for &(at, sojourn, want) in table {
            let got = a.on_dequeue(ms(sojourn), t0 + ms(at));
            assert_eq!(got, want, "at {at} ms, sojourn {sojourn} ms");
            assert_eq!(a.refusing(), want);
        }
    }

    #[test]
    fn either_queue_late_refuses_and_each_is_judged_alone() {
        use Queue::{Commands as C, Received as R};
        // Each row: (ms since start, queue, sojourn ms, idle after) → refusing after it.
        let table: &[(u64, Queue, u64, bool, bool)] = &[
            (0, C, 80, false, false),   // commands late: the clock starts
            (50, R, 5, false, false),   // a punctual message does not reset the commands' clock
            (100, C, 90, false, true),  // 100 ms late: refusing
            (110, R, 2, true, true),    // received on time, even idle: still refusing
            (120, C, 30, false, false), // a punctual command admits again
            (130, R, 60, false, false), // now the received queue is late...
            (180, C, 1, true, false),   // ...and idle commands do not reset it
            (230, R, 60, false, true),
            (240, R, 70, true, false), // an idle queue is on time
        ];
        let mut a = ShardAdmission::new(&OverloadSettings::default());
        let t0 = Instant::now();
        let mut refusing = false;
        for &(at, queue, sojourn, idle, want) in table {
            let mut changed = a.on_dequeue(queue, ms(sojourn), t0 + ms(at));
            if idle {
                changed = match a.on_idle(queue) {
                    None => changed,
                    // Flipped back by the idle queue: no change in all.
                    Some(now) => (now != refusing).then_some(now),
                };
            }
            assert_eq!(a.refusing(), want, "at {at} ms, {queue:?} {sojourn} ms");
            // A change is reported exactly when refusing flips.
            assert_eq!(changed, (want != refusing).then_some(want), "at {at} ms");
            refusing = want;
        }
    }

    #[test]
    fn queued_invites_are_remembered_for_one_to_two_generations() {
        let q = RecentlyQueued::new(2, 3);
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        q.insert(0, "a", 1, s(0));
        q.insert(0, "b", 1, s(10));
        // Each row: (seconds, shard, Call-ID, CSeq) → remembered.
        let rows: &[(u64, usize, &str, u32, bool)] = &[
            (1, 0, "a", 1, true),
            (1, 0, "a", 2, false), // a new transaction of the same call
            (1, 1, "a", 1, false), // another shard's
            (17, 0, "a", 1, true), // the previous generation still counts
            (17, 0, "b", 1, true),
            (33, 0, "a", 1, false), // two generations on: forgotten
            (33, 0, "b", 1, false),
        ];
        for &(at, shard, call_id, cseq, want) in rows {
            assert_eq!(
                q.contains(shard, call_id, cseq, s(at)),
                want,
                "{at} s {shard} {call_id} {cseq}"
            );
        }
        // Idle for long: everything is forgotten at once.
        q.insert(0, "c", 1, s(40));
        assert!(!q.contains(0, "c", 1, s(100)));
        // Bounded: past capacity a generation remembers no more.
        for i in 0..5 {
            q.insert(1, &format!("x{i}"), 1, s(100));
        }
        let kept = (0..5)
            .filter(|i| q.contains(1, &format!("x{i}"), 1, s(100)))
            .count();
        assert_eq!(kept, 3);
        // A shard past the gate's is ignored.
        q.insert(9, "z", 1, s(100));
        assert!(!q.contains(9, "z", 1, s(100)));
    }

    #[test]
    fn an_empty_queue_admits_again() {
        let mut a = DelayAdmission::new(&OverloadSettings::default());
        let t0 = Instant::now();
        a.on_dequeue(ms(100), t0);
        assert!(a.on_dequeue(ms(100), t0 + ms(100)));
        a.on_idle();
        assert!(!a.refusing());
        // And the next late message starts the clock afresh.
        assert!(!a.on_dequeue(ms(100), t0 + ms(150)));
    }

    #[test]
    fn remembers_a_bounded_number_of_refusals() {
        let r = RecentlyRefused::new(3);
        let t0 = Instant::now();
        for id in ["a", "b", "c", "a"] {
            r.insert(id, 1, t0);
        }
        assert_eq!(r.len(), 3, "a repeated INVITE is kept once");
        assert!(!r.contains("b", 2, t0), "a retry with a higher CSeq is new");
        r.insert("d", 1, t0);
        assert!(!r.contains("a", 1, t0), "the oldest is forgotten");
        assert!(r.contains("b", 1, t0) && r.contains("c", 1, t0) && r.contains("d", 1, t0));
        assert_eq!(r.len(), 3);
    }

    /// Refusals are forgotten FORGET_AFTER after the last one, so a node that was
    /// overloaded once takes no lock again for every INVITE and ACK.
    #[test]
    fn refusals_are_forgotten_once_the_overload_is_long_over() {
        let r = RecentlyRefused::new(8);
        let t0 = Instant::now();
        r.insert("a", 1, t0);
        r.insert("b", 1, t0 + ms(10_000)); // the last refusal
                                           // Each row: (ms after t0, Call-ID) → still remembered.
        for (at, id, want) in [
            (20_000, "a", true),
            (41_999, "a", true),
            (42_000, "b", false), // 32 s after the last refusal
            (42_001, "b", false),
        ] {
            assert_eq!(r.contains(id, 1, t0 + ms(at)), want, "{id} at {at} ms");
        }
        assert!(r.is_empty(), "emptied: lookups skip the lock again");
    }

    #[test]
    fn the_gate_is_shared_state_per_shard() {
        let g = RefusalGate::new(5, 2);
        assert!(!g.refusing(0) && !g.refusing(1));
        g.set(1, true);
        assert!(g.refusing(1), "the late shard refuses");
        assert!(!g.refusing(0), "the other one admits");
        g.set(7, true);
        assert!(!g.refusing(7), "no such shard: nothing refused, no panic");
        g.set(1, false);
        assert!(!g.refusing(1));
        assert!(g.recent.is_empty());
    }
}
