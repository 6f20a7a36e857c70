//! Waiting on the server's stop token from hot loops (a connection between requests, the
//! accept loop).
//!
//! One `CancellationToken` serves every connection of every worker thread, and both its
//! `cancelled()` future and `is_cancelled()` take the token's lock on every poll or check:
//! a process-wide lock taken several times per request. [`Stopped`] registers with the
//! token once, with a waker of its own that raises a flag when the token fires; after
//! that, a poll or a check is an atomic load (and an `AtomicWaker` update).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

pin_project! {
    /// Resolves when the token is cancelled (at once if it already is).
    pub struct Stopped<'a> {
        token: &'a CancellationToken,
        // Polled once, with `relay`'s waker: the token keeps that waker until it fires.
        #[pin]
        wait: WaitForCancellationFuture<'a>,
        registered: bool,
        relay: Arc<Relay>,
    }
}

/// The waker the token holds: raises `fired`, then wakes whichever task polled last.
#[derive(Default)]
struct Relay {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<'a> Stopped<'a> {
    pub fn new(token: &'a CancellationToken) -> Self {
        Stopped {
            token,
            wait: token.cancelled(),
            registered: false,
            relay: Arc::default(),
        }
    }

    /// Whether the token is cancelled; without its lock once this future was polled.
    pub fn is_stopped(&self) -> bool {
        if self.registered {
            self.relay.fired.load(Ordering::Acquire)
        } else {
            self.token.is_cancelled()
        }
    }
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.relay.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        // Before the registration below, so that a cancellation racing with it wakes
        // this task.
        this.relay.task.register(cx.waker());
        if !*this.registered {
            *this.registered = true;
            let relay = Waker::from(this.relay.clone());
            if this.wait.poll(&mut Context::from_waker(&relay)).is_ready() {
                this.relay.fired.store(true, Ordering::Release);
                return Poll::Ready(());
            }
        }
        if this.relay.fired.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn resolves_at_once_when_already_cancelled() {
        let token = CancellationToken::new();
        token.cancel();
        let stopped = Stopped::new(&token);
        assert!(stopped.is_stopped());
        tokio::time::timeout(Duration::from_secs(5), stopped)
            .await
            .expect("a cancelled token must resolve at once");
    }

    #[tokio::test]
    async fn a_waiting_task_wakes_when_the_token_is_cancelled() {
        let token = CancellationToken::new();
        let (polled_tx, polled_rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let token = token.clone();
            tokio::spawn(async move {
                let stopped = Stopped::new(&token);
                tokio::pin!(stopped);
                // Polled (and so registered) before the cancellation: then only the
                // relay can wake this task.
                assert!(futures_util::poll!(stopped.as_mut()).is_pending());
                assert!(!stopped.is_stopped());
                polled_tx.send(()).unwrap();
                stopped.as_mut().await;
                stopped.is_stopped()
            })
        };
        polled_rx.await.unwrap();
        token.cancel();
        let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiting task was not woken")
            .unwrap();
        assert!(seen, "is_stopped after the wake-up");
    }

    #[tokio::test]
    async fn the_last_waker_polled_with_is_the_one_woken() {
        // Registered with a waker that wakes nothing; then this task waits: the relay
        // must wake this task, not the first waker.
        let token = CancellationToken::new();
        let mut stopped = Box::pin(Stopped::new(&token));
        let noop = &mut Context::from_waker(Waker::noop());
        assert!(stopped.as_mut().poll(noop).is_pending());
        let canceller = {
            let token = token.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                token.cancel();
            })
        };
        tokio::time::timeout(Duration::from_secs(5), stopped.as_mut())
            .await
            .expect("not woken after the waker changed");
        canceller.await.unwrap();
    }
}
