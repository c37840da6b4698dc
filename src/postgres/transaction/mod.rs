//! Transaction mode: a client gets a server connection of the current generation at the first
//! message of each transaction and gives it back at `ReadyForQuery` "idle", so long-lived
//! clients never pin old credentials and many clients share few server connections. What a
//! client's session must look like on the next connection travels with it: its reported
//! parameters ([`params`]) and its protocol-level prepared statements ([`statements`],
//! rewritten message by message in [`exchange`]). Everything else a transaction may have left in
//! the session is reset before the connection serves another client, unless [`scan`] proves it
//! left nothing; what a client expects to keep (a `LISTEN`, a temporary table) pins it to its
//! connection for the rest of its session, under session-mode rules. Connections are lent by
//! [`servers`], only within the client's trust domain ([`super::lane`]).

pub mod exchange;
pub mod params;
pub mod scan;
pub mod servers;
pub mod statements;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use self::exchange::Client;
use self::params::{tracked_name, Values};
use self::servers::{Grant, Lane, Params, Server};
use super::session::{fatal, join_current, moved_on, refusal, server_refusal, Refusal, Told};
use super::wire;
use super::Frontend;
use crate::config::access::Peer;
use crate::config::ServerReset;
use crate::listen::ReadInterestStream;
use crate::metrics::{CheckoutMetrics, SessionMetrics};
use crate::pool::raw::{self, QuietError};
use crate::targets::generation::SessionGuard;
use crate::targets::TargetHandle;

/// Bytes read at a time in each direction.
const CHUNK: usize = 16 * 1024;
/// A server message longer than this is passed on as it arrives instead of whole.
const STREAM_AT: usize = 64 * 1024;
/// An idle connection lent after this long is first checked for a close by its server.
const LIVENESS_AFTER: Duration = Duration::from_millis(1);
/// How long credswap's own statements (`SET`, `RESET ALL`) may take.
const QUIET_TIMEOUT: Duration = Duration::from_secs(2);

/// A server connection lent to the client for one transaction (or, pinned, for good).
struct Held {
    server: Box<Server>,
    guard: SessionGuard,
    past_deadline: bool,
}

/// Resolves at the drain deadline of one generation. Kept by the session for as long as its
/// connections are of that generation: made at every checkout, it cost a waiter's registration
/// and removal and an allocation per transaction; made at every wake-up, as at first, more. A
/// [`crate::signal`] wait, as a `watch` wait took a lock at each poll.
struct Deadline {
    generation: u64,
    wait: crate::signal::Waiting,
    passed: bool,
}

impl Deadline {
    /// The deadline of `held`'s generation: `current` if it is that one's, else a new one.
    fn of(current: Option<Deadline>, held: &Held) -> Deadline {
        let generation = held.guard.generation();
        match current {
            Some(d) if d.generation == generation.id => d,
            _ => Deadline {
                generation: generation.id,
                wait: generation.sessions.ending_wait(),
                passed: false,
            },
        }
    }
}

/// One transaction-mode client, after its target and peer were checked.
struct Session<'a> {
    fe: &'a Arc<Frontend>,
    target: Arc<TargetHandle>,
    name: String,
    /// Which server connections this client may be lent.
    lane: Lane,
    /// When its connections are reset (the target's `server_reset`, or `[postgres]`'s).
    reset_policy: ServerReset,
    client: Client,
    metrics: SessionMetrics,
    checkouts: CheckoutMetrics,
    /// The target's pool of lent connections (asked for again if the target was retired).
    pool: Arc<servers::TargetPool>,
}

/// What woke a session holding a connection.
enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    /// The drain deadline of the connection's generation passed.
    Deadline,
    Wake,
}

/// How the client's session ended.
enum End {
    /// The client left.
    Left,
    /// credswap ended it and has told the client why (the metric's reason).
    Told(&'static str),
    /// credswap ends it at an idle point (shutdown, or a pinned client's drain deadline).
    Ended(&'static str),
}

/// Serves a transaction-mode client from its startup parameters to its end.
pub(super) async fn serve(
    stream: &mut ReadInterestStream,
    fe: &Arc<Frontend>,
    target: Arc<TargetHandle>,
    peer: Option<&Peer>,
    domain: u32,
    minor: u16,
    params: &[(String, String)],
) -> Result<(), Refusal> {
    let name = target.name().to_string();
    // Tracked parameters are set on whichever connection the client lands on; the others are
    // login parameters: connections are opened with them and lent only to clients with the same.
    let mut wanted: Vec<(&'static str, &str)> = Vec::new();
    let mut login: Params = Vec::new();
    let mut options = Vec::new();
    for (k, v) in params {
        if k.starts_with("_pq_.") {
            options.push(k.as_str());
        } else if let Some(tracked) = tracked_name(k.as_bytes()) {
            wanted.push((tracked, v));
        } else if !matches!(k.as_str(), "user" | "database" | "replication") {
            login.push((k.clone(), v.clone()));
        }
    }
    login.sort();
    let settings = &fe.settings;
    let mut session = Session {
        fe,
        name: name.clone(),
        lane: Lane {
            domain,
            params: login,
        },
        reset_policy: target
            .settings()
            .server_reset
            .unwrap_or(settings.server_reset),
        client: Client::new(
            fe.next_client.fetch_add(1, Ordering::Relaxed),
            Values::default(),
            settings.max_prepared_statements,
            settings.max_message_bytes,
        ),
        metrics: fe.metrics.postgres_session(&name),
        checkouts: fe.metrics.postgres_checkout(&name),
        pool: fe.pools.target(&name),
        target,
    };

    // The greeting: a connection's reported parameters, brought to the client's values (a value
    // the server refuses ends the session with the server's own error).
    let greeted = session.greet(wanted).await;
    let values = match greeted {
        Ok(v) => v,
        Err(r) => {
            session.metrics.ended();
            return Err(r);
        }
    };
    session.client.values = values;
    let key = fe.cancels.register(session.target.clone(), None);
    let mut hello = BytesMut::with_capacity(1024);
    if minor > 0 || !options.is_empty() {
        wire::negotiate_protocol_version(&mut hello, &options);
    }
    wire::authentication_ok(&mut hello);
    session.client.values.write_status(&mut hello);
    wire::backend_key_data(&mut hello, key.pid, key.secret);
    wire::ready_for_query(&mut hello, b'I');
    if stream.write_all(&hello).await.is_err() {
        session.metrics.ended();
        return Ok(());
    }
    tracing::debug!(target_name = %name, uid = peer.map(|p| p.uid), "postgres transaction-mode session started");
    let end = session.run(stream, &key).await;
    session.metrics.ended();
    let reason = match end {
        End::Left => "client_closed",
        End::Told(reason) => reason,
        End::Ended(why) => {
            let text = if fe.shutdown.is_fired() {
                "terminating connection: credswap is shutting down; reconnect when it is back"
                    .to_string()
            } else {
                format!("terminating connection: this session was pinned to a server connection ({why}) whose credentials of target \"{name}\" were rotated, and its time on them is up (drain_timeout); reconnect")
            };
            fatal(stream, "57P01", &text).await;
            "ended_at_idle"
        }
    };
    fe.metrics.postgres_ended(&name, reason);
    Ok(())
}

impl Session<'_> {
    /// Checks out a connection for the greeting, brings it to the client's startup values and
    /// returns what the client is to see; the connection goes back.
    async fn greet(&mut self, wanted: Vec<(&'static str, &str)>) -> Result<Values, Refusal> {
        let mut held = self.checkout().await?;
        let mut values = held.server.values.clone();
        for (name, value) in wanted {
            values.set(name, value);
            self.client.owned.mark(name.as_bytes());
        }
        let sync = values.sync_from(&held.server.values, &held.server.login, &self.client.owned);
        if let Some(sql) = sync {
            match held.server.run_quietly(&sql, QUIET_TIMEOUT).await {
                Ok(()) => {}
                Err(QuietError::Server { code, message }) => {
                    self.give_back(held, false).await;
                    return Err(Refusal::server(code, message));
                }
                Err(QuietError::Broken) => {
                    self.give_back(held, false).await;
                    return Err(refusal(
                        "08006",
                        "server_unreachable",
                        "credswap: the server connection broke while the session's parameters were set",
                    ));
                }
            }
        }
        let values = held.server.values.clone();
        self.give_back(held, true).await;
        Ok(values)
    }

    /// A connection of the current generation for the next transaction, brought to the client's
    /// parameter values.
    async fn checkout(&mut self) -> Result<Held, Refusal> {
        let settings = self.target.settings();
        let waited = Instant::now();
        let deadline = waited + settings.pool.checkout_timeout;
        let max_size = settings.pool.max_size as usize;
        loop {
            let guard = join_current(&self.target)?;
            let generation = guard.generation().clone();
            if self.pool.is_retired() {
                self.pool = self.fe.pools.target(&self.name);
            }
            let mut close = Vec::new();
            let grant = {
                let _waiting = self.checkouts.waiting();
                self.pool
                    .checkout(generation.id, &self.lane, max_size, deadline, &mut close)
                    .await
            };
            if !close.is_empty() {
                super::close(close.into_iter().map(|s| s.conn).collect()).await;
            }
            let server = match grant {
                Err(_) => {
                    return Err(refusal(
                        "53300",
                        "exhausted",
                        format!(
                            "credswap: all {max_size} server connections of target \"{}\" are in use (pool.max_size); none came free within {:?}",
                            self.name, settings.pool.checkout_timeout
                        ),
                    ))
                }
                Ok(Grant::Server(mut server)) => {
                    // Its host failed or changed since it was opened, or the server closed it
                    // while it was idle: closed, and another taken. Only a connection idle for
                    // a while is polled: one a transaction just gave back was working then,
                    // and the poll cost 1.2 % of a transaction's instructions when made always.
                    if server.conn.is_stale()
                        || (server.idle_for() >= LIVENESS_AFTER && !server.conn.looks_idle())
                    {
                        if let Some(mut gone) = self.pool.give_back(server, false) {
                            raw::terminate(&mut gone.conn.stream).await;
                        }
                        continue;
                    }
                    server
                }
                Ok(Grant::Open(slot)) => {
                    match raw::connect_until(generation.pool.plan(), &self.lane.params, deadline).await {
                        Ok(conn) => Box::new(Server::new(conn, generation.id, self.lane.clone(), slot)),
                        Err(e) if moved_on(&e, deadline, &self.target, generation.id) => continue,
                        Err(e) => return Err(server_refusal(&self.target, e)),
                    }
                }
            };
            self.checkouts.waited(waited.elapsed());
            let mut held = Held {
                server,
                guard,
                past_deadline: false,
            };
            let sync = self.client.values.sync_from(
                &held.server.values,
                &held.server.login,
                &self.client.owned,
            );
            if let Some(sql) = sync {
                if let Err(e) = held.server.run_quietly(&sql, QUIET_TIMEOUT).await {
                    tracing::warn!(target_name = %self.name, error = %e, "a server connection could not take a client's parameters; it is closed");
                    self.give_back(held, false).await;
                    continue;
                }
            }
            return Ok(held);
        }
    }

    /// Hands a connection back after a transaction (reset first unless the transaction
    /// provably left nothing behind); `keep` false closes it.
    async fn give_back(&mut self, mut held: Held, mut keep: bool) {
        if keep && std::mem::take(&mut held.server.read_only_error) {
            keep = self.still_writable(&mut held.server).await;
        }
        let reset =
            self.client.dirty || self.client.forgot || self.reset_policy == ServerReset::Always;
        if keep && reset {
            keep = self.reset(&mut held.server).await;
        }
        self.client.returned();
        let Held { server, guard, .. } = held;
        if let Some(mut closing) = self.pool.give_back(server, keep) {
            raw::terminate(&mut closing.conn.stream).await;
        }
        drop(guard);
    }

    /// Brings a connection back to its login state before anyone else uses it; false when it
    /// must close instead: the reset failed, or the prepared statements on it are not those
    /// credswap prepared (one was dropped or replaced by SQL credswap did not see, such as a
    /// function's), so none of them could be trusted to be what a client asks for.
    async fn reset(&self, server: &mut Server) -> bool {
        let forget = self.client.forgot;
        let (then, applied) = self
            .client
            .values
            .reapply(&server.login, &self.client.owned);
        let done = raw::reset_session(&mut server.conn, forget, &then, QUIET_TIMEOUT).await;
        // A simple query ends the unnamed statement.
        server.unnamed = None;
        let reset = match done {
            Ok(reset) => reset,
            Err(e) => {
                tracing::warn!(target_name = %self.name, error = %e, "a server connection could not be reset after a transaction; it is closed");
                self.fe.metrics.postgres_server_reset(&self.name, "failed");
                return false;
            }
        };
        if forget {
            server.prepared.clear();
        }
        for (n, v) in reset.status {
            server.values.set(&n, &v);
        }
        if reset.from_sql != 0 || reset.prepared != server.prepared.len() as u64 {
            tracing::warn!(target_name = %self.name, client = self.client.id, "a server connection's prepared statements were dropped or replaced by SQL credswap did not see (a function?); it is closed");
            self.fe
                .metrics
                .postgres_server_reset(&self.name, "statements_changed");
            return false;
        }
        // Every setting is at the session's default now, what a fresh login would show, but
        // the client's own reported ones, set again.
        server
            .values
            .settle_reset(&mut server.login, &self.client.values, applied);
        self.fe.metrics.postgres_server_reset(&self.name, "reset");
        true
    }

    /// After `25006` on a connection: true unless the target wants a writable server and this
    /// one is not any more (promoted elsewhere, or fenced with `default_transaction_read_only`),
    /// in which case every connection to its host is left, and new ones check again. A client's
    /// own `READ ONLY` transaction gives 25006 too, and changes nothing.
    async fn still_writable(&self, server: &mut Server) -> bool {
        if !server
            .conn
            .host
            .as_ref()
            .is_some_and(|h| h.wants_writable())
            || raw::still_writable(&mut server.conn, QUIET_TIMEOUT).await
        {
            return true;
        }
        let host = server.conn.host.as_ref().expect("a writable target's host");
        tracing::warn!(target_name = %self.name, host = %host.label(), "the server of a writable target is read-only now: its connections are left");
        host.host_changed();
        false
    }

    /// Forwards until the client leaves or its session is ended.
    async fn run(
        &mut self,
        stream: &mut ReadInterestStream,
        key: &super::cancel::Registered<'_>,
    ) -> End {
        let max = self.fe.settings.max_message_bytes;
        let mut chunk = vec![0u8; CHUNK];
        let mut schunk = vec![0u8; CHUNK];
        let mut cbuf = BytesMut::with_capacity(CHUNK);
        let mut sbuf = BytesMut::new();
        let mut out = BytesMut::with_capacity(CHUNK);
        let mut back = BytesMut::with_capacity(CHUNK);
        let mut held: Option<Held> = None;
        let mut deadline: Option<Deadline> = None;
        let mut streaming = 0usize;
        // A checkout refused: requests are dropped up to the next Sync or Query, which get
        // this error and ReadyForQuery.
        let mut refused: Option<BytesMut> = None;
        // One wait on the shutdown for the whole session: made afresh at every wake-up it
        // registered and removed a waiter each time; a `watch` wait took a lock at each poll.
        let mut stop = self.fe.shutdown.waiting();
        let mut stopped = false;
        let to_server = self.metrics.to_server.clone();
        let to_client = self.metrics.to_client.clone();
        loop {
            if held.is_none() {
                if self.fe.shutdown.is_fired() {
                    return End::Ended("shutdown");
                }
                let whole = match wire::whole_message(&cbuf, max) {
                    Ok(w) => w,
                    Err(e) => return self.violation(stream, e).await,
                };
                let Some(first) = whole else {
                    tokio::select! {
                        biased;
                        r = stream.read(&mut chunk) => match r {
                            Ok(0) | Err(_) => return End::Left,
                            Ok(n) => {
                                to_server.inc_by(n as u64);
                                cbuf.extend_from_slice(&chunk[..n]);
                            }
                        },
                        _ = &mut stop, if !stopped => stopped = true,
                    }
                    continue;
                };
                if cbuf[0] == b'X' {
                    return End::Left;
                }
                if refused.is_some() {
                    let tag = cbuf[0];
                    cbuf.advance(first);
                    if matches!(tag, b'S' | b'Q' | b'F') {
                        back.extend_from_slice(&refused.take().expect("just seen"));
                        wire::ready_for_query(&mut back, b'I');
                        if !flush(stream, &mut back).await {
                            return End::Left;
                        }
                    }
                    continue;
                }
                if let Some(used) =
                    self.client
                        .parse_round(&cbuf, &self.fe.statements, max, &mut back)
                {
                    cbuf.advance(used);
                    if !flush(stream, &mut back).await {
                        return End::Left;
                    }
                    continue;
                }
                match self.checkout().await {
                    Ok(mut h) => {
                        self.client
                            .values
                            .tell_differences(&h.server.values, &mut back);
                        self.fe.cancels.point(key, Some(h.server.conn_key()));
                        let d = Deadline::of(deadline.take(), &h);
                        h.past_deadline = d.passed;
                        deadline = Some(d);
                        held = Some(h);
                    }
                    Err(Refusal {
                        told: Told::Ours { code, message },
                        ..
                    }) => {
                        let mut error = BytesMut::new();
                        wire::error_response(&mut error, &code, &message);
                        refused = Some(error);
                        continue;
                    }
                    Err(r) => {
                        // The server refused a login with the client's parameters: no
                        // transaction of this client can run.
                        r.tell(stream).await;
                        return End::Told(r.reason);
                    }
                }
            }
            let h = held.as_mut().expect("a connection is held here");
            let d = deadline.as_mut().expect("set with every checkout");

            // Every whole client message goes on.
            let mut at = 0;
            loop {
                let len = match wire::whole_message(&cbuf[at..], max) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) => {
                        self.abandon(&mut held).await;
                        return self.violation(stream, e).await;
                    }
                };
                let m = &cbuf[at..at + len];
                if m[0] == b'X' {
                    self.abandon(&mut held).await;
                    return End::Left;
                }
                if let Some(pin) =
                    self.client
                        .request(m, &mut h.server, &self.fe.statements, &mut out)
                {
                    self.fe.metrics.postgres_pinned(&self.name, pin.label());
                    tracing::info!(target_name = %self.name, client = self.client.id, reason = pin.label(), "postgres client pinned to its server connection for the rest of its session");
                }
                at += len;
            }
            cbuf.advance(at);
            self.client.answers_due(&mut back);
            if !out.is_empty() {
                if raw::send(&mut h.server.conn.stream, &out).await.is_err() {
                    out.clear();
                    self.abandon(&mut held).await;
                    return self.server_gone(stream).await;
                }
                out.clear();
            }
            if !flush(stream, &mut back).await {
                self.abandon(&mut held).await;
                return End::Left;
            }

            // A pinned client follows session-mode rules: it ends at an idle point once its
            // generation's drain deadline has passed, or the daemon stops.
            if self.client.pinned.is_some()
                && self.client.status == b'I'
                && !self.client.owed()
                && streaming == 0
                && (h.past_deadline || self.fe.shutdown.is_fired())
            {
                self.abandon(&mut held).await;
                return End::Ended(self.client.pinned.map_or("", |p| p.label()));
            }

            // Biased: the server's answer is what usually wakes a held session, and the waits
            // behind it are not polled then.
            let event = tokio::select! {
                biased;
                r = h.server.conn.stream.read(&mut schunk) => Event::Server(r),
                r = stream.read(&mut chunk) => Event::Client(r),
                _ = &mut d.wait, if !d.passed => Event::Deadline,
                _ = &mut stop, if self.client.pinned.is_some() && !stopped => Event::Wake,
            };
            match event {
                Event::Client(Ok(0) | Err(_)) => {
                    // Inside a transaction: closing the connection rolls it back.
                    self.abandon(&mut held).await;
                    return End::Left;
                }
                Event::Client(Ok(n)) => {
                    to_server.inc_by(n as u64);
                    cbuf.extend_from_slice(&chunk[..n]);
                }
                Event::Server(Ok(0) | Err(_)) => {
                    self.abandon(&mut held).await;
                    return self.server_gone(stream).await;
                }
                Event::Server(Ok(n)) => {
                    to_client.inc_by(n as u64);
                    let h = held.as_mut().expect("held");
                    let walked = from_server(
                        &mut self.client,
                        &mut h.server,
                        &schunk[..n],
                        &mut sbuf,
                        &mut streaming,
                        &mut back,
                        max,
                    );
                    if let Err(e) = walked {
                        self.abandon(&mut held).await;
                        return self.violation(stream, e).await;
                    }
                    if !flush(stream, &mut back).await {
                        self.abandon(&mut held).await;
                        return End::Left;
                    }
                    if self.client.at_idle() && streaming == 0 && sbuf.is_empty() {
                        let h = held.take().expect("held");
                        self.fe.cancels.point(key, None);
                        self.give_back(h, true).await;
                    }
                }
                Event::Deadline => {
                    // The drain deadline of this transaction's generation passed: its statement
                    // is cancelled, as the HTTP API's are (a pinned client is ended at its next
                    // idle point instead, above).
                    let h = held.as_mut().expect("held");
                    h.past_deadline = true;
                    if let Some(d) = deadline.as_mut() {
                        d.passed = true;
                    }
                    if self.client.pinned.is_none() {
                        if let Err(e) = raw::cancel(&h.server.conn.key).await {
                            tracing::warn!(target_name = %self.name, error = %e, "could not cancel a statement at the drain deadline");
                        }
                    }
                }
                Event::Wake => stopped = true,
            }
        }
    }

    /// Closes the held connection, if any (inside a transaction: rolled back by the server).
    async fn abandon(&mut self, held: &mut Option<Held>) {
        if let Some(h) = held.take() {
            self.give_back(h, false).await;
        }
    }

    /// The client broke the protocol: it is told, and the session ends.
    async fn violation(&self, stream: &mut ReadInterestStream, e: wire::FrameError) -> End {
        fatal(
            stream,
            "08P01",
            &format!("credswap: protocol violation: {e}"),
        )
        .await;
        End::Told("protocol_violation")
    }

    /// The server connection broke mid-transaction (or was shut down because its host is
    /// unreachable): the client is told and the session ends (what it had open there is gone).
    async fn server_gone(&self, stream: &mut ReadInterestStream) -> End {
        fatal(
            stream,
            "08006",
            "credswap: the server connection of this transaction was lost (the server closed it, or its host stopped answering); what it had not committed is rolled back",
        )
        .await;
        End::Told("server_closed")
    }
}

/// Writes what is waiting for the client; false when the client is gone.
async fn flush(stream: &mut ReadInterestStream, back: &mut BytesMut) -> bool {
    if back.is_empty() {
        return true;
    }
    let sent = stream.write_all(back).await.is_ok();
    back.clear();
    sent
}

/// Handles bytes from the server: whole messages are judged and passed on (or swallowed), a
/// long one is passed on as it arrives.
fn from_server(
    client: &mut Client,
    server: &mut Server,
    mut data: &[u8],
    sbuf: &mut BytesMut,
    streaming: &mut usize,
    back: &mut BytesMut,
    max: usize,
) -> Result<(), wire::FrameError> {
    if *streaming > 0 {
        let n = (*streaming).min(data.len());
        back.put_slice(&data[..n]);
        *streaming -= n;
        data = &data[n..];
        if *streaming == 0 {
            client.answers_due(back);
        }
    }
    let from_buffer = !sbuf.is_empty();
    if from_buffer {
        sbuf.extend_from_slice(data);
    }
    let buf: &[u8] = if from_buffer { sbuf } else { data };
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        match wire::whole_message(rest, max)? {
            Some(total) => {
                let m = &rest[..total];
                if client.response(m[0], m, server) {
                    back.put_slice(m);
                }
                client.answers_due(back);
                at += total;
            }
            None if rest.len() >= 5 => {
                let total =
                    u32::from_be_bytes(rest[1..5].try_into().expect("four bytes")) as usize + 1;
                if total > STREAM_AT {
                    client.response(rest[0], &rest[..5], server);
                    back.put_slice(rest);
                    *streaming = total - rest.len();
                    at = buf.len();
                }
                break;
            }
            None => break,
        }
    }
    if from_buffer {
        sbuf.advance(at);
    } else {
        sbuf.extend_from_slice(&data[at..]);
    }
    Ok(())
}
