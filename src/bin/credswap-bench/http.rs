//! The load's HTTP/1.1 client: one kept-alive connection per client on the API's Unix socket.
//! (Triggers and status go through the library's `api::client`.)

use std::path::Path;

use anyhow::Context;
use credswap::listen::ReadInterestStream;
use hyper::body::Bytes;

/// A response: status and whole body.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
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
    stream: ReadInterestStream,
    buffer: Vec<u8>,
}

impl LeanConnection {
    pub async fn unix(socket: &Path) -> anyhow::Result<LeanConnection> {
        let stream = ReadInterestStream::connect(socket)
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
