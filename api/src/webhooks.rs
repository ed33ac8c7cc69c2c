//! `/v1/webhooks` (operator key): where the operator's call events go. Each webhook
//! gets a secret at creation (shown once) that signs every delivery:
//! `Tsunagu-Signature: t={unix seconds},v1={hex HMAC-SHA256 of "{t}.{body}"}`.

use crate::auth::OperatorId;
use crate::error::parse_json;
use crate::{db, now_ms, rfc3339, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tsunagu_store::Webhook;

/// The event types a webhook can subscribe to.
pub const EVENT_TYPES: [&str; 4] = [
    "call.started",
    "call.answered",
    "call.ended",
    "recording.ready",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookInput {
    url: String,
    /// Empty or absent: every event type.
    #[serde(default)]
    events: Vec<String>,
}

fn view(h: &Webhook) -> Value {
    json!({
        "id": h.id,
        "url": h.url,
        "events": h.events,
        "created_at": rfc3339(h.created_at),
    })
}

pub async fn create(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let input: WebhookInput = parse_json(&body)?;
    if input.url.len() > 2000 {
        return Err(ApiError::invalid("url", "at most 2000 characters"));
    }
    if let Some(e) = tsunagu_config::http_url_error(&input.url) {
        return Err(ApiError::invalid("url", e));
    }
    for (i, e) in input.events.iter().enumerate() {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::invalid(
                &format!("events[{i}]"),
                format!("`{e}` is not one of {}", EVENT_TYPES.join(", ")),
            ));
        }
    }
    let op2 = op.clone();
    if db(&st, move |s| s.list_webhooks(&op2)).await?.len() >= 20 {
        return Err(ApiError::conflict("an operator has at most 20 webhooks"));
    }
    let hook = Webhook {
        id: tsunagu_store::new_id("wh"),
        operator_id: op,
        url: input.url,
        secret: tsunagu_store::new_api_key().replacen("tsk_", "whsec_", 1),
        events: input.events,
        created_at: now_ms(),
    };
    let h = hook.clone();
    db(&st, move |s| s.create_webhook(&h)).await?;
    st.hooks.webhooks_changed(&hook.operator_id);
    let mut v = view(&hook);
    v["secret"] = json!(hook.secret);
    Ok((StatusCode::CREATED, Json(v)))
}

pub async fn list(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
) -> Result<Json<Value>, ApiError> {
    let hooks = db(&st, move |s| s.list_webhooks(&op)).await?;
    Ok(Json(
        json!({"webhooks": hooks.iter().map(view).collect::<Vec<_>>()}),
    ))
}

pub async fn delete(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let o = op.clone();
    if db(&st, move |s| s.delete_webhook(&o, &id)).await? {
        st.hooks.webhooks_changed(&op);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such webhook"))
    }
}
