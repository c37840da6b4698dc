//! One client connection, from its startup packet to its end. Where a PostgreSQL request goes:
//! startup (SSL and GSS requests answered `N`, cancel requests handed to [`super::cancel`]),
//! the peer checked against the target's allow-lists, a place among the target's sessions
//! (`pool.max_size`, FIFO, `checkout_timeout`), a server connection of the current generation
//! logged in with its credentials ([`crate::pool::raw`]), the handshake the client expects, then
//! [`super::forward`] until one side ends or the generation's drain deadline passes. A target in
//! transaction mode goes to [`super::transaction`] once the peer is checked.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::forward::{self, End};
use super::lane::{Lane, Params};
use super::wire::{self, Startup, StartupError};
use super::Frontend;
use crate::config::access::Peer;
use crate::config::PoolMode;
use crate::listen::{ReadInterestStream, UnixConn};
use crate::pool::hosts::HostLease;
use crate::pool::raw::{self as server, ServerError};
use crate::targets::generation::SessionGuard;
use crate::targets::TargetHandle;

/// What ended a session before it began (or, in transaction mode, a checkout), and the reason
/// for the metric: `refused`, `no_generation`, `exhausted`, `server_login`, ...
pub(super) struct Refusal {
    pub reason: &'static str,
    pub told: Told,
}

/// What the client is told.
pub(super) enum Told {
    /// credswap's own error: SQLSTATE and message.
    Ours { code: String, message: String },
    /// The server's own `ErrorResponse` (a login refused for a parameter), passed on as it is.
    Server(bytes::Bytes),
}

pub(super) fn refusal(
    code: &'static str,
    reason: &'static str,
    message: impl Into<String>,
) -> Refusal {
    Refusal {
        reason,
        told: Told::Ours {
            code: code.to_string(),
            message: message.into(),
        },
    }
}

impl Refusal {
    /// The server refused a value of the client's (its SQLSTATE and message).
    pub(super) fn server(code: String, message: String) -> Refusal {
        Refusal {
            reason: "server_refused",
            told: Told::Ours { code, message },
        }
    }

    /// Ends the session with it.
    pub(super) async fn tell(&self, stream: &mut ReadInterestStream) {
        match &self.told {
            Told::Server(frame) => {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    let _ = stream.write_all(frame).await;
                    let _ = stream.shutdown().await;
                })
                .await;
            }
            Told::Ours { code, message } => fatal(stream, code, message).await,
        }
    }
}

/// Sends a FATAL error and closes.
pub(super) async fn fatal(stream: &mut ReadInterestStream, code: &str, message: &str) {
    let mut buf = BytesMut::new();
    wire::fatal_response(&mut buf, code, message);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = stream.write_all(&buf).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves one accepted connection.
pub async fn serve(conn: UnixConn, fe: Arc<Frontend>) {
    let UnixConn {
        mut stream,
        peer,
        slot,
    } = conn;
    let startup = tokio::time::timeout(fe.settings.startup_timeout, startup(&mut stream)).await;
    let (minor, params) = match startup {
        Err(_) => {
            fatal(
                &mut stream,
                "08P01",
                &format!(
                    "credswap: no startup packet within {:?}",
                    fe.settings.startup_timeout
                ),
            )
            .await;
            return;
        }
        Ok(Err(StartupError::Protocol { major, minor })) => {
            let text = StartupError::Protocol { major, minor }.to_string();
            fatal(&mut stream, "0A000", &format!("credswap: {text}")).await;
            return;
        }
        Ok(Err(e)) => {
            fatal(&mut stream, "08P01", &format!("credswap: {e}")).await;
            return;
        }
        Ok(Ok(First::Cancel { pid, secret })) => {
            fe.cancels
                .cancel(pid, secret, peer.as_ref(), &fe.admin_uids)
                .await;
            return;
        }
        Ok(Ok(First::Session { minor, params })) => (minor, params),
    };
    if let Err(refused) = &slot {
        fatal(
            &mut stream,
            "53300",
            &format!("credswap: sorry, too many clients already ({refused})"),
        )
        .await;
        return;
    }
    let database = param(&params, "database")
        .or_else(|| param(&params, "user"))
        .unwrap_or_default()
        .to_string();
    match begin(&mut stream, &fe, peer.as_ref(), &database, minor, &params).await {
        Ok(()) => {}
        Err(r) => {
            fe.metrics
                .postgres_ended(&database_label(&fe, &database), r.reason);
            r.tell(&mut stream).await;
        }
    }
}

/// The target name for metrics: only configured names become labels.
fn database_label(fe: &Frontend, database: &str) -> String {
    match fe.targets.get(database) {
        Some(_) => database.to_string(),
        None => "unknown".to_string(),
    }
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

enum First {
    Cancel {
        pid: i32,
        secret: i32,
    },
    Session {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// Reads startup packets until a session or a cancel request: SSL and GSS encryption are
/// declined (`N`), as PostgreSQL does on a socket without them; the client then goes on in
/// the clear over the local socket.
async fn startup(stream: &mut ReadInterestStream) -> Result<First, StartupError> {
    let mut declined = 0;
    loop {
        match wire::read_startup(stream).await? {
            Startup::Ssl | Startup::GssEnc if declined < 2 => {
                declined += 1;
                stream
                    .write_all(b"N")
                    .await
                    .map_err(|e| StartupError::Io(e.to_string()))?;
            }
            Startup::Ssl | Startup::GssEnc => {
                return Err(StartupError::Malformed(
                    "encryption asked for again and again",
                ))
            }
            Startup::Cancel { pid, secret } => return Ok(First::Cancel { pid, secret }),
            Startup::Session { minor, params } => return Ok(First::Session { minor, params }),
        }
    }
}

/// Authorizes, connects upstream, greets the client and forwards; errors before the greeting
/// are refusals for the client.
async fn begin(
    stream: &mut ReadInterestStream,
    fe: &Arc<Frontend>,
    peer: Option<&Peer>,
    database: &str,
    minor: u16,
    params: &[(String, String)],
) -> Result<(), Refusal> {
    let (target, uid) = authorize(fe, peer, database)?;
    let name = target.name().to_string();
    let settings = target.settings();
    // The uid is the wall: server connections go only to clients of one trust domain.
    let domain = settings.trust.domain(uid);
    if settings.pool_mode.unwrap_or(fe.settings.pool_mode) == PoolMode::Transaction {
        return super::transaction::serve(stream, fe, target, peer, domain, minor, params).await;
    }

    // A place among the target's sessions, in arrival order.
    let waited = Instant::now();
    let waiting = fe.metrics.postgres_waiting(&name);
    let permit = tokio::time::timeout(
        settings.pool.checkout_timeout,
        target.session_permits().clone().acquire_owned(),
    )
    .await
    .map_err(|_| {
        refusal(
            "53300",
            "exhausted",
            format!(
                "credswap: all {} server connections of target \"{name}\" are in use (pool.max_size); none came free within {:?}",
                settings.pool.max_size, settings.pool.checkout_timeout
            ),
        )
    })?
    .expect("the semaphore is never closed");
    drop(waiting);

    // Protocol options (`_pq_.*`) stay between client and credswap; 3.x is answered with 3.0.
    let (options, params): (Vec<_>, Vec<_>) = params
        .iter()
        .cloned()
        .partition(|(k, _)| k.starts_with("_pq_."));
    // What a kept server connection must have been opened with to serve this client: the
    // parameters credswap passes on (user and database are the target's own).
    let mut reuse_params: Params = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "user" | "database" | "replication"))
        .cloned()
        .collect();
    reuse_params.sort();
    let reuse_key = Lane {
        domain,
        params: reuse_params,
    };

    // A server connection of the current generation, which is joined before connecting so its
    // drain waits for this session: one parked by an earlier client with the same parameters,
    // or a new login. A login refused because the credentials rotated meanwhile (a newer
    // generation is current) moves on to the newer one, as a checkout does.
    let connect_by = Instant::now() + settings.pool.checkout_timeout;
    let max_size = settings.pool.max_size as usize;
    let (guard, server) = loop {
        let guard = join_current(&target)?;
        let generation = guard.generation().clone();
        let others = max_size.saturating_sub(target.session_permits().available_permits() + 1);
        let taken = fe.idle.take(
            &name,
            generation.id,
            &reuse_key,
            settings.pool.idle_timeout,
            others,
            max_size,
        );
        super::close(taken.close).await;
        fe.kept_now(&name, &generation);
        if let Some(mut parked) = taken.conn {
            // One whose host failed or changed since, or that the server closed while it was
            // parked, is closed and another taken.
            if parked.is_stale() || !parked.looks_idle() {
                super::close(vec![parked]).await;
                continue;
            }
            fe.metrics.postgres_server_reused(&name);
            break (guard, Ok(parked));
        }
        match server::connect_until(generation.pool.plan(), &params, connect_by).await {
            Ok(server) => break (guard, Ok(server)),
            Err(e) if moved_on(&e, connect_by, &target, generation.id) => continue,
            Err(e) => break (guard, Err(server_refusal(&target, e))),
        }
    };
    let generation = guard.generation().clone();
    fe.metrics.postgres_wait(&name, waited.elapsed());
    let mut server = server?;

    let key = fe
        .cancels
        .register(target.clone(), Some(Arc::new(server.key.clone())));
    let mut hello = BytesMut::with_capacity(1024);
    if minor > 0 || !options.is_empty() {
        let unknown: Vec<&str> = options.iter().map(|(k, _)| k.as_str()).collect();
        wire::negotiate_protocol_version(&mut hello, &unknown);
    }
    wire::authentication_ok(&mut hello);
    hello.extend_from_slice(&server.parameter_status);
    wire::backend_key_data(&mut hello, key.pid, key.secret);
    wire::ready_for_query(&mut hello, b'I');
    if stream.write_all(&hello).await.is_err() {
        server::terminate(&mut server.stream).await;
        return Ok(());
    }
    tracing::debug!(target_name = %name, generation = generation.id, uid = peer.map(|p| p.uid), "postgres session started");

    let metrics = fe.metrics.postgres_session(&name);
    // A session keeps its server connection, so one on a server that is not the target's kind
    // any more (found so by anyone: a login, the HTTP API, transaction mode, or this session's
    // own 25006 on a writable target, which has the host looked at) ends at its next idle point.
    let changed = server.host.as_ref().map(|h| h.kind_changed());
    let watch_read_only = server
        .host
        .as_ref()
        .filter(|h| h.wants_writable())
        .map(|h| h.index());
    let read_only = crate::signal::Bell::default();
    // Polled at every wake-up of the session: waits of `crate::signal`, an atomic load each.
    let asked = async {
        let mut drained = generation.sessions.ending_wait();
        let mut stopped = fe.shutdown.waiting();
        let has_host = changed.is_some();
        let mut changed = changed.unwrap_or_else(|| fe.shutdown.waiting());
        loop {
            tokio::select! {
                _ = &mut drained => return,
                _ = &mut stopped => return,
                _ = &mut changed, if has_host => return,
                _ = read_only.rung(), if watch_read_only.is_some() => {
                    let index = watch_read_only.expect("only when set");
                    server::probe(generation.pool.plan(), index).await;
                }
            }
        }
    };
    let end = forward::forward(
        stream,
        &mut server.stream,
        std::mem::take(&mut server.leftover),
        asked,
        fe.settings.max_message_bytes,
        &metrics.to_server,
        &metrics.to_client,
        watch_read_only.map(|_| &read_only),
    )
    .await;
    metrics.ended();
    let reason = match &end {
        End::AtIdle => {
            let text = if fe.shutdown.is_fired() {
                "terminating connection: credswap is shutting down; reconnect when it is back"
                    .to_string()
            } else if server
                .host
                .as_ref()
                .is_some_and(HostLease::has_kind_changed)
            {
                format!(
                    "terminating connection: the server of this session ({}) is not the kind target \"{name}\" wants any more (target_session_attrs={}: it was promoted, demoted or fenced read-only); reconnect to reach one that is",
                    server.host.as_ref().map_or("", |h| h.label()),
                    generation.pool.plan().hosts().attrs().as_str()
                )
            } else {
                format!(
                    "terminating connection: the credentials of target \"{name}\" were rotated and this session's time on the old ones is up (drain_timeout); reconnect for a session with the new ones"
                )
            };
            fatal(stream, "57P01", &text).await;
            "ended_at_idle"
        }
        End::ClientClosed { reusable } => {
            // The client left at an idle point: its server connection serves the next client
            // once reset, if its generation is still the current one.
            let current = || target.current().is_some_and(|g| g.id == generation.id);
            if *reusable
                && current()
                && !fe.shutdown.is_fired()
                && server::reset(&mut server, RESET_TIMEOUT).await
                && current()
            {
                drop(key);
                let close = fe.idle.park(
                    &name,
                    generation.id,
                    reuse_key,
                    server,
                    settings.pool.idle_timeout,
                    max_size,
                );
                super::close(close).await;
                fe.kept_now(&name, &generation);
                fe.metrics.postgres_ended(&name, "client_closed");
                tracing::debug!(target_name = %name, "postgres session ended; its server connection is kept");
                return Ok(());
            }
            "client_closed"
        }
        End::ServerClosed | End::Io(_)
            if server.host.as_ref().is_some_and(HostLease::host_is_down) =>
        {
            // Shut down by credswap: its host stopped answering (a cancel could not reach it).
            fatal(
                stream,
                "08006",
                "credswap: the server connection of this session was lost: its host stopped answering; reconnect",
            )
            .await;
            "server_unreachable"
        }
        End::ServerClosed => "server_closed",
        End::Protocol(e) => {
            fatal(
                stream,
                "08P01",
                &format!("credswap: protocol violation: {e}"),
            )
            .await;
            "protocol_violation"
        }
        End::Io(_) => "io_error",
    };
    server::terminate(&mut server.stream).await;
    fe.metrics.postgres_ended(&name, reason);
    drop(key);
    drop(guard);
    drop(permit);
    tracing::debug!(target_name = %name, reason, "postgres session ended");
    Ok(())
}

/// How long `DISCARD ALL` may take before a connection is closed instead of kept.
const RESET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Joins the target's current generation (re-checked after joining, so a generation swapped
/// out meanwhile, whose drain may not see the new session, is never used).
pub(super) fn join_current(target: &TargetHandle) -> Result<SessionGuard, Refusal> {
    loop {
        let Some(generation) = target.current() else {
            let reason = target
                .status()
                .reason
                .unwrap_or_else(|| "its first rotation has not finished".into());
            return Err(refusal(
                "57P03",
                "no_generation",
                format!(
                    "credswap: target \"{}\" has no live connection yet: {reason}",
                    target.name()
                ),
            ));
        };
        let guard = generation.join();
        if target.current().is_some_and(|now| now.id == generation.id) {
            return Ok(guard);
        }
    }
}

/// The target named `database` and the peer's uid, if `peer` may use it. An unknown target
/// and a forbidden one look the same to the client; the log says which.
fn authorize(
    fe: &Frontend,
    peer: Option<&Peer>,
    database: &str,
) -> Result<(Arc<TargetHandle>, u32), Refusal> {
    let target = fe.targets.get(database);
    if let (Some(t), Some(p)) = (&target, peer) {
        if fe.admin_uids.contains(&p.uid) || t.allows(p).is_some() {
            return Ok((t.clone(), p.uid));
        }
    }
    let uid = peer.map_or_else(|| "unknown".to_string(), |p| p.uid.to_string());
    if let Some(held) = fe.refusals.allow() {
        tracing::warn!(
            uid = %uid,
            pid = peer.and_then(|p| p.pid),
            database,
            exists = target.is_some(),
            refusals_not_logged = held,
            "postgres: refused a peer"
        );
    }
    Err(refusal(
        "28000",
        "refused",
        format!("credswap: uid {uid} may not connect to database \"{database}\" (no such target, or the uid is not on its allow-lists)"),
    ))
}

/// A login refused because the credentials rotated meanwhile (a generation newer than
/// `generation` is current, and there is time until `by`): the caller moves on to the newer one.
pub(super) fn moved_on(
    e: &ServerError,
    by: Instant,
    target: &TargetHandle,
    generation: u64,
) -> bool {
    e.is_auth() && Instant::now() < by && target.current().is_some_and(|now| now.id != generation)
}

/// A failed server connection, as the client is told: the server's own refusal or ours.
pub(super) fn server_refusal(target: &TargetHandle, e: ServerError) -> Refusal {
    if e.is_auth() {
        target.report_auth_failure();
        return refusal(
            "08006",
            "server_login",
            format!(
                "credswap could not log in to the server of target \"{}\" with the current credentials; it is fetching new ones, retry shortly",
                target.name()
            ),
        );
    }
    match e {
        ServerError::Refused { frame, .. } => Refusal {
            reason: "server_refused",
            told: Told::Server(frame),
        },
        other => refusal(
            "08006",
            "server_unreachable",
            format!("credswap: no server connection: {other}"),
        ),
    }
}
