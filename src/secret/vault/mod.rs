//! HashiCorp Vault and OpenBao: KV v1/v2, and the database secrets engine's dynamic and static
//! roles, over token or AppRole auth (see [`session`]).

pub mod http;
pub mod session;

use crate::secret::wipe::{SecretJson, SecretText};
use std::sync::Arc;
use std::time::SystemTime;

use reqwest::Method;
use secrecy::SecretString;
use serde::Deserialize;
use tokio::task::JoinHandle;

pub use crate::config::sources::{VaultAuth, VaultEngine, VaultSourceConfig};
pub use session::{Session, SessionStats};

use http::{DataAnswer, VaultClient};

use super::dev::content_version;
use super::payload::{self, KeyNames};
use super::{BoxFuture, Credentials, Lease, SecretError, SecretSource, Stage};

/// Credentials from Vault/OpenBao.
pub struct VaultSource {
    cfg: VaultSourceConfig,
    session: Arc<Session>,
    keeper: JoinHandle<()>,
}

impl std::fmt::Debug for VaultSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSource")
            .field("what", &self.describe())
            .field("session", &self.session)
            .finish()
    }
}

impl Drop for VaultSource {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// A database engine answer with its lease.
#[derive(Deserialize)]
struct LeasedCreds {
    lease_id: String,
    lease_duration: u64,
    renewable: bool,
    data: LeasedData,
}

#[derive(Deserialize)]
struct LeasedData {
    username: String,
    password: SecretString,
}

impl VaultSource {
    /// Logs in and starts keeping the token alive.
    pub async fn new(cfg: &VaultSourceConfig) -> Result<VaultSource, SecretError> {
        let session = Session::start(
            session::Endpoint {
                address: cfg.address.clone(),
                ca_file: cfg.ca_file.clone(),
                namespace: cfg.namespace.clone(),
                timeout: cfg.timeout,
            },
            cfg.auth.clone(),
        )
        .await?;
        let keeper = session.keep_alive();
        Ok(VaultSource {
            cfg: cfg.clone(),
            session,
            keeper,
        })
    }

    /// The logged-in session (its counters show logins and renewals).
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    fn name(&self) -> &str {
        if self.cfg.engine.uses_role() {
            self.cfg.role.as_deref().unwrap_or_default()
        } else {
            self.cfg.path.as_deref().unwrap_or_default()
        }
    }

    fn keys(&self) -> KeyNames {
        KeyNames {
            username: self.cfg.username_key.clone(),
            password: self.cfg.password_key.clone(),
        }
    }

    /// Runs a request; on 403 with a token that no longer works, logs in again and retries once.
    async fn with_relogin<T, F, Fut>(&self, call: F) -> Result<T, SecretError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, SecretError>>,
    {
        match call(self.session.client()).await {
            Err(SecretError::AccessDenied { .. }) if !self.session.token_valid().await => {
                tracing::info!(store = %self.session.what(), "the store token is gone; logging in again");
                self.session.login().await?;
                call(self.session.client()).await
            }
            other => other,
        }
    }

    /// Credentials from a KV secret's data (KV v1 and v2 differ only in where the version
    /// comes from).
    fn kv_credentials(
        &self,
        data: &serde_json::Value,
        version: String,
        what: &str,
    ) -> Result<Credentials, SecretError> {
        let p = payload::from_json(data, &self.keys(), what)?;
        Ok(Credentials {
            username: p.username,
            password: p.password,
            version,
            lease: None,
            overrides: p.overrides,
            next_rotation: None,
        })
    }

    async fn fetch_current(&self) -> Result<Credentials, SecretError> {
        let what = self.describe();
        let (mount, name) = (self.cfg.mount(), self.name());
        match self.cfg.engine {
            VaultEngine::Kv2 => {
                let resp: DataAnswer<Kv2Data> =
                    self.get(&format!("{mount}/data/{name}"), &what).await?;
                self.kv_credentials(
                    &resp.data.data.0,
                    format!("kv2:{}", resp.data.metadata.version),
                    &what,
                )
            }
            VaultEngine::Kv1 => {
                let resp: DataAnswer<SecretJson> =
                    self.get(&format!("{mount}/{name}"), &what).await?;
                let text = SecretText::new(resp.data.0.to_string());
                let version = content_version(text.as_bytes());
                self.kv_credentials(&resp.data.0, version, &what)
            }
            VaultEngine::Database => {
                let resp: LeasedCreds = self.get(&format!("{mount}/creds/{name}"), &what).await?;
                Ok(Credentials {
                    username: resp.data.username,
                    password: resp.data.password,
                    version: resp.lease_id.clone(),
                    lease: Some(Lease {
                        id: resp.lease_id,
                        ttl: crate::secret::store_seconds(resp.lease_duration),
                        renewable: resp.renewable,
                        issued_at: SystemTime::now(),
                    }),
                    overrides: Default::default(),
                    next_rotation: None,
                })
            }
            VaultEngine::DatabaseStatic => {
                let resp: DataAnswer<StaticCreds> = self
                    .get(&format!("{mount}/static-creds/{name}"), &what)
                    .await?;
                Ok(Credentials {
                    username: resp.data.username,
                    password: resp.data.password,
                    version: format!("static:{}", resp.data.last_vault_rotation),
                    lease: None,
                    overrides: Default::default(),
                    next_rotation: Some(
                        SystemTime::now() + crate::secret::store_seconds(resp.data.ttl),
                    ),
                })
            }
        }
    }

    /// A GET with the session's token, logging in again once if the token is gone.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<T, SecretError> {
        self.with_relogin(|client| async move { client.call(Method::GET, path, None, what).await })
            .await
    }
}

/// `data` of a KV v2 read.
#[derive(Deserialize)]
struct Kv2Data {
    data: SecretJson,
    metadata: Kv2Metadata,
}

#[derive(Deserialize)]
struct Kv2Metadata {
    version: u64,
}

/// `data` of a static role's credentials.
#[derive(Deserialize)]
struct StaticCreds {
    username: String,
    password: SecretString,
    last_vault_rotation: String,
    ttl: u64,
}

impl SecretSource for VaultSource {
    fn kind(&self) -> &'static str {
        "vault"
    }

    fn describe(&self) -> String {
        let kind = match self.cfg.engine {
            VaultEngine::Kv2 | VaultEngine::Kv1 => "",
            VaultEngine::Database => "creds/",
            VaultEngine::DatabaseStatic => "static-creds/",
        };
        format!("vault {}/{kind}{}", self.cfg.mount(), self.name())
    }

    fn fetch(&self, stage: Stage) -> BoxFuture<'_, Result<Credentials, SecretError>> {
        Box::pin(async move {
            if stage != Stage::Current {
                return Err(SecretError::Unsupported {
                    what: self.describe(),
                    detail: "Vault has no AWSPENDING/AWSPREVIOUS stages".into(),
                });
            }
            self.fetch_current().await
        })
    }

    fn revoke<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(async move {
            let what = self.describe();
            self.with_relogin(|client| {
                let body = SecretJson(serde_json::json!({ "lease_id": lease.id }));
                let what = what.clone();
                async move {
                    client
                        .request(Method::PUT, "sys/leases/revoke", Some(body), &what)
                        .await
                        .map(|_| ())
                }
            })
            .await
        })
    }
}
