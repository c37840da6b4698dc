//! Faults around a rotation: the live generation keeps serving, the target says what is wrong,
//! and it heals by itself.

mod support;

use std::time::{Duration, Instant};

use credswap::config::{Config, Source};
use credswap::rotation::Engine;
use credswap::secret::aws::AwsSourceConfig;
use credswap::secret::file::{FileFormat, FileSourceConfig};
use credswap::targets::{
    BreakerState, CheckoutError, EventKind, FailureCause, Outcome, Step, TargetState, Trigger,
};
use support::engine::{target, wait_event};
use support::pg::Cluster;
use support::servers::Moto;

fn rds(user: &str, password: &str) -> String {
    format!(r#"{{"username":"{user}","password":"{password}"}}"#)
}

fn aws(moto: &Moto) -> Source {
    Source::Aws(AwsSourceConfig {
        secret_id: "prod/app".into(),
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto.endpoint()),
        version_stage: "AWSCURRENT".into(),
        username_key: "username".into(),
        password_key: "password".into(),
        timeout: Duration::from_secs(2),
    })
}

fn file_source(path: &std::path::Path) -> Source {
    Source::File(FileSourceConfig {
        path: path.to_path_buf(),
        format: FileFormat::Json,
        username_key: "username".into(),
        password_key: "password".into(),
    })
}

fn write_secret(path: &std::path::Path, user: &str, password: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, rds(user, password)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn query_ok(engine: &Engine, name: &str) {
    let conn = engine
        .target(name)
        .unwrap()
        .checkout()
        .await
        .expect("a connection");
    conn.query_one("SELECT 1", &[])
        .await
        .expect("the query runs");
}

/// A TLS cluster with the role `app`, its credentials file, and a ready engine with one file
/// target `app` (adjusted by `tweak`).
async fn file_engine(
    tweak: impl FnOnce(&mut credswap::config::Target),
) -> (Cluster, tempfile::TempDir, std::path::PathBuf, Engine) {
    let db = Cluster::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.json");
    db.create_role("app", "pw-1").await;
    write_secret(&path, "app", "pw-1");
    let mut t = target(&db, "app", file_source(&path));
    tweak(&mut t);
    let engine = support::engine::start_ready(vec![t]).await;
    (db, dir, path, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_user_rotation_mid_step_recovers_through_awspending() {
    let db = Cluster::start_tls();
    let moto = Moto::start();
    let sm = moto.client().await;
    db.create_role("app", "pw-1").await;
    sm.create_secret()
        .name("prod/app")
        .secret_string(rds("app", "pw-1"))
        .send()
        .await
        .unwrap();
    let mut t = target(&db, "app", aws(&moto));
    t.pool.max_size = 4;
    t.pool.min_idle = 1;
    let engine = support::engine::start_ready(vec![t]).await;
    let target = engine.target("app").unwrap().clone();
    let first = target.current().unwrap();
    assert_eq!(first.pool.state().connections, 1);

    // createSecret + setSecret: AWSPENDING has the new password and the database uses it,
    // but AWSCURRENT has not moved yet.
    let pending = sm
        .put_secret_value()
        .secret_id("prod/app")
        .secret_string(rds("app", "pw-2"))
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_string();
    db.set_password("app", "pw-2").await;

    // Four concurrent queries need three new connections: they are refused, the rotator
    // fetches AWSCURRENT (unchanged), then AWSPENDING, swaps, and the queries run there.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let conn = target.checkout().await.map_err(|e| e.to_string())?;
            conn.query_one("SELECT pg_sleep(0.2)", &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<u64, String>(conn.generation.id)
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("no query fails");
    }
    let current = target.current().unwrap();
    assert_eq!(current.credential_version, pending);
    assert_eq!(current.trigger, Trigger::AuthFailure);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_store_opens_the_breaker_and_heals() {
    let db = Cluster::start_tls();
    let mut moto = Moto::start();
    let sm = moto.client().await;
    db.create_role("app", "pw-1").await;
    sm.create_secret()
        .name("prod/app")
        .secret_string(rds("app", "pw-1"))
        .send()
        .await
        .unwrap();
    let mut t = target(&db, "app", aws(&moto));
    t.breaker.failures = 3;
    t.breaker.open_for = Duration::from_secs(3);
    let engine = support::engine::start_ready(vec![t]).await;
    let target = engine.target("app").unwrap().clone();
    let mut events = engine.subscribe();

    moto.stop();
    let report = target
        .rotate(Trigger::Api, false, true)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            report.outcome,
            Outcome::Failed(ref f) if f.step == Step::Fetch
        ),
        "{report:?}"
    );
    let status = target.status();
    assert_eq!(status.state, TargetState::Degraded);
    assert!(status
        .reason
        .unwrap()
        .starts_with("fetch failed: aws secret prod/app (AWSCURRENT): the store is unavailable"));
    query_ok(&engine, "app").await;

    // The rotator retries by itself; after three store failures in a row the breaker opens,
    // and a rotation asked for meanwhile fails fast without touching the store.
    wait_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e.kind, EventKind::RotationFinished(_))
            && target.status().breaker == BreakerState::Open
    })
    .await;
    let started = Instant::now();
    let report = target
        .rotate(Trigger::Api, false, true)
        .await
        .unwrap()
        .unwrap();
    match &report.outcome {
        Outcome::Failed(f) if f.step == Step::Fetch => {
            assert!(
                matches!(f.cause, FailureCause::BreakerOpen { failures: 3, .. }),
                "{f}"
            );
            let error = f.cause.to_string();
            assert!(
                error.starts_with("circuit breaker open: the secret store failed 3 times in a row"),
                "{error}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(500), "fails fast");
    query_ok(&engine, "app").await;

    // The store comes back (empty, as after a restart) with the secret: the next probe heals.
    moto.restart();
    sm.create_secret()
        .name("prod/app")
        .secret_string(rds("app", "pw-1"))
        .send()
        .await
        .unwrap();
    wait_event(&mut events, Duration::from_secs(15), |e| {
        matches!(
            e.kind,
            EventKind::StateChanged {
                to: TargetState::Ready,
                ..
            }
        )
    })
    .await;
    let status = target.status();
    assert_eq!(status.breaker, BreakerState::Closed);
    assert!(status.last_error.is_none());
    query_ok(&engine, "app").await;
    engine.shutdown().await;
}

#[tokio::test]
async fn wrong_new_credentials_do_not_swap() {
    let (_db, _dir, path, engine) = file_engine(|_| {}).await;
    let target = engine.target("app").unwrap().clone();
    let live = target.current().unwrap().id;

    write_secret(&path, "app", support::CANARY_PASSWORD);
    let report = target
        .rotate(Trigger::Api, false, true)
        .await
        .unwrap()
        .unwrap();
    match &report.outcome {
        Outcome::Failed(f) => {
            assert_eq!(f.step, Step::Connect);
            assert!(f.cause.is_auth(), "{f}");
            let error = f.to_string();
            assert!(
                error.contains("password authentication failed for user \"app\""),
                "{error}"
            );
            support::assert_no_canary("rotation error", &error);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(target.current().unwrap().id, live, "no swap");
    let status = target.status();
    assert_eq!(status.state, TargetState::Degraded);
    assert!(status.last_error.unwrap().contains("authentication failed"));
    support::assert_no_canary("status", &serde_json::to_string(&target.status()).unwrap());
    query_ok(&engine, "app").await;
    engine.shutdown().await;
}

#[tokio::test]
async fn postgres_restart_fails_fast_and_recovers() {
    let (mut db, _dir, _path, engine) = file_engine(|_| {}).await;
    query_ok(&engine, "app").await;
    let target = engine.target("app").unwrap().clone();

    db.stop();
    let started = Instant::now();
    let err = match target.checkout().await {
        Ok(conn) => conn
            .query_one("SELECT 1", &[])
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed in {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("cannot reach the server")
            || err.contains("connection closed")
            || err.contains("terminating connection"),
        "{err}"
    );
    // A checkout now, with the server down, names the cause.
    match target.checkout().await {
        Err(e @ CheckoutError::Unavailable { .. }) => {
            assert!(e.to_string().contains("cannot reach the server"), "{e}")
        }
        other => panic!("{other:?}"),
    }

    db.start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = match target.checkout().await {
            Ok(conn) => conn.query_one("SELECT 1", &[]).await.is_ok(),
            Err(_) => false,
        };
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the pool did not recover");
    }
    assert_eq!(
        target.current().unwrap().id,
        1,
        "recovered without a new generation"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_statement_longer_than_the_drain_timeout_is_cancelled() {
    let (db, _dir, _path, engine) = file_engine(|t| t.drain_timeout = Duration::from_secs(1)).await;
    let target = engine.target("app").unwrap().clone();
    let mut events = engine.subscribe();

    let conn = target.checkout().await.unwrap();
    let long = tokio::spawn(async move {
        let started = Instant::now();
        let r = conn.query_one("SELECT pg_sleep(30)", &[]).await;
        (r.map(|_| ()), started.elapsed())
    });
    // Let the statement reach the server before the rotation.
    db.wait_running("SELECT pg_sleep(30)", 1).await;
    let report = target
        .rotate(Trigger::Api, true, true)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(report.outcome, Outcome::Swapped { generation: 2 }),
        "{report:?}"
    );
    let e = wait_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e.kind, EventKind::DrainFinished { .. })
    })
    .await;
    match e.kind {
        EventKind::DrainFinished {
            generation,
            cancelled,
            duration,
            ..
        } => {
            assert_eq!(generation, 1);
            assert_eq!(cancelled, 1);
            assert!(
                duration >= Duration::from_secs(1) && duration < Duration::from_secs(4),
                "{duration:?}"
            );
        }
        _ => unreachable!(),
    }
    let (result, took) = long.await.unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_storm_of_triggers_causes_at_most_two_rotations() {
    let (_db, _dir, _path, engine) =
        file_engine(|t| t.min_rotation_interval = Duration::from_secs(1)).await;
    let target = engine.target("app").unwrap().clone();
    let mut events = engine.subscribe();

    let started = Instant::now();
    for _ in 0..500 {
        target.rotate(Trigger::Webhook, true, false).await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    // Count rotations until two seconds after the storm: the start-up rotation is long done.
    let mut rotations = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(e)) = tokio::time::timeout_at(until, events.recv()).await {
        if matches!(
            e.kind,
            EventKind::RotationStarted {
                trigger: Trigger::Webhook,
                ..
            }
        ) {
            rotations += 1;
        }
    }
    assert!(
        (1..=2).contains(&rotations),
        "{rotations} rotations for 500 triggers"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn startup_names_the_target_the_step_and_the_cause() {
    let db = Cluster::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    db.create_role("app", "pw-1").await;
    write_secret(&good, "app", "pw-1");
    let missing = dir.path().join("missing.json");
    let engine = Engine::start(&Config::for_targets(vec![
        target(&db, "good", file_source(&good)),
        target(&db, "bad", file_source(&missing)),
    ]));
    let report = engine.wait_ready(Duration::from_secs(2)).await;
    assert_eq!(report.ready, vec!["good".to_string()]);
    assert_eq!(
        report.not_ready,
        vec![(
            "bad".to_string(),
            format!(
                "fetch failed: credentials file {} not found",
                missing.display()
            )
        )]
    );
    assert_eq!(
        engine.target("bad").unwrap().status().state,
        TargetState::Degraded
    );
    // It keeps retrying: once the file appears, the target comes up.
    let mut events = engine.subscribe();
    write_secret(&missing, "app", "pw-1");
    wait_event(&mut events, Duration::from_secs(10), |e| {
        e.target == "bad"
            && matches!(
                e.kind,
                EventKind::StateChanged {
                    to: TargetState::Ready,
                    ..
                }
            )
    })
    .await;
    engine.shutdown().await;
}
