//! The process's limit on open files (`RLIMIT_NOFILE`): every connection costs the hub one file
//! descriptor, and the usual soft limit (1024 on many systems) is far below what a hub with
//! thousands of subscribers needs, while the hard limit usually allows it.
//!
//! Raising a process-wide limit is a side effect a library should not take on its own, so
//! [`run`](super::run) does not call [`raise_open_files_limit`]; `tej-hub serve` does, at start,
//! and logs what it got. An application embedding the hub calls it if it wants the same.

use std::io;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises this process's soft limit on open files to its hard limit, and returns the limits now in
/// force as `(soft, hard)`; `u64::MAX` stands for "unlimited". When the soft limit is already at
/// the hard one, nothing is changed.
///
/// The limit is process-wide: it also applies to every other thread and to child processes
/// started afterwards.
///
/// # Errors
/// The error of `setrlimit` (e.g. `EPERM` where the hard limit is "unlimited" but the kernel caps
/// open files lower); the limits are then unchanged.
///
/// # Examples
/// ```
/// let (soft, hard) = tej_hub::hub::raise_open_files_limit()?;
/// println!("up to {soft} open files (hard limit {hard})");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok((
        now.current.unwrap_or(u64::MAX),
        now.maximum.unwrap_or(u64::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one_and_stays_there() {
        let Ok((soft, hard)) = raise_open_files_limit() else {
            return; // A platform that refuses it (hard limit "unlimited" above the kernel's cap).
        };
        assert_eq!(soft, hard);
        assert_eq!(raise_open_files_limit().ok(), Some((soft, hard)));
    }
}
