//! Caller identification: normalising dialled and calling numbers to national form and
//! classifying the caller's line (`caller_kind`) by the Japanese numbering plan.

use tsunagu_store::CallerKind;

/// National form of a number: `+81 3-1234-5678` → `0312345678`. Visual separators are
/// dropped; anything else is kept as is (it will not match a tracking number).
pub fn normalize(raw: &str) -> String {
    let digits: String = raw
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '(' | ')' | '.'))
        .collect();
    if let Some(rest) = digits.strip_prefix("+81") {
        format!("0{rest}")
    } else if let Some(rest) = digits
        .strip_prefix("81")
        .filter(|r| r.len() >= 9 && digits.len() >= 11 && !r.starts_with('0'))
    {
        format!("0{rest}")
    } else {
        digits
    }
}

/// The longest caller number kept (national numbers have at most 11 digits; E.164 15).
const MAX_NUMBER: usize = 32;

/// A caller's number as it may be logged and written into the forwarded leg's From and
/// P-Asserted-Identity: characters a SIP user part may hold unescaped and that cannot
/// break a header (letters, digits, `+ - . _ ~ * !`) are kept; anything else — CR, LF,
/// `<`, `>`, quotes, commas, semicolons, spaces, `%`, non-ASCII — is percent-escaped
/// (RFC 3261 25.1), and the number is cut at [`MAX_NUMBER`] characters. The caller
/// chooses its From: this is the one place it is made safe.
pub fn safe_number(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_NUMBER));
    for c in raw.chars().take(MAX_NUMBER) {
        if c.is_ascii_alphanumeric() || "+-._~*!".contains(c) {
            out.push(c);
        } else {
            let mut bytes = [0u8; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// What the signalling says about the caller, besides the number.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallerSignals {
    /// Privacy: id (or header), or an anonymous From.
    pub withheld: bool,
    /// `cpc=payphone` on the calling party's URI.
    pub payphone: bool,
}

pub fn classify(number: &str, signals: CallerSignals) -> CallerKind {
    if signals.withheld || number.is_empty() || number.eq_ignore_ascii_case("anonymous") {
        return CallerKind::Anonymous;
    }
    if signals.payphone {
        return CallerKind::Public;
    }
    if !number.chars().all(|c| c.is_ascii_digit()) {
        return CallerKind::Unknown;
    }
    let len = number.len();
    let starts = |p: &str| number.starts_with(p);
    if (starts("0120") && len == 10) || (starts("0800") && len == 11) {
        CallerKind::Freephone
    } else if (starts("070") || starts("080") || starts("090")) && len == 11 {
        CallerKind::Mobile
    } else if starts("050") && len == 11 {
        CallerKind::Ip
    } else if [
        "0570", "0180", "0990", "020", "060", "050", "070", "080", "090",
    ]
    .iter()
    .any(|p| starts(p))
    {
        // Non-geographic ranges, and mobile/IP prefixes of the wrong length.
        CallerKind::Unknown
    } else if starts("0") && !starts("00") && len == 10 {
        CallerKind::Fixed
    } else {
        CallerKind::Unknown
    }
}

/// Who is calling, as the call log and the forwarded leg see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The number logged: national form, or `anonymous` when withheld.
    pub number: String,
    pub kind: CallerKind,
    /// The caller's real number when known (also when withheld from the callee).
    pub identity: Option<String>,
    pub withheld: bool,
}

/// The Privacy header the forwarded INVITE carries: the caller's values, and `id`
/// besides whenever it asserts the identity of a caller who withheld it (by `user` or
/// `header` too), so that the trusted trunk strips the P-Asserted-Identity before the
/// callee (RFC 3325 section 7) rather than show the number.
pub fn privacy_for_callee(
    caller_privacy: Option<&str>,
    withheld: bool,
    asserting: bool,
) -> Option<String> {
    let tokens: Vec<&str> = caller_privacy
        .map(|p| {
            p.split(';')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let has_id = tokens.iter().any(|t| t.eq_ignore_ascii_case("id"));
    match (withheld && asserting && !has_id, tokens.is_empty()) {
        (true, true) => Some("id".into()),
        (true, false) => Some(format!("{};id", tokens.join(";"))),
        (false, _) => caller_privacy.map(str::to_string),
    }
}

/// Identifies the caller from the From, P-Asserted-Identity and Privacy header values.
/// P-Asserted-Identity is believed only from a trusted trunk (RFC 3325): from anyone
/// else it is ignored and From is used.
pub fn identify(from: &str, pai: Option<&str>, privacy: Option<&str>, trusted: bool) -> Caller {
    use tsunagu_sip::parse::{uri_of, uri_user};
    let asserted = pai
        .filter(|_| trusted)
        .map(uri_of)
        .filter(|u| uri_user(u).is_some());
    let uri = asserted.unwrap_or_else(|| uri_of(from));
    let user = uri_user(uri).unwrap_or_default();
    // Privacy values are tokens: case-insensitive (RFC 3261 section 7.3.1).
    let privacy_withheld = privacy.is_some_and(|p| {
        p.split(';').any(|t| {
            ["id", "user", "header"]
                .iter()
                .any(|w| t.trim().eq_ignore_ascii_case(w))
        })
    });
    let payphone = uri
        .split([';', '@', '?'])
        .any(|p| p.eq_ignore_ascii_case("cpc=payphone"));
    let number = safe_number(&normalize(user));
    let kind = classify(
        &number,
        CallerSignals {
            withheld: privacy_withheld,
            payphone,
        },
    );
    let known = !number.is_empty() && !number.eq_ignore_ascii_case("anonymous");
    Caller {
        number: if kind == CallerKind::Anonymous {
            "anonymous".to_string()
        } else {
            number.clone()
        },
        kind,
        identity: known.then_some(number),
        withheld: kind == CallerKind::Anonymous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (caller's Privacy, withheld, asserting) → the forwarded INVITE's Privacy.
    #[test]
    fn a_withheld_callers_asserted_identity_is_marked_private() {
        let rows: &[(Option<&str>, bool, bool, Option<&str>)] = &[
            (None, false, true, None),
            (None, false, false, None),
            (Some("id"), true, true, Some("id")),
            (Some("ID"), true, true, Some("ID")),
            (Some("user"), true, true, Some("user;id")),
            (
                Some("header; critical"),
                true,
                true,
                Some("header;critical;id"),
            ),
            // Not asserting: nothing to hide beyond what the caller asked.
            (Some("user"), true, false, Some("user")),
            // Withheld without a Privacy header (an anonymous From): id alone.
            (None, true, true, Some("id")),
            (Some("none"), false, true, Some("none")),
        ];
        for (caller, withheld, asserting, want) in rows {
            assert_eq!(
                privacy_for_callee(*caller, *withheld, *asserting).as_deref(),
                *want,
                "{caller:?} {withheld} {asserting}"
            );
        }
    }

    #[test]
    fn identity_from_trusted_assertion_or_from() {
        let from = "<sip:0312345678@192.0.2.1>;tag=a";
        let pai = Some("<sip:09011112222@carrier.example>");
        let cases: &[(
            &str,
            Option<&str>,
            Option<&str>,
            bool,
            &str,
            CallerKind,
            Option<&str>,
        )] = &[
            (
                from,
                None,
                None,
                false,
                "0312345678",
                CallerKind::Fixed,
                Some("0312345678"),
            ),
            (
                from,
                pai,
                None,
                true,
                "09011112222",
                CallerKind::Mobile,
                Some("09011112222"),
            ),
            (
                from,
                pai,
                None,
                false,
                "0312345678",
                CallerKind::Fixed,
                Some("0312345678"),
            ), // untrusted: PAI ignored
            (
                from,
                pai,
                Some("id"),
                true,
                "anonymous",
                CallerKind::Anonymous,
                Some("09011112222"),
            ),
            // Privacy values are case-insensitive tokens.
            (
                from,
                pai,
                Some("ID"),
                true,
                "anonymous",
                CallerKind::Anonymous,
                Some("09011112222"),
            ),
            (
                from,
                None,
                Some("User; critical"),
                false,
                "anonymous",
                CallerKind::Anonymous,
                Some("0312345678"),
            ),
            (
                "\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag=x",
                pai,
                Some("id"),
                true,
                "anonymous",
                CallerKind::Anonymous,
                Some("09011112222"),
            ),
            (
                "\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag=x",
                None,
                None,
                false,
                "anonymous",
                CallerKind::Anonymous,
                None,
            ),
            (
                "<sip:+81312345678;cpc=payphone@h>;tag=a",
                None,
                None,
                false,
                "0312345678",
                CallerKind::Public,
                Some("0312345678"),
            ),
            (
                from,
                Some("<tel:+819011112222>"),
                None,
                true,
                "09011112222",
                CallerKind::Mobile,
                Some("09011112222"),
            ),
            (
                from,
                Some("garbage"),
                None,
                true,
                "0312345678",
                CallerKind::Fixed,
                Some("0312345678"),
            ),
        ];
        for (from, pai, privacy, trusted, number, kind, identity) in cases {
            let c = identify(from, *pai, *privacy, *trusted);
            assert_eq!(
                (c.number.as_str(), c.kind, c.identity.as_deref()),
                (*number, *kind, *identity),
                "{from} {pai:?} {privacy:?} trusted={trusted}"
            );
        }
    }

    #[test]
    fn hostile_caller_numbers_are_made_safe_for_headers() {
        let cases = [
            ("09012345678", "09012345678"),
            ("+81-3-1234", "+81-3-1234"),
            ("a<b>c", "a%3Cb%3Ec"),
            ("\"x\",y", "%22x%22%2Cy"),
            ("1;tag=2?x", "1%3Btag%3D2%3Fx"),
            ("50%", "50%25"),
            ("a\r\nVia: x", "a%0D%0AVia%3A%20x"),
            ("電話", "%E9%9B%BB%E8%A9%B1"),
            (&"9".repeat(100), &"9".repeat(32)),
        ];
        for (raw, want) in cases {
            assert_eq!(safe_number(raw), want, "{raw:?}");
        }
        let c = identify("<sip:0901234\"5678,x@192.0.2.1>;tag=a", None, None, false);
        assert_eq!(c.number, "0901234%225678%2Cx");
        assert_eq!(c.kind, CallerKind::Unknown);
    }

    #[test]
    fn normalisation() {
        let cases = [
            ("+81312345678", "0312345678"),
            ("+81-90-1234-5678", "09012345678"),
            ("81312345678", "0312345678"),
            ("03-1234-5678", "0312345678"),
            ("0501234567", "0501234567"),
            ("anonymous", "anonymous"),
            ("110", "110"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), want, "{raw}");
        }
    }

    #[test]
    fn caller_kinds() {
        use CallerKind::*;
        let none = CallerSignals::default();
        let cases: &[(&str, CallerSignals, CallerKind)] = &[
            ("09012345678", none, Mobile),
            ("08012345678", none, Mobile),
            ("07012345678", none, Mobile),
            ("05012345678", none, Ip),
            ("0312345678", none, Fixed),
            ("0667891234", none, Fixed),
            ("0120123456", none, Freephone),
            ("08001234567", none, Freephone),
            ("0570123456", none, Unknown),
            ("0901234567", none, Unknown), // 10 digits: not a mobile number
            ("", none, Anonymous),
            ("anonymous", none, Anonymous),
            (
                "09012345678",
                CallerSignals {
                    withheld: true,
                    payphone: false,
                },
                Anonymous,
            ),
            (
                "0312345678",
                CallerSignals {
                    withheld: false,
                    payphone: true,
                },
                Public,
            ),
            ("abc", none, Unknown),
            ("0012345678", none, Unknown),
        ];
        for (number, signals, want) in cases {
            assert_eq!(classify(number, *signals), *want, "{number} {signals:?}");
        }
    }
}
