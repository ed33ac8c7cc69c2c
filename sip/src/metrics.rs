//! Prometheus metrics of the SIP edge.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

/// A status code label: one of [`KNOWN_CODES`] as itself, any other as its class
/// (`1xx` … `6xx`, `other` outside 100-699). Codes come from the network; the label
/// set must not grow with what peers send.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

impl CodeLabel {
    pub fn of(code: u16) -> CodeLabel {
        CodeLabel {
            code: code_label(code),
        }
    }
}

/// The status codes of RFC 3261 and the extensions a carrier meets (RFC 3262, 3265,
/// 3329, 4028, 4412, 5079, 6228, ...): exported as themselves.
pub const KNOWN_CODES: &[(u16, &str)] = &[
    (100, "100"),
    (180, "180"),
    (181, "181"),
    (182, "182"),
    (183, "183"),
    (199, "199"),
    (200, "200"),
    (202, "202"),
    (204, "204"),
    (300, "300"),
    (301, "301"),
    (302, "302"),
    (305, "305"),
    (380, "380"),
    (400, "400"),
    (401, "401"),
    (402, "402"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (406, "406"),
    (407, "407"),
    (408, "408"),
    (410, "410"),
    (412, "412"),
    (413, "413"),
    (414, "414"),
    (415, "415"),
    (416, "416"),
    (417, "417"),
    (420, "420"),
    (421, "421"),
    (422, "422"),
    (423, "423"),
    (428, "428"),
    (429, "429"),
    (433, "433"),
    (436, "436"),
    (437, "437"),
    (438, "438"),
    (480, "480"),
    (481, "481"),
    (482, "482"),
    (483, "483"),
    (484, "484"),
    (485, "485"),
    (486, "486"),
    (487, "487"),
    (488, "488"),
    (489, "489"),
    (491, "491"),
    (493, "493"),
    (494, "494"),
    (500, "500"),
    (501, "501"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
    (505, "505"),
    (513, "513"),
    (580, "580"),
    (600, "600"),
    (603, "603"),
    (604, "604"),
    (606, "606"),
    (607, "607"),
    (608, "608"),
];

/// The label for a status code; see [`CodeLabel`].
pub fn code_label(code: u16) -> &'static str {
    if let Ok(i) = KNOWN_CODES.binary_search_by_key(&code, |(c, _)| *c) {
        return KNOWN_CODES[i].1;
    }
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        6 => "6xx",
        _ => "other",
    }
}

/// A shard of the SIP core ([`crate::shard`]): at most 64 of them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

/// Why a TCP/TLS connection was refused or closed by the node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The queue delay histogram (its own type so [`SipMetrics`] keeps `Default`).
#[derive(Clone)]
pub struct QueueDelay(pub Histogram);

impl Default for QueueDelay {
    fn default() -> Self {
        // From 0.1 ms: below capacity a message waits tenths of a millisecond, and the
        // hops of a setup are told apart only at that scale (loadtest/ladder.py
        // --stages).
        QueueDelay(Histogram::new([
            0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
        ]))
    }
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
    /// Parsed messages waiting for the SIP core (all shards) (the node's overload signal).
    pub incoming_backlog: Gauge,
    pub overload_rejections: Counter,
    /// Retransmissions of INVITEs refused for overload and their ACKs (dropped), and
    /// their CANCELs (answered 481 without a transaction).
    pub refused_repeats_dropped: Counter,
    /// Retransmissions of refused INVITEs that came once the shard was on time again
    /// (their 503 was lost), answered 503 once more.
    pub refused_repeats_answered: Counter,
    /// Age of received messages when the SIP core takes them (the overload signal).
    pub queue_delay: QueueDelay,
    /// Age of the calls' commands (requests and responses to send) when the SIP core
    /// takes them.
    pub command_delay: QueueDelay,
    /// Messages dropped unparsed because the backlog reached its bound.
    pub backlog_drops: Counter,
    pub server_transactions: Gauge,
    pub client_transactions: Gauge,
    /// Requests their call did not take (inbox full: 503; call ended: 481).
    pub requests_undelivered: Counter,
    /// 2xx answers to INVITEs that no call took, acknowledged by the SIP core.
    pub stray_2xx_acked: Counter,
    /// 2xx answers of forks no call keeps, hung up by the SIP core.
    pub forks_hung_up: Counter,
    /// Requests on the branch of a transaction another source began: dropped.
    pub foreign_transaction_requests: Counter,
    /// New requests dropped because their shard held the most server transactions.
    pub server_transactions_full: Counter,
    /// Transactions nobody finished, removed by the sweep (`transaction::Transactions`).
    pub abandoned_server_transactions: Counter,
    pub abandoned_client_transactions: Counter,
    /// Time each shard of the SIP core spent handling messages, commands and timers:
    /// near one second per second, a shard is saturated.
    pub core_busy: Family<ShardLabel, Counter<f64, AtomicU64>>,
    /// Bytes of SIP text waiting for the SIP core (the queue's second bound).
    pub incoming_backlog_bytes: Gauge,
    /// Messages from untrusted sources dropped unanswered.
    pub untrusted_dropped: Counter,
    /// Requests from untrusted sources answered one stateless 403 (`sip.untrusted = "reject"`).
    pub untrusted_rejected: Counter,
    /// Open TCP/TLS connections, inbound and outbound.
    pub stream_connections: Gauge,
    /// Connections refused: `untrusted`, `total_limit`, `source_limit`.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Connections closed by the node: `idle`, `write_queue`, `framing`.
    pub connections_closed: Family<ReasonLabel, Counter>,
    /// accept() failures (out of file descriptors and the like), each followed by a pause.
    pub accept_errors: Counter,
    /// Outbound TCP/TLS connections that could not be opened.
    pub connect_failures: Counter,
    /// Times a UDP standby thread started reading because the runtime was late
    /// (`sip.udp_receive = "auto"`).
    pub udp_standby_engagements: Counter,
    /// UDP standby threads reading now.
    pub udp_standby_reading: Gauge,
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
            "Parsed SIP messages waiting for the SIP core (all shards); above the overload limit new INVITEs get 503",
            self.incoming_backlog.clone(),
        );
        r.register(
            "sip_overload_rejections",
            "New INVITEs answered 503 (Retry-After) because the node is past capacity: received messages waited longer than sip.overload_queue_delay_ms for the SIP core for 100 ms, or over 5,000 messages wait",
            self.overload_rejections.clone(),
        );
        r.register(
            "sip_udp_standby_engagements",
            "Times a SIP UDP standby thread started reading because the runtime left a datagram unread for 5 ms (sip.udp_receive = auto); it reads until the runtime has been on time for 2 s",
            self.udp_standby_engagements.clone(),
        );
        r.register(
            "sip_udp_standby_reading",
            "SIP UDP standby threads reading now (the runtime was late: near or past capacity, or stalled)",
            self.udp_standby_reading.clone(),
        );
        r.register(
            "sip_overload_repeats_dropped",
            "Retransmissions of INVITEs refused for overload and the ACKs of those refusals (dropped by the receivers: the 503 was sent once), and CANCELs of them (answered 481 without a transaction)",
            self.refused_repeats_dropped.clone(),
        );
        r.register(
            "sip_overload_repeats_answered",
            "Retransmissions of INVITEs refused for overload that came once the node was on time again, answered with the 503 once more (the first was lost)",
            self.refused_repeats_answered.clone(),
        );
        r.register(
            "sip_queue_delay_seconds",
            "Time received SIP messages waited for the SIP core (sojourn; the overload signal)",
            self.queue_delay.0.clone(),
        );
        r.register(
            "sip_command_delay_seconds",
            "Time the calls' commands (a request or response to send, a call to register) waited for the SIP core",
            self.command_delay.0.clone(),
        );
        r.register(
            "sip_backlog_drops",
            "Received SIP messages dropped unparsed because the incoming backlog reached one of its bounds (50,000 messages or sip.incoming_queue_bytes)",
            self.backlog_drops.clone(),
        );
        r.register(
            "sip_server_transactions",
            "Open SIP server transactions",
            self.server_transactions.clone(),
        );
        r.register(
            "sip_client_transactions",
            "Open SIP client transactions, with the node's new INVITEs remembered 64*T1 after their 2xx to tell forks' answers from repeats (RFC 6026's Accepted state)",
            self.client_transactions.clone(),
        );
        r.register(
            "sip_requests_undelivered",
            "In-dialog requests their call did not take, answered by the SIP core: 503 with Retry-After when the call's inbox was full (a peer flooding the dialog), 481 when the call had ended",
            self.requests_undelivered.clone(),
        );
        r.register(
            "sip_stray_2xx_acked",
            "2xx answers to an INVITE that no call took (its call had ended: a re-INVITE answered after the BYE, say), acknowledged by the SIP core from the 2xx alone, back to where it came from, so that its sender stops sending it",
            self.stray_2xx_acked.clone(),
        );
        r.register(
            "sip_forks_hung_up",
            "2xx answers to an INVITE of the node's from a fork whose dialog nobody keeps (another branch of a forking proxy answering after the INVITE failed, or after its call ended), acknowledged and hung up (BYE) by the SIP core, once per fork",
            self.forks_hung_up.clone(),
        );
        r.register(
            "sip_foreign_transaction_requests",
            "Requests (retransmissions, ACKs, CANCELs) naming the branch of a server transaction another source address began: dropped unanswered, the transaction left alone (a peer that learnt a branch)",
            self.foreign_transaction_requests.clone(),
        );
        r.register(
            "sip_server_transactions_full",
            "New requests dropped unanswered because their shard already held the most server transactions (200,000, each kept 32 s after its answer): a flood of distinct requests",
            self.server_transactions_full.clone(),
        );
        r.register(
            "sip_abandoned_server_transactions",
            "Requests the node never answered, forgotten after 32 s (an INVITE: the longest ring, sip.max_ring_seconds or 300 s, plus 32 s); their calls had dropped them (a full call inbox) or ended first",
            self.abandoned_server_transactions.clone(),
        );
        r.register(
            "sip_abandoned_client_transactions",
            "INVITEs of the node without a response for the longest ring (sip.max_ring_seconds or 300 s) plus 32 s since their last provisional (a 180 and then silence, a CANCEL never answered 487): forgotten and reported to their call as a timeout",
            self.abandoned_client_transactions.clone(),
        );
        r.register(
            "sip_core_busy_seconds",
            "Time each shard of the SIP core (sip.shards) spent handling messages, commands and timers; a shard near 1 s per second is saturated",
            self.core_busy.clone(),
        );
        r.register(
            "sip_incoming_backlog_bytes",
            "Bytes of SIP messages waiting for the SIP core; at sip.incoming_queue_bytes further messages are dropped unparsed",
            self.incoming_backlog_bytes.clone(),
        );
        r.register(
            "sip_untrusted_dropped",
            "SIP messages (and TCP/TLS connections) from sources in no trunk's inbound networks and at no trunk's outbound address, dropped without an answer and before any transaction",
            self.untrusted_dropped.clone(),
        );
        r.register(
            "sip_untrusted_rejected",
            "SIP requests from untrusted sources answered one stateless 403 (sip.untrusted = \"reject\"; never retransmitted)",
            self.untrusted_rejected.clone(),
        );
        r.register(
            "sip_stream_connections",
            "Open SIP TCP/TLS connections (inbound and outbound)",
            self.stream_connections.clone(),
        );
        r.register(
            "sip_connections_refused",
            "SIP TCP/TLS connections refused: untrusted (source in no trunk; or a message toward one with no connection open, which the node never dials), total_limit (sip.tcp_max_connections), source_limit (sip.tcp_max_connections_per_source)",
            self.connections_refused.clone(),
        );
        r.register(
            "sip_connections_closed",
            "SIP TCP/TLS connections closed by the node: idle (no bytes, or a message unfinished, for sip.tcp_idle_timeout_seconds), write_queue (the peer stopped reading), framing (a stream that cannot be framed)",
            self.connections_closed.clone(),
        );
        r.register(
            "sip_accept_errors",
            "Failed accepts of SIP TCP/TLS connections (e.g. out of file descriptors); each is followed by a 100 ms pause instead of a busy loop",
            self.accept_errors.clone(),
        );
        r.register(
            "sip_connect_failures",
            "Outbound SIP TCP/TLS connections that could not be opened (the message is dropped; transactions time out)",
            self.connect_failures.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_from_the_network_are_bucketed() {
        let rows = [
            (200, "200"),
            (183, "183"),
            (487, "487"),
            (608, "608"),
            (199, "199"),
            (299, "2xx"),
            (499, "4xx"),
            (555, "5xx"),
            (699, "6xx"),
            (150, "1xx"),
            (399, "3xx"),
            (99, "other"),
            (700, "other"),
            (0, "other"),
            (u16::MAX, "other"),
        ];
        for (code, want) in rows {
            assert_eq!(code_label(code), want, "{code}");
        }
        assert!(
            KNOWN_CODES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, for the binary search"
        );
        assert!(KNOWN_CODES.iter().all(|(c, s)| c.to_string() == *s));
    }

    #[test]
    fn a_flood_of_odd_codes_adds_few_series() {
        let m = SipMetrics::default();
        for code in 0..=u16::MAX {
            m.responses_received
                .get_or_create(&CodeLabel::of(code))
                .inc();
        }
        let mut r = Registry::default();
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("sip_responses_received_total{"))
            .count();
        assert_eq!(
            series,
            KNOWN_CODES.len() + 7,
            "known codes, 6 classes, other"
        );
    }
}
