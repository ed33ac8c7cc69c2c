//! Sends one follow-up: a signed webhook POST, a GA4 Measurement Protocol POST, an SMS
//! gateway POST, or an e-mail through the SMTP relay. A success is a 2xx answer (or the
//! relay accepting the mail); anything else is an error worth retrying, except
//! [`Failure::Permanent`] (nothing could ever deliver it) and [`Failure::Withheld`]
//! (deliberately not sent: a caller's daily SMS cap).

use super::http::{destination, parse_url, query_escaped, Client};
use super::metrics::{GuardMetrics, DAILY_CAP};
use super::sign::signature_header;
use super::template::{json_escaped, render};
use bytes::Bytes;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tsunagu_config::egress::EgressPolicy;
use tsunagu_config::{NotifyConfig, SmsConfig, SmsEncoding, SmtpTls};
use tsunagu_store::{FollowUp, FollowUpKind, Store};

#[derive(Debug)]
pub enum Failure {
    /// Try again later (receiver down, 5xx, timeout, store briefly unavailable).
    Retry(String),
    /// Never deliverable (webhook deleted, bad payload).
    Permanent(String),
    /// Not sent on purpose (a cap): the row leaves the outbox without a delivery.
    Withheld(String),
}

pub struct Deliverer {
    store: Arc<dyn Store>,
    http: Client,
    sms: Option<SmsConfig>,
    ga4_endpoint: String,
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, lettre::message::Mailbox)>,
    caller_sms_per_day: u32,
    guards: GuardMetrics,
    /// Destinations of the node-wide channels, for per-destination limits.
    sms_destination: String,
    ga4_destination: String,
    smtp_destination: String,
}

#[derive(Deserialize)]
struct Email {
    to: String,
    subject: String,
    body: String,
}

#[derive(Deserialize)]
struct Sms {
    to: String,
    text: String,
    /// Set on SMS to a caller (see [`super::plan`]): the call's local day number and
    /// id, which the per-caller daily cap counts by.
    #[serde(default)]
    caller_day: Option<i64>,
    #[serde(default)]
    call_id: Option<String>,
}

#[derive(Deserialize)]
struct Ga4 {
    measurement_id: String,
    api_secret: String,
    body: serde_json::Value,
}

fn permanent(what: &str) -> impl Fn(serde_json::Error) -> Failure + '_ {
    move |e| Failure::Permanent(format!("unreadable {what} payload: {e}"))
}

fn destination_of(url: &str) -> String {
    parse_url(url)
        .map(|u| destination(&u))
        .unwrap_or_else(|_| super::http::shown(url))
}

impl Deliverer {
    pub fn new(
        store: Arc<dyn Store>,
        cfg: &NotifyConfig,
        egress: EgressPolicy,
        guards: GuardMetrics,
    ) -> Result<Deliverer, String> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let smtp = match &cfg.smtp {
            None => None,
            Some(s) => {
                let from = s
                    .from
                    .parse()
                    .map_err(|e| format!("notify.smtp.from `{}`: {e}", s.from))?;
                // The relay is the node operator's own configuration, typically on
                // loopback, so it is not subject to the egress policy. Plain SMTP
                // unless `tls` says otherwise (then the relay's certificate must hold).
                // An IPv6 address written in brackets is connected to (and its
                // certificate checked) without them.
                let host = s.host.trim_start_matches('[').trim_end_matches(']');
                let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                    .port(s.port)
                    .timeout(Some(timeout));
                if s.tls != SmtpTls::None {
                    let params = smtp_tls(host, cfg.ca_file.as_deref())?;
                    b = b.tls(match s.tls {
                        SmtpTls::Tls => Tls::Wrapper(params),
                        _ => Tls::Required(params),
                    });
                }
                if let (Some(u), Some(p)) = (&s.username, &s.password) {
                    b = b.credentials(Credentials::new(u.clone(), p.clone()));
                }
                Some((b.build(), from))
            }
        };
        let roots = crate::tls::trusted_roots(cfg.ca_file.as_deref(), "notify.ca_file")?;
        let http = Client::new(
            timeout,
            roots,
            egress,
            guards.egress_refused.clone(),
            cfg.per_destination as usize,
        );
        Ok(Deliverer {
            store,
            http,
            sms_destination: cfg
                .sms
                .as_ref()
                .map(|s| destination_of(&s.url))
                .unwrap_or_default(),
            ga4_destination: destination_of(&cfg.ga4.endpoint),
            smtp_destination: cfg
                .smtp
                .as_ref()
                .map(|s| format!("smtp:{}:{}", s.host, s.port))
                .unwrap_or_default(),
            sms: cfg.sms.clone(),
            ga4_endpoint: cfg.ga4.endpoint.clone(),
            smtp,
            caller_sms_per_day: cfg.caller_sms_per_day,
            guards,
        })
    }

    /// Where a follow-up of a node-wide channel goes (`host:port`); None for webhooks,
    /// whose destination is their own URL.
    pub fn channel_destination(&self, kind: FollowUpKind) -> Option<&str> {
        match kind {
            FollowUpKind::Webhook => None,
            FollowUpKind::Ga4 => Some(&self.ga4_destination),
            FollowUpKind::Sms => Some(&self.sms_destination),
            FollowUpKind::Email => Some(&self.smtp_destination),
        }
    }

    pub async fn deliver(&self, f: &FollowUp) -> Result<(), Failure> {
        match f.item.kind {
            FollowUpKind::Webhook => self.webhook(f).await,
            FollowUpKind::Ga4 => self.ga4(f).await,
            FollowUpKind::Sms => self.sms(f).await,
            FollowUpKind::Email => self.email(f).await,
        }
    }

    async fn webhook(&self, f: &FollowUp) -> Result<(), Failure> {
        let store = self.store.clone();
        let id = f.item.target.clone();
        let hook = tokio::task::spawn_blocking(move || store.get_webhook(&id))
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?
            .map_err(|e| Failure::Retry(e.to_string()))?
            .ok_or_else(|| Failure::Permanent(format!("webhook {} was deleted", f.item.target)))?;
        let now = chrono::Utc::now().timestamp();
        let event_id = serde_json::from_str::<serde_json::Value>(&f.item.payload)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string))
            .unwrap_or_default();
        let headers = [
            (
                "Tsunagu-Signature",
                signature_header(&hook.secret, now, &f.item.payload),
            ),
            ("Tsunagu-Event-Id", event_id),
            ("Tsunagu-Delivery-Attempt", f.attempts.to_string()),
        ];
        self.post(
            &hook.url,
            "application/json",
            &headers,
            Bytes::from(f.item.payload.clone()),
        )
        .await
    }

    async fn ga4(&self, f: &FollowUp) -> Result<(), Failure> {
        let g: Ga4 = serde_json::from_str(&f.item.payload).map_err(permanent("ga4"))?;
        let sep = if self.ga4_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!(
            "{}{sep}measurement_id={}&api_secret={}",
            self.ga4_endpoint,
            query_escaped(&g.measurement_id),
            query_escaped(&g.api_secret)
        );
        self.post(
            &url,
            "application/json",
            &[],
            Bytes::from(g.body.to_string()),
        )
        .await
    }

    async fn sms(&self, f: &FollowUp) -> Result<(), Failure> {
        // Retried, not given up: the outbox is the cluster's, and a node whose
        // configuration lacks the channel (a rolling change, one node left behind)
        // leaves the row to a node that has it, within the attempts.
        let cfg = self.sms.as_ref().ok_or_else(|| {
            Failure::Retry("no [notify.sms] gateway configured on this node".into())
        })?;
        let s: Sms = serde_json::from_str(&f.item.payload).map_err(permanent("sms"))?;
        if let (Some(day), Some(call_id)) = (s.caller_day, s.call_id.clone()) {
            let (store, to, cap) = (self.store.clone(), s.to.clone(), self.caller_sms_per_day);
            let allowed =
                tokio::task::spawn_blocking(move || store.take_caller_sms(&to, day, &call_id, cap))
                    .await
                    .map_err(|e| Failure::Retry(e.to_string()))?
                    .map_err(|e| Failure::Retry(e.to_string()))?;
            if !allowed {
                self.guards.withheld(DAILY_CAP);
                return Err(Failure::Withheld(format!(
                    "{} already got {cap} SMS today (notify.caller_sms_per_day)",
                    s.to
                )));
            }
        }
        let body = sms_body(cfg, &s.to, &s.text, f.id);
        let headers: Vec<(&str, String)> = cfg
            .authorization
            .iter()
            .map(|a| ("Authorization", a.clone()))
            .collect();
        self.post(&cfg.url, &cfg.content_type, &headers, Bytes::from(body))
            .await
    }

    async fn email(&self, f: &FollowUp) -> Result<(), Failure> {
        let (transport, from) = self.smtp.as_ref().ok_or_else(|| {
            Failure::Retry("no [notify.smtp] relay configured on this node".into())
        })?;
        let e: Email = serde_json::from_str(&f.item.payload).map_err(permanent("email"))?;
        let to =
            e.to.parse()
                .map_err(|err| Failure::Permanent(format!("recipient `{}`: {err}", e.to)))?;
        let message = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(e.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(e.body)
            .map_err(|err| Failure::Permanent(err.to_string()))?;
        match transport.send(message).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_permanent() => Err(Failure::Permanent(err.to_string())),
            Err(err) => Err(Failure::Retry(err.to_string())),
        }
    }

    async fn post(
        &self,
        url: &str,
        content_type: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(), Failure> {
        match self.http.post(url, content_type, headers, body).await {
            Ok(code) if (200..300).contains(&code) => Ok(()),
            Ok(code) => Err(Failure::Retry(format!("answered {code}"))),
            Err(e) if e.is_permanent() => Err(Failure::Permanent(e.to_string())),
            // A refused address is retried too: DNS or notify.allowed_networks may
            // change (each try is checked again and counted).
            Err(e) => Err(Failure::Retry(e.to_string())),
        }
    }
}

/// The gateway's request body: `notify.sms.body` with `{to}` and `{text}` escaped for
/// its content type (JSON strings, or percent-encoded form values), so that the text
/// (which may carry a page visitor's tracking parameters) stays one value. `{id}` is
/// the message's own id, the same on every retry: a gateway that de-duplicates on it
/// sends a message once even when its answer to the first try was lost.
fn sms_body(cfg: &SmsConfig, to: &str, text: &str, id: i64) -> String {
    let escape = match SmsEncoding::of(&cfg.content_type) {
        Some(SmsEncoding::Form) => query_escaped,
        // JSON, and anything the configuration let through before it was checked.
        _ => json_escaped,
    };
    let values = BTreeMap::from([
        ("to", escape(to)),
        ("text", escape(text)),
        ("id", format!("sms-{id}")),
    ]);
    render(&cfg.body, &values)
}

/// TLS toward the SMTP relay: its certificate must be valid for `host` by the built-in
/// Mozilla roots or the CA certificates in `ca_file` (`notify.ca_file`).
fn smtp_tls(host: &str, ca_file: Option<&std::path::Path>) -> Result<TlsParameters, String> {
    let mut b = TlsParameters::builder(host.to_string());
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("notify.ca_file `{}`: {e}", path.display()))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| format!("notify.ca_file `{}`: {e}", path.display()))?;
        b = b.add_root_certificate(cert);
    }
    b.build_rustls()
        .map_err(|e| format!("notify.smtp.tls: {e}"))
}

#[cfg(test)]
mod sms_tests {
    use super::*;

    /// (content type, body template, text) → the body sent: a value never adds or
    /// overrides a field, whatever it carries.
    #[test]
    fn sms_values_are_escaped_for_the_bodys_content_type() {
        let hostile = "hi&To=0900000000&x=\"}, \"to\": \"0900000000\" +%";
        let rows: &[(&str, &str, &str)] = &[
            (
                "application/json",
                r#"{"to":"{to}","text":"{text}"}"#,
                r#"{"to":"09011112222","text":"hi&To=0900000000&x=\"}, \"to\": \"0900000000\" +%"}"#,
            ),
            (
                "application/x-www-form-urlencoded; charset=utf-8",
                "To={to}&Body={text}",
                "To=09011112222&Body=hi%26To%3D0900000000%26x%3D%22%7D%2C%20%22to%22%3A%20%220900000000%22%20%2B%25",
            ),
            (
                "application/vnd.gateway+json",
                r#"{"msisdn":"{to}","msg":"{text}"}"#,
                r#"{"msisdn":"09011112222","msg":"hi&To=0900000000&x=\"}, \"to\": \"0900000000\" +%"}"#,
            ),
        ];
        for (content_type, template, want) in rows {
            let cfg = SmsConfig {
                content_type: content_type.to_string(),
                body: template.to_string(),
                url: "https://sms.example/send".into(),
                authorization: None,
            };
            assert_eq!(
                sms_body(&cfg, "09011112222", hostile, 7),
                *want,
                "{content_type}"
            );
        }
        // And the JSON stays one object with the two fields it had.
        let json: serde_json::Value = serde_json::from_str(&sms_body(
            &SmsConfig {
                content_type: "application/json".into(),
                body: r#"{"to":"{to}","text":"{text}"}"#.into(),
                url: "https://sms.example/send".into(),
                authorization: None,
            },
            "09011112222",
            hostile,
            7,
        ))
        .unwrap();
        assert_eq!(json["to"], "09011112222");
        assert_eq!(json["text"], hostile);
        // The message's id, for gateways that de-duplicate retries.
        let cfg = SmsConfig {
            content_type: "application/json".into(),
            body: r#"{"to":"{to}","text":"{text}","reference":"{id}"}"#.into(),
            url: "https://sms.example/send".into(),
            authorization: None,
        };
        assert!(sms_body(&cfg, "0901", "x", 42).contains(r#""reference":"sms-42""#));
    }
}
