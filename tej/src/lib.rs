//! TEJ v1 — a full-duplex binary framing over TCP for messages and large files: the codec, the
//! frame builder, streaming in bounded memory, and async clients and servers with the callback
//! style of the Python reference (`tej-protoc`).
//!
//! This crate is the protocol only: it knows nothing of the `tej-hub` relay built on it, and
//! depends on nothing a TEJ application would not need (tokio, bytes, rustls).
//!
//! # Layout
//! - [`frame`]: the frame model ([`Frame`], [`File`], [`Status`]) and its builder.
//! - [`codec`]: [`TejCodec`], the bounded, incremental, zero-copy tokio-util codec; [`Limits`];
//!   [`CodecError`]; [`FrameBuf`], the zero-copy outbound queue.
//! - [`scan`]: [`scan::Scanner`], the frame grammar as a state machine, for decoders and relays
//!   that forward bytes without holding a whole frame.
//! - [`handler`]: the [`Handler`] callbacks (`connected`, `received`, `ping_received`,
//!   `disconnected`), the reference implementation's callback style.
//! - [`connection`]: one connection's reader loop, single writer and [`Sender`] handle.
//! - [`client`] and [`server`]: [`Client`] and [`Server`] over TCP; [`tls`]: [`ClientTls`] for
//!   clients of TLS servers.
//! - [`stream`]: frames in bounded memory — [`stream::PartCodec`] decodes a frame as
//!   [`stream::Part`]s (file data handed out as it arrives), [`stream::FileFrame`] and
//!   [`stream::write_frame_from_files`] send files from disk without loading them.
//!
//! The wire format, limits, errors and interop notes are in `docs/protocol.md`.
//!
//! # Examples
//! ```no_run
//! use tej::{Client, Frame, Status};
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

pub mod client;
pub mod codec;
pub mod connection;
pub mod frame;
pub mod handler;
pub mod scan;
pub mod server;
pub mod stream;
pub mod tls;

pub use client::Client;
pub use codec::{CodecError, FrameBuf, Limits, TejCodec, WireCodec, WireFrame};
pub use connection::{Connection, ConnectionConfig, Disconnect, SendError, Sender};
pub use frame::{File, Frame, FrameBuilder, Status, StatusOutOfRange, PROTOCOL_VERSION};
pub use handler::Handler;
pub use server::Server;
pub use tls::{ClientTls, ClientTlsError, MaybeTls};
