//! The engine: every target's rotator, the registry of their handles, start-up readiness,
//! reload and shutdown. Shutdown follows mini-redis: a watch flips, every rotator drains its
//! generations and returns, and the engine awaits them all.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::rotator::Rotator;
use crate::config::{Config, Source, Target};
use crate::targets::{Event, Outcome, Registry, TargetHandle, TargetState};

/// All targets, running.
pub struct Engine {
    targets: RwLock<Vec<Running>>,
    registry: Arc<Registry>,
    /// `[postgres]` is on (fixed until a restart): generations prove its login path too.
    verify_raw: bool,
    /// Rotators that were told to stop, still draining; awaited at shutdown.
    retired: tokio::sync::Mutex<JoinSet<()>>,
}

/// One target and its rotator (its configuration is the handle's settings).
struct Running {
    runtime: Arc<TargetHandle>,
    stop: watch::Sender<bool>,
    rotator: Option<JoinHandle<()>>,
}

impl Running {
    fn start(t: &Target, registry: &Registry, verify_raw: bool) -> Running {
        let (runtime, commands) =
            TargetHandle::new(t, describe(&t.source), registry.event_sender());
        let (stop, stop_rx) = watch::channel(false);
        let rotator = Rotator::new(runtime.clone(), t.clone(), commands, stop_rx, verify_raw);
        Running {
            runtime,
            stop,
            rotator: Some(tokio::spawn(rotator.run())),
        }
    }

    /// Tells the rotator to stop (it drains its generations) and hands back its task.
    fn retire(mut self) -> Option<JoinHandle<()>> {
        self.stop.send_replace(true);
        self.rotator.take()
    }
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Changed targets whose new settings did not produce a live pool: the old one serves on.
    pub kept_old: Vec<(String, String)>,
    /// Targets whose access lists changed: applied in place, the generation kept.
    pub access_changed: Vec<String>,
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

/// Whether two target configurations need the same pool: everything but the access lists,
/// which apply in place. Passwords never differ here (only the development source has one,
/// and `Debug` redacts it), so Debug output is a faithful key.
fn same_pool(a: &Target, b: &Target) -> bool {
    let without_access = |t: &Target| {
        let mut t = t.clone();
        t.access = Default::default();
        format!("{t:?}")
    };
    without_access(a) == without_access(b)
}

impl Engine {
    /// Starts a rotator per target; each begins with its start-up rotation.
    pub fn start(config: &Config) -> Engine {
        let registry = Registry::new();
        let targets: Vec<Running> = config
            .targets
            .iter()
            .map(|t| Running::start(t, &registry, config.postgres.is_some()))
            .collect();
        registry.publish(targets.iter().map(|r| r.runtime.clone()).collect());
        Engine {
            verify_raw: config.postgres.is_some(),
            targets: RwLock::new(targets),
            registry,
            retired: tokio::sync::Mutex::new(JoinSet::new()),
        }
    }

    /// The handles front ends hold.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Running>> {
        self.targets.read().expect("never poisoned")
    }

    /// The targets now.
    pub fn targets(&self) -> Vec<Arc<TargetHandle>> {
        self.registry.all().to_vec()
    }

    /// A target by name.
    pub fn target(&self, name: &str) -> Option<Arc<TargetHandle>> {
        self.registry.get(name)
    }

    /// Applies a new configuration: added targets start, removed ones drain and stop, changed
    /// ones are rebuilt beside the old (which serves until the new one has a live pool, and
    /// keeps serving if it never gets one within `ready_within`), unchanged ones are untouched.
    pub async fn reload(&self, config: &Config, ready_within: Duration) -> ReloadReport {
        let mut report = ReloadReport::default();
        let old: Vec<(String, Target)> = self
            .read()
            .iter()
            .map(|r| {
                (
                    r.runtime.name().to_string(),
                    (*r.runtime.settings()).clone(),
                )
            })
            .collect();
        let mut starting = Vec::new();
        for t in &config.targets {
            match old.iter().find(|(n, _)| *n == t.name) {
                None => {
                    report.added.push(t.name.clone());
                    starting.push(Running::start(t, &self.registry, self.verify_raw));
                }
                Some((_, was)) if same_pool(was, t) => {
                    if was.access != t.access {
                        self.apply_in_place(t);
                        report.access_changed.push(t.name.clone());
                    }
                    report.unchanged.push(t.name.clone());
                }
                Some(_) => {
                    report.changed.push(t.name.clone());
                    starting.push(Running::start(t, &self.registry, self.verify_raw));
                }
            }
        }
        report.removed = old
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| !config.targets.iter().any(|t| &t.name == n))
            .collect();
        // Give the changed targets' new pools their chance before they replace the old.
        let deadline = tokio::time::Instant::now() + ready_within;
        let mut replacements = Vec::new();
        for r in starting {
            let name = r.runtime.name().to_string();
            if report.changed.contains(&name) {
                let mut rx = r.runtime.state_watch();
                let runtime = r.runtime.clone();
                let _ =
                    tokio::time::timeout_at(deadline, rx.wait_for(|_| runtime.current().is_some()))
                        .await;
                if r.runtime.current().is_none() {
                    let why = r
                        .runtime
                        .status()
                        .reason
                        .unwrap_or_else(|| "no live pool in time".into());
                    tracing::warn!(target_name = %name, "reload: the new settings gave no live pool ({why}); the old pool keeps serving");
                    report.kept_old.push((name, why));
                    if let Some(task) = r.retire() {
                        self.retired.lock().await.spawn(async move {
                            let _ = task.await;
                        });
                    }
                    continue;
                }
            }
            replacements.push(r);
        }
        let mut out = Vec::new();
        {
            let mut targets = self.targets.write().expect("never poisoned");
            let kept: Vec<String> = report.kept_old.iter().map(|(n, _)| n.clone()).collect();
            let mut i = 0;
            while i < targets.len() {
                let name = targets[i].runtime.name().to_string();
                let replaced = replacements.iter().any(|r| r.runtime.name() == name);
                if report.removed.contains(&name) || (replaced && !kept.contains(&name)) {
                    out.push(targets.remove(i));
                } else {
                    i += 1;
                }
            }
            targets.extend(replacements);
            targets.sort_by_key(|r| {
                config
                    .targets
                    .iter()
                    .position(|t| t.name == r.runtime.name())
                    .unwrap_or(usize::MAX)
            });
            self.registry
                .publish(targets.iter().map(|r| r.runtime.clone()).collect());
        }
        let mut retired = self.retired.lock().await;
        for r in out {
            if let Some(task) = r.retire() {
                retired.spawn(async move {
                    let _ = task.await;
                });
            }
        }
        tracing::info!(added = ?report.added, removed = ?report.removed, changed = ?report.changed, access_changed = ?report.access_changed, unchanged = report.unchanged.len(), "configuration reloaded");
        report
    }

    /// Takes new access lists for a running target without touching its pool.
    fn apply_in_place(&self, config: &Target) {
        if let Some(target) = self.registry.get(&config.name) {
            target.update_settings(config);
        }
    }

    /// Whether every rotator task is running (for the systemd watchdog).
    pub fn rotators_alive(&self) -> bool {
        self.read().iter().all(|r| r.runtime.rotator_alive())
    }

    /// One line for `systemctl status`: `app_rw: gen 7 ready; app_ro: degraded (...)`.
    pub fn status_line(&self) -> String {
        self.targets()
            .iter()
            .map(|t| {
                let s = t.status();
                let gen = s
                    .generation
                    .map(|g| format!("gen {} ", g.id))
                    .unwrap_or_default();
                match s.reason {
                    Some(r) if s.state != TargetState::Ready => {
                        format!("{}: {gen}{} ({})", s.name, s.state.as_str(), clip(&r, 120))
                    }
                    _ => format!("{}: {gen}{}", s.name, s.state.as_str()),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Rotation, state and drain events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.registry.subscribe()
    }

    /// Waits until every target has a live generation, or `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> StartupReport {
        let deadline = tokio::time::Instant::now() + timeout;
        let targets = self.targets();
        for t in &targets {
            let mut rx = t.state_watch();
            // One deadline for all: waiting on them in turn costs no more than in parallel.
            let _ = tokio::time::timeout_at(deadline, rx.wait_for(|_| t.current().is_some())).await;
        }
        let mut report = StartupReport::default();
        for t in &targets {
            if t.current().is_some() {
                report.ready.push(t.name().to_string());
            } else {
                let status = t.status();
                let why = match status.last_rotation.map(|r| r.outcome) {
                    Some(Outcome::Failed(error)) => error.to_string(),
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
        let tasks: Vec<JoinHandle<()>> = {
            let mut targets = self.targets.write().expect("never poisoned");
            let tasks = targets.drain(..).filter_map(Running::retire).collect();
            self.registry.publish(Vec::new());
            tasks
        };
        for t in tasks {
            let _ = t.await;
        }
        let mut retired = self.retired.lock().await;
        while retired.join_next().await.is_some() {}
    }
}

/// At most `max` bytes of `text`, cut at a character boundary (a status line must never panic
/// on a localized message).
fn clip(text: &str, max: usize) -> &str {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        let text = format!("{}é and more", "x".repeat(119));
        assert_eq!(clip(&text, 120), "x".repeat(119));
        assert_eq!(clip("short", 120), "short");
    }
}
