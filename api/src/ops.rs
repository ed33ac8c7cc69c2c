//! Operations endpoints: liveness, readiness and Prometheus metrics.

use crate::{db, ApiState};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use std::sync::Arc;

/// The process is up.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// The node accepts new calls: 200 `ready`, else 503 with the reason (the node's
/// own, else `store unavailable` when the store does not answer).
pub async fn readyz(State(st): State<Arc<ApiState>>) -> (StatusCode, String) {
    if let Some(why) = st.hooks.not_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    }
    match db(&st, |s| s.ping()).await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store unavailable\n".into(),
        ),
    }
}

/// Prometheus text. With `api.metrics_token` set, only for `Bearer <token>` (compared
/// in constant time); without it, for anyone who reaches the listener.
pub async fn metrics(
    State(st): State<Arc<ApiState>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Some(token) = &st.defences.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if !crate::auth::constant_time_eq(given.as_bytes(), token.as_bytes()) {
            st.defences.metrics.metrics_unauthorized.inc();
            return crate::ApiError::unauthorized("/metrics needs the metrics token")
                .into_response();
        }
    }
    st.defences
        .metrics
        .issue_tracked_addresses
        .set(st.defences.issue.tracked_addresses() as i64);
    st.defences
        .metrics
        .ready
        .set(i64::from(st.hooks.not_ready().is_none()));
    render(&st).into_response()
}

fn render(st: &ApiState) -> impl IntoResponse {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &st.registry).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::from("encoding failed"),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// The cluster as this node sees it: its name and incarnation, its lease, and every
/// member with its state, incarnation, time in that state and heartbeat round trip.
pub async fn cluster(
    _: crate::auth::Admin,
    State(st): State<Arc<ApiState>>,
) -> axum::Json<serde_json::Value> {
    axum::Json(st.hooks.cluster())
}

/// Takes a member that is down out of the cluster for good (a node decommissioned):
/// every member stops listing, counting and alerting on it within a second or so. A
/// node of that name that starts again joins as a new incarnation. 404 for a name
/// this node does not know, 409 for a member up (stop it first) or this node itself.
pub async fn retire_member(
    _: crate::auth::Admin,
    State(st): State<Arc<ApiState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<axum::Json<serde_json::Value>, crate::ApiError> {
    let hooks = st.hooks.clone();
    let member = name.clone();
    let epoch = tokio::task::spawn_blocking(move || hooks.retire_member(&member))
        .await
        .map_err(|e| crate::ApiError::internal(format!("retirement failed: {e}")))??;
    Ok(axum::Json(
        serde_json::json!({ "retired": name, "epoch": epoch }),
    ))
}
