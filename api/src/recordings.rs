//! `GET /v1/calls/{call_id}/recording` (operator key): the call's recording as ONE
//! `audio/wav`, whichever nodes recorded it. A call taken over by another node is
//! recorded in parts (one per node that carried it); they are joined as the record lists
//! them, with silence for the takeover gap (the layout is [`crate::recording_join`]),
//! and streamed: the header's sizes are computed before any audio is read, so the
//! response has a Content-Length and never sits in memory. `?part=N` (1 = the first
//! part of `recording_parts`) serves one part alone.
//!
//! Each part is read from this node's `node.recordings_dir` when it is there (always,
//! when the nodes share that directory), else fetched from the node that recorded it
//! through `GET /v1/internal/recordings/{operator}/{call_id}?part=N`, which answers only
//! the cluster's internal token (derived from the cluster secret) and serves only files
//! of its own recordings dir. A HEAD of it tells what the part holds before the join is
//! planned; its audio is fetched when its turn comes (a connection held open meanwhile
//! would be closed idle by the peer).
//!
//! A part that cannot be had (not in the recordings dir, its node down or without the
//! file) fails the whole request: 503 with Retry-After when its node cannot be reached
//! now (it is served once that node is back), 404 when its node answered that it has no
//! such file; the error names the parts. Serving the rest with silence in their place
//! would hand out a file that looks complete and is not (recordings settle disputes,
//! and players do not show response headers); the parts that can be had stay available
//! one by one with `?part=N`.
//!
//! The operator's scope is checked before anything is read or fetched.
//!
//! Both endpoints answer a single byte `Range` (RFC 9110 section 14) with 206 and that
//! window of the same bytes a 200 sends (a player seeks, a download resumes): a local
//! part is read from where the window starts (a seek), silence is counted, and a part
//! at a peer is asked for with a Range too, so nothing before the window is read. A
//! range past the end is 416 (`Content-Range: bytes */total`); several ranges, another
//! unit, a value that does not parse, or an `If-Range` get the whole file (200).

use crate::auth::CallReader;
use crate::client::PeerAddr;
use crate::metrics::{OutcomeLabel, SourceLabel};
use crate::recording_join::{
    self, read_header, HeaderError, JoinError, JoinPlan, PartAudio, PartHeader, RangeAnswer, Slice,
    Window, HEADER_BYTES, MAX_PARTS,
};
use crate::{db, ApiError, ApiMetrics, ApiState};
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tsunagu_store::{CallRecord, NodeRow, RecordingStatus};

/// How long a peer may take to answer, and to send each piece of a part's audio.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// `Retry-After` of a 503 for a part whose node cannot be reached now.
const RETRY_AFTER_SECONDS: u64 = 60;
/// The most bytes read from a file per chunk of the response.
const CHUNK: usize = 64 * 1024;
/// Chunks of the response waiting for the client (the rest waits on disk or at the peer).
const QUEUED_CHUNKS: usize = 4;
/// Silence is sent from here (no allocation per chunk).
static ZEROS: [u8; 16 * 1024] = [0; 16 * 1024];

/// On answers of the internal endpoint: what the part holds (so a HEAD tells a peer).
const CHANNELS_HEADER: &str = "tsunagu-wav-channels";
const DATA_BYTES_HEADER: &str = "tsunagu-wav-data-bytes";
/// On answers to operators: how many parts the file was joined from.
const PARTS_HEADER: &str = "tsunagu-recording-parts";

#[derive(serde::Deserialize)]
pub struct PartParam {
    /// One part alone, counted from 1 in the record's `recording_parts` order.
    part: Option<usize>,
}

/// One part of a call's recording as its record names it.
#[derive(Debug, Clone)]
struct PartRef {
    /// Its number, from 1.
    n: usize,
    node: String,
    path: String,
    offset_ms: i64,
}

/// Where a part's audio comes from.
enum Source {
    /// This node's recordings dir: the file, positioned after its header.
    Local(tokio::fs::File),
    /// The node that recorded it: fetched when its turn comes, and it must still hold
    /// what its HEAD said.
    Peer {
        link: Link,
        uri: String,
        header: PartHeader,
    },
}

/// A part ready to be streamed.
struct Opened {
    part: PartRef,
    header: PartHeader,
    source: Source,
}

/// Why a part cannot be served.
#[derive(Debug)]
enum Problem {
    /// Not to be had now: `why`; `retry` when it may be had later (its node is down).
    Missing {
        part: PartRef,
        why: &'static str,
        retry: bool,
    },
    /// The file is there but is not a recording this project wrote (or cannot be read).
    Broken(String),
}

pub async fn recording(
    reader: CallReader,
    State(st): State<Arc<ApiState>>,
    method: Method,
    request: HeaderMap,
    Path(id): Path<String>,
    params: Result<Query<PartParam>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = params.map_err(|e| ApiError::bad_request(Some("part"), e.body_text()))?;
    let r = reader.call(&st, id).await?;
    let all = parts_of(&r)?;
    let count = all.len();
    let (chosen, filename) = match q.part {
        None => (all, format!("{}.wav", r.call_id)),
        Some(n) => {
            let mut one = n
                .checked_sub(1)
                .and_then(|i| all.get(i))
                .cloned()
                .ok_or_else(|| {
                    ApiError::not_found(format!("this recording has {count} part(s)"))
                })?;
            one.offset_ms = 0;
            (vec![one], format!("{}.part{n}.wav", r.call_id))
        }
    };
    let m = &st.defences.metrics;
    let outcome = |outcome: &'static str| {
        m.recordings_served
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    };
    // A place among the downloads, taken before any part is opened or a peer asked
    // (a refused request costs neither); held by the streaming task, so a client that
    // reads slowly holds one place, not the node. A HEAD opens and asks as a GET does,
    // to tell the length, so it takes a place too, given back with its answer.
    let permit = match st.defences.recordings.try_start(&r.operator_id) {
        Ok(p) => p,
        Err(why) => {
            outcome("busy");
            return Err(crate::calls::refused(why, "recording downloads", 5));
        }
    };
    let opened = match open_parts(&st, &r, chosen).await {
        Ok(opened) => opened,
        Err(problems) => {
            let e = refusal(&problems, count);
            let missing = problems
                .iter()
                .filter(|p| matches!(p, Problem::Missing { .. }))
                .count();
            m.recording_parts_missing.inc_by(missing as u64);
            outcome(if e.status == StatusCode::INTERNAL_SERVER_ERROR {
                "broken"
            } else {
                "part_missing"
            });
            return Err(e);
        }
    };
    let audio: Vec<PartAudio> = opened
        .iter()
        .map(|o| PartAudio {
            offset_ms: o.part.offset_ms,
            header: o.header,
        })
        .collect();
    let plan = recording_join::plan(&audio).map_err(|e| {
        let (word, error) = match e {
            JoinError::ChannelsDiffer { .. } => {
                ("channels_differ", ApiError::conflict(e.to_string()))
            }
            JoinError::TooLong => ("too_long", ApiError::conflict(e.to_string())),
            JoinError::NoParts | JoinError::TooManyParts(_) | JoinError::Channels { .. } => {
                ("broken", ApiError::internal(e.to_string()))
            }
        };
        outcome(word);
        error
    })?;
    m.recording_gaps_capped.inc_by(plan.gaps_capped as u64);
    if plan.gaps_capped > 0 {
        tracing::warn!(call_id = %r.call_id, gaps = plan.gaps_capped, "recording parts joined with gaps cut to 60 s of silence");
    }
    let window = match requested_range(&method, &request, plan.content_length()) {
        RangeAnswer::Whole => None,
        RangeAnswer::Part(w) => Some(w),
        RangeAnswer::Unsatisfiable => {
            outcome("range_not_satisfiable");
            return Ok(unsatisfiable(plan.content_length()));
        }
    };
    // A 206 is served too: the same file, a window of it.
    outcome("served");
    let headers = [(PARTS_HEADER, count.to_string())];
    Ok(respond(
        &st,
        plan,
        opened,
        &filename,
        &headers,
        method == Method::HEAD,
        window,
        Some(permit),
    ))
}

/// The internal side: a peer asks for a part of a recording this node holds. It serves
/// only its own recordings dir (a peer asks because the part was not in its own).
pub async fn internal(
    State(st): State<Arc<ApiState>>,
    peer: Option<Extension<PeerAddr>>,
    method: Method,
    request: HeaderMap,
    Path((op, id)): Path<(String, String)>,
    params: Result<Query<PartParam>, QueryRejection>,
) -> Result<Response, ApiError> {
    let token = st
        .cluster_token
        .as_deref()
        .ok_or_else(|| ApiError::not_found("no such endpoint"))?;
    let given = request
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !crate::auth::constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return Err(ApiError::unauthorized("not a node of this cluster"));
    }
    // The token travels between nodes in clear HTTP: one seen on the wire is of no use
    // from an address that is not a registered node's. Nor through a proxy: a reverse
    // proxy on a node's own host connects from that node's address for every client
    // on the internet (nodes call each other directly, never with these headers).
    let from = peer.map(|Extension(PeerAddr(a))| a.ip());
    let proxied = request.contains_key("x-forwarded-for")
        || request.contains_key(header::FORWARDED)
        || from.is_some_and(|ip| {
            let ip = ip.to_canonical();
            st.defences.trusted_proxies.iter().any(|c| c.contains(ip))
        });
    let known = match from {
        _ if proxied => false,
        // A store that cannot say answers 503 (`db`), not "an intruder".
        Some(ip) => is_node_address(&st, ip).await?,
        None => false,
    };
    if !known {
        st.defences.metrics.internal_refused.inc();
        tracing::warn!(
            ?from,
            "internal recording request from an address no node has"
        );
        return Err(ApiError::unauthorized("not a node of this cluster"));
    }
    let Query(q) = params.map_err(|e| ApiError::bad_request(Some("part"), e.body_text()))?;
    let r = db(&st, move |s| s.get_call(&op, &id))
        .await?
        .ok_or_else(|| ApiError::not_found("no such call"))?;
    let n = q.part.unwrap_or(1);
    let part = n
        .checked_sub(1)
        .and_then(|i| parts_of(&r).ok()?.into_iter().nth(i))
        .ok_or_else(|| ApiError::not_found("no such part"))?;
    let (file, header) = open_local(&st, &part)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::not_found("the recording file is not on this node"))?;
    let plan = recording_join::plan(&[PartAudio {
        offset_ms: 0,
        header,
    }])
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let headers = [
        (CHANNELS_HEADER, plan.channels.to_string()),
        (DATA_BYTES_HEADER, plan.data_bytes.to_string()),
    ];
    let opened = vec![Opened {
        part,
        header,
        source: Source::Local(file),
    }];
    // A peer asks for the window of the part it needs (this node's own file only: the
    // part was opened from its recordings dir above).
    let window = match requested_range(&method, &request, plan.content_length()) {
        RangeAnswer::Whole => None,
        RangeAnswer::Part(w) => Some(w),
        RangeAnswer::Unsatisfiable => return Ok(unsatisfiable(plan.content_length())),
    };
    let filename = format!("{}.part{n}.wav", r.call_id);
    Ok(respond(
        &st,
        plan,
        opened,
        &filename,
        &headers,
        method == Method::HEAD,
        window,
        None,
    ))
}

/// The parts of the call's recording (one for a call no node took over), their paths
/// checked to be relative.
fn parts_of(r: &CallRecord) -> Result<Vec<PartRef>, ApiError> {
    let first = r
        .recording
        .clone()
        .filter(|_| r.recording_status != Some(RecordingStatus::Missing))
        .ok_or_else(|| ApiError::not_found("this call has no recording"))?;
    let parts: Vec<PartRef> = if r.recording_parts.is_empty() {
        vec![PartRef {
            n: 1,
            node: r.node.clone(),
            path: first,
            offset_ms: 0,
        }]
    } else {
        r.recording_parts
            .iter()
            .enumerate()
            .map(|(i, p)| PartRef {
                n: i + 1,
                node: p.node.clone(),
                path: p.path.clone(),
                offset_ms: p.offset_ms,
            })
            .collect()
    };
    if parts.len() > MAX_PARTS {
        return Err(ApiError::internal(format!(
            "the recording has {} parts; at most {MAX_PARTS} are served",
            parts.len()
        )));
    }
    let relative = |p: &str| {
        !p.is_empty()
            && std::path::Path::new(p)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
    };
    if !parts.iter().all(|p| relative(&p.path)) {
        return Err(ApiError::internal("stored recording path is not relative"));
    }
    Ok(parts)
}

/// Opens every part: from the recordings dir where it is there, else a HEAD to its node
/// (all peers asked at once). Every part that cannot be had is reported.
async fn open_parts(
    st: &ApiState,
    r: &CallRecord,
    parts: Vec<PartRef>,
) -> Result<Vec<Opened>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut opened: Vec<Option<Opened>> = Vec::with_capacity(parts.len());
    let mut remote = Vec::new();
    for part in parts {
        match open_local(st, &part).await {
            Ok(Some((file, header))) => opened.push(Some(Opened {
                part,
                header,
                source: Source::Local(file),
            })),
            Ok(None) => {
                remote.push((opened.len(), part));
                opened.push(None);
            }
            Err(e) => problems.push(Problem::Broken(format!("part {}: {e}", part.n))),
        }
    }
    if !remote.is_empty() {
        // One read of the registry for every part.
        let nodes = registered(st).await;
        let probes = remote.into_iter().map(|(slot, part)| {
            let link = link_to(&nodes, &st.node_id, &part.node);
            async move { (slot, probe(st, r, part, link).await) }
        });
        for (slot, result) in futures_util::future::join_all(probes).await {
            match result {
                Ok(o) => opened[slot] = Some(o),
                Err(p) => problems.push(p),
            }
        }
    }
    if problems.is_empty() {
        Ok(opened.into_iter().flatten().collect())
    } else {
        Err(problems)
    }
}

/// A part from this node's recordings dir: the file after its header, and the header;
/// None when the file is not here.
async fn open_local(
    st: &ApiState,
    part: &PartRef,
) -> Result<Option<(tokio::fs::File, PartHeader)>, String> {
    let mut file = match tokio::fs::File::open(st.recordings_dir.join(&part.path)).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", part.path)),
    };
    let len = file
        .metadata()
        .await
        .map_err(|e| format!("cannot read {}: {e}", part.path))?
        .len();
    let mut h = [0u8; HEADER_BYTES];
    file.read_exact(&mut h)
        .await
        .map_err(|e| format!("cannot read the header of {}: {e}", part.path))?;
    let header = read_header(&h, len.saturating_sub(HEADER_BYTES as u64))
        .map_err(|e: HeaderError| format!("{}: {e}", part.path))?;
    Ok(Some((file, header)))
}

/// The nodes the store knows (an empty list if it cannot say).
async fn registered(st: &ApiState) -> Vec<NodeRow> {
    db(st, |s| s.nodes()).await.unwrap_or_default()
}

/// A node's registered addresses, its cluster listener's first (the address its peers
/// know it by), then its API's.
fn addresses(n: &NodeRow) -> impl Iterator<Item = SocketAddr> + '_ {
    [&n.cluster_addr, &n.api_addr]
        .into_iter()
        .flatten()
        .filter_map(|a| a.parse().ok())
}

/// Where this node asks `node` for a part (its API), sent from this node's own
/// registered address, if the store knows both. None (the part's node cannot be
/// reached: 503, tried again later) for an address that is no one's in particular
/// (`0.0.0.0`) or one of this node's own: two nodes registered with the same API
/// address (both on the default `127.0.0.1:8080`) would have this node ask itself
/// and call a part that exists elsewhere missing for good.
fn link_to(nodes: &[NodeRow], me: &str, node: &str) -> Option<Link> {
    let to: SocketAddr = nodes
        .iter()
        .find(|n| n.node_id == node)?
        .api_addr
        .as_deref()?
        .parse()
        .ok()?;
    let mine = nodes.iter().find(|n| n.node_id == me);
    if to.ip().is_unspecified() || mine.is_some_and(|n| addresses(n).any(|a| a == to)) {
        tracing::warn!(%to, node, "a recording part's node is registered at an address that does not reach it from here (unspecified, or this node's own): set its api.listen to an address the others reach");
        return None;
    }
    let from = mine.and_then(|n| addresses(n).map(|a| a.ip()).find(|ip| !ip.is_unspecified()));
    Some(Link { to, from })
}

/// Where this node asks a peer for a part: the peer's API, from this node's own
/// registered address (the peer serves its internal endpoint to registered nodes'
/// addresses only, and without binding the system may pick another source address).
#[derive(Debug, Clone, Copy)]
struct Link {
    to: SocketAddr,
    from: Option<IpAddr>,
}

/// Whether `ip` is an address of a node registered in the store and not declared
/// down (its API's or its cluster listener's): who may use the internal endpoint,
/// token or not.
async fn is_node_address(st: &ApiState, ip: IpAddr) -> Result<bool, ApiError> {
    // `::ffff:10.0.0.2` on a dual-stack listener is 10.0.0.2.
    let ip = ip.to_canonical();
    let nodes = db(st, |s| s.nodes()).await?;
    Ok(nodes
        .iter()
        .filter(|n| !n.down)
        .any(|n| addresses(n).any(|a| a.ip().to_canonical() == ip)))
}

/// Asks the node that recorded `part` what it holds (HEAD of the internal endpoint).
async fn probe(
    st: &ApiState,
    r: &CallRecord,
    part: PartRef,
    link: Option<Link>,
) -> Result<Opened, Problem> {
    let missing = |part: PartRef, why, retry| Problem::Missing { part, why, retry };
    let elsewhere = !part.node.is_empty() && part.node != st.node_id;
    let Some(token) = st.cluster_token.as_deref().filter(|_| elsewhere) else {
        return Err(missing(
            part,
            "the file is not in this node's recordings dir",
            false,
        ));
    };
    let Some(link) = link else {
        return Err(missing(part, "its node is not known to the cluster", true));
    };
    let addr = link.to;
    let uri = format!(
        "/v1/internal/recordings/{}/{}?part={}",
        r.operator_id, r.call_id, part.n
    );
    let answer = match tokio::time::timeout(
        PEER_TIMEOUT,
        fetch(link, Method::HEAD, &uri, token, None),
    )
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            tracing::warn!(node = %part.node, %addr, error = %e, "cannot reach the node that recorded a recording part");
            return Err(missing(part, "its node cannot be reached", true));
        }
        Err(_) => {
            tracing::warn!(node = %part.node, %addr, "the node that recorded a recording part did not answer in time");
            return Err(missing(part, "its node cannot be reached", true));
        }
    };
    match answer.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(missing(part, "its node does not have the file", false))
        }
        status => {
            tracing::warn!(node = %part.node, %addr, %status, "the node that recorded a recording part refused it");
            return Err(missing(part, "its node cannot serve it now", true));
        }
    }
    let header = header_of(answer.headers()).ok_or_else(|| {
        Problem::Broken(format!(
            "part {}: node {} answered without the part's format",
            part.n, part.node
        ))
    })?;
    Ok(Opened {
        part,
        header,
        source: Source::Peer { link, uri, header },
    })
}

/// What a peer's answer says the part holds.
fn header_of(h: &HeaderMap) -> Option<PartHeader> {
    let number = |name: &str| h.get(name)?.to_str().ok()?.parse::<u64>().ok();
    Some(PartHeader {
        channels: u16::try_from(number(CHANNELS_HEADER)?).ok()?,
        data_bytes: number(DATA_BYTES_HEADER)?,
    })
}

/// The error for parts that cannot be had: 500 if one is broken; else 503 (with
/// Retry-After) if a missing one may come back, 404 if none will.
fn refusal(problems: &[Problem], count: usize) -> ApiError {
    if let Some(Problem::Broken(why)) = problems.iter().find(|p| matches!(p, Problem::Broken(_))) {
        tracing::error!(error = %why, "a recording part is not a recording");
        return ApiError::internal(format!("a recording part cannot be read: {why}"));
    }
    let mut text = Vec::new();
    let mut retry = false;
    for p in problems {
        if let Problem::Missing {
            part,
            why,
            retry: r,
        } = p
        {
            retry |= *r;
            let on = if part.node.is_empty() {
                "this node"
            } else {
                part.node.as_str()
            };
            text.push(format!("part {} (recorded on {on}): {why}", part.n));
        }
    }
    let mut message = text.join("; ");
    if count > 1 {
        message.push_str(&format!(
            " (the recording has {count} parts; each one that can be had is served with ?part=N)"
        ));
    }
    if retry {
        ApiError::unavailable(message).retry_after(RETRY_AFTER_SECONDS)
    } else {
        ApiError::not_found(message)
    }
}

/// How to answer the request's `Range` for a file of `total` bytes.
fn requested_range(method: &Method, request: &HeaderMap, total: u64) -> RangeAnswer {
    // Range is defined for GET only (RFC 9110 section 14.2: a server MUST ignore it on
    // other methods): a HEAD answers as a GET without a Range would, 200 and the whole
    // length, Accept-Ranges saying a range may be asked for.
    if method != Method::GET {
        return RangeAnswer::Whole;
    }
    // If-Range asks for the range only if the file is still the one its validator
    // names. These answers carry no validator (no ETag, no Last-Modified: a joined
    // file has no single date, and a recording still being written changes), so no
    // If-Range can be checked; answering the range anyway could splice bytes of two
    // different files into one. The whole file is the answer RFC 9110 section 13.1.5
    // gives for a validator that does not match.
    if request.contains_key(header::IF_RANGE) {
        return RangeAnswer::Whole;
    }
    let mut fields = request.get_all(header::RANGE).iter();
    match (fields.next(), fields.next()) {
        (Some(value), None) => value
            .to_str()
            .map_or(RangeAnswer::Whole, |v| recording_join::window(v, total)),
        // None, or several fields (one list of ranges split over lines): ignored.
        _ => RangeAnswer::Whole,
    }
}

/// 416 for a range that does not meet a file of `total` bytes: the JSON refusal, and
/// `Content-Range: bytes */total` to say how long the file is.
fn unsatisfiable(total: u64) -> Response {
    let mut answer = ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range_not_satisfiable",
        format!("the range asked for starts past the end of the recording ({total} bytes)"),
    )
    .into_response();
    let h = answer.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::try_from(format!("bytes */{total}")) {
        h.insert(header::CONTENT_RANGE, v);
    }
    answer
}

/// The WAV answer: its headers now, its audio streamed by a task through a small queue
/// (none for a HEAD). `window`: 206 with that window of the file (within it, see
/// [`recording_join::window`]); None: 200 with the whole file.
fn respond(
    st: &ApiState,
    plan: JoinPlan,
    opened: Vec<Opened>,
    filename: &str,
    extra: &[(&'static str, String)],
    head: bool,
    window: Option<Window>,
    // A public download's place among those streaming (None: a peer's request).
    permit: Option<crate::running::RunPermit>,
) -> Response {
    let public = permit.is_some();
    let total = plan.content_length();
    let sent = window.unwrap_or_else(|| plan.whole());
    let mut b = Response::builder()
        .header(header::CONTENT_TYPE, "audio/wav")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, sent.len())
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        );
    if window.is_some() {
        b = b.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{total}", sent.first, sent.last),
        );
    }
    for (name, value) in extra {
        b = b.header(*name, value.as_str());
    }
    let body = if head {
        Body::empty()
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUED_CHUNKS);
        let metrics = st.defences.metrics.clone();
        let token = st.cluster_token.clone();
        let sources: Vec<Option<Source>> = opened.into_iter().map(|o| Some(o.source)).collect();
        let header = plan.header();
        let slices = plan.slices(sent);
        let span = tracing::Span::current();
        let limit = st.defences.export_max_duration;
        tokio::spawn(async move {
            let _permit = permit;
            // Cut at the exports' time limit: a client reading a trickle would hold
            // the files (and a peer's connection) for days.
            let streamed = tokio::time::timeout(
                limit,
                stream_slices(&header, &slices, sources, &tx, token.as_deref(), &metrics),
            )
            .await
            .unwrap_or_else(|_| Err(Cut::Failed(format!("longer than {} s", limit.as_secs()))));
            match streamed {
                Ok(()) | Err(Cut::ClientGone) => {}
                Err(Cut::Failed(why)) => {
                    span.in_scope(|| tracing::warn!(error = %why, "recording response cut short"));
                    if public {
                        metrics
                            .recordings_served
                            .get_or_create(&OutcomeLabel { outcome: "cut" })
                            .inc();
                    }
                    // The client sees the transfer end before its Content-Length.
                    let _ = tx.send(Err(std::io::Error::other(why))).await;
                }
            }
        });
        Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        }))
    };
    b.body(body).unwrap_or_else(|e| {
        axum::response::IntoResponse::into_response(ApiError::internal(format!(
            "cannot build the answer: {e}"
        )))
    })
}

/// Why streaming stopped early.
enum Cut {
    /// The client went away: nothing to report.
    ClientGone,
    /// A part could not be read as planned.
    Failed(String),
}

type Chunks = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

async fn send(tx: &Chunks, chunk: Bytes) -> Result<(), Cut> {
    tx.send(Ok(chunk)).await.map_err(|_| Cut::ClientGone)
}

/// The slices of the window in turn: the header's, silence, parts' audio.
async fn stream_slices(
    header: &[u8; HEADER_BYTES],
    slices: &[Slice],
    mut sources: Vec<Option<Source>>,
    tx: &Chunks,
    token: Option<&str>,
    metrics: &ApiMetrics,
) -> Result<(), Cut> {
    for slice in slices {
        match *slice {
            Slice::Header { from, to } => {
                let bytes = header
                    .get(from..to)
                    .ok_or_else(|| Cut::Failed(format!("header bytes {from}..{to}")))?;
                send(tx, Bytes::copy_from_slice(bytes)).await?;
            }
            Slice::Silence(mut left) => {
                while left > 0 {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(ZEROS.len());
                    send(tx, Bytes::from_static(&ZEROS[..n])).await?;
                    left -= n as u64;
                }
            }
            Slice::Part { index, skip, bytes } => {
                let source = sources
                    .get_mut(index)
                    .and_then(Option::take)
                    .ok_or_else(|| Cut::Failed(format!("part {} planned twice", index + 1)))?;
                let from = match source {
                    Source::Local(file) => {
                        local_audio(file, skip, bytes, tx).await?;
                        "local"
                    }
                    Source::Peer { link, uri, header } => {
                        let token = token.ok_or_else(|| Cut::Failed("no cluster token".into()))?;
                        peer_audio(link, &uri, token, header, skip, bytes, tx).await?;
                        "peer"
                    }
                };
                metrics
                    .recording_parts_read
                    .get_or_create(&SourceLabel { source: from })
                    .inc();
            }
        }
    }
    Ok(())
}

/// `bytes` of audio from a local file, from `skip` bytes into its audio (a seek: what
/// comes before is not read).
async fn local_audio(
    mut file: tokio::fs::File,
    skip: u64,
    bytes: u64,
    tx: &Chunks,
) -> Result<(), Cut> {
    let start = (HEADER_BYTES as u64)
        .checked_add(skip)
        .ok_or_else(|| Cut::Failed(format!("a recording part has no byte {skip}")))?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| Cut::Failed(format!("seeking in a recording part: {e}")))?;
    let mut audio = file.take(bytes);
    let mut sent: u64 = 0;
    loop {
        let mut buf = bytes::BytesMut::with_capacity(CHUNK);
        let n = audio
            .read_buf(&mut buf)
            .await
            .map_err(|e| Cut::Failed(format!("reading a recording part: {e}")))?;
        if n == 0 {
            break;
        }
        sent = sent.saturating_add(n as u64);
        send(tx, buf.freeze()).await?;
    }
    if sent != bytes {
        return Err(Cut::Failed(format!(
            "a recording part ended after {sent} of {bytes} bytes"
        )));
    }
    Ok(())
}

/// `bytes` of audio of a part at its node, from `skip` bytes into its audio; the node
/// must still hold what its HEAD said. Only that stretch is asked for (a Range); a
/// node that answers the whole part instead (200: one that does not answer ranges, a
/// rolling upgrade's older version) is read and what comes before the stretch thrown
/// away: at most the part's own size (4 GiB at most, what a whole download reads),
/// each piece within PEER_TIMEOUT, the whole within the download's time limit.
async fn peer_audio(
    link: Link,
    uri: &str,
    token: &str,
    expected: PartHeader,
    skip: u64,
    bytes: u64,
    tx: &Chunks,
) -> Result<(), Cut> {
    let addr = link.to;
    let failed = |what: String| Cut::Failed(format!("part from {addr}: {what}"));
    // The part's file at its node: its header, then its audio.
    let first = (HEADER_BYTES as u64).checked_add(skip);
    let last = first.and_then(|f| f.checked_add(bytes.checked_sub(1)?));
    let total = (HEADER_BYTES as u64).checked_add(expected.data_bytes);
    let (Some(first), Some(last), Some(total)) = (first, last, total) else {
        return Err(failed(format!("no bytes {skip}+{bytes} in the part")));
    };
    let range = format!("bytes={first}-{last}");
    let answer = tokio::time::timeout(
        PEER_TIMEOUT,
        fetch(link, Method::GET, uri, token, Some(&range)),
    )
    .await
    .map_err(|_| failed("no answer in time".into()))?
    .map_err(failed)?;
    let mut discard = match answer.status() {
        StatusCode::PARTIAL_CONTENT => {
            let said = answer
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok());
            if said != Some(format!("bytes {first}-{last}/{total}").as_str()) {
                return Err(failed(format!("answered {said:?} to {range}")));
            }
            0
        }
        StatusCode::OK => first,
        status => return Err(failed(format!("status {status}"))),
    };
    if header_of(answer.headers()) != Some(expected) {
        return Err(failed("the part changed since it was asked for".into()));
    }
    let mut body = answer.into_body();
    let mut left = bytes;
    while left > 0 {
        let frame = match tokio::time::timeout(PEER_TIMEOUT, body.frame()).await {
            Err(_) => return Err(failed("stalled".into())),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(failed(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let k = usize::try_from(discard)
            .unwrap_or(usize::MAX)
            .min(data.len());
        discard -= k as u64;
        let data = data.split_off(k);
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
        if take > 0 {
            send(tx, data.slice(..take)).await?;
            left -= take as u64;
        }
    }
    if left > 0 {
        return Err(failed(format!("the part ended {left} bytes early")));
    }
    Ok(())
}

/// One request over HTTP/1.1 to a peer's API.
async fn fetch(
    link: Link,
    method: Method,
    path: &str,
    token: &str,
    range: Option<&str>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let peer = link.to;
    let socket = match peer {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    // Same family, and not loopback toward another host (an API on 127.0.0.1 behind
    // a proxy): then the system's own choice of source is the better one.
    let usable = |ip: &IpAddr| {
        ip.is_ipv4() == peer.is_ipv4() && (!ip.is_loopback() || peer.ip().is_loopback())
    };
    if let Some(ip) = link.from.filter(usable) {
        // Not fatal: the peer then sees another source and refuses (logged there).
        if let Err(e) = socket.bind(SocketAddr::new(ip, 0)) {
            tracing::debug!(%ip, error = %e, "cannot send from this node's own address");
        }
    }
    let tcp = socket.connect(peer).await.map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, peer.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if let Some(range) = range {
        req = req.header(header::RANGE, range);
    }
    let req = req
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    send.send_request(req).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{api, Api};
    use crate::{Channels, Defences};
    use tsunagu_store::conformance::sample_call;
    use tsunagu_store::{NodeInfo, RecordingPart, Store};

    const TOKEN: &str = "internal-token-for-tests";

    /// Writes a part as nodes do (media's WavFile), every sample `value`.
    fn write_part(dir: &std::path::Path, rel: &str, channels: u16, frames: usize, value: i16) {
        let mut w = tsunagu_media::wav::WavFile::create(&dir.join(rel), channels).unwrap();
        w.append(&vec![value; frames * usize::from(channels)])
            .unwrap();
    }

    /// Writes a part whose every sample differs from its neighbours (`start`, `start`
    /// + 1, …): a window off by a byte shows.
    fn write_ramp(dir: &std::path::Path, rel: &str, channels: u16, frames: usize, start: i16) {
        let mut w = tsunagu_media::wav::WavFile::create(&dir.join(rel), channels).unwrap();
        let samples: Vec<i16> = (0..frames * usize::from(channels))
            .map(|i| start.wrapping_add(i as i16))
            .collect();
        w.append(&samples).unwrap();
    }

    /// A call answered with a recording in `parts` (node, path, offset_ms).
    fn recorded_call(a: &Api, parts: &[(&str, &str, i64)]) -> String {
        let mut c = sample_call(&a.operator, &a.advertiser, 5_000);
        c.recording = Some(parts[0].1.to_string());
        c.recording_status = Some(RecordingStatus::Complete);
        c.node = parts.last().unwrap().0.to_string();
        if parts.len() > 1 {
            c.recording_parts = parts
                .iter()
                .map(|(node, path, offset_ms)| RecordingPart {
                    node: node.to_string(),
                    path: path.to_string(),
                    offset_ms: *offset_ms,
                })
                .collect();
        }
        a.store.insert_calls(&[c.clone()], &[]).unwrap();
        c.call_id
    }

    /// Another node of `a`'s cluster: same store, its own recordings dir and metrics.
    fn node(a: &Api, id: &str, dir: &std::path::Path, token: Option<&str>) -> Arc<ApiState> {
        let metrics = ApiMetrics::default();
        metrics.touch();
        Arc::new(ApiState {
            store: a.store.clone(),
            hooks: a.state.hooks.clone(),
            registry: a.state.registry.clone(),
            admin_token: a.state.admin_token.clone(),
            pool_metrics: a.state.pool_metrics.clone(),
            channels: Channels {
                email: false,
                sms: false,
                egress: Default::default(),
                egress_refused: Default::default(),
            },
            recordings_dir: dir.to_path_buf(),
            node_id: id.into(),
            cluster_token: token.map(str::to_string),
            prompts: a.state.prompts.clone(),
            defences: Defences::new(&tsunagu_config::ApiConfig::default(), metrics),
        })
    }

    /// Serves `router` on a loopback port, registered in the store as node n2's API (a
    /// peer of another release, or one that lies).
    async fn serve_as_n2(a: &Api, router: axum::Router) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        a.store
            .register_node(
                &NodeInfo {
                    node_id: "n2".into(),
                    cluster_addr: None,
                    api_addr: Some(addr.to_string()),
                },
                1,
            )
            .unwrap();
    }

    /// Serves `state`'s API on a loopback port, registered in the store as its node's.
    async fn serve(a: &Api, state: Arc<ApiState>) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        a.store
            .register_node(
                &NodeInfo {
                    node_id: state.node_id.clone(),
                    cluster_addr: None,
                    api_addr: Some(addr.to_string()),
                },
                1,
            )
            .unwrap();
        // As the node's own server does: each request knows its TCP peer.
        let router = crate::router(state).layer(axum::middleware::map_request(
            |mut req: axum::extract::Request| async move {
                let peer = req
                    .extensions()
                    .get::<axum::extract::ConnectInfo<SocketAddr>>()
                    .map(|c| c.0);
                if let Some(peer) = peer {
                    req.extensions_mut().insert(PeerAddr(peer));
                }
                req
            },
        ));
        tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, service).await.unwrap();
        })
    }

    struct Got {
        status: StatusCode,
        headers: HeaderMap,
        /// The body, or why it could not be read whole.
        body: Result<Bytes, String>,
    }

    async fn get(a: &Api, state: &Arc<ApiState>, path: &str) -> Got {
        request(a, state, "GET", path, &[]).await
    }

    /// `method path` as the operator, with these request headers.
    async fn request(
        a: &Api,
        state: &Arc<ApiState>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Got {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", a.key));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut router = crate::router(state.clone());
        let r = tower_service::Service::call(&mut router, req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (status, headers) = (r.status(), r.headers().clone());
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .map_err(|e| e.to_string());
        Got {
            status,
            headers,
            body,
        }
    }

    fn header(g: &Got, name: &str) -> String {
        g.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// (channels, samples) of a WAV whose header counts exactly the bytes that follow.
    fn wav(bytes: &[u8]) -> (u16, Vec<i16>) {
        let h: &[u8; 44] = bytes[..44].try_into().unwrap();
        let parsed = read_header(h, (bytes.len() - 44) as u64).unwrap();
        assert_eq!(parsed.data_bytes, (bytes.len() - 44) as u64, "sizes agree");
        let samples = bytes[44..]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        (parsed.channels, samples)
    }

    /// Runs of equal samples: [(value, count)].
    fn runs(samples: &[i16]) -> Vec<(i16, usize)> {
        let mut out: Vec<(i16, usize)> = Vec::new();
        for s in samples {
            match out.last_mut() {
                Some((v, n)) if v == s => *n += 1,
                _ => out.push((*s, 1)),
            }
        }
        out
    }

    fn metric(st: &ApiState, outcome: &'static str) -> u64 {
        st.defences
            .metrics
            .recordings_served
            .get_or_create(&OutcomeLabel { outcome })
            .get()
    }

    /// Downloads streaming at once are capped: a client that holds one without
    /// reading holds one place; past the cap the next is answered 503 with
    /// Retry-After, and a place is free again once a client goes away. A HEAD, which
    /// opens the parts as a GET does, is refused too, and a refused request opens no
    /// part (its missing part is not even noticed).
    #[tokio::test]
    async fn recording_downloads_are_capped() {
        let a = crate::testing::api_with(&Default::default(), |d| {
            d.recordings = crate::running::RunLimits::new(1, 1);
        });
        let dir = a.state.recordings_dir.clone();
        // 2 MB: more than the streaming task queues for a client that does not read.
        write_part(&dir, "d/long.wav", 1, 1_000_000, 1000);
        let id = recorded_call(&a, &[("n1", "d/long.wav", 0)]);
        let path = format!("/v1/calls/{id}/recording");
        let held = a.call(&a.router, "GET", &path, Some(&a.key), "").await;
        assert_eq!(held.status(), StatusCode::OK);
        let busy = a.send("GET", &path, Some(&a.key), "").await;
        assert_eq!(
            busy.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            busy.text()
        );
        assert_eq!(busy.headers["retry-after"], "5");
        let head = a.call(&a.router, "HEAD", &path, Some(&a.key), "").await;
        assert_eq!(
            head.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "a HEAD opens parts"
        );
        let gone = recorded_call(&a, &[("n1", "d/never-written.wav", 0)]);
        let missing_before = a.state.defences.metrics.recording_parts_missing.get();
        let busy = a
            .send(
                "GET",
                &format!("/v1/calls/{gone}/recording"),
                Some(&a.key),
                "",
            )
            .await;
        assert_eq!(
            busy.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            busy.text()
        );
        assert_eq!(
            a.state.defences.metrics.recording_parts_missing.get(),
            missing_before,
            "a refused download opened its parts"
        );
        drop(held);
        // The place comes back once the dropped stream is released; a retry before
        // that is refused busy, and counted so (seen once in CI).
        let mut busy_seen = 3; // the GET, the HEAD and the GET of a missing part
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let again = a.call(&a.router, "GET", &path, Some(&a.key), "").await;
            if again.status() == StatusCode::OK {
                break;
            }
            assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
            busy_seen += 1;
            assert!(
                std::time::Instant::now() < deadline,
                "the place never came back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(
            a.state
                .defences
                .metrics
                .recordings_served
                .get_or_create(&OutcomeLabel { outcome: "busy" })
                .get(),
            busy_seen,
            "every refusal counted busy"
        );
    }

    #[tokio::test]
    async fn parts_are_joined_with_silence_for_the_gap() {
        let a = api();
        let dir = a.state.recordings_dir.clone();
        // 125 ms on n2, then n1 from 500 ms: 375 ms of silence between them.
        write_part(&dir, "d/c.wav", 2, 1000, 1000);
        write_part(&dir, "d/c.n1.wav", 2, 800, -2000);
        // n2 was killed after writing audio and before counting it in the header.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("d/c.wav"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, &[9, 9, 9]))
            .unwrap();
        let id = recorded_call(&a, &[("n2", "d/c.wav", 0), ("n1", "d/c.n1.wav", 500)]);
        let g = get(&a, &a.state, &format!("/v1/calls/{id}/recording")).await;
        assert_eq!(g.status, 200);
        let body = g.body.clone().unwrap();
        assert_eq!(header(&g, "content-length"), body.len().to_string());
        assert_eq!(header(&g, "content-type"), "audio/wav");
        assert_eq!(header(&g, "tsunagu-recording-parts"), "2");
        let (channels, samples) = wav(&body);
        assert_eq!(channels, 2);
        assert_eq!(runs(&samples), vec![(1000, 2000), (0, 6000), (-2000, 1600)]);
        let local = |st: &ApiState| {
            st.defences
                .metrics
                .recording_parts_read
                .get_or_create(&SourceLabel { source: "local" })
                .get()
        };
        assert_eq!((metric(&a.state, "served"), local(&a.state)), (1, 2));

        // One part alone.
        let g = get(&a, &a.state, &format!("/v1/calls/{id}/recording?part=2")).await;
        assert_eq!(g.status, 200);
        assert!(header(&g, "content-disposition").contains(".part2.wav"));
        assert_eq!(runs(&wav(&g.body.unwrap()).1), vec![(-2000, 1600)]);
        for (query, status) in [
            ("part=3", 404),
            ("part=0", 404),
            ("part=x", 400),
            ("part=-1", 400),
        ] {
            let g = get(&a, &a.state, &format!("/v1/calls/{id}/recording?{query}")).await;
            assert_eq!(g.status, status, "{query}");
        }
        // Another operator's key finds no such call.
        let other = a.store.create_operator("other").unwrap();
        let key = tsunagu_store::new_api_key();
        a.store
            .add_api_key(&other.id, &tsunagu_store::hash_api_key(&key), "tsk_o")
            .unwrap();
        let r = a
            .call(
                &a.router,
                "GET",
                &format!("/v1/calls/{id}/recording"),
                Some(&key),
                "",
            )
            .await;
        assert_eq!(r.status(), 404);
    }

    /// What cannot be joined is refused whole, with the reason, never served garbled or
    /// silently short.
    #[tokio::test]
    async fn parts_that_cannot_be_joined_are_refused() {
        let a = api();
        let dir = a.state.recordings_dir.clone();
        write_part(&dir, "d/stereo.wav", 2, 100, 7);
        write_part(&dir, "d/mono.wav", 1, 100, 7);
        std::fs::write(
            dir.join("d/text.wav"),
            "this is not audio at all, it is a secret token",
        )
        .unwrap();
        type Row = (
            &'static str,
            Vec<(&'static str, &'static str, i64)>,
            u16,
            &'static str,
            &'static str,
        );
        let table: Vec<Row> = vec![
            (
                "stereo then mono",
                vec![("n1", "d/stereo.wav", 0), ("n1", "d/mono.wav", 100)],
                409,
                "channels_differ",
                "part 1 has 2 channel(s) and part 2 has 1",
            ),
            (
                "a part that is not a WAV",
                vec![("n1", "d/stereo.wav", 0), ("n1", "d/text.wav", 100)],
                500,
                "broken",
                "not a WAV recording",
            ),
            (
                "a part not here, recorded here",
                vec![("n1", "d/stereo.wav", 0), ("n1", "d/gone.wav", 100)],
                404,
                "part_missing",
                "part 2 (recorded on n1): the file is not in this node's recordings dir",
            ),
            (
                "a part of another node outside a cluster",
                vec![("n1", "d/stereo.wav", 0), ("n2", "d/x.n2.wav", 100)],
                404,
                "part_missing",
                "part 2 (recorded on n2)",
            ),
            (
                "a path out of the recordings dir",
                vec![("n1", "d/stereo.wav", 0), ("n1", "../t.db", 100)],
                500,
                "",
                "not relative",
            ),
        ];
        for (name, parts, status, outcome, message) in table {
            let id = recorded_call(&a, &parts);
            let before = (!outcome.is_empty()).then(|| metric(&a.state, outcome));
            let g = get(&a, &a.state, &format!("/v1/calls/{id}/recording")).await;
            assert_eq!(g.status.as_u16(), status, "{name}");
            let text = String::from_utf8_lossy(&g.body.unwrap()).into_owned();
            assert!(text.contains(message), "{name}: {text}");
            if let Some(before) = before {
                assert_eq!(metric(&a.state, outcome), before + 1, "{name}");
            }
        }
        // The parts that can be had are served one by one.
        let id = recorded_call(&a, &[("n1", "d/stereo.wav", 0), ("n1", "d/mono.wav", 100)]);
        let g = get(&a, &a.state, &format!("/v1/calls/{id}/recording?part=2")).await;
        assert_eq!((g.status.as_u16(), wav(&g.body.unwrap()).0), (200, 1));
    }

    /// Nodes that do not share a recordings dir: a part is fetched from the node that
    /// recorded it; while that node is down the recording is 503 (Retry-After) and names
    /// the part; the internal endpoint answers only the cluster's token and only parts
    /// the record lists.
    #[tokio::test]
    async fn parts_on_other_nodes_are_fetched_from_them() {
        let a = api();
        let dir_n2 = tempfile::tempdir().unwrap();
        let n1 = node(&a, "n1", &a.state.recordings_dir, Some(TOKEN));
        let n2 = node(&a, "n2", dir_n2.path(), Some(TOKEN));
        write_part(dir_n2.path(), "d/c.wav", 1, 4000, 300);
        write_part(&n1.recordings_dir, "d/c.n1.wav", 1, 2000, -300);
        let id = recorded_call(&a, &[("n2", "d/c.wav", 0), ("n1", "d/c.n1.wav", 1000)]);
        let server = serve(&a, n2.clone()).await;

        let g = get(&a, &n1, &format!("/v1/calls/{id}/recording")).await;
        assert_eq!(g.status, 200);
        let (channels, samples) = wav(&g.body.unwrap());
        assert_eq!(channels, 1);
        assert_eq!(runs(&samples), vec![(300, 4000), (0, 4000), (-300, 2000)]);
        let peer = n1
            .defences
            .metrics
            .recording_parts_read
            .get_or_create(&SourceLabel { source: "peer" })
            .get();
        assert_eq!(peer, 1);

        // The internal endpoint: the token, from a registered node's address (n2's
        // API is on 127.0.0.1), the part's number, its own files only. The token
        // crosses the network in clear: from any other address it is refused.
        let internal = |q: &str| format!("/v1/internal/recordings/{}/{id}{q}", a.operator);
        let from = |peer: Option<&str>| {
            let router = crate::router(n2.clone());
            match peer {
                Some(p) => router.layer(axum::Extension(PeerAddr(p.parse().unwrap()))),
                None => router,
            }
        };
        let node = Some("127.0.0.1:40000");
        for (token, peer, q, status) in [
            (Some(TOKEN), node, "?part=1", 200),
            (None, node, "?part=1", 401),
            (Some("internal-token-for-testz"), node, "?part=1", 401),
            (Some(a.key.as_str()), node, "?part=1", 401),
            (Some(TOKEN), node, "?part=3", 404),
            (Some(TOKEN), node, "?part=2", 404),
            (Some(TOKEN), Some("192.0.2.7:40000"), "?part=1", 401),
            (Some(TOKEN), None, "?part=1", 401),
        ] {
            let r = a.call(&from(peer), "GET", &internal(q), token, "").await;
            assert_eq!(r.status().as_u16(), status, "{token:?} {peer:?} {q}");
        }
        assert_eq!(n2.defences.metrics.internal_refused.get(), 2);
        // Through a proxy on a node's host (from the node's own address), with the
        // token: refused, whether the proxy says so in a header or is a trusted one.
        for forwarded in [
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
        ] {
            let req = axum::http::Request::builder()
                .uri(internal("?part=1"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .header(forwarded.0, forwarded.1)
                .body(axum::body::Body::empty())
                .unwrap();
            let r = tower_service::Service::call(&mut from(node), req)
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 401, "{forwarded:?}");
        }
        let mut proxied = self::node(&a, "n2", dir_n2.path(), Some(TOKEN));
        Arc::get_mut(&mut proxied).unwrap().defences.trusted_proxies =
            vec!["127.0.0.1/32".parse().unwrap()];
        let router = crate::router(proxied.clone()).layer(axum::Extension(PeerAddr(
            "127.0.0.1:40000".parse().unwrap(),
        )));
        let r = a
            .call(&router, "GET", &internal("?part=1"), Some(TOKEN), "")
            .await;
        assert_eq!(r.status().as_u16(), 401, "from a trusted proxy");
        assert_eq!(proxied.defences.metrics.internal_refused.get(), 1);
        assert_eq!(n2.defences.metrics.internal_refused.get(), 4);
        // A dual-stack listener sees n2's address as ::ffff:127.0.0.1: the same node.
        let mapped = from(Some("[::ffff:127.0.0.1]:40000"));
        let r = a
            .call(&mapped, "GET", &internal("?part=1"), Some(TOKEN), "")
            .await;
        assert_eq!(r.status().as_u16(), 200, "IPv4-mapped");
        // Declared down, a node's address is let in no more.
        let row = a
            .store
            .nodes()
            .unwrap()
            .into_iter()
            .find(|n| n.node_id == "n2")
            .unwrap();
        assert!(a.store.mark_node_down("n2", row.epoch).unwrap());
        let r = a
            .call(&from(node), "GET", &internal("?part=1"), Some(TOKEN), "")
            .await;
        assert_eq!(r.status().as_u16(), 401, "a node declared down");
        assert_eq!(n2.defences.metrics.internal_refused.get(), 5);

        // n2 goes down: its part cannot be had, and the answer says which and why.
        server.abort();
        let _ = server.await;
        let g = get(&a, &n1, &format!("/v1/calls/{id}/recording")).await;
        assert_eq!(g.status, 503);
        assert_eq!(header(&g, "retry-after"), "60");
        let text = String::from_utf8_lossy(&g.body.unwrap()).into_owned();
        assert!(
            text.contains("part 1 (recorded on n2): its node cannot be reached"),
            "{text}"
        );
        assert!(text.contains("?part=N"), "{text}");
        assert_eq!(n1.defences.metrics.recording_parts_missing.get(), 1);
        assert_eq!(metric(&n1, "part_missing"), 1);
        // Its own part is still served alone.
        let g = get(&a, &n1, &format!("/v1/calls/{id}/recording?part=2")).await;
        assert_eq!(g.status, 200);
    }

    /// Each row: n2's registered API address → whether n1 asks n2 there. Not at an
    /// unspecified address, nor at one of n1's own (both on the default): n1 would ask
    /// itself and call the part missing for good.
    #[test]
    fn a_part_is_asked_of_its_node_only_where_it_is() {
        let row = |id: &str, api: &str| NodeRow {
            node_id: id.into(),
            epoch: 1,
            started_at: 0,
            last_seen: 0,
            cluster_addr: Some("10.0.0.1:7946".into()).filter(|_| id == "n1"),
            api_addr: Some(api.into()),
            down: false,
            retired: false,
        };
        let rows: &[(&str, Option<&str>)] = &[
            ("10.0.0.2:8080", Some("10.0.0.2:8080")),
            ("127.0.0.1:8081", Some("127.0.0.1:8081")),
            ("127.0.0.1:8080", None),
            ("0.0.0.0:8080", None),
            ("10.0.0.1:7946", None),
        ];
        for (n2_api, want) in rows {
            let nodes = [row("n1", "127.0.0.1:8080"), row("n2", n2_api)];
            let got = link_to(&nodes, "n1", "n2").map(|l| l.to.to_string());
            assert_eq!(got.as_deref(), *want, "{n2_api}");
        }
    }

    /// A peer that announces more audio than it sends (or whose part shrank) cannot
    /// make the node hand out a malformed file: the transfer ends before its
    /// Content-Length, and it is counted.
    #[tokio::test]
    async fn a_peer_sending_less_than_it_announced_cuts_the_response() {
        let a = api();
        let n1 = node(&a, "n1", &a.state.recordings_dir, Some(TOKEN));
        let liar = axum::Router::new().route(
            "/v1/internal/recordings/{op}/{id}",
            axum::routing::get(|| async {
                let mut body = tsunagu_media::wav::header(1, 100).to_vec();
                body.extend_from_slice(&[1; 100]);
                (
                    [(CHANNELS_HEADER, "1"), (DATA_BYTES_HEADER, "100000")],
                    body,
                )
            }),
        );
        serve_as_n2(&a, liar).await;
        let id = recorded_call(&a, &[("n2", "d/c.wav", 0), ("n1", "d/c.n1.wav", 1000)]);
        write_part(&n1.recordings_dir, "d/c.n1.wav", 1, 10, 5);
        let g = get(&a, &n1, &format!("/v1/calls/{id}/recording")).await;
        assert_eq!(g.status, 200, "the head went out before the audio");
        // 100,000 bytes announced, then the local part (which overlaps: no gap).
        assert_eq!(
            header(&g, "content-length"),
            (44 + 100_000 + 20).to_string()
        );
        assert!(g.body.is_err(), "the body must not end as if complete");
        assert_eq!(metric(&n1, "cut"), 1);
    }
    /// Asks `path` of `st` with each Range of `table` and checks the answer against
    /// `full`, the 200's body: 206 with exactly `full[first..=last]`, 416, or 200 whole.
    async fn check_ranges(
        a: &Api,
        st: &Arc<ApiState>,
        path: &str,
        full: &[u8],
        table: &[(&str, Option<(u64, u64)>, u16)],
    ) {
        let total = full.len() as u64;
        for (range, window, status) in table {
            let g = request(a, st, "GET", path, &[("range", range)]).await;
            assert_eq!(g.status.as_u16(), *status, "{range}");
            let body = g.body.clone().unwrap();
            match (status, window) {
                (206, Some((first, last))) => {
                    assert_eq!(
                        header(&g, "content-range"),
                        format!("bytes {first}-{last}/{total}"),
                        "{range}"
                    );
                    assert_eq!(header(&g, "content-length"), (last - first + 1).to_string());
                    assert_eq!(header(&g, "accept-ranges"), "bytes", "{range}");
                    assert!(
                        body[..] == full[*first as usize..=*last as usize],
                        "{range}: not the same bytes as the whole file's"
                    );
                }
                (416, None) => {
                    assert_eq!(header(&g, "content-range"), format!("bytes */{total}"));
                    let text = String::from_utf8_lossy(&body).into_owned();
                    assert!(
                        text.contains("\"range_not_satisfiable\""),
                        "{range}: {text}"
                    );
                }
                (200, None) => {
                    assert!(body[..] == *full, "{range}: the whole file");
                    assert_eq!(header(&g, "content-range"), "", "{range}");
                    assert_eq!(header(&g, "accept-ranges"), "bytes", "{range}");
                }
                _ => panic!("bad row {range}"),
            }
        }
    }

    /// A Range asks for a window of the same bytes the whole answer sends: the joined
    /// file's header, parts and the silence between them, across their boundaries; a
    /// range past the end is 416; several ranges, another unit, a value that does not
    /// parse or an If-Range get the whole file; a HEAD tells the whole file's headers.
    #[tokio::test]
    async fn ranges_are_windows_of_the_joined_file() {
        let a = api();
        let dir = a.state.recordings_dir.clone();
        // Stereo: part 1 is 44..4044 (1000 frames), silence 4044..16044 (375 ms),
        // part 2 16044..19244 (800 frames).
        write_ramp(&dir, "d/r.wav", 2, 1000, 1);
        write_ramp(&dir, "d/r.n1.wav", 2, 800, 5000);
        let id = recorded_call(&a, &[("n2", "d/r.wav", 0), ("n1", "d/r.n1.wav", 500)]);
        let path = format!("/v1/calls/{id}/recording");
        let whole = get(&a, &a.state, &path).await;
        assert_eq!(whole.status, 200);
        assert_eq!(header(&whole, "accept-ranges"), "bytes");
        let full = whole.body.unwrap();
        assert_eq!(full.len(), 19_244);
        let served = metric(&a.state, "served");
        let table: &[(&str, Option<(u64, u64)>, u16)] = &[
            ("bytes=1000-1999", Some((1000, 1999)), 206),
            ("bytes=40-50", Some((40, 50)), 206),
            ("bytes=0-43", Some((0, 43)), 206),
            ("bytes=4000-4100", Some((4000, 4100)), 206),
            ("bytes=16000-16100", Some((16000, 16100)), 206),
            ("bytes=5000-6000", Some((5000, 6000)), 206),
            ("bytes=30-19000", Some((30, 19000)), 206),
            ("bytes=19243-19243", Some((19243, 19243)), 206),
            ("bytes=19000-99999", Some((19000, 19243)), 206),
            ("bytes=-100", Some((19144, 19243)), 206),
            ("bytes=-3300", Some((15944, 19243)), 206),
            ("bytes=-100000", Some((0, 19243)), 206),
            ("bytes=10001-", Some((10001, 19243)), 206),
            ("bytes=0-", Some((0, 19243)), 206),
            ("bytes=19244-", None, 416),
            ("bytes=18446744073709551615-", None, 416),
            ("bytes=-0", None, 416),
            ("bytes=0-1,5-6", None, 200),
            ("items=0-1", None, 200),
            ("bytes=x-", None, 200),
            ("bytes=10-5", None, 200),
        ];
        check_ranges(&a, &a.state, &path, &full, table).await;
        assert_eq!(metric(&a.state, "served"), served + 18, "a 206 is served");
        assert_eq!(metric(&a.state, "range_not_satisfiable"), 3);

        // If-Range: these answers carry no validator to check it against: whole.
        let g = request(
            &a,
            &a.state,
            "GET",
            &path,
            &[("range", "bytes=0-9"), ("if-range", "\"x\"")],
        )
        .await;
        assert_eq!((g.status.as_u16(), g.body.unwrap()), (200, full.clone()));
        // Two Range fields are one list of two ranges: whole.
        let g = request(
            &a,
            &a.state,
            "GET",
            &path,
            &[("range", "bytes=0-9"), ("range", "bytes=20-29")],
        )
        .await;
        assert_eq!((g.status.as_u16(), g.body.unwrap()), (200, full.clone()));
        // A HEAD tells the whole file's headers, a Range or not (Range is GET's).
        for range in ["", "bytes=0-9"] {
            let headers: &[(&str, &str)] = if range.is_empty() {
                &[]
            } else {
                &[("range", range)]
            };
            let g = request(&a, &a.state, "HEAD", &path, headers).await;
            assert_eq!(g.status, 200, "{range}");
            assert_eq!(header(&g, "content-length"), "19244", "{range}");
            assert_eq!(header(&g, "accept-ranges"), "bytes", "{range}");
            assert_eq!(header(&g, "content-range"), "", "{range}");
        }

        // One part alone: the window is of that part's own file.
        let path = format!("{path}?part=2");
        let part = get(&a, &a.state, &path).await.body.unwrap();
        assert_eq!(part.len(), 44 + 3200);
        let table: &[(&str, Option<(u64, u64)>, u16)] = &[
            ("bytes=44-", Some((44, 3243)), 206),
            ("bytes=100-200", Some((100, 200)), 206),
            ("bytes=-1", Some((3243, 3243)), 206),
            ("bytes=3244-", None, 416),
        ];
        check_ranges(&a, &a.state, &path, &part, table).await;
    }

    /// A window over a part at a peer is asked of the peer with a Range, which its
    /// internal endpoint answers (for its own file); the bytes are those of the whole.
    #[tokio::test]
    async fn ranges_over_a_part_at_a_peer_are_asked_of_it() {
        let a = api();
        let dir_n2 = tempfile::tempdir().unwrap();
        let n1 = node(&a, "n1", &a.state.recordings_dir, Some(TOKEN));
        let n2 = node(&a, "n2", dir_n2.path(), Some(TOKEN));
        // Mono: n2's part 44..8044, silence 8044..16044, n1's part 16044..20044.
        write_ramp(dir_n2.path(), "d/c.wav", 1, 4000, 3);
        write_ramp(&n1.recordings_dir, "d/c.n1.wav", 1, 2000, -3000);
        let id = recorded_call(&a, &[("n2", "d/c.wav", 0), ("n1", "d/c.n1.wav", 1000)]);
        let _server = serve(&a, n2.clone()).await;
        let path = format!("/v1/calls/{id}/recording");
        let full = get(&a, &n1, &path).await.body.unwrap();
        assert_eq!(full.len(), 20_044);
        let table: &[(&str, Option<(u64, u64)>, u16)] = &[
            ("bytes=1000-1099", Some((1000, 1099)), 206),
            ("bytes=20-100", Some((20, 100)), 206),
            ("bytes=8000-16100", Some((8000, 16100)), 206),
            ("bytes=-5", Some((20039, 20043)), 206),
        ];
        check_ranges(&a, &n1, &path, &full, table).await;

        // n2's internal endpoint answers a window of its own file, and 416 past it.
        let internal = format!("/v1/internal/recordings/{}/{id}?part=1", a.operator);
        let router = crate::router(n2.clone()).layer(axum::Extension(PeerAddr(
            "127.0.0.1:40000".parse().unwrap(),
        )));
        for (range, status, content_range) in [
            ("bytes=100-199", 206, "bytes 100-199/8044"),
            ("bytes=8044-", 416, "bytes */8044"),
        ] {
            let req = axum::http::Request::builder()
                .uri(&internal)
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("range", range)
                .body(Body::empty())
                .unwrap();
            let r = tower_service::Service::call(&mut router.clone(), req)
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), status, "{range}");
            assert_eq!(r.headers()["content-range"], content_range, "{range}");
            if status == 206 {
                let body = axum::body::to_bytes(r.into_body(), usize::MAX)
                    .await
                    .unwrap();
                assert!(
                    body[..] == full[100..200],
                    "n2's file holds the joined file's part"
                );
            }
        }
    }

    /// A peer that does not answer ranges (an older version during a rolling upgrade)
    /// sends its whole part: what comes before the window is read and thrown away, and
    /// the window is still right. The peer was asked for the window alone.
    #[tokio::test]
    async fn a_peer_that_ignores_the_range_still_gives_the_window() {
        let a = api();
        let n1 = node(&a, "n1", &a.state.recordings_dir, Some(TOKEN));
        let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = asked.clone();
        let old = axum::Router::new().route(
            "/v1/internal/recordings/{op}/{id}",
            axum::routing::get(move |h: HeaderMap| {
                let seen = seen.clone();
                async move {
                    if let Some(r) = h.get("range") {
                        seen.lock().unwrap().push(r.to_str().unwrap().to_string());
                    }
                    let mut body = tsunagu_media::wav::header(1, 200).to_vec();
                    body.extend((0..200u8).map(|b| b.wrapping_mul(7)));
                    ([(CHANNELS_HEADER, "1"), (DATA_BYTES_HEADER, "200")], body)
                }
            }),
        );
        serve_as_n2(&a, old).await;
        write_ramp(&n1.recordings_dir, "d/o.n1.wav", 1, 10, 9);
        let id = recorded_call(&a, &[("n2", "d/o.wav", 0), ("n1", "d/o.n1.wav", 0)]);
        let path = format!("/v1/calls/{id}/recording");
        let full = get(&a, &n1, &path).await.body.unwrap();
        // The header, n2's 200 bytes (44..244), then n1's 20 (no gap: it overlaps).
        assert_eq!(full.len(), 264);
        assert_eq!(asked.lock().unwrap().split_off(0), ["bytes=44-243"]);
        let table: &[(&str, Option<(u64, u64)>, u16)] = &[("bytes=100-250", Some((100, 250)), 206)];
        check_ranges(&a, &n1, &path, &full, table).await;
        assert_eq!(asked.lock().unwrap().split_off(0), ["bytes=100-243"]);
    }
}
