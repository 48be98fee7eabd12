//! `GET /metrics`: OpenMetrics text through prometheus-client. One [`Registry`] holds one
//! collector that reads the hub's counters on each scrape (they are kept where they are
//! incremented, per session and per code, and summed here), so counting costs the data path
//! nothing beyond its own atomics. Names are prefixed `tej_hub_`; counters get `_total`.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::hub::control::{ClusterView, StoreTotals};
use crate::hub::ops::monitor::views::GroupView;
use crate::hub::ops::HubState;

/// The most queue groups `/metrics` has series for (the first by name): group names are bounded
/// in length and charset, not in number, and a scrape must stay bounded. `/subsz` lists them all.
const MAX_METRIC_GROUPS: usize = 100;

/// The content type of OpenMetrics text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry `/metrics` encodes: one collector over `state`.
pub(super) fn registry(state: Arc<HubState>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(HubCollector { state }));
    registry
}

pub(super) async fn scrape(registry: web::Data<Registry>) -> HttpResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => HttpResponse::Ok().content_type(OPENMETRICS).body(text),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

/// Reads the hub's figures on each scrape.
#[derive(Debug)]
struct HubCollector {
    state: Arc<HubState>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Counters given as (name, help, value).
fn counters(encoder: &mut DescriptorEncoder, list: &[(&str, &str, u64)]) -> std::fmt::Result {
    for &(name, help, value) in list {
        counter(encoder, name, help, value)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The cluster link's figures (only on a hub in a cluster).
fn encode_cluster(e: &mut DescriptorEncoder, cluster: &ClusterView) -> std::fmt::Result {
    gauge(
        e,
        "tej_hub_cluster_connected",
        "1 while the NATS connection is up.",
        i64::from(cluster.connected),
    )?;
    gauge(
        e,
        "tej_hub_cluster_remote_hubs",
        "Other hubs this one sees.",
        signed(cluster.remote_hubs as u64),
    )?;
    let list: [(&str, &str, u64); 9] = [
        (
            "tej_hub_cluster_group_redispatched_frames",
            "Queue-group frames chosen for this hub, without a member left here, sent on to another hub.",
            cluster.group_redispatched_frames,
        ),
        (
            "tej_hub_cluster_group_lost_frames",
            "Queue-group frames this hub had to pass on that no hub had members for.",
            cluster.group_lost_frames,
        ),
        (
            "tej_hub_cluster_dropped_frames",
            "Frames that could not cross to other hubs, or were cut by a loss.",
            cluster.dropped_frames,
        ),
        (
            "tej_hub_cluster_lost_messages",
            "Messages of other hubs' streams that never arrived.",
            cluster.lost_messages,
        ),
        (
            "tej_hub_cluster_slow_consumers",
            "Times NATS dropped messages for this hub.",
            cluster.slow_consumers,
        ),
        (
            "tej_hub_cluster_messages_out",
            "Messages published to NATS.",
            cluster.messages_out,
        ),
        (
            "tej_hub_cluster_bytes_out",
            "Bytes of frames published to NATS.",
            cluster.bytes_out,
        ),
        (
            "tej_hub_cluster_messages_in",
            "Messages received from other hubs.",
            cluster.messages_in,
        ),
        (
            "tej_hub_cluster_bytes_in",
            "Bytes of frames received from other hubs.",
            cluster.bytes_in,
        ),
    ];
    counters(e, &list)
}

/// How a per-code series reads its value from a durable code's figures.
type Column = fn(&super::views::StoredCode) -> u64;

/// One family of per-code series: `values` as (code, value); a counter or a gauge.
fn per_code(
    e: &mut DescriptorEncoder,
    (name, help, is_counter): (&str, &str, bool),
    values: &[(u8, u64)],
) -> std::fmt::Result {
    let kind = if is_counter {
        ConstCounter::new(0u64).metric_type()
    } else {
        ConstGauge::new(0i64).metric_type()
    };
    let mut family = e.encode_descriptor(name, help, None, kind)?;
    for &(code, value) in values {
        let label = [("code", code.to_string())];
        let series = family.encode_family(&label)?;
        if is_counter {
            ConstCounter::new(value).encode(series)?;
        } else {
            ConstGauge::new(signed(value)).encode(series)?;
        }
    }
    Ok(())
}

/// Per queue group (at most [`MAX_METRIC_GROUPS`]): members now, frames and bytes given, frames
/// moved, cut and unrouted.
fn encode_groups(e: &mut DescriptorEncoder, groups: &[GroupView]) -> std::fmt::Result {
    let groups = &groups[..groups.len().min(MAX_METRIC_GROUPS)];
    let labels: Vec<[(&str, String); 1]> = groups
        .iter()
        .map(|group| [("group", group.name.clone())])
        .collect();
    type Series = (&'static str, &'static str, fn(&GroupView) -> u64);
    let series: [Series; 5] = [
        (
            "tej_hub_group_frames",
            "Frames given to the group's members.",
            |g| g.frames,
        ),
        (
            "tej_hub_group_bytes",
            "Bytes of the frames given to the group's members.",
            |g| g.bytes,
        ),
        (
            "tej_hub_group_moved",
            "Frames moved from a leaving member to another.",
            |g| g.moved_frames,
        ),
        (
            "tej_hub_group_cut",
            "Frames cut: partly written to a member that left.",
            |g| g.cut_frames,
        ),
        (
            "tej_hub_group_unrouted",
            "Frames none of the group's members could take.",
            |g| g.unrouted_frames,
        ),
    ];
    let mut family = e.encode_descriptor(
        "tej_hub_group_members",
        "Sessions in the queue group now.",
        None,
        ConstGauge::new(0i64).metric_type(),
    )?;
    for (group, label) in groups.iter().zip(&labels) {
        ConstGauge::new(signed(group.members.len() as u64)).encode(family.encode_family(label)?)?;
    }
    for (name, help, value) in series {
        let kind = ConstCounter::new(0u64).metric_type();
        let mut family = e.encode_descriptor(name, help, None, kind)?;
        for (group, label) in groups.iter().zip(&labels) {
            ConstCounter::new(value(group)).encode(family.encode_family(label)?)?;
        }
    }
    Ok(())
}

/// The store's and durable delivery's counters (only on a hub with durable codes).
fn encode_store(e: &mut DescriptorEncoder, totals: &StoreTotals) -> std::fmt::Result {
    let list: [(&str, &str, u64); 15] = [
        ("tej_hub_store_frames", "Frames stored.", totals.frames),
        (
            "tej_hub_store_bytes",
            "Bytes of frames stored.",
            totals.bytes,
        ),
        (
            "tej_hub_store_syncs",
            "fdatasync calls of the store.",
            totals.syncs,
        ),
        (
            "tej_hub_store_batches",
            "Write batches of the store (one group commit each).",
            totals.batches,
        ),
        (
            "tej_hub_store_refused_full",
            "Frames refused: disk full or a code at its limit under discard = new.",
            totals.refused_full,
        ),
        (
            "tej_hub_store_refused_too_large",
            "Frames refused as larger than their code's max_frame_bytes.",
            totals.refused_too_large,
        ),
        (
            "tej_hub_store_io_errors",
            "Frames refused by another I/O error.",
            totals.io_errors,
        ),
        (
            "tej_hub_store_abandoned",
            "Streamed frames dropped because their publisher went away.",
            totals.abandoned,
        ),
        (
            "tej_hub_store_cut_bytes",
            "Bytes cut from torn or corrupt tails at recovery.",
            totals.cut_bytes,
        ),
        (
            "tej_hub_store_segments_deleted",
            "Segments deleted by retention.",
            totals.segments_deleted,
        ),
        (
            "tej_hub_store_frames_deleted",
            "Frames deleted by retention.",
            totals.frames_deleted,
        ),
        (
            "tej_hub_durable_delivered",
            "Frames delivered through durable subscriptions (redeliveries included).",
            totals.delivered,
        ),
        (
            "tej_hub_durable_redelivered",
            "Frames delivered again after ack_wait.",
            totals.redelivered,
        ),
        (
            "tej_hub_durable_dead_lettered",
            "Frames moved to the dead-letter code after max_deliver.",
            totals.dead_lettered,
        ),
        ("tej_hub_durable_acks", "ACKs received.", totals.acks),
    ];
    counters(e, &list)
}

impl Collector for HubCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let state = &self.state;
        let counts = state.counts();
        let totals = state.totals();
        let e = &mut encoder;
        gauge(
            e,
            "tej_hub_connections",
            "Connections open now.",
            signed(counts.open_connections),
        )?;
        gauge(
            e,
            "tej_hub_pending_bytes",
            "Bytes handed to subscribers, not yet written.",
            signed(totals.pending_bytes),
        )?;
        let list: [(&str, &str, u64); 14] = [
            (
                "tej_hub_connections_accepted",
                "TCP connections accepted since start (refused and failed TLS included).",
                counts.connections,
            ),
            (
                "tej_hub_frames_in",
                "Frames read from peers.",
                totals.frames_in,
            ),
            (
                "tej_hub_frames_out",
                "Frames written to peers.",
                totals.frames_out,
            ),
            (
                "tej_hub_bytes_in",
                "Bytes read from peers.",
                totals.bytes_in,
            ),
            (
                "tej_hub_bytes_out",
                "Bytes written to peers.",
                totals.bytes_out,
            ),
            (
                "tej_hub_slow_consumers",
                "Subscribers disconnected as slow consumers.",
                counts.events.slow_consumers,
            ),
            (
                "tej_hub_dropped_frames",
                "Frames dropped for slow subscribers.",
                counts.events.dropped_frames,
            ),
            (
                "tej_hub_unrouted_frames",
                "Frames published on a code with no subscriber.",
                counts.events.unrouted_frames,
            ),
            (
                "tej_hub_denied_frames",
                "Frames published on codes their publisher may not publish on.",
                counts.events.denied_frames,
            ),
            (
                "tej_hub_auth_failures",
                "AUTHs refused for a wrong user or password.",
                counts.events.auth_failures,
            ),
            (
                "tej_hub_refused_connections",
                "Connections refused by a connection limit.",
                counts.events.refused_connections,
            ),
            (
                "tej_hub_tls_failures",
                "TLS handshakes that failed or timed out.",
                counts.events.tls_failures,
            ),
            (
                "tej_hub_group_moved_frames",
                "Queue-group frames moved from a leaving member to another.",
                counts.events.group_moved_frames,
            ),
            (
                "tej_hub_group_cut_frames",
                "Queue-group frames cut: partly written to a member that left.",
                counts.events.group_cut_frames,
            ),
        ];
        counters(e, &list)?;
        let rss = signed(super::views::rss_bytes());
        gauge(
            e,
            "tej_hub_resident_memory_bytes",
            "Resident memory of the hub.",
            rss,
        )?;
        let uptime = signed(state.uptime().as_secs());
        gauge(
            e,
            "tej_hub_uptime_seconds",
            "Seconds since the hub started.",
            uptime,
        )?;
        gauge(
            e,
            "tej_hub_draining",
            "1 while the hub drains.",
            i64::from(state.is_draining()),
        )?;
        if let Some(cluster) = state.cluster.as_ref().map(|cluster| cluster.view()) {
            encode_cluster(e, &cluster)?;
        }

        encode_groups(e, &state.groups())?;
        // Per code: at most 128 label values, only codes with a subscriber or traffic.
        let codes = state.subsz().codes;
        let column = |value: fn(&super::views::CodeView) -> u64| -> Vec<(u8, u64)> {
            codes.iter().map(|c| (c.code, value(c))).collect()
        };
        per_code(
            e,
            (
                "tej_hub_code_subscribers",
                "Sessions subscribed to the code.",
                false,
            ),
            &column(|c| c.subscribers as u64),
        )?;
        per_code(
            e,
            ("tej_hub_code_frames", "Frames published on the code.", true),
            &column(|c| c.frames),
        )?;
        per_code(
            e,
            (
                "tej_hub_code_bytes",
                "Bytes of the frames published on the code.",
                true,
            ),
            &column(|c| c.bytes),
        )?;
        if let Some(totals) = counts.store {
            encode_store(e, &totals)?;
            // Per durable code: at most 126 label values (127 is control, 2 is PING).
            let stored = state.stored_codes();
            let column = |value: fn(&super::views::StoredCode) -> u64| -> Vec<(u8, u64)> {
                stored.iter().map(|c| (c.code, value(c))).collect()
            };
            let gauges: [(&str, &str, Column); 6] = [
                (
                    "tej_hub_store_code_frames",
                    "Frames kept in the code's log.",
                    |c| c.frames,
                ),
                (
                    "tej_hub_store_code_bytes",
                    "Bytes on disk of the code's log.",
                    |c| c.bytes,
                ),
                (
                    "tej_hub_store_code_first_seq",
                    "The oldest kept frame's sequence number.",
                    |c| c.first_seq,
                ),
                (
                    "tej_hub_store_code_last_seq",
                    "The newest kept frame's sequence number.",
                    |c| c.last_seq,
                ),
                (
                    "tej_hub_store_code_segments",
                    "Segment files of the code's log.",
                    |c| c.segments,
                ),
                (
                    "tej_hub_store_code_oldest_age_seconds",
                    "Seconds since the oldest kept frame was stored (0 when empty).",
                    |c| c.oldest_age_seconds.unwrap_or(0),
                ),
            ];
            for (name, help, value) in gauges {
                per_code(e, (name, help, false), &column(value))?;
            }
        }
        Ok(())
    }
}
