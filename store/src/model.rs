//! The records the store keeps. Times are milliseconds since the Unix epoch (UTC).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertiser {
    pub id: String,
    pub operator_id: String,
    pub name: String,
    pub created_at: i64,
}

/// One forwarding target of a tracking number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// The advertiser's real phone number (digits).
    pub number: String,
    /// How long it may ring before the call gives up on it.
    #[serde(default = "default_ring_seconds")]
    pub ring_seconds: u32,
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
}

/// A tracking number and everything a call to it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The pool a `pool` number belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
}

/// How a pool hands out its numbers (発番方式).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// 動的: one number per visitor session while its lease lives; re-issuing extends it.
    Dynamic,
    /// ワンタイム: every issue leases the next free number, round-robin.
    OneTime,
}

/// A set of numbers of one advertiser, leased to page visitors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
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

/// One call log record (通話ログ), written once when the call ends.
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
    /// Continue after this `(started_at, call_id)` position.
    pub after: Option<(i64, String)>,
    pub limit: Option<usize>,
}
