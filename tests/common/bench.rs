//! Runs the benchmark and reads its JSON report: as `tej-hub bench` (the dispatch to
//! `tej-hub-bench`) from the hub's tests, as `tej-hub-bench` from the bench crate's own; the hubs
//! it spawns are the `tej-hub` binary beside it (`cargo test --workspace` builds both).
//!
//! Included with `#[path = ".../tests/common/bench.rs"] mod bench_common;`.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Runs `tej-hub bench <args> --json --timeout <timeout_secs>`; it must succeed within `patience`
/// (the test's own bound on top of the bench's --timeout) and print one JSON object, which is
/// returned.
pub fn bench_json(args: &[&str], timeout_secs: u64, patience: Duration) -> Value {
    // Cargo names only the including package's own binaries: the hub's tests see `tej-hub`, the
    // bench crate's see `tej-hub-bench`.
    let mut command = match (
        option_env!("CARGO_BIN_EXE_tej-hub"),
        option_env!("CARGO_BIN_EXE_tej-hub-bench"),
    ) {
        (Some(hub), _) => {
            let mut command = Command::new(hub);
            command.arg("bench");
            command
        }
        (None, Some(bench)) => Command::new(bench),
        (None, None) => panic!("included by a package with neither tej-hub nor tej-hub-bench"),
    };
    let child = command
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
