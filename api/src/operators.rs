//! `/v1/operators` (admin token): the top account level, and their API keys.

use crate::auth::Admin;
use crate::error::parse_json;
use crate::{db, rfc3339, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tsunagu_store::Operator;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorInput {
    name: String,
}

pub(crate) fn valid_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    Ok(name.to_string())
}

fn view(o: &Operator) -> Value {
    json!({"id": o.id, "name": o.name, "created_at": rfc3339(o.created_at)})
}

pub async fn create(
    _: Admin,
    State(st): State<Arc<ApiState>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let input: OperatorInput = parse_json(&body)?;
    let name = valid_name(&input.name)?;
    let key = tsunagu_store::new_api_key();
    let hash = tsunagu_store::hash_api_key(&key);
    let op = db(&st, move |s| {
        let op = s.create_operator(&name)?;
        s.add_api_key(&op.id, &hash)?;
        Ok(op)
    })
    .await?;
    let mut v = view(&op);
    v["api_key"] = json!(key);
    Ok((StatusCode::CREATED, Json(v)))
}

pub async fn list(_: Admin, State(st): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let ops = db(&st, |s| s.list_operators()).await?;
    Ok(Json(
        json!({"operators": ops.iter().map(view).collect::<Vec<_>>()}),
    ))
}

pub async fn get_one(
    _: Admin,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let op = db(&st, move |s| s.get_operator(&id))
        .await?
        .ok_or_else(|| ApiError::not_found("no such operator"))?;
    Ok(Json(view(&op)))
}

pub async fn update(
    _: Admin,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let input: OperatorInput = parse_json(&body)?;
    let name = valid_name(&input.name)?;
    let op = db(&st, move |s| s.rename_operator(&id, &name))
        .await?
        .ok_or_else(|| ApiError::not_found("no such operator"))?;
    Ok(Json(view(&op)))
}

pub async fn delete(
    _: Admin,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if db(&st, move |s| s.delete_operator(&id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such operator"))
    }
}

pub async fn new_key(
    _: Admin,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = tsunagu_store::new_api_key();
    let hash = tsunagu_store::hash_api_key(&key);
    let found = db(&st, move |s| {
        if s.get_operator(&id)?.is_none() {
            return Ok(false);
        }
        s.add_api_key(&id, &hash)?;
        Ok(true)
    })
    .await?;
    if !found {
        return Err(ApiError::not_found("no such operator"));
    }
    Ok((StatusCode::CREATED, Json(json!({"api_key": key}))))
}
