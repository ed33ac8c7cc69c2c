//! Environment overrides: `TSUNAGU_API__LISTEN=127.0.0.1:9090` sets `api.listen`.
//! Path segments are separated by a double underscore and lower-cased; a numeric
//! segment indexes an array (`TSUNAGU_TRUNKS__0__MAX_CPS=50`). The value is read as a
//! TOML value when it parses as one (numbers, booleans, arrays), otherwise as a string.
//! Variables without a double underscore (such as `TSUNAGU_SCYLLA_NODES`) are not
//! configuration and are ignored here.

use crate::validate::ConfigError;
use toml::{Table, Value};

const PREFIX: &str = "TSUNAGU_";

pub fn apply_env_overrides<I>(table: &mut Table, env: I) -> Result<(), ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && k.contains("__"))
        .collect();
    vars.sort();
    for (key, raw) in vars {
        let path: Vec<String> = key[PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let value = parse_value(&raw);
        set_path(table, &path, value)
            .map_err(|msg| ConfigError::new(&path.join("."), format!("{key}: {msg}")))?;
    }
    Ok(())
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
}
