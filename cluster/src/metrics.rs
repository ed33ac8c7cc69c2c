//! The cluster's metrics (registered by the node with the rest).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToLabel {
    pub to: &'static str,
}

#[derive(Clone)]
pub struct ClusterMetrics {
    pub members: Family<StateLabel, Gauge>,
    pub rtt: Histogram,
    pub transitions: Family<ToLabel, Counter>,
    pub frames_sent: Counter,
    pub frames_unsent: Counter,
    pub frames_received: Counter,
    pub frames_refused: Counter,
    pub stale: Counter,
    pub majority: Gauge,
    pub sessions_cut: Counter,
    pub sessions_reset: Counter,
    pub heard_through_others: Gauge,
    pub lines_reserved: Gauge,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        ClusterMetrics {
            members: Family::default(),
            rtt: Histogram::new([
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            transitions: Family::default(),
            frames_sent: Counter::default(),
            frames_unsent: Counter::default(),
            frames_received: Counter::default(),
            frames_refused: Counter::default(),
            stale: Counter::default(),
            majority: Gauge::default(),
            sessions_cut: Counter::default(),
            sessions_reset: Counter::default(),
            heard_through_others: Gauge::default(),
            lines_reserved: Gauge::default(),
        }
    }
}

impl ClusterMetrics {
    pub fn members(&self, up: i64, down: i64) {
        self.members
            .get_or_create(&StateLabel { state: "up" })
            .set(up);
        self.members
            .get_or_create(&StateLabel { state: "down" })
            .set(down);
    }

    pub fn transition(&self, to: &'static str) {
        self.transitions.get_or_create(&ToLabel { to }).inc();
    }

    /// Series exported from the start (zero until something happens).
    pub fn touch(&self) {
        self.members(1, 0);
        self.majority.set(1);
        for to in ["up", "down", "retired"] {
            let _ = self.transitions.get_or_create(&ToLabel { to });
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "cluster_members",
            "Cluster members as this node sees them, by state (up includes this node; down: declared down and not back as a new incarnation; a member an operator retired with `tsunagu cluster forget` is in neither)",
            self.members.clone(),
        );
        r.register(
            "cluster_heartbeat_rtt_seconds",
            "Round trip of heartbeats to peers (sampled each heartbeat interval)",
            self.rtt.clone(),
        );
        r.register(
            "cluster_member_transitions",
            "Members this node saw come up, be declared down, or be retired by an operator (to=\"retired\")",
            self.transitions.clone(),
        );
        r.register(
            "cluster_frames_sent",
            "Frames sent to peers",
            self.frames_sent.clone(),
        );
        r.register(
            "cluster_frames_unsent",
            "Frames that found no session to their peer (it is down or not connected yet)",
            self.frames_unsent.clone(),
        );
        r.register(
            "cluster_frames_received",
            "Frames received from peers",
            self.frames_received.clone(),
        );
        r.register(
            "cluster_frames_refused",
            "Frames or messages from peers dropped: frames that did not decode, hand-overs over their bound or from a member not in good standing",
            self.frames_refused.clone(),
        );
        r.register(
            "cluster_declared_stale",
            "Times this node learned the cluster had declared it down (frozen or cut off) and rejoined as a new incarnation",
            self.stale.clone(),
        );
        r.register(
            "cluster_majority",
            "1 while this node's side of the cluster is a majority of the members that count (those it hears, and those the store shows alive); 0 while cut off from as many live members as it hears: it then declares nobody down and holds no lease",
            self.majority.clone(),
        );
        r.register(
            "cluster_members_heard_through_others",
            "Members up in this node's view that it has not heard within the failure detector's window while another member has (a cut link between this node and them): not declared down, since they are alive; should be 0",
            self.heard_through_others.clone(),
        );
        r.register(
            "cluster_lines_reserved",
            "Lines of keys this node owns held by calls of members that left, kept counted until the node taking a call over adopts its line (at most 15 s each): nonzero for a few seconds after a member dies",
            self.lines_reserved.clone(),
        );
        r.register(
            "cluster_sessions_reset",
            "Sessions with a member this node did not hear while others did (a cut link) stopped, at most every 5 s per member, so that a fresh connection replaces one left in TCP's retransmission back-off",
            self.sessions_reset.clone(),
        );
        r.register(
            "cluster_sessions_cut",
            "Sessions with peers stopped because the peer had not passed the challenge with the cluster's secret 5 s after its TLS handshake (a peer holding the certificate that stalls, or a wrong secret that never answers)",
            self.sessions_cut.clone(),
        );
    }
}
