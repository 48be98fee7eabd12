//! What one client may take of the hub: connections ([`Admission`]: `max-connections`,
//! `max-connections-per-ip`) and read bandwidth ([`IngressLimit`]: `max-ingress-bytes-per-sec`).
//!
//! Admission is decided in the accept loop, before a session exists: a connection over a limit
//! gets `ERR too many connections` and is closed, and nobody else notices. The ingress limit is
//! lossless: the session reads its socket no faster than the rate (TCP pushes back on the client),
//! and the time it is held back never counts as idle, stalled or slow.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::hub::config::HubConfig;
use crate::hub::ops::counters::HubCounters;

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// `max-connections` are open.
    #[error("too many connections: {open} open, at most {max}")]
    Hub {
        /// Open now.
        open: u64,
        /// The limit.
        max: u64,
    },
    /// `max-connections-per-ip` are open from this address.
    #[error("too many connections from {ip}: at most {max}")]
    PerIp {
        /// The address.
        ip: IpAddr,
        /// The limit.
        max: u64,
    },
}

/// The open connections per address, checked against the connection limits.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Open connections per address (counted while `max-connections-per-ip` is on). Touched at
    /// accept and close only, never per frame.
    per_ip: Mutex<HashMap<IpAddr, u64>>,
}

/// One admitted connection's place in its address's count; given back when dropped.
#[derive(Debug)]
pub(crate) struct IpSlot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// No connection yet.
    pub(crate) fn new() -> Arc<Admission> {
        Arc::new(Admission::default())
    }

    /// Admits a connection from `ip` under the limits of `config` (0 is none, and they may change
    /// with a reload), given the hub's open connections.
    ///
    /// # Errors
    /// [`Refused`] naming the limit it is over.
    pub(crate) fn admit(
        self: &Arc<Admission>,
        ip: IpAddr,
        counters: &HubCounters,
        config: &HubConfig,
    ) -> Result<Option<IpSlot>, Refused> {
        let (max, max_per_ip) = (config.max_connections, config.max_connections_per_ip);
        let open = counters.open.load(Ordering::Acquire);
        if max > 0 && open >= max {
            return Err(Refused::Hub { open, max });
        }
        if max_per_ip == 0 {
            return Ok(None);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= max_per_ip {
            return Err(Refused::PerIp {
                ip,
                max: max_per_ip,
            });
        }
        *count += 1;
        Ok(Some(IpSlot {
            admission: self.clone(),
            ip,
        }))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self
            .admission
            .per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A connection's read budget: a token bucket of bytes filled at `rate` per second, holding at
/// most a tenth of a second's worth, so that an idle connection cannot save up a burst.
#[derive(Debug)]
pub(crate) struct IngressLimit {
    rate: u64,
    /// Bytes that may be read now; negative after a read larger than the budget.
    tokens: f64,
    filled: Instant,
    wait: Option<Pin<Box<Sleep>>>,
}

impl IngressLimit {
    /// A limit of `rate` bytes per second; `None` when 0 (off).
    pub(crate) fn new(rate: u64) -> Option<IngressLimit> {
        (rate > 0).then(|| IngressLimit {
            rate,
            tokens: 0.0,
            filled: Instant::now(),
            wait: None,
        })
    }

    /// `Ready` when the connection may be read; otherwise the task is woken when it may.
    pub(crate) fn poll_allowed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        let rate = self.rate as f64;
        let elapsed = now.duration_since(self.filled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate / 10.0);
        self.filled = now;
        if self.tokens >= 0.0 {
            self.wait = None;
            return Poll::Ready(());
        }
        let due = now + Duration::from_secs_f64(-self.tokens / rate);
        let wait = self
            .wait
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        wait.as_mut().reset(due);
        match wait.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.wait = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Takes `bytes` just read out of the budget.
    pub(crate) fn consume(&mut self, bytes: u64) {
        self.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_at_the_rate() {
        let mut limit = IngressLimit::new(1000).unwrap_or_else(|| panic!("a rate of 1000 is on"));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(limit.poll_allowed(&mut cx).is_ready());
        limit.consume(500);
        assert!(limit.poll_allowed(&mut cx).is_pending(), "500 bytes ahead");
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(limit.poll_allowed(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(limit.poll_allowed(&mut cx).is_ready());
        assert!(IngressLimit::new(0).is_none());
    }

    #[test]
    fn admission_counts_per_address() {
        let config = HubConfig {
            max_connections_per_ip: 2,
            ..HubConfig::default()
        };
        let admission = Admission::new();
        let counters = HubCounters::default();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let first = admission.admit(ip, &counters, &config);
        let second = admission.admit(ip, &counters, &config);
        assert!(matches!(
            admission.admit(ip, &counters, &config),
            Err(Refused::PerIp { max: 2, .. })
        ));
        assert!(admission
            .admit(IpAddr::from([127, 0, 0, 2]), &counters, &config)
            .is_ok());
        drop(first);
        assert!(admission.admit(ip, &counters, &config).is_ok());
        drop(second);
    }
}
