//! Retention: deleting whole segments, oldest first, while a code is over one of its limits
//! (`max_bytes` and `max_frames` under `discard = old`, `max_age` under either), never below
//! `keep_last` frames. It runs on the I/O thread between batches (and once a second when idle):
//! a deletion is an `unlink`, never a rewrite, so publishers never wait for it.
//!
//! The active segment is rolled at a quarter of `max_bytes` / `max_frames`, so deleting whole
//! segments keeps at least three quarters of what the limit allows. Under `max_age` an active
//! segment whose every frame has expired is sealed and deleted too.

use std::time::SystemTime;

use tracing::{info, warn};

use crate::hub::store::record::unix_nanos;
use crate::hub::store::writer::{CodeWriter, WriteContext};
use crate::hub::store::{Discard, StoreCounters};

/// Deletes what `writer`'s limits say has to go.
pub(crate) fn enforce(writer: &mut CodeWriter, now: SystemTime, cx: WriteContext<'_>) {
    let limits = writer.limits().clone();
    let expired_before = limits.max_age.map(|age| {
        unix_nanos(now).saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX))
    });
    let (mut frames_deleted, mut segments_deleted) = (0u64, 0u64);
    loop {
        let total_frames = writer.total_frames();
        let total_bytes = writer.total_bytes();
        if writer.oldest_sealed().is_none() {
            // Only the active segment left: sealed for deletion when all of it has expired.
            let (frames, last_time) = writer.active_extent();
            let expired = expired_before.is_some_and(|before| frames > 0 && last_time < before);
            if !expired || limits.keep_last > 0 || !writer.is_idle() {
                break;
            }
            if let Err(error) = writer.seal(cx) {
                warn!(code = writer.status().code(), %error, "cannot seal an expired segment");
                break;
            }
            continue;
        }
        let Some(oldest) = writer.oldest_sealed() else {
            break;
        };
        let old = limits.discard == Discard::Old;
        let over = (old
            && (limits.max_bytes.is_some_and(|max| total_bytes > max)
                || limits.max_frames.is_some_and(|max| total_frames > max)))
            || expired_before.is_some_and(|before| oldest.last_time < before);
        if !over || total_frames - oldest.frames() < limits.keep_last {
            break;
        }
        let Some(deleted) = writer.delete_oldest() else {
            break;
        };
        frames_deleted += deleted.frames();
        segments_deleted += 1;
    }
    if segments_deleted > 0 {
        StoreCounters::add(&cx.counters.segments_deleted, segments_deleted);
        StoreCounters::add(&cx.counters.frames_deleted, frames_deleted);
        info!(
            code = writer.status().code(),
            segments = segments_deleted,
            frames = frames_deleted,
            "retention deleted segments"
        );
    }
}
