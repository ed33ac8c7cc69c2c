//! RFC 3261 section 17 transactions (with the RFC 6026 handling of 2xx), as a sans-IO
//! state machine in the shape of quinn-proto's endpoint: messages and the current time
//! go in, [`Output`]s (bytes to transmit, timeouts to report) come out. It owns no
//! socket, task or timer; its driver sleeps until [`Transactions::poll_timeout`].
//!
//! Server transactions are keyed by the top Via branch and method (ACK matches its
//! INVITE); client transactions by the branch we generated and the CSeq method.
//! Over TCP nothing is retransmitted, and the linger timers that absorb UDP
//! retransmissions are zero, but for an INVITE of ours that opened a dialog: it is
//! kept 64*T1 after its final answer on every transport, to tell the 2xx of its forks
//! (see [`ResponseMatch::Answer2xx`]).

use crate::build::RequestSpec;
use crate::parse::Peer;
use crate::segmented::Segmented;
use bytes::Bytes;
use rsipstack::sip::Method;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
pub const T4: Duration = Duration::from_secs(5);
pub const TIMEOUT: Duration = Duration::from_secs(32); // 64*T1
/// How long an INVITE may go without a final response, either way, by default (the
/// node sets its longest ring plus [`TIMEOUT`]: its calls answer or give up within
/// that); for an INVITE of ours, since its last provisional response. RFC 3261's
/// Timer C for the client side, and its server-side twin.
pub const INVITE_LIMIT: Duration = Duration::from_secs(180 + 32);
/// One segment of the transaction tables is swept this often (all 256 in about 10 s).
const SWEEP_STEP: Duration = Duration::from_millis(40);
/// Transactions end (their `expire_at`: removal, and the timeouts reported after 32 s)
/// on a multiple of this from the table's start, so that the ends of the transactions
/// of every call within it share one wake-up of the shard instead of one each. Below
/// a few hundred calls a second each end was a wake-up of its own: three a call, as
/// many as the datagrams a call sends the node. Retransmissions keep their exact times.
/// The sweep's steps fall on the same grain, so that while transactions are open (the
/// sweep runs then) ends cost no wake-up of their own.
const END_GRAIN: Duration = SWEEP_STEP;

/// `at` rounded up to a multiple of [`END_GRAIN`] from `base` (`at` itself if earlier
/// than `base`): at most `END_GRAIN` later.
fn end_at(at: Instant, base: Instant) -> Instant {
    let Some(since) = at.checked_duration_since(base) else {
        return at;
    };
    let grain = END_GRAIN.as_nanos();
    let late = (grain - since.as_nanos() % grain) % grain;
    // `late` is below the grain (40 ms in nanoseconds): it fits a u64.
    at + Duration::from_nanos(u64::try_from(late).unwrap_or(0))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxKey {
    pub branch: String,
    pub method: Method,
}

impl TxKey {
    pub fn new(branch: &str, method: Method) -> TxKey {
        let method = if method == Method::Ack {
            Method::Invite
        } else {
            method
        };
        TxKey {
            branch: branch.to_string(),
            method,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Transmit {
        peer: Peer,
        data: Bytes,
        retransmission: bool,
    },
    /// A client transaction got no final response in time (Timer B/F): report 408.
    ClientTimeout { key: TxKey, call_id: String },
    /// A 2xx we sent was never acknowledged.
    AckTimeout { call_id: String },
    /// A transaction nobody finished was removed by the sweep (server: one we were
    /// to answer; else one of ours, also reported as a `ClientTimeout`).
    Abandoned { server: bool },
}

/// How an incoming request relates to existing transactions.
#[derive(Debug, PartialEq)]
pub enum RequestMatch {
    /// A new request: a server transaction was created; hand it to its call.
    New,
    /// A retransmission: the last response (if any) was queued for resending.
    Retransmission,
    /// ACK of a non-2xx final response: consumed here.
    AckAbsorbed,
    /// ACK of a 2xx: it belongs to the dialog; hand it to the call.
    AckFor2xx,
    /// CANCEL of a pending INVITE (the INVITE's key); a CANCEL transaction was created.
    Cancel(TxKey),
    /// CANCEL matching nothing; a CANCEL transaction was created for the 481.
    CancelUnmatched,
    /// CANCEL of an INVITE already answered finally (its 200 crossed the CANCEL): a
    /// CANCEL transaction was created for a 200 that changes nothing (RFC 3261 9.2:
    /// a CANCEL matching a transaction is answered 200 whatever it can still do, with
    /// the To tag of the INVITE's answer, carried here).
    CancelAfterFinal(Option<String>),
    /// The branch of a transaction another source began, or another request of the
    /// same source reusing a branch (another Call-ID or CSeq: RFC 3261 wants branches
    /// unique): nothing is sent back and the transaction is left alone (a peer must
    /// not get another request's responses resent, nor create a transaction under the
    /// same key).
    Foreign,
    /// A new request while the shard holds [`MAX_SERVER_TRANSACTIONS`]: dropped (its
    /// sender retransmits; a flood of distinct requests cannot grow the table).
    Full,
}

/// Whether a request of a transaction (a retransmission, the ACK of a failure, a
/// CANCEL: hop by hop, so from the element that sent the request) comes from the
/// source that began it: the same address. The port may differ (a TCP peer reconnects
/// from a new one; a NAT may rebind), so the check is by address, which another trunk
/// cannot share.
fn same_source(a: &Peer, b: &Peer) -> bool {
    a.addr.ip() == b.addr.ip()
}

/// How an incoming response relates to our client transactions.
#[derive(Debug, PartialEq)]
pub enum ResponseMatch {
    Deliver,
    /// A retransmitted 2xx of an INVITE whose transaction is gone (or of one inside a
    /// dialog): the call re-ACKs it.
    Deliver2xxRetransmission,
    /// A 2xx to an INVITE of ours that opened a dialog (a forwarded leg, a callback),
    /// the first or a later one (a repeat, or another fork's: RFC 3261 13.2.2.4), within
    /// 64*T1 of the first (RFC 6026's Accepted state): for the call; whether one took
    /// it goes to [`Transactions::answer_2xx`], which says what the SIP core does with
    /// one that no call took.
    Answer2xx,
    /// A 2xx to an INVITE of ours that opened a dialog and already failed (a forking
    /// proxy's 6xx, then another branch's 200 that crossed it): no call wants its
    /// dialog; [`Transactions::unwanted_2xx`] says what the SIP core does with it. A
    /// transaction of RFC 3261 would absorb it, leaving its sender to send it for 32 s
    /// and hang up a callee connected to nobody.
    Unwanted2xx,
    Absorbed,
    Unmatched,
}

/// How many To tags of 2xx an INVITE of ours remembers (the call's included): each
/// that no call took is hung up once, a repeat only ACKed. A forking proxy has a few
/// branches; a peer inventing tags gets ACKs only past this, so it cannot make the
/// node open a BYE transaction per 2xx it sends.
const FORKS_KEPT: usize = 8;

/// What the SIP core does with a 2xx to an INVITE of ours (see
/// [`ResponseMatch::Answer2xx`]) once it knows whether a call took it.
#[derive(Debug, PartialEq, Clone, Copy)]
pub enum AnswerAction {
    /// Nothing: a call took it, or took this To tag before (it keeps that dialog or
    /// hung it up itself; the dialog may live on at another node, which a BYE would
    /// end).
    Nothing,
    /// ACK it: a repeat of a fork the core hung up (its ACK was lost), or a tag past
    /// [`FORKS_KEPT`].
    Ack,
    /// ACK it and hang it up: no call ever took this dialog.
    HangUp,
}

/// A 2xx to an INVITE of ours as the SIP core checks it before acting on it: its To
/// tag, its Call-ID and the address it came from (the INVITE's: a 2xx comes back the
/// way the INVITE went, RFC 3261 18.2.2; one from elsewhere, or naming another
/// dialog, is never hung up by the core).
pub struct AnswerFrom<'a> {
    pub tag: &'a str,
    pub call_id: &'a str,
    pub source: std::net::IpAddr,
}

/// Who took a 2xx of an INVITE of ours, by its To tag.
#[derive(Debug, PartialEq, Clone, Copy)]
enum Taker {
    Call,
    Core,
}

/// The To tags (keyed hashes: a peer's tag of any length costs 8 bytes) of the 2xx an
/// INVITE of ours got, by who took each, at most [`FORKS_KEPT`]: the first noted (the
/// call's, nearly always: no allocation for it), then the others (forks).
#[derive(Default)]
struct Answers {
    first: Option<(u64, Taker)>,
    others: Vec<(u64, Taker)>,
}

impl Answers {
    /// What the SIP core does with a 2xx of To tag `tag` that a call `taken` (or none
    /// did), noting who took it: hung up the first time no call takes a tag none ever
    /// took, ACKed when it comes again (or past [`FORKS_KEPT`] tags), left alone once
    /// a call took it.
    fn answer(&mut self, tag: u64, taken: bool) -> AnswerAction {
        let mut noted = self.first.iter().chain(&self.others);
        match noted.find(|(t, _)| *t == tag) {
            Some((_, Taker::Core)) if !taken => return AnswerAction::Ack,
            Some(_) => return AnswerAction::Nothing,
            None => {}
        }
        let taker = if taken { Taker::Call } else { Taker::Core };
        match self.first {
            None => self.first = Some((tag, taker)),
            Some(_) if self.others.len() + 1 < FORKS_KEPT => self.others.push((tag, taker)),
            Some(_) if taken => return AnswerAction::Nothing,
            Some(_) => return AnswerAction::Ack,
        }
        if taken {
            AnswerAction::Nothing
        } else {
            AnswerAction::HangUp
        }
    }
}

/// An INVITE of ours that opened a dialog and got its 2xx: RFC 6026's Accepted state,
/// kept [`TIMEOUT`] (at most a sweep cycle more) from its first 2xx, the request let
/// go; under a hundred bytes an answered call, for 32 s. Its Call-ID is kept as a
/// keyed hash.
struct Accepted {
    since: Instant,
    call_id: u64,
    peer: std::net::IpAddr,
    answers: Answers,
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum State {
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
}

struct Timers {
    retransmit_at: Option<Instant>,
    interval: Duration,
    expire_at: Option<Instant>,
}

impl Timers {
    fn next(&self) -> Option<Instant> {
        match (self.retransmit_at, self.expire_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

struct ServerTx {
    peer: Peer,
    /// The request's Call-ID (a keyed hash of it: 8 bytes instead of a string per
    /// transaction, and no collision a peer can aim at) and CSeq number: a CANCEL
    /// names its INVITE by branch, and must carry the same two (RFC 3261 9.2), or
    /// anyone who learnt a branch could cancel another caller's call.
    call_id: u64,
    cseq: u32,
    state: State,
    last_response: Option<Bytes>,
    timers: Timers,
    /// When it began: the sweep's limit counts from here.
    since: Instant,
}

struct ClientTx {
    peer: Peer,
    request: Bytes,
    /// For an INVITE: the request, to build the ACK of a failure response (let go once
    /// that is built).
    invite: Option<Box<RequestSpec>>,
    /// An INVITE outside a dialog (its To has no tag): forks may answer it.
    new_dialog: bool,
    call_id: String,
    state: State,
    /// A failed INVITE's: the forks' 2xx the core hung up.
    forks: Answers,
    ack: Option<Bytes>,
    timers: Timers,
    /// When it was sent, or got its last provisional response: the INVITE limit
    /// (Timer C) counts from here.
    since: Instant,
}

struct Pending2xx {
    peer: Peer,
    response: Bytes,
    timers: Timers,
    /// The To tag the 2xx gave the dialog: only an ACK carrying it acknowledges it
    /// (None: the response names none, and any ACK of its CSeq does).
    to_tag: Option<String>,
}

/// The To tag of a response this node built (its `To:` line, or the compact `t:`).
pub(crate) fn to_tag_of(response: &[u8]) -> Option<String> {
    let head = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response, |end| &response[..end]);
    std::str::from_utf8(head)
        .ok()?
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("to") || name.eq_ignore_ascii_case("t"))
                .then(|| crate::parse::tag(value).map(str::to_string))
                .flatten()
        })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TimerId {
    Server(TxKey),
    Client(TxKey),
    Ok2xx((String, u32)),
}

/// Server transactions one shard holds at most. Each lives 32 s after its answer (on
/// UDP, with the answer kept to resend): 4,000 calls per second, a few requests each,
/// hold some tens of thousands per shard; more is a flood of distinct requests.
pub const MAX_SERVER_TRANSACTIONS: usize = 200_000;

pub struct Transactions {
    // In segments: a table of every transaction of the last 32 s must grow without
    // stalling the shard (see `crate::segmented`).
    server: Segmented<TxKey, ServerTx>,
    /// [`MAX_SERVER_TRANSACTIONS`] (lower in tests).
    max_server: usize,
    client: Segmented<TxKey, ClientTx>,
    /// Answered INVITEs of ours that opened a dialog, by a keyed hash of their branch.
    accepted: Segmented<u64, Accepted>,
    ok2xx: Segmented<(String, u32), Pending2xx>,
    /// Timers by due time, then by when they were set (the sequence number makes each
    /// key unique). Entries are not removed when a transaction moves on: a due entry
    /// whose time no longer matches its transaction is stale and skipped. A B-tree
    /// rather than a binary heap: it grows node by node, where a heap's vector of a
    /// million timers is copied whole each time it doubles (a stall of the shard).
    timers: BTreeMap<(Instant, u64), TimerId>,
    /// Timers set so far (the tie-breaker of `timers`' keys).
    timers_set: u64,
    /// See [`INVITE_LIMIT`]: for an INVITE of ours.
    invite_limit: Duration,
    /// The same for an INVITE we answer (a caller may wait in a queue before its
    /// ring, so the node gives it longer).
    answer_limit: Duration,
    /// The sweep for transactions nobody will finish (`sweep`): when its next step is
    /// due (None while the tables are empty), and which segment it takes.
    next_sweep: Option<Instant>,
    sweep_segment: usize,
    /// Hashes the server transactions' Call-IDs, the accepted INVITEs' branches and
    /// Call-IDs, and 2xx's To tags (keyed at random per table).
    hashes: std::collections::hash_map::RandomState,
    /// Where the grain of transactions' ends counts from ([`end_at`]).
    base: Instant,
    /// The first timer as `poll_timeout` last found it due.
    head_checked: Option<(Instant, u64)>,
}

impl Default for Transactions {
    fn default() -> Self {
        Transactions::with_invite_limits(INVITE_LIMIT, INVITE_LIMIT)
    }
}

fn reliable(peer: &Peer) -> bool {
    peer.transport.reliable()
}

fn linger(peer: &Peer, d: Duration) -> Duration {
    if reliable(peer) {
        Duration::ZERO
    } else {
        d
    }
}

impl Transactions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tables whose INVITEs may go without a final response `answer_limit` (those we
    /// answer) and `invite_limit` (ours).
    pub fn with_invite_limits(answer_limit: Duration, invite_limit: Duration) -> Self {
        Transactions {
            server: Segmented::default(),
            max_server: MAX_SERVER_TRANSACTIONS,
            client: Segmented::default(),
            accepted: Segmented::default(),
            ok2xx: Segmented::default(),
            timers: BTreeMap::new(),
            timers_set: 0,
            invite_limit,
            answer_limit,
            next_sweep: None,
            sweep_segment: 0,
            hashes: Default::default(),
            base: Instant::now(),
            head_checked: None,
        }
    }

    /// Forgets every transaction (a node declared down drops what it had), keeping
    /// the tables' settings.
    pub fn forget_all(&mut self) {
        *self = Transactions::with_invite_limits(self.answer_limit, self.invite_limit);
    }

    /// Open transactions (server, client, unacknowledged 2xx), for metrics.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.server.len(), self.client.len(), self.ok2xx.len())
    }

    /// Answered INVITEs of ours kept in RFC 6026's Accepted state.
    pub fn accepted_count(&self) -> usize {
        self.accepted.len()
    }

    fn schedule(&mut self, at: Option<Instant>, id: TimerId) {
        if let Some(at) = at {
            self.timers_set = self.timers_set.wrapping_add(1);
            self.timers.insert((at, self.timers_set), id);
        }
    }

    // ---- server side ----

    pub fn on_request(
        &mut self,
        method: Method,
        branch: &str,
        call_id: &str,
        cseq: u32,
        peer: Peer,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> RequestMatch {
        let key = TxKey::new(branch, method);
        match method {
            Method::Ack => {
                if let Some(tx) = self.server.get_mut(&key) {
                    if !same_source(&tx.peer, &peer) {
                        return RequestMatch::Foreign;
                    }
                    if tx.state == State::Completed {
                        tx.state = State::Confirmed;
                        tx.timers.retransmit_at = None;
                        // Timer I: linger to absorb ACK retransmissions.
                        let expire = end_at(now + linger(&peer, T4), self.base);
                        tx.timers.expire_at = Some(expire);
                        self.schedule(Some(expire), TimerId::Server(key));
                        return RequestMatch::AckAbsorbed;
                    }
                    if tx.state == State::Confirmed {
                        return RequestMatch::AckAbsorbed;
                    }
                }
                // The ACK of a 2xx is end to end (RFC 3261 13.2.2.4): it may come from
                // another address of the caller's side than the INVITE did, so it is
                // not matched by source here; the call's dialog check (the leg's
                // address or a trunk's) decides whether it counts. Whether it ends
                // the 2xx's retransmissions is [`Transactions::acked_2xx`]'s to say.
                RequestMatch::AckFor2xx
            }
            _ => {
                if let Some(tx) = self.server.get(&key) {
                    let same_request =
                        tx.call_id == self.hashes.hash_one(call_id) && tx.cseq == cseq;
                    if !same_source(&tx.peer, &peer) || !same_request {
                        return RequestMatch::Foreign;
                    }
                    if let Some(resp) = &tx.last_response {
                        out.push(Output::Transmit {
                            peer: tx.peer,
                            data: resp.clone(),
                            retransmission: true,
                        });
                    }
                    return RequestMatch::Retransmission;
                }
                if self.server.len() >= self.max_server {
                    return RequestMatch::Full;
                }
                let tx = ServerTx {
                    peer,
                    call_id: self.hashes.hash_one(call_id),
                    cseq,
                    state: State::Proceeding,
                    last_response: None,
                    timers: Timers {
                        retransmit_at: None,
                        interval: T1,
                        expire_at: None,
                    },
                    since: now,
                };
                self.server.insert(key, tx);
                self.arm_sweep(now);
                if method == Method::Cancel {
                    let invite = TxKey::new(branch, Method::Invite);
                    let call_id = self.hashes.hash_one(call_id);
                    return match self.server.get(&invite) {
                        Some(inv)
                            if same_source(&inv.peer, &peer)
                                && inv.call_id == call_id
                                && inv.cseq == cseq =>
                        {
                            if inv.state == State::Proceeding {
                                RequestMatch::Cancel(invite)
                            } else {
                                let tag = inv.last_response.as_deref().and_then(to_tag_of);
                                RequestMatch::CancelAfterFinal(tag)
                            }
                        }
                        _ => RequestMatch::CancelUnmatched,
                    };
                }
                RequestMatch::New
            }
        }
    }

    /// The last response a server transaction still waiting for its final one sent
    /// (its 100 Trying or a provisional), if any.
    pub fn pending_response(&self, key: &TxKey) -> Option<Bytes> {
        self.server
            .get(key)
            .filter(|tx| tx.state == State::Proceeding)
            .and_then(|tx| tx.last_response.clone())
    }

    /// Sends a response within a server transaction. Returns false if the transaction
    /// is gone (the response is then not sent).
    pub fn send_response(
        &mut self,
        key: &TxKey,
        code: u16,
        data: Bytes,
        call_id: &str,
        cseq: u32,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> bool {
        let Some(tx) = self.server.get_mut(key) else {
            return false;
        };
        if tx.state != State::Proceeding {
            return false;
        }
        let peer = tx.peer;
        out.push(Output::Transmit {
            peer,
            data: data.clone(),
            retransmission: false,
        });
        tx.last_response = Some(data.clone());
        if code < 200 {
            return true;
        }
        let id = TimerId::Server(key.clone());
        if key.method == Method::Invite && code < 300 {
            // RFC 6026 Accepted: absorb INVITE retransmissions by resending the 2xx;
            // the 2xx itself is retransmitted until its ACK arrives (13.3.1.4).
            tx.state = State::Accepted;
            let expire = end_at(now + TIMEOUT, self.base);
            tx.timers = Timers {
                retransmit_at: None,
                interval: T1,
                expire_at: Some(expire),
            };
            self.schedule(Some(expire), id);
            let retransmit_at = (!reliable(&peer)).then(|| now + T1);
            let pending = Pending2xx {
                peer,
                to_tag: to_tag_of(&data),
                response: data,
                timers: Timers {
                    retransmit_at,
                    interval: T1,
                    expire_at: Some(end_at(now + TIMEOUT, self.base)),
                },
            };
            let next = pending.timers.next();
            self.ok2xx.insert((call_id.to_string(), cseq), pending);
            self.schedule(next, TimerId::Ok2xx((call_id.to_string(), cseq)));
        } else if key.method == Method::Invite {
            tx.state = State::Completed;
            let retransmit_at = (!reliable(&peer)).then(|| now + T1);
            tx.timers = Timers {
                retransmit_at,
                interval: T1,
                expire_at: Some(end_at(now + TIMEOUT, self.base)),
            };
            let next = tx.timers.next();
            self.schedule(next, id);
        } else {
            tx.state = State::Completed;
            let expire = end_at(now + linger(&peer, TIMEOUT), self.base);
            tx.timers = Timers {
                retransmit_at: None,
                interval: T1,
                expire_at: Some(expire),
            };
            self.schedule(Some(expire), id);
        }
        true
    }

    // ---- client side ----

    pub fn send_request(
        &mut self,
        key: TxKey,
        peer: Peer,
        data: Bytes,
        invite: Option<Box<RequestSpec>>,
        call_id: &str,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        out.push(Output::Transmit {
            peer,
            data: data.clone(),
            retransmission: false,
        });
        let retransmit_at = (!reliable(&peer)).then(|| now + T1);
        // A new INVITE of the node's: its first CSeq (never one inside a dialog, on
        // either leg), no To tag (a leg whose callee answered without one sends its
        // re-INVITEs without one too). The SIP core's own requests open nothing.
        let new_dialog = !call_id.is_empty()
            && invite.as_ref().is_some_and(|spec| {
                spec.cseq == crate::build::FIRST_INVITE_CSEQ
                    && crate::parse::tag(&spec.to).is_none()
            });
        let tx = ClientTx {
            peer,
            request: data,
            invite,
            new_dialog,
            call_id: call_id.to_string(),
            state: State::Proceeding,
            forks: Answers::default(),
            ack: None,
            timers: Timers {
                retransmit_at,
                interval: T1,
                expire_at: Some(end_at(now + TIMEOUT, self.base)),
            },
            since: now,
        };
        let next = tx.timers.next();
        let id = TimerId::Client(key.clone());
        self.client.insert(key, tx);
        self.schedule(next, id);
        self.arm_sweep(now);
    }

    pub fn on_response(
        &mut self,
        branch: &str,
        cseq_method: Method,
        code: u16,
        to: &str,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> ResponseMatch {
        let key = TxKey::new(branch, cseq_method);
        let answer = cseq_method == Method::Invite && (200..300).contains(&code);
        if answer && self.accepted.get(&self.hashes.hash_one(branch)).is_some() {
            return ResponseMatch::Answer2xx;
        }
        let Some(tx) = self.client.get_mut(&key) else {
            return if answer {
                ResponseMatch::Deliver2xxRetransmission
            } else {
                ResponseMatch::Unmatched
            };
        };
        let id = TimerId::Client(key.clone());
        // A request of the SIP core's own (no call's): its answers end here.
        let deliver = if tx.call_id.is_empty() {
            ResponseMatch::Absorbed
        } else {
            ResponseMatch::Deliver
        };
        if tx.state == State::Completed {
            if answer && tx.new_dialog {
                return ResponseMatch::Unwanted2xx;
            }
            if let Some(ack) = &tx.ack {
                out.push(Output::Transmit {
                    peer: tx.peer,
                    data: ack.clone(),
                    retransmission: true,
                });
            }
            return ResponseMatch::Absorbed;
        }
        if code < 200 {
            if cseq_method == Method::Invite {
                // Proceeding: the INVITE is no longer retransmitted nor timed out here;
                // the call's own ring timer decides how long to wait. Each provisional
                // restarts the INVITE limit (RFC 3261's Timer C), swept, not timed.
                tx.timers.retransmit_at = None;
                tx.timers.expire_at = None;
                tx.since = now;
            } else if tx.timers.retransmit_at.is_some() {
                tx.timers.interval = T2;
            }
            return deliver;
        }
        if answer {
            let Some(tx) = self.client.remove(&key).filter(|tx| tx.new_dialog) else {
                return deliver;
            };
            // RFC 6026's Accepted state, in a table of its own (see [`Accepted`]):
            // ended by the sweep, no timer of its own.
            let accepted = Accepted {
                since: now,
                call_id: self.hashes.hash_one(&tx.call_id),
                peer: tx.peer.addr.ip(),
                answers: Answers::default(),
            };
            self.accepted.insert(self.hashes.hash_one(branch), accepted);
            self.arm_sweep(now);
            return ResponseMatch::Answer2xx;
        }
        tx.state = State::Completed;
        tx.timers.retransmit_at = None;
        tx.request = Bytes::new(); // never sent again
        if let Some(invite) = tx.invite.take() {
            let ack = Bytes::from(invite.ack_for_failure(to).to_bytes());
            out.push(Output::Transmit {
                peer: tx.peer,
                data: ack.clone(),
                retransmission: false,
            });
            tx.ack = Some(ack);
            // Timer D; for an INVITE that opened a dialog 64*T1 whatever the transport:
            // besides the failure's retransmissions (UDP) it waits for a fork's 2xx
            // that crossed the failure (see [`ResponseMatch::Unwanted2xx`]).
            let linger = if tx.new_dialog {
                TIMEOUT
            } else {
                linger(&tx.peer, TIMEOUT)
            };
            tx.timers.expire_at = Some(end_at(now + linger, self.base));
        } else {
            // Timer K
            tx.timers.expire_at = Some(end_at(now + linger(&tx.peer, T4), self.base));
        }
        let next = tx.timers.next();
        self.schedule(next, id);
        deliver
    }

    /// A 2xx reported as [`ResponseMatch::Answer2xx`] on the INVITE of `branch` was
    /// `taken` by a call (queued at it), or reached none (none is registered under its
    /// Call-ID, or the call has ended): what the SIP core does with it. Not asked for
    /// one a call could not take for a full inbox (the call lives, and takes its
    /// repeat).
    pub fn answer_2xx(&mut self, branch: &str, answer: &AnswerFrom, taken: bool) -> AnswerAction {
        let hashes = &self.hashes;
        let Some(acc) = self.accepted.get_mut(&hashes.hash_one(branch)) else {
            return AnswerAction::Nothing;
        };
        if acc.call_id != hashes.hash_one(answer.call_id) || acc.peer != answer.source {
            return AnswerAction::Nothing;
        }
        acc.answers.answer(hashes.hash_one(answer.tag), taken)
    }

    /// What the SIP core does with a 2xx reported as [`ResponseMatch::Unwanted2xx`] on
    /// the INVITE of `branch`: hang it up the first time for its To tag, then ACK it
    /// (at most [`FORKS_KEPT`] tags hung up); nothing for one from another address
    /// or naming another Call-ID than the INVITE's.
    pub fn unwanted_2xx(&mut self, branch: &str, answer: &AnswerFrom) -> AnswerAction {
        let hashes = &self.hashes;
        let key = TxKey::new(branch, Method::Invite);
        let Some(tx) = self.client.get_mut(&key) else {
            return AnswerAction::Nothing;
        };
        if tx.call_id != answer.call_id || tx.peer.addr.ip() != answer.source {
            return AnswerAction::Nothing;
        }
        tx.forks.answer(hashes.hash_one(answer.tag), false)
    }

    // ---- time ----

    /// When the shard must next wake for these transactions. Timers whose transaction
    /// moved on (answered before a retransmission was due, acknowledged, ended) are
    /// dropped here rather than woken for: most of a call's timers end so.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some((&key, id)) = self.timers.first_key_value() {
            // The first timer is checked once, not at every message of the shard's loop
            // (should it go stale later, its handler skips it, as before).
            if self.head_checked == Some(key) || self.is_due(id, key.0) {
                self.head_checked = Some(key);
                break;
            }
            self.timers.pop_first();
        }
        let timer = self.timers.first_key_value().map(|((at, _), _)| *at);
        timer.into_iter().chain(self.next_sweep).min()
    }

    /// Whether a timer set for `at` is still its transaction's next one.
    fn is_due(&self, id: &TimerId, at: Instant) -> bool {
        let next = match id {
            TimerId::Server(key) => self.server.get(key).and_then(|tx| tx.timers.next()),
            TimerId::Client(key) => self.client.get(key).and_then(|tx| tx.timers.next()),
            TimerId::Ok2xx(key) => self.ok2xx.get(key).and_then(|p| p.timers.next()),
        };
        next == Some(at)
    }

    /// The sweep's next step: the first step of the grain after `now` (at most
    /// [`SWEEP_STEP`] on; counted from `now + SWEEP_STEP` a step woken a little late
    /// would round up to two steps on).
    fn next_step(&self, now: Instant) -> Instant {
        end_at(now + Duration::from_nanos(1), self.base)
    }

    fn arm_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(self.next_step(now));
        }
    }

    /// One step of the sweep for transactions that no timer ends and nobody will
    /// finish: a request whose call never answered it (its message was dropped at a
    /// full inbox, or the call ended first) and an INVITE of ours that got a
    /// provisional answer and then nothing (a 180 and silence, a CANCEL never answered
    /// 487). Without it each stays for good: memory a peer could grow one request at
    /// a time, and a request it would go on treating as a retransmission. Removed:
    /// a server transaction still without a final response after [`TIMEOUT`] (its
    /// client's Timer F has fired) or, for an INVITE, the INVITE limit; a client
    /// INVITE after the INVITE limit, reported as a timeout to its call.
    fn sweep(&mut self, now: Instant, out: &mut Vec<Output>) {
        let segment = self.sweep_segment;
        self.sweep_segment = (segment + 1) % crate::segmented::SEGMENTS;
        let (invite_limit, answer_limit) = (self.invite_limit, self.answer_limit);
        let removed = self.server.retain_segment(segment, |key, tx| {
            let limit = if key.method == Method::Invite {
                answer_limit
            } else {
                TIMEOUT
            };
            tx.state != State::Proceeding || now.saturating_duration_since(tx.since) < limit
        });
        for _ in 0..removed {
            out.push(Output::Abandoned { server: true });
        }
        let mut timed_out = Vec::new();
        self.client.retain_segment(segment, |key, tx| {
            let stuck = key.method == Method::Invite
                && tx.state == State::Proceeding
                && now.saturating_duration_since(tx.since) >= invite_limit;
            if stuck {
                timed_out.push((key.clone(), tx.call_id.clone()));
            }
            !stuck
        });
        for (key, call_id) in timed_out {
            out.push(Output::Abandoned { server: false });
            out.push(Output::ClientTimeout { key, call_id });
        }
        self.accepted.retain_segment(segment, |_, a| {
            now.saturating_duration_since(a.since) < TIMEOUT
        });
        let open = self.server.len() + self.client.len() + self.accepted.len() > 0;
        self.next_sweep = open.then(|| self.next_step(now));
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.next_sweep.is_some_and(|at| at <= now) {
            self.sweep(now, out);
        }
        while self
            .timers
            .first_key_value()
            .is_some_and(|((at, _), _)| *at <= now)
        {
            let Some(((at, _), id)) = self.timers.pop_first() else {
                break;
            };
            match id {
                TimerId::Server(key) => self.server_timer(key, at, now, out),
                TimerId::Client(key) => self.client_timer(key, at, now, out),
                TimerId::Ok2xx(k) => self.ok2xx_timer(k, at, now, out),
            }
        }
    }

    fn server_timer(&mut self, key: TxKey, at: Instant, now: Instant, out: &mut Vec<Output>) {
        let Some(tx) = self.server.get_mut(&key) else {
            return;
        };
        if tx.timers.next() != Some(at) {
            return; // stale entry
        }
        if tx.timers.expire_at.is_some_and(|e| e <= now) {
            self.server.remove(&key);
            return;
        }
        if let (Some(_), Some(resp)) = (tx.timers.retransmit_at, &tx.last_response) {
            out.push(Output::Transmit {
                peer: tx.peer,
                data: resp.clone(),
                retransmission: true,
            });
            tx.timers.interval = (tx.timers.interval * 2).min(T2); // Timer G
            tx.timers.retransmit_at = Some(now + tx.timers.interval);
        }
        let next = tx.timers.next();
        self.schedule(next, TimerId::Server(key));
    }

    fn client_timer(&mut self, key: TxKey, at: Instant, now: Instant, out: &mut Vec<Output>) {
        let Some(tx) = self.client.get_mut(&key) else {
            return;
        };
        if tx.timers.next() != Some(at) {
            return;
        }
        if tx.timers.expire_at.is_some_and(|e| e <= now) {
            let tx = self.client.remove(&key).expect("present");
            if tx.state == State::Proceeding {
                out.push(Output::ClientTimeout {
                    key,
                    call_id: tx.call_id,
                });
            }
            return;
        }
        if tx.timers.retransmit_at.is_some() {
            out.push(Output::Transmit {
                peer: tx.peer,
                data: tx.request.clone(),
                retransmission: true,
            });
            tx.timers.interval *= 2; // Timer A doubles without cap; Timer E caps at T2
            if key.method != Method::Invite {
                tx.timers.interval = tx.timers.interval.min(T2);
            }
            tx.timers.retransmit_at = Some(now + tx.timers.interval);
        }
        let next = tx.timers.next();
        self.schedule(next, TimerId::Client(key));
    }

    /// An ACK of a 2xx (see [`RequestMatch::AckFor2xx`]) with this To tag arrived: the
    /// 2xx of that Call-ID and CSeq is acknowledged if the tag is the one it gave the
    /// dialog. An ACK outside the dialog acknowledges nothing (RFC 3261 12.2.2): one
    /// with a wrong tag used to stop the retransmissions and disarm the ACK timeout,
    /// so a source that knew a Call-ID kept a call up until `max_call_seconds` (a
    /// live torture run). True if it was acknowledged now.
    pub fn acked_2xx(&mut self, call_id: &str, cseq: u32, to_tag: Option<&str>) -> bool {
        let key = (call_id.to_string(), cseq);
        let ours = self
            .ok2xx
            .get(&key)
            .is_some_and(|p| p.to_tag.is_none() || p.to_tag.as_deref() == to_tag);
        if ours {
            self.ok2xx.remove(&key);
        }
        ours
    }

    fn ok2xx_timer(&mut self, k: (String, u32), at: Instant, now: Instant, out: &mut Vec<Output>) {
        let Some(p) = self.ok2xx.get_mut(&k) else {
            return;
        };
        if p.timers.next() != Some(at) {
            return;
        }
        if p.timers.expire_at.is_some_and(|e| e <= now) {
            self.ok2xx.remove(&k);
            out.push(Output::AckTimeout { call_id: k.0 });
            return;
        }
        out.push(Output::Transmit {
            peer: p.peer,
            data: p.response.clone(),
            retransmission: true,
        });
        p.timers.interval = (p.timers.interval * 2).min(T2);
        p.timers.retransmit_at = Some(now + p.timers.interval);
        let next = p.timers.next();
        self.schedule(next, TimerId::Ok2xx(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Transport;

    fn udp() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: "127.0.0.1:5070".parse().unwrap(),
        }
    }
    fn tcp() -> Peer {
        Peer {
            transport: Transport::Tcp,
            addr: "127.0.0.1:5070".parse().unwrap(),
        }
    }

    fn transmits(out: &[Output]) -> usize {
        out.iter()
            .filter(|o| matches!(o, Output::Transmit { .. }))
            .count()
    }

    /// Runs the clock forward in 10 ms steps and returns every output, with its time.
    fn run(t: &mut Transactions, start: Instant, until: Duration) -> Vec<(Duration, Output)> {
        let mut all = Vec::new();
        let mut now = start;
        while now <= start + until {
            let mut out = Vec::new();
            t.handle_timeout(now, &mut out);
            all.extend(out.into_iter().map(|o| (now - start, o)));
            now += Duration::from_millis(10);
        }
        all
    }

    #[test]
    fn client_invite_retransmits_on_timer_a_then_times_out() {
        let mut t = Transactions::new();
        let now = Instant::now();
        let key = TxKey::new("z9hG4bKa", Method::Invite);
        let mut out = Vec::new();
        t.send_request(
            key.clone(),
            udp(),
            Bytes::from_static(b"INVITE"),
            None,
            "c1",
            now,
            &mut out,
        );
        assert_eq!(transmits(&out), 1);
        let outs = run(&mut t, now, Duration::from_secs(33));
        let times: Vec<u64> = outs
            .iter()
            .filter(|(_, o)| matches!(o, Output::Transmit { .. }))
            .map(|(d, _)| d.as_millis() as u64 / 10 * 10)
            .collect();
        // Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s (doubling, no cap).
        assert_eq!(times, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert!(
            matches!(outs.last(), Some((d, Output::ClientTimeout { call_id, .. })) if call_id == "c1" && d.as_secs() == 32)
        );
    }

    /// Sends an INVITE of ours on `branch` and takes a 180 for it (how it matched).
    fn ringing(t: &mut Transactions, branch: &str, call_id: &str, now: Instant) -> ResponseMatch {
        let mut out = Vec::new();
        let key = TxKey::new(branch, Method::Invite);
        let invite = Bytes::from_static(b"INVITE");
        t.send_request(key, udp(), invite, None, call_id, now, &mut out);
        t.on_response(branch, Method::Invite, 180, "<sip:x>;tag=1", now, &mut out)
    }

    #[test]
    fn provisional_stops_invite_retransmission_and_timeout() {
        let mut t = Transactions::new();
        let now = Instant::now();
        assert_eq!(
            ringing(&mut t, "z9hG4bKa", "c1", now),
            ResponseMatch::Deliver
        );
        assert!(run(&mut t, now, Duration::from_secs(40)).is_empty());
    }

    /// The sweep: what no timer ends and nobody finishes is forgotten at its limit,
    /// and nothing that will still be finished is. Each row: the transaction, how
    /// long the clock runs, whether it is still there, the outputs it led to.
    #[test]
    fn transactions_nobody_finishes_are_swept_at_their_limit() {
        let limit = Duration::from_secs(60);
        #[derive(Clone, Copy, Debug)]
        enum Tx {
            /// An INFO (or BYE) whose call dropped it.
            UnansweredRequest,
            UnansweredInvite,
            /// An INVITE of ours answered 180, then nothing.
            ProvisionalOnly,
        }
        let sweep_cycle = SWEEP_STEP * crate::segmented::SEGMENTS as u32;
        let cases = [
            (
                Tx::UnansweredRequest,
                TIMEOUT - Duration::from_secs(1),
                true,
                0,
            ),
            (Tx::UnansweredRequest, TIMEOUT + sweep_cycle, false, 1),
            (Tx::UnansweredInvite, TIMEOUT + sweep_cycle, true, 0),
            // An INVITE we answer has the longer limit.
            (Tx::UnansweredInvite, limit + sweep_cycle, true, 0),
            (Tx::UnansweredInvite, 2 * limit + sweep_cycle, false, 1),
            (Tx::ProvisionalOnly, limit - Duration::from_secs(1), true, 0),
            (Tx::ProvisionalOnly, limit + sweep_cycle, false, 2),
        ];
        for (tx, runs, kept, outputs) in cases {
            let mut t = Transactions::with_invite_limits(2 * limit, limit);
            let now = Instant::now();
            let mut out = Vec::new();
            match tx {
                Tx::UnansweredRequest => {
                    t.on_request(Method::Info, "z9hG4bKi", "c9", 2, udp(), now, &mut out);
                }
                Tx::UnansweredInvite => {
                    t.on_request(Method::Invite, "z9hG4bKi", "c9", 1, udp(), now, &mut out);
                }
                Tx::ProvisionalOnly => {
                    ringing(&mut t, "z9hG4bKi", "c9", now);
                }
            }
            let outs = run(&mut t, now, runs);
            let (s, c, _) = t.counts();
            assert_eq!(s + c == 1, kept, "{tx:?} after {runs:?}");
            assert_eq!(outs.len(), outputs, "{tx:?} after {runs:?}: {outs:?}");
            match (tx, kept) {
                (Tx::ProvisionalOnly, false) => assert!(outs.iter().any(|(_, o)| matches!(
                    o,
                    Output::ClientTimeout { call_id, .. } if call_id == "c9"
                ))),
                (Tx::UnansweredRequest, false) => {
                    // The request again is a new one, not a retransmission swallowed
                    // for want of an answer to resend.
                    let later = now + runs;
                    assert_eq!(
                        t.on_request(Method::Info, "z9hG4bKi", "c9", 2, udp(), later, &mut out),
                        RequestMatch::New
                    );
                }
                _ => {}
            }
        }
    }

    /// Each provisional response restarts an INVITE of ours' limit (Timer C): a
    /// callee that sends 180 again keeps its INVITE.
    #[test]
    fn a_new_provisional_restarts_the_invite_limit() {
        let limit = Duration::from_secs(60);
        let mut t = Transactions::with_invite_limits(limit, limit);
        let now = Instant::now();
        let mut out = Vec::new();
        ringing(&mut t, "z9hG4bKc", "c6", now);
        let later = now + Duration::from_secs(50);
        run(&mut t, now, Duration::from_secs(50));
        t.on_response(
            "z9hG4bKc",
            Method::Invite,
            183,
            "<sip:x>;tag=1",
            later,
            &mut out,
        );
        assert!(run(&mut t, later, Duration::from_secs(55)).is_empty());
        assert_eq!(t.counts().1, 1, "kept: 55 s since its last provisional");
    }

    #[test]
    fn answered_transactions_are_not_swept() {
        let mut t =
            Transactions::with_invite_limits(Duration::from_secs(60), Duration::from_secs(60));
        let now = Instant::now();
        let mut out = Vec::new();
        t.on_request(Method::Invite, "z9hG4bKr", "c8", 1, tcp(), now, &mut out);
        let key = TxKey::new("z9hG4bKr", Method::Invite);
        t.send_response(
            &key,
            180,
            Bytes::from_static(b"180"),
            "c8",
            1,
            now,
            &mut out,
        );
        // Ringing for 50 s (under the limit), then answered: the 200 goes out.
        run(&mut t, now, Duration::from_secs(50));
        let later = now + Duration::from_secs(50);
        assert!(t.send_response(
            &key,
            200,
            Bytes::from_static(b"200"),
            "c8",
            1,
            later,
            &mut out
        ));
    }

    /// An INVITE of ours with To `to` and CSeq `cseq` (no tag and CSeq 1: it opens a
    /// dialog), sent over `peer` on branch `branch`, Call-ID "c".
    fn send_invite(t: &mut Transactions, peer: Peer, branch: &str, to: &str, cseq: u32) {
        let spec = RequestSpec {
            method: Method::Invite,
            uri: "sip:1@127.0.0.1:5070".into(),
            transport: peer.transport,
            sent_by: "127.0.0.1:5060".parse().unwrap(),
            branch: branch.into(),
            from: "<sip:a@h>;tag=n".into(),
            to: to.into(),
            call_id: "c".into(),
            cseq,
            contact: None,
            routes: vec![],
            max_forwards: 70,
            extra: vec![],
            body: None,
        };
        let key = TxKey::new(branch, Method::Invite);
        let data = Bytes::from(spec.to_bytes());
        let mut out = Vec::new();
        let invite = Some(Box::new(spec));
        t.send_request(key, peer, data, invite, "c", Instant::now(), &mut out);
    }

    /// Where a 2xx in [`answers_after_an_invites_final_one_tell_forks_from_repeats`]
    /// comes from.
    #[derive(Clone, Copy, Debug)]
    enum Sender {
        /// The INVITE's peer, for the INVITE's Call-ID.
        Fork,
        /// Another address.
        Elsewhere,
        /// The INVITE's peer, naming another Call-ID.
        OtherCall,
    }

    /// What an INVITE of ours makes of the answers after its final one, over UDP and
    /// TCP alike. One that opened a dialog (CSeq 1, no To tag): after a failure every
    /// 2xx is a fork nobody wants (hung up once per To tag, then ACKed only); after a
    /// 2xx every 2xx is for the call, and one that no call takes is hung up once per
    /// To tag unless a call took that tag before (its dialog, or a fork it hung up
    /// itself: it may live on at another node); at most [`FORKS_KEPT`] tags; never
    /// one from another address than the INVITE's or naming another Call-ID. One
    /// inside a dialog (a re-INVITE, with or without a To tag: a callee may answer
    /// without one) as before: a 2xx after its failure absorbed, after its 2xx one for
    /// the call. Each row: the INVITE's To and CSeq, its final answer, then each
    /// answer (code, To tag, whether a call took it, who sent it) with how it matched
    /// and what the core was told to do.
    #[test]
    fn answers_after_an_invites_final_one_tell_forks_from_repeats() {
        use AnswerAction::{Ack, HangUp, Nothing};
        use ResponseMatch::{
            Absorbed, Answer2xx, Deliver2xxRetransmission, Unmatched, Unwanted2xx,
        };
        use Sender::{Elsewhere, Fork, OtherCall};
        let new = ("<sip:1@h>", 1);
        let in_dialog = ("<sip:1@h>;tag=u", 2);
        let tagless_in_dialog = ("<sip:1@h>", 2);
        type Step = (
            (u16, String, bool, Sender),
            (ResponseMatch, Option<AnswerAction>),
        );
        let step = |code: u16, tag: &str, taken: bool, got: ResponseMatch, action| {
            ((code, tag.to_string(), taken, Fork), (got, action))
        };
        let from = |sender: Sender, tag: &str, got: ResponseMatch, action| {
            ((200, tag.to_string(), false, sender), (got, action))
        };
        let cases: Vec<((&str, u32), u16, Vec<Step>)> = vec![
            (
                new,
                603,
                vec![
                    step(603, "u", false, Absorbed, None),
                    from(Elsewhere, "f", Unwanted2xx, Some(Nothing)),
                    from(OtherCall, "f", Unwanted2xx, Some(Nothing)),
                    step(200, "f", false, Unwanted2xx, Some(HangUp)),
                    step(200, "f", false, Unwanted2xx, Some(Ack)),
                    step(200, "g", false, Unwanted2xx, Some(HangUp)),
                ],
            ),
            (
                new,
                486,
                (0..=FORKS_KEPT)
                    .map(|i| {
                        let action = if i < FORKS_KEPT { HangUp } else { Ack };
                        step(200, &format!("f{i}"), false, Unwanted2xx, Some(action))
                    })
                    .collect(),
            ),
            (
                new,
                200,
                vec![
                    // The call took the first (noted as it was); its repeat reaches none.
                    step(200, "u", false, Answer2xx, Some(Nothing)),
                    // Not the INVITE's peer or dialog: left alone.
                    from(Elsewhere, "f", Answer2xx, Some(Nothing)),
                    from(OtherCall, "f", Answer2xx, Some(Nothing)),
                    // A fork no call takes: hung up, then its repeat ACKed.
                    step(200, "f", false, Answer2xx, Some(HangUp)),
                    step(200, "f", false, Answer2xx, Some(Ack)),
                    // A fork the call took (and hung up itself): its repeat left alone.
                    step(200, "g", true, Answer2xx, Some(Nothing)),
                    step(200, "g", false, Answer2xx, Some(Nothing)),
                    // Other answers find no transaction (the INVITE's ended at its 2xx).
                    step(180, "h", false, Unmatched, None),
                    step(486, "h", false, Unmatched, None),
                ],
            ),
            (
                new,
                200,
                // Eight tags remembered, the call's among them.
                (0..FORKS_KEPT)
                    .map(|i| {
                        let action = if i + 1 < FORKS_KEPT { HangUp } else { Ack };
                        step(200, &format!("f{i}"), false, Answer2xx, Some(action))
                    })
                    .collect(),
            ),
            (in_dialog, 488, vec![step(200, "u", false, Absorbed, None)]),
            (
                tagless_in_dialog,
                500,
                vec![step(200, "u", false, Absorbed, None)],
            ),
            (
                in_dialog,
                200,
                vec![step(200, "v", false, Deliver2xxRetransmission, None)],
            ),
            (
                tagless_in_dialog,
                200,
                vec![step(200, "v", false, Deliver2xxRetransmission, None)],
            ),
        ];
        for peer in [udp(), tcp()] {
            for ((to, cseq), final_code, steps) in &cases {
                let mut t = Transactions::new();
                let now = Instant::now();
                send_invite(&mut t, peer, "z9hG4bKf", to, *cseq);
                let mut out = Vec::new();
                let at = |tag: &str| format!("<sip:1@h>;tag={tag}");
                let answer = |tag, sender| AnswerFrom {
                    tag,
                    call_id: if matches!(sender, OtherCall) {
                        "other"
                    } else {
                        "c"
                    },
                    source: if matches!(sender, Elsewhere) {
                        "127.0.0.9".parse().unwrap()
                    } else {
                        peer.addr.ip()
                    },
                };
                let first = t.on_response(
                    "z9hG4bKf",
                    Method::Invite,
                    *final_code,
                    &at("u"),
                    now,
                    &mut out,
                );
                let opened = (*to, *cseq) == new && *final_code == 200;
                if opened {
                    assert_eq!(first, Answer2xx);
                    assert_eq!(t.answer_2xx("z9hG4bKf", &answer("u", Fork), true), Nothing);
                } else {
                    assert_eq!(first, ResponseMatch::Deliver);
                }
                for ((code, tag, taken, sender), want) in steps {
                    let got =
                        t.on_response("z9hG4bKf", Method::Invite, *code, &at(tag), now, &mut out);
                    let from = answer(tag, *sender);
                    let action = match got {
                        Answer2xx => Some(t.answer_2xx("z9hG4bKf", &from, *taken)),
                        Unwanted2xx => Some(t.unwanted_2xx("z9hG4bKf", &from)),
                        _ => None,
                    };
                    assert_eq!(
                        &(got, action),
                        want,
                        "{peer:?}, {to} CSeq {cseq} after {final_code}: {code} {tag} from {sender:?}"
                    );
                }
                // Kept 64*T1 (the accepted ones until the sweep passes them), then
                // gone, with no timeout for the call; one inside a dialog as before.
                let kept = |t: &Transactions| t.counts().1 + t.accepted_count();
                let lingers =
                    (*to, *cseq) == new || (*final_code != 200 && !peer.transport.reliable());
                let outs = run(&mut t, now, TIMEOUT - Duration::from_millis(10));
                assert_eq!(
                    kept(&t),
                    usize::from(lingers),
                    "{peer:?}, {to} after {final_code}: kept 64*T1"
                );
                let sweep_cycle = SWEEP_STEP * crate::segmented::SEGMENTS as u32;
                let outs2 = run(&mut t, now, TIMEOUT + sweep_cycle + END_GRAIN);
                assert_eq!(kept(&t), 0, "{peer:?}, {to} after {final_code}: then gone");
                let timeouts = outs.iter().chain(&outs2);
                assert!(!timeouts
                    .into_iter()
                    .any(|(_, o)| matches!(o, Output::ClientTimeout { .. })));
            }
        }
    }

    /// A request of the SIP core's own (no call's: an empty Call-ID for its
    /// transaction, the BYE of a fork it hangs up) keeps its answers: none is handed on.
    #[test]
    fn answers_to_the_cores_own_requests_end_in_their_transaction() {
        for (call_id, want) in [("c", ResponseMatch::Deliver), ("", ResponseMatch::Absorbed)] {
            for code in [100, 200, 481] {
                let mut t = Transactions::new();
                let now = Instant::now();
                let mut out = Vec::new();
                let key = TxKey::new("z9hG4bKo", Method::Bye);
                t.send_request(
                    key,
                    udp(),
                    Bytes::from_static(b"BYE"),
                    None,
                    call_id,
                    now,
                    &mut out,
                );
                let got = t.on_response(
                    "z9hG4bKo",
                    Method::Bye,
                    code,
                    "<sip:1@h>;tag=u",
                    now,
                    &mut out,
                );
                assert_eq!(got, want, "{code} to a request of {call_id:?}");
            }
        }
    }

    #[test]
    fn failure_response_is_acked_and_retransmissions_absorbed() {
        let mut t = Transactions::new();
        let now = Instant::now();
        let spec = RequestSpec {
            method: Method::Invite,
            uri: "sip:1@127.0.0.1:5070".into(),
            transport: Transport::Udp,
            sent_by: "127.0.0.1:5060".parse().unwrap(),
            branch: "z9hG4bKb".into(),
            from: "<sip:a@h>;tag=f".into(),
            to: "<sip:1@h>".into(),
            call_id: "c2".into(),
            cseq: 1,
            contact: None,
            routes: vec![],
            max_forwards: 70,
            extra: vec![],
            body: None,
        };
        let mut out = Vec::new();
        t.send_request(
            TxKey::new("z9hG4bKb", Method::Invite),
            udp(),
            Bytes::from(spec.to_bytes()),
            Some(Box::new(spec)),
            "c2",
            now,
            &mut out,
        );
        out.clear();
        assert_eq!(
            t.on_response(
                "z9hG4bKb",
                Method::Invite,
                486,
                "<sip:1@h>;tag=u",
                now,
                &mut out
            ),
            ResponseMatch::Deliver
        );
        let Some(Output::Transmit { data, .. }) = out.first() else {
            panic!("ACK sent")
        };
        assert!(data.starts_with(b"ACK sip:1@127.0.0.1:5070"));
        out.clear();
        assert_eq!(
            t.on_response(
                "z9hG4bKb",
                Method::Invite,
                486,
                "<sip:1@h>;tag=u",
                now,
                &mut out
            ),
            ResponseMatch::Absorbed
        );
        assert_eq!(transmits(&out), 1, "ACK resent for the retransmitted 486");
        assert!(run(&mut t, now, Duration::from_secs(33))
            .iter()
            .all(|(_, o)| !matches!(o, Output::ClientTimeout { .. })));
        assert_eq!(t.counts().1, 0, "Timer D removed it");
    }

    #[test]
    fn a_cancel_matches_its_invite_only_with_the_same_call_id_and_cseq() {
        let now = Instant::now();
        // (CANCEL's Call-ID, CSeq number, expected)
        let cases = [
            ("c7", 5, true),
            ("victim", 5, false), // another call's Call-ID on a known branch
            ("c7", 6, false),
        ];
        for (call_id, cseq, matches) in cases {
            let mut t = Transactions::new();
            let mut out = Vec::new();
            t.on_request(Method::Invite, "z9hG4bKc", "c7", 5, udp(), now, &mut out);
            let got = t.on_request(
                Method::Cancel,
                "z9hG4bKc",
                call_id,
                cseq,
                udp(),
                now,
                &mut out,
            );
            let want = if matches {
                RequestMatch::Cancel(TxKey::new("z9hG4bKc", Method::Invite))
            } else {
                RequestMatch::CancelUnmatched
            };
            assert_eq!(got, want, "CANCEL {call_id} {cseq}");
        }
    }

    /// A hundred calls within 100 ms (an INVITE answered 200 and acknowledged, a BYE
    /// of ours answered 200): every time the shard wakes until they have all ended is a
    /// step of the grain (the sweep's and the ends' alike), none for a retransmission
    /// that an answer or an ACK made void, and at most one a grain. Each timer was a
    /// wake-up of its own before, off the grain.
    #[test]
    fn the_timers_of_many_calls_share_wake_ups() {
        let mut t = Transactions::new();
        let start = Instant::now();
        let mut out = Vec::new();
        for i in 0..100u64 {
            let now = start + Duration::from_millis(i);
            let (branch, call, bye) = (
                format!("z9hG4bKw{i}"),
                format!("w{i}"),
                format!("z9hG4bKb{i}"),
            );
            t.on_request(Method::Invite, &branch, &call, 1, udp(), now, &mut out);
            let invite = TxKey::new(&branch, Method::Invite);
            assert!(t.send_response(
                &invite,
                200,
                Bytes::from_static(b"200"),
                &call,
                1,
                now,
                &mut out
            ));
            let ack = t.on_request(Method::Ack, "z9hG4bKack", &call, 1, udp(), now, &mut out);
            assert_eq!(ack, RequestMatch::AckFor2xx);
            assert!(t.acked_2xx(&call, 1, None));
            let key = TxKey::new(&bye, Method::Bye);
            t.send_request(
                key,
                udp(),
                Bytes::from_static(b"BYE"),
                None,
                &call,
                now,
                &mut out,
            );
            t.on_response(&bye, Method::Bye, 200, "tag", now, &mut out);
        }
        out.clear();
        let mut wakes = Vec::new();
        while let Some(at) = t.poll_timeout() {
            t.handle_timeout(at, &mut out);
            wakes.push(at);
        }
        let grain = END_GRAIN.as_nanos();
        let off_grain: Vec<_> = wakes
            .iter()
            .filter(|at| !(**at - t.base).as_nanos().is_multiple_of(grain))
            .collect();
        assert!(off_grain.is_empty(), "{off_grain:?}");
        let (first, last) = (wakes[0], wakes[wakes.len() - 1]);
        let steps = (last - first).as_nanos() / grain + 1;
        assert!(
            wakes.len() as u128 <= steps,
            "{} wakes in {steps} steps",
            wakes.len()
        );
        assert_eq!(transmits(&out), 0, "nothing resent");
        assert_eq!(t.counts(), (0, 0, 0), "every transaction ended");
        let ended = last - start;
        assert!(
            ended >= TIMEOUT && ended < TIMEOUT + Duration::from_millis(200),
            "{ended:?}"
        );
    }

    #[test]
    fn ends_fall_on_the_grain_at_most_one_grain_late() {
        let base = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(END_GRAIN, ms(40));
        // (offset of `at` from base, offset of its end)
        let rows = [
            (ms(0), ms(0)),
            (ms(1), ms(40)),
            (ms(39), ms(40)),
            (ms(40), ms(40)),
            (ms(32_001), ms(32_040)),
            (Duration::from_nanos(40_000_001), ms(80)),
        ];
        for (at, end) in rows {
            assert_eq!(end_at(base + at, base) - base, end, "{at:?}");
        }
        let earlier = base - ms(5);
        assert_eq!(end_at(earlier, base), earlier, "before the base: unchanged");
    }

    fn from(addr: &str) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: addr.parse().unwrap(),
        }
    }

    /// A branch names one request: another Call-ID or CSeq from the same source under
    /// a branch already taken is not a retransmission (it would get the other
    /// request's response) but dropped; and past the shard's cap new requests are
    /// dropped, the table does not grow.
    #[test]
    fn a_branch_names_one_request_and_the_table_is_capped() {
        let now = Instant::now();
        let caller = from("127.0.0.1:5070");
        let mut t = Transactions::new();
        let mut out = Vec::new();
        let req =
            |t: &mut Transactions, branch: &str, call: &str, cseq: u32, out: &mut Vec<Output>| {
                t.on_request(Method::Options, branch, call, cseq, caller, now, out)
            };
        assert_eq!(
            req(&mut t, "z9hG4bK1", "c1", 1, &mut out),
            RequestMatch::New
        );
        assert_eq!(
            req(&mut t, "z9hG4bK1", "c1", 1, &mut out),
            RequestMatch::Retransmission
        );
        assert_eq!(
            req(&mut t, "z9hG4bK1", "c2", 1, &mut out),
            RequestMatch::Foreign
        );
        assert_eq!(
            req(&mut t, "z9hG4bK1", "c1", 2, &mut out),
            RequestMatch::Foreign
        );
        t.max_server = 3;
        assert_eq!(
            req(&mut t, "z9hG4bK2", "c2", 1, &mut out),
            RequestMatch::New
        );
        assert_eq!(
            req(&mut t, "z9hG4bK3", "c3", 1, &mut out),
            RequestMatch::New
        );
        assert_eq!(
            req(&mut t, "z9hG4bK4", "c4", 1, &mut out),
            RequestMatch::Full
        );
        assert_eq!(t.counts().0, 3);
        // A retransmission of one it holds is still answered.
        assert_eq!(
            req(&mut t, "z9hG4bK3", "c3", 1, &mut out),
            RequestMatch::Retransmission
        );
    }

    /// A server transaction answers only the source that began it (by address: a port
    /// may change): a peer elsewhere that learnt its branch, Call-ID and CSeq gets no
    /// response resent, cannot stop the failure's retransmissions with an ACK, and
    /// cannot cancel the INVITE. The ACK of a 2xx is end to end and left to the call.
    #[test]
    fn a_server_transaction_answers_only_its_own_source() {
        let now = Instant::now();
        let caller = from("127.0.0.1:5070");
        // (request, its branch, its source, what it matches, the INVITE's final response
        // and whether it is still retransmitted after the request); the ACK of a 2xx
        // is a transaction of its own (another branch)
        let (same, other) = ("z9hG4bKf", "z9hG4bKack");
        let cases = [
            (
                Method::Invite,
                same,
                "127.0.0.2:5070",
                RequestMatch::Foreign,
                None,
            ),
            (
                Method::Invite,
                same,
                "127.0.0.1:5071",
                RequestMatch::Retransmission,
                None,
            ),
            (
                Method::Cancel,
                same,
                "127.0.0.2:5070",
                RequestMatch::CancelUnmatched,
                None,
            ),
            (
                Method::Ack,
                same,
                "127.0.0.2:5070",
                RequestMatch::Foreign,
                Some((486, true)),
            ),
            (
                Method::Ack,
                same,
                "127.0.0.1:5070",
                RequestMatch::AckAbsorbed,
                Some((486, false)),
            ),
            // end to end: the call's dialog check judges its source
            (
                Method::Ack,
                other,
                "127.0.0.2:5070",
                RequestMatch::AckFor2xx,
                Some((200, false)),
            ),
            (
                Method::Ack,
                other,
                "127.0.0.1:5070",
                RequestMatch::AckFor2xx,
                Some((200, false)),
            ),
        ];
        for (method, branch, source, want, final_response) in cases {
            let mut t = Transactions::new();
            let mut out = Vec::new();
            let key = TxKey::new("z9hG4bKf", Method::Invite);
            t.on_request(Method::Invite, "z9hG4bKf", "cf", 1, caller, now, &mut out);
            let code = final_response.map_or(100, |(code, _)| code);
            let data = Bytes::from(code.to_string());
            assert!(t.send_response(&key, code, data, "cf", 1, now, &mut out));
            out.clear();
            let got = t.on_request(method, branch, "cf", 1, from(source), now, &mut out);
            assert_eq!(got, want, "{method:?} from {source}");
            if got == RequestMatch::AckFor2xx {
                // As the endpoint does with it (the 2xx here names no To tag).
                t.acked_2xx("cf", 1, None);
            }
            let resent_to_asker = transmits(&out);
            assert_eq!(
                resent_to_asker,
                usize::from(want == RequestMatch::Retransmission),
                "{method:?} from {source}: responses resent"
            );
            if let Some((code, still)) = final_response {
                let later = run(&mut t, now, Duration::from_secs(2));
                let resent = later
                    .iter()
                    .any(|(_, o)| matches!(o, Output::Transmit { .. }));
                assert_eq!(resent, still, "{code} after an ACK from {source}");
            }
        }
    }

    #[test]
    fn server_invite_failure_retransmits_until_ack() {
        let mut t = Transactions::new();
        let now = Instant::now();
        let mut out = Vec::new();
        assert_eq!(
            t.on_request(Method::Invite, "z9hG4bKs", "c3", 1, udp(), now, &mut out),
            RequestMatch::New
        );
        assert_eq!(
            t.on_request(Method::Invite, "z9hG4bKs", "c3", 1, udp(), now, &mut out),
            RequestMatch::Retransmission
        );
        assert!(out.is_empty(), "nothing to resend before a response");
        let key = TxKey::new("z9hG4bKs", Method::Invite);
        assert!(t.send_response(
            &key,
            100,
            Bytes::from_static(b"100"),
            "c3",
            1,
            now,
            &mut out
        ));
        out.clear();
        assert_eq!(
            t.on_request(Method::Invite, "z9hG4bKs", "c3", 1, udp(), now, &mut out),
            RequestMatch::Retransmission
        );
        assert_eq!(transmits(&out), 1, "100 resent");
        assert!(t.send_response(
            &key,
            486,
            Bytes::from_static(b"486"),
            "c3",
            1,
            now,
            &mut out
        ));
        let outs = run(&mut t, now, Duration::from_millis(1600));
        assert_eq!(outs.len(), 2, "Timer G: 0.5 s and 1.5 s");
        assert_eq!(
            t.on_request(Method::Ack, "z9hG4bKs", "c3", 1, udp(), now, &mut out),
            RequestMatch::AckAbsorbed
        );
        assert!(run(
            &mut t,
            now + Duration::from_millis(1600),
            Duration::from_secs(10)
        )
        .is_empty());
    }

    #[test]
    fn server_2xx_retransmits_until_ack_then_reports_missing_ack() {
        let mut t = Transactions::new();
        let now = Instant::now();
        let mut out = Vec::new();
        t.on_request(Method::Invite, "z9hG4bKo", "c4", 1, udp(), now, &mut out);
        let key = TxKey::new("z9hG4bKo", Method::Invite);
        t.send_response(
            &key,
            200,
            Bytes::from_static(b"200"),
            "c4",
            1,
            now,
            &mut out,
        );
        let outs = run(&mut t, now, Duration::from_secs(33));
        let resent = outs
            .iter()
            .filter(|(_, o)| matches!(o, Output::Transmit { .. }))
            .count();
        assert!(resent >= 9, "2xx retransmitted up to T2 spacing: {resent}");
        assert!(
            matches!(outs.last(), Some((_, Output::AckTimeout { call_id })) if call_id == "c4")
        );

        let mut t = Transactions::new();
        t.on_request(Method::Invite, "z9hG4bKo", "c5", 1, udp(), now, &mut out);
        t.send_response(
            &key,
            200,
            Bytes::from_static(b"200"),
            "c5",
            1,
            now,
            &mut out,
        );
        assert_eq!(
            t.on_request(Method::Ack, "z9hG4bKother", "c5", 1, udp(), now, &mut out),
            RequestMatch::AckFor2xx
        );
        assert!(t.acked_2xx("c5", 1, None));
        assert!(run(&mut t, now, Duration::from_secs(33)).is_empty());
    }

    /// Only an ACK with the To tag the 2xx gave acknowledges it: one with another tag
    /// (or none) leaves it retransmitted until its ACK timeout.
    #[test]
    fn an_ack_outside_the_dialog_acknowledges_nothing() {
        let now = Instant::now();
        let two_hundred = Bytes::from_static(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKd\r\nTo: <sip:x@y>;tag=ours\r\nCall-ID: c6\r\n\r\nv=0\r\n",
        );
        assert_eq!(to_tag_of(&two_hundred).as_deref(), Some("ours"));
        assert_eq!(
            to_tag_of(b"SIP/2.0 200 OK\r\nt: <sip:x@y>;tag=t2\r\n\r\n").as_deref(),
            Some("t2")
        );
        assert_eq!(to_tag_of(b"SIP/2.0 200 OK\r\nTo: <sip:x@y>\r\n\r\n"), None);
        for (tag, acknowledged) in [(Some("bad"), false), (None, false), (Some("ours"), true)] {
            let mut t = Transactions::new();
            let mut out = Vec::new();
            let key = TxKey::new("z9hG4bKd", Method::Invite);
            t.on_request(Method::Invite, "z9hG4bKd", "c6", 1, udp(), now, &mut out);
            assert!(t.send_response(&key, 200, two_hundred.clone(), "c6", 1, now, &mut out));
            assert_eq!(
                t.on_request(Method::Ack, "z9hG4bKa", "c6", 1, udp(), now, &mut out),
                RequestMatch::AckFor2xx
            );
            assert_eq!(t.acked_2xx("c6", 1, tag), acknowledged, "{tag:?}");
            let timed_out = run(&mut t, now, Duration::from_secs(33))
                .iter()
                .any(|(_, o)| matches!(o, Output::AckTimeout { .. }));
            assert_eq!(timed_out, !acknowledged, "{tag:?}");
        }
    }

    #[test]
    fn cancel_matches_pending_invite_only() {
        let mut t = Transactions::new();
        let now = Instant::now();
        let mut out = Vec::new();
        t.on_request(Method::Invite, "z9hG4bKc", "c6", 1, udp(), now, &mut out);
        assert_eq!(
            t.on_request(Method::Cancel, "z9hG4bKc", "c6", 1, udp(), now, &mut out),
            RequestMatch::Cancel(TxKey::new("z9hG4bKc", Method::Invite))
        );
        assert_eq!(
            t.on_request(Method::Cancel, "z9hG4bKzz", "c7", 1, udp(), now, &mut out),
            RequestMatch::CancelUnmatched
        );
        // An INVITE answered finally: its CANCEL (crossing the answer) still matches
        // it, for a 200 that changes nothing.
        t.on_request(Method::Invite, "z9hG4bKd", "c9", 1, udp(), now, &mut out);
        let key = TxKey::new("z9hG4bKd", Method::Invite);
        let answer = "SIP/2.0 200 OK\r\nTo: <sip:b@h>;tag=answered\r\nContent-Length: 0\r\n\r\n";
        assert!(t.send_response(
            &key,
            200,
            Bytes::from_static(answer.as_bytes()),
            "c9",
            1,
            now,
            &mut out
        ));
        assert_eq!(
            t.on_request(Method::Cancel, "z9hG4bKd", "c9", 1, udp(), now, &mut out),
            RequestMatch::CancelAfterFinal(Some("answered".into()))
        );
        // From another source, or for another call: nothing of that INVITE's.
        let other = Peer {
            transport: Transport::Udp,
            addr: "127.0.0.2:5070".parse().unwrap(),
        };
        assert_eq!(
            t.on_request(Method::Cancel, "z9hG4bKd", "c9", 1, other, now, &mut out),
            RequestMatch::Foreign
        );
        // The same on branches no CANCEL used yet (the one above met the CANCEL
        // transaction of that branch first): an answered INVITE's CANCEL from another
        // source, or naming another call, matches nothing.
        for (branch, call) in [("z9hG4bKe", "c10"), ("z9hG4bKf", "c11")] {
            t.on_request(Method::Invite, branch, call, 1, udp(), now, &mut out);
            let key = TxKey::new(branch, Method::Invite);
            let answer = Bytes::from_static(answer.as_bytes());
            assert!(t.send_response(&key, 200, answer, call, 1, now, &mut out));
        }
        assert_eq!(
            t.on_request(Method::Cancel, "z9hG4bKe", "c10", 1, other, now, &mut out),
            RequestMatch::CancelUnmatched
        );
        assert_eq!(
            t.on_request(Method::Cancel, "z9hG4bKf", "c8", 1, udp(), now, &mut out),
            RequestMatch::CancelUnmatched
        );
    }

    #[test]
    fn tcp_never_retransmits_but_still_times_out() {
        let mut t = Transactions::new();
        let now = Instant::now();
        let mut out = Vec::new();
        t.send_request(
            TxKey::new("z9hG4bKt", Method::Bye),
            tcp(),
            Bytes::from_static(b"BYE"),
            None,
            "c8",
            now,
            &mut out,
        );
        let outs = run(&mut t, now, Duration::from_secs(33));
        assert_eq!(outs.len(), 1);
        assert!(matches!(outs[0].1, Output::ClientTimeout { .. }));
    }
}
