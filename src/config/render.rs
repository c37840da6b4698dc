//! The effective configuration as TOML, for `check-config`: defaults filled in, secrets out.

use serde::Serialize;

use super::duration;
use super::sources::{AwsSourceConfig, FileSourceConfig, VaultSourceConfig};
use super::types::{BreakerSettings, DaemonConfig, PoolSettings, RetrySettings, WebhookConfig};
use super::{Config, Source};

#[derive(Serialize)]
struct Effective<'a> {
    daemon: &'a DaemonConfig,
    api: EffectiveApi<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook: Option<&'a WebhookConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<EffectivePostgres>,
    target: Vec<EffectiveTarget<'a>>,
}

#[derive(Serialize)]
struct EffectivePostgres {
    socket: String,
    socket_mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_gid: Option<u32>,
    pool_mode: super::PoolMode,
    max_prepared_statements: usize,
    max_client_connections: usize,
    max_message_bytes: usize,
    #[serde(with = "super::duration")]
    startup_timeout: std::time::Duration,
    server_reset: super::ServerReset,
}

#[derive(Serialize)]
struct EffectiveApi<'a> {
    socket: String,
    socket_mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_group: Option<String>,
    admin_uids: &'a [u32],
    metrics_uids: &'a [u32],
    max_body_bytes: usize,
    max_rows: usize,
    max_response_bytes: usize,
    max_batch_statements: usize,
    max_response_memory: usize,
    rate_limit_per_second: f64,
    rate_limit_burst: u32,
    max_connections: usize,
    max_connections_per_uid: usize,
    #[serde(with = "super::duration")]
    header_read_timeout: std::time::Duration,
}

#[derive(Serialize)]
struct EffectiveTarget<'a> {
    name: &'a str,
    url: String,
    refresh_interval: String,
    drain_timeout: String,
    min_rotation_interval: String,
    pool: &'a PoolSettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool_mode: Option<super::PoolMode>,
    retry: &'a RetrySettings,
    breaker: &'a BreakerSettings,
    allow_uids: Vec<u32>,
    allow_gids: Vec<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    trust_domains: Vec<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_reset: Option<super::ServerReset>,
    source: EffectiveSource,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum EffectiveSource {
    File(FileSourceConfig),
    Aws(AwsSourceConfig),
    Vault(VaultSourceConfig),
    Development {
        username: String,
        password: &'static str,
    },
}

/// The configuration as credswap will use it. Passwords never appear: the file form cannot hold
/// one, and the development source's is shown as `[redacted]`.
pub fn render_effective(config: &Config) -> String {
    let effective = Effective {
        daemon: &config.daemon,
        webhook: config.webhook.as_ref(),
        postgres: config.postgres.as_ref().map(|p| EffectivePostgres {
            socket: p.socket.display().to_string(),
            socket_mode: format!("{:04o}", p.socket_mode),
            socket_gid: p.socket_gid,
            pool_mode: p.pool_mode,
            max_prepared_statements: p.max_prepared_statements,
            max_client_connections: p.max_client_connections,
            max_message_bytes: p.max_message_bytes,
            startup_timeout: p.startup_timeout,
            server_reset: p.server_reset,
        }),
        api: EffectiveApi {
            socket: config.api.socket.display().to_string(),
            socket_mode: format!("{:04o}", config.api.socket_mode),
            socket_group: config.api.socket_group.clone(),
            admin_uids: &config.api.admin_uids,
            metrics_uids: &config.api.metrics_uids,
            max_body_bytes: config.api.max_body_bytes,
            max_rows: config.api.max_rows,
            max_response_bytes: config.api.max_response_bytes,
            max_batch_statements: config.api.max_batch_statements,
            max_response_memory: config.api.max_response_memory,
            rate_limit_per_second: config.api.rate_limit_per_second,
            rate_limit_burst: config.api.rate_limit_burst,
            max_connections: config.api.max_connections,
            max_connections_per_uid: config.api.max_connections_per_uid,
            header_read_timeout: config.api.header_read_timeout,
        },
        target: config
            .targets
            .iter()
            .map(|t| EffectiveTarget {
                name: &t.name,
                url: t.conn.redacted(),
                refresh_interval: duration::format(t.refresh_interval),
                drain_timeout: duration::format(t.drain_timeout),
                min_rotation_interval: duration::format(t.min_rotation_interval),
                pool: &t.pool,
                pool_mode: t.pool_mode,
                retry: &t.retry,
                breaker: &t.breaker,
                allow_uids: t.access.uids.iter().copied().collect(),
                allow_gids: t.access.gids.iter().copied().collect(),
                trust_domains: t.trust.groups().to_vec(),
                server_reset: t.server_reset,
                source: match &t.source {
                    Source::File(f) => EffectiveSource::File(f.clone()),
                    Source::Aws(a) => EffectiveSource::Aws(a.clone()),
                    Source::Vault(v) => EffectiveSource::Vault(v.clone()),
                    Source::Development { username, .. } => EffectiveSource::Development {
                        username: username.clone(),
                        password: "[redacted]",
                    },
                },
            })
            .collect(),
    };
    toml::to_string(&effective).expect("the effective configuration is plain strings and numbers")
}
