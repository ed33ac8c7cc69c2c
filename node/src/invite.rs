//! The caller's INVITE, parsed once into the typed view the node decides on
//! ([`InviteView`]): admission refuses from it ([`InviteView::refusal`]: hop count 483,
//! route set 400, option tags 420, session interval 422, SDP offer 488) and the call
//! takes it over (who is calling, the route set, the offer, the session timer, reliable
//! provisionals), so no decision searches the headers again.

use crate::decide::caller::{identify, normalize, Caller};
use crate::decide::session_timer;
use tsunagu_sip::build::route_set;
use tsunagu_sip::parse::{has_option_tag, header, header_values, request_user, sdp_body};
use tsunagu_sip::Request;

/// What the node reads of a caller's INVITE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InviteView {
    /// Max-Forwards as received; `None` when absent or not a number.
    pub max_forwards: Option<u32>,
    /// The Record-Route entries in order: the caller's leg's route set, which the
    /// call takes over (empty after). Empty too when there are more than
    /// [`MAX_ROUTE_SET`](tsunagu_sip::build::MAX_ROUTE_SET) (not copied:
    /// `routes_past_cap`).
    pub routes: Vec<String>,
    /// The INVITE named more Record-Route entries than the cap (refused 400).
    pub routes_past_cap: bool,
    /// The dialled number (the Request-URI's user), normalised; empty without one.
    pub dialled: String,
    /// Required option tags we do not support, comma-separated ([`SUPPORTED`]).
    pub unsupported: Option<String>,
    /// `Require: 100rel`: the caller wants reliable provisionals (RFC 3262).
    pub requires_100rel: bool,
    /// `Supported: timer` (RFC 4028).
    pub supports_timer: bool,
    /// The Session-Expires header as received.
    pub session_expires: Option<String>,
    /// The SDP offer, if the INVITE carries one.
    pub offer: Option<String>,
    /// The From, P-Asserted-Identity and Privacy headers (who is calling).
    pub from: String,
    pub asserted_identity: Option<String>,
    pub privacy: Option<String>,
}

/// Why admission refuses an INVITE for what it asks, before looking anything up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 483: Max-Forwards reached 0.
    TooManyHops,
    /// 400: more Record-Route entries than
    /// [`MAX_ROUTE_SET`](tsunagu_sip::build::MAX_ROUTE_SET).
    RouteSetTooLong,
    /// 420 with Unsupported listing these tags.
    Extensions(String),
    /// 422 with Min-SE: a session interval below the node's minimum.
    SessionTooSmall,
    /// 488: no SDP offer (the node does not do late offers).
    NoOffer,
    /// 488: an SDP offer the node cannot anchor (no audio stream with a valid, non-zero
    /// port, or not SDP at all): forwarded, it would give the callee no offer and the
    /// caller no media.
    UnusableOffer,
}

impl Refusal {
    /// The status code and the metric's reason.
    pub fn code_and_reason(&self) -> (u16, &'static str) {
        match self {
            Refusal::TooManyHops => (483, "too_many_hops"),
            Refusal::RouteSetTooLong => (400, "route_set_too_long"),
            Refusal::Extensions(_) => (420, "extension_required"),
            Refusal::SessionTooSmall => (422, "session_interval_too_small"),
            Refusal::NoOffer => (488, "no_sdp_offer"),
            Refusal::UnusableOffer => (488, "unusable_sdp_offer"),
        }
    }
}

/// Option tags (RFC 3261 20.32) a caller may require of us: session timers (RFC 4028,
/// see `decide::session_timer`) and reliable provisionals (RFC 3262, `call::reliable`:
/// sent reliably to callers that require them; one that only supports them gets
/// ordinary 18x). Anything else (e.g. `precondition`) is refused 420.
const SUPPORTED: [&str; 2] = ["timer", "100rel"];

impl InviteView {
    /// Reads `req` once.
    pub fn of(req: &Request) -> InviteView {
        let recorded = route_set(req);
        InviteView {
            max_forwards: header(req, "Max-Forwards").and_then(|m| m.trim().parse().ok()),
            routes_past_cap: recorded.is_none(),
            routes: recorded.unwrap_or_default(),
            dialled: request_user(req).map(|u| normalize(&u)).unwrap_or_default(),
            unsupported: unsupported_requirements(&header_values(req, "Require")),
            requires_100rel: has_option_tag(req, "Require", "100rel"),
            supports_timer: has_option_tag(req, "Supported", "timer"),
            session_expires: header(req, "Session-Expires").map(str::to_string),
            offer: sdp_body(req, &req.body),
            from: header(req, "From").unwrap_or_default().to_string(),
            asserted_identity: header(req, "P-Asserted-Identity").map(str::to_string),
            privacy: header(req, "Privacy").map(str::to_string),
        }
    }

    /// The first reason to refuse the INVITE for what it asks, in this order: hop
    /// count, route set, option tags, session interval (below `min_se`), SDP offer.
    pub fn refusal(&self, min_se: u32) -> Option<Refusal> {
        if self.max_forwards == Some(0) {
            return Some(Refusal::TooManyHops);
        }
        if self.routes_past_cap {
            return Some(Refusal::RouteSetTooLong);
        }
        if let Some(tags) = &self.unsupported {
            return Some(Refusal::Extensions(tags.clone()));
        }
        if session_timer::too_small(self.session_expires.as_deref(), min_se) {
            return Some(Refusal::SessionTooSmall);
        }
        match self.offer.as_deref().map(tsunagu_media::sdp::audio_port) {
            None => Some(Refusal::NoOffer),
            Some(None | Some(0)) => Some(Refusal::UnusableOffer),
            Some(Some(_)) => None,
        }
    }

    /// Who is calling: P-Asserted-Identity is believed only from a trusted trunk.
    pub fn caller(&self, trusted: bool) -> Caller {
        identify(
            &self.from,
            self.asserted_identity.as_deref(),
            self.privacy.as_deref(),
            trusted,
        )
    }

    /// The Max-Forwards of the INVITE the node sends on: one less than received (70
    /// when the caller sent none or nonsense), never below 0.
    pub fn forwards(&self) -> u8 {
        self.max_forwards
            .map_or(70, |m| u8::try_from(m).unwrap_or(u8::MAX))
            .saturating_sub(1)
    }
}

/// The required option tags we do not support, comma-separated, if any.
pub fn unsupported_requirements(require: &[&str]) -> Option<String> {
    let missing: Vec<&str> = require
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty() && !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(extra: &str, body: &str) -> InviteView {
        let content = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".to_string()
        };
        let text = format!(
            "INVITE sip:+81501234567@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1\r\n\
From: <sip:0901111@127.0.0.1>;tag=a\r\nTo: <sip:0501234567@127.0.0.1>\r\nCall-ID: v@x\r\n\
CSeq: 1 INVITE\r\n{extra}{content}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (msg, _) = tsunagu_sip::parse::parse(text.as_bytes()).expect("parses");
        match msg {
            tsunagu_sip::SipMessage::Request(r) => InviteView::of(&r),
            _ => panic!("not a request"),
        }
    }

    const SDP: &str = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n";

    #[test]
    fn reads_each_header_once_into_the_view() {
        let v = view(
            "Max-Forwards: 12\r\nRequire: 100rel, precondition\r\nSupported: Timer\r\n\
Session-Expires: 1800;refresher=uac\r\nPrivacy: id\r\nP-Asserted-Identity: <sip:0312345678@x>\r\n",
            SDP,
        );
        assert_eq!(v.max_forwards, Some(12));
        assert_eq!(v.forwards(), 11);
        assert_eq!(v.dialled, "0501234567", "+81 normalised");
        assert_eq!(v.unsupported.as_deref(), Some("precondition"));
        assert!(v.requires_100rel && v.supports_timer);
        assert_eq!(v.session_expires.as_deref(), Some("1800;refresher=uac"));
        assert_eq!(v.offer.as_deref(), Some(SDP));
        assert_eq!(v.privacy.as_deref(), Some("id"));
        assert!(v.asserted_identity.is_some());
        let bare = view("", "");
        assert_eq!((bare.max_forwards, bare.forwards()), (None, 69));
        assert!(!bare.requires_100rel && !bare.supports_timer && bare.offer.is_none());
    }

    #[test]
    fn refusals_in_order() {
        // Each row: extra headers, body → the refusal with a minimum session of 90 s.
        let rows: &[(&str, &str, Option<Refusal>)] = &[
            ("", SDP, None),
            ("Max-Forwards: 70\r\nSupported: timer\r\n", SDP, None),
            ("Max-Forwards: 0\r\n", SDP, Some(Refusal::TooManyHops)),
            // The hop count first, then the rest.
            (
                "Max-Forwards: 0\r\nRequire: precondition\r\n",
                "",
                Some(Refusal::TooManyHops),
            ),
            ("Max-Forwards: nonsense\r\n", SDP, None),
            ("Require: timer, 100rel\r\n", SDP, None),
            (
                "Require: precondition, sec-agree\r\n",
                SDP,
                Some(Refusal::Extensions("precondition, sec-agree".into())),
            ),
            (
                "Require: precondition\r\nSession-Expires: 30\r\n",
                "",
                Some(Refusal::Extensions("precondition".into())),
            ),
            (
                "Session-Expires: 89\r\n",
                SDP,
                Some(Refusal::SessionTooSmall),
            ),
            ("Session-Expires: 90\r\n", SDP, None),
            ("Session-Expires: soon\r\n", SDP, None),
            (
                "Session-Expires: 30\r\n",
                "",
                Some(Refusal::SessionTooSmall),
            ),
            ("", "", Some(Refusal::NoOffer)),
            // An offer the node cannot anchor: refused, not forwarded without one.
            ("", "v=0\r\n", Some(Refusal::UnusableOffer)),
            (
                "",
                "v=0\r\nm=audio 65536 RTP/AVP 0\r\n",
                Some(Refusal::UnusableOffer),
            ),
            (
                "",
                "v=0\r\nm=video 4000 RTP/AVP 96\r\n",
                Some(Refusal::UnusableOffer),
            ),
            (
                "",
                "v=0\r\nm=audio 0 RTP/AVP 0\r\n",
                Some(Refusal::UnusableOffer),
            ),
            ("", "\u{fffd} garbage", Some(Refusal::UnusableOffer)),
        ];
        for (extra, body, want) in rows {
            assert_eq!(&view(extra, body).refusal(90), want, "{extra:?} {body:?}");
        }
    }

    /// A route set is kept up to `MAX_ROUTE_SET` entries, in order and over
    /// however many lines; one more and the INVITE is refused, after the hop count
    /// and before the rest.
    #[test]
    fn a_route_set_past_the_cap_is_refused() {
        use tsunagu_sip::build::MAX_ROUTE_SET;
        let entries = |n: usize| {
            (0..n)
                .map(|i| format!("<sip:p{i}.example;lr>"))
                .collect::<Vec<_>>()
        };
        let full = entries(MAX_ROUTE_SET);
        let (first, rest) = full.split_at(2);
        let split = format!(
            "Record-Route: {}\r\nRecord-Route: {}\r\n",
            first.join(", "),
            rest.join(",")
        );
        let kept = view(&split, SDP);
        assert_eq!((&kept.routes, kept.routes_past_cap), (&full, false));
        assert_eq!(kept.refusal(90), None);
        let over = format!("Record-Route: {}\r\n", entries(MAX_ROUTE_SET + 1).join(","));
        let refused = view(&over, SDP);
        assert_eq!((refused.routes.len(), refused.routes_past_cap), (0, true));
        assert_eq!(refused.refusal(90), Some(Refusal::RouteSetTooLong));
        let one_byte = format!("Record-Route: {}\r\n", vec!["a"; 8000].join(","));
        assert_eq!(
            view(&one_byte, SDP).refusal(90),
            Some(Refusal::RouteSetTooLong)
        );
        let hops = format!("Max-Forwards: 0\r\n{over}");
        assert_eq!(view(&hops, "").refusal(90), Some(Refusal::TooManyHops));
        assert_eq!(view(&over, "").refusal(90), Some(Refusal::RouteSetTooLong));
        assert_eq!(view("", SDP).routes, Vec::<String>::new());
        // A view made without an INVITE (a call taken over) refuses nothing for it.
        assert_eq!(InviteView::default().refusal(90), Some(Refusal::NoOffer));
    }

    #[test]
    fn required_extensions() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (&[], None),
            (&["timer"], None),
            (&["Timer"], None),
            (&["100rel"], None),
            (&["timer", "100rel", "precondition"], Some("precondition")),
            (
                &["precondition", "sec-agree"],
                Some("precondition, sec-agree"),
            ),
            (&[""], None),
        ];
        for (require, want) in cases {
            assert_eq!(
                unsupported_requirements(require).as_deref(),
                *want,
                "{require:?}"
            );
        }
    }
}
