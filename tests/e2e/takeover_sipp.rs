//! The SIPp takeover scenarios load testers use (loadtest/scenarios/uac_takeover.xml
//! and uas_takeover.xml) against a real three-node cluster: a node is killed -9 with
//! calls up, and SIPp itself must count every call successful, which it only does if
//! both scenarios answer the survivor's re-INVITE and the caller sends its BYE to the
//! new Contact.

use crate::cluster_harness::*;
use crate::harness::*;
use std::time::Duration;

const NUMBER: &str = "0507771111";
/// Calls per node (one SIPp caller per node).
const PER_NODE: u64 = 10;
/// How long each caller holds its calls: long enough for the kill, the detection
/// (about 1.5 s) and the re-INVITEs, with talk through the survivor after them.
const HOLD_MS: &str = "7000";

#[test]
fn sipp_takeover_scenarios_follow_the_survivor_s_re_invite_and_bye_the_new_contact() {
    let mut c = TestCluster::formed();
    let (key, _) = c.node("n1").provision(
        NUMBER,
        r#"[{"number": "0311112222", "ring_seconds": 30}]"#,
        r#"{"min_talk_seconds": 1, "duplicate_window_seconds": 0}"#,
    );
    let _uas = Uas::start(
        "uas_takeover.xml",
        c.uas_ports,
        c.shared.path(),
        &["-rtp_echo"],
    );
    let nodes = ["n1", "n2", "n3"];
    let callers: Vec<(String, Ports)> = nodes
        .iter()
        .map(|n| (c.members[*n].sip.clone(), c.caller_ports()))
        .collect();
    let total = PER_NODE as usize * nodes.len();

    // What each caller sent and received (SIPp's message trace).
    let traces: Vec<std::path::PathBuf> = nodes
        .iter()
        .map(|n| c.path(&format!("uac-{n}-messages.log")))
        .collect();
    let runs = std::thread::scope(|s| {
        let threads: Vec<_> = callers
            .iter()
            .zip(&traces)
            .enumerate()
            .map(|(k, ((sip, ports), trace))| {
                let caller = format!("09077{k}0000");
                let trace = trace.display().to_string();
                s.spawn(move || {
                    uac_to(
                        sip,
                        "uac_takeover.xml",
                        *ports,
                        NUMBER,
                        PER_NODE as u32,
                        20,
                        &[
                            "-d",
                            HOLD_MS,
                            "-key",
                            "caller",
                            &caller,
                            "-trace_msg",
                            "-message_file",
                            &trace,
                        ],
                    )
                })
            })
            .collect();
        // Every call answered and checkpointed (its record in progress, with the
        // answer, is in the shared store) before n2 dies; a caller that gave up
        // before (SIPp refused the scenario, calls failed) stops the wait.
        let n1 = c.node("n1");
        n1.wait_until(Duration::from_secs(10), "every call answered", || {
            let active = n1.calls(&key, "&state=active");
            let answered =
                active.len() == total && active.iter().all(|r| r["answered_at"].is_string());
            answered || threads.iter().any(|t| t.is_finished())
        });
        let early = threads.iter().any(|t| t.is_finished());
        if !early {
            c.members.get_mut("n2").unwrap().node.kill();
        }
        let runs: Vec<UacRun> = threads
            .into_iter()
            .map(|t| t.join().expect("sipp caller thread"))
            .collect();
        assert!(
            !early,
            "a SIPp caller ended before n2 was killed: {runs:#?}"
        );
        runs
    });
    let logs = || {
        ["n1", "n3"]
            .iter()
            .map(|n| format!("--- {n}\n{}", c.node(n).log()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (node, run) in nodes.iter().zip(&runs) {
        assert_eq!(
            (run.successful, run.failed),
            (PER_NODE, 0),
            "SIPp calling through {node}:\n{}\n{}",
            run.output,
            logs()
        );
    }

    // Both parties of each of n2's calls answered a survivor's re-INVITE.
    let resumed: f64 = ["n1", "n3"]
        .iter()
        .map(|n| {
            c.node(n)
                .metric("tsunagu_calls_taken_over_total{outcome=\"resumed\"}")
        })
        .sum();
    assert_eq!(resumed as u64, PER_NODE, "calls resumed\n{}", logs());
    // n2's caller sent each BYE to the Contact of the survivor that re-INVITEd it
    // (its Request-URI; SIPp's success says the survivor got it and answered).
    let sent = std::fs::read_to_string(&traces[1]).expect("the n2 caller's trace");
    // `BYE sip:tsunagu@127.0.0.3:21030 SIP/2.0`: the host and port of its URI.
    let targets: Vec<&str> = sent
        .lines()
        .filter_map(|l| l.strip_prefix("BYE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(|uri| uri.rsplit('@').next().unwrap_or(uri))
        .map(|host_port| host_port.split(';').next().unwrap_or(host_port))
        .collect();
    let survivors = [c.members["n1"].sip.as_str(), c.members["n3"].sip.as_str()];
    assert!(targets.len() >= PER_NODE as usize, "BYEs sent: {targets:?}");
    assert!(
        targets.iter().all(|t| survivors.contains(t)),
        "BYEs not sent to a survivor's Contact ({survivors:?}): {targets:?}"
    );

    // Each call logged once, answered; n2's by the survivor that took it over, with
    // RTP relayed through that survivor both ways (the scenarios' media followed the
    // re-INVITE: the caller's audio to the new SDP, the callee's echo back).
    let n1 = c.node("n1");
    n1.wait_for_calls(&key, total);
    n1.wait_until(Duration::from_secs(10), "no call in progress", || {
        n1.calls(&key, "&state=active").is_empty()
    });
    let records = n1.calls(&key, "");
    assert_eq!(records.len(), total, "one record per call");
    let mut taken_over = 0;
    for r in &records {
        assert_eq!(r["result"], "answered", "{r}");
        let carried: Vec<&str> = r["nodes"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        if carried.first() == Some(&"n2") {
            taken_over += 1;
            assert_eq!(carried.len(), 2, "{r}");
            assert_ne!(carried[1], "n2", "{r}");
            assert_eq!(r["node"].as_str(), Some(carried[1]), "{r}");
            assert!(r["taken_over_at"].is_string(), "{r}");
            for direction in ["rtp_packets_in", "rtp_packets_out"] {
                assert!(r[direction].as_u64().unwrap_or(0) > 0, "{direction}: {r}");
            }
        } else {
            assert_eq!(carried.len(), 1, "{r}");
            assert!(r["taken_over_at"].is_null(), "{r}");
        }
    }
    assert_eq!(taken_over, PER_NODE as usize, "n2's calls, taken over");
}
