//! What `bench big-file` prints: the figures derived once from a run ([`Report::new`]), shown as a
//! table for people ([`Report::table`]) or as one JSON object ([`Report::json`]).

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::json;

use super::{BigFile, Measured};
use crate::bench::hub::RssStats;
use crate::bench::{human_bytes, mb_per_s};

/// Where the measured hub was.
pub(super) struct HubInfo {
    /// Its address.
    pub(super) addr: SocketAddr,
    /// Its process id, when known.
    pub(super) pid: Option<u32>,
    /// Whether the bench spawned it.
    pub(super) spawned: bool,
}

/// A finished run with what it ran against and the figures derived from it, ready to print.
pub(super) struct Report<'a> {
    /// What was asked for.
    args: &'a BigFile,
    /// The hub measured.
    hub: HubInfo,
    /// What was measured.
    measured: Measured,
    /// Each subscriber's figures, in connection order.
    subscribers: Vec<SubscriberFigures>,
    /// The publisher's write time.
    publish_seconds: f64,
    /// From the first write until the last subscriber had the whole frame.
    relay_seconds: f64,
    /// The slowest subscriber's MB/s.
    relay_mb_per_s: f64,
    /// File bytes delivered to all subscribers together, per second of the whole relay.
    aggregate_mb_per_s: f64,
    /// The yardstick's MB/s.
    raw_mb_per_s: f64,
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
        let published = &measured.published;
        let since_start = |at: Instant| at.saturating_duration_since(published.start).as_secs_f64();
        let subscribers: Vec<SubscriberFigures> = measured
            .received
            .iter()
            .map(|received| SubscriberFigures {
                ttfb_ms: since_start(received.first_byte) * 1e3,
                seconds: since_start(received.end),
                mb_per_s: mb_per_s(args.size, since_start(received.end)),
                hash: received.hash,
                hash_ok: received.hash == published.hash,
            })
            .collect();
        let relay_seconds = subscribers.iter().map(|f| f.seconds).fold(0.0, f64::max);
        let delivered = args.size.saturating_mul(subscribers.len() as u64);
        Report {
            args,
            hub,
            publish_seconds: since_start(published.end),
            relay_seconds,
            relay_mb_per_s: subscribers
                .iter()
                .map(|f| f.mb_per_s)
                .reduce(f64::min)
                .unwrap_or_default(),
            aggregate_mb_per_s: mb_per_s(delivered, relay_seconds),
            raw_mb_per_s: mb_per_s(measured.raw.bytes, measured.raw.seconds),
            subscribers,
            measured,
        }
    }

    /// Whether every subscriber got the file that was sent (and the yardstick's ends agree).
    pub(super) fn hashes_match(&self) -> bool {
        self.measured.hashes_match()
    }

    /// `value` over the yardstick; 0 without one.
    fn ratio(&self, value: f64) -> f64 {
        if self.raw_mb_per_s > 0.0 {
            value / self.raw_mb_per_s
        } else {
            0.0
        }
    }

    /// The report as one JSON object.
    pub(super) fn json(&self) -> serde_json::Value {
        let (args, raw) = (self.args, &self.measured.raw);
        let rss = self.measured.rss;
        let rss_mib = |field: fn(&RssStats) -> Option<u64>| {
            rss.as_ref().and_then(field).map(|kib| round(mib(kib), 1))
        };
        json!({
            "bench": "big-file",
            "size_bytes": args.size,
            "subscribers": self.subscribers.len(),
            "code": args.code.code(),
            "io_bytes": args.io_size,
            "hub": {
                "addr": self.hub.addr.to_string(),
                "pid": self.hub.pid,
                "spawned": self.hub.spawned,
            },
            "publisher": {
                "seconds": round(self.publish_seconds, 4),
                "mb_per_s": round(mb_per_s(args.size, self.publish_seconds), 1),
            },
            "per_subscriber": self.subscribers.iter().map(|figures| json!({
                "ttfb_ms": round(figures.ttfb_ms, 3),
                "seconds": round(figures.seconds, 4),
                "mb_per_s": round(figures.mb_per_s, 1),
                "hash_ok": figures.hash_ok,
            })).collect::<Vec<_>>(),
            "ttfb_ms": self.subscribers.iter().map(|f| round(f.ttfb_ms, 3)).collect::<Vec<_>>(),
            "relay_seconds": round(self.relay_seconds, 4),
            "relay_mb_per_s": round(self.relay_mb_per_s, 1),
            "relay_mb_per_s_aggregate": round(self.aggregate_mb_per_s, 1),
            "raw_loopback_bytes": raw.bytes,
            "raw_loopback_seconds": round(raw.seconds, 4),
            "raw_loopback_mb_per_s": round(self.raw_mb_per_s, 1),
            "ratio": round(self.ratio(self.relay_mb_per_s), 3),
            "ratio_aggregate": round(self.ratio(self.aggregate_mb_per_s), 3),
            "hub_peak_rss_mib": rss_mib(|stats| stats.hwm_kib),
            "hub_rss_max_sampled_mib": rss_mib(|stats| stats.max_rss_kib),
            "hub_rss_before_mib": rss_mib(|stats| stats.first_rss_kib),
            "hub_rss_samples": rss.map(|stats| stats.samples),
            "hash": "xxh3-128",
            "xxh3": format!("{:032x}", self.measured.published.hash),
            "hashes_match": self.hashes_match(),
        })
    }

    /// The report as a table for people.
    pub(super) fn table(&self) -> String {
        let (args, raw) = (self.args, &self.measured.raw);
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "tej-hub bench big-file: 1 publisher -> hub -> {} subscriber(s), one frame, one file",
            self.subscribers.len()
        ));
        line(format!(
            "  file        {} ({} bytes) on status {}, {} writes and reads",
            human_bytes(args.size),
            args.size,
            args.code,
            human_bytes(args.io_size as u64)
        ));
        let origin = if self.hub.spawned {
            "spawned: serve --listen 127.0.0.1:0"
        } else {
            "given with --hub"
        };
        let pid = self.hub.pid.map(|pid| format!(", pid {pid}"));
        line(format!(
            "  hub         {}{} ({origin})",
            self.hub.addr,
            pid.unwrap_or_default()
        ));
        line(String::new());
        line(format!(
            "  {:<12} {:>10} {:>10} {:>10}  xxh3-128",
            "", "TTFB ms", "seconds", "MB/s"
        ));
        line(format!(
            "  {:<12} {:>10} {:>10.3} {:>10.1}  {:032x}",
            "publisher",
            "-",
            self.publish_seconds,
            mb_per_s(args.size, self.publish_seconds),
            self.measured.published.hash
        ));
        for (index, figures) in self.subscribers.iter().enumerate() {
            let verdict = if figures.hash_ok { "match" } else { "MISMATCH" };
            line(format!(
                "  {:<12} {:>10.2} {:>10.3} {:>10.1}  {:032x} {verdict}",
                format!("subscriber {}", index + 1),
                figures.ttfb_ms,
                figures.seconds,
                figures.mb_per_s,
                figures.hash
            ));
        }
        line(String::new());
        let mut row = |label: &str, value: String| line(format!("  {label:<27}{value}"));
        row(
            "relay, slowest subscriber",
            format!("{:>9.1} MB/s", self.relay_mb_per_s),
        );
        row(
            "relay, aggregate",
            format!(
                "{:>9.1} MB/s  ({} x {:.1} MB in {:.3} s)",
                self.aggregate_mb_per_s,
                self.subscribers.len(),
                args.size as f64 / 1e6,
                self.relay_seconds
            ),
        );
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
                self.ratio(self.relay_mb_per_s),
                self.ratio(self.aggregate_mb_per_s)
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
        match self.measured.rss {
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
