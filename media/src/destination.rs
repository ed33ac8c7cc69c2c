//! Where the relay may send audio. A party's SDP names the address its audio goes
//! to; the node sends there from its own address, so an SDP could aim that stream at
//! anything the node can reach. Refused, whoever sent the SDP: multicast and
//! broadcast (a LAN flooded with a call's audio), link-local (169.254.169.254 is the
//! cloud's metadata service), loopback unless the node's media address is itself on
//! loopback (a test or lab setup), and the node's own RTP ports (one call's audio
//! looped into another call's relay; not checked when the media address is on
//! loopback), and any other port of the node's host (its media address or another
//! of its interfaces') unless a trunk's. Private networks stay allowed: carriers
//! interconnect over them. A refused address is as no address: the side accepts
//! nothing and is sent nothing until new SDP names a good one.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

/// Why `dst` is refused as a media destination of a relay whose sockets are bound to
/// `local` with ports in `own_ports`, on a host whose interfaces also have the
/// addresses `host` (canonical: see [`std::net::IpAddr::to_canonical`]); None if audio
/// may go there. `trusted`: `dst` is a trunk's
/// address (a carrier's media anchor may share the node's host).
pub fn refused(
    dst: SocketAddr,
    local: IpAddr,
    host: &[IpAddr],
    own_ports: &RangeInclusive<u16>,
    trusted: bool,
) -> Option<&'static str> {
    let ip = dst.ip().to_canonical();
    let local = local.to_canonical();
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if ip.is_unspecified() {
        // `0.0.0.0` (also written `::ffff:0.0.0.0`) is "this host" to the kernel.
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("broadcast")
    } else if link_local {
        Some("link_local")
    } else if ip.is_loopback() && !local.is_loopback() {
        Some("loopback")
    } else if ip == local && !local.is_loopback() && own_ports.contains(&dst.port()) {
        // (Not on loopback: there the parties of a test or a lab are local sockets
        // whose ephemeral ports may fall in the range.)
        Some("own_port")
    } else if (ip == local || host.contains(&ip)) && !local.is_loopback() && !trusted {
        // The node's host, outside its RTP ports: its SIP listener, a metrics agent,
        // any UDP service bound to every address. A party is never on the node's
        // host; a trunk's media anchor may be.
        Some("own_address")
    } else {
        None
    }
}

/// Every reason [`refused`] gives (the metric's series).
pub const REASONS: [&str; 7] = [
    "unspecified",
    "multicast",
    "broadcast",
    "link_local",
    "loopback",
    "own_port",
    "own_address",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_destinations_a_party_may_name() {
        let public: IpAddr = "203.0.113.5".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let ports = 20000..=29999;
        // (destination, node's media address, expected)
        let rows: &[(&str, IpAddr, Option<&str>)] = &[
            ("198.51.100.7:4000", public, None),
            ("10.1.2.3:4000", public, None), // a carrier's private interconnect
            ("[2001:db8::1]:4000", public, None),
            ("224.0.0.251:5353", public, Some("multicast")),
            ("[ff02::1]:4000", public, Some("multicast")),
            ("255.255.255.255:4000", public, Some("broadcast")),
            ("169.254.169.254:80", public, Some("link_local")),
            ("[fe80::1]:4000", public, Some("link_local")),
            ("[::ffff:169.254.169.254]:80", public, Some("link_local")),
            ("127.0.0.1:8125", public, Some("loopback")),
            ("[::1]:8125", public, Some("loopback")),
            ("127.0.0.1:8125", lo, None), // a node on loopback talks to loopback
            ("127.0.0.1:20002", lo, None), // on loopback, a local party's ephemeral port
            ("203.0.113.5:20002", public, Some("own_port")),
            ("203.0.113.5:30000", public, Some("own_address")), // the node's host
            ("203.0.113.5:8125", public, Some("own_address")),
            ("198.51.100.7:20002", public, None), // another host's port
            ("0.0.0.0:8125", public, Some("unspecified")),
            ("[::ffff:0.0.0.0]:8125", public, Some("unspecified")),
            ("[::]:8125", public, Some("unspecified")),
        ];
        for (dst, local, want) in rows {
            let dst: SocketAddr = dst.parse().unwrap();
            assert_eq!(
                refused(dst, *local, &[], &ports, false),
                *want,
                "{dst} from {local}"
            );
        }
        // A trunk's media anchor on the node's host, outside the RTP ports: allowed;
        // inside them still refused.
        let anchor: SocketAddr = "203.0.113.5:30000".parse().unwrap();
        assert_eq!(refused(anchor, public, &[], &ports, true), None);
        let inside: SocketAddr = "203.0.113.5:20002".parse().unwrap();
        assert_eq!(refused(inside, public, &[], &ports, true), Some("own_port"));
        // The host's other addresses: refused as the media address is, outside a
        // trunk's; another host's are not.
        let host: [IpAddr; 2] = ["10.0.0.7".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let rows: &[(&str, bool, Option<&str>)] = &[
            ("10.0.0.7:8125", false, Some("own_address")),
            ("10.0.0.7:20002", false, Some("own_address")),
            ("[::ffff:10.0.0.7]:8125", false, Some("own_address")),
            ("10.0.0.7:8125", true, None),
            ("10.0.0.8:8125", false, None),
        ];
        for (dst, trusted, want) in rows {
            let dst: SocketAddr = dst.parse().unwrap();
            assert_eq!(
                refused(dst, public, &host, &ports, *trusted),
                *want,
                "{dst} {trusted}"
            );
        }
        // A node on loopback (tests, a lab) is not refused its local parties.
        let party: SocketAddr = "127.0.0.1:8125".parse().unwrap();
        assert_eq!(refused(party, lo, &host, &ports, false), None);
    }
}
