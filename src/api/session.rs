//! Clean sessions between callers. A pooled server connection serves many callers one after
//! another, so nothing one request does to its session may reach the next: no open
//! transaction, setting, temporary table, prepared statement, listen or session lock.
//!
//! Transaction control is refused (a transaction across requests would hold a connection for
//! as long as a client likes; `/batch` with `"transaction": true` is the way). Every other
//! statement is sorted by its first keyword: the plain ones (`SELECT`, `INSERT`, `UPDATE`,
//! `DELETE`, `WITH`, `VALUES`, `TABLE`, `SHOW`, `MERGE`, `EXPLAIN`) leave the connection as it
//! was, unless the text calls a function known to change the session (`set_config`, session
//! advisory locks, `dblink`); anything else (`SET`, `RESET`, `CREATE TEMP`, `LISTEN`,
//! `DEALLOCATE`, `DISCARD`, `PREPARE`, `DECLARE`, `CALL`, DDL, ...) may, and its connection is
//! closed after the request instead of being reused. So is a connection whose request was
//! dropped (the client went away), timed out or cancelled. The common case pays nothing: no
//! reset round trip. What a user function does inside a plain `SELECT` is not seen; functions
//! that change settings should use `SET LOCAL` or a `SET` clause (docs/api.md).

use crate::http::ApiError;
use crate::targets::Checkout;

/// What a statement may leave behind on its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effect {
    /// Nothing: the connection can serve the next caller as it is.
    None,
    /// Possibly session state: close the connection after the request.
    Session,
}

/// Session-changing functions a plain statement may call.
const SESSION_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "dblink",
];

/// Whether `needle` (lowercase ASCII) occurs in `text`, ignoring ASCII case, without copying
/// the text (this runs on every request).
fn contains_ignoring_case(text: &str, needle: &str) -> bool {
    text.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Sorts a statement, or refuses it when it is transaction control.
pub fn effect(sql: &str) -> Result<Effect, ApiError> {
    let command = super::query::command_of(sql);
    match command.as_str() {
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE" => {
            Err(ApiError::bad_request(format!(
                "{command}: transaction control is not accepted here; a pooled connection serves one request at a time, so send the statements together to POST /v1/targets/{{t}}/batch with \"transaction\": true"
            )))
        }
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "WITH" | "VALUES" | "TABLE" | "SHOW"
        | "MERGE" | "EXPLAIN" => {
            Ok(if SESSION_FUNCTIONS.iter().any(|f| contains_ignoring_case(sql, f)) {
                Effect::Session
            } else {
                Effect::None
            })
        }
        _ => Ok(Effect::Session),
    }
}

/// Holds a checked-out connection's fate: unless [`Reuse::keep`] is called, the connection is
/// marked not reusable when this drops (also when the request's future is dropped midway).
pub struct Reuse<'a> {
    conn: &'a Checkout,
    keep: bool,
}

impl<'a> Reuse<'a> {
    pub fn new(conn: &'a Checkout) -> Self {
        Reuse { conn, keep: false }
    }

    /// The request ended with the session as clean as it found it.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Reuse<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.conn.discard();
        }
    }
}

/// Whether a request's result leaves its connection idle and clean: success, or an error the
/// server reported for the statement (outside a transaction that leaves nothing open). A
/// timeout (the statement was cancelled), a connection failure or a refusal before the
/// statement ran do not count: their connection is closed.
pub fn leaves_clean(error: Option<&ApiError>) -> bool {
    match error {
        None => true,
        Some(e) => e.sqlstate.as_deref().is_some_and(|s| s != "57014"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_statements() {
        assert_eq!(effect("select 1").unwrap(), Effect::None);
        assert_eq!(
            effect("  -- x\nINSERT INTO t VALUES (1)").unwrap(),
            Effect::None
        );
        assert_eq!(effect("SET search_path TO other").unwrap(), Effect::Session);
        assert_eq!(
            effect("create temp table t (x int)").unwrap(),
            Effect::Session
        );
        assert_eq!(effect("LISTEN x").unwrap(), Effect::Session);
        assert_eq!(effect("DEALLOCATE ALL").unwrap(), Effect::Session);
        assert_eq!(
            effect("SELECT set_config('search_path', 'x', false)").unwrap(),
            Effect::Session
        );
        assert_eq!(
            effect("SELECT pg_advisory_lock(1)").unwrap(),
            Effect::Session
        );
        assert_eq!(
            effect("select SET_CONFIG('a', 'b', false)").unwrap(),
            Effect::Session
        );
        assert_eq!(
            effect("SELECT pg_advisory_xact_lock(1)").unwrap(),
            Effect::None
        );
        for tx in [
            "BEGIN",
            "start transaction",
            "COMMIT",
            "rollback",
            "SAVEPOINT a",
        ] {
            let e = effect(tx).unwrap_err();
            assert!(e.message.contains("/batch"), "{}", e.message);
        }
    }
}
