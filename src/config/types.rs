//! The configuration file as written: serde types with `deny_unknown_fields`, so a typo is an
//! error that names the key instead of a setting silently ignored.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;
use super::sources::{AwsSourceConfig, FileSourceConfig, VaultSourceConfig};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub api: ApiConfig,
    /// The rotation webhook listener; absent means none.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// The PostgreSQL front end; absent means none.
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
}

/// The daemon as a whole.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// How long start-up waits for every target to have a live pool.
    #[serde(default = "default_startup_timeout", with = "duration")]
    pub startup_timeout: Duration,
    /// What to do when some targets are not ready by then.
    #[serde(default)]
    pub on_startup_failure: StartupPolicy,
    /// At shutdown, how long in-flight API requests may take to finish.
    #[serde(default = "default_shutdown_timeout", with = "duration")]
    pub shutdown_timeout: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            startup_timeout: default_startup_timeout(),
            on_startup_failure: StartupPolicy::default(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_startup_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Start-up with targets that are not ready.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StartupPolicy {
    /// Report ready with the targets that made it; the others keep retrying, `degraded`.
    #[default]
    RunDegraded,
    /// Exit with an error naming the targets, their failed step and why.
    Exit,
}

/// The rotation webhook listener (for senders off the host).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// TCP address; `""` for none.
    #[serde(default = "default_webhook_listen")]
    pub listen: String,
    /// Also (or only) on a Unix socket.
    #[serde(default)]
    pub unix_socket: Option<PathBuf>,
    /// TLS for the TCP listener: server certificate chain and key (PEM).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// HMAC keys, one or two (two while the key itself rotates); files, never inline.
    #[serde(default)]
    pub hmac_key_files: Vec<PathBuf>,
    /// A static token for senders that cannot sign (EventBridge API destinations).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The header the token comes in; `authorization` takes `Bearer <token>`.
    #[serde(default = "default_token_header")]
    pub token_header: String,
    /// Signed timestamps further than this from now are refused.
    #[serde(default = "default_max_skew", with = "duration")]
    pub max_skew: Duration,
    /// A connection that sends no complete request head for this long (slow, or idle between
    /// requests) is closed.
    #[serde(default = "default_header_read_timeout", with = "duration")]
    pub header_read_timeout: Duration,
    /// Requests per second per source address.
    #[serde(default = "default_webhook_rate")]
    pub rate_limit_per_second: f64,
    #[serde(default = "default_webhook_burst")]
    pub rate_limit_burst: u32,
}

/// The PostgreSQL front end: the wire protocol on a Unix socket.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// The socket is `<socket_dir>/.s.PGSQL.<port>`, where libpq looks for `host=<socket_dir>`.
    #[serde(default = "default_pg_socket_dir")]
    pub socket_dir: PathBuf,
    /// Names the socket file only (`port=` in the client's connection string).
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// File mode of the socket, octal as in `chmod`.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Group owning the socket file.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// `session`: a server connection for a client's whole session; `transaction`: one per
    /// transaction. A target's own `pool_mode` overrides it.
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// Protocol-level prepared statements each server connection keeps in transaction mode
    /// (least recently used closed first).
    #[serde(default = "default_pg_max_prepared")]
    pub max_prepared_statements: usize,
    /// Client connections at once (a client past it gets `53300`).
    #[serde(default = "default_pg_max_clients")]
    pub max_client_connections: usize,
    /// Largest protocol message forwarded, either way (larger: `08P01` and the session ends).
    #[serde(default = "default_pg_max_message")]
    pub max_message_bytes: usize,
    /// How long a client may take to send its startup packet.
    #[serde(default = "default_pg_startup_timeout", with = "duration")]
    pub startup_timeout: Duration,
    /// Transaction mode: when a server connection is reset before another client uses it.
    #[serde(default)]
    pub server_reset: ServerReset,
}

/// When a transaction-mode server connection is brought back to its login state.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ServerReset {
    /// After every transaction that is not provably harmless (a read calling no function
    /// but known built-ins, transaction control, a reported parameter): docs/postgres.md.
    #[default]
    Auto,
    /// After every transaction, whatever it ran.
    Always,
}

/// How client sessions map to server connections.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection for the client's whole session.
    #[default]
    Session,
    /// A server connection per transaction, returned at `ReadyForQuery` "idle".
    Transaction,
}

fn default_pg_socket_dir() -> PathBuf {
    PathBuf::from("/run/credswap")
}
fn default_pg_port() -> u16 {
    5432
}
fn default_pg_max_clients() -> usize {
    1000
}
fn default_pg_max_message() -> usize {
    256 << 20
}
fn default_pg_max_prepared() -> usize {
    200
}
fn default_pg_startup_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_webhook_listen() -> String {
    "127.0.0.1:9460".into()
}
fn default_token_header() -> String {
    "authorization".into()
}
fn default_max_skew() -> Duration {
    Duration::from_secs(300)
}
fn default_webhook_rate() -> f64 {
    10.0
}
fn default_webhook_burst() -> u32 {
    50
}

/// The local Unix socket API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where the socket is created.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// File mode of the socket, octal as in `chmod`.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Group owning the socket file (with `socket_mode` 0660, its members may connect).
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Peers (by uid) that may rotate, reload and use every target.
    #[serde(default = "default_admin_uids")]
    pub admin_uids: Vec<u32>,
    /// Peers (by uid) that may read `/metrics` without being admins (a Prometheus scraper).
    #[serde(default)]
    pub metrics_uids: Vec<u32>,
    /// Largest request body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Default and ceiling of rows one query may return.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Largest JSON response of a query, and of a whole batch.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// Most statements one batch may hold.
    #[serde(default = "default_max_batch_statements")]
    pub max_batch_statements: usize,
    /// Response memory of all requests together: a result that would take more is refused
    /// (503) instead of growing the daemon.
    #[serde(default = "default_max_response_memory")]
    pub max_response_memory: usize,
    /// Requests per second each peer uid may make (token bucket); 0 turns it off.
    #[serde(default = "default_rate")]
    pub rate_limit_per_second: f64,
    /// Burst size of the token bucket.
    #[serde(default = "default_burst")]
    pub rate_limit_burst: u32,
    /// Open connections at once on the API socket, all peers together.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections at once from one peer uid.
    #[serde(default = "default_max_connections_per_uid")]
    pub max_connections_per_uid: usize,
    /// A connection that sends no complete request head for this long (slow, or idle between
    /// requests) is closed.
    #[serde(default = "default_header_read_timeout", with = "duration")]
    pub header_read_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: default_socket(),
            socket_mode: default_socket_mode(),
            socket_group: None,
            admin_uids: default_admin_uids(),
            metrics_uids: Vec::new(),
            max_body_bytes: default_max_body(),
            max_rows: default_max_rows(),
            max_response_bytes: default_max_response(),
            max_batch_statements: default_max_batch_statements(),
            max_response_memory: default_max_response_memory(),
            rate_limit_per_second: default_rate(),
            rate_limit_burst: default_burst(),
            max_connections: default_max_connections(),
            max_connections_per_uid: default_max_connections_per_uid(),
            header_read_timeout: default_header_read_timeout(),
        }
    }
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_uid() -> usize {
    512
}
fn default_max_body() -> usize {
    1 << 20
}
fn default_max_rows() -> usize {
    10_000
}
fn default_max_response() -> usize {
    16 << 20
}
fn default_max_batch_statements() -> usize {
    100
}
fn default_max_response_memory() -> usize {
    32 << 20
}
fn default_rate() -> f64 {
    0.0
}
fn default_burst() -> u32 {
    2000
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/credswap/credswap.sock")
}
fn default_socket_mode() -> String {
    "0660".to_string()
}
fn default_admin_uids() -> Vec<u32> {
    vec![0]
}

/// One `[[target]]`: a database role on a database.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    /// Connection string without user or password.
    pub url: String,
    #[serde(default)]
    pub pool: PoolSettings,
    /// The PostgreSQL front end's pool mode for this target (default: `[postgres]`'s).
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    /// How often the secret source is asked for a new version even without a trigger.
    #[serde(default = "default_refresh", with = "duration")]
    pub refresh_interval: Duration,
    /// How long an old pool may keep running statements after a swap.
    #[serde(default = "default_drain", with = "duration")]
    pub drain_timeout: Duration,
    /// Triggers closer together than this are coalesced into one rotation.
    #[serde(default = "default_min_rotation_interval", with = "duration")]
    pub min_rotation_interval: Duration,
    #[serde(default)]
    pub retry: RetrySettings,
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// Peers that may use this target, by uid, gid, user name or group name.
    #[serde(default)]
    pub allow_uids: Vec<u32>,
    #[serde(default)]
    pub allow_gids: Vec<u32>,
    #[serde(default)]
    pub allow_users: Vec<String>,
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Groups of uids whose clients may share server connections (and the prepared
    /// statements and session state on them) with each other; every other uid shares with
    /// itself only.
    #[serde(default)]
    pub trust_domains: Vec<Vec<u32>>,
    /// The front end's `server_reset` for this target (default: `[postgres]`'s).
    #[serde(default)]
    pub server_reset: Option<ServerReset>,
    pub source: SourceConfig,
}

fn default_min_rotation_interval() -> Duration {
    Duration::from_secs(1)
}

/// Backoff after a failed rotation: exponential with full jitter.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(default = "default_retry_initial", with = "duration")]
    pub initial: Duration,
    #[serde(default = "default_retry_max", with = "duration")]
    pub max: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            initial: default_retry_initial(),
            max: default_retry_max(),
        }
    }
}

fn default_retry_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(300)
}

/// The circuit breaker in front of a target's secret store.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive store failures that open the breaker.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// How long it stays open before one probe is let through.
    #[serde(default = "default_breaker_open", with = "duration")]
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: default_breaker_failures(),
            open_for: default_breaker_open(),
        }
    }
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open() -> Duration {
    Duration::from_secs(30)
}

fn default_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}

/// Where a target's credentials come from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// A JSON or KEY=VALUE file; `$CREDENTIALS_DIRECTORY` is honoured for relative paths.
    File(FileSourceConfig),
    /// AWS Secrets Manager.
    Aws(AwsSourceConfig),
    /// HashiCorp Vault or OpenBao.
    Vault(VaultSourceConfig),
}

/// Pool limits and timeouts, with the defaults a web application would pick.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// Most server connections open at once.
    #[serde(default = "default_max_size")]
    pub max_size: u32,
    /// Idle connections kept open and ready.
    #[serde(default = "default_min_idle")]
    pub min_idle: u32,
    /// How long a request waits for a free connection before `pool_exhausted`.
    #[serde(default = "default_checkout", with = "duration")]
    pub checkout_timeout: Duration,
    /// Server-side `statement_timeout`, sent as a startup option; `"0s"` turns it off.
    #[serde(default = "default_statement", with = "duration")]
    pub statement_timeout: Duration,
    /// Idle connections above `min_idle` close after this; `"0s"` keeps them.
    #[serde(default = "default_idle", with = "duration")]
    pub idle_timeout: Duration,
    /// Connections are replaced after this age; `"0s"` keeps them forever.
    #[serde(default = "default_lifetime", with = "duration")]
    pub max_lifetime: Duration,
    /// Deadline for opening one connection, TLS and authentication included.
    #[serde(default = "default_connect", with = "duration")]
    pub connect_timeout: Duration,
    /// A connection held longer than this is logged and counted as a possible leak.
    #[serde(default = "default_leak", with = "duration")]
    pub leak_threshold: Duration,
}

fn default_leak() -> Duration {
    Duration::from_secs(30)
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_size: default_max_size(),
            min_idle: default_min_idle(),
            checkout_timeout: default_checkout(),
            statement_timeout: default_statement(),
            idle_timeout: default_idle(),
            max_lifetime: default_lifetime(),
            connect_timeout: default_connect(),
            leak_threshold: default_leak(),
        }
    }
}

fn default_max_size() -> u32 {
    10
}
fn default_min_idle() -> u32 {
    1
}
fn default_checkout() -> Duration {
    Duration::from_secs(2)
}
fn default_statement() -> Duration {
    Duration::from_secs(30)
}
fn default_idle() -> Duration {
    Duration::from_secs(600)
}
fn default_lifetime() -> Duration {
    Duration::from_secs(1800)
}
fn default_connect() -> Duration {
    Duration::from_secs(5)
}
