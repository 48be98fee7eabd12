//! The cluster's message texts (src/hub/cluster/messages.rs) over arbitrary bytes: what another hub,
//! or anything else able to publish on the cluster's NATS subjects, may send.
//!
//! Asserts: parsing never panics; lists of queue groups stay within `MAX_GROUPS`; whatever
//! parses prints back to a text that parses to the same value; a data subject names a relayable-range code or none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tej_hub::fuzzing::cluster::messages::{
    Ack, Announcement, Credit, DataHeader, GroupChoices, Subjects, MAX_GROUPS,
};

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    if let Ok(announcement) = Announcement::parse(&text) {
        let printed = announcement.to_string();
        assert!(announcement.groups.len() <= MAX_GROUPS);
        assert_eq!(Announcement::parse(&printed), Ok(announcement), "{printed:?}");
    }
    if let Ok(ack) = Ack::parse(&text) {
        assert_eq!(Ack::parse(&ack.to_string()), Ok(ack));
    }
    if let Ok(credit) = Credit::parse(&text) {
        assert_eq!(Credit::parse(&credit.to_string()), Ok(credit));
    }
    if let Ok(header) = DataHeader::parse(&text) {
        assert_eq!(DataHeader::parse(&header.to_string()), Ok(header));
    }
    if let Ok(choices) = GroupChoices::parse(&text) {
        assert!(choices.choices.len() <= MAX_GROUPS);
        assert_eq!(GroupChoices::parse(&choices.to_string()), Ok(choices));
    }
    if let Some(status) = Subjects::new("tej").code_of(&text) {
        assert!(status.code() <= 127);
    }
});
