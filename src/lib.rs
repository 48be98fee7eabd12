//! `tej-hub`: a pub/sub relay for TEJ v1 — every connection an actix actor wrapping the TEJ codec,
//! frames relayed by custom status code to the clients that subscribed to it — and the protocol
//! library it is built on, re-exported from the [`tej`] crate so a hub user needs one dependency.
//!
//! # Layout
//! - [`hub`]: the relay (router, sessions, the data path, auth, TLS, limits, monitoring, the
//!   cluster); its module map is in [`hub`]'s documentation, the design in
//!   `docs/architecture.md`.
//! - The protocol, from the [`tej`] crate (which never imports the hub): [`frame`], [`codec`],
//!   [`stream`], [`handler`], [`connection`], [`client`], [`server`], [`tls`], and the most used
//!   types at the crate root ([`Frame`], [`Status`], [`TejCodec`], [`Client`], [`Server`], ...).
//!
//! The wire format, limits, errors and interop notes are in `docs/protocol.md`.
//!
//! # Examples
//! ```no_run
//! use tej_hub::{Client, Frame, Status};
//! use futures_util::{SinkExt, StreamExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The plain Stream/Sink path.
//! let mut framed = Client::connect("127.0.0.1:8000").await?.into_framed();
//! framed.send(Frame::message(Status::new(5).unwrap(), "hello")).await?;
//! if let Some(reply) = framed.next().await {
//!     println!("{:?}", reply?);
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;

pub use tej::{client, codec, connection, frame, handler, server, stream, tls};
// The relay decoder walks frames with the protocol's scanner; not part of the hub's API.
use tej::scan;

pub use tej::{
    Client, ClientTls, ClientTlsError, CodecError, Connection, ConnectionConfig, Disconnect, File,
    Frame, FrameBuf, FrameBuilder, Handler, Limits, MaybeTls, SendError, Sender, Server, Status,
    StatusOutOfRange, TejCodec, WireCodec, WireFrame, PROTOCOL_VERSION,
};
