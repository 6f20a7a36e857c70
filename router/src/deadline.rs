//! Deadlines on a reused timer.
//!
//! A tokio `Sleep` of its own per request costs a timer-wheel insert and removal each
//! time (about 1 000 instructions, a twentieth of a proxied keep-alive request). The
//! deadlines of one connection only move forward, so one timer serves them all: it stays
//! where it was set and is moved on to the current deadline only when it fires early.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

/// A timer a connection lends to its requests for their deadlines.
pub type LentTimer<'a> = Pin<&'a mut Sleep>;

/// Resolves at `deadline`, using `timer`, which may be set for another deadline.
pub fn reached(mut timer: LentTimer<'_>, deadline: Instant) -> Reached<'_> {
    if timer.deadline() > deadline {
        // The one case that moves the timer back: a deadline sooner than its own.
        timer.as_mut().reset(deadline);
    }
    Reached { timer, deadline }
}

/// See [`reached`].
pub struct Reached<'a> {
    timer: LentTimer<'a>,
    deadline: Instant,
}

impl Future for Reached<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if self.timer.deadline() >= deadline {
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

pin_project_lite::pin_project! {
    /// `future`, or `Err(Elapsed)` once the deadline is reached first.
    pub struct Before<'a, F> {
        #[pin]
        future: F,
        deadline: Reached<'a>,
    }
}

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `future` until `deadline`, kept by `timer`.
pub fn before<F: Future>(future: F, timer: LentTimer<'_>, deadline: Instant) -> Before<'_, F> {
    Before {
        future,
        deadline: reached(timer, deadline),
    }
}

impl<F: Future> Future for Before<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.future.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        Pin::new(this.deadline).poll(cx).map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_timer_set_later_fires_at_the_sooner_deadline() {
        let timer = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(timer);
        let start = Instant::now();
        reached(timer.as_mut(), start + Duration::from_secs(1)).await;
        assert_eq!(Instant::now(), start + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_set_sooner_moves_on_to_the_later_deadline() {
        let timer = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(timer);
        let start = Instant::now();
        reached(timer.as_mut(), start + Duration::from_secs(5)).await;
        assert_eq!(Instant::now(), start + Duration::from_secs(5));
        // A passed deadline resolves at once; the next one waits again.
        reached(timer.as_mut(), start + Duration::from_secs(5)).await;
        assert_eq!(Instant::now(), start + Duration::from_secs(5));
        reached(timer.as_mut(), start + Duration::from_secs(7)).await;
        assert_eq!(Instant::now(), start + Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn before_gives_the_output_or_elapsed_at_the_deadline() {
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let start = Instant::now();
        let quick = before(async { 7 }, timer.as_mut(), start + Duration::from_secs(3)).await;
        assert_eq!(quick, Ok(7));
        let slow = before(
            tokio::time::sleep(Duration::from_secs(10)),
            timer.as_mut(),
            start + Duration::from_secs(3),
        )
        .await;
        assert_eq!(slow, Err(Elapsed));
        assert_eq!(Instant::now(), start + Duration::from_secs(3));
    }
}
