//! Typed node configuration: the TOML file of SPEC 5.2, environment overrides
//! (`TSUNAGU_SECTION__KEY`), and validation that reports every problem with its key path.
//!
//! Loading has two stages. Deserialisation (strict: unknown keys are errors) turns the
//! text into [`Config`]; it stops at the first structural error, which carries its key
//! path. [`Config::validate`] then checks the meaning (routes naming unknown trunks,
//! overlapping port ranges, ...) and collects every error it finds.

pub mod egress;
mod env;
mod model;
mod net;
mod validate;

pub use env::{apply_env_overrides, Overrides};
pub use model::*;
pub use net::{Cidr, Listener, PortRange, Transport};
pub use validate::{
    admin_token_error, cluster_secret_error, http_url_error, is_node_name, ConfigError,
};

use std::path::Path;

/// Everything that can go wrong while loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(ConfigErrors),
}

/// A list of configuration errors, printed one per line as `key.path: message`.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// The address the node names itself by for SIP listeners on a wildcard address:
    /// `sip.advertised_address`, else `media.address` (the one the node's SDP names).
    pub fn sip_advertised_address(&self) -> std::net::IpAddr {
        self.sip.advertised_address.unwrap_or(self.media.address)
    }

    /// Parses TOML text, applies the given environment overrides and validates.
    pub fn from_toml_with_env<I>(text: &str, env: I) -> Result<Config, ConfigErrors>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError::new(
                "",
                format!("not valid TOML: {}", e.message()),
            )])
        })?;
        let mut overrides =
            apply_env_overrides(&mut table, env).map_err(|e| ConfigErrors(vec![e]))?;
        let config: Config = loop {
            let error = match serde_path_to_error::deserialize(table.clone()) {
                Ok(config) => break config,
                Err(e) => e,
            };
            let path = error.path().to_string();
            let path = if path == "." { String::new() } else { path };
            // A typed guess (`12345678` as an integer) refused by a string field: the
            // same text again as a string.
            if overrides.retry_as_string(&mut table, &path) {
                continue;
            }
            let message = error.into_inner().to_string();
            let message = message.lines().next().unwrap_or_default().to_string();
            let message = overrides.redact(&path, message);
            return Err(ConfigErrors(vec![ConfigError::new(&path, message)]));
        };
        config.validate().map_err(ConfigErrors)?;
        Ok(config)
    }

    /// Parses TOML text without environment overrides.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        Self::from_toml_with_env(text, std::iter::empty())
    }

    /// Reads a file and applies the process environment's `TSUNAGU_*__*` overrides.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_with_env(&text, std::env::vars()).map_err(LoadError::Invalid)
    }

    /// The built-in single-node configuration used by `tsunagu serve` without `--config`
    /// (SPEC 5.1), with the process environment's overrides applied.
    pub fn embedded_default() -> Result<Config, ConfigErrors> {
        Self::from_toml_with_env(EMBEDDED_DEFAULT, std::env::vars())
    }
}

/// The configuration `tsunagu serve` runs without `--config`: one node, embedded store
/// under `./data`, SIP on UDP+TCP 127.0.0.1:5060, API on 127.0.0.1:8080, RTP 20000-29999,
/// one trunk that accepts calls from loopback and forwards to 127.0.0.1:5070.
pub const EMBEDDED_DEFAULT: &str = r#"
[node]
id = "n1"
data_dir = "./data"

[sip]
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]

[media]
address = "127.0.0.1"
ports = "20000-29999"

[api]
listen = "127.0.0.1:8080"

[store]
backend = "embedded"

[[trunks]]
name = "local"
inbound = ["127.0.0.0/8"]
outbound = "udp:127.0.0.1:5070"

[[routes]]
prefix = ""
trunks = ["local"]
"#;
