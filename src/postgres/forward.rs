//! The hot path: bytes between a client and its server connection, both directions in the one
//! task that read them (one read and one write per chunk, no copy, no allocation per message).
//! Only the message headers are looked at, to cap message sizes and to know the session's idle
//! points: when every `Query`/`Sync`/`FunctionCall` the client sent has had its
//! `ReadyForQuery`, and that said "idle" (not in a transaction). A session asked to end (its
//! generation's drain deadline passed, or the daemon stops) ends at such a point, never inside
//! a transaction.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::wire::{FrameError, Frames, Seen};

/// Bytes read at a time in each direction.
const CHUNK: usize = 16 * 1024;

/// How a session ended.
#[derive(Debug)]
pub enum End {
    /// The client closed its connection (or sent `Terminate`, which is not forwarded).
    /// `reusable`: it left at an idle point with nothing half-sent either way, so the server
    /// connection may serve another client after a reset.
    ClientClosed { reusable: bool },
    /// The server closed its side (its last messages, a `FATAL`, were forwarded).
    ServerClosed,
    /// Asked to end, and the session reached an idle point.
    AtIdle,
    /// The client broke the protocol.
    Protocol(FrameError),
    /// A read or write failed.
    Io(std::io::Error),
}

/// The session's position, in one atomic so that "may the client start more work" and "is the
/// session idle" are decided together: bit 40 = asked to end, bits 32..40 = the status of the
/// last `ReadyForQuery`, bits 0..32 = `ReadyForQuery`s still to come.
struct Position(AtomicU64);

const ENDING: u64 = 1 << 40;
const STATUS_SHIFT: u32 = 32;
const OUTSTANDING: u64 = (1 << 32) - 1;

fn idle(p: u64) -> bool {
    p & OUTSTANDING == 0 && (p >> STATUS_SHIFT) as u8 == b'I'
}

impl Position {
    fn new() -> Position {
        Position(AtomicU64::new((b'I' as u64) << STATUS_SHIFT))
    }

    /// The client sends `n` more messages that each get a `ReadyForQuery`; refused (false) when
    /// the session is asked to end and idle: its next bytes are not forwarded.
    fn client_sends(&self, n: u64) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                if p & ENDING != 0 && idle(p) {
                    None
                } else {
                    Some(p + n)
                }
            })
            .is_ok()
    }

    /// A `ReadyForQuery` with `status` arrived; says whether the session should now end.
    fn server_ready(&self, status: u8) -> bool {
        let next = |p: u64| {
            (p & ENDING) | ((status as u64) << STATUS_SHIFT) | (p & OUTSTANDING).saturating_sub(1)
        };
        let before = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| Some(next(p)))
            .expect("the update always succeeds");
        let now = next(before);
        now & ENDING != 0 && idle(now)
    }

    fn is_idle(&self) -> bool {
        idle(self.0.load(Ordering::Acquire))
    }

    /// Asks the session to end; says whether it is idle already.
    fn end(&self) -> bool {
        idle(self.0.fetch_or(ENDING, Ordering::AcqRel))
    }
}

/// Counts what the client sends: the messages answered by a `ReadyForQuery`, `Terminate`, and
/// whether extended-protocol messages wait for their `Sync`.
struct FromClient<'a> {
    answered: u64,
    terminate: bool,
    unsynced: &'a mut bool,
}

impl Seen for FromClient<'_> {
    fn message(&mut self, tag: u8, _len: usize) {
        match tag {
            b'Q' | b'F' => self.answered += 1,
            b'S' => {
                self.answered += 1;
                *self.unsynced = false;
            }
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => *self.unsynced = true,
            b'X' => self.terminate = true,
            _ => {}
        }
    }
    fn ready(&mut self, _: u8) {}
}

/// `Terminate` as a client sends it.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// Reports each `ReadyForQuery` of the server's to the position, and a `25006` to whoever
/// asked.
struct FromServer<'a> {
    position: &'a Position,
    end_now: bool,
    read_only: Option<&'a crate::signal::Bell>,
}

impl Seen for FromServer<'_> {
    fn message(&mut self, _: u8, _: usize) {}
    fn ready(&mut self, status: u8) {
        self.end_now |= self.position.server_ready(status);
    }
    fn error_start(&mut self, body: &[u8]) {
        if let Some(notify) = self.read_only {
            if super::wire::sqlstate_field(body) == Some(b"25006") {
                notify.ring();
            }
        }
    }
}

/// Forwards until one side closes, or `ending` resolves and the session is idle. `max_message`
/// caps a message's size in both directions. `from_server` holds bytes the server sent before
/// forwarding began (after its login), forwarded first. `read_only` is told of every
/// `25006 read_only_sql_transaction` the server sends.
#[allow(clippy::too_many_arguments)]
pub async fn forward<C, S>(
    client: &mut C,
    server: &mut S,
    from_server: BytesMut,
    ending: impl std::future::Future<Output = ()>,
    max_message: usize,
    to_server: &Counter,
    to_client: &Counter,
    read_only: Option<&crate::signal::Bell>,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let position = Position::new();
    // Server bytes read but not yet passed on whole: the server stream is mid-message.
    let server_mid = AtomicBool::new(!from_server.is_empty());
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut server_r, mut server_w) = tokio::io::split(server);

    // Each direction reads into a buffer zeroed once per session: reading into a fresh
    // `BytesMut` makes the stream zero the whole free space before every read (safe code
    // cannot read into uninitialised memory), which was 60 % of the daemon's instructions per
    // transaction (dev/profile_wire.py).
    let upstream = async {
        let mut frames = Frames::new(max_message);
        let mut chunk = vec![0u8; CHUNK];
        let mut unsynced = false;
        let left = |frames: &Frames, unsynced: bool| End::ClientClosed {
            reusable: frames.at_boundary()
                && !unsynced
                && position.is_idle()
                && !server_mid.load(Ordering::Acquire),
        };
        loop {
            let buf = match client_r.read(&mut chunk).await {
                Ok(0) => return left(&frames, unsynced),
                Ok(n) => {
                    to_server.inc_by(n as u64);
                    &chunk[..n]
                }
                Err(e) => return End::Io(e),
            };
            let mut seen = FromClient {
                answered: 0,
                terminate: false,
                unsynced: &mut unsynced,
            };
            if let Err(e) = frames.walk(buf, &mut seen) {
                return End::Protocol(e);
            }
            let (answered, terminate) = (seen.answered, seen.terminate);
            if !position.client_sends(answered) {
                return End::AtIdle;
            }
            // A closing `Terminate` stays here: the server connection may serve another client.
            let keep = terminate && buf.ends_with(&TERMINATE);
            let send = if keep {
                &buf[..buf.len() - TERMINATE.len()]
            } else {
                buf
            };
            if let Err(e) = crate::pool::raw::send(&mut server_w, send).await {
                return End::Io(e);
            }
            if terminate {
                return if keep {
                    left(&frames, unsynced)
                } else {
                    End::ClientClosed { reusable: false }
                };
            }
        }
    };

    let downstream = async {
        let mut frames = Frames::new(max_message);
        let mut chunk = vec![0u8; CHUNK];
        // What the server sent before forwarding began goes first.
        let mut first = (!from_server.is_empty()).then_some(from_server);
        loop {
            let leftover;
            let buf = match first.take() {
                Some(bytes) => {
                    leftover = bytes;
                    &leftover[..]
                }
                None => match server_r.read(&mut chunk).await {
                    Ok(0) => return End::ServerClosed,
                    Ok(n) => {
                        server_mid.store(true, Ordering::Release);
                        to_client.inc_by(n as u64);
                        &chunk[..n]
                    }
                    Err(e) => return End::Io(e),
                },
            };
            let mut seen = FromServer {
                position: &position,
                end_now: false,
                read_only,
            };
            if let Err(e) = frames.walk(buf, &mut seen) {
                return End::Protocol(e);
            }
            if let Err(e) = client_w.write_all(buf).await {
                return End::Io(e);
            }
            server_mid.store(!frames.at_boundary(), Ordering::Release);
            if seen.end_now {
                return End::AtIdle;
            }
        }
    };

    let asked = async {
        ending.await;
        if position.end() {
            return End::AtIdle;
        }
        // Not idle: the directions end the session at the next idle point.
        std::future::pending().await
    };

    tokio::select! {
        end = upstream => end,
        end = downstream => end,
        end = asked => end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_points() {
        let p = Position::new();
        assert!(p.client_sends(1));
        assert!(!p.server_ready(b'T'), "not asked to end");
        assert!(!p.end(), "in a transaction: not idle");
        assert!(p.client_sends(1), "the transaction goes on");
        assert!(
            p.server_ready(b'I'),
            "the transaction ended: idle, and asked to end"
        );
        assert!(!p.client_sends(1), "nothing more starts");

        let q = Position::new();
        assert!(q.client_sends(2), "pipelined");
        assert!(!q.end());
        assert!(!q.server_ready(b'I'), "one answer still to come");
        assert!(q.server_ready(b'I'));
        assert!(Position::new().end(), "idle from the start");
    }
}
