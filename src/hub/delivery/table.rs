//! The [`SubscriptionTable`]: per code, the outboxes of its subscribers, read by publishing
//! sessions on their own threads.
//!
//! The router owns the subscriptions and is the only writer here: it applies every change to the
//! codes it touches *before* it answers the session's command. A publisher takes a code's list with one short read lock and an `Arc` clone,
//! then delivers without holding anything; so a publication read after a `SUB` was answered `OK`
//! finds the new subscriber, and a change never waits for a fan-out in progress. A list is copied
//! on write only while a publisher holds it; otherwise it is changed in place, so 10,000
//! subscriptions to one code cost 10,000 pushes, not 10,000 copies.

use std::sync::{Arc, PoisonError, RwLock};

use crate::frame::Status;
use crate::hub::delivery::outbox::Outbox;

/// One code's subscribers, in subscription order.
pub(crate) type Subscribers = Arc<Vec<Arc<Outbox>>>;

/// Per code, the outboxes of its subscribers; see the module documentation.
#[derive(Debug)]
pub(crate) struct SubscriptionTable {
    codes: [RwLock<Subscribers>; Status::COUNT],
}

impl SubscriptionTable {
    /// A table with no subscriber.
    pub(crate) fn new() -> SubscriptionTable {
        SubscriptionTable {
            codes: std::array::from_fn(|_| RwLock::new(Arc::new(Vec::new()))),
        }
    }

    /// The subscribers of `status` now.
    pub(crate) fn subscribers(&self, status: Status) -> Subscribers {
        self.codes[usize::from(status.code())]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the list of `status`: in place unless a publisher holds it.
    fn change(&self, status: Status, change: impl FnOnce(&mut Vec<Arc<Outbox>>)) {
        let mut list = self.codes[usize::from(status.code())]
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        change(Arc::make_mut(&mut list));
    }

    /// Adds `outbox` to the subscribers of `status` (the router adds each once).
    pub(crate) fn add(&self, status: Status, outbox: &Arc<Outbox>) {
        self.change(status, |list| list.push(outbox.clone()));
    }

    /// Takes `outbox` out of the subscribers of `status`.
    pub(crate) fn remove(&self, status: Status, outbox: &Arc<Outbox>) {
        self.change(status, |list| {
            list.retain(|other| !Arc::ptr_eq(other, outbox))
        });
    }
}
