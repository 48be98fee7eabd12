//! What hubs say to each other through NATS: the subjects, and the small text messages and
//! headers that carry interest, acknowledgements, credit and relayed pieces (docs/cluster.md).
//!
//! Every hub instance has a random 64-bit id (a restarted hub is a new instance). Subjects, with
//! `P` the cluster prefix:
//! - `P.data.<code>`: a relayed piece, its bytes as the payload (the frames' exact wire bytes),
//!   described by the [`DATA_HEADER`] header, and at a frame's start by the [`GROUPS_HEADER`]
//!   when queue groups on other hubs are to take it ([`GroupChoices`]); `P.data.gone`: a
//!   publisher's end.
//! - `P.hubs`: [`Announcement`]s (interest, heartbeats, hello, leave); acknowledged on
//!   `P.ack.<instance>`.
//! - `P.credit.<instance>`: [`Credit`] to an origin hub: how far its stream has been delivered.
//!
//! The items are `pub` for the fuzz targets (src/fuzzing.rs compiles this file too); the module
//! itself is private to the cluster.

use std::fmt;

use crate::frame::Status;
use crate::hub::control::{CodeSet, GroupName};
// Relative, so that src/fuzzing.rs can compile this file beside its own copy of relay.rs.
use super::super::delivery::relay::PieceKind;

/// The header describing a relayed piece.
pub const DATA_HEADER: &str = "Tej";

/// The header naming, per queue group, the hub chosen to give a frame to one of its members.
pub const GROUPS_HEADER: &str = "Tej-Groups";

/// The most queue groups one announcement lists, and one frame's [`GroupChoices`] names: a hub
/// with more announces the first ones by name (their frames elsewhere then stay with the other
/// hubs' members), so an announcement stays under about 4 KiB.
pub const MAX_GROUPS: usize = 64;

/// A message from another hub that cannot be read (another version, or not a hub at all).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// A field is missing or does not parse.
    #[error("malformed {what}: {text:?}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// Its text, clipped.
        text: String,
    },
}

fn malformed(what: &'static str, text: &str) -> WireError {
    WireError::Malformed {
        what,
        text: text.chars().take(120).collect(),
    }
}

/// The subjects of one cluster prefix and one hub instance.
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// The subjects under `prefix`.
    pub fn new(prefix: &str) -> Subjects {
        Subjects {
            prefix: prefix.to_owned(),
        }
    }

    /// Where pieces of `status` are published.
    pub fn data(&self, status: Status) -> String {
        format!("{}.data.{}", self.prefix, status.code())
    }

    /// Where a publisher's end is published.
    pub fn gone(&self) -> String {
        format!("{}.data.gone", self.prefix)
    }

    /// Every relayed piece, whatever its code (one subscription keeps one origin's order).
    pub fn all_data(&self) -> String {
        format!("{}.data.>", self.prefix)
    }

    /// The code of a data subject; `None` for `gone`.
    pub fn code_of(&self, subject: &str) -> Option<Status> {
        let code: u8 = subject.rsplit('.').next()?.parse().ok()?;
        Status::new(code)
    }

    /// Announcements.
    pub fn hubs(&self) -> String {
        format!("{}.hubs", self.prefix)
    }

    /// Where `instance` takes acknowledgements of its announcements.
    pub fn ack(&self, instance: u64) -> String {
        format!("{}.ack.{instance:016x}", self.prefix)
    }

    /// Where `instance` takes credit for its stream.
    pub fn credit(&self, instance: u64) -> String {
        format!("{}.credit.{instance:016x}", self.prefix)
    }
}

/// What an announcement is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A hub (re)joins: everybody answers with an announcement of their own.
    Hello,
    /// Its interest changed.
    Change,
    /// Still here (periodic).
    Beat,
    /// An answer to a hello.
    Answer,
    /// It is going away: forget it now.
    Leave,
}

impl Purpose {
    fn letter(self) -> char {
        match self {
            Purpose::Hello => 'h',
            Purpose::Change => 'c',
            Purpose::Beat => 'b',
            Purpose::Answer => 'a',
            Purpose::Leave => 'l',
        }
    }

    fn from_letter(letter: &str) -> Option<Purpose> {
        Some(match letter {
            "h" => Purpose::Hello,
            "c" => Purpose::Change,
            "b" => Purpose::Beat,
            "a" => Purpose::Answer,
            "l" => Purpose::Leave,
            _ => return None,
        })
    }
}

/// One queue group of a hub, as it announces it: its members there, the codes they take and
/// their queued bytes. Text: `<name>:<codes>:<members>:<load>` (hex code bits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnouncedGroup {
    /// The group.
    pub name: GroupName,
    /// The codes its members on the hub take.
    pub codes: CodeSet,
    /// How many sessions of the hub are members.
    pub members: u32,
    /// The bytes queued for those members, summed (refreshed while it changes).
    pub load: u64,
}

impl fmt::Display for AnnouncedGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{:x}:{}:{}",
            self.name,
            self.codes.bits(),
            self.members,
            self.load
        )
    }
}

impl AnnouncedGroup {
    fn parse(text: &str) -> Option<AnnouncedGroup> {
        let mut fields = text.split(':');
        let group = AnnouncedGroup {
            name: fields.next()?.parse().ok()?,
            codes: CodeSet::from_bits(u128::from_str_radix(fields.next()?, 16).ok()?),
            members: fields.next()?.parse().ok()?,
            load: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(group)
    }
}

/// A hub's interest: the codes its local subscribers want, at an interest version, and its
/// queue groups. Text: `<instance> <version> <purpose> <codes> <name>[ <groups>]` (hex instance
/// and code bits; groups comma-separated [`AnnouncedGroup`]s, at most [`MAX_GROUPS`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The hub instance.
    pub instance: u64,
    /// Its interest version (grows by one per change).
    pub version: u64,
    /// Why it is sent.
    pub purpose: Purpose,
    /// The codes wanted.
    pub codes: CodeSet,
    /// The hub's name.
    pub name: String,
    /// Its queue groups (membership is versioned with the interest; loads are refreshed by
    /// announcements of the same version).
    pub groups: Vec<AnnouncedGroup>,
}

impl fmt::Display for Announcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:016x} {} {} {:032x} {}",
            self.instance,
            self.version,
            self.purpose.letter(),
            self.codes.bits(),
            self.name
        )?;
        for (at, group) in self.groups.iter().take(MAX_GROUPS).enumerate() {
            let separator = if at == 0 { ' ' } else { ',' };
            write!(f, "{separator}{group}")?;
        }
        Ok(())
    }
}

impl Announcement {
    /// Reads an announcement.
    pub fn parse(text: &str) -> Result<Announcement, WireError> {
        let fail = || malformed("announcement", text);
        let mut fields = text.splitn(6, ' ');
        let mut next = || fields.next().ok_or_else(fail);
        let instance = u64::from_str_radix(next()?, 16).map_err(|_| fail())?;
        let version = next()?.parse().map_err(|_| fail())?;
        let purpose = Purpose::from_letter(next()?).ok_or_else(fail)?;
        let codes = u128::from_str_radix(next()?, 16).map_err(|_| fail())?;
        let name = next()?.to_owned();
        let mut groups = Vec::new();
        if let Some(listed) = fields.next() {
            for group in listed.split(',') {
                if groups.len() == MAX_GROUPS {
                    return Err(fail());
                }
                groups.push(AnnouncedGroup::parse(group).ok_or_else(fail)?);
            }
        }
        Ok(Announcement {
            instance,
            version,
            purpose,
            codes: CodeSet::from_bits(codes),
            name,
            groups,
        })
    }
}

/// A hub's acknowledgement of another's announcement: `<instance> <version>`. Sent once the
/// announced interest applies to the acknowledging hub's publishers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The acknowledging hub instance.
    pub instance: u64,
    /// The version acknowledged.
    pub version: u64,
}

/// Credit for an origin's stream: the receiving hub has delivered it up to `seq`, which was
/// `bytes` into the stream: `<instance> <seq> <bytes>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credit {
    /// The receiving hub instance.
    pub instance: u64,
    /// The origin's message sequence number delivered last.
    pub seq: u64,
    /// The origin's stream bytes up to and including it.
    pub bytes: u64,
}

impl fmt::Display for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x} {}", self.instance, self.version)
    }
}

impl Ack {
    /// Reads an acknowledgement.
    pub fn parse(text: &str) -> Result<Ack, WireError> {
        let fail = || malformed("ack", text);
        let (instance, version) = text.split_once(' ').ok_or_else(fail)?;
        Ok(Ack {
            instance: u64::from_str_radix(instance, 16).map_err(|_| fail())?,
            version: version.parse().map_err(|_| fail())?,
        })
    }
}

impl fmt::Display for Credit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x} {} {}", self.instance, self.seq, self.bytes)
    }
}

impl Credit {
    /// Reads a credit.
    pub fn parse(text: &str) -> Result<Credit, WireError> {
        let fail = || malformed("credit", text);
        let mut fields = text.split(' ');
        let mut next = || fields.next().ok_or_else(fail);
        Ok(Credit {
            instance: u64::from_str_radix(next()?, 16).map_err(|_| fail())?,
            seq: next()?.parse().map_err(|_| fail())?,
            bytes: next()?.parse().map_err(|_| fail())?,
        })
    }
}

/// What a relayed message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    /// A piece of frames.
    Piece(PieceKind),
    /// The publisher has ended: the frame it was streaming, if any, cannot be completed.
    Gone,
}

/// The [`DATA_HEADER`] of a relayed message:
/// `<origin> <seq> <stream bytes> <publisher> <publisher seq> <kind> <frames>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// The origin hub instance.
    pub origin: u64,
    /// The origin's message sequence number (all its relayed messages, from 1).
    pub seq: u64,
    /// The origin's stream bytes up to and including this message.
    pub stream_bytes: u64,
    /// The publishing session on the origin hub.
    pub publisher: u64,
    /// The publisher's message sequence number (from 1).
    pub publisher_seq: u64,
    /// What the message carries.
    pub carried: Carried,
    /// Frames ending in it.
    pub frames: u32,
}

impl fmt::Display for DataHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.carried {
            Carried::Piece(PieceKind::Whole) => 'W',
            Carried::Piece(PieceKind::First) => 'F',
            Carried::Piece(PieceKind::Middle) => 'M',
            Carried::Piece(PieceKind::Last) => 'L',
            Carried::Gone => 'G',
        };
        write!(
            f,
            "{:016x} {} {} {} {} {kind} {}",
            self.origin,
            self.seq,
            self.stream_bytes,
            self.publisher,
            self.publisher_seq,
            self.frames
        )
    }
}

impl DataHeader {
    /// Reads a data header.
    pub fn parse(text: &str) -> Result<DataHeader, WireError> {
        let fail = || malformed("data header", text);
        let mut fields = text.split(' ');
        let mut next = || fields.next().ok_or_else(fail);
        let origin = u64::from_str_radix(next()?, 16).map_err(|_| fail())?;
        let mut number = || -> Result<u64, WireError> { next()?.parse().map_err(|_| fail()) };
        let (seq, stream_bytes, publisher, publisher_seq) =
            (number()?, number()?, number()?, number()?);
        let carried = match next()? {
            "W" => Carried::Piece(PieceKind::Whole),
            "F" => Carried::Piece(PieceKind::First),
            "M" => Carried::Piece(PieceKind::Middle),
            "L" => Carried::Piece(PieceKind::Last),
            "G" => Carried::Gone,
            _ => return Err(fail()),
        };
        let frames = next()?.parse().map_err(|_| fail())?;
        Ok(DataHeader {
            origin,
            seq,
            stream_bytes,
            publisher,
            publisher_seq,
            carried,
            frames,
        })
    }
}

/// Per queue group, the hub chosen to give a frame to one of its members (docs/cluster.md,
/// "Queue groups across hubs"): the [`GROUPS_HEADER`] of a frame's first message. Text:
/// `<o|r> <group>=<instance> ...` (hex instance, at most [`MAX_GROUPS`] choices); `r` marks a
/// re-dispatch, which only the groups named take and which is never re-dispatched again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupChoices {
    /// Whether the frame is sent again by a chosen hub that had no member left.
    pub redispatch: bool,
    /// The groups and the hub instance chosen for each.
    pub choices: Vec<(GroupName, u64)>,
}

impl GroupChoices {
    /// The hub chosen for group `name`, if any.
    pub fn chosen(&self, name: &GroupName) -> Option<u64> {
        self.choices
            .iter()
            .find(|(group, _)| group == name)
            .map(|(_, instance)| *instance)
    }

    /// Reads a groups header.
    pub fn parse(text: &str) -> Result<GroupChoices, WireError> {
        let fail = || malformed("groups header", text);
        let mut fields = text.split(' ');
        let redispatch = match fields.next() {
            Some("o") => false,
            Some("r") => true,
            _ => return Err(fail()),
        };
        let mut choices = Vec::new();
        for field in fields {
            if choices.len() == MAX_GROUPS {
                return Err(fail());
            }
            let (name, instance) = field.split_once('=').ok_or_else(fail)?;
            let name: GroupName = name.parse().map_err(|_| fail())?;
            let instance = u64::from_str_radix(instance, 16).map_err(|_| fail())?;
            choices.push((name, instance));
        }
        Ok(GroupChoices {
            redispatch,
            choices,
        })
    }
}

impl fmt::Display for GroupChoices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.redispatch { "r" } else { "o" })?;
        for (name, instance) in self.choices.iter().take(MAX_GROUPS) {
            write!(f, " {name}={instance:016x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_as_written() {
        let announcement = Announcement {
            instance: 0xfeed,
            version: 7,
            purpose: Purpose::Change,
            codes: CodeSet::from_bits(1 << 5 | 1 << 127),
            name: "a:8000".into(),
            groups: Vec::new(),
        };
        assert_eq!(
            Announcement::parse(&announcement.to_string()),
            Ok(announcement.clone())
        );
        let announcement = Announcement {
            groups: vec![
                AnnouncedGroup {
                    name: "scan-2.eu_west".parse().unwrap(),
                    codes: CodeSet::from_bits(1 << 5),
                    members: 2,
                    load: 1 << 40,
                },
                AnnouncedGroup {
                    name: "w".parse().unwrap(),
                    codes: CodeSet::from_bits(1 << 127),
                    members: 1,
                    load: 0,
                },
            ],
            ..announcement
        };
        assert_eq!(
            Announcement::parse(&announcement.to_string()),
            Ok(announcement)
        );
        let ack = Ack {
            instance: 3,
            version: 9,
        };
        assert_eq!(Ack::parse(&ack.to_string()), Ok(ack));
        let credit = Credit {
            instance: u64::MAX,
            seq: 1,
            bytes: 2,
        };
        assert_eq!(Credit::parse(&credit.to_string()), Ok(credit));
        for carried in [
            Carried::Piece(PieceKind::Whole),
            Carried::Piece(PieceKind::First),
            Carried::Piece(PieceKind::Middle),
            Carried::Piece(PieceKind::Last),
            Carried::Gone,
        ] {
            let header = DataHeader {
                origin: 1 << 63,
                seq: 10,
                stream_bytes: 1 << 40,
                publisher: 4,
                publisher_seq: 2,
                carried,
                frames: 3,
            };
            assert_eq!(DataHeader::parse(&header.to_string()), Ok(header));
        }
    }

    #[test]
    fn garbage_is_a_typed_error() {
        for text in ["", "zz 1 c 0 a", "1 1 x 0 a", "1 1 c 0"] {
            assert!(Announcement::parse(text).is_err(), "{text:?}");
        }
        for text in [
            "1 1 c 0 a g:20:1",
            "1 1 c 0 a g:20:1:0:9",
            "1 1 c 0 a b*d:20:1:0",
            "1 1 c 0 a g:20:1:0,",
        ] {
            assert!(Announcement::parse(text).is_err(), "{text:?}");
        }
        let many = vec!["g:20:1:0"; MAX_GROUPS + 1].join(",");
        assert!(Announcement::parse(&format!("1 1 c 0 a {many}")).is_err());
        for text in ["", "x", "o g", "o g=zz", "o a b=1", "r =1"] {
            assert!(GroupChoices::parse(text).is_err(), "{text:?}");
        }
        assert!(DataHeader::parse("1 2 3 4 5 Q 0").is_err());
        assert!(Credit::parse("1 2").is_err());
        assert!(Ack::parse("1").is_err());
    }

    #[test]
    fn group_choices_read_back_as_written() {
        for redispatch in [false, true] {
            let choices = GroupChoices {
                redispatch,
                choices: vec![
                    ("workers".parse().unwrap(), u64::MAX),
                    ("scan".parse().unwrap(), 1),
                ],
            };
            assert_eq!(
                GroupChoices::parse(&choices.to_string()),
                Ok(choices.clone())
            );
            assert_eq!(choices.chosen(&"scan".parse().unwrap()), Some(1));
            assert_eq!(choices.chosen(&"nobody".parse().unwrap()), None);
        }
        assert_eq!(GroupChoices::parse("o"), Ok(GroupChoices::default()));
    }

    #[test]
    fn data_subjects_name_their_code() {
        let subjects = Subjects::new("tej");
        let status = Status::new(42).unwrap();
        assert_eq!(subjects.code_of(&subjects.data(status)), Some(status));
        assert_eq!(subjects.code_of(&subjects.gone()), None);
    }
}
