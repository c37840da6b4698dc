//! Clients that share server connections cannot see, change or hijack each other's sessions.
//! Each test puts two clients on a pool of one server connection (the same backend pid proves
//! they share it) and has the first do, as a hostile or careless client would, what leaves
//! session state behind: settings, role, temporary rows, advisory locks, listens, sequence
//! state, by plain SQL, through functions and `DO` blocks, and through prepared statements run
//! in a later round. The second must find the login state. Clients of two uids never share a
//! connection unless the target declares them one trust domain.

mod support;

use std::path::Path;
use std::process::Command;

use support::frontend::{psql, setup, setup_with, simple_one, until, Setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A target in `mode` with one server connection.
fn one_connection(mode: &str, extra: &str) -> String {
    format!("pool_mode = \"{mode}\"\npool = {{ max_size = 1, checkout_timeout = \"10s\" }}\nallow_uids = [65534]\n{extra}")
}

/// What a session looks like to its client, and its backend pid.
const SNAPSHOT: &str = "SELECT concat_ws('|', current_user, session_user, \
    current_setting('search_path'), current_setting('TimeZone'), current_setting('work_mem'), \
    coalesce(current_setting('app.secret', true), ''), \
    current_setting('default_transaction_read_only'), current_setting('statement_timeout'), \
    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
    (SELECT count(*) FROM pg_listening_channels()), \
    (SELECT count(*) FROM pg_cursors), \
    (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())), \
    pg_backend_pid()::text";

async fn snapshot(c: &tokio_postgres::Client) -> (String, String) {
    let rows = c.simple_query(SNAPSHOT).await.unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    (row.get(0).unwrap().into(), row.get(1).unwrap().into())
}

/// What a client leaves behind, each as a hostile one would: (what, SQL).
const LEAVES: &[(&str, &str)] = &[
    (
        "search_path by set_config",
        "SELECT set_config('search_path', 'evil', false)",
    ),
    (
        "a custom setting through a quoted function name",
        "SELECT \"set_config\"('app.secret', 'leaked', false)",
    ),
    (
        "TimeZone by a function",
        "SELECT pg_catalog.set_config('TimeZone', 'Asia/Tokyo', false)",
    ),
    (
        "role by set_config (RESET ALL keeps it)",
        "SELECT set_config('role', 'other_role', false)",
    ),
    (
        "settings inside a DO block",
        "DO $$ BEGIN PERFORM set_config('work_mem', '77MB', false); \
         PERFORM set_config('statement_timeout', '1234', false); END $$",
    ),
    (
        "default_transaction_read_only by a function",
        "DO $$ BEGIN PERFORM set_config('default_transaction_read_only', 'on', false); END $$",
    ),
    (
        "a temporary table by a function",
        "DO $$ BEGIN EXECUTE 'CREATE TEMP TABLE secret AS SELECT 42 AS x'; END $$",
    ),
    (
        "a temporary table in pg_temp by a function",
        "DO $$ BEGIN EXECUTE 'CREATE TABLE pg_temp.secret2 (x int)'; END $$",
    ),
    (
        "a session advisory lock by a function",
        "DO $$ BEGIN PERFORM pg_advisory_lock(4242); END $$",
    ),
    (
        "a listen by a function",
        "DO $$ BEGIN EXECUTE 'LISTEN secrets'; END $$",
    ),
    (
        "an E-string that hides a call from a naive reading",
        "SELECT E'\\'', set_config('app.secret', 'e-string', false)",
    ),
];

/// The cluster's role the `role` leak switches to, granted to `app`.
async fn other_role(s: &Setup) {
    s.db.admin()
        .await
        .batch_execute("CREATE ROLE other_role; GRANT other_role TO app; CREATE SEQUENCE public.seq; GRANT ALL ON public.seq TO app")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_leaves_the_next_client_nothing() {
    let s = setup(&one_connection("transaction", "")).await;
    other_role(&s).await;
    let a = s.client("app").await.unwrap();
    let b = s.client("app").await.unwrap();
    let (login, pid) = snapshot(&b).await;
    for (what, sql) in LEAVES {
        a.batch_execute(sql).await.unwrap();
        let (seen, b_pid) = snapshot(&b).await;
        assert_eq!(
            b_pid, pid,
            "{what}: the two clients share one server connection"
        );
        assert_eq!(seen, login, "{what}: the next client sees the login state");
    }
    // Sequence state: another client's lastval() is not defined here.
    a.batch_execute("SELECT nextval('public.seq')")
        .await
        .unwrap();
    let e = b.simple_query("SELECT lastval()").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("55000"), "{e}");
    // A setting of the client's own that the server reports follows it; no other sees it.
    a.batch_execute("SET TimeZone = 'America/Lima'")
        .await
        .unwrap();
    assert_eq!(simple_one(&a, "SHOW TimeZone").await, "America/Lima");
    assert_eq!(snapshot(&b).await.0, login);
    // A reported setting changed by something credswap cannot attribute (here a function)
    // lasts the transaction for its client too, which is told the value it has next.
    let login_zone = simple_one(&b, "SHOW TimeZone").await;
    a.batch_execute("DO $$ BEGIN PERFORM set_config('TimeZone', 'Asia/Tokyo', false); END $$")
        .await
        .unwrap();
    assert_eq!(simple_one(&a, "SHOW TimeZone").await, login_zone);
    let (a_seen, _) = snapshot(&a).await;
    assert_eq!(
        a_seen, login,
        "the client itself is back at the login state"
    );
    let resets = s
        .daemon
        .metric("credswap_postgres_server_resets_total", "reason=\"reset\"")
        .await;
    assert!(resets >= LEAVES.len() as f64, "{resets} resets");
    support::assert_no_canary("daemon log", &s.daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_leaves_the_next_client_nothing() {
    let s = setup(&one_connection("session", "")).await;
    other_role(&s).await;
    let b = s.client("app").await.unwrap();
    let (login, pid) = snapshot(&b).await;
    drop(b);
    for (what, sql) in LEAVES {
        parked(&s, &pid).await;
        let a = s.client("app").await.unwrap();
        a.batch_execute(sql).await.unwrap();
        drop(a);
        parked(&s, &pid).await;
        let b = s.client("app").await.unwrap();
        let (seen, b_pid) = snapshot(&b).await;
        assert_eq!(
            b_pid, pid,
            "{what}: the kept server connection serves the next client"
        );
        assert_eq!(seen, login, "{what}");
    }
}

/// Waits until the server session `pid` is parked (reset and idle) after its client left.
async fn parked(s: &Setup, pid: &str) {
    until("the server connection is parked", || async {
        s.count_sessions(&format!(
            "pid = {pid} AND state = 'idle' AND query = 'DISCARD ALL'"
        ))
        .await
            == 1
    })
    .await;
}

/// The raw protocol: a startup, then messages, reading up to each `ReadyForQuery`.
struct Raw {
    stream: tokio::net::UnixStream,
}

impl Raw {
    async fn connect(dir: &Path) -> Raw {
        let mut stream = tokio::net::UnixStream::connect(dir.join(".s.PGSQL.5432"))
            .await
            .unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&196608u32.to_be_bytes());
        for kv in ["user", "raw", "database", "app"] {
            body.extend_from_slice(kv.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        stream.write_all(&m).await.unwrap();
        let mut raw = Raw { stream };
        raw.until_ready().await;
        raw
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Sends `messages` and a Sync; the tags of what comes back up to `ReadyForQuery`.
    async fn round(&mut self, messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out: Vec<u8> = messages.concat();
        out.extend(Raw::message(b'S', &[]));
        self.stream.write_all(&out).await.unwrap();
        self.until_ready().await
    }

    async fn until_ready(&mut self) -> Vec<u8> {
        let mut tags = Vec::new();
        loop {
            let mut head = [0u8; 5];
            self.stream.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len - 4];
            self.stream.read_exact(&mut body).await.unwrap();
            tags.push(head[0]);
            if head[0] == b'Z' {
                return tags;
            }
        }
    }
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    Raw::message(b'P', &b)
}

fn bind_execute(name: &str) -> Vec<Vec<u8>> {
    let mut b = vec![0u8];
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    vec![Raw::message(b'B', &b), Raw::message(b'E', &[0, 0, 0, 0, 0])]
}

/// The first column of the one row `statement` returns, as text.
async fn text_of(
    c: &tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> String {
    c.query_one(statement, params).await.unwrap().get(0)
}

/// A protocol-level prepared statement whose Parse was answered without a server (its own
/// round) and that runs in a later round: what it does still counts, with libpq's raw
/// protocol and with psycopg 3's `prepare=True`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_run_in_a_later_round_leave_nothing() {
    let s = setup(&one_connection("transaction", "")).await;
    let b = s.client("app").await.unwrap();
    let (login, pid) = snapshot(&b).await;
    let mut a = Raw::connect(s.socket_dir()).await;
    for (name, sql) in [
        (
            "named",
            "SELECT set_config('search_path', 'raw_named', false)",
        ),
        ("", "SELECT set_config('app.secret', 'raw_unnamed', false)"),
    ] {
        assert_eq!(
            a.round(&[parse(name, sql)]).await,
            b"1Z",
            "the Parse-only round"
        );
        assert_eq!(&a.round(&bind_execute(name)).await[..], b"2DCZ");
        let (seen, b_pid) = snapshot(&b).await;
        assert_eq!(b_pid, pid);
        assert_eq!(seen, login, "statement {name:?} run in a later round");
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = "import os, psycopg\n\
        c = psycopg.connect(f\"host={os.environ['PGHOST']} dbname=app\", autocommit=True)\n\
        for i in range(3):\n    c.execute(\"SELECT set_config('search_path', %s, false)\", ['psycopg_' + str(i)], prepare=True)\n\
        print(c.execute('SHOW search_path').fetchone()[0])\n";
    let out = Command::new(root.join(".venv/bin/python"))
        .args(["-c", script])
        .env("PGHOST", s.socket_dir())
        .output()
        .expect("the venv's python runs (dev/setup installs psycopg)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (seen, b_pid) = snapshot(&b).await;
    assert_eq!(b_pid, pid);
    assert_eq!(seen, login, "after psycopg's prepared set_config");
}

/// The shared prepared statements on a connection cannot be dropped or replaced under another
/// client: a function that deallocates them all, or replaces one by name, has the connection
/// closed at its reset; the victim's statement runs again with its own text and rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_statements_cannot_be_dropped_or_replaced() {
    let s = setup(&one_connection("transaction", "")).await;
    let victim = s.client("app").await.unwrap();
    let hostile = s.client("app").await.unwrap();
    let mine = victim
        .prepare("SELECT 'mine'::text, $1::int")
        .await
        .unwrap();
    assert_eq!(text_of(&victim, &mine, &[&1]).await, "mine");
    let names = simple_one(
        &hostile,
        "SELECT string_agg(name, ',') FROM pg_prepared_statements",
    )
    .await;
    assert!(
        names.starts_with("credswap_") && names.len() > "credswap_1_".len() + 8,
        "server names carry a keyed hash: {names}"
    );
    hostile
        .batch_execute(
            "DO $$ DECLARE r record; BEGIN FOR r IN SELECT name FROM pg_prepared_statements LOOP \
             EXECUTE format('DEALLOCATE %I', r.name); \
             EXECUTE format('PREPARE %I (int) AS SELECT ''hijacked''::text, $1', r.name); END LOOP; END $$",
        )
        .await
        .unwrap();
    for i in 0..3 {
        let row = victim.query_one(&mine, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "mine", "never another's statement");
    }
    hostile
        .batch_execute(
            "DO $$ DECLARE r record; BEGIN FOR r IN SELECT name FROM pg_prepared_statements LOOP \
             EXECUTE format('DEALLOCATE %I', r.name); END LOOP; END $$",
        )
        .await
        .unwrap();
    assert_eq!(
        victim
            .query_one(&mine, &[&7])
            .await
            .unwrap()
            .get::<_, i32>(1),
        7
    );
    let closed = s
        .daemon
        .metric(
            "credswap_postgres_server_resets_total",
            "reason=\"statements_changed\"",
        )
        .await;
    assert_eq!(closed, 2.0, "both connections were closed at their reset");

    // DEALLOCATE ALL inside a transaction, then statements again (psycopg's way): the
    // client's statements are gone, as on the server itself, and new ones work.
    victim.batch_execute("BEGIN; DEALLOCATE ALL").await.unwrap();
    let again = victim.prepare("SELECT 'again'::text").await.unwrap();
    assert_eq!(text_of(&victim, &again, &[]).await, "again");
    victim.batch_execute("COMMIT").await.unwrap();
    let e = victim.query_one(&mine, &[&3]).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("26000"), "{e}");
    let mine = victim
        .prepare("SELECT 'mine'::text, $1::int")
        .await
        .unwrap();
    assert_eq!(text_of(&victim, &mine, &[&3]).await, "mine");
    assert_eq!(text_of(&victim, &again, &[]).await, "again");
}

/// psql through the front end, as root or as `user`: the backend pid it gets.
fn psql_pid(dir: &Path, user: Option<&str>) -> String {
    let (code, out, err) = psql(dir, "app", "SELECT pg_backend_pid()", user);
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

/// Clients of different uids never get the same server connection, in either mode, unless
/// the target declares them one trust domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uid_is_a_wall() {
    for (mode, trusted) in [
        ("transaction", false),
        ("transaction", true),
        ("session", false),
        ("session", true),
    ] {
        let domain = if trusted {
            "trust_domains = [[0, 65534]]"
        } else {
            ""
        };
        let s = setup_with("", &one_connection(mode, domain)).await;
        let pid = psql_pid(s.socket_dir(), None);
        if mode == "session" {
            parked(&s, &pid).await;
        }
        let theirs = psql_pid(s.socket_dir(), Some("nobody"));
        assert_eq!(
            theirs == pid,
            trusted,
            "{mode} mode, trust domain {trusted}: root's server session {pid}, uid 65534's {theirs}"
        );
    }
}

/// Session state the differential test compares: settings changed in the session, who it
/// runs as, locks, listens, cursors, temporary objects, prepared statements.
const STATE: &str = "SELECT concat_ws('|', \
    (SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings \
     WHERE source = 'session' AND name <> 'standard_conforming_strings'), \
    coalesce(current_setting('app.x', true), ''), current_user, \
    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
    (SELECT count(*) FROM pg_listening_channels()), (SELECT count(*) FROM pg_cursors), \
    (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), \
    (SELECT count(*) FROM pg_prepared_statements))";

/// Pieces of a `SELECT` list: literals in every spelling the lexer must read as the server
/// does (some hold the text of a call), comments, and calls that change the session.
const PIECES: &[&str] = &[
    "1",
    "1.5e3",
    "'plain'",
    "'it''s'",
    "'\\'",
    "'\\'''",
    "E'\\''",
    "E'a\\\\'",
    "e'set_config(''app.x'', ''lit'', false)'",
    "name'\\'",
    "N'\\'",
    "B'01'",
    "X'1F'",
    "U&'\\0041'",
    "$$ set_config('app.x', 'dollar', false) $$",
    "$q$'$q$",
    "$é$'$é$",
    "'set_config(''app.x'', ''quoted'', false)'",
    "1 AS \"set_config\"",
    "/* set_config('app.x', 'c', false) /* nested */ */ 2",
    "-- set_config('app.x', 'line', false)\n3",
    "set_config('app.x', 'call', false)",
    "\"set_config\"('app.x', 'quoted call', false)",
    "pg_catalog.set_config('app.x', 'qualified', false)",
    "pg_advisory_lock(7)",
    "+-- comment in an operator\n4",
    // A lone quote in a name, a dollar quote and a comment: text where a lexer that got a
    // literal's end wrong would find its quotes balanced again.
    "5 AS \"'\"",
    "$x$'$x$",
    "/* ' */ 6",
];

/// The scan against PostgreSQL's own answer: statements made of [`PIECES`] run on a real
/// session, with `standard_conforming_strings` on and off; whenever the scan says a statement
/// leaves nothing behind, the session must be as it was. (The scan may say "changes" for a
/// statement that changed nothing: it fails closed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_agrees_with_postgresql() {
    use credswap::postgres::transaction::scan::scan_with;
    let db = support::pg::Cluster::start_plain();
    let c = db.admin().await;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let (mut ran, mut changed, mut flagged) = (0, 0, 0);
    for standard in [true, false] {
        let setup = format!(
            "SET standard_conforming_strings = {}",
            if standard { "on" } else { "off" }
        );
        c.batch_execute("DISCARD ALL").await.unwrap();
        c.batch_execute(&setup).await.unwrap();
        let before = simple_one(&c, STATE).await;
        for _ in 0..600 {
            let parts: Vec<&str> = (0..1 + next(4))
                .map(|_| PIECES[next(PIECES.len())])
                .collect();
            let sql = format!("SELECT {}", parts.join(", "));
            let scan = scan_with(sql.as_bytes(), standard);
            if c.simple_query(&sql).await.is_ok() {
                ran += 1;
            }
            let after = simple_one(&c, STATE).await;
            flagged += usize::from(scan.changes);
            if after != before {
                changed += 1;
                assert!(
                    scan.changes,
                    "standard_conforming_strings {standard}: the scan says {sql:?} leaves nothing, and it changed the session:\n{before}\n{after}"
                );
                c.batch_execute("DISCARD ALL").await.unwrap();
                c.batch_execute(&setup).await.unwrap();
            }
        }
    }
    // The oracle saw both kinds: statements that ran and changed the session, and many that
    // ran and did not.
    eprintln!("{ran} statements ran, {changed} changed the session, the scan flagged {flagged}");
    assert!(
        changed > 50 && ran > changed + 100,
        "{ran} ran, {changed} changed the session"
    );
    assert!(flagged < 1200, "the scan cannot call everything a change");
}
