//! Failover on real servers: a TLS primary and its streaming standbys (`pg_basebackup -R`),
//! the primary stopped, black-holed (a fault proxy in front of it) or killed under write load
//! through both front doors, a standby promoted; a primary fenced read-only; a failover while a
//! rotation builds its generation; and a `prefer-standby` read target that follows its standby
//! away and back.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::Daemon;
use support::frontend::until;
use support::pg::{pki, Cluster};
use support::{credentials_file, CANARY_PASSWORD};
use tokio_postgres::NoTls;

/// A primary with the role `app` and a table it may write, and its standby.
async fn pair() -> (Cluster, Cluster) {
    let primary = Cluster::start_tls();
    primary.create_role("app", CANARY_PASSWORD).await;
    primary
        .admin()
        .await
        .batch_execute(
            "CREATE TABLE writes (id bigserial PRIMARY KEY, via text NOT NULL);
             GRANT ALL ON writes, writes_id_seq TO app",
        )
        .await
        .unwrap();
    let standby = Cluster::standby_of(&primary);
    assert!(standby.in_recovery().await);
    (primary, standby)
}

fn url(ports: &[u16], attrs: &str) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("localhost:{p}")).collect();
    format!(
        "postgresql://{}/postgres?sslmode=verify-full&sslrootcert={}&target_session_attrs={attrs}",
        hosts.join(","),
        pki().ca_cert().display()
    )
}

struct Front {
    dir: tempfile::TempDir,
    daemon: Daemon,
}

/// A daemon with the PostgreSQL front end and one target per `(name, url, extra)`.
async fn daemon(targets: &[(&str, String, &str)]) -> Front {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = credentials_file(dir.path(), "app.json", "app", CANARY_PASSWORD);
    let mut config = format!(
        "[postgres]\nsocket_dir = \"{}\"\nsocket_mode = \"0666\"\n\n",
        dir.path().display()
    );
    for (name, url, extra) in targets {
        config += &format!(
            "[[target]]\nname = \"{name}\"\nurl = \"{url}\"\ndrain_timeout = \"2s\"\n\
             min_rotation_interval = \"0s\"\n{extra}\nsource = {{ kind = \"file\", path = \"{}\" }}\n\n",
            secret.display()
        );
    }
    let daemon = Daemon::start(&config, "").await;
    daemon.wait_ready().await;
    Front { dir, daemon }
}

impl Front {
    async fn client(&self, target: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(self.dir.path())
            .port(5432)
            .user("whoever")
            .dbname(target)
            .connect_timeout(Duration::from_secs(15))
            .connect(NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    async fn hosts(&self, target: &str) -> Vec<Value> {
        let (_, v, _) = self.daemon.get(&format!("/v1/targets/{target}")).await;
        v["pool"]["hosts"].as_array().cloned().unwrap_or_default()
    }

    /// A forced rotation of `target`, waited for: the status code and the report.
    async fn force_rotation(&self, target: &str) -> (u16, Value) {
        let (s, v, _) = self
            .daemon
            .call(
                "POST",
                &format!("/v1/targets/{target}/rotate"),
                Some(json!({"force": true, "wait": true})),
            )
            .await;
        (s, v)
    }

    /// The port of the server an API query on `target` ran on.
    async fn api_port(&self, target: &str) -> Option<i64> {
        let (s, v, _) = self
            .daemon
            .query(target, json!({"sql": "SELECT inet_server_port()"}))
            .await;
        (s == 200).then(|| v["rows"][0][0].as_i64()).flatten()
    }
}

/// One write's start, end and outcome.
#[derive(Clone, Copy)]
struct Attempt {
    started: Instant,
    ended: Instant,
    ok: bool,
    /// The port of the server the write landed on.
    port: Option<i64>,
    /// A wire write still unanswered 10 s after its cancel was sent.
    hung: bool,
}

const INSERT: &str = "INSERT INTO writes (via) VALUES ($1) RETURNING inet_server_port()";

/// Writers through the HTTP API and through the PostgreSQL front end until `stop`. With
/// `timeout`, they give up as applications do: the API request carries it as `timeout_ms`, and
/// a wire write not answered within it is cancelled (a `CancelRequest` to credswap), and then
/// waited for again.
fn writers(
    front: &Arc<Front>,
    stop: tokio::sync::watch::Receiver<bool>,
    log: &Arc<Mutex<Vec<Attempt>>>,
    timeout: Option<Duration>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..6 {
        let (front, stop, log) = (front.clone(), stop.clone(), log.clone());
        set.spawn(async move {
            while !*stop.borrow() {
                let started = Instant::now();
                let mut body = json!({"sql": INSERT, "params": [format!("api{i}")]});
                if let Some(t) = timeout {
                    body["timeout_ms"] = json!(t.as_millis() as u64);
                }
                let (s, v, _) = front.daemon.query("rw", body).await;
                log.lock().unwrap().push(Attempt {
                    started,
                    ended: Instant::now(),
                    ok: s == 200,
                    port: v["rows"][0][0].as_i64(),
                    hung: false,
                });
            }
        });
    }
    for i in 0..4 {
        let (front, stop, log) = (front.clone(), stop.clone(), log.clone());
        set.spawn(async move {
            let mut client = None;
            while !*stop.borrow() {
                let started = Instant::now();
                if client.is_none() {
                    client = front.client("rw").await.ok();
                }
                let (port, hung) = match &client {
                    Some(c) => wire_write(c, &format!("wire{i}"), timeout).await,
                    None => (None, false),
                };
                if port.is_none() {
                    client = None;
                }
                log.lock().unwrap().push(Attempt {
                    started,
                    ended: Instant::now(),
                    ok: port.is_some(),
                    port,
                    hung,
                });
            }
        });
    }
    set
}

/// One write through the PostgreSQL front end: the port it landed on, and whether it hung
/// (see [`Attempt::hung`]).
async fn wire_write(
    client: &tokio_postgres::Client,
    via: &str,
    timeout: Option<Duration>,
) -> (Option<i64>, bool) {
    let port = |r: Result<tokio_postgres::Row, tokio_postgres::Error>| {
        r.ok().map(|row| i64::from(row.get::<_, i32>(0)))
    };
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&via];
    let write = client.query_one(INSERT, &params);
    let Some(timeout) = timeout else {
        return (port(write.await), false);
    };
    let mut write = std::pin::pin!(write);
    if let Ok(r) = tokio::time::timeout(timeout, &mut write).await {
        return (port(r), false);
    }
    let _ = client.cancel_token().cancel_query(NoTls).await;
    match tokio::time::timeout(Duration::from_secs(10), &mut write).await {
        Ok(r) => (port(r), false),
        Err(_) => (None, true),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_write_target_follows_a_promotion() {
    let (mut primary, standby) = pair().await;
    let front = Arc::new(
        daemon(&[(
            "rw",
            url(&[primary.port(), standby.port()], "read-write"),
            "pool_mode = \"transaction\"\npool = { max_size = 8, checkout_timeout = \"10s\", connect_timeout = \"2s\" }",
        )])
        .await,
    );
    assert_eq!(front.api_port("rw").await, Some(primary.port() as i64));
    let hosts = front.hosts("rw").await;
    assert_eq!(hosts[0]["role"], "primary", "{hosts:?}");
    assert!(hosts[0]["connections"].as_u64() > Some(0), "{hosts:?}");
    assert_eq!(hosts[1]["connections"], 0, "{hosts:?}");

    let log = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut load = writers(&front, stop, &log, None);
    until("writes through both front doors", || {
        let log = log.clone();
        async move { log.lock().unwrap().iter().filter(|a| a.ok).count() >= 50 }
    })
    .await;

    // The primary stops. A rotation while no listed server is writable swaps nothing in;
    // the live generation keeps its place. Then the standby is promoted.
    let stopped_at = Instant::now();
    primary.stop();
    let down_at = Instant::now();
    let (s, v) = front.force_rotation("rw").await;
    assert_eq!((s, v["result"].as_str()), (200, Some("failed")), "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("target_session_attrs=read-write"),
        "{v}"
    );
    let promote_took = standby.promote().await;
    let promoted_at = Instant::now();
    until("a write succeeds after the promotion", || {
        let log = log.clone();
        async move {
            log.lock()
                .unwrap()
                .iter()
                .any(|a| a.ok && a.started > promoted_at)
        }
    })
    .await;
    // Half a second more of load on the new primary.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send_replace(true);
    while load.join_next().await.is_some() {}

    let attempts = log.lock().unwrap().clone();
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.ok).collect();
    let in_flight = failed.iter().filter(|a| a.started < stopped_at).count();
    let meanwhile = failed.len() - in_flight;
    let first_write = attempts
        .iter()
        .filter(|a| a.ok && a.port == Some(i64::from(standby.port())))
        .map(|a| a.ended - stopped_at)
        .min()
        .expect("a write landed on the new primary");
    eprintln!(
        "failover: {} writes, {} failed ({in_flight} in flight at the stop, {meanwhile} after it); \
         pg_ctl stop took {:?}, pg_promote {promote_took:?}; stop to first successful write {first_write:?}",
        attempts.len(),
        failed.len(),
        down_at - stopped_at
    );
    assert!(
        failed.iter().all(|a| a.started < promoted_at),
        "a write that arrived after the promotion finished failed"
    );
    assert!(
        failed
            .iter()
            .all(|a| a.ended - a.started < Duration::from_secs(12)),
        "a write waited past checkout_timeout"
    );

    // The target is on the new primary, which status and metrics show; the failover was an
    // event.
    assert_eq!(front.api_port("rw").await, Some(standby.port() as i64));
    let hosts = front.hosts("rw").await;
    assert_eq!(hosts[1]["role"], "primary", "{hosts:?}");
    assert!(hosts[1]["connections"].as_u64() > Some(0), "{hosts:?}");
    assert_eq!(hosts[0]["connections"], 0, "{hosts:?}");
    let metrics = front.daemon.metrics().await;
    let rw = format!("localhost:{}", standby.port());
    assert!(
        metrics.contains(&format!(
            "credswap_server_connections{{target=\"rw\",host=\"{rw}\",role=\"primary\"}}"
        )),
        "{metrics}"
    );
    until("the failover event", || {
        let front = front.clone();
        async move {
            front
                .daemon
                .metrics()
                .await
                .contains("credswap_failovers_total{target=\"rw\"}")
        }
    })
    .await;

    // The old primary comes back as a standby of the new one. A rotation now builds its
    // generation on the writable server only (the first listed host is a standby).
    primary.rejoin_as_standby_of(&standby);
    assert!(primary.in_recovery().await);
    let (s, v) = front.force_rotation("rw").await;
    assert_eq!((s, v["result"].as_str()), (200, Some("swapped")), "{v}");
    let client = front.client("rw").await.unwrap();
    for _ in 0..5 {
        assert_eq!(front.api_port("rw").await, Some(standby.port() as i64));
        let port: i32 = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(port as u16, standby.port());
    }
    let hosts = front.hosts("rw").await;
    assert_eq!(hosts[0]["role"], "standby", "{hosts:?}");
    assert_eq!(hosts[0]["connections"], 0, "{hosts:?}");
    assert!(hosts[1]["connections"].as_u64() > Some(0), "{hosts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefer_standby_target_reads_from_the_standby_and_falls_back() {
    let (primary, mut standby) = pair().await;
    let front = Arc::new(
        daemon(&[
            (
                "ro",
                url(&[primary.port(), standby.port()], "prefer-standby"),
                "pool = { max_size = 4, checkout_timeout = \"10s\", connect_timeout = \"2s\" }",
            ),
            (
                "standby_only",
                url(&[primary.port(), standby.port()], "standby"),
                "pool = { max_size = 2, checkout_timeout = \"1s\", connect_timeout = \"1s\" }",
            ),
        ])
        .await,
    );
    let in_recovery = |front: Arc<Front>| async move {
        let (s, v, _) = front
            .daemon
            .query("ro", json!({"sql": "SELECT pg_is_in_recovery()"}))
            .await;
        (s == 200).then(|| v["rows"][0][0].as_bool()).flatten()
    };
    for _ in 0..10 {
        assert_eq!(in_recovery(front.clone()).await, Some(true));
    }
    let wire = front.client("ro").await.unwrap();
    let r: bool = wire
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(r, "the wire front end reads from the standby too");
    drop(wire);

    // The standby stops: reads go to the primary; a standby-only target has nothing to serve
    // and says so within its checkout_timeout.
    standby.stop();
    until("reads served by the primary", || {
        let front = front.clone();
        async move { in_recovery(front).await == Some(false) }
    })
    .await;
    for _ in 0..10 {
        assert_eq!(in_recovery(front.clone()).await, Some(false));
    }
    let asked = Instant::now();
    let (s, v, _) = front
        .daemon
        .query("standby_only", json!({"sql": "SELECT 1"}))
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    let hosts = front.hosts("ro").await;
    assert_eq!(hosts[0]["role"], "primary", "{hosts:?}");
    assert_eq!(hosts[1]["down"], true, "{hosts:?}");

    // The standby is back: reads go back to it without a rotation.
    standby.start_again();
    until("reads back on the standby", || {
        let front = front.clone();
        async move {
            for _ in 0..8 {
                if in_recovery(front.clone()).await != Some(true) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let hosts = front.hosts("ro").await;
    assert_eq!(hosts[1]["role"], "standby", "{hosts:?}");
}

/// Load on `front` until `done` holds of what was logged.
async fn load_until(
    log: &Arc<Mutex<Vec<Attempt>>>,
    what: &str,
    done: impl Fn(&[Attempt]) -> bool + Clone,
) {
    until(what, || {
        let (log, done) = (log.clone(), done.clone());
        async move { done(&log.lock().unwrap()) }
    })
    .await;
}

/// The first successful write on the server listening on `port`, after `since`: when it ended.
fn first_write_on(attempts: &[Attempt], port: u16, since: Instant) -> Option<Instant> {
    attempts
        .iter()
        .filter(|a| a.ok && a.port == Some(i64::from(port)) && a.started >= since)
        .map(|a| a.ended)
        .min()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_write_target_leaves_a_black_holed_primary_then_a_killed_one() {
    use std::net::SocketAddr;
    use support::faultproxy::{FaultProxy, Faults};

    // a is reached through a fault proxy; b and c are its standbys.
    let (a, mut b) = pair().await;
    let c = Cluster::standby_of(&a);
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], a.port()))).await;
    let front = Arc::new(
        daemon(&[
            (
                "rw",
                url(&[proxy.port(), b.port(), c.port()], "read-write"),
                "pool_mode = \"transaction\"\npool = { max_size = 8, checkout_timeout = \"10s\", connect_timeout = \"1s\" }",
            ),
            (
                "rws",
                url(&[proxy.port(), b.port(), c.port()], "read-write"),
                "pool_mode = \"session\"\npool = { max_size = 2, checkout_timeout = \"10s\", connect_timeout = \"1s\" }",
            ),
        ])
        .await,
    );
    let client_timeout = Duration::from_secs(1);
    // A session-mode client too, connected before the silence.
    let session = front.client("rws").await.unwrap();
    assert_eq!(
        wire_write(&session, "session", None).await.0,
        Some(i64::from(a.port()))
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut load = writers(&front, stop, &log, Some(client_timeout));
    load_until(&log, "writes through the proxy", |l| {
        l.len() >= 50 && first_write_on(l, a.port(), l[0].started).is_some()
    })
    .await;

    // The network to a goes silent: connections stay open, nothing comes back. b is promoted.
    let silenced = Instant::now();
    proxy.set(Faults {
        black_hole: true,
        ..Faults::default()
    });
    b.promote().await;
    // The session-mode write times out and is cancelled; the cancel cannot reach a, so the
    // session is ended with 08006 rather than left waiting.
    let asked = Instant::now();
    let (port, hung) = wire_write(&session, "session", Some(client_timeout)).await;
    assert_eq!(
        (port, hung),
        (None, false),
        "the session-mode write neither hung nor landed"
    );
    assert!(asked.elapsed() < client_timeout + Duration::from_secs(4));
    until("the session on the silent host is ended", || async {
        session.is_closed()
    })
    .await;
    load_until(&log, "a write on b", |l| {
        first_write_on(l, b.port(), silenced).is_some()
    })
    .await;
    let on_b = first_write_on(&log.lock().unwrap(), b.port(), silenced).unwrap();
    load_until(&log, "100 writes on b", |l| {
        l.iter().filter(|w| w.ok && w.started > on_b).count() >= 100
    })
    .await;

    // b is killed (SIGKILL: no goodbye to anyone); c, still a standby of a, is promoted.
    let killed = Instant::now();
    b.kill();
    c.promote().await;
    let promoted = Instant::now();
    load_until(&log, "a write on c", |l| {
        first_write_on(l, c.port(), killed).is_some()
    })
    .await;
    let on_c = first_write_on(&log.lock().unwrap(), c.port(), killed).unwrap();
    load_until(&log, "100 writes on c", |l| {
        l.iter().filter(|w| w.ok && w.started > on_c).count() >= 100
    })
    .await;
    stop_tx.send_replace(true);
    while load.join_next().await.is_some() {}

    let attempts = log.lock().unwrap().clone();
    let failed: Vec<&Attempt> = attempts.iter().filter(|w| !w.ok).collect();
    let black_holed = failed.iter().filter(|w| w.started < killed).count();
    eprintln!(
        "black hole then kill: {} writes, {} failed ({black_holed} in the black hole); \
         silence to first write on b {:?}, kill to first write on c {:?}",
        attempts.len(),
        failed.len(),
        on_b - silenced,
        on_c - killed
    );
    // Nothing waited on the silent host: each write the black hole caught failed within its
    // timeout and a cancel's connect_timeout (1 s each), and none hung.
    assert!(black_holed > 0, "the black hole caught no write");
    assert!(failed.iter().all(|w| !w.hung), "a write hung");
    assert!(
        failed
            .iter()
            .all(|w| w.ended - w.started < client_timeout + Duration::from_secs(4)),
        "a write took past its timeout and a cancel's"
    );
    // Once writes landed on b, none failed but those in flight when b was killed or sent
    // before c's promotion finished.
    for w in &failed {
        assert!(
            w.started < on_b || (w.ended >= killed && w.started < promoted),
            "a write failed {:?} after service resumed on b, or {:?} after c's promotion",
            w.started.saturating_duration_since(on_b),
            w.started.saturating_duration_since(promoted)
        );
    }

    // Status: a is down (unreachable), b down, c the primary with the connections.
    let hosts = front.hosts("rw").await;
    assert_eq!(hosts[0]["down"], true, "{hosts:?}");
    assert_eq!(hosts[0]["connections"], 0, "{hosts:?}");
    assert_eq!(hosts[1]["down"], true, "{hosts:?}");
    assert_eq!(hosts[1]["connections"], 0, "{hosts:?}");
    assert_eq!(hosts[2]["role"], "primary", "{hosts:?}");
    assert!(hosts[2]["connections"].as_u64() > Some(0), "{hosts:?}");
    let (code, out, err) = front.daemon.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    let on_c_line = format!("localhost:{}", c.port());
    assert!(
        out.lines()
            .any(|l| l.starts_with("rw ") && l.contains(&on_c_line) && l.contains(" primary ")),
        "{out}"
    );
}

/// Writes through `client` until one fails (a reload reaches each backend in its own time);
/// until then each must land on the server at `on`.
async fn first_refusal(client: &tokio_postgres::Client, on: u16) -> tokio_postgres::Error {
    for _ in 0..200 {
        match client.query_one(INSERT, &[&"fenced"]).await {
            Ok(row) => assert_eq!(row.get::<_, i32>(0) as u16, on, "a write moved first"),
            Err(e) => return e,
        }
    }
    panic!("200 writes after the fence all succeeded");
}

async fn session_pid(client: &tokio_postgres::Client) -> i32 {
    let row = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap();
    row.get(0)
}

/// The SQLSTATE of a failed wire statement.
fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_primary_is_left_and_a_failover_during_a_rotation_is_followed() {
    use std::net::SocketAddr;
    use support::faultproxy::{FaultProxy, Faults};

    // a is reached through a fault proxy (to hold a rotation's connection to it); b is its
    // standby. `rw` is used through the wire, with one server connection, so a churned
    // connection would show as a new backend; `api` through the HTTP API. Each has its own
    // hosts' book, so each must see the fence for itself.
    let (a, b) = pair().await;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], a.port()))).await;
    let front = Arc::new(
        daemon(&[
            (
                "rw",
                url(&[proxy.port(), b.port()], "read-write"),
                "pool_mode = \"transaction\"\npool = { max_size = 1, checkout_timeout = \"10s\", connect_timeout = \"5s\" }",
            ),
            (
                "api",
                url(&[proxy.port(), b.port()], "read-write"),
                "pool = { max_size = 2, checkout_timeout = \"10s\", connect_timeout = \"5s\" }",
            ),
            (
                "rws",
                url(&[proxy.port(), b.port()], "read-write"),
                "pool_mode = \"session\"\npool = { max_size = 2, checkout_timeout = \"10s\", connect_timeout = \"5s\" }",
            ),
        ])
        .await,
    );
    assert_eq!(front.api_port("api").await, Some(i64::from(a.port())));
    let wire = front.client("rw").await.unwrap();
    let session = front.client("rws").await.unwrap();
    let backend = || async {
        let row = wire
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap();
        row.get::<_, i32>(0)
    };
    let write = |via: &'static str| {
        let wire = &wire;
        async move {
            wire.query_one(INSERT, &[&via])
                .await
                .map(|row| row.get::<_, i32>(0) as u16)
        }
    };

    // A client's own READ ONLY transaction answers 25006 and leaves the connection alone.
    let before = backend().await;
    let e = wire
        .batch_execute("BEGIN READ ONLY; INSERT INTO writes (via) VALUES ('ro')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("25006"), "{e}");
    wire.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        backend().await,
        before,
        "the connection was left after the client's own 25006"
    );
    assert_eq!(write("wire").await.unwrap(), a.port());
    // The same in session mode, where the 25006 has the host looked at again with a login of
    // its own (seen in status as a newer `last_seen_at`): still writable, so the session goes
    // on.
    let session_backend = session_pid(&session).await;
    let seen = front.hosts("rws").await[0]["last_seen_at"].clone();
    let e = session
        .batch_execute("BEGIN READ ONLY; INSERT INTO writes (via) VALUES ('ro')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("25006"), "{e}");
    session.batch_execute("ROLLBACK").await.unwrap();
    until("the session-mode host looked at again", || {
        let (front, seen) = (front.clone(), seen.clone());
        async move { front.hosts("rws").await[0]["last_seen_at"] != seen }
    })
    .await;
    assert_eq!(session_pid(&session).await, session_backend);

    // a is fenced (default_transaction_read_only by reload, as a failover tool does) and b
    // promoted. The first write each front door sends there after the reload gets 25006; the
    // next lands on b.
    let admin = a.admin().await;
    admin
        .batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    b.promote().await;
    let e = first_refusal(&wire, a.port()).await;
    assert_eq!(sqlstate(&e), Some("25006"), "{e}");
    match write("wire").await {
        Ok(port) => assert_eq!(port, b.port(), "the wire front end left a"),
        Err(e) => panic!("the write after 25006 failed: {e:?}"),
    }
    let mut api_refused = None;
    for _ in 0..200 {
        let (s, v, _) = front
            .daemon
            .query("api", json!({"sql": INSERT, "params": ["api"]}))
            .await;
        match v["rows"][0][0].as_i64() {
            Some(port) if s == 200 => {
                assert_eq!(
                    port,
                    i64::from(a.port()),
                    "an API write moved before any 25006"
                );
            }
            _ => {
                api_refused = Some(v);
                break;
            }
        }
    }
    let v = api_refused.expect("an API write on the fenced primary was refused");
    assert!(v.to_string().contains("25006"), "{v}");
    assert_eq!(
        front.api_port("api").await,
        Some(i64::from(b.port())),
        "the API left a"
    );
    // A session-mode session on the fenced primary: its 25006 has the host looked at, which
    // finds it read-only, and the session is ended at once (it is idle); the next one is on b.
    let e = first_refusal(&session, a.port()).await;
    assert_eq!(sqlstate(&e), Some("25006"), "{e}");
    until("the session on the fenced primary is ended", || async {
        session.is_closed()
    })
    .await;
    let session = front.client("rws").await.unwrap();
    let port: i32 = session
        .query_one(INSERT, &[&"session"])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port as u16, b.port(), "a new session-mode session is on b");
    for target in ["rw", "api"] {
        let hosts = front.hosts(target).await;
        assert_eq!(
            (
                &hosts[0]["role"],
                &hosts[0]["read_only"],
                &hosts[0]["connections"]
            ),
            (&json!("primary"), &json!(true), &json!(0)),
            "{target}: {hosts:?}"
        );
        assert_eq!(hosts[1]["role"], "primary", "{target}: {hosts:?}");
    }

    // A rotation starts; its first connection (to a, listed first) is held at the proxy. While
    // it is held, b stops and a is writable again. The generation swapped in is on a.
    proxy.set(Faults {
        connect_delay: Duration::from_secs(2),
        ..Faults::default()
    });
    let accepted = proxy.accepted();
    let rotation = tokio::spawn({
        let front = front.clone();
        async move { front.force_rotation("rw").await }
    });
    until("the rotation's connection at the proxy", || async {
        proxy.accepted() > accepted
    })
    .await;
    b.stop();
    admin
        .batch_execute("ALTER SYSTEM RESET default_transaction_read_only")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    proxy.heal();
    let (s, v) = rotation.await.unwrap();
    assert_eq!((s, v["result"].as_str()), (200, Some("swapped")), "{v}");
    assert_eq!(front.api_port("rw").await, Some(i64::from(a.port())));
    drop(wire);
    let wire = front.client("rw").await.unwrap();
    let port: i32 = wire
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port as u16, a.port());
    // The new generation's connections are all on a; b it never reached.
    let hosts = front.hosts("rw").await;
    assert_eq!(
        (&hosts[0]["role"], &hosts[0]["read_only"]),
        (&json!("primary"), &json!(false)),
        "{hosts:?}"
    );
    assert!(hosts[0]["connections"].as_u64() > Some(0), "{hosts:?}");
    assert_eq!(hosts[1]["connections"], 0, "{hosts:?}");
}
