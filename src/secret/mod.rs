//! Credentials and where they come from.
//!
//! Every backend implements [`SecretSource`]: AWS Secrets Manager ([`aws`]), Vault/OpenBao
//! ([`vault`]), files and systemd credentials ([`file`]), and `DATABASE_URL` for development
//! ([`dev`]). A password lives in a [`SecretString`] from the moment it is read until it is
//! handed to the PostgreSQL driver: `Debug` shows `[REDACTED]`, and no error message carries a
//! secret value — a malformed secret is described by the key that is missing, never by content.

pub mod aws;
pub mod dev;
pub mod file;
mod payload;
pub mod vault;
pub mod wipe;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;

pub use payload::KeyNames;

use crate::config::Source;

/// A database login as a secret source delivers it.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The role to log in as; not secret.
    pub username: String,
    /// The password; never logged, printed or serialised.
    pub password: SecretString,
    /// An opaque version label (AWS VersionId, KV version, lease id, content hash): safe to
    /// show, used to skip rotations when nothing changed.
    pub version: String,
    /// Present for credentials that expire (Vault database engine).
    pub lease: Option<Lease>,
    /// Connection details the secret itself carries (RDS format: host, port, dbname).
    pub overrides: Overrides,
    /// When the store will rotate these credentials itself (Vault static roles): fetch just
    /// after it.
    pub next_rotation: Option<SystemTime>,
}

impl Credentials {
    /// Plain credentials with a version label.
    pub fn new(
        username: impl Into<String>,
        password: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        Credentials {
            username: username.into(),
            password: SecretString::from(password.into()),
            version: version.into(),
            lease: None,
            overrides: Overrides::default(),
            next_rotation: None,
        }
    }
}

/// A lease on dynamic credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The store's lease id (not secret: it cannot be used without a token).
    pub id: String,
    pub ttl: Duration,
    pub renewable: bool,
    pub issued_at: SystemTime,
}

impl Lease {
    /// When the credentials stop working.
    pub fn expires_at(&self) -> SystemTime {
        self.issued_at + self.ttl
    }
}

/// When to fetch the next credentials for a lease: at a random 85–95 % of its TTL, as Vault
/// Agent does, so many daemons do not all come back at once and the new credentials are in
/// place before the old ones expire.
pub fn lease_refresh_at(lease: &Lease) -> SystemTime {
    let fraction = rand::random_range(0.85..=0.95);
    lease.issued_at + lease.ttl.mul_f64(fraction)
}

/// Connection details carried by the secret, which win over the target's url.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
}

/// Which version of a secret to ask for. Only AWS has stages; other sources treat `Pending`
/// and `Previous` as "not available".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Current,
    /// AWS `AWSPENDING`: the password a rotation is setting, before it becomes current.
    Pending,
    /// AWS `AWSPREVIOUS`.
    Previous,
}

/// Why credentials could not be fetched. Never carries a secret value.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("access to {what} denied: {detail}")]
    AccessDenied { what: String, detail: String },
    #[error("{what} is malformed: {detail}")]
    Malformed { what: String, detail: String },
    #[error("{what}: throttled by the store: {detail}")]
    Throttled { what: String, detail: String },
    #[error("{what}: the store is unavailable: {detail}")]
    Unavailable { what: String, detail: String },
    #[error("{what}: authentication to the store failed: {detail}")]
    StoreAuth { what: String, detail: String },
    #[error("{what}: {detail}")]
    Unsupported { what: String, detail: String },
}

impl SecretError {
    /// Whether trying again later can help without an operator doing anything.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            SecretError::Throttled { .. }
                | SecretError::Unavailable { .. }
                | SecretError::StoreAuth { .. }
        )
    }
}

/// The longest lifetime a store's answer is believed: ten years. A store (or a man in the middle
/// of a plaintext one) that says `u64::MAX` seconds must not make a clock addition overflow and
/// panic; nothing real lasts longer.
pub const MAX_STORE_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration in seconds from a store, capped at [`MAX_STORE_DURATION`].
pub fn store_seconds(secs: u64) -> Duration {
    Duration::from_secs(secs).min(MAX_STORE_DURATION)
}

/// A boxed future, so sources can be held as `Arc<dyn SecretSource>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A place credentials come from.
pub trait SecretSource: Send + Sync + std::fmt::Debug {
    /// `aws`, `vault`, `file` or `development`: for metrics labels.
    fn kind(&self) -> &'static str;

    /// What is fetched, for logs and errors (a secret id or path, never a value).
    fn describe(&self) -> String;

    /// Fetches the credentials at `stage`.
    fn fetch(&self, stage: Stage) -> BoxFuture<'_, Result<Credentials, SecretError>>;

    /// Revokes a lease this source issued (Vault dynamic credentials); others do nothing.
    fn revoke<'a>(&'a self, _lease: &'a Lease) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(async { Ok(()) })
    }

    /// Resolves when the source knows its content changed (a file written or replaced).
    /// Sources that cannot tell never resolve.
    fn changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
}

/// Builds the source a target's configuration names.
pub async fn build(source: &Source) -> Result<Arc<dyn SecretSource>, SecretError> {
    Ok(match source {
        Source::File(cfg) => Arc::new(file::FileSource::new(cfg)?),
        Source::Development { username, password } => {
            Arc::new(dev::DevSource::new(username.clone(), password.clone()))
        }
        Source::Aws(cfg) => Arc::new(aws::AwsSource::new(cfg).await),
        Source::Vault(cfg) => Arc::new(vault::VaultSource::new(cfg).await?),
    })
}
