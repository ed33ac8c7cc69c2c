//! A call's dialogs cannot be hijacked: requests that name a call's Call-ID but not its
//! tags (or come from nowhere a trunk allows) are refused 481 and change nothing, and
//! what a caller writes in its From reaches the forwarded leg only escaped.

use crate::harness::*;
use std::net::UdpSocket;
use std::time::Duration;

const DEST: &str = r#"[{"number": "0311112222", "ring_seconds": 20}]"#;

/// `text` with every line ending CRLF, whether written with `\n` or `\r\n` (a body
/// written with CRLF keeps its length, so its Content-Length stays true).
pub(crate) fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// Whether a datagram starts as a SIP message: a status line, or a request line's
/// method (upper-case letters) and a space.
fn looks_like_sip(datagram: &[u8]) -> bool {
    let method = datagram
        .iter()
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    datagram.starts_with(b"SIP/2.0 ") || (method > 0 && datagram.get(method) == Some(&b' '))
}

/// A raw SIP party on a UDP socket: sends requests, reads responses.
pub(crate) struct Party {
    pub(crate) sock: UdpSocket,
    node: String,
}

impl Party {
    pub(crate) fn bind(ip: &str, node_port: u16) -> Party {
        let sock = UdpSocket::bind((ip, 0)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Party {
            sock,
            node: format!("127.0.0.1:{node_port}"),
        }
    }

    pub(crate) fn me(&self) -> String {
        self.sock.local_addr().unwrap().to_string()
    }

    pub(crate) fn send(&self, text: &str) {
        self.sock
            .send_to(crlf(text).as_bytes(), &self.node)
            .unwrap();
    }

    /// The next SIP message received within `limit`, if any. Datagrams that are not
    /// SIP are skipped, as a UA does: the party's port is an ephemeral one, which can
    /// lie in another test's RTP range, where that test's spray or relay reaches it.
    pub(crate) fn recv(&self, limit: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        let mut buf = [0u8; 8192];
        while std::time::Instant::now() < deadline {
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                if !looks_like_sip(&buf[..n]) {
                    eprintln!(
                        "party {}: skipped {n} bytes of not SIP from {from}",
                        self.me()
                    );
                    continue;
                }
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    }

    /// Waits for a final response (skipping provisionals); the message.
    pub(crate) fn final_response(&self) -> String {
        loop {
            let m = self.recv(Duration::from_secs(5)).expect("a response");
            let line = m.lines().next().unwrap_or_default().to_string();
            if !line.starts_with("SIP/2.0 1") {
                return m;
            }
        }
    }

    /// Waits for the 200 to this party's INVITE of `call_id`, ACKs it, and returns the
    /// node's To tag.
    pub(crate) fn ack_answer(&self, call_id: &str) -> String {
        let ok = self.final_response();
        assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
        self.ack(call_id, &ok)
    }

    /// ACKs `ok`, the node's 200 to this party's INVITE of `call_id`; the node's To tag.
    pub(crate) fn ack(&self, call_id: &str, ok: &str) -> String {
        let our_tag = tag(header(ok, "To").unwrap());
        self.ack_cseq(call_id, &our_tag, 1);
        our_tag
    }

    /// The ACK (no body) of the node's 200 to our INVITE or re-INVITE of CSeq `cseq`,
    /// in the dialog with the node's tag `node_tag`.
    pub(crate) fn ack_cseq(&self, call_id: &str, node_tag: &str, cseq: u32) {
        self.send(&self.request(
            "ACK",
            call_id,
            "callertag",
            node_tag,
            cseq,
            "Content-Length: 0\n\n",
        ));
    }

    /// A new INVITE with SDP from caller `from_user` (From tag `callertag`), naming
    /// `contact` (`ip:port`) as its Contact.
    pub(crate) fn invite(&self, call_id: &str, from_user: &str, contact: &str) -> String {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        format!(
            "INVITE sip:0501234567@{node} SIP/2.0\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bKinv{call_id}\n\
             From: <sip:{from_user}@127.0.0.1>;tag=callertag\n\
             To: <sip:0501234567@127.0.0.1>\n\
             Call-ID: {call_id}\n\
             CSeq: 1 INVITE\n\
             Contact: <sip:caller@{contact}>\n\
             Max-Forwards: 70\n\
             Content-Type: application/sdp\n\
             Content-Length: {len}\n\n{sdp}",
            node = self.node,
            me = self.me(),
            len = sdp.len(),
        )
    }

    /// The caller's BYE (From tag `callertag`) in its call `call_id`, with the
    /// node's To tag and CSeq `cseq`; not sent.
    pub(crate) fn bye(&self, call_id: &str, our_tag: &str, cseq: u32) -> String {
        self.request(
            "BYE",
            call_id,
            "callertag",
            our_tag,
            cseq,
            "Content-Length: 0\n\n",
        )
    }

    /// An in-dialog request with the given tags.
    pub(crate) fn request(
        &self,
        method: &str,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        cseq: u32,
        extra: &str,
    ) -> String {
        format!(
            "{method} sip:tsunagu@{node} SIP/2.0\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK{method}{cseq}{from_tag}{to_tag}\n\
             From: <sip:09012345678@127.0.0.1>;tag={from_tag}\n\
             To: <sip:0501234567@127.0.0.1>;tag={to_tag}\n\
             Call-ID: {call_id}\n\
             CSeq: {cseq} {method}\n\
             Max-Forwards: 70\n\
             {extra}",
            node = self.node,
            me = self.me()
        )
    }
}

pub(crate) fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `request` (as written for [`Party::send`]) as another method on its own branch
/// (`ACK` of a failure, `CANCEL`: RFC 3261 17.1.1.3, 9.1): the request line's method
/// and CSeq's replaced, the body and its headers gone, and `to_tag` added to a To
/// without one.
pub(crate) fn on_branch(request: &str, method: &str, to_tag: Option<&str>) -> String {
    let head = request.split("\n\n").next().unwrap_or_default();
    let mut lines: Vec<String> = Vec::new();
    for (i, line) in head.lines().enumerate() {
        let name = line.split(':').next().unwrap_or_default();
        if name.eq_ignore_ascii_case("Content-Type") || name.eq_ignore_ascii_case("Content-Length")
        {
            continue;
        }
        let line = if i == 0 {
            format!(
                "{method} {}",
                line.split_once(' ').map_or("", |(_, rest)| rest)
            )
        } else if name.eq_ignore_ascii_case("CSeq") {
            let number = line[5..].split_whitespace().next().unwrap_or_default();
            format!("CSeq: {number} {method}")
        } else if name.eq_ignore_ascii_case("To") && !line.contains(";tag=") {
            to_tag.map_or(line.to_string(), |t| format!("{line};tag={t}"))
        } else {
            line.to_string()
        };
        lines.push(line);
    }
    format!("{}\nContent-Length: 0\n\n", lines.join("\n"))
}

pub(crate) fn tag(value: &str) -> String {
    value
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag="))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn spoofed_in_dialog_requests_get_481_and_a_hostile_from_is_escaped() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);

    let caller = Party::bind("127.0.0.1", ports.sip);
    let call_id = "dialog-hijack-1";
    caller.send(&caller.invite(call_id, "0901234\"56\"78,x", &caller.me()));
    let our_tag = caller.ack_answer(call_id);

    // The forwarded leg's From carries the caller's number escaped, not raw.
    node.wait_until(Duration::from_secs(5), "the forwarded INVITE", || {
        uas.messages().contains("INVITE sip:0311112222")
    });
    let forwarded = uas.messages();
    let from = forwarded
        .lines()
        .find(|l| l.starts_with("From:"))
        .unwrap()
        .to_string();
    assert!(from.contains("<sip:0901234%2256%2278%2Cx@"), "{from}");

    // An attacker at a trunk's address who knows the Call-ID but not the tags.
    let attacker = Party::bind("127.0.0.1", ports.sip);
    let attempts = [
        ("BYE", "callertag", "guessed", "Content-Length: 0\n\n".to_string()),
        ("BYE", "guessed", our_tag.as_str(), "Content-Length: 0\n\n".to_string()),
        (
            "INFO",
            "guessed",
            "guessed",
            "Content-Type: application/dtmf-relay\nContent-Length: 24\n\nSignal=1\r\nDuration=160\r\n"
                .to_string(),
        ),
    ];
    for (i, (method, from_tag, to_tag, extra)) in attempts.iter().enumerate() {
        attacker.send(&attacker.request(method, call_id, from_tag, to_tag, 10 + i as u32, extra));
        let answer = attacker.final_response();
        assert!(
            answer.starts_with("SIP/2.0 481"),
            "{method} with tags {from_tag}/{to_tag}: {answer}"
        );
    }
    // A flood of them: each answered 481 and counted, the log told once a second
    // (one line per message let a peer fill the log queue and drop everyone's lines).
    for i in 0..40 {
        attacker.send(&attacker.request(
            "BYE",
            call_id,
            "guessed",
            "guessed",
            20 + i,
            "Content-Length: 0\n\n",
        ));
        assert!(attacker.final_response().starts_with("SIP/2.0 481"));
    }
    assert_eq!(
        node.metric("tsunagu_sip_foreign_dialog_requests_total"),
        43.0
    );
    let logged = || node.log().matches("do not match the call's dialog").count();
    node.wait_until(Duration::from_secs(5), "the refusals logged", || {
        logged() > 0
    });
    assert!(logged() <= 5, "{} lines for 43 refusals", logged());
    // The call goes on (whether an attacker's BYE reached the callee is checked at
    // the end: the callee gets exactly one BYE, the caller's).
    assert_eq!(node.metric("tsunagu_active_calls"), 1.0);

    // The caller hangs up for real: the call ends, answered, with the escaped number.
    caller.send(&caller.bye(call_id, &our_tag, 2));
    let bye_ok = caller.final_response();
    assert!(bye_ok.starts_with("SIP/2.0 200"), "{bye_ok}");
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["result"], "answered");
    assert_eq!(calls[0]["caller_number"], "0901234%2256%2278%2Cx");
    node.wait_until(Duration::from_secs(5), "the callee's BYE", || {
        uas.messages().contains("BYE sip:")
    });
    assert_eq!(
        uas.messages().matches("BYE sip:").count(),
        1,
        "the callee got one BYE: the caller's, none of the attacker's"
    );
}

/// The answer to `req` (a raw SIP request): its Via, From, To (with `to_tag` added),
/// Call-ID and CSeq, then `extra` (more headers, the blank line and any body).
pub(crate) fn answer(req: &str, status: &str, to_tag: &str, extra: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\n");
    for line in req.lines() {
        let name = line.split(':').next().unwrap_or_default().trim();
        if ["via", "from", "call-id", "cseq"].contains(&name.to_ascii_lowercase().as_str()) {
            out.push_str(line);
            out.push('\n');
        } else if name.eq_ignore_ascii_case("to") {
            out.push_str(&format!("{line};tag={to_tag}\n"));
        }
    }
    out.push_str(extra);
    out
}

/// A 200 to a request of an established dialog (its To has the tag already).
pub(crate) fn ok_to(req: &str) -> String {
    let mut out = "SIP/2.0 200 OK\n".to_string();
    for line in req.lines() {
        let name = line.split(':').next().unwrap_or_default().trim();
        if ["via", "from", "to", "call-id", "cseq"].contains(&name.to_ascii_lowercase().as_str()) {
            out.push_str(line.trim_end_matches('\r'));
            out.push('\n');
        }
    }
    out.push_str("Content-Length: 0\n\n");
    out
}

/// Issue 10: a caller that names a third party in its Contact cannot point the node's
/// in-dialog requests at it. When the callee hangs up, the node's BYE to the caller goes
/// back where the caller's INVITE came from (127.0.0.1, the trunk), not to the Contact
/// (127.0.0.9, in no trunk's networks), which receives nothing.
#[test]
fn a_caller_cannot_point_the_nodes_bye_at_a_third_party() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    node.provision("0501234567", DEST, "{}");
    let third = UdpSocket::bind("127.0.0.9:0").expect("bind the third party");
    third.set_nonblocking(true).unwrap();
    let victim = third.local_addr().unwrap();
    let callee = UdpSocket::bind(("127.0.0.1", ports.uas)).expect("bind the callee");
    callee
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let callee_recv = |what: &str, wanted: &dyn Fn(&str) -> bool| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 8192];
        while std::time::Instant::now() < deadline {
            if let Ok((n, _)) = callee.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if wanted(&m) {
                    return m;
                }
            }
        }
        panic!("the callee never got {what}");
    };
    let node_sip = format!("127.0.0.1:{}", ports.sip);
    let callee_send = |text: &str| {
        callee.send_to(crlf(text).as_bytes(), &node_sip).unwrap();
    };

    let caller = Party::bind("127.0.0.1", ports.sip);
    let call_id = "contact-points-elsewhere";
    caller.send(&caller.invite(call_id, "09012345678", &victim.to_string()));
    // The callee answers the forwarded INVITE and gets the node's ACK.
    let invite = callee_recv("the forwarded INVITE", &|m| m.starts_with("INVITE "));
    let callee_sdp = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4002 RTP/AVP 0\r\n";
    callee_send(&answer(
        &invite,
        "200 OK",
        "calleetag",
        &format!(
            "Contact: <sip:callee@127.0.0.1:{uas}>\nContent-Type: application/sdp\nContent-Length: {len}\n\n{callee_sdp}",
            uas = ports.uas,
            len = callee_sdp.len()
        ),
    ));
    caller.ack_answer(call_id);
    callee_recv("the node's ACK", &|m| m.starts_with("ACK "));

    // The callee hangs up: the node answers it and sends its BYE to the caller.
    let leg_call_id = header(&invite, "Call-ID").unwrap().to_string();
    let node_tag = tag(header(&invite, "From").unwrap());
    callee_send(&format!(
        "BYE sip:tsunagu@{node_sip} SIP/2.0\n\
         Via: SIP/2.0/UDP 127.0.0.1:{uas};branch=z9hG4bKcalleebye\n\
         From: <sip:0311112222@127.0.0.1>;tag=calleetag\n\
         To: <sip:tsunagu@127.0.0.1>;tag={node_tag}\n\
         Call-ID: {leg_call_id}\n\
         CSeq: 2 BYE\n\
         Max-Forwards: 70\n\
         Content-Length: 0\n\n",
        uas = ports.uas
    ));
    let bye = loop {
        let m = caller
            .recv(Duration::from_secs(5))
            .expect("the node's BYE to the caller");
        if m.starts_with("BYE ") {
            break m;
        }
    };
    assert!(bye.contains(call_id), "{bye}");
    let mut buf = [0u8; 4096];
    assert!(
        third.recv_from(&mut buf).is_err(),
        "the third party named in the Contact got: {}",
        String::from_utf8_lossy(&buf)
    );
}

/// The caller re-INVITEs and, before the callee (which never answers it) does, hangs
/// up: its re-INVITE, answered 100 at once, is answered 487 and its BYE 200 (RFC 3261
/// 15.1.2). The re-INVITE was left unanswered, its transaction kept for minutes, and
/// had no 100 (a live torture run).
#[test]
fn a_bye_answers_the_re_invite_it_overtakes_487() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let call_id = "bye-over-reinvite-1";
    let (caller, our_tag, _uas, _) = reinvite_a_silent_callee(&node, ports, call_id);
    caller.send(&caller.bye(call_id, &our_tag, 3));
    let (mut finals, mut provisionals) = (Vec::new(), Vec::new());
    while finals.len() < 2 {
        let m = caller
            .recv(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no more answers after {finals:?}"));
        let status = m.lines().next().unwrap_or_default().to_string();
        let cseq = header(&m, "CSeq").unwrap_or_default().to_string();
        if !status.starts_with("SIP/2.0") {
            continue;
        }
        if status.starts_with("SIP/2.0 1") {
            provisionals.push((cseq, status));
        } else {
            finals.push((cseq, status));
        }
    }
    // The relayed re-INVITE had its 100 at once (the callee may take its time).
    assert_eq!(
        provisionals,
        vec![("2 INVITE".to_string(), "SIP/2.0 100 Trying".to_string())]
    );
    finals.sort();
    assert_eq!(
        finals,
        vec![
            (
                "2 INVITE".to_string(),
                "SIP/2.0 487 Request Terminated".to_string()
            ),
            ("3 BYE".to_string(), "SIP/2.0 200 OK".to_string()),
        ]
    );
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["result"], "answered", "{}", calls[0]);
}

/// The caller re-INVITEs with an offer and the callee answers 200 without SDP: the
/// callee's 200 is acknowledged, the caller gets 488 (a 2xx to an offer must carry
/// the answer; before, the caller got a 200 without one, and the node acted on the
/// unanswered offer: a live torture run), and the call goes on until the BYE.
#[test]
fn a_re_offer_answered_without_an_answer_is_refused_488() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let ack = r#"<recv request="ACK" crlf="true"/>"#;
    let bare = format!(
        "{ack}\n  <recv request=\"INVITE\"/>\n  <send><![CDATA[\n\n      SIP/2.0 200 OK\n      [last_Via:]\n      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      [last_CSeq:]\n      Contact: <sip:[local_ip]:[local_port];transport=[transport]>\n      Content-Length: 0\n\n    ]]></send>\n  {ack}"
    );
    let bare_uas = scenario_replacing(
        node.dir.path(),
        "uas_answer.xml",
        ack,
        &bare,
        "uas_bare_reinvite_answer.xml",
    );
    let uas = Uas::start(&bare_uas, ports, node.dir.path(), &[]);

    let caller = Party::bind("127.0.0.1", ports.sip);
    let call_id = "reoffer-bare-answer-1";
    caller.send(&caller.invite(call_id, "09012345678", &caller.me()));
    let our_tag = caller.ack_answer(call_id);
    let reinvite = send_reinvite(&caller, call_id, &our_tag, "");
    let answer = caller.final_response();
    assert!(answer.starts_with("SIP/2.0 488"), "{answer}");
    // The 488 acknowledged on the re-INVITE's own branch (RFC 3261 17.1.1.3).
    caller.send(&on_branch(&reinvite, "ACK", None));
    node.wait_until(
        Duration::from_secs(5),
        "the callee's 200 acknowledged",
        || uas.messages().matches("ACK sip:").count() >= 2,
    );
    caller.send(&caller.bye(call_id, &our_tag, 3));
    let bye = caller.final_response();
    assert!(bye.starts_with("SIP/2.0 200"), "{bye}");
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["result"], "answered", "{}", calls[0]);
}

/// Keys the caller sends by SIP INFO during the conversation reach the callee as INFOs
/// of the node's (before: answered 200 and dropped; a live torture run), written
/// afresh (nothing else of the caller's body passes), at most ten a second: of twelve
/// sent at once every one is answered 200 and counted, ten are passed on (each one the
/// callee never answered would be retransmitted about eleven times).
#[test]
fn a_key_sent_by_info_reaches_the_other_party() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    node.provision("0501234567", DEST, "{}");
    // -aa: the callee answers INFO 200 wherever it comes in its scenario.
    let uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &["-aa"]);

    let caller = Party::bind("127.0.0.1", ports.sip);
    let call_id = "info-key-1";
    caller.send(&caller.invite(call_id, "09012345678", &caller.me()));
    let our_tag = caller.ack_answer(call_id);
    let body = "Signal=7\r\nDuration=160\r\nX-Secret=caller-only\r\n";
    for cseq in 2..14u32 {
        caller.send(&caller.request(
            "INFO",
            call_id,
            "callertag",
            &our_tag,
            cseq,
            &format!(
                "Content-Type: application/dtmf-relay\nContent-Length: {}\n\n{body}",
                body.len()
            ),
        ));
    }
    for _ in 2..14 {
        let ok = caller.final_response();
        assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    }
    caller.send(&caller.bye(call_id, &our_tag, 14));
    assert!(caller.final_response().starts_with("SIP/2.0 200"));
    // The node's requests on the callee's leg go out in order: its BYE after every
    // INFO it passed on.
    node.wait_until(Duration::from_secs(5), "the BYE at the callee", || {
        uas.messages().contains("BYE sip:")
    });
    let seen = uas.messages();
    assert_eq!(seen.matches("INFO sip:").count(), 10, "{seen}");
    assert_eq!(seen.matches("Signal=7").count(), 10, "{seen}");
    assert!(
        !seen.contains("caller-only"),
        "the caller's body passed: {seen}"
    );
    assert_eq!(
        node.metric("tsunagu_dtmf_digits_total{source=\"info\"}"),
        12.0
    );
}

/// A refresh asking for a session interval below the node's Min-SE is refused 422 with
/// Min-SE, as the first INVITE would be (RFC 4028 9); it was passed on to the callee.
#[test]
fn a_refresh_below_the_minimum_interval_is_refused_422() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    node.provision("0501234567", DEST, "{}");
    let uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let caller = Party::bind("127.0.0.1", ports.sip);
    let call_id = "refresh-too-small-1";
    caller.send(&caller.invite(call_id, "09012345678", &caller.me()));
    let our_tag = caller.ack_answer(call_id);
    caller.send(&caller.request(
        "UPDATE",
        call_id,
        "callertag",
        &our_tag,
        2,
        "Supported: timer\nSession-Expires: 1;refresher=uac\nContent-Length: 0\n\n",
    ));
    let answer = caller.final_response();
    assert!(answer.starts_with("SIP/2.0 422"), "{answer}");
    assert_eq!(header(&answer, "Min-SE"), Some("90"), "{answer}");
    assert!(
        !uas.messages().contains("UPDATE sip:"),
        "passed on to the callee"
    );
    caller.send(&caller.bye(call_id, &our_tag, 3));
    assert!(caller.final_response().starts_with("SIP/2.0 200"));
}

/// The caller CANCELs while the callee rings: the 200 to the CANCEL carries the To tag
/// the INVITE's 180 carried, as the 487 does (RFC 3261 9.2; it carried a new one).
#[test]
fn a_cancel_is_answered_with_the_invites_to_tag() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    node.provision("0501234567", DEST, "{}");
    let _uas = Uas::start("uas_no_answer.xml", ports, node.dir.path(), &[]);
    let caller = Party::bind("127.0.0.1", ports.sip);
    let call_id = "cancel-tag-1";
    let invite = caller.invite(call_id, "09012345678", &caller.me());
    caller.send(&invite);
    let ringing = loop {
        let m = caller.recv(Duration::from_secs(5)).expect("a 180");
        if m.starts_with("SIP/2.0 180") {
            break m;
        }
    };
    let tag180 = tag(header(&ringing, "To").unwrap());
    assert!(!tag180.is_empty(), "{ringing}");
    caller.send(&on_branch(&invite, "CANCEL", None));
    let mut tags = std::collections::BTreeMap::new();
    while tags.len() < 2 {
        let m = caller
            .recv(Duration::from_secs(5))
            .expect("the CANCEL's and INVITE's answers");
        let status = m.lines().next().unwrap_or_default();
        if status.starts_with("SIP/2.0 200") || status.starts_with("SIP/2.0 487") {
            let cseq = header(&m, "CSeq").unwrap_or_default().to_string();
            tags.insert(cseq, tag(header(&m, "To").unwrap()));
        }
    }
    assert_eq!(tags["1 CANCEL"], tag180, "{tags:?}");
    assert_eq!(tags["1 INVITE"], tag180, "{tags:?}");
    // The 487 acknowledged on the INVITE's branch.
    caller.send(&on_branch(&invite, "ACK", Some(&tag180)));
}

/// The callee takes the re-INVITE with 100 Trying and no more; the caller cancels it:
/// the node cancels its own re-INVITE to the callee (same branch, RFC 3261 9.1), which
/// answers 487 and keeps its session as it was, as the caller does. The CANCEL was
/// answered to the caller and not passed on: the callee's re-INVITE went on, and a
/// callee accepting it would have moved where the caller did not (a live torture run).
#[test]
fn a_cancelled_re_invite_is_cancelled_on_the_other_leg() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let call_id = "cancel-reinvite-2";
    // The callee answers only after half a second, when the caller has cancelled: the
    // node's CANCEL waits for that provisional answer (RFC 3261 9.1); one sent before
    // it reaches SIPp as an unexpected message and fails the scenario.
    let then = format!(
        "  <pause milliseconds=\"500\"/>\n{}  <recv request=\"CANCEL\"/>\n{}{}  <recv request=\"ACK\" crlf=\"true\"/>\n",
        sipp_answer("100 Trying", "[last_CSeq:]"),
        sipp_answer("200 OK", "[last_CSeq:]"),
        sipp_answer("487 Request Terminated", "CSeq: [last_cseq_number] INVITE"),
    );
    let (caller, our_tag, uas, reinvite) = reinvite_a_callee(&node, ports, call_id, &then, "");
    caller.send(&on_branch(&reinvite, "CANCEL", None));
    node.wait_until(
        Duration::from_secs(5),
        "the callee's re-INVITE cancelled and its 487 acknowledged",
        || {
            let seen = uas.messages();
            seen.contains("CANCEL sip:") && seen.matches("ACK sip:").count() >= 2
        },
    );
    // The CANCEL came after the callee's 100 Trying, never before it.
    let seen = uas.messages();
    let (trying, cancel) = (seen.find("SIP/2.0 100 Trying"), seen.find("CANCEL sip:"));
    assert!(trying.is_some() && trying < cancel, "{seen}");
    the_cancelled_re_invite_ends_and_the_call_goes_on(
        &node, &key, &caller, call_id, &our_tag, &reinvite,
    );
}

/// The caller puts the callee on hold and cancels its re-INVITE, but the callee's
/// 200 crosses the node's CANCEL: the callee took the hold, the caller (answered 487)
/// did not. The node acknowledges the 200 and offers the callee the session it had
/// before (a re-INVITE without the hold), so both parties agree again (they were left
/// disagreeing until the next offer: a review).
#[test]
fn a_cancelled_re_invite_accepted_all_the_same_is_undone() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let call_id = "cancel-reinvite-3";
    let with_sdp = sipp_ok_with_sdp;
    // The callee's 200 to the re-INVITE "crosses" the CANCEL: it comes after the
    // node's CANCEL (SIPp sends it after the CANCEL's own 200: sent the other way
    // round, the node's ACK reaches SIPp before its second send, which it takes for
    // an unexpected message). Then the node's re-INVITE of the previous session,
    // answered.
    let then = format!(
        "{}  <recv request=\"CANCEL\"/>\n{}{}  <recv request=\"ACK\" crlf=\"true\"/>\n  <recv request=\"INVITE\"/>\n{}  <recv request=\"ACK\" crlf=\"true\"/>\n",
        sipp_answer("100 Trying", "[last_CSeq:]"),
        sipp_answer("200 OK", "[last_CSeq:]"),
        with_sdp("CSeq: [last_cseq_number] INVITE"),
        with_sdp("[last_CSeq:]"),
    );
    // The caller's hold.
    let (caller, our_tag, uas, reinvite) =
        reinvite_a_callee(&node, ports, call_id, &then, "a=sendonly\r\n");
    caller.send(&on_branch(&reinvite, "CANCEL", None));
    node.wait_until(
        Duration::from_secs(5),
        "the previous session offered to the callee, and acknowledged",
        || {
            let seen = uas.messages();
            seen.matches("INVITE sip:").count() >= 3 && seen.matches("ACK sip:").count() >= 3
        },
    );
    let seen = uas.messages();
    let hold = seen
        .find("a=sendonly")
        .expect("the hold reached the callee");
    let restore = seen.rfind("INVITE sip:").unwrap();
    assert!(hold < restore, "{seen}");
    let offered = &seen[restore..];
    let offered = &offered[..offered.find("----").unwrap_or(offered.len())];
    assert!(
        offered.contains("m=audio")
            && !offered.contains("sendonly")
            && !offered.contains("recvonly"),
        "the previous session, not the hold: {offered}"
    );
    the_cancelled_re_invite_ends_and_the_call_goes_on(
        &node, &key, &caller, call_id, &our_tag, &reinvite,
    );
}

/// The callee takes the caller's hold (a re-INVITE) only after the node gave it up
/// (no final answer in 32 s: 408 to the caller, who keeps its session). The callee's
/// late 200 is acknowledged and the callee is offered the previous session again; the
/// node sent no ACK (it had none to repeat), so the callee would have hung up the call
/// 32 s later (RFC 3261 13.3.1.4). Takes about 35 s: Timer B is 64*T1.
#[test]
fn a_re_invite_answered_after_its_timeout_is_acknowledged_and_undone() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let call_id = "late-reinvite-1";
    // Silent past the node's Timer B (its retransmissions of the re-INVITE are taken
    // for what they are), then the 200; then the node's re-INVITE, answered.
    let then = format!(
        "  <pause milliseconds=\"34000\"/>\n{}  <recv request=\"ACK\" crlf=\"true\"/>\n  <recv request=\"INVITE\"/>\n{}  <recv request=\"ACK\" crlf=\"true\"/>\n",
        sipp_ok_with_sdp("[last_CSeq:]"),
        sipp_ok_with_sdp("[last_CSeq:]"),
    );
    let (caller, our_tag, uas, reinvite) =
        reinvite_a_callee(&node, ports, call_id, &then, "a=sendonly\r\n");
    let timed_out = loop {
        let m = caller
            .recv(Duration::from_secs(40))
            .expect("the re-INVITE's final answer");
        if header(&m, "CSeq") == Some("2 INVITE") && !m.starts_with("SIP/2.0 1") {
            break m;
        }
    };
    assert!(timed_out.starts_with("SIP/2.0 408"), "{timed_out}");
    caller.send(&on_branch(&reinvite, "ACK", Some(&our_tag)));
    node.wait_until(
        Duration::from_secs(10),
        "the late 200 acknowledged, the previous session offered and acknowledged",
        || {
            let seen = uas.messages();
            seen.matches("INVITE sip:").count() >= 3 && seen.matches("ACK sip:").count() >= 3
        },
    );
    let seen = uas.messages();
    // In order: the call's INVITE and ACK, the hold, the late 200's ACK (the hold's
    // CSeq), then the restore and its ACK (the next CSeq), and nothing else (the
    // hold's and the late 200's retransmissions counted once, where they first came).
    let mut once = std::collections::HashSet::new();
    let requests: Vec<(&str, String)> = seen
        .split("----")
        .filter_map(|block| {
            let method = ["INVITE", "ACK"]
                .into_iter()
                .find(|m| block.lines().any(|l| l.starts_with(&format!("{m} sip:"))))?;
            let cseq = block
                .lines()
                .find_map(|l| l.strip_prefix("CSeq:"))
                .map(|v| v.trim().split(' ').next().unwrap_or("").to_string())
                .unwrap_or_default();
            Some((method, cseq))
        })
        .filter(|r| once.insert(r.clone()))
        .collect();
    let cseq = |i: usize| requests[i].1.parse::<u32>().unwrap_or(0);
    let methods: Vec<&str> = requests.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        methods,
        ["INVITE", "ACK", "INVITE", "ACK", "INVITE", "ACK"],
        "{requests:?}"
    );
    assert!(
        cseq(0) == cseq(1) && cseq(2) == cseq(3) && cseq(4) == cseq(5),
        "each ACK the CSeq of its INVITE: {requests:?}"
    );
    assert!(
        cseq(0) < cseq(2) && cseq(2) < cseq(4),
        "the hold, then the restore: {requests:?}"
    );
    let restore = seen.rfind("INVITE sip:").unwrap();
    let offered = &seen[restore..];
    let offered = &offered[..offered.find("----").unwrap_or(offered.len())];
    assert!(
        offered.contains("m=audio") && !offered.contains("sendonly"),
        "the previous session, not the hold: {offered}"
    );
    assert_eq!(node.metric("tsunagu_active_calls"), 1.0, "the call goes on");
    caller.send(&caller.bye(call_id, &our_tag, 3));
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["result"], "answered", "{}", calls[0]);
}

/// A line passes to the next queued caller when the far end answers the node's BYE or
/// 2 s after it (`LINES_AFTER_BYE`), whichever comes first: a callee that never
/// answers it held the line for the end guard (32 s) while the next caller waited (a
/// review), and passed at the BYE itself another node's INVITE could overtake it.
#[test]
fn a_line_passes_on_without_waiting_for_the_bye_to_be_answered() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    node.set_number(
        &key,
        "0501234567",
        r#"{"queue": {"max_lines": 1, "max_wait_seconds": 30}}"#,
    );
    // A callee that answers, and answers a BYE only a minute later.
    let deaf = scenario_replacing(
        node.dir.path(),
        "uas_answer.xml",
        "<recv request=\"BYE\"/>",
        "<recv request=\"BYE\"/>\n  <pause milliseconds=\"60000\"/>",
        "uas_slow_to_bye.xml",
    );
    let _uas = Uas::start(&deaf, ports, node.dir.path(), &[]);
    let first = Party::bind("127.0.0.1", ports.sip);
    first.send(&first.invite("line-1", "09011110000", &first.me()));
    let first_tag = first.ack_answer("line-1");
    let second = Party::bind("127.0.0.1", ports.sip);
    second.send(&second.invite("line-2", "09022220000", &second.me()));
    node.wait_until(Duration::from_secs(5), "the second caller queued", || {
        node.metric("tsunagu_queue_waiting") == 1.0
    });
    first.send(&first.bye("line-1", &first_tag, 2));
    let hung_up = std::time::Instant::now();
    let answered = loop {
        let m = second
            .recv(Duration::from_secs(40))
            .expect("the second caller's answer");
        if m.starts_with("SIP/2.0 200") && header(&m, "CSeq") == Some("1 INVITE") {
            break hung_up.elapsed();
        }
    };
    assert!(
        answered >= Duration::from_millis(1900) && answered < Duration::from_secs(10),
        "the line passed {answered:?} after the BYE: 2 s after it, as its answer never came"
    );
}

/// The caller CANCELs while it has had only 100 Trying (no response told it a To tag):
/// the 200 to the CANCEL and the INVITE's 487 carry the same tag (RFC 3261 9.2; the
/// 200 carried a new one and the 487 the call's own: a live torture run).
#[test]
fn a_cancel_before_any_tag_is_answered_with_the_487s_tag() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    node.provision("0501234567", DEST, "{}");
    let callee = Ear::bind(ports.uas); // takes the INVITE and says nothing
    let caller = Party::bind("127.0.0.1", ports.sip);
    let invite = caller.invite("cancel-tag-2", "09012345678", &caller.me());
    caller.send(&invite);
    node.wait_until(Duration::from_secs(5), "the callee's INVITE", || {
        callee
            .packets()
            .iter()
            .any(|(_, p)| p.starts_with(b"INVITE "))
    });
    caller.send(&on_branch(&invite, "CANCEL", None));
    let mut tags = std::collections::BTreeMap::new();
    while tags.len() < 2 {
        let m = caller
            .recv(Duration::from_secs(5))
            .expect("the CANCEL's and INVITE's answers");
        let status = m.lines().next().unwrap_or_default();
        assert!(!status.starts_with("SIP/2.0 18"), "only 100 Trying: {m}");
        if status.starts_with("SIP/2.0 200") || status.starts_with("SIP/2.0 487") {
            let cseq = header(&m, "CSeq").unwrap_or_default().to_string();
            tags.insert(cseq, tag(header(&m, "To").unwrap()));
        }
    }
    assert!(!tags["1 CANCEL"].is_empty(), "{tags:?}");
    assert_eq!(tags["1 INVITE"], tags["1 CANCEL"], "{tags:?}");
    caller.send(&on_branch(&invite, "ACK", Some(&tags["1 INVITE"])));
}

/// After the caller cancelled its re-INVITE (CSeq 2) in call `call_id`: the CANCEL is
/// answered 200 and the re-INVITE 487 (acknowledged here), the call goes on, and the
/// caller's BYE (CSeq 3) ends it, logged as answered.
fn the_cancelled_re_invite_ends_and_the_call_goes_on(
    node: &Node,
    key: &str,
    caller: &Party,
    call_id: &str,
    our_tag: &str,
    reinvite: &str,
) {
    let mut finals = Vec::new();
    while finals.len() < 2 {
        let m = caller
            .recv(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no more answers after {finals:?}"));
        let status = m.lines().next().unwrap_or_default().to_string();
        if status.starts_with("SIP/2.0") && !status.starts_with("SIP/2.0 1") {
            finals.push((header(&m, "CSeq").unwrap_or_default().to_string(), status));
        }
    }
    finals.sort();
    assert_eq!(
        finals[0],
        ("2 CANCEL".into(), "SIP/2.0 200 OK".into()),
        "{finals:?}"
    );
    assert_eq!(finals[1].1, "SIP/2.0 487 Request Terminated", "{finals:?}");
    caller.send(&on_branch(reinvite, "ACK", Some(our_tag)));
    assert_eq!(node.metric("tsunagu_active_calls"), 1.0, "the call goes on");
    caller.send(&caller.bye(call_id, our_tag, 3));
    let bye = loop {
        let m = caller
            .recv(Duration::from_secs(5))
            .expect("the BYE's answer");
        if header(&m, "CSeq") == Some("3 BYE") {
            break m;
        }
    };
    assert!(bye.starts_with("SIP/2.0 200"), "{bye}");
    let calls = node.wait_for_calls(key, 1);
    assert_eq!(calls[0]["result"], "answered", "{}", calls[0]);
}

/// A SIPp scenario element sending a 200 with an SDP answer (audio, PCMU) answering the
/// last message, with `cseq` as its CSeq line.
fn sipp_ok_with_sdp(cseq: &str) -> String {
    format!(
        "  <send>\n    <![CDATA[\n\n      SIP/2.0 200 OK\n      [last_Via:]\n      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      {cseq}\n      Contact: <sip:[local_ip]:[local_port];transport=[transport]>\n      Content-Type: application/sdp\n      Content-Length: [len]\n\n      v=0\n      o=user1 53655765 2353687638 IN IP[local_ip_type] [local_ip]\n      s=-\n      c=IN IP[media_ip_type] [media_ip]\n      t=0 0\n      m=audio [media_port] RTP/AVP 0\n\n    ]]>\n  </send>\n"
    )
}

/// A SIPp scenario element sending a bodiless `status` answering the last message,
/// with `cseq` as its CSeq line.
fn sipp_answer(status: &str, cseq: &str) -> String {
    format!(
        "  <send>\n    <![CDATA[\n\n      SIP/2.0 {status}\n      [last_Via:]\n      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      {cseq}\n      Content-Length: 0\n\n    ]]>\n  </send>\n"
    )
}

/// Sends the caller's re-INVITE (CSeq 2, with an offer) in its call `call_id`; the
/// request as sent.
fn send_reinvite(caller: &Party, call_id: &str, our_tag: &str, sdp_extra: &str) -> String {
    let sdp = format!("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4002 RTP/AVP 0\r\n{sdp_extra}");
    let reinvite = caller_offer(caller, "INVITE", call_id, our_tag, 2, "", &sdp);
    caller.send(&reinvite);
    reinvite
}

/// The caller's `method` (a re-INVITE or UPDATE) in its call `call_id` with CSeq
/// `cseq`, `extra` header lines (each ending in `\n`), its Contact and `sdp` as the
/// offer; the request, not sent.
pub(crate) fn caller_offer(
    caller: &Party,
    method: &str,
    call_id: &str,
    our_tag: &str,
    cseq: u32,
    extra: &str,
    sdp: &str,
) -> String {
    caller.request(
        method,
        call_id,
        "callertag",
        our_tag,
        cseq,
        &format!(
            "{extra}Contact: <sip:caller@{}>\nContent-Type: application/sdp\nContent-Length: {}\n\n{sdp}",
            caller.me(),
            sdp.len()
        ),
    )
}

/// A call answered by a callee that then takes a re-INVITE without a word until the
/// BYE; the caller has sent that re-INVITE (CSeq 2, with an offer) and the callee has
/// it. The caller, the node's To tag, the callee, and the re-INVITE as sent.
fn reinvite_a_silent_callee(
    node: &Node,
    ports: Ports,
    call_id: &str,
) -> (Party, String, Uas, String) {
    reinvite_a_callee(node, ports, call_id, "", "")
}

/// [`reinvite_a_silent_callee`] with a callee that does `then` (SIPp scenario
/// elements) after it receives the re-INVITE, before the BYE, and `sdp_extra` (SDP
/// lines, e.g. `a=sendonly`) in the caller's offer.
fn reinvite_a_callee(
    node: &Node,
    ports: Ports,
    call_id: &str,
    then: &str,
    sdp_extra: &str,
) -> (Party, String, Uas, String) {
    let ack = r#"<recv request="ACK" crlf="true"/>"#;
    let silent = format!("{ack}\n  <recv request=\"INVITE\"/>\n{then}");
    let silent_uas = scenario_replacing(
        node.dir.path(),
        "uas_answer.xml",
        ack,
        &silent,
        "uas_reinvite.xml",
    );
    let uas = Uas::start(&silent_uas, ports, node.dir.path(), &[]);
    let caller = Party::bind("127.0.0.1", ports.sip);
    caller.send(&caller.invite(call_id, "09012345678", &caller.me()));
    let our_tag = caller.ack_answer(call_id);
    let reinvite = send_reinvite(&caller, call_id, &our_tag, sdp_extra);
    node.wait_until(Duration::from_secs(5), "the relayed re-INVITE", || {
        uas.messages().matches("INVITE sip:").count() >= 2
    });
    (caller, our_tag, uas, reinvite)
}

/// A caller the node answered itself (a menu) sends a re-INVITE (hold) and an UPDATE
/// without an offer: the node answers both itself, the re-INVITE with an answer going
/// on from the session of its 200 (same origin, the next version) and the offer's
/// direction answered. Both were refused 491 although nothing was pending (a review).
#[test]
fn a_caller_answered_by_the_menu_has_its_offers_answered_by_the_node() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    node.set_number(
        &key,
        "0501234567",
        r#"{"ivr": {"prompt": "ivr_menu", "routes": {"1": [{"number": "0311112222"}]}}}"#,
    );
    let call_id = "menu-reinvite-1";
    let caller = Party::bind("127.0.0.1", ports.sip);
    caller.send(&caller.invite(call_id, "09012345678", &caller.me()));
    let ok = caller.final_response();
    assert!(ok.starts_with("SIP/2.0 200"), "the menu answers: {ok}");
    let our_tag = caller.ack(call_id, &ok);
    let origin = |m: &str| {
        let o = m.lines().find(|l| l.starts_with("o=")).unwrap_or_default();
        let f: Vec<String> = o.split(' ').map(str::to_string).collect();
        (
            f.get(1).cloned().unwrap_or_default(),
            f.get(2).cloned().unwrap_or_default(),
        )
    };
    let (session, version) = origin(&ok);
    send_reinvite(&caller, call_id, &our_tag, "a=sendonly\r\n");
    let answer = caller.final_response();
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    assert!(answer.contains("a=recvonly"), "the hold answered: {answer}");
    let (again, next) = origin(&answer);
    assert_eq!(again, session, "the same session: {answer}");
    assert_eq!(
        next.parse::<u64>().unwrap(),
        version.parse::<u64>().unwrap() + 1
    );
    caller.ack(call_id, &answer);
    let update = caller.request(
        "UPDATE",
        call_id,
        "callertag",
        &our_tag,
        3,
        &format!(
            "Contact: <sip:caller@{}>\nContent-Length: 0\n\n",
            caller.me()
        ),
    );
    caller.send(&update);
    let answer = caller.final_response();
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    let bye = caller.bye(call_id, &our_tag, 4);
    caller.send(&bye);
    assert!(caller.final_response().starts_with("SIP/2.0 200"));
    // Hung up in the menu: nobody else was on the call; the caller was sent 200.
    let call = node.wait_for_calls(&key, 1)[0].clone();
    assert_eq!(call["result"], "cancelled", "{call}");
    assert_eq!(call["sip_code"], 200, "{call}");
}

/// The caller CANCELs its pending re-INVITE: the CANCEL is answered 200 and the
/// re-INVITE 487 (RFC 3261 9.2), and the call goes on until the BYE (a CANCEL of a
/// re-INVITE was answered 200 and ignored, and one while a 200 waited for a PRACK
/// would have ended the call as a CANCEL of the first INVITE: a live torture run).
#[test]
fn a_cancelled_re_invite_is_answered_487_and_the_call_goes_on() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let call_id = "cancel-reinvite-1";
    let (caller, our_tag, _uas, reinvite) = reinvite_a_silent_callee(&node, ports, call_id);
    caller.send(&on_branch(&reinvite, "CANCEL", None));
    the_cancelled_re_invite_ends_and_the_call_goes_on(
        &node, &key, &caller, call_id, &our_tag, &reinvite,
    );
}

/// The caller sends a second re-INVITE while its first is still with the callee: 500
/// with a Retry-After of 0 to 10 s (RFC 3261 14.2: a request of the sender's own is
/// pending, not glare); it was 491, which tells the sender the other side offered.
#[test]
fn a_second_re_invite_before_the_first_is_answered_gets_500_with_retry_after() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.0/8", "");
    let (key, _) = node.provision("0501234567", DEST, "{}");
    let call_id = "second-reinvite-1";
    let (caller, our_tag, _uas, _first) = reinvite_a_silent_callee(&node, ports, call_id);
    let sdp = "v=0\r\no=- 1 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4002 RTP/AVP 0\r\n";
    caller.send(&caller_offer(
        &caller, "INVITE", call_id, &our_tag, 3, "", sdp,
    ));
    let refused = loop {
        let m = caller
            .recv(Duration::from_secs(5))
            .expect("an answer to the second re-INVITE");
        if header(&m, "CSeq") == Some("3 INVITE") && !m.starts_with("SIP/2.0 1") {
            break m;
        }
    };
    assert!(refused.starts_with("SIP/2.0 500"), "{refused}");
    let after: u32 = header(&refused, "Retry-After")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("a Retry-After in seconds: {refused}"));
    assert!(after <= 10, "{refused}");
    caller.send(&caller.bye(call_id, &our_tag, 4));
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["result"], "answered", "{}", calls[0]);
}
