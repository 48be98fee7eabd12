//! The disk's own figures, measured in the directory the stores use (so on their filesystem):
//! sequential bandwidth with one `fdatasync` at the end (`dd bs=1M count=N conv=fdatasync`), and
//! small synced writes per second (4 KiB `write` + `fdatasync`, in a loop). The yardstick the
//! hub's `--store-sync always` at 1 MiB is judged against.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One block of the sequential write.
const BLOCK: usize = 1 << 20;
/// One small synced write.
const SMALL: usize = 4096;

/// What the disk did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Disk {
    /// MB/s (10^6 bytes) writing `sequential_bytes` in 1 MiB blocks, then one `fdatasync`,
    /// timed from the first write to the end of the sync.
    pub(super) sequential_mb_per_s: f64,
    /// Bytes written sequentially.
    pub(super) sequential_bytes: u64,
    /// 4 KiB writes each followed by `fdatasync`, per second.
    pub(super) synced_writes_per_s: f64,
    /// How many small synced writes were made.
    pub(super) synced_writes: u64,
}

impl Disk {
    /// Measures in `dir`: `sequential_bytes` (rounded up to whole MiB) then small synced writes
    /// for `small_for`. The files are removed afterwards.
    pub(super) fn measure(
        dir: &Path,
        sequential_bytes: u64,
        small_for: Duration,
    ) -> std::io::Result<Disk> {
        let path = dir.join("disk-baseline");
        let result = measure_at(&path, sequential_bytes, small_for);
        let _ = std::fs::remove_file(&path);
        result
    }

    /// The figures as JSON.
    pub(super) fn json(&self) -> Value {
        json!({
            "sequential_fdatasync_mb_per_s": (self.sequential_mb_per_s * 10.0).round() / 10.0,
            "sequential_bytes": self.sequential_bytes,
            "synced_4k_writes_per_s": self.synced_writes_per_s.round(),
            "synced_4k_writes": self.synced_writes,
        })
    }
}

fn measure_at(path: &Path, sequential_bytes: u64, small_for: Duration) -> std::io::Result<Disk> {
    let blocks = sequential_bytes.div_ceil(BLOCK as u64).max(1);
    // Not zeros, so a filesystem that compresses or skips zero blocks still writes them.
    let block: Vec<u8> = (0..BLOCK).map(|i| (i % 251) as u8).collect();
    let mut file = create(path)?;
    let start = Instant::now();
    for _ in 0..blocks {
        file.write_all(&block)?;
    }
    file.sync_data()?;
    let seconds = start.elapsed().as_secs_f64();
    drop(file);
    let written = blocks * BLOCK as u64;

    let mut file = create(path)?;
    let small = &block[..SMALL];
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < small_for {
        file.write_all(small)?;
        file.sync_data()?;
        writes += 1;
    }
    let small_seconds = start.elapsed().as_secs_f64();
    Ok(Disk {
        sequential_mb_per_s: written as f64 / 1e6 / seconds.max(f64::MIN_POSITIVE),
        sequential_bytes: written,
        synced_writes_per_s: writes as f64 / small_seconds.max(f64::MIN_POSITIVE),
        synced_writes: writes,
    })
}

/// A fresh, empty file at `path`.
fn create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}
