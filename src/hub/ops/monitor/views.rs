//! The JSON bodies of the monitoring endpoints, one serde type per body (the type is the
//! endpoint's documentation), and how each is gathered from the running hub. `/metrics` reads the
//! same figures.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::frame::Status;
use crate::hub::control::{
    ClusterView, CounterSnapshot, DurableView, EventCounts, LimitSettings, StoreTotals,
};
use crate::hub::delivery::groups::GroupStats;
use crate::hub::delivery::outbox::Outbox;
use crate::hub::ops::counters::Totals;
use crate::hub::ops::HubState;

/// `GET /healthz`.
#[derive(Debug, Serialize)]
pub(crate) struct Health {
    /// `ok`, or `draining` (answered with 503).
    pub status: &'static str,
}

/// `GET /varz`: the hub as a whole.
#[derive(Debug, Serialize)]
pub(crate) struct Varz {
    /// The crate's version.
    pub version: &'static str,
    /// Seconds since the hub started.
    pub uptime_seconds: u64,
    /// Milliseconds since the hub started (the dashboard's clock for rates).
    pub uptime_ms: u64,
    /// The TEJ listening address.
    pub listen: String,
    /// Connections open now.
    pub connections: u64,
    /// TCP connections accepted since start (sessions, refused ones and failed TLS handshakes).
    pub total_connections: u64,
    /// Frames read from peers (control frames and pings included).
    pub frames_in: u64,
    /// Frames written to peers.
    pub frames_out: u64,
    /// Bytes read from peers.
    pub bytes_in: u64,
    /// Bytes written to peers.
    pub bytes_out: u64,
    /// Bytes handed to subscribers and not yet written.
    pub pending_bytes: u64,
    /// The event counters, with the keys of `INFO`'s `hub`.
    #[serde(flatten)]
    pub events: EventCounts,
    /// The hub's resident memory (0 where `/proc` is not available).
    pub rss_bytes: u64,
    /// Whether the hub is draining.
    pub draining: bool,
    /// The slow-consumer policy new sessions start with.
    pub slow_consumer: String,
    /// When the settings in force were loaded (RFC 3339).
    pub config_loaded_at: String,
    /// The settings new sessions get, with the keys of `INFO`'s `limits`.
    pub limits: LimitSettings,
    /// The cluster link: its state, traffic and drops (`null` off a cluster; docs/cluster.md).
    pub cluster: Option<ClusterView>,
    /// The queue groups with a member, by name.
    pub groups: Vec<GroupView>,
    /// The durable store: its counters, codes and subscriptions (`null` on a hub without durable
    /// codes; docs/durability.md).
    pub store: Option<StoreView>,
}

/// `/varz`'s `store`.
#[derive(Debug, Serialize)]
pub(crate) struct StoreView {
    /// The store directory (`--store-dir`).
    pub dir: String,
    /// The sync policy (`--store-sync`).
    pub sync: String,
    /// The store's and durable delivery's counters since start, with the keys of `INFO`'s
    /// `hub.store`.
    #[serde(flatten)]
    pub totals: StoreTotals,
    /// Each durable code's log, ascending.
    pub codes: Vec<StoredCode>,
    /// Every durable subscription (cursor) of the store, by name.
    pub subscriptions: Vec<DurableView>,
}

/// One durable code's log in `/varz`'s `store`.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct StoredCode {
    /// The code.
    pub code: u8,
    /// Frames kept.
    pub frames: u64,
    /// Bytes on disk (records with their headers).
    pub bytes: u64,
    /// The oldest kept frame's sequence number (the next one's when empty).
    pub first_seq: u64,
    /// The newest kept frame's sequence number (`first_seq - 1` when empty).
    pub last_seq: u64,
    /// Segment files.
    pub segments: u64,
    /// Seconds since the oldest kept frame was stored (`null` when empty).
    pub oldest_age_seconds: Option<u64>,
}

/// `GET /connz`: one page of the open connections.
#[derive(Debug, Serialize)]
pub(crate) struct Connz {
    /// Connections open (all pages).
    pub total: usize,
    /// Connections skipped before this page.
    pub offset: usize,
    /// Most connections on a page.
    pub limit: usize,
    /// This page.
    pub connections: Vec<Connection>,
}

/// One connection in `/connz`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Connection {
    /// The session id (as in `INFO` and the logs).
    pub session: u64,
    /// The peer's address.
    pub peer: String,
    /// The codes it subscribes to, ascending.
    pub subscriptions: Vec<u8>,
    /// Whether it receives its own publications.
    pub echo: bool,
    /// Its slow-consumer policy.
    pub slow_consumer: String,
    /// Bytes handed to it and not yet written to its socket.
    pub pending_bytes: u64,
    /// Frames it sent.
    pub frames_in: u64,
    /// Frames written to it.
    pub frames_out: u64,
    /// Bytes it sent.
    pub bytes_in: u64,
    /// Bytes written to it.
    pub bytes_out: u64,
    /// Frames skipped for it under `drop`.
    pub dropped_frames: u64,
    /// When it connected (RFC 3339).
    pub connected_at: String,
    /// Seconds since it last sent a byte.
    pub idle_seconds: u64,
}

/// The fields `/connz?sort=` takes: the numeric ones, sorted descending.
pub(crate) const SORT_FIELDS: [&str; 8] = [
    "session",
    "pending_bytes",
    "frames_in",
    "frames_out",
    "bytes_in",
    "bytes_out",
    "dropped_frames",
    "idle_seconds",
];

impl Connection {
    fn of(outbox: &Outbox) -> Connection {
        let stats = outbox.stats();
        Connection {
            session: outbox.id().get(),
            peer: stats.peer.to_string(),
            subscriptions: stats.codes().iter().map(Status::code).collect(),
            echo: stats.echo(),
            slow_consumer: outbox.policy().to_string(),
            pending_bytes: outbox.pending(),
            frames_in: stats.frames_in(),
            frames_out: outbox.frames_out(),
            bytes_in: stats.bytes_in(),
            bytes_out: outbox.bytes_out(),
            dropped_frames: outbox.dropped(),
            connected_at: rfc3339(stats.connected_at),
            idle_seconds: stats.idle_seconds(),
        }
    }

    /// The value of numeric field `field` (one of [`SORT_FIELDS`]).
    pub(crate) fn numeric(&self, field: &str) -> Option<u64> {
        Some(match field {
            "session" => self.session,
            "pending_bytes" => self.pending_bytes,
            "frames_in" => self.frames_in,
            "frames_out" => self.frames_out,
            "bytes_in" => self.bytes_in,
            "bytes_out" => self.bytes_out,
            "dropped_frames" => self.dropped_frames,
            "idle_seconds" => self.idle_seconds,
            _ => return None,
        })
    }
}

/// `GET /subsz`: the codes with a subscriber or traffic, the queue groups and the durable
/// subscriptions.
#[derive(Debug, Serialize)]
pub(crate) struct Subsz {
    /// Ascending by code.
    pub codes: Vec<CodeView>,
    /// Every durable subscription (cursor), by name; empty on a hub without durable codes.
    pub durable: Vec<DurableView>,
    /// The queue groups with a member, by name.
    pub groups: Vec<GroupView>,
}

/// One queue group in `/subsz` and `/varz`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct GroupView {
    /// Its name.
    pub name: String,
    /// The codes it has members for, ascending.
    pub codes: Vec<u8>,
    /// Frames given to its members (a moved frame counts again).
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Frames moved from a leaving member to another.
    pub moved_frames: u64,
    /// Frames cut: partly written to a member that left.
    pub cut_frames: u64,
    /// Frames none of its members could take.
    pub unrouted_frames: u64,
    /// Its members, by session id.
    pub members: Vec<MemberView>,
}

/// One member of a queue group.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MemberView {
    /// The session id.
    pub session: u64,
    /// The codes it is a member for.
    pub codes: Vec<u8>,
    /// Frames given to it through the group.
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Bytes queued for it now (all its traffic).
    pub pending_bytes: u64,
}

/// One code in `/subsz`.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct CodeView {
    /// The status code.
    pub code: u8,
    /// Sessions subscribed to it now.
    pub subscribers: usize,
    /// Frames published on it since start.
    pub frames: u64,
    /// Bytes of those frames (whole encoded frames, as on the wire).
    pub bytes: u64,
}

/// A wall-clock time as RFC 3339 (UTC, whole seconds).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The process's resident memory, from `/proc/self/statm`; 0 when unreadable.
pub(crate) fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

impl HubState {
    /// The traffic totals: live sessions plus closed ones.
    pub(crate) fn totals(&self) -> Totals {
        self.counters.sessions.totals()
    }

    /// The hub-wide counters, as `INFO` shows them.
    pub(crate) fn counts(&self) -> CounterSnapshot {
        self.counters
            .snapshot(self.cluster.as_deref(), self.durables.as_deref())
    }

    /// `/varz`.
    pub(crate) fn varz(&self) -> Varz {
        let loaded = self.loaded();
        let totals = self.totals();
        let counts = self.counts();
        Varz {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.started.elapsed().as_secs(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            listen: self.listen.to_string(),
            connections: counts.open_connections,
            total_connections: counts.connections,
            frames_in: totals.frames_in,
            frames_out: totals.frames_out,
            bytes_in: totals.bytes_in,
            bytes_out: totals.bytes_out,
            pending_bytes: totals.pending_bytes,
            events: counts.events,
            rss_bytes: rss_bytes(),
            draining: self.is_draining(),
            slow_consumer: loaded.config.slow_consumer.to_string(),
            config_loaded_at: rfc3339(loaded.at),
            limits: loaded.config.limit_settings(),
            cluster: self.cluster.as_ref().map(|cluster| cluster.view()),
            groups: self.groups(),
            store: self.store_view(),
        }
    }

    /// `/varz`'s `store` (`None` without one).
    fn store_view(&self) -> Option<StoreView> {
        let durables = self.durables.as_ref()?;
        Some(StoreView {
            dir: durables.dir().display().to_string(),
            sync: durables.sync().to_string(),
            totals: durables.totals(),
            codes: self.stored_codes(),
            subscriptions: durables.view(),
        })
    }

    /// Every durable code's log, ascending (empty without a store).
    pub(crate) fn stored_codes(&self) -> Vec<StoredCode> {
        let Some(durables) = &self.durables else {
            return Vec::new();
        };
        let now = SystemTime::now();
        let mut codes: Vec<StoredCode> = durables
            .store()
            .stats()
            .into_iter()
            .map(|stats| StoredCode {
                code: stats.status.code(),
                frames: stats.frames,
                bytes: stats.bytes,
                first_seq: stats.first_seq,
                last_seq: stats.last_seq,
                segments: stats.segments,
                oldest_age_seconds: stats.oldest.map(|oldest| {
                    now.duration_since(oldest)
                        .unwrap_or(Duration::ZERO)
                        .as_secs()
                }),
            })
            .collect();
        codes.sort_by_key(|code| code.code);
        codes
    }

    /// Every queue group with a member, by name, gathered from the table's per-code lists.
    pub(crate) fn groups(&self) -> Vec<GroupView> {
        // Per name: the counters, the members by session, the codes.
        type Gathered = (Arc<GroupStats>, BTreeMap<u64, MemberView>, Vec<u8>);
        let mut groups: BTreeMap<String, Gathered> = BTreeMap::new();
        for code in 0..Status::COUNT {
            let Some(status) = u8::try_from(code).ok().and_then(Status::new) else {
                continue;
            };
            let Some(list) = self.table.groups(status) else {
                continue;
            };
            for group in list.iter() {
                let (_, members, codes) = groups
                    .entry(group.stats.name.to_string())
                    .or_insert_with(|| (group.stats.clone(), BTreeMap::new(), Vec::new()));
                codes.push(status.code());
                for member in &group.members {
                    let session = member.outbox.id().get();
                    let view = members.entry(session).or_insert_with(|| MemberView {
                        session,
                        codes: Vec::new(),
                        frames: member.given.frames.load(Ordering::Relaxed),
                        bytes: member.given.bytes.load(Ordering::Relaxed),
                        pending_bytes: member.outbox.pending(),
                    });
                    view.codes.push(status.code());
                }
            }
        }
        groups
            .into_iter()
            .map(|(name, (stats, members, codes))| {
                let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
                GroupView {
                    name,
                    codes,
                    frames: get(&stats.frames),
                    bytes: get(&stats.bytes),
                    moved_frames: get(&stats.moved_frames),
                    cut_frames: get(&stats.cut_frames),
                    unrouted_frames: get(&stats.unrouted_frames),
                    members: members.into_values().collect(),
                }
            })
            .collect()
    }

    /// Every open connection, by session id.
    pub(crate) fn connections(&self) -> Vec<Connection> {
        self.counters
            .sessions
            .snapshot()
            .iter()
            .map(|outbox| Connection::of(outbox))
            .collect()
    }

    /// Every code with a subscriber or traffic.
    pub(crate) fn subsz(&self) -> Subsz {
        let codes = (0..Status::COUNT)
            .filter_map(|code| {
                let status = Status::new(u8::try_from(code).ok()?)?;
                let subscribers = self.table.subscribers(status).len();
                let (frames, bytes) = self.counters.codes.get(code);
                (subscribers > 0 || frames > 0 || bytes > 0).then_some(CodeView {
                    code: status.code(),
                    subscribers,
                    frames,
                    bytes,
                })
            })
            .collect();
        Subsz {
            codes,
            groups: self.groups(),
            durable: self
                .durables
                .as_ref()
                .map(|durables| durables.view())
                .unwrap_or_default(),
        }
    }

    /// How long the hub has run.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}
