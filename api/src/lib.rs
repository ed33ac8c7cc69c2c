//! The HTTP API (axum): operators, advertisers, tracking numbers and call logs under
//! `/v1`, plus `/healthz`, `/readyz` and `/metrics`. One router built in [`router`];
//! state in an `Arc`; authentication as an extractor; errors as [`ApiError`].
//!
//! The store is blocking (SQLite); every store call runs on `spawn_blocking`. Call-log
//! exports stream rows from the store to the socket through a small bounded channel,
//! so a million-row CSV never sits in memory.

mod advertisers;
mod auth;
mod calls;
mod error;
mod follow_up;
mod numbers;
mod openapi;
mod operators;
mod ops;
mod pools;
mod prompts;
mod tag;
mod webhooks;

pub use calls::call_json;
pub use error::ApiError;
pub use follow_up::{Channels, EgressLabel, EgressRefusals};
pub use pools::PoolMetrics;
pub use webhooks::EVENT_TYPES;

use axum::routing::{get, post};
use axum::Router;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tsunagu_store::Store;

/// What the API needs from the running node.
pub trait NodeHooks: Send + Sync + 'static {
    /// A tracking number was created, changed or deleted: refresh the call path's copy.
    fn number_changed(&self, number: &str);
    /// An advertiser was created or changed (its line limit).
    fn advertiser_changed(&self, operator_id: &str, id: &str);
    /// An operator's webhooks were created or deleted.
    fn webhooks_changed(&self, operator_id: &str);
    /// Whether the node accepts new calls (false while draining).
    fn ready(&self) -> bool;
}

pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub hooks: Arc<dyn NodeHooks>,
    pub registry: Arc<Registry>,
    pub admin_token: String,
    pub pool_metrics: PoolMetrics,
    /// Delivery channels configured on this node (numbers asking for others are refused).
    pub channels: Channels,
    /// Where this node writes call recordings (call records hold paths relative to it).
    pub recordings_dir: std::path::PathBuf,
    /// The node's prompt library (numbers name prompts; operators upload their own).
    pub prompts: tsunagu_media::Prompts,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(openapi::document))
        .route(
            "/v1/operators",
            post(operators::create).get(operators::list),
        )
        .route(
            "/v1/operators/{id}",
            get(operators::get_one)
                .patch(operators::update)
                .delete(operators::delete),
        )
        .route("/v1/operators/{id}/keys", post(operators::new_key))
        .route(
            "/v1/advertisers",
            post(advertisers::create).get(advertisers::list),
        )
        .route(
            "/v1/advertisers/{id}",
            get(advertisers::get_one)
                .patch(advertisers::update)
                .delete(advertisers::delete),
        )
        .route("/v1/numbers", post(numbers::create).get(numbers::list))
        .route(
            "/v1/numbers/{number}",
            get(numbers::get_one)
                .patch(numbers::update)
                .delete(numbers::delete),
        )
        .route("/v1/pools", post(pools::create).get(pools::list))
        .route("/v1/pools/{id}", get(pools::get_one).patch(pools::update))
        .route(
            "/v1/pools/{id}/issue",
            post(pools::issue).options(pools::issue_preflight),
        )
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/v1/webhooks/{id}", axum::routing::delete(webhooks::delete))
        .route("/v1/prompts", get(prompts::list))
        .route(
            "/v1/prompts/{name}",
            axum::routing::put(prompts::put).delete(prompts::delete),
        )
        .route("/v1/tag.js", get(tag::script))
        .route("/v1/calls", get(calls::list))
        .route("/v1/calls/{call_id}", get(calls::get_one))
        .route("/v1/calls/{call_id}/recording", get(calls::recording))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

/// Runs a store operation on the blocking pool.
pub(crate) async fn db<T, F>(state: &ApiState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> tsunagu_store::Result<T> + Send + 'static,
{
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}

/// The current time in milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
