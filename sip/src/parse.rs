//! Parsing and reading SIP messages: what the transaction layer and the calls need
//! from a message (Call-ID, CSeq, top Via branch, tags), with malformed input reported
//! as [`ParseError`] instead of a panic.
//!
//! Before the parser runs, the header section is checked byte by byte and unfolded
//! ([`crate::sanitize`]); after it, what the parser lets through and RFC 3261 forbids
//! is refused: status codes outside 100-699, CSeq numbers of 2^31 and above (8.1.1.5),
//! an unterminated quoted string in a structured header (RFC 4475 3.1.2.6), and a
//! request body without Content-Type (20.15: "MUST be present if the body is not
//! empty"; such a body cannot be interpreted, so the request is malformed: 400, not
//! taken as SDP).

pub use rsipstack::sip::HasHeaders;
use rsipstack::sip::{Header, Method, Request, SipMessage};
use std::net::SocketAddr;

/// How a message travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// Whether the transport delivers reliably (no retransmissions: RFC 3261 17).
    pub fn reliable(self) -> bool {
        self != Transport::Udp
    }

    /// The `transport=` URI parameter naming it (none for UDP, the default).
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        }
    }
}

/// The far end of a message: where it came from, or where to send one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unparseable SIP message: {0}")]
    Syntax(String),
    #[error("missing or malformed {0} header")]
    Header(&'static str),
    #[error("method `{0}` is not implemented")]
    UnknownMethod(String),
    #[error("SIP version `{0}` is not supported")]
    Version(String),
    #[error("Content-Length {0}")]
    ContentLength(&'static str),
    #[error("header section longer than {} bytes", crate::framing::MAX_HEADER)]
    TooLarge,
}

impl ParseError {
    /// The status a request failing this way is answered with (RFC 3261 8.2.1, 18.3,
    /// 21.5.6, 21.5.11): 501 for a method we do not know, 505 for another SIP version,
    /// 513 for a header section past the node's cap, else 400.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::UnknownMethod(_) => 501,
            ParseError::Version(_) => 505,
            ParseError::TooLarge => 513,
            _ => 400,
        }
    }
}

/// Checks of the start line the parser leaves out: a request line is exactly
/// `METHOD SP Request-URI SP SIP/2.0` with a known method; a status line is SIP/2.0.
fn check_start_line(data: &[u8]) -> Result<(), ParseError> {
    let end = data
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(data.len());
    let line = std::str::from_utf8(&data[..end])
        .map_err(|_| ParseError::Syntax("start line is not UTF-8".into()))?;
    if let Some(rest) = line.strip_prefix("SIP/") {
        let mut parts = rest.split(' ');
        return match parts.next() {
            Some("2.0") => {
                // Status-Code = 3DIGIT; RFC 3261 defines classes 1xx to 6xx only.
                let code = parts.next().unwrap_or_default();
                let valid = code.len() == 3
                    && code.bytes().all(|b| b.is_ascii_digit())
                    && (b'1'..=b'6').contains(&code.as_bytes()[0]);
                if valid {
                    Ok(())
                } else {
                    Err(ParseError::Syntax(format!("status code `{code}`")))
                }
            }
            v => Err(ParseError::Version(format!(
                "SIP/{}",
                v.unwrap_or_default()
            ))),
        };
    }
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, uri, version] = parts[..] else {
        return Err(ParseError::Syntax(
            "the request line must be METHOD SP Request-URI SP SIP-Version".into(),
        ));
    };
    if !is_token(method) || uri.is_empty() {
        return Err(ParseError::Syntax("malformed request line".into()));
    }
    if version != "SIP/2.0" {
        return Err(if version.starts_with("SIP/") {
            ParseError::Version(version.to_string())
        } else {
            ParseError::Syntax("malformed request line".into())
        });
    }
    if method_from(method).is_none() {
        return Err(ParseError::UnknownMethod(method.to_string()));
    }
    Ok(())
}

/// RFC 3261 18.3: a body shorter than Content-Length is an error; bytes past it are
/// discarded. Without the header the body is whatever follows the headers.
fn check_body_length(msg: &mut SipMessage) -> Result<(), ParseError> {
    let Some(declared) = header(msg, "Content-Length") else {
        return Ok(());
    };
    // Digits only (RFC 3261 20.14: 1*DIGIT): `str::parse` would also take `+5`, which
    // the stream framer refuses.
    let declared = declared.trim();
    if declared.is_empty() || !declared.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::ContentLength("is not a number"));
    }
    let declared: usize = declared
        .parse()
        .map_err(|_| ParseError::ContentLength("is too large"))?;
    let body = match msg {
        SipMessage::Request(r) => &mut r.body,
        SipMessage::Response(r) => &mut r.body,
    };
    if declared > body.len() {
        return Err(ParseError::ContentLength("is larger than the message body"));
    }
    body.truncate(declared);
    Ok(())
}

/// The identifying fields of a message, extracted once on receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: Method,
    /// Branch parameter of the top Via.
    pub branch: String,
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
    /// Where a response to this request goes over UDP (RFC 3261 18.2.2): the port
    /// the top Via names (5060 if none), or None, the request's source port: when
    /// the Via asks for it (`rport`, RFC 3581) or names no port that parses.
    pub reply_port: Option<u16>,
}

/// Parses a datagram or framed stream message and extracts its [`Info`].
///
/// The third-party parser runs under `catch_unwind`: whatever it does with hostile
/// input, a panic becomes a parse error and never takes a receiver task down.
pub fn parse(data: &[u8]) -> Result<(SipMessage, Info), ParseError> {
    let data = crate::sanitize::check_and_unfold(data)?;
    let data = &data[..];
    check_start_line(data)?;
    let parsed = std::panic::catch_unwind(|| rsipstack::sip::parser::parse_message(data))
        .map_err(|_| ParseError::Syntax("parser panicked".into()))?;
    let mut msg = parsed.map_err(|e| ParseError::Syntax(e.to_string()))?;
    check_body_length(&mut msg)?;
    check_quotes(&msg)?;
    if let SipMessage::Request(r) = &msg {
        if !r.body.is_empty() && header(r, "Content-Type").is_none() {
            return Err(ParseError::Header("Content-Type"));
        }
    }
    let info = info(&msg)?;
    Ok((msg, info))
}

/// Headers whose grammar has quoted strings (display names, parameter values): in
/// these an unterminated one is malformed. Free-text headers (Subject, User-Agent,
/// unknown extension headers) may hold a lone quote and are not checked.
const QUOTING_HEADERS: &[&str] = &[
    "Via",
    "From",
    "To",
    "Contact",
    "Route",
    "Record-Route",
    "Reply-To",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Refer-To",
    "Referred-By",
    "Diversion",
    "History-Info",
    "Content-Type",
    "Content-Disposition",
    "Accept",
    "Warning",
    "Reason",
    "Authorization",
    "Proxy-Authorization",
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "Call-Info",
    "Alert-Info",
    "Error-Info",
    "Session-Expires",
    "Event",
    "Subscription-State",
];

/// Whether every quoted string in `value` ends (backslash escapes honoured).
fn quotes_closed(value: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for b in value.bytes() {
        if !quoted {
            quoted = b == b'"';
        } else if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = false;
        }
    }
    !quoted
}

/// RFC 4475 3.1.2.6: an unterminated quoted string in a structured header is refused.
/// Only values with a quote are looked at (most have none), so the common message
/// costs one byte search per header.
fn check_quotes(msg: &SipMessage) -> Result<(), ParseError> {
    for h in msg.headers().iter() {
        let value = h.value();
        if !value.contains('"') || quotes_closed(value) {
            continue;
        }
        let name = h.name();
        if let Some(known) = QUOTING_HEADERS
            .iter()
            .find(|n| n.eq_ignore_ascii_case(name))
        {
            return Err(ParseError::Header(known));
        }
    }
    Ok(())
}

/// The first value of a header by canonical name (compact forms are already expanded).
pub fn header<'a, M: HasHeaders>(msg: &'a M, name: &str) -> Option<&'a str> {
    msg.headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .map(Header::value)
}

/// Whether `s` is an RFC 3261 token (25.1: alphanumerics and `-.!%*_+\`'~`), not empty.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// Whether a Supported or Require header of `msg` lists the option tag `tag` (RFC 3261
/// 20.32, 20.37; lists split like any header list, tags compared case-insensitively).
pub fn has_option_tag<M: HasHeaders>(msg: &M, header: &str, tag: &str) -> bool {
    header_values(msg, header)
        .iter()
        .any(|t| t.trim().eq_ignore_ascii_case(tag))
}

/// Keeps only the headers named in `names` and drops the body: what a dialog still
/// needs of its initial request once that is answered (the rest is memory held for
/// the whole call).
pub fn keep_only(req: &mut Request, names: &[&str]) {
    req.headers
        .retain(|h| names.iter().any(|n| h.name().eq_ignore_ascii_case(n)));
    req.headers.0.shrink_to_fit();
    req.body = Vec::new();
}

/// Every line of a header by name, as received (a list stays one line; empty lines
/// are left out): what a response copies, so that its size follows the request's
/// instead of growing with each list element (a `Via: a,a,a,...` of single bytes
/// would otherwise come back as a line of its own per byte pair).
pub fn header_lines<'a, M: HasHeaders>(msg: &'a M, name: &'a str) -> impl Iterator<Item = &'a str> {
    msg.headers()
        .iter()
        .filter(move |h| h.name().eq_ignore_ascii_case(name))
        .map(|h| h.value().trim())
        .filter(|v| !v.is_empty())
}

/// Every value of a header by name, splitting comma-separated lists (Via, Record-Route).
pub fn header_values<'a, M: HasHeaders>(msg: &'a M, name: &str) -> Vec<&'a str> {
    msg.headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .flat_map(|h| list_elements(h.value()))
        .collect()
}

/// Splits a header value on commas that are outside quotes and angle brackets.
pub fn split_list(value: &str) -> Vec<&str> {
    list_elements(value).collect()
}

/// The elements of a header list, as [`split_list`] gives them, without allocating.
/// An empty element (`a,,b`) carries nothing: left out, so that nothing built from
/// the list grows with commas a peer sent.
pub fn list_elements(value: &str) -> Elements<'_> {
    Elements {
        rest: Some(value),
        sep: b',',
    }
}

/// The `;`-separated parts of a header value (its first part, then its parameters),
/// split outside quoted strings (RFC 3261 25.1 allows `;` inside them), trimmed,
/// empty ones left out; no allocation.
pub fn param_parts(value: &str) -> Elements<'_> {
    Elements {
        rest: Some(value),
        sep: b';',
    }
}

/// A splitter honouring quotes and angle brackets: [`list_elements`], [`param_parts`].
pub struct Elements<'a> {
    rest: Option<&'a str>,
    /// An ASCII separator: the scan goes by bytes (every byte it looks for is ASCII,
    /// and no byte of a multi-byte UTF-8 character is), so a cut is a char boundary.
    sep: u8,
}

impl<'a> Iterator for Elements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            let rest = self.rest?;
            let (mut depth, mut quoted, mut escaped) = (0i32, false, false);
            let mut cut = None;
            for (i, &b) in rest.as_bytes().iter().enumerate() {
                // Inside a quoted string a backslash escapes the next character
                // (RFC 3261 25.1 quoted-pair): `\"` does not end it.
                if quoted && (escaped || b == b'\\') {
                    escaped = !escaped;
                    continue;
                }
                match b {
                    b'"' => quoted = !quoted,
                    b'<' if !quoted => depth += 1,
                    b'>' if !quoted => depth -= 1,
                    b if b == self.sep && !quoted && depth == 0 => {
                        cut = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let item = match cut {
                Some(i) => {
                    self.rest = Some(&rest[i + 1..]);
                    &rest[..i]
                }
                None => {
                    self.rest = None;
                    rest
                }
            };
            let item = item.trim();
            if !item.is_empty() {
                return Some(item);
            }
        }
    }
}

/// The first element of a header list by name, across its lines (empty lines and
/// elements skipped): the top Via, without allocating.
pub fn first_value<'a, M: HasHeaders>(msg: &'a M, name: &str) -> Option<&'a str> {
    msg.headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .find_map(|h| list_elements(h.value()).next())
}

fn info(msg: &SipMessage) -> Result<Info, ParseError> {
    let call_id = header(msg, "Call-ID")
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(ParseError::Header("Call-ID"))?;
    let cseq = header(msg, "CSeq").ok_or(ParseError::Header("CSeq"))?;
    let (num, method) = cseq
        .trim()
        .split_once(char::is_whitespace)
        .ok_or(ParseError::Header("CSeq"))?;
    // RFC 3261 8.1.1.5: the sequence number MUST be less than 2**31.
    let cseq: u32 = num
        .parse()
        .ok()
        .filter(|n| *n < 1 << 31)
        .ok_or(ParseError::Header("CSeq"))?;
    let cseq_method = method_from(method.trim()).ok_or(ParseError::Header("CSeq"))?;
    let via = first_value(msg, "Via").ok_or(ParseError::Header("Via"))?;
    // A branch names a transaction: one is needed (an empty one names none), and at
    // most MAX_BRANCH bytes of it are kept for the transaction's life, twice.
    let branch = param(via, "branch")
        .filter(|b| !b.is_empty() && b.len() <= MAX_BRANCH)
        .ok_or(ParseError::Header("Via"))?
        .to_string();
    let from = header(msg, "From").ok_or(ParseError::Header("From"))?;
    let to = header(msg, "To").ok_or(ParseError::Header("To"))?;
    if let SipMessage::Request(r) = msg {
        if r.method != cseq_method && !(r.method == Method::Ack && cseq_method == Method::Invite) {
            return Err(ParseError::Header("CSeq"));
        }
    }
    Ok(Info {
        call_id: call_id.to_string(),
        cseq,
        cseq_method,
        branch,
        from_tag: tag(from).map(str::to_string),
        to_tag: tag(to).map(str::to_string),
        reply_port: crate::via::reply_port(via),
    })
}

/// The longest Via branch taken (RFC 3261 generators use tens of bytes).
pub const MAX_BRANCH: usize = 256;

pub fn method_from(s: &str) -> Option<Method> {
    Some(match s {
        "INVITE" => Method::Invite,
        "ACK" => Method::Ack,
        "BYE" => Method::Bye,
        "CANCEL" => Method::Cancel,
        "OPTIONS" => Method::Options,
        "INFO" => Method::Info,
        "UPDATE" => Method::Update,
        "PRACK" => Method::PRack,
        "REFER" => Method::Refer,
        "NOTIFY" => Method::Notify,
        "MESSAGE" => Method::Message,
        "SUBSCRIBE" => Method::Subscribe,
        "REGISTER" => Method::Register,
        "PUBLISH" => Method::Publish,
        _ => return None,
    })
}

/// The method's name as a static string (metric labels without an allocation).
pub fn method_name(m: Method) -> &'static str {
    match m {
        Method::Invite => "INVITE",
        Method::Ack => "ACK",
        Method::Bye => "BYE",
        Method::Cancel => "CANCEL",
        Method::Options => "OPTIONS",
        Method::Info => "INFO",
        Method::Update => "UPDATE",
        Method::PRack => "PRACK",
        Method::Refer => "REFER",
        Method::Notify => "NOTIFY",
        Method::Message => "MESSAGE",
        Method::Subscribe => "SUBSCRIBE",
        Method::Register => "REGISTER",
        Method::Publish => "PUBLISH",
    }
}

/// A `;name=value` parameter of a header value (outside any `<...>` part and any
/// quoted string: a `;` or `>` inside either is not a parameter's edge).
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let matches = |p: &'a str| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    };
    if !value.bytes().any(|b| matches!(b, b'"' | b'<' | b'>')) {
        // The common Via has no quoted string and no `<...>`: a plain split gives the
        // same answer (with either, only the full splitter does: an unquoted `<...>`
        // may also stand in a parameter's value).
        return value.split(';').skip(1).find_map(matches);
    }
    param_parts(value).skip(1).find_map(matches)
}

/// The tag parameter of a From or To value.
pub fn tag(value: &str) -> Option<&str> {
    param(value, "tag").filter(|t| !t.is_empty())
}

/// The URI inside a name-addr (`"Bob" <sip:bob@host>;tag=x`) or an addr-spec.
pub fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

/// The user part of a SIP or tel URI, without parameters: `sip:0501234567@h` → `0501234567`.
pub fn uri_user(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .or_else(|| uri.strip_prefix("tel:"))?;
    let user = match rest.find('@') {
        Some(i) => &rest[..i],
        None if uri.starts_with("tel:") => rest,
        None => return None,
    };
    let user = user.split([';', ':']).next().unwrap_or(user);
    (!user.is_empty()).then_some(user)
}

/// `host:port` of a SIP URI as a socket address, if it is a literal IP.
pub fn uri_addr(uri: &str) -> Option<SocketAddr> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let hostport = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let hostport = hostport.split([';', '?']).next()?;
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip: std::net::IpAddr = hostport
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, 5060))
}

/// The user part of the Request-URI (the dialled number).
pub fn request_user(req: &Request) -> Option<String> {
    req.uri
        .auth
        .as_ref()
        .map(|a| a.user.clone())
        .filter(|u| !u.is_empty())
}

/// The SDP body if the message carries one: a body whose Content-Type is
/// `application/sdp` (any case, parameters allowed). A body without Content-Type is
/// not taken for SDP (RFC 3261 20.15 requires the header with a body; [`parse`]
/// refuses such requests).
pub fn sdp_body<M: HasHeaders>(msg: &M, body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let ct = header(msg, "Content-Type")?;
    let media_type = ct.split(';').next().unwrap_or_default().trim();
    media_type
        .eq_ignore_ascii_case("application/sdp")
        .then(|| String::from_utf8_lossy(body).into_owned())
}

/// The seconds of a message's Retry-After (RFC 3261 20.33: `delta-seconds [comment]
/// *(;param)`), at most a day: its digits only, never the comment or parameters a
/// peer wrote.
pub fn retry_after_seconds<M: HasHeaders>(msg: &M) -> Option<u32> {
    let value = header(msg, "Retry-After")?;
    let digits = value.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse::<u32>().ok().filter(|s| *s <= 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_values() {
        let rows: &[(&str, Option<u32>)] = &[
            ("120", Some(120)),
            ("120 (in a meeting);duration=60", Some(120)),
            ("0", Some(0)),
            ("86400", Some(86_400)),
            ("86401", None),
            ("99999999999999999999", None),
            ("soon", None),
            ("", None),
            ("-5", None),
        ];
        for (value, want) in rows {
            let text = format!(
                "SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nRetry-After: {value}\r\nContent-Length: 0\r\n\r\n"
            );
            let Ok((SipMessage::Response(resp), _)) = parse(text.as_bytes()) else {
                panic!("{text}")
            };
            assert_eq!(retry_after_seconds(&resp), *want, "{value:?}");
        }
    }

    const INVITE: &str = "INVITE sip:0501234567@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-0\r\n\
f: \"Alice\" <sip:09012345678@127.0.0.1>;tag=abc\r\n\
t: <sip:0501234567@127.0.0.1>\r\n\
i: call-1@host\r\n\
CSeq: 7 INVITE\r\n\
Max-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn extracts_info_with_compact_headers() {
        let (msg, info) = parse(INVITE.as_bytes()).unwrap();
        assert_eq!(info.call_id, "call-1@host");
        assert_eq!(info.cseq, 7);
        assert_eq!(info.cseq_method, Method::Invite);
        assert_eq!(info.branch, "z9hG4bK-1");
        assert_eq!(info.from_tag.as_deref(), Some("abc"));
        assert_eq!(info.to_tag, None);
        assert_eq!(header_values(&msg, "Via").len(), 2);
        let SipMessage::Request(req) = msg else {
            panic!()
        };
        assert_eq!(request_user(&req).as_deref(), Some("0501234567"));
    }

    #[test]
    fn option_tags_in_lists() {
        let with = |h: &str| {
            let text = INVITE.replace(
                "Max-Forwards: 70\r\n",
                &format!("Max-Forwards: 70\r\n{h}\r\n"),
            );
            match parse(text.as_bytes()).unwrap().0 {
                SipMessage::Request(r) => r,
                _ => panic!(),
            }
        };
        let rows = [
            ("Supported: 100rel, timer", "Supported", "timer", true),
            ("Supported: 100rel,Timer", "Supported", "timer", true),
            ("Require: 100rel", "Require", "100rel", true),
            ("Require: timer", "Supported", "timer", false),
            ("Supported: timers", "Supported", "timer", false),
        ];
        for (line, header, tag, want) in rows {
            assert_eq!(has_option_tag(&with(line), header, tag), want, "{line}");
        }
    }

    #[test]
    fn an_answered_request_keeps_only_what_its_dialog_needs() {
        let (msg, _) = parse(INVITE.as_bytes()).unwrap();
        let SipMessage::Request(mut req) = msg else {
            panic!()
        };
        req.body = b"v=0".to_vec();
        keep_only(&mut req, &["From", "To", "Call-ID"]);
        assert!(
            header(&req, "From").is_some_and(|f| f.contains("tag=abc")),
            "compact f: kept"
        );
        assert!(header(&req, "To").is_some());
        assert_eq!(header(&req, "Call-ID"), Some("call-1@host"));
        assert_eq!(header(&req, "Via"), None);
        assert_eq!(header(&req, "Max-Forwards"), None);
        assert!(req.body.is_empty());
    }

    #[test]
    fn malformed_messages_are_errors() {
        let cases: &[(&str, &str)] = &[
            ("garbage", "hello world"),
            ("no call-id", &INVITE.replace("i: call-1@host\r\n", "")),
            ("bad cseq", &INVITE.replace("CSeq: 7 INVITE", "CSeq: seven INVITE")),
            ("cseq method mismatch", &INVITE.replace("CSeq: 7 INVITE", "CSeq: 7 BYE")),
            ("no via", &INVITE.replace("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-0\r\n", "")),
            ("no branch", &INVITE.replace(";branch=z9hG4bK-1", "")),
            ("empty branch", &INVITE.replace(";branch=z9hG4bK-1", ";branch=")),
            ("bare branch", &INVITE.replace(";branch=z9hG4bK-1", ";branch")),
            (
                "branch too long",
                &INVITE.replace("z9hG4bK-1", &format!("z9hG4bK{}", "x".repeat(MAX_BRANCH))),
            ),
            (
                // A datagram's header section is capped as a stream's is.
                "header section too long",
                &INVITE.replace(
                    "Max-Forwards: 70\r\n",
                    &format!("Max-Forwards: 70\r\nX-Pad: {}\r\n", "p".repeat(crate::framing::MAX_HEADER)),
                ),
            ),
            ("no from", &INVITE.replace("f: \"Alice\" <sip:09012345678@127.0.0.1>;tag=abc\r\n", "")),
            ("truncated", &INVITE[..60]),
        ];
        for (name, text) in cases {
            assert!(parse(text.as_bytes()).is_err(), "{name}");
        }
        // Just within both caps: taken.
        let fits = INVITE
            .replace(
                "z9hG4bK-1",
                &format!("z9hG4bK{}", "x".repeat(MAX_BRANCH - 7)),
            )
            .replace(
                "Max-Forwards: 70\r\n",
                &format!(
                    "Max-Forwards: 70\r\nX-Pad: {}\r\n",
                    "p".repeat(crate::framing::MAX_HEADER - INVITE.len() - 300)
                ),
            );
        let (_, info) = parse(fits.as_bytes()).expect("fits");
        assert_eq!(info.branch.len(), MAX_BRANCH);
    }

    /// Each row: a change to a valid INVITE → the status a request failing so is
    /// answered with (0 = parses).
    #[test]
    fn start_line_and_body_length_rules() {
        let with_body = |clen: &str, body: &str| {
            INVITE.replace(
                "Content-Length: 0\r\n\r\n",
                &format!("Content-Type: text/plain\r\nContent-Length: {clen}\r\n\r\n{body}"),
            )
        };
        let cases: &[(&str, String, u16)] = &[
            ("valid", INVITE.to_string(), 0),
            (
                "unknown method",
                INVITE
                    .replacen("INVITE sip", "FOO sip", 1)
                    .replace("7 INVITE", "7 FOO"),
                501,
            ),
            (
                "other version",
                INVITE.replacen("5060 SIP/2.0", "5060 SIP/3.0", 1),
                505,
            ),
            (
                "two spaces",
                INVITE.replacen("INVITE sip", "INVITE  sip", 1),
                400,
            ),
            (
                "space in the URI",
                INVITE.replacen("sip:0501234567@", "sip:0501 234567@", 1),
                400,
            ),
            (
                "lower-case version",
                INVITE.replacen("5060 SIP/2.0", "5060 sip/2.0", 1),
                400,
            ),
            (
                "body shorter than Content-Length",
                with_body("10", "abc"),
                400,
            ),
            ("negative Content-Length", with_body("-1", ""), 400),
            ("a signed Content-Length", with_body("+3", "abc"), 400),
            ("an empty Content-Length", with_body("", ""), 400),
            (
                "bytes after the body are dropped",
                with_body("3", "abcdef"),
                0,
            ),
            (
                "a body without Content-Type (RFC 3261 20.15)",
                INVITE.replace("Content-Length: 0\r\n\r\n", "Content-Length: 3\r\n\r\nv=0"),
                400,
            ),
            (
                "CSeq of 2^31 (RFC 3261 8.1.1.5)",
                INVITE.replace("CSeq: 7 INVITE", "CSeq: 2147483648 INVITE"),
                400,
            ),
            (
                "CSeq of 2^31 - 1",
                INVITE.replace("CSeq: 7 INVITE", "CSeq: 2147483647 INVITE"),
                0,
            ),
            (
                "unterminated quoted string in To (RFC 4475 3.1.2.6)",
                INVITE.replace("t: <sip:", "t: \"Mr. J. User <sip:"),
                400,
            ),
            (
                "escaped quote inside a display name",
                INVITE.replace("f: \"Alice\"", "f: \"Al\\\"ice\""),
                0,
            ),
            (
                "escaped quote left open",
                INVITE.replace("f: \"Alice\"", "f: \"Alice\\\""),
                400,
            ),
            (
                "a lone quote in a free-text header",
                INVITE.replace(
                    "Max-Forwards: 70",
                    "Max-Forwards: 70\r\nSubject: 5\" screen",
                ),
                0,
            ),
            (
                "NUL in a header",
                INVITE.replace("i: call-1@host", "i: call-1\0@host"),
                400,
            ),
            (
                "folded headers (RFC 4475 3.1.1.1)",
                INVITE.replace("CSeq: 7 INVITE", "CSeq: 7\r\n\t INVITE"),
                0,
            ),
            (
                "status code beyond 699",
                "SIP/2.0 700 Odd\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n".to_string(),
                400,
            ),
            (
                "status code of two digits",
                "SIP/2.0 99 Odd\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n".to_string(),
                400,
            ),
            (
                "response with another version",
                "SIP/3.0 200 OK\r\n\r\n".to_string(),
                505,
            ),
        ];
        for (name, text, want) in cases {
            match parse(text.as_bytes()) {
                Ok((msg, _)) => {
                    assert_eq!(*want, 0, "{name} parsed");
                    if let SipMessage::Request(r) = msg {
                        assert!(r.body.len() <= 3, "{name}: body {:?}", r.body);
                    }
                }
                Err(e) => assert_eq!(e.status(), *want, "{name}: {e}"),
            }
        }
        let reply = crate::build::reject_unparsed(
            INVITE
                .replacen("5060 SIP/2.0", "5060 SIP/3.0", 1)
                .as_bytes(),
            505,
            "v",
        )
        .unwrap();
        assert!(String::from_utf8(reply)
            .unwrap()
            .starts_with("SIP/2.0 505 Version Not Supported\r\n"));
    }

    /// Mutated INVITEs (flipped, dropped, duplicated, inserted bytes; truncations) must
    /// parse or fail cleanly; the helpers must not panic on whatever parses.
    #[test]
    fn mutated_messages_never_panic() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let base = INVITE.as_bytes();
        let alphabet = b" :;,<>@=\"\r\n\t0123456789abcSIP/.-+[]%";
        let mut parsed = 0;
        for _ in 0..20_000 {
            let mut m = base.to_vec();
            for _ in 0..(1 + next() % 4) {
                let at = (next() as usize) % m.len().max(1);
                match next() % 5 {
                    0 => m[at] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        m.remove(at);
                    }
                    2 => m.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                    3 => m.truncate(at),
                    _ => {
                        let end = (at + (next() as usize) % 40).min(m.len());
                        let chunk = m[at..end].to_vec();
                        m.splice(at..at, chunk);
                    }
                }
                if m.is_empty() {
                    m.push(b'x');
                }
            }
            if let Ok((msg, _)) = parse(&m) {
                parsed += 1;
                let _ = header_values(&msg, "Via");
                if let SipMessage::Request(r) = &msg {
                    let _ = request_user(r);
                    let _ = sdp_body(r, &r.body);
                    let _ = header(r, "From").map(|f| (uri_user(uri_of(f)), tag(f)));
                    let _ = crate::build::response(r, 400, Some("t"), &[], None);
                }
            } else {
                let _ = crate::build::bad_request_for(&m, "x");
            }
        }
        assert!(
            parsed > 1000,
            "the mutations should leave many messages parseable ({parsed})"
        );
    }

    /// Each row: Content-Type lines of a request with a body → whether it is SDP.
    #[test]
    fn sdp_bodies() {
        let rows: &[(&str, bool)] = &[
            ("Content-Type: application/sdp\r\n", true),
            ("c: Application/SDP ; charset=utf-8\r\n", true),
            ("Content-Type:\r\n application/sdp\r\n", true),
            ("Content-Type:\tapplication/sdp\t\r\n", true),
            ("Content-Type: application/sdpx\r\n", false),
            ("Content-Type: multipart/mixed;boundary=x\r\n", false),
            ("Content-Type: text/plain\r\n", false),
        ];
        for (ct, want) in rows {
            let text = INVITE.replace(
                "Content-Length: 0\r\n\r\n",
                &format!("{ct}Content-Length: 3\r\n\r\nv=0"),
            );
            let (SipMessage::Request(r), _) = parse(text.as_bytes()).unwrap() else {
                panic!()
            };
            assert_eq!(sdp_body(&r, &r.body).is_some(), *want, "{ct:?}");
        }
    }

    /// RFC 4475 3.1.1.1 ("wsinv") in the shape of a new call: folded headers, tabs,
    /// odd spacing around colons and slashes, a folded Content-Type; it parses, and its
    /// body is SDP.
    #[test]
    fn unusual_whitespace_and_folding_are_valid() {
        let sdp = "v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.3\r\nt=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\n";
        let text = format!(
            "INVITE sip:0501234567@127.0.0.1;unknownparam SIP/2.0\r\n\
TO :\r\n sip:0501234567@127.0.0.1 \r\n\
from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n\
MaX-fOrWaRdS: 0068\r\n\
Call-ID: wsinv.ndaksdj@192.0.2.1\r\n\
Content-Length   : {len}\r\n\
cseq: 0009\r\n  INVITE\r\n\
Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n\
s :\r\n\
NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n\
UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n\
Content-Type:\r\n\t application/sdp\r\n\
Route:\r\n <sip:services.example.com;lr;unknownwith=value;unknown-param>\r\n\
v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n\
m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33\r\n\r\n{sdp}",
            len = sdp.len()
        );
        let (msg, info) = parse(text.as_bytes()).unwrap();
        assert_eq!(info.call_id, "wsinv.ndaksdj@192.0.2.1");
        assert_eq!((info.cseq, info.cseq_method), (9, Method::Invite));
        assert_eq!(info.branch, "390skdjuw");
        assert_eq!(info.from_tag.as_deref(), Some("98asjd8"));
        assert_eq!(info.to_tag, None);
        let SipMessage::Request(r) = msg else {
            panic!()
        };
        assert_eq!(header(&r, "Content-Type"), Some("application/sdp"));
        assert_eq!(sdp_body(&r, &r.body).as_deref(), Some(sdp));
        assert_eq!(header(&r, "Max-Forwards"), Some("0068"));
    }

    #[test]
    fn method_names_round_trip() {
        for m in Method::all() {
            assert_eq!(method_from(method_name(m)), Some(m));
            assert_eq!(method_name(m), m.to_string());
        }
    }

    #[test]
    fn uri_helpers() {
        assert_eq!(uri_of("\"A, B\" <sip:1@h;lr>;tag=x"), "sip:1@h;lr");
        assert_eq!(uri_of("sip:1@h;tag=x"), "sip:1@h");
        assert_eq!(
            uri_user("sip:0312345678@127.0.0.1:5070"),
            Some("0312345678")
        );
        assert_eq!(uri_user("sip:0312345678;npdi@h"), Some("0312345678"));
        assert_eq!(uri_user("tel:+81312345678"), Some("+81312345678"));
        assert_eq!(uri_user("sip:host.example"), None);
        assert_eq!(
            uri_addr("sip:u@127.0.0.1:5070;transport=tcp"),
            Some("127.0.0.1:5070".parse().unwrap())
        );
        assert_eq!(
            uri_addr("sip:127.0.0.1;lr"),
            Some("127.0.0.1:5060".parse().unwrap())
        );
        assert_eq!(
            uri_addr("sip:u@[::1]:5080"),
            Some("[::1]:5080".parse().unwrap())
        );
        assert_eq!(
            split_list("<sip:a;lr>, \"x,y\" <sip:b>"),
            vec!["<sip:a;lr>", "\"x,y\" <sip:b>"]
        );
        assert_eq!(tag("<sip:a>;tag=1"), Some("1"));
        assert_eq!(
            param("SIP/2.0/UDP h;branch=z9hG4bKx;rport", "branch"),
            Some("z9hG4bKx")
        );
    }

    /// Quoted strings (with `\"` escapes, RFC 3261 25.1) and angle brackets hide the
    /// separators inside them: from the list splitter, the parameter splitter and
    /// `param` alike (which read a `;` or `>` in a quoted value as an edge).
    #[test]
    fn separators_inside_quotes_and_brackets_are_not_edges() {
        let lists: &[(&str, &[&str])] = &[
            ("a, b", &["a", "b"]),
            ("\"x,y\" <sip:b>, c", &["\"x,y\" <sip:b>", "c"]),
            (r#"h;x="a\",b", c"#, &[r#"h;x="a\",b""#, "c"]),
            (r#"h;x="\"";rport, c"#, &[r#"h;x="\"";rport"#, "c"]),
            (r#"h;x="a\\", c"#, &[r#"h;x="a\\""#, "c"]),
            ("<sip:a,b>, c", &["<sip:a,b>", "c"]),
        ];
        for (value, want) in lists {
            assert_eq!(list_elements(value).collect::<Vec<_>>(), *want, "{value}");
        }
        let params: &[(&str, &str, Option<&str>)] = &[
            // An unquoted `<...>` in a parameter's value hides nothing before it.
            ("<sip:a@b>;tag=1;x=<y>", "tag", Some("1")),
            (
                "SIP/2.0/UDP h;branch=z9hG4bK1;x=a>b",
                "branch",
                Some("z9hG4bK1"),
            ),
            ("<sip:a>;p=<sip:b>;y=2", "p", Some("<sip:b>")),
            (
                "SIP/2.0/UDP h;branch=z9hG4bK1;x=\"a>b\"",
                "branch",
                Some("z9hG4bK1"),
            ),
            (
                "SIP/2.0/UDP h;x=\";branch=z9hG4bKa\";branch=z9hG4bKb",
                "branch",
                Some("z9hG4bKb"),
            ),
            (
                r#"SIP/2.0/UDP h;x="\"";rport;branch=z9hG4bK1"#,
                "rport",
                Some(""),
            ),
            ("\"Bob; Jr\" <sip:b@h;tag=in>;tag=out", "tag", Some("out")),
            ("<sip:b@h;tag=in>", "tag", None),
            ("sip:b@h;tag=bare", "tag", Some("bare")),
        ];
        for (value, name, want) in params {
            assert_eq!(param(value, name), *want, "{value}");
        }
    }
}
