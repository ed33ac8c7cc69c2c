//! Who is asking: the client address of a request. It is the TCP peer, which the
//! accept loop stores in the request ([`PeerAddr`]); only when that peer is one of
//! `api.trusted_proxies` does `X-Forwarded-For` name the client (any script can send
//! that header, so from anyone else it is ignored).

use axum::http::{header::HeaderName, request::Parts, HeaderMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tsunagu_config::Cidr;

/// The TCP peer of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn trusted(ip: IpAddr, proxies: &[Cidr]) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// The client address of a request (unspecified if it came without a peer, which only
/// a test that calls the router directly does).
pub fn client_ip(parts: &Parts, proxies: &[Cidr]) -> IpAddr {
    let peer = parts
        .extensions
        .get::<PeerAddr>()
        .map(|p| p.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    resolve(peer, &parts.headers, proxies)
}

/// The client behind `peer`: walking `X-Forwarded-For` from the right (the hop our
/// proxy appended) past every trusted proxy, the first address that is not one. An
/// entry that is not an address stops the walk at the proxy that passed it on.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> IpAddr {
    if !trusted(peer, proxies) {
        return peer;
    }
    let mut hops: Vec<&str> = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        hops.extend(text.split(',').map(str::trim));
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted(ip, proxies) {
                    return ip;
                }
            }
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        // (peer, X-Forwarded-For values, client)
        let cases: &[(&str, &[&str], &str)] = &[
            ("203.0.113.9", &[], "203.0.113.9"),
            ("203.0.113.9", &["198.51.100.1"], "203.0.113.9"),
            ("10.0.0.5", &[], "10.0.0.5"),
            ("10.0.0.5", &["198.51.100.1"], "198.51.100.1"),
            ("10.0.0.5", &["1.1.1.1, 198.51.100.1"], "198.51.100.1"),
            (
                "10.0.0.5",
                &["1.1.1.1, 198.51.100.1, 10.0.0.4"],
                "198.51.100.1",
            ),
            ("10.0.0.5", &["1.1.1.1", "198.51.100.1"], "198.51.100.1"),
            ("10.0.0.5", &["10.0.0.3, 10.0.0.4"], "10.0.0.3"),
            ("10.0.0.5", &["garbage, 10.0.0.4"], "10.0.0.4"),
            ("10.0.0.5", &["1.1.1.1, garbage"], "10.0.0.5"),
            ("10.0.0.5", &["2001:db8::1"], "2001:db8::1"),
        ];
        for (peer, xff, want) in cases {
            let mut h = HeaderMap::new();
            for v in *xff {
                h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
            }
            let got = resolve(peer.parse().unwrap(), &h, &proxies);
            assert_eq!(got, want.parse::<IpAddr>().unwrap(), "{peer} {xff:?}");
        }
    }
}
