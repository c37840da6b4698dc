//! Failover on real servers: a TLS primary and its streaming standby (`pg_basebackup -R`), the
//! primary stopped under write load through both front doors, the standby promoted; and a
//! `prefer-standby` read target that follows its standby away and back.

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

fn url(hosts: &[&Cluster], attrs: &str) -> String {
    let hosts: Vec<String> = hosts
        .iter()
        .map(|c| format!("localhost:{}", c.port()))
        .collect();
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
}

/// Writers through the HTTP API and through the PostgreSQL front end until `stop`.
fn writers(
    front: &Arc<Front>,
    stop: tokio::sync::watch::Receiver<bool>,
    log: &Arc<Mutex<Vec<Attempt>>>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..6 {
        let (front, stop, log) = (front.clone(), stop.clone(), log.clone());
        set.spawn(async move {
            while !*stop.borrow() {
                let started = Instant::now();
                let (s, v, _) = front
                    .daemon
                    .query(
                        "rw",
                        json!({"sql": "INSERT INTO writes (via) VALUES ($1) RETURNING inet_server_port()", "params": [format!("api{i}")]}),
                    )
                    .await;
                log.lock().unwrap().push(Attempt {
                    started,
                    ended: Instant::now(),
                    ok: s == 200,
                    port: v["rows"][0][0].as_i64(),
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
                let port = match &client {
                    Some(c) => c
                        .query_one(
                            "INSERT INTO writes (via) VALUES ($1) RETURNING inet_server_port()",
                            &[&format!("wire{i}")],
                        )
                        .await
                        .ok()
                        .map(|row| i64::from(row.get::<_, i32>(0))),
                    None => None,
                };
                if port.is_none() {
                    client = None;
                }
                log.lock().unwrap().push(Attempt {
                    started,
                    ended: Instant::now(),
                    ok: port.is_some(),
                    port,
                });
            }
        });
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_write_target_follows_a_promotion() {
    let (mut primary, standby) = pair().await;
    let front = Arc::new(
        daemon(&[(
            "rw",
            url(&[&primary, &standby], "read-write"),
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
    let mut load = writers(&front, stop, &log);
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
                url(&[&primary, &standby], "prefer-standby"),
                "pool = { max_size = 4, checkout_timeout = \"10s\", connect_timeout = \"2s\" }",
            ),
            (
                "standby_only",
                url(&[&primary, &standby], "standby"),
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
