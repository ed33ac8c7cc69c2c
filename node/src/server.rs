//! Starting and stopping a node: store (this run registered as a new incarnation of the
//! node, and the calls a previous run left in progress logged as lost), number
//! directory, call-log writer, RTP ports, SIP endpoint, call supervisor and HTTP API;
//! then, on SIGTERM or SIGINT, a graceful drain (readiness false, new INVITEs 503,
//! running calls finish up to `node.drain_seconds`, then are ended by the node and
//! logged with reason `drain`) and a final flush of the call log.

use crate::admission::{Admission, LateHandler};
use crate::call_log::{CallLog, Writer};
use crate::cluster_link::NodeHost;
use crate::context::NodeContext;
use crate::decide::routing::{sip_transport, Routing};
use crate::directory::Directory;
use crate::follow_up::deliver::Deliverer;
use crate::follow_up::hooks::WebhookCache;
use crate::follow_up::outbox::Worker;
use crate::follow_up::plan::Planner;
use crate::metrics::{Metrics, PathLabel, StatusLabel};
use crate::provisioning::{kind, Provisioning};
use crate::supervisor::{CallSupervisor, SupervisorMsg};
use ractor::Actor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tsunagu_api::{ApiState, NodeHooks};
use tsunagu_config::{Config, StoreBackend, UdpReceive};
use tsunagu_media::PortPool;
use tsunagu_sip::{
    EdgeSettings, Endpoint, SourcePolicy, StreamLimits, Transport, TrustedSources, Untrusted,
};
use tsunagu_store::{SqliteStore, Store};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("store: {0}")]
    Store(#[from] tsunagu_store::StoreError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Unsupported(String),
    /// Another process registered a newer incarnation of this node id while this one
    /// was cut off or frozen: this one stopped (exit code [`EXIT_SUPERSEDED`]).
    #[error("another process runs as node {0:?} (a newer incarnation of its id): stopped")]
    Superseded(String),
}

/// The exit code of a node that stopped because another process runs as the same node
/// id ([`NodeError::Superseded`]). Not to be restarted as it is: a restart registers a
/// newer incarnation still and takes the id back from the process that replaced it
/// (the systemd unit names it in `RestartPreventExitStatus`).
pub const EXIT_SUPERSEDED: u8 = 3;

/// Where the admin token came from (the banner prints it only when it was just made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Config,
    /// Read from `api.admin_token_file` or from the data dir (made by an earlier start).
    File(PathBuf),
    /// Generated now and written to this file.
    Generated(PathBuf),
}

/// The admin token: from config, from a file, or generated once and kept in the data dir.
pub fn admin_token(config: &Config) -> Result<(String, TokenSource), NodeError> {
    if let Some(t) = &config.api.admin_token {
        return Ok((t.clone(), TokenSource::Config));
    }
    let path = config
        .api
        .admin_token_file
        .clone()
        .unwrap_or_else(|| config.node.data_dir.join("admin_token"));
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        // The file's token is held to the rule of the configured one: a one-character
        // file was taken (a review).
        match tsunagu_config::admin_token_error(&t) {
            None => return Ok((t, TokenSource::File(path))),
            Some(e) if !t.is_empty() => {
                return Err(NodeError::Io(format!(
                    "the admin token in {}: {e}",
                    path.display()
                )))
            }
            Some(_) => {}
        }
    }
    if config.api.admin_token_file.is_some() {
        return Err(NodeError::Io(format!(
            "api.admin_token_file {} is missing or empty",
            path.display()
        )));
    }
    let token = tsunagu_store::new_api_key().replacen("tsk_", "adm_", 1);
    write_private(&path, &token)
        .map_err(|e| NodeError::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok((token, TokenSource::Generated(path)))
}

/// New files are private (umask 077, see main.rs), but a data dir made by an older
/// version or by hand may not be: say so (changing an operator's modes is theirs to do).
fn warn_if_readable_by_others(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(dir) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{mode:o}"),
                "the data directory (call records, recordings, secrets) is open to other users; chmod 700 it"
            );
        }
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, format!("{text}\n").as_bytes())
}

fn store_path(config: &Config) -> PathBuf {
    config
        .store
        .path
        .clone()
        .unwrap_or_else(|| config.node.data_dir.join("tsunagu.db"))
}

/// Why this build cannot open the configured store, if it cannot: the ScyllaDB backend
/// is compiled in only with the `scylla` cargo feature (off by default; the container
/// image has it). `serve` and `check-config` both refuse with this message.
pub fn store_unavailable_in_this_build(config: &Config) -> Option<String> {
    (config.store.backend == StoreBackend::Scylla && !cfg!(feature = "scylla")).then(|| {
        "store.backend: \"scylla\" needs a build with the ScyllaDB backend \
         (cargo build --release --features scylla; the container image has it); \
         this build has only \"embedded\""
            .to_string()
    })
}

/// Opens the configured store: SQLite (embedded) or ScyllaDB.
fn open_store(config: &Config) -> Result<Arc<dyn Store>, NodeError> {
    match config.store.backend {
        StoreBackend::Embedded => {
            let durability = match config.store.synchronous {
                tsunagu_config::Synchronous::Full => tsunagu_store::Durability::Full,
                tsunagu_config::Synchronous::Normal => tsunagu_store::Durability::Normal,
            };
            Ok(Arc::new(SqliteStore::open_with(
                &store_path(config),
                durability,
            )?))
        }
        StoreBackend::Scylla => open_scylla(config),
    }
}

/// The ScyllaDB settings of `[store]` (the password read from its file).
#[cfg(feature = "scylla")]
fn open_scylla(config: &Config) -> Result<Arc<dyn Store>, NodeError> {
    let store = &config.store;
    let password = match &store.password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| NodeError::Io(format!("store.password_file {}: {e}", path.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        ),
        None => None,
    };
    let settings = tsunagu_store::ScyllaSettings {
        nodes: store.nodes.clone(),
        keyspace: store.keyspace.clone(),
        replication: store.replication,
        datacenter: store.datacenter.clone(),
        consistency: match store.consistency {
            tsunagu_config::StoreConsistency::LocalQuorum => {
                tsunagu_store::ScyllaConsistency::LocalQuorum
            }
            tsunagu_config::StoreConsistency::Quorum => tsunagu_store::ScyllaConsistency::Quorum,
        },
        username: store.username.clone(),
        password,
        tls: store.tls.as_ref().map(|t| tsunagu_store::ScyllaTlsFiles {
            ca_file: t.ca_file.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
        }),
        request_timeout: Duration::from_secs(store.request_timeout_seconds),
    };
    tracing::info!(nodes = ?settings.nodes, keyspace = %settings.keyspace, "connecting to ScyllaDB");
    Ok(Arc::new(tsunagu_store::ScyllaStore::connect(&settings)?))
}

#[cfg(not(feature = "scylla"))]
fn open_scylla(config: &Config) -> Result<Arc<dyn Store>, NodeError> {
    Err(NodeError::Unsupported(
        store_unavailable_in_this_build(config).unwrap_or_default(),
    ))
}

/// The SIP edge answers trunks only: an address inside some trunk's inbound networks or
/// some trunk's outbound target ([`Routing::is_trunk_address`], the rule in-dialog
/// targets follow too). Fixed at start; a later runtime change of trunks would swap
/// the routing inside this type (the sip crate asks through the trait only).
struct TrunkSources(Routing);

impl TrustedSources for TrunkSources {
    fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.0.is_trunk_address(ip)
    }
}

/// Where peers reach this node's API (recordings are fetched there): `api.listen`, or
/// with a wildcard address the cluster address's IP at the API's port.
fn reachable_api(config: &Config) -> std::net::SocketAddr {
    let api = config.api.listen;
    match config.cluster.listen {
        Some(cluster) if api.ip().is_unspecified() => {
            std::net::SocketAddr::new(cluster.ip(), api.port())
        }
        _ => api,
    }
}

/// How long an INVITE transaction is kept without a final response at most: (the
/// caller's, the node's own). A call answers or gives up within its longest ring
/// (`sip.max_ring_seconds` for the caller, a destination's `ring_seconds`, at most 300
/// and not bounded by it once an IVR answered, for a forwarded leg); the caller's may
/// first wait for a line (a queue's `max_wait_seconds`, at most an hour, not counted
/// by the ring guard); 32 s more for the answer to be retransmitted or the CANCEL
/// answered. Without the queue's wait a caller connected after five and a half minutes
/// in a queue had its transaction forgotten and never got its 200 (a review).
fn invite_limits(max_ring_seconds: u64) -> (Duration, Duration) {
    let ring = max_ring_seconds.max(tsunagu_store::Destination::MAX_RING_SECONDS.into());
    let queue = u64::from(tsunagu_store::LineLimit::MAX_WAIT_SECONDS);
    let timeout = tsunagu_sip::transaction::TIMEOUT;
    (
        Duration::from_secs(queue.saturating_add(ring)).saturating_add(timeout),
        Duration::from_secs(ring).saturating_add(timeout),
    )
}

/// The SIP edge's policies and bounds from `[sip]`.
fn edge_settings(config: &Config, gate: tsunagu_sip::SendGate) -> EdgeSettings {
    let sip = &config.sip;
    let (answer_limit, invite_limit) = invite_limits(sip.max_ring_seconds);
    EdgeSettings {
        socket_buffer: sip.socket_buffer_bytes,
        sources: SourcePolicy {
            trusted: Arc::new(TrunkSources(Routing::from_config(config))),
            untrusted: match sip.untrusted {
                tsunagu_config::UntrustedSources::Drop => Untrusted::Drop,
                tsunagu_config::UntrustedSources::Reject => Untrusted::Reject,
            },
        },
        max_queued_bytes: sip.incoming_queue_bytes,
        force_rport: sip.force_rport,
        streams: StreamLimits {
            max_connections: sip.tcp_max_connections,
            max_per_source: sip.tcp_max_connections_per_source,
            idle_timeout: Duration::from_secs(sip.tcp_idle_timeout_seconds),
        },
        gate: Some(gate),
        overload: tsunagu_sip::OverloadSettings {
            target: Duration::from_millis(sip.overload_queue_delay_ms),
            retry_after: sip.retry_after_seconds,
            ..Default::default()
        },
        shards: match sip.shards {
            0 => tsunagu_sip::shard::per_cpu(),
            n => n,
        },
        udp_receive: match sip.udp_receive_mode() {
            UdpReceive::Auto => tsunagu_sip::udp::UdpReceive::Auto,
            UdpReceive::Threads => tsunagu_sip::udp::UdpReceive::Threads,
            UdpReceive::Runtime => tsunagu_sip::udp::UdpReceive::Runtime,
        },
        answer_limit,
        invite_limit,
        advertised: Some(config.sip_advertised_address()),
    }
}

/// What the API asks of the node: provisioning changes go to the feed (this node at
/// once, the cluster next), readiness, the cluster's state.
struct Hooks {
    provisioning: Provisioning,
    ctx: Arc<NodeContext>,
}

impl NodeHooks for Hooks {
    fn number_changed(&self, number: &str) {
        self.provisioning.changed(kind::NUMBER, number.to_string());
    }
    fn webhooks_changed(&self, operator_id: &str) {
        self.provisioning
            .changed(kind::WEBHOOKS, operator_id.to_string());
    }
    fn advertiser_changed(&self, operator_id: &str, id: &str) {
        self.provisioning
            .changed(kind::ADVERTISER, format!("{operator_id}/{id}"));
    }
    fn prompt_changed(&self, operator_id: &str, name: &str) {
        self.provisioning
            .changed(kind::PROMPT, format!("{operator_id}/{name}"));
    }
    fn not_ready(&self) -> Option<&'static str> {
        if self.ctx.draining.load(Ordering::Relaxed) {
            Some("draining")
        } else if !self.ctx.log.ready() {
            Some("call log not ready: the store cannot be written (records, or the node's sign of life when idle), or the log is far behind")
        } else if !self.ctx.cluster_lease() {
            Some("no cluster lease")
        } else {
            None
        }
    }
    fn cluster(&self) -> serde_json::Value {
        match self.ctx.cluster.get() {
            Some(c) => serde_json::to_value(c.status()).unwrap_or_default(),
            None => serde_json::json!({
                "name": self.ctx.node_id,
                "epoch": self.ctx.epoch.load(Ordering::Relaxed),
                "clustered": false,
                "members": [],
            }),
        }
    }
    fn retire_member(&self, name: &str) -> Result<u64, tsunagu_api::ApiError> {
        use tsunagu_api::ApiError;
        use tsunagu_cluster::retire::{decide, RetireRefusal, Retirement, Row};
        let Some(cluster) = self.ctx.cluster.get() else {
            return Err(ApiError::not_found(
                "this node is on its own: it has no cluster members",
            ));
        };
        let store_error =
            |e| ApiError::unavailable(format!("the store cannot be read or written: {e}"));
        let row = self
            .ctx
            .store
            .nodes()
            .map_err(store_error)?
            .into_iter()
            .find(|n| n.node_id == name)
            .map(|n| Row {
                epoch: n.epoch,
                down: n.down,
                retired: n.retired,
            });
        match decide(name, &self.ctx.node_id, row, cluster.member(name)) {
            Ok(Retirement::Already(epoch)) => {
                cluster.retire(name, epoch);
                Ok(epoch)
            }
            Ok(Retirement::Retire(epoch)) => {
                if !self
                    .ctx
                    .store
                    .retire_node(name, epoch)
                    .map_err(store_error)?
                {
                    return Err(ApiError::conflict(format!(
                        "{name} started again since (a newer incarnation than {epoch}): nothing retired"
                    )));
                }
                cluster.retire(name, epoch);
                Ok(epoch)
            }
            Err(why @ RetireRefusal::Unknown) => {
                Err(ApiError::not_found(format!("no member {name:?}: {why}")))
            }
            Err(why) => Err(ApiError::conflict(why.to_string())),
        }
    }
}

/// Runs a node until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    if let Some(problem) = store_unavailable_in_this_build(&config) {
        return Err(NodeError::Unsupported(problem));
    }
    let (token, token_source) = admin_token(&config)?;
    let store = open_store(&config)?;
    warn_if_readable_by_others(&config.node.data_dir);
    let metrics = Metrics::default();
    metrics.touch();
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    metrics
        .calls
        .runtime_workers
        .set(i64::try_from(workers).unwrap_or(i64::MAX));
    // A new incarnation of this node; the previous one's last sign of life dates the
    // end of the calls it left in progress (logged below, before any call of this run).
    let node_info = tsunagu_store::NodeInfo {
        node_id: config.node.id.clone(),
        cluster_addr: config.cluster.listen.map(|a| a.to_string()),
        api_addr: Some(reachable_api(&config).to_string()),
    };
    let (epoch, last_seen) = store.register_node(&node_info, crate::clock::now_ms())?;
    tracing::info!(node = %config.node.id, epoch, "node registered");
    let epoch = Arc::new(std::sync::atomic::AtomicU64::new(epoch));
    // The feed's end before the copies are loaded: provisioning follows it from there
    // (see `Provisioning::start`).
    let feed_at_load = store.changes_since(i64::MAX, 0)?.latest;
    let directory = Directory::load(store.clone(), metrics.calls.numbers_unreadable.clone())?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let webhooks = WebhookCache::load(store.clone())?;
    let notify = &config.notify;
    let planner = Planner {
        email: notify.smtp.is_some(),
        sms: notify.sms.is_some(),
        utc_offset_minutes: notify.utc_offset_minutes,
    };
    let (log, log_thread) = CallLog::start(Writer {
        store: store.clone(),
        metrics: metrics.calls.clone(),
        follow_up_metrics: metrics.follow_ups.clone(),
        planner,
        wake: wake.clone(),
        webhooks: webhooks.clone(),
        node_id: config.node.id.clone(),
        epoch: epoch.clone(),
        high_water: LOG_HIGH_WATER,
        notices_per_hour: notify.notices_per_number_per_hour,
        rejected: config.node.data_dir.join("call_log_rejected.jsonl"),
        rejected_cut: Default::default(),
        notices_decided: Default::default(),
    });
    // Clustered, the calls a previous run left are adopted once joined (answered ones
    // resumed here or by a peer, the rest logged lost: see cluster_link::adopt_leftovers).
    let recovered = if config.cluster.listen.is_some() {
        0
    } else {
        crate::call_log::recover(&*store, &log, &config.node.id, last_seen)?
    };
    metrics.calls.calls_recovered.inc_by(recovered as u64);
    if recovered > 0 {
        tracing::warn!(
            calls = recovered,
            "calls left in progress by the previous run were logged as failed (node_lost)"
        );
    }
    // The host's interface addresses, read once at start: follow-ups and media both
    // refuse them as destinations.
    let host_addresses = crate::host::addresses();
    let egress = crate::follow_up::egress_policy(&config, &host_addresses);
    let guards = metrics.follow_ups.guards.clone();
    let deliverer = Deliverer::new(store.clone(), notify, egress.clone(), guards.clone())
        .map_err(NodeError::Io)?;
    let (outbox_stop, outbox_stop_rx) = tokio::sync::watch::channel(false);
    let outbox_task = tokio::spawn(
        Worker::new(
            store.clone(),
            Arc::new(deliverer),
            metrics.follow_ups.clone(),
            webhooks.clone(),
            notify,
            wake,
        )
        .run(outbox_stop_rx),
    );
    let media = &config.media;
    let latch = match media.latch {
        tsunagu_config::RtpLatch::Strict => tsunagu_media::Latch::Strict,
        tsunagu_config::RtpLatch::Address => tsunagu_media::Latch::Address,
        tsunagu_config::RtpLatch::Off => tsunagu_media::Latch::Off,
    };
    if latch == tsunagu_media::Latch::Off {
        tracing::warn!("media.latch = \"off\": RTP ports relay packets from any source (anyone who reaches the port range can listen to and inject audio into calls)");
    }
    let ports = PortPool::with_latch(
        media.address,
        media.ports.first,
        media.ports.last,
        config.sip.socket_buffer_bytes,
        latch,
        metrics.media.clone(),
    );
    ports.set_consent(media.consent);
    ports.set_host_addresses(host_addresses);
    ports.set_unverified_audio_seconds(media.unverified_audio_seconds);
    let routing = Routing::from_config(&config);
    let trunks = routing.clone();
    ports.set_trunk_addresses(Arc::new(move |ip| trunks.is_trunk_address(ip)));
    let lease_gate = crate::cluster_link::LeaseGate::default();
    let rtp_withheld = metrics
        .calls
        .withheld
        .get_or_create(&PathLabel { path: "rtp" })
        .clone();
    ports.set_gate(lease_gate.closure(rtp_withheld));
    let sip_withheld = metrics
        .calls
        .withheld
        .get_or_create(&PathLabel { path: "sip" })
        .clone();

    let handler = Arc::new(LateHandler::default());
    let listeners: Vec<(Transport, std::net::SocketAddr)> = config
        .sip
        .listen
        .iter()
        .map(|l| (sip_transport(l.transport), l.addr))
        .collect();
    let tls = match &config.sip.tls {
        Some(t) => {
            let (setup, certs) =
                crate::tls::setup(t).map_err(|e| NodeError::Io(format!("sip.tls: {e}")))?;
            // One counter at a time: a Family's guard held across a second
            // get_or_create would deadlock.
            let reloads = &metrics.calls.tls_reloads;
            let ok = reloads.get_or_create(&StatusLabel { status: "ok" }).clone();
            let failed = reloads
                .get_or_create(&StatusLabel { status: "failed" })
                .clone();
            crate::tls::spawn_reloader(certs, Duration::from_secs(t.reload_seconds), ok, failed);
            setup
        }
        None => tsunagu_sip::TlsSetup::default(),
    };
    let endpoint = Endpoint::start(
        &listeners,
        edge_settings(&config, lease_gate.closure(sip_withheld)),
        handler.clone(),
        metrics.sip.clone(),
        tls,
    )
    .await
    .map_err(|e| {
        NodeError::Io(format!(
            "cannot open SIP listeners {:?}: {e}",
            config
                .sip
                .listen
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
        ))
    })?;

    let recordings_dir = config.node.effective_recordings_dir();
    let recording_space = crate::recording_space::RecordingSpace::start(
        recordings_dir.clone(),
        config.node.recordings_min_free_mb,
        config.node.recordings_retention_days,
        &metrics.recording_space,
    )
    .map_err(|e| NodeError::Io(format!("cannot start the recordings disk watch: {e}")))?;
    let prompts_dir = config
        .media
        .prompts_dir
        .clone()
        .unwrap_or_else(|| config.node.data_dir.join("prompts"));
    let prompts = tsunagu_media::Prompts::load(&prompts_dir)
        .map_err(|e| NodeError::Io(format!("media.prompts_dir: {e}")))?;
    if tsunagu_media::prompt::DEFAULTS.is_empty() {
        tracing::warn!(
            "this binary has no default prompts (espeak-ng was not installed when it was built)"
        );
    }
    let provisioning = Provisioning::start(
        store.clone(),
        directory.clone(),
        webhooks.clone(),
        prompts.clone(),
        feed_at_load,
        metrics.calls.provisioning_change.clone(),
    )?;
    let ctx = Arc::new(NodeContext {
        node_id: config.node.id.clone(),
        epoch,
        dropped_epoch: 0.into(),
        superseded: tokio::sync::Notify::new(),
        cluster: OnceLock::new(),
        endpoint: endpoint.clone(),
        ports,
        trunk_channels: routing.trunks.iter().map(|_| AtomicUsize::new(0)).collect(),
        trunk_counters: metrics.trunk_counters(
            &routing
                .trunks
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>(),
        ),
        trunk_up: routing
            .trunks
            .iter()
            .map(|_| AtomicBool::new(true))
            .collect(),
        routing,
        log: log.clone(),
        store: store.clone(),
        recorder: tsunagu_media::Recorder::start(),
        lines: crate::lines::Lines::new(&config.node.id, metrics.calls.queue_waiting.clone()),
        webhooks,
        recordings_dir: recordings_dir.clone(),
        recording_space,
        prompts: prompts.clone(),
        ringback: Arc::new(tsunagu_media::Prompt::ringback()),
        metrics: metrics.clone(),
        system_number: config.sip.system_number.clone(),
        end_guard: Duration::from_secs(32),
        max_ring: Duration::from_secs(config.sip.max_ring_seconds),
        media_timeout: (config.media.timeout_seconds > 0)
            .then(|| Duration::from_secs(config.media.timeout_seconds)),
        max_calls: config.node.max_calls,
        retry_after: config.sip.retry_after_seconds,
        min_se: config.sip.min_session_expires,
        active: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        checkpoints: config.cluster.listen.is_some() && config.cluster.checkpoints,
    });
    let calls = Arc::new(crate::supervisor::Calls::default());
    let (supervisor, supervisor_handle) = Actor::spawn(
        Some("call-supervisor".into()),
        CallSupervisor {
            ctx: ctx.clone(),
            calls: calls.clone(),
            max_call: Duration::from_secs(config.node.max_call_seconds),
        },
        (),
    )
    .await
    .map_err(|e| NodeError::Io(format!("cannot start the call supervisor: {e}")))?;
    let intervals: Vec<u32> = config
        .trunks
        .iter()
        .map(|t| t.options_interval_seconds)
        .collect();
    crate::trunk_health::start(&ctx, &intervals);
    let host = Arc::new(NodeHost::new(
        ctx.clone(),
        provisioning.clone(),
        supervisor.clone(),
        node_info,
        egress.members.clone(),
    ));
    if let Some(cluster) = crate::cluster_link::join(&config, host, metrics.cluster.clone())
        .await
        .map_err(NodeError::Io)?
    {
        tracing::info!(listen = ?config.cluster.listen, "joined the cluster");
        lease_gate.set(cluster.lease());
        let _ = ctx.cluster.set(cluster);
        crate::cluster_link::adopt_leftovers(&ctx, &supervisor, last_seen);
        crate::cluster_link::sweep_orphans(&ctx, &supervisor);
    }
    provisioning.spawn_follower();
    handler.set(Admission::new(ctx.clone(), directory.clone(), calls));

    let api_state = Arc::new(ApiState {
        store: store.clone(),
        hooks: Arc::new(Hooks {
            provisioning,
            ctx: ctx.clone(),
        }),
        registry: Arc::new(metrics.registry()),
        admin_token: token.clone(),
        pool_metrics: metrics.pools.clone(),
        channels: tsunagu_api::Channels {
            email: planner.email,
            sms: planner.sms,
            egress,
            egress_refused: guards.egress_refused.clone(),
        },
        recordings_dir,
        node_id: config.node.id.clone(),
        cluster_token: crate::cluster_link::secret(&config)
            .map_err(NodeError::Io)?
            .map(|s| crate::cluster_link::internal_token(&s)),
        prompts,
        defences: tsunagu_api::Defences::new(&config.api, metrics.api.clone()),
    });
    let bind = |addr: std::net::SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| NodeError::Io(format!("cannot listen for {what} on {addr}: {e}")))
    };
    let api_listener = bind(config.api.listen, "the API").await?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|e| NodeError::Io(e.to_string()))?;
    let metrics_listener = match config.api.metrics_listen {
        Some(addr) => Some(bind(addr, "metrics").await?),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => l.local_addr().map_err(|e| NodeError::Io(e.to_string()))?,
        None => api_addr,
    };
    // The banner before the API serves: once /healthz answers, it is out (a test
    // reading it right after readiness found it not yet written).
    print_banner(
        &config,
        &token,
        &token_source,
        api_addr,
        metrics_addr,
        &endpoint,
    );
    // Both listeners serve with the API's limits (timeouts, connection caps).
    let serve_limits = tsunagu_api::serve::ServeLimits::from_config(&config.api);
    let (api_stop_tx, api_stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut api_tasks = vec![tokio::spawn(tsunagu_api::serve::serve(
        api_listener,
        tsunagu_api::router(api_state.clone()),
        serve_limits.clone(),
        metrics.api.clone(),
        stopped(api_stop_rx.clone()),
    ))];
    if let Some(listener) = metrics_listener {
        api_tasks.push(tokio::spawn(tsunagu_api::serve::serve(
            listener,
            tsunagu_api::metrics_router(api_state),
            serve_limits,
            metrics.api.clone(),
            stopped(api_stop_rx),
        )));
    }

    let superseded = tokio::select! {
        _ = shutdown => false,
        _ = ctx.superseded.notified() => true,
    };
    if superseded {
        // Its calls were dropped (they are the newer incarnation's, or its peers', to
        // carry and log): nothing to drain, and nothing of this node id to mark down.
        ctx.draining.store(true, Ordering::Relaxed);
    } else {
        drain(&ctx, &supervisor, config.node.drain_seconds).await;
    }
    supervisor.stop(None);
    let _ = supervisor_handle.await;
    let flushed = tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(30)))
        .await
        .unwrap_or(false);
    if !flushed {
        tracing::error!("call log could not be flushed within 30 s");
    } else if let Some(cluster) = ctx.cluster.get().filter(|_| !superseded) {
        crate::cluster_link::leave(&ctx, cluster).await;
    }
    // Follow-ups not delivered by now stay in the outbox for the next start.
    let _ = outbox_stop.send(true);
    let _ = outbox_task.await;
    let _ = api_stop_tx.send(true);
    for task in api_tasks {
        let _ = task.await;
    }
    drop(ctx);
    drop(log_thread);
    tracing::info!("stopped");
    if superseded {
        return Err(NodeError::Superseded(config.node.id.clone()));
    }
    Ok(())
}

/// The drain: the node refuses new calls, hands answered calls to its peers (in a
/// cluster), lets the rest finish until `drain_seconds`, then ends what is left
/// itself (BYE, CANCEL, 503) and logs whatever still runs with reason `drain`.
async fn drain(
    ctx: &Arc<NodeContext>,
    supervisor: &ractor::ActorRef<SupervisorMsg>,
    drain_seconds: u64,
) {
    // Drain: refuse new calls, let running ones finish.
    ctx.draining.store(true, Ordering::Relaxed);
    let deadline = Instant::now()
        .checked_add(Duration::from_secs(drain_seconds))
        .unwrap_or_else(Instant::now);
    tracing::info!(active_calls = ctx.active_calls(), drain_seconds, "draining");
    if let Some(cluster) = ctx.cluster.get() {
        // Answered calls go to peers at once (re-INVITEd from there), so a drain takes
        // seconds; the rest finish here.
        let handing = crate::cluster_link::hand_over_all(ctx, cluster, supervisor);
        let _ = tokio::time::timeout_at(deadline.into(), handing).await;
    }
    wait_for_calls(ctx, deadline).await;
    if ctx.active_calls() > 0 {
        // The deadline: the node ends what is left itself (BYE, CANCEL, 503), gives the
        // far ends a moment to answer, then logs whatever still runs.
        tracing::warn!(
            active_calls = ctx.active_calls(),
            "drain deadline passed; ending the remaining calls"
        );
        let _ = supervisor.cast(SupervisorMsg::EndAll("drain"));
        wait_for_calls(ctx, Instant::now() + DRAIN_ANSWERS).await;
        let _ = supervisor.cast(SupervisorMsg::FinishAll);
        wait_for_calls(ctx, Instant::now() + Duration::from_secs(1)).await;
        let abandoned = supervisor
            .call(
                |reply| SupervisorMsg::Abandon("drain", reply),
                Some(Duration::from_secs(5)),
            )
            .await;
        if let Ok(ractor::rpc::CallResult::Success(n)) = abandoned {
            if n > 0 {
                tracing::warn!(
                    calls = n,
                    "calls still running at exit were logged as failed"
                );
            }
        }
    }
}

/// How long ended calls may wait for the far ends' answers to BYE and CANCEL at the
/// drain deadline before they are logged anyway.
const DRAIN_ANSWERS: Duration = Duration::from_secs(2);

/// Waits until no call runs, or `deadline`.
async fn wait_for_calls(ctx: &NodeContext, deadline: Instant) {
    while ctx.active_calls() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Call-log messages waiting above which the node takes no new calls (see
/// `CallLog::ready`): a few seconds of writes at the node's rated call rate.
const LOG_HIGH_WATER: usize = 50_000;

fn print_banner(
    config: &Config,
    token: &str,
    source: &TokenSource,
    api: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    endpoint: &tsunagu_sip::EndpointHandle,
) {
    let sip: Vec<String> = [Transport::Udp, Transport::Tcp, Transport::Tls]
        .iter()
        .filter_map(|t| {
            endpoint
                .local(*t)
                .map(|a| format!("{}:{a}", t.via_name().to_lowercase()))
        })
        .collect();
    println!("tsunagu node `{}` is up", config.node.id);
    println!(
        "  SIP:          {}   (send INVITEs for a tracking number here)",
        sip.join(", ")
    );
    println!("  HTTP API:     http://{api}/v1   (metrics: http://{metrics}/metrics)");
    // Only a token made just now is shown (once): one from the config or a file is the
    // operator's already, and stdout often ends up in logs.
    match source {
        TokenSource::Generated(path) => {
            println!(
                "  admin token:  {token}   (generated, kept in {})",
                path.display()
            )
        }
        TokenSource::File(path) => println!("  admin token:  in {}", path.display()),
        TokenSource::Config => println!("  admin token:  from the configuration"),
    }
    println!(
        "  RTP ports:    {}:{}",
        config.media.address, config.media.ports
    );
    println!("  data:         {}", config.node.data_dir.display());
    println!(
        "  recordings:   {}",
        config.node.effective_recordings_dir().display()
    );
    for t in &config.trunks {
        if let Some(o) = &t.outbound {
            println!("  trunk `{}`: forwarded legs go to {o}", t.name);
        }
    }
}

#[cfg(test)]
mod tests {
    /// A caller's INVITE waits out a full queue and then a full ring before it is
    /// forgotten; one of the node's, a full ring.
    #[test]
    fn an_invite_outlives_the_longest_queue_wait_and_ring() {
        let s = std::time::Duration::from_secs;
        assert_eq!(super::invite_limits(180), (s(3600 + 300 + 32), s(300 + 32)));
        assert_eq!(super::invite_limits(600), (s(3600 + 600 + 32), s(600 + 32)));
        let max = std::time::Duration::MAX;
        assert_eq!(super::invite_limits(u64::MAX), (max, max));
    }

    /// An admin token read from a file is held to the rule of a configured one: a
    /// short or empty one is refused at start; the file's line end is not part of it.
    #[test]
    fn an_admin_token_in_a_file_is_held_to_the_same_length() {
        let dir = tempfile::tempdir().unwrap();
        let admin = |token: &str| {
            let path = dir.path().join("admin");
            std::fs::write(&path, token).unwrap();
            let mut c = tsunagu_config::Config::from_toml("").unwrap();
            c.node.data_dir = dir.path().to_path_buf();
            c.api.admin_token_file = Some(path);
            c
        };
        assert!(super::admin_token(&admin("x")).is_err());
        assert!(super::admin_token(&admin("")).is_err(), "missing or empty");
        assert_eq!(
            super::admin_token(&admin("eight ch\n")).unwrap().0,
            "eight ch"
        );
    }
}
