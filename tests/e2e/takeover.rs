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
    /// Dropped last: the next heavy test starts once this one's nodes are gone.
    _heavy: std::sync::MutexGuard<'static, ()>,
}

impl Rig {
    fn new(node_extra: &str) -> Rig {
        Rig::of(node_extra, 3)
    }

    /// [`Rig::new`] with nodes n1 to n`nodes` only.
    fn of(node_extra: &str, nodes: u8) -> Rig {
        let heavy = one_heavy_test_at_a_time();
        let mut c = TestCluster::new();
        c.rtp = Some(wide_rtp_range());
        c.node_extra = node_extra.to_string();
        for i in 1..=nodes {
            c.start(i, GOOD);
        }
        c.wait_formed();
        let (key, _) = c.node("n1").provision(
            NUMBER,
            r#"[{"number": "0311112222", "ring_seconds": 30}]"#,
            "{}",
        );
        c.wait_provisioned();
        let callers = c.caller_ports();
        let party = Party::start(callers.uac, c.uas_ports.uas);
        Rig {
            c,
            party,
            key,
            placed: HashMap::new(),
            _heavy: heavy,
        }
    }

    /// Every call takes one of the number's cluster-wide lines (a limit nobody
    /// reaches), so that a test can check the lines of calls that move move with them.
    fn count_lines(&mut self) {
        self.c.node("n1").set_number(
            &self.key,
            NUMBER,
            r#"{"queue": {"max_lines": 1000, "max_wait_seconds": 40}}"#,
        );
        self.c.wait_provisioned();
    }

    /// Lines of the number held, as its owner among `nodes` counts them.
    fn lines_held(&self, nodes: &[&str]) -> u64 {
        nodes
            .iter()
            .map(|n| self.c.view(n)["lines_held"].as_u64().unwrap_or(0))
            .sum()
    }

    /// Waits (bounded) until the number's owner counts `n` lines held.
    fn wait_lines_held(&self, nodes: &[&str], n: usize) {
        let what = format!("{n} lines counted by the number's owner");
        self.c
            .node(nodes[0])
            .wait_until(Duration::from_secs(10), &what, || {
                self.lines_held(nodes) == n as u64
            });
    }

    /// The logs of the survivors of n2 (n1, n3), for a failure's message.
    fn survivor_logs(&self) -> String {
        ["n1", "n3"]
            .iter()
            .map(|n| format!("--- {n}\n{}", self.c.node(n).log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A metric summed over the survivors of n2 (n1, n3).
    fn on_survivors(&self, series: &str) -> usize {
        ["n1", "n3"]
            .iter()
            .map(|n| self.c.node(n).metric(series) as usize)
            .sum()
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
        self.wait_durable(n);
    }

    /// Waits (bounded) until the store holds `n` answered calls in progress with their
    /// checkpoints: what a survivor takes over. Media flowing says the calls were
    /// answered, not that their nodes' call-log writers have written it, and a node
    /// killed before its writer's next batch (under a full suite's load) left its
    /// calls to nobody, as it does in production (a full run).
    fn wait_durable(&self, n: usize) {
        use tsunagu_store::Store;
        let store =
            tsunagu_store::SqliteStore::open(&self.c.path("shared.db")).expect("the shared store");
        let durable = || {
            self.c
                .members
                .keys()
                .filter_map(|node| store.active_calls_of(node).ok())
                .flatten()
                .filter(|a| a.record.answered_at.is_some() && a.checkpoint.is_some())
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while durable() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} answered calls in the store",
                durable()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
    rig.count_lines();
    rig.place(CALLS);
    rig.wait_lines_held(&["n1", "n2", "n3"], CALLS);
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
    assert!(
        share >= 0.999,
        "{:.1} % resumed; worst gap {worst:?}\n{}",
        share * 100.0,
        rig.survivor_logs()
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
    // The moved calls hold their lines on their new nodes: the owner (a survivor, or
    // the new owner rebuilt from the survivors' snapshots) counts every call still up.
    rig.wait_lines_held(&["n1", "n3"], CALLS);
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
    assert_eq!(
        rig.on_survivors("tsunagu_calls_taken_over_total{outcome=\"resumed\"}"),
        victims.len()
    );
}

/// A party whose own re-INVITE is pending (one it sent the dead node stays so for up
/// to 32 s) answers the takeover re-INVITE 491 Request Pending: the node asks again
/// after RFC 3261's wait instead of hanging the call up, and the call goes on.
#[test]
fn a_party_refusing_the_takeover_re_invite_491_is_asked_again() {
    const CALLS: usize = 6;
    let mut rig = Rig::new("");
    // Callees that refresh the session: every re-INVITE a survivor sends them, the
    // one refused included, names them refresher still (without it a callee's timer
    // was off, it stopped refreshing, and the call was hung up an interval later).
    rig.party.callee_refreshes(1800);
    rig.place(CALLS);
    let victims = rig.carried_by("n2");
    assert_eq!(victims.len(), CALLS / 3);
    rig.party.refuse_re_invites(1);
    let death = Instant::now();
    rig.c.members.get_mut("n2").unwrap().node.kill();
    // The callee's leg is asked again after 2.1 to 4 s, the caller's within 2 s.
    rig.wait_heard(&victims, death, Duration::from_secs(20));
    let heard: HashSet<String> = rig.party.heard_since(death).into_iter().collect();
    assert!(
        victims.is_subset(&heard),
        "calls of n2 not heard again: {:?}\n{:?}\n{}",
        victims.difference(&heard).collect::<Vec<_>>(),
        rig.party.states(),
        rig.survivor_logs()
    );
    assert_eq!(
        rig.on_survivors("tsunagu_takeover_glare_retries_total"),
        2 * victims.len(),
        "each party of each call refused once"
    );
    assert_eq!(
        rig.on_survivors("tsunagu_calls_taken_over_total{outcome=\"resumed\"}"),
        victims.len()
    );
    assert_eq!(
        rig.on_survivors("tsunagu_calls_taken_over_total{outcome=\"failed\"}"),
        0
    );
    for caller in &victims {
        assert_eq!(
            rig.party.callee_re_invite_timers(caller),
            ["1800;refresher=uas", "1800;refresher=uas"],
            "{caller}: the takeover's re-INVITE and its retry"
        );
    }
    rig.hang_up_and_check_records(CALLS, "n1");
}

/// A caller who hangs up as its node dies (its BYE lost with the node) answers the
/// takeover re-INVITE 481: the call ends as the caller ended it. The callee gets a
/// BYE, and the call is logged answered with no end reason, not `takeover_failed`,
/// ending when its node was last heard, not seconds later when a survivor learnt it.
#[test]
fn a_caller_who_left_with_its_node_has_the_call_ended_not_failed() {
    const CALLS: usize = 3;
    let mut rig = Rig::new("");
    rig.place(CALLS);
    let victims = rig.carried_by("n2");
    let gone = victims.iter().next().expect("a call through n2").clone();
    rig.party.hang_up_unheard(&gone);
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    rig.c.members.get_mut("n2").unwrap().node.kill();
    let ended = |s: &std::collections::HashMap<(LegState, Option<LegState>), usize>| {
        s.get(&(LegState::HungUp, Some(LegState::EndedByNode)))
            .copied()
            == Some(1)
    };
    // Waited for here, with both survivors' logs on a timeout (the harness's wait
    // shows one node's).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ended(&rig.party.states()) {
        assert!(
            Instant::now() < deadline,
            "the callee was not hung up within 15 s: {:?}\n{}",
            rig.party.states(),
            rig.survivor_logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        rig.on_survivors("tsunagu_calls_taken_over_total{outcome=\"ended\"}"),
        1
    );
    assert_eq!(
        rig.on_survivors("tsunagu_calls_taken_over_total{outcome=\"failed\"}"),
        0
    );
    let records = rig.hang_up_and_check_records(CALLS, "n1");
    let r = &records[&gone];
    assert!(r["end_reason"].is_null(), "{r}");
    let ended = crate::durability::chrono_ms(r["ended_at"].as_str().unwrap());
    assert!(
        ended <= killed_at + 200,
        "ended {} ms after its node was killed: {r}",
        ended - killed_at
    );
    // At its node's last sign of life (written every second), not at the answer.
    assert!(
        ended >= killed_at - 1_500,
        "ended {} ms before its node was killed: {r}",
        killed_at - ended
    );
    assert_eq!(r["nodes"][0], "n2", "{r}");
}

#[test]
fn a_frozen_node_s_calls_are_taken_over_and_it_wakes_without_a_sound() {
    const CALLS: usize = 150;
    let mut rig = Rig::new("");
    rig.place(CALLS);
    let victims = rig.carried_by("n2");
    let epoch = rig.c.state("n1", "n2").expect("n2 in n1's view").1;
    rig.party.mark();
    let frozen = Instant::now();
    rig.c.node("n2").signal("-STOP");
    rig.wait_heard(&victims, frozen, Duration::from_secs(8));
    let gaps = rig.party.gaps();
    let theirs: Vec<&Gap> = gaps
        .iter()
        .filter(|g| victims.contains(&g.caller))
        .collect();
    let (share, worst) = survived(&theirs);
    eprintln!(
        "takeover of a frozen node: {:.1} % within {RESUMED_WITHIN:?}, worst {worst:?}",
        share * 100.0
    );
    assert!(
        share >= 0.999,
        "{:.1} % resumed; worst gap {worst:?}",
        share * 100.0
    );
    // Frozen for 10 s in all, then woken: it finds its incarnation declared down.
    let stopped_for = frozen.elapsed();
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped_for));
    let woken = Instant::now();
    rig.c.node("n2").signal("-CONT");
    rig.c.node("n1").wait_until(
        Duration::from_secs(15),
        "n2 back as a new incarnation",
        || {
            rig.c
                .state("n1", "n2")
                .is_some_and(|(s, e)| s == "up" && e > epoch)
        },
    );
    // A second of talk through the survivors after it rejoined: nothing from n2 meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    let n2: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let heard = rig.party.heard_from_since(n2, woken);
    assert!(
        heard.is_empty(),
        "RTP from the woken node for {} calls: {heard:?}",
        heard.len()
    );
    let gaps = rig.party.gaps();
    assert!(
        gaps.iter()
            .all(|g| g.caller_state == LegState::Up && g.callee_state == LegState::Up),
        "a party was hung up: {:?}",
        rig.party.states()
    );
    let records = rig.hang_up_and_check_records(CALLS, "n2");
    for (caller, r) in &records {
        if victims.contains(caller) {
            assert_ne!(r["node"], "n2", "{r}");
            assert_eq!(r["nodes"][0], "n2", "{r}");
        }
    }
}

#[test]
fn a_rolling_restart_under_load_drops_no_call() {
    const CALLS: usize = 300;
    let mut rig = Rig::new("");
    rig.count_lines();
    rig.place(CALLS);
    rig.party.mark();
    let resumed = |c: &TestCluster, names: &[&str]| -> f64 {
        names
            .iter()
            .map(|n| {
                c.node(n)
                    .metric("tsunagu_calls_taken_over_total{outcome=\"resumed\"}")
            })
            .sum()
    };
    let mut moves = 0.0;
    for name in ["n1", "n2", "n3"] {
        let others: Vec<&str> = ["n1", "n2", "n3"]
            .into_iter()
            .filter(|n| *n != name)
            .collect();
        let before = resumed(&rig.c, &others);
        let member = rig.c.members.get_mut(name).unwrap();
        let carrying = member.node.metric("tsunagu_active_calls");
        assert!(carrying > 0.0, "{name} carries calls");
        let asked = Instant::now();
        assert_eq!(
            member.node.terminate(),
            Some(0),
            "{name} exit code\n{}",
            member.node.log()
        );
        let drained = asked.elapsed();
        eprintln!("{name}: drained {carrying} calls in {drained:?}");
        assert!(
            drained < Duration::from_secs(4),
            "{name} took {drained:?} to drain {carrying} calls (deadline 5 s)"
        );
        // Every call it carried was handed to a peer and resumed there.
        let moved = resumed(&rig.c, &others) - before;
        assert_eq!(moved, carrying, "calls of {name} resumed by its peers");
        moves += carrying;
        let member = rig.c.members.get_mut(name).unwrap();
        member.node.start_again();
        rig.c.wait_formed();
        let states = rig.party.states();
        assert_eq!(
            states.get(&(LegState::Up, Some(LegState::Up))),
            Some(&CALLS),
            "after restarting {name}: {states:?}"
        );
        // The handed-over calls' lines moved with them: counted once, none freed.
        rig.wait_lines_held(&["n1", "n2", "n3"], CALLS);
    }
    let gaps = rig.party.gaps();
    let worst = gaps.iter().map(Gap::worst).max().unwrap_or_default();
    let p99 = percentile(gaps.iter().map(Gap::worst).collect(), 0.99);
    eprintln!("rolling restart: largest gap per call p99 {p99:?}, worst {worst:?}");
    assert!(worst < RESUMED_WITHIN, "a call was silent for {worst:?}");
    let records = rig.hang_up_and_check_records(CALLS, "n1");
    assert!(
        records.values().all(|r| r["end_reason"].is_null()),
        "no call ended by a drain"
    );
    // Every move was a hand-over by a draining node: none taken from a live one.
    let hops: usize = records
        .values()
        .map(|r| {
            r["nodes"]
                .as_array()
                .map_or(0, |n| n.len().saturating_sub(1))
        })
        .sum();
    assert_eq!(hops as f64, moves, "moves recorded in the calls' nodes");
}

/// Two of three nodes told to stop at once: each hands its calls to the peers, the
/// other draining node declines what it is handed, and the next round places those
/// calls on the node that stays. Every call carries on there; none is hung up at a
/// drain deadline. (Placing the second round on the same peers again left the calls
/// each had placed on the other to end at their deadlines: a review.)
#[test]
fn two_nodes_drained_together_hand_every_call_to_the_third() {
    const CALLS: usize = 60;
    let mut rig = Rig::new("");
    rig.place(CALLS);
    let carrying: f64 = ["n1", "n2"]
        .iter()
        .map(|n| rig.c.node(n).metric("tsunagu_active_calls"))
        .sum();
    assert!(carrying > 0.0, "n1 and n2 carry calls");
    let exits: Vec<Option<i32>> = std::thread::scope(|s| {
        let stopping: Vec<_> = rig
            .c
            .members
            .iter_mut()
            .filter(|(name, _)| *name != "n3")
            .map(|(_, member)| s.spawn(move || member.node.terminate()))
            .collect();
        stopping.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(exits, vec![Some(0), Some(0)]);
    // The drained nodes exit once n3 claimed their calls; each is resumed there
    // when both its parties answered n3's re-INVITEs.
    let n3 = rig.c.node("n3");
    n3.wait_until(
        Duration::from_secs(10),
        "every call of n1 and n2 resumed on n3",
        || n3.metric("tsunagu_calls_taken_over_total{outcome=\"resumed\"}") == carrying,
    );
    assert_eq!(n3.metric("tsunagu_active_calls"), CALLS as f64);
    let states = rig.party.states();
    assert_eq!(
        states.get(&(LegState::Up, Some(LegState::Up))),
        Some(&CALLS),
        "{states:?}"
    );
    let records = rig.hang_up_and_check_records(CALLS, "n3");
    for r in records.values() {
        assert!(r["end_reason"].is_null(), "no call ended by a drain: {r}");
        assert_eq!(r["node"], "n3", "{r}");
    }
}

#[test]
fn a_node_killed_and_started_again_at_once_loses_no_answered_call() {
    // As systemd's Restart=always does: the new run is up before the peers notice the
    // death. Its calls are resumed (by the new run itself or by a peer, whichever claims
    // each first) and logged once.
    const CALLS: usize = 90;
    let mut rig = Rig::new("");
    rig.place(CALLS);
    let victims = rig.carried_by("n2");
    rig.party.mark();
    let death = Instant::now();
    let n2 = &mut rig.c.members.get_mut("n2").unwrap().node;
    n2.kill();
    n2.start_again();
    rig.wait_heard(&victims, death, Duration::from_secs(10));
    let gaps = rig.party.gaps();
    let theirs: Vec<&Gap> = gaps
        .iter()
        .filter(|g| victims.contains(&g.caller))
        .collect();
    let (share, worst) = survived(&theirs);
    eprintln!(
        "kill -9 and restart: {:.1} % within {RESUMED_WITHIN:?}, worst {worst:?}",
        share * 100.0
    );
    assert!(
        share >= 0.999,
        "{:.1} % resumed; worst gap {worst:?}\n{}",
        share * 100.0,
        rig.c.node("n2").log()
    );
    rig.c.wait_formed();
    let records = rig.hang_up_and_check_records(CALLS, "n3");
    for (caller, r) in &records {
        if victims.contains(caller) {
            assert_eq!(r["nodes"][0], "n2", "{r}");
            assert!(r["taken_over_at"].is_string(), "{r}");
        }
    }
}

/// The members carrying calls die and their finaliser marks them down in the store,
/// then dies itself before claiming anything (in its 2 s grace, say), and neither
/// node id starts again. Members that start afterwards learn those incarnations as
/// down from the store, so no member declares them down again and none finalises
/// them: the calls stayed in progress, their parties in silence and no record
/// written, until a dead node id started again (a review). The orphan sweep finds
/// them (their nodes out of its view and their signs of life still for 10 s) and adopts
/// them: each answered call re-INVITEd, heard again and logged once.
#[test]
fn calls_whose_finaliser_died_too_are_adopted_by_a_live_member() {
    const CALLS: usize = 4;
    let mut rig = Rig::of("", 2);
    rig.place(CALLS);
    let callers: HashSet<String> = rig.placed.keys().cloned().collect();
    let epochs = [rig.c.epoch("n1"), rig.c.epoch("n2")];
    let death = Instant::now();
    for n in ["n1", "n2"] {
        rig.c.members.get_mut(n).unwrap().node.kill();
    }
    // What their finaliser did before it died.
    {
        use tsunagu_store::Store;
        let store = tsunagu_store::SqliteStore::open(&rig.c.path("shared.db")).expect("store");
        for (n, epoch) in ["n1", "n2"].iter().zip(epochs) {
            assert!(store.mark_node_down(n, epoch).expect("mark down"), "{n}");
        }
    }
    rig.c.start(3, GOOD);
    // n3's sweep acts 10 s after it joined, on signs it has read still for 10 s, at
    // its next tick (every 5 s); then the re-INVITEs.
    rig.wait_heard(&callers, death, Duration::from_secs(60));
    let heard: HashSet<String> = rig.party.heard_since(death).into_iter().collect();
    assert!(
        callers.is_subset(&heard),
        "calls not heard again: {:?}\n{:?}\n{}",
        callers.difference(&heard).collect::<Vec<_>>(),
        rig.party.states(),
        rig.c.node("n3").log()
    );
    let n3 = rig.c.node("n3");
    // Counted once each job is over (a finaliser's second round comes 2 s after its
    // first).
    n3.wait_until(
        Duration::from_secs(10),
        "one incarnation each of n1 and n2 adopted",
        || n3.metric("tsunagu_takeover_orphans_adopted_total") == 2.0,
    );
    let records = rig.hang_up_and_check_records(CALLS, "n3");
    for r in records.values() {
        assert!(r["nodes"][0] == "n1" || r["nodes"][0] == "n2", "{r}");
        assert_eq!(r["nodes"][1], "n3", "{r}");
        assert!(r["taken_over_at"].is_string(), "{r}");
    }
}

/// A call still ringing when its node dies cannot be resumed (the caller's INVITE was
/// never answered): the finaliser CANCELs the forwarded INVITE from the checkpoint and
/// logs the call once, failed with reason node_lost.
#[test]
fn a_ringing_call_of_a_killed_node_is_cancelled_and_logged_lost() {
    let mut c = TestCluster::formed();
    let (key, _) = c.node("n1").provision(
        NUMBER,
        r#"[{"number": "0311112222", "ring_seconds": 60}]"#,
        "{}",
    );
    c.wait_provisioned();
    let uas = Uas::start("uas_no_answer.xml", c.uas_ports, c.shared.path(), &[]);
    let ports = c.caller_ports();
    let n2 = c.members["n2"].sip.clone();
    // The caller gives up by itself 8 s after its last message (unanswered).
    let caller = std::thread::spawn(move || {
        uac_to(
            &n2,
            "uac.xml",
            ports,
            NUMBER,
            1,
            1,
            &["-recv_timeout", "8000"],
        )
    });
    // Ringing, with its attempt checkpointed (listed in progress with the attempt).
    c.node("n1").wait_until(
        Duration::from_secs(10),
        "the call ringing, in progress",
        || {
            c.node("n1")
                .calls(&key, "&state=active")
                .first()
                .is_some_and(|r| r["attempts"].as_array().is_some_and(|a| !a.is_empty()))
        },
    );
    assert!(uas.messages().contains("INVITE sip:0311112222@"));
    c.members.get_mut("n2").unwrap().node.kill();
    c.node("n1").wait_until(
        Duration::from_secs(10),
        "the callee to get a CANCEL",
        || uas.messages().contains("CANCEL sip:0311112222@"),
    );
    let records = c.node("n3").wait_for_calls(&key, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(
        (r["result"].as_str(), r["end_reason"].as_str()),
        (Some("failed"), Some("node_lost")),
        "{r}"
    );
    assert_eq!(r["node"], "n2", "{r}");
    let run = caller.join().expect("caller");
    assert_eq!(run.successful, 0, "the caller was never answered");
    assert_eq!(c.node("n1").calls(&key, "").len(), 1, "logged once");
}
