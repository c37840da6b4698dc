//! A target at run time: the current generation (where a request goes), its status, and the
//! door to its rotator.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use super::breaker::BreakerState;
use super::generation::Generation;
use super::status::{
    DrainingInfo, Event, EventKind, GenerationInfo, PoolStats, TargetState, TargetStatus,
};
use super::{RotationReport, Trigger};
use crate::pool::{PoolConnection, PoolError, ServerConn};

/// A request to the rotator.
#[derive(Debug)]
pub(crate) struct Command {
    pub trigger: Trigger,
    pub force: bool,
    pub reply: Option<oneshot::Sender<RotationReport>>,
}

/// Status fields the rotator writes and the API reads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub state: TargetState,
    pub reason: Option<String>,
    pub source: String,
    pub last_rotation: Option<RotationReport>,
    pub last_error: Option<String>,
    pub next_fetch_at: Option<SystemTime>,
    pub breaker: BreakerState,
    pub draining: BTreeMap<u64, (Arc<Generation>, SystemTime)>,
}

/// One target.
#[derive(Debug)]
pub struct TargetRuntime {
    name: String,
    current: ArcSwapOption<Generation>,
    pub(crate) shared: Mutex<Shared>,
    commands: mpsc::Sender<Command>,
    pub(crate) auth_failure: Arc<Notify>,
    events: broadcast::Sender<Event>,
    state_tx: watch::Sender<TargetState>,
    max_size: u32,
    /// True while the target's rotator task runs (the watchdog checks it).
    pub(crate) alive: std::sync::atomic::AtomicBool,
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

/// Why no connection could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("target \"{target}\" has no live pool yet: {reason}")]
    NotReady { target: String, reason: String },
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// Why a rotation request was not taken.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

impl TargetRuntime {
    pub(crate) fn new(
        name: String,
        source: String,
        events: broadcast::Sender<Event>,
        max_size: u32,
    ) -> (Arc<TargetRuntime>, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(256);
        let target = Arc::new(TargetRuntime {
            name,
            current: ArcSwapOption::empty(),
            shared: Mutex::new(Shared {
                state: TargetState::Starting,
                reason: None,
                source,
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
            max_size,
            alive: std::sync::atomic::AtomicBool::new(false),
        });
        (target, rx)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether its rotator task is running.
    pub fn rotator_alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The generation requests use now.
    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current.load_full()
    }

    /// Replaces the current generation; returns the old one.
    pub(crate) fn swap(&self, new: Arc<Generation>) -> Option<Arc<Generation>> {
        self.current.swap(Some(new))
    }

    /// Takes the current generation away (shutdown).
    pub(crate) fn take(&self) -> Option<Arc<Generation>> {
        self.current.swap(None)
    }

    pub(crate) fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("never poisoned")
    }

    pub(crate) fn emit(&self, kind: EventKind) {
        let _ = self.events.send(Event {
            target: self.name.clone(),
            at: SystemTime::now(),
            kind,
        });
    }

    /// Sets the state and tells subscribers when it changes.
    pub(crate) fn set_state(&self, state: TargetState, reason: Option<String>) {
        let from = {
            let mut s = self.shared();
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
                    .shared()
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
                Err(e) => return Err(e.into()),
            }
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
        let s = self.shared();
        let pool = match &current {
            Some(g) => {
                let st = g.pool.state();
                PoolStats {
                    max_size: self.max_size,
                    connections: st.connections,
                    idle: st.idle_connections,
                    in_use: st.connections.saturating_sub(st.idle_connections),
                    waiting: g.pool.waiting(),
                    checkout_timeouts: g.pool.health().checkout_timeouts(),
                    connect_failures: g.pool.health().connect_failures(),
                    last_connect_error: g.pool.health().last_error().map(|(_, e)| e.to_string()),
                }
            }
            None => PoolStats {
                max_size: self.max_size,
                ..PoolStats::default()
            },
        };
        TargetStatus {
            name: self.name.clone(),
            state: s.state,
            reason: s.reason.clone(),
            source: s.source.clone(),
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
                    deadline: *deadline,
                })
                .collect(),
        }
    }
}
