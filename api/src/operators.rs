//! `/v1/operators` (admin token): the top account level, and their API keys. Keys are
//! stored hashed: a key is shown once when made, and listed afterwards by its id and
//! prefix (`tsk_` and 8 more characters). An operator may list and revoke its own keys.

use crate::auth::{Admin, Principal};
use crate::error::parse_json;
use crate::{db, rfc3339, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tsunagu_store::{ApiKey, Operator};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorInput {
    name: String,
}

/// An operator's or advertiser's name: 1 to 200 characters, none a control character
/// (a NUL, a line break or an escape would reach exports, logs and screens as is).
pub(crate) fn valid_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "must not contain control characters",
        ));
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
    let (key, hash, prefix) = new_key_parts();
    let (op, listed) = db(&st, move |s| {
        let op = s.create_operator(&name)?;
        // Two writes: an operator whose key could not be stored is taken back (best
        // effort), so a retry of the request does not leave a keyless twin behind.
        match s.add_api_key(&op.id, &hash, &prefix) {
            Ok(listed) => Ok((op, listed)),
            Err(e) => {
                let _ = s.delete_operator(&op.id);
                Err(e)
            }
        }
    })
    .await?;
    let mut v = view(&op);
    v["api_key"] = json!(key);
    v["api_key_id"] = json!(listed.id);
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
    let (store, prompts, hooks) = (st.store.clone(), st.prompts.clone(), st.hooks.clone());
    // One job, whatever becomes of the request: the store's rows (the operator, its
    // keys, webhooks and prompts), then this node's copies of the prompts and their
    // files, then the announcements (every node drops its copies; see
    // `prompts::delete`).
    let deleted = tokio::task::spawn_blocking(move || {
        let deleted = store.delete_operator(&id)?;
        if let Some(names) = &deleted {
            for name in names {
                if let Err(e) = prompts.delete_own(&id, name) {
                    tracing::warn!(%e, operator = %id, name = %name, "a deleted operator's prompt file stays on this node's disk");
                }
                hooks.prompt_changed(&id, name);
            }
            hooks.webhooks_changed(&id);
        }
        Ok::<_, tsunagu_store::StoreError>(deleted)
    })
    .await
    .map_err(|_| ApiError::unavailable("the deletion did not finish"))?;
    match deleted {
        Ok(Some(_)) => Ok(StatusCode::NO_CONTENT),
        Ok(None) => Err(ApiError::not_found("no such operator")),
        Err(e) => Err(e.into()),
    }
}

/// A new key, its hash (what is stored) and its prefix (what it is listed by).
fn new_key_parts() -> (String, String, String) {
    key_parts(tsunagu_store::new_api_key())
}

/// A key, its hash and the prefix it is listed by.
pub(crate) fn key_parts(key: String) -> (String, String, String) {
    let hash = tsunagu_store::hash_api_key(&key);
    let prefix = key.chars().take(KEY_PREFIX_CHARS).collect();
    (key, hash, prefix)
}

/// `tsk_` (an advertiser's key: `tsa_`) and 8 characters: enough to tell keys apart,
/// 32 of the key's 128 bits.
const KEY_PREFIX_CHARS: usize = 12;

/// A key as listed: `advertiser_id` names the advertiser an advertiser's key is
/// limited to (null for the operator's own keys).
pub(crate) fn key_view(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "prefix": k.prefix,
        "created_at": rfc3339(k.created_at),
        "advertiser_id": k.advertiser_id,
    })
}

fn no_operator() -> ApiError {
    ApiError::not_found("no such operator")
}

/// The admin for any operator; an operator's key for that operator only (any other id
/// answers 404, as everywhere).
fn may_manage_keys(st: &ApiState, who: &Principal, operator_id: &str) -> Result<(), ApiError> {
    match who {
        Principal::Admin => Ok(()),
        Principal::Operator(op) if op == operator_id => Ok(()),
        Principal::Operator(_) => Err(no_operator()),
        Principal::Advertiser { .. } => Err(crate::auth::advertiser_key_refused(st)),
    }
}

pub async fn new_key(
    _: Admin,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (key, hash, prefix) = new_key_parts();
    let listed = db(&st, move |s| {
        if s.get_operator(&id)?.is_none() {
            return Ok(None);
        }
        s.add_api_key(&id, &hash, &prefix).map(Some)
    })
    .await?
    .ok_or_else(no_operator)?;
    let mut v = key_view(&listed);
    v["api_key"] = json!(key);
    Ok((StatusCode::CREATED, Json(v)))
}

/// `GET /v1/operators/{id}/keys`: ids, prefixes and creation times (never the keys).
pub async fn list_keys(
    who: Principal,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    may_manage_keys(&st, &who, &id)?;
    let keys = db(&st, move |s| {
        if s.get_operator(&id)?.is_none() {
            return Ok(None);
        }
        s.list_api_keys(&id).map(Some)
    })
    .await?
    .ok_or_else(no_operator)?;
    Ok(Json(
        json!({"keys": keys.iter().map(key_view).collect::<Vec<_>>()}),
    ))
}

/// `DELETE /v1/operators/{id}/keys/{key_id}`: the key stops working at once (every
/// request looks its key up in the store; nothing is cached).
pub async fn revoke_key(
    who: Principal,
    State(st): State<Arc<ApiState>>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    may_manage_keys(&st, &who, &id)?;
    if db(&st, move |s| s.revoke_api_key(&id, &key_id, None)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such key"))
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names() {
        let cases: &[(&str, Option<&str>)] = &[
            ("shop", Some("shop")),
            ("  渋谷店  ", Some("渋谷店")),
            ("", None),
            ("   ", None),
            ("a\u{0}b", None),
            ("a\nb", None),
            ("a\u{1b}[31mb", None),
            ("a\u{85}b", None),
            ("a\tb", None),
        ];
        for (name, want) in cases {
            assert_eq!(valid_name(name).ok().as_deref(), *want, "{name:?}");
        }
        assert!(valid_name(&"x".repeat(200)).is_ok());
        assert!(valid_name(&"x".repeat(201)).is_err());
    }
}
