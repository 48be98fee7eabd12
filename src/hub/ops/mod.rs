//! Operating a running hub: the [`Operation`]s it takes while it runs (shutdown, lame-duck drain,
//! reload) and the state they change, which monitoring reads ([`HubState`]).
//!
//! Live settings sit behind one `Arc` swapped whole on reload ([`HubState::reload`]): a session
//! takes the settings current when it is accepted and keeps them, so a reload applies to new
//! sessions and never changes a limit under a frame in progress. Users and permissions are the
//! exception: every open session is told ([`Outbox::reauthorize`]) and takes its user's new
//! permissions at once — losing the subscriptions they no longer cover — or is closed with
//! `ERR auth revoked` when its user is gone. Certificates apply to new handshakes. Settings that
//! only a restart can change (the listening sockets, the threads, the log format) are logged and
//! kept.
//!
//! [`Outbox::reauthorize`]: crate::hub::delivery::outbox::Outbox

pub(crate) mod counters;
pub(crate) mod monitor;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{info, warn};

use crate::hub::auth::Users;
use crate::hub::cluster::Cluster;
use crate::hub::config::{ConfigError, HubConfig};
use crate::hub::delivery::table::SubscriptionTable;
use crate::hub::durable::Durables;
use crate::hub::ops::counters::HubCounters;
use crate::hub::session::KickReason;
use crate::hub::tls::TlsListener;

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
pub(crate) struct Loaded {
    /// The settings.
    pub config: Arc<HubConfig>,
    /// Their users, resolved (`None`: an open hub).
    pub users: Option<Arc<Users>>,
    /// Their TLS settings, for new handshakes (`None`: plain TCP).
    pub tls: Option<Arc<TlsListener>>,
    /// When they were loaded (start or reload).
    pub at: SystemTime,
}

impl Loaded {
    /// `config` resolved.
    ///
    /// # Errors
    /// What [`HubConfig::validate`] finds, users that cannot be resolved, TLS files that cannot be
    /// used.
    pub(crate) fn new(config: HubConfig) -> Result<Loaded, ConfigError> {
        config.validate()?;
        Ok(Loaded {
            users: Users::from_config(&config)?,
            tls: TlsListener::from_config(&config)?.map(Arc::new),
            config: Arc::new(config),
            at: SystemTime::now(),
        })
    }
}

/// The settings, never the users' hashes or keys.
impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("config", &self.config)
            .field("users", &self.users)
            .field("tls", &self.tls.is_some())
            .field("at", &self.at)
            .finish()
    }
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
    /// The cluster this hub belongs to, if any.
    pub cluster: Option<Arc<Cluster>>,
    /// The durable cursors and, through them, the store and its counters (`None`: no durable
    /// code).
    pub durables: Option<Arc<Durables>>,
}

impl HubState {
    /// The state of a hub starting now with `loaded` settings.
    pub(crate) fn new(
        loaded: Loaded,
        listen: SocketAddr,
        counters: Arc<HubCounters>,
        table: Arc<SubscriptionTable>,
        cluster: Option<Arc<Cluster>>,
        durables: Option<Arc<Durables>>,
    ) -> HubState {
        HubState {
            loaded: RwLock::new(Arc::new(loaded)),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            listen,
            counters,
            table,
            cluster,
            durables,
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
        let old = self.config();
        let applied = old.reloaded(new);
        let loaded = Loaded::new(applied)?;
        for setting in old.restart_only_changes(new) {
            warn!(setting, "setting changed in the file needs a restart; kept");
        }
        let changed = *loaded.config != *old;
        let users_changed =
            (old.users != loaded.config.users) || (old.anonymous != loaded.config.anonymous);
        let users = loaded.users.clone();
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        info!(changed, users_changed, "configuration reloaded");
        if users_changed {
            for outbox in self.counters.sessions.snapshot() {
                outbox.reauthorize(users.clone());
            }
        }
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
