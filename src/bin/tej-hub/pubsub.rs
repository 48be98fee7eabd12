//! `tej-hub pub` and `tej-hub sub`: publish and receive frames from a shell.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tej_hub::hub::{HubClient, HubError};
use tej_hub::{Frame, Limits, Status};

use crate::Failure;

/// The hub `pub` and `sub` talk to unless told otherwise.
const DEFAULT_HUB: &str = "127.0.0.1:8000";
/// How long `pub` and `sub` wait for the connection, and `sub` for the answer to `SUB`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `pub` waits for the hub to confirm that it read the frame (by closing its side).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `pub` listens for the hub's reason after a failed write.
const REASON_TIMEOUT: Duration = Duration::from_secs(1);
/// Most `.N` suffixes `sub --out` tries for one name.
const MAX_SUFFIX: u32 = 9999;
/// Longest file name `sub --out` writes, in bytes: the usual 255-byte limit, minus room for the
/// longest suffix (`.9999`).
const MAX_NAME_BYTES: usize = 250;

/// `pub` flags.
#[derive(Args)]
pub(crate) struct Pub {
    /// Custom status code: 0-126 except 2 (ping); 127 is the hub's control channel.
    #[arg(value_parser = publishable_status)]
    status: Status,
    /// The frame's message.
    #[arg(long, short, value_name = "TEXT")]
    message: Option<String>,
    /// A file to attach (read whole; its final path component is the name sent). Repeatable.
    #[arg(long = "file", short, value_name = "PATH")]
    files: Vec<PathBuf>,
    /// The hub's address.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_HUB)]
    hub: String,
}

/// `sub` flags.
#[derive(Args)]
pub(crate) struct Sub {
    /// Codes: numbers, ranges a-b, separated by spaces or commas, or '*' for all.
    #[arg(required = true, value_name = "CODES")]
    codes: Vec<String>,
    /// Save each received file under DIR (created if missing). Only a name's final component is
    /// used; absolute names and names with `..` are not saved; a taken name gets `.1`, `.2`, ...
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Exit after N frames.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// The hub's address.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_HUB)]
    hub: String,
}

/// A status `pub` may send: 0..=126 except 2.
fn publishable_status(text: &str) -> Result<Status, String> {
    let reason = "publishable codes are 0-126 except 2 (2 is PING, 127 the hub's control channel)";
    match text.parse::<u8>().ok().and_then(Status::new) {
        Some(status) if status != Status::PING && status.code() < Status::MAX => Ok(status),
        _ => Err(reason.to_owned()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::Failed(format!("cannot start the runtime: {error}")))
}

async fn connect(hub: &str) -> Result<HubClient, Failure> {
    match tokio::time::timeout(CONNECT_TIMEOUT, HubClient::connect(hub)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(Failure::Failed(format!("cannot connect to {hub}: {error}"))),
        Err(_) => Err(Failure::Failed(format!(
            "cannot connect to {hub}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// `pub`: sends one frame, then half-closes and waits for the hub to close its side, which it does
/// after reading the frame (or after refusing it, saying why).
pub(crate) fn publish(args: &Pub) -> Result<(), Failure> {
    let frame = pub_frame(args)?;
    Limits::default()
        .check(&frame)
        .map_err(|error| Failure::Failed(format!("cannot publish: {error}")))?;
    runtime()?.block_on(async {
        let mut client = connect(&args.hub).await?;
        if let Err(error) = client.publish(frame).await {
            // The hub may have said why it stopped reading (e.g. a frame over its limit).
            let error = match tokio::time::timeout(REASON_TIMEOUT, client.next_frame()).await {
                Ok(Err(closed @ HubError::Closed { reason: Some(_) })) => closed,
                _ => error,
            };
            return Err(Failure::Failed(format!("cannot publish: {error}")));
        }
        match tokio::time::timeout(CLOSE_TIMEOUT, client.close()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Failure::Failed(format!("publish failed: {error}"))),
            Err(_) => Err(Failure::Failed(format!(
                "frame sent, but the hub did not confirm it within {}s",
                CLOSE_TIMEOUT.as_secs()
            ))),
        }
    })
}

/// The frame `pub` sends: status, the files read whole, the message.
fn pub_frame(args: &Pub) -> Result<Frame, Failure> {
    let mut frame = Frame::builder(args.status);
    if let Some(message) = &args.message {
        frame = frame.message(message.clone());
    }
    for path in &args.files {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| {
                Failure::Usage(format!("{}: no UTF-8 file name to send", path.display()))
            })?;
        let data = std::fs::read(path)
            .map_err(|error| Failure::Failed(format!("cannot read {}: {error}", path.display())))?;
        frame = frame.file(name, data);
    }
    Ok(frame.build())
}

/// `sub`: subscribes, then prints (and saves) frames until `--count` or the end of the connection.
pub(crate) fn subscribe(args: &Sub) -> Result<(), Failure> {
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|error| {
            Failure::Failed(format!("cannot create {}: {error}", dir.display()))
        })?;
    }
    runtime()?.block_on(async {
        let mut client = connect(&args.hub).await?;
        let codes = args.codes.join(" ");
        let subscribed = match tokio::time::timeout(CONNECT_TIMEOUT, client.subscribe(&codes)).await
        {
            Ok(Ok(subscribed)) => subscribed,
            Ok(Err(HubError::Refused(reason))) => {
                return Err(Failure::Failed(format!(
                    "hub refused SUB {codes}: {reason}"
                )))
            }
            Ok(Err(error)) => return Err(Failure::Failed(format!("cannot subscribe: {error}"))),
            Err(_) => {
                return Err(Failure::Failed(format!(
                    "hub did not answer SUB within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        // Scripts and tests wait for this line before publishing.
        eprintln!("tej-hub: subscribed to {subscribed} on {}", args.hub);
        let mut received = 0u64;
        while args.count.map_or(true, |count| received < count) {
            match client.next_frame().await {
                Ok(Some(frame)) => {
                    show(&frame, received == 0)?;
                    if let Some(dir) = &args.out {
                        save_files(dir, &frame)?;
                    }
                    received += 1;
                }
                Ok(None) => {
                    eprintln!("tej-hub: the hub closed the connection");
                    return Ok(());
                }
                Err(error) => return Err(Failure::Failed(error.to_string())),
            }
        }
        Ok(())
    })
}

/// Prints `frame` on stdout (after a blank line unless it is the first) and flushes.
fn show(frame: &Frame, first: bool) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    let separator = if first { "" } else { "\n" };
    writeln!(out, "{separator}{frame}")
        .and_then(|()| out.flush())
        .map_err(|error| Failure::Failed(format!("cannot write to stdout: {error}")))
}

/// Saves `frame`'s files under `dir`; files whose names are unsafe are skipped with a warning.
fn save_files(dir: &Path, frame: &Frame) -> Result<(), Failure> {
    for file in &frame.files {
        match safe_file_name(&file.name) {
            Ok(name) => {
                let path = save_new(dir, name, &file.data).map_err(|error| {
                    Failure::Failed(format!("cannot save {name} in {}: {error}", dir.display()))
                })?;
                eprintln!("tej-hub: saved {}", path.display());
            }
            Err(why) => {
                let shown: String = file.name.chars().take(64).collect();
                eprintln!("tej-hub: not saving file {shown:?}: {why}");
            }
        }
    }
    Ok(())
}

/// The name to save a received file under: the final component of the name the peer chose.
///
/// The peer chose it, so anything that could reach outside the directory or confuse a terminal
/// is refused: empty names, absolute names (`/x`, `\x`, `C:x`), names with a `..` component,
/// names ending in a separator or `.`, control characters, more than [`MAX_NAME_BYTES`].
fn safe_file_name(name: &str) -> Result<&str, &'static str> {
    let bytes = name.as_bytes();
    if name.is_empty() {
        return Err("empty name");
    }
    if name.starts_with(['/', '\\'])
        || (bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':')
    {
        return Err("absolute name");
    }
    if name.chars().any(char::is_control) {
        return Err("control character in name");
    }
    if name.split(['/', '\\']).any(|part| part == "..") {
        return Err("name contains ..");
    }
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    if last.is_empty() || last == "." {
        return Err("no file name");
    }
    if last.len() > MAX_NAME_BYTES {
        return Err("name too long");
    }
    Ok(last)
}

/// Writes `data` to a new file `dir/name`, or `dir/name.1`, `dir/name.2`, ... when taken; never
/// overwrites a file and never follows a symbolic link. Returns the path written.
fn save_new(dir: &Path, name: &str, data: &[u8]) -> io::Result<PathBuf> {
    for suffix in 0..=MAX_SUFFIX {
        let path = match suffix {
            0 => dir.join(name),
            n => dir.join(format!("{name}.{n}")),
        };
        // create_new is O_CREAT|O_EXCL: it fails on any existing entry, symbolic links included.
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                return match file.write_all(data) {
                    Ok(()) => Ok(path),
                    Err(error) => {
                        let _ = std::fs::remove_file(&path);
                        Err(error)
                    }
                };
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{name} and {MAX_SUFFIX} suffixed names are taken"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names() {
        assert_eq!(safe_file_name("a.txt"), Ok("a.txt"));
        assert_eq!(safe_file_name(".hidden"), Ok(".hidden"));
        assert_eq!(safe_file_name("dir/sub/a.txt"), Ok("a.txt"));
        assert_eq!(safe_file_name("dir\\a.txt"), Ok("a.txt"));
        assert_eq!(safe_file_name("é.txt"), Ok("é.txt"));
        for bad in [
            "",
            "..",
            "../a",
            "a/../b",
            "a/..",
            "/etc/passwd",
            "\\x",
            "C:x",
            "c:\\x",
            "dir/",
            ".",
            "a/.",
            "a\nb",
            "a\u{1b}[2J",
        ] {
            assert!(safe_file_name(bad).is_err(), "{bad:?}");
        }
        assert!(safe_file_name(&"x".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(safe_file_name(&"x".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn statuses() {
        for ok in ["0", "1", "3", "5", "126"] {
            assert!(publishable_status(ok).is_ok(), "{ok}");
        }
        for bad in ["2", "127", "128", "255", "256", "-1", "x", ""] {
            assert!(publishable_status(bad).is_err(), "{bad}");
        }
    }
}
