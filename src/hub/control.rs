//! The hub's control protocol: frames with status 127 ([`CONTROL`]) whose message is one ASCII
//! command, answered by one reply. Both directions live here, each parsed and printed by one type,
//! in the style of mini-redis `cmd/`: [`Command`] (what a client sends; [`Command::parse`],
//! [`parse_frame`], `Display`) and [`Reply`] (what the hub answers; `Display`, [`Reply::parse`]),
//! with the JSON object of the `INFO` reply, [`Info`]. The hub parses commands and prints replies,
//! [`HubClient`](crate::hub::HubClient) prints commands and parses replies.
//!
//! This module also owns the code-set type [`CodeSet`] every subscription is made of, and
//! [`ControlError`], whose `Display` is the reason sent back after `ERR `. It faces untrusted
//! input: nothing here panics or allocates more than a few dozen bytes per error, whatever the
//! peer sends.
//!
//! # Grammar
//! ```text
//! command  = ws* word (ws+ args)? ws*        ; words case-insensitive, ws = ASCII whitespace
//! SUB   <codes> option*                      ; subscribe (join a group with group=<name>)
//! UNSUB <codes> option*                      ; unsubscribe (leave a group with group=<name>)
//! ECHO  on | off                             ; receive own publications (if subscribed)
//! INFO                                       ; no arguments
//! SLOW  block | drop | disconnect            ; slow-consumer policy
//! AUTH  <user> <password>                    ; password = the rest of the line (may hold spaces)
//! PUBACK on | off                            ; one reply per frame published on a durable code
//! ACK   <name> <code> <seq>                  ; acknowledge a durable subscription's frames of
//!                                            ;   <code> up to <seq> (cumulative; no reply)
//!
//! codes    = sep* item (sep+ item)* sep*     ; sep = ASCII whitespace or ','
//! item     = number | number '-' number | '*'
//! number   = digit+                          ; decimal, leading zeros allowed
//! option   = key '=' value                   ; key case-insensitive, each key at most once
//! group=<name>                               ; name: 1-32 of [A-Za-z0-9_.-], case-sensitive
//! durable=<name>                             ; the same names; a durable subscription's cursor
//! from=new|all|last|seq:<n>|time:<rfc3339>   ; where a new cursor starts (with durable= only)
//! ```
//! - The code list ends at the first whitespace-separated word holding `=`; every word from there
//!   on is an option ([`SubOptions`]).
//! - A range `a-b` is inclusive and has no spaces inside it (`1 - 3` is three tokens, and `-` is
//!   a bad code).
//! - `*` stands for every relayable code, `0..=127` except 2 (PING) and 127 (CONTROL). It may be
//!   mixed with other items; the list is their union, so `* 5` is `*`.
//! - The reserved codes 2 and 127 are an error whether named, covered by a range or combined with
//!   `*`: a list with any error applies nothing.
//! - Any run of separators counts as one (`5,,6` and `5 , 6` are `5,6`); a list made only of
//!   separators is [`ControlError::EmptyList`], a command with no argument at all is
//!   [`ControlError::MissingArgument`].
//! - Items are checked in order and the first fault is reported. Within a range: a number above
//!   127, then a reversed range, then a reserved code.
//!
//! # Replies
//! ```text
//! OK SUB <codes>      OK UNSUB <codes>    ; the normalized list (see CodeSet); the word alone
//!                                         ;   for an empty set
//! OK SUB <codes> group=<name>             ; joined the group for the codes
//! OK UNSUB <codes> group=<name>           ; left the group for the codes
//! OK ECHO on|off      OK SLOW <policy>    ; the setting now, lower case
//! OK AUTH <user>                          ; authenticated as user
//! OK INFO <json>                          ; one JSON object: Info
//! OK PUBACK on|off                        ; the setting now
//! OK STORED <code> <seq>                  ; a durable frame is stored (with PUBACK on)
//! MSG <name> <code> <seq>                 ; not a reply: announces that the next frame is
//!                                         ;   <code>'s frame <seq> for durable subscription <name>
//! ERR <reason>                            ; refused (ControlError's Display, or the hub's
//!                                         ;   reason for closing the connection)
//! ```
//! Replies are case-sensitive and single-spaced: the hub prints them, [`Reply::parse`] takes only
//! what [`Reply`]'s `Display` prints.

use std::fmt;
use std::str::FromStr;

use bytes::BytesMut;
use tokio_util::codec::Encoder;

use crate::codec::{Limits, TejCodec};
use crate::frame::{Frame, Status};

mod info;
mod options;

pub use info::{
    ClusterView, CounterSnapshot, DurableCodeView, DurableView, EventCounts, GroupMembership, Info,
    LimitSettings, RemoteGroupView, SessionCounters, StoreTotals,
};
pub use options::{GroupName, StartAt, SubOptions, MAX_GROUP_NAME};

/// The status of control frames: 127.
pub const CONTROL: Status = match Status::new(127) {
    Some(status) => status,
    // Evaluated at compile time; 127 is in range, so this arm can never be taken.
    None => panic!("127 is a valid custom status"),
};

/// Bits of the codes that are never relayed: 2 (PING) and 127 (CONTROL).
const RESERVED_BITS: u128 = (1 << 2) | (1 << 127);

/// The longest user-supplied text an error stores, in characters.
const MAX_ECHOED: usize = 32;

/// A set of custom status codes `0..=127`; bit `i` stands for code `i`.
///
/// `Display` gives the normalized list: sorted, runs of two or more consecutive codes collapsed to
/// `a-b`, comma-separated (`5,7-9`; the empty set is the empty string). `FromStr` parses the code
/// list grammar of the [module docs](self) and rejects the reserved codes 2 and 127, so any set it
/// returns is non-empty and relayable.
///
/// # Examples
/// ```
/// use tej_hub::hub::control::CodeSet;
/// let set: CodeSet = "9 5, 8,7".parse().unwrap();
/// assert_eq!(set.to_string(), "5,7-9");
/// assert_eq!(CodeSet::relayable().to_string(), "0-1,3-126");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CodeSet(u128);

impl CodeSet {
    /// The set with no code.
    pub const fn empty() -> CodeSet {
        CodeSet(0)
    }

    /// Every code a hub relays: `0..=127` except 2 (PING) and 127 (CONTROL).
    pub const fn relayable() -> CodeSet {
        CodeSet(!RESERVED_BITS)
    }

    /// The set whose members are the set bits of `bits` (bit `i` = code `i`).
    pub const fn from_bits(bits: u128) -> CodeSet {
        CodeSet(bits)
    }

    /// The set as bits (bit `i` = code `i`).
    pub const fn bits(self) -> u128 {
        self.0
    }

    /// Adds `status`; returns whether it was absent before.
    pub fn insert(&mut self, status: Status) -> bool {
        let absent = !self.contains(status);
        self.0 |= bit(status);
        absent
    }

    /// Removes `status`; returns whether it was present.
    pub fn remove(&mut self, status: Status) -> bool {
        let present = self.contains(status);
        self.0 &= !bit(status);
        present
    }

    /// Whether `status` is in the set.
    pub const fn contains(self, status: Status) -> bool {
        self.0 & bit(status) != 0
    }

    /// Whether the set has no code.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The number of codes in the set.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The relayable codes not in the set.
    pub const fn complement(self) -> CodeSet {
        CodeSet(!self.0 & !RESERVED_BITS)
    }

    /// The codes in either set.
    #[must_use]
    pub const fn union(self, other: CodeSet) -> CodeSet {
        CodeSet(self.0 | other.0)
    }

    /// The codes in `self` but not in `other`.
    #[must_use]
    pub const fn difference(self, other: CodeSet) -> CodeSet {
        CodeSet(self.0 & !other.0)
    }

    /// The codes in both sets.
    #[must_use]
    pub const fn intersection(self, other: CodeSet) -> CodeSet {
        CodeSet(self.0 & other.0)
    }

    /// The codes in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = Status> {
        Codes(self.0)
    }

    /// Adds the codes `start..=end` (both at most 127, `start <= end`).
    fn insert_range(&mut self, start: u8, end: u8) {
        for code in start..=end {
            if let Some(status) = Status::new(code) {
                self.insert(status);
            }
        }
    }
}

/// The bit standing for `status`.
const fn bit(status: Status) -> u128 {
    1 << status.code()
}

/// Iterator over a [`CodeSet`]'s codes, lowest first.
struct Codes(u128);

impl Iterator for Codes {
    type Item = Status;

    fn next(&mut self) -> Option<Status> {
        if self.0 == 0 {
            return None;
        }
        let code = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        u8::try_from(code).ok().and_then(Status::new)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = self.0.count_ones() as usize;
        (len, Some(len))
    }
}

impl FromIterator<Status> for CodeSet {
    fn from_iter<I: IntoIterator<Item = Status>>(iter: I) -> CodeSet {
        let mut set = CodeSet::empty();
        set.extend(iter);
        set
    }
}

impl Extend<Status> for CodeSet {
    fn extend<I: IntoIterator<Item = Status>>(&mut self, iter: I) {
        for status in iter {
            self.insert(status);
        }
    }
}

/// The normalized list: `0-1,3-126`, `5,7-9`; empty for the empty set.
impl fmt::Display for CodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut codes = self.iter().map(Status::code).peekable();
        let mut first = true;
        while let Some(start) = codes.next() {
            let mut end = start;
            while codes.peek() == Some(&end.wrapping_add(1)) {
                codes.next();
                end = end.wrapping_add(1);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

/// Parses a code list (see the [module docs](self) for the grammar).
///
/// # Errors
/// [`ControlError::EmptyList`] when there is no item, and [`ControlError::BadCode`],
/// [`ControlError::CodeOutOfRange`], [`ControlError::ReversedRange`] or
/// [`ControlError::ReservedCode`] for the first faulty item.
impl FromStr for CodeSet {
    type Err = ControlError;

    fn from_str(list: &str) -> Result<CodeSet, ControlError> {
        let mut set = CodeSet::empty();
        let mut items = 0usize;
        for token in list
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|token| !token.is_empty())
        {
            items += 1;
            set = set.union(parse_item(token)?);
        }
        if items == 0 {
            Err(ControlError::EmptyList)
        } else {
            Ok(set)
        }
    }
}

/// One list item: `*`, `n` or `a-b`.
fn parse_item(token: &str) -> Result<CodeSet, ControlError> {
    if token == "*" {
        return Ok(CodeSet::relayable());
    }
    let bad = || ControlError::BadCode { token: clip(token) };
    let (start, end) = token.split_once('-').unwrap_or((token, token));
    let (start_value, end_value) = (
        parse_code(start).ok_or_else(bad)?,
        parse_code(end).ok_or_else(bad)?,
    );
    let start = to_code(start, start_value)?;
    let end = to_code(end, end_value)?;
    if start > end {
        return Err(ControlError::ReversedRange { start, end });
    }
    let mut set = CodeSet::empty();
    set.insert_range(start, end);
    match set.intersection(CodeSet(RESERVED_BITS)).iter().next() {
        Some(reserved) => Err(ControlError::ReservedCode {
            code: reserved.code(),
        }),
        None => Ok(set),
    }
}

/// A non-empty run of ASCII digits as a number, saturating at `u64::MAX`; `None` for anything else.
fn parse_code(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// `value` (parsed from `digits`) as a custom status code, or [`ControlError::CodeOutOfRange`]
/// quoting `digits` as sent: the parsed value saturates, the client's text does not.
fn to_code(digits: &str, value: u64) -> Result<u8, ControlError> {
    u8::try_from(value)
        .ok()
        .filter(|c| *c <= Status::MAX)
        .ok_or_else(|| ControlError::CodeOutOfRange { code: clip(digits) })
}

/// As much of `text` as shows in at most [`MAX_ECHOED`] characters once escaped for an error
/// (a control byte shows as six, `\u{10}`), marked with `...` when cut.
pub(crate) fn clip(text: &str) -> String {
    let mut shown = 0;
    for (at, c) in text.char_indices() {
        shown += c.escape_debug().count();
        if shown > MAX_ECHOED {
            return format!("{}...", &text[..at]);
        }
    }
    text.to_owned()
}

/// What the hub does with a subscriber that cannot keep up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowPolicy {
    /// Pause the publisher until the subscriber has room (`block`).
    Block,
    /// Drop frames the subscriber has no room for (`drop`).
    Drop,
    /// Disconnect the subscriber (`disconnect`).
    Disconnect,
}

impl SlowPolicy {
    /// Every policy, in the order the documentation lists them.
    pub const ALL: [SlowPolicy; 3] = [SlowPolicy::Block, SlowPolicy::Drop, SlowPolicy::Disconnect];

    /// The policy's lowercase name: `block`, `drop` or `disconnect`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SlowPolicy::Block => "block",
            SlowPolicy::Drop => "drop",
            SlowPolicy::Disconnect => "disconnect",
        }
    }
}

/// The lowercase name: `block`, `drop` or `disconnect`.
impl fmt::Display for SlowPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses `block`, `drop` or `disconnect`, in any case.
///
/// # Errors
/// [`ControlError::BadSlowArgument`] for anything else.
impl FromStr for SlowPolicy {
    type Err = ControlError;

    fn from_str(name: &str) -> Result<SlowPolicy, ControlError> {
        SlowPolicy::ALL
            .into_iter()
            .find(|policy| name.eq_ignore_ascii_case(policy.as_str()))
            .ok_or_else(|| ControlError::BadSlowArgument {
                argument: clip(name),
            })
    }
}

/// A password as sent with `AUTH`: never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// `password` as `AUTH` sends it.
    pub fn new(password: impl Into<String>) -> Password {
        Password(password.into())
    }

    /// The password.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// One control command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `SUB <codes> [options]`: add the codes to the session's subscriptions, or with
    /// `group=<name>` join that queue group for them.
    Sub(CodeSet, SubOptions),
    /// `UNSUB <codes> [options]`: remove the codes from the session's ordinary subscriptions, or
    /// with `group=<name>` leave that group for them.
    Unsub(CodeSet, SubOptions),
    /// `ECHO on|off`: whether the session receives its own publications on codes it subscribes to.
    Echo(bool),
    /// `INFO`: ask the hub about the session; the hub builds the reply.
    Info,
    /// `SLOW block|drop|disconnect`: the session's slow-consumer policy.
    Slow(SlowPolicy),
    /// `AUTH <user> <password>`: authenticate as `user`.
    Auth {
        /// The user name.
        user: String,
        /// The password: the rest of the line.
        password: Password,
    },
    /// `PUBACK on|off`: whether each frame the session publishes on a durable code is answered
    /// `OK STORED <code> <seq>` (or `ERR <why>`) once stored.
    Puback(bool),
    /// `ACK <name> <code> <seq>`: durable subscription `name` has processed every frame of
    /// `status` up to `seq` it was given.
    Ack {
        /// The durable subscription.
        name: GroupName,
        /// The code.
        status: Status,
        /// The highest sequence number acknowledged.
        seq: u64,
    },
}

impl Command {
    /// Parses one control message (see the [module docs](self) for the grammar).
    ///
    /// # Errors
    /// [`ControlError::NotText`] when `message` is not ASCII, [`ControlError::Empty`] when it is
    /// blank, [`ControlError::Unknown`] for an unknown command word, and the argument errors
    /// ([`ControlError::MissingArgument`], [`ControlError::UnexpectedArgument`], the code list
    /// errors, [`ControlError::BadOnOff`], [`ControlError::BadSlowArgument`], the `ACK` argument errors).
    ///
    /// # Examples
    /// ```
    /// use tej_hub::hub::control::{CodeSet, Command, ControlError};
    /// let cmd = Command::parse(b"sub 5, 6 8-9\n").unwrap();
    /// assert_eq!(cmd, Command::Sub("5-6,8-9".parse().unwrap(), Default::default()));
    /// assert_eq!(cmd.to_string(), "SUB 5-6,8-9");
    /// assert_eq!(Command::parse(b"SUB 5 2"), Err(ControlError::ReservedCode { code: 2 }));
    /// ```
    pub fn parse(message: &[u8]) -> Result<Command, ControlError> {
        if !message.is_ascii() {
            return Err(ControlError::NotText);
        }
        let text = std::str::from_utf8(message)
            .map_err(|_| ControlError::NotText)?
            .trim_matches(|c: char| c.is_ascii_whitespace());
        if text.is_empty() {
            return Err(ControlError::Empty);
        }
        let (word, rest) = text
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((text, ""));
        let is = |name: &str| word.eq_ignore_ascii_case(name);
        if is("SUB") {
            let (codes, options) = codes_and_options("SUB", rest)?;
            Ok(Command::Sub(codes, options))
        } else if is("UNSUB") {
            let (codes, options) = codes_and_options("UNSUB", rest)?;
            Ok(Command::Unsub(codes, options))
        } else if is("ECHO") {
            on_off("ECHO", rest).map(Command::Echo)
        } else if is("PUBACK") {
            on_off("PUBACK", rest).map(Command::Puback)
        } else if is("ACK") {
            ack_arguments(rest)
        } else if is("INFO") {
            match rest.split_ascii_whitespace().next() {
                Some(argument) => Err(ControlError::UnexpectedArgument {
                    command: "INFO",
                    argument: clip(argument),
                }),
                None => Ok(Command::Info),
            }
        } else if is("SLOW") {
            single_argument("SLOW", rest)?.parse().map(Command::Slow)
        } else if is("AUTH") {
            let missing = ControlError::MissingArgument { command: "AUTH" };
            let (user, password) = rest
                .trim_start_matches(|c: char| c.is_ascii_whitespace())
                .split_once(|c: char| c.is_ascii_whitespace())
                .ok_or(missing.clone())?;
            let password = password.trim_start_matches(|c: char| c.is_ascii_whitespace());
            if password.is_empty() {
                return Err(missing);
            }
            Ok(Command::Auth {
                user: user.to_owned(),
                password: Password(password.to_owned()),
            })
        } else {
            Err(ControlError::Unknown {
                command: clip(word),
            })
        }
    }

    /// The command word, upper case: `SUB`, `UNSUB`, `ECHO`, `INFO` or `SLOW`.
    pub const fn name(&self) -> &'static str {
        match self {
            Command::Sub(..) => "SUB",
            Command::Unsub(..) => "UNSUB",
            Command::Echo(_) => "ECHO",
            Command::Info => "INFO",
            Command::Slow(_) => "SLOW",
            Command::Auth { .. } => "AUTH",
            Command::Puback(_) => "PUBACK",
            Command::Ack { .. } => "ACK",
        }
    }

    /// The reply acknowledging this command: `OK SUB <list>`, `OK UNSUB <list>`,
    /// `OK ECHO on|off` or `OK SLOW <policy>`, the list normalized (see [`CodeSet`]). `None` for
    /// [`Command::Info`] and [`Command::Auth`], whose replies the hub builds.
    ///
    /// The list is the command's own set; a hub that answers with the session's whole set after
    /// the change acknowledges `Command::Sub(whole_set)` instead.
    pub fn ack(&self) -> Option<Reply> {
        match self {
            Command::Sub(set, options) => Some(Reply::Sub(*set, options.clone())),
            Command::Unsub(set, options) => Some(Reply::Unsub(*set, options.clone())),
            Command::Echo(on) => Some(Reply::Echo(*on)),
            Command::Slow(policy) => Some(Reply::Slow(*policy)),
            Command::Puback(on) => Some(Reply::Puback(*on)),
            Command::Info | Command::Auth { .. } | Command::Ack { .. } => None,
        }
    }

    /// The control message that sends this command: its `Display`, with `AUTH`'s password (and
    /// its user unclipped).
    ///
    /// # Examples
    /// ```
    /// use tej_hub::hub::control::{Command, Password};
    /// let auth = Command::Auth { user: "alice".into(), password: Password::new("wonder land") };
    /// assert_eq!(auth.message(), "AUTH alice wonder land");
    /// assert_eq!(auth.to_string(), "AUTH alice");
    /// ```
    pub fn message(&self) -> String {
        match self {
            Command::Auth { user, password } => format!("AUTH {user} {}", password.expose()),
            command => command.to_string(),
        }
    }
}

/// The canonical form: `SUB 5,7-9`, `UNSUB 3`, `ECHO on`, `INFO`, `SLOW drop` (an empty set shows
/// as the bare command word). It parses back to the same command when the set is non-empty and
/// relayable.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            Command::Sub(set, options) | Command::Unsub(set, options) if !set.is_empty() => {
                write!(f, " {set}{options}")
            }
            Command::Sub(_, options) | Command::Unsub(_, options) => write!(f, "{options}"),
            Command::Info => Ok(()),
            Command::Echo(on) => f.write_str(if *on { " on" } else { " off" }),
            Command::Slow(policy) => write!(f, " {policy}"),
            // Never the password.
            Command::Auth { user, .. } => write!(f, " {}", clip(user)),
            Command::Puback(on) => f.write_str(if *on { " on" } else { " off" }),
            Command::Ack { name, status, seq } => write!(f, " {name} {} {seq}", status.code()),
        }
    }
}

/// Parses one control message with [`Command::parse`].
impl FromStr for Command {
    type Err = ControlError;

    fn from_str(message: &str) -> Result<Command, ControlError> {
        Command::parse(message.as_bytes())
    }
}

/// The code list after `command`, which must be there, and the options after it: the list ends
/// at the first word holding `=`.
fn codes_and_options(
    command: &'static str,
    rest: &str,
) -> Result<(CodeSet, SubOptions), ControlError> {
    // Each separator is one ASCII byte, so `at` is the byte offset of `word`.
    let mut at = 0;
    let mut codes_end = rest.len();
    for word in rest.split(|c: char| c.is_ascii_whitespace()) {
        if word.contains('=') {
            codes_end = at;
            break;
        }
        at += word.len() + 1;
    }
    let (codes, options) = rest.split_at(codes_end);
    if codes
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .is_empty()
    {
        return Err(ControlError::MissingArgument { command });
    }
    let codes = codes.parse()?;
    let options = SubOptions::parse(options.split_ascii_whitespace())?;
    if options.delete && command == "SUB" {
        return Err(ControlError::DeleteOnSub);
    }
    Ok((codes, options))
}

/// `on` or `off` (any case), the one argument of `ECHO` and `PUBACK`.
fn on_off(command: &'static str, rest: &str) -> Result<bool, ControlError> {
    let argument = single_argument(command, rest)?;
    if argument.eq_ignore_ascii_case("on") {
        Ok(true)
    } else if argument.eq_ignore_ascii_case("off") {
        Ok(false)
    } else {
        Err(ControlError::BadOnOff {
            command,
            argument: clip(argument),
        })
    }
}

/// `ACK`'s three arguments: `<name> <code> <seq>`.
fn ack_arguments(rest: &str) -> Result<Command, ControlError> {
    let mut arguments = rest.split_ascii_whitespace();
    let missing = ControlError::MissingArgument { command: "ACK" };
    let (Some(name), Some(code), Some(seq)) =
        (arguments.next(), arguments.next(), arguments.next())
    else {
        return Err(missing);
    };
    if let Some(extra) = arguments.next() {
        return Err(ControlError::UnexpectedArgument {
            command: "ACK",
            argument: clip(extra),
        });
    }
    let status = match code.parse::<CodeSet>()? {
        set if set.len() == 1 => set.iter().next(),
        _ => None,
    }
    .ok_or_else(|| ControlError::BadCode { token: clip(code) })?;
    let seq = parse_code(seq)
        .filter(|&seq| seq < u64::MAX)
        .ok_or_else(|| ControlError::BadSequence { seq: clip(seq) })?;
    Ok(Command::Ack {
        name: name.parse()?,
        status,
        seq,
    })
}

/// The one whitespace-free argument after `command`.
fn single_argument<'a>(command: &'static str, rest: &'a str) -> Result<&'a str, ControlError> {
    let mut arguments = rest.split_ascii_whitespace();
    let argument = arguments
        .next()
        .ok_or(ControlError::MissingArgument { command })?;
    match arguments.next() {
        Some(extra) => Err(ControlError::UnexpectedArgument {
            command,
            argument: clip(extra),
        }),
        None => Ok(argument),
    }
}

/// Parses a control frame: it must carry no files, and its message is one command.
///
/// The frame's status is not checked; the caller routes status-127 frames here.
///
/// # Errors
/// [`ControlError::CarriesFiles`] when the frame has files, otherwise as [`Command::parse`].
pub fn parse_frame(frame: &Frame) -> Result<Command, ControlError> {
    if !frame.files.is_empty() {
        return Err(ControlError::CarriesFiles {
            count: frame.files.len(),
        });
    }
    Command::parse(&frame.message)
}

/// A control frame (status 127, no files) with message `ERR <reason>`, or `ERR` when `reason` is
/// empty: [`Reply::Err`] as a frame.
///
/// # Examples
/// ```
/// use tej_hub::hub::control::{err_reply, Command};
/// let error = Command::parse(b"SUB 1-3").unwrap_err();
/// assert_eq!(err_reply(error).message, "ERR reserved code 2");
/// ```
pub fn err_reply(reason: impl fmt::Display) -> Frame {
    Reply::Err(reason.to_string()).to_frame()
}

/// One reply of the hub to a control command (see the [module docs](self) for the grammar).
///
/// `Display` is the reply's message; [`Reply::parse`] reads it back.
///
/// # Examples
/// ```
/// use tej_hub::hub::control::{CodeSet, Reply};
/// let reply = Reply::Sub("5 7-9 8".parse().unwrap(), Default::default());
/// assert_eq!(reply.to_string(), "OK SUB 5,7-9");
/// assert_eq!(Reply::parse(b"OK SUB 5,7-9"), Ok(reply));
/// assert_eq!(Reply::parse(b"ERR reserved code 2"), Ok(Reply::Err("reserved code 2".into())));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `OK SUB <codes> [options]`: the codes are subscribed to (`OK SUB` for none), or with
    /// `group=<name>` the group is joined for them.
    Sub(CodeSet, SubOptions),
    /// `OK UNSUB <codes> [options]`: the codes are unsubscribed from (`OK UNSUB` for none), or
    /// with `group=<name>` the group is left for them.
    Unsub(CodeSet, SubOptions),
    /// `OK ECHO on|off`: whether the session receives its own publications now.
    Echo(bool),
    /// `OK SLOW <policy>`: the session's slow-consumer policy now.
    Slow(SlowPolicy),
    /// `OK AUTH <user>`: the session is authenticated as the user.
    Auth(String),
    /// `OK INFO <json>`: the session's state, the hub's limits and counters.
    Info(Box<Info>),
    /// `OK PUBACK on|off`: whether the session's durable frames are acknowledged now.
    Puback(bool),
    /// `OK STORED <code> <seq>`: a frame the session published is stored as `seq` of its code.
    Stored {
        /// The frame's code.
        status: Status,
        /// Its sequence number in the code's log.
        seq: u64,
    },
    /// `MSG <name> <code> <seq>`: the next frame on the wire is frame `seq` of `status`,
    /// delivered through durable subscription `name` (acknowledge it with `ACK`).
    Msg {
        /// The durable subscription.
        name: GroupName,
        /// The frame's code.
        status: Status,
        /// Its sequence number.
        seq: u64,
    },
    /// `ERR <reason>` (`ERR` for an empty reason): the command was refused, or the hub is closing
    /// the connection and says why.
    Err(String),
}

impl Reply {
    /// Parses one reply message: exactly what `Display` prints (words upper case, one space
    /// between parts, code lists normalized); `INFO`'s JSON may be laid out in any way.
    ///
    /// # Errors
    /// [`ReplyError::NotText`] when `message` is not UTF-8, [`ReplyError::Unknown`] when it is no
    /// reply of the grammar, [`ReplyError::BadArgument`] for an acknowledgement whose argument is
    /// not in its canonical form, [`ReplyError::BadInfo`] when `INFO`'s JSON is not an [`Info`].
    pub fn parse(message: &[u8]) -> Result<Reply, ReplyError> {
        let text = std::str::from_utf8(message).map_err(|_| ReplyError::NotText)?;
        let unknown = || ReplyError::Unknown { reply: clip(text) };
        if text == "ERR" {
            return Ok(Reply::Err(String::new()));
        }
        if let Some(reason) = text.strip_prefix("ERR ") {
            return if reason.is_empty() {
                Err(unknown())
            } else {
                Ok(Reply::Err(reason.to_owned()))
            };
        }
        if let Some(delivery) = text.strip_prefix("MSG ") {
            return parse_msg(delivery).ok_or_else(|| ReplyError::BadArgument {
                word: "MSG",
                argument: clip(delivery),
            });
        }
        let acknowledged = text.strip_prefix("OK ").ok_or_else(unknown)?;
        let (word, argument) = match acknowledged.split_once(' ') {
            Some((word, argument)) => (word, Some(argument)),
            None => (acknowledged, None),
        };
        let bad = |word: &'static str, argument: &str| ReplyError::BadArgument {
            word,
            argument: clip(argument),
        };
        match (word, argument) {
            ("SUB", argument) => {
                ack_codes("SUB", argument).map(|(set, options)| Reply::Sub(set, options))
            }
            ("UNSUB", argument) => {
                ack_codes("UNSUB", argument).map(|(set, options)| Reply::Unsub(set, options))
            }
            ("ECHO", Some("on")) => Ok(Reply::Echo(true)),
            ("ECHO", Some("off")) => Ok(Reply::Echo(false)),
            ("ECHO", argument) => Err(bad("ECHO", argument.unwrap_or_default())),
            ("SLOW", argument) => {
                let argument = argument.unwrap_or_default();
                [SlowPolicy::Block, SlowPolicy::Drop, SlowPolicy::Disconnect]
                    .into_iter()
                    .find(|policy| policy.as_str() == argument)
                    .map(Reply::Slow)
                    .ok_or_else(|| bad("SLOW", argument))
            }
            ("AUTH", Some(user)) if !user.is_empty() => Ok(Reply::Auth(user.to_owned())),
            ("AUTH", argument) => Err(bad("AUTH", argument.unwrap_or_default())),
            ("PUBACK", Some("on")) => Ok(Reply::Puback(true)),
            ("PUBACK", Some("off")) => Ok(Reply::Puback(false)),
            ("PUBACK", argument) => Err(bad("PUBACK", argument.unwrap_or_default())),
            ("STORED", Some(argument)) => {
                let (status, seq) =
                    code_and_seq(argument).ok_or_else(|| bad("STORED", argument))?;
                Ok(Reply::Stored { status, seq })
            }
            ("INFO", Some(json)) => serde_json::from_str(json)
                .map(|info| Reply::Info(Box::new(info)))
                .map_err(|error| ReplyError::BadInfo {
                    reason: error.to_string(),
                }),
            _ => Err(unknown()),
        }
    }

    /// The reply as a control frame (status 127, no files).
    pub fn to_frame(&self) -> Frame {
        Frame::message(CONTROL, self.to_string())
    }

    /// Appends the reply's control frame, as it goes on the wire, to `dst`: for replies sent
    /// back to back (a batch's `OK STORED`s, a run's `MSG` notices) without a buffer each.
    pub fn put_wire(&self, dst: &mut BytesMut) {
        // A control frame without files is within every limit the format has: it encodes.
        let _ = TejCodec::new(Limits::frame_only(u64::MAX)).encode(&self.to_frame(), dst);
    }
}

/// `<code> <seq>` as the hub prints them: a relayable code and a sequence number, canonical.
fn code_and_seq(text: &str) -> Option<(Status, u64)> {
    let (code, seq) = text.split_once(' ')?;
    let status = code
        .parse::<u8>()
        .ok()
        .and_then(Status::new)
        .filter(|status| CodeSet::relayable().contains(*status))?;
    let seq = seq.parse::<u64>().ok()?;
    (format!("{} {seq}", status.code()) == text).then_some((status, seq))
}

/// The arguments of `MSG <name> <code> <seq>`.
fn parse_msg(text: &str) -> Option<Reply> {
    let (name, rest) = text.split_once(' ')?;
    let (status, seq) = code_and_seq(rest)?;
    Some(Reply::Msg {
        name: name.parse().ok()?,
        status,
        seq,
    })
}

/// The code list and options of `OK <word> [codes] [options]`: the list absent for the empty
/// set, else normalized; only the text `Display` prints is taken.
fn ack_codes(
    word: &'static str,
    argument: Option<&str>,
) -> Result<(CodeSet, SubOptions), ReplyError> {
    let Some(argument) = argument else {
        return Ok((CodeSet::empty(), SubOptions::default()));
    };
    let bad = || ReplyError::BadArgument {
        word,
        argument: clip(argument),
    };
    let mut words = argument.split(' ').peekable();
    let set = match words.next_if(|codes| !codes.contains('=')) {
        Some(codes) => codes
            .parse::<CodeSet>()
            .ok()
            .filter(|set| set.to_string() == codes)
            .ok_or_else(bad)?,
        None => CodeSet::empty(),
    };
    let options = SubOptions::parse(words).map_err(|_| bad())?;
    // One space between parts, lower-case keys: the canonical text only.
    let canonical = format!("{set}{options}");
    if canonical.trim_start() != argument {
        return Err(bad());
    }
    Ok((set, options))
}

/// The reply's message, as the hub sends it: `OK SUB 5,7-9`, `OK ECHO on`, `OK INFO {..}`,
/// `ERR reserved code 2`.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (word, set, options) = match self {
            Reply::Sub(set, options) => ("SUB", set, options),
            Reply::Unsub(set, options) => ("UNSUB", set, options),
            Reply::Echo(on) => return f.write_str(if *on { "OK ECHO on" } else { "OK ECHO off" }),
            Reply::Slow(policy) => return write!(f, "OK SLOW {policy}"),
            Reply::Auth(user) => return write!(f, "OK AUTH {user}"),
            Reply::Info(info) => {
                // Plain structs of numbers, strings and lists: serializing cannot fail.
                let json = serde_json::to_string(info).map_err(|_| fmt::Error)?;
                return write!(f, "OK INFO {json}");
            }
            Reply::Puback(on) => {
                return f.write_str(if *on { "OK PUBACK on" } else { "OK PUBACK off" })
            }
            Reply::Stored { status, seq } => return write!(f, "OK STORED {} {seq}", status.code()),
            Reply::Msg { name, status, seq } => {
                return write!(f, "MSG {name} {} {seq}", status.code())
            }
            Reply::Err(reason) if reason.is_empty() => return f.write_str("ERR"),
            Reply::Err(reason) => return write!(f, "ERR {reason}"),
        };
        if set.is_empty() {
            write!(f, "OK {word}{options}")
        } else {
            write!(f, "OK {word} {set}{options}")
        }
    }
}

/// Why a control frame from the hub is not a [`Reply`]. Text taken from the message is cut to 32
/// characters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The message is not UTF-8.
    #[error("reply is not utf-8 text")]
    NotText,
    /// The message is neither `OK <word> ...` of a known command nor `ERR <reason>`.
    #[error("unknown reply {reply:?}")]
    Unknown {
        /// The message, cut to 32 characters.
        reply: String,
    },
    /// An acknowledgement's argument is not one the hub prints (a list not normalized, an
    /// unknown setting, a missing user).
    #[error("bad argument {argument:?} in OK {word}")]
    BadArgument {
        /// The command word acknowledged.
        word: &'static str,
        /// The argument, cut to 32 characters.
        argument: String,
    },
    /// `OK INFO`'s JSON is not an [`Info`].
    #[error("bad INFO object: {reason}")]
    BadInfo {
        /// What serde found wrong.
        reason: String,
    },
}

/// Why a control frame was refused. `Display` is a short lowercase reason, sent after `ERR `.
///
/// Strings taken from the peer are cut to 32 characters and shown quoted and escaped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The message is not ASCII text (not UTF-8, or UTF-8 beyond ASCII).
    #[error("command is not ascii text")]
    NotText,
    /// The message is empty or only whitespace.
    #[error("empty command")]
    Empty,
    /// The command word is none of `SUB`, `UNSUB`, `ECHO`, `INFO`, `SLOW`.
    #[error("unknown command {command:?}")]
    Unknown {
        /// The command word as sent, cut to 32 characters.
        command: String,
    },
    /// The command needs an argument and has none.
    #[error("missing argument to {command}")]
    MissingArgument {
        /// The command word, upper case.
        command: &'static str,
    },
    /// The command takes fewer arguments than were sent.
    #[error("unexpected argument {argument:?} to {command}")]
    UnexpectedArgument {
        /// The command word, upper case.
        command: &'static str,
        /// The first argument too many, cut to 32 characters.
        argument: String,
    },
    /// A code list item is neither a number, a range `a-b` nor `*`.
    #[error("bad code {token:?}")]
    BadCode {
        /// The item as sent, cut to 32 characters.
        token: String,
    },
    /// A code list names or covers code 2 (PING) or 127 (CONTROL), which are never relayed.
    #[error("reserved code {code}")]
    ReservedCode {
        /// The reserved code, 2 or 127.
        code: u8,
    },
    /// A code list has a number above 127.
    #[error("code {code} out of range 0-127")]
    CodeOutOfRange {
        /// The number's digits as sent, cut to 32 characters.
        code: String,
    },
    /// A code list has a range whose start is above its end.
    #[error("reversed range {start}-{end}")]
    ReversedRange {
        /// The range start.
        start: u8,
        /// The range end, below `start`.
        end: u8,
    },
    /// A code list has no item at all.
    #[error("empty code list")]
    EmptyList,
    /// `SLOW` got something other than `block`, `drop` or `disconnect`.
    #[error("slow takes block, drop or disconnect, not {argument:?}")]
    BadSlowArgument {
        /// The argument as sent, cut to 32 characters.
        argument: String,
    },
    /// The control frame carries files.
    #[error("control frame carries {count} files")]
    CarriesFiles {
        /// How many files it carries.
        count: usize,
    },
    /// A word after a code list is not `key=value`.
    #[error("option {word:?} is not key=value")]
    BadOption {
        /// The word as sent, cut to 32 characters.
        word: String,
    },
    /// An option's key is none the command knows (`group`).
    #[error("unknown option {key:?}")]
    UnknownOption {
        /// The key as sent, cut to 32 characters.
        key: String,
    },
    /// An option is given twice.
    #[error("option {key} given twice")]
    DuplicateOption {
        /// The key, lower case.
        key: &'static str,
    },
    /// `ECHO` or `PUBACK` got something other than `on` or `off`.
    #[error("{} takes on or off, not {argument:?}", command.to_ascii_lowercase())]
    BadOnOff {
        /// The command word, upper case.
        command: &'static str,
        /// The argument as sent, cut to 32 characters.
        argument: String,
    },
    /// `from=` is none of `new`, `all`, `last`, `seq:<n>`, `time:<RFC 3339>`.
    #[error("from takes new, all, last, seq:<n> or time:<rfc3339>, not {value:?}")]
    BadStart {
        /// The value as sent, cut to 32 characters.
        value: String,
    },
    /// `from=` without `durable=`: only a durable subscription has a start.
    #[error("from= needs durable=")]
    StartWithoutDurable,
    /// `delete=` with a value other than `yes`.
    #[error("delete takes yes, not {value:?}")]
    BadDelete {
        /// The value as sent, cut to 32 characters.
        value: String,
    },
    /// `delete=` without `durable=`: only a durable cursor is deleted.
    #[error("delete= needs durable=")]
    DeleteWithoutDurable,
    /// `delete=` on `SUB`: a cursor is deleted by `UNSUB`.
    #[error("delete= is for UNSUB only")]
    DeleteOnSub,
    /// `ACK`'s sequence number is not a number below 2^64 - 1.
    #[error("bad sequence number {seq:?}")]
    BadSequence {
        /// The argument as sent, cut to 32 characters.
        seq: String,
    },
    /// `group=` with nothing after it.
    #[error("empty group name")]
    EmptyGroupName,
    /// A group name longer than [`MAX_GROUP_NAME`] characters.
    #[error("group name of {len} characters, more than {max}")]
    GroupNameTooLong {
        /// Its length, in characters.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// A group name with a character outside `[A-Za-z0-9_.-]`.
    #[error("bad group name {name:?}: only A-Z a-z 0-9 _ . - allowed")]
    BadGroupName {
        /// The name as sent, cut to 32 characters.
        name: String,
    },
}

/// Status codes and code sets from plain numbers, for the hub's unit tests.
#[cfg(test)]
pub(crate) mod test_codes {
    use super::CodeSet;
    use crate::frame::Status;

    /// `code` as a status (the default status if `code` is over 127).
    pub(crate) fn status(code: u8) -> Status {
        Status::new(code).unwrap_or_default()
    }

    /// The set of `codes`.
    pub(crate) fn set(codes: &[u8]) -> CodeSet {
        codes.iter().map(|&c| status(c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::test_codes::{set, status};
    use super::*;

    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Command, ControlError> {
        Command::parse(text.as_bytes())
    }

    fn group(name: &str) -> GroupName {
        name.parse()
            .unwrap_or_else(|error| panic!("{name}: {error}"))
    }

    #[test]
    fn sub_and_unsub_take_a_group() {
        let workers = SubOptions::group(group("workers"));
        assert_eq!(
            parse("SUB 5 group=workers"),
            Ok(Command::Sub(set(&[5]), workers.clone()))
        );
        assert_eq!(
            parse("sub 5, 6 7-8  GROUP=workers\n"),
            Ok(Command::Sub(set(&[5, 6, 7, 8]), workers.clone()))
        );
        assert_eq!(
            parse("UNSUB * group=workers"),
            Ok(Command::Unsub(CodeSet::relayable(), workers.clone()))
        );
        assert_eq!(
            parse("SUB group=workers"),
            Err(ControlError::MissingArgument { command: "SUB" })
        );
        assert_eq!(
            parse("SUB 5 group=a b"),
            Err(ControlError::BadOption { word: "b".into() })
        );
        assert_eq!(
            parse("SUB 5 group=a*"),
            Err(ControlError::BadGroupName { name: "a*".into() })
        );
        assert_eq!(
            parse("SUB 5 queue=a"),
            Err(ControlError::UnknownOption {
                key: "queue".into()
            })
        );
        let command = Command::Sub(set(&[5, 6]), workers.clone());
        assert_eq!(command.to_string(), "SUB 5-6 group=workers");
        assert_eq!(parse(&command.message()), Ok(command.clone()));
        let ack = command.ack().unwrap_or_else(|| Reply::Err(String::new()));
        assert_eq!(ack.to_string(), "OK SUB 5-6 group=workers");
        assert_eq!(Reply::parse(b"OK SUB 5-6 group=workers"), Ok(ack));
        assert_eq!(
            Reply::parse(b"OK UNSUB 5 group=workers"),
            Ok(Reply::Unsub(set(&[5]), workers.clone()))
        );
        assert_eq!(
            Reply::parse(b"OK UNSUB group=workers"),
            Ok(Reply::Unsub(CodeSet::empty(), workers))
        );
        for bad in [
            "OK SUB 5 GROUP=workers",
            "OK SUB 5  group=workers",
            "OK SUB 5 group=",
            "OK SUB 5 group=a group=b",
            "OK SUB 5 group=workers ",
            "OK SUB 5 x=y",
        ] {
            assert!(Reply::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn control_status_is_127() {
        assert_eq!(CONTROL.code(), 127);
    }

    #[test]
    fn code_set_basics() {
        let mut s = CodeSet::empty();
        assert!(s.is_empty());
        assert_eq!(s.len(), 0);
        assert!(s.insert(status(5)));
        assert!(!s.insert(status(5)));
        assert!(s.insert(status(127)));
        assert!(s.insert(status(0)));
        assert!(s.contains(status(5)) && s.contains(status(0)) && s.contains(status(127)));
        assert!(!s.contains(status(6)));
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.iter().map(Status::code).collect::<Vec<_>>(),
            vec![0, 5, 127]
        );
        assert!(s.remove(status(127)));
        assert!(!s.remove(status(127)));
        assert_eq!(s, set(&[0, 5]));
        assert_eq!(CodeSet::from_bits(s.bits()), s);
    }

    #[test]
    fn code_set_algebra() {
        let a = set(&[1, 2, 3]);
        let b = set(&[3, 4]);
        assert_eq!(a.union(b), set(&[1, 2, 3, 4]));
        assert_eq!(a.difference(b), set(&[1, 2]));
        assert_eq!(b.difference(a), set(&[4]));
        assert_eq!(a.intersection(b), set(&[3]));
        assert_eq!(a.difference(a), CodeSet::empty());
    }

    /// Found by the `control` fuzz target (fuzz/): 32 control characters escape to 6 bytes each,
    /// so a reason is bounded by the escaped width of 32 characters, not by 32 bytes.
    #[test]
    fn reasons_stay_bounded_whatever_the_peer_sends() {
        let mut input = b"@,".to_vec();
        input.extend([0x1c; 46]);
        input.extend(b"--\n");
        let reason = Command::parse(&input).map_or_else(|e| e.to_string(), |c| c.to_string());
        assert!(
            reason.starts_with("unknown command \"@,\\u{1c}"),
            "{reason}"
        );
        assert!(
            reason.len() <= 32 * 10 + 40,
            "{} bytes: {reason}",
            reason.len()
        );
        let wide = "\u{10ffff}".repeat(100);
        let reason = wide
            .parse::<CodeSet>()
            .map_or_else(|e| e.to_string(), |_| String::new());
        assert!(
            reason.len() <= 32 * 10 + 40,
            "{} bytes: {reason}",
            reason.len()
        );
    }

    #[test]
    fn relayable_is_all_but_2_and_127() {
        let r = CodeSet::relayable();
        assert_eq!(r.len(), 126);
        assert!(!r.contains(Status::PING));
        assert!(!r.contains(CONTROL));
        assert!(r.contains(status(0)) && r.contains(status(126)));
        assert_eq!(r.to_string(), "0-1,3-126");
    }

    #[test]
    fn display_normalizes() {
        assert_eq!(CodeSet::empty().to_string(), "");
        assert_eq!(set(&[5]).to_string(), "5");
        assert_eq!(set(&[9, 7, 5, 8]).to_string(), "5,7-9");
        assert_eq!(set(&[0, 1]).to_string(), "0-1");
        assert_eq!(set(&[0, 2, 4]).to_string(), "0,2,4");
        assert_eq!(set(&[126, 127]).to_string(), "126-127");
        assert_eq!(set(&[127]).to_string(), "127");
        assert_eq!(CodeSet::from_bits(u128::MAX).to_string(), "0-127");
    }

    #[test]
    fn list_separators() {
        for list in [
            "5,6", "5 6", "5, 6", "5 ,6", "5 , 6", "5,,6", " 5\t6 ", ",5,6,", "6 5",
        ] {
            assert_eq!(list.parse::<CodeSet>(), Ok(set(&[5, 6])), "{list:?}");
        }
        assert_eq!(
            "1,2 3-4".parse::<CodeSet>(),
            Err(ControlError::ReservedCode { code: 2 })
        );
        assert_eq!("1,3 4-6".parse::<CodeSet>(), Ok(set(&[1, 3, 4, 5, 6])));
    }

    #[test]
    fn list_ranges() {
        assert_eq!("7-9".parse::<CodeSet>(), Ok(set(&[7, 8, 9])));
        assert_eq!("7-7".parse::<CodeSet>(), Ok(set(&[7])));
        assert_eq!("0-1".parse::<CodeSet>(), Ok(set(&[0, 1])));
        assert_eq!(
            "3-126".parse::<CodeSet>(),
            Ok(CodeSet::relayable().difference(set(&[0, 1])))
        );
        assert_eq!("007".parse::<CodeSet>(), Ok(set(&[7])));
        assert_eq!(
            "7-5".parse::<CodeSet>(),
            Err(ControlError::ReversedRange { start: 7, end: 5 })
        );
    }

    #[test]
    fn list_reserved_codes() {
        for (list, code) in [
            ("2", 2),
            ("127", 127),
            ("1-3", 2),
            ("2-2", 2),
            ("0-127", 2),
            ("100-127", 127),
            ("5 2", 2),
            ("* 2", 2),
            ("127,2", 127),
        ] {
            assert_eq!(
                list.parse::<CodeSet>(),
                Err(ControlError::ReservedCode { code }),
                "{list:?}"
            );
        }
    }

    #[test]
    fn list_out_of_range() {
        assert_eq!(
            "128".parse::<CodeSet>(),
            Err(ControlError::CodeOutOfRange { code: "128".into() })
        );
        assert_eq!(
            "5-300".parse::<CodeSet>(),
            Err(ControlError::CodeOutOfRange { code: "300".into() })
        );
        // Out of range is reported before reversed.
        assert_eq!(
            "300-5".parse::<CodeSet>(),
            Err(ControlError::CodeOutOfRange { code: "300".into() })
        );
        // The client's digits, not the parser's saturated u64 (18446744073709551615).
        assert_eq!(
            "99999999999999999999".parse::<CodeSet>(),
            Err(ControlError::CodeOutOfRange {
                code: "99999999999999999999".into()
            })
        );
        assert_eq!(
            "5-99999999999999999999999999999999999".parse::<CodeSet>(),
            Err(ControlError::CodeOutOfRange {
                code: format!("{}...", "9".repeat(32))
            })
        );
        assert_eq!(
            "18446744073709551616".parse::<CodeSet>(),
            Err(ControlError::CodeOutOfRange {
                code: "18446744073709551616".into()
            })
        );
    }

    #[test]
    fn list_garbage() {
        for token in [
            "x", "-", "-5", "5-", "1-2-3", "+5", "5a", "0x10", "**", "*-5", "1.5",
        ] {
            assert_eq!(
                format!("1 {token}").parse::<CodeSet>(),
                Err(ControlError::BadCode {
                    token: token.to_owned()
                }),
                "{token:?}"
            );
        }
        assert_eq!(
            "1 - 3".parse::<CodeSet>(),
            Err(ControlError::BadCode {
                token: "-".to_owned()
            })
        );
    }

    #[test]
    fn list_empty() {
        for list in ["", " ", ",", " , ,\t"] {
            assert_eq!(
                list.parse::<CodeSet>(),
                Err(ControlError::EmptyList),
                "{list:?}"
            );
        }
    }

    #[test]
    fn star_is_every_relayable_code() {
        assert_eq!("*".parse::<CodeSet>(), Ok(CodeSet::relayable()));
        assert_eq!("* 5".parse::<CodeSet>(), Ok(CodeSet::relayable()));
        assert_eq!("0,*,126".parse::<CodeSet>(), Ok(CodeSet::relayable()));
        assert_eq!(
            parse("SUB *").map(|c| c.to_string()),
            Ok("SUB 0-1,3-126".to_owned())
        );
        assert_eq!(
            "* 128".parse::<CodeSet>(),
            Err(ControlError::CodeOutOfRange { code: "128".into() })
        );
    }

    #[test]
    fn sub_and_unsub() {
        assert_eq!(
            parse("SUB 5"),
            Ok(Command::Sub(set(&[5]), SubOptions::default()))
        );
        assert_eq!(
            parse("sub 5"),
            Ok(Command::Sub(set(&[5]), SubOptions::default()))
        );
        assert_eq!(
            parse("Sub 5, 6"),
            Ok(Command::Sub(set(&[5, 6]), SubOptions::default()))
        );
        assert_eq!(
            parse("SUB 1,3 4-6"),
            Ok(Command::Sub(set(&[1, 3, 4, 5, 6]), SubOptions::default()))
        );
        assert_eq!(
            parse("UNSUB 7-9"),
            Ok(Command::Unsub(set(&[7, 8, 9]), SubOptions::default()))
        );
        assert_eq!(
            parse("unsub *"),
            Ok(Command::Unsub(CodeSet::relayable(), SubOptions::default()))
        );
        assert_eq!(
            parse("SUB 5 2"),
            Err(ControlError::ReservedCode { code: 2 })
        );
        assert_eq!(
            parse("SUB 1,2 3-4"),
            Err(ControlError::ReservedCode { code: 2 })
        );
        assert_eq!(
            parse("UNSUB 127"),
            Err(ControlError::ReservedCode { code: 127 })
        );
        assert_eq!(
            parse("SUB 1-3"),
            Err(ControlError::ReservedCode { code: 2 })
        );
        assert_eq!(
            parse("SUB 0-127"),
            Err(ControlError::ReservedCode { code: 2 })
        );
        assert_eq!(
            parse("SUB 128"),
            Err(ControlError::CodeOutOfRange { code: "128".into() })
        );
        assert_eq!(
            parse("SUB 7-5"),
            Err(ControlError::ReversedRange { start: 7, end: 5 })
        );
        assert_eq!(parse("SUB ,"), Err(ControlError::EmptyList));
        assert_eq!(
            parse("SUB five"),
            Err(ControlError::BadCode {
                token: "five".to_owned()
            })
        );
        assert_eq!(
            parse("SUB"),
            Err(ControlError::MissingArgument { command: "SUB" })
        );
        assert_eq!(
            parse("  unsub  \n"),
            Err(ControlError::MissingArgument { command: "UNSUB" })
        );
    }

    #[test]
    fn echo() {
        assert_eq!(parse("ECHO on"), Ok(Command::Echo(true)));
        assert_eq!(parse("echo OFF"), Ok(Command::Echo(false)));
        assert_eq!(parse("EcHo On\r\n"), Ok(Command::Echo(true)));
        assert_eq!(
            parse("ECHO"),
            Err(ControlError::MissingArgument { command: "ECHO" })
        );
        assert_eq!(
            parse("ECHO yes"),
            Err(ControlError::BadOnOff {
                command: "ECHO",
                argument: "yes".to_owned()
            })
        );
        assert_eq!(
            parse("ECHO on off"),
            Err(ControlError::UnexpectedArgument {
                command: "ECHO",
                argument: "off".to_owned()
            })
        );
    }

    #[test]
    fn info() {
        assert_eq!(parse("INFO"), Ok(Command::Info));
        assert_eq!(parse(" info \n"), Ok(Command::Info));
        assert_eq!(
            parse("INFO me"),
            Err(ControlError::UnexpectedArgument {
                command: "INFO",
                argument: "me".to_owned()
            })
        );
    }

    #[test]
    fn slow() {
        assert_eq!(parse("SLOW block"), Ok(Command::Slow(SlowPolicy::Block)));
        assert_eq!(parse("slow DROP"), Ok(Command::Slow(SlowPolicy::Drop)));
        assert_eq!(
            parse("Slow Disconnect\n"),
            Ok(Command::Slow(SlowPolicy::Disconnect))
        );
        assert_eq!(
            parse("SLOW"),
            Err(ControlError::MissingArgument { command: "SLOW" })
        );
        assert_eq!(
            parse("SLOW fast"),
            Err(ControlError::BadSlowArgument {
                argument: "fast".to_owned()
            })
        );
        assert_eq!(
            parse("SLOW drop block"),
            Err(ControlError::UnexpectedArgument {
                command: "SLOW",
                argument: "block".to_owned()
            })
        );
    }

    #[test]
    fn slow_policy_names() {
        for policy in [SlowPolicy::Block, SlowPolicy::Drop, SlowPolicy::Disconnect] {
            assert_eq!(policy.to_string().parse::<SlowPolicy>(), Ok(policy));
            assert_eq!(policy.to_string(), policy.to_string().to_lowercase());
        }
        assert_eq!("BLOCK".parse::<SlowPolicy>(), Ok(SlowPolicy::Block));
        assert!("".parse::<SlowPolicy>().is_err());
    }

    #[test]
    fn unknown_empty_and_not_text() {
        assert_eq!(
            parse("PUB 5"),
            Err(ControlError::Unknown {
                command: "PUB".to_owned()
            })
        );
        assert_eq!(
            parse("SUB,5"),
            Err(ControlError::Unknown {
                command: "SUB,5".to_owned()
            })
        );
        assert_eq!(parse(""), Err(ControlError::Empty));
        assert_eq!(parse(" \r\n\t"), Err(ControlError::Empty));
        assert_eq!(Command::parse(b"SUB \xff"), Err(ControlError::NotText));
        assert_eq!(Command::parse(b"\xc3"), Err(ControlError::NotText));
        assert_eq!(parse("SUB 5\u{e9}"), Err(ControlError::NotText));
        assert_eq!(parse("ÉCHO on"), Err(ControlError::NotText));
    }

    #[test]
    fn long_input_is_clipped() {
        let word = "X".repeat(1000);
        let Err(ControlError::Unknown { command }) = parse(&word) else {
            panic!("expected Unknown");
        };
        assert_eq!(command, format!("{}...", "X".repeat(32)));
        let exact = "Y".repeat(32);
        assert_eq!(
            parse(&exact),
            Err(ControlError::Unknown {
                command: exact.clone()
            })
        );
        let Err(ControlError::BadCode { token }) = parse(&format!("SUB {word}")) else {
            panic!("expected BadCode");
        };
        assert_eq!(token.len(), 35);
        let long = format!("ECHO {word}");
        assert!(err_reply(parse(&long).unwrap_err()).message.len() < 100);
    }

    #[test]
    fn frames() {
        let ok = Frame::message(CONTROL, "SUB 5");
        assert_eq!(
            parse_frame(&ok),
            Ok(Command::Sub(set(&[5]), SubOptions::default()))
        );
        let with_files = Frame::builder(CONTROL)
            .file("a", &b"x"[..])
            .file("b", &b""[..])
            .message("SUB 5")
            .build();
        assert_eq!(
            parse_frame(&with_files),
            Err(ControlError::CarriesFiles { count: 2 })
        );
        assert_eq!(
            parse_frame(&Frame::message(CONTROL, "")),
            Err(ControlError::Empty)
        );
    }

    #[test]
    fn replies() {
        let ok = Reply::Sub(set(&[5]), SubOptions::default()).to_frame();
        assert_eq!(ok.status, CONTROL);
        assert!(ok.files.is_empty());
        assert_eq!(ok.message, "OK SUB 5");
        let err = err_reply(ControlError::ReservedCode { code: 2 });
        assert_eq!(err.status, CONTROL);
        assert_eq!(err.message, "ERR reserved code 2");
        assert_eq!(err_reply("").message, "ERR");
    }

    /// Every reply the hub sends, as the hub sends it.
    fn every_reply() -> Vec<(Reply, &'static str)> {
        vec![
            (
                Reply::Sub(set(&[5, 7, 8, 9]), SubOptions::default()),
                "OK SUB 5,7-9",
            ),
            (
                Reply::Sub(CodeSet::relayable(), SubOptions::default()),
                "OK SUB 0-1,3-126",
            ),
            (
                Reply::Sub(CodeSet::empty(), SubOptions::default()),
                "OK SUB",
            ),
            (Reply::Unsub(set(&[3]), SubOptions::default()), "OK UNSUB 3"),
            (
                Reply::Unsub(CodeSet::empty(), SubOptions::default()),
                "OK UNSUB",
            ),
            (Reply::Echo(true), "OK ECHO on"),
            (Reply::Echo(false), "OK ECHO off"),
            (Reply::Slow(SlowPolicy::Block), "OK SLOW block"),
            (Reply::Slow(SlowPolicy::Drop), "OK SLOW drop"),
            (Reply::Slow(SlowPolicy::Disconnect), "OK SLOW disconnect"),
            (Reply::Auth("alice".into()), "OK AUTH alice"),
            (Reply::Err("reserved code 2".into()), "ERR reserved code 2"),
            (
                Reply::Err("unknown command \"PUB\"".into()),
                "ERR unknown command \"PUB\"",
            ),
            (
                Reply::Err("hub shutting down".into()),
                "ERR hub shutting down",
            ),
            (Reply::Err(String::new()), "ERR"),
        ]
    }

    #[test]
    fn every_reply_round_trips() {
        for (reply, text) in every_reply() {
            assert_eq!(reply.to_string(), text);
            assert_eq!(Reply::parse(text.as_bytes()), Ok(reply), "{text:?}");
        }
        let info = Reply::Info(Box::new(sample_info()));
        assert!(info.to_string().starts_with("OK INFO {\"version\":"));
        assert_eq!(Reply::parse(info.to_string().as_bytes()), Ok(info));
    }

    #[test]
    fn replies_the_hub_never_sends_are_refused() {
        for text in [
            "",
            "OK",
            "OK ",
            "ERR ",
            "ok SUB 5",
            "OK  SUB 5",
            "OK SUB ",
            "OK SUB 5 ",
            "OK SUB 5, 6",
            "OK SUB 6,5",
            "OK SUB 5-6,7",
            "OK SUB 2",
            "OK UNSUB x",
            "OK ECHO",
            "OK ECHO ON",
            "OK SLOW Drop",
            "OK SLOW",
            "OK AUTH",
            "OK AUTH ",
            "OK INFO",
            "OK INFO {}",
            "OK PUB 5",
            "OKAY",
            "ERROR x",
        ] {
            assert!(Reply::parse(text.as_bytes()).is_err(), "{text:?}");
        }
        assert_eq!(Reply::parse(b"OK \xff"), Err(ReplyError::NotText));
        assert_eq!(
            Reply::parse(b"OK SUB 5, 6"),
            Err(ReplyError::BadArgument {
                word: "SUB",
                argument: "5, 6".into()
            })
        );
        assert!(matches!(
            Reply::parse(b"OK INFO {\"version\":1}"),
            Err(ReplyError::BadInfo { .. })
        ));
    }

    /// An `INFO` with every field set, the cluster's too.
    fn sample_info() -> Info {
        Info {
            version: "0.1.0".into(),
            session: 3,
            peer: SocketAddr::from(([127, 0, 0, 1], 53960)),
            subscriptions: set(&[5, 7, 8, 9]),
            groups: vec![GroupMembership {
                name: group("workers"),
                codes: set(&[6]),
            }],
            user: Some("alice".into()),
            denied_frames: 1,
            echo: true,
            slow_consumer: SlowPolicy::Drop,
            pending_bytes: 2,
            dropped_frames: 3,
            limits: LimitSettings {
                max_frame_bytes: 17_179_869_184,
                cut_through_bytes: 1_048_576,
                max_pending_bytes: 16_777_216,
                slow_consumer_timeout: 30,
                idle_timeout: 0,
                stall_timeout: 30,
                min_rate_bytes: 0,
                min_rate_window: 10,
                auth_timeout: 2,
                max_connections: 0,
                max_connections_per_ip: 0,
                max_ingress_bytes_per_sec: 0,
            },
            counters: SessionCounters {
                frames_in: 4,
                frames_out: 5,
                bytes_in: 96,
                bytes_out: 154,
            },
            hub: CounterSnapshot {
                connections: 3,
                open_connections: 2,
                events: EventCounts {
                    unrouted_frames: 1,
                    slow_consumers: 2,
                    dropped_frames: 3,
                    denied_frames: 4,
                    auth_failures: 5,
                    refused_connections: 6,
                    tls_failures: 7,
                    cluster_dropped_frames: 8,
                    group_moved_frames: 9,
                    group_cut_frames: 10,
                },
                store: Some(StoreTotals {
                    frames: 9,
                    acks: 10,
                    ..StoreTotals::default()
                }),
            },
            cluster: Some(ClusterView {
                hub: "a".into(),
                connected: true,
                remote_hubs: 1,
                dropped_frames: 1,
                lost_messages: 2,
                slow_consumers: 3,
                messages_out: 4,
                bytes_out: 5,
                messages_in: 6,
                bytes_in: 7,
                local_codes: "5".into(),
                remote_codes: "5-6".into(),
                remote_hub_names: vec!["b".into()],
                group_redispatched_frames: 11,
                group_lost_frames: 12,
                remote_groups: vec![RemoteGroupView {
                    hub: "b".into(),
                    group: "workers".parse().unwrap_or_else(|error| panic!("{error}")),
                    codes: CodeSet::from_bits(1 << 5),
                    members: 2,
                    load: 13,
                }],
            }),
            puback: true,
            durable: vec![DurableView {
                name: group("audit"),
                attached: true,
                codes: vec![DurableCodeView {
                    code: 5,
                    acked: 12,
                    unacked_frames: 2,
                    unacked_bytes: 300,
                    redelivered: 1,
                    dead_lettered: 0,
                }],
            }],
        }
    }

    #[test]
    fn info_round_trips_through_json_with_the_documented_keys() {
        let info = sample_info();
        let json = serde_json::to_value(&info).unwrap_or_default();
        // The keys and nesting of docs/hub.md's example.
        assert_eq!(json["peer"], "127.0.0.1:53960");
        assert_eq!(json["subscriptions"], serde_json::json!([5, 7, 8, 9]));
        assert_eq!(json["slow_consumer"], "drop");
        assert_eq!(json["limits"]["max_frame_bytes"], 17_179_869_184u64);
        assert_eq!(json["counters"]["bytes_out"], 154);
        assert_eq!(json["hub"]["open_connections"], 2);
        assert_eq!(json["hub"]["tls_failures"], 7);
        assert_eq!(
            json["cluster"]["remote_hub_names"],
            serde_json::json!(["b"])
        );
        let keys = |value: &serde_json::Value| {
            let mut keys: Vec<String> = value
                .as_object()
                .map(|object| object.keys().cloned().collect())
                .unwrap_or_default();
            keys.sort();
            keys.join(",")
        };
        assert_eq!(
            keys(&json),
            "cluster,counters,denied_frames,dropped_frames,durable,echo,groups,hub,limits,peer,\
             pending_bytes,puback,session,slow_consumer,subscriptions,user,version"
        );
        assert_eq!(
            keys(&json["hub"]),
            "auth_failures,cluster_dropped_frames,connections,denied_frames,dropped_frames,\
             group_cut_frames,group_moved_frames,open_connections,refused_connections,\
             slow_consumers,store,tls_failures,unrouted_frames"
        );
        assert_eq!(json["durable"][0]["codes"][0]["unacked_bytes"], 300);
        assert_eq!(json["hub"]["store"]["acks"], 10);
        assert_eq!(
            serde_json::from_value::<Info>(json).ok(),
            Some(info.clone())
        );
        let anonymous = Info {
            user: None,
            cluster: None,
            subscriptions: CodeSet::empty(),
            ..info
        };
        let text = serde_json::to_string(&anonymous).unwrap_or_default();
        assert!(text.contains("\"user\":null") && text.contains("\"cluster\":null"));
        assert!(text.contains("\"subscriptions\":[]"));
        assert_eq!(
            serde_json::from_str::<Info>(&text).ok(),
            Some(anonymous.clone())
        );
        // A newer hub's extra keys are ignored; a code above 127 is not a subscription.
        let extra = text.replacen('{', "{\"new\":1,", 1);
        assert!(serde_json::from_str::<Info>(&extra).is_ok());
        // An older hub's INFO, without puback, durable and hub.store, still parses.
        let mut old = serde_json::to_value(&anonymous).unwrap_or_default();
        if let Some(object) = old.as_object_mut() {
            object.remove("puback");
            object.remove("durable");
        }
        if let Some(hub) = old["hub"].as_object_mut() {
            hub.remove("store");
        }
        let parsed = serde_json::from_value::<Info>(old).ok();
        assert_eq!(
            parsed
                .as_ref()
                .map(|info| (info.puback, info.durable.len())),
            Some((false, 0))
        );
        assert_eq!(parsed.and_then(|info| info.hub.store), None);
        let bad = text.replace("\"subscriptions\":[]", "\"subscriptions\":[128]");
        assert!(serde_json::from_str::<Info>(&bad).is_err());
    }

    #[test]
    fn acks() {
        let ack = |text: &str| {
            parse(text)
                .ok()
                .and_then(|c| c.ack())
                .map(|reply| reply.to_string())
        };
        assert_eq!(ack("sub 9 8 7, 5"), Some("OK SUB 5,7-9".into()));
        assert_eq!(ack("SUB *"), Some("OK SUB 0-1,3-126".into()));
        assert_eq!(ack("unsub 3"), Some("OK UNSUB 3".into()));
        assert_eq!(ack("echo ON"), Some("OK ECHO on".into()));
        assert_eq!(ack("echo off"), Some("OK ECHO off".into()));
        assert_eq!(ack("slow DROP"), Some("OK SLOW drop".into()));
        assert_eq!(ack("info"), None);
        assert_eq!(
            Command::Unsub(CodeSet::empty(), SubOptions::default())
                .ack()
                .map(|r| r.to_string()),
            Some("OK UNSUB".into())
        );
    }

    #[test]
    fn names() {
        assert_eq!(
            Command::Sub(CodeSet::empty(), SubOptions::default()).name(),
            "SUB"
        );
        assert_eq!(
            Command::Unsub(CodeSet::empty(), SubOptions::default()).name(),
            "UNSUB"
        );
        assert_eq!(Command::Echo(true).name(), "ECHO");
        assert_eq!(Command::Info.name(), "INFO");
        assert_eq!(Command::Slow(SlowPolicy::Block).name(), "SLOW");
    }

    #[test]
    fn auth_takes_the_rest_of_the_line_as_password_and_never_shows_it() {
        let command = parse("auth alice  correct horse battery\n").unwrap();
        let Command::Auth { user, password } = &command else {
            panic!("not AUTH: {command:?}");
        };
        assert_eq!(user, "alice");
        assert_eq!(password.expose(), "correct horse battery");
        assert_eq!(command.to_string(), "AUTH alice");
        assert_eq!(command.message(), "AUTH alice correct horse battery");
        assert_eq!(parse(&command.message()), Ok(command.clone()));
        assert!(!format!("{command:?}").contains("horse"));
        assert_eq!(command.ack(), None);
        for bad in ["AUTH", "AUTH alice", "AUTH alice   "] {
            assert_eq!(
                parse(bad),
                Err(ControlError::MissingArgument { command: "AUTH" }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn durable_commands_and_replies() {
        let jobs: GroupName = "jobs".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(parse("puback ON"), Ok(Command::Puback(true)));
        assert_eq!(Command::Puback(false).to_string(), "PUBACK off");
        assert_eq!(
            Command::Puback(true).ack().map(|reply| reply.to_string()),
            Some("OK PUBACK on".to_owned())
        );
        let ack = Command::Ack {
            name: jobs.clone(),
            status: status(5),
            seq: 42,
        };
        assert_eq!(parse("ACK jobs 5 42"), Ok(ack.clone()));
        assert_eq!(parse(&ack.to_string()), Ok(ack.clone()));
        assert_eq!(ack.ack(), None);
        assert_eq!(
            parse("ACK jobs 5"),
            Err(ControlError::MissingArgument { command: "ACK" })
        );
        assert_eq!(
            parse("ACK jobs 5-6 1"),
            Err(ControlError::BadCode {
                token: "5-6".into()
            })
        );
        assert_eq!(
            parse("ACK jobs 2 1"),
            Err(ControlError::ReservedCode { code: 2 })
        );
        assert_eq!(
            parse("ACK jobs 5 x"),
            Err(ControlError::BadSequence { seq: "x".into() })
        );
        assert_eq!(
            parse("ACK jobs 5 18446744073709551615"),
            Err(ControlError::BadSequence {
                seq: "18446744073709551615".into()
            })
        );
        assert_eq!(
            parse("ACK jobs 5 1 2"),
            Err(ControlError::UnexpectedArgument {
                command: "ACK",
                argument: "2".into()
            })
        );
        assert_eq!(
            parse("SUB 5 durable=jobs from=all"),
            Ok(Command::Sub(
                set(&[5]),
                SubOptions::durable(jobs.clone(), Some(StartAt::All))
            ))
        );
        let deleting = SubOptions {
            delete: true,
            ..SubOptions::durable(jobs.clone(), None)
        };
        let delete = Command::Unsub(set(&[5, 6]), deleting.clone());
        assert_eq!(
            parse("unsub 5,6 delete=YES durable=jobs"),
            Ok(delete.clone())
        );
        assert_eq!(delete.to_string(), "UNSUB 5-6 durable=jobs delete=yes");
        assert_eq!(parse(&delete.message()), Ok(delete.clone()));
        let reply = delete.ack().unwrap_or_else(|| Reply::Err(String::new()));
        assert_eq!(reply.to_string(), "OK UNSUB 5-6 durable=jobs delete=yes");
        assert_eq!(
            Reply::parse(b"OK UNSUB 5-6 durable=jobs delete=yes"),
            Ok(reply)
        );
        assert_eq!(
            parse("SUB 5 durable=jobs delete=yes"),
            Err(ControlError::DeleteOnSub)
        );
        assert_eq!(
            parse("UNSUB 5 delete=yes"),
            Err(ControlError::DeleteWithoutDurable)
        );
        assert_eq!(
            parse("UNSUB 5 durable=jobs delete=no"),
            Err(ControlError::BadDelete { value: "no".into() })
        );
        for (reply, text) in [
            (Reply::Puback(true), "OK PUBACK on"),
            (
                Reply::Stored {
                    status: status(5),
                    seq: 7,
                },
                "OK STORED 5 7",
            ),
            (
                Reply::Msg {
                    name: jobs.clone(),
                    status: status(126),
                    seq: 1,
                },
                "MSG jobs 126 1",
            ),
            (
                Reply::Sub(set(&[5]), SubOptions::durable(jobs.clone(), None)),
                "OK SUB 5 durable=jobs",
            ),
        ] {
            assert_eq!(reply.to_string(), text);
            assert_eq!(Reply::parse(text.as_bytes()), Ok(reply), "{text}");
        }
        for bad in [
            "OK STORED 5",
            "OK STORED 05 7",
            "OK STORED 2 7",
            "MSG jobs 5",
            "MSG a*b 5 1",
        ] {
            assert!(Reply::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_reasons() {
        let cases: [(ControlError, &str); 13] = [
            (ControlError::NotText, "command is not ascii text"),
            (ControlError::Empty, "empty command"),
            (
                ControlError::Unknown {
                    command: "PUB".into(),
                },
                "unknown command \"PUB\"",
            ),
            (
                ControlError::MissingArgument { command: "SUB" },
                "missing argument to SUB",
            ),
            (
                ControlError::UnexpectedArgument {
                    command: "INFO",
                    argument: "x".into(),
                },
                "unexpected argument \"x\" to INFO",
            ),
            (
                ControlError::BadCode {
                    token: "x\u{1}".into(),
                },
                "bad code \"x\\u{1}\"",
            ),
            (ControlError::ReservedCode { code: 2 }, "reserved code 2"),
            (
                ControlError::CodeOutOfRange { code: "300".into() },
                "code 300 out of range 0-127",
            ),
            (
                ControlError::ReversedRange { start: 7, end: 5 },
                "reversed range 7-5",
            ),
            (ControlError::EmptyList, "empty code list"),
            (
                ControlError::BadOnOff {
                    command: "ECHO",
                    argument: "yes".into(),
                },
                "echo takes on or off, not \"yes\"",
            ),
            (
                ControlError::BadSlowArgument {
                    argument: "fast".into(),
                },
                "slow takes block, drop or disconnect, not \"fast\"",
            ),
            (
                ControlError::CarriesFiles { count: 1 },
                "control frame carries 1 files",
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(error.to_string(), reason);
        }
    }

    /// Tokens close to the grammar, so random lists reach deep into the parser.
    fn near_grammar() -> impl Strategy<Value = String> {
        let token = prop::sample::select(vec![
            "SUB",
            "unsub",
            "ECHO",
            "on",
            "OFF",
            "INFO",
            "SLOW",
            "drop",
            "*",
            "-",
            ",",
            " ",
            "\n",
            "0",
            "1",
            "2",
            "5",
            "126",
            "127",
            "128",
            "1-3",
            "7-5",
            "4-9",
            "x",
            "99999999999999999999",
        ]);
        prop::collection::vec(token, 0..8).prop_map(|tokens| tokens.concat())
    }

    #[test]
    fn control_bytes_are_clipped_by_their_escaped_length() {
        // Found by `arbitrary_ascii_never_panics`: 32 control bytes escape to 192 characters.
        let mut bytes = b"x".to_vec();
        bytes.extend([0x10; 40]);
        let error = Command::parse(&bytes).unwrap_err();
        assert!(err_reply(error).message.len() < 128);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Err(error) = Command::parse(&bytes) {
                prop_assert!(!error.to_string().is_empty());
            }
        }

        #[test]
        fn arbitrary_ascii_never_panics(bytes in prop::collection::vec(0u8..128, 0..64)) {
            if let Err(error) = Command::parse(&bytes) {
                prop_assert!(err_reply(error).message.len() < 128);
            }
        }

        #[test]
        fn near_grammar_never_panics(text in near_grammar()) {
            match parse(&text) {
                Ok(command) => {
                    let ack = command.ack();
                    prop_assert_eq!(ack.is_some(), command != Command::Info);
                }
                Err(error) => prop_assert!(err_reply(error).message.starts_with(b"ERR ")),
            }
        }

        #[test]
        fn replies_round_trip(bits in any::<u128>(), reason in "[ -~]{1,40}", user in "[!-~]{1,20}") {
            let set = CodeSet::from_bits(bits).intersection(CodeSet::relayable());
            for reply in [
                Reply::Sub(set, SubOptions::default()),
                Reply::Unsub(set, SubOptions::default()),
                Reply::Err(reason.clone()),
                Reply::Auth(user.clone()),
            ] {
                let text = reply.to_string();
                prop_assert_eq!(Reply::parse(text.as_bytes()), Ok(reply));
            }
        }

        #[test]
        fn arbitrary_replies_never_panic_and_print_back(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            match Reply::parse(&bytes) {
                // INFO's JSON prints back as the same value, not always the same text.
                Ok(Reply::Info(info)) => {
                    let reply = Reply::Info(info);
                    prop_assert_eq!(Reply::parse(reply.to_string().as_bytes()), Ok(reply));
                }
                Ok(reply) => prop_assert_eq!(reply.to_string().into_bytes(), bytes),
                Err(error) => prop_assert!(!error.to_string().is_empty()),
            }
        }

        #[test]
        fn display_round_trips(bits in any::<u128>()) {
            let set = CodeSet::from_bits(bits).intersection(CodeSet::relayable());
            prop_assume!(!set.is_empty());
            prop_assert_eq!(set.to_string().parse::<CodeSet>(), Ok(set));
            prop_assert_eq!(parse(&Command::Sub(set, SubOptions::default()).to_string()), Ok(Command::Sub(set, SubOptions::default())));
            prop_assert_eq!(set.iter().count(), set.len());
        }

        #[test]
        fn display_is_normalized(bits in any::<u128>()) {
            let set = CodeSet::from_bits(bits);
            let text = set.to_string();
            // Every item's neighbours are absent: runs are maximal and items ascend.
            let mut last_end: Option<u8> = None;
            for item in text.split(',').filter(|item| !item.is_empty()) {
                let (start, end) = match item.split_once('-') {
                    Some((a, b)) => (a.parse::<u8>(), b.parse::<u8>()),
                    None => (item.parse::<u8>(), item.parse::<u8>()),
                };
                let (start, end) = (start.unwrap_or(255), end.unwrap_or(255));
                prop_assert!(start <= end && end <= 127);
                if let Some(last) = last_end {
                    prop_assert!(start > last.saturating_add(1));
                }
                last_end = Some(end);
            }
            let reparsed: CodeSet = text
                .split(',')
                .filter(|item| !item.is_empty())
                .flat_map(|item| {
                    let (a, b) = item.split_once('-').unwrap_or((item, item));
                    let (a, b) = (a.parse::<u8>().unwrap_or(0), b.parse::<u8>().unwrap_or(0));
                    (a..=b).filter_map(Status::new)
                })
                .collect();
            prop_assert_eq!(reparsed, set);
        }
    }
}
