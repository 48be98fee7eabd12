//! The `tej-hub` command: `serve` runs the hub; `pub` and `sub` try it from a shell.

use std::fs::OpenOptions;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tej_hub::config::{HubConfig, LogFormat};
use tej_hub::hub::control::SlowPolicy;
use tej_hub::hub::{HubClient, HubError};
use tej_hub::{Frame, Limits, Status};
use tracing_subscriber::EnvFilter;

/// tej-hub: a pub/sub relay for TEJ v1 frames.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(Serve),
    /// Publish one frame to a hub.
    ///
    /// Waits until the hub has read the frame (it closes the connection after our half-close).
    /// Exit status: 0 on success; 1 when connecting, reading a file or sending fails, or the hub
    /// refuses the frame (its reason is printed); 2 for bad usage.
    Pub(Pub),
    /// Subscribe to codes on a hub and print (and save) the frames it relays.
    ///
    /// Prints each frame's status, files (name and size) and message on stdout, a blank line
    /// between frames; notes (subscribed, saved, skipped) go to stderr. Exit status: 0 after
    /// --count frames or when the hub closes the connection; 1 on errors (a refused SUB, the
    /// hub's reason for closing, a file that cannot be saved); 2 for bad usage.
    Sub(Sub),
}

/// `serve` flags; each overrides the same key of the `--config` file.
#[derive(Args)]
struct Serve {
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// TOML file with the same keys as these flags (e.g. `max-frame-bytes = 1048576`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Worker threads [default: number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Largest frame accepted, header included [default: 67108864].
    #[arg(long)]
    max_frame_bytes: Option<u64>,
    /// Bytes that may wait in a subscriber's queue [default: 67108864].
    #[arg(long)]
    max_pending_bytes: Option<u64>,
    /// What happens to a subscriber that cannot keep up [default: disconnect].
    #[arg(long, value_enum)]
    slow_consumer: Option<SlowPolicy>,
    /// Close a connection silent for this many seconds; 0 is off [default: 0].
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Close a connection silent this long in the middle of a frame; 0 is off [default: 30].
    #[arg(long)]
    stall_timeout: Option<u64>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

impl Serve {
    /// The file's settings (or the defaults) with the flags applied on top.
    fn config(&self) -> Result<HubConfig, tej_hub::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => HubConfig::from_file(path)?,
            None => HubConfig::default(),
        };
        macro_rules! apply {
            ($($field:ident),*) => {$(
                if let Some(value) = self.$field { config.$field = value; }
            )*};
        }
        apply!(
            listen,
            workers,
            max_frame_bytes,
            max_pending_bytes,
            slow_consumer,
            idle_timeout,
            stall_timeout,
            log_format
        );
        config.validate()?;
        Ok(config)
    }
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop the hub with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
}

fn serve(args: &Serve) -> ExitCode {
    let config = match args.config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tej-hub: {error}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_format);
    let listener = match std::net::TcpListener::bind(config.listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("tej-hub: cannot listen on {}: {error}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        // Scripts and tests read the real port from this line (with --listen ...:0).
        println!("tej-hub listening on {addr}");
    }
    match actix_rt::System::new().block_on(tej_hub::hub::run(listener, config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tej-hub: {error}");
            ExitCode::FAILURE
        }
    }
}

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
struct Pub {
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
struct Sub {
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

/// Why `pub` or `sub` failed.
enum Failure {
    /// Bad arguments: exit status 2.
    Usage(String),
    /// Anything else: exit status 1.
    Failed(String),
}

fn exit(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("tej-hub: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("tej-hub: {message}");
            ExitCode::FAILURE
        }
    }
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
fn publish(args: &Pub) -> Result<(), Failure> {
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
fn subscribe(args: &Sub) -> Result<(), Failure> {
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

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(&args),
        Command::Pub(args) => exit(publish(&args)),
        Command::Sub(args) => exit(subscribe(&args)),
    }
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
