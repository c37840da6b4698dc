//! One shutdown signal for the whole daemon, as in mini-redis's `shutdown.rs`: the daemon holds
//! the [`Trigger`]; every listener, connection and stream holds a [`Shutdown`] and stops at its
//! next safe point once it fires. A dropped trigger counts as fired, so nothing outlives it.

use std::sync::Arc;

use tokio::sync::watch;

use crate::signal::{Signal, Waiting};

/// Fires the shutdown.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>, Arc<Signal>);

/// Listens for the shutdown; cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>, Arc<Signal>);

/// A new trigger and its first listener.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    let signal = Arc::new(Signal::default());
    (Trigger(tx, signal.clone()), Shutdown(rx, signal))
}

impl Trigger {
    /// Tells every listener to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
        self.1.fire();
    }

    /// Another listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe(), self.1.clone())
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.1.fire();
    }
}

impl Shutdown {
    /// Whether the shutdown has fired.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the shutdown fires (or its trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// The same wait, for a task that polls it at every wake-up (see [`crate::signal`]).
    pub fn waiting(&self) -> Waiting {
        self.1.waiting()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_for_every_listener_and_when_dropped() {
        let (trigger, mut a) = channel();
        let mut b = trigger.subscribe();
        assert!(!a.is_fired());
        trigger.fire();
        a.wait().await;
        b.wait().await;
        assert!(a.is_fired());

        let (trigger, mut c) = channel();
        let waiting = c.waiting();
        drop(trigger);
        c.wait().await;
        waiting.await;
    }
}
