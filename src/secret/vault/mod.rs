//! HashiCorp Vault and OpenBao: KV v1/v2, and the database secrets engine's dynamic and static
//! roles, over token or AppRole auth (see [`session`]).

pub mod config;
pub mod session;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use serde::Deserialize;
use tokio::task::JoinHandle;
use vaultrs::api::kv2::requests::ReadSecretRequest;
use vaultrs::error::ClientError;

pub use config::{VaultAuth, VaultEngine, VaultSourceConfig};
pub use session::{Session, SessionStats};

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

/// A database engine answer, with the lease that vaultrs would strip.
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
    password: String,
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
        F: Fn(Arc<vaultrs::client::VaultClient>) -> Fut,
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
        let mount = self.cfg.mount().to_string();
        let name = self.name().to_string();
        let map = |e: ClientError| session::map_error(e, &what);
        match self.cfg.engine {
            VaultEngine::Kv2 => {
                let resp = self
                    .with_relogin(|client| {
                        let req = ReadSecretRequest::builder()
                            .mount(mount.clone())
                            .path(name.clone())
                            .build()
                            .expect("mount and path are set");
                        async move {
                            vaultrs::api::exec_with_result(&*client, req)
                                .await
                                .map_err(map)
                        }
                    })
                    .await?;
                self.kv_credentials(&resp.data, format!("kv2:{}", resp.metadata.version), &what)
            }
            VaultEngine::Kv1 => {
                let resp = self
                    .with_relogin(|client| {
                        let (mount, name) = (mount.clone(), name.clone());
                        async move {
                            vaultrs::kv1::get_raw(&*client, &mount, &name)
                                .await
                                .map_err(map)
                        }
                    })
                    .await?;
                let version = content_version(resp.data.to_string().as_bytes());
                self.kv_credentials(&resp.data, version, &what)
            }
            VaultEngine::Database => {
                let resp: LeasedCreds = self
                    .with_relogin(|client| {
                        let path = format!("{mount}/creds/{name}");
                        let what = what.clone();
                        async move { raw_get(&client, &path, &what).await }
                    })
                    .await?;
                Ok(Credentials {
                    username: resp.data.username,
                    password: SecretString::from(resp.data.password),
                    version: resp.lease_id.clone(),
                    lease: Some(Lease {
                        id: resp.lease_id,
                        ttl: Duration::from_secs(resp.lease_duration),
                        renewable: resp.renewable,
                        issued_at: SystemTime::now(),
                    }),
                    overrides: Default::default(),
                    next_rotation: None,
                })
            }
            VaultEngine::DatabaseStatic => {
                let resp = self
                    .with_relogin(|client| {
                        let (mount, name) = (mount.clone(), name.clone());
                        async move {
                            vaultrs::database::static_role::creds(&*client, &mount, &name)
                                .await
                                .map_err(map)
                        }
                    })
                    .await?;
                Ok(Credentials {
                    username: resp.username,
                    password: SecretString::from(resp.password),
                    version: format!("static:{}", resp.last_vault_rotation),
                    lease: None,
                    overrides: Default::default(),
                    next_rotation: Some(SystemTime::now() + Duration::from_secs(resp.ttl)),
                })
            }
        }
    }
}

/// A GET that keeps the response's lease fields (vaultrs strips them).
async fn raw_get<T: serde::de::DeserializeOwned>(
    client: &vaultrs::client::VaultClient,
    path: &str,
    what: &str,
) -> Result<T, SecretError> {
    let resp = request(client, reqwest::Method::GET, path, None, what).await?;
    resp.json::<T>().await.map_err(|_| SecretError::Malformed {
        what: what.to_string(),
        detail: "the store's answer does not have the expected shape".into(),
    })
}

async fn request(
    client: &vaultrs::client::VaultClient,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
    what: &str,
) -> Result<reqwest::Response, SecretError> {
    let base = client.settings.address.as_str().trim_end_matches('/');
    let mut req = client
        .http
        .http
        .request(method, format!("{base}/v1/{path}"))
        .header("X-Vault-Token", &client.settings.token);
    if let Some(ns) = &client.settings.namespace {
        req = req.header("X-Vault-Namespace", ns);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.map_err(|e| SecretError::Unavailable {
        what: what.to_string(),
        detail: e.without_url().to_string(),
    })?;
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Ok(resp);
    }
    #[derive(Deserialize, Default)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    let errors = resp.json::<Errors>().await.unwrap_or_default().errors;
    Err(session::map_error(
        ClientError::APIError {
            code: status,
            errors,
        },
        what,
    ))
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
                let body = serde_json::json!({ "lease_id": lease.id });
                let what = what.clone();
                async move {
                    request(
                        &client,
                        reqwest::Method::PUT,
                        "sys/leases/revoke",
                        Some(body),
                        &what,
                    )
                    .await
                    .map(|_| ())
                }
            })
            .await
        })
    }
}
