//! Operating a running hub: the [`Operation`]s it takes while it runs (shutdown, lame-duck drain,
//! reload) and the state they change, which monitoring reads ([`HubState`]).
//!
//! Live settings sit behind one `Arc` swapped whole on reload ([`HubState::reload`]): a session
//! takes the settings current when it is accepted and keeps them, so a reload applies to new
//! sessions and never changes a limit under a frame in progress. Settings that only a restart
//! can change (the listening sockets, the threads, the log format) are logged and kept. More
//! reloadable settings (users, permissions, certificates) are more fields in the same swap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{info, warn};

use crate::hub::config::{ConfigError, HubConfig};
use crate::hub::router::{HubCounters, KickReason};
use crate::hub::table::SubscriptionTable;

/// What a running hub can be told to do (`tej-hub serve` maps signals to these).
#[derive(Debug)]
pub enum Operation {
    /// Stop accepting, flush and close every connection, return (SIGINT, SIGTERM).
    Shutdown,
    /// Lame duck (SIGUSR2): stop accepting, close every connection at a frame boundary with
    /// `ERR hub draining`, spread over `drain-seconds`, then return.
    Drain,
    /// Apply new settings (SIGHUP, after re-reading the file): what can change live changes for
    /// new sessions; what needs a restart is logged and kept.
    Reload(Box<HubConfig>),
}

/// A set of settings and when it was loaded.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The settings.
    pub config: Arc<HubConfig>,
    /// When they were loaded (start or reload).
    pub at: SystemTime,
}

/// What the accept loop, operations and monitoring share about the running hub.
#[derive(Debug)]
pub(crate) struct HubState {
    loaded: RwLock<Arc<Loaded>>,
    draining: AtomicBool,
    /// When the hub started.
    pub started: Instant,
    /// The address the hub accepts TEJ connections on.
    pub listen: SocketAddr,
    /// Hub-wide counters, the live sessions and per-code traffic.
    pub counters: Arc<HubCounters>,
    /// The subscribers of each code.
    pub table: Arc<SubscriptionTable>,
}

impl HubState {
    /// The state of a hub starting now with `config`.
    pub(crate) fn new(
        config: HubConfig,
        listen: SocketAddr,
        counters: Arc<HubCounters>,
        table: Arc<SubscriptionTable>,
    ) -> HubState {
        HubState {
            loaded: RwLock::new(Arc::new(Loaded {
                config: Arc::new(config),
                at: SystemTime::now(),
            })),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            listen,
            counters,
            table,
        }
    }

    /// The settings now, and when they were loaded.
    pub(crate) fn loaded(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The settings new sessions get.
    pub(crate) fn config(&self) -> Arc<HubConfig> {
        self.loaded().config.clone()
    }

    /// Swaps in `new` for new sessions, keeping (and logging) what only a restart can change.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when `new` does not validate; the old settings stay.
    pub(crate) fn reload(&self, new: &HubConfig) -> Result<(), ConfigError> {
        new.validate()?;
        let old = self.config();
        for setting in old.restart_only_changes(new) {
            warn!(setting, "setting changed in the file needs a restart; kept");
        }
        let applied = old.reloaded(new);
        let changed = applied != *old;
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Loaded {
            config: Arc::new(applied),
            at: SystemTime::now(),
        });
        info!(changed, "configuration reloaded");
        Ok(())
    }

    /// Whether the hub is draining (`/healthz` answers 503).
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Applies a reload received while draining or serving; a refused one is logged.
    fn apply_reload(&self, new: &HubConfig) {
        if let Err(error) = self.reload(new) {
            warn!(%error, "reload refused; the old settings stay");
        }
    }

    /// Handles an operation received while the hub serves; answers whether to go on serving, and
    /// whether to drain before shutting down.
    pub(crate) fn on_operation(&self, operation: Option<Operation>) -> Next {
        match operation {
            Some(Operation::Reload(new)) => {
                self.apply_reload(&new);
                Next::Serve
            }
            Some(Operation::Drain) => Next::Drain,
            Some(Operation::Shutdown) | None => Next::Shutdown,
        }
    }

    /// Lame duck: with the listener already closed, closes every connection at its next frame
    /// boundary (`ERR hub draining`), spread evenly over `drain-seconds`, and waits for them to
    /// end. Returns early on a shutdown; a reload is applied meanwhile. Bounded: after the last
    /// connection is told, it waits at most another drain period plus the stall timeout (a
    /// sender stuck mid-frame is closed by then anyway).
    pub(crate) async fn drain(&self, operations: &mut UnboundedReceiver<Operation>) {
        self.draining.store(true, Ordering::Release);
        let config = self.config();
        let period = config.drain_period();
        let outboxes = self.counters.sessions.snapshot();
        let count = outboxes.len();
        info!(
            connections = count,
            seconds = config.drain_seconds,
            "draining"
        );
        let start = tokio::time::Instant::now();
        for (i, outbox) in outboxes.iter().enumerate() {
            let at = start + period.mul_f64(i as f64 / count as f64);
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => break,
                    operation = operations.recv() => {
                        if self.on_operation(operation) == Next::Shutdown {
                            return info!("shutdown during the drain");
                        }
                    }
                }
            }
            outbox.kick(KickReason::Drain);
        }
        // A connection accepted just before the listener closed may have registered since the
        // list was taken; telling one twice changes nothing.
        for outbox in self.counters.sessions.snapshot() {
            outbox.kick(KickReason::Drain);
        }
        let stall = config.stall_timeout().unwrap_or(Duration::from_secs(30));
        let deadline = tokio::time::Instant::now() + period + stall;
        while self.counters.open.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return warn!("drain period over with connections still open; closing them");
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                operation = operations.recv() => {
                    if self.on_operation(operation) == Next::Shutdown {
                        return info!("shutdown during the drain");
                    }
                }
            }
        }
        info!("drained");
    }
}

/// What the hub does after an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Go on serving.
    Serve,
    /// Drain, then shut down.
    Drain,
    /// Shut down now.
    Shutdown,
}
