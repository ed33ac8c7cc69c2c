//! Recording across a takeover (SPEC 6): a recorded call goes on recording as a second
//! part on the survivor that takes it over, and the API serves both parts as one WAV
//! with the takeover gap as silence. Three real nodes, the test [`Party`] talking loud
//! PCMA both ways every 100 ms (20 ms of audio each: a recording of it has 80 ms lulls).

use crate::cluster_harness::*;
use crate::party::Party;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NUMBER: &str = "0507780000";
const CALLER: &str = "09077700001";
/// The joined recording's silence between the parts is shorter than this.
const GAP_UNDER: Duration = Duration::from_secs(3);
/// A sample louder than this is the party's audio (its PCMA decodes to thousands).
const LOUD: i32 = 1000;

/// Three nodes with `node_extra`, a recorded number, one call placed through n2 and
/// flowing both ways.
struct Rig {
    c: TestCluster,
    party: Party,
    key: String,
}

impl Rig {
    fn new(node_extra: &str) -> Rig {
        let mut c = TestCluster::new();
        c.node_extra = node_extra.to_string();
        for i in 1..=3 {
            c.start(i, GOOD);
        }
        c.wait_formed();
        let (key, _) = c.node("n1").provision(
            NUMBER,
            r#"[{"number": "0311112222", "ring_seconds": 30}]"#,
            "{}",
        );
        // Set through n2, the call's node: its own copy changes at once (the others
        // follow within a round trip, long before they take the call over).
        c.node("n2")
            .set_number(&key, NUMBER, r#"{"recording": {"mode": "both"}}"#);
        let callers = c.caller_ports();
        let party = Party::start(callers.uac, c.uas_ports.uas);
        let n2: SocketAddr = c.members["n2"].sip.parse().expect("sip address");
        party.call(n2, NUMBER, CALLER);
        party.wait_flowing(1, Duration::from_secs(10));
        Rig { c, party, key }
    }

    /// Waits until a recording file under `dir` whose name matches `part` holds at
    /// least `seconds` of stereo audio (its header is rewritten at every append).
    fn wait_recorded(&self, dir: &Path, part: impl Fn(&str) -> bool, seconds: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if wav_files(dir)
                .iter()
                .any(|f| part(&file_name(f)) && recorded_seconds(f) >= seconds)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let files: Vec<(String, f64)> = wav_files(dir)
            .iter()
            .map(|f| (file_name(f), recorded_seconds(f)))
            .collect();
        let logs: Vec<String> = self
            .c
            .members
            .iter()
            .map(|(n, m)| format!("--- {n}\n{}", m.node.log()))
            .collect();
        panic!(
            "no recording part of {seconds} s under {}: {files:?}\n{}",
            dir.display(),
            logs.join("\n")
        );
    }

    /// Kills n2 (the call's node) and waits until the party hears both sides again.
    fn kill_n2_and_wait_resumed(&mut self) {
        let death = Instant::now();
        self.c.members.get_mut("n2").unwrap().node.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.party.heard_since(death).contains(&CALLER.to_string()) {
            assert!(
                Instant::now() < deadline,
                "the call did not resume after n2 died\n{}",
                self.c.node("n1").log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Hangs up and returns the call's record (read through n1) once its recording is
    /// closed.
    fn hang_up(&self) -> serde_json::Value {
        let unclean = self.party.hang_up_all(Duration::from_secs(10));
        assert!(unclean.is_empty(), "{:?}", self.party.states());
        let n1 = self.c.node("n1");
        let record = n1.wait_for_calls(&self.key, 1).remove(0);
        assert_eq!(record["result"], "answered", "{record}");
        record
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every `.wav` file one directory below `dir` (recordings live in `<day>/`).
fn wav_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(days) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    days.flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|files| files.flatten().map(|f| f.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect()
}

/// Seconds of stereo audio a recording file's header counts.
fn recorded_seconds(path: &Path) -> f64 {
    let Ok(bytes) = std::fs::read(path) else {
        return 0.0;
    };
    if bytes.len() < 44 {
        return 0.0;
    }
    let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap());
    f64::from(data) / 32_000.0
}

/// GET over HTTP/1.1 keeping the body as bytes: (status, lower-cased head, body).
fn get_bytes(port: u16, path: &str, token: &str) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let raw = crate::harness::exchange(&mut s, "127.0.0.1", "GET", path, Some(token), b"", &[])
        .expect("the answer");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, raw[end + 4..].to_vec())
}

/// A WAV served by the API: checks its header against its length and returns its
/// stereo frames.
fn stereo_frames(wav: &[u8]) -> Vec<[i16; 2]> {
    assert!(wav.len() >= 44 && &wav[0..4] == b"RIFF" && &wav[8..16] == b"WAVEfmt ");
    let channels = u16::from_le_bytes([wav[22], wav[23]]);
    let rate = u32::from_le_bytes(wav[24..28].try_into().unwrap());
    let data = u32::from_le_bytes(wav[40..44].try_into().unwrap()) as usize;
    assert_eq!((channels, rate), (2, 8000));
    assert_eq!(wav.len(), 44 + data, "the header counts the audio exactly");
    wav[44..]
        .chunks_exact(4)
        .map(|f| {
            [
                i16::from_le_bytes([f[0], f[1]]),
                i16::from_le_bytes([f[2], f[3]]),
            ]
        })
        .collect()
}

/// What the joined recording holds around the boundary between its parts (`split`
/// frames into it): whether each party is heard before and after it, and the
/// longest stretch where nobody is heard between the first and the last loud frame.
struct Heard {
    caller: [bool; 2],
    callee: [bool; 2],
    longest_quiet: Duration,
}

fn heard(frames: &[[i16; 2]], split: usize) -> Heard {
    let loud = |f: &[i16; 2], ch: usize| i32::from(f[ch]).abs() > LOUD;
    let (before, after) = frames.split_at(split.min(frames.len()));
    let side = |ch: usize| {
        [
            before.iter().any(|f| loud(f, ch)),
            after.iter().any(|f| loud(f, ch)),
        ]
    };
    let loud_at: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| loud(f, 0) || loud(f, 1))
        .map(|(i, _)| i)
        .collect();
    let longest = loud_at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    Heard {
        caller: side(0),
        callee: side(1),
        longest_quiet: Duration::from_secs_f64(longest as f64 / 8000.0),
    }
}

/// The record's parts as (node, offset_ms) (the API does not show their paths).
fn parts(record: &serde_json::Value) -> Vec<(String, i64)> {
    record["recording_parts"]
        .as_array()
        .unwrap_or_else(|| panic!("no recording_parts: {record}"))
        .iter()
        .map(|p| {
            (
                p["node"].as_str().unwrap_or_default().to_string(),
                p["offset_ms"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// The first part's path (the record's `recording`), relative to the recordings dir.
fn first_path(record: &serde_json::Value) -> String {
    record["recording"]
        .as_str()
        .unwrap_or_else(|| panic!("no recording: {record}"))
        .to_string()
}

/// With `node.recordings_dir` shared by the nodes (as NFS would be), the survivor that
/// did not record either part serves the whole call: n2's part (n2 is dead) and the
/// taking node's part, joined, the takeover gap under 3 s.
#[test]
fn a_recording_across_a_takeover_is_served_joined_from_a_shared_dir() {
    let shared = tempfile::tempdir().expect("tempdir");
    let rec = shared.path().join("recordings");
    let mut rig = Rig::new(&format!("recordings_dir = \"{}\"", rec.display()));
    // n2 has written a second of the call.
    rig.wait_recorded(&rec, |name| name.matches('.').count() == 1, 1.0);
    // The number's recording is turned off meanwhile: the call taken over records its
    // next part all the same, in the mode its first was (the parts are one recording;
    // without it the first part was left out of the record).
    rig.c
        .node("n1")
        .set_number(&rig.key, NUMBER, r#"{"recording": null}"#);
    rig.kill_n2_and_wait_resumed();
    // The survivor records a second of its own part (`<call>.<node>.wav`).
    rig.wait_recorded(&rec, |name| name.matches('.').count() == 2, 1.0);
    let record = rig.hang_up();
    let parts = parts(&record);
    assert_eq!(parts.len(), 2, "{record}");
    assert_eq!(parts[0].0, "n2", "{record}");
    let taker = parts[1].0.clone();
    assert!(taker == "n1" || taker == "n3", "{record}");
    assert!(
        parts[1].1 > 0,
        "the second part starts after the answer: {record}"
    );
    let id = record["call_id"].as_str().unwrap();

    // Served by the survivor that recorded neither part.
    let other = if taker == "n1" { "n3" } else { "n1" };
    let node = rig.c.node(other);
    let (status, head, wav) = get_bytes(
        node.ports.api,
        &format!("/v1/calls/{id}/recording"),
        &rig.key,
    );
    assert_eq!(status, 200, "{head}\n{}", String::from_utf8_lossy(&wav));
    let frames = stereo_frames(&wav);
    let first_part = (recorded_seconds(&rec.join(first_path(&record))) * 8000.0) as usize;
    assert!(first_part > 8000, "n2's part holds a second or more");
    assert!(
        frames.len() > first_part + 8000,
        "and the survivor's part follows it"
    );
    let h = heard(&frames, first_part);
    assert_eq!(h.caller, [true, true], "the caller is heard in both parts");
    assert_eq!(h.callee, [true, true], "the callee is heard in both parts");
    assert!(
        h.longest_quiet < GAP_UNDER,
        "the takeover gap is {:?} of silence",
        h.longest_quiet
    );
    assert!(head.contains("tsunagu-recording-parts: 2"), "{head}");
    eprintln!(
        "joined recording: {:.1} s, n2's part {:.1} s, the takeover gap {:?}",
        frames.len() as f64 / 8000.0,
        first_part as f64 / 8000.0,
        h.longest_quiet
    );
    assert_eq!(
        node.metric("tsunagu_api_recording_parts_read_total{source=\"local\"}"),
        2.0
    );
    assert_eq!(
        node.metric("tsunagu_api_recordings_served_total{outcome=\"served\"}"),
        1.0
    );
}

/// Without a shared dir, n2's part is on n2's disk: while n2 is down the recording is
/// 503 (Retry-After) naming that part, the survivor's part alone is served; once n2 is
/// back, the recording is served joined with n2's part fetched from it.
#[test]
fn a_part_on_a_dead_node_s_disk_is_served_once_it_is_back() {
    let mut rig = Rig::new("");
    let n2_dir = rig.c.node("n2").dir.path().join("data/recordings");
    rig.wait_recorded(&n2_dir, |name| name.matches('.').count() == 1, 1.0);
    rig.kill_n2_and_wait_resumed();
    let record = rig.hang_up();
    let parts = parts(&record);
    assert_eq!(parts.len(), 2, "{record}");
    let taker = parts[1].0.clone();
    let id = record["call_id"].as_str().unwrap();
    let path = format!("/v1/calls/{id}/recording");

    let node = rig.c.node(&taker);
    let (status, head, body) = get_bytes(node.ports.api, &path, &rig.key);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{head}\n{text}");
    assert!(head.contains("retry-after: 60"), "{head}");
    assert!(text.contains("part 1 (recorded on n2)"), "{text}");
    assert_eq!(
        node.metric("tsunagu_api_recording_parts_missing_total"),
        1.0
    );
    let (status, _, wav) = get_bytes(node.ports.api, &format!("{path}?part=2"), &rig.key);
    assert_eq!(status, 200);
    assert!(!stereo_frames(&wav).is_empty());

    rig.c.members.get_mut("n2").unwrap().node.start_again();
    let node = rig.c.node(&taker);
    let (status, head, wav) = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = get_bytes(node.ports.api, &path, &rig.key);
            if got.0 == 200 || Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(status, 200, "{head}\n{}", String::from_utf8_lossy(&wav));
    let frames = stereo_frames(&wav);
    let first_part = (recorded_seconds(&n2_dir.join(first_path(&record))) * 8000.0) as usize;
    let h = heard(&frames, first_part);
    assert_eq!((h.caller, h.callee), ([true, true], [true, true]));
    assert!(h.longest_quiet < GAP_UNDER, "{:?}", h.longest_quiet);
    assert_eq!(
        node.metric("tsunagu_api_recording_parts_read_total{source=\"peer\"}"),
        1.0
    );
}
