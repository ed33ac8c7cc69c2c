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
use tsunagu_media::prompt::{parse_own, valid_name, PromptError, MAX_OWN_BYTES, MAX_OWN_PROMPTS};
use tsunagu_store::{PromptPut, PromptQuota};

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
        PromptError::Wav { source, .. } => ApiError::invalid("body", source.to_string()),
        PromptError::File { .. } => {
            tracing::error!(%e, "cannot save a prompt");
            ApiError::unavailable("the prompt could not be saved")
        }
    }
}

/// What an operator's own prompts may take together, cluster-wide.
const OWN_QUOTA: PromptQuota = PromptQuota {
    prompts: MAX_OWN_PROMPTS,
    bytes: MAX_OWN_BYTES,
};

/// The 409 of an upload the store refused.
fn over_quota(put: PromptPut) -> Option<ApiError> {
    match put {
        PromptPut::Saved => None,
        PromptPut::TooMany => Some(ApiError::conflict(format!(
            "an operator has at most {MAX_OWN_PROMPTS} prompts of its own"
        ))),
        PromptPut::TooLarge { others } => Some(ApiError::conflict(format!(
            "an operator's own prompts take at most {MAX_OWN_BYTES} bytes of WAV together \
             (600 s of audio; {others} bytes already)"
        ))),
    }
}

/// The body limit of `PUT /v1/prompts/{name}`: one prompt may take an operator's
/// whole quota (600 s; axum's default of 2 MiB cut uploads at about 131 s).
pub const BODY_LIMIT: usize = MAX_OWN_BYTES as usize;

/// Checked (name and WAV), then stored if the operator's prompts leave room (the
/// store checks and writes at once, so uploads through several nodes cannot pass the
/// cap together), then made playable here and announced to the other nodes.
pub async fn put(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
    request: axum::extract::Request,
) -> Result<Json<Value>, ApiError> {
    // A place among the uploads being read, taken before the body is: each holds up
    // to an operator's quota in memory, twice while it is decoded, and one key's 256
    // connections (or a few addresses') uploading at once held gigabytes (a review).
    let _place = st
        .defences
        .uploads
        .try_start(&op)
        .map_err(|why| crate::calls::refused(why, "prompt uploads", 5))?;
    // The route's body limit is an operator's whole quota (`BODY_LIMIT`); past it the
    // answer is JSON like every other refusal (axum's own is plain text).
    let body = <Bytes as axum::extract::FromRequest<_>>::from_request(request, &st)
        .await
        .map_err(|e| match e.status() {
            axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(format!(
                "a prompt is at most {MAX_OWN_BYTES} bytes of WAV (an operator's whole quota)"
            )),
            _ => ApiError::bad_request(None, e.body_text()),
        })?;
    let (name2, wav) = (name.clone(), body.clone());
    let prompt = tokio::task::spawn_blocking(move || parse_own(&name2, &wav))
        .await
        .map_err(|_| ApiError::unavailable("the prompt could not be saved"))?
        .map_err(refused)?;
    let seconds = prompt.seconds();
    let (op2, name2, wav) = (op.clone(), name.clone(), body.clone());
    let (op3, name3) = (op.clone(), name.clone());
    // Stored: every node loads it from the store when told (this one too, should its
    // own copy below fail), told in the same job as the write.
    let announce = move |h: &dyn crate::NodeHooks, put: &_| {
        if over_quota(*put).is_none() {
            h.prompt_changed(&op3, &name3)
        }
    };
    let put = crate::db_then(
        &st,
        move |s| s.put_prompt(&op2, &name2, &wav, OWN_QUOTA),
        announce,
    )
    .await?;
    if let Some(e) = over_quota(put) {
        return Err(e);
    }
    let prompts = st.prompts.clone();
    let (op2, name2) = (op.clone(), name.clone());
    let saved = tokio::task::spawn_blocking(move || prompts.save_own(&op2, &name2, prompt, &body))
        .await
        .map_err(|_| ApiError::unavailable("the prompt could not be saved"))?;
    // The store has it and every node (this one too) loads it from there: this node's
    // copy on its disk failing (disk full, an I/O error) is the node's to report, not a
    // refusal of an upload that went through (it was a 503 for a prompt stored,
    // counted in the quota and playing; a review).
    if let Err(e) = saved {
        st.defences.metrics.prompt_copies_unsaved.inc();
        tracing::warn!(operator = %op, prompt = %name, error = %e, "prompt stored, but this node's copy on its disk was not written");
    }
    tracing::info!(operator = %op, prompt = %name, seconds, "prompt uploaded");
    Ok(Json(json!({"name": name, "own": true, "seconds": seconds})))
}

/// Removes the operator's own prompt `name`: from the store first (a failure there
/// changes nothing), then here, and announces it to the other nodes only when there
/// was something to remove (an announcement is a row of the store's change log and a
/// reload on every node: a loop of deletes of names that do not exist must cost none).
pub async fn delete(
    OperatorId(op): OperatorId,
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !valid_name(&name) {
        return Err(refused(PromptError::Name));
    }
    // Nothing to delete, nothing read: a loop of deletes of names that do not exist
    // read every number of the operator each time before its 404 (a review).
    let (op2, name2) = (op.clone(), name.clone());
    if !st.prompts.has_own(&op, &name)
        && crate::db(&st, move |s| s.prompt(&op2, &name2))
            .await?
            .is_none()
    {
        return Err(ApiError::not_found("no prompt of yours has that name"));
    }
    // A prompt a number still names (a recording notice, an IVR menu) stays: calls
    // would go on without it (recorded without their notice). The shared prompt of
    // the same name, if any, is what the number falls back to.
    if !st.prompts.is_shared(&name) {
        let op2 = op.clone();
        let (numbers, all) = crate::db(&st, move |s| {
            Ok((s.list_numbers(&op2, None)?, s.count_numbers(&op2)?))
        })
        .await?;
        // A number this version cannot read (a newer node wrote it) may name the
        // prompt: the list leaves it out, so nothing here can tell (a review).
        if numbers.len() < all {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "unreadable",
                format!(
                "{} of this operator's numbers cannot be read by this node's version (written by a newer one): delete the prompt through a node of the newer version",
                    all - numbers.len()
                ),
            ));
        }
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
    let (store, prompts, hooks) = (st.store.clone(), st.prompts.clone(), st.hooks.clone());
    let (op2, name2) = (op.clone(), name.clone());
    // One job, whatever becomes of the request: the store's row, then this node's copy
    // and its file, then the announcement (every node drops its copy; this node's is
    // gone by then). Announced first, the node's own refresh dropped the copy from
    // memory and the file deletion, finding no copy, left the file: back at restart.
    let (stored, removed) = tokio::task::spawn_blocking(move || {
        let stored = store.delete_prompt(&op2, &name2)?;
        let removed = prompts.delete_own(&op2, &name2);
        if stored || matches!(removed, Ok(true)) {
            hooks.prompt_changed(&op2, &name2);
        }
        Ok::<_, tsunagu_store::StoreError>((stored, removed))
    })
    .await
    .map_err(|_| ApiError::unavailable("the prompt could not be deleted"))??;
    let gone = stored || matches!(removed, Ok(true));
    if let Err(e) = removed {
        if !stored {
            return Err(refused(e));
        }
        // Deleted from the store and every node told: this node's file failing to go
        // is the node's to report (it was a 503 for a deletion that happened).
        tracing::warn!(operator = %op, prompt = %name, error = %e, "prompt deleted, but this node's copy on its disk was not removed");
    }
    if gone {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no prompt of yours has that name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::api;
    use axum::http::StatusCode;

    /// A WAV of `bytes` bytes of silence.
    fn wav(bytes: u32) -> Vec<u8> {
        let mut w = tsunagu_media::wav::header(1, bytes).to_vec();
        w.resize(w.len() + bytes as usize, 0);
        w
    }

    /// Two nodes on one store: the cap counts what was uploaded through either, a
    /// replacement is not one more, and a refused upload plays nowhere.
    #[tokio::test]
    async fn the_cap_on_an_operators_prompts_is_the_clusters() {
        let a = api();
        let b = a.peer();
        for i in 0..MAX_OWN_PROMPTS {
            let node = if i % 2 == 0 { &a } else { &b };
            let up = node
                .send_bytes("PUT", &format!("/v1/prompts/p{i}"), wav(320))
                .await;
            assert_eq!(up.status, StatusCode::OK, "{}", up.text());
        }
        for node in [&a, &b] {
            let over = node
                .send_bytes("PUT", "/v1/prompts/one_more", wav(320))
                .await;
            assert_eq!(over.status, StatusCode::CONFLICT, "{}", over.text());
            assert!(
                over.text().contains("at most 50 prompts"),
                "{}",
                over.text()
            );
            assert!(node.state.prompts.get(&node.operator, "one_more").is_none());
        }
        let again = b.send_bytes("PUT", "/v1/prompts/p0", wav(640)).await;
        assert_eq!(
            again.status,
            StatusCode::OK,
            "a replacement: {}",
            again.text()
        );
    }

    /// A delete of a name no prompt has (or can have) answers 404 (422) and announces
    /// nothing to the cluster; one of a prompt the operator holds removes it everywhere.
    #[tokio::test]
    async fn deleting_what_is_not_there_changes_nothing() {
        let a = api();
        let long = "x".repeat(1000);
        let cases = [
            ("nothing_here", StatusCode::NOT_FOUND),
            (long.as_str(), StatusCode::UNPROCESSABLE_ENTITY),
            ("%2e%2e%2fsecret", StatusCode::UNPROCESSABLE_ENTITY),
        ];
        for (name, want) in cases {
            let r = a
                .send("DELETE", &format!("/v1/prompts/{name}"), Some(&a.key), "")
                .await;
            assert_eq!(r.status, want, "{name}: {}", r.text());
        }
        assert_eq!(a.announced.count(), 0, "nothing announced");
        let up = a.send_bytes("PUT", "/v1/prompts/greeting", wav(320)).await;
        assert_eq!(up.status, StatusCode::OK, "{}", up.text());
        assert_eq!(a.announced.count(), 1);
        let del = a
            .send("DELETE", "/v1/prompts/greeting", Some(&a.key), "")
            .await;
        assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text());
        assert_eq!(a.announced.count(), 2);
        assert!(a.state.prompts.get(&a.operator, "greeting").is_none());
        let again = a
            .send("DELETE", "/v1/prompts/greeting", Some(&a.key), "")
            .await;
        assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text());
        assert_eq!(a.announced.count(), 2);
    }

    /// An upload the store took is answered 200 even when this node's copy on its disk
    /// cannot be written (here: a file where its directory goes); it was 503 for a
    /// prompt stored, counted and playing. The failure is counted.
    #[tokio::test]
    async fn a_stored_prompt_is_uploaded_whatever_this_nodes_disk_does() {
        use tsunagu_store::Store;
        let a = api();
        let prompts = a._dir.path().join("prompts");
        std::fs::create_dir_all(&prompts).unwrap();
        std::fs::write(prompts.join("operators"), b"in the way").unwrap();
        let up = a.send_bytes("PUT", "/v1/prompts/greeting", wav(320)).await;
        assert_eq!(up.status, StatusCode::OK, "{}", up.text());
        assert_eq!(a.state.defences.metrics.prompt_copies_unsaved.get(), 1);
        assert!(a.store.prompt(&a.operator, "greeting").unwrap().is_some());
        assert_eq!(a.announced.count(), 1, "every node told to load it");
    }

    /// A delete of a name the operator has no prompt of is 404 before anything else is
    /// read: with a number this version cannot read, it was 409 (every number was read
    /// first, on each delete; a review). A prompt deleted from the store is 204 even
    /// when this node's file cannot be removed (here: a directory in its place); it
    /// was 503 for a deletion that happened.
    #[tokio::test]
    async fn deletes_answer_for_what_the_store_did() {
        use tsunagu_store::Store;
        let a = api();
        let key = Some(a.key.as_str());
        let number = format!(
            r#"{{"number": "0501000001", "advertiser_id": "{}", "destinations": [{{"number": "0311112222"}}]}}"#,
            a.advertiser
        );
        let r = a.send("POST", "/v1/numbers", key, &number).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        a.as_a_newer_version_wrote("numbers", "number", "0501000001");
        let r = a.send("DELETE", "/v1/prompts/nothing_here", key, "").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());

        let b = api();
        let up = b.send_bytes("PUT", "/v1/prompts/greeting", wav(320)).await;
        assert_eq!(up.status, StatusCode::OK, "{}", up.text());
        let file = b
            ._dir
            .path()
            .join("prompts/operators")
            .join(&b.operator)
            .join("greeting.wav");
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        let del = b
            .send("DELETE", "/v1/prompts/greeting", Some(&b.key), "")
            .await;
        assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text());
        assert!(b.store.prompt(&b.operator, "greeting").unwrap().is_none());
    }

    /// An operator deleted takes its prompts (the store's rows, this node's copy and
    /// file, an announcement each) and its webhooks with it: they were left in the
    /// store and on every node's disk (a review).
    #[tokio::test]
    async fn a_deleted_operator_takes_its_prompts_and_webhooks() {
        use tsunagu_store::Store;
        let a = api();
        let key = Some(a.key.as_str());
        let up = a.send_bytes("PUT", "/v1/prompts/greeting", wav(320)).await;
        assert_eq!(up.status, StatusCode::OK, "{}", up.text());
        let hook = a
            .send(
                "POST",
                "/v1/webhooks",
                key,
                r#"{"url": "https://93.184.216.34/hook"}"#,
            )
            .await;
        assert_eq!(hook.status, StatusCode::CREATED, "{}", hook.text());
        let hook_id = hook.json()["id"].as_str().unwrap().to_string();
        let adv = a
            .send(
                "DELETE",
                &format!("/v1/advertisers/{}", a.advertiser),
                key,
                "",
            )
            .await;
        assert_eq!(adv.status, StatusCode::NO_CONTENT, "{}", adv.text());
        let file = a
            ._dir
            .path()
            .join("prompts/operators")
            .join(&a.operator)
            .join("greeting.wav");
        assert!(file.exists());
        let before = a.announced.count();
        let path = format!("/v1/operators/{}", a.operator);
        let admin = Some(crate::testing::ADMIN);
        let del = a.send("DELETE", &path, admin, "").await;
        assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text());
        assert!(a.store.prompt(&a.operator, "greeting").unwrap().is_none());
        assert!(a.store.get_webhook(&hook_id).unwrap().is_none());
        assert!(!file.exists(), "this node's copy of the prompt");
        assert!(a
            .state
            .prompts
            .names(&a.operator)
            .iter()
            .all(|(_, own, _)| !own));
        assert_eq!(
            a.announced.count(),
            before + 2,
            "the prompt and the webhooks"
        );
        let again = a.send("DELETE", &path, admin, "").await;
        assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text());
    }

    /// WAV bytes together: 600 s of audio (five bodies of 1.92 MB fill it).
    #[tokio::test]
    async fn the_cap_counts_bytes_too() {
        let a = api();
        let b = a.peer();
        let fifth = (MAX_OWN_BYTES / 5) as u32 - 44;
        for (i, node) in [&a, &b, &a, &b, &a].into_iter().enumerate() {
            let up = node
                .send_bytes("PUT", &format!("/v1/prompts/q{i}"), wav(fifth))
                .await;
            assert_eq!(up.status, StatusCode::OK, "{}", up.text());
        }
        let over = a.send_bytes("PUT", "/v1/prompts/tiny", wav(2)).await;
        assert_eq!(over.status, StatusCode::CONFLICT, "{}", over.text());
        assert!(over.text().contains("9600000 bytes"), "{}", over.text());
    }

    /// One prompt may take the whole quota (a body past axum's default of 2 MiB: a
    /// 140 s prompt was refused 413); past the quota the refusal is JSON too.
    #[tokio::test]
    async fn one_prompt_may_take_the_whole_quota() {
        let a = api();
        let long = wav(140 * 16_000);
        assert!(long.len() > 2 << 20);
        let up = a.send_bytes("PUT", "/v1/prompts/long", long).await;
        assert_eq!(up.status, StatusCode::OK, "{}", up.text());
        let too_big = a
            .send_bytes("PUT", "/v1/prompts/huge", wav(MAX_OWN_BYTES as u32))
            .await;
        assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            too_big.json()["error"]["code"],
            "too_large",
            "{}",
            too_big.text()
        );
    }
}
