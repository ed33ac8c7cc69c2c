//! Metrics of follow-ups: deliveries from the outbox by kind ([`FollowUpMetrics`]),
//! and the defences: destinations refused by the egress policy, rows handed back
//! because their destination had its share, deliveries in flight, and SMS withheld
//! from callers ([`GuardMetrics`]). The node's registry (`crate::metrics`) takes them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tsunagu_api::{EgressLabel, EgressRefusals};
use tsunagu_config::egress::Refusal;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Delivery of follow-ups (webhooks, GA4, e-mail, SMS) from the outbox.
#[derive(Clone)]
pub struct FollowUpMetrics {
    pub delivered: Family<KindLabel, Counter>,
    pub failures: Family<KindLabel, Counter>,
    pub given_up: Family<KindLabel, Counter>,
    pub pending: Gauge,
    pub dead: Gauge,
    pub delivery_seconds: Histogram,
    pub claims_lost: Counter,
    pub callbacks_issued: Counter,
    pub callback_pool_empty: Counter,
    pub callbacks_withheld: Counter,
    pub notices_withheld: Counter,
    pub guards: GuardMetrics,
}

impl Default for FollowUpMetrics {
    fn default() -> Self {
        FollowUpMetrics {
            delivered: Family::default(),
            failures: Family::default(),
            given_up: Family::default(),
            pending: Gauge::default(),
            dead: Gauge::default(),
            delivery_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            claims_lost: Counter::default(),
            callbacks_issued: Counter::default(),
            callback_pool_empty: Counter::default(),
            callbacks_withheld: Counter::default(),
            notices_withheld: Counter::default(),
            guards: Default::default(),
        }
    }
}

impl FollowUpMetrics {
    /// Creates every kind's series at zero, so dashboards and alerts see them from the
    /// start (a labelled family without samples is not exported at all).
    pub fn touch(&self) {
        for kind in ["webhook", "ga4", "email", "sms"] {
            let l = KindLabel { kind };
            drop(self.delivered.get_or_create(&l));
            drop(self.failures.get_or_create(&l));
            drop(self.given_up.get_or_create(&l));
        }
        self.guards.touch();
    }

    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "follow_ups_delivered",
            "Follow-ups delivered, by kind (webhook, ga4, email, sms)",
            self.delivered.clone(),
        );
        r.register(
            "follow_up_failures",
            "Failed delivery attempts, by kind (each is retried until notify.max_attempts)",
            self.failures.clone(),
        );
        r.register(
            "follow_ups_given_up",
            "Follow-ups that exhausted their attempts or can never be delivered, by kind",
            self.given_up.clone(),
        );
        r.register(
            "follow_ups_pending",
            "Follow-ups waiting in the outbox (all nodes sharing the store)",
            self.pending.clone(),
        );
        r.register(
            "follow_ups_dead",
            "Follow-ups kept in the outbox after giving up",
            self.dead.clone(),
        );
        r.register(
            "follow_up_delivery_seconds",
            "Time of one delivery attempt",
            self.delivery_seconds.clone(),
        );
        r.register(
            "follow_up_claims_lost",
            "Failed deliveries whose outcome was not written because the row's claim had run out (the store stalled past twice the delivery limit plus 5 s) and another worker had claimed it; that worker's outcome stands, and the follow-up may be delivered twice",
            self.claims_lost.clone(),
        );
        r.register(
            "callback_numbers_issued",
            "Callback numbers leased to missed calls",
            self.callbacks_issued.clone(),
        );
        r.register(
            "callback_pool_exhausted",
            "Missed calls whose notice went without a callback number because the pool was full",
            self.callback_pool_empty.clone(),
        );
        r.register(
            "callbacks_withheld",
            "Missed calls given no callback number because their caller's number was not verified (not asserted by a trusted trunk, nor from a trunk that verifies caller ids) or is not 4 to 15 digits: a callback rings that number at the operator's cost",
            self.callbacks_withheld.clone(),
        );
        r.register(
            "notices_withheld",
            "Calls whose notices (e-mail and SMS to the number's notify recipients) were withheld: their tracking number had caused notify.notices_per_number_per_hour calls' notices this clock hour (counted across the cluster)",
            self.notices_withheld.clone(),
        );
        self.guards.register(r);
    }
}

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
