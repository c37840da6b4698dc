//! The verified pool: a bb8 pool of TLS connections that has proved it works before anyone
//! gets it, and that can be drained when it is replaced.
//!
//! bb8 reports a connection that cannot be opened as "timed out" once the checkout deadline
//! passes; the [`PoolHealth`] error sink keeps the real cause (wrong password, unknown CA), so
//! callers and status can say what is wrong.

mod connect;
mod error;
pub mod hosts;
mod manager;
pub mod raw;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bb8::{PooledConnection, RunError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{CancelToken, Client};

pub use connect::ConnectPlan;
pub use error::{is_auth_sqlstate, CancelError, ConnectError, PoolError};
pub use manager::{DrainState, Manager, PoolHealth, ServerConn};

use crate::config::PoolSettings;
use crate::dsn::ConnInfo;
use crate::secret::Credentials;
use crate::tls::{self, SslMode};
use manager::Sink;

/// How long each step of building a pool took.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildTimings {
    /// Reading certificate files and building the TLS configuration, then logging in.
    pub connect: Duration,
    /// The identity and TLS check on that connection.
    pub verify: Duration,
}

/// Options of one pool build.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Shown in `pg_stat_activity`, so operators see which pool owns a session.
    pub application_name: String,
    /// Notified when a new connection is refused for its credentials.
    pub on_auth_failure: Option<Arc<Notify>>,
    /// The PostgreSQL front end is on: prove its own login path too ([`raw::verify`]).
    pub verify_raw: bool,
    /// Told when a writable target's connections move to another host (a failover).
    pub on_host_change: Option<hosts::OnHostChange>,
}

impl BuildOptions {
    /// Options with just an application name.
    pub fn named(application_name: impl Into<String>) -> Self {
        BuildOptions {
            application_name: application_name.into(),
            on_auth_failure: None,
            verify_raw: false,
            on_host_change: None,
        }
    }
}

/// Counts a request as queued for as long as it lives.
struct Queued<'a>(&'a AtomicU64);

impl<'a> Queued<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Queued(counter)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Checked-out connections, with what is needed to cancel their statements.
#[derive(Default)]
struct InUse {
    next: AtomicU64,
    tokens: Mutex<HashMap<u64, CancelToken>>,
}

/// A pool whose credentials, identity and TLS state were checked on a real connection.
///
/// Checkouts queue first on a FIFO semaphore with one permit per connection: bb8's own wait
/// is not fair (a task that just returned a connection can take it again before a woken
/// waiter runs), which under overload starves some requests past their timeout.
pub struct VerifiedPool {
    pool: bb8::Pool<Manager>,
    permits: Arc<Semaphore>,
    waiting: AtomicU64,
    plan: Arc<ConnectPlan>,
    health: Arc<PoolHealth>,
    drain: Arc<DrainState>,
    in_use: Arc<InUse>,
    username: String,
    tls_in_use: bool,
    checkout_timeout: Duration,
    leak_threshold: Duration,
    timings: BuildTimings,
}

/// A connection checked out of a [`VerifiedPool`]; it goes back when dropped.
pub struct PoolConnection {
    // Field order is drop order: the connection goes back before the permit is released.
    conn: PooledConnection<'static, Manager>,
    _permit: OwnedSemaphorePermit,
    in_use: Arc<InUse>,
    plan: Arc<ConnectPlan>,
    id: u64,
    taken_at: Instant,
    leak_threshold: Duration,
    health: Arc<PoolHealth>,
}

impl PoolConnection {
    /// Cancels the statement running on this connection (PostgreSQL cancel request).
    pub async fn cancel(&self) -> Result<(), CancelError> {
        self.plan.cancel(&self.conn.cancel_token()).await
    }
}

impl std::ops::Deref for PoolConnection {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        &self.conn
    }
}

impl std::fmt::Debug for PoolConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConnection")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for PoolConnection {
    fn drop(&mut self) {
        let held = self.taken_at.elapsed();
        if !self.leak_threshold.is_zero() && held > self.leak_threshold {
            self.health.record_leak();
            tracing::warn!(
                held_ms = held.as_millis() as u64,
                threshold_ms = self.leak_threshold.as_millis() as u64,
                "a connection was held longer than leak_threshold"
            );
        }
        self.in_use
            .tokens
            .lock()
            .expect("never poisoned")
            .remove(&self.id);
    }
}

impl VerifiedPool {
    /// Builds a pool for `conn` with `creds` and proves it: one real connection that logs in,
    /// is the expected user, and is encrypted exactly as the sslmode promises. That connection
    /// then becomes the pool's first. Certificate files are read now.
    pub async fn build(
        conn: &ConnInfo,
        settings: &PoolSettings,
        creds: &Credentials,
        options: BuildOptions,
    ) -> Result<VerifiedPool, PoolError> {
        let started = Instant::now();
        let tls_settings = conn.tls.clone();
        let tls = tokio::task::spawn_blocking(move || tls::client_config(&tls_settings))
            .await
            .expect("building a TLS configuration does not panic")?;
        let plan = Arc::new(ConnectPlan::new(
            conn.clone(),
            tls,
            creds,
            settings,
            &options,
        ));
        let (client, host) = plan.connect().await?;
        let connected = Instant::now();
        let tls_in_use = verify(&client, &plan).await?;
        if options.verify_raw {
            raw::verify(&plan).await?;
        }
        let timings = BuildTimings {
            connect: connected - started,
            verify: connected.elapsed(),
        };
        Ok(Self::assemble(
            plan,
            settings,
            creds,
            options,
            Some((client, host)),
            tls_in_use,
            timings,
        ))
    }

    /// A pool that has not proved anything and holds no connection yet: for the rotator's unit
    /// tests, which exercise its state machine without a server.
    #[cfg(test)]
    pub(crate) fn unverified(
        conn: &ConnInfo,
        settings: &PoolSettings,
        creds: &Credentials,
        options: BuildOptions,
    ) -> Result<VerifiedPool, PoolError> {
        let plan = Arc::new(ConnectPlan::new(
            conn.clone(),
            tls::client_config(&conn.tls)?,
            creds,
            settings,
            &options,
        ));
        Ok(Self::assemble(
            plan,
            settings,
            creds,
            options,
            None,
            true,
            BuildTimings::default(),
        ))
    }

    fn assemble(
        plan: Arc<ConnectPlan>,
        settings: &PoolSettings,
        creds: &Credentials,
        options: BuildOptions,
        first: Option<(Client, hosts::HostLease)>,
        tls_in_use: bool,
        timings: BuildTimings,
    ) -> VerifiedPool {
        let health = Arc::new(PoolHealth::default());
        let drain = Arc::new(DrainState::default());
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let pool = bb8::Pool::builder()
            .max_size(settings.max_size)
            .min_idle(Some(settings.min_idle))
            .test_on_check_out(false)
            .connection_timeout(settings.checkout_timeout)
            .idle_timeout(nonzero(settings.idle_timeout))
            .max_lifetime(nonzero(settings.max_lifetime))
            .error_sink(Box::new(Sink {
                label: options.application_name.clone(),
                health: health.clone(),
                on_auth_failure: options.on_auth_failure,
            }))
            .build_unchecked(Manager {
                plan: plan.clone(),
                drain: drain.clone(),
            });
        // The verified connection is the first one handed out; if the pool is somehow full
        // already, dropping it is harmless.
        if let Some((client, host)) = first {
            let _ = pool.add(ServerConn::new(client, host));
        }
        VerifiedPool {
            pool,
            permits: Arc::new(Semaphore::new(settings.max_size as usize)),
            waiting: AtomicU64::new(0),
            plan,
            health,
            drain,
            in_use: Arc::new(InUse::default()),
            username: creds.username.clone(),
            tls_in_use,
            checkout_timeout: settings.checkout_timeout,
            leak_threshold: settings.leak_threshold,
            timings,
        }
    }

    /// A connection that is open: bb8 is not asked to test it with a round trip, but one whose
    /// server side has gone away is dropped and another taken. Fails with
    /// [`PoolError::Draining`] as soon as the pool starts draining, also while waiting.
    pub async fn get(&self) -> Result<PoolConnection, PoolError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.checkout_timeout;
        let mut drained = self.drain.started.subscribe();
        if self.drain.is_draining() {
            return Err(PoolError::Draining);
        }
        let timed_out = || {
            self.health.record_checkout_timeout();
            PoolError::CheckoutTimeout {
                waited: started.elapsed(),
                last_error: self.health.last_error().map(|(_, e)| e),
            }
        };
        let queued = Queued::new(&self.waiting);
        let permit = tokio::select! {
            p = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()) => match p {
                Ok(p) => p.expect("the semaphore is never closed"),
                Err(_) => return Err(timed_out()),
            },
            _ = drained.wait_for(|d| *d) => return Err(PoolError::Draining),
        };
        drop(queued);
        loop {
            let got = tokio::select! {
                got = tokio::time::timeout_at(deadline, self.pool.get_owned()) => got,
                _ = drained.wait_for(|d| *d) => return Err(PoolError::Draining),
            };
            match got {
                // Closed, or on a host found gone or changed since it was opened: dropped here
                // (bb8 closes it), and the next one is taken.
                Ok(Ok(conn)) if conn.is_closed() || conn.host().is_stale() => {
                    let look = conn.host().looks_for_standby();
                    drop(conn);
                    if look {
                        // A prefer-standby pool on its fallback: the replacement is opened
                        // now, standbys first; reaching one moves the others back too.
                        let opened = tokio::time::timeout_at(deadline, self.plan.connect()).await;
                        if let Ok(Ok((client, host))) = opened {
                            let _ = self.pool.add(ServerConn::new(client, host));
                        }
                    }
                    continue;
                }
                Ok(Ok(conn)) => {
                    let id = self.in_use.next.fetch_add(1, Ordering::Relaxed);
                    self.in_use
                        .tokens
                        .lock()
                        .expect("never poisoned")
                        .insert(id, conn.cancel_token());
                    return Ok(PoolConnection {
                        conn,
                        _permit: permit,
                        in_use: self.in_use.clone(),
                        plan: self.plan.clone(),
                        id,
                        taken_at: Instant::now(),
                        leak_threshold: self.leak_threshold,
                        health: self.health.clone(),
                    });
                }
                Ok(Err(RunError::User(ConnectError::Draining))) => return Err(PoolError::Draining),
                Ok(Err(RunError::User(e))) => return Err(PoolError::Connect(e)),
                Ok(Err(RunError::TimedOut)) | Err(_) => return Err(timed_out()),
            }
        }
    }

    /// Requests queued for a connection right now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Makes the pool hold at least `n` connections (at most its maximum) by checking out `n`
    /// at once, so a new generation can take over a busy one's load without a burst of
    /// connects after the swap. Going through bb8 rather than beside it means connections its
    /// own `min_idle` replenishment is already opening count, and none is opened twice. Each
    /// wait is bounded by the pool's checkout timeout; returns how many are open.
    pub async fn warm(&self, n: u32) -> u32 {
        let want = n.min(self.pool.config().max_size) as usize;
        let mut held = Vec::with_capacity(want);
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..want {
            let pool = self.pool.clone();
            opening.spawn(async move { pool.get_owned().await });
        }
        while let Some(done) = opening.join_next().await {
            if let Ok(Ok(conn)) = done {
                held.push(conn);
            }
        }
        drop(held);
        self.pool.state().connections
    }

    /// Stops handing out connections: waiting and future checkouts fail with `Draining`, no
    /// connection is opened any more, and each one that comes back is closed.
    pub fn begin_drain(&self) {
        self.drain.begin();
    }

    /// Takes the idle connections out and closes them. Call after [`Self::begin_drain`].
    pub async fn close_idle(&self) {
        for _ in 0..self.pool.state().idle_connections {
            // An idle connection comes back at once; anything else would wait, so don't.
            match tokio::time::timeout(Duration::from_millis(5), self.pool.get()).await {
                Ok(Ok(conn)) => drop(conn), // has_broken says yes while draining: closed
                _ => break,
            }
        }
    }

    /// Resolves when a connection comes back to the draining pool.
    pub async fn returned(&self) {
        self.drain.returned.notified().await
    }

    /// Sends PostgreSQL cancel requests for every statement running on a checked-out
    /// connection; returns how many were sent.
    pub async fn cancel_in_use(&self) -> usize {
        let tokens: Vec<CancelToken> = self
            .in_use
            .tokens
            .lock()
            .expect("never poisoned")
            .values()
            .cloned()
            .collect();
        let mut sent = 0;
        for token in tokens {
            match self.plan.cancel(&token).await {
                Ok(()) => sent += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "could not cancel a statement on a draining pool")
                }
            }
        }
        sent
    }

    /// Connections checked out right now.
    pub fn checked_out(&self) -> usize {
        self.in_use.tokens.lock().expect("never poisoned").len()
    }

    /// Whether [`Self::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// Connection counts (total, idle) and bb8's statistics.
    pub fn state(&self) -> bb8::State {
        self.pool.state()
    }

    /// Errors seen by the pool's own connection attempts.
    pub fn health(&self) -> &PoolHealth {
        &self.health
    }

    /// The role this pool logs in as.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Whether the verifying session was encrypted (for `allow`/`prefer`, what was negotiated).
    pub fn tls_in_use(&self) -> bool {
        self.tls_in_use
    }

    /// How this pool's connections are opened (hosts, TLS, credentials), for raw connections
    /// of the same generation.
    pub fn plan(&self) -> &Arc<ConnectPlan> {
        &self.plan
    }

    /// How long connecting and verifying took when the pool was built.
    pub fn timings(&self) -> BuildTimings {
        self.timings
    }
}

impl std::fmt::Debug for VerifiedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedPool")
            .field("username", &self.username)
            .field("tls_in_use", &self.tls_in_use)
            .field("state", &self.pool.state())
            .finish()
    }
}

/// Checks who we are and whether the session is encrypted as promised. Returns the TLS state.
async fn verify(client: &Client, plan: &ConnectPlan) -> Result<bool, PoolError> {
    const SQL: &str = "SELECT current_user::text, \
         coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false), \
         inet_server_addr() IS NULL";
    let row = tokio::time::timeout(plan.connect_timeout(), client.query_one(SQL, &[]))
        .await
        .map_err(|_| {
            PoolError::VerifyQuery(format!("no answer within {:?}", plan.connect_timeout()))
        })?
        .map_err(|e| PoolError::VerifyQuery(e.to_string()))?;
    let user: String = row.get(0);
    let ssl: bool = row.get(1);
    let unix_socket: bool = row.get(2);
    if user != plan.username() {
        return Err(PoolError::WrongUser {
            expected: plan.username().to_string(),
            actual: user,
        });
    }
    let mode = plan.ssl_mode();
    if !unix_socket && mode.requires_tls() && !ssl {
        return Err(PoolError::TlsNotInUse(mode));
    }
    if mode == SslMode::Disable && ssl {
        return Err(PoolError::TlsUnexpected);
    }
    Ok(ssl)
}
