//! The cluster: hubs federated through NATS (`--cluster`), so that a frame published on any hub
//! reaches the subscribers of its code on every hub (docs/cluster.md).
//!
//! Each hub keeps one NATS connection and three tasks on an arbiter of its own:
//! - the [link](link) task tells the other hubs which codes this hub's subscribers want and
//!   learns theirs (announcements, acknowledgements, heartbeats), takes credit for what this hub
//!   sent, and follows the connection's state;
//! - the [outbound](outbound) task publishes the pieces this hub's publishers hand it for codes
//!   another hub wants, within the credit the receiving hubs have given;
//! - the [inbound](inbound) task delivers the other hubs' pieces to this hub's subscribers, each
//!   remote publisher through a [`Publisher`](super::delivery::publisher::Publisher) of its own, and gives
//!   credit back.
//!
//! The [`Cluster`] is what the rest of the hub sees: publishers ask [`Cluster::crosses`] and
//! hand pieces to [`Cluster::offer`]; the router calls [`Cluster::want`] before it answers a
//! `SUB` (the answer waits until every other hub has acknowledged the new interest) and
//! [`Cluster::unwant`] when a code has no subscriber left.
//!
//! Queue groups span the hubs (docs/cluster.md, "Queue groups across hubs"): the router tells
//! the cluster this hub's groups ([`Cluster::set_groups`]), the link announces them with their
//! load, and a publisher whose frame no local member takes asks [`Cluster::choose`] for a hub
//! with members; a chosen hub without members left sends the frame on once
//! ([`Cluster::redispatch`]).

mod inbound;
mod link;
mod messages;
mod outbound;
mod peers;
mod sequence;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use actix::Arbiter;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::frame::Status;
use crate::hub::config::{ConfigError, HubConfig};
use crate::hub::control::{ClusterView, CodeSet, GroupName, RemoteGroupView};
use crate::hub::delivery::flow::Gate;
use crate::hub::delivery::outbox::Outbox;
use crate::hub::delivery::relay::{Piece, PieceKind};
use crate::hub::delivery::table::SubscriptionTable;
use crate::hub::ops::counters::worth_a_line;
use crate::hub::ops::counters::HubCounters;
use crate::hub::session::SessionId;
use crate::hub::store::Backend;
pub(crate) use messages::GroupChoices;
use messages::{AnnouncedGroup, Subjects, MAX_GROUPS};
use outbound::Outbound;
use peers::{Peers, RemoteGroups, RemoteHub};

/// How long a `SUB` that adds a code waits for the other hubs to acknowledge the new interest
/// before it is answered anyway (a hub that does not answer is about to be declared gone).
const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the hub waits at start for its first NATS connection before serving without it.
const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// How long the hub waits at start, once connected, for the other hubs to announce themselves.
const HELLO_WAIT: Duration = Duration::from_millis(300);
/// The publisher id this hub's passed-on group frames cross under (no session has it: local
/// ids count up from 1, remote ones have the top bit set).
const REDISPATCHER: u64 = 1 << 62;
/// NATS's default `max_payload`, until a server says otherwise.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The cluster settings of a [`HubConfig`], checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    /// The NATS servers.
    pub servers: Vec<async_nats::ServerAddr>,
    /// This hub's name.
    pub name: String,
    /// The subject prefix.
    pub prefix: String,
    /// TLS only, trusting this CA.
    pub tls_ca: Option<PathBuf>,
}

impl Settings {
    /// The cluster settings of `config` for a hub listening on `port` (the default name's);
    /// `None` when it has no `cluster`.
    ///
    /// # Errors
    /// [`ConfigError::Cluster`] for a server address, name or prefix that cannot be used.
    pub(crate) fn from_config(
        config: &HubConfig,
        port: u16,
    ) -> Result<Option<Settings>, ConfigError> {
        if config.cluster.is_empty() {
            return Ok(None);
        }
        let servers = config
            .cluster
            .iter()
            .enumerate()
            .map(|(n, url)| {
                // The URL may carry a password: name it by its place, not its text.
                async_nats::ServerAddr::from_str(url)
                    .map_err(|error| ConfigError::Cluster(format!("server {}: {error}", n + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let name = match &config.hub_name {
            Some(name) => name.clone(),
            None => format!("{}:{port}", hostname()),
        };
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_whitespace) {
            return Err(ConfigError::Cluster(format!(
                "hub name {name:?}: 1 to 128 characters, no spaces"
            )));
        }
        let prefix = config.cluster_prefix.clone();
        let token = |token: &str| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !prefix.split('.').all(token) {
            return Err(ConfigError::Cluster(format!(
                "prefix {prefix:?}: dot-separated tokens of letters, digits, '_' and '-'"
            )));
        }
        if let Some(ca) = &config.cluster_tls_ca {
            crate::tls::read_certificates(ca)
                .map_err(|error| ConfigError::Cluster(format!("TLS CA: {error}")))?;
        }
        Ok(Some(Settings {
            servers,
            name,
            prefix,
            tls_ca: config.cluster_tls_ca.clone(),
        }))
    }
}

/// The machine's host name, for the default hub name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The cluster's counters (`INFO`, `/varz`, `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct ClusterCounters {
    /// Frames that should have crossed to another hub and could not (link down), or were cut
    /// because part of them was lost.
    pub dropped_frames: AtomicU64,
    /// Messages of other hubs' streams that never arrived (sequence gaps).
    pub lost_messages: AtomicU64,
    /// Times NATS found this hub's subscription too slow and dropped messages for it.
    pub slow_consumers: AtomicU64,
    /// Messages and bytes (payload) published to NATS.
    pub messages_out: AtomicU64,
    /// Bytes of relayed pieces published to NATS.
    pub bytes_out: AtomicU64,
    /// Relayed messages received from other hubs.
    pub messages_in: AtomicU64,
    /// Bytes of relayed pieces received from other hubs.
    pub bytes_in: AtomicU64,
    /// Queue-group frames this hub sent on to another hub: chosen here, it had no member left.
    pub group_redispatched_frames: AtomicU64,
    /// Queue-group frames no member anywhere could take once this hub had to pass them on.
    pub group_lost_frames: AtomicU64,
}

/// One queue group of this hub, as the router tells the cluster: the codes its members take
/// and their outboxes (whose queued bytes are the load the link announces).
#[derive(Clone, Debug)]
pub(crate) struct LocalGroup {
    /// The group.
    pub name: GroupName,
    /// The codes its members here take.
    pub codes: CodeSet,
    /// Its members here.
    pub members: Vec<Arc<Outbox>>,
}

/// The codes this hub's subscribers want, at an interest version.
#[derive(Debug)]
struct Local {
    codes: CodeSet,
    version: u64,
    /// Per code, the version that added it (or changed its groups).
    since: [u64; Status::COUNT],
    /// The queue groups with members here (announced with the interest).
    groups: Vec<LocalGroup>,
}

/// Orders from the hub to the link task.
#[derive(Debug)]
enum LinkOrder {
    /// Announce the local interest (it changed).
    Announce,
    /// Tell the other hubs this one is leaving; answer when sent.
    Leave(oneshot::Sender<()>),
}

/// What the rest of the hub sees of the cluster; see the module documentation.
#[derive(Debug)]
pub(crate) struct Cluster {
    name: String,
    /// This run of the hub (random): a restarted hub is another instance.
    instance: u64,
    subjects: Subjects,
    connected: AtomicBool,
    /// The largest message the NATS server takes (`max_payload` of its `INFO`), read at each
    /// connection so the outbound task does not ask the client for its server info per piece.
    max_payload: AtomicUsize,
    /// The codes other hubs want.
    remote_codes: CodeBits,
    /// The codes hubs gone silent wanted (their subscribers miss those frames: counted here).
    silent_codes: CodeBits,
    /// The codes some group on another hub takes: only for these does a publisher read
    /// `remote_groups`.
    group_codes: CodeBits,
    /// The groups of the other hubs, per code (replaced whole on each announcement, under the
    /// peers lock: peers → remote groups; publishers read it alone).
    remote_groups: RwLock<Arc<RemoteGroups>>,
    /// Where the round-robin among equally loaded hubs starts.
    rotor: AtomicUsize,
    /// The read gate of the frames this hub passes on (nobody reads it: they are few, bounded
    /// by what was chosen for this hub).
    redispatch_gate: Arc<Gate>,
    peers: Mutex<Peers>,
    local: Mutex<Local>,
    /// Bumped whenever an acknowledgement, a credit, a hub or the connection changes.
    changes: watch::Sender<u64>,
    outbound: Outbound,
    orders: mpsc::UnboundedSender<LinkOrder>,
    /// Whether an `Announce` order is on its way to the link (cleared as the link takes it).
    announce_due: AtomicBool,
    counters: ClusterCounters,
    /// The durable store: frames from other hubs on durable codes are stored here too.
    store: Option<Arc<dyn Backend>>,
}

/// A future the router awaits before answering a `SUB`.
pub(crate) type Acknowledged = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Cluster {
    /// Connects to NATS (in the background; waits up to a couple of seconds for the first
    /// connection and the other hubs' hellos) and starts the link, outbound and inbound tasks on
    /// `arbiter`. The durable codes of `store` are wanted from the start and for good: frames
    /// published on other hubs are stored here, whether a durable subscriber is connected or not.
    pub(crate) async fn start(
        settings: Settings,
        table: Arc<SubscriptionTable>,
        hub: Arc<HubCounters>,
        arbiter: &Arbiter,
        store: Option<Arc<dyn Backend>>,
    ) -> Arc<Cluster> {
        let (orders, ordered) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            name: settings.name.clone(),
            instance: instance_id(),
            subjects: Subjects::new(&settings.prefix),
            connected: AtomicBool::new(false),
            max_payload: AtomicUsize::new(DEFAULT_MAX_PAYLOAD),
            remote_codes: CodeBits::default(),
            silent_codes: CodeBits::default(),
            group_codes: CodeBits::default(),
            remote_groups: RwLock::new(Arc::new(RemoteGroups::default())),
            rotor: AtomicUsize::new(0),
            redispatch_gate: Gate::new(),
            peers: Mutex::new(Peers::default()),
            local: Mutex::new(Local {
                codes: store
                    .as_ref()
                    .map_or(CodeSet::empty(), |store| store.durable()),
                version: 0,
                since: [0; Status::COUNT],
                groups: Vec::new(),
            }),
            changes: watch::Sender::new(0),
            outbound: Outbound::new(),
            orders,
            announce_due: AtomicBool::new(false),
            counters: ClusterCounters::default(),
            store,
        });
        let (ready, started) = oneshot::channel();
        let tasks = link::Tasks {
            cluster: cluster.clone(),
            settings,
            table,
            hub,
            orders: ordered,
            ready,
        };
        if !arbiter.spawn(link::start(tasks)) {
            warn!("cluster arbiter is gone: serving without the cluster");
            return cluster;
        }
        let started = tokio::time::timeout(CONNECT_WAIT + HELLO_WAIT * 2, started).await;
        if started.is_err() || !cluster.is_connected() {
            warn!(hub = %cluster.name, "NATS is not reachable yet: serving locally, the cluster link keeps trying");
        } else {
            info!(hub = %cluster.name, remote_hubs = cluster.view().remote_hubs, "joined the cluster");
        }
        cluster
    }

    /// The durable store, for the publishers of other hubs' frames.
    pub(crate) fn store(&self) -> Option<Arc<dyn Backend>> {
        self.store.clone()
    }

    /// Whether the NATS connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether another hub wants frames of `status`: if so, a publisher hands them to
    /// [`offer`](Self::offer).
    pub(crate) fn crosses(&self, status: Status) -> bool {
        self.remote_codes.contains(status) || self.silent_codes.contains(status)
    }

    /// Hands a piece of publisher `from` (whose read gate is `gate`) to the outbound task, with
    /// the hubs chosen for its groups at a frame's start; `false` when it does not cross — the
    /// link is down, NATS is not taking data, or only hubs gone silent want it (counted as
    /// dropped) — and then none of the rest of its frame is offered.
    pub(crate) fn offer(
        &self,
        from: SessionId,
        gate: &Arc<Gate>,
        piece: &Piece,
        choices: Option<GroupChoices>,
    ) -> bool {
        let (live, silent) = (
            self.remote_codes.contains(piece.status),
            self.silent_codes.contains(piece.status),
        );
        if !live || !self.is_connected() || self.outbound.is_shedding() {
            if live || silent {
                // A later piece is offered only while its frame crosses: it has begun.
                self.count_dropped(outbound::frames_lost(piece.kind, piece.frames, true));
            }
            return false;
        }
        if silent && piece.kind.starts_frame() {
            self.count_dropped(outbound::frames_lost(piece.kind, piece.frames, false));
        }
        self.outbound.push(from, gate, piece, choices);
        true
    }

    /// For a frame of `status` starting now, the hub chosen for each group with members on
    /// other hubs and none here that took it (`taken_here`); `None` when there is no such group.
    /// The rule (docs/cluster.md): the lowest announced load per member, round-robin among
    /// equals.
    pub(crate) fn choose(
        &self,
        status: Status,
        taken_here: impl Fn(&GroupName) -> bool,
        redispatch: bool,
    ) -> Option<GroupChoices> {
        if !self.group_codes.contains(status) {
            return None;
        }
        let remote = self
            .remote_groups
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let choices: Vec<(GroupName, u64)> = remote
            .of(status)
            .iter()
            .filter(|(name, _)| !taken_here(name))
            .filter_map(|(name, hubs)| Some((name.clone(), pick_hub(hubs, &self.rotor)?)))
            .take(MAX_GROUPS)
            .collect();
        (!choices.is_empty()).then_some(GroupChoices {
            redispatch,
            choices,
        })
    }

    /// Passes on a whole frame chosen for this hub in `groups` that no member here took: once,
    /// to another hub with members of each group, marked so that it is never passed on again.
    /// What has nowhere to go is counted lost. Returns the frames sent on.
    pub(crate) fn redispatch(&self, piece: &Piece, groups: &[GroupName]) -> u64 {
        let frames = u64::from(piece.frames_begun());
        let choices = if piece.kind == PieceKind::Whole {
            self.choose(piece.status, |name| !groups.contains(name), true)
        } else {
            // A streamed frame is not kept whole anywhere: it cannot be sent again.
            None
        };
        let chosen = choices.as_ref().map_or(0, |choices| choices.choices.len());
        let lost = (groups.len() - chosen.min(groups.len())) as u64 * frames;
        let mut sent = 0;
        if let Some(choices) = choices {
            if self.is_connected() && !self.outbound.is_shedding() {
                let from = SessionId::new(REDISPATCHER);
                self.outbound
                    .push(from, &self.redispatch_gate, piece, Some(choices));
                sent = frames;
            } else {
                self.count_group_lost(frames * chosen as u64);
            }
        }
        self.count_group_lost(lost);
        self.counters
            .group_redispatched_frames
            .fetch_add(sent, Ordering::Relaxed);
        sent
    }

    /// Counts queue-group frames no hub could take.
    pub(crate) fn count_group_lost(&self, frames: u64) {
        if let Some(group_lost_frames) = add_worth_a_line(&self.counters.group_lost_frames, frames)
        {
            warn!(hub = %self.name, group_lost_frames, "queue-group frames had no member left anywhere");
        }
    }

    /// Sets this hub's queue groups (the router, after each membership change). A change of a
    /// group's codes or member count is a new interest version, announced and acknowledged as
    /// a `SUB` is: a `SUB ... group=` that [`want`](Self::want)s its codes after this waits for
    /// the other hubs to know the member.
    pub(crate) fn set_groups(&self, groups: Vec<LocalGroup>) {
        let mut local = self.lock_local();
        let summary = |groups: &[LocalGroup]| -> Vec<(GroupName, CodeSet, usize)> {
            groups
                .iter()
                .map(|group| (group.name.clone(), group.codes, group.members.len()))
                .collect()
        };
        let (before, after) = (summary(&local.groups), summary(&groups));
        if before == after {
            local.groups = groups;
            return;
        }
        let changed = before
            .iter()
            .chain(&after)
            .filter(|group| !(before.contains(group) && after.contains(group)))
            .fold(CodeSet::empty(), |codes, group| codes.union(group.1));
        local.version += 1;
        let version = local.version;
        for status in changed.iter() {
            local.since[usize::from(status.code())] = version;
        }
        local.groups = groups;
        self.order_announcement();
    }

    /// This hub's groups as announced: the first [`MAX_GROUPS`], with their members' queued
    /// bytes now.
    fn announced_groups(local: &Local) -> Vec<AnnouncedGroup> {
        local
            .groups
            .iter()
            .take(MAX_GROUPS)
            .map(|group| AnnouncedGroup {
                name: group.name.clone(),
                codes: group.codes,
                members: u32::try_from(group.members.len()).unwrap_or(u32::MAX),
                load: group.members.iter().map(|outbox| outbox.pending()).sum(),
            })
            .collect()
    }

    /// Publisher `from`, which offered pieces before, has ended: the other hubs forget it (and
    /// close the subscribers in the middle of its streamed frame).
    pub(crate) fn publisher_gone(&self, from: SessionId) {
        if self.is_connected() {
            self.outbound.push_gone(from);
        }
    }

    /// Adds `codes` to this hub's interest. `None` when there is nothing to wait for; else a
    /// future that ends once every other hub has acknowledged interest covering `codes` (or the
    /// link went down, or [`ACK_TIMEOUT`] passed).
    pub(crate) fn want(self: &Arc<Self>, codes: CodeSet) -> Option<Acknowledged> {
        if codes.is_empty() {
            return None;
        }
        let required = {
            let mut local = self.lock_local();
            let added = codes.difference(local.codes);
            if !added.is_empty() {
                local.version += 1;
                local.codes = local.codes.union(added);
                let version = local.version;
                for status in added.iter() {
                    local.since[usize::from(status.code())] = version;
                }
                self.order_announcement();
            }
            codes
                .iter()
                .map(|status| local.since[usize::from(status.code())])
                .max()
                .unwrap_or(0)
        };
        if !self.is_connected() || self.lock_peers().acknowledged(required) {
            return None;
        }
        let cluster = self.clone();
        Some(Box::pin(
            async move { cluster.acknowledged(required).await },
        ))
    }

    /// Waits until every hub seen has acknowledged interest version `required`.
    async fn acknowledged(&self, required: u64) {
        let deadline = Instant::now() + ACK_TIMEOUT;
        let mut changes = self.changes.subscribe();
        loop {
            if !self.is_connected() || self.lock_peers().acknowledged(required) {
                return;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    let late = self.lock_peers().late(required);
                    warn!(hub = %self.name, version = required, ?late, "hubs did not acknowledge interest in time; answering SUB anyway");
                    return;
                }
            }
        }
    }

    /// Removes `codes` (which no local subscriber wants any more) from this hub's interest.
    pub(crate) fn unwant(&self, codes: CodeSet) {
        let mut local = self.lock_local();
        let removed = codes.intersection(local.codes);
        if removed.is_empty() {
            return;
        }
        local.codes = local.codes.difference(removed);
        local.version += 1;
        self.order_announcement();
    }

    /// Tells the other hubs this one is leaving (at shutdown), waiting at most a moment.
    pub(crate) async fn leave(&self) {
        let (done, sent) = oneshot::channel();
        if self.orders.send(LinkOrder::Leave(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), sent).await;
        }
    }

    /// Frames that could not cross so far.
    pub(crate) fn dropped_frames(&self) -> u64 {
        self.counters.dropped_frames.load(Ordering::Relaxed)
    }

    /// The link's state and counters.
    pub(crate) fn view(&self) -> ClusterView {
        let (remote_hubs, remote_hub_names, groups) = {
            let peers = self.lock_peers();
            (peers.len(), peers.names(), peers.groups())
        };
        let remote_groups = groups
            .into_iter()
            .map(|(hub, group)| RemoteGroupView {
                hub,
                group: group.name,
                codes: group.codes,
                members: group.members,
                load: group.load,
            })
            .collect();
        let counter = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let c = &self.counters;
        ClusterView {
            hub: self.name.clone(),
            connected: self.is_connected(),
            remote_hubs,
            dropped_frames: counter(&c.dropped_frames),
            lost_messages: counter(&c.lost_messages),
            slow_consumers: counter(&c.slow_consumers),
            messages_out: counter(&c.messages_out),
            bytes_out: counter(&c.bytes_out),
            messages_in: counter(&c.messages_in),
            bytes_in: counter(&c.bytes_in),
            local_codes: self.lock_local().codes.to_string(),
            remote_codes: self.remote_codes.get().to_string(),
            remote_hub_names,
            group_redispatched_frames: counter(&c.group_redispatched_frames),
            group_lost_frames: counter(&c.group_lost_frames),
            remote_groups,
        }
    }

    /// Publishes the codes the hubs seen want (before acknowledging their announcements), and
    /// those hubs gone silent wanted.
    fn set_remote_codes(&self, peers: &Peers) {
        self.remote_codes.set(peers.codes());
        self.silent_codes.set(peers.silent_codes());
        let groups = peers.remote_groups();
        // The list before the bits: a publisher that sees a bit finds its groups.
        let codes = groups.codes();
        *self
            .remote_groups
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(groups);
        self.group_codes.set(codes);
    }

    fn count_dropped(&self, frames: u64) {
        if let Some(dropped_frames) = add_worth_a_line(&self.counters.dropped_frames, frames) {
            warn!(hub = %self.name, dropped_frames, "frames could not cross to the cluster");
        }
    }

    /// Asks the link to announce the local interest; changes made before it reads them share
    /// one announcement (a restart of many group members is not one announcement each).
    fn order_announcement(&self) {
        if !self.announce_due.swap(true, Ordering::AcqRel) {
            let _ = self.orders.send(LinkOrder::Announce);
        }
    }

    fn notify(&self) {
        self.changes.send_modify(|changes| *changes += 1);
    }

    fn lock_peers(&self) -> MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The hub with the lowest load per member among `hubs`; ties round-robin, from a start `rotor`
/// moves on each time.
fn pick_hub(hubs: &[RemoteHub], rotor: &AtomicUsize) -> Option<u64> {
    let count = hubs.len();
    let start = rotor.fetch_add(1, Ordering::Relaxed) % count.max(1);
    // Per member, in thousandths of a byte: exact enough, and no division by zero.
    let per_member = |hub: &RemoteHub| u128::from(hub.load) * 1000 / u128::from(hub.members.max(1));
    (0..count)
        .map(|step| &hubs[(start + step) % count])
        .min_by_key(|hub| per_member(hub))
        .map(|hub| hub.instance)
}

/// Adds `frames` to `counter`; its new total when that is worth a log line.
fn add_worth_a_line(counter: &AtomicU64, frames: u64) -> Option<u64> {
    if frames == 0 {
        return None;
    }
    let before = counter.fetch_add(frames, Ordering::Relaxed);
    worth_a_line(before, frames).then_some(before + frames)
}

/// A set of codes publishers on every thread read: bit `c % 64` of word `c / 64`.
#[derive(Debug, Default)]
struct CodeBits([AtomicU64; 2]);

impl CodeBits {
    fn contains(&self, status: Status) -> bool {
        let code = status.code();
        self.0[usize::from(code / 64)].load(Ordering::Acquire) & (1 << (code % 64)) != 0
    }

    fn get(&self) -> CodeSet {
        let low = u128::from(self.0[0].load(Ordering::Acquire));
        let high = u128::from(self.0[1].load(Ordering::Acquire));
        CodeSet::from_bits(high << 64 | low)
    }

    fn set(&self, codes: CodeSet) {
        let bits = codes.bits();
        self.0[0].store(bits as u64, Ordering::Release);
        self.0[1].store((bits >> 64) as u64, Ordering::Release);
    }
}

/// A random id for this run of the hub (the OS generator the password salts come from).
fn instance_id() -> u64 {
    use password_hash::rand_core::{OsRng, RngCore};
    OsRng.next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Result<Option<Settings>, ConfigError> {
        let config = HubConfig::from_toml(toml).unwrap_or_else(|error| panic!("{error}"));
        Settings::from_config(&config, 9100)
    }

    #[test]
    fn the_hub_with_the_least_load_per_member_is_chosen_equals_in_turn() {
        let rotor = AtomicUsize::new(0);
        let hub = |instance, members, load| RemoteHub {
            instance,
            members,
            load,
        };
        assert_eq!(pick_hub(&[], &rotor), None);
        // 300 bytes over 3 members is less per member than 200 over 1.
        let loaded = [hub(1, 1, 200), hub(2, 3, 300)];
        for _ in 0..3 {
            assert_eq!(pick_hub(&loaded, &rotor), Some(2));
        }
        let idle = [hub(1, 1, 0), hub(2, 2, 0), hub(3, 1, 0)];
        let mut picked: Vec<u64> = (0..6).filter_map(|_| pick_hub(&idle, &rotor)).collect();
        picked.sort_unstable();
        assert_eq!(picked, [1, 1, 2, 2, 3, 3], "round-robin among equals");
    }

    #[test]
    fn no_servers_is_no_cluster() {
        assert_eq!(settings("").ok(), Some(None));
    }

    #[test]
    fn the_name_defaults_to_host_and_port() {
        let parsed = settings("cluster = [\"nats://127.0.0.1:4222\"]\n");
        let Ok(Some(parsed)) = parsed else {
            panic!("{parsed:?}");
        };
        assert!(parsed.name.ends_with(":9100"), "{}", parsed.name);
        assert_eq!(parsed.prefix, "tej");
        assert_eq!(parsed.servers.len(), 1);
    }

    #[test]
    fn unusable_settings_are_refused_naming_the_setting() {
        for (toml, named) in [
            ("cluster = [\"nats://127.0.0.1:notaport\"]", "server"),
            (
                "cluster = [\"nats://127.0.0.1:4222\"]\nhub-name = \"a b\"",
                "hub name",
            ),
            (
                "cluster = [\"nats://127.0.0.1:4222\"]\nhub-name = \"\"",
                "hub name",
            ),
            (
                "cluster = [\"nats://127.0.0.1:4222\"]\ncluster-prefix = \"tej.>\"",
                "prefix",
            ),
            (
                "cluster = [\"nats://127.0.0.1:4222\"]\ncluster-prefix = \"a..b\"",
                "prefix",
            ),
        ] {
            match settings(toml) {
                Err(ConfigError::Cluster(reason)) => assert!(reason.contains(named), "{reason}"),
                other => panic!("{toml}: {other:?}"),
            }
        }
        assert!(
            settings("cluster = [\"nats://127.0.0.1:4222\"]\ncluster-prefix = \"site-1.tej\"")
                .is_ok()
        );
    }
}
