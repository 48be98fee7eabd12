//! The [`SubscriptionTable`]: per code, the outboxes of its subscribers, read by publishing
//! sessions on their own threads.
//!
//! The router owns the subscriptions (its [`Registry`](super::registry::Registry)) and is the
//! only writer here: after every change it stores a fresh list for each code it touched, *before*
//! it answers the session's command. A publisher takes a code's list with one short read lock and
//! an `Arc` clone, then delivers without holding anything; so a publication read after a `SUB`
//! was answered `OK` finds the new subscriber, and a change never waits for a fan-out in progress.
//! Lists are copied on write: changes are rare next to publications.

use std::sync::{Arc, PoisonError, RwLock};

use crate::frame::Status;
use crate::hub::outbox::Outbox;

/// Number of custom status codes, `0..=127`.
const CODES: usize = Status::MAX as usize + 1;

/// One code's subscribers, in subscription order.
pub(crate) type Subscribers = Arc<[Arc<Outbox>]>;

/// Per code, the outboxes of its subscribers; see the module documentation.
#[derive(Debug)]
pub(crate) struct SubscriptionTable {
    codes: [RwLock<Subscribers>; CODES],
}

impl SubscriptionTable {
    /// A table with no subscriber.
    pub(crate) fn new() -> SubscriptionTable {
        SubscriptionTable {
            codes: std::array::from_fn(|_| RwLock::new(Arc::from(Vec::new()))),
        }
    }

    /// The subscribers of `status` now.
    pub(crate) fn subscribers(&self, status: Status) -> Subscribers {
        self.codes[usize::from(status.code())]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the subscribers of `status`.
    pub(crate) fn set(&self, status: Status, subscribers: Subscribers) {
        *self.codes[usize::from(status.code())]
            .write()
            .unwrap_or_else(PoisonError::into_inner) = subscribers;
    }
}
