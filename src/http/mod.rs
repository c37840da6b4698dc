//! HTTP plumbing the two HTTP front ends (the API and the webhook listener) share: typed JSON
//! errors ([`error`]), the body extractor, and serving one accepted connection with a router.

pub mod error;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub use error::ApiError;

use crate::shutdown::Shutdown;

/// The raw request body, with over-limit and unreadable bodies turned into JSON errors.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::payload_too_large(
                        "the request body is larger than the limit: api.max_body_bytes on the API socket, 64 KiB for webhooks",
                    )
                } else {
                    ApiError::bad_request(format!(
                        "could not read the request body: {}",
                        r.body_text()
                    ))
                }
            })
    }
}

/// Serves one connection with `app` until the client closes it or `shutdown` fires; then the
/// request in progress finishes (hyper's graceful shutdown) and the connection closes. `info`
/// is attached to every request (read with `Extension<T>`).
///
/// `head_timeout` bounds how long a request head may take to arrive. hyper starts that clock
/// as soon as it waits for a head, so it is also the keep-alive idle timeout: a connection that
/// sends nothing for that long, or only part of a head, is closed and its place freed.
pub async fn serve_conn<I, T>(
    io: I,
    app: Router,
    info: T,
    head_timeout: std::time::Duration,
    mut shutdown: Shutdown,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            use tower::ServiceExt;
            req.extensions_mut().insert(info.clone());
            app.clone().oneshot(req)
        });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.wait() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Answers a connection over the limits with a 503 and closes it.
pub async fn refuse<I>(mut stream: I, why: &str)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::json!({"error": {"code": "unavailable", "message": why}}).to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let answer = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), answer).await;
    // Closing with the request unread would reset the connection and lose the answer: read
    // what the client already sent (a little, for a moment) before closing.
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(100), drain).await;
}
