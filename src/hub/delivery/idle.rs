//! Idle connections give their read buffers back, so that thousands of idle subscribers do not
//! each pin one (the outbound side holds no buffer of its own: its queue holds shared pieces and
//! shrinks when drained). A session's read side pauses between bursts of traffic; at a pause, a buffer of at most [`SMALL_BUFFER`] bytes is dropped at once (taking a new
//! one costs less than a timer), and a larger one — grown by a burst — when an [`IdleTimer`] fires,
//! [`IDLE_RELEASE`] after the first pause. A busy connection thus keeps its large buffers, giving
//! them back at most once per period, when the timer finds it paused.
//!
//! Why small buffers go at once rather than by the timer too: freed a second later, after
//! thousands of other sessions' allocations, they leave holes the allocator keeps resident; 10,000
//! idle subscribers then cost 7.7 KiB each of RSS instead of 3.7 KiB (measured with `tej-hub bench
//! connections`), for no measurable gain in throughput or latency.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

/// How long after pausing a connection gives back buffers larger than [`SMALL_BUFFER`].
pub(crate) const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// The largest buffer given back as soon as its connection pauses; also the read buffer a session
/// takes when bytes arrive while it holds none.
pub(crate) const SMALL_BUFFER: usize = 4 * 1024;

/// A one-shot timer, armed when a connection may be going idle and not pushed back by traffic
/// after that (arming is cheap to repeat: an armed timer stays as it is). Holds nothing while
/// disarmed.
#[derive(Debug, Default)]
pub(crate) struct IdleTimer(Option<Pin<Box<Sleep>>>);

impl IdleTimer {
    /// Starts the timer unless it is running.
    pub(crate) fn arm(&mut self) {
        if self.0.is_none() {
            self.0 = Some(Box::pin(tokio::time::sleep(IDLE_RELEASE)));
        }
    }

    /// `Ready` once when the armed timer fires (it is then disarmed); `Pending` while it runs
    /// (the task is woken when it fires) or is not armed.
    pub(crate) fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(sleep) = self.0.as_mut() else {
            return Poll::Pending;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.0 = None;
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fired(timer: &mut IdleTimer) {
        std::future::poll_fn(|cx| timer.poll_fired(cx)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn fires_once_after_being_armed() {
        let mut timer = IdleTimer::default();
        let unarmed = tokio::time::timeout(IDLE_RELEASE * 3, fired(&mut timer)).await;
        assert!(unarmed.is_err(), "an unarmed timer never fires");
        timer.arm();
        tokio::time::advance(IDLE_RELEASE / 2).await;
        timer.arm(); // Already armed: not pushed back.
        let started = tokio::time::Instant::now();
        fired(&mut timer).await;
        assert_eq!(started.elapsed(), IDLE_RELEASE / 2);
        assert!(timer.0.is_none(), "disarmed once fired");
    }
}
