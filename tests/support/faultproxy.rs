//! A TCP proxy on loopback that can misbehave on command: add latency, delay new connections,
//! refuse new connections, reset the open ones, or black-hole everything. It sits between
//! credswap and PostgreSQL or a secret store, so tests can break the network without touching
//! the servers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the proxy does to traffic right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added before each chunk is passed on, both ways, on every connection.
    pub latency: Duration,
    /// Added once before a new connection passes anything (a slow connect).
    pub connect_delay: Duration,
    /// New connections are accepted and closed at once.
    pub refuse_new: bool,
    /// Nothing passes, on open or new connections, until this is cleared.
    pub black_hole: bool,
}

/// The proxy; it stops, closing every connection, when dropped.
pub struct FaultProxy {
    address: SocketAddr,
    faults: watch::Sender<Faults>,
    /// One entry per open connection: its tasks, so a reset can abort them.
    connections: Arc<Mutex<Vec<JoinSet<()>>>>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.lock().unwrap().clear();
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1 and forwards to `upstream` (a loopback address).
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        assert!(
            upstream.ip().is_loopback(),
            "the fault proxy only talks to loopback"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (faults, watch_rx) = watch::channel(Faults::default());
        let connections: Arc<Mutex<Vec<JoinSet<()>>>> = Arc::default();
        let conns = connections.clone();
        let accepted: Arc<AtomicUsize> = Arc::default();
        let counted = accepted.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let now = *watch_rx.borrow();
                if now.refuse_new {
                    let _ = client.set_zero_linger();
                    drop(client);
                    continue;
                }
                let mut tasks = JoinSet::new();
                let rx = watch_rx.clone();
                tasks.spawn(async move {
                    if !now.connect_delay.is_zero() {
                        tokio::time::sleep(now.connect_delay).await;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    for s in [&client, &server] {
                        let _ = s.set_nodelay(true);
                        // Closing sends a reset, so reset_all is a real RST on both sides.
                        let _ = s.set_zero_linger();
                    }
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, rx.clone());
                    let down = pump(sr, cw, rx);
                    // Either side closing ends the connection; a reset aborts this task, which
                    // drops both sockets.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
                let mut all = conns.lock().unwrap();
                all.retain(|t| !t.is_empty());
                all.push(tasks);
            }
        });
        FaultProxy {
            address,
            faults,
            connections,
            accepted,
            accept,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Sets the faults; `Faults::default()` lets everything through again.
    pub fn set(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// Lets everything through.
    pub fn heal(&self) {
        self.set(Faults::default());
    }

    /// Closes every open connection abruptly (both sides see the connection go away).
    /// Returns how many there were.
    pub fn reset_all(&self) -> usize {
        let mut all = self.connections.lock().unwrap();
        let n = all.iter().filter(|t| !t.is_empty()).count();
        all.clear(); // dropping a JoinSet aborts its tasks, which drops their sockets
        n
    }
}

/// Copies `from` to `to`, obeying the current faults before each chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut faults: watch::Receiver<Faults>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Held while black-holed: the bytes are neither passed on nor dropped.
        if faults.wait_for(|f| !f.black_hole).await.is_err() {
            return;
        }
        let latency = faults.borrow().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
