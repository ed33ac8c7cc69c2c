//! How a call runs: one tokio task per call, its state owned by the task, its messages
//! (SIP events, media events, timers) taken from a small inbox. This replaces a ractor
//! actor per call: ractor gives every actor two unbounded channels whose first 32-slot
//! blocks alone were 4.4 KiB per call (measured with heaptrack), more than half of a
//! held call's memory; the inbox here allocates only when a message is queued. The
//! node's call table (`supervisor::Calls`) hears how a call task ended ([`Exit`]),
//! panics included, so a failed call is still answered and logged.
//! The inbox is bounded for what arrives from the network ([`CallRef::deliver`]): a
//! peer flooding one dialog cannot grow a call without limit (the transaction layer has
//! already absorbed retransmissions; what is dropped here the sender retransmits).

use super::CallMsg;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Messages a call may have waiting before [`CallRef::deliver`] drops more.
pub const INBOX_LIMIT: usize = 64;
/// The same for what ends the call (a BYE, a CANCEL): room of its own past a flood
/// of other requests, so that the call's end still gets in (one handled, the rest
/// find the call over).
pub const END_LIMIT: usize = 2 * INBOX_LIMIT;

#[derive(Default)]
struct Inbox {
    queue: Mutex<VecDeque<CallMsg>>,
    wake: tokio::sync::Notify,
    /// Told to stop (the supervisor's max-call sweep), or the task has ended.
    stopped: AtomicBool,
    /// Messages waiting in every call's inbox, and network messages dropped at the bound.
    waiting: Gauge,
    dropped: Counter,
}

/// A handle to a running call: what others use to send it messages.
#[derive(Clone, Default)]
pub struct CallRef(Arc<Inbox>);

impl Drop for Inbox {
    fn drop(&mut self) {
        let left = self.queue.get_mut().map(|q| q.len()).unwrap_or(0);
        self.waiting.dec_by(left as i64);
    }
}

/// A message could not be delivered: the call has ended.
#[derive(Debug)]
pub struct Gone;

/// A message from the network the inbox did not take, given back.
pub enum NotQueued {
    Full(CallMsg),
    Gone(CallMsg),
}

impl std::fmt::Debug for NotQueued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotQueued::Full(_) => "the call's inbox is full",
            NotQueued::Gone(_) => "the call has ended",
        })
    }
}

impl CallRef {
    /// A call whose waiting messages count in `waiting` and drops in `dropped`.
    pub fn new(waiting: Gauge, dropped: Counter) -> CallRef {
        CallRef(Arc::new(Inbox {
            queue: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            stopped: AtomicBool::new(false),
            waiting,
            dropped,
        }))
    }

    /// Queues a message of the node's own (a timer, a media event, a line).
    pub fn send_message(&self, msg: CallMsg) -> Result<(), Gone> {
        self.push(msg, usize::MAX).map_err(|_| Gone)
    }

    /// Queues a message from the network unless the inbox holds `limit` already
    /// ([`INBOX_LIMIT`], [`END_LIMIT`]); a message not queued comes back (counted when
    /// the inbox was full).
    pub fn deliver(&self, msg: CallMsg, limit: usize) -> Result<(), NotQueued> {
        self.push(msg, limit)
    }

    fn push(&self, msg: CallMsg, limit: usize) -> Result<(), NotQueued> {
        if self.0.stopped.load(Ordering::Acquire) {
            return Err(NotQueued::Gone(msg));
        }
        {
            let mut queue = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
            // Again under the lock: a message queued after `close` took what was left
            // would be neither handled nor given back.
            if self.0.stopped.load(Ordering::Acquire) {
                return Err(NotQueued::Gone(msg));
            }
            if queue.len() >= limit {
                self.0.dropped.inc();
                // One line a second at most: a peer can fill inboxes at will.
                static SAID: tsunagu_cluster::net::Throttle = tsunagu_cluster::net::Throttle::new();
                if let Some(more) = SAID.allow(std::time::Instant::now()) {
                    tracing::warn!(more, "call inbox full; message from the network refused");
                }
                return Err(NotQueued::Full(msg));
            }
            queue.push_back(msg);
        }
        self.0.waiting.inc();
        self.0.wake.notify_one();
        Ok(())
    }

    /// Moves the timers due at `now` into the inbox, behind the messages that came
    /// before them, as when each timer was a task of its own: first come, first
    /// handled, and a peer keeping the inbox full cannot hold a timer back (timers are
    /// the node's own messages, never dropped at the bound).
    pub(super) fn queue_due(&self, timers: &mut super::timers::Timers, now: Instant) {
        while let Some(due) = timers.pop_due(now) {
            let _ = self.send_message(due);
        }
    }

    /// Test hook: queues `msgs` at once (under one lock), so that the call finds them
    /// all waiting when it next runs.
    #[cfg(test)]
    pub(crate) fn send_all(&self, msgs: Vec<CallMsg>) {
        let mut queue = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        for msg in msgs {
            self.0.waiting.inc();
            queue.push_back(msg);
        }
        drop(queue);
        self.0.wake.notify_one();
    }

    /// Ends the call's task at its next message (whatever state it is in).
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }

    /// The next message, or None once stopped.
    pub(super) async fn next(&self) -> Option<CallMsg> {
        loop {
            if self.0.stopped.load(Ordering::Acquire) {
                return None;
            }
            let next = self
                .0
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            if next.is_some() {
                self.0.waiting.dec();
                return next;
            }
            self.0.wake.notified().await;
        }
    }

    /// The task ended: nothing more is accepted, and what was queued and not read
    /// comes back, oldest first.
    pub(super) fn close(&self) -> Vec<CallMsg> {
        self.0.stopped.store(true, Ordering::Release);
        let mut queue = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.0.waiting.dec_by(queue.len() as i64);
        queue.drain(..).collect()
    }
}

/// How a call task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The call finished (it wrote its own log record).
    Done,
    /// Stopped from outside before it finished (the max-call sweep).
    Stopped,
    /// It panicked (the message is the panic's).
    Panicked(String),
    /// It could not start.
    Failed(String),
}

/// The text of a caught panic.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn messages_arrive_in_order_and_stop_ends_the_inbox() {
        let me = CallRef::default();
        me.send_message(CallMsg::EndGuard).unwrap();
        me.send_message(CallMsg::QueueTimeout).unwrap();
        assert!(matches!(me.next().await, Some(CallMsg::EndGuard)));
        assert!(matches!(me.next().await, Some(CallMsg::QueueTimeout)));
        me.stop();
        assert!(me.next().await.is_none());
        assert!(
            me.send_message(CallMsg::EndGuard).is_err(),
            "nothing after the end"
        );
        assert_eq!(panic_text(&"boom"), "boom");
    }

    #[tokio::test]
    async fn a_due_timer_waits_behind_earlier_messages_even_in_a_full_inbox() {
        let me = CallRef::default();
        for _ in 0..INBOX_LIMIT {
            me.deliver(CallMsg::EndGuard, INBOX_LIMIT).unwrap();
        }
        let t0 = Instant::now();
        let mut timers = super::super::timers::Timers::default();
        timers.at(t0, CallMsg::QueueTimeout);
        timers.at(t0 + Duration::from_secs(1), CallMsg::JudgementTimeout);
        me.queue_due(&mut timers, t0);
        for i in 0..INBOX_LIMIT {
            assert!(
                matches!(me.next().await, Some(CallMsg::EndGuard)),
                "message {i} came before the timer"
            );
        }
        // Bounded: a timer that was not queued leaves nothing to wait for.
        let timer = tokio::time::timeout(Duration::from_secs(5), me.next()).await;
        assert!(
            matches!(timer, Ok(Some(CallMsg::QueueTimeout))),
            "the timer follows them, not dropped at the inbox bound"
        );
        assert_eq!(
            timers.next_due(),
            Some(t0 + Duration::from_secs(1)),
            "a timer not yet due stays"
        );
    }

    #[tokio::test]
    async fn network_messages_are_bounded_and_every_waiting_one_is_counted() {
        let (waiting, dropped) = (Gauge::default(), Counter::default());
        let me = CallRef::new(waiting.clone(), dropped.clone());
        for _ in 0..INBOX_LIMIT {
            me.deliver(CallMsg::EndGuard, INBOX_LIMIT).unwrap();
        }
        assert!(matches!(
            me.deliver(CallMsg::EndGuard, INBOX_LIMIT),
            Err(NotQueued::Full(CallMsg::EndGuard))
        ));
        assert_eq!(dropped.get(), 1, "the 65th is refused, and given back");
        me.deliver(CallMsg::EndGuard, END_LIMIT)
            .expect("a BYE or CANCEL has room past the others");
        me.send_message(CallMsg::QueueTimeout).unwrap();
        assert_eq!(
            waiting.get(),
            INBOX_LIMIT as i64 + 2,
            "the node's own still go in"
        );
        me.next().await.unwrap();
        assert_eq!(waiting.get(), INBOX_LIMIT as i64 + 1);
        let other = CallRef::new(waiting.clone(), dropped.clone());
        other.deliver(CallMsg::EndGuard, INBOX_LIMIT).unwrap();
        let left = me.close();
        assert_eq!(left.len(), INBOX_LIMIT + 1, "what it left comes back");
        assert!(
            matches!(left.last(), Some(CallMsg::QueueTimeout)),
            "oldest first"
        );
        assert_eq!(waiting.get(), 1, "what an ended call left is uncounted");
        drop(other);
        assert_eq!(waiting.get(), 0, "and what a dropped one left");
    }
}
