//! [`Peers`]: the other hubs this one sees — their interest, what they acknowledged, the credit
//! they gave — kept by the link task, read by the router's waits and the outbound task.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::frame::Status;
use crate::hub::cluster::messages::{AnnouncedGroup, Announcement};
use crate::hub::control::{CodeSet, GroupName};

/// Another hub with members of a group on a code, as the choice sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RemoteHub {
    /// The hub instance.
    pub instance: u64,
    /// Its members of the group.
    pub members: u32,
    /// The bytes queued for them, as last announced.
    pub load: u64,
}

/// Per code, the groups other hubs have members of, and those hubs: what a publisher reads to
/// choose a hub for a frame no local member takes.
#[derive(Debug)]
pub(crate) struct RemoteGroups {
    codes: Vec<Vec<(GroupName, Vec<RemoteHub>)>>,
}

impl Default for RemoteGroups {
    fn default() -> RemoteGroups {
        RemoteGroups {
            codes: vec![Vec::new(); Status::COUNT],
        }
    }
}

impl RemoteGroups {
    /// The groups with members on other hubs for `status`, and those hubs.
    pub(crate) fn of(&self, status: Status) -> &[(GroupName, Vec<RemoteHub>)] {
        self.codes
            .get(usize::from(status.code()))
            .map_or(&[], Vec::as_slice)
    }

    /// The codes some group on another hub takes.
    pub(crate) fn codes(&self) -> CodeSet {
        let bits = self
            .codes
            .iter()
            .enumerate()
            .filter(|(_, groups)| !groups.is_empty())
            .fold(0u128, |bits, (code, _)| bits | 1 << code);
        CodeSet::from_bits(bits)
    }
}

/// One other hub instance.
#[derive(Debug)]
struct Peer {
    name: String,
    codes: CodeSet,
    /// Its queue groups, as last announced.
    groups: Vec<AnnouncedGroup>,
    last_seen: Instant,
    /// The highest of this hub's interest versions it acknowledged.
    acked: u64,
    /// How far into this hub's stream it has delivered (message sequence, stream bytes).
    credit: (u64, u64),
}

/// What [`Peers::announced`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The hub was not known before.
    pub new: bool,
    /// Earlier instances of the same name, forgotten now (the hub restarted).
    pub replaced: Vec<u64>,
}

/// A hub forgotten because it went silent: its subscribers may still be there, cut off.
#[derive(Debug)]
struct Ghost {
    name: String,
    codes: CodeSet,
    since: Instant,
}

/// The other hubs, by instance.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    hubs: HashMap<u64, Peer>,
    /// Hubs gone silent, remembered a while so that what their subscribers miss is counted.
    ghosts: HashMap<u64, Ghost>,
}

impl Peers {
    /// How many other hubs are seen.
    pub(crate) fn len(&self) -> usize {
        self.hubs.len()
    }

    /// Their names, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.hubs.values().map(|peer| peer.name.clone()).collect();
        names.sort();
        names
    }

    /// The codes any of them wants.
    pub(crate) fn codes(&self) -> CodeSet {
        self.hubs
            .values()
            .fold(CodeSet::empty(), |codes, peer| codes.union(peer.codes))
    }

    /// Records an announcement of another hub. A hub seen for the first time starts with credit
    /// at `position` (this hub's stream so far: it cannot have received any of it).
    pub(crate) fn announced(
        &mut self,
        announcement: &Announcement,
        now: Instant,
        position: (u64, u64),
    ) -> Seen {
        let replaced: Vec<u64> = self
            .hubs
            .iter()
            .filter(|(instance, peer)| {
                **instance != announcement.instance && peer.name == announcement.name
            })
            .map(|(instance, _)| *instance)
            .collect();
        for instance in &replaced {
            self.hubs.remove(instance);
        }
        self.ghosts.retain(|instance, ghost| {
            *instance != announcement.instance && ghost.name != announcement.name
        });
        let mut new = false;
        let peer = self.hubs.entry(announcement.instance).or_insert_with(|| {
            new = true;
            Peer {
                name: announcement.name.clone(),
                codes: CodeSet::empty(),
                groups: Vec::new(),
                last_seen: now,
                acked: 0,
                credit: position,
            }
        });
        peer.codes = announcement.codes;
        peer.groups.clone_from(&announcement.groups);
        peer.last_seen = now;
        Seen { new, replaced }
    }

    /// The groups the hubs seen have members of, per code.
    pub(crate) fn remote_groups(&self) -> RemoteGroups {
        let mut groups = RemoteGroups::default();
        let mut hubs: Vec<(&u64, &Peer)> = self.hubs.iter().collect();
        // A stable order, so that round-robin among equals goes round.
        hubs.sort_by_key(|(instance, _)| **instance);
        for (instance, peer) in hubs {
            for group in peer.groups.iter().filter(|group| group.members > 0) {
                let hub = RemoteHub {
                    instance: *instance,
                    members: group.members,
                    load: group.load,
                };
                for status in group.codes.iter() {
                    let listed = &mut groups.codes[usize::from(status.code())];
                    match listed.iter_mut().find(|(name, _)| *name == group.name) {
                        Some((_, hubs)) => hubs.push(hub),
                        None => listed.push((group.name.clone(), vec![hub])),
                    }
                }
            }
        }
        groups
    }

    /// The hubs seen with their groups, for monitoring: (hub name, group).
    pub(crate) fn groups(&self) -> Vec<(String, AnnouncedGroup)> {
        let mut groups: Vec<(String, AnnouncedGroup)> = self
            .hubs
            .values()
            .flat_map(|peer| {
                peer.groups
                    .iter()
                    .map(|group| (peer.name.clone(), group.clone()))
            })
            .collect();
        groups.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
        groups
    }

    /// Forgets hub `instance`; whether it was known.
    pub(crate) fn remove(&mut self, instance: u64) -> bool {
        self.hubs.remove(&instance).is_some()
    }

    /// Forgets the hubs not heard from for `silence` (remembering them as gone silent, and
    /// forgetting those gone silent longer than `memory` ago); returns them.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        silence: Duration,
        memory: Duration,
    ) -> Vec<(u64, String)> {
        self.ghosts
            .retain(|_, ghost| now.duration_since(ghost.since) <= memory);
        let gone: Vec<(u64, String)> = self
            .hubs
            .iter()
            .filter(|(_, peer)| now.duration_since(peer.last_seen) > silence)
            .map(|(instance, peer)| (*instance, peer.name.clone()))
            .collect();
        for (instance, _) in &gone {
            if let Some(peer) = self.hubs.remove(instance) {
                let ghost = Ghost {
                    name: peer.name,
                    codes: peer.codes,
                    since: now,
                };
                self.ghosts.insert(*instance, ghost);
            }
        }
        gone
    }

    /// The codes the hubs gone silent wanted.
    pub(crate) fn silent_codes(&self) -> CodeSet {
        self.ghosts
            .values()
            .fold(CodeSet::empty(), |codes, ghost| codes.union(ghost.codes))
    }

    /// Hub `instance` was heard from (its data arrived).
    pub(crate) fn heard(&mut self, instance: u64, now: Instant) {
        if let Some(peer) = self.hubs.get_mut(&instance) {
            peer.last_seen = peer.last_seen.max(now);
        }
    }

    /// Whether some hub was heard from within `silence` of `now`.
    pub(crate) fn heard_within(&self, now: Instant, silence: Duration) -> bool {
        self.hubs
            .values()
            .any(|peer| now.duration_since(peer.last_seen) <= silence)
    }

    /// Counts every hub as heard from now (the link was down: silence proved nothing).
    pub(crate) fn touch_all(&mut self, now: Instant) {
        for peer in self.hubs.values_mut() {
            peer.last_seen = now;
        }
    }

    /// Records hub `instance`'s acknowledgement of interest version `version`.
    pub(crate) fn acknowledge(&mut self, instance: u64, version: u64) {
        if let Some(peer) = self.hubs.get_mut(&instance) {
            peer.acked = peer.acked.max(version);
        }
    }

    /// Records hub `instance`'s credit.
    pub(crate) fn credit(&mut self, instance: u64, seq: u64, bytes: u64) {
        if let Some(peer) = self.hubs.get_mut(&instance) {
            if seq > peer.credit.0 {
                peer.credit = (seq, bytes);
            }
        }
    }

    /// Whether every hub has acknowledged interest version `required`.
    pub(crate) fn acknowledged(&self, required: u64) -> bool {
        self.hubs.values().all(|peer| peer.acked >= required)
    }

    /// The hubs that have not acknowledged `required`.
    pub(crate) fn late(&self, required: u64) -> Vec<String> {
        self.hubs
            .values()
            .filter(|peer| peer.acked < required)
            .map(|peer| peer.name.clone())
            .collect()
    }

    /// Whether every hub has delivered enough of this hub's stream, now at `position`, for one
    /// more message: fewer than `messages` and `bytes` in flight to each.
    pub(crate) fn has_credit(&self, position: (u64, u64), messages: u64, bytes: u64) -> bool {
        self.hubs.values().all(|peer| {
            position.0.saturating_sub(peer.credit.0) < messages
                && position.1.saturating_sub(peer.credit.1) < bytes
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::cluster::messages::Purpose;

    fn announcement(instance: u64, name: &str, bits: u128) -> Announcement {
        Announcement {
            instance,
            version: 1,
            purpose: Purpose::Beat,
            codes: CodeSet::from_bits(bits),
            name: name.into(),
            groups: Vec::new(),
        }
    }

    #[test]
    fn remote_groups_list_per_code_the_hubs_with_members() {
        let mut peers = Peers::default();
        let now = Instant::now();
        let group = |name: &str, bits: u128, members: u32, load: u64| AnnouncedGroup {
            name: name.parse().unwrap(),
            codes: CodeSet::from_bits(bits),
            members,
            load,
        };
        let mut b = announcement(2, "b", 0b110);
        b.groups = vec![group("w", 0b110, 2, 10), group("x", 0b100, 0, 0)];
        let mut c = announcement(1, "c", 0b10);
        c.groups = vec![group("w", 0b10, 1, 3)];
        peers.announced(&b, now, (0, 0));
        peers.announced(&c, now, (0, 0));
        let groups = peers.remote_groups();
        let code = |c: u8| Status::new(c).unwrap();
        let w: GroupName = "w".parse().unwrap();
        let hub = |instance, members, load| RemoteHub {
            instance,
            members,
            load,
        };
        assert_eq!(
            groups.of(code(1)),
            [(w.clone(), vec![hub(1, 1, 3), hub(2, 2, 10)])]
        );
        assert_eq!(
            groups.of(code(2)),
            [(w, vec![hub(2, 2, 10)])],
            "x has no member"
        );
        assert!(groups.of(code(3)).is_empty());
        assert_eq!(groups.codes(), CodeSet::from_bits(0b110));
        assert_eq!(peers.groups().len(), 3);
    }

    #[test]
    fn a_restarted_hub_replaces_its_earlier_instance() {
        let mut peers = Peers::default();
        let now = Instant::now();
        assert!(
            peers
                .announced(&announcement(1, "a", 0b10), now, (0, 0))
                .new
        );
        assert!(
            peers
                .announced(&announcement(2, "b", 0b100), now, (0, 0))
                .new
        );
        assert_eq!(peers.codes(), CodeSet::from_bits(0b110));
        let seen = peers.announced(&announcement(3, "a", 0b1), now, (0, 0));
        assert_eq!(
            seen,
            Seen {
                new: true,
                replaced: vec![1]
            }
        );
        assert_eq!(peers.names(), ["a", "b"]);
        assert_eq!(peers.codes(), CodeSet::from_bits(0b101));
    }

    #[test]
    fn credit_and_acknowledgements_gate_each_hub() {
        let mut peers = Peers::default();
        let now = Instant::now();
        peers.announced(&announcement(1, "a", 0), now, (10, 1000));
        peers.announced(&announcement(2, "b", 0), now, (10, 1000));
        assert!(peers.has_credit((11, 1100), 2, 1000));
        assert!(
            !peers.has_credit((12, 1100), 2, 1000),
            "two messages in flight"
        );
        peers.credit(1, 12, 1100);
        assert!(
            !peers.has_credit((12, 1100), 2, 1000),
            "b has not given credit"
        );
        peers.credit(2, 11, 1050);
        assert!(peers.has_credit((12, 1100), 2, 1000));
        peers.acknowledge(1, 4);
        assert!(!peers.acknowledged(4));
        assert_eq!(peers.late(4), ["b"]);
        peers.acknowledge(2, 5);
        assert!(peers.acknowledged(4));
        let later = now + Duration::from_secs(3);
        peers.announced(&announcement(1, "a", 0), later, (0, 0));
        assert_eq!(
            peers.expire(later, Duration::from_secs(2), Duration::from_secs(60)),
            [(2, "b".to_owned())]
        );
        assert_eq!(peers.len(), 1);
    }

    #[test]
    fn a_silent_hub_is_remembered_until_it_returns_or_a_while_passes() {
        let mut peers = Peers::default();
        let now = Instant::now();
        let (silence, memory) = (Duration::from_secs(2), Duration::from_secs(60));
        peers.announced(&announcement(1, "a", 0b10), now, (0, 0));
        peers.announced(&announcement(2, "b", 0b100), now, (0, 0));
        let later = now + Duration::from_secs(3);
        peers.announced(&announcement(1, "a", 0b10), later, (0, 0));
        peers.expire(later, silence, memory);
        assert_eq!(peers.silent_codes(), CodeSet::from_bits(0b100));
        // Back as another instance (restarted): no longer silent.
        peers.announced(&announcement(3, "b", 0b100), later, (0, 0));
        assert_eq!(peers.silent_codes(), CodeSet::empty());
        let much_later = later + Duration::from_secs(10);
        peers.announced(&announcement(3, "b", 0b100), much_later, (0, 0));
        peers.expire(much_later, silence, memory);
        assert_eq!(peers.silent_codes(), CodeSet::from_bits(0b10));
        peers.expire(much_later + memory * 2, silence, memory);
        assert_eq!(
            peers.silent_codes(),
            CodeSet::from_bits(0b100),
            "a forgotten, b silent"
        );
        peers.expire(much_later + memory * 5, silence, memory);
        assert_eq!(peers.silent_codes(), CodeSet::empty());
    }
}
