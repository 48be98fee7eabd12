//! The data path: a publication from the publisher's socket to every subscriber's socket, on the
//! publisher's thread, with no actor hop unless a subscriber's socket is full.
//!
//! - [`relay`]: `RelayCodec` cuts a connection's bytes into `Piece`s (whole frames, or a large
//!   frame's chunks as they arrive).
//! - [`publisher`]: `Publisher` picks a piece's targets and offers it to each.
//! - [`table`]: `SubscriptionTable`, per code the subscribers' outboxes and queue groups;
//!   written by the router, read by publishers.
//! - [`groups`]: queue groups — the choice of the member a frame goes to, and the move of a
//!   leaving member's unstarted frames to another.
//! - [`outbox`]: `Outbox`, a subscriber's socket and stream state behind one lock; write-through,
//!   held frames, slow-consumer policies; its writer task.
//! - [`flow`]: `Gate` (a publisher's read gate) and `Backlog` (a subscriber's queued bytes).
//! - [`transport`]: a session's stream (the TCP socket, plain or with its TLS state beside it).
//! - [`idle`]: `IdleTimer`, so idle connections give their read buffer back.
//!
//! # Ordering rules
//! - A subscription answered `OK` sees every later publication, and nothing overtakes the `OK`:
//!   the router changes the table and queues the `OK` while holding the subscriber's outbox lock.
//! - Per publisher, in order, never interleaved: one publisher delivers its pieces one after the
//!   other from its own thread; each delivery is atomic under the subscriber's outbox lock, and a
//!   frame from another publisher is held behind a streamed frame until its last piece.
//! - Replies go through the outbox too, after the streamed frame on the wire if any.
//!
//! # Lock order
//! A thread holding a lock on the left may take the one on its right, never the reverse:
//! - outbox (a subscriber's stream state) → table (a code's `Route`: its subscribers and, beside
//!   them, its queue groups): the router writes the route while holding the subscriber's outbox
//!   lock, which is what orders `OK` before any
//!   publication that finds the subscription. Publishers read the list (one short read lock, an
//!   `Arc` clone) and release it before they take any outbox lock.
//! - outbox → backlog (the gates a full subscriber holds closed): under the outbox lock a full
//!   backlog records the publisher's gate. Gates themselves are atomics, not locks.
//! - outbox → tls (a TLS connection's rustls state, `hub::tls::TlsSocket`): a small piece is
//!   sealed into records under the subscriber's outbox lock for write-through; the writer seals the
//!   front of its queue with the tls lock alone, and the session's reader decrypts with it alone.
//!   Nothing takes another lock while holding the tls lock.
//! - cluster peers → remote groups (`cluster/mod.rs`): the link replaces the other hubs' groups
//!   (`remote_groups`, one `Arc` swapped under a write lock) while it holds its peers; publishers
//!   read `remote_groups` alone (a short read lock, an `Arc` clone) and never take the peers.
//! - durable attachments → cursor table, a durable code's reader view (`durable/mod.rs`):
//!   `attach` and `delete` hold the table of which session holds each cursor while they read the
//!   cursor, open readers for its new codes and change it, so no other session attaches
//!   halfway. The cursor table and the reader views take nothing under them.
//! - Leaves, each taken alone and released before any other: the cluster's other locks (its local
//!   interest, its outbound queue, whose backlog holds a publisher's gate only after the queue
//!   lock is released), admission's per-address counts, the live settings (`ops::HubState`), a
//!   session's recorded codes (`ops::counters`), the store's I/O queue (`store/mod.rs`), and the
//!   durable cursors' figures (`durable/mod.rs`).
//! - The store's I/O thread calls publishers' ack sinks holding none of its locks; a sink takes
//!   the publisher's outbox lock to queue `OK STORED`. A durable feed takes its subscriber's
//!   outbox lock (then backlog, as any publisher) and nothing else; its window is a `RefCell` on
//!   the subscriber's own thread, not a lock.
//! - No thread holds two outbox locks at once: a publisher offers a piece to one subscriber at a
//!   time, the router changes one session's subscriptions at a time, and a leaving group member's
//!   frames are taken out under its own lock, which is released before they are offered to
//!   another member.
//!
//! docs/architecture.md draws the path and explains each rule.

pub(crate) mod flow;
pub(crate) mod groups;
pub(crate) mod idle;
pub(crate) mod outbox;
pub(crate) mod publisher;
pub(crate) mod relay;
pub(crate) mod table;
pub(crate) mod transport;
