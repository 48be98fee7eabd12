//! `tej-hub passwd`: reads a password on stdin and prints its argon2id PHC hash, for a
//! `[[users]]` table's `password` (as `mosquitto_passwd` and `nats server passwd` do).

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};

use crate::Failure;

#[derive(Args)]
pub(crate) struct Passwd {}

/// Hashes the first line of stdin (without its line ending). On a terminal it asks twice, with
/// echo off.
pub(crate) fn passwd(_: &Passwd) -> Result<(), Failure> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt("Password: ")?;
        let again = prompt("Again: ")?;
        if first != again {
            return Err(Failure::Failed("the passwords differ".into()));
        }
        first
    } else {
        read_line()?
    };
    if password.is_empty() {
        return Err(Failure::Usage("an empty password".into()));
    }
    let hash = tej_hub::hub::auth::hash_password(&password)
        .map_err(|error| Failure::Failed(error.to_string()))?;
    println!("{hash}");
    Ok(())
}

/// One line typed at the terminal with echo off (restored afterwards, even on error).
fn prompt(text: &str) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let saved = tcgetattr(&stdin).map_err(|error| Failure::Failed(format!("stdin: {error}")))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &quiet)
        .map_err(|error| Failure::Failed(format!("cannot turn echo off: {error}")))?;
    let line = read_line();
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    line
}

fn read_line() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|error| Failure::Failed(format!("cannot read stdin: {error}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
