//! The inbound task: delivers the other hubs' pieces to this hub's subscribers and gives the
//! origin hubs credit for what it delivered.
//!
//! Every remote publisher gets a [`Publisher`] of its own here, with a session id of its own (in
//! a range local sessions never reach) and a read gate: held frames, no interleaving and the
//! subscribers' slow-consumer policies then work as for a local publisher. Where a local `block`
//! subscriber closes a remote publisher's gate, this task waits, so it gives no credit, so the
//! origin hub holds its publishers back. A gap in a remote publisher's sequence (messages lost)
//! or its hub going away cuts the streamed frame it was sending: its subscribers here are closed
//! as for a publisher that went away.
//!
//! A frame's queue groups here take it only when its origin chose this hub for them (the
//! [`GROUPS_HEADER`]); chosen here for a group without a member left, a whole frame is passed on
//! once ([`Cluster::redispatch`]), a streamed one is counted lost.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Message, Subscriber};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::hub::cluster::messages::{
    Carried, Credit, DataHeader, GroupChoices, DATA_HEADER, GROUPS_HEADER,
};
use crate::hub::cluster::sequence::Receiving;
use crate::hub::cluster::Cluster;
use crate::hub::control::CodeSet;
use crate::hub::delivery::flow::Gate;
use crate::hub::delivery::publisher::Publisher;
use crate::hub::delivery::relay::Piece;
use crate::hub::delivery::table::SubscriptionTable;
use crate::hub::ops::counters::worth_a_line;
use crate::hub::ops::counters::HubCounters;
use crate::hub::session::SessionId;

/// Session ids of remote publishers: the top bit set (local ids count up from 1).
const REMOTE_IDS: u64 = 1 << 63;
/// Credit is given after this many messages of an origin's stream...
const CREDIT_MESSAGES: u64 = super::outbound::WINDOW_MESSAGES / 4;
/// ... or this many bytes ...
const CREDIT_BYTES: u64 = super::outbound::WINDOW_BYTES / 4;
/// ... or this long after the last, whichever comes first.
const CREDIT_INTERVAL: Duration = Duration::from_millis(10);

/// How often an origin's data counts as a sign of life (a lock of the peers each time).
const HEARD_EVERY: Duration = Duration::from_millis(100);

/// What the link task tells the inbound task.
#[derive(Debug)]
pub(super) enum Event {
    /// Hub `instance` has gone: left or restarted, or (`silent`) not heard from — then it may
    /// come back, and the gap in its stream is counted when it does.
    Departed { instance: u64, silent: bool },
    /// The NATS connection dropped: messages in flight are lost.
    Disconnected,
    /// The hub is shutting down: end the task (its subscription is dropped here, inside the
    /// runtime it needs to unsubscribe), then answer.
    Stop(oneshot::Sender<()>),
}

/// A publisher on another hub, as this hub sees it.
struct Remote {
    publisher: Publisher,
    /// Its stream's numbering, and whether a frame of it is in progress here.
    stream: Receiving,
}

/// Another hub's stream, as far as it reached this hub.
#[derive(Default)]
struct Origin {
    /// The next message sequence number, once one has been seen.
    expected: Option<u64>,
    /// Delivered so far, and given credit for: (sequence number, stream bytes).
    delivered: (u64, u64),
    credited: (u64, u64),
    publishers: HashMap<u64, Remote>,
    /// When its traffic last counted as a sign of life.
    heard: Option<Instant>,
}

/// The inbound task's state.
pub(super) struct Inbound {
    cluster: Arc<Cluster>,
    client: async_nats::Client,
    table: Arc<SubscriptionTable>,
    hub: Arc<HubCounters>,
    origins: HashMap<u64, Origin>,
    next_id: u64,
}

impl Inbound {
    pub(super) fn new(
        cluster: Arc<Cluster>,
        client: async_nats::Client,
        table: Arc<SubscriptionTable>,
        hub: Arc<HubCounters>,
    ) -> Inbound {
        Inbound {
            cluster,
            client,
            table,
            hub,
            origins: HashMap::new(),
            next_id: 0,
        }
    }

    /// Runs until the subscription ends.
    pub(super) async fn run(
        mut self,
        mut data: Subscriber,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        let mut tick = tokio::time::interval(CREDIT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                Some(event) = events.recv() => match event {
                    Event::Stop(done) => {
                        drop(data);
                        let _ = done.send(());
                        return;
                    }
                    event => self.on_event(event),
                },
                message = data.next() => match message {
                    Some(message) => self.on_message(message).await,
                    None => return,
                },
                _ = tick.tick() => {
                    let origins: Vec<u64> = self.origins.keys().copied().collect();
                    for origin in origins {
                        self.give_credit(origin, true).await;
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Stop(_) => {}
            Event::Departed { instance, silent } => {
                let publishers = if silent {
                    self.origins
                        .get_mut(&instance)
                        .map(|origin| std::mem::take(&mut origin.publishers))
                } else {
                    self.origins
                        .remove(&instance)
                        .map(|origin| origin.publishers)
                };
                for (_, mut remote) in publishers.into_iter().flatten() {
                    self.cut(&mut remote);
                }
            }
            Event::Disconnected => {
                // The origins' streams go on: what was missed shows as a gap when they resume.
                let mut cut = 0;
                for origin in self.origins.values_mut() {
                    for remote in origin.publishers.values_mut() {
                        if remote.stream.cut() {
                            remote.publisher.abandon();
                            cut += 1;
                        }
                    }
                }
                self.cluster.count_dropped(cut);
            }
        }
    }

    /// Cuts the streamed frame `remote` was sending, if any.
    fn cut(&self, remote: &mut Remote) {
        if remote.stream.cut() {
            remote.publisher.abandon();
            self.cluster.count_dropped(1);
        }
    }

    async fn on_message(&mut self, message: Message) {
        let header = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(DATA_HEADER))
            .map(|value| DataHeader::parse(value.as_str()));
        let header = match header {
            Some(Ok(header)) => header,
            Some(Err(error)) => {
                return debug!(%error, subject = %message.subject, "unreadable cluster message")
            }
            None => return debug!(subject = %message.subject, "cluster message without its header"),
        };
        let choices = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(GROUPS_HEADER))
            .and_then(|value| match GroupChoices::parse(value.as_str()) {
                Ok(choices) => Some(choices),
                Err(error) => {
                    debug!(%error, "unreadable groups header: the frame's groups take it nowhere");
                    None
                }
            });
        let counters = &self.cluster.counters;
        counters.messages_in.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes_in
            .fetch_add(message.payload.len() as u64, Ordering::Relaxed);
        let origin = self.origins.entry(header.origin).or_default();
        // Data is a sign of life too: a hub whose heartbeats are slowed by a slow link is not
        // gone while its data arrives.
        let now = Instant::now();
        if origin
            .heard
            .map_or(true, |heard| now.duration_since(heard) >= HEARD_EVERY)
        {
            origin.heard = Some(now);
            self.cluster.lock_peers().heard(header.origin, now);
        }
        if let Some(expected) = origin.expected {
            if header.seq > expected {
                let lost = header.seq - expected;
                let before = counters.lost_messages.fetch_add(lost, Ordering::Relaxed);
                if worth_a_line(before, lost) {
                    warn!(
                        origin = format_args!("{:016x}", header.origin),
                        lost,
                        lost_messages = before + lost,
                        "messages from another hub were lost"
                    );
                }
            }
        }
        origin.expected = Some(header.seq + 1);
        origin.delivered = (header.seq, header.stream_bytes);
        match header.carried {
            // As on its own hub: a publisher gone mid-frame closes that frame's receivers (not
            // the cluster's loss, so not counted as one).
            Carried::Gone => {
                if let Some(mut remote) = origin.publishers.remove(&header.publisher) {
                    remote.publisher.abandon();
                }
            }
            Carried::Piece(kind) => {
                let Some(status) = self.cluster.subjects.code_of(&message.subject) else {
                    return debug!(subject = %message.subject, "cluster piece without a code");
                };
                let remote = match origin.publishers.entry(header.publisher) {
                    Entry::Occupied(known) => known.into_mut(),
                    Entry::Vacant(new) => {
                        self.next_id += 1;
                        let publisher = Publisher::new(
                            SessionId::new(REMOTE_IDS | self.next_id),
                            Gate::new(),
                            self.table.clone(),
                            self.hub.clone(),
                            CodeSet::relayable(),
                            None,
                        )
                        .storing(self.cluster.store());
                        new.insert(Remote {
                            publisher,
                            stream: Receiving::new(header.publisher_seq),
                        })
                    }
                };
                let verdict = remote.stream.receive(header.publisher_seq, kind);
                if verdict.cut {
                    remote.publisher.abandon();
                    self.cluster.count_dropped(1);
                }
                if verdict.deliver {
                    let gate = remote.publisher.gate();
                    std::future::poll_fn(|cx| gate.poll_open(cx)).await;
                    let piece = Piece {
                        status,
                        kind,
                        frames: header.frames,
                        bytes: message.payload,
                    };
                    let here = self.cluster.instance;
                    let (taken, unserved) =
                        remote
                            .publisher
                            .publish_remote(&piece, choices.as_ref(), here);
                    remote.stream.delivered(kind, taken);
                    if !unserved.is_empty() {
                        if choices.as_ref().is_some_and(|choices| choices.redispatch) {
                            // Passed on once already: never again.
                            let frames = u64::from(piece.frames_begun()) * unserved.len() as u64;
                            self.cluster.count_group_lost(frames);
                        } else {
                            self.cluster.redispatch(&piece, &unserved);
                        }
                    }
                }
            }
        }
        self.give_credit(header.origin, false).await;
    }

    /// Tells `origin` how far its stream has been delivered, when enough has been since the last
    /// time (or, with `any`, when anything has).
    async fn give_credit(&mut self, instance: u64, any: bool) {
        let Some(origin) = self.origins.get_mut(&instance) else {
            return;
        };
        let (delivered, credited) = (origin.delivered, origin.credited);
        let due = delivered.0 > credited.0
            && (any
                || delivered.0 - credited.0 >= CREDIT_MESSAGES
                || delivered.1.saturating_sub(credited.1) >= CREDIT_BYTES);
        if !due {
            return;
        }
        origin.credited = delivered;
        let credit = Credit {
            instance: self.cluster.instance,
            seq: delivered.0,
            bytes: delivered.1,
        };
        let subject = self.cluster.subjects.credit(instance);
        super::link::say(&self.client, subject, credit.to_string()).await;
    }
}
