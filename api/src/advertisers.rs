//! `/v1/advertisers` (operator key): the operator's advertisers (広告主).

use crate::auth::OperatorId;
use crate::error::parse_json;
use crate::operators::valid_name;
use crate::{db, rfc3339, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tsunagu_store::Advertiser;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvertiserInput {
    name: String,
}

fn view(a: &Advertiser) -> Value {
    json!({"id": a.id, "name": a.name, "created_at": rfc3339(a.created_at)})
}

fn not_found() -> ApiError {
    ApiError::not_found("no such advertiser")
}

pub async fn create(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let input: AdvertiserInput = parse_json(&body)?;
    let name = valid_name(&input.name)?;
    let adv = db(&st, move |s| s.create_advertiser(&op, &name)).await?;
    Ok((StatusCode::CREATED, Json(view(&adv))))
}

pub async fn list(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
) -> Result<Json<Value>, ApiError> {
    let list = db(&st, move |s| s.list_advertisers(&op)).await?;
    Ok(Json(
        json!({"advertisers": list.iter().map(view).collect::<Vec<_>>()}),
    ))
}

pub async fn get_one(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let adv = db(&st, move |s| s.get_advertiser(&op, &id))
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(view(&adv)))
}

pub async fn update(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let input: AdvertiserInput = parse_json(&body)?;
    let name = valid_name(&input.name)?;
    let adv = db(&st, move |s| s.rename_advertiser(&op, &id, &name))
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(view(&adv)))
}

pub async fn delete(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if db(&st, move |s| s.delete_advertiser(&op, &id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}
