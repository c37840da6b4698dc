//! bb8's side of the pool: opening connections, telling broken ones apart, keeping the real
//! cause of connection failures, and refusing everything once the pool drains.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bb8::{ErrorSink, ManageConnection};
use tokio::sync::{watch, Notify};
use tokio_postgres::{Client, Statement};

use super::connect::ConnectPlan;
use super::error::ConnectError;
use super::hosts::HostLease;

/// Shared between the pool, its manager and whoever drains it.
#[derive(Debug)]
pub struct DrainState {
    draining: AtomicBool,
    /// Signalled each time a connection comes back while draining.
    pub(crate) returned: Notify,
    /// Flips to `true` when draining starts, waking checkouts that wait on this pool.
    pub(crate) started: watch::Sender<bool>,
}

impl Default for DrainState {
    fn default() -> Self {
        DrainState {
            draining: AtomicBool::new(false),
            returned: Notify::new(),
            started: watch::channel(false).0,
        }
    }
}

impl DrainState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub(crate) fn begin(&self) {
        self.draining.store(true, Ordering::Release);
        self.started.send_replace(true);
    }
}

/// How many prepared statements one connection keeps.
const STATEMENT_CACHE: usize = 256;

/// A server connection and its prepared statements, so repeated SQL skips the prepare round
/// trip.
pub struct ServerConn {
    client: Client,
    statements: Mutex<HashMap<String, Statement>>,
    /// Cleared when the session may hold state a later caller must not see; the pool then
    /// closes the connection instead of handing it out again.
    reusable: AtomicBool,
    host: HostLease,
}

impl ServerConn {
    pub(crate) fn new(client: Client, host: HostLease) -> Self {
        ServerConn {
            client,
            statements: Mutex::new(HashMap::new()),
            reusable: AtomicBool::new(true),
            host,
        }
    }

    /// The host this connection is on.
    pub fn host(&self) -> &HostLease {
        &self.host
    }

    /// Marks the session as not clean (a setting changed, a transaction left open, a request
    /// dropped mid-statement): it is closed when it comes back, never reused.
    pub fn discard(&self) {
        self.reusable.store(false, Ordering::Relaxed);
    }

    /// Whether the pool may hand this session to another caller.
    pub fn is_reusable(&self) -> bool {
        self.reusable.load(Ordering::Relaxed)
    }

    /// Prepares `sql` once per connection.
    pub async fn prepare_cached(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.lock().expect("never poisoned").get(sql) {
            return Ok(s.clone());
        }
        let statement = self.client.prepare(sql).await?;
        let mut cache = self.statements.lock().expect("never poisoned");
        if cache.len() >= STATEMENT_CACHE {
            cache.clear();
        }
        cache.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Prepared statements held.
    pub fn cached_statements(&self) -> usize {
        self.statements.lock().expect("never poisoned").len()
    }
}

impl std::ops::Deref for ServerConn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Opens connections for bb8 with the plan's credentials and TLS.
pub struct Manager {
    pub(crate) plan: Arc<ConnectPlan>,
    pub(crate) drain: Arc<DrainState>,
}

impl ManageConnection for Manager {
    type Connection = ServerConn;
    type Error = ConnectError;

    async fn connect(&self) -> Result<ServerConn, ConnectError> {
        if self.drain.is_draining() {
            return Err(ConnectError::Draining);
        }
        let (client, host) = self.plan.connect().await?;
        Ok(ServerConn::new(client, host))
    }

    async fn is_valid(&self, conn: &mut ServerConn) -> Result<(), ConnectError> {
        // Only called if test_on_check_out is on, which we keep off (a round trip per checkout).
        conn.simple_query("")
            .await
            .map(|_| ())
            .map_err(|e| ConnectError::Unreachable {
                server: "pool".into(),
                detail: e.to_string(),
            })
    }

    fn has_broken(&self, conn: &mut ServerConn) -> bool {
        if self.drain.is_draining() {
            // Coming back to a draining pool: close it, and tell the drainer.
            self.drain.returned.notify_one();
            return true;
        }
        conn.is_closed() || !conn.is_reusable() || conn.host.is_stale()
    }
}

/// What the pool's background connection attempts ran into.
#[derive(Debug, Default)]
pub struct PoolHealth {
    last_error: Mutex<Option<(Instant, ConnectError)>>,
    connect_failures: AtomicU64,
    checkout_timeouts: AtomicU64,
    leaks: AtomicU64,
}

impl PoolHealth {
    /// The most recent connection error and when it happened.
    pub fn last_error(&self) -> Option<(Instant, ConnectError)> {
        self.last_error
            .lock()
            .expect("the lock is never held across a panic")
            .clone()
    }

    /// How many connection attempts failed since the pool was built.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// How many checkouts gave up waiting.
    pub fn checkout_timeouts(&self) -> u64 {
        self.checkout_timeouts.load(Ordering::Relaxed)
    }

    /// Connections held longer than the leak threshold.
    pub fn leaks(&self) -> u64 {
        self.leaks.load(Ordering::Relaxed)
    }

    pub(crate) fn record_leak(&self) {
        self.leaks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_checkout_timeout(&self) {
        self.checkout_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, error: ConnectError) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .expect("the lock is never held across a panic") = Some((Instant::now(), error));
    }
}

/// bb8's error sink: keeps the cause, logs it (no secrets in a `ConnectError`), and wakes the
/// rotator when the credentials are refused.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    pub(crate) label: String,
    pub(crate) health: Arc<PoolHealth>,
    pub(crate) on_auth_failure: Option<Arc<Notify>>,
}

impl ErrorSink<ConnectError> for Sink {
    fn sink(&self, error: ConnectError) {
        if matches!(error, ConnectError::Draining) {
            return;
        }
        tracing::warn!(pool = %self.label, error = %error, "could not open a server connection");
        if error.is_auth() {
            if let Some(n) = &self.on_auth_failure {
                n.notify_one();
            }
        }
        self.health.record(error);
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<ConnectError>> {
        Box::new(self.clone())
    }
}
