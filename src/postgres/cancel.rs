//! Cancel keys. Each client session gets a `BackendKeyData` with credswap's own secret (and,
//! in session mode, its server's pid); a
//! `CancelRequest` with that key is forwarded to the server session serving the client at that
//! moment, over the same TLS as that session's connection (never in plaintext when the session
//! is encrypted), and only if the cancelling peer may use the session's target. Keys are linked
//! and unlinked under one lock, so a cancel never reaches a server session after its client has
//! gone (PgBouncer #717).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::access::Peer;
use crate::pool::raw::{self as server, ServerKey};
use crate::targets::TargetHandle;

/// The smallest pid credswap makes up: above the largest a Linux process can have.
const MIN_OWN_PID: i32 = (1 << 22) + 1;

/// The live sessions' keys.
#[derive(Default)]
pub struct CancelKeys {
    sessions: Mutex<HashMap<(i32, i32), Entry>>,
}

/// The server session serving a client now (in transaction mode, none between transactions),
/// shared by the key's entry and its session so that pointing it elsewhere takes no map lookup.
type Serving = Arc<Mutex<Option<Arc<ServerKey>>>>;

struct Entry {
    target: Arc<TargetHandle>,
    server: Serving,
}

/// A session's key; dropping it unlinks the key.
pub struct Registered<'a> {
    keys: &'a CancelKeys,
    pub pid: i32,
    pub secret: i32,
    server: Serving,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.keys
            .sessions
            .lock()
            .expect("never poisoned")
            .remove(&(self.pid, self.secret));
    }
}

impl CancelKeys {
    /// Issues a fresh key for a session served by `server` on `target`.
    pub fn register(
        &self,
        target: Arc<TargetHandle>,
        server: Option<Arc<ServerKey>>,
    ) -> Registered<'_> {
        let mut sessions = self.sessions.lock().expect("never poisoned");
        let (pid, secret) = loop {
            // Session mode: the server's own pid, which drivers compare with a notification's
            // sender and pass to `pg_terminate_backend`. Transaction mode (no one server): a
            // pid no Linux process can have (above `pid_max`'s ceiling, 2^22), so that it never
            // names some other session's backend. The secret is credswap's either way: it is
            // the part that matters.
            let pid = server
                .as_ref()
                .map_or_else(|| rand::random_range(MIN_OWN_PID..i32::MAX), |s| s.pid);
            let key = (pid, rand::random::<i32>());
            if !sessions.contains_key(&key) {
                break key;
            }
        };
        let server = Arc::new(Mutex::new(server));
        sessions.insert(
            (pid, secret),
            Entry {
                target,
                server: server.clone(),
            },
        );
        Registered {
            keys: self,
            pid,
            secret,
            server,
        }
    }

    /// Points a session's key at the server session serving it now.
    pub fn point(&self, key: &Registered<'_>, server: Option<Arc<ServerKey>>) {
        *key.server.lock().expect("never poisoned") = server;
    }

    /// Forwards a cancel request if the key is live and `peer` may use its target (admins
    /// may cancel anything). Says whether it was forwarded; never tells the client.
    pub async fn cancel(&self, pid: i32, secret: i32, peer: Option<&Peer>, admins: &[u32]) -> bool {
        let server = {
            let sessions = self.sessions.lock().expect("never poisoned");
            let Some(entry) = sessions.get(&(pid, secret)) else {
                return false;
            };
            let allowed =
                peer.is_some_and(|p| admins.contains(&p.uid) || entry.target.allows(p).is_some());
            if !allowed {
                tracing::warn!(
                    uid = peer.map(|p| p.uid),
                    target_name = entry.target.name(),
                    "cancel request refused: the peer may not use the session's target"
                );
                return false;
            }
            let Some(server) = entry.server.lock().expect("never poisoned").clone() else {
                return false;
            };
            server
        };
        match server::cancel(&server).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not forward a cancel request");
                false
            }
        }
    }
}
