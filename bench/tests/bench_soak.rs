//! `tej-hub bench soak` end to end for 30 s against a spawned `tej-hub serve`: the run must find
//! no violation, and its JSON report must carry the figures the checks rest on. 30 s is too short
//! for a leak verdict (the allocator warms up for about a minute): the leak rule itself is
//! unit-tested on synthetic RSS series (`src/bin/tej-hub/bench/soak/rss.rs`).

#[path = "../../tests/common/bench.rs"]
mod bench_common;

use std::time::Duration;

use bench_common::bench_json;

/// The test's own bound on the run (30 s of load, then draining and checks).
const PATIENCE: Duration = Duration::from_secs(300);

#[test]
fn a_30_second_soak_finds_no_violation() {
    let args = [
        "soak",
        "--duration",
        "30",
        "--publishers",
        "2",
        "--subscribers",
        "5",
    ];
    let report = bench_json(&args, 240, PATIENCE);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["hub"]["origin"], "spawned", "{report}");
    assert!(
        report["published"]["frames"].as_u64() > Some(100),
        "{report}"
    );
    let subscribers = report["subscriber_results"]
        .as_array()
        .expect("subscriber_results is an array");
    assert_eq!(subscribers.len(), 5);
    for sub in subscribers {
        match sub["role"].as_str() {
            Some("block" | "block-slow") => assert_eq!(sub["stayed"], true, "{sub}"),
            Some("drop") => {
                assert_eq!(sub["stayed"], true, "{sub}");
                assert_eq!(sub["missed"], sub["dropped_frames"], "{sub}");
            }
            _ => assert!(sub["connections"].as_u64() >= Some(1), "{sub}"),
        }
        assert_eq!(sub["violations"], serde_json::json!([]), "{sub}");
    }
    assert!(
        report["rss_kib"]["samples"].as_u64() >= Some(20),
        "{report}"
    );
    let rule = &report["rss_kib"]["leak_rule"];
    assert_eq!(rule["verdict"], "too short", "{report}");
    let thirds = rule["thirds"].as_array().expect("three thirds");
    assert!(
        thirds.len() == 3 && thirds.iter().all(|third| third["floor"].as_u64() > Some(0)),
        "{report}"
    );
    assert_eq!(report["fds"]["before"], report["fds"]["after"], "{report}");
    assert_eq!(
        report["connections"]["before"], report["connections"]["after"],
        "{report}"
    );
    assert!(
        report["hostile"]["connections"].as_u64() > Some(0),
        "{report}"
    );
}
