//! A small HTTP/1.1 client over the API's Unix socket, for the CLI.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source} (is credswap running? is --socket right?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A response: status and body.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// Opens a connection and sends one request.
async fn send(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<hyper::Response<Incoming>, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task ends with the response body; it is owned by this request.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "credswap")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .expect("a valid request");
    Ok(sender.send_request(request).await?)
}

/// One request, the whole body read, within `timeout`.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    tokio::time::timeout(timeout, async {
        let resp = send(socket, method, path, body).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply { status, body })
    })
    .await
    .map_err(|_| ClientError::Timeout(timeout))?
}

/// Streams a server-sent event response, calling `on_event(name, data)` for each event until
/// it returns false or the stream ends. `subscribed` fires once the server has answered, that
/// is once it is subscribed: events from then on are not missed.
pub async fn events(
    socket: &Path,
    path: &str,
    subscribed: tokio::sync::oneshot::Sender<()>,
    mut on_event: impl FnMut(&str, &str) -> bool,
) -> Result<(), ClientError> {
    let resp = send(socket, "GET", path, None).await?;
    let _ = subscribed.send(());
    let mut body = resp.into_body();
    let mut buffer = String::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            buffer.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut name = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(n) = line.strip_prefix("event:") {
                        name = n.trim();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if !data.is_empty() && !on_event(name, &data) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}
