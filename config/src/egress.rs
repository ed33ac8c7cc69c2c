//! Where the node may send follow-ups (webhooks, the SMS gateway, GA4): a pure
//! classification of destination addresses, so a webhook URL cannot make the node reach
//! its own loopback, a cloud metadata service (169.254.169.254), the operator's private
//! network or the node's own ports (SSRF). The API applies it when a webhook is
//! registered, and the follow-up connector again to every address a name resolves to,
//! right before connecting (so DNS rebinding gains nothing).
//!
//! Only public unicast addresses pass, unless the node's operator allow-lists networks
//! (`notify.allowed_networks`). IPv6 forms that carry an IPv4 address (IPv4-mapped,
//! NAT64, 6to4) are judged by that IPv4 address. An allow-list never opens the node's
//! own listeners nor those of the other nodes of its cluster (their API and cluster
//! link: a cluster's subnet is what an operator allow-lists for an internal receiver).

use crate::net::Cidr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

/// Why a destination is refused. [`Refusal::as_str`] is its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `0.0.0.0/8`, `::` (Linux connects these to the local host).
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 networks, IPv6 unique-local `fc00::/7` and site-local `fec0::/10`.
    Private,
    /// Carrier-grade NAT space `100.64.0.0/10` (RFC 6598).
    SharedCgnat,
    /// `169.254.0.0/16` (cloud metadata services live here), `fe80::/10`.
    LinkLocal,
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// TEST-NET-1/2/3, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15` (RFC 2544).
    Benchmarking,
    /// Everything else that is not public unicast: IETF protocol assignments, the
    /// future-use `240.0.0.0/4`, IPv6 outside `2000::/3`, Teredo and other `2001::/23`.
    Reserved,
    /// One of the node's own listening sockets (its API or SIP over TCP), which an
    /// allow-list does not open.
    OwnListener,
    /// A listener of another node of the cluster (its API or cluster link), which an
    /// allow-list does not open either.
    ClusterListener,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unspecified => "unspecified",
            Refusal::Loopback => "loopback",
            Refusal::Private => "private",
            Refusal::SharedCgnat => "cgnat",
            Refusal::LinkLocal => "link_local",
            Refusal::Multicast => "multicast",
            Refusal::Broadcast => "broadcast",
            Refusal::Documentation => "documentation",
            Refusal::Benchmarking => "benchmarking",
            Refusal::Reserved => "reserved",
            Refusal::OwnListener => "own_listener",
            Refusal::ClusterListener => "cluster_listener",
        }
    }

    /// Every label, for metrics that are exported from the start.
    pub const ALL: [Refusal; 12] = [
        Refusal::Unspecified,
        Refusal::Loopback,
        Refusal::Private,
        Refusal::SharedCgnat,
        Refusal::LinkLocal,
        Refusal::Multicast,
        Refusal::Broadcast,
        Refusal::Documentation,
        Refusal::Benchmarking,
        Refusal::Reserved,
        Refusal::OwnListener,
        Refusal::ClusterListener,
    ];
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Unspecified => "an unspecified address",
            Refusal::Loopback => "a loopback address",
            Refusal::Private => "a private address",
            Refusal::SharedCgnat => "a carrier-grade NAT address",
            Refusal::LinkLocal => "a link-local address",
            Refusal::Multicast => "a multicast address",
            Refusal::Broadcast => "the broadcast address",
            Refusal::Documentation => "a documentation address",
            Refusal::Benchmarking => "a benchmarking address",
            Refusal::Reserved => "a reserved address",
            Refusal::OwnListener => "one of this node's own listeners",
            Refusal::ClusterListener => "a listener of another node of this cluster",
        })
    }
}

/// Why `ip` is not a public unicast address, or None when it is.
pub fn classify(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<Refusal> {
    use Refusal::*;
    // Most specific first: 255.255.255.255 lies inside 240/4, 192.0.2/24 inside nothing.
    const TABLE: &[([u8; 4], u32, Refusal)] = &[
        ([255, 255, 255, 255], 32, Broadcast),
        ([0, 0, 0, 0], 8, Unspecified),
        ([10, 0, 0, 0], 8, Private),
        ([100, 64, 0, 0], 10, SharedCgnat),
        ([127, 0, 0, 0], 8, Loopback),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([172, 16, 0, 0], 12, Private),
        ([192, 0, 0, 0], 24, Reserved),
        ([192, 0, 2, 0], 24, Documentation),
        ([192, 88, 99, 0], 24, Reserved),
        ([192, 168, 0, 0], 16, Private),
        ([198, 18, 0, 0], 15, Benchmarking),
        ([198, 51, 100, 0], 24, Documentation),
        ([203, 0, 113, 0], 24, Documentation),
        ([224, 0, 0, 0], 4, Multicast),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    TABLE
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, r)| *r)
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::/48`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(tail)
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ))
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<Refusal> {
    use Refusal::*;
    if let Some(v4) = embedded_v4(ip) {
        // An embedded public address is as good as the address itself; anything else
        // (loopback, private, ...) is refused for what it really reaches.
        return classify_v4(v4);
    }
    let s = ip.segments();
    let bits = u128::from(ip);
    let within = |net: u128, prefix: u32| {
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        bits & mask == net & mask
    };
    if ip.is_unspecified() {
        Some(Unspecified)
    } else if ip.is_loopback() {
        Some(Loopback)
    } else if s[0] & 0xff00 == 0xff00 {
        Some(Multicast)
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some(LinkLocal)
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        Some(Private)
    } else if within(0x2001_0db8 << 96, 32) || within(0x3fff << 112, 20) {
        Some(Documentation)
    } else if s[0] & 0xe000 != 0x2000 || within(0x2001 << 112, 23) {
        // Only 2000::/3 is global unicast; 2001::/23 holds Teredo, benchmarking
        // (2001:2::/48) and other protocol assignments.
        Some(Reserved)
    } else {
        None
    }
}

/// The node's rule for follow-up destinations: public unicast, plus the operator's
/// allow-listed networks, never the node's own listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Networks allowed even though they are not public (`notify.allowed_networks`).
    pub allowed: Vec<Cidr>,
    /// The node's own TCP listeners (API, SIP over TCP/TLS).
    pub own: Vec<SocketAddr>,
    /// The listeners of the cluster's other nodes, kept current by the node.
    pub members: MemberListeners,
}

impl EgressPolicy {
    /// Whether the node may connect to `addr`.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Refusal> {
        let ip = canonical(addr.ip());
        if self.own.iter().any(|o| listens_at(*o, ip, addr.port())) {
            return Err(Refusal::OwnListener);
        }
        if self.members.contains(ip, addr.port()) {
            return Err(Refusal::ClusterListener);
        }
        if self.allowed.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        classify(ip).map_or(Ok(()), Err)
    }
}

/// `own` with each listener on a wildcard address (0.0.0.0, or `::`, which takes IPv4
/// as well on a dual-stack host) also listed at each of `host`'s addresses it takes
/// connections on: a webhook naming the host's public address at the API's port
/// reached the node itself (a review). `host`: the addresses of the host's
/// interfaces, read at start (an address added later is covered for loopback only).
pub fn with_host_addresses(own: &[SocketAddr], host: &[IpAddr]) -> Vec<SocketAddr> {
    let mut all = own.to_vec();
    for l in own.iter().filter(|l| l.ip().is_unspecified()) {
        let takes = |ip: &IpAddr| l.is_ipv6() || ip.is_ipv4();
        all.extend(
            host.iter()
                .filter(|ip| takes(ip))
                .map(|ip| SocketAddr::new(*ip, l.port())),
        );
    }
    all
}

/// Whether a listener on `listener` takes connections to `ip` (canonical) and `port`.
fn listens_at(listener: SocketAddr, ip: IpAddr, port: u16) -> bool {
    listener.port() == port
        && (canonical(listener.ip()) == ip
            // A listener on 0.0.0.0/:: is reachable on every local address; the ones
            // known to be local without asking the kernel are the loopback ones
            // (another host's 10.0.0.5:8080 is not us).
            || (listener.ip().is_unspecified() && ip.is_loopback()))
}

/// The listeners of the cluster's other nodes (their API and cluster addresses as the
/// store registers them): one list shared by every clone of a policy, which the node
/// replaces whenever it reads the cluster's roster (every few seconds), so a node that
/// joins is covered without a restart.
#[derive(Debug, Clone, Default)]
pub struct MemberListeners(Arc<RwLock<Vec<SocketAddr>>>);

impl MemberListeners {
    /// Replaces the list (bounded by the caller: the store's registered nodes).
    pub fn set(&self, listeners: Vec<SocketAddr>) {
        // A writer that panicked left a whole list: keep using it.
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = listeners;
    }

    fn contains(&self, ip: IpAddr, port: u16) -> bool {
        let list = self.0.read().unwrap_or_else(|e| e.into_inner());
        list.iter().any(|l| listens_at(*l, ip, port))
    }
}

/// Two policies are equal when they hold the same list (the same handle), not merely
/// equal contents at this moment.
impl PartialEq for MemberListeners {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MemberListeners {}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Where an http(s) URL of a follow-up delivers: its host (without an IPv6 literal's
/// brackets), its port (the scheme's when none is written) and whether it is https.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTarget {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Why a follow-up URL cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlError {
    /// Not `http://` or `https://`.
    Scheme,
    /// No host.
    Host,
    /// A user name or password (`user@host`): it would travel in clear text and be
    /// logged.
    Credentials,
    /// A written port that is not 1 to 65535.
    Port,
}

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UrlError::Scheme => "must be an http:// or https:// URL",
            UrlError::Host => "has no host",
            UrlError::Credentials => "must not contain a user name or password",
            UrlError::Port => "the port must be 1 to 65535",
        })
    }
}

/// Reads a follow-up URL's target. The one reader of registration (the API) and
/// delivery (the node): they read ports apart (port 0 passed one and failed the
/// other), so a webhook could be accepted that no delivery could reach.
pub fn url_target(url: &str) -> Result<UrlTarget, UrlError> {
    let (tls, rest) = if let Some(r) = strip_prefix_ignore_case(url, "https://") {
        (true, r)
    } else if let Some(r) = strip_prefix_ignore_case(url, "http://") {
        (false, r)
    } else {
        return Err(UrlError::Scheme);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(UrlError::Credentials);
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or(UrlError::Host)?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or(UrlError::Port)?)),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(UrlError::Host);
    }
    let port = match port {
        None => {
            if tls {
                443
            } else {
                80
            }
        }
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
            .parse::<u16>()
            .ok()
            .filter(|&n| n != 0)
            .ok_or(UrlError::Port)?,
        Some(_) => return Err(UrlError::Port),
    };
    Ok(UrlTarget {
        host: host.to_string(),
        port,
        tls,
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wildcard listener stands at each of the host's addresses of a family it takes;
    /// a listener on one address stays where it is.
    #[test]
    fn wildcard_listeners_stand_at_the_hosts_addresses() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let host: Vec<IpAddr> = ["127.0.0.1", "93.184.216.34", "2001:db8::7"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let own = [sa("0.0.0.0:8080"), sa("[::]:5061"), sa("10.0.0.1:5060")];
        let all = with_host_addresses(&own, &host);
        for (addr, listed) in [
            ("93.184.216.34:8080", true),
            ("127.0.0.1:8080", true),
            ("[2001:db8::7]:8080", false),
            ("93.184.216.34:5061", true),
            ("[2001:db8::7]:5061", true),
            ("10.0.0.1:5060", true),
            ("93.184.216.34:5060", false),
        ] {
            assert_eq!(all.contains(&sa(addr)), listed, "{addr}");
        }
        let policy = EgressPolicy {
            own: all,
            ..Default::default()
        };
        assert_eq!(
            policy.check(sa("93.184.216.34:8080")),
            Err(Refusal::OwnListener)
        );
        assert_eq!(policy.check(sa("93.184.216.35:8080")), Ok(()));
    }

    /// (URL, what it delivers to or why not): one reader for registration and delivery.
    #[test]
    fn follow_up_urls_and_their_targets() {
        use UrlError::*;
        let t = |host: &str, port, tls| {
            Ok(UrlTarget {
                host: host.into(),
                port,
                tls,
            })
        };
        let rows: &[(&str, Result<UrlTarget, UrlError>)] = &[
            (
                "https://93.184.216.34:8443/hook",
                t("93.184.216.34", 8443, true),
            ),
            ("http://example.com", t("example.com", 80, false)),
            ("HTTPS://Example.com/x", t("Example.com", 443, true)),
            ("http://h?x=1", t("h", 80, false)),
            ("http://h:65535/", t("h", 65535, false)),
            ("https://[2606::1]/", t("2606::1", 443, true)),
            ("https://[2606::1]:8443", t("2606::1", 8443, true)),
            ("http://h:0/", Err(Port)),
            ("http://h:65536/", Err(Port)),
            ("http://h:99999999999/", Err(Port)),
            ("http://h:/", Err(Port)),
            ("http://h:port/", Err(Port)),
            ("http://h:+80/", Err(Port)),
            ("https://[2606::1]:70000/", Err(Port)),
            ("https://[2606::1]x/", Err(Port)),
            ("https://[2606::1/", Err(Host)),
            ("http://user:pw@h/", Err(Credentials)),
            ("ftp://h/", Err(Scheme)),
            ("h:80", Err(Scheme)),
            ("http:///x", Err(Host)),
            ("http://:80/", Err(Host)),
        ];
        for (url, want) in rows {
            assert_eq!(url_target(url), *want, "{url}");
        }
    }
    use Refusal::*;

    /// Each row: an address and how it is classified (None: public, allowed).
    #[test]
    fn addresses_are_classified() {
        let rows: &[(&str, Option<Refusal>)] = &[
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("1.1.1.1", None),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(Private)),
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            ("100.128.0.1", None),
            ("169.254.169.254", Some(LinkLocal)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("240.0.0.1", Some(Reserved)),
            ("192.0.0.170", Some(Reserved)),
            ("192.88.99.1", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("198.20.0.1", None),
            // IPv6
            ("2606:4700:4700::1111", None),
            ("2001:4860:4860::8888", None),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("fe80::1", Some(LinkLocal)),
            ("fc00::1", Some(Private)),
            ("fd12:3456::1", Some(Private)),
            ("fec0::1", Some(Private)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("2001::1", Some(Reserved)),   // Teredo
            ("2001:2::1", Some(Reserved)), // benchmarking
            ("100::1", Some(Reserved)),    // discard-only
            ("::2", Some(Reserved)),       // IPv4-compatible, deprecated
            ("4000::1", Some(Reserved)),
            // IPv6 forms of IPv4 addresses are judged by the IPv4 address.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:100.64.1.1", Some(SharedCgnat)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::7f00:1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(LinkLocal)),
            ("64:ff9b::808:808", None),
            ("2002:7f00:1::1", Some(Loopback)),
            ("2002:c0a8:101::1", Some(Private)),
            ("2002:808:808::1", None),
        ];
        for (text, want) in rows {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(classify(ip), *want, "{text}");
        }
    }

    /// Each row: allow-list, own listeners, destination → verdict.
    #[test]
    fn policy_allows_listed_networks_but_never_own_listeners() {
        type Row = (
            &'static [&'static str],
            &'static [&'static str],
            &'static str,
            Result<(), Refusal>,
        );
        let rows: &[Row] = &[
            (&[], &[], "8.8.8.8:443", Ok(())),
            (&[], &[], "127.0.0.1:8080", Err(Loopback)),
            (&["127.0.0.0/8"], &[], "127.0.0.1:8080", Ok(())),
            (&["127.0.0.0/8"], &[], "[::ffff:127.0.0.1]:8080", Ok(())),
            (&["127.0.0.0/8"], &[], "[::1]:8080", Err(Loopback)),
            (&["127.0.0.0/8"], &[], "0.0.0.0:8080", Err(Unspecified)),
            (&["10.0.0.0/8"], &[], "10.9.9.9:443", Ok(())),
            (&["10.0.0.0/8"], &[], "192.168.0.1:443", Err(Private)),
            (&["10.0.0.0/8"], &[], "169.254.169.254:80", Err(LinkLocal)),
            (
                &["127.0.0.0/8"],
                &["127.0.0.1:8080"],
                "127.0.0.1:8080",
                Err(OwnListener),
            ),
            (
                &["127.0.0.0/8"],
                &["127.0.0.1:8080"],
                "127.0.0.1:8081",
                Ok(()),
            ),
            (
                &["127.0.0.0/8"],
                &["0.0.0.0:8080"],
                "127.0.0.2:8080",
                Err(OwnListener),
            ),
            (&[], &["0.0.0.0:8080"], "8.8.8.8:8080", Ok(())),
            (&["10.0.0.0/8"], &["0.0.0.0:8080"], "10.0.0.5:8080", Ok(())),
            (&["::1/128"], &["[::]:8080"], "[::1]:8080", Err(OwnListener)),
            (
                &[],
                &["203.0.113.5:5060"],
                "203.0.113.5:5060",
                Err(OwnListener),
            ),
        ];
        for (allowed, own, dest, want) in rows {
            let policy = EgressPolicy {
                allowed: allowed.iter().map(|c| c.parse().unwrap()).collect(),
                own: own.iter().map(|a| a.parse().unwrap()).collect(),
                members: MemberListeners::default(),
            };
            let dest: SocketAddr = dest.parse().unwrap();
            assert_eq!(policy.check(dest), *want, "{allowed:?} {own:?} {dest}");
        }
    }

    /// The other nodes' listeners are refused however wide the allow-list, and a clone
    /// of the policy (the API's, the connector's) sees the list the node sets later.
    #[test]
    fn policy_never_opens_other_nodes_listeners() {
        let policy = EgressPolicy {
            allowed: vec!["10.0.0.0/8".parse().unwrap()],
            own: vec![],
            members: MemberListeners::default(),
        };
        let clone = policy.clone();
        let api: SocketAddr = "10.0.0.6:8080".parse().unwrap();
        assert_eq!(clone.check(api), Ok(()), "before the roster is read");
        policy
            .members
            .set(vec![api, "10.0.0.6:7946".parse().unwrap()]);
        let rows: &[(&str, Result<(), Refusal>)] = &[
            ("10.0.0.6:8080", Err(ClusterListener)),
            ("[::ffff:10.0.0.6]:8080", Err(ClusterListener)),
            ("10.0.0.6:7946", Err(ClusterListener)),
            ("10.0.0.6:9000", Ok(())),
            ("10.0.0.7:8080", Ok(())),
        ];
        for (dest, want) in rows {
            assert_eq!(clone.check(dest.parse().unwrap()), *want, "{dest}");
        }
        policy.members.set(vec![]);
        assert_eq!(
            clone.check(api),
            Ok(()),
            "a node that left is no longer refused"
        );
    }
}
