//! The engine: every target's runtime and rotator, start-up readiness, the event stream and
//! shutdown. Shutdown follows mini-redis: a watch flips, every rotator drains its generations
//! and returns, and the engine awaits them all.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use super::rotator::Rotator;
use super::status::{Event, TargetState};
use super::target::TargetRuntime;
use super::Outcome;
use crate::config::{Config, Source};

/// How many events a slow subscriber may fall behind before it misses some.
const EVENT_BACKLOG: usize = 1024;

/// All targets, running.
pub struct Engine {
    targets: Vec<Arc<TargetRuntime>>,
    events: broadcast::Sender<Event>,
    shutdown: watch::Sender<bool>,
    rotators: tokio::sync::Mutex<JoinSet<()>>,
}

/// Which targets made it by the start-up deadline, and why the others did not.
#[derive(Clone, Debug, Default)]
pub struct StartupReport {
    pub ready: Vec<String>,
    /// Target name and a sentence: the failed step and its error.
    pub not_ready: Vec<(String, String)>,
}

fn describe(source: &Source) -> String {
    match source {
        Source::File(f) => format!("file {}", f.path.display()),
        Source::Aws(a) => format!("aws secret {}", a.secret_id),
        Source::Vault(v) => {
            let name = v.path.as_deref().or(v.role.as_deref()).unwrap_or_default();
            format!("vault {} {}/{name}", v.address, v.mount())
        }
        Source::Development { .. } => "DATABASE_URL".to_string(),
    }
}

impl Engine {
    /// Starts a rotator per target; each begins with its start-up rotation.
    pub fn start(config: &Config) -> Engine {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let (shutdown, _) = watch::channel(false);
        let mut rotators = JoinSet::new();
        let mut targets = Vec::new();
        for t in &config.targets {
            let (runtime, commands) = TargetRuntime::new(
                t.name.clone(),
                describe(&t.source),
                events.clone(),
                t.pool.max_size,
            );
            let rotator = Rotator::new(runtime.clone(), t.clone(), commands, shutdown.subscribe());
            rotators.spawn(rotator.run());
            targets.push(runtime);
        }
        Engine {
            targets,
            events,
            shutdown,
            rotators: tokio::sync::Mutex::new(rotators),
        }
    }

    pub fn targets(&self) -> &[Arc<TargetRuntime>] {
        &self.targets
    }

    pub fn target(&self, name: &str) -> Option<&Arc<TargetRuntime>> {
        self.targets.iter().find(|t| t.name() == name)
    }

    /// Whether every rotator task is running (for the systemd watchdog).
    pub fn rotators_alive(&self) -> bool {
        self.targets.iter().all(|t| t.rotator_alive())
    }

    /// One line for `systemctl status`: `app_rw: gen 7 ready; app_ro: degraded (...)`.
    pub fn status_line(&self) -> String {
        self.targets
            .iter()
            .map(|t| {
                let s = t.status();
                let gen = s
                    .generation
                    .map(|g| format!("gen {} ", g.id))
                    .unwrap_or_default();
                match s.reason {
                    Some(r) if s.state != TargetState::Ready => {
                        let mut r = r;
                        r.truncate(120);
                        format!("{}: {gen}{} ({r})", s.name, s.state.as_str())
                    }
                    _ => format!("{}: {gen}{}", s.name, s.state.as_str()),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Rotation, state and drain events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Waits until every target has a live generation, or `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> StartupReport {
        let deadline = tokio::time::Instant::now() + timeout;
        for t in &self.targets {
            let mut rx = t.state_watch();
            // One deadline for all: waiting on them in turn costs no more than in parallel.
            let _ = tokio::time::timeout_at(deadline, rx.wait_for(|_| t.current().is_some())).await;
        }
        let mut report = StartupReport::default();
        for t in &self.targets {
            if t.current().is_some() {
                report.ready.push(t.name().to_string());
            } else {
                let status = t.status();
                let why = match status.last_rotation.map(|r| r.outcome) {
                    Some(Outcome::Failed { step, error }) => {
                        format!("{} failed: {error}", step.as_str())
                    }
                    _ => match status.state {
                        TargetState::Starting => format!("still starting after {timeout:?}"),
                        _ => status.reason.unwrap_or_else(|| "no live generation".into()),
                    },
                };
                report.not_ready.push((t.name().to_string(), why));
            }
        }
        report
    }

    /// Stops every rotator; each drains its live and old generations (revoking leases where
    /// configured) before this returns.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let mut rotators = self.rotators.lock().await;
        while rotators.join_next().await.is_some() {}
    }
}
