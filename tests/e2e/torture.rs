//! Odd-but-valid and invalid SIP in the spirit of RFC 4475 (messages written by us): every
//! valid message is handled (answered as its content asks), every invalid one gets 400
//! or is dropped, and afterwards the node still answers, with no call left open.
//! Number 0501234567 is provisioned and its callee answers 486, so a valid INVITE to
//! it shows it was forwarded (486) rather than refused by the node.

use crate::harness::*;
use std::net::UdpSocket;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// A final response with this status.
    Status(u16),
    /// No response is possible (nothing to route it by): counted as a parse error.
    Dropped,
}

/// A request from the test socket; `{via}` is replaced by the socket's address.
fn req(lines: &[&str], body: &str) -> String {
    let mut m = lines.join("\r\n");
    m.push_str("\r\n\r\n");
    m.push_str(body);
    m
}

fn cases() -> Vec<(&'static str, String, Expect)> {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    vec![
        // --- valid, if unusual (RFC 4475 3.1.1) ---
        (
            "compact header forms and odd spacing",
            req(
                &[
                    "INVITE sip:0999999999@127.0.0.1 SIP/2.0",
                    "v:  SIP/2.0/UDP {via};branch=z9hG4bKt1",
                    "f: <sip:09012345678@example.com>;tag=t1",
                    "t:sip:0999999999@example.com",
                    "i: torture-compact",
                    "CSeq:   1    INVITE",
                    "Max-Forwards: 70",
                    "c: application/sdp",
                    &format!("l: {}", sdp.len()),
                ],
                sdp,
            ),
            Expect::Status(404),
        ),
        (
            "header names in odd case, unknown headers, a tel URI in From",
            req(
                &[
                    "OPTIONS sip:127.0.0.1 SIP/2.0",
                    "VIA: SIP/2.0/UDP {via};branch=z9hG4bKt2",
                    "fRoM: <tel:+81-90-1234-5678>;tag=t2",
                    "To: <sip:ping@127.0.0.1>",
                    "call-id: torture-case",
                    "cseq: 7 OPTIONS",
                    "X-Unknown-Header: with ; odd = content",
                    "NewFangledHeader:   newfangled value\tcontinued",
                    "Content-Length: 0",
                ],
                "",
            ),
            Expect::Status(200),
        ),
        (
            "escaped characters and parameters in the Request-URI",
            req(
                &[
                    "INVITE sip:0999%39999999@127.0.0.1;user=phone;x-param=a%20b SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt3;rport",
                    "From: \"J. Random \\\"Caller\\\"\" <sip:09012345678@example.com>;tag=t3",
                    "To: <sip:0999999999@example.com>",
                    "Call-ID: torture-escaped@example.com",
                    "CSeq: 1 INVITE",
                    "Max-Forwards: 70",
                    "Content-Type: application/sdp",
                    &format!("Content-Length: {}", sdp.len()),
                ],
                sdp,
            ),
            Expect::Status(404),
        ),
        (
            "an unknown method",
            req(
                &[
                    "NEWMETHOD sip:127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt4",
                    "From: <sip:a@example.com>;tag=t4",
                    "To: <sip:b@example.com>",
                    "Call-ID: torture-method",
                    "CSeq: 1 NEWMETHOD",
                    "Content-Length: 0",
                ],
                "",
            ),
            Expect::Status(501),
        ),
        (
            "BYE for a dialog that does not exist",
            req(
                &[
                    "BYE sip:127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt5",
                    "From: <sip:a@example.com>;tag=t5",
                    "To: <sip:b@example.com>;tag=nope",
                    "Call-ID: torture-bye",
                    "CSeq: 2 BYE",
                    "Content-Length: 0",
                ],
                "",
            ),
            Expect::Status(481),
        ),
        (
            "Max-Forwards 0 on an INVITE",
            req(
                &[
                    "INVITE sip:0999999999@127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt6",
                    "From: <sip:09012345678@example.com>;tag=t6",
                    "To: <sip:0999999999@example.com>",
                    "Call-ID: torture-hops",
                    "CSeq: 1 INVITE",
                    "Max-Forwards: 0",
                    "Content-Type: application/sdp",
                    &format!("Content-Length: {}", sdp.len()),
                ],
                sdp,
            ),
            Expect::Status(483),
        ),
        (
            // RFC 4475 3.1.1.1 ("wsinv") as a new call: folded headers, tabs, spaces
            // around colons and slashes, a folded Content-Type. Valid: it is forwarded
            // (the callee's 486 comes back), not refused 488 for want of an offer.
            "unusual whitespace and line folding (RFC 4475 3.1.1.1)",
            req(
                &[
                    "INVITE sip:0501234567@127.0.0.1;unknownparam SIP/2.0",
                    "TO :",
                    " sip:0501234567@127.0.0.1 ",
                    "from   : \"J Rosenberg \\\\\\\"\"       <sip:09012345678@example.com>",
                    "  ;",
                    "  tag = 98asjd8",
                    "MaX-fOrWaRdS: 0068",
                    "Call-ID: torture-wsinv.ndaksdj@192.0.2.1",
                    &format!("Content-Length   : {}", sdp.len()),
                    "cseq: 0009",
                    "  INVITE",
                    "Via  : SIP  /   2.0",
                    " /UDP",
                    "    {via};branch=z9hG4bKt21",
                    "s :",
                    "NewFangledHeader:   newfangled value",
                    " continued newfangled value",
                    "UnknownHeaderWithUnusualValue: ;;,,;;,;",
                    "Content-Type:",
                    "\t application/sdp",
                    "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =",
                    "      newvalue ;",
                    "  secondparam ; q = 0.33",
                ],
                sdp,
            ),
            Expect::Status(486),
        ),
        // --- invalid (RFC 4475 3.1.2) ---
        (
            "CSeq that is not a number",
            req(
                &[
                    "INVITE sip:0999999999@127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt7",
                    "From: <sip:a@example.com>;tag=t7",
                    "To: <sip:b@example.com>",
                    "Call-ID: torture-cseq",
                    "CSeq: -1x INVITE",
                    "Content-Length: 0",
                ],
                "",
            ),
            Expect::Status(400),
        ),
        (
            "Content-Length larger than the datagram",
            req(
                &[
                    "OPTIONS sip:127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt8",
                    "From: <sip:a@example.com>;tag=t8",
                    "To: <sip:b@example.com>",
                    "Call-ID: torture-clen",
                    "CSeq: 1 OPTIONS",
                    "Content-Length: 9999",
                ],
                "short",
            ),
            Expect::Status(400),
        ),
        (
            "negative Content-Length",
            req(
                &[
                    "OPTIONS sip:127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt9",
                    "From: <sip:a@example.com>;tag=t9",
                    "To: <sip:b@example.com>",
                    "Call-ID: torture-negclen",
                    "CSeq: 1 OPTIONS",
                    "Content-Length: -5",
                ],
                "",
            ),
            Expect::Status(400),
        ),
        (
            "no Call-ID (RFC 4475 3.1.2.18): 400 with the headers it has",
            req(
                &[
                    "OPTIONS sip:127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt10",
                    "From: <sip:a@example.com>;tag=t10",
                    "To: <sip:b@example.com>",
                    "CSeq: 1 OPTIONS",
                    "Content-Length: 0",
                ],
                "",
            ),
            Expect::Status(400),
        ),
        (
            "no CSeq (RFC 4475 3.1.2.18)",
            req(
                &[
                    "INVITE sip:0999999999@127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt16",
                    "From: <sip:a@example.com>;tag=t16",
                    "To: <sip:b@example.com>",
                    "Call-ID: torture-nocseq",
                    "Max-Forwards: 70",
                    "Content-Length: 0",
                ],
                "",
            ),
            Expect::Status(400),
        ),
        (
            "no From (RFC 4475 3.1.2.18)",
            req(
                &[
                    "OPTIONS sip:127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt17",
                    "To: <sip:b@example.com>",
                    "Call-ID: torture-nofrom",
                    "CSeq: 1 OPTIONS",
                    "Content-Length: 0",
                ],
                "",
            ),
            Expect::Status(400),
        ),
        (
            "unterminated quoted string in a display name (RFC 4475 3.1.2.6)",
            req(
                &[
                    "INVITE sip:0501234567@127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt18",
                    "From: \"Mr. J. User <sip:j.user@example.com>;tag=t18",
                    "To: <sip:0501234567@example.com>",
                    "Call-ID: torture-quote",
                    "CSeq: 1 INVITE",
                    "Max-Forwards: 70",
                    "Content-Type: application/sdp",
                    &format!("Content-Length: {}", sdp.len()),
                ],
                sdp,
            ),
            Expect::Status(400),
        ),
        (
            "a lone CR inside a header value (a header smuggled to the other leg)",
            req(
                &[
                    "INVITE sip:0501234567@127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt40",
                    "From: <sip:09012345678@example.com>;tag=t40",
                    "To: <sip:0501234567@example.com>",
                    "Call-ID: torture-lone-cr",
                    "CSeq: 1 INVITE",
                    "Privacy: none\rP-Asserted-Identity: <sip:0120000000@example.com>",
                    "Max-Forwards: 70",
                    "Content-Type: application/sdp",
                    &format!("Content-Length: {}", sdp.len()),
                ],
                sdp,
            ),
            Expect::Status(400),
        ),
        (
            "a raw NUL byte in a header",
            req(
                &[
                    "INVITE sip:0501234567@127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt19",
                    "From: <sip:09012345678@example.com>;tag=t19",
                    "To: <sip:0501234567@example.com>",
                    "Call-ID: torture-nul",
                    "CSeq: 1 INVITE",
                    "Subject: before\0after",
                    "Max-Forwards: 70",
                    "Content-Type: application/sdp",
                    &format!("Content-Length: {}", sdp.len()),
                ],
                sdp,
            ),
            Expect::Status(400),
        ),
        (
            // RFC 3261 20.15: Content-Type MUST be present with a body; the body is not
            // guessed to be SDP, and the request is malformed (400, not 488: the fault
            // is the message's form, not an offer we cannot accept).
            "a body without Content-Type is not taken as SDP",
            req(
                &[
                    "INVITE sip:0501234567@127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt20",
                    "From: <sip:09012345678@example.com>;tag=t20",
                    "To: <sip:0501234567@example.com>",
                    "Call-ID: torture-notype",
                    "CSeq: 1 INVITE",
                    "Max-Forwards: 70",
                    &format!("Content-Length: {}", sdp.len()),
                ],
                sdp,
            ),
            Expect::Status(400),
        ),
        (
            "CSeq method differs from the request method",
            req(
                &[
                    "INVITE sip:0999999999@127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt11",
                    "From: <sip:a@example.com>;tag=t11",
                    "To: <sip:b@example.com>",
                    "Call-ID: torture-cseqmethod",
                    "CSeq: 1 OPTIONS",
                    "Max-Forwards: 70",
                    "Content-Length: 0",
                ],
                "",
            ),
            Expect::Status(400),
        ),
        (
            "spaces inside the Request-URI",
            req(
                &[
                    "INVITE sip:0999 999 999@127.0.0.1 SIP/2.0",
                    "Via: SIP/2.0/UDP {via};branch=z9hG4bKt12",
                    "From: <sip:a@example.com>;tag=t12",
                    "To: <sip:b@example.com>",
                    "Call-ID: torture-uri",
                    "CSeq: 1 INVITE",
                    "Content-Length: 0",
                ],
                "",
            ),
            Expect::Status(400),
        ),
        (
            "an unknown SIP version",
            req(
                &[
                    "OPTIONS sip:127.0.0.1 SIP/7.0",
                    "Via: SIP/7.0/UDP {via};branch=z9hG4bKt13",
                    "From: <sip:a@example.com>;tag=t13",
                    "To: <sip:b@example.com>",
                    "Call-ID: torture-version",
                    "CSeq: 1 OPTIONS",
                    "Content-Length: 0",
                ],
                "",
            ),
            Expect::Status(505),
        ),
        (
            "no Via: nowhere to answer",
            req(
                &[
                    "OPTIONS sip:127.0.0.1 SIP/2.0",
                    "From: <sip:a@example.com>;tag=t14",
                    "To: <sip:b@example.com>",
                    "Call-ID: torture-novia",
                    "CSeq: 1 OPTIONS",
                    "Content-Length: 0",
                ],
                "",
            ),
            Expect::Dropped,
        ),
        (
            "not SIP at all",
            "\u{1}\u{2}GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            Expect::Dropped,
        ),
        (
            "a header line without a colon",
            req(
                &[
                    "OPTIONS sip:127.0.0.1 SIP/2.0",
                    "Via SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKt15",
                    "this line has no colon",
                    "Call-ID: torture-nocolon",
                ],
                "",
            ),
            Expect::Dropped,
        ),
    ]
}

/// The branch of a message's top Via (folded lines joined first).
fn branch_of(msg: &str) -> Option<String> {
    let head = msg.split("\r\n\r\n").next()?;
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        let name = name.trim().to_ascii_lowercase();
        if name != "via" && name != "v" {
            return None;
        }
        let at = value.find("branch=")? + "branch=".len();
        let branch: String = value[at..]
            .chars()
            .take_while(|c| !matches!(c, ';' | ',' | ' ' | '\r'))
            .collect();
        Some(branch)
    })
}

#[test]
fn rfc4475_style_torture_messages() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    let _busy = Uas::start("uas_busy.xml", ports, node.dir.path(), &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let via = sock.local_addr().unwrap().to_string();
    let mut report = Vec::new();
    // Final responses received: the node retransmits those to INVITEs (this test sends
    // no ACK), so seeing them again later is not an extra answer.
    let mut answered: Vec<(String, u16)> = Vec::new();
    for (name, msg, expect) in cases() {
        let msg = msg.replace("{via}", &via);
        let errors_before = node.metric("tsunagu_sip_parse_errors_total");
        sock.send_to(msg.as_bytes(), ("127.0.0.1", ports.sip))
            .unwrap();
        let got = match expect {
            Expect::Status(_) => {
                // The final response for this message's branch (provisional ones skipped).
                let branch = branch_of(&msg).expect("answerable cases have a Via branch");
                let mut buf = [0u8; 8192];
                let mut status = None;
                while let Ok((n, _)) = sock.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let code: u16 = text.get(8..11).and_then(|c| c.parse().ok()).unwrap_or(0);
                    if code >= 200 && branch_of(&text).as_deref() == Some(branch.as_str()) {
                        status = Some(Expect::Status(code));
                        answered.push((branch.clone(), code));
                        break;
                    }
                }
                status
            }
            Expect::Dropped => {
                node.wait_until(Duration::from_secs(5), name, || {
                    node.metric("tsunagu_sip_parse_errors_total") > errors_before
                });
                Some(Expect::Dropped)
            }
        };
        if got != Some(expect) {
            report.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    assert!(report.is_empty(), "{}\n{}", report.join("\n"), node.log());
    // Nothing answered that should not have been (e.g. a late 400 for a dropped one).
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 8192];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let code: u16 = text.get(8..11).and_then(|c| c.parse().ok()).unwrap_or(0);
        let retransmitted = branch_of(&text).is_some_and(|b| answered.contains(&(b, code)));
        assert!(retransmitted, "unexpected extra message: {text}");
    }
    assert_eq!(node.try_get("/healthz", None).unwrap().status, 200);
    node.wait_until(Duration::from_secs(10), "no call left open", || {
        node.metric("tsunagu_active_calls") == 0.0
    });
}
