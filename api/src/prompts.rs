//! `/v1/prompts` (operator key): the prompts a number can name. `GET` lists the
//! node's shared prompts (the defaults and the prompts directory) and the operator's
//! own; `PUT /v1/prompts/{name}` uploads an 8 kHz 16-bit PCM mono WAV as the
//! operator's own (replacing a shared one of the same name for them); `DELETE`
//! removes it.

use crate::auth::OperatorId;
use crate::{ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;
use tsunagu_media::prompt::PromptError;

pub async fn list(OperatorId(op): OperatorId, State(st): State<Arc<ApiState>>) -> Json<Value> {
    let prompts: Vec<Value> = st
        .prompts
        .names(&op)
        .into_iter()
        .map(|(name, own, seconds)| json!({"name": name, "own": own, "seconds": seconds}))
        .collect();
    Json(json!({ "prompts": prompts }))
}

fn refused(e: PromptError) -> ApiError {
    match e {
        PromptError::Name => ApiError::invalid("name", e.to_string()),
        PromptError::Limit(why) => ApiError::conflict(why),
        PromptError::Wav { source, .. } => ApiError::invalid("body", source.to_string()),
        PromptError::File { .. } => {
            tracing::error!(%e, "cannot save a prompt");
            ApiError::unavailable("the prompt could not be saved")
        }
    }
}

pub async fn put(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let prompts = st.prompts.clone();
    let (op2, name2, wav) = (op.clone(), name.clone(), body.clone());
    let seconds = tokio::task::spawn_blocking(move || prompts.save_own(&op2, &name2, &body))
        .await
        .map_err(|_| ApiError::unavailable("the prompt could not be saved"))?
        .map_err(refused)?;
    // Kept in the store too, so that every node of the cluster plays it.
    let (op2, name2) = (op.clone(), name.clone());
    crate::db(&st, move |s| s.put_prompt(&op2, &name2, &wav)).await?;
    st.hooks.prompt_changed(&op, &name);
    tracing::info!(operator = %op, prompt = %name, seconds, "prompt uploaded");
    Ok(Json(json!({"name": name, "own": true, "seconds": seconds})))
}

pub async fn delete(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    // A prompt a number still names (a recording notice, an IVR menu) stays: calls
    // would go on without it (recorded without their notice). The shared prompt of
    // the same name, if any, is what the number falls back to.
    if !st.prompts.is_shared(&name) {
        let op2 = op.clone();
        let numbers = crate::db(&st, move |s| s.list_numbers(&op2, None)).await?;
        let user = numbers.iter().find_map(|n| {
            crate::numbers::named_prompts(n)
                .into_iter()
                .find(|(_, p)| *p == name)
                .map(|(field, _)| (n.number.clone(), field))
        });
        if let Some((number, field)) = user {
            return Err(ApiError::conflict(format!(
                "number {number} uses this prompt ({field}): change it first"
            )));
        }
    }
    let prompts = st.prompts.clone();
    let (op2, name2) = (op.clone(), name.clone());
    let removed = tokio::task::spawn_blocking(move || prompts.delete_own(&op2, &name2))
        .await
        .map_err(|_| ApiError::unavailable("the prompt could not be deleted"))?
        .map_err(refused)?;
    let (op2, name2) = (op.clone(), name.clone());
    let stored = crate::db(&st, move |s| s.delete_prompt(&op2, &name2)).await?;
    st.hooks.prompt_changed(&op, &name);
    if removed || stored {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no prompt of yours has that name"))
    }
}
