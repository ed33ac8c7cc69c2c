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
    assert!(
        !row.contains("listen"),
        "a call without a recording has no button: {row}"
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

/// The call log screen plays a call's recording in the page, in real Chromium (over
/// WebDriver: a click): the WAV is fetched with the key the page holds (an `<audio>`
/// element cannot send one) and played from a `blob:` URL, the one media source the
/// page's policy allows; the player shows the recording's length. A call without a
/// recording has no button.
#[test]
fn the_call_log_screen_plays_a_calls_recording_in_chromium() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, call, _uas) = node.one_recorded_call(3000);
    assert_eq!(call["recording_status"], "complete", "{call}");
    let id = call["call_id"].as_str().unwrap().to_string();
    let talk = call["talk_seconds"].as_f64().unwrap();

    let browser = Browser::start(ports.sip + 6);
    browser.open(&format!(
        "http://127.0.0.1:{}/ui/calls#key={key}",
        ports.api
    ));
    let button = format!("tr[data-call-id=\"{id}\"] button.listen");
    browser.wait_for(
        Duration::from_secs(10),
        "the call's row with its button",
        &format!("return document.querySelector('{button}') !== null;"),
    );
    browser.click(&button);
    let length = browser.wait_for(
        Duration::from_secs(10),
        "the recording's length in the player",
        "const a = document.querySelector('tr.player audio'); \
         return a && a.readyState >= 1 ? a.duration : null;",
    );
    let length = length.as_f64().unwrap();
    assert!(
        (length - talk).abs() <= 1.5,
        "the player holds {length} s of a {talk} s call"
    );
    let src = browser.run("return document.querySelector('tr.player audio').src;");
    assert!(src.as_str().unwrap().starts_with("blob:"), "{src}");
    let shown = browser.run("return document.querySelector('tr.player .duration').textContent;");
    assert!(shown.as_str().unwrap().trim().contains(':'), "{shown}");
    // Clicked again, the player closes.
    browser.click(&button);
    browser.wait_for(
        Duration::from_secs(5),
        "the player closed",
        "return document.querySelector('tr.player') === null;",
    );
}

/// The incoming-call screen, reconnecting, looks up the calls it showed that the new
/// stream does not tell: a call that ended while the screen was disconnected is
/// shown ended (a new stream does not tell calls that ended before it opened, so
/// without the look-up the row stayed "answered" for good). Real Chromium over
/// WebDriver; the node ends each stream after 3 s (`api.stream_max_seconds`), and
/// the call is hung up once the page says it is reconnecting (it waits 2 s).
#[test]
fn the_live_screen_shows_a_call_that_ended_while_it_reconnected() {
    let ports = Ports::take();
    let mut node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _adv) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    node.restart_with_api_line("stream_max_seconds = 3");
    let party = crate::party::Party::start(ports.uac, ports.uas);
    let browser = Browser::start(ports.sip + 6);
    browser.open(&format!("http://127.0.0.1:{}/ui/live#key={key}", ports.api));
    let status = "document.getElementById('status').textContent";
    browser.wait_for(
        Duration::from_secs(10),
        "the stream open",
        &format!("return {status} === 'live';"),
    );
    let sip: std::net::SocketAddr = format!("127.0.0.1:{}", ports.sip).parse().unwrap();
    party.call(sip, "0501234567", "09012345678");
    let answered = "return document.querySelector('#live tr[data-state=\"answered\"]') !== null;";
    browser.wait_for(
        Duration::from_secs(10),
        "the call answered on the screen",
        answered,
    );
    browser.wait_for(
        Duration::from_secs(10),
        "the screen reconnecting",
        &format!("return {status}.startsWith('reconnecting');"),
    );
    let unclean = party.hang_up_all(Duration::from_secs(5));
    assert!(unclean.is_empty(), "calls not ended cleanly: {unclean:?}");
    // Hung up inside the gap (the page waits 2 s before it reconnects): else the new
    // stream tells the end itself and the look-up goes untested.
    assert_eq!(
        browser.run(&format!("return {status}.startsWith('reconnecting');")),
        true,
        "the call ended while the screen was still reconnecting"
    );
    browser.wait_for(
        Duration::from_secs(10),
        "the call shown ended after the reconnect",
        "return document.querySelector('#live tr[data-state=\"ended\"]') !== null;",
    );
    assert_eq!(
        browser.run(answered),
        false,
        "the row moved from answered to ended"
    );
}
