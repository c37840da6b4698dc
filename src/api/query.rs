//! `POST /v1/targets/{t}/query` and `/batch`: SQL on the target's current generation.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Statement;

use super::budget::Budget;
use super::types::{self, Cell, TextParam};
use crate::http::ApiError;
use crate::targets::Checkout;

/// How rows are shaped in the answer.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RowFormat {
    /// `[[1, "a"], ...]`
    #[default]
    Array,
    /// `[{"id": 1, "name": "a"}, ...]`
    Object,
}

/// One statement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub sql: String,
    #[serde(default)]
    pub params: Vec<Value>,
    /// Client-side deadline; capped by the target's statement_timeout.
    pub timeout_ms: Option<u64>,
    pub max_rows: Option<usize>,
    #[serde(default)]
    pub row_format: RowFormat,
}

/// A batch: all statements on one connection, in one transaction by default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub statements: Vec<BatchStatement>,
    #[serde(default = "yes")]
    pub transaction: bool,
    pub timeout_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

/// One statement of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchStatement {
    pub sql: String,
    #[serde(default)]
    pub params: Vec<Value>,
    #[serde(default)]
    pub row_format: RowFormat,
}

#[derive(Debug, Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

/// What a statement returned. Each row is encoded as it arrives (so its size is known and
/// the decoded values are freed at once).
#[derive(Debug, Serialize)]
pub struct QueryResult {
    pub columns: Vec<Column>,
    pub rows: Vec<Box<RawValue>>,
    pub row_count: u64,
    pub command: String,
}

/// A value's size on the wire, read without decoding it.
struct WireSize(usize);

impl<'a> FromSql<'a> for WireSize {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(WireSize(raw.len()))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(WireSize(0))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The first keyword of the SQL, as PostgreSQL's command tag names it.
pub fn command_of(sql: &str) -> String {
    let mut rest = sql.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, b)| b).trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, b)| b).trim_start();
        } else {
            break;
        }
    }
    rest.split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

fn bind(statement: &Statement, params: &[Value]) -> Result<Vec<TextParam>, ApiError> {
    let types = statement.params();
    if types.len() != params.len() {
        return Err(ApiError::bad_request(format!(
            "the statement takes {} parameter(s), the request gave {}",
            types.len(),
            params.len()
        )));
    }
    params
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (v, ty))| {
            types::to_text(v, ty, i + 1)
                .map(TextParam)
                .map_err(|e| ApiError::bad_request(e.to_string()))
        })
        .collect()
}

fn check_columns(statement: &Statement) -> Result<Vec<Column>, ApiError> {
    statement
        .columns()
        .iter()
        .map(|c| {
            if types::supported(c.type_()) {
                Ok(Column {
                    name: c.name().to_string(),
                    ty: c.type_().name().to_string(),
                })
            } else {
                Err(ApiError::bad_request(format!(
                    "column \"{}\" has type {}, which has no JSON mapping; cast it in the query, e.g. \"{}\"::text",
                    c.name(),
                    c.type_().name(),
                    c.name()
                )))
            }
        })
        .collect()
}

/// Runs one statement on `conn`, charging what it returns to `budget`. Past the budget's
/// deadline the statement is cancelled on the server and the connection is not reused.
pub async fn run(
    conn: &Checkout,
    sql: &str,
    params: &[Value],
    format: RowFormat,
    budget: &mut Budget,
) -> Result<QueryResult, ApiError> {
    let deadline = budget.deadline();
    let work = async {
        let statement = conn
            .prepare_cached(sql)
            .await
            .map_err(|e| ApiError::sql(&e))?;
        let columns = check_columns(&statement)?;
        let bound = bind(&statement, params)?;
        let stream = conn
            .query_raw(&statement, bound.iter())
            .await
            .map_err(|e| ApiError::sql(&e))?;
        collect(stream, columns, format, budget).await
    };
    match deadline {
        None => work.await,
        Some((at, timeout)) => match tokio::time::timeout_at(at, work).await {
            Ok(r) => r,
            Err(_) => {
                // Stop the statement on the server too. A server the cancel cannot reach is
                // taken as gone (black-holed): its other connections are not handed out again.
                if let Err(e) = conn.conn().cancel().await {
                    tracing::warn!(error = %e, "could not cancel a statement past its timeout");
                    conn.host().host_unreachable(&e.to_string());
                    conn.discard();
                }
                Err(ApiError::timeout(format!(
                    "the request did not finish within {} ms (one deadline for a query, or for a whole batch)",
                    timeout.as_millis()
                )))
            }
        },
    }
    .map(|mut r| {
        r.command = command_of(sql);
        r
    })
}

/// After `25006 read_only_sql_transaction` on a writable target: asks the server whether it
/// is still writable (the caller's own `READ ONLY` transaction also gives 25006). One that is
/// not any more (a standby now, or fenced with `default_transaction_read_only`) has its
/// connections dropped, and new ones go to a writable host.
pub async fn check_still_writable(conn: &Checkout, error: &ApiError) {
    if error.sqlstate.as_deref() != Some("25006") || !conn.host().wants_writable() {
        return;
    }
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        conn.query_one(crate::pool::hosts::STILL_WRITABLE_SQL, &[]),
    )
    .await;
    let writable = matches!(answer, Ok(Ok(row)) if row.get::<_, bool>(0));
    if !writable {
        tracing::warn!(host = %conn.host().label(), "the server of a writable target is read-only now: its connections are dropped");
        conn.host().host_changed();
        conn.discard();
    }
}

async fn collect(
    stream: tokio_postgres::RowStream,
    columns: Vec<Column>,
    format: RowFormat,
    budget: &mut Budget,
) -> Result<QueryResult, ApiError> {
    use futures_util::StreamExt;
    let mut stream = std::pin::pin!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.next().await {
        let row = row.map_err(|e| ApiError::sql(&e))?;
        budget.take_row()?;
        let mut wire = 0usize;
        for (i, column) in columns.iter().enumerate() {
            let WireSize(n) = row
                .try_get(i)
                .map_err(|e| ApiError::bad_request(format!("column \"{}\": {e}", column.name)))?;
            wire = wire.saturating_add(n);
        }
        budget.check_row(wire)?;
        let mut cells = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            let Cell(v) = row
                .try_get(i)
                .map_err(|e| ApiError::bad_request(format!("column \"{}\": {e}", column.name)))?;
            cells.push(v);
        }
        drop(row);
        let value = match format {
            RowFormat::Array => Value::Array(cells),
            RowFormat::Object => Value::Object(
                columns
                    .iter()
                    .map(|c| c.name.clone())
                    .zip(cells)
                    .collect::<Map<String, Value>>(),
            ),
        };
        let encoded = serde_json::value::to_raw_value(&value)
            .map_err(|e| ApiError::bad_request(format!("a row could not be encoded: {e}")))?;
        drop(value);
        budget.charge(encoded.get().len() + 1)?;
        rows.push(encoded);
    }
    let row_count = stream.rows_affected().unwrap_or(rows.len() as u64);
    Ok(QueryResult {
        columns,
        rows,
        row_count,
        command: String::new(),
    })
}

/// Runs a batch: one connection, optionally one transaction (rolled back on any error), one
/// budget and one deadline for all its statements.
pub async fn run_batch(
    conn: &Checkout,
    batch: &BatchRequest,
    budget: &mut Budget,
) -> Result<Vec<QueryResult>, (usize, ApiError)> {
    if batch.transaction {
        conn.batch_execute("BEGIN")
            .await
            .map_err(|e| (0, ApiError::sql(&e)))?;
    }
    let mut results = Vec::new();
    for (i, s) in batch.statements.iter().enumerate() {
        match run(conn, &s.sql, &s.params, s.row_format, budget).await {
            Ok(r) => results.push(r),
            Err(e) => {
                if batch.transaction && conn.batch_execute("ROLLBACK").await.is_err() {
                    conn.discard();
                }
                check_still_writable(conn, &e).await;
                return Err((i, e));
            }
        }
    }
    if batch.transaction {
        conn.batch_execute("COMMIT")
            .await
            .map_err(|e| (batch.statements.len(), ApiError::sql(&e)))?;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::command_of;

    #[test]
    fn commands() {
        assert_eq!(command_of("select 1"), "SELECT");
        assert_eq!(
            command_of("  -- hi\n/* x */ insert into t values (1)"),
            "INSERT"
        );
        assert_eq!(command_of("WITH x AS (SELECT 1) SELECT * FROM x"), "WITH");
    }
}
