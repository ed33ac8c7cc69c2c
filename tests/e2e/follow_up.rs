//! Follow-ups after calls, end to end: signed webhooks that survive a receiver outage
//! and a node restart, e-mail through a real SMTP server, SMS through an HTTP gateway,
//! GA4 conversions, callback numbers, and the page tag in real headless Chromium.

use crate::harness::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// Verifies a `Tsunagu-Signature` with Python's own hmac module (an implementation
/// independent of ours).
fn signature_ok(secret: &str, header: &str, body: &str) -> bool {
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import hmac,hashlib,sys\n\
             secret, header, body = sys.argv[1], sys.argv[2], sys.stdin.read()\n\
             parts = dict(p.split('=', 1) for p in header.split(','))\n\
             mac = hmac.new(secret.encode(), (parts['t'] + '.' + body).encode(), hashlib.sha256).hexdigest()\n\
             sys.exit(0 if hmac.compare_digest(mac, parts['v1']) else 1)",
            secret,
            header,
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(body.as_bytes())?;
            c.wait()
        })
        .expect("python3");
    out.success()
}

#[test]
fn webhooks_reach_a_receiver_that_was_down_across_a_node_restart() {
    let ports = Ports::take();
    let hook_port = ports.sip + 5;
    let mut node = Node::start(
        ports,
        "127.0.0.1/32",
        &format!("[notify]\nretry_base_ms = 200\n{ALLOW_LOOPBACK}\n"),
    );
    let (key, _) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    let bad = node.send(
        "POST",
        "/v1/webhooks",
        Some(&key),
        r#"{"url": "ftp://x", "events": ["call.ended"]}"#,
    );
    assert_eq!(
        (bad.status, bad.json()["error"]["field"].as_str()),
        (422, Some("url")),
        "{}",
        bad.body
    );
    let bad = node.send(
        "POST",
        "/v1/webhooks",
        Some(&key),
        r#"{"url": "http://127.0.0.1:1/", "events": ["call.exploded"]}"#,
    );
    assert_eq!(bad.json()["error"]["field"], "events[0]", "{}", bad.body);
    let created = node.send(
        "POST",
        "/v1/webhooks",
        Some(&key),
        &format!(r#"{{"url": "http://127.0.0.1:{hook_port}/hooks/calls"}}"#),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let secret = created.json()["secret"].as_str().unwrap().to_string();
    assert!(
        !node.get("/v1/webhooks", &key).body.contains(&secret),
        "the secret is shown once"
    );

    // The receiver is down: three answered calls, and deliveries fail and are retried.
    let uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let run = uac("uac.xml", ports, "0501234567", 3, 10, &["-d", "200"]);
    assert_eq!((run.exit, run.successful), (0, 3), "{}", run.output);
    node.wait_for_calls(&key, 3);
    node.wait_until(
        std::time::Duration::from_secs(20),
        "failed webhook attempts",
        || node.metric("tsunagu_follow_up_failures_total{kind=\"webhook\"}") >= 9.0,
    );
    assert_eq!(
        node.metric("tsunagu_follow_ups_delivered_total{kind=\"webhook\"}"),
        0.0
    );

    // The node restarts while the events are still undelivered; then the receiver returns.
    node.restart();
    let receiver = Receiver::start(hook_port);
    let got = receiver.wait_for("/hooks/calls", 9);
    let mut ids = BTreeSet::new();
    let mut per_type = std::collections::BTreeMap::new();
    for r in &got {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let sig = r.header("tsunagu-signature").expect("signature header");
        assert!(
            signature_ok(&secret, sig, &r.body),
            "bad signature {sig} for {}",
            r.body
        );
        assert!(!signature_ok("whsec_wrong", sig, &r.body));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(r.header("tsunagu-event-id"), v["id"].as_str());
        ids.insert(v["id"].as_str().unwrap().to_string());
        *per_type
            .entry(v["type"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
        if v["type"] == "call.ended" {
            assert_eq!(v["data"]["result"], "answered");
            assert_eq!(v["data"]["tracking_number"], "0501234567");
        }
    }
    assert_eq!(
        ids.len(),
        9,
        "every event of 3 calls, each once: {per_type:?}"
    );
    assert_eq!(
        per_type,
        [("call.answered", 3), ("call.ended", 3), ("call.started", 3)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    );
    node.wait_until(
        std::time::Duration::from_secs(10),
        "the outbox to drain",
        || {
            node.metric("tsunagu_follow_ups_delivered_total{kind=\"webhook\"}") >= 9.0
                && node.metric("tsunagu_follow_ups_pending") == 0.0
        },
    );
    drop(uas);
}

/// A node whose notices go by SMTP with `tls = "starttls"` to a relay on loopback
/// at `smtp_port`, trusting the CA `ca`.
fn starttls_node(ports: Ports, smtp_port: u16, ca: &std::path::Path) -> Node {
    Node::start(
        ports,
        "127.0.0.1/32",
        &format!(
            r#"
[notify]
retry_base_ms = 200
ca_file = "{ca}"
{ALLOW_LOOPBACK}
[notify.smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "starttls"
from = "tsunagu <calls@example.com>"
"#,
            ca = ca.display()
        ),
    )
}

/// A number whose missed calls are e-mailed to owner@example.com, and one missed
/// call to it (the callee busy).
fn missed_call_with_notice(node: &Node, ports: Ports) {
    let (key, _) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    node.set_number(
        &key,
        "0501234567",
        r#"{"notify": {"email_to": ["owner@example.com"]}}"#,
    );
    let busy = Uas::start("uas_busy.xml", ports, node.dir.path(), &[]);
    let run = uac_expecting(486, node.dir.path(), ports, "0501234567", 1, &[]);
    assert_eq!(run.exit, 0, "{}", run.output);
    drop(busy);
}

/// Notices to a relay that takes mail only after STARTTLS (aiosmtpd with a
/// certificate of a test CA the node trusts through `notify.ca_file`): the e-mail of a
/// missed call arrives. Plain SMTP gets "530 Must issue a STARTTLS command first".
#[test]
fn notices_reach_a_relay_that_requires_starttls() {
    let ports = Ports::take();
    let smtp_port = ports.sip + 6;
    let work = tempfile::tempdir().unwrap();
    crate::tls::make_ca(work.path());
    crate::tls::make_leaf(work.path(), "relay");
    let smtp = SmtpServer::start_requiring_starttls(
        smtp_port,
        work.path(),
        &work.path().join("relay.pem"),
        &work.path().join("relay.key"),
    );
    let node = starttls_node(ports, smtp_port, &work.path().join("ca.pem"));
    missed_call_with_notice(&node, ports);
    let mails = smtp.wait_for(1);
    assert_eq!(mails.len(), 1, "{}", node.log());
    assert!(mails[0].contains("To: owner@example.com"), "{}", mails[0]);
    // Counted once the relay's 250 is read, a moment after the mail is stored.
    node.wait_until(Duration::from_secs(5), "the delivery counted", || {
        node.metric("tsunagu_follow_ups_delivered_total{kind=\"email\"}") == 1.0
    });
    assert_eq!(
        node.metric("tsunagu_follow_ups_delivered_total{kind=\"email\"}"),
        1.0
    );
}

/// With `tls = "starttls"` a notice never goes in clear nor to a relay whose
/// certificate the node does not trust: first a relay that offers no STARTTLS (plain
/// aiosmtpd), then, on the same port, one with a certificate of a CA not in
/// `notify.ca_file`. Each attempt fails and is counted; neither relay gets the mail.
/// (`notices_reach_a_relay_that_requires_starttls` shows the same node settings
/// delivering to a trusted one.)
#[test]
fn notices_never_go_in_clear_or_to_an_untrusted_relay() {
    let ports = Ports::take();
    let smtp_port = ports.sip + 6;
    let trusted = tempfile::tempdir().unwrap();
    crate::tls::make_ca(trusted.path());
    let rogue = tempfile::tempdir().unwrap();
    crate::tls::make_ca(rogue.path());
    crate::tls::make_leaf(rogue.path(), "relay");
    let node = starttls_node(ports, smtp_port, &trusted.path().join("ca.pem"));
    let failures = || node.metric("tsunagu_follow_up_failures_total{kind=\"email\"}");
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = SmtpServer::start(smtp_port, plain_dir.path());
    missed_call_with_notice(&node, ports);
    // Two attempts: a node that fell back to clear on a retry would have delivered.
    node.wait_until(
        Duration::from_secs(20),
        "two attempts at the relay without STARTTLS",
        || failures() >= 2.0,
    );
    assert!(plain.messages().is_empty(), "mail went in clear");
    drop(plain);
    let rogue_relay = SmtpServer::start_requiring_starttls(
        smtp_port,
        rogue.path(),
        &rogue.path().join("relay.pem"),
        &rogue.path().join("relay.key"),
    );
    let before = failures();
    node.wait_until(
        Duration::from_secs(20),
        "an attempt at the untrusted relay",
        || failures() > before,
    );
    assert!(
        rogue_relay.messages().is_empty(),
        "mail went to an untrusted relay"
    );
    assert_eq!(
        node.metric("tsunagu_follow_ups_delivered_total{kind=\"email\"}"),
        0.0
    );
}

#[test]
fn missed_call_notices_sms_ga4_and_a_tracked_callback() {
    let ports = Ports::take();
    let (gateway_port, smtp_port) = (ports.sip + 5, ports.sip + 6);
    let gateway = Receiver::start(gateway_port);
    let work = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(smtp_port, work.path());
    // The caller's carrier verifies caller ids (SMS to callers go only to verified
    // numbers); carrier-a keeps forwarding the legs.
    let node = Node::start(
        ports,
        "127.0.0.9/32",
        &format!(
            r#"
[[trunks]]
name = "mobile-carrier"
inbound = ["127.0.0.1/32"]
verifies_caller_id = true
[notify]
retry_base_ms = 200
{ALLOW_LOOPBACK}
[notify.smtp]
host = "127.0.0.1"
port = {smtp_port}
from = "tsunagu <calls@example.com>"
[notify.sms]
url = "http://127.0.0.1:{gateway_port}/sms/send"
authorization = "Bearer sms-key"
[notify.ga4]
endpoint = "http://127.0.0.1:{gateway_port}/mp/collect"
"#
        ),
    );
    let (key, adv) = node.provision("0509990000", r#"[{"number": "0311112222"}]"#, "{}");
    let pool = node.send(
        "POST",
        "/v1/pools",
        Some(&key),
        &format!(r#"{{"advertiser_id": "{adv}", "mode": "callback", "numbers": ["0120000001", "0120000002"], "hold_seconds": 86400}}"#),
    );
    assert_eq!(pool.status, 201, "{}", pool.body);
    let pool_id = pool.json()["id"].as_str().unwrap().to_string();
    let issue = node.send(
        "POST",
        &format!("/v1/pools/{pool_id}/issue"),
        Some(&key),
        "{}",
    );
    assert_eq!(
        issue.status, 409,
        "callback pools are issued by missed calls only: {}",
        issue.body
    );

    let number = |extra: &str| {
        format!(
            r#"{{"number": "0501234567", "advertiser_id": "{adv}", "destinations": [{{"number": "0311112222"}}],
                "tracking_params": {{"gclid": "GCLID1", "medium": "listing"}} {extra}}}"#
        )
    };
    // Bad follow-up settings are refused with their field, and change nothing.
    for (extra, field) in [
        (
            r#", "notify": {"email_to": ["not-an-address"]}"#,
            "notify.email_to[0]",
        ),
        (r#", "notify": {"sms_to": ["12ab"]}"#, "notify.sms_to[0]"),
        (
            r#", "notify": {"email_to": ["a@example.com"], "callback_pool_id": "pool_nope"}"#,
            "notify.callback_pool_id",
        ),
        (
            r#", "ga4": {"measurement_id": "G-1", "api_secret": "s", "event_name": "9bad"}"#,
            "ga4.event_name",
        ),
    ] {
        let r = node.send("POST", "/v1/numbers", Some(&key), &number(extra));
        assert_eq!(
            (r.status, r.json()["error"]["field"].as_str()),
            (422, Some(field)),
            "{}",
            r.body
        );
    }
    assert_eq!(node.get("/v1/numbers/0501234567", &key).status, 404);
    let created = node.send(
        "POST",
        "/v1/numbers",
        Some(&key),
        &number(&format!(
            r#", "notify": {{"email_to": ["owner@example.com"], "sms_to": ["09011112222"],
                 "caller_sms_text": "Thank you for calling {{tracking_number}}", "callback_pool_id": "{pool_id}"}},
               "ga4": {{"measurement_id": "G-TEST", "api_secret": "mp-secret"}}"#
        )),
    );
    assert_eq!(created.status, 201, "{}", created.body);

    // 1. A missed call (busy) from a mobile caller.
    let busy = Uas::start("uas_busy.xml", ports, node.dir.path(), &[]);
    let run = uac_expecting(486, node.dir.path(), ports, "0501234567", 1, &[]);
    assert_eq!(run.exit, 0, "{}", run.output);
    drop(busy);
    let missed = node.wait_for_calls(&key, 1)[0].clone();
    let missed_id = missed["call_id"].as_str().unwrap().to_string();
    assert_eq!(missed["result"], "busy");

    let mails = smtp.wait_for(1);
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(mail.contains("To: owner@example.com"), "{mail}");
    assert!(mail.contains("From: tsunagu <calls@example.com>"), "{mail}");
    assert!(
        mail.contains("Subject: [tsunagu] busy: call from 09012345678 to 0501234567"),
        "{mail}"
    );
    for want in [
        "Caller: 09012345678 (mobile)",
        "gclid=GCLID1",
        "medium=listing",
        "Call back on 0120000001",
        &missed_id,
    ] {
        assert!(mail.contains(want), "{want} missing from\n{mail}");
    }

    let sms = gateway.wait_for("/sms/send", 2);
    assert_eq!(sms.len(), 2, "advertiser and caller SMS");
    let mut to: Vec<String> = Vec::new();
    for s in &sms {
        assert_eq!(s.header("authorization"), Some("Bearer sms-key"));
        let v: serde_json::Value = serde_json::from_str(&s.body).expect("gateway body is JSON");
        to.push(v["to"].as_str().unwrap().to_string());
        if v["to"] == "09012345678" {
            assert_eq!(v["text"], "Thank you for calling 0501234567");
        } else {
            assert!(
                v["text"]
                    .as_str()
                    .unwrap()
                    .contains("busy: call from 09012345678"),
                "{v}"
            );
            assert!(v["text"].as_str().unwrap().contains("0120000001"), "{v}");
        }
    }
    to.sort();
    assert_eq!(to, vec!["09011112222", "09012345678"]);
    assert!(
        gateway
            .requests()
            .iter()
            .all(|r| !r.target.starts_with("/mp/")),
        "no GA4 for a missed call"
    );

    // 2. An answered call: valid, carries a gclid → a GA4 conversion; no e-mail.
    let answer = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let run = uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "200"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let ga4 = gateway.wait_for("/mp/collect", 1);
    assert_eq!(ga4.len(), 1);
    assert_eq!(
        ga4[0].target,
        "/mp/collect?measurement_id=G-TEST&api_secret=mp-secret"
    );
    let body: serde_json::Value = serde_json::from_str(&ga4[0].body).unwrap();
    assert_eq!(body["client_id"], "gclid.GCLID1");
    assert_eq!(body["events"][0]["name"], "phone_call");
    assert_eq!(body["events"][0]["params"]["gclid"], "GCLID1");

    // 3. The advertiser calls back on the callback number: it rings the caller, and the
    //    callback's record links to the missed call.
    let run = uac("uac.xml", ports, "0120000001", 1, 1, &["-d", "200"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    assert_eq!(
        answer.messages().matches("INVITE sip:09012345678@").count(),
        1,
        "{}",
        answer.messages()
    );
    let calls = node.wait_for_calls(&key, 3);
    let callback = calls
        .iter()
        .find(|c| c["tracking_number"] == "0120000001")
        .expect("callback record");
    assert_eq!(callback["callback_of"], missed_id.as_str());
    assert_eq!(callback["destination_number"], "09012345678");
    assert_eq!(node.metric("tsunagu_callback_numbers_issued_total"), 1.0);
    node.wait_until(
        std::time::Duration::from_secs(10),
        "every follow-up delivered",
        || {
            // Every call is in the store (above), so every follow-up it plans is in
            // the outbox: none pending means an e-mail for the answered call, had one
            // been planned, was sent too.
            node.metric("tsunagu_follow_ups_pending") == 0.0
                && node.metric("tsunagu_follow_ups_delivered_total{kind=\"email\"}") >= 1.0
                && node.metric("tsunagu_follow_ups_delivered_total{kind=\"ga4\"}") == 1.0
        },
    );
    assert_eq!(
        node.metric("tsunagu_follow_ups_delivered_total{kind=\"email\"}"),
        1.0
    );
    assert_eq!(
        smtp.messages().len(),
        1,
        "answered calls send no e-mail (notify.on = missed)"
    );
}

#[test]
fn page_tag_swaps_the_number_in_chromium_and_the_call_carries_the_visit() {
    let ports = Ports::take();
    let page_port = ports.sip + 7;
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, adv) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    let origin = format!("http://127.0.0.1:{page_port}");
    let mk_pool = |numbers: &str, origins: &str| {
        let r = node.send(
            "POST",
            "/v1/pools",
            Some(&key),
            &format!(r#"{{"advertiser_id": "{adv}", "mode": "dynamic", "numbers": {numbers}, "hold_seconds": 30,
                        "allowed_origins": {origins}, "destinations": [{{"number": "0311112222"}}]}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_str().unwrap().to_string()
    };
    let pool = mk_pool(
        r#"["0505550001", "0505550002"]"#,
        &format!(r#"["{origin}"]"#),
    );
    let other = mk_pool(r#"["0506660001"]"#, r#"["https://elsewhere.example"]"#);

    // CORS as a browser sees it: the allowed origin passes preflight, another does not.
    let pre = http(
        ports.api,
        "OPTIONS",
        &format!("/v1/pools/{pool}/issue"),
        None,
        None,
        &[("Origin", &origin)],
    )
    .unwrap();
    assert_eq!(pre.status, 204, "{}", pre.headers);
    assert!(
        pre.headers
            .to_ascii_lowercase()
            .contains(&format!("access-control-allow-origin: {origin}")),
        "{}",
        pre.headers
    );
    let denied = http(
        ports.api,
        "POST",
        &format!("/v1/pools/{other}/issue"),
        None,
        Some("{}"),
        &[("Origin", &origin)],
    )
    .unwrap();
    assert_eq!(denied.status, 404, "{}", denied.body);
    let anonymous = http(
        ports.api,
        "POST",
        &format!("/v1/pools/{pool}/issue"),
        None,
        Some("{}"),
        &[],
    )
    .unwrap();
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);

    let html = format!(
        r####"<!doctype html><html><head><meta charset="utf-8"><title>landing</title></head><body>
<p>Call us: <a id="swap" data-tsunagu-pool="{pool}" data-tsunagu-format="###-###-####" href="tel:0311112222">03-1111-2222</a></p>
<p>Other: <span id="keep" data-tsunagu-pool="{other}">03-9999-9999</span></p>
<script src="http://127.0.0.1:{api}/v1/tag.js" async></script>
</body></html>"####,
        api = ports.api
    );
    let _page = Receiver::with_pages(page_port, vec![("/landing.html".into(), html)]);
    let profile = tempfile::tempdir().unwrap();
    // 40 s of virtual time: the tag re-issues every 15 s (half of a 30 s lease). The
    // visit comes from a long ad URL: a 2,500-byte utm_content and 60 more utm_* keys,
    // more than the API takes (values of 2,000 bytes, 50 keys): the tag cuts them to
    // fit rather than have the visit refused.
    let extra: String = (0..60).map(|i| format!("&utm_k{i}=v")).collect();
    let dom = chromium_dom(
        &format!(
            "{origin}/landing.html?gclid=GC-CHROME&utm_source=google&utm_campaign=winter&utm_content={}{extra}",
            "x".repeat(2500)
        ),
        profile.path(),
        40_000,
    );
    assert!(
        dom.contains(r#"href="tel:0505550001""#) && dom.contains(">050-555-0001</a>"),
        "number not swapped:\n{dom}"
    );
    assert!(
        dom.contains(">03-9999-9999</span>"),
        "a pool that does not allow the page must not swap:\n{dom}"
    );
    // Pools not listed in api.pool_metrics count under `other`; the page's other pool
    // issues nothing (its origin is not allowed), so these are all this pool's.
    let issued = node.metric("tsunagu_pool_issued_total{pool=\"other\"}");
    assert!(
        issued >= 2.0,
        "the tag keeps the lease alive while the page is open (issued {issued})"
    );
    assert_eq!(
        node.get(&format!("/v1/pools/{pool}"), &key).json()["leased"],
        1,
        "one visit, one number"
    );

    // The visitor calls the number on the page: the call carries the visit.
    let uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let run = uac("uac.xml", ports, "0505550001", 1, 1, &["-d", "100"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let calls = node.wait_for_calls(&key, 1);
    let params = &calls[0]["tracking_params"];
    assert_eq!(params["gclid"], "GC-CHROME", "{params}");
    assert_eq!(params["utm_source"], "google");
    assert_eq!(params["utm_campaign"], "winter");
    assert!(params["landing_url"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{origin}/landing.html?")));
    assert!(params["session_id"]
        .as_str()
        .is_some_and(|s| s.starts_with('s')));
    let kept = params.as_object().unwrap();
    assert_eq!(
        params["utm_content"].as_str().unwrap().len(),
        2000,
        "cut to fit"
    );
    assert_eq!(
        params["landing_url"].as_str().unwrap().len(),
        2000,
        "cut to fit"
    );
    assert_eq!(kept.len(), 50, "{:?}", kept.keys());
    assert!(kept.contains_key("utm_k0") && !kept.contains_key("utm_k59"));

    // Another visitor (another browser) from a link with a line break and a line
    // separator in one utm_* value, 600 emoji in another, and a token in its fragment:
    // it gets a number (the API refuses control characters: the tag drops them, and
    // cuts between characters), and the fragment stays in the browser.
    let profile2 = tempfile::tempdir().unwrap();
    let dom = chromium_dom(
        &format!(
            "{origin}/landing.html?utm_term=%0Aline%E2%80%A8two&utm_medium={}#access_token=secret",
            "%F0%9F%98%80".repeat(600)
        ),
        profile2.path(),
        2_000,
    );
    assert!(
        dom.contains(r#"href="tel:0505550002""#),
        "not swapped:\n{dom}"
    );
    let run = uac("uac.xml", ports, "0505550002", 1, 1, &["-d", "100"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let calls = node.wait_for_calls(&key, 2);
    let second = calls
        .iter()
        .find(|c| c["tracking_number"] == "0505550002")
        .expect("the second visitor's call");
    let params = &second["tracking_params"];
    assert_eq!(params["utm_term"], "linetwo", "{params}");
    let medium = params["utm_medium"].as_str().unwrap();
    assert!(
        medium.len() <= 2000 && medium.len() >= 1990 && medium.chars().all(|c| c == '\u{1F600}'),
        "{medium}"
    );
    let landing = params["landing_url"].as_str().unwrap();
    assert!(
        landing.starts_with(&format!("{origin}/landing.html?utm_term=")) && !landing.contains('#'),
        "{landing}"
    );
    assert!(!second.to_string().contains("access_token"), "{second}");
    drop(uas);
}

/// The page tag re-issues at half the lease; when that fails (429: one issue a minute
/// per address here) it tries again after Retry-After, and once the lease has run out
/// the page shows its own number again: the number goes to the next visitor when its
/// lease ends (it kept showing it, and this visitor's calls would carry the next one's
/// visit: a review).
#[test]
fn page_tag_gives_the_page_its_number_back_when_the_lease_runs_out() {
    let ports = Ports::take();
    let page_port = ports.sip + 7;
    let node = Node::start(
        ports,
        "127.0.0.1/32",
        "[api.issue]\nper_address_per_minute = 1\nper_address_burst = 1\n",
    );
    let (key, adv) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    let origin = format!("http://127.0.0.1:{page_port}");
    let r = node.send(
        "POST",
        "/v1/pools",
        Some(&key),
        &format!(r#"{{"advertiser_id": "{adv}", "mode": "dynamic", "numbers": ["0505550001"], "hold_seconds": 30,
                    "allowed_origins": ["{origin}"], "destinations": [{{"number": "0311112222"}}]}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let pool = r.json()["id"].as_str().unwrap().to_string();
    let html = format!(
        r####"<!doctype html><html><head><meta charset="utf-8"><title>landing</title></head><body>
<p>Call us: <a id="swap" data-tsunagu-pool="{pool}" href="tel:0311112222">03-1111-2222</a></p>
<p id="seen">tel:0311112222</p>
<script>
// Every number the link showed, in order (the tag swaps it in, then gives it back).
new MutationObserver(function () {{
  var href = document.getElementById("swap").getAttribute("href");
  var seen = document.getElementById("seen");
  if (seen.textContent.split(" ").pop() !== href) seen.textContent += " " + href;
}}).observe(document.getElementById("swap"), {{ attributes: true }});
</script>
<script src="http://127.0.0.1:{api}/v1/tag.js" async></script>
</body></html>"####,
        api = ports.api
    );
    let _page = Receiver::with_pages(page_port, vec![("/landing.html".into(), html)]);
    let profile = tempfile::tempdir().unwrap();
    // 45 s of virtual time: issued at 0, refused at 15 s (Retry-After 60), the lease
    // ends at 30 s.
    let dom = chromium_dom(&format!("{origin}/landing.html"), profile.path(), 45_000);
    assert!(
        dom.contains(r#"<p id="seen">tel:0311112222 tel:0505550001 tel:0311112222</p>"#),
        "the link showed the pool's number, then its own again:\n{dom}"
    );
    assert!(
        dom.contains(r#"href="tel:0311112222">03-1111-2222</a>"#)
            && !dom.contains("data-tsunagu-number"),
        "the page's own number is back:\n{dom}"
    );
    assert_eq!(
        node.metric("tsunagu_pool_issued_total{pool=\"other\"}"),
        1.0
    );
    assert!(node.metric("tsunagu_api_issue_throttled_total{limit=\"address\"}") >= 1.0);
}

/// A real HTTPS server (Python's http.server behind ssl) that appends each POST's path
/// and body to `log`, with a certificate for IP 127.0.0.1 only, signed by a test CA
/// made with `openssl` (returned, for `notify.ca_file`).
struct HttpsReceiver {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl HttpsReceiver {
    fn start(port: u16, dir: &std::path::Path) -> (HttpsReceiver, std::path::PathBuf) {
        require_tool("openssl");
        // A test CA, and a server certificate it signs for IP 127.0.0.1 only.
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let ca = dir.join("ca.pem");
        let ext = dir.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let d = dir.display();
        let steps = [
            format!("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout {d}/ca.key -out {d}/ca.pem"),
            format!("openssl req -newkey rsa:2048 -nodes -subj /CN=receiver -keyout {d}/key.pem -out {d}/server.csr"),
            format!("openssl x509 -req -in {d}/server.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial -days 1 -extfile {d}/server.ext -out {d}/cert.pem"),
        ];
        for step in &steps {
            let ok = std::process::Command::new("sh")
                .args(["-c", step])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl");
            assert!(ok.success(), "failed: {step}");
        }
        let log = dir.join("https.log");
        let script = r#"
import http.server, ssl, sys, json
port, cert, key, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        with open(log, 'a') as f:
            f.write(json.dumps({'path': self.path, 'body': body.decode()}) + '\n')
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(('127.0.0.1', port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;
        let child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script, &port.to_string()])
            .arg(&cert)
            .arg(&key)
            .arg(&log)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 https server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "https receiver did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        (HttpsReceiver { child, log }, ca)
    }

    fn posts(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn webhooks_over_https_verify_the_receiver_certificate() {
    let ports = Ports::take();
    let https_port = ports.sip + 8;
    let work = tempfile::tempdir().unwrap();
    let (receiver, ca) = HttpsReceiver::start(https_port, work.path());
    let node = Node::start(
        ports,
        "127.0.0.1/32",
        &format!(
            "[notify]\nretry_base_ms = 200\nmax_attempts = 2\n{ALLOW_LOOPBACK}\nca_file = \"{}\"\n",
            ca.display()
        ),
    );
    let (key, _) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    // The same server twice: by the address its certificate names, and by a name it
    // does not (which must fail verification).
    for (host, path) in [("127.0.0.1", "/good"), ("localhost", "/wrong-name")] {
        let r = node.send(
            "POST",
            "/v1/webhooks",
            Some(&key),
            &format!(r#"{{"url": "https://{host}:{https_port}{path}", "events": ["call.ended"]}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let run = uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "100"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    node.wait_until(
        std::time::Duration::from_secs(20),
        "one delivery and one give-up",
        || {
            node.metric("tsunagu_follow_ups_delivered_total{kind=\"webhook\"}") == 1.0
                && node.metric("tsunagu_follow_ups_given_up_total{kind=\"webhook\"}") == 1.0
        },
    );
    let posts = receiver.posts();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0]["path"], "/good");
    let body: serde_json::Value = serde_json::from_str(posts[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["type"], "call.ended");
    node.wait_until(
        std::time::Duration::from_secs(10),
        "the dead-row gauge",
        || node.metric("tsunagu_follow_ups_dead") == 1.0,
    );
}

/// SSRF: without `notify.allowed_networks`, webhooks to internal addresses are refused
/// at registration (422, field `url`); and at connect time, after DNS, a delivery to a
/// name that resolves to loopback is refused: a webhook registered while loopback was
/// allowed (as a name that rebinds would be) and the node's GA4 endpoint both fail, are
/// given up, and the receiver gets nothing. The node's own API is never a destination.
#[test]
fn internal_destinations_are_refused_at_registration_and_at_connect() {
    let ports = Ports::take();
    let hook_port = ports.sip + 5;
    let receiver = Receiver::start(hook_port);
    let config = |allow: &str| {
        format!(
            r#"
[notify]
retry_base_ms = 200
max_attempts = 2
{allow}
[notify.ga4]
endpoint = "http://localhost:{hook_port}/mp/collect"
"#
        )
    };
    let mut node = Node::start(ports, "127.0.0.1/32", &config(ALLOW_LOOPBACK));
    let (key, _) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    let register = |node: &Node, url: &str| {
        node.send(
            "POST",
            "/v1/webhooks",
            Some(&key),
            &format!(r#"{{"url": "{url}", "events": ["call.ended"]}}"#),
        )
    };
    let hook = register(&node, &format!("http://localhost:{hook_port}/rebound"));
    assert_eq!(hook.status, 201, "{}", hook.body);
    let own = register(
        &node,
        &format!("http://127.0.0.1:{}/v1/operators", ports.api),
    );
    assert_eq!(
        (own.status, own.json()["error"]["field"].as_str()),
        (422, Some("url")),
        "the node's own API stays refused with loopback allowed: {}",
        own.body
    );

    // The node's operator removes the allow-list.
    let path = node.dir.path().join("node.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(ALLOW_LOOPBACK));
    std::fs::write(&path, text.replace(ALLOW_LOOPBACK, "")).unwrap();
    node.restart();
    for url in [
        format!("http://127.0.0.1:{hook_port}/hooks"),
        format!("http://localhost:{hook_port}/hooks"),
        format!("http://[::1]:{hook_port}/hooks"),
        format!("http://[::ffff:127.0.0.1]:{hook_port}/hooks"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
        "https://192.168.1.1/".to_string(),
        "http://100.64.0.1/".to_string(),
        format!("http://0.0.0.0:{hook_port}/"),
        "http://224.0.0.1/".to_string(),
        "http://[fd00::1]/".to_string(),
    ] {
        let r = register(&node, &url);
        assert_eq!(
            (r.status, r.json()["error"]["field"].as_str()),
            (422, Some("url")),
            "{url}: {}",
            r.body
        );
    }
    assert_eq!(
        node.metric(
            "tsunagu_follow_up_destinations_refused_total{stage=\"registration\",class=\"loopback\"}"
        ),
        4.0
    );
    assert_eq!(
        node.get("/v1/webhooks", &key).json()["webhooks"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing refused was stored"
    );

    // A valid call with a gclid: a call.ended webhook and a GA4 conversion, both to
    // `localhost`, which now resolves to a refused address.
    node.set_number(
        &key,
        "0501234567",
        r#"{"tracking_params": {"gclid": "G1"}, "ga4": {"measurement_id": "G-X", "api_secret": "s"}}"#,
    );
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let run = uac("uac.xml", ports, "0501234567", 1, 1, &["-d", "200"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    node.wait_until(
        std::time::Duration::from_secs(15),
        "both deliveries given up",
        || {
            node.metric("tsunagu_follow_ups_given_up_total{kind=\"webhook\"}") == 1.0
                && node.metric("tsunagu_follow_ups_given_up_total{kind=\"ga4\"}") == 1.0
        },
    );
    assert_eq!(
        node.metric(
            "tsunagu_follow_up_destinations_refused_total{stage=\"connect\",class=\"loopback\"}"
        ),
        4.0,
        "two attempts each"
    );
    assert_eq!(
        node.metric("tsunagu_follow_ups_delivered_total{kind=\"webhook\"}")
            + node.metric("tsunagu_follow_ups_delivered_total{kind=\"ga4\"}"),
        0.0
    );
    assert!(receiver.requests().is_empty(), "{:?}", receiver.requests());
}

/// A node with `notify.per_destination` and `notify.timeout_ms` as given, and two
/// operators (numbers 0501234567 and 0502222222) each with a webhook: the first's to a
/// black hole, the second's to a healthy receiver; their API keys and webhook ids, in
/// that order.
fn two_operators_one_black_hole(
    per_destination: u32,
    timeout_ms: u32,
) -> (Ports, BlackHole, Receiver, Node, Vec<(String, String)>) {
    one_black_hole(per_destination, timeout_ms, false)
}

/// [`two_operators_one_black_hole`], or with `same_operator` both webhooks of the
/// first operator (number 0501234567).
fn one_black_hole(
    per_destination: u32,
    timeout_ms: u32,
    same_operator: bool,
) -> (Ports, BlackHole, Receiver, Node, Vec<(String, String)>) {
    let ports = Ports::take();
    let (hole_port, good_port) = (ports.sip + 5, ports.sip + 6);
    let hole = BlackHole::start(hole_port);
    let good = Receiver::start(good_port);
    let node = Node::start(
        ports,
        "127.0.0.1/32",
        &format!(
            "[notify]\n{ALLOW_LOOPBACK}\nper_destination = {per_destination}\ntimeout_ms = {timeout_ms}\n"
        ),
    );
    let dest = r#"[{"number": "0311112222"}]"#;
    let (first, _) = node.provision("0501234567", dest, "{}");
    let second = if same_operator {
        first.clone()
    } else {
        node.provision("0502222222", dest, "{}").0
    };
    let mut hooks = Vec::new();
    for (key, url) in [
        (first, format!("http://127.0.0.1:{hole_port}/slow")),
        (second, format!("http://127.0.0.1:{good_port}/good")),
    ] {
        let r = node.send(
            "POST",
            "/v1/webhooks",
            Some(&key),
            &format!(r#"{{"url": "{url}"}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.json()["id"].as_str().expect("id").to_string();
        hooks.push((key, id));
    }
    (ports, hole, good, node, hooks)
}

/// One operator's receiver black-holes (accepts, never answers: each delivery waits
/// for the delivery timeout) with more events queued than the worker used to claim and
/// wait on at once (32); another operator's healthy receiver still gets its event
/// within 2 s, and the black hole never holds more than its share of connections.
#[test]
fn a_black_holed_receiver_does_not_delay_other_operators() {
    // A delivery timeout longer than the test, so every connection the black hole
    // accepted is still held when they are counted.
    let (ports, hole, good, node, hooks) = two_operators_one_black_hole(4, 30_000);
    let slow_key = &hooks[0].0;
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    // 12 calls: 36 events (started, answered, ended) for the black hole.
    let run = uac("uac.xml", ports, "0501234567", 12, 50, &["-d", "10"]);
    assert_eq!((run.exit, run.successful), (0, 12), "{}", run.output);
    node.wait_for_calls(slow_key, 12);
    node.wait_until(
        std::time::Duration::from_secs(5),
        "deliveries stuck in the black hole",
        || hole.accepted() >= 1,
    );

    let run = uac("uac.xml", ports, "0502222222", 1, 1, &["-d", "10"]);
    let ended = std::time::Instant::now();
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    let got = good.wait_for_until("", 3, ended + std::time::Duration::from_secs(2));
    assert_eq!(
        got.len(),
        3,
        "the healthy receiver's events within 2 s: {got:?}\n{}",
        node.log()
    );
    assert!(
        hole.accepted() <= 4,
        "the black hole holds at most per_destination connections, not {}",
        hole.accepted()
    );
    assert!(node.metric("tsunagu_follow_ups_deferred_total") >= 1.0);
}

/// One operator with two webhooks, one of them black-holed: the other still gets every
/// event at once. The black hole holds its destination's share (as many waiting as
/// running: twice `per_destination`); an operator's share of three times
/// `per_destination` leaves its other webhook `per_destination` deliveries. With
/// twice, the black hole held the operator's whole share and the healthy webhook's
/// events waited for its timeouts (a review).
#[test]
fn a_black_holed_webhook_does_not_delay_its_operators_other_webhook() {
    // A delivery timeout longer than the test: the black hole's rows hold their
    // places throughout.
    let (ports, hole, good, node, _) = one_black_hole(4, 30_000, true);
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    // 12 calls: 36 events (started, answered, ended) for each webhook.
    let run = uac("uac.xml", ports, "0501234567", 12, 50, &["-d", "10"]);
    let ended = std::time::Instant::now();
    assert_eq!((run.exit, run.successful), (0, 12), "{}", run.output);
    let got = good
        .wait_for_until("", 36, ended + std::time::Duration::from_secs(5))
        .len();
    assert_eq!(
        got,
        36,
        "the healthy webhook's events within 5 s of the last call (the black hole holds {})\n{}",
        hole.accepted(),
        node.log()
    );
    assert!(
        hole.accepted() <= 4,
        "the black hole holds at most per_destination connections, not {}",
        hole.accepted()
    );
}

/// A backlog for a black-holed receiver larger than what the worker looks past in one
/// delivery timeout (a 1 s timeout here; the worker looks past 512 rows at a wake,
/// then 64 a poll while rows keep going back): handed back, its rows came due again
/// together at every timeout, ahead of anything newer, so another operator's event
/// waited behind the whole backlog (seconds here; hours for a night's backlog).
/// Spread at the black hole's pace, they leave the other event a claim of its own at
/// the next poll.
#[test]
fn a_black_hole_s_backlog_does_not_come_back_ahead_of_other_operators() {
    use tsunagu_store::{FollowUpKind, NewFollowUp, Store};
    const BACKLOG: usize = 800;
    let (_ports, hole, good, node, hooks) = two_operators_one_black_hole(1, 1000);
    let store = tsunagu_store::SqliteStore::open(&node.store_path()).expect("store");
    let hooks: Vec<(String, String)> = hooks
        .into_iter()
        .map(|(_, id)| {
            let h = store.get_webhook(&id).expect("read").expect("the webhook");
            (h.operator_id, id)
        })
        .collect();
    let row = |(operator, hook): &(String, String), n: usize| NewFollowUp {
        kind: FollowUpKind::Webhook,
        operator_id: operator.clone(),
        target: hook.clone(),
        payload: format!(r#"{{"type": "call.ended", "n": {n}}}"#),
    };
    let backlog: Vec<NewFollowUp> = (0..BACKLOG).map(|n| row(&hooks[0], n)).collect();
    store.enqueue_follow_ups(&backlog).expect("backlog");
    // Every row of the backlog claimed and handed back once.
    node.wait_until(
        std::time::Duration::from_secs(20),
        "the backlog handed back once",
        || node.metric("tsunagu_follow_ups_deferred_total") >= BACKLOG as f64,
    );
    store
        .enqueue_follow_ups(&[row(&hooks[1], 0)])
        .expect("the other operator's event");
    let queued = std::time::Instant::now();
    while good.requests().is_empty() && queued.elapsed() < std::time::Duration::from_secs(3) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        good.requests().len(),
        1,
        "the other operator's event within 3 s (deferred {}, the black hole took {})",
        node.metric("tsunagu_follow_ups_deferred_total"),
        hole.accepted()
    );
}

/// SMS to callers go only to numbers a carrier vouches for, and at most
/// `notify.caller_sms_per_day` a day to one number: a caller on an untrusted trunk
/// (its From, even with a P-Asserted-Identity) and one on a trusted trunk without an
/// asserted identity get none; an asserted caller gets them until the cap.
#[test]
fn sms_go_to_verified_callers_only_and_until_the_daily_cap() {
    let ports = Ports::take();
    let gateway_port = ports.sip + 5;
    let gateway = Receiver::start(gateway_port);
    let node = Node::start(
        ports,
        "127.0.0.1/32",
        &format!(
            r#"
[[trunks]]
name = "pstn"
inbound = ["127.0.0.3/32"]
trusted = true
[notify]
retry_base_ms = 200
caller_sms_per_day = 2
{ALLOW_LOOPBACK}
[notify.sms]
url = "http://127.0.0.1:{gateway_port}/sms/send"
"#
        ),
    );
    let (key, _) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    node.set_number(
        &key,
        "0501234567",
        r#"{"notify": {"caller_sms_text": "Thanks for calling {tracking_number}"}}"#,
    );
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let with_pai = scenario_with_header(
        node.dir.path(),
        "uac.xml",
        "P-Asserted-Identity: <sip:09011112222@127.0.0.3>",
    );
    let unverified = "tsunagu_caller_sms_withheld_total{reason=\"unverified\"}";
    let over_cap = "tsunagu_caller_sms_withheld_total{reason=\"daily_cap\"}";

    // Untrusted trunk, PAI ignored (caller 09012345678 from From); trusted trunk
    // without an asserted identity.
    let run = uac(&with_pai, ports, "0501234567", 1, 1, &["-d", "50"]);
    assert_eq!(run.successful, 1, "{}", run.output);
    let run = uac(
        "uac.xml",
        ports,
        "0501234567",
        1,
        1,
        &["-d", "50", "-i", "127.0.0.3"],
    );
    assert_eq!(run.successful, 1, "{}", run.output);
    node.wait_for_calls(&key, 2);
    node.wait_until(
        std::time::Duration::from_secs(10),
        "two unverified callers",
        || node.metric(unverified) == 2.0,
    );

    // Three calls asserted by the trusted trunk: two SMS, the third over the cap.
    let run = uac(
        &with_pai,
        ports,
        "0501234567",
        3,
        10,
        &["-d", "50", "-i", "127.0.0.3"],
    );
    assert_eq!(run.successful, 3, "{}", run.output);
    node.wait_for_calls(&key, 5);
    node.wait_until(
        std::time::Duration::from_secs(15),
        "two SMS sent and one over the cap",
        || {
            node.metric("tsunagu_follow_ups_delivered_total{kind=\"sms\"}") == 2.0
                && node.metric(over_cap) == 1.0
        },
    );
    let sent: Vec<serde_json::Value> = gateway
        .requests()
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent.iter()
            .all(|s| s["to"] == "09011112222" && s["text"] == "Thanks for calling 0501234567"),
        "{sent:?}"
    );
    assert_eq!(node.metric(unverified), 2.0);
    assert_eq!(
        node.metric("tsunagu_follow_ups_given_up_total{kind=\"sms\"}"),
        0.0
    );
    node.wait_until(
        std::time::Duration::from_secs(5),
        "the outbox to drain",
        || node.metric("tsunagu_follow_ups_pending") == 0.0,
    );
}
