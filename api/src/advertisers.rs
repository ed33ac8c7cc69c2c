//! `/v1/advertisers` (operator key): the operator's advertisers (広告主), each with an
//! optional line limit over all of its numbers (`lines`: calls over it queue), and
//! their keys (`/v1/advertisers/{id}/keys`): an advertiser's key reads that
//! advertiser's calls, recordings and call stream and nothing else (see `auth`), for
//! the advertiser's own staff and screens.

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

/// The most keys one advertiser may hold (the operator's key listing, read at every
/// key made or listed, and at every revoke on ScyllaDB, holds them all; a bound, like
/// every list an API user can grow).
pub const KEYS_PER_ADVERTISER: usize = 20;

/// `POST /v1/advertisers/{id}/keys`: a new key limited to this advertiser, shown once.
pub async fn new_key(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (key, hash, prefix) = crate::operators::key_parts(tsunagu_store::new_advertiser_key());
    let made = db(&st, move |s| {
        s.add_advertiser_key(&op, &id, &hash, &prefix, KEYS_PER_ADVERTISER)
    })
    .await?
    .ok_or_else(not_found)?;
    let mut v = crate::operators::key_view(&made);
    v["api_key"] = json!(key);
    Ok((StatusCode::CREATED, Json(v)))
}

/// `GET /v1/advertisers/{id}/keys`: the advertiser's keys (ids, prefixes, never the
/// keys).
pub async fn list_keys(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let keys = db(&st, move |s| {
        if s.get_advertiser(&op, &id)?.is_none() {
            return Ok(None);
        }
        let mut keys = s.list_api_keys(&op)?;
        keys.retain(|k| k.is_of(&id));
        Ok(Some(keys))
    })
    .await?
    .ok_or_else(not_found)?;
    Ok(Json(json!({
        "keys": keys.iter().map(crate::operators::key_view).collect::<Vec<_>>()
    })))
}

/// `DELETE /v1/advertisers/{id}/keys/{key_id}`: the key stops working at once.
pub async fn revoke_key(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let revoked = db(&st, move |s| s.revoke_api_key(&op, &key_id, Some(&id))).await?;
    if revoked {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such key"))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use tsunagu_store::Store;

    /// An advertiser's key (made with its operator's key) reads that advertiser's
    /// calls, call and recording and nothing of another advertiser's (404 for a call,
    /// 403 for asking by id), is refused 403 by every other endpoint, is made only
    /// for the operator's own advertisers, at most [`super::KEYS_PER_ADVERTISER`],
    /// and stops working when revoked.
    #[tokio::test]
    async fn an_advertisers_key_reads_its_own_calls_and_nothing_else() {
        let a = crate::testing::api();
        let op_key = Some(a.key.as_str());
        let shop = a.advertiser.clone();
        let cafe = a
            .store
            .create_advertiser(&a.operator, "cafe", None)
            .unwrap()
            .id;
        let now = tsunagu_store::now_ms();
        let mut mine = tsunagu_store::conformance::sample_call(&a.operator, &shop, now - 2000);
        mine.recording = Some("2026-12-07/none.wav".into());
        let mut theirs = tsunagu_store::conformance::sample_call(&a.operator, &cafe, now - 1000);
        theirs.recording = Some("2026-12-07/none.wav".into());
        a.store
            .insert_calls(&[mine.clone(), theirs.clone()], &[])
            .unwrap();
        let made = a
            .send("POST", &format!("/v1/advertisers/{shop}/keys"), op_key, "")
            .await;
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.text());
        let made = made.json();
        assert_eq!(made["advertiser_id"], shop.as_str());
        let key = made["api_key"].as_str().unwrap().to_string();
        assert!(key.starts_with("tsa_"), "{key}");
        let adv_key = Some(key.as_str());

        let listed = a.send("GET", "/v1/calls", adv_key, "").await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.text());
        let ids: Vec<String> = listed.json()["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["call_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, vec![mine.call_id.clone()]);
        let csv = a.send("GET", "/v1/calls?format=csv", adv_key, "").await;
        assert_eq!(csv.status, StatusCode::OK);
        assert!(csv.text().contains(&mine.call_id), "{}", csv.text());
        assert!(!csv.text().contains(&theirs.call_id), "{}", csv.text());
        let rows = [
            (format!("/v1/calls?advertiser_id={shop}"), StatusCode::OK),
            (format!("/v1/calls/{}", mine.call_id), StatusCode::OK),
            (
                format!("/v1/calls?advertiser_id={cafe}"),
                StatusCode::FORBIDDEN,
            ),
            (
                format!("/v1/calls/stream?advertiser_id={cafe}"),
                StatusCode::FORBIDDEN,
            ),
            (
                format!("/v1/calls/{}", theirs.call_id),
                StatusCode::NOT_FOUND,
            ),
            (
                format!("/v1/calls/{}/recording", theirs.call_id),
                StatusCode::NOT_FOUND,
            ),
            ("/v1/numbers".to_string(), StatusCode::FORBIDDEN),
            ("/v1/advertisers".to_string(), StatusCode::FORBIDDEN),
            (format!("/v1/advertisers/{shop}"), StatusCode::FORBIDDEN),
            (
                format!("/v1/advertisers/{shop}/keys"),
                StatusCode::FORBIDDEN,
            ),
            (
                format!("/v1/operators/{}/keys", a.operator),
                StatusCode::FORBIDDEN,
            ),
            ("/v1/webhooks".to_string(), StatusCode::FORBIDDEN),
            ("/v1/operators".to_string(), StatusCode::FORBIDDEN),
        ];
        for (path, want) in rows {
            let got = a.send("GET", &path, adv_key, "").await;
            assert_eq!(got.status, want, "GET {path}: {}", got.text());
            if want == StatusCode::NOT_FOUND {
                assert!(
                    got.text().contains("no such call"),
                    "GET {path}: {}",
                    got.text()
                );
            }
        }
        // Its own call's recording is looked for (the file is not there: 404 of
        // another kind than "no such call").
        let rec = a
            .send(
                "GET",
                &format!("/v1/calls/{}/recording", mine.call_id),
                adv_key,
                "",
            )
            .await;
        assert_eq!(rec.status, StatusCode::NOT_FOUND, "{}", rec.text());
        assert!(!rec.text().contains("no such call"), "{}", rec.text());
        assert!(rec.text().contains("recording"), "{}", rec.text());
        for (method, path) in [
            ("POST", format!("/v1/advertisers/{shop}/keys")),
            ("DELETE", format!("/v1/advertisers/{shop}")),
            ("POST", "/v1/advertisers".to_string()),
        ] {
            let got = a.send(method, &path, adv_key, r#"{"name": "x"}"#).await;
            assert_eq!(
                got.status,
                StatusCode::FORBIDDEN,
                "{method} {path}: {}",
                got.text()
            );
        }
        assert!(
            a.store
                .get_advertiser(&a.operator, &shop)
                .unwrap()
                .is_some(),
            "nothing changed"
        );
        // Every 403 above counted: nine GETs and three changes.
        assert_eq!(a.state.defences.metrics.advertiser_key_refused.get(), 12);

        // Only for the operator's own advertisers.
        let stranger = a.store.create_operator("b").unwrap();
        let far = a
            .store
            .create_advertiser(&stranger.id, "far", None)
            .unwrap()
            .id;
        for adv in [far.as_str(), "adv_missing"] {
            let got = a
                .send("POST", &format!("/v1/advertisers/{adv}/keys"), op_key, "")
                .await;
            assert_eq!(got.status, StatusCode::NOT_FOUND, "{adv}: {}", got.text());
        }
        // Capped per advertiser.
        for _ in 1..super::KEYS_PER_ADVERTISER {
            let got = a
                .send("POST", &format!("/v1/advertisers/{shop}/keys"), op_key, "")
                .await;
            assert_eq!(got.status, StatusCode::CREATED);
        }
        let over = a
            .send("POST", &format!("/v1/advertisers/{shop}/keys"), op_key, "")
            .await;
        assert_eq!(over.status, StatusCode::CONFLICT, "{}", over.text());
        let keys = a
            .send("GET", &format!("/v1/advertisers/{shop}/keys"), op_key, "")
            .await
            .json();
        assert_eq!(
            keys["keys"].as_array().unwrap().len(),
            super::KEYS_PER_ADVERTISER
        );
        assert!(!keys.to_string().contains(&key), "never the key itself");
        // Revoked through another advertiser's path: no such key; through its own: gone.
        let id = made["id"].as_str().unwrap();
        let wrong = a
            .send(
                "DELETE",
                &format!("/v1/advertisers/{cafe}/keys/{id}"),
                op_key,
                "",
            )
            .await;
        assert_eq!(wrong.status, StatusCode::NOT_FOUND);
        let revoked = a
            .send(
                "DELETE",
                &format!("/v1/advertisers/{shop}/keys/{id}"),
                op_key,
                "",
            )
            .await;
        assert_eq!(revoked.status, StatusCode::NO_CONTENT);
        let after = a.send("GET", "/v1/calls", adv_key, "").await;
        assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    }

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
