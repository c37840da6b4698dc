//! The secret sources' settings, as written in `source = { kind = ... }`. They live here, not
//! in secret/, so that the configuration does not depend on the code that fetches (secret/
//! depends on config/, never the other way).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// The text format of a credentials file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// JSON if the content starts with `{`, else `KEY=VALUE`.
    #[default]
    Auto,
    Json,
    Env,
}

/// `source = { kind = "file", ... }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Absolute, or relative to `$CREDENTIALS_DIRECTORY`.
    pub path: PathBuf,
    #[serde(default)]
    pub format: FileFormat,
    #[serde(default = "default_username_key")]
    pub username_key: String,
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

/// `source = { kind = "aws", ... }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSourceConfig {
    /// Name or ARN of the secret.
    pub secret_id: String,
    /// Region; default from the standard chain (`AWS_REGION`, profile).
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint (a VPC endpoint, or a local emulator).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The stage that holds the credentials in use.
    #[serde(default = "default_stage")]
    pub version_stage: String,
    #[serde(default = "default_username_key")]
    pub username_key: String,
    #[serde(default = "default_password_key")]
    pub password_key: String,
    /// Deadline for one request, retries included.
    #[serde(default = "default_aws_timeout", with = "duration")]
    pub timeout: Duration,
}

fn default_stage() -> String {
    "AWSCURRENT".into()
}

fn default_aws_timeout() -> Duration {
    Duration::from_secs(5)
}

/// How credswap logs in to the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum VaultAuth {
    /// A token from a file (systemd `LoadCredential=`), else `$VAULT_TOKEN`.
    Token {
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
    /// AppRole: role_id and secret_id from files; the secret_id may be response-wrapped.
    Approle {
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
        #[serde(default)]
        secret_id_wrapped: bool,
        #[serde(default = "default_approle_mount")]
        mount: String,
    },
}

impl Default for VaultAuth {
    fn default() -> Self {
        VaultAuth::Token { token_file: None }
    }
}

fn default_approle_mount() -> String {
    "approle".into()
}

/// Which secrets engine holds the credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VaultEngine {
    /// KV version 2 at `mount`/`path`; the version comes from the metadata.
    #[default]
    Kv2,
    /// KV version 1 at `mount`/`path`.
    Kv1,
    /// Database engine, dynamic role `role`: every fetch is a new user with a lease.
    Database,
    /// Database engine, static role `role`: the store rotates the password itself.
    DatabaseStatic,
}

impl VaultEngine {
    /// The usual mount of the engine.
    pub fn default_mount(self) -> &'static str {
        match self {
            VaultEngine::Kv2 | VaultEngine::Kv1 => "secret",
            VaultEngine::Database | VaultEngine::DatabaseStatic => "database",
        }
    }

    /// Whether the engine is addressed by `role` (else by `path`).
    pub fn uses_role(self) -> bool {
        matches!(self, VaultEngine::Database | VaultEngine::DatabaseStatic)
    }
}

/// The whole Vault/OpenBao source configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSourceConfig {
    /// `https://vault.internal:8200`.
    pub address: String,
    /// CA certificate for the store's TLS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub auth: VaultAuth,
    #[serde(default)]
    pub engine: VaultEngine,
    /// Engine mount; default `secret` for KV, `database` for the database engine.
    #[serde(default)]
    pub mount: Option<String>,
    /// KV path of the secret.
    #[serde(default)]
    pub path: Option<String>,
    /// Database engine role.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default = "default_username_key")]
    pub username_key: String,
    #[serde(default = "default_password_key")]
    pub password_key: String,
    /// Revoke a dynamic lease once the pool that used it has drained.
    #[serde(default = "default_true")]
    pub revoke_on_drain: bool,
    /// Deadline for one request to the store.
    #[serde(default = "default_vault_timeout", with = "duration")]
    pub timeout: Duration,
}

fn default_true() -> bool {
    true
}

fn default_vault_timeout() -> Duration {
    Duration::from_secs(5)
}

impl VaultSourceConfig {
    /// The engine mount in use.
    pub fn mount(&self) -> &str {
        self.mount.as_deref().unwrap_or(self.engine.default_mount())
    }
}
