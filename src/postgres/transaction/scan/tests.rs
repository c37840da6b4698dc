use super::*;

fn pin(sql: &str) -> Option<Pin> {
    scan(sql.as_bytes()).pin
}

fn changes(sql: &str) -> bool {
    scan(sql.as_bytes()).changes
}

#[test]
fn what_pins() {
    assert_eq!(pin("PREPARE q AS SELECT 1"), Some(Pin::Prepare));
    assert_eq!(pin("select 1; listen jobs"), Some(Pin::Listen));
    assert_eq!(pin("SELECT pg_advisory_lock(42)"), Some(Pin::AdvisoryLock));
    assert_eq!(
        pin("SELECT \"pg_advisory_lock\"(42)"),
        Some(Pin::AdvisoryLock),
        "a quoted name is its unquoted name"
    );
    assert_eq!(
        pin("SELECT pg_catalog.pg_try_advisory_lock_shared(1)"),
        Some(Pin::AdvisoryLock)
    );
    assert_eq!(
        pin("SELECT pg_advisory_xact_lock(42)"),
        None,
        "transaction-level"
    );
    assert_eq!(
        pin("CREATE TEMP TABLE t (x int)"),
        Some(Pin::TemporaryTable)
    );
    assert_eq!(
        pin("create local temporary table t (x int)"),
        Some(Pin::TemporaryTable)
    );
    assert_eq!(
        pin("CREATE OR REPLACE TEMP VIEW v AS SELECT 1"),
        Some(Pin::TemporaryTable)
    );
    assert_eq!(
        pin("CREATE TABLE pg_temp.t (x int)"),
        Some(Pin::TemporaryTable)
    );
    assert_eq!(
        pin("CREATE TABLE \"pg_temp\".t (x int)"),
        Some(Pin::TemporaryTable)
    );
    assert_eq!(pin("SELECT 1 INTO TEMP t"), Some(Pin::TemporaryTable));
    assert_eq!(
        pin("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
        Some(Pin::WithHoldCursor)
    );
    assert_eq!(pin("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1"), None);
    assert_eq!(
        pin("SET SESSION AUTHORIZATION bob"),
        Some(Pin::SessionAuthorization)
    );
    assert_eq!(pin("set role bob"), Some(Pin::SessionAuthorization));
    assert_eq!(
        pin("SELECT 12345; PREPARE q AS SELECT 1"),
        Some(Pin::Prepare),
        "the next statement starts afresh"
    );
    assert_eq!(
        pin("select 1.5e3 into temporary t"),
        Some(Pin::TemporaryTable)
    );
}

#[test]
fn literals_and_comments_hide_nothing_and_show_nothing() {
    assert_eq!(pin("SELECT 'prepare; listen x' AS a"), None, "in a literal");
    assert_eq!(
        pin("SELECT $$ LISTEN x $$, $f$pg_advisory_lock(1)$f$"),
        None
    );
    assert_eq!(pin("SELECT 1 -- LISTEN x\n"), None);
    assert_eq!(pin("SELECT /* CREATE TEMP TABLE /* nested */ x */ 1"), None);
    assert!(!changes("SELECT /* set_config( /* nested */ x */ 1"));
    assert!(!changes("SELECT 'set_config(' FROM t"));
    assert!(!changes("SELECT \"temp\" FROM t"));
    assert!(!changes("SELECT E'it''s \\' set_config(' "));
    assert!(!changes("SELECT $1::int"), "a parameter is no dollar quote");
    // What a plain reading gets wrong, read as the server reads it.
    assert!(
        changes("SELECT somee'\\', set_config('role', 'x', false) --'"),
        "E is a prefix only as a word of its own: the backslash is a plain character"
    );
    assert!(
        changes("SELECT E'\\'', set_config('a.b', 'c', false)"),
        "in an E-string a backslash escapes the quote"
    );
    assert!(
        changes("SELECT $é$'$é$, set_config('role', 'x', false) --'"),
        "a dollar quote's tag may hold non-ASCII letters"
    );
    assert!(
        changes("SELECT 1set_config('role', 'x', false)"),
        "a number ends where PostgreSQL's does"
    );
    assert!(changes("SELECT +--\nset_config('a.b', 'c', false)"));
    assert!(changes(
        "SELECT B'01', X'1f', set_config('a.b', 'c', false)"
    ));
    assert!(
        changes("SHOW a; SELECT 'unterminated"),
        "what the lexer cannot read counts as a change"
    );
    assert!(changes("SHOW a; /* unterminated"));
    assert!(
        plain_read(b"SELECT 'unterminated"),
        "one read with no call: the server refuses it whole, so it changes nothing"
    );
    assert!(changes("SELECT U&\"\\0073et_config\"('a.b', 'c', false)"));
}

#[test]
fn backslashes_when_standard_conforming_strings_is_off() {
    let sql = b"SELECT '\\'', set_config('a.b', 'c', false) --'";
    assert!(
        !scan_with(sql, true).changes,
        "standard: the call is inside the second literal"
    );
    assert!(
        scan_with(sql, false).changes,
        "off: the backslash escapes the quote, and the call is code"
    );
    let sql = b"SELECT '\\', set_config('a.b', 'c', false) --'";
    assert!(scan_with(sql, true).changes);
    assert!(!scan_with(sql, false).changes);
}

#[test]
fn what_leaves_nothing_behind() {
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 83521;",
        "select count(*), max(x), now() from t where y in (select 1)",
        "SELECT pg_catalog.lower(name) FROM t ORDER BY (x)",
        "SELECT row_number() OVER (PARTITION BY a ORDER BY b) FROM t",
        "SELECT count(*) FILTER (WHERE x > 1) FROM t",
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t FOR NO KEY UPDATE",
        "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1; COMMIT",
        "START TRANSACTION READ ONLY",
        "ROLLBACK TO SAVEPOINT a",
        "SET LOCAL statement_timeout = 5",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET TimeZone = 'UTC'",
        "SET SESSION application_name TO 'x'",
        "SET TIME ZONE 'Europe/Paris'",
        "RESET DateStyle",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SHOW search_path",
        "TABLE t",
        "DECLARE c CURSOR FOR SELECT 1",
        "",
        ";;",
    ] {
        assert!(!changes(sql), "{sql}");
    }
}

#[test]
fn what_counts_as_a_change() {
    for sql in [
        "SET statement_timeout = 5",
        "SELECT 1;SET work_mem = 65536",
        "set session work_mem to '64MB'",
        "SET TimeZone.x = 1",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SELECT set_config('role', 'other', false)",
        "SELECT \"set_config\"('search_path', 'x', false)",
        "SELECT my_function()",
        "SELECT public.lower(x)",
        "SELECT \"Count\"(*) FROM t",
        "SELECT over(1)",
        "SELECT nextval('s')",
        "SELECT * INTO t2 FROM t",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET x = 1",
        "DO $$ BEGIN PERFORM set_config('a.b', 'c', false); END $$",
        "CALL p()",
        "CREATE TABLE t (x int)",
        "LISTEN x",
        "DISCARD TEMP",
        "RESET ALL",
        "RESET ROLE",
        "(SELECT 1)",
        "\"select\" 1",
        "COPY t FROM STDIN",
        "EXPLAIN ANALYZE SELECT 1",
    ] {
        assert!(changes(sql), "{sql}");
    }
}

#[test]
fn settings_and_statements() {
    for sql in [
        &b"SET TimeZone = 'UTC'"[..],
        b"reset all",
        b"select 1; RESET DateStyle",
        b"DISCARD ALL",
        b"SELECT set_config('TimeZone', 'UTC', false)",
    ] {
        assert!(scan(sql).sets_params, "{}", String::from_utf8_lossy(sql));
    }
    for sql in [
        &b"SELECT 'SET TimeZone'"[..],
        b"INSERT INTO t VALUES (1)",
        b"-- SET x\nSELECT 1",
    ] {
        assert!(!scan(sql).sets_params, "{}", String::from_utf8_lossy(sql));
    }
    for (sql, all) in [
        ("DISCARD ALL", true),
        ("deallocate all", true),
        ("DEALLOCATE PREPARE ALL", true),
        ("DEALLOCATE credswap_1", false),
        ("DISCARD PLANS", false),
    ] {
        let s = scan(sql.as_bytes());
        assert!(s.forgets_statements && s.changes, "{sql}");
        assert_eq!(s.forgets_all, all, "{sql}");
    }
}

#[test]
fn the_quick_answer_agrees_with_the_lexer() {
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
        "SELECT a FROM t WHERE b = 2;  ;",
    ] {
        assert!(plain_read(sql.as_bytes()), "{sql}");
        assert!(!changes(sql));
    }
    for sql in [
        "SELECT a FROM t; SET x = 1",
        "SELECT f(a) FROM t",
        "SELECT a INTO t2 FROM t",
        "SELECT a FROM t FOR UPDATE",
        "/* c */ SELECT 1",
        "SELECT 1 /* unterminated",
        "SELECT 1 -- comment",
        "INSERT INTO t VALUES (1)",
    ] {
        assert!(!plain_read(sql.as_bytes()), "{sql}");
    }
}
