//! Signed rotation webhooks, for senders off the host (AWS EventBridge, Vault, CI). One route,
//! `POST /v1/webhooks/rotate`, which only *triggers a fetch*: a webhook never carries
//! credentials, so a forged one could at worst cause an extra fetch — and forged ones are
//! refused ([`auth`]). TCP (optionally TLS) and/or a Unix socket.

pub mod auth;
pub mod payload;

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Extension, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::WebhookConfig;
use crate::http::{serve_conn, ApiError, Body};
use crate::listen::accept::{self, ConnLimits, Gate};
use crate::listen::ratelimit::{LogThrottle, RateLimiter};
use crate::listen::{SocketGuard, SocketSpec, TcpConn, UnixConn};
use crate::shutdown::{self, Shutdown};
use crate::targets::{Registry, Trigger};
use auth::{Verdict, Verifier, SIGNATURE_HEADER};

/// Largest webhook body.
pub const MAX_BODY: usize = 64 * 1024;

/// Why the webhook listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Key(#[from] auth::KeyFileError),
    #[error("webhook TLS: {0}")]
    Tls(String),
    #[error("cannot listen for webhooks on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Where a request came from, for the per-address rate limit and logs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientAddr {
    Tcp(std::net::IpAddr),
    /// A local sender, by uid (each has its own bucket); `None` if the kernel would not say.
    Unix(Option<u32>),
}

struct WebhookState {
    targets: Arc<Registry>,
    verifier: Verifier,
    limiter: RateLimiter<ClientAddr>,
    /// Refusals are logged at most once a second (a forged-request flood must not flood the log).
    refusals: LogThrottle,
}

fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/v1/webhooks/rotate", post(rotate))
        .fallback(|| async {
            ApiError::not_found("no such endpoint; webhooks go to POST /v1/webhooks/rotate")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn rotate(
    State(state): State<Arc<WebhookState>>,
    Extension(client): Extension<ClientAddr>,
    headers: HeaderMap,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    state
        .limiter
        .take(client.clone())
        .map_err(ApiError::rate_limited)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (signature, token, now) = (
        header(SIGNATURE_HEADER),
        header(state.verifier.token_header()),
        auth::now(),
    );
    // What the headers alone refuse is refused before the body is read.
    if !state.verifier.refuses_by_headers(signature, token, now) {
        let Body(body) = Body::from_request(request, &()).await?;
        if state.verifier.check(signature, token, &body, now) == Verdict::Ok {
            return accept(&state, &client, &body).await;
        }
    }
    if let Some(held) = state.refusals.allow() {
        tracing::warn!(client = ?client, refusals_not_logged = held, "webhook refused: bad or missing signature or token");
    }
    Err(ApiError::unauthorized())
}

/// An authenticated webhook: the targets its payload names are rotated.
async fn accept(
    state: &WebhookState,
    client: &ClientAddr,
    body: &[u8],
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let selectors = payload::parse(body).map_err(ApiError::bad_request)?;
    let targets = state.targets.all();
    let settings: Vec<_> = targets.iter().map(|t| t.settings()).collect();
    let mut names: Vec<String> = selectors
        .iter()
        .flat_map(|s| payload::matches(s, settings.iter().map(|t| t.as_ref())))
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(ApiError::not_found(
            "no configured target matches this webhook",
        ));
    }
    for name in &names {
        if let Some(t) = state.targets.get(name) {
            t.rotate(Trigger::Webhook, false, false)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
        }
    }
    tracing::info!(client = ?client, targets = ?names, "webhook: rotation triggered");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"accepted": true, "targets": names})),
    ))
}

/// A running webhook listener; `stop` ends it.
pub struct Listener {
    stop: shutdown::Trigger,
    tasks: JoinSet<()>,
    /// The TCP address actually bound (with port 0, the port chosen).
    pub local_addr: Option<SocketAddr>,
    _unix_guard: Option<SocketGuard>,
}

impl Listener {
    /// Stops accepting and ends open connections (a request in progress finishes first).
    pub async fn stop(mut self) {
        self.stop.fire();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn tls_acceptor(cfg: &WebhookConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, WebhookError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| WebhookError::Tls(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| WebhookError::Tls(format!("{}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| WebhookError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| WebhookError::Tls(e.to_string()))?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At stop, how long a request in progress may take to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Connections at once. Webhooks are rare, but a burst from one sender (a retry storm) must
/// meet the rate limit's 429, not a reset; beyond these, connections get a 503.
const LIMITS: ConnLimits = ConnLimits {
    max_connections: 1024,
    max_per_peer: 512,
};

/// Starts the listeners the configuration asks for. Key and certificate files are read on a
/// blocking thread (this runs on the runtime at reload).
pub async fn start(
    cfg: &WebhookConfig,
    targets: Arc<Registry>,
    replay: auth::ReplayCache,
) -> Result<Listener, WebhookError> {
    let files = cfg.clone();
    let (keys, token, tls) = tokio::task::spawn_blocking(move || {
        let keys = files
            .hmac_key_files
            .iter()
            .map(|p| auth::read_secret_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        let token = files
            .token_file
            .as_deref()
            .map(auth::read_secret_file)
            .transpose()?;
        Ok::<_, WebhookError>((keys, token, tls_acceptor(&files)?))
    })
    .await
    .map_err(|e| WebhookError::Tls(format!("reading the key files failed: {e}")))??;
    let state = Arc::new(WebhookState {
        targets,
        verifier: Verifier::new(keys, token, &cfg.token_header, cfg.max_skew)
            .with_replay_cache(replay),
        limiter: RateLimiter::new(cfg.rate_limit_per_second, cfg.rate_limit_burst),
        refusals: LogThrottle::default(),
    });
    let app = router(state);
    let head_timeout = cfg.header_read_timeout;
    let (stop, stopped) = shutdown::channel();
    let mut tasks = JoinSet::new();
    let mut local_addr = None;
    if !cfg.listen.is_empty() {
        let listener =
            TcpListener::bind(&cfg.listen)
                .await
                .map_err(|source| WebhookError::Listen {
                    addr: cfg.listen.clone(),
                    source,
                })?;
        local_addr = listener.local_addr().ok();
        let (app, conn_stop) = (app.clone(), stopped.clone());
        tasks.spawn(accept::serve_tcp(
            listener,
            Gate::new(LIMITS),
            stopped.clone(),
            STOP_GRACE,
            move |conn: TcpConn| {
                serve_tcp_conn(
                    conn,
                    app.clone(),
                    tls.clone(),
                    head_timeout,
                    conn_stop.clone(),
                )
            },
        ));
    }
    let mut unix_guard = None;
    if let Some(path) = &cfg.unix_socket {
        let spec = SocketSpec {
            path: path.clone(),
            mode: 0o660,
            gid: None,
            key: "webhook.unix_socket",
        };
        let (listener, guard) =
            tokio::task::spawn_blocking(move || crate::listen::socket::bind(&spec))
                .await
                .map_err(|e| WebhookError::Listen {
                    addr: path.display().to_string(),
                    source: std::io::Error::other(e),
                })?
                .map_err(|e| WebhookError::Listen {
                    addr: path.display().to_string(),
                    source: std::io::Error::other(e.to_string()),
                })?;
        unix_guard = Some(guard);
        let (app, conn_stop) = (app.clone(), stopped.clone());
        tasks.spawn(accept::serve_unix(
            listener,
            Gate::new(LIMITS),
            stopped,
            STOP_GRACE,
            move |conn: UnixConn| {
                let (app, stop) = (app.clone(), conn_stop.clone());
                async move {
                    match conn.slot {
                        Ok(_slot) => {
                            let client = ClientAddr::Unix(conn.peer.as_ref().map(|p| p.uid));
                            serve_conn(conn.stream, app, client, head_timeout, stop).await
                        }
                        Err(refused) => {
                            crate::http::refuse(conn.stream, &refused.to_string()).await
                        }
                    }
                }
            },
        ));
    }
    Ok(Listener {
        stop,
        tasks,
        local_addr,
        _unix_guard: unix_guard,
    })
}

/// One TCP connection: the TLS handshake (bounded) if configured, then HTTP.
async fn serve_tcp_conn(
    conn: TcpConn,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    head_timeout: Duration,
    stop: Shutdown,
) {
    let TcpConn { stream, peer, slot } = conn;
    if let Err(refused) = slot {
        // Plain TCP only: a TLS client would not understand a plaintext answer.
        if tls.is_none() {
            crate::http::refuse(stream, &refused.to_string()).await;
        }
        return;
    }
    let client = ClientAddr::Tcp(peer.ip());
    match tls {
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            if let Ok(Ok(tls_stream)) = handshake {
                serve_conn(tls_stream, app, client, head_timeout, stop).await;
            }
        }
        None => serve_conn(stream, app, client, head_timeout, stop).await,
    }
}
