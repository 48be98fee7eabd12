//! What `bench big-file` prints: the figures derived once from a run ([`Report::new`]), shown as a
//! table for people ([`Report::table`]) or as one JSON object ([`Report::json`]): the publisher,
//! the regular subscribers, the extra ones (slow, stuck) and the hub's counters, the yardstick, the
//! hub's memory, and with --compare the relay without the extra subscribers.

use std::time::Instant;

use serde_json::json;

use super::subscriber::{HubCounters, Stuck, StuckEnd};
use super::{BigFile, Measured, Received, Relayed};
use crate::hub::{HubInfo, RssStats};
use crate::{human_bytes, mb_per_s};

/// A finished run with what it ran against and the figures derived from it, ready to print.
pub(super) struct Report<'a> {
    /// What was asked for.
    args: &'a BigFile,
    /// The hub measured.
    hub: HubInfo,
    /// What was measured.
    measured: Measured,
    /// The relay's figures (with the extra subscribers).
    figures: RelayFigures,
    /// With --compare: the figures of the relay without the extra subscribers.
    baseline: Option<RelayFigures>,
    /// The yardstick's MB/s.
    raw_mb_per_s: f64,
}

/// The figures of one relay.
struct RelayFigures {
    /// Each regular subscriber's figures, in connection order.
    subscribers: Vec<SubscriberFigures>,
    /// The --slow-rate subscriber's figures.
    slow: Option<SubscriberFigures>,
    /// The publisher's write time.
    publish_seconds: f64,
    /// From the first write until the last regular subscriber had the whole frame.
    relay_seconds: f64,
    /// The slowest regular subscriber's MB/s.
    relay_mb_per_s: f64,
    /// File bytes delivered to the regular subscribers together, per second of the whole relay.
    aggregate_mb_per_s: f64,
}

impl RelayFigures {
    /// The figures of `relayed`, a relay of a `size`-byte file.
    fn new(size: u64, relayed: &Relayed) -> RelayFigures {
        let published = &relayed.published;
        let since_start = |at: Instant| at.saturating_duration_since(published.start).as_secs_f64();
        let figures = |received: &Received| SubscriberFigures {
            ttfb_ms: since_start(received.first_byte) * 1e3,
            seconds: since_start(received.end),
            mb_per_s: mb_per_s(size, since_start(received.end)),
            hash: received.hash,
            hash_ok: received.hash == published.hash,
        };
        let subscribers: Vec<SubscriberFigures> = relayed.received.iter().map(figures).collect();
        let relay_seconds = subscribers.iter().map(|f| f.seconds).fold(0.0, f64::max);
        let delivered = size.saturating_mul(subscribers.len() as u64);
        RelayFigures {
            slow: relayed.slow.as_ref().map(figures),
            publish_seconds: since_start(published.end),
            relay_seconds,
            relay_mb_per_s: subscribers
                .iter()
                .map(|f| f.mb_per_s)
                .reduce(f64::min)
                .unwrap_or_default(),
            aggregate_mb_per_s: mb_per_s(delivered, relay_seconds),
            subscribers,
        }
    }
}

/// One subscriber's figures, timed from the publisher's first write.
struct SubscriberFigures {
    /// Until the frame's first bytes were read, in ms.
    ttfb_ms: f64,
    /// Until the frame's last byte was read.
    seconds: f64,
    /// The file size over `seconds`.
    mb_per_s: f64,
    /// xxh3-128 of the file data received.
    hash: u128,
    /// Whether `hash` equals the publisher's.
    hash_ok: bool,
}

impl SubscriberFigures {
    /// The figures as JSON.
    fn json(&self) -> serde_json::Value {
        json!({
            "ttfb_ms": round(self.ttfb_ms, 3),
            "seconds": round(self.seconds, 4),
            "mb_per_s": round(self.mb_per_s, 1),
            "hash_ok": self.hash_ok,
        })
    }
}

/// `part` over `whole`; 0 without a whole.
fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole
    } else {
        0.0
    }
}

/// `value` rounded to `places` decimals, for JSON.
fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// KiB as MiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl<'a> Report<'a> {
    /// The report of `measured`, a run of `args` against `hub`.
    pub(super) fn new(args: &'a BigFile, hub: HubInfo, measured: Measured) -> Report<'a> {
        Report {
            args,
            hub,
            figures: RelayFigures::new(args.size, &measured.relayed),
            baseline: (measured.baseline.as_ref()).map(|run| RelayFigures::new(args.size, run)),
            raw_mb_per_s: mb_per_s(measured.raw.bytes, measured.raw.seconds),
            measured,
        }
    }

    /// Whether every subscriber but the stuck one got the file that was sent (and the
    /// yardstick's ends agree).
    pub(super) fn hashes_match(&self) -> bool {
        self.measured.hashes_match()
    }

    /// `value` over the yardstick; 0 without one.
    fn ratio(&self, value: f64) -> f64 {
        ratio(value, self.raw_mb_per_s)
    }

    /// The report as one JSON object.
    pub(super) fn json(&self) -> serde_json::Value {
        let (args, raw, figures) = (self.args, &self.measured.raw, &self.figures);
        let relayed = &self.measured.relayed;
        let rss = relayed.rss;
        let rss_mib = |field: fn(&RssStats) -> Option<u64>| {
            rss.as_ref().and_then(field).map(|kib| round(mib(kib), 1))
        };
        let mut report = json!({
            "bench": "big-file",
            "size_bytes": args.size,
            "subscribers": figures.subscribers.len(),
            "code": args.code.code(),
            "io_bytes": args.io_size,
            "hub": {
                "addr": self.hub.addr.to_string(),
                "pid": self.hub.pid,
                "spawned": self.hub.spawned(),
            },
            "publisher": {
                "seconds": round(figures.publish_seconds, 4),
                "mb_per_s": round(mb_per_s(args.size, figures.publish_seconds), 1),
            },
            "per_subscriber": figures.subscribers.iter().map(SubscriberFigures::json)
                .collect::<Vec<_>>(),
            "ttfb_ms": figures.subscribers.iter().map(|f| round(f.ttfb_ms, 3)).collect::<Vec<_>>(),
            "relay_seconds": round(figures.relay_seconds, 4),
            "relay_mb_per_s": round(figures.relay_mb_per_s, 1),
            "relay_mb_per_s_aggregate": round(figures.aggregate_mb_per_s, 1),
            "raw_loopback_bytes": raw.bytes,
            "raw_loopback_seconds": round(raw.seconds, 4),
            "raw_loopback_mb_per_s": round(self.raw_mb_per_s, 1),
            "ratio": round(self.ratio(figures.relay_mb_per_s), 3),
            "ratio_aggregate": round(self.ratio(figures.aggregate_mb_per_s), 3),
            "hub_peak_rss_mib": rss_mib(|stats| stats.hwm_kib),
            "hub_rss_max_sampled_mib": rss_mib(|stats| stats.max_rss_kib),
            "hub_rss_before_mib": rss_mib(|stats| stats.first_rss_kib),
            "hub_rss_samples": rss.map(|stats| stats.samples),
            "hash": "xxh3-128",
            "xxh3": format!("{:032x}", relayed.published.hash),
            "hashes_match": self.hashes_match(),
        });
        let slow = figures.slow.as_ref().map(|slow| {
            let mut slow = slow.json();
            slow["rate_mb_per_s"] = json!(args.slow_rate);
            slow
        });
        let stuck = (relayed.stuck.as_ref()).map(|stuck| stuck_json(stuck, relayed.published.hash));
        let counters = relayed.counters.map(|counters| {
            json!({
                "slow_consumers": counters.slow_consumers,
                "dropped_frames": counters.dropped_frames,
            })
        });
        let compare = self.baseline.as_ref().map(|baseline| {
            json!({
                "baseline_relay_mb_per_s": round(baseline.relay_mb_per_s, 1),
                "baseline_relay_mb_per_s_aggregate": round(baseline.aggregate_mb_per_s, 1),
                "baseline_ttfb_ms": baseline.subscribers.iter().map(|f| round(f.ttfb_ms, 3))
                    .collect::<Vec<_>>(),
                "relay_mb_per_s_ratio":
                    round(ratio(figures.relay_mb_per_s, baseline.relay_mb_per_s), 3),
                "aggregate_ratio":
                    round(ratio(figures.aggregate_mb_per_s, baseline.aggregate_mb_per_s), 3),
            })
        });
        report["slow_subscriber"] = json!(slow);
        report["stuck_subscriber"] = json!(stuck);
        report["hub_counters"] = json!(counters);
        report["compare"] = json!(compare);
        report
    }

    /// The report as a table for people.
    pub(super) fn table(&self) -> String {
        let (args, raw, figures) = (self.args, &self.measured.raw, &self.figures);
        let relayed = &self.measured.relayed;
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "tej-hub bench big-file: 1 publisher -> hub -> {} subscriber(s), one frame, one file",
            figures.subscribers.len()
        ));
        line(format!(
            "  file        {} ({} bytes) on status {}, {} writes and reads",
            human_bytes(args.size),
            args.size,
            args.code,
            human_bytes(args.io_size as u64)
        ));
        line(format!("  hub         {}", self.hub.described()));
        line(String::new());
        line(format!(
            "  {:<12} {:>10} {:>10} {:>10}  xxh3-128",
            "", "TTFB ms", "seconds", "MB/s"
        ));
        line(format!(
            "  {:<12} {:>10} {:>10.3} {:>10.1}  {:032x}",
            "publisher",
            "-",
            figures.publish_seconds,
            mb_per_s(args.size, figures.publish_seconds),
            relayed.published.hash
        ));
        let regular = (1..).zip(&figures.subscribers);
        let labelled = regular.map(|(number, figures)| (format!("subscriber {number}"), figures));
        let slow = figures
            .slow
            .iter()
            .map(|figures| ("slow reader".to_owned(), figures));
        for (label, figures) in labelled.chain(slow) {
            let verdict = if figures.hash_ok { "match" } else { "MISMATCH" };
            line(format!(
                "  {label:<12} {:>10.2} {:>10.3} {:>10.1}  {:032x} {verdict}",
                figures.ttfb_ms, figures.seconds, figures.mb_per_s, figures.hash
            ));
        }
        line(String::new());
        let mut row = |label: &str, value: String| line(format!("  {label:<27}{value}"));
        if let Some(rate) = args.slow_rate {
            row(
                "slow reader",
                format!("reads at most {rate} MB/s (the hub's default policy)"),
            );
        }
        if let Some(stuck) = &relayed.stuck {
            row(
                "stuck subscriber",
                stuck_text(stuck, relayed.published.hash),
            );
        }
        if args.slow_rate.is_some() || args.stuck.is_some() {
            row("hub counters", counters_text(relayed.counters));
        }
        row(
            "relay, slowest subscriber",
            format!("{:>9.1} MB/s", figures.relay_mb_per_s),
        );
        row(
            "relay, aggregate",
            format!(
                "{:>9.1} MB/s  ({} x {:.1} MB in {:.3} s)",
                figures.aggregate_mb_per_s,
                figures.subscribers.len(),
                args.size as f64 / 1e6,
                figures.relay_seconds
            ),
        );
        if let Some(baseline) = &self.baseline {
            row(
                "relay without the extras",
                format!(
                    "{:>9.1} MB/s  (slowest subscriber; with them x{:.3}); {:.1} aggregate",
                    baseline.relay_mb_per_s,
                    ratio(figures.relay_mb_per_s, baseline.relay_mb_per_s),
                    baseline.aggregate_mb_per_s
                ),
            );
        }
        let raw_verdict = if raw.sent_hash == raw.received_hash {
            ""
        } else {
            ", HASH MISMATCH"
        };
        row(
            "raw loopback TCP",
            format!(
                "{:>9.1} MB/s  ({:.1} MB in {:.3} s{raw_verdict})",
                self.raw_mb_per_s,
                raw.bytes as f64 / 1e6,
                raw.seconds,
            ),
        );
        row(
            "ratio relay / raw",
            format!(
                "{:>9.2}       (slowest subscriber); {:.2} aggregate",
                self.ratio(figures.relay_mb_per_s),
                self.ratio(figures.aggregate_mb_per_s)
            ),
        );
        row("hub peak RSS", self.rss_text());
        let verdict = if self.hashes_match() {
            "all match"
        } else {
            "MISMATCH"
        };
        row("hashes (xxh3-128)", format!("{verdict:>9}"));
        out
    }

    /// The table's hub memory figures.
    fn rss_text(&self) -> String {
        let shown =
            |kib: Option<u64>| kib.map_or_else(|| "?".to_owned(), |kib| format!("{:.1}", mib(kib)));
        match self.measured.relayed.rss {
            Some(RssStats {
                hwm_kib: Some(hwm),
                max_rss_kib,
                first_rss_kib,
                samples,
            }) => format!(
                "{:>9.1} MiB   (VmHWM; VmRSS {} MiB before, {} MiB at most in {samples} samples)",
                mib(hwm),
                shown(first_rss_kib),
                shown(max_rss_kib),
            ),
            Some(_) => "unknown (cannot read /proc/PID/status)".to_owned(),
            None => "not measured (--hub without --hub-pid)".to_owned(),
        }
    }
}

/// `value`, or `?` when unknown.
fn or_unknown(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |value| value.to_string())
}

/// The stuck subscriber's state as a word for JSON (`closed`, `open`, `error`), whether it ended
/// inside the frame, and the reason or error.
fn stuck_state(end: &StuckEnd) -> (&'static str, Option<bool>, Option<&str>) {
    match end {
        StuckEnd::Closed { mid_frame, reason } => ("closed", Some(*mid_frame), reason.as_deref()),
        StuckEnd::Open { .. } => ("open", None, None),
        StuckEnd::Failed(error) => ("error", None, Some(error)),
    }
}

/// Whether every whole frame the stuck subscriber read hashed as `sent`; `None` without one.
fn stuck_hash_ok(stuck: &Stuck, sent: u128) -> Option<bool> {
    (!stuck.frames.is_empty()).then(|| stuck.frames.iter().all(|hash| *hash == sent))
}

/// The stuck subscriber as JSON; `sent` is the publisher's hash.
fn stuck_json(stuck: &Stuck, sent: u128) -> serde_json::Value {
    let (outcome, mid_frame, reason) = stuck_state(&stuck.end);
    let (dropped_frames, pending_bytes) = match stuck.end {
        StuckEnd::Open {
            dropped_frames,
            pending_bytes,
        } => (dropped_frames, pending_bytes),
        _ => (None, None),
    };
    json!({
        "policy": stuck.policy.as_str(),
        "outcome": outcome,
        "mid_frame": mid_frame,
        "reason": reason,
        "file_bytes_read": stuck.file_bytes,
        "frames_read": stuck.frames.len(),
        "hash_ok": stuck_hash_ok(stuck, sent),
        "dropped_frames": dropped_frames,
        "pending_bytes": pending_bytes,
    })
}

/// The stuck subscriber for the table; `sent` is the publisher's hash.
fn stuck_text(stuck: &Stuck, sent: u128) -> String {
    let state = match &stuck.end {
        StuckEnd::Closed { mid_frame, reason } => format!(
            "closed by the hub {}{}",
            if *mid_frame {
                "inside the frame"
            } else {
                "between frames"
            },
            reason
                .as_deref()
                .map_or_else(String::new, |reason| format!(" ({reason})"))
        ),
        StuckEnd::Open {
            dropped_frames,
            pending_bytes,
        } => format!(
            "still open; INFO: dropped_frames {}, pending_bytes {}",
            or_unknown(*dropped_frames),
            or_unknown(*pending_bytes)
        ),
        StuckEnd::Failed(error) => format!("unknown: {error}"),
    };
    let frames = match stuck_hash_ok(stuck, sent) {
        None => String::new(),
        Some(ok) => format!(
            ", {} whole frame(s), hash {}",
            stuck.frames.len(),
            if ok { "match" } else { "MISMATCH" }
        ),
    };
    format!(
        "SLOW {}: {state}; afterwards it read {} of the file{frames}",
        stuck.policy,
        human_bytes(stuck.file_bytes)
    )
}

/// The hub's slow-consumer counters for the table.
fn counters_text(counters: Option<HubCounters>) -> String {
    match counters {
        Some(counters) => format!(
            "{} slow consumer(s) disconnected, {} frame(s) dropped (INFO, since the hub started)",
            or_unknown(counters.slow_consumers),
            or_unknown(counters.dropped_frames)
        ),
        None => "unknown (no answer to INFO)".to_owned(),
    }
}
