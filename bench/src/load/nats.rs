//! The NATS yardstick (`--nats`): the same workload through a real `nats-server` on loopback,
//! with the official Rust client, async-nats, as issue 10 asks ("p99 below NATS in the same run").
//!
//! - [`NatsServer`]: the server measured: a `nats-server -a 127.0.0.1 -p -1` child spawned by the
//!   bench (killed when dropped), or one already running (`--nats-url`).
//! - [`NatsTarget`]: what the load generator connects to: one async-nats `Client` per publisher
//!   and per subscriber (as each TEJ peer has a connection of its own), all on the subject
//!   `bench.<code>`. A subscriber subscribes and then flushes (a PING answered by a PONG), so the
//!   server has its subscription before anyone publishes.
//! - [`NatsInbox`] and [`NatsOutlet`]: a subscriber's subscription and a publisher's client.
//!
//! The payload of every NATS message is exactly the message of the TEJ frame the hub relays (the
//! stamp, then zeros to `--size`), stamped by the same [`Batch`](super::wire::Batch) and read by
//! the same [`Stamp::parse`], so latency is computed the same way on every side.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_nats::{Client, ConnectOptions, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use tej_hub::Status;

use super::super::hub::{Announces, ServerProcess};
use super::generator::{within, CONNECT_TIMEOUT};
use super::stamp::Stamp;
use super::LoadError;
use crate::Failure;

/// nats-server's own limit on a message's payload; larger messages need a configuration file.
const DEFAULT_MAX_PAYLOAD: u64 = 1024 * 1024;
/// Client events (slow consumer, disconnection, errors) kept to report.
const KEPT_EVENTS: usize = 20;

/// Client events worth reporting, shared by every client of a run.
pub(crate) type Events = Arc<Mutex<Vec<String>>>;

/// `options` with a callback that keeps the client's events in `events` (at most
/// [`KEPT_EVENTS`]): slow consumers, disconnections, errors — what may explain a lost message or
/// a stall. Connecting, and closing at the end of a run, are the bench's own doing: not kept.
pub(crate) fn keeping_events(options: ConnectOptions, events: &Events) -> ConnectOptions {
    let events = events.clone();
    options.event_callback(move |event| {
        let events = events.clone();
        async move {
            if matches!(
                event,
                async_nats::Event::Connected | async_nats::Event::Closed
            ) {
                return;
            }
            if let Ok(mut events) = events.lock() {
                if events.len() < KEPT_EVENTS {
                    events.push(event.to_string());
                }
            }
        }
    })
}

/// The NATS server a run measures.
pub(super) enum NatsServer {
    /// Spawned by the bench.
    Spawned {
        /// The child.
        process: ServerProcess,
        /// Its configuration file, when it needed one: removed once the child is gone.
        _config: Option<TempFile>,
    },
    /// Already running there (`--nats-url`).
    Given(SocketAddr),
}

impl NatsServer {
    /// Spawns `nats-server` on a free loopback port, allowing payloads of `max_payload` bytes;
    /// waits for its `Listening for client connections on ADDR` line.
    ///
    /// # Errors
    /// [`Failure`] when `nats-server` is not installed or does not start.
    pub(super) fn spawn(max_payload: u64, deadline: Instant) -> Result<NatsServer, Failure> {
        let mut command = Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", "-1"]);
        let config = if max_payload > DEFAULT_MAX_PAYLOAD {
            let file = TempFile::write(
                "nats.conf",
                &format!(
                    "max_payload: {max_payload}\nmax_pending: {}\n",
                    4 * max_payload
                ),
            )
            .map_err(|error| {
                Failure::Failed(format!("cannot write nats-server's configuration: {error}"))
            })?;
            command.arg("-c").arg(&file.0);
            Some(file)
        } else {
            None
        };
        let address = |line: &str| {
            let (_, addr) = line.split_once("Listening for client connections on ")?;
            addr.trim().parse().ok()
        };
        match ServerProcess::start(command, "nats-server", Announces::Stderr, address, deadline) {
            Ok(process) => Ok(NatsServer::Spawned {
                process,
                _config: config,
            }),
            Err(Failure::Failed(error)) => Err(Failure::Failed(format!(
                "--nats: {error} (apt-get install nats-server, or give --nats-url for a running \
                 one)"
            ))),
            Err(other) => Err(other),
        }
    }

    /// Where it listens.
    pub(super) fn addr(&self) -> SocketAddr {
        match self {
            NatsServer::Spawned { process, .. } => process.addr(),
            NatsServer::Given(addr) => *addr,
        }
    }

    /// Its process id, when the bench spawned it.
    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            NatsServer::Spawned { process, .. } => Some(process.pid()),
            NatsServer::Given(_) => None,
        }
    }

    /// What a spawned server's exit and last log lines say, for an error message.
    pub(super) fn explain(&mut self) -> String {
        match self {
            NatsServer::Spawned { process, .. } => process.explain(),
            NatsServer::Given(_) => String::new(),
        }
    }
}

/// A file in the temporary directory, removed when dropped.
pub(super) struct TempFile(PathBuf);

impl TempFile {
    /// Writes `text` to `tej-hub-bench-<pid>-<name>` in the temporary directory.
    fn write(name: &str, text: &str) -> std::io::Result<TempFile> {
        let path =
            std::env::temp_dir().join(format!("tej-hub-bench-{}-{name}", std::process::id()));
        std::fs::write(&path, text)?;
        Ok(TempFile(path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What a run's NATS clients connect to, and the subject they use.
#[derive(Clone)]
pub(super) struct NatsTarget {
    /// `nats://127.0.0.1:PORT`.
    url: String,
    /// `bench.<code>`.
    subject: Subject,
    /// What the clients' event callbacks reported.
    events: Events,
}

impl NatsTarget {
    /// The server at `addr`, the workload's `status` as the subject `bench.<code>`.
    pub(super) fn new(addr: SocketAddr, status: Status) -> NatsTarget {
        NatsTarget {
            url: format!("nats://{addr}"),
            subject: Subject::from(format!("bench.{}", status.code())),
            events: Events::default(),
        }
    }

    /// The client events reported so far (slow consumers, disconnections, errors), at most
    /// [`KEPT_EVENTS`].
    pub(super) fn events(&self) -> Vec<String> {
        self.events
            .lock()
            .map(|events| events.clone())
            .unwrap_or_default()
    }

    /// A client of its own, its events kept (a connection lost and made again shows as lost
    /// messages, and as a `disconnected` event).
    async fn client(&self) -> Result<Client, LoadError> {
        let options = ConnectOptions::new()
            .name("tej-hub bench")
            .connection_timeout(CONNECT_TIMEOUT)
            .ignore_discovered_servers();
        let options = keeping_events(options, &self.events);
        within(
            CONNECT_TIMEOUT,
            "connecting to nats-server",
            options.connect(self.url.as_str()),
        )
        .await?
        .map_err(|error| LoadError::Nats {
            what: "cannot connect",
            error: error.to_string(),
        })
    }

    /// A subscriber of its own, its subscription confirmed by the server; a member of the queue
    /// group `queue` when given.
    pub(super) async fn subscriber(&self, queue: Option<&str>) -> Result<NatsInbox, LoadError> {
        let client = self.client().await?;
        let subscribing = match queue {
            Some(queue) => {
                client
                    .queue_subscribe(self.subject.clone(), queue.to_owned())
                    .await
            }
            None => client.subscribe(self.subject.clone()).await,
        };
        let subscription = subscribing.map_err(|error| LoadError::Nats {
            what: "cannot subscribe",
            error: error.to_string(),
        })?;
        flush(&client).await?;
        Ok(NatsInbox {
            subscription,
            _client: client,
            payload: Bytes::new(),
        })
    }

    /// A publisher of its own.
    pub(super) async fn publisher(&self) -> Result<NatsOutlet, LoadError> {
        Ok(NatsOutlet {
            client: self.client().await?,
            subject: self.subject.clone(),
        })
    }
}

/// Waits until the server has seen everything `client` sent before (PING, PONG).
async fn flush(client: &Client) -> Result<(), LoadError> {
    within(
        CONNECT_TIMEOUT,
        "waiting for nats-server's PONG",
        client.flush(),
    )
    .await?
    .map_err(|error| LoadError::Nats {
        what: "flush failed",
        error: error.to_string(),
    })
}

/// A NATS subscriber: its subscription, and the payload it received last.
pub(super) struct NatsInbox {
    subscription: async_nats::Subscriber,
    /// Kept so that the connection lives as long as the subscription.
    _client: Client,
    /// The last payload [`wait`](Self::wait) received.
    payload: Bytes,
}

impl NatsInbox {
    /// Waits for the next message.
    pub(super) async fn wait(&mut self) -> Result<(), LoadError> {
        match self.subscription.next().await {
            Some(message) => {
                self.payload = message.payload;
                Ok(())
            }
            None => Err(LoadError::Closed {
                reason: Some("the NATS subscription ended".to_owned()),
            }),
        }
    }

    /// The stamp of the last message received.
    pub(super) fn stamp(&self) -> Result<Stamp, LoadError> {
        Ok(Stamp::parse(&self.payload)?)
    }
}

/// A NATS publisher: its client and the subject.
pub(super) struct NatsOutlet {
    client: Client,
    subject: Subject,
}

impl NatsOutlet {
    /// Publishes each of `messages` as one NATS message.
    pub(super) async fn publish(
        &self,
        messages: impl Iterator<Item = &[u8]>,
    ) -> Result<(), LoadError> {
        for message in messages {
            self.client
                .publish(self.subject.clone(), Bytes::copy_from_slice(message))
                .await
                .map_err(|error| LoadError::Nats {
                    what: "publish failed",
                    error: error.to_string(),
                })?;
        }
        Ok(())
    }

    /// Waits until the server has every message published so far.
    pub(super) async fn flush(&self) -> Result<(), LoadError> {
        flush(&self.client).await
    }
}
