//! The web screens (SPEC 5.5), served by every node's API: the incoming-call screen
//! (着信通知画面, `/ui/live`: calls as they ring and are answered, from the live call
//! stream) and the call log screen (`/ui/calls`: search, sort, CSV download). Static
//! pages with no data of their own: the script calls the API with the operator's key,
//! which the user types in (or opens with a `#key=` fragment), kept in the tab's
//! session storage. A strict content security policy allows only this node's own
//! scripts, styles and API.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const LIVE: &str = include_str!("ui/live.html");
const CALLS: &str = include_str!("ui/calls.html");
const SCRIPT: &str = include_str!("ui/screens.js");
const STYLE: &str = include_str!("ui/screens.css");

/// Only this origin's script, style and API; no frames, no plug-ins, no inline code.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

fn page(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/live") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/live") }))
        .route(
            "/ui/live",
            get(|| async { page("text/html; charset=utf-8", LIVE) }),
        )
        .route(
            "/ui/calls",
            get(|| async { page("text/html; charset=utf-8", CALLS) }),
        )
        .route(
            "/ui/screens.js",
            get(|| async { page("application/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/screens.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
}
