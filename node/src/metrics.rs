//! Every Prometheus metric of a node, registered in one registry that `/metrics` renders.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tsunagu_media::MediaMetrics;
use tsunagu_sip::metrics::SipMetrics;

pub use crate::follow_up::metrics::{FollowUpMetrics, KindLabel};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkLabel {
    pub trunk: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkDirectionLabel {
    pub trunk: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkCodeLabel {
    pub trunk: String,
    /// A callee's status code, bucketed (`tsunagu_sip::metrics::code_label`): codes
    /// come from the network and must not grow the label set.
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurposeLabel {
    pub purpose: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabel {
    pub code: u16,
    pub reason: &'static str,
}

/// Buckets of `tsunagu_rtp_jitter_seconds`: a good network stays under 5 ms, 30 ms
/// is heard, and past 100 ms the audio breaks up.
fn jitter_histogram() -> Histogram {
    Histogram::new([0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5])
}

#[derive(Clone)]
pub struct CallMetrics {
    pub started: Counter,
    pub ended: Family<ResultLabel, Counter>,
    pub rejected: Family<RejectLabel, Counter>,
    pub active: Gauge,
    /// Worker threads of the node's runtime (set once at start).
    pub runtime_workers: Gauge,
    pub ring_seconds: Histogram,
    pub talk_seconds: Histogram,
    /// The highest RTP interarrival jitter of each ended call's audio, by direction.
    pub rtp_jitter_seconds:
        Family<tsunagu_media::metrics::DirectionLabel, Histogram, fn() -> Histogram>,
    pub setup_seconds: Histogram,
    /// Admission → the call's task running (the runtime's queue).
    pub start_delay_seconds: Histogram,
    pub actor_failures: Counter,
    pub log_pending: Gauge,
    /// Times the call-log writer woke (a message while idle, a tick, a deadline).
    pub log_wakeups: Counter,
    pub log_written: Counter,
    pub log_write_errors: Counter,
    /// Call records the store refused for good, set aside in the rejected file.
    pub log_rejected: Counter,
    pub log_stalled: Gauge,
    pub active_written: Counter,
    pub calls_recovered: Counter,
    /// Incarnations whose calls the orphan sweep found left to nobody and adopted.
    pub orphans_adopted: Counter,
    pub store_write_seconds: Histogram,
    pub trunk_up: Family<TrunkLabel, Gauge>,
    pub trunk_ping_failures: Family<TrunkLabel, Counter>,
    pub shaped: Family<TrunkLabel, Counter>,
    pub recordings_started: Counter,
    /// Answered calls of recording numbers not recorded: the caller did not hear the
    /// number's recording notice.
    pub recordings_withheld: Counter,
    /// Answered calls the node ended because neither party sent RTP for
    /// `media.timeout_seconds`.
    pub media_timeouts: Counter,
    /// Forwarding attempts given up at their ring time with nothing from the callee
    /// (the leg then answers late responses by itself: `call::abandoned`).
    pub attempts_abandoned: Counter,
    pub recordings: Family<StatusLabel, Counter>,
    pub trunk_calls: Family<TrunkDirectionLabel, Counter>,
    pub trunk_channels_full: Family<TrunkLabel, Counter>,
    /// Each trunk's channels in use on this node (what `max_channels` counts).
    pub trunk_channels: Family<TrunkLabel, Gauge>,
    pub trunk_responses: Family<TrunkCodeLabel, Counter>,
    pub tls_reloads: Family<StatusLabel, Counter>,
    pub queued: Counter,
    pub queue_waiting: Gauge,
    pub queue_wait_seconds: Histogram,
    pub prompts_played: Family<PurposeLabel, Counter>,
    pub prompts_missing: Counter,
    pub digits: Family<SourceLabel, Counter>,
    pub ivr: Family<OutcomeLabel, Counter>,
    pub judgements: Family<OutcomeLabel, Counter>,
    pub attempts: Histogram,
    pub sessions_expired: Counter,
    pub foreign_requests: Counter,
    pub takeovers: Family<OutcomeLabel, Counter>,
    pub takeover_seconds: Histogram,
    pub takeover_glare: Counter,
    pub mailbox_messages: Gauge,
    pub mailbox_dropped: Counter,
    pub withheld: Family<PathLabel, Counter>,
    pub handed_over: Counter,
    pub handed_over_refused: Counter,
    pub provisioning_change: Gauge,
    pub numbers_unreadable: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: &'static str,
}

impl CallMetrics {
    /// A call taken over: `resumed`, `ended` or `failed`.
    pub fn taken_over(&self, outcome: &'static str) {
        self.takeovers
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

impl Default for CallMetrics {
    fn default() -> Self {
        let time_buckets = [
            0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
        ];
        CallMetrics {
            started: Counter::default(),
            ended: Family::default(),
            rejected: Family::default(),
            active: Gauge::default(),
            runtime_workers: Gauge::default(),
            ring_seconds: Histogram::new(time_buckets),
            talk_seconds: Histogram::new(time_buckets),
            rtp_jitter_seconds: Family::new_with_constructor(jitter_histogram),
            setup_seconds: Histogram::new([
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
            ]),
            start_delay_seconds: Histogram::new([
                0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
            ]),
            actor_failures: Counter::default(),
            log_pending: Gauge::default(),
            log_wakeups: Counter::default(),
            log_written: Counter::default(),
            log_write_errors: Counter::default(),
            log_rejected: Counter::default(),
            log_stalled: Gauge::default(),
            active_written: Counter::default(),
            calls_recovered: Counter::default(),
            orphans_adopted: Counter::default(),
            store_write_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0,
            ]),
            trunk_up: Family::default(),
            trunk_ping_failures: Family::default(),
            shaped: Family::default(),
            recordings_started: Counter::default(),
            recordings_withheld: Counter::default(),
            media_timeouts: Counter::default(),
            attempts_abandoned: Counter::default(),
            recordings: Family::default(),
            trunk_calls: Family::default(),
            trunk_channels_full: Family::default(),
            trunk_channels: Family::default(),
            trunk_responses: Family::default(),
            tls_reloads: Family::default(),
            queued: Counter::default(),
            queue_waiting: Gauge::default(),
            queue_wait_seconds: Histogram::new(time_buckets),
            prompts_played: Family::default(),
            prompts_missing: Counter::default(),
            digits: Family::default(),
            ivr: Family::default(),
            judgements: Family::default(),
            attempts: Histogram::new([1.0, 2.0, 3.0, 4.0, 5.0, 10.0]),
            sessions_expired: Counter::default(),
            foreign_requests: Counter::default(),
            takeovers: Family::default(),
            takeover_seconds: Histogram::new([
                0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 40.0,
            ]),
            takeover_glare: Counter::default(),
            mailbox_messages: Gauge::default(),
            mailbox_dropped: Counter::default(),
            withheld: Family::default(),
            handed_over: Counter::default(),
            handed_over_refused: Counter::default(),
            provisioning_change: Gauge::default(),
            numbers_unreadable: Gauge::default(),
        }
    }
}

/// Calls admitted from a trunk and forwarding attempts sent to it.
#[derive(Clone)]
pub struct TrunkCounters {
    pub inbound: Counter,
    pub outbound: Counter,
    /// Forwarding attempts not sent: the trunk's `max_channels` were all in use.
    pub channels_full: Counter,
    /// Channels in use: calls from the trunk and attempts to it.
    pub channels: Gauge,
}

/// All metric groups of a node.
#[derive(Clone, Default)]
pub struct Metrics {
    pub calls: CallMetrics,
    pub follow_ups: FollowUpMetrics,
    pub sip: SipMetrics,
    pub media: MediaMetrics,
    pub pools: tsunagu_api::PoolMetrics,
    pub api: tsunagu_api::ApiMetrics,
    pub cluster: tsunagu_cluster::ClusterMetrics,
    pub recording_space: crate::recording_space::SpaceMetrics,
}

impl Metrics {
    /// Series that exist from the start at zero (see [`FollowUpMetrics::touch`]).
    pub fn touch(&self) {
        self.follow_ups.touch();
        self.cluster.touch();
        for status in ["complete", "truncated", "missing"] {
            drop(self.calls.recordings.get_or_create(&StatusLabel { status }));
        }
        for status in ["ok", "failed"] {
            drop(
                self.calls
                    .tls_reloads
                    .get_or_create(&StatusLabel { status }),
            );
        }
        let c = &self.calls;
        for outcome in ["resumed", "ended", "failed"] {
            drop(c.takeovers.get_or_create(&OutcomeLabel { outcome }));
        }
        for purpose in [
            "closed",
            "recording_notice",
            "queue",
            "queue_timeout",
            "ivr_menu",
            "ivr_invalid",
            "judgement",
        ] {
            drop(c.prompts_played.get_or_create(&PurposeLabel { purpose }));
        }
        for source in ["rfc4733", "info"] {
            drop(c.digits.get_or_create(&SourceLabel { source }));
        }
        for outcome in [
            "routed", "default", "invalid", "replayed", "no_input", "skipped",
        ] {
            drop(c.ivr.get_or_create(&OutcomeLabel { outcome }));
        }
        for outcome in ["digit", "none", "hung_up", "skipped"] {
            drop(c.judgements.get_or_create(&OutcomeLabel { outcome }));
        }
    }

    /// Each trunk's call counters, looked up once here so the call path counts without
    /// building a label (a String) or locking the family per call.
    pub fn trunk_counters(&self, trunks: &[String]) -> Vec<TrunkCounters> {
        let counter = |trunk: &str, direction| {
            self.calls
                .trunk_calls
                .get_or_create(&TrunkDirectionLabel {
                    trunk: trunk.to_string(),
                    direction,
                })
                .clone()
        };
        trunks
            .iter()
            .map(|t| TrunkCounters {
                inbound: counter(t, "inbound"),
                outbound: counter(t, "outbound"),
                channels_full: self
                    .calls
                    .trunk_channels_full
                    .get_or_create(&TrunkLabel {
                        trunk: t.to_string(),
                    })
                    .clone(),
                channels: self
                    .calls
                    .trunk_channels
                    .get_or_create(&TrunkLabel {
                        trunk: t.to_string(),
                    })
                    .clone(),
            })
            .collect()
    }

    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("tsunagu");
        let c = &self.calls;
        r.register(
            "calls_started",
            "Calls accepted (INVITE passed admission); rate() gives CPS",
            c.started.clone(),
        );
        r.register("calls_ended", "Calls ended, by result", c.ended.clone());
        r.register(
            "log_lines_dropped",
            "Log lines dropped because log.queue_kib of lines already waited for the log writer thread (stderr slower than the node logs)",
            crate::log_output::dropped_counter(),
        );
        r.register(
            "forward_attempts_abandoned",
            "Forwarding attempts given up with their INVITE unanswered: 5 s (or the destination's ring time, if shorter) with nothing at all from the trunk (not even 100 Trying: a trunk problem, the route's next trunk is tried), or 32 s after their CANCEL without a final response to the INVITE; the call moves on at once, and the leg answers late responses by itself (CANCEL after a provisional, ACK and BYE after a 2xx)",
            c.attempts_abandoned.clone(),
        );
        r.register(
            "calls_media_timeouts",
            "Answered calls the node ended (BYE to both, end_reason media_timeout) because neither party had sent RTP for media.timeout_seconds and none held the call",
            c.media_timeouts.clone(),
        );
        r.register(
            "invites_rejected",
            "New INVITEs refused, by status code and reason",
            c.rejected.clone(),
        );
        r.register(
            "active_calls",
            "Calls in progress on this node",
            c.active.clone(),
        );
        r.register(
            "runtime_workers",
            "Worker threads of the node's runtime (node.worker_threads, or one fewer than the CPUs the node may use, at least one)",
            c.runtime_workers.clone(),
        );
        r.register(
            "call_ring_seconds",
            "Time from INVITE to answer or give-up",
            c.ring_seconds.clone(),
        );
        r.register(
            "call_talk_seconds",
            "Talk time of answered calls",
            c.talk_seconds.clone(),
        );
        r.register(
            "rtp_jitter_seconds",
            "The highest RTP interarrival jitter (RFC 3550, smoothed over 16 packets) of each ended call's audio in a static format of an 8 kHz RTP clock (G.711, G.729, G.722, GSM, G.723, G.728, DVI4, LPC, QCELP), by direction (caller_to_callee: what the caller sent); calls with no two such packets of one stream that way are not counted",
            c.rtp_jitter_seconds.clone(),
        );
        for direction in tsunagu_media::metrics::DIRECTIONS {
            let _ = c
                .rtp_jitter_seconds
                .get_or_create(&tsunagu_media::metrics::DirectionLabel { direction });
        }
        r.register(
            "call_setup_seconds",
            "Time from INVITE to the first ringing or answer relayed to the caller",
            c.setup_seconds.clone(),
        );
        r.register(
            "call_start_delay_seconds",
            "Time from a call's admission (100 Trying) to its task running: the runtime's queue (a call shaped by its trunk's max_cps waits for its turn after this); growing, new calls wait to start",
            c.start_delay_seconds.clone(),
        );
        r.register("call_actor_failures", "Call actors that panicked or were killed; their calls were cleaned up and logged as failed", c.actor_failures.clone());
        r.register(
            "call_log_pending",
            "Call-log messages (final records, records of calls in progress, webhook events) waiting to be written to the store",
            c.log_pending.clone(),
        );
        r.register(
            "call_log_wakeups",
            "Times the call-log writer thread woke: once per tick while records wait, at the first message when idle, and for deadlines (not once per message)",
            c.log_wakeups.clone(),
        );
        r.register(
            "call_log_written",
            "Call log records written to the store",
            c.log_written.clone(),
        );
        r.register(
            "call_log_write_errors",
            "Failed store writes of call logs (records are kept and retried)",
            c.log_write_errors.clone(),
        );
        r.register(
            "call_log_rejected",
            "Call records the store refused for a reason retrying does not mend (a row or value it cannot decode, a conflict): set aside as JSON lines in <data_dir>/call_log_rejected.jsonl instead of stalling every record behind them",
            c.log_rejected.clone(),
        );
        r.register(
            "call_log_stalled",
            "1 while call-log writes, or the node's sign of life (written every second, idle or not), have failed for more than 2 s: the node is not ready and refuses new INVITEs (503) until a write succeeds",
            c.log_stalled.clone(),
        );
        r.register(
            "call_log_in_progress_written",
            "Records of calls in progress written to the store (at most one per call and state change; calls shorter than 0.5 s are written only once they end)",
            c.active_written.clone(),
        );
        r.register(
            "sip_foreign_dialog_requests",
            "Requests naming a call's Call-ID whose tags or source did not match its dialog (answered 481, ignored): spoofed BYE, INFO, re-INVITE",
            c.foreign_requests.clone(),
        );
        r.register(
            "calls_taken_over",
            "Calls this node took over from another (a node declared down, or draining): resumed (both parties answered the re-INVITE), ended (a party answered 481: it had left the call while its node was going; the other was hung up, the call logged as the parties ended it) or failed (hung up and logged takeover_failed)",
            c.takeovers.clone(),
        );
        r.register(
            "takeover_seconds",
            "From claiming a call to both parties answering this node's re-INVITE",
            c.takeover_seconds.clone(),
        );
        r.register(
            "takeover_glare_retries",
            "Takeover re-INVITEs a party refused 491 Request Pending (a re-INVITE of its own pending, as one sent to the dead node is for up to 32 s), sent again after RFC 3261's random wait",
            c.takeover_glare.clone(),
        );
        r.register(
            "provisioning_change",
            "The last provisioning change this node applied (a sequence number of the store's change feed): the nodes of a cluster reach the same value within a round trip of a change (every 2 s at worst)",
            c.provisioning_change.clone(),
        );
        r.register(
            "numbers_unreadable",
            "Tracking numbers whose stored settings this node cannot read, as of its last read of each (a full load, or a change in the feed): written by a newer version, or damaged. One loaded before routes on its last readable settings, one never read gets 404; the node's log names them",
            c.numbers_unreadable.clone(),
        );
        r.register(
            "calls_handed_over",
            "Calls this node handed over to a peer while draining (the peer claimed them and re-INVITEd their parties); they ended here without a word",
            c.handed_over.clone(),
        );
        r.register(
            "calls_handed_over_refused",
            "Calls a peer said it had taken over that the store still gives to this node: kept here (a member naming calls it never claimed)",
            c.handed_over_refused.clone(),
        );
        r.register(
            "cluster_withheld_sends",
            "Sends withheld because this node does not hold its cluster lease (declared down, or cut off from the majority): path sip (messages) or rtp (relayed packets and prompt frames)",
            c.withheld.clone(),
        );
        for path in ["sip", "rtp"] {
            let _ = c.withheld.get_or_create(&PathLabel { path });
        }
        r.register(
            "calls_recovered",
            "Calls logged as failed with reason node_lost by this node: unanswered (or, on a node on its own, all) calls a previous run of it left, and unanswered calls of a member declared down (as that member's finaliser)",
            c.calls_recovered.clone(),
        );
        r.register(
            "takeover_orphans_adopted",
            "Incarnations of other nodes whose calls in progress this node found left to nobody (the node gone from its view and silent in the store for 10 s, its finaliser dead or never there) and adopted: answered calls resumed here, the rest logged node_lost",
            c.orphans_adopted.clone(),
        );
        r.register(
            "store_write_seconds",
            "Latency of call-log batch writes to the store",
            c.store_write_seconds.clone(),
        );
        r.register(
            "trunk_up",
            "1 while a trunk answers its OPTIONS keepalives, 0 once it missed two in a row (trunks with keepalives only)",
            c.trunk_up.clone(),
        );
        r.register(
            "invites_shaped",
            "INVITEs over a trunk's max_cps that waited for their turn (up to shaping_ms) instead of a 503",
            c.shaped.clone(),
        );
        r.register(
            "trunk_ping_failures",
            "OPTIONS keepalives a trunk did not answer in time",
            c.trunk_ping_failures.clone(),
        );
        r.register(
            "trunk_calls",
            "Calls per trunk: admitted from it (inbound) and forwarding attempts sent to it (outbound)",
            c.trunk_calls.clone(),
        );
        r.register(
            "trunk_channels_full",
            "Forwarding attempts not sent to a trunk because its max_channels (calls from it and attempts to it, on this node) were all in use: the next trunk or destination was tried",
            c.trunk_channels_full.clone(),
        );
        r.register(
            "trunk_channels",
            "Channels of each trunk in use on this node: calls admitted from it and forwarding attempts sent to it, a cancelled attempt until its INVITE ends (what max_channels limits)",
            c.trunk_channels.clone(),
        );
        r.register(
            "trunk_responses",
            "Final responses to forwarded INVITEs, by outbound trunk and status code (408 includes our own timeouts)",
            c.trunk_responses.clone(),
        );
        r.register(
            "tls_certificate_reloads",
            "Changes of the SIP TLS certificate files picked up (status ok) or refused (status failed: the old pair stays)",
            c.tls_reloads.clone(),
        );
        r.register(
            "calls_queued",
            "Calls that found every line of their number taken and waited in its queue",
            c.queued.clone(),
        );
        r.register(
            "queue_waiting",
            "Calls waiting in number queues now",
            c.queue_waiting.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "How long queued calls waited before a line freed (timeouts and hang-ups not included)",
            c.queue_wait_seconds.clone(),
        );
        r.register(
            "prompts_played",
            "Prompts started, by purpose (closed, recording_notice, queue, queue_timeout, ivr_menu, ivr_invalid, judgement)",
            c.prompts_played.clone(),
        );
        r.register(
            "prompts_missing",
            "Prompts a number names that the node does not have (skipped: ringback or no audio instead)",
            c.prompts_missing.clone(),
        );
        r.register(
            "dtmf_digits",
            "Keys received from either party, by source (rfc4733 telephone-events, SIP info)",
            c.digits.clone(),
        );
        r.register(
            "ivr",
            "IVR steps, by outcome (routed, default, invalid, replayed, no_input, skipped)",
            c.ivr.clone(),
        );
        r.register(
            "judgements",
            "Post-call judgements, by outcome (digit, none = no key in time, hung_up = the callee hung up first, skipped = the callee's audio is not G.711: the prompt cannot be played to it)",
            c.judgements.clone(),
        );
        r.register(
            "call_mailbox_messages",
            "Messages waiting in call inboxes (SIP events, timers, media events), all calls together; each call takes at most 64 from the network",
            c.mailbox_messages.clone(),
        );
        r.register(
            "call_mailbox_dropped",
            "SIP events dropped because their call's inbox held 64 messages (128 for a BYE or CANCEL; the sender retransmits)",
            c.mailbox_dropped.clone(),
        );
        r.register(
            "sessions_expired",
            "Answered calls hung up because no session refresh (RFC 4028) arrived in time",
            c.sessions_expired.clone(),
        );
        r.register(
            "forward_attempts",
            "Forwarding attempts (destination and trunk tries) per call that was forwarded",
            c.attempts.clone(),
        );
        r.register(
            "recordings_started",
            "Call recordings started (at answer, for numbers with recording)",
            c.recordings_started.clone(),
        );
        r.register(
            "recordings_withheld",
            "Answered calls of numbers that record, not recorded because the number's recording notice could not be played to the caller (the prompt missing on this node, the caller's audio not G.711): a number with a notice is never recorded without it",
            c.recordings_withheld.clone(),
        );
        r.register(
            "recordings_written",
            "Call recordings closed, by status (complete, truncated, missing)",
            c.recordings.clone(),
        );
        self.sip.register(&mut r);
        self.media.register(&mut r);
        self.pools.register(&mut r);
        self.api.register(&mut r);
        self.recording_space.register(&mut r);
        self.cluster.register(&mut r);
        self.follow_ups.register(&mut r);
        r
    }
}
