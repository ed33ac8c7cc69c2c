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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Clone, Default)]
pub struct ApiMetrics {
    pub connections: Gauge,
    pub connections_refused: Family<ReasonLabel, Counter>,
    pub timeouts: Family<ReasonLabel, Counter>,
    pub accept_errors: Counter,
    pub issue_throttled: Family<LimitLabel, Counter>,
    pub issue_tracked_addresses: Gauge,
    /// 1 while the node takes new calls (as `/readyz` by the node's own reasons), set
    /// at each scrape.
    pub ready: Gauge,
    pub exports_active: Gauge,
    pub exports_refused: Counter,
    pub exports_cut: Family<ReasonLabel, Counter>,
    pub searches_refused: Counter,
    pub searches_timed_out: Counter,
    pub streams_active: Gauge,
    pub streams_refused: Counter,
    pub stream_events: Counter,
    pub stream_read_failures: Counter,
    pub metrics_unauthorized: Counter,
    /// Requests with an advertiser's key to what it may not read (403).
    pub advertiser_key_refused: Counter,
    pub internal_refused: Counter,
    pub recordings_served: Family<OutcomeLabel, Counter>,
    pub recording_parts_read: Family<SourceLabel, Counter>,
    pub recording_parts_missing: Counter,
    pub recording_gaps_capped: Counter,
    pub prompt_copies_unsaved: Counter,
}

/// Why an export was cut (`api_exports_cut`): its client took no data for
/// `api.export_send_timeout_seconds`, it ran for `api.export_max_seconds`, or one
/// page read the store for the search time (`api.search_timeout_seconds`).
pub const EXPORT_CUTS: [&str; 3] = ["stalled", "too_long", "slow_page"];

/// The outcomes `api_recordings_served` counts (see its HELP).
pub const RECORDING_OUTCOMES: [&str; 8] = [
    "served",
    "busy",
    "part_missing",
    "channels_differ",
    "too_long",
    "broken",
    "cut",
    "range_not_satisfiable",
];

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
        for reason in EXPORT_CUTS {
            drop(self.exports_cut.get_or_create(&ReasonLabel { reason }));
        }
        for limit in ["address", "address_leases", "pool", "session"] {
            drop(self.issue_throttled.get_or_create(&LimitLabel { limit }));
        }
        for outcome in RECORDING_OUTCOMES {
            drop(
                self.recordings_served
                    .get_or_create(&OutcomeLabel { outcome }),
            );
        }
        for source in ["local", "peer"] {
            drop(
                self.recording_parts_read
                    .get_or_create(&SourceLabel { source }),
            );
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
            "Number issue requests refused 429: a client address over api.issue.per_address_* (address), a pool over api.issue.per_pool_* (pool), a session holding api.issue.max_leases_per_session (session), a client address holding api.issue.max_leases_per_address of the pool (address_leases)",
            self.issue_throttled.clone(),
        );
        r.register(
            "ready",
            "1 while the node takes new calls, 0 while it does not (draining, call log not writing, no cluster lease: GET /readyz says which); read at each scrape",
            self.ready.clone(),
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
            "CSV/TSV exports answered 503 because api.max_exports (or the operator's api.max_exports_per_operator) were running",
            self.exports_refused.clone(),
        );
        r.register(
            "api_streams_active",
            "Live call streams (GET /v1/calls/stream, the incoming-call screen) open now (at most api.max_streams)",
            self.streams_active.clone(),
        );
        r.register(
            "api_streams_refused",
            "Live call streams answered 503 because api.max_streams (or the operator's api.max_streams_per_operator) were open",
            self.streams_refused.clone(),
        );
        r.register(
            "api_advertiser_key_refused",
            "Requests with an advertiser's key answered 403: an endpoint other than its advertiser's calls, recordings and call stream, or another advertiser named (a screen opened with the wrong key, or a key being tried out)",
            self.advertiser_key_refused.clone(),
        );
        r.register(
            "api_stream_events",
            "Call events sent on live call streams (call.started, call.queued, call.ringing, call.answered, call.ended)",
            self.stream_events.clone(),
        );
        r.register(
            "api_stream_read_failures",
            "Reads of the store by a live call stream that failed (the stream reads again a second later)",
            self.stream_read_failures.clone(),
        );
        r.register(
            "api_searches_refused",
            "JSON call searches and number lists answered 503 because api.max_searches (or the operator's api.max_searches_per_operator) were running",
            self.searches_refused.clone(),
        );
        r.register(
            "api_searches_timed_out",
            "JSON call searches stopped and answered 503 after reading the store for api.search_timeout_seconds",
            self.searches_timed_out.clone(),
        );
        r.register(
            "api_exports_cut",
            "CSV/TSV exports ended early (their body ends in an error), by reason: stalled (the client took no data for api.export_send_timeout_seconds), too_long (still streaming after api.export_max_seconds), slow_page (one page read the store for api.search_timeout_seconds: a filter too narrow for the range)",
            self.exports_cut.clone(),
        );
        r.register(
            "api_internal_refused",
            "Requests for another node's recording part refused although their token was right: they came from an address no registered node has",
            self.internal_refused.clone(),
        );
        r.register(
            "api_metrics_unauthorized",
            "Requests for /metrics refused 401 (api.metrics_token set, wrong or no token)",
            self.metrics_unauthorized.clone(),
        );
        r.register(
            "api_recordings_served",
            "Requests for a call's recording (joined from its parts, or ?part=N) by outcome: served (streamed whole, 200, or the byte range asked for, 206), part_missing (503 or 404: a part is neither in node.recordings_dir nor obtainable from the node that recorded it), channels_differ (409: parts of different channel counts are not joined), too_long (409: the parts together pass the 4 GiB WAV limit), broken (500: a part's file is not a WAV recording), cut (a part failed or changed while streaming, or the download passed api.export_max_seconds; the response was ended short), busy (503: api.max_recordings, or the operator's api.max_recordings_per_operator, were streaming), range_not_satisfiable (416: the Range asked for starts past the end of the file)",
            self.recordings_served.clone(),
        );
        r.register(
            "api_recording_parts_read",
            "Recording parts streamed, by where they came from: local (node.recordings_dir of this node, shared or not) or peer (fetched from the node that recorded it)",
            self.recording_parts_read.clone(),
        );
        r.register(
            "api_recording_parts_missing",
            "Recording parts that could not be had when a recording was asked for (not in node.recordings_dir, and their node unreachable or without the file)",
            self.recording_parts_missing.clone(),
        );
        r.register(
            "api_recording_gaps_capped",
            "Gaps between recording parts longer than 60 s, joined with 60 s of silence (an earlier part lost audio)",
            self.recording_gaps_capped.clone(),
        );
        r.register(
            "api_prompt_copies_unsaved",
            "Uploaded prompts stored (and playing) whose copy on this node's disk (media.prompts_dir) could not be written: disk full or an I/O error; the upload was answered 200",
            self.prompt_copies_unsaved.clone(),
        );
    }
}

/// One unit of a gauge held while this lives (an export streaming, a live call
/// stream open): the gauge goes down however its task ends.
pub(crate) struct Held(Gauge);

impl Held {
    pub(crate) fn new(gauge: &Gauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}
