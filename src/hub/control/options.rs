//! The options after a `SUB`/`UNSUB` code list: `key=value` words, one match arm per key in
//! [`SubOptions::parse`]. Today one key, `group=<name>` ([`GroupName`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

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
}

impl SubOptions {
    /// Options in a group: `group=<name>`.
    pub fn group(name: GroupName) -> SubOptions {
        SubOptions { group: Some(name) }
    }

    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.group.is_none()
    }

    /// Parses the option words (already split on whitespace), in any order.
    ///
    /// # Errors
    /// [`ControlError::BadOption`] for a word without `=`, [`ControlError::UnknownOption`] for an
    /// unknown key (keys are case-insensitive), [`ControlError::DuplicateOption`] for a key given
    /// twice, and the value's own errors (a bad group name).
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
            } else {
                return Err(ControlError::UnknownOption { key: clip(key) });
            }
        }
        Ok(options)
    }
}

/// The options as they follow a code list: ` group=<name>`, or nothing.
impl fmt::Display for SubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(group) = &self.group {
            write!(f, " group={group}")?;
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
}
