//! `GET /v1/tag.js`: the page tag for dynamic issuance (no authentication; the pools it
//! issues from name the web origins they allow). The script itself is `tag.js`.

use axum::http::header;
use axum::response::IntoResponse;

const TAG: &str = include_str!("tag.js");

pub async fn script() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        TAG,
    )
}
