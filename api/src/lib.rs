//! The HTTP API (axum): operators, advertisers, tracking numbers and call logs under
//! `/v1`, plus `/healthz`, `/readyz` and `/metrics`. One router built in [`router`];
//! state in an `Arc`; authentication as an extractor; errors as [`ApiError`].
//!
//! The store is blocking (SQLite); every store call runs on `spawn_blocking`. Call-log
//! exports stream rows from the store to the socket through a small bounded channel,
//! so a million-row CSV never sits in memory.
//!
//! The API faces the internet (the page tag must be public), so it serves with its own
//! accept loop ([`serve`]: connection caps, header/idle/request timeouts) and carries
//! its defences in [`Defences`]: issue rate limits, the export semaphore, the metrics
//! token.

mod advertisers;
mod auth;
mod calls;
pub mod client;
mod error;
mod export;
mod follow_up;
mod idle;
pub mod limit;
mod metrics;
mod numbers;
mod openapi;
mod operators;
mod ops;
mod pools;
mod prompts;
mod recording_join;
mod recordings;
pub mod running;
pub mod serve;
mod stream;
mod tag;
#[cfg(test)]
mod testing;
mod ui;
mod webhooks;

pub use calls::call_json;
pub use error::ApiError;
pub use follow_up::{Channels, EgressLabel, EgressRefusals};
pub use metrics::ApiMetrics;
pub use pools::PoolMetrics;
pub use webhooks::EVENT_TYPES;

use axum::routing::{get, post};
use axum::Router;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tsunagu_config::{ApiConfig, Cidr};
use tsunagu_store::Store;

/// What the API needs from the running node. The `*_changed` hooks are called on the
/// blocking pool, in the job of the write they announce ([`db_then`]): they may block.
pub trait NodeHooks: Send + Sync + 'static {
    /// A tracking number was created, changed or deleted: refresh the call path's copy.
    fn number_changed(&self, number: &str);
    /// An advertiser was created or changed (its line limit).
    fn advertiser_changed(&self, operator_id: &str, id: &str);
    /// An operator's webhooks were created or deleted.
    fn webhooks_changed(&self, operator_id: &str);
    /// An operator's own prompt was uploaded or deleted (already in the store).
    fn prompt_changed(&self, _operator_id: &str, _name: &str) {}
    /// Why the node accepts no new calls (draining, the call log not writing, no
    /// cluster lease), or None when it does. `/readyz` answers 503 with the reason.
    fn not_ready(&self) -> Option<&'static str>;
    /// The cluster as this node sees it (`GET /v1/cluster`).
    fn cluster(&self) -> serde_json::Value {
        serde_json::json!({ "clustered": false, "members": [] })
    }
    /// Retires member `name` for good (`DELETE /v1/cluster/members/{name}`): its
    /// incarnation retired, or why not. Blocking (it writes to the store).
    fn retire_member(&self, _name: &str) -> Result<u64, ApiError> {
        Err(ApiError::not_found(
            "this node is on its own: it has no cluster members",
        ))
    }
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
    /// This node's id: recordings of calls other nodes carried are fetched from them.
    pub node_id: String,
    /// The bearer token nodes of the cluster present to each other's internal
    /// endpoints (derived from the cluster secret); None outside a cluster.
    pub cluster_token: Option<String>,
    /// The node's prompt library (numbers name prompts; operators upload their own).
    pub prompts: tsunagu_media::Prompts,
    /// Limits against abuse, from `[api]`.
    pub defences: Defences,
}

/// The API's defences against abuse and their settings (`[api]`).
pub struct Defences {
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// Rate limits of page issuance.
    pub issue: limit::IssueLimiter,
    /// The CSV/TSV exports running, in all and per operator.
    pub exports: Arc<running::RunLimits>,
    pub export_send_timeout: Duration,
    /// How long an export may stream in all.
    pub export_max_duration: Duration,
    /// The live call streams open, in all and per operator.
    pub streams: Arc<running::RunLimits>,
    /// How long a live call stream stays open.
    pub stream_max_duration: Duration,
    /// How long a live call stream may send nothing (a comment line then): below the
    /// idle timeout, which would end it.
    pub stream_keepalive: Duration,
    /// The JSON call searches running, in all and per operator.
    pub searches: Arc<running::RunLimits>,
    /// How long a JSON call search may read the store.
    pub search_timeout: Duration,
    /// The recording downloads streaming, in all and per operator.
    pub recordings: Arc<running::RunLimits>,
    /// The prompt uploads being read, in all and per operator.
    pub uploads: Arc<running::RunLimits>,
    /// Webhook registrations resolving their URL's name, in all and per operator (see
    /// `webhooks::check_destination`).
    pub registrations: Arc<running::RunLimits>,
    /// Numbers and advertisers one operator may hold (`api.max_numbers_per_operator`,
    /// `api.max_advertisers_per_operator`).
    pub max_numbers_per_operator: usize,
    pub max_advertisers_per_operator: usize,
    /// `/metrics` needs this bearer token when set.
    pub metrics_token: Option<String>,
    /// `/metrics` is served on the API listener (false: on `api.metrics_listen` only).
    pub metrics_on_api: bool,
    /// Pools whose metrics carry their own `pool` label.
    pub pool_labels: HashSet<String>,
    pub metrics: ApiMetrics,
}

impl Defences {
    pub fn new(c: &ApiConfig, metrics: ApiMetrics) -> Defences {
        Defences {
            trusted_proxies: c.trusted_proxies.clone(),
            issue: limit::IssueLimiter::new(&c.issue, now_ms()),
            exports: running::RunLimits::new(c.max_exports, c.max_exports_per_operator),
            export_send_timeout: Duration::from_secs(c.export_send_timeout_seconds.into()),
            export_max_duration: Duration::from_secs(c.export_max_seconds.into()),
            streams: running::RunLimits::new(c.max_streams, c.max_streams_per_operator),
            stream_max_duration: Duration::from_secs(c.stream_max_seconds.into()),
            stream_keepalive: Duration::from_secs(15)
                .min(Duration::from_secs(c.idle_timeout_seconds.into()) / 2),
            searches: running::RunLimits::new(c.max_searches, c.max_searches_per_operator),
            search_timeout: search_budget(c.search_timeout_seconds, c.request_timeout_seconds),
            recordings: running::RunLimits::new(c.max_recordings, c.max_recordings_per_operator),
            uploads: running::RunLimits::new(
                c.max_prompt_uploads,
                c.max_prompt_uploads_per_operator,
            ),
            registrations: running::RunLimits::new(
                webhooks::MAX_RESOLVING,
                webhooks::MAX_RESOLVING_PER_OPERATOR,
            ),
            max_numbers_per_operator: c.max_numbers_per_operator as usize,
            max_advertisers_per_operator: c.max_advertisers_per_operator as usize,
            metrics_token: c.metrics_token.clone(),
            metrics_on_api: c.metrics_listen.is_none(),
            pool_labels: c.pool_metrics.iter().cloned().collect(),
            metrics,
        }
    }
}

/// How long a JSON search may read the store: `api.search_timeout_seconds`, but a
/// quarter second less than the request's own timeout at most, so that the store
/// stops it, and its client hears `search_timeout`, before the request is answered 408.
fn search_budget(search_seconds: u32, request_seconds: u32) -> Duration {
    let request = Duration::from_secs(request_seconds.into());
    Duration::from_secs(search_seconds.into())
        .min(request.saturating_sub(Duration::from_millis(250)))
}

/// The router of `api.metrics_listen`: `/metrics` (and `/healthz`) only.
pub fn metrics_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

pub fn router(state: Arc<ApiState>) -> Router {
    let metrics_here = state.defences.metrics_on_api;
    let router = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz));
    let router = if metrics_here {
        router.route("/metrics", get(ops::metrics))
    } else {
        router
    };
    router
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/cluster", get(ops::cluster))
        .route(
            "/v1/cluster/members/{name}",
            axum::routing::delete(ops::retire_member),
        )
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
        .route(
            "/v1/operators/{id}/keys",
            post(operators::new_key).get(operators::list_keys),
        )
        .route(
            "/v1/operators/{id}/keys/{key_id}",
            axum::routing::delete(operators::revoke_key),
        )
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
        .route(
            "/v1/advertisers/{id}/keys",
            post(advertisers::new_key).get(advertisers::list_keys),
        )
        .route(
            "/v1/advertisers/{id}/keys/{key_id}",
            axum::routing::delete(advertisers::revoke_key),
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
            axum::routing::put(prompts::put)
                .layer(axum::extract::DefaultBodyLimit::max(prompts::BODY_LIMIT))
                .delete(prompts::delete),
        )
        .route("/v1/tag.js", get(tag::script))
        .route("/v1/calls", get(calls::list))
        .route("/v1/calls/stream", get(stream::stream))
        .route("/v1/calls/{call_id}", get(calls::get_one))
        .route("/v1/calls/{call_id}/recording", get(recordings::recording))
        .route(
            "/v1/internal/recordings/{operator}/{call_id}",
            get(recordings::internal),
        )
        .merge(ui::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(DEFAULT_BODY_LIMIT))
        .layer(axum::middleware::from_fn(declared_length_fits))
        .layer(axum::middleware::map_response(json_refusals))
        .with_state(state)
}

/// The most body bytes a request may bring: a prompt's upload takes an operator's
/// whole prompt quota, a pool's issue request 64 KiB (anyone may send one),
/// everything else axum's default (2 MiB). The routes' body limits are these values
/// ([`axum::extract::DefaultBodyLimit`], the issue handler's own read).
fn body_limit(method: &axum::http::Method, path: &str) -> usize {
    use axum::http::Method;
    if method == Method::PUT && path.starts_with("/v1/prompts/") {
        prompts::BODY_LIMIT
    } else if method == Method::POST && path.starts_with("/v1/pools/") && path.ends_with("/issue") {
        pools::ISSUE_BODY_LIMIT
    } else {
        DEFAULT_BODY_LIMIT
    }
}

/// axum's own default body limit, which every route but a prompt's upload keeps.
const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// A request whose declared `Content-Length` is over its route's limit is refused
/// 413 before its body is touched: hyper answers `Expect: 100-continue` when a
/// handler first reads the body, so the client was told to send megabytes only to be
/// refused at the limit (a live torture run). Bodies without a declared length
/// (chunked) are still cut at the limit as they are read.
async fn declared_length_fits(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limit = body_limit(request.method(), request.uri().path());
    match declared {
        Some(length) if length > limit as u64 => ApiError::too_large(format!(
            "the request body ({length} bytes) is larger than this endpoint takes ({limit} bytes)"
        ))
        .into_response(),
        _ => next.run(request).await,
    }
}

/// The framework's own refusals are plain text or empty (a body past a route's limit,
/// a body that is not JSON or not the declared type, a chunked body that breaks off,
/// a method the path does not take): answered as JSON like every other refusal, with
/// the framework's words as the message. Client errors only: `/readyz` answers 503
/// in text on purpose.
async fn json_refusals(response: axum::response::Response) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    let status = response.status();
    if is_json || !status.is_client_error() {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::LENGTH_REQUIRED => "length_required",
        _ => "bad_request",
    };
    // The framework's headers stay (`Allow` on a 405, whatever a layer added); the
    // body and its type become the JSON refusal's.
    let (mut parts, body) = response.into_parts();
    let said = axum::body::to_bytes(body, 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            "the request body is larger than this endpoint takes".into()
        }
        StatusCode::METHOD_NOT_ALLOWED => "this path does not take that method".into(),
        _ if !said.is_empty() => said,
        _ => status.canonical_reason().unwrap_or("refused").to_string(),
    };
    let (answer, json) = ApiError::new(status, code, message)
        .into_response()
        .into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.extend(answer.headers);
    axum::response::Response::from_parts(parts, json)
}

/// Runs a store operation on the blocking pool.
pub(crate) async fn db<T, F>(state: &ApiState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> tsunagu_store::Result<T> + Send + 'static,
{
    db_then(state, f, |_, _| {}).await
}

/// [`db`] for a read of stored settings: a row this version cannot read
/// ([`tsunagu_store::StoreError::Corrupt`], a newer version's or a damaged one) is 409
/// `unreadable` naming `what`, its parse error (naming the setting) only logged; it
/// was 500.
pub(crate) async fn db_readable<T, F>(state: &ApiState, what: String, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> tsunagu_store::Result<T> + Send + 'static,
{
    let read = db(state, move |s| match f(s) {
        Err(tsunagu_store::StoreError::Corrupt(e)) => Ok(Err(e)),
        other => other.map(Ok),
    })
    .await?;
    read.map_err(|e| {
        tracing::warn!(%what, error = %e, "stored settings cannot be read");
        ApiError::unreadable(&what)
    })
}

/// [`db`] for a write the node must hear of: `announce` tells the node's hooks
/// (provisioning: this node's copy, the change feed, the peers) in the same job on the
/// blocking pool, right after the write. A handler dropped while it waits (its client
/// gone, its request timed out) cannot leave a committed write unannounced (no node
/// would have learnt of it until a restart), and the hooks' store reads run off the
/// runtime that carries the calls.
pub(crate) async fn db_then<T, F, A>(state: &ApiState, f: F, announce: A) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> tsunagu_store::Result<T> + Send + 'static,
    A: FnOnce(&dyn NodeHooks, &T) + Send + 'static,
{
    let (store, hooks) = (state.store.clone(), state.hooks.clone());
    tokio::task::spawn_blocking(move || {
        let written = f(&*store)?;
        announce(&*hooks, &written);
        Ok::<T, tsunagu_store::StoreError>(written)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(ApiError::from)
}

pub(crate) use tsunagu_store::now_ms;

/// A PATCH (of a number, an advertiser, a pool) that lost its compare-and-set to
/// another change is made again from a fresh read this many times before the client
/// is told 409.
pub(crate) const UPDATE_TRIES: usize = 3;

/// A PATCH as a compare-and-set: `attempt` reads the row, applies the patch, checks
/// the result and has the store write it only if the row is still as read, answering
/// the store's outcome and what it wrote. One that lost to another change is made
/// again from a fresh read, [`UPDATE_TRIES`] times in all, then 409: two PATCHes at
/// once, or a PATCH racing a number's move into a pool, each kept one change and lost
/// the other's (a live torture run). `what` names the row in the 409, `missing` is
/// the 404 of a row deleted meanwhile.
pub(crate) async fn patch_kept<T, F, Fut>(
    what: &str,
    missing: fn() -> ApiError,
    mut attempt: F,
) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(tsunagu_store::Update, T), ApiError>>,
{
    use tsunagu_store::Update;
    for _ in 0..UPDATE_TRIES {
        match attempt().await? {
            (Update::Updated, written) => return Ok(written),
            (Update::Missing, _) => return Err(missing()),
            (Update::Changed, _) => continue,
        }
    }
    Err(ApiError::conflict(format!(
        "{what} is being changed by other requests: try again"
    )))
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
