//! Notice templates: `{name}` placeholders (letters, digits, `_`, `.`) filled from a
//! map; unknown names are left as written (so a typo shows in the message instead of
//! vanishing), `{{` is a `{`, and any other brace is text (JSON bodies stay intact).

use std::collections::BTreeMap;

pub fn render(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        if let Some(stripped) = after.strip_prefix('{') {
            out.push('{');
            rest = stripped;
            continue;
        }
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
        match after.find(|c: char| !is_name(c)) {
            Some(close) if close > 0 && after[close..].starts_with('}') => {
                let name = &after[..close];
                match values.get(name) {
                    Some(v) => out.push_str(v),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `s` as the inside of a JSON string (no quotes).
pub fn json_escaped(s: &str) -> String {
    let quoted = serde_json::Value::String(s.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        let values = BTreeMap::from([("caller", "0901".to_string()), ("n", "5".into())]);
        let cases = [
            ("from {caller}", "from 0901"),
            ("{caller}{n}", "09015"),
            ("{unknown} stays", "{unknown} stays"),
            ("{{caller}", "{caller}"),
            ("open { brace", "open { brace"),
            ("tail {caller", "tail {caller"),
            (r#"{"to":"{caller}","n":{n}}"#, r#"{"to":"0901","n":5}"#),
            ("{ caller }", "{ caller }"),
            ("日本語 {caller} です", "日本語 0901 です"),
            ("", ""),
        ];
        for (t, want) in cases {
            assert_eq!(render(t, &values), want, "{t}");
        }
    }

    #[test]
    fn json_escaping() {
        assert_eq!(json_escaped("a\"b\nc"), "a\\\"b\\nc");
        assert_eq!(json_escaped("電話"), "電話");
    }
}
