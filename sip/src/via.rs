//! The top Via of a request: where its responses go and what the node fills in.
//!
//! - Over UDP a response goes to the request's source address at the port the Via's
//!   sent-by names (RFC 3261 18.2.2), or at the source port when the Via asks for
//!   `rport` (RFC 3581): [`reply_port`].
//! - Over a stream it goes on the connection the request came on; when that has
//!   closed, on a new connection to the source address at the sent-by port (the
//!   transport's default port if it names none): [`reopen_port`], read from the
//!   response itself, as that is the rare path.
//! - On receipt the node writes into the top Via what it saw (RFC 3261 18.2.1, RFC
//!   3581 4): `received` with the source address when the sent-by host is not that
//!   address or the Via asks for `rport`, and `rport` with the source port when it
//!   asks; every response copies the Via, so the peer learns its public address:
//!   [`stamp`]. A common Via (its host the source address, no `rport`) is left as it
//!   came, without an allocation.

use crate::parse::{list_elements, param, param_parts, Info, Peer, Transport};
use rsipstack::sip::{headers::Via, Header, Request};
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

/// The sent-by of a Via value (`SIP/2.0/UDP host[:port][;params]`, spaces allowed
/// around the protocol's slashes and the port's colon): its host (an IPv6 reference
/// without its brackets) and its port text, if any. None if it does not parse.
fn sent_by(via: &str) -> Option<(&str, Option<&str>)> {
    let sent_by = via.split(';').next()?.trim();
    // The protocol ends with its transport token; the sent-by follows.
    let after_slash = sent_by.rsplit_once('/')?.1.trim_start();
    let host_port = after_slash.split_once(char::is_whitespace)?.1.trim();
    // The port follows the colon after an IPv6 reference's `]`, else the first colon.
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            let after = after.trim_start();
            // Nothing but a `:port` may follow the reference.
            let port = after.strip_prefix(':');
            if port.is_none() && !after.is_empty() {
                return None;
            }
            (host, port)
        }
        None => match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    let host = host.trim();
    (!host.is_empty()).then_some((host, port.map(str::trim)))
}

/// The port a response over UDP goes to (see [`crate::Info::reply_port`]): the
/// sent-by's (5060 if it names none); None, the source port, when the Via asks for
/// `rport` or its sent-by does not parse.
pub(crate) fn reply_port(via: &str) -> Option<u16> {
    if param(via, "rport").is_some() {
        return None;
    }
    port_or(sent_by(via)?.1, 5060)
}

fn param_name(part: &str) -> &str {
    part.split('=').next().unwrap_or_default().trim()
}

fn port_or(port: Option<&str>, default: u16) -> Option<u16> {
    match port {
        None => Some(default),
        // `port = 1*DIGIT` (RFC 3261 25.1): no sign, nothing else.
        Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => None,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0),
    }
}

/// Where a response goes over a stream whose connection has closed: the port of its
/// top Via's sent-by (the transport's default, 5060 or 5061, if it names none). None
/// when `data` is not a response or its top Via does not parse.
pub(crate) fn reopen_port(data: &[u8], transport: Transport) -> Option<u16> {
    if !data.starts_with(b"SIP/2.0 ") {
        return None;
    }
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(data.len());
    let head = std::str::from_utf8(&data[..end]).ok()?;
    let top = head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        let via = name.eq_ignore_ascii_case("via") || name.eq_ignore_ascii_case("v");
        via.then(|| list_elements(value).next()).flatten()
    })?;
    let default = if transport == Transport::Tls {
        5061
    } else {
        5060
    };
    port_or(sent_by(top)?.1, default)
}

/// Writes `received` and `rport` into the top Via of `req`, received from `src` (see
/// the module's doc). A `received` or `rport` value the peer wrote itself is replaced.
/// An IPv4 peer read on a dual-stack socket (`::ffff:a.b.c.d`) is written as IPv4.
/// One pass over the top Via and its parameters; nothing allocated unless it changes.
pub fn stamp(req: &mut Request, src: SocketAddr) {
    // The top Via: the first element of the first Via line that has one.
    let Some((index, value, top)) = req.headers.iter().enumerate().find_map(|(i, h)| {
        let Header::Via(_) = h else { return None };
        let value = h.value();
        list_elements(value).next().map(|top| (i, value, top))
    }) else {
        return;
    };
    let ip = src.ip().to_canonical();
    let (mut wants_rport, mut had_received) = (false, false);
    for p in param_parts(top).skip(1) {
        let name = param_name(p);
        wants_rport |= name.eq_ignore_ascii_case("rport");
        had_received |= name.eq_ignore_ascii_case("received");
    }
    let host_is_source = sent_by(top)
        .and_then(|(host, _)| host.parse::<IpAddr>().ok())
        .is_some_and(|host| host.to_canonical() == ip);
    if !wants_rport && host_is_source && !had_received {
        return;
    }
    let mut out = String::with_capacity(value.len() + 40);
    let mut parts = param_parts(top);
    out.push_str(parts.next().unwrap_or_default());
    for p in parts {
        let name = param_name(p);
        if !name.eq_ignore_ascii_case("received") && !name.eq_ignore_ascii_case("rport") {
            out.push(';');
            out.push_str(p);
        }
    }
    if wants_rport || !host_is_source {
        let _ = write!(out, ";received={ip}");
    }
    if wants_rport {
        let _ = write!(out, ";rport={}", src.port());
    }
    // The rest of the list (other Vias on the same line) as it came. `top` is a slice
    // of `value` (the splitter trims), so what follows it starts after its end.
    let top_end = top.as_ptr() as usize - value.as_ptr() as usize + top.len();
    if let Some(rest) = value[top_end..].trim_start().strip_prefix(',') {
        out.push(',');
        out.push_str(rest.trim_start());
    }
    req.headers.0[index] = Header::Via(Via::new(out));
}

impl Peer {
    /// Where a response to a request that came from this peer goes: over UDP the
    /// source address at the Via's port ([`crate::Info::reply_port`]); over a stream,
    /// the connection it came on.
    pub fn reply_to(self, info: &Info) -> Peer {
        match (self.transport, info.reply_port) {
            (Transport::Udp, Some(port)) => Peer {
                addr: SocketAddr::new(self.addr.ip(), port),
                ..self
            },
            _ => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;
    use rsipstack::sip::SipMessage;

    /// RFC 3261 18.2.2 and RFC 3581: a response over UDP goes to the source address
    /// at the Via's port (5060 if it names none), or the source port when the Via
    /// asks for `rport` or names a port that does not parse.
    #[test]
    fn responses_go_to_the_vias_port_unless_it_asks_for_rport() {
        let cases: &[(&str, Option<u16>)] = &[
            ("SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK1", Some(5062)),
            ("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1", Some(5060)),
            (
                "SIP/2.0/UDP proxy.example.net:5080;branch=z9hG4bK1",
                Some(5080),
            ),
            ("SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bK1", Some(5070)),
            ("SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK1", Some(5060)),
            ("SIP / 2.0 / UDP 10.0.0.1:5064;branch=z9hG4bK1", Some(5064)),
            ("SIP/2.0/UDP 10.0.0.1 : 5066;branch=z9hG4bK1", Some(5066)),
            ("SIP/2.0/UDP 10.0.0.1: 5067 ;branch=z9hG4bK1", Some(5067)),
            ("SIP/2.0/UDP  10.0.0.1;branch=z9hG4bK1", Some(5060)),
            ("SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK1;rport", None),
            ("SIP/2.0/UDP 10.0.0.1:5062;rport=4000;branch=z9hG4bK1", None),
            ("SIP/2.0/UDP 10.0.0.1:0;branch=z9hG4bK1", None),
            ("SIP/2.0/UDP 10.0.0.1:99999;branch=z9hG4bK1", None),
            ("SIP/2.0/UDP 10.0.0.1:x;branch=z9hG4bK1", None),
            ("SIP/2.0/UDP [2001:db8::1;branch=z9hG4bK1", None),
            ("SIP/2.0/UDP ;branch=z9hG4bK1", None),
            // `port = 1*DIGIT`: nothing but a `:port` after an IPv6 reference, no sign.
            ("SIP/2.0/UDP [2001:db8::1]5070;branch=z9hG4bK1", None),
            ("SIP/2.0/UDP 10.0.0.1:+5062;branch=z9hG4bK1", None),
            ("SIP/2.0/UDP 10.0.0.1:;branch=z9hG4bK1", None),
            // An escaped quote does not end a quoted value: the `rport` after it counts.
            (
                r#"SIP/2.0/UDP 10.0.0.1:5062;x="\"";rport;branch=z9hG4bK1"#,
                None,
            ),
        ];
        for (via, want) in cases {
            assert_eq!(reply_port(via), *want, "{via}");
        }
        const INVITE: &str = "INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let (_, info) = parse(INVITE.as_bytes()).unwrap();
        assert_eq!(info.reply_port, Some(5061));
        let udp = Peer {
            transport: Transport::Udp,
            addr: src,
        };
        assert_eq!(udp.reply_to(&info).addr, "10.0.0.1:5061".parse().unwrap());
        let tcp = Peer {
            transport: Transport::Tcp,
            addr: src,
        };
        assert_eq!(
            tcp.reply_to(&info),
            tcp,
            "a stream answers on its connection"
        );
        let (_, info) = parse(INVITE.replace("z9hG4bK-1", "z9hG4bK-1;rport").as_bytes()).unwrap();
        assert_eq!(udp.reply_to(&info), udp, "rport: the source port");
    }

    /// Counts the allocations made on the thread that asks (tests run on several).
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local!(static COUNT: Cell<usize> = const { Cell::new(0) });

        pub struct Counting;

        // SAFETY: every call is passed on to the system allocator unchanged.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let _ = COUNT.try_with(|c| c.set(c.get() + 1));
                unsafe { System.alloc(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        pub fn allocations() -> usize {
            COUNT.with(Cell::get)
        }
    }

    #[global_allocator]
    static ALLOCATOR: counting::Counting = counting::Counting;

    /// The Via of every SIPp load test and of most trunks (its host the source, no
    /// `rport`) costs `stamp` and `reply_port` no allocation: they run on every request.
    #[test]
    fn the_common_via_costs_no_allocation() {
        let raw = "INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK1, SIP/2.0/UDP 10.0.0.8;branch=z9hG4bK0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
        let (SipMessage::Request(mut req), _) = parse(raw.as_bytes()).unwrap() else {
            panic!("a request");
        };
        let src: SocketAddr = "10.0.0.9:40000".parse().unwrap();
        let before = counting::allocations();
        stamp(&mut req, src);
        let top = crate::parse::first_value(&req, "Via").unwrap();
        assert_eq!(reply_port(top), Some(5060));
        assert_eq!(counting::allocations(), before, "allocations");
        assert_eq!(top, "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK1");
    }

    /// RFC 3261 18.2.2 over a stream whose connection closed: the top Via's sent-by
    /// port, the transport's default when it names none; nothing for requests.
    #[test]
    fn a_closed_streams_response_goes_to_the_vias_port() {
        let resp = |via: &str| format!("SIP/2.0 200 OK\r\n{via}\r\nCall-ID: c\r\n\r\n");
        let cases: &[(&str, Transport, Option<u16>)] = &[
            ("Via: SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK1;received=10.0.0.9", Transport::Tcp, Some(5070)),
            ("Via: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK1", Transport::Tcp, Some(5060)),
            ("v: SIP/2.0/TLS pbx.example.net;branch=z9hG4bK1", Transport::Tls, Some(5061)),
            ("via: SIP/2.0/TCP [2001:db8::1]:5090;branch=z9hG4bK1, SIP/2.0/TCP b:1;branch=z9hG4bK2", Transport::Tcp, Some(5090)),
            ("Via: SIP/2.0/TCP 10.0.0.1:0;branch=z9hG4bK1", Transport::Tcp, None),
            ("Via: garbage", Transport::Tcp, None),
            ("From: <sip:a@h>", Transport::Tcp, None),
        ];
        for (via, transport, want) in cases {
            assert_eq!(
                reopen_port(resp(via).as_bytes(), *transport),
                *want,
                "{via}"
            );
        }
        let request =
            "OPTIONS sip:a@h SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK1\r\n\r\n";
        assert_eq!(reopen_port(request.as_bytes(), Transport::Tcp), None);
    }

    /// RFC 3261 18.2.1, RFC 3581 4: what the node writes into a received request's top
    /// Via (source 10.0.0.9:40000), and what it leaves alone.
    #[test]
    fn the_top_via_gets_received_and_rport() {
        let cases: &[(&str, &str)] = &[
            // Host is the source, no rport: as it came.
            (
                "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK1",
                "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK1",
            ),
            // rport asked: both filled in, even when the host is the source.
            (
                "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK1;rport",
                "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK1;received=10.0.0.9;rport=40000",
            ),
            // Another host (a name, or a private address behind NAT): received.
            (
                "SIP/2.0/UDP pbx.example.net:5060;branch=z9hG4bK1",
                "SIP/2.0/UDP pbx.example.net:5060;branch=z9hG4bK1;received=10.0.0.9",
            ),
            (
                "SIP/2.0/UDP 192.168.1.5;rport;branch=z9hG4bK1",
                "SIP/2.0/UDP 192.168.1.5;branch=z9hG4bK1;received=10.0.0.9;rport=40000",
            ),
            // Values the peer wrote itself are replaced, not trusted.
            (
                "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1;received=1.2.3.4;rport=9",
                "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1;received=10.0.0.9;rport=40000",
            ),
            (
                "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1;received=1.2.3.4",
                "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1",
            ),
            // A quoted parameter value may hold `;` and `,`: kept whole.
            (
                "SIP/2.0/UDP 192.168.1.5;x=\"a;received=1,b\";branch=z9hG4bK1",
                "SIP/2.0/UDP 192.168.1.5;x=\"a;received=1,b\";branch=z9hG4bK1;received=10.0.0.9",
            ),
            (
                "SIP/2.0/UDP 10.0.0.9;x=\";rport\";branch=z9hG4bK1",
                "SIP/2.0/UDP 10.0.0.9;x=\";rport\";branch=z9hG4bK1",
            ),
            // An escaped quote (`\\"`) does not end a quoted value: the comma after
            // it is inside, the `rport` after the value is the top Via's.
            (
                r#"SIP/2.0/UDP 192.168.1.5;branch=z9hG4bK1;x="a\",b""#,
                r#"SIP/2.0/UDP 192.168.1.5;branch=z9hG4bK1;x="a\",b";received=10.0.0.9"#,
            ),
            (
                r#"SIP/2.0/UDP 10.0.0.9;x="\"";rport;branch=z9hG4bK1"#,
                r#"SIP/2.0/UDP 10.0.0.9;x="\"";branch=z9hG4bK1;received=10.0.0.9;rport=40000"#,
            ),
            // Only the top Via of a list changes.
            (
                "SIP/2.0/UDP 192.168.1.5;branch=z9hG4bK1, SIP/2.0/UDP 192.168.1.6;branch=z9hG4bK0;rport",
                "SIP/2.0/UDP 192.168.1.5;branch=z9hG4bK1;received=10.0.0.9,SIP/2.0/UDP 192.168.1.6;branch=z9hG4bK0;rport",
            ),
        ];
        let src: SocketAddr = "10.0.0.9:40000".parse().unwrap();
        for (via, want) in cases {
            let raw = format!("OPTIONS sip:a@h SIP/2.0\r\nVia: {via}\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK9\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
            let (SipMessage::Request(mut req), _) = parse(raw.as_bytes()).unwrap() else {
                panic!("a request");
            };
            stamp(&mut req, src);
            let vias: Vec<&str> = crate::parse::header_lines(&req, "Via").collect();
            assert_eq!(vias, [*want, "SIP/2.0/UDP x;branch=z9hG4bK9"], "{via}");
        }
        // An IPv4 peer read on a dual-stack socket is written, and compared, as IPv4.
        let mapped: SocketAddr = "[::ffff:10.0.0.9]:40000".parse().unwrap();
        let vias = |first: &str| {
            let raw = format!("OPTIONS sip:a@h SIP/2.0\r\n{first}Via: SIP/2.0/UDP x;branch=z9hG4bK9\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n");
            let (SipMessage::Request(mut req), _) = parse(raw.as_bytes()).unwrap() else {
                panic!("a request");
            };
            stamp(&mut req, mapped);
            crate::parse::header_lines(&req, "Via")
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            vias("Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1\r\n")[0],
            "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1"
        );
        assert_eq!(
            vias("Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1;rport\r\n")[0],
            "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1;received=10.0.0.9;rport=40000"
        );
        // An empty Via line before the top Via: the top Via is still the one stamped.
        assert_eq!(
            vias("Via: \r\nVia: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1;rport\r\n")[0],
            "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1;received=10.0.0.9;rport=40000"
        );
        // An IPv6 source is written without brackets (RFC 3261 `received` grammar).
        let raw = "OPTIONS sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::1];rport;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let (SipMessage::Request(mut req), _) = parse(raw.as_bytes()).unwrap() else {
            panic!("a request");
        };
        stamp(&mut req, "[2001:db8::2]:5000".parse().unwrap());
        assert_eq!(
            crate::parse::header(&req, "Via"),
            Some("SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK1;received=2001:db8::2;rport=5000")
        );
    }
}
