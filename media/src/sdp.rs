//! SDP for media anchoring: the connection address and audio port of an offer or
//! answer are replaced by the node's, and the far end's are returned so the relay
//! knows where to send; the node's own answer when it answers a caller itself (a
//! prompt, the IVR), and an offer narrowed to the codec that answer chose. Pure text
//! in, text out.
//!
//! What one leg's body may tell the other is a short list (see [`rewrite`]): the
//! node anchors plain RTP (`RTP/AVP`, `RTP/AVPF`) and hides each leg's topology, so
//! ICE candidates (the far end's own addresses: they would let the other leg send
//! around the relay), SRTP keys and DTLS fingerprints (media the node relays, records
//! and listens to for DTMF must be plain RTP), SSRC names and free-text fields stay
//! on the side they came from.

use std::net::{IpAddr, SocketAddr};

/// The result of rewriting one SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub sdp: String,
    /// Where the far end said it receives audio; None on hold (0.0.0.0) or no audio.
    pub remote: Option<SocketAddr>,
    /// Its telephone-event payload type ([`telephone_event`]).
    pub dtmf: Option<u8>,
    /// The formats of its audio stream.
    pub formats: PayloadTypes,
    /// It puts the audio on hold (see `Body::holds`).
    pub held: bool,
}

/// A set of RTP payload types (0-127), without allocating: the formats of a party's
/// audio stream, which the relay checks before it takes packets in another party's
/// telephone-event type for keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadTypes(u128);

impl PayloadTypes {
    /// Not known (a call resumed from a checkpoint): every type, so that no other
    /// number than a party's own is taken for its keys.
    pub const UNKNOWN: PayloadTypes = PayloadTypes(u128::MAX);

    pub fn of(types: impl IntoIterator<Item = u8>) -> PayloadTypes {
        PayloadTypes(
            types
                .into_iter()
                .filter(|pt| *pt < 128)
                .fold(0, |set, pt| set | 1 << pt),
        )
    }

    pub fn contains(self, pt: u8) -> bool {
        pt < 128 && self.0 & (1 << pt) != 0
    }

    /// The set a checkpoint's list stands for ([`PayloadTypes::known`]).
    pub fn from_known(types: Option<&[u8]>) -> PayloadTypes {
        types.map_or(PayloadTypes::UNKNOWN, |t| {
            PayloadTypes::of(t.iter().copied())
        })
    }

    /// The types, in order; None for [`PayloadTypes::UNKNOWN`] (for a checkpoint).
    pub fn known(self) -> Option<Vec<u8>> {
        (self != PayloadTypes::UNKNOWN)
            .then(|| (0..128u8).filter(|pt| self.contains(*pt)).collect())
    }
}

/// An SDP body split once into its session-level lines and its streams, with the stream
/// the node anchors; every reader below works on it. Lines are trimmed at their end and
/// empty ones left out.
struct Body<'a> {
    /// The lines before the first m= line.
    session: Vec<&'a str>,
    /// Each m= line (after `m=`) with the lines up to the next one.
    streams: Vec<(&'a str, Vec<&'a str>)>,
    /// Which stream carries the audio the node anchors: the first audio stream over
    /// plain RTP (SRTP and DTLS cannot be relayed, recorded or searched for DTMF by the
    /// node) with a port, else the first one declined (port 0: audio off). Every other
    /// stream, an SRTP audio stream offered before a plain one included (an old way to
    /// offer SRTP as optional), is declined. Preferring a stream with a port keeps an
    /// answer that declines the SRTP stream as `m=audio 0 RTP/AVP`, or a re-offer that
    /// keeps a removed stream at port 0 before its new one, on the stream in use.
    anchored: Option<usize>,
}

impl<'a> Body<'a> {
    /// A body with a control character inside a line (a bare CR, a NUL: RFC 4566
    /// allows neither) anchors nothing: a peer ending lines at a lone CR would read
    /// whatever follows it (`a=ptime:20\rc=IN IP4 10.9.9.9`) as lines of their own,
    /// past the attribute allow-list.
    fn parse(sdp: &'a str) -> Body<'a> {
        let mut malformed = false;
        let mut session = Vec::new();
        let mut streams: Vec<(&str, Vec<&str>)> = Vec::new();
        for line in sdp.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            malformed |= line.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f);
            match (line.strip_prefix("m="), streams.last_mut()) {
                (Some(m), _) => streams.push((m, Vec::new())),
                (None, Some((_, lines))) => lines.push(line),
                (None, None) => session.push(line),
            }
        }
        let plain_audio = |m: &&str| {
            let f: Vec<&str> = m.split(' ').collect();
            f.first() == Some(&"audio") && f.get(2).is_some_and(|p| plain_rtp(p))
        };
        let declined = |m: &&str| m.split(' ').nth(1).and_then(media_port) == Some(0);
        let anchored = streams
            .iter()
            .position(|(m, _)| plain_audio(m) && !declined(m))
            .or_else(|| streams.iter().position(|(m, _)| plain_audio(m)))
            .filter(|_| !malformed);
        Body {
            session,
            streams,
            anchored,
        }
    }

    /// The anchored stream: its m= line (after `m=`) and its lines.
    fn audio(&self) -> Option<(&'a str, &[&'a str])> {
        let (m, lines) = self.streams.get(self.anchored?)?;
        Some((m, lines))
    }

    /// The anchored stream's port, when it names a valid one.
    fn audio_port(&self) -> Option<u16> {
        media_port(self.audio()?.0.split(' ').nth(1)?)
    }

    /// The anchored stream's formats.
    fn audio_formats(&self) -> Vec<u8> {
        self.audio()
            .map(|(m, _)| m.split(' ').skip(3).filter_map(payload_type).collect())
            .unwrap_or_default()
    }

    /// The payload type of `telephone-event/8000` in the anchored stream (RFC 4733):
    /// one its m= line lists, and not one of the static types RFC 3551 assigns to
    /// codecs (0-34): `a=rtpmap:0 telephone-event/8000` would make every PCMU packet
    /// read as a key press.
    fn telephone_event(&self) -> Option<u8> {
        let formats = self.audio_formats();
        self.audio()?.1.iter().find_map(|l| {
            let (pt, codec) = l.strip_prefix("a=rtpmap:")?.split_once(' ')?;
            let pt = payload_type(pt)?;
            let named = codec
                .to_ascii_lowercase()
                .starts_with("telephone-event/8000");
            (named && pt >= 35 && formats.contains(&pt)).then_some(pt)
        })
    }

    /// The last line of the anchored stream that is `wanted`, else of the session's
    /// lines (a stream's own line wins, RFC 4566).
    fn audio_or_session_line(&self, wanted: impl Fn(&str) -> bool) -> Option<&'a str> {
        let (_, lines) = self.audio()?;
        let last = |ls: &[&'a str]| ls.iter().rev().copied().find(|l| wanted(l));
        last(lines).or_else(|| last(&self.session))
    }

    /// The anchored stream's direction attribute, else the session's.
    fn direction(&self) -> Option<&'a str> {
        self.audio_or_session_line(is_direction)
    }

    /// Whether the body puts its audio on hold: `a=inactive`, `a=sendonly` or
    /// `a=recvonly` (RFC 3264 section 8.4; the anchored stream's own direction, else the
    /// session's, RFC 4566), a connection address of 0.0.0.0 (RFC 2543, the same way),
    /// or the audio stream disabled (port 0). A held call may carry no RTP for as long
    /// as it is held, so the media timeout does not apply to it.
    fn holds(&self) -> bool {
        self.audio().is_some()
            && (self.audio_port() == Some(0)
                || self.direction().is_some_and(|d| d != "a=sendrecv")
                || self.unspecified_connection())
    }

    /// Whether the anchored stream's connection address (its own, else the session's)
    /// is 0.0.0.0 or `::`: the older way to hold (RFC 2543), still sent by some PBXs.
    fn unspecified_connection(&self) -> bool {
        matches!(
            self.audio_or_session_line(|l| l.starts_with("c=")),
            Some("c=IN IP4 0.0.0.0" | "c=IN IP6 ::")
        )
    }
}

fn is_direction(line: &str) -> bool {
    matches!(
        line,
        "a=sendrecv" | "a=inactive" | "a=sendonly" | "a=recvonly"
    )
}

/// The part of a body a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// Before the first m= line.
    Session,
    /// The anchored audio stream.
    Audio,
    /// Any other stream (declined).
    Other,
}

/// Replaces origin and connection addresses with `addr` and the anchored audio
/// stream's port with `port`; the origin's user name and the session name become `-`.
/// Other media streams are declined (port 0): only audio is anchored. Of the
/// attributes, only those that describe the audio itself pass ([`passes`]); RTCP
/// attributes among the rest, because RTCP is not relayed. None when the body has no
/// audio stream with a valid port over plain RTP.
pub fn rewrite(sdp: &str, addr: IpAddr, port: u16) -> Option<Rewritten> {
    let body = Body::parse(sdp);
    let anchored = body.anchored?;
    let audio_port = body.audio_port()?;
    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(sdp.len() + 32);
    let mut session_c: Option<IpAddr> = None;
    let mut audio_c: Option<IpAddr> = None;
    let sections = std::iter::once((Section::Session, None, &body.session)).chain(
        body.streams.iter().enumerate().map(|(i, (m, lines))| {
            let section = if i == anchored {
                Section::Audio
            } else {
                Section::Other
            };
            (section, Some(*m), lines)
        }),
    );
    for (section, m, lines) in sections {
        if let Some(m) = m {
            let mut f: Vec<&str> = m.split(' ').collect();
            // Another stream is declined; a disabled audio stream (port 0, RFC 3264
            // section 6) stays disabled: the other leg must not be told audio was
            // accepted.
            let p = port.to_string();
            if f.len() > 1 && (section == Section::Other || audio_port != 0) {
                f[1] = if section == Section::Other { "0" } else { &p };
            }
            out.push_str(&format!("m={}\r\n", f.join(" ")));
        }
        for line in lines.iter().filter(|l| passes(l, section)) {
            let rewritten = if let Some(rest) = line.strip_prefix("o=") {
                // Session id and version kept (a re-offer's version must go up), the
                // rest ours; one that does not read as two numbers is replaced.
                let f: Vec<&str> = rest.split(' ').collect();
                let number = |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                let (id, version) = match (f.get(1), f.get(2)) {
                    (Some(id), Some(v)) if f.len() == 6 && number(id) && number(v) => (*id, *v),
                    _ => ("0", "0"),
                };
                Some(format!("o=- {id} {version} IN {family} {addr}"))
            } else if line.starts_with("s=") {
                Some("s=-".to_string())
            } else if let Some(rest) = line.strip_prefix("c=") {
                let ip = rest
                    .split(' ')
                    .nth(2)
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<IpAddr>().ok());
                match section {
                    Section::Session => session_c = ip,
                    Section::Audio => audio_c = ip,
                    Section::Other => {}
                }
                Some(format!("c=IN {family} {addr}"))
            } else {
                None
            };
            out.push_str(rewritten.as_deref().unwrap_or(line));
            out.push_str("\r\n");
        }
        // A hold by `c=0.0.0.0` reaches the other leg with the node's address: said
        // the way RFC 3264 says it instead (the holder receives nothing; it may send
        // music on hold), or the other leg would see an active stream.
        if section == Section::Audio && body.direction().is_none() && body.unspecified_connection()
        {
            out.push_str("a=sendonly\r\n");
        }
    }
    let remote = match audio_c.or(session_c) {
        Some(ip) if !ip.to_canonical().is_unspecified() && audio_port != 0 => {
            Some(SocketAddr::new(ip, audio_port))
        }
        _ => None,
    };
    Some(Rewritten {
        sdp: out,
        remote,
        dtmf: body.telephone_event(),
        formats: PayloadTypes::of(body.audio_formats()),
        held: body.holds(),
    })
}

/// Whether one line of a body goes to the other leg. Lines: the version, origin,
/// session name, timing, connection, bandwidth and media lines (the addresses, ports
/// and names rewritten by the caller); not the free text or contact fields (`i=`,
/// `u=`, `e=`, `p=`) nor an encryption key (`k=`). Attributes: at session level the
/// direction and packet times (some PBXs put `ptime` there); in the anchored audio
/// stream its formats (`rtpmap`, `fmtp`), packet times, direction and `silenceSupp`
/// (RFC 3108: gateways turn voice activity detection off with it); nothing of a
/// declined stream. Everything else (`candidate`, `ice-*`, `crypto`, `fingerprint`,
/// `setup`, `rtcp`, `rtcp-mux`, `ssrc`, `mid`, `group`, ...) describes a transport the
/// node does not offer or an address it hides.
fn passes(line: &str, section: Section) -> bool {
    const SESSION: [&str; 6] = [
        "sendrecv", "sendonly", "recvonly", "inactive", "ptime", "maxptime",
    ];
    const AUDIO: [&str; 3] = ["rtpmap", "fmtp", "silenceSupp"];
    let Some(attribute) = line.strip_prefix("a=") else {
        return matches!(
            line.as_bytes().first(),
            Some(b'v' | b'o' | b's' | b't' | b'c' | b'b' | b'r' | b'z')
        ) && line.as_bytes().get(1) == Some(&b'=');
    };
    let name = attribute.split(':').next().unwrap_or_default();
    match section {
        Section::Session => SESSION.contains(&name),
        Section::Audio => SESSION.contains(&name) || AUDIO.contains(&name),
        Section::Other => false,
    }
}

/// Whether an m= line's transport is plain RTP, the only one the node relays:
/// `RTP/AVP` or `RTP/AVPF` (RFC 4585), any case.
fn plain_rtp(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/AVP") || proto.eq_ignore_ascii_case("RTP/AVPF")
}

/// The port of the anchored audio stream when it names a valid one: what the node
/// needs of an offer to anchor its media. None for a body without audio over plain RTP
/// (`RTP/AVP`, `RTP/AVPF`), with a port that is not 0-65535, or that is not SDP at
/// all; `Some(0)` for a declined stream (RFC 3264 section 6).
pub fn audio_port(sdp: &str) -> Option<u16> {
    Body::parse(sdp).audio_port()
}

/// The port of an m= line's port field (`49170` or `49170/2`, RFC 4566 5.14): digits
/// only, at most 65535; None for anything else (`+1`, `70000`, a 30-digit number).
fn media_port(field: &str) -> Option<u16> {
    let digits = field.split('/').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// An RTP payload type (RFC 3550: 7 bits, 0..=127); None for anything else.
fn payload_type(field: &str) -> Option<u8> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok().filter(|pt| *pt <= 127)
}

/// The payload type of `telephone-event/8000` in the anchored audio stream (RFC 4733).
pub fn telephone_event(sdp: &str) -> Option<u8> {
    Body::parse(sdp).telephone_event()
}

/// The first G.711 codec (PCMU 0 or PCMA 8) of the anchored audio stream.
pub fn g711(sdp: &str) -> Option<u8> {
    first_g711(&Body::parse(sdp))
}

fn first_g711(body: &Body) -> Option<u8> {
    body.audio_formats()
        .into_iter()
        .find(|f| *f == 0 || *f == 8)
}

/// The node's own answer to an offer, for when it answers the caller itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub sdp: String,
    /// The codec chosen (PCMU 0 or PCMA 8).
    pub payload_type: u8,
    /// The telephone-event payload type, if the offer had one.
    pub dtmf: Option<u8>,
    /// The formats of the offer's audio stream.
    pub formats: PayloadTypes,
    /// Where the offerer receives audio.
    pub remote: Option<SocketAddr>,
}

/// Answers `offer` from `addr:port` with its first G.711 codec and its
/// telephone-event, if any, on the anchored audio stream; every other stream of the
/// offer is declined in its place (RFC 3264 section 6: one m= line per offered one, in
/// order). None if the offer has no audio over plain RTP or no G.711.
pub fn answer(offer: &str, addr: IpAddr, port: u16, session: u64) -> Option<Answer> {
    let body = Body::parse(offer);
    let payload_type = first_g711(&body)?;
    let dtmf = body.telephone_event();
    let remote = rewrite(offer, addr, port)?.remote;
    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
    let codec = if payload_type == 0 { "PCMU" } else { "PCMA" };
    let mut sdp = format!(
        "v=0\r\no=tsunagu {session} 1 IN {family} {addr}\r\ns=tsunagu\r\nc=IN {family} {addr}\r\nt=0 0\r\n"
    );
    for (i, (m, _)) in body.streams.iter().enumerate() {
        if Some(i) != body.anchored {
            let f: Vec<&str> = m.split(' ').filter(|f| !f.is_empty()).collect();
            let (media, proto) = (
                f.first().unwrap_or(&"audio"),
                f.get(2).unwrap_or(&"RTP/AVP"),
            );
            let format = f.get(3).unwrap_or(&"0");
            sdp.push_str(&format!("m={media} 0 {proto} {format}\r\n"));
            continue;
        }
        match dtmf {
            Some(te) => sdp.push_str(&format!(
                "m=audio {port} RTP/AVP {payload_type} {te}\r\na=rtpmap:{payload_type} {codec}/8000\r\na=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-15\r\n"
            )),
            None => sdp.push_str(&format!(
                "m=audio {port} RTP/AVP {payload_type}\r\na=rtpmap:{payload_type} {codec}/8000\r\n"
            )),
        }
        // The offer's direction answered (RFC 3264 section 6.1).
        let direction = match body.direction() {
            Some("a=sendonly") => "a=recvonly",
            Some("a=recvonly") => "a=sendonly",
            Some("a=inactive") => "a=inactive",
            _ => "a=sendrecv",
        };
        sdp.push_str(direction);
        sdp.push_str("\r\n");
    }
    Some(Answer {
        sdp,
        payload_type,
        dtmf,
        formats: PayloadTypes::of(body.audio_formats()),
        remote,
    })
}

/// `sdp` with the anchored audio stream offering only `keep` (and the rtpmap/fmtp lines
/// of other formats removed): after the node answered the caller with one codec, the
/// callee is offered that codec, so the relayed audio needs no transcoding.
pub fn restrict(sdp: &str, keep: &[u8]) -> String {
    let body = Body::parse(sdp);
    let dropped: Vec<u8> = body
        .audio_formats()
        .into_iter()
        .filter(|f| !keep.contains(f))
        .collect();
    let mut out = String::with_capacity(sdp.len());
    let line = |out: &mut String, l: &str| {
        out.push_str(l);
        out.push_str("\r\n");
    };
    for l in &body.session {
        line(&mut out, l);
    }
    for (i, (m, lines)) in body.streams.iter().enumerate() {
        if Some(i) != body.anchored {
            line(&mut out, &format!("m={m}"));
            lines.iter().for_each(|l| line(&mut out, l));
            continue;
        }
        let head: Vec<&str> = m.split(' ').take(3).collect();
        let kept: Vec<&str> = m
            .split(' ')
            .skip(3)
            .filter(|fmt| payload_type(fmt).is_some_and(|n| keep.contains(&n)))
            .collect();
        line(
            &mut out,
            &format!("m={} {}", head.join(" "), kept.join(" ")),
        );
        for l in lines {
            let format = l
                .strip_prefix("a=rtpmap:")
                .or_else(|| l.strip_prefix("a=fmtp:"))
                .and_then(|r| r.split(' ').next())
                .and_then(payload_type);
            if !format.is_some_and(|f| dropped.contains(&f)) {
                line(&mut out, l);
            }
        }
    }
    out
}

/// `body` as the next description of the session a party was last sent `last` of
/// (RFC 3264 section 8): with `last`'s session id, and its version, one up if the
/// description changed (anything but the o= line), the same if not. A B2BUA's party
/// sees one session whoever's bodies the node relays (the callee's, another fork's,
/// the node's own after it answered, a new node's after a takeover), so a body
/// relayed with its sender's own version could repeat a version the party already
/// has for another description, and be ignored as unchanged (a hold lost). `body`
/// unchanged when `last` is None or has no origin to continue.
pub fn continue_origin(last: Option<&str>, body: &str) -> String {
    let (Some((session, version)), Some(_)) = (last.and_then(origin), origin(body)) else {
        return body.to_string();
    };
    // Compared line by line without copying (a body or two per call).
    fn described(sdp: &str) -> impl Iterator<Item = &str> {
        sdp.lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty() && !l.starts_with("o="))
    }
    let same = last.is_some_and(|last| described(last).eq(described(body)));
    let version = if same {
        version
    } else {
        version.saturating_add(1)
    };
    let mut out = String::with_capacity(body.len() + 8);
    for line in body.split_inclusive('\n') {
        let text = line.trim_end_matches(['\r', '\n']);
        match text.strip_prefix("o=") {
            Some(o) => {
                let mut f: Vec<&str> = o.split(' ').collect();
                let v = version.to_string();
                // Every body the node sends went through `rewrite` (six fields); one
                // that did not is passed as it is rather than indexed past its end.
                if f.len() < 3 {
                    out.push_str(line);
                    continue;
                }
                f[1] = session;
                f[2] = &v;
                out.push_str("o=");
                out.push_str(&f.join(" "));
                out.push_str(&line[text.len()..]);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The session id and version of a body's o= line, when it has one of six fields with
/// a numeric version.
fn origin(sdp: &str) -> Option<(&str, u64)> {
    let o = sdp
        .lines()
        .map(str::trim_end)
        .find_map(|l| l.strip_prefix("o="))?;
    let f: Vec<&str> = o.split(' ').collect();
    let version = f.get(2)?.parse::<u64>().ok()?;
    (f.len() == 6).then(|| (f[1], version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(sdp: &str) -> bool {
        Body::parse(sdp).holds()
    }

    #[test]
    fn a_new_offer_goes_up_one_version() {
        // (what the party last got, the next body) → the next body as it goes: a new
        // description one version up (at the top it stays); nothing to continue from
        // an unreadable version or no origin.
        let cases = [
            (
                "v=0\r\no=- 42 7 IN IP4 1.2.3.4\r\ns=-\r\n",
                "v=0\r\no=- 42 7 IN IP4 1.2.3.4\r\ns=new\r\n",
                "v=0\r\no=- 42 8 IN IP4 1.2.3.4\r\ns=new\r\n",
            ),
            (
                "o=u 1 18446744073709551615 IN IP4 h\n",
                "o=u 1 1 IN IP4 h\nc=IN IP4 h\n",
                "o=u 1 18446744073709551615 IN IP4 h\nc=IN IP4 h\n",
            ),
            (
                "o=u 1 x IN IP4 h\n",
                "o=u 1 3 IN IP4 h\ns=\n",
                "o=u 1 3 IN IP4 h\ns=\n",
            ),
            ("v=0\r\n", "v=0\r\nt=0 0\r\n", "v=0\r\nt=0 0\r\n"),
            // A second o= line too short to hold a version is left as it is (it was
            // indexed past its end).
            (
                "o=u 1 3 IN IP4 h\n",
                "o=u 1 3 IN IP4 h\no=x\ns=\n",
                "o=u 1 4 IN IP4 h\no=x\ns=\n",
            ),
        ];
        for (last, next, want) in cases {
            assert_eq!(continue_origin(Some(last), next), want, "{last:?}");
        }
    }

    const OFFER: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp:6001\r\nm=video 7000 RTP/AVP 96\r\n";

    #[test]
    fn rewrites_addresses_and_audio_port() {
        let r = rewrite(OFFER, "192.0.2.5".parse().unwrap(), 20000).unwrap();
        assert_eq!(r.remote, Some("10.1.1.1:6000".parse().unwrap()));
        assert!(r
            .sdp
            .contains("o=- 53655765 2353687637 IN IP4 192.0.2.5\r\n"));
        assert!(r.sdp.contains("c=IN IP4 192.0.2.5\r\n"));
        assert!(r.sdp.contains("m=audio 20000 RTP/AVP 0 8 101\r\n"));
        assert!(r.sdp.contains("m=video 0 RTP/AVP 96\r\n"));
        assert!(
            !r.sdp.contains("10.1.1.1"),
            "no address of the other leg leaks"
        );
        assert!(!r.sdp.contains("a=rtcp"));
    }

    #[test]
    fn media_level_connection_wins_and_hold_has_no_remote() {
        let sdp = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0\nc=IN IP4 10.0.0.2\n";
        assert_eq!(
            rewrite(sdp, "127.0.0.1".parse().unwrap(), 20002)
                .unwrap()
                .remote,
            Some("10.0.0.2:4000".parse().unwrap())
        );
        let hold = OFFER.replace("c=IN IP4 10.1.1.1", "c=IN IP4 0.0.0.0");
        assert_eq!(
            rewrite(&hold, "127.0.0.1".parse().unwrap(), 20002)
                .unwrap()
                .remote,
            None
        );
    }

    #[test]
    fn the_nodes_own_answer_and_a_narrowed_offer() {
        assert_eq!(telephone_event(OFFER), Some(101));
        assert_eq!(g711(OFFER), Some(0));
        assert_eq!(g711("m=audio 1 RTP/AVP 18 8 0\r\n"), Some(8));
        let a = answer(OFFER, "127.0.0.2".parse().unwrap(), 20000, 9).unwrap();
        assert_eq!((a.payload_type, a.dtmf), (0, Some(101)));
        assert_eq!(a.remote, Some("10.1.1.1:6000".parse().unwrap()));
        assert!(
            a.sdp.contains("m=audio 20000 RTP/AVP 0 101\r\n"),
            "{}",
            a.sdp
        );
        assert!(a.sdp.contains("c=IN IP4 127.0.0.2\r\n"));
        assert!(a.sdp.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        let plain = "v=0\r\nc=IN IP4 10.0.0.9\r\nm=audio 4000 RTP/AVP 8\r\n";
        let a = answer(plain, "127.0.0.2".parse().unwrap(), 20000, 9).unwrap();
        assert_eq!((a.payload_type, a.dtmf), (8, None));
        assert!(a
            .sdp
            .contains("m=audio 20000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"));
        assert!(answer(
            "v=0\r\nm=audio 1 RTP/AVP 18\r\n",
            "127.0.0.1".parse().unwrap(),
            1,
            1
        )
        .is_none());

        let offer = "v=0\r\nm=audio 6000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n";
        assert_eq!(
            restrict(offer, &[0, 101]),
            "v=0\r\nm=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
        );
    }

    /// Hostile and unusual numbers on the audio m= line. Each row: the m= line, the
    /// remote the relay is told (None: nowhere to send), and the m= line the other leg
    /// gets (None: the body is refused as a whole).
    #[test]
    fn hostile_ports_and_payload_types() {
        let table: &[(&str, Option<&str>, Option<&str>)] = &[
            (
                "m=audio 6000 RTP/AVP 0",
                Some("10.1.1.1:6000"),
                Some("m=audio 20000 RTP/AVP 0"),
            ),
            (
                "m=audio 6000/2 RTP/AVP 0",
                Some("10.1.1.1:6000"),
                Some("m=audio 20000 RTP/AVP 0"),
            ),
            (
                "m=audio 65535 RTP/AVP 0",
                Some("10.1.1.1:65535"),
                Some("m=audio 20000 RTP/AVP 0"),
            ),
            // A disabled stream stays disabled, and is nowhere to send.
            ("m=audio 0 RTP/AVP 0", None, Some("m=audio 0 RTP/AVP 0")),
            ("m=audio 65536 RTP/AVP 0", None, None),
            ("m=audio 70000 RTP/AVP 0", None, None),
            ("m=audio 99999999999999999999999999 RTP/AVP 0", None, None),
            ("m=audio -1 RTP/AVP 0", None, None),
            ("m=audio +6000 RTP/AVP 0", None, None),
            ("m=audio  RTP/AVP 0", None, None),
            ("m=audio", None, None),
        ];
        for (m, remote, line) in table {
            let sdp = format!("v=0\r\nc=IN IP4 10.1.1.1\r\n{m}\r\n");
            let got = rewrite(&sdp, "192.0.2.5".parse().unwrap(), 20000);
            assert_eq!(
                got.as_ref().and_then(|r| r.remote),
                remote.map(|r| r.parse().unwrap()),
                "{m}"
            );
            let got_line = got.map(|r| r.sdp.lines().nth(2).unwrap_or_default().to_string());
            assert_eq!(got_line.as_deref(), *line, "{m}");
        }
        // Payload types are 7 bits: larger numbers are no format, and no DTMF type.
        let sdp = "v=0\r\nm=audio 6000 RTP/AVP 300 128 255 8 101 -1\r\na=rtpmap:228 telephone-event/8000\r\n";
        assert_eq!(Body::parse(sdp).audio_formats(), vec![8, 101]);
        assert_eq!(telephone_event(sdp), None);
        assert_eq!(g711(sdp), Some(8));
        assert_eq!(
            restrict(sdp, &[8, 228]),
            "v=0\r\nm=audio 6000 RTP/AVP 8\r\na=rtpmap:228 telephone-event/8000\r\n"
        );
        let a = answer(sdp, "127.0.0.1".parse().unwrap(), 20000, 1).unwrap();
        assert!(a.sdp.contains("m=audio 20000 RTP/AVP 8\r\n"), "{}", a.sdp);
        assert_eq!(a.dtmf, None);
    }

    /// What of one leg's body reaches the other: each row a line of the far end's
    /// body and whether it passes (with addresses rewritten, as checked above).
    #[test]
    fn only_what_describes_the_audio_passes() {
        let rows: &[(&str, &str, bool)] = &[
            // (section, line, passes)
            ("session", "i=Alice's office at 10.9.9.9", false),
            ("session", "u=http://10.9.9.9/alice", false),
            ("session", "e=alice@example.com", false),
            ("session", "p=+1 617 555 6011", false),
            ("session", "b=AS:64", true),
            ("session", "a=group:BUNDLE 0", false),
            ("session", "a=ice-ufrag:F7gI", false),
            ("session", "a=fingerprint:sha-256 4A:AD", false),
            ("session", "a=sendonly", true),
            ("session", "a=ptime:30", true),
            ("session", "a=tool:softphone 10.9.9.9", false),
            ("audio", "a=rtpmap:0 PCMU/8000", true),
            ("audio", "a=fmtp:101 0-15", true),
            ("audio", "a=ptime:20", true),
            ("audio", "a=maxptime:40", true),
            ("audio", "a=silenceSupp:off - - - -", true),
            ("audio", "a=recvonly", true),
            ("audio", "a=candidate:1 1 UDP 2130706431 10.9.9.9 8998 typ host", false),
            ("audio", "a=candidate:2 1 UDP 1694498815 203.0.113.7 45664 typ srflx", false),
            ("audio", "a=remote-candidates:1 10.9.9.9 8998", false),
            ("audio", "a=ice-pwd:asd88fgpdd777uzjYhagZg", false),
            ("audio", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR", false),
            ("audio", "a=setup:actpass", false),
            ("audio", "a=rtcp:6001 IN IP4 10.9.9.9", false),
            ("audio", "a=rtcp-mux", false),
            ("audio", "a=ssrc:1234 cname:alice@10.9.9.9", false),
            ("audio", "a=mid:0", false),
            ("audio", "k=clear:secret", false),
            ("video", "a=rtpmap:96 H264/90000", false),
            ("video", "a=sendrecv", false),
            // A stream before the audio is no session level.
            ("video first", "a=inactive", false),
            ("video first", "a=ptime:20", false),
        ];
        for (section, line, passes) in rows {
            let sdp = match *section {
                "session" => format!("v=0\r\no=- 1 1 IN IP4 10.9.9.9\r\ns=-\r\n{line}\r\nc=IN IP4 10.9.9.9\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"),
                "audio" => format!("v=0\r\nc=IN IP4 10.9.9.9\r\nm=audio 6000 RTP/AVP 0 101\r\n{line}\r\n"),
                "video first" => format!("v=0\r\nc=IN IP4 10.9.9.9\r\nm=video 7000 RTP/AVP 96\r\n{line}\r\nm=audio 6000 RTP/AVP 0\r\n"),
                _ => format!("v=0\r\nc=IN IP4 10.9.9.9\r\nm=audio 6000 RTP/AVP 0\r\nm=video 7000 RTP/AVP 96\r\n{line}\r\n"),
            };
            let out = rewrite(&sdp, "192.0.2.5".parse().unwrap(), 20000).unwrap();
            assert_eq!(
                out.sdp.contains(line),
                *passes,
                "{section}: {line}\n{}",
                out.sdp
            );
            assert!(!out.sdp.contains("10.9.9.9"), "{line}: {}", out.sdp);
        }
    }

    /// SRTP offered as optional the old way (an SRTP audio stream, then the same audio
    /// over plain RTP): the plain one is anchored and read, the SRTP one declined.
    #[test]
    fn the_first_plain_rtp_audio_stream_is_the_one_anchored() {
        let offer = "v=0\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\n\
            m=audio 6000 RTP/SAVP 8 96\r\na=rtpmap:96 telephone-event/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\na=inactive\r\n\
            m=audio 6002 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
        assert_eq!(audio_port(offer), Some(6002));
        assert_eq!(telephone_event(offer), Some(101));
        assert_eq!(g711(offer), Some(0));
        assert!(
            !holds(offer),
            "the declined stream's direction is not the call's"
        );
        let r = rewrite(offer, "192.0.2.5".parse().unwrap(), 20000).unwrap();
        assert_eq!(r.remote, Some("10.1.1.1:6002".parse().unwrap()));
        assert!(r.sdp.contains("m=audio 0 RTP/SAVP 8 96\r\nm=audio 20000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"), "{}", r.sdp);
        assert!(
            !r.sdp.contains("crypto") && !r.sdp.contains("inactive"),
            "{}",
            r.sdp
        );
        let a = answer(offer, "192.0.2.5".parse().unwrap(), 20000, 7).unwrap();
        assert!(
            a.sdp.ends_with("m=audio 0 RTP/SAVP 8\r\nm=audio 20000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"),
            "one m= line per offered stream, in order: {}",
            a.sdp
        );
        let narrowed = restrict(&r.sdp, &[0, 101]);
        assert!(
            narrowed.contains("m=audio 0 RTP/SAVP 8 96\r\nm=audio 20000 RTP/AVP 0 101\r\n"),
            "{narrowed}"
        );
        // An answer declining the SRTP stream as plain RTP at port 0 (not allowed, but
        // sent), or a re-offer keeping a removed stream at port 0: the stream with a
        // port is the one in use.
        let answer_body = "v=0\r\nc=IN IP4 10.2.2.2\r\nm=audio 0 RTP/AVP 8\r\nm=audio 7000 RTP/AVP 0\r\na=sendrecv\r\n";
        assert_eq!(audio_port(answer_body), Some(7000));
        assert!(!holds(answer_body));
        let r = rewrite(answer_body, "192.0.2.5".parse().unwrap(), 20000).unwrap();
        assert_eq!(r.remote, Some("10.2.2.2:7000".parse().unwrap()));
        // Without a plain stream there is nothing to anchor.
        let srtp_only = "v=0\r\nc=IN IP4 10.1.1.1\r\nm=audio 6000 RTP/SAVP 8\r\n";
        assert_eq!(
            (audio_port(srtp_only), telephone_event(srtp_only)),
            (None, None)
        );
        assert!(rewrite(srtp_only, "192.0.2.5".parse().unwrap(), 20000).is_none());
    }

    /// The origin keeps its session id and version (a re-offer's must go up) and
    /// loses its user name and address; the session name is ours; a connection line
    /// in a stream before the audio is no session-level address.
    #[test]
    fn origin_and_session_name_hide_who_sent_them() {
        let rows = [
            ("o=alice 42 7 IN IP4 10.9.9.9", "o=- 42 7 IN IP4 192.0.2.5"),
            ("o=- 1 1 IN IP6 fd00::1", "o=- 1 1 IN IP4 192.0.2.5"),
            // Not six fields, or not numbers: replaced whole.
            ("o=alice 42 7 IN IP4 10.9.9.9 x", "o=- 0 0 IN IP4 192.0.2.5"),
            ("o=alice x 7 IN IP4 10.9.9.9", "o=- 0 0 IN IP4 192.0.2.5"),
            ("o=10.9.9.9", "o=- 0 0 IN IP4 192.0.2.5"),
        ];
        for (origin, want) in rows {
            let sdp = format!("v=0\r\n{origin}\r\ns=Alice's PBX\r\nc=IN IP4 10.9.9.9\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n");
            let out = rewrite(&sdp, "192.0.2.5".parse().unwrap(), 20000)
                .unwrap()
                .sdp;
            assert!(
                out.contains(&format!("\r\n{want}\r\ns=-\r\n")),
                "{origin}: {out}"
            );
            assert!(!out.contains("10.9.9.9") && !out.contains("Alice"), "{out}");
        }
        let video_first =
            "v=0\r\nm=video 7000 RTP/AVP 96\r\nc=IN IP4 10.8.8.8\r\nm=audio 6000 RTP/AVP 0\r\n";
        let out = rewrite(video_first, "192.0.2.5".parse().unwrap(), 20000).unwrap();
        assert_eq!(out.remote, None, "the video's address is not the audio's");
    }

    /// The node relays plain RTP only: an SRTP or DTLS audio stream is no offer or
    /// answer it can anchor (refused with 488 as an offer, hung up as an answer).
    #[test]
    fn only_plain_rtp_is_anchored() {
        let rows = [
            ("RTP/AVP", Some(6000)),
            ("RTP/AVPF", Some(6000)),
            ("rtp/avp", Some(6000)),
            ("RTP/SAVP", None),
            ("RTP/SAVPF", None),
            ("UDP/TLS/RTP/SAVPF", None),
            ("UDP", None),
            ("", None),
        ];
        for (proto, port) in rows {
            let sdp = format!("v=0\r\nc=IN IP4 10.1.1.1\r\nm=audio 6000 {proto} 0\r\n");
            assert_eq!(audio_port(&sdp), port, "{proto}");
            let rewritten = rewrite(&sdp, "192.0.2.5".parse().unwrap(), 20000);
            assert_eq!(rewritten.is_some(), port.is_some(), "{proto}");
        }
    }

    #[test]
    fn no_audio_is_none() {
        assert!(rewrite(
            "v=0\r\nm=video 7000 RTP/AVP 96\r\n",
            "127.0.0.1".parse().unwrap(),
            1
        )
        .is_none());
        assert!(rewrite("garbage", "127.0.0.1".parse().unwrap(), 1).is_none());
    }

    /// A control character inside a line (a lone CR some parsers end a line at, a
    /// NUL) makes the body unusable: nothing smuggled behind an allowed attribute
    /// reaches the other leg, because no body goes to it.
    #[test]
    fn control_characters_inside_lines_anchor_nothing() {
        let body = |audio_line: &str| {
            format!("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n{audio_line}\r\n")
        };
        let addr = "127.0.0.1".parse().unwrap();
        for line in [
            "a=ptime:20\rc=IN IP4 198.51.100.66\ra=candidate:1 1 UDP 2130706431 10.9.9.9 8998 typ host",
            "a=rtpmap:0 PCMU/8000\0a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x",
            "a=ptime:20\x7f",
        ] {
            let sdp = body(line);
            assert!(rewrite(&sdp, addr, 20000).is_none(), "{line:?}");
            assert!(answer(&sdp, addr, 20000, 7).is_none(), "{line:?}");
        }
        // Tabs and the CRLF (or bare LF) line ends are fine.
        let fine = body("a=fmtp:101 0-15;\tx=1");
        let out = rewrite(&fine.replace("\r\n", "\n"), addr, 20000).expect("fine");
        assert!(out.sdp.contains("a=fmtp:101 0-15"), "{}", out.sdp);
    }

    #[test]
    fn what_puts_audio_on_hold() {
        let body = |extra: &str| {
            format!("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n{extra}")
        };
        let rows = [
            ("", false),
            ("a=sendrecv\r\n", false),
            ("a=inactive\r\n", true),
            ("a=sendonly\r\n", true),
            ("a=recvonly\r\n", true),
            ("a=rtpmap:0 PCMU/8000\r\n", false),
        ];
        for (extra, want) in rows {
            assert_eq!(holds(&body(extra)), want, "{extra:?}");
        }
        assert!(holds("v=0\r\nm=audio 0 RTP/AVP 0\r\n"), "audio disabled");
        assert!(
            holds("v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n"),
            "RFC 2543 hold"
        );
        assert!(!holds("v=0\r\nm=audio 40000 RTP/AVP 0\r\n"));
        // The stream's own lines win over the session's (RFC 4566).
        assert!(!holds(
            "v=0\r\na=sendonly\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n"
        ));
        assert!(holds(
            "v=0\r\na=sendrecv\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\na=inactive\r\n"
        ));
        assert!(!holds(
            "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 10.0.0.2\r\n"
        ));
    }

    /// A hold by `c=0.0.0.0` without a direction reaches the other leg as `a=sendonly`
    /// (the node's address in its c= line would otherwise read as an active stream); a
    /// body that says its direction keeps it, and an active one gets none.
    #[test]
    fn an_rfc_2543_hold_is_said_with_a_direction() {
        let addr = "127.0.0.1".parse().unwrap();
        let rows: &[(&str, &[&str], &[&str])] = &[
            (
                "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n",
                &["a=sendonly"],
                &["0.0.0.0", "sendrecv"],
            ),
            (
                "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n",
                &["a=sendonly"],
                &["0.0.0.0"],
            ),
            (
                "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\na=inactive\r\n",
                &["a=inactive"],
                &["sendonly"],
            ),
            (
                "v=0\r\na=recvonly\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n",
                &["a=recvonly"],
                &["sendonly"],
            ),
            (
                "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n",
                &[],
                &["sendonly", "sendrecv", "inactive"],
            ),
        ];
        for (sdp, has, lacks) in rows {
            let out = rewrite(sdp, addr, 20000).unwrap().sdp;
            for h in *has {
                assert!(out.contains(h), "{sdp:?} → {out:?} lacks {h}");
            }
            for l in *lacks {
                assert!(!out.contains(l), "{sdp:?} → {out:?} has {l}");
            }
        }
    }

    /// The telephone-event type is one the m= line lists and no codec's static type;
    /// the node's own answer says the direction the offer's calls for.
    #[test]
    fn payload_type_sets_and_the_formats_of_a_body() {
        let set = PayloadTypes::of([0, 8, 101, 127, 200]);
        for (pt, want) in [
            (0, true),
            (8, true),
            (101, true),
            (127, true),
            (1, false),
            (100, false),
            (200, false),
        ] {
            assert_eq!(set.contains(pt), want, "{pt}");
        }
        assert!(PayloadTypes::UNKNOWN.contains(100));
        assert!(!PayloadTypes::UNKNOWN.contains(200));
        assert_eq!(set.known(), Some(vec![0, 8, 101, 127]));
        assert_eq!(PayloadTypes::of([]).known(), Some(vec![]));
        assert_eq!(PayloadTypes::UNKNOWN.known(), None);
        for set in [set, PayloadTypes::of([]), PayloadTypes::UNKNOWN] {
            assert_eq!(PayloadTypes::from_known(set.known().as_deref()), set);
        }
        let local: IpAddr = "10.0.0.9".parse().unwrap();
        let rw = rewrite(OFFER, local, 30000).unwrap();
        assert_eq!(
            rw.formats,
            PayloadTypes::of([0, 8, 101]),
            "the audio stream's"
        );
    }

    #[test]
    fn telephone_events_and_directions_of_the_nodes_answer() {
        let offer = |m: &str, extra: &str| {
            format!("v=0\r\nc=IN IP4 10.0.0.9\r\nm=audio 4000 RTP/AVP {m}\r\n{extra}")
        };
        let te = "a=rtpmap:101 telephone-event/8000\r\n";
        let rows: &[(String, Option<u8>)] = &[
            (offer("0 101", te), Some(101)),
            (offer("0", te), None),
            (offer("0 8", "a=rtpmap:0 telephone-event/8000\r\n"), None),
            (offer("0 34", "a=rtpmap:34 telephone-event/8000\r\n"), None),
            (
                offer("0 96", "a=rtpmap:96 TELEPHONE-EVENT/8000\r\n"),
                Some(96),
            ),
        ];
        let addr = "127.0.0.2".parse().unwrap();
        for (sdp, want) in rows {
            assert_eq!(telephone_event(sdp), *want, "{sdp:?}");
            let a = answer(sdp, addr, 20000, 1).unwrap();
            assert_eq!(a.dtmf, *want, "{sdp:?}");
            let m = a.sdp.lines().find(|l| l.starts_with("m=audio")).unwrap();
            let listed: Vec<&str> = m.split(' ').skip(3).collect();
            let expected = match want {
                Some(te) => vec!["0".to_string(), te.to_string()],
                None => vec!["0".to_string()],
            };
            assert_eq!(listed, expected, "{}", a.sdp);
        }
        let directions = [
            ("", "a=sendrecv"),
            ("a=sendrecv\r\n", "a=sendrecv"),
            ("a=sendonly\r\n", "a=recvonly"),
            ("a=recvonly\r\n", "a=sendonly"),
            ("a=inactive\r\n", "a=inactive"),
        ];
        for (extra, want) in directions {
            let a = answer(&offer("0", extra), addr, 20000, 1).unwrap();
            assert!(
                a.sdp.contains(&format!("{want}\r\n")),
                "{extra:?}: {}",
                a.sdp
            );
            assert_eq!(
                a.sdp.lines().filter(|l| is_direction(l)).count(),
                1,
                "one direction: {}",
                a.sdp
            );
        }
    }

    /// Each row: what the party was last sent, the next body, and the origin it gets.
    #[test]
    fn a_partys_session_goes_on_whoever_sent_the_body() {
        let body = |origin: &str, port: u16| {
            format!("v=0\r\no={origin}\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n")
        };
        let rows: &[(Option<String>, String, &str)] = &[
            // The first body a party gets: as it is.
            (
                None,
                body("- 55 7 IN IP4 192.0.2.1", 4000),
                "- 55 7 IN IP4 192.0.2.1",
            ),
            // The callee's next version after a takeover's re-offer took its number.
            (
                Some(body("- 55 8 IN IP4 192.0.2.1", 4000)),
                body("- 55 8 IN IP4 192.0.2.1", 4002),
                "- 55 9 IN IP4 192.0.2.1",
            ),
            // Another sender (the node answered itself first): its session goes on.
            (
                Some(body("tsunagu 99 1 IN IP4 192.0.2.1", 4000)),
                body("- 55 1 IN IP4 192.0.2.1", 4002),
                "- 99 2 IN IP4 192.0.2.1",
            ),
            // Unchanged (a session refresh): the same version.
            (
                Some(body("- 55 8 IN IP4 192.0.2.1", 4000)),
                body("- 55 3 IN IP4 192.0.2.1", 4000),
                "- 55 8 IN IP4 192.0.2.1",
            ),
            // The last body had no origin to continue: as it is.
            (
                Some("v=0\r\nm=audio 4000 RTP/AVP 0\r\n".to_string()),
                body("- 55 3 IN IP4 192.0.2.1", 4002),
                "- 55 3 IN IP4 192.0.2.1",
            ),
            // At the top of the range: stays there rather than wrap.
            (
                Some(body(&format!("- 55 {} IN IP4 192.0.2.1", u64::MAX), 4000)),
                body("- 55 1 IN IP4 192.0.2.1", 4002),
                &format!("- 55 {} IN IP4 192.0.2.1", u64::MAX),
            ),
        ];
        for (i, (last, next, want)) in rows.iter().enumerate() {
            let out = continue_origin(last.as_deref(), next);
            let origin = out.lines().find_map(|l| l.strip_prefix("o=")).unwrap();
            assert_eq!(origin, *want, "row {i}");
            let rest = |s: &str| {
                s.lines()
                    .filter(|l| !l.starts_with("o="))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(rest(&out), rest(next), "row {i}: only the origin changes");
        }
    }

    #[test]
    fn audio_ports_of_offers() {
        let cases: &[(&str, Option<u16>)] = &[
            (
                "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n",
                Some(4000),
            ),
            (
                "m=video 5000 RTP/AVP 96\r\nm=audio 6000/2 RTP/AVP 0\r\n",
                Some(6000),
            ),
            ("m=audio 0 RTP/AVP 0\r\n", Some(0)),
            ("m=audio 65535 RTP/AVP 0\n", Some(65535)),
            ("m=audio 65536 RTP/AVP 0\r\n", None),
            ("m=audio -1 RTP/AVP 0\r\n", None),
            ("m=audio abc RTP/AVP 0\r\n", None),
            ("m=audio  RTP/AVP 0\r\n", None),
            ("m=audio 99999999999 RTP/AVP 0\r\n", None),
            ("m=video 5000 RTP/AVP 96\r\n", None),
            ("v=0\r\n", None),
            ("\u{fffd}\u{fffd} garbage \u{0}\u{1}", None),
            ("", None),
        ];
        for (body, want) in cases {
            assert_eq!(audio_port(body), *want, "{body:?}");
        }
    }
}
