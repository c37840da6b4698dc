//! `credswap run`: the daemon's life from start to exit. Start the engine, open the socket,
//! report ready, serve until SIGTERM/SIGINT, then stop accepting, let requests finish, drain
//! every pool and remove the socket. A second signal exits at once. systemd hears about it
//! through [`notify`]: `READY=1`, `STATUS=` lines, `WATCHDOG=1`, `STOPPING=1`.

pub mod notify;

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::api::{self, socket, ApiState};
use crate::config::{Config, StartupPolicy};
use crate::metrics::Metrics;
use crate::rotation::Engine;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    #[error("targets not ready after the start-up timeout:\n{0}")]
    NotReady(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the API server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
}

/// Runs the daemon until a termination signal.
pub async fn run(config: Config) -> Result<(), ServiceError> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServiceError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServiceError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ServiceError::Signals)?;

    // The socket first: a second daemon must fail before it touches anything.
    let (listener, socket_guard) = socket::bind(&config.api)?;
    let engine = Arc::new(Engine::start(&config));
    let metrics = Arc::new(Metrics::new());
    let notifier = Arc::new(notify::Notifier::from_env());
    let recorder = tokio::spawn(record(
        engine.subscribe(),
        metrics.clone(),
        engine.clone(),
        notifier.clone(),
    ));
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<api::ReloadRequest>(4);
    let mut api_state = ApiState::new(&config, engine.clone(), metrics);
    api_state.reload = Some(reload_tx);
    let state = Arc::new(api_state);
    let mut webhooks = match &config.webhook {
        Some(w) => match crate::webhook::start(w, engine.clone(), config.targets.clone()).await {
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
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(api::serve(listener, state.clone(), async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    tracing::info!(socket = %config.api.socket.display(), targets = config.targets.len(), "credswap started");

    let report = engine.wait_ready(config.daemon.startup_timeout).await;
    for (name, why) in &report.not_ready {
        tracing::error!(target_name = %name, "not ready: {why}");
    }
    if !report.not_ready.is_empty() && config.daemon.on_startup_failure == StartupPolicy::Exit {
        let list = report
            .not_ready
            .iter()
            .map(|(n, w)| format!("  {n}: {w}"))
            .collect::<Vec<_>>()
            .join("\n");
        stop_tx.send_replace(true);
        let _ = server.await;
        if let Some(w) = webhooks {
            w.stop().await;
        }
        engine.shutdown().await;
        recorder.abort();
        drop(socket_guard);
        return Err(ServiceError::NotReady(list));
    }
    tracing::info!(ready = ?report.ready, not_ready = report.not_ready.len(), "ready");
    notifier.send(&format!("READY=1\nSTATUS={}", engine.status_line()));
    // The watchdog is fed only while the runtime schedules this task and every rotator runs,
    // so a wedged daemon gets restarted.
    let watchdog = notify::Notifier::watchdog_interval().map(|every| {
        let (engine, notifier) = (engine.clone(), notifier.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if engine.rotators_alive() {
                    notifier.send("WATCHDOG=1");
                } else {
                    tracing::error!("a rotator task has stopped; withholding the watchdog ping");
                }
            }
        })
    });

    let served = loop {
        tokio::select! {
            _ = sigterm.recv() => break None,
            _ = sigint.recv() => break None,
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = reload(&config, &engine, &state, &mut webhooks, &notifier).await;
            }
            Some(reply) = reload_rx.recv() => {
                tracing::info!("reload asked for through the API");
                let _ = reply.send(reload(&config, &engine, &state, &mut webhooks, &notifier).await);
            }
            r = &mut server => break Some(r),
        }
    };
    if let Some(w) = webhooks {
        w.stop().await;
    }
    if let Some(result) = served {
        engine.shutdown().await;
        recorder.abort();
        return match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServiceError::Serve(e)),
            Err(e) => Err(ServiceError::Serve(std::io::Error::other(e))),
        };
    }
    tracing::info!("shutting down: no new requests; in-flight ones may finish");
    notifier.send("STOPPING=1\nSTATUS=stopping: finishing requests, draining pools");
    if let Some(w) = &watchdog {
        w.abort();
    }
    // A second signal means "now" (the socket file still goes: a client must not find it).
    let socket_path = config.api.socket.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {},
            _ = sigint.recv() => {},
        }
        tracing::warn!("second signal: exiting at once");
        let _ = std::fs::remove_file(&socket_path);
        std::process::exit(130);
    });
    stop_tx.send_replace(true);
    if tokio::time::timeout(config.daemon.shutdown_timeout, &mut server)
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?config.daemon.shutdown_timeout, "requests still running at the shutdown timeout; closing them");
        server.abort();
    }
    engine.shutdown().await;
    recorder.abort();
    drop(socket_guard);
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the configuration from where it first came from and applies it. An invalid one is
/// refused and the running one stays. `[api]` and `[daemon]` changes need a restart.
async fn reload(
    running: &Config,
    engine: &Arc<Engine>,
    state: &Arc<ApiState>,
    webhooks: &mut Option<crate::webhook::Listener>,
    notifier: &notify::Notifier,
) -> Result<crate::rotation::ReloadReport, String> {
    notifier.send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        notify::monotonic_usec()
    ));
    let result = match Config::load(running.file.as_deref(), &crate::config::ProcessEnv) {
        Err(errors) => {
            let text = errors.to_string();
            tracing::error!("configuration refused, the running one stays:\n{text}");
            Err(text)
        }
        Ok(new) => {
            if new.api.socket != running.api.socket {
                tracing::warn!("api.socket changed; that takes a restart");
            }
            for w in &new.warnings {
                tracing::warn!("{w}");
            }
            let report = engine.reload(&new, new.daemon.startup_timeout).await;
            state.update(&new);
            if let Some(old) = webhooks.take() {
                old.stop().await;
            }
            if let Some(w) = &new.webhook {
                // Keys and certificates are read again here.
                match crate::webhook::start(w, engine.clone(), new.targets.clone()).await {
                    Ok(l) => *webhooks = Some(l),
                    Err(e) => tracing::error!("the webhook listener could not restart: {e}"),
                }
            }
            Ok(report)
        }
    };
    notifier.send(&format!("READY=1\nSTATUS={}", engine.status_line()));
    result
}

/// Feeds rotation events into the metrics and the `STATUS=` line.
async fn record(
    mut events: tokio::sync::broadcast::Receiver<crate::rotation::Event>,
    metrics: Arc<Metrics>,
    engine: Arc<Engine>,
    notifier: Arc<notify::Notifier>,
) {
    use crate::rotation::EventKind;
    loop {
        match events.recv().await {
            Ok(e) => {
                metrics.observe(&e, engine.source_kind(&e.target));
                if notifier.enabled()
                    && matches!(
                        e.kind,
                        EventKind::StateChanged { .. } | EventKind::RotationFinished(_)
                    )
                {
                    notifier.send(&format!("STATUS={}", engine.status_line()));
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        }
    }
}
