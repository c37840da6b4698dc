//! Signed rotation webhooks, for senders off the host (AWS EventBridge, Vault, CI). One route,
//! `POST /v1/webhooks/rotate`, which only *triggers a fetch*: a webhook never carries
//! credentials, so a forged one could at worst cause an extra fetch — and forged ones are
//! refused ([`auth`]). TCP (optionally TLS) and/or a Unix socket.

pub mod auth;
pub mod payload;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::error::ApiError;
use crate::api::ratelimit::RateLimiter;
use crate::api::routes::Body;
use crate::config::{Target, WebhookConfig};
use crate::rotation::{Engine, Trigger};
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
    Unix,
}

struct WebhookState {
    engine: Arc<Engine>,
    targets: Vec<Target>,
    verifier: Verifier,
    limiter: RateLimiter<ClientAddr>,
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
    Body(body): Body,
) -> Result<impl IntoResponse, ApiError> {
    state
        .limiter
        .take(client.clone())
        .map_err(ApiError::rate_limited)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verdict = state.verifier.check(
        header(SIGNATURE_HEADER),
        header(state.verifier.token_header()),
        &body,
        auth::now(),
    );
    if verdict == Verdict::Refused {
        tracing::warn!(client = ?client, "webhook refused: bad or missing signature or token");
        return Err(ApiError::unauthorized());
    }
    let selectors = payload::parse(&body).map_err(ApiError::bad_request)?;
    let mut names: Vec<String> = selectors
        .iter()
        .flat_map(|s| payload::matches(s, &state.targets))
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(ApiError::not_found(
            "no configured target matches this webhook",
        ));
    }
    for name in &names {
        if let Some(t) = state.engine.target(name) {
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
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The TCP address actually bound (with port 0, the port chosen).
    pub local_addr: Option<SocketAddr>,
    _unix_guard: Option<crate::api::socket::SocketGuard>,
}

impl Listener {
    /// Stops accepting and ends open connections.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
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

/// Serves one connection with the router, the client address attached.
async fn serve_conn<I>(io: I, app: Router, client: ClientAddr, mut stop: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let app = app.layer(Extension(client));
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        use tower::ServiceExt;
        app.clone().oneshot(req)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections (axum's listeners retry accept errors such as EMFILE with a pause)
/// and serves each in its own task until `stop`; then the open ones are shut down.
async fn accept_until_stopped<L, F, Fut>(mut listener: L, mut stop: watch::Receiver<bool>, serve: F)
where
    L: axum::serve::Listener,
    F: Fn(L::Io, L::Addr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            (io, addr) = listener.accept() => {
                conns.spawn(serve(io, addr));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// Starts the listeners the configuration asks for.
pub async fn start(
    cfg: &WebhookConfig,
    engine: Arc<Engine>,
    targets: Vec<Target>,
) -> Result<Listener, WebhookError> {
    let keys = cfg
        .hmac_key_files
        .iter()
        .map(|p| auth::read_secret_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    let token = cfg
        .token_file
        .as_deref()
        .map(auth::read_secret_file)
        .transpose()?;
    let state = Arc::new(WebhookState {
        engine,
        targets,
        verifier: Verifier::new(keys, token, &cfg.token_header, cfg.max_skew),
        limiter: RateLimiter::new(cfg.rate_limit_per_second, cfg.rate_limit_burst),
    });
    let app = router(state);
    let (stop, _) = watch::channel(false);
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
        let tls = tls_acceptor(cfg)?;
        let (app, conn_stop) = (app.clone(), stop.subscribe());
        tasks.spawn(accept_until_stopped(
            listener,
            stop.subscribe(),
            move |stream, peer| {
                let (app, stop, tls) = (app.clone(), conn_stop.clone(), tls.clone());
                let client = ClientAddr::Tcp(peer.ip());
                async move {
                    match tls {
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(
                                TLS_HANDSHAKE_TIMEOUT,
                                acceptor.accept(stream),
                            )
                            .await;
                            if let Ok(Ok(tls_stream)) = handshake {
                                serve_conn(tls_stream, app, client, stop).await;
                            }
                        }
                        None => serve_conn(stream, app, client, stop).await,
                    }
                }
            },
        ));
    }
    let mut unix_guard = None;
    if let Some(path) = &cfg.unix_socket {
        let api = crate::config::Api {
            socket: path.clone(),
            ..crate::config::Api::defaults()
        };
        let (listener, guard) =
            crate::api::socket::bind(&api).map_err(|e| WebhookError::Listen {
                addr: path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })?;
        unix_guard = Some(guard);
        let (app, conn_stop) = (app.clone(), stop.subscribe());
        tasks.spawn(accept_until_stopped(
            listener,
            stop.subscribe(),
            move |stream, _| serve_conn(stream, app.clone(), ClientAddr::Unix, conn_stop.clone()),
        ));
    }
    Ok(Listener {
        stop,
        tasks,
        local_addr,
        _unix_guard: unix_guard,
    })
}
