//! A node that wakes from a freeze, declared down by the others, must not take healthy
//! members down with its old view (found by loadtest/failover.py --stop: a node
//! stopped again right after it had rejoined, before its detector's first tick, woke
//! up blaming its peers for its own silence and told them so; both rejoined as new
//! incarnations, dropping their calls).

use crate::cluster_harness::TestCluster;
use std::time::{Duration, Instant};

fn stale_count(c: &TestCluster, name: &str) -> f64 {
    c.node(name).metric("tsunagu_cluster_declared_stale_total")
}

#[test]
fn a_node_frozen_right_after_it_rejoined_wakes_without_taking_the_others_down() {
    let c = TestCluster::formed();
    let epochs = |c: &TestCluster| (c.epoch("n1"), c.epoch("n3"));
    let before = epochs(&c);

    // Frozen, declared down, continued: n2 rejoins as a new incarnation.
    let first = c.epoch("n2");
    c.node("n2").signal("-STOP");
    c.node("n1")
        .wait_until(Duration::from_secs(5), "n2 declared down", || {
            c.state("n1", "n2").is_some_and(|(s, _)| s == "down")
        });
    c.node("n2").signal("-CONT");
    // Frozen again as soon as it has rejoined, for longer than the detector's window
    // (1.5 s). "Rejoined" is when n1 has heard the new incarnation: stopped earlier
    // (n2 bumps its epoch up to a heartbeat before anyone hears of it), n1 never sees
    // that incarnation and cannot declare it down, and the run takes another path.
    // The stop usually lands before n2's own detector ticks (n1 hears of it from an
    // answer to n1's heartbeat as often as from n2's); the membership unit test
    // `a_node_frozen_before_its_first_tick_does_not_declare_its_peers_down` pins
    // that case exactly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        if let Some(("up", e)) = c.state("n1", "n2").as_ref().map(|(s, e)| (s.as_str(), *e)) {
            if e > first {
                break e;
            }
        }
        assert!(Instant::now() < deadline, "n2 did not rejoin");
        std::thread::sleep(Duration::from_millis(5));
    };
    let stopped = Instant::now();
    c.node("n2").signal("-STOP");
    c.node("n1")
        .wait_until(Duration::from_secs(5), "n2 declared down again", || {
            c.state("n1", "n2")
                .is_some_and(|(s, e)| s == "down" && e == second)
        });
    std::thread::sleep(Duration::from_millis(2000).saturating_sub(stopped.elapsed()));
    c.node("n2").signal("-CONT");
    c.node("n1")
        .wait_until(Duration::from_secs(10), "n2 back once more", || {
            c.state("n1", "n2")
                .is_some_and(|(s, e)| s == "up" && e > second)
        });
    c.wait_formed();

    // n1 and n3 were never declared down: same incarnations, never stale, and each
    // saw exactly n2's two incarnations go down.
    assert_eq!(epochs(&c), before, "n1 or n3 had to rejoin");
    for n in ["n1", "n3"] {
        assert_eq!(stale_count(&c, n), 0.0, "{n} was declared stale");
        assert_eq!(
            c.node(n)
                .metric("tsunagu_cluster_member_transitions_total{to=\"down\"}"),
            2.0,
            "{n} saw a member down that was not frozen\n{}",
            c.node(n).log()
        );
    }
    assert_eq!(stale_count(&c, "n2"), 2.0);
}
