//! Network value types that appear in the configuration: SIP listeners
//! (`udp:127.0.0.1:5060`), CIDR blocks and port ranges. Each parses from a string.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// A SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

/// `transport:ip:port`, e.g. `udp:127.0.0.1:5060` or `tcp:[::1]:5060`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Listener {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl FromStr for Listener {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (t, rest) = s.split_once(':').ok_or_else(|| {
            format!("`{s}` is not `transport:address:port` (e.g. udp:127.0.0.1:5060)")
        })?;
        let transport = match t.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            other => return Err(format!("unknown transport `{other}` (udp, tcp or tls)")),
        };
        let addr = rest
            .parse()
            .map_err(|_| format!("`{rest}` is not an address:port (e.g. 127.0.0.1:5060)"))?;
        Ok(Listener { transport, addr })
    }
}

impl TryFrom<String> for Listener {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

/// An IPv4 or IPv6 network in CIDR notation; a bare address means a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies inside this block (IPv4-mapped IPv6 addresses match IPv4 blocks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}` has a prefix length outside 0..={max}"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// An inclusive UDP port range `first-last` for RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// How many legs the range can carry at once: even ports with the odd one above
    /// still in the range (what the RTP port pool leases).
    pub fn pairs(&self) -> usize {
        let first_even = u32::from(self.first).div_ceil(2); // halves: ceil(first / 2)
        let last_even = u32::from(self.last).saturating_sub(1) / 2; // floor((last - 1) / 2)
        (last_even + 1).saturating_sub(first_even) as usize
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a port range like 20000-29999");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(format!(
                "`{s}`: the first port must be 1 or more and not above the last"
            ));
        }
        if u32::from(last) - u32::from(first) < 3 {
            return Err(format!("`{s}` holds fewer than two RTP port pairs"));
        }
        Ok(PortRange { first, last })
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners() {
        let cases: &[(&str, Option<(Transport, &str)>)] = &[
            (
                "udp:127.0.0.1:5060",
                Some((Transport::Udp, "127.0.0.1:5060")),
            ),
            (
                "TCP:127.0.0.1:5061",
                Some((Transport::Tcp, "127.0.0.1:5061")),
            ),
            ("tls:[::1]:5061", Some((Transport::Tls, "[::1]:5061"))),
            ("sctp:127.0.0.1:5060", None),
            ("udp:127.0.0.1", None),
            ("127.0.0.1:5060", None),
            ("udp:host.example:5060", None),
        ];
        for (text, want) in cases {
            let got = text.parse::<Listener>().ok().map(|l| (l.transport, l.addr));
            let want = want.map(|(t, a)| (t, a.parse().unwrap()));
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn cidr_membership() {
        let cases = [
            ("127.0.0.1/32", "127.0.0.1", true),
            ("127.0.0.1/32", "127.0.0.2", false),
            ("127.0.0.0/8", "127.9.9.9", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("192.0.2.7", "192.0.2.7", true),
            ("::1/128", "::1", true),
            ("2001:db8::/32", "2001:db8:1::5", true),
            ("2001:db8::/32", "127.0.0.1", false),
            ("127.0.0.0/8", "::ffff:127.0.0.1", true),
        ];
        for (cidr, ip, want) in cases {
            let c: Cidr = cidr.parse().unwrap();
            assert_eq!(c.contains(ip.parse().unwrap()), want, "{cidr} ∋ {ip}");
        }
        for bad in ["127.0.0.1/33", "::1/129", "host/8", "1.2.3/8", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            "20000-20999".parse::<PortRange>(),
            Ok(PortRange {
                first: 20000,
                last: 20999
            })
        );
        for bad in ["20000", "2-1", "0-100", "20000-20001", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_range_carries_one_leg_per_even_port_with_its_odd_one() {
        // (first, last) -> legs at once
        let rows = [
            ((20000, 29999), 5000),
            ((20001, 29999), 4999),
            ((20000, 20000), 0),
            ((20000, 20001), 1),
            ((20001, 20003), 1),
            ((29600, 29959), 180),
            ((65532, 65535), 2),
            ((1, 65535), 32767),
        ];
        for ((first, last), want) in rows {
            assert_eq!(PortRange { first, last }.pairs(), want, "{first}-{last}");
        }
    }
}
