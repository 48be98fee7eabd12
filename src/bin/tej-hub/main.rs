//! The `tej-hub` command: `serve` runs the hub; `pub` and `sub` try it from a shell; `bench`
//! measures it (it runs `tej-hub-bench`, a crate of its own); `passwd` hashes a password for the
//! hub's users; `store` inspects a durable store's directory offline.

mod bench;
mod passwd;
mod pubsub;
mod serve;
mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Serve(Box<serve::Serve>),
    /// Publish one frame to a hub.
    ///
    /// Waits until the hub has read the frame (it closes the connection after our half-close).
    /// Exit status: 0 on success; 1 when connecting, reading a file or sending fails, or the hub
    /// refuses the frame (its reason is printed); 2 for bad usage.
    Pub(pubsub::Pub),
    /// Subscribe to codes on a hub and print (and save) the frames it relays.
    ///
    /// Prints each frame's status, files (name and size) and message on stdout, a blank line
    /// between frames; notes (subscribed, saved, skipped) go to stderr. Exit status: 0 after
    /// --count frames or when the hub closes the connection; 1 on errors (a refused SUB, the
    /// hub's reason for closing, a file that cannot be saved); 2 for bad usage.
    Sub(pubsub::Sub),
    /// Print the argon2id hash of a password read on stdin, for a `[[users]]` table.
    ///
    /// On a terminal it asks twice with echo off; otherwise it reads the first line. Exit
    /// status: 0 with the hash on stdout; 1 on errors; 2 for an empty password.
    Passwd(passwd::Passwd),
    /// Measure a hub over loopback TCP (workloads: big-file, throughput, latency, matrix,
    /// connections, soak): runs `tej-hub-bench` from beside this binary with the same arguments.
    ///
    /// `cargo build --release` builds both; `tej-hub bench --help` lists the workloads.
    #[command(disable_help_flag = true)]
    Bench(bench::Bench),
    /// Inspect a store directory offline (list, show, check); nothing is modified.
    ///
    /// Exit status: 0 on success; 1 when a file cannot be read, a frame is not found, or check
    /// finds a torn or corrupt record; 2 for bad usage.
    Store(store::Store),
}

/// Why a client command failed.
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

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve::serve(&args),
        Command::Pub(args) => exit(pubsub::publish(&args)),
        Command::Sub(args) => exit(pubsub::subscribe(&args)),
        Command::Bench(args) => bench::run(&args).unwrap_or_else(|failure| exit(Err(failure))),
        Command::Passwd(args) => exit(passwd::passwd(&args)),
        Command::Store(args) => exit(store::run(&args)),
    }
}
