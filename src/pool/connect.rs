//! Opening one server connection the way libpq would: hosts tried in order, and for each host
//! the TLS choices of its `sslmode` (`allow` tries plain first, `prefer` tries TLS first, and
//! each falls back to the other when the server refuses), and each server's kind checked
//! against `target_session_attrs` ([`super::hosts`]).

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::{CancelError, ConnectError};
use super::hosts::{HostBook, HostLease, ServerKind};
use super::BuildOptions;
use crate::config::PoolSettings;
use crate::dsn::{ConnInfo, Host, Server};
use crate::secret::Credentials;
use crate::tls::SslMode;

/// Everything needed to open a connection for one pool: fixed when the pool is built, so every
/// connection of a pool uses the same credentials and TLS files.
pub struct ConnectPlan {
    conn: ConnInfo,
    tls: Option<MakeRustlsConnect>,
    /// The same rustls configuration, for raw connections (the PostgreSQL front end's).
    tls_config: Option<Arc<rustls::ClientConfig>>,
    username: String,
    password: SecretString,
    application_name: String,
    options: Option<String>,
    connect_timeout: Duration,
    hosts: Arc<HostBook>,
}

impl ConnectPlan {
    /// `tls` is the rustls configuration built for `conn.tls` (`None` for `sslmode=disable`).
    pub fn new(
        conn: ConnInfo,
        tls: Option<Arc<rustls::ClientConfig>>,
        creds: &Credentials,
        settings: &PoolSettings,
        build: &BuildOptions,
    ) -> Self {
        let mut options: Vec<String> = conn.options.iter().cloned().collect();
        if !settings.statement_timeout.is_zero() {
            options.push(format!(
                "-c statement_timeout={}",
                settings.statement_timeout.as_millis()
            ));
        }
        ConnectPlan {
            tls: tls.as_ref().map(|c| MakeRustlsConnect::new((**c).clone())),
            tls_config: tls,
            username: creds.username.clone(),
            password: creds.password.clone(),
            application_name: build.application_name.clone(),
            options: (!options.is_empty()).then(|| options.join(" ")),
            connect_timeout: conn.connect_timeout.unwrap_or(settings.connect_timeout),
            hosts: Arc::new(HostBook::new(
                &conn.servers,
                conn.session_attrs,
                build.on_host_change.clone(),
            )),
            conn,
        }
    }

    /// The sslmode this plan honours.
    pub fn ssl_mode(&self) -> SslMode {
        self.conn.tls.mode
    }

    /// The login name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The deadline for one host.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The connection settings (hosts, database, TLS mode).
    pub fn conn(&self) -> &ConnInfo {
        &self.conn
    }

    /// The rustls configuration for the sslmode (`None` for `disable`).
    pub fn tls_config(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls_config.as_ref()
    }

    /// The password, for a raw login (the PostgreSQL front end's server connections).
    pub(crate) fn password(&self) -> &SecretString {
        &self.password
    }

    /// `application_name` of the generation's sessions.
    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    /// The `options` startup parameter (the url's, plus `statement_timeout`).
    pub fn options(&self) -> Option<&str> {
        self.options.as_deref()
    }

    /// Sends a cancel request for the statement running on the token's connection, over the
    /// same TLS settings the connection used. A cancel request is a new connection, so it
    /// gets the connect timeout: a server that does not answer must not hold up the caller.
    pub async fn cancel(&self, token: &tokio_postgres::CancelToken) -> Result<(), CancelError> {
        let send = async {
            match &self.tls {
                Some(tls) => token.cancel_query(tls.clone()).await,
                None => token.cancel_query(NoTls).await,
            }
        };
        match tokio::time::timeout(self.connect_timeout, send).await {
            Ok(result) => result.map_err(CancelError::Postgres),
            Err(_) => Err(CancelError::Timeout(self.connect_timeout)),
        }
    }

    /// The hosts of this plan and what they were last seen to be.
    pub fn hosts(&self) -> &Arc<HostBook> {
        &self.hosts
    }

    /// Tries the hosts in the book's order until one is reached whose kind the target accepts
    /// (`prefer-standby`: standbys first, then any). When none is, the error names what each
    /// host was.
    pub async fn connect(&self) -> Result<(Client, HostLease), ConnectError> {
        let mut walk = self.hosts.walk();
        while let Some(index) = walk.next_host() {
            let client = match self.connect_server(&self.conn.servers[index]).await {
                Ok(client) => client,
                Err(e) if e.is_auth() => return Err(e),
                Err(e) => {
                    let down = !e.is_server_refusal();
                    walk.missed(index, e, down);
                    continue;
                }
            };
            match server_kind(&client, self.connect_timeout).await {
                Ok(kind) => {
                    if let Some(lease) = walk.reached(index, kind) {
                        return Ok((client, lease));
                    }
                }
                Err(detail) => {
                    let server = self.hosts.label(index).to_string();
                    walk.missed(index, ConnectError::Unreachable { server, detail }, true);
                }
            }
        }
        Err(walk.finish(|wanted, tried| ConnectError::NoSuitableServer { wanted, tried }))
    }

    async fn connect_server(&self, server: &Server) -> Result<Client, ConnectError> {
        // libpq never uses TLS over a Unix socket, whatever the sslmode says.
        if matches!(server.host, Host::Unix(_)) {
            return self.attempt(server, PgSslMode::Disable).await;
        }
        match self.conn.tls.mode {
            SslMode::Disable => self.attempt(server, PgSslMode::Disable).await,
            SslMode::Allow => match self.attempt(server, PgSslMode::Disable).await {
                Err(plain) if plain.is_server_refusal() => {
                    self.attempt(server, PgSslMode::Require).await
                }
                other => other,
            },
            SslMode::Prefer => match self.attempt(server, PgSslMode::Prefer).await {
                Err(tls) if tls.is_server_refusal() || tls.is_tls_failure() => self
                    .attempt(server, PgSslMode::Disable)
                    .await
                    // When both fail, the TLS attempt's error is the one worth reading.
                    .map_err(|_plain| tls),
                other => other,
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                self.attempt(server, PgSslMode::Require).await
            }
        }
    }

    async fn attempt(&self, server: &Server, ssl: PgSslMode) -> Result<Client, ConnectError> {
        let mut cfg = tokio_postgres::Config::new();
        let host_name = match &server.host {
            Host::Tcp(h) => {
                cfg.host(h);
                h.clone()
            }
            Host::Unix(dir) => {
                cfg.host_path(dir);
                dir.display().to_string()
            }
        };
        cfg.port(server.port)
            .user(&self.username)
            .password(self.password.expose_secret())
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .ssl_mode(ssl);
        if let Some(db) = &self.conn.dbname {
            cfg.dbname(db);
        }
        if let Some(options) = &self.options {
            cfg.options(options);
        }
        let label = format!("{}:{}", server.host, server.port);
        let result = match (&self.tls, ssl) {
            (Some(tls), PgSslMode::Require | PgSslMode::Prefer) => {
                open(&cfg, tls.clone(), self.connect_timeout).await
            }
            _ => open(&cfg, NoTls, self.connect_timeout).await,
        };
        result.map_err(|e| match e {
            Opened::Driver(e) => ConnectError::classify(
                &e,
                &label,
                &host_name,
                &self.username,
                self.conn.tls.mode,
                self.connect_timeout,
            ),
            Opened::Deadline => ConnectError::Timeout {
                server: label,
                after: self.connect_timeout,
            },
        })
    }
}

enum Opened {
    Driver(tokio_postgres::Error),
    Deadline,
}

/// Connects and spawns the connection's I/O task, which ends when the client is dropped.
async fn open<T>(cfg: &tokio_postgres::Config, tls: T, deadline: Duration) -> Result<Client, Opened>
where
    T: MakeTlsConnect<Socket> + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<Socket>>::Future: Send,
{
    // tokio-postgres applies connect_timeout to the TCP connect only; this deadline covers the
    // TLS handshake and authentication too.
    let (client, connection) =
        tokio::time::timeout(deadline + Duration::from_millis(100), cfg.connect(tls))
            .await
            .map_err(|_| Opened::Deadline)?
            .map_err(Opened::Driver)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "server connection closed with an error");
        }
    });
    Ok(client)
}

/// What the server of a new connection is: the check libpq 14 makes for
/// `target_session_attrs`, made for every connection so status can show it.
async fn server_kind(client: &Client, deadline: Duration) -> Result<ServerKind, String> {
    const SQL: &str =
        "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on'";
    let row = tokio::time::timeout(deadline, client.query_one(SQL, &[]))
        .await
        .map_err(|_| format!("no answer to the server-kind check within {deadline:?}"))?
        .map_err(|e| format!("the server-kind check failed: {e}"))?;
    Ok(ServerKind {
        in_recovery: row.get(0),
        read_only: row.get(1),
    })
}
