//! Rotation under load: 32 tasks query the current pool while credentials really change in
//! PostgreSQL. Zero failed queries, every rotation swapped, no old session left after its drain.

mod support;

use std::time::Duration;

use aws_sdk_secretsmanager::Client as Sm;
use credswap::config::Source;
use credswap::secret::aws::AwsSourceConfig;
use credswap::secret::vault::{VaultAuth, VaultEngine, VaultSourceConfig};
use credswap::targets::{EventKind, Outcome, Step, Trigger};
use support::engine::{load, stale_sessions, swapped, target, wait_event};
use support::pg::Cluster;
use support::servers::{Bao, Moto};
use tokio::sync::watch;

const TASKS: usize = 32;
const ROTATIONS: usize = 50;

fn rds(user: &str, password: &str) -> String {
    format!(r#"{{"engine":"postgres","username":"{user}","password":"{password}"}}"#)
}

fn aws(moto: &Moto, id: &str) -> Source {
    Source::Aws(AwsSourceConfig {
        secret_id: id.into(),
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto.endpoint()),
        version_stage: "AWSCURRENT".into(),
        username_key: "username".into(),
        password_key: "password".into(),
        timeout: Duration::from_secs(5),
    })
}

/// One AWS rotation as the rotation Lambda does it: createSecret (AWSPENDING), setSecret (the
/// database), finishSecret (AWSCURRENT moves). Returns the new version id.
async fn aws_rotation(sm: &Sm, db: &Cluster, id: &str, user: &str, password: &str) -> String {
    let current = sm
        .describe_secret()
        .secret_id(id)
        .send()
        .await
        .unwrap()
        .version_ids_to_stages()
        .unwrap()
        .iter()
        .find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT"))
        .map(|(v, _)| v.clone())
        .unwrap();
    let put = sm
        .put_secret_value()
        .secret_id(id)
        .secret_string(rds(user, password))
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    let new = put.version_id().unwrap().to_string();
    db.set_password(user, password).await;
    sm.update_secret_version_stage()
        .secret_id(id)
        .version_stage("AWSCURRENT")
        .move_to_version_id(&new)
        .remove_from_version_id(&current)
        .send()
        .await
        .unwrap();
    new
}

/// Prints the median and worst of each rotation step, for the record.
fn print_steps(label: &str, reports: &[credswap::targets::RotationReport]) {
    for step in [
        Step::Fetch,
        Step::Connect,
        Step::Verify,
        Step::Warm,
        Step::Swap,
    ] {
        let mut ms: Vec<f64> = reports
            .iter()
            .flat_map(|r| {
                r.steps
                    .iter()
                    .filter(|s| s.step == step)
                    .map(|s| s.duration.as_secs_f64() * 1000.0)
            })
            .collect();
        if ms.is_empty() {
            continue;
        }
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        eprintln!(
            "{label} {:?}: n={} p50={:.2}ms max={:.2}ms",
            step,
            ms.len(),
            ms[ms.len() / 2],
            ms[ms.len() - 1]
        );
    }
}

async fn run_aws(alternating: bool) {
    support::logs::capture();
    let db = Cluster::start_tls();
    let moto = Moto::start();
    let sm = moto.client().await;
    let users = if alternating {
        vec!["app_a", "app_b"]
    } else {
        vec!["app"]
    };
    for u in &users {
        db.create_role(u, "initial-pw").await;
    }
    sm.create_secret()
        .name("prod/app")
        .secret_string(rds(users[0], "initial-pw"))
        .send()
        .await
        .unwrap();
    let mut t = target(&db, "app", aws(&moto, "prod/app"));
    t.pool.max_size = 12;
    let engine = support::engine::start_ready(vec![t]).await;
    let target = engine.target("app").unwrap().clone();
    let mut events = engine.subscribe();

    let (stop_tx, stop) = watch::channel(false);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| tokio::spawn(load(target.clone(), stop.clone())))
        .collect();
    let mut reports = Vec::new();
    for i in 0..ROTATIONS {
        let user = users[(i + 1) % users.len()];
        let password = format!("rotated-{i}-{}", rand::random::<u32>());
        let version = aws_rotation(&sm, &db, "prod/app", user, &password).await;
        let report = target
            .rotate(Trigger::Api, false, true)
            .await
            .unwrap()
            .unwrap();
        match report.outcome {
            Outcome::Swapped { .. } => reports.push(report),
            // The live pool saw the new password first and already rotated through AWSPENDING.
            Outcome::Unchanged { .. } => {}
            Outcome::Failed(ref f) => panic!("rotation {i} failed: {f}"),
        }
        let current = target.current().unwrap();
        assert_eq!(current.credential_version, version, "rotation {i}");
        assert_eq!(current.username, user);
    }
    stop_tx.send_replace(true);
    let mut ok = 0;
    let mut failures = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        ok += r.ok;
        failures.extend(r.failures);
    }
    assert!(
        failures.is_empty(),
        "{} failed queries, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(ok > 1000, "the load ran ({ok} queries)");
    let current = target.current().unwrap();
    assert_eq!(
        current.id,
        1 + ROTATIONS as u64,
        "every rotation swapped a new generation in"
    );

    // Every old generation drains; then none of its sessions is left on the server.
    let mut drains = Vec::new();
    while drains.len() < ROTATIONS {
        let e = wait_event(&mut events, Duration::from_secs(10), |e| {
            matches!(e.kind, EventKind::DrainFinished { .. })
        })
        .await;
        if let EventKind::DrainFinished {
            duration,
            cancelled,
            ..
        } = e.kind
        {
            assert_eq!(cancelled, 0, "short statements finish before the deadline");
            drains.push(duration.as_secs_f64() * 1000.0);
        }
    }
    drains.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "drain: n={} p50={:.2}ms max={:.2}ms",
        drains.len(),
        drains[drains.len() / 2],
        drains[drains.len() - 1]
    );
    let stale = stale_sessions(&db, "app", current.id).await;
    assert!(
        stale.is_empty(),
        "sessions of old generations remain: {stale:?}"
    );
    eprintln!("{} queries, 0 failed, {ROTATIONS} rotations", ok);
    print_steps(
        if alternating {
            "aws alternating"
        } else {
            "aws single-user"
        },
        &reports,
    );
    engine.shutdown().await;
    support::assert_no_canary("logs", &support::logs::captured());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_single_user_rotation_under_load() {
    run_aws(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_alternating_users_rotation_under_load() {
    run_aws(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_dynamic_credentials_across_three_lease_expiries() {
    let db = Cluster::start_tls();
    let bao = Bao::start();
    bao.database_engine(&db, "15s", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, support::servers::BAO_ROOT_TOKEN).unwrap();
    let source = Source::Vault(VaultSourceConfig {
        address: bao.address(),
        ca_file: None,
        namespace: None,
        auth: VaultAuth::Token {
            token_file: Some(token_file),
        },
        engine: VaultEngine::Database,
        mount: None,
        path: None,
        role: Some("dyn".into()),
        username_key: "username".into(),
        password_key: "password".into(),
        revoke_on_drain: true,
        timeout: Duration::from_secs(5),
    });
    let engine = support::engine::start_ready(vec![target(&db, "dyn", source)]).await;
    let target = engine.target("dyn").unwrap().clone();
    let first = target.current().unwrap();
    assert_eq!(first.lease.as_ref().unwrap().ttl, Duration::from_secs(15));
    let mut events = engine.subscribe();
    let (stop_tx, stop) = watch::channel(false);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| tokio::spawn(load(target.clone(), stop.clone())))
        .collect();

    // Three lease-driven rotations, each before its lease expired, each old lease revoked.
    let mut users = vec![first.username.clone()];
    for _ in 0..3 {
        // (The start-up rotation's own event may arrive after we subscribed: skip it.)
        let e = wait_event(&mut events, Duration::from_secs(20), |e| {
            swapped(e).is_some_and(|g| g > 1)
        })
        .await;
        let EventKind::RotationFinished(r) = &e.kind else {
            unreachable!()
        };
        assert_eq!(r.trigger, Trigger::Lease);
        let g = target.current().unwrap();
        users.push(g.username.clone());
        let e = wait_event(&mut events, Duration::from_secs(10), |e| {
            matches!(e.kind, EventKind::DrainFinished { .. })
        })
        .await;
        assert!(
            matches!(
                e.kind,
                EventKind::DrainFinished {
                    lease_revoked: Some(true),
                    ..
                }
            ),
            "{e:?}"
        );
    }
    stop_tx.send_replace(true);
    let mut failures = Vec::new();
    let mut ok = 0;
    for t in tasks {
        let r = t.await.unwrap();
        ok += r.ok;
        failures.extend(r.failures);
    }
    assert!(
        failures.is_empty(),
        "{} failed queries: {:#?}",
        failures.len(),
        failures
    );
    eprintln!("{ok} queries across 3 lease expiries, 0 failed");
    let current = target.current().unwrap();
    assert_eq!(current.id, 4);
    assert!(stale_sessions(&db, "dyn", current.id).await.is_empty());
    // Revoked leases dropped their users.
    let admin = db.admin().await;
    for old in &users[..3] {
        let n: i64 = admin
            .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[old])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "user {old} of a revoked lease still exists");
    }
    engine.shutdown().await;
}
