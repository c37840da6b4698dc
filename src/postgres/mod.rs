//! The PostgreSQL front end: applications connect with their own driver to
//! `<socket_dir>/.s.PGSQL.<port>` with `dbname=<target>` and no password. The peer's uid (read at
//! accept) is the authentication, checked against the target's allow-lists; credswap logs in
//! upstream over the target's TLS with the current generation's credentials and forwards the
//! session. Unix socket only: the peer's identity is what makes a password unnecessary, and a
//! TCP listener has no peer identity to check.
//!
//! Session mode: a client gets a server connection of the current generation for its whole
//! session; when it leaves between transactions the connection is reset and kept for the next
//! client with the same parameters ([`idle`]). After a rotation new clients get the new generation; a session on an old one goes
//! on (PostgreSQL keeps sessions open across a password change) until the generation's
//! `drain_timeout`, then ends at its next idle point with `FATAL 57P01`.
//!
//! Transaction mode ([`transaction`], per target): a server connection per transaction, so a
//! rotation never reaches a client and many clients share few connections.
//!
//! Clients share server connections only within one trust domain ([`lane`]: the uid is a wall),
//! and a transaction-mode connection is reset between clients unless its transaction provably
//! left nothing behind ([`transaction::scan`]).
//!
//! [`session`] is where a connection goes, [`forward`] the hot path, [`transaction`] the
//! transaction-mode loop, [`crate::pool::raw`] the upstream login, [`cancel`] the cancel keys,
//! [`wire`] the protocol messages.

pub mod cancel;
pub mod forward;
pub mod idle;
pub mod lane;
pub mod session;
pub mod transaction;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;

use crate::config::Postgres;
use crate::listen::accept::{self, ConnLimits, Gate};
use crate::listen::ratelimit::LogThrottle;
use crate::listen::UnixConn;
use crate::metrics::Metrics;
use crate::pool::raw;
use crate::shutdown::Shutdown;
use crate::targets::Registry;

/// What every PostgreSQL front-end connection shares.
pub struct Frontend {
    pub targets: Arc<Registry>,
    pub settings: Postgres,
    pub admin_uids: Vec<u32>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    cancels: cancel::CancelKeys,
    refusals: LogThrottle,
    /// Server connections kept between sessions.
    idle: idle::IdleServers,
    /// Server connections of transaction-mode targets.
    pools: transaction::servers::Pools,
    /// Prepared statements shared by transaction-mode clients.
    statements: transaction::statements::Statements,
    next_client: std::sync::atomic::AtomicU64,
}

impl Frontend {
    pub fn new(
        targets: Arc<Registry>,
        settings: Postgres,
        admin_uids: Vec<u32>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Arc<Frontend> {
        Arc::new(Frontend {
            targets,
            settings,
            admin_uids,
            metrics,
            shutdown,
            cancels: cancel::CancelKeys::default(),
            refusals: LogThrottle::default(),
            idle: idle::IdleServers::default(),
            pools: Default::default(),
            statements: Default::default(),
            next_client: Default::default(),
        })
    }
}

impl Frontend {
    /// Publishes how many server connections are kept for `target` (metric and status).
    fn kept_now(&self, target: &str, generation: &crate::targets::Generation) {
        let n = self.idle.count(target);
        self.metrics.postgres_idle_servers(target, n);
        generation.sessions.set_kept(n);
    }
}

/// Accepts client connections until the shutdown; sessions then end at their next idle point
/// within `grace`.
pub async fn serve(listener: UnixListener, fe: Arc<Frontend>, grace: Duration) {
    let gate = Gate::new(ConnLimits {
        max_connections: fe.settings.max_client_connections,
        max_per_peer: fe.settings.max_client_connections,
    });
    let shutdown = fe.shutdown.clone();
    let sweeper = tokio::spawn(sweep(fe.clone()));
    let sessions = fe.clone();
    accept::serve_unix(listener, gate, shutdown, grace, move |conn: UnixConn| {
        session::serve(conn, sessions.clone())
    })
    .await;
    let _ = sweeper.await;
    close(fe.idle.drain_all()).await;
    close(fe.pools.drain_all().into_iter().map(|s| s.conn).collect()).await;
}

/// How often parked connections are checked against `pool.idle_timeout` between rotations.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Closes parked server connections that are no longer to be kept: those of a generation that
/// was swapped out (at every rotation, so old credentials are not kept alive by idle
/// connections), of a target that is gone, or idle past `pool.idle_timeout`. Ends at shutdown.
async fn sweep(fe: Arc<Frontend>) {
    let mut events = fe.targets.subscribe();
    let mut shutdown = fe.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            event = events.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = event {
                    return;
                }
            }
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let stale = fe.idle.sweep(|name| {
            let target = fe.targets.get(name)?;
            let generation = target.current()?;
            Some((generation.id, target.settings().pool.idle_timeout))
        });
        close(stale).await;
        // A target with no generation has its idle connections closed, not its pool.
        let stale = fe.pools.sweep(|name| {
            let target = fe.targets.get(name)?;
            let generation = target.current().map_or(0, |g| g.id);
            Some((generation, target.settings().pool.idle_timeout))
        });
        close(stale.into_iter().map(|s| s.conn).collect()).await;
        let mut counts: std::collections::HashMap<String, usize> =
            fe.idle.counts().into_iter().collect();
        for (name, n) in fe.pools.counts() {
            *counts.entry(name).or_default() += n;
        }
        for (name, n) in counts {
            fe.metrics.postgres_idle_servers(&name, n);
            if let Some(g) = fe.targets.get(&name).and_then(|t| t.current()) {
                g.sessions.set_kept(n);
            }
        }
    }
}

/// Ends server sessions politely, all at once (each within a second).
async fn close(conns: Vec<raw::ServerConnection>) {
    futures_util::future::join_all(
        conns
            .into_iter()
            .map(|mut c| async move { raw::terminate(&mut c.stream).await }),
    )
    .await;
}
