//! Call recording (2者間通話録音) end to end: SIPp plays G.711 audio, the callee echoes
//! it, and the node writes a WAV whose channels and length match the call; the file is
//! served to its operator only, and a `recording.ready` webhook announces it.

use crate::harness::*;

/// (channels, sample rate, seconds, per-channel mean absolute amplitude) of a WAV.
fn wav_facts(bytes: &[u8]) -> (u16, u32, f64, Vec<f64>) {
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..16], b"WAVEfmt ");
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]);
    let rate = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 44 + data, "header size matches the data");
    let samples: Vec<i16> = bytes[44..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let frames = samples.len() / channels as usize;
    let energy = (0..channels as usize)
        .map(|ch| {
            let sum: f64 = samples
                .iter()
                .skip(ch)
                .step_by(channels as usize)
                .map(|s| f64::from(*s).abs())
                .sum();
            sum / frames.max(1) as f64
        })
        .collect();
    (channels, rate, frames as f64 / f64::from(rate), energy)
}

#[test]
fn answered_calls_are_recorded_in_stereo_or_mono_and_served_to_their_operator() {
    let ports = Ports::take();
    let hook_port = ports.sip + 5;
    let receiver = Receiver::start(hook_port);
    let node = Node::start(
        ports,
        "127.0.0.1/32",
        &format!("[notify]\n{ALLOW_LOOPBACK}\n"),
    );
    let (key, _) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    node.set_number(&key, "0501234567", r#"{"recording": {"mode": "both"}}"#);
    let bad = node.patch_number(&key, "0501234567", r#"{"recording": {"mode": "everyone"}}"#);
    assert_eq!(bad.status, 400, "{}", bad.body);
    let hook = node.send(
        "POST",
        "/v1/webhooks",
        Some(&key),
        &format!(r#"{{"url": "http://127.0.0.1:{hook_port}/rec", "events": ["recording.ready"]}}"#),
    );
    assert_eq!(hook.status, 201, "{}", hook.body);

    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &["-rtp_echo"]);
    let run = uac("uac_rtp.xml", ports, "0501234567", 1, 1, &["-d", "4000"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["recording_status"], "complete", "{call}");
    let id = call["call_id"].as_str().unwrap();
    let talk = call["talk_seconds"].as_f64().unwrap();
    assert!(talk >= 3.0, "{call}");

    let got = node.get(&format!("/v1/calls/{id}/recording"), &key);
    assert_eq!(got.status, 200, "{}", got.headers);
    assert!(got
        .headers
        .to_ascii_lowercase()
        .contains("content-type: audio/wav"));
    let file = std::fs::read(
        node.dir
            .path()
            .join("data/recordings")
            .join(call["recording"].as_str().unwrap()),
    )
    .unwrap();
    let (channels, rate, seconds, energy) = wav_facts(&file);
    assert_eq!((channels, rate), (2, 8000));
    assert!(
        (seconds - talk).abs() <= 1.5,
        "{seconds} s recorded for {talk} s of talk"
    );
    assert!(
        energy[0] > 100.0 && energy[1] > 100.0,
        "both parties are heard: {energy:?}"
    );
    assert!(
        got.headers
            .to_ascii_lowercase()
            .contains(&format!("content-length: {}", file.len())),
        "the API serves the file: {}",
        got.headers
    );
    assert!(got.body.starts_with("RIFF"));

    let other = node.other_operator();
    assert_eq!(
        node.get(&format!("/v1/calls/{id}/recording"), &other)
            .status,
        404
    );

    let ready = receiver.wait_for("/rec", 1);
    assert_eq!(ready.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&ready[0].body).unwrap();
    assert_eq!(v["type"], "recording.ready");
    assert_eq!(v["data"]["call_id"], id);
    assert_eq!(v["data"]["url"], format!("/v1/calls/{id}/recording"));

    // One side only: mono, the caller.
    node.set_number(&key, "0501234567", r#"{"recording": {"mode": "caller"}}"#);
    let run = uac("uac_rtp.xml", ports, "0501234567", 1, 1, &["-d", "2000"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let calls = node.wait_for_calls(&key, 2);
    let second = calls.iter().find(|c| c["call_id"] != id).unwrap();
    let got = node.get(
        &format!(
            "/v1/calls/{}/recording",
            second["call_id"].as_str().unwrap()
        ),
        &key,
    );
    assert_eq!(got.status, 200);
    let file = std::fs::read(
        node.dir
            .path()
            .join("data/recordings")
            .join(second["recording"].as_str().unwrap()),
    )
    .unwrap();
    let (channels, _, seconds, energy) = wav_facts(&file);
    assert_eq!(channels, 1);
    assert!(seconds >= 1.0 && energy[0] > 100.0, "{seconds} {energy:?}");
    assert_eq!(
        node.metric("tsunagu_recordings_written_total{status=\"complete\"}"),
        2.0
    );
}

/// A number that records with a notice is never recorded without it: a caller whose
/// audio is not G.711 (G.729 here; the node's prompts are G.711) cannot be played
/// the notice, so the call goes on unrecorded and is counted (it was recorded
/// silently); a G.711 caller of the same number hears it and is recorded.
#[test]
fn a_caller_that_cannot_hear_the_recording_notice_is_not_recorded() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    node.set_number(
        &key,
        "0501234567",
        r#"{"recording": {"mode": "both", "notice": "recording_notice"}}"#,
    );
    let g729 = |name: &str| {
        let text = std::fs::read_to_string(scenario(name)).unwrap();
        let edited = text
            .replace("RTP/AVP 8 101", "RTP/AVP 18 101")
            .replace("a=rtpmap:8 PCMA/8000", "a=rtpmap:18 G729/8000");
        assert!(!edited.contains("PCMA"), "{name}: every offer edited");
        let path = node.dir.path().join(format!("g729_{name}"));
        std::fs::write(&path, edited).unwrap();
        path.display().to_string()
    };
    let uas = Uas::start(&g729("uas_answer.xml"), ports, node.dir.path(), &[]);
    let run = uac(&g729("uac.xml"), ports, "0501234567", 1, 1, &["-d", "500"]);
    assert_eq!(run.successful, 1, "{}", run.output);
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["result"], "answered", "{call}");
    assert!(call["recording"].is_null(), "not recorded: {call}");
    assert_eq!(node.metric("tsunagu_recordings_withheld_total"), 1.0);
    assert_eq!(node.metric("tsunagu_recordings_started_total"), 0.0);
    assert_eq!(
        node.metric("tsunagu_prompts_played_total{purpose=\"recording_notice\"}"),
        0.0
    );
    drop(uas);

    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let run = uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "500"]);
    assert_eq!(run.successful, 1, "{}", run.output);
    let calls = node.wait_for_calls(&key, 2);
    assert!(
        calls.iter().any(|c| c["recording"].is_string()),
        "the G.711 caller's call is recorded: {calls:?}"
    );
    assert_eq!(
        node.metric("tsunagu_prompts_played_total{purpose=\"recording_notice\"}"),
        1.0
    );
    assert_eq!(node.metric("tsunagu_recordings_withheld_total"), 1.0);
}

/// A recordings disk with less free than `node.recordings_min_free_mb` (here a guard
/// past any disk) stops recordings, not calls: the call of a number that records is
/// answered and logged unrecorded, counted by reason, and the free space is exported.
/// Day folders past `node.recordings_retention_days` are deleted with their files at
/// start (then hourly); a newer one and anything not named as a day stay.
#[test]
fn a_full_recordings_disk_stops_recordings_not_calls_and_old_days_expire() {
    let ports = Ports::take();
    let node = Node::start_prepared(
        ports,
        "127.0.0.1/32",
        "recordings_min_free_mb = 1073741824\nrecordings_retention_days = 30",
        "",
        "",
        |data| {
            let old = data.join("recordings/2020-01-01");
            std::fs::create_dir_all(&old).unwrap();
            std::fs::write(old.join("a.wav"), b"old").unwrap();
            std::fs::write(old.join("b.wav"), b"old").unwrap();
            std::fs::create_dir_all(data.join("recordings/keep-me")).unwrap();
        },
    );
    let recordings = node.dir.path().join("data/recordings");
    node.wait_until(
        std::time::Duration::from_secs(10),
        "the old day folder deleted",
        || !recordings.join("2020-01-01").exists(),
    );
    assert_eq!(node.metric("tsunagu_recordings_expired_total"), 2.0);
    assert!(recordings.join("keep-me").exists());
    assert!(node.metric("tsunagu_recordings_disk_free_bytes") > 0.0);

    let (_key, call, _uas) = node.one_recorded_call(1000);
    assert_eq!(call["result"], "answered", "{call}");
    assert!(
        call["recording"].is_null() && call["recording_status"].is_null(),
        "{call}"
    );
    assert_eq!(
        node.metric("tsunagu_recordings_skipped_total{reason=\"disk_full\"}"),
        1.0
    );
    assert_eq!(node.metric("tsunagu_recordings_started_total"), 0.0);
}
