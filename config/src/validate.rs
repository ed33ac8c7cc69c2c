//! Semantic checks of a parsed [`Config`]; every problem is reported with its key path.

use crate::model::{Config, StoreBackend};
use crate::net::Transport;
use std::collections::HashSet;
use std::fmt;

/// `path` without `.` components, so `./data` and `data` compare equal.
fn lexical(path: &std::path::Path) -> std::path::PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// One configuration problem: where (`trunks[1].outbound`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: &str, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The fewest characters of the admin token (`api.admin_token`, or the file's).
const MIN_ADMIN_TOKEN: usize = 8;
/// The fewest characters of the cluster's secret (`cluster.secret`, or the file's).
const MIN_CLUSTER_SECRET: usize = 16;

/// Why an admin token cannot be used, if it cannot (configured, or read from
/// `api.admin_token_file`: one rule for both). Its value is never echoed.
pub fn admin_token_error(token: &str) -> Option<String> {
    (token.trim().chars().count() < MIN_ADMIN_TOKEN)
        .then(|| format!("must be at least {MIN_ADMIN_TOKEN} characters"))
}

/// Why a cluster secret cannot be used, if it cannot (configured, or read from
/// `cluster.secret_file`).
pub fn cluster_secret_error(secret: &str) -> Option<String> {
    (secret.trim().chars().count() < MIN_CLUSTER_SECRET)
        .then(|| format!("must be at least {MIN_CLUSTER_SECRET} characters"))
}

/// A node's name (`node.id`): 1 to 64 letters, digits, `.`, `_` or `-`. The cluster
/// holds peers to it too: names from peers are logged and kept in every member's
/// view, and a name with a line break or an escape forged log lines, a 4 MiB one
/// filled views (a review).
pub fn is_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Config {
    /// Checks the meaning of the configuration; returns every error found.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut err = |path: String, msg: String| errors.push(ConfigError { path, message: msg });

        // The cluster's rule for names: a peer's frame naming another is refused.
        if !is_node_name(&self.node.id) {
            err(
                "node.id".into(),
                "must be 1 to 64 letters, digits, '.', '_' or '-'".into(),
            );
        }
        if self.node.max_calls == 0 {
            err("node.max_calls".into(), "must be at least 1".into());
        }
        // Durations the node adds to its clock: a "forever" of u64::MAX made the drain
        // panic at SIGTERM (a review).
        if self.node.drain_seconds > 86_400 {
            err("node.drain_seconds".into(), "must be at most 86400".into());
        }
        if self.node.max_call_seconds > 7 * 86_400 {
            err(
                "node.max_call_seconds".into(),
                "must be at most 604800 (a week)".into(),
            );
        }
        if let Some(message) = self.recordings_dir_error() {
            err("node.recordings_dir".into(), message);
        }
        // MiB made bytes with a multiplication: a guard past any disk (1 PiB) is a
        // typo, and one past 2^44 MiB would overflow.
        if self.node.recordings_min_free_mb > 1 << 30 {
            err(
                "node.recordings_min_free_mb".into(),
                "must be at most 1073741824 (1 PiB; 0 turns the guard off)".into(),
            );
        }
        let days = u64::from(self.node.recordings_retention_days);
        // The longest call, plus the day it started in: a folder must outlive every
        // recording still written into it (a call from 23:59 writes into that day's).
        let shortest = self.node.max_call_seconds.div_ceil(86_400) + 1;
        if days > 36_500 {
            err(
                "node.recordings_retention_days".into(),
                "must be at most 36500 (a century; 0 keeps recordings for ever)".into(),
            );
        } else if days != 0 && days < shortest {
            err(
                "node.recordings_retention_days".into(),
                format!("must be 0 or at least {shortest} (a day more than node.max_call_seconds, so no recording still being written is deleted)"),
            );
        }

        if self.log.queue_kib > 1 << 20 {
            err(
                "log.queue_kib".into(),
                "at most 1048576 (1 GiB; 0 writes each line at once)".into(),
            );
        }

        if self.sip.listen.is_empty() {
            err("sip.listen".into(), "needs at least one listener".into());
        }
        let mut seen = HashSet::new();
        let mut udp_families = HashSet::new();
        for (i, l) in self.sip.listen.iter().enumerate() {
            if !seen.insert(*l) {
                err(format!("sip.listen[{i}]"), format!("`{l}` is listed twice"));
            } else if l.transport == Transport::Udp && !udp_families.insert(l.addr.is_ipv4()) {
                // Every datagram to a peer leaves from the one UDP socket of its address
                // family: a second would take requests whose answers left from the
                // first (another source address: trunks, firewalls and NATs drop them).
                err(
                    format!("sip.listen[{i}]"),
                    "one udp listener per address family: to take SIP on several addresses, listen on 0.0.0.0 (or [::])".into(),
                );
            }
            if l.transport == Transport::Tls && self.sip.tls.is_none() {
                err(
                    format!("sip.listen[{i}]"),
                    "a tls listener needs [sip.tls] with cert_file and key_file".into(),
                );
            }
        }

        if self
            .sip
            .advertised_address
            .is_some_and(|a| a.is_unspecified())
        {
            err(
                "sip.advertised_address".into(),
                "must be a concrete address: parties send their requests to it".into(),
            );
        }
        let advertised = self.sip_advertised_address();
        for (i, l) in self.sip.listen.iter().enumerate() {
            // An IPv6 listener takes IPv4 too (dual stack); an IPv4 one cannot be
            // reached at an IPv6 address.
            if l.addr.ip().is_unspecified() && l.addr.is_ipv4() && advertised.is_ipv6() {
                err(
                    format!("sip.listen[{i}]"),
                    format!("listens on 0.0.0.0 but would name itself {advertised} (sip.advertised_address, else media.address): set an IPv4 sip.advertised_address"),
                );
            }
        }
        if self.media.address.is_unspecified() {
            err(
                "media.address".into(),
                "must be a concrete address: it is advertised in SDP".into(),
            );
        }
        if self.media.timeout_seconds > 86_400 {
            err(
                "media.timeout_seconds".into(),
                "at most 86400 (0 turns the media timeout off)".into(),
            );
        }
        if self.media.unverified_audio_seconds > 3_600 {
            err(
                "media.unverified_audio_seconds".into(),
                "at most 3600".into(),
            );
        }
        let ports = self.media.ports;
        for (i, l) in self.sip.listen.iter().enumerate() {
            if l.transport == Transport::Udp && ports.contains(l.addr.port()) {
                err(
                    "media.ports".into(),
                    format!("{ports} overlaps SIP listener sip.listen[{i}] ({l})"),
                );
            }
        }
        if ports.contains(self.api.listen.port()) {
            err(
                "media.ports".into(),
                format!("{ports} overlaps the API port {}", self.api.listen.port()),
            );
        }

        match (&self.api.admin_token, &self.api.admin_token_file) {
            (Some(_), Some(_)) => err(
                "api.admin_token".into(),
                "set admin_token or admin_token_file, not both".into(),
            ),
            (Some(t), None) => {
                if let Some(e) = admin_token_error(t) {
                    err("api.admin_token".into(), e);
                }
            }
            _ => {}
        }

        self.validate_api(&mut err);

        if self.store.backend == StoreBackend::Scylla && self.store.nodes.is_empty() {
            err(
                "store.nodes".into(),
                "the scylla backend needs at least one node".into(),
            );
        }
        if self.store.replication == 0 {
            err("store.replication".into(), "must be at least 1".into());
        }
        if self.store.backend == StoreBackend::Scylla {
            self.validate_scylla(&mut err);
        }

        if !self.cluster.seeds.is_empty() && self.cluster.listen.is_none() {
            err(
                "cluster.listen".into(),
                "a node with seeds must also listen".into(),
            );
        }
        if self.cluster.listen.is_some() {
            if self.cluster.tls.is_none() {
                err(
                    "cluster.tls".into(),
                    "nodes talk over mutual TLS: cert_file, key_file and ca_file are required"
                        .into(),
                );
            }
            match (&self.cluster.secret, &self.cluster.secret_file) {
                (None, None) => err(
                    "cluster.secret".into(),
                    "a cluster needs a shared secret (secret or secret_file)".into(),
                ),
                (Some(_), Some(_)) => err(
                    "cluster.secret_file".into(),
                    "give secret or secret_file, not both".into(),
                ),
                (Some(s), None) => {
                    if let Some(e) = cluster_secret_error(s) {
                        err("cluster.secret".into(), e);
                    }
                }
                _ => {}
            }
            if self.node.id.contains('/') || self.node.id.trim().is_empty() {
                err(
                    "node.id".into(),
                    "a cluster node's id must be non-empty and without `/`".into(),
                );
            }
        }

        let mut names = HashSet::new();
        for (i, t) in self.trunks.iter().enumerate() {
            if t.name.trim().is_empty() {
                err(format!("trunks[{i}].name"), "must not be empty".into());
            } else if !names.insert(t.name.as_str()) {
                err(
                    format!("trunks[{i}].name"),
                    format!("trunk `{}` is defined twice", t.name),
                );
            }
            if let Some(o) = &t.outbound {
                if o.transport == Transport::Tls && self.sip.tls.is_none() {
                    err(
                        format!("trunks[{i}].outbound"),
                        "a tls trunk needs [sip.tls] with cert_file and key_file".into(),
                    );
                }
            }
        }

        let mut prefixes = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            if !r.prefix.chars().all(|c| c.is_ascii_digit()) {
                err(
                    format!("routes[{i}].prefix"),
                    format!("`{}` must contain digits only", r.prefix),
                );
            }
            if !prefixes.insert(r.prefix.as_str()) {
                err(
                    format!("routes[{i}].prefix"),
                    format!("prefix `{}` has two routes", r.prefix),
                );
            }
            if r.trunks.is_empty() {
                err(
                    format!("routes[{i}].trunks"),
                    "needs at least one trunk".into(),
                );
            }
            for (j, name) in r.trunks.iter().enumerate() {
                match self.trunks.iter().find(|t| &t.name == name) {
                    None => err(
                        format!("routes[{i}].trunks[{j}]"),
                        format!("unknown trunk `{name}`"),
                    ),
                    Some(t) if t.outbound.is_none() => err(
                        format!("routes[{i}].trunks[{j}]"),
                        format!("trunk `{name}` has no outbound target"),
                    ),
                    Some(_) => {}
                }
            }
        }

        if !(1..=86_400).contains(&self.sip.min_session_expires) {
            err(
                "sip.min_session_expires".into(),
                "must be 1 to 86400 seconds (RFC 4028's floor is 90)".into(),
            );
        }
        // A day at most: a huge value (meant as "never") overflowed the reloader's
        // timer on its first tick, and reloading stopped without a word (a review).
        if self
            .sip
            .tls
            .as_ref()
            .is_some_and(|t| !(1..=86_400).contains(&t.reload_seconds))
        {
            err(
                "sip.tls.reload_seconds".into(),
                "must be 1 to 86400 seconds".into(),
            );
        }
        // At least one largest message (64 KiB); at most 1 GiB.
        if !(65_536..=1 << 30).contains(&self.sip.incoming_queue_bytes) {
            err(
                "sip.incoming_queue_bytes".into(),
                "must be 65536 to 1073741824".into(),
            );
        }
        // Above ~250 ms a caller admitted at the edge of overload retransmits its INVITE
        // (T1, 500 ms) before the 100 Trying; below 5 ms ordinary bursts refuse calls.
        if !(5..=250).contains(&self.sip.overload_queue_delay_ms) {
            err(
                "sip.overload_queue_delay_ms".into(),
                "must be 5 to 250 ms".into(),
            );
        }
        // A caller hears ringing this long at most; 0 would refuse every call at once,
        // and a day is beyond any ring a person waits for.
        if !(1..=86_400).contains(&self.sip.max_ring_seconds) {
            err(
                "sip.max_ring_seconds".into(),
                "must be 1 to 86400 seconds".into(),
            );
        }
        // A thread per core at most is useful; this only stops a typo from starting
        // thousands.
        if self.node.worker_threads > 1024 {
            err(
                "node.worker_threads".into(),
                "must be 0 (one per CPU) to 1024".into(),
            );
        }
        // Each shard is a task and a queue; past one per core they only add queues.
        if self.sip.udp_receive_threads.is_some() && self.sip.udp_receive.is_some() {
            err(
                "sip.udp_receive_threads".into(),
                "set sip.udp_receive only (udp_receive_threads is its former name)".into(),
            );
        }
        if self.sip.shards > 64 {
            err("sip.shards".into(), "must be 0 (one per CPU) to 64".into());
        }
        if !(1..=1_000_000).contains(&self.sip.tcp_max_connections) {
            err(
                "sip.tcp_max_connections".into(),
                "must be 1 to 1000000".into(),
            );
        }
        if !(1..=self.sip.tcp_max_connections.max(1))
            .contains(&self.sip.tcp_max_connections_per_source)
        {
            err(
                "sip.tcp_max_connections_per_source".into(),
                "must be 1 to sip.tcp_max_connections".into(),
            );
        }
        if !(1..=86_400).contains(&self.sip.tcp_idle_timeout_seconds) {
            err(
                "sip.tcp_idle_timeout_seconds".into(),
                "must be 1 to 86400".into(),
            );
        }
        let n = &self.notify;
        if n.max_attempts == 0 {
            err("notify.max_attempts".into(), "must be at least 1".into());
        }
        // At least 100 ms: with 0 a failing row was tried about once a second and spent
        // its attempts in seconds; at most an hour, the longest delay anyway.
        if !(100..=3_600_000).contains(&n.retry_base_ms) {
            err(
                "notify.retry_base_ms".into(),
                "must be 100 to 3600000 (an hour)".into(),
            );
        }
        if n.timeout_ms == 0 || n.timeout_ms > 600_000 {
            err("notify.timeout_ms".into(), "must be 1 to 600000".into());
        }
        if n.utc_offset_minutes.abs() > 14 * 60 {
            err(
                "notify.utc_offset_minutes".into(),
                "must be within -840 to 840".into(),
            );
        }
        if let Some(smtp) = &n.smtp {
            if smtp.host.trim().is_empty() {
                err("notify.smtp.host".into(), "must not be empty".into());
            }
            if !smtp.from.contains('@') {
                err(
                    "notify.smtp.from".into(),
                    format!("`{}` is not an e-mail address", smtp.from),
                );
            }
            if smtp.username.is_some() != smtp.password.is_some() {
                err(
                    "notify.smtp.username".into(),
                    "set both username and password, or neither".into(),
                );
            }
            // A password sent in clear is anyone's on the way: only to a relay on
            // this host.
            let local = smtp.host == "localhost"
                || smtp
                    .host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if smtp.tls == crate::model::SmtpTls::Tls && smtp.port == 25 {
                err(
                    "notify.smtp.port".into(),
                    "port 25 speaks plain SMTP first: tls = \"tls\" needs the relay's TLS port (465), or use tls = \"starttls\"".into(),
                );
            }
            if smtp.password.is_some() && smtp.tls == crate::model::SmtpTls::None && !local {
                err(
                    "notify.smtp.tls".into(),
                    "a password to a relay on another host needs tls = \"starttls\" or \"tls\""
                        .into(),
                );
            }
        }
        // Read as delivery reads it (`egress::url_target`): a port 0 or a user part
        // passed here and failed every delivery, whose error then logged the URL with
        // the GA4 secrets or the gateway's credentials in it (a review).
        let url_error = |url: &str| {
            http_url_error(url)
                .or_else(|| crate::egress::url_target(url).err().map(|e| e.to_string()))
        };
        if let Some(sms) = &n.sms {
            if let Some(e) = url_error(&sms.url) {
                err("notify.sms.url".into(), e);
            }
            if !sms.body.contains("{to}") || !sms.body.contains("{text}") {
                err(
                    "notify.sms.body".into(),
                    "must contain both {to} and {text}".into(),
                );
            }
            if crate::model::SmsEncoding::of(&sms.content_type).is_none() {
                err(
                    "notify.sms.content_type".into(),
                    "must be application/json (or another JSON type) or application/x-www-form-urlencoded: {to} and {text} are escaped for it".into(),
                );
            }
        }
        if let Some(e) = url_error(&n.ga4.endpoint) {
            err("notify.ga4.endpoint".into(), e);
        }
        for (i, c) in n.allowed_networks.iter().enumerate() {
            // A /0 would switch the SSRF defence off without saying so.
            if c.prefix == 0 {
                err(
                    format!("notify.allowed_networks[{i}]"),
                    "a /0 allows every address: list the networks follow-ups need".into(),
                );
            }
        }
        if !(1..=100).contains(&n.caller_sms_per_day) {
            err(
                "notify.caller_sms_per_day".into(),
                "must be 1 to 100 (leave caller_sms_text unset to send none)".into(),
            );
        }
        // Each call to a number past its quota reads the hour's count, one row a
        // notice on ScyllaDB: one a second bounds it.
        if n.notices_per_number_per_hour > 3600 {
            err(
                "notify.notices_per_number_per_hour".into(),
                "must be 0 (no limit) to 3600".into(),
            );
        }
        if !(1..=256).contains(&n.per_destination) {
            err("notify.per_destination".into(), "must be 1 to 256".into());
        }
        if n.max_in_flight > 4096 || n.max_in_flight < n.per_destination.saturating_mul(2) {
            err(
                "notify.max_in_flight".into(),
                "must be at least twice notify.per_destination and at most 4096".into(),
            );
        }

        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl Config {
    /// The `[api]` limits: every timeout and cap at least 1 (0 would refuse everything
    /// or close every connection at once), rates with a bucket to refill.
    /// What is wrong with `node.recordings_dir`, if anything. The API serves files from
    /// it by the paths call records name, so it must not hold the data directory (its
    /// secrets and store) and must not overlap the prompts directory (operators'
    /// uploads). Paths are compared as written (`./a` and `a` alike), not resolved.
    fn recordings_dir_error(&self) -> Option<String> {
        let dir = self.node.recordings_dir.as_deref()?;
        if dir.as_os_str().is_empty() {
            return Some("must name a directory".into());
        }
        let dir = lexical(dir);
        if lexical(&self.node.data_dir).starts_with(&dir) {
            return Some(format!(
                "must not be node.data_dir ({}) nor contain it: it holds the store and secrets",
                self.node.data_dir.display()
            ));
        }
        // The prompts directory's default, as the node resolves it.
        let prompts = self
            .media
            .prompts_dir
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("prompts"));
        let prompts = lexical(&prompts);
        if prompts.starts_with(&dir) || dir.starts_with(&prompts) {
            return Some(format!(
                "must not overlap the prompts directory ({})",
                prompts.display()
            ));
        }
        None
    }

    fn validate_api(&self, err: &mut impl FnMut(String, String)) {
        let a = &self.api;
        let at_least_one = [
            ("api.max_connections", a.max_connections),
            (
                "api.max_connections_per_address",
                a.max_connections_per_address,
            ),
            ("api.header_timeout_seconds", a.header_timeout_seconds),
            ("api.idle_timeout_seconds", a.idle_timeout_seconds),
            ("api.request_timeout_seconds", a.request_timeout_seconds),
            ("api.max_exports", a.max_exports),
            ("api.max_exports_per_operator", a.max_exports_per_operator),
            ("api.export_max_seconds", a.export_max_seconds),
            ("api.max_searches", a.max_searches),
            ("api.max_searches_per_operator", a.max_searches_per_operator),
            ("api.max_streams", a.max_streams),
            ("api.max_streams_per_operator", a.max_streams_per_operator),
            ("api.stream_max_seconds", a.stream_max_seconds),
            ("api.max_recordings", a.max_recordings),
            (
                "api.max_recordings_per_operator",
                a.max_recordings_per_operator,
            ),
            ("api.max_prompt_uploads", a.max_prompt_uploads),
            (
                "api.max_prompt_uploads_per_operator",
                a.max_prompt_uploads_per_operator,
            ),
            ("api.max_numbers_per_operator", a.max_numbers_per_operator),
            (
                "api.max_advertisers_per_operator",
                a.max_advertisers_per_operator,
            ),
            ("api.search_timeout_seconds", a.search_timeout_seconds),
            (
                "api.export_send_timeout_seconds",
                a.export_send_timeout_seconds,
            ),
            (
                "api.issue.max_leases_per_session",
                a.issue.max_leases_per_session,
            ),
            (
                "api.issue.max_leases_per_address",
                a.issue.max_leases_per_address,
            ),
            ("api.issue.tracked_addresses", a.issue.tracked_addresses),
        ];
        for (path, v) in at_least_one {
            if v == 0 {
                err(path.into(), "must be at least 1".into());
            }
        }

        let day = 86_400;
        for (path, v) in [
            ("api.header_timeout_seconds", a.header_timeout_seconds),
            ("api.idle_timeout_seconds", a.idle_timeout_seconds),
            ("api.request_timeout_seconds", a.request_timeout_seconds),
            (
                "api.export_send_timeout_seconds",
                a.export_send_timeout_seconds,
            ),
            ("api.export_max_seconds", a.export_max_seconds),
            ("api.stream_max_seconds", a.stream_max_seconds),
        ] {
            if v > day {
                err(path.into(), "must be at most 86400 seconds".into());
            }
        }
        let i = &a.issue;
        for (path, rate, burst) in [
            (
                "api.issue.per_address_burst",
                i.per_address_per_minute,
                i.per_address_burst,
            ),
            (
                "api.issue.per_pool_burst",
                i.per_pool_per_minute,
                i.per_pool_burst,
            ),
        ] {
            if rate > 0 && burst == 0 {
                err(
                    path.into(),
                    "must be at least 1 while its rate is on (set the rate to 0 to turn the limit off)".into(),
                );
            }
        }
        if let Some(m) = a.metrics_listen {
            if m == a.listen {
                err(
                    "api.metrics_listen".into(),
                    "must differ from api.listen".into(),
                );
            }
            if self.media.ports.contains(m.port()) {
                err(
                    "media.ports".into(),
                    format!(
                        "{} overlaps the metrics port {}",
                        self.media.ports,
                        m.port()
                    ),
                );
            }
        }
        // The token's value is never echoed: only its length is judged.
        if a.metrics_token
            .as_ref()
            .is_some_and(|t| t.trim().len() < 16)
        {
            err(
                "api.metrics_token".into(),
                "must be at least 16 characters".into(),
            );
        }
        if a.pool_metrics.len() > 100 {
            err(
                "api.pool_metrics".into(),
                "at most 100 pools get their own label".into(),
            );
        }
        for (n, id) in a.pool_metrics.iter().enumerate() {
            if id.is_empty()
                || id.len() > 64
                || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                err(
                    format!("api.pool_metrics[{n}]"),
                    "must be a pool id such as pool_5f0c2a9e1b7d3c44".into(),
                );
            }
        }
    }
}

/// Why `url` is not an absolute http(s) URL with a host, if it is not.
pub fn http_url_error(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        None => Some(format!("`{url}` must start with http:// or https://")),
        Some(r) if r.is_empty() || r.starts_with('/') => Some(format!("`{url}` has no host")),
        Some(r) if r.contains(char::is_whitespace) => Some(format!("`{url}` contains spaces")),
        Some(_) => None,
    }
}

impl Config {
    /// The ScyllaDB settings of `[store]`: the names spliced into CQL (keyspace,
    /// datacenter) are plain words, contact points are `host:port`, and the TLS and
    /// password settings are complete.
    fn validate_scylla(&self, err: &mut impl FnMut(String, String)) {
        let store = &self.store;
        for (i, node) in store.nodes.iter().enumerate() {
            let ok = node.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                err(
                    format!("store.nodes[{i}]"),
                    format!("`{node}` is not host:port"),
                );
            }
        }
        let word = |s: &str| {
            s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && s.len() <= 48
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !word(&store.keyspace) {
            err(
                "store.keyspace".into(),
                "must be a letter, then letters, digits or _ (at most 48)".into(),
            );
        }
        if let Some(dc) = &store.datacenter {
            let ok = !dc.is_empty()
                && dc.len() <= 64
                && dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok {
                err(
                    "store.datacenter".into(),
                    "must be letters, digits, `_`, `-` or `.` (at most 64)".into(),
                );
            }
        }
        if store.password_file.is_some() && store.username.is_none() {
            err("store.password_file".into(), "needs store.username".into());
        }
        if !(1..=300).contains(&store.request_timeout_seconds) {
            err(
                "store.request_timeout_seconds".into(),
                "must be 1 to 300".into(),
            );
        }
        if let Some(tls) = &store.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                err(
                    "store.tls".into(),
                    "cert_file and key_file go together (a client certificate needs its key)"
                        .into(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    /// The configuration of SPEC section 8, verbatim (the file the README points at).
    const SPEC_EXAMPLE: &str = include_str!("../../examples/spec-minimal.toml");

    #[test]
    fn spec_example_loads_as_written() {
        let c = Config::from_toml(SPEC_EXAMPLE).unwrap();
        assert_eq!(c.node.id, "n1");
        assert_eq!(c.sip.listen.len(), 2);
        assert_eq!(c.trunks[0].max_cps, 1000);
        assert_eq!(c.routes[0].trunks, vec!["carrier-a".to_string()]);
    }

    #[test]
    fn sip_edge_defaults_and_settings() {
        use crate::model::UntrustedSources;
        let c = Config::from_toml("").unwrap();
        assert_eq!(
            c.sip.untrusted,
            UntrustedSources::Drop,
            "strangers get nothing"
        );
        assert_eq!(
            (
                c.sip.incoming_queue_bytes,
                c.sip.tcp_max_connections,
                c.sip.tcp_max_connections_per_source,
                c.sip.tcp_idle_timeout_seconds,
                c.sip.overload_queue_delay_ms,
                c.sip.shards
            ),
            (16 << 20, 1024, 64, 120, 50, 0)
        );
        let c = Config::from_toml(
            "[sip]\nuntrusted = \"reject\"\ntcp_max_connections = 10\ntcp_max_connections_per_source = 10\ntcp_idle_timeout_seconds = 2\n",
        )
        .unwrap();
        assert_eq!(c.sip.untrusted, UntrustedSources::Reject);
        assert_eq!(c.sip.tcp_idle_timeout_seconds, 2);
    }

    #[test]
    fn udp_receive_and_its_former_name() {
        use crate::model::UdpReceive;
        // (the [sip] lines, who reads)
        let rows = [
            ("", UdpReceive::Auto),
            ("udp_receive = \"auto\"", UdpReceive::Auto),
            ("udp_receive = \"threads\"", UdpReceive::Threads),
            ("udp_receive = \"runtime\"", UdpReceive::Runtime),
            ("udp_receive_threads = true", UdpReceive::Threads),
            ("udp_receive_threads = false", UdpReceive::Runtime),
        ];
        for (lines, mode) in rows {
            let c = Config::from_toml(&format!("[sip]\n{lines}\n")).unwrap();
            assert_eq!(c.sip.udp_receive_mode(), mode, "{lines}");
        }
    }

    /// The address the node names itself by on a wildcard listener: its own setting,
    /// else the media address.
    #[test]
    fn the_advertised_sip_address_defaults_to_the_media_address() {
        let c = Config::from_toml(
            "[sip]\nlisten = [\"udp:0.0.0.0:5060\"]\n[media]\naddress = \"192.0.2.7\"\n",
        )
        .unwrap();
        assert_eq!(c.sip_advertised_address().to_string(), "192.0.2.7");
        let c = Config::from_toml(
            "[sip]\nlisten = [\"udp:0.0.0.0:5060\"]\nadvertised_address = \"198.51.100.9\"\n[media]\naddress = \"192.0.2.7\"\n",
        )
        .unwrap();
        assert_eq!(c.sip_advertised_address().to_string(), "198.51.100.9");
    }

    #[test]
    fn checkpoints_are_on_unless_turned_off() {
        assert!(Config::from_toml("").unwrap().cluster.checkpoints);
        assert!(
            Config::from_toml("[cluster]\n")
                .unwrap()
                .cluster
                .checkpoints
        );
        let off = Config::from_toml("[cluster]\ncheckpoints = false\n").unwrap();
        assert!(!off.cluster.checkpoints);
        assert!(Config::from_toml("[cluster]\ncheckpoints = 1\n").is_err());
    }

    /// A password goes to the relay in clear only on this host; TLS lets it travel.
    #[test]
    fn smtp_passwords_travel_protected() {
        // (host, port, tls) -> accepted
        let rows = [
            ("smtp.example.com", 25, "none", false),
            ("192.0.2.25", 25, "none", false),
            ("smtp.example.com", 587, "starttls", true),
            ("smtp.example.com", 465, "tls", true),
            // TLS from the first byte on the plain SMTP port: every handshake fails.
            ("smtp.example.com", 25, "tls", false),
            ("localhost", 25, "none", true),
            ("127.0.0.1", 25, "none", true),
            ("[::1]", 25, "none", true),
        ];
        for (host, port, tls, ok) in rows {
            let text = format!(
                "[notify.smtp]\nhost = \"{host}\"\nport = {port}\nfrom = \"a@example.com\"\nusername = \"u\"\npassword = \"p\"\ntls = \"{tls}\"\n"
            );
            let c = Config::from_toml(&text);
            assert_eq!(c.is_ok(), ok, "{host}:{port} {tls}: {:?}", c.err());
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        Config::from_toml(crate::EMBEDDED_DEFAULT).unwrap();
    }

    /// Each case: a change to the SPEC example and the key paths that must be reported.
    #[test]
    fn errors_carry_key_paths() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("unknown key", "[node]\nid = \"n1\"\ncolour = 1\n", &["node.colour"]),
            ("unknown section", "[nodes]\nid = \"x\"\n", &["nodes"]),
            ("node id with a slash", "[node]\nid = \"n1/x\"\n", &["node.id"]),
            ("node id with a line break", "[node]\nid = \"n1\\nx\"\n", &["node.id"]),
            ("retry base of 0", "[notify]\nretry_base_ms = 0\n", &["notify.retry_base_ms"]),
            ("retry base past an hour", "[notify]\nretry_base_ms = 9223372036854775807\n", &["notify.retry_base_ms"]),
            ("bad listener", "[sip]\nlisten = [\"udp:127.0.0.1:5060\", \"udp:nowhere\"]\n", &["sip.listen[1]"]),
            (
                "two udp listeners of one family",
                "[sip]\nlisten = [\"udp:127.0.0.1:5060\", \"tcp:127.0.0.1:5060\", \"udp:127.0.0.2:5080\"]\n",
                &["sip.listen[2]"],
            ),
            (
                "a wildcard IPv4 listener named by an IPv6 address",
                "[sip]\nlisten = [\"udp:0.0.0.0:5060\", \"tcp:[::]:5060\"]\nadvertised_address = \"2001:db8::1\"\n",
                &["sip.listen[0]"],
            ),
            (
                "a wildcard advertised address",
                "[sip]\nlisten = [\"udp:0.0.0.0:5060\"]\nadvertised_address = \"0.0.0.0\"\n",
                &["sip.advertised_address"],
            ),
            (
                "follow-up URLs delivery cannot use",
                "[notify.sms]\nurl = \"https://SID:TOKEN@gw.example/send\"\nbody = \"{to} {text}\"\n[notify.ga4]\nendpoint = \"https://www.google-analytics.com:0/mp/collect\"\n",
                &["notify.sms.url", "notify.ga4.endpoint"],
            ),
            ("bad cidr", "[[trunks]]\nname = \"a\"\ninbound = [\"10.0.0.0/99\"]\n", &["trunks[0].inbound[0]"]),
            (
                "route names unknown trunk",
                "[[trunks]]\nname = \"a\"\noutbound = \"udp:127.0.0.1:5070\"\n[[routes]]\nprefix = \"\"\ntrunks = [\"a\", \"b\"]\n",
                &["routes[0].trunks[1]"],
            ),
            (
                "every semantic error at once",
                "[sip]\nlisten = [\"udp:127.0.0.1:20010\"]\n[media]\nports = \"20000-20999\"\n[api]\nadmin_token = \"short\"\n[[trunks]]\nname = \"a\"\n[[trunks]]\nname = \"a\"\n[[routes]]\nprefix = \"0x\"\ntrunks = [\"a\"]\n",
                &["media.ports", "api.admin_token", "trunks[1].name", "routes[0].prefix", "routes[0].trunks[0]"],
            ),
            ("overlapping api port", "[api]\nlisten = \"127.0.0.1:20500\"\n[media]\nports = \"20000-20999\"\n", &["media.ports"]),
            ("scylla without nodes", "[store]\nbackend = \"scylla\"\n", &["store.nodes"]),
            (
                "scylla settings",
                "[store]\nbackend = \"scylla\"\nnodes = [\"db1:9042\", \"db2\", \":9042\"]\nkeyspace = \"ks; DROP\"\ndatacenter = \"dc'1\"\npassword_file = \"p\"\nrequest_timeout_seconds = 0\n[store.tls]\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\n",
                &[
                    "store.nodes[1]",
                    "store.nodes[2]",
                    "store.keyspace",
                    "store.datacenter",
                    "store.password_file",
                    "store.request_timeout_seconds",
                    "store.tls",
                ],
            ),
            ("unknown consistency", "[store]\nconsistency = \"one\"\n", &["store.consistency"]),
            ("unknown store.tls key", "[store.tls]\nca_file = \"a\"\ncrl = \"x\"\n", &["store.tls.crl"]),
            ("unknown backend", "[store]\nbackend = \"postgres\"\n", &["store.backend"]),
            ("unknown latch policy", "[media]\nlatch = \"loose\"\n", &["media.latch"]),
            ("unverified audio past an hour", "[media]\nunverified_audio_seconds = 3601\n", &["media.unverified_audio_seconds"]),
            (
                "notify errors",
                "[notify]\nmax_attempts = 0\n[notify.smtp]\nhost = \"\"\nfrom = \"nobody\"\nusername = \"u\"\n[notify.sms]\nurl = \"ftp://x\"\nbody = \"{to}\"\ncontent_type = \"text/plain\"\n[notify.ga4]\nendpoint = \"https:///collect\"\n",
                &["notify.max_attempts", "notify.smtp.host", "notify.smtp.from", "notify.smtp.username", "notify.sms.url", "notify.sms.body", "notify.sms.content_type", "notify.ga4.endpoint"],
            ),
            (
                "a password in clear to another host",
                "[notify.smtp]\nhost = \"smtp.example.com\"\nfrom = \"a@example.com\"\nusername = \"u\"\npassword = \"p\"\n",
                &["notify.smtp.tls"],
            ),
            (
                "tls without certificates",
                "[sip]\nlisten = [\"tls:127.0.0.1:5061\"]\n[[trunks]]\nname = \"a\"\noutbound = \"tls:127.0.0.1:5071\"\n",
                &["sip.listen[0]", "trunks[0].outbound"],
            ),
            ("tls missing key", "[sip.tls]\ncert_file = \"c.pem\"\n", &["sip.tls"]),
            (
                "tls reload past a day",
                "[sip.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nreload_seconds = 9223372036854775807\n",
                &["sip.tls.reload_seconds"],
            ),
            ("no session floor", "[sip]\nmin_session_expires = 0\n", &["sip.min_session_expires"]),
            ("no ring at all", "[sip]\nmax_ring_seconds = 0\n", &["sip.max_ring_seconds"]),
            ("thousands of threads", "[node]\nworker_threads = 1025\n", &["node.worker_threads"]),
            (
                "a retention shorter than a call",
                "[node]\nrecordings_retention_days = 1\n",
                &["node.recordings_retention_days"],
            ),
            (
                "recordings guards past sense",
                "[node]\nrecordings_min_free_mb = 9223372036854775807\nrecordings_retention_days = 36501\n",
                &["node.recordings_min_free_mb", "node.recordings_retention_days"],
            ),
            (
                "durations past the clock",
                "[node]\ndrain_seconds = 9223372036854775807\nmax_call_seconds = 9223372036854775807\n[notify]\ntimeout_ms = 9223372036854775807\n",
                &["node.drain_seconds", "node.max_call_seconds", "notify.timeout_ms"],
            ),
            (
                "sip edge limits",
                "[sip]\nincoming_queue_bytes = 100\noverload_queue_delay_ms = 1000\nshards = 65\ntcp_max_connections = 0\ntcp_max_connections_per_source = 0\ntcp_idle_timeout_seconds = 0\n",
                &[
                    "sip.incoming_queue_bytes",
                    "sip.overload_queue_delay_ms",
                    "sip.shards",
                    "sip.tcp_max_connections",
                    "sip.tcp_max_connections_per_source",
                    "sip.tcp_idle_timeout_seconds",
                ],
            ),
            (
                "more per source than in all",
                "[sip]\ntcp_max_connections = 10\ntcp_max_connections_per_source = 11\n",
                &["sip.tcp_max_connections_per_source"],
            ),
            ("unknown untrusted mode", "[sip]\nuntrusted = \"answer\"\n", &["sip.untrusted"]),
            ("unknown udp_receive", "[sip]\nudp_receive = \"both\"\n", &["sip.udp_receive"]),
            (
                "udp_receive and its former name",
                "[sip]\nudp_receive = \"runtime\"\nudp_receive_threads = false\n",
                &["sip.udp_receive_threads"],
            ),
            (
                "udp_receive written as its default and its former name",
                "[sip]\nudp_receive = \"auto\"\nudp_receive_threads = true\n",
                &["sip.udp_receive_threads"],
            ),
            (
                "cluster without tls nor secret",
                "[cluster]\nlisten = \"127.0.0.1:7001\"\n",
                &["cluster.tls", "cluster.secret"],
            ),
            (
                "cluster secret too short",
                "[cluster]\nlisten = \"127.0.0.1:7001\"\nsecret = \"short\"\n[cluster.tls]\ncert_file = \"c\"\nkey_file = \"k\"\nca_file = \"a\"\n",
                &["cluster.secret"],
            ),
            (
                "cluster secret and secret file",
                "[cluster]\nlisten = \"127.0.0.1:7001\"\nsecret = \"0123456789abcdef\"\nsecret_file = \"s\"\n[cluster.tls]\ncert_file = \"c\"\nkey_file = \"k\"\nca_file = \"a\"\n",
                &["cluster.secret_file"],
            ),
            (
                "api limits",
                "[api]\nmax_connections = 0\nheader_timeout_seconds = 0\nidle_timeout_seconds = 90000\nmax_exports = 0\nmax_exports_per_operator = 0\nexport_max_seconds = 90000\nmax_searches = 0\nsearch_timeout_seconds = 0\nexport_send_timeout_seconds = 0\nmetrics_listen = \"127.0.0.1:20001\"\nmetrics_token = \"short\"\npool_metrics = [\"pool x\"]\n[api.issue]\nper_address_burst = 0\nmax_leases_per_session = 0\nmax_leases_per_address = 0\n[media]\nports = \"20000-20999\"\n",
                &[
                    "api.max_connections",
                    "api.header_timeout_seconds",
                    "api.idle_timeout_seconds",
                    "api.max_exports",
                    "api.max_exports_per_operator",
                    "api.export_max_seconds",
                    "api.max_searches",
                    "api.search_timeout_seconds",
                    "api.export_send_timeout_seconds",
                    "media.ports",
                    "api.metrics_token",
                    "api.pool_metrics[0]",
                    "api.issue.per_address_burst",
                    "api.issue.max_leases_per_session",
                    "api.issue.max_leases_per_address",
                ],
            ),
            (
                "api metrics on the api port",
                "[api]\nlisten = \"127.0.0.1:8080\"\nmetrics_listen = \"127.0.0.1:8080\"\n",
                &["api.metrics_listen"],
            ),
            ("unknown api.issue key", "[api.issue]\nper_hour = 1\n", &["api.issue.per_hour"]),

            ("unknown notify key", "[notify.smtp]\nhost = \"h\"\nfrom = \"a@b\"\ntls = true\n", &["notify.smtp.tls"]),
            (
                "notify limits",
                "[notify]\nallowed_networks = [\"10.0.0.0/8\", \"0.0.0.0/0\"]\ncaller_sms_per_day = 0\nper_destination = 0\nmax_in_flight = 5000\nnotices_per_number_per_hour = 3601\n",
                &["notify.allowed_networks[1]", "notify.caller_sms_per_day", "notify.per_destination", "notify.max_in_flight", "notify.notices_per_number_per_hour"],
            ),
            ("bad allowed network", "[notify]\nallowed_networks = [\"10.0.0.0/33\"]\n", &["notify.allowed_networks[0]"]),
            ("in flight below two destinations", "[notify]\nper_destination = 10\nmax_in_flight = 19\n", &["notify.max_in_flight"]),
        ];
        for (name, text, want) in cases {
            let errs = Config::from_toml(text).expect_err(name).0;
            let mut paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
            paths.sort();
            let mut want = want.to_vec();
            want.sort();
            assert_eq!(paths, want, "{name}: {errs:?}");
        }
    }

    /// A complete ScyllaDB `[store]` loads with every setting; defaults otherwise.
    #[test]
    fn scylla_store_settings_load() {
        use crate::model::StoreConsistency;
        let c = Config::from_toml(
            "[store]\nbackend = \"scylla\"\nnodes = [\"scylla-1:9042\", \"10.0.0.2:9142\"]\nkeyspace = \"calls_2\"\nreplication = 3\nconsistency = \"quorum\"\ndatacenter = \"dc-1\"\nusername = \"tsunagu\"\npassword_file = \"/run/secrets/scylla\"\nrequest_timeout_seconds = 2\n[store.tls]\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.store.consistency, StoreConsistency::Quorum);
        assert_eq!(c.store.datacenter.as_deref(), Some("dc-1"));
        assert_eq!(c.store.request_timeout_seconds, 2);
        assert!(c.store.tls.unwrap().key_file.is_some());
        let d =
            Config::from_toml("[store]\nbackend = \"scylla\"\nnodes = [\"db:9042\"]\n").unwrap();
        assert_eq!(
            (
                d.store.consistency,
                d.store.request_timeout_seconds,
                d.store.keyspace.as_str()
            ),
            (StoreConsistency::LocalQuorum, 5, "tsunagu")
        );
    }

    /// `media.latch`: the safe default, and each policy by name.
    #[test]
    fn media_latch() {
        use crate::model::RtpLatch;
        assert_eq!(
            Config::from_toml(SPEC_EXAMPLE).unwrap().media.latch,
            RtpLatch::Address
        );
        for (text, want) in [
            ("strict", RtpLatch::Strict),
            ("address", RtpLatch::Address),
            ("off", RtpLatch::Off),
        ] {
            let c = Config::from_toml(&format!("[media]\nlatch = \"{text}\"\n")).unwrap();
            assert_eq!(c.media.latch, want, "{text}");
        }
        let env = vec![("TSUNAGU_MEDIA__LATCH".to_string(), "strict".to_string())];
        let c = Config::from_toml_with_env(SPEC_EXAMPLE, env).unwrap();
        assert_eq!(c.media.latch, RtpLatch::Strict, "set from the environment");
    }

    /// `node.recordings_dir`: its default under `data_dir`, a shared directory, and the
    /// directories it must stay clear of.
    #[test]
    fn recordings_dir() {
        use std::path::PathBuf;
        let c = Config::from_toml("[node]\ndata_dir = \"/var/lib/tsunagu\"\n").unwrap();
        assert_eq!(
            c.node.effective_recordings_dir(),
            PathBuf::from("/var/lib/tsunagu/recordings")
        );
        type Row = (
            &'static str,
            &'static str,
            Result<&'static str, &'static str>,
        );
        let table: &[Row] = &[
            (
                "shared mount",
                "recordings_dir = \"/mnt/shared/recordings\"",
                Ok("/mnt/shared/recordings"),
            ),
            (
                "relative",
                "data_dir = \"./data\"\nrecordings_dir = \"rec\"",
                Ok("rec"),
            ),
            (
                "inside data_dir",
                "data_dir = \"/d\"\nrecordings_dir = \"/d/rec\"",
                Ok("/d/rec"),
            ),
            (
                "empty",
                "recordings_dir = \"\"",
                Err("must name a directory"),
            ),
            (
                "the data dir",
                "data_dir = \"./data\"\nrecordings_dir = \"data\"",
                Err("must not be node.data_dir"),
            ),
            (
                "above the data dir",
                "data_dir = \"/d/x\"\nrecordings_dir = \"/d\"",
                Err("must not be node.data_dir"),
            ),
            (
                "root",
                "data_dir = \"/d\"\nrecordings_dir = \"/\"",
                Err("must not be node.data_dir"),
            ),
            (
                "the default prompts dir",
                "data_dir = \"/d\"\nrecordings_dir = \"/d/prompts\"",
                Err("must not overlap the prompts"),
            ),
            (
                "inside the prompts dir",
                "data_dir = \"/d\"\nrecordings_dir = \"/d/prompts/rec\"",
                Err("must not overlap the prompts"),
            ),
        ];
        for (name, node, want) in table {
            let text = format!("[node]\n{node}\n");
            match (Config::from_toml(&text), want) {
                (Ok(c), Ok(dir)) => {
                    assert_eq!(
                        c.node.effective_recordings_dir(),
                        PathBuf::from(dir),
                        "{name}"
                    )
                }
                (Err(errs), Err(message)) => {
                    assert_eq!(errs.0.len(), 1, "{name}: {errs:?}");
                    assert_eq!(errs.0[0].path, "node.recordings_dir", "{name}");
                    assert!(errs.0[0].message.contains(message), "{name}: {errs:?}");
                }
                (got, _) => panic!("{name}: {got:?}"),
            }
        }
        let c = Config::from_toml(
            "[node]\nrecordings_dir = \"/srv/p/rec\"\n[media]\nprompts_dir = \"/srv/p\"\n",
        );
        assert!(c.is_err(), "inside a prompts_dir set explicitly");
        let env = vec![(
            "TSUNAGU_NODE__RECORDINGS_DIR".to_string(),
            "/mnt/rec".to_string(),
        )];
        let c = Config::from_toml_with_env("", env).unwrap();
        assert_eq!(c.node.effective_recordings_dir(), PathBuf::from("/mnt/rec"));
    }

    #[test]
    fn env_override_is_validated_too() {
        let env = vec![(
            "TSUNAGU_API__LISTEN".to_string(),
            "not-an-address".to_string(),
        )];
        let errs = Config::from_toml_with_env(SPEC_EXAMPLE, env).unwrap_err().0;
        assert_eq!(errs[0].path, "api.listen");
    }
}
