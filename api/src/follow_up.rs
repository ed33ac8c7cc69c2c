//! Validation of a number's follow-up settings (`notify`, `ga4`), shared by
//! `/v1/numbers` and `/v1/pools`: recipients, template sizes, and that the node can
//! deliver what is asked (an e-mail needs `[notify.smtp]`, an SMS `[notify.sms]`).

use crate::numbers::is_phone_number;
use crate::{db_readable, ApiError, ApiState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Deserializer};
use tsunagu_config::egress::EgressPolicy;
use tsunagu_store::{Ga4, Notify, PoolMode};

/// Which delivery channels this node has configured, and where follow-ups may go.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    pub email: bool,
    pub sms: bool,
    /// Where webhooks may point: checked when one is registered, and again by the
    /// delivery connector after every DNS lookup.
    pub egress: EgressPolicy,
    /// Destinations refused, by stage (`registration`, `connect`) and class; the node
    /// registers it and its delivery connector counts into the same family.
    pub egress_refused: EgressRefusals,
}

/// Labels of refused follow-up destinations (both values come from fixed sets).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressLabel {
    pub stage: &'static str,
    pub class: &'static str,
}

pub type EgressRefusals = Family<EgressLabel, Counter>;

/// For PATCH bodies: a present field (even `null`) is `Some`, an absent one `None`.
/// Use with `#[serde(default, deserialize_with = "present")]`.
pub(crate) fn present<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(d).map(Some)
}

const MAX_TEMPLATE: usize = 4000;

pub(crate) async fn validate(
    st: &ApiState,
    operator_id: &str,
    notify: Option<&Notify>,
    ga4: Option<&Ga4>,
) -> Result<(), ApiError> {
    if let Some(g) = ga4 {
        // A measurement id is `G-` and letters or digits; it is logged with every
        // delivery, where a line break forged log lines (a review).
        // Judged trimmed: spaces around it (a copy and paste), which the rule before
        // allowed, must not make every later PATCH of the number fail.
        let id = g.measurement_id.trim();
        let id_ok = (1..=50).contains(&id.len())
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !id_ok {
            return Err(ApiError::invalid(
                "ga4.measurement_id",
                "must be 1 to 50 letters, digits or -",
            ));
        }
        let secret = g.api_secret.trim();
        if secret.is_empty() || secret.len() > 200 || secret.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "ga4.api_secret",
                "must be 1 to 200 characters, none a control character",
            ));
        }
        let name_ok = (1..=40).contains(&g.event_name.len())
            && g.event_name.starts_with(|c: char| c.is_ascii_alphabetic())
            && g.event_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(ApiError::invalid(
                "ga4.event_name",
                "must be 1 to 40 letters, digits or _, starting with a letter",
            ));
        }
    }
    let Some(n) = notify else { return Ok(()) };
    if n.email_to.len() > 10 {
        return Err(ApiError::invalid("notify.email_to", "at most 10 addresses"));
    }
    for (i, a) in n.email_to.iter().enumerate() {
        let ok = a.len() <= 254
            && a.split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
            && !a.contains(|c: char| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
        if !ok {
            return Err(ApiError::invalid(
                &format!("notify.email_to[{i}]"),
                "must be an e-mail address",
            ));
        }
    }
    if n.sms_to.len() > 10 {
        return Err(ApiError::invalid("notify.sms_to", "at most 10 numbers"));
    }
    for (i, p) in n.sms_to.iter().enumerate() {
        if !is_phone_number(p) {
            return Err(ApiError::invalid(
                &format!("notify.sms_to[{i}]"),
                "must be 4 to 15 digits",
            ));
        }
    }
    for (field, t) in [
        ("notify.email_subject", &n.email_subject),
        ("notify.email_body", &n.email_body),
        ("notify.sms_text", &n.sms_text),
        ("notify.caller_sms_text", &n.caller_sms_text),
    ] {
        if t.as_ref()
            .is_some_and(|t| t.trim().is_empty() || t.len() > MAX_TEMPLATE)
        {
            return Err(ApiError::invalid(field, "must be 1 to 4000 characters"));
        }
    }
    if !n.email_to.is_empty() && !st.channels.email {
        return Err(ApiError::invalid(
            "notify.email_to",
            "this node has no [notify.smtp] configured",
        ));
    }
    if (!n.sms_to.is_empty() || n.caller_sms_text.is_some()) && !st.channels.sms {
        let field = if n.sms_to.is_empty() {
            "notify.caller_sms_text"
        } else {
            "notify.sms_to"
        };
        return Err(ApiError::invalid(
            field,
            "this node has no [notify.sms] configured",
        ));
    }
    if let Some(pool_id) = n.callback_pool_id.clone() {
        let op = operator_id.to_string();
        let what = format!("pool {pool_id}");
        match db_readable(st, what, move |s| s.get_pool(&op, &pool_id)).await? {
            Some(p) if p.mode == PoolMode::Callback => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    "notify.callback_pool_id",
                    "the pool's mode must be `callback`",
                ))
            }
            None => return Err(ApiError::invalid("notify.callback_pool_id", "no such pool")),
        }
        if n.email_to.is_empty() && n.sms_to.is_empty() {
            return Err(ApiError::invalid(
                "notify.callback_pool_id",
                "a callback number needs a notice to travel in: set email_to or sms_to",
            ));
        }
    }
    Ok(())
}
