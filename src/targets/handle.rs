//! One target as front ends see it: its current generation (where a request goes), checkout
//! with typed errors, its settings, its status, and the door to its rotator. The rotation
//! engine writes through the `pub(crate)` methods at the bottom; nothing else writes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use super::generation::Generation;
use super::report::{RotationReport, Trigger};
use super::status::{
    BreakerState, DrainingInfo, Event, EventKind, GenerationInfo, PoolStats, TargetState,
    TargetStatus,
};
use crate::config::access::Peer;
use crate::config::Target;
use crate::pool::{PoolConnection, PoolError, ServerConn};

/// A request to the rotator.
#[derive(Debug)]
pub(crate) struct Command {
    pub trigger: Trigger,
    pub force: bool,
    pub reply: Option<oneshot::Sender<RotationReport>>,
}

/// Status fields the rotator and drains report through the handle's methods.
#[derive(Debug)]
struct Shared {
    state: TargetState,
    reason: Option<String>,
    last_rotation: Option<RotationReport>,
    last_error: Option<String>,
    next_fetch_at: Option<SystemTime>,
    breaker: BreakerState,
    draining: BTreeMap<u64, (Arc<Generation>, SystemTime)>,
}

/// One target.
#[derive(Debug)]
pub struct TargetHandle {
    name: String,
    current: ArcSwapOption<Generation>,
    /// The target's configuration now: access lists and limits change in place on reload.
    settings: ArcSwap<Target>,
    /// How status names the source (`aws secret prod/app`).
    source: String,
    shared: Mutex<Shared>,
    commands: mpsc::Sender<Command>,
    pub(crate) auth_failure: Arc<Notify>,
    events: broadcast::Sender<Event>,
    state_tx: watch::Sender<TargetState>,
    /// True while the target's rotator task runs (the watchdog checks it).
    alive: AtomicBool,
    /// Places for PostgreSQL front-end sessions: `pool.max_size`, taken in arrival order.
    session_permits: Arc<tokio::sync::Semaphore>,
}

/// A connection of the current generation, with the generation it came from.
#[derive(Debug)]
pub struct Checkout {
    pub generation: Arc<Generation>,
    conn: PoolConnection,
}

impl Checkout {
    /// The pooled connection (to cancel its statement).
    pub fn conn(&self) -> &PoolConnection {
        &self.conn
    }
}

impl std::ops::Deref for Checkout {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        &self.conn
    }
}

/// Why no connection could be handed out. Front ends map these to their own errors.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("target \"{target}\" has no live pool yet: {reason}")]
    NotReady { target: String, reason: String },
    #[error("no connection free within {waited:?} (target \"{target}\", max_size {max_size}); the pool is exhausted, retry shortly")]
    Exhausted {
        target: String,
        max_size: u32,
        waited: Duration,
    },
    #[error("no connection: {cause}")]
    Unavailable {
        target: String,
        #[source]
        cause: PoolError,
    },
    #[error("target \"{target}\" is shutting down")]
    ShuttingDown { target: String },
}

/// Why a rotation request was not taken.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

impl TargetHandle {
    pub(crate) fn new(
        config: &Target,
        source: String,
        events: broadcast::Sender<Event>,
    ) -> (Arc<TargetHandle>, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(256);
        let target = Arc::new(TargetHandle {
            name: config.name.clone(),
            current: ArcSwapOption::empty(),
            settings: ArcSwap::from_pointee(config.clone()),
            source,
            shared: Mutex::new(Shared {
                state: TargetState::Starting,
                reason: None,
                last_rotation: None,
                last_error: None,
                next_fetch_at: None,
                breaker: BreakerState::Closed,
                draining: BTreeMap::new(),
            }),
            commands: tx,
            auth_failure: Arc::new(Notify::new()),
            events,
            state_tx: watch::channel(TargetState::Starting).0,
            alive: AtomicBool::new(false),
            session_permits: Arc::new(tokio::sync::Semaphore::new(config.pool.max_size as usize)),
        });
        (target, rx)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The target's configuration now (access lists, limits, source).
    pub fn settings(&self) -> Arc<Target> {
        self.settings.load_full()
    }

    /// The allow-lists now.
    pub fn allows(&self, peer: &Peer) -> Option<String> {
        self.settings.load().access.allows(peer)
    }

    /// The source kind (`aws`, `vault`, `file`, `development`), for metrics.
    pub fn source_kind(&self) -> &'static str {
        self.settings.load().source.kind()
    }

    /// The places for PostgreSQL front-end sessions (a tokio semaphore: FIFO).
    pub fn session_permits(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.session_permits
    }

    /// Tells the rotator the live credentials were refused (a new connection failed to log in).
    pub fn report_auth_failure(&self) {
        self.auth_failure.notify_one();
    }

    /// Whether its rotator task is running.
    pub fn rotator_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// The generation requests use now.
    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current.load_full()
    }

    /// Watches the state (start-up waits on it).
    pub fn state_watch(&self) -> watch::Receiver<TargetState> {
        self.state_tx.subscribe()
    }

    /// A connection of the current generation. If the generation is swapped while waiting, the
    /// wait moves to the new one, so a rotation never fails a request. Each wait is bounded by
    /// the pool's checkout timeout; a request moves on only when a newer generation exists.
    pub async fn checkout(&self) -> Result<Checkout, CheckoutError> {
        loop {
            let Some(generation) = self.current() else {
                let reason = self
                    .lock()
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the first rotation has not finished".into());
                return Err(CheckoutError::NotReady {
                    target: self.name.clone(),
                    reason,
                });
            };
            match generation.pool.get().await {
                Ok(conn) => return Ok(Checkout { generation, conn }),
                Err(PoolError::Draining)
                    if self.current().is_some_and(|now| now.id != generation.id) =>
                {
                    continue
                }
                Err(e) => return Err(self.checkout_error(e)),
            }
        }
    }

    fn checkout_error(&self, e: PoolError) -> CheckoutError {
        let target = self.name.clone();
        match e {
            PoolError::CheckoutTimeout {
                last_error: Some(cause),
                ..
            } => CheckoutError::Unavailable {
                target,
                cause: PoolError::Connect(cause),
            },
            PoolError::CheckoutTimeout {
                waited,
                last_error: None,
            } => CheckoutError::Exhausted {
                target,
                max_size: self.settings.load().pool.max_size,
                waited,
            },
            PoolError::Draining => CheckoutError::ShuttingDown { target },
            cause => CheckoutError::Unavailable { target, cause },
        }
    }

    /// Asks for a rotation. With `wait`, resolves with its report.
    pub async fn rotate(
        &self,
        trigger: Trigger,
        force: bool,
        wait: bool,
    ) -> Result<Option<RotationReport>, RotateError> {
        let (reply, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let command = Command {
            trigger,
            force,
            reply,
        };
        if wait {
            self.commands
                .send(command)
                .await
                .map_err(|_| RotateError::ShuttingDown)?;
        } else if let Err(mpsc::error::TrySendError::Closed(_)) = self.commands.try_send(command) {
            return Err(RotateError::ShuttingDown);
        }
        // A full queue means rotations are already pending: this trigger is coalesced.
        match rx {
            Some(rx) => rx.await.map(Some).map_err(|_| RotateError::ShuttingDown),
            None => Ok(None),
        }
    }

    /// The status model.
    pub fn status(&self) -> TargetStatus {
        let current = self.current();
        let max_size = self.settings.load().pool.max_size;
        let s = self.lock();
        let pool = match &current {
            Some(g) => {
                let st = g.pool.state();
                PoolStats {
                    max_size,
                    connections: st.connections,
                    idle: st.idle_connections,
                    in_use: st.connections.saturating_sub(st.idle_connections),
                    waiting: g.pool.waiting(),
                    checkout_timeouts: g.pool.health().checkout_timeouts(),
                    connect_failures: g.pool.health().connect_failures(),
                    last_connect_error: g.pool.health().last_error().map(|(_, e)| e.to_string()),
                    postgres_sessions: g.sessions.open(),
                    postgres_idle_servers: g.sessions.kept(),
                    hosts: g.pool.plan().hosts().status(),
                }
            }
            None => PoolStats {
                max_size,
                ..PoolStats::default()
            },
        };
        TargetStatus {
            name: self.name.clone(),
            state: s.state,
            reason: s.reason.clone(),
            source: self.source.clone(),
            generation: current.as_ref().map(|g| GenerationInfo {
                id: g.id,
                credential_version: g.credential_version.clone(),
                username: g.username.clone(),
                built_at: g.built_at,
                trigger: g.trigger,
                tls: g.pool.tls_in_use(),
                lease_expires_at: g.lease.as_ref().map(|l| l.expires_at()),
            }),
            last_rotation: s.last_rotation.clone(),
            last_error: s.last_error.clone(),
            next_fetch_at: s.next_fetch_at,
            breaker: s.breaker,
            pool,
            draining: s
                .draining
                .iter()
                .map(|(id, (g, deadline))| DrainingInfo {
                    generation: *id,
                    remaining_connections: g.pool.state().connections,
                    postgres_sessions: g.sessions.open(),
                    deadline: *deadline,
                    hosts: g.pool.plan().hosts().status(),
                })
                .collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("never poisoned")
    }

    // The control side: called by the rotation engine only.

    /// Applies settings that do not touch connections (access lists, limits): at once, for the
    /// next request and every open event stream.
    pub(crate) fn update_settings(&self, config: &Target) {
        self.settings.store(Arc::new(config.clone()));
    }

    pub(crate) fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::Release);
    }

    /// Replaces the current generation; returns the old one.
    pub(crate) fn swap(&self, new: Arc<Generation>) -> Option<Arc<Generation>> {
        self.current.swap(Some(new))
    }

    /// Takes the current generation away (shutdown).
    pub(crate) fn take(&self) -> Option<Arc<Generation>> {
        self.current.swap(None)
    }

    pub(crate) fn emit(&self, kind: EventKind) {
        let _ = self.events.send(Event {
            target: self.name.clone(),
            at: SystemTime::now(),
            kind,
        });
    }

    /// Records a finished rotation: its report, the error it leaves (if any), the breaker and
    /// when the next fetch is due.
    pub(crate) fn record_rotation(
        &self,
        report: &RotationReport,
        error: Option<String>,
        breaker: BreakerState,
        next_fetch_at: SystemTime,
    ) {
        let mut s = self.lock();
        s.last_rotation = Some(report.clone());
        s.last_error = error;
        s.breaker = breaker;
        s.next_fetch_at = Some(next_fetch_at);
    }

    /// The last error recorded.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// An old generation started draining, to end by `deadline`.
    pub(crate) fn draining_started(&self, generation: Arc<Generation>, deadline: SystemTime) {
        self.lock()
            .draining
            .insert(generation.id, (generation, deadline));
    }

    /// An old generation is gone.
    pub(crate) fn draining_finished(&self, id: u64) {
        self.lock().draining.remove(&id);
    }

    /// Sets the state and tells subscribers when it changes.
    pub(crate) fn set_state(&self, state: TargetState, reason: Option<String>) {
        let from = {
            let mut s = self.lock();
            let from = s.state;
            s.state = state;
            s.reason = reason.clone();
            from
        };
        self.state_tx.send_replace(state);
        if from != state {
            tracing::info!(target_name = %self.name, from = from.as_str(), to = state.as_str(), reason = reason.as_deref().unwrap_or(""), "target state changed");
            self.emit(EventKind::StateChanged {
                from,
                to: state,
                reason,
            });
        }
    }
}
