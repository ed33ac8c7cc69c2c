//! What a call causes to be sent, as pure code: webhook events for the operator's
//! subscriptions, e-mail and SMS notices, the SMS to a mobile caller, and a GA4
//! conversion. Each follow-up is rendered here, completely, and stored in the outbox
//! with the call record; delivery later only sends it.

use super::template::render;
use std::collections::BTreeMap;
use tsunagu_store::{
    CallRecord, CallResult, CallerKind, FollowUpKind, NewFollowUp, Notify, NotifyOn,
    RecordingStatus, TrackingNumber, Validity, Webhook,
};

/// Moments of a call that webhooks report before it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Started,
    Answered,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Started => "call.started",
            EventKind::Answered => "call.answered",
        }
    }
}

/// A call event before its end, sent by the call actor.
#[derive(Debug, Clone)]
pub struct CallEvent {
    pub kind: EventKind,
    pub call_id: String,
    pub operator_id: String,
    pub advertiser_id: String,
    pub tracking_number: String,
    pub caller_number: String,
    pub caller_kind: CallerKind,
    pub destination: Option<String>,
    pub at_ms: i64,
}

pub const DEFAULT_SUBJECT: &str = "[tsunagu] {result}: call from {caller} to {tracking_number}";
pub const DEFAULT_BODY: &str = "Time: {time}\nCaller: {caller} ({caller_kind})\n\
Tracking number: {tracking_number}\nResult: {result}\nRang {ring_seconds} s, talked {talk_seconds} s\n\
Source: {source}\nCall id: {call_id}\n{callback}";
pub const DEFAULT_SMS: &str =
    "{time} {result}: call from {caller} to {tracking_number}. {callback}";

/// Settings the plan needs from the node.
#[derive(Debug, Clone, Copy)]
pub struct Planner {
    pub email: bool,
    pub sms: bool,
    pub utc_offset_minutes: i32,
}

pub fn subscribed(hook: &Webhook, event: &str) -> bool {
    hook.events.is_empty() || hook.events.iter().any(|e| e == event)
}

/// One item per webhook subscribed to `event`. `data` is built only if one is: most
/// calls of most operators have none, and this runs for every call.
fn webhook_items(
    hooks: &[Webhook],
    event: &str,
    id: impl FnOnce() -> String,
    at_ms: i64,
    data: impl FnOnce() -> serde_json::Value,
) -> Vec<NewFollowUp> {
    if !hooks.iter().any(|h| subscribed(h, event)) {
        return Vec::new();
    }
    let (id, data) = (id(), data());
    let body = serde_json::json!({
        "id": id,
        "type": event,
        "created_at": tsunagu_api::rfc3339(at_ms),
        "data": data,
    })
    .to_string();
    hooks
        .iter()
        .filter(|h| subscribed(h, event))
        .map(|h| NewFollowUp {
            kind: FollowUpKind::Webhook,
            operator_id: h.operator_id.clone(),
            target: h.id.clone(),
            payload: body.clone(),
        })
        .collect()
}

/// A missed call: one the advertiser did not take.
pub fn missed(r: &CallRecord) -> bool {
    r.result != CallResult::Answered
}

/// Whether `r` is a call the number's notices are for (`notify.on`: every call, or
/// the missed ones).
fn notified(notify: &Notify, r: &CallRecord) -> bool {
    notify.on == NotifyOn::All || missed(r)
}

/// What a finished call's caller gets of callback tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callback<'a> {
    /// Not asked for, or not for this call (answered, anonymous, itself a callback).
    None,
    /// A number of this pool, leased to ring the caller back.
    Lease(&'a str),
    /// Asked for, and refused: the caller's number is not verified, or not 4 to 15
    /// digits. A callback number rings the caller's number at the operator's cost
    /// (the call leaves through its trunks): a From anyone can write made the node call
    /// a premium or international number of the attacker's for whoever dialled the
    /// callback number, the attacker included (a review).
    Withheld,
}

/// The callback a finished call should get: a number of the number's callback pool
/// for a missed call from a known caller whose number is verified ([`caller_verified`])
/// and plain digits.
pub fn callback_pool<'a>(r: &CallRecord, n: &'a TrackingNumber, verified: bool) -> Callback<'a> {
    let known = !r.caller_number.is_empty() && r.caller_kind != CallerKind::Anonymous;
    let Some(pool) = n
        .notify
        .as_ref()
        .and_then(|n| n.callback_pool_id.as_deref())
    else {
        return Callback::None;
    };
    if !missed(r) || !known || r.callback_of.is_some() {
        return Callback::None;
    }
    let digits = (4..=15).contains(&r.caller_number.len())
        && r.caller_number.bytes().all(|b| b.is_ascii_digit());
    if verified && digits {
        Callback::Lease(pool)
    } else {
        Callback::Withheld
    }
}

impl Planner {
    pub fn for_event(&self, e: &CallEvent, hooks: &[Webhook]) -> Vec<NewFollowUp> {
        let event = e.kind.name();
        let data = || {
            serde_json::json!({
                "call_id": e.call_id,
                "advertiser_id": e.advertiser_id,
                "tracking_number": e.tracking_number,
                "caller_number": e.caller_number,
                "caller_kind": e.caller_kind,
                "destination_number": e.destination,
                "at": tsunagu_api::rfc3339(e.at_ms),
            })
        };
        let id = || format!("evt_{}_{}", e.call_id, event.trim_start_matches("call."));
        webhook_items(hooks, event, id, e.at_ms, data)
    }

    /// Whether a finished call `r` to `n` sends notices (e-mail or SMS to `notify`
    /// recipients), before anything is planned: the hourly bound is asked first, and a
    /// callback number (which reaches people in notices) is leased only if they go.
    pub fn notices_wanted(&self, r: &CallRecord, n: &TrackingNumber) -> bool {
        n.notify.as_ref().is_some_and(|notify| {
            notified(notify, r)
                && ((self.email && !notify.email_to.is_empty())
                    || (self.sms && !notify.sms_to.is_empty()))
        })
    }

    /// Whether the number asks for an SMS to this call's caller (a mobile caller, SMS
    /// configured, a `caller_sms_text`), whether or not the caller is verified.
    pub fn caller_sms_wanted(&self, r: &CallRecord, n: &TrackingNumber) -> bool {
        self.sms
            && r.caller_kind == CallerKind::Mobile
            && n.notify
                .as_ref()
                .is_some_and(|notify| notify.caller_sms_text.is_some())
    }

    /// Everything a finished call causes. `callback_number` is the number leased for
    /// calling this caller back, when the number has callback tracking. The caller gets
    /// an SMS only when `caller_verified` (see [`caller_verified`]): otherwise anyone
    /// could make the node text any number by putting it in From. `notices`: whether
    /// the notices to the number's recipients may go (false past the hourly bound,
    /// `NoticeRate`); the caller's SMS is not one.
    pub fn after_call(
        &self,
        r: &CallRecord,
        n: &TrackingNumber,
        hooks: &[Webhook],
        callback_number: Option<&str>,
        caller_verified: bool,
        notices: bool,
    ) -> Vec<NewFollowUp> {
        let mut out = webhook_items(
            hooks,
            "call.ended",
            || format!("evt_{}_ended", r.call_id),
            r.ended_at,
            || tsunagu_api::call_json(r),
        );
        if let (Some(_), Some(status)) = (&r.recording, r.recording_status) {
            if status != RecordingStatus::Missing {
                let data = || {
                    serde_json::json!({
                        "call_id": r.call_id,
                        "tracking_number": r.tracking_number,
                        "status": status,
                        "url": format!("/v1/calls/{}/recording", r.call_id),
                    })
                };
                out.extend(webhook_items(
                    hooks,
                    "recording.ready",
                    || format!("evt_{}_recording", r.call_id),
                    r.ended_at,
                    data,
                ));
            }
        }
        let item = |kind, target: &str, payload: serde_json::Value| NewFollowUp {
            kind,
            operator_id: r.operator_id.clone(),
            target: target.to_string(),
            payload: payload.to_string(),
        };
        if let Some(notify) = &n.notify {
            let values = self.values(r, callback_number);
            let wanted = notices && notified(notify, r);
            if wanted && self.email {
                let subject = render(
                    notify.email_subject.as_deref().unwrap_or(DEFAULT_SUBJECT),
                    &values,
                );
                let body = render(
                    notify.email_body.as_deref().unwrap_or(DEFAULT_BODY),
                    &values,
                );
                let subject = cut_bytes(subject.trim(), MAX_SUBJECT_BYTES);
                let body = cut_bytes(body.trim_end(), MAX_BODY_BYTES);
                for to in &notify.email_to {
                    out.push(item(
                        FollowUpKind::Email,
                        to,
                        serde_json::json!({"to": to, "subject": subject, "body": body}),
                    ));
                }
            }
            if wanted && self.sms {
                let text = render(notify.sms_text.as_deref().unwrap_or(DEFAULT_SMS), &values);
                let text = sms_cut(text.trim());
                for to in &notify.sms_to {
                    out.push(item(
                        FollowUpKind::Sms,
                        to,
                        serde_json::json!({"to": to, "text": text}),
                    ));
                }
            }
            if let (Some(t), true) = (&notify.caller_sms_text, caller_verified) {
                if self.caller_sms_wanted(r, n) {
                    // The day and call id let delivery count it against the caller's
                    // daily cap (notify.caller_sms_per_day).
                    let text = render(t, &values);
                    let text = sms_cut(text.trim());
                    out.push(item(
                        FollowUpKind::Sms,
                        &r.caller_number,
                        serde_json::json!({"to": r.caller_number, "text": text,
                            "caller_day": local_day(r.started_at, self.utc_offset_minutes),
                            "call_id": r.call_id}),
                    ));
                }
            }
        }
        if let Some(g) = &n.ga4 {
            if let Some(body) = ga4_body(r, &g.event_name) {
                out.push(item(
                    FollowUpKind::Ga4,
                    g.measurement_id.trim(),
                    // Trimmed: the API judges them so (spaces a copy and paste added).
                    serde_json::json!({"measurement_id": g.measurement_id.trim(), "api_secret": g.api_secret.trim(), "body": body}),
                ));
            }
        }
        out
    }

    /// Template placeholders of a finished call.
    fn values<'a>(&self, r: &CallRecord, callback: Option<&str>) -> BTreeMap<&'a str, String> {
        let source = if r.tracking_params.is_empty() {
            "-".to_string()
        } else {
            r.tracking_params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let caller = if r.caller_number.is_empty() {
            "anonymous".to_string()
        } else {
            r.caller_number.clone()
        };
        BTreeMap::from([
            ("time", local_time(r.started_at, self.utc_offset_minutes)),
            ("caller", caller),
            ("caller_kind", r.caller_kind.to_string()),
            ("tracking_number", r.tracking_number.clone()),
            (
                "destination",
                r.destination_number.clone().unwrap_or_default(),
            ),
            ("result", r.result.to_string()),
            ("ring_seconds", r.ring_seconds.to_string()),
            ("talk_seconds", r.talk_seconds.to_string()),
            ("source", source),
            ("call_id", r.call_id.clone()),
            ("advertiser_id", r.advertiser_id.clone()),
            ("callback_number", callback.unwrap_or_default().to_string()),
            (
                "callback",
                callback
                    .map(|c| {
                        format!("Call back on {c}: it rings the caller and the call is tracked.")
                    })
                    .unwrap_or_default(),
            ),
        ])
    }
}

/// The most UTF-16 code units an SMS takes: ten concatenated segments of 67 UCS-2
/// units (a character outside the BMP, an emoji, takes two). A template of 4,000
/// characters, or a `{source}` filled with a visitor's 8 KiB of parameters, was sent
/// whole: dozens of paid segments per message.
pub const MAX_SMS_UNITS: usize = 670;

/// The most bytes of a notice e-mail's subject (RFC 5322's line, before folding) and
/// body once rendered. A template is at most 4,000 characters, but each placeholder
/// in it is filled: `{source}` 500 times over a visitor's 8 KiB of parameters rendered
/// 4 MB subjects and bodies, some 80 MB of outbox per call with ten recipients, built
/// in the call-log writer's batch (a review).
pub const MAX_SUBJECT_BYTES: usize = 998;
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `text` cut to at most `max` bytes, between characters.
pub fn cut_bytes(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` cut to [`MAX_SMS_UNITS`] UTF-16 units (between characters).
pub fn sms_cut(text: &str) -> &str {
    let mut units = 0;
    for (at, c) in text.char_indices() {
        units += c.len_utf16();
        if units > MAX_SMS_UNITS {
            return &text[..at];
        }
    }
    text
}

/// Whether the caller's number is one we may text: the carrier asserted it
/// (P-Asserted-Identity with a number, from a `trusted` trunk, which is then the number
/// logged) or the trunk verifies the numbers it sends (`verifies_caller_id`).
pub fn caller_verified(trusted: bool, verifies_caller_id: bool, asserted: Option<&str>) -> bool {
    use tsunagu_sip::parse::{uri_of, uri_user};
    let asserted = asserted
        .map(uri_of)
        .and_then(uri_user)
        .is_some_and(|u| !u.is_empty());
    verifies_caller_id || (trusted && asserted)
}

/// The day (days since 1970-01-01 in the node's time zone) a call started on.
pub fn local_day(ms: i64, offset_minutes: i32) -> i64 {
    ms.saturating_add(i64::from(offset_minutes) * 60_000)
        .div_euclid(86_400_000)
}

/// `2026-11-28 19:05:00 +09:00`.
pub fn local_time(ms: i64, offset_minutes: i32) -> String {
    let offset = chrono::FixedOffset::east_opt(offset_minutes * 60)
        .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("UTC"));
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&offset)
                .format("%Y-%m-%d %H:%M:%S %:z")
                .to_string()
        })
        .unwrap_or_default()
}

/// The Measurement Protocol body for a valid call that carries a GA4 client id or a
/// gclid; None for any other call. With only a gclid, the client id is derived from it
/// (GA4 needs one) and the gclid travels as an event parameter.
pub fn ga4_body(r: &CallRecord, event_name: &str) -> Option<serde_json::Value> {
    if r.validity != Validity::Valid {
        return None;
    }
    let p = &r.tracking_params;
    let client = p
        .get("client_id")
        .or_else(|| p.get("ga_client_id"))
        .cloned();
    let gclid = p.get("gclid").cloned();
    let client_id = client.or_else(|| gclid.as_ref().map(|g| format!("gclid.{g}")))?;
    let mut params = serde_json::json!({
        "call_id": r.call_id,
        "tracking_number": r.tracking_number,
        "caller_kind": r.caller_kind,
        "talk_seconds": r.talk_seconds,
        "ring_seconds": r.ring_seconds,
    });
    if let Some(g) = gclid {
        params["gclid"] = g.into();
    }
    for key in ["utm_source", "utm_medium", "utm_campaign", "keyword"] {
        if let Some(v) = p.get(key) {
            params[key] = v.clone().into();
        }
    }
    Some(serde_json::json!({
        "client_id": client_id,
        "timestamp_micros": r.started_at * 1000,
        "events": [{"name": event_name, "params": params}],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsunagu_store::conformance::{sample_call, sample_number};
    use tsunagu_store::{Ga4, Notify};

    fn hook(id: &str, events: &[&str]) -> Webhook {
        Webhook {
            id: id.into(),
            operator_id: "op_1".into(),
            url: "http://127.0.0.1:9/h".into(),
            secret: "s".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            created_at: 0,
        }
    }

    const PLANNER: Planner = Planner {
        email: true,
        sms: true,
        utc_offset_minutes: 540,
    };

    fn kinds(items: &[NewFollowUp]) -> Vec<(FollowUpKind, String)> {
        items.iter().map(|i| (i.kind, i.target.clone())).collect()
    }

    #[test]
    fn webhooks_follow_subscriptions() {
        let hooks = [
            hook("all", &[]),
            hook("ended", &["call.ended"]),
            hook("started", &["call.started"]),
        ];
        let r = sample_call("op_1", "adv_1", 1_000);
        let n = sample_number("op_1", "adv_1");
        let ended = PLANNER.after_call(&r, &n, &hooks, None, true, true);
        let mut recorded = r.clone();
        recorded.recording = Some("d/x.wav".into());
        recorded.recording_status = Some(RecordingStatus::Complete);
        assert_eq!(
            PLANNER
                .after_call(&recorded, &n, &hooks, None, true, true)
                .len(),
            3,
            "call.ended to `all` and `ended`, recording.ready to `all` only"
        );
        recorded.recording_status = Some(RecordingStatus::Missing);
        assert_eq!(
            PLANNER
                .after_call(&recorded, &n, &hooks, None, true, true)
                .len(),
            2,
            "no recording.ready without audio"
        );
        assert_eq!(
            kinds(&ended),
            vec![
                (FollowUpKind::Webhook, "all".into()),
                (FollowUpKind::Webhook, "ended".into())
            ]
        );
        let body: serde_json::Value = serde_json::from_str(&ended[0].payload).unwrap();
        assert_eq!(body["type"], "call.ended");
        assert_eq!(body["id"], format!("evt_{}_ended", r.call_id));
        assert_eq!(body["data"]["call_id"], r.call_id.as_str());
        let e = CallEvent {
            kind: EventKind::Started,
            call_id: "c1".into(),
            operator_id: "op_1".into(),
            advertiser_id: "adv_1".into(),
            tracking_number: "0501".into(),
            caller_number: "0901".into(),
            caller_kind: CallerKind::Mobile,
            destination: None,
            at_ms: 5,
        };
        let started = PLANNER.for_event(&e, &hooks);
        assert_eq!(
            kinds(&started),
            vec![
                (FollowUpKind::Webhook, "all".into()),
                (FollowUpKind::Webhook, "started".into())
            ]
        );
        assert!(PLANNER.for_event(&e, &[]).is_empty());
    }

    /// Each row: result, notify.on, caller kind, channels, caller verified → what is
    /// sent.
    #[test]
    fn notices_by_result_and_setting() {
        use FollowUpKind::{Email, Sms};
        let both = Planner {
            email: true,
            sms: true,
            utc_offset_minutes: 540,
        };
        let no_sms = Planner { sms: false, ..both };
        type Row = (
            CallResult,
            NotifyOn,
            CallerKind,
            Planner,
            bool,
            &'static [(FollowUpKind, &'static str)],
        );
        let rows: &[Row] = &[
            (
                CallResult::NoAnswer,
                NotifyOn::Missed,
                CallerKind::Fixed,
                both,
                true,
                &[(Email, "a@x.jp"), (Sms, "09011112222")],
            ),
            (
                CallResult::Answered,
                NotifyOn::Missed,
                CallerKind::Fixed,
                both,
                true,
                &[],
            ),
            (
                CallResult::Answered,
                NotifyOn::All,
                CallerKind::Fixed,
                both,
                true,
                &[(Email, "a@x.jp"), (Sms, "09011112222")],
            ),
            (
                CallResult::Busy,
                NotifyOn::Missed,
                CallerKind::Mobile,
                both,
                true,
                &[
                    (Email, "a@x.jp"),
                    (Sms, "09011112222"),
                    (Sms, "09012345678"),
                ],
            ),
            (
                CallResult::Answered,
                NotifyOn::Missed,
                CallerKind::Mobile,
                both,
                true,
                &[(Sms, "09012345678")],
            ),
            (
                CallResult::Busy,
                NotifyOn::Missed,
                CallerKind::Mobile,
                no_sms,
                true,
                &[(Email, "a@x.jp")],
            ),
            // An unverified caller number (From of an untrusted trunk): no SMS to it;
            // the advertiser's notices go as before.
            (
                CallResult::Busy,
                NotifyOn::Missed,
                CallerKind::Mobile,
                both,
                false,
                &[(Email, "a@x.jp"), (Sms, "09011112222")],
            ),
            (
                CallResult::Answered,
                NotifyOn::Missed,
                CallerKind::Mobile,
                both,
                false,
                &[],
            ),
        ];
        for (i, (result, on, kind, planner, verified, want)) in rows.iter().enumerate() {
            let mut r = sample_call("op_1", "adv_1", 1_000);
            r.result = *result;
            r.caller_kind = *kind;
            let mut n = sample_number("op_1", "adv_1");
            n.notify = Some(Notify {
                on: *on,
                email_to: vec!["a@x.jp".into()],
                sms_to: vec!["09011112222".into()],
                caller_sms_text: Some("Thanks for calling {tracking_number}".into()),
                ..Default::default()
            });
            let got = kinds(&planner.after_call(&r, &n, &[], None, *verified, true));
            let want: Vec<(FollowUpKind, String)> =
                want.iter().map(|(k, t)| (*k, t.to_string())).collect();
            assert_eq!(got, want, "row {i}");
            assert_eq!(
                planner.caller_sms_wanted(&r, &n),
                *kind == CallerKind::Mobile && planner.sms,
                "row {i}"
            );
        }
    }

    #[test]
    fn caller_sms_carries_what_the_daily_cap_counts() {
        let mut r = sample_call("op_1", "adv_1", 1_764_342_000_000); // 2025-11-28 15:00 UTC
        r.caller_kind = CallerKind::Mobile;
        let mut n = sample_number("op_1", "adv_1");
        n.notify = Some(Notify {
            caller_sms_text: Some("Thanks".into()),
            ..Default::default()
        });
        let items = PLANNER.after_call(&r, &n, &[], None, true, true);
        let sms: serde_json::Value = serde_json::from_str(&items[0].payload).unwrap();
        // 15:00 UTC is already the 29th in Japan.
        assert_eq!(sms["caller_day"], local_day(r.started_at, 540));
        assert_eq!(local_day(r.started_at, 540), local_day(r.started_at, 0) + 1);
        assert_eq!(sms["call_id"], r.call_id.as_str());
    }

    /// Each row: trunk trusted, trunk verifies caller ids, P-Asserted-Identity → may
    /// the caller be texted.
    #[test]
    fn verified_callers() {
        let rows: &[(bool, bool, Option<&str>, bool)] = &[
            (false, false, None, false),
            (false, false, Some("<sip:09011112222@pstn>"), false), // untrusted PAI
            (true, false, None, false),                            // trusted, From only
            (true, false, Some("<sip:09011112222@pstn>"), true),
            (true, false, Some("<tel:+819011112222>"), true),
            (true, false, Some("<sip:pstn.example>"), false), // no number in it
            (false, true, None, true),
            (true, true, None, true),
        ];
        for (trusted, verifies, pai, want) in rows {
            assert_eq!(
                caller_verified(*trusted, *verifies, *pai),
                *want,
                "trusted={trusted} verifies={verifies} {pai:?}"
            );
        }
        assert_eq!(local_day(0, 0), 0);
        assert_eq!(local_day(-1, 0), -1);
        assert_eq!(local_day(86_400_000 - 540 * 60_000, 540), 1);
    }

    #[test]
    fn notice_text_has_call_facts_source_and_callback() {
        let mut r = sample_call("op_1", "adv_1", 1_764_324_000_000); // 2025-11-28 10:00 UTC
        r.result = CallResult::NoAnswer;
        let mut n = sample_number("op_1", "adv_1");
        n.notify = Some(Notify {
            email_to: vec!["a@x.jp".into()],
            ..Default::default()
        });
        let items = PLANNER.after_call(&r, &n, &[], Some("0120999000"), true, true);
        let mail: serde_json::Value = serde_json::from_str(&items[0].payload).unwrap();
        assert_eq!(
            mail["subject"],
            format!(
                "[tsunagu] no_answer: call from 09012345678 to {}",
                r.tracking_number
            )
        );
        let body = mail["body"].as_str().unwrap();
        for want in [
            "Time: 2025-11-28 19:00:00 +09:00",
            "Caller: 09012345678 (mobile)",
            "Source: gclid=abc",
            "Call back on 0120999000",
        ] {
            assert!(body.contains(want), "{want} in {body}");
        }
    }

    #[test]
    fn ga4_only_for_valid_calls_with_an_id() {
        let rows: &[(Validity, &[(&str, &str)], Option<&str>)] = &[
            (
                Validity::Valid,
                &[("client_id", "123.456")],
                Some("123.456"),
            ),
            (Validity::Valid, &[("gclid", "Cj0")], Some("gclid.Cj0")),
            (
                Validity::Valid,
                &[("client_id", "1.2"), ("gclid", "Cj0")],
                Some("1.2"),
            ),
            (Validity::Valid, &[("keyword", "x")], None),
            (Validity::InvalidShort, &[("client_id", "1.2")], None),
            (Validity::InvalidDuplicate, &[("gclid", "Cj0")], None),
        ];
        for (validity, params, want) in rows {
            let mut r = sample_call("op_1", "adv_1", 1_000);
            r.validity = *validity;
            r.tracking_params = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let body = ga4_body(&r, "phone_call");
            assert_eq!(
                body.as_ref()
                    .map(|b| b["client_id"].as_str().unwrap().to_string())
                    .as_deref(),
                *want,
                "{params:?}"
            );
            if let Some(b) = body {
                assert_eq!(b["events"][0]["name"], "phone_call");
                assert_eq!(b["timestamp_micros"], 1_000_000);
            }
        }
        let mut n = sample_number("op_1", "adv_1");
        n.ga4 = Some(Ga4 {
            measurement_id: "G-1".into(),
            api_secret: "s".into(),
            event_name: "phone_call".into(),
        });
        let r = sample_call("op_1", "adv_1", 1_000); // valid, gclid=abc
        assert_eq!(
            kinds(&PLANNER.after_call(&r, &n, &[], None, true, true)),
            vec![(FollowUpKind::Ga4, "G-1".into())]
        );
    }

    #[test]
    fn callback_only_for_missed_calls_from_known_callers() {
        let mut n = sample_number("op_1", "adv_1");
        n.notify = Some(Notify {
            callback_pool_id: Some("pool_cb".into()),
            ..Default::default()
        });
        use Callback::*;
        // (result, caller kind, caller number, itself a callback, verified, want)
        let rows: &[(CallResult, CallerKind, &str, bool, bool, Callback)] = &[
            (
                CallResult::NoAnswer,
                CallerKind::Mobile,
                "09012345678",
                false,
                true,
                Lease("pool_cb"),
            ),
            (
                CallResult::Busy,
                CallerKind::Fixed,
                "0311112222",
                false,
                true,
                Lease("pool_cb"),
            ),
            (
                CallResult::Answered,
                CallerKind::Mobile,
                "09012345678",
                false,
                true,
                None,
            ),
            (
                CallResult::NoAnswer,
                CallerKind::Anonymous,
                "",
                false,
                true,
                None,
            ),
            (
                CallResult::NoAnswer,
                CallerKind::Mobile,
                "09012345678",
                true,
                true,
                None,
            ),
            // A From anyone can write: no callback to it.
            (
                CallResult::NoAnswer,
                CallerKind::Mobile,
                "09012345678",
                false,
                false,
                Withheld,
            ),
            (
                CallResult::NoAnswer,
                CallerKind::Fixed,
                "+882123456789",
                false,
                true,
                Withheld,
            ),
            (
                CallResult::NoAnswer,
                CallerKind::Fixed,
                "0311112222;x",
                false,
                true,
                Withheld,
            ),
            (
                CallResult::NoAnswer,
                CallerKind::Fixed,
                "0123456789012345",
                false,
                true,
                Withheld,
            ),
        ];
        for (result, kind, caller, is_callback, verified, want) in rows {
            let mut r = sample_call("op_1", "adv_1", 1_000);
            r.result = *result;
            r.caller_kind = *kind;
            r.caller_number = caller.to_string();
            r.callback_of = is_callback.then(|| "call_0".to_string());
            assert_eq!(
                callback_pool(&r, &n, *verified),
                *want,
                "{result:?} {kind:?} {caller} {verified}"
            );
        }
        n.notify = Some(Notify::default());
        let r = sample_call("op_1", "adv_1", 1_000);
        assert_eq!(callback_pool(&r, &n, true), None, "no callback pool");
    }

    /// An SMS is cut to ten segments' UTF-16 units, between characters.
    #[test]
    fn sms_are_cut_to_ten_segments() {
        let rows: &[(String, usize)] = &[
            ("short".into(), 5),
            ("x".repeat(670), 670),
            ("x".repeat(4000), 670),
            ("\u{3042}".repeat(700), 670),
            ("\u{1F600}".repeat(700), 335),
            (format!("x{}", "\u{1F600}".repeat(700)), 335),
        ];
        for (text, chars) in rows {
            let cut = sms_cut(text);
            assert_eq!(cut.chars().count(), *chars, "{}", &text[..8]);
            assert!(cut.encode_utf16().count() <= MAX_SMS_UNITS);
        }
    }

    /// A template that repeats `{source}` over a visitor's 8 KiB of parameters renders
    /// an e-mail within its caps, cut between characters.
    #[test]
    fn e_mails_are_cut_to_their_caps() {
        let mut r = sample_call("op_1", "adv_1", 1_000);
        r.result = CallResult::NoAnswer;
        r.tracking_params = (0..80)
            .map(|i| (format!("k{i:02}"), "\u{3042}".repeat(33)))
            .collect();
        let mut n = sample_number("op_1", "adv_1");
        n.notify = Some(Notify {
            email_to: vec!["a@x.jp".into()],
            email_subject: Some("{source}".repeat(500)),
            email_body: Some("{source}".repeat(500)),
            ..Default::default()
        });
        let items = PLANNER.after_call(&r, &n, &[], None, true, true);
        let mail: serde_json::Value = serde_json::from_str(&items[0].payload).unwrap();
        let (subject, body) = (
            mail["subject"].as_str().unwrap(),
            mail["body"].as_str().unwrap(),
        );
        assert!(subject.len() <= MAX_SUBJECT_BYTES && subject.len() > MAX_SUBJECT_BYTES - 4);
        assert!(body.len() <= MAX_BODY_BYTES && body.len() > MAX_BODY_BYTES - 4);
        assert!(subject.starts_with("k00=") && body.starts_with("k00="));
        for (text, max, want) in [
            ("abc", 2, "ab"),
            ("\u{3042}\u{3042}", 4, "\u{3042}"),
            ("", 5, ""),
        ] {
            assert_eq!(cut_bytes(text, max), want);
        }
    }

    #[test]
    fn local_times() {
        assert_eq!(local_time(0, 540), "1970-01-01 09:00:00 +09:00");
        assert_eq!(local_time(0, 0), "1970-01-01 00:00:00 +00:00");
    }
}
