//! Prompts, DTMF, IVR and post-call judgement end to end: what the caller's phone
//! actually receives (a test socket stands in for it), keys pressed with RFC 4733
//! (SIPp playing a telephone-event pcap) and SIP INFO, and what the call log keeps.

use crate::harness::*;
use std::time::Duration;
use tsunagu_media::Prompt;

/// An RTP packet as the caller's phone sees it.
struct Rtp {
    marker: bool,
    payload_type: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    payload: Vec<u8>,
}

fn rtp(p: &[u8]) -> Rtp {
    assert!(p.len() >= 12 && p[0] >> 6 == 2, "not RTP: {p:?}");
    Rtp {
        marker: p[1] & 0x80 != 0,
        payload_type: p[1] & 0x7f,
        seq: u16::from_be_bytes([p[2], p[3]]),
        ts: u32::from_be_bytes(p[4..8].try_into().unwrap()),
        ssrc: u32::from_be_bytes(p[8..12].try_into().unwrap()),
        payload: p[12..].to_vec(),
    }
}

/// A WAV file (8 kHz 16-bit mono) of `samples`.
fn wav(samples: &[i16]) -> Vec<u8> {
    let mut w = tsunagu_media::wav::header(1, (samples.len() * 2) as u32).to_vec();
    for s in samples {
        w.extend_from_slice(&s.to_le_bytes());
    }
    w
}

fn upload(node: &Node, key: &str, name: &str, body: &[u8]) -> Response {
    http_bytes(
        node.ports.api,
        "PUT",
        &format!("/v1/prompts/{name}"),
        Some(key),
        body,
        &[("Content-Type", "audio/wav")],
    )
    .expect("PUT prompt")
}

#[test]
fn callers_hear_the_notice_then_ringback_then_the_callee_in_one_rtp_stream() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, adv) = node.provision(
        "0501234567",
        r#"[{"number": "0311112222", "ring_seconds": 10}]"#,
        "{}",
    );
    // The operator's own prompt: 0.4 s of a 1 kHz tone (20 frames).
    let tone: Vec<i16> = (0..3200)
        .map(|i| ((f64::from(i) * std::f64::consts::PI / 4.0).sin() * 8000.0) as i16)
        .collect();
    let up = upload(&node, &key, "hello", &wav(&tone));
    assert_eq!(up.status, 200, "{}", up.body);
    assert_eq!(up.json()["seconds"], 0.4);
    let bad = upload(&node, &key, "hello2", b"RIFF....WAVEnot audio");
    assert_eq!(bad.status, 422, "{}", bad.body);
    let mut stereo = tsunagu_media::wav::header(2, 4).to_vec();
    stereo.extend_from_slice(&[0; 4]);
    let bad = upload(&node, &key, "hello2", &stereo);
    assert!(bad.body.contains("8000 Hz 16-bit PCM mono"), "{}", bad.body);
    let listed = node.get("/v1/prompts", &key).json();
    let names: Vec<(String, bool)> = listed["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["own"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(names.contains(&("hello".into(), true)), "{names:?}");
    assert!(
        names.contains(&("queue".into(), false)),
        "defaults: {names:?}"
    );
    let other = node.other_operator();
    let theirs = node.get("/v1/prompts", &other).json();
    assert!(
        !theirs.to_string().contains("hello"),
        "another operator's prompt is not listed: {theirs}"
    );
    let missing = node.patch_number(
        &key,
        "0501234567",
        r#"{"recording": {"mode": "both", "notice": "nope"}}"#,
    );
    assert_eq!(missing.status, 422, "{}", missing.body);
    assert!(
        missing.body.contains("recording.notice"),
        "{}",
        missing.body
    );
    node.set_number(
        &key,
        "0501234567",
        r#"{"recording": {"mode": "both", "notice": "hello"}}"#,
    );

    // The callee rings for 1.5 s, answers and talks (PCMA from a pcap).
    let _uas = Uas::start(
        "uas_answer_play.xml",
        ports,
        node.dir.path(),
        &["-d", "1500"],
    );
    let ear = Ear::bind(ports.uac_media + 20);
    let port = ear.port.to_string();
    let run = uac(
        "uac_listen.xml",
        ports,
        "0501234567",
        1,
        1,
        &["-d", "1500", "-key", "ear_port", &port],
    );
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["result"], "answered", "{call}");
    ear_packets_checked(&ear, &tone);
    assert_eq!(
        node.metric("tsunagu_prompts_played_total{purpose=\"recording_notice\"}"),
        1.0
    );

    // Closed (absence switch) with a prompt: the caller hears it, then is refused.
    node.set_number(
        &key,
        "0501234567",
        r#"{"absent": true, "schedule": {"weekly": {}, "closed_prompt": "hello"}}"#,
    );
    let ear = Ear::bind(ports.uac_media + 22);
    let port = ear.port.to_string();
    let run = uac(
        "uac_listen.xml",
        ports,
        "0501234567",
        1,
        1,
        &["-key", "ear_port", &port],
    );
    assert_eq!(run.exit, 0, "{}", run.output);
    let calls = node.wait_for_calls(&key, 2);
    let closed = calls
        .iter()
        .find(|c| c["result"] == "absent")
        .expect("absent call");
    assert_eq!(closed["sip_code"], 480, "{closed}");
    let heard: Vec<Rtp> = ear.packets().iter().map(|(_, p)| rtp(p)).collect();
    let prompt = Prompt::from_samples(&tone);
    assert_eq!(
        heard.len(),
        prompt.frames(),
        "the whole prompt, then nothing"
    );
    for (i, p) in heard.iter().enumerate() {
        assert_eq!(p.payload, prompt.frame(8, i), "frame {i}");
    }
    // A caller who hangs up during that prompt (most do) is logged closed all the
    // same: the result was decided before the prompt (it was logged `cancelled`).
    let cancel_in_prompt = scenario_replacing(
        node.dir.path(),
        "uac_cancel.xml",
        "<recv response=\"183\" optional=\"true\"/>\n  <recv response=\"180\"/>",
        "<recv response=\"183\"/>",
        "uac_cancel_in_prompt.xml",
    );
    let run = uac(&cancel_in_prompt, ports, "0501234567", 1, 1, &["-d", "100"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let calls = node.wait_for_calls(&key, 3);
    let absent: Vec<_> = calls.iter().filter(|c| c["result"] == "absent").collect();
    assert_eq!(absent.len(), 2, "{calls:?}");
    assert!(absent.iter().any(|c| c["sip_code"] == 487), "{absent:?}");

    // A prompt a number still names is not deleted (its calls would go on without
    // it), nor is a pool created with a notice that does not exist (its callers
    // would be recorded without one).
    let del = node.send("DELETE", "/v1/prompts/hello", Some(&key), "");
    assert_eq!(del.status, 409, "{}", del.body);
    assert!(del.body.contains("0501234567"), "{}", del.body);
    assert!(
        node.get("/v1/prompts", &key).body.contains("\"hello\""),
        "still listed"
    );
    let pool = format!(
        r#"{{"advertiser_id": "{adv}", "mode": "dynamic", "numbers": ["0505559001"], "hold_seconds": 600,
            "destinations": [{{"number": "0311112222", "ring_seconds": 20}}],
            "recording": {{"mode": "both", "notice": "nope"}}}}"#
    );
    let refused = node.send("POST", "/v1/pools", Some(&key), &pool);
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("recording.notice"),
        "{}",
        refused.body
    );
    assert_eq!(
        node.send(
            "POST",
            "/v1/pools",
            Some(&key),
            &pool.replace("nope", "hello")
        )
        .status,
        201
    );
    // A prompt no number names goes.
    assert_eq!(upload(&node, &key, "spare", &wav(&tone)).status, 200);
    assert_eq!(
        node.send("DELETE", "/v1/prompts/spare", Some(&key), "")
            .status,
        204
    );
}

/// Checks what the listening caller got in the first call: the notice, ringback, then
/// the callee's audio, as one stream.
fn ear_packets_checked(ear: &Ear, tone: &[i16]) -> usize {
    let heard: Vec<Rtp> = ear.packets().iter().map(|(_, p)| rtp(p)).collect();
    assert!(heard.len() > 100, "{} packets", heard.len());
    let ssrc = heard[0].ssrc;
    for (i, w) in heard.windows(2).enumerate() {
        assert_eq!(w[1].ssrc, ssrc, "packet {}: one SSRC throughout", i + 1);
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "packet {}: no sequence gap",
            i + 1
        );
        assert!(
            w[1].ts.wrapping_sub(w[0].ts) < 0x8000_0000 && w[1].ts != w[0].ts,
            "packet {}: timestamps advance",
            i + 1
        );
    }
    // The notice, in the caller's codec (PCMA: the offer's first).
    let notice = Prompt::from_samples(tone);
    assert!(heard[0].marker, "the stream starts with the marker bit");
    for (i, p) in heard.iter().take(notice.frames()).enumerate() {
        assert_eq!(p.payload_type, 8);
        assert_eq!(p.payload, notice.frame(8, i), "notice frame {i}");
    }
    // Then the ringback tone while the callee rings (1.5 s: at least a second of it).
    let ringback = Prompt::ringback();
    let ringing = heard[notice.frames()..]
        .iter()
        .enumerate()
        .take_while(|(i, p)| p.payload == ringback.frame(8, i % ringback.frames()))
        .count();
    assert!(ringing >= 50, "{ringing} ringback frames");
    // Then the callee: not generated audio, flagged as a new talkspurt.
    let first_callee = &heard[notice.frames() + ringing];
    assert!(first_callee.marker, "marker when the callee's audio starts");
    assert_eq!(first_callee.payload_type, 8);
    let callee = heard.len() - notice.frames() - ringing;
    assert!(callee >= 25, "{callee} packets from the callee");
    callee
}

/// The callee's key as RFC 4733 telephone-events judges the call too: the relay
/// learns the callee's telephone-event type from its answer (the test above presses
/// the judgement key by SIP INFO).
#[test]
fn the_callee_judges_the_call_with_telephone_events() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision(
        "0501234567",
        r#"[{"number": "0311112222"}]"#,
        r#"{"require_judgement_digit": true}"#,
    );
    node.set_number(
        &key,
        "0501234567",
        r#"{"judgement": {"prompt": "judgement", "seconds": 5}}"#,
    );
    // The caller hangs up 1 s after the answer; the callee presses 1 2.5 s after it.
    let _uas = Uas::start(
        "uas_judge_rfc4733.xml",
        ports,
        node.dir.path(),
        &["-d", "200"],
    );
    let run = uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "1000"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["judgement_digit"], "1", "{call}");
    assert_eq!(call["validity"], "valid", "{call}");
    assert_eq!(
        node.metric("tsunagu_judgements_total{outcome=\"digit\"}"),
        1.0
    );
    assert!(node.metric("tsunagu_dtmf_digits_total{source=\"rfc4733\"}") >= 1.0);
}

#[test]
fn the_ivr_routes_by_key_and_the_callee_judges_the_call_after_the_caller_hangs_up() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision(
        "0501234567",
        r#"[{"number": "0311112222"}]"#,
        r#"{"require_ivr_digit": true, "require_judgement_digit": true}"#,
    );
    let bad = node.patch_number(
        &key,
        "0501234567",
        r#"{"ivr": {"prompt": "ivr_menu", "routes": {"12": [{"number": "0311112222"}]}}}"#,
    );
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body.contains("ivr.routes.12"), "{}", bad.body);
    let bad = node.patch_number(
        &key,
        "0501234567",
        r#"{"ivr": {"prompt": "ivr_menu", "routes": {"1": [{"number": "x"}]}}}"#,
    );
    assert!(
        bad.body.contains("ivr.routes.1.destinations[0].number"),
        "{}",
        bad.body
    );
    let bad = node.patch_number(&key, "0501234567", r#"{"judgement": {"seconds": 0}}"#);
    assert!(bad.body.contains("judgement.seconds"), "{}", bad.body);
    node.set_number(
        &key,
        "0501234567",
        r#"{"ivr": {"prompt": "ivr_menu", "routes": {
               "1": [{"number": "0311112222"}],
               "2": [{"number": "0322223333", "ring_seconds": 10}]}},
            "judgement": {"prompt": "judgement", "seconds": 5}}"#,
    );

    // The caller presses 2 (RFC 4733) a second into the menu and stays 2 s; the
    // callee rings 0.5 s, answers, and presses 1 (SIP INFO) after the caller left.
    let uas = Uas::start("uas_judge.xml", ports, node.dir.path(), &["-d", "500"]);
    // The caller asks for a session timer, which the menu's own 200 does not take on:
    // the callee is not asked for one either (told `refresher=uac`, it hung the call
    // up at the interval, nobody refreshing).
    let with_timer = scenario_with_header(
        node.dir.path(),
        "uac_ivr_key.xml",
        "Supported: timer\n      Session-Expires: 300;refresher=uac",
    );
    let run = uac(&with_timer, ports, "0501234567", 1, 1, &["-d", "2000"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["result"], "answered", "{call}");
    assert_eq!(call["destination_number"], "0322223333", "{call}");
    assert_eq!(call["ivr_digits"], "2", "{call}");
    assert_eq!(call["judgement_digit"], "1", "{call}");
    assert_eq!(call["validity"], "valid", "{call}");
    let talk = call["talk_seconds"].as_u64().unwrap();
    assert!(talk <= 2, "talk time ends when the caller hangs up: {call}");
    let messages = uas.messages();
    assert!(
        messages.contains("INVITE sip:0322223333@"),
        "key 2 routed to its destination: {messages}"
    );
    assert!(
        !messages.contains("Session-Expires"),
        "no session timer asked of the callee: {messages}"
    );
    assert_eq!(node.metric("tsunagu_ivr_total{outcome=\"routed\"}"), 1.0);
    assert_eq!(
        node.metric("tsunagu_judgements_total{outcome=\"digit\"}"),
        1.0
    );
    assert!(node.metric("tsunagu_dtmf_digits_total{source=\"rfc4733\"}") >= 1.0);
    assert_eq!(
        node.metric("tsunagu_dtmf_digits_total{source=\"info\"}"),
        1.0
    );
}

/// A tone of `hz` for `frames` 20 ms frames.
fn tone(hz: f64, frames: usize) -> Vec<i16> {
    (0..frames * 160)
        .map(|i| ((i as f64 * 2.0 * std::f64::consts::PI * hz / 8000.0).sin() * 8000.0) as i16)
        .collect()
}

#[test]
fn a_queued_caller_hears_the_queue_prompt_looped_then_the_final_prompt() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    let (hold, bye) = (tone(500.0, 10), tone(1500.0, 5));
    assert_eq!(upload(&node, &key, "hold", &wav(&hold)).status, 200);
    assert_eq!(upload(&node, &key, "bye", &wav(&bye)).status, 200);
    node.set_number(
        &key,
        "0501234567",
        r#"{"queue": {"max_lines": 1, "max_wait_seconds": 2, "prompt": "hold", "timeout_prompt": "bye"}}"#,
    );
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    // The first caller takes the only line for 5 s.
    let first =
        std::thread::spawn(move || uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "5000"]));
    node.wait_until(Duration::from_secs(10), "the first call is up", || {
        node.metric("tsunagu_active_calls") >= 1.0
    });
    let ear = Ear::bind(ports.uac_media + 20);
    let mut second = ports;
    second.uac = ports.uac + 5;
    second.uac_media = ports.uac_media + 30;
    let port = ear.port.to_string();
    let run = uac(
        "uac_listen.xml",
        second,
        "0501234567",
        1,
        1,
        &["-key", "ear_port", &port],
    );
    assert_eq!(run.exit, 0, "{}", run.output);
    let run = first.join().unwrap();
    assert_eq!(run.successful, 1, "{}", run.output);
    let calls = node.wait_for_calls(&key, 2);
    let waited = calls
        .iter()
        .find(|c| c["result"] == "queue_timeout")
        .expect("timed out");
    assert_eq!(waited["sip_code"], 480, "{waited}");

    let heard: Vec<Rtp> = ear.packets().iter().map(|(_, p)| rtp(p)).collect();
    let (hold, bye) = (Prompt::from_samples(&hold), Prompt::from_samples(&bye));
    let looped = heard
        .iter()
        .enumerate()
        .take_while(|(i, p)| p.payload == hold.frame(8, i % hold.frames()))
        .count();
    // Two seconds of waiting: about 100 frames, the 10-frame prompt about ten times.
    assert!(
        (80..=120).contains(&looped),
        "{looped} frames of the queue prompt"
    );
    let rest = &heard[looped..];
    assert_eq!(rest.len(), bye.frames(), "then the final prompt, once");
    for (i, p) in rest.iter().enumerate() {
        assert_eq!(p.payload, bye.frame(8, i), "final prompt frame {i}");
    }
    assert!(heard
        .windows(2)
        .all(|w| w[1].seq == w[0].seq.wrapping_add(1)));
    assert_eq!(
        node.metric("tsunagu_prompts_played_total{purpose=\"queue\"}"),
        1.0
    );
    assert_eq!(
        node.metric("tsunagu_prompts_played_total{purpose=\"queue_timeout\"}"),
        1.0
    );
}

#[test]
fn an_advertisers_line_limit_queues_calls_to_any_of_its_numbers() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, adv) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    node.add_number(
        &key,
        &adv,
        "0501234568",
        r#"[{"number": "0311112222"}]"#,
        "{}",
    );
    let path = format!("/v1/advertisers/{adv}");
    let bad = node.send("PATCH", &path, Some(&key), r#"{"lines": {"max_lines": 0}}"#);
    assert_eq!(
        bad.json()["error"]["field"],
        "lines.max_lines",
        "{}",
        bad.body
    );
    let set = node.send(
        "PATCH",
        &path,
        Some(&key),
        r#"{"lines": {"max_lines": 1, "max_wait_seconds": 20}}"#,
    );
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.json()["lines"]["max_lines"], 1);
    assert_eq!(
        set.json()["name"],
        "shop",
        "a PATCH keeps what it does not name"
    );

    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    // The first number's caller holds the advertiser's only line for 2 s; the second
    // number's caller waits and connects when it frees.
    let first =
        std::thread::spawn(move || uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "2000"]));
    node.wait_until(Duration::from_secs(10), "the first call is up", || {
        node.metric("tsunagu_active_calls") >= 1.0
    });
    let mut second = ports;
    second.uac = ports.uac + 5;
    second.uac_media = ports.uac_media + 30;
    let run = uac("uac.xml", second, "0501234568", 1, 1, &["-d", "500"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    assert_eq!(first.join().unwrap().successful, 1);
    let calls = node.wait_for_calls(&key, 2);
    assert!(calls.iter().all(|c| c["result"] == "answered"), "{calls:?}");
    let by_number = |n: &str| calls.iter().find(|c| c["tracking_number"] == n).unwrap();
    let (a, b) = (by_number("0501234567"), by_number("0501234568"));
    assert!(
        b["answered_at"].as_str() >= a["ended_at"].as_str(),
        "the second number's call connected only after the first ended: {a} {b}"
    );
    assert_eq!(node.metric("tsunagu_calls_queued_total"), 1.0);

    // Without the limit both connect at once.
    let cleared = node.send("PATCH", &path, Some(&key), r#"{"lines": null}"#);
    assert_eq!(
        cleared.json()["lines"],
        serde_json::Value::Null,
        "{}",
        cleared.body
    );
    let first =
        std::thread::spawn(move || uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "2000"]));
    node.wait_until(Duration::from_secs(10), "the first call is up", || {
        node.metric("tsunagu_active_calls") >= 1.0
    });
    let run = uac("uac.xml", second, "0501234568", 1, 1, &["-d", "500"]);
    assert_eq!(run.successful, 1, "{}", run.output);
    assert_eq!(first.join().unwrap().successful, 1);
    assert_eq!(
        node.metric("tsunagu_calls_queued_total"),
        1.0,
        "nobody queued"
    );
}

/// The files under `dir` named `name`.
fn files_named(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n == name))
        .collect()
}

/// A prompt deleted through the API is gone from the node's disk too, and stays gone
/// across a restart. (Its file was left when the announcement, run first, had
/// dropped the node's copy: the deletion then found no copy and kept the file, which
/// came back at the next start.)
#[test]
fn a_deleted_prompt_stays_deleted_across_a_restart() {
    let ports = Ports::take();
    let mut node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    let up = upload(&node, &key, "farewell", &wav(&[0; 1600]));
    assert_eq!(up.status, 200, "{}", up.body);
    assert_eq!(files_named(node.dir.path(), "farewell.wav").len(), 1);
    let gone = node.send("DELETE", "/v1/prompts/farewell", Some(&key), "");
    assert_eq!(gone.status, 204, "{}", gone.body);
    assert_eq!(
        files_named(node.dir.path(), "farewell.wav"),
        Vec::<std::path::PathBuf>::new(),
        "the file is deleted"
    );
    node.restart();
    let listed = node.get("/v1/prompts", &key).json();
    assert!(
        !listed.to_string().contains("farewell"),
        "back after a restart: {listed}"
    );
}
