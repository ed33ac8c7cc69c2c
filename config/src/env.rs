//! Environment overrides: `TSUNAGU_API__LISTEN=127.0.0.1:9090` sets `api.listen`.
//! Path segments are separated by a double underscore and lower-cased; a numeric
//! segment indexes an array (`TSUNAGU_TRUNKS__0__MAX_CPS=50`). Variables without a
//! double underscore (such as `TSUNAGU_SCYLLA_NODES`) are not configuration and are
//! ignored here.
//!
//! The text of a variable says nothing of the type its key wants: `12345678` may be a
//! port or an admin token. So an override is first read as a TOML value when it parses
//! as one (numbers, booleans, arrays), otherwise as a string; and when the typed
//! configuration then refuses it with an error AT that override's key path, it is put
//! back as the plain string and deserialisation runs again ([`Overrides::retry_as_string`]).
//! A string field therefore always gets the text as written.
//!
//! Errors about an overridden key never repeat its value (it may be a secret): see
//! [`Overrides::redact`].

use crate::validate::ConfigError;
use toml::{Table, Value};

const PREFIX: &str = "TSUNAGU_";

/// One override that was applied.
#[derive(Debug, Clone)]
struct Applied {
    var: String,
    path: Vec<String>,
    /// The key path as serde_path_to_error prints it: `trunks[0].max_cps`.
    serde_path: String,
    raw: String,
    /// Read as a TOML value that is not a string (may be retried as a string once).
    typed: bool,
}

/// The overrides applied to a configuration table.
#[derive(Debug, Clone, Default)]
pub struct Overrides(Vec<Applied>);

impl Overrides {
    /// The override that set `error_path` or a value inside it.
    fn covering(&self, error_path: &str) -> Option<usize> {
        self.0.iter().position(|o| {
            error_path
                .strip_prefix(o.serde_path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    /// After deserialisation failed at `error_path`: if a typed override set exactly
    /// that key, writes its raw text back as a string and returns true (try again).
    /// Each override is retried once, so the retry loop ends.
    pub fn retry_as_string(&mut self, table: &mut Table, error_path: &str) -> bool {
        let Some(i) = self
            .0
            .iter()
            .position(|o| o.typed && o.serde_path == error_path)
        else {
            return false;
        };
        let o = &mut self.0[i];
        o.typed = false;
        set_path(table, &o.path, Value::String(o.raw.clone())).is_ok()
    }

    /// The message for an error at `error_path`, without the value when an override set
    /// it: serde's texts quote values (`invalid type: integer `12345678``, `unknown
    /// variant `x``) and so do our own parsers. Only what the key expects is kept.
    pub fn redact(&self, error_path: &str, message: String) -> String {
        let Some(i) = self.covering(error_path) else {
            return message;
        };
        let var = &self.0[i].var;
        if message.starts_with("unknown field") {
            // The key itself is unknown (its name is in the variable and the path).
            let expected = message.rsplit_once(", expected ").map_or("", |(_, e)| e);
            return format!("{var}: no such key; expected {expected}");
        }
        match message.rsplit_once(", expected ") {
            Some((_, expected)) => {
                format!("{var}: not a valid value here (value not shown); expected {expected}")
            }
            None => format!("{var}: not a valid value here (value not shown)"),
        }
    }
}

/// Applies every `TSUNAGU_*__*` variable of `env` to `table`.
pub fn apply_env_overrides<I>(table: &mut Table, env: I) -> Result<Overrides, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && k.contains("__"))
        .collect();
    vars.sort();
    let mut applied = Vec::with_capacity(vars.len());
    for (key, raw) in vars {
        let path: Vec<String> = key[PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let value = parse_value(&raw);
        let typed = !value.is_str();
        set_path(table, &path, value)
            .map_err(|msg| ConfigError::new(&path.join("."), format!("{key}: {msg}")))?;
        applied.push(Applied {
            serde_path: serde_path(&path),
            var: key,
            path,
            raw,
            typed,
        });
    }
    Ok(Overrides(applied))
}

/// `["trunks", "0", "max_cps"]` as serde_path_to_error prints it: `trunks[0].max_cps`.
fn serde_path(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if seg.parse::<usize>().is_ok() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

fn parse_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (head, rest) = path.split_first().ok_or("empty key")?;
    if rest.is_empty() {
        table.insert(head.clone(), value);
        return Ok(());
    }
    let slot = table.entry(head.clone()).or_insert_with(|| {
        if rest[0].parse::<usize>().is_ok() {
            Value::Array(Vec::new())
        } else {
            Value::Table(Table::new())
        }
    });
    set_in(slot, rest, value)
}

fn set_in(slot: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    match slot {
        Value::Table(t) => set_path(t, path, value),
        Value::Array(items) => {
            let index: usize = path[0]
                .parse()
                .map_err(|_| format!("`{}` is not an array index", path[0]))?;
            let len = items.len();
            let item = items
                .get_mut(index)
                .ok_or_else(|| format!("index {index} is past the {len} configured entries"))?;
            if path.len() == 1 {
                *item = value;
                Ok(())
            } else {
                set_in(item, &path[1..], value)
            }
        }
        _ => Err("overrides a value that is not a table".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str, vars: &[(&str, &str)]) -> Result<Table, ConfigError> {
        let mut t: Table = text.parse().unwrap();
        apply_env_overrides(
            &mut t,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        Ok(t)
    }

    #[test]
    fn overrides() {
        let t = apply(
            "[api]\nlisten = \"127.0.0.1:8080\"\n[[trunks]]\nname = \"a\"\nmax_cps = 1\n",
            &[
                ("TSUNAGU_API__LISTEN", "127.0.0.1:9090"),
                ("TSUNAGU_TRUNKS__0__MAX_CPS", "50"),
                ("TSUNAGU_NODE__ID", "n7"),
                ("TSUNAGU_SCYLLA_NODES", "ignored"),
                ("OTHER__X", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(t["api"]["listen"].as_str(), Some("127.0.0.1:9090"));
        assert_eq!(t["trunks"][0]["max_cps"].as_integer(), Some(50));
        assert_eq!(t["node"]["id"].as_str(), Some("n7"));
        assert!(t.get("scylla_nodes").is_none());
    }

    #[test]
    fn bad_index_is_an_error_with_path() {
        let err = apply(
            "[[trunks]]\nname = \"a\"\n",
            &[("TSUNAGU_TRUNKS__3__NAME", "x")],
        )
        .unwrap_err();
        assert_eq!(err.path, "trunks.3.name");
    }

    fn load(vars: &[(&str, &str)]) -> Result<crate::Config, crate::ConfigErrors> {
        crate::Config::from_toml_with_env(
            "[[trunks]]\nname = \"a\"\n",
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    /// Each override lands with the type of its field, whatever its text looks like.
    #[test]
    fn overrides_take_the_fields_type() {
        type Check = fn(&crate::Config) -> bool;
        let cases: &[(&str, &str, Check)] = &[
            ("TSUNAGU_API__ADMIN_TOKEN", "12345678", |c| {
                c.api.admin_token.as_deref() == Some("12345678")
            }),
            ("TSUNAGU_API__METRICS_TOKEN", "1234567890123456", |c| {
                c.api.metrics_token.as_deref() == Some("1234567890123456")
            }),
            ("TSUNAGU_NODE__ID", "true", |c| c.node.id == "true"),
            ("TSUNAGU_API__ADMIN_TOKEN", "[\"12345678\"]", |c| {
                c.api.admin_token.as_deref() == Some("[\"12345678\"]")
            }),
            ("TSUNAGU_API__ADMIN_TOKEN", "0x10000000", |c| {
                c.api.admin_token.as_deref() == Some("0x10000000")
            }),
            ("TSUNAGU_API__ADMIN_TOKEN", "2026-01-01", |c| {
                c.api.admin_token.as_deref() == Some("2026-01-01")
            }),
            ("TSUNAGU_API__ADMIN_TOKEN", "1_000_000_000", |c| {
                c.api.admin_token.as_deref() == Some("1_000_000_000")
            }),
            ("TSUNAGU_NODE__ID", "7", |c| c.node.id == "7"),
            ("TSUNAGU_SIP__SYSTEM_NUMBER", "0312345678", |c| {
                c.sip.system_number.as_deref() == Some("0312345678")
            }),
            ("TSUNAGU_NOTIFY__SMTP__HOST", "10", |c| {
                c.notify.smtp.as_ref().map(|s| s.host.as_str()) == Some("10")
            }),
            ("TSUNAGU_TRUNKS__0__NAME", "1234", |c| {
                c.trunks[0].name == "1234"
            }),
            ("TSUNAGU_TRUNKS__0__MAX_CPS", "50", |c| {
                c.trunks[0].max_cps == 50
            }),
            ("TSUNAGU_NODE__MAX_CALLS", "300", |c| {
                c.node.max_calls == 300
            }),
            ("TSUNAGU_API__ISSUE__PER_POOL_BURST", "7", |c| {
                c.api.issue.per_pool_burst == 7
            }),
            ("TSUNAGU_API__POOL_METRICS", "[\"pool_1\"]", |c| {
                c.api.pool_metrics == ["pool_1"]
            }),
        ];
        for (var, value, check) in cases {
            let mut vars = vec![(*var, *value)];
            if var.starts_with("TSUNAGU_NOTIFY__SMTP") {
                vars.push(("TSUNAGU_NOTIFY__SMTP__FROM", "a@b"));
            }
            let config = load(&vars).unwrap_or_else(|e| panic!("{var}={value}: {e}"));
            assert!(check(&config), "{var}={value}");
        }
    }

    /// A refused override names its variable and key, never its value.
    #[test]
    fn errors_never_echo_the_value() {
        let cases: &[(&str, &str, &str)] = &[
            ("TSUNAGU_NODE__MAX_CALLS", "s3cr3t-value", "node.max_calls"),
            (
                "TSUNAGU_SIP__MIN_SESSION_EXPIRES",
                "918273645918",
                "sip.min_session_expires",
            ),
            ("TSUNAGU_API__LISTEN", "s3cr3t-value", "api.listen"),
            ("TSUNAGU_LOG__FORMAT", "s3cr3t-value", "log.format"),
            (
                "TSUNAGU_NODE__MAX_CALLS",
                "[\"s3cr3t-value\"]",
                "node.max_calls",
            ),
            (
                "TSUNAGU_TRUNKS__0__INBOUND",
                "s3cr3t-value",
                "trunks[0].inbound",
            ),
            (
                "TSUNAGU_API__TRUSTED_PROXIES",
                "[\"s3cr3t-value\"]",
                "api.trusted_proxies[0]",
            ),
            ("TSUNAGU_API__COLOUR", "s3cr3t-value", "api.colour"),
        ];
        for (var, value, path) in cases {
            let vars = [(*var, *value)];
            let errs = load(&vars).expect_err(var).0;
            assert_eq!(errs.len(), 1, "{var}: {errs:?}");
            let e = &errs[0];
            assert_eq!(e.path, *path, "{var}: {e}");
            let shown = e.to_string();
            assert!(shown.contains(var), "{var}: {shown}");
            for secret in ["s3cr3t", "918273645"] {
                assert!(!shown.contains(secret), "{var} leaks its value: {shown}");
            }
        }
        // Still says what the key wants.
        let vars = [("TSUNAGU_NODE__MAX_CALLS", "many")];
        let e = load(&vars).unwrap_err().0.remove(0);
        assert!(e.message.contains("expected"), "{e}");
    }
}
