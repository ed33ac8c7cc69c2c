//! How to reach a ScyllaDB cluster: contact points, keyspace and replication, the
//! consistency of reads and writes, TLS and authentication. Plain data with the checks
//! that guard what is spliced into CQL text (keyspace and datacenter names cannot be
//! bound as values in DDL).

use std::path::PathBuf;
use std::time::Duration;

/// The consistency of ordinary reads and writes; compare-and-set statements (LWT) use
/// the matching serial consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// LOCAL_QUORUM, with LOCAL_SERIAL for compare-and-set: a majority of the replicas
    /// in the local datacenter (the default; survives one replica down at RF 3).
    #[default]
    LocalQuorum,
    /// QUORUM, with SERIAL: a majority of all replicas, across datacenters.
    Quorum,
}

/// PEM files for TLS to the cluster's native transport (client certificate optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaSettings {
    /// Contact points, `host:port` (any one reachable suffices; the driver learns the rest).
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// Replication factor of the keyspace when this node creates it.
    pub replication: u32,
    /// The local datacenter: preferred by the load balancer, and the datacenter the
    /// keyspace replicates to when created. None: every datacenter, RF each.
    pub datacenter: Option<String>,
    pub consistency: Consistency,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsFiles>,
    /// How long one request may take (retries included) before it fails.
    pub request_timeout: Duration,
}

impl ScyllaSettings {
    /// Settings for `nodes` with the defaults of `[store]`.
    pub fn new(nodes: Vec<String>) -> ScyllaSettings {
        ScyllaSettings {
            nodes,
            keyspace: "tsunagu".into(),
            replication: 3,
            datacenter: None,
            consistency: Consistency::LocalQuorum,
            username: None,
            password: None,
            tls: None,
            request_timeout: Duration::from_secs(5),
        }
    }

    /// What is wrong with these settings, if anything (the configuration checks the
    /// same with key paths; this guards callers that build settings themselves).
    pub fn problem(&self) -> Option<String> {
        if self.nodes.is_empty() {
            return Some("no ScyllaDB node to connect to".into());
        }
        if !is_cql_identifier(&self.keyspace) {
            return Some(format!(
                "keyspace `{}` is not a CQL name (a letter, then letters, digits or _, at most 48)",
                self.keyspace
            ));
        }
        if let Some(dc) = &self.datacenter {
            if !is_datacenter_name(dc) {
                return Some(format!(
                    "datacenter `{dc}` has characters other than letters, digits, `_`, `-` and `.`"
                ));
            }
        }
        if self.replication == 0 {
            return Some("replication must be at least 1".into());
        }
        None
    }
}

/// A keyspace name CQL accepts unquoted: a letter, then letters, digits or `_`, at
/// most 48 characters.
pub fn is_cql_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && s.len() <= 48
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A datacenter name safe inside a CQL string literal.
pub fn is_datacenter_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_spliced_into_cql_are_checked() {
        let cases = [
            ("tsunagu", true),
            ("t_1", true),
            ("1abc", false),
            ("", false),
            ("a-b", false),
            ("ks; DROP KEYSPACE x", false),
            (&"a".repeat(49), false),
        ];
        for (name, ok) in cases {
            assert_eq!(is_cql_identifier(name), ok, "{name}");
        }
        for (dc, ok) in [
            ("datacenter1", true),
            ("eu-west.1", true),
            ("dc'", false),
            ("", false),
        ] {
            assert_eq!(is_datacenter_name(dc), ok, "{dc}");
        }
    }

    #[test]
    fn settings_problems_are_reported() {
        let ok = ScyllaSettings::new(vec!["127.0.0.1:9042".into()]);
        assert_eq!(ok.problem(), None);
        let mut s = ok.clone();
        s.nodes.clear();
        assert!(s.problem().is_some());
        let mut s = ok.clone();
        s.keyspace = "bad name".into();
        assert!(s.problem().unwrap().contains("keyspace"));
        let mut s = ok.clone();
        s.datacenter = Some("x'}".into());
        assert!(s.problem().unwrap().contains("datacenter"));
        let mut s = ok;
        s.replication = 0;
        assert!(s.problem().is_some());
    }
}
