//! The configuration's sections as typed structs (SPEC 5.2). Every struct denies
//! unknown keys, so a typo is an error rather than a silently ignored setting.

use crate::net::{Cidr, Listener, PortRange};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub sip: SipConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub trunks: Vec<TrunkConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub notify: NotifyConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node id, written into every call log record (`node`).
    #[serde(default = "default_node_id")]
    pub id: String,
    /// Where the embedded store and generated secrets live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How long a draining node waits for running calls before it exits.
    #[serde(default = "default_drain_seconds")]
    pub drain_seconds: u64,
    /// Calls this node holds at once before it answers new INVITEs 503.
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// A call older than this is ended by its supervisor (a stuck-call safety net).
    #[serde(default = "default_max_call_seconds")]
    pub max_call_seconds: u64,
    /// Where call recordings are written (`<day>/<call_id>.wav`, and
    /// `<day>/<call_id>.<node>-<k>.wav` for part k, recorded by a node that took the
    /// call over); default `<data_dir>/recordings` (see [`NodeConfig::effective_recordings_dir`]).
    /// In a cluster, a directory shared by all nodes (NFS, CephFS...) lets any node serve
    /// every part of a recording even while the node that recorded a part is down.
    #[serde(default)]
    pub recordings_dir: Option<PathBuf>,
    /// No recording starts while the file system of `recordings_dir` has less than
    /// this many MiB free (the call goes on unrecorded, counted): recordings are the
    /// one thing a node writes without bound, and a disk they fill stops the store and
    /// every call. 0 = no guard.
    #[serde(default = "default_recordings_min_free_mb")]
    pub recordings_min_free_mb: u64,
    /// Day folders of `recordings_dir` older than this many days are deleted (hourly,
    /// whole days: 90 keeps today and the 89 days before). 0 = kept for ever.
    #[serde(default)]
    pub recordings_retention_days: u32,
    /// Threads of the runtime that runs calls, media and the API; 0 = one fewer than
    /// the CPUs the node may use, at least one (the call-log writer, the UDP standby
    /// and the kernel's packet work take the last). Fewer wake each other less: on a
    /// host shared by several nodes, or well below a node's capacity, 1 costs less CPU
    /// per call (see README).
    #[serde(default)]
    pub worker_threads: usize,
    /// Let the process use transparent huge pages. Off by default: the first touch of
    /// each 2 MiB page zeroes all of it in the thread that touched it, a stall of
    /// several ms on the call path while the node's memory grows (see README).
    #[serde(default)]
    pub transparent_huge_pages: bool,
}

impl NodeConfig {
    /// `recordings_dir`, or its default under `data_dir`.
    pub fn effective_recordings_dir(&self) -> PathBuf {
        self.recordings_dir
            .clone()
            .unwrap_or_else(|| default_recordings_dir(&self.data_dir))
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: default_node_id(),
            data_dir: default_data_dir(),
            drain_seconds: default_drain_seconds(),
            max_calls: default_max_calls(),
            max_call_seconds: default_max_call_seconds(),
            recordings_dir: None,
            recordings_min_free_mb: default_recordings_min_free_mb(),
            recordings_retention_days: 0,
            worker_threads: 0,
            transparent_huge_pages: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// SIP listeners, `udp:ip:port`, `tcp:ip:port` or `tls:ip:port`.
    #[serde(default = "default_sip_listen")]
    pub listen: Vec<Listener>,
    /// The address the node names itself by in what it sends (Via, Contact, From) for
    /// a listener on a wildcard address (`0.0.0.0`, `[::]`), where parties' requests in
    /// the dialog go. Default: `media.address` (see [`Config::sip_advertised_address`]).
    #[serde(default)]
    pub advertised_address: Option<std::net::IpAddr>,
    /// Receive/send buffer asked of the kernel for each UDP socket (SIP and RTP).
    #[serde(default = "default_socket_buffer")]
    pub socket_buffer_bytes: usize,
    /// Caller number presented on forwarded legs of numbers set to `caller_id = "system"`.
    #[serde(default)]
    pub system_number: Option<String>,
    /// Seconds after which a call still not answered nor given up is ended (safety net).
    #[serde(default = "default_max_ring_seconds")]
    pub max_ring_seconds: u64,
    /// Retry-After seconds sent with 503 answers.
    #[serde(default = "default_retry_after")]
    pub retry_after_seconds: u32,
    /// The smallest session-timer interval accepted (Min-SE, RFC 4028): INVITEs asking
    /// for less get 422. 90 is the RFC's floor; lower only in tests.
    #[serde(default = "default_min_session_expires")]
    pub min_session_expires: u32,
    /// Certificates for `tls:` listeners and trunks.
    #[serde(default)]
    pub tls: Option<SipTlsConfig>,
    /// What a SIP message from a source in no trunk's `inbound` networks and at no
    /// trunk's `outbound` address gets: nothing (`drop`), or one stateless 403 to a
    /// request (`reject`).
    #[serde(default)]
    pub untrusted: UntrustedSources,
    /// Answer every request over UDP at the port it came from, as if its Via asked for
    /// `rport` (RFC 3581): for trunks behind NAT that do not ask for it. Off: the Via's
    /// port, as RFC 3261 18.2.2 says, unless the Via asks for `rport`.
    #[serde(default)]
    pub force_rport: bool,
    /// Bytes of received SIP messages that may wait for the SIP core (besides 50,000
    /// messages); past it new messages are dropped unparsed.
    #[serde(default = "default_incoming_queue_bytes")]
    pub incoming_queue_bytes: usize,
    /// Queueing delay (ms) of received messages that, lasting 100 ms, makes the node
    /// refuse new INVITEs with 503 until the delay falls below it again (overload
    /// admission, CoDel-style). Calls in progress are never refused.
    #[serde(default = "default_overload_queue_delay_ms")]
    pub overload_queue_delay_ms: u64,
    /// Shards of the SIP core, each a task owning the transactions and calls of the
    /// Call-IDs that hash to it, so signalling spreads over cores; 0 = one per CPU the
    /// node may use. 1 to 64 otherwise.
    #[serde(default)]
    pub shards: usize,
    /// Who reads SIP over UDP: `auto` (the default: a task of the node's runtime,
    /// with a standby thread that reads too while the runtime leaves a datagram unread
    /// for 5 ms, until it is on time again for 2 s), `threads` (threads of their own,
    /// one per four shards, always: a second thread woken per datagram, 8–18 % more
    /// CPU per call below capacity) or `runtime` (the runtime alone: near capacity
    /// datagrams wait in the kernel behind the runtime's work and overflow its buffer).
    /// None: not written (`auto`), told apart from a written `auto` so that the former
    /// switch beside it is refused whatever it says.
    #[serde(default)]
    pub udp_receive: Option<UdpReceive>,
    /// The former switch: `true` is `udp_receive = "threads"`, `false` is `"runtime"`.
    /// Accepted for configurations written before `udp_receive`; not with it.
    #[serde(default)]
    pub udp_receive_threads: Option<bool>,
    /// TCP/TLS connections open at once (inbound and outbound together).
    #[serde(default = "default_tcp_max_connections")]
    pub tcp_max_connections: usize,
    /// TCP/TLS connections open at once with one remote IP address.
    #[serde(default = "default_tcp_max_connections_per_source")]
    pub tcp_max_connections_per_source: usize,
    /// A TCP/TLS connection with no bytes for this long, or with a message begun and
    /// not finished for this long, is closed.
    #[serde(default = "default_tcp_idle_timeout_seconds")]
    pub tcp_idle_timeout_seconds: u64,
}

/// `sip.udp_receive`: who reads SIP over UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UdpReceive {
    /// The runtime, with standby threads while it is late.
    #[default]
    Auto,
    /// Threads of their own, always.
    Threads,
    /// The runtime alone.
    Runtime,
}

impl SipConfig {
    /// `udp_receive`, or what the former `udp_receive_threads` said.
    pub fn udp_receive_mode(&self) -> UdpReceive {
        match self.udp_receive_threads {
            Some(true) => UdpReceive::Threads,
            Some(false) => UdpReceive::Runtime,
            None => self.udp_receive.unwrap_or_default(),
        }
    }
}

/// `sip.untrusted`: what strangers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UntrustedSources {
    /// No answer at all (no reflection, no transaction state).
    #[default]
    Drop,
    /// One 403 to each request, never retransmitted; ACKs and responses dropped.
    Reject,
}

/// SIP over TLS (RFC 3261 26.2): the node's certificate, optional mutual TLS, and the
/// CAs trunks' certificates are checked against. Files are re-read when they change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipTlsConfig {
    /// PEM certificate chain of the node (server, and client toward trunks that ask).
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM CAs: when set, inbound TLS requires a client certificate they signed (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// PEM CAs trusted for trunks' certificates, besides Mozilla's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How often the certificate files are checked for changes (reload without restart).
    #[serde(default = "default_tls_reload")]
    pub reload_seconds: u64,
}

fn default_tls_reload() -> u64 {
    60
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: default_sip_listen(),
            advertised_address: None,
            socket_buffer_bytes: default_socket_buffer(),
            system_number: None,
            max_ring_seconds: default_max_ring_seconds(),
            retry_after_seconds: default_retry_after(),
            min_session_expires: default_min_session_expires(),
            tls: None,
            untrusted: UntrustedSources::default(),
            force_rport: false,
            incoming_queue_bytes: default_incoming_queue_bytes(),
            overload_queue_delay_ms: default_overload_queue_delay_ms(),
            shards: 0,
            udp_receive: None,
            udp_receive_threads: None,
            tcp_max_connections: default_tcp_max_connections(),
            tcp_max_connections_per_source: default_tcp_max_connections_per_source(),
            tcp_idle_timeout_seconds: default_tcp_idle_timeout_seconds(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Address RTP sockets bind to and that rewritten SDP advertises.
    #[serde(default = "default_media_address")]
    pub address: IpAddr,
    /// Inclusive RTP port range; each leg of a call takes an even port (RTP) and the odd one above it.
    #[serde(default = "default_ports")]
    pub ports: PortRange,
    /// Prompt WAV files (8 kHz 16-bit mono) shared by all operators, and operators'
    /// uploads under `operators/<id>/`; default `<data_dir>/prompts`.
    #[serde(default)]
    pub prompts_dir: Option<std::path::PathBuf>,
    /// Which sources a call's RTP ports accept: `strict` (the IP and port its SDP
    /// names), `address` (that IP; the first RTP packet latches the port, for NAT) or
    /// `off` (anyone: unsafe, the behaviour before the source check).
    #[serde(default = "default_latch")]
    pub latch: RtpLatch,
    /// An answered call from which neither party has sent RTP for this long is ended
    /// (BYE to both, logged `end_reason = "media_timeout"`): a party gone without a
    /// BYE would otherwise hold its ports and its advertiser's line until
    /// `node.max_call_seconds`. Not while a party holds the call (`a=inactive`,
    /// `sendonly`, `recvonly`). 0 turns it off.
    #[serde(default = "default_media_timeout")]
    pub timeout_seconds: u64,
    /// RTP consent: send nothing (prompts, ringback, relayed audio) toward a party
    /// until one of its RTP packets arrived, instead of to the address its SDP names.
    /// For trunks that pass end users' SDP on unchanged (an SDP can name anyone);
    /// off by default, as a phone that sends nothing while silent would then not hear
    /// its prompts.
    #[serde(default)]
    pub consent: bool,
    /// How much audio (relayed, or generated: prompts, ringback, queue audio) goes to
    /// the address a party's SDP names before any RTP packet came from that party,
    /// when that address is outside every trunk's networks: then nothing until one
    /// does (an SDP can name anyone's address; this bounds what one call can have
    /// the node send there to 250 packets). Phones send RTP from the start, so they
    /// hear everything; one that stays silent for longer misses the rest until it
    /// sends. 0 is `consent` for such addresses.
    #[serde(default = "default_unverified_audio_seconds")]
    pub unverified_audio_seconds: u32,
}

fn default_unverified_audio_seconds() -> u32 {
    5
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            address: default_media_address(),
            ports: default_ports(),
            prompts_dir: None,
            latch: default_latch(),
            timeout_seconds: default_media_timeout(),
            consent: false,
            unverified_audio_seconds: default_unverified_audio_seconds(),
        }
    }
}

fn default_media_timeout() -> u64 {
    120
}

/// `media.latch`: the RTP source policy (tsunagu_media::Latch; this crate does not
/// depend on the media crate, so the node maps one onto the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtpLatch {
    Strict,
    Address,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// The admin token; if neither this nor `admin_token_file` is set a random token is
    /// generated once and kept in `<data_dir>/admin_token`.
    #[serde(default)]
    pub admin_token: Option<String>,
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` names the client; from any other peer the
    /// header is ignored and the TCP peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// Open API connections at once; more are closed as soon as they are accepted.
    #[serde(default = "default_api_max_connections")]
    pub max_connections: u32,
    /// Open API connections from one client address (trusted proxies are not capped).
    #[serde(default = "default_api_max_connections_per_address")]
    pub max_connections_per_address: u32,
    /// Time a client has to send a request's headers (also the keep-alive idle limit).
    #[serde(default = "default_api_header_timeout")]
    pub header_timeout_seconds: u32,
    /// A connection on which no byte moves either way for this long while the node
    /// waits to read or write is closed (a client that stopped reading a response).
    #[serde(default = "default_api_idle_timeout")]
    pub idle_timeout_seconds: u32,
    /// Time a handler has to answer, request body included (slow uploads are cut).
    #[serde(default = "default_api_request_timeout")]
    pub request_timeout_seconds: u32,
    /// CSV/TSV exports running at once; more are answered 503 with Retry-After.
    #[serde(default = "default_api_max_exports")]
    pub max_exports: u32,
    /// CSV/TSV exports one operator may run at once (so that one operator's exports,
    /// slow clients included, cannot hold every place of `max_exports`).
    #[serde(default = "default_api_max_exports_per_operator")]
    pub max_exports_per_operator: u32,
    /// An export still streaming after this long is cut (its body ends in an error),
    /// however steadily its client reads: a client reading a trickle would otherwise
    /// hold its place for days.
    #[serde(default = "default_api_export_max_seconds")]
    pub export_max_seconds: u32,
    /// Live call streams (`GET /v1/calls/stream`, the incoming-call screen) open at
    /// once; more are answered 503 with Retry-After (each reads the store once a
    /// second).
    #[serde(default = "default_api_max_streams")]
    pub max_streams: u32,
    /// Live call streams one operator may hold open at once.
    #[serde(default = "default_api_max_streams_per_operator")]
    pub max_streams_per_operator: u32,
    /// A live call stream open this long is ended (a client reconnects: the
    /// incoming-call screen does, an EventSource does), so a forgotten tab does not
    /// hold its place for days.
    #[serde(default = "default_api_stream_max_seconds")]
    pub stream_max_seconds: u32,
    /// JSON call searches (`GET /v1/calls`) running at once; more are answered 503
    /// with Retry-After (each holds a store connection and a blocking thread).
    #[serde(default = "default_api_max_searches")]
    pub max_searches: u32,
    /// JSON call searches one operator may run at once (so that one operator's slow
    /// searches do not keep the others' answered 503).
    #[serde(default = "default_api_max_searches_per_operator")]
    pub max_searches_per_operator: u32,
    /// Recording downloads streaming at once; more are answered 503 with Retry-After
    /// (each holds files, perhaps a peer's connection, for as long as its client
    /// reads, at most `export_max_seconds`).
    #[serde(default = "default_api_max_recordings")]
    pub max_recordings: u32,
    /// Recording downloads one operator may stream at once.
    #[serde(default = "default_api_max_recordings_per_operator")]
    pub max_recordings_per_operator: u32,
    /// Prompt uploads read at once; more are answered 503 with Retry-After before any
    /// of their body is read (each body is up to an operator's prompt quota, 9.6 MB,
    /// held in memory with its decoded copy while it is checked and stored).
    #[serde(default = "default_api_max_prompt_uploads")]
    pub max_prompt_uploads: u32,
    /// Prompt uploads one operator may have read at once.
    #[serde(default = "default_api_max_prompt_uploads_per_operator")]
    pub max_prompt_uploads_per_operator: u32,
    /// Tracking numbers one operator may hold (its own and its pools' together):
    /// every node keeps every number in memory, so one operator's key must not be
    /// able to fill them.
    #[serde(default = "default_api_max_numbers_per_operator")]
    pub max_numbers_per_operator: u32,
    /// Advertisers one operator may create.
    #[serde(default = "default_api_max_advertisers_per_operator")]
    pub max_advertisers_per_operator: u32,
    /// A JSON call search that has not finished reading the store in this long is
    /// stopped and answered 503 (a filter over years of calls would otherwise scan on
    /// after its client was answered 408). Capped a quarter second below
    /// `request_timeout_seconds`, so the client hears why.
    #[serde(default = "default_api_search_timeout")]
    pub search_timeout_seconds: u32,
    /// An export whose client takes no data for this long is cut.
    #[serde(default = "default_api_export_send_timeout")]
    pub export_send_timeout_seconds: u32,
    /// Serve `/metrics` on this listener only (not on `listen`).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// When set, `/metrics` needs `Authorization: Bearer <metrics_token>`.
    #[serde(default)]
    pub metrics_token: Option<String>,
    /// Pool ids whose `tsunagu_pool_*` series carry their own `pool` label; every other
    /// pool is counted under `pool="other"` (labels never grow with what users create).
    #[serde(default)]
    pub pool_metrics: Vec<String>,
    /// Rate limits and caps of `POST /v1/pools/{id}/issue`.
    #[serde(default)]
    pub issue: IssueLimitsConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            admin_token: None,
            admin_token_file: None,
            trusted_proxies: Vec::new(),
            max_connections: default_api_max_connections(),
            max_connections_per_address: default_api_max_connections_per_address(),
            header_timeout_seconds: default_api_header_timeout(),
            idle_timeout_seconds: default_api_idle_timeout(),
            request_timeout_seconds: default_api_request_timeout(),
            max_exports: default_api_max_exports(),
            max_exports_per_operator: default_api_max_exports_per_operator(),
            export_max_seconds: default_api_export_max_seconds(),
            max_streams: default_api_max_streams(),
            max_streams_per_operator: default_api_max_streams_per_operator(),
            stream_max_seconds: default_api_stream_max_seconds(),
            max_searches: default_api_max_searches(),
            max_searches_per_operator: default_api_max_searches_per_operator(),
            max_recordings: default_api_max_recordings(),
            max_recordings_per_operator: default_api_max_recordings_per_operator(),
            max_prompt_uploads: default_api_max_prompt_uploads(),
            max_prompt_uploads_per_operator: default_api_max_prompt_uploads_per_operator(),
            max_numbers_per_operator: default_api_max_numbers_per_operator(),
            max_advertisers_per_operator: default_api_max_advertisers_per_operator(),
            search_timeout_seconds: default_api_search_timeout(),
            export_send_timeout_seconds: default_api_export_send_timeout(),
            metrics_listen: None,
            metrics_token: None,
            pool_metrics: Vec::new(),
            issue: IssueLimitsConfig::default(),
        }
    }
}

/// Limits on number issuance by web pages (requests without an API key). Rates are
/// token buckets: `*_per_minute` refills, `*_burst` is the bucket size; a rate of 0
/// turns that limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueLimitsConfig {
    #[serde(default = "default_issue_per_address_per_minute")]
    pub per_address_per_minute: u32,
    #[serde(default = "default_issue_per_address_burst")]
    pub per_address_burst: u32,
    #[serde(default = "default_issue_per_pool_per_minute")]
    pub per_pool_per_minute: u32,
    #[serde(default = "default_issue_per_pool_burst")]
    pub per_pool_burst: u32,
    /// Live leases one session (its `session_id`, else `cookie_id`) may hold in one
    /// pool. A request naming neither is a new visitor (only the rate limits apply).
    #[serde(default = "default_issue_max_leases_per_session")]
    pub max_leases_per_session: u32,
    /// Live leases one client address (IPv6: one /64) may hold in one pool, however
    /// many sessions it names: a script that names none, or a new one each time.
    #[serde(default = "default_issue_max_leases_per_address")]
    pub max_leases_per_address: u32,
    /// Client addresses the limiter remembers at once; beyond it, new addresses share
    /// one bucket until idle ones are swept (memory stays bounded under a spray).
    #[serde(default = "default_issue_tracked_addresses")]
    pub tracked_addresses: u32,
}

impl Default for IssueLimitsConfig {
    fn default() -> Self {
        IssueLimitsConfig {
            per_address_per_minute: default_issue_per_address_per_minute(),
            per_address_burst: default_issue_per_address_burst(),
            per_pool_per_minute: default_issue_per_pool_per_minute(),
            per_pool_burst: default_issue_per_pool_burst(),
            max_leases_per_session: default_issue_max_leases_per_session(),
            max_leases_per_address: default_issue_max_leases_per_address(),
            tracked_addresses: default_issue_tracked_addresses(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Embedded,
    Scylla,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub backend: StoreBackend,
    /// Embedded store file; default `<data_dir>/tsunagu.db`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// ScyllaDB contact points (`host:port`).
    #[serde(default)]
    pub nodes: Vec<String>,
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    /// Replication factor of the keyspace, when the first node creates it.
    #[serde(default = "default_replication")]
    pub replication: u32,
    /// ScyllaDB: the consistency of reads and writes (`local_quorum` or `quorum`);
    /// compare-and-set uses the matching serial level (LOCAL_SERIAL or SERIAL).
    #[serde(default)]
    pub consistency: StoreConsistency,
    /// ScyllaDB: the local datacenter (preferred for requests; where the keyspace
    /// replicates when created). Unset: every datacenter, `replication` copies each.
    #[serde(default)]
    pub datacenter: Option<String>,
    /// ScyllaDB: user name for password authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// ScyllaDB: a file holding the password (needs `username`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// ScyllaDB: how long one request may take before it fails.
    #[serde(default = "default_store_request_timeout")]
    pub request_timeout_seconds: u64,
    /// ScyllaDB: TLS to the cluster's native transport.
    #[serde(default)]
    pub tls: Option<StoreTlsConfig>,
    /// When the embedded store's commits reach the disk (SQLite `synchronous` in WAL
    /// mode): `full` (every commit; a power cut loses nothing committed) or `normal`
    /// (at checkpoints; a power cut may lose the last commits, never corrupts).
    #[serde(default)]
    pub synchronous: Synchronous,
}

/// The consistency level of the ScyllaDB backend (see `store.consistency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreConsistency {
    #[default]
    LocalQuorum,
    Quorum,
}

/// TLS to ScyllaDB: the CAs its certificates are checked against and, when the
/// cluster asks for one, this node's client certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreTlsConfig {
    pub ca_file: PathBuf,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// SQLite's `synchronous` setting for the embedded store (see `store.synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Embedded,
            synchronous: Synchronous::default(),
            path: None,
            nodes: Vec::new(),
            keyspace: default_keyspace(),
            replication: default_replication(),
            consistency: StoreConsistency::default(),
            datacenter: None,
            username: None,
            password_file: None,
            request_timeout_seconds: default_store_request_timeout(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Where this node's peers connect (mutual TLS); unset = a node on its own.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Peers dialled at start besides those the store lists (any one suffices).
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// The cluster's shared secret (ractor_cluster's cookie): a node without it is
    /// refused even with a valid certificate. At least 16 characters.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret (instead of `secret`).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Certificates between nodes: required with `listen`.
    #[serde(default)]
    pub tls: Option<ClusterTlsConfig>,
    /// Calls keep a checkpoint in the store so that another node can resume them (on
    /// by default in a cluster; off: a node's answered calls end with it, and each call
    /// writes its record in progress only at admission and answer).
    #[serde(default = "default_checkpoints")]
    pub checkpoints: bool,
}

fn default_checkpoints() -> bool {
    true
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: None,
            seeds: Vec::new(),
            secret: None,
            secret_file: None,
            tls: None,
            checkpoints: default_checkpoints(),
        }
    }
}

/// Mutual TLS between nodes: each node presents `cert_file` (which must name the IP
/// address of its `cluster.listen`) and accepts only peers whose certificate `ca_file`
/// signed, as client and as server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The cluster's CA (PEM): the only issuer of certificates nodes accept.
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,tsunagu_sip=debug`; `RUST_LOG` wins if set.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// KiB of log lines that may wait for the log writer thread (lines past it are
    /// dropped and counted); 0 writes each line to stderr from the thread that logs it.
    #[serde(default = "default_log_queue_kib")]
    pub queue_kib: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
            queue_kib: default_log_queue_kib(),
        }
    }
}

/// A carrier peering: who may send us calls and where forwarded legs go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub name: String,
    /// Source networks allowed to send INVITEs on this trunk.
    #[serde(default)]
    pub inbound: Vec<Cidr>,
    /// Where forwarded legs are sent, `udp:ip:port`, `tcp:ip:port` or `tls:ip:port`.
    #[serde(default)]
    pub outbound: Option<Listener>,
    /// New inbound calls per second accepted from this trunk; 0 = no cap.
    #[serde(default)]
    pub max_cps: u32,
    /// How long an INVITE over `max_cps` may wait for its turn before it is refused 503.
    #[serde(default = "default_shaping_ms")]
    pub shaping_ms: u32,
    /// Calls open on this trunk at once, on each node: calls from it and forwarding
    /// attempts to it (ringing or answered); 0 = no cap.
    #[serde(default)]
    pub max_channels: u32,
    /// Believe P-Asserted-Identity from this trunk, and send it to this trunk (RFC 3325).
    #[serde(default)]
    pub trusted: bool,
    /// This carrier verifies the caller's number it sends in From (a network that
    /// authenticates its subscribers): such callers may receive SMS. Otherwise only a
    /// P-Asserted-Identity from a `trusted` trunk counts as a verified number.
    #[serde(default)]
    pub verifies_caller_id: bool,
    /// OPTIONS keepalive interval toward `outbound`; 0 = off.
    #[serde(default)]
    pub options_interval_seconds: u32,
    /// What a 3xx from this trunk means: `fail` (a failure: next destination) or
    /// `follow` (try the number its Contact names).
    #[serde(default)]
    pub redirects: RedirectPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedirectPolicy {
    #[default]
    Fail,
    Follow,
}

/// Destination prefix → ordered trunks; the longest matching prefix wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub trunks: Vec<String>,
}

/// Follow-ups after calls: webhooks, e-mail, SMS and GA4 conversions, all delivered
/// from the durable outbox in the store with retries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Delivery attempts before a follow-up is given up (kept as dead in the outbox).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay; each further retry waits twice as long, at most an hour.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Time allowed for one delivery (connect, send, answer).
    #[serde(default = "default_delivery_timeout_ms")]
    pub timeout_ms: u64,
    /// Offset from UTC of the times written into e-mail and SMS text (540 = JST).
    #[serde(default = "default_utc_offset")]
    pub utc_offset_minutes: i32,
    /// Extra CA certificates (PEM) trusted for HTTPS deliveries and the SMTP relay's
    /// TLS, besides the built-in Mozilla roots (for receivers with an in-house CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    #[serde(default)]
    pub sms: Option<SmsConfig>,
    #[serde(default)]
    pub ga4: Ga4Config,
    /// Networks follow-ups may reach although they are not public (e.g. an in-house
    /// CRM on `10.0.0.0/8`). Loopback, private, link-local, CGNAT, multicast and other
    /// non-public addresses are refused otherwise, at webhook registration and again
    /// when connecting (see `tsunagu_config::egress`).
    #[serde(default)]
    pub allowed_networks: Vec<Cidr>,
    /// SMS sent to one caller's number per day (local day, `utc_offset_minutes`),
    /// counted across the cluster in the store.
    #[serde(default = "default_caller_sms_per_day")]
    pub caller_sms_per_day: u32,
    /// Calls to one tracking number, per clock hour, whose notices (e-mail and SMS to
    /// `notify` recipients) go, counted in the store for the whole cluster; past it
    /// they are withheld and counted. 0: no limit; at most 3600.
    #[serde(default = "default_notices_per_number_per_hour")]
    pub notices_per_number_per_hour: u32,
    /// Deliveries in flight to one destination (host and port) at once.
    #[serde(default = "default_per_destination")]
    pub per_destination: u32,
    /// Deliveries in flight (and waiting for their destination) on this node at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            max_attempts: default_max_attempts(),
            retry_base_ms: default_retry_base_ms(),
            timeout_ms: default_delivery_timeout_ms(),
            utc_offset_minutes: default_utc_offset(),
            ca_file: None,
            smtp: None,
            sms: None,
            ga4: Ga4Config::default(),
            allowed_networks: Vec::new(),
            caller_sms_per_day: default_caller_sms_per_day(),
            notices_per_number_per_hour: default_notices_per_number_per_hour(),
            per_destination: default_per_destination(),
            max_in_flight: default_max_in_flight(),
        }
    }
}

/// The mail relay notices are handed to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// How the connection to the relay is protected (see [`SmtpTls`]).
    #[serde(default)]
    pub tls: SmtpTls,
    /// Sender address, e.g. `tsunagu <calls@example.com>`.
    pub from: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// `notify.smtp.tls`: plain SMTP (a local MTA that handles TLS onward), STARTTLS
/// required (the submission port, 587), or TLS from the first byte (465). With TLS the
/// relay's certificate must be valid for `host`, by the built-in Mozilla roots or
/// `notify.ca_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    #[default]
    None,
    Starttls,
    Tls,
}

/// An HTTP SMS gateway: each SMS is one POST of `body` with `{to}` and `{text}` filled
/// in, escaped for `content_type` (JSON-escaped without quotes, or percent-encoded for
/// a form body: [`SmsEncoding`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    pub url: String,
    /// Sent as the `Authorization` header, e.g. `Bearer KEY` or `Basic ...`.
    #[serde(default)]
    pub authorization: Option<String>,
    #[serde(default = "default_sms_body")]
    pub body: String,
    #[serde(default = "default_sms_content_type")]
    pub content_type: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ga4Config {
    /// Measurement Protocol endpoint (`measurement_id` and `api_secret` are appended).
    #[serde(default = "default_ga4_endpoint")]
    pub endpoint: String,
}

impl Default for Ga4Config {
    fn default() -> Self {
        Ga4Config {
            endpoint: default_ga4_endpoint(),
        }
    }
}

fn default_max_attempts() -> u32 {
    15
}
fn default_retry_base_ms() -> u64 {
    1000
}
fn default_delivery_timeout_ms() -> u64 {
    10_000
}
fn default_utc_offset() -> i32 {
    540
}
fn default_caller_sms_per_day() -> u32 {
    3
}
fn default_notices_per_number_per_hour() -> u32 {
    120
}
fn default_per_destination() -> u32 {
    8
}
fn default_max_in_flight() -> u32 {
    128
}
fn default_smtp_port() -> u16 {
    25
}
fn default_sms_body() -> String {
    r#"{"to":"{to}","text":"{text}"}"#.into()
}
/// How `{to}` and `{text}` are escaped into `notify.sms.body`: for the body's content
/// type, so that a value (a tracking parameter in a template, which any page visitor
/// sets) cannot add or override the gateway's fields (`&To=...` in a form body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsEncoding {
    /// `application/json` and other JSON types (`+json`).
    Json,
    /// `application/x-www-form-urlencoded`: percent-encoded.
    Form,
}

impl SmsEncoding {
    /// The encoding of a content type (parameters such as `charset` ignored); None for
    /// any other type, which the configuration refuses.
    pub fn of(content_type: &str) -> Option<SmsEncoding> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        let media = media.to_ascii_lowercase();
        if media == "application/json"
            || (media.starts_with("application/") && media.ends_with("+json"))
        {
            Some(SmsEncoding::Json)
        } else if media == "application/x-www-form-urlencoded" {
            Some(SmsEncoding::Form)
        } else {
            None
        }
    }
}

fn default_sms_content_type() -> String {
    "application/json".into()
}
fn default_ga4_endpoint() -> String {
    "https://www.google-analytics.com/mp/collect".into()
}

fn default_shaping_ms() -> u32 {
    200
}
fn default_node_id() -> String {
    "n1".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_recordings_min_free_mb() -> u64 {
    1024
}

fn default_recordings_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("recordings")
}
fn default_drain_seconds() -> u64 {
    60
}
fn default_max_calls() -> usize {
    20_000
}
fn default_max_call_seconds() -> u64 {
    4 * 3600
}
fn default_sip_listen() -> Vec<Listener> {
    vec![
        "udp:127.0.0.1:5060".parse().unwrap(),
        "tcp:127.0.0.1:5060".parse().unwrap(),
    ]
}
fn default_socket_buffer() -> usize {
    4 * 1024 * 1024
}
fn default_max_ring_seconds() -> u64 {
    180
}
fn default_retry_after() -> u32 {
    5
}
fn default_min_session_expires() -> u32 {
    90
}
fn default_overload_queue_delay_ms() -> u64 {
    50
}

fn default_incoming_queue_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_tcp_max_connections() -> usize {
    1024
}
fn default_tcp_max_connections_per_source() -> usize {
    64
}
fn default_tcp_idle_timeout_seconds() -> u64 {
    120
}
fn default_media_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
/// `address`: strangers who spray the port range are refused (they would need the
/// peer's IP), while far ends behind a NAT that keeps their IP still work.
fn default_latch() -> RtpLatch {
    RtpLatch::Address
}
fn default_ports() -> PortRange {
    PortRange {
        first: 20000,
        last: 29999,
    }
}
fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
/// Each open connection costs a few tens of KiB at most; slow ones are cut by the
/// header and idle timeouts, so a flood must keep reconnecting.
fn default_api_max_connections() -> u32 {
    2048
}
/// Room for an operator's backend that issues numbers over hundreds of parallel
/// connections from one address (the e2e test runs 200 at once).
fn default_api_max_connections_per_address() -> u32 {
    256
}
fn default_api_header_timeout() -> u32 {
    10
}
fn default_api_idle_timeout() -> u32 {
    60
}
fn default_api_request_timeout() -> u32 {
    60
}
fn default_api_max_exports() -> u32 {
    4
}
/// One at a time: with the default four places, no operator can take more than a
/// quarter of them.
fn default_api_max_exports_per_operator() -> u32 {
    1
}
/// An hour: a year of a busy operator's calls (millions of rows, a few hundred MB) at
/// a few hundred kB/s. Longer exports page through it with `from`/`to`.
fn default_api_export_max_seconds() -> u32 {
    3600
}
/// A screen per advertiser of a few operators' staff: each a store read a second.
fn default_api_max_streams() -> u32 {
    32
}
fn default_api_max_streams_per_operator() -> u32 {
    8
}
fn default_api_stream_max_seconds() -> u32 {
    3600
}
fn default_api_max_searches() -> u32 {
    8
}
fn default_api_max_searches_per_operator() -> u32 {
    2
}
fn default_api_max_recordings() -> u32 {
    32
}
fn default_api_max_recordings_per_operator() -> u32 {
    8
}
fn default_api_max_prompt_uploads() -> u32 {
    4
}
fn default_api_max_prompt_uploads_per_operator() -> u32 {
    2
}
/// Far above a call-tracking operator's needs (thousands); at the largest a number's
/// settings may take (64 KiB) still a bounded share of a node's memory.
fn default_api_max_numbers_per_operator() -> u32 {
    50_000
}
fn default_api_max_advertisers_per_operator() -> u32 {
    10_000
}
fn default_api_search_timeout() -> u32 {
    10
}
fn default_api_export_send_timeout() -> u32 {
    30
}
/// The page tag re-issues at most every 15 s per pool on a page; 30 a minute with a
/// burst of 10 leaves room for a few pools and reloads, and stops a loop at once.
fn default_issue_per_address_per_minute() -> u32 {
    30
}
fn default_issue_per_address_burst() -> u32 {
    10
}
/// 10 issues a second per pool: a pool of 1000 numbers held 30 min sees about one
/// new visitor a second at full use.
fn default_issue_per_pool_per_minute() -> u32 {
    600
}
fn default_issue_per_pool_burst() -> u32 {
    100
}
fn default_issue_max_leases_per_session() -> u32 {
    2
}
fn default_issue_max_leases_per_address() -> u32 {
    10
}
fn default_issue_tracked_addresses() -> u32 {
    100_000
}
fn default_keyspace() -> String {
    "tsunagu".into()
}
fn default_replication() -> u32 {
    3
}
fn default_store_request_timeout() -> u64 {
    5
}
fn default_log_level() -> String {
    "info".into()
}

fn default_log_queue_kib() -> u32 {
    4096
}
