//! The line protocol over a simulated network: several [`LineService`]s, messages
//! delivered in random order across pairs but in order within one (as over one
//! session), members killed and joined mid-way. After every step: never more calls
//! holding a key's lines than its limit, across all nodes.

use super::*;
use std::collections::VecDeque;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The wall clock a test starts at (ms since the epoch).
const WALL_MS: i64 = 1_000_000;

struct Net {
    nodes: BTreeMap<String, LineService>,
    queues: BTreeMap<(String, String), VecDeque<LineMsg>>,
    /// Answers local calls got, in order: (node, key, call, answer).
    answers: Vec<(String, String, String, Answer)>,
    limits: BTreeMap<String, u32>,
    rng: Rng,
    /// The time the nodes are told (see `tick`).
    clock: std::time::Instant,
    /// Each node's incarnation (1 unless it restarted: see `join`).
    epochs: BTreeMap<String, u64>,
    /// The wall clock the nodes are told (ms since the epoch), past every test's queue
    /// stamps; `tick` moves it with `clock`.
    wall_ms: i64,
}

impl Net {
    fn new(names: &[&str], seed: u64) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            queues: BTreeMap::new(),
            answers: Vec::new(),
            limits: BTreeMap::new(),
            rng: Rng(seed | 1),
            clock: std::time::Instant::now(),
            epochs: BTreeMap::new(),
            wall_ms: WALL_MS,
        };
        for n in names {
            net.nodes.insert(n.to_string(), LineService::new(n));
            net.epochs.insert(n.to_string(), 1);
        }
        let all = net.up();
        for s in net.nodes.values_mut() {
            s.view(all.clone());
        }
        net.settle();
        net
    }

    /// The live nodes, each in its incarnation: a view.
    fn up(&self) -> Vec<(String, u64)> {
        self.nodes
            .keys()
            .map(|n| (n.clone(), self.epochs.get(n).copied().unwrap_or(1)))
            .collect()
    }

    fn collect(&mut self) {
        for (name, s) in self.nodes.iter_mut() {
            for o in s.drain() {
                match o {
                    Output::Send { to, msg } => self
                        .queues
                        .entry((name.clone(), to))
                        .or_default()
                        .push_back(msg),
                    Output::Local { key, call, answer } => {
                        self.answers.push((name.clone(), key, call, answer))
                    }
                }
            }
        }
    }

    /// Delivers one message of a random non-empty pair; false when all are empty.
    fn step(&mut self) -> bool {
        self.collect();
        let ready: Vec<(String, String)> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        if ready.is_empty() {
            return false;
        }
        let pair = ready[self.rng.below(ready.len())].clone();
        let msg = self.queues.get_mut(&pair).unwrap().pop_front().unwrap();
        if std::env::var("LINES_TRACE").is_ok() {
            eprintln!("{} -> {}: {msg:?}", pair.0, pair.1);
        }
        let sender_up = self.nodes.contains_key(&pair.0);
        let sender_epoch = self.epochs.get(&pair.0).copied().unwrap_or(1);
        if let Some(to) = self.nodes.get_mut(&pair.1).filter(|_| sender_up) {
            // As the driver does: a message from a member not in the view (in this
            // incarnation) is that member's first sign of life (it is up), taken before
            // the message.
            if to.epochs.get(&pair.0) != Some(&sender_epoch) {
                let mut m: Vec<(String, u64)> = to.epochs.clone().into_iter().collect();
                m.retain(|(n, _)| *n != pair.0);
                m.push((pair.0.clone(), sender_epoch));
                to.view(m);
            }
            to.on_message(&pair.0, msg, self.wall_ms);
        }
        self.check();
        true
    }

    fn settle(&mut self) {
        let mut n = 0;
        while self.step() {
            n += 1;
            assert!(n < 100_000, "the protocol does not settle");
        }
        self.collect();
    }

    /// Calls holding a line of `key`, over all live nodes.
    fn holders(&self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for s in self.nodes.values() {
            for ((k, c), r) in &s.requests {
                if k == key && r.state == ReqState::Held {
                    out.push(c.clone());
                }
            }
        }
        out.sort();
        out
    }

    fn check(&self) {
        for (name, s) in &self.nodes {
            assert_eq!(s.entries, s.count_entries(), "{name}: entries counted");
        }
        for (key, limit) in &self.limits {
            let h = self.holders(key);
            assert!(
                h.len() as u32 <= *limit,
                "{key}: {} lines held with a limit of {limit}: {h:?}",
                h.len()
            );
        }
    }

    fn acquire(&mut self, node: &str, key: &str, call: &str, at: i64) {
        let limit = self.limits[key];
        self.nodes
            .get_mut(node)
            .unwrap()
            .acquire(key, call, limit, at);
        self.collect();
        self.check();
    }

    fn release(&mut self, node: &str, key: &str, call: &str) {
        self.nodes.get_mut(node).unwrap().release(key, call);
        self.collect();
        self.check();
    }

    /// Delivers releases waiting for a heartbeat (as the heartbeat would carry them).
    fn heartbeats(&mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in names {
            let owners = self.nodes[&n].lazy_release_owners();
            for o in owners {
                let msgs = self.nodes.get_mut(&n).unwrap().take_lazy_releases(&o);
                self.queues.entry((n.clone(), o)).or_default().extend(msgs);
            }
        }
    }

    /// `name` dies: its state and messages are gone, and the others see it down.
    fn kill(&mut self, name: &str) {
        if std::env::var("LINES_TRACE").is_ok() {
            eprintln!("== kill {name}");
        }
        self.nodes.remove(name);
        self.queues.retain(|(f, t), _| f != name && t != name);
        self.answers.retain(|(n, ..)| n != name);
        let all = self.up();
        for s in self.nodes.values_mut() {
            s.view(all.clone());
        }
    }

    /// `name` joins, as a new incarnation if it was a member before: it knows every
    /// member from the start (the driver seeds its view with the members registered in
    /// the store); the others see it up one at a time, with messages in flight.
    fn join(&mut self, name: &str) {
        if std::env::var("LINES_TRACE").is_ok() {
            eprintln!("== join {name}");
        }
        self.nodes.insert(name.to_string(), LineService::new(name));
        *self.epochs.entry(name.to_string()).or_insert(0) += 1;
        let all = self.up();
        self.nodes.get_mut(name).unwrap().view(all.clone());
        let names: Vec<String> = self.nodes.keys().filter(|n| *n != name).cloned().collect();
        for n in names {
            self.nodes.get_mut(&n).unwrap().view(all.clone());
            for _ in 0..3 {
                self.step();
            }
        }
    }

    /// `name` restarts under the same name: its state and messages are gone, and a new
    /// incarnation with no calls joins as in [`Net::join`] (a member that was killed
    /// first comes back so too).
    fn restart(&mut self, name: &str) {
        self.nodes.remove(name);
        self.queues.retain(|(f, t), _| f != name && t != name);
        self.answers.retain(|(n, ..)| n != name);
        self.join(name);
    }

    /// Delivers every message queued from `from` to `to`, in order, and nothing else.
    fn deliver(&mut self, from: &str, to: &str) {
        self.collect();
        let q = self
            .queues
            .remove(&(from.to_string(), to.to_string()))
            .unwrap_or_default();
        for msg in q {
            let now = self.wall_ms;
            self.nodes.get_mut(to).unwrap().on_message(from, msg, now);
        }
        self.collect();
        self.check();
    }

    /// Time passes by `by`, and every node hears it (as from the driver's timer).
    fn tick(&mut self, by: std::time::Duration) {
        self.clock += by;
        self.wall_ms += i64::try_from(by.as_millis()).unwrap();
        for s in self.nodes.values_mut() {
            s.expire_reservations(self.clock);
        }
        self.collect();
        self.settle();
    }

    /// Time passes past every reservation (see `RESERVED_FOR`): the first tick sets
    /// their deadlines, the second finds them lapsed.
    fn lapse_reservations(&mut self) {
        self.tick(std::time::Duration::ZERO);
        self.tick(RESERVED_FOR);
    }

    fn granted(&self) -> Vec<String> {
        self.answers
            .iter()
            .filter(|(.., a)| matches!(a, Answer::Granted { .. }))
            .map(|(_, _, c, _)| c.clone())
            .collect()
    }
}

/// A key owned by `owner` among `members`.
fn key_owned_by(owner_name: &str, members: &[&str]) -> String {
    (0..)
        .map(|i| format!("number:05{i:08}"))
        .find(|k| owner(k, members.iter().copied()) == Some(owner_name))
        .unwrap()
}

#[test]
fn one_node_grants_up_to_the_limit_and_queues_the_rest_in_order() {
    let mut net = Net::new(&["a"], 1);
    net.limits.insert("k".into(), 2);
    for (i, c) in ["c1", "c2", "c3", "c4"].iter().enumerate() {
        net.acquire("a", "k", c, 100 + i as i64);
    }
    net.settle();
    assert_eq!(net.granted(), vec!["c1", "c2"]);
    let queued: Vec<(String, u32)> = net
        .answers
        .iter()
        .filter_map(|(_, _, c, a)| match a {
            Answer::Queued { position } => Some((c.clone(), *position)),
            _ => None,
        })
        .collect();
    assert_eq!(queued, vec![("c3".into(), 1), ("c4".into(), 2)]);
    net.release("a", "k", "c2");
    net.settle();
    assert_eq!(net.granted(), vec!["c1", "c2", "c3"]);
    // A waiter that gives up leaves the queue; the next line skips it.
    net.release("a", "k", "c4");
    net.release("a", "k", "c1");
    net.settle();
    assert_eq!(net.holders("k"), vec!["c3"]);
}

#[test]
fn callers_on_three_nodes_share_one_limit_first_come_first_served() {
    for seed in 1..40 {
        let members = ["a", "b", "c"];
        let mut net = Net::new(&members, seed);
        let key = key_owned_by("b", &members);
        net.limits.insert(key.clone(), 2);
        // Four callers, one per node and a second on a, in this order of arrival.
        let calls = [
            ("a", "c1", 10),
            ("c", "c2", 20),
            ("b", "c3", 30),
            ("a", "c4", 40),
        ];
        for (node, call, at) in calls {
            net.acquire(node, &key, call, at);
            net.settle();
        }
        assert_eq!(net.holders(&key), vec!["c1", "c2"], "seed {seed}");
        net.release("a", &key, "c1");
        net.heartbeats();
        net.settle();
        assert_eq!(
            net.holders(&key),
            vec!["c2", "c3"],
            "seed {seed}: c3 came first"
        );
        net.release("c", &key, "c2");
        net.heartbeats();
        net.settle();
        assert_eq!(net.holders(&key), vec!["c3", "c4"], "seed {seed}");
    }
}

#[test]
fn uncontended_lines_come_back_with_the_heartbeat() {
    let members = ["a", "b"];
    let mut net = Net::new(&members, 7);
    let key = key_owned_by("b", &members);
    net.limits.insert(key.clone(), 5);
    net.acquire("a", &key, "c1", 1);
    net.settle();
    net.release("a", &key, "c1");
    net.settle();
    assert_eq!(
        net.nodes["b"].table_counts(),
        (1, 0),
        "not sent yet: it rides on the next heartbeat"
    );
    net.heartbeats();
    net.settle();
    assert_eq!(net.nodes["b"].table_counts(), (0, 0));
}

#[test]
fn the_queue_goes_on_from_a_new_owner_when_the_owner_dies() {
    let seeds: Vec<u64> = match std::env::var("LINES_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => (1..60).collect(),
    };
    for seed in seeds {
        let members = ["a", "b", "c"];
        let mut net = Net::new(&members, seed);
        let key = key_owned_by("b", &members);
        net.limits.insert(key.clone(), 2);
        let calls = [
            ("a", "c1", 10),
            ("c", "c2", 20),
            ("a", "c3", 30),
            ("c", "c4", 40),
            ("a", "c5", 50),
        ];
        for (node, call, at) in calls {
            net.acquire(node, &key, call, at);
            net.settle();
        }
        assert_eq!(net.holders(&key).len(), 2, "seed {seed}");
        // The owner dies with messages in flight (a release among them).
        net.release("a", &key, "c1");
        net.step();
        net.kill("b");
        net.heartbeats();
        net.settle();
        let h = net.holders(&key);
        assert_eq!(
            h.len(),
            2,
            "seed {seed}: the freed line was passed on: {h:?}"
        );
        // c3 waited longest (c1 released): it has a line before c4 and c5.
        assert!(h.contains(&"c3".to_string()), "seed {seed}: {h:?}");
        // And the queue goes on in arrival order.
        let next_release = h.iter().find(|c| *c != "c3").unwrap().clone();
        let node = if ["c2", "c4"].contains(&next_release.as_str()) {
            "c"
        } else {
            "a"
        };
        net.release(node, &key, &next_release);
        net.heartbeats();
        net.settle();
        let h2 = net.holders(&key);
        assert_eq!(h2.len(), 2, "seed {seed}: {h2:?}");
    }
}

#[test]
fn a_node_joining_as_the_owner_takes_the_table_over_without_granting_twice() {
    let seeds: Vec<u64> = match std::env::var("LINES_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => (1..80).collect(),
    };
    for seed in seeds {
        let mut net = Net::new(&["a", "b"], seed);
        let key = key_owned_by("c", &["a", "b", "c"]);
        net.limits.insert(key.clone(), 2);
        net.acquire("a", &key, "c1", 10);
        net.acquire("b", &key, "c2", 20);
        net.acquire("a", &key, "c3", 30);
        // c joins while requests and answers are in flight.
        net.join("c");
        net.acquire("b", &key, "c4", 40);
        net.release("b", &key, "c2");
        net.settle();
        net.heartbeats();
        net.settle();
        let h = net.holders(&key);
        assert_eq!(h.len(), 2, "seed {seed}: {h:?}");
        assert!(
            h.contains(&"c1".to_string()) && h.contains(&"c3".to_string()),
            "seed {seed}: {h:?}"
        );
        net.release("a", &key, "c1");
        net.heartbeats();
        net.settle();
        assert_eq!(net.holders(&key), vec!["c3", "c4"], "seed {seed}");
    }
}

#[test]
fn a_cancelled_request_gives_its_line_back_when_the_answer_comes() {
    let members = ["a", "b"];
    let mut net = Net::new(&members, 3);
    let key = key_owned_by("b", &members);
    net.limits.insert(key.clone(), 1);
    net.acquire("a", &key, "c1", 1);
    net.release("a", &key, "c1"); // before the answer
    net.acquire("a", &key, "c2", 2);
    net.settle();
    assert_eq!(net.holders(&key), vec!["c2"]);
    assert!(
        net.answers.iter().all(|(_, _, c, _)| c != "c1"),
        "c1 is never told"
    );
}

/// Random requests, releases, deaths, joins and restarts with messages in flight: never more
/// holders than the limit, and once things settle no caller waits while a line is free
/// and no line is left counted after every call gave its line back.
#[test]
fn chaos_never_grants_more_than_the_limit_and_leaks_nothing() {
    let seeds: Vec<u64> = match std::env::var("LINES_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => (1..120).collect(),
    };
    for seed in seeds {
        let mut net = Net::new(&["a", "b", "c"], seed);
        let keys = ["number:0501", "number:0502", "advertiser:x"];
        for (k, limit) in keys.iter().zip([2, 1, 3]) {
            net.limits.insert(k.to_string(), limit);
        }
        let mut next_call = 0;
        let mut joined = 0;
        let mut restarted = 0;
        let mut calls: Vec<(String, String, String)> = Vec::new(); // (node, key, call)
        for t in 0..300i64 {
            let live: Vec<String> = net.nodes.keys().cloned().collect();
            match net.rng.below(20) {
                0..=7 => {
                    let node = live[net.rng.below(live.len())].clone();
                    let key = keys[net.rng.below(keys.len())];
                    next_call += 1;
                    let call = format!("c{next_call}");
                    net.acquire(&node, key, &call, t);
                    calls.push((node, key.to_string(), call));
                }
                8..=12 if !calls.is_empty() => {
                    let i = net.rng.below(calls.len());
                    let (node, key, call) = calls.remove(i);
                    if net.nodes.contains_key(&node) {
                        net.release(&node, &key, &call);
                    }
                }
                13 => net.heartbeats(),
                14 if live.len() > 2 => {
                    let victim = live[net.rng.below(live.len())].clone();
                    net.kill(&victim);
                    calls.retain(|(n, ..)| *n != victim);
                }
                15 if joined < 3 => {
                    joined += 1;
                    net.join(&format!("j{joined}"));
                }
                // A member restarts under its name: its calls are gone with it.
                16 if restarted < 2 => {
                    restarted += 1;
                    let victim = live[net.rng.below(live.len())].clone();
                    net.restart(&victim);
                    calls.retain(|(n, ..)| *n != victim);
                }
                _ => {
                    for _ in 0..net.rng.below(6) {
                        net.step();
                    }
                }
            }
        }
        net.heartbeats();
        net.settle();
        net.heartbeats();
        net.settle();
        // The killed members' calls were never taken over: their lines come free.
        net.lapse_reservations();
        for key in keys {
            let held = net.holders(key).len() as u32;
            let waiting: usize = net
                .nodes
                .values()
                .flat_map(|s| s.requests.iter())
                .filter(|((k, _), r)| k == key && r.state != ReqState::Held)
                .count();
            if !(held == net.limits[key] || waiting == 0) {
                for (name, s) in &net.nodes {
                    eprintln!(
                        "{name}: members {:?} rebuilding {} table {:?}",
                        s.members,
                        s.rebuilding(),
                        s.tables.get(key).map(|t| (&t.held, &t.waiting))
                    );
                    for ((k, c), r) in &s.requests {
                        if k == key {
                            eprintln!("   {c}: {r:?}");
                        }
                    }
                }
            }
            assert!(
                held == net.limits[key] || waiting == 0,
                "seed {seed}: {key} has {held} of {} lines held and {waiting} callers waiting",
                net.limits[key]
            );
        }
        for (node, key, call) in calls {
            net.release(&node, &key, &call);
        }
        net.heartbeats();
        net.settle();
        net.heartbeats();
        net.settle();
        for (name, s) in &net.nodes {
            assert_eq!(
                s.table_counts(),
                (0, 0),
                "seed {seed}: {name} still counts lines"
            );
        }
    }
}

/// A call that held a line on a node that died, taken over by another node, holds it
/// there: the next caller over the limit waits (without the adoption the dead node's
/// line would be free again and one caller too many would be connected).
#[test]
fn a_call_taken_over_keeps_its_line_on_its_new_node() {
    let members = ["a", "b", "c"];
    for owner_node in ["b", "c"] {
        let mut net = Net::new(&members, 7);
        let key = key_owned_by(owner_node, &members);
        net.limits.insert(key.clone(), 2);
        net.acquire("a", &key, "moved", 10);
        net.acquire("c", &key, "stays", 20);
        net.settle();
        assert_eq!(net.holders(&key), ["moved", "stays"]);
        net.kill("a");
        net.settle();
        assert_eq!(net.holders(&key), ["stays"], "a's line went with it");
        // "c" took the call over (the checkpoint says which lines it held).
        net.nodes.get_mut("c").unwrap().adopt(&key, "moved", 2);
        net.collect();
        net.settle();
        assert_eq!(net.holders(&key), ["moved", "stays"], "owner {owner_node}");
        net.acquire("b", &key, "late", 30);
        net.settle();
        assert!(
            !net.granted().contains(&"late".to_string()),
            "owner {owner_node}: the limit holds with the moved call counted"
        );
        // When the moved call ends on its new node, the waiting caller gets the line.
        net.release("c", &key, "moved");
        net.heartbeats();
        net.settle();
        assert_eq!(net.holders(&key), ["late", "stays"], "owner {owner_node}");
    }
}

/// A member dies with calls holding every line of a key while a caller waits: the
/// caller keeps waiting while the calls are taken over (their lines are reserved for
/// them), and gets a line when one of the adopted calls ends. Without the reservation
/// the rebuild counted only the survivors' lines, granted the dead member's to the
/// waiting caller, and the adoptions then made three calls of a limit of two.
#[test]
fn a_dead_members_lines_stay_counted_until_its_calls_are_taken_over() {
    let members = ["a", "b", "c"];
    for owner_node in ["b", "c"] {
        let mut net = Net::new(&members, 13);
        let key = key_owned_by(owner_node, &members);
        net.limits.insert(key.clone(), 2);
        net.acquire("a", &key, "m1", 10);
        net.acquire("a", &key, "m2", 11);
        net.settle();
        net.acquire("b", &key, "waits", 20);
        net.settle();
        assert_eq!(net.holders(&key), ["m1", "m2"]);
        net.kill("a");
        net.settle();
        net.tick(std::time::Duration::from_secs(1));
        assert!(
            !net.granted().contains(&"waits".to_string()),
            "owner {owner_node}: the dead member's lines are still counted"
        );
        assert_eq!(net.nodes[owner_node].reserved_lines(), 2);
        for call in ["m1", "m2"] {
            net.nodes.get_mut("c").unwrap().adopt(&key, call, 2);
        }
        net.collect();
        net.settle();
        assert_eq!(net.holders(&key), ["m1", "m2"], "owner {owner_node}");
        assert_eq!(net.nodes[owner_node].reserved_lines(), 0);
        assert!(!net.granted().contains(&"waits".to_string()));
        net.release("c", &key, "m1");
        net.heartbeats();
        net.settle();
        assert_eq!(net.holders(&key), ["m2", "waits"], "owner {owner_node}");
    }
}

/// A dead member's call that nobody takes over frees its line once its reservation
/// lapses, not before; an owner rebuilding meanwhile keeps the reservation running.
#[test]
fn a_dead_members_line_nobody_takes_over_is_freed_when_its_reservation_lapses() {
    let members = ["a", "b", "c"];
    let mut net = Net::new(&members, 17);
    let key = key_owned_by("b", &members);
    net.limits.insert(key.clone(), 1);
    net.acquire("a", &key, "lost", 10);
    net.settle();
    net.acquire("c", &key, "waits", 20);
    net.settle();
    net.kill("a");
    net.settle();
    net.tick(std::time::Duration::ZERO); // the reservation's deadline is set
    net.tick(RESERVED_FOR - std::time::Duration::from_millis(1));
    assert!(net.holders(&key).is_empty());
    assert!(!net.granted().contains(&"waits".to_string()), "reserved");
    // Another member joins: the rebuild keeps the reservation (on the key's owner now,
    // which may be the newcomer: there the reservation starts again).
    net.join("d");
    net.settle();
    assert!(
        !net.granted().contains(&"waits".to_string()),
        "reserved still"
    );
    net.tick(std::time::Duration::from_millis(1));
    if owner(&key, net.nodes.keys().map(String::as_str)) == Some("b") {
        assert_eq!(net.holders(&key), ["waits"], "lapsed on its deadline");
    }
    net.lapse_reservations();
    assert_eq!(net.holders(&key), ["waits"]);
}

/// Frames lost while a session was down (a cut link, a reconnect): a release the
/// owner never got kept a line counted that nobody held, and the caller waiting for it
/// waited until the next view change; a grant the holder never got left its caller
/// waiting for a line of its own. Rebuilding the tables when the session is back
/// (`reconcile`) puts both right.
#[test]
fn lines_lost_with_a_session_are_put_right_when_it_is_back() {
    let members = ["a", "b", "c"];
    let mut net = Net::new(&members, 19);
    let key = key_owned_by("b", &members);
    net.limits.insert(key.clone(), 1);
    net.acquire("a", &key, "first", 10);
    net.settle();
    net.acquire("c", &key, "second", 20);
    net.settle();
    assert_eq!(net.holders(&key), ["first"]);
    // The release (urgent: someone waits) is lost with the session a-b.
    net.release("a", &key, "first");
    net.queues.remove(&("a".to_string(), "b".to_string()));
    net.settle();
    assert!(net.holders(&key).is_empty());
    assert!(!net.granted().contains(&"second".to_string()), "stuck");
    for s in net.nodes.values_mut() {
        s.reconcile();
    }
    net.collect();
    net.settle();
    assert_eq!(net.holders(&key), ["second"], "the lost release put right");
    // Now a grant is lost: "second" ends, "third" waits on a, and the grant to a is
    // lost on the way.
    net.acquire("a", &key, "third", 30);
    net.settle();
    net.release("c", &key, "second");
    net.collect();
    loop {
        net.collect();
        let to_a = net.queues.get(&("b".to_string(), "a".to_string()));
        if to_a.is_some_and(|q| !q.is_empty()) {
            break;
        }
        assert!(net.step(), "the grant is sent");
    }
    net.queues.remove(&("b".to_string(), "a".to_string()));
    net.settle();
    assert!(net.holders(&key).is_empty(), "the grant was lost");
    for s in net.nodes.values_mut() {
        s.reconcile();
    }
    net.collect();
    net.settle();
    assert_eq!(net.holders(&key), ["third"], "the lost grant put right");
    assert_eq!(net.nodes["b"].table_counts(), (1, 0));
}

/// An owner rebuilding while one member cannot answer holds back what the others send
/// meanwhile, each message once: a request resent every second (`retry`) was held back
/// every time, without bound. A request its call gave up is not resent at all.
#[test]
fn what_waits_for_a_rebuild_is_held_once_and_given_up_requests_are_not_resent() {
    let members = ["a", "b", "c"];
    let mut net = Net::new(&members, 23);
    let key = key_owned_by("b", &members);
    net.limits.insert(key.clone(), 1);
    let all = net.up();
    net.nodes.get_mut("b").unwrap().view(all);
    net.collect();
    // a answers b's snapshot request; c's answer never comes (its link to b is down).
    let deliver = |net: &mut Net, from: &str, to: &str| {
        net.collect();
        let q = net
            .queues
            .remove(&(from.to_string(), to.to_string()))
            .unwrap_or_default();
        for msg in q {
            net.nodes
                .get_mut(to)
                .unwrap()
                .on_message(from, msg, WALL_MS);
        }
        net.collect();
    };
    deliver(&mut net, "b", "a");
    deliver(&mut net, "a", "b");
    assert!(net.nodes["b"].rebuilding());
    net.acquire("a", &key, "x", 10);
    net.acquire("a", &key, "gives_up", 11);
    net.release("a", &key, "gives_up");
    // An adopted line whose call ended at once is still asked for (reported held, no
    // rebuild would answer it), to be given back when the owner answers.
    net.nodes.get_mut("a").unwrap().adopt(&key, "adopted", 1);
    net.release("a", &key, "adopted");
    for _ in 0..5 {
        let a = net.nodes.get_mut("a").unwrap();
        a.retry();
        let sent = a.drain();
        let asked: Vec<&str> = sent
            .iter()
            .filter_map(|o| match o {
                Output::Send {
                    msg: LineMsg::Acquire { call, .. } | LineMsg::Adopt { call, .. },
                    ..
                } => Some(call.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(
            asked.contains(&"x") && asked.contains(&"adopted"),
            "{asked:?}"
        );
        for o in sent {
            if let Output::Send { to, msg } = o {
                net.queues
                    .entry(("a".to_string(), to))
                    .or_default()
                    .push_back(msg);
            }
        }
        deliver(&mut net, "a", "b");
    }
    let held = &net.nodes["b"].rebuild.as_ref().unwrap().held_back;
    let acquires: Vec<&str> = held
        .iter()
        .filter_map(|(_, m)| match m {
            LineMsg::Acquire { call, .. } => Some(call.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(acquires, ["x", "gives_up"], "each once: {held:?}");
    let adopts = held
        .iter()
        .filter(|(_, m)| matches!(m, LineMsg::Adopt { .. }))
        .count();
    assert_eq!(adopts, 1, "{held:?}");
    // c's answer comes: the rebuild ends, x gets the line, the given-up call none.
    deliver(&mut net, "b", "c");
    deliver(&mut net, "c", "b");
    net.settle();
    net.heartbeats();
    net.settle();
    assert_eq!(net.holders(&key), ["x"]);
    assert_eq!(net.nodes["b"].table_counts(), (1, 0));
}

/// A rebuild with the members as they were takes nothing of what members kept of keys
/// they owned before the last view change: it is as old as that change, and a line
/// released to the key's new owner since would come back (and nobody would ever give
/// it back). Not after a reconcile, nor after the new owner's lease lapsed and came
/// back (a review: the resume took the old owner's copy again).
#[test]
fn a_rebuild_with_the_same_members_brings_back_no_line_released_since_the_key_moved() {
    let before = ["a", "b", "c"];
    let after = ["a", "b", "c", "d"];
    let key = (0..)
        .map(|i| format!("number:05{i:08}"))
        .find(|k| {
            owner(k, before.iter().copied()) == Some("b")
                && owner(k, after.iter().copied()) == Some("d")
        })
        .unwrap();
    type Rebuild = fn(&mut Net);
    let rows: [(&str, Rebuild); 2] = [
        ("reconcile", |net| {
            for s in net.nodes.values_mut() {
                s.reconcile();
            }
        }),
        ("resume", |net| {
            let all = net.up();
            let d = net.nodes.get_mut("d").unwrap();
            d.suspend();
            d.resume(all);
        }),
    ];
    for (how, rebuild) in rows {
        let mut net = Net::new(&before, 29);
        net.limits.insert(key.clone(), 1);
        net.acquire("a", &key, "c1", 10);
        net.settle();
        // d joins, every member seeing it once (what a member keeps of the keys it
        // handed over lasts until its next view change).
        net.nodes.insert("d".to_string(), LineService::new("d"));
        let all = net.up();
        for s in net.nodes.values_mut() {
            s.view(all.clone());
        }
        net.collect();
        net.settle();
        assert_eq!(
            net.nodes["d"].table_counts(),
            (1, 0),
            "{how}: d took the key with its line"
        );
        net.release("a", &key, "c1");
        net.heartbeats();
        net.settle();
        assert_eq!(net.nodes["d"].table_counts(), (0, 0), "{how}");
        rebuild(&mut net);
        net.collect();
        net.settle();
        assert_eq!(
            net.nodes["d"].table_counts(),
            (0, 0),
            "{how}: no line came back"
        );
        net.acquire("c", &key, "next", 20);
        net.settle();
        assert_eq!(net.holders(&key), ["next"], "{how}");
    }
}

/// A call handed over by a live node (a drain): the new node adopts the line and the
/// old one forgets it without a release, so the line is neither freed nor counted
/// twice; a rebuild after a view change still counts it once.
#[test]
fn a_handed_over_call_is_counted_once_and_survives_a_rebuild() {
    let members = ["a", "b", "c"];
    let mut net = Net::new(&members, 11);
    let key = key_owned_by("b", &members);
    net.limits.insert(key.clone(), 1);
    net.acquire("a", &key, "moved", 10);
    net.settle();
    net.nodes.get_mut("c").unwrap().adopt(&key, "moved", 1);
    net.nodes.get_mut("a").unwrap().forget(&key, "moved");
    net.collect();
    net.settle();
    assert_eq!(net.holders(&key), ["moved"]);
    net.acquire("a", &key, "next", 20);
    net.settle();
    assert!(!net.granted().contains(&"next".to_string()), "limit 1 held");
    // The owner dies: the new owner rebuilds from snapshots, the adopted line in them.
    net.kill("b");
    net.settle();
    assert_eq!(
        net.holders(&key),
        ["moved"],
        "counted once after the rebuild"
    );
    net.release("c", &key, "moved");
    net.heartbeats();
    net.settle();
    assert_eq!(net.holders(&key), ["next"]);
}

/// An owner that resumes after a suspension (its lease lapsed and came back) rebuilds
/// from every holder's report before granting: a call held on another node keeps
/// counting, and what this node's calls asked meanwhile waits its turn.
#[test]
fn a_resuming_owner_counts_the_lines_held_elsewhere() {
    let mut net = Net::new(&["a", "b"], 7);
    let key = key_owned_by("a", &["a", "b"]);
    net.limits.insert(key.clone(), 1);
    net.acquire("b", &key, "c1", 100);
    net.settle();
    assert_eq!(net.holders(&key), ["c1"]);
    net.nodes.get_mut("a").unwrap().suspend();
    net.acquire("a", &key, "c2", 200);
    let all = net.up();
    net.nodes.get_mut("a").unwrap().resume(all);
    net.settle();
    assert_eq!(net.holders(&key), ["c1"], "b's call still counts");
    assert!(
        net.answers
            .iter()
            .any(|(n, _, c, a)| n == "a" && c == "c2" && matches!(a, Answer::Queued { .. })),
        "{:?}",
        net.answers
    );
    net.release("b", &key, "c1");
    net.settle();
    assert_eq!(net.holders(&key), ["c2"]);
}

/// While suspended an owner grants nothing, not even when the rebuild of a view
/// change completes meanwhile (others may be taking its keys over); on resuming it
/// grants what fits.
#[test]
fn a_suspended_owner_grants_nothing_until_it_resumes() {
    let members = ["a", "b", "c"];
    let mut net = Net::new(&members[..2], 11);
    let key = key_owned_by("a", &members);
    net.limits.insert(key.clone(), 2);
    net.acquire("b", &key, "c1", 100);
    net.settle();
    net.nodes.get_mut("a").unwrap().suspend();
    net.acquire("a", &key, "c2", 200);
    net.join("c");
    net.settle();
    assert_eq!(net.granted(), ["c1"], "nothing granted while suspended");
    let all = net.up();
    net.nodes.get_mut("a").unwrap().resume(all);
    net.settle();
    assert_eq!(net.holders(&key), ["c1", "c2"]);
}

/// A queue position that arrives after the grant it preceded never turns the held
/// line back into a waiting call (the next snapshot would give its line away).
#[test]
fn a_late_queue_position_leaves_a_held_line_held() {
    let mut net = Net::new(&["a", "b"], 3);
    let key = key_owned_by("a", &["a", "b"]);
    net.limits.insert(key.clone(), 1);
    net.acquire("b", &key, "c1", 100);
    net.settle();
    assert_eq!(net.holders(&key), ["c1"]);
    let b = net.nodes.get_mut("b").unwrap();
    b.on_message(
        "a",
        LineMsg::Answer {
            key: key.clone(),
            call: "c1".into(),
            answer: Answer::Queued { position: 1 },
        },
        WALL_MS,
    );
    assert_eq!(b.waiting_calls(), 0);
    assert!(
        b.own_holdings().iter().all(|h| h.held),
        "{:?}",
        b.own_holdings()
    );
    assert!(b.drain().is_empty(), "nothing new for the call");
    assert_eq!(net.holders(&key), ["c1"]);
}

/// A limit lowered while a call holds a line under the old one: a rebuild (a view
/// change) keeps the new limit (it took the highest of the holdings' limits, and
/// granted the queue up to the old one). A limit raised while callers wait fills the
/// queue, and a rebuild keeps that one too.
#[test]
fn a_lowered_limit_survives_a_rebuild_and_a_raised_one_fills_the_queue() {
    let members = ["a", "b", "c"];
    let mut net = Net::new(&members, 5);
    let key = key_owned_by("b", &members);
    net.limits.insert(key.clone(), 10);
    net.acquire("a", &key, "c1", 10);
    net.settle();
    net.limits.insert(key.clone(), 2);
    for (i, call) in ["c2", "c3", "c4", "c5"].into_iter().enumerate() {
        net.acquire("c", &key, call, 20 + i as i64);
        net.settle();
    }
    assert_eq!(net.holders(&key), ["c1", "c2"]);
    // A view change: "d" joins, every owner rebuilds from the snapshots.
    net.nodes.insert("d".into(), LineService::new("d"));
    let all = net.up();
    for s in net.nodes.values_mut() {
        s.view(all.clone());
    }
    net.settle();
    assert_eq!(net.holders(&key), ["c1", "c2"], "still 2 after the rebuild");
    net.nodes.get_mut("a").unwrap().release(&key, "c1");
    net.heartbeats();
    net.settle();
    assert_eq!(net.holders(&key), ["c2", "c3"]);
    // Raised to 4: the next request fills the queue in its order.
    net.limits.insert(key.clone(), 4);
    net.acquire("a", &key, "c6", 40);
    net.settle();
    assert_eq!(net.holders(&key), ["c2", "c3", "c4", "c5"]);
    // And a rebuild keeps the raised limit (the lowest holding's limit, 2, would
    // leave the waiting caller waiting when a line frees).
    net.kill("d");
    net.settle();
    net.nodes.get_mut("c").unwrap().release(&key, "c2");
    net.heartbeats();
    net.settle();
    assert_eq!(net.holders(&key), ["c3", "c4", "c5", "c6"]);
}

/// A call adopted under an old checkpoint's limit (10) does not raise the owner's
/// table's limit (2): when a line frees, the adopted call still counts and the
/// waiting caller waits (it took the adopted call's limit, and the caller got a third
/// line); nor does it in a rebuild, where the adopted line, reported after every
/// request, would be the newest were it given an arrival.
#[test]
fn an_adopted_calls_old_limit_does_not_raise_the_tables() {
    let mut net = Net::new(&["b"], 3);
    let key = "number:1".to_string();
    let b = net.nodes.get_mut("b").unwrap();
    b.acquire(&key, "x1", 2, 1);
    b.acquire(&key, "x2", 2, 2);
    b.acquire(&key, "x3", 2, 3);
    b.acquire(&key, "x4", 2, 4);
    b.adopt(&key, "moved", 10);
    b.release(&key, "x1");
    net.collect();
    net.settle();
    assert_eq!(net.holders(&key), ["moved", "x2"], "x3 waits: 2 lines held");
    // A view change: the key's owner rebuilds from the snapshots.
    net.nodes.insert("c".into(), LineService::new("c"));
    let all = net.up();
    for s in net.nodes.values_mut() {
        s.view(all.clone());
    }
    net.settle();
    net.nodes.get_mut("b").unwrap().release(&key, "x2");
    net.heartbeats();
    net.settle();
    assert_eq!(net.holders(&key), ["moved", "x3"], "x4 waits: 2 lines held");
}

/// A member that restarts under the same name (a new incarnation, with no calls) is no
/// holder of its old incarnation's lines: they stay reserved for their takeover as for
/// a member that left, whether the old incarnation was declared down first or not (a
/// review: members were tracked by name alone, the new incarnation's empty snapshot
/// dropped the old lines, a waiting caller got one, and the takeover made one call too
/// many).
#[test]
fn a_restarted_members_old_lines_stay_reserved_until_taken_over() {
    for down_first in [false, true] {
        let members = ["a", "b"];
        let mut net = Net::new(&members, 31);
        let key = key_owned_by("a", &members);
        net.limits.insert(key.clone(), 1);
        net.acquire("b", &key, "old", 10);
        net.settle();
        net.acquire("a", &key, "waits", 20);
        net.settle();
        if down_first {
            net.kill("b");
            net.settle();
        }
        net.restart("b");
        net.settle();
        net.tick(std::time::Duration::from_secs(1));
        assert!(
            !net.granted().contains(&"waits".to_string()),
            "down first {down_first}: the old incarnation's line is still counted"
        );
        assert_eq!(
            net.nodes["a"].reserved_lines(),
            1,
            "down first {down_first}"
        );
        net.nodes.get_mut("b").unwrap().adopt(&key, "old", 1);
        net.collect();
        net.settle();
        assert_eq!(net.holders(&key), ["old"], "down first {down_first}");
        assert_eq!(
            net.nodes["a"].reserved_lines(),
            0,
            "down first {down_first}"
        );
        net.release("b", &key, "old");
        net.heartbeats();
        net.settle();
        assert_eq!(net.holders(&key), ["waits"], "down first {down_first}");
    }
}

/// A release that reaches a key's new owner while it rebuilds is dropped when it came
/// before its holder's snapshot (reflected in it), and lost when the rebuild starts
/// again (the next snapshot reflects it); the key's old owner, which never saw it,
/// still lists the line as held in what it hands over. The holder's own report decides
/// whether its call still has a line (a review: the old owner's word brought the line
/// back, counted forever, and with a limit of 1 every caller of the number waited
/// until it gave up).
#[test]
fn a_release_reaching_a_rebuilding_owner_does_not_come_back() {
    let before = ["a", "b"];
    let after = ["a", "b", "c"];
    let key = (0..)
        .map(|i| format!("number:05{i:08}"))
        .find(|k| {
            owner(k, before.iter().copied()) == Some("a")
                && owner(k, after.iter().copied()) == Some("c")
        })
        .unwrap();
    // (what happens to the release at c, whether b answered c first)
    let rows = [
        ("before b's snapshot", false),
        ("held back, then the rebuild starts again", true),
    ];
    for (how, answered_first) in rows {
        let mut net = Net::new(&before, 37);
        net.limits.insert(key.clone(), 1);
        net.acquire("b", &key, "gone", 10);
        net.settle();
        net.acquire("a", &key, "waits", 20);
        net.settle();
        // c joins; every member sees it at once, c's snapshot requests not answered.
        net.nodes.insert("c".to_string(), LineService::new("c"));
        let all = net.up();
        for s in net.nodes.values_mut() {
            s.view(all.clone());
        }
        net.collect();
        if answered_first {
            net.deliver("c", "b");
            net.deliver("b", "c");
        }
        // b's call ends: its release goes to c.
        net.release("b", &key, "gone");
        net.heartbeats();
        net.deliver("b", "c");
        if answered_first {
            // c's lease lapses and comes back: its rebuild starts again.
            let c = net.nodes.get_mut("c").unwrap();
            c.suspend();
            c.resume(all.clone());
        }
        net.settle();
        assert_eq!(net.holders(&key), ["waits"], "{how}");
        assert_eq!(net.nodes["c"].table_counts(), (1, 0), "{how}");
    }
}

/// The old owner keeps what it handed over through its next view change while the new
/// owner's rebuild has not ended: a line of a member that died meanwhile stays
/// reserved for its takeover (a review: the copy was dropped at that view change, the
/// line freed for a waiting caller, and the takeover made one call too many).
#[test]
fn a_handed_over_line_survives_a_second_view_change() {
    let before = ["a", "b", "p"];
    let after = ["a", "b", "d", "p"];
    let key = (0..)
        .map(|i| format!("number:05{i:08}"))
        .find(|k| {
            owner(k, before.iter().copied()) == Some("a")
                && owner(k, after.iter().copied()) == Some("d")
        })
        .unwrap();
    let mut net = Net::new(&before, 41);
    net.limits.insert(key.clone(), 1);
    net.acquire("p", &key, "dies", 10);
    net.settle();
    net.acquire("b", &key, "waits", 20);
    net.settle();
    // d joins; before its rebuild ends, p dies.
    net.nodes.insert("d".to_string(), LineService::new("d"));
    let all = net.up();
    for s in net.nodes.values_mut() {
        s.view(all.clone());
    }
    net.collect();
    net.kill("p");
    net.settle();
    net.tick(std::time::Duration::from_secs(1));
    assert!(
        !net.granted().contains(&"waits".to_string()),
        "p's line is still counted"
    );
    assert_eq!(net.nodes["d"].reserved_lines(), 1);
    net.nodes.get_mut("a").unwrap().adopt(&key, "dies", 1);
    net.collect();
    net.settle();
    assert_eq!(net.holders(&key), ["dies"]);
    net.release("a", &key, "dies");
    net.heartbeats();
    net.settle();
    assert_eq!(net.holders(&key), ["waits"]);
}

/// What a peer's messages make an owner keep is bounded (a review: every new key and
/// call was kept, of any id length, and a rebuild held back every distinct message):
/// one key's queue, one member's entries over all keys, an id's length, and what is
/// held back from one member during a rebuild (past which a reconcile follows). A
/// request refused is answered as queued last, so its requester does not ask again.
#[test]
fn what_a_peer_makes_an_owner_keep_is_bounded() {
    let members = ["o", "p", "q"];
    let keys: Vec<String> = (0..)
        .map(|i| format!("number:{i}"))
        .filter(|k| owner(k, members.iter().copied()) == Some("o"))
        .take(MAX_ENTRIES_PER_MEMBER + 10)
        .collect();
    let acquire = |key: &str, call: &str, at: i64| LineMsg::Acquire {
        key: key.to_string(),
        call: call.to_string(),
        limit: 1,
        arrived_ms: at,
    };
    // (what floods, the messages, whether o rebuilds meanwhile)
    type Flood = Box<dyn Fn() -> Vec<LineMsg>>;
    let (k0, k1, k2, k3) = (
        keys[0].clone(),
        keys.clone(),
        keys[0].clone(),
        keys[0].clone(),
    );
    let long = "c".repeat(MAX_ID_LEN + 1);
    let rows: Vec<(&str, Flood, bool)> = vec![
        (
            "one key's queue",
            Box::new(move || {
                (0..MAX_WAITING_PER_KEY + 10)
                    .map(|i| acquire(&k0, &format!("c{i}"), i as i64))
                    .collect()
            }),
            false,
        ),
        (
            "one member's keys",
            Box::new(move || k1.iter().map(|k| acquire(k, "c", 1)).collect()),
            false,
        ),
        (
            "an id's length",
            Box::new(move || vec![acquire(&k2, &long, 1), acquire(&long, "c", 1)]),
            false,
        ),
        (
            "held back while rebuilding",
            Box::new(move || {
                (0..MAX_HELD_BACK_PER_MEMBER + 10)
                    .map(|i| acquire(&k3, &format!("c{i}"), i as i64))
                    .collect()
            }),
            true,
        ),
    ];
    for (what, flood, rebuilding) in rows {
        let mut net = Net::new(&members, 43);
        if rebuilding {
            // o rebuilds: p answers, q does not yet.
            let all = net.up();
            net.nodes.get_mut("o").unwrap().view(all);
            net.deliver("o", "p");
            net.deliver("p", "o");
            net.queues.clear();
        }
        let msgs = flood();
        let sent = msgs.len();
        let o = net.nodes.get_mut("o").unwrap();
        for m in msgs {
            o.on_message("p", m, WALL_MS);
        }
        let answers = o
            .drain()
            .into_iter()
            .filter(|x| {
                matches!(
                    x,
                    Output::Send {
                        msg: LineMsg::Answer { .. },
                        ..
                    }
                )
            })
            .count();
        let kept: usize = o
            .tables
            .values()
            .map(|t| t.held.len() + t.waiting.len())
            .sum();
        match what {
            "one key's queue" => {
                assert_eq!(
                    kept,
                    MAX_WAITING_PER_KEY + 1,
                    "{what}: one held, the rest wait"
                );
                assert_eq!(answers, sent, "{what}: every request answered");
            }
            "one member's keys" => {
                assert_eq!(kept, MAX_ENTRIES_PER_MEMBER, "{what}");
                assert_eq!(answers, sent, "{what}: every request answered");
            }
            "an id's length" => assert_eq!((kept, answers), (0, 0), "{what}"),
            _ => {
                let r = o.rebuild.as_ref().unwrap();
                assert_eq!(r.held_back.len(), MAX_HELD_BACK_PER_MEMBER, "{what}");
                assert_eq!(r.held_back_seen.len(), MAX_HELD_BACK_PER_MEMBER, "{what}");
                // q answers: the rebuild ends, and a reconcile follows at once.
                net.deliver("o", "q");
                net.deliver("q", "o");
                assert!(net.nodes["o"].rebuilding(), "{what}: a reconcile follows");
            }
        }
    }
}

/// A peer's queue stamp is its wall clock's, taken on trust: one from long ago always
/// jumped the queue, one from the future always stayed last (a review). The owner takes
/// it as no earlier than the longest wait before its own clock and no later than its
/// own clock, so a wrong or hostile clock jumps the queue by at most that.
#[test]
fn a_peers_queue_stamp_is_taken_within_the_owners_clock() {
    let members = ["o", "p", "q"];
    let key = key_owned_by("o", &members);
    let wait = i64::try_from(MAX_WAIT.as_millis()).unwrap();
    let acquire = |call: &str, arrived_ms: i64| LineMsg::Acquire {
        key: key.clone(),
        call: call.to_string(),
        limit: 1,
        arrived_ms,
    };
    // (the peer's stamp, the owner's clock when it comes)
    let rows = [
        (
            "from before anyone could wait",
            i64::MIN,
            WALL_MS + wait + 2,
        ),
        ("from the future", i64::MAX, WALL_MS + 10),
    ];
    for (what, stamp, at) in rows {
        let mut net = Net::new(&members, 47);
        let o = net.nodes.get_mut("o").unwrap();
        o.on_message("q", acquire("holds", WALL_MS), WALL_MS);
        o.on_message("q", acquire("honest", WALL_MS + 1), WALL_MS + 1);
        o.on_message("p", acquire("stamped", stamp), at);
        // A caller that came later by the owner's clock stands behind both.
        o.on_message("q", acquire("later", at + 1), at + 1);
        o.drain();
        let order: Vec<&str> = o.tables[&key]
            .waiting
            .keys()
            .map(|(_, c)| c.as_str())
            .collect();
        assert_eq!(order, ["honest", "stamped", "later"], "{what}");
    }
}

/// A key that comes back to its owner within the reservation's time takes back what
/// that owner kept of it: p dies holding the only line of a key b owns (reserved for
/// the takeover), e joins and takes the key over, and dies at once: the key is b's
/// again, p's line still reserved, the waiting caller not granted until the line is
/// adopted and released. b dropped its copy, granted the line and the adoption went
/// over the limit (a review).
#[test]
fn a_key_that_comes_back_keeps_the_lines_reserved_in_it() {
    let key = (0..)
        .map(|i| format!("number:05{i:08}"))
        .find(|k| {
            owner(k, ["a", "b", "p"]) == Some("b")
                && owner(k, ["a", "b"]) == Some("b")
                && owner(k, ["a", "b", "e"]) == Some("e")
        })
        .unwrap();
    let mut net = Net::new(&["a", "b", "p"], 43);
    net.limits.insert(key.clone(), 1);
    net.acquire("p", &key, "dies", 10);
    net.settle();
    net.acquire("a", &key, "waits", 20);
    net.settle();
    net.kill("p");
    net.settle();
    assert_eq!(net.nodes["b"].reserved_lines(), 1);
    net.join("e");
    net.settle();
    net.kill("e");
    net.settle();
    net.tick(std::time::Duration::from_secs(1));
    assert!(
        !net.granted().contains(&"waits".to_string()),
        "p's line is still counted"
    );
    assert_eq!(net.nodes["b"].reserved_lines(), 1);
    net.nodes.get_mut("a").unwrap().adopt(&key, "dies", 1);
    net.collect();
    net.settle();
    assert_eq!(net.holders(&key), ["dies"]);
    net.release("a", &key, "dies");
    net.heartbeats();
    net.settle();
    assert_eq!(net.holders(&key), ["waits"]);
}

/// This node's own calls are never refused for a bound, however many it has: past
/// the per-member bound, a single node's callers were answered as queued last and
/// waited out their longest wait while lines were free (a review).
#[test]
fn a_nodes_own_calls_are_never_refused_for_a_bound() {
    let mut net = Net::new(&["a"], 47);
    let key = "number:0500000001".to_string();
    net.limits.insert(key.clone(), u32::MAX);
    let s = net.nodes.get_mut("a").unwrap();
    s.entries.insert("a".to_string(), MAX_ENTRIES_PER_MEMBER);
    s.acquire(&key, "one_more", u32::MAX, 10);
    net.collect();
    assert_eq!(net.granted(), ["one_more"]);
}
