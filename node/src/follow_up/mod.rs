//! Follow-ups after calls (issue: tracking and follow-up): webhook events, e-mail and
//! SMS notices, SMS to mobile callers, GA4 conversions and callback numbers.
//!
//! [`plan`] decides and renders what a call causes (pure); the call-log writer stores
//! it in the outbox in the same transaction as the call record, so nothing is sent
//! for an unlogged call and nothing is lost across restarts or receiver outages;
//! [`outbox`] delivers with retries through [`deliver`], giving each destination a
//! fair share ([`lanes`]), over an HTTP client that connects only where the egress
//! policy allows ([`http`], [`tsunagu_config::egress`]).

pub mod deliver;
pub mod hooks;
pub mod http;
pub mod lanes;
pub mod metrics;
pub mod outbox;
pub mod plan;
pub mod sign;
pub mod template;

use tsunagu_config::egress::EgressPolicy;
use tsunagu_config::{Config, Transport};

/// Where this node's follow-ups may go: public addresses, the networks of
/// `notify.allowed_networks`, and never the node's own API, metrics or SIP stream
/// listeners nor the other nodes' API and cluster listeners (the metrics listener was
/// left out: a tenant's webhook could POST to it, a review).
pub fn egress_policy(config: &Config, host: &[std::net::IpAddr]) -> EgressPolicy {
    let sip = config
        .sip
        .listen
        .iter()
        .filter(|l| l.transport != Transport::Udp)
        .map(|l| l.addr);
    let own: Vec<std::net::SocketAddr> = std::iter::once(config.api.listen)
        .chain(config.api.metrics_listen)
        .chain(sip)
        .chain(config.cluster.listen)
        .collect();
    EgressPolicy {
        allowed: config.notify.allowed_networks.clone(),
        own: tsunagu_config::egress::with_host_addresses(&own, host),
        // Filled from the cluster's roster once the node joins (cluster_link).
        members: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use tsunagu_config::egress::Refusal;

    /// An API listening on 0.0.0.0 is refused at every IPv4 address of the host, not
    /// only loopback (the test host has a network interface besides loopback).
    #[test]
    fn a_wildcard_listener_is_refused_at_the_hosts_addresses() {
        let config = tsunagu_config::Config::from_toml("[api]\nlisten = \"0.0.0.0:18080\"\n")
            .expect("config");
        let policy = super::egress_policy(&config, &crate::host::addresses());
        let v4: Vec<_> = crate::host::addresses()
            .into_iter()
            .filter(|ip| ip.is_ipv4())
            .collect();
        assert!(v4.iter().any(|ip| !ip.is_loopback()), "{v4:?}");
        for ip in v4 {
            let addr = std::net::SocketAddr::new(ip, 18080);
            assert_eq!(policy.check(addr), Err(Refusal::OwnListener), "{addr}");
        }
    }

    /// The metrics listener is the node's own too, as the API's is.
    #[test]
    fn the_metrics_listener_is_refused_too() {
        let config = tsunagu_config::Config::from_toml(
            "[api]\nlisten = \"127.0.0.1:18080\"\nmetrics_listen = \"127.0.0.1:19100\"\n",
        )
        .expect("config");
        let policy = super::egress_policy(&config, &[]);
        let metrics: std::net::SocketAddr = "127.0.0.1:19100".parse().unwrap();
        assert_eq!(policy.check(metrics), Err(Refusal::OwnListener));
    }
}
