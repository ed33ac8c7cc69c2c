//! Offers and answers the node cannot use are not passed on as if they were: an offer
//! without an audio stream it can anchor is refused 488 (and one it can reaches the
//! other leg without what would tell where its sender is), a callee's 200 without an
//! answer is hung up rather than handed to the caller, a re-INVITE without an offer
//! gets the other side's offer and its ACK the answer; in a dialog, methods the node
//! does not take get 405 and requests out of CSeq order 500; a 200 the caller never
//! acknowledges is logged without talk time; a callee silent at its ring time is left
//! at once, its late answers answered. A raw caller and a raw callee on UDP
//! sockets (the callee on the trunk's outbound port), so each message is seen.

use crate::dialogs::{answer, header, ok_to, Party};
use crate::harness::*;
use std::net::UdpSocket;
use std::time::Duration;

const DEST: &str = r#"[{"number": "0311112222", "ring_seconds": 20}]"#;

/// The caller's hold: its session, sendonly, one version on.
fn caller_hold() -> String {
    format!("{CALLER_SDP}a=sendonly\r\n").replace(" 1 1 IN", " 1 2 IN")
}

const CALLER_SDP: &str =
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

fn sdp(port: u16) -> String {
    format!("v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n")
}

/// The callee: a raw UDP socket on the trunk's outbound port.
pub(crate) struct Callee {
    sock: UdpSocket,
    node: String,
    uas_port: u16,
}

impl Callee {
    pub(crate) fn bind(ports: Ports) -> Callee {
        let sock = UdpSocket::bind(("127.0.0.1", ports.uas)).expect("bind the callee");
        Callee {
            sock,
            node: format!("127.0.0.1:{}", ports.sip),
            uas_port: ports.uas,
        }
    }

    /// The next message starting with `start` within 5 s (others skipped).
    pub(crate) fn expect(&self, start: &str) -> String {
        self.expect_within(start, Duration::from_secs(5))
    }

    pub(crate) fn expect_within(&self, start: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        let mut buf = [0u8; 8192];
        self.sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while std::time::Instant::now() < deadline {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if m.starts_with(start) {
                    return m;
                }
            }
        }
        panic!("the callee never got {start}");
    }

    /// What reaches the callee within `window`.
    fn quiet_for(&self, window: Duration) -> Vec<String> {
        datagrams_within(&self.sock, window)
    }

    fn send(&self, text: &str) {
        self.sock
            .send_to(crate::dialogs::crlf(text).as_bytes(), &self.node)
            .unwrap();
    }

    /// A 200 to a request of the established dialog.
    pub(crate) fn ok(&self, req: &str) {
        self.send(&ok_to(req));
    }

    /// Answers `req` with `status`, its Contact and `body` as SDP (none if empty).
    pub(crate) fn respond(&self, req: &str, status: &str, body: &str) {
        self.respond_as("calleetag", req, status, body);
    }

    /// [`Callee::respond`] with the To tag `to_tag` (a fork of a forking proxy).
    fn respond_as(&self, to_tag: &str, req: &str, status: &str, body: &str) {
        self.respond_with(to_tag, req, status, "", body);
    }

    /// [`Callee::respond_as`] with more header lines (`headers`, each ending in `\n`).
    fn respond_with(&self, to_tag: &str, req: &str, status: &str, headers: &str, body: &str) {
        let content = if body.is_empty() {
            "Content-Length: 0\n\n".to_string()
        } else {
            format!(
                "Content-Type: application/sdp\nContent-Length: {}\n\n{body}",
                body.len()
            )
        };
        self.send(&answer(
            req,
            status,
            to_tag,
            &format!(
                "{headers}Contact: <sip:callee@127.0.0.1:{}>\n{content}",
                self.uas_port
            ),
        ));
    }
}

/// An INVITE from `caller` with `body` as its SDP (an empty body: none).
fn invite_with(caller: &Party, call_id: &str, body: &str) -> String {
    let offer = caller.invite(call_id, "09012345678", &caller.me());
    let (head, _) = offer.split_once("Content-Type:").unwrap();
    if body.is_empty() {
        format!("{head}Content-Length: 0\n\n")
    } else {
        format!(
            "{head}Content-Type: application/sdp\nContent-Length: {}\n\n{body}",
            body.len()
        )
    }
}

/// The ACK of a failure to INVITE `invite` (same branch, RFC 3261 17.1.1.3).
fn ack_of_failure(invite: &str) -> String {
    crate::dialogs::on_branch(invite, "ACK", None)
}

/// The caller hangs up (BYE with `cseq`): answered 200, and the BYE passed to the
/// callee, who answers it; that BYE.
fn hang_up(caller: &Party, callee: &Callee, call_id: &str, node_tag: &str, cseq: u32) -> String {
    caller.send(&caller.bye(call_id, node_tag, cseq));
    let bye_ok = caller.final_response();
    assert!(bye_ok.starts_with("SIP/2.0 200"), "{bye_ok}");
    let bye = callee.expect("BYE ");
    callee.ok(&bye);
    bye
}

/// A request of the caller's dialog with a body (`kind` its type).
fn with_body(
    caller: &Party,
    method: &str,
    call_id: &str,
    node_tag: &str,
    cseq: u32,
    kind: &str,
    body: &str,
) -> String {
    let extra = if body.is_empty() {
        "Content-Length: 0\n\n".to_string()
    } else {
        format!(
            "Content-Type: {kind}\nContent-Length: {}\n\n{body}",
            body.len()
        )
    };
    caller.request(method, call_id, "callertag", node_tag, cseq, &extra)
}

#[test]
fn offers_the_node_cannot_anchor_are_refused_488_and_the_rest_pass_without_what_they_hide() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    let bodies = [
        "v=0\r\n",
        "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 65536 RTP/AVP 0\r\n",
        "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio -1 RTP/AVP 0\r\n",
        "v=0\r\nc=IN IP4 127.0.0.1\r\nm=video 4000 RTP/AVP 96\r\n",
        "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 0 RTP/AVP 0\r\n",
        "garbage, not SDP",
        // SRTP: the node relays, records and hears DTMF in plain RTP only.
        "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n",
        "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 UDP/TLS/RTP/SAVPF 0\r\na=setup:actpass\r\n",
    ];
    for (i, body) in bodies.iter().enumerate() {
        caller.send(&invite_with(&caller, &format!("bad-offer-{i}"), body));
        let refused = caller.final_response();
        assert!(refused.starts_with("SIP/2.0 488"), "{body:?}: {refused}");
    }
    assert!(
        callee.quiet_for(Duration::from_millis(300)).is_empty(),
        "an INVITE reached the callee"
    );
    assert_eq!(
        node.metric("tsunagu_invites_rejected_total{code=\"488\",reason=\"unusable_sdp_offer\"}"),
        bodies.len() as f64
    );
    assert_eq!(node.metric("tsunagu_active_calls"), 0.0);

    // Topology hiding in the bodies (SPEC: no address of the other leg leaks): ICE
    // candidates, SSRC names, keys and free text of one leg reach neither the other
    // leg's INVITE nor its 200, so neither party can send around the relay or learn
    // where the other is; the audio's formats and direction pass.
    let noisy = |who: &str, port: u16| {
        format!(
            "v=0\r\no=- 7 7 IN IP4 127.0.0.1\r\ns=-\r\ni={who} at 10.9.9.9\r\ne={who}@example.com\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\na=ice-ufrag:{who}\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=candidate:1 1 UDP 2130706431 10.9.9.9 {port} typ host\r\na=candidate:2 1 UDP 1694498815 203.0.113.7 45664 typ srflx\r\na=ssrc:99 cname:{who}@10.9.9.9\r\na=rtcp:{} IN IP4 10.9.9.9\r\na=rtcp-mux\r\n",
            port + 1
        )
    };
    let leaks = [
        "candidate",
        "ice-ufrag",
        "ssrc",
        "rtcp",
        "10.9.9.9",
        "203.0.113.7",
        "example.com",
    ];

    caller.send(&invite_with(&caller, "noisy-sdp", &noisy("alice", 4000)));
    let invite = callee.expect("INVITE ");
    for leak in leaks {
        assert!(
            !invite.contains(leak),
            "{leak} reached the callee: {invite}"
        );
    }
    for kept in [
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=ptime:20",
    ] {
        assert!(invite.contains(kept), "{kept} lost: {invite}");
    }
    callee.respond(&invite, "200 OK", &noisy("bob", 4002));
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok:?}");
    for leak in leaks {
        assert!(!ok.contains(leak), "{leak} reached the caller: {ok}");
    }
    let node_tag = caller.ack("noisy-sdp", &ok);
    hang_up(&caller, &callee, "noisy-sdp", &node_tag, 2);
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["result"], "answered", "{}", calls[0]);
}

/// A callee's 200 without SDP: hung up and the caller refused 502 (not answered
/// without media), and another fork answering later hung up too; after an 18x with
/// SDP from the same fork (To tag), the 200 stands on that answer; after another
/// fork's, it does not.
#[test]
fn a_callee_answer_without_sdp_is_hung_up_unless_an_18x_carried_it() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);

    caller.send(&invite_with(&caller, "no-answer-sdp", CALLER_SDP));
    let invite = callee.expect("INVITE ");
    callee.respond(&invite, "200 OK", "");
    callee.expect("ACK ");
    let bye = callee.expect("BYE ");
    callee.ok(&bye);
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 502"), "{refused}");
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["result"], "failed", "{}", calls[0]);
    assert_eq!(calls[0]["talk_seconds"], 0, "{}", calls[0]);
    let attempt = &calls[0]["attempts"][0];
    assert_eq!(
        (attempt["sip_code"].as_u64(), attempt["outcome"].as_str()),
        (Some(200), Some("failed")),
        "{attempt}"
    );
    // Another fork of that INVITE answers after the call ended: ACKed and hung up on
    // its own dialog (it got nothing: repeated for 32 s); the first answer coming again is ACKed,
    // not hung up again.
    callee.respond_as("latefork", &invite, "200 OK", &sdp(4010));
    let ack = callee.expect("ACK ");
    assert!(ack.contains("tag=latefork"), "{ack}");
    let bye = callee.expect("BYE ");
    assert!(bye.contains("tag=latefork"), "{bye}");
    callee.ok(&bye);
    callee.respond(&invite, "200 OK", "");
    let again = callee.expect("ACK ");
    assert!(again.contains("tag=calleetag"), "{again}");
    let reached = callee.quiet_for(Duration::from_millis(300));
    assert!(reached.is_empty(), "hung up twice: {reached:?}");

    // Early media: the 183's SDP is the answer; the 200 to the caller repeats it.
    caller.send(&invite_with(&caller, "early-answer", CALLER_SDP));
    let invite = callee.expect("INVITE ");
    callee.respond(&invite, "183 Session Progress", &sdp(4002));
    callee.respond(&invite, "200 OK", "");
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok:?}");
    assert!(
        ok.contains("m=audio "),
        "the 200 repeats the early answer: {ok}"
    );
    assert!(!ok.contains("m=audio 4002 "), "pointed at the node: {ok}");
    let node_tag = caller.ack("early-answer", &ok);
    hang_up(&caller, &callee, "early-answer", &node_tag, 2);
    let calls = node.wait_for_calls(&key, 2);
    assert!(calls.iter().any(|c| c["result"] == "answered"), "{calls:?}");

    // A forked INVITE: one fork's 183 carried SDP, another fork answers without any.
    // The first fork's answer is not the second's (the relay would send the caller's
    // audio to the first fork): hung up like any answer without SDP.
    caller.send(&invite_with(&caller, "other-fork", CALLER_SDP));
    let invite = callee.expect("INVITE ");
    callee.respond(&invite, "183 Session Progress", &sdp(4002));
    callee.respond_as("forktag", &invite, "200 OK", "");
    let ack = callee.expect("ACK ");
    assert!(ack.contains("tag=forktag"), "{ack}");
    let bye = callee.expect("BYE ");
    assert!(bye.contains("tag=forktag"), "{bye}");
    callee.ok(&bye);
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 502"), "{refused}");
    let calls = node.wait_for_calls(&key, 3);
    assert_eq!(
        calls.iter().filter(|c| c["result"] == "failed").count(),
        2,
        "{calls:?}"
    );
}

/// Forks of a callee's INVITE answering when no call keeps their dialog are ACKed and
/// hung up by the node (RFC 3261 13.2.2.4), where they got nothing (the 2xx sent for
/// 32 s, a callee connected to nobody): a forking proxy's 603 with another branch's
/// 200 crossing it (the call has failed), and another fork answering after an
/// answered call ended. A hung-up fork's 2xx coming again is ACKed, not hung up again;
/// the call's own 200 coming again after its end gets no BYE either, nor does a late
/// 200 to a relayed re-INVITE that failed (the call's own dialog).
#[test]
fn forks_answering_when_no_call_keeps_them_are_hung_up() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    let hung_up = |tag: &str| {
        let ack = callee.expect("ACK ");
        assert!(
            ack.contains(&format!("tag={tag}")) && ack.contains(" 1 ACK"),
            "{ack}"
        );
        let bye = callee.expect("BYE ");
        assert!(
            bye.contains(&format!("tag={tag}")) && bye.contains(" 2 BYE"),
            "{bye}"
        );
        callee.ok(&bye);
    };

    let call_id = "crossed-decline";
    let offer = invite_with(&caller, call_id, CALLER_SDP);
    caller.send(&offer);
    let invite = callee.expect("INVITE ");
    callee.respond(&invite, "603 Decline", "");
    callee.expect("ACK ");
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 603"), "{refused}");
    caller.send(&ack_of_failure(&offer));
    callee.respond_as("crossed", &invite, "200 OK", &sdp(4010));
    hung_up("crossed");
    callee.respond_as("crossed", &invite, "200 OK", &sdp(4010));
    let again = callee.expect("ACK ");
    assert!(again.contains("tag=crossed"), "{again}");
    let reached = callee.quiet_for(Duration::from_millis(300));
    assert!(reached.is_empty(), "hung up twice: {reached:?}");
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["result"], "rejected", "{}", calls[0]);
    assert_eq!(calls[0]["talk_seconds"], 0, "{}", calls[0]);

    let call_id = "ended-then-fork";
    caller.send(&invite_with(&caller, call_id, CALLER_SDP));
    let invite = callee.expect("INVITE ");
    callee.respond(&invite, "200 OK", &sdp(4002));
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok:?}");
    let node_tag = caller.ack(call_id, &ok);
    callee.expect("ACK ");
    // A relayed re-INVITE refused by something on the callee's path, then the
    // callee's late 200 to it: on the call's own dialog, never hung up by the node
    // (a review of the first version of this: the core took it for a fork).
    let reoffer = with_body(
        &caller,
        "INVITE",
        call_id,
        &node_tag,
        2,
        "application/sdp",
        CALLER_SDP,
    );
    caller.send(&reoffer);
    let relayed = callee.expect("INVITE ");
    callee.respond(&relayed, "500 Server Internal Error", "");
    callee.expect("ACK ");
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 500"), "{refused}");
    caller.send(&ack_of_failure(&reoffer));
    callee.respond(&relayed, "200 OK", &sdp(4002));
    let reached = callee.quiet_for(Duration::from_millis(300));
    assert!(
        !reached.iter().any(|m| m.starts_with("BYE ")),
        "the call's own dialog hung up: {reached:?}"
    );
    hang_up(&caller, &callee, call_id, &node_tag, 3);
    // Logged: the call has let its Call-IDs go.
    let calls = node.wait_for_calls(&key, 2);
    assert!(calls.iter().any(|c| c["result"] == "answered"), "{calls:?}");
    callee.respond_as("late", &invite, "200 OK", &sdp(4010));
    hung_up("late");
    callee.respond(&invite, "200 OK", &sdp(4002));
    let reached = callee.quiet_for(Duration::from_millis(300));
    assert!(
        !reached.iter().any(|m| m.starts_with("BYE ")),
        "the ended call's dialog hung up again: {reached:?}"
    );
    assert_eq!(node.metric("tsunagu_sip_forks_hung_up_total"), 2.0);
}

/// A route set past the cap (`sip::build::MAX_ROUTE_SET`, 16 entries): a caller's
/// INVITE carrying one is refused 400 and reaches no callee; a callee's 200 carrying
/// one is acknowledged and hung up without it (no Route line, where each entry would
/// have been one: thousands of one-byte entries made 80 KiB requests), and the caller
/// refused 502.
#[test]
fn a_route_set_past_the_cap_is_refused_or_hung_up() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    let long = format!("Record-Route: {}\n", vec!["<sip:a;lr>"; 17].join(","));

    let invite = invite_with(&caller, "long-route-in", CALLER_SDP);
    let invite = invite.replacen("Call-ID:", &format!("{long}Call-ID:"), 1);
    assert!(invite.contains(&long), "{invite}");
    caller.send(&invite);
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 400"), "{refused}");
    caller.send(&ack_of_failure(&invite));
    assert_eq!(
        node.metric("tsunagu_invites_rejected_total{code=\"400\",reason=\"route_set_too_long\"}"),
        1.0
    );

    caller.send(&invite_with(&caller, "long-route-out", CALLER_SDP));
    let invite = callee.expect("INVITE ");
    callee.respond_with("t", &invite, "200 OK", &long, &sdp(4002));
    let ack = callee.expect("ACK ");
    let bye = callee.expect("BYE ");
    for request in [&ack, &bye] {
        assert!(!request.contains("\nRoute:"), "{request}");
    }
    callee.ok(&bye);
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 502"), "{refused}");
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["result"], "failed", "{}", calls[0]);
    // The refused INVITE started no call (so reached no callee): one call in all.
    assert_eq!(node.metric("tsunagu_calls_started_total"), 1.0);
}

/// In a dialog: REFER and MESSAGE get 405 with Allow and reach nobody; a request
/// below the caller's last CSeq gets 500; a re-offer the node cannot anchor 488; a
/// re-INVITE without SDP gets the callee's offer, and the callee's ACK waits for the
/// caller's answer and carries it.
#[test]
fn in_dialog_requests_the_node_cannot_honour_are_refused_and_late_offers_complete() {
    let (_ports, _node, callee, caller) = raw_parties();
    let call_id = "in-dialog";

    caller.send(&invite_with(&caller, call_id, CALLER_SDP));
    let invite = callee.expect("INVITE ");
    callee.respond(&invite, "200 OK", &sdp(4002));
    let node_tag = caller.ack_answer(call_id);
    callee.expect("ACK ");

    for (cseq, method) in [(2, "REFER"), (3, "MESSAGE")] {
        let extra = "Refer-To: <sip:0399999999@127.0.0.1>\nContent-Length: 0\n\n";
        caller.send(&caller.request(method, call_id, "callertag", &node_tag, cseq, extra));
        let refused = caller.final_response();
        assert!(refused.starts_with("SIP/2.0 405"), "{method}: {refused}");
        assert!(header(&refused, "Allow").is_some(), "{refused}");
    }
    // Out of order: below the MESSAGE's CSeq 3.
    let info = with_body(
        &caller,
        "INFO",
        call_id,
        &node_tag,
        1,
        "application/dtmf-relay",
        "Signal=1\r\nDuration=160\r\n",
    );
    caller.send(&info);
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 500"), "{refused}");
    // A re-offer that is not SDP the node can anchor.
    let bad = with_body(
        &caller,
        "INVITE",
        call_id,
        &node_tag,
        4,
        "application/sdp",
        "v=0\r\nnot sdp\r\n",
    );
    caller.send(&bad);
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 488"), "{refused}");
    caller.send(&ack_of_failure(&bad));
    let reached = callee.quiet_for(Duration::from_millis(300));
    assert!(reached.is_empty(), "reached the callee: {reached:?}");

    // A re-INVITE without SDP: the callee's 200 brings the offer to the caller.
    caller.send(&with_body(&caller, "INVITE", call_id, &node_tag, 5, "", ""));
    let reinvite = callee.expect("INVITE ");
    assert!(!reinvite.contains("m=audio"), "{reinvite}");
    callee.respond(&reinvite, "200 OK", &sdp(4004));
    let offer = caller.final_response();
    assert!(
        offer.starts_with("SIP/2.0 200") && offer.contains("m=audio "),
        "{offer}"
    );
    // A stray ACK first (the first INVITE's, repeated): not the re-INVITE's, so it
    // carries no answer and releases nothing.
    caller.send(&with_body(&caller, "ACK", call_id, &node_tag, 1, "", ""));
    let early = callee.quiet_for(Duration::from_millis(300));
    assert!(
        !early.iter().any(|m| m.starts_with("ACK ")),
        "the callee's ACK went before the caller's answer: {early:?}"
    );
    caller.send(&with_body(
        &caller,
        "ACK",
        call_id,
        &node_tag,
        5,
        "application/sdp",
        &sdp(4006),
    ));
    let ack = callee.expect("ACK ");
    assert!(
        ack.contains("m=audio "),
        "the ACK carries the answer: {ack}"
    );
    assert!(!ack.contains("m=audio 4006 "), "pointed at the node: {ack}");

    hang_up(&caller, &callee, call_id, &node_tag, 6);
}

/// The session id and version of the o= line of `msg`'s body.
fn origin(msg: &str) -> (String, String) {
    let o = msg.lines().find_map(|l| l.strip_prefix("o=")).expect(msg);
    let f: Vec<&str> = o.split(' ').collect();
    (f[1].to_string(), f[2].trim().to_string())
}

/// The caller sees one session whoever's bodies the node relays (RFC 3264 section 8):
/// the first destination's early media (session 10, version 1) stands as the answer
/// when the second destination (its own session 20) answers; the second's re-offers
/// then reach the caller in session 10: unchanged (a refresh) at the same version, on
/// hold one up — not in session 20, which the caller never heard of.
#[test]
fn the_caller_sees_one_session_whoever_answers() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    node.provision(
        "0501234567",
        r#"[{"number": "0311112222", "ring_seconds": 20}, {"number": "0322223333", "ring_seconds": 20}]"#,
        "{}",
    );
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    let body = |session: u32, version: u32, port: u16| {
        format!("v=0\r\no=- {session} {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n")
    };
    let call_id = "one-session";
    caller.send(&invite_with(&caller, call_id, CALLER_SDP));
    let first = callee.expect("INVITE sip:0311112222");
    callee.respond(&first, "183 Session Progress", &body(10, 1, 4002));
    let early = caller.recv(Duration::from_secs(5)).expect("the 183");
    let early = if early.starts_with("SIP/2.0 100") {
        caller.recv(Duration::from_secs(5)).expect("the 183")
    } else {
        early
    };
    assert!(early.starts_with("SIP/2.0 183"), "{early}");
    assert_eq!(origin(&early), ("10".into(), "1".into()));
    callee.respond(&first, "486 Busy Here", "");
    callee.expect("ACK ");
    let second = callee.expect("INVITE sip:0322223333");
    callee.respond(&second, "200 OK", &body(20, 1, 4004));
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert_eq!(origin(&ok), ("10".into(), "1".into()), "{ok}");
    let node_tag = caller.ack(call_id, &ok);
    callee.expect("ACK ");
    // The callee re-offers: unchanged (a refresh), then on hold.
    for (version, extra, want) in [(2, "", "1"), (3, "a=sendonly\r\n", "2")] {
        let sdp = format!("{}{extra}", body(20, version, 4004));
        let reinvite = callee_reinvite(ports, &second, version, &sdp);
        callee.send(&reinvite);
        let relayed = caller.recv(Duration::from_secs(5)).expect("the re-INVITE");
        assert!(relayed.starts_with("INVITE "), "{relayed}");
        assert_eq!(
            origin(&relayed),
            ("10".into(), want.to_string()),
            "{relayed}"
        );
        let ok = caller_ok(&caller, &relayed, "");
        caller.send(&ok);
        callee.expect("SIP/2.0 200");
        callee.send(&crate::dialogs::on_branch(&reinvite, "ACK", None));
        let node_ack = nodes_ack(&caller);
        let want = cseq_of(&relayed).replace("INVITE", "ACK");
        assert_eq!(cseq_of(&node_ack), want, "{node_ack}");
        // The caller's 200 again (the node's ACK lost): the same ACK again, with the
        // re-INVITE's CSeq (RFC 3261 13.2.2.4), else the caller hangs up at 32 s.
        caller.send(&ok);
        let again = nodes_ack(&caller);
        assert_eq!(cseq_of(&again), want, "{again}");
    }
    hang_up(&caller, &callee, call_id, &node_tag, 2);
}

/// A re-INVITE of the callee's in the dialog of `answered` (the node's INVITE it
/// answered), CSeq `cseq`, offering `sdp`.
fn callee_reinvite(ports: Ports, answered: &str, cseq: u32, sdp: &str) -> String {
    format!(
        "INVITE sip:node@127.0.0.1:{node} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{uas};branch=z9hG4bK-re{cseq}\nFrom: {to};tag=calleetag\nTo: {from}\nCall-ID: {cid}\nCSeq: {cseq} INVITE\nContact: <sip:callee@127.0.0.1:{uas}>\nMax-Forwards: 70\nContent-Type: application/sdp\nContent-Length: {len}\n\n{sdp}",
        node = ports.sip,
        uas = ports.uas,
        to = header(answered, "To").unwrap(),
        from = header(answered, "From").unwrap(),
        cid = header(answered, "Call-ID").unwrap().trim(),
        len = sdp.len(),
    )
}

/// The caller's 200 to a re-INVITE `relayed` to it: `extra` headers, its Contact and
/// its SDP.
fn caller_ok(caller: &Party, relayed: &str, extra: &str) -> String {
    ok_to(relayed).replace(
        "Content-Length: 0\n\n",
        &format!(
            "{extra}Contact: <sip:caller@{}>\nContent-Type: application/sdp\nContent-Length: {}\n\n{CALLER_SDP}",
            caller.me(),
            CALLER_SDP.len()
        ),
    )
}

/// The node's ACK of the caller's 200.
fn nodes_ack(caller: &Party) -> String {
    std::iter::from_fn(|| caller.recv(Duration::from_secs(5)))
        .find(|m| m.starts_with("ACK "))
        .expect("the node's ACK of the caller's 200")
}

/// The CSeq line of `msg` (number and method).
fn cseq_of(msg: &str) -> String {
    header(msg, "CSeq").expect("a CSeq").to_string()
}

/// The audio port of the body of `msg` (its first m= line).
fn audio_port(msg: &str) -> u16 {
    let m = msg.lines().find(|l| l.starts_with("m=audio ")).expect(msg);
    m.split(' ')
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
        .expect(m)
}

/// An RTP packet (PCMU) whose payload is `byte`.
fn rtp_of(seq: u16, byte: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x5eed_u32.to_be_bytes());
    p.extend_from_slice(&[byte; 160]);
    p
}

/// Whether `sock` receives an RTP packet carrying `byte` (what it may have received
/// before is read and skipped).
fn heard(sock: &UdpSocket, byte: u8) -> bool {
    let mut buf = [0u8; 2048];
    while let Ok(n) = sock.recv(&mut buf) {
        if n > 12 && buf[12..n].iter().all(|b| *b == byte) {
            return true;
        }
    }
    false
}

/// Sends RTP carrying `byte` from `from` to `to` every 20 ms, as a phone does, until
/// `ear` hears it (true) or for a second (false). The first packets may find the
/// relay before the answer that tells it where to send them has.
fn talk(from: &UdpSocket, to: (&str, u16), byte: u8, ear: &UdpSocket) -> bool {
    ear.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    for seq in 0..50 {
        from.send_to(&rtp_of(seq, byte), to).unwrap();
        if heard(ear, byte) {
            return true;
        }
    }
    false
}

/// A re-offer the other leg refuses changes nothing (RFC 3261 section 14.2): the
/// callee's audio still goes where the caller's accepted SDP says, not where the
/// refused offer named; a re-offer the callee accepts moves it.
#[test]
fn a_refused_re_offer_leaves_the_media_where_it_was() {
    let (ports, _node, callee, caller) = raw_parties();
    let media = |port: u16| UdpSocket::bind(("127.0.0.1", port)).expect("bind a media port");
    let (old, new, far) = (
        media(ports.uac_media),
        media(ports.uac_media + 2),
        media(ports.uas_media),
    );
    let call_id = "refused-reoffer";
    caller.send(&invite_with(&caller, call_id, &sdp(ports.uac_media)));
    let invite = callee.expect("INVITE ");
    let node_for_callee = ("127.0.0.1", audio_port(&invite));
    callee.respond(&invite, "200 OK", &sdp(ports.uas_media));
    let ok = caller.final_response();
    let node_for_caller = ("127.0.0.1", audio_port(&ok));
    let node_tag = caller.ack(call_id, &ok);
    callee.expect("ACK ");
    // Audio both ways.
    assert!(
        talk(&old, node_for_caller, 0x11, &far),
        "the callee hears the caller"
    );
    assert!(
        talk(&far, node_for_callee, 0x22, &old),
        "the caller hears the callee"
    );

    // The caller offers a new port; the callee refuses.
    let offer_new_port = |cseq: u32| {
        with_body(
            &caller,
            "INVITE",
            call_id,
            &node_tag,
            cseq,
            "application/sdp",
            &sdp(ports.uac_media + 2),
        )
    };
    let reoffer = offer_new_port(2);
    caller.send(&reoffer);
    let relayed = callee.expect("INVITE ");
    callee.respond(&relayed, "488 Not Acceptable Here", "");
    callee.expect("ACK ");
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 488"), "{refused}");
    caller.send(&ack_of_failure(&reoffer));
    assert!(
        talk(&far, node_for_callee, 0x33, &old),
        "the callee's audio still reaches the old port"
    );
    new.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(
        !heard(&new, 0x33),
        "nothing went to the refused offer's port"
    );

    // The same offer again, accepted: the audio moves.
    caller.send(&offer_new_port(3));
    let relayed = callee.expect("INVITE ");
    callee.respond(&relayed, "200 OK", &sdp(ports.uas_media));
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let ack = callee.expect("ACK ");
    assert_eq!(cseq_of(&ack), cseq_of(&relayed).replace("INVITE", "ACK"));
    // The callee's 200 again (the node's ACK lost): acknowledged again, with the
    // re-INVITE's CSeq (it got the first INVITE's, which matches nothing).
    callee.respond(&relayed, "200 OK", &sdp(ports.uas_media));
    let again = callee.expect("ACK ");
    assert_eq!(cseq_of(&again), cseq_of(&relayed).replace("INVITE", "ACK"));
    assert!(
        talk(&new, node_for_caller, 0x44, &far),
        "the callee hears the caller's new port"
    );
    assert!(
        talk(&far, node_for_callee, 0x55, &new),
        "the callee's audio goes to the new port"
    );

    hang_up(&caller, &callee, call_id, &node_tag, 4);
}

/// The caller never ACKs the 200: after 64*T1 (32 s, RFC 3261 13.3.1.4) both are hung up and the call is
/// logged failed, `ack_timeout`, with no talk time.
#[test]
fn a_200_the_caller_never_acknowledges_is_logged_without_talk_time() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, r#"{"min_talk_seconds": 5}"#);
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    caller.send(&invite_with(&caller, "never-acked", CALLER_SDP));
    let invite = callee.expect("INVITE ");
    callee.respond(&invite, "200 OK", &sdp(4002));
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok:?}");
    // At 64*T1 the node hangs up both sides.
    let bye = callee.expect_within("BYE ", Duration::from_secs(40));
    callee.ok(&bye);
    let bye = loop {
        let m = caller
            .recv(Duration::from_secs(5))
            .expect("the caller's BYE");
        if m.starts_with("BYE ") {
            break m;
        }
    };
    caller.send(&ok_to(&bye));
    node.wait_until(Duration::from_secs(10), "the call's record", || {
        !node.calls(&key, "").is_empty()
    });
    let call = &node.calls(&key, "")[0];
    assert_eq!(call["result"], "failed", "{call}");
    assert_eq!(call["end_reason"], "ack_timeout", "{call}");
    assert_eq!(call["talk_seconds"], 0, "{call}");
    assert_ne!(call["validity"], "valid", "{call}");
}

/// The caller never ACKs the 200 and the callee hangs up first: the node answers the
/// callee's BYE and hangs up the caller; when the 200's retransmissions give up (64*T1)
/// the call, already ending, sends nothing more. It sent a second BYE to the callee,
/// whose dialog had ended, and another to the caller (a review).
#[test]
fn a_200_never_acknowledged_after_a_hang_up_brings_no_second_bye() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    caller.send(&invite_with(&caller, "never-acked-hung-up", CALLER_SDP));
    let invite = callee.expect("INVITE ");
    callee.respond(&invite, "200 OK", &sdp(4002));
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok:?}");
    callee.expect("ACK ");
    // The callee hangs up after the 200's fourth retransmission (7.5 s after it): the
    // call then ends at its end guard (32 s after the hang-up), after the 200's
    // retransmissions give up (their last timer at 35.5 s).
    let mut copies = 0;
    while copies < 4 {
        let m = caller.recv(Duration::from_secs(10)).expect("the 200 again");
        if m.starts_with("SIP/2.0 200") {
            copies += 1;
        }
    }
    callee.send(&callee_request(ports, &invite, "calleetag", "BYE", 1));
    let bye_ok = callee.expect("SIP/2.0 ");
    assert!(
        bye_ok.starts_with("SIP/2.0 200") && bye_ok.contains("BYE"),
        "{bye_ok}"
    );
    let to_caller = std::iter::from_fn(|| caller.recv(Duration::from_secs(5)))
        .find(|m| m.starts_with("BYE "))
        .expect("the caller's BYE");
    // The caller answers nothing. The call ends at its end guard, after the 200's
    // 64*T1 (its last timer at 35.5 s): logged failed (the caller never confirmed the
    // 200), and nothing reached the callee meanwhile (what came stays in its socket).
    node.wait_until(Duration::from_secs(45), "the call's record", || {
        !node.calls(&key, "").is_empty()
    });
    let call = &node.calls(&key, "")[0];
    assert_eq!(call["result"], "failed", "{call}");
    assert_eq!(call["talk_seconds"], 0, "{call}");
    let later = callee.quiet_for(Duration::from_millis(300));
    assert!(
        !later.iter().any(|m| m.starts_with("BYE ")),
        "a second BYE to the callee: {later:?}"
    );
    let to_caller_later: Vec<String> =
        std::iter::from_fn(|| caller.recv(Duration::from_millis(300))).collect();
    for m in to_caller_later.iter().filter(|m| m.starts_with("BYE ")) {
        assert_eq!(
            cseq_of(m),
            cseq_of(&to_caller),
            "a second BYE to the caller: {m}"
        );
    }
}

/// A silent callee left at its ring time rings later and ignores the node's CANCEL:
/// when the CANCEL's retransmissions give up (64*T1) the INVITE still rings, and its
/// 200 then is ACKed and hung up. The abandoned leg was forgotten at the CANCEL's
/// timeout, and that 200 reached nobody (a review).
#[test]
fn a_callee_ignoring_the_cancel_of_a_left_attempt_is_hung_up_when_it_answers() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let dest = r#"[{"number": "0311112222", "ring_seconds": 1}]"#;
    node.provision("0501234567", dest, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    let first = invite_with(&caller, "cancel-ignored", CALLER_SDP);
    caller.send(&first);
    let invite = callee.expect("INVITE ");
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 480"), "{refused}");
    caller.send(&ack_of_failure(&first));
    callee.respond(&invite, "180 Ringing", "");
    callee.expect("CANCEL ");
    // Unanswered, the CANCEL comes again (at most T2, 4 s, apart) until its 64*T1.
    loop {
        let heard = callee.quiet_for(Duration::from_secs(6));
        if !heard.iter().any(|m| m.starts_with("CANCEL ")) {
            break;
        }
    }
    callee.respond(&invite, "200 OK", &sdp(4002));
    let ack = callee.expect("ACK ");
    assert!(ack.contains("tag=calleetag"), "{ack}");
    let bye = callee.expect("BYE ");
    callee.ok(&bye);
}

/// A forked INVITE answered twice (two To tags): the node keeps the first dialog and
/// ACKs and hangs up the second on its own dialog (RFC 3261 13.2.2.4); the call goes on.
/// The second fork's 200 sent again (its ACK lost) is ACKed again, not hung up again
/// (each BYE a transaction: one per copy of a repeated 2xx, a review).
#[test]
fn a_second_fork_that_answers_is_acked_and_hung_up() {
    let (_ports, node, callee, caller) = raw_parties();
    caller.send(&invite_with(&caller, "forked", CALLER_SDP));
    let invite = callee.expect("INVITE ");
    callee.respond(&invite, "200 OK", &sdp(4002));
    let first_ack = callee.expect("ACK ");
    assert!(first_ack.contains("tag=calleetag"), "{first_ack}");
    callee.respond_as("forktag", &invite, "200 OK", &sdp(4008));
    let fork_ack = callee.expect("ACK ");
    assert!(
        fork_ack.contains("tag=forktag"),
        "the fork's own ACK: {fork_ack}"
    );
    let fork_bye = callee.expect("BYE ");
    assert!(fork_bye.contains("tag=forktag"), "{fork_bye}");
    callee.ok(&fork_bye);
    callee.respond_as("forktag", &invite, "200 OK", &sdp(4008));
    let again = callee.expect("ACK ");
    assert!(again.contains("tag=forktag"), "{again}");
    let node_tag = caller.ack_answer("forked");
    assert_eq!(
        node.metric("tsunagu_active_calls"),
        1.0,
        "the kept call goes on"
    );
    let bye = hang_up(&caller, &callee, "forked", &node_tag, 2);
    assert!(bye.contains("tag=calleetag"), "{bye}");
}

/// A callee that says nothing (not even 100 Trying) by its ring time: the caller hears
/// 480 at the ring time, not at Timer B (32 s); the callee's late 180 gets a CANCEL
/// (and its 487 an ACK), a late 200 an ACK and a BYE.
#[test]
fn a_silent_callee_is_left_at_its_ring_time_and_its_late_answers_are_answered() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let dest = r#"[{"number": "0311112222", "ring_seconds": 1}]"#;
    let (key, _) = node.provision("0501234567", dest, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);

    let started = std::time::Instant::now();
    let first = invite_with(&caller, "silent-1", CALLER_SDP);
    caller.send(&first);
    let invite = callee.expect("INVITE ");
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 480"), "{refused}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused after {:?}, not at the ring time",
        started.elapsed()
    );
    caller.send(&ack_of_failure(&first));
    callee.respond(&invite, "180 Ringing", "");
    let cancel = callee.expect("CANCEL ");
    callee.ok(&cancel);
    callee.respond(&invite, "487 Request Terminated", "");
    callee.expect("ACK ");
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["result"], "no_answer", "{}", calls[0]);
    // The leg went to the late-answer handler; the record still names where it rang.
    assert_eq!(calls[0]["destination_number"], "0311112222", "{}", calls[0]);
    assert_eq!(node.metric("tsunagu_forward_attempts_abandoned_total"), 1.0);

    let second = invite_with(&caller, "silent-2", CALLER_SDP);
    caller.send(&second);
    let first_leg = header(&invite, "Call-ID").unwrap().to_string();
    let invite = loop {
        // The first INVITE's retransmissions (sent while its callee was silent) may
        // still wait in the socket.
        let m = callee.expect("INVITE ");
        if header(&m, "Call-ID") != Some(first_leg.as_str()) {
            break m;
        }
    };
    let refused = caller.final_response();
    assert!(
        refused.starts_with("SIP/2.0 480") && refused.contains("silent-2"),
        "{refused}"
    );
    caller.send(&ack_of_failure(&second));
    callee.respond(&invite, "200 OK", &sdp(4002));
    callee.expect("ACK ");
    let bye = callee.expect("BYE ");
    assert!(bye.contains("tag=calleetag"), "{bye}");
    callee.ok(&bye);
    node.wait_for_calls(&key, 2);
}

/// The caller agreed a session timer (it refreshes, `refresher=uac`); the callee does
/// no timers and puts the call on hold. Every re-INVITE is a session refresh that
/// renegotiates the timer (RFC 4028): the node's to the caller carries the session's
/// timer, naming the caller refresher (`uas` in a request the node sends), and the
/// caller's Session-Expires in its 200 stays with the node, the callee never asked.
/// (Relayed bare, the caller's 200 without Session-Expires turned its timer off, it
/// stopped refreshing, and the node's check hung the call up: a review.)
#[test]
fn a_callee_s_re_invite_reaches_the_caller_with_the_session_s_timer() {
    re_invite_to_a_caller_with_a_timer(None, "1800;refresher=uac", "1800;refresher=uas", None);
}

/// The same with a callee that refreshes (its 200 says `refresher=uas`, passed on to
/// the caller as it is): the node's re-INVITE to the caller names the node's side
/// (`uac`), whose refreshes (the callee's, passed on) reach the caller. It named the
/// caller, which then refreshed too (a review). The callee's 200 names the node the
/// refresher (`uas`: its hold said no `Supported: timer`); it said nothing, the
/// callee's timer went off, and nobody refreshed (a later review).
#[test]
fn a_callee_that_refreshes_stays_the_refresher_in_the_node_s_re_invites() {
    re_invite_to_a_caller_with_a_timer(
        Some("1800;refresher=uas"),
        "1800;refresher=uas",
        "1800;refresher=uac",
        Some("1800;refresher=uas"),
    );
}

/// A callee that refreshes the session (its 200 to a caller asking `Session-Expires:
/// 1800` says `refresher=uas`) gets the caller's hold, which says nothing of timers,
/// with the session's timer naming it refresher still; the caller, which asked nothing
/// of timers in the hold, hears nothing of them in its 200. Relayed
/// bare, the hold's 200 without Session-Expires turned the callee's timer off, it
/// stopped refreshing, and the node's check hung the call up an interval later; a
/// takeover's re-INVITE to such a callee did the same (a review).
#[test]
fn a_callee_that_refreshes_keeps_its_timer_through_the_caller_s_hold() {
    callee_timer_through_a_hold("timer-to-callee", false);
}

/// The same callee refusing the interval the node names to it (422 with a longer
/// Min-SE: the caller had agreed a shorter one) gets the hold again without a timer,
/// and the caller its 200; the caller got 500 for it, and the takeover's re-INVITE
/// refused so hung the call up.
#[test]
fn a_callee_refusing_the_node_s_timer_gets_the_hold_without_it() {
    callee_timer_through_a_hold("timer-to-callee-422", true);
}

/// A caller asking `Session-Expires: 1800`, a callee answering as the refresher, the
/// caller's hold without a timer; the callee refusing the node's timer 422 first if
/// `refuses`.
fn callee_timer_through_a_hold(call_id: &str, refuses: bool) {
    let (_ports, _node, callee, caller) = raw_parties();
    let (ok, node_tag, _) = call_with_the_caller_s_timer(
        &caller,
        &callee,
        call_id,
        "Session-Expires: 1800;refresher=uas\n",
    );
    assert_eq!(
        header(&ok, "Session-Expires"),
        Some("1800;refresher=uas"),
        "{ok}"
    );
    caller.send(&crate::dialogs::caller_offer(
        &caller,
        "INVITE",
        call_id,
        &node_tag,
        2,
        "",
        &caller_hold(),
    ));
    let mut relayed = callee.expect("INVITE ");
    assert_eq!(
        header(&relayed, "Session-Expires"),
        Some("1800;refresher=uas"),
        "{relayed}"
    );
    assert!(
        header(&relayed, "Supported").is_some_and(|s| s.contains("timer")),
        "{relayed}"
    );
    let held = sdp(4002).replace(" 2 2 IN", " 2 3 IN") + "a=recvonly\r\n";
    let mut timer = "Session-Expires: 1800;refresher=uas\n";
    if refuses {
        callee.respond_with(
            "calleetag",
            &relayed,
            "422 Session Interval Too Small",
            "Min-SE: 3600\n",
            "",
        );
        callee.expect("ACK ");
        relayed = callee.expect("INVITE ");
        assert!(relayed.contains("a=sendonly"), "the same hold: {relayed}");
        assert_eq!(header(&relayed, "Session-Expires"), None, "{relayed}");
        timer = "";
    }
    callee.respond_with("calleetag", &relayed, "200 OK", timer, &held);
    callee.expect("ACK ");
    let held_ok = caller.final_response();
    assert!(held_ok.starts_with("SIP/2.0 200"), "{held_ok}");
    assert!(
        header(&held_ok, "Session-Expires").is_none() && header(&held_ok, "Require").is_none(),
        "the caller asked nothing of timers: {held_ok}"
    );
    caller.ack_cseq(call_id, &node_tag, 2);
    hang_up(&caller, &callee, call_id, &node_tag, 3);
}

/// A callee that refreshes answers the node's timer naming the node's side its
/// refresher (`refresher=uac` where the request named it `uas`; RFC 4028 9 wants that
/// kept, not every callee does): the node refreshes the callee's leg as well, right
/// after each of its refreshes of the caller's. It was read as a callee without a
/// timer: the node refreshed the caller's leg only, and the callee, waiting for
/// refreshes, hung up at its interval (a review). A refusal of the callee's refresh
/// is sent again (it was not: the callee was left to hang up).
#[test]
fn a_callee_naming_the_node_its_refresher_is_refreshed_by_the_node() {
    let ShortSession {
        ports,
        _node,
        callee,
        caller,
        node_tag,
        forwarded,
    } = short_session_call(
        "callee-names-uac",
        "Session-Expires: 4\n",
        "Session-Expires: 4;refresher=uas\n",
        "4;refresher=uas",
    );
    let call_id = "callee-names-uac";
    // The caller's hold reaches the callee with the session's timer (it refreshes);
    // its 2xx names the node's side.
    caller.send(&crate::dialogs::caller_offer(
        &caller,
        "INVITE",
        call_id,
        &node_tag,
        2,
        "",
        &caller_hold(),
    ));
    let relayed = callee.expect("INVITE ");
    assert_eq!(
        header(&relayed, "Session-Expires"),
        Some("4;refresher=uas"),
        "{relayed}"
    );
    let held = sdp(4002).replace(" 2 2 IN", " 2 3 IN") + "a=recvonly\r\n";
    let uac = "Session-Expires: 4;refresher=uac\n";
    callee.respond_with("calleetag", &relayed, "200 OK", uac, &held);
    callee.expect("ACK ");
    let held_ok = caller.final_response();
    assert!(held_ok.starts_with("SIP/2.0 200"), "{held_ok}");
    caller.ack_cseq(call_id, &node_tag, 2);
    // Twice: the node refreshes the caller, then the callee, naming itself (`uac`).
    for round in 0..2 {
        let refresh = reinvite_at(&caller);
        assert_eq!(
            header(&refresh, "Session-Expires"),
            Some("4;refresher=uac"),
            "{round}: {refresh}"
        );
        caller.send(&caller_ok(&caller, &refresh, uac));
        nodes_ack(&caller);
        let callee_refresh = callee.expect("INVITE ");
        assert_eq!(
            header(&callee_refresh, "Session-Expires"),
            Some("4;refresher=uac"),
            "{round}: {callee_refresh}"
        );
        assert!(callee_refresh.contains("m=audio"), "{callee_refresh}");
        let callee_refresh = if round == 1 {
            // Refused once for a passing reason: sent again within a quarter second.
            callee.respond_with(
                "calleetag",
                &callee_refresh,
                "503 Service Unavailable",
                "",
                "",
            );
            callee.expect("ACK ");
            let again = callee.expect("INVITE ");
            assert_ne!(cseq_of(&again), cseq_of(&callee_refresh), "{again}");
            again
        } else {
            callee_refresh
        };
        callee.respond_with("calleetag", &callee_refresh, "200 OK", uac, &held);
        callee.expect("ACK ");
    }
    // The callee's own refresh names itself the refresher, and the caller agrees: the
    // node's next refresh of the caller is no longer followed by one of the callee.
    let own = callee_reinvite(ports, &forwarded, 2, &held).replace(
        "Max-Forwards: 70\n",
        "Max-Forwards: 70\nSession-Expires: 4;refresher=uac\nSupported: timer\n",
    );
    callee.send(&own);
    let relayed = reinvite_at(&caller);
    assert_eq!(
        header(&relayed, "Session-Expires"),
        Some("4;refresher=uac"),
        "{relayed}"
    );
    caller.send(&caller_ok(&caller, &relayed, uac));
    assert!(final_at(&callee).starts_with("SIP/2.0 200"));
    callee.send(&crate::dialogs::on_branch(&own, "ACK", None));
    nodes_ack(&caller);
    let refresh = reinvite_at(&caller);
    caller.send(&caller_ok(&caller, &refresh, uac));
    nodes_ack(&caller);
    let seen = callee.quiet_for(Duration::from_millis(1500));
    assert!(
        !seen.iter().any(|m| m.starts_with("INVITE ")),
        "the callee refreshes itself: {seen:?}"
    );
    hang_up(&caller, &callee, call_id, &node_tag, 3);
}

/// A caller's INVITE with a Session-Expires a proxy added, without `Supported:
/// timer` (the caller does no timers): the node, the party that can, names its own
/// side (`uas`, no `Require`: RFC 4028 9) and refreshes the caller's leg, whose
/// answers without a timer keep it going; the caller's hold with the proxy's timer
/// again is answered the same way. The node answered nothing of timers, and the
/// proxy read a session without one.
#[test]
fn a_proxy_s_session_timer_for_a_caller_without_timers_is_refreshed_by_the_node() {
    let call_id = "proxy-asked-timer";
    let ShortSession {
        _node,
        callee,
        caller,
        node_tag,
        ..
    } = session_call(call_id, "Session-Expires: 4\n", "", "4;refresher=uas");
    // A caller without timers answers the node's refreshes without one: the node
    // goes on refreshing (two refreshes outlive the session's 3 s check).
    let refreshed_plainly = |caller: &Party| the_node_refreshes_answered(caller, "");
    refreshed_plainly(&caller);
    refreshed_plainly(&caller);
    // The caller's hold, with the proxy's Session-Expires again: answered as the
    // INVITE was, and the node goes on refreshing.
    let timer = "Session-Expires: 4\n";
    let ok = hold_answered_without_a_timer(&caller, &callee, call_id, &node_tag, timer);
    assert_eq!(
        header(&ok, "Session-Expires"),
        Some("4;refresher=uas"),
        "{ok}"
    );
    assert_eq!(header(&ok, "Require"), None, "{ok}");
    refreshed_plainly(&caller);
}

/// The caller's hold (a re-INVITE with CSeq 2 and the `timer` lines), which the callee
/// answers 200 without a timer: the 200 the caller gets, acknowledged.
fn hold_answered_without_a_timer(
    caller: &Party,
    callee: &Callee,
    call_id: &str,
    node_tag: &str,
    timer: &str,
) -> String {
    let hold = crate::dialogs::caller_offer(
        caller,
        "INVITE",
        call_id,
        node_tag,
        2,
        timer,
        &caller_hold(),
    );
    caller.send(&hold);
    let relayed = callee.expect("INVITE ");
    let held = sdp(4002).replace(" 2 2 IN", " 2 3 IN") + "a=recvonly\r\n";
    callee.respond_with("calleetag", &relayed, "200 OK", "", &held);
    callee.expect("ACK ");
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    caller.ack_cseq(call_id, node_tag, 2);
    ok
}

/// The caller asks the node to refresh (`refresher=uas`) and the callee's 200 names
/// the node's side too (`uac`): the caller keeps `uas` (RFC 4028 9) and the node
/// refreshes both legs, the caller's then the callee's. It told the caller `uac`,
/// which could not refresh, and the session expired (a live torture run). The same
/// for the caller's hold asking `uas` again, answered `uac` (passed on as written, it
/// broke RFC 4028 9 and stopped the node's refreshes: a review). When the caller then
/// takes the part (its 2xx to the node's refresh says `uas`), the callee gets a
/// re-INVITE at once (left to the caller's first refresh, its leg went a whole
/// interval without one: the torture run), and the caller's hold without a timer is
/// answered with the session's (`uac`, `Require: timer`).
#[test]
fn a_caller_asking_the_node_to_refresh_keeps_it_when_the_callee_names_the_node_too() {
    let uac = "Session-Expires: 4;refresher=uac\n";
    let uas = "Session-Expires: 4;refresher=uas\n";
    let call_id = "both-name-the-node";
    let ShortSession {
        _node,
        callee,
        caller,
        node_tag,
        ..
    } = short_session_call(call_id, uas, uac, "4;refresher=uas");
    let session = sdp(4002);
    // The caller's hold asks `uas` again; the callee answers `uac`: the caller is
    // answered `uas`.
    let hold = crate::dialogs::caller_offer(
        &caller,
        "INVITE",
        call_id,
        &node_tag,
        2,
        uas,
        &caller_hold(),
    );
    caller.send(&hold);
    let relayed = callee.expect("INVITE ");
    assert_eq!(
        header(&relayed, "Session-Expires"),
        Some("4;refresher=uas"),
        "{relayed}"
    );
    let held = sdp(4002).replace(" 2 2 IN", " 2 3 IN") + "a=recvonly\r\n";
    callee.respond_with("calleetag", &relayed, "200 OK", uac, &held);
    callee.expect("ACK ");
    let ok = caller.final_response();
    assert_eq!(
        header(&ok, "Session-Expires"),
        Some("4;refresher=uas"),
        "{ok}"
    );
    assert_eq!(header(&ok, "Require"), None, "{ok}");
    caller.ack_cseq(call_id, &node_tag, 2);
    // The node refreshes the caller, then the callee.
    let refresh = reinvite_at(&caller);
    assert_eq!(
        header(&refresh, "Session-Expires"),
        Some("4;refresher=uac"),
        "{refresh}"
    );
    caller.send(&caller_ok(&caller, &refresh, uac));
    nodes_ack(&caller);
    let callee_refresh = callee.expect("INVITE ");
    assert_eq!(
        header(&callee_refresh, "Session-Expires"),
        Some("4;refresher=uac"),
        "{callee_refresh}"
    );
    callee.respond_with("calleetag", &callee_refresh, "200 OK", uac, &held);
    callee.expect("ACK ");
    // The caller takes the part: the callee gets a re-INVITE at once (without a timer:
    // the caller's refreshes reach it from now on).
    let refresh = reinvite_at(&caller);
    caller.send(&caller_ok(&caller, &refresh, uas));
    nodes_ack(&caller);
    let callee_refresh = callee.expect_within("INVITE ", Duration::from_millis(500));
    assert_eq!(
        header(&callee_refresh, "Session-Expires"),
        None,
        "{callee_refresh}"
    );
    callee.respond_with("calleetag", &callee_refresh, "200 OK", "", &held);
    callee.expect("ACK ");
    // The refreshing caller's resume without a timer: answered with the session's.
    let resume = crate::dialogs::caller_offer(
        &caller,
        "INVITE",
        call_id,
        &node_tag,
        3,
        "Supported: timer\n",
        &CALLER_SDP.replace(" 1 1 IN", " 1 3 IN"),
    );
    caller.send(&resume);
    let relayed = callee.expect("INVITE ");
    assert_eq!(header(&relayed, "Session-Expires"), None, "{relayed}");
    callee.respond_with("calleetag", &relayed, "200 OK", "", &session);
    callee.expect("ACK ");
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert_eq!(
        header(&ok, "Session-Expires"),
        Some("4;refresher=uac"),
        "{ok}"
    );
    assert_eq!(header(&ok, "Require"), Some("timer"), "{ok}");
    caller.ack_cseq(call_id, &node_tag, 3);
    hang_up(&caller, &callee, call_id, &node_tag, 4);
}

/// A callee the node refreshes refuses every refresh of its leg (503): sent again
/// three times, then the session ends as expired, both legs hung up. The node sent
/// it four re-INVITEs every half interval for as long as the caller's leg kept the
/// call alive (a live torture run).
#[test]
fn a_callee_refusing_every_refresh_of_its_leg_ends_the_session() {
    let uac = "Session-Expires: 4;refresher=uac\n";
    let ShortSession {
        _node,
        callee,
        caller,
        ..
    } = short_session_call(
        "callee-refuses-all",
        "Session-Expires: 4;refresher=uas\n",
        uac,
        "4;refresher=uas",
    );
    let refresh = reinvite_at(&caller);
    caller.send(&caller_ok(&caller, &refresh, uac));
    nodes_ack(&caller);
    let mut cseqs = Vec::new();
    for _ in 0..4 {
        let callee_refresh = callee.expect("INVITE ");
        cseqs.push(cseq_of(&callee_refresh));
        callee.respond_with(
            "calleetag",
            &callee_refresh,
            "503 Service Unavailable",
            "",
            "",
        );
        callee.expect("ACK ");
    }
    cseqs.dedup();
    assert_eq!(cseqs.len(), 4, "four refreshes, each its own: {cseqs:?}");
    // The caller hears the BYE, not the node's next refresh (its leg is alive: only
    // the callee's refusals end the session).
    let next = std::iter::from_fn(|| caller.recv(Duration::from_secs(5)))
        .find(|m| m.starts_with("BYE ") || m.starts_with("INVITE "))
        .expect("the caller's BYE");
    assert!(next.starts_with("BYE "), "{next}");
    caller.send(&ok_to(&next));
    let bye = callee.expect("BYE ");
    callee.ok(&bye);
}

/// The caller refreshes (told `refresher=uac`) and puts the call on hold with a
/// re-INVITE without Session-Expires nor `Supported: timer`: the node's 200 carries
/// the session's timer naming itself (`uas`), and it refreshes the caller from then
/// on. Its 200 said nothing of timers, the caller read "no expiration" (RFC 4028
/// 7.2), and the node's check hung up the call (a live torture run).
#[test]
fn a_refreshing_caller_s_hold_without_a_timer_keeps_the_session() {
    let call_id = "hold-without-timer";
    let ShortSession {
        _node,
        callee,
        caller,
        node_tag,
        ..
    } = short_session_call(call_id, "Session-Expires: 4\n", "", "4;refresher=uac");
    let ok = hold_answered_without_a_timer(&caller, &callee, call_id, &node_tag, "");
    assert_eq!(
        header(&ok, "Session-Expires"),
        Some("4;refresher=uas"),
        "{ok}"
    );
    assert_eq!(header(&ok, "Require"), None, "{ok}");
    the_node_refreshes(&caller);
    hang_up(&caller, &callee, call_id, &node_tag, 3);
}

/// A callee that refreshes puts the call on hold with a re-INVITE without a timer
/// (nor `Supported: timer`): the node adds the session's toward the caller, and the
/// callee's 200 carries it too, naming the node (`uas`: the callee cannot refresh),
/// which refreshes both legs from then on. The callee's 200 carried nothing (its
/// timer off), the caller had been told the node's side refreshes, nobody refreshed,
/// and the node's check hung the call up (a review); then the node refreshed the
/// caller's leg only, and the callee, told the node refreshes its leg, would have
/// hung up (a live torture run).
#[test]
fn a_refreshing_callee_s_hold_without_a_timer_keeps_the_session() {
    let call_id = "callee-hold-without-timer";
    let ShortSession {
        ports,
        _node,
        callee,
        caller,
        node_tag,
        forwarded,
    } = short_session_call(
        call_id,
        "Session-Expires: 4\n",
        "Session-Expires: 4;refresher=uas\n",
        "4;refresher=uas",
    );
    let hold = callee_holds(ports, &callee, &forwarded);
    let relayed = reinvite_at(&caller);
    assert_eq!(
        header(&relayed, "Session-Expires"),
        Some("4;refresher=uac"),
        "{relayed}"
    );
    caller.send(&caller_ok(
        &caller,
        &relayed,
        "Session-Expires: 4;refresher=uac\n",
    ));
    nodes_ack(&caller);
    let ok = final_at(&callee);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert_eq!(
        header(&ok, "Session-Expires"),
        Some("4;refresher=uas"),
        "{ok}"
    );
    assert_eq!(header(&ok, "Require"), None, "{ok}");
    callee.send(&crate::dialogs::on_branch(&hold, "ACK", None));
    the_node_refreshes(&caller);
    let callee_refresh = callee.expect("INVITE ");
    assert_eq!(
        header(&callee_refresh, "Session-Expires"),
        Some("4;refresher=uac"),
        "{callee_refresh}"
    );
    let held = sdp(4002).replace(" 2 2 IN", " 2 3 IN") + "a=sendonly\r\n";
    callee.respond_with(
        "calleetag",
        &callee_refresh,
        "200 OK",
        "Session-Expires: 4;refresher=uac\n",
        &held,
    );
    callee.expect("ACK ");
    hang_up(&caller, &callee, call_id, &node_tag, 2);
}

/// A callee that refreshes refuses the session's interval (422, Min-SE 3600) and
/// then, glaring, the hold sent again without a timer (491). The caller's next offer
/// reaches it without a timer too (its floor is remembered; each still says
/// `Supported: timer`, RFC 4028 7.1), and its 200 without one
/// turned its timer off: the node refreshes the caller's leg from then on. It read
/// that 200 as the sender's business, went on waiting for the callee's refreshes, and
/// hung the call up at the session's check (a review).
#[test]
fn a_callee_s_floor_withholds_the_timer_and_its_answer_still_counts() {
    let uas = "Session-Expires: 4;refresher=uas\n";
    let call_id = "callee-floor-withheld";
    let ShortSession {
        _node,
        callee,
        caller,
        node_tag,
        ..
    } = short_session_call(call_id, "Session-Expires: 4\n", uas, "4;refresher=uas");
    // The hold: refused 422, sent again without a timer, refused 491.
    let offer = |cseq: u32, sdp: &str| {
        crate::dialogs::caller_offer(&caller, "INVITE", call_id, &node_tag, cseq, "", sdp)
    };
    let hold = offer(2, &caller_hold());
    caller.send(&hold);
    let relayed = callee.expect("INVITE ");
    assert_eq!(
        header(&relayed, "Session-Expires"),
        Some("4;refresher=uas"),
        "{relayed}"
    );
    callee.respond_with(
        "calleetag",
        &relayed,
        "422 Session Interval Too Small",
        "Min-SE: 3600\n",
        "",
    );
    callee.expect("ACK ");
    let again = callee.expect("INVITE ");
    assert_eq!(header(&again, "Session-Expires"), None, "{again}");
    // The node still says it does timers (RFC 4028 7.1: in every request).
    assert_eq!(header(&again, "Supported"), Some("timer"), "{again}");
    callee.respond_with("calleetag", &again, "491 Request Pending", "", "");
    callee.expect("ACK ");
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 491"), "{refused}");
    caller.send(&ack_of_failure(&hold));
    // The caller's next offer: no timer to the callee, whose 200 names none.
    let resume = offer(3, &CALLER_SDP.replace(" 1 1 IN", " 1 3 IN"));
    caller.send(&resume);
    let relayed = callee.expect("INVITE ");
    assert_eq!(header(&relayed, "Session-Expires"), None, "{relayed}");
    assert_eq!(header(&relayed, "Supported"), Some("timer"), "{relayed}");
    callee.respond_with(
        "calleetag",
        &relayed,
        "200 OK",
        "",
        &sdp(4002).replace(" 2 2 IN", " 2 3 IN"),
    );
    callee.expect("ACK ");
    let resumed = caller.final_response();
    assert!(resumed.starts_with("SIP/2.0 200"), "{resumed}");
    caller.ack_cseq(call_id, &node_tag, 3);
    // The node refreshes the caller before the session's check, rather than hanging up.
    the_node_refreshes(&caller);
    hang_up(&caller, &callee, call_id, &node_tag, 4);
}

/// The caller cancels its hold, but the callee's 200 crosses the node's CANCEL: the
/// node offers the callee the session before the hold again, with the session's timer
/// (the callee refreshes). The callee refuses that interval (422, Min-SE 3600): the
/// node offers the same again without a timer, and the callee is back on the caller's
/// session. It was left on the hold nobody took (a review).
#[test]
fn a_restore_the_callee_refuses_for_its_timer_is_sent_again_without_it() {
    let (_ports, _node, callee, caller) = raw_parties();
    let call_id = "restore-422";
    let (_, node_tag, _) = call_with_the_caller_s_timer(
        &caller,
        &callee,
        call_id,
        "Session-Expires: 1800;refresher=uas\n",
    );
    let hold =
        crate::dialogs::caller_offer(&caller, "INVITE", call_id, &node_tag, 2, "", &caller_hold());
    caller.send(&hold);
    let relayed = callee.expect("INVITE ");
    assert!(relayed.contains("a=sendonly"), "{relayed}");
    callee.respond_with("calleetag", &relayed, "100 Trying", "", "");
    caller.send(&crate::dialogs::on_branch(&hold, "CANCEL", None));
    // The caller keeps its session: its hold is answered 487.
    let cancelled = std::iter::from_fn(|| caller.recv(Duration::from_secs(5)))
        .find(|m| header(m, "CSeq") == Some("2 INVITE") && !m.starts_with("SIP/2.0 1"))
        .expect("the hold's final answer");
    assert!(cancelled.starts_with("SIP/2.0 487"), "{cancelled}");
    caller.send(&ack_of_failure(&hold));
    let cancel = callee.expect("CANCEL ");
    callee.ok(&cancel);
    // The 200 crosses the CANCEL: the callee took the hold.
    let held = sdp(4002).replace(" 2 2 IN", " 2 3 IN") + "a=recvonly\r\n";
    callee.respond_with(
        "calleetag",
        &relayed,
        "200 OK",
        "Session-Expires: 1800;refresher=uas\n",
        &held,
    );
    callee.expect("ACK ");
    let restore = callee.expect("INVITE ");
    assert_eq!(
        header(&restore, "Session-Expires"),
        Some("1800;refresher=uas"),
        "{restore}"
    );
    callee.respond_with(
        "calleetag",
        &restore,
        "422 Session Interval Too Small",
        "Min-SE: 3600\n",
        "",
    );
    callee.expect("ACK ");
    let again = callee.expect("INVITE ");
    assert_ne!(cseq_of(&again), cseq_of(&restore), "{again}");
    assert_eq!(header(&again, "Session-Expires"), None, "{again}");
    assert!(
        again.contains("m=audio") && !again.contains("sendonly") && !again.contains("recvonly"),
        "the session before the hold: {again}"
    );
    callee.respond_with(
        "calleetag",
        &again,
        "200 OK",
        "",
        &sdp(4002).replace(" 2 2 IN", " 2 4 IN"),
    );
    callee.expect("ACK ");
    hang_up(&caller, &callee, call_id, &node_tag, 3);
}

/// A call `call_id` whose caller asked `Session-Expires: 1800` (and `Supported:
/// timer`), answered by the callee with `callee_timer` (extra header lines, each
/// ending in `\n`) and acknowledged: (the node's 200 to the caller, the node's tag in
/// it, the INVITE the callee got).
fn call_with_the_caller_s_timer(
    caller: &Party,
    callee: &Callee,
    call_id: &str,
    callee_timer: &str,
) -> (String, String, String) {
    let invite = invite_with(caller, call_id, CALLER_SDP).replace(
        "Max-Forwards: 70\n",
        "Max-Forwards: 70\nSession-Expires: 1800\nSupported: timer\n",
    );
    caller.send(&invite);
    let forwarded = callee.expect("INVITE ");
    callee.respond_with("calleetag", &forwarded, "200 OK", callee_timer, &sdp(4002));
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let node_tag = caller.ack(call_id, &ok);
    callee.expect("ACK ");
    (ok, node_tag, forwarded)
}

/// A call through a node whose session floor is 2 s (a session of 4 s is refreshed
/// every 2 s and checked 3 s after its last refresh): see [`short_session_call`].
struct ShortSession {
    ports: Ports,
    _node: Node,
    callee: Callee,
    caller: Party,
    /// The node's tag in the caller's dialog.
    node_tag: String,
    /// The INVITE the callee got.
    forwarded: String,
}

/// A node with a 2 s session floor and number 0501234567 to a raw callee, and call
/// `call_id` through it: the caller's INVITE with `caller_timer` (header lines, each
/// ending in `\n`) and `Supported: timer`, answered by the callee with
/// `callee_timer`, acknowledged; the caller's 200 says `told` (its Session-Expires).
fn short_session_call(
    call_id: &str,
    caller_timer: &str,
    callee_timer: &str,
    told: &str,
) -> ShortSession {
    let caller_timer = format!("{caller_timer}Supported: timer\n");
    session_call(call_id, &caller_timer, callee_timer, told)
}

/// [`short_session_call`] with the caller's session-timer lines as given
/// (`Supported: timer` only if they say it).
fn session_call(call_id: &str, caller_timer: &str, callee_timer: &str, told: &str) -> ShortSession {
    let ports = Ports::take();
    let node = Node::start_with_sip(ports, "127.0.0.1/32", "min_session_expires = 2", "");
    node.provision("0501234567", DEST, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    let invite = invite_with(&caller, call_id, CALLER_SDP).replace(
        "Max-Forwards: 70\n",
        &format!("Max-Forwards: 70\n{caller_timer}"),
    );
    caller.send(&invite);
    let forwarded = callee.expect("INVITE ");
    callee.respond_with("calleetag", &forwarded, "200 OK", callee_timer, &sdp(4002));
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert_eq!(header(&ok, "Session-Expires"), Some(told), "{ok}");
    let node_tag = caller.ack(call_id, &ok);
    callee.expect("ACK ");
    ShortSession {
        ports,
        _node: node,
        callee,
        caller,
        node_tag,
        forwarded,
    }
}

/// A node with number 0501234567 forwarding to a raw callee, and a raw caller:
/// (its ports, the node, the callee, the caller).
fn raw_parties() -> (Ports, Node, Callee, Party) {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    node.provision("0501234567", DEST, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    (ports, node, callee, caller)
}

/// The caller's 422 (Session Interval Too Small) to `request`, asking `min_se`.
fn too_small(request: &str, min_se: u32) -> String {
    ok_to(request)
        .replace("SIP/2.0 200 OK", "SIP/2.0 422 Session Interval Too Small")
        .replace(
            "Content-Length: 0\n",
            &format!("Min-SE: {min_se}\nContent-Length: 0\n"),
        )
}

/// The callee puts the call of `forwarded` on hold (its re-INVITE, CSeq 2, saying
/// nothing of timers); that re-INVITE.
fn callee_holds(ports: Ports, callee: &Callee, forwarded: &str) -> String {
    let hold = format!("{}a=sendonly\r\n", sdp(4002)).replace(" 2 2 IN", " 2 3 IN");
    let reinvite = callee_reinvite(ports, forwarded, 2, &hold);
    callee.send(&reinvite);
    reinvite
}

/// The next re-INVITE the caller gets (others skipped) within 5 s.
fn reinvite_at(caller: &Party) -> String {
    std::iter::from_fn(|| caller.recv(Duration::from_secs(5)))
        .find(|m| m.starts_with("INVITE "))
        .expect("a re-INVITE")
}

/// The caller's next INVITE or BYE within 5 s is the node's refresh of a 4 s session,
/// naming itself (`4;refresher=uac`), rather than a BYE: answered likewise, and its
/// ACK awaited.
fn the_node_refreshes(caller: &Party) {
    the_node_refreshes_answered(caller, "Session-Expires: 4;refresher=uac\n");
}

/// [`the_node_refreshes`], the caller's 200 carrying `timer` (header lines).
fn the_node_refreshes_answered(caller: &Party, timer: &str) {
    let next = std::iter::from_fn(|| caller.recv(Duration::from_secs(5)))
        .find(|m| m.starts_with("INVITE ") || m.starts_with("BYE "))
        .expect("a refresh or a BYE");
    assert!(next.starts_with("INVITE "), "the node refreshes: {next}");
    assert_eq!(
        header(&next, "Session-Expires"),
        Some("4;refresher=uac"),
        "{next}"
    );
    caller.send(&caller_ok(caller, &next, timer));
    nodes_ack(caller);
}

/// The callee's next final response (provisionals skipped) within 5 s each.
fn final_at(callee: &Callee) -> String {
    loop {
        let m = callee.expect("SIP/2.0 ");
        if !m.starts_with("SIP/2.0 1") {
            return m;
        }
    }
}

/// A caller asking `Session-Expires: 1800`; the callee answering with `callee_timer`
/// (if any); the caller's 200 naming `told`; the callee's re-INVITE without a timer
/// reaching the caller with `in_reinvite`, and its 200 with `callee_told` (None:
/// nothing of timers).
fn re_invite_to_a_caller_with_a_timer(
    callee_timer: Option<&str>,
    told: &str,
    in_reinvite: &str,
    callee_told: Option<&str>,
) {
    let (ports, _node, callee, caller) = raw_parties();
    let call_id = if callee_timer.is_some() {
        "timer-to-caller-2"
    } else {
        "timer-to-caller"
    };
    let timer = callee_timer.map_or(String::new(), |t| format!("Session-Expires: {t}\n"));
    let (ok, node_tag, forwarded) = call_with_the_caller_s_timer(&caller, &callee, call_id, &timer);
    assert_eq!(header(&ok, "Session-Expires"), Some(told), "{ok}");
    // The callee puts the call on hold, saying nothing of timers.
    let reinvite = callee_holds(ports, &callee, &forwarded);
    let relayed = reinvite_at(&caller);
    assert_eq!(
        header(&relayed, "Session-Expires"),
        Some(in_reinvite),
        "{relayed}"
    );
    assert!(
        header(&relayed, "Supported").is_some_and(|s| s.contains("timer")),
        "{relayed}"
    );
    caller.send(&caller_ok(
        &caller,
        &relayed,
        &format!("Session-Expires: {in_reinvite}\n"),
    ));
    let callee_ok = callee.expect("SIP/2.0 200");
    assert_eq!(
        header(&callee_ok, "Session-Expires"),
        callee_told,
        "{callee_ok}"
    );
    assert_eq!(header(&callee_ok, "Require"), None, "{callee_ok}");
    callee.send(&crate::dialogs::on_branch(&reinvite, "ACK", None));
    nodes_ack(&caller);
    hang_up(&caller, &callee, call_id, &node_tag, 2);
}

/// A caller refusing the timer the node added to a callee's re-INVITE (422 with
/// Min-SE 3600, RFC 4028) gets the same offer again naming 3600 (and the Min-SE);
/// the callee, which asked nothing of timers, hears only the 200 that follows. The
/// 422 was passed to the callee, which could not act on it: its hold failed.
#[test]
fn a_caller_s_422_to_the_node_s_timer_is_followed_not_passed_to_the_callee() {
    let (ports, _node, callee, caller) = raw_parties();
    let call_id = "timer-422";
    let (_, node_tag, forwarded) = call_with_the_caller_s_timer(&caller, &callee, call_id, "");
    let reinvite = callee_holds(ports, &callee, &forwarded);
    let relayed = reinvite_at(&caller);
    assert_eq!(
        header(&relayed, "Session-Expires"),
        Some("1800;refresher=uas"),
        "{relayed}"
    );
    caller.send(&too_small(&relayed, 3600));
    let again = reinvite_at(&caller);
    assert_eq!(
        header(&again, "Session-Expires"),
        Some("3600;refresher=uas"),
        "{again}"
    );
    assert_eq!(header(&again, "Min-SE"), Some("3600"), "{again}");
    assert!(
        again.contains("a=sendonly"),
        "the same offer (hold): {again}"
    );
    assert_ne!(cseq_of(&again), cseq_of(&relayed), "a new request: {again}");
    caller.send(&caller_ok(
        &caller,
        &again,
        "Session-Expires: 3600;refresher=uas\n",
    ));
    let answered = final_at(&callee);
    assert!(answered.starts_with("SIP/2.0 200"), "{answered}");
    callee.send(&crate::dialogs::on_branch(&reinvite, "ACK", None));
    nodes_ack(&caller);
    // A Min-SE the node does not follow (over two hours): the callee, which named no
    // timer, gets 500, not a 422 it cannot act on (RFC 4028 6).
    let resume = sdp(4002).replace(" 2 2 IN", " 2 4 IN");
    let reinvite = callee_reinvite(ports, &forwarded, 3, &resume);
    callee.send(&reinvite);
    let relayed = reinvite_at(&caller);
    caller.send(&too_small(&relayed, 7201));
    nodes_ack(&caller); // of the 422
    let refused = final_at(&callee);
    assert!(refused.starts_with("SIP/2.0 500"), "{refused}");
    callee.send(&crate::dialogs::on_branch(&reinvite, "ACK", None));
    hang_up(&caller, &callee, call_id, &node_tag, 2);
}

/// A callee refusing the caller's session interval (422, Min-SE 3600) has the caller
/// answered 422 with that Min-SE, so it can ask again with it (RFC 4028 7.3; the node
/// passes the caller's interval on, and may not answer with a longer one, 9): the
/// caller got 502 and the call was lost (a live torture run). Its INVITE asking 3600
/// (same Call-ID, next CSeq) is forwarded and answered. A 422 to a caller that asked
/// no interval is the node's 502.
#[test]
fn a_callee_s_422_to_the_call_reaches_the_caller_with_its_min_se() {
    let (_ports, _node, callee, caller) = raw_parties();
    let call_id = "initial-422";
    let invite = invite_with(&caller, call_id, CALLER_SDP).replace(
        "Max-Forwards: 70\n",
        "Max-Forwards: 70\nSession-Expires: 1800\nSupported: timer\n",
    );
    caller.send(&invite);
    let forwarded = callee.expect("INVITE ");
    let too_small = "422 Session Interval Too Small";
    callee.respond_with("calleetag", &forwarded, too_small, "Min-SE: 3600\n", "");
    callee.expect("ACK ");
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 422"), "{refused}");
    assert_eq!(header(&refused, "Min-SE"), Some("3600"), "{refused}");
    caller.send(&ack_of_failure(&invite));
    let again = invite
        .replace("Session-Expires: 1800", "Session-Expires: 3600")
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace(";branch=z9hG4bKinv", ";branch=z9hG4bKagain");
    caller.send(&again);
    let forwarded = callee.expect("INVITE ");
    assert_eq!(
        header(&forwarded, "Session-Expires"),
        Some("3600"),
        "{forwarded}"
    );
    callee.respond_with(
        "calleetag2",
        &forwarded,
        "200 OK",
        "Session-Expires: 3600;refresher=uac\n",
        &sdp(4002),
    );
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let node_tag = crate::dialogs::tag(header(&ok, "To").unwrap());
    caller.ack_cseq(call_id, &node_tag, 2);
    callee.expect("ACK ");
    hang_up(&caller, &callee, call_id, &node_tag, 3);
    // Without an interval of the caller's, the callee's 422 is the node's failure.
    let call_id = "initial-422-unasked";
    let invite = invite_with(&caller, call_id, CALLER_SDP);
    caller.send(&invite);
    let forwarded = callee.expect("INVITE ");
    callee.respond_with("calleetag", &forwarded, too_small, "Min-SE: 3600\n", "");
    callee.expect("ACK ");
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 502"), "{refused}");
    assert_eq!(header(&refused, "Min-SE"), None, "{refused}");
    caller.send(&ack_of_failure(&invite));
}

/// The caller hangs up while its hold waits for the callee (a 100 only): the callee
/// gets the BYE, and its 200 to the hold, coming after it, is still acknowledged
/// (RFC 3261 13.2.2.4: every 2xx to an INVITE is), before the callee answers the BYE.
#[test]
fn a_re_invite_s_2xx_after_the_node_s_bye_is_acknowledged() {
    let (_ports, _node, callee, caller) = raw_parties();
    let call_id = "2xx-after-bye";
    let (_, node_tag, _) = call_with_the_caller_s_timer(&caller, &callee, call_id, "");
    let hold =
        crate::dialogs::caller_offer(&caller, "INVITE", call_id, &node_tag, 2, "", &caller_hold());
    caller.send(&hold);
    let relayed = callee.expect("INVITE ");
    callee.respond_with("calleetag", &relayed, "100 Trying", "", "");
    caller.send(&caller.bye(call_id, &node_tag, 3));
    let bye = callee.expect("BYE ");
    let held = sdp(4002).replace(" 2 2 IN", " 2 3 IN") + "a=recvonly\r\n";
    callee.respond_with("calleetag", &relayed, "200 OK", "", &held);
    let ack = callee.expect("ACK ");
    assert_eq!(
        cseq_of(&ack),
        format!("{} ACK", cseq_of(&relayed).split(' ').next().unwrap()),
        "{ack}"
    );
    callee.ok(&bye);
}

/// The callee hangs up while the node's own refresh of the caller waits (a 100 only):
/// the caller gets the BYE, and its 200 to the refresh, coming after it, is still
/// acknowledged.
#[test]
fn a_refresh_s_2xx_after_the_node_s_bye_is_acknowledged() {
    let ShortSession {
        _node,
        ports,
        callee,
        caller,
        forwarded,
        ..
    } = short_session_call(
        "refresh-2xx-after-bye",
        "Session-Expires: 4;refresher=uas\n",
        "",
        "4;refresher=uas",
    );
    let refresh = reinvite_at(&caller);
    caller.send(&ok_to(&refresh).replace("SIP/2.0 200 OK", "SIP/2.0 100 Trying"));
    callee.send(&callee_request(ports, &forwarded, "calleetag", "BYE", 2));
    let bye = std::iter::from_fn(|| caller.recv(Duration::from_secs(5)))
        .find(|m| m.starts_with("BYE "))
        .expect("the caller's BYE");
    caller.send(&caller_ok(
        &caller,
        &refresh,
        "Session-Expires: 4;refresher=uac\n",
    ));
    let ack = nodes_ack(&caller);
    let number = cseq_of(&refresh)
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(cseq_of(&ack), format!("{number} ACK"), "{ack}");
    caller.send(&ok_to(&bye));
}

/// A callee's busy answer with a Retry-After reaches the caller with its seconds
/// alone (not the comment or parameters the callee wrote), so the caller's carrier can
/// hold its retries off; an answer without one gets none.
#[test]
fn a_callee_s_retry_after_reaches_the_caller() {
    let (_ports, _node, callee, caller) = raw_parties();
    for (call_id, said, passed) in [
        (
            "retry-after-1",
            "Retry-After: 120 (in a meeting);duration=60\n",
            Some("120"),
        ),
        ("retry-after-2", "", None),
    ] {
        let invite = invite_with(&caller, call_id, CALLER_SDP);
        caller.send(&invite);
        let forwarded = callee.expect("INVITE ");
        callee.respond_with("calleetag", &forwarded, "486 Busy Here", said, "");
        let busy = caller.final_response();
        assert!(busy.starts_with("SIP/2.0 486"), "{busy}");
        assert_eq!(header(&busy, "Retry-After"), passed, "{busy}");
        caller.send(&ack_of_failure(&invite));
        callee.expect("ACK ");
    }
}

/// A callee's refusal of a relayed request reaches its sender with what it needs to act
/// on it: a 405 to an UPDATE with the callee's Allow (so the caller can refresh by
/// re-INVITE instead), a 422 to a re-INVITE with the callee's Min-SE (so it can ask
/// again with a longer interval). They came without (a review).
#[test]
fn a_callee_s_refusal_reaches_the_caller_with_what_it_needs() {
    let (_ports, _node, callee, caller) = raw_parties();
    let call_id = "refusal-headers";
    let (_, node_tag, _) = call_with_the_caller_s_timer(&caller, &callee, call_id, "");
    let refresh = "Supported: timer\nSession-Expires: 1800;refresher=uac\nContent-Length: 0\n\n";
    caller.send(&caller.request("UPDATE", call_id, "callertag", &node_tag, 2, refresh));
    let update = callee.expect("UPDATE ");
    callee.respond_with(
        "calleetag",
        &update,
        "405 Method Not Allowed",
        "Allow: INVITE, ACK, BYE, CANCEL\n",
        "",
    );
    let refused = caller.final_response();
    assert!(refused.starts_with("SIP/2.0 405"), "{refused}");
    assert_eq!(
        header(&refused, "Allow"),
        Some("INVITE, ACK, BYE, CANCEL"),
        "{refused}"
    );
    let hold = caller_hold();
    let reinvite = crate::dialogs::caller_offer(
        &caller,
        "INVITE",
        call_id,
        &node_tag,
        3,
        "Supported: timer\nSession-Expires: 120\n",
        &hold,
    );
    caller.send(&reinvite);
    let relayed = callee.expect("INVITE ");
    callee.respond_with(
        "calleetag",
        &relayed,
        "422 Session Interval Too Small",
        "Min-SE: 600\n",
        "",
    );
    callee.expect("ACK ");
    let too_small = caller.final_response();
    assert!(too_small.starts_with("SIP/2.0 422"), "{too_small}");
    assert_eq!(header(&too_small, "Min-SE"), Some("600"), "{too_small}");
    caller.send(&crate::dialogs::on_branch(&reinvite, "ACK", None));
    hang_up(&caller, &callee, call_id, &node_tag, 4);
}

/// The callee puts the caller on hold and cancels its re-INVITE once the caller has
/// answered 100: the caller answers 487 and keeps its session. The node's own next
/// offer to the caller (its session refresh) is the session before the hold, not the
/// hold nobody took; it offered the hold (a review: the cancelled and timed-out paths
/// did not restore the caller's session as a refusal does).
#[test]
fn a_hold_cancelled_before_the_caller_took_it_is_not_offered_again() {
    let call_id = "cancelled-hold";
    let ShortSession {
        ports,
        _node,
        callee,
        caller,
        node_tag,
        forwarded,
    } = short_session_call(
        call_id,
        "Session-Expires: 4;refresher=uas\n",
        "",
        "4;refresher=uas",
    );

    let hold = callee_holds(ports, &callee, &forwarded);
    let relayed = reinvite_at(&caller);
    assert!(relayed.contains("a=sendonly"), "{relayed}");
    caller.send(&ok_to(&relayed).replace("SIP/2.0 200 OK", "SIP/2.0 100 Trying"));
    callee.send(&crate::dialogs::on_branch(&hold, "CANCEL", None));
    let cancel = std::iter::from_fn(|| caller.recv(Duration::from_secs(5)))
        .find(|m| m.starts_with("CANCEL "))
        .expect("the hold's CANCEL passed on to the caller");
    caller.send(&ok_to(&cancel));
    caller.send(&ok_to(&relayed).replace("SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"));
    nodes_ack(&caller); // of the 487
    let finals = [final_at(&callee), final_at(&callee)];
    assert!(
        finals
            .iter()
            .any(|m| m.starts_with("SIP/2.0 487") && cseq_of(m).ends_with("INVITE")),
        "{finals:?}"
    );
    callee.send(&crate::dialogs::on_branch(&hold, "ACK", None));

    let refresh = reinvite_at(&caller);
    assert_ne!(cseq_of(&refresh), cseq_of(&relayed), "{refresh}");
    assert!(
        refresh.contains("m=audio") && !refresh.contains("a=sendonly"),
        "the session before the hold: {refresh}"
    );
    caller.send(&caller_ok(
        &caller,
        &refresh,
        "Session-Expires: 4;refresher=uac\n",
    ));
    nodes_ack(&caller);
    hang_up(&caller, &callee, call_id, &node_tag, 2);
}

/// A request of the callee's in the dialog of `invite` (the node's INVITE it answered
/// with To tag `tag`): `method`, CSeq `cseq`, no body.
fn callee_request(ports: Ports, invite: &str, tag: &str, method: &str, cseq: u32) -> String {
    format!(
        "{method} sip:node@127.0.0.1:{node} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{uas};branch=z9hG4bK-{tag}{cseq}\nFrom: {to};tag={tag}\nTo: {from}\nCall-ID: {cid}\nCSeq: {cseq} {method}\nMax-Forwards: 70\nContent-Length: 0\n\n",
        node = ports.sip,
        uas = ports.uas,
        to = header(invite, "To").unwrap(),
        from = header(invite, "From").unwrap(),
        cid = header(invite, "Call-ID").unwrap().trim(),
    )
}

/// The first destination's callee sends a request in its early dialog (CSeq 102) and
/// is left at its ring time; the second answers, and its BYE (CSeq 2, its own
/// dialog's count) hangs the call up. The callee's side kept one CSeq count across
/// attempts: that BYE was refused 500 as out of order and the caller was left
/// connected to silence (a review).
#[test]
fn each_callee_s_dialog_has_its_own_cseq_count() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let dest = r#"[{"number": "0311112222", "ring_seconds": 1}, {"number": "0311113333", "ring_seconds": 20}]"#;
    let (key, _) = node.provision("0501234567", dest, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    let call_id = "cseq-per-dialog";
    caller.send(&invite_with(&caller, call_id, CALLER_SDP));
    let first = callee.expect("INVITE ");
    callee.respond_as("first", &first, "180 Ringing", "");
    callee.send(&callee_request(ports, &first, "first", "INFO", 102));
    let info_ok = callee.expect("SIP/2.0 ");
    assert!(cseq_of(&info_ok).starts_with("102 INFO"), "{info_ok}");
    let cancel = callee.expect("CANCEL ");
    callee.ok(&cancel);
    callee.respond_as("first", &first, "487 Request Terminated", "");
    callee.expect("ACK ");
    let second = loop {
        let m = callee.expect("INVITE ");
        if header(&m, "Call-ID") != header(&first, "Call-ID") {
            break m;
        }
    };
    callee.respond_as("second", &second, "200 OK", &sdp(4002));
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    caller.ack(call_id, &ok);
    callee.expect("ACK ");
    callee.send(&callee_request(ports, &second, "second", "BYE", 2));
    let bye_ok = callee.expect("SIP/2.0 ");
    assert!(bye_ok.starts_with("SIP/2.0 200"), "{bye_ok}");
    let bye = std::iter::from_fn(|| caller.recv(Duration::from_secs(5)))
        .find(|m| m.starts_with("BYE "))
        .expect("the callee's hang-up passed on to the caller");
    caller.send(&ok_to(&bye));
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["result"], "answered", "{}", calls[0]);
}

/// The caller hangs up and the callee hears the judgement prompt: a re-INVITE of the
/// callee's (a hold) is refused 488 and an UPDATE without an offer (a session refresh)
/// answered 200, both by the node, and nothing reaches the caller, whose dialog ended
/// with its BYE (RFC 3261 15). They were relayed into that dialog, whose 481 had the
/// callee hang up and lost the judgement (a review).
#[test]
fn a_callee_judging_the_call_has_its_re_offers_answered_by_the_node() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    node.set_number(
        &key,
        "0501234567",
        r#"{"judgement": {"prompt": "judgement", "seconds": 5}}"#,
    );
    let call_id = "judging-reoffers";
    caller.send(&invite_with(&caller, call_id, CALLER_SDP));
    let forwarded = callee.expect("INVITE ");
    callee.respond_with("calleetag", &forwarded, "200 OK", "", &sdp(4002));
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let node_tag = caller.ack(call_id, &ok);
    callee.expect("ACK ");
    caller.send(&caller.bye(call_id, &node_tag, 2));
    assert!(caller.final_response().starts_with("SIP/2.0 200"));

    let hold = callee_holds(ports, &callee, &forwarded);
    let refused = final_at(&callee);
    assert!(refused.starts_with("SIP/2.0 488"), "{refused}");
    callee.send(&crate::dialogs::on_branch(&hold, "ACK", None));
    callee.send(&callee_request(ports, &forwarded, "calleetag", "UPDATE", 3));
    let refreshed = final_at(&callee);
    assert!(refreshed.starts_with("SIP/2.0 200"), "{refreshed}");
    assert!(header(&refreshed, "Contact").is_some(), "{refreshed}");
    assert!(
        caller.recv(Duration::from_millis(300)).is_none(),
        "something reached the caller after its BYE"
    );
    callee.send(&callee_request(ports, &forwarded, "calleetag", "BYE", 4));
    assert!(final_at(&callee).starts_with("SIP/2.0 200"));
    node.wait_until(Duration::from_secs(5), "the judgement ended", || {
        node.metric("tsunagu_judgements_total{outcome=\"hung_up\"}") == 1.0
    });
}

/// The callee's 200 to the caller's hold comes again after the caller hung up (the
/// node's ACK was lost, the node's BYE is out): acknowledged again with its own CSeq,
/// and the node sends no second BYE. It was taken for a first answer: acknowledged
/// with the first INVITE's CSeq and followed by a new BYE (a review).
#[test]
fn a_re_invite_s_200_again_while_the_call_ends_is_acknowledged_as_itself() {
    let (_ports, _node, callee, caller) = raw_parties();
    let call_id = "reack-while-ending";
    caller.send(&invite_with(&caller, call_id, CALLER_SDP));
    let forwarded = callee.expect("INVITE ");
    callee.respond_with("calleetag", &forwarded, "200 OK", "", &sdp(4002));
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let node_tag = caller.ack(call_id, &ok);
    callee.expect("ACK ");
    let hold = caller_hold();
    caller.send(&crate::dialogs::caller_offer(
        &caller, "INVITE", call_id, &node_tag, 2, "", &hold,
    ));
    let relayed = callee.expect("INVITE ");
    let held = sdp(4002).replace(" 2 2 IN", " 2 3 IN") + "a=recvonly\r\n";
    callee.respond_with("calleetag", &relayed, "200 OK", "", &held);
    let first_ack = callee.expect("ACK ");
    assert_eq!(
        cseq_of(&first_ack),
        cseq_of(&relayed).replace("INVITE", "ACK")
    );
    let held_ok = caller.final_response();
    assert!(held_ok.starts_with("SIP/2.0 200"), "{held_ok}");
    caller.ack_cseq(call_id, &node_tag, 2);
    caller.send(&caller.bye(call_id, &node_tag, 3));
    let bye = callee.expect("BYE ");
    // The re-INVITE's 200 again, as if the node's ACK was lost.
    callee.respond_with("calleetag", &relayed, "200 OK", "", &held);
    let again = callee.expect("ACK ");
    assert_eq!(cseq_of(&again), cseq_of(&first_ack), "{again}");
    let seen = callee.quiet_for(Duration::from_millis(700));
    for m in seen.iter().filter(|m| m.starts_with("BYE ")) {
        assert_eq!(cseq_of(m), cseq_of(&bye), "a second BYE: {m}");
    }
    callee.ok(&bye);
}

/// A callee whose Allow leaves UPDATE out gets the caller's UPDATEs as re-INVITEs: a
/// session refresh without an offer as a re-INVITE of the session the callee has (the
/// caller's 200 without SDP, its timer renewed), a hold as a re-INVITE with the hold
/// (the caller's 200 with the answer). Relayed as UPDATE they came back 405, and a
/// caller refreshing by UPDATE was hung up when its session ran out (a review).
#[test]
fn updates_reach_a_callee_without_update_as_re_invites() {
    let (_ports, _node, callee, caller) = raw_parties();
    let call_id = "update-as-reinvite";
    let allow = "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\n";
    let (_, node_tag, _) = call_with_the_caller_s_timer(&caller, &callee, call_id, allow);
    let refresh = "Supported: timer\nSession-Expires: 1800;refresher=uac\nContent-Length: 0\n\n";
    caller.send(&caller.request("UPDATE", call_id, "callertag", &node_tag, 2, refresh));
    let reinvite = callee.expect("INVITE ");
    assert!(
        reinvite.contains("m=audio"),
        "the session the callee has: {reinvite}"
    );
    assert!(!reinvite.contains("sendonly"), "{reinvite}");
    callee.respond_with("calleetag", &reinvite, "200 OK", allow, &sdp(4002));
    let ack = callee.expect("ACK ");
    assert_eq!(
        cseq_of(&ack),
        cseq_of(&reinvite).replace("INVITE", "ACK"),
        "{ack}"
    );
    let refreshed = caller.final_response();
    assert!(refreshed.starts_with("SIP/2.0 200"), "{refreshed}");
    assert_eq!(cseq_of(&refreshed), "2 UPDATE", "{refreshed}");
    assert!(
        !refreshed.contains("m=audio"),
        "no SDP to an UPDATE without an offer: {refreshed}"
    );
    assert!(
        header(&refreshed, "Session-Expires").is_some(),
        "{refreshed}"
    );

    let hold = caller_hold();
    caller.send(&crate::dialogs::caller_offer(
        &caller, "UPDATE", call_id, &node_tag, 3, "", &hold,
    ));
    let held = callee.expect("INVITE ");
    assert!(held.contains("a=sendonly"), "the hold: {held}");
    let answer = sdp(4002).replace(" 2 2 IN", " 2 3 IN") + "a=recvonly\r\n";
    callee.respond_with("calleetag", &held, "200 OK", allow, &answer);
    callee.expect("ACK ");
    let held_ok = caller.final_response();
    assert!(held_ok.starts_with("SIP/2.0 200"), "{held_ok}");
    assert_eq!(cseq_of(&held_ok), "3 UPDATE", "{held_ok}");
    assert!(
        held_ok.contains("a=recvonly"),
        "the callee's answer: {held_ok}"
    );
    hang_up(&caller, &callee, call_id, &node_tag, 4);
}

/// The caller cancels while the callee rings, and the callee takes the CANCEL (200)
/// but sends no 487: the call is logged `cancelled` at once, and the callee's later
/// 200 is acknowledged and hung up by the abandoned-attempt handler. The call kept
/// the leg, waited for the 487 until its end guard (32 s: past this test's 20 s wait
/// for the record) and then forgot it: a 200 after that reached nobody (a review).
#[test]
fn a_cancelled_call_leaves_its_ringing_callee_to_the_late_answer_handler() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let callee = Callee::bind(ports);
    let caller = Party::bind("127.0.0.1", ports.sip);
    let invite = invite_with(&caller, "cancel-no-487", CALLER_SDP);
    caller.send(&invite);
    let forwarded = callee.expect("INVITE ");
    callee.respond_with("calleetag", &forwarded, "180 Ringing", "", "");
    // The call has the callee's 180 once the caller has its own.
    std::iter::from_fn(|| caller.recv(Duration::from_secs(5)))
        .find(|m| m.starts_with("SIP/2.0 180"))
        .expect("the callee's ringing passed on");
    caller.send(&crate::dialogs::on_branch(&invite, "CANCEL", None));
    let cancel = callee.expect("CANCEL ");
    callee.ok(&cancel);
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["result"], "cancelled", "{}", calls[0]);
    callee.respond_with("calleetag", &forwarded, "200 OK", "", &sdp(4002));
    callee.expect("ACK ");
    let bye = callee.expect("BYE ");
    callee.ok(&bye);
}
