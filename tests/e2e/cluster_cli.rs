//! `tsunagu cluster status` and `tsunagu cluster forget` against a real three-node
//! cluster: the real binary, run as an operator would, reads the node's configuration,
//! asks its API, prints the members and says by its exit status whether they are all
//! up (0), one is down (1), or the node cannot be asked (2); a member that is down can
//! be retired for good, after which no member lists it, until it starts again.

use crate::cluster_harness::{TestCluster, GOOD};
use crate::harness::*;
use std::process::Command;
use std::time::Duration;

/// Runs `tsunagu cluster status --config <node's config>`: (exit code, stdout, stderr).
fn cluster_status(node: &Node) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tsunagu"))
        .args(["cluster", "status", "--config"])
        .arg(node.dir.path().join("node.toml"))
        .output()
        .expect("run tsunagu cluster status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `tsunagu cluster forget <member> --config <node's config>`: (exit code, stdout,
/// stderr).
fn cluster_forget(node: &Node, member: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tsunagu"))
        .args(["cluster", "forget", member, "--config"])
        .arg(node.dir.path().join("node.toml"))
        .output()
        .expect("run tsunagu cluster forget");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kill9(node: &Node) {
    let pid = node.pid().to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
}

/// The table row of member `name` (the line starting with it).
fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"))
}

#[test]
fn cluster_status_exits_0_with_every_member_up_1_with_one_down_and_2_when_unreachable() {
    let mut c = TestCluster::formed();

    let (code, out, err) = cluster_status(c.node("n1"));
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.starts_with("node n1  epoch "), "{out}");
    assert!(out.contains("lease held"), "{out}");
    let n2 = row(&out, "n2");
    assert!(n2.contains(" up ") && n2.ends_with("yes"), "{out}");
    assert!(out.ends_with("2 members: 2 up, 0 down\n"), "{out}");

    // An option is not a member's name.
    let (code, _, err) = cluster_forget(c.node("n1"), "--config");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("usage:"), "{err}");
    // Nothing up, unknown or itself is retired: refused with the node's reason.
    for (member, why) in [
        ("n2", "stop it first"),
        ("n1", "cannot retire itself"),
        ("nobody", "no member"),
    ] {
        let (code, out, err) = cluster_forget(c.node("n1"), member);
        assert_eq!(code, 1, "{member}: stdout:\n{out}\nstderr:\n{err}");
        assert!(err.contains(why), "{member}: {err}");
    }
    assert_eq!(c.state("n1", "n2").map(|s| s.0).as_deref(), Some("up"));

    // kill -9 n3 (its Node reaps it when replaced or when the test ends).
    kill9(c.node("n3"));
    c.node("n1")
        .wait_until(Duration::from_secs(5), "n1 to see n3 down", || {
            c.state("n1", "n3").is_some_and(|(s, _)| s == "down")
        });
    let (code, out, err) = cluster_status(c.node("n1"));
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let n3 = row(&out, "n3");
    assert!(n3.contains(" down ") && n3.ends_with("no"), "{out}");
    assert!(out.ends_with("2 members: 1 up, 1 down\n"), "{out}");

    // n3 decommissioned: retired through n1, and n2 (which was not asked) stops
    // listing it too, from the store.
    let (_, n3_epoch) = c.state("n1", "n3").unwrap();
    let (code, out, err) = cluster_forget(c.node("n1"), "n3");
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.starts_with("n3 retired"), "{out}");
    let (code, out, err) = cluster_status(c.node("n1"));
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.ends_with("1 member: 1 up, 0 down\n"), "{out}");
    c.node("n2")
        .wait_until(Duration::from_secs(5), "n2 to stop listing n3", || {
            c.state("n2", "n3").is_none()
        });
    for node in ["n1", "n2"] {
        let n = c.node(node);
        assert_eq!(
            n.metric("tsunagu_cluster_members{state=\"down\"}"),
            0.0,
            "{node}"
        );
        assert_eq!(
            n.metric("tsunagu_cluster_member_transitions_total{to=\"retired\"}"),
            1.0,
            "{node}"
        );
    }
    // Asked again (of another member): the same answer, nothing more written.
    let (code, out, err) = cluster_forget(c.node("n2"), "n3");
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(
        c.node("n2")
            .metric("tsunagu_cluster_member_transitions_total{to=\"retired\"}"),
        1.0
    );

    // A node of that name started again is a member again, as a new incarnation.
    c.start(3, GOOD);
    c.wait_formed();
    let (state, epoch) = c.state("n1", "n3").expect("n3 listed again");
    assert_eq!(state, "up");
    assert!(epoch > n3_epoch, "{epoch} after {n3_epoch}");
    let (code, out, err) = cluster_status(c.node("n1"));
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");

    // n1 gone: nobody to ask.
    kill9(c.node("n1"));
    c.node("n1")
        .wait_until(Duration::from_secs(5), "n1's API to close", || {
            c.node("n1").try_get("/healthz", None).is_err()
        });
    let (code, out, err) = cluster_status(c.node("n1"));
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("cannot reach the node's API"), "{err}");
    let (code, _, err) = cluster_forget(c.node("n1"), "n2");
    assert_eq!(code, 2, "{err}");
}
