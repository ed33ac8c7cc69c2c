//! The ScyllaDB schema: CQL files in `store/cql/`, applied in version order at start.
//!
//! `schema_version` has one row per migration. A node claims a version with a
//! lightweight transaction (`INSERT ... IF NOT EXISTS`, LOCAL_SERIAL), applies its
//! statements, then marks it `done` (`UPDATE ... IF owner = me`). A node that loses the
//! claim waits for the winner to finish; a claim older than [`STALE_CLAIM_MS`] (its
//! owner died mid-way) is taken over by compare-and-set and applied again. So two nodes
//! starting together never both apply a migration, and a crash mid-way does not leave
//! the schema half applied for ever. Every statement is idempotent (`IF NOT EXISTS`;
//! an added column, which CQL cannot say `IF NOT EXISTS` of, is skipped when the
//! table has it: [`added_column`]), which a migration added later must keep (a
//! taken-over claim runs it again).

/// (version, file name, CQL), in order. Versions start at 1 and have no gaps.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "001_initial.cql",
        include_str!("../../cql/001_initial.cql"),
    ),
    (
        2,
        "002_call_ownership.cql",
        include_str!("../../cql/002_call_ownership.cql"),
    ),
    (
        3,
        "003_client_leases.cql",
        include_str!("../../cql/003_client_leases.cql"),
    ),
    (
        4,
        "004_prompt_quota.cql",
        include_str!("../../cql/004_prompt_quota.cql"),
    ),
    (
        5,
        "005_node_retirement.cql",
        include_str!("../../cql/005_node_retirement.cql"),
    ),
    (
        6,
        "006_notices.cql",
        include_str!("../../cql/006_notices.cql"),
    ),
    (
        7,
        "007_advertiser_keys.cql",
        include_str!("../../cql/007_advertiser_keys.cql"),
    ),
];

/// The table that records which migrations were applied (created before any).
pub const SCHEMA_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (\
    version int PRIMARY KEY, name text, state text, owner text, claimed_at bigint, applied_at bigint)";

/// A claim on a migration older than this is presumed dead and may be taken over.
pub const STALE_CLAIM_MS: i64 = 120_000;

/// The statements of a CQL file: `--` comments dropped, split at `;`.
pub fn statements(cql: &str) -> Vec<String> {
    let without_comments: String = cql
        .lines()
        .map(|l| match l.find("--") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// The (table, column) a statement `ALTER TABLE <table> ADD <column> <type>` adds:
/// applied only when the table lacks the column (looked up in `system_schema.columns`),
/// so applying it twice is harmless. None for any other statement.
pub fn added_column(statement: &str) -> Option<(&str, &str)> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    match words.as_slice() {
        [alter, table, t, add, c, _type, rest @ ..]
            if alter.eq_ignore_ascii_case("ALTER")
                && table.eq_ignore_ascii_case("TABLE")
                && add.eq_ignore_ascii_case("ADD")
                && !c.starts_with('(')
                && matches!(rest, [] | [_]) =>
        {
            match rest {
                [] => Some((t, c)),
                [w] if w.eq_ignore_ascii_case("static") => Some((t, c)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether the columns of `system_schema.columns` read for an added column show it.
pub const COLUMN_EXISTS: &str = "SELECT column_name FROM system_schema.columns \
    WHERE keyspace_name = ? AND table_name = ? AND column_name = ?";

/// `CREATE KEYSPACE IF NOT EXISTS` with NetworkTopologyStrategy: `replication` copies
/// in `datacenter`, or in every datacenter when none is named. The names were checked
/// ([`super::settings::is_cql_identifier`], [`super::settings::is_datacenter_name`]).
/// Tablets are turned off: ScyllaDB 6.x creates keyspaces with tablets by default, and
/// lightweight transactions (every compare-and-set here) need vnode keyspaces there.
/// The `tablets` option needs ScyllaDB 6.0 or later (Cassandra does not know it).
pub fn keyspace_cql(keyspace: &str, replication: u32, datacenter: Option<&str>) -> String {
    let dc = match datacenter {
        Some(dc) => format!("'{dc}': {replication}"),
        None => format!("'replication_factor': {replication}"),
    };
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
         {{'class': 'NetworkTopologyStrategy', {dc}}} AND durable_writes = true \
         AND tablets = {{'enabled': false}}"
    )
}

/// What a starting node does about one migration, given its `schema_version` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationStep {
    /// No row: claim it (`IF NOT EXISTS`) and apply it.
    Claim,
    /// Applied by someone: nothing to do.
    Done,
    /// Another node is applying it: wait and look again.
    Wait,
    /// Its claim is stale: take it over from `owner` (compare-and-set) and apply it.
    TakeOver { owner: String },
}

/// The step for a migration row `(state, owner, claimed_at)` at `now_ms`.
pub fn step_for(row: Option<(&str, &str, i64)>, now_ms: i64) -> MigrationStep {
    match row {
        None => MigrationStep::Claim,
        Some(("done", _, _)) => MigrationStep::Done,
        Some((_, owner, claimed_at)) if now_ms.saturating_sub(claimed_at) > STALE_CLAIM_MS => {
            MigrationStep::TakeOver {
                owner: owner.to_string(),
            }
        }
        Some(_) => MigrationStep::Wait,
    }
}

/// Refuses a keyspace migrated by a newer build (its tables may mean other things).
pub fn check_not_newer(applied_versions: &[i32]) -> Result<(), String> {
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    match applied_versions.iter().max() {
        Some(&v) if v > known => Err(format!(
            "keyspace schema version {v} is newer than this build knows ({known})"
        )),
        _ => Ok(()),
    }
}

/// Every table the migrations create with its columns (those of `CREATE TABLE` and
/// those added later), for tests that check statements against the schema.
#[cfg(test)]
pub fn created_columns() -> std::collections::HashMap<String, std::collections::HashSet<String>> {
    let mut tables: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    for st in MIGRATIONS.iter().flat_map(|m| statements(m.2)) {
        if let Some((table, column)) = added_column(&st) {
            tables
                .entry(table.to_string())
                .or_default()
                .insert(column.to_string());
        } else if let Some(rest) = st.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
            let (table, body) = rest.split_once(" (").expect("CREATE TABLE name (");
            let columns = tables.entry(table.to_string()).or_default();
            // Column definitions are the items at depth 0 of the body, up to the
            // closing parenthesis; `PRIMARY KEY (...)` is not one.
            let (mut depth, mut item) = (0i32, String::new());
            for ch in body.chars() {
                match ch {
                    '(' | '<' => depth += 1,
                    ')' | '>' => depth -= 1,
                    _ => {}
                }
                if depth < 0 || (depth == 0 && ch == ',') {
                    let name = item.split_whitespace().next().unwrap_or("");
                    if !name.is_empty() && !item.trim_start().starts_with("PRIMARY KEY") {
                        columns.insert(name.to_string());
                    }
                    item.clear();
                    if depth < 0 {
                        break;
                    }
                } else {
                    item.push(ch);
                }
            }
        }
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_parse() {
        for (i, (version, name, cql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version as usize, i + 1, "{name}");
            assert!(name.starts_with(&format!("{version:03}_")), "{name}");
            let st = statements(cql);
            assert!(!st.is_empty(), "{name}");
            for s in &st {
                assert!(
                    s.starts_with("CREATE TABLE IF NOT EXISTS ")
                        || s.starts_with("CREATE INDEX IF NOT EXISTS ")
                        || added_column(s).is_some(),
                    "{name}: every statement must be safe to run twice: {s}"
                );
                assert!(!s.contains("ALLOW FILTERING"), "{s}");
            }
        }
    }

    #[test]
    fn every_table_the_backend_uses_is_created() {
        let all: Vec<String> = MIGRATIONS.iter().flat_map(|m| statements(m.2)).collect();
        for table in super::super::queries::TABLES {
            assert!(
                all.iter()
                    .any(|s| s.starts_with(&format!("CREATE TABLE IF NOT EXISTS {table} ("))),
                "{table} is not created by any migration"
            );
        }
    }

    /// CQL's reserved words (Cassandra's list, which ScyllaDB shares): none may name a
    /// table or a column unquoted.
    const RESERVED: &[&str] = &[
        "add",
        "allow",
        "alter",
        "and",
        "apply",
        "asc",
        "authorize",
        "batch",
        "begin",
        "by",
        "columnfamily",
        "create",
        "delete",
        "desc",
        "describe",
        "drop",
        "entries",
        "execute",
        "from",
        "full",
        "grant",
        "if",
        "in",
        "index",
        "infinity",
        "insert",
        "into",
        "is",
        "keyspace",
        "limit",
        "materialized",
        "mbean",
        "mbeans",
        "modify",
        "nan",
        "norecursive",
        "not",
        "null",
        "of",
        "on",
        "or",
        "order",
        "primary",
        "rename",
        "replace",
        "revoke",
        "schema",
        "select",
        "set",
        "table",
        "to",
        "token",
        "truncate",
        "unlogged",
        "unset",
        "update",
        "use",
        "using",
        "view",
        "where",
        "with",
        // Not reserved in every version, avoided anyway.
        "key",
        "keys",
        "count",
        "ttl",
        "writetime",
        "timestamp",
        "type",
        "user",
        "function",
    ];

    #[test]
    fn no_table_or_column_is_a_reserved_word() {
        for (_, name, cql) in MIGRATIONS {
            for st in statements(cql) {
                if let Some((table, column)) = added_column(&st) {
                    assert!(
                        !RESERVED.contains(&column.to_ascii_lowercase().as_str()),
                        "{name}: column {column} added to {table}"
                    );
                    continue;
                }
                let Some(rest) = st.strip_prefix("CREATE TABLE IF NOT EXISTS ") else {
                    continue;
                };
                let (table, body) = rest.split_once(" (").unwrap();
                assert!(!RESERVED.contains(&table), "{name}: table {table}");
                let columns = body.split("PRIMARY KEY").next().unwrap();
                for item in columns.split(',') {
                    let Some(column) = item.split_whitespace().next() else {
                        continue;
                    };
                    assert!(
                        !RESERVED.contains(&column.to_ascii_lowercase().as_str()),
                        "{name}: column {column} of {table}"
                    );
                }
            }
        }
    }

    #[test]
    fn added_columns_are_recognised() {
        let cases = [
            (
                "ALTER TABLE active_calls ADD epoch bigint",
                Some(("active_calls", "epoch")),
            ),
            ("alter table t add c text", Some(("t", "c"))),
            (
                "ALTER TABLE prompts ADD quota bigint static",
                Some(("prompts", "quota")),
            ),
            ("ALTER TABLE t ADD c bigint frozen", None),
            ("ALTER TABLE t ADD c bigint static x", None),
            ("ALTER TABLE t ADD (a int, b text)", None),
            ("ALTER TABLE t DROP c", None),
            ("ALTER TABLE t WITH gc_grace_seconds = 1", None),
            ("CREATE TABLE IF NOT EXISTS t (c int PRIMARY KEY)", None),
        ];
        for (st, want) in cases {
            assert_eq!(added_column(st), want, "{st}");
        }
    }

    #[test]
    fn added_columns_are_added_to_created_tables() {
        let all: Vec<String> = MIGRATIONS.iter().flat_map(|m| statements(m.2)).collect();
        for st in &all {
            if let Some((table, _)) = added_column(st) {
                assert!(
                    all.iter()
                        .any(|s| s.starts_with(&format!("CREATE TABLE IF NOT EXISTS {table} ("))),
                    "{st}: no such table"
                );
            }
        }
    }

    #[test]
    fn statements_drop_comments_and_split() {
        let cql = "-- head\nCREATE TABLE IF NOT EXISTS a (x int PRIMARY KEY); -- tail\n\n\
                   CREATE TABLE IF NOT EXISTS b (\n  y int PRIMARY KEY -- why\n);\n";
        assert_eq!(
            statements(cql),
            vec![
                "CREATE TABLE IF NOT EXISTS a (x int PRIMARY KEY)",
                "CREATE TABLE IF NOT EXISTS b ( y int PRIMARY KEY )"
            ]
        );
    }

    #[test]
    fn keyspace_replication_names_the_datacenter_or_every_one() {
        assert_eq!(
            keyspace_cql("tsunagu", 3, Some("dc1")),
            "CREATE KEYSPACE IF NOT EXISTS tsunagu WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'dc1': 3} AND durable_writes = true \
             AND tablets = {'enabled': false}"
        );
        assert!(keyspace_cql("ks", 1, None).contains("'replication_factor': 1"));
    }

    #[test]
    fn migration_steps() {
        let now = 1_000_000;
        let cases = [
            (None, MigrationStep::Claim),
            (Some(("done", "n1", 0)), MigrationStep::Done),
            (Some(("applying", "n1", now - 1_000)), MigrationStep::Wait),
            (
                Some(("applying", "n1", now - STALE_CLAIM_MS - 1)),
                MigrationStep::TakeOver { owner: "n1".into() },
            ),
            (
                Some(("applying", "n1", i64::MIN)),
                MigrationStep::TakeOver { owner: "n1".into() },
            ),
        ];
        for (row, want) in cases {
            assert_eq!(step_for(row, now), want, "{row:?}");
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        assert!(check_not_newer(&[]).is_ok());
        assert!(check_not_newer(&[1]).is_ok());
        assert!(check_not_newer(&[1, 2]).is_ok());
        assert!(check_not_newer(&[1, 99]).unwrap_err().contains("newer"));
    }
}
