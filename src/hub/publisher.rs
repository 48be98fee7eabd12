//! A session's publishing side: the [`Publisher`] delivers each piece the session reads to the
//! subscribers of its code, on the session's own thread — no router, no hop.
//!
//! A whole frame or the first piece of a streamed one goes to the code's subscribers as the
//! [`SubscriptionTable`] lists them now (minus the publisher itself unless its echo is on); the
//! rest of a streamed frame goes to the subscribers that took its first piece, so a subscriber
//! that unsubscribes mid-frame still gets the whole frame and one that subscribes mid-frame gets
//! the next one. What each subscriber does with a piece — write it, queue it, hold it behind
//! another streamed frame, drop it — is its [`Outbox`]'s business.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::trace;

use crate::hub::flow::Gate;
use crate::hub::outbox::{Offer, Outbox};
use crate::hub::registry::SessionId;
use crate::hub::relay::{Piece, PieceKind};
use crate::hub::router::HubCounters;
use crate::hub::table::SubscriptionTable;

/// One session's publishing side; see the module documentation.
#[derive(Debug)]
pub(crate) struct Publisher {
    id: SessionId,
    /// The session's read gate, which subscribers under `block` close while they are full.
    gate: Arc<Gate>,
    table: Arc<SubscriptionTable>,
    counters: Arc<HubCounters>,
    /// Whether the session receives its own publications (if subscribed).
    echo: bool,
    /// The subscribers taking the streamed frame in progress.
    streaming: Vec<Arc<Outbox>>,
}

impl Publisher {
    /// The publishing side of session `id`.
    pub(crate) fn new(
        id: SessionId,
        gate: Arc<Gate>,
        table: Arc<SubscriptionTable>,
        counters: Arc<HubCounters>,
    ) -> Publisher {
        Publisher {
            id,
            gate,
            table,
            counters,
            echo: false,
            streaming: Vec::new(),
        }
    }

    /// Whether the session receives its own publications.
    pub(crate) fn echo(&self) -> bool {
        self.echo
    }

    /// Sets whether the session receives its own publications, from its next frame on.
    pub(crate) fn set_echo(&mut self, on: bool) {
        self.echo = on;
    }

    /// Delivers `piece` to its subscribers.
    pub(crate) fn publish(&mut self, piece: &Piece) {
        self.counters.codes.count(piece);
        match piece.kind {
            PieceKind::Whole | PieceKind::First => {
                let subscribers = self.table.subscribers(piece.status);
                let mut routed = false;
                for outbox in subscribers.iter() {
                    if outbox.id() == self.id && !self.echo {
                        continue;
                    }
                    routed = true;
                    let taken = outbox.offer(self.id, &self.gate, piece) == Offer::Taken;
                    if taken && piece.kind == PieceKind::First {
                        self.streaming.push(outbox.clone());
                    }
                }
                if !routed {
                    self.counters
                        .unrouted_frames
                        .fetch_add(1, Ordering::Relaxed);
                    trace!(session = %self.id, status = %piece.status, "publication without subscribers");
                }
            }
            PieceKind::Middle | PieceKind::Last => {
                // A subscriber that skips a piece (gone, or the frame dropped while held) takes
                // none of the rest.
                let (id, gate) = (self.id, &self.gate);
                self.streaming
                    .retain(|outbox| outbox.offer(id, gate, piece) == Offer::Taken);
                if piece.kind == PieceKind::Last {
                    self.streaming.clear();
                }
            }
        }
    }

    /// The session has ended: subscribers in the middle of its streamed frame cannot get the
    /// rest of it.
    pub(crate) fn abandon(&mut self) {
        for outbox in self.streaming.drain(..) {
            outbox.publisher_gone(self.id);
        }
    }
}
