//! The control grammar (src/hub/control.rs) over arbitrary bytes, both directions: the hub's
//! command parser and the client's reply parser.
//!
//! Asserts: parsing never panics; an accepted `SUB`/`UNSUB` list (and any accepted code list)
//! is non-empty and holds only relayable codes (never 2 or 127); a command's canonical text
//! parses back to the same command (`AUTH`'s never shows its password: it must not show up in
//! the text at all; its message, password included, parses back to it), its acknowledgement's
//! text to the same reply, and a code list's to the same set; a refusal's reason stays short
//! whatever the peer sent. A reply that parses prints back to the same text (`INFO`'s JSON to
//! the same value).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tej_hub::hub::control::{CodeSet, Command, Reply};

/// The longest `ERR` reason: a fixed text of a few dozen bytes plus at most 32 characters of the
/// peer's, each escaped to at most 10 bytes (`\u{10ffff}`).
const MAX_REASON: usize = 400;

fn check_set(set: CodeSet) {
    assert!(!set.is_empty(), "an accepted list is empty");
    assert_eq!(
        set.difference(CodeSet::relayable()),
        CodeSet::empty(),
        "unrelayable code"
    );
    let text = set.to_string();
    assert_eq!(
        text.parse::<CodeSet>(),
        Ok(set),
        "{text:?} does not parse back"
    );
}

/// `reply` prints as a text that parses back to it.
fn check_reply(reply: &Reply) {
    let text = reply.to_string();
    assert_eq!(Reply::parse(text.as_bytes()).as_ref(), Ok(reply), "{text:?}");
}

fuzz_target!(|input: &[u8]| {
    match Reply::parse(input) {
        Ok(reply @ Reply::Info(_)) => check_reply(&reply),
        Ok(reply) => assert_eq!(reply.to_string().as_bytes(), input, "{reply:?}"),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
    match Command::parse(input) {
        Ok(command @ Command::Auth { .. }) => {
            // Shown as `AUTH <user>` only: it parses back as an AUTH without its password.
            let text = command.to_string();
            assert_eq!(text.split_ascii_whitespace().count(), 2, "{text:?}");
            assert!(Command::parse(text.as_bytes()).is_err(), "{text:?}");
            assert!(format!("{command:?}").contains("Password(..)"));
            let message = command.message();
            assert_eq!(Command::parse(message.as_bytes()), Ok(command), "{message:?}");
        }
        Ok(command) => {
            if let Command::Sub(set, _) | Command::Unsub(set, _) = &command {
                check_set(*set);
            }
            let text = command.to_string();
            assert_eq!(
                Command::parse(text.as_bytes()),
                Ok(command.clone()),
                "{text:?}"
            );
            match command.ack() {
                Some(ack) => check_reply(&ack),
                // INFO's reply is built by the hub; a successful ACK has none.
                None => assert!(
                    matches!(command, Command::Info | Command::Ack { .. }),
                    "{command:?} has no acknowledgement"
                ),
            }
        }
        Err(error) => {
            let reason = error.to_string();
            assert!(reason.len() <= MAX_REASON, "a long reason: {reason:?}");
        }
    }
    if let Ok(text) = std::str::from_utf8(input) {
        match text.parse::<CodeSet>() {
            Ok(set) => check_set(set),
            Err(error) => assert!(error.to_string().len() <= MAX_REASON),
        }
    }
});
