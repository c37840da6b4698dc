//! Configuration: the TOML file, environment overrides, and validation into a [`Config`] the
//! rest of the daemon can trust.
//!
//! Every error names where it came from (the file or the environment variable), the key path
//! (`target[1].pool.max_size`), what is wrong, and how to fix it. All errors are collected, not
//! just the first, so one `check-config` run shows everything to mend.

pub mod access;
pub mod duration;
mod env;
mod render;
pub mod sources;
pub mod types;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

pub use env::{Env, ProcessEnv, DEFAULT_TARGET};
pub use render::render_effective;
pub use types::{
    ApiConfig, BreakerSettings, DaemonConfig, PoolMode, PoolSettings, PostgresConfig,
    RetrySettings, ServerReset, SourceConfig, StartupPolicy, WebhookConfig,
};

use crate::dsn::ConnInfo;
use sources::{AwsSourceConfig, FileSourceConfig, VaultSourceConfig};

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from; `None` for an environment-only setup.
    pub file: Option<PathBuf>,
    pub daemon: DaemonConfig,
    pub api: Api,
    pub webhook: Option<WebhookConfig>,
    pub postgres: Option<Postgres>,
    pub targets: Vec<Target>,
    /// Things that work but deserve a look (printed by `check-config`, logged at start).
    pub warnings: Vec<String>,
}

/// The API section, with the socket mode and group resolved.
#[derive(Clone, Debug)]
pub struct Api {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub socket_group: Option<String>,
    pub socket_gid: Option<u32>,
    pub admin_uids: Vec<u32>,
    pub metrics_uids: Vec<u32>,
    pub max_body_bytes: usize,
    pub max_rows: usize,
    pub max_response_bytes: usize,
    pub max_batch_statements: usize,
    pub max_response_memory: usize,
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: u32,
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub header_read_timeout: Duration,
}

impl Api {
    /// The API settings of a configuration without an `[api]` table.
    pub fn defaults() -> Api {
        let d = ApiConfig::default();
        Api {
            socket: d.socket,
            socket_mode: 0o660,
            socket_group: None,
            socket_gid: None,
            admin_uids: d.admin_uids,
            metrics_uids: d.metrics_uids,
            max_body_bytes: d.max_body_bytes,
            max_rows: d.max_rows,
            max_response_bytes: d.max_response_bytes,
            max_batch_statements: d.max_batch_statements,
            max_response_memory: d.max_response_memory,
            rate_limit_per_second: d.rate_limit_per_second,
            rate_limit_burst: d.rate_limit_burst,
            max_connections: d.max_connections,
            max_connections_per_uid: d.max_connections_per_uid,
            header_read_timeout: d.header_read_timeout,
        }
    }
}

/// The PostgreSQL front end, with its socket path, mode and group resolved.
#[derive(Clone, Debug)]
pub struct Postgres {
    /// `<socket_dir>/.s.PGSQL.<port>`.
    pub socket: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub socket_mode: u32,
    pub socket_gid: Option<u32>,
    pub pool_mode: PoolMode,
    pub max_prepared_statements: usize,
    pub max_client_connections: usize,
    pub max_message_bytes: usize,
    pub startup_timeout: Duration,
    pub server_reset: ServerReset,
}

/// One validated target.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub conn: ConnInfo,
    pub pool: PoolSettings,
    /// The front end's pool mode for this target; `None` follows `[postgres]`.
    pub pool_mode: Option<PoolMode>,
    pub refresh_interval: Duration,
    pub drain_timeout: Duration,
    pub min_rotation_interval: Duration,
    pub retry: RetrySettings,
    pub breaker: BreakerSettings,
    pub access: access::Access,
    /// Which clients may share server connections.
    pub trust: access::TrustDomains,
    /// Transaction mode's reset between clients; `None` follows `[postgres]`.
    pub server_reset: Option<ServerReset>,
    pub source: Source,
}

impl Target {
    /// A target with default settings, for the environment-only setup and for tests.
    pub fn new(name: impl Into<String>, conn: ConnInfo, source: Source) -> Target {
        Target {
            name: name.into(),
            conn,
            pool: PoolSettings::default(),
            pool_mode: None,
            refresh_interval: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(30),
            min_rotation_interval: Duration::from_secs(1),
            retry: RetrySettings::default(),
            breaker: BreakerSettings::default(),
            access: access::Access::default(),
            trust: access::TrustDomains::default(),
            server_reset: None,
            source,
        }
    }
}

/// Where a target's credentials come from, resolved.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file of credentials (JSON or KEY=VALUE).
    File(FileSourceConfig),
    /// AWS Secrets Manager.
    Aws(AwsSourceConfig),
    /// Vault or OpenBao.
    Vault(VaultSourceConfig),
    /// `DATABASE_URL` with a password: for local development only.
    Development {
        username: String,
        password: SecretString,
    },
}

impl Source {
    /// `file`, `aws`, `vault` or `development`: for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::File(_) => "file",
            Source::Aws(_) => "aws",
            Source::Vault(_) => "vault",
            Source::Development { .. } => "development",
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `environment` for environment variables.
    pub origin: String,
    /// The key path, e.g. `target[1].pool.max_size`, or the variable name.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
    /// 1-based line and column in the file, when known.
    pub position: Option<(usize, usize)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: ", self.origin)?,
            None => write!(f, "{}: ", self.origin)?,
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Everything wrong with a configuration, one error a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Loads the configuration: `path`, else `CREDSWAP_CONFIG`, else an environment-only setup
    /// from `DATABASE_URL`. `DB_*` variables then override the single target's TLS settings.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| env.var("CREDSWAP_CONFIG").map(PathBuf::from));
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigErrors(vec![ConfigError {
                        origin: path.display().to_string(),
                        key: "(file)".to_string(),
                        message: format!(
                            "cannot read the configuration file: {e}; fix: check the path, or pass --config"
                        ),
                        position: None,
                    }])
                })?;
                Self::from_toml(&text, &path, env)
            }
            None => env::environment_only(env),
        }
    }

    /// Parses and validates configuration text that came from `path`.
    pub fn from_toml(text: &str, path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        let raw = validate::parse_toml(text, &origin)?;
        let mut config = validate::validate(raw, &origin, Some(path))?;
        env::apply_overrides(&mut config, env)?;
        Ok(config)
    }

    /// A configuration of just these targets, everything else default (for embedding and
    /// tests; files go through [`Config::load`]).
    pub fn for_targets(targets: Vec<Target>) -> Config {
        Config {
            file: None,
            daemon: DaemonConfig::default(),
            api: Api::defaults(),
            webhook: None,
            postgres: None,
            targets,
            warnings: Vec::new(),
        }
    }

    /// Looks a target up by name.
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }
}
