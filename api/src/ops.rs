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

/// The node accepts new calls: not draining, and the store answers.
pub async fn readyz(State(st): State<Arc<ApiState>>) -> (StatusCode, &'static str) {
    if !st.hooks.ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    match db(&st, |s| s.ping()).await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n"),
    }
}

pub async fn metrics(State(st): State<Arc<ApiState>>) -> impl IntoResponse {
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
