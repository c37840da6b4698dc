//! Which of a connection string's hosts a new server connection goes to, and what each host
//! was last seen to be: libpq 14's `target_session_attrs`, followed across a promotion without
//! waiting for a rotation. One book per generation, shared by its HTTP pool and the PostgreSQL
//! front end's raw connections, so both see the same hosts the same way.
//!
//! Every new connection learns its server's kind (in recovery, read-only by default) and is
//! accepted or refused by the target's attributes. A connection remembers its host's *epoch*:
//! a host found unreachable, or no longer the kind the target wants, has its epoch bumped, and
//! every connection opened to it before that is dropped at its next checkout instead of being
//! handed out to fail. A host found *unreachable* (a cancel request could not get to it: the
//! network black-holed it) also has the sockets of its front-end connections shut down, so a
//! session waiting on an answer that will never come fails at once instead of hanging.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::dsn::{Server, SessionAttrs};
use crate::signal::{Signal, Waiting};

/// A host that failed within this long is tried after the others.
const DOWN_FOR: Duration = Duration::from_secs(10);
/// Asks a server whether a session there can write, ignoring the session's own `SET`s: the
/// check after `25006 read_only_sql_transaction` on a writable target (a caller's own `READ
/// ONLY` transaction gives 25006 too, and must not move the target).
pub const STILL_WRITABLE_SQL: &str = "SELECT NOT (pg_is_in_recovery() OR \
    (SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_read_only') = 'on')";

/// How often a `prefer-standby` target on its fallback looks for a standby again: one of its
/// fallback connections is given up, and its replacement tries the standbys first.
const FALLBACK_RECHECK: Duration = Duration::from_secs(5);

/// What a server said it is when a connection was made to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerKind {
    /// `pg_is_in_recovery()` / `in_hot_standby`: a standby.
    pub in_recovery: bool,
    /// `default_transaction_read_only` for a new session.
    pub read_only: bool,
}

impl ServerKind {
    /// Whether a session there can write.
    pub fn writable(self) -> bool {
        !self.in_recovery && !self.read_only
    }

    /// For errors: what this server is.
    pub fn describe(self) -> &'static str {
        match (self.in_recovery, self.read_only) {
            (true, _) => "a standby",
            (false, true) => {
                "a primary whose sessions are read-only (default_transaction_read_only)"
            }
            (false, false) => "a writable primary",
        }
    }

    /// Primary or standby.
    pub fn role(self) -> Role {
        if self.in_recovery {
            Role::Standby
        } else {
            Role::Primary
        }
    }
}

/// A server's place in replication, as status and metrics show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// One pass over the hosts: `prefer-standby` makes two, the first for standbys only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Only,
    Standbys,
    Fallback,
}

impl SessionAttrs {
    /// The passes a connection attempt makes over the hosts.
    pub fn passes(self) -> &'static [Pass] {
        match self {
            SessionAttrs::PreferStandby => &[Pass::Standbys, Pass::Fallback],
            _ => &[Pass::Only],
        }
    }

    /// Whether a server of `kind` serves this target in `pass`.
    pub fn accepts(self, kind: ServerKind, pass: Pass) -> bool {
        match (self, pass) {
            (SessionAttrs::PreferStandby, Pass::Standbys) => kind.in_recovery,
            (SessionAttrs::PreferStandby, _) | (SessionAttrs::Any, _) => true,
            (SessionAttrs::ReadWrite, _) => kind.writable(),
            (SessionAttrs::ReadOnly, _) => !kind.writable(),
            (SessionAttrs::Primary, _) => !kind.in_recovery,
            (SessionAttrs::Standby, _) => kind.in_recovery,
        }
    }

    /// Whether connections are spread over the acceptable hosts (read-only kinds) rather than
    /// kept on the first one that answers (libpq's order).
    fn spreads(self) -> bool {
        matches!(
            self,
            SessionAttrs::Standby | SessionAttrs::PreferStandby | SessionAttrs::ReadOnly
        )
    }
}

/// What the book last saw of a host.
#[derive(Clone, Debug)]
enum Seen {
    Unknown,
    Up { kind: ServerKind },
    Down { at: Instant, error: String },
}

struct Host {
    label: String,
    /// Read without a lock at every checkout; changed only with `open` held, so the count is
    /// always of the connections of the current epoch.
    epoch: AtomicU64,
    /// Connections of the current epoch open to it (stale ones are not counted: they are
    /// closed at their next checkout, and status should not show them as serving).
    open: Mutex<usize>,
    seen: Mutex<(Seen, Option<SystemTime>)>,
    /// A second handle on the socket of each front-end connection open to this host (by lease
    /// id), to shut it down from outside when the host is found unreachable.
    sockets: Mutex<Vec<(u64, std::net::TcpStream)>>,
    /// Fired when the server is found changed (promoted, demoted, fenced), and replaced by a
    /// fresh one: session-mode sessions on it end at their next idle point.
    kind_change: Mutex<Arc<Signal>>,
}

/// A writable target's connections moved to another host.
#[derive(Clone, Debug)]
pub struct HostChange {
    pub from: String,
    pub to: String,
}

/// Called when a writable target's new connections land on another host than before.
#[derive(Clone)]
pub struct OnHostChange(Arc<dyn Fn(HostChange) + Send + Sync>);

impl OnHostChange {
    pub fn new(f: impl Fn(HostChange) + Send + Sync + 'static) -> Self {
        OnHostChange(Arc::new(f))
    }
}

impl std::fmt::Debug for OnHostChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnHostChange")
    }
}

/// The hosts of one generation and what they were last seen to be.
pub struct HostBook {
    attrs: SessionAttrs,
    hosts: Vec<Host>,
    /// Where the next spread connection starts looking.
    next: AtomicUsize,
    /// The host the last writable connection was made on, for the failover event.
    writable: Mutex<Option<usize>>,
    on_change: Option<OnHostChange>,
    /// Bumped when a standby is reached again: connections made on the fallback are left.
    fallback_epoch: AtomicU64,
    /// When a fallback connection was last given up to look for a standby.
    fallback_recheck: Mutex<Instant>,
    /// Ids for the sockets of `Host::sockets`.
    next_socket: AtomicU64,
}

impl std::fmt::Debug for HostBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBook")
            .field("attrs", &self.attrs)
            .field("hosts", &self.hosts.len())
            .finish()
    }
}

/// A host as status shows it.
#[derive(Clone, Debug, Serialize)]
pub struct HostStatus {
    pub host: String,
    /// What it was when last reached (`None`: never reached).
    pub role: Option<Role>,
    pub read_only: Option<bool>,
    /// Server connections of this generation open to it and still lent (HTTP pool and
    /// PostgreSQL front end); those left since it failed or changed are not counted.
    pub connections: usize,
    /// Whether the last attempt to reach it failed.
    pub down: bool,
    pub last_error: Option<String>,
    #[serde(serialize_with = "crate::targets::status::serialize_opt_time")]
    pub last_seen_at: Option<SystemTime>,
}

/// A connection's place on its host: counted while it lives, and stale once the host's epoch
/// moves on.
#[derive(Debug)]
pub struct HostLease {
    book: Arc<HostBook>,
    index: usize,
    epoch: u64,
    /// Made on `prefer-standby`'s fallback pass: the fallback epoch it was made in.
    fallback: Option<u64>,
    /// Given up to look for a standby (stays stale from then on).
    given_up: std::sync::atomic::AtomicBool,
    /// Its socket's entry in `Host::sockets`, if one was given.
    socket: Option<u64>,
    /// `Host::kind_change` when it was made.
    kind_change: Arc<Signal>,
}

/// A host of a generation, for what learns of its failure away from any connection's lease
/// (a cancel request that could not reach it).
#[derive(Clone)]
pub struct HostRef {
    book: Arc<HostBook>,
    index: usize,
}

impl HostRef {
    /// See [`HostLease::host_unreachable`].
    pub fn unreachable(&self, error: &str) {
        self.book.unreachable(self.index, error);
    }
}

impl HostLease {
    /// Whether the host was found gone, or no longer what the target wants, since this
    /// connection was made: it must not be handed out again. A `prefer-standby` connection on
    /// its fallback is also given up once a standby is back, and one of them every
    /// few seconds to look for one.
    pub fn is_stale(&self) -> bool {
        if self.book.hosts[self.index].epoch.load(Ordering::Acquire) != self.epoch {
            return true;
        }
        let Some(fallback) = self.fallback else {
            return false;
        };
        if self.given_up.load(Ordering::Acquire)
            || self.book.fallback_epoch.load(Ordering::Acquire) != fallback
        {
            return true;
        }
        let mut last = self.book.fallback_recheck.lock().expect("never poisoned");
        if last.elapsed() >= FALLBACK_RECHECK {
            *last = Instant::now();
            self.given_up.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// Whether this connection was given up to look for a standby: the caller opens its
    /// replacement now (standbys first), rather than waiting until the pool runs short.
    pub fn looks_for_standby(&self) -> bool {
        self.given_up.load(Ordering::Acquire)
    }

    /// `host:port`.
    pub fn label(&self) -> &str {
        &self.book.hosts[self.index].label
    }

    /// A cancel request could not reach this connection's host (refused, or no answer within
    /// `connect_timeout`: a black-holed network): every connection to it is dropped at its
    /// next checkout, and the front end's connections to it are shut down now, so nothing
    /// waits for an answer from it.
    pub fn host_unreachable(&self, error: &str) {
        self.book.unreachable(self.index, error);
    }

    /// The host, for a cancel key that outlives no lease but must report on it.
    pub fn host_ref(&self) -> HostRef {
        HostRef {
            book: self.book.clone(),
            index: self.index,
        }
    }

    /// Keeps a second handle on this connection's socket, so that the host found unreachable
    /// can shut it down from outside (the session that reads it may be waiting on it).
    pub fn watch_socket(&mut self, socket: std::net::TcpStream) {
        let id = self.book.next_socket.fetch_add(1, Ordering::Relaxed);
        self.book.hosts[self.index]
            .sockets
            .lock()
            .expect("never poisoned")
            .push((id, socket));
        self.socket = Some(id);
    }

    /// Whether the target wants a writable server.
    pub fn wants_writable(&self) -> bool {
        self.book.attrs.wants_writable()
    }

    /// The server said this target's kind of work cannot run there any more (`25006` on a
    /// writable target): its connections are dropped, and new ones check again.
    pub fn host_changed(&self) {
        self.book.changed_kind(self.index);
    }

    /// Resolves once the host is found changed after this connection was made (see
    /// [`HostLease::host_changed`]; also a login that finds the server of another kind). A
    /// session-mode session waits on it to end at its next idle point.
    pub fn kind_changed(&self) -> Waiting {
        self.kind_change.waiting()
    }

    /// Whether that has happened.
    pub fn has_kind_changed(&self) -> bool {
        self.kind_change.is_fired()
    }

    /// Whether the last attempt to reach this connection's host failed (a login, or a cancel
    /// that could not get through): its sockets may have been shut down by credswap.
    pub fn host_is_down(&self) -> bool {
        matches!(
            self.book.hosts[self.index]
                .seen
                .lock()
                .expect("never poisoned")
                .0,
            Seen::Down { .. }
        )
    }

    /// Where this connection is: its host's place in the book.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// One new connection's way over the hosts (`prefer-standby`: standbys, then any): the caller
/// connects to each host [`Walk::next_host`] names and says what came of it; the walk keeps
/// the book and, when no host serves, the error.
pub struct Walk<'a, E> {
    book: &'a Arc<HostBook>,
    pass: usize,
    order: Vec<usize>,
    at: usize,
    /// What each host was, for the error when none serves.
    tried: Vec<String>,
    last: Option<E>,
}

impl<E: std::fmt::Display> Walk<'_, E> {
    /// The next host to try, `None` when all were tried in every pass.
    pub fn next_host(&mut self) -> Option<usize> {
        let passes = self.book.attrs.passes();
        while self.at == self.order.len() {
            self.pass += 1;
            if self.pass == passes.len() {
                return None;
            }
            self.order = self.book.order(passes[self.pass]);
            self.at = 0;
        }
        self.at += 1;
        Some(self.order[self.at - 1])
    }

    /// Host `index` was reached and is `kind`: its lease when the target accepts it in this
    /// pass (else the caller closes the connection).
    pub fn reached(&mut self, index: usize, kind: ServerKind) -> Option<HostLease> {
        let pass = self.book.attrs.passes()[self.pass];
        let lease = self.book.reached(index, kind, pass);
        if lease.is_none() {
            self.tried
                .push(format!("{}: {}", self.book.label(index), kind.describe()));
        }
        lease
    }

    /// Host `index` was not reached. `down`: the host itself failed (unreachable, TLS, no
    /// answer), rather than a running server refusing for now.
    pub fn missed(&mut self, index: usize, error: E, down: bool) {
        if down {
            self.book.failed(index, &error.to_string());
        }
        self.tried.push(error.to_string());
        self.last = Some(error);
    }

    /// The error when no host served: the host's own for a single host or `any`, else
    /// `none_fits(wanted, what each host was)`.
    pub fn finish(self, none_fits: impl FnOnce(&'static str, String) -> E) -> E {
        match self.last {
            Some(e) if self.book.hosts.len() == 1 || self.book.attrs == SessionAttrs::Any => e,
            _ => none_fits(self.book.attrs.as_str(), self.tried.join("; ")),
        }
    }
}

impl Drop for HostLease {
    fn drop(&mut self) {
        let host = &self.book.hosts[self.index];
        {
            let mut open = host.open.lock().expect("never poisoned");
            if host.epoch.load(Ordering::Acquire) == self.epoch {
                *open -= 1;
            }
        }
        if let Some(id) = self.socket {
            host.sockets
                .lock()
                .expect("never poisoned")
                .retain(|(i, _)| *i != id);
        }
    }
}

impl HostBook {
    pub fn new(servers: &[Server], attrs: SessionAttrs, on_change: Option<OnHostChange>) -> Self {
        HostBook {
            attrs,
            hosts: servers
                .iter()
                .map(|s| Host {
                    label: format!("{}:{}", s.host, s.port),
                    epoch: AtomicU64::new(0),
                    open: Mutex::new(0),
                    seen: Mutex::new((Seen::Unknown, None)),
                    sockets: Mutex::new(Vec::new()),
                    kind_change: Mutex::default(),
                })
                .collect(),
            next: AtomicUsize::new(0),
            writable: Mutex::new(None),
            on_change,
            fallback_epoch: AtomicU64::new(0),
            fallback_recheck: Mutex::new(Instant::now()),
            next_socket: AtomicU64::new(0),
        }
    }

    /// The target's attributes.
    pub fn attrs(&self) -> SessionAttrs {
        self.attrs
    }

    /// The order to try the hosts in for one pass: the connection string's, started at the next
    /// host for spread kinds; hosts last seen acceptable first, hosts that just failed last.
    pub fn order(&self, pass: Pass) -> Vec<usize> {
        let n = self.hosts.len();
        let start = if self.attrs.spreads() {
            self.next.fetch_add(1, Ordering::Relaxed) % n.max(1)
        } else {
            0
        };
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        let now = Instant::now();
        order.sort_by_key(
            |&i| match &self.hosts[i].seen.lock().expect("never poisoned").0 {
                Seen::Up { kind, .. } if self.attrs.accepts(*kind, pass) => 0,
                Seen::Unknown => 1,
                Seen::Up { .. } => 2,
                Seen::Down { at, .. } if now.duration_since(*at) < DOWN_FOR => 3,
                Seen::Down { .. } => 1,
            },
        );
        order
    }

    /// The hosts to try for one new connection, in order over the attributes' passes.
    pub fn walk<E>(self: &Arc<Self>) -> Walk<'_, E> {
        Walk {
            book: self,
            pass: 0,
            order: self.order(self.attrs.passes()[0]),
            at: 0,
            tried: Vec::new(),
            last: None,
        }
    }

    /// The label of host `index`.
    pub fn label(&self, index: usize) -> &str {
        &self.hosts[index].label
    }

    /// A connection to host `index` found the server to be `kind`. Returns its lease when the
    /// target accepts it in `pass`.
    pub fn reached(
        self: &Arc<Self>,
        index: usize,
        kind: ServerKind,
        pass: Pass,
    ) -> Option<HostLease> {
        let host = &self.hosts[index];
        let previous = {
            let mut seen = host.seen.lock().expect("never poisoned");
            let previous = seen.0.clone();
            *seen = (Seen::Up { kind }, Some(SystemTime::now()));
            previous
        };
        if let Seen::Up { kind: was, .. } = previous {
            // The server changed (promoted, or fenced read-only): what was opened before was
            // opened to something else.
            if was != kind {
                self.changed_kind(index);
            }
        }
        if !self.attrs.accepts(kind, pass) {
            return None;
        }
        if self.attrs.wants_writable() {
            let moved = {
                let mut writable = self.writable.lock().expect("never poisoned");
                let from = writable.replace(index);
                from.filter(|f| *f != index)
            };
            if let (Some(from), Some(hook)) = (moved, &self.on_change) {
                (hook.0)(HostChange {
                    from: self.hosts[from].label.clone(),
                    to: host.label.clone(),
                });
            }
        }
        let fallback = match pass {
            Pass::Fallback if !kind.in_recovery => {
                Some(self.fallback_epoch.load(Ordering::Acquire))
            }
            Pass::Standbys => {
                // A standby serves again: what runs on the fallback moves back to standbys.
                self.fallback_epoch.fetch_add(1, Ordering::AcqRel);
                None
            }
            _ => None,
        };
        let (epoch, kind_change) = {
            let mut open = host.open.lock().expect("never poisoned");
            *open += 1;
            (
                host.epoch.load(Ordering::Acquire),
                host.kind_change.lock().expect("never poisoned").clone(),
            )
        };
        Some(HostLease {
            book: self.clone(),
            index,
            epoch,
            fallback,
            given_up: std::sync::atomic::AtomicBool::new(false),
            socket: None,
            kind_change,
        })
    }

    /// A connection attempt to host `index` failed before the server said what it is.
    pub fn failed(&self, index: usize, error: &str) {
        let host = &self.hosts[index];
        let was_up = {
            let mut seen = host.seen.lock().expect("never poisoned");
            let was_up = matches!(seen.0, Seen::Up { .. });
            seen.0 = Seen::Down {
                at: Instant::now(),
                error: error.to_string(),
            };
            was_up
        };
        if was_up {
            self.bump(index);
        }
    }

    /// Host `index` could not be reached from outside any connection (a cancel request):
    /// marked down, its connections stale, and the sockets of those the front end holds shut
    /// down, which ends what waits on them with "the server connection closed".
    pub fn unreachable(&self, index: usize, error: &str) {
        let host = &self.hosts[index];
        host.seen.lock().expect("never poisoned").0 = Seen::Down {
            at: Instant::now(),
            error: error.to_string(),
        };
        self.bump(index);
        let sockets = host.sockets.lock().expect("never poisoned");
        for (_, socket) in sockets.iter() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        tracing::warn!(host = %host.label, connections = sockets.len(), error, "a server host is unreachable: its connections are closed, and new ones go to the other hosts");
    }

    /// Host `index` is another kind of server than its connections were made to.
    fn changed_kind(&self, index: usize) {
        let host = &self.hosts[index];
        let mut open = host.open.lock().expect("never poisoned");
        host.epoch.fetch_add(1, Ordering::AcqRel);
        *open = 0;
        // Under the same lock as the epoch, so a lease made meanwhile sees both or neither.
        let fired = std::mem::take(&mut *host.kind_change.lock().expect("never poisoned"));
        fired.fire();
    }

    fn bump(&self, index: usize) {
        let host = &self.hosts[index];
        let mut open = host.open.lock().expect("never poisoned");
        host.epoch.fetch_add(1, Ordering::AcqRel);
        *open = 0;
    }

    /// Every host, for status.
    pub fn status(&self) -> Vec<HostStatus> {
        self.hosts
            .iter()
            .map(|h| {
                let (seen, at) = h.seen.lock().expect("never poisoned").clone();
                let (role, read_only, down, last_error) = match seen {
                    Seen::Unknown => (None, None, false, None),
                    Seen::Up { kind, .. } => (Some(kind.role()), Some(kind.read_only), false, None),
                    Seen::Down { error, .. } => (None, None, true, Some(error)),
                };
                HostStatus {
                    host: h.label.clone(),
                    role,
                    read_only,
                    connections: *h.open.lock().expect("never poisoned"),
                    down,
                    last_error,
                    last_seen_at: at,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsn::Host as DsnHost;

    const PRIMARY: ServerKind = ServerKind {
        in_recovery: false,
        read_only: false,
    };
    const STANDBY: ServerKind = ServerKind {
        in_recovery: true,
        read_only: false,
    };
    const FENCED: ServerKind = ServerKind {
        in_recovery: false,
        read_only: true,
    };

    fn servers(n: u16) -> Vec<Server> {
        (0..n)
            .map(|i| Server {
                host: DsnHost::Tcp(format!("h{i}")),
                port: 5432,
            })
            .collect()
    }

    #[test]
    fn attributes_as_libpq_14_has_them() {
        use SessionAttrs::*;
        let table = [
            (Any, [true, true, true]),
            (ReadWrite, [true, false, false]),
            (ReadOnly, [false, true, true]),
            (Primary, [true, false, true]),
            (Standby, [false, true, false]),
        ];
        for (attrs, want) in table {
            for (kind, w) in [PRIMARY, STANDBY, FENCED].into_iter().zip(want) {
                assert_eq!(attrs.accepts(kind, Pass::Only), w, "{attrs:?} {kind:?}");
            }
        }
        assert!(PreferStandby.accepts(STANDBY, Pass::Standbys));
        assert!(!PreferStandby.accepts(PRIMARY, Pass::Standbys));
        assert!(PreferStandby.accepts(PRIMARY, Pass::Fallback));
    }

    #[test]
    fn a_failed_host_goes_last_and_its_connections_go_stale() {
        let book = Arc::new(HostBook::new(&servers(2), SessionAttrs::ReadWrite, None));
        assert_eq!(book.order(Pass::Only), vec![0, 1]);
        let lease = book.reached(0, PRIMARY, Pass::Only).expect("writable");
        assert!(!lease.is_stale());
        assert_eq!(book.status()[0].connections, 1);
        book.failed(0, "refused");
        assert!(lease.is_stale());
        assert_eq!(book.order(Pass::Only), vec![1, 0]);
        assert_eq!(
            book.status()[0].connections,
            0,
            "a stale connection is not counted"
        );
        drop(lease);
        assert_eq!(book.status()[0].connections, 0);
    }

    #[test]
    fn an_unreachable_host_has_its_watched_sockets_shut_down() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_theirs, _) = listener.accept().unwrap();
        let book = Arc::new(HostBook::new(&servers(2), SessionAttrs::ReadWrite, None));
        let mut lease = book.reached(0, PRIMARY, Pass::Only).unwrap();
        lease.watch_socket(ours.try_clone().unwrap());
        let other = book.reached(1, PRIMARY, Pass::Only).unwrap();
        book.unreachable(0, "cancel: no answer");
        // The reader of the connection sees it end, instead of waiting for the server.
        let mut byte = [0u8; 1];
        assert_eq!(ours.read(&mut byte).unwrap(), 0);
        assert!(lease.is_stale());
        assert!(!other.is_stale());
        let status = book.status();
        assert!(status[0].down);
        assert_eq!(status[0].last_error.as_deref(), Some("cancel: no answer"));
        drop(lease);
        assert!(book.hosts[0].sockets.lock().unwrap().is_empty());
    }

    #[test]
    fn a_promotion_is_reported_once_and_a_demoted_host_goes_stale() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let hook = OnHostChange::new(move |c: HostChange| {
            s.lock().unwrap().push((c.from, c.to));
        });
        let book = Arc::new(HostBook::new(
            &servers(2),
            SessionAttrs::ReadWrite,
            Some(hook),
        ));
        let old = book.reached(0, PRIMARY, Pass::Only).unwrap();
        assert!(book.reached(1, STANDBY, Pass::Only).is_none());
        let new = book.reached(1, PRIMARY, Pass::Only).unwrap();
        let _again = book.reached(1, PRIMARY, Pass::Only).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("h0:5432".to_string(), "h1:5432".to_string())]
        );
        // The old primary comes back as a standby: what was opened to it before is stale.
        assert!(book.reached(0, STANDBY, Pass::Only).is_none());
        assert!(old.is_stale());
        assert!(!new.is_stale());
        assert_eq!(book.order(Pass::Only), vec![1, 0]);
        let status = book.status();
        assert_eq!(status[0].role, Some(Role::Standby));
        assert_eq!(status[1].connections, 2);
    }

    #[test]
    fn a_walk_tries_every_pass_and_names_what_each_host_was() {
        // prefer-standby with no standby up: the primary is refused in the standby pass and
        // taken in the fallback pass, which tries it first.
        let book = Arc::new(HostBook::new(
            &servers(2),
            SessionAttrs::PreferStandby,
            None,
        ));
        let mut walk = book.walk::<String>();
        let mut seen = Vec::new();
        let lease = loop {
            let i = walk
                .next_host()
                .expect("the fallback pass accepts the primary");
            seen.push(i);
            if i == 1 {
                walk.missed(1, "h1:5432: refused".into(), true);
            } else if let Some(lease) = walk.reached(0, PRIMARY) {
                break lease;
            }
        };
        assert_eq!(seen, vec![0, 1, 0]);
        assert!(lease.fallback.is_some());

        // read-write, nothing writable: the error names each host.
        let book = Arc::new(HostBook::new(&servers(2), SessionAttrs::ReadWrite, None));
        let mut walk = book.walk::<String>();
        while let Some(i) = walk.next_host() {
            match i {
                0 => walk.missed(0, "h0:5432: refused".into(), true),
                _ => assert!(walk.reached(1, STANDBY).is_none()),
            }
        }
        let error = walk.finish(|wanted, tried| format!("{wanted}: {tried}"));
        assert_eq!(error, "read-write: h0:5432: refused; h1:5432: a standby");

        // One host: its own error.
        let single = Arc::new(HostBook::new(&servers(1), SessionAttrs::ReadWrite, None));
        let mut walk = single.walk::<String>();
        let i = walk.next_host().unwrap();
        walk.missed(i, "h0:5432: refused".into(), true);
        assert_eq!(walk.next_host(), None);
        assert_eq!(walk.finish(|_, _| unreachable!()), "h0:5432: refused");
    }

    #[test]
    fn standbys_are_spread_and_prefer_standby_falls_back() {
        let book = Arc::new(HostBook::new(
            &servers(3),
            SessionAttrs::PreferStandby,
            None,
        ));
        let firsts: Vec<usize> = (0..3).map(|_| book.order(Pass::Standbys)[0]).collect();
        assert_eq!(firsts, vec![0, 1, 2]);
        let on_primary = book.reached(0, PRIMARY, Pass::Fallback).unwrap();
        assert!(book.reached(0, PRIMARY, Pass::Standbys).is_none());
        let on_standby = book.reached(2, STANDBY, Pass::Standbys).unwrap();
        assert!(
            on_primary.is_stale(),
            "a standby is back: the fallback connection is left"
        );
        assert_eq!(book.order(Pass::Standbys)[0], 2);
        assert!(!on_standby.is_stale());
    }
}
