//! Runs `tej-hub bench` as the test binary's sibling and reads its JSON report.
//!
//! Included by the bench test files with `#[path = "common/bench.rs"] mod bench_common;`.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Runs `tej-hub bench <args> --json --timeout <timeout_secs>`; it must succeed within `patience`
/// (the test's own bound on top of the bench's --timeout) and print one JSON object, which is
/// returned.
pub fn bench_json(args: &[&str], timeout_secs: u64, patience: Duration) -> Value {
    let child = Command::new(env!("CARGO_BIN_EXE_tej-hub"))
        .arg("bench")
        .args(args)
        .args(["--json", "--timeout", &timeout_secs.to_string()])
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
        .recv_timeout(patience)
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
