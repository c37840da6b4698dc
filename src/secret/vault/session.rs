//! A logged-in Vault/OpenBao session: the token, its renewal at about two thirds of its TTL,
//! and logging in again when renewal is refused or the token is gone.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

pub use super::http::Endpoint;
use super::http::{AuthAnswer, DataAnswer, TokenInfo, VaultClient};
use crate::config::sources::VaultAuth;
use crate::secret::wipe::{SecretJson, SecretText};
use crate::secret::SecretError;

/// Counters a test or status can watch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub logins: u64,
    pub renewals: u64,
    pub renewal_failures: u64,
}

#[derive(Clone, Copy, Debug)]
struct TokenClock {
    obtained: Instant,
    ttl: Duration,
    renewable: bool,
}

/// One token, kept alive.
pub struct Session {
    endpoint: Endpoint,
    auth: VaultAuth,
    /// Without a token: for logins, and the one every other client is derived from.
    anonymous: VaultClient,
    client: ArcSwap<VaultClient>,
    clock: Mutex<TokenClock>,
    /// A response-wrapped secret_id can be unwrapped once; the result is kept for re-logins.
    unwrapped_secret_id: Mutex<Option<SecretString>>,
    stats: watch::Sender<SessionStats>,
    login_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("address", &self.endpoint.address)
            .field("stats", &*self.stats.borrow())
            .finish_non_exhaustive()
    }
}

async fn read_secret_file(path: &PathBuf, what: &str) -> Result<SecretString, SecretError> {
    let text = SecretText::new(tokio::fs::read_to_string(path).await.map_err(|e| {
        SecretError::StoreAuth {
            what: what.to_string(),
            detail: format!("cannot read {}: {e}", path.display()),
        }
    })?);
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(SecretError::StoreAuth {
            what: what.to_string(),
            detail: format!("{} is empty", path.display()),
        });
    }
    Ok(SecretString::from(text))
}

impl Session {
    /// Logs in and starts nothing yet; call [`Session::keep_alive`] for renewal.
    pub async fn start(endpoint: Endpoint, auth: VaultAuth) -> Result<Arc<Session>, SecretError> {
        let anonymous = VaultClient::new(&endpoint).await?;
        let session = Arc::new(Session {
            endpoint,
            auth,
            client: ArcSwap::from_pointee(anonymous.with_token(SecretString::from(""))),
            anonymous,
            clock: Mutex::new(TokenClock {
                obtained: Instant::now(),
                ttl: Duration::ZERO,
                renewable: false,
            }),
            unwrapped_secret_id: Mutex::new(None),
            stats: watch::channel(SessionStats::default()).0,
            login_lock: tokio::sync::Mutex::new(()),
        });
        session.login().await?;
        Ok(session)
    }

    /// The current client (with the current token).
    pub fn client(&self) -> Arc<VaultClient> {
        self.client.load_full()
    }

    /// Login and renewal counters.
    pub fn stats(&self) -> watch::Receiver<SessionStats> {
        self.stats.subscribe()
    }

    /// What this session talks to, for errors.
    pub fn what(&self) -> String {
        self.endpoint.what()
    }

    /// Logs in (again): re-reads the token file, or does the AppRole login.
    pub async fn login(&self) -> Result<(), SecretError> {
        let _one_at_a_time = self.login_lock.lock().await;
        let what = self.what();
        let (client, ttl, renewable) = match &self.auth {
            VaultAuth::Token { token_file } => {
                let token = match token_file {
                    Some(path) => read_secret_file(path, &what).await?,
                    None => SecretString::from(std::env::var("VAULT_TOKEN").map_err(|_| {
                        SecretError::StoreAuth {
                            what: what.clone(),
                            detail: "no token: set auth.token_file, or VAULT_TOKEN".into(),
                        }
                    })?),
                };
                let client = self.anonymous.with_token(token);
                let info: DataAnswer<TokenInfo> = client
                    .call(Method::GET, "auth/token/lookup-self", None, &what)
                    .await
                    .map_err(auth_failure)?;
                (
                    client,
                    crate::secret::store_seconds(info.data.ttl),
                    info.data.renewable,
                )
            }
            VaultAuth::Approle {
                role_id_file,
                secret_id_file,
                secret_id_wrapped,
                mount,
            } => {
                let role_id = read_secret_file(role_id_file, &what).await?;
                let secret_id = self.secret_id(secret_id_file, *secret_id_wrapped).await?;
                let body = SecretJson(json!({
                    "role_id": role_id.expose_secret(),
                    "secret_id": secret_id.expose_secret(),
                }));
                let info: AuthAnswer = self
                    .anonymous
                    .call(
                        Method::POST,
                        &format!("auth/{mount}/login"),
                        Some(body),
                        &what,
                    )
                    .await
                    .map_err(auth_failure)?;
                (
                    self.anonymous.with_token(info.auth.client_token),
                    crate::secret::store_seconds(info.auth.lease_duration),
                    info.auth.renewable,
                )
            }
        };
        self.client.store(Arc::new(client));
        *self.clock.lock().expect("never poisoned") = TokenClock {
            obtained: Instant::now(),
            ttl,
            renewable,
        };
        self.stats.send_modify(|s| s.logins += 1);
        tracing::info!(store = %what, ttl = ?ttl, renewable, "logged in to the secret store");
        Ok(())
    }

    async fn secret_id(&self, file: &PathBuf, wrapped: bool) -> Result<SecretString, SecretError> {
        if !wrapped {
            return read_secret_file(file, &self.what()).await;
        }
        if let Some(id) = self
            .unwrapped_secret_id
            .lock()
            .expect("never poisoned")
            .clone()
        {
            return Ok(id);
        }
        let wrapping_token = read_secret_file(file, &self.what()).await?;
        let answer: DataAnswer<SecretJson> = self
            .anonymous
            .with_token(wrapping_token)
            .call(Method::POST, "sys/wrapping/unwrap", None, &self.what())
            .await
            .map_err(auth_failure)?;
        let id = answer
            .data
            .0
            .get("secret_id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| SecretError::StoreAuth {
                what: self.what(),
                detail: "the wrapped response holds no secret_id".into(),
            })?;
        let id = SecretString::from(id.to_string());
        *self.unwrapped_secret_id.lock().expect("never poisoned") = Some(id.clone());
        Ok(id)
    }

    /// Whether the current token still works (after a 403, tells "denied" from "token gone").
    pub async fn token_valid(&self) -> bool {
        self.client()
            .request(Method::GET, "auth/token/lookup-self", None, &self.what())
            .await
            .is_ok()
    }

    async fn renew(&self) -> Result<(), SecretError> {
        let info: AuthAnswer = self
            .client()
            .call(
                Method::POST,
                "auth/token/renew-self",
                Some(SecretJson(json!({}))),
                &self.what(),
            )
            .await?;
        *self.clock.lock().expect("never poisoned") = TokenClock {
            obtained: Instant::now(),
            ttl: crate::secret::store_seconds(info.auth.lease_duration),
            renewable: info.auth.renewable,
        };
        self.stats.send_modify(|s| s.renewals += 1);
        tracing::debug!(store = %self.what(), ttl = info.auth.lease_duration, "renewed the store token");
        Ok(())
    }

    /// Keeps the token alive until the session is dropped: renew at two thirds of the TTL,
    /// log in again when renewal is refused or the token cannot be renewed.
    pub fn keep_alive(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Session> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failures: u32 = 0;
            loop {
                let Some(clock) = weak
                    .upgrade()
                    .map(|s| *s.clock.lock().expect("never poisoned"))
                else {
                    return;
                };
                if clock.ttl.is_zero() {
                    return; // a token that never expires (e.g. a root token)
                }
                let wait = if failures == 0 {
                    clock.ttl * 2 / 3
                } else {
                    (clock.ttl / 10).clamp(Duration::from_millis(200), Duration::from_secs(30))
                };
                tokio::time::sleep_until(clock.obtained + wait).await;
                let Some(session) = weak.upgrade() else {
                    return;
                };
                let renewed = if clock.renewable {
                    session.renew().await
                } else {
                    Err(SecretError::StoreAuth {
                        what: session.what(),
                        detail: "the token is not renewable".into(),
                    })
                };
                let result = match renewed {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        session.stats.send_modify(|s| s.renewal_failures += 1);
                        tracing::info!(store = %session.what(), error = %e, "token renewal refused; logging in again");
                        session.login().await
                    }
                };
                match result {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(store = %session.what(), error = %e, "could not keep the store token alive");
                        // Move the clock so the retry waits a tenth of the TTL, not until 2/3.
                        session.clock.lock().expect("never poisoned").obtained = Instant::now();
                    }
                }
            }
        })
    }
}

fn auth_failure(e: SecretError) -> SecretError {
    match e {
        SecretError::AccessDenied { what, detail } | SecretError::Unsupported { what, detail } => {
            SecretError::StoreAuth { what, detail }
        }
        SecretError::NotFound { what } => SecretError::StoreAuth {
            what,
            detail: "login path not found (is the auth method enabled and the mount right?)".into(),
        },
        other => other,
    }
}
