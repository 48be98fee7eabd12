//! `tej-hub bench throughput` and `bench latency` end to end, on an embedded hub and through the
//! forwarder (`--yardstick`), on a spawned hub and NATS (`--nats`), and across two hubs joined
//! through NATS (`--cross-hub`): the JSON report has every key, and nothing was lost or
//! reordered. No timing is asserted: the figures only have to exist.

#[path = "../../tests/common/bench.rs"]
mod bench_common;
#[path = "../../tests/common/nats.rs"]
mod nats;

use std::time::Duration;

use serde_json::Value;

use bench_common::bench_json;

/// The test's own bound on one bench run (it also passes `--timeout`).
const PATIENCE: Duration = Duration::from_secs(240);

/// The two sides of a `--yardstick` report.
const SIDES: [&str; 2] = ["hub", "forwarder"];

/// Runs `tej-hub bench <workload> --embedded --yardstick <args> --json`, checks the keys at the
/// top of its report and that each side delivered all `sent` frames, and returns the report.
fn bench_both_sides(workload: &str, args: &[&str], sent: u64) -> Value {
    let all: Vec<&str> = [workload, "--embedded", "--yardstick"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let report = bench_json(&all, 200, PATIENCE);
    check_top(&report, workload);
    for side in SIDES {
        check_figures(&report, side, sent);
    }
    report
}

/// Checks the keys every report has, and that `side` lost and reordered nothing.
fn check_figures(report: &Value, side: &str, sent: u64) {
    let figures = &report["measured"][side];
    for key in [
        "frames_sent",
        "frames_delivered",
        "lost",
        "reordered",
        "duplicated",
        "seconds",
        "publish_seconds",
        "frames_per_s",
        "mb_per_s",
        "publish_frames_per_s",
        "capped",
        "drained",
        "latency_us",
    ] {
        assert!(figures.get(key).is_some(), "no {side}.{key} in {report}");
    }
    assert_eq!(figures["frames_sent"], sent, "{side} in {report}");
    assert_eq!(figures["frames_delivered"], sent, "{side} in {report}");
    assert_eq!(figures["lost"], 0, "{side} in {report}");
    assert_eq!(figures["reordered"], 0, "{side} in {report}");
    assert_eq!(figures["duplicated"], 0, "{side} in {report}");
    assert_eq!(figures["drained"], true, "{side} in {report}");
    assert!(figures["frames_per_s"].as_f64() > Some(0.0), "{report}");
}

/// Checks the keys at the top of a report.
fn check_top(report: &Value, bench: &str) {
    for key in [
        "bench",
        "publishers",
        "subscribers",
        "size_bytes",
        "code",
        "frames_per_publisher",
        "rate",
        "seconds",
        "hub",
        "measured",
        "ratio",
        "ok",
    ] {
        assert!(report.get(key).is_some(), "no {key:?} in {report}");
    }
    assert_eq!(report["bench"], bench);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["hub"]["origin"], "embedded", "{report}");
    assert!(report["hub"]["addr"]
        .as_str()
        .is_some_and(|addr| addr.starts_with("127.0.0.1:")));
}

#[test]
fn throughput_on_an_embedded_hub_and_the_forwarder() {
    let report = bench_both_sides("throughput", &["--frames", "20000"], 20_000);
    assert_eq!(report["frames_per_publisher"], 20_000);
    assert_eq!(report["size_bytes"], 128);
    for side in SIDES {
        assert_eq!(report["measured"][side]["latency_us"], Value::Null);
    }
    for key in ["frames_per_s", "mb_per_s", "publish_frames_per_s"] {
        assert!(report["ratio"][key].as_f64() > Some(0.0), "{key}: {report}");
    }
}

#[test]
fn latency_on_an_embedded_hub_and_the_forwarder() {
    let report = bench_both_sides("latency", &["--seconds", "1", "--rate", "2000"], 2000);
    assert_eq!(report["rate"], 2000.0);
    for side in SIDES {
        let latency = &report["measured"][side]["latency_us"];
        assert_eq!(latency["samples"], 2000, "{report}");
        for key in ["p50", "p90", "p99", "p99_9", "max", "mean"] {
            assert!(latency[key].as_f64().is_some(), "no {side}.{key}: {report}");
        }
        assert!(
            latency["p50"].as_f64() <= latency["max"].as_f64(),
            "{report}"
        );
    }
    for key in ["latency_p99", "latency_p50", "frames_per_s"] {
        assert!(report["ratio"][key].as_f64().is_some(), "{key}: {report}");
    }
}

/// `--nats`: the same load through a `nats-server` the bench spawns (scripts/test installs the
/// Debian package), reported beside the hub's with its ratios. Skipped, loudly, where
/// `nats-server` is not installed, but never under CI (`CI` set), which must have it.
#[test]
fn latency_on_a_spawned_hub_and_nats() {
    if !nats::available("latency_on_a_spawned_hub_and_nats") {
        return;
    }
    let args = ["latency", "--nats", "--seconds", "1", "--rate", "1000"];
    let report = bench_json(&args, 200, PATIENCE);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["measured"]["forwarder"], Value::Null, "{report}");
    assert_eq!(report["nats"]["origin"], "spawned", "{report}");
    assert!(report["nats"]["addr"]
        .as_str()
        .is_some_and(|addr| addr.starts_with("127.0.0.1:")));
    for side in ["hub", "nats"] {
        check_figures(&report, side, 1000);
        assert_eq!(
            report["measured"][side]["latency_us"]["samples"], 1000,
            "{report}"
        );
    }
    for key in ["latency_p99", "latency_p50", "frames_per_s"] {
        assert!(
            report["ratio_nats"][key].as_f64().is_some(),
            "{key}: {report}"
        );
    }
}

/// Checks a `--cross-hub` report: the cluster's processes, both hubs' state after the run (each
/// saw the other, frames crossed through NATS and none was dropped or lost), and that the one-hub
/// and the cross-hub runs each delivered every frame they sent. Returns what the cross-hub run
/// sent.
fn check_cross_hub(report: &Value) -> u64 {
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["hub"]["origin"], "spawned", "{report}");
    let cluster = &report["cross_hub"];
    for (key, name) in [
        ("publishers_hub", "bench-a"),
        ("subscribers_hub", "bench-b"),
    ] {
        assert_eq!(cluster[key]["name"], name, "{report}");
        assert!(
            cluster[key]["addr"]
                .as_str()
                .is_some_and(|addr| addr.starts_with("127.0.0.1:")),
            "{report}"
        );
        let state = &cluster["cluster_after"][name];
        assert_eq!(state["remote_hubs"], 1, "{name}: {report}");
        assert_eq!(state["connected"], true, "{name}: {report}");
        for counter in ["dropped_frames", "lost_messages", "slow_consumers"] {
            assert_eq!(state[counter], 0, "{name}.{counter}: {report}");
        }
    }
    assert!(
        cluster["nats"]["addr"]
            .as_str()
            .is_some_and(|addr| addr.starts_with("127.0.0.1:")),
        "{report}"
    );
    let after = &cluster["cluster_after"];
    assert!(
        after["bench-a"]["messages_out"].as_u64() > Some(0),
        "{report}"
    );
    assert!(
        after["bench-b"]["messages_in"].as_u64() > Some(0),
        "{report}"
    );
    for process in ["nats_server", "publishers_hub", "subscribers_hub", "load"] {
        assert!(
            cluster["cpu_seconds"][process].as_f64() >= Some(0.0),
            "{process}: {report}"
        );
    }
    for side in ["hub", "cross_hub"] {
        let figures = &report["measured"][side];
        let sent = figures["frames_sent"].as_u64().unwrap_or(0);
        assert!(sent > 0, "{side}: {report}");
        check_figures(report, side, sent);
    }
    for key in ["frames_per_s", "mb_per_s", "publish_frames_per_s"] {
        assert!(
            report["ratio_cross_hub"][key].as_f64() > Some(0.0),
            "{key}: {report}"
        );
    }
    report["measured"]["cross_hub"]["frames_sent"]
        .as_u64()
        .unwrap_or(0)
}

/// `--cross-hub`: the same load with the publishers on one spawned hub and the subscribers on
/// another, the two joined through a spawned nats-server, beside the one-hub run; with `--nats`,
/// the latency the second hub adds as a multiple of NATS's own p50. Skipped like the test above.
#[test]
fn throughput_and_latency_across_two_hubs() {
    if !nats::available("throughput_and_latency_across_two_hubs") {
        return;
    }
    let args = [
        "throughput",
        "--cross-hub",
        "--frames",
        "20000",
        "--seconds",
        "1",
    ];
    let report = bench_json(&args, 200, PATIENCE);
    check_cross_hub(&report);
    assert_eq!(report["cross_hub_latency"], Value::Null, "{report}");

    let args = [
        "latency",
        "--cross-hub",
        "--nats",
        "--seconds",
        "1",
        "--rate",
        "1000",
    ];
    let report = bench_json(&args, 200, PATIENCE);
    assert_eq!(check_cross_hub(&report), 1000, "{report}");
    for side in ["hub", "nats", "cross_hub"] {
        check_figures(&report, side, 1000);
        assert_eq!(
            report["measured"][side]["latency_us"]["samples"], 1000,
            "{side}: {report}"
        );
    }
    assert!(
        report["ratio_cross_hub"]["latency_p50"].as_f64().is_some(),
        "{report}"
    );
    let added = &report["cross_hub_latency"];
    for key in [
        "one_hub_p50_us",
        "cross_hub_p50_us",
        "added_p50_us",
        "nats_p50_us",
        "added_p50_over_nats_p50",
    ] {
        assert!(added[key].as_f64().is_some(), "{key}: {report}");
    }
    assert_eq!(added["target"], 2.0, "{report}");
    assert!(added["met"].is_boolean(), "{report}");
}

/// `bench group`: NATS's queue group of 4 runs and shares every frame out exactly once; the hub's
/// group cells run when the hub has queue groups, and otherwise the report says it has none
/// (the hub answered the group subscription with `ERR`) instead of hanging. Skipped like the
/// tests above where `nats-server` is not installed.
#[test]
fn group_beside_nats_queue_group() {
    if !nats::available("group_beside_nats_queue_group") {
        return;
    }
    let args = [
        "group",
        "--sizes",
        "128",
        "--frames",
        "20000",
        "--seconds",
        "1",
        "--rate",
        "1000",
    ];
    let report = bench_json(&args, 120, PATIENCE);
    assert_eq!(report["bench"], "group", "{report}");
    assert_eq!(report["ok"], true, "{report}");
    let cell = &report["cells"][0];
    assert_eq!(cell["size_bytes"], 128, "{report}");
    assert_eq!(cell["hub_one"]["frames_delivered"], 20_000, "{report}");
    let nats = &cell["nats_group"];
    assert_eq!(nats["frames_delivered"], 20_000, "{report}");
    assert_eq!(nats["lost"], 0, "{report}");
    assert_eq!(nats["duplicated"], 0, "{report}");
    let shares = nats["per_subscriber_frames"].as_array().expect("shares");
    assert_eq!(shares.len(), 4, "{report}");
    assert!(cell["nats_spread_pct"].as_f64().is_some(), "{report}");
    let latency = &report["latency"];
    assert_eq!(
        latency["hub_one"]["latency_us"]["samples"], 1000,
        "{report}"
    );
    match report["hub_groups"].as_bool() {
        Some(true) => {
            assert_eq!(cell["hub_group"]["frames_delivered"], 20_000, "{report}");
            assert!(cell["ratio_group_to_one"].as_f64().is_some(), "{report}");
            assert!(cell["ratio_group_to_nats"].as_f64().is_some(), "{report}");
            assert!(cell["spread_pct"].as_f64().is_some(), "{report}");
            assert!(
                latency["ratio_p99_group_to_one"].as_f64().is_some(),
                "{report}"
            );
        }
        Some(false) => {
            assert!(report["hub_no_groups_reason"].is_string(), "{report}");
            assert_eq!(cell["hub_group"], Value::Null, "{report}");
        }
        None => panic!("no hub_groups in {report}"),
    }
}

/// `bench durable`: JetStream (file storage) publishes with PubAcks and a durable pull consumer
/// reads back with acks; the disk baseline runs; the hub's cells run when it has durable codes,
/// and otherwise the report says it has none instead of hanging. Short and small: the figures
/// only have to exist. Skipped like the tests above where `nats-server` is not installed.
#[test]
fn durable_beside_jetstream_and_the_disk() {
    if !nats::available("durable_beside_jetstream_and_the_disk") {
        return;
    }
    let args = [
        "durable",
        "--sizes",
        "128",
        "--publishers",
        "1",
        "--consumers",
        "1",
        "--seconds",
        "1",
        "--stall",
        "5",
        "--disk-bytes",
        "8MiB",
        "--disk-seconds",
        "1",
    ];
    let report = bench_json(&args, 120, PATIENCE);
    assert_eq!(report["bench"], "durable", "{report}");
    assert_eq!(report["ok"], true, "{report}");
    let disk = &report["disk"][0];
    assert!(
        disk["sequential_fdatasync_mb_per_s"].as_f64() > Some(0.0),
        "{report}"
    );
    assert!(
        disk["synced_4k_writes_per_s"].as_f64() > Some(0.0),
        "{report}"
    );
    let runs = report["runs"].as_array().expect("runs");
    let jetstream: Vec<&Value> = runs
        .iter()
        .filter(|run| run["side"] == "jetstream")
        .collect();
    assert_eq!(jetstream.len(), 2, "publish and consume: {report}");
    for run in &jetstream {
        assert!(run["frames"].as_u64() > Some(0), "{report}");
        assert!(run["frames_per_s"].as_f64() > Some(0.0), "{report}");
        assert_eq!(run["errors"], 0, "{report}");
    }
    let hub_runs = runs.iter().filter(|run| run["side"] != "jetstream").count();
    match report["hub"]["durable"].as_bool() {
        // Both sync policies, publish and consume.
        Some(true) => assert_eq!(hub_runs, 4, "{report}"),
        Some(false) => {
            assert_eq!(hub_runs, 0, "{report}");
            assert!(report["hub"]["missing"].is_string(), "{report}");
        }
        None => panic!("no hub.durable in {report}"),
    }
    assert!(
        report["medians"][0]["jetstream"]["frames_per_s"].as_f64() > Some(0.0),
        "{report}"
    );
}
