//! Calls survive the node that carries them (SPEC 6): three real nodes, hundreds of
//! answered calls with RTP both ways (the test [`Party`] measures each call's largest
//! gap on both sides), and a node killed, frozen, or drained under them.

use crate::cluster_harness::*;
use crate::harness::*;
use crate::party::{Gap, LegState, Party};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const NUMBER: &str = "0507770000";
/// Parties must hear each other again this soon after their node's death.
const RESUMED_WITHIN: Duration = Duration::from_secs(3);

/// Three nodes, a tracking number, and the party as callers and callee.
struct Rig {
    c: TestCluster,
    party: Party,
    key: String,
    /// Where each caller's call went (its first node).
    placed: HashMap<String, String>,
}

impl Rig {
    fn new(node_extra: &str) -> Rig {
        let mut c = TestCluster::new();
        c.rtp = Some(wide_rtp_range());
        c.node_extra = node_extra.to_string();
        for i in 1..=3 {
            c.start(i, GOOD);
        }
        c.wait_formed();
        let (key, _) = c.node("n1").provision(
            NUMBER,
            r#"[{"number": "0311112222", "ring_seconds": 30}]"#,
            "{}",
        );
        let callers = c.caller_ports();
        let party = Party::start(callers.uac, c.uas_ports.uas);
        Rig {
            c,
            party,
            key,
            placed: HashMap::new(),
        }
    }

    fn sip(&self, node: &str) -> SocketAddr {
        self.c.members[node].sip.parse().expect("sip address")
    }

    /// Places `n` calls spread over the nodes in turn (about 100 a second) and waits
    /// until every one has RTP both ways.
    fn place(&mut self, n: usize) {
        let nodes: Vec<String> = self.c.members.keys().cloned().collect();
        for k in 0..n {
            let node = &nodes[k % nodes.len()];
            let caller = format!("0900{k:06}");
            self.party.call(self.sip(node), NUMBER, &caller);
            self.placed.insert(caller, node.clone());
            std::thread::sleep(Duration::from_millis(10));
        }
        self.party.wait_flowing(n, Duration::from_secs(60));
    }

    fn carried_by(&self, node: &str) -> HashSet<String> {
        self.placed
            .iter()
            .filter(|(_, n)| *n == node)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Waits (bounded) until every call of `callers` was heard on both sides after `t`.
    fn wait_heard(&self, callers: &HashSet<String>, t: Instant, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let heard: HashSet<String> = self.party.heard_since(t).into_iter().collect();
            if callers.is_subset(&heard) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Hangs every call up and checks the records: one per call, answered, with the
    /// talk time the caller saw; returns them by caller.
    fn hang_up_and_check_records(&self, n: usize, via: &str) -> HashMap<String, serde_json::Value> {
        let unclean = self.party.hang_up_all(Duration::from_secs(30));
        assert!(
            unclean.is_empty(),
            "calls that did not end cleanly: {unclean:?}\n{:?}",
            self.party.states()
        );
        let node = self.c.node(via);
        node.wait_for_calls(&self.key, n);
        // Nothing is left in progress anywhere, so every record there will be is written.
        node.wait_until(Duration::from_secs(10), "no call in progress", || {
            node.calls(&self.key, "&state=active").is_empty()
        });
        let records = node.calls(&self.key, "");
        assert_eq!(records.len(), n, "one record per call");
        let talk = self.party.talk_times();
        let mut by_caller = HashMap::new();
        for r in records {
            let caller = r["caller_number"].as_str().unwrap_or_default().to_string();
            assert_eq!(r["result"], "answered", "{r}");
            let seen = talk[&caller].as_secs_f64();
            let logged = r["talk_seconds"].as_f64().unwrap_or(-1.0);
            assert!(
                (logged - seen).abs() <= 2.0,
                "talk time {logged} s logged, {seen:.1} s heard: {r}"
            );
            assert!(
                by_caller.insert(caller.clone(), r).is_none(),
                "{caller} logged twice"
            );
        }
        assert_eq!(by_caller.len(), n);
        by_caller
    }
}

/// The share of `gaps` under [`RESUMED_WITHIN`], and the worst.
fn survived(gaps: &[&Gap]) -> (f64, Duration) {
    let ok = gaps.iter().filter(|g| g.worst() <= RESUMED_WITHIN).count();
    let worst = gaps.iter().map(|g| g.worst()).max().unwrap_or_default();
    (ok as f64 / gaps.len().max(1) as f64, worst)
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

#[test]
fn a_killed_node_s_answered_calls_keep_talking_through_the_survivors() {
    const CALLS: usize = 300;
    let mut rig = Rig::new("");
    rig.place(CALLS);
    let victims = rig.carried_by("n2");
    assert_eq!(victims.len(), CALLS / 3);
    rig.party.mark();
    let death = Instant::now();
    rig.c.members.get_mut("n2").unwrap().node.kill();
    rig.wait_heard(&victims, death, Duration::from_secs(10));
    let gaps = rig.party.gaps();
    let (theirs, others): (Vec<&Gap>, Vec<&Gap>) =
        gaps.iter().partition(|g| victims.contains(&g.caller));
    let (share, worst) = survived(&theirs);
    let p50 = percentile(theirs.iter().map(|g| g.worst()).collect(), 0.5);
    let p99 = percentile(theirs.iter().map(|g| g.worst()).collect(), 0.99);
    eprintln!(
        "takeover after kill -9: {:.1} % of {} calls resumed within {RESUMED_WITHIN:?}; gap p50 {p50:?}, p99 {p99:?}, worst {worst:?}",
        share * 100.0,
        theirs.len()
    );
    let logs = || {
        ["n1", "n3"]
            .iter()
            .map(|n| format!("--- {n}\n{}", rig.c.node(n).log()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        share >= 0.999,
        "{:.1} % resumed; worst gap {worst:?}\n{}",
        share * 100.0,
        logs()
    );
    // The other calls did not notice.
    let (_, worst_other) = survived(&others);
    assert!(
        worst_other < Duration::from_secs(1),
        "calls on n1 and n3 broke off for {worst_other:?}"
    );
    assert!(gaps
        .iter()
        .all(|g| g.caller_state == LegState::Up && g.callee_state == LegState::Up));
    // Talk on, then hang up: each call logged once, by its last node, with the nodes
    // that carried it.
    std::thread::sleep(Duration::from_millis(500));
    let records = rig.hang_up_and_check_records(CALLS, "n1");
    for (caller, r) in &records {
        if victims.contains(caller) {
            let nodes: Vec<&str> = r["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|n| n.as_str())
                .collect();
            assert_eq!(nodes.first(), Some(&"n2"), "{r}");
            assert_eq!(nodes.len(), 2, "{r}");
            assert_eq!(r["node"].as_str(), nodes.last().copied(), "{r}");
            assert!(r["taken_over_at"].is_string(), "{r}");
        } else {
            assert!(r["taken_over_at"].is_null(), "{r}");
        }
    }
    let resumed: f64 = ["n1", "n3"]
        .iter()
        .map(|n| {
            rig.c
                .node(n)
                .metric("tsunagu_calls_taken_over_total{outcome=\"resumed\"}")
        })
        .sum();
    assert_eq!(resumed as usize, victims.len());
}
