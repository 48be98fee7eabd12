//! The link task: the NATS connection's state, and the hubs' conversation about interest.
//!
//! A hub announces its interest (the codes its subscribers want) on `P.hubs` when it changes,
//! and every [`HEARTBEAT`] as a sign of life; every other hub records it, applies it to its
//! publishers, and only then acknowledges it. A `SUB` that adds a code is answered once every
//! hub seen has acknowledged (the router waits on [`Cluster::want`]): a publication read by any
//! hub after that finds the interest and crosses. NATS delivers the announcement after the
//! announcing hub's data subscription (both on one connection, in order), so what crosses
//! reaches it. A hub not heard from for [`SILENCE`] is gone: its remote publishers' frames in
//! progress are cut. On (re)connecting, a hub says hello and everybody answers with their
//! interest.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event as NatsEvent, Message, Subscriber};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::hub::cluster::inbound::{Event as InboundEvent, Inbound};
use crate::hub::cluster::messages::{Ack, Announcement, Credit, Purpose};
use crate::hub::cluster::{outbound, Cluster, LinkOrder, Settings, CONNECT_WAIT, HELLO_WAIT};
use crate::hub::delivery::table::SubscriptionTable;
use crate::hub::ops::counters::HubCounters;

/// How often a hub announces itself.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// How often the load of this hub's queue groups is looked at: announced again (a `Beat`) when
/// it changed.
const LOAD_REFRESH: Duration = Duration::from_millis(250);
/// How long a hub may stay silent before the others count it gone.
const SILENCE: Duration = Duration::from_secs(2);
/// How long a hub gone silent is remembered: frames on the codes it wanted are counted as
/// dropped here until it returns, leaves, or this passes.
const SILENT_MEMORY: Duration = Duration::from_secs(60);
/// Messages NATS may queue for one of this hub's subscriptions before it drops (slow consumer):
/// the credit windows of four origin hubs.
const SUBSCRIPTION_CAPACITY: usize = 4 * outbound::WINDOW_MESSAGES as usize;
/// Commands the NATS client queues before a publish waits (at most 256 KiB each).
const CLIENT_CAPACITY: usize = 64;
/// How long leaving waits for NATS to take the `leave` announcement, and for the inbound task to
/// stop (the hub waits a second in all for the cluster to leave).
const LEAVE_FLUSH: Duration = Duration::from_millis(300);
/// How long a control message may wait for the control connection to take it.
const CONTROL_TIMEOUT: Duration = Duration::from_millis(250);
/// The control connection's ping interval: it is idle for longer between heartbeats when nothing
/// arrives, so a dead one misses a ping per heartbeat, three within about 1.5 s, and is dropped
/// (a live one would need a round trip over a second to be taken for dead).
const CONTROL_PING: Duration = Duration::from_millis(400);
/// How long the other hubs may be heard while none acknowledges this hub's announcements before
/// this hub takes its own sending side for dead and reconnects.
const MUTE: Duration = Duration::from_secs(4);
/// The data connection's ping interval: much longer, as a ping there waits behind the bulk
/// data in the client's and the kernel's buffers (at 3 s, a 0.5 MB/s link was taken for dead);
/// a dead data connection is usually found through the control connection first.
const DATA_PING: Duration = Duration::from_secs(10);
/// The longest pause between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// What the link task starts with.
pub(super) struct Tasks {
    pub cluster: Arc<Cluster>,
    pub settings: Settings,
    pub table: Arc<SubscriptionTable>,
    pub hub: Arc<HubCounters>,
    pub orders: mpsc::UnboundedReceiver<LinkOrder>,
    /// Told once the hub may serve: connected and the other hubs heard, or given up waiting.
    pub ready: oneshot::Sender<()>,
}

/// The link task's subscriptions.
struct Inboxes {
    hubs: Subscriber,
    acks: Subscriber,
    credits: Subscriber,
}

/// Which of the hub's two NATS connections: control traffic never waits behind data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connection {
    /// Announcements, acknowledgements, credit, heartbeats: small, never behind data.
    Control,
    /// Relayed pieces, both ways.
    Data,
}

impl Connection {
    fn name(self) -> &'static str {
        match self {
            Connection::Control => "control",
            Connection::Data => "data",
        }
    }
}

/// The options of one of the hub's NATS connections; its events go to `events_to`.
fn options(
    settings: &Settings,
    connection: Connection,
    events_to: mpsc::UnboundedSender<(Connection, NatsEvent)>,
) -> ConnectOptions {
    let options = ConnectOptions::new()
        .name(format!("tej-hub {} {}", settings.name, connection.name()))
        // A hub never takes back its own messages.
        .no_echo()
        .client_capacity(CLIENT_CAPACITY)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(CONNECT_WAIT)
        .reconnect_delay_callback(|attempts| {
            let delay = Duration::from_millis(100).saturating_mul(1 << attempts.min(5));
            delay.min(MAX_RECONNECT_DELAY)
        })
        .event_callback(move |event| {
            let events_to = events_to.clone();
            async move {
                let _ = events_to.send((connection, event));
            }
        });
    // async-nats pings only when a connection has been idle for the interval (any command or
    // message resets it) and drops it after three unanswered pings.
    let options = match connection {
        Connection::Control => options.ping_interval(CONTROL_PING),
        Connection::Data => options
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .ping_interval(DATA_PING),
    };
    // NATS's own users keep anyone else from publishing on the cluster's subjects: the first
    // URL with credentials (`nats://user:password@host:port`) gives them.
    let credentials = settings
        .servers
        .iter()
        .find(|server| server.has_user_pass());
    let options = match credentials.and_then(|server| server.username().zip(server.password())) {
        Some((user, password)) => options.user_and_password(user.to_owned(), password.to_owned()),
        None => options,
    };
    match &settings.tls_ca {
        Some(ca) => options.add_root_certificates(ca.clone()).require_tls(true),
        None => options,
    }
}

/// Connects, subscribes, starts the outbound and inbound tasks, then runs the link.
pub(super) async fn start(tasks: Tasks) {
    let Tasks {
        cluster,
        settings,
        table,
        hub,
        orders,
        ready,
    } = tasks;
    let (events_to, events) = mpsc::unbounded_channel();
    let connected = async {
        let control = options(&settings, Connection::Control, events_to.clone())
            .connect(settings.servers.clone())
            .await?;
        let data = options(&settings, Connection::Data, events_to)
            .connect(settings.servers.clone())
            .await?;
        Ok::<_, async_nats::ConnectError>((control, data))
    };
    let (control, data) = match connected.await {
        Ok(clients) => clients,
        Err(error) => {
            let _ = ready.send(());
            return warn!(%error, "cannot start the NATS client: serving without the cluster");
        }
    };
    let subjects = &cluster.subjects;
    let subscribed = async {
        let pieces = data.subscribe(subjects.all_data()).await?;
        let inboxes = Inboxes {
            hubs: control.subscribe(subjects.hubs()).await?,
            acks: control.subscribe(subjects.ack(cluster.instance)).await?,
            credits: control.subscribe(subjects.credit(cluster.instance)).await?,
        };
        Ok::<_, async_nats::SubscribeError>((pieces, inboxes))
    };
    let (pieces, inboxes) = match subscribed.await {
        Ok(subscribed) => subscribed,
        Err(error) => {
            let _ = ready.send(());
            return warn!(%error, "cannot subscribe on NATS: serving without the cluster");
        }
    };
    let (inbound_to, inbound_events) = mpsc::unbounded_channel();
    let inbound = Inbound::new(cluster.clone(), control.clone(), table, hub);
    actix_rt::spawn(inbound.run(pieces, inbound_events));
    actix_rt::spawn(outbound::run(cluster.clone(), data.clone()));
    let link = Link {
        cluster,
        control,
        data,
        up: (false, false),
        last_ack: Instant::now(),
        inbound: inbound_to,
        ready: Some(ready),
        ready_at: Instant::now() + CONNECT_WAIT,
        failing: false,
        loads: Vec::new(),
    };
    link.run(inboxes, events, orders).await;
}

/// Publishes a control message, waiting at most [`CONTROL_TIMEOUT`] for the control connection
/// to take it (it is stuck then, and its pings will find out); whether it did.
pub(super) async fn say(client: &async_nats::Client, subject: String, text: String) -> bool {
    match tokio::time::timeout(CONTROL_TIMEOUT, client.publish(subject, text.into())).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            debug!(%error, "cannot publish on the control connection");
            false
        }
        Err(_) => {
            debug!("the control connection took nothing in time");
            false
        }
    }
}

/// The link task's state.
struct Link {
    cluster: Arc<Cluster>,
    control: async_nats::Client,
    data: async_nats::Client,
    /// Whether the control and the data connection are up.
    up: (bool, bool),
    /// When another hub last acknowledged an announcement of this one.
    last_ack: Instant,
    inbound: mpsc::UnboundedSender<InboundEvent>,
    ready: Option<oneshot::Sender<()>>,
    /// When to tell the hub it may serve.
    ready_at: Instant,
    /// Whether a failed connection attempt has been logged since the link was last up.
    failing: bool,
    /// The loads of this hub's groups as last announced.
    loads: Vec<u64>,
}

impl Link {
    async fn run(
        mut self,
        mut inboxes: Inboxes,
        mut events: mpsc::UnboundedReceiver<(Connection, NatsEvent)>,
        mut orders: mpsc::UnboundedReceiver<LinkOrder>,
    ) {
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut load = tokio::time::interval(LOAD_REFRESH);
        load.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some((connection, event)) = events.recv() => self.on_event(connection, event).await,
                Some(message) = inboxes.hubs.next() => self.on_announcement(&message).await,
                Some(message) = inboxes.acks.next() => self.on_ack(&message),
                Some(message) = inboxes.credits.next() => self.on_credit(&message),
                order = orders.recv() => match order {
                    Some(LinkOrder::Announce) => {
                        // Cleared before the state is read: a later change orders another.
                        self.cluster.announce_due.store(false, Ordering::Release);
                        self.announce(Purpose::Change).await;
                    }
                    Some(LinkOrder::Leave(done)) => {
                        // What this hub published reaches NATS before it says it leaves.
                        let _ = tokio::time::timeout(LEAVE_FLUSH, self.data.flush()).await;
                        self.announce(Purpose::Leave).await;
                        let _ = tokio::time::timeout(LEAVE_FLUSH, self.control.flush()).await;
                        // The NATS subscriptions must be dropped inside this runtime (dropping
                        // one spawns its unsubscription), before the arbiter stops: the
                        // inbound task's first, then the link's own on return.
                        let (stopped, inbound_stopped) = oneshot::channel();
                        if self.inbound.send(InboundEvent::Stop(stopped)).is_ok() {
                            let _ = tokio::time::timeout(LEAVE_FLUSH, inbound_stopped).await;
                        }
                        drop(inboxes);
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                _ = beat.tick() => self.on_beat().await,
                _ = load.tick() => self.refresh_load().await,
                () = tokio::time::sleep_until(self.ready_at), if self.ready.is_some() => {
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(());
                    }
                }
            }
        }
    }

    async fn on_event(&mut self, connection: Connection, event: NatsEvent) {
        let cluster = self.cluster.clone();
        match event {
            NatsEvent::Connected => {
                self.failing = false;
                info!(hub = %cluster.name, connection = connection.name(), "connected to NATS");
                match connection {
                    Connection::Control => self.up.0 = true,
                    Connection::Data => self.up.1 = true,
                }
                if self.up == (true, true) && !cluster.is_connected() {
                    self.link_up().await;
                }
            }
            NatsEvent::Disconnected => {
                warn!(hub = %cluster.name, connection = connection.name(), "disconnected from NATS: frames for other hubs are dropped and counted until it is back");
                match connection {
                    Connection::Control => self.up.0 = false,
                    Connection::Data => self.up.1 = false,
                }
                self.link_down();
            }
            NatsEvent::SlowConsumer(subscription) => {
                let count = cluster
                    .counters
                    .slow_consumers
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                warn!(hub = %cluster.name, subscription, slow_consumers = count, "NATS dropped messages for this hub: it cannot keep up");
            }
            // The first failed attempt says why (refused, TLS, credentials); the retries after
            // it would repeat that every couple of seconds.
            NatsEvent::ClientError(error) if !self.failing => {
                self.failing = true;
                warn!(hub = %cluster.name, connection = connection.name(), %error, "cannot reach NATS; retrying");
            }
            NatsEvent::ClientError(error) => {
                debug!(hub = %cluster.name, connection = connection.name(), %error, "NATS client error");
            }
            other => {
                warn!(hub = %cluster.name, connection = connection.name(), event = %other, "NATS event");
            }
        }
    }

    /// Both connections are up: the hub crosses again and says hello.
    async fn link_up(&mut self) {
        let cluster = &self.cluster;
        let max_payload = self.data.server_info().max_payload;
        if max_payload > 0 {
            cluster.max_payload.store(max_payload, Ordering::Release);
        }
        // The data subscription, renewed on reconnection, is written before the hello that
        // makes the other hubs send on it.
        let _ = tokio::time::timeout(CONTROL_TIMEOUT, self.data.flush()).await;
        cluster.connected.store(true, Ordering::Release);
        cluster.lock_peers().touch_all(Instant::now());
        self.last_ack = Instant::now();
        cluster.notify();
        self.announce(Purpose::Hello).await;
        if self.ready.is_some() {
            self.ready_at = Instant::now() + HELLO_WAIT;
        }
    }

    /// The link is down (a connection dropped, or was found mute): nothing crosses until both
    /// connections are up again.
    fn link_down(&mut self) {
        let cluster = &self.cluster;
        if cluster.connected.swap(false, Ordering::AcqRel) {
            cluster.notify();
            let _ = self.inbound.send(InboundEvent::Disconnected);
        }
    }

    /// The other hubs are heard but none has acknowledged this hub's announcements for
    /// [`MUTE`]: what this hub sends does not reach NATS. Drops both connections (in the
    /// background: a client stuck on a full socket takes the order when it can; the link is up
    /// again once both report connected).
    fn reconnect_mute(&mut self) {
        warn!(hub = %self.cluster.name, "no hub acknowledged this hub's announcements: reconnecting to NATS");
        self.link_down();
        for client in [self.control.clone(), self.data.clone()] {
            actix_rt::spawn(async move {
                let _ = tokio::time::timeout(SILENCE, client.force_reconnect()).await;
            });
        }
    }

    async fn on_announcement(&mut self, message: &Message) {
        let text = String::from_utf8_lossy(&message.payload);
        let announcement = match Announcement::parse(&text) {
            Ok(announcement) => announcement,
            Err(error) => return debug!(%error, "unreadable announcement"),
        };
        let cluster = self.cluster.clone();
        if announcement.instance == cluster.instance {
            return;
        }
        if announcement.purpose == Purpose::Leave {
            self.forget(announcement.instance, &announcement.name, "left");
            return;
        }
        let seen = {
            let mut peers = cluster.lock_peers();
            let seen = peers.announced(&announcement, Instant::now(), cluster.outbound.position());
            // Publishers see the interest before the hub acknowledges it.
            cluster.set_remote_codes(&peers);
            seen
        };
        for instance in seen.replaced {
            let _ = self.inbound.send(InboundEvent::Departed {
                instance,
                silent: false,
            });
        }
        if seen.new {
            info!(hub = %cluster.name, remote = %announcement.name, "hub joined");
        }
        cluster.notify();
        let ack = Ack {
            instance: cluster.instance,
            version: announcement.version,
        };
        say(
            &self.control,
            cluster.subjects.ack(announcement.instance),
            ack.to_string(),
        )
        .await;
        if announcement.purpose == Purpose::Hello || seen.new {
            self.announce(Purpose::Answer).await;
        }
    }

    fn on_ack(&mut self, message: &Message) {
        match Ack::parse(&String::from_utf8_lossy(&message.payload)) {
            Ok(ack) => {
                self.last_ack = Instant::now();
                self.cluster
                    .lock_peers()
                    .acknowledge(ack.instance, ack.version);
                self.cluster.notify();
            }
            Err(error) => debug!(%error, "unreadable acknowledgement"),
        }
    }

    fn on_credit(&self, message: &Message) {
        match Credit::parse(&String::from_utf8_lossy(&message.payload)) {
            Ok(credit) => {
                self.cluster
                    .lock_peers()
                    .credit(credit.instance, credit.seq, credit.bytes);
                self.cluster.notify();
            }
            Err(error) => debug!(%error, "unreadable credit"),
        }
    }

    async fn on_beat(&mut self) {
        if !self.cluster.is_connected() {
            return;
        }
        let now = Instant::now();
        let heard = self.cluster.lock_peers().heard_within(now, SILENCE);
        if heard && now.duration_since(self.last_ack) > MUTE {
            return self.reconnect_mute();
        }
        self.announce(Purpose::Beat).await;
        let gone = {
            let mut peers = self.cluster.lock_peers();
            let gone = peers.expire(now, SILENCE, SILENT_MEMORY);
            self.cluster.set_remote_codes(&peers);
            gone
        };
        for (instance, name) in gone {
            self.forget(instance, &name, "silent");
        }
    }

    /// Forgets hub `instance`: nothing crosses to it any more, its frames in progress are cut.
    fn forget(&self, instance: u64, name: &str, why: &str) {
        let cluster = &self.cluster;
        {
            let mut peers = cluster.lock_peers();
            peers.remove(instance);
            cluster.set_remote_codes(&peers);
        }
        warn!(hub = %cluster.name, remote = %name, why, "hub gone");
        let _ = self.inbound.send(InboundEvent::Departed {
            instance,
            silent: why == "silent",
        });
        cluster.notify();
    }

    /// Announces the load of this hub's groups again if it changed since it was last announced.
    async fn refresh_load(&mut self) {
        let changed = {
            let local = self.cluster.lock_local();
            let groups = Cluster::announced_groups(&local);
            !groups
                .iter()
                .map(|group| group.load)
                .eq(self.loads.iter().copied())
        };
        if changed {
            self.announce(Purpose::Beat).await;
        }
    }

    /// Announces this hub's interest and groups now (asking for acknowledgements).
    async fn announce(&mut self, purpose: Purpose) {
        let cluster = &self.cluster;
        if !cluster.is_connected() {
            return;
        }
        let announcement = {
            let local = cluster.lock_local();
            Announcement {
                instance: cluster.instance,
                version: local.version,
                purpose,
                codes: local.codes,
                name: cluster.name.clone(),
                groups: Cluster::announced_groups(&local),
            }
        };
        self.loads.clear();
        self.loads
            .extend(announcement.groups.iter().map(|group| group.load));
        say(
            &self.control,
            cluster.subjects.hubs(),
            announcement.to_string(),
        )
        .await;
    }
}
