//! Bearer-token authentication. The admin token manages operators; an operator's API
//! key sees only that operator's data; an advertiser's key (made by its operator)
//! reads only that advertiser's calls, recordings and call stream ([`CallReader`]),
//! and every other endpoint refuses it 403. Keys are looked up by their SHA-256 hash.

use crate::{db, ApiError, ApiState};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::sync::Arc;
use tsunagu_store::CallRecord;

pub enum Principal {
    Admin,
    Operator(String),
    /// An advertiser's key: its operator and the advertiser.
    Advertiser {
        operator: String,
        advertiser: String,
    },
}

impl FromRequestParts<Arc<ApiState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Principal, ApiError> {
        Ok(authenticate(parts, state).await?.0)
    }
}

/// Who the request's bearer token is, and the token's hash (empty for the admin
/// token, which is not looked up).
async fn authenticate(parts: &Parts, state: &ApiState) -> Result<(Principal, String), ApiError> {
    let token = bearer(parts)?;
    if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) {
        return Ok((Principal::Admin, String::new()));
    }
    let hash = tsunagu_store::hash_api_key(token);
    // Each kind of key is found only as its kind: an advertiser's is hashed with a
    // label of its own (see `hash_api_key`), so a row of the other kind cannot match;
    // the kind is checked again against the row all the same, so that a row written
    // with the wrong kind (an older node's, say) is refused rather than trusted.
    let advertisers = token.starts_with(tsunagu_store::ADVERTISER_KEY_PREFIX);
    let looked_up = hash.clone();
    let principal = match db(state, move |s| s.key_owner(&looked_up)).await? {
        Some(tsunagu_store::KeyOwner {
            operator_id,
            advertiser_id: None,
        }) if !advertisers => Principal::Operator(operator_id),
        Some(tsunagu_store::KeyOwner {
            operator_id,
            advertiser_id: Some(advertiser),
        }) if advertisers => Principal::Advertiser {
            operator: operator_id,
            advertiser,
        },
        _ => return Err(ApiError::unauthorized("unknown token")),
    };
    Ok((principal, hash))
}

/// The 403 the admin token gets where an operator's data is asked for.
fn admin_has_no_operator() -> ApiError {
    ApiError::forbidden("use an operator API key: the admin token belongs to no operator")
}

/// The request's bearer token.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
    header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer TOKEN`"))
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
            Principal::Admin => Err(admin_has_no_operator()),
            Principal::Advertiser { .. } => Err(advertiser_key_refused(state)),
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
            Principal::Advertiser { .. } => Err(advertiser_key_refused(state)),
        }
    }
}

/// The 403 an advertiser's key gets from an endpoint that is not its (counted in
/// `tsunagu_api_advertiser_key_refused_total`).
pub(crate) fn advertiser_key_refused(state: &ApiState) -> ApiError {
    state.defences.metrics.advertiser_key_refused.inc();
    ApiError::forbidden(
        "this is an advertiser's key: it reads that advertiser's calls, recordings and \
         call stream only (GET /v1/calls, /v1/calls/{call_id}, /v1/calls/{call_id}/recording, \
         /v1/calls/stream)",
    )
}

/// Who reads calls: an operator's key (the whole operator) or an advertiser's (that
/// advertiser alone). The call endpoints take it; everything else takes
/// [`OperatorId`], which refuses an advertiser's key.
pub struct CallReader {
    /// Whom the key speaks for: its operator and, for an advertiser's key, the one
    /// advertiser it is limited to (as the store answered when the request came).
    pub owner: tsunagu_store::KeyOwner,
    /// The key's hash: a long answer (the call stream) looks it up again now and
    /// then, and ends once the store no longer answers [`CallReader::owner`] for it
    /// (revoked, or its advertiser deleted).
    pub key_hash: String,
}

impl CallReader {
    /// The advertiser a request reads, from what it asked (`asked`, its
    /// `advertiser_id` parameter): an operator's key reads what it asked (None: all);
    /// an advertiser's key reads its own, and asking for another is refused 403.
    /// The refusal is counted in `tsunagu_api_advertiser_key_refused_total`.
    pub fn narrow(&self, st: &ApiState, asked: Option<String>) -> Result<Option<String>, ApiError> {
        match (&self.owner.advertiser_id, asked) {
            (None, asked) => Ok(asked),
            (Some(own), Some(asked)) if asked != *own => {
                st.defences.metrics.advertiser_key_refused.inc();
                Err(ApiError::forbidden(format!(
                    "this key reads advertiser {own} only"
                )))
            }
            (Some(own), _) => Ok(Some(own.clone())),
        }
    }

    /// The call `id` if this reader may read it; 404 otherwise (another operator's,
    /// another advertiser's for an advertiser's key, or none).
    pub async fn call(&self, st: &ApiState, id: String) -> Result<CallRecord, ApiError> {
        let op = self.owner.operator_id.clone();
        db(st, move |s| s.get_call(&op, &id))
            .await?
            .filter(|r| self.reads(&r.advertiser_id))
            .ok_or_else(|| ApiError::not_found("no such call"))
    }

    /// Whether a call of `advertiser_id` is this reader's (an advertiser's key reads
    /// its own only; another's answers 404, as a call of another operator does).
    pub fn reads(&self, advertiser_id: &str) -> bool {
        self.owner
            .advertiser_id
            .as_deref()
            .is_none_or(|own| own == advertiser_id)
    }
}

impl FromRequestParts<Arc<ApiState>> for CallReader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<CallReader, ApiError> {
        let (principal, key_hash) = authenticate(parts, state).await?;
        let (operator_id, advertiser_id) = match principal {
            Principal::Operator(operator) => (operator, None),
            Principal::Advertiser {
                operator,
                advertiser,
            } => (operator, Some(advertiser)),
            Principal::Admin => return Err(admin_has_no_operator()),
        };
        Ok(CallReader {
            owner: tsunagu_store::KeyOwner {
                operator_id,
                advertiser_id,
            },
            key_hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::CallReader;

    /// (key's advertiser, advertiser asked) -> advertiser read, or refused (and
    /// counted).
    #[test]
    fn an_advertisers_key_reads_its_own_advertiser_only() {
        let a = crate::testing::api();
        let rows: &[(Option<&str>, Option<&str>, Result<Option<&str>, ()>)] = &[
            (None, None, Ok(None)),
            (None, Some("adv_a"), Ok(Some("adv_a"))),
            (Some("adv_a"), None, Ok(Some("adv_a"))),
            (Some("adv_a"), Some("adv_a"), Ok(Some("adv_a"))),
            (Some("adv_a"), Some("adv_b"), Err(())),
        ];
        for (own, asked, want) in rows {
            let reader = CallReader {
                owner: tsunagu_store::KeyOwner {
                    operator_id: "op".into(),
                    advertiser_id: own.map(str::to_string),
                },
                key_hash: String::new(),
            };
            let got = reader.narrow(&a.state, asked.map(str::to_string));
            assert_eq!(
                got.as_ref().map(|a| a.as_deref()).map_err(|_| ()),
                *want,
                "{own:?} {asked:?}"
            );
            assert_eq!(reader.reads("adv_b"), own.is_none_or(|o| o == "adv_b"));
        }
        assert_eq!(a.state.defences.metrics.advertiser_key_refused.get(), 1);
    }
}
