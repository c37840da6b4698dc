//! The server connections of transaction-mode targets: at most `pool.max_size` per target,
//! lent for one transaction at a time, in arrival order. Only the target's current generation
//! is lent; a connection of an older one is closed when it comes back, so an old generation
//! drains as soon as its in-flight transactions end. Connections are opened with the target's
//! own login and the client parameters credswap does not track (`options`, ...), and are lent
//! only to clients of the same trust domain that asked for the same ones ([`Lane`]).

// Connections are boxed: they move between sessions, the idle list and waiters' channels,
// and a `Server` is large.
#![allow(clippy::vec_box)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::params::Values;
use super::statements::Prepared;
use crate::pool::raw::{self, QuietError, ServerConnection, ServerKey};

pub use crate::postgres::lane::{Lane, Params};

/// A server connection and what credswap knows of its session.
pub struct Server {
    pub conn: ServerConnection,
    pub generation: u64,
    /// Who it may be lent to.
    pub lane: Lane,
    pub prepared: Prepared,
    /// Whose unnamed statement the server holds: (client, that client's parse count).
    pub unnamed: Option<(u64, u64)>,
    /// Reported parameters, as the server last said, and as they were at login.
    pub values: Values,
    pub login: Values,
    /// The server answered `25006 read_only_sql_transaction` since it was lent: on a writable
    /// target, asked whether it is still writable when it comes back.
    pub read_only_error: bool,
    /// The server's cancel key, shared with the client's cancel entry while lent.
    key: Arc<ServerKey>,
    since: Instant,
    slot: Slot,
}

impl Server {
    /// How long since its last transaction ended (or it was opened).
    pub fn idle_for(&self) -> Duration {
        self.since.elapsed()
    }

    /// A newly opened connection in the place `slot` was given for.
    pub fn new(conn: ServerConnection, generation: u64, lane: Lane, slot: Slot) -> Server {
        let login = Values::from_status(&conn.parameter_status);
        Server {
            values: login.clone(),
            login,
            key: Arc::new(conn.key.clone()),
            conn,
            generation,
            lane,
            prepared: Prepared::default(),
            unnamed: None,
            read_only_error: false,
            since: Instant::now(),
            slot,
        }
    }
}

impl Server {
    /// Runs credswap's own `sql` (a `SET` of reported parameters) on the idle connection and
    /// takes in the values it reports. A simple query ends the unnamed statement.
    pub async fn run_quietly(&mut self, sql: &str, within: Duration) -> Result<(), QuietError> {
        self.unnamed = None;
        for (n, v) in raw::run_quietly(&mut self.conn, sql, within).await? {
            self.values.set(&n, &v);
        }
        Ok(())
    }

    /// Where a cancel request for this connection goes.
    pub fn conn_key(&self) -> Arc<ServerKey> {
        self.key.clone()
    }
}

/// What a checkout gets: a connection to use, or a place to open one in.
pub enum Grant {
    Server(Box<Server>),
    Open(Slot),
}

/// A place among a target's `pool.max_size` connections; dropping it frees the place for the
/// next waiter.
pub struct Slot {
    pool: Arc<TargetPool>,
    armed: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.pool.freed();
        }
    }
}

/// One target's connections.
pub struct TargetPool {
    state: Mutex<State>,
    /// The target is gone: everything given back closes, and sessions fetch the new pool.
    retired: AtomicBool,
}

#[derive(Default)]
struct State {
    generation: u64,
    /// Connections open or being opened, lent or not.
    open: usize,
    idle: Vec<Box<Server>>,
    waiters: VecDeque<Waiter>,
}

struct Waiter {
    lane: Lane,
    grant: oneshot::Sender<Grant>,
}

/// Why no connection was lent.
#[derive(Debug)]
pub struct Exhausted;

impl TargetPool {
    fn new() -> Arc<TargetPool> {
        Arc::new(TargetPool {
            state: Mutex::new(State::default()),
            retired: AtomicBool::new(false),
        })
    }

    fn slot(self: &Arc<Self>) -> Slot {
        Slot {
            pool: self.clone(),
            armed: true,
        }
    }

    /// A connection of `generation` in `lane`, or a place to open one, waiting in arrival
    /// order until `deadline`. Connections to close on the way are put in `close`.
    pub async fn checkout(
        self: &Arc<Self>,
        generation: u64,
        lane: &Lane,
        max_size: usize,
        deadline: Instant,
        close: &mut Vec<Box<Server>>,
    ) -> Result<Grant, Exhausted> {
        let mut wait = {
            let mut state = self.state.lock().expect("never poisoned");
            // The caller has just seen `generation` current.
            state.generation = generation;
            state.retire(close);
            if let Some(i) = state.idle.iter().rposition(|s| &s.lane == lane) {
                return Ok(Grant::Server(state.idle.remove(i)));
            }
            if state.open < max_size {
                state.open += 1;
                return Ok(Grant::Open(self.slot()));
            }
            if !state.idle.is_empty() {
                // Another lane's idle connection makes room.
                let mut other = state.idle.remove(0);
                other.slot.armed = false;
                close.push(other);
                return Ok(Grant::Open(self.slot()));
            }
            let (tx, rx) = oneshot::channel();
            state.waiters.push_back(Waiter {
                lane: lane.clone(),
                grant: tx,
            });
            rx
        };
        let timeout = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(timeout, &mut wait).await {
            Ok(Ok(grant)) => Ok(grant),
            Ok(Err(_)) => Err(Exhausted),
            Err(_) => {
                // A grant sent just as the wait timed out is still taken.
                wait.close();
                wait.try_recv().map_err(|_| Exhausted)
            }
        }
    }

    /// Takes back a connection after a transaction; `keep` is false when it must close (its
    /// session is in an unknown state, or its generation is no longer current). What is to be
    /// closed comes back.
    pub fn give_back(&self, mut server: Box<Server>, keep: bool) -> Option<Box<Server>> {
        let mut state = self.state.lock().expect("never poisoned");
        if !keep || self.is_retired() || server.generation != state.generation {
            drop(state);
            return Some(server);
        }
        server.since = Instant::now();
        while let Some(waiter) = state.waiters.pop_front() {
            if waiter.grant.is_closed() {
                continue;
            }
            if waiter.lane == server.lane {
                match waiter.grant.send(Grant::Server(server)) {
                    Ok(()) => return None,
                    Err(Grant::Server(s)) => server = s,
                    Err(Grant::Open(_)) => unreachable!("a server was sent"),
                }
            } else {
                // The waiter is of another lane: this connection closes, its place goes on.
                server.slot.armed = false;
                let slot = Slot {
                    pool: server.slot.pool.clone(),
                    armed: true,
                };
                match waiter.grant.send(Grant::Open(slot)) {
                    Ok(()) => return Some(server),
                    Err(Grant::Open(mut slot)) => {
                        slot.armed = false;
                        server.slot.armed = true;
                    }
                    Err(Grant::Server(_)) => unreachable!("a slot was sent"),
                }
            }
        }
        state.idle.push(server);
        None
    }

    /// A place was freed (a connection closed or never opened): the next waiter gets it.
    fn freed(self: &Arc<Self>) {
        let mut state = self.state.lock().expect("never poisoned");
        while let Some(waiter) = state.waiters.pop_front() {
            if waiter.grant.is_closed() {
                continue;
            }
            let slot = self.slot();
            match waiter.grant.send(Grant::Open(slot)) {
                Ok(()) => return,
                Err(Grant::Open(mut slot)) => slot.armed = false,
                Err(Grant::Server(_)) => unreachable!("a slot was sent"),
            }
        }
        state.open -= 1;
    }

    /// Idle connections to close: of another generation than `current`, or idle past
    /// `idle_timeout` (zero: no limit).
    fn sweep(&self, current: u64, idle_timeout: Duration) -> Vec<Box<Server>> {
        let mut state = self.state.lock().expect("never poisoned");
        state.generation = current;
        let mut close = Vec::new();
        state.retire(&mut close);
        if !idle_timeout.is_zero() {
            let now = Instant::now();
            let (stale, fresh): (Vec<_>, Vec<_>) = state
                .idle
                .drain(..)
                .partition(|s| now.duration_since(s.since) >= idle_timeout);
            state.idle = fresh;
            close.extend(stale);
        }
        close
    }

    /// The target is gone: its idle connections come out, and those lent close when given back.
    fn retire_all(&self) -> Vec<Box<Server>> {
        let mut state = self.state.lock().expect("never poisoned");
        self.retired.store(true, Ordering::Release);
        state.idle.drain(..).collect()
    }

    /// Whether the target is gone (a session then asks [`Pools::target`] again).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Idle connections now.
    pub fn idle(&self) -> usize {
        self.state.lock().expect("never poisoned").idle.len()
    }
}

impl State {
    /// Moves idle connections of an older generation to `close`.
    fn retire(&mut self, close: &mut Vec<Box<Server>>) {
        let generation = self.generation;
        if self.idle.iter().any(|s| s.generation != generation) {
            let (old, current): (Vec<_>, Vec<_>) = self
                .idle
                .drain(..)
                .partition(|s| s.generation != generation);
            self.idle = current;
            close.extend(old);
        }
    }
}

/// The transaction pools of every target.
#[derive(Default)]
pub struct Pools {
    targets: Mutex<HashMap<String, Arc<TargetPool>>>,
}

impl Pools {
    pub fn target(&self, name: &str) -> Arc<TargetPool> {
        let mut targets = self.targets.lock().expect("never poisoned");
        match targets.get(name) {
            Some(p) => p.clone(),
            None => {
                let pool = TargetPool::new();
                targets.insert(name.to_string(), pool.clone());
                pool
            }
        }
    }

    /// Idle connections to close across targets: `current` gives a target's generation and
    /// idle timeout, or `None` when it is gone (everything of it closes).
    pub fn sweep(&self, current: impl Fn(&str) -> Option<(u64, Duration)>) -> Vec<Box<Server>> {
        let mut close = Vec::new();
        let mut gone = Vec::new();
        let pools: Vec<(String, Arc<TargetPool>)> = {
            let mut targets = self.targets.lock().expect("never poisoned");
            targets.retain(|name, pool| match current(name) {
                Some(_) => true,
                None => {
                    gone.push(pool.clone());
                    false
                }
            });
            targets
                .iter()
                .map(|(n, p)| (n.clone(), p.clone()))
                .collect()
        };
        for pool in gone {
            close.extend(pool.retire_all());
        }
        for (name, pool) in pools {
            if let Some((generation, timeout)) = current(&name) {
                close.extend(pool.sweep(generation, timeout));
            }
        }
        close
    }

    /// Idle connections of every target, by name.
    pub fn counts(&self) -> Vec<(String, usize)> {
        self.targets
            .lock()
            .expect("never poisoned")
            .iter()
            .map(|(n, p)| (n.clone(), p.idle()))
            .collect()
    }

    /// Everything idle (at shutdown).
    pub fn drain_all(&self) -> Vec<Box<Server>> {
        self.sweep(|_| None)
    }
}
