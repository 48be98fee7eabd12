//! `tej-hub store`: a durable store's directory, offline — `list` its codes, `show` one frame,
//! `check` every checksum, `cursors` the durable subscriptions' saved positions. Reads only: a torn tail is reported, the hub cuts it when it opens.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use tej_hub::hub::store::inspect;
use tej_hub::Status;

use crate::Failure;

#[derive(Args)]
pub(crate) struct Store {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Each durable code: first and last sequence numbers, frames, bytes, segments, oldest frame.
    List {
        /// The store directory (--store-dir of the hub).
        dir: PathBuf,
    },
    /// One frame: its record header, files (names and sizes) and message.
    Show {
        /// The store directory.
        dir: PathBuf,
        /// The code.
        code: u8,
        /// The frame's sequence number.
        seq: u64,
        /// Write the frame's exact wire bytes to stdout instead.
        #[arg(long)]
        raw: bool,
    },
    /// Verify every record header and frame CRC; report torn or corrupt tails.
    Check {
        /// The store directory.
        dir: PathBuf,
    },
    /// Each saved durable cursor: name, code, acknowledged sequence number, frames awaiting
    /// redelivery (as the hub last saved them).
    Cursors {
        /// The store directory.
        dir: PathBuf,
    },
}

fn failed(error: impl std::fmt::Display) -> Failure {
    Failure::Failed(error.to_string())
}

fn time(time: Option<SystemTime>) -> String {
    time.map_or_else(
        || "-".into(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}

pub(crate) fn run(args: &Store) -> Result<(), Failure> {
    match &args.command {
        StoreCommand::List { dir } => {
            let codes = inspect::list(dir).map_err(failed)?;
            println!(
                "{:>4} {:>12} {:>12} {:>12} {:>14} {:>8}  oldest",
                "code", "first", "last", "frames", "bytes", "segments"
            );
            for code in codes {
                println!(
                    "{:>4} {:>12} {:>12} {:>12} {:>14} {:>8}  {}",
                    code.status.code(),
                    code.first_seq,
                    code.last_seq,
                    code.frames,
                    code.bytes,
                    code.segments,
                    time(code.oldest)
                );
            }
            Ok(())
        }
        StoreCommand::Show {
            dir,
            code,
            seq,
            raw,
        } => {
            let status = Status::new(*code)
                .ok_or_else(|| Failure::Usage(format!("code {code} out of range 0-127")))?;
            let shown = inspect::show(dir, status, *seq)
                .map_err(failed)?
                .ok_or_else(|| failed(format!("code {code} has no frame {seq}")))?;
            if *raw {
                let mut out = std::io::stdout().lock();
                let mut written = Ok(());
                shown
                    .each_chunk(|chunk| {
                        if written.is_ok() {
                            written = out.write_all(chunk);
                        }
                    })
                    .map_err(failed)?;
                return written.and_then(|()| out.flush()).map_err(failed);
            }
            let header = shown.header;
            println!(
                "code {code} seq {} stored {}",
                header.seq,
                time(Some(header.time()))
            );
            println!(
                "segment {} offset {} length {}",
                shown.path.display(),
                shown.offset,
                header.len
            );
            let verified = shown.verify().map_err(failed)?;
            println!(
                "crc {:#010x} {}",
                header.frame_crc,
                if verified { "ok" } else { "MISMATCH" }
            );
            let parts = shown.parts().map_err(failed)?;
            for (name, len) in &parts.files {
                println!("file {name:?} {len} bytes");
            }
            let message = String::from_utf8_lossy(&parts.message);
            let more = if parts.message_len > parts.message.len() as u64 {
                " …"
            } else {
                ""
            };
            println!("message {} bytes: {message}{more}", parts.message_len);
            if verified {
                Ok(())
            } else {
                Err(failed("the frame's CRC does not match"))
            }
        }
        StoreCommand::Cursors { dir } => {
            let cursors = inspect::cursors(dir).map_err(failed)?;
            println!(
                "{:<32} {:>4} {:>12} {:>8}",
                "name", "code", "acked", "pending"
            );
            for cursor in cursors {
                println!(
                    "{:<32} {:>4} {:>12} {:>8}",
                    cursor.name,
                    cursor.code,
                    cursor.acked,
                    cursor.pending.len()
                );
            }
            Ok(())
        }
        StoreCommand::Check { dir } => {
            let checks = inspect::check(dir).map_err(failed)?;
            let mut bad = 0;
            for check in &checks {
                match &check.cut {
                    None => println!(
                        "ok    {} frames {} bytes {}",
                        check.path.display(),
                        check.frames,
                        check.bytes
                    ),
                    Some(cut) => {
                        bad += 1;
                        println!(
                            "TORN  {} frames {} good, cut_bytes {} at offset {}: {}",
                            check.path.display(),
                            check.frames,
                            cut.len,
                            cut.at,
                            cut.reason
                        );
                    }
                }
            }
            println!("{} segments checked, {bad} with a bad tail", checks.len());
            if bad == 0 {
                Ok(())
            } else {
                Err(failed(format!(
                    "{bad} segments have a torn or corrupt tail"
                )))
            }
        }
    }
}
