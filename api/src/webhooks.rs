//! `/v1/webhooks` (operator key): where the operator's call events go. Each webhook
//! gets a secret at creation (shown once) that signs every delivery:
//! `Tsunagu-Signature: t={unix seconds},v1={hex HMAC-SHA256 of "{t}.{body}"}`.
//!
//! A webhook URL must reach a public address (or a network the node's operator
//! allow-listed): its host, or every address its name resolves to now, is checked
//! against the node's egress policy, so a tenant cannot aim the node at its loopback,
//! the cloud metadata service or the carrier's private network (SSRF). The delivery
//! connector checks again at every connect, which is what defeats DNS rebinding.

use crate::auth::OperatorId;
use crate::error::parse_json;
use crate::{db, db_then, now_ms, rfc3339, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tsunagu_store::Webhook;

/// Webhooks one operator may have: each call event becomes this many deliveries.
const MAX_WEBHOOKS: usize = 20;

/// Registrations resolving a name at once, on the node and per operator. A lookup
/// runs on the blocking pool the whole API and the call-log's helpers share, and goes
/// on after its 5 s timeout for as long as the system resolver takes: one key
/// registering names whose server never answers, hundreds at a time, held every
/// thread of that pool (a review). Past these, 503 with `Retry-After`.
pub(crate) const MAX_RESOLVING: u32 = 8;
pub(crate) const MAX_RESOLVING_PER_OPERATOR: u32 = 2;

/// How long a webhook host's name may take to resolve at registration.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Addresses of one name checked at most (every one must be allowed).
const MAX_ADDRESSES: usize = 16;

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
    // Each type once: so a list is at most EVENT_TYPES long in every node's cache,
    // however long the body that carried it.
    for (i, e) in input.events.iter().enumerate() {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::invalid(
                &format!("events[{i}]"),
                format!("`{e}` is not one of {}", EVENT_TYPES.join(", ")),
            ));
        }
        if input.events[..i].contains(e) {
            return Err(ApiError::invalid(
                &format!("events[{i}]"),
                format!("`{e}` is listed twice"),
            ));
        }
    }
    check_destination(&st, &op, &input.url).await?;
    let hook = Webhook {
        id: tsunagu_store::new_id("wh"),
        operator_id: op,
        url: input.url,
        secret: tsunagu_store::new_api_key().replacen("tsk_", "whsec_", 1),
        events: input.events,
        created_at: now_ms(),
    };
    let h = hook.clone();
    let op = hook.operator_id.clone();
    db_then(
        &st,
        move |s| s.create_webhook(&h, MAX_WEBHOOKS),
        move |hooks, _| hooks.webhooks_changed(&op),
    )
    .await?;
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
    let announced = move |hooks: &dyn crate::NodeHooks, deleted: &bool| {
        if *deleted {
            hooks.webhooks_changed(&op)
        }
    };
    if db_then(&st, move |s| s.delete_webhook(&o, &id), announced).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such webhook"))
    }
}

/// Refuses a URL whose host is, or resolves to, an address the node may not deliver
/// to. A name must resolve now, and every address it resolves to must be allowed (the
/// connector later uses only allowed ones, but a name that mixes in a private address
/// is refused outright).
async fn check_destination(st: &ApiState, operator: &str, url: &str) -> Result<(), ApiError> {
    url.parse::<axum::http::Uri>()
        .map_err(|_| ApiError::invalid("url", format!("`{url}` is not a URL")))?;
    // Host and port as delivery reads them (`tsunagu_config::egress::url_target`):
    // read apart, a URL with port 0 was accepted here and every event to it failed (a
    // live torture run).
    let target = tsunagu_config::egress::url_target(url)
        .map_err(|e| ApiError::invalid("url", e.to_string()))?;
    let (host, port) = (target.host.as_str(), target.port);
    // For a name, the refusal says neither whether it resolved nor to what: an
    // operator's key probing names told the carrier's internal DNS apart ("`db.corp`
    // is private (10.0.3.4:80)" against "does not resolve"; a review). An address
    // given as such is explained.
    let literal = host.parse::<IpAddr>().ok();
    let unusable = || {
        ApiError::invalid(
            "url",
            format!(
                "`{host}` does not resolve to a public address: webhooks go to public addresses only, unless the node's notify.allowed_networks lists the network"
            ),
        )
    };
    let addrs: Vec<SocketAddr> = match literal {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => {
            // The cap first (the store checks it again as it writes): a registration
            // refused by it costs no name lookup.
            let owner = operator.to_string();
            if db(st, move |s| s.list_webhooks(&owner)).await?.len() >= MAX_WEBHOOKS {
                return Err(ApiError::conflict(format!(
                    "an operator has at most {MAX_WEBHOOKS} webhooks"
                )));
            }
            let place = st
                .defences
                .registrations
                .try_start(operator)
                .map_err(|why| crate::calls::refused(why, "webhook registrations", 5))?;
            // The place goes with the lookup's thread, not with this request: a lookup
            // outlives the timeout for as long as the system resolver takes, and the
            // places are there to bound those threads (a check of the day's fixes).
            let name = host.to_string();
            let lookup = tokio::task::spawn_blocking(move || {
                let _place = place;
                std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), port))
                    .map(|found| found.take(MAX_ADDRESSES).collect::<Vec<_>>())
            });
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(Ok(found))) => found,
                _ => Vec::new(),
            }
        }
    };
    if addrs.is_empty() {
        return Err(unusable());
    }
    for addr in addrs {
        if let Err(why) = st.channels.egress.check(addr) {
            st.channels
                .egress_refused
                .get_or_create(&crate::EgressLabel {
                    stage: "registration",
                    class: why.as_str(),
                })
                .inc();
            if literal.is_none() {
                return Err(unusable());
            }
            return Err(ApiError::invalid(
                "url",
                format!(
                    "`{host}` is {why}: webhooks go to public addresses only, unless the node's notify.allowed_networks lists the network"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::testing::api;
    use axum::http::StatusCode;

    /// Event lists: each known type at most once (a 2 MB list of one type would sit in
    /// every node's webhook cache); nothing is stored from a refused request.
    #[tokio::test]
    async fn event_lists_name_known_types_once() {
        let a = api();
        let body = |events: &str| {
            format!(r#"{{"url": "https://93.184.216.34/hook", "events": {events}}}"#)
        };
        let many = format!("[{}]", vec![r#""call.ended""#; 10_000].join(","));
        let rows: &[(&str, StatusCode, Option<&str>)] = &[
            (
                r#"["call.ended", "call.started"]"#,
                StatusCode::CREATED,
                None,
            ),
            ("[]", StatusCode::CREATED, None),
            (
                r#"["call.ended", "call.ended"]"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("events[1]"),
            ),
            (&many, StatusCode::UNPROCESSABLE_ENTITY, Some("events[1]")),
            (
                r#"["call.exploded"]"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("events[0]"),
            ),
        ];
        for (events, status, field) in rows {
            let r = a
                .send("POST", "/v1/webhooks", Some(&a.key), &body(events))
                .await;
            assert_eq!(r.status, *status, "{events:.60}: {}", r.text());
            if let Some(field) = field {
                assert_eq!(r.json()["error"]["field"], *field, "{}", r.text());
            }
        }
        let listed = a.send("GET", "/v1/webhooks", Some(&a.key), "").await.json();
        assert_eq!(listed["webhooks"].as_array().unwrap().len(), 2, "{listed}");
    }

    #[tokio::test]
    async fn a_refused_name_tells_nothing_of_where_it_resolves() {
        let a = api();
        let refusal = |host: &'static str| {
            let body = format!(r#"{{"url": "http://{host}:8080/", "events": ["call.ended"]}}"#);
            let a = &a;
            async move {
                let r = a.send("POST", "/v1/webhooks", Some(&a.key), &body).await;
                assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
                r.json()["error"]["message"]
                    .as_str()
                    .unwrap()
                    .replace(host, "HOST")
            }
        };
        let private = refusal("localhost").await;
        let unknown = refusal("no-such-host.invalid").await;
        assert_eq!(
            private, unknown,
            "a name that resolves privately and one that does not"
        );
        assert!(
            !private.contains("127.0.0.1") && !private.contains("loopback"),
            "{private}"
        );
        // An address given as such is explained.
        let body = r#"{"url": "http://127.0.0.1:8080/", "events": ["call.ended"]}"#;
        let r = a.send("POST", "/v1/webhooks", Some(&a.key), body).await;
        assert!(r.text().contains("loopback"), "{}", r.text());
    }

    /// A registration naming a host takes one of a few places while its name
    /// resolves (lookups outlive their timeout on the shared blocking pool); past its
    /// operator's share it is refused 503 with Retry-After before any lookup, and an
    /// operator at its webhook cap is refused before resolving anything. An address
    /// given as such needs no place.
    #[tokio::test]
    async fn name_lookups_of_registrations_are_bounded() {
        let a = api();
        // Every place the operator may hold, taken.
        let take_places = || -> Vec<_> {
            (0..super::MAX_RESOLVING_PER_OPERATOR)
                .map(|_| {
                    a.state
                        .defences
                        .registrations
                        .try_start(&a.operator)
                        .unwrap()
                })
                .collect()
        };
        let places = take_places();
        let named = r#"{"url": "https://hooks.example.com/x", "events": ["call.ended"]}"#;
        let r = a.send("POST", "/v1/webhooks", Some(&a.key), named).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert_eq!(r.headers["retry-after"], "5");
        let literal = r#"{"url": "https://93.184.216.34/hook", "events": ["call.ended"]}"#;
        let r = a.send("POST", "/v1/webhooks", Some(&a.key), literal).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        drop(places);
        for _ in 1..super::MAX_WEBHOOKS {
            let r = a.send("POST", "/v1/webhooks", Some(&a.key), literal).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        }
        // At the cap: refused before the name is looked up (no place needed).
        let places = take_places();
        let r = a.send("POST", "/v1/webhooks", Some(&a.key), named).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
        drop(places);
    }

    #[tokio::test]
    async fn ports_delivery_cannot_use_are_refused() {
        let a = api();
        let rows: &[(&str, StatusCode)] = &[
            ("https://93.184.216.34:8443/hook", StatusCode::CREATED),
            ("http://93.184.216.34:65535/", StatusCode::CREATED),
            (
                "http://93.184.216.34:65536/",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                "http://93.184.216.34:99999999999/",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            ("http://93.184.216.34:0/", StatusCode::UNPROCESSABLE_ENTITY),
            ("http://93.184.216.34:/", StatusCode::UNPROCESSABLE_ENTITY),
            (
                "https://[2606:2800:220:1:248:1893:25c8:1946]/",
                StatusCode::CREATED,
            ),
            (
                "https://[2606:2800:220:1:248:1893:25c8:1946]:70000/",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
        ];
        for (url, status) in rows {
            let body = format!(r#"{{"url": "{url}", "events": ["call.ended"]}}"#);
            let r = a.send("POST", "/v1/webhooks", Some(&a.key), &body).await;
            assert_eq!(r.status, *status, "{url}: {}", r.text());
            if *status != StatusCode::CREATED {
                assert_eq!(r.json()["error"]["field"], "url", "{}", r.text());
            }
        }
    }
}
