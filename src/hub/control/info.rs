//! [`Info`]: the JSON object of the `INFO` reply, with the objects it holds. The session builds
//! one and serializes it; [`HubClient::info`](crate::hub::HubClient::info) parses it back. The
//! hub-wide parts ([`CounterSnapshot`], [`LimitSettings`], [`ClusterView`]) are also what `/varz`
//! and `/metrics` show, so they are defined here once, for every place that shows them.
//!
//! Keys are the field names; objects nest as the fields do. Parsing ignores keys it does not know,
//! so a client reads the `INFO` of a newer hub that adds some.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{CodeSet, GroupName, SlowPolicy};

/// The reply to `INFO` (`OK INFO <json>`): this session's state, the hub's limits and counters.
///
/// ```json
/// {"version":"0.1.0","session":3,"peer":"127.0.0.1:53960","subscriptions":[5,7,8,9],
///  "groups":[{"name":"workers","codes":[6]}],"user":"alice","denied_frames":0,"echo":false,
///  "slow_consumer":"drop","pending_bytes":0,"dropped_frames":2,
///  "limits":{"max_frame_bytes":17179869184,...},
///  "counters":{"frames_in":4,"frames_out":4,"bytes_in":96,"bytes_out":154},
///  "hub":{"connections":3,"open_connections":2,"unrouted_frames":0,...},
///  "cluster":null}
/// ```
///
/// # Examples
/// ```
/// use tej_hub::hub::control::{Info, Reply};
/// # let text = r#"{"version":"0.1.0","session":3,"peer":"127.0.0.1:53960","subscriptions":[5,7],
/// # "user":null,"denied_frames":0,"echo":false,"slow_consumer":"block","pending_bytes":0,
/// # "dropped_frames":0,"limits":{"max_frame_bytes":1,"cut_through_bytes":1,
/// # "max_pending_bytes":1,"slow_consumer_timeout":30,"idle_timeout":0,"stall_timeout":30,
/// # "min_rate_bytes":0,"min_rate_window":10,"auth_timeout":2,"max_connections":0,
/// # "max_connections_per_ip":0,"max_ingress_bytes_per_sec":0},
/// # "counters":{"frames_in":4,"frames_out":4,"bytes_in":96,"bytes_out":154},
/// # "hub":{"connections":3,"open_connections":2,"unrouted_frames":0,"slow_consumers":0,
/// # "dropped_frames":0,"denied_frames":0,"auth_failures":0,"refused_connections":0,
/// # "tls_failures":0,"cluster_dropped_frames":0},"cluster":null}"#;
/// let Ok(Reply::Info(info)) = Reply::parse(format!("OK INFO {text}").as_bytes()) else {
///     panic!("not an INFO reply");
/// };
/// assert_eq!(info.subscriptions.to_string(), "5,7");
/// assert_eq!(info.hub.open_connections, 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// The hub's version (its crate's).
    pub version: String,
    /// This session's id: unique per connection, monotonic from 1.
    pub session: u64,
    /// The address this connection comes from, as the hub sees it.
    pub peer: SocketAddr,
    /// The codes this session is subscribed to: a JSON array of numbers, ascending.
    #[serde(with = "code_list")]
    pub subscriptions: CodeSet,
    /// The queue groups this session is a member of, by name, each with its codes (absent from
    /// an older hub's `INFO`: none).
    #[serde(default)]
    pub groups: Vec<GroupMembership>,
    /// The authenticated user; `null` when anonymous.
    pub user: Option<String>,
    /// This session's publications on codes it may not publish on.
    pub denied_frames: u64,
    /// Whether this session receives its own publications (`ECHO`).
    pub echo: bool,
    /// This session's slow-consumer policy (`SLOW`).
    pub slow_consumer: SlowPolicy,
    /// Bytes queued for this session that its socket has not taken yet.
    pub pending_bytes: u64,
    /// Frames skipped for this session under `drop`.
    pub dropped_frames: u64,
    /// The settings this session works under.
    pub limits: LimitSettings,
    /// This session's traffic.
    pub counters: SessionCounters,
    /// Hub-wide counters: the same snapshot `/varz` and `/metrics` show.
    pub hub: CounterSnapshot,
    /// The cluster link; `null` unless the hub is in a cluster (`--cluster`).
    pub cluster: Option<ClusterView>,
    /// Whether this session's durable publications are acknowledged (`PUBACK`; absent from an
    /// older hub's `INFO`: off).
    #[serde(default)]
    pub puback: bool,
    /// The durable cursors this session is attached to, by name (absent from an older hub's
    /// `INFO`: none).
    #[serde(default)]
    pub durable: Vec<DurableView>,
}

/// A durable subscription (a named cursor), as `INFO` (the session's attached ones), `/varz`
/// and `/subsz` (every cursor of the store) show it:
/// `{"name":"audit","attached":true,"codes":[{"code":5,"acked":12,...}]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableView {
    /// The cursor's name.
    pub name: GroupName,
    /// Whether a session is attached to it now (always `true` in `INFO`).
    pub attached: bool,
    /// Its codes, ascending.
    pub codes: Vec<DurableCodeView>,
}

/// One code of a durable subscription ([`DurableView`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableCodeView {
    /// The code.
    pub code: u8,
    /// Every frame up to this sequence number is acknowledged.
    pub acked: u64,
    /// Frames delivered and not acknowledged (0 while detached).
    pub unacked_frames: u64,
    /// Bytes of those frames (0 while detached).
    pub unacked_bytes: u64,
    /// Frames of the code delivered again after `ack_wait`, since the hub started.
    pub redelivered: u64,
    /// Frames of the code moved to the dead-letter code after `max_deliver`, since the hub
    /// started.
    pub dead_lettered: u64,
}

/// The store's and durable delivery's counters since the hub started, as `INFO`'s `hub.store`,
/// `/varz`'s `store` and `/metrics` show them (docs/durability.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreTotals {
    /// Frames stored.
    pub frames: u64,
    /// Bytes of those frames (as received; the record headers not counted).
    pub bytes: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Write batches (one group commit each).
    pub batches: u64,
    /// Frames refused: the disk full, or a code at its limit under `discard = new`.
    pub refused_full: u64,
    /// Frames refused as larger than their code's `max_frame_bytes`.
    pub refused_too_large: u64,
    /// Frames refused by another I/O error.
    pub io_errors: u64,
    /// Streamed frames dropped because their publisher went away.
    pub abandoned: u64,
    /// Bytes cut from torn or corrupt tails at recovery.
    pub cut_bytes: u64,
    /// Segments deleted by retention.
    pub segments_deleted: u64,
    /// Frames deleted by retention.
    pub frames_deleted: u64,
    /// Frames delivered through durable subscriptions (redeliveries included).
    pub delivered: u64,
    /// Frames delivered again after `ack_wait`.
    pub redelivered: u64,
    /// Frames moved to the dead-letter code (or dropped, without one) after `max_deliver`.
    pub dead_lettered: u64,
    /// `ACK`s received.
    pub acks: u64,
}

/// A session's membership of one queue group, as `INFO` shows it (`groups`):
/// `{"name":"workers","codes":[5,6]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembership {
    /// The group's name.
    pub name: GroupName,
    /// The codes the session takes frames of as a member of it: a JSON array, ascending.
    #[serde(with = "code_list")]
    pub codes: CodeSet,
}

/// One session's traffic, as `INFO` shows it (`counters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCounters {
    /// Frames this session sent (control frames and pings included).
    pub frames_in: u64,
    /// Frames written to this session's socket.
    pub frames_out: u64,
    /// Bytes this session sent.
    pub bytes_in: u64,
    /// Bytes written to this session's socket.
    pub bytes_out: u64,
}

/// The settings a session works under, as `INFO` and `/varz` show them (`limits`); each is the
/// [`HubConfig`](crate::hub::config::HubConfig) field of the same name. Timeouts are in seconds,
/// 0 is off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSettings {
    /// The largest frame the hub relays, in bytes.
    pub max_frame_bytes: u64,
    /// Frames at least this large are relayed as they arrive.
    pub cut_through_bytes: u64,
    /// Bytes queued for a subscriber at which its slow-consumer policy applies.
    pub max_pending_bytes: u64,
    /// How long a blocking subscriber may write nothing while bytes wait.
    pub slow_consumer_timeout: u64,
    /// How long a connection may send nothing.
    pub idle_timeout: u64,
    /// How long a frame in progress may stall.
    pub stall_timeout: u64,
    /// The slowest rate, in bytes/s, a frame may be sent at.
    pub min_rate_bytes: u64,
    /// The window over which `min_rate_bytes` is measured.
    pub min_rate_window: u64,
    /// How long a connection has to authenticate.
    pub auth_timeout: u64,
    /// Connections open at once.
    pub max_connections: u64,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: u64,
    /// Bytes per second read from one connection.
    pub max_ingress_bytes_per_sec: u64,
}

/// The hub-wide counters at one moment, taken by `HubCounters::snapshot`: the one source of
/// `INFO`'s `hub` object, `/varz` and `/metrics`, so the three cannot disagree on what they count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSnapshot {
    /// TCP connections accepted since start (sessions, refused ones and failed TLS handshakes).
    pub connections: u64,
    /// Connections open now.
    pub open_connections: u64,
    /// What happened to frames and connections, by the same keys everywhere.
    #[serde(flatten)]
    pub events: EventCounts,
    /// The store's counters; `null` on a hub without durable codes (absent from an older hub's
    /// `INFO`).
    #[serde(default)]
    pub store: Option<StoreTotals>,
}

/// The event counters of a [`CounterSnapshot`], with the keys `INFO`'s `hub` and `/varz` share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Frames published on a code with no subscriber (here or on another hub).
    pub unrouted_frames: u64,
    /// Subscribers disconnected as slow consumers.
    pub slow_consumers: u64,
    /// Frames skipped for subscribers under `drop`.
    pub dropped_frames: u64,
    /// Frames published on codes their publisher may not publish on.
    pub denied_frames: u64,
    /// `AUTH`s refused for a wrong user or password.
    pub auth_failures: u64,
    /// Connections refused by `max-connections` or `max-connections-per-ip`.
    pub refused_connections: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: u64,
    /// Frames that should have crossed to other hubs and could not (0 off a cluster).
    pub cluster_dropped_frames: u64,
    /// Queue-group frames moved from a leaving member to another (0 from an older hub).
    #[serde(default)]
    pub group_moved_frames: u64,
    /// Queue-group frames cut: partly written to (or streamed to) a member that left.
    #[serde(default)]
    pub group_cut_frames: u64,
}

/// The cluster link as `INFO` and `/varz` show it (docs/cluster.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// This hub's name.
    pub hub: String,
    /// Whether the NATS connection is up.
    pub connected: bool,
    /// How many other hubs this one currently sees.
    pub remote_hubs: usize,
    /// Frames that should have crossed to another hub and could not (link down), or were cut
    /// because part of them was lost.
    pub dropped_frames: u64,
    /// Messages of other hubs' streams that never arrived (sequence gaps).
    pub lost_messages: u64,
    /// Times NATS found this hub's subscription too slow and dropped messages for it.
    pub slow_consumers: u64,
    /// Messages published to NATS.
    pub messages_out: u64,
    /// Bytes of relayed pieces published to NATS.
    pub bytes_out: u64,
    /// Relayed messages received from other hubs.
    pub messages_in: u64,
    /// Bytes of relayed pieces received from other hubs.
    pub bytes_in: u64,
    /// The codes this hub's subscribers want, as a normalized list.
    pub local_codes: String,
    /// The codes other hubs want, as a normalized list.
    pub remote_codes: String,
    /// The other hubs' names.
    pub remote_hub_names: Vec<String>,
    /// Queue-group frames this hub was chosen for, had no member left for, and sent on to
    /// another hub (0 from an older hub).
    #[serde(default)]
    pub group_redispatched_frames: u64,
    /// Queue-group frames this hub had to pass on and no hub had members for.
    #[serde(default)]
    pub group_lost_frames: u64,
    /// The queue groups the other hubs announce.
    #[serde(default)]
    pub remote_groups: Vec<RemoteGroupView>,
}

/// A queue group on another hub, as that hub announced it (`INFO`, `/varz`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteGroupView {
    /// The hub's name.
    pub hub: String,
    /// The group.
    pub group: GroupName,
    /// The codes its members there take.
    #[serde(with = "code_list")]
    pub codes: CodeSet,
    /// How many members it has there.
    pub members: u32,
    /// The bytes queued for them, as last announced.
    pub load: u64,
}

/// A [`CodeSet`] as a JSON array of its codes, ascending; parsing refuses numbers above 127.
mod code_list {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::frame::Status;
    use crate::hub::control::CodeSet;

    pub(super) fn serialize<S: Serializer>(
        set: &CodeSet,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(set.iter().map(Status::code))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<CodeSet, D::Error> {
        Vec::<u8>::deserialize(deserializer)?
            .into_iter()
            .map(|code| {
                Status::new(code).ok_or_else(|| D::Error::custom(format!("code {code} above 127")))
            })
            .collect()
    }
}
