//! `/v1/numbers` (operator key): tracking numbers with their destinations, caller-ID
//! presentation, attribution parameters and validity rule. Every write refreshes the
//! call path's number directory.

use crate::auth::OperatorId;
use crate::error::parse_json;
use crate::follow_up::present;
use crate::{db, db_readable, db_then, now_ms, rfc3339, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tsunagu_store::{
    CallerIdMode, Destination, Ga4, Ivr, Judgement, Notify, NumberKind, QueueSettings,
    RecordingSettings, Schedule, TrackingNumber, Update, ValidityRule,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NumberInput {
    number: String,
    advertiser_id: String,
    #[serde(default)]
    kind: NumberKind,
    destinations: Vec<Destination>,
    #[serde(default)]
    validity: ValidityRule,
    #[serde(default)]
    caller_id: CallerIdMode,
    #[serde(default)]
    tracking_params: BTreeMap<String, String>,
    #[serde(default)]
    notify: Option<Notify>,
    #[serde(default)]
    ga4: Option<Ga4>,
    #[serde(default)]
    recording: Option<RecordingSettings>,
    #[serde(default)]
    schedule: Option<Schedule>,
    #[serde(default)]
    absent: bool,
    #[serde(default)]
    queue: Option<QueueSettings>,
    #[serde(default)]
    ivr: Option<Ivr>,
    #[serde(default)]
    judgement: Option<Judgement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NumberPatch {
    advertiser_id: Option<String>,
    destinations: Option<Vec<Destination>>,
    validity: Option<ValidityRule>,
    caller_id: Option<CallerIdMode>,
    tracking_params: Option<BTreeMap<String, String>>,
    /// `null` removes the settings.
    #[serde(default, deserialize_with = "present")]
    notify: Option<Option<Notify>>,
    #[serde(default, deserialize_with = "present")]
    ga4: Option<Option<Ga4>>,
    #[serde(default, deserialize_with = "present")]
    recording: Option<Option<RecordingSettings>>,
    #[serde(default, deserialize_with = "present")]
    schedule: Option<Option<Schedule>>,
    /// The absence switch (不在設定).
    absent: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    queue: Option<Option<QueueSettings>>,
    #[serde(default, deserialize_with = "present")]
    ivr: Option<Option<Ivr>>,
    #[serde(default, deserialize_with = "present")]
    judgement: Option<Option<Judgement>>,
}

pub(crate) fn is_phone_number(s: &str) -> bool {
    (4..=15).contains(&s.len()) && s.chars().all(|c| c.is_ascii_digit())
}

/// Checks a number's settings; the first problem is reported with its field.
fn validate(n: &TrackingNumber) -> Result<(), ApiError> {
    if !is_phone_number(&n.number) {
        return Err(ApiError::invalid(
            "number",
            "must be 4 to 15 digits in national form (e.g. 0501234567)",
        ));
    }
    check_size(n)?;
    if n.kind == NumberKind::Callback {
        // A number of a callback pool calls back the caller its lease names: it has no
        // destinations of its own, its other settings change like any number's.
        if !n.destinations.is_empty() {
            return Err(ApiError::invalid(
                "destinations",
                "a callback pool's number calls the caller its lease names: it has no destinations",
            ));
        }
        validate_validity(&n.validity)?;
    } else {
        validate_forwarding(&n.destinations, &n.validity)?;
    }
    if let Some(q) = &n.queue {
        if !(1..=1000).contains(&q.max_lines) {
            return Err(ApiError::invalid("queue.max_lines", "must be 1 to 1000"));
        }
        check_wait("queue.max_wait_seconds", q.max_wait_seconds)?;
    }
    if let Some(s) = &n.schedule {
        tsunagu_store::schedule::check_schedule(s).map_err(|(f, m)| ApiError::invalid(&f, m))?;
    }
    if let Some(ivr) = &n.ivr {
        validate_ivr(ivr)?;
    }
    if let Some(j) = &n.judgement {
        if !(1..=60).contains(&j.seconds) {
            return Err(ApiError::invalid("judgement.seconds", "must be 1 to 60"));
        }
    }
    validate_params("tracking_params", &n.tracking_params)
}

fn validate_ivr(ivr: &Ivr) -> Result<(), ApiError> {
    if ivr.routes.is_empty() {
        return Err(ApiError::invalid("ivr.routes", "needs at least one key"));
    }
    for (key, destinations) in &ivr.routes {
        let mut chars = key.chars();
        let one_key = matches!((chars.next(), chars.next()), (Some(c), None) if c.is_ascii_digit() || c == '*' || c == '#');
        if !one_key {
            return Err(ApiError::invalid(
                &format!("ivr.routes.{key}"),
                "keys are one of 0-9, * and #",
            ));
        }
        validate_forwarding(destinations, &ValidityRule::default())
            .map_err(|e| e.within(&format!("ivr.routes.{key}")))?;
    }
    if let Some(k) = &ivr.default_key {
        if !ivr.routes.contains_key(k) {
            return Err(ApiError::invalid(
                "ivr.default_key",
                "must be one of the routes' keys",
            ));
        }
    }
    if !(1..=60).contains(&ivr.timeout_seconds) {
        return Err(ApiError::invalid("ivr.timeout_seconds", "must be 1 to 60"));
    }
    if !(1..=10).contains(&ivr.attempts) {
        return Err(ApiError::invalid("ivr.attempts", "must be 1 to 10"));
    }
    Ok(())
}

/// Every prompt a number names, with its field: each must exist for the operator.
pub(crate) fn named_prompts(n: &TrackingNumber) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    if let Some(q) = &n.queue {
        out.extend(q.prompt.as_deref().map(|p| ("queue.prompt", p)));
        out.extend(
            q.timeout_prompt
                .as_deref()
                .map(|p| ("queue.timeout_prompt", p)),
        );
    }
    if let Some(s) = &n.schedule {
        out.extend(
            s.closed_prompt
                .as_deref()
                .map(|p| ("schedule.closed_prompt", p)),
        );
    }
    if let Some(r) = &n.recording {
        out.extend(r.notice.as_deref().map(|p| ("recording.notice", p)));
    }
    if let Some(i) = &n.ivr {
        out.push(("ivr.prompt", i.prompt.as_str()));
        out.extend(
            i.invalid_prompt
                .as_deref()
                .map(|p| ("ivr.invalid_prompt", p)),
        );
    }
    if let Some(j) = &n.judgement {
        out.push(("judgement.prompt", j.prompt.as_str()));
    }
    out
}

pub(crate) fn check_prompts(st: &ApiState, op: &str, n: &TrackingNumber) -> Result<(), ApiError> {
    for (field, name) in named_prompts(n) {
        if st.prompts.get(op, name).is_none() {
            return Err(ApiError::invalid(
                field,
                format!("no prompt named `{name}` (GET /v1/prompts lists them)"),
            ));
        }
    }
    Ok(())
}

/// The most a number's settings may take, as stored (JSON): every node holds every
/// number in memory, and each field's own caps (400 schedule exceptions, three
/// 4000-byte templates, ...) would together allow about 160 KB. A number that uses
/// every option takes a few kilobytes.
pub(crate) const MAX_NUMBER_BYTES: usize = 64 * 1024;

/// A number's settings within [`MAX_NUMBER_BYTES`].
pub(crate) fn check_size(n: &TrackingNumber) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(n).map_or(usize::MAX, |v| v.len());
    if bytes > MAX_NUMBER_BYTES {
        return Err(ApiError::invalid(
            "settings",
            format!("a number's settings take at most {MAX_NUMBER_BYTES} bytes as JSON (these take {bytes})"),
        ));
    }
    Ok(())
}

/// Whether the operator may add `adding` numbers (`api.max_numbers_per_operator`,
/// counted across the cluster in the store; requests in flight at once may pass the
/// count together, by at most their number).
pub(crate) async fn check_room(st: &ApiState, op: &str, adding: usize) -> Result<(), ApiError> {
    let cap = st.defences.max_numbers_per_operator;
    let o = op.to_string();
    let held = db(st, move |s| s.count_numbers(&o)).await?;
    if held.saturating_add(adding) > cap {
        return Err(ApiError::conflict(format!(
            "an operator holds at most {cap} numbers (api.max_numbers_per_operator); it holds {held}"
        )));
    }
    Ok(())
}

/// Destinations (1-10, ring 1-300 s) and the validity rule, shared with pools.
pub(crate) fn validate_forwarding(
    destinations: &[Destination],
    validity: &ValidityRule,
) -> Result<(), ApiError> {
    if destinations.is_empty() || destinations.len() > 10 {
        return Err(ApiError::invalid(
            "destinations",
            "needs 1 to 10 destinations",
        ));
    }
    for (i, d) in destinations.iter().enumerate() {
        if !is_phone_number(&d.number) {
            return Err(ApiError::invalid(
                &format!("destinations[{i}].number"),
                "must be 4 to 15 digits",
            ));
        }
        if !(1..=Destination::MAX_RING_SECONDS).contains(&d.ring_seconds) {
            return Err(ApiError::invalid(
                &format!("destinations[{i}].ring_seconds"),
                format!("must be 1 to {}", Destination::MAX_RING_SECONDS),
            ));
        }
    }
    validate_validity(validity)
}

/// The validity rule's bounds.
pub(crate) fn validate_validity(validity: &ValidityRule) -> Result<(), ApiError> {
    if validity.min_talk_seconds > 86_400 {
        return Err(ApiError::invalid(
            "validity.min_talk_seconds",
            "must be at most 86400",
        ));
    }
    if validity.duplicate_window_seconds > 366 * 86_400 {
        return Err(ApiError::invalid(
            "validity.duplicate_window_seconds",
            "must be at most a year",
        ));
    }
    Ok(())
}

/// The most tracking parameters may hold in all, keys and values (bytes). A page's
/// parameters are stored with every lease and copied into every call record and
/// webhook of it, and anyone may issue a page's lease: without a total, 50 keys of
/// 2,000 bytes would store 100 kB per request. A landing URL with a long query string
/// and a dozen attribution keys fit with room to spare.
const PARAMS_MAX_BYTES: usize = 8 * 1024;

/// Tracking parameters: at most 50 keys of 1-100 characters, values up to 2000, and
/// [`PARAMS_MAX_BYTES`] in all, no control characters nor line or paragraph
/// separators: a page's parameters (anyone's, through a pool's issue endpoint) are
/// written into notices as `{source}`, where a line break let a visitor add lines of
/// its own ("Caller: ...", "Call back on ...") to every e-mail about its call (a
/// review).
pub(crate) fn validate_params(
    field: &str,
    params: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    // A tab breaks no line (exports write it as a space), and search keywords may
    // carry one: kept.
    let breaks_lines = |t: &str| {
        t.chars()
            .any(|c| (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}')
    };
    if params
        .iter()
        .any(|(k, v)| breaks_lines(k) || breaks_lines(v))
    {
        return Err(ApiError::invalid(
            field,
            "keys and values must not contain control characters (but tabs) or line breaks",
        ));
    }
    let total = params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if params.len() > 50
        || total > PARAMS_MAX_BYTES
        || params
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 100 || v.len() > 2000)
    {
        return Err(ApiError::invalid(
            field,
            format!(
                "at most 50 keys of 1-100 characters with values up to 2000, {PARAMS_MAX_BYTES} bytes in all"
            ),
        ));
    }
    Ok(())
}

fn view(n: &TrackingNumber) -> Value {
    json!({
        "number": n.number,
        "advertiser_id": n.advertiser_id,
        "kind": n.kind,
        "destinations": n.destinations,
        "validity": n.validity,
        "caller_id": n.caller_id,
        "tracking_params": n.tracking_params,
        "pool_id": n.pool_id,
        "notify": n.notify,
        "ga4": n.ga4,
        "recording": n.recording,
        "schedule": n.schedule,
        "absent": n.absent,
        "queue": n.queue,
        "ivr": n.ivr,
        "judgement": n.judgement,
        "created_at": rfc3339(n.created_at),
        "updated_at": rfc3339(n.updated_at),
    })
}

fn not_found() -> ApiError {
    ApiError::not_found("no such number")
}

async fn check_advertiser(st: &ApiState, op: &str, adv: &str) -> Result<(), ApiError> {
    let (op, id) = (op.to_string(), adv.to_string());
    match db(st, move |s| s.get_advertiser(&op, &id)).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::invalid("advertiser_id", "no such advertiser")),
    }
}

/// Unknown parameters are refused (400): `?dryrun=true` created the number for real
/// (a review).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    /// `true`: every check of a creation, nothing written (200 with the number as it
    /// would be). `tsunagu numbers import` checks a whole file this way first.
    #[serde(default)]
    dry_run: bool,
}

pub async fn create(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    q: Result<Query<CreateQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(Some("dry_run"), e.body_text()))?;
    let input: NumberInput = parse_json(&body)?;
    let now = now_ms();
    let number = TrackingNumber {
        number: input.number,
        operator_id: op.clone(),
        advertiser_id: input.advertiser_id,
        kind: input.kind,
        destinations: input.destinations,
        validity: input.validity,
        caller_id: input.caller_id,
        tracking_params: input.tracking_params,
        pool_id: None,
        notify: input.notify,
        ga4: input.ga4,
        recording: input.recording,
        schedule: input.schedule,
        absent: input.absent,
        queue: input.queue,
        ivr: input.ivr,
        judgement: input.judgement,
        created_at: now,
        updated_at: now,
    };
    if number.kind != NumberKind::Static {
        return Err(ApiError::invalid(
            "kind",
            "numbers created here are `static`; pool numbers come with POST /v1/pools",
        ));
    }
    validate(&number)?;
    check_prompts(&st, &op, &number)?;
    crate::follow_up::validate(&st, &op, number.notify.as_ref(), number.ga4.as_ref()).await?;
    check_advertiser(&st, &op, &number.advertiser_id).await?;
    check_room(&st, &op, 1).await?;
    let n = number.clone();
    if q.dry_run {
        // The same conflict creating it would meet (a number is unique across
        // operators).
        // One whose settings cannot be read exists all the same.
        let taken = db(&st, move |s| match s.get_number(&n.number) {
            Err(tsunagu_store::StoreError::Corrupt(_)) => Ok(true),
            read => read.map(|found| found.is_some()),
        })
        .await?;
        if taken {
            let e = tsunagu_store::StoreError::Conflict(format!("number {}", number.number));
            return Err(e.into());
        }
        return Ok((StatusCode::OK, Json(view(&number))));
    }
    let num = number.number.clone();
    db_then(
        &st,
        move |s| s.create_number(&n),
        move |h, _| h.number_changed(&num),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(&number))))
}

/// Unknown parameters are refused (400): `?advertiser=...` listed every number.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    advertiser_id: Option<String>,
    /// The `next_cursor` of the page before (the last number it covered).
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Numbers per page: the default is the most, so an operator with fewer numbers gets
/// them all on one page as before paging (its 50,000 numbers, each up to 64 KiB,
/// were one body of up to 3 GiB: a review).
const PAGE_MAX: usize = 1000;

/// The operator's numbers in number order, a page at a time (`limit`, at most 1000,
/// and `cursor`: the page before's `next_cursor`, null on the last page). A few at
/// once, as JSON call searches (`api.max_searches`, `api.max_searches_per_operator`):
/// each reads the operator's index of numbers, and a loop of them from one key built
/// that many lists at once (a review).
pub async fn list(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    if q.limit == Some(0) {
        return Err(ApiError::bad_request(Some("limit"), "must be at least 1"));
    }
    let limit = q.limit.unwrap_or(PAGE_MAX).min(PAGE_MAX);
    let permit = crate::calls::start_search(&st, &op)?;
    let page = db(&st, move |s| {
        // Held by the read itself, whatever becomes of the request.
        let _permit = permit;
        s.list_numbers_page(&op, q.advertiser_id.as_deref(), q.cursor.as_deref(), limit)
    })
    .await?;
    Ok(Json(json!({
        "numbers": page.numbers.iter().map(view).collect::<Vec<_>>(),
        "next_cursor": page.next,
    })))
}

async fn owned(st: &ApiState, op: &str, number: &str) -> Result<TrackingNumber, ApiError> {
    let num = number.to_string();
    // A number whose stored settings this version cannot read (a newer node wrote
    // it during an upgrade): 409 saying what to do, not 500. Its owner cannot be
    // read either, so any operator gets it: that the number exists is no more than a
    // create of it tells (409 duplicate).
    let found = db_readable(st, format!("number {number}"), move |s| s.get_number(&num)).await?;
    found.filter(|n| n.operator_id == op).ok_or_else(not_found)
}

pub async fn get_one(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(number): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view(&owned(&st, &op, &number).await?)))
}

pub async fn update(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(number): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let patch: NumberPatch = parse_json(&body)?;
    if let Some(a) = &patch.advertiser_id {
        check_advertiser(&st, &op, a).await?;
    }
    let (st, op, number, patch) = (&st, &op, &number, &patch);
    let n = crate::patch_kept(&format!("number {number}"), not_found, || async move {
        let read = owned(st, op, number).await?;
        let n = patched(read.clone(), patch);
        validate(&n)?;
        check_prompts(st, op, &n)?;
        crate::follow_up::validate(st, op, n.notify.as_ref(), n.ga4.as_ref()).await?;
        let (saved, num) = (n.clone(), n.number.clone());
        let outcome = db_then(
            st,
            move |s| s.update_number(&saved, &read),
            move |h, outcome| {
                if *outcome == Update::Updated {
                    h.number_changed(&num)
                }
            },
        )
        .await?;
        Ok((outcome, n))
    })
    .await?;
    Ok(Json(view(&n)))
}

/// `n` with what `patch` sets.
fn patched(mut n: TrackingNumber, patch: &NumberPatch) -> TrackingNumber {
    if let Some(a) = &patch.advertiser_id {
        n.advertiser_id = a.clone();
    }
    if let Some(d) = &patch.destinations {
        n.destinations = d.clone();
    }
    if let Some(v) = &patch.validity {
        n.validity = *v;
    }
    if let Some(c) = &patch.caller_id {
        n.caller_id = *c;
    }
    if let Some(p) = &patch.tracking_params {
        n.tracking_params = p.clone();
    }
    if let Some(x) = &patch.notify {
        n.notify = x.clone();
    }
    if let Some(g) = &patch.ga4 {
        n.ga4 = g.clone();
    }
    if let Some(r) = &patch.recording {
        n.recording = r.clone();
    }
    if let Some(x) = &patch.schedule {
        n.schedule = x.clone();
    }
    if let Some(a) = patch.absent {
        n.absent = a;
    }
    if let Some(q) = &patch.queue {
        n.queue = q.clone();
    }
    if let Some(i) = &patch.ivr {
        n.ivr = i.clone();
    }
    if let Some(j) = &patch.judgement {
        n.judgement = j.clone();
    }
    n.updated_at = now_ms();
    n
}

pub async fn delete(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(number): Path<String>,
) -> Result<StatusCode, ApiError> {
    if let Some(pool) = owned(&st, &op, &number).await?.pool_id {
        return Err(ApiError::conflict(format!(
            "number {number} belongs to pool {pool}"
        )));
    }
    let (num, gone) = (number.clone(), number.clone());
    let deleted = db_then(
        &st,
        move |s| s.delete_number(&op, &num),
        move |h, deleted| {
            if *deleted {
                h.number_changed(&gone)
            }
        },
    );
    if !deleted.await? {
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A queue's longest wait (`field`, a number's queue or an advertiser's lines): 1 s to
/// [`tsunagu_store::LineLimit::MAX_WAIT_SECONDS`], which the SIP layer's transaction
/// limit for a caller's INVITE is sized to.
pub(crate) fn check_wait(field: &str, seconds: u32) -> Result<(), ApiError> {
    let most = tsunagu_store::LineLimit::MAX_WAIT_SECONDS;
    if !(1..=most).contains(&seconds) {
        return Err(ApiError::invalid(field, format!("must be 1 to {most}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::testing::{api, api_with};
    use axum::http::StatusCode;
    use tsunagu_store::Store;

    fn number(adv: &str, n: &str, extra: &str) -> String {
        format!(
            r#"{{"number": "{n}", "advertiser_id": "{adv}", "destinations": [{{"number": "0311112222"}}]{extra}}}"#
        )
    }

    /// What reaches notices and log lines as text holds no line break nor control
    /// character: tracking parameters (written into notices as `{source}`), a GA4
    /// measurement id (logged with every delivery), an e-mail address. Each row is
    /// refused 422 naming its field and creates nothing; the last one is fine.
    #[tokio::test]
    async fn text_that_would_break_lines_is_refused() {
        let a = api();
        let key = Some(a.key.as_str());
        let ga4 = |id: &str| format!(r#", "ga4": {{"measurement_id": "{id}", "api_secret": "s"}}"#);
        let rows: &[(String, Option<&str>)] = &[
            (
                r#", "tracking_params": {"keyword": "x\nResult: answered"}"#.into(),
                Some("tracking_params"),
            ),
            (
                r#", "tracking_params": {"k\u001b[31m": "x"}"#.into(),
                Some("tracking_params"),
            ),
            (
                r#", "tracking_params": {"k": "a\u2028b"}"#.into(),
                Some("tracking_params"),
            ),
            (ga4(r"G-1\nWARN forged"), Some("ga4.measurement_id")),
            (ga4("G-1 x"), Some("ga4.measurement_id")),
            (
                r#", "notify": {"email_to": ["a\u001b]0;x\u0007@example.com"]}"#.into(),
                Some("notify.email_to[0]"),
            ),
            (
                format!(
                    r#", "tracking_params": {{"keyword": "shoes"}}{}"#,
                    ga4("G-ABC123")
                ),
                None,
            ),
            // A tab breaks no line; spaces around an id (a copy and paste) are not
            // refused (the rule before took them, and a PATCH re-checks the number).
            (
                format!(
                    r#", "tracking_params": {{"keyword": "red\tshoes"}}{}"#,
                    ga4(" G-ABC123 ")
                ),
                None,
            ),
        ];
        for (i, (extra, refused)) in rows.iter().enumerate() {
            let n = format!("05010000{i:02}");
            let r = a
                .send(
                    "POST",
                    "/v1/numbers",
                    key,
                    &number(&a.advertiser, &n, extra),
                )
                .await;
            match refused {
                Some(field) => {
                    assert_eq!(
                        r.status,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "{extra}: {}",
                        r.text()
                    );
                    assert_eq!(r.json()["error"]["field"], *field, "{extra}: {}", r.text());
                    assert!(a.store.get_number(&n).unwrap().is_none());
                }
                None => assert_eq!(r.status, StatusCode::CREATED, "{extra}: {}", r.text()),
            }
        }
    }

    /// A body past a route's limit (2 MiB here) is refused 413 in JSON, as every other
    /// refusal (the framework's own answer was plain text).
    #[tokio::test]
    async fn a_body_past_the_limit_is_refused_in_json() {
        let a = api();
        let huge = format!(r#"{{"number": "{}"}}"#, "0".repeat(3 << 20));
        let r = a.send("POST", "/v1/numbers", Some(&a.key), &huge).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "too_large", "{}", r.text());
    }

    /// The framework's own refusals are JSON too: a method the path does not take
    /// (with its `Allow`), a body of the wrong type for a prompt.
    #[tokio::test]
    async fn every_refusal_is_json() {
        let a = api();
        let r = a.send("DELETE", "/v1/numbers", Some(&a.key), "").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            r.json()["error"]["code"],
            "method_not_allowed",
            "{}",
            r.text()
        );
        assert!(r.headers.contains_key("allow"), "{:?}", r.headers);
        let r = a.send("GET", "/readyz", None, "").await;
        assert_eq!(r.text(), "ready\n", "not an error: left as it is");
    }

    /// A change whose request is dropped while the store is busy (its client gone, its
    /// request timed out) still reaches the node once written: the write and its
    /// announcement are one job (the write used to commit and the announcement, left
    /// to the dropped handler, never came: no node learnt of it until a restart).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_whose_request_is_dropped_is_still_announced() {
        let a = api();
        let r = a
            .send(
                "POST",
                "/v1/numbers",
                Some(&a.key),
                &number(&a.advertiser, "0501000001", ""),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        assert_eq!(a.announced.count(), 1);
        // Another writer holds the store (as another node, or the call-log writer).
        let lock = rusqlite::Connection::open(a._dir.path().join("t.db")).unwrap();
        lock.execute_batch("BEGIN IMMEDIATE").unwrap();
        let patch = r#"{"destinations": [{"number": "0322223333"}]}"#;
        let dropped = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            a.send("PATCH", "/v1/numbers/0501000001", Some(&a.key), patch),
        )
        .await;
        assert!(dropped.is_err(), "the request waited for the store");
        lock.execute_batch("COMMIT").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while a.announced.count() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the change was never announced"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let stored = a.store.get_number("0501000001").unwrap().unwrap();
        assert_eq!(stored.destinations[0].number, "0322223333");
    }

    /// Two PATCHes of one number at once, through two nodes of one store, each
    /// setting another field: both changes stay (a live torture run lost one of the
    /// two in 35 of 40 rounds: each wrote back the whole number as it had read it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_of_a_number_are_both_kept() {
        let a = api();
        let key = Some(a.key.as_str());
        let r = a
            .send(
                "POST",
                "/v1/numbers",
                key,
                &number(&a.advertiser, "0501000001", ""),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        a.both_patches_kept(
            "/v1/numbers/0501000001",
            r#"{"absent": false, "destinations": [{"number": "0311112222"}]}"#,
            |_| r#"{"absent": true}"#.to_string(),
            |round| format!(r#"{{"destinations": [{{"number": "03222{round:05}"}}]}}"#),
            |round, now| {
                assert_eq!(now["absent"], true, "round {round}: {now}");
                assert_eq!(
                    now["destinations"][0]["number"],
                    format!("03222{round:05}"),
                    "round {round}: {now}"
                );
            },
        )
        .await;
    }

    /// Unknown query parameters are refused and change nothing: `?dryrun=true` (for
    /// `dry_run`) created the number, `?advertiser=` listed every number (a review).
    #[tokio::test]
    async fn unknown_query_parameters_are_refused() {
        let a = api();
        let key = Some(a.key.as_str());
        let body = number(&a.advertiser, "0501000001", "");
        let r = a.send("POST", "/v1/numbers?dryrun=true", key, &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert_eq!(a.store.count_numbers(&a.operator).unwrap(), 0);
        let r = a.send("GET", "/v1/numbers?advertiser=x", key, "").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    }

    /// Number lists run a few at once, sharing call searches' places
    /// (`api.max_searches_per_operator`): one past the operator's share is refused 503
    /// at once; they ran without a bound (a review).
    #[tokio::test]
    async fn number_lists_run_a_few_at_once() {
        let config = tsunagu_config::ApiConfig {
            max_searches: 3,
            max_searches_per_operator: 1,
            ..Default::default()
        };
        let a = api_with(&config, |_| {});
        let running = a.state.defences.searches.try_start(&a.operator).unwrap();
        let refused = a.get("/v1/numbers").await;
        assert_eq!(
            refused.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            refused.text()
        );
        drop(running);
        let listed = a.get("/v1/numbers").await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.text());
    }

    /// Numbers come a page at a time in number order: `limit` and the page before's
    /// `next_cursor` walk them all once, the last page's cursor is null, a zero
    /// limit is refused; without a limit a page holds up to 1000 (the whole list came
    /// in one body).
    #[tokio::test]
    async fn numbers_are_listed_a_page_at_a_time() {
        let a = api();
        let key = Some(a.key.as_str());
        let all = ["0501000001", "0501000002", "0501000003"];
        for n in all.iter().rev() {
            let r = a
                .send("POST", "/v1/numbers", key, &number(&a.advertiser, n, ""))
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        }
        let numbers = |page: &serde_json::Value| -> Vec<String> {
            let listed = page["numbers"].as_array().unwrap();
            listed
                .iter()
                .map(|n| n["number"].as_str().unwrap().to_string())
                .collect()
        };
        let first = a.get("/v1/numbers?limit=2").await.json();
        assert_eq!(numbers(&first), all[..2]);
        let cursor = first["next_cursor"].as_str().expect("a cursor").to_string();
        let second = a
            .get(&format!("/v1/numbers?limit=2&cursor={cursor}"))
            .await
            .json();
        assert_eq!(numbers(&second), all[2..]);
        assert!(second["next_cursor"].is_null(), "{second}");
        let whole = a.get("/v1/numbers").await.json();
        assert_eq!(numbers(&whole), all);
        assert!(whole["next_cursor"].is_null());
        let r = a.get("/v1/numbers?limit=0").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    }

    /// An operator's numbers (its own and its pools') and advertisers are capped: the
    /// request past the cap is refused 409 (a dry run too) and creates nothing.
    #[tokio::test]
    async fn an_operators_numbers_and_advertisers_are_capped() {
        let a = api_with(&Default::default(), |d| {
            d.max_numbers_per_operator = 3;
            d.max_advertisers_per_operator = 2;
        });
        let key = Some(a.key.as_str());
        for n in ["0501000001", "0501000002"] {
            let r = a
                .send("POST", "/v1/numbers", key, &number(&a.advertiser, n, ""))
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        }
        // A pool of two would make four.
        let pool = format!(
            r#"{{"advertiser_id": "{}", "mode": "one_time", "numbers": ["0502000001", "0502000002"], "hold_seconds": 60, "destinations": [{{"number": "0311112222"}}]}}"#,
            a.advertiser
        );
        let over = a.send("POST", "/v1/pools", key, &pool).await;
        assert_eq!(over.status, StatusCode::CONFLICT, "{}", over.text());
        assert!(over.text().contains("at most 3 numbers"), "{}", over.text());
        let third = number(&a.advertiser, "0501000003", "");
        let dry = a
            .send("POST", "/v1/numbers?dry_run=true", key, &third)
            .await;
        assert_eq!(dry.status, StatusCode::OK, "{}", dry.text());
        let r = a.send("POST", "/v1/numbers", key, &third).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let fourth = number(&a.advertiser, "0501000004", "");
        for path in ["/v1/numbers?dry_run=true", "/v1/numbers"] {
            let r = a.send("POST", path, key, &fourth).await;
            assert_eq!(r.status, StatusCode::CONFLICT, "{path}: {}", r.text());
        }
        assert_eq!(a.store.count_numbers(&a.operator).unwrap(), 3);
        assert!(a.store.get_number("0502000001").unwrap().is_none());
        // One advertiser exists (the test's); a second fits, a third does not.
        let adv = |name: &str| format!(r#"{{"name": "{name}"}}"#);
        let r = a.send("POST", "/v1/advertisers", key, &adv("second")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let r = a.send("POST", "/v1/advertisers", key, &adv("third")).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
        assert_eq!(a.store.list_advertisers(&a.operator).unwrap().len(), 2);
    }

    /// A number whose settings would take more than 64 KiB is refused, however each
    /// field stays within its own cap (here: 400 schedule exceptions of six spans).
    #[tokio::test]
    async fn a_numbers_settings_are_capped_in_bytes() {
        let a = api();
        let spans: Vec<String> = (0..6)
            .map(|h| {
                format!(
                    r#"{{"start": "{:02}:00", "end": "{:02}:30"}}"#,
                    h * 2,
                    h * 2
                )
            })
            .collect();
        let exceptions: Vec<String> = (0..400)
            .map(|i| {
                format!(
                    r#"{{"date": "2027-{:02}-{:02}", "hours": [{}]}}"#,
                    i / 28 + 1,
                    i % 28 + 1,
                    spans.join(", ")
                )
            })
            .collect();
        let schedule = format!(
            r#", "schedule": {{"time_zone": "Asia/Tokyo", "exceptions": [{}]}}"#,
            exceptions.join(", ")
        );
        let body = number(&a.advertiser, "0501000009", &schedule);
        let r = a.send("POST", "/v1/numbers", Some(&a.key), &body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
        assert_eq!(r.json()["error"]["field"], "settings", "{}", r.text());
        assert!(a.store.get_number("0501000009").unwrap().is_none());
        // A tenth of it is fine.
        let small = schedule
            .replace(&exceptions[40..].join(", "), "")
            .replacen(", ]", "]", 1);
        let body = number(&a.advertiser, "0501000009", &small);
        let r = a.send("POST", "/v1/numbers", Some(&a.key), &body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }

    /// A callback pool's numbers have no destinations: their other settings change
    /// like any number's, and destinations cannot be given to them.
    #[tokio::test]
    async fn a_callback_pools_numbers_can_be_changed() {
        let a = api();
        let pool = format!(
            r#"{{"advertiser_id": "{}", "mode": "callback", "numbers": ["0120000001"], "hold_seconds": 86400}}"#,
            a.advertiser
        );
        // Its validity is checked as a number's is (it was not, at creation).
        let out_of_range = pool.replace(
            r#""hold_seconds": 86400"#,
            r#""hold_seconds": 86400, "validity": {"min_talk_seconds": 90000}"#,
        );
        let refused = a
            .send("POST", "/v1/pools", Some(&a.key), &out_of_range)
            .await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            refused.text()
        );
        let made = a.send("POST", "/v1/pools", Some(&a.key), &pool).await;
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.text());
        let patch =
            |body: &'static str| a.send("PATCH", "/v1/numbers/0120000001", Some(&a.key), body);
        let absent = patch(r#"{"absent": true}"#).await;
        assert_eq!(absent.status, StatusCode::OK, "{}", absent.text());
        assert_eq!(absent.json()["absent"], true, "{}", absent.text());
        let forward = patch(r#"{"destinations": [{"number": "0311112222"}]}"#).await;
        assert_eq!(
            forward.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            forward.text()
        );
        assert_eq!(forward.json()["error"]["field"], "destinations");
        let validity = patch(r#"{"validity": {"min_talk_seconds": 90000}}"#).await;
        assert_eq!(
            validity.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            validity.text()
        );
        let stored = a
            .send("GET", "/v1/numbers/0120000001", Some(&a.key), "")
            .await
            .json();
        assert_eq!(stored["destinations"], serde_json::json!([]), "{stored}");
        assert_eq!(stored["absent"], true, "{stored}");
    }
}
