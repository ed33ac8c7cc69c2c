//! Follow-ups after calls (issue: tracking and follow-up): webhook events, e-mail and
//! SMS notices, SMS to mobile callers, GA4 conversions and callback numbers.
//!
//! [`plan`] decides and renders what a call causes (pure); the call-log writer stores
//! it in the outbox in the same transaction as the call record, so nothing is sent
//! for an unlogged call and nothing is lost across restarts or receiver outages;
//! [`outbox`] delivers with retries through [`deliver`].

pub mod deliver;
pub mod hooks;
pub mod http;
pub mod outbox;
pub mod plan;
pub mod sign;
pub mod template;
