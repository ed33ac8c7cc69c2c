//! Calls are never lost from the log: in the store from admission, logged as lost after
//! a crash (kill -9), kept while the store cannot be written (the node refuses new calls
//! meanwhile), and ended and logged by the node at the drain deadline.

use crate::harness::*;
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const DEST: &str = r#"[{"number": "0311112222", "ring_seconds": 20}]"#;

/// A SIPp UAC running in the background until dropped (killed then).
struct Callers(Child);

impl Callers {
    fn start(ports: Ports, number: &str, calls: u32, rate: u32, hold_ms: u32) -> Callers {
        require_tool("sipp");
        let child = Command::new("sipp")
            .args(["-sf", &scenario("uac.xml"), "-s", number])
            .arg(format!("127.0.0.1:{}", ports.sip))
            .args(["-i", "127.0.0.1", "-p", &ports.uac.to_string()])
            .args(["-mp", &ports.uac_media.to_string()])
            .args(["-m", &calls.to_string(), "-r", &rate.to_string()])
            .args(["-d", &hold_ms.to_string(), "-l", &calls.to_string()])
            .args(["-nostdin", "-buff_size", "4194304"])
            .args(["-key", "caller", "09012345678"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sipp UAC");
        Callers(child)
    }
}

impl Drop for Callers {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node whose RTP range holds `calls` calls (two even ports each, so four port
/// numbers) with a quarter to spare (other processes' ephemeral ports may sit in any
/// range), in a wide range of its own.
fn node_for(calls: u16) -> Node {
    let range = calls * 5;
    let ports = Ports::take();
    let (first, last) = wide_rtp_range();
    assert!(
        last - first + 1 >= range,
        "{calls} calls need {range} ports"
    );
    let media = format!(
        "[media]\naddress = \"127.0.0.1\"\nports = \"{first}-{}\"",
        first + range - 1
    );
    // The harness writes its own [media]; this test's replaces it.
    let node = Node::start(ports, "127.0.0.1/32", "");
    let path = node.dir.path().join("node.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let start = config.find("[media]").unwrap();
    let end = start + config[start..].find("\n\n").unwrap();
    std::fs::write(
        &path,
        format!("{}{}{}", &config[..start], media, &config[end..]),
    )
    .unwrap();
    let mut node = node;
    node.restart();
    node
}

#[test]
fn after_kill_9_every_call_in_progress_is_logged_once_as_lost() {
    let mut node = node_for(200);
    let ports = node.ports;
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let callers = Callers::start(ports, "0501234567", 200, 100, 120_000);
    // Every call is in the store while it runs, answered.
    node.wait_until(
        Duration::from_secs(30),
        "200 answered calls in progress",
        || {
            let active = node.calls(&key, "&state=active");
            active.len() == 200 && active.iter().all(|c| c["answered_at"].is_string())
        },
    );
    let active = node.calls(&key, "&state=active");
    assert!(active
        .iter()
        .all(|c| c["state"] == "active" && c["ended_at"].is_null() && c["result"].is_null()));
    let in_progress: HashSet<String> = active
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_string())
        .collect();
    assert!(node.calls(&key, "").is_empty(), "none has ended");
    node.kill();
    drop(callers);
    node.start_again();
    let logged = node.wait_for_calls(&key, 200);
    assert_eq!(logged.len(), 200, "one record per call");
    let ids: HashSet<String> = logged
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, in_progress, "exactly the calls that were in progress");
    for c in &logged {
        assert_eq!(c["state"], "ended", "{c}");
        assert_eq!(c["result"], "failed", "{c}");
        assert_eq!(c["end_reason"], "node_lost", "{c}");
        let answered = chrono_ms(c["answered_at"].as_str().unwrap());
        let ended = chrono_ms(c["ended_at"].as_str().unwrap());
        assert!(ended >= answered, "ended at the last sign of life: {c}");
    }
    assert!(node.calls(&key, "&state=active").is_empty());
    assert_eq!(node.metric("tsunagu_calls_recovered_total"), 200.0);
    // A second restart finds nothing left to recover: nothing is logged twice.
    node.restart();
    assert_eq!(node.calls(&key, "").len(), 200);
    assert_eq!(node.metric("tsunagu_calls_recovered_total"), 0.0);
}

/// RFC 3339 with milliseconds (as the API writes it) to epoch milliseconds.
pub(crate) fn chrono_ms(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t)
        .unwrap()
        .timestamp_millis()
}

/// Holds SQLite's write lock on `db` (another process, as a stuck writer or a backup
/// would) until dropped.
struct StoreLock(Child);

impl StoreLock {
    fn take(db: &std::path::Path) -> StoreLock {
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n\
                 c.execute('BEGIN IMMEDIATE')\n\
                 print('locked', flush=True)\n\
                 sys.stdin.read()\n\
                 c.execute('ROLLBACK')\n",
            ])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "locked");
        StoreLock(child)
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        drop(self.0.stdin.take()); // end of input: the holder rolls back and exits
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until `/readyz` says ready (200), or not ready for its call log.
fn wait_readyz(node: &Node, ready: bool) {
    let what = if ready { "ready again" } else { "not ready" };
    // Turning not ready takes two failed writes of the node's sign of life, each
    // waiting out the store's 5 s busy timeout, and `call_log::STALL` (2 s) between:
    // about 11 s on a quiet machine, past 20 s once under the full suite's load (it
    // failed there with the node working as meant). 40 s bounds it still.
    node.wait_until(Duration::from_secs(40), what, || {
        node.try_get("/readyz", None)
            .map(|r| match ready {
                true => r.status == 200,
                false => r.status == 503 && r.body.starts_with("call log not ready"),
            })
            .unwrap_or(false)
    });
}

#[test]
fn a_store_that_cannot_be_written_stops_new_calls_and_loses_none() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let before = uac("uac.xml", ports, "0501234567", 20, 20, &["-d", "200"]);
    assert_eq!(before.successful, 20, "{}", before.output);
    node.wait_for_calls(&key, 20);

    let lock = StoreLock::take(&node.dir.path().join("data/tsunagu.db"));
    // Calls still complete while the store is locked; their records wait.
    let during = uac("uac.xml", ports, "0501234567", 20, 20, &["-d", "200"]);
    assert_eq!(during.successful, 20, "{}", during.output);
    wait_readyz(&node, false);
    assert_eq!(node.metric("tsunagu_ready"), 0.0);
    assert_eq!(node.metric("tsunagu_call_log_stalled"), 1.0);
    let refused = uac_expecting(503, node.dir.path(), ports, "0501234567", 1, &[]);
    assert_eq!(refused.successful, 1, "{}", refused.output);
    assert_eq!(
        node.metric("tsunagu_invites_rejected_total{code=\"503\",reason=\"store_unavailable\"}"),
        1.0
    );
    assert_eq!(
        node.calls(&key, "").len(),
        20,
        "nothing written while locked"
    );

    drop(lock);
    wait_readyz(&node, true);
    assert_eq!(node.metric("tsunagu_ready"), 1.0);
    let after = uac("uac.xml", ports, "0501234567", 10, 20, &["-d", "200"]);
    assert_eq!(after.successful, 10, "{}", after.output);
    let calls = node.wait_for_calls(&key, 50);
    assert_eq!(calls.len(), 50, "every admitted call logged once");
    let ids: HashSet<&str> = calls
        .iter()
        .map(|c| c["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 50);
    assert!(calls.iter().all(|c| c["result"] == "answered"));
    assert!(node.metric("tsunagu_call_log_write_errors_total") >= 1.0);
    assert_eq!(node.metric("tsunagu_call_log_stalled"), 0.0);
}

/// An idle node (no call, no record to write) whose store cannot be written: its
/// sign of life, written every second, fails, and after 2 s of that the node reports
/// not ready, as when record writes fail. It reported ready until a call came.
#[test]
fn an_idle_node_whose_store_cannot_be_written_is_not_ready() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    assert_eq!(node.metric("tsunagu_ready"), 1.0);
    let lock = StoreLock::take(&node.dir.path().join("data/tsunagu.db"));
    wait_readyz(&node, false);
    assert_eq!(node.metric("tsunagu_ready"), 0.0);
    assert_eq!(node.metric("tsunagu_call_log_stalled"), 1.0);
    drop(lock);
    wait_readyz(&node, true);
    assert_eq!(node.metric("tsunagu_call_log_stalled"), 0.0);
}

#[test]
fn calls_alive_at_the_drain_deadline_are_ended_and_logged() {
    let ports = Ports::take();
    let ringer = Ports::take();
    let extra = format!(
        "[[trunks]]\nname = \"ringer\"\noutbound = \"udp:127.0.0.1:{}\"\n\
         [[routes]]\nprefix = \"0399\"\ntrunks = [\"ringer\"]\n",
        ringer.uas
    );
    let mut node = Node::start(ports, "127.0.0.1/32", &extra);
    // Two seconds of drain: less than the calls last.
    let path = node.dir.path().join("node.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace("drain_seconds = 20", "drain_seconds = 2"),
    )
    .unwrap();
    node.restart();
    let (key, adv) = node.provision("0501234567", DEST, "{}");
    node.add_number(
        &key,
        &adv,
        "0507654321",
        r#"[{"number": "0399990000", "ring_seconds": 120}]"#,
        "{}",
    );
    let answering = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let ringing = Uas::start("uas_no_answer.xml", ringer, node.dir.path(), &[]);
    let caller_trace = node.dir.path().join("caller.log");
    let talk = {
        let trace = caller_trace.display().to_string();
        std::thread::spawn(move || {
            uac(
                "uac.xml",
                ports,
                "0501234567",
                1,
                1,
                &["-d", "60000", "-trace_msg", "-message_file", &trace],
            )
        })
    };
    let mut waiting = ports;
    waiting.uac += 5;
    waiting.uac_media += 20;
    let dir = node.dir.path().to_path_buf();
    let ring = std::thread::spawn(move || uac_expecting(503, &dir, waiting, "0507654321", 1, &[]));
    node.wait_until(Duration::from_secs(10), "two calls up", || {
        node.calls(&key, "&state=active").len() == 2 && ringing.messages().contains("180 Ringing")
    });
    assert_eq!(node.terminate(), Some(0), "{}", node.log());
    // The answered call: BYE to both parties; the ringing one: CANCEL to the callee,
    // 503 to the caller.
    assert!(answering.messages().contains("BYE sip:"), "callee got BYE");
    let caller = std::fs::read_to_string(&caller_trace).unwrap_or_default();
    assert!(caller.contains("BYE sip:"), "caller got BYE:\n{caller}");
    assert!(
        ringing.messages().contains("CANCEL sip:"),
        "ringing callee got CANCEL"
    );
    let refused = ring.join().unwrap();
    assert_eq!(refused.successful, 1, "{}", refused.output);
    drop(talk);
    // Both are logged, with the reason, before the node exited.
    let store = tsunagu_store::SqliteStore::open(&node.dir.path().join("data/tsunagu.db")).unwrap();
    let op = tsunagu_store::Store::key_owner(&store, &tsunagu_store::hash_api_key(&key))
        .unwrap()
        .unwrap()
        .operator_id;
    let mut got = Vec::new();
    tsunagu_store::Store::scan_calls(
        &store,
        &tsunagu_store::CallQuery {
            operator_id: op,
            ..Default::default()
        },
        &mut |r| {
            got.push((r.tracking_number.clone(), r.result, r.end_reason.clone()));
            true
        },
    )
    .unwrap();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let drain = Some("drain".to_string());
    assert_eq!(
        got,
        vec![
            (
                "0501234567".to_string(),
                tsunagu_store::CallResult::Answered,
                drain.clone()
            ),
            (
                "0507654321".to_string(),
                tsunagu_store::CallResult::Failed,
                drain
            ),
        ]
    );
}

/// A number whose stored settings this version cannot read (a newer version wrote a
/// setting it does not know, during an upgrade or after a rollback). While the node
/// runs, it keeps routing the number on its last readable settings, counts it and
/// answers its API reads 409 naming the way out (a newer node), and lists the
/// operator's other numbers; written readably again, it is counted no more (the count
/// used to stay until a restart). When the node starts with such a row it leaves the
/// number out (404), counted, and routes every other number (one such row used to
/// stop it from starting at all).
#[test]
fn a_number_this_version_cannot_read_is_left_out_not_fatal() {
    let ports = Ports::take();
    let mut node = Node::start(ports, "127.0.0.1/32", "");
    let (key, adv) = node.provision("0501234567", DEST, "{}");
    node.add_number(&key, &adv, "0501234568", DEST, "{}");
    let db = node.dir.path().join("data/tsunagu.db");
    // `newer`: the row as a newer version would write it (a top-level setting this
    // version does not know), or as it was; announced in the change feed as a node's
    // API would.
    let rewrite = |newer: bool| {
        let python = r#"
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], timeout=10)
if sys.argv[2] == "newer":
    sql = "UPDATE numbers SET settings = '{\"from_a_newer_version\": 1, ' || substr(settings, 2) WHERE number = '0501234568' AND settings NOT LIKE '{\"from_a_newer_version\"%'"
else:
    sql = "UPDATE numbers SET settings = '{' || substr(settings, 28) WHERE number = '0501234568' AND settings LIKE '{\"from_a_newer_version\": 1, %'"
n = c.execute(sql).rowcount
c.execute("INSERT INTO changes (kind, key, at) VALUES ('number', '0501234568', ?)", (int(time.time() * 1000),))
c.commit()
assert n == 1, n
"#;
        let ok = Command::new("python3")
            .args([
                "-c",
                python,
                &db.display().to_string(),
                if newer { "newer" } else { "as-was" },
            ])
            .status()
            .expect("python3")
            .success();
        assert!(ok, "the row was changed");
    };
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let mut other = ports;
    other.uac += 5;
    other.uac_media += 20;
    rewrite(true);
    node.wait_until(
        Duration::from_secs(10),
        "the number counted unreadable",
        || node.metric("tsunagu_numbers_unreadable") == 1.0,
    );
    let run = uac("uac.xml", other, "0501234568", 1, 1, &["-d", "100"]);
    assert_eq!(
        run.successful, 1,
        "routed on its last readable settings: {}",
        run.output
    );
    let read = node.get("/v1/numbers/0501234568", &key);
    assert_eq!(read.status, 409, "{}", read.body);
    assert!(read.body.contains("newer version"), "{}", read.body);
    let listed = node.get("/v1/numbers", &key).json();
    assert_eq!(
        listed["numbers"].as_array().map(Vec::len),
        Some(1),
        "the other number is still listed: {listed}"
    );
    rewrite(false);
    node.wait_until(Duration::from_secs(10), "the number readable again", || {
        node.metric("tsunagu_numbers_unreadable") == 0.0
    });
    rewrite(true);
    node.wait_until(
        Duration::from_secs(10),
        "the number counted unreadable",
        || node.metric("tsunagu_numbers_unreadable") == 1.0,
    );
    assert_eq!(node.terminate(), Some(0), "{}", node.log());
    // The log file goes on across runs: only what the new run wrote counts.
    let before = node.log().len();
    node.start_again();
    assert_eq!(node.metric("tsunagu_numbers_unreadable"), 1.0);
    let new_run = node.log()[before..].to_string();
    assert!(
        new_run.contains("0501234568") && new_run.contains("cannot be read: left out"),
        "the log names the number left out: {new_run}"
    );
    let run = uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "100"]);
    assert_eq!(run.successful, 1, "{}", run.output);
    let refused = uac_expecting(404, node.dir.path(), other, "0501234568", 1, &[]);
    assert_eq!(refused.successful, 1, "{}", refused.output);
}
