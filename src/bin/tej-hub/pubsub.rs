//! `tej-hub pub` and `tej-hub sub`: publish and receive frames from a shell.
//!
//! Both stream: `pub` sends files from disk through a bounded buffer, `sub` prints and saves a
//! frame's files while their bytes arrive, so neither holds a file in memory. Progress bars go to
//! stderr when it is a terminal.

use std::fs::OpenOptions;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tej_hub::hub::control::{ControlError, GroupName, StartAt, SubOptions};
use tej_hub::hub::{Credentials, HubClient, HubError, HubOptions};
use tej_hub::stream::{FileFrame, FileSource, Part};
use tej_hub::{ClientTls, MaybeTls};
use tej_hub::{Limits, Status};

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
/// The limits `pub` and `sub` apply: no bound on the frame's size (files stream, so size costs
/// neither end memory; the hub enforces its own `--max-frame-bytes` and says so), the defaults
/// for the number of files and the message, which are held in memory.
const CLI_LIMITS: Limits = Limits {
    max_frame_bytes: u64::MAX,
    max_files: Limits::DEFAULT_MAX_FILES,
    max_message_bytes: Limits::DEFAULT_MAX_MESSAGE_BYTES,
};

/// `pub` flags.
#[derive(Args)]
pub(crate) struct Pub {
    /// Custom status code: 0-126 except 2 (ping); 127 is the hub's control channel.
    #[arg(value_parser = publishable_status)]
    status: Status,
    /// The frame's message.
    #[arg(long, short, value_name = "TEXT")]
    message: Option<String>,
    /// A file to attach (streamed from disk; its final path component is the name sent; its size
    /// must not change while it is sent). Repeatable.
    #[arg(long = "file", short, value_name = "PATH")]
    files: Vec<PathBuf>,
    /// The hub's address.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_HUB)]
    hub: String,
    /// Wait until the hub has stored the frame (`PUBACK on`), print `stored <code> <seq>`, and
    /// fail with the hub's reason when it refuses to store it. The code must be durable: the hub
    /// answers nothing for other codes, and pub gives up after 10 s.
    #[arg(long)]
    ack: bool,
    #[command(flatten)]
    access: Access,
}

/// How `pub` and `sub` reach a secured hub.
#[derive(Args)]
pub(crate) struct Access {
    /// Connect with TLS, trusting the CA certificates in FILE (PEM).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The name the hub's certificate must carry [default: the host part of --hub].
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Authenticate as NAME; the password comes from --password-file or the TEJ_PASSWORD
    /// environment variable (never a flag, so it does not show in `ps`).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Read the password for --user from the first line of FILE.
    #[arg(long, value_name = "FILE", requires = "user")]
    password_file: Option<PathBuf>,
}

impl Access {
    /// The connection options these flags describe.
    fn options(&self, hub: &str) -> Result<HubOptions, Failure> {
        let tls = match &self.tls_ca {
            None => None,
            Some(ca) => {
                let tls = ClientTls::with_ca_file(ca)
                    .map_err(|error| Failure::Failed(format!("--tls-ca: {error}")))?;
                let name = self.tls_server_name.clone().unwrap_or_else(|| host_of(hub));
                Some((tls, name))
            }
        };
        let credentials = match &self.user {
            None => None,
            Some(user) => Some(Credentials::new(user, self.password()?)),
        };
        Ok(HubOptions {
            limits: CLI_LIMITS,
            tls,
            credentials,
        })
    }

    fn password(&self) -> Result<String, Failure> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|error| {
                Failure::Failed(format!("--password-file {}: {error}", path.display()))
            })?;
            return Ok(text.lines().next().unwrap_or_default().to_owned());
        }
        std::env::var("TEJ_PASSWORD").map_err(|_| {
            Failure::Usage("--user needs a password: --password-file FILE or TEJ_PASSWORD".into())
        })
    }
}

/// The host part of `host:port` (`[::1]:8000` gives `::1`).
fn host_of(hub: &str) -> String {
    let host = hub.rsplit_once(':').map_or(hub, |(host, _)| host);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
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
    /// Join queue group NAME for the codes: each frame goes to one member of the group
    /// (1-32 characters of A-Z a-z 0-9 _ . -).
    #[arg(long, value_name = "NAME", value_parser = group_name)]
    group: Option<GroupName>,
    /// Attach to the durable subscription NAME: the codes' stored frames, each acknowledged
    /// (`ACK`) once written out; a later `sub --durable NAME` resumes after the last one.
    #[arg(long, value_name = "NAME", value_parser = group_name, conflicts_with = "group")]
    durable: Option<GroupName>,
    /// Where a new durable subscription starts: new, all, last, seq:N or time:RFC3339.
    #[arg(long, value_name = "START", requires = "durable")]
    from: Option<StartAt>,
    /// The hub's address.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_HUB)]
    hub: String,
    #[command(flatten)]
    access: Access,
}

/// A queue group's name, as `SUB ... group=` takes it.
fn group_name(text: &str) -> Result<GroupName, String> {
    text.parse()
        .map_err(|error: ControlError| error.to_string())
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

async fn connect(hub: &str, access: &Access) -> Result<HubClient<MaybeTls>, Failure> {
    let options = access.options(hub)?;
    let connecting = HubClient::connect_with(hub, &options);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(Failure::Failed(format!("cannot connect to {hub}: {error}"))),
        Err(_) => Err(Failure::Failed(format!(
            "cannot connect to {hub}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// `pub`: sends one frame, its files streamed from disk, then half-closes and waits for the hub to
/// close its side, which it does after reading the frame (or after refusing it, saying why).
pub(crate) fn publish(args: &Pub) -> Result<(), Failure> {
    let sources = pub_sources(args)?;
    let message = args.message.clone().unwrap_or_default();
    runtime()?.block_on(async {
        let frame = FileFrame::open(args.status, &sources, message)
            .await
            .map_err(|error| Failure::Failed(format!("cannot publish: {error}")))?;
        frame
            .check(&CLI_LIMITS)
            .map_err(|error| Failure::Failed(format!("cannot publish: {error}")))?;
        let mut client = connect(&args.hub, &args.access).await?;
        if args.ack {
            match tokio::time::timeout(CONNECT_TIMEOUT, client.set_puback(true)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(Failure::Failed(format!("PUBACK on: {error}"))),
                Err(_) => return Err(Failure::Failed("the hub did not answer PUBACK".into())),
            }
        }
        let bar = if frame.file_count() > 0 {
            progress_bar(frame.encoded_len(), "sending")
        } else {
            ProgressBar::hidden()
        };
        let sent = client
            .publish_file_frame(frame, |sent| bar.set_position(sent))
            .await;
        bar.finish_and_clear();
        if let Err(error) = sent {
            // A failed write: the hub may have said why it stopped reading (e.g. a frame over its
            // limit).
            let error = match error {
                HubError::Io(_) => {
                    match tokio::time::timeout(REASON_TIMEOUT, client.next_frame()).await {
                        Ok(Err(closed @ HubError::Closed { reason: Some(_) })) => closed,
                        _ => error,
                    }
                }
                error => error,
            };
            return Err(Failure::Failed(format!("cannot publish: {error}")));
        }
        if args.ack {
            // Stored under the hub's sync policy: with `always`, after its fdatasync.
            match tokio::time::timeout(CLOSE_TIMEOUT, client.next_stored()).await {
                Ok(Ok((status, seq))) => println!("stored {} {seq}", status.code()),
                Ok(Err(HubError::Refused(reason))) => {
                    return Err(Failure::Failed(format!("not stored: {reason}")))
                }
                Ok(Err(error)) => return Err(Failure::Failed(format!("not stored: {error}"))),
                Err(_) => {
                    return Err(Failure::Failed(format!(
                        "frame sent, but the hub did not say it stored it within {}s (is code {} durable?)",
                        CLOSE_TIMEOUT.as_secs(),
                        args.status.code()
                    )))
                }
            }
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

/// The files `pub` sends: each path under its final component's name.
fn pub_sources(args: &Pub) -> Result<Vec<FileSource>, Failure> {
    args.files
        .iter()
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .ok_or_else(|| {
                    Failure::Usage(format!("{}: no UTF-8 file name to send", path.display()))
                })?;
            Ok(FileSource::new(name, path))
        })
        .collect()
}

/// A progress bar of `len` bytes on stderr when it is a terminal; hidden otherwise, so scripts
/// and logs see only the final lines.
fn progress_bar(len: u64, label: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    // A received file's name is the peer's choice: no control characters reach the terminal.
    let shown: String = label
        .chars()
        .take(40)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(shown)
}

/// `sub`: subscribes, then prints (and saves) frames until `--count` or the end of the connection.
pub(crate) fn subscribe(args: &Sub) -> Result<(), Failure> {
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|error| {
            Failure::Failed(format!("cannot create {}: {error}", dir.display()))
        })?;
    }
    runtime()?.block_on(async {
        let mut client = connect(&args.hub, &args.access).await?;
        let codes = args.codes.join(" ");
        let options = SubOptions {
            group: args.group.clone(),
            durable: args.durable.clone(),
            from: args.from,
            delete: false,
        };
        let subscribing = client.subscribe_with(&codes, options.clone());
        let subscribed = match tokio::time::timeout(CONNECT_TIMEOUT, subscribing).await {
            Ok(Ok(subscribed)) => subscribed,
            Ok(Err(HubError::Refused(reason))) => {
                return Err(Failure::Failed(format!(
                    "hub refused SUB {codes}{options}: {reason}"
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
        match &args.group {
            Some(group) => eprintln!(
                "tej-hub: subscribed to {subscribed} in group {group} on {}",
                args.hub
            ),
            None => eprintln!("tej-hub: subscribed to {subscribed} on {}", args.hub),
        }
        let mut receiver = Receiver::new(args.out.as_deref());
        while args.count.map_or(true, |count| receiver.frames < count) {
            let part = match client.next_part().await {
                Ok(Some(part)) => part,
                Ok(None) => {
                    eprintln!("tej-hub: the hub closed the connection");
                    return Ok(());
                }
                Err(error) => {
                    receiver.abort();
                    return Err(Failure::Failed(error.to_string()));
                }
            };
            let end = matches!(part, Part::End);
            if let Err(failure) = receiver.part(part) {
                receiver.abort();
                return Err(failure);
            }
            // Acknowledged once written out (and saved with --out): a crash before this gets
            // the frame again.
            if let (true, Some(delivery)) = (end, client.delivery().cloned()) {
                client
                    .ack(&delivery)
                    .await
                    .map_err(|error| Failure::Failed(format!("cannot acknowledge: {error}")))?;
            }
        }
        Ok(())
    })
}

/// What `sub` does with a relayed frame's parts as they arrive: file data goes straight to disk
/// (with `--out`) and is otherwise dropped; the frame's text (status, file names and sizes,
/// message) is printed on stdout once the frame is complete, as `Frame`'s `Display` shows it.
struct Receiver<'a> {
    out: Option<&'a Path>,
    /// Complete frames so far.
    frames: u64,
    /// The current frame's text so far.
    text: String,
    /// The current frame's message so far (bounded by the limits' `max_message_bytes`).
    message: Vec<u8>,
    /// The file being saved.
    saving: Option<Saving>,
    /// The current file's progress bar.
    bar: Option<ProgressBar>,
}

/// A received file being written under `--out`.
struct Saving {
    /// The name it is saved under, for messages.
    name: String,
    path: PathBuf,
    file: std::fs::File,
}

impl<'a> Receiver<'a> {
    fn new(out: Option<&'a Path>) -> Receiver<'a> {
        Receiver {
            out,
            frames: 0,
            text: String::new(),
            message: Vec::new(),
            saving: None,
            bar: None,
        }
    }

    fn part(&mut self, part: Part) -> Result<(), Failure> {
        match part {
            Part::Head { status, .. } => {
                self.text = format!("status: {status}\n");
                self.message.clear();
            }
            Part::FileStart { name, len, .. } => {
                self.text.push_str(&format!("file: {name} ({len} bytes)\n"));
                if let Some(dir) = self.out {
                    self.saving = start_saving(dir, &name)?;
                }
                self.bar = Some(progress_bar(len, &name));
            }
            Part::FileData(chunk) => {
                if let Some(saving) = &mut self.saving {
                    // Blocking writes on the one-task runtime: the socket simply waits meanwhile.
                    saving.file.write_all(&chunk).map_err(|error| {
                        Failure::Failed(format!("cannot save {}: {error}", saving.name))
                    })?;
                }
                if let Some(bar) = &self.bar {
                    bar.inc(chunk.len() as u64);
                }
            }
            Part::FileEnd { .. } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                if let Some(saving) = self.saving.take() {
                    eprintln!("tej-hub: saved {}", saving.path.display());
                }
            }
            Part::MessageStart { .. } => {}
            Part::MessageData(chunk) => self.message.extend_from_slice(&chunk),
            Part::End => {
                let text = std::mem::take(&mut self.text);
                let message = String::from_utf8_lossy(&self.message);
                let separator = if self.frames == 0 { "" } else { "\n" };
                let mut out = io::stdout().lock();
                writeln!(out, "{separator}{text}message: {message}")
                    .and_then(|()| out.flush())
                    .map_err(|error| Failure::Failed(format!("cannot write to stdout: {error}")))?;
                self.frames += 1;
            }
        }
        Ok(())
    }

    /// The frame will not complete: removes the partial file, if any.
    fn abort(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
        if let Some(saving) = self.saving.take() {
            drop(saving.file);
            match std::fs::remove_file(&saving.path) {
                Ok(()) => eprintln!("tej-hub: removed partial {}", saving.path.display()),
                Err(error) => eprintln!(
                    "tej-hub: cannot remove partial {}: {error}",
                    saving.path.display()
                ),
            }
        }
    }
}

/// Opens a new file under `dir` for a received file named `name` (see [`create_new`]), or `None`
/// with a note when the name is not safe to save.
fn start_saving(dir: &Path, name: &str) -> Result<Option<Saving>, Failure> {
    match safe_file_name(name) {
        Ok(safe) => {
            let (path, file) = create_new(dir, safe).map_err(|error| {
                Failure::Failed(format!("cannot save {safe} in {}: {error}", dir.display()))
            })?;
            Ok(Some(Saving {
                name: safe.to_owned(),
                path,
                file,
            }))
        }
        Err(why) => {
            let shown: String = name.chars().take(64).collect();
            eprintln!("tej-hub: not saving file {shown:?}: {why}");
            Ok(None)
        }
    }
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

/// Creates a new file `dir/name`, or `dir/name.1`, `dir/name.2`, ... when taken; never opens an
/// existing file and never follows a symbolic link. Returns the path and the open file.
fn create_new(dir: &Path, name: &str) -> io::Result<(PathBuf, std::fs::File)> {
    for suffix in 0..=MAX_SUFFIX {
        let path = match suffix {
            0 => dir.join(name),
            n => dir.join(format!("{name}.{n}")),
        };
        // create_new is O_CREAT|O_EXCL: it fails on any existing entry, symbolic links included.
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
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
