//! The local API: HTTP/1.1 + JSON on a Unix socket. Where a request goes: [`routes`] checks the
//! peer ([`peer`]) against the target's allow-lists, takes a connection of the current
//! generation and runs the statement ([`query`], [`types`]); errors are [`error::ApiError`].

pub mod client;
pub mod error;
pub mod peer;
pub mod query;
pub mod ratelimit;
pub mod routes;
pub mod socket;
pub mod stream;
pub mod types;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::UnixListener;

use crate::config::access::Access;
use crate::config::{Api, Config};
use crate::metrics::Metrics;
use crate::rotation::Engine;

/// What the API needs of a target's configuration.
#[derive(Clone, Debug)]
pub struct TargetSettings {
    pub access: Access,
    pub statement_timeout: Duration,
}

/// A reload asked for through the API, answered by the service loop.
pub type ReloadRequest =
    tokio::sync::oneshot::Sender<Result<crate::rotation::ReloadReport, String>>;

/// Shared by every request.
pub struct ApiState {
    pub engine: Arc<Engine>,
    pub api: Api,
    /// Per-target settings; replaced on reload.
    pub targets: ArcSwap<HashMap<String, TargetSettings>>,
    pub metrics: Arc<Metrics>,
    pub limiter: ratelimit::RateLimiter,
    pub started: Instant,
    /// Where `POST /v1/reload` sends its request (none: reload is not offered).
    pub reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
}

fn settings(config: &Config) -> HashMap<String, TargetSettings> {
    config
        .targets
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TargetSettings {
                    access: t.access.clone(),
                    statement_timeout: t.pool.statement_timeout,
                },
            )
        })
        .collect()
}

impl ApiState {
    pub fn new(config: &Config, engine: Arc<Engine>, metrics: Arc<Metrics>) -> ApiState {
        ApiState {
            engine,
            api: config.api.clone(),
            targets: ArcSwap::from_pointee(settings(config)),
            metrics,
            limiter: ratelimit::RateLimiter::new(
                config.api.rate_limit_per_second,
                config.api.rate_limit_burst,
            ),
            started: Instant::now(),
            reload: None,
        }
    }

    /// Takes the per-target settings of a reloaded configuration.
    pub fn update(&self, config: &Config) {
        self.targets.store(Arc::new(settings(config)));
    }
}

/// The routes.
pub fn router(state: Arc<ApiState>) -> Router {
    let limit = state.api.max_body_bytes;
    Router::new()
        .route("/v1/health", get(routes::health))
        .route("/v1/ready", get(routes::ready))
        .route("/v1/targets", get(routes::targets))
        .route("/v1/targets/{target}", get(routes::target))
        .route("/v1/targets/{target}/query", post(routes::query))
        .route("/v1/targets/{target}/batch", post(routes::batch))
        .route("/v1/targets/{target}/rotate", post(routes::rotate))
        .route("/v1/events", get(routes::events))
        .route("/v1/reload", post(routes::reload))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: UnixListener,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        stream::ApiListener(listener),
        router(state).into_make_service_with_connect_info::<peer::PeerInfo>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
