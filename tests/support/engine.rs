//! Helpers for driving the rotation engine: targets, load, and waiting for events.

use std::sync::Arc;
use std::time::Duration;

use credswap::config::{Config, Source, Target};
use credswap::dsn::ConnInfo;
use credswap::rotation::Engine;
use credswap::targets::{Event, EventKind, Outcome, TargetHandle};
use tokio::sync::{broadcast, watch};

use super::pg::{pki, Cluster};

/// A target on `db` (TLS, verify-full) with quick retries, for tests.
pub fn target(db: &Cluster, name: &str, source: Source) -> Target {
    let conn = ConnInfo::parse(&db.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            pki().ca_cert().display()
        ),
    ))
    .unwrap();
    let mut t = Target::new(name, conn, source);
    t.min_rotation_interval = Duration::ZERO;
    t.drain_timeout = Duration::from_secs(2);
    t.retry.initial = Duration::from_millis(50);
    t.retry.max = Duration::from_millis(500);
    t
}

/// An engine for `targets`, every one of them ready (at most 10 s).
pub async fn start_ready(targets: Vec<Target>) -> Engine {
    let engine = Engine::start(&Config::for_targets(targets));
    let report = engine.wait_ready(Duration::from_secs(10)).await;
    assert!(
        report.not_ready.is_empty(),
        "not ready: {:?}",
        report.not_ready
    );
    engine
}

/// What a load task saw.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: u64,
    pub failures: Vec<String>,
}

/// Runs `SELECT 1`-style queries through the target's current generation until `stop`.
pub async fn load(target: Arc<TargetHandle>, mut stop: watch::Receiver<bool>) -> LoadResult {
    let mut result = LoadResult::default();
    while !*stop.borrow() {
        let outcome = async {
            let t = std::time::Instant::now();
            let conn = target.checkout().await.map_err(|e| {
                format!(
                    "{e} after {:?} (at {:?}, gen now {:?})",
                    t.elapsed(),
                    std::time::SystemTime::now(),
                    target.current().map(|g| g.id)
                )
            })?;
            let row = conn
                .query_one("SELECT current_user::text, pg_sleep(0.001)::text", &[])
                .await
                .map_err(|e| format!("{e:?}"))?;
            let user: String = row.get(0);
            if user != conn.generation.username {
                return Err(format!(
                    "ran as {user} on a pool for {}",
                    conn.generation.username
                ));
            }
            Ok::<(), String>(())
        };
        tokio::select! {
            r = outcome => match r {
                Ok(()) => result.ok += 1,
                Err(e) => result.failures.push(e),
            },
            _ = stop.changed() => break,
        }
    }
    result
}

/// Waits for the first event matching `pred`, up to `timeout`.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<Event>,
    timeout: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    tokio::time::timeout(timeout, async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => panic!("missed {n} events"),
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching event within {timeout:?}"))
}

/// Whether an event is a finished rotation that swapped.
pub fn swapped(e: &Event) -> Option<u64> {
    match &e.kind {
        EventKind::RotationFinished(r) => match r.outcome {
            Outcome::Swapped { generation } => Some(generation),
            _ => None,
        },
        _ => None,
    }
}

/// Application names of credswap sessions on `db` for `target`, waiting (bounded) until none
/// but `current`'s remain; returns what is left.
pub async fn stale_sessions(db: &Cluster, target: &str, current: u64) -> Vec<String> {
    let admin = db.admin().await;
    let want = format!("credswap/{target}/g{current}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let rows = admin
            .query(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE $1",
                &[&format!("credswap/{target}/g%")],
            )
            .await
            .unwrap();
        let stale: Vec<String> = rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|n| *n != want)
            .collect();
        // A backend leaves pg_stat_activity a moment after its client closed the socket.
        if stale.is_empty() || tokio::time::Instant::now() > deadline {
            return stale;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
