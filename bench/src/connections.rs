//! `tej-hub bench connections`: what idle subscribers cost the hub, and one publication's fan-out
//! to all of them.
//!
//! N connections each subscribe to one code (`SUB 5`, waiting for `OK SUB 5`) and then stay idle.
//! The hub's resident memory (`VmRSS` in /proc/PID/status) before the first connection, and once
//! the last has been idle for a few seconds, gives the cost of one idle connection. Then one frame is published on the code and
//! every connection must receive it; the time from the publish until the last one has read it is
//! the fan-out time. The hub's open descriptors (`/proc/PID/fd`) before and after give the
//! descriptors one connection holds. With `--tls-ca` every connection (the publisher's too) is
//! TLS, so plain and TLS costs are measured by the same code.
//!
//! This process holds one descriptor per connection too, so it raises its own open-files limit
//! first (as the hub does at start) and refuses to run when that is still not enough.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use serde_json::json;
use tej_hub::hub::{HubClient, HubOptions};
use tej_hub::{Frame, MaybeTls, Status};
use tokio::task::JoinSet;

use super::big_file::publishable_status;
use super::hub::{count_fds, status_kib, HubChoice, HubInfo, RunningHub};
use super::{
    before, confirm_sub, enough_open_files, human_bytes, limit, measure_on, one_to, Common,
    TlsTarget, KIB,
};
use crate::Failure;

/// Most connections.
const MAX_CONNECTIONS: u64 = 100_000;
/// How long the hub is left alone after it starts, and the receivers before the publication.
const SETTLE: Duration = Duration::from_millis(500);
/// How long the connections stay idle before the hub's memory is read: the hub gives an idle
/// connection's buffers back about a second after its last byte.
const IDLE: Duration = Duration::from_secs(3);
/// How long one connect-and-subscribe may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the publication may take to reach every connection.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(60);
/// The published frame's message.
const MESSAGE: &str = "tej-hub bench connections";

/// `bench connections` flags.
#[derive(Args)]
pub(crate) struct Connections {
    /// Number of idle subscriber connections (1-100000).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = one_to(MAX_CONNECTIONS))]
    count: u64,
    /// The status code subscribed to and published on (0-126 except 2).
    #[arg(long, value_name = "CODE", default_value = "5", value_parser = publishable_status)]
    code: Status,
    /// Connections being set up at a time (1-1024).
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = one_to(1024))]
    parallel: u64,
    /// TLS to the hub, for every connection (the publisher's too).
    #[command(flatten)]
    tls: TlsTarget,
    #[command(flatten)]
    common: Common,
}

/// `bench connections`: starts (or finds) the hub, measures, prints the report.
pub(crate) fn run(args: &Connections) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(args.common.timeout);
    let open_files = enough_open_files(args.count)?;
    let options = HubOptions {
        tls: args.tls.client()?,
        ..HubOptions::default()
    };
    let mut running = RunningHub::start(&HubChoice::new(&args.common, false), deadline)?;
    let hub = running.info();
    eprintln!(
        "tej-hub bench: hub at {hub}; {} idle connections on code {}",
        args.count, args.code
    );
    // The runtime goes first: it closes every connection before the hub goes.
    let measuring = measure(args, &options, hub.addr, hub.pid, deadline);
    let measured = measure_on(
        "connections",
        &mut running,
        &args.common,
        deadline,
        measuring,
    )?;
    let report = Report {
        args,
        hub,
        open_files,
        measured,
    };
    if args.common.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    if report.measured.all_received() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "bench connections: {} of {} connections received the publication{}",
            report.measured.received,
            args.count,
            report
                .measured
                .failure
                .as_ref()
                .map_or_else(String::new, |error| format!("; first failure: {error}"))
        )))
    }
}

/// What one run measured.
struct Measured {
    /// How long setting up every connection took.
    setup: Duration,
    /// The hub's `VmRSS` before the first connection, in KiB.
    rss_before_kib: Option<u64>,
    /// The hub's `VmRSS` with every connection subscribed and idle, in KiB.
    rss_after_kib: Option<u64>,
    /// The hub's open descriptors before the first connection.
    fds_before: Option<u64>,
    /// The hub's open descriptors with every connection subscribed and idle.
    fds_after: Option<u64>,
    /// The hub's `VmHWM` at the end, in KiB.
    peak_kib: Option<u64>,
    /// Connections that received the publication.
    received: u64,
    /// From the publish until the last connection had read the frame.
    fanout: Duration,
    /// The first connection that failed to receive it, and why.
    failure: Option<String>,
    /// How many connections there were.
    count: u64,
}

impl Measured {
    /// Whether every connection received the publication.
    fn all_received(&self) -> bool {
        self.received == self.count
    }

    /// The hub's memory per idle connection, in bytes.
    fn per_connection_bytes(&self) -> Option<u64> {
        let grown = self.rss_after_kib?.saturating_sub(self.rss_before_kib?);
        Some(grown * KIB / self.count.max(1))
    }

    /// The hub's descriptors per connection, to 0.01.
    fn fds_per_connection(&self) -> Option<f64> {
        let grown = self.fds_after?.saturating_sub(self.fds_before?);
        Some((grown as f64 * 100.0 / self.count.max(1) as f64).round() / 100.0)
    }
}

/// Subscribes every connection, reads the hub's memory, publishes, counts the receipts.
async fn measure(
    args: &Connections,
    options: &HubOptions,
    addr: SocketAddr,
    pid: Option<u32>,
    deadline: Instant,
) -> Result<Measured, String> {
    let rss = |pid: Option<u32>| pid.and_then(|pid| status_kib(pid, "VmRSS:"));
    tokio::time::sleep(SETTLE).await;
    let rss_before_kib = rss(pid);
    let fds_before = pid.and_then(count_fds);

    let started = Instant::now();
    let code = args.code;
    let mut opening = futures_util::stream::iter(0..args.count)
        .map(|_| subscribe(addr, options, code, deadline))
        .buffer_unordered(args.parallel as usize);
    let mut subscribers = Vec::new();
    while let Some(subscribed) = opening.next().await {
        let client =
            subscribed.map_err(|error| format!("connection {}: {error}", subscribers.len() + 1))?;
        subscribers.push(client);
    }
    let setup = started.elapsed();
    eprintln!(
        "tej-hub bench: {} connections subscribed in {:.2} s",
        subscribers.len(),
        setup.as_secs_f64()
    );
    tokio::time::sleep(IDLE).await;
    let rss_after_kib = rss(pid);
    let fds_after = pid.and_then(count_fds);

    let mut publisher = before(
        connect_limit(deadline),
        "connecting",
        HubClient::connect_with(addr, options),
    )
    .await?
    .map_err(|error| format!("publisher: cannot connect: {error}"))?;
    let mut receivers = JoinSet::new();
    for client in subscribers {
        receivers.spawn(receive(client, code));
    }
    // Every receiver is waiting on its socket before the frame goes out.
    tokio::time::sleep(SETTLE).await;
    let published = Instant::now();
    before(
        connect_limit(deadline),
        "publishing",
        publisher.publish(Frame::message(code, MESSAGE)),
    )
    .await?
    .map_err(|error| format!("publisher: {error}"))?;
    let limit = deadline.min(published + FANOUT_TIMEOUT);
    let (mut received, mut last, mut failure) = (0, published, None);
    loop {
        match tokio::time::timeout_at(limit.into(), receivers.join_next()).await {
            Ok(Some(Ok(Ok(at)))) => {
                received += 1;
                last = last.max(at);
            }
            Ok(Some(Ok(Err(error)))) => {
                failure.get_or_insert(error);
            }
            Ok(Some(Err(error))) => {
                failure.get_or_insert(format!("a receiving task failed: {error}"));
            }
            Ok(None) => break,
            Err(_) => {
                failure.get_or_insert(format!(
                    "{} connections had nothing after {} s",
                    receivers.len(),
                    limit.saturating_duration_since(published).as_secs()
                ));
                break;
            }
        }
    }
    Ok(Measured {
        setup,
        rss_before_kib,
        rss_after_kib,
        fds_before,
        fds_after,
        peak_kib: pid.and_then(|pid| status_kib(pid, "VmHWM:")),
        received,
        fanout: last.saturating_duration_since(published),
        failure,
        count: args.count,
    })
}

/// When a step started now must be done: [`SUBSCRIBE_TIMEOUT`] from now, at the latest at
/// `deadline`.
fn connect_limit(deadline: Instant) -> Instant {
    limit(deadline, SUBSCRIBE_TIMEOUT)
}

/// A connection whose `SUB <code>` the hub acknowledged.
async fn subscribe(
    addr: SocketAddr,
    options: &HubOptions,
    code: Status,
    deadline: Instant,
) -> Result<HubClient<MaybeTls>, String> {
    let limit = connect_limit(deadline);
    let mut client = before(limit, "connecting", HubClient::connect_with(addr, options))
        .await?
        .map_err(|error| format!("cannot connect to {addr}: {error}"))?;
    confirm_sub(&mut client, code, limit).await?;
    Ok(client)
}

/// Waits for the publication on `client`; returns when it was read.
async fn receive(mut client: HubClient<MaybeTls>, code: Status) -> Result<Instant, String> {
    match client.next_frame().await {
        Ok(Some(frame)) if frame.status == code && frame.message == MESSAGE.as_bytes() => {
            Ok(Instant::now())
        }
        Ok(Some(frame)) => Err(format!("an unexpected frame: {frame}")),
        Ok(None) => Err("the hub closed the connection".to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

/// A finished run, ready to print.
struct Report<'a> {
    /// What was asked for.
    args: &'a Connections,
    /// The hub measured.
    hub: HubInfo,
    /// This process's soft limit on open files.
    open_files: u64,
    /// What was measured.
    measured: Measured,
}

/// `duration` in milliseconds, rounded to 0.01.
fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e5).round() / 100.0
}

impl Report<'_> {
    /// The report as one JSON object.
    fn json(&self) -> serde_json::Value {
        let measured = &self.measured;
        json!({
            "bench": "connections",
            "connections": measured.count,
            "code": self.args.code.code(),
            "hub": {
                "addr": self.hub.addr.to_string(),
                "pid": self.hub.pid,
                "spawned": self.hub.spawned()
            },
            "setup_seconds": (measured.setup.as_secs_f64() * 1e3).round() / 1e3,
            "rss_before_kib": measured.rss_before_kib,
            "rss_after_kib": measured.rss_after_kib,
            "per_connection_bytes": measured.per_connection_bytes(),
            "tls": self.args.tls.is_on(),
            "fds_before": measured.fds_before,
            "fds_after": measured.fds_after,
            "fds_per_connection": measured.fds_per_connection(),
            "hub_peak_rss_kib": measured.peak_kib,
            "publish_fanout_ms": ms(measured.fanout),
            "received": measured.received,
            "all_received": measured.all_received(),
            "open_files_limit": self.open_files,
        })
    }

    /// The report as a table for people.
    fn table(&self) -> String {
        let measured = &self.measured;
        let kib = |value: Option<u64>| {
            value.map_or_else(
                || "unknown".to_owned(),
                |kib| format!("{kib} KiB ({})", human_bytes(kib * KIB)),
            )
        };
        let per_connection = measured.per_connection_bytes().map_or_else(
            || "not measured (--hub without --hub-pid)".to_owned(),
            |bytes| format!("{bytes} bytes ({})", human_bytes(bytes)),
        );
        let verdict = if measured.all_received() {
            "all"
        } else {
            "MISSING"
        };
        let rows = [
            ("hub", self.hub.described()),
            (
                "connections",
                format!(
                    "{} on code {}, set up in {:.2} s ({} at a time)",
                    measured.count,
                    self.args.code,
                    measured.setup.as_secs_f64(),
                    self.args.parallel
                ),
            ),
            ("hub VmRSS before", kib(measured.rss_before_kib)),
            ("hub VmRSS after", kib(measured.rss_after_kib)),
            ("per connection", per_connection),
            (
                "descriptors",
                measured.fds_per_connection().map_or_else(
                    || "not measured (--hub without --hub-pid)".to_owned(),
                    |fds| format!("{fds} per connection"),
                ),
            ),
            ("hub peak RSS (VmHWM)", kib(measured.peak_kib)),
            (
                "publish fan-out",
                format!(
                    "{:.2} ms (publish until the last connection read it)",
                    ms(measured.fanout)
                ),
            ),
            (
                "received",
                format!("{} of {} ({verdict})", measured.received, measured.count),
            ),
        ];
        let mut out = format!(
            "tej-hub bench connections: {} idle {}subscribers, one publication\n",
            measured.count,
            if self.args.tls.is_on() { "TLS " } else { "" }
        );
        for (label, value) in rows {
            out.push_str(&format!("  {label:<22}{value}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(before: Option<u64>, after: Option<u64>, received: u64) -> Measured {
        Measured {
            setup: Duration::from_secs(1),
            rss_before_kib: before,
            rss_after_kib: after,
            fds_before: Some(10),
            fds_after: Some(3010),
            peak_kib: after,
            received,
            fanout: Duration::from_micros(12_345),
            failure: None,
            count: 1000,
        }
    }

    #[test]
    fn per_connection_figures() {
        assert_eq!(
            measured(Some(10_000), Some(20_000), 1000).per_connection_bytes(),
            Some(10_240)
        );
        assert_eq!(
            measured(Some(10_000), Some(9_000), 1000).per_connection_bytes(),
            Some(0)
        );
        assert_eq!(measured(None, Some(1), 1000).per_connection_bytes(), None);
        assert_eq!(measured(None, None, 1000).fds_per_connection(), Some(3.0));
        assert!(measured(None, None, 1000).all_received());
        assert!(!measured(None, None, 999).all_received());
        assert_eq!(ms(Duration::from_micros(12_345)), 12.35);
    }
}
