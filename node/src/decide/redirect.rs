//! 3xx from a trunk (RFC 3261 8.1.3.4): whether to follow it, and where. A trunk set to
//! `redirects = "follow"` has the first Contact that names a phone number tried next,
//! as the same destination (its ring time, the route of the new number), at most
//! [`MAX_REDIRECTS`] times per call; otherwise a 3xx is a failure like any other.

use super::caller::normalize;
use tsunagu_sip::parse::{uri_of, uri_user};

/// Redirects followed per call at most (a loop between two trunks ends here).
pub const MAX_REDIRECTS: u8 = 3;

/// The number to try next for a 3xx whose Contact values are `contacts`, if any.
pub fn redirect_target(contacts: &[&str], followed: u8) -> Option<String> {
    if followed >= MAX_REDIRECTS {
        return None;
    }
    contacts.iter().find_map(|c| {
        let user = uri_user(uri_of(c))?;
        let number = normalize(user);
        let digits = number.len() >= 4 && number.chars().all(|c| c.is_ascii_digit());
        digits.then_some(number)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let cases: &[(&[&str], u8, Option<&str>)] = &[
            (&["<sip:0399990000@10.0.0.1:5060>"], 0, Some("0399990000")),
            (
                &["<sip:+81399990000@10.0.0.1>;q=0.5"],
                0,
                Some("0399990000"),
            ),
            (&["<tel:0399990000>"], 2, Some("0399990000")),
            (
                &["<sip:voicemail@10.0.0.1>", "<sip:0399990000@h>"],
                0,
                Some("0399990000"),
            ),
            (&["<sip:0399990000@h>"], MAX_REDIRECTS, None),
            (&["<sip:10.0.0.1>"], 0, None),
            (&[], 0, None),
        ];
        for (contacts, followed, want) in cases {
            assert_eq!(
                redirect_target(contacts, *followed).as_deref(),
                *want,
                "{contacts:?}"
            );
        }
    }
}
