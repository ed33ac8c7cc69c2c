//! Writing SIP messages as text: requests from a [`RequestSpec`], responses from the
//! request they answer. Written directly into one buffer: no intermediate tree.

use crate::parse::{header, header_lines, Transport};
use rand::RngExt;
use rsipstack::sip::{Method, Request};
use std::fmt::Write;
use std::net::SocketAddr;

pub const USER_AGENT: &str = "tsunagu";

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A new RFC 3261 branch (magic cookie prefix).
pub fn new_branch() -> String {
    format!("z9hG4bK{}", random_token(16))
}

pub fn new_tag() -> String {
    random_token(12)
}

pub fn new_call_id() -> String {
    random_token(24)
}

/// The reason phrase of `code`: rsipstack's table of the registered SIP codes (every
/// one the node sends), else its class's own phrase, not a made-up one. Written
/// straight into the status line (no allocation for a registered code).
pub fn reason(code: u16) -> Reason {
    Reason(code)
}

/// See [`reason`].
pub struct Reason(u16);

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use rsipstack::sip::StatusCode;
        match StatusCode::from(self.0) {
            StatusCode::Other(..) => f.write_str(match self.0 / 100 {
                1 => "Provisional",
                2 => "OK",
                3 => "Redirection",
                4 => "Client Error",
                5 => "Server Error",
                6 => "Global Failure",
                _ => "Unknown",
            }),
            known => f.write_str(known.text()),
        }
    }
}

/// A request we originate (a B2BUA leg, an in-dialog request, ACK or CANCEL).
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: Method,
    pub uri: String,
    pub transport: Transport,
    /// Our address in the Via (sent-by).
    pub sent_by: SocketAddr,
    pub branch: String,
    /// Full From value including `;tag=`.
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    pub contact: Option<String>,
    pub routes: Vec<String>,
    pub max_forwards: u8,
    pub extra: Vec<(&'static str, String)>,
    pub body: Option<(&'static str, Vec<u8>)>,
}

impl RequestSpec {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = String::with_capacity(512);
        let _ = write!(s, "{} {} SIP/2.0\r\n", self.method, self.uri);
        let _ = write!(
            s,
            "Via: SIP/2.0/{} {};branch={};rport\r\n",
            self.transport.via_name(),
            self.sent_by,
            self.branch
        );
        for r in &self.routes {
            let _ = write!(s, "Route: {r}\r\n");
        }
        let _ = write!(s, "Max-Forwards: {}\r\n", self.max_forwards);
        let _ = write!(
            s,
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\n",
            self.from, self.to, self.call_id
        );
        let _ = write!(s, "CSeq: {} {}\r\n", self.cseq, self.method);
        if let Some(c) = &self.contact {
            let _ = write!(s, "Contact: {c}\r\n");
        }
        for (k, v) in &self.extra {
            let _ = write!(s, "{k}: {v}\r\n");
        }
        let _ = write!(s, "User-Agent: {USER_AGENT}\r\n");
        finish(s, self.body.as_ref().map(|(t, b)| (*t, b.as_slice())))
    }

    /// The ACK for a non-2xx final response: same branch and CSeq number, the
    /// response's To (RFC 3261 17.1.1.3).
    pub fn ack_for_failure(&self, response_to: &str) -> RequestSpec {
        RequestSpec {
            method: Method::Ack,
            to: response_to.to_string(),
            contact: None,
            extra: Vec::new(),
            body: None,
            ..self.clone()
        }
    }

    /// The CANCEL of this INVITE: same branch, URI, From, To, Call-ID and CSeq number.
    pub fn cancel(&self) -> RequestSpec {
        RequestSpec {
            method: Method::Cancel,
            contact: None,
            extra: Vec::new(),
            body: None,
            ..self.clone()
        }
    }
}

fn finish(mut s: String, body: Option<(&str, &[u8])>) -> Vec<u8> {
    match body {
        Some((ctype, b)) if !b.is_empty() => {
            let _ = write!(
                s,
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                b.len()
            );
            let mut out = s.into_bytes();
            out.extend_from_slice(b);
            out
        }
        _ => {
            s.push_str("Content-Length: 0\r\n\r\n");
            s.into_bytes()
        }
    }
}

/// A final response made from an earlier response to the same request (e.g. the 100
/// Trying a server transaction keeps): status `code`, only Via, From, To (with
/// `to_tag` if it has none), Call-ID and CSeq kept, no body. Lets a supervisor refuse a
/// failed call without having kept a copy of its INVITE.
pub fn restatus(earlier: &[u8], code: u16, to_tag: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(earlier);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut out = format!("SIP/2.0 {code} {}\r\n", reason(code));
    for line in head.split("\r\n").skip(1) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {}
            "to" | "t" if !line.to_ascii_lowercase().contains(";tag=") => {
                out.push_str(line);
                out.push_str(";tag=");
                out.push_str(to_tag);
                out.push_str("\r\n");
                continue;
            }
            "to" | "t" => {}
            _ => continue,
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// A response to `req`. `to_tag` is added to To when the request's To has none.
/// Record-Route is copied into dialog-forming responses (RFC 3261 12.1.1).
pub fn response(
    req: &Request,
    code: u16,
    to_tag: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut s = String::with_capacity(512);
    let _ = write!(s, "SIP/2.0 {code} {}\r\n", reason(code));
    for via in header_lines(req, "Via") {
        let _ = write!(s, "Via: {via}\r\n");
    }
    if req.method == Method::Invite && (101..300).contains(&code) {
        for rr in header_lines(req, "Record-Route") {
            let _ = write!(s, "Record-Route: {rr}\r\n");
        }
    }
    let _ = write!(s, "From: {}\r\n", header(req, "From").unwrap_or_default());
    let to = header(req, "To").unwrap_or_default();
    match to_tag {
        Some(tag) if crate::parse::tag(to).is_none() && code > 100 => {
            let _ = write!(s, "To: {to};tag={tag}\r\n");
        }
        _ => {
            let _ = write!(s, "To: {to}\r\n");
        }
    }
    let _ = write!(
        s,
        "Call-ID: {}\r\n",
        header(req, "Call-ID").unwrap_or_default()
    );
    let _ = write!(s, "CSeq: {}\r\n", header(req, "CSeq").unwrap_or_default());
    for (k, v) in extra {
        let _ = write!(s, "{k}: {v}\r\n");
    }
    let _ = write!(s, "Server: {USER_AGENT}\r\n");
    finish(s, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{header_values, parse, tag};
    use rsipstack::sip::SipMessage;

    #[test]
    fn reason_phrases() {
        // 491 was "Unknown" (a live torture run); SIP's 429 is RFC 3892's (a hand table
        // had HTTP's); a code not registered takes its class's.
        for (code, phrase) in [
            (491, "Request Pending"),
            (513, "Message Too Large"),
            (429, "Provide Referrer Identity"),
            (199, "Early Dialog Terminated"),
            (150, "Provisional"),
            (497, "Client Error"),
            (555, "Server Error"),
            (699, "Global Failure"),
            (700, "Unknown"),
        ] {
            assert_eq!(reason(code).to_string(), phrase, "{code}");
        }
    }

    #[test]
    fn a_final_response_from_an_earlier_one() {
        let trying = b"SIP/2.0 100 Trying\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\nf: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\ni: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let out = String::from_utf8(restatus(trying, 500, "t9")).unwrap();
        assert!(out.starts_with("SIP/2.0 500 "), "{out}");
        assert!(out.contains("To: <sip:b@y>;tag=t9\r\n"), "{out}");
        assert!(out.contains("f: <sip:a@x>;tag=1\r\n") && out.contains("i: c1\r\n"));
        assert!(
            out.ends_with("CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"),
            "{out}"
        );
        assert!(parse(out.as_bytes()).is_ok(), "{out}");
        let early = b"SIP/2.0 183 Session Progress\r\nVia: v\r\nTo: <sip:b@y>;tag=old\r\nRequire: 100rel\r\nRSeq: 5\r\nContent-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0";
        let out = String::from_utf8(restatus(early, 500, "t9")).unwrap();
        assert!(
            out.contains("To: <sip:b@y>;tag=old\r\n") && !out.contains("t9"),
            "{out}"
        );
        assert!(
            !out.contains("RSeq") && !out.contains("sdp") && !out.contains("v=0"),
            "{out}"
        );
    }

    fn spec() -> RequestSpec {
        RequestSpec {
            method: Method::Invite,
            uri: "sip:0311112222@127.0.0.1:5070".into(),
            transport: Transport::Udp,
            sent_by: "127.0.0.1:5060".parse().unwrap(),
            branch: new_branch(),
            from: "<sip:09012345678@127.0.0.1>;tag=t1".into(),
            to: "<sip:0311112222@127.0.0.1:5070>".into(),
            call_id: new_call_id(),
            cseq: 1,
            contact: Some("<sip:tsunagu@127.0.0.1:5060>".into()),
            routes: vec![],
            max_forwards: 69,
            extra: vec![],
            body: Some(("application/sdp", b"v=0\r\n".to_vec())),
        }
    }

    #[test]
    fn request_round_trips_through_the_parser() {
        let s = spec();
        let (msg, info) = parse(&s.to_bytes()).unwrap();
        assert_eq!(info.branch, s.branch);
        assert_eq!(info.call_id, s.call_id);
        assert_eq!(info.from_tag.as_deref(), Some("t1"));
        let SipMessage::Request(req) = msg else {
            panic!()
        };
        assert_eq!(req.body, b"v=0\r\n");

        let ack = s.ack_for_failure("<sip:0311112222@127.0.0.1:5070>;tag=x");
        let (_, ai) = parse(&ack.to_bytes()).unwrap();
        assert_eq!(
            (ai.branch, ai.cseq, ai.cseq_method, ai.to_tag.as_deref()),
            (s.branch.clone(), 1, Method::Ack, Some("x"))
        );
        let (_, ci) = parse(&s.cancel().to_bytes()).unwrap();
        assert_eq!((ci.branch, ci.cseq_method), (s.branch, Method::Cancel));
    }

    #[test]
    fn a_response_is_not_much_larger_than_its_request() {
        // Lists that a response copies, written to make the copy grow: empty
        // elements, one-byte elements, one-byte lines (compact form).
        let lists = [
            format!(
                "Via: SIP/2.0/UDP a;branch=z9hG4bK1{}\r\n",
                ",".repeat(9_000)
            ),
            format!(
                "Via: SIP/2.0/UDP a;branch=z9hG4bK1{}\r\n",
                ",a".repeat(4_000)
            ),
            format!(
                "Via: SIP/2.0/UDP a;branch=z9hG4bK1\r\n{}",
                "v:a\r\n".repeat(2_000)
            ),
            format!(
                "Via: SIP/2.0/UDP a;branch=z9hG4bK1\r\nRecord-Route: <sip:p;lr>{}\r\n",
                ",".repeat(9_000)
            ),
        ];
        for list in lists {
            let raw = format!("INVITE sip:1@h SIP/2.0\r\n{list}From: <sip:a@h>;tag=f\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
            let (SipMessage::Request(req), _) = parse(raw.as_bytes()).unwrap() else {
                panic!()
            };
            for code in [180, 403, 503] {
                let out = response(&req, code, Some("tt"), &[], None).len();
                assert!(
                    out <= raw.len() * 2 + 512,
                    "{code}: {out} bytes out for {} in ({})",
                    raw.len(),
                    &list[..60]
                );
            }
        }
    }

    #[test]
    fn response_copies_dialog_headers_and_adds_tag() {
        let raw = "INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP a:1;branch=z9hG4bK1, SIP/2.0/UDP b:2;branch=z9hG4bK2\r\nRecord-Route: <sip:p;lr>\r\nFrom: <sip:a@h>;tag=f\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let (SipMessage::Request(req), _) = parse(raw.as_bytes()).unwrap() else {
            panic!()
        };
        let bytes = response(&req, 180, Some("tt"), &[("Contact", "<sip:x@y>")], None);
        let (msg, info) = parse(&bytes).unwrap();
        assert_eq!(info.to_tag.as_deref(), Some("tt"));
        assert_eq!(header_values(&msg, "Via").len(), 2);
        assert_eq!(header_values(&msg, "Record-Route"), vec!["<sip:p;lr>"]);
        let trying = response(&req, 100, Some("tt"), &[], None);
        let (msg, _) = parse(&trying).unwrap();
        assert_eq!(
            tag(header(&msg, "To").unwrap()),
            None,
            "100 Trying carries no To tag"
        );
        assert!(header_values(&msg, "Record-Route").is_empty());
    }
}

/// A 400 for a request that failed to parse; see [`reject_unparsed`].
pub fn bad_request_for(raw: &[u8], why: &str) -> Option<Vec<u8>> {
    reject_unparsed(raw, 400, why)
}

/// An error response (400, 501, 505) for a request that failed to parse, built from its
/// raw lines when it still has a request line and a Via to route the response by
/// (RFC 4475 3.1.2.18: a request missing Call-ID, CSeq, From or To still gets its 400,
/// with whichever of them it has). None for responses, ACKs and text too broken to
/// answer (no Via, a request line that is not UTF-8): those are dropped. Header lines
/// with control characters or bytes that are not UTF-8 are not copied.
pub fn reject_unparsed(raw: &[u8], code: u16, why: &str) -> Option<Vec<u8>> {
    let head_len = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    // Bytes that are not UTF-8 become U+FFFD; a line holding one is not copied.
    let head = String::from_utf8_lossy(&raw[..head_len]);
    let whole = |l: &&str| !l.contains(char::REPLACEMENT_CHARACTER);
    let mut lines = head.split("\r\n");
    let first = lines.next().filter(whole)?;
    let lines = lines.filter(whole);
    let version_ok = first.ends_with("SIP/2.0") || code == 505;
    if first.starts_with("SIP/") || !version_ok || first.starts_with("ACK ") {
        return None;
    }
    let wanted = [
        ("via", "v"),
        ("from", "f"),
        ("to", "t"),
        ("call-id", "i"),
        ("cseq", ""),
    ];
    let mut found: Vec<(usize, String)> = Vec::new();
    for line in lines {
        if line.chars().any(|c| c.is_control() && c != '\t') {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        if let Some(i) = wanted
            .iter()
            .position(|(long, short)| name == *long || (!short.is_empty() && name == *short))
        {
            found.push((
                i,
                format!(
                    "{}: {}",
                    ["Via", "From", "To", "Call-ID", "CSeq"][i],
                    value.trim()
                ),
            ));
        }
    }
    if !found.iter().any(|(i, _)| *i == 0) {
        return None; // no Via: nowhere to send a response
    }
    found.sort_by_key(|(i, _)| *i);
    let mut s = format!("SIP/2.0 {code} {}\r\n", reason(code));
    for (_, line) in found {
        s.push_str(&line);
        s.push_str("\r\n");
    }
    let why: String = why
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(120)
        .collect();
    let _ = write!(
        s,
        "Warning: 399 tsunagu \"{why}\"\r\nServer: {USER_AGENT}\r\n"
    );
    Some(finish(s, None))
}

/// The CSeq of every new INVITE the node sends (a forwarded leg, a callback): its
/// requests inside a dialog are numbered above it on both legs (the caller's leg
/// starts there too), so a 2xx carrying it is always to a new INVITE (see
/// [`ack_for_stray_2xx`]).
pub const FIRST_INVITE_CSEQ: u32 = 1;

/// The most Record-Route entries a route set the node keeps may hold: a caller's
/// INVITE with more is refused (400), a callee's 2xx with more is hung up without
/// its route set, and a 2xx that no call takes with more is not acknowledged. A route
/// set of a few proxies is the rule; a header of thousands of one-byte entries (16 KiB
/// of them fit in a message) was kept whole for the call, one string each, and came
/// back as one Route line each in every request of the dialog: 80 KiB, past what a
/// UDP datagram carries (a review).
pub const MAX_ROUTE_SET: usize = 16;

/// A message's Record-Route entries in order, trimmed, over every line of the header;
/// `None` past [`MAX_ROUTE_SET`], counted before anything is copied.
pub fn route_set<M: crate::parse::HasHeaders>(msg: &M) -> Option<Vec<String>> {
    let entries =
        || crate::parse::header_lines(msg, "Record-Route").flat_map(crate::parse::list_elements);
    if entries().nth(MAX_ROUTE_SET).is_some() {
        return None;
    }
    Some(entries().map(|r| r.trim().to_string()).collect())
}

/// The ACK of a 2xx to an INVITE that matches no call (RFC 3261 13.2.2.4): the call
/// it belonged to has ended (a re-INVITE's 2xx that came after the node's BYE was
/// answered, say), and without an ACK its sender sends it again for 32 s and then
/// hangs up a dialog that is already gone. Written from the 2xx alone, as the call
/// would have: the Contact as Request-URI, the Record-Route reversed as the route set,
/// From, To (with its tag), Call-ID and the CSeq number, a new branch. It is sent back
/// where the 2xx came from (the route set's first hop in every deployment the node
/// is in: a trunk's address), never to an address the 2xx names. None when the 2xx
/// has no Contact naming a SIP URI, no From or To, more than [`MAX_ROUTE_SET`]
/// Record-Route entries (the ACK is never much larger than the 2xx), or
/// [`FIRST_INVITE_CSEQ`]: the node's own new INVITEs (a forwarded leg, a callback) take
/// it, and a 2xx to one
/// whose call is gone (the node restarted meanwhile) is left unacknowledged, so that
/// its sender hangs up after 32 s (RFC 3261 13.3.1.4) rather than keeping a callee
/// connected to nobody; the core cannot send that BYE itself, not knowing whether a
/// re-INVITE's dialog lives on at another node (a call handed over).
pub fn ack_for_stray_2xx(
    resp: &rsipstack::sip::Response,
    cseq: u32,
    transport: Transport,
    sent_by: SocketAddr,
) -> Option<RequestSpec> {
    if cseq <= FIRST_INVITE_CSEQ {
        return None;
    }
    route_set(resp)?;
    in_dialog_of_2xx(resp, Method::Ack, cseq, transport, sent_by)
}

/// A request inside the dialog a 2xx to an INVITE of ours set up, written from the
/// 2xx alone (see [`ack_for_stray_2xx`]): its ACK (`method` ACK, the 2xx's CSeq
/// number) or, for a dialog nobody keeps (a fork the SIP core hangs up), its BYE (the
/// next CSeq number). None as for [`ack_for_stray_2xx`], the CSeq and the route set
/// aside: one past [`MAX_ROUTE_SET`] is left out (the request goes back where the 2xx
/// came from, to the route set's first hop anyway).
pub fn in_dialog_of_2xx(
    resp: &rsipstack::sip::Response,
    method: Method,
    cseq: u32,
    transport: Transport,
    sent_by: SocketAddr,
) -> Option<RequestSpec> {
    let target = crate::parse::uri_of(header(resp, "Contact")?).trim();
    let sip_uri = ["sip:", "sips:"].iter().any(|s| {
        target
            .get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s))
    });
    if !sip_uri || target.contains(char::is_whitespace) {
        return None;
    }
    let mut routes = route_set(resp).unwrap_or_default();
    routes.reverse();
    Some(RequestSpec {
        method,
        uri: target.to_string(),
        transport,
        sent_by,
        branch: new_branch(),
        from: header(resp, "From")?.to_string(),
        to: header(resp, "To")?.to_string(),
        call_id: header(resp, "Call-ID")?.to_string(),
        cseq,
        contact: None,
        routes,
        max_forwards: 70,
        extra: Vec::new(),
        body: None,
    })
}

/// The one stateless 403 a request from an untrusted source gets when the node is set
/// to refuse strangers instead of ignoring them: None for what does not parse, ACKs
/// and responses (nothing is ever answered to those).
pub fn reject_untrusted(raw: &[u8]) -> Option<Vec<u8>> {
    match crate::parse::parse(raw) {
        Ok((rsipstack::sip::SipMessage::Request(req), _)) if req.method != Method::Ack => {
            Some(response(&req, 403, Some(&new_tag()), &[], None))
        }
        _ => None,
    }
}

#[cfg(test)]
mod bad_request_tests {
    use super::bad_request_for;

    #[test]
    fn answers_what_it_can() {
        let broken = "INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: x INVITE\r\n\r\n";
        let reply =
            String::from_utf8(bad_request_for(broken.as_bytes(), "bad CSeq").unwrap()).unwrap();
        assert!(
            reply.starts_with("SIP/2.0 400 Bad Request\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n"),
            "{reply}"
        );
        assert!(reply.contains("CSeq: x INVITE\r\n"));
        for unanswerable in [
            "garbage",
            "SIP/2.0 200 OK\r\nVia: x\r\n\r\n",
            "INVITE sip:1@h SIP/2.0\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n",
            "ACK sip:1@h SIP/2.0\r\nVia: v\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n",
            "INVITE sip:1@h SIP/2.0\r\nVia: v\x00\r\nFrom: a\r\n\r\n",
        ] {
            assert!(bad_request_for(unanswerable.as_bytes(), "x").is_none(), "{unanswerable}");
        }
    }

    /// RFC 4475 3.1.2.18: whatever of From, To, Call-ID and CSeq is there is copied;
    /// a Via is enough to answer.
    #[test]
    fn a_request_missing_required_headers_still_gets_400() {
        let full = [
            "Via: SIP/2.0/UDP a;branch=z9hG4bK1",
            "From: <sip:a@h>;tag=1",
            "To: <sip:1@h>",
            "Call-ID: c",
            "CSeq: 1 OPTIONS",
        ];
        for missing in 1..full.len() {
            let lines: Vec<&str> = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != missing)
                .map(|(_, l)| *l)
                .collect();
            let raw = format!("OPTIONS sip:1@h SIP/2.0\r\n{}\r\n\r\n", lines.join("\r\n"));
            let reply = String::from_utf8(bad_request_for(raw.as_bytes(), "x").unwrap()).unwrap();
            assert!(reply.starts_with("SIP/2.0 400 Bad Request\r\n"), "{reply}");
            for line in &lines {
                assert!(
                    reply.contains(&format!("{line}\r\n")),
                    "{line} copied: {reply}"
                );
            }
            assert!(!reply.contains(full[missing]), "{reply}");
        }
        // A header that is not UTF-8 is left out; the rest still gets its 400.
        let mut not_utf8 =
            b"OPTIONS sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nX-B: ".to_vec();
        not_utf8.extend_from_slice(b"\xff\xfe\x80\r\nCall-ID: c\r\n\r\n");
        let reply = String::from_utf8(bad_request_for(&not_utf8, "x").unwrap()).unwrap();
        assert!(
            reply.starts_with("SIP/2.0 400") && reply.contains("Call-ID: c\r\n"),
            "{reply}"
        );
        let mut bad_line =
            b"OPTIONS sip:1@h\xff SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n\r\n".to_vec();
        assert!(
            bad_request_for(&bad_line, "x").is_none(),
            "a request line not UTF-8"
        );
        bad_line.clear();
        let with_nul = "OPTIONS sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a\x00@h>\r\nCall-ID: c\r\n\r\n";
        let reply = String::from_utf8(bad_request_for(with_nul.as_bytes(), "x").unwrap()).unwrap();
        assert!(
            !reply.contains('\x00') && !reply.contains("From"),
            "{reply}"
        );
    }

    #[test]
    fn a_stranger_gets_one_403_to_a_request_only() {
        let options = b"OPTIONS sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let reply = String::from_utf8(super::reject_untrusted(options).unwrap()).unwrap();
        assert!(
            reply.starts_with("SIP/2.0 403 Forbidden\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n")
        );
        assert!(reply.contains(";tag="), "{reply}");
        let ack = String::from_utf8_lossy(options).replace("OPTIONS", "ACK");
        assert!(super::reject_untrusted(ack.as_bytes()).is_none());
        assert!(super::reject_untrusted(b"garbage").is_none());
        let resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        assert!(super::reject_untrusted(resp).is_none());
    }
}
