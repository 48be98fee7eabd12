//! The durable store: a segmented, append-only log per durable code on local disk, written by
//! one I/O thread so that publishers never wait for the disk (docs/durability.md).
//!
//! - [`Store`] is the facade the hub uses: [`Store::open`] recovers every code's log and starts
//!   the I/O thread; [`Store::append`] queues a publisher's [`Piece`] and returns at once (the
//!   outcome reaches an [`AckSink`] on the I/O thread); [`Store::reader`] replays a code from a
//!   [`Position`]; [`Store::watch`] tells when new frames are visible; [`Store::cursors`] keeps the
//!   durable subscriptions' cursors.
//! - [`Backend`] is what another store (e.g. JetStream streams) would implement behind the same
//!   facade.
//! - Rooms: `record` (the on-disk record header), `segment` (segment files and their names),
//!   `index` (the sparse index), `log` (one code's log: the I/O thread's side and the readers'
//!   view), `recover` (open-time scan and torn-tail cut), `retention`, `cursors`, `io` (the I/O
//!   thread, group commit, disk-full handling), `stage` (small streamed frames gathered in memory
//!   until whole, so several publishers' frames do not wait for each other's tail),
//!   [`inspect`] (the offline `tej-hub store` command).
//!
//! # Lock order
//! None of the locks here takes another: the I/O queue (`io`), a code's view (`log`), the cursor
//! table (`cursors`). The durable attachments (`hub::durable`) are held while the cursor table
//! and a code's view are taken (`delivery/mod.rs` has the whole order). None is held across a
//! disk write; [`Gate`]s are opened and closed after the queue lock is released.

mod cursors;
mod index;
pub mod inspect;
mod io;
mod log;
pub mod record;
mod recover;
mod retention;
mod segment;
mod stage;
mod writer;

#[cfg(test)]
mod measure;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::frame::Status;
use crate::hub::config::{DurableConfig, HubConfig};
use crate::hub::control::{CodeSet, ControlError};
use crate::hub::delivery::flow::Gate;
use crate::hub::delivery::relay::Piece;
use crate::hub::session::SessionId;

// The session path's vocabulary (issue 22's next stage).
#[allow(unused_imports)]
pub(crate) use cursors::{CodeCursor, Cursor, CursorStore};
#[allow(unused_imports)]
pub(crate) use log::{StoreReader, StoredFrame};

/// The default store directory.
pub const DEFAULT_DIR: &str = "./tej-hub-data";
/// The default segment target size: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The default time a durable subscriber has to acknowledge a frame: 30 s (JetStream's).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// When an appended frame counts as stored (`--store-sync`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SyncPolicy {
    /// `always`: acknowledged after `fdatasync`; one sync covers every frame written since the
    /// last (group commit). Loses nothing acknowledged on a crash or a power loss.
    #[default]
    Always,
    /// `interval=<duration>`: acknowledged once written to the kernel; synced on a timer. A power
    /// loss loses up to the interval.
    Interval(Duration),
    /// `os`: acknowledged once written to the kernel; the kernel syncs when it likes.
    Os,
}

impl std::str::FromStr for SyncPolicy {
    type Err = StoreConfigError;

    fn from_str(text: &str) -> Result<SyncPolicy, StoreConfigError> {
        match text {
            "always" => Ok(SyncPolicy::Always),
            "os" => Ok(SyncPolicy::Os),
            _ => {
                let every = text
                    .strip_prefix("interval=")
                    .and_then(|every| humantime::parse_duration(every).ok())
                    .filter(|every| !every.is_zero())
                    .ok_or_else(|| StoreConfigError::Sync(text.to_owned()))?;
                Ok(SyncPolicy::Interval(every))
            }
        }
    }
}

impl TryFrom<String> for SyncPolicy {
    type Error = StoreConfigError;

    fn try_from(text: String) -> Result<SyncPolicy, StoreConfigError> {
        text.parse()
    }
}

/// `always`, `interval=<duration>` (humantime, e.g. `interval=1s`) or `os`.
impl std::fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncPolicy::Always => f.write_str("always"),
            SyncPolicy::Interval(every) => {
                write!(f, "interval={}", humantime::format_duration(*every))
            }
            SyncPolicy::Os => f.write_str("os"),
        }
    }
}

/// What a code at its `max_bytes` or `max_frames` does with a new frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Delete the oldest segments to make room (default).
    #[default]
    Old,
    /// Refuse the new frame (`ERR store full <code>`).
    New,
}

/// A durable code list's limits and subscription settings, resolved from a `[[durable]]` table
/// or `--durable`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeLimits {
    /// Most bytes (records and their headers) kept per code; `None` is no limit.
    pub max_bytes: Option<u64>,
    /// Frames older than this are deleted (a whole segment at a time); `None` is no limit.
    pub max_age: Option<Duration>,
    /// Most frames kept per code; `None` is no limit.
    pub max_frames: Option<u64>,
    /// What happens at `max_bytes` / `max_frames`.
    pub discard: Discard,
    /// The newest frames kept per code whatever the other limits say.
    pub keep_last: u64,
    /// Largest frame stored on these codes; larger ones are refused (`None`: the hub's own).
    pub max_frame_bytes: Option<u64>,
    /// Segment target size.
    pub segment_bytes: u64,
    /// Time a durable subscriber has to acknowledge a frame before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries of one frame before it goes to `dead_letter`; `None` is unlimited.
    pub max_deliver: Option<u64>,
    /// Where frames delivered `max_deliver` times go; `None` drops them (counted).
    pub dead_letter: Option<Status>,
}

impl Default for CodeLimits {
    fn default() -> CodeLimits {
        CodeLimits {
            max_bytes: None,
            max_age: None,
            max_frames: None,
            discard: Discard::Old,
            keep_last: 0,
            max_frame_bytes: None,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            ack_wait: DEFAULT_ACK_WAIT,
            max_deliver: None,
            dead_letter: None,
        }
    }
}

impl CodeLimits {
    /// The size at which a code's active segment is rolled: the segment target, but at most a
    /// quarter of `max_bytes`, so retention by whole segments keeps most of what the limit allows.
    pub(crate) fn roll_bytes(&self) -> u64 {
        let quarter = self.max_bytes.map_or(u64::MAX, |max| (max / 4).max(1));
        self.segment_bytes.min(quarter).max(1)
    }

    /// The frame count at which the active segment is rolled: a quarter of `max_frames`.
    pub(crate) fn roll_frames(&self) -> u64 {
        self.max_frames.map_or(u64::MAX, |max| (max / 4).max(1))
    }
}

/// One durable code list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableCodes {
    /// The codes.
    pub codes: CodeSet,
    /// Their limits.
    pub limits: CodeLimits,
}

/// Everything [`Store::open`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    /// The store directory (`--store-dir`).
    pub dir: PathBuf,
    /// The sync policy (`--store-sync`).
    pub sync: SyncPolicy,
    /// The durable code lists; no code in two of them.
    pub durable: Vec<DurableCodes>,
    /// Reserve each new segment's blocks with `fallocate` (`FALLOC_FL_KEEP_SIZE`).
    pub preallocate: bool,
}

impl StoreSettings {
    /// Settings for `dir` with nothing durable yet.
    pub fn new(dir: impl Into<PathBuf>) -> StoreSettings {
        StoreSettings {
            dir: dir.into(),
            sync: SyncPolicy::Always,
            durable: Vec::new(),
            preallocate: false,
        }
    }

    /// The store settings `config` asks for; `None` when no code is durable.
    ///
    /// # Errors
    /// [`StoreConfigError`] for a code list that does not parse, a code in two tables, a
    /// duration that does not parse, a limit out of range or a reserved dead-letter code.
    pub fn from_config(config: &HubConfig) -> Result<Option<StoreSettings>, StoreConfigError> {
        let mut durable: Vec<DurableCodes> = Vec::new();
        let mut all = CodeSet::empty();
        for table in &config.durable {
            let list = table.resolve()?;
            if let Some(code) = list.codes.intersection(all).iter().next() {
                return Err(StoreConfigError::Overlap { code: code.code() });
            }
            all = all.union(list.codes);
            durable.push(list);
        }
        if durable.is_empty() {
            return Ok(None);
        }
        Ok(Some(StoreSettings {
            dir: config.store_dir.clone(),
            sync: config.store_sync,
            durable,
            preallocate: false,
        }))
    }

    /// Every durable code.
    pub fn codes(&self) -> CodeSet {
        self.durable
            .iter()
            .fold(CodeSet::empty(), |all, list| all.union(list.codes))
    }

    /// The limits of `status`, if it is durable.
    pub fn limits(&self, status: Status) -> Option<&CodeLimits> {
        self.durable
            .iter()
            .find(|list| list.codes.contains(status))
            .map(|list| &list.limits)
    }
}

impl DurableConfig {
    /// The code list and limits this table asks for.
    ///
    /// # Errors
    /// See [`StoreSettings::from_config`].
    pub fn resolve(&self) -> Result<DurableCodes, StoreConfigError> {
        let codes: CodeSet =
            self.codes
                .parse()
                .map_err(|error: ControlError| StoreConfigError::Codes {
                    codes: self.codes.clone(),
                    reason: error.to_string(),
                })?;
        let duration = |setting: &'static str, text: &Option<String>| {
            text.as_deref()
                .map(|value| {
                    humantime::parse_duration(value).map_err(|_| StoreConfigError::Duration {
                        setting,
                        value: value.to_owned(),
                    })
                })
                .transpose()
        };
        let at_least_one = |setting: &'static str, value: Option<u64>| match value {
            Some(0) => Err(StoreConfigError::Range {
                setting,
                requirement: "at least 1",
                value: 0,
            }),
            _ => Ok(value),
        };
        let defaults = CodeLimits::default();
        let dead_letter = self
            .dead_letter
            .map(|code| {
                u8::try_from(code)
                    .ok()
                    .and_then(Status::new)
                    .filter(|status| CodeSet::relayable().contains(*status))
                    .ok_or(StoreConfigError::DeadLetter { code })
            })
            .transpose()?;
        let limits = CodeLimits {
            max_bytes: at_least_one("max_bytes", self.max_bytes)?,
            max_age: duration("max_age", &self.max_age)?,
            max_frames: at_least_one("max_frames", self.max_frames)?,
            discard: self.discard.unwrap_or_default(),
            keep_last: self.keep_last.unwrap_or(0),
            max_frame_bytes: at_least_one("max_frame_bytes", self.max_frame_bytes)?,
            segment_bytes: at_least_one("segment_bytes", self.segment_bytes)?
                .unwrap_or(defaults.segment_bytes),
            ack_wait: duration("ack_wait", &self.ack_wait)?.unwrap_or(defaults.ack_wait),
            max_deliver: at_least_one("max_deliver", self.max_deliver)?,
            dead_letter,
        };
        if limits.ack_wait.is_zero() {
            return Err(StoreConfigError::Range {
                setting: "ack_wait",
                requirement: "longer than 0",
                value: 0,
            });
        }
        Ok(DurableCodes { codes, limits })
    }
}

/// A durable-store setting that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreConfigError {
    /// `--store-sync` is not `always`, `interval=<duration>` or `os`.
    #[error("store-sync must be always, interval=<duration> or os, not {0:?}")]
    Sync(String),
    /// A code list does not parse.
    #[error("durable codes {codes:?}: {reason}")]
    Codes {
        /// The list as written.
        codes: String,
        /// Why.
        reason: String,
    },
    /// A code is in two `[[durable]]` tables.
    #[error("durable code {code} is listed twice")]
    Overlap {
        /// The code.
        code: u8,
    },
    /// A duration does not parse.
    #[error("durable {setting} {value:?} is not a duration")]
    Duration {
        /// The setting's name.
        setting: &'static str,
        /// The text.
        value: String,
    },
    /// A limit is out of range.
    #[error("durable {setting} must be {requirement}, not {value}")]
    Range {
        /// The setting's name.
        setting: &'static str,
        /// What it must be.
        requirement: &'static str,
        /// The value given.
        value: u64,
    },
    /// The dead-letter code is reserved or out of range.
    #[error("durable dead-letter code {code} is not a relayable code")]
    DeadLetter {
        /// The code.
        code: u64,
    },
}

/// Why the store could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The code is not durable.
    #[error("code {code} is not durable")]
    NotDurable {
        /// The code.
        code: u8,
    },
    /// A record header read back is not valid (a file changed under the store).
    #[error("{path}: bad record at offset {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The I/O thread could not be started.
    #[error("cannot start the store's I/O thread: {0}")]
    Thread(std::io::Error),
    /// Another process (another hub) has the store directory open.
    #[error("{path} is in use by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

impl StoreError {
    /// An [`StoreError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }
}

/// One stored frame's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The frame's code.
    pub status: Status,
    /// Its sequence number in the code.
    pub seq: u64,
}

/// Why a frame could not be stored. `Display` is the text after `ERR ` in the publisher's reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StoreRefused {
    /// The code is at its limit under `discard = new`, or the disk is full.
    #[error("store full {}", status.code())]
    StoreFull {
        /// The frame's code.
        status: Status,
    },
    /// The frame is larger than the code's `max_frame_bytes`.
    #[error("store frame too large {} {len} > {max}", status.code())]
    FrameTooLarge {
        /// The frame's code.
        status: Status,
        /// The frame's length (at least; a streamed frame is refused as soon as it is over).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Writing or syncing failed for another reason (logged with the error).
    #[error("store failed {} {kind}", status.code())]
    Io {
        /// The frame's code.
        status: Status,
        /// What kind of failure.
        kind: std::io::ErrorKind,
    },
    /// The piece's bytes are not whole frames (a bug upstream; logged).
    #[error("store malformed {}", status.code())]
    Malformed {
        /// The frame's code.
        status: Status,
    },
}

/// What became of one frame offered with an [`AckSink`].
pub(crate) type Outcome = Result<Stored, StoreRefused>;

/// Where the outcomes of stored frames go: called on the I/O thread once per batch with that
/// batch's outcomes for this sink, in publication order within a code (a publisher's frames on
/// two codes may be acknowledged out of order when one code's log is busy with another
/// publisher's streamed frame). One call per batch, not per frame: a publisher's replies for a
/// batch reach its socket in one write. It must not block (queue to the session and return).
pub(crate) type AckSink = Arc<dyn Fn(&[Outcome]) + Send + Sync>;

/// Where a reader starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Position {
    /// The oldest frame kept.
    First,
    /// The newest frame (none if the code is empty: then as `Next`).
    Last,
    /// The frame with this sequence number, or the first after it that is kept.
    Seq(u64),
    /// The first frame stored at or after this time.
    Time(SystemTime),
    /// Only frames stored from now on.
    Next,
}

/// One durable code's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeStats {
    /// The code.
    pub status: Status,
    /// Frames kept.
    pub frames: u64,
    /// Bytes on disk (records with their headers).
    pub bytes: u64,
    /// The oldest kept frame's sequence number (the next one's when empty).
    pub first_seq: u64,
    /// The newest kept frame's sequence number (`first_seq - 1` when empty).
    pub last_seq: u64,
    /// Segment files.
    pub segments: u64,
    /// When the oldest kept frame was stored.
    pub oldest: Option<SystemTime>,
}

/// The store's counters, for `/varz` and `/metrics`: atomics written by the I/O thread.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Frames stored (acknowledged as stored).
    pub frames: AtomicU64,
    /// Bytes of those frames (as received; the record headers not counted).
    pub bytes: AtomicU64,
    /// `fdatasync` calls.
    pub syncs: AtomicU64,
    /// Write batches of the I/O thread (one group commit each).
    pub batches: AtomicU64,
    /// Frames refused because the disk was full or a code at its limit under `discard = new`.
    pub refused_full: AtomicU64,
    /// Frames refused as larger than the code's `max_frame_bytes`.
    pub refused_too_large: AtomicU64,
    /// Frames refused by another I/O error.
    pub io_errors: AtomicU64,
    /// Streamed frames dropped because their publisher went away.
    pub abandoned: AtomicU64,
    /// Bytes cut from torn or corrupt tails at recovery.
    pub cut_bytes: AtomicU64,
    /// Segments deleted by retention.
    pub segments_deleted: AtomicU64,
    /// Frames deleted by retention.
    pub frames_deleted: AtomicU64,
}

impl StoreCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What a store backend provides to the hub, which holds it as `Arc<dyn Backend>` (publishers,
/// the cluster's inbound publishers, durable subscriptions). [`Store`] is the file-backed one; a
/// backend on another engine (JetStream streams, docs/durability.md) implements the same methods.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug {
    /// See [`Store::durable`].
    fn durable(&self) -> CodeSet;
    /// See [`Store::append`].
    fn append(&self, from: SessionId, gate: &Arc<Gate>, piece: &Piece, ack: Option<AckSink>);
    /// See [`Store::abandon`].
    fn abandon(&self, from: SessionId);
    /// See [`Store::reader`].
    fn reader(&self, status: Status, from: Position) -> Result<StoreReader, StoreError>;
    /// See [`Store::watch`].
    fn watch(&self, status: Status) -> Option<tokio::sync::watch::Receiver<u64>>;
    /// See [`Store::stats`].
    fn stats(&self) -> Vec<CodeStats>;
    /// See [`Store::cursors`].
    fn cursors(&self) -> &CursorStore;
}

/// The file-backed durable store; see the module documentation.
pub(crate) struct Store {
    durable: CodeSet,
    /// Each durable code's log as readers see it, indexed by code.
    logs: Vec<Option<Arc<log::CodeShared>>>,
    queue: Arc<io::Queue>,
    cursors: CursorStore,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Held open (and `flock`ed) while the store is: a second hub on the same directory would
    /// interleave its records with ours.
    _lock: std::fs::File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if need be) the store in `settings.dir`: recovers every durable code's log
    /// (cutting torn tails, logged and counted), loads the cursors and starts the I/O thread.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directory or a segment cannot be read or repaired;
    /// [`StoreError::Thread`] when the I/O thread cannot start.
    pub(crate) fn open(
        settings: StoreSettings,
        counters: Arc<StoreCounters>,
    ) -> Result<Arc<Store>, StoreError> {
        std::fs::create_dir_all(&settings.dir).map_err(StoreError::io(&settings.dir))?;
        let lock = lock_dir(&settings.dir)?;
        let mut writers = Vec::new();
        let mut logs: Vec<Option<Arc<log::CodeShared>>> = vec![None; Status::COUNT];
        for list in &settings.durable {
            for status in list.codes.iter() {
                let writer = recover::open_code(&settings, status, &list.limits, &counters)?;
                logs[usize::from(status.code())] = Some(writer.shared().clone());
                writers.push(writer);
            }
        }
        let queue = io::Queue::new();
        let (cursors, cursor_file) = CursorStore::open(&settings.dir, queue.clone())?;
        let durable = settings.codes();
        let thread = io::spawn(settings, writers, queue.clone(), counters, cursor_file)
            .map_err(StoreError::Thread)?;
        Ok(Arc::new(Store {
            durable,
            logs,
            queue,
            cursors,
            thread: Mutex::new(Some(thread)),
            _lock: lock,
        }))
    }

    /// Which codes are durable.
    pub(crate) fn durable(&self) -> CodeSet {
        self.durable
    }

    /// Queues `piece` from publisher `from` for its code's log and returns at once. A `Whole`
    /// run becomes one record per frame; a streamed frame (`First`/`Middle`/`Last`) becomes one
    /// record at `Last` (gathered in memory first when small). `ack` (if any) gets the outcome of
    /// each frame the piece ends, in publication order, on the I/O thread once the frame is
    /// stored under the sync policy or refused: one call per batch with that batch's outcomes.
    /// While the I/O queue holds more than its bound, `gate` is closed (the publisher stops
    /// reading) until it drains: memory stays bounded and nothing blocks.
    pub(crate) fn append(
        &self,
        from: SessionId,
        gate: &Arc<Gate>,
        piece: &Piece,
        ack: Option<AckSink>,
    ) {
        self.queue.append(from, gate, piece, ack);
    }

    /// Publisher `from` went away: its partial streamed frame, if any, is dropped (never visible
    /// to readers) and nothing of it acknowledged.
    pub(crate) fn abandon(&self, from: SessionId) {
        self.queue.abandon(from);
    }

    /// The frames of `status` from `from` on, one at a time, as file byte ranges.
    ///
    /// # Errors
    /// [`StoreError::NotDurable`] for a code that is not durable.
    pub(crate) fn reader(&self, status: Status, from: Position) -> Result<StoreReader, StoreError> {
        let shared = self.shared(status)?;
        Ok(StoreReader::new(shared.clone(), from))
    }

    /// The last visible sequence number of `status`, changing as frames become visible; `None`
    /// for a code that is not durable.
    pub(crate) fn watch(&self, status: Status) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.shared(status).ok().map(|shared| shared.watch())
    }

    /// Every durable code's figures.
    pub(crate) fn stats(&self) -> Vec<CodeStats> {
        self.logs.iter().flatten().map(|log| log.stats()).collect()
    }

    /// The durable subscriptions' cursors.
    pub(crate) fn cursors(&self) -> &CursorStore {
        &self.cursors
    }

    fn shared(&self, status: Status) -> Result<&Arc<log::CodeShared>, StoreError> {
        self.logs
            .get(usize::from(status.code()))
            .and_then(Option::as_ref)
            .ok_or(StoreError::NotDurable {
                code: status.code(),
            })
    }
}

/// Takes the store directory's lock file (`lock`), or fails if another process holds it.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(StoreError::io(&path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(StoreError::Locked { path }),
        Err(error) => Err(StoreError::io(&path)(error.into())),
    }
}

impl Backend for Store {
    fn durable(&self) -> CodeSet {
        Store::durable(self)
    }

    fn append(&self, from: SessionId, gate: &Arc<Gate>, piece: &Piece, ack: Option<AckSink>) {
        Store::append(self, from, gate, piece, ack);
    }

    fn abandon(&self, from: SessionId) {
        Store::abandon(self, from);
    }

    fn reader(&self, status: Status, from: Position) -> Result<StoreReader, StoreError> {
        Store::reader(self, status, from)
    }

    fn watch(&self, status: Status) -> Option<tokio::sync::watch::Receiver<u64>> {
        Store::watch(self, status)
    }

    fn stats(&self) -> Vec<CodeStats> {
        Store::stats(self)
    }

    fn cursors(&self) -> &CursorStore {
        Store::cursors(self)
    }
}

/// Stops the I/O thread after it has written (and synced) everything queued.
impl Drop for Store {
    fn drop(&mut self) {
        self.queue.shut_down();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the store's I/O thread panicked");
            }
        }
    }
}
