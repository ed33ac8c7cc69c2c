//! What a failed forwarding attempt means: try the next trunk, try the next
//! destination, or give up with a result and the status to send the caller.
//!
//! Per SPEC: the next trunk of the route is tried on 408, 5xx and timeouts (a trunk
//! problem); the next destination on busy, no answer, rejection or failure (an
//! advertiser-side problem, sequential forwarding). A 6xx too: RFC 3261 16.7 stops a
//! proxy forking one request at a global failure, but each destination here is a new
//! call of the node's to another phone (the shop's line, then the owner's mobile), and
//! one phone's decline is not the advertiser's. A callee that cannot take the session
//! (488, 606) is answered 488 upstream, so the caller's carrier can offer another; one
//! refusing the caller's session interval (422) is answered 422, so the caller can
//! ask again with the callee's Min-SE (RFC 4028 7.3: the node passes the caller's
//! Session-Expires on and may not answer with a longer one, 9).

use tsunagu_store::CallResult;

/// Why a forwarding attempt ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A final response from the far end.
    Status(u16),
    /// No final response within the transaction timeout (Timer B).
    Timeout,
    /// The destination's ring time ran out and we cancelled it.
    RingTimeout,
    /// The callee answered (2xx) without an SDP answer the node could anchor; it was
    /// hung up.
    UnusableAnswer,
}

impl Failure {
    /// The status the attempt ended with: the far end's, 408 for no response, 487
    /// for our CANCEL at the ring timeout, the 200 of an answer without SDP.
    pub fn code(self) -> u16 {
        match self {
            Failure::Status(c) => c,
            Failure::Timeout => 408,
            Failure::RingTimeout => 487,
            Failure::UnusableAnswer => 200,
        }
    }

    /// The attempt's outcome as the log names it (the call result it alone would be).
    pub fn outcome(self) -> &'static str {
        classify(self).0.as_str()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    NextTrunk,
    NextDestination,
    GiveUp { result: CallResult, upstream: u16 },
}

/// The result and upstream status a failure maps to if nothing else is tried.
pub fn classify(f: Failure) -> (CallResult, u16) {
    match f {
        Failure::RingTimeout | Failure::Timeout => (CallResult::NoAnswer, 480),
        Failure::UnusableAnswer => (CallResult::Failed, 502),
        Failure::Status(code) => match code {
            486 | 600 => (CallResult::Busy, 486),
            408 | 480 => (CallResult::NoAnswer, 480),
            403 | 603 => (CallResult::Rejected, 603),
            404 | 410 | 484 | 604 => (CallResult::Failed, 404),
            488 | 606 => (CallResult::Failed, 488),
            422 => (CallResult::Failed, 422),
            _ => (CallResult::Failed, 502),
        },
    }
}

fn is_trunk_problem(f: Failure) -> bool {
    matches!(
        f,
        Failure::Timeout | Failure::Status(408) | Failure::Status(500..=599)
    )
}

pub fn next_step(f: Failure, has_next_trunk: bool, has_next_destination: bool) -> Step {
    if is_trunk_problem(f) && has_next_trunk {
        Step::NextTrunk
    } else if has_next_destination {
        Step::NextDestination
    } else {
        let (result, upstream) = classify(f);
        Step::GiveUp { result, upstream }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CallResult::*;
    use Failure::*;

    #[test]
    fn not_acceptable_goes_upstream_as_488() {
        assert_eq!(classify(Status(422)), (Failed, 422));
        for code in [488, 606] {
            assert_eq!(classify(Status(code)), (Failed, 488), "{code}");
        }
        assert_eq!(classify(Status(415)), (Failed, 502));
    }

    #[test]
    fn steps() {
        let cases: &[(Failure, bool, bool, Step)] = &[
            (Status(503), true, true, Step::NextTrunk),
            (Status(408), true, false, Step::NextTrunk),
            (Timeout, true, false, Step::NextTrunk),
            (Status(486), true, true, Step::NextDestination),
            (RingTimeout, true, true, Step::NextDestination),
            // A callee without an SDP answer: its destination, not its trunk.
            (UnusableAnswer, true, true, Step::NextDestination),
            (
                UnusableAnswer,
                true,
                false,
                Step::GiveUp {
                    result: Failed,
                    upstream: 502,
                },
            ),
            (Status(503), false, true, Step::NextDestination),
            (
                Status(486),
                true,
                false,
                Step::GiveUp {
                    result: Busy,
                    upstream: 486,
                },
            ),
            (
                Status(600),
                false,
                false,
                Step::GiveUp {
                    result: Busy,
                    upstream: 486,
                },
            ),
            (
                RingTimeout,
                false,
                false,
                Step::GiveUp {
                    result: NoAnswer,
                    upstream: 480,
                },
            ),
            (
                Timeout,
                false,
                false,
                Step::GiveUp {
                    result: NoAnswer,
                    upstream: 480,
                },
            ),
            (
                Status(480),
                false,
                false,
                Step::GiveUp {
                    result: NoAnswer,
                    upstream: 480,
                },
            ),
            (
                Status(603),
                false,
                false,
                Step::GiveUp {
                    result: Rejected,
                    upstream: 603,
                },
            ),
            (
                Status(404),
                false,
                false,
                Step::GiveUp {
                    result: Failed,
                    upstream: 404,
                },
            ),
            (
                Status(500),
                false,
                false,
                Step::GiveUp {
                    result: Failed,
                    upstream: 502,
                },
            ),
            // Not acceptable: not a trunk problem, and told upstream as such.
            (
                Status(488),
                true,
                false,
                Step::GiveUp {
                    result: Failed,
                    upstream: 488,
                },
            ),
        ];
        for (f, t, d, want) in cases {
            assert_eq!(
                next_step(*f, *t, *d),
                *want,
                "{f:?} next_trunk={t} next_dest={d}"
            );
        }
    }
}
