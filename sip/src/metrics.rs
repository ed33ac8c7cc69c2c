//! Prometheus metrics of the SIP edge.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: u16,
}

#[derive(Default, Clone)]
pub struct SipMetrics {
    pub requests_received: Family<MethodLabel, Counter>,
    pub requests_sent: Family<MethodLabel, Counter>,
    pub responses_sent: Family<CodeLabel, Counter>,
    pub responses_received: Family<CodeLabel, Counter>,
    pub retransmissions: Counter,
    pub parse_errors: Counter,
    pub tls_handshake_failures: Counter,
    /// Parsed messages waiting for the endpoint task (the node's overload signal).
    pub incoming_backlog: Gauge,
    pub overload_rejections: Counter,
    /// Messages dropped unparsed because the backlog reached its bound.
    pub backlog_drops: Counter,
    pub server_transactions: Gauge,
    pub client_transactions: Gauge,
}

impl SipMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "sip_requests_received",
            "SIP requests received, by method (retransmissions included)",
            self.requests_received.clone(),
        );
        r.register(
            "sip_requests_sent",
            "SIP requests sent, by method (first transmissions)",
            self.requests_sent.clone(),
        );
        r.register(
            "sip_responses_sent",
            "SIP responses sent, by status code (first transmissions)",
            self.responses_sent.clone(),
        );
        r.register(
            "sip_responses_received",
            "SIP responses received, by status code",
            self.responses_received.clone(),
        );
        r.register(
            "sip_retransmissions",
            "SIP messages retransmitted by the transaction layer (timers A, E, G and 2xx)",
            self.retransmissions.clone(),
        );
        r.register(
            "sip_parse_errors",
            "Received SIP messages that could not be parsed (answered 400 where possible)",
            self.parse_errors.clone(),
        );
        r.register(
            "sip_tls_handshake_failures",
            "TLS handshakes that failed or timed out (inbound and outbound; a refused client certificate counts)",
            self.tls_handshake_failures.clone(),
        );
        r.register(
            "sip_incoming_backlog",
            "Parsed SIP messages waiting for the endpoint task; above the overload limit new INVITEs get 503",
            self.incoming_backlog.clone(),
        );
        r.register(
            "sip_overload_rejections",
            "New INVITEs answered 503 because the incoming backlog was over the overload limit",
            self.overload_rejections.clone(),
        );
        r.register(
            "sip_backlog_drops",
            "Received SIP messages dropped unparsed because the incoming backlog reached its bound (50,000)",
            self.backlog_drops.clone(),
        );
        r.register(
            "sip_server_transactions",
            "Open SIP server transactions",
            self.server_transactions.clone(),
        );
        r.register(
            "sip_client_transactions",
            "Open SIP client transactions",
            self.client_transactions.clone(),
        );
    }
}
