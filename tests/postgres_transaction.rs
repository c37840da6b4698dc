//! The PostgreSQL front end in transaction mode, with real clients: pgbench, tokio-postgres,
//! node-pg and psycopg share a few server connections, each transaction on a connection of the
//! current generation.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::frontend::{setup, Setup};

/// A target in transaction mode with `max_size` server connections.
fn transaction_target(max_size: u32) -> String {
    format!("pool_mode = \"transaction\"\npool = {{ max_size = {max_size}, checkout_timeout = \"10s\" }}")
}

fn pgbench(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("pgbench")
        .args([
            "-h",
            &dir.display().to_string(),
            "-p",
            "5432",
            "-U",
            "whoever",
        ])
        .args(args)
        .arg("app")
        .output()
        .expect("pgbench runs (apt-get install postgresql-client)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench {args:?}:\n{text}");
    text
}

/// Server sessions with this `application_name`, as PostgreSQL counts them.
async fn server_sessions(s: &Setup, application_name: &str) -> i64 {
    s.db.admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0)
}

/// 64 pgbench clients on 8 server connections, in each query mode: every transaction done,
/// none failed, and never more than 8 server sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_64_clients_share_8_server_connections_in_every_query_mode() {
    let s = setup(&transaction_target(8)).await;
    pgbench(s.socket_dir(), &["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(
            s.socket_dir(),
            &["-M", mode, "-c", "64", "-j", "2", "-t", "50"],
        );
        assert!(
            out.contains("number of transactions actually processed: 3200/3200"),
            "{mode}:\n{out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}:\n{out}"
        );
        let n = server_sessions(&s, "pgbench").await;
        assert!(n <= 8, "{mode}: {n} server sessions for 64 clients");
    }
    support::assert_no_canary("daemon log", &s.daemon.log());
}

async fn simple_one(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row")
}

/// Waits (at most 10 s) until `condition` holds.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rotates target `app` to a new role (granted what `app` has) and waits for the swap.
async fn rotate_to(s: &Setup, role: &str) {
    s.db.create_role(role, "rotated-password").await;
    s.db.admin()
        .await
        .batch_execute(&format!("GRANT ALL ON SCHEMA public TO {role}; GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"))
        .await
        .unwrap();
    let before = s.daemon.get("/v1/targets/app").await.1["generation"]["id"].as_u64();
    support::credentials_file(s.dir.path(), "app.json", role, "rotated-password");
    s.daemon.call("POST", "/v1/targets/app/rotate", None).await;
    until("the rotation swaps", || async {
        s.daemon.get("/v1/targets/app").await.1["generation"]["id"].as_u64() != before
    })
    .await;
}

/// Named statements on one shared server connection: two clients' `s0` are different
/// statements; more statements than `max_prepared_statements` are closed and prepared again
/// invisibly; a statement survives a rotation (prepared again on the new generation's
/// connection); and a statement that fails runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_their_client() {
    let s =
        support::frontend::setup_with("max_prepared_statements = 2", &transaction_target(1)).await;
    let a = s.client("app").await.unwrap();
    let b = s.client("app").await.unwrap();
    let plus = a.prepare("SELECT $1::int + 1").await.unwrap();
    let suffix = b.prepare("SELECT $1::text || 'b'").await.unwrap();
    for i in 0..5 {
        assert_eq!(
            a.query_one(&plus, &[&i]).await.unwrap().get::<_, i32>(0),
            i + 1
        );
        assert_eq!(
            b.query_one(&suffix, &[&"x"])
                .await
                .unwrap()
                .get::<_, String>(0),
            "xb"
        );
    }
    // Four statements of A's round robin on a connection that keeps two.
    let mut more = Vec::new();
    for k in 2..5 {
        more.push(a.prepare(&format!("SELECT $1::int * {k}")).await.unwrap());
    }
    for _ in 0..3 {
        assert_eq!(a.query_one(&plus, &[&1]).await.unwrap().get::<_, i32>(0), 2);
        for (k, st) in (2..5).zip(&more) {
            assert_eq!(
                a.query_one(st, &[&10]).await.unwrap().get::<_, i32>(0),
                10 * k
            );
        }
    }
    let kept: i64 = simple_one(&a, "SELECT count(*) FROM pg_prepared_statements")
        .await
        .parse()
        .unwrap();
    assert!(kept <= 2, "{kept} statements kept on the connection");
    // Closed by A (the Statement dropped): B's statements are untouched.
    drop(more);
    assert_eq!(
        b.query_one(&suffix, &[&"y"])
            .await
            .unwrap()
            .get::<_, String>(0),
        "yb"
    );

    // An error inside a transaction, then the statement again.
    let divide = a.prepare("SELECT 10 / $1::int").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let e = a.query_one(&divide, &[&0]).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    let e = a.query_one(&divide, &[&1]).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        a.query_one(&divide, &[&5]).await.unwrap().get::<_, i32>(0),
        2
    );

    // After a rotation the same statements run on a connection of the new generation.
    rotate_to(&s, "app_next").await;
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        a.query_one(&plus, &[&41]).await.unwrap().get::<_, i32>(0),
        42
    );
    assert_eq!(simple_one(&a, "SELECT current_user").await, "app_next");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        b.query_one(&suffix, &[&"z"])
            .await
            .unwrap()
            .get::<_, String>(0),
        "zb"
    );
    support::assert_no_canary("daemon log", &s.daemon.log());
}

/// Reported parameters a client sets follow it to every connection, and no other client sees
/// them; an untracked `SET` lasts until the end of its transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_their_client_and_no_other() {
    let s = setup(&transaction_target(1)).await;
    let a = s.client("app").await.unwrap();
    let b = s.client("app").await.unwrap();
    let default_zone = simple_one(&b, "SHOW TimeZone").await;
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            simple_one(&b, "SHOW TimeZone").await,
            default_zone,
            "B never sees A's"
        );
        assert_eq!(
            simple_one(&a, "SHOW TimeZone").await,
            "Asia/Tokyo",
            "A keeps its own"
        );
    }
    // Untracked: for the transaction it is set in.
    let default_mem = simple_one(&b, "SHOW work_mem").await;
    a.batch_execute("SET work_mem = '7MB'").await.unwrap();
    assert_eq!(simple_one(&a, "SHOW work_mem").await, default_mem);
    assert_eq!(simple_one(&b, "SHOW work_mem").await, default_mem);
    a.batch_execute("BEGIN; SET work_mem = '7MB'")
        .await
        .unwrap();
    assert_eq!(simple_one(&a, "SHOW work_mem").await, "7MB");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(simple_one(&b, "SHOW work_mem").await, default_mem);
    assert_eq!(
        simple_one(&a, "SHOW TimeZone").await,
        "Asia/Tokyo",
        "kept through the reset"
    );
}

/// What cannot move between connections pins the client to its own for the rest of its
/// session, counted by reason; the connection is closed when the client leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_pins_the_client() {
    let s = setup(&transaction_target(3)).await;
    let other = s.client("app").await.unwrap();
    for (sql, reason) in [
        ("PREPARE q AS SELECT 1", "prepare"),
        ("LISTEN jobs", "listen"),
        ("SELECT pg_advisory_lock(7)", "advisory_lock"),
        ("CREATE TEMP TABLE t (x int)", "temporary_table"),
        (
            "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT",
            "with_hold_cursor",
        ),
        ("SET ROLE app", "session_authorization"),
    ] {
        let c = s.client("app").await.unwrap();
        c.batch_execute(sql).await.unwrap();
        let pid = simple_one(&c, "SELECT pg_backend_pid()").await;
        // Another client's transaction held meanwhile does not move the pinned one.
        other.batch_execute("BEGIN").await.unwrap();
        let _ = simple_one(&other, "SELECT 1").await;
        for _ in 0..3 {
            assert_eq!(
                simple_one(&c, "SELECT pg_backend_pid()").await,
                pid,
                "{reason}"
            );
        }
        other.batch_execute("COMMIT").await.unwrap();
        let metric = format!(
            "credswap_postgres_pinned_clients_total{{target=\"app\",reason=\"{reason}\"}} 1"
        );
        assert!(s.daemon.metrics().await.contains(&metric), "{metric}");
        drop(c);
        let pid: i32 = pid.parse().unwrap();
        until(
            &format!("{reason}: the pinned connection closes"),
            || async {
                s.db.admin()
                    .await
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                        &[&pid],
                    )
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
                    == 0
            },
        )
        .await;
    }
    assert!(s.daemon.log().contains("pinned to its server connection"));
}

/// A raw protocol client: an unnamed statement parsed in one Sync cycle and bound in the next,
/// after another client's query replaced the connection's unnamed statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnamed_statement_outlives_its_sync() {
    use postgres_protocol::message::frontend;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup(&transaction_target(1)).await;
    let other = s.client("app").await.unwrap();
    let mut raw = tokio::net::UnixStream::connect(s.socket_dir().join(".s.PGSQL.5432"))
        .await
        .unwrap();
    let mut buf = bytes::BytesMut::new();
    frontend::startup_message([("user", "raw"), ("database", "app")], &mut buf).unwrap();
    raw.write_all(&buf).await.unwrap();
    async fn until_ready(raw: &mut tokio::net::UnixStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
            let n = raw.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }
    until_ready(&mut raw).await;
    buf.clear();
    frontend::parse("", "SELECT $1::int * 2", [23], &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.write_all(&buf).await.unwrap();
    assert!(until_ready(&mut raw).await.starts_with(b"1\0\0\0\x04"));
    // Another client's simple query destroys the connection's unnamed statement.
    assert_eq!(simple_one(&other, "SELECT 7").await, "7");
    buf.clear();
    frontend::bind(
        "",
        "",
        [0i16],
        [b"21"],
        |v, out| {
            out.extend_from_slice(v);
            Ok(postgres_protocol::IsNull::No)
        },
        [0i16],
        &mut buf,
    )
    .map_err(|_| "bind")
    .unwrap();
    frontend::execute("", 0, &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.write_all(&buf).await.unwrap();
    let got = until_ready(&mut raw).await;
    assert!(
        got.starts_with(b"2\0\0\0\x04"),
        "BindComplete first: {got:?}"
    );
    assert!(got.windows(2).any(|w| w == b"42"), "the row: {got:?}");
}

/// A cancel reaches the connection running the client's transaction; a client that leaves
/// inside a transaction has it rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_and_abandoned_transactions() {
    let s = setup(&transaction_target(2)).await;
    s.db.admin()
        .await
        .batch_execute("CREATE TABLE public.ledger (x int); GRANT ALL ON public.ledger TO app")
        .await
        .unwrap();
    let a = s.client("app").await.unwrap();
    let token = a.cancel_token();
    let started = Instant::now();
    let sleeper =
        tokio::spawn(async move { a.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) });
    until("the sleep is running", || async {
        s.db.admin().await.query_one("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'", &[]).await.unwrap().get::<_, i64>(0) == 1
    })
    .await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = sleeper.await.unwrap().unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let b = s.client("app").await.unwrap();
    b.batch_execute("BEGIN; INSERT INTO public.ledger VALUES (1)")
        .await
        .unwrap();
    drop(b);
    let c = s.client("app").await.unwrap();
    until("the abandoned transaction is gone", || async {
        s.db.admin()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
    })
    .await;
    assert_eq!(
        simple_one(&c, "SELECT count(*) FROM public.ledger").await,
        "0"
    );
}
