//! What `bench throughput`, `bench latency` and `bench matrix` print: the figures derived once
//! from a run ([`Figures::new`]), the hub's beside the cross-hub run's, the forwarder's and
//! NATS's with their ratios ([`Report`]), as a table for people or one JSON object; and the
//! matrix's Markdown table ([`matrix_table`]).
//!
//! Definitions: a run starts when the publishers are started. *Delivered frames/s* is the frames
//! received by all subscribers together over the time from the start until the last subscriber
//! read its last frame; *MB/s* the same for message bytes (10^6 bytes); *published frames/s* the
//! frames sent over the time until the last publisher's last write returned. *Lost* counts, per
//! subscriber and publisher, frames sent and never received; *reordered* frames whose sequence
//! number was below one already received from the same publisher; *duplicated* frames received
//! beyond those sent. Latency is one-way: the time a subscriber's read returned minus the send
//! time in the stamp (taken just before the publisher's write), in µs, nearest-rank percentiles.
//!
//! Cross-hub (`--cross-hub`): its ratios are cross-hub ÷ one hub (the other way round from the
//! yardsticks', whose ratios are hub ÷ yardstick). The latency the second hub adds is *added
//! p50* = cross-hub p50 − one-hub p50; with `--nats` it is also given as a multiple of NATS's own
//! p50 in the same run, against [`ADDED_P50_TARGET`].

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde_json::{json, Value};

use super::cross_hub::CrossHubInfo;
use super::generator::Measured;
use super::{Cell, Figure, Pace, Workload};
use crate::hub::HubInfo;
use crate::mb_per_s;

/// The most the second hub may add to the p50, as a multiple of NATS's own p50 (the cluster
/// issue's target).
pub(super) const ADDED_P50_TARGET: f64 = 2.0;

/// One-way latency percentiles, in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Latency {
    /// Samples (every frame received, up to a bound per subscriber).
    samples: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p99_9: f64,
    max: f64,
    mean: f64,
}

impl Latency {
    /// The percentiles of `samples` (in ns; sorted here); `None` without samples.
    fn new(mut samples: Vec<u64>) -> Option<Latency> {
        samples.sort_unstable();
        let max = *samples.last()?;
        let us = |ns: u64| ns as f64 / 1e3;
        let sum: u128 = samples.iter().map(|&ns| u128::from(ns)).sum();
        Some(Latency {
            samples: samples.len() as u64,
            p50: us(percentile(&samples, 500)),
            p90: us(percentile(&samples, 900)),
            p99: us(percentile(&samples, 990)),
            p99_9: us(percentile(&samples, 999)),
            max: us(max),
            mean: sum as f64 / samples.len() as f64 / 1e3,
        })
    }

    /// `(name, value)` for each percentile, in the order printed.
    fn rows(&self) -> [(&'static str, f64); 6] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p99_9),
            ("max", self.max),
            ("mean", self.mean),
        ]
    }
}

/// The nearest-rank percentile of `sorted` (not empty), given in per mille (990 for p99), in
/// whole numbers so that p99.9 of 1,000 samples is the 999th, not the 1,000th.
fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    let rank = (sorted.len() * per_mille).div_ceil(1000);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One run's figures.
#[derive(Debug, Clone)]
pub(super) struct Figures {
    /// Frames all publishers sent.
    sent: u64,
    /// Frames all subscribers received.
    delivered: u64,
    /// Frames sent and never received, summed over subscribers.
    lost: u64,
    /// Frames received out of their publisher's order.
    reordered: u64,
    /// Frames received beyond those sent.
    duplicated: u64,
    /// From the start until the last delivery.
    seconds: f64,
    /// From the start until the last publisher was done.
    publish_seconds: f64,
    frames_per_s: f64,
    mb_per_s: f64,
    publish_frames_per_s: f64,
    /// Whether --seconds stopped a publisher early.
    capped: bool,
    /// Whether every subscriber received every frame before the drain time ran out.
    drained: bool,
    /// Latency, when sampled (`latency`).
    latency: Option<Latency>,
    /// Frames each subscriber received, in connection order (the members' shares of a queue
    /// group).
    per_subscriber: Vec<u64>,
    /// Whether the subscribers were one queue group (each frame to one of them).
    group: bool,
}

impl Figures {
    /// The figures of `measured`, a run of `workload`.
    pub(super) fn new(workload: &Workload, measured: &Measured) -> Figures {
        let mut figures = Figures {
            sent: measured.sent.iter().sum(),
            delivered: 0,
            lost: 0,
            reordered: 0,
            duplicated: 0,
            seconds: 0.0,
            publish_seconds: measured
                .published
                .saturating_duration_since(measured.start)
                .as_secs_f64(),
            frames_per_s: 0.0,
            mb_per_s: 0.0,
            publish_frames_per_s: 0.0,
            capped: measured.capped,
            drained: measured.tallies.iter().all(|tally| tally.drained),
            latency: None,
            per_subscriber: measured.tallies.iter().map(|tally| tally.frames).collect(),
            group: workload.group,
        };
        // A queue group receives each publisher's frames once between its members.
        let mut group_received = vec![0u64; measured.sent.len()];
        let mut samples = Vec::new();
        for tally in &measured.tallies {
            figures.delivered += tally.frames;
            for ((track, &sent), received) in tally
                .tracks
                .iter()
                .zip(&measured.sent)
                .zip(&mut group_received)
            {
                if workload.group {
                    *received += track.received;
                } else {
                    figures.lost += sent.saturating_sub(track.received);
                    figures.duplicated += track.received.saturating_sub(sent);
                }
                figures.reordered += track.reordered;
            }
            if let Some(last) = tally.last {
                let seconds = last.saturating_duration_since(measured.start).as_secs_f64();
                figures.seconds = figures.seconds.max(seconds);
            }
            if let Some(latencies) = &tally.latencies {
                samples.extend_from_slice(latencies);
            }
        }
        if workload.group {
            for (&received, &sent) in group_received.iter().zip(&measured.sent) {
                figures.lost += sent.saturating_sub(received);
                figures.duplicated += received.saturating_sub(sent);
            }
        }
        let per_second = |count: u64, seconds: f64| {
            if seconds > 0.0 {
                count as f64 / seconds
            } else {
                0.0
            }
        };
        figures.frames_per_s = per_second(figures.delivered, figures.seconds);
        figures.mb_per_s = mb_per_s(figures.delivered * workload.size as u64, figures.seconds);
        figures.publish_frames_per_s = per_second(figures.sent, figures.publish_seconds);
        if matches!(workload.pace, Pace::Rate(_)) {
            figures.latency = Latency::new(samples);
        }
        figures
    }

    /// Delivered frames per second.
    pub(super) fn frames_per_s(&self) -> f64 {
        self.frames_per_s
    }

    /// The latency p99 in µs, when sampled.
    pub(super) fn p99(&self) -> Option<f64> {
        self.latency.map(|latency| latency.p99)
    }

    /// Frames each subscriber received.
    pub(super) fn per_subscriber(&self) -> &[u64] {
        &self.per_subscriber
    }

    /// What went wrong, if anything: loss, reordering, duplicates.
    pub(super) fn problem(&self) -> Option<String> {
        (self.lost + self.reordered + self.duplicated > 0).then(|| {
            format!(
                "{} lost, {} reordered, {} duplicated of {} frames",
                self.lost, self.reordered, self.duplicated, self.sent
            )
        })
    }

    /// The figures as a JSON object.
    pub(super) fn json(&self) -> Value {
        let mut object = json!({
            "frames_sent": self.sent,
            "frames_delivered": self.delivered,
            "lost": self.lost,
            "reordered": self.reordered,
            "duplicated": self.duplicated,
            "seconds": round(self.seconds, 4),
            "publish_seconds": round(self.publish_seconds, 4),
            "frames_per_s": round(self.frames_per_s, 0),
            "mb_per_s": round(self.mb_per_s, 1),
            "publish_frames_per_s": round(self.publish_frames_per_s, 0),
            "capped": self.capped,
            "drained": self.drained,
            "latency_us": self.latency.map(|latency| {
                let mut object = json!({ "samples": latency.samples });
                for (name, value) in latency.rows() {
                    object[name.replace('.', "_")] = json!(round(value, 1));
                }
                object
            }),
        });
        if self.group {
            object["per_subscriber_frames"] = json!(self.per_subscriber);
        }
        object
    }

    /// The figure a matrix cell is judged by.
    fn figure(&self, figure: Figure) -> Option<f64> {
        match figure {
            Figure::FramesPerSecond => Some(self.frames_per_s),
            Figure::MegabytesPerSecond => Some(self.mb_per_s),
            Figure::P99 => self.latency.map(|latency| latency.p99),
        }
    }
}

/// `value` rounded to `places` decimals, for JSON.
pub(super) fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// `hub ÷ forwarder`; `None` when the forwarder's figure is 0.
fn ratio(hub: f64, forwarder: f64) -> Option<f64> {
    (forwarder > 0.0).then(|| hub / forwarder)
}

/// The ratios `ours ÷ theirs` of every figure as a JSON object (`null` without `theirs`).
fn ratios(ours: &Figures, theirs: Option<&Figures>) -> Value {
    let Some(theirs) = theirs else {
        return Value::Null;
    };
    let mut object = json!({
        "frames_per_s": ratio(ours.frames_per_s, theirs.frames_per_s).map(|r| round(r, 3)),
        "mb_per_s": ratio(ours.mb_per_s, theirs.mb_per_s).map(|r| round(r, 3)),
        "publish_frames_per_s":
            ratio(ours.publish_frames_per_s, theirs.publish_frames_per_s).map(|r| round(r, 3)),
    });
    if let (Some(ours), Some(theirs)) = (ours.latency, theirs.latency) {
        for ((name, value), (_, other)) in ours.rows().into_iter().zip(theirs.rows()) {
            object[format!("latency_{}", name.replace('.', "_"))] =
                json!(ratio(value, other).map(|r| round(r, 3)));
        }
    }
    object
}

/// The p50 the second hub adds (cross-hub p50 − one-hub p50), in µs, and its ratio to NATS's
/// own p50.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct AddedP50 {
    /// One hub's p50.
    one_hub: f64,
    /// The cross-hub p50.
    cross_hub: f64,
    /// NATS's p50, with `--nats`.
    nats: Option<f64>,
}

impl AddedP50 {
    /// Cross-hub p50 − one-hub p50, in µs.
    fn added(&self) -> f64 {
        self.cross_hub - self.one_hub
    }

    /// `added ÷ NATS p50`; `None` without NATS.
    fn over_nats(&self) -> Option<f64> {
        self.nats.and_then(|nats| ratio(self.added(), nats))
    }

    fn json(&self) -> Value {
        let over_nats = self.over_nats();
        json!({
            "one_hub_p50_us": round(self.one_hub, 1),
            "cross_hub_p50_us": round(self.cross_hub, 1),
            "added_p50_us": round(self.added(), 1),
            "nats_p50_us": self.nats.map(|p50| round(p50, 1)),
            "added_p50_over_nats_p50": over_nats.map(|r| round(r, 3)),
            "target": ADDED_P50_TARGET,
            "met": over_nats.map(|r| r <= ADDED_P50_TARGET),
        })
    }
}

/// A whole number with thousands separators: `1,234,567`.
pub(super) fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The NATS server measured by `--nats`.
#[derive(Debug, Clone, Copy)]
pub(super) struct NatsInfo {
    /// Where it listened.
    pub(super) addr: SocketAddr,
    /// Its process id, when the bench spawned it.
    pub(super) pid: Option<u32>,
    /// Whether the bench spawned it (else `--nats-url` named it).
    pub(super) spawned: bool,
}

/// A finished run: the hub's figures, the forwarder's and NATS's, ready to print.
pub(super) struct Report {
    /// What ran.
    workload: Workload,
    /// The hub measured.
    hub: HubInfo,
    /// The hub's figures.
    measured: Figures,
    /// The forwarder's, with --yardstick.
    pub(super) forwarder: Option<Figures>,
    /// The NATS server's and its figures, with --nats.
    pub(super) nats: Option<(NatsInfo, Figures)>,
    /// The cluster's and the cross-hub figures, with --cross-hub.
    pub(super) cross_hub: Option<(CrossHubInfo, Figures)>,
}

impl Report {
    /// The report of a run of `workload` on the hub, before any yardstick.
    pub(super) fn new(workload: Workload, hub: HubInfo, measured: Figures) -> Report {
        Report {
            workload,
            hub,
            measured,
            forwarder: None,
            nats: None,
            cross_hub: None,
        }
    }

    /// The other runs' figures, in the order printed: the forwarder's, NATS's, the cross-hub
    /// run's.
    fn yardsticks(&self) -> [Option<&Figures>; 3] {
        [
            self.forwarder.as_ref(),
            self.nats.as_ref().map(|(_, figures)| figures),
            self.cross_hub.as_ref().map(|(_, figures)| figures),
        ]
    }

    /// The latency the second hub adds, with `--cross-hub` on `latency`.
    fn added_p50(&self) -> Option<AddedP50> {
        let (_, cross_hub) = self.cross_hub.as_ref()?;
        Some(AddedP50 {
            one_hub: self.measured.latency?.p50,
            cross_hub: cross_hub.latency?.p50,
            nats: self
                .nats
                .as_ref()
                .and_then(|(_, figures)| figures.latency)
                .map(|latency| latency.p50),
        })
    }

    /// `throughput` or `latency`.
    pub(super) fn name(&self) -> &'static str {
        self.workload.name()
    }

    /// Loss, reordering or duplicates, on the hub, the forwarder, NATS or across hubs.
    pub(super) fn problem(&self) -> Option<String> {
        let sides = [Some(&self.measured)].into_iter().chain(self.yardsticks());
        let problems: Vec<String> = ["hub", "forwarder", "nats", "cross-hub"]
            .into_iter()
            .zip(sides)
            .filter_map(|(side, figures)| Some(format!("{side}: {}", figures?.problem()?)))
            .collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// The figures to compare: `(name, hub, [forwarder, nats, cross-hub])`.
    fn rows(&self) -> Vec<(String, f64, [Option<f64>; 3])> {
        let hub = &self.measured;
        let theirs = |figure: fn(&Figures) -> f64| self.yardsticks().map(|f| f.map(figure));
        let mut rows = vec![
            (
                "delivered frames/s".to_owned(),
                hub.frames_per_s,
                theirs(|f| f.frames_per_s),
            ),
            (
                "delivered MB/s".to_owned(),
                hub.mb_per_s,
                theirs(|f| f.mb_per_s),
            ),
            (
                "published frames/s".to_owned(),
                hub.publish_frames_per_s,
                theirs(|f| f.publish_frames_per_s),
            ),
        ];
        if let Some(latency) = hub.latency {
            let theirs = self.yardsticks().map(|f| f.and_then(|f| f.latency));
            for (index, (name, value)) in latency.rows().into_iter().enumerate() {
                let others = theirs.map(|theirs| theirs.map(|theirs| theirs.rows()[index].1));
                rows.push((format!("latency {name} µs"), value, others));
            }
        }
        rows
    }

    /// The report as one JSON object.
    pub(super) fn json(&self) -> Value {
        let workload = &self.workload;
        let (frames, rate) = match workload.pace {
            Pace::Frames(frames) => (Some(frames), None),
            Pace::Rate(rate) => (None, Some(rate)),
        };
        json!({
            "bench": self.name(),
            "publishers": workload.publishers,
            "subscribers": workload.subscribers,
            "size_bytes": workload.size,
            "code": workload.status.code(),
            "frames_per_publisher": frames,
            "rate": rate,
            "seconds": workload.seconds.as_secs(),
            "hub": {
                "addr": self.hub.addr.to_string(),
                "origin": self.hub.origin.name(),
                "pid": self.hub.pid,
            },
            "nats": self.nats.as_ref().map(|(nats, _)| json!({
                "addr": nats.addr.to_string(),
                "origin": if nats.spawned { "spawned" } else { "given" },
                "pid": nats.pid,
            })),
            "cross_hub": self.cross_hub.as_ref().map(|(cluster, _)| cluster.json()),
            "measured": {
                "hub": self.measured.json(),
                "forwarder": self.forwarder.as_ref().map(Figures::json),
                "nats": self.nats.as_ref().map(|(_, figures)| figures.json()),
                "cross_hub": self.cross_hub.as_ref().map(|(_, figures)| figures.json()),
            },
            "ratio": ratios(&self.measured, self.forwarder.as_ref()),
            "ratio_nats": ratios(&self.measured, self.nats.as_ref().map(|(_, figures)| figures)),
            "ratio_cross_hub": self
                .cross_hub
                .as_ref()
                .map_or(Value::Null, |(_, figures)| ratios(figures, Some(&self.measured))),
            "cross_hub_latency": self.added_p50().map(|added| added.json()),
            "ok": self.problem().is_none(),
        })
    }

    /// The report as a table for people.
    pub(super) fn table(&self) -> String {
        let workload = &self.workload;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tej-hub bench {}: {} on code {}",
            self.name(),
            workload.describe(),
            workload.status
        );
        let _ = writeln!(
            out,
            "  hub        {} ({}{})",
            self.hub.addr,
            self.hub.origin.name(),
            self.hub
                .pid
                .map_or_else(String::new, |pid| format!(", pid {pid}"))
        );
        let load = match workload.pace {
            Pace::Frames(frames) => format!(
                "{} frames per publisher, publishing for at most {} s",
                grouped(frames as f64),
                workload.seconds.as_secs()
            ),
            Pace::Rate(rate) => format!(
                "{} frames/s in all for {} s",
                grouped(rate),
                workload.seconds.as_secs()
            ),
        };
        let _ = writeln!(
            out,
            "  load       {load}; writes of about {} KiB",
            super::generator::IO_BYTES / 1024
        );
        if let Some((nats, _)) = &self.nats {
            let _ = writeln!(
                out,
                "  nats       {} ({}{})",
                nats.addr,
                if nats.spawned {
                    "spawned: nats-server -a 127.0.0.1 -p -1"
                } else {
                    "given with --nats-url"
                },
                nats.pid
                    .map_or_else(String::new, |pid| format!(", pid {pid}"))
            );
        }
        if let Some((cluster, _)) = &self.cross_hub {
            let [(a, a_pid), (b, b_pid)] = cluster.hubs;
            let _ = writeln!(
                out,
                "  cross-hub  publishers on {a} (pid {a_pid}), subscribers on {b} (pid {b_pid}), \
                 joined through nats-server {}",
                cluster.nats
            );
            let _ = writeln!(out, "  cpu        {}", cluster.cpu.described());
        }
        // The cross-hub run's columns with --cross-hub, the forwarder's always (a "-" without
        // --yardstick), NATS's with --nats. Which of `yardsticks()` each column shows, its
        // heading, its ratio's heading, and whether that ratio is theirs ÷ the hub's.
        let mut columns = Vec::new();
        if self.cross_hub.is_some() {
            columns.push((2, "cross-hub", "cross/hub", true));
        }
        columns.push((0, "forwarder", "hub/fwd", false));
        if self.nats.is_some() {
            columns.push((1, "nats", "hub/nats", false));
        }
        let _ = writeln!(out);
        let mut head = format!("  {:<22} {:>14}", "", "hub");
        for (_, name, ratio_name, _) in &columns {
            let _ = write!(head, " {name:>14} {ratio_name:>9}");
        }
        let _ = writeln!(out, "{head}");
        let shown = |value: f64| {
            if value >= 1000.0 {
                grouped(value)
            } else {
                format!("{value:.1}")
            }
        };
        let dash = || "-".to_owned();
        for (name, hub, theirs) in self.rows() {
            let _ = write!(out, "  {name:<22} {:>14}", shown(hub));
            for &(index, _, _, inverted) in &columns {
                let other = theirs[index];
                let ratio = other
                    .and_then(|other| {
                        if inverted {
                            ratio(other, hub)
                        } else {
                            ratio(hub, other)
                        }
                    })
                    .map_or_else(dash, |ratio| format!("{ratio:.2}"));
                let _ = write!(out, " {:>14} {ratio:>9}", other.map_or_else(dash, shown));
            }
            let _ = writeln!(out);
        }
        let counts = |figures: &Figures| {
            [
                figures.sent,
                figures.delivered,
                figures.lost,
                figures.reordered,
                figures.duplicated,
            ]
        };
        let hub = counts(&self.measured);
        let theirs = self.yardsticks().map(|figures| figures.map(counts));
        let names = [
            "frames sent",
            "frames delivered",
            "lost",
            "reordered",
            "duplicated",
        ];
        for (index, name) in names.into_iter().enumerate() {
            let mut line = format!("  {name:<22} {:>14}", grouped(hub[index] as f64));
            for &(column, ..) in &columns {
                let other = theirs[column].map_or_else(dash, |f| grouped(f[index] as f64));
                let _ = write!(line, " {other:>14} {:>9}", "");
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let seconds = |figures: &Figures| {
            let note = match (figures.capped, figures.drained) {
                (_, false) => " (drain timed out)",
                (true, true) => " (capped)",
                (false, true) => "",
            };
            format!("{:.3}{note}", figures.seconds)
        };
        let mut line = format!("  {:<22} {:>14}", "seconds", seconds(&self.measured));
        let others = self.yardsticks();
        for &(column, ..) in &columns {
            let other = others[column].map_or_else(dash, seconds);
            let _ = write!(line, " {other:>14} {:>9}", "");
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if let Some(added) = self.added_p50() {
            let versus = match (added.nats, added.over_nats()) {
                (Some(nats), Some(over)) => format!(
                    " = {over:.2} x NATS's own p50 of {nats:.1} µs (target ≤ {ADDED_P50_TARGET:.0}: {})",
                    if over <= ADDED_P50_TARGET { "met" } else { "missed" }
                ),
                _ => " (add --nats to compare it with NATS's own p50)".to_owned(),
            };
            let _ = writeln!(
                out,
                "  added p50 across hubs  {:.1} µs{versus}",
                added.added()
            );
        }
        let verdict = self.problem().unwrap_or_else(|| "none".to_owned());
        let _ = writeln!(out, "  loss or reordering: {verdict}");
        out
    }
}

/// The matrix as Markdown for docs/benchmarks.md: one row per cell with the figure it is judged
/// by, then every figure of every cell with its ratio.
pub(super) fn matrix_table(cells: &[(Cell, Report)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| cell | figure | hub | forwarder | hub ÷ forwarder | target | met | lost / reordered (hub, forwarder) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for (cell, report) in cells {
        let hub = report.measured.figure(cell.figure);
        let forwarder = report
            .forwarder
            .as_ref()
            .and_then(|f| f.figure(cell.figure));
        let ratio = hub.zip(forwarder).and_then(|(hub, fwd)| ratio(hub, fwd));
        let (name, target, met) = match cell.figure {
            Figure::FramesPerSecond => (
                "frames/s",
                format!("≥ {:.2}", cell.target),
                ratio.map(|r| r >= cell.target),
            ),
            Figure::MegabytesPerSecond => (
                "MB/s",
                format!("≥ {:.2}", cell.target),
                ratio.map(|r| r >= cell.target),
            ),
            Figure::P99 => (
                "p99 µs",
                format!("≤ {:.1}", cell.target),
                ratio.map(|r| r <= cell.target),
            ),
        };
        let shown = |value: Option<f64>| match (value, cell.figure) {
            (None, _) => "-".to_owned(),
            (Some(value), Figure::FramesPerSecond) => grouped(value),
            (Some(value), _) => format!("{value:.1}"),
        };
        let loss = |figures: Option<&Figures>| {
            figures.map_or_else(
                || "-".to_owned(),
                |f| format!("{} / {}", f.lost, f.reordered + f.duplicated),
            )
        };
        let _ = writeln!(
            out,
            "| {} | {name} | {} | {} | {} | {target} | {} | {}, {} |",
            cell.label,
            shown(hub),
            shown(forwarder),
            ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            met.map_or("-", |met| if met { "yes" } else { "no" }),
            loss(Some(&report.measured)),
            loss(report.forwarder.as_ref()),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| cell | figure | hub | forwarder | hub ÷ forwarder |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (cell, report) in cells {
        for (name, hub, [forwarder, ..]) in report.rows() {
            let shown = |value: f64| {
                if name.contains("frames/s") {
                    grouped(value)
                } else {
                    format!("{value:.1}")
                }
            };
            let _ = writeln!(
                out,
                "| {} | {name} | {} | {} | {} |",
                cell.label,
                shown(hub),
                forwarder.map_or_else(|| "-".to_owned(), shown),
                forwarder
                    .and_then(|forwarder| ratio(hub, forwarder))
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<u64> = (1..=1000).rev().map(|n| n * 1000).collect();
        let latency = Latency::new(samples).expect("samples");
        assert_eq!(latency.samples, 1000);
        assert_eq!(latency.p50, 500.0);
        assert_eq!(latency.p90, 900.0);
        assert_eq!(latency.p99, 990.0);
        assert_eq!(latency.p99_9, 999.0);
        assert_eq!(latency.max, 1000.0);
        assert_eq!(latency.mean, 500.5);
        assert_eq!(Latency::new(Vec::new()), None);
        assert_eq!(percentile(&[7], 999), 7);
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(grouped(0.0), "0");
        assert_eq!(grouped(999.4), "999");
        assert_eq!(grouped(1000.0), "1,000");
        assert_eq!(grouped(1_234_567.0), "1,234,567");
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
    }
}
