//! Segment files: a code's directory `code-<N>/` holds `<first-seq, 20 digits>.log` (records)
//! and `<first-seq>.idx` (its sparse index) per segment.

use std::path::{Path, PathBuf};

use crate::frame::Status;

/// The directory of `status`'s log under the store directory `root`.
pub(crate) fn code_dir(root: &Path, status: Status) -> PathBuf {
    root.join(format!("code-{}", status.code()))
}

/// The code a directory name `code-<N>` stands for.
pub(crate) fn parse_code_dir(name: &str) -> Option<Status> {
    name.strip_prefix("code-")?
        .parse::<u8>()
        .ok()
        .and_then(Status::new)
}

/// The log file of the segment starting at `first_seq`.
pub(crate) fn log_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

/// The index file of the segment starting at `first_seq`.
pub(crate) fn index_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.idx"))
}

/// The first sequence number a segment file name stands for, with its extension.
fn parse_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

/// The first sequence numbers of the segments (`.log` files) in `dir`, ascending.
///
/// # Errors
/// The directory cannot be read.
pub(crate) fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some((first, "log")) = entry.file_name().to_str().and_then(parse_name) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_as_numbers_and_parse_back() {
        let dir = Path::new("/s");
        let path = log_path(dir, 42);
        assert_eq!(path, Path::new("/s/00000000000000000042.log"));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert_eq!(parse_name(name), Some((42, "log")));
        assert_eq!(parse_name("42.log"), None);
        assert_eq!(parse_code_dir("code-5").map(Status::code), Some(5));
        assert_eq!(parse_code_dir("code-200"), None);
    }
}
