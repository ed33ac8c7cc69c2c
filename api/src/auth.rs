//! Bearer-token authentication. The admin token manages operators; an operator's API
//! key sees only that operator's data. Keys are looked up by their SHA-256 hash.

use crate::{db, ApiError, ApiState};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::sync::Arc;

pub enum Principal {
    Admin,
    Operator(String),
}

impl FromRequestParts<Arc<ApiState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Principal, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer TOKEN`"))?;
        if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) {
            return Ok(Principal::Admin);
        }
        let hash = tsunagu_store::hash_api_key(token);
        match db(state, move |s| s.operator_for_key(&hash)).await? {
            Some(op) => Ok(Principal::Operator(op)),
            None => Err(ApiError::unauthorized("unknown token")),
        }
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An authenticated operator (an admin token is refused: it belongs to no operator).
pub struct OperatorId(pub String);

impl FromRequestParts<Arc<ApiState>> for OperatorId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<OperatorId, ApiError> {
        match Principal::from_request_parts(parts, state).await? {
            Principal::Operator(id) => Ok(OperatorId(id)),
            Principal::Admin => Err(ApiError::forbidden(
                "use an operator API key: the admin token belongs to no operator",
            )),
        }
    }
}

/// The admin (operator keys are refused).
pub struct Admin;

impl FromRequestParts<Arc<ApiState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Admin, ApiError> {
        match Principal::from_request_parts(parts, state).await? {
            Principal::Admin => Ok(Admin),
            Principal::Operator(_) => {
                Err(ApiError::forbidden("this endpoint needs the admin token"))
            }
        }
    }
}
