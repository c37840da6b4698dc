//! The verified pool: a bb8 pool of TLS connections that has proved it works before anyone
//! gets it.
//!
//! bb8 reports a connection that cannot be opened as "timed out" once the checkout deadline
//! passes; the [`PoolHealth`] error sink keeps the real cause (wrong password, unknown CA), so
//! callers and status can say what is wrong.

mod connect;
mod error;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bb8::{ErrorSink, ManageConnection, PooledConnection, RunError};
use tokio_postgres::Client;

pub use connect::ConnectPlan;
pub use error::{ConnectError, PoolError};

use crate::config::PoolSettings;
use crate::dsn::ConnInfo;
use crate::secret::Credentials;
use crate::tls::{self, SslMode};

/// Opens connections for bb8 with the plan's credentials and TLS.
pub struct Manager {
    plan: Arc<ConnectPlan>,
}

impl ManageConnection for Manager {
    type Connection = Client;
    type Error = ConnectError;

    async fn connect(&self) -> Result<Client, ConnectError> {
        self.plan.connect().await
    }

    async fn is_valid(&self, conn: &mut Client) -> Result<(), ConnectError> {
        // Only called if test_on_check_out is on, which we keep off (a round trip per checkout).
        conn.simple_query("")
            .await
            .map(|_| ())
            .map_err(|e| ConnectError::Unreachable {
                server: "pool".into(),
                detail: e.to_string(),
            })
    }

    fn has_broken(&self, conn: &mut Client) -> bool {
        conn.is_closed()
    }
}

/// What the pool's background connection attempts ran into.
#[derive(Debug, Default)]
pub struct PoolHealth {
    last_error: Mutex<Option<(Instant, ConnectError)>>,
    connect_failures: AtomicU64,
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

    fn record(&self, error: ConnectError) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .expect("the lock is never held across a panic") = Some((Instant::now(), error));
    }
}

#[derive(Debug, Clone)]
struct Sink {
    label: String,
    health: Arc<PoolHealth>,
}

impl ErrorSink<ConnectError> for Sink {
    fn sink(&self, error: ConnectError) {
        tracing::warn!(pool = %self.label, error = %error, "could not open a server connection");
        self.health.record(error);
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<ConnectError>> {
        Box::new(self.clone())
    }
}

/// A pool whose credentials, identity and TLS state were checked on a real connection.
pub struct VerifiedPool {
    pool: bb8::Pool<Manager>,
    health: Arc<PoolHealth>,
    username: String,
    tls_in_use: bool,
    checkout_timeout: Duration,
}

/// A connection checked out of a [`VerifiedPool`]; returns to the pool when dropped.
pub type PoolConnection<'a> = PooledConnection<'a, Manager>;

impl VerifiedPool {
    /// Builds a pool for `conn` with `creds` and proves it: one real connection that logs in,
    /// is the expected user, and is encrypted exactly as the sslmode promises. That connection
    /// then becomes the pool's first. Certificate files are read now.
    pub async fn build(
        conn: &ConnInfo,
        settings: &PoolSettings,
        creds: &Credentials,
        application_name: &str,
    ) -> Result<VerifiedPool, PoolError> {
        let tls_settings = conn.tls.clone();
        let tls = tokio::task::spawn_blocking(move || tls::client_config(&tls_settings))
            .await
            .expect("building a TLS configuration does not panic")?;
        let plan = Arc::new(ConnectPlan::new(
            conn.clone(),
            tls,
            creds.username.clone(),
            creds.password.clone(),
            application_name.to_string(),
            settings.statement_timeout,
            settings.connect_timeout,
        ));
        let client = plan.connect().await?;
        let tls_in_use = verify(&client, &plan).await?;

        let health = Arc::new(PoolHealth::default());
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let pool = bb8::Pool::builder()
            .max_size(settings.max_size)
            .min_idle(Some(settings.min_idle))
            .test_on_check_out(false)
            .connection_timeout(settings.checkout_timeout)
            .idle_timeout(nonzero(settings.idle_timeout))
            .max_lifetime(nonzero(settings.max_lifetime))
            .error_sink(Box::new(Sink {
                label: application_name.to_string(),
                health: health.clone(),
            }))
            .build_unchecked(Manager { plan: plan.clone() });
        // The verified connection is the first one handed out; if the pool is somehow full
        // already, dropping it is harmless.
        let _ = pool.add(client);
        Ok(VerifiedPool {
            pool,
            health,
            username: creds.username.clone(),
            tls_in_use,
            checkout_timeout: settings.checkout_timeout,
        })
    }

    /// A connection that is open: bb8 is not asked to test it with a round trip, but one whose
    /// server side has gone away is dropped and another taken.
    pub async fn get(&self) -> Result<PoolConnection<'_>, PoolError> {
        let started = Instant::now();
        loop {
            match self.pool.get().await {
                Ok(conn) if conn.is_closed() => continue,
                Ok(conn) => return Ok(conn),
                Err(RunError::User(e)) => return Err(PoolError::Connect(e)),
                Err(RunError::TimedOut) => {
                    return Err(PoolError::CheckoutTimeout {
                        waited: started.elapsed().max(self.checkout_timeout),
                        last_error: self.health.last_error().map(|(_, e)| e),
                    })
                }
            }
        }
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
