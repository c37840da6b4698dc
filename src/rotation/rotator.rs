//! The rotator: one task per target that turns triggers into rotations, one at a time.
//!
//! Triggers that arrive while a rotation runs, or within `min_rotation_interval` of the last
//! one, are merged into a single follow-up (forced if any was forced), so a storm of webhooks
//! costs at most one extra fetch.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::breaker::Breaker;
use super::drain::retire;
use crate::config::{PoolSettings, Source, Target};
use crate::dsn::{ConnInfo, Host};
use crate::pool::hosts::{HostChange, OnHostChange};
use crate::pool::{BuildOptions, PoolError, VerifiedPool};
use crate::secret::{self, BoxFuture, Credentials, SecretError, SecretSource, Stage};
use crate::targets::generation::{application_name, Generation};
use crate::targets::handle::Command;
use crate::targets::{
    EventKind, FailureCause, Outcome, RotationError, RotationReport, Step, StepTiming,
    TargetHandle, TargetState, Trigger,
};

/// Outer deadline of one fetch (each source also has its own request timeout).
const FETCH_DEADLINE: Duration = Duration::from_secs(60);

struct Pending {
    trigger: Trigger,
    force: bool,
    replies: Vec<oneshot::Sender<RotationReport>>,
}

impl Pending {
    fn merge(
        &mut self,
        trigger: Trigger,
        force: bool,
        reply: Option<oneshot::Sender<RotationReport>>,
    ) {
        // Start-up and authentication failures outrank the rest: they run without waiting.
        if !matches!(self.trigger, Trigger::Startup | Trigger::AuthFailure) {
            self.trigger = trigger;
        }
        self.force |= force;
        self.replies.extend(reply);
    }
}

/// Builds and verifies a generation's pool. A trait so that the rotator's state machine
/// (coalescing, gating, backoff, the breaker, the auth-failure path) is unit-tested without a
/// server; the daemon uses [`Verifying`].
pub(crate) trait PoolBuilder: Send + Sync {
    fn build<'a>(
        &'a self,
        conn: &'a ConnInfo,
        settings: &'a PoolSettings,
        creds: &'a Credentials,
        options: BuildOptions,
    ) -> BoxFuture<'a, Result<VerifiedPool, PoolError>>;
}

/// The real builder: connect over TLS, log in, check the user and the encryption.
pub(crate) struct Verifying;

impl PoolBuilder for Verifying {
    fn build<'a>(
        &'a self,
        conn: &'a ConnInfo,
        settings: &'a PoolSettings,
        creds: &'a Credentials,
        options: BuildOptions,
    ) -> BoxFuture<'a, Result<VerifiedPool, PoolError>> {
        Box::pin(VerifiedPool::build(conn, settings, creds, options))
    }
}

/// One rotation's steps: each is announced on the event stream when it starts, and timed once
/// when it ends. A step that fails is announced but not timed.
struct Steps {
    target: Arc<TargetHandle>,
    rotation: u64,
    timings: Vec<StepTiming>,
    running: Option<(Step, Instant)>,
}

impl Steps {
    fn new(target: Arc<TargetHandle>, rotation: u64) -> Steps {
        Steps {
            target,
            rotation,
            timings: Vec::new(),
            running: None,
        }
    }

    /// Announces `step` and starts its clock.
    fn start(&mut self, step: Step) {
        self.announce(step);
        self.running = Some((step, Instant::now()));
    }

    /// Announces `step` without timing it (its time is measured elsewhere, or by its own event).
    fn announce(&self, step: Step) {
        self.target.emit(EventKind::Step {
            rotation: self.rotation,
            step,
        });
    }

    /// Ends the running step and records its time.
    fn end(&mut self) {
        if let Some((step, at)) = self.running.take() {
            self.record(step, at.elapsed());
        }
    }

    /// Records a time measured elsewhere (connect and verify, inside the pool build).
    fn record(&mut self, step: Step, duration: Duration) {
        self.timings.push(StepTiming { step, duration });
    }
}

pub(crate) struct Rotator {
    target: Arc<TargetHandle>,
    /// The PostgreSQL front end is on: a generation's raw login is verified before its swap.
    verify_raw: bool,
    cfg: Target,
    builder: Arc<dyn PoolBuilder>,
    source: Option<Arc<dyn SecretSource>>,
    commands: mpsc::Receiver<Command>,
    shutdown: watch::Receiver<bool>,
    breaker: Breaker,
    generations: u64,
    rotations: u64,
    failures: u32,
    pending: Option<Pending>,
    retry_at: Option<Instant>,
    refresh_at: Instant,
    lease_at: Option<Instant>,
    last_attempt: Option<Instant>,
    drains: JoinSet<()>,
    /// The credential version the database last refused, until a build with it works.
    refused: Option<String>,
}

fn to_instant(at: SystemTime) -> Instant {
    let now = SystemTime::now();
    match at.duration_since(now) {
        Ok(ahead) => Instant::now() + ahead,
        Err(_) => Instant::now(),
    }
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.9..=1.1))
}

/// Applies the host, port and database a secret carries (RDS format) to the url.
fn with_overrides(conn: &ConnInfo, creds: &Credentials) -> ConnInfo {
    let mut conn = conn.clone();
    let o = &creds.overrides;
    if let Some(host) = &o.host {
        let port = o
            .port
            .or(conn.servers.first().map(|s| s.port))
            .unwrap_or(5432);
        conn.servers = vec![crate::dsn::Server {
            host: Host::Tcp(host.clone()),
            port,
        }];
    } else if let Some(port) = o.port {
        for s in &mut conn.servers {
            s.port = port;
        }
    }
    if let Some(db) = &o.dbname {
        conn.dbname = Some(db.clone());
    }
    conn
}

fn failed_step(e: &PoolError) -> Step {
    match e {
        PoolError::WrongUser { .. }
        | PoolError::TlsNotInUse(_)
        | PoolError::TlsUnexpected
        | PoolError::VerifyQuery(_) => Step::Verify,
        _ => Step::Connect,
    }
}

impl Rotator {
    pub(crate) fn new(
        target: Arc<TargetHandle>,
        cfg: Target,
        commands: mpsc::Receiver<Command>,
        shutdown: watch::Receiver<bool>,
        verify_raw: bool,
    ) -> Rotator {
        Rotator {
            verify_raw,
            builder: Arc::new(Verifying),
            breaker: Breaker::new(cfg.breaker),
            refresh_at: Instant::now() + jittered(cfg.refresh_interval),
            target,
            cfg,
            source: None,
            commands,
            shutdown,
            generations: 0,
            rotations: 0,
            failures: 0,
            pending: Some(Pending {
                trigger: Trigger::Startup,
                force: false,
                replies: Vec::new(),
            }),
            retry_at: None,
            lease_at: None,
            last_attempt: None,
            drains: JoinSet::new(),
            refused: None,
        }
    }

    fn push(
        &mut self,
        trigger: Trigger,
        force: bool,
        reply: Option<oneshot::Sender<RotationReport>>,
    ) {
        match &mut self.pending {
            Some(p) => p.merge(trigger, force, reply),
            None => {
                self.pending = Some(Pending {
                    trigger,
                    force,
                    replies: reply.into_iter().collect(),
                })
            }
        }
    }

    /// When the pending trigger may run.
    fn gate(&self) -> Option<Instant> {
        let p = self.pending.as_ref()?;
        // The database already refused the credentials the store has: another refusal (the
        // pool reports one per connection attempt) waits for the backoff like any retry.
        if p.trigger == Trigger::AuthFailure && self.refused.is_some() {
            return Some(self.retry_at.unwrap_or_else(Instant::now));
        }
        if matches!(p.trigger, Trigger::Startup | Trigger::AuthFailure) {
            return Some(Instant::now());
        }
        Some(match self.last_attempt {
            Some(at) => at + self.cfg.min_rotation_interval,
            None => Instant::now(),
        })
    }

    pub(crate) async fn run(mut self) {
        /// Marks the rotator dead when it returns or panics.
        struct Alive(Arc<TargetHandle>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.set_alive(false);
            }
        }
        self.target.set_alive(true);
        let _alive = Alive(self.target.clone());
        loop {
            // Triggers that queued up while a rotation ran merge into one follow-up.
            while let Ok(c) = self.commands.try_recv() {
                self.push(c.trigger, c.force, c.reply);
            }
            if let Some(gate) = self.gate() {
                if gate <= Instant::now() {
                    let p = self.pending.take().expect("gate implies a pending trigger");
                    let report = self.rotate(p.trigger, p.force).await;
                    for reply in p.replies {
                        let _ = reply.send(report.clone());
                    }
                    continue;
                }
            }
            let gate = self.gate();
            let idle = self.pending.is_none();
            let source = self.source.clone();
            let auth_failure = self.target.auth_failure.clone();
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.push(c.trigger, c.force, c.reply),
                    None => break,
                },
                _ = auth_failure.notified() => {
                    if self.refused.is_none() {
                        tracing::info!(target_name = %self.target.name(), "the live pool's credentials were refused; fetching new ones");
                    }
                    self.push(Trigger::AuthFailure, false, None);
                }
                _ = async { source.as_ref().expect("guarded").changed().await }, if idle && source.is_some() => {
                    self.push(Trigger::FileChange, false, None);
                }
                _ = tokio::time::sleep_until(self.refresh_at) => {
                    self.refresh_at = Instant::now() + jittered(self.cfg.refresh_interval);
                    self.push(Trigger::Timer, false, None);
                }
                _ = tokio::time::sleep_until(self.lease_at.unwrap_or_else(Instant::now)), if self.lease_at.is_some() => {
                    self.lease_at = None;
                    self.push(Trigger::Lease, false, None);
                }
                _ = tokio::time::sleep_until(self.retry_at.unwrap_or_else(Instant::now)), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    self.push(Trigger::Retry, false, None);
                }
                _ = tokio::time::sleep_until(gate.unwrap_or_else(Instant::now)), if gate.is_some() => {}
                Some(_) = self.drains.join_next(), if !self.drains.is_empty() => {}
            }
        }
        self.stop().await;
    }

    /// Shutdown: drain the live generation too, and wait for every drain.
    async fn stop(mut self) {
        if let Some(current) = self.target.take() {
            let revoke = self.revoker();
            self.drains.spawn(retire(
                self.target.clone(),
                current,
                self.cfg.drain_timeout,
                revoke,
                self.shutdown.clone(),
            ));
        }
        while self.drains.join_next().await.is_some() {}
    }

    fn revoker(&self) -> Option<Arc<dyn SecretSource>> {
        match &self.cfg.source {
            Source::Vault(v) if v.revoke_on_drain => self.source.clone(),
            _ => None,
        }
    }

    async fn source(&mut self) -> Result<Arc<dyn SecretSource>, SecretError> {
        if let Some(s) = &self.source {
            return Ok(s.clone());
        }
        let s = secret::build(&self.cfg.source).await?;
        self.source = Some(s.clone());
        Ok(s)
    }

    async fn fetch(&mut self, stage: Stage) -> Result<Credentials, FailureCause> {
        if !self.breaker.allow() {
            return Err(FailureCause::BreakerOpen {
                failures: self.cfg.breaker.failures,
                retry_in: self.breaker.wait(),
            });
        }
        let result = match self.source().await {
            Ok(source) => match tokio::time::timeout(FETCH_DEADLINE, source.fetch(stage)).await {
                Ok(r) => r,
                Err(_) => Err(SecretError::Unavailable {
                    what: source.describe(),
                    detail: format!("no answer within {FETCH_DEADLINE:?}"),
                }),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(c) => {
                self.breaker.success();
                Ok(c)
            }
            Err(e) => {
                // Only the store's own trouble counts against it, not a malformed secret.
                if e.retryable() {
                    self.breaker.failure();
                } else {
                    self.breaker.success();
                }
                Err(e.into())
            }
        }
    }

    async fn rotate(&mut self, trigger: Trigger, force: bool) -> RotationReport {
        self.rotations += 1;
        self.last_attempt = Some(Instant::now());
        let rotation = self.rotations;
        let started_at = SystemTime::now();
        let name = self.target.name().to_string();
        self.target
            .emit(EventKind::RotationStarted { rotation, trigger });
        let mut steps = Steps::new(self.target.clone(), rotation);
        let outcome = self.attempt(trigger, force, &mut steps).await;
        let report = RotationReport {
            rotation,
            target: name.clone(),
            trigger,
            forced: force,
            outcome,
            steps: steps.timings,
            started_at,
        };
        self.finish(&report);
        report
    }

    async fn attempt(&mut self, trigger: Trigger, force: bool, steps: &mut Steps) -> Outcome {
        steps.start(Step::Fetch);
        let mut creds = match self.fetch(Stage::Current).await {
            Ok(c) => c,
            Err(cause) => {
                return Outcome::Failed(RotationError {
                    step: Step::Fetch,
                    cause,
                })
            }
        };
        let current = self.target.current();
        let same = |c: &Credentials| {
            current
                .as_ref()
                .is_some_and(|g| g.credential_version == c.version)
        };
        if trigger == Trigger::AuthFailure && same(&creds) {
            // Single-user rotation between its setSecret and finishSecret steps: the database
            // already has the pending password. Only AWS has stages; others say Unsupported.
            if let Ok(pending) = self.fetch(Stage::Pending).await {
                if !same(&pending) {
                    tracing::info!(target_name = %self.target.name(), "current credentials refused; using the pending version");
                    creds = pending;
                }
            }
        }
        steps.end();
        // Credentials the database refused are tried again, never assumed good because the
        // store still has the same version.
        let refused = self.refused.as_deref() == Some(creds.version.as_str());
        if !force && trigger != Trigger::AuthFailure && same(&creds) && !refused {
            self.schedule(&creds);
            return Outcome::Unchanged {
                generation: current.map(|g| g.id),
            };
        }

        steps.announce(Step::Connect);
        let id = self.generations + 1;
        let conn = with_overrides(&self.cfg.conn, &creds);
        let options = BuildOptions {
            application_name: application_name(
                self.cfg.conn.application_name.as_deref(),
                &self.cfg.name,
                id,
            ),
            on_auth_failure: Some(self.target.auth_failure.clone()),
            verify_raw: self.verify_raw,
            on_host_change: Some(failover_event(&self.target, id)),
        };
        let pool = match self
            .builder
            .build(&conn, &self.cfg.pool, &creds, options)
            .await
        {
            Ok(p) => {
                self.refused = None;
                p
            }
            Err(e) => {
                if e.is_auth() {
                    self.refused = Some(creds.version.clone());
                }
                return Outcome::Failed(RotationError {
                    step: failed_step(&e),
                    cause: e.into(),
                });
            }
        };
        steps.announce(Step::Verify);
        let timings = pool.timings();
        steps.record(Step::Connect, timings.connect);
        steps.record(Step::Verify, timings.verify);
        if trigger == Trigger::AuthFailure && same(&creds) && !force {
            // The refusal was passing: the credentials work. Keep the live generation.
            self.schedule(&creds);
            return Outcome::Unchanged {
                generation: current.map(|g| g.id),
            };
        }
        // Take over the live generation's load without a burst of connects after the swap:
        // as many connections as it has in use or asked for right now. Its idle ones are not
        // demand; min_idle is topped up by the pool itself after the swap.
        let demand = current.as_ref().map_or(0, |g| {
            let in_use = g.pool.checked_out() as u64 + g.pool.waiting();
            u32::try_from(in_use).unwrap_or(u32::MAX)
        });
        let want = demand.min(self.cfg.pool.max_size);
        if want > 1 {
            steps.start(Step::Warm);
            pool.warm(want).await;
            steps.end();
        }

        let t = Instant::now();
        let generation = Arc::new(Generation {
            id,
            pool,
            credential_version: creds.version.clone(),
            username: creds.username.clone(),
            built_at: SystemTime::now(),
            trigger,
            lease: creds.lease.clone(),
            sessions: Default::default(),
        });
        let old = self.target.swap(generation);
        // Announced once done: a client that sees "swap" can rely on the new generation.
        steps.record(Step::Swap, t.elapsed());
        steps.announce(Step::Swap);
        self.generations = id;
        self.schedule(&creds);
        if let Some(old) = old {
            steps.announce(Step::Drain);
            let revoke = self.revoker();
            self.drains.spawn(retire(
                self.target.clone(),
                old,
                self.cfg.drain_timeout,
                revoke,
                self.shutdown.clone(),
            ));
        }
        Outcome::Swapped { generation: id }
    }

    /// Sets the lease clock from what the credentials say about their own lifetime.
    fn schedule(&mut self, creds: &Credentials) {
        self.lease_at = if let Some(lease) = &creds.lease {
            Some(to_instant(secret::lease_refresh_at(lease)))
        } else {
            creds
                .next_rotation
                .map(|at| to_instant(at + Duration::from_secs(2)))
        };
    }

    fn finish(&mut self, report: &RotationReport) {
        let name = self.target.name().to_string();
        let ms = |step: Step| {
            report
                .steps
                .iter()
                .find(|s| s.step == step)
                .map_or(0.0, |s| s.duration.as_secs_f64() * 1000.0)
        };
        let (state, reason, error) = match &report.outcome {
            Outcome::Failed(failure) => {
                self.failures += 1;
                let cap = self.cfg.retry.max.min(
                    self.cfg
                        .retry
                        .initial
                        .saturating_mul(1 << self.failures.min(20).saturating_sub(1)),
                );
                let backoff = cap
                    .mul_f64(rand::random_range(0.0..=1.0))
                    .max(Duration::from_millis(10));
                let wait = backoff.max(self.breaker.wait());
                self.retry_at = Some(Instant::now() + wait);
                tracing::warn!(target_name = %name, trigger = %report.trigger, step = failure.step.as_str(), error = %failure.cause, retry_in_ms = wait.as_millis() as u64, "rotation failed; the live generation keeps serving");
                (
                    TargetState::Degraded,
                    Some(failure.to_string()),
                    Some(failure.cause.to_string()),
                )
            }
            Outcome::Swapped { generation } => {
                self.failures = 0;
                self.retry_at = None;
                tracing::info!(target_name = %name, trigger = %report.trigger, generation, fetch_ms = ms(Step::Fetch), connect_ms = ms(Step::Connect), verify_ms = ms(Step::Verify), swap_ms = ms(Step::Swap), "rotated");
                (TargetState::Ready, None, None)
            }
            Outcome::Unchanged { .. } => {
                self.failures = 0;
                self.retry_at = None;
                tracing::debug!(target_name = %name, trigger = %report.trigger, "credentials unchanged");
                (TargetState::Ready, None, None)
            }
        };
        let (state, reason) = if state == TargetState::Ready && self.target.current().is_none() {
            (
                TargetState::Degraded,
                Some("no live generation".to_string()),
            )
        } else {
            (state, reason)
        };
        let error = error.or_else(|| {
            if state == TargetState::Ready {
                None
            } else {
                self.target.last_error()
            }
        });
        let next = [Some(self.refresh_at), self.lease_at, self.retry_at]
            .into_iter()
            .flatten()
            .min()
            .expect("the refresh timer is always set");
        self.target.record_rotation(
            report,
            error,
            self.breaker.state(),
            SystemTime::now() + next.saturating_duration_since(Instant::now()),
        );
        self.target.set_state(state, reason);
        self.target
            .emit(EventKind::RotationFinished(report.clone()));
    }
}

#[cfg(test)]
#[path = "rotator_tests.rs"]
mod tests;

/// Emits a `failover` event when generation `id`'s writable connections move to another host.
/// Holds the target weakly: the generation's pool must not keep its target alive.
fn failover_event(target: &Arc<TargetHandle>, id: u64) -> OnHostChange {
    let target = Arc::downgrade(target);
    OnHostChange::new(move |change: HostChange| {
        if let Some(t) = target.upgrade() {
            tracing::warn!(target_name = %t.name(), generation = id, from = %change.from, to = %change.to, "the writable server moved: new connections go to the new one");
            t.emit(EventKind::Failover {
                generation: id,
                from: change.from,
                to: change.to,
            });
        }
    })
}
