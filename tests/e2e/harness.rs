//! Test harness: starts real `tsunagu` nodes and real SIPp processes on loopback, and
//! talks HTTP to the node's API with a minimal std-only client.
//!
//! Each test takes a distinct slot of ports, so tests run in parallel without clashing.
//! SIPp is required: a missing `sipp` fails the test loudly (install it with
//! `scripts/test.sh`, which runs `apt-get install sip-tester`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "test-admin-token";

/// Which port slots ([`Ports::take`]) and wide RTP ranges ([`wide_rtp_range`]) are
/// taken. A test holds what it took until its thread ends (libtest runs each test on
/// a thread of its own, and the test's nodes and SIPp processes, dropped before the
/// thread's locals, are killed and reaped by then): then they go back for another
/// test. So the banks bound how many tests run at once, not how many there are.
/// (Under `--test-threads=1` libtest runs tests on its main thread and nothing comes
/// back: the banks then bound the whole run.)
static TAKEN: Mutex<Taken> = Mutex::new(Taken {
    slots: [false; SLOTS as usize],
    wide: [false; WIDE_RANGES as usize],
});

struct Taken {
    slots: [bool; SLOTS as usize],
    wide: [bool; WIDE_RANGES as usize],
}

fn taken() -> std::sync::MutexGuard<'static, Taken> {
    // A test that panicked while holding the lock left whole arrays.
    TAKEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// What this thread took, given back when it ends.
struct Held {
    slots: Vec<u16>,
    wide: Vec<u16>,
}

impl Held {
    fn give_back(&self, t: &mut Taken) {
        for &k in &self.slots {
            t.slots[usize::from(k)] = false;
        }
        for &k in &self.wide {
            t.wide[usize::from(k)] = false;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.give_back(&mut taken());
    }
}

thread_local! {
    static HELD: std::cell::RefCell<Held> = const {
        std::cell::RefCell::new(Held { slots: Vec::new(), wide: Vec::new() })
    };
}

/// Wide RTP ranges: six of 1600 ports from 10000 (up to 19599).
const WIDE_RANGES: u16 = 6;

/// A node RTP range of 1600 ports (800 calls) for tests carrying hundreds of calls per
/// node, from 10000 (below every slot; six ranges up to 19599). Nodes of one test
/// cluster share it, each on its own address.
pub fn wide_rtp_range() -> (u16, u16) {
    let k = {
        let mut t = taken();
        let k = (0..WIDE_RANGES)
            .find(|&k| !t.wide[usize::from(k)])
            .expect("the e2e tests ran out of wide RTP ranges: more tests at once than ranges");
        t.wide[usize::from(k)] = true;
        k
    };
    HELD.with(|h| h.borrow_mut().wide.push(k));
    (10_000 + 1600 * k, 10_000 + 1600 * k + 1599)
}

/// Port slots the tests can take (see [`Ports::take`]): the main bank, then a second
/// and a third of 8 each, and a fourth of 2.
pub const SLOTS: u16 = MAIN_SLOTS + 18;
/// Slots of the main bank (which fills 21000–65239).
const MAIN_SLOTS: u16 = 99;
/// Runs of slots whose node RTP ranges follow one another: `first..end`.
const RUNS: [(u16, u16); 5] = [
    (0, MAIN_SLOTS),
    (MAIN_SLOTS, MAIN_SLOTS + 8),
    (MAIN_SLOTS + 8, MAIN_SLOTS + 11),
    (MAIN_SLOTS + 11, MAIN_SLOTS + 16),
    (MAIN_SLOTS + 16, SLOTS),
];
/// Node RTP ports per slot (90 calls at once); a test needing more takes further slots.
pub const RTP_PER_SLOT: u16 = 360;

/// Ports of one test: SIP, API, SIPp UAS and UAC signalling and media, node RTP range.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub sip: u16,
    pub api: u16,
    pub uas: u16,
    pub uac: u16,
    pub uas_media: u16,
    pub uac_media: u16,
    pub rtp_first: u16,
}

impl Ports {
    /// The next slot. Layout (slot k < [`SLOTS`]): signalling 21000 + 10k (SIP,
    /// API, UAS, UAC; +4..+9 free for a test's own use), SIPp media 22000 + 76k (UAS)
    /// and + 40 (UAC; tests use up to +30 above each), and [`RTP_PER_SLOT`] node RTP
    /// ports from 29600: disjoint for every slot, clear of the SPEC example's
    /// 5060/8080/20000-20999.
    ///
    /// Slots past the main bank's (j = k - 99 < 8) lie below it, clear of 5060, 8080
    /// and of the wide RTP ranges: signalling 5100 + 10j, SIPp media 5200 + 76j (and
    /// 40 above), node RTP 2100 + 360j (up to 4979). The third bank's (j = k - 107 <
    /// 8): signalling 5900 + 10j, SIPp media 6000 + 76j, node RTP 6700 + 360j for j < 3
    /// and 8100 + 360(j - 3) after (6700-7779 and 8100-9899: around 8080, below the
    /// wide ranges' 10000). The fourth's (j = k - 115 < 2), in what is left below the
    /// second: signalling 1100 + 10j, SIPp media 1140 + 76j, node RTP 1300 + 360j (up
    /// to 2019). A test that needs more adds a bank where nothing else listens.
    pub fn take() -> Ports {
        Ports::take_many(1)
    }

    /// `n` free slots whose node RTP ranges follow one another (within one run of
    /// [`RUNS`]), for a node that needs `n * RTP_PER_SLOT` ports: the first slot's
    /// ports. Taken in one step, so a test running at the same time cannot take a slot
    /// in between; given back when the test's thread ends ([`TAKEN`]).
    pub fn take_many(n: u16) -> Ports {
        let k = {
            let mut t = taken();
            let k = first_free(&t.slots, n).expect(
                    "the e2e tests ran out of port slots (more tests at once than slots): add a bank in harness.rs (Ports::slot)",
                );
            for j in k..k + n {
                t.slots[usize::from(j)] = true;
            }
            k
        };
        HELD.with(|h| h.borrow_mut().slots.extend(k..k + n));
        Ports::slot(k)
    }

    /// The ports of slot `k` (see [`Ports::take`]).
    fn slot(k: u16) -> Ports {
        // (slot within its bank, signalling, SIPp media and node RTP bases)
        let (k, signalling, media, rtp) = if k < MAIN_SLOTS {
            (k, 21000, 22000, 29600)
        } else if k < MAIN_SLOTS + 8 {
            (k - MAIN_SLOTS, 5100, 5200, 2100)
        } else if k >= MAIN_SLOTS + 16 {
            (k - MAIN_SLOTS - 16, 1100, 1140, 1300)
        } else {
            let j = k - MAIN_SLOTS - 8;
            // Node RTP is `rtp + RTP_PER_SLOT * j` below: based so that it lands on the
            // ranges above.
            let rtp = if j < 3 { 6700 } else { 8100 - 3 * RTP_PER_SLOT };
            (j, 5900, 6000, rtp)
        };
        Ports {
            sip: signalling + 10 * k,
            api: signalling + 1 + 10 * k,
            uas: signalling + 2 + 10 * k,
            uac: signalling + 3 + 10 * k,
            uas_media: media + 76 * k,
            uac_media: media + 40 + 76 * k,
            rtp_first: rtp + RTP_PER_SLOT * k,
        }
    }
}

/// The first of `n` free slots in a row within one run of [`RUNS`] (`taken`: by slot).
fn first_free(taken: &[bool], n: u16) -> Option<u16> {
    RUNS.iter()
        .flat_map(|&(first, end)| first..(end + 1).saturating_sub(n).max(first))
        .find(|&k| (k..k + n).all(|j| !taken[usize::from(j)]))
}

#[test]
fn free_slots_are_found_within_one_run() {
    let mut taken = [false; SLOTS as usize];
    assert_eq!(first_free(&taken, 1), Some(0));
    assert_eq!(first_free(&taken, 3), Some(0));
    taken[1] = true;
    assert_eq!(first_free(&taken, 1), Some(0));
    assert_eq!(first_free(&taken, 2), Some(2), "around a taken slot");
    // The main bank full but its last two: two in a row fit there, three do not (the
    // next run's RTP ranges do not follow the main bank's).
    let main = usize::from(MAIN_SLOTS);
    taken[..main - 2].iter_mut().for_each(|t| *t = true);
    assert_eq!(first_free(&taken, 2), Some(MAIN_SLOTS - 2));
    assert_eq!(first_free(&taken, 3), Some(MAIN_SLOTS));
    taken.iter_mut().for_each(|t| *t = true);
    assert_eq!(first_free(&taken, 1), None);
    taken[usize::from(SLOTS) - 1] = false;
    assert_eq!(first_free(&taken, 1), Some(SLOTS - 1));
    assert_eq!(first_free(&taken, 2), None);
}

/// What a test held goes back, and nothing else.
#[test]
fn what_a_test_held_goes_back() {
    let mut t = Taken {
        slots: [true; SLOTS as usize],
        wide: [true; WIDE_RANGES as usize],
    };
    let held = Held {
        slots: vec![3, 4],
        wide: vec![5],
    };
    held.give_back(&mut t);
    let free: Vec<usize> = (0..t.slots.len()).filter(|&k| !t.slots[k]).collect();
    assert_eq!(free, [3, 4]);
    assert_eq!(t.wide, [true, true, true, true, true, false]);
    std::mem::forget(held); // its Drop would give back the shared table's slots 3 and 4
}

/// Every slot's ports, the wide RTP ranges and the SPEC example's 5060/8080/20000-20999
/// are disjoint: the range each one takes, as the tests use them (signalling +0..+9;
/// SIPp media 40 ports from `uas_media`, 36 from `uac_media`, where test clusters put
/// five callers 8 apart; RTP_PER_SLOT node RTP ports; a node needing more takes a run
/// of slots, [`Ports::take_many`]).
#[test]
fn port_slots_never_overlap() {
    let mut taken: Vec<(u32, u32, String)> = vec![
        (5060, 5060, "5060".into()),
        (8080, 8080, "8080".into()),
        (20000, 20999, "SPEC media".into()),
        (10_000, 19_999, "wide RTP ranges".into()),
    ];
    for k in 0..SLOTS {
        let p = Ports::slot(k);
        let r = |first: u16, len: u16, what: &str| {
            (
                u32::from(first),
                u32::from(first) + u32::from(len) - 1,
                format!("slot {k} {what}"),
            )
        };
        taken.push(r(p.sip, 10, "signalling"));
        taken.push(r(p.uas_media, 40, "UAS media"));
        taken.push(r(p.uac_media, 36, "UAC media"));
        taken.push(r(p.rtp_first, RTP_PER_SLOT, "node RTP"));
        assert!(p.sip >= 1024 && u32::from(p.rtp_first) + u32::from(RTP_PER_SLOT) <= 65536);
    }
    taken.sort();
    for pair in taken.windows(2) {
        assert!(
            pair[0].1 < pair[1].0,
            "{:?} overlaps {:?}",
            pair[0],
            pair[1]
        );
    }
    // Runs cover every slot once, and within one the RTP ranges follow one another.
    assert_eq!((RUNS[0].0, RUNS[RUNS.len() - 1].1), (0, SLOTS));
    for (run, next) in RUNS.iter().zip(RUNS.iter().skip(1)) {
        assert_eq!(run.1, next.0);
    }
    for (first, end) in RUNS {
        for k in first + 1..end {
            assert_eq!(
                Ports::slot(k).rtp_first,
                Ports::slot(k - 1).rtp_first + RTP_PER_SLOT,
                "slot {k}"
            );
        }
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn scenario(name: &str) -> String {
    if name.starts_with('/') {
        return name.to_string();
    }
    repo_root()
        .join("loadtest/scenarios")
        .join(name)
        .display()
        .to_string()
}

/// Fails the test with an instruction if a required tool is missing.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(found, "`{tool}` is required for the end-to-end tests and is not installed: run scripts/test.sh (it installs sip-tester)");
}

pub struct Node {
    pub ports: Ports,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    /// Starts a node whose trunk forwards to the UAS port; `extra` is appended to the config.
    pub fn start(ports: Ports, inbound: &str, extra: &str) -> Node {
        Node::start_with_sip(ports, inbound, "", extra)
    }

    /// [`Node::start`] with more lines in the `[sip]` table (e.g. `min_session_expires = 2`).
    pub fn start_with_sip(ports: Ports, inbound: &str, sip: &str, extra: &str) -> Node {
        Node::start_prepared(ports, inbound, "", sip, extra, |_| {})
    }

    /// [`Node::start_with_sip`] with more lines in the `[node]` table (`node`), and
    /// `prepare` run on the node's data directory (created) before it starts.
    pub fn start_prepared(
        ports: Ports,
        inbound: &str,
        node: &str,
        sip: &str,
        extra: &str,
        prepare: impl FnOnce(&Path),
    ) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        // Private, as the node makes it (umask 077): `files_the_node_creates_are_private`.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&data)
            .expect("the data directory");
        prepare(&data);
        let config = format!(
            r#"
[node]
id = "e2e"
data_dir = "{data}"
drain_seconds = 20
{node}

[sip]
listen = ["udp:127.0.0.1:{sip_port}", "tcp:127.0.0.1:{sip_port}"]
{sip}

[media]
address = "127.0.0.1"
ports = "{rtp_first}-{rtp_last}"

[api]
listen = "127.0.0.1:{api}"
admin_token = "{ADMIN}"

[store]
backend = "embedded"

[[trunks]]
name = "carrier-a"
inbound = ["{inbound}"]
outbound = "udp:127.0.0.1:{uas}"
max_cps = 1000
max_channels = 5000

[[routes]]
prefix = ""
trunks = ["carrier-a"]
{extra}
"#,
            data = data.display(),
            sip_port = ports.sip,
            rtp_first = ports.rtp_first,
            rtp_last = ports.rtp_first + RTP_PER_SLOT - 1,
            api = ports.api,
            uas = ports.uas,
        );
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config).expect("write config");
        Node::run(ports, dir, &path)
    }

    /// Starts a node on an existing configuration file, with `dir` as its working
    /// directory (relative paths such as `./data` land there).
    pub fn run(ports: Ports, dir: tempfile::TempDir, config: &Path) -> Node {
        let mut node = Node {
            ports,
            dir,
            child: None,
        };
        node.spawn(config);
        node
    }

    fn spawn(&mut self, config: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("node.log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tsunagu"))
            .args(["serve", "--config"])
            .arg(config)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tsunagu");
        self.child = Some(child);
        self.wait_until(
            Duration::from_secs(20),
            "the node to answer /healthz",
            || {
                self.try_get("/healthz", None)
                    .map(|r| r.status == 200)
                    .unwrap_or(false)
            },
        );
    }

    /// Stops the node (SIGTERM, drain) and starts it again on the same configuration
    /// and data (a node started with [`Node::start`]).
    pub fn restart(&mut self) {
        assert_eq!(self.terminate(), Some(0), "node exit code\n{}", self.log());
        let config = self.dir.path().join("node.toml");
        self.spawn(&config);
    }

    /// Polls `cond` (an observable event, e.g. an API answer) until true or the deadline.
    pub fn wait_until(&self, limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out after {limit:?} waiting for {what}\nnode log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    pub fn try_get(&self, path: &str, token: Option<&str>) -> std::io::Result<Response> {
        http(self.ports.api, "GET", path, token, None, &[])
    }

    pub fn get(&self, path: &str, token: &str) -> Response {
        http(self.ports.api, "GET", path, Some(token), None, &[]).expect("GET")
    }

    pub fn send(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Response {
        http(self.ports.api, method, path, token, Some(body), &[]).expect("request")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code. A node
    /// still running [`EXIT_LIMIT`] later (a drain that hangs) is killed and the test
    /// fails, rather than hanging the suite.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        match exit_within(&mut child, EXIT_LIMIT) {
            Some(status) => status.code(),
            None => panic!(
                "the node did not exit within {EXIT_LIMIT:?} of SIGTERM\nnode log:\n{}",
                self.log()
            ),
        }
    }

    /// Sends the node's process `sig` (`-STOP`, `-CONT`, ...).
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// Waits up to `limit` for the node to exit of itself; its exit code (None: it did
    /// not exit, and was killed).
    pub fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        exit_within(&mut child, limit).and_then(|s| s.code())
    }

    /// Kills the node with SIGKILL (no drain, no flush: a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on its configuration and data (after [`Node::kill`]).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the node is still running");
        let config = self.dir.path().join("node.toml");
        self.spawn(&config);
    }

    /// Provisions an operator, an advertiser and a number; returns (api_key, advertiser_id).
    pub fn provision(&self, number: &str, destinations: &str, validity: &str) -> (String, String) {
        let op = self.send("POST", "/v1/operators", Some(ADMIN), r#"{"name": "op"}"#);
        assert_eq!(op.status, 201, "{}", op.body);
        let key = op.json()["api_key"].as_str().unwrap().to_string();
        let adv = self.send("POST", "/v1/advertisers", Some(&key), r#"{"name": "shop"}"#);
        assert_eq!(adv.status, 201, "{}", adv.body);
        let adv_id = adv.json()["id"].as_str().unwrap().to_string();
        self.add_number(&key, &adv_id, number, destinations, validity);
        (key, adv_id)
    }

    /// An API key of a new operator (for checks that operators see only their own data).
    pub fn other_operator(&self) -> String {
        let op = self.send("POST", "/v1/operators", Some(ADMIN), r#"{"name": "other"}"#);
        assert_eq!(op.status, 201, "{}", op.body);
        op.json()["api_key"].as_str().unwrap().to_string()
    }

    /// PATCHes a number's settings; the answer, whatever its status.
    pub fn patch_number(&self, key: &str, number: &str, body: &str) -> Response {
        self.send("PATCH", &format!("/v1/numbers/{number}"), Some(key), body)
    }

    /// PATCHes a number's settings and checks they were accepted.
    pub fn set_number(&self, key: &str, number: &str, body: &str) {
        let r = self.patch_number(key, number, body);
        assert_eq!(r.status, 200, "{body}: {}", r.body);
    }

    /// Provisions 0501234567 recorded (both parties) to 0311112222 and makes one call
    /// to it, answered by a UAS that echoes the audio, talking `talk_ms`: the
    /// operator's key, the call's record once written, and the UAS (kept running).
    pub fn one_recorded_call(&self, talk_ms: u32) -> (String, serde_json::Value, Uas) {
        let ports = self.ports;
        let (key, _) = self.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
        self.set_number(&key, "0501234567", r#"{"recording": {"mode": "both"}}"#);
        let uas = Uas::start("uas_answer.xml", ports, self.dir.path(), &["-rtp_echo"]);
        let talk = talk_ms.to_string();
        let run = uac("uac_rtp.xml", ports, "0501234567", 1, 1, &["-d", &talk]);
        assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
        let call = self.wait_for_calls(&key, 1)[0].clone();
        (key, call, uas)
    }

    pub fn add_number(
        &self,
        key: &str,
        adv_id: &str,
        number: &str,
        destinations: &str,
        validity: &str,
    ) {
        let body = format!(
            r#"{{"number": "{number}", "advertiser_id": "{adv_id}", "destinations": {destinations}, "validity": {validity}}}"#
        );
        let n = self.send("POST", "/v1/numbers", Some(key), &body);
        assert_eq!(n.status, 201, "{}", n.body);
    }

    /// All call records of an operator (JSON pages followed to the end).
    pub fn calls(&self, key: &str, filter: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/calls?limit=1000{filter}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let r = self.get(&path, key);
            assert_eq!(r.status, 200, "{}", r.body);
            let v = r.json();
            out.extend(v["calls"].as_array().unwrap().iter().cloned());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    /// Waits until the operator has `n` call records (the writer batches asynchronously).
    pub fn wait_for_calls(&self, key: &str, n: usize) -> Vec<serde_json::Value> {
        self.wait_until(
            Duration::from_secs(20),
            &format!("{n} call records"),
            || self.calls(key, "").len() >= n,
        );
        self.calls(key, "")
    }

    /// The value of a metric line (exact name with labels). A labelled series absent
    /// from the page reads 0 (labelled counters appear at their first increment); an
    /// unlabelled one is registered at start, so its absence fails the test (a renamed
    /// or removed metric would otherwise read 0 and pass every "is 0" check).
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.try_get("/metrics", None).expect("metrics").body;
        match metric_in(&text, series) {
            Some(v) => v,
            None if series.contains('{') => 0.0,
            None => panic!("no metric {series} on the node's /metrics page"),
        }
    }
}

/// How long a test waits for a node to exit after SIGTERM (its drain included: the
/// tests' nodes drain for 20 s at most).
pub const EXIT_LIMIT: Duration = Duration::from_secs(60);

/// Waits up to `limit` for `child` to exit; kills it (and returns None) if it has not.
pub fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// The value of a metric line (exact name with labels) in a `/metrics` page.
pub fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A minimal HTTP/1.1 client (one request per connection, chunked bodies decoded).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let body = body.unwrap_or("");
    let all = as_json(body, headers);
    http_bytes(port, method, path, token, body.as_bytes(), &all)
}

/// `headers`, after a JSON Content-Type where there is a body.
fn as_json<'a>(body: &str, headers: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let typed = (!body.is_empty()).then_some(("Content-Type", "application/json"));
    typed.into_iter().chain(headers.iter().copied()).collect()
}

/// [`http`] with a body of any bytes (e.g. a WAV upload); `headers` name its type.
pub fn http_bytes(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    http_as(port, "127.0.0.1", method, path, token, body, headers)
}

/// [`http_bytes`] naming `host` in the Host header.
fn http_as(
    port: u16,
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    let raw = exchange(&mut s, host, method, path, token, body, headers)?;
    Ok(Response::parse(&raw))
}

/// Sends one request (`Connection: close`) on `s` and reads its answer's bytes (see
/// [`read_answer`]): what every HTTP client of the tests shares, whatever address it
/// connects from and whatever it makes of the answer.
pub fn exchange(
    s: &mut TcpStream,
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    headers: &[(&str, &str)],
) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    read_answer(s)
}

/// An HTTP answer's bytes: to the end of the connection, or of the body its
/// Content-Length announces (a server that keeps the connection open despite
/// `Connection: close`, as chromedriver does, is not waited out).
fn read_answer(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        // A signal to the test process (a node killed or stopped by the test) can cut
        // a read short: read again, as `read_to_end` would (a full run failed on it).
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        if length.is_some_and(|len| raw.len() >= end + 4 + len) {
            return Ok(raw);
        }
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A UDP socket standing in for a caller's phone: the caller's SDP points here, and
/// every packet the node sends it is kept (with its arrival time) until dropped.
pub struct Ear {
    pub port: u16,
    packets: Arc<Mutex<Vec<(Instant, Vec<u8>)>>>,
    stop: Arc<AtomicBool>,
}

impl Ear {
    pub fn bind(port: u16) -> Ear {
        let socket = std::net::UdpSocket::bind(("127.0.0.1", port)).expect("bind the ear");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let packets = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, st) = (packets.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    p.lock().unwrap().push((Instant::now(), buf[..n].to_vec()));
                }
            }
        });
        Ear {
            port,
            packets,
            stop,
        }
    }

    /// The RTP packets received so far.
    pub fn packets(&self) -> Vec<(Instant, Vec<u8>)> {
        self.packets.lock().unwrap().clone()
    }
}

impl Drop for Ear {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A SIPp process acting as the destination (UAS); killed when dropped.
pub struct Uas {
    child: Child,
    pub trace: PathBuf,
}

impl Uas {
    pub fn start(scenario_name: &str, ports: Ports, dir: &Path, extra: &[&str]) -> Uas {
        Uas::start_on(scenario_name, ports.uas, ports.uas_media, dir, extra)
    }

    /// A UAS on a given signalling and media port (for tests with several trunks).
    pub fn start_on(scenario_name: &str, port: u16, media: u16, dir: &Path, extra: &[&str]) -> Uas {
        require_tool("sipp");
        let file_name = Path::new(scenario_name)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let trace = dir.join(format!("uas-{port}-{file_name}.log"));
        let child = Command::new("sipp")
            .args([
                "-sf",
                &scenario(scenario_name),
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-mp",
                &media.to_string(),
            ])
            .args([
                "-nostdin",
                "-buff_size",
                "4194304",
                "-trace_msg",
                "-message_file",
            ])
            .arg(&trace)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sipp UAS");
        Uas { child, trace }
    }

    pub fn messages(&self) -> String {
        std::fs::read_to_string(&self.trace).unwrap_or_default()
    }
}

impl Drop for Uas {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcome of a SIPp UAC run.
#[derive(Debug)]
pub struct UacRun {
    pub exit: i32,
    pub successful: u64,
    pub failed: u64,
    pub output: String,
}

/// Runs `uac_expect_failure.xml` expecting final status `code`: the scenario's
/// `[expect]` placeholder is filled into a copy in `dir` (SIPp cannot take a status
/// code from `-key`).
pub fn uac_expecting(
    code: u16,
    dir: &Path,
    ports: Ports,
    number: &str,
    calls: u32,
    extra: &[&str],
) -> UacRun {
    uac(
        &expecting_scenario(code, dir),
        ports,
        number,
        calls,
        10,
        extra,
    )
}

/// `uac_expect_failure.xml` expecting final status `code`, as a copy in `dir` (SIPp
/// cannot take a status code from `-key`); its path.
pub fn expecting_scenario(code: u16, dir: &Path) -> String {
    scenario_replacing(
        dir,
        "uac_expect_failure.xml",
        "[expect]",
        &code.to_string(),
        &format!("uac_expect_{code}.xml"),
    )
}

/// A copy of shipped scenario `name` in `dir` as `file`, with every `what` (which it
/// must have) replaced by `with`; its path.
pub fn scenario_replacing(dir: &Path, name: &str, what: &str, with: &str, file: &str) -> String {
    let text = std::fs::read_to_string(scenario(name)).expect("scenario");
    assert!(text.contains(what), "{name} has no {what}");
    let path = dir.join(file);
    std::fs::write(&path, text.replace(what, with)).expect("write scenario");
    path.display().to_string()
}

/// A copy of a shipped scenario in `dir` with one more header line after Max-Forwards
/// in every message that has one (e.g. a P-Asserted-Identity).
pub fn scenario_with_header(dir: &Path, name: &str, header: &str) -> String {
    let text = std::fs::read_to_string(scenario(name)).expect("scenario");
    let path = dir.join(format!("with-header-{name}"));
    std::fs::write(
        &path,
        text.replace(
            "Max-Forwards: 70\n",
            &format!("Max-Forwards: 70\n      {header}\n"),
        ),
    )
    .expect("write scenario");
    path.display().to_string()
}

/// Runs a SIPp UAC to completion (bounded by `-m` and a timeout).
pub fn uac(
    scenario_name: &str,
    ports: Ports,
    number: &str,
    calls: u32,
    rate: u32,
    extra: &[&str],
) -> UacRun {
    let target = format!("127.0.0.1:{}", ports.sip);
    uac_to(&target, scenario_name, ports, number, calls, rate, extra)
}

/// [`uac`] toward another node address (`ip:port`), e.g. a cluster's second node.
pub fn uac_to(
    target: &str,
    scenario_name: &str,
    ports: Ports,
    number: &str,
    calls: u32,
    rate: u32,
    extra: &[&str],
) -> UacRun {
    require_tool("sipp");
    // The caller's number, unless `extra` names one (SIPp keeps the first `-key`).
    let names_caller = extra.windows(2).any(|w| w == ["-key", "caller"]);
    let default_caller: &[&str] = if names_caller {
        &[]
    } else {
        &["-key", "caller", "09012345678"]
    };
    let bind: &[&str] = if extra.contains(&"-i") {
        &[]
    } else {
        &["-i", "127.0.0.1"]
    };
    let out = Command::new("timeout")
        .arg("120")
        .arg("sipp")
        .args([
            "-sf",
            &scenario(scenario_name),
            "-s",
            number,
            target,
            "-p",
            &ports.uac.to_string(),
            "-mp",
            &ports.uac_media.to_string(),
        ])
        .args([
            "-m",
            &calls.to_string(),
            "-r",
            &rate.to_string(),
            "-nostdin",
            "-buff_size",
            "4194304",
        ])
        .args(default_caller)
        .args(bind)
        .args(extra)
        .output()
        .expect("run sipp UAC");
    let output =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let count = |label: &str| {
        output
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    UacRun {
        exit: out.status.code().unwrap_or(-1),
        successful: count("Successful call"),
        failed: count("Failed call"),
        output,
    }
}

/// One HTTP request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A real HTTP server on loopback that records every request and answers 200 (a
/// webhook, SMS-gateway or GA4 endpoint stand-in run by the test); stopped on drop.
pub struct Receiver {
    pub port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    pub fn start(port: u16) -> Receiver {
        Receiver::with_pages(port, Vec::new())
    }

    /// Also answers GETs of the given paths with the given HTML (a test web page).
    pub fn with_pages(port: u16, pages: Vec<(String, String)>) -> Receiver {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                if let Some(req) = read_request(&mut conn) {
                    let path = req.target.split('?').next().unwrap_or_default().to_string();
                    let page = pages
                        .iter()
                        .find(|(p, _)| *p == path)
                        .filter(|_| req.method == "GET");
                    let reply = match page {
                        Some((_, html)) => format!("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}", html.len()),
                        None => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_string(),
                    };
                    g.lock().unwrap().push(req);
                    let _ = conn.write_all(reply.as_bytes());
                }
            }
        });
        Receiver {
            port,
            got,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests whose target starts with `prefix` arrived (20 s at most).
    pub fn wait_for(&self, prefix: &str, n: usize) -> Vec<Received> {
        self.wait_for_until(prefix, n, Instant::now() + Duration::from_secs(20))
    }

    /// [`Receiver::wait_for`] until `deadline`: the requests so far then.
    pub fn wait_for_until(&self, prefix: &str, n: usize, deadline: Instant) -> Vec<Received> {
        loop {
            let got: Vec<Received> = self
                .requests()
                .into_iter()
                .filter(|r| r.target.starts_with(prefix))
                .collect();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request(conn: &mut TcpStream) -> Option<Received> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some(Received {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A real SMTP server (Debian's python3-aiosmtpd) on loopback, storing what it
/// receives in a Maildir; stopped on drop.
pub struct SmtpServer {
    child: Child,
    maildir: PathBuf,
}

impl SmtpServer {
    pub fn start(port: u16, dir: &Path) -> SmtpServer {
        SmtpServer::start_with(port, dir, &[])
    }

    /// One that takes mail only after STARTTLS, with the certificate `cert` (PEM) and
    /// its key.
    pub fn start_requiring_starttls(port: u16, dir: &Path, cert: &Path, key: &Path) -> SmtpServer {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        SmtpServer::start_with(port, dir, &["--tlscert", &cert, "--tlskey", &key])
    }

    fn start_with(port: u16, dir: &Path, options: &[&str]) -> SmtpServer {
        let found = Command::new("/usr/bin/python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(found, "Debian's python3-aiosmtpd is required for the e-mail tests: run scripts/test.sh (it installs it)");
        let maildir = dir.join("maildir");
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n"])
            .args(options)
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer { child, maildir }
    }

    /// The raw messages delivered so far.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in entries.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    pub fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.messages();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium as every browser test runs it: headless, in a container, with nothing
/// of its own reaching out (the profile is each test's own).
const CHROMIUM_FLAGS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-extensions",
];

/// Loads `url` in real headless Chromium (Debian's `chromium`), lets the page's scripts
/// and timers run for `virtual_ms` of virtual time, and returns the resulting DOM.
pub fn chromium_dom(url: &str, profile: &Path, virtual_ms: u32) -> String {
    require_tool("chromium");
    let out = Command::new("timeout")
        .arg("90")
        .arg("chromium")
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={virtual_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A real Chromium driven over WebDriver (`chromedriver`, Debian `chromium-driver`):
/// for what a page does when clicked, which `chromium_dom`'s `--dump-dom` cannot
/// show. Headless, a profile of its own; the session and the driver end when it is
/// dropped.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on `port` (127.0.0.1) and opens a session.
    pub fn start(port: u16) -> Browser {
        require_tool("chromium");
        require_tool("chromedriver");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let ready = || {
            webdriver(port, "GET", "/status", None)
                .ok()
                .is_some_and(|r| r.json()["value"]["ready"] == true)
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ready() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": CHROMIUM_FLAGS.iter().map(|f| f.to_string())
                .chain([format!("--user-data-dir={}", browser._profile.path().display())])
                .collect::<Vec<_>>()},
        }}});
        let made = webdriver(port, "POST", "/session", Some(&caps.to_string()))
            .expect("a WebDriver session");
        assert_eq!(made.status, 200, "{}", made.body);
        browser.session = made.json()["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id: {}", made.body))
            .to_string();
        browser
    }

    /// A command of the session: `method` `/session/{id}{path}` with `body`; its value.
    fn command(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let path = format!("/session/{}{path}", self.session);
        let text = body.to_string();
        let body = (method == "POST").then_some(text.as_str());
        let r = webdriver(self.port, method, &path, body).expect("WebDriver answered");
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
        r.json()["value"].clone()
    }

    pub fn open(&self, url: &str) {
        self.command("POST", "/url", serde_json::json!({"url": url}));
    }

    /// Runs `script` (a function body: `return ...`) in the page; what it returns.
    pub fn run(&self, script: &str) -> serde_json::Value {
        self.command(
            "POST",
            "/execute/sync",
            serde_json::json!({"script": script, "args": []}),
        )
    }

    /// What `script` returns once it is neither null nor false, polled for `within`.
    pub fn wait_for(&self, within: Duration, what: &str, script: &str) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.run(script);
            if !(v.is_null() || v == false) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the first element `css` selects.
    pub fn click(&self, css: &str) {
        let found = self.command(
            "POST",
            "/element",
            serde_json::json!({"using": "css selector", "value": css}),
        );
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string();
        self.command(
            "POST",
            &format!("/element/{id}/click"),
            serde_json::json!({}),
        );
    }
}

/// A request to chromedriver, which answers only a Host naming its port.
fn webdriver(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<Response> {
    let host = format!("127.0.0.1:{port}");
    let body = body.unwrap_or("");
    let kind: &[(&str, &str)] = if body.is_empty() {
        &[]
    } else {
        &[("Content-Type", "application/json")]
    };
    http_as(port, &host, method, path, None, body.as_bytes(), kind)
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = webdriver(self.port, "DELETE", &path, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

// ---- Helpers of the SIP edge tests (sip_edge.rs) ----

/// CPU time (user + system, seconds) a process has used, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    ticks / hz
}

/// The share of one core a process uses over `window` (measured, not a wait for an event).
pub fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    std::thread::sleep(window);
    (cpu_seconds(pid) - before) / window.as_secs_f64()
}

/// Asserts that process `pid` uses less than `limit` of a core over the next second
/// (`what` says why it should be that quiet).
pub fn assert_cpu_below(pid: u32, limit: f64, what: &str) {
    let share = cpu_share(pid, Duration::from_secs(1));
    assert!(
        share < limit,
        "{what}: {:.1} % of a core (limit {:.0} %)",
        share * 100.0,
        limit * 100.0
    );
}

/// Resident memory of a process in bytes (VmRSS of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Every datagram `sock` receives within `window`, as text: for checks that nothing
/// (or exactly one thing) comes back.
pub fn datagrams_within(sock: &std::net::UdpSocket, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

/// A TCP connection from a chosen local address (e.g. 127.0.0.3) with, if given, a
/// small receive buffer (a peer that reads slowly).
pub fn tcp_from(
    local: std::net::IpAddr,
    to: std::net::SocketAddr,
    recv_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        if let Some(b) = recv_buffer {
            sock.set_recv_buffer_size(b)?;
        }
        sock.bind(std::net::SocketAddr::new(local, 0))?;
        let stream = sock.connect(to).await?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}

impl Node {
    /// Starts a node on `config` (like [`Node::run`]) under `sh -c "<setup>; exec
    /// tsunagu ..."`, e.g. `ulimit -n 256` for a node short of file descriptors.
    pub fn run_in_shell(ports: Ports, dir: tempfile::TempDir, config: &Path, setup: &str) -> Node {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("node.log"))
            .expect("log file");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{setup} && exec \"$0\" serve --config \"$1\"",))
            .arg(env!("CARGO_BIN_EXE_tsunagu"))
            .arg(config)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tsunagu");
        let node = Node {
            ports,
            dir,
            child: Some(child),
        };
        node.wait_until(
            Duration::from_secs(20),
            "the node to answer /healthz",
            || {
                node.try_get("/healthz", None)
                    .map(|r| r.status == 200)
                    .unwrap_or(false)
            },
        );
        node
    }
}

/// A UDP socket standing in for a phone that talks: the test sends RTP from it (so its
/// packets come from the port its SDP names), and every datagram it receives is kept
/// with its sender until dropped.
pub struct Phone {
    pub port: u16,
    socket: std::net::UdpSocket,
    received: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
}

/// A datagram a [`Phone`] received, with its sender.
pub type Datagram = (std::net::SocketAddr, Vec<u8>);

impl Phone {
    pub fn bind(port: u16) -> Phone {
        let socket = std::net::UdpSocket::bind(("127.0.0.1", port)).expect("bind the phone");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let reader = socket.try_clone().expect("clone the phone's socket");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = reader.recv_from(&mut buf) {
                    r.lock().unwrap().push((from, buf[..n].to_vec()));
                }
            }
        });
        Phone {
            port,
            socket,
            received,
            stop,
        }
    }

    pub fn send_to(&self, datagram: &[u8], to: std::net::SocketAddr) {
        self.socket.send_to(datagram, to).expect("phone send");
    }

    /// Everything received so far: (sender, datagram).
    pub fn received(&self) -> Vec<Datagram> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The `[notify]` line that lets follow-ups reach receivers on loopback: the node
/// refuses non-public destinations unless `notify.allowed_networks` lists them.
pub const ALLOW_LOOPBACK: &str = r#"allowed_networks = ["127.0.0.0/8", "::1/128"]"#;

/// A receiver that black-holes: it accepts TCP connections and never answers (nor
/// closes them) until dropped. Counts the connections it accepted.
pub struct BlackHole {
    pub port: u16,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    /// Joined on drop: the listener is closed before the test's ports are given back
    /// (the next test on them failed to bind while it was still open: a full run).
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlackHole {
    pub fn start(port: u16) -> BlackHole {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind black hole");
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, st) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(c) = conn {
                    a.lock().unwrap().push(c);
                }
            }
        });
        BlackHole {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.accepted.lock().unwrap().clear();
    }
}

impl Node {
    /// A node for API tests (no trunks): `api` is added to its `[api]` table, `extra`
    /// appended to the file (e.g. an `[api.issue]` table).
    pub fn start_api(ports: Ports, api: &str, extra: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            r#"
[node]
id = "e2e"
data_dir = "{data}"
drain_seconds = 5

[sip]
listen = ["udp:127.0.0.1:{sip}"]

[media]
address = "127.0.0.1"
ports = "{rtp_first}-{rtp_last}"

[api]
listen = "127.0.0.1:{api_port}"
admin_token = "{ADMIN}"
{api}

[store]
backend = "embedded"
{extra}
"#,
            data = dir.path().join("data").display(),
            sip = ports.sip,
            rtp_first = ports.rtp_first,
            rtp_last = ports.rtp_first + RTP_PER_SLOT - 1,
            api_port = ports.api,
        );
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config).expect("write config");
        Node::run(ports, dir, &path)
    }

    /// Adds `line` to the `[api]` table of the node's configuration and restarts it.
    pub fn restart_with_api_line(&mut self, line: &str) {
        self.restart_with_line("api", line);
    }

    /// Adds `line` to the `[table]` of the node's configuration and restarts it.
    pub fn restart_with_line(&mut self, table: &str, line: &str) {
        let path = self.dir.path().join("node.toml");
        let text = std::fs::read_to_string(&path).expect("config");
        let text = text.replacen(&format!("[{table}]\n"), &format!("[{table}]\n{line}\n"), 1);
        std::fs::write(&path, text).expect("write config");
        self.restart();
    }

    /// The embedded store's file (tests may open it too: SQLite allows several processes).
    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("data").join("tsunagu.db")
    }
}

/// A TCP connection to the node's `port` from the loopback address `source` (e.g.
/// 127.0.0.2: another client address), optionally with a small receive buffer.
pub fn connect_from(
    source: &str,
    port: u16,
    recv_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        let from: std::net::SocketAddr = format!("{source}:0").parse().expect("source address");
        socket.bind(from)?;
        socket.connect(([127, 0, 0, 1], port).into()).await
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// [`http`] from another loopback address (`source`), with extra headers.
pub fn http_from(
    source: &str,
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut s = connect_from(source, port, None)?;
    let all = as_json(body, headers);
    let raw = exchange(
        &mut s,
        "127.0.0.1",
        method,
        path,
        token,
        body.as_bytes(),
        &all,
    )?;
    Ok(Response::parse(&raw))
}

impl Response {
    /// An answer as read: its status, its head, and its body (chunks joined).
    fn parse(raw: &[u8]) -> Response {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        Response {
            status,
            headers: head.to_string(),
            body: if chunked {
                dechunk(rest)
            } else {
                rest.to_string()
            },
        }
    }

    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Whether the node closed `s` within `limit` (EOF or reset), reading what comes.
/// When the peer closes `s`, seen from a thread of its own (None: still open after
/// `limit`), so that several connections' closing moments are each measured.
pub fn watch_close(
    mut s: std::net::TcpStream,
    limit: Duration,
) -> std::thread::JoinHandle<Option<std::time::Instant>> {
    std::thread::spawn(move || closed_within(&mut s, limit).then(std::time::Instant::now))
}

pub fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    how_closed(s, limit, false).is_some()
}

/// How `s` was closed within `limit` (`eof`, or the error's kind: a reset), or None if
/// it stays open that long; what it sends meanwhile is read and skipped, unless
/// `silent` (then data ends the wait too, as `answered …`: a peer that must say
/// nothing said something). A read
/// interrupted by a signal is read again: taken for a close, it once reported a kept
/// connection closed at 0.65 s (`sip_edge`'s slowloris test, a flake of the suite).
pub fn how_closed(s: &mut std::net::TcpStream, limit: Duration, silent: bool) -> Option<String> {
    use std::io::{ErrorKind, Read};
    let end = std::time::Instant::now() + limit;
    let mut buf = [0u8; 1024];
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some("eof".into()),
            Ok(n) if silent => {
                return Some(format!("answered {:?}", String::from_utf8_lossy(&buf[..n])))
            }
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(e) => return Some(format!("{:?}", e.kind())),
        }
    }
}

/// `dir` and everything under it, directories included.
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
