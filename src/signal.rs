//! A flag that turns on once and wakes every task waiting for it, made to be polled again at
//! every wake-up of a busy task for almost nothing: a waiter is registered once, and a poll is
//! an atomic load and an `AtomicWaker` update. Transaction mode polls its shutdown and its
//! connection's drain deadline once per transaction; as `watch` waits, that took a lock each
//! time (2.8 % of its instructions, `dev/profile_wire.py`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// The flag.
#[derive(Debug, Default)]
pub struct Signal {
    fired: AtomicBool,
    waiters: Mutex<Vec<(u64, Arc<AtomicWaker>)>>,
    next: AtomicU64,
}

impl Signal {
    /// Turns the flag on and wakes every waiter; later waits end at once.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        for (_, waker) in self.waiters.lock().expect("never poisoned").iter() {
            waker.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// A wait for the flag, registered until dropped.
    pub fn waiting(self: &Arc<Self>) -> Waiting {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        self.waiters
            .lock()
            .expect("never poisoned")
            .push((id, waker.clone()));
        Waiting {
            signal: self.clone(),
            id,
            waker,
        }
    }
}

/// Resolves once the signal fires; may be polled again after that (it stays ready).
#[derive(Debug)]
pub struct Waiting {
    signal: Arc<Signal>,
    id: u64,
    waker: Arc<AtomicWaker>,
}

impl Future for Waiting {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_fired() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Fired between the check and the registration: the wake may have missed the waker.
        if self.signal.is_fired() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.signal
            .waiters
            .lock()
            .expect("never poisoned")
            .retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_every_waiter_and_stays_fired() {
        let signal = Arc::new(Signal::default());
        let mut first = signal.waiting();
        let second = signal.waiting();
        // Polled once, then woken by the fire from another task.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        let firing = tokio::spawn({
            let signal = signal.clone();
            async move { signal.fire() }
        });
        first.await;
        second.await;
        firing.await.unwrap();
        assert!(signal.is_fired());
        signal.waiting().await;
        drop(signal.waiting());
        assert!(signal.waiters.lock().unwrap().len() <= 1);
    }
}
