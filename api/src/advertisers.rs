//! `/v1/advertisers` (operator key): the operator's advertisers (広告主), each with an
//! optional line limit over all of its numbers (`lines`: calls over it queue).

use crate::auth::OperatorId;
use crate::error::parse_json;
use crate::follow_up::present;
use crate::operators::valid_name;
use crate::{db, db_then, rfc3339, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tsunagu_store::{Advertiser, LineLimit, Update};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvertiserInput {
    name: String,
    #[serde(default)]
    lines: Option<LineLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvertiserPatch {
    name: Option<String>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    lines: Option<Option<LineLimit>>,
}

fn view(a: &Advertiser) -> Value {
    json!({"id": a.id, "name": a.name, "lines": a.lines, "created_at": rfc3339(a.created_at)})
}

fn validate_lines(lines: Option<&LineLimit>) -> Result<(), ApiError> {
    let Some(l) = lines else { return Ok(()) };
    if !(1..=10_000).contains(&l.max_lines) {
        return Err(ApiError::invalid("lines.max_lines", "must be 1 to 10000"));
    }
    crate::numbers::check_wait("lines.max_wait_seconds", l.max_wait_seconds)
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
    validate_lines(input.lines.as_ref())?;
    let lines = input.lines;
    let cap = st.defences.max_advertisers_per_operator;
    let announce = |h: &dyn crate::NodeHooks, adv: &Advertiser| {
        h.advertiser_changed(&adv.operator_id, &adv.id)
    };
    let adv = db_then(
        &st,
        move |s| {
            // Counted first: requests in flight at once may pass together, by their number.
            if s.list_advertisers(&op)?.len() >= cap {
                return Err(tsunagu_store::StoreError::InUse(format!(
                    "an operator has at most {cap} advertisers (api.max_advertisers_per_operator)"
                )));
            }
            s.create_advertiser(&op, &name, lines)
        },
        announce,
    )
    .await?;
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
    let patch: AdvertiserPatch = parse_json(&body)?;
    let name = patch.name.as_deref().map(valid_name).transpose()?;
    if let Some(lines) = &patch.lines {
        validate_lines(lines.as_ref())?;
    }
    let (st, op, id, patch) = (&st, &op, &id, &patch);
    let adv = crate::patch_kept(&format!("advertiser {id}"), not_found, || {
        let name = name.clone();
        async move {
            let (owner, adv_id) = (op.clone(), id.clone());
            let read = db(st, move |s| s.get_advertiser(&owner, &adv_id))
                .await?
                .ok_or_else(not_found)?;
            let adv = Advertiser {
                name: name.unwrap_or_else(|| read.name.clone()),
                lines: patch.lines.unwrap_or(read.lines),
                ..read.clone()
            };
            let saved = adv.clone();
            let (owner, adv_id) = (adv.operator_id.clone(), adv.id.clone());
            let outcome = db_then(
                st,
                move |s| s.update_advertiser(&saved, &read),
                move |h, outcome| {
                    if *outcome == Update::Updated {
                        h.advertiser_changed(&owner, &adv_id)
                    }
                },
            )
            .await?;
            Ok((outcome, adv))
        }
    })
    .await?;
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

#[cfg(test)]
mod tests {

    /// Two PATCHes of one advertiser at once through two nodes, one renaming it and
    /// one setting its line limit: both changes are kept (each was a
    /// read-modify-write, and one was lost).
    #[tokio::test]
    async fn concurrent_changes_of_an_advertiser_are_both_kept() {
        let a = crate::testing::api();
        let path = format!("/v1/advertisers/{}", a.advertiser);
        a.both_patches_kept(
            &path,
            r#"{"name": "shop", "lines": null}"#,
            |round| format!(r#"{{"name": "shop {round}"}}"#),
            |round| {
                format!(
                    r#"{{"lines": {{"max_lines": {}, "max_wait_seconds": 30}}}}"#,
                    round + 1
                )
            },
            |round, now| {
                assert_eq!(now["name"], format!("shop {round}"), "round {round}: {now}");
                assert_eq!(now["lines"]["max_lines"], round + 1, "round {round}: {now}");
            },
        )
        .await;
    }
}
