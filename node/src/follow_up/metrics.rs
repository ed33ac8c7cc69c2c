//! Metrics of the follow-up defences: destinations refused by the egress policy,
//! rows handed back because their destination had its share, deliveries in flight,
//! and SMS withheld from callers. Part of [`crate::metrics::FollowUpMetrics`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tsunagu_api::{EgressLabel, EgressRefusals};
use tsunagu_config::egress::Refusal;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Why an SMS to a caller was not sent.
pub const UNVERIFIED: &str = "unverified";
pub const DAILY_CAP: &str = "daily_cap";

#[derive(Clone, Default)]
pub struct GuardMetrics {
    pub egress_refused: EgressRefusals,
    pub deferred: Counter,
    pub in_flight: Gauge,
    pub caller_sms_withheld: Family<ReasonLabel, Counter>,
}

impl GuardMetrics {
    pub fn withheld(&self, reason: &'static str) {
        self.caller_sms_withheld
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Every series at zero from the start (labels come from fixed sets).
    pub fn touch(&self) {
        for stage in ["registration", "connect"] {
            for r in Refusal::ALL {
                drop(self.egress_refused.get_or_create(&EgressLabel {
                    stage,
                    class: r.as_str(),
                }));
            }
        }
        for reason in [UNVERIFIED, DAILY_CAP] {
            drop(
                self.caller_sms_withheld
                    .get_or_create(&ReasonLabel { reason }),
            );
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "follow_up_destinations_refused",
            "Follow-up destinations refused by the egress policy (SSRF defence), by stage (registration: a webhook POST answered 422; connect: a delivery whose resolved address is not allowed) and class (loopback, private, link_local, cgnat, ...)",
            self.egress_refused.clone(),
        );
        r.register(
            "follow_ups_deferred",
            "Follow-ups handed back to the outbox untried because their destination or operator already had its share of deliveries in flight (not counted as attempts)",
            self.deferred.clone(),
        );
        r.register(
            "follow_ups_in_flight",
            "Follow-up deliveries running now on this node",
            self.in_flight.clone(),
        );
        r.register(
            "caller_sms_withheld",
            "SMS to callers not sent, by reason: unverified (the number was neither asserted by a trusted trunk nor sent by a trunk that verifies caller ids) or daily_cap (notify.caller_sms_per_day reached for that number)",
            self.caller_sms_withheld.clone(),
        );
    }
}
