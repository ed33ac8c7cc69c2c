//! `GET /v1/openapi.json`: the API's OpenAPI 3.0 description, kept by hand next to the
//! handlers it describes.

use axum::http::header;
use axum::response::IntoResponse;

const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_valid_json_naming_every_route() {
        let v: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        let paths = v["paths"].as_object().unwrap();
        for p in [
            "/v1/operators",
            "/v1/operators/{id}",
            "/v1/operators/{id}/keys",
            "/v1/operators/{id}/keys/{key_id}",
            "/v1/advertisers",
            "/v1/advertisers/{id}",
            "/v1/advertisers/{id}/keys",
            "/v1/advertisers/{id}/keys/{key_id}",
            "/v1/numbers",
            "/v1/numbers/{number}",
            "/v1/calls",
            "/v1/calls/{call_id}",
            "/v1/calls/{call_id}/recording",
            "/v1/pools",
            "/v1/pools/{id}",
            "/v1/pools/{id}/issue",
            "/v1/webhooks",
            "/v1/webhooks/{id}",
            "/v1/tag.js",
            "/v1/cluster",
            "/v1/cluster/members/{name}",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(paths.contains_key(p), "{p}");
        }
        let keys = &paths["/v1/operators/{id}/keys"];
        assert!(keys["get"].is_object() && keys["post"].is_object());
        assert!(paths["/v1/operators/{id}/keys/{key_id}"]["delete"].is_object());
        assert!(paths["/v1/pools/{id}/issue"]["post"]["responses"]["429"].is_object());
    }
}
