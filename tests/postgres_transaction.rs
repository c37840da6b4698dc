//! The PostgreSQL front end in transaction mode, with real clients: pgbench, tokio-postgres,
//! node-pg and psycopg share a few server connections, each transaction on a connection of the
//! current generation.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::frontend::{setup, simple_one, until, Setup};

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
        let n = s.count_sessions("application_name = 'pgbench'").await;
        assert!(n <= 8, "{mode}: {n} server sessions for 64 clients");
    }
    support::assert_no_canary("daemon log", &s.daemon.log());
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
    // A closes its statements (the Statements dropped): B's, one of them the same text and so
    // the same server statement, are untouched.
    let twice = b.prepare("SELECT $1::int * 2").await.unwrap();
    drop(more);
    assert_eq!(
        b.query_one(&twice, &[&10]).await.unwrap().get::<_, i32>(0),
        20
    );
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
            || async { s.count_sessions(&format!("pid = {pid}")).await == 0 },
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
        s.count_sessions("query = 'SELECT pg_sleep(30)' AND state = 'active'")
            .await
            == 1
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
        s.count_sessions("state = 'idle in transaction'").await == 0
    })
    .await;
    assert_eq!(
        simple_one(&c, "SELECT count(*) FROM public.ledger").await,
        "0"
    );
}

/// 50 password rotations (alternating users) under transaction-mode load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_password_rotations_in_transaction_mode() {
    let s = setup(&format!(
        "drain_timeout = \"30s\"\n{}",
        transaction_target(8)
    ))
    .await;
    support::frontend::two_roles_and_a_ledger(&s).await;
    rotations_in_transaction_mode(&s, 50, |i| support::frontend::rotate_password(&s, i)).await;
}

/// 50 rotations to new Vault dynamic users under the same load; old leases are revoked once
/// their generations drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_vault_dynamic_rotations_in_transaction_mode() {
    let (s, _bao) = support::frontend::vault_dynamic(&format!(
        "drain_timeout = \"30s\"\n{}",
        transaction_target(8)
    ))
    .await;
    rotations_in_transaction_mode(&s, 50, |_| s.force_rotation()).await;
    let users = s.login_roles().await;
    assert!(
        (1..=3).contains(&users),
        "{users} dynamic users of 51 remain"
    );
}

fn spawn_driver(mut cmd: Command, s: &Setup, what: &str) -> std::process::Child {
    let child = cmd
        .env("PGHOST", s.socket_dir())
        .env("PGDATABASE", "app")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not run ({e}); dev/setup installs it"));
    support::owned::record(child.id(), what);
    child
}

/// Its JSON line {committed, failed, errors}, once its stdin is closed.
async fn driver_counts(mut child: std::process::Child, what: &str) -> u64 {
    drop(child.stdin.take());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let counts: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    assert_eq!(counts["failed"], 0, "{what}: {counts}");
    assert!(out.status.success(), "{what}: {text}");
    let committed = counts["committed"].as_u64().unwrap();
    assert!(committed > 0, "{what}: {counts}");
    committed
}

/// Drives `rotations` rotations under transaction-mode load that never reconnects: pgbench
/// (`-M prepared`, 8 clients), node-pg's Pool with named statements, psycopg with automatic
/// preparation and a long-lived tokio-postgres client with a prepared statement. No
/// transaction fails and no client is disconnected; every committed row is there; each old
/// generation's server sessions are gone long before its 30 s drain deadline (they end with
/// their in-flight transactions), measured in pg_stat_activity by `application_name`.
async fn rotations_in_transaction_mode<F, Fut>(s: &Setup, rotations: u64, mut rotate: F)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let drivers = root.join("tests/drivers");
    let mut node_cmd = Command::new("node");
    node_cmd
        .arg(drivers.join("node_pg_prepared_load.js"))
        .current_dir(&drivers);
    let node = spawn_driver(node_cmd, s, "node");
    let mut py_cmd = Command::new(root.join(".venv/bin/python"));
    py_cmd.arg(drivers.join("psycopg_load.py"));
    let py = spawn_driver(py_cmd, s, "python");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // pgbench in runs of 3 s with persistent connections, until stopped.
    let pgbench = {
        let stop = stop.clone();
        let dir = s.socket_dir().display().to_string();
        std::thread::spawn(move || {
            let mut processed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut child = Command::new("pgbench")
                    .args(["-h", &dir, "-p", "5432", "-U", "x", "-n", "-M", "prepared"])
                    .args(["-c", "8", "-j", "2", "-T", "3", "-f", "-", "app"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("pgbench runs");
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("piped")
                    .write_all(b"BEGIN;\nINSERT INTO public.ledger VALUES (1);\nEND;\n")
                    .unwrap();
                let out = child.wait_with_output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "pgbench:\n{text}");
                assert!(text.contains("number of failed transactions: 0"), "{text}");
                assert!(!text.contains("aborted"), "{text}");
                processed += text
                    .lines()
                    .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
                    .and_then(|n| n.split('/').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .expect("pgbench's count");
            }
            processed
        })
    };
    // One long-lived client for the whole test: its connection must never end.
    let worker = {
        let stop = stop.clone();
        let client = s.client("app").await.unwrap();
        tokio::spawn(async move {
            let insert = client
                .prepare("INSERT INTO public.ledger VALUES ($1)")
                .await
                .unwrap();
            let mut committed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.batch_execute("BEGIN").await.expect("BEGIN");
                client.execute(&insert, &[&5i32]).await.expect("INSERT");
                client.batch_execute("COMMIT").await.expect("COMMIT");
                committed += 1;
            }
            committed
        })
    };

    let admin = s.db.admin().await;
    let (_, v, _) = s.daemon.get("/v1/targets/app").await;
    let mut generation = v["generation"]["id"].as_u64().expect("a live generation");
    let first = generation;
    let mut drains = Vec::new();
    for i in 1..=rotations {
        rotate(i).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let old = generation;
        loop {
            let (_, v, _) = s.daemon.get("/v1/targets/app").await;
            if v["generation"]["id"].as_u64().unwrap_or(0) > generation {
                generation = v["generation"]["id"].as_u64().unwrap();
                break;
            }
            assert!(Instant::now() < deadline, "rotation {i} never swapped: {v}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let swapped = Instant::now();
        let name = format!("credswap/app/g{old}");
        loop {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&name],
                )
                .await
                .unwrap()
                .get(0);
            if n == 0 {
                break;
            }
            assert!(
                swapped.elapsed() < Duration::from_secs(5),
                "generation {old}'s {n} sessions still there 5 s after the swap (deadline 30 s)"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drains.push(swapped.elapsed());
    }
    assert!(generation >= first + rotations, "generation {generation}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let tokio_committed = worker.await.expect("the long-lived client never failed");
    let node_committed = driver_counts(node, "node-pg").await;
    let py_committed = driver_counts(py, "psycopg").await;
    let pgbench_processed = tokio::task::spawn_blocking(move || pgbench.join().unwrap())
        .await
        .unwrap();
    drains.sort();
    eprintln!(
        "old generation gone after the swap: p50 {:?}, p99 {:?}, max {:?} ({} rotations)",
        drains[drains.len() / 2],
        drains[drains.len() * 99 / 100],
        drains[drains.len() - 1],
        drains.len()
    );
    let rows = |x: i32| {
        let admin = &admin;
        async move {
            admin
                .query_one("SELECT count(*) FROM public.ledger WHERE x = $1", &[&x])
                .await
                .unwrap()
                .get::<_, i64>(0) as u64
        }
    };
    assert_eq!(rows(1).await, pgbench_processed, "pgbench's rows");
    assert_eq!(rows(3).await, node_committed, "node-pg's rows");
    assert_eq!(rows(4).await, py_committed, "psycopg's rows");
    assert_eq!(
        rows(5).await,
        tokio_committed,
        "the long-lived client's rows"
    );
    let ended: u64 = s
        .daemon
        .metrics()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("credswap_postgres_sessions_ended_total{") && l.contains("ended_at_idle")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(ended, 0, "no session was ended by a rotation");
    support::assert_no_canary("daemon log", &s.daemon.log());
}

/// At an old generation's drain deadline a statement still running on it is cancelled, as the
/// HTTP API's are; a pinned client follows session-mode rules and is ended at its idle point;
/// the others never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_cancels_statements_and_ends_pinned_clients() {
    let s = setup(&format!(
        "drain_timeout = \"1s\"\n{}",
        transaction_target(4)
    ))
    .await;
    let sleeper = s.client("app").await.unwrap();
    let pinned = s.client("app").await.unwrap();
    let free = s.client("app").await.unwrap();
    pinned.batch_execute("LISTEN jobs").await.unwrap();
    let long = tokio::spawn(async move {
        sleeper
            .simple_query("SELECT pg_sleep(60)")
            .await
            .map(|_| ())
    });
    until("the sleep is running", || async {
        s.count_sessions("query = 'SELECT pg_sleep(60)' AND state = 'active'")
            .await
            == 1
    })
    .await;
    let rotated = Instant::now();
    rotate_to(&s, "app_next").await;
    let e = long.await.unwrap().unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{e}"
    );
    assert!(rotated.elapsed() < Duration::from_secs(10));
    until("the pinned client is ended", || async {
        s.daemon.metrics().await.contains(
            "credswap_postgres_sessions_ended_total{target=\"app\",reason=\"ended_at_idle\"} 1",
        )
    })
    .await;
    assert!(pinned.simple_query("SELECT 1").await.is_err());
    assert_eq!(simple_one(&free, "SELECT current_user").await, "app_next");
}
