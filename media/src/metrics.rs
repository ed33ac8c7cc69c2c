//! Prometheus metrics of the media plane.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// One of [`DIRECTIONS`].
    pub direction: &'static str,
}

/// The media's directions as metrics name them: what the caller sends (side A's),
/// then what the callee sends.
pub const DIRECTIONS: [&str; 2] = ["caller_to_callee", "callee_to_caller"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForeignLabel {
    /// `source` (from an address the leg's SDP does not allow) or `not_rtp` (from the
    /// leg's peer, but not RTP).
    pub reason: &'static str,
}

#[derive(Clone, Default)]
pub struct MediaMetrics {
    pub packets: Family<DirectionLabel, Counter>,
    pub bytes: Family<DirectionLabel, Counter>,
    pub lost: Family<DirectionLabel, Counter>,
    pub ports_in_use: Gauge,
    pub ports_total: Gauge,
    pub port_exhaustions: Counter,
    /// Datagrams read off a reused port's socket before its lease ([`crate::ports`]).
    pub stray_packets_drained: Counter,
    /// Packets refused by the relays' source and RTP checks ([`crate::latch`]).
    pub foreign: Family<ForeignLabel, Counter>,
    /// Media addresses from SDP the relays refused to send to ([`crate::destination`]).
    pub destinations_refused: Family<ForeignLabel, Counter>,
    /// Packets (relayed or generated) not sent toward a side that had sent nothing
    /// ([`crate::latch::Peer::destination`]).
    pub unverified_withheld: Counter,
}

impl MediaMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "rtp_packets",
            "RTP packets relayed, by direction",
            self.packets.clone(),
        );
        r.register(
            "rtp_bytes",
            "RTP bytes relayed (UDP payload), by direction",
            self.bytes.clone(),
        );
        r.register(
            "rtp_lost",
            "RTP packets missing from sequence numbers, by direction",
            self.lost.clone(),
        );
        r.register(
            "rtp_ports_in_use",
            "RTP ports leased to calls",
            self.ports_in_use.clone(),
        );
        r.register(
            "rtp_ports_total",
            "RTP ports in the configured range usable for RTP (even ports)",
            self.ports_total.clone(),
        );
        r.register(
            "rtp_port_exhaustions",
            "Calls refused because no RTP port was free",
            self.port_exhaustions.clone(),
        );
        r.register(
            "rtp_stray_packets_drained",
            "Datagrams found queued on a released RTP port's socket when the port was leased again (the end of the previous call's audio), read and discarded so that none reaches the next call",
            self.stray_packets_drained.clone(),
        );
        r.register(
            "rtp_foreign_packets",
            "Packets dropped on RTP ports: reason=source came from an address the leg's SDP (media.latch) does not allow, reason=not_rtp came from the leg's peer but were not RTP (RTCP, STUN, malformed headers)",
            self.foreign.clone(),
        );
        r.register(
            "rtp_destinations_refused",
            "Media addresses named in SDP that the relay refused to send to (and accepts nothing from): unspecified (this host), multicast, broadcast, link_local (e.g. cloud metadata), loopback (on a node whose media address is not), own_port (the node's own RTP ports), own_address (another port of the node's media address, not a trunk's)",
            self.destinations_refused.clone(),
        );
        r.register(
            "rtp_unverified_audio_withheld",
            "Packets of audio (relayed, or generated: prompts, ringback, queue audio) not sent toward a party that had sent no RTP packet yet: past media.unverified_audio_seconds of them when its SDP names an address outside the trunks' networks, or any with media.consent (an SDP can name anyone's address)",
            self.unverified_withheld.clone(),
        );
        // Every series exists from the start (a dashboard sees 0, not a missing series).
        for reason in ["source", "not_rtp"] {
            let _ = self.foreign.get_or_create(&ForeignLabel { reason });
        }
        for reason in crate::destination::REASONS {
            let _ = self
                .destinations_refused
                .get_or_create(&ForeignLabel { reason });
        }
    }
}
