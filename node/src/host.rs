//! The host the node runs on: its interfaces' addresses, read at start. A listener
//! bound to a wildcard address is reachable at each of them (follow-ups refuse them as
//! destinations), and a party's SDP may name none of them (the media relay refuses
//! them, as it does the media address).

use std::net::IpAddr;

/// The addresses of this host's interfaces (getifaddrs); none if they cannot be read.
/// At most a few hundred on any host: an entry per address of an interface.
pub fn addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|all| all.iter().map(if_addrs::Interface::ip).collect())
        .unwrap_or_default()
}
