//! What a transaction-mode client sends and what it gets back, message by message. Requests
//! are rewritten where credswap keeps state for the client (named statements to their server
//! names, a statement missing on this connection prepared first); every request that the
//! server answers is queued with what to do with its answer (forward it, swallow it, or answer
//! in its place), so that answers credswap makes itself reach the client in protocol order, and
//! an error skips what PostgreSQL skips after it (everything up to the next `Sync`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::params::{is_tracked, Owned, Values};
use super::scan::{scan, scan_with, Pin, Scan};
use super::servers::Server;
use super::statements::{close_message, parse_text, scan_in, Statement, Statements};
use crate::postgres::wire;

/// Named statements one client may have at once.
pub const MAX_CLIENT_STATEMENTS: usize = 10_000;

/// An answer the server owes, in request order.
#[derive(Debug)]
enum Expect {
    /// `ParseComplete`; `swallow` for a `Parse` credswap added. `statement`: which statement
    /// (none: the unnamed one); `client`: the client's name for it.
    Parse {
        swallow: bool,
        statement: Option<u64>,
        client: Option<Vec<u8>>,
    },
    Bind,
    /// Ends with `RowDescription` or `NoData`.
    Describe,
    /// Ends with `CommandComplete`, `EmptyQueryResponse` or `PortalSuspended`.
    Execute,
    Close {
        swallow: bool,
    },
    /// `ReadyForQuery`.
    Sync,
    /// A simple `Query` or `FunctionCall`: everything up to `ReadyForQuery`.
    Simple,
    /// credswap answers in the server's place: `ParseComplete` for a statement this connection
    /// has already, naming `client`.
    Parsed {
        client: Vec<u8>,
    },
    /// Any other answer of credswap's (`CloseComplete`, an error).
    Answer(Bytes),
}

/// A request credswap cannot pass on; the client is told with an `ErrorResponse`.
pub struct Refused {
    code: &'static str,
    message: String,
}

/// A client's state that outlives its transactions.
pub struct Client {
    pub id: u64,
    statements: HashMap<Vec<u8>, Arc<Statement>>,
    statement_bytes: usize,
    max_statement_bytes: usize,
    max_prepared: usize,
    /// The last unnamed `Parse`, to prepare again on another connection, and how many the
    /// client has sent.
    unnamed: Option<Bytes>,
    unnamed_scan: Scan,
    unnamed_seq: u64,
    /// The reported parameters as the client has seen them, and which of them it set.
    pub values: Values,
    pub owned: Owned,
    pub pinned: Option<Pin>,
    /// Extended-protocol messages sent since the last `Sync`.
    unsynced: bool,
    /// After an error credswap made: requests dropped up to the next `Sync`.
    skipping: bool,
    /// This checkout may have left session state behind (SQL not known to leave none, a
    /// function call, a `ParameterStatus` nobody asked for): the connection is reset before
    /// it serves anyone else.
    pub dirty: bool,
    /// This checkout may have dropped the connection's prepared statements (`DEALLOCATE`,
    /// `DISCARD`): the reset drops them all and credswap's record of them.
    pub forgot: bool,
    /// This checkout sent SQL that may change session parameters: the `ParameterStatus` it
    /// produces is the client's to carry.
    sets_params: bool,
    expect: VecDeque<Expect>,
    /// The status of the last `ReadyForQuery` the client got.
    pub status: u8,
}

impl Client {
    pub fn new(id: u64, values: Values, max_prepared: usize, max_statement_bytes: usize) -> Client {
        Client {
            id,
            statements: HashMap::new(),
            statement_bytes: 0,
            max_statement_bytes,
            max_prepared,
            unnamed: None,
            unnamed_scan: Scan::default(),
            unnamed_seq: 0,
            values,
            owned: Owned::default(),
            pinned: None,
            unsynced: false,
            skipping: false,
            dirty: false,
            forgot: false,
            sets_params: false,
            expect: VecDeque::new(),
            status: b'I',
        }
    }

    /// Whether the server connection may go back: idle, every answer in, nothing half-done.
    pub fn at_idle(&self) -> bool {
        self.status == b'I' && self.expect.is_empty() && !self.unsynced && self.pinned.is_none()
    }

    /// Answers owed by the server or by credswap.
    pub fn owed(&self) -> bool {
        !self.expect.is_empty()
    }

    /// Passes on one whole client message `m` (header included) to `out`; what pins the client
    /// is returned the first time it happens.
    pub fn request(
        &mut self,
        m: &[u8],
        server: &mut Server,
        statements: &Statements,
        out: &mut BytesMut,
    ) -> Option<Pin> {
        let tag = m[0];
        let body = &m[5..];
        if self.skipping && tag != b'S' {
            return None;
        }
        let before = self.pinned;
        let result = match tag {
            b'P' => self.parse(m, server, statements, out),
            b'B' => self.bind(m, server, out),
            b'D' => self.describe(m, server, out),
            b'C' => self.close(m, server, out),
            _ => {
                let answer = match tag {
                    b'Q' => {
                        let scan = scan_with(cstr(body).0, server.values.standard_strings());
                        self.apply(scan, Some(server));
                        // A simple query replaces the unnamed statement.
                        server.unnamed = None;
                        self.unnamed = None;
                        Some(Expect::Simple)
                    }
                    b'F' => {
                        // A function call by OID: what it does is out of sight.
                        self.dirty = true;
                        Some(Expect::Simple)
                    }
                    b'E' => {
                        self.unsynced = true;
                        Some(Expect::Execute)
                    }
                    b'S' => {
                        self.unsynced = false;
                        self.skipping = false;
                        Some(Expect::Sync)
                    }
                    // Flush, COPY data: no answer of their own.
                    _ => None,
                };
                out.put_slice(m);
                self.expect.extend(answer);
                Ok(())
            }
        };
        if let Err(r) = result {
            self.refuse(r);
        }
        if before.is_none() {
            self.pinned
        } else {
            None
        }
    }

    /// Takes in what a statement does; `executed_on` is the connection it runs on now (a
    /// `Query` or a `Bind`), `None` when it is only parsed.
    fn apply(&mut self, scan: Scan, executed_on: Option<&mut Server>) {
        if self.pinned.is_none() {
            self.pinned = scan.pin;
        }
        self.dirty |= scan.changes;
        self.forgot |= scan.forgets_statements;
        self.sets_params |= scan.sets_params;
        if let (true, Some(server)) = (scan.forgets_all, executed_on) {
            // `DEALLOCATE ALL` (psycopg sends it after a DROP or a ROLLBACK, then prepares
            // again): nothing is prepared on the connection any more, and the client's names
            // are gone as it expects.
            server.prepared.clear();
            self.statements.clear();
            self.statement_bytes = 0;
        }
    }

    fn refuse(&mut self, r: Refused) {
        let mut buf = BytesMut::new();
        wire::error_response(&mut buf, r.code, &r.message);
        self.expect.push_back(Expect::Answer(buf.freeze()));
        self.skipping = true;
    }

    fn parse(
        &mut self,
        m: &[u8],
        server: &mut Server,
        statements: &Statements,
        out: &mut BytesMut,
    ) -> Result<(), Refused> {
        self.unsynced = true;
        let (name, rest) = cstr(&m[5..]);
        if name.is_empty() {
            // Drivers send the same unnamed Parse again and again: scanned once.
            if self.unnamed.as_deref() != Some(m) {
                self.unnamed_scan = scan(parse_text(m));
                self.unnamed = Some(Bytes::copy_from_slice(m));
            }
            let scan = self.unnamed_scan_for(&server.values);
            self.apply(scan, None);
            self.unnamed_seq += 1;
            server.unnamed = Some((self.id, self.unnamed_seq));
            out.put_slice(m);
            self.expect.push_back(Expect::Parse {
                swallow: false,
                statement: None,
                client: None,
            });
            return Ok(());
        }
        let statement = statements.get(rest);
        self.record(name, statement.clone())?;
        self.apply(statement.scan_for(&server.values), None);
        if server.prepared.touch(statement.id) {
            self.expect.push_back(Expect::Parsed {
                client: name.to_vec(),
            });
        } else {
            self.prepare(server, &statement, false, Some(name.to_vec()), out);
        }
        Ok(())
    }

    /// Answers a round of `Parse` messages and its `Sync` without a server connection (libpq's
    /// `PQprepare`): the statements are recorded and prepared on the connection where they are
    /// first used, so the server checks them then. A client that prepares between
    /// transactions never waits for a connection only to prepare (pgbench `-M prepared` blocks
    /// its whole thread in `PQprepare`, so waiting there would deadlock against the clients of
    /// the same thread that hold the connections). `None` when the round is not one of these
    /// (it must wait for a connection): a statement that pins, or any other message.
    pub fn parse_round(
        &mut self,
        cbuf: &[u8],
        statements: &Statements,
        max: usize,
        back: &mut BytesMut,
    ) -> Option<usize> {
        // The round: Parse messages, then a Sync, all here already. Looked at before anything
        // is collected: every extended-protocol transaction starts with a Parse and comes
        // through here (collecting first cost an allocation per transaction).
        let mut at = 0;
        let mut count = 0;
        loop {
            let len = wire::whole_message(&cbuf[at..], max).ok()??;
            let tag = cbuf[at];
            at += len;
            match tag {
                b'P' => count += 1,
                b'S' if count > 0 => break,
                _ => return None,
            }
        }
        let mut parses = Vec::with_capacity(count);
        let mut from = 0;
        while parses.len() < count {
            let len = wire::whole_message(&cbuf[from..], max)
                .ok()
                .flatten()
                .expect("walked just now");
            parses.push(&cbuf[from..from + len]);
            from += len;
        }
        let mut failed = false;
        let mut found = Vec::with_capacity(parses.len());
        for m in &parses {
            let (name, rest) = cstr(&m[5..]);
            let statement = (!name.is_empty()).then(|| statements.get(rest));
            let found_scan = match &statement {
                Some(s) => s.scan,
                None => scan(parse_text(m)),
            };
            if found_scan.pin.is_some() || found_scan.forgets_statements {
                return None;
            }
            found.push((name, statement));
        }
        for (m, (name, statement)) in parses.iter().zip(found) {
            if failed {
                break;
            }
            match statement {
                None => {
                    self.unnamed = Some(Bytes::copy_from_slice(m));
                    self.unnamed_scan = scan(parse_text(m));
                    self.unnamed_seq += 1;
                    back.put_slice(&[b'1', 0, 0, 0, 4]);
                }
                Some(statement) => match self.record(name, statement) {
                    Ok(()) => back.put_slice(&[b'1', 0, 0, 0, 4]),
                    Err(r) => {
                        wire::error_response(back, r.code, &r.message);
                        failed = true;
                    }
                },
            }
        }
        wire::ready_for_query(back, b'I');
        Some(at)
    }

    /// What the client's unnamed statement does, read with the session's
    /// `standard_conforming_strings` (scanned with it on when parsed).
    fn unnamed_scan_for(&self, values: &Values) -> Scan {
        self.unnamed.as_deref().map_or(self.unnamed_scan, |parse| {
            scan_in(self.unnamed_scan, parse, values)
        })
    }

    /// Records the client's name for a statement, within the client's limits.
    fn record(&mut self, name: &[u8], statement: Arc<Statement>) -> Result<(), Refused> {
        if self.statements.contains_key(name) {
            return Err(Refused {
                code: "42P05",
                message: format!("prepared statement \"{}\" already exists", shown(name)),
            });
        }
        if self.statements.len() >= MAX_CLIENT_STATEMENTS
            || self.statement_bytes + statement.parse.len() > self.max_statement_bytes
        {
            return Err(Refused {
                code: "53400",
                message: format!(
                    "credswap: a client may have at most {MAX_CLIENT_STATEMENTS} named prepared statements of {} bytes in all in transaction mode; close some (Close, or DEALLOCATE in the driver)",
                    self.max_statement_bytes
                ),
            });
        }
        self.statement_bytes += statement.parse.len();
        self.statements.insert(name.to_vec(), statement);
        Ok(())
    }

    /// Prepares `statement` on `server`, closing its least recently used one if it is full.
    fn prepare(
        &mut self,
        server: &mut Server,
        statement: &Statement,
        swallow: bool,
        client: Option<Vec<u8>>,
        out: &mut BytesMut,
    ) {
        if let Some(old) = server.prepared.insert(statement.id, self.max_prepared) {
            close_message(out, old);
            self.expect.push_back(Expect::Close { swallow: true });
        }
        out.put_slice(&statement.parse);
        self.expect.push_back(Expect::Parse {
            swallow,
            statement: Some(statement.id),
            client,
        });
    }

    /// The statement `name` as this server knows it, prepared there first if it is missing.
    fn ensure(
        &mut self,
        name: &[u8],
        server: &mut Server,
        out: &mut BytesMut,
    ) -> Result<Option<Arc<Statement>>, Refused> {
        if name.is_empty() {
            let current = Some((self.id, self.unnamed_seq));
            if server.unnamed != current {
                match &self.unnamed {
                    Some(parse) => {
                        out.put_slice(parse);
                        self.expect.push_back(Expect::Parse {
                            swallow: true,
                            statement: None,
                            client: None,
                        });
                        server.unnamed = current;
                    }
                    None if server.unnamed.is_some() => {
                        return Err(Refused {
                            code: "26000",
                            message: "unnamed prepared statement does not exist".into(),
                        })
                    }
                    None => {}
                }
            }
            return Ok(None);
        }
        let Some(statement) = self.statements.get(name).cloned() else {
            return Err(Refused {
                code: "26000",
                message: format!("prepared statement \"{}\" does not exist", shown(name)),
            });
        };
        if !server.prepared.touch(statement.id) {
            self.prepare(server, &statement, true, None, out);
        }
        Ok(Some(statement))
    }

    fn bind(&mut self, m: &[u8], server: &mut Server, out: &mut BytesMut) -> Result<(), Refused> {
        self.unsynced = true;
        let (portal, rest) = cstr(&m[5..]);
        let (name, rest) = cstr(rest);
        match self.ensure(name, server, out)? {
            None => {
                // What the statement does counts where it runs, whichever round parsed it.
                let scan = self.unnamed_scan_for(&server.values);
                self.apply(scan, Some(server));
                out.put_slice(m)
            }
            Some(statement) => {
                self.apply(statement.scan_for(&server.values), Some(server));
                let server_name = statement.name();
                wire::message(out, b'B', |b| {
                    b.put_slice(portal);
                    b.put_u8(0);
                    b.put_slice(server_name);
                    b.put_u8(0);
                    b.put_slice(rest);
                });
            }
        }
        self.expect.push_back(Expect::Bind);
        Ok(())
    }

    fn describe(
        &mut self,
        m: &[u8],
        server: &mut Server,
        out: &mut BytesMut,
    ) -> Result<(), Refused> {
        self.unsynced = true;
        let kind = m.get(5).copied().unwrap_or(0);
        let (name, _) = cstr(m.get(6..).unwrap_or_default());
        if kind == b'S' {
            match self.ensure(name, server, out)? {
                None => out.put_slice(m),
                Some(statement) => {
                    let server_name = statement.name();
                    wire::message(out, b'D', |b| {
                        b.put_u8(b'S');
                        b.put_slice(server_name);
                        b.put_u8(0);
                    });
                }
            }
        } else {
            out.put_slice(m);
        }
        self.expect.push_back(Expect::Describe);
        Ok(())
    }

    fn close(&mut self, m: &[u8], server: &mut Server, out: &mut BytesMut) -> Result<(), Refused> {
        self.unsynced = true;
        let kind = m.get(5).copied().unwrap_or(0);
        let (name, _) = cstr(m.get(6..).unwrap_or_default());
        if kind == b'S' && !name.is_empty() {
            // Shared statements stay on the servers; the client's name is forgotten.
            if let Some(s) = self.statements.remove(name) {
                self.statement_bytes -= s.parse.len().min(self.statement_bytes);
            }
            self.expect
                .push_back(Expect::Answer(Bytes::from_static(&[b'3', 0, 0, 0, 4])));
            return Ok(());
        }
        if kind == b'S' {
            self.unnamed = None;
            server.unnamed = None;
        }
        out.put_slice(m);
        self.expect.push_back(Expect::Close { swallow: false });
        Ok(())
    }

    /// Handles one server message `m` (whole, or only its header when `m` is 5 bytes of a
    /// longer message being streamed); says whether it goes to the client.
    pub fn response(&mut self, tag: u8, m: &[u8], server: &mut Server) -> bool {
        match tag {
            b'1' => match self.expect.pop_front() {
                Some(Expect::Parse { swallow, .. }) => !swallow,
                other => self.unexpected(other),
            },
            b'3' => match self.expect.pop_front() {
                Some(Expect::Close { swallow }) => !swallow,
                other => self.unexpected(other),
            },
            b'2' => {
                if matches!(self.expect.front(), Some(Expect::Bind)) {
                    self.expect.pop_front();
                }
                true
            }
            b'T' | b'n' => {
                if matches!(self.expect.front(), Some(Expect::Describe)) {
                    self.expect.pop_front();
                }
                true
            }
            b'C' | b'I' | b's' => {
                if matches!(self.expect.front(), Some(Expect::Execute)) {
                    self.expect.pop_front();
                }
                true
            }
            b'E' => {
                // Checked when the connection comes back: its server may be read-only now.
                server.read_only_error |= wire::sqlstate(m) == Some(b"25006");
                match self.expect.front() {
                    None | Some(Expect::Simple) | Some(Expect::Sync) => {}
                    Some(_) => {
                        // The failed request, and everything up to the next Sync, which the
                        // server skips.
                        while let Some(e) = self.expect.front() {
                            if matches!(e, Expect::Sync | Expect::Simple) {
                                break;
                            }
                            let e = self.expect.pop_front().expect("just seen");
                            self.undo(e, server);
                        }
                    }
                }
                true
            }
            b'Z' => {
                while let Some(e) = self.expect.pop_front() {
                    if matches!(e, Expect::Sync | Expect::Simple) {
                        break;
                    }
                    self.undo(e, server);
                }
                if let Some(status) = m.get(5) {
                    self.status = *status;
                }
                true
            }
            b'S' => {
                if m.len() > 5 {
                    server.values.update(&m[5..]);
                    let name = m[5..].split(|b| *b == 0).next().unwrap_or_default();
                    let tracked = is_tracked(name);
                    if tracked {
                        self.values.update(&m[5..]);
                    }
                    if tracked && self.sets_params {
                        self.owned.mark(name);
                    } else {
                        // Nobody can say whose doing it is: a function of the client's, or
                        // the server's configuration reloaded (a primary fenced with
                        // default_transaction_read_only). It is never taken as the
                        // connection's login value while a client holds it: the connection
                        // is reset, and what the server reports then is. For the client it
                        // lasts the transaction, as `SET LOCAL` would: its next connection
                        // has the login's value, and tells it so.
                        self.owned.unmark(name);
                        self.dirty = true;
                    }
                }
                true
            }
            _ => true,
        }
    }

    /// An answer with no request waiting for it: passed on (the client's own driver judges).
    fn unexpected(&mut self, e: Option<Expect>) -> bool {
        if let Some(e) = e {
            self.expect.push_front(e);
        }
        true
    }

    /// A request that got no success answer: what credswap recorded for it is taken back.
    fn undo(&mut self, e: Expect, server: &mut Server) {
        match e {
            Expect::Parse {
                statement: Some(id),
                client,
                ..
            } => {
                server.prepared.remove(id);
                if let Some(name) = client {
                    self.forget(&name, id);
                }
            }
            Expect::Parse {
                statement: None,
                swallow,
                ..
            } => {
                server.unnamed = None;
                if !swallow {
                    self.unnamed = None;
                }
            }
            Expect::Parsed { client } => {
                if let Some(id) = self.statements.get(&client).map(|s| s.id) {
                    self.forget(&client, id);
                }
            }
            _ => {}
        }
    }

    fn forget(&mut self, name: &[u8], id: u64) {
        if self.statements.get(name).is_some_and(|s| s.id == id) {
            if let Some(s) = self.statements.remove(name) {
                self.statement_bytes -= s.parse.len().min(self.statement_bytes);
            }
        }
    }

    /// credswap's own answers now due (those at the head of the queue) go to `to_client`.
    #[inline]
    pub fn answers_due(&mut self, to_client: &mut BytesMut) {
        if matches!(
            self.expect.front(),
            Some(Expect::Parsed { .. } | Expect::Answer(_))
        ) {
            self.write_answers(to_client);
        }
    }

    fn write_answers(&mut self, to_client: &mut BytesMut) {
        loop {
            match self.expect.front() {
                Some(Expect::Parsed { .. }) => {
                    self.expect.pop_front();
                    to_client.put_slice(&[b'1', 0, 0, 0, 4]);
                }
                Some(Expect::Answer(_)) => {
                    if let Some(Expect::Answer(bytes)) = self.expect.pop_front() {
                        to_client.put_slice(&bytes);
                    }
                }
                _ => return,
            }
        }
    }

    /// The connection is handed back: what this checkout marked is cleared.
    pub fn returned(&mut self) {
        self.dirty = false;
        self.forgot = false;
        self.sets_params = false;
    }
}

/// A client's statement name as an error message shows it: at most 63 bytes (PostgreSQL's
/// identifier length), so that no client makes credswap echo an unbounded name.
fn shown(name: &[u8]) -> String {
    const MAX: usize = 63;
    let mut text = String::from_utf8_lossy(&name[..name.len().min(MAX)]).into_owned();
    if name.len() > MAX {
        text.push_str("...");
    }
    text
}

/// A NUL-terminated field and what follows it (all of it when there is no NUL).
fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|c| *c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_show_at_most_63_bytes_of_a_name() {
        assert_eq!(shown(b"s1"), "s1");
        let long = vec![b'x'; 10_000];
        let text = shown(&long);
        assert_eq!(text.len(), 63 + 3);
        assert!(text.ends_with("..."));
    }
}
