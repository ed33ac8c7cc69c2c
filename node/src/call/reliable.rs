//! Reliable provisional responses (RFC 3262, `100rel`) toward a caller that requires
//! them: each 18x carries `RSeq` and `Require: 100rel` and is retransmitted (T1,
//! doubling) until the caller's PRACK names it; one is unacknowledged at a time (a
//! later 18x waits, only the latest kept); and a 2xx is held back while an
//! unacknowledged 18x carried SDP (RFC 3262 3). Sans-IO: the leg sends what this
//! returns; the call actor keeps the retransmission timer.

use std::time::Duration;

/// A response of the caller's INVITE, kept to be sent (again) later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub code: u16,
    pub sdp: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// The first retransmission interval (RFC 3261 T1); six doublings later (64*T1)
/// an unacknowledged provisional makes the node give the caller up.
#[cfg(not(test))]
pub const T1: Duration = Duration::from_millis(500);
/// Unit tests with a real call give the caller up after 64*T1 = 3.2 s, not 32 s.
#[cfg(test)]
pub const T1: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct Reliable {
    next_rseq: u32,
    unacked: Option<(u32, Held)>,
    waiting: Option<Held>,
    held_final: Option<Held>,
}

/// What to send now: a response, and its RSeq if it is a reliable provisional.
pub type Out = (Option<u32>, Held);

impl Reliable {
    pub fn new(first_rseq: u32) -> Reliable {
        Reliable {
            next_rseq: first_rseq.max(1),
            unacked: None,
            waiting: None,
            held_final: None,
        }
    }

    /// An 18x to send reliably: sent now with an RSeq, or kept until the PRACK of the
    /// one outstanding.
    pub fn provisional(&mut self, r: Held) -> Option<Out> {
        if self.unacked.is_some() {
            self.waiting = Some(r);
            return None;
        }
        Some(self.send(r))
    }

    fn send(&mut self, r: Held) -> Out {
        let rseq = self.next_rseq;
        self.next_rseq = self.next_rseq.wrapping_add(1);
        self.unacked = Some((rseq, r.clone()));
        (Some(rseq), r)
    }

    /// A final response: sent now, or (a 2xx while an 18x with SDP is unacknowledged)
    /// held until its PRACK. A final response ends every wait.
    pub fn final_response(&mut self, r: Held) -> Option<Out> {
        let sdp_unacked = self.unacked.as_ref().is_some_and(|(_, u)| u.sdp.is_some());
        self.waiting = None;
        if (200..300).contains(&r.code) && sdp_unacked {
            self.held_final = Some(r);
            return None;
        }
        self.unacked = None;
        Some((None, r))
    }

    /// A PRACK for `rseq`: what to send now (the PRACK matched), or None (no such
    /// provisional outstanding: answer 481).
    pub fn prack(&mut self, rseq: u32) -> Option<Vec<Out>> {
        if self.unacked.as_ref().map(|(s, _)| *s) != Some(rseq) {
            return None;
        }
        self.unacked = None;
        let mut out = Vec::new();
        if let Some(f) = self.held_final.take() {
            out.push((None, f));
        } else if let Some(w) = self.waiting.take() {
            out.push(self.send(w));
        }
        Some(out)
    }

    /// A 2xx is held until the PRACK of an 18x with SDP (never sent to the caller).
    pub fn holds_final(&self) -> bool {
        self.held_final.is_some()
    }

    /// Nothing outstanding: no provisional awaiting its PRACK, no final response held.
    pub fn idle(&self) -> bool {
        self.unacked.is_none() && self.held_final.is_none()
    }

    /// The provisional `rseq` again, if still unacknowledged.
    pub fn retransmit(&self, rseq: u32) -> Option<Out> {
        match &self.unacked {
            Some((s, r)) if *s == rseq => Some((Some(rseq), r.clone())),
            _ => None,
        }
    }
}

/// A PRACK's `RAck: <rseq> <cseq> <method>` (RFC 3262 7.2): two numbers and a
/// token, nothing more; None if it does not read so.
pub fn parse_rack(value: &str) -> Option<(u32, u32, &str)> {
    let mut f = value.split_whitespace();
    let (rseq, cseq, method) = (f.next()?, f.next()?, f.next()?);
    (f.next().is_none() && tsunagu_sip::parse::is_token(method)).then_some(())?;
    Some((rseq.parse().ok()?, cseq.parse().ok()?, method))
}

/// The RSeq of a parsed RAck, if it is for the INVITE of CSeq `cseq`.
pub fn for_invite((rseq, c, method): (u32, u32, &str), cseq: u32) -> Option<u32> {
    (c == cseq && method.eq_ignore_ascii_case("INVITE")).then_some(rseq)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RSeq an RAck value acknowledges for the INVITE of CSeq `cseq`.
    fn rack(value: &str, cseq: u32) -> Option<u32> {
        parse_rack(value).and_then(|r| for_invite(r, cseq))
    }

    fn rack_reads(value: &str) -> bool {
        parse_rack(value).is_some()
    }

    #[test]
    fn rack_values_that_read() {
        // (value, reads, the RSeq it acknowledges for the INVITE of CSeq 1)
        let rows = [
            ("7 1 INVITE", true, Some(7)),
            ("7 2 INVITE", true, None),
            ("7 1 UPDATE", true, None),
            ("banana", false, None),
            ("", false, None),
            ("7 1", false, None),
            ("x 1 INVITE", false, None),
            ("7 1 INVITE extra", false, None),
        ];
        for (value, reads, rseq) in rows {
            assert_eq!(rack_reads(value), reads, "{value:?}");
            assert_eq!(rack(value, 1), rseq, "{value:?}");
        }
    }

    fn r(code: u16, sdp: bool) -> Held {
        Held {
            code,
            sdp: sdp.then(|| "v=0".to_string()),
            headers: Vec::new(),
        }
    }

    #[test]
    fn one_outstanding_and_the_2xx_waits_for_an_sdp_provisional() {
        let mut rel = Reliable::new(7);
        assert_eq!(
            rel.provisional(r(180, false)),
            Some((Some(7), r(180, false)))
        );
        assert_eq!(
            rel.provisional(r(183, true)),
            None,
            "waits for the PRACK of 7"
        );
        assert_eq!(rel.retransmit(7), Some((Some(7), r(180, false))));
        assert_eq!(rel.prack(6), None, "not outstanding");
        assert_eq!(
            rel.prack(7),
            Some(vec![(Some(8), r(183, true))]),
            "the waiting one goes"
        );
        assert_eq!(rel.retransmit(7), None);
        // A 2xx while 8 (with SDP) is unacknowledged is held until its PRACK.
        assert_eq!(rel.final_response(r(200, true)), None);
        assert!(rel.holds_final() && !rel.idle());
        assert_eq!(rel.prack(8), Some(vec![(None, r(200, true))]));
        assert!(!rel.holds_final() && rel.idle());
        assert_eq!(rel.prack(8), None);
    }

    #[test]
    fn finals_that_need_not_wait() {
        let mut rel = Reliable::new(1);
        rel.provisional(r(180, false));
        assert_eq!(
            rel.final_response(r(200, true)),
            Some((None, r(200, true))),
            "no SDP unacked"
        );
        let mut rel = Reliable::new(1);
        rel.provisional(r(183, true));
        assert_eq!(
            rel.final_response(r(486, false)),
            Some((None, r(486, false))),
            "failures go at once"
        );
        assert_eq!(rel.retransmit(1), None);
    }

    #[test]
    fn rack_values() {
        let rows = [
            ("7 1 INVITE", 1, Some(7)),
            ("  7   1   invite ", 1, Some(7)),
            ("7 2 INVITE", 1, None),
            ("7 1 UPDATE", 1, None),
            ("x 1 INVITE", 1, None),
            ("7", 1, None),
        ];
        for (value, cseq, want) in rows {
            assert_eq!(rack(value, cseq), want, "{value:?}");
        }
    }
}
