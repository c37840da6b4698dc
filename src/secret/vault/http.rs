//! The few Vault/OpenBao HTTP calls credswap makes, on reqwest with rustls: one token, the
//! namespace header, the request timeout, and errors mapped to [`SecretError`] without ever
//! including a response body that could hold data.

use crate::secret::wipe::SecretJson;
use secrecy::zeroize::Zeroizing;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::secret::SecretError;

/// Where the store is and how to talk to it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub address: String,
    pub ca_file: Option<PathBuf>,
    pub namespace: Option<String>,
    pub timeout: Duration,
}

impl Endpoint {
    /// What this endpoint is, for errors and logs.
    pub fn what(&self) -> String {
        format!("vault {}", self.address)
    }
}

/// An HTTP client holding one token (empty for the login calls). Build one per store with
/// [`VaultClient::new`], then derive the others with [`VaultClient::with_token`].
pub struct VaultClient {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    namespace: Option<String>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Vault's error body.
#[derive(Deserialize, Default)]
struct Errors {
    #[serde(default)]
    errors: Vec<String>,
}

/// Maps an HTTP status and Vault's error messages to a [`SecretError`].
pub fn status_error(status: u16, errors: &[String], what: &str) -> SecretError {
    let what = what.to_string();
    let detail = if errors.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", errors.join("; "))
    };
    match status {
        403 => SecretError::AccessDenied { what, detail },
        404 => SecretError::NotFound { what },
        429 => SecretError::Throttled { what, detail },
        400 if detail.contains("unknown") || detail.contains("not found") => {
            SecretError::NotFound { what }
        }
        400 => SecretError::Unsupported { what, detail },
        _ => SecretError::Unavailable { what, detail },
    }
}

fn malformed(what: &str) -> SecretError {
    SecretError::Malformed {
        what: what.to_string(),
        detail: "the store's answer does not have the expected shape".into(),
    }
}

impl VaultClient {
    /// A client for `endpoint` without a token (for logins; others derive from it with
    /// [`VaultClient::with_token`]). The CA file is read now.
    pub async fn new(endpoint: &Endpoint) -> Result<VaultClient, SecretError> {
        crate::tls::install_default_provider();
        let what = endpoint.what();
        let mut builder = reqwest::ClientBuilder::new()
            .tls_backend_rustls()
            .timeout(endpoint.timeout);
        if endpoint.address.starts_with("http://") {
            // No TLS: do not load the platform's roots at all.
            builder = builder.tls_certs_only(Vec::new());
        } else if let Some(path) = &endpoint.ca_file {
            let pem = tokio::fs::read(path)
                .await
                .map_err(|e| SecretError::Unsupported {
                    what: what.clone(),
                    detail: format!("cannot read ca_file {}: {e}", path.display()),
                })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                SecretError::Unsupported {
                    what: what.clone(),
                    detail: format!("ca_file {} is not PEM certificates: {e}", path.display()),
                }
            })?;
            // Pinned: only this CA, not the system's roots beside it.
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| SecretError::Unsupported {
            what,
            detail: e.without_url().to_string(),
        })?;
        Ok(VaultClient {
            http,
            base: endpoint.address.trim_end_matches('/').to_string(),
            token: SecretString::from(""),
            namespace: endpoint.namespace.clone(),
        })
    }

    /// The same endpoint with another token, sharing the HTTP client (its connections, and the
    /// CA file read once).
    pub fn with_token(&self, token: SecretString) -> VaultClient {
        VaultClient {
            http: self.http.clone(),
            base: self.base.clone(),
            token,
            namespace: self.namespace.clone(),
        }
    }

    /// The token this client sends (for tests that revoke it behind credswap's back).
    pub fn token(&self) -> &SecretString {
        &self.token
    }

    /// Sends a request to `/v1/{path}`; a non-2xx answer becomes the matching error.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<SecretJson>,
        what: &str,
    ) -> Result<reqwest::Response, SecretError> {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.base));
        let token = self.token.expose_secret();
        if !token.is_empty() {
            req = req.header("X-Vault-Token", token);
        }
        if let Some(ns) = &self.namespace {
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
        let errors = resp.json::<Errors>().await.unwrap_or_default().errors;
        Err(status_error(status, &errors, what))
    }

    /// A request whose JSON answer is read as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<SecretJson>,
        what: &str,
    ) -> Result<T, SecretError> {
        let resp = self.request(method, path, body, what).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Err(SecretError::NotFound {
                what: what.to_string(),
            });
        }
        // The answer may hold a secret: read it into a buffer that is zeroed when dropped.
        let body = resp.bytes().await.map_err(|e| SecretError::Unavailable {
            what: what.to_string(),
            detail: e.without_url().to_string(),
        })?;
        let body = Zeroizing::new(Vec::from(body));
        serde_json::from_slice(&body).map_err(|_| malformed(what))
    }
}

/// `auth` of a login or renewal answer.
#[derive(Deserialize)]
pub struct Auth {
    pub client_token: SecretString,
    pub lease_duration: u64,
    #[serde(default)]
    pub renewable: bool,
}

/// An answer with `auth`.
#[derive(Deserialize)]
pub struct AuthAnswer {
    pub auth: Auth,
}

/// `data` of `auth/token/lookup-self`.
#[derive(Deserialize)]
pub struct TokenInfo {
    pub ttl: u64,
    #[serde(default)]
    pub renewable: bool,
}

/// An answer with `data`.
#[derive(Deserialize)]
pub struct DataAnswer<T> {
    pub data: T,
}
