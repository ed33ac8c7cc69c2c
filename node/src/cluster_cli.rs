//! The `tsunagu cluster` commands, run on a node's machine with its configuration:
//!
//! - `status` asks the node for its view of the cluster (`GET /v1/cluster` on
//!   `api.listen`, with the admin token) and prints it as a table. Exit status: 0 when
//!   every member is up, 1 when a member is down, 2 when the node cannot be asked (bad
//!   configuration, no token, node unreachable, odd answer).
//! - `forget NAME` has the node retire member NAME for good (`DELETE
//!   /v1/cluster/members/NAME`): a decommissioned node, down, that every member then
//!   stops listing and alerting on. Exit status: 0 retired, 1 refused (the node's
//!   reason: the member is up, or unknown), 2 as above.
//!
//! The requests go through [`crate::api_client`]; the view is treated as untrusted:
//! parsed without panics, and names are made safe for a terminal.

use crate::api_client::{
    api_address, ask, error_message, load_config, path_segment, printable, ClientError,
};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tsunagu_config::Config;

/// Names longer than this are cut in the table (node ids are short).
const MAX_NAME: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("configuration error:\n{0}")]
    Config(String),
    #[error("no admin token: {path} {reason} (set api.admin_token or api.admin_token_file, or start the node once so that it writes one)")]
    NoToken { path: PathBuf, reason: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the node refused the admin token (401): is this the node's configuration?")]
    Unauthorized,
    #[error("the node answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the node's answer is not a cluster view: {0}")]
    BadAnswer(String),
}

/// What the view says about the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Every member is up (or the node is on its own).
    AllUp,
    /// At least one member is down (or in a state this CLI does not know).
    MemberDown,
}

impl Health {
    pub fn exit_code(self) -> ExitCode {
        match self {
            Health::AllUp => ExitCode::SUCCESS,
            Health::MemberDown => ExitCode::from(1),
        }
    }
}

/// `cluster status`: `file` is the node's configuration (none: built-in defaults).
pub fn status(file: Option<PathBuf>) -> ExitCode {
    let asked = node(file).and_then(|(addr, token)| {
        let (code, body) = ask(addr, &token, "GET", "/v1/cluster", None)?;
        if code != 200 {
            return Err(refused(code, &body));
        }
        let view = serde_json::from_slice(&body)
            .map_err(|e| StatusError::BadAnswer(format!("not JSON ({e})")))?;
        render(&view)
    });
    match asked {
        Ok((text, health)) => {
            print!("{text}");
            health.exit_code()
        }
        Err(e) => {
            eprintln!("tsunagu cluster status: {e}");
            ExitCode::from(2)
        }
    }
}

/// `cluster forget NAME`: the node of `file` retires member `name`.
pub fn forget(file: Option<PathBuf>, name: &str) -> ExitCode {
    let asked = node(file).and_then(|(addr, token)| {
        let path = format!("/v1/cluster/members/{}", path_segment(name));
        Ok(ask(addr, &token, "DELETE", &path, None)?)
    });
    match asked {
        Ok((200, _)) => {
            println!(
                "{} retired: no member lists it any more (a node of that name that starts again joins anew)",
                printable(name, MAX_NAME)
            );
            ExitCode::SUCCESS
        }
        // The node's reason (the member is up, unknown, restarted since).
        Ok((code @ (404 | 409), body)) => {
            eprintln!("tsunagu cluster forget: {}", refused(code, &body));
            ExitCode::from(1)
        }
        Ok((code, body)) => {
            eprintln!("tsunagu cluster forget: {}", refused(code, &body));
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("tsunagu cluster forget: {e}");
            ExitCode::from(2)
        }
    }
}

/// The node's API address and admin token, from its configuration.
fn node(file: Option<PathBuf>) -> Result<(SocketAddr, String), StatusError> {
    let config = load_config(file.as_deref()).map_err(StatusError::Config)?;
    let token = admin_token(&config)?;
    Ok((api_address(config.api.listen), token))
}

/// An answer other than success, as an error: the node's own message when it gave one.
fn refused(code: u16, body: &[u8]) -> StatusError {
    if code == 401 {
        return StatusError::Unauthorized;
    }
    StatusError::Status {
        status: code,
        body: error_message(body, 200),
    }
}

/// The admin token as the node has it, read-only: unlike `serve`, this never generates
/// one (a token the node does not know would only be refused).
fn admin_token(config: &Config) -> Result<String, StatusError> {
    if let Some(t) = &config.api.admin_token {
        return Ok(t.clone());
    }
    let path = config
        .api
        .admin_token_file
        .clone()
        .unwrap_or_else(|| config.node.data_dir.join("admin_token"));
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(StatusError::NoToken {
            path,
            reason: "is empty".into(),
        }),
        Err(e) => Err(StatusError::NoToken {
            path,
            reason: format!("cannot be read ({e})"),
        }),
    }
}

/// The view as a table, and what it says about the members. Pure: unit-tested.
pub fn render(view: &Value) -> Result<(String, Health), StatusError> {
    let name = view["name"]
        .as_str()
        .ok_or_else(|| StatusError::BadAnswer("no node name".into()))?;
    let members = view["members"]
        .as_array()
        .ok_or_else(|| StatusError::BadAnswer("no member list".into()))?;
    let epoch = number(&view["epoch"]);
    let mut out = String::new();
    if view["clustered"] == Value::Bool(false) {
        out.push_str(&format!(
            "node {}  epoch {epoch}: on its own (no [cluster] listen configured)\n",
            printable(name, MAX_NAME)
        ));
        return Ok((out, Health::AllUp));
    }
    let lease = match view["lease_valid"].as_bool() {
        Some(true) => "held",
        Some(false) => "LAPSED (admits no calls, grants no lines)",
        None => "?",
    };
    out.push_str(&format!(
        "node {}  epoch {epoch}  lease {lease}",
        printable(name, MAX_NAME)
    ));
    if let (Some(held), Some(waiting)) =
        (view["lines_held"].as_u64(), view["lines_waiting"].as_u64())
    {
        out.push_str(&format!("  lines {held} held, {waiting} waiting"));
    }
    if view["lines_rebuilding"] == Value::Bool(true) {
        out.push_str(" (rebuilding)");
    }
    if view["majority"] == Value::Bool(false) {
        out.push_str("  MINORITY (cut off from members the store shows alive)");
    }
    out.push('\n');
    let header = ["MEMBER", "EPOCH", "STATE", "FOR", "RTT", "CONNECTED"];
    let mut rows: Vec<[String; 6]> = Vec::with_capacity(members.len());
    let (mut up, mut down) = (0usize, 0usize);
    for m in members {
        let state = m["state"].as_str().unwrap_or("?");
        if state == "up" {
            up += 1;
        } else {
            down += 1;
        }
        rows.push([
            printable(m["name"].as_str().unwrap_or("?"), MAX_NAME),
            number(&m["epoch"]),
            printable(state, 16),
            duration(m["for_seconds"].as_f64()),
            // The last round trip of a member that is not up is history, not a measure.
            if state == "up" {
                rtt(m["rtt_ms"].as_f64())
            } else {
                "-".into()
            },
            match m["connected"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            }
            .to_string(),
        ]);
    }
    if rows.is_empty() {
        out.push_str("no members known yet (is any peer configured in [cluster] seeds?)\n");
    } else {
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(cell);
                } else {
                    s.push_str(&format!("{cell:<w$}  "));
                }
            }
            s.push('\n');
            s
        };
        out.push_str(&line(&header.map(String::from)));
        for row in &rows {
            out.push_str(&line(row));
        }
    }
    out.push_str(&format!(
        "{} member{}: {up} up, {down} down\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    let health = if down == 0 {
        Health::AllUp
    } else {
        Health::MemberDown
    };
    Ok((out, health))
}

fn number(v: &Value) -> String {
    v.as_u64().map_or_else(|| "?".into(), |n| n.to_string())
}

/// Seconds in a state, short: `850ms`, `12.3s`, `5m07s`, `2h03m`, `3d04h`.
fn duration(seconds: Option<f64>) -> String {
    let Some(s) = seconds.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "?".into();
    };
    if s < 1.0 {
        return format!("{}ms", (s * 1000.0) as u64);
    }
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    // Saturates for absurd values (f64 -> u64 casts do).
    let whole = s as u64;
    match whole {
        0..=3599 => format!("{}m{:02}s", whole / 60, whole % 60),
        3600..=86_399 => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d{:02}h", whole / 86_400, whole % 86_400 / 3600),
    }
}

fn rtt(ms: Option<f64>) -> String {
    match ms.filter(|m| m.is_finite() && *m >= 0.0) {
        Some(m) if m < 10.0 => format!("{m:.2} ms"),
        Some(m) => format!("{m:.0} ms"),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(members: Value) -> Value {
        json!({
            "name": "n1", "epoch": 7, "lease_valid": true, "lines_rebuilding": false,
            "lines_held": 2, "lines_waiting": 1, "members": members,
        })
    }

    #[test]
    fn a_cluster_with_every_member_up_renders_as_a_table_and_exits_0() {
        let (text, health) = render(&view(json!([
            {"name": "n2", "epoch": 8, "state": "up", "for_seconds": 65.2, "rtt_ms": 0.4123, "connected": true},
            {"name": "n3-long-name", "epoch": 12, "state": "up", "for_seconds": 0.25, "rtt_ms": 12.6, "connected": true},
        ])))
        .unwrap();
        assert_eq!(health, Health::AllUp);
        assert_eq!(health.exit_code(), ExitCode::SUCCESS);
        assert_eq!(
            text,
            "node n1  epoch 7  lease held  lines 2 held, 1 waiting\n\
             MEMBER        EPOCH  STATE  FOR    RTT      CONNECTED\n\
             n2            8      up     1m05s  0.41 ms  yes\n\
             n3-long-name  12     up     250ms  13 ms    yes\n\
             2 members: 2 up, 0 down\n"
        );
    }

    #[test]
    fn exit_status_follows_the_members_states() {
        let cases: &[(Value, Health)] = &[
            (json!([]), Health::AllUp),
            (json!([{"name": "n2", "state": "up"}]), Health::AllUp),
            (json!([{"name": "n2", "state": "down"}]), Health::MemberDown),
            (
                json!([{"name": "n2", "state": "up"}, {"name": "n3", "state": "down"}]),
                Health::MemberDown,
            ),
            // A state this CLI does not know is not "up".
            (
                json!([{"name": "n2", "state": "joining"}]),
                Health::MemberDown,
            ),
            (json!([{"name": "n2"}]), Health::MemberDown),
        ];
        for (members, want) in cases {
            let (_, got) = render(&view(members.clone())).unwrap();
            assert_eq!(got, *want, "{members}");
        }
    }

    #[test]
    fn a_down_member_and_a_lapsed_lease_are_shown() {
        let mut v = view(json!([
            {"name": "n2", "epoch": 3, "state": "down", "for_seconds": 7300.0, "rtt_ms": 0.7, "connected": false},
        ]));
        v["lease_valid"] = json!(false);
        v["lines_rebuilding"] = json!(true);
        let (text, health) = render(&v).unwrap();
        assert_eq!(health, Health::MemberDown);
        assert!(text.starts_with("node n1  epoch 7  lease LAPSED"), "{text}");
        assert!(text.contains("(rebuilding)"), "{text}");
        assert!(!text.contains("MINORITY"), "{text}");
        v["majority"] = json!(false);
        let (text, _) = render(&v).unwrap();
        assert!(text.contains("MINORITY"), "{text}");
        assert!(
            text.contains("n2      3      down   2h01m  -    no"),
            "{text}"
        );
        assert!(text.ends_with("1 member: 0 up, 1 down\n"), "{text}");
    }

    #[test]
    fn a_node_on_its_own_exits_0() {
        let v = json!({"name": "solo", "epoch": 1, "clustered": false, "members": []});
        let (text, health) = render(&v).unwrap();
        assert_eq!(health, Health::AllUp);
        assert!(text.contains("node solo  epoch 1: on its own"), "{text}");
    }

    #[test]
    fn hostile_or_broken_views_neither_panic_nor_reach_the_terminal_raw() {
        for bad in [
            json!(null),
            json!([]),
            json!({"name": 1}),
            json!({"name": "x"}),
        ] {
            assert!(
                matches!(render(&bad), Err(StatusError::BadAnswer(_))),
                "{bad}"
            );
        }
        let long = "x".repeat(500);
        let (text, _) = render(&view(json!([
            {"name": "\u{1b}[2J\u{1b}]0;owned\u{7}", "epoch": -1, "state": "up\n", "for_seconds": -5,
             "rtt_ms": 1e308, "connected": "yes"},
            {"name": long, "epoch": u64::MAX, "state": "up", "for_seconds": 1e300, "rtt_ms": -1},
        ])))
        .unwrap();
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(text.contains("?[2J?]0;owned?"), "{text}");
        assert!(
            text.contains(&format!("{}…", "x".repeat(MAX_NAME))),
            "{text}"
        );
        assert!(!text.contains(&"x".repeat(MAX_NAME + 1)), "{text}");
        assert!(text.contains(&u64::MAX.to_string()), "{text}");
    }

    #[test]
    fn durations_are_short() {
        let cases = [
            (Some(0.0), "0ms"),
            (Some(0.8505), "850ms"),
            (Some(12.34), "12.3s"),
            (Some(307.0), "5m07s"),
            (Some(7380.0), "2h03m"),
            (Some(273_600.0), "3d04h"),
            (Some(-1.0), "?"),
            (Some(f64::NAN), "?"),
            (None, "?"),
        ];
        for (s, want) in cases {
            assert_eq!(duration(s), want, "{s:?}");
        }
    }
}
