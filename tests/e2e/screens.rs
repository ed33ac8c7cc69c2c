//! The web screens in real Chromium (SPEC 5.5): the incoming-call screen shows a call
//! while it rings, with its caller, tracking number and the line it rings on, from the
//! live call stream; the call log screen lists the call once it ended, for the
//! operator's key and for its advertiser's; a key the API refuses brings the key form
//! back; the pages carry a strict content security policy.

use crate::harness::*;
use std::time::Duration;

const RINGS: &str = r#"[{"number": "0311112222", "ring_seconds": 4}]"#;

#[test]
fn the_screens_show_a_ringing_call_and_then_its_record_in_chromium() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, adv) = node.provision("0501234567", RINGS, "{}");
    let dir = tempfile::tempdir().unwrap();
    let _callee = Uas::start("uas_no_answer.xml", ports, dir.path(), &[]);
    // The caller waits out the ring time (4 s), then hears the refusal.
    let caller = std::thread::spawn(move || uac("uac.xml", ports, "0501234567", 1, 1, &[]));
    node.wait_until(Duration::from_secs(5), "the call ringing", || {
        node.calls(&key, "&state=active")
            .iter()
            .any(|c| c["stage"] == "ringing")
    });
    let profile = tempfile::tempdir().unwrap();
    let api = format!("http://127.0.0.1:{}", ports.api);
    let dom = chromium_dom(&format!("{api}/ui/live#key={key}"), profile.path(), 3000);
    let row = dom
        .split("<tr ")
        .find(|r| r.contains("data-state=\"ringing\""))
        .unwrap_or_else(|| panic!("no ringing call on the screen:\n{dom}"));
    for shown in ["09012345678 (mobile)", "0501234567", "0311112222"] {
        assert!(row.contains(shown), "{shown} not in the row: {row}");
    }
    // The screen shown, the key form not.
    assert!(dom.contains(r#"<main id="screen">"#), "{dom}");
    assert!(dom.contains(r#"<form id="key-form" hidden="">"#), "{dom}");
    let _ = caller.join();
    let calls = node.wait_for_calls(&key, 1);
    let id = calls[0]["call_id"].as_str().unwrap().to_string();
    let dom = chromium_dom(&format!("{api}/ui/calls#key={key}"), profile.path(), 3000);
    let row = dom
        .split("<tr ")
        .find(|r| r.contains(&format!("data-call-id=\"{id}\"")))
        .unwrap_or_else(|| panic!("the call is not in the log screen:\n{dom}"));
    assert!(
        row.contains("no_answer") && row.contains("0501234567"),
        "{row}"
    );
    // The advertiser's own key opens the call log on its calls (the API narrows them
    // to the advertiser; the screen asks nothing of the kind).
    let made = node.send(
        "POST",
        &format!("/v1/advertisers/{adv}/keys"),
        Some(&key),
        "",
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let adv_key = made.json()["api_key"].as_str().unwrap().to_string();
    let theirs = tempfile::tempdir().unwrap();
    let dom = chromium_dom(
        &format!("{api}/ui/calls#key={adv_key}"),
        theirs.path(),
        3000,
    );
    assert!(
        dom.contains(&format!("data-call-id=\"{id}\"")),
        "the advertiser's call is not on its screen:\n{dom}"
    );
    // A key the API refuses: the key form comes back, saying so.
    let other = tempfile::tempdir().unwrap();
    let dom = chromium_dom(&format!("{api}/ui/calls#key=tsk_wrong"), other.path(), 3000);
    assert!(dom.contains("That key was refused."), "{dom}");
    assert!(dom.contains(r#"<form id="key-form">"#), "{dom}");
    // Only this node's own scripts, styles and API; never framed.
    let page = http(ports.api, "GET", "/ui/live", None, None, &[]).unwrap();
    let headers = page.headers.to_ascii_lowercase();
    assert!(
        headers.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{headers}"
    );
    assert!(headers.contains("x-frame-options: deny"), "{headers}");
}
