//! Call queuing's node side (コールキューイング): this node's calls ask for lines and give
//! them back here; the counting and queues are the cluster's line service
//! ([`tsunagu_cluster::lines`]), whose owner of a key may be this node (answered at
//! once) or a peer (answered by message: [`Ask::Pending`], then the call's
//! [`Waiter`] hears the answer). A node alone owns every key.
//!
//! What a call holds or waits for is a [`LineRequest`]: dropping it gives the line back
//! or leaves the queue, so a call that ends or crashes frees what it had.

use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tsunagu_cluster::lines::{Answer, LineService, Output};
use tsunagu_cluster::Cluster;

/// What a call is told when it asks for a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Granted,
    /// Queued at this position (1 = next).
    Queued(u32),
    /// The key's owner is another node: its answer comes to the waiter.
    Pending,
}

/// Something that can be told the owner's answer (a call actor).
pub trait Waiter: Send + Sync {
    /// False if the waiter is gone.
    fn answer(&self, key: &str, answer: Answer) -> bool;
}

struct Inner {
    service: Arc<Mutex<LineService>>,
    cluster: OnceLock<Cluster>,
    /// This node's calls with a request out, by (key, call).
    waiters: Mutex<HashMap<(String, String), Arc<dyn Waiter>>>,
    /// Calls of this node waiting in a queue.
    waiting: Gauge,
}

#[derive(Clone)]
pub struct Lines(Arc<Inner>);

/// A line a call holds or waits for; dropping it gives it back.
pub struct LineRequest {
    lines: Lines,
    pub key: String,
    call: String,
    /// The key's limit (carried in the call's checkpoint, for the node that adopts it).
    pub limit: u32,
    /// The call moved to another node, which adopted the line: drop gives nothing back.
    moved: bool,
}

impl Drop for LineRequest {
    fn drop(&mut self) {
        if self.moved {
            self.lines.forget(&self.key, &self.call);
        } else {
            self.lines.release(&self.key, &self.call);
        }
    }
}

impl LineRequest {
    /// The call went on another node (taken over, handed over): this node forgets the
    /// line without giving it back, since the new node holds it now.
    pub fn moved(mut self) {
        self.moved = true;
    }
}

impl Lines {
    /// The lines of node `name`, counting its waiting calls in `waiting`.
    pub fn new(name: &str, waiting: Gauge) -> Lines {
        Lines(Arc::new(Inner {
            service: Arc::new(Mutex::new(LineService::new(name))),
            cluster: OnceLock::new(),
            waiters: Mutex::default(),
            waiting,
        }))
    }

    /// The line service, for the cluster driver (network messages, view changes).
    pub fn service(&self) -> Arc<Mutex<LineService>> {
        self.0.service.clone()
    }

    /// From now on, requests for keys other nodes own go to them.
    pub fn attach(&self, cluster: Cluster) {
        let _ = self.0.cluster.set(cluster);
    }

    /// Asks for a line of `key` (at most `limit` held cluster-wide) for `call`. The
    /// request is the call's until dropped, whatever the answer.
    pub fn ask(
        &self,
        key: &str,
        call: &str,
        limit: u32,
        waiter: Arc<dyn Waiter>,
    ) -> (LineRequest, Ask) {
        let id = (key.to_string(), call.to_string());
        self.0
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, waiter);
        let out = {
            let mut s = self.0.service.lock().unwrap_or_else(|p| p.into_inner());
            s.acquire(key, call, limit, crate::clock::now_ms());
            self.send_in_order(s.drain())
        };
        let mut ask = Ask::Pending;
        let mut rest = Vec::with_capacity(out.len());
        for o in out {
            match o {
                Output::Local {
                    key: k,
                    call: c,
                    answer,
                } if k == key && c == call => {
                    ask = match answer {
                        Answer::Granted { .. } => Ask::Granted,
                        Answer::Queued { position } => Ask::Queued(position),
                    };
                }
                other => rest.push(other),
            }
        }
        self.dispatch(rest);
        let request = LineRequest {
            lines: self.clone(),
            key: key.to_string(),
            call: call.to_string(),
            limit,
            moved: false,
        };
        (request, ask)
    }

    /// A call taken over (or handed over) that held a line of `key` where it ran
    /// before: it holds it here, counted by the key's owner even over the limit (see
    /// `LineService::adopt`).
    pub fn adopt(&self, key: &str, call: &str, limit: u32) -> LineRequest {
        let out = {
            let mut s = self.0.service.lock().unwrap_or_else(|p| p.into_inner());
            s.adopt(key, call, limit);
            self.send_in_order(s.drain())
        };
        self.dispatch(out);
        LineRequest {
            lines: self.clone(),
            key: key.to_string(),
            call: call.to_string(),
            limit,
            moved: false,
        }
    }

    /// The call is done here: no answer for it is awaited any more.
    fn drop_waiter(&self, key: &str, call: &str) {
        self.0
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(key.to_string(), call.to_string()));
    }

    /// The call moved to another node, which adopted the line: nothing is given back.
    fn forget(&self, key: &str, call: &str) {
        self.drop_waiter(key, call);
        let mut s = self.0.service.lock().unwrap_or_else(|p| p.into_inner());
        s.forget(key, call);
    }

    fn release(&self, key: &str, call: &str) {
        self.drop_waiter(key, call);
        let out = {
            let mut s = self.0.service.lock().unwrap_or_else(|p| p.into_inner());
            s.release(key, call);
            self.send_in_order(s.drain())
        };
        self.dispatch(out);
    }

    /// Sends the messages for peers among `out` at once (called with the service still
    /// locked, so they leave in the order the service produced them: see
    /// `Cluster::send_in_order`); returns the answers for this node's calls.
    fn send_in_order(&self, out: Vec<Output>) -> Vec<Output> {
        match self.0.cluster.get() {
            Some(c) => c.send_in_order(out),
            None => out, // a node outside a cluster: `dispatch` says so
        }
    }

    /// Sends what the service produced: answers to this node's waiting calls, messages
    /// to peers.
    pub fn dispatch(&self, out: Vec<Output>) {
        let mut remote = Vec::new();
        for o in out {
            match o {
                Output::Local { key, call, answer } => self.answer(&key, &call, answer),
                send => remote.push(send),
            }
        }
        if !remote.is_empty() {
            match self.0.cluster.get() {
                Some(c) => c.dispatch(remote),
                None => tracing::error!("line messages for peers on a node outside a cluster"),
            }
        }
        self.count_waiting();
    }

    /// The owner's answer for one of this node's calls.
    pub fn answer(&self, key: &str, call: &str, answer: Answer) {
        let waiter = self
            .0
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(key.to_string(), call.to_string()))
            .cloned();
        if let Some(w) = waiter {
            w.answer(key, answer);
        }
        self.count_waiting();
    }

    fn count_waiting(&self) {
        let n = self
            .0
            .service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting_calls();
        self.0.waiting.set(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    #[derive(Default)]
    struct Heard(StdMutex<Vec<(String, Answer)>>);

    impl Waiter for Heard {
        fn answer(&self, key: &str, answer: Answer) -> bool {
            self.0.lock().unwrap().push((key.to_string(), answer));
            true
        }
    }

    #[test]
    fn a_node_alone_grants_queues_and_passes_lines_on_when_requests_drop() {
        let lines = Lines::new("n1", Gauge::default());
        let w: Vec<Arc<Heard>> = (0..3).map(|_| Arc::new(Heard::default())).collect();
        let (r1, a1) = lines.ask("number:1", "c1", 2, w[0].clone());
        let (r2, a2) = lines.ask("number:1", "c2", 2, w[1].clone());
        let (r3, a3) = lines.ask("number:1", "c3", 2, w[2].clone());
        assert_eq!((a1, a2, a3), (Ask::Granted, Ask::Granted, Ask::Queued(1)));
        assert_eq!(lines.0.waiting.get(), 1);
        drop(r1);
        assert!(matches!(
            w[2].0.lock().unwrap().as_slice(),
            [(k, Answer::Granted { .. })] if k == "number:1"
        ));
        assert_eq!(lines.0.waiting.get(), 0);
        drop((r2, r3));
        assert_eq!(
            lines.service().lock().unwrap().table_counts(),
            (0, 0),
            "everything given back"
        );
    }

    /// A call that moved elsewhere leaves nothing behind here: its line is not given
    /// back (the new node adopted it) and no answer for it is awaited any more.
    #[test]
    fn a_moved_line_is_forgotten_without_a_release() {
        let lines = Lines::new("n1", Gauge::default());
        let w = Arc::new(Heard::default());
        let (moved, a) = lines.ask("number:1", "c1", 1, w.clone());
        assert_eq!(a, Ask::Granted);
        moved.moved();
        assert!(lines.0.waiters.lock().unwrap().is_empty(), "no waiter left");
        assert_eq!(
            lines.service().lock().unwrap().table_counts(),
            (1, 0),
            "still counted: the call holds it on its new node"
        );
    }
}
