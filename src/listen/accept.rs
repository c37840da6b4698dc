//! The accept loop every front end runs: admit a connection against a global and a per-peer
//! limit, hand it to the front end's handler in a task of its own, and at shutdown stop
//! accepting, give the open connections a grace period to finish, then end them.
//!
//! A refused connection is still handed over (with the refusal), so each front end can answer
//! in its own protocol (a 503 on HTTP, `53300` on the PostgreSQL wire) before closing it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::task::JoinSet;

use super::stream::ReadInterestStream;
use crate::config::access::Peer;
use crate::shutdown::Shutdown;

/// How long accepting pauses after an error such as `EMFILE` (out of descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Refused connections being answered at once (each takes up to about a second). Beyond this,
/// a refused connection is closed without an answer: a flood of connections must not turn the
/// answers themselves into a descriptor exhaustion.
const MAX_ANSWERED_REFUSALS: usize = 64;

/// Connection limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections at once, all peers together.
    pub max_connections: usize,
    /// Open connections at once from one peer (a uid on a Unix socket, an address on TCP).
    pub max_per_peer: usize,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many connections: the listener's limit is {limit}")]
    Total { limit: usize },
    #[error("too many connections from this peer: the limit is {limit} a peer")]
    PerPeer { limit: usize },
}

/// Counts open connections against the limits.
#[derive(Debug)]
pub struct Gate<K> {
    limits: ConnLimits,
    open: Mutex<(usize, HashMap<K, usize>)>,
}

/// An admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq + Clone> {
    gate: Arc<Gate<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Gate<K> {
    pub fn new(limits: ConnLimits) -> Arc<Gate<K>> {
        Arc::new(Gate {
            limits,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Admits a connection from `key`, or says which limit it hit.
    pub fn admit(self: &Arc<Self>, key: K) -> Result<Slot<K>, Refused> {
        let mut open = self.open.lock().expect("never poisoned");
        if open.0 >= self.limits.max_connections {
            return Err(Refused::Total {
                limit: self.limits.max_connections,
            });
        }
        let mine = open.1.entry(key.clone()).or_insert(0);
        if *mine >= self.limits.max_per_peer {
            return Err(Refused::PerPeer {
                limit: self.limits.max_per_peer,
            });
        }
        *mine += 1;
        open.0 += 1;
        Ok(Slot {
            gate: self.clone(),
            key,
        })
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().expect("never poisoned");
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.key);
            }
        }
    }
}

/// An accepted connection, admitted or not.
pub struct Accepted<S, A, K: Hash + Eq + Clone> {
    pub stream: S,
    /// The peer: its credentials on a Unix socket, its address on TCP.
    pub peer: A,
    /// The connection's place, or why it has none (then answer and close).
    pub slot: Result<Slot<K>, Refused>,
}

impl<S, A, K: Hash + Eq + Clone> Accepted<S, A, K> {
    fn refused(&self) -> bool {
        self.slot.is_err()
    }
}

/// The per-peer key of a Unix connection: its uid (peers the kernel would not name share one).
pub type UnixKey = Option<u32>;

/// A connection on a Unix socket.
pub type UnixConn = Accepted<ReadInterestStream, Option<Peer>, UnixKey>;

/// A connection on a TCP socket.
pub type TcpConn = Accepted<TcpStream, SocketAddr, IpAddr>;

/// Accepts on a Unix socket until `shutdown`, then waits up to `grace` for the handlers.
pub async fn serve_unix<F, Fut>(
    listener: UnixListener,
    gate: Arc<Gate<UnixKey>>,
    shutdown: Shutdown,
    grace: Duration,
    handle: F,
) where
    F: Fn(UnixConn) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let accept = || async { listener.accept().await.map(|(s, _)| s) };
    // Reading the peer waits on a blocking thread: done in the connection's own task, so the
    // accept loop (which may drop its future at any wake-up) never holds an accepted stream.
    let start = |stream: tokio::net::UnixStream| {
        let gate = gate.clone();
        async move {
            let peer = super::peer::of(&stream).await;
            let slot = gate.admit(peer.as_ref().map(|p| p.uid));
            match ReadInterestStream::new(stream) {
                Ok(stream) => Some(Accepted { stream, peer, slot }),
                Err(e) => {
                    tracing::warn!(error = %e, "dropped a connection: could not register it");
                    None
                }
            }
        }
    };
    run(accept, start, shutdown, grace, handle).await
}

/// Accepts on a TCP socket until `shutdown`, then waits up to `grace` for the handlers.
pub async fn serve_tcp<F, Fut>(
    listener: TcpListener,
    gate: Arc<Gate<IpAddr>>,
    shutdown: Shutdown,
    grace: Duration,
    handle: F,
) where
    F: Fn(TcpConn) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let accept = || listener.accept();
    let start = |(stream, addr): (TcpStream, SocketAddr)| {
        let _ = stream.set_nodelay(true);
        let slot = gate.admit(addr.ip());
        async move {
            Some(Accepted {
                stream,
                slot,
                peer: addr,
            })
        }
    };
    run(accept, start, shutdown, grace, handle).await
}

/// The loop: `accept` must be cancel-safe (it is polled afresh at every wake-up); `start` turns
/// what it accepted into a connection inside the connection's task.
async fn run<A, AFut, R, S, SFut, St, Pe, K, F, Fut>(
    accept: A,
    start: S,
    mut shutdown: Shutdown,
    grace: Duration,
    handle: F,
) where
    A: Fn() -> AFut,
    AFut: Future<Output = io::Result<R>>,
    S: Fn(R) -> SFut,
    SFut: Future<Output = Option<Accepted<St, Pe, K>>> + Send + 'static,
    Accepted<St, Pe, K>: Send + 'static,
    K: Hash + Eq + Clone,
    F: Fn(Accepted<St, Pe, K>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    let answering = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut last_error_logged: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = accept() => match accepted {
                Ok(raw) => {
                    let (conn, handle, answering) = (start(raw), handle.clone(), answering.clone());
                    conns.spawn(async move {
                        use std::sync::atomic::Ordering;
                        let Some(conn) = conn.await else { return };
                        if !conn.refused() {
                            return handle(conn).await;
                        }
                        if answering.fetch_add(1, Ordering::AcqRel) < MAX_ANSWERED_REFUSALS {
                            handle(conn).await;
                        }
                        answering.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: say so at most once a second, pause.
                    if last_error_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed; pausing");
                        last_error_logged = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Handlers see the same shutdown and finish at their next safe point.
    let finished =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(
            open = conns.len(),
            ?grace,
            "connections still open after the grace period; closing them"
        );
        conns.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_peer_and_frees_on_drop() {
        let gate = Gate::new(ConnLimits {
            max_connections: 3,
            max_per_peer: 2,
        });
        let a1 = gate.admit(1).unwrap();
        let _a2 = gate.admit(1).unwrap();
        assert_eq!(gate.admit(1).unwrap_err(), Refused::PerPeer { limit: 2 });
        let _b1 = gate.admit(2).unwrap();
        assert_eq!(gate.admit(3).unwrap_err(), Refused::Total { limit: 3 });
        drop(a1);
        let _a3 = gate.admit(1).expect("a freed place is reused");
    }
}
