//! A test telephone for the takeover tests: many calls at once, as the callers (UAC)
//! and as the callees (UAS) behind the nodes, each side sending RTP every
//! [`RTP_EVERY`] and measuring the largest gap in what it receives. Like a real phone
//! it follows re-INVITEs (a new remote target, a new media address), which is what a
//! takeover relies on, and sends its BYE to the latest remote target.
//!
//! SIPp plays these roles in `loadtest/scenarios/` for load testers; here one process
//! holds 300 calls and measures each one's gap directly, without parsing SIPp traces.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// How often each side of each call sends a packet (the gap resolution).
pub const RTP_EVERY: Duration = Duration::from_millis(100);

/// What one side of a call received since [`Party::mark`].
#[derive(Debug, Default)]
struct Stats {
    received: u64,
    last: Option<Instant>,
    max_gap: Duration,
    /// When a packet last came from each address (which node relayed it).
    last_from: HashMap<std::net::IpAddr, Instant>,
}

/// One dialog of the party: the caller's with the node, or the callee's.
struct Leg {
    call_id: String,
    local_tag: String,
    local_uri: String,
    remote_uri: String,
    /// Where in-dialog requests go (the latest Contact of the node).
    target: Mutex<(String, SocketAddr)>,
    remote_tag: Mutex<String>,
    cseq: AtomicU32,
    /// The node's latest request CSeq and our answer (re-sent on retransmissions).
    answered: Mutex<Option<(u32, String)>>,
    rtp: Arc<UdpSocket>,
    rtp_remote: Mutex<Option<SocketAddr>>,
    sdp_version: AtomicU32,
    stats: Mutex<Stats>,
    state: Mutex<LegState>,
    /// The node answered our INVITE (any response): stop re-sending it.
    heard: std::sync::atomic::AtomicBool,
    /// When the call was answered and when it ended, on this side.
    times: Mutex<(Option<Instant>, Option<Instant>)>,
    /// Re-INVITEs this leg refused 491 (see [`Party::refuse_re_invites`]).
    refused: AtomicU32,
    /// The Session-Expires of each re-INVITE this leg got ("" for none), in order.
    re_invite_timers: Mutex<Vec<String>>,
}

impl Leg {
    fn set_state(&self, to: LegState) {
        let mut state = self.state.lock().unwrap();
        let mut times = self.times.lock().unwrap();
        match to {
            LegState::Up => {
                times.0.get_or_insert_with(Instant::now);
            }
            _ => {
                times.1.get_or_insert_with(Instant::now);
            }
        }
        *state = to;
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LegState {
    #[default]
    Calling,
    Up,
    /// The node sent a BYE.
    EndedByNode,
    /// Our BYE was answered 200.
    HungUp,
    /// The INVITE was refused (its code).
    Refused(u16),
}

/// Both sides of one call, by the caller's number.
#[derive(Default)]
struct Pair {
    node: Option<SocketAddr>,
    caller: Option<Arc<Leg>>,
    callee: Option<Arc<Leg>>,
}

struct Inner {
    uac: Arc<UdpSocket>,
    uas: Arc<UdpSocket>,
    legs: Mutex<HashMap<String, Arc<Leg>>>,
    pairs: Mutex<HashMap<String, Pair>>,
    next: AtomicU32,
    /// How many re-INVITEs each leg refuses 491 before it accepts one.
    refuse_491: AtomicU32,
    /// Session timers (see [`Party::callee_refreshes`]): the interval, 0 for none.
    callee_timer: AtomicU32,
}

/// The party: its own runtime, the caller socket and the callee socket.
pub struct Party {
    rt: tokio::runtime::Runtime,
    inner: Arc<Inner>,
}

/// One call's largest gaps since [`Party::mark`] (an open gap counts up to now).
#[derive(Debug, Clone)]
pub struct Gap {
    pub caller: String,
    pub at_caller: Duration,
    pub at_callee: Duration,
    pub caller_state: LegState,
    pub callee_state: LegState,
}

impl Gap {
    pub fn worst(&self) -> Duration {
        self.at_caller.max(self.at_callee)
    }
}

impl Party {
    /// Listens as callers on 127.0.0.1:`uac` and as the callees on 127.0.0.1:`uas`.
    pub fn start(uac: u16, uas: u16) -> Party {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let inner = rt.block_on(async {
            let bind = |port: u16| async move {
                let s = UdpSocket::bind(("127.0.0.1", port))
                    .await
                    .expect("bind party");
                Arc::new(s)
            };
            Arc::new(Inner {
                uac: bind(uac).await,
                uas: bind(uas).await,
                legs: Mutex::new(HashMap::new()),
                pairs: Mutex::new(HashMap::new()),
                next: AtomicU32::new(1),
                refuse_491: AtomicU32::new(0),
                callee_timer: AtomicU32::new(0),
            })
        });
        for callee in [false, true] {
            let inner = inner.clone();
            rt.spawn(async move { inner.listen(callee).await });
        }
        Party { rt, inner }
    }

    /// Places a call from `caller` to `number` through the node at `node`.
    pub fn call(&self, node: SocketAddr, number: &str, caller: &str) {
        let inner = self.inner.clone();
        let (number, caller) = (number.to_string(), caller.to_string());
        self.rt
            .spawn(async move { inner.invite(node, &number, &caller).await });
    }

    /// From now on every leg answers its first `n` re-INVITEs 491 Request Pending, as
    /// a party does while a re-INVITE of its own is pending (RFC 3261 14.2).
    pub fn refuse_re_invites(&self, n: u32) {
        self.inner.refuse_491.store(n, Ordering::Relaxed);
    }

    /// From now on callers ask for session timers of `interval` s (`Session-Expires`,
    /// `Supported: timer`) and callees answer as the refresher (`refresher=uas`), as
    /// many PBXs do; neither refreshes within a test's length.
    pub fn callee_refreshes(&self, interval: u32) {
        self.inner.callee_timer.store(interval, Ordering::Relaxed);
    }

    /// The Session-Expires of each re-INVITE `caller`'s callee got, in order ("" for
    /// none).
    pub fn callee_re_invite_timers(&self, caller: &str) -> Vec<String> {
        let pairs = self.inner.pairs.lock().unwrap();
        pairs
            .get(caller)
            .and_then(|p| p.callee.as_ref())
            .map(|leg| leg.re_invite_timers.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// `caller` hangs up and its BYE is lost (its node is going): its dialog is gone
    /// (a later re-INVITE gets 481) and it counts as hung up now.
    pub fn hang_up_unheard(&self, caller: &str) {
        let leg = self.inner.pairs.lock().unwrap()[caller]
            .caller
            .clone()
            .expect("the caller's leg");
        leg.set_state(LegState::HungUp);
        self.inner.legs.lock().unwrap().remove(&leg.call_id);
    }

    /// Calls whose both sides are up and have received RTP.
    pub fn flowing(&self) -> usize {
        let pairs = self.inner.pairs.lock().unwrap();
        pairs
            .values()
            .filter(|p| {
                [&p.caller, &p.callee].iter().all(|l| {
                    l.as_ref().is_some_and(|l| {
                        *l.state.lock().unwrap() == LegState::Up
                            && l.stats.lock().unwrap().received > 0
                    })
                })
            })
            .count()
    }

    /// Callers whose call received RTP on both sides after `t`.
    pub fn heard_since(&self, t: Instant) -> Vec<String> {
        let after = |l: &Option<Arc<Leg>>| {
            l.as_ref()
                .is_some_and(|l| l.stats.lock().unwrap().last.is_some_and(|x| x > t))
        };
        self.inner
            .pairs
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| after(&p.caller) && after(&p.callee))
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Callers that received RTP from `ip` (on either side) after `t`.
    pub fn heard_from_since(&self, ip: std::net::IpAddr, t: Instant) -> Vec<String> {
        let from = |l: &Option<Arc<Leg>>| {
            l.as_ref().is_some_and(|l| {
                l.stats
                    .lock()
                    .unwrap()
                    .last_from
                    .get(&ip)
                    .is_some_and(|x| *x > t)
            })
        };
        self.inner
            .pairs
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| from(&p.caller) || from(&p.callee))
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Each caller's talk time as the caller saw it (answer to the end), once ended.
    pub fn talk_times(&self) -> HashMap<String, Duration> {
        self.inner
            .pairs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(c, p)| {
                let t = *p.caller.as_ref()?.times.lock().unwrap();
                Some((c.clone(), t.1? - t.0?))
            })
            .collect()
    }

    /// Waits until `n` calls have RTP flowing both ways; panics with what is missing.
    pub fn wait_flowing(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.flowing() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} of {n} calls have RTP flowing both ways; states: {:?}",
            self.flowing(),
            self.states()
        );
    }

    /// How many calls are in each (caller state, callee state).
    pub fn states(&self) -> HashMap<(LegState, Option<LegState>), usize> {
        let mut out = HashMap::new();
        for p in self.inner.pairs.lock().unwrap().values() {
            let c = p.caller.as_ref().map(|l| *l.state.lock().unwrap());
            let b = p.callee.as_ref().map(|l| *l.state.lock().unwrap());
            *out.entry((c.unwrap_or_default(), b)).or_default() += 1;
        }
        out
    }

    /// Starts measuring: gaps from now on (the last packet before counts as their start).
    pub fn mark(&self) {
        for l in self.inner.legs.lock().unwrap().values() {
            l.stats.lock().unwrap().max_gap = Duration::ZERO;
        }
    }

    /// Each call's largest gap on either side since [`Party::mark`].
    pub fn gaps(&self) -> Vec<Gap> {
        let now = Instant::now();
        let gap = |l: &Option<Arc<Leg>>| {
            l.as_ref().map_or(Duration::MAX, |l| {
                let s = l.stats.lock().unwrap();
                let open = s.last.map_or(Duration::MAX, |t| now - t);
                s.max_gap.max(open)
            })
        };
        let state = |l: &Option<Arc<Leg>>| {
            l.as_ref()
                .map_or(LegState::Calling, |l| *l.state.lock().unwrap())
        };
        let mut out: Vec<Gap> = self
            .inner
            .pairs
            .lock()
            .unwrap()
            .iter()
            .map(|(caller, p)| Gap {
                caller: caller.clone(),
                at_caller: gap(&p.caller),
                at_callee: gap(&p.callee),
                caller_state: state(&p.caller),
                callee_state: state(&p.callee),
            })
            .collect();
        out.sort_by(|a, b| a.caller.cmp(&b.caller));
        out
    }

    /// The callers hang up every call that is up (BYE to the latest remote target) and
    /// wait for the answers and for the callees to get their BYE; returns the callers
    /// whose call did not end cleanly on both sides.
    pub fn hang_up_all(&self, limit: Duration) -> Vec<String> {
        let callers: Vec<Arc<Leg>> = self
            .inner
            .pairs
            .lock()
            .unwrap()
            .values()
            .filter_map(|p| p.caller.clone())
            .filter(|l| *l.state.lock().unwrap() == LegState::Up)
            .collect();
        for leg in callers {
            let inner = self.inner.clone();
            self.rt.spawn(async move { inner.bye(leg).await });
        }
        let clean = |p: &Pair| {
            p.caller
                .as_ref()
                .is_some_and(|l| *l.state.lock().unwrap() == LegState::HungUp)
                && p.callee
                    .as_ref()
                    .is_some_and(|l| *l.state.lock().unwrap() == LegState::EndedByNode)
        };
        let deadline = Instant::now() + limit;
        loop {
            let unclean: Vec<String> = self
                .inner
                .pairs
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, p)| !clean(p))
                .map(|(c, _)| c.clone())
                .collect();
            if unclean.is_empty() || Instant::now() > deadline {
                return unclean;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A SIP message as text: its first line, headers (names lowercased, compact forms
/// expanded) and body.
struct Msg {
    first: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Msg {
    fn parse(text: &str) -> Option<Msg> {
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let first = lines.next()?.to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| {
                let n = n.trim().to_ascii_lowercase();
                let n = match n.as_str() {
                    "i" => "call-id",
                    "f" => "from",
                    "t" => "to",
                    "v" => "via",
                    "m" => "contact",
                    "l" => "content-length",
                    "c" => "content-type",
                    other => other,
                }
                .to_string();
                (n, v.trim().to_string())
            })
            .collect();
        Some(Msg {
            first,
            headers,
            body: body.to_string(),
        })
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn is_request(&self) -> bool {
        !self.first.starts_with("SIP/2.0")
    }

    fn method(&self) -> &str {
        self.first.split(' ').next().unwrap_or("")
    }

    fn code(&self) -> u16 {
        self.first
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    fn cseq(&self) -> (u32, String) {
        let mut it = self.header("cseq").split_whitespace();
        let n = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        (n, it.next().unwrap_or("").to_string())
    }

    fn tag(value: &str) -> String {
        value
            .split(';')
            .find_map(|p| p.trim().strip_prefix("tag="))
            .unwrap_or("")
            .to_string()
    }

    /// The URI inside `<...>` (or the whole value without parameters).
    fn uri(value: &str) -> String {
        match (value.find('<'), value.find('>')) {
            (Some(a), Some(b)) if a < b => value[a + 1..b].to_string(),
            _ => value.split(';').next().unwrap_or("").trim().to_string(),
        }
    }

    /// The Contact's URI and the address it names.
    fn contact(&self) -> Option<(String, SocketAddr)> {
        let uri = Msg::uri(self.header("contact"));
        let hostport = uri
            .split('@')
            .nth(1)
            .unwrap_or(uri.trim_start_matches("sip:"));
        let hostport = hostport.split(';').next()?;
        Some((uri.clone(), hostport.parse().ok()?))
    }

    /// The media address of the SDP body.
    fn media(&self) -> Option<SocketAddr> {
        let ip = self
            .body
            .lines()
            .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))?;
        let port = self
            .body
            .lines()
            .find_map(|l| l.trim().strip_prefix("m=audio "))?
            .split(' ')
            .next()?;
        format!("{}:{}", ip.trim(), port).parse().ok()
    }
}

fn sdp(id: u32, version: u32, port: u16) -> String {
    format!(
        "v=0\r\no=party {id} {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=sendrecv\r\n"
    )
}

fn with_body(head: String, body: &str) -> String {
    if body.is_empty() {
        format!("{head}Content-Length: 0\r\n\r\n")
    } else {
        format!(
            "{head}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

impl Inner {
    fn socket(&self, callee: bool) -> &Arc<UdpSocket> {
        if callee {
            &self.uas
        } else {
            &self.uac
        }
    }

    fn local(&self, callee: bool) -> SocketAddr {
        self.socket(callee).local_addr().expect("local")
    }

    async fn new_leg(
        &self,
        call_id: &str,
        local_tag: String,
        local_uri: String,
        remote_uri: String,
        target: (String, SocketAddr),
    ) -> Arc<Leg> {
        let rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("rtp socket"));
        let leg = Arc::new(Leg {
            call_id: call_id.to_string(),
            local_tag,
            local_uri,
            remote_uri,
            target: Mutex::new(target),
            remote_tag: Mutex::new(String::new()),
            cseq: AtomicU32::new(1),
            answered: Mutex::new(None),
            rtp: rtp.clone(),
            rtp_remote: Mutex::new(None),
            sdp_version: AtomicU32::new(1),
            stats: Mutex::new(Stats::default()),
            state: Mutex::new(LegState::Calling),
            heard: std::sync::atomic::AtomicBool::new(false),
            times: Mutex::new((None, None)),
            refused: AtomicU32::new(0),
            re_invite_timers: Mutex::new(Vec::new()),
        });
        self.legs
            .lock()
            .unwrap()
            .insert(call_id.to_string(), leg.clone());
        tokio::spawn(media(leg.clone()));
        leg
    }

    async fn invite(self: Arc<Self>, node: SocketAddr, number: &str, caller: &str) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let call_id = format!("party-{id}-{caller}");
        let local = self.local(false);
        let leg = self
            .new_leg(
                &call_id,
                format!("c{id}"),
                format!("sip:{caller}@127.0.0.1"),
                format!("sip:{number}@{node}"),
                (format!("sip:{number}@{node}"), node),
            )
            .await;
        {
            let mut pairs = self.pairs.lock().unwrap();
            let p = pairs.entry(caller.to_string()).or_default();
            p.node = Some(node);
            p.caller = Some(leg.clone());
        }
        let body = sdp(id, 1, leg.rtp.local_addr().expect("rtp").port());
        let timer = match self.callee_timer.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!("Session-Expires: {n}\r\nSupported: timer\r\n"),
        };
        let invite = with_body(
            format!(
                "INVITE sip:{number}@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{id}-1;rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{caller}@127.0.0.1>;tag=c{id}\r\nTo: <sip:{number}@{node}>\r\n\
                 Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{caller}@{local}>\r\n{timer}"
            ),
            &body,
        );
        // Re-sent until the node answers anything (UDP, no transaction layer here).
        for _ in 0..8 {
            let _ = self.uac.send_to(invite.as_bytes(), node).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            if leg.heard.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    async fn bye(self: Arc<Self>, leg: Arc<Leg>) {
        let cseq = leg.cseq.fetch_add(1, Ordering::Relaxed) + 1;
        let local = self.local(false);
        for attempt in 0..8 {
            let (uri, to) = leg.target.lock().unwrap().clone();
            let bye = with_body(
                format!(
                    "BYE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-bye-{}-{cseq};rport\r\n\
                     Max-Forwards: 70\r\nFrom: <{}>;tag={}\r\nTo: <{}>;tag={}\r\nCall-ID: {}\r\nCSeq: {cseq} BYE\r\n",
                    leg.call_id,
                    leg.local_uri,
                    leg.local_tag,
                    leg.remote_uri,
                    leg.remote_tag.lock().unwrap(),
                    leg.call_id
                ),
                "",
            );
            let _ = self.uac.send_to(bye.as_bytes(), to).await;
            tokio::time::sleep(Duration::from_millis(if attempt == 0 { 500 } else { 1000 })).await;
            if *leg.state.lock().unwrap() != LegState::Up {
                return;
            }
        }
    }

    async fn listen(self: Arc<Self>, callee: bool) {
        let sock = self.socket(callee).clone();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            let Some(msg) = std::str::from_utf8(&buf[..n]).ok().and_then(Msg::parse) else {
                continue;
            };
            if msg.is_request() {
                self.on_request(callee, msg, from).await;
            } else {
                self.on_response(msg, from).await;
            }
        }
    }

    fn leg(&self, call_id: &str) -> Option<Arc<Leg>> {
        self.legs.lock().unwrap().get(call_id).cloned()
    }

    async fn reply(
        &self,
        callee: bool,
        req: &Msg,
        to: SocketAddr,
        code: u16,
        reason: &str,
        extra: &str,
        body: &str,
    ) -> String {
        let vias: String = req
            .all("via")
            .iter()
            .map(|v| format!("Via: {v}\r\n"))
            .collect();
        let text = with_body(
            format!(
                "SIP/2.0 {code} {reason}\r\n{vias}From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}",
                req.header("from"),
                req.header("to"),
                req.header("call-id"),
                req.header("cseq"),
            ),
            body,
        );
        let _ = self.socket(callee).send_to(text.as_bytes(), to).await;
        text
    }

    async fn on_request(&self, callee: bool, req: Msg, from: SocketAddr) {
        let call_id = req.header("call-id").to_string();
        let (cseq, _) = req.cseq();
        match req.method() {
            "INVITE" if Msg::tag(req.header("to")).is_empty() => {
                if !callee {
                    return;
                }
                // A new call forwarded to the callee (or the INVITE again).
                if let Some(leg) = self.leg(&call_id) {
                    let answer = leg.answered.lock().unwrap().clone();
                    if let Some((_, text)) = answer {
                        let _ = self.uas.send_to(text.as_bytes(), from).await;
                    }
                    return;
                }
                let Some(target) = req.contact() else { return };
                let id = self.next.fetch_add(1, Ordering::Relaxed);
                let caller = Msg::uri(req.header("from"));
                let caller_number = caller
                    .trim_start_matches("sip:")
                    .split('@')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let leg = self
                    .new_leg(
                        &call_id,
                        format!("b{id}"),
                        Msg::uri(req.header("to")),
                        caller,
                        target,
                    )
                    .await;
                *leg.remote_tag.lock().unwrap() = Msg::tag(req.header("from"));
                *leg.rtp_remote.lock().unwrap() = req.media();
                self.pairs
                    .lock()
                    .unwrap()
                    .entry(caller_number)
                    .or_default()
                    .callee = Some(leg.clone());
                let local = self.local(true);
                let body = sdp(id, 1, leg.rtp.local_addr().expect("rtp").port());
                let mut to = req.clone_to_with_tag(&leg.local_tag);
                to.push_str("\r\n");
                let timer = match self.callee_timer.load(Ordering::Relaxed) {
                    0 => String::new(),
                    n => format!("Session-Expires: {n};refresher=uas\r\n"),
                };
                let text = self
                    .reply_to(
                        true,
                        &req,
                        from,
                        200,
                        "OK",
                        &to,
                        &format!("Contact: <sip:callee@{local}>\r\n{timer}"),
                        &body,
                    )
                    .await;
                *leg.answered.lock().unwrap() = Some((cseq, text));
                leg.set_state(LegState::Up);
            }
            "INVITE" => {
                // A re-INVITE: a new target and media address (a takeover, a refresh).
                let Some(leg) = self.leg(&call_id) else {
                    self.reply(callee, &req, from, 481, "Call Does Not Exist", "", "")
                        .await;
                    return;
                };
                let answer = leg.answered.lock().unwrap().clone();
                if let Some((seen, text)) = answer {
                    if seen == cseq {
                        let _ = self.socket(callee).send_to(text.as_bytes(), from).await;
                        return;
                    }
                }
                leg.re_invite_timers
                    .lock()
                    .unwrap()
                    .push(req.header("session-expires").to_string());
                if leg.refused.load(Ordering::Relaxed) < self.refuse_491.load(Ordering::Relaxed) {
                    leg.refused.fetch_add(1, Ordering::Relaxed);
                    let text = self
                        .reply(callee, &req, from, 491, "Request Pending", "", "")
                        .await;
                    *leg.answered.lock().unwrap() = Some((cseq, text));
                    return;
                }
                if let Some(target) = req.contact() {
                    *leg.target.lock().unwrap() = target;
                }
                if let Some(m) = req.media() {
                    *leg.rtp_remote.lock().unwrap() = Some(m);
                }
                let version = leg.sdp_version.fetch_add(1, Ordering::Relaxed) + 1;
                let body = sdp(0, version, leg.rtp.local_addr().expect("rtp").port());
                let local = self.local(callee);
                // A refreshing callee goes on refreshing (RFC 4028: each re-INVITE is a
                // refresh, its 2xx says who refreshes next).
                let timer = match self.callee_timer.load(Ordering::Relaxed) {
                    n if n > 0 && callee && !req.header("session-expires").is_empty() => {
                        format!("Session-Expires: {n};refresher=uas\r\n")
                    }
                    _ => String::new(),
                };
                let text = self
                    .reply(
                        callee,
                        &req,
                        from,
                        200,
                        "OK",
                        &format!("Contact: <sip:party@{local}>\r\n{timer}"),
                        &body,
                    )
                    .await;
                *leg.answered.lock().unwrap() = Some((cseq, text));
            }
            "BYE" => {
                self.reply(callee, &req, from, 200, "OK", "", "").await;
                if let Some(leg) = self.leg(&call_id) {
                    leg.set_state(LegState::EndedByNode);
                }
            }
            "ACK" => {}
            _ => {
                self.reply(callee, &req, from, 200, "OK", "", "").await;
            }
        }
    }

    /// [`Inner::reply`] with the To header given (the callee adds its tag).
    #[allow(clippy::too_many_arguments)]
    async fn reply_to(
        &self,
        callee: bool,
        req: &Msg,
        to: SocketAddr,
        code: u16,
        reason: &str,
        to_header: &str,
        extra: &str,
        body: &str,
    ) -> String {
        let vias: String = req
            .all("via")
            .iter()
            .map(|v| format!("Via: {v}\r\n"))
            .collect();
        let text = with_body(
            format!(
                "SIP/2.0 {code} {reason}\r\n{vias}From: {}\r\nTo: {to_header}Call-ID: {}\r\nCSeq: {}\r\n{extra}",
                req.header("from"),
                req.header("call-id"),
                req.header("cseq"),
            ),
            body,
        );
        let _ = self.socket(callee).send_to(text.as_bytes(), to).await;
        text
    }

    async fn on_response(&self, resp: Msg, from: SocketAddr) {
        let Some(leg) = self.leg(resp.header("call-id")) else {
            return;
        };
        let (cseq, method) = resp.cseq();
        let code = resp.code();
        leg.heard.store(true, Ordering::Relaxed);
        match method.as_str() {
            "INVITE" if code >= 200 => {
                let remote_tag = Msg::tag(resp.header("to"));
                let to_uri = leg.remote_uri.clone();
                if code < 300 {
                    if let Some(target) = resp.contact() {
                        *leg.target.lock().unwrap() = target;
                    }
                    if let Some(m) = resp.media() {
                        *leg.rtp_remote.lock().unwrap() = Some(m);
                    }
                    *leg.remote_tag.lock().unwrap() = remote_tag.clone();
                    if *leg.state.lock().unwrap() == LegState::Calling {
                        leg.set_state(LegState::Up);
                    }
                } else {
                    leg.set_state(LegState::Refused(code));
                }
                // ACK: to the remote target for a 2xx, to where the INVITE went otherwise.
                let (uri, to) = if code < 300 {
                    leg.target.lock().unwrap().clone()
                } else {
                    (to_uri.clone(), from)
                };
                let local = self.local(false);
                let branch = if code < 300 {
                    format!("z9hG4bK-ack-{}-{cseq}", leg.call_id)
                } else {
                    format!("z9hG4bK-{}-1", leg.call_id.split('-').nth(1).unwrap_or(""))
                };
                let ack = with_body(
                    format!(
                        "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\n\
                         From: <{}>;tag={}\r\nTo: <{to_uri}>;tag={remote_tag}\r\nCall-ID: {}\r\nCSeq: {cseq} ACK\r\n",
                        leg.local_uri, leg.local_tag, leg.call_id
                    ),
                    "",
                );
                let _ = self.uac.send_to(ack.as_bytes(), to).await;
            }
            "BYE" if code >= 200 => leg.set_state(LegState::HungUp),
            _ => {}
        }
    }
}

impl Msg {
    /// The request's To header with our tag added, as a header value line.
    fn clone_to_with_tag(&self, tag: &str) -> String {
        format!("{};tag={tag}", self.header("to"))
    }
}

/// Sends a packet every [`RTP_EVERY`] to the leg's current media address and counts
/// what arrives, until the leg ends.
async fn media(leg: Arc<Leg>) {
    let mut every = tokio::time::interval(RTP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ssrc: u32 = 0x5eed_0000 ^ leg.local_tag.len() as u32;
    let (mut seq, mut ts) = (0u16, 0u32);
    let mut buf = [0u8; 2048];
    loop {
        tokio::select! {
            _ = every.tick() => {
                match *leg.state.lock().unwrap() {
                    LegState::Up => {}
                    LegState::Calling => continue,
                    _ => return,
                }
                let Some(to) = *leg.rtp_remote.lock().unwrap() else { continue };
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(800);
                let mut pkt = vec![0x80, 8];
                pkt.extend_from_slice(&seq.to_be_bytes());
                pkt.extend_from_slice(&ts.to_be_bytes());
                pkt.extend_from_slice(&ssrc.to_be_bytes());
                pkt.resize(12 + 160, 0x00); // loud in PCMA: a recording of it is not silence
                let _ = leg.rtp.send_to(&pkt, to).await;
            }
            r = leg.rtp.recv_from(&mut buf) => {
                if let Ok((_, from)) = r {
                    let now = Instant::now();
                    let mut s = leg.stats.lock().unwrap();
                    s.last_from.insert(from.ip(), now);
                    if let Some(last) = s.last {
                        s.max_gap = s.max_gap.max(now - last);
                    }
                    s.last = Some(now);
                    s.received += 1;
                }
            }
        }
    }
}
