//! The daemon's parts and their one shutdown. Start order: the socket first (a second daemon
//! must fail before it touches anything), the engine, the API, the webhook listener, the
//! recorder. Stop order: stop accepting and let requests finish (`daemon.shutdown_timeout`),
//! then stop the engine, whose drains hurry (statements still running are cancelled at once)
//! and whose leases are revoked, then remove the socket.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::notify::{self, Notifier};
use super::ServiceError;
use crate::api::{self, ApiState, ReloadRequest};
use crate::config::Config;
use crate::listen::{socket, SocketGuard, SocketSpec};
use crate::metrics::Metrics;
use crate::rotation::{Engine, ReloadReport, StartupReport};
use crate::shutdown;
use crate::targets::{Event, EventKind, Registry};

/// How long the engine may take to stop after the requests are done: drains hurry at shutdown
/// (cancel, then a 5 s grace) and lease revocations have their own 5 s request timeout.
const ENGINE_STOP_BUDGET: Duration = Duration::from_secs(15);

/// What [`Daemon::wake`] reports.
pub enum Wake {
    Reload(ReloadRequest),
    ApiStopped,
}

/// A running daemon.
pub struct Daemon {
    config: Config,
    engine: Arc<Engine>,
    shutdown: shutdown::Trigger,
    api: Option<JoinHandle<()>>,
    api_state: Arc<ApiState>,
    postgres: Option<(JoinHandle<()>, SocketGuard)>,
    webhooks: Option<crate::webhook::Listener>,
    recorder: JoinHandle<()>,
    watchdog: Option<JoinHandle<()>>,
    notifier: Arc<Notifier>,
    reloads: mpsc::Receiver<ReloadRequest>,
    socket: Option<SocketGuard>,
    /// Webhook signatures seen, kept across reloads.
    replay: crate::webhook::auth::ReplayCache,
}

impl Daemon {
    /// Binds the API socket, starts the engine and the listeners.
    pub async fn start(config: Config) -> Result<Daemon, ServiceError> {
        let spec = SocketSpec {
            path: config.api.socket.clone(),
            mode: config.api.socket_mode,
            gid: config.api.socket_gid,
            key: "api.socket",
        };
        let (listener, guard) = tokio::task::spawn_blocking(move || socket::bind(&spec))
            .await
            .expect("binding the socket does not panic")?;
        let pg_listener = match &config.postgres {
            Some(p) => {
                let spec = SocketSpec {
                    path: p.socket.clone(),
                    mode: p.socket_mode,
                    gid: p.socket_gid,
                    key: "postgres.socket_dir",
                };
                Some(
                    tokio::task::spawn_blocking(move || socket::bind(&spec))
                        .await
                        .expect("binding the socket does not panic")?,
                )
            }
            None => None,
        };
        let engine = Arc::new(Engine::start(&config));
        let registry = engine.registry();
        let metrics = Arc::new(Metrics::new());
        let notifier = Arc::new(Notifier::from_env());
        let recorder = tokio::spawn(record(
            registry.subscribe(),
            metrics.clone(),
            registry.clone(),
            engine.clone(),
            notifier.clone(),
        ));
        let (shutdown, stopped) = shutdown::channel();
        let (reload_tx, reloads) = mpsc::channel(4);
        let postgres = match (pg_listener, &config.postgres) {
            (Some((listener, guard)), Some(settings)) => {
                let fe = crate::postgres::Frontend::new(
                    registry.clone(),
                    settings.clone(),
                    config.api.admin_uids.clone(),
                    metrics.clone(),
                    shutdown.subscribe(),
                );
                tracing::info!(socket = %settings.socket.display(), "PostgreSQL front end listening");
                let grace = config.daemon.shutdown_timeout;
                Some((
                    tokio::spawn(crate::postgres::serve(listener, fe, grace)),
                    guard,
                ))
            }
            _ => None,
        };
        let mut state = ApiState::new(&config.api, registry.clone(), metrics, stopped);
        state.reload = Some(reload_tx);
        let api_state = Arc::new(state);
        let replay = crate::webhook::auth::ReplayCache::default();
        let webhooks = match &config.webhook {
            Some(w) => match crate::webhook::start(w, registry.clone(), replay.clone()).await {
                Ok(l) => {
                    tracing::info!(listen = %w.listen, "webhook listener started");
                    Some(l)
                }
                Err(e) => {
                    engine.shutdown().await;
                    recorder.abort();
                    return Err(e.into());
                }
            },
            None => None,
        };
        let api = tokio::spawn(api::serve(
            listener,
            api_state.clone(),
            config.daemon.shutdown_timeout,
        ));
        tracing::info!(socket = %config.api.socket.display(), targets = config.targets.len(), "credswap started");
        Ok(Daemon {
            config,
            engine,
            shutdown,
            api: Some(api),
            api_state,
            postgres,
            webhooks,
            recorder,
            watchdog: None,
            notifier,
            reloads,
            socket: Some(guard),
            replay,
        })
    }

    /// The socket files the daemon created (removed on the way out, also by a second signal).
    pub fn socket_paths(&self) -> Vec<std::path::PathBuf> {
        let mut paths = vec![self.config.api.socket.clone()];
        if let Some((_, guard)) = &self.postgres {
            paths.push(guard.path().to_path_buf());
        }
        paths
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Waits until every target has a live generation, or `daemon.startup_timeout`.
    pub async fn wait_ready(&self) -> StartupReport {
        self.engine
            .wait_ready(self.config.daemon.startup_timeout)
            .await
    }

    /// Tells systemd the daemon is ready, and starts feeding the watchdog: only while the
    /// runtime schedules this task and every rotator runs, so a wedged daemon gets restarted.
    pub fn ready(&mut self) {
        self.notifier
            .send(&format!("READY=1\nSTATUS={}", self.engine.status_line()));
        self.watchdog = Notifier::watchdog_interval().map(|every| {
            let (engine, notifier) = (self.engine.clone(), self.notifier.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if engine.rotators_alive() {
                        notifier.send("WATCHDOG=1");
                    } else {
                        tracing::error!(
                            "a rotator task has stopped; withholding the watchdog ping"
                        );
                    }
                }
            })
        });
    }

    /// The next thing the daemon itself must act on: a reload asked for through the API, or
    /// the API server ending on its own (it should not).
    pub async fn wake(&mut self) -> Wake {
        let api = self.api.as_mut();
        tokio::select! {
            Some(reply) = self.reloads.recv() => Wake::Reload(reply),
            _ = async {
                match api {
                    Some(api) => { let _ = api.await; }
                    None => std::future::pending().await,
                }
            } => {
                self.api = None;
                Wake::ApiStopped
            }
        }
    }

    /// Re-reads the configuration from where it first came from and applies it. An invalid one
    /// is refused and the running one stays. `[api]` and `[daemon]` changes need a restart.
    pub async fn reload(&mut self) -> Result<ReloadReport, String> {
        self.notifier.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            notify::monotonic_usec()
        ));
        let file = self.config.file.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            Config::load(file.as_deref(), &crate::config::ProcessEnv)
        })
        .await
        .expect("loading the configuration does not panic");
        let result = match loaded {
            Err(errors) => {
                let text = errors.to_string();
                tracing::error!("configuration refused, the running one stays:\n{text}");
                Err(text)
            }
            Ok(new) => {
                if new.api.socket != self.config.api.socket {
                    tracing::warn!("api.socket changed; that takes a restart");
                }
                for w in &new.warnings {
                    tracing::warn!("{w}");
                }
                let report = self.engine.reload(&new, new.daemon.startup_timeout).await;
                if let Some(old) = self.webhooks.take() {
                    old.stop().await;
                }
                if let Some(w) = &new.webhook {
                    // Keys and certificates are read again here.
                    match crate::webhook::start(w, self.engine.registry(), self.replay.clone())
                        .await
                    {
                        Ok(l) => self.webhooks = Some(l),
                        Err(e) => tracing::error!("the webhook listener could not restart: {e}"),
                    }
                }
                self.config.targets = new.targets;
                self.config.webhook = new.webhook;
                Ok(report)
            }
        };
        self.notifier
            .send(&format!("READY=1\nSTATUS={}", self.engine.status_line()));
        result
    }

    /// Stops everything, in order, within `daemon.shutdown_timeout` plus the engine's budget.
    pub async fn stop(mut self) {
        tracing::info!("shutting down: no new requests; in-flight ones may finish");
        self.notifier
            .send("STOPPING=1\nSTATUS=stopping: finishing requests, draining pools");
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        self.shutdown.fire();
        if let Some(w) = self.webhooks.take() {
            w.stop().await;
        }
        if let Some(api) = self.api.take() {
            // The accept loop itself gives connections `shutdown_timeout`; a little more here
            // for it to close them.
            let bound = self.config.daemon.shutdown_timeout + Duration::from_secs(2);
            if tokio::time::timeout(bound, api).await.is_err() {
                tracing::warn!("the API did not stop in time");
            }
        }
        if let Some((task, guard)) = self.postgres.take() {
            // Sessions end at their next idle point; the accept loop gives them the same time.
            let bound = self.config.daemon.shutdown_timeout + Duration::from_secs(2);
            if tokio::time::timeout(bound, task).await.is_err() {
                tracing::warn!("the PostgreSQL front end did not stop in time");
            }
            drop(guard);
        }
        if tokio::time::timeout(ENGINE_STOP_BUDGET, self.engine.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(budget = ?ENGINE_STOP_BUDGET, "pools still draining at the stop budget; exiting anyway");
        }
        self.recorder.abort();
        drop(self.api_state);
        drop(self.socket.take());
    }
}

/// Feeds rotation events into the metrics and the `STATUS=` line.
async fn record(
    mut events: broadcast::Receiver<Event>,
    metrics: Arc<Metrics>,
    targets: Arc<Registry>,
    engine: Arc<Engine>,
    notifier: Arc<Notifier>,
) {
    loop {
        match events.recv().await {
            Ok(e) => {
                let kind = targets
                    .get(&e.target)
                    .map_or("unknown", |t| t.source_kind());
                metrics.observe(&e, kind);
                if notifier.enabled()
                    && matches!(
                        e.kind,
                        EventKind::StateChanged { .. } | EventKind::RotationFinished(_)
                    )
                {
                    notifier.send(&format!("STATUS={}", engine.status_line()));
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        }
    }
}
