//! Metrics of the API's defences: connections refused and timed out, issue requests
//! throttled, exports refused and cut. Every label value is a fixed word.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

#[derive(Clone, Default)]
pub struct ApiMetrics {
    pub connections: Gauge,
    pub connections_refused: Family<ReasonLabel, Counter>,
    pub timeouts: Family<ReasonLabel, Counter>,
    pub accept_errors: Counter,
    pub issue_throttled: Family<LimitLabel, Counter>,
    pub issue_tracked_addresses: Gauge,
    pub exports_active: Gauge,
    pub exports_refused: Counter,
    pub exports_cut: Counter,
    pub metrics_unauthorized: Counter,
}

impl ApiMetrics {
    /// Creates every labelled series at zero, so dashboards and alerts see them from
    /// the start.
    pub fn touch(&self) {
        for reason in ["total", "per_address"] {
            drop(
                self.connections_refused
                    .get_or_create(&ReasonLabel { reason }),
            );
        }
        for reason in ["header", "idle", "request"] {
            drop(self.timeouts.get_or_create(&ReasonLabel { reason }));
        }
        for limit in ["address", "pool", "session"] {
            drop(self.issue_throttled.get_or_create(&LimitLabel { limit }));
        }
    }

    pub fn register(&self, r: &mut Registry) {
        self.touch();
        r.register(
            "api_connections",
            "HTTP API connections open now",
            self.connections.clone(),
        );
        r.register(
            "api_connections_refused",
            "API connections closed at accept because api.max_connections (reason total) or api.max_connections_per_address (per_address) was reached",
            self.connections_refused.clone(),
        );
        r.register(
            "api_timeouts",
            "API connections closed or requests answered 408 for slowness: headers not complete within api.header_timeout_seconds (header), no byte moved for api.idle_timeout_seconds (idle), no answer within api.request_timeout_seconds (request)",
            self.timeouts.clone(),
        );
        r.register(
            "api_accept_errors",
            "Errors accepting API connections (e.g. out of file descriptors); the listener backs off 50 ms after each",
            self.accept_errors.clone(),
        );
        r.register(
            "api_issue_throttled",
            "Number issue requests refused 429: a client address over api.issue.per_address_* (address), a pool over api.issue.per_pool_* (pool), a session holding api.issue.max_leases_per_session (session)",
            self.issue_throttled.clone(),
        );
        r.register(
            "api_issue_tracked_addresses",
            "Client addresses the issue rate limiter holds a bucket for (at most api.issue.tracked_addresses)",
            self.issue_tracked_addresses.clone(),
        );
        r.register(
            "api_exports_active",
            "CSV/TSV call-log exports streaming now (at most api.max_exports)",
            self.exports_active.clone(),
        );
        r.register(
            "api_exports_refused",
            "CSV/TSV exports answered 503 because api.max_exports were running",
            self.exports_refused.clone(),
        );
        r.register(
            "api_exports_cut",
            "CSV/TSV exports ended early because the client took no data for api.export_send_timeout_seconds",
            self.exports_cut.clone(),
        );
        r.register(
            "api_metrics_unauthorized",
            "Requests for /metrics refused 401 (api.metrics_token set, wrong or no token)",
            self.metrics_unauthorized.clone(),
        );
    }
}
