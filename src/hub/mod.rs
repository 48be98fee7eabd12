//! tej-hub: the pub/sub relay. Every TCP connection is a `session` actor reading the TEJ
//! stream; a publication (any status but 2 and 127) is delivered by the publishing session's own
//! thread to every subscriber of its code (`delivery`), and the `router` actor owns who is
//! subscribed to what. Status 2 is answered (ping), status 127 is the [`control`] channel (`SUB`,
//! `UNSUB`, `ECHO`, `INFO`, `SLOW`, `AUTH`).
//!
//! - [`run`] serves a bound listener inside an actix `System` until a shutdown future completes;
//!   [`spawn`] does the same on a thread of its own (tests, embedding).
//! - Sessions are spread over `workers` arbiters (threads); the router shares the first one; the
//!   thread that calls [`run`] only accepts. docs/architecture.md draws the whole path.
//! - [`run_operated`] takes [`Operation`]s while it runs: shutdown, lame-duck drain, reload
//!   (`tej-hub serve` maps SIGTERM, SIGUSR2 and SIGHUP to them); with `http` set it serves the
//!   monitoring endpoints and the dashboard (docs/operations.md).
//! - Every connection holds a file descriptor: [`raise_open_files_limit`] lifts the process's soft
//!   limit to its hard one (`tej-hub serve` calls it at start; [`run`] leaves process-wide limits
//!   alone).
//!
//! # Layout
//! - Connections: `session` (the actor per connection), `router` (registration and
//!   subscriptions, the only writer of the subscription table),
//!   [`control`] (the control grammar), `client` ([`HubClient`], for applications).
//! - `delivery`: the data path — relay codec, publisher, subscription table, queue groups,
//!   outbox, flow control, transport, idle buffers; its module doc states the ordering rules and the lock order.
//! - Admission and identity: `admission` (connection limits, ingress rate), [`auth`] (users,
//!   permissions), [`tls`] (the TLS listener), [`config`] (settings from TOML and flags).
//! - `ops`: operating a running hub — shutdown, drain, reload, the live settings, the counters
//!   and the monitoring listener.
//! - `cluster`: hubs federated through NATS (docs/cluster.md).
//! - `rlimit`: the open-files limit.

mod admission;
pub mod auth;
mod client;
mod cluster;
pub mod config;
pub mod control;
mod delivery;
mod durable;
mod ops;
mod rlimit;
mod router;
mod session;
pub mod store;
mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Arbiter};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{debug, info, warn};

use crate::hub::config::{ConfigError, HubConfig};
use crate::hub::control::CodeSet;
use crate::hub::durable::Durables;
use crate::hub::ops::counters::{ConnectionGuard, HubCounters};
use crate::hub::session::SessionId;
use crate::hub::store::{Backend, Store, StoreCounters, StoreSettings};
use admission::{Admission, IpSlot, Refused};
use auth::Authenticated;
pub use client::{Credentials, Delivery, HubClient, HubError, HubOptions};
use cluster::Cluster;
use delivery::table::SubscriptionTable;
use delivery::transport::Transport;
pub use ops::Operation;
use ops::{HubState, Loaded, Next};
pub use rlimit::raise_open_files_limit;
use router::{Router, Shutdown};
use session::{Session, SessionContext};
pub use tls::TlsError;
use tls::TlsListener;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long shutdown waits for sessions to flush what they have queued.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// TCP keepalive: probe a silent peer after this long, so dead peers are found.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `listener` with `config` until `shutdown` completes; then stops accepting, lets every
/// session flush what it has queued (at most a few seconds) and returns.
///
/// Must run inside an actix `System` (e.g. `actix_rt::System::new().block_on(..)`).
///
/// # Errors
/// An invalid configuration, or a listener that cannot be used.
pub async fn run(
    listener: std::net::TcpListener,
    config: HubConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (operations, received) = unbounded_channel();
    let serving = run_operated(listener, None, config, received);
    tokio::pin!(serving);
    tokio::pin!(shutdown);
    tokio::select! {
        served = &mut serving => return served,
        () = &mut shutdown => {
            let _ = operations.send(Operation::Shutdown);
        }
    }
    serving.await
}

/// Serves `listener` with `config`, taking [`Operation`]s until a shutdown (or until every sender
/// of `operations` is gone) or the end of a drain; then stops accepting, lets every session flush
/// what it has queued (at most a few seconds) and returns.
///
/// With `config.http` set, the monitoring endpoints are served on `monitor` (or, when `None`, on
/// a listener bound to `config.http`) by actix-web on this same actix `System`.
///
/// Must run inside an actix `System` (e.g. `actix_rt::System::new().block_on(..)`).
///
/// # Errors
/// An invalid configuration, or a listener that cannot be used.
pub async fn run_operated(
    listener: std::net::TcpListener,
    monitor: Option<std::net::TcpListener>,
    config: HubConfig,
    operations: UnboundedReceiver<Operation>,
) -> io::Result<()> {
    run_announced(listener, monitor, config, operations, || {}).await
}

/// As [`run_operated`], calling `ready` once the hub is about to take connections: in a cluster
/// (`config.cluster`), after it has joined (or given up waiting for NATS, which it keeps trying
/// in the background). `tej-hub serve` prints its ready line there.
///
/// # Errors
/// An invalid configuration, or a listener that cannot be used.
pub async fn run_announced(
    listener: std::net::TcpListener,
    monitor: Option<std::net::TcpListener>,
    config: HubConfig,
    mut operations: UnboundedReceiver<Operation>,
    ready: impl FnOnce(),
) -> io::Result<()> {
    // Everything the settings name (users, TLS files, the cluster) is resolved here, once.
    let loaded = Loaded::new(config).map_err(invalid)?;
    let config = loaded.config.clone();
    let listen = listener.local_addr()?;
    let cluster_settings =
        cluster::Settings::from_config(&config, listen.port()).map_err(invalid)?;
    let store_counters = Arc::new(StoreCounters::default());
    let durables = match StoreSettings::from_config(&config)
        .map_err(|error| invalid(error.into()))?
    {
        Some(settings) => {
            // Recovery reads every log's tail: blocking, before the hub takes connections.
            let store: Arc<dyn Backend> =
                Store::open(settings.clone(), store_counters.clone()).map_err(io::Error::other)?;
            info!(dir = %settings.dir.display(), codes = %settings.codes(), sync = %settings.sync, "store opened");
            Some(Durables::new(store, &settings, store_counters.clone()))
        }
        None => None,
    };
    let admission = Admission::new();
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let monitor = match (monitor, config.http) {
        (Some(monitor), _) => Some(monitor),
        (None, Some(addr)) => Some(std::net::TcpListener::bind(addr)?),
        (None, None) => None,
    };
    let counters = Arc::new(HubCounters::default());
    let workers: Vec<Arbiter> = (0..config.workers).map(|_| Arbiter::new()).collect();
    // The router shares the first worker's thread: a publication from a session there reaches
    // it without waking another thread (a wake-up costs tens of microseconds on a busy machine).
    let table = Arc::new(SubscriptionTable::new());
    // The cluster's NATS client and its tasks get a thread of their own.
    let cluster_arbiter = cluster_settings.as_ref().map(|_| Arbiter::new());
    let cluster = match (cluster_settings, &cluster_arbiter) {
        (Some(settings), Some(arbiter)) => {
            let store = durables.as_ref().map(|durables| durables.store().clone());
            Some(Cluster::start(settings, table.clone(), counters.clone(), arbiter, store).await)
        }
        _ => None,
    };
    if let Some(cluster) = &cluster {
        table.set_cluster(cluster);
    }
    let (router_table, router_cluster) = (table.clone(), cluster.clone());
    let durable_codes = durables
        .as_ref()
        .map_or(CodeSet::empty(), |durables| durables.store().durable());
    let router_counters = counters.clone();
    let router = Router::start_in_arbiter(&workers[0].handle(), move |_| {
        Router::new(router_table, router_cluster, router_counters, durable_codes)
    });
    info!(%listen, workers = workers.len(), "hub started");
    let state = Arc::new(HubState::new(
        loaded,
        listen,
        counters.clone(),
        table.clone(),
        cluster.clone(),
        durables.clone(),
    ));
    let http = match monitor {
        Some(monitor) => Some(ops::monitor::start(monitor, state.clone())?),
        None => None,
    };

    ready();
    let mut next_id = 0u64;
    let next = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Every accepted connection counts, whatever becomes of it.
                    counters.connections.fetch_add(1, Ordering::Relaxed);
                    let loaded = state.loaded();
                    let slot = match admission.admit(peer.ip(), &counters, &loaded.config) {
                        Ok(slot) => slot,
                        Err(refused) => {
                            refuse(&stream, peer, refused, &counters);
                            continue;
                        }
                    };
                    next_id += 1;
                    let worker = &workers[(next_id as usize) % workers.len()];
                    let hub = SessionContext {
                        router: router.clone(),
                        table: table.clone(),
                        config: loaded.config.clone(),
                        counters: counters.clone(),
                        users: loaded.users.clone(),
                        cluster: cluster.clone(),
                        durables: durables.clone(),
                    };
                    let tls = loaded.tls.clone();
                    hand_over(stream, peer, SessionId::new(next_id), worker, hub, slot, tls);
                }
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            operation = operations.recv() => match state.on_operation(operation) {
                Next::Serve => {}
                next => break next,
            },
        }
    };
    drop(listener);
    if next == Next::Drain {
        state.drain(&mut operations).await;
    }
    let sessions = router.send(Shutdown).await.unwrap_or(0);
    info!(sessions, "hub shutting down");
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while counters.open.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    if let Some(http) = http {
        http.stop(false).await;
    }
    for worker in workers.iter().chain(&cluster_arbiter) {
        worker.stop();
    }
    Ok(())
}

/// Tells a connection over a limit why (a fresh socket takes a short frame at once) and closes it.
fn refuse(
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
    refused: Refused,
    counters: &HubCounters,
) {
    let before = counters.refused_connections.fetch_add(1, Ordering::Relaxed);
    if ops::counters::worth_a_line(before, 1) {
        warn!(%peer, %refused, refused_connections = before + 1, "connection refused");
    } else {
        debug!(%peer, %refused, "connection refused");
    }
    if let Ok(wire) = control::err_reply("too many connections").to_wire() {
        let _ = stream.try_write(&wire);
    }
}

fn invalid(error: ConfigError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, error)
}

/// Moves an accepted connection to `worker` and starts its session there.
fn hand_over(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    id: SessionId,
    worker: &Arbiter,
    hub: SessionContext,
    slot: Option<IpSlot>,
    tls: Option<Arc<TlsListener>>,
) {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    let socket = SockRef::from(&stream);
    if let Err(error) = socket.set_tcp_keepalive(&keepalive) {
        debug!(%peer, %error, "cannot enable TCP keepalive");
    }
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%peer, %error, "cannot disable Nagle");
    }
    // A tokio socket belongs to the runtime that registered it: move it as a std socket.
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => return warn!(%peer, %error, "cannot hand over connection"),
    };
    let open = ConnectionGuard::new(hub.counters.clone(), slot);
    worker.spawn(async move {
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => return warn!(%peer, %error, "cannot register connection"),
        };
        let Some(tls) = tls else {
            return Session::start(id, Transport::Tcp(stream), peer, hub, None, open);
        };
        let (transport, certified) = match tls.accept(stream, hub.config.auth_timeout()).await {
            Ok(accepted) => accepted,
            Err(error) => {
                hub.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                // The hub's one line for it (rustls's own are silenced by default): what the
                // client sent may show in the reason, so it is escaped.
                let error = error.to_string();
                return warn!(%peer, error = %error.escape_debug(), "TLS connection refused");
            }
        };
        let user = match certified {
            None => None,
            Some(name) => match hub.users.as_ref().and_then(|users| users.permissions(&name)) {
                Some(permissions) => Some(Authenticated {
                    user: name,
                    permissions,
                }),
                None => {
                    hub.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                    // The CN is the client's text: clipped and escaped.
                    let user = control::clip(&name);
                    return warn!(%peer, user = %user.escape_debug(), "client certificate names no user");
                }
            },
        };
        Session::start(id, transport, peer, hub, user, open);
    });
}

/// A hub running on a thread of its own.
#[derive(Debug)]
pub struct HubHandle {
    local_addr: SocketAddr,
    monitor_addr: Option<SocketAddr>,
    operations: Option<UnboundedSender<Operation>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl HubHandle {
    /// The address the hub listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the monitoring listener, when `http` is set.
    pub fn monitor_addr(&self) -> Option<SocketAddr> {
        self.monitor_addr
    }

    /// Tells the hub to carry out `operation` (drain, reload; [`shutdown`](Self::shutdown) also
    /// waits); `false` when the hub has already stopped.
    pub fn operate(&self, operation: Operation) -> bool {
        self.operations
            .as_ref()
            .is_some_and(|operations| operations.send(operation).is_ok())
    }

    /// Shuts the hub down (as on SIGTERM) and waits for its thread.
    ///
    /// # Errors
    /// What [`run`] returned, or an error if the hub's thread panicked.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.operations
            .take()
            .map(|operations| operations.send(Operation::Shutdown));
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("hub thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for HubHandle {
    fn drop(&mut self) {
        // Dropped without shutdown(): stop the hub, don't wait for it.
        self.operations
            .take()
            .map(|operations| operations.send(Operation::Shutdown));
    }
}

/// Starts a hub serving `listener` on a new thread with its own actix `System`; with `http`
/// set, its monitoring listener is bound first ([`HubHandle::monitor_addr`]).
///
/// # Errors
/// When the listener's address cannot be read, the monitoring address cannot be bound, or the
/// thread cannot be started.
pub fn spawn(listener: std::net::TcpListener, config: HubConfig) -> io::Result<HubHandle> {
    let local_addr = listener.local_addr()?;
    let monitor = config.http.map(std::net::TcpListener::bind).transpose()?;
    let monitor_addr = monitor
        .as_ref()
        .map(std::net::TcpListener::local_addr)
        .transpose()?;
    let (operations, received) = unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("tej-hub".into())
        .spawn(move || {
            actix_rt::System::new().block_on(run_operated(listener, monitor, config, received))
        })?;
    Ok(HubHandle {
        local_addr,
        monitor_addr,
        operations: Some(operations),
        thread: Some(thread),
    })
}
