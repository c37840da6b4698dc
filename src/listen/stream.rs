//! Accepted Unix connections: streams registered for read readiness only.
//!
//! tokio registers every socket for read *and* write readiness. On a Unix stream socket the
//! kernel signals "writable" to a socket each time its peer reads from it, so every request the
//! daemon read woke the client's event loop, and every answer the client read woke the daemon's,
//! for nothing (docs/benchmarks.md: 4.9 % of the daemon's CPU went to waking the client, plus
//! the preemptions that followed). These streams wait for write readiness only while a write
//! would block, through a second registration of a duplicate descriptor that lives until the
//! write goes through; the socket buffer holds a whole answer almost always. The measured gain
//! comes from the client using one too (the load generator does); on the daemon's side it
//! spares its event loop a wake-up per answer, which measured as neither gain nor loss.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Most bytes one read takes. Requests are small; a large body takes a few more reads.
const MAX_READ: usize = 16 * 1024;

thread_local! {
    /// Where a read lands when the caller's buffer is not initialised (hyper's, tokio's
    /// `read_buf`): safe code cannot read into uninitialised memory, and zeroing 16 KiB before
    /// every read cost more than the request (60 % of the front end's instructions per
    /// transaction, dev/profile_wire.py); copying the bytes read costs only their length. One
    /// per worker thread, used between two instructions that cannot yield.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; MAX_READ].into_boxed_slice());
}

/// A non-blocking Unix stream that the event loop watches for reading only.
#[derive(Debug)]
pub struct ReadInterestStream {
    io: AsyncFd<UnixStream>,
    /// Registered for write readiness while a write would block.
    write_wait: Option<AsyncFd<OwnedFd>>,
}

impl ReadInterestStream {
    /// Takes over a stream tokio accepted or connected.
    pub fn new(stream: tokio::net::UnixStream) -> io::Result<Self> {
        // `into_std` leaves the descriptor non-blocking.
        let stream = stream.into_std()?;
        Ok(ReadInterestStream {
            io: register(stream, Interest::READABLE)?,
            write_wait: None,
        })
    }

    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> io::Result<Self> {
        Self::new(tokio::net::UnixStream::connect(path).await?)
    }

    /// Runs `write` until it does not block, waiting for write readiness in between.
    fn poll_write_with<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&UnixStream) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        match write(self.io.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => {
                self.write_wait = None;
                return Poll::Ready(done);
            }
        }
        let Self { io, write_wait } = self;
        if write_wait.is_none() {
            let fd = io.get_ref().as_fd().try_clone_to_owned()?;
            *write_wait = Some(register(fd, Interest::WRITABLE)?);
        }
        let wait = write_wait
            .as_ref()
            .expect("registered just above if it was not");
        loop {
            let mut guard = ready!(wait.poll_write_ready(cx))?;
            if let Ok(done) = guard.try_io(|_| write(io.get_ref())) {
                drop(guard);
                *write_wait = None;
                return Poll::Ready(done);
            }
        }
    }
}

/// Registers `inner` with tokio for `interest` only.
///
/// tokio 1.54 deprecates `with_interest` for its safe signature: an `AsyncFd` whose inner value
/// could close or swap its descriptor while registered would break I/O safety, and the
/// replacement is `unsafe`, which this crate forbids. Both types used here own their descriptor
/// for their whole life, and this module never replaces them (only `get_ref` is used), so the
/// condition the `unsafe` version asks callers to uphold holds.
#[allow(deprecated)]
fn register<T: std::os::fd::AsRawFd>(inner: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(inner, interest)
}

impl AsyncRead for ReadInterestStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            let room = buf.remaining().min(MAX_READ);
            let initialised = buf.initialized().len() - buf.filled().len() >= room;
            let read = if initialised {
                let unfilled = buf.initialize_unfilled_to(room);
                guard
                    .try_io(|io| io.get_ref().read(unfilled))
                    .map(|r| r.map(|n| (n, false)))
            } else {
                SCRATCH.with_borrow_mut(|scratch| {
                    guard
                        .try_io(|io| io.get_ref().read(&mut scratch[..room]))
                        .map(|r| {
                            r.inspect(|&n| buf.put_slice(&scratch[..n]))
                                .map(|n| (n, true))
                        })
                })
            };
            match read {
                Ok(Ok((n, copied))) => {
                    // A short read emptied the socket: the next read would only say EAGAIN
                    // (tokio's own streams skip that system call the same way).
                    if n > 0 && n < room {
                        guard.clear_ready();
                    }
                    if !copied {
                        buf.advance(n);
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for ReadInterestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut s| Write::write(&mut s, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut s| s.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.io.get_ref().shutdown(Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            done => done,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn pair() -> (ReadInterestStream, tokio::net::UnixStream) {
        let (a, b) = tokio::net::UnixStream::pair().expect("socketpair");
        (ReadInterestStream::new(a).expect("register"), b)
    }

    #[tokio::test]
    async fn reads_and_writes_both_ways() {
        let (mut ours, mut theirs) = pair();
        ours.write_all(b"ping").await.unwrap();
        let mut got = [0; 4];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        theirs.write_all(b"pong").await.unwrap();
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        ours.shutdown().await.unwrap();
        assert_eq!(theirs.read(&mut got).await.unwrap(), 0, "end of stream");
    }

    /// A write larger than the socket buffer blocks, waits for write readiness, and finishes
    /// once the peer reads; the temporary registration is gone afterwards.
    #[tokio::test]
    async fn a_write_that_blocks_finishes_when_the_peer_reads() {
        let (mut ours, mut theirs) = pair();
        let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = big.clone();
        let writer = tokio::spawn(async move {
            ours.write_all(&big).await.unwrap();
            ours.flush().await.unwrap();
            let waiting = ours.write_wait.is_some();
            ours.shutdown().await.unwrap();
            waiting
        });
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), theirs.read_to_end(&mut got))
            .await
            .expect("the blocked write never resumed")
            .unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes arrived in order and intact");
        assert!(!writer.await.unwrap(), "write registration dropped");
    }

    #[tokio::test]
    async fn reads_see_the_peer_closing() {
        let (mut ours, theirs) = pair();
        drop(theirs);
        let mut buf = [0; 8];
        assert_eq!(ours.read(&mut buf).await.unwrap(), 0);
    }
}
