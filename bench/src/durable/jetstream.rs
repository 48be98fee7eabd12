//! The yardstick: NATS JetStream with file storage on a `nats-server -js -sd DIR` the bench spawns
//! (the Debian package), driven by async-nats's `jetstream` API as its users drive it.
//!
//! - Publish: each publisher has a client of its own and keeps at most `window` PubAcks
//!   outstanding (`Context::publish` returns the ack's future; the oldest is awaited when the
//!   window is full), on the stream `BENCH` (subject `bench.5`, file storage, defaults otherwise:
//!   JetStream's own sync policy).
//! - Consume: each consumer is a durable pull consumer of its own (`deliver_policy all`,
//!   `ack_policy explicit`) read with `Consumer::stream()` (batches of [`PULL_BATCH`]), every
//!   message acknowledged with `ack()`.
//!
//! A pull that stops answering is a stall, reported with what arrived before it: each wait is
//! bounded by `stall`.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::super::hub::{Announces, ServerProcess};
use super::{Consume, DurableError, Outcome, Part, Publish};
use crate::load::nats::{keeping_events, Events};
use crate::Failure;

/// The stream's name and subject.
const STREAM: &str = "BENCH";
const SUBJECT: &str = "bench.5";
/// Messages asked for per pull.
const PULL_BATCH: usize = 256;
/// How long one pull request lives on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// The payload limit given to the server: above the largest payload measured (1 MiB) so no
/// message is refused for its size.
const MAX_PAYLOAD: u64 = 8 << 20;

/// A spawned `nats-server` with JetStream on, storing in a directory of its own; killed when
/// dropped.
pub(super) struct JetStream {
    server: ServerProcess,
    /// What the clients' event callbacks reported (slow consumer, disconnection, errors):
    /// told beside a stall, which they may explain.
    events: Events,
}

impl JetStream {
    /// Spawns `nats-server -a 127.0.0.1 -p -1 -js -sd <store> -c <store>/nats.conf` (the
    /// configuration only raises `max_payload`) and waits for its address.
    pub(super) fn spawn(store: &Path, deadline: Instant) -> Result<JetStream, Failure> {
        std::fs::create_dir_all(store).map_err(|error| {
            Failure::Failed(format!("cannot create {}: {error}", store.display()))
        })?;
        let config = store.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "max_payload: {MAX_PAYLOAD}\nmax_pending: {}\n",
                4 * MAX_PAYLOAD
            ),
        )
        .map_err(|error| Failure::Failed(format!("cannot write {}: {error}", config.display())))?;
        let mut command = Command::new("nats-server");
        command
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(store.join("js"))
            .arg("-c")
            .arg(&config);
        let address = |line: &str| {
            let (_, addr) = line.split_once("Listening for client connections on ")?;
            addr.trim().parse().ok()
        };
        let server =
            ServerProcess::start(command, "nats-server", Announces::Stderr, address, deadline)
                .map_err(|failure| match failure {
                    Failure::Failed(error) => {
                        Failure::Failed(format!("JetStream: {error} (apt-get install nats-server)"))
                    }
                    usage => usage,
                })?;
        Ok(JetStream {
            server,
            events: Arc::default(),
        })
    }

    /// What the server's exit and last log lines say.
    pub(super) fn explain(&mut self) -> String {
        self.server.explain()
    }

    /// A JetStream context on a client of its own.
    async fn context(&self, stall: Duration) -> Result<jetstream::Context, DurableError> {
        let url = format!("nats://{}", self.server.addr());
        let options = keeping_events(async_nats::ConnectOptions::new(), &self.events);
        let client = tokio::time::timeout(stall, options.connect(url))
            .await
            .map_err(|_| DurableError::Timeout("connecting to nats-server"))?
            .map_err(|error| DurableError::nats("cannot connect", error))?;
        Ok(jetstream::new(client))
    }

    /// Creates the stream `BENCH` on `bench.5`, file storage.
    pub(super) async fn create_stream(&self, stall: Duration) -> Result<(), DurableError> {
        let context = self.context(stall).await?;
        let config = stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECT.to_owned()],
            storage: stream::StorageType::File,
            ..Default::default()
        };
        tokio::time::timeout(stall, context.create_stream(config))
            .await
            .map_err(|_| DurableError::Timeout("creating the stream"))?
            .map_err(|error| DurableError::nats("cannot create the stream", error))?;
        Ok(())
    }

    /// `spec.publishers` publishers, each with a window of outstanding PubAcks, for
    /// `spec.seconds`.
    pub(super) async fn publish(&self, spec: &Publish) -> Result<Outcome, DurableError> {
        let mut contexts = Vec::new();
        for _ in 0..spec.publishers {
            contexts.push(self.context(spec.stall).await?);
        }
        let payload = Bytes::from(vec![0x5a; spec.size]);
        let start = Instant::now();
        let stop = start + spec.seconds;
        let mut tasks = tokio::task::JoinSet::new();
        for context in contexts {
            let (payload, window, stall) = (payload.clone(), spec.window, spec.stall);
            tasks.spawn(publish_one(context, payload, window, stall, stop));
        }
        Outcome::gather(tasks, spec.size, start).await
    }

    /// `spec.consumers` durable pull consumers named `<prefix><i>`, each reading the stream from
    /// its start until `spec.expect` messages, `spec.seconds` or a stall.
    pub(super) async fn consume(
        &self,
        spec: &Consume,
        prefix: &str,
    ) -> Result<Outcome, DurableError> {
        let mut consumers = Vec::new();
        for index in 0..spec.consumers {
            let context = self.context(spec.stall).await?;
            let stream = tokio::time::timeout(spec.stall, context.get_stream(STREAM))
                .await
                .map_err(|_| DurableError::Timeout("looking up the stream"))?
                .map_err(|error| DurableError::nats("cannot find the stream", error))?;
            let name = format!("{prefix}{index}");
            let config = consumer::pull::Config {
                durable_name: Some(name),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            };
            let consumer: consumer::PullConsumer =
                tokio::time::timeout(spec.stall, stream.create_consumer(config))
                    .await
                    .map_err(|_| DurableError::Timeout("creating a consumer"))?
                    .map_err(|error| DurableError::nats("cannot create a consumer", error))?;
            consumers.push(consumer);
        }
        let start = Instant::now();
        let stop = start + spec.seconds;
        let mut tasks = tokio::task::JoinSet::new();
        for consumer in consumers {
            tasks.spawn(consume_one(consumer, spec.expect, spec.stall, stop));
        }
        let mut outcome = Outcome::gather(tasks, spec.size, start).await?;
        if !outcome.stalled.is_empty() {
            let events = self.events.lock().map(|e| e.clone()).unwrap_or_default();
            if !events.is_empty() {
                outcome
                    .stalled
                    .push(format!("client events: {}", events.join(", ")));
            }
        }
        Ok(outcome)
    }
}

async fn publish_one(
    context: jetstream::Context,
    payload: Bytes,
    window: usize,
    stall: Duration,
    stop: Instant,
) -> Result<Part, DurableError> {
    let mut part = Part::default();
    let mut pending = VecDeque::with_capacity(window);
    let settle = |ack: Result<Result<_, _>, _>, part: &mut Part| match ack {
        Ok(Ok(_)) => {
            part.frames += 1;
            part.last = Some(Instant::now());
            true
        }
        Ok(Err(error)) => {
            part.errors += 1;
            part.stalled
                .get_or_insert_with(|| format!("a PubAck failed: {error}"));
            false
        }
        Err(_) => {
            part.stalled
                .get_or_insert_with(|| format!("no PubAck within {}s", stall.as_secs_f64()));
            false
        }
    };
    while Instant::now() < stop && part.stalled.is_none() {
        if pending.len() >= window {
            let Some(oldest) = pending.pop_front() else {
                break;
            };
            let ack = tokio::time::timeout(stall, oldest).await;
            settle(ack, &mut part);
            continue;
        }
        let ack = tokio::time::timeout(stall, context.publish(SUBJECT, payload.clone()))
            .await
            .map_err(|_| DurableError::Timeout("publishing to JetStream"))?
            .map_err(|error| DurableError::nats("publish failed", error))?;
        pending.push_back(std::future::IntoFuture::into_future(ack));
    }
    while let Some(oldest) = pending.pop_front() {
        if part.stalled.is_some() {
            break;
        }
        let ack = tokio::time::timeout(stall, oldest).await;
        settle(ack, &mut part);
    }
    Ok(part)
}

async fn consume_one(
    consumer: consumer::PullConsumer,
    expect: u64,
    stall: Duration,
    stop: Instant,
) -> Result<Part, DurableError> {
    let mut part = Part::default();
    let messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .expires(PULL_EXPIRES)
        .messages();
    let mut messages = tokio::time::timeout(stall, messages)
        .await
        .map_err(|_| DurableError::Timeout("starting a pull"))?
        .map_err(|error| DurableError::nats("cannot pull", error))?;
    while part.frames < expect && Instant::now() < stop {
        match tokio::time::timeout(stall, messages.next()).await {
            Ok(Some(Ok(message))) => {
                tokio::time::timeout(stall, message.ack())
                    .await
                    .map_err(|_| DurableError::Timeout("acknowledging a message"))?
                    .map_err(|error| DurableError::nats("ack failed", error))?;
                part.frames += 1;
                part.last = Some(Instant::now());
            }
            Ok(Some(Err(error))) => {
                part.errors += 1;
                part.stalled = Some(format!("the pull failed: {error}"));
                break;
            }
            Ok(None) => {
                part.stalled = Some("the pull ended".to_owned());
                break;
            }
            Err(_) => {
                part.stalled = Some(format!(
                    "stalled: nothing for {}s after {} of {expect} messages",
                    stall.as_secs_f64(),
                    part.frames
                ));
                break;
            }
        }
    }
    Ok(part)
}
