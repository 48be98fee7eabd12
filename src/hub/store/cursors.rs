//! Durable subscription cursors: per name, per code, the highest acknowledged sequence number
//! and the delivery counts of frames delivered and not yet acknowledged (for redelivery and
//! dead letters).
//!
//! They live in memory ([`CursorStore`]: set and read without touching the disk) and are saved
//! by the I/O thread after each change (many changes, one save) to `cursors` in the store
//! directory, rewritten whole and atomically: write `cursors.tmp`, `fdatasync`, rename over
//! `cursors`, `fsync` the directory (the syncs under `always` and `interval=`; `os` skips them).
//! A crash leaves the old file or the new one, never a mix. We keep our own small file rather
//! than an embedded database: the data is a few KiB rewritten as a whole, the format is ours
//! and documented (docs/durability.md), and no pre-1.0 on-disk format enters the store.
//!
//! File format, big-endian: magic `TJC1` u32, cursor count u32; per cursor: name length u16,
//! name (UTF-8), code count u16; per code: code u8, acked u64, pending count u32; per pending
//! frame: seq u64, deliveries u32. Then CRC-32C of everything before it, u32.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::hub::store::io::Queue;
use crate::hub::store::StoreError;

const MAGIC: u32 = 0x544A_4331;
const FILE: &str = "cursors";
const TEMP: &str = "cursors.tmp";

/// One code's position in a durable subscription.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CodeCursor {
    /// Every frame up to this sequence number is acknowledged.
    pub acked: u64,
    /// Frames past `acked` delivered at least once and not acknowledged: seq → deliveries.
    pub deliveries: BTreeMap<u64, u32>,
}

/// A durable subscription's cursor: per code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// By code.
    pub codes: BTreeMap<u8, CodeCursor>,
}

type Table = BTreeMap<String, Cursor>;

/// The cursors in memory; see the module documentation.
pub(crate) struct CursorStore {
    table: Arc<Mutex<Table>>,
    queue: Arc<Queue>,
}

/// The I/O thread's handle: saves the table.
pub(crate) struct CursorFile {
    dir: PathBuf,
    table: Arc<Mutex<Table>>,
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The cursors saved in `dir`, by name (none if there is no file yet).
///
/// # Errors
/// [`StoreError::Io`] when the file cannot be read; [`StoreError::Corrupt`] when it does not
/// check out.
pub(crate) fn load(dir: &Path) -> Result<BTreeMap<String, Cursor>, StoreError> {
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => decode(&bytes).ok_or_else(|| StoreError::Corrupt {
            path,
            offset: 0,
            reason: "the cursor file does not check out".into(),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Table::new()),
        Err(error) => Err(StoreError::io(&path)(error)),
    }
}

impl CursorStore {
    /// Loads the cursors saved in `dir` (none if there is no file yet).
    ///
    /// # Errors
    /// [`StoreError::Io`] when the file cannot be read; [`StoreError::Corrupt`] when it does not
    /// check out (the hub does not start rather than forget its subscribers' positions).
    pub(crate) fn open(
        dir: &Path,
        queue: Arc<Queue>,
    ) -> Result<(CursorStore, CursorFile), StoreError> {
        let table = Arc::new(Mutex::new(load(dir)?));
        Ok((
            CursorStore {
                table: table.clone(),
                queue,
            },
            CursorFile {
                dir: dir.to_path_buf(),
                table,
            },
        ))
    }

    /// The cursor named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Cursor> {
        lock(&self.table).get(name).cloned()
    }

    /// Every cursor, by name.
    pub(crate) fn all(&self) -> BTreeMap<String, Cursor> {
        lock(&self.table).clone()
    }

    /// Changes the cursor `name` in place (created empty if absent); saved shortly after.
    pub(crate) fn update<R>(&self, name: &str, change: impl FnOnce(&mut Cursor) -> R) -> R {
        let result = change(lock(&self.table).entry(name.to_owned()).or_default());
        self.queue.cursors_changed();
        result
    }

    /// Takes `codes` out of the cursor `name`, and the cursor itself when no code is left;
    /// saved shortly after.
    pub(crate) fn remove(&self, name: &str, codes: impl IntoIterator<Item = u8>) {
        {
            let mut table = lock(&self.table);
            if let Some(cursor) = table.get_mut(name) {
                for code in codes {
                    cursor.codes.remove(&code);
                }
                if cursor.codes.is_empty() {
                    table.remove(name);
                }
            }
        }
        self.queue.cursors_changed();
    }
}

impl CursorFile {
    /// Rewrites the file atomically; `durable` adds the syncs.
    ///
    /// # Errors
    /// A write, sync or rename fails (the old file stays).
    pub(crate) fn save(&self, durable: bool) -> std::io::Result<()> {
        let bytes = encode(&lock(&self.table));
        let temp = self.dir.join(TEMP);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        file.write_all(&bytes)?;
        if durable {
            rustix::fs::fdatasync(&file)?;
        }
        std::fs::rename(&temp, self.dir.join(FILE))?;
        if durable {
            rustix::fs::fsync(File::open(&self.dir)?)?;
        }
        Ok(())
    }
}

fn encode(table: &Table) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&(table.len() as u32).to_be_bytes());
    for (name, cursor) in table {
        // Names are bounded by the control grammar; a longer one is cut, never wrapped.
        let name = &name.as_bytes()[..name.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(cursor.codes.len() as u16).to_be_bytes());
        for (code, position) in &cursor.codes {
            out.push(*code);
            out.extend_from_slice(&position.acked.to_be_bytes());
            out.extend_from_slice(&(position.deliveries.len() as u32).to_be_bytes());
            for (seq, count) in &position.deliveries {
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Reads fields off the front of a byte slice.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// The table in `bytes`, if they check out. Counts are never trusted for allocation: every
/// entry is read from the bytes that are there.
fn decode(bytes: &[u8]) -> Option<Table> {
    let (body, crc) = bytes.split_at(bytes.len().checked_sub(4)?);
    if crc32c::crc32c(body).to_be_bytes() != crc {
        return None;
    }
    let mut fields = Fields(body);
    if fields.u32()? != MAGIC {
        return None;
    }
    let mut table = Table::new();
    for _ in 0..fields.u32()? {
        let len = usize::from(fields.u16()?);
        let name = std::str::from_utf8(fields.take(len)?).ok()?.to_owned();
        let mut cursor = Cursor::default();
        for _ in 0..fields.u16()? {
            let code = fields.u8()?;
            let mut position = CodeCursor {
                acked: fields.u64()?,
                deliveries: BTreeMap::new(),
            };
            for _ in 0..fields.u32()? {
                let seq = fields.u64()?;
                position.deliveries.insert(seq, fields.u32()?);
            }
            cursor.codes.insert(code, position);
        }
        table.insert(name, cursor);
    }
    fields.0.is_empty().then_some(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_survive_a_save_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (store, file) =
            CursorStore::open(dir.path(), Queue::new()).unwrap_or_else(|e| panic!("{e}"));
        store.update("worker", |cursor| {
            let code = cursor.codes.entry(5).or_default();
            code.acked = 41;
            code.deliveries.insert(43, 2);
        });
        file.save(true).unwrap_or_else(|e| panic!("{e}"));
        let (again, _) =
            CursorStore::open(dir.path(), Queue::new()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.get("worker"), store.get("worker"));
        assert_eq!(again.all().keys().collect::<Vec<_>>(), ["worker"]);
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        bytes[9] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            CursorStore::open(dir.path(), Queue::new()),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
