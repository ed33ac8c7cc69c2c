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
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: default_node_id(),
            data_dir: default_data_dir(),
            drain_seconds: default_drain_seconds(),
            max_calls: default_max_calls(),
            max_call_seconds: default_max_call_seconds(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// SIP listeners, `udp:ip:port`, `tcp:ip:port` or `tls:ip:port`.
    #[serde(default = "default_sip_listen")]
    pub listen: Vec<Listener>,
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
            socket_buffer_bytes: default_socket_buffer(),
            system_number: None,
            max_ring_seconds: default_max_ring_seconds(),
            retry_after_seconds: default_retry_after(),
            min_session_expires: default_min_session_expires(),
            tls: None,
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
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            address: default_media_address(),
            ports: default_ports(),
            prompts_dir: None,
        }
    }
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
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            admin_token: None,
            admin_token_file: None,
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
    #[serde(default = "default_replication")]
    pub replication: u32,
    /// When the embedded store's commits reach the disk (SQLite `synchronous` in WAL
    /// mode): `full` (every commit; a power cut loses nothing committed) or `normal`
    /// (at checkpoints; a power cut may lose the last commits, never corrupts).
    #[serde(default)]
    pub synchronous: Synchronous,
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
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster listener for other nodes; unset = single node.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
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
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
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
    /// Calls (inbound and outbound) open on this trunk at once; 0 = no cap.
    #[serde(default)]
    pub max_channels: u32,
    /// Believe P-Asserted-Identity from this trunk, and send it to this trunk (RFC 3325).
    #[serde(default)]
    pub trusted: bool,
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
    /// Extra CA certificates (PEM) trusted for HTTPS deliveries, besides the built-in
    /// Mozilla roots (for receivers with an in-house CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    #[serde(default)]
    pub sms: Option<SmsConfig>,
    #[serde(default)]
    pub ga4: Ga4Config,
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
        }
    }
}

/// The mail relay notices are handed to (plain SMTP; use a local MTA for TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// Sender address, e.g. `tsunagu <calls@example.com>`.
    pub from: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// An HTTP SMS gateway: each SMS is one POST of `body` with `{to}` and `{text}` filled
/// in (JSON-escaped, without quotes).
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
fn default_smtp_port() -> u16 {
    25
}
fn default_sms_body() -> String {
    r#"{"to":"{to}","text":"{text}"}"#.into()
}
fn default_sms_content_type() -> String {
    "application/json".into()
}
fn default_ga4_endpoint() -> String {
    "http://www.google-analytics.com/mp/collect".into()
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
fn default_media_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
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
fn default_keyspace() -> String {
    "tsunagu".into()
}
fn default_replication() -> u32 {
    3
}
fn default_log_level() -> String {
    "info".into()
}
