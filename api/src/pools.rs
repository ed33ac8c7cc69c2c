//! `/v1/pools` (operator key): number pools for dynamic (動的) and one-time (ワンタイム)
//! issuance. `POST /v1/pools/{id}/issue` leases a number to a page visitor with its
//! tracking parameters; a call to it while the lease lives carries them into the call
//! log. Leases are compare-and-set in the store: no number is held twice.
//!
//! A page issues without a secret (it only names an `Origin`, which any script can
//! send), so page issues are rate-limited per client address and per pool (429 with
//! `Retry-After`), and every issue naming a session is capped at
//! `api.issue.max_leases_per_session` live leases of the pool. Metrics carry a pool's
//! id only for pools listed in `api.pool_metrics` (others count as `other`).

use crate::auth::OperatorId;
use crate::client::client_ip;
use crate::error::parse_json;
use crate::follow_up::present;
use crate::limit::{address_key, Limit};
use crate::metrics::LimitLabel;
use crate::numbers::{is_phone_number, validate_forwarding, validate_params, validate_validity};
use crate::{db, db_readable, db_then, now_ms, rfc3339, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::Json;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tsunagu_store::{
    CallerIdMode, Destination, Ga4, IssueOutcome, LeaseCaps, Notify, NumberKind, Pool, PoolMode,
    RecordingSettings, TrackingNumber, ValidityRule,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

/// The `pool` label of a pool: its id if `api.pool_metrics` lists it, else `other` (so
/// no label grows with the pools operators create).
fn pool_label(st: &ApiState, pool_id: &str) -> PoolLabel {
    let listed = st.defences.pool_labels.contains(pool_id);
    PoolLabel {
        pool: if listed { pool_id } else { "other" }.to_string(),
    }
}

/// Gauges of one pool make sense only under its own label.
fn own_label(st: &ApiState, pool_id: &str) -> Option<PoolLabel> {
    st.defences
        .pool_labels
        .contains(pool_id)
        .then(|| PoolLabel {
            pool: pool_id.to_string(),
        })
}

/// Issuance metrics.
#[derive(Clone)]
pub struct PoolMetrics {
    pub issued: Family<PoolLabel, Counter>,
    pub overflows: Family<PoolLabel, Counter>,
    pub leased: Family<PoolLabel, Gauge>,
    pub size: Family<PoolLabel, Gauge>,
    pub issue_seconds: Histogram,
}

impl Default for PoolMetrics {
    fn default() -> Self {
        PoolMetrics {
            issued: Family::default(),
            overflows: Family::default(),
            leased: Family::default(),
            size: Family::default(),
            issue_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        }
    }
}

impl PoolMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "pool_issued",
            "Numbers issued from a pool (new leases and extensions); pool=\"other\" for pools not listed in api.pool_metrics",
            self.issued.clone(),
        );
        r.register(
            "pool_overflows",
            "Issue requests answered with the overflow number because the pool was exhausted",
            self.overflows.clone(),
        );
        r.register(
            "pool_leased",
            "Numbers of a pool under a live lease, as of its last issue request (pools listed in api.pool_metrics)",
            self.leased.clone(),
        );
        r.register(
            "pool_size",
            "Numbers in a pool (pools listed in api.pool_metrics)",
            self.size.clone(),
        );
        r.register(
            "pool_issue_seconds",
            "Latency of issue requests (store compare-and-set included)",
            self.issue_seconds.clone(),
        );
    }
}

fn default_hold() -> u32 {
    1800
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolInput {
    advertiser_id: String,
    mode: PoolMode,
    numbers: Vec<String>,
    #[serde(default = "default_hold")]
    hold_seconds: u32,
    #[serde(default)]
    recycle_seconds: u32,
    #[serde(default)]
    overflow_number: Option<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    /// Not used by `callback` pools: their calls go to the caller the lease names.
    #[serde(default)]
    destinations: Vec<Destination>,
    #[serde(default)]
    validity: ValidityRule,
    #[serde(default)]
    caller_id: CallerIdMode,
    #[serde(default)]
    notify: Option<Notify>,
    #[serde(default)]
    ga4: Option<Ga4>,
    #[serde(default)]
    recording: Option<RecordingSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolPatch {
    hold_seconds: Option<u32>,
    recycle_seconds: Option<u32>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "present")]
    overflow_number: Option<Option<String>>,
    allowed_origins: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IssueInput {
    #[serde(default)]
    params: BTreeMap<String, String>,
}

const WEEK: u32 = 7 * 86_400;

/// Whether `n` may be shown as operator `op`'s overflow number: not a tracking number,
/// or one of `op`'s. One whose settings cannot be read cannot be checked (its owner is
/// in them): not usable, as another operator's would be, which tells no operator more
/// than that (it was 500).
async fn overflow_usable(st: &Arc<ApiState>, op: &str, n: &str) -> Result<bool, ApiError> {
    let (op, n) = (op.to_string(), n.to_string());
    db(st, move |s| match s.get_number(&n) {
        Err(tsunagu_store::StoreError::Corrupt(_)) => Ok(false),
        read => read.map(|found| found.is_none_or(|tracked| tracked.operator_id == op)),
    })
    .await
}

/// An overflow number that is a tracking number must be the operator's own: another
/// operator's would be shown on this one's pages, its calls measured and logged for
/// that other operator (a live torture run set another operator's pool number).
async fn check_overflow(
    st: &Arc<ApiState>,
    op: &str,
    overflow: Option<&str>,
) -> Result<(), ApiError> {
    let Some(n) = overflow else {
        return Ok(());
    };
    if overflow_usable(st, op, n).await? {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "overflow_number",
            "is a tracking number this operator may not use",
        ))
    }
}

fn validate_settings(p: &Pool) -> Result<(), ApiError> {
    let (hold, recycle, overflow) = (p.hold_seconds, p.recycle_seconds, &p.overflow_number);
    if !(1..=WEEK).contains(&hold) {
        return Err(ApiError::invalid("hold_seconds", "must be 1 to 604800"));
    }
    if recycle > WEEK {
        return Err(ApiError::invalid(
            "recycle_seconds",
            "must be at most 604800",
        ));
    }
    if overflow.as_deref().is_some_and(|n| !is_phone_number(n)) {
        return Err(ApiError::invalid(
            "overflow_number",
            "must be 4 to 15 digits",
        ));
    }
    if p.mode == PoolMode::Callback && (overflow.is_some() || !p.allowed_origins.is_empty()) {
        return Err(ApiError::invalid(
            "mode",
            "a callback pool is issued by missed calls only: no overflow_number nor allowed_origins",
        ));
    }
    if p.allowed_origins.len() > 20 {
        return Err(ApiError::invalid("allowed_origins", "at most 20 origins"));
    }
    if !p.allowed_origins.is_empty() && p.mode != PoolMode::OneTime && hold < PAGE_HOLD_MIN {
        // The page tag renews at half the lease, at least 15 s apart: a shorter
        // lease ran out first, and the number on the page changed (a review).
        return Err(ApiError::invalid(
            "hold_seconds",
            "at least 30 for a dynamic pool web pages issue from (allowed_origins)",
        ));
    }
    for (i, o) in p.allowed_origins.iter().enumerate() {
        if o != "*" && !is_origin(o) {
            return Err(ApiError::invalid(
                &format!("allowed_origins[{i}]"),
                "must be `*` or an origin as browsers send it, such as https://www.example.com: lower case, no default port, at most 300 bytes",
            ));
        }
    }
    Ok(())
}

/// The shortest lease of a pool web pages issue from: twice the page tag's shortest
/// renewal interval (15 s).
const PAGE_HOLD_MIN: u32 = 30;

/// The longest origin taken: `https://`, a 253-byte host name, `:` and a port, with
/// room to spare. Every page issue reads the pool's origins: unbounded, twenty of them
/// could each be as long as the request body allowed.
const MAX_ORIGIN_BYTES: usize = 300;

/// `scheme://host[:port]` with nothing after it, as browsers send it as `Origin`:
/// lower case, no default port (`:443` for https, `:80` for http); at most
/// [`MAX_ORIGIN_BYTES`]. Origins are matched exactly, so `https://WWW.Example.com` or
/// `https://x.com:443`, taken before, never matched, and the pool quietly answered
/// its own pages 404 (a review).
fn is_origin(o: &str) -> bool {
    if o.len() > MAX_ORIGIN_BYTES {
        return false;
    }
    let (rest, default_port) = match (o.strip_prefix("https://"), o.strip_prefix("http://")) {
        (Some(r), _) => (r, ":443"),
        (_, Some(r)) => (r, ":80"),
        _ => return false,
    };
    !rest.is_empty()
        && !rest.ends_with(default_port)
        && rest.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':' | '[' | ']')
        })
}

fn view(p: &Pool) -> Value {
    json!({
        "id": p.id,
        "advertiser_id": p.advertiser_id,
        "mode": p.mode,
        "numbers": p.numbers,
        "hold_seconds": p.hold_seconds,
        "recycle_seconds": p.recycle_seconds,
        "overflow_number": p.overflow_number,
        "allowed_origins": p.allowed_origins,
        "created_at": rfc3339(p.created_at),
    })
}

fn not_found() -> ApiError {
    ApiError::not_found("no such pool")
}

pub async fn create(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let input: PoolInput = parse_json(&body)?;
    if input.numbers.is_empty() || input.numbers.len() > 1000 {
        return Err(ApiError::invalid("numbers", "needs 1 to 1000 numbers"));
    }
    let mut seen = HashSet::new();
    for (i, n) in input.numbers.iter().enumerate() {
        if !is_phone_number(n) || !seen.insert(n) {
            return Err(ApiError::invalid(
                &format!("numbers[{i}]"),
                "must be 4 to 15 digits and listed once",
            ));
        }
    }
    let now = now_ms();
    let pool = Pool {
        id: tsunagu_store::new_id("pool"),
        operator_id: op.clone(),
        advertiser_id: input.advertiser_id.clone(),
        mode: input.mode,
        numbers: input.numbers.clone(),
        hold_seconds: input.hold_seconds,
        recycle_seconds: input.recycle_seconds,
        overflow_number: input.overflow_number,
        allowed_origins: input.allowed_origins.iter().map(|o| as_sent(o)).collect(),
        created_at: now,
    };
    validate_settings(&pool)?;
    check_overflow(&st, &op, pool.overflow_number.as_deref()).await?;
    let kind = if pool.mode == PoolMode::Callback {
        if !input.destinations.is_empty() {
            return Err(ApiError::invalid(
                "destinations",
                "a callback pool's calls go to the caller they call back: leave it out",
            ));
        }
        // Checked as a callback number's own validity is on a PATCH (it was not here).
        validate_validity(&input.validity)?;
        NumberKind::Callback
    } else {
        validate_forwarding(&input.destinations, &input.validity)?;
        NumberKind::Pool
    };
    crate::follow_up::validate(&st, &op, input.notify.as_ref(), input.ga4.as_ref()).await?;
    let (o, a) = (op.clone(), input.advertiser_id.clone());
    if db(&st, move |s| s.get_advertiser(&o, &a)).await?.is_none() {
        return Err(ApiError::invalid("advertiser_id", "no such advertiser"));
    }
    let records: Vec<TrackingNumber> = input
        .numbers
        .iter()
        .map(|n| TrackingNumber {
            number: n.clone(),
            operator_id: op.clone(),
            advertiser_id: input.advertiser_id.clone(),
            kind,
            destinations: input.destinations.clone(),
            validity: input.validity,
            caller_id: input.caller_id,
            tracking_params: BTreeMap::new(),
            pool_id: Some(pool.id.clone()),
            notify: input.notify.clone(),
            ga4: input.ga4.clone(),
            recording: input.recording.clone(),
            schedule: None,
            absent: false,
            queue: None,
            ivr: None,
            judgement: None,
            created_at: now,
            updated_at: now,
        })
        .collect();
    // A recording notice that does not exist would record callers without it. The
    // records differ only in their number: the first's size is every one's.
    if let Some(first) = records.first() {
        crate::numbers::check_prompts(&st, &op, first)?;
        crate::numbers::check_size(first)?;
    }
    crate::numbers::check_room(&st, &op, records.len()).await?;
    let p = pool.clone();
    let numbers = pool.numbers.clone();
    let created = move |h: &dyn crate::NodeHooks, _: &_| {
        for n in &numbers {
            h.number_changed(n);
        }
    };
    db_then(&st, move |s| s.create_pool(&p, &records), created).await?;
    if let Some(label) = own_label(&st, &pool.id) {
        st.pool_metrics
            .size
            .get_or_create(&label)
            .set(i64::try_from(pool.numbers.len()).unwrap_or(i64::MAX));
    }
    Ok((StatusCode::CREATED, Json(view(&pool))))
}

pub async fn list(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
) -> Result<Json<Value>, ApiError> {
    let pools = db(&st, move |s| s.list_pools(&op)).await?;
    Ok(Json(
        json!({"pools": pools.iter().map(view).collect::<Vec<_>>()}),
    ))
}

pub async fn get_one(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let pool = db_readable(&st, format!("pool {id}"), move |s| s.get_pool(&op, &id))
        .await?
        .ok_or_else(not_found)?;
    let pid = pool.id.clone();
    let leased = db(&st, move |s| s.leased_count(&pid, now_ms())).await?;
    let mut v = view(&pool);
    v["leased"] = json!(leased);
    Ok(Json(v))
}

pub async fn update(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let patch: PoolPatch = parse_json(&body)?;
    if let Some(overflow) = &patch.overflow_number {
        // A store read only when the change names one; what it checks is the
        // patch's, the same on every try below.
        check_overflow(&st, &op, overflow.as_deref()).await?;
    }
    let (st, op, id, patch) = (&st, &op, &id, &patch);
    let pool = crate::patch_kept(&format!("pool {id}"), not_found, || async move {
        let (owner, pool_id) = (op.clone(), id.clone());
        let read = db_readable(st, format!("pool {id}"), move |s| {
            s.get_pool(&owner, &pool_id)
        })
        .await?
        .ok_or_else(not_found)?;
        let pool = patched(read.clone(), patch);
        validate_settings(&pool)?;
        let saved = pool.clone();
        let outcome = db(st, move |s| s.update_pool(&saved, &read)).await?;
        Ok((outcome, pool))
    })
    .await?;
    Ok(Json(view(&pool)))
}

/// `pool` with what `patch` sets.
fn patched(mut pool: Pool, patch: &PoolPatch) -> Pool {
    if let Some(h) = patch.hold_seconds {
        pool.hold_seconds = h;
    }
    if let Some(r) = patch.recycle_seconds {
        pool.recycle_seconds = r;
    }
    if let Some(o) = &patch.overflow_number {
        pool.overflow_number = o.clone();
    }
    if let Some(o) = &patch.allowed_origins {
        pool.allowed_origins = o.clone();
    }
    // Stored before origins were written as sent (a change of anything else must
    // not be refused for them).
    pool.allowed_origins = pool.allowed_origins.iter().map(|o| as_sent(o)).collect();
    pool
}

/// Who asks for a number: an operator's API key (server-side issuance), or a web
/// page whose `Origin` the pool allows (the page tag; no secret in the page).
enum Issuer {
    Operator(String),
    Page(String),
}

async fn issuer(st: &Arc<ApiState>, parts: &mut Parts) -> Result<Issuer, ApiError> {
    if parts.headers.contains_key(header::AUTHORIZATION) {
        let OperatorId(op) = OperatorId::from_request_parts(parts, st).await?;
        return Ok(Issuer::Operator(op));
    }
    match parts
        .headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    {
        Some(origin) => Ok(Issuer::Page(origin.to_string())),
        None => Err(ApiError::unauthorized(
            "missing Authorization: Bearer token (or an Origin the pool allows)",
        )),
    }
}

/// The pool, if this issuer may issue from it. A page learns nothing about pools that
/// do not allow its origin (404, as for a pool that does not exist).
async fn pool_for(st: &Arc<ApiState>, who: &Issuer, id: String) -> Result<Pool, ApiError> {
    let pool = match who {
        Issuer::Operator(op) => {
            let op = op.clone();
            db_readable(st, format!("pool {id}"), move |s| s.get_pool(&op, &id)).await?
        }
        // A page learns nothing of a pool it cannot be shown to allow: one whose
        // settings cannot be read is a 404 to it (logged), as one that does not exist.
        Issuer::Page(origin) => db(st, move |s| match s.pool_by_id(&id) {
            Err(tsunagu_store::StoreError::Corrupt(e)) => {
                tracing::warn!(pool = %id, error = %e, "stored settings cannot be read");
                Ok(None)
            }
            read => read,
        })
        .await?
        .filter(|p| allows(p, origin)),
    };
    let pool = pool.ok_or_else(not_found)?;
    if pool.mode == PoolMode::Callback {
        return Err(ApiError::conflict(
            "a callback pool's numbers are issued by missed calls, not on request",
        ));
    }
    Ok(pool)
}

fn allows(p: &Pool, origin: &str) -> bool {
    p.allowed_origins
        .iter()
        .any(|o| o == "*" || o == origin || as_sent(o) == origin)
}

/// An origin as browsers send it: lower case, without the scheme's default port
/// (`https://WWW.Example.com:443` is sent as `https://www.example.com`). Written so
/// at creation and change, and compared so for a pool stored before.
fn as_sent(o: &str) -> String {
    let o = o.to_ascii_lowercase();
    let default = if o.starts_with("https://") {
        ":443"
    } else {
        ":80"
    };
    match o.strip_suffix(default) {
        Some(bare) if o.starts_with("http") => bare.to_string(),
        _ => o,
    }
}

/// CORS headers for a page's request (none for server-side callers).
fn cors(who: &Issuer) -> Vec<(header::HeaderName, HeaderValue)> {
    match who {
        Issuer::Operator(_) => Vec::new(),
        Issuer::Page(origin) => match HeaderValue::from_str(origin) {
            Ok(v) => vec![
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, v),
                (header::VARY, HeaderValue::from_static("Origin")),
            ],
            Err(_) => Vec::new(),
        },
    }
}

/// The most body bytes an issue request may bring (its parameters take at most 8 KiB
/// of text; JSON escapes can double it).
pub const ISSUE_BODY_LIMIT: usize = 64 * 1024;

/// The CORS preflight a browser sends before a page's issue request.
pub async fn issue_preflight(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _) = req.into_parts();
    let who = match issuer(&st, &mut parts).await? {
        Issuer::Page(origin) => Issuer::Page(origin),
        Issuer::Operator(_) => return Ok(StatusCode::NO_CONTENT.into_response()),
    };
    // A token of the address's preflight bucket (the issue's rate, a bucket of its
    // own) before the store is asked: preflights cost a store read each and were not
    // limited (a review). A browser keeps a preflight's answer for 10 minutes
    // (`Access-Control-Max-Age`).
    let client = client_ip(&parts, &st.defences.trusted_proxies);
    if let Err(secs) = st.defences.issue.take_preflight(client, now_ms()) {
        return Err(throttled(&st, Limit::Address, secs));
    }
    pool_for(&st, &who, id).await?;
    let mut headers = cors(&who);
    headers.push((
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    ));
    headers.push((
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    ));
    headers.push((
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    ));
    Ok((StatusCode::NO_CONTENT, AppendHeaders(headers)).into_response())
}

/// A 429 for an issue request over `limit`, counted.
fn throttled(st: &ApiState, limit: Limit, retry_after: u64) -> ApiError {
    st.defences
        .metrics
        .issue_throttled
        .get_or_create(&LimitLabel {
            limit: limit.as_str(),
        })
        .inc();
    let what = match limit {
        Limit::Address => "too many issue requests from this address",
        Limit::Pool => "too many issue requests for this pool",
        Limit::Session => "this session already holds as many numbers as it may",
        Limit::AddressLeases => "this address already holds as many numbers of the pool as it may",
    };
    ApiError::too_many_requests(retry_after, what)
}

pub async fn issue(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let who = issuer(&st, &mut parts).await?;
    let mut headers = cors(&who);
    let client = if matches!(who, Issuer::Page(_)) {
        // A page's script may read Retry-After only if it is exposed.
        headers.push((
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        ));
        // Before the body is read or the store asked: a loop costs next to nothing.
        let client = client_ip(&parts, &st.defences.trusted_proxies);
        if let Err(secs) = st.defences.issue.take_address(client, now_ms()) {
            let e = throttled(&st, Limit::Address, secs);
            return Ok((AppendHeaders(headers), e).into_response());
        }
        Some(client)
    } else {
        // A server with the operator's key leases for its own visitors: no client cap.
        None
    };
    let headers = AppendHeaders(headers);
    let body = axum::body::to_bytes(body, ISSUE_BODY_LIMIT)
        .await
        .map_err(|e| {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                ApiError::too_large(format!(
                    "an issue request's body is at most {ISSUE_BODY_LIMIT} bytes"
                ))
            } else {
                ApiError::bad_request(None, "the body could not be read")
            }
        })?;
    match issue_number(&st, &who, client, id, &body).await {
        Ok(v) => Ok((headers, Json(v)).into_response()),
        Err(e) => Ok((headers, e).into_response()),
    }
}

/// Whole seconds from `now` until `at_ms` (at least one): a `Retry-After`.
fn seconds_until(at_ms: i64, now: i64) -> u64 {
    let wait_ms = at_ms.saturating_sub(now).max(0);
    u64::try_from(wait_ms.saturating_add(999) / 1000)
        .unwrap_or(1)
        .max(1)
}

async fn issue_number(
    st: &Arc<ApiState>,
    who: &Issuer,
    client: Option<std::net::IpAddr>,
    id: String,
    body: &[u8],
) -> Result<Value, ApiError> {
    let started = Instant::now();
    let input: IssueInput = if body.is_empty() {
        IssueInput::default()
    } else {
        parse_json(body)?
    };
    validate_params("params", &input.params)?;
    let pool = pool_for(st, who, id).await?;
    if matches!(who, Issuer::Page(_)) {
        if let Err(secs) = st.defences.issue.take_pool(&pool.id, now_ms()) {
            return Err(throttled(st, Limit::Pool, secs));
        }
    }
    let label = pool_label(st, &pool.id);
    // Only a request naming the session of a live lease extends it (dynamic mode).
    let session = visitor_session(&input.params);
    let now = now_ms();
    let p = pool.clone();
    let limits = &st.defences.issue;
    let (per_session, per_address) = (limits.max_leases_per_session, limits.max_leases_per_address);
    let client = client.map(|ip| address_key(ip).to_string());
    let (outcome, leased) = db(st, move |s| {
        let caps = LeaseCaps {
            per_session: Some(per_session),
            client: client.as_deref().map(|c| (c, per_address)),
        };
        let outcome = s.issue_lease_capped(&p, session.as_deref(), &input.params, now, caps)?;
        Ok((outcome, s.leased_count(&p.id, now)?))
    })
    .await?;
    let m = &st.pool_metrics;
    if let Some(own) = own_label(st, &pool.id) {
        m.leased
            .get_or_create(&own)
            .set(i64::try_from(leased).unwrap_or(i64::MAX));
        m.size
            .get_or_create(&own)
            .set(i64::try_from(pool.numbers.len()).unwrap_or(i64::MAX));
    }
    m.issue_seconds.observe(started.elapsed().as_secs_f64());
    let took_no_number = match &outcome {
        IssueOutcome::Leased(l) => l.issued_at < now, // the session's lease, extended
        IssueOutcome::SessionFull { .. } | IssueOutcome::ClientFull { .. } => true,
        IssueOutcome::Exhausted => false,
    };
    if took_no_number && matches!(who, Issuer::Page(_)) {
        st.defences.issue.give_back_pool(&pool.id, now_ms());
    }
    match outcome {
        IssueOutcome::Leased(l) => {
            m.issued.get_or_create(&label).inc();
            // `expires_in` (whole seconds from now) as well as the time: a page counts
            // down from the answer with its own clock, which may be wrong by minutes.
            let expires_in = seconds_until(l.expires_at, now);
            // Whether issuing again extends this lease (dynamic pools): a one-time
            // pool's takes another number, so the page tag must not keep it alive
            // (it took a second number at every heartbeat, two per visitor, the
            // number on the page changing: a review).
            let renewable = pool.mode != PoolMode::OneTime;
            Ok(
                json!({"number": l.number, "expires_at": rfc3339(l.expires_at), "expires_in": expires_in, "overflow": false, "renewable": renewable}),
            )
        }
        IssueOutcome::SessionFull { retry_at_ms } => Err(throttled(
            st,
            Limit::Session,
            seconds_until(retry_at_ms, now),
        )),
        IssueOutcome::ClientFull { retry_at_ms } => Err(throttled(
            st,
            Limit::AddressLeases,
            seconds_until(retry_at_ms, now),
        )),
        IssueOutcome::Exhausted => {
            m.overflows.get_or_create(&label).inc();
            match pool.overflow_number {
                // Checked again now: it was checked when the pool was written, and
                // another operator may have created it as a tracking number since;
                // its calls would be that operator's (a review).
                Some(n) if overflow_usable(st, &pool.operator_id, &n).await? => Ok(
                    json!({"number": n, "expires_at": null, "expires_in": null, "overflow": true}),
                ),
                Some(n) => {
                    tracing::warn!(pool = %pool.id, number = %n, "a pool's overflow_number is now another operator's tracking number: not shown");
                    Err(ApiError::unavailable(
                        "every number of the pool is leased and its overflow_number cannot be used",
                    ))
                }
                None => Err(ApiError::unavailable(
                    "every number of the pool is leased and the pool has no overflow_number",
                )),
            }
        }
    }
}

/// The visitor's session: its session id, else its cookie id; none (a new visitor)
/// when neither names one. An empty or blank id names none: otherwise every page
/// sending `""` would share one session and one number.
fn visitor_session(params: &BTreeMap<String, String>) -> Option<String> {
    let named = |key: &str| params.get(key).filter(|v| !v.trim().is_empty());
    named("session_id").or_else(|| named("cookie_id")).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Origins are stored as browsers send them (lower case, no default port), so a
    /// page's `Origin` matches: the pool as read back lists them so, a PATCH stores
    /// them so too, and a dynamic pool's issue says the page renews its number
    /// (`renewable: true`; a one-time pool's says false, below).
    #[tokio::test]
    async fn origins_are_stored_as_browsers_send_them_and_a_dynamic_issue_is_renewable() {
        let a = crate::testing::api();
        let key = Some(a.key.as_str());
        let pool = format!(
            r#"{{"advertiser_id": "{}", "mode": "dynamic", "numbers": ["0502000011"], "hold_seconds": 60, "allowed_origins": ["HTTPS://Shop.Example:443", "http://b.example:80", "http://c.example:8080"], "destinations": [{{"number": "0311112222"}}]}}"#,
            a.advertiser
        );
        let r = a.send("POST", "/v1/pools", key, &pool).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        let stored = json!([
            "https://shop.example",
            "http://b.example",
            "http://c.example:8080"
        ]);
        assert_eq!(r.json()["allowed_origins"], stored, "{}", r.text());
        let read = a.send("GET", &format!("/v1/pools/{id}"), key, "").await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.text());
        assert_eq!(read.json()["allowed_origins"], stored, "{}", read.text());
        let patched = a
            .send(
                "PATCH",
                &format!("/v1/pools/{id}"),
                key,
                r#"{"allowed_origins": ["HTTPS://WWW.Example.com"]}"#,
            )
            .await;
        assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
        let read = a.send("GET", &format!("/v1/pools/{id}"), key, "").await;
        assert_eq!(
            read.json()["allowed_origins"],
            json!(["https://www.example.com"]),
            "{}",
            read.text()
        );
        let issued = a
            .send("POST", &format!("/v1/pools/{id}/issue"), key, "{}")
            .await;
        assert_eq!(issued.status, StatusCode::OK, "{}", issued.text());
        assert_eq!(issued.json()["number"], "0502000011", "{}", issued.text());
        assert_eq!(issued.json()["renewable"], true, "{}", issued.text());
    }

    /// A pool's overflow number is checked again when it is to be shown: one another
    /// operator created as a tracking number after the pool was written is withheld
    /// (503), never shown on this operator's pages, whose callers would then be that
    /// operator's. It was shown (a review).
    #[tokio::test]
    async fn an_overflow_number_another_operator_took_since_is_not_shown() {
        use tsunagu_store::Store;
        let a = crate::testing::api();
        let key = Some(a.key.as_str());
        let pool = format!(
            r#"{{"advertiser_id": "{}", "mode": "one_time", "numbers": ["0502000001"], "hold_seconds": 60, "overflow_number": "0509999999", "destinations": [{{"number": "0311112222"}}]}}"#,
            a.advertiser
        );
        let r = a.send("POST", "/v1/pools", key, &pool).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let issue = format!("/v1/pools/{}/issue", r.json()["id"].as_str().unwrap());
        let leased = a.send("POST", &issue, key, "{}").await;
        assert_eq!(leased.json()["overflow"], false, "{}", leased.text());
        // One-time: issuing again takes another number, so a page does not renew.
        assert_eq!(leased.json()["renewable"], false, "{}", leased.text());
        let overflow = a.send("POST", &issue, key, "{}").await;
        assert_eq!(
            overflow.json()["number"],
            "0509999999",
            "{}",
            overflow.text()
        );
        let other = a.store.create_operator("other").unwrap();
        let adv = a
            .store
            .create_advertiser(&other.id, "theirs", None)
            .unwrap();
        a.store
            .create_number(&tsunagu_store::TrackingNumber {
                number: "0509999999".into(),
                operator_id: other.id.clone(),
                advertiser_id: adv.id,
                ..Default::default()
            })
            .unwrap();
        let withheld = a.send("POST", &issue, key, "{}").await;
        assert_eq!(
            withheld.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            withheld.text()
        );
        assert!(
            !withheld.text().contains("0509999999"),
            "{}",
            withheld.text()
        );
    }

    /// An overflow number may be any phone number, or a tracking number of this
    /// operator's, not another operator's (in creation and in a change alike).
    #[tokio::test]
    async fn another_operators_number_is_no_overflow() {
        use tsunagu_store::Store;
        let a = crate::testing::api();
        let other = a.store.create_operator("other").unwrap();
        let adv = a
            .store
            .create_advertiser(&other.id, "theirs", None)
            .unwrap();
        let theirs = tsunagu_store::TrackingNumber {
            number: "0509999999".into(),
            operator_id: other.id.clone(),
            advertiser_id: adv.id,
            ..Default::default()
        };
        a.store.create_number(&theirs).unwrap();
        let key = Some(a.key.as_str());
        let mine = format!(
            r#"{{"number": "0501000001", "advertiser_id": "{}", "destinations": [{{"number": "0311112222"}}]}}"#,
            a.advertiser
        );
        assert_eq!(
            a.send("POST", "/v1/numbers", key, &mine).await.status,
            StatusCode::CREATED
        );
        let pool = |n: usize, overflow: &str| {
            format!(
                r#"{{"advertiser_id": "{}", "mode": "one_time", "numbers": ["05020000{n:02}"], "hold_seconds": 60, "overflow_number": "{overflow}", "destinations": [{{"number": "0311112222"}}]}}"#,
                a.advertiser
            )
        };
        let rows: &[(&str, StatusCode)] = &[
            ("0509999999", StatusCode::UNPROCESSABLE_ENTITY),
            ("0501000001", StatusCode::CREATED),
            ("0311112222", StatusCode::CREATED),
        ];
        for (i, (overflow, status)) in rows.iter().enumerate() {
            let r = a.send("POST", "/v1/pools", key, &pool(i, overflow)).await;
            assert_eq!(r.status, *status, "{overflow}: {}", r.text());
            if *status != StatusCode::CREATED {
                assert_eq!(
                    r.json()["error"]["field"],
                    "overflow_number",
                    "{}",
                    r.text()
                );
            }
        }
        let id = a.send("GET", "/v1/pools", key, "").await.json()["pools"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = a
            .send(
                "PATCH",
                &format!("/v1/pools/{id}"),
                key,
                r#"{"overflow_number": "0509999999"}"#,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    }

    /// Rows this version cannot read (a newer version wrote them during an upgrade)
    /// are answered 409 `unreadable`, left out of lists and never issued; each was a
    /// 500, the list's for every pool of the operator, and a visitor was handed a
    /// number no node that never read it routes.
    #[tokio::test]
    async fn unreadable_pools_and_numbers_are_refused_skipped_and_not_issued() {
        let a = crate::testing::api();
        let key = Some(a.key.as_str());
        let pool = |numbers: &str, overflow: &str| {
            format!(
                r#"{{"advertiser_id": "{}", "mode": "one_time", "numbers": [{numbers}], "hold_seconds": 60, "overflow_number": "{overflow}", "destinations": [{{"number": "0311112222"}}]}}"#,
                a.advertiser
            )
        };
        let r = a
            .send(
                "POST",
                "/v1/pools",
                key,
                &pool(r#""0502000001", "0502000002""#, "0311112222"),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let issuing = r.json()["id"].as_str().unwrap().to_string();
        let r = a
            .send(
                "POST",
                "/v1/pools",
                key,
                &pool(r#""0502000003""#, "0311112222"),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let unreadable = r.json()["id"].as_str().unwrap().to_string();
        a.as_a_newer_version_wrote("pools", "id", &unreadable);
        // The first number of the pool in issue order, as a newer version wrote it.
        a.as_a_newer_version_wrote("numbers", "number", "0502000001");

        let listed = a.send("GET", "/v1/pools", key, "").await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.text());
        let ids: Vec<String> = listed.json()["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, vec![issuing.clone()], "the readable pool listed alone");
        let path = format!("/v1/pools/{unreadable}");
        let refused = [
            a.send("GET", &path, key, "").await,
            a.send("PATCH", &path, key, r#"{"hold_seconds": 90}"#).await,
            a.send("POST", &format!("{path}/issue"), key, "{}").await,
        ];
        for r in refused {
            assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
            assert_eq!(r.json()["error"]["code"], "unreadable", "{}", r.text());
        }
        // A web page (no key) learns nothing of it: 404, as for no pool at all.
        let page = a
            .page_post("https://shop.example", &format!("{path}/issue"))
            .await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{}", page.text());
        // Said of the number without saying whose it is: as another operator's, or
        // as any existing number.
        let overflow = a
            .send(
                "POST",
                "/v1/pools",
                key,
                &pool(r#""0502000004""#, "0502000001"),
            )
            .await;
        assert_eq!(
            overflow.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            overflow.text()
        );
        assert_eq!(overflow.json()["error"]["field"], "overflow_number");
        let dry_run = a
            .send("POST", "/v1/numbers?dry_run=true", key, &format!(
                r#"{{"number": "0502000001", "advertiser_id": "{}", "destinations": [{{"number": "0311112222"}}]}}"#,
                a.advertiser
            ))
            .await;
        assert_eq!(dry_run.status, StatusCode::CONFLICT, "{}", dry_run.text());
        assert_eq!(
            dry_run.json()["error"]["code"],
            "conflict",
            "{}",
            dry_run.text()
        );
        // Issued: the readable number, then (it is held) the overflow, never the
        // unreadable one.
        let issue = format!("/v1/pools/{issuing}/issue");
        let first = a.send("POST", &issue, key, "{}").await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.text());
        assert_eq!(first.json()["number"], "0502000002", "{}", first.text());
        let second = a.send("POST", &issue, key, "{}").await;
        assert_eq!(second.status, StatusCode::OK, "{}", second.text());
        assert_eq!(second.json()["number"], "0311112222", "{}", second.text());
        assert_eq!(second.json()["overflow"], true, "{}", second.text());
    }

    /// Two PATCHes of one pool at once through two nodes, each changing another field:
    /// both changes are kept (each was a read-modify-write, and one was lost).
    #[tokio::test]
    async fn concurrent_changes_of_a_pool_are_both_kept() {
        let a = crate::testing::api();
        let key = Some(a.key.as_str());
        let pool = format!(
            r#"{{"advertiser_id": "{}", "mode": "one_time", "numbers": ["0502000001"], "hold_seconds": 60, "destinations": [{{"number": "0311112222"}}]}}"#,
            a.advertiser
        );
        let r = a.send("POST", "/v1/pools", key, &pool).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let path = format!("/v1/pools/{}", r.json()["id"].as_str().unwrap());
        a.both_patches_kept(
            &path,
            r#"{"hold_seconds": 60, "recycle_seconds": 0}"#,
            |round| format!(r#"{{"hold_seconds": {}}}"#, 100 + round),
            |round| format!(r#"{{"recycle_seconds": {}}}"#, 200 + round),
            |round, now| {
                assert_eq!(now["hold_seconds"], 100 + round, "round {round}: {now}");
                assert_eq!(now["recycle_seconds"], 200 + round, "round {round}: {now}");
            },
        )
        .await;
    }

    /// An issue body past 64 KiB with no declared length (read as it comes) is 413
    /// `too_large`, as a declared one is (it was 400 "unreadable").
    #[tokio::test]
    async fn an_issue_body_past_its_limit_is_too_large() {
        let a = crate::testing::api();
        let body = vec![b' '; ISSUE_BODY_LIMIT + 1];
        let r = a.send_bytes("POST", "/v1/pools/pool_x/issue", body).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "too_large", "{}", r.text());
    }

    /// A pool web pages issue from holds a number at least 30 s (the tag renews at
    /// half the lease, 15 s apart at least); one for API keys only may hold it less.
    #[test]
    fn page_pools_hold_numbers_long_enough_to_renew() {
        use tsunagu_store::conformance::sample_pool;
        let (mut p, _) = sample_pool("op", "adv", PoolMode::Dynamic, 1, 10, 0);
        assert!(validate_settings(&p).is_ok(), "API keys only");
        p.allowed_origins = vec!["https://shop.example".into()];
        let err = validate_settings(&p).unwrap_err();
        assert!(format!("{err:?}").contains("hold_seconds"), "{err:?}");
        p.hold_seconds = 30;
        assert!(validate_settings(&p).is_ok());
    }

    #[test]
    fn origins_are_written_as_browsers_send_them() {
        let rows = [
            ("https://WWW.Example.com:443", "https://www.example.com"),
            ("http://shop.example:80", "http://shop.example"),
            ("https://shop.example:8443", "https://shop.example:8443"),
            ("http://shop.example:443", "http://shop.example:443"),
            ("*", "*"),
        ];
        for (written, sent) in rows {
            assert_eq!(as_sent(written), sent, "{written}");
            assert!(written == "*" || is_origin(&as_sent(written)), "{written}");
        }
    }

    #[test]
    fn origins() {
        let long_host = format!("https://{}.example.com", "a".repeat(MAX_ORIGIN_BYTES));
        let longest = format!("https://{}", "a".repeat(MAX_ORIGIN_BYTES - 8));
        let cases: &[(&str, bool)] = &[
            ("https://www.example.com", true),
            ("http://example.com:8080", true),
            ("https://[2001:db8::1]:8443", true),
            // Never sent so by a browser: never matched.
            ("https://[2001:db8::1]:443", false),
            ("https://x.com:443", false),
            ("http://x.com:80", false),
            ("http://x.com:8080", true),
            ("https://WWW.Example.com", false),
            (&longest, true),
            (&long_host, false),
            ("https://example.com/", false),
            ("https://", false),
            ("ftp://example.com", false),
            ("https://exa mple.com", false),
        ];
        for (origin, ok) in cases {
            assert_eq!(is_origin(origin), *ok, "{origin}");
        }
    }

    #[test]
    fn visitor_sessions() {
        let cases: &[(&[(&str, &str)], Option<&str>)] = &[
            (&[("session_id", "s1")], Some("s1")),
            (&[("cookie_id", "c1")], Some("c1")),
            (&[("session_id", "s1"), ("cookie_id", "c1")], Some("s1")),
            (&[("session_id", ""), ("cookie_id", "c1")], Some("c1")),
            (&[("session_id", "")], None),
            (&[("session_id", "  "), ("cookie_id", "")], None),
            (&[("gclid", "G-1")], None),
        ];
        for (params, want) in cases {
            let params: BTreeMap<String, String> = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(visitor_session(&params).as_deref(), *want, "{params:?}");
        }
    }
}
