//! The local API: HTTP/1.1 + JSON on a Unix socket, on the shared listener layer
//! ([`crate::listen`]). Where a request goes: [`routes`] checks the peer (read at accept)
//! against the target's allow-lists, takes a connection of the target's current generation
//! ([`crate::targets`]) and runs the statement ([`query`], [`types`]); errors are
//! [`crate::http::ApiError`].

pub mod budget;
pub mod client;
pub mod query;
pub mod routes;
pub mod session;
pub mod types;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::UnixListener;

use crate::config::Api;
use crate::listen::accept::{self, ConnLimits, Gate};
use crate::listen::ratelimit::RateLimiter;
use crate::listen::UnixConn;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::targets::Registry;

/// A reload asked for through the API, answered by the service loop.
pub type ReloadRequest =
    tokio::sync::oneshot::Sender<Result<crate::rotation::ReloadReport, String>>;

/// Shared by every request.
pub struct ApiState {
    pub targets: Arc<Registry>,
    pub api: Api,
    pub metrics: Arc<Metrics>,
    pub limiter: RateLimiter,
    pub started: Instant,
    /// Where `POST /v1/reload` sends its request (none: reload is not offered).
    pub reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
    /// Ends event streams when the daemon stops.
    pub shutdown: Shutdown,
    /// Keeps refusals from flooding the log.
    pub refusals: crate::listen::ratelimit::LogThrottle,
    /// What all requests' answers may hold at once (`api.max_response_memory`).
    pub response_memory: budget::ResponseMemory,
}

impl ApiState {
    pub fn new(
        api: &Api,
        targets: Arc<Registry>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> ApiState {
        ApiState {
            targets,
            api: api.clone(),
            metrics,
            limiter: RateLimiter::new(api.rate_limit_per_second, api.rate_limit_burst),
            started: Instant::now(),
            reload: None,
            shutdown,
            refusals: Default::default(),
            response_memory: budget::ResponseMemory::new(api.max_response_memory),
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
        .route("/v1/reload", post(routes::reload))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves until the shutdown fires, then lets in-flight requests finish within `grace`.
pub async fn serve(listener: UnixListener, state: Arc<ApiState>, grace: Duration) {
    let gate = Gate::new(ConnLimits {
        max_connections: state.api.max_connections,
        max_per_peer: state.api.max_connections_per_uid,
    });
    let shutdown = state.shutdown.clone();
    let head_timeout = state.api.header_read_timeout;
    let app = router(state.clone());
    accept::serve_unix(
        listener,
        gate,
        shutdown.clone(),
        grace,
        move |conn: UnixConn| {
            let (app, shutdown) = (app.clone(), shutdown.clone());
            async move {
                let UnixConn { stream, peer, slot } = conn;
                match slot {
                    Ok(_slot) => {
                        let info = routes::PeerInfo(peer);
                        crate::http::serve_conn(stream, app, info, head_timeout, shutdown).await
                    }
                    Err(refused) => crate::http::refuse(stream, &refused.to_string()).await,
                }
            }
        },
    )
    .await
}
