//! The records the store keeps. Times are milliseconds since the Unix epoch (UTC).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// An operator's API key as it is listed: its id and the first characters of the key
/// (the key itself is stored only as a hash and shown once, when it is made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub operator_id: String,
    /// `tsk_` (`tsa_` for an advertiser's key) and the next 8 characters; None for keys
    /// made before prefixes were kept.
    pub prefix: Option<String>,
    pub created_at: i64,
    /// The one advertiser the key is limited to (it reads that advertiser's calls,
    /// recordings and call stream, nothing else); None: the whole operator.
    #[serde(default)]
    pub advertiser_id: Option<String>,
}

impl ApiKey {
    /// A new key's listing: a fresh id, made now, listed by `prefix`.
    pub fn new(operator_id: &str, prefix: &str, advertiser_id: Option<&str>) -> ApiKey {
        ApiKey {
            id: crate::new_id("key"),
            operator_id: operator_id.to_string(),
            prefix: Some(prefix.to_string()),
            created_at: crate::now_ms(),
            advertiser_id: advertiser_id.map(str::to_string),
        }
    }

    /// Whether it is a key of advertiser `advertiser_id`.
    pub fn is_of(&self, advertiser_id: &str) -> bool {
        self.advertiser_id.as_deref() == Some(advertiser_id)
    }
}

/// Whom an API key speaks for: its operator and, for an advertiser's key, the one
/// advertiser it is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    pub operator_id: String,
    pub advertiser_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertiser {
    pub id: String,
    pub operator_id: String,
    pub name: String,
    pub created_at: i64,
    /// A limit on the calls connected to all of the advertiser's numbers at once.
    #[serde(default)]
    pub lines: Option<LineLimit>,
}

/// At most `max_lines` calls at once; callers over it wait up to `max_wait_seconds`
/// for a line in FIFO order (SPEC 2, call queuing per advertiser).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineLimit {
    pub max_lines: u32,
    #[serde(default = "default_line_wait")]
    pub max_wait_seconds: u32,
}

impl LineLimit {
    /// The longest a caller may wait for a line (the API refuses more).
    pub const MAX_WAIT_SECONDS: u32 = 3600;
}

fn default_line_wait() -> u32 {
    60
}

/// One forwarding attempt of a call: a destination tried on a trunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub destination: String,
    pub trunk: String,
    pub started_at: i64,
    /// The final status the attempt got (0 if it got none: the call ended first).
    pub sip_code: u16,
    /// `answered`, `busy`, `no_answer` (ring timeout), `rejected`, `redirected`,
    /// `failed` (any other failure or no answer from the trunk), `cancelled` (the
    /// caller hung up).
    pub outcome: String,
}

/// One forwarding target of a tracking number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// The advertiser's real phone number (digits).
    pub number: String,
    /// How long it may ring before the call gives up on it (1 to
    /// [`Destination::MAX_RING_SECONDS`]).
    #[serde(default = "default_ring_seconds")]
    pub ring_seconds: u32,
}

impl Destination {
    /// The longest a destination may ring (the API refuses more; the SIP core keeps
    /// an INVITE's transaction this long plus 32 s).
    pub const MAX_RING_SECONDS: u32 = 300;
}

fn default_ring_seconds() -> u32 {
    30
}

/// How a call's `validity` is judged (有効コール判定).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ValidityRule {
    /// Talk time at or above which an answered call is `valid`.
    #[serde(default)]
    pub min_talk_seconds: u32,
    /// A call from the same caller to the same advertiser within this many seconds of an
    /// earlier one is `invalid_duplicate`; 0 = no duplicate check.
    #[serde(default)]
    pub duplicate_window_seconds: u32,
    /// A call without an IVR key is `invalid_no_digit`.
    #[serde(default)]
    pub require_ivr_digit: bool,
    /// A call without a judgement key is `invalid_no_digit`.
    #[serde(default)]
    pub require_judgement_digit: bool,
}

/// Which caller number the forwarded leg presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CallerIdMode {
    /// The original caller's number (default).
    #[default]
    Caller,
    /// The node's `sip.system_number` (or the tracking number if unset).
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NumberKind {
    #[default]
    Static,
    Pool,
    /// A number of a `callback` pool: a call to it goes to the caller its lease names.
    Callback,
}

/// One page of an operator's numbers ([`crate::Store::list_numbers_page`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NumberPage {
    /// In number order.
    pub numbers: Vec<TrackingNumber>,
    /// Where the next page starts (pass it as `after`); None on the last page.
    pub next: Option<String>,
}

/// What a compare-and-set change ([`crate::Store::update_number`],
/// [`crate::Store::update_advertiser`], [`crate::Store::update_pool`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    Updated,
    /// The operator has no such object.
    Missing,
    /// It changed since it was read: nothing written.
    Changed,
}

/// A tracking number and everything a call to it needs. Unknown fields are refused
/// (as in every part of it): a setting a newer release added makes the number
/// unreadable to an older node (counted, alerted on, and routed on its last readable
/// settings), rather than ignored (routed without it) and erased by that node's next
/// update (a review found the top level alone letting them through).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TrackingNumber {
    pub number: String,
    pub operator_id: String,
    pub advertiser_id: String,
    #[serde(default)]
    pub kind: NumberKind,
    pub destinations: Vec<Destination>,
    #[serde(default)]
    pub validity: ValidityRule,
    #[serde(default)]
    pub caller_id: CallerIdMode,
    /// Attribution parameters carried into every call log of a static number
    /// (e.g. `{"medium": "flyer", "shop": "shibuya"}`).
    #[serde(default)]
    pub tracking_params: BTreeMap<String, String>,
    /// The pool a `pool` or `callback` number belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    /// Notices sent after calls to this number (e-mail, SMS, callback number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// GA4 conversion upload for valid calls carrying a client id or gclid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ga4: Option<Ga4>,
    /// Record answered calls (2者間通話録音).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingSettings>,
    /// Business hours (スケジュール); none = always open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// The manual absence switch (不在設定): calls are handled as when closed.
    #[serde(default)]
    pub absent: bool,
    /// Call queuing (コールキューイング): a line limit and how long callers may wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSettings>,
    /// An IVR menu played before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ivr: Option<Ivr>,
    /// Post-call judgement by the callee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judgement: Option<Judgement>,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
}

/// Which calls a notice is sent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// Calls that were not answered (busy, no answer, cancelled, out of hours, ...).
    #[default]
    Missed,
    /// Every call.
    All,
}

/// Per-number notices after a call (SPEC 2: notifications, SMS, callback tracking).
/// Templates use `{placeholders}`; see the README for the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    #[serde(default)]
    pub on: NotifyOn,
    /// E-mail recipients.
    #[serde(default)]
    pub email_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_body: Option<String>,
    /// SMS recipients on the advertiser's side (phone numbers).
    #[serde(default)]
    pub sms_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms_text: Option<String>,
    /// An SMS to the caller after every call from a mobile number, with this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_sms_text: Option<String>,
    /// A `callback` pool: a missed call's notice carries one of its numbers, which
    /// forwards to the caller while its lease lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_pool_id: Option<String>,
}

/// At most `max_lines` calls of the number at once; others wait up to
/// `max_wait_seconds` for a line, first come first served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub max_lines: u32,
    pub max_wait_seconds: u32,
    /// Played, looped, to waiting callers; default `queue`. Callers hear ringback if
    /// the node has no such prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Played before a caller who waited `max_wait_seconds` is released; default
    /// `queue_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_prompt: Option<String>,
}

/// An IVR menu: a prompt, then the caller's key picks the destinations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ivr {
    pub prompt: String,
    /// Key (`0`-`9`, `*`, `#`) → the destinations it routes to, tried in order.
    pub routes: BTreeMap<String, Vec<Destination>>,
    /// How long to wait for a key after the prompt ends.
    #[serde(default = "default_ivr_timeout")]
    pub timeout_seconds: u32,
    /// How many times the menu is played before the call is released.
    #[serde(default = "default_ivr_attempts")]
    pub attempts: u32,
    /// Played after a key that routes nowhere; default `ivr_invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_prompt: Option<String>,
    /// The key assumed when the caller presses none (else the menu repeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_key: Option<String>,
}

fn default_ivr_timeout() -> u32 {
    5
}

fn default_ivr_attempts() -> u32 {
    3
}

/// Post-call judgement (終話後のボタン操作): when the caller hangs up, the callee
/// hears `prompt` and the key pressed within `seconds` after it is logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Judgement {
    #[serde(default = "default_judgement_prompt")]
    pub prompt: String,
    #[serde(default = "default_judgement_seconds")]
    pub seconds: u32,
}

fn default_judgement_prompt() -> String {
    "judgement".into()
}

fn default_judgement_seconds() -> u32 {
    5
}

/// A span of local time within a day, `HH:MM` to `HH:MM` (end excluded; `24:00` ok).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSpan {
    pub start: String,
    pub end: String,
}

/// Hours of one date, replacing the weekly hours that day (empty = closed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DateHours {
    pub date: String,
    #[serde(default)]
    pub hours: Vec<TimeSpan>,
}

/// What a call gets while the number is closed or absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClosedAction {
    /// Refused 480 (Temporarily Unavailable); result `out_of_hours` or `absent`.
    #[default]
    Reject,
    /// Forwarded to another number (e.g. a call centre) instead of the destinations.
    Forward { destination: String },
}

/// Weekly business hours with holidays and date exceptions, in one time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// `mon` .. `sun` → open spans; a missing day is closed.
    #[serde(default)]
    pub weekly: BTreeMap<String, Vec<TimeSpan>>,
    /// Dates (`YYYY-MM-DD`) closed all day.
    #[serde(default)]
    pub holidays: Vec<String>,
    #[serde(default)]
    pub exceptions: Vec<DateHours>,
    /// What calls get when closed or absent.
    #[serde(default)]
    pub closed: ClosedAction,
    /// Played to the caller when closed or absent, before the refusal or forward
    /// (e.g. `closed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_prompt: Option<String>,
}

fn default_time_zone() -> String {
    "Asia/Tokyo".into()
}

/// Which parties of an answered call are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingMode {
    /// Stereo WAV: caller left, callee right.
    Both,
    Caller,
    Callee,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingSettings {
    pub mode: RecordingMode,
    /// A prompt ("this call is recorded", e.g. `recording_notice`) the caller hears
    /// before the call is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
}

/// A GA4 property to send conversions to (Measurement Protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ga4 {
    pub measurement_id: String,
    pub api_secret: String,
    /// Event name sent for a valid call.
    #[serde(default = "default_ga4_event")]
    pub event_name: String,
}

fn default_ga4_event() -> String {
    "phone_call".into()
}

/// How a pool hands out its numbers (発番方式).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// 動的: one number per visitor session while its lease lives; re-issuing extends it.
    Dynamic,
    /// ワンタイム: every issue leases the next free number, round-robin.
    OneTime,
    /// 折返し: numbers leased to missed calls; a call to one goes to that call's caller.
    Callback,
}

/// A set of numbers of one advertiser, leased to page visitors. Unknown fields are
/// refused, as in [`TrackingNumber`]: a pool a newer release wrote is unreadable to an
/// older node (409 `unreadable`, left out of lists), rather than read without the new
/// setting and erased by that node's next change of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub id: String,
    pub operator_id: String,
    pub advertiser_id: String,
    pub mode: PoolMode,
    pub numbers: Vec<String>,
    /// Guaranteed minimum lease.
    pub hold_seconds: u32,
    /// Cool-down after a lease ends before the number is issued again.
    pub recycle_seconds: u32,
    /// Returned (and counted) when every number is leased or cooling down.
    pub overflow_number: Option<String>,
    /// Web origins allowed to issue from this pool without an API key (the page tag,
    /// `GET /v1/tag.js`); `*` allows any. Empty: API key only.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    pub created_at: i64,
}

/// One issued number: who holds it, with which tracking parameters, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub number: String,
    pub pool_id: String,
    pub session: Option<String>,
    pub params: BTreeMap<String, String>,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// What an issue request with a per-session cap got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    /// A new lease, or the session's live lease extended.
    Leased(Lease),
    /// Every number is leased or cooling down.
    Exhausted,
    /// The session already holds its cap of live leases in the pool; the earliest of
    /// them ends at `retry_at_ms`.
    SessionFull { retry_at_ms: i64 },
    /// The client address already holds its cap of live leases in the pool; the
    /// earliest of them ends at `retry_at_ms`.
    ClientFull { retry_at_ms: i64 },
}

/// Caps on a page's new lease (see `Store::issue_lease_capped`); an extension of a
/// session's live lease is never capped (it is not a new lease).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseCaps<'a> {
    /// Live leases of the pool one session may hold.
    pub per_session: Option<u32>,
    /// The client asking (its address key: an IPv4 address, an IPv6 /64) and the
    /// live leases of the pool it may hold: a script that names no session, or a new
    /// one each time, still holds no more than this.
    pub client: Option<(&'a str, u32)>,
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value as stored.
            pub const TEXTS: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "`{s}` is not one of {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// How a call ended (SPEC 4).
    CallResult {
        Answered => "answered",
        Busy => "busy",
        NoAnswer => "no_answer",
        Cancelled => "cancelled",
        Rejected => "rejected",
        Failed => "failed",
        OutOfHours => "out_of_hours",
        Absent => "absent",
        QueueTimeout => "queue_timeout",
    }
);

string_enum!(
    /// 有効コール判定: whether the call counts for the advertiser.
    Validity {
        Valid => "valid",
        InvalidShort => "invalid_short",
        InvalidDuplicate => "invalid_duplicate",
        InvalidNoDigit => "invalid_no_digit",
    }
);

string_enum!(
    /// The caller's line type, from the Japanese numbering plan and privacy headers.
    CallerKind {
        Mobile => "mobile",
        Ip => "ip",
        Fixed => "fixed",
        Freephone => "freephone",
        Public => "public",
        Anonymous => "anonymous",
        Unknown => "unknown",
    }
);

string_enum!(
    /// Whether a call is still in progress (`active`: durable from admission, updated
    /// at answer) or over (`ended`: its one final record).
    #[derive(Default)]
    CallState {
        Active => "active",
        #[default]
        Ended => "ended",
    }
);

string_enum!(
    /// Where a call in progress is before its answer (see [`CallRecord::stage`]).
    CallStage {
        Queued => "queued",
        Ringing => "ringing",
    }
);

/// One call log record (通話ログ): kept as `active` while the call runs, written once
/// as `ended` when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub call_id: String,
    pub operator_id: String,
    pub advertiser_id: String,
    pub tracking_number: String,
    pub caller_number: String,
    pub caller_kind: CallerKind,
    /// The destination that answered, or the last one tried.
    pub destination_number: Option<String>,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: i64,
    pub ring_seconds: u32,
    pub talk_seconds: u32,
    pub result: CallResult,
    pub validity: Validity,
    pub ivr_digits: Option<String>,
    pub judgement_digit: Option<String>,
    pub recording: Option<String>,
    pub tracking_params: BTreeMap<String, String>,
    pub node: String,
    /// SIP status sent upstream for an unanswered call (e.g. 486), 200 when answered.
    pub sip_code: u16,
    /// Trunk that carried the forwarded leg, if one was tried.
    pub trunk: Option<String>,
    /// RTP packets relayed caller→callee and callee→caller.
    pub rtp_packets_in: u64,
    pub rtp_packets_out: u64,
    /// RTP packets judged lost from sequence-number gaps (both directions).
    pub rtp_lost: u64,
    /// The highest RTP interarrival jitter (RFC 3550) of the call's audio (static
    /// formats of an 8 kHz clock), the worse direction, in microseconds; None where it
    /// was not measured (fewer than two packets either way, another format, a record
    /// from before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp_jitter_us: Option<u64>,
    /// For a call to a callback number: the missed call it calls back.
    pub callback_of: Option<String>,
    /// Set when the call was to be recorded.
    pub recording_status: Option<RecordingStatus>,
    /// Every forwarding attempt, in order (sequential forwarding, trunk failover).
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    #[serde(default)]
    pub state: CallState,
    /// Where a call in progress is before its answer (waiting for a line, offered to
    /// a destination): what the live call stream tells. None once it ends, and for a
    /// call just admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<CallStage>,
    /// Why the call ended when it was not the parties' doing: `drain` (the node shut
    /// down), `node_lost` (the node carrying it died), `session_expired`, ...
    #[serde(default)]
    pub end_reason: Option<String>,
    /// Every node that carried the call, in order (more than one when a node took it
    /// over from another); empty means just `node`.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// When the call last moved to another node (taken over, or handed over at drain).
    #[serde(default)]
    pub taken_over_at: Option<i64>,
    /// A recording made in parts (the call moved to another node while recorded): each
    /// part, in order; empty when `recording` is the one file.
    #[serde(default)]
    pub recording_parts: Vec<RecordingPart>,
    /// The incarnation of `node` that owns the call: writes of any other are fenced off
    /// (a frozen node that wakes up after its calls were taken over writes nothing).
    #[serde(default)]
    pub owner_epoch: u64,
}

/// One part of a call's recording: the file `path` (relative to the recordings
/// directory) on `node`, starting `offset_ms` after the call was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingPart {
    pub node: String,
    pub path: String,
    pub offset_ms: i64,
}

/// A call in progress as the store keeps it: its record and the state another node
/// needs to take it over (opaque to the store: the node's checkpoint, JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveCall {
    pub record: CallRecord,
    pub checkpoint: Option<String>,
}

/// An operator's subscription to call events, delivered signed (HMAC-SHA256 with `secret`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub operator_id: String,
    pub url: String,
    pub secret: String,
    /// Event types (`call.started`, `call.answered`, `call.ended`, `recording.ready`).
    pub events: Vec<String>,
    pub created_at: i64,
}

string_enum!(
    /// Whether a call's recording holds the whole conversation: `truncated` is shorter
    /// than the talk time (a write failed, or audio stopped early), `missing` has none.
    RecordingStatus {
        Complete => "complete",
        Truncated => "truncated",
        Missing => "missing",
    }
);

string_enum!(
    /// What a follow-up (an outbox row) delivers.
    FollowUpKind {
        Webhook => "webhook",
        Ga4 => "ga4",
        Email => "email",
        Sms => "sms",
    }
);

/// A follow-up to deliver: written to the durable outbox with the call it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFollowUp {
    pub kind: FollowUpKind,
    pub operator_id: String,
    /// Webhook id, e-mail address, phone number or GA4 measurement id.
    pub target: String,
    /// What to send (JSON; its shape depends on `kind`).
    pub payload: String,
}

/// A follow-up claimed for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUp {
    pub id: i64,
    pub item: NewFollowUp,
    /// Delivery attempts so far, this one included.
    pub attempts: u32,
    pub created_at: i64,
    /// Until when this claim hides the row from other claimers (its `next_at` as the
    /// claim wrote it).
    pub claimed_until: i64,
}

impl FollowUp {
    /// The claim this worker holds, which its outcome must still match.
    pub fn claim(&self) -> OutboxClaim {
        OutboxClaim {
            id: self.id,
            attempts: self.attempts,
            until: self.claimed_until,
        }
    }
}

/// How long a follow-up given up (dead) stays in the outbox for inspection: thirty
/// days, then a later claim prunes it (a receiver gone for good would otherwise add a
/// row per event forever, and every node counts the outbox each second).
pub const OUTBOX_DEAD_RETENTION_MS: i64 = 30 * 86_400_000;
/// Dead rows pruned at most per claim (bounded work in a claim).
pub const OUTBOX_DEAD_PRUNED_PER_CLAIM: usize = 64;

/// A worker's claim on an outbox row: the row as the claim left it. A failure or a
/// hand-back is written only while the row still shows it: once a claim runs out
/// (a store stalled for longer than the claim) another worker may claim the row,
/// which moves `next_at` past `until` and counts an attempt, and the late outcome
/// must not reschedule a row that worker is delivering. A later hand-back by that
/// worker sets `next_at` no earlier than its own claim time, itself no earlier than
/// `until`, so the pair does not come back (short of the same millisecond).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxClaim {
    pub id: i64,
    pub attempts: u32,
    pub until: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    #[default]
    Asc,
    Desc,
}

/// Filters and paging of a call-log query. `operator_id` is mandatory: it scopes everything.
#[derive(Debug, Clone, Default)]
pub struct CallQuery {
    pub operator_id: String,
    /// Calls that started at or after this time.
    pub from_ms: Option<i64>,
    /// Calls that started strictly before this time.
    pub to_ms: Option<i64>,
    pub advertiser_id: Option<String>,
    pub tracking_number: Option<String>,
    pub result: Option<CallResult>,
    pub validity: Option<Validity>,
    pub order: SortOrder,
    /// Calls in progress (`Active`) or ended calls (`Ended`, the default).
    pub state: CallState,
    /// Continue after this `(started_at, call_id)` position.
    pub after: Option<(i64, String)>,
    pub limit: Option<usize>,
    /// Give up with [`crate::StoreError::TimedOut`] once the scan runs past this
    /// instant (an API search's time budget); None: no limit (exports, the node's own
    /// scans).
    pub deadline: Option<std::time::Instant>,
}

/// What a node says about itself when it registers (see `Store::register_node`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: String,
    /// Where its peers reach it (`[cluster] listen`), if it is in a cluster.
    pub cluster_addr: Option<String>,
    /// Its HTTP API (`api.listen`): other nodes fetch its recordings there.
    pub api_addr: Option<String>,
}

/// A registered node (see `Store::nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node_id: String,
    pub epoch: u64,
    pub started_at: i64,
    pub last_seen: i64,
    pub cluster_addr: Option<String>,
    pub api_addr: Option<String>,
    /// This incarnation was declared down by the cluster.
    pub down: bool,
    /// This incarnation was retired by an operator (see `Store::retire_node`).
    pub retired: bool,
}

/// One provisioning change (see `Store::record_change`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub kind: String,
    pub key: String,
}

/// Changes after a point of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    pub items: Vec<Change>,
    /// The newest change number.
    pub latest: i64,
    /// False when changes after the point were pruned: reload everything.
    pub complete: bool,
}

/// One call's claim on its tracking number's notices for a clock hour
/// ([`crate::Store::take_notices`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoticeClaim<'a> {
    pub number: &'a str,
    /// The clock hour the call ended in ([`NoticeClaim::hour_of`]).
    pub hour: i64,
    pub call_id: &'a str,
}

impl NoticeClaim<'_> {
    /// The clock hour of `ms` (epoch milliseconds): hours since the epoch, floored.
    pub fn hour_of(ms: i64) -> i64 {
        ms.div_euclid(3_600_000)
    }
}
