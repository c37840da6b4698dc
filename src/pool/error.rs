//! Typed connection and pool errors, classified so a rotation can act on them: an
//! authentication failure means "fetch the secret again", a TLS failure means "fix the
//! configuration", unreachable or timeout means "retry later".

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::CertificateError;

use crate::tls::{SslMode, TlsError};

/// 28P01 (invalid password) and 28000 (invalid authorization): the login itself was refused.
pub fn is_auth_sqlstate(code: &str) -> bool {
    code == "28P01" || code == "28000"
}

/// Why one connection could not be opened. Never contains a password.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{server}: authentication failed for user \"{user}\" (SQLSTATE {code}): {message}")]
    Auth {
        server: String,
        user: String,
        code: String,
        message: String,
    },
    #[error("{server}: the server's certificate is not signed by a trusted CA; fix: point sslrootcert at the CA that signed it")]
    TlsUnknownIssuer { server: String },
    #[error("{server}: the server's certificate is not valid for host name \"{host}\"; fix: connect by a name the certificate holds, or use sslmode=verify-ca")]
    TlsNameMismatch { server: String, host: String },
    #[error("{server}: the server does not support TLS, but sslmode={mode} requires it")]
    TlsNotSupported { server: String, mode: SslMode },
    #[error("{server}: TLS failed: {detail}")]
    Tls { server: String, detail: String },
    #[error("{server}: cannot reach the server: {detail}")]
    Unreachable { server: String, detail: String },
    #[error("{server}: no connection within {after:?}")]
    Timeout { server: String, after: Duration },
    #[error("{server}: the server refused the session (SQLSTATE {code}): {message}")]
    Server {
        server: String,
        code: String,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    TlsConfig(Arc<TlsError>),
    #[error("the pool is draining and opens no new connections")]
    Draining,
    #[error("no listed server can serve target_session_attrs={wanted}: {tried}")]
    NoSuitableServer { wanted: &'static str, tried: String },
}

impl ConnectError {
    /// 28P01 / 28000: the credentials (or the role's login rights) are wrong.
    pub fn is_auth(&self) -> bool {
        matches!(self, ConnectError::Auth { .. })
    }

    /// The server answered with an error after the startup packet (libpq retries these with
    /// the other TLS choice in `allow` and `prefer` modes).
    pub(crate) fn is_server_refusal(&self) -> bool {
        matches!(
            self,
            ConnectError::Auth { .. } | ConnectError::Server { .. }
        )
    }

    /// The TLS handshake itself failed.
    pub(crate) fn is_tls_failure(&self) -> bool {
        matches!(
            self,
            ConnectError::TlsUnknownIssuer { .. }
                | ConnectError::TlsNameMismatch { .. }
                | ConnectError::Tls { .. }
        )
    }

    /// Sorts a driver error into the cases above.
    pub(crate) fn classify(
        err: &tokio_postgres::Error,
        server: &str,
        host: &str,
        user: &str,
        mode: SslMode,
        timeout: Duration,
    ) -> ConnectError {
        let server = server.to_string();
        if let Some(db) = err.as_db_error() {
            let code = db.code().code().to_string();
            let message = db.message().to_string();
            return if is_auth_sqlstate(&code) {
                ConnectError::Auth {
                    server,
                    user: user.to_string(),
                    code,
                    message,
                }
            } else {
                ConnectError::Server {
                    server,
                    code,
                    message,
                }
            };
        }
        let mut cause: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = cause {
            let rustls_error = e.downcast_ref::<rustls::Error>().or_else(|| {
                e.downcast_ref::<io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            });
            if let Some(r) = rustls_error {
                return match r {
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                        ConnectError::TlsUnknownIssuer { server }
                    }
                    rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    ) => ConnectError::TlsNameMismatch {
                        server,
                        host: host.to_string(),
                    },
                    other => ConnectError::Tls {
                        server,
                        detail: other.to_string(),
                    },
                };
            }
            if e.to_string().contains("server does not support TLS") {
                return ConnectError::TlsNotSupported { server, mode };
            }
            if let Some(io) = e.downcast_ref::<io::Error>() {
                if io.kind() == io::ErrorKind::TimedOut {
                    return ConnectError::Timeout {
                        server,
                        after: timeout,
                    };
                }
            }
            cause = e.source();
        }
        let text = err.to_string();
        if text.contains("TLS") {
            ConnectError::Tls {
                server,
                detail: text,
            }
        } else {
            ConnectError::Unreachable {
                server,
                detail: text,
            }
        }
    }
}

/// Why a pool could not be built or a connection handed out.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] TlsError),
    #[error(
        "verification failed: logged in as \"{actual}\" but the credentials are for \"{expected}\""
    )]
    WrongUser { expected: String, actual: String },
    #[error("verification failed: sslmode={0} promises an encrypted session, but pg_stat_ssl says it is not")]
    TlsNotInUse(SslMode),
    #[error("verification failed: sslmode=disable, but pg_stat_ssl says the session is encrypted")]
    TlsUnexpected,
    #[error("verification query failed: {0}")]
    VerifyQuery(String),
    /// The PostgreSQL front end's own login (`raw.rs`) failed where the pool's worked.
    #[error("verification failed: the PostgreSQL front end's login: {detail}")]
    RawLogin { detail: String, auth: bool },
    #[error("no connection free within {waited:?}{}", last_error.as_ref().map(|e| format!("; last connection error: {e}")).unwrap_or_default())]
    CheckoutTimeout {
        waited: Duration,
        last_error: Option<ConnectError>,
    },
    /// This pool was swapped out; ask the target's current generation instead.
    #[error("the pool is draining")]
    Draining,
}

impl PoolError {
    /// Whether the credentials were refused (the signal to fetch them again).
    pub fn is_auth(&self) -> bool {
        match self {
            PoolError::Connect(e) => e.is_auth(),
            PoolError::RawLogin { auth, .. } => *auth,
            PoolError::CheckoutTimeout {
                last_error: Some(e),
                ..
            } => e.is_auth(),
            _ => false,
        }
    }
}

/// Why a cancel request was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("the cancel request got no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the cancel request failed: {0}")]
    Postgres(tokio_postgres::Error),
}
