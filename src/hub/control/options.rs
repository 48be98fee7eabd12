//! The options after a `SUB`/`UNSUB` code list: `key=value` words, one match arm per key in
//! [`SubOptions::parse`]: `group=<name>` ([`GroupName`]), `durable=<name>` (the same names),
//! `from=<start>` ([`StartAt`]) and `delete=yes`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{clip, ControlError};

/// The longest group name, in characters.
pub const MAX_GROUP_NAME: usize = 32;

/// A queue group's name: 1 to [`MAX_GROUP_NAME`] characters of `[A-Za-z0-9_.-]`,
/// case-sensitive. Cheap to clone (shared).
///
/// # Examples
/// ```
/// use tej_hub::hub::control::GroupName;
/// let name: GroupName = "scan-2.eu_west".parse().unwrap();
/// assert_eq!(name.as_str(), "scan-2.eu_west");
/// assert!("a b".parse::<GroupName>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(Arc<str>);

impl GroupName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a group name.
///
/// # Errors
/// [`ControlError::EmptyGroupName`], [`ControlError::GroupNameTooLong`] or
/// [`ControlError::BadGroupName`].
impl FromStr for GroupName {
    type Err = ControlError;

    fn from_str(name: &str) -> Result<GroupName, ControlError> {
        if name.is_empty() {
            return Err(ControlError::EmptyGroupName);
        }
        let len = name.chars().count();
        if len > MAX_GROUP_NAME {
            return Err(ControlError::GroupNameTooLong {
                len,
                max: MAX_GROUP_NAME,
            });
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(ControlError::BadGroupName { name: clip(name) });
        }
        Ok(GroupName(Arc::from(name)))
    }
}

impl serde::Serialize for GroupName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for GroupName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<GroupName, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The options of a `SUB` or `UNSUB`: the `key=value` words after its code list. Each key may
/// appear once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubOptions {
    /// `group=<name>`: join (`SUB`) or leave (`UNSUB`) this queue group for the codes instead of
    /// subscribing to them as an ordinary subscriber.
    pub group: Option<GroupName>,
    /// `durable=<name>`: the subscription is the named durable cursor over the codes' stored
    /// frames (`SUB`), or detaches from it (`UNSUB`; the cursor stays).
    pub durable: Option<GroupName>,
    /// `from=<start>`: where a new durable cursor starts (only with `durable=`).
    pub from: Option<StartAt>,
    /// `delete=yes`: `UNSUB` forgets the durable cursor on the codes for good (only with
    /// `durable=`; `SUB` refuses it). `yes` is the only value, so that a typo never deletes.
    pub delete: bool,
}

/// Where a new durable cursor starts (`from=`): `new`, `all`, `last`, `seq:<n>` or
/// `time:<RFC 3339>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// Frames stored from now on (the default).
    New,
    /// Every frame kept.
    All,
    /// The newest frame kept, then what follows.
    Last,
    /// The frame with this sequence number (or the first kept after it).
    Seq(u64),
    /// The first frame stored at or after this time.
    Time(SystemTime),
}

/// Parses `new`, `all`, `last`, `seq:<n>` or `time:<RFC 3339>` (words case-insensitive).
///
/// # Errors
/// [`ControlError::BadStart`] for anything else.
impl FromStr for StartAt {
    type Err = ControlError;

    fn from_str(text: &str) -> Result<StartAt, ControlError> {
        let bad = || ControlError::BadStart { value: clip(text) };
        let (word, argument) = match text.split_once(':') {
            Some((word, argument)) => (word, Some(argument)),
            None => (text, None),
        };
        let is = |name: &str| word.eq_ignore_ascii_case(name);
        match argument {
            None if is("new") => Ok(StartAt::New),
            None if is("all") => Ok(StartAt::All),
            None if is("last") => Ok(StartAt::Last),
            Some(seq)
                if is("seq") && !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) =>
            {
                seq.parse().map(StartAt::Seq).map_err(|_| bad())
            }
            Some(time) if is("time") => humantime::parse_rfc3339_weak(time)
                .map(StartAt::Time)
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// `new`, `all`, `last`, `seq:<n>` or `time:<RFC 3339, UTC>` (to the second when whole).
impl fmt::Display for StartAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartAt::New => f.write_str("new"),
            StartAt::All => f.write_str("all"),
            StartAt::Last => f.write_str("last"),
            StartAt::Seq(seq) => write!(f, "seq:{seq}"),
            StartAt::Time(time) => {
                let whole = time
                    .duration_since(UNIX_EPOCH)
                    .is_ok_and(|since| since.subsec_nanos() == 0);
                if whole {
                    write!(f, "time:{}", humantime::format_rfc3339_seconds(*time))
                } else {
                    write!(f, "time:{}", humantime::format_rfc3339_nanos(*time))
                }
            }
        }
    }
}

impl StartAt {
    /// The start `at` seconds after the Unix epoch (for tests and clients building commands).
    pub fn at_unix(seconds: u64) -> StartAt {
        StartAt::Time(UNIX_EPOCH + Duration::from_secs(seconds))
    }
}

impl SubOptions {
    /// Options in a group: `group=<name>`.
    pub fn group(name: GroupName) -> SubOptions {
        SubOptions {
            group: Some(name),
            ..SubOptions::default()
        }
    }

    /// Options of a durable subscription: `durable=<name>`, and `from=<start>` if given.
    pub fn durable(name: GroupName, from: Option<StartAt>) -> SubOptions {
        SubOptions {
            durable: Some(name),
            from,
            ..SubOptions::default()
        }
    }

    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.group.is_none() && self.durable.is_none() && self.from.is_none() && !self.delete
    }

    /// Parses the option words (already split on whitespace), in any order.
    ///
    /// # Errors
    /// [`ControlError::BadOption`] for a word without `=`, [`ControlError::UnknownOption`] for an
    /// unknown key (keys are case-insensitive), [`ControlError::DuplicateOption`] for a key given
    /// twice, the value's own errors (a bad group name), [`ControlError::StartWithoutDurable`]
    /// and [`ControlError::DeleteWithoutDurable`] for `from=` or `delete=` without `durable=`.
    pub fn parse<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<SubOptions, ControlError> {
        let mut options = SubOptions::default();
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| ControlError::BadOption { word: clip(word) })?;
            if key.eq_ignore_ascii_case("group") {
                if options.group.is_some() {
                    return Err(ControlError::DuplicateOption { key: "group" });
                }
                options.group = Some(value.parse()?);
            } else if key.eq_ignore_ascii_case("durable") {
                if options.durable.is_some() {
                    return Err(ControlError::DuplicateOption { key: "durable" });
                }
                options.durable = Some(value.parse()?);
            } else if key.eq_ignore_ascii_case("from") {
                if options.from.is_some() {
                    return Err(ControlError::DuplicateOption { key: "from" });
                }
                options.from = Some(value.parse()?);
            } else if key.eq_ignore_ascii_case("delete") {
                if options.delete {
                    return Err(ControlError::DuplicateOption { key: "delete" });
                }
                if !value.eq_ignore_ascii_case("yes") {
                    return Err(ControlError::BadDelete { value: clip(value) });
                }
                options.delete = true;
            } else {
                return Err(ControlError::UnknownOption { key: clip(key) });
            }
        }
        if options.from.is_some() && options.durable.is_none() {
            return Err(ControlError::StartWithoutDurable);
        }
        if options.delete && options.durable.is_none() {
            return Err(ControlError::DeleteWithoutDurable);
        }
        Ok(options)
    }
}

/// The options as they follow a code list, each with a leading space, in the order
/// `durable=`, `from=`, `group=`, `delete=`; nothing when none is set.
impl fmt::Display for SubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(durable) = &self.durable {
            write!(f, " durable={durable}")?;
        }
        if let Some(from) = &self.from {
            write!(f, " from={from}")?;
        }
        if let Some(group) = &self.group {
            write!(f, " group={group}")?;
        }
        if self.delete {
            f.write_str(" delete=yes")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names() {
        for good in ["a", "workers", "scan-2.eu_West", &"x".repeat(32)] {
            assert_eq!(
                good.parse::<GroupName>().map(|n| n.to_string()),
                Ok(good.to_owned())
            );
        }
        assert_eq!("".parse::<GroupName>(), Err(ControlError::EmptyGroupName));
        assert_eq!(
            "x".repeat(33).parse::<GroupName>(),
            Err(ControlError::GroupNameTooLong { len: 33, max: 32 })
        );
        for bad in ["a b", "a*", "é", "a/b", "a=b", "a\u{1}"] {
            assert!(
                matches!(
                    bad.parse::<GroupName>(),
                    Err(ControlError::BadGroupName { .. })
                ),
                "{bad:?}"
            );
        }
        assert_ne!("W".parse::<GroupName>(), "w".parse::<GroupName>());
    }

    #[test]
    fn options() {
        assert_eq!(SubOptions::parse([]), Ok(SubOptions::default()));
        let workers = SubOptions::group("workers".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(SubOptions::parse(["GROUP=workers"]), Ok(workers.clone()));
        assert_eq!(workers.to_string(), " group=workers");
        assert_eq!(
            SubOptions::parse(["group=a", "group=b"]),
            Err(ControlError::DuplicateOption { key: "group" })
        );
        assert_eq!(
            SubOptions::parse(["colour=red"]),
            Err(ControlError::UnknownOption {
                key: "colour".into()
            })
        );
        assert_eq!(
            SubOptions::parse(["group"]),
            Err(ControlError::BadOption {
                word: "group".into()
            })
        );
        assert_eq!(
            SubOptions::parse(["group="]),
            Err(ControlError::EmptyGroupName)
        );
    }

    #[test]
    fn durable_options() {
        let name = |text: &str| text.parse::<GroupName>().unwrap_or_else(|_| unreachable!());
        let parsed = SubOptions::parse(["from=SEQ:17", "Durable=jobs"]);
        assert_eq!(
            parsed,
            Ok(SubOptions::durable(name("jobs"), Some(StartAt::Seq(17))))
        );
        assert_eq!(
            parsed.map(|options| options.to_string()),
            Ok(" durable=jobs from=seq:17".to_owned())
        );
        for (text, start) in [
            ("new", StartAt::New),
            ("all", StartAt::All),
            ("LAST", StartAt::Last),
            ("time:2026-12-07T10:00:00Z", StartAt::at_unix(1_796_637_600)),
        ] {
            assert_eq!(text.parse(), Ok(start), "{text}");
            assert_eq!(start.to_string().parse(), Ok(start), "{text}");
        }
        for bad in [
            "",
            "seq:",
            "seq:-1",
            "seq:99999999999999999999",
            "time:yesterday",
            "old",
        ] {
            assert!(
                matches!(bad.parse::<StartAt>(), Err(ControlError::BadStart { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            SubOptions::parse(["from=all"]),
            Err(ControlError::StartWithoutDurable)
        );
        assert_eq!(
            SubOptions::parse(["durable=a", "durable=b"]),
            Err(ControlError::DuplicateOption { key: "durable" })
        );
    }

    #[test]
    fn delete_options() {
        let name = |text: &str| text.parse::<GroupName>().unwrap_or_else(|_| unreachable!());
        let deleting = SubOptions {
            delete: true,
            ..SubOptions::durable(name("gone"), None)
        };
        assert_eq!(
            SubOptions::parse(["DELETE=Yes", "durable=gone"]),
            Ok(deleting.clone())
        );
        assert_eq!(deleting.to_string(), " durable=gone delete=yes");
        assert!(!deleting.is_empty());
        for bad in ["no", "", "true", "yes!"] {
            assert!(
                matches!(
                    SubOptions::parse(["durable=gone", &format!("delete={bad}")]),
                    Err(ControlError::BadDelete { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            SubOptions::parse(["delete=yes"]),
            Err(ControlError::DeleteWithoutDurable)
        );
        assert_eq!(
            SubOptions::parse(["group=g", "delete=yes"]),
            Err(ControlError::DeleteWithoutDurable)
        );
        assert_eq!(
            SubOptions::parse(["durable=gone", "delete=yes", "delete=yes"]),
            Err(ControlError::DuplicateOption { key: "delete" })
        );
    }
}
