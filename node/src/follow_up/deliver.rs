//! Sends one follow-up: a signed webhook POST, a GA4 Measurement Protocol POST, an SMS
//! gateway POST, or an e-mail through the SMTP relay. A success is a 2xx answer (or the
//! relay accepting the mail); anything else is an error worth retrying, except
//! [`Failure::Permanent`] (nothing could ever deliver it).

use super::http::{query_escaped, Client, Url};
use super::sign::signature_header;
use super::template::{json_escaped, render};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tsunagu_config::{NotifyConfig, SmsConfig};
use tsunagu_store::{FollowUp, FollowUpKind, Store};

#[derive(Debug)]
pub enum Failure {
    /// Try again later (receiver down, 5xx, timeout, store briefly unavailable).
    Retry(String),
    /// Never deliverable (webhook deleted, channel not configured, bad payload).
    Permanent(String),
}

pub struct Deliverer {
    store: Arc<dyn Store>,
    http: Client,
    sms: Option<SmsConfig>,
    ga4_endpoint: String,
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, lettre::message::Mailbox)>,
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

impl Deliverer {
    pub fn new(store: Arc<dyn Store>, cfg: &NotifyConfig) -> Result<Deliverer, String> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let smtp = match &cfg.smtp {
            None => None,
            Some(s) => {
                let from = s
                    .from
                    .parse()
                    .map_err(|e| format!("notify.smtp.from `{}`: {e}", s.from))?;
                // Plain SMTP to the relay (normally a local MTA that handles TLS onward).
                let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
                    .port(s.port)
                    .timeout(Some(timeout));
                if let (Some(u), Some(p)) = (&s.username, &s.password) {
                    b = b.credentials(Credentials::new(u.clone(), p.clone()));
                }
                Some((b.build(), from))
            }
        };
        let roots = crate::tls::trusted_roots(cfg.ca_file.as_deref(), "notify.ca_file")?;
        let http = Client::new(timeout, roots);
        Ok(Deliverer {
            store,
            http,
            sms: cfg.sms.clone(),
            ga4_endpoint: cfg.ga4.endpoint.clone(),
            smtp,
        })
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
        let url = Url::parse(&hook.url).map_err(|e| Failure::Permanent(e.to_string()))?;
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
            &url,
            "application/json",
            &headers,
            f.item.payload.as_bytes(),
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
        let url = Url::parse(&url).map_err(|e| Failure::Permanent(e.to_string()))?;
        self.post(&url, "application/json", &[], g.body.to_string().as_bytes())
            .await
    }

    async fn sms(&self, f: &FollowUp) -> Result<(), Failure> {
        let cfg = self
            .sms
            .as_ref()
            .ok_or_else(|| Failure::Permanent("no [notify.sms] gateway configured".into()))?;
        let s: Sms = serde_json::from_str(&f.item.payload).map_err(permanent("sms"))?;
        let url = Url::parse(&cfg.url).map_err(|e| Failure::Permanent(e.to_string()))?;
        let values = BTreeMap::from([("to", json_escaped(&s.to)), ("text", json_escaped(&s.text))]);
        let body = render(&cfg.body, &values);
        let headers: Vec<(&str, String)> = cfg
            .authorization
            .iter()
            .map(|a| ("Authorization", a.clone()))
            .collect();
        self.post(&url, &cfg.content_type, &headers, body.as_bytes())
            .await
    }

    async fn email(&self, f: &FollowUp) -> Result<(), Failure> {
        let (transport, from) = self
            .smtp
            .as_ref()
            .ok_or_else(|| Failure::Permanent("no [notify.smtp] relay configured".into()))?;
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
        url: &Url,
        content_type: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<(), Failure> {
        match self.http.post(url, content_type, headers, body).await {
            Ok(code) if (200..300).contains(&code) => Ok(()),
            Ok(code) => Err(Failure::Retry(format!("answered {code}"))),
            Err(e) => Err(Failure::Retry(e.to_string())),
        }
    }
}
