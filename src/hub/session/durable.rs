//! A session's durable side: `PUBACK`, `SUB`/`UNSUB ... durable=`, `UNSUB ... delete=yes`, `ACK`,
//! and detaching when the session ends. The mechanics (cursors, windows, feeds) live in
//! `hub::durable`; this is the session's end of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{fut, AsyncContext, Context};
use bytes::BytesMut;
use tracing::info;

use crate::frame::Status;
use crate::hub::control::{self, CodeSet, GroupName, Reply, SubOptions};
use crate::hub::delivery::outbox::Outbox;
use crate::hub::delivery::publisher::Publisher;
use crate::hub::durable::{feed, DurableCounters, DurableRefused, Feed};
use crate::hub::session::{KickReason, Session, SessionId};
use crate::hub::store::AckSink;

/// Feeds' identities as publishers: apart from sessions (counted from 1), remote publishers
/// (bit 63) and groups' moves (counted down from the top).
const FEED_IDS: u64 = 1 << 62;
static NEXT_FEED: AtomicU64 = AtomicU64::new(0);

/// Where the store reports a publisher's stored frames: one reply each, in publication order,
/// a batch's replies queued into its outbox together (one write, not one per frame), counting
/// `pending` down. A session that lets too many replies wait behind a streamed frame it is
/// receiving is closed, as for any reply.
fn puback_sink(outbox: Arc<Outbox>, pending: Arc<AtomicU64>) -> AckSink {
    Arc::new(move |outcomes| {
        // Counted down after the replies are queued: a session waiting for it to reach 0
        // before it closes (the publisher closed its side) then flushes them.
        let _pending = Pending(&pending, outcomes.len() as u64);
        let mut wire = BytesMut::new();
        for outcome in outcomes {
            let reply = match outcome {
                Ok(stored) => Reply::Stored {
                    status: stored.status,
                    seq: stored.seq,
                },
                Err(refused) => Reply::Err(refused.to_string()),
            };
            reply.put_wire(&mut wire);
        }
        let frames = u32::try_from(outcomes.len()).unwrap_or(u32::MAX);
        if outbox.replies(wire.freeze(), frames).is_err() {
            outbox.kick(KickReason::SlowConsumer);
        }
    })
}

/// Counts `PUBACK` outcomes as reported when dropped (whichever way the sink returns).
struct Pending<'a>(&'a AtomicU64, u64);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let reported = self.1;
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(reported))
            });
    }
}

impl Session {
    /// `PUBACK on|off`: from the next frame on, each frame published on a durable code is
    /// answered `OK STORED <code> <seq>` or `ERR <why>`. A publisher that closes its side after
    /// its last frame still gets the replies it is owed (for up to 10 s) before the hub closes.
    pub(super) fn set_puback(&mut self, on: bool, ctx: &mut Context<Self>) {
        if on && !self.publisher.stores() {
            return self.reply(&control::err_reply(DurableRefused::NoStore), ctx);
        }
        let pending = self.publisher.puback_pending().clone();
        let sink = on.then(|| puback_sink(self.outbox.clone(), pending));
        self.publisher.set_puback(sink);
        self.reply(&Reply::Puback(on).to_frame(), ctx);
    }

    /// The codes of a durable `SUB` or `UNSUB ... delete=yes` this session may subscribe to;
    /// `None`, the refusal replied, when it may not.
    pub(super) fn durable_access(
        &mut self,
        codes: CodeSet,
        ctx: &mut Context<Self>,
    ) -> Option<CodeSet> {
        match self.access.subscription(codes) {
            Ok(codes) => Some(codes),
            Err(denied) => {
                let reason = format!("permission denied: subscribe {denied}");
                self.reply(&control::err_reply(reason), ctx);
                None
            }
        }
    }

    /// `SUB <codes> durable=<name> [from=...]`: attaches to the cursor and starts a feed per
    /// code, after the `OK` is queued.
    pub(super) fn subscribe_durable(
        &mut self,
        codes: CodeSet,
        name: GroupName,
        options: SubOptions,
        ctx: &mut Context<Self>,
    ) {
        let Some(durables) = self.durables.clone() else {
            return self.reply(&control::err_reply(DurableRefused::NoStore), ctx);
        };
        if options.group.is_some() {
            let reason = "durable work queues (durable= with group=) are not built yet";
            return self.reply(&control::err_reply(reason), ctx);
        }
        let cursors = match durables.attach(self.id, &name, codes, options.from) {
            Ok(cursors) => cursors,
            Err(refused) => return self.reply(&control::err_reply(refused), ctx),
        };
        self.reply(&Reply::Sub(codes, options).to_frame(), ctx);
        for (code, cursor) in cursors {
            let Some(status) = Status::new(code) else {
                continue;
            };
            let figures = durables.figures(&name, status);
            let Some((window, wake)) = self.attachments.add(&name, status, cursor, figures) else {
                continue;
            };
            let limits = durables.limits(status);
            let id = SessionId::new(FEED_IDS | NEXT_FEED.fetch_add(1, Ordering::Relaxed));
            let dead_letters = limits.dead_letter.map(|_| {
                Publisher::new(
                    id,
                    crate::hub::delivery::flow::Gate::new(),
                    self.table.clone(),
                    self.counters.clone(),
                    CodeSet::relayable(),
                    self.cluster.clone(),
                )
                .storing(Some(durables.store().clone()))
            });
            let task = ctx.spawn(fut::wrap_future(feed(Feed {
                name: name.clone(),
                status,
                id,
                durables: durables.clone(),
                outbox: self.outbox.clone(),
                window,
                wake,
                limits,
                dead_letters,
                counters: durables.counters().clone(),
            })));
            self.attachments.set_task(&name, status, task);
        }
    }

    /// `UNSUB <codes> durable=<name>`: stops the feeds of those codes; the cursor stays where it
    /// was acknowledged (frames in flight are delivered again at the next attach).
    pub(super) fn unsubscribe_durable(
        &mut self,
        codes: CodeSet,
        name: GroupName,
        options: SubOptions,
        ctx: &mut Context<Self>,
    ) {
        let (tasks, detached) = self.attachments.remove(&name, Some(codes));
        for task in tasks {
            ctx.cancel_future(task);
        }
        if detached {
            if let Some(durables) = &self.durables {
                durables.detach(self.id, &name);
            }
        }
        self.reply(&Reply::Unsub(codes, options).to_frame(), ctx);
    }

    /// `UNSUB <codes> durable=<name> delete=yes`: forgets the cursor on those codes for good,
    /// first stopping this session's feeds of them if it holds it (frames in flight are not
    /// delivered again to anyone). Refused, with nothing changed, when another session holds
    /// the cursor or it lacks one of the codes.
    pub(super) fn delete_durable(
        &mut self,
        codes: CodeSet,
        name: GroupName,
        options: SubOptions,
        ctx: &mut Context<Self>,
    ) {
        let Some(durables) = self.durables.clone() else {
            return self.reply(&control::err_reply(DurableRefused::NoStore), ctx);
        };
        if let Err(refused) = durables.delete(self.id, &name, codes) {
            return self.reply(&control::err_reply(refused), ctx);
        }
        info!(session = %self.id, durable = %name, %codes, "durable cursor deleted");
        self.unsubscribe_durable(codes, name, options, ctx);
    }

    /// `ACK <name> <code> <seq>`: no reply unless refused.
    pub(super) fn acknowledge(
        &mut self,
        name: GroupName,
        status: Status,
        seq: u64,
        ctx: &mut Context<Self>,
    ) {
        let Some(durables) = self.durables.clone() else {
            return self.reply(&control::err_reply(DurableRefused::NoStore), ctx);
        };
        match self.attachments.ack(&name, status, seq) {
            Ok(moved) => {
                DurableCounters::add(&durables.counters().acks, 1);
                if let Some((acked, redelivered)) = moved {
                    durables.record(&name, status, acked, redelivered);
                }
            }
            Err(refused) => self.reply(&control::err_reply(refused), ctx),
        }
    }

    /// The session has ended: every cursor it held is free for the next subscriber.
    pub(super) fn detach_durables(&mut self) {
        let Some(durables) = &self.durables else {
            return;
        };
        for name in self.attachments.names() {
            self.attachments.remove(&name, None);
            durables.detach(self.id, &name);
        }
    }
}
