//! Bounded work per request: what one query or batch may return (rows, bytes, one deadline),
//! and the daemon-wide budget of response memory all requests share.
//!
//! A result is held in memory until it is sent, so without a shared budget sixteen callers
//! asking for sixteen maximal results at once would grow the daemon by sixteen times the
//! per-request limit. Every request reserves what its answer takes, as the rows arrive, from
//! one semaphore counted in KiB; a request that cannot have more is refused at once (503, the
//! limit named) rather than queued while holding a server connection, and the reservation is
//! released when the answer's last byte has been handed to the socket.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::http::ApiError;

const KIB: usize = 1024;

/// Response memory of every request together (`api.max_response_memory`).
#[derive(Clone, Debug)]
pub struct ResponseMemory {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl ResponseMemory {
    pub fn new(limit: usize) -> ResponseMemory {
        let kib = (limit / KIB).clamp(1, Semaphore::MAX_PERMITS);
        ResponseMemory {
            permits: Arc::new(Semaphore::new(kib)),
            limit,
        }
    }

    /// Bytes reserved by requests in flight now.
    pub fn in_use(&self) -> usize {
        let total = (self.limit / KIB).clamp(1, Semaphore::MAX_PERMITS);
        (total - self.permits.available_permits()) * KIB
    }
}

/// The limits one request runs under: per-request ceilings and the shared memory.
pub struct Budget {
    max_rows: usize,
    max_bytes: usize,
    rows: usize,
    bytes: usize,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    memory: ResponseMemory,
    held: Option<OwnedSemaphorePermit>,
    held_kib: usize,
}

impl Budget {
    /// A budget of `max_rows` rows and `max_bytes` JSON bytes for the whole request, which must
    /// finish within `timeout` from now.
    pub fn new(
        max_rows: usize,
        max_bytes: usize,
        timeout: Option<Duration>,
        memory: &ResponseMemory,
    ) -> Budget {
        Budget {
            max_rows,
            max_bytes,
            rows: 0,
            bytes: 0,
            timeout,
            deadline: timeout.map(|t| Instant::now() + t),
            memory: memory.clone(),
            held: None,
            held_kib: 0,
        }
    }

    /// When the request must be done, and the timeout it was given (for the message).
    pub fn deadline(&self) -> Option<(Instant, Duration)> {
        self.deadline.zip(self.timeout)
    }

    /// One more row: refused past `max_rows` (for the whole request).
    pub fn take_row(&mut self) -> Result<(), ApiError> {
        if self.rows == self.max_rows {
            return Err(ApiError::payload_too_large(format!(
                "the result has more than {} rows (api.max_rows; for a batch, all its statements together); add a LIMIT, or ask for more with max_rows (up to the server's limit)",
                self.max_rows
            )));
        }
        self.rows += 1;
        Ok(())
    }

    /// Checks a row's size on the wire before it is decoded: a row that would pass the byte
    /// limit is refused without building it, and the memory its decoding and encoding take
    /// (about twice its size) is reserved first, so that a request the daemon has no memory
    /// for is refused before it allocates.
    pub fn check_row(&mut self, wire_bytes: usize) -> Result<(), ApiError> {
        if self.bytes.saturating_add(wire_bytes) > self.max_bytes {
            return Err(self.too_large());
        }
        self.reserve(self.bytes.saturating_add(wire_bytes.saturating_mul(2)))
    }

    /// Charges `bytes` of answer: refused past `max_bytes`, or when the daemon's response
    /// memory is taken by other requests.
    pub fn charge(&mut self, bytes: usize) -> Result<(), ApiError> {
        let total = self.bytes.saturating_add(bytes);
        if total > self.max_bytes {
            return Err(self.too_large());
        }
        self.bytes = total;
        self.reserve(total)
    }

    fn reserve(&mut self, total: usize) -> Result<(), ApiError> {
        let want = total.div_ceil(KIB);
        if want <= self.held_kib {
            return Ok(());
        }
        let more = u32::try_from(want - self.held_kib).map_err(|_| self.no_memory())?;
        let permit = self
            .memory
            .permits
            .clone()
            .try_acquire_many_owned(more)
            .map_err(|_| self.no_memory())?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        self.held_kib = want;
        Ok(())
    }

    fn too_large(&self) -> ApiError {
        ApiError::payload_too_large(format!(
            "the result is larger than {} bytes (api.max_response_bytes; for a batch, all its statements together); select fewer rows or columns",
            self.max_bytes
        ))
    }

    fn no_memory(&self) -> ApiError {
        let mut e = ApiError::unavailable(format!(
            "the daemon's response memory (api.max_response_memory, {} bytes) is taken by other requests' results; retry, or ask for smaller results",
            self.memory.limit
        ));
        e.retry_after = Some(1);
        e
    }

    /// The answer as JSON, keeping this request's reservation until the body has been sent.
    /// While it is encoded the answer is held twice (rows and body): both are reserved, then
    /// the rows are dropped and their share returned.
    pub fn respond<T: Serialize>(mut self, value: T) -> Result<Response, ApiError> {
        let mut body = Vec::with_capacity(self.bytes + 256);
        serde_json::to_writer(&mut body, &value)
            .map_err(|e| ApiError::bad_request(format!("the result could not be encoded: {e}")))?;
        self.reserve(self.bytes.saturating_add(body.len()))?;
        drop(value);
        let keep = body.len().div_ceil(KIB);
        let held = self.held.take().map(|mut held| {
            if let Some(rows) = held.split(self.held_kib.saturating_sub(keep)) {
                drop(rows);
            }
            held
        });
        let length = HeaderValue::from(body.len());
        let bytes = Bytes::from(body);
        let chunks = futures_util::stream::unfold((Some(bytes), held), |(next, held)| async move {
            // The reservation goes once the writer has asked past the last chunk.
            let chunk = next?;
            Some((Ok::<_, Infallible>(chunk), (None, held)))
        });
        let mut response = axum::body::Body::from_stream(chunks).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // Known in advance: sent as a length, not chunked.
        headers.insert(header::CONTENT_LENGTH, length);
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_bytes_are_counted_for_the_whole_request() {
        let memory = ResponseMemory::new(1 << 20);
        let mut b = Budget::new(2, 100, None, &memory);
        b.take_row().unwrap();
        b.take_row().unwrap();
        assert_eq!(b.take_row().unwrap_err().status, 413);
        b.charge(60).unwrap();
        b.check_row(40).unwrap();
        assert_eq!(b.check_row(41).unwrap_err().status, 413);
        assert_eq!(b.charge(41).unwrap_err().status, 413);
    }

    #[test]
    fn memory_is_shared_and_returned() {
        let memory = ResponseMemory::new(8 * KIB);
        let mut first = Budget::new(usize::MAX, usize::MAX, None, &memory);
        first.charge(6 * KIB).unwrap();
        assert_eq!(memory.in_use(), 6 * KIB);
        let mut second = Budget::new(usize::MAX, usize::MAX, None, &memory);
        second.charge(2 * KIB).unwrap();
        let refused = second.charge(KIB).unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code),
            (503, "unavailable")
        );
        assert!(refused.message.contains("api.max_response_memory"));
        // A row is reserved (twice: decoded and encoded) before it is decoded.
        assert_eq!(second.check_row(KIB).unwrap_err().status, 503);
        drop(first);
        second.charge(KIB).unwrap();
        drop(second);
        assert_eq!(memory.in_use(), 0);
    }
}
