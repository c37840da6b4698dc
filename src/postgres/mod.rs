//! The PostgreSQL front end: applications connect with their own driver to
//! `<socket_dir>/.s.PGSQL.<port>` with `dbname=<target>` and no password. The peer's uid (read at
//! accept) is the authentication, checked against the target's allow-lists; credswap logs in
//! upstream over the target's TLS with the current generation's credentials and forwards the
//! session. Unix socket only: the peer's identity is what makes a password unnecessary, and a
//! TCP listener has no peer identity to check.
//!
//! Session mode: a client gets a server connection of the current generation for its whole
//! session. After a rotation new clients get the new generation; a session on an old one goes
//! on (PostgreSQL keeps sessions open across a password change) until the generation's
//! `drain_timeout`, then ends at its next idle point with `FATAL 57P01`.
//!
//! [`session`] is where a connection goes, [`forward`] the hot path, [`server`] the upstream
//! login, [`cancel`] the cancel keys, [`wire`] the protocol messages.

pub mod cancel;
pub mod forward;
pub mod server;
pub mod session;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;

use crate::config::Postgres;
use crate::listen::accept::{self, ConnLimits, Gate};
use crate::listen::ratelimit::LogThrottle;
use crate::listen::UnixConn;
use crate::metrics::Metrics;
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
        })
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
    accept::serve_unix(listener, gate, shutdown, grace, move |conn: UnixConn| {
        session::serve(conn, fe.clone())
    })
    .await
}
