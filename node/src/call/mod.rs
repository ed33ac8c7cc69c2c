//! The call actor: one task per call (see [`task`]), owning both legs, the media relay and
//! the call's timers. It forwards the caller to the number's destinations in order,
//! relays ringing and answer, tears down on BYE or CANCEL from either side, and writes
//! exactly one log record when the call ends.
//!
//! Decisions (what a failure means, who is calling) come from [`crate::decide`];
//! this module only sequences them and talks to the SIP edge.

mod abandoned;
pub mod checkpoint;
mod flow;
mod forward;
mod legs;
mod media_check;
mod messages;
mod queue;
mod record;
mod reliable;
mod reoffer;
mod session;
pub mod takeover;
mod task;
mod timers;

pub use record::{failed_record, recording_status};
pub use task::{panic_text, CallRef, Exit};

use crate::call_log::LogEntry;
use crate::clock::now_ms;
use crate::context::{CallSlot, NodeContext, TrunkChannel};
use crate::decide::caller::Caller;
use crate::decide::outcome::Failure;
use crate::decide::schedule::{gate, Gate};
use crate::follow_up::plan::{CallEvent, EventKind};
use crate::invite::InviteView;
use crate::lines::LineRequest;
use crate::metrics::{ResultLabel, StatusLabel};
use flow::{After, IvrState, Stage};
use legs::{ALeg, BLeg, Leg};
use reoffer::{Reoffer, TimedOutReinvite};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tsunagu_media::ports::MediaPort;
use tsunagu_media::{sdp, MediaEvent, RecordMode, Relay, Side};
use tsunagu_sip::endpoint::CallSink;
use tsunagu_sip::parse::header;
use tsunagu_sip::{Method, NewInvite, Request, Response, SipEvent, Undelivered};
use tsunagu_store::{
    CallRecord, CallResult, CallState, ClosedAction, Destination, NumberKind, RecordingMode,
    RecordingStatus, TrackingNumber, Validity,
};

/// How long an ending call keeps its lines after its BYE went, at most (see
/// `Call::end_and_wait`): its retransmissions have gone by then (T1, 2*T1).
const LINES_AFTER_BYE: Duration = Duration::from_secs(2);

/// How often a ringing caller's last provisional response is repeated (RFC 3261
/// 13.3.1.1: every minute).
#[cfg(not(test))]
const PROVISIONAL_EVERY: Duration = Duration::from_secs(60);
/// Unit tests with a real call repeat it every second.
#[cfg(test)]
const PROVISIONAL_EVERY: Duration = Duration::from_secs(1);

pub enum CallMsg {
    Start,
    /// Boxed: keeps every actor's mailbox slots small (most calls see few SIP events).
    Sip(Box<SipEvent>),
    RingTimeout(u32),
    /// Attempt n's INVITE has had no response at all by [`forward::NO_RESPONSE`] (or
    /// its ring time, if shorter). A message of its own, not a [`CallMsg::RingTimeout`]:
    /// one due as the first response came was queued behind it past cancelling, and
    /// taken for the ring time's end cancelled a 30 s destination at 5 s (a review).
    NoResponse(u32),
    /// 64*T1 after the CANCEL of attempt n (RFC 3261 9.1): if its INVITE has no final
    /// response yet, the attempt is over.
    CancelUnanswered(u32),
    EndGuard,
    /// The call is ending: its lines go to others now (see `end_and_wait`).
    ReleaseLines,
    /// `sip.max_ring_seconds` since admission: a caller still not answered is given up.
    RingGuard,
    /// The owner of a key's lines answered this call's request (see [`crate::lines`]).
    Line(String, tsunagu_cluster::lines::Answer),
    /// A queued call waited `max_wait_seconds`.
    QueueTimeout,
    /// From the media relay: a key pressed, a prompt ended.
    Media(MediaEvent),
    /// The IVR waited for a key (which wait).
    IvrTimeout(u32),
    /// The callee pressed no judgement key in time.
    JudgementTimeout,
    /// The node's own refresh of the caller's session is due (which generation).
    SessionRefresh(u32),
    /// The node's refresh of the callee's leg is due (which refresh generation: see
    /// `Call::refresh_callee`).
    CalleeRefresh(u32),
    /// A session timer's check (which refresh generation it belongs to).
    SessionCheck(u32),
    /// Retransmit the reliable provisional (RSeq, attempt) if still unacknowledged.
    Reliable(u32, u32),
    /// The node ends the call now (e.g. `drain` at the drain deadline): BYE to answered
    /// legs, CANCEL to ringing ones, 503 to a caller still waiting; logged with the reason.
    End(&'static str),
    /// The cluster declared this node's incarnation down: the call ends without a word
    /// (no SIP, no RTP, no record: another node took it over or logged it).
    Vanish,
    /// A call claimed from another node: set up media and re-INVITE the parties.
    Resume,
    /// Send again the takeover re-INVITE this party refused 491.
    TakeoverRetry(Side),
    /// Time to see whether the answered call's media is alive (`media.timeout_seconds`).
    MediaCheck,
    /// Test hook: makes the actor panic, to exercise supervision.
    #[cfg(test)]
    Crash,
}

/// A re-INVITE of the node's own to one party: a session refresh (the node is the
/// caller's refresher, see [`session`]), or the session the party had before a
/// re-offer its sender cancelled and it accepted all the same (see
/// `restore_after_crossing`).
#[derive(Clone)]
struct OwnReinvite {
    side: Side,
    cseq: u32,
    key: tsunagu_sip::transaction::TxKey,
    refresh: bool,
    /// It carries the session's timer (see [`Call::timer_to`]; one to the caller
    /// always does), or it is sent again without one after the party's 422 to it: its
    /// 2xx is read as one about the node's timer.
    timer_added: bool,
    /// What it offers: a restore is sent again after a 422 to the node's timer (see
    /// [`Call::timer_refused`]), once (then true).
    offer: Option<String>,
    timer_retried: bool,
}

/// Delivers SIP events into a call's inbox (bounded: see [`task`]).
struct CallHandle(CallRef);

impl CallSink for CallHandle {
    fn deliver(&self, event: SipEvent) -> Result<(), Undelivered> {
        // What ends the call (a BYE, a CANCEL already answered 200) has room past a
        // flood of anything else.
        let limit = match &event {
            SipEvent::Request { request, .. } if request.method == Method::Bye => task::END_LIMIT,
            SipEvent::Cancelled { .. } => task::END_LIMIT,
            _ => task::INBOX_LIMIT,
        };
        match self.0.deliver(CallMsg::Sip(Box::new(event)), limit) {
            Ok(()) => Ok(()),
            Err(task::NotQueued::Full(CallMsg::Sip(event))) => Err(Undelivered::Busy(*event)),
            Err(task::NotQueued::Gone(CallMsg::Sip(event))) => Err(Undelivered::Gone(*event)),
            // Only the SIP event sent can come back.
            Err(_) => Ok(()),
        }
    }
}

/// Keys sent by SIP INFO that a call passes to the other party in one second.
const INFO_KEYS_PER_SECOND: u32 = 10;

/// Everything a call starts from.
pub struct CallArgs {
    pub ctx: Arc<NodeContext>,
    /// Identified once, at admission.
    pub caller: Caller,
    /// When the INVITE was admitted (before any shaping delay).
    pub started: Instant,
    /// How long the call waits for its turn before it starts (its trunk's call-rate
    /// shaping; zero: at once). It waits in the call table, so a drain waits for it
    /// and a shutdown logs it.
    pub shaping: Duration,
    pub started_at_ms: i64,
    pub invite: NewInvite,
    /// The INVITE as admission read it (once).
    pub view: InviteView,
    pub number: Arc<TrackingNumber>,
    pub inbound_trunk: usize,
    /// The advertiser's line limit (from the directory), if any.
    pub advertiser_lines: Option<tsunagu_store::LineLimit>,
    pub id: String,
    /// Set once the call has written its own log record.
    pub logged: Arc<AtomicBool>,
    /// The two RTP ports leased at admission for the call's relay (so a node out of
    /// ports refuses the INVITE before its 100 Trying instead of failing the call after).
    pub media_ports: (MediaPort, MediaPort),
    /// The call's slot in the node's and its trunk's counts, taken at admission.
    pub slot: CallSlot,
}

/// What the call table keeps about a running call, to clean up if its actor dies: a
/// few fields, not a copy of the INVITE (the 500 is made from the transaction's own
/// last provisional response, see `tsunagu_sip::Command::Fail`).
pub struct CallSeed {
    pub id: String,
    pub a_call_id: String,
    pub key: tsunagu_sip::transaction::TxKey,
    pub caller: Caller,
    pub number: Arc<TrackingNumber>,
    pub started_at_ms: i64,
    pub started: Instant,
    pub logged: Arc<AtomicBool>,
    /// When the max-call sweep asked the call to end (see `supervisor`).
    pub asked_to_end: std::sync::OnceLock<Instant>,
}

impl CallSeed {
    /// What the call table keeps of a call claimed from another node.
    pub fn resumed(args: &takeover::ResumeArgs) -> CallSeed {
        let r = &args.record;
        CallSeed {
            id: r.call_id.clone(),
            a_call_id: args.answered.a.call_id.clone(),
            key: tsunagu_sip::transaction::TxKey::new("z9hG4bKrestored", Method::Invite),
            caller: Caller {
                number: r.caller_number.clone(),
                kind: r.caller_kind,
                identity: None,
                withheld: r.caller_kind == tsunagu_store::CallerKind::Anonymous,
            },
            number: args.number.clone(),
            started_at_ms: r.started_at,
            // From the call's start, not the takeover's: the max-call sweep measures
            // it, and each move gave a call a fresh `node.max_call_seconds` (a review).
            started: takeover::instant_at(r.started_at),
            logged: args.logged.clone(),
            asked_to_end: Default::default(),
        }
    }

    pub fn new(args: &CallArgs) -> CallSeed {
        let inv = &args.invite;
        CallSeed {
            id: args.id.clone(),
            a_call_id: inv.info.call_id.clone(),
            key: inv.key.clone(),
            caller: args.caller.clone(),
            number: args.number.clone(),
            started_at_ms: args.started_at_ms,
            started: args.started,
            logged: args.logged.clone(),
            asked_to_end: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Trying,
    Answered,
    /// Waiting for the far end to confirm teardown (BYE or CANCEL answered).
    Ending,
    Done,
}

/// What a party's SDP last said of its media: where it receives audio, its
/// telephone-event type, its audio formats.
#[derive(Debug, Clone, Copy)]
struct FarEnd {
    media: Option<std::net::SocketAddr>,
    dtmf: Option<u8>,
    formats: sdp::PayloadTypes,
}

impl FarEnd {
    const NONE: FarEnd = FarEnd {
        media: None,
        dtmf: None,
        formats: sdp::PayloadTypes::UNKNOWN,
    };

    /// What the node's own answer to a party's offer says of that party.
    fn answered(answer: &sdp::Answer) -> FarEnd {
        FarEnd {
            media: answer.remote,
            dtmf: answer.dtmf,
            formats: answer.formats,
        }
    }
}

pub struct Call {
    ctx: Arc<NodeContext>,
    me: CallRef,
    id: String,
    span: tracing::Span,
    number: Arc<TrackingNumber>,
    a: ALeg,
    b: Option<BLeg>,
    relay: Option<Relay>,
    caller: Caller,
    /// The caller's number was asserted or verified by its trunk (SMS to callers).
    caller_verified: bool,
    /// The caller's INVITE as admission read it (a call taken over has a blank one:
    /// it is answered, and needs none of it).
    a_view: InviteView,
    started: Instant,
    started_at_ms: i64,
    /// The caller's SDP offer pointed at the node's callee-facing port (every attempt).
    b_offer: String,
    setup_observed: bool,
    answered: Option<(Instant, i64)>,
    dest_index: usize,
    /// The trunks to try for the current destination, in order.
    dest_trunks: Vec<usize>,
    trunk_pos: usize,
    attempt: u32,
    /// Why we are cancelling the current attempt (ring timeout), if we are.
    pending_failure: Option<Failure>,
    /// The current attempt's failure said when to try again (its Retry-After, whole
    /// seconds): passed on with the caller's final answer (see `give_up`).
    retry_after: Option<u32>,
    /// The current attempt's 422 named this Min-SE: passed on with the caller's 422.
    callee_min_se: Option<u32>,
    /// Boxed, like the other rarely used parts: the call's state lives in its actor's
    /// task for the whole call, so every inline byte is a byte per concurrent call.
    reoffer: Option<Box<Reoffer>>,
    phase: Phase,
    result: CallResult,
    upstream_code: u16,
    last_trunk: Option<usize>,
    logged: Arc<AtomicBool>,
    /// The call ended here (`finish`), nothing having marked it logged before: not
    /// dropped because the cluster declared this node down, nor handed to another
    /// node, where it lives on.
    wrote_record: bool,
    /// The Call-ID of the callee's leg last handed to `abandoned` (`let_callee_go`):
    /// what still comes here for it is passed on.
    let_go: Option<Box<str>>,
    /// The recording's path (relative to the recordings directory), once it started.
    recording: Option<String>,
    /// What it records: the number's mode when it started, or the checkpoint's for a
    /// call taken over (the parts of one call are joined: one mode for all of them).
    recording_mode: Option<RecordMode>,
    /// The number's recording notice could not be played to the caller (the prompt
    /// gone, the caller's audio not G.711): the call is not recorded.
    recording_withheld: bool,
    /// A number a trunk redirected the current destination to (3xx, followed).
    redirect: Option<Destination>,
    redirects_followed: u8,
    /// Set when the call went to the closed-hours destination instead: the result an
    /// unanswered call logs (`out_of_hours` or `absent`).
    closed_result: Option<CallResult>,
    /// The advertiser's line limit, if it has one (looked up at admission).
    advertiser_lines: Option<tsunagu_store::LineLimit>,
    /// The lines this call holds (number, then advertiser), released when it ends.
    held_lines: Vec<LineRequest>,
    /// While queued for a line: which, and the ticket.
    queued: Option<queue::Queued>,
    /// When the call first queued.
    queue_since: Option<Instant>,
    /// When it began waiting for a line (queued, or asking an owner on another
    /// node), and when it stopped (see [`Call::ringing_for`]).
    line_wait: Option<(Instant, Option<Instant>)>,
    /// The codec of the node's own answer to the caller, once it sent one (early media
    /// for a prompt, or the IVR's 200; its SDP is the caller leg's `last_sdp`). The
    /// callee is then offered that codec only.
    a_answer: Option<u8>,
    /// The caller got the node's 200 (IVR): their INVITE is answered, so a call that
    /// ends unanswered hangs up with BYE.
    a_answered: bool,
    /// The prompt playing whose end moves the call on.
    playing: Option<(u32, After)>,
    prompt_ids: u32,
    ivr: Option<Box<IvrState>>,
    /// Keys the caller pressed in the IVR, in order.
    ivr_digits: String,
    /// The last media check that found the call held (see `media_check`).
    held_seen: Option<Instant>,
    /// The caller was played the number's IVR menu (its validity rule's IVR key
    /// applies only then).
    ivr_offered: bool,
    /// The last key taken from a party: side, key, signal, when (see `echoed_key`).
    last_key: Option<(Side, char, &'static str, Instant)>,
    /// The callee's codec (for the judgement prompt).
    b_payload_type: Option<u8>,
    /// The caller acknowledged the 200 that answered it.
    a_acked: bool,
    /// A 2xx that carried an offer (to a re-INVITE without one) waits for its ACK: the
    /// leg to ACK and the CSeq, sent with the answer the other leg's ACK brings; and
    /// the CSeq of that other leg's re-INVITE, which its ACK must carry (another ACK,
    /// a stray or a repeat of an older one, brings no answer).
    late_ack: Option<(Side, u32, u32)>,
    /// The last relayed re-INVITE that got no final answer in time (its sender was
    /// answered 408): its 2xx may still come, and is acknowledged (see
    /// [`Call::late_answer_to_timed_out`]).
    timed_out_reinvite: Option<Box<TimedOutReinvite>>,
    /// A re-INVITE of the node's own waiting for its answer; new re-offers get 491
    /// meanwhile.
    own_reinvite: Option<OwnReinvite>,
    /// The last request each far end (caller, callee) sent in its dialog: a lower
    /// CSeq in the same dialog is out of order (RFC 3261 12.2.2) and refused 500.
    remote_cseq: [Option<RemoteCseq>; 2],
    /// The current attempt's callee sent its SDP in an 18x (the caller has it), from
    /// the fork with this To tag: a 200 without SDP from that fork stands on that
    /// answer (another fork's would leave the relay at the first fork's address).
    b_early_answer: Option<String>,
    /// Waiting for the callee's judgement key.
    judging: bool,
    judgement_digit: Option<char>,
    /// When the conversation ended: the judgement began, or a party hung up or the
    /// node did (then also `ended_ms`, the same moment by the wall clock). The call
    /// may go on after it (the judgement; a BYE the other party has yet to answer),
    /// and that time is not talk: a party that never answers the BYE would otherwise
    /// lengthen the logged talk by up to 32 s, enough to make a short call valid.
    talk_end: Option<Instant>,
    ended_ms: Option<i64>,
    /// Keys passed on by INFO in the current second: (its start, how many); the
    /// second opens with the first key passed on.
    info_relayed: Option<(Instant, u32)>,
    /// Every forwarding attempt, for the log.
    attempts: Vec<tsunagu_store::Attempt>,
    /// The session timer once answered.
    session: Option<session::SessionTimer>,
    /// The call's pending timers (see `timers`).
    timers: timers::Timers,
    /// The current attempt's ring timer: first at `forward::NO_RESPONSE` (or the ring time,
    /// if shorter), moved to the ring time when the first response comes.
    ring_timer: Option<timers::TimerId>,
    /// When the current attempt's ring time runs out.
    ring_ends: Option<Instant>,
    /// The `sip.max_ring_seconds` guard, cancelled at answer and at the end.
    ring_guard: Option<timers::TimerId>,
    /// Why the call ended when the parties did not end it (the log's `end_reason`).
    end_reason: Option<&'static str>,
    /// What each party's SDP last said of its media (caller, callee): for the
    /// checkpoint.
    far_ends: std::cell::Cell<[FarEnd; 2]>,
    /// Whether each party's last SDP held the call (caller, callee): no media timeout
    /// then.
    held: std::cell::Cell<[bool; 2]>,
    /// RTP packets received from the parties at the last media check.
    media_seen: u64,
    /// Nodes that carried the call before this one (taken over), and when it moved.
    nodes: Vec<String>,
    taken_over_at: Option<i64>,
    /// Parts of the recording made on other nodes, and where this node's part starts
    /// (ms after the answer).
    recording_parts: Vec<tsunagu_store::RecordingPart>,
    recording_offset_ms: i64,
    /// A call taken over, while the parties answer our re-INVITEs.
    resuming: Option<Box<takeover::Resuming>>,
    _slot: Option<CallSlot>,
    /// The channel of the trunk the current forwarding attempt went to (see
    /// [`TrunkChannel`]): held while it rings or talks, given back when it fails.
    b_channel: Option<TrunkChannel>,
    /// Ports leased at admission, until the relay takes them (dropped, they are free).
    media_ports: Option<(MediaPort, MediaPort)>,
}

/// Runs one call from its INVITE to its end (see [`task`]); returns how it ended.
///
/// The task's future is what a held call costs besides its [`Call`], so it holds only
/// boxes: an async fn keeps its arguments twice (as passed and as moved into its body)
/// and a future awaited by value inside another adds its whole size to it. Boxed, the
/// arguments cost two pointers and the call is allocated once (the test
/// `a_call_task_holds_boxes_not_the_call` keeps it so).
pub async fn run(args: Box<CallArgs>, me: CallRef) -> Exit {
    args.ctx
        .metrics
        .calls
        .start_delay_seconds
        .observe(args.started.elapsed().as_secs_f64());
    let number = if args.number.kind == NumberKind::Callback {
        callback_route(&args.ctx, args.number.clone(), args.started_at_ms).await
    } else {
        args.number.clone()
    };
    match Call::new(args, number, me.clone()) {
        Ok(call) => drive(call, me).await,
        Err(e) => Exit::Failed(e),
    }
}

/// Hands the call its messages until it is done (see [`task`]).
async fn drive(mut call: Box<Call>, me: CallRef) -> Exit {
    // One sleep for the call's earliest timer, moved (not made anew) when that changes.
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    let exit = loop {
        let msg = match call.timers.next_due() {
            None => me.next().await,
            Some(at) if at <= Instant::now() => {
                // Due timers join the inbox behind what came before them.
                me.queue_due(&mut call.timers, Instant::now());
                me.next().await
            }
            Some(at) => {
                if sleep.deadline() != at.into() {
                    sleep.as_mut().reset(at.into());
                }
                tokio::select! {
                    biased;
                    msg = me.next() => msg,
                    () = sleep.as_mut() => continue,
                }
            }
        };
        let Some(msg) = msg else {
            break Exit::Stopped;
        };
        let span = call.span.clone();
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            span.in_scope(|| call.handle(msg))
        }));
        if let Err(p) = handled {
            break Exit::Panicked(task::panic_text(&*p));
        }
        if call.phase == Phase::Done {
            break Exit::Done;
        }
    };
    match exit {
        Exit::Done => {}
        // A bug: the parties are not left up, connected to nobody (a review); a
        // panic in that too still lets the inbox close below.
        Exit::Panicked(_) => {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                call.hang_up_after_panic()
            }));
        }
        // Stopped (asked to end and did not, or at shutdown, where another node may
        // take the call over): the supervisor forgets the caller's Call-ID, and the
        // callee's is forgotten here (it stayed routed to a call that was gone, its
        // messages answered 481, until a restart: a review).
        _ => {
            if let Some(b) = call.b.as_ref() {
                call.ctx.endpoint.unregister(b.call_id());
            }
        }
    }
    let left = me.close();
    // What came for a call that ended here (or crashed) and was not read goes back to the SIP
    // core, for whoever holds its Call-ID now: a callee's provisional queued behind
    // the caller's hang-up reaches the handler its leg went to, whose CANCEL waited
    // for it (it was lost, and the callee rang on); a request is answered 481. Only for
    // a call that ended here: one that finished by writing its own record, or crashed
    // before anything else logged it; never one dropped or handed to another node,
    // which carries it on (the supervisor marks it logged at once, before the call
    // reads its `Vanish`: a review), nor one stopped (at shutdown another node may
    // take it over).
    if ended_here(
        &exit,
        call.wrote_record,
        call.logged.load(Ordering::Acquire),
    ) {
        for msg in left {
            if let CallMsg::Sip(event) = msg {
                call.ctx.endpoint.redeliver(*event);
            }
        }
    }
    exit
}

/// Whether a call task that exited so ended here, its unread messages to go back to the
/// SIP core (see `drive`): finished by writing its own record (`wrote_record`: nothing
/// had marked it logged before), or crashed while nothing had marked it `logged` (the
/// supervisor marks a call handed to another node, or dropped by the cluster, at once).
fn ended_here(exit: &Exit, wrote_record: bool, logged: bool) -> bool {
    match exit {
        Exit::Done => wrote_record,
        Exit::Panicked(_) => !logged,
        Exit::Stopped | Exit::Failed(_) => false,
    }
}

impl Call {
    /// The call of `args`, to `number` (the route of a callback number resolved).
    /// Takes the box: its allocation is freed here, not when `run` ends (a box moved
    /// out of is freed at the end of its variable's scope, the call's whole life).
    fn new(
        args: Box<CallArgs>,
        number: Arc<TrackingNumber>,
        myself: CallRef,
    ) -> Result<Box<Call>, String> {
        let CallArgs {
            ctx,
            caller,
            started,
            shaping,
            started_at_ms,
            invite,
            mut view,
            number: _, // resolved by `run`
            inbound_trunk,
            advertiser_lines,
            id,
            logged,
            media_ports,
            slot,
        } = *args;
        let caller_verified = ctx.routing.trunks.get(inbound_trunk).is_some_and(|t| {
            let pai = view.asserted_identity.as_deref();
            crate::follow_up::plan::caller_verified(t.trusted, t.verifies_caller_id, pai)
        });
        let span = tracing::info_span!("call", call_id = %id, number = %number.number, caller = %caller.number);
        ctx.endpoint
            .register(&invite.info.call_id, Arc::new(CallHandle(myself.clone())));
        let routing = &ctx.routing;
        let mut a = ALeg::new(
            invite.request,
            invite.info,
            invite.peer,
            invite.key,
            std::mem::take(&mut view.routes),
            &|ip| routing.is_trunk_address(ip),
        );
        if view.requires_100rel {
            a.require_100rel();
        }
        let mut call = Box::new(Call::blank(ctx, myself, id, span, number, a, caller));
        if shaping.is_zero() {
            call.me
                .send_message(CallMsg::Start)
                .map_err(|_| "the call ended before it started".to_string())?;
        } else {
            // Its turn comes as a timer: meanwhile a CANCEL or the node's drain ends
            // the call like any other that has not started.
            call.after(shaping, CallMsg::Start);
        }
        call.caller_verified = caller_verified;
        call.a_view = view;
        call.started = started;
        call.started_at_ms = started_at_ms;
        call.logged = logged;
        call.advertiser_lines = advertiser_lines;
        call._slot = Some(slot);
        call.media_ports = Some(media_ports);
        Ok(call)
    }

    /// A call of `number` from `caller` with nothing done yet.
    fn blank(
        ctx: Arc<NodeContext>,
        me: CallRef,
        id: String,
        span: tracing::Span,
        number: Arc<TrackingNumber>,
        a: ALeg,
        caller: Caller,
    ) -> Call {
        Call {
            ctx,
            me,
            id,
            span,
            number,
            a,
            b: None,
            relay: None,
            caller,
            caller_verified: false,
            a_view: InviteView::default(),
            started: Instant::now(),
            started_at_ms: crate::clock::now_ms(),
            b_offer: String::new(),
            setup_observed: false,
            answered: None,
            dest_index: 0,
            dest_trunks: Vec::new(),
            trunk_pos: 0,
            attempt: 0,
            pending_failure: None,
            retry_after: None,
            callee_min_se: None,
            reoffer: None,
            phase: Phase::Trying,
            result: CallResult::Failed,
            upstream_code: 500,
            last_trunk: None,
            logged: Arc::new(AtomicBool::new(false)),
            wrote_record: false,
            let_go: None,
            recording: None,
            recording_mode: None,
            recording_withheld: false,
            redirect: None,
            redirects_followed: 0,
            closed_result: None,
            advertiser_lines: None,
            held_lines: Vec::new(),
            queued: None,
            queue_since: None,
            line_wait: None,
            a_answer: None,
            a_answered: false,
            playing: None,
            prompt_ids: 0,
            ivr: None,
            ivr_digits: String::new(),
            ivr_offered: false,
            held_seen: None,
            last_key: None,
            b_payload_type: None,
            b_early_answer: None,
            remote_cseq: [None, None],
            a_acked: false,
            late_ack: None,
            timed_out_reinvite: None,
            own_reinvite: None,
            judging: false,
            judgement_digit: None,
            talk_end: None,
            ended_ms: None,
            info_relayed: None,
            attempts: Vec::new(),
            session: None,
            timers: timers::Timers::default(),
            ring_timer: None,
            ring_ends: None,
            ring_guard: None,
            end_reason: None,
            far_ends: std::cell::Cell::new([FarEnd::NONE; 2]),
            held: std::cell::Cell::new([false, false]),
            media_seen: 0,
            nodes: Vec::new(),
            taken_over_at: None,
            recording_parts: Vec::new(),
            recording_offset_ms: 0,
            resuming: None,
            _slot: None,
            b_channel: None,
            media_ports: None,
        }
    }

    fn handle(&mut self, msg: CallMsg) {
        let call = self;
        match msg {
            // A shaped call ended before its turn (CANCEL, drain) does not start.
            CallMsg::Start if call.phase == Phase::Trying && call.end_reason.is_none() => {
                call.start()
            }
            CallMsg::Start => {}
            CallMsg::Sip(ev) => call.on_sip(*ev),
            CallMsg::RingTimeout(n) => {
                if n == call.attempt && call.phase == Phase::Trying {
                    call.ring_timeout();
                }
            }
            CallMsg::NoResponse(n) => {
                let silent = call.b.as_ref().is_some_and(|b| !b.provisional);
                if n == call.attempt && call.phase == Phase::Trying && silent {
                    call.nothing_from_the_trunk();
                }
            }
            CallMsg::CancelUnanswered(n) => {
                if n == call.attempt
                    && call.phase == Phase::Trying
                    && call.pending_failure.is_some()
                {
                    call.cancel_unanswered();
                }
            }
            CallMsg::RingGuard => {
                if call.phase == Phase::Trying && !call.a_answered {
                    call.ring_guard_due();
                }
            }
            CallMsg::ReleaseLines => {
                if call.phase == Phase::Ending {
                    call.held_lines.clear();
                }
            }
            CallMsg::EndGuard => {
                if call.phase != Phase::Done {
                    tracing::info!("far end did not confirm teardown; ending call");
                    // A callee whose INVITE has had no final answer (it took the
                    // CANCEL, or never rang so none could go) is handed to the
                    // abandoned-attempt handler, which answers what it sends later:
                    // the call forgot it, and a 200 after this reached nobody (a
                    // review).
                    if call.b.as_ref().is_some_and(|b| !b.is_answered()) {
                        call.end_b();
                    }
                    call.finish();
                }
            }
            CallMsg::Line(key, answer) => call.line_answer(key, answer),
            CallMsg::QueueTimeout => call.queue_timeout(),
            CallMsg::Media(event) => call.on_media(event),
            CallMsg::IvrTimeout(wait) => call.ivr_timeout(wait),
            CallMsg::JudgementTimeout => call.end_judgement("none"),
            CallMsg::SessionCheck(generation) => call.session_check(generation),
            CallMsg::SessionRefresh(generation) => call.send_session_refresh(generation),
            CallMsg::CalleeRefresh(generation) => call.refresh_callee(generation),
            CallMsg::Reliable(rseq, attempt) => call.reliable_retransmit(rseq, attempt),
            CallMsg::End(reason) => call.end_now(reason),
            CallMsg::MediaCheck => call.media_check(),
            CallMsg::Vanish => call.vanish(),
            CallMsg::Resume => call.resume_media(),
            CallMsg::TakeoverRetry(side) => call.retry_takeover(side),
            #[cfg(test)]
            CallMsg::Crash => panic!("test-induced call actor panic"),
        }
        // A reliable provisional sent (or sent again) waits for its PRACK on the
        // call's own timers.
        if let Some((delay, rseq, attempt)) = call.a.take_rearm() {
            call.after(delay, CallMsg::Reliable(rseq, attempt));
        }
    }

    fn ep(&self) -> &tsunagu_sip::EndpointHandle {
        &self.ctx.endpoint
    }

    /// `side`'s leg: the caller's, or the callee's once there is one.
    fn leg(&mut self, side: Side) -> Option<&mut dyn Leg> {
        match side {
            Side::A => Some(&mut self.a),
            Side::B => self.b.as_mut().map(|b| b as &mut dyn Leg),
        }
    }

    /// `side`'s party named a new remote target (see [`Leg::refresh_target`]). Each
    /// caller checkpoints the call once the message is handled, the target with it (a
    /// takeover restores the dialog from it): one checkpoint here as well wrote two or
    /// three for one 2xx.
    fn refresh_target(&mut self, side: Side, contact: Option<&str>) {
        let routing = self.ctx.routing.clone();
        if let Some(leg) = self.leg(side) {
            leg.refresh_target(contact, &|ip| routing.is_trunk_address(ip));
        }
    }

    fn start(&mut self) {
        tracing::debug!("call started");
        self.ctx.metrics.calls.started.inc();
        self.arm_ring_guard();
        self.ctx.log.active(self.progress_record(), None);
        self.emit(EventKind::Started);
        match gate(
            self.number.schedule.as_ref(),
            self.number.absent,
            self.started_at_ms,
        ) {
            Gate::Open => {}
            closed => {
                let result = if closed == Gate::Absent {
                    CallResult::Absent
                } else {
                    CallResult::OutOfHours
                };
                let action = self
                    .number
                    .schedule
                    .as_ref()
                    .map(|s| s.closed.clone())
                    .unwrap_or_default();
                tracing::info!(?closed, ?action, "number closed");
                let prompt = self
                    .number
                    .schedule
                    .as_ref()
                    .and_then(|s| s.closed_prompt.clone());
                match action {
                    ClosedAction::Reject => {
                        if let Some(name) = prompt {
                            if self.play_to_caller(&name, "closed", After::GiveUp(result, 480)) {
                                return;
                            }
                        }
                        return self.give_up(result, 480);
                    }
                    ClosedAction::Forward { destination } => {
                        // The closed-hours destination is the only one tried.
                        let ring_seconds = self
                            .number
                            .destinations
                            .first()
                            .map(|d| d.ring_seconds)
                            .unwrap_or(30);
                        self.number = routed_to(
                            &self.number,
                            Some(Destination {
                                number: destination,
                                ring_seconds,
                            }),
                        );
                        self.closed_result = Some(result);
                        if let Some(name) = prompt {
                            let next = After::Continue(Stage::Notice);
                            if self.play_to_caller(&name, "closed", next) {
                                return;
                            }
                        }
                        return self.proceed(Stage::Notice);
                    }
                }
            }
        }
        if self.number.destinations.is_empty() {
            // A callback number with no live lease: nobody to call back.
            tracing::info!("callback number is not leased");
            return self.give_up(CallResult::Failed, 404);
        }
        self.proceed(Stage::Ivr);
    }

    /// Arms the `sip.max_ring_seconds` guard: due then, or a minute from now if sooner,
    /// when the caller's last provisional is repeated ([`Call::ring_guard_due`]). One
    /// timer for both, so a call that rings less than a minute costs no more.
    fn arm_ring_guard(&mut self) {
        let left = self.ctx.max_ring.saturating_sub(self.ringing_for());
        self.ring_guard = Some(self.after(left.min(PROVISIONAL_EVERY), CallMsg::RingGuard));
    }

    /// The ring guard is due with the caller still not answered: past
    /// `sip.max_ring_seconds` the caller is given up, else its last provisional goes
    /// again (RFC 3261 13.3.1.1) and the guard is armed again.
    fn ring_guard_due(&mut self) {
        let left = self.ctx.max_ring.saturating_sub(self.ringing_for());
        if left.is_zero() {
            if let Some((_, After::GiveUp(decided, code))) = self.playing {
                // The prompt before a decided end (the queue's timeout, closed hours)
                // is cut short; the end stands, not `max_ring`.
                return self.give_up(decided, code);
            }
            return self.refuse_caller(480, "max_ring");
        }
        let ep = self.ctx.endpoint.clone();
        self.a.repeat_provisional(&ep);
        self.arm_ring_guard();
    }

    /// How long the caller has waited for an answer as `sip.max_ring_seconds` counts
    /// it: since admission, less the time it waited in the queue for a line, which
    /// is the queue's own to bound (`max_wait_seconds`, up to an hour, its own timer
    /// and its own prompt and result). The guard counted the queue too: a caller
    /// queued past 180 s was refused 480 `max_ring`, never heard the timeout prompt,
    /// and one granted a line late was cut off at its first destination (a review).
    /// Never more than the queue's longest wait is left out, so the guard still ends a
    /// call whose queue timer failed.
    fn ringing_for(&self) -> Duration {
        let queued = self.line_wait.map_or(Duration::ZERO, |(since, left)| {
            let until = left.unwrap_or_else(Instant::now);
            until
                .saturating_duration_since(since)
                .min(Duration::from_secs(u64::from(self.max_wait())))
        });
        self.started.elapsed().saturating_sub(queued)
    }

    /// Cancels the `sip.max_ring_seconds` guard (the call was answered or is over).
    fn stop_ring_guard(&mut self) {
        if let Some(t) = self.ring_guard.take() {
            self.timers.cancel(t);
        }
    }

    /// `msg` comes to this call after `delay` (one of its own timers, see `timers`).
    fn after(&mut self, delay: Duration, msg: CallMsg) -> timers::TimerId {
        self.timers.after(Instant::now(), delay, msg)
    }

    /// Which leg's dialog a message with this Call-ID is in (the node is a B2BUA: its
    /// two legs have Call-IDs of their own).
    fn side_of(&self, call_id: &str) -> Option<Side> {
        if call_id == self.a.info.call_id {
            Some(Side::A)
        } else if self.b.as_ref().is_some_and(|b| b.call_id() == call_id) {
            Some(Side::B)
        } else {
            None
        }
    }

    /// A reliable provisional's retransmission time: resend it, or give the caller up
    /// after 64*T1 without a PRACK (RFC 3262 3: the INVITE is refused 5xx).
    fn reliable_retransmit(&mut self, rseq: u32, attempt: u32) {
        let ep = self.ctx.endpoint.clone();
        if self.a.retransmit_reliable(&ep, rseq, attempt) {
            return;
        }
        match self.phase {
            Phase::Trying => {}
            Phase::Answered => return self.unacknowledged_answer(),
            Phase::Ending | Phase::Done => return,
        }
        tracing::warn!("the caller never acknowledged a reliable provisional; giving up");
        self.leave_queue();
        self.a.abandon_reliable();
        if self.b.is_none() {
            return self.give_up(CallResult::Failed, 500);
        }
        self.result = CallResult::Failed;
        self.upstream_code = 500;
        self.a.respond(&ep, 500, None);
        self.leave_callee_and_finish();
    }

    /// The caller cancelled while the callee's answer waited for its PRACK (the 200 was
    /// never sent): the CANCEL stands (RFC 3261 9.2), the INVITE answered 487, the call
    /// logged `cancelled`.
    fn cancelled_before_its_answer(&mut self) {
        tracing::debug!("caller cancelled while its answer waited for a PRACK");
        self.drop_held_answer(CallResult::Cancelled, 487, true);
    }

    /// The callee answered but the caller never PRACKed the 18x with SDP its 200 waits
    /// for (RFC 3262 3): the caller is refused 500, the call logged `failed` with end
    /// reason `prack_timeout`.
    fn unacknowledged_answer(&mut self) {
        tracing::warn!(
            "the caller never acknowledged a reliable provisional; its 200 held back, the callee hung up"
        );
        self.end_reason = Some("prack_timeout");
        self.drop_held_answer(CallResult::Failed, 500, true);
    }

    /// The callee's 200, held for the caller's PRACK, is never sent: the caller's
    /// INVITE is answered `code` instead, the answered callee hung up (`bye_callee`;
    /// not when it hung up itself), and the call logged `result` without talk time
    /// (the caller was never answered).
    fn drop_held_answer(&mut self, result: CallResult, code: u16, bye_callee: bool) {
        let ep = self.ctx.endpoint.clone();
        self.a.abandon_reliable();
        self.result = result;
        self.upstream_code = code;
        self.answered = None;
        self.a.respond(&ep, code, None);
        match self.b.as_mut() {
            Some(b) if bye_callee => {
                b.bye(&ep);
                self.end_and_wait();
            }
            _ => self.finish(),
        }
    }

    /// Media anchoring of one SDP body sent by the far end of `from`: the relay now sends
    /// to where that body says `from` receives, and the body is rewritten to the node's
    /// port facing the other side, for the other leg.
    fn anchor_sdp(&self, from: Side, body: &str) -> Option<String> {
        let rewritten = self.rewrite_sdp(from, body)?;
        self.apply_sdp(from, &rewritten);
        Some(rewritten.sdp)
    }

    /// `from`'s body as the other leg gets it (pointed at the node), changing nothing.
    fn rewrite_sdp(&self, from: Side, body: &str) -> Option<sdp::Rewritten> {
        let local = self.relay.as_ref()?.local(from.other());
        sdp::rewrite(body, local.ip(), local.port())
    }

    /// What `from`'s body says takes effect: where its audio goes, its telephone-event
    /// type, its hold.
    fn apply_sdp(&self, from: Side, rewritten: &sdp::Rewritten) {
        if self.relay.is_none() {
            return;
        }
        self.set_far_end(
            from,
            FarEnd {
                media: rewritten.remote,
                dtmf: rewritten.dtmf,
                formats: rewritten.formats,
            },
        );
        let mut held = self.held.get();
        held[usize::from(from == Side::B)] = rewritten.held;
        self.held.set(held);
    }

    /// What a party's SDP says of its media takes effect: the relay sends its audio
    /// where it receives, and reads the keys it sends as telephone-events (RFC 4733: a
    /// callee's judge the call, a caller's pick an IVR route); remembered for
    /// checkpoints.
    fn set_far_end(&self, side: Side, far: FarEnd) {
        if let Some(relay) = self.relay.as_ref() {
            if let Some(remote) = far.media {
                relay.set_remote(side, remote);
            }
            relay.set_dtmf(side, far.dtmf, far.formats);
        }
        self.note_far_end(side, far);
    }

    /// Remembers what a party's SDP says of its media (for checkpoints).
    fn note_far_end(&self, side: Side, far: FarEnd) {
        let mut ends = self.far_ends.get();
        ends[usize::from(side == Side::B)] = far;
        self.far_ends.set(ends);
    }

    /// Starts recording the conversation if the number asks for it, unless the
    /// caller was not told (its notice could not be played): a number with a notice
    /// promises its callers one, so no call of it is recorded without it (it was,
    /// silently). Counted (`tsunagu_recordings_withheld_total`) and logged.
    fn start_recording(&mut self) {
        let Some(settings) = self.number.recording.as_ref() else {
            return;
        };
        if self.recording_withheld {
            tracing::warn!("not recorded: the caller did not hear the number's recording notice");
            self.ctx.metrics.calls.recordings_withheld.inc();
            return;
        }
        let mode = match settings.mode {
            RecordingMode::Both => RecordMode::Both,
            RecordingMode::Caller => RecordMode::Caller,
            RecordingMode::Callee => RecordMode::Callee,
        };
        let name = self.id.clone();
        self.start_recording_part(&name, mode);
    }

    /// Starts recording into `<day>/<name>.wav` (a call taken over records its next
    /// part under another name).
    fn start_recording_part(&mut self, name: &str, mode: RecordMode) {
        let Some(relay) = self.relay.as_ref() else {
            return;
        };
        if let Err(skip) = self.ctx.recording_space.allows() {
            // The call goes on unrecorded (counted by reason): a full disk would stop
            // the store, and every call with it.
            tracing::warn!(
                reason = skip.as_str(),
                "not recorded: the recordings disk is full or does not answer"
            );
            return;
        }
        let day = chrono::Utc::now().format(crate::recording_space::DAY_FORMAT);
        let rel = format!("{day}/{name}.wav");
        let sink = self
            .ctx
            .recorder
            .open(self.ctx.recordings_dir.join(&rel), mode);
        relay.start_recording(mode, sink);
        self.ctx.metrics.calls.recordings_started.inc();
        self.recording = Some(rel);
        self.recording_mode = Some(mode);
    }

    /// Queues a webhook event of this call, if the operator has a webhook that takes it.
    fn emit(&self, kind: EventKind) {
        if self
            .ctx
            .webhooks
            .wants(&self.number.operator_id, kind.name())
        {
            self.ctx.log.event(self.event(kind));
        }
    }

    fn event(&self, kind: EventKind) -> CallEvent {
        CallEvent {
            kind,
            call_id: self.id.clone(),
            operator_id: self.number.operator_id.clone(),
            advertiser_id: self.number.advertiser_id.clone(),
            tracking_number: self.number.number.clone(),
            caller_number: self.caller.number.clone(),
            caller_kind: self.caller.kind,
            destination: self.destination(),
            at_ms: now_ms(),
        }
    }

    /// ACKs (without a body) `side`'s 2xx to the node's re-INVITE with CSeq `cseq`.
    fn ack_2xx(&mut self, side: Side, cseq: u32) {
        let ep = self.ctx.endpoint.clone();
        if let Some(leg) = self.leg(side) {
            leg.ack_at(&ep, cseq, None);
        }
    }

    fn observe_setup(&mut self) {
        if !self.setup_observed {
            self.setup_observed = true;
            self.ctx
                .metrics
                .calls
                .setup_seconds
                .observe(self.started.elapsed().as_secs_f64());
        }
    }

    fn hang_up_both(&mut self) {
        if self.a.holds_final() {
            // The caller's answer waits for its PRACK: not BYE (its dialog is early)
            // but a refusal of its INVITE; never answered.
            return self.drop_held_answer(CallResult::Failed, 503, true);
        }
        let ep = self.ctx.endpoint.clone();
        self.end_b();
        let (spec, peer) = self.a.request(&ep, Method::Bye);
        ep.request(spec, peer);
        self.end_and_wait();
    }

    /// Ends the forwarded leg: a BYE once its callee answered; otherwise a CANCEL (sent
    /// when it may be, RFC 3261 9.1) and the leg handed to [`abandoned`], which ACKs
    /// and hangs up an answer that crosses it (this call, ending, stops listening to
    /// it; a BYE on a leg never answered would leave the callee ringing).
    fn end_b(&mut self) {
        let ep = self.ctx.endpoint.clone();
        match self.b.as_mut() {
            Some(b) if b.is_answered() => b.bye(&ep),
            Some(_) => {
                let channel = self.b_channel.take();
                self.let_callee_go(channel);
            }
            None => {}
        }
    }

    /// Hands the callee's leg to [`abandoned`], which answers what the callee sends
    /// from now on (a late 2xx ACKed and hung up, the BYE's or CANCEL's answer), with
    /// `channel` held until it is done: hung up first if it answered, else cancelled
    /// (sent once the callee has said something, RFC 3261 9.1; at most once).
    pub(super) fn let_callee_go(&mut self, channel: Option<TrunkChannel>) {
        let Some(mut b) = self.b.take() else { return };
        let ep = self.ctx.endpoint.clone();
        if b.is_answered() {
            b.hang_up(&ep);
        } else {
            b.cancel(&ep);
        }
        self.let_go = Some(b.call_id().into());
        abandoned::Abandoned::hand_over(b, &self.ctx, channel);
    }

    /// After a panic, from whatever state the call was left in: the callee gets a BYE
    /// if it answered, else a CANCEL, its leg handed to [`abandoned`] (which answers
    /// what it sends later and lets its Call-ID go); a caller the node answered gets a
    /// BYE (an unanswered INVITE is refused 500 by the supervisor). Nothing is sent
    /// twice: a call already ending sent its BYEs.
    fn hang_up_after_panic(&mut self) {
        let ep = self.ctx.endpoint.clone();
        // Ending, the call's BYEs are out already (a CANCEL may still wait for a
        // provisional, which the hand-over sends). Logged, it was handed to another
        // node (or vanished), which carries its parties now.
        if self.logged.load(Ordering::Acquire) {
            if let Some(b) = self.b.take() {
                ep.unregister(b.call_id());
            }
            return;
        }
        let ending = matches!(self.phase, Phase::Ending | Phase::Done);
        let answered_b = self.b.as_ref().is_some_and(|b| b.is_answered());
        if ending && answered_b {
            if let Some(b) = self.b.take() {
                ep.unregister(b.call_id());
            }
        } else {
            let channel = self.b_channel.take();
            self.let_callee_go(channel);
        }
        if ending {
            return;
        }
        // (Judging, the caller has hung up already.)
        let caller_answered = self.phase == Phase::Answered || self.a_answered;
        if caller_answered && !self.judging && !self.a.holds_final() {
            let (spec, peer) = self.a.request(&ep, Method::Bye);
            ep.request(spec, peer);
        }
    }

    /// Enters Ending: the call finishes when the far end confirms, or at the guard timer.
    fn end_and_wait(&mut self) {
        self.phase = Phase::Ending;
        self.abandon_reoffer();
        self.talk_end.get_or_insert_with(Instant::now);
        self.ended_ms.get_or_insert_with(now_ms);
        // The call is over for its parties: its lines go to the next queued callers
        // when the far end answers the BYE, or LINES_AFTER_BYE after it at the
        // latest: one that never answered held them for the end guard, 32 s (a
        // review). Not at once: the next caller's INVITE, from another node, could
        // reach the callee's network before this BYE did, one call more than the
        // limit there for a moment (the cluster test saw it, 0.4 ms).
        self.after(LINES_AFTER_BYE, CallMsg::ReleaseLines);
        self.after(self.ctx.end_guard, CallMsg::EndGuard);
    }

    /// The node ends the call (see [`CallMsg::End`]).
    fn end_now(&mut self, reason: &'static str) {
        if matches!(self.phase, Phase::Ending | Phase::Done) {
            // Already ending for its own reason (a BYE sent or received): kept.
            return;
        }
        tracing::info!(reason, "the node ends the call");
        self.end_reason = Some(reason);
        match self.phase {
            Phase::Trying if self.a_answered => {
                // The IVR answered the caller: hang up both sides.
                self.leave_queue();
                self.end_b();
                self.hang_up_caller();
            }
            Phase::Trying => self.refuse_caller(503, reason),
            Phase::Answered => self.hang_up_both(),
            Phase::Ending | Phase::Done => {}
        }
    }

    /// Refuses a caller not yet answered with `code` (503 with Retry-After: the node
    /// ends it; 480: nobody answered in `sip.max_ring_seconds`), cancels the forwarded
    /// leg and logs the call `failed` with `reason`.
    fn refuse_caller(&mut self, code: u16, reason: &'static str) {
        tracing::info!(code, reason, "the caller is given up");
        self.end_reason = Some(reason);
        self.leave_queue();
        self.result = CallResult::Failed;
        self.upstream_code = code;
        let ep = self.ctx.endpoint.clone();
        let retry = self.ctx.retry_after.to_string();
        let extra: &[(&str, &str)] = if code == 503 {
            &[("Retry-After", retry.as_str())]
        } else {
            &[]
        };
        self.a.respond_with(&ep, code, None, extra);
        self.leave_callee_and_finish();
    }

    /// The caller has its final answer (cancelled, refused) while the callee's INVITE
    /// is out: a callee that has rung is cancelled and its leg handed to the
    /// abandoned-attempt handler (`abandoned`: it answers what the callee sends later,
    /// a 200 ACKed and hung up, and keeps the trunk channel until then), and the call
    /// is over now. The call kept the leg and waited for its 487 until the end guard
    /// (32 s), then forgot its Call-ID: a callee answering after that was left
    /// connected to nobody (a review). An answered callee (its 200 held for a PRACK)
    /// gets a BYE, and the call waits for its answer.
    fn leave_callee_and_finish(&mut self) {
        match self.b.as_ref().map(|b| (b.is_answered(), b.provisional)) {
            // Answered: its BYE's answer is waited for.
            Some((true, _)) => {
                self.end_b();
                self.end_and_wait();
            }
            Some((false, true)) => {
                self.end_b();
                self.finish();
            }
            // Not yet heard from: the CANCEL may go only after its first provisional
            // (RFC 3261 9.1), which reaches the call (a response queued to it now would
            // be lost to a handler taking the leg over), so the call waits, and hands
            // the leg over at its end guard if it must.
            Some((false, false)) => {
                let ep = self.ctx.endpoint.clone();
                if let Some(b) = self.b.as_mut() {
                    b.cancel(&ep);
                }
                self.end_and_wait();
            }
            None => self.finish(),
        }
    }

    /// Ends the call silently (see [`CallMsg::Vanish`]): its ports and lines are freed,
    /// its Call-IDs forgotten, and nothing is sent or logged.
    fn vanish(&mut self) {
        tracing::info!("the cluster declared this node down: the call is dropped here");
        self.logged.store(true, Ordering::Release);
        self.phase = Phase::Done;
        self.stop_ring_timer();
        self.stop_ring_guard();
        self.queued = None;
        // Its lines went with it: the node carrying it now adopted them (a release from
        // here would free a line the call still holds there).
        for line in self.held_lines.drain(..) {
            line.moved();
        }
        self.ep().unregister(&self.a.info.call_id);
        if let Some(b) = &self.b {
            self.ep().unregister(b.call_id());
        }
        self.relay = None;
    }
}

/// How long a callback rings the caller it calls back.
const CALLBACK_RING_SECONDS: u32 = 60;

/// A callback number routes to the caller its live lease names (折返し通話): the
/// number with that one destination, or with none if no lease is live. This is the
/// one store read on the call path, for callback numbers only.
async fn callback_route(
    ctx: &NodeContext,
    number: Arc<TrackingNumber>,
    at_ms: i64,
) -> Arc<TrackingNumber> {
    let store = ctx.store.clone();
    let n = number.number.clone();
    let lease = tokio::task::spawn_blocking(move || store.lease_at(&n, at_ms)).await;
    let to = match lease {
        Ok(Ok(Some(l))) => l.params.get("callback_to").cloned(),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::warn!(%e, "store unavailable for a callback number's lease");
            None
        }
        Err(e) => {
            tracing::error!(%e, "callback lease lookup failed");
            None
        }
    };
    routed_to(
        &number,
        to.map(|number| Destination {
            number,
            ring_seconds: CALLBACK_RING_SECONDS,
        }),
    )
}

/// The number with its destinations replaced by `destination` (a callback's caller,
/// the closed-hours destination), so the rest of the call runs as for any number.
fn routed_to(number: &TrackingNumber, destination: Option<Destination>) -> Arc<TrackingNumber> {
    let mut routed = number.clone();
    routed.destinations = destination.into_iter().collect();
    Arc::new(routed)
}

/// The last request a far end sent: its dialog (the far end's tag, its From tag) and
/// its CSeq.
#[derive(Debug, Clone, PartialEq)]
struct RemoteCseq {
    tag: Option<String>,
    cseq: u32,
}

/// RFC 3261 12.2.2: a dialog's request whose CSeq is below the last one received in
/// that dialog is out of order; otherwise it becomes the last one. A request of
/// another dialog (a new forwarding attempt's callee, another fork: its own tag)
/// starts its own count: one count for the callee's side across attempts refused the
/// next callee's BYE (CSeq 2 after an earlier callee's INFO 102) as out of order, and
/// the caller was left talking to silence (a review).
fn cseq_in_order(last: &mut Option<RemoteCseq>, tag: Option<&str>, cseq: u32) -> bool {
    match last {
        Some(l) if l.tag.as_deref() == tag => {
            if cseq < l.cseq {
                return false;
            }
            l.cseq = cseq;
        }
        _ => {
            *last = Some(RemoteCseq {
                tag: tag.map(str::to_string),
                cseq,
            })
        }
    }
    true
}

/// A method the node does not take in a dialog (REFER, NOTIFY, MESSAGE, SUBSCRIBE,
/// ...): 405 with what it takes, rather than a 200 for something that is not done
/// (a REFER answered 200 would tell the caller its transfer was accepted).
fn refuse_method(
    ep: &tsunagu_sip::EndpointHandle,
    req: &Request,
    info: &tsunagu_sip::Info,
    key: &tsunagu_sip::transaction::TxKey,
) {
    tracing::info!(method = %req.method, "in-dialog method not taken: 405");
    let allow = [("Allow", tsunagu_sip::endpoint::ALLOW)];
    ep.respond(req, info, key, 405, None, &allow, None);
}

/// The To tag of a response (the fork of a forwarded INVITE it came from).
fn to_tag(resp: &Response) -> Option<&str> {
    header(resp, "To").and_then(tsunagu_sip::parse::tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which exits give a call's unread messages back to the SIP core: (how it
    /// exited, whether its own finish wrote the record, whether it was marked logged)
    /// -> whether it ended here. A call handed to another node or dropped by the
    /// cluster is marked logged by the supervisor first: its finish (an end guard before
    /// it read its `Vanish`) writes no record of its own, and it lives on elsewhere.
    #[test]
    fn which_ended_calls_give_back_what_they_left_unread() {
        let crash = Exit::Panicked("boom".into());
        let failed = Exit::Failed("no ports".into());
        let rows = [
            (&Exit::Done, true, true, true),
            (&Exit::Done, false, true, false),
            (&crash, false, false, true),
            (&crash, false, true, false),
            (&Exit::Stopped, false, false, false),
            (&Exit::Stopped, true, true, false),
            (&failed, false, false, false),
        ];
        for (exit, wrote_record, logged, want) in rows {
            assert_eq!(
                ended_here(exit, wrote_record, logged),
                want,
                "{exit:?} {wrote_record} {logged}"
            );
        }
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, F: std::future::Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What a held call's task costs besides its boxed [`Call`] (see [`run`]): a few
    /// hundred bytes (392 for `run` in a debug build). With its `Call` by value it was
    /// 8.9 KiB, and the supervisor's async wrapper doubled that.
    #[test]
    fn a_call_task_holds_boxes_not_the_call() {
        let call = std::mem::size_of::<Call>();
        for (name, size) in [
            ("run", future_size(run)),
            ("resume", future_size(takeover::resume)),
            ("drive", future_size(drive)),
        ] {
            assert!(size < call / 2, "{name}: {size} bytes, a Call is {call}");
        }
    }

    #[test]
    fn cseq_order() {
        let at = |tag: &str, cseq| {
            Some(RemoteCseq {
                tag: Some(tag.to_string()),
                cseq,
            })
        };
        // Each row: the last request received (tag, CSeq), this one's → accepted, the
        // last after.
        let rows: Vec<(Option<RemoteCseq>, &str, u32, bool, Option<RemoteCseq>)> = vec![
            (None, "a", 1, true, at("a", 1)),
            (None, "a", 0, true, at("a", 0)),
            (at("a", 1), "a", 2, true, at("a", 2)),
            (at("a", 7), "a", 1, false, at("a", 7)),
            (at("a", 7), "a", 7, true, at("a", 7)),
            (at("a", 7), "a", u32::MAX, true, at("a", u32::MAX)),
            // Another dialog (the next attempt's callee) counts from its own first.
            (at("a", 102), "b", 2, true, at("b", 2)),
            (at("b", 2), "b", 1, false, at("b", 2)),
        ];
        for (last, tag, cseq, accepted, after) in rows {
            let mut l = last.clone();
            assert_eq!(
                cseq_in_order(&mut l, Some(tag), cseq),
                accepted,
                "{last:?} then {tag} {cseq}"
            );
            assert_eq!(l, after, "{last:?} then {tag} {cseq}");
        }
    }
}
