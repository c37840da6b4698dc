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
pub mod types;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Shared by every request.
pub struct ApiState {
    pub engine: Arc<Engine>,
    pub api: Api,
    pub targets: HashMap<String, TargetSettings>,
    pub metrics: Arc<Metrics>,
    pub limiter: ratelimit::RateLimiter,
    pub started: Instant,
}

impl ApiState {
    pub fn new(config: &Config, engine: Arc<Engine>, metrics: Arc<Metrics>) -> ApiState {
        ApiState {
            engine,
            api: config.api.clone(),
            targets: config
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
                .collect(),
            metrics,
            limiter: ratelimit::RateLimiter::new(
                config.api.rate_limit_per_second,
                config.api.rate_limit_burst,
            ),
            started: Instant::now(),
        }
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
        listener,
        router(state).into_make_service_with_connect_info::<peer::PeerInfo>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
