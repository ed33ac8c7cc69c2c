//! The two dialogs of a B2BUA call and the messages each sends: the caller's leg (A,
//! where we are the UAS) and the forwarded leg (B, where we are the UAC). Nothing of
//! one leg's Via, Contact, Record-Route or Call-ID is copied to the other.
//!
//! A far end names where its dialog's requests go (Contact, Record-Route); the node
//! sends there only if that address belongs to a trunk, else back where the dialog came
//! from — a caller cannot point the node's BYE at a third party. A request claiming to
//! be in a dialog belongs to it only if both tags match ([`ALeg::owns`], [`BLeg::owns`]).

use super::checkpoint::Dialog;
use super::reliable::{Held, Out, Reliable, T1};
use tsunagu_sip::build::{
    new_branch, new_call_id, new_tag, route_set, RequestSpec, FIRST_INVITE_CSEQ,
};
use tsunagu_sip::parse::{has_option_tag, header, uri_addr, uri_of, Peer, Transport};
use tsunagu_sip::transaction::TxKey;
use tsunagu_sip::{EndpointHandle, Info, Method, Request, Response};

/// Where a dialog's requests go: the first route if any, else the remote target, when
/// that address is `allowed` (a trunk's); otherwise back where the dialog came from.
fn next_hop(
    routes: &[String],
    target: &str,
    fallback: Peer,
    allowed: &dyn Fn(std::net::IpAddr) -> bool,
) -> Peer {
    let uri = routes.first().map(|r| uri_of(r)).unwrap_or(target);
    match uri_addr(uri) {
        Some(addr) if allowed(addr.ip()) => Peer {
            transport: fallback.transport,
            addr,
        },
        Some(addr) => {
            tracing::info!(%addr, "a dialog's next hop is no trunk's address: requests go where the dialog came from");
            fallback
        }
        None => fallback,
    }
}

/// A target refresh's new target (its Contact's URI, if a SIP URI at all: `Contact:
/// <>` made an empty Request-URI) and the dialog's next hop with it. A target that is
/// no trunk's address keeps the hop the dialog has now (`next`: the previous
/// refresh's trunk, not the dialog's first one).
fn refreshed<'a>(
    routes: &[String],
    next: Peer,
    contact: Option<&'a str>,
    allowed: &dyn Fn(std::net::IpAddr) -> bool,
) -> Option<(&'a str, Peer)> {
    let uri = uri_of(contact?);
    let scheme = uri.split(':').next()?;
    let sip = scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips");
    (uri.len() > 5 && sip).then(|| (uri, next_hop(routes, uri, next, allowed)))
}

/// The tag parameter of a From or To value.
fn tag_of(value: &str) -> Option<&str> {
    tsunagu_sip::parse::param(value, "tag")
}

/// The last ACK a leg sent for a 2xx of its far end (CSeq, body): sent again as it was
/// when that 2xx comes again, the ACK lost (RFC 3261 13.2.2.4), or the far end hangs up
/// 32 s later.
#[derive(Clone, Default)]
pub struct LastAck(Option<(u32, Option<String>)>);

impl LastAck {
    fn note(&mut self, cseq: u32, sdp: Option<&str>) {
        self.0 = Some((cseq, sdp.map(str::to_string)));
    }

    /// The body of the ACK sent for the 2xx with CSeq `cseq` (`Some(None)`: none), or
    /// None when no ACK was sent for it.
    fn body_for(&self, cseq: u32) -> Option<Option<&str>> {
        let (acked, body) = self.0.as_ref()?;
        (*acked == cseq).then_some(body.as_deref())
    }
}

/// Whether the party that sent `msg` (its INVITE, or its 2xx to the node's) takes
/// UPDATE in the dialog: its Allow lists it, or it sends no Allow (RFC 3261 20.5 leaves that
/// open; such a party gets UPDATE as before). One whose Allow leaves it out gets the
/// node's re-INVITE instead (see `Call::relay_reoffer`): an UPDATE relayed to it came
/// back 405 and a caller refreshing its session by UPDATE was hung up at the session's
/// end (a review).
fn takes_update<M: tsunagu_sip::parse::HasHeaders>(msg: &M) -> bool {
    header(msg, "Allow").is_none() || has_option_tag(msg, "Allow", "UPDATE")
}

/// How long before the `attempt`th retransmission of a reliable provisional (0 is the
/// first, T1 after it was sent; then doubling): the sixth, which finds it still
/// unacknowledged and gives the caller up ([`ALeg::retransmit_reliable`]), comes at
/// 64*T1 in all (RFC 3262 3), the last wait cut to what is left. It doubled too and
/// came at 127*T1 (63.5 s): an answered callee waited a minute in silence (a review).
fn reliable_wait(attempt: u32) -> std::time::Duration {
    if attempt >= 6 {
        return T1;
    }
    T1.saturating_mul(1 << attempt)
}

/// Sends an ACK built in a leg's dialog, with `sdp` as its body.
fn send_ack(ep: &EndpointHandle, (mut spec, peer): (RequestSpec, Peer), sdp: Option<&str>) {
    spec.body = sdp.map(|s| ("application/sdp", s.as_bytes().to_vec()));
    ep.request(spec, peer);
}

fn local(ep: &EndpointHandle, transport: Transport) -> std::net::SocketAddr {
    ep.local(transport)
        .or_else(|| ep.local(Transport::Udp))
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 5060)))
}

pub(crate) fn contact(ep: &EndpointHandle, transport: Transport) -> String {
    let addr = local(ep, transport);
    format!("<sip:tsunagu@{addr}{}>", transport.uri_param())
}

/// The caller's leg.
/// `sdp` as the next body of the session a party was last sent `last` of (its
/// session id and version going on: `sdp::continue_origin`), kept as the last.
fn next_body(last: &mut Option<String>, sdp: Option<String>) -> Option<String> {
    let body = tsunagu_media::sdp::continue_origin(last.as_deref(), &sdp?);
    *last = Some(body.clone());
    Some(body)
}

/// What the node does alike in either leg's dialog: its own requests (with the next
/// CSeq), relayed offers and the ACKs of their 2xx. A leg says how a request in its
/// dialog is built and keeps its CSeq, the SDP and the ACK it last sent.
pub trait Leg {
    /// A request of the node's in this dialog, with CSeq `cseq`.
    fn in_dialog(&self, ep: &EndpointHandle, method: Method, cseq: u32) -> (RequestSpec, Peer);
    /// The dialog's next local CSeq, taken.
    fn next_cseq(&mut self) -> u32;
    /// The SDP the node last sent this party.
    fn last_sdp(&mut self) -> &mut Option<String>;
    /// The last ACK the node sent this party.
    fn last_ack(&mut self) -> &mut LastAck;
    /// Whether the party takes UPDATE (see [`takes_update`]).
    fn takes_update(&self) -> bool;
    /// A target refresh (RFC 3261 12.2): the party's re-INVITE or UPDATE, or its 2xx
    /// to one of the node's, named `contact` (None: none, nothing changes). Its
    /// requests go there from now on, through the dialog's route set, when that is a
    /// trunk's address (`allowed`; see [`next_hop`]). A carrier's SBC that fails over
    /// re-INVITEs from its new address; the node's BYE went to the old one.
    /// Whether the target changed.
    fn refresh_target(
        &mut self,
        contact: Option<&str>,
        allowed: &dyn Fn(std::net::IpAddr) -> bool,
    ) -> bool;

    /// The next request of ours in this dialog (for the caller to fill and send).
    fn request(&mut self, ep: &EndpointHandle, method: Method) -> (RequestSpec, Peer) {
        let cseq = self.next_cseq();
        self.in_dialog(ep, method, cseq)
    }

    /// `sdp` as the next body this party gets (see [`next_body`]).
    fn next_body(&mut self, sdp: Option<String>) -> Option<String> {
        next_body(self.last_sdp(), sdp)
    }

    /// Sends a re-INVITE or UPDATE relayed from the other leg (or one of the node's
    /// own); returns its CSeq and, for a re-INVITE, its CANCEL.
    fn reoffer(
        &mut self,
        ep: &EndpointHandle,
        method: Method,
        sdp: Option<String>,
        headers: Headers,
    ) -> Relayed {
        let sdp = self.next_body(sdp);
        let (mut spec, peer) = self.request(ep, method);
        spec.contact = Some(contact(ep, peer.transport));
        spec.body = sdp.map(|s| ("application/sdp", s.into_bytes()));
        spec.extra = headers;
        Relayed::send(spec, peer, ep)
    }

    /// ACKs a 2xx to the re-INVITE with this CSeq (with the answer, for a 2xx that
    /// carried the offer).
    fn ack_at(&mut self, ep: &EndpointHandle, cseq: u32, sdp: Option<&str>) {
        send_ack(ep, self.in_dialog(ep, Method::Ack, cseq), sdp);
        self.last_ack().note(cseq, sdp);
    }
}

pub struct ALeg {
    pub invite: Request,
    pub info: Info,
    pub peer: Peer,
    pub key: TxKey,
    pub local_tag: String,
    remote_target: String,
    routes: Vec<String>,
    /// Where requests in this dialog go (see [`next_hop`]).
    next: Peer,
    local_cseq: u32,
    /// A final response was sent (or decided on and held back for a PRACK).
    pub final_sent: bool,
    /// Reliable provisionals, when the caller requires them (100rel).
    reliable: Option<Box<Reliable>>,
    /// The retransmission of a reliable provisional to arm, (RSeq, attempt): the call
    /// puts it on its own timers ([`ALeg::take_rearm`]).
    rearm: Option<(u32, u32)>,
    /// Answered: the INVITE is to be trimmed once no response is left to build from it.
    trim_pending: bool,
    /// The SDP the node last sent the caller (a checkpoint's base for the next offer).
    pub last_sdp: Option<String>,
    /// The last ACK the node sent this party.
    last_ack: LastAck,
    /// A response with `local_tag` went to the caller (anything but 100 Trying).
    tag_sent: bool,
    /// The caller takes UPDATE in the dialog (see [`takes_update`]).
    takes_update: bool,
    /// The last provisional response sent plainly (its code, and whether it carried
    /// the session: `last_sdp`), repeated every minute while the call rings (see
    /// [`ALeg::repeat_provisional`]).
    last_provisional: Option<(u16, bool)>,
}

impl ALeg {
    /// The caller's leg of `invite`, with its route set `routes` (the INVITE's
    /// Record-Route as admission read it, within `MAX_ROUTE_SET`); `allowed` says which
    /// addresses its requests may be sent to (trunks').
    pub fn new(
        invite: Request,
        info: Info,
        peer: Peer,
        key: TxKey,
        routes: Vec<String>,
        allowed: &dyn Fn(std::net::IpAddr) -> bool,
    ) -> ALeg {
        let remote_target = header(&invite, "Contact")
            .map(|c| uri_of(c).to_string())
            .unwrap_or_default();
        let next = next_hop(&routes, &remote_target, peer, allowed);
        let takes_update = takes_update(&invite);
        ALeg {
            takes_update,
            last_provisional: None,
            next,
            invite,
            info,
            peer,
            key,
            local_tag: new_tag(),
            remote_target,
            routes,
            // Above the CSeq of the node's new INVITEs: a 2xx to its first re-INVITE
            // of the caller was taken for one to a new INVITE, and left unacknowledged
            // once the call was gone (a review).
            local_cseq: FIRST_INVITE_CSEQ,
            final_sent: false,
            reliable: None,
            rearm: None,
            trim_pending: false,
            last_sdp: None,
            last_ack: LastAck::default(),
            tag_sent: false,
        }
    }

    /// The caller cancelled before any response told it this leg's To tag, and the
    /// 200 to its CANCEL carried `tag`: the INVITE's 487 carries the same (RFC 3261
    /// 9.2; it carried the call's own, another than the CANCEL's 200). A tag already
    /// sent is kept.
    pub fn adopt_tag(&mut self, tag: String) {
        if !self.tag_sent {
            self.local_tag = tag;
        }
    }

    /// Whether a request that names this leg's Call-ID is of its dialog: the caller's
    /// tag in From and ours in To.
    pub fn owns(&self, info: &Info) -> bool {
        info.from_tag.is_some()
            && info.from_tag == self.info.from_tag
            && info.to_tag.as_deref() == Some(self.local_tag.as_str())
    }

    /// The caller's INVITE is answered: from here on its dialog needs only From, To and
    /// Call-ID of it, so the rest is dropped (memory held for the whole call) — once no
    /// reliable provisional or held 2xx still has to be built from it.
    pub fn answered(&mut self) {
        self.trim_pending = true;
        self.trim();
    }

    fn trim(&mut self) {
        let idle = self.reliable.as_deref().is_none_or(Reliable::idle);
        if self.trim_pending && idle {
            self.trim_pending = false;
            tsunagu_sip::parse::keep_only(&mut self.invite, &["From", "To", "Call-ID"]);
        }
    }

    /// The caller requires reliable provisionals (`Require: 100rel`): send them so,
    /// with retransmissions timed by `me`.
    pub fn require_100rel(&mut self) {
        let first = (rand::random::<u32>() >> 1).max(1);
        self.reliable = Some(Box::new(Reliable::new(first)));
    }

    /// Whether the reliable provisional `rseq` awaits its PRACK.
    pub fn outstanding(&self, rseq: u32) -> bool {
        self.reliable
            .as_deref()
            .is_some_and(|r| r.retransmit(rseq).is_some())
    }

    /// A PRACK acknowledging `rseq`: sends what waited for it. False if no such
    /// provisional is outstanding.
    pub fn prack(&mut self, ep: &EndpointHandle, rseq: u32) -> bool {
        let Some(out) = self.reliable.as_deref_mut().and_then(|r| r.prack(rseq)) else {
            return false;
        };
        for o in out {
            self.send_out(ep, o, true);
        }
        self.trim();
        true
    }

    /// Retransmits the reliable provisional `rseq` (the `attempt`th time) if still
    /// unacknowledged. False when it has gone unacknowledged for 64*T1: the caller
    /// is to be given up.
    pub fn retransmit_reliable(&mut self, ep: &EndpointHandle, rseq: u32, attempt: u32) -> bool {
        let Some(out) = self.reliable.as_deref().and_then(|r| r.retransmit(rseq)) else {
            return true; // acknowledged (or superseded by a final response)
        };
        if attempt >= 6 {
            return false; // 0.5+1+2+4+8+16 s: 64*T1 without a PRACK
        }
        self.send_out(ep, out, false);
        self.arm(rseq, attempt + 1);
        true
    }

    /// Whether a 2xx waits for the caller's PRACK (generated, never sent).
    pub fn holds_final(&self) -> bool {
        self.reliable.as_deref().is_some_and(|r| r.holds_final())
    }

    /// Drops reliability (the caller is being given up: its final response goes plainly).
    /// A 2xx held for a PRACK goes with it: it was never sent, so the INVITE is
    /// unanswered again and may still be refused.
    pub fn abandon_reliable(&mut self) {
        if self.reliable.take().is_some_and(|r| r.holds_final()) {
            self.final_sent = false;
        }
    }

    fn arm(&mut self, rseq: u32, attempt: u32) {
        if self.reliable.is_some() {
            self.rearm = Some((rseq, attempt));
        }
    }

    /// The retransmission to arm, if one was asked for since the last call: after
    /// how long ([`reliable_wait`]), and the RSeq and attempt it retransmits.
    pub fn take_rearm(&mut self) -> Option<(std::time::Duration, u32, u32)> {
        let (rseq, attempt) = self.rearm.take()?;
        Some((reliable_wait(attempt), rseq, attempt))
    }

    /// Sends a response the reliable layer released; `first` arms the retransmission
    /// timer of a reliable provisional.
    fn send_out(&mut self, ep: &EndpointHandle, (rseq, r): Out, first: bool) {
        let mut headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let rseq_text = rseq.map(|n| n.to_string());
        if let Some(n) = &rseq_text {
            headers.push(("Require", "100rel"));
            headers.push(("RSeq", n));
        }
        self.send(ep, r.code, r.sdp.as_deref(), &headers);
        if let (Some(n), true) = (rseq, first) {
            self.arm(n, 0);
        }
    }

    /// Answers the caller's INVITE (provisional or final), with SDP if given.
    pub fn respond(&mut self, ep: &EndpointHandle, code: u16, sdp: Option<&str>) {
        self.respond_with(ep, code, sdp, &[]);
    }

    /// [`ALeg::respond`] with more headers (the session timer of a 200).
    pub fn respond_with(
        &mut self,
        ep: &EndpointHandle,
        code: u16,
        sdp: Option<&str>,
        headers: &[(&str, &str)],
    ) {
        if self.final_sent {
            return;
        }
        if code >= 200 {
            self.final_sent = true;
        }
        let stamped = self.next_body(sdp.map(str::to_string));
        let sdp = stamped.as_deref();
        if let Some(rel) = self.reliable.as_deref_mut() {
            if code > 100 {
                let held = Held {
                    code,
                    sdp: sdp.map(str::to_string),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                };
                let out = if code < 200 {
                    rel.provisional(held)
                } else {
                    rel.final_response(held)
                };
                if let Some(o) = out {
                    self.send_out(ep, o, true);
                }
                return;
            }
        }
        if (101..200).contains(&code) {
            self.last_provisional = Some((code, sdp.is_some()));
        }
        self.send(ep, code, sdp, headers);
    }

    /// Sends the last provisional response again, if the INVITE has no final one yet
    /// (plain provisionals only: a reliable one is retransmitted until its PRACK). RFC
    /// 3261 13.3.1.1: a UAS sends one every minute while the call rings, or a proxy
    /// upstream cancels the INVITE at its Timer C (over 3 minutes): a caller queued or
    /// ringing past that heard nothing after the first (a review).
    pub fn repeat_provisional(&mut self, ep: &EndpointHandle) {
        if self.final_sent || self.reliable.is_some() {
            return;
        }
        if let Some((code, with_sdp)) = self.last_provisional {
            let sdp = self.last_sdp.clone().filter(|_| with_sdp);
            self.send(ep, code, sdp.as_deref(), &[]);
        }
    }

    fn send(
        &mut self,
        ep: &EndpointHandle,
        code: u16,
        sdp: Option<&str>,
        headers: &[(&str, &str)],
    ) {
        let contact = contact(ep, self.peer.transport);
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if (101..300).contains(&code) {
            extra.push(("Contact", &contact));
        }
        if (200..300).contains(&code) {
            // What the caller may send in the dialog (RFC 3261 13.3.1.4; UPDATE's
            // use is told so, RFC 3311 5.1).
            extra.push(("Allow", tsunagu_sip::endpoint::ALLOW));
        }
        extra.extend_from_slice(headers);
        self.tag_sent |= code > 100;
        ep.respond(
            &self.invite,
            &self.info,
            &self.key,
            code,
            Some(&self.local_tag),
            &extra,
            sdp.map(|s| ("application/sdp", s.as_bytes())),
        );
    }

    /// A 2xx to the INVITE with CSeq `cseq` came again: the ACK sent for it goes again
    /// ([`LastAck`]), or none if none was sent for it.
    pub fn reack(&self, ep: &EndpointHandle, cseq: u32) {
        if let Some(body) = self.last_ack.body_for(cseq) {
            send_ack(ep, self.in_dialog(ep, Method::Ack, cseq), body);
        }
    }

    /// The dialog as a checkpoint keeps it (media fields filled in by the call).
    pub fn dialog(&self) -> Dialog {
        let our_to = format!(
            "{};tag={}",
            header(&self.invite, "To").unwrap_or_default(),
            self.local_tag
        );
        Dialog {
            call_id: self.info.call_id.clone(),
            local: our_to,
            remote: header(&self.invite, "From").unwrap_or_default().to_string(),
            next_cseq: self.local_cseq + 1,
            target: self.target(),
            routes: self.routes.clone(),
            hop: self.next.into(),
            sdp: self.last_sdp.clone().unwrap_or_default(),
            media: None,
            dtmf: None,
            formats: None,
            takes_update: self.takes_update,
        }
    }

    fn target(&self) -> String {
        if self.remote_target.is_empty() {
            format!("sip:{}", self.peer.addr)
        } else {
            self.remote_target.clone()
        }
    }

    /// The caller's dialog of a call taken over from another node: answered, with the
    /// checkpoint's tags, CSeq, target and route (`allowed` checks the next hop again).
    pub fn restore(d: &Dialog, allowed: &dyn Fn(std::net::IpAddr) -> bool) -> Option<ALeg> {
        let (to, local_tag) = split_tag(&d.local)?;
        let remote_tag = tsunagu_sip::parse::param(&d.remote, "tag")?.to_string();
        // The dialog's From, To and Call-ID, in the form an answered leg keeps them.
        let text = format!(
            "INVITE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {hop};branch=z9hG4bKrestored\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n",
            target = d.target,
            hop = d.hop.addr,
            from = d.remote,
            call_id = d.call_id,
        );
        let (msg, mut info) = tsunagu_sip::parse::parse(text.as_bytes()).ok()?;
        let tsunagu_sip::SipMessage::Request(mut invite) = msg else {
            return None;
        };
        tsunagu_sip::parse::keep_only(&mut invite, &["From", "To", "Call-ID"]);
        info.from_tag = Some(remote_tag);
        info.to_tag = None;
        let hop: Peer = d.hop.into();
        let next = next_hop(&d.routes, &d.target, hop, allowed);
        Some(ALeg {
            key: TxKey::new("z9hG4bKrestored", Method::Invite),
            invite,
            info,
            peer: hop,
            local_tag: local_tag.to_string(),
            remote_target: d.target.clone(),
            routes: d.routes.clone(),
            next,
            local_cseq: restored_cseq(d.next_cseq),
            final_sent: true,
            reliable: None,
            rearm: None,
            trim_pending: false,
            last_sdp: Some(d.sdp.clone()),
            last_ack: LastAck::default(),
            tag_sent: true,
            takes_update: d.takes_update,
            last_provisional: None,
        })
    }
}

impl Leg for ALeg {
    fn refresh_target(
        &mut self,
        contact: Option<&str>,
        allowed: &dyn Fn(std::net::IpAddr) -> bool,
    ) -> bool {
        let Some((target, next)) = refreshed(&self.routes, self.next, contact, allowed) else {
            return false;
        };
        self.next = next;
        let changed = self.remote_target != target;
        self.remote_target = target.to_string();
        changed
    }

    fn in_dialog(&self, ep: &EndpointHandle, method: Method, cseq: u32) -> (RequestSpec, Peer) {
        let their_from = header(&self.invite, "From").unwrap_or_default().to_string();
        let our_to = format!(
            "{};tag={}",
            header(&self.invite, "To").unwrap_or_default(),
            self.local_tag
        );
        let peer = self.next;
        let uri = self.target();
        let spec = RequestSpec {
            method,
            uri,
            transport: peer.transport,
            sent_by: local(ep, peer.transport),
            branch: new_branch(),
            from: our_to,
            to: their_from,
            call_id: self.info.call_id.clone(),
            cseq,
            contact: None,
            routes: self.routes.clone(),
            max_forwards: 70,
            extra: Vec::new(),
            body: None,
        };
        (spec, peer)
    }

    fn next_cseq(&mut self) -> u32 {
        self.local_cseq += 1;
        self.local_cseq
    }

    fn last_sdp(&mut self) -> &mut Option<String> {
        &mut self.last_sdp
    }

    fn last_ack(&mut self) -> &mut LastAck {
        &mut self.last_ack
    }

    fn takes_update(&self) -> bool {
        self.takes_update
    }
}

/// The local CSeq a dialog restored from a checkpoint goes on from: `next_cseq` of
/// the checkpoint, less one, plus [`RESTORE_GAP`], at most 2^31 - 1 - [`RESTORE_GAP`]
/// (RFC 3261 8.1.1.5: below 2^31, with room for the requests that follow; a dialog
/// restored that near the top, which no call reaches, would go on lower than it was).
/// The checkpoint is written when the session changes, not at every request the node
/// sends (a key relayed by INFO, a re-offer refused): the node taking the call over
/// re-INVITEd with a CSeq the party had already seen, got 500 and hung the call up (a
/// review). A CSeq only has to grow, so a gap covers whatever went unrecorded.
pub(crate) fn restored_cseq(next_cseq: u32) -> u32 {
    next_cseq
        .saturating_sub(1)
        .saturating_add(RESTORE_GAP)
        .min(MAX_CSEQ - RESTORE_GAP)
}

/// See [`restored_cseq`].
const RESTORE_GAP: u32 = 1000;
/// The largest CSeq (RFC 3261 8.1.1.5: less than 2^31).
const MAX_CSEQ: u32 = (1 << 31) - 1;

/// A header value and the value of its `tag` parameter, split: `<sip:a@b>` and `x`
/// from `<sip:a@b>;tag=x`.
fn split_tag(value: &str) -> Option<(&str, &str)> {
    let at = value.rfind(";tag=")?;
    let tag = &value[at + 5..];
    let tag = tag.split(';').next().unwrap_or(tag);
    (!tag.is_empty()).then_some((&value[..at], tag))
}

/// Headers a relayed request carries over from the other leg (session timers).
pub type Headers = Vec<(&'static str, String)>;

/// A re-offer relayed to a leg: its CSeq there, and for a re-INVITE its CANCEL (same
/// branch and CSeq number, RFC 3261 9.1), for when its sender cancels it.
pub struct Relayed {
    pub cseq: u32,
    /// Its client transaction: a timeout names it.
    pub key: TxKey,
    pub cancel: Option<(RequestSpec, Peer)>,
}

impl Relayed {
    fn send(spec: RequestSpec, peer: Peer, ep: &EndpointHandle) -> Relayed {
        let cseq = spec.cseq;
        let key = TxKey::new(&spec.branch, spec.method);
        let cancel = (spec.method == Method::Invite).then(|| (spec.cancel(), peer));
        ep.request(spec, peer);
        Relayed { cseq, key, cancel }
    }
}

/// The forwarded leg of one attempt.
#[derive(Clone)]
pub struct BLeg {
    pub invite: RequestSpec,
    pub peer: Peer,
    pub destination: String,
    pub provisional: bool,
    pub cancel_pending: bool,
    pub cancel_sent: bool,
    /// To of the 2xx (with the callee's tag), once answered.
    to: Option<String>,
    remote_target: Option<String>,
    routes: Vec<String>,
    /// Where requests in this dialog go (see [`next_hop`]).
    next: Peer,
    cseq: u32,
    /// The SDP the node last sent the callee (a checkpoint's base for the next offer).
    pub last_sdp: Option<String>,
    /// The last ACK the node sent this party.
    last_ack: LastAck,
    /// The callee takes UPDATE in the dialog (see [`takes_update`]), from its 2xx.
    takes_update: bool,
    /// To tags of the dialogs [`BLeg::hang_up_answer`] hung up, the latest
    /// [`HUNG_UP_KEPT`].
    hung_up: Vec<String>,
}

/// How many hung-up dialogs a leg remembers (see [`BLeg::hang_up_answer`]): forks of
/// one INVITE are a handful.
const HUNG_UP_KEPT: usize = 8;

impl Leg for BLeg {
    fn refresh_target(
        &mut self,
        contact: Option<&str>,
        allowed: &dyn Fn(std::net::IpAddr) -> bool,
    ) -> bool {
        let Some((target, next)) = refreshed(&self.routes, self.next, contact, allowed) else {
            return false;
        };
        self.next = next;
        let changed = self.remote_target.as_deref() != Some(target);
        self.remote_target = Some(target.to_string());
        changed
    }

    fn in_dialog(&self, ep: &EndpointHandle, method: Method, cseq: u32) -> (RequestSpec, Peer) {
        let target = self.target();
        let peer = self.next;
        let spec = RequestSpec {
            method,
            uri: target,
            transport: peer.transport,
            sent_by: local(ep, peer.transport),
            branch: new_branch(),
            from: self.invite.from.clone(),
            to: self.to.clone().unwrap_or_else(|| self.invite.to.clone()),
            call_id: self.invite.call_id.clone(),
            cseq,
            contact: None,
            routes: self.routes.clone(),
            max_forwards: 70,
            extra: Vec::new(),
            body: None,
        };
        (spec, peer)
    }

    fn next_cseq(&mut self) -> u32 {
        self.cseq += 1;
        self.cseq
    }

    fn last_sdp(&mut self) -> &mut Option<String> {
        &mut self.last_sdp
    }

    fn last_ack(&mut self) -> &mut LastAck {
        &mut self.last_ack
    }

    fn takes_update(&self) -> bool {
        self.takes_update
    }
}

/// What the B-leg INVITE carries.
pub struct Outbound<'a> {
    pub destination: &'a str,
    pub presented: &'a str,
    pub peer: Peer,
    pub sdp: &'a str,
    pub max_forwards: u8,
    pub privacy: Option<&'a str>,
    /// Sent as P-Asserted-Identity (only toward trusted trunks).
    pub asserted: Option<&'a str>,
    /// Session-timer headers passed on from the caller's INVITE.
    pub session: Headers,
}

impl BLeg {
    pub fn invite(ep: &EndpointHandle, o: Outbound) -> BLeg {
        let local_addr = local(ep, o.peer.transport);
        let transport_param = o.peer.transport.uri_param();
        let uri = format!("sip:{}@{}{}", o.destination, o.peer.addr, transport_param);
        let mut extra = Vec::new();
        if let Some(id) = o.asserted {
            extra.push((
                "P-Asserted-Identity",
                format!("<sip:{id}@{}>", local_addr.ip()),
            ));
        }
        if let Some(p) = o.privacy {
            extra.push(("Privacy", p.to_string()));
        }
        // What the callee may send in the dialog (RFC 3261 13.2.1).
        extra.push(("Allow", tsunagu_sip::endpoint::ALLOW.to_string()));
        extra.extend(o.session);
        let invite = RequestSpec {
            method: Method::Invite,
            uri: uri.clone(),
            transport: o.peer.transport,
            sent_by: local_addr,
            branch: new_branch(),
            from: format!(
                "<sip:{}@{}>;tag={}",
                o.presented,
                local_addr.ip(),
                new_tag()
            ),
            to: format!("<{uri}>"),
            call_id: new_call_id(),
            cseq: FIRST_INVITE_CSEQ,
            contact: Some(contact(ep, o.peer.transport)),
            routes: Vec::new(),
            max_forwards: o.max_forwards,
            extra,
            body: Some(("application/sdp", o.sdp.as_bytes().to_vec())),
        };
        BLeg {
            invite,
            peer: o.peer,
            destination: o.destination.to_string(),
            provisional: false,
            cancel_pending: false,
            cancel_sent: false,
            to: None,
            remote_target: None,
            routes: Vec::new(),
            next: o.peer,
            cseq: FIRST_INVITE_CSEQ,
            last_sdp: Some(o.sdp.to_string()),
            last_ack: LastAck::default(),
            takes_update: true,
            hung_up: Vec::new(),
        }
    }

    pub fn call_id(&self) -> &str {
        &self.invite.call_id
    }

    /// Whether the callee answered (its 2xx established the dialog).
    pub fn is_answered(&self) -> bool {
        self.to.is_some()
    }

    /// Cancels the INVITE now if the callee has sent a provisional response, else as
    /// soon as it does (RFC 3261 9.1).
    pub fn cancel(&mut self, ep: &EndpointHandle) {
        if self.cancel_sent {
            return;
        }
        if self.provisional {
            self.cancel_sent = true;
            ep.request(self.invite.cancel(), self.peer);
        } else {
            self.cancel_pending = true;
        }
    }

    /// Whether a request that names this leg's Call-ID is of its dialog: our tag in To
    /// and, once the callee answered, the callee's in From.
    pub fn owns(&self, info: &Info) -> bool {
        let ours = tag_of(&self.invite.from);
        let theirs = self.to.as_deref().and_then(tag_of);
        ours.is_some()
            && info.to_tag.as_deref() == ours
            && (theirs.is_none() || info.from_tag.as_deref() == theirs)
    }

    /// Where in-dialog requests go: the callee's Contact, else the INVITE's URI.
    fn target(&self) -> String {
        self.remote_target
            .clone()
            .unwrap_or_else(|| self.invite.uri.clone())
    }

    /// Records the dialog a 2xx established; `allowed` says which addresses its
    /// requests may be sent to (trunks'). False when the 2xx's route set is past
    /// `MAX_ROUTE_SET`: the dialog is then kept without it (its ACK and BYE go to the
    /// trunk the INVITE was sent to, without a Route line per entry), and the call
    /// hangs it up.
    pub fn established(
        &mut self,
        resp: &Response,
        allowed: &dyn Fn(std::net::IpAddr) -> bool,
    ) -> bool {
        self.to = header(resp, "To").map(str::to_string);
        self.takes_update = takes_update(resp);
        self.remote_target = header(resp, "Contact").map(|c| uri_of(c).to_string());
        let recorded = route_set(resp);
        let usable = recorded.is_some();
        self.routes = recorded.unwrap_or_default();
        self.routes.reverse();
        let target = self.target();
        self.next = if usable {
            next_hop(&self.routes, &target, self.peer, allowed)
        } else {
            self.peer
        };
        usable
    }

    /// Whether a 2xx to our INVITE is of the dialog this leg keeps: any before one is
    /// kept, then only those with the callee's To tag.
    pub fn keeps(&self, resp: &Response) -> bool {
        let kept = self.to.as_deref().and_then(tag_of);
        kept.is_none() || header(resp, "To").and_then(tag_of) == kept
    }

    /// A 2xx this leg does not keep (a fork of our INVITE with another To tag, RFC
    /// 3261 13.2.2.4; the answer to an attempt the call has left): ACKed and hung up on
    /// its own dialog, this leg's untouched. A repeat of one already hung up (the same
    /// To tag: its ACK was lost) is ACKed again and not hung up again: each BYE is a
    /// transaction held 32 s, and a peer repeating a forked 2xx had one made per copy
    /// (a review).
    pub fn hang_up_answer(
        &mut self,
        ep: &EndpointHandle,
        resp: &Response,
        allowed: &dyn Fn(std::net::IpAddr) -> bool,
    ) {
        let mut fork = self.clone();
        // Hung up whatever its route set (one past the cap is left out).
        let _ = fork.established(resp, allowed);
        fork.ack(ep);
        let tag = header(resp, "To").and_then(tag_of).unwrap_or_default();
        if self.note_hung_up(tag) {
            fork.bye(ep);
        }
    }

    /// Hangs up the dialog this leg's 2xx established (a BYE), remembered as
    /// [`BLeg::hang_up_answer`] remembers the forks it hangs up: a repeat of that 2xx
    /// is ACKed again, not hung up again, once the leg is handed to `abandoned`.
    pub fn hang_up(&mut self, ep: &EndpointHandle) {
        // (A 2xx without a To tag is remembered as "", as `hang_up_answer` does.)
        let tag = self
            .to
            .as_deref()
            .and_then(tag_of)
            .unwrap_or_default()
            .to_string();
        self.note_hung_up(&tag);
        self.bye(ep);
    }

    /// Remembers the dialog with To tag `tag` as hung up; false if it already was.
    fn note_hung_up(&mut self, tag: &str) -> bool {
        if self.hung_up.iter().any(|t| t == tag) {
            return false;
        }
        if self.hung_up.len() == HUNG_UP_KEPT {
            self.hung_up.remove(0);
        }
        self.hung_up.push(tag.to_string());
        true
    }

    /// Whether any 2xx to the INVITE was hung up (see [`BLeg::hang_up_answer`]).
    pub fn hung_up_any(&self) -> bool {
        !self.hung_up.is_empty()
    }

    pub fn ack(&mut self, ep: &EndpointHandle) {
        self.ack_at(ep, self.invite.cseq, None);
    }

    pub fn bye(&mut self, ep: &EndpointHandle) {
        let (spec, peer) = self.request(ep, Method::Bye);
        ep.request(spec, peer);
    }

    /// A 2xx to the INVITE with CSeq `cseq` came again: the ACK sent for it goes again
    /// ([`LastAck`]); for the first INVITE's (its ACK never has a body) also after
    /// re-INVITEs' ACKs were sent since.
    pub fn reack(&self, ep: &EndpointHandle, cseq: u32) {
        let first = (cseq == self.invite.cseq).then_some(None);
        if let Some(body) = self.last_ack.body_for(cseq).or(first) {
            send_ack(ep, self.in_dialog(ep, Method::Ack, cseq), body);
        }
    }

    /// The established dialog as a checkpoint keeps it (media fields filled in by the
    /// call).
    pub fn dialog(&self) -> Dialog {
        Dialog {
            call_id: self.invite.call_id.clone(),
            local: self.invite.from.clone(),
            remote: self.to.clone().unwrap_or_else(|| self.invite.to.clone()),
            next_cseq: self.cseq + 1,
            target: self.target(),
            routes: self.routes.clone(),
            hop: self.next.into(),
            sdp: self.last_sdp.clone().unwrap_or_default(),
            media: None,
            dtmf: None,
            formats: None,
            takes_update: self.takes_update,
        }
    }

    /// The callee's dialog of a call taken over from another node (answered).
    pub fn restore(
        ep: &EndpointHandle,
        d: &Dialog,
        destination: &str,
        allowed: &dyn Fn(std::net::IpAddr) -> bool,
    ) -> BLeg {
        let hop: Peer = d.hop.into();
        let cseq = restored_cseq(d.next_cseq);
        let invite = RequestSpec {
            method: Method::Invite,
            uri: d.target.clone(),
            transport: hop.transport,
            sent_by: local(ep, hop.transport),
            branch: new_branch(),
            from: d.local.clone(),
            to: d.remote.clone(),
            call_id: d.call_id.clone(),
            cseq,
            contact: Some(contact(ep, hop.transport)),
            routes: Vec::new(),
            max_forwards: 70,
            extra: Vec::new(),
            body: None,
        };
        BLeg {
            invite,
            peer: hop,
            destination: destination.to_string(),
            provisional: true,
            cancel_pending: false,
            cancel_sent: false,
            to: Some(d.remote.clone()),
            remote_target: Some(d.target.clone()),
            routes: d.routes.clone(),
            next: next_hop(&d.routes, &d.target, hop, allowed),
            cseq,
            last_sdp: Some(d.sdp.clone()),
            last_ack: LastAck::default(),
            takes_update: d.takes_update,
            hung_up: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node's first request to the caller (a refresh, a relayed re-INVITE) is
    /// numbered above the CSeq of its new INVITEs, so the SIP core acknowledges a 2xx
    /// to it that comes after the call ended (it leaves a 2xx with that CSeq alone:
    /// `sip::build::ack_for_stray_2xx`).
    #[test]
    fn requests_to_the_caller_are_numbered_above_new_invites() {
        let text = "INVITE sip:0501234567@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa1\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\n\
To: <sip:0501234567@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:a@127.0.0.1:5061>\r\nContent-Length: 0\r\n\r\n";
        let (msg, info) = tsunagu_sip::parse::parse(text.as_bytes()).unwrap();
        let tsunagu_sip::SipMessage::Request(invite) = msg else {
            unreachable!()
        };
        let peer = Peer {
            transport: tsunagu_sip::Transport::Udp,
            addr: "127.0.0.1:5061".parse().unwrap(),
        };
        let key = TxKey::new(&info.branch, Method::Invite);
        let mut a = ALeg::new(invite, info, peer, key, Vec::new(), &|_| true);
        assert!(a.next_cseq() > FIRST_INVITE_CSEQ);
    }

    #[test]
    fn a_reliable_provisional_is_given_up_at_64_t1() {
        let waits: Vec<u32> = (0..=6)
            .map(|a| (reliable_wait(a).as_millis() / T1.as_millis()) as u32)
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 1]);
        assert_eq!(waits.iter().sum::<u32>(), 64);
    }

    /// A restored dialog goes on 1000 past its checkpoint's CSeq, within 2^31.
    #[test]
    fn a_party_takes_update_unless_its_allow_leaves_it_out() {
        let rows: &[(&str, bool)] = &[
            ("", true),
            ("Allow: INVITE, ACK, BYE, CANCEL, UPDATE\r\n", true),
            ("Allow: INVITE,ACK\r\nAllow: update\r\n", true),
            ("Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n", false),
            ("Allow: INVITE, UPDATES\r\n", false),
        ];
        for (allow, takes) in rows {
            let text = format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
                 From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>;tag=2\r\n\
                 Call-ID: c1\r\nCSeq: 1 INVITE\r\n{allow}Content-Length: 0\r\n\r\n"
            );
            let Ok((tsunagu_sip::SipMessage::Response(r), _)) =
                tsunagu_sip::parse::parse(text.as_bytes())
            else {
                panic!("{text}");
            };
            assert_eq!(takes_update(&r), *takes, "{allow:?}");
        }
    }

    #[test]
    fn a_restored_dialog_goes_on_past_what_its_checkpoint_missed() {
        let rows = [
            (1, 1000),
            (7, 1006),
            (0, 1000),
            ((1 << 31) - 1, (1 << 31) - 1 - 1000),
            (u32::MAX, (1 << 31) - 1 - 1000),
        ];
        for (next, want) in rows {
            assert_eq!(restored_cseq(next), want, "{next}");
        }
    }

    /// A target refresh moves the dialog's requests to the new Contact when it is a
    /// trunk's address; a third party's is recorded but not sent to; no Contact, no
    /// change.
    #[test]
    fn a_target_refresh_moves_the_dialogs_requests() {
        use super::super::checkpoint::{Hop, HopTransport};
        let allowed = |ip: std::net::IpAddr| ip.to_string().starts_with("192.0.2.");
        let d = Dialog {
            call_id: "c1".into(),
            local: "<sip:0501234567@192.0.2.1>;tag=ours".into(),
            remote: "<sip:09012345678@192.0.2.9>;tag=theirs".into(),
            next_cseq: 3,
            target: "sip:caller@192.0.2.9:5060".into(),
            routes: Vec::new(),
            hop: Hop {
                transport: HopTransport::Udp,
                addr: "192.0.2.9:5060".parse().unwrap(),
            },
            sdp: "v=0\r\n".into(),
            media: None,
            dtmf: None,
            formats: None,
            takes_update: true,
        };
        let mut a = ALeg::restore(&d, &allowed).unwrap();
        // Whether the party takes UPDATE comes back with the dialog (it was assumed).
        assert!(a.takes_update());
        let no_update = Dialog {
            takes_update: false,
            ..d.clone()
        };
        let restored = ALeg::restore(&no_update, &allowed).unwrap();
        assert!(!restored.takes_update());
        assert!(
            !restored.dialog().takes_update,
            "and goes on to the next checkpoint"
        );
        let hop = |a: &ALeg| a.dialog().hop.addr.to_string();
        a.refresh_target(None, &allowed);
        assert_eq!(
            (a.dialog().target, hop(&a)),
            (d.target.clone(), "192.0.2.9:5060".into())
        );
        a.refresh_target(Some("<sip:caller@192.0.2.30:5090>;expires=0"), &allowed);
        assert_eq!(
            (a.dialog().target, hop(&a)),
            (
                "sip:caller@192.0.2.30:5090".into(),
                "192.0.2.30:5090".into()
            )
        );
        a.refresh_target(Some("<sip:victim@203.0.113.9:5060>"), &allowed);
        assert_eq!(hop(&a), "192.0.2.30:5090", "a third party is not sent to");
        assert!(!a.refresh_target(Some("<>"), &allowed), "not a SIP URI");
        assert_eq!(a.dialog().target, "sip:victim@203.0.113.9:5060");
    }

    #[test]
    fn requests_go_to_a_dialogs_next_hop_only_when_it_is_a_trunks() {
        let fallback = Peer {
            transport: Transport::Udp,
            addr: "192.0.2.10:5060".parse().unwrap(),
        };
        // Trunks: 192.0.2.0/24 only.
        let allowed = |ip: std::net::IpAddr| ip.to_string().starts_with("192.0.2.");
        let rr = |s: &str| vec![s.to_string()];
        let cases: &[(Vec<String>, &str, &str)] = &[
            // The first route wins over the target, when it is a trunk's.
            (
                rr("<sip:192.0.2.20:5070;lr>"),
                "sip:a@192.0.2.30:5080",
                "192.0.2.20:5070",
            ),
            // The remote target when there is no route.
            (vec![], "sip:a@192.0.2.30:5080", "192.0.2.30:5080"),
            // A Contact or Record-Route naming a third party: back where the dialog came from.
            (vec![], "sip:victim@203.0.113.9:5060", "192.0.2.10:5060"),
            (
                rr("<sip:10.0.0.1;lr>"),
                "sip:a@192.0.2.30:5080",
                "192.0.2.10:5060",
            ),
            (vec![], "sip:a@127.0.0.1:5060", "192.0.2.10:5060"),
            // Nothing usable at all.
            (vec![], "", "192.0.2.10:5060"),
            (vec![], "sip:a@host.example", "192.0.2.10:5060"),
        ];
        for (routes, target, want) in cases {
            let got = next_hop(routes, target, fallback, &allowed);
            assert_eq!(got.addr.to_string(), *want, "{routes:?} {target}");
            assert_eq!(got.transport, Transport::Udp);
        }
    }
}
