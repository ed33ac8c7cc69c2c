//! `GET /v1/calls/{call_id}/recording` (operator key): the call's recording as
//! `audio/wav`, whichever node recorded it. A recording is a file on the node that
//! carried the call; when that is another node of the cluster, this node fetches it from
//! the other's API (`GET /v1/internal/recordings/{operator}/{call_id}`, which answers
//! only the cluster's internal token, derived from the cluster secret) and streams it
//! through. The operator's scope is checked here, before anything is fetched.

use crate::auth::OperatorId;
use crate::{db, ApiError, ApiState};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tsunagu_store::CallRecord;

/// How long fetching a recording from another node may take to start.
const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn recording(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = db(&st, move |s| s.get_call(&op, &id))
        .await?
        .ok_or_else(|| ApiError::not_found("no such call"))?;
    let rel = recording_path(&r)?;
    if r.node.is_empty() || r.node == st.node_id {
        return serve_file(&st, &r, rel).await;
    }
    from_peer(&st, &r).await
}

/// The internal side: a peer asks for a recording this node holds.
pub async fn internal(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((op, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let token = st
        .cluster_token
        .as_deref()
        .ok_or_else(|| ApiError::not_found("no such endpoint"))?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !crate::auth::constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return Err(ApiError::unauthorized("not a node of this cluster"));
    }
    let r = db(&st, move |s| s.get_call(&op, &id))
        .await?
        .ok_or_else(|| ApiError::not_found("no such call"))?;
    let rel = recording_path(&r)?;
    serve_file(&st, &r, rel).await
}

/// The recording's path relative to the recordings directory, if the call has one.
fn recording_path(r: &CallRecord) -> Result<String, ApiError> {
    let rel = r
        .recording
        .clone()
        .filter(|_| r.recording_status != Some(tsunagu_store::RecordingStatus::Missing))
        .ok_or_else(|| ApiError::not_found("this call has no recording"))?;
    let safe = std::path::Path::new(&rel)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !safe {
        return Err(ApiError::internal("stored recording path is not relative"));
    }
    Ok(rel)
}

fn wav_headers(call_id: &str, len: u64) -> [(header::HeaderName, String); 3] {
    [
        (header::CONTENT_TYPE, "audio/wav".to_string()),
        (header::CONTENT_LENGTH, len.to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{call_id}.wav\""),
        ),
    ]
}

/// Streams a recording file of this node.
async fn serve_file(st: &ApiState, r: &CallRecord, rel: String) -> Result<Response, ApiError> {
    let file = tokio::fs::File::open(st.recordings_dir.join(rel))
        .await
        .map_err(|_| ApiError::not_found("the recording file is not on this node"))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    Ok((wav_headers(&r.call_id, len), Body::from_stream(stream)).into_response())
}

/// Streams a recording another node of the cluster holds, from that node's API.
async fn from_peer(st: &ApiState, r: &CallRecord) -> Result<Response, ApiError> {
    let token = st
        .cluster_token
        .clone()
        .ok_or_else(|| ApiError::not_found("the recording file is not on this node"))?;
    let node = r.node.clone();
    let peer = db(st, move |s| s.nodes())
        .await?
        .into_iter()
        .find(|n| n.node_id == node)
        .and_then(|n| n.api_addr)
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .ok_or_else(|| ApiError::unavailable("the node that recorded this call is unknown"))?;
    let path = format!("/v1/internal/recordings/{}/{}", r.operator_id, r.call_id);
    let unreachable = |e: String| {
        tracing::warn!(node = %r.node, %peer, error = %e, "cannot fetch a recording from its node");
        ApiError::unavailable("the node that recorded this call cannot be reached")
    };
    let answer = tokio::time::timeout(PEER_TIMEOUT, fetch(peer, &path, &token))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(unreachable)?;
    let status = answer.status();
    if status == axum::http::StatusCode::NOT_FOUND {
        return Err(ApiError::not_found("the recording file is not on its node"));
    }
    if !status.is_success() {
        return Err(unreachable(format!("status {status}")));
    }
    let len = answer
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((wav_headers(&r.call_id, len), Body::new(answer.into_body())).into_response())
}

/// One GET over HTTP/1.1 to a peer's API.
async fn fetch(
    peer: std::net::SocketAddr,
    path: &str,
    token: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let tcp = tokio::net::TcpStream::connect(peer)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(path)
        .header(header::HOST, peer.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    send.send_request(req).await.map_err(|e| e.to_string())
}
