//! Keep-alive HTTP/1.1 connections for the load generator: to the API's Unix socket, and to
//! the webhook listener on loopback TCP.

use std::path::Path;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;

/// One kept-alive connection; its driver task ends when the connection is dropped.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A response: status and whole body.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

async fn handshake<S>(io: S) -> anyhow::Result<Connection>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Connection { sender, driver })
}

impl Connection {
    /// Connects to the API socket.
    pub async fn unix(socket: &Path) -> anyhow::Result<Connection> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        handshake(stream).await
    }

    /// Connects to a TCP address (`127.0.0.1:PORT`).
    pub async fn tcp(address: &str) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        handshake(stream).await
    }

    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        self.sender.ready().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "credswap")
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply { status, body })
    }
}

/// The `error.code` of an API error body, or `http_<status>` when there is none.
pub fn error_code(reply: &Reply) -> String {
    serde_json::from_slice::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("http_{}", reply.status))
}

/// A lean keep-alive HTTP/1.1 client for the load itself: one request at a time, written with
/// one `write` and read in the same task (hyper's client adds a connection task and a channel
/// hop per request, which on a 2-core machine takes CPU from the daemon being measured).
/// It expects what the daemon sends: a `content-length` body, no chunking.
pub struct LeanConnection {
    stream: UnixStream,
    buffer: Vec<u8>,
}

impl LeanConnection {
    pub async fn unix(socket: &Path) -> anyhow::Result<LeanConnection> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(LeanConnection {
            stream,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// POSTs `body` to `path`; returns the status and body.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<Reply> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: credswap\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        self.buffer.clear();
        let (head_end, status, length) = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..end]).context("response head")?;
                let status: u16 = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .context("no status in the response")?;
                let length = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .context("no content-length in the response")?;
                break (end + 4, status, length);
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                anyhow::bail!("the daemon closed the connection");
            }
        };
        while self.buffer.len() < head_end + length {
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                anyhow::bail!("the daemon closed the connection mid-body");
            }
        }
        Ok(Reply {
            status,
            body: Bytes::copy_from_slice(&self.buffer[head_end..head_end + length]),
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
