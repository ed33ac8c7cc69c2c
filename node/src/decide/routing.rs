//! Where calls come from and go to: the trunk an INVITE arrived on (by source address)
//! and the ordered trunks for a destination (longest matching route prefix).

use std::net::IpAddr;
use tsunagu_config::{Cidr, Config};
use tsunagu_sip::{Peer, Transport};

#[derive(Debug, Clone)]
pub struct Trunk {
    pub name: String,
    pub inbound: Vec<Cidr>,
    /// Where forwarded legs (and keepalives) go.
    pub outbound: Option<Peer>,
    pub max_cps: u32,
    pub shaping: std::time::Duration,
    pub max_channels: u32,
    /// P-Asserted-Identity is believed from, and sent to, this trunk.
    pub trusted: bool,
    /// The From numbers of this trunk are verified by the carrier (callers may get SMS).
    pub verifies_caller_id: bool,
    /// A 3xx from this trunk is followed (its Contact's number is tried next).
    pub follow_redirects: bool,
}

/// The SIP layer's transport for a configured one.
pub fn sip_transport(t: tsunagu_config::Transport) -> Transport {
    match t {
        tsunagu_config::Transport::Udp => Transport::Udp,
        tsunagu_config::Transport::Tcp => Transport::Tcp,
        tsunagu_config::Transport::Tls => Transport::Tls,
    }
}

#[derive(Debug, Clone, Default)]
pub struct Routing {
    pub trunks: Vec<Trunk>,
    /// (prefix, indexes into `trunks`), longest prefix first.
    routes: Vec<(String, Vec<usize>)>,
}

impl Routing {
    pub fn from_config(c: &Config) -> Routing {
        let trunks: Vec<Trunk> = c
            .trunks
            .iter()
            .map(|t| Trunk {
                name: t.name.clone(),
                inbound: t.inbound.clone(),
                outbound: t.outbound.map(|l| Peer {
                    transport: sip_transport(l.transport),
                    addr: l.addr,
                }),
                max_cps: t.max_cps,
                shaping: std::time::Duration::from_millis(u64::from(t.shaping_ms)),
                max_channels: t.max_channels,
                trusted: t.trusted,
                verifies_caller_id: t.verifies_caller_id,
                follow_redirects: t.redirects == tsunagu_config::RedirectPolicy::Follow,
            })
            .collect();
        let mut routes: Vec<(String, Vec<usize>)> = c
            .routes
            .iter()
            .map(|r| {
                (
                    r.prefix.clone(),
                    r.trunks
                        .iter()
                        .filter_map(|n| trunks.iter().position(|t| &t.name == n))
                        .collect(),
                )
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Routing { trunks, routes }
    }

    /// The trunk whose inbound networks contain `ip` (first in configuration order).
    pub fn inbound_trunk(&self, ip: IpAddr) -> Option<usize> {
        self.trunks
            .iter()
            .position(|t| t.inbound.iter().any(|c| c.contains(ip)))
    }

    /// Whether `ip` belongs to a trunk: inside some trunk's inbound networks, or the
    /// address of some trunk's outbound target (callees answer and hang up from there).
    /// Only such addresses are answered, and only to them are requests sent.
    pub fn is_trunk_address(&self, ip: IpAddr) -> bool {
        self.trunks.iter().any(|t| {
            t.inbound.iter().any(|c| c.contains(ip))
                // An IPv4 trunk seen on a dual-stack socket (`::ffff:a.b.c.d`) too.
                || t.outbound.is_some_and(|o| o.addr.ip().to_canonical() == ip.to_canonical())
        })
    }

    /// The trunks to try, in order, for a destination number.
    pub fn outbound_trunks(&self, destination: &str) -> &[usize] {
        self.routes
            .iter()
            .find(|(p, _)| destination.starts_with(p.as_str()))
            .map(|(_, t)| t.as_slice())
            .unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> Routing {
        let c = Config::from_toml(
            r#"
[[trunks]]
name = "a"
inbound = ["127.0.0.1/32", "10.0.0.0/8"]
outbound = "udp:127.0.0.1:5070"
[[trunks]]
name = "b"
inbound = ["127.0.0.0/8"]
outbound = "udp:127.0.0.1:5080"
[[trunks]]
name = "c"
outbound = "tcp:127.0.0.1:5090"
[[routes]]
prefix = ""
trunks = ["a", "b"]
[[routes]]
prefix = "03"
trunks = ["c"]
[[routes]]
prefix = "0312"
trunks = ["b", "c"]
"#,
        )
        .unwrap();
        Routing::from_config(&c)
    }

    #[test]
    fn inbound_by_source() {
        let r = routing();
        let cases = [
            ("127.0.0.1", Some(0)),
            ("127.0.0.2", Some(1)),
            ("10.9.9.9", Some(0)),
            ("192.0.2.1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(r.inbound_trunk(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn trunk_addresses() {
        let r = routing();
        let cases = [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("127.0.0.9", true),
            ("192.0.2.1", false),
            ("::1", false),
        ];
        for (ip, want) in cases {
            assert_eq!(r.is_trunk_address(ip.parse().unwrap()), want, "{ip}");
        }
        let only_outbound = Routing::from_config(
            &Config::from_toml("[[trunks]]\nname = \"c\"\noutbound = \"tcp:192.0.2.7:5090\"\n")
                .unwrap(),
        );
        assert!(only_outbound.is_trunk_address("192.0.2.7".parse().unwrap()));
        assert!(!only_outbound.is_trunk_address("192.0.2.8".parse().unwrap()));
        assert!(only_outbound.is_trunk_address("::ffff:192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn longest_prefix_wins() {
        let r = routing();
        let name = |d: &str| {
            r.outbound_trunks(d)
                .iter()
                .map(|i| r.trunks[*i].name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(name("0312345678"), vec!["b", "c"]);
        assert_eq!(name("0311112222"), vec!["c"]);
        assert_eq!(name("0612345678"), vec!["a", "b"]);
        let none = Routing::default();
        assert!(none.outbound_trunks("03").is_empty());
    }
}
