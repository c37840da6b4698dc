//! Draining an old generation: no new checkouts, idle connections closed at once, busy ones
//! closed as their statements end; at the deadline running statements are cancelled (the
//! PostgreSQL cancel request) so nothing outlives it. Then the old lease can be revoked.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::secret::SecretSource;
use crate::targets::{EventKind, Generation, TargetHandle};

/// After cancelling, how long the holders get to hand their connections back.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// What a drain did.
#[derive(Clone, Copy, Debug)]
pub struct DrainReport {
    pub duration: Duration,
    /// Statements cancelled at the deadline.
    pub cancelled: usize,
    /// Connections still out when the drain gave up (after the grace period).
    pub abandoned: u32,
}

/// Drains `generation`, which is no longer current. When `hurry` turns true (the daemon is
/// stopping, its requests are done) the deadline moves to now.
pub async fn drain(
    generation: &Generation,
    timeout: Duration,
    mut hurry: watch::Receiver<bool>,
) -> DrainReport {
    let started = Instant::now();
    let mut deadline = started + timeout;
    let pool = &generation.pool;
    pool.begin_drain();
    pool.close_idle().await;
    let mut cancelled = None;
    loop {
        if pool.state().connections == 0 {
            break;
        }
        let give_up = match cancelled {
            None => deadline,
            Some(_) => deadline + CANCEL_GRACE,
        };
        tokio::select! {
            _ = pool.returned() => pool.close_idle().await,
            _ = async { let _ = hurry.wait_for(|h| *h).await; }, if cancelled.is_none() && deadline > Instant::now() => {
                deadline = Instant::now();
            }
            _ = tokio::time::sleep_until(give_up) => {
                if cancelled.is_some() {
                    break;
                }
                let n = pool.cancel_in_use().await;
                tracing::info!(generation = generation.id, cancelled = n, "drain deadline reached; statements cancelled");
                cancelled = Some(n);
            }
        }
    }
    // The PostgreSQL front end's sessions on this generation keep going until the deadline (a
    // password change does not end a session); then they end at their next idle point, never
    // inside a transaction. The lease is revoked only once they are gone.
    let sessions = &generation.sessions;
    loop {
        // Registered before the count is read, so a session leaving in between is not missed.
        let left = sessions.left();
        tokio::pin!(left);
        left.as_mut().enable();
        if sessions.open() == 0 {
            break;
        }
        if Instant::now() >= deadline {
            sessions.end_at_idle();
        }
        tokio::select! {
            _ = &mut left => {}
            _ = tokio::time::sleep_until(deadline), if Instant::now() < deadline => {}
            _ = async { let _ = hurry.wait_for(|h| *h).await; }, if deadline > Instant::now() => {
                deadline = Instant::now();
            }
        }
    }
    let abandoned = pool.state().connections;
    if abandoned > 0 {
        tracing::warn!(
            generation = generation.id,
            connections = abandoned,
            "connections still checked out after the drain deadline and grace period"
        );
    }
    DrainReport {
        duration: started.elapsed(),
        cancelled: cancelled.unwrap_or(0),
        abandoned,
    }
}

/// Drains a swapped-out generation for a target and revokes its lease when asked; reports the
/// result in the target's status and events.
pub(crate) async fn retire(
    target: Arc<TargetHandle>,
    generation: Arc<Generation>,
    timeout: Duration,
    revoke: Option<Arc<dyn SecretSource>>,
    hurry: watch::Receiver<bool>,
) {
    target.draining_started(generation.clone(), SystemTime::now() + timeout);
    let report = drain(&generation, timeout, hurry).await;
    let lease_revoked = match (&revoke, &generation.lease) {
        (Some(source), Some(lease)) => match source.revoke(lease).await {
            Ok(()) => Some(true),
            Err(e) => {
                tracing::warn!(target_name = %target.name(), generation = generation.id, error = %e, "could not revoke the old lease");
                Some(false)
            }
        },
        _ => None,
    };
    target.draining_finished(generation.id);
    tracing::info!(
        target_name = %target.name(),
        generation = generation.id,
        drain_ms = report.duration.as_millis() as u64,
        cancelled = report.cancelled,
        "old generation drained"
    );
    target.emit(EventKind::DrainFinished {
        generation: generation.id,
        duration: report.duration,
        cancelled: report.cancelled,
        lease_revoked,
    });
}
