//! `tsunagu cluster status` against a real two-node cluster: the real binary, run as an
//! operator would, reads the node's configuration, asks its API, prints the members
//! and says by its exit status whether they are all up (0), one is down (1), or the
//! node cannot be asked (2).

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

/// The table row of member `name` (the line starting with it).
fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"))
}

#[test]
fn cluster_status_exits_0_with_every_member_up_1_with_one_down_and_2_when_unreachable() {
    let mut c = TestCluster::new();
    c.start(1, GOOD);
    c.start(2, GOOD);
    c.wait_formed();

    let (code, out, err) = cluster_status(c.node("n1"));
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.starts_with("node n1  epoch "), "{out}");
    assert!(out.contains("lease held"), "{out}");
    let n2 = row(&out, "n2");
    assert!(n2.contains(" up ") && n2.ends_with("yes"), "{out}");
    assert!(out.ends_with("1 member: 1 up, 0 down\n"), "{out}");

    // kill -9 n2 (its Node reaps it when the test ends).
    let pid = c.node("n2").pid().to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    c.node("n1")
        .wait_until(Duration::from_secs(5), "n1 to see n2 down", || {
            c.state("n1", "n2").is_some_and(|(s, _)| s == "down")
        });
    let (code, out, err) = cluster_status(c.node("n1"));
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let n2 = row(&out, "n2");
    assert!(n2.contains(" down ") && n2.ends_with("no"), "{out}");
    assert!(out.ends_with("1 member: 0 up, 1 down\n"), "{out}");

    // n1 gone too: nobody to ask.
    let pid = c.node("n1").pid().to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    c.node("n1")
        .wait_until(Duration::from_secs(5), "n1's API to close", || {
            c.node("n1").try_get("/healthz", None).is_err()
        });
    let (code, out, err) = cluster_status(c.node("n1"));
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("cannot reach the node's API"), "{err}");
}
