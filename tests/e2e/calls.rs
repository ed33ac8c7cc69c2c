//! Call flows through a real node: forwarding, media, failures, rejections, drain.

use crate::harness::*;
use std::time::Duration;

const DEST: &str = r#"[{"number": "0311112222", "ring_seconds": 20}]"#;

/// The caller hangs up after 1 s and the callee takes 5 s to answer the node's BYE:
/// the talk ends at the caller's BYE (1 s: `invalid_short` under a 3 s minimum), not
/// when the callee confirms it (before: 6 s and `valid`; a party that never answers a
/// BYE added up to 32 s and made any short call count).
#[test]
fn talk_ends_at_the_first_bye_not_when_the_other_party_confirms_it() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision(
        "0501234567",
        DEST,
        r#"{"min_talk_seconds": 3, "duplicate_window_seconds": 86400}"#,
    );
    let bye = r#"<recv request="BYE"/>"#;
    let paused = format!("{bye}\n  <pause milliseconds=\"5000\"/>");
    let slow = scenario_replacing(
        node.dir.path(),
        "uas_answer.xml",
        bye,
        &paused,
        "uas_slow_bye.xml",
    );
    let _uas = Uas::start(&slow, ports, node.dir.path(), &[]);
    let run = uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "1000"]);
    assert_eq!(run.successful, 1, "{}", run.output);
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["talk_seconds"], 1, "{}", calls[0]);
    assert_eq!(calls[0]["validity"], "invalid_short", "{}", calls[0]);
}

#[test]
fn basic_calls_are_forwarded_logged_and_exported() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, adv) = node.provision(
        "0501234567",
        DEST,
        r#"{"min_talk_seconds": 1, "duplicate_window_seconds": 86400}"#,
    );
    let uas = Uas::start(
        "uas_ring_answer.xml",
        ports,
        node.dir.path(),
        &["-d", "100"],
    );

    let run = uac("uac.xml", ports, "0501234567", 200, 50, &["-d", "1000"]);
    assert_eq!(
        (run.exit, run.successful, run.failed),
        (0, 200, 0),
        "{}",
        run.output
    );

    // The destination saw the destination number, and nothing of the caller's leg.
    let seen = uas.messages();
    assert_eq!(
        seen.matches("INVITE sip:0311112222@127.0.0.1").count(),
        200,
        "every INVITE reached the UAS for 0311112222"
    );
    assert!(
        !seen.contains("SIPpTag00"),
        "the caller's From tag leaked to the callee leg"
    );
    assert!(
        !seen.contains(&format!("127.0.0.1:{};branch", ports.uac)),
        "the caller's Via leaked to the callee leg"
    );

    let calls = node.wait_for_calls(&key, 200);
    assert_eq!(calls.len(), 200);
    for c in &calls {
        assert_eq!(c["result"], "answered", "{c}");
        assert_eq!(c["caller_number"], "09012345678");
        assert_eq!(c["caller_kind"], "mobile");
        assert_eq!(c["tracking_number"], "0501234567");
        assert_eq!(c["destination_number"], "0311112222");
        assert_eq!(c["advertiser_id"], adv.as_str());
        assert_eq!(c["node"], "e2e");
        assert_eq!(c["sip_code"], 200);
        assert_eq!(c["trunk"], "carrier-a");
        assert_eq!(c["talk_seconds"], 1, "held for 1 s: {c}");
        assert!(c["answered_at"].is_string());
    }
    // The same caller called 200 times within the duplicate window: only the first counts.
    let valid = calls.iter().filter(|c| c["validity"] == "valid").count();
    let dup = calls
        .iter()
        .filter(|c| c["validity"] == "invalid_duplicate")
        .count();
    assert_eq!((valid, dup), (1, 199));
    assert_eq!(
        calls[0]["validity"], "valid",
        "the earliest call is the valid one"
    );

    // CSV export: a header row and one row per call.
    let csv = node.get("/v1/calls?format=csv", &key);
    assert_eq!(csv.status, 200);
    assert!(csv
        .headers
        .to_ascii_lowercase()
        .contains("content-type: text/csv"));
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines.len(), 201, "header + 200 rows");
    assert!(lines[0].starts_with("call_id,advertiser_id,tracking_number,caller_number,caller_kind"));
    let tsv = node.get("/v1/calls?format=tsv&result=answered", &key);
    assert_eq!(tsv.body.lines().count(), 201);
    assert!(tsv.body.lines().nth(1).unwrap().contains("\tanswered\t"));

    // Another operator sees none of it.
    let other = node.other_operator();
    assert!(node.calls(&other, "").is_empty());
    assert_eq!(
        node.get("/v1/calls?format=csv", &other)
            .body
            .lines()
            .count(),
        1,
        "header only"
    );
    let id = calls[0]["call_id"].as_str().unwrap();
    assert_eq!(node.get(&format!("/v1/calls/{id}"), &other).status, 404);
    assert_eq!(node.get(&format!("/v1/calls/{id}"), &key).status, 200);

    assert_eq!(
        node.metric("tsunagu_calls_ended_total{result=\"answered\"}"),
        200.0
    );
    node.wait_until(
        Duration::from_secs(10),
        "every call slot to be released",
        || node.metric("tsunagu_active_calls") == 0.0,
    );
}

#[test]
fn rtp_is_relayed_both_ways_and_counted() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, r#"{"min_talk_seconds": 1}"#);
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &["-rtp_echo"]);
    let run = uac("uac_rtp.xml", ports, "0501234567", 2, 2, &["-d", "3000"]);
    assert_eq!((run.exit, run.successful), (0, 2), "{}", run.output);
    let calls = node.wait_for_calls(&key, 2);
    for c in &calls {
        // g711a.pcap sends 50 packets/s; 3 s of talk relayed each way (the UAS echoes).
        let pin = c["rtp_packets_in"].as_u64().unwrap();
        let pout = c["rtp_packets_out"].as_u64().unwrap();
        assert!(pin >= 100, "caller→callee packets {pin}: {c}");
        assert!(pout >= 100, "callee→caller packets {pout}: {c}");
        // PCMA both ways: its jitter measured (a pcap replayed on loopback: well
        // under 50 ms).
        let jitter = c["rtp_jitter_ms"].as_f64().unwrap_or(-1.0);
        assert!((0.0..50.0).contains(&jitter), "rtp_jitter_ms {jitter}: {c}");
    }
    for direction in ["caller_to_callee", "callee_to_caller"] {
        let count = format!("tsunagu_rtp_jitter_seconds_count{{direction=\"{direction}\"}}");
        assert_eq!(node.metric(&count), 2.0, "{count}");
    }
    assert!(node.metric("tsunagu_rtp_packets_total{direction=\"caller_to_callee\"}") >= 200.0);
    assert!(node.metric("tsunagu_rtp_packets_total{direction=\"callee_to_caller\"}") >= 200.0);
    node.wait_until(
        Duration::from_secs(10),
        "RTP ports to return to the pool",
        || node.metric("tsunagu_rtp_ports_in_use") == 0.0,
    );
}

/// `media.timeout_seconds`: an answered call from which neither party sends RTP is
/// ended by the node (BYE to both, logged `media_timeout`); a call whose audio flows
/// is not.
#[test]
fn an_answered_call_without_rtp_is_ended_after_the_media_timeout() {
    let ports = Ports::take();
    let mut node = Node::start(ports, "127.0.0.1/32", "");
    node.restart_with_line("media", "timeout_seconds = 1");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &["-rtp_echo"]);
    // Talking for 3 s (three checks): left alone.
    let talk = uac("uac_rtp.xml", ports, "0501234567", 1, 1, &["-d", "3000"]);
    assert_eq!((talk.exit, talk.successful), (0, 1), "{}", talk.output);
    // Silent (no RTP at all), held for a minute: ended by the node within about two
    // checks. SIPp answers the node's BYE and counts its call failed.
    let started = std::time::Instant::now();
    let silent = uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "60000"]);
    assert_eq!(silent.failed, 1, "{}", silent.output);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the node ended it"
    );
    let calls = node.wait_for_calls(&key, 2);
    let reasons: Vec<&serde_json::Value> = calls.iter().map(|c| &c["end_reason"]).collect();
    assert!(reasons.contains(&&serde_json::Value::Null), "{calls:?}");
    assert!(
        reasons.contains(&&serde_json::json!("media_timeout")),
        "{calls:?}"
    );
    assert!(calls.iter().all(|c| c["result"] == "answered"), "{calls:?}");
    // Its dead air is not talk time: no RTP ever came, so none (it was the one to
    // two seconds until the node ended it).
    let silent = calls
        .iter()
        .find(|c| c["end_reason"] == "media_timeout")
        .unwrap();
    assert_eq!(silent["talk_seconds"], 0, "{silent}");
    assert!(
        uas.messages().contains("BYE sip:"),
        "the callee got the node's BYE"
    );
    assert_eq!(node.metric("tsunagu_calls_media_timeouts_total"), 1.0);
}

#[test]
fn busy_no_answer_and_cancel_are_logged_with_their_result() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, adv) = node.provision("0501111111", DEST, "{}");
    node.add_number(
        &key,
        &adv,
        "0502222222",
        r#"[{"number": "0322223333", "ring_seconds": 1}]"#,
        "{}",
    );

    {
        let _uas = Uas::start("uas_busy.xml", ports, node.dir.path(), &[]);
        let run = uac_expecting(486, node.dir.path(), ports, "0501111111", 5, &[]);
        assert_eq!((run.exit, run.successful), (0, 5), "busy: {}", run.output);
    }
    {
        let _uas = Uas::start("uas_no_answer.xml", ports, node.dir.path(), &[]);
        let run = uac_expecting(480, node.dir.path(), ports, "0502222222", 3, &[]);
        assert_eq!(
            (run.exit, run.successful),
            (0, 3),
            "no answer: {}",
            run.output
        );
    }
    {
        let _uas = Uas::start("uas_no_answer.xml", ports, node.dir.path(), &[]);
        let run = uac("uac_cancel.xml", ports, "0501111111", 4, 10, &["-d", "300"]);
        assert_eq!((run.exit, run.successful), (0, 4), "cancel: {}", run.output);
        // The caller is answered 487 at once; the destination must stay up to answer
        // the node's CANCEL, or the calls end only at the 32 s transaction timeout.
        node.wait_until(
            Duration::from_secs(20),
            "the cancelled calls to end",
            || node.metric("tsunagu_calls_ended_total{result=\"cancelled\"}") == 4.0,
        );
    }
    let calls = node.wait_for_calls(&key, 12);
    let count = |result: &str, code: u64| {
        calls
            .iter()
            .filter(|c| c["result"] == result && c["sip_code"] == code)
            .count()
    };
    assert_eq!(count("busy", 486), 5);
    assert_eq!(count("no_answer", 480), 3);
    assert_eq!(count("cancelled", 487), 4);
    assert!(calls.iter().all(|c| c["validity"] == "invalid_short"
        && c["talk_seconds"] == 0
        && c["answered_at"].is_null()));
    assert_eq!(
        node.get("/v1/calls?result=busy&format=csv", &key)
            .body
            .lines()
            .count(),
        6
    );
    node.wait_until(Duration::from_secs(40), "every call to finish", || {
        node.metric("tsunagu_active_calls") == 0.0
    });
}

#[test]
fn unknown_numbers_and_foreign_sources_are_refused() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let run = uac_expecting(404, node.dir.path(), ports, "0509999999", 3, &[]);
    assert_eq!((run.exit, run.successful), (0, 3), "404: {}", run.output);
    // 127.0.0.3 is on loopback but in no trunk's inbound list (nor a trunk's outbound
    // address): issue 10 says such a source gets no answer at all (no 100, no 403).
    let sock = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
    let me = sock.local_addr().unwrap();
    for i in 0..3 {
        let msg = crate::sip_edge::invite(me, &format!("foreign{i}"));
        sock.send_to(msg.as_bytes(), ("127.0.0.1", ports.sip))
            .unwrap();
    }
    let got = datagrams_within(&sock, Duration::from_secs(2));
    assert!(got.is_empty(), "a foreign source gets nothing: {got:?}");
    assert_eq!(
        node.metric("tsunagu_invites_rejected_total{code=\"404\",reason=\"unknown_number\"}"),
        3.0
    );
    assert_eq!(node.metric("tsunagu_sip_untrusted_dropped_total"), 3.0);
    assert_eq!(
        node.metric("tsunagu_invites_rejected_total{code=\"403\",reason=\"source_not_allowed\"}"),
        0.0,
        "dropped before admission"
    );
    assert!(
        node.calls(&key, "").is_empty(),
        "refused INVITEs are not calls"
    );
}

#[test]
fn calls_over_tcp_work_too() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let run = uac(
        "uac.xml",
        ports,
        "0501234567",
        10,
        10,
        &["-t", "t1", "-d", "200"],
    );
    assert_eq!((run.exit, run.successful), (0, 10), "{}", run.output);
    assert_eq!(
        node.wait_for_calls(&key, 10)
            .iter()
            .filter(|c| c["result"] == "answered")
            .count(),
        10
    );
}

#[test]
fn malformed_sip_gets_400_and_the_node_keeps_serving() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let target = ("127.0.0.1", ports.sip);
    let local = sock.local_addr().unwrap();
    let bad_cseq = format!("INVITE sip:0501234567@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKbad1\r\nFrom: <sip:1@h>;tag=a\r\nTo: <sip:2@h>\r\nCall-ID: bad-1\r\nCSeq: notanumber INVITE\r\nContent-Length: 0\r\n\r\n");
    let mut buf = [0u8; 4096];
    sock.send_to(b"\x00\x01garbage that is not SIP\r\n\r\n", target)
        .unwrap();
    sock.send_to(bad_cseq.as_bytes(), target).unwrap();
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("a 400 for the malformed INVITE");
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("SIP/2.0 400 "), "{reply}");
    assert!(reply.contains("Call-ID: bad-1"));
    let options = format!("OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKopt1\r\nFrom: <sip:1@h>;tag=a\r\nTo: <sip:2@h>\r\nCall-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    sock.send_to(options.as_bytes(), target).unwrap();
    let (n, _) = sock.recv_from(&mut buf).expect("OPTIONS answered");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 200 OK"));
    // Both malformed datagrams counted (two receiver tasks may take them in either order).
    node.wait_until(Duration::from_secs(5), "two parse errors counted", || {
        node.metric("tsunagu_sip_parse_errors_total") == 2.0
    });
    assert_eq!(node.metric("tsunagu_active_calls"), 0.0);
}

#[test]
fn sigterm_drains_new_calls_get_503_and_running_calls_finish() {
    let ports = Ports::take();
    let mut node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    // One long call in the background.
    let long =
        std::thread::spawn(move || uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "4000"]));
    node.wait_until(Duration::from_secs(10), "the call to be up", || {
        node.metric("tsunagu_active_calls") == 1.0
    });
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &node.pid().to_string()])
        .status();
    node.wait_until(Duration::from_secs(10), "readiness to turn false", || {
        node.try_get("/readyz", None)
            .map(|r| r.status == 503 && r.body == "draining\n")
            .unwrap_or(false)
    });
    let mut late = ports;
    late.uac += 5;
    late.uac_media += 20;
    let refused = uac_expecting(503, node.dir.path(), late, "0501234567", 1, &[]);
    assert_eq!(
        (refused.exit, refused.successful),
        (0, 1),
        "{}",
        refused.output
    );
    let run = long.join().unwrap();
    assert_eq!(
        (run.exit, run.successful),
        (0, 1),
        "the running call finished normally: {}",
        run.output
    );
    assert_eq!(node.terminate(), Some(0));
    // The record reached the store before exit: reopen the store file directly.
    let store = tsunagu_store::SqliteStore::open(&node.dir.path().join("data/tsunagu.db")).unwrap();
    let op = tsunagu_store::Store::key_owner(&store, &tsunagu_store::hash_api_key(&key))
        .unwrap()
        .unwrap()
        .operator_id;
    let mut n = 0;
    tsunagu_store::Store::scan_calls(
        &store,
        &tsunagu_store::CallQuery {
            operator_id: op,
            ..Default::default()
        },
        &mut |r| {
            assert_eq!(r.result, tsunagu_store::CallResult::Answered);
            n += 1;
            true
        },
    )
    .unwrap();
    assert_eq!(n, 1);
}

/// A trunk that says nothing at all (a black hole: not even 100 Trying) is a trunk
/// problem: after 5 s the route's next trunk is tried, well before the destination's
/// ring time (20 s). It was taken for a callee who did not answer at the ring time,
/// and the next trunk was never tried (a review).
#[test]
fn a_silent_trunk_fails_over_to_the_routes_next_trunk() {
    let ports = Ports::take();
    let hole_port = ports.uas + 6;
    let extra = format!(
        r#"
[[trunks]]
name = "hole"
outbound = "udp:127.0.0.1:{hole_port}"
[[routes]]
prefix = "032"
trunks = ["hole", "carrier-a"]
"#
    );
    let node = Node::start(ports, "127.0.0.1/32", &extra);
    let dests = r#"[{"number": "0322220000", "ring_seconds": 20}]"#;
    let (key, _) = node.provision("0501234567", dests, "{}");
    let hole = Ear::bind(hole_port);
    let answer = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let started = std::time::Instant::now();
    let run = uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "200"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered through the next trunk after {:?}",
        started.elapsed()
    );
    assert!(hole
        .packets()
        .iter()
        .any(|(_, p)| p.starts_with(b"INVITE ")));
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["result"], "answered", "{call}");
    assert_eq!(call["trunk"], "carrier-a", "{call}");
    let first = &call["attempts"][0];
    assert_eq!(
        (first["trunk"].as_str(), first["sip_code"].as_u64()),
        (Some("hole"), Some(408)),
        "{call}"
    );
    assert!(answer.messages().contains("INVITE sip:0322220000@"));
}

#[test]
fn sequential_forwarding_and_trunk_failover() {
    let ports = Ports::take();
    let (busy_port, down_port) = (ports.uas + 4, ports.uas + 5);
    // 031… goes to a busy phone; 032… to a trunk that answers 503, then to carrier-a.
    let extra = format!(
        r#"
[[trunks]]
name = "busy"
outbound = "udp:127.0.0.1:{busy_port}"
[[trunks]]
name = "down"
outbound = "udp:127.0.0.1:{down_port}"
[[routes]]
prefix = "031"
trunks = ["busy"]
[[routes]]
prefix = "032"
trunks = ["down", "carrier-a"]
"#
    );
    let node = Node::start(ports, "127.0.0.1/32", &extra);
    let dests = r#"[{"number": "0311110000", "ring_seconds": 20}, {"number": "0322220000", "ring_seconds": 20}]"#;
    let (key, _) = node.provision("0501234567", dests, "{}");
    let busy = Uas::start_on(
        "uas_busy.xml",
        busy_port,
        ports.uas_media + 10,
        node.dir.path(),
        &[],
    );
    let down = Uas::start_on(
        "uas_unavailable.xml",
        down_port,
        ports.uas_media + 20,
        node.dir.path(),
        &[],
    );
    let answer = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);

    let run = uac("uac.xml", ports, "0501234567", 5, 10, &["-d", "200"]);
    assert_eq!((run.exit, run.successful), (0, 5), "{}", run.output);
    assert_eq!(
        busy.messages().matches("INVITE sip:0311110000@").count(),
        5,
        "first destination tried"
    );
    assert_eq!(
        down.messages().matches("INVITE sip:0322220000@").count(),
        5,
        "second destination, first trunk"
    );
    assert_eq!(
        answer.messages().matches("INVITE sip:0322220000@").count(),
        5,
        "second destination, next trunk"
    );
    for c in node.wait_for_calls(&key, 5) {
        assert_eq!(c["result"], "answered");
        assert_eq!(c["destination_number"], "0322220000");
        assert_eq!(c["trunk"], "carrier-a");
        // The log keeps every attempt and which one answered.
        let attempts: Vec<(&str, &str, u64, &str)> = c["attempts"]
            .as_array()
            .unwrap_or_else(|| panic!("no attempts: {c}"))
            .iter()
            .map(|a| {
                (
                    a["destination"].as_str().unwrap(),
                    a["trunk"].as_str().unwrap(),
                    a["sip_code"].as_u64().unwrap(),
                    a["outcome"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            attempts,
            [
                ("0311110000", "busy", 486, "busy"),
                ("0322220000", "down", 503, "failed"),
                ("0322220000", "carrier-a", 200, "answered"),
            ]
        );
    }
    assert_eq!(node.metric("tsunagu_forward_attempts_sum"), 15.0);
    assert_eq!(node.metric("tsunagu_forward_attempts_count"), 5.0);
    // Per-trunk counts: what each trunk was sent and answered.
    for (series, want) in [
        (
            "tsunagu_trunk_calls_total{trunk=\"carrier-a\",direction=\"inbound\"}",
            5.0,
        ),
        (
            "tsunagu_trunk_calls_total{trunk=\"busy\",direction=\"outbound\"}",
            5.0,
        ),
        (
            "tsunagu_trunk_calls_total{trunk=\"down\",direction=\"outbound\"}",
            5.0,
        ),
        (
            "tsunagu_trunk_calls_total{trunk=\"carrier-a\",direction=\"outbound\"}",
            5.0,
        ),
        (
            "tsunagu_trunk_responses_total{trunk=\"busy\",code=\"486\"}",
            5.0,
        ),
        (
            "tsunagu_trunk_responses_total{trunk=\"down\",code=\"503\"}",
            5.0,
        ),
        (
            "tsunagu_trunk_responses_total{trunk=\"carrier-a\",code=\"200\"}",
            5.0,
        ),
    ] {
        assert_eq!(node.metric(series), want, "{series}");
    }
}

#[test]
fn uac_scenario_tolerates_a_180_after_the_200() {
    // SIPp against SIPp: the destination sends a stale 180 after the 200 and ACK.
    let ports = Ports::take();
    let dir = tempfile::tempdir().unwrap();
    let _uas = Uas::start("uas_late_180.xml", ports, dir.path(), &[]);
    let direct = Ports {
        sip: ports.uas,
        ..ports
    };
    let run = uac("uac.xml", direct, "0501234567", 3, 10, &["-d", "200"]);
    assert_eq!(
        (run.exit, run.successful, run.failed),
        (0, 3, 0),
        "{}",
        run.output
    );
    assert!(
        run.output.contains("180 <----------         3"),
        "the late 180s arrived: {}",
        run.output
    );
}

#[test]
fn a_trunk_that_misses_keepalives_is_skipped() {
    let ports = Ports::take();
    let dead = ports.uas + 6; // nothing listens there
    let extra = format!(
        r#"
[[trunks]]
name = "dead"
outbound = "udp:127.0.0.1:{dead}"
options_interval_seconds = 1
[[routes]]
prefix = "03"
trunks = ["dead", "carrier-a"]
"#
    );
    let node = Node::start(ports, "127.0.0.1/32", &extra);
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    node.wait_until(
        Duration::from_secs(15),
        "the dead trunk to be marked down",
        || {
            node.metric("tsunagu_trunk_up{trunk=\"dead\"}") == 0.0
                && node
                    .try_get("/metrics", None)
                    .map(|r| r.body.contains("tsunagu_trunk_up{trunk=\"dead\"} 0"))
                    .unwrap_or(false)
        },
    );
    let run = uac("uac.xml", ports, "0501234567", 5, 10, &["-d", "100"]);
    assert_eq!((run.exit, run.successful), (0, 5), "{}", run.output);
    assert_eq!(
        node.wait_for_calls(&key, 5)
            .iter()
            .filter(|c| c["trunk"] == "carrier-a")
            .count(),
        5
    );
    assert_eq!(
        node.metric("tsunagu_sip_requests_sent_total{method=\"INVITE\"}"),
        5.0,
        "no INVITE went to the dead trunk"
    );
    assert!(node.metric("tsunagu_trunk_ping_failures_total{trunk=\"dead\"}") >= 2.0);
}

/// A trunk "slow" for calls from 127.0.0.3, capped at `max_cps` with `shaping_ms`.
fn slow_trunk(max_cps: u32, shaping_ms: u32) -> String {
    format!(
        "\n[[trunks]]\nname = \"slow\"\ninbound = [\"127.0.0.3/32\"]\nmax_cps = {max_cps}\nshaping_ms = {shaping_ms}\n"
    )
}

#[test]
fn a_trunk_over_its_call_rate_is_shaped_then_refused() {
    let ports = Ports::take();
    // Calls from 127.0.0.3 arrive on a trunk capped at 5 calls/s with 300 ms of shaping.
    let node = Node::start(ports, "127.0.0.1/32", &slow_trunk(5, 300));
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let run = uac(
        "uac.xml",
        ports,
        "0501234567",
        20,
        40,
        &["-d", "100", "-i", "127.0.0.3"],
    );
    let shaped = node.metric("tsunagu_invites_shaped_total{trunk=\"slow\"}");
    let refused = node.metric("tsunagu_invites_rejected_total{code=\"503\",reason=\"trunk_cps\"}");
    assert!(shaped >= 1.0, "some calls waited for their turn: {shaped}");
    assert!(
        refused >= 1.0,
        "calls beyond the shaping delay were refused: {refused}"
    );
    assert_eq!(
        run.successful as f64 + refused,
        20.0,
        "every call was answered or refused: {}",
        run.output
    );
    assert!(
        run.successful as f64 >= 5.0 + shaped,
        "the burst and the shaped calls all went through"
    );
    assert_eq!(
        node.wait_for_calls(&key, run.successful as usize).len() as u64,
        run.successful
    );
}

/// A trunk's `max_channels` refuses calls past it (503, counted) and frees a channel
/// as each call ends. (The check and the count are one atomic step: see
/// `context::tests::slots_taken_at_once_never_pass_their_limit`.)
#[test]
fn a_trunk_at_its_channel_limit_refuses_more_calls_until_one_ends() {
    let ports = Ports::take();
    let narrow =
        "\n[[trunks]]\nname = \"narrow\"\ninbound = [\"127.0.0.3/32\"]\nmax_channels = 2\n";
    let node = Node::start(ports, "127.0.0.1/32", narrow);
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    // Six calls within 60 ms, each held 2 s: two get a channel.
    let run = uac(
        "uac.xml",
        ports,
        "0501234567",
        6,
        100,
        &["-d", "2000", "-i", "127.0.0.3"],
    );
    assert_eq!((run.successful, run.failed), (2, 4), "{}", run.output);
    assert_eq!(
        node.metric("tsunagu_invites_rejected_total{code=\"503\",reason=\"trunk_channels\"}"),
        4.0
    );
    assert_eq!(node.wait_for_calls(&key, 2).len(), 2);
    // Both ended: the channels are free again.
    let again = uac(
        "uac.xml",
        ports,
        "0501234567",
        2,
        100,
        &["-d", "100", "-i", "127.0.0.3"],
    );
    assert_eq!((again.successful, again.failed), (2, 0), "{}", again.output);
}

/// A trunk "narrow" of one channel toward the callee, the first of the route to it
/// (then "carrier-a").
fn narrow_trunk_first(ports: Ports) -> String {
    format!(
        "\n[[trunks]]\nname = \"narrow\"\ninbound = [\"127.0.0.3/32\"]\noutbound = \"udp:127.0.0.1:{}\"\nmax_channels = 1\n\n[[routes]]\nprefix = \"03\"\ntrunks = [\"narrow\", \"carrier-a\"]\n",
        ports.uas
    )
}

/// A trunk's channels count the calls sent to it too: with one channel, the second
/// of two calls routed to it goes to the route's next trunk.
#[test]
fn a_trunk_s_channels_count_the_calls_sent_to_it() {
    let ports = Ports::take();
    let narrow = narrow_trunk_first(ports);
    let node = Node::start(ports, "127.0.0.1/32", &narrow);
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    // Two calls 10 ms apart, each held 2 s.
    let run = uac("uac.xml", ports, "0501234567", 2, 100, &["-d", "2000"]);
    assert_eq!((run.successful, run.failed), (2, 0), "{}", run.output);
    let sent = |trunk: &str| {
        node.metric(&format!(
            "tsunagu_trunk_calls_total{{trunk=\"{trunk}\",direction=\"outbound\"}}"
        ))
    };
    assert_eq!((sent("narrow"), sent("carrier-a")), (1.0, 1.0));
    assert_eq!(
        node.metric("tsunagu_trunk_channels_full_total{trunk=\"narrow\"}"),
        1.0
    );
    let calls = node.wait_for_calls(&key, 2);
    assert!(calls.iter().all(|c| c["result"] == "answered"), "{calls:?}");
    // The call that found the trunk full says so in its attempts.
    let tried: Vec<Vec<(String, String)>> = calls
        .iter()
        .map(|c| {
            c["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
                    (s("trunk"), s("outcome"))
                })
                .collect()
        })
        .collect();
    let full = |t: &str, o: &str| (t.to_string(), o.to_string());
    assert!(
        tried.contains(&vec![full("narrow", "answered")])
            && tried.contains(&vec![
                full("narrow", "trunk_channels"),
                full("carrier-a", "answered")
            ]),
        "{tried:?}"
    );
}

/// A call waiting for its turn (shaped) when the node is told to stop is neither
/// forgotten nor dropped: the drain waits for it, it runs, and it has its record. (It
/// used to wait outside the call table: the drain saw no call, the node exited, and
/// the caller, who had a 100 Trying, got nothing more and the call no record.)
#[test]
fn a_shaped_call_waiting_at_shutdown_still_runs_and_is_logged() {
    let ports = Ports::take();
    // Calls from 127.0.0.3: one per second, the next waits up to 3 s for its turn.
    let mut node = Node::start(ports, "127.0.0.1/32", &slow_trunk(1, 3000));
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let _uas = Uas::start("uas_busy.xml", ports, node.dir.path(), &[]);
    let sock = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
    let me = sock.local_addr().unwrap();
    for call in ["shaped-a", "shaped-b"] {
        sock.send_to(
            crate::sip_edge::invite(me, call).as_bytes(),
            ("127.0.0.1", ports.sip),
        )
        .unwrap();
    }
    node.wait_until(
        Duration::from_secs(5),
        "the second call to be shaped",
        || node.metric("tsunagu_invites_shaped_total{trunk=\"slow\"}") == 1.0,
    );
    assert_eq!(node.terminate(), Some(0), "{}", node.log());
    let got = datagrams_within(&sock, Duration::from_millis(200));
    assert!(
        got.iter()
            .any(|m| m.starts_with("SIP/2.0 486 ") && m.contains("Call-ID: shaped-b@edge")),
        "the shaped caller got its final answer: {got:?}"
    );
    node.start_again();
    let calls = node.wait_for_calls(&key, 2);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls.iter().all(|c| c["result"] == "busy"), "{calls:?}");
}

/// `node.worker_threads` sizes the node's runtime (the lever the README gives for nodes
/// sharing a host); by default there is one worker fewer than the CPUs the node may
/// use, at least one.
#[test]
fn worker_threads_size_the_runtime() {
    let ports = Ports::take();
    let mut node = Node::start(ports, "127.0.0.1/32", "");
    let cpus = tsunagu_sip::shard::usable_cpus();
    let default = cpus.saturating_sub(1).max(1);
    assert_eq!(node.metric("tsunagu_runtime_workers"), default as f64);
    node.restart_with_line("node", "worker_threads = 3");
    assert_eq!(node.metric("tsunagu_runtime_workers"), 3.0);
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the node's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// `sip.udp_receive`: `auto` (the default) reads SIP over UDP from the node's runtime
/// with a standby thread, `threads` on receive threads of its own, and `runtime` (here
/// by its former name, `udp_receive_threads = false`) with neither; calls go through
/// in each.
#[test]
fn every_udp_receive_mode_carries_calls() {
    let ports = Ports::take();
    let mut node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let config = node.dir.path().join("node.toml");
    // (how the mode is set: None for the default, the receive threads present)
    let modes: [(Option<&str>, &[&str]); 3] = [
        (None, &["sip-udp-standby"]),
        (Some("udp_receive = \"threads\""), &["sip-udp-rx"]),
        (Some("udp_receive_threads = false"), &[]),
    ];
    let mut logged = 0;
    for (line, receivers) in modes {
        if let Some(line) = line {
            let text = std::fs::read_to_string(&config).expect("config");
            let text = text.replace("udp_receive = \"threads\"\n", "");
            std::fs::write(&config, text).expect("config");
            node.restart_with_line("sip", line);
        }
        let mut threads = thread_names(node.pid());
        threads.retain(|t| t.starts_with("sip-udp"));
        threads.sort();
        threads.dedup();
        assert_eq!(threads, receivers, "{line:?}");
        let run = uac("uac.xml", ports, "0501234567", 20, 20, &[]);
        assert_eq!(
            (run.exit, run.successful, run.failed),
            (0, 20, 0),
            "{line:?}: {}",
            run.output
        );
        logged += 20;
        assert_eq!(node.wait_for_calls(&key, logged).len(), logged);
    }
}

/// A callee whose 2xx to a re-INVITE names a new Contact (its SBC failed over to
/// another address) gets the node's later requests there: a target refresh (RFC 3261
/// 12.2.1.2). The caller's BYE reaches the new address, not the old one.
#[test]
fn a_callee_s_new_contact_gets_the_node_s_later_requests() {
    let ports = Ports::take();
    let moved = ports.sip + 8;
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    // uas_hold.xml, its answer to the hold re-INVITE (the last Contact) naming `moved`.
    let text = std::fs::read_to_string(scenario("uas_hold.xml")).unwrap();
    let contact = "Contact: <sip:[local_ip]:[local_port];transport=[transport]>";
    let i = text.rfind(contact).expect("the hold answer's Contact");
    let edited = format!(
        "{}Contact: <sip:[local_ip]:{moved};transport=[transport]>{}",
        &text[..i],
        &text[i + contact.len()..]
    );
    let path = node.dir.path().join("uas_hold_moves.xml");
    std::fs::write(&path, edited).unwrap();
    let _uas = Uas::start(path.to_str().unwrap(), ports, node.dir.path(), &[]);
    let new_address = std::net::UdpSocket::bind(("127.0.0.1", moved)).unwrap();
    new_address
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let run = uac("uac_hold.xml", ports, "0501234567", 1, 1, &["-d", "200"]);
    assert_eq!(run.successful, 1, "{}", run.output);
    // The ACK of that 2xx already goes there; then the BYE.
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    let (bye, from) = loop {
        let (n, from) = new_address
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no BYE at the callee's new Contact ({e}); got {seen:?}"));
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.starts_with("BYE ") {
            break (text, from);
        }
        seen.push(text.lines().next().unwrap_or_default().to_string());
    };
    // Answered as the callee would, so the call ends now.
    let ok = crate::dialogs::crlf(&crate::dialogs::ok_to(&bye));
    new_address.send_to(ok.as_bytes(), from).unwrap();
    assert!(
        seen.iter()
            .any(|first| first.starts_with(&format!("ACK sip:127.0.0.1:{moved}"))),
        "the ACK of the hold answer went to the new Contact before the BYE: {seen:?}"
    );
    assert!(
        bye.starts_with(&format!("BYE sip:127.0.0.1:{moved}")),
        "{bye}"
    );
    assert_eq!(node.wait_for_calls(&key, 1)[0]["result"], "answered");
}

#[test]
fn hold_reinvites_pass_through_both_ways() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let uas = Uas::start("uas_hold.xml", ports, node.dir.path(), &[]);
    let trace = node.dir.path().join("uac-hold.log");
    let trace_arg = trace.display().to_string();
    let run = uac(
        "uac_hold.xml",
        ports,
        "0501234567",
        3,
        10,
        &["-d", "200", "-trace_msg", "-message_file", &trace_arg],
    );
    assert_eq!((run.exit, run.successful), (0, 3), "{}", run.output);
    let at_callee = uas.messages();
    assert_eq!(
        at_callee.matches("a=sendonly").count(),
        3,
        "the callee received the hold offer"
    );
    assert!(
        !at_callee.contains(&format!("m=audio {} ", ports.uac_media)),
        "the offer points at the node, not the caller"
    );
    let at_caller = std::fs::read_to_string(&trace).unwrap();
    assert_eq!(
        at_caller.matches("a=recvonly").count(),
        3,
        "the caller received the callee's answer"
    );
    assert!(
        !at_caller.contains(&format!("m=audio {} ", ports.uas_media)),
        "the answer points at the node, not the callee"
    );
    assert!(node
        .wait_for_calls(&key, 3)
        .iter()
        .all(|c| c["result"] == "answered"));
}

#[test]
fn asserted_identity_is_believed_and_sent_only_for_trusted_trunks() {
    let ports = Ports::take();
    let trusted_out = ports.uas + 7;
    // 127.0.0.3 is a trusted carrier; carrier-a (127.0.0.1, to the UAS) is not.
    // 0322… goes out on a trusted trunk to a second UAS.
    let extra = format!(
        r#"
[[trunks]]
name = "pstn"
inbound = ["127.0.0.3/32"]
trusted = true
[[trunks]]
name = "trusted-out"
outbound = "udp:127.0.0.1:{trusted_out}"
trusted = true
[[routes]]
prefix = "0322"
trunks = ["trusted-out"]
"#
    );
    let node = Node::start(ports, "127.0.0.1/32", &extra);
    let (key, adv) = node.provision("0501234567", DEST, "{}");
    node.add_number(
        &key,
        &adv,
        "0502222222",
        r#"[{"number": "0322223333"}]"#,
        "{}",
    );
    let untrusted_uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let trusted_uas = Uas::start_on(
        "uas_answer.xml",
        trusted_out,
        ports.uas_media + 30,
        node.dir.path(),
        &[],
    );
    let with_pai = scenario_with_header(
        node.dir.path(),
        "uac.xml",
        "P-Asserted-Identity: <sip:09011112222@127.0.0.3>",
    );

    let from_trusted = uac(
        &with_pai,
        ports,
        "0501234567",
        1,
        1,
        &["-d", "100", "-i", "127.0.0.3"],
    );
    assert_eq!(from_trusted.successful, 1, "{}", from_trusted.output);
    let from_untrusted = uac(&with_pai, ports, "0501234567", 1, 1, &["-d", "100"]);
    assert_eq!(from_untrusted.successful, 1, "{}", from_untrusted.output);
    let to_trusted = uac(
        &with_pai,
        ports,
        "0502222222",
        1,
        1,
        &["-d", "100", "-i", "127.0.0.3"],
    );
    assert_eq!(to_trusted.successful, 1, "{}", to_trusted.output);
    // From an untrusted trunk to the trusted one: the caller's From is nobody's
    // assertion (RFC 3325), so no P-Asserted-Identity goes with it.
    let unverified_to_trusted = uac("uac.xml", ports, "0502222222", 1, 1, &["-d", "100"]);
    assert_eq!(
        unverified_to_trusted.successful, 1,
        "{}",
        unverified_to_trusted.output
    );

    let calls = node.wait_for_calls(&key, 4);
    let caller_of = |n: &str| {
        calls
            .iter()
            .filter(|c| c["tracking_number"] == n)
            .map(|c| c["caller_number"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let mut first = caller_of("0501234567");
    first.sort();
    assert_eq!(
        first,
        vec!["09011112222", "09012345678"],
        "PAI believed from the trusted trunk only (else From)"
    );
    let mut second = caller_of("0502222222");
    second.sort();
    assert_eq!(second, vec!["09011112222", "09012345678"]);
    assert!(
        !untrusted_uas.messages().contains("P-Asserted-Identity"),
        "no identity to an untrusted trunk"
    );
    assert!(
        trusted_uas
            .messages()
            .contains("P-Asserted-Identity: <sip:09011112222@"),
        "identity sent to the trusted trunk"
    );
    assert_eq!(
        trusted_uas
            .messages()
            .matches("P-Asserted-Identity")
            .count(),
        1,
        "an unverified From is asserted to nobody: {}",
        trusted_uas.messages()
    );
}

/// INVITEs refused for what they ask of the session: each row is a header the caller
/// adds, the status it must get, and the header that says why.
#[test]
fn invites_asking_for_what_we_do_not_do_are_refused_with_the_reason() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let dir = node.dir.path();
    let rows = [
        ("Session-Expires: 30", 422, "Min-SE: 90"),
        ("Require: precondition", 420, "Unsupported: precondition"),
        (
            "Require: timer, precondition",
            420,
            "Unsupported: precondition",
        ),
    ];
    for (i, (header, code, why)) in rows.iter().enumerate() {
        let with_header = scenario_with_header(dir, "uac_expect_failure.xml", header);
        let expecting = dir.join(format!("uac_{i}_{code}.xml"));
        std::fs::write(
            &expecting,
            std::fs::read_to_string(&with_header)
                .unwrap()
                .replace("[expect]", &code.to_string()),
        )
        .unwrap();
        let trace = dir.join(format!("uac-{i}.log")).display().to_string();
        let run = uac(
            &expecting.display().to_string(),
            ports,
            "0501234567",
            1,
            1,
            &["-trace_msg", "-message_file", &trace],
        );
        assert_eq!(
            (run.exit, run.successful),
            (0, 1),
            "{header}: {}",
            run.output
        );
        let messages = std::fs::read_to_string(&trace).unwrap();
        assert!(
            messages.contains(why),
            "{header}: {code} carries {why}\n{messages}"
        );
    }
    assert!(node.calls(&key, "").is_empty());
    // Only supporting 100rel (not requiring it), or requiring timers, is fine.
    let _uas = Uas::start("uas_answer.xml", ports, dir, &[]);
    for header in ["Supported: 100rel, timer", "Require: timer"] {
        let scenario = scenario_with_header(dir, "uac.xml", header);
        let run = uac(&scenario, ports, "0501234567", 1, 1, &["-d", "100"]);
        assert_eq!(
            (run.exit, run.successful),
            (0, 1),
            "{header}: {}",
            run.output
        );
    }
    assert_eq!(node.wait_for_calls(&key, 2).len(), 2);
}

#[test]
fn redirects_are_followed_only_from_trunks_that_allow_it() {
    let ports = Ports::take();
    let redirect_port = ports.uas + 4;
    let extra = format!(
        r#"
[[trunks]]
name = "follows"
outbound = "udp:127.0.0.1:{redirect_port}"
redirects = "follow"
[[trunks]]
name = "strict"
outbound = "udp:127.0.0.1:{redirect_port}"
[[routes]]
prefix = "031"
trunks = ["follows"]
[[routes]]
prefix = "032"
trunks = ["strict"]
"#
    );
    let node = Node::start(ports, "127.0.0.1/32", &extra);
    let (key, adv) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    node.add_number(
        &key,
        &adv,
        "0501110000",
        r#"[{"number": "0322220000"}]"#,
        "{}",
    );
    // Both trunks lead to a phone that redirects to 0399990000 (routed to carrier-a).
    let redirecting = Uas::start_on(
        "uas_redirect.xml",
        redirect_port,
        ports.uas_media + 10,
        node.dir.path(),
        &["-key", "target", "0399990000"],
    );
    let answer = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let run = uac("uac.xml", ports, "0501234567", 2, 10, &["-d", "100"]);
    assert_eq!((run.exit, run.successful), (0, 2), "{}", run.output);
    assert_eq!(
        redirecting
            .messages()
            .matches("INVITE sip:0311112222@")
            .count(),
        2
    );
    assert_eq!(
        answer.messages().matches("INVITE sip:0399990000@").count(),
        2
    );
    for c in node.wait_for_calls(&key, 2) {
        assert_eq!(c["result"], "answered");
        assert_eq!(c["destination_number"], "0399990000");
        assert_eq!(c["trunk"], "carrier-a");
    }
    // The strict trunk's 302 is a failure: no new INVITE, the caller gets 502.
    let run = uac_expecting(502, node.dir.path(), ports, "0501110000", 1, &[]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    assert_eq!(
        answer.messages().matches("INVITE sip:0399990000@").count(),
        2
    );
    node.wait_until(Duration::from_secs(10), "the failed call's record", || {
        node.calls(&key, "&number=0501110000").len() == 1
    });
    let failed = node.calls(&key, "&number=0501110000");
    assert_eq!(failed[0]["result"], "failed");
}

#[test]
fn schedules_and_absence_refuse_or_forward_calls_when_closed() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let patch = |body: &str| node.set_number(&key, "0501234567", body);
    let bad = node.patch_number(
        &key,
        "0501234567",
        r#"{"schedule": {"weekly": {"mon": [{"start": "18:00", "end": "09:00"}]}}}"#,
    );
    assert_eq!(
        (bad.status, bad.json()["error"]["field"].as_str()),
        (422, Some("schedule.weekly.mon[0]")),
        "{}",
        bad.body
    );
    let bad = node.patch_number(
        &key,
        "0501234567",
        r#"{"schedule": {"time_zone": "Europe/Paris"}}"#,
    );
    assert_eq!(
        bad.json()["error"]["field"],
        "schedule.time_zone",
        "{}",
        bad.body
    );
    let uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let all_day = r#"[{"start": "00:00", "end": "24:00"}]"#;
    let every_day = format!(
        r#"{{"mon": {all_day}, "tue": {all_day}, "wed": {all_day}, "thu": {all_day}, "fri": {all_day}, "sat": {all_day}, "sun": {all_day}}}"#
    );

    // 1. No hours on any day: closed, refused 480.
    patch(r#"{"schedule": {"weekly": {}, "closed": {"action": "reject"}}}"#);
    let run = uac_expecting(480, node.dir.path(), ports, "0501234567", 1, &[]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    // 2. Open every day all day: the call goes through.
    patch(&format!(r#"{{"schedule": {{"weekly": {every_day}}}}}"#));
    let run = uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "100"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    // 3. The absence switch closes it whatever the hours say.
    patch(r#"{"absent": true}"#);
    let run = uac_expecting(480, node.dir.path(), ports, "0501234567", 1, &[]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    // 4. Closed, forwarding to a call centre.
    patch(
        r#"{"absent": false, "schedule": {"weekly": {}, "closed": {"action": "forward", "destination": "0399990000"}}}"#,
    );
    let run = uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "100"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    // 5. The same, and the caller hangs up while the call centre rings: unanswered
    // at the closed destination, so `out_of_hours` (it was logged `cancelled`).
    drop(uas);
    let calls = {
        let _uas = Uas::start("uas_no_answer.xml", ports, node.dir.path(), &[]);
        let run = uac("uac_cancel.xml", ports, "0501234567", 1, 1, &["-d", "300"]);
        assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
        // Waited for with the callee still up to answer the node's CANCEL.
        node.wait_for_calls(&key, 5)
    };
    let results: Vec<&str> = calls
        .iter()
        .map(|c| c["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        vec![
            "out_of_hours",
            "answered",
            "absent",
            "answered",
            "out_of_hours"
        ]
    );
    assert_eq!(calls[4]["tracking_params"]["closed"], "out_of_hours");
    assert_eq!(calls[4]["sip_code"], 487, "{}", calls[4]);
    assert_eq!(calls[3]["destination_number"], "0399990000");
    assert_eq!(calls[3]["tracking_params"]["closed"], "out_of_hours");
    assert_eq!(calls[1]["destination_number"], "0311112222");
}

#[test]
fn queued_callers_connect_in_turn_or_time_out() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let bad = node.patch_number(
        &key,
        "0501234567",
        r#"{"queue": {"max_lines": 0, "max_wait_seconds": 5}}"#,
    );
    assert_eq!(
        bad.json()["error"]["field"],
        "queue.max_lines",
        "{}",
        bad.body
    );
    node.set_number(
        &key,
        "0501234567",
        r#"{"queue": {"max_lines": 1, "max_wait_seconds": 10}}"#,
    );
    let uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    // Three callers half a second apart on one line, each talking 1.5 s: the second
    // and third wait (ringback) and connect in turn.
    let run = uac("uac.xml", ports, "0501234567", 3, 2, &["-d", "1500"]);
    assert_eq!((run.exit, run.successful), (0, 3), "{}", run.output);
    assert_eq!(uas.messages().matches("INVITE sip:0311112222@").count(), 3);
    let calls = node.wait_for_calls(&key, 3);
    assert!(calls.iter().all(|c| c["result"] == "answered"), "{calls:?}");
    // On one line the calls never overlapped: each answered after the previous ended.
    let mut spans: Vec<(String, String)> = calls
        .iter()
        .map(|c| {
            (
                c["answered_at"].as_str().unwrap().to_string(),
                c["ended_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "a queued call was connected while the line was busy: {spans:?}"
        );
    }
    assert_eq!(node.metric("tsunagu_calls_queued_total"), 2.0);
    assert_eq!(node.metric("tsunagu_queue_wait_seconds_count"), 2.0);

    // A wait longer than max_wait_seconds ends the call: 480, result queue_timeout.
    node.set_number(
        &key,
        "0501234567",
        r#"{"queue": {"max_lines": 1, "max_wait_seconds": 1}}"#,
    );
    let run = uac("uac.xml", ports, "0501234567", 2, 10, &["-d", "3000"]);
    assert_eq!((run.successful, run.failed), (1, 1), "{}", run.output);
    let calls = node.wait_for_calls(&key, 5);
    let timed_out: Vec<_> = calls
        .iter()
        .filter(|c| c["result"] == "queue_timeout")
        .collect();
    assert_eq!(timed_out.len(), 1, "{calls:?}");
    assert_eq!(timed_out[0]["sip_code"], 480);
    assert_eq!(node.metric("tsunagu_queue_waiting"), 0.0);
}

/// A queued caller's wait is the queue's to bound, not `sip.max_ring_seconds`'s: with
/// the guard at 2 s and `max_wait_seconds` at 4, the second caller waits the 4 s and is
/// logged `queue_timeout`. The guard counted the queue, refused it at 2 s and logged it
/// `failed` with `end_reason = "max_ring"` (a review: a 300 s queue was cut at 180 s).
#[test]
fn the_ring_guard_leaves_the_queue_wait_to_the_queue() {
    let ports = Ports::take();
    let node = Node::start_with_sip(ports, "127.0.0.1/32", "max_ring_seconds = 2", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    node.set_number(
        &key,
        "0501234567",
        r#"{"queue": {"max_lines": 1, "max_wait_seconds": 4}}"#,
    );
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    // Two callers half a second apart, the first talking 7 s on the one line.
    let run = uac("uac.xml", ports, "0501234567", 2, 2, &["-d", "7000"]);
    assert_eq!((run.successful, run.failed), (1, 1), "{}", run.output);
    let calls = node.wait_for_calls(&key, 2);
    let waited = calls
        .iter()
        .find(|c| c["result"] != "answered")
        .unwrap_or_else(|| panic!("{calls:?}"));
    assert_eq!(waited["result"], "queue_timeout", "{waited}");
    assert!(waited["end_reason"].is_null(), "{waited}");
}

#[test]
fn the_next_destination_rings_after_the_first_ones_ring_timeout() {
    let ports = Ports::take();
    let silent_port = ports.uas + 4;
    let extra = format!(
        r#"
[[trunks]]
name = "silent"
outbound = "udp:127.0.0.1:{silent_port}"
[[routes]]
prefix = "031"
trunks = ["silent"]
"#
    );
    let node = Node::start(ports, "127.0.0.1/32", &extra);
    let dests = r#"[{"number": "0311110000", "ring_seconds": 2}, {"number": "0322220000", "ring_seconds": 20}]"#;
    let (key, _) = node.provision("0501234567", dests, "{}");
    let silent = Uas::start_on(
        "uas_no_answer.xml",
        silent_port,
        ports.uas_media + 10,
        node.dir.path(),
        &[],
    );
    let answer = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let run = uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "200"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    assert!(
        silent.messages().contains("CANCEL sip:0311110000@"),
        "the first was cancelled"
    );
    assert_eq!(
        answer.messages().matches("INVITE sip:0322220000@").count(),
        1
    );
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["result"], "answered", "{call}");
    let attempts = call["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{call}");
    assert_eq!(
        (&attempts[0]["outcome"], &attempts[0]["sip_code"]),
        (&serde_json::json!("no_answer"), &serde_json::json!(487))
    );
    assert_eq!(attempts[1]["outcome"], "answered");
    let rang =
        attempts[1]["offset_ms"].as_i64().unwrap() - attempts[0]["offset_ms"].as_i64().unwrap();
    assert!(
        (2000..3000).contains(&rang),
        "second destination rung {rang} ms after the first"
    );
    assert!(call["ring_seconds"].as_u64().unwrap() >= 2, "{call}");
}

/// A caller that asks the node to refresh (`refresher=uas`) while the callee does no
/// session timers is refreshed by the node: its 200 keeps `refresher=uas` (RFC 4028 9)
/// and a re-INVITE naming the node refresher comes every half interval; one refused
/// 491 is sent again soon, so the call outlives its interval and ends when the caller
/// hangs up, not as an expired session.
#[test]
fn the_node_refreshes_a_caller_that_asks_it_to() {
    let ports = Ports::take();
    let node = Node::start_with_sip(ports, "127.0.0.1/32", "min_session_expires = 2", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    // Session-Expires 4: the node refreshes every 2 s and would hang up 3 s after
    // the last refresh; the caller refuses the first (491, tried again within 0.5 s),
    // takes the next two and hangs up (about 4.5 s).
    let run = uac(
        "uac_session_refreshed.xml",
        ports,
        "0501234567",
        1,
        1,
        &["-key", "session_expires", "4"],
    );
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["result"], "answered", "{call}");
    assert!(call["end_reason"].is_null(), "{call}");
    assert!(call["talk_seconds"].as_u64().unwrap() >= 4, "{call}");
    assert_eq!(node.metric("tsunagu_sessions_expired_total"), 0.0);
    let messages = uas.messages();
    assert!(
        messages.matches("INVITE sip:").count() == 1 && !messages.contains("UPDATE sip:"),
        "the node's refreshes are the caller's leg's alone: {messages}"
    );
    assert!(
        messages.contains("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK"),
        "the callee is told what it may send in the dialog: {messages}"
    );
}

#[test]
fn session_timers_are_agreed_refreshed_end_to_end_and_expire() {
    let ports = Ports::take();
    // A floor of 2 s so the session can expire within the test (90 s in production).
    let node = Node::start_with_sip(ports, "127.0.0.1/32", "min_session_expires = 2", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let uas = Uas::start("uas_refresh.xml", ports, node.dir.path(), &[]);
    // Session-Expires 6: the node checks 4 s after each refresh. The caller refreshes
    // once after 3 s, then goes silent: the node hangs up about 7 s after the answer.
    let run = uac(
        "uac_session_timer.xml",
        ports,
        "0501234567",
        1,
        1,
        &["-d", "3000", "-key", "session_expires", "6"],
    );
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["result"], "answered", "{call}");
    let talk = call["talk_seconds"].as_u64().unwrap();
    assert!(
        (6..=9).contains(&talk),
        "hung up about 4 s after the refresh, not 4 s after the answer: {talk} s"
    );
    assert_eq!(node.metric("tsunagu_sessions_expired_total"), 1.0);
    let messages = uas.messages();
    assert!(
        messages.contains("Session-Expires: 6\r\n"),
        "the callee was asked: {messages}"
    );
    assert!(
        messages.contains("UPDATE sip:") && messages.contains("Session-Expires: 6;refresher=uac"),
        "the refresh reached the callee with its timer: {messages}"
    );
    assert!(messages.contains("BYE sip:"), "the callee was hung up too");

    // Below the floor: 422 with Min-SE.
    let short = scenario_with_header(
        node.dir.path(),
        "uac_expect_failure.xml",
        "Session-Expires: 1",
    );
    let template = std::fs::read_to_string(&short).unwrap();
    std::fs::write(&short, template.replace("[expect]", "422")).unwrap();
    let run = uac(&short, ports, "0501234567", 1, 1, &[]);
    assert_eq!(run.successful, 1, "{}", run.output);
}

/// A callee that answers and hangs up while the caller's answer waits for its PRACK:
/// the caller's dialog is early (it never had the 200), so it gets no BYE (RFC 3261 15)
/// but a refusal of its INVITE (480), and the call is logged failed with no talk time.
/// (It got a BYE on its early dialog, its INVITE was left unanswered and the call was
/// logged answered.)
#[test]
fn a_callee_that_hangs_up_before_the_callers_prack_gets_the_caller_refused() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let uas = Uas::start(
        "uas_early_answer_then_bye.xml",
        ports,
        node.dir.path(),
        &["-d", "500"],
    );
    let run = uac(
        "uac_100rel_callee_hangs_up.xml",
        ports,
        "0501234567",
        1,
        1,
        &[],
    );
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["result"], "failed", "{call}");
    assert_eq!(call["sip_code"], 480, "{call}");
    assert_eq!(call["talk_seconds"], 0, "{call}");
    assert!(call["answered_at"].is_null(), "{call}");
    let messages = uas.messages();
    assert!(
        messages.contains("BYE sip:"),
        "the callee hung up: {messages}"
    );
    // ... and the node answered its BYE (on the callee's dialog, not the caller's).
    let bye_answered = messages
        .split("-----------------------------------------------")
        .any(|m| m.contains("message received") && m.contains("SIP/2.0 200") && m.contains(" BYE"));
    assert!(bye_answered, "the callee's BYE answered: {messages}");
    drop(uas);
}

/// A caller that CANCELs while its answer waits for the PRACK of a reliable 183 never
/// had that answer: its CANCEL stands (487), the answered callee is hung up, and the
/// call is logged cancelled, with no talk time.
#[test]
fn a_cancel_while_the_answer_waits_for_the_prack_stands() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let uas = Uas::start(
        "uas_early_answer.xml",
        ports,
        node.dir.path(),
        &["-d", "1000"],
    );
    let run = uac("uac_100rel_cancel.xml", ports, "0501234567", 1, 1, &[]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["result"], "cancelled", "{call}");
    assert_eq!(call["talk_seconds"], 0, "{call}");
    assert!(call["answered_at"].is_null(), "{call}");
    node.wait_until(Duration::from_secs(5), "the callee to be hung up", || {
        uas.messages().contains("BYE sip:")
    });
}

#[test]
fn callers_requiring_100rel_get_reliable_provisionals_and_the_answer_after_their_prack() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    // The callee sends early media at once and answers after 1 s; the caller PRACKs
    // the reliable 183 only after 1.5 s, so the node must hold the 200 until then.
    let _uas = Uas::start(
        "uas_early_answer.xml",
        ports,
        node.dir.path(),
        &["-d", "1000"],
    );
    let trace = node.dir.path().join("uac-100rel.log");
    let trace_arg = trace.display().to_string();
    let run = uac(
        "uac_100rel.xml",
        ports,
        "0501234567",
        1,
        1,
        &["-d", "200", "-trace_msg", "-message_file", &trace_arg],
    );
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let messages = std::fs::read_to_string(&trace).unwrap();
    let reliable_183s = messages.matches("SIP/2.0 183").count();
    assert!(
        reliable_183s >= 2,
        "the 183 is retransmitted until the PRACK ({reliable_183s} seen)\n{messages}"
    );
    // SIPp's trace: each message after a line of dashes, sent or received.
    let traced: Vec<&str> = messages
        .split("-----------------------------------------------")
        .collect();
    let at = |what: &str, test: &dyn Fn(&str) -> bool| {
        traced
            .iter()
            .position(|m| test(m))
            .unwrap_or_else(|| panic!("no {what} in the trace\n{messages}"))
    };
    let prack = at("PRACK sent", &|m| {
        m.contains("sent") && m.contains("PRACK sip:")
    });
    let answer = at("200 to the INVITE", &|m| {
        m.contains("received") && m.contains("SIP/2.0 200") && m.contains("CSeq: 1 INVITE")
    });
    assert!(
        prack < answer,
        "the INVITE's 200 came after the PRACK\n{messages}"
    );
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["result"], "answered", "{call}");
    // The caller had the 200 only after its PRACK (1.5 s after the 183): the call is
    // answered then, not when the callee answered (1 s), which counted the wait for
    // the PRACK as talk (a review).
    let ms = |field: &str| crate::durability::chrono_ms(call[field].as_str().unwrap());
    assert!(
        ms("answered_at") - ms("started_at") >= 1_400,
        "answered when the caller had the 200: {call}"
    );
}

/// An attempt the call moved on from (no answer at all from its trunk within 5 s)
/// keeps its trunk channel until its INVITE ends: its callee may still ring and
/// connect (the node then cancels or hangs up that leg), and meanwhile it is a call on
/// that trunk. With one channel on the first trunk, a call made meanwhile goes to the
/// route's next trunk; once the late callee's INVITE ends, the channel is free again.
#[test]
fn an_abandoned_attempt_holds_its_trunk_channel_until_its_invite_ends() {
    abandoned_attempt_and_its_channel(true);
}

/// The same attempt's late callee takes the node's CANCEL and rings on, never
/// answering the INVITE (each 180 keeping it alive): the leg is let go 64 s after the
/// call moved on (`call::abandoned::ABANDONED_FOR`), and its channel with it. It was
/// held for as long as the callee rang.
#[test]
fn an_abandoned_attempt_gives_its_channel_back_in_the_end() {
    abandoned_attempt_and_its_channel(false);
}

/// See the two tests above: `ends_it`, whether the late callee answers the INVITE
/// (487) after the CANCEL.
fn abandoned_attempt_and_its_channel(ends_it: bool) {
    use crate::dialogs::{header, on_branch, tag, Party};
    use crate::offer_answer::Callee;
    let ports = Ports::take();
    let narrow = narrow_trunk_first(ports);
    let node = Node::start(ports, "127.0.0.1/32", &narrow);
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    let sent = |trunk: &str| {
        node.metric(&format!(
            "tsunagu_trunk_calls_total{{trunk=\"{trunk}\",direction=\"outbound\"}}"
        ))
    };
    let in_use = || node.metric("tsunagu_trunk_channels{trunk=\"narrow\"}");
    // The next INVITE the callee gets on a branch not seen before (the node
    // retransmits the ones nobody answers).
    let mut branches = std::collections::HashSet::new();
    let mut next_invite = || loop {
        let m = callee.expect("INVITE ");
        if branches.insert(header(&m, "Via").unwrap_or_default().to_string()) {
            break m;
        }
    };
    // The caller's final answer to `invite`, acknowledged.
    let finished = |invite: &str, status: &str| {
        let m = caller.final_response();
        assert!(m.starts_with(&format!("SIP/2.0 {status}")), "{m}");
        let to_tag = tag(header(&m, "To").unwrap());
        caller.send(&on_branch(invite, "ACK", Some(&to_tag)));
    };
    let first = caller.invite("abandon-1", "09012345678", &caller.me());
    caller.send(&first);
    let late = next_invite();
    assert_eq!(
        (sent("narrow"), sent("carrier-a"), in_use()),
        (1.0, 0.0, 1.0)
    );
    // Nothing comes back on "narrow": after 5 s the call tries "carrier-a", busy.
    let moved_on = next_invite();
    // The attempt on "narrow" was handed over just before this INVITE was sent.
    let moved_at = std::time::Instant::now();
    callee.respond(&moved_on, "486 Busy Here", "");
    finished(&first, "486");
    assert_eq!(node.wait_for_calls(&key, 1).len(), 1);
    assert_eq!((sent("narrow"), sent("carrier-a")), (1.0, 1.0));
    assert_eq!(in_use(), 1.0, "the abandoned attempt holds its channel");
    // A second call finds "narrow" held and goes to "carrier-a".
    let second = caller.invite("abandon-2", "09012345678", &caller.me());
    caller.send(&second);
    let second_out = next_invite();
    assert_eq!((sent("narrow"), sent("carrier-a")), (1.0, 2.0));
    assert_eq!(
        node.metric("tsunagu_trunk_channels_full_total{trunk=\"narrow\"}"),
        1.0
    );
    callee.respond(&second_out, "486 Busy Here", "");
    finished(&second, "486");
    // The late callee rings at last: the node cancels it, and its 487 ends the
    // attempt and gives the channel back; or it rings on, and the leg is let go in
    // the end (the call moved on about 5 s after the first INVITE).
    callee.respond(&late, "180 Ringing", "");
    let cancel = callee.expect("CANCEL ");
    callee.ok(&cancel);
    if ends_it {
        callee.respond(&late, "487 Request Terminated", "");
        node.wait_until(
            Duration::from_secs(5),
            "the abandoned attempt's channel to be given back",
            || in_use() == 0.0,
        );
    } else {
        let cancelled_at = std::time::Instant::now();
        let mut rang = cancelled_at;
        node.wait_until(
            Duration::from_secs(75),
            "the ringing abandoned attempt's channel to be given back",
            || {
                if rang.elapsed() > Duration::from_secs(15) {
                    callee.respond(&late, "180 Ringing", "");
                    rang = std::time::Instant::now();
                }
                in_use() == 0.0
            },
        );
        assert!(
            cancelled_at.elapsed() > Duration::from_secs(45),
            "let go at its deadline, not before: {:?}",
            cancelled_at.elapsed()
        );
        // At its deadline: 64 s after the call moved on (the metric read every 50 ms).
        let held = moved_at.elapsed();
        assert!(
            (Duration::from_secs(62)..Duration::from_secs(68)).contains(&held),
            "the channel was held {held:?} after the call moved on, not 64 s"
        );
        // The leg still answers for itself: a late answer gets its ACK and a BYE
        // (nobody is left on the call), not silence.
        callee.respond(&late, "200 OK", "");
        callee.expect("ACK ");
        let bye = callee.expect("BYE ");
        callee.ok(&bye);
    }
    let third = caller.invite("abandon-3", "09012345678", &caller.me());
    caller.send(&third);
    let third_out = next_invite();
    assert_eq!((sent("narrow"), sent("carrier-a")), (2.0, 2.0));
    callee.respond(&third_out, "486 Busy Here", "");
    finished(&third, "486");
}
