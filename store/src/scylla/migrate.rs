//! Applying the schema migrations at start (see `schema.rs` for the protocol).

use super::schema::{self, MigrationStep};
use super::store::{corrupt, unavailable};
use crate::now_ms;
use crate::{Result, StoreError};
use scylla::client::session::Session;
use scylla::statement::SerialConsistency;
use scylla::value::{CqlValue, Row};
use std::time::Duration;

/// Applies the migrations `keyspace` (the session's) lacks, each claimed by
/// compare-and-set in `schema_version` (see `schema.rs`).
pub(super) async fn migrate(session: &Session, keyspace: &str) -> Result<()> {
    session
        .query_unpaged(schema::SCHEMA_VERSION_TABLE, ())
        .await
        .map_err(unavailable)?;
    session
        .await_schema_agreement()
        .await
        .map_err(unavailable)?;
    let owner = crate::new_id("migrator");
    let versions: Vec<i32> = {
        let result = session
            .query_unpaged("SELECT version FROM schema_version", ())
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(corrupt)?;
        result
            .rows::<(i32,)>()
            .map_err(corrupt)?
            .filter_map(|r| r.ok().map(|(v,)| v))
            .collect()
    };
    schema::check_not_newer(&versions).map_err(StoreError::Corrupt)?;
    let cas = |cql: &'static str| {
        let mut st = scylla::statement::Statement::new(cql);
        st.set_serial_consistency(Some(SerialConsistency::Serial));
        st
    };
    for (version, name, cql) in schema::MIGRATIONS {
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        loop {
            let row = session
                .query_unpaged(
                    "SELECT state, owner, claimed_at FROM schema_version WHERE version = ?",
                    (*version,),
                )
                .await
                .map_err(unavailable)?
                .into_rows_result()
                .map_err(corrupt)?
                .maybe_first_row::<(Option<String>, Option<String>, Option<i64>)>()
                .map_err(corrupt)?;
            let now = now_ms();
            let step = schema::step_for(
                row.as_ref().map(|(s, o, c)| {
                    (
                        s.as_deref().unwrap_or(""),
                        o.as_deref().unwrap_or(""),
                        c.unwrap_or(0),
                    )
                }),
                now,
            );
            let claimed = match step {
                MigrationStep::Done => break,
                MigrationStep::Wait => {
                    if std::time::Instant::now() > deadline {
                        return Err(StoreError::Unavailable(format!(
                            "schema migration {name} is being applied by another node and did not finish in 5 minutes"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                MigrationStep::Claim => session
                    .query_unpaged(
                        cas("INSERT INTO schema_version (version, name, state, owner, claimed_at) VALUES (?, ?, 'applying', ?, ?) IF NOT EXISTS"),
                        (*version, *name, owner.as_str(), now),
                    )
                    .await
                    .map_err(unavailable)?,
                MigrationStep::TakeOver { owner: old } => session
                    .query_unpaged(
                        cas("UPDATE schema_version SET owner = ?, claimed_at = ? WHERE version = ? IF owner = ? AND state = 'applying'"),
                        (owner.as_str(), now, *version, old.as_str()),
                    )
                    .await
                    .map_err(unavailable)?,
            };
            if !applied(claimed)? {
                continue;
            }
            for statement in schema::statements(cql) {
                if let Some((table, column)) = schema::added_column(&statement) {
                    if has_column(session, keyspace, table, column).await? {
                        continue; // added by an earlier, interrupted run
                    }
                }
                session
                    .query_unpaged(statement.as_str(), ())
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("{name}: {e}: {statement}")))?;
            }
            session
                .await_schema_agreement()
                .await
                .map_err(unavailable)?;
            session
                .query_unpaged(
                    cas("UPDATE schema_version SET state = 'done', applied_at = ? WHERE version = ? IF owner = ?"),
                    (now_ms(), *version, owner.as_str()),
                )
                .await
                .map_err(unavailable)?;
            tracing::info!(version, name, "scylla schema migrated");
            break;
        }
    }
    Ok(())
}

/// Whether `table` of `keyspace` has `column` (unquoted names are stored lower case).
async fn has_column(session: &Session, keyspace: &str, table: &str, column: &str) -> Result<bool> {
    let names = (
        keyspace.to_ascii_lowercase(),
        table.to_ascii_lowercase(),
        column.to_ascii_lowercase(),
    );
    Ok(session
        .query_unpaged(schema::COLUMN_EXISTS, names)
        .await
        .map_err(unavailable)?
        .into_rows_result()
        .map_err(corrupt)?
        .maybe_first_row::<(String,)>()
        .map_err(corrupt)?
        .is_some())
}

fn applied(result: scylla::response::query_result::QueryResult) -> Result<bool> {
    let rows = result.into_rows_result().map_err(corrupt)?;
    let first = rows.maybe_first_row::<Row>().map_err(corrupt)?;
    Ok(matches!(
        first.and_then(|r| r.columns.into_iter().next().flatten()),
        Some(CqlValue::Boolean(true))
    ))
}
