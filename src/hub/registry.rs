//! The subscription table: which sessions exist, what each subscribes to, and who receives a
//! frame published on a code.
//!
//! [`Registry`] is a plain data structure owned by the router actor — one owner, no locks, no
//! `DashMap` — so every change and every fan-out lookup happens on the router's turn. It is generic
//! over the per-session delivery handle `T` (the hub stores an actix `Recipient<Deliver>`), which
//! keeps it testable without a runtime.
//!
//! # Layout
//! Per session: its handle, its [`CodeSet`] and its echo flag. Per code `0..=127`: the ids of the
//! sessions subscribed to it, in subscription order, without duplicates. A publication looks up
//! one code's list and walks it (the hot path: a contiguous `Vec`). Subscribing appends ids only
//! for codes newly added to the session's set, so the lists stay duplicate-free without a scan;
//! unsubscribing and removal are `O(subscribers of each code touched)`, which is fine for
//! operations far rarer than publications.

use std::collections::HashMap;
use std::fmt;

use super::control::CodeSet;
use crate::frame::Status;

/// A session's id. The router allocates them from a counter, so they are unique and increasing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// The id numbered `id`.
    pub const fn new(id: u64) -> SessionId {
        SessionId(id)
    }

    /// The id's number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// The bare number, e.g. `42`.
impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the registry holds for one session.
#[derive(Debug)]
struct Entry<T> {
    /// Where frames for the session go.
    handle: T,
    /// The codes it subscribes to.
    codes: CodeSet,
    /// Whether it receives its own publications on codes it subscribes to.
    echo: bool,
}

/// The subscription table: sessions, their code sets and echo flags, and per code the sessions
/// subscribed to it.
///
/// Operations naming an unknown session change nothing (a session may be removed while its last
/// requests are still queued to the router).
///
/// # Examples
/// ```
/// use tej_hub::hub::control::CodeSet;
/// use tej_hub::hub::registry::{Registry, SessionId};
/// use tej_hub::Status;
///
/// let (a, b) = (SessionId::new(1), SessionId::new(2));
/// let mut registry = Registry::new();
/// registry.insert(a, "a");
/// registry.insert(b, "b");
/// let five: CodeSet = "5".parse().unwrap();
/// registry.subscribe(a, &five);
/// registry.subscribe(b, &five);
/// let status = Status::new(5).unwrap();
/// // a publishes on 5: b receives it, a does not (echo is off).
/// assert_eq!(registry.targets(a, status).collect::<Vec<_>>(), [&"b"]);
/// ```
#[derive(Debug)]
pub struct Registry<T> {
    /// Every registered session.
    sessions: HashMap<SessionId, Entry<T>>,
    /// Per code, the sessions subscribed to it: in subscription order, no duplicates, each one
    /// present in `sessions` with the code in its set.
    by_code: [Vec<SessionId>; Status::COUNT],
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Registry::new()
    }
}

impl<T> Registry<T> {
    /// An empty registry.
    pub fn new() -> Registry<T> {
        Registry {
            sessions: HashMap::new(),
            by_code: std::array::from_fn(|_| Vec::new()),
        }
    }

    /// Registers session `id` with delivery `handle`, no subscriptions and echo off.
    ///
    /// Ids are not meant to be reused; if `id` is already registered, that session is removed
    /// first (subscriptions included) and its handle returned.
    pub fn insert(&mut self, id: SessionId, handle: T) -> Option<T> {
        let old = self.remove(id);
        self.sessions.insert(
            id,
            Entry {
                handle,
                codes: CodeSet::empty(),
                echo: false,
            },
        );
        old
    }

    /// Unregisters session `id`, dropping it from every code's subscriber list; returns its
    /// handle, or `None` when it was not registered.
    pub fn remove(&mut self, id: SessionId) -> Option<T> {
        let entry = self.sessions.remove(&id)?;
        for status in entry.codes.iter() {
            self.drop_subscriber(status, id);
        }
        Some(entry.handle)
    }

    /// Adds `codes` to session `id`'s subscriptions; returns its whole set afterwards (empty for
    /// an unknown session). Codes it already has are left as they are.
    pub fn subscribe(&mut self, id: SessionId, codes: &CodeSet) -> CodeSet {
        let Some(entry) = self.sessions.get_mut(&id) else {
            return CodeSet::empty();
        };
        let added = codes.difference(entry.codes);
        entry.codes = entry.codes.union(*codes);
        let after = entry.codes;
        for status in added.iter() {
            if let Some(list) = self.by_code.get_mut(usize::from(status.code())) {
                list.push(id);
            }
        }
        after
    }

    /// Removes `codes` from session `id`'s subscriptions; returns its whole set afterwards (empty
    /// for an unknown session). Codes it does not have are ignored.
    pub fn unsubscribe(&mut self, id: SessionId, codes: &CodeSet) -> CodeSet {
        let Some(entry) = self.sessions.get_mut(&id) else {
            return CodeSet::empty();
        };
        let removed = codes.intersection(entry.codes);
        entry.codes = entry.codes.difference(*codes);
        let after = entry.codes;
        for status in removed.iter() {
            self.drop_subscriber(status, id);
        }
        after
    }

    /// Sets whether session `id` receives its own publications on codes it subscribes to; returns
    /// whether the session is registered.
    pub fn set_echo(&mut self, id: SessionId, echo: bool) -> bool {
        match self.sessions.get_mut(&id) {
            Some(entry) => {
                entry.echo = echo;
                true
            }
            None => false,
        }
    }

    /// Whether session `id` has echo on (`false` for an unknown session).
    pub fn echo(&self, id: SessionId) -> bool {
        self.sessions.get(&id).is_some_and(|entry| entry.echo)
    }

    /// Session `id`'s subscriptions (empty for an unknown session).
    pub fn codes(&self, id: SessionId) -> CodeSet {
        self.sessions
            .get(&id)
            .map_or(CodeSet::empty(), |entry| entry.codes)
    }

    /// Session `id`'s delivery handle.
    pub fn get(&self, id: SessionId) -> Option<&T> {
        self.sessions.get(&id).map(|entry| &entry.handle)
    }

    /// Session `id`'s delivery handle, to change it.
    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut T> {
        self.sessions.get_mut(&id).map(|entry| &mut entry.handle)
    }

    /// Whether session `id` is registered.
    pub fn contains(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    /// Every registered session and its handle, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (SessionId, &T)> + '_ {
        self.sessions.iter().map(|(id, entry)| (*id, &entry.handle))
    }

    /// The sessions subscribed to `status`, in subscription order.
    pub fn subscribers(&self, status: Status) -> impl Iterator<Item = (SessionId, &T)> + '_ {
        self.by_code
            .get(usize::from(status.code()))
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(|id| self.sessions.get(id).map(|entry| (*id, &entry.handle)))
    }

    /// How many sessions subscribe to `status`.
    pub fn subscriber_count(&self, status: Status) -> usize {
        self.by_code
            .get(usize::from(status.code()))
            .map_or(0, Vec::len)
    }

    /// Where a frame that `publisher` publishes on `status` goes: every subscriber of `status`,
    /// except the publisher itself unless it has echo on (it must also be subscribed, like
    /// everyone else). The publisher need not be registered.
    pub fn targets(&self, publisher: SessionId, status: Status) -> impl Iterator<Item = &T> + '_ {
        let echo = self.echo(publisher);
        self.subscribers(status)
            .filter(move |(id, _)| *id != publisher || echo)
            .map(|(_, handle)| handle)
    }

    /// The ids of [`Registry::targets`], in the same order.
    pub fn target_ids(
        &self,
        publisher: SessionId,
        status: Status,
    ) -> impl Iterator<Item = SessionId> + '_ {
        let echo = self.echo(publisher);
        self.by_code
            .get(usize::from(status.code()))
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .copied()
            .filter(move |id| *id != publisher || echo)
    }

    /// The number of registered sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Takes `id` out of `status`'s subscriber list.
    fn drop_subscriber(&mut self, status: Status, id: SessionId) {
        if let Some(list) = self.by_code.get_mut(usize::from(status.code())) {
            list.retain(|other| *other != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::control::test_codes::{set, status};
    use super::*;

    fn id(n: u64) -> SessionId {
        SessionId::new(n)
    }

    fn targets(registry: &Registry<u64>, publisher: u64, code: u8) -> Vec<u64> {
        let mut out: Vec<u64> = registry
            .targets(id(publisher), status(code))
            .copied()
            .collect();
        out.sort_unstable();
        out
    }

    fn subscribers(registry: &Registry<u64>, code: u8) -> Vec<u64> {
        registry
            .subscribers(status(code))
            .map(|(id, handle)| {
                assert_eq!(id.get(), *handle);
                id.get()
            })
            .collect()
    }

    /// Every code list matches the sessions' sets, with no duplicates.
    fn assert_consistent(registry: &Registry<u64>) {
        for code in 0..=127 {
            let list = &registry.by_code[usize::from(code)];
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), list.len(), "duplicates on code {code}");
            for sid in list {
                assert!(registry.codes(*sid).contains(status(code)));
            }
            let expected = registry
                .sessions
                .iter()
                .filter(|(_, entry)| entry.codes.contains(status(code)))
                .count();
            assert_eq!(list.len(), expected, "code {code}");
        }
    }

    #[test]
    fn session_id() {
        let a = SessionId::new(7);
        assert_eq!(a.get(), 7);
        assert_eq!(a.to_string(), "7");
        assert!(SessionId::new(1) < SessionId::new(2));
        assert_eq!(a, SessionId::new(7));
    }

    #[test]
    fn insert_and_remove() {
        let mut registry = Registry::new();
        assert!(registry.is_empty());
        assert_eq!(registry.insert(id(1), 1), None);
        assert_eq!(registry.insert(id(2), 2), None);
        assert_eq!(registry.len(), 2);
        assert!(registry.contains(id(1)));
        assert_eq!(registry.get(id(2)), Some(&2));
        assert_eq!(registry.codes(id(1)), CodeSet::empty());
        assert!(!registry.echo(id(1)));
        assert_eq!(registry.remove(id(1)), Some(1));
        assert_eq!(registry.remove(id(1)), None);
        assert!(!registry.contains(id(1)));
        assert_eq!(registry.get(id(1)), None);
        assert_eq!(registry.len(), 1);
        let mut all: Vec<_> = registry.iter().map(|(id, h)| (id.get(), *h)).collect();
        all.sort_unstable();
        assert_eq!(all, vec![(2, 2)]);
    }

    #[test]
    fn reinsert_starts_fresh() {
        let mut registry = Registry::new();
        registry.insert(id(1), 10);
        registry.subscribe(id(1), &set(&[5, 6]));
        registry.set_echo(id(1), true);
        assert_eq!(registry.insert(id(1), 11), Some(10));
        assert_eq!(registry.codes(id(1)), CodeSet::empty());
        assert!(!registry.echo(id(1)));
        assert_eq!(registry.get(id(1)), Some(&11));
        assert_eq!(registry.subscriber_count(status(5)), 0);
        assert_consistent(&registry);
    }

    #[test]
    fn subscribe_returns_whole_set_and_never_duplicates() {
        let mut registry = Registry::new();
        registry.insert(id(1), 1);
        assert_eq!(registry.subscribe(id(1), &set(&[5, 6])), set(&[5, 6]));
        assert_eq!(registry.subscribe(id(1), &set(&[6, 7])), set(&[5, 6, 7]));
        assert_eq!(registry.subscribe(id(1), &set(&[5, 6, 7])), set(&[5, 6, 7]));
        assert_eq!(registry.codes(id(1)), set(&[5, 6, 7]));
        assert_eq!(subscribers(&registry, 6), vec![1]);
        assert_eq!(registry.subscriber_count(status(6)), 1);
        assert_eq!(subscribers(&registry, 8), Vec::<u64>::new());
        assert_consistent(&registry);
    }

    #[test]
    fn unsubscribe_returns_whole_set() {
        let mut registry = Registry::new();
        registry.insert(id(1), 1);
        registry.subscribe(id(1), &CodeSet::relayable());
        assert_eq!(
            registry.unsubscribe(id(1), &set(&[0, 1, 9])).to_string(),
            "3-8,10-126"
        );
        // Codes not subscribed are ignored.
        assert_eq!(
            registry.unsubscribe(id(1), &set(&[0, 2, 127])).to_string(),
            "3-8,10-126"
        );
        assert_eq!(subscribers(&registry, 0), Vec::<u64>::new());
        assert_eq!(subscribers(&registry, 3), vec![1]);
        assert_eq!(
            registry.unsubscribe(id(1), &CodeSet::relayable()),
            CodeSet::empty()
        );
        assert_consistent(&registry);
        for code in 0..=127 {
            assert_eq!(registry.subscriber_count(status(code)), 0);
        }
    }

    #[test]
    fn unknown_sessions_change_nothing() {
        let mut registry: Registry<u64> = Registry::new();
        assert_eq!(registry.subscribe(id(9), &set(&[5])), CodeSet::empty());
        assert_eq!(registry.unsubscribe(id(9), &set(&[5])), CodeSet::empty());
        assert!(!registry.set_echo(id(9), true));
        assert!(!registry.echo(id(9)));
        assert_eq!(registry.codes(id(9)), CodeSet::empty());
        assert_eq!(subscribers(&registry, 5), Vec::<u64>::new());
        assert!(registry.is_empty());
        assert_consistent(&registry);
    }

    #[test]
    fn subscribers_in_subscription_order() {
        let mut registry = Registry::new();
        for n in [3, 1, 2] {
            registry.insert(id(n), n);
        }
        registry.subscribe(id(2), &set(&[5]));
        registry.subscribe(id(3), &set(&[5]));
        registry.subscribe(id(1), &set(&[5]));
        registry.subscribe(id(2), &set(&[5]));
        assert_eq!(subscribers(&registry, 5), vec![2, 3, 1]);
        registry.unsubscribe(id(3), &set(&[5]));
        assert_eq!(subscribers(&registry, 5), vec![2, 1]);
    }

    #[test]
    fn echo_rules() {
        let mut registry = Registry::new();
        for n in 1..=3 {
            registry.insert(id(n), n);
        }
        registry.subscribe(id(1), &set(&[5]));
        registry.subscribe(id(2), &set(&[5]));
        registry.subscribe(id(3), &set(&[6]));

        // Echo off: the publisher is left out.
        assert_eq!(targets(&registry, 1, 5), vec![2]);
        // A publisher that is not subscribed never gets its frame, echo or not.
        assert!(registry.set_echo(id(3), true));
        assert_eq!(targets(&registry, 3, 5), vec![1, 2]);
        // Echo on and subscribed: the publisher gets its own frame.
        assert!(registry.set_echo(id(1), true));
        assert!(registry.echo(id(1)));
        assert_eq!(targets(&registry, 1, 5), vec![1, 2]);
        // Another session's echo does not matter for this publisher.
        assert_eq!(targets(&registry, 2, 5), vec![1]);
        // Echo off again.
        assert!(registry.set_echo(id(1), false));
        assert_eq!(targets(&registry, 1, 5), vec![2]);
        // An unregistered publisher reaches every subscriber.
        assert_eq!(targets(&registry, 99, 5), vec![1, 2]);
        // A code nobody subscribes to.
        assert_eq!(targets(&registry, 1, 7), Vec::<u64>::new());
        // The only subscriber publishing with echo on reaches itself alone.
        assert_eq!(targets(&registry, 3, 6), vec![3]);
        assert!(registry.set_echo(id(3), false));
        assert_eq!(targets(&registry, 3, 6), Vec::<u64>::new());
    }

    #[test]
    fn removal_cleans_every_code_list() {
        let mut registry = Registry::new();
        registry.insert(id(1), 1);
        registry.insert(id(2), 2);
        registry.subscribe(id(1), &CodeSet::relayable());
        registry.subscribe(id(2), &set(&[0, 5, 126]));
        registry.set_echo(id(1), true);
        assert_eq!(registry.remove(id(1)), Some(1));
        for code in 0..=127 {
            assert!(subscribers(&registry, code).iter().all(|n| *n == 2));
        }
        assert_eq!(subscribers(&registry, 5), vec![2]);
        assert_eq!(subscribers(&registry, 6), Vec::<u64>::new());
        assert_eq!(targets(&registry, 2, 5), Vec::<u64>::new());
        assert_eq!(targets(&registry, 1, 5), vec![2]);
        assert_consistent(&registry);
        assert_eq!(registry.remove(id(2)), Some(2));
        assert!(registry.by_code.iter().all(Vec::is_empty));
        assert!(registry.is_empty());
    }

    #[test]
    fn many_sessions() {
        let mut registry = Registry::new();
        let n = 1000u64;
        for i in 0..n {
            registry.insert(id(i), i);
            // Session i subscribes to code i % 10 and to code 100.
            let code = u8::try_from(i % 10).unwrap_or(0);
            registry.subscribe(id(i), &set(&[code, 100]));
            if i % 3 == 0 {
                registry.set_echo(id(i), true);
            }
        }
        assert_eq!(registry.len(), 1000);
        assert_eq!(registry.subscriber_count(status(100)), 1000);
        assert_eq!(registry.subscriber_count(status(4)), 100);
        assert_consistent(&registry);

        // Echo off: everyone but the publisher; echo on: everyone.
        assert_eq!(targets(&registry, 1, 100).len(), 999);
        assert_eq!(targets(&registry, 3, 100).len(), 1000);
        assert_eq!(targets(&registry, 4, 4).len(), 99);
        assert!(targets(&registry, 4, 4)
            .iter()
            .all(|t| t % 10 == 4 && *t != 4));

        // Remove every even session.
        for i in (0..n).step_by(2) {
            assert_eq!(registry.remove(id(i)), Some(i));
        }
        assert_eq!(registry.len(), 500);
        assert_eq!(registry.subscriber_count(status(100)), 500);
        assert_eq!(registry.subscriber_count(status(4)), 0);
        assert_eq!(registry.subscriber_count(status(5)), 100);
        assert!(subscribers(&registry, 100).iter().all(|t| t % 2 == 1));
        assert_consistent(&registry);

        // Odd sessions drop code 100.
        for i in (1..n).step_by(2) {
            let left = registry.unsubscribe(id(i), &set(&[100]));
            assert_eq!(left.len(), 1);
        }
        assert_eq!(registry.subscriber_count(status(100)), 0);
        assert_consistent(&registry);
    }
}
