//! A generation: one verified pool and what it was built from. Requests load the current one;
//! a swap replaces it with one atomic store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{watch, Notify};

use crate::pool::VerifiedPool;
use crate::secret::Lease;

use super::report::Trigger;

/// The pool that serves a target, with its provenance. Never holds the password.
#[derive(Debug)]
pub struct Generation {
    /// Increases with every swap; shown in `application_name` as `/g<id>`.
    pub id: u64,
    pub pool: VerifiedPool,
    pub credential_version: String,
    pub username: String,
    pub built_at: SystemTime,
    pub trigger: Trigger,
    pub lease: Option<Lease>,
    /// The PostgreSQL front end's sessions on this generation.
    pub sessions: Sessions,
}

/// The PostgreSQL front end's sessions on a generation: counted, so its drain waits for them,
/// and told to end at their next idle point once the drain deadline has passed.
#[derive(Debug)]
pub struct Sessions {
    open: AtomicUsize,
    /// Server connections the front end keeps idle between its clients on this generation.
    kept: AtomicUsize,
    left: Notify,
    end: watch::Sender<bool>,
    /// The same as `end`, for transaction mode's wait at every transaction.
    end_signal: Arc<crate::signal::Signal>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            open: AtomicUsize::new(0),
            kept: AtomicUsize::new(0),
            left: Notify::new(),
            end: watch::channel(false).0,
            end_signal: Arc::default(),
        }
    }
}

/// A session's place on its generation; dropping it leaves.
#[derive(Debug)]
pub struct SessionGuard(Arc<Generation>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions.open.fetch_sub(1, Ordering::AcqRel);
        self.0.sessions.left.notify_waiters();
    }
}

impl SessionGuard {
    /// The generation the session is on.
    pub fn generation(&self) -> &Arc<Generation> {
        &self.0
    }
}

impl Sessions {
    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Server connections kept idle between clients, as the front end last counted them.
    pub fn kept(&self) -> usize {
        self.kept.load(Ordering::Acquire)
    }

    /// The front end's count of its kept server connections on this generation.
    pub fn set_kept(&self, n: usize) {
        self.kept.store(n, Ordering::Release);
    }

    /// Resolves when a session leaves (enable it, then check [`Sessions::open`]).
    pub fn left(&self) -> tokio::sync::futures::Notified<'_> {
        self.left.notified()
    }

    /// Tells every session to end at its next idle point.
    pub fn end_at_idle(&self) {
        self.end.send_replace(true);
        self.end_signal.fire();
    }

    /// Turns true when sessions should end at their next idle point.
    pub fn ending(&self) -> watch::Receiver<bool> {
        self.end.subscribe()
    }

    /// The same, as a wait that is cheap to poll at every wake-up (see [`crate::signal`]).
    pub fn ending_wait(&self) -> crate::signal::Waiting {
        self.end_signal.waiting()
    }
}

impl Generation {
    /// Counts a new session on this generation.
    pub fn join(self: &Arc<Self>) -> SessionGuard {
        self.sessions.open.fetch_add(1, Ordering::AcqRel);
        SessionGuard(self.clone())
    }
}

/// `application_name` for a generation: the url's name (or `credswap/<target>`) and `/g<id>`,
/// within PostgreSQL's 63 bytes.
pub fn application_name(base: Option<&str>, target: &str, id: u64) -> String {
    let suffix = format!("/g{id}");
    let base = match base {
        Some(b) => b.to_string(),
        None => format!("credswap/{target}"),
    };
    let room = 63usize.saturating_sub(suffix.len());
    let mut cut = base.len().min(room);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &base[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(application_name(None, "app_rw", 7), "credswap/app_rw/g7");
        assert_eq!(
            application_name(Some("billing"), "app_rw", 12),
            "billing/g12"
        );
        let long = "x".repeat(80);
        let n = application_name(Some(&long), "t", 123);
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("/g123"));
    }
}
