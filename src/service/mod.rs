//! `credswap run`: the daemon's life from start to exit. [`Daemon`] owns every part under one
//! shutdown trigger: the socket file, the engine, the listeners, the metrics recorder and the
//! watchdog. `run` starts it, reports ready, serves until SIGTERM/SIGINT (reloading on SIGHUP
//! and `POST /v1/reload`), then calls [`Daemon::stop`], which is bounded so a stop finishes
//! inside the unit's `TimeoutStopSec` with leases revoked. A second signal exits at once.
//! systemd hears about it through [`notify`]: `READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`.

mod daemon;
pub mod notify;

use tokio::signal::unix::{signal, SignalKind};

pub use daemon::{Daemon, Wake};

use crate::config::{Config, StartupPolicy};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Socket(#[from] crate::listen::SocketError),
    #[error("targets not ready after the start-up timeout:\n{0}")]
    NotReady(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the API server stopped unexpectedly")]
    Serve,
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
}

/// Runs the daemon until a termination signal.
pub async fn run(config: Config) -> Result<(), ServiceError> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // A core dump would hold credentials: none is ever written, with or without systemd's
    // LimitCORE=0.
    let no_core = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Core, no_core) {
        tracing::warn!(error = %e, "could not turn core dumps off");
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServiceError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServiceError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ServiceError::Signals)?;

    let mut daemon = Daemon::start(config).await?;
    let report = daemon.wait_ready().await;
    for (name, why) in &report.not_ready {
        tracing::error!(target_name = %name, "not ready: {why}");
    }
    if !report.not_ready.is_empty()
        && daemon.config().daemon.on_startup_failure == StartupPolicy::Exit
    {
        let list = report
            .not_ready
            .iter()
            .map(|(n, w)| format!("  {n}: {w}"))
            .collect::<Vec<_>>()
            .join("\n");
        daemon.stop().await;
        return Err(ServiceError::NotReady(list));
    }
    tracing::info!(ready = ?report.ready, not_ready = report.not_ready.len(), "ready");
    daemon.ready();

    let result = loop {
        let wake = tokio::select! {
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
            _ = sighup.recv() => None,
            w = daemon.wake() => Some(w),
        };
        match wake {
            None => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = daemon.reload().await;
            }
            Some(Wake::Reload(reply)) => {
                tracing::info!("reload asked for through the API");
                let _ = reply.send(daemon.reload().await);
            }
            Some(Wake::ApiStopped) => break Err(ServiceError::Serve),
        }
    };
    // A second signal means "now" (the socket file still goes: a client must not find it).
    let sockets = daemon.socket_paths();
    let second = tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {},
            _ = sigint.recv() => {},
        }
        tracing::warn!("second signal: exiting at once");
        for s in &sockets {
            let _ = std::fs::remove_file(s);
        }
        std::process::exit(130);
    });
    daemon.stop().await;
    second.abort();
    tracing::info!("stopped");
    result
}
