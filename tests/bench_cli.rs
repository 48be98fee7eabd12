//! `tej-hub bench throughput` and `bench latency` end to end, on an embedded hub and through the
//! forwarder (`--yardstick`): the JSON report has every key, and nothing was lost or reordered.
//! No timing is asserted: the figures only have to exist.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The test's own bound on one bench run (it also passes `--timeout`).
const PATIENCE: Duration = Duration::from_secs(240);

/// Runs `tej-hub bench <args> --json` and returns its one JSON object.
fn bench(args: &[&str]) -> Value {
    let child = Command::new(env!("CARGO_BIN_EXE_tej-hub"))
        .arg("bench")
        .args(args)
        .args(["--json", "--timeout", "200"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tej-hub bench");
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = finished
        .recv_timeout(PATIENCE)
        .expect("tej-hub bench finished in time")
        .expect("tej-hub bench ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tej-hub bench {args:?} failed ({}): {stderr}\nstdout: {stdout}",
        output.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("not one JSON object ({error}): {stdout}"))
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
    let report = bench(&[
        "throughput",
        "--embedded",
        "--yardstick",
        "--frames",
        "20000",
    ]);
    check_top(&report, "throughput");
    assert_eq!(report["frames_per_publisher"], 20_000);
    assert_eq!(report["size_bytes"], 128);
    for side in ["hub", "forwarder"] {
        check_figures(&report, side, 20_000);
        assert_eq!(report["measured"][side]["latency_us"], Value::Null);
    }
    for key in ["frames_per_s", "mb_per_s", "publish_frames_per_s"] {
        assert!(report["ratio"][key].as_f64() > Some(0.0), "{key}: {report}");
    }
}

#[test]
fn latency_on_an_embedded_hub_and_the_forwarder() {
    let report = bench(&[
        "latency",
        "--embedded",
        "--yardstick",
        "--seconds",
        "1",
        "--rate",
        "2000",
    ]);
    check_top(&report, "latency");
    assert_eq!(report["rate"], 2000.0);
    for side in ["hub", "forwarder"] {
        check_figures(&report, side, 2000);
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
