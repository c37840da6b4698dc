//! Server connections kept between sessions (session pooling). A client that leaves at an idle
//! point (no transaction open, every request answered, nothing half-sent) leaves its server
//! connection behind; it is reset with `DISCARD ALL` ([`crate::pool::raw::reset`]) and parked here
//! for the next client of the same target, generation and trust domain ([`Lane`]) that asks
//! with the same startup parameters. Parameters are matched exactly instead of being re-applied with `SET`: a
//! connection opened with a client's `options` and `application_name` is, after `DISCARD ALL`,
//! exactly what a fresh login with those parameters gives (RESET ALL returns to the login's
//! values), so nothing has to be translated and a parameter the server refuses still gets the
//! server's own error at login.
//!
//! Only the target's current generation is parked: connections of a generation swapped out
//! are closed (by the sweeper on every rotation, and lazily here), so old credentials are not
//! kept alive by idle connections. Parked connections count against `pool.max_size` together
//! with the sessions, and close after `pool.idle_timeout`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pool::raw::ServerConnection;

use super::lane::Lane;

struct Parked {
    lane: Lane,
    conn: ServerConnection,
    since: Instant,
}

#[derive(Default)]
struct TargetIdle {
    generation: u64,
    parked: Vec<Parked>,
}

/// The parked connections of every target.
#[derive(Default)]
pub struct IdleServers {
    targets: Mutex<HashMap<String, TargetIdle>>,
}

/// A connection taken from the park, and those to close on the way (expired, of an old
/// generation, or evicted to stay within `pool.max_size`).
pub struct Taken {
    pub conn: Option<ServerConnection>,
    pub close: Vec<ServerConnection>,
}

impl IdleServers {
    /// A parked connection of `generation` in `lane`, the most recently parked
    /// first. When there is none and `others_open` sessions plus the parked connections would
    /// leave no room for one more within `max_size`, the oldest parked one is evicted.
    pub fn take(
        &self,
        target: &str,
        generation: u64,
        lane: &Lane,
        idle_timeout: Duration,
        others_open: usize,
        max_size: usize,
    ) -> Taken {
        let mut targets = self.targets.lock().expect("never poisoned");
        let idle = targets.entry(target.to_string()).or_default();
        let mut close = idle.retire(generation, idle_timeout);
        let found = idle.parked.iter().rposition(|p| &p.lane == lane);
        let conn = match found {
            Some(i) => Some(idle.parked.remove(i).conn),
            None => {
                if !idle.parked.is_empty() && idle.parked.len() + others_open >= max_size {
                    close.push(idle.parked.remove(0).conn);
                }
                None
            }
        };
        Taken { conn, close }
    }

    /// Parks a reset connection of `generation`, which the caller has just seen current; what
    /// cannot be kept (another generation's, no room) is returned to be closed.
    pub fn park(
        &self,
        target: &str,
        generation: u64,
        lane: Lane,
        conn: ServerConnection,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Vec<ServerConnection> {
        let mut targets = self.targets.lock().expect("never poisoned");
        let idle = targets.entry(target.to_string()).or_default();
        let mut close = idle.retire(generation, idle_timeout);
        if max_idle == 0 {
            close.push(conn);
            return close;
        }
        if idle.parked.len() >= max_idle {
            close.push(idle.parked.remove(0).conn);
        }
        idle.parked.push(Parked {
            lane,
            conn,
            since: Instant::now(),
        });
        close
    }

    /// Takes out what is no longer to be kept: every connection of a target that is gone
    /// (`None`) or of a generation other than `current`, and those idle past `idle_timeout`.
    pub fn sweep(
        &self,
        current: impl Fn(&str) -> Option<(u64, Duration)>,
    ) -> Vec<ServerConnection> {
        let mut targets = self.targets.lock().expect("never poisoned");
        let mut close = Vec::new();
        targets.retain(|name, idle| match current(name) {
            Some((generation, timeout)) => {
                close.extend(idle.retire(generation, timeout));
                true
            }
            None => {
                close.extend(idle.parked.drain(..).map(|p| p.conn));
                false
            }
        });
        close
    }

    /// Parked connections of `target`.
    pub fn count(&self, target: &str) -> usize {
        self.targets
            .lock()
            .expect("never poisoned")
            .get(target)
            .map_or(0, |t| t.parked.len())
    }

    /// Parked connections of every target that has had any.
    pub fn counts(&self) -> Vec<(String, usize)> {
        self.targets
            .lock()
            .expect("never poisoned")
            .iter()
            .map(|(name, t)| (name.clone(), t.parked.len()))
            .collect()
    }

    /// Everything parked (at shutdown).
    pub fn drain_all(&self) -> Vec<ServerConnection> {
        let mut targets = self.targets.lock().expect("never poisoned");
        targets
            .drain()
            .flat_map(|(_, t)| t.parked.into_iter().map(|p| p.conn))
            .collect()
    }
}

impl TargetIdle {
    /// Moves to `generation` when it is another (the old one's connections go), and takes out
    /// connections idle past `timeout` (zero: no limit).
    fn retire(&mut self, generation: u64, timeout: Duration) -> Vec<ServerConnection> {
        let mut close = Vec::new();
        if generation != self.generation {
            self.generation = generation;
            close.extend(self.parked.drain(..).map(|p| p.conn));
        }
        if !timeout.is_zero() {
            let now = Instant::now();
            let (stale, fresh): (Vec<_>, Vec<_>) = self
                .parked
                .drain(..)
                .partition(|p| now.duration_since(p.since) >= timeout);
            self.parked = fresh;
            close.extend(stale.into_iter().map(|p| p.conn));
        }
        close
    }
}
