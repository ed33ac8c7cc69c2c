//! Decides which ScyllaDB conformance test is compiled: the suite when
//! `TSUNAGU_SCYLLA_NODES` names a cluster at build time (cfg `scylla_cluster`), else a
//! test that reports it was skipped (see src/scylla/mod.rs).

fn main() {
    println!("cargo::rerun-if-env-changed=TSUNAGU_SCYLLA_NODES");
    println!("cargo::rustc-check-cfg=cfg(scylla_cluster)");
    if std::env::var("TSUNAGU_SCYLLA_NODES").is_ok_and(|v| !v.trim().is_empty()) {
        println!("cargo::rustc-cfg=scylla_cluster");
    }
}
