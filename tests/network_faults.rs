//! Network faults between credswap and PostgreSQL or a secret store, made by a fault proxy on
//! loopback (tests/support/faultproxy.rs), against the real daemon. Every request a test sends
//! is answered — with a result or a typed error — within a stated deadline; none is lost.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::Daemon;
use support::faultproxy::{FaultProxy, Faults};
use support::pg::{pki, Cluster};
use support::servers::{Bao, Moto};
use support::CANARY_PASSWORD;

/// What a batch of requests got: answers by code, and whether any missed its deadline.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    errors: Vec<(u16, String)>,
    late: Vec<Duration>,
}

/// One query through the API, bounded by `deadline`.
async fn query(d: &Daemon, body: Value, deadline: Duration, tally: &mut Tally) {
    let started = Instant::now();
    match tokio::time::timeout(deadline, d.query("app", body)).await {
        Ok((200, _, _)) => tally.ok += 1,
        Ok((status, v, text)) => {
            let code = v["error"]["code"].as_str().unwrap_or_default().to_string();
            assert!(
                ["timeout", "unavailable", "pool_exhausted"].contains(&code.as_str()),
                "an untyped or unexpected error ({status}): {text}"
            );
            tally.errors.push((status, text));
        }
        Err(_) => tally.late.push(started.elapsed()),
    }
}

/// `SELECT 1` through the API, bounded by 5 s.
async fn select_1(d: &Daemon, tally: &mut Tally) {
    query(d, json!({"sql": "SELECT 1"}), Duration::from_secs(5), tally).await
}

fn secret_file(dir: &Path) -> String {
    support::credentials_file(dir, "app.json", "app", CANARY_PASSWORD)
        .display()
        .to_string()
}

/// A target whose PostgreSQL traffic goes through `port`.
fn target_toml(port: u16, pool: &str, source: &str) -> String {
    format!(
        "[[target]]\nname = \"app\"\nurl = \"postgresql://localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}\"\n\
         min_rotation_interval = \"0s\"\ndrain_timeout = \"2s\"\nretry = {{ initial = \"200ms\", max = \"1s\" }}\n\
         pool = {{ {pool} }}\nsource = {source}\n",
        pki().ca_cert().display()
    )
}

/// A cluster, a fault proxy in front of it, and the daemon using the proxy.
async fn through_proxy(pool: &str) -> (Cluster, FaultProxy, tempfile::TempDir, Daemon) {
    let db = Cluster::start_tls();
    db.create_role("app", CANARY_PASSWORD).await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], db.port()).into()).await;
    let dir = tempfile::tempdir().unwrap();
    let source = format!(
        "{{ kind = \"file\", path = \"{}\" }}",
        secret_file(dir.path())
    );
    let d = Daemon::start(&target_toml(proxy.port(), pool, &source), "").await;
    d.wait_ready().await;
    (db, proxy, dir, d)
}

async fn generation(d: &Daemon) -> u64 {
    d.get("/v1/targets/app").await.1["generation"]["id"]
        .as_u64()
        .expect("a live generation")
}

async fn rotate(d: &Daemon, force: bool) -> (Value, Duration) {
    let started = Instant::now();
    let (status, report, text) = d
        .call(
            "POST",
            "/v1/targets/app/rotate",
            Some(json!({"force": force, "wait": true})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    (report, started.elapsed())
}

/// Queries, one after the other, each bounded by 5 s, until [`Load::finish`].
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Tally>,
}

impl Load {
    fn start(d: Arc<Daemon>) -> Load {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tally = Tally::default();
            while !*stopped.borrow() {
                select_1(&d, &mut tally).await;
            }
            tally
        });
        Load { stop, task }
    }

    /// Stops the load and checks that the live generation answered every request.
    async fn finish(self) {
        self.stop.send(true).unwrap();
        let tally = self.task.await.unwrap();
        assert!(tally.ok > 0);
        assert!(
            tally.errors.is_empty() && tally.late.is_empty(),
            "the live generation failed requests: {tally:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_black_holed_requests_fail_in_time_and_the_pool_recovers() {
    let (_db, proxy, _dir, d) = through_proxy(
        "max_size = 4, checkout_timeout = \"500ms\", connect_timeout = \"1s\", statement_timeout = \"5s\"",
    )
    .await;
    let pid = d.pid();
    let mut tally = Tally::default();
    select_1(&d, &mut tally).await;
    assert_eq!(tally.ok, 1);

    proxy.set(Faults {
        black_hole: true,
        ..Faults::default()
    });
    // The statement timeout (300 ms) plus the cancel request's connect timeout (1 s) bound
    // every answer; 3 s leaves room for a loaded machine.
    let mut tally = Tally::default();
    let answers = futures_util::future::join_all((0..8).map(|_| async {
        let mut t = Tally::default();
        query(
            &d,
            json!({"sql": "SELECT 1", "timeout_ms": 300}),
            Duration::from_secs(3),
            &mut t,
        )
        .await;
        t
    }))
    .await;
    for t in answers {
        tally.ok += t.ok;
        tally.errors.extend(t.errors);
        tally.late.extend(t.late);
    }
    assert!(tally.late.is_empty(), "requests hung: {:?}", tally.late);
    assert_eq!(tally.ok, 0, "nothing can succeed through a black hole");
    assert_eq!(tally.errors.len(), 8, "every request got a typed error");

    proxy.heal();
    // The held bytes arrive now; the pool answers again without a restart.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut t = Tally::default();
        select_1(&d, &mut t).await;
        assert!(t.late.is_empty(), "a request hung after healing");
        if t.ok == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the pool did not recover: {t:?}");
    }
    let mut tally = Tally::default();
    for _ in 0..20 {
        select_1(&d, &mut tally).await;
    }
    assert_eq!(tally.ok, 20, "{tally:?}");
    assert_eq!(d.pid(), pid, "no restart");
    assert_eq!(d.get("/v1/health").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_mid_query_give_a_clear_error_and_are_not_reused() {
    // One connection: the reset one is the only one, so what follows must be a new one.
    let (db, proxy, _dir, d) = through_proxy("max_size = 1, checkout_timeout = \"2s\"").await;
    let d = Arc::new(d);
    let running = {
        let d = d.clone();
        tokio::spawn(async move {
            let mut t = Tally::default();
            query(
                &d,
                json!({"sql": "SELECT pg_sleep(5)::text"}),
                Duration::from_secs(8),
                &mut t,
            )
            .await;
            t
        })
    };
    // Wait (bounded) until the statement runs on the server.
    db.wait_running("SELECT pg_sleep(5)", 1).await;
    let started = Instant::now();
    assert!(proxy.reset_all() >= 1);
    let t = running.await.unwrap();
    assert!(t.late.is_empty(), "the request hung after the reset");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the error took {:?}",
        started.elapsed()
    );
    let (status, text) = t.errors.first().expect("the reset request fails").clone();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("connection"), "not a clear error: {text}");

    let mut tally = Tally::default();
    for _ in 0..10 {
        select_1(&d, &mut tally).await;
    }
    assert_eq!(
        tally.ok, 10,
        "a broken connection was handed out again: {tally:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_new_pool_connects_too_slowly_is_not_swapped_in() {
    let (_db, proxy, _dir, d) =
        through_proxy("max_size = 2, min_idle = 1, connect_timeout = \"1s\"").await;
    let d = Arc::new(d);
    let before = generation(&d).await;
    let load = Load::start(d.clone());

    // Open connections keep their speed; new ones take longer than connect_timeout.
    proxy.set(Faults {
        connect_delay: Duration::from_secs(2),
        ..Faults::default()
    });
    let (report, took) = rotate(&d, true).await;
    assert_eq!(report["result"], "failed", "{report}");
    assert_eq!(report["step"], "connect", "{report}");
    assert!(took < Duration::from_secs(4), "the rotation took {took:?}");
    assert_eq!(generation(&d).await, before, "no swap");

    proxy.heal();
    let (report, _) = rotate(&d, true).await;
    assert_eq!(report["result"], "swapped", "{report}");
    load.finish().await;
}

/// Rotations against a store behind a proxy that is slow past the source's timeout, then
/// black-holed: each fails at fetch in time, the live generation keeps serving, the rotator
/// retries, and all heals once the store answers.
async fn store_faults(d: Arc<Daemon>, proxy: &FaultProxy) {
    let before = generation(&d).await;
    let load = Load::start(d.clone());
    for faults in [
        Faults {
            latency: Duration::from_secs(3),
            ..Faults::default()
        },
        Faults {
            black_hole: true,
            ..Faults::default()
        },
    ] {
        proxy.set(faults);
        let (report, took) = rotate(&d, true).await;
        assert_eq!(report["result"], "failed", "{faults:?}: {report}");
        assert_eq!(report["step"], "fetch", "{faults:?}: {report}");
        // The source's timeout is 1 s.
        assert!(took < Duration::from_secs(3), "{faults:?}: took {took:?}");
        assert_eq!(generation(&d).await, before, "no swap");
        let (_, status, _) = d.get("/v1/targets/app").await;
        assert_eq!(status["state"], "degraded", "{status}");
    }
    // A retry is scheduled with backoff; once the store answers one succeeds on its own.
    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut finished = next_rotation(&d).await;
        let (_, status, _) = d.get("/v1/targets/app").await;
        if status["state"] == "ready" {
            finished.abort();
            assert_eq!(status["last_rotation"]["trigger"], "retry", "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "never healed: {status}");
        if tokio::time::timeout(Duration::from_secs(5), &mut finished)
            .await
            .is_err()
        {
            finished.abort();
        }
    }
    load.finish().await;
}

/// Subscribes to the event stream; the task ends at the next finished rotation.
async fn next_rotation(d: &Daemon) -> tokio::task::JoinHandle<()> {
    let (tx, subscribed) = tokio::sync::oneshot::channel();
    let socket = d.socket_path().to_path_buf();
    let task = tokio::spawn(async move {
        let _ = credswap::api::client::events(&socket, "/v1/events", tx, |name, _| {
            name != "rotation_finished"
        })
        .await;
    });
    tokio::time::timeout(Duration::from_secs(5), subscribed)
        .await
        .expect("subscribed to /v1/events")
        .expect("the event stream started");
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_black_holed_aws_store_fails_rotations_cleanly() {
    let moto = Moto::start();
    moto.client()
        .await
        .create_secret()
        .name("app/db")
        .secret_string(json!({"username": "app", "password": CANARY_PASSWORD}).to_string())
        .send()
        .await
        .unwrap();
    let db = Cluster::start_tls();
    db.create_role("app", CANARY_PASSWORD).await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], moto.port()).into()).await;
    let source = format!(
        "{{ kind = \"aws\", secret_id = \"app/db\", region = \"us-east-1\", endpoint_url = \"http://127.0.0.1:{}\", timeout = \"1s\" }}",
        proxy.port()
    );
    let d = Daemon::start(&target_toml(db.port(), "max_size = 2", &source), "").await;
    d.wait_ready().await;
    store_faults(Arc::new(d), &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_black_holed_vault_store_fails_rotations_cleanly() {
    let bao = Bao::start();
    bao.kv2_put(
        "app/db",
        json!({"username": "app", "password": CANARY_PASSWORD}),
    )
    .await;
    let db = Cluster::start_tls();
    db.create_role("app", CANARY_PASSWORD).await;
    let port: u16 = bao.address().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = support::write_private(dir.path(), "token", support::servers::BAO_ROOT_TOKEN);
    let source = format!(
        "{{ kind = \"vault\", address = \"http://127.0.0.1:{}\", path = \"app/db\", timeout = \"1s\", auth = {{ method = \"token\", token_file = \"{}\" }} }}",
        proxy.port(),
        token.display()
    );
    let d = Daemon::start(&target_toml(db.port(), "max_size = 2", &source), "").await;
    d.wait_ready().await;
    store_faults(Arc::new(d), &proxy).await;
}
