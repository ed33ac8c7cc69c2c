//! API errors: one JSON shape, `{"error": {"code", "message", "field"}}`, with the HTTP
//! status that fits (and `Retry-After` where waiting helps). Store errors map to 409
//! (conflict, in use) or 503 (unavailable).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use tsunagu_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A refusal with this status and code (also the framework's own, see
    /// `json_refusals`).
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn bad_request(field: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            field: field.map(str::to_string),
            ..Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
        }
    }
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.to_string()),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
        }
    }
    /// The same error with its field placed under `prefix` (e.g. `destinations[0]`
    /// inside `ivr.routes.1`).
    pub fn within(mut self, prefix: &str) -> ApiError {
        self.field = Some(match self.field {
            Some(f) => format!("{prefix}.{f}"),
            None => prefix.to_string(),
        });
        self
    }

    /// 413: a body over the route's limit.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 409 `unreadable`: `what` (a number, a pool) has stored settings this node's
    /// version cannot read: a newer version wrote them during an upgrade, or they were
    /// damaged. Not 500: the client is told what to do.
    pub fn unreadable(what: &str) -> ApiError {
        Self::new(
            StatusCode::CONFLICT,
            "unreadable",
            format!("{what}: its stored settings cannot be read by this node's version (written by a newer one, or damaged): read or change it through a node of the newer version"),
        )
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// 429 with `Retry-After: seconds`.
    pub fn too_many_requests(seconds: u64, message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).retry_after(seconds)
    }
    /// The same error with a `Retry-After` header.
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(_) => ApiError::conflict(e.to_string()),
            StoreError::InUse(_) => ApiError::conflict(e.to_string()),
            StoreError::Unavailable(_) => ApiError::unavailable(e.to_string()),
            StoreError::Corrupt(_) => ApiError::internal(e.to_string()),
            StoreError::TimedOut(_) => ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "search_timeout",
                e.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        response
    }
}

/// Parses a JSON body strictly; errors name the offending field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(None, "a JSON body is required"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        let message = e.inner().to_string();
        ApiError {
            field,
            ..ApiError::bad_request(None, message)
        }
    })?;
    // One JSON value and nothing after it but whitespace (`{...}garbage` is malformed).
    de.end()
        .map_err(|e| ApiError::bad_request(None, e.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body is one JSON value: what follows it, but whitespace, makes it malformed
    /// (it was taken, the garbage ignored).
    #[test]
    fn a_json_body_is_one_value_and_nothing_after_it() {
        #[derive(serde::Deserialize)]
        struct Named {
            #[allow(dead_code)]
            name: String,
        }
        assert!(parse_json::<Named>(br#"{"name":"x"}  "#).is_ok());
        for bad in [
            &br#"{"name":"x"}garbage"#[..],
            br#"{"name":"x"}{"name":"y"}"#,
            b"",
        ] {
            let e = parse_json::<Named>(bad).err().expect("refused");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
    }
}
