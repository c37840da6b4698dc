//! Raw server connections for the PostgreSQL front end: the generation's hosts, its sslmode
//! through the same rustls configuration as its pool, and a login with its credentials
//! (SCRAM-SHA-256, MD5 or cleartext, by `postgres-protocol`). What comes back is the byte stream
//! itself, ready for forwarding, with the server's parameters and its cancel key. It lives
//! beside the pool's own login (`connect.rs`, through tokio-postgres, which does not hand its
//! stream back) because a generation is verified through both before it is swapped in.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::dsn::Host;
use crate::pool::hosts::{HostLease, HostRef, ServerKind};
use crate::pool::{ConnectPlan, PoolError};
use crate::tls::SslMode;

/// A TCP stream, encrypted or not.
pub enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl ServerStream {
    /// The TCP socket under any TLS.
    fn tcp(&self) -> &TcpStream {
        match self {
            ServerStream::Plain(s) => s,
            ServerStream::Tls(s) => s.get_ref().0,
        }
    }

    /// A second handle on the socket, to shut it down from outside: `None` if the process is
    /// out of file descriptors (the connection then just is not watched).
    fn second_handle(&self) -> Option<std::net::TcpStream> {
        use std::os::fd::AsFd;
        let fd = self.tcp().as_fd().try_clone_to_owned().ok()?;
        Some(std::net::TcpStream::from(fd))
    }
}

/// Writes all of `buf` to a server stream and flushes it. A TLS stream accepts bytes into
/// rustls and returns once they are taken even when the socket would block, so the last
/// records of a write can wait in rustls until the next write or a flush: with nothing more to
/// send (a large `Bind`, then the client waits for the answer) the server waits for the rest
/// of the message and the session hangs. Every write to a server goes through here.
pub async fn send<W: AsyncWrite + Unpin>(stream: &mut W, buf: &[u8]) -> std::io::Result<()> {
    stream.write_all(buf).await?;
    stream.flush().await
}

/// Where a session's server connection is, for cancel requests: its address, whether it used
/// TLS (a cancel goes the same way) and the server's key for it.
#[derive(Clone)]
pub struct ServerKey {
    pub addr: (String, u16),
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub pid: i32,
    pub secret: i32,
    pub connect_timeout: Duration,
    /// Its host in the generation's book: a cancel that cannot reach it marks it unreachable.
    pub host: Option<HostRef>,
}

/// A logged-in server connection.
pub struct ServerConnection {
    pub stream: ServerStream,
    /// The server's `ParameterStatus` messages, as sent (forwarded to the client unchanged).
    pub parameter_status: BytesMut,
    pub key: ServerKey,
    /// Bytes the server sent after its `ReadyForQuery` already (none, normally).
    pub leftover: BytesMut,
    /// The host it is on (set once the server's kind was accepted).
    pub host: Option<HostLease>,
}

impl ServerConnection {
    /// Whether this connection's host was found gone or changed since it was opened: it is
    /// closed rather than lent again.
    pub fn is_stale(&self) -> bool {
        self.host.as_ref().is_some_and(HostLease::is_stale)
    }

    /// Whether an idle connection still looks open: nothing has arrived on it (a server that
    /// shuts down says so, then closes). Polled once, without waiting.
    pub fn looks_idle(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut self.stream).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }
}

/// Why no server connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The server refused the session: its own `ErrorResponse`, to forward as it is.
    #[error("the server refused the session (SQLSTATE {code}): {message}")]
    Refused {
        code: String,
        message: String,
        frame: bytes::Bytes,
    },
    #[error("{server}: {detail}")]
    Unreachable { server: String, detail: String },
    #[error("{server}: the server does not support TLS, but sslmode={mode} requires it")]
    NoTls { server: String, mode: SslMode },
    #[error("{server}: TLS failed: {detail}")]
    Tls { server: String, detail: String },
    #[error("{server}: no connection within {after:?}")]
    Timeout { server: String, after: Duration },
    #[error(
        "{server}: the server asked for an authentication method credswap does not use ({what})"
    )]
    UnsupportedAuth { server: String, what: &'static str },
    #[error("{server}: protocol error during login: {detail}")]
    Protocol { server: String, detail: String },
    #[error("no listed server can serve target_session_attrs={wanted}: {tried}")]
    NoSuitableServer { wanted: &'static str, tried: String },
    #[error("{server}: the PostgreSQL front end connects over TCP only")]
    TcpOnly { server: String },
}

impl ServerError {
    /// 28P01 / 28000: the generation's credentials were refused.
    pub fn is_auth(&self) -> bool {
        matches!(self, ServerError::Refused { code, .. } if crate::pool::is_auth_sqlstate(code))
    }

    /// A server that is starting, stopping or recovering (`57P03`, `57P01`): another listed
    /// host may serve, or this one shortly.
    fn is_not_now(&self) -> bool {
        matches!(self, ServerError::Refused { code, .. } if code == "57P03" || code == "57P01")
    }

    /// Worth another try while the caller can wait: nothing listed serves now, but a server
    /// coming back or a promotion would change that. A refusal of the login itself is final.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ServerError::Unreachable { .. }
                | ServerError::Timeout { .. }
                | ServerError::NoSuitableServer { .. }
        ) || self.is_not_now()
    }
}

/// Opens a server connection with the plan's credentials, trying its hosts in the order of
/// its host book until one is reached whose kind the target accepts (`prefer-standby`:
/// standbys first, then any). `params` are the client's startup parameters to pass on
/// (`application_name`, `options`, ...).
pub async fn connect(
    plan: &ConnectPlan,
    params: &[(String, String)],
) -> Result<ServerConnection, ServerError> {
    let mut walk = plan.hosts().walk();
    while let Some(index) = walk.next_host() {
        let (mut conn, kind) = match reach(plan, index, params).await {
            Ok(reached) => reached,
            Err(e) if e.is_not_now() => {
                walk.missed(index, e, false);
                continue;
            }
            Err(e @ ServerError::Refused { .. }) => return Err(e),
            Err(e @ ServerError::TcpOnly { .. }) => {
                walk.missed(index, e, false);
                continue;
            }
            Err(e) => {
                walk.missed(index, e, true);
                continue;
            }
        };
        match walk.reached(index, kind) {
            Some(mut lease) => {
                if let Some(socket) = conn.stream.second_handle() {
                    lease.watch_socket(socket);
                }
                conn.key.host = Some(lease.host_ref());
                conn.host = Some(lease);
                return Ok(conn);
            }
            None => terminate(&mut conn.stream).await,
        }
    }
    Err(walk.finish(|wanted, tried| ServerError::NoSuitableServer { wanted, tried }))
}

/// Logs in to host `index` of the plan and learns what its server is, each within
/// `connect_timeout`.
async fn reach(
    plan: &ConnectPlan,
    index: usize,
    params: &[(String, String)],
) -> Result<(ServerConnection, ServerKind), ServerError> {
    let server = &plan.conn().servers[index];
    let Host::Tcp(host) = &server.host else {
        return Err(ServerError::TcpOnly {
            server: server.host.to_string(),
        });
    };
    let label = plan.hosts().label(index);
    let deadline = plan.connect_timeout();
    let mut conn = tokio::time::timeout(
        deadline,
        connect_host(plan, host, server.port, params, label),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ServerError::Timeout {
            server: label.to_string(),
            after: deadline,
        })
    })?;
    let kind = kind_of(&mut conn, deadline).await?;
    Ok((conn, kind))
}

/// Logs in to host `index` of the plan once, only to see what its server is now: a server of
/// another kind than before (fenced, demoted) makes the book leave its connections, and
/// session-mode sessions on it end at their next idle point.
pub async fn probe(plan: &ConnectPlan, index: usize) {
    if let Ok((mut conn, kind)) = reach(plan, index, &[]).await {
        terminate(&mut conn.stream).await;
        drop(
            plan.hosts()
                .reached(index, kind, crate::pool::hosts::Pass::Only),
        );
    }
}

/// [`connect`], tried again with backoff while no listed server can serve (all unreachable,
/// or none of the wanted kind: a promotion under way) and there is time until `by`. Never
/// waits past `by`.
pub async fn connect_until(
    plan: &ConnectPlan,
    params: &[(String, String)],
    by: std::time::Instant,
) -> Result<ServerConnection, ServerError> {
    let mut pause = Duration::from_millis(50);
    loop {
        let left = by.saturating_duration_since(std::time::Instant::now());
        let result = tokio::time::timeout(left, connect(plan, params))
            .await
            .unwrap_or_else(|_| {
                Err(ServerError::Timeout {
                    server: plan
                        .conn()
                        .servers
                        .iter()
                        .map(|s| format!("{}:{}", s.host, s.port))
                        .collect::<Vec<_>>()
                        .join(","),
                    after: left,
                })
            });
        match result {
            Err(e) if e.is_transient() && std::time::Instant::now() + pause < by => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// What the server of a new connection is. PostgreSQL 14 and later report both at login;
/// older servers are asked.
async fn kind_of(conn: &mut ServerConnection, within: Duration) -> Result<ServerKind, ServerError> {
    let status = &conn.parameter_status;
    if let (Some(standby), Some(read_only)) = (
        reported(status, "in_hot_standby"),
        reported(status, "default_transaction_read_only"),
    ) {
        return Ok(ServerKind {
            in_recovery: standby == "on",
            read_only: read_only == "on",
        });
    }
    let row = first_row(
        conn,
        "SELECT pg_is_in_recovery()::text, current_setting('default_transaction_read_only')",
        within,
    )
    .await
    .map_err(|e| ServerError::Unreachable {
        server: format!("{}:{}", conn.key.addr.0, conn.key.addr.1),
        detail: format!("the server-kind check failed: {e}"),
    })?;
    Ok(ServerKind {
        in_recovery: row.first().is_some_and(|v| v == "true"),
        read_only: row.get(1).is_some_and(|v| v == "on"),
    })
}

/// Connects to `host` and negotiates TLS as the sslmode says.
pub async fn open(
    host: &str,
    port: u16,
    mode: SslMode,
    tls: Option<&Arc<rustls::ClientConfig>>,
    label: &str,
) -> Result<ServerStream, ServerError> {
    let unreachable = |e: std::io::Error| ServerError::Unreachable {
        server: label.to_string(),
        detail: format!("cannot reach the server: {e}"),
    };
    let mut tcp = TcpStream::connect((host, port))
        .await
        .map_err(unreachable)?;
    let _ = tcp.set_nodelay(true);
    let Some(config) = tls.filter(|_| mode != SslMode::Disable) else {
        return Ok(ServerStream::Plain(tcp));
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(unreachable)?;
    let answer = tcp.read_u8().await.map_err(unreachable)?;
    if answer != b'S' {
        return match mode {
            // allow and prefer go on in plaintext when the server has no TLS.
            SslMode::Allow | SslMode::Prefer => Ok(ServerStream::Plain(tcp)),
            _ => Err(ServerError::NoTls {
                server: label.to_string(),
                mode,
            }),
        };
    }
    let name =
        rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| ServerError::Tls {
            server: label.to_string(),
            detail: format!("invalid server name: {e}"),
        })?;
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| ServerError::Tls {
            server: label.to_string(),
            detail: e.to_string(),
        })?;
    Ok(ServerStream::Tls(Box::new(stream)))
}

async fn connect_host(
    plan: &ConnectPlan,
    host: &str,
    port: u16,
    params: &[(String, String)],
    label: &str,
) -> Result<ServerConnection, ServerError> {
    let mode = plan.conn().tls.mode;
    let mut stream = open(host, port, mode, plan.tls_config(), label).await?;
    let tls = matches!(stream, ServerStream::Tls(_)).then(|| {
        plan.tls_config()
            .expect("a TLS stream came from a TLS configuration")
            .clone()
    });
    let protocol = |detail: String| ServerError::Protocol {
        server: label.to_string(),
        detail,
    };
    let io = |e: std::io::Error| ServerError::Unreachable {
        server: label.to_string(),
        detail: format!("connection lost during login: {e}"),
    };

    // Startup: our user and database; the client's parameters, with our options first so the
    // client's own `-c` settings win where they overlap.
    let mut options = plan.options().map(str::to_string);
    let mut startup: Vec<(&str, &str)> = vec![("user", plan.username())];
    if let Some(db) = &plan.conn().dbname {
        startup.push(("database", db.as_str()));
    }
    let mut has_app_name = false;
    for (k, v) in params {
        match k.as_str() {
            "user" | "database" | "replication" => {}
            "options" => {
                options = Some(match options {
                    Some(ours) => format!("{ours} {v}"),
                    None => v.clone(),
                })
            }
            _ => {
                has_app_name |= k == "application_name";
                startup.push((k.as_str(), v.as_str()));
            }
        }
    }
    if !has_app_name {
        startup.push(("application_name", plan.application_name()));
    }
    if let Some(o) = &options {
        startup.push(("options", o.as_str()));
    }
    let mut buf = BytesMut::new();
    frontend::startup_message(startup.iter().copied(), &mut buf)
        .map_err(|e| protocol(e.to_string()))?;
    send(&mut stream, &buf).await.map_err(io)?;

    let mut read = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramSha256> = None;
    let mut parameter_status = BytesMut::new();
    let mut key = None;
    loop {
        let (frame, message) = next_message(&mut stream, &mut read).await.map_err(io)?;
        let message = message.map_err(|e| protocol(e.to_string()))?;
        buf.clear();
        match message {
            backend::Message::AuthenticationOk => {}
            backend::Message::AuthenticationCleartextPassword => {
                frontend::password_message(plan.password().expose_secret().as_bytes(), &mut buf)
                    .map_err(|e| protocol(e.to_string()))?;
            }
            backend::Message::AuthenticationMd5Password(body) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    plan.username().as_bytes(),
                    plan.password().expose_secret().as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut buf)
                    .map_err(|e| protocol(e.to_string()))?;
            }
            backend::Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut scram_offered = false;
                while let Some(m) = fallible_iterator::FallibleIterator::next(&mut mechanisms)
                    .map_err(|e| protocol(e.to_string()))?
                {
                    scram_offered |= m == SCRAM_SHA_256;
                }
                if !scram_offered {
                    return Err(ServerError::UnsupportedAuth {
                        server: label.to_string(),
                        what: "a SASL mechanism other than SCRAM-SHA-256",
                    });
                }
                let s = ScramSha256::new(
                    plan.password().expose_secret().as_bytes(),
                    ChannelBinding::unsupported(),
                );
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut buf)
                    .map_err(|e| protocol(e.to_string()))?;
                scram = Some(s);
            }
            backend::Message::AuthenticationSaslContinue(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| protocol("SASL continue before SASL start".into()))?;
                s.update(body.data()).map_err(|e| protocol(e.to_string()))?;
                frontend::sasl_response(s.message(), &mut buf)
                    .map_err(|e| protocol(e.to_string()))?;
            }
            backend::Message::AuthenticationSaslFinal(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| protocol("SASL final before SASL start".into()))?;
                s.finish(body.data())
                    .map_err(|e| protocol(format!("the server's SCRAM proof is wrong: {e}")))?;
            }
            backend::Message::AuthenticationGss
            | backend::Message::AuthenticationSspi
            | backend::Message::AuthenticationKerberosV5
            | backend::Message::AuthenticationScmCredential
            | backend::Message::AuthenticationGssContinue(_) => {
                return Err(ServerError::UnsupportedAuth {
                    server: label.to_string(),
                    what: "GSSAPI, SSPI or Kerberos",
                })
            }
            backend::Message::ParameterStatus(_) => parameter_status.extend_from_slice(&frame),
            backend::Message::BackendKeyData(body) => {
                key = Some((body.process_id(), body.secret_key()))
            }
            backend::Message::NoticeResponse(_) => {}
            backend::Message::ErrorResponse(_) => {
                let (code, message) = error_fields(&frame[5..]);
                return Err(ServerError::Refused {
                    code,
                    message,
                    frame: frame.freeze(),
                });
            }
            backend::Message::ReadyForQuery(_) => {
                let (pid, secret) =
                    key.ok_or_else(|| protocol("no BackendKeyData before ReadyForQuery".into()))?;
                return Ok(ServerConnection {
                    stream,
                    parameter_status,
                    key: ServerKey {
                        addr: (host.to_string(), port),
                        tls,
                        pid,
                        secret,
                        connect_timeout: plan.connect_timeout(),
                        host: None,
                    },
                    leftover: read,
                    host: None,
                });
            }
            _ => return Err(protocol("an unexpected message during login".into())),
        }
        if !buf.is_empty() {
            send(&mut stream, &buf).await.map_err(io)?;
        }
    }
}

/// The next whole message of the login phase: its bytes, and the message parsed.
async fn next_message(
    stream: &mut ServerStream,
    read: &mut BytesMut,
) -> std::io::Result<(BytesMut, std::io::Result<backend::Message>)> {
    /// Login messages are small; a server sending more is not one.
    const MAX_LOGIN_MESSAGE: usize = 1 << 20;
    loop {
        if let Some(header) = backend::Header::parse(read)? {
            let total = header.len() as usize + 1;
            if total > MAX_LOGIN_MESSAGE {
                return Err(std::io::Error::other("a login message over 1 MiB"));
            }
            if read.len() >= total {
                let frame = read.split_to(total);
                let mut copy = frame.clone();
                let parsed = backend::Message::parse(&mut copy)
                    .and_then(|m| m.ok_or_else(|| std::io::Error::other("incomplete message")));
                return Ok((frame, parsed));
            }
        }
        if stream.read_buf(read).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Sends a cancel request for the server session `key` names, over the same TLS it used. A
/// host it cannot reach is marked unreachable in its generation's book.
pub async fn cancel(key: &ServerKey) -> Result<(), ServerError> {
    let label = format!("{}:{}", key.addr.0, key.addr.1);
    let send = async {
        let mode = if key.tls.is_some() {
            SslMode::Require
        } else {
            SslMode::Disable
        };
        let mut stream = open(&key.addr.0, key.addr.1, mode, key.tls.as_ref(), &label).await?;
        let mut buf = BytesMut::new();
        frontend::cancel_request(key.pid, key.secret, &mut buf);
        let io = |e: std::io::Error| ServerError::Unreachable {
            server: label.clone(),
            detail: e.to_string(),
        };
        send(&mut stream, &buf).await.map_err(io)?;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 1];
        let _ = stream.read(&mut sink).await;
        Ok(())
    };
    let result = match tokio::time::timeout(key.connect_timeout, send).await {
        Ok(r) => r,
        Err(_) => Err(ServerError::Timeout {
            server: label,
            after: key.connect_timeout,
        }),
    };
    // A host a cancel cannot reach is taken as gone (black-holed): nothing is left waiting on
    // it, and new connections go elsewhere.
    if let (Err(e), Some(host)) = (&result, &key.host) {
        host.unreachable(&e.to_string());
    }
    result
}

/// Resets a connection for its next client with `DISCARD ALL` (no transaction can be open:
/// the client left at an idle point): settings back to the login's values, temporary tables,
/// prepared statements, cursors, listens and advisory locks gone. True only for a clean, idle
/// answer within `within` and nothing after it; anything else means the connection is closed.
pub async fn reset(conn: &mut ServerConnection, within: Duration) -> bool {
    run_quietly(conn, "DISCARD ALL", within).await.is_ok()
}

/// Why a statement credswap ran for itself failed.
#[derive(Debug, thiserror::Error)]
pub enum QuietError {
    #[error("the server refused it (SQLSTATE {code}): {message}")]
    Server { code: String, message: String },
    #[error("the connection broke or did not answer in time")]
    Broken,
}

/// Runs `sql` for credswap itself on an idle connection; no answer reaches a client. The
/// `ParameterStatus` messages it produced come back (name, value), to keep track of the
/// session's reported parameters.
pub async fn run_quietly(
    conn: &mut ServerConnection,
    sql: &str,
    within: Duration,
) -> Result<Vec<(String, String)>, QuietError> {
    run_for_self(conn, sql, within, |_| {}).await
}

/// What [`reset_session`] runs: everything `DISCARD ALL` does (PostgreSQL's own list: cursors,
/// session authorization and role, every setting, listens, advisory locks, temporary objects,
/// sequence state) but `DEALLOCATE ALL`, so the prepared statements credswap shares survive;
/// then counts the prepared statements left: made with SQL (none should be), and all. Every
/// name is schema-qualified: the session's `search_path` is the client's until `RESET ALL`.
/// Plans stay cached (`DISCARD PLANS` would make every shared statement plan again).
const RESET_SESSION: &str = "CLOSE ALL; RESET SESSION AUTHORIZATION; RESET ALL; UNLISTEN *; \
    DISCARD TEMP; DISCARD SEQUENCES; SELECT pg_catalog.pg_advisory_unlock_all(), \
    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql), \
    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements)";

/// A connection brought back to its login state.
pub struct SessionReset {
    /// The `ParameterStatus` values it reported on the way (name, value).
    pub status: Vec<(String, String)>,
    /// Prepared statements left on it: made with SQL `PREPARE`, and all.
    pub from_sql: u64,
    pub prepared: u64,
}

/// Resets an idle transaction-mode connection ([`RESET_SESSION`]); `forget` drops its
/// prepared statements too (`DEALLOCATE ALL`), and `then` (SQL, possibly empty) runs after it in
/// the same round trip. Any error fails: the caller closes the connection. Read without
/// `postgres-protocol`'s parser: the answer is a dozen small messages, of which four kinds
/// matter, and the parser's copies were a third of the reset's cost.
pub async fn reset_session(
    conn: &mut ServerConnection,
    forget: bool,
    then: &str,
    within: Duration,
) -> Result<SessionReset, QuietError> {
    let mut sql = String::with_capacity(RESET_SESSION.len() + then.len() + 20);
    if forget {
        sql.push_str("DEALLOCATE ALL; ");
    }
    sql.push_str(RESET_SESSION);
    if !then.is_empty() {
        sql.push_str("; ");
        sql.push_str(then);
    }
    let work = async {
        let mut buf = BytesMut::with_capacity(sql.len() + 6);
        frontend::query(&sql, &mut buf)?;
        send(&mut conn.stream, &buf).await?;
        buf.clear();
        let mut reset = SessionReset {
            status: Vec::new(),
            from_sql: 0,
            prepared: 0,
        };
        let (mut counts, mut failed) = (None, None);
        loop {
            while buf.len() >= 5 {
                let len = u32::from_be_bytes(buf[1..5].try_into().expect("four bytes")) as usize;
                if !(4..=1 << 20).contains(&len) {
                    return Err(std::io::Error::other("a malformed answer to a reset"));
                }
                if buf.len() < len + 1 {
                    break;
                }
                let m = buf.split_to(len + 1);
                let body = &m[5..];
                match m[0] {
                    b'E' => {
                        let (code, message) = error_fields(body);
                        failed = Some(QuietError::Server { code, message });
                    }
                    b'S' => {
                        let mut fields = body.split(|b| *b == 0);
                        if let (Some(n), Some(v)) = (fields.next(), fields.next()) {
                            reset.status.push((
                                String::from_utf8_lossy(n).into_owned(),
                                String::from_utf8_lossy(v).into_owned(),
                            ));
                        }
                    }
                    b'D' => counts = data_row_numbers(body),
                    b'Z' => {
                        return Ok(match (failed, counts) {
                            (Some(e), _) => Err(e),
                            (None, Some((from_sql, prepared)))
                                if body.first() == Some(&b'I') && buf.is_empty() =>
                            {
                                reset.from_sql = from_sql;
                                reset.prepared = prepared;
                                Ok(reset)
                            }
                            _ => Err(QuietError::Broken),
                        });
                    }
                    _ => {}
                }
            }
            if conn.stream.read_buf(&mut buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    };
    match tokio::time::timeout(within, work).await {
        Ok(Ok(result)) => result,
        _ => Err(QuietError::Broken),
    }
}

/// The SQLSTATE and message of an `ErrorResponse` body (its fields).
fn error_fields(mut fields: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    while let Some((&kind, rest)) = fields.split_first() {
        let Some(end) = rest.iter().position(|b| *b == 0) else {
            break;
        };
        match kind {
            b'C' => code = String::from_utf8_lossy(&rest[..end]).into_owned(),
            b'M' => message = String::from_utf8_lossy(&rest[..end]).into_owned(),
            _ => {}
        }
        fields = &rest[end + 1..];
    }
    (code, message)
}

/// The second and third columns of a `DataRow` body, as numbers.
fn data_row_numbers(body: &[u8]) -> Option<(u64, u64)> {
    let mut at = 2;
    let mut columns = Vec::with_capacity(3);
    for _ in 0..u16::from_be_bytes(body.get(..2)?.try_into().ok()?) {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        let value = if len < 0 {
            None
        } else {
            let v = body.get(at..at + len as usize)?;
            at += len as usize;
            std::str::from_utf8(v).ok()?.parse::<u64>().ok()
        };
        columns.push(value);
    }
    Some((columns.get(1).copied()??, columns.get(2).copied()??))
}

/// Whether the server of an idle connection can still take writes (after it answered
/// `25006`; see [`crate::pool::hosts::STILL_WRITABLE_SQL`]). No answer counts as no.
pub async fn still_writable(conn: &mut ServerConnection, within: Duration) -> bool {
    let row = first_row(conn, crate::pool::hosts::STILL_WRITABLE_SQL, within).await;
    matches!(row.as_deref(), Ok([v]) if v == "t")
}

/// The text columns of the first row `sql` returns, run for credswap itself on an idle
/// connection.
async fn first_row(
    conn: &mut ServerConnection,
    sql: &str,
    within: Duration,
) -> Result<Vec<String>, QuietError> {
    let mut first = None;
    run_for_self(conn, sql, within, |row| {
        if first.is_none() {
            let buffer = row.buffer();
            let mut values = Vec::new();
            let mut ranges = row.ranges();
            while let Ok(Some(r)) = fallible_iterator::FallibleIterator::next(&mut ranges) {
                values.push(
                    r.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())
                        .unwrap_or_default(),
                );
            }
            first = Some(values);
        }
    })
    .await?;
    first.ok_or(QuietError::Broken)
}

/// Sends `sql` as a simple query and reads its answers up to `ReadyForQuery`, handing each
/// row to `row`; the `ParameterStatus` messages it produced come back. An error, an answer not
/// idle, anything after it, or no answer within `within` fails.
async fn run_for_self(
    conn: &mut ServerConnection,
    sql: &str,
    within: Duration,
    mut row: impl FnMut(&backend::DataRowBody),
) -> Result<Vec<(String, String)>, QuietError> {
    let work = async {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf)?;
        send(&mut conn.stream, &buf).await?;
        let mut read = BytesMut::new();
        let mut status = Vec::new();
        let mut failed = None;
        loop {
            let (frame, message) = next_message(&mut conn.stream, &mut read).await?;
            match message? {
                backend::Message::ErrorResponse(_) => {
                    let (code, message) = error_fields(&frame[5..]);
                    failed = Some(QuietError::Server { code, message });
                }
                backend::Message::ParameterStatus(p) => {
                    if let (Ok(name), Ok(value)) = (p.name(), p.value()) {
                        status.push((name.to_string(), value.to_string()));
                    }
                }
                backend::Message::DataRow(body) => row(&body),
                backend::Message::ReadyForQuery(r) => {
                    return Ok::<_, std::io::Error>(match failed {
                        Some(e) => Err(e),
                        None if r.status() == b'I' && read.is_empty() => Ok(status),
                        None => Err(QuietError::Broken),
                    })
                }
                // CommandComplete, notices, and notifications that arrived before an UNLISTEN.
                _ => {}
            }
        }
    };
    match tokio::time::timeout(within, work).await {
        Ok(Ok(result)) => result,
        _ => Err(QuietError::Broken),
    }
}

/// A parameter the server reported at login, from its `ParameterStatus` messages.
pub fn reported<'a>(status: &'a [u8], name: &str) -> Option<&'a str> {
    let mut rest = status;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().expect("four bytes")) as usize;
        let (frame, next) = rest.split_at((len + 1).min(rest.len()));
        rest = next;
        let body = frame.get(5..)?;
        let mut fields = body.split(|b| *b == 0);
        if let (Some(key), Some(value)) = (fields.next(), fields.next()) {
            if key == name.as_bytes() {
                return std::str::from_utf8(value).ok();
            }
        }
    }
    None
}

/// Proves the front end's login path with a new generation's credentials before it is swapped
/// in: a raw login (the same hosts, sslmode and credentials), as the expected user.
pub async fn verify(plan: &ConnectPlan) -> Result<(), PoolError> {
    let mut conn = connect(plan, &[]).await.map_err(|e| PoolError::RawLogin {
        auth: e.is_auth(),
        detail: e.to_string(),
    })?;
    let user = reported(&conn.parameter_status, "session_authorization").map(str::to_string);
    terminate(&mut conn.stream).await;
    match user {
        Some(u) if u == plan.username() => Ok(()),
        Some(actual) => Err(PoolError::WrongUser {
            expected: plan.username().to_string(),
            actual,
        }),
        None => Err(PoolError::RawLogin {
            auth: false,
            detail: "the server did not report session_authorization".into(),
        }),
    }
}

/// Leaves the session politely: a `Terminate` message, then the connection closes.
pub async fn terminate(stream: &mut ServerStream) {
    let mut buf = BytesMut::new();
    frontend::terminate(&mut buf);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(buf.chunk()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::reported;

    #[test]
    fn reported_parameters_are_found_by_name() {
        let mut status = Vec::new();
        for (k, v) in [
            ("server_version", "15.18"),
            ("session_authorization", "app"),
        ] {
            let body = [k.as_bytes(), b"\0", v.as_bytes(), b"\0"].concat();
            status.push(b'S');
            status.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            status.extend_from_slice(&body);
        }
        assert_eq!(reported(&status, "session_authorization"), Some("app"));
        assert_eq!(reported(&status, "server_version"), Some("15.18"));
        assert_eq!(reported(&status, "TimeZone"), None);
        assert_eq!(
            reported(&status[..7], "session_authorization"),
            None,
            "cut short"
        );
    }
}
