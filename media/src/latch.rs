//! Which packets a relay port accepts: the source check that keeps anyone who sprays
//! the RTP port range from hearing calls or injecting audio into them (and into their
//! recordings). Pure decision logic: [`judge`] takes the policy, what the side's SDP
//! signalled, what it latched to, and one packet's source; the relay applies the
//! [`Verdict`].
//!
//! Modelled on rtpengine's `strict-source`: the SDP of a leg says where its far end
//! receives audio, and by the symmetric-RTP convention (RFC 4961) that is also where
//! it sends from. The policies differ in how much of that address a packet's source
//! must match:
//!
//! - [`Latch::Strict`]: IP and port must equal the SDP's. Right for peers that are
//!   never behind NAT (carrier SBCs, gateways on public addresses).
//! - [`Latch::Address`] (the default): the IP must equal the SDP's; the port may differ
//!   (a NAT that keeps the public IP the phone learned by STUN, or a gateway that sends
//!   from another port than it receives on). The first RTP packet from that IP latches
//!   its port; after that only that IP:port (or the SDP's own IP:port) is accepted,
//!   and the relay sends to the latched address. Default because it keeps every
//!   off-path attacker out (they would need the peer's IP) and still works for the
//!   common NAT and asymmetric-port cases, which `strict` would silently break.
//! - [`Latch::Off`]: the old behaviour, documented as unsafe: packets from anywhere
//!   are relayed, and the destination latches to the first packet's source. Only for
//!   peers whose SDP names an address they do not send from (e.g. phones behind NAT
//!   that put their private address in SDP) when no SBC in front fixes it.
//!
//! In every policy a packet that is not RTP is dropped ([`crate::rtp::parse`]), and a
//! latch is made only by a packet that is RTP. A side whose SDP is not known yet
//! accepts nothing (`strict` and `address`). Latching is redone only when new SDP
//! changes the side's address ([`Peer::signal`]).

use std::net::{IpAddr, SocketAddr};

/// The source policy of a relay (`media.latch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Latch {
    /// IP and port must equal the SDP's.
    Strict,
    /// The IP must equal the SDP's; the first RTP packet from it latches the port.
    #[default]
    Address,
    /// Anyone; the first packet latches the destination. Unsafe.
    Off,
}

/// Why a packet was refused (the `reason` label of `tsunagu_rtp_foreign_packets_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// From an address the side's SDP (and latch) does not allow.
    Source,
    /// From an allowed address, but not an RTP packet.
    NotRtp,
}

/// What to do with one received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Relay it.
    Accept,
    /// Relay it, and from now on accept (and send to) this address.
    LatchTo(SocketAddr),
    /// Drop it and count it.
    Drop(Foreign),
}

/// Where one side's far end is, as far as the relay knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peer {
    /// The address its SDP announced; None before its SDP arrived.
    pub signalled: Option<SocketAddr>,
    /// The source its RTP was latched to; None until the first accepted packet.
    pub latched: Option<SocketAddr>,
    /// Packets sent toward this side while nothing had come from it (see
    /// [`Peer::destination`]), whichever addresses its SDPs named.
    pub unverified_sent: u32,
    /// `signalled` is a trunk's address (inside a trunk's inbound networks, or its
    /// outbound target): a carrier's media anchor, not a party who could be anyone.
    pub trusted: bool,
}

impl Peer {
    /// New SDP for this side says it receives at `addr`. The latch is dropped only if
    /// the address changed: a re-INVITE or UPDATE repeating the same address (a session
    /// refresh, a codec change) keeps the port a NAT'd phone was latched to.
    pub fn signal(&mut self, addr: SocketAddr) {
        if self.signalled != Some(addr) {
            self.signalled = Some(addr);
            self.latched = None;
        }
    }

    /// No address for this side any more (its SDP named one the relay refuses, or
    /// the call took it away): nothing goes there. What was sent unverified stays
    /// counted: the budget is the side's for the call, whatever addresses its SDPs
    /// name in turn.
    pub fn forget(&mut self) {
        *self = Peer {
            unverified_sent: self.unverified_sent,
            ..Peer::default()
        };
    }

    /// Where a packet toward this side's far end goes, relayed or generated (a prompt,
    /// ringback, queue audio): the latched source (symmetric RTP, which is what gets
    /// through a NAT); before any packet came from this side, the SDP's address —
    /// always when it is a trunk's (`trusted`), else for the first `budget` packets
    /// only (`media.unverified_audio_seconds`), counted here — and then nothing until
    /// a packet comes. With `consent` (`media.consent`) nothing goes before a packet.
    /// An SDP can name anyone: without the budget an INVITE naming a victim's address
    /// had the node stream a whole prompt, ring or queue, or the callee's audio, at it.
    pub fn destination(&mut self, consent: bool, budget: u32) -> Option<SocketAddr> {
        if self.latched.is_some() || consent {
            return self.latched;
        }
        if self.trusted {
            return self.signalled;
        }
        let to = self.signalled.filter(|_| self.unverified_sent < budget)?;
        self.unverified_sent += 1;
        Some(to)
    }

    /// Whether a packet toward this side is being withheld for want of a packet from
    /// it (its SDP named an address, nothing came from there, the budget is spent or
    /// `media.consent` asks for one first).
    pub fn withholding(&self) -> bool {
        self.signalled.is_some() && self.latched.is_none()
    }
}

/// The same host, whichever family the socket reports it in (`::ffff:a.b.c.d` and
/// `a.b.c.d` are one address).
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && same_ip(a.ip(), b.ip())
}

/// The decision for one packet from `src` to the side whose far end is `peer`; `rtp` is
/// whether the packet parsed as RTP. The source is judged first, so garbage from a
/// stranger counts as `Source`, and `NotRtp` means the legitimate peer sent it.
pub fn judge(policy: Latch, peer: &Peer, src: SocketAddr, rtp: bool) -> Verdict {
    let allowed = match policy {
        Latch::Off => Verdict::LatchTo(src),
        Latch::Strict => match peer.signalled {
            // The first packet marks the side as heard from (latched to its own SDP
            // address), which is what lets audio flow to it past the unverified budget.
            Some(s) if same_addr(s, src) && peer.latched == Some(src) => Verdict::Accept,
            Some(s) if same_addr(s, src) => Verdict::LatchTo(src),
            _ => Verdict::Drop(Foreign::Source),
        },
        Latch::Address => match peer.signalled {
            None => Verdict::Drop(Foreign::Source),
            // The SDP's own address is always the peer's; if the port was latched to
            // another one (a same-host stranger who raced the first packet), the
            // peer's first packet takes the latch back, at any time (so whoever can
            // send from that exact address can move a latch made to another port:
            // the peer itself, or a process sharing its host and port; README
            // "Security" notes).
            Some(s) if same_addr(s, src) => Verdict::LatchTo(src),
            Some(_) if peer.latched == Some(src) => Verdict::Accept,
            Some(s) if peer.latched.is_none() && same_ip(s.ip(), src.ip()) => Verdict::LatchTo(src),
            Some(_) => Verdict::Drop(Foreign::Source),
        },
    };
    match allowed {
        Verdict::Drop(_) => allowed,
        _ if !rtp => Verdict::Drop(Foreign::NotRtp),
        // Off: only the first packet latches (later ones are relayed from anywhere but
        // do not move the destination, as before).
        Verdict::LatchTo(_) if policy == Latch::Off && peer.latched.is_some() => Verdict::Accept,
        // Already latched there: nothing to change.
        Verdict::LatchTo(a) if peer.latched == Some(a) => Verdict::Accept,
        _ => allowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const SDP: &str = "192.0.2.10:4000";

    /// Policy, signalled, latched, source, is RTP, verdict.
    type Row = (
        Latch,
        Option<SocketAddr>,
        Option<SocketAddr>,
        SocketAddr,
        bool,
        Verdict,
    );

    /// Each row: policy, what the side knows (signalled, latched), the packet's source
    /// and whether it is RTP, and the verdict.
    #[test]
    fn verdicts() {
        use Foreign::*;
        use Latch::*;
        use Verdict::{Accept, Drop, LatchTo};
        let sdp = Some(a(SDP));
        let nat = a("192.0.2.10:61000");
        let stranger = a("203.0.113.66:4000");
        let neighbour = a("192.0.2.10:5555");
        let mapped = a("[::ffff:192.0.2.10]:61000");
        #[rustfmt::skip]
        let table: &[Row] = &[
            // No SDP yet: nothing is accepted (early RTP from an unknown callee).
            (Strict, None, None, a(SDP), true, Drop(Source)),
            (Address, None, None, a(SDP), true, Drop(Source)),
            // strict: exactly the SDP's address.
            (Strict, sdp, None, a(SDP), true, LatchTo(a(SDP))),
            (Strict, sdp, Some(a(SDP)), a(SDP), true, Accept),
            (
                Strict,
                sdp,
                None,
                a("[::ffff:192.0.2.10]:4000"),
                true,
                LatchTo(a("[::ffff:192.0.2.10]:4000")),
            ),
            (Strict, sdp, None, nat, true, Drop(Source)),
            (Strict, sdp, None, stranger, true, Drop(Source)),
            (Strict, sdp, None, a(SDP), false, Drop(NotRtp)),
            (Strict, sdp, None, stranger, false, Drop(Source)),
            // address: the SDP's IP latches its port with the first RTP packet...
            (Address, sdp, None, nat, true, LatchTo(nat)),
            (Address, sdp, None, mapped, true, LatchTo(mapped)),
            (Address, sdp, None, a(SDP), true, LatchTo(a(SDP))),
            // ...but not with a packet that is not RTP.
            (Address, sdp, None, nat, false, Drop(NotRtp)),
            // A stranger is refused before and after the latch, whatever it sends.
            (Address, sdp, None, stranger, true, Drop(Source)),
            (Address, sdp, Some(nat), stranger, true, Drop(Source)),
            (Address, sdp, Some(nat), stranger, false, Drop(Source)),
            // Once latched, only that port (and the SDP's own) of the peer's IP.
            (Address, sdp, Some(nat), nat, true, Accept),
            (Address, sdp, Some(nat), nat, false, Drop(NotRtp)),
            (Address, sdp, Some(nat), neighbour, true, Drop(Source)),
            (Address, sdp, Some(a(SDP)), a(SDP), true, Accept),
            (Address, sdp, Some(a(SDP)), nat, true, Drop(Source)),
            // A same-host stranger who raced the peer's first packet loses the latch to it.
            (Address, sdp, Some(neighbour), a(SDP), true, LatchTo(a(SDP))),
            (Address, sdp, Some(neighbour), a(SDP), false, Drop(NotRtp)),
            // off (unsafe): anyone; the first RTP packet sets the destination.
            (Off, None, None, stranger, true, LatchTo(stranger)),
            (Off, sdp, None, stranger, true, LatchTo(stranger)),
            (Off, sdp, Some(nat), stranger, true, Accept),
            (Off, sdp, None, stranger, false, Drop(NotRtp)),
        ];
        for (i, (policy, signalled, latched, src, rtp, want)) in table.iter().enumerate() {
            let peer = Peer {
                signalled: *signalled,
                latched: *latched,
                ..Peer::default()
            };
            assert_eq!(judge(*policy, &peer, *src, *rtp), *want, "row {i}");
        }
    }

    #[test]
    fn new_sdp_relatches_only_when_the_address_changes() {
        let mut p = Peer::default();
        assert_eq!(p.destination(false, u32::MAX), None);
        p.signal(a(SDP));
        assert_eq!(p.destination(false, u32::MAX), Some(a(SDP)));
        p.latched = Some(a("192.0.2.10:61000"));
        assert_eq!(
            p.destination(false, u32::MAX),
            Some(a("192.0.2.10:61000")),
            "symmetric RTP"
        );
        // A re-INVITE repeating the address (session refresh, codec change).
        p.signal(a(SDP));
        assert_eq!(p.latched, Some(a("192.0.2.10:61000")), "latch kept");
        // A re-INVITE moving the media (another port, another host).
        p.signal(a("192.0.2.10:4002"));
        assert_eq!(p.latched, None, "latch redone");
        assert_eq!(p.destination(false, u32::MAX), Some(a("192.0.2.10:4002")));
        p.latched = Some(a("192.0.2.10:61000"));
        p.signal(a("198.51.100.1:4002"));
        assert_eq!(
            (p.signalled, p.latched),
            (Some(a("198.51.100.1:4002")), None)
        );
    }

    /// Audio toward a side that never sent a packet: the SDP's address gets `budget`
    /// packets, then nothing, also after new SDP naming another address (the budget
    /// is the side's); a latched side gets every packet; a trunk's address is not
    /// limited; with consent, nothing before a packet.
    #[test]
    fn audio_reaches_an_unverified_address_for_a_budget_of_packets() {
        let sent = |p: &mut Peer, consent: bool, budget: u32, packets: usize| {
            (0..packets)
                .filter(|_| p.destination(consent, budget).is_some())
                .count()
        };
        let mut p = Peer::default();
        assert_eq!(sent(&mut p, false, 3, 10), 0, "no SDP: nowhere");
        assert!(!p.withholding());
        p.signal(a(SDP));
        assert_eq!(p.destination(false, 3), Some(a(SDP)));
        assert_eq!(sent(&mut p, false, 3, 10), 2, "the rest of the budget");
        assert_eq!(p.destination(false, 3), None);
        assert!(p.withholding());
        p.signal(a("192.0.2.99:5000"));
        assert_eq!(
            sent(&mut p, false, 3, 10),
            0,
            "another address: no new budget"
        );
        p.forget();
        p.signal(a(SDP));
        assert_eq!(sent(&mut p, false, 3, 10), 0, "nor after forgetting");
        p.latched = Some(a("192.0.2.10:61000"));
        assert_eq!(sent(&mut p, false, 3, 10), 10, "latched: every packet");
        assert!(!p.withholding());
        assert_eq!(p.destination(true, 3), Some(a("192.0.2.10:61000")));
        let mut q = Peer::default();
        q.signal(a(SDP));
        assert_eq!(
            sent(&mut q, true, 3, 10),
            0,
            "consent: nothing before a packet"
        );
        assert_eq!(sent(&mut q, false, 0, 10), 0, "a budget of 0");
        q.trusted = true;
        assert_eq!(sent(&mut q, false, 0, 10), 10, "a trunk's address");
        assert_eq!(
            sent(&mut q, true, 0, 10),
            0,
            "consent still waits for a packet"
        );
    }

    /// Each row: consent, (signalled, latched) → where audio goes. With consent the
    /// SDP's word alone sends nothing; a latched source always gets it.
    #[test]
    fn with_consent_audio_goes_only_to_a_latched_source() {
        let rows = [
            (false, Some(SDP), None, Some(SDP)),
            (true, Some(SDP), None, None),
            (
                true,
                Some(SDP),
                Some("192.0.2.10:61000"),
                Some("192.0.2.10:61000"),
            ),
            (false, None, None, None),
            (true, None, None, None),
        ];
        for (consent, signalled, latched, want) in rows {
            let p = Peer {
                signalled: signalled.map(a),
                latched: latched.map(a),
                ..Peer::default()
            };
            assert_eq!(
                p.clone().destination(consent, u32::MAX),
                want.map(a),
                "{consent} {signalled:?} {latched:?}"
            );
        }
    }
}
