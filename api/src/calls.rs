//! `/v1/calls` (operator key): call-log search and export as JSON, CSV or TSV.
//!
//! JSON pages are at most 1000 records with a `next_cursor`. CSV and TSV stream every
//! matching row (or `limit` rows) from the store page by page (see [`crate::export`]),
//! so memory stays flat for any range; their cells are neutralised against formula
//! injection (OWASP: a leading `=`, `+`, `-`, `@`, tab or CR gets a `'`).

use crate::auth::CallReader;
use crate::running::Refusal;
use crate::{db, rfc3339, ApiError, ApiState};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tsunagu_store::{CallQuery, CallRecord, CallResult, CallState, SortOrder, Validity};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CallsParams {
    from: Option<String>,
    to: Option<String>,
    advertiser_id: Option<String>,
    number: Option<String>,
    result: Option<String>,
    validity: Option<String>,
    sort: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    format: Option<String>,
    state: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Csv,
    Tsv,
}

pub(crate) const COLUMNS: &[&str] = &[
    "call_id",
    "advertiser_id",
    "tracking_number",
    "caller_number",
    "caller_kind",
    "destination_number",
    "started_at",
    "answered_at",
    "ended_at",
    "ring_seconds",
    "talk_seconds",
    "result",
    "validity",
    "ivr_digits",
    "judgement_digit",
    "recording",
    "tracking_params",
    "node",
    "sip_code",
    "trunk",
    "rtp_packets_in",
    "rtp_packets_out",
    "rtp_lost",
    "callback_of",
    "recording_status",
    "attempts",
    "state",
    "end_reason",
    "nodes",
    "taken_over_at",
    "recording_parts",
    "rtp_jitter_ms",
];

const JSON_PAGE_MAX: usize = 1000;
const JSON_PAGE_DEFAULT: usize = 100;

/// A time bound: RFC 3339, or epoch milliseconds. A `+` offset written raw in a
/// query string arrives as a space (form decoding) and is read as `+`. A number
/// below 10^11 other than 0 (before March 1973 in milliseconds) is refused as
/// seconds rather than taken as milliseconds, which would select calls from 1970 on.
fn parse_time(field: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = v.parse::<i64>() {
        if ms != 0 && ms.unsigned_abs() < 100_000_000_000 {
            return Err(ApiError::bad_request(
                Some(field),
                "epoch milliseconds expected (this looks like seconds: multiply by 1000)",
            ));
        }
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .or_else(|e| match v.contains(' ') {
            true => chrono::DateTime::parse_from_rfc3339(&v.replace(' ', "+")),
            false => Err(e),
        })
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::bad_request(
                Some(field),
                "must be RFC 3339 (2026-01-31T09:00:00+09:00) or epoch milliseconds",
            )
        })
}

fn format_of(p: &CallsParams, headers: &HeaderMap) -> Result<Format, ApiError> {
    if let Some(f) = &p.format {
        return match f.as_str() {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "tsv" => Ok(Format::Tsv),
            _ => Err(ApiError::bad_request(
                Some("format"),
                "must be json, csv or tsv",
            )),
        };
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(if accept.contains("text/csv") {
        Format::Csv
    } else if accept.contains("text/tab-separated-values") {
        Format::Tsv
    } else {
        Format::Json
    })
}

fn encode_cursor(r: &CallRecord) -> String {
    format!("{}.{}", r.started_at, r.call_id)
}

fn decode_cursor(c: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad_request(Some("cursor"), "not a cursor returned by this API");
    let (t, id) = c.split_once('.').ok_or_else(bad)?;
    Ok((t.parse().map_err(|_| bad())?, id.to_string()))
}

fn query_from(op: String, p: &CallsParams) -> Result<CallQuery, ApiError> {
    let order = match p.sort.as_deref() {
        None | Some("started_at") => SortOrder::Asc,
        Some("-started_at") => SortOrder::Desc,
        Some(_) => {
            return Err(ApiError::bad_request(
                Some("sort"),
                "must be started_at or -started_at",
            ))
        }
    };
    let result = p
        .result
        .as_deref()
        .map(|r| {
            r.parse::<CallResult>()
                .map_err(|e| ApiError::bad_request(Some("result"), e))
        })
        .transpose()?;
    let validity = p
        .validity
        .as_deref()
        .map(|v| {
            v.parse::<Validity>()
                .map_err(|e| ApiError::bad_request(Some("validity"), e))
        })
        .transpose()?;
    if p.limit == Some(0) {
        return Err(ApiError::bad_request(Some("limit"), "must be at least 1"));
    }
    let state = match p.state.as_deref() {
        None | Some("ended") => CallState::Ended,
        Some("active") => CallState::Active,
        Some(_) => {
            return Err(ApiError::bad_request(
                Some("state"),
                "must be ended (calls that ended, the default) or active (calls in progress)",
            ))
        }
    };
    Ok(CallQuery {
        operator_id: op,
        from_ms: p
            .from
            .as_deref()
            .map(|v| parse_time("from", v))
            .transpose()?,
        to_ms: p.to.as_deref().map(|v| parse_time("to", v)).transpose()?,
        advertiser_id: p.advertiser_id.clone(),
        tracking_number: p.number.clone(),
        result,
        validity,
        order,
        after: p.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: p.limit,
        state,
        deadline: None,
    })
}

/// A call record as the API and webhooks show it.
pub fn call_json(r: &CallRecord) -> Value {
    let mut v = json!({
        "call_id": r.call_id,
        "advertiser_id": r.advertiser_id,
        "tracking_number": r.tracking_number,
        "caller_number": r.caller_number,
        "caller_kind": r.caller_kind,
        "destination_number": r.destination_number,
        "started_at": rfc3339(r.started_at),
        "answered_at": r.answered_at.map(rfc3339),
        "ended_at": rfc3339(r.ended_at),
        "ring_seconds": r.ring_seconds,
        "talk_seconds": r.talk_seconds,
        "result": r.result,
        "validity": r.validity,
        "ivr_digits": r.ivr_digits,
        "judgement_digit": r.judgement_digit,
        "recording": r.recording,
        "tracking_params": r.tracking_params,
        "node": r.node,
        "sip_code": r.sip_code,
        "trunk": r.trunk,
        "rtp_packets_in": r.rtp_packets_in,
        "rtp_packets_out": r.rtp_packets_out,
        "rtp_lost": r.rtp_lost,
        "rtp_jitter_ms": jitter_ms(r),
        "callback_of": r.callback_of,
        "recording_status": r.recording_status,
        "attempts": attempts(r),
        "state": r.state,
        "stage": r.stage,
        "end_reason": r.end_reason,
        "nodes": nodes(r),
        "taken_over_at": r.taken_over_at.map(rfc3339),
        "recording_parts": recording_parts(r),
    });
    if r.state == CallState::Active {
        // In progress: what is not decided yet is null.
        for key in UNDECIDED {
            v[key] = Value::Null;
        }
    }
    v
}

/// What a call in progress has not decided yet: null in JSON, an empty cell in an
/// export (not "failed", ended at 1970).
const UNDECIDED: [&str; 5] = ["ended_at", "result", "validity", "sip_code", "talk_seconds"];

/// The call's highest RTP jitter in milliseconds, to a tenth (None: not measured).
fn jitter_ms(r: &CallRecord) -> Option<f64> {
    r.rtp_jitter_us.map(|us| (us as f64 / 100.0).round() / 10.0)
}

/// The nodes that carried the call, in order (one, unless it was taken over).
fn nodes(r: &CallRecord) -> Vec<&str> {
    if r.nodes.is_empty() {
        vec![r.node.as_str()]
    } else {
        r.nodes.iter().map(String::as_str).collect()
    }
}

/// The parts of a recording made on several nodes: which node, and when the part
/// starts after the answer (the file itself is served joined, see recordings.rs).
fn recording_parts(r: &CallRecord) -> Value {
    r.recording_parts
        .iter()
        .map(|p| json!({"node": p.node, "offset_ms": p.offset_ms}))
        .collect()
}

/// The forwarding attempts with times as the rest of the record shows them, plus
/// `offset_ms`: when the attempt started, after the call did.
fn attempts(r: &CallRecord) -> Value {
    r.attempts
        .iter()
        .map(|a| {
            json!({
                "destination": a.destination,
                "trunk": a.trunk,
                "started_at": rfc3339(a.started_at),
                "offset_ms": a.started_at.saturating_sub(r.started_at),
                "sip_code": a.sip_code,
                "outcome": a.outcome,
            })
        })
        .collect()
}

pub(crate) fn fields(r: &CallRecord) -> [String; 32] {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let decided = |s: String| {
        if r.state == CallState::Active {
            String::new()
        } else {
            s
        }
    };
    [
        r.call_id.clone(),
        r.advertiser_id.clone(),
        r.tracking_number.clone(),
        r.caller_number.clone(),
        r.caller_kind.to_string(),
        opt(&r.destination_number),
        rfc3339(r.started_at),
        r.answered_at.map(rfc3339).unwrap_or_default(),
        decided(rfc3339(r.ended_at)),
        r.ring_seconds.to_string(),
        decided(r.talk_seconds.to_string()),
        decided(r.result.to_string()),
        decided(r.validity.to_string()),
        opt(&r.ivr_digits),
        opt(&r.judgement_digit),
        opt(&r.recording),
        if r.tracking_params.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&r.tracking_params).unwrap_or_default()
        },
        r.node.clone(),
        decided(r.sip_code.to_string()),
        opt(&r.trunk),
        r.rtp_packets_in.to_string(),
        r.rtp_packets_out.to_string(),
        r.rtp_lost.to_string(),
        opt(&r.callback_of),
        r.recording_status
            .map(|s| s.to_string())
            .unwrap_or_default(),
        if r.attempts.is_empty() {
            String::new()
        } else {
            attempts(r).to_string()
        },
        r.state.to_string(),
        opt(&r.end_reason),
        nodes(r).join(" "),
        r.taken_over_at.map(rfc3339).unwrap_or_default(),
        if r.recording_parts.is_empty() {
            String::new()
        } else {
            recording_parts(r).to_string()
        },
        jitter_ms(r).map(|ms| ms.to_string()).unwrap_or_default(),
    ]
}

/// Whether a spreadsheet would read `cell` as a formula (OWASP CSV injection): it
/// starts with `=`, `+`, `-`, `@`, a tab or a CR. Caller numbers (From user parts) and
/// tracking parameters (page URLs) come from strangers.
fn looks_like_formula(cell: &str) -> bool {
    cell.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// Appends one row: CSV quoting per RFC 4180; TSV with tabs and newlines as spaces.
/// A cell that looks like a formula is prefixed with `'` first (shown as text).
pub(crate) fn write_row<S: AsRef<str>>(out: &mut String, cells: &[S], format: Format) {
    for (i, cell) in cells.iter().enumerate() {
        let raw = cell.as_ref();
        let quoted;
        let cell = if looks_like_formula(raw) {
            quoted = format!("'{raw}");
            quoted.as_str()
        } else {
            raw
        };
        if i > 0 {
            out.push(if format == Format::Tsv { '\t' } else { ',' });
        }
        match format {
            Format::Tsv => out.extend(cell.chars().map(|c| {
                if matches!(c, '\t' | '\n' | '\r') {
                    ' '
                } else {
                    c
                }
            })),
            _ if cell.contains([',', '"', '\n', '\r']) => {
                out.push('"');
                out.push_str(&cell.replace('"', "\"\""));
                out.push('"');
            }
            _ => out.push_str(cell),
        }
    }
    out.push_str("\r\n");
}

pub async fn list(
    reader: CallReader,
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    params: Result<Query<CallsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(mut p) = params.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    p.advertiser_id = reader.narrow(&st, p.advertiser_id.take())?;
    let format = format_of(&p, &headers)?;
    let mut query = query_from(reader.owner.operator_id, &p)?;
    if format != Format::Json {
        let d = &st.defences;
        let permit = d.exports.try_start(&query.operator_id).map_err(|why| {
            d.metrics.exports_refused.inc();
            refused(why, "exports", 5)
        })?;
        return Ok(crate::export::Export {
            store: st.store.clone(),
            query,
            format,
            send_timeout: d.export_send_timeout,
            max_duration: d.export_max_duration,
            page_timeout: d.search_timeout,
            metrics: d.metrics.clone(),
            permit,
        }
        .respond());
    }
    let limit = query.limit.unwrap_or(JSON_PAGE_DEFAULT).min(JSON_PAGE_MAX);
    query.limit = Some(limit);
    // Bounded twice: a few at once (each holds a store connection and a blocking
    // thread), and each stopped by the store once its time is up, so a search the
    // request timeout answered 408 does not scan on.
    let d = &st.defences;
    let permit = start_search(&st, &query.operator_id)?;
    query.deadline = Some(std::time::Instant::now() + d.search_timeout);
    let metrics = d.metrics.clone();
    let rows = db(&st, move |s| {
        // Held by the scan itself: a search whose request was answered 408 keeps its
        // place until the store stops it, and is counted even then.
        let _permit = permit;
        let mut rows = Vec::new();
        let scanned = s.scan_calls(&query, &mut |r| {
            rows.push(r);
            true
        });
        if let Err(tsunagu_store::StoreError::TimedOut(_)) = &scanned {
            metrics.searches_timed_out.inc();
        }
        scanned.map(|()| rows)
    })
    .await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(encode_cursor))
        .flatten();
    Ok(
        Json(json!({"calls": rows.iter().map(call_json).collect::<Vec<_>>(), "next_cursor": next}))
            .into_response(),
    )
}

/// 503 for a search or an export the caps refused: whose cap, and when to retry.
/// A place among the searches running (`api.max_searches`, in all and per operator):
/// JSON call searches and number lists, each reading much of an operator's rows. None
/// left: 503 with Retry-After, counted.
pub(crate) fn start_search(
    st: &ApiState,
    operator: &str,
) -> Result<crate::running::RunPermit, ApiError> {
    let d = &st.defences;
    d.searches.try_start(operator).map_err(|why| {
        d.metrics.searches_refused.inc();
        refused(why, "call searches and number lists", 1)
    })
}

pub(crate) fn refused(why: Refusal, what: &str, retry_after: u64) -> ApiError {
    let message = match why {
        Refusal::Node => format!("too many {what} are running; try again shortly"),
        Refusal::Operator => {
            format!("this operator already runs as many {what} as it may; try again shortly")
        }
    };
    ApiError::unavailable(message).retry_after(retry_after)
}

pub async fn get_one(
    reader: CallReader,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(call_json(&reader.call(&st, id).await?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{api, api_with};
    use axum::http::StatusCode;
    use std::time::Duration;
    use tsunagu_config::ApiConfig;

    /// A call in progress exports what it has not decided yet as empty cells, as its
    /// JSON has them null (not "failed", ended at 1970); an ended call has them all.
    #[test]
    fn a_call_in_progress_exports_nothing_undecided() {
        let mut r = tsunagu_store::conformance::sample_call("op_1", "adv_1", 1_000);
        let column = |name: &str| COLUMNS.iter().position(|c| *c == name).unwrap();
        let ended = fields(&r);
        for name in UNDECIDED {
            assert!(!ended[column(name)].is_empty(), "{name} of an ended call");
        }
        r.state = CallState::Active;
        r.ended_at = 0;
        let active = fields(&r);
        let json = call_json(&r);
        for name in UNDECIDED {
            assert_eq!(active[column(name)], "", "{name}");
            assert!(json[name].is_null(), "{name}");
        }
        assert_eq!(active[column("state")], "active");
    }
    use tsunagu_store::conformance::sample_call;
    use tsunagu_store::Store;

    /// Searches past `api.max_searches` (in all) or `api.max_searches_per_operator`
    /// are refused at once (503 with Retry-After), not queued behind the running ones;
    /// one operator at its cap does not block another; when one ends the next is
    /// served.
    #[tokio::test]
    async fn searches_past_the_cap_are_refused_at_once() {
        let config = ApiConfig {
            max_searches: 3,
            max_searches_per_operator: 2,
            ..ApiConfig::default()
        };
        let a = api_with(&config, |_| {});
        a.store
            .insert_calls(&[sample_call(&a.operator, &a.advertiser, 1_000)], &[])
            .unwrap();
        // Two of this operator's searches still scanning (a running search holds a
        // permit while the store reads).
        let searches = a.state.defences.searches.clone();
        let mut running = vec![
            searches.try_start(&a.operator).unwrap(),
            searches.try_start(&a.operator).unwrap(),
        ];
        let refused = a.get("/v1/calls").await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers["retry-after"], "1");
        assert_eq!(refused.json()["error"]["code"], "unavailable");
        assert!(
            refused.text().contains("this operator"),
            "{}",
            refused.text()
        );
        assert_eq!(a.state.defences.metrics.searches_refused.get(), 1);
        // Other operators still have room; once the node runs three searches in all
        // it is full for everyone.
        running.pop();
        running.push(searches.try_start("op_other").unwrap());
        running.push(searches.try_start("op_third").unwrap());
        let full = a.get("/v1/calls").await;
        assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(full.text().contains("too many"), "{}", full.text());
        drop(running);
        let served = a.get("/v1/calls").await;
        assert_eq!(served.status, StatusCode::OK, "{}", served.text());
        assert_eq!(served.json()["calls"].as_array().unwrap().len(), 1);
        assert_eq!(searches.running(), 0, "a search gives its place back");
    }

    #[test]
    fn a_search_ends_before_its_request() {
        // (api.search_timeout_seconds, api.request_timeout_seconds) -> budget in ms
        let rows = [(10, 60, 10_000), (60, 60, 59_750), (10, 1, 750), (0, 60, 0)];
        for (search, request, want) in rows {
            assert_eq!(
                crate::search_budget(search, request),
                Duration::from_millis(want),
                "{search} {request}"
            );
        }
    }

    /// A search that runs out of `api.search_timeout_seconds` is stopped by the store
    /// and answered 503 `search_timeout` (here a budget of zero: the store's own test
    /// shows a scan stopping part way).
    #[tokio::test]
    async fn a_search_past_its_time_is_stopped() {
        let a = api_with(&ApiConfig::default(), |d| d.search_timeout = Duration::ZERO);
        a.store
            .insert_calls(&[sample_call(&a.operator, &a.advertiser, 1_000)], &[])
            .unwrap();
        let stopped = a.get("/v1/calls?result=busy").await;
        assert_eq!(stopped.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(stopped.json()["error"]["code"], "search_timeout");
        assert_eq!(a.state.defences.metrics.searches_timed_out.get(), 1);
        assert_eq!(a.state.defences.searches.running(), 0);
        // The default budget serves the same search.
        let served = api().get("/v1/calls?result=busy").await;
        assert_eq!(served.status, StatusCode::OK, "{}", served.text());
    }

    #[test]
    fn csv_and_tsv_escaping() {
        let mut out = String::new();
        write_row(
            &mut out,
            &["a", "b,c", "say \"hi\"", "x\ny", ""],
            Format::Csv,
        );
        assert_eq!(out, "a,\"b,c\",\"say \"\"hi\"\"\",\"x\ny\",\r\n");
        let mut out = String::new();
        write_row(&mut out, &["a\tb", "c\nd", "e,f"], Format::Tsv);
        assert_eq!(out, "a b\tc d\te,f\r\n");
    }

    /// OWASP CSV injection: cells a spreadsheet would run are shown as text, in CSV and
    /// TSV alike; harmless cells are untouched.
    #[test]
    fn formula_cells_are_neutralised() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"",
                "'=HYPERLINK(\"http://x\",\"y\")",
            ),
            ("+1+1", "'+1+1", "'+1+1"),
            ("-2+3", "'-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1", "' =1"),
            ("\r=1", "\"'\r=1\"", "' =1"),
            ("0311112222", "0311112222", "0311112222"),
            ("a=b", "a=b", "a=b"),
            ("", "", ""),
        ];
        for (cell, csv, tsv) in cases {
            let mut out = String::new();
            write_row(&mut out, &[*cell], Format::Csv);
            assert_eq!(out, format!("{csv}\r\n"), "csv {cell:?}");
            let mut out = String::new();
            write_row(&mut out, &[*cell], Format::Tsv);
            assert_eq!(out, format!("{tsv}\r\n"), "tsv {cell:?}");
        }
    }

    #[test]
    fn query_parameters() {
        let ok = CallsParams {
            from: Some("2026-01-01T00:00:00+09:00".into()),
            to: Some("1767225600000".into()),
            sort: Some("-started_at".into()),
            cursor: Some("5.call_x".into()),
            ..Default::default()
        };
        let q = query_from("op".into(), &ok).unwrap();
        assert_eq!(q.from_ms, Some(1767193200000));
        assert_eq!(q.to_ms, Some(1767225600000));
        // A raw `+` offset arrives as a space; 0 is the beginning.
        let spaced = CallsParams {
            from: Some("2026-01-01T00:00:00 09:00".into()),
            to: Some("0".into()),
            ..Default::default()
        };
        let q2 = query_from("op".into(), &spaced).unwrap();
        assert_eq!((q2.from_ms, q2.to_ms), (Some(1767193200000), Some(0)));
        assert_eq!(q.order, SortOrder::Desc);
        assert_eq!(q.after, Some((5, "call_x".into())));
        let bad: Vec<(CallsParams, &str)> = vec![
            (
                CallsParams {
                    from: Some("yesterday".into()),
                    ..Default::default()
                },
                "from",
            ),
            (
                // Seconds, not milliseconds.
                CallsParams {
                    to: Some("1767225600".into()),
                    ..Default::default()
                },
                "to",
            ),
            (
                CallsParams {
                    result: Some("won".into()),
                    ..Default::default()
                },
                "result",
            ),
            (
                CallsParams {
                    validity: Some("maybe".into()),
                    ..Default::default()
                },
                "validity",
            ),
            (
                CallsParams {
                    sort: Some("caller".into()),
                    ..Default::default()
                },
                "sort",
            ),
            (
                CallsParams {
                    cursor: Some("nonsense".into()),
                    ..Default::default()
                },
                "cursor",
            ),
            (
                CallsParams {
                    limit: Some(0),
                    ..Default::default()
                },
                "limit",
            ),
        ];
        for (p, field) in bad {
            let e = query_from("op".into(), &p).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field));
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
    }
}
