//! The node's process settings made at start (`tsunagu::process`), read back from the
//! kernel's view of the running process (`/proc/<pid>/status`).

use crate::harness::*;
use tsunagu_config::Config;

/// A field of `/proc/<pid>/status` as a number.
fn status_field(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .parse()
        .expect("a number")
}

/// A fresh node's descriptor table already holds what its RTP range and connection
/// limits can open (else it doubles under load, each doubling stalling the thread
/// opening a socket for an RCU grace period), and transparent huge pages are off
/// unless the configuration allows them.
#[test]
fn a_fresh_node_is_sized_for_its_load_and_takes_no_huge_pages() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    let config = Config::load(&node.dir.path().join("node.toml")).expect("the node's config");
    let needed = tsunagu::process::descriptors_needed(&config);
    let fd_size = status_field(node.pid(), "FDSize");
    assert!(
        fd_size >= needed as u64,
        "descriptor table of {fd_size} slots, {needed} needed"
    );
    assert_eq!(status_field(node.pid(), "THP_enabled"), 0);

    // Allowed by the configuration: left on.
    let mut node = node;
    node.kill();
    let path = node.dir.path().join("node.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replacen("[node]\n", "[node]\ntransparent_huge_pages = true\n", 1);
    std::fs::write(&path, text).expect("write config");
    node.start_again();
    assert_eq!(status_field(node.pid(), "THP_enabled"), 1);
}
