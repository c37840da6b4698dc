//! Waits made to be polled again at every wake-up of a busy task for almost nothing: a poll is
//! an atomic load and an `AtomicWaker` update, where a `watch` or `Notify` wait takes a lock.
//! [`Signal`] turns on once for many waiters (the shutdown, a generation's drain deadline, a
//! host found changed); [`Bell`] rings any number of times for one (a session's `25006`).
//! Transaction mode polls its shutdown and drain-deadline waits once per transaction: as
//! `watch` waits they cost 13,146 against 12,815 daemon instructions per transaction
//! (`dev/profile_wire.py 16 15 txn`); session mode polls its waits at every wake-up.

use std::collections::HashMap;
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
    /// By id: a daemon with many clients holds as many waits on its shutdown, and each
    /// leaves when its session ends.
    waiters: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
    next: AtomicU64,
}

impl Signal {
    /// Turns the flag on and wakes every waiter; later waits end at once.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        for waker in self.waiters.lock().expect("never poisoned").values() {
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
            .insert(id, waker.clone());
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
            .remove(&self.id);
    }
}

/// Rings any number of times for one waiting task: each ring is seen once by the next poll of
/// [`Bell::rung`] after it.
#[derive(Debug, Default)]
pub struct Bell {
    rung: AtomicBool,
    waker: AtomicWaker,
}

impl Bell {
    pub fn ring(&self) {
        self.rung.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Resolves at the next ring (or at once for one not seen yet).
    pub fn rung(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.rung.swap(false, Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
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

    #[tokio::test]
    async fn a_bell_is_heard_once_per_ring() {
        let bell = Arc::new(Bell::default());
        let ringing = tokio::spawn({
            let bell = bell.clone();
            async move { bell.ring() }
        });
        bell.rung().await;
        ringing.await.unwrap();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut again = std::pin::pin!(bell.rung());
        assert!(again.as_mut().poll(&mut cx).is_pending(), "heard already");
        bell.ring();
        assert!(again.as_mut().poll(&mut cx).is_ready());
    }
}
