//! The PostgreSQL front end with real clients: psql, pgbench and tokio-postgres connect to
//! `<socket_dir>/.s.PGSQL.5432` with no password; the daemon logs in upstream over verified TLS.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use support::frontend::{psql, setup, until};
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_connects_without_a_password_and_follows_a_rotation() {
    let s = setup("").await;
    let (code, out, err) = psql(s.socket_dir(), "app", "select current_user", None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "app");
    support::assert_no_canary("psql output", &(out + &err));

    // A rotation to another role: new sessions log in with the new credentials.
    s.db.create_role("app2", "second-password").await;
    support::credentials_file(s.dir.path(), "app.json", "app2", "second-password");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, out, err) = psql(s.socket_dir(), "app", "select current_user", None);
        assert_eq!(code, 0, "{err}");
        if out.trim() == "app2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {out}:\n{}",
            s.daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_checked_and_unknown_targets_look_forbidden() {
    let s = setup("allow_uids = [0]").await;
    // nobody (uid 65534) is on neither target's allow-list; root is an admin.
    let (code, _, refused) = psql(s.socket_dir(), "app", "select 1", Some("nobody"));
    assert_ne!(code, 0);
    assert!(
        refused.contains("uid 65534 may not connect to database \"app\""),
        "{refused}"
    );
    let (_, _, unknown) = psql(s.socket_dir(), "nope", "select 1", Some("nobody"));
    assert_eq!(
        unknown.replace("\"nope\"", "\"?\""),
        refused.replace("\"app\"", "\"?\""),
        "an unknown target and a forbidden one look the same"
    );
    let err = s.client("nope").await.expect_err("refused");
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("28000"),
        "{err}"
    );
    assert!(s.daemon.log().contains("postgres: refused a peer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_through_the_socket_in_every_query_mode() {
    let s = setup("pool = { max_size = 4 }").await;
    let dir = s.socket_dir().display().to_string();
    let run = |args: &[&str]| {
        let out = Command::new("pgbench")
            .args(["-h", &dir, "-p", "5432", "-U", "whoever"])
            .args(args)
            .arg("app")
            .output()
            .expect("pgbench runs (apt-get install postgresql-client)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pgbench {args:?}:\n{text}");
        text
    };
    run(&["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        let out = run(&["-S", "-M", mode, "-c", "4", "-j", "2", "-t", "200"]);
        assert!(
            out.contains("number of transactions actually processed: 800/800"),
            "{mode}:\n{out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}:\n{out}"
        );
    }
    let out = run(&["-M", "prepared", "-c", "2", "-t", "50"]);
    assert!(out.contains("100/100"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_transactions_errors_and_cancels_through_a_driver() {
    let s = setup("").await;
    let c = s.client("app").await.unwrap();
    let row = c
        .query_one("SELECT $1::int + 1, current_user", &[&41])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, &str>(1)), (42, "app"));

    // An error inside a transaction: the session knows it is aborted, then rolls back.
    c.batch_execute("CREATE TABLE t (x int PRIMARY KEY)")
        .await
        .unwrap();
    c.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let e = c
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "23505");
    let e = c.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // A large value both ways (messages pass through without being buffered whole).
    let big = "x".repeat(20 << 20);
    let back: String = c
        .query_one("SELECT $1::text", &[&big])
        .await
        .unwrap()
        .get(0);
    assert_eq!(back.len(), big.len());

    // A cancel with credswap's key reaches the server session running the statement.
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(30)").await });
    s.db.wait_running("SELECT pg_sleep(30)", 1).await;
    let started = Instant::now();
    token.cancel_query(NoTls).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the cancel arrived")
        .unwrap()
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "57014", "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A parameter the server refuses: the server's own error.
    let e = tokio_postgres::Config::new()
        .host_path(s.socket_dir())
        .port(5432)
        .dbname("app")
        .user("whoever")
        .options("-c no_such.setting_here=1 -c statement_timeout=oops")
        .connect(NoTls)
        .await
        .err()
        .expect("refused by the server");
    assert_eq!(e.as_db_error().unwrap().code().code(), "22023", "{e}");
}

/// After a rotation, a session on the old generation goes on until the drain deadline (2 s),
/// then ends at its next idle point with 57P01, never inside a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_sessions_end_between_transactions_after_the_deadline() {
    let s = setup("").await;
    let idle = s.client("app").await.unwrap();
    let busy = s.client("app").await.unwrap();
    busy.batch_execute("BEGIN").await.unwrap();
    s.db.set_password("app", "rotated-password").await;
    support::credentials_file(s.dir.path(), "app.json", "app", "rotated-password");
    // Once the new generation is in, new sessions get it (until then a new session may be
    // refused: the password changed in the database before the file).
    let rotated = Instant::now();
    let fresh = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = match s.client("app").await {
                Ok(c) => {
                    let gen: String = c
                        .query_one("SELECT current_setting('application_name')", &[])
                        .await
                        .unwrap()
                        .get(0);
                    if gen.ends_with("/g2") {
                        break c;
                    }
                    gen
                }
                Err(e) => e.to_string(),
            };
            assert!(Instant::now() < deadline, "no rotation: {seen}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // At the deadline the idle session is ended; the one in a transaction is not.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !idle.is_closed() {
        assert!(
            Instant::now() < deadline,
            "the idle old session was never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        rotated.elapsed() >= Duration::from_millis(1500),
        "ended before the 2 s deadline: {:?}",
        rotated.elapsed()
    );
    assert!(
        !busy.is_closed(),
        "a session inside a transaction is never cut"
    );
    busy.query_one("SELECT 1", &[])
        .await
        .expect("still inside its transaction");
    busy.batch_execute("COMMIT")
        .await
        .expect("the transaction ends normally");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !busy.is_closed() {
        assert!(Instant::now() < deadline, "not ended after its transaction");
        tokio::task::yield_now().await;
    }
    fresh.query_one("SELECT 1", &[]).await.unwrap();
}

/// More sessions than `pool.max_size`: the next waits for a place and gets 53300 naming the
/// limit after `checkout_timeout`; a place freed is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_max_size_wait_then_get_53300() {
    let s = setup("pool = { max_size = 1, checkout_timeout = \"500ms\" }").await;
    let first = s.client("app").await.unwrap();
    let started = Instant::now();
    let e = s.client("app").await.expect_err("no place");
    assert!(started.elapsed() >= Duration::from_millis(400));
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300");
    assert!(db.message().contains("max_size"), "{}", db.message());
    // The place freed when the first client leaves is the next one's (it waits for the daemon
    // to see the close, within checkout_timeout).
    drop(first);
    let next = s.client("app").await.expect("the freed place");
    next.query_one("SELECT 1", &[]).await.unwrap();
}

/// 50 real rotations (two roles taking turns, so the database accepts the new credentials
/// before credswap uses them) while pgbench opens a new connection per transaction and a
/// long-lived session runs transactions: pgbench sees no failure, and the long-lived session is
/// only ever ended between transactions (57P01, after the 1 s drain deadline), never inside one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rotations_under_load() {
    let s = setup("drain_timeout = \"1s\"").await;
    support::frontend::two_roles_and_a_ledger(&s).await;
    rotations_under_load(&s, 50, |i| support::frontend::rotate_password(&s, i)).await;
}

/// 50 rotations with Vault dynamic users (a new login role per rotation, made by OpenBao's
/// database engine, its lease revoked once its sessions are gone) under the same load: the
/// same guarantees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_vault_dynamic_rotations_under_load() {
    let (s, _bao) = support::frontend::vault_dynamic("drain_timeout = \"1s\"").await;
    rotations_under_load(&s, 50, |_| s.force_rotation()).await;
    // Every rotation made its own user; the drained generations' leases were revoked (their
    // users dropped), so only the last few remain.
    let users = s.login_roles().await;
    assert!(
        (1..=5).contains(&users),
        "{users} dynamic users of 51 remain: old leases were not revoked"
    );
}

/// Drives `rotations` rotations, each started by `rotate(i)` and waited for (the target's
/// generation moves on), while pgbench opens a new connection per transaction and a long-lived
/// session runs transactions back to back, reconnecting when it is ended. pgbench sees no
/// failure; the long-lived session is ended only between transactions (57P01, after the drain
/// deadline), never inside one; every committed row is in the table.
async fn rotations_under_load<F, Fut>(s: &support::frontend::Setup, rotations: u64, mut rotate: F)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let drivers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers");
    assert!(
        drivers.join("node_modules/pg").exists(),
        "node-pg is not installed: run dev/setup (npm ci in tests/drivers)"
    );
    let mut node = Command::new("node")
        .arg(drivers.join("node_pg_load.js"))
        .current_dir(&drivers)
        .env("PGHOST", s.socket_dir())
        .env("PGDATABASE", "app")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node runs (dev/setup installs it)");
    let _node_owned = support::owned::record(node.id(), "node");
    let node_stdin = node.stdin.take().expect("piped");
    let dir = s.socket_dir().display().to_string();
    let pgbench = std::thread::spawn(move || {
        Command::new("pgbench")
            .args([
                "-h", &dir, "-p", "5432", "-U", "x", "-n", "-C", "-c", "3", "-j", "1",
            ])
            .args(["-T", "30", "-f", "-", "app"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("piped")
                    .write_all(b"SELECT 1;\n")?;
                child.wait_with_output()
            })
            .expect("pgbench runs")
    });

    // The long-lived session: transactions back to back; reconnects when ended.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        let dir = s.socket_dir().to_path_buf();
        tokio::spawn(async move {
            let (mut committed, mut ended_between) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (client, conn) = tokio_postgres::Config::new()
                    .host_path(&dir)
                    .port(5432)
                    .dbname("app")
                    .user("x")
                    .connect(NoTls)
                    .await
                    .expect("a new session connects during rotations");
                tokio::spawn(conn);
                loop {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    // The first statement of a transaction is where an ended session shows.
                    if let Err(e) = client.batch_execute("BEGIN").await {
                        let code = e.as_db_error().map(|d| d.code().code().to_string());
                        assert!(
                            code.as_deref() == Some("57P01") || client.is_closed(),
                            "BEGIN failed on a live session: {e} ({code:?})"
                        );
                        ended_between += 1;
                        break;
                    }
                    client
                        .batch_execute("INSERT INTO public.ledger VALUES (1)")
                        .await
                        .expect("never cut inside a transaction");
                    client
                        .batch_execute("COMMIT")
                        .await
                        .expect("never cut inside a transaction");
                    committed += 1;
                }
            }
            (committed, ended_between)
        })
    };

    let (_, v, _) = s.daemon.get("/v1/targets/app").await;
    let mut generation = v["generation"]["id"].as_u64().expect("a live generation");
    let first = generation;
    for i in 1..=rotations {
        rotate(i).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, v, _) = s.daemon.get("/v1/targets/app").await;
            if v["generation"]["id"].as_u64().unwrap_or(0) > generation {
                generation = v["generation"]["id"].as_u64().unwrap();
                break;
            }
            assert!(Instant::now() < deadline, "rotation {i} never swapped: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(generation >= first + rotations, "generation {generation}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(node_stdin);
    let (committed, ended_between) = worker.await.unwrap();
    let node = tokio::task::spawn_blocking(move || node.wait_with_output())
        .await
        .unwrap()
        .expect("node ends when its stdin closes");
    let node_text =
        String::from_utf8_lossy(&node.stdout).into_owned() + &String::from_utf8_lossy(&node.stderr);
    assert!(
        node.status.success(),
        "node-pg under rotations:\n{node_text}"
    );
    let node_counts: serde_json::Value =
        serde_json::from_str(node_text.trim()).unwrap_or_else(|e| panic!("{e}: {node_text}"));
    assert_eq!(node_counts["failed"], 0, "{node_counts}");
    let node_committed = node_counts["committed"].as_u64().unwrap();
    assert!(node_committed > 0, "{node_counts}");
    let out = tokio::task::spawn_blocking(move || pgbench.join().unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench:\n{text}");
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    assert!(
        committed > 0 && ended_between > 0,
        "{committed} {ended_between}"
    );
    let admin = s.db.admin().await;
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
    assert_eq!(
        rows(1).await,
        committed,
        "every committed transaction is there, no other"
    );
    assert_eq!(rows(2).await, node_committed, "node-pg's too");
}

/// PostgreSQL restarted under the front end: sessions see the server's own error, new clients
/// get 08006 while it is down, and work again as soon as it is back, without touching credswap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_survived() {
    let mut s = setup("").await;
    let before = s.client("app").await.unwrap();
    before.query_one("SELECT 1", &[]).await.unwrap();
    s.db.stop();
    let e = before.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(before.is_closed(), "the session ends with the server: {e}");
    let e = s.client("app").await.expect_err("the server is down");
    let db = e.as_db_error().expect("an ErrorResponse from credswap");
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(db.message().contains("cannot reach"), "{}", db.message());
    support::assert_no_canary("a refusal", db.message());
    s.db.start_again();
    let after = s
        .client("app")
        .await
        .expect("works again once the server is back");
    after.query_one("SELECT 1", &[]).await.unwrap();
}

/// How many server connections the daemon keeps idle for `target` (its metric).
async fn idle_servers(s: &support::frontend::Setup, target: &str) -> i64 {
    let wanted =
        format!("credswap_postgres_server_sessions{{target=\"{target}\",state=\"idle\"}} ");
    s.daemon
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&wanted).and_then(|n| n.trim().parse().ok()))
        .unwrap_or(0)
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn backend_alive(s: &support::frontend::Setup, pid: i32) -> bool {
    s.count_sessions(&format!("pid = {pid}")).await == 1
}

/// Session pooling: a client that leaves between transactions leaves its server connection,
/// reset with DISCARD ALL, to the next client with the same parameters, which finds nothing of
/// the first one's session (settings, temporary tables, prepared statements, listens, advisory
/// locks). A client that leaves inside a transaction, or asks with other parameters, gets no
/// kept connection, and a rotation closes the kept ones of the old generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_are_reset_and_kept_between_clients() {
    let s = setup("").await;
    let first = s.client("app").await.unwrap();
    let pid = backend_pid(&first).await;
    let clean = |c: tokio_postgres::Client| async move {
        let row = c
            .query_one(
                "SELECT current_setting('search_path'), current_setting('application_name'), \
                 to_regclass('scratch') IS NULL, \
                 (SELECT count(*) FROM pg_prepared_statements), \
                 (SELECT count(*) FROM pg_listening_channels()), \
                 (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())",
                &[],
            )
            .await
            .unwrap();
        let state: (String, String, bool, i64, i64, i64) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
        );
        (c, state)
    };
    let (first, fresh) = clean(first).await;
    first
        .batch_execute(
            "SET search_path TO other; SET application_name = 'changed'; \
             CREATE TEMP TABLE scratch (x int); PREPARE p AS SELECT 1; LISTEN ch; \
             SELECT pg_advisory_lock(7)",
        )
        .await
        .unwrap();
    drop(first);
    until("the first client's connection is kept", || {
        idle_servers(&s, "app").then(|n| async move { n == 1 })
    })
    .await;

    let (_, status, _) = s.daemon.get("/v1/targets/app").await;
    assert_eq!(status["pool"]["postgres_idle_servers"], 1, "{status}");
    let (code, table, _) = s.daemon.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(table.contains("WIRE sess/kept"), "{table}");
    let next = s.client("app").await.unwrap();
    assert_eq!(
        backend_pid(&next).await,
        pid,
        "the kept connection serves the next client"
    );
    let (next, state) = clean(next).await;
    assert_eq!(state, fresh, "nothing of the first session is left");

    // Leaving inside a transaction: the connection is closed, the transaction's write lost.
    next.batch_execute("CREATE TABLE kept (x int)")
        .await
        .unwrap();
    next.batch_execute("BEGIN; INSERT INTO kept VALUES (1)")
        .await
        .unwrap();
    drop(next);
    until(
        "the server connection left inside a transaction is closed",
        || backend_alive(&s, pid).then(|alive| async move { !alive }),
    )
    .await;
    assert_eq!(idle_servers(&s, "app").await, 0);
    let third = s.client("app").await.unwrap();
    let third_pid = backend_pid(&third).await;
    assert_ne!(third_pid, pid);
    let rows: i64 = third
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the open transaction was not committed");
    drop(third);
    until("the third client's connection is kept", || {
        idle_servers(&s, "app").then(|n| async move { n == 1 })
    })
    .await;

    // Other parameters: a connection of its own.
    let (named, conn) = tokio_postgres::Config::new()
        .host_path(s.socket_dir())
        .port(5432)
        .user("whoever")
        .dbname("app")
        .application_name("another-app")
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_ne!(backend_pid(&named).await, third_pid);
    drop(named);

    // A rotation closes what the old generation kept.
    assert!(backend_alive(&s, third_pid).await);
    let (code, _, err) = s.daemon.cli(&["rotate", "app", "--force", "--wait"]);
    assert_eq!(code, 0, "{err}");
    until("the old generation's kept connection is closed", || {
        backend_alive(&s, third_pid).then(|alive| async move { !alive })
    })
    .await;
}

/// Clients waiting for a place among `pool.max_size` sessions get it in the order they came:
/// four clients queue behind a held session (each is seen waiting before the next comes), and
/// are served first come, first served as each one leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_are_served_in_arrival_order() {
    let s = setup("pool = { max_size = 1, checkout_timeout = \"20s\" }").await;
    let holder = s.client("app").await.unwrap();
    let waiting = || async {
        let wanted = "credswap_postgres_clients_waiting{target=\"app\"} ";
        s.daemon
            .metrics()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(wanted)
                    .and_then(|n| n.trim().parse::<i64>().ok())
            })
            .unwrap_or(0)
    };
    let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (dir, served) = (s.socket_dir().to_path_buf(), served.clone());
        clients.push(tokio::spawn(async move {
            let (client, conn) = tokio_postgres::Config::new()
                .host_path(&dir)
                .port(5432)
                .user("whoever")
                .dbname("app")
                .connect(NoTls)
                .await
                .expect("a place within checkout_timeout");
            tokio::spawn(conn);
            served.lock().unwrap().push(i);
            client.query_one("SELECT 1", &[]).await.unwrap();
        }));
        until(&format!("client {i} waits"), || {
            waiting().then(move |n| async move { n == i + 1 })
        })
        .await;
    }
    drop(holder);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(*served.lock().unwrap(), vec![0, 1, 2, 3]);
    assert_eq!(waiting().await, 0);
}

/// With the front end on, a generation is swapped in only once the front end's own login path
/// (a raw login: the same hosts, sslmode and credentials) has worked too. That path connects
/// upstream over TCP only, so a target on PostgreSQL's Unix socket, whose HTTP-API pool logs
/// in fine, gets no generation and says why; without `[postgres]` the same target is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_is_swapped_in_only_if_the_front_end_can_log_in_too() {
    let db = support::pg::Cluster::start_tls();
    db.create_role("app", support::CANARY_PASSWORD).await;
    db.allow_local("app").await;
    let dir = tempfile::tempdir().unwrap();
    let secret = support::credentials_file(dir.path(), "app.json", "app", support::CANARY_PASSWORD);
    let target = format!(
        "[[target]]\nname = \"app\"\nurl = \"postgresql:///postgres?host={}&port={}&sslmode=disable\"\nsource = {{ kind = \"file\", path = \"{}\" }}\n",
        db.socket_dir().display(),
        db.port(),
        secret.display()
    );
    let plain = support::daemon::Daemon::start(&target, "").await;
    plain.wait_ready().await;
    drop(plain);

    let wire = dir.path().join("wire");
    std::fs::create_dir(&wire).unwrap();
    let with_front_end = format!(
        "[postgres]\nsocket_dir = \"{}\"\n\n{target}",
        wire.display()
    );
    let d = support::daemon::Daemon::start(&with_front_end, "").await;
    until("the target says why it has no generation", || async {
        let (_, v, _) = d.get("/v1/targets/app").await;
        v["generation"].is_null()
            && v["reason"].as_str().is_some_and(|r| {
                r.contains("the PostgreSQL front end's login") && r.contains("TCP only")
            })
    })
    .await;
}

/// psycopg's view of its backend pid through the front end: in session mode the server's own
/// (a notification's sender is itself, and `pg_terminate_backend` of it ends that session); in
/// transaction mode one of credswap's, above any Linux pid, so it names no other backend.
const PID_SCRIPT: &str = r#"
import os, sys, psycopg
dsn = f"host={os.environ['PGHOST']} dbname=app"
mode = sys.argv[1]
c = psycopg.connect(dsn, autocommit=True)
pid = c.pgconn.backend_pid
if mode == "session":
    assert pid == c.execute("SELECT pg_backend_pid()").fetchone()[0], "the server's pid"
    c.execute("LISTEN ch")
    c.execute("NOTIFY ch, 'x'")
    n = next(c.notifies(timeout=5))
    assert n.pid == pid, (n.pid, pid)
    other = psycopg.connect(dsn, autocommit=True)
    assert other.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
    try:
        c.execute("SELECT 1")
        raise SystemExit("the terminated session still answered")
    except psycopg.OperationalError:
        pass
else:
    assert pid > 2 ** 22, pid
print("pid ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_see_the_servers_pid_in_session_mode_and_none_in_transaction_mode() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    for mode in ["session", "transaction"] {
        let s = setup(&format!("pool_mode = \"{mode}\"")).await;
        let out = Command::new(&python)
            .args(["-c", PID_SCRIPT, mode])
            .env("PGHOST", s.socket_dir())
            .output()
            .expect("the venv's python runs (dev/setup installs psycopg)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("pid ok"),
            "{mode}: {text}"
        );
    }
}
