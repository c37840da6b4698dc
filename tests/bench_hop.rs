//! A measurement, not a test (ignored by default): `SELECT 1` on a target's pool in-process
//! against the same pool through the Unix socket API, in one run.
//!
//! cargo nextest run --run-ignored only --test bench_hop --no-capture

mod support;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use credswap::api::{self, socket, ApiState};
use credswap::config::{Config, Source};
use credswap::metrics::Metrics;
use credswap::rotation::Engine;
use credswap::secret::file::{FileFormat, FileSourceConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use support::pg::Cluster;

const RUN: Duration = Duration::from_secs(3);

fn report(label: &str, clients: usize, mut lat: Vec<Duration>) {
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    eprintln!(
        "{label:>6} clients={clients:>2} ops/s={:>8.0} p50={:>7.1}us p99={:>7.1}us",
        lat.len() as f64 / RUN.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it with --run-ignored only --no-capture"]
async fn select_1_in_process_vs_through_the_socket() {
    let db = Cluster::start_tls();
    db.create_role("app", "pw").await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("app.json");
    std::fs::write(&secret, r#"{"username":"app","password":"pw"}"#).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut t = support::engine::target(
        &db,
        "app",
        Source::File(FileSourceConfig {
            path: secret,
            format: FileFormat::Json,
            username_key: "username".into(),
            password_key: "password".into(),
        }),
    );
    t.pool.max_size = 16;
    t.pool.min_idle = 16;
    let mut config = Config::for_targets(vec![t]);
    config.api.socket = dir.path().join("api.sock");
    let engine = Arc::new(Engine::start(&config));
    assert!(engine
        .wait_ready(Duration::from_secs(10))
        .await
        .not_ready
        .is_empty());
    let (listener, _guard) = socket::bind(&config.api).unwrap();
    let state = Arc::new(ApiState::new(
        &config,
        engine.clone(),
        Arc::new(Metrics::new()),
    ));
    tokio::spawn(api::serve(listener, state, std::future::pending()));
    let target = engine.target("app").unwrap().clone();

    for clients in [1, 16] {
        // In-process: checkout from the same pool, run the statement.
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let end = Instant::now() + RUN;
                while Instant::now() < end {
                    let t = Instant::now();
                    let c = target.checkout().await.unwrap();
                    let s = c.prepare_cached("SELECT 1").await.unwrap();
                    c.query_one(&s, &[]).await.unwrap();
                    drop(c);
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        report("direct", clients, lat);

        // Through the socket: one keep-alive connection per client.
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let path = config.api.socket.clone();
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let body = Bytes::from_static(br#"{"sql":"SELECT 1"}"#);
                let mut lat = Vec::new();
                let end = Instant::now() + RUN;
                while Instant::now() < end {
                    let t = Instant::now();
                    let req = hyper::Request::post("/v1/targets/app/query")
                        .header("host", "credswap")
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let resp = sender.send_request(req).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    resp.into_body().collect().await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        report("api", clients, lat);
    }
    engine.shutdown().await;
}
