//! [`HubClient`]: the client side of a tej-hub over one TEJ connection — control commands matched
//! with their replies, publications, and the relayed frames, none of which is lost while a command
//! waits for its reply. [`HubError`] says what went wrong.
//!
//! The hub answers control commands (status 127) in the order they were sent, but its replies and
//! the frames it relays share one socket: a relayed frame may arrive before the reply a command is
//! waiting for. The client keeps such frames, in order, and hands them out from
//! [`HubClient::next_frame`] (or [`HubClient::next_part`]) before reading the socket again.
//!
//! Large frames stream: [`HubClient::next_part`] hands a relayed frame out as
//! [`Part`]s while it arrives (memory bounded by a chunk, not by the frame), and
//! [`HubClient::publish_files`] sends files from disk without loading them.

use std::collections::VecDeque;
use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::codec::{CodecError, Limits, TejCodec};
use crate::connection::ConnectionConfig;
use crate::frame::{Frame, Status};
use crate::hub::control::{
    CodeSet, Command, ControlError, GroupName, Info, Password, Reply, StartAt, SubOptions, CONTROL,
};
use crate::stream::{FileFrame, FileSource, Part, PartCodec, StreamError};
use crate::tls::{ClientTls, MaybeTls};

/// What went wrong talking to a hub.
///
/// # Examples
/// ```no_run
/// use tej_hub::hub::{HubClient, HubError};
///
/// # async fn run() -> Result<(), HubError> {
/// let mut client = HubClient::connect("127.0.0.1:8000").await?;
/// match client.subscribe("2").await {
///     Err(HubError::Refused(reason)) => assert_eq!(reason, "reserved code 2"),
///     other => panic!("expected a refusal, got {other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The socket failed (connect, read or write).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A frame broke the protocol or the codec's limits: received from the hub, or refused before
    /// sending (e.g. [`CodecError::FrameTooLarge`]). Never [`CodecError::Io`]: socket failures
    /// are [`HubError::Io`].
    #[error(transparent)]
    Codec(CodecError),
    /// The hub answered the command with `ERR <reason>`, or the client refused it before sending
    /// with the reason the hub would give (a code list the hub refuses); the connection stays
    /// open.
    #[error("hub refused the command: {0}")]
    Refused(String),
    /// The hub closed the connection, after saying why (`ERR <reason>`) or without a word.
    #[error("hub closed the connection{}", reason_suffix(.reason))]
    Closed {
        /// The hub's reason, when it sent one before closing.
        reason: Option<String>,
    },
    /// A status-127 frame that is not the reply the client expected (the whole message, lossy
    /// UTF-8).
    #[error("unexpected reply from the hub: {0:?}")]
    UnexpectedReply(String),
    /// [`HubClient::publish`] was given status 2 (PING) or 127 (CONTROL), which the hub never
    /// relays.
    #[error("status {0} is reserved by the hub and cannot be published")]
    ReservedStatus(Status),
    /// A relayed frame is being read part by part ([`HubClient::next_part`]) and has not reached
    /// [`Part::End`]: [`HubClient::next_frame`] and commands must wait until it has. Nothing was
    /// sent or read; the connection stays usable.
    #[error("a relayed frame is being read by parts; read it up to its end first")]
    InsideFrame,
    /// A file to publish could not be read, or changed size while being sent
    /// ([`HubClient::publish_files`]). Never [`StreamError::Io`] or [`StreamError::Codec`]: those
    /// are [`HubError::Io`] and [`HubError::Codec`].
    #[error(transparent)]
    File(StreamError),
}

fn reason_suffix(reason: &Option<String>) -> String {
    reason
        .as_deref()
        .map_or_else(String::new, |reason| format!(": {reason}"))
}

/// Socket failures become [`HubError::Io`], everything else [`HubError::Codec`].
impl From<CodecError> for HubError {
    fn from(error: CodecError) -> HubError {
        match error {
            CodecError::Io(error) => HubError::Io(error),
            error => HubError::Codec(error),
        }
    }
}

/// Socket failures become [`HubError::Io`], limits [`HubError::Codec`], files [`HubError::File`].
impl From<StreamError> for HubError {
    fn from(error: StreamError) -> HubError {
        match error {
            StreamError::Io(error) => HubError::Io(error),
            StreamError::Codec(error) => error.into(),
            error => HubError::File(error),
        }
    }
}

/// One connection to a tej-hub: subscribe, publish, and read what the hub relays.
///
/// Commands ([`subscribe`](Self::subscribe), [`unsubscribe`](Self::unsubscribe),
/// [`set_echo`](Self::set_echo), [`info`](Self::info), [`command`](Self::command)) send one control
/// frame and wait for its reply. Relayed frames that arrive meanwhile are kept, in order, and
/// returned by [`next_frame`](Self::next_frame) before anything newer; the hub's ping answers are
/// dropped. Nothing bounds that buffer but the hub: a reply is queued behind the frames already
/// queued for us, which the hub bounds (`max-pending-bytes`), so one command buffers at most about
/// that much. Call `next_frame` to drain it.
///
/// Cancelling a call (dropping its future, e.g. in `select!` or `timeout`) leaves the client
/// usable: a command that was cancelled may or may not have been sent, and if it was, its reply is
/// recognised as stale and skipped. [`next_frame`](Self::next_frame) and
/// [`next_part`](Self::next_part) are cancel safe: nothing is lost.
///
/// # Streaming
/// [`next_part`](Self::next_part) returns relayed frames as [`Part`]s, file data in chunks as it
/// arrives, so a subscriber can write a large file to disk holding only a chunk at a time. The two
/// ways of reading mix at frame boundaries: a frame kept while a command waited is handed out by
/// `next_part` as parts too; while a frame read by `next_part` has not reached [`Part::End`],
/// `next_frame` and commands fail with [`HubError::InsideFrame`]. The hub's replies and pings
/// between frames are handled as with `next_frame`. [`publish_files`](Self::publish_files) sends
/// files from disk through a bounded buffer.
///
/// # Examples
/// ```no_run
/// use tej_hub::hub::{HubClient, HubError};
/// use tej_hub::{Frame, Status};
///
/// # async fn run() -> Result<(), HubError> {
/// let mut subscriber = HubClient::connect("127.0.0.1:8000").await?;
/// let codes = subscriber.subscribe("5, 10-12").await?;
/// assert_eq!(codes.to_string(), "5,10-12");
///
/// let mut publisher = HubClient::connect("127.0.0.1:8000").await?;
/// let status = Status::new(5).expect("5 is a custom status");
/// publisher.publish(Frame::message(status, "hello")).await?;
///
/// while let Some(frame) = subscriber.next_frame().await? {
///     println!("{frame}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct HubClient<S = TcpStream> {
    framed: Framed<S, ClientCodec>,
    /// Relayed frames read while a command waited for its reply, oldest first.
    relayed: VecDeque<Frame>,
    /// The parts of a kept frame that [`HubClient::next_part`] has started to hand out.
    replay: VecDeque<Part>,
    /// Replies the hub still owes: commands handed to the codec whose reply has not been read.
    /// More than one only after a command call was cancelled while waiting.
    owed: usize,
    /// `OK STORED` outcomes read before [`HubClient::next_stored`] asked for them, oldest first.
    stored: VecDeque<(Status, u64)>,
    /// The `MSG` notice read for the frame that comes next.
    notice: Option<Delivery>,
    /// The `MSG` notice of the frame handed out last (`None`: not a durable delivery).
    delivery: Option<Delivery>,
}

/// A durable delivery's notice (`MSG <name> <code> <seq>`): which cursor, code and sequence
/// number the frame that follows it is, to acknowledge with [`HubClient::ack`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The durable subscription's (cursor's) name.
    pub name: GroupName,
    /// The code.
    pub status: Status,
    /// The frame's sequence number in the code's log.
    pub seq: u64,
}

/// What a control frame read outside a command's reply is.
enum Notice {
    /// `MSG`: a durable frame follows.
    Msg(Delivery),
    /// `OK STORED`: a published frame is stored.
    Stored(Status, u64),
}

/// `frame` as a notice, if it is one: notices are never replies to commands.
fn notice_of(frame: &Frame) -> Option<Notice> {
    if frame.status != CONTROL {
        return None;
    }
    match Reply::parse(&frame.message).ok()? {
        Reply::Msg { name, status, seq } => Some(Notice::Msg(Delivery { name, status, seq })),
        Reply::Stored { status, seq } => Some(Notice::Stored(status, seq)),
        _ => None,
    }
}

impl HubClient {
    /// Connects to the hub at `addr`, with the default codec [`Limits`](crate::Limits): frames of
    /// up to 64 MiB for [`next_frame`](Self::next_frame), which holds a frame whole (the hub
    /// relays up to 16 GiB by default; read larger ones with [`next_part`](Self::next_part) and
    /// [`connect_with_limits`](Self::connect_with_limits)).
    ///
    /// # Errors
    /// [`HubError::Io`]: the connect error.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<HubClient, HubError> {
        HubClient::connect_with_limits(addr, Limits::default()).await
    }

    /// Connects to the hub at `addr` with `limits` for what it receives and publishes (e.g. a
    /// larger `max_frame_bytes` for files that are streamed with
    /// [`next_part`](Self::next_part) and [`publish_files`](Self::publish_files)).
    ///
    /// # Errors
    /// [`HubError::Io`]: the connect error.
    pub async fn connect_with_limits(
        addr: impl ToSocketAddrs,
        limits: Limits,
    ) -> Result<HubClient, HubError> {
        let config = ConnectionConfig {
            limits,
            ..ConnectionConfig::default()
        };
        let framed = crate::client::Client::connect(addr)
            .await?
            .with_config(config)
            .into_framed();
        Ok(HubClient::from_framed(framed))
    }

    /// Connects to the hub at `addr` as `options` say: TLS, and `AUTH` right after connecting.
    ///
    /// # Errors
    /// [`HubError::Io`]: the connect or the TLS handshake failed; what
    /// [`command`](Self::command) returns for the `AUTH` (a wrong password:
    /// [`HubError::Closed`] with the hub's reason).
    ///
    /// # Examples
    /// ```no_run
    /// use tej_hub::hub::{Credentials, HubClient, HubOptions};
    /// use tej_hub::ClientTls;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let options = HubOptions {
    ///     tls: Some((ClientTls::with_ca_file("ca.pem".as_ref())?, "localhost".into())),
    ///     credentials: Some(Credentials::new("alice", "wonder land")),
    ///     ..HubOptions::default()
    /// };
    /// let mut client = HubClient::connect_with("127.0.0.1:8000", &options).await?;
    /// client.subscribe("5").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        options: &HubOptions,
    ) -> Result<HubClient<MaybeTls>, HubError> {
        let config = ConnectionConfig {
            limits: options.limits,
            ..ConnectionConfig::default()
        };
        let client = crate::client::Client::connect(addr).await?;
        let peer = client.peer_addr();
        let tcp = client.into_framed().into_inner();
        let stream = match &options.tls {
            None => MaybeTls::Plain(tcp),
            Some((tls, server_name)) => {
                MaybeTls::Tls(Box::new(tls.handshake(tcp, server_name).await?))
            }
        };
        let framed = crate::client::Client::from_stream(stream, peer)
            .with_config(config)
            .into_framed();
        let mut client = HubClient::from_framed(framed);
        if let Some(credentials) = &options.credentials {
            let auth = Command::Auth {
                user: credentials.user.clone(),
                password: Password::new(credentials.password.clone()),
            };
            client.command(&auth.message()).await?;
        }
        Ok(client)
    }
}

/// How [`HubClient::connect_with`] reaches a hub.
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    /// What the client receives and publishes at most.
    pub limits: Limits,
    /// TLS: whom to trust, and the name the hub's certificate must carry.
    pub tls: Option<(ClientTls, String)>,
    /// Who to authenticate as, right after connecting.
    pub credentials: Option<Credentials>,
}

/// A user name and password for `AUTH`; `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    user: String,
    password: String,
}

impl Credentials {
    /// `user` with `password` (the hub takes the rest of the `AUTH` line as the password).
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> HubClient<S> {
    /// A hub client over a connection already set up, e.g. from
    /// [`Client::into_framed`](crate::Client::into_framed) with other limits. Nothing must have
    /// been sent on it that the hub still answers.
    pub fn from_framed(framed: Framed<S, TejCodec>) -> HubClient<S> {
        HubClient {
            framed: framed.map_codec(ClientCodec::new),
            relayed: VecDeque::new(),
            stored: VecDeque::new(),
            notice: None,
            delivery: None,
            replay: VecDeque::new(),
            owed: 0,
        }
    }

    /// The limits this client enforces on what it receives and publishes.
    pub fn limits(&self) -> Limits {
        self.framed.codec().frames.limits()
    }

    /// Relayed frames received while commands waited and not yet returned by
    /// [`next_frame`](Self::next_frame) or started by [`next_part`](Self::next_part).
    pub fn buffered(&self) -> usize {
        self.relayed.len()
    }

    /// Subscribes to `codes` (`SUB <codes>`: numbers, ranges `a-b`, separated by spaces or commas,
    /// or `*` for every relayable code) and returns the set the hub acknowledged.
    ///
    /// # Errors
    /// [`HubError::Refused`] with the hub's reason (bad list, reserved code 2 or 127), found
    /// before sending; the connection stays usable. Otherwise as [`command`](Self::command), and
    /// [`HubError::UnexpectedReply`] when the acknowledgement is not `OK SUB <list>`.
    pub async fn subscribe(&mut self, codes: &str) -> Result<CodeSet, HubError> {
        self.subscribe_with(codes, SubOptions::default()).await
    }

    /// Joins queue group `group` for `codes` (`SUB <codes> group=<group>`): each frame on them
    /// goes to one member of the group (docs/hub.md, "Queue groups"). Returns the set the hub
    /// acknowledged.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe); a bad group name is refused before sending, and the
    /// hub refuses a group the user may not join (`permission denied: group <name>`).
    pub async fn subscribe_group(&mut self, codes: &str, group: &str) -> Result<CodeSet, HubError> {
        let group = group
            .parse()
            .map_err(|error: ControlError| HubError::Refused(error.to_string()))?;
        self.subscribe_with(codes, SubOptions::group(group)).await
    }

    /// Sends `SUB <codes>` with `options` and returns the set the hub acknowledged.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe), with `OK SUB <list>` and the same options expected.
    pub async fn subscribe_with(
        &mut self,
        codes: &str,
        options: SubOptions,
    ) -> Result<CodeSet, HubError> {
        match self
            .request_codes(Command::Sub, codes, options.clone())
            .await?
        {
            Reply::Sub(set, acked) if acked == options => Ok(set),
            reply => Err(unexpected(&reply)),
        }
    }

    /// Unsubscribes from `codes` (`UNSUB <codes>`, same list syntax as
    /// [`subscribe`](Self::subscribe)) and returns the set the hub acknowledged. Group
    /// memberships stay: [`unsubscribe_with`](Self::unsubscribe_with) leaves a group.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe), with `OK UNSUB <list>` expected.
    pub async fn unsubscribe(&mut self, codes: &str) -> Result<CodeSet, HubError> {
        self.unsubscribe_with(codes, SubOptions::default()).await
    }

    /// Sends `UNSUB <codes>` with `options` (`group=<name>` leaves that group for the codes) and
    /// returns the set the hub acknowledged.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe), with `OK UNSUB <list>` and the same options expected.
    pub async fn unsubscribe_with(
        &mut self,
        codes: &str,
        options: SubOptions,
    ) -> Result<CodeSet, HubError> {
        match self
            .request_codes(Command::Unsub, codes, options.clone())
            .await?
        {
            Reply::Unsub(set, acked) if acked == options => Ok(set),
            reply => Err(unexpected(&reply)),
        }
    }

    /// Sends the code-list command `command(codes, options)`, or refuses a list the hub would
    /// refuse with its reason.
    async fn request_codes(
        &mut self,
        command: fn(CodeSet, SubOptions) -> Command,
        codes: &str,
        options: SubOptions,
    ) -> Result<Reply, HubError> {
        let codes = codes
            .parse()
            .map_err(|error: ControlError| HubError::Refused(error.to_string()))?;
        self.command(&command(codes, options).message()).await
    }

    /// Whether this connection receives its own publications on codes it subscribes to
    /// (`ECHO on|off`; off when connected).
    ///
    /// # Errors
    /// As [`command`](Self::command), and [`HubError::UnexpectedReply`] when the acknowledgement
    /// is not `OK ECHO on|off` as asked.
    pub async fn set_echo(&mut self, on: bool) -> Result<(), HubError> {
        match self.command(&Command::Echo(on).message()).await? {
            Reply::Echo(echo) if echo == on => Ok(()),
            reply => Err(unexpected(&reply)),
        }
    }

    /// The hub's view of this session (`INFO`): the hub version, session id, peer,
    /// subscriptions, echo, limits and counters ([`Info`] documents each).
    ///
    /// # Errors
    /// As [`command`](Self::command), and [`HubError::UnexpectedReply`] when the reply is not
    /// `OK INFO <json>` with the JSON of an [`Info`].
    pub async fn info(&mut self) -> Result<Info, HubError> {
        match self.command(&Command::Info.message()).await? {
            Reply::Info(info) => Ok(*info),
            reply => Err(unexpected(&reply)),
        }
    }

    /// Whether each frame this connection publishes on a durable code is acknowledged once
    /// stored (`PUBACK on|off`): read the outcomes with [`next_stored`](Self::next_stored).
    ///
    /// # Errors
    /// As [`command`](Self::command) (`ERR no durable codes on this hub`), and
    /// [`HubError::UnexpectedReply`] when the acknowledgement is not `OK PUBACK on|off`.
    pub async fn set_puback(&mut self, on: bool) -> Result<(), HubError> {
        match self.command(&Command::Puback(on).message()).await? {
            Reply::Puback(puback) if puback == on => Ok(()),
            reply => Err(unexpected(&reply)),
        }
    }

    /// The next published frame's outcome under `PUBACK on`: its code and sequence number once
    /// stored (`OK STORED <code> <seq>`), in publication order. Relayed frames and `MSG`
    /// notices read meanwhile are kept for [`next_frame`](Self::next_frame).
    ///
    /// # Errors
    /// [`HubError::Refused`] with the hub's reason when it refused to store the frame (`store
    /// full`, ...); [`HubError::Closed`] when the connection ended; [`HubError::Io`],
    /// [`HubError::Codec`] as for [`next_frame`](Self::next_frame).
    pub async fn next_stored(&mut self) -> Result<(Status, u64), HubError> {
        if let Some(stored) = self.stored.pop_front() {
            return Ok(stored);
        }
        if self.framed.codec().relayed_mid_frame() {
            return Err(HubError::InsideFrame);
        }
        self.flush_cancelled_command().await?;
        self.framed.codec_mut().mode = Mode::Frames;
        loop {
            let Some(incoming) = self.framed.next().await.transpose()? else {
                return Err(HubError::Closed { reason: None });
            };
            let Incoming::Frame(frame) = incoming else {
                return Err(HubError::InsideFrame);
            };
            match notice_of(&frame) {
                Some(Notice::Stored(status, seq)) => return Ok((status, seq)),
                Some(Notice::Msg(_)) => self.relayed.push_back(frame),
                None if frame.status == CONTROL && self.owed > 0 => self.owed -= 1,
                None if frame.status == CONTROL => {
                    parse_reply(&frame.message).and_then(|reply| Err(unexpected(&reply)))?
                }
                None if frame.status == Status::PING => {}
                None => self.relayed.push_back(frame),
            }
        }
    }

    /// Attaches to the durable subscription `name` over `codes` (`SUB <codes> durable=<name>
    /// [from=...]`; `from` places a new cursor, default `new`): the codes' stored frames follow,
    /// each announced by a notice ([`delivery`](Self::delivery)) and to be acknowledged with
    /// [`ack`](Self::ack). Returns the set the hub acknowledged.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe); a bad name is refused before sending; the hub refuses
    /// a code that is not durable or a cursor another session holds.
    pub async fn subscribe_durable(
        &mut self,
        codes: &str,
        name: &str,
        from: Option<StartAt>,
    ) -> Result<CodeSet, HubError> {
        let name = name
            .parse()
            .map_err(|error: ControlError| HubError::Refused(error.to_string()))?;
        let options = SubOptions {
            durable: Some(name),
            from,
            ..SubOptions::default()
        };
        self.subscribe_with(codes, options).await
    }

    /// The `MSG` notice of the frame [`next_frame`](Self::next_frame) or
    /// [`next_part`](Self::next_part) (from its `Head`) handed out last; `None` when that frame
    /// is not a durable delivery.
    pub fn delivery(&self) -> Option<&Delivery> {
        self.delivery.as_ref()
    }

    /// Acknowledges every frame of `delivery`'s cursor and code up to its sequence number
    /// (`ACK <name> <code> <seq>`, cumulative). The hub answers nothing on success; a refusal
    /// (`ERR durable <name> not attached ...`) is reported by the next read, as any `ERR` no
    /// command asked for.
    ///
    /// # Errors
    /// [`HubError::Io`]: the write failed.
    pub async fn ack(&mut self, delivery: &Delivery) -> Result<(), HubError> {
        let command = Command::Ack {
            name: delivery.name.clone(),
            status: delivery.status,
            seq: delivery.seq,
        };
        self.framed
            .send(Frame::message(CONTROL, command.message()))
            .await?;
        Ok(())
    }

    /// Sends the control command `text` as is and waits for its reply (any but `ERR`).
    ///
    /// # Errors
    /// - [`HubError::Refused`]: the hub answered `ERR <reason>`; the connection stays usable.
    /// - [`HubError::Closed`]: the connection ended before the reply.
    /// - [`HubError::UnexpectedReply`]: the reply is not one of [`Reply`]'s.
    /// - [`HubError::Io`], [`HubError::Codec`]: the socket failed or the hub broke the protocol.
    /// - [`HubError::InsideFrame`]: a relayed frame is being read by parts; nothing was sent.
    pub async fn command(&mut self, text: &str) -> Result<Reply, HubError> {
        if self.framed.codec().relayed_mid_frame() {
            return Err(HubError::InsideFrame);
        }
        self.framed.codec_mut().mode = Mode::Frames;
        self.framed
            .feed(Frame::message(CONTROL, text.to_owned()))
            .await?;
        // The frame is in the codec's buffer now: it will reach the hub with the next flush, even
        // if this call is cancelled, so its reply is owed from here on.
        self.owed += 1;
        SinkExt::<Frame>::flush(&mut self.framed).await?;
        loop {
            let Some(incoming) = self.framed.next().await.transpose()? else {
                return Err(HubError::Closed { reason: None });
            };
            // Parts only come while a relayed frame is read by parts, which was ruled out above.
            let Incoming::Frame(frame) = incoming else {
                return Err(HubError::InsideFrame);
            };
            if let Some(notice) = notice_of(&frame) {
                match notice {
                    // Kept in order with the frame it announces.
                    Notice::Msg(_) => self.relayed.push_back(frame),
                    Notice::Stored(status, seq) => self.stored.push_back((status, seq)),
                }
            } else if frame.status == CONTROL {
                self.owed = self.owed.saturating_sub(1);
                if self.owed == 0 {
                    return parse_reply(&frame.message);
                }
                // The reply to a command whose call was cancelled.
            } else if frame.status != Status::PING {
                self.relayed.push_back(frame);
            }
        }
    }

    /// Publishes `frame` to every other session subscribed to its status.
    ///
    /// The protocol has no acknowledgement for publications: this returns once the frame is
    /// written to the socket, not when the hub has relayed it. A frame the hub refuses (e.g. over
    /// its frame limit) makes it close the connection, saying why: the next
    /// [`next_frame`](Self::next_frame) reports [`HubError::Closed`] with the reason, and
    /// [`close`](Self::close) waits for the hub to have read everything.
    ///
    /// # Errors
    /// - [`HubError::ReservedStatus`]: status 2 (PING) or 127 (CONTROL); nothing is sent.
    /// - [`HubError::Codec`]: the frame breaks this client's limits; nothing is sent.
    /// - [`HubError::Io`]: the write failed.
    pub async fn publish(&mut self, frame: Frame) -> Result<(), HubError> {
        if frame.status == CONTROL || frame.status == Status::PING {
            return Err(HubError::ReservedStatus(frame.status));
        }
        self.framed.send(frame).await?;
        Ok(())
    }

    /// The next relayed frame: first those kept while commands waited, then from the socket.
    /// `Ok(None)` once the hub has closed the connection. The hub's ping answers are skipped.
    ///
    /// Cancel safe: if the future is dropped before it completes, no frame is lost.
    ///
    /// # Errors
    /// - [`HubError::Closed`] with the reason when the hub says why it is closing the connection
    ///   (`ERR slow consumer`, `ERR idle timeout`, a protocol error); the next call returns
    ///   `Ok(None)`.
    /// - [`HubError::UnexpectedReply`]: an `OK` no command asked for.
    /// - [`HubError::Io`], [`HubError::Codec`]: the socket failed or the hub broke the protocol.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, HubError> {
        if !self.replay.is_empty() || self.framed.codec().relayed_mid_frame() {
            return Err(HubError::InsideFrame);
        }
        while let Some(frame) = self.relayed.pop_front() {
            if let Some(frame) = self.unsolicited(frame)? {
                return Ok(Some(frame));
            }
        }
        self.flush_cancelled_command().await?;
        self.framed.codec_mut().mode = Mode::Frames;
        loop {
            let Some(incoming) = self.framed.next().await.transpose()? else {
                return Ok(None);
            };
            match incoming {
                Incoming::Frame(frame) => {
                    if let Some(frame) = self.unsolicited(frame)? {
                        return Ok(Some(frame));
                    }
                }
                // Only while a frame is read by parts, which was ruled out above.
                Incoming::Part(_) => return Err(HubError::InsideFrame),
            }
        }
    }

    /// The next part of a relayed frame: first the parts of frames kept while commands waited,
    /// then from the socket as the bytes arrive. `Ok(None)` once the hub has closed the connection
    /// between frames. The hub's ping answers are skipped; its control frames are handled as by
    /// [`next_frame`](Self::next_frame).
    ///
    /// Memory stays bounded by a chunk (see [`PartCodec`]) whatever the frame's size; a
    /// [`Part::FileData`] chunk is a slice of the read buffer.
    ///
    /// Cancel safe: if the future is dropped before it completes, no part is lost.
    ///
    /// # Errors
    /// - [`HubError::Codec`] with [`CodecError::Truncated`]: the connection ended inside a frame
    ///   (e.g. the hub relays a frame as it arrives and its publisher died); the parts that did
    ///   arrive have been returned, the frame is incomplete.
    /// - Otherwise as [`next_frame`](Self::next_frame).
    ///
    /// # Examples
    /// ```no_run
    /// use tej_hub::hub::{HubClient, HubError};
    /// use tej_hub::stream::Part;
    ///
    /// # async fn run() -> Result<(), HubError> {
    /// let mut client = HubClient::connect("127.0.0.1:8000").await?;
    /// client.subscribe("5").await?;
    /// let mut received = 0u64;
    /// while let Some(part) = client.next_part().await? {
    ///     match part {
    ///         Part::FileStart { name, len, .. } => println!("{name}: {len} bytes"),
    ///         Part::FileData(chunk) => received += chunk.len() as u64,
    ///         Part::End => break,
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next_part(&mut self) -> Result<Option<Part>, HubError> {
        if let Some(part) = self.replay.pop_front() {
            return Ok(Some(part));
        }
        while let Some(frame) = self.relayed.pop_front() {
            if let Some(frame) = self.unsolicited(frame)? {
                self.replay = Part::of_frame(&frame).into();
                return Ok(self.replay.pop_front());
            }
        }
        self.flush_cancelled_command().await?;
        self.framed.codec_mut().mode = Mode::Parts;
        loop {
            let Some(incoming) = self.framed.next().await.transpose()? else {
                return Ok(None);
            };
            match incoming {
                Incoming::Part(part) => {
                    if let Part::Head { .. } = part {
                        self.delivery = self.notice.take();
                    }
                    return Ok(Some(part));
                }
                // A control or ping frame, collected whole by the codec.
                Incoming::Frame(frame) => {
                    if let Some(frame) = self.unsolicited(frame)? {
                        self.replay = Part::of_frame(&frame).into();
                        return Ok(self.replay.pop_front());
                    }
                }
            }
        }
    }

    /// Sends a command whose call was cancelled between handing its frame to the codec and
    /// flushing it.
    async fn flush_cancelled_command(&mut self) -> Result<(), HubError> {
        if !self.framed.write_buffer().is_empty() {
            SinkExt::<Frame>::flush(&mut self.framed).await?;
        }
        Ok(())
    }

    /// A frame read outside a command: `Some` for a relayed frame, `None` for what is skipped (a
    /// ping answer, the reply to a cancelled command), or the error a control frame stands for.
    fn unsolicited(&mut self, frame: Frame) -> Result<Option<Frame>, HubError> {
        match notice_of(&frame) {
            Some(Notice::Msg(delivery)) => {
                self.notice = Some(delivery);
                return Ok(None);
            }
            Some(Notice::Stored(status, seq)) => {
                self.stored.push_back((status, seq));
                return Ok(None);
            }
            None => {}
        }
        if frame.status == CONTROL {
            if self.owed > 0 {
                // The reply to a command whose call was cancelled.
                self.owed -= 1;
                return Ok(None);
            }
            return Err(match parse_reply(&frame.message) {
                Err(HubError::Refused(reason)) => HubError::Closed {
                    reason: Some(reason),
                },
                Ok(reply) => unexpected(&reply),
                Err(error) => error,
            });
        }
        if frame.status == Status::PING {
            return Ok(None);
        }
        self.delivery = self.notice.take();
        Ok(Some(frame))
    }

    /// Publishes a frame whose files are read from disk as they are sent, through a bounded
    /// buffer ([`FileFrame`]): `files` are opened and measured first, checked against this
    /// client's [limits](Self::limits), then streamed. `progress` is called with the frame's
    /// bytes written so far. Returns the frame's length.
    ///
    /// As with [`publish`](Self::publish), this returns once the frame is written.
    ///
    /// # Errors
    /// - Before anything is sent: [`HubError::ReservedStatus`]; [`HubError::File`] with
    ///   [`StreamError::Open`] or [`StreamError::NotAFile`]; [`HubError::Codec`] for a frame
    ///   over the limits or a name over 65,535 bytes.
    /// - While sending: [`HubError::File`] ([`StreamError::Read`], [`StreamError::FileShrank`],
    ///   [`StreamError::FileGrew`]) or [`HubError::Io`]. The frame is then unfinished, so the
    ///   client shuts its sending side: the hub sees the frame cut short and closes the
    ///   connection. Only reading (e.g. the hub's reason) is still possible.
    ///
    /// # Examples
    /// ```no_run
    /// use tej_hub::hub::{HubClient, HubError};
    /// use tej_hub::stream::FileSource;
    /// use tej_hub::{Limits, Status};
    ///
    /// # async fn run() -> Result<(), HubError> {
    /// let limits = Limits { max_frame_bytes: 1 << 32, ..Limits::default() };
    /// let mut client = HubClient::connect_with_limits("127.0.0.1:8000", limits).await?;
    /// let files = [FileSource::new("disk.img", "/tmp/disk.img")];
    /// let status = Status::new(5).expect("5 is a custom status");
    /// client.publish_files(status, &files, "nightly", |sent| eprintln!("{sent} bytes")).await?;
    /// client.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_files(
        &mut self,
        status: Status,
        files: &[FileSource],
        message: impl Into<Bytes>,
        progress: impl FnMut(u64),
    ) -> Result<u64, HubError> {
        if status == CONTROL || status == Status::PING {
            return Err(HubError::ReservedStatus(status));
        }
        let frame = FileFrame::open(status, files, message).await?;
        self.publish_file_frame(frame, progress).await
    }

    /// [`publish_files`](Self::publish_files) for a frame already opened, e.g. to size a progress
    /// display from [`FileFrame::encoded_len`] first.
    ///
    /// # Errors
    /// As [`publish_files`](Self::publish_files).
    pub async fn publish_file_frame(
        &mut self,
        frame: FileFrame,
        progress: impl FnMut(u64),
    ) -> Result<u64, HubError> {
        let status = frame.status();
        if status == CONTROL || status == Status::PING {
            return Err(HubError::ReservedStatus(status));
        }
        frame.check(&self.limits())?;
        // What the codec holds goes first (a cancelled command): frames never interleave.
        SinkExt::<Frame>::flush(&mut self.framed).await?;
        match frame.write_to(self.framed.get_mut(), progress).await {
            Ok(len) => Ok(len),
            Err(error) => {
                // The frame is unfinished: nothing more may be sent on this connection, and the
                // hub must see it end (a truncated frame) rather than wait for the rest.
                let _ = self.framed.get_mut().shutdown().await;
                Err(error.into())
            }
        }
    }

    /// Ends the connection gracefully: sends what is buffered, tells the hub that nothing more
    /// follows (TCP half-close), and waits until the hub closes its side, which it does after
    /// handling every frame sent before. Relayed frames that arrive meanwhile, and those still
    /// kept, are discarded.
    ///
    /// # Errors
    /// [`HubError::Closed`] with the reason when the hub refused something before closing (e.g.
    /// a frame over its limit); [`HubError::Io`] or [`HubError::Codec`] when the socket failed.
    pub async fn close(mut self) -> Result<(), HubError> {
        // When the write side has failed (the hub closed first, e.g. after refusing a frame), what
        // the hub said before closing is still readable and says more than the write error.
        let shut = SinkExt::<Frame>::close(&mut self.framed).await;
        loop {
            let frame = match self.framed.next().await {
                None => return shut.map_err(HubError::from),
                Some(Ok(Incoming::Frame(frame))) => frame,
                Some(Ok(Incoming::Part(_))) => continue,
                Some(Err(error)) => return Err(shut.err().unwrap_or(error).into()),
            };
            if frame.status != CONTROL {
                continue;
            }
            if self.owed > 0 {
                self.owed -= 1;
            } else if let Err(HubError::Refused(reason)) = parse_reply(&frame.message) {
                return Err(HubError::Closed {
                    reason: Some(reason),
                });
            }
        }
    }
}

/// How [`ClientCodec`] reads the next frame that begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Whole frames ([`TejCodec`]): commands and [`HubClient::next_frame`].
    Frames,
    /// Parts ([`PartCodec`]): [`HubClient::next_part`].
    Parts,
}

/// What [`ClientCodec`] decodes.
#[derive(Debug)]
enum Incoming {
    /// A whole frame: any frame in [`Mode::Frames`], a control or ping frame in [`Mode::Parts`].
    Frame(Frame),
    /// A part of a relayed frame.
    Part(Part),
}

/// A control or ping frame met while reading parts, collected whole for the client to handle.
#[derive(Debug)]
struct Collecting {
    status: Status,
    version: u8,
    /// Its message so far (bounded by the limits' `max_message_bytes`, checked by the decoder).
    message: BytesMut,
}

/// The client's codec: whole frames or parts, switched only between frames.
///
/// Both decoders share the connection's one read buffer. A frame started by one decoder is
/// finished by it: the part decoder's progress lives in the decoder, so a frame it started is
/// always read to its end as parts (and a control frame among them collected whole). A frame the
/// frame decoder started is still whole in the read buffer ([`TejCodec`] splits a frame off only
/// once complete), so switching to parts restarts it there with a fresh frame decoder.
#[derive(Debug)]
struct ClientCodec {
    frames: TejCodec,
    parts: PartCodec,
    mode: Mode,
    collecting: Option<Collecting>,
}

impl ClientCodec {
    fn new(frames: TejCodec) -> ClientCodec {
        ClientCodec {
            parts: PartCodec::new(frames.limits()),
            frames,
            mode: Mode::Frames,
            collecting: None,
        }
    }

    /// Whether a relayed frame has been started as parts and not finished.
    fn relayed_mid_frame(&self) -> bool {
        self.parts.is_mid_frame() && self.collecting.is_none()
    }

    fn decode_any(
        &mut self,
        src: &mut BytesMut,
        eof: bool,
    ) -> Result<Option<Incoming>, CodecError> {
        if self.mode == Mode::Parts || self.parts.is_mid_frame() {
            return self.decode_parts(src, eof);
        }
        let frame = if eof {
            self.frames.decode_eof(src)?
        } else {
            self.frames.decode(src)?
        };
        Ok(frame.map(Incoming::Frame))
    }

    fn decode_parts(
        &mut self,
        src: &mut BytesMut,
        eof: bool,
    ) -> Result<Option<Incoming>, CodecError> {
        if !self.parts.is_mid_frame() && self.frames.is_mid_frame() {
            self.frames = TejCodec::new(self.frames.limits());
        }
        loop {
            let part = if eof {
                self.parts.decode_eof(src)
            } else {
                self.parts.decode(src)
            };
            let part = match part {
                Ok(Some(part)) => part,
                Ok(None) => return Ok(None),
                Err(error) => {
                    self.collecting = None;
                    return Err(error);
                }
            };
            if let Some(collecting) = &mut self.collecting {
                match part {
                    Part::MessageData(chunk) => collecting.message.extend_from_slice(&chunk),
                    Part::End => {
                        let Some(done) = self.collecting.take() else {
                            continue;
                        };
                        return Ok(Some(Incoming::Frame(Frame {
                            status: done.status,
                            version: done.version,
                            // The hub's replies and pings carry none; any are dropped.
                            files: Vec::new(),
                            message: done.message.freeze(),
                        })));
                    }
                    _ => {}
                }
                continue;
            }
            match part {
                Part::Head {
                    status, version, ..
                } if status == CONTROL || status == Status::PING => {
                    self.collecting = Some(Collecting {
                        status,
                        version,
                        message: BytesMut::new(),
                    });
                }
                part => return Ok(Some(Incoming::Part(part))),
            }
        }
    }
}

impl Decoder for ClientCodec {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        self.decode_any(src, false)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        self.decode_any(src, true)
    }
}

impl Encoder<Frame> for ClientCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.frames.encode(&frame, dst)
    }
}

/// The reply a control message stands for: `ERR` is [`HubError::Refused`], a message that is no
/// [`Reply`] [`HubError::UnexpectedReply`].
fn parse_reply(message: &[u8]) -> Result<Reply, HubError> {
    match Reply::parse(message) {
        Ok(Reply::Err(reason)) => Err(HubError::Refused(reason)),
        Ok(reply) => Ok(reply),
        Err(_) => Err(HubError::UnexpectedReply(
            String::from_utf8_lossy(message).into_owned(),
        )),
    }
}

/// A reply that is not the one the command expects.
fn unexpected(reply: &Reply) -> HubError {
    HubError::UnexpectedReply(reply.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let set = |codes: &[u8]| codes.iter().filter_map(|c| Status::new(*c)).collect();
        assert_eq!(
            parse_reply(b"OK SUB 5,7-9").ok(),
            Some(Reply::Sub(set(&[5, 7, 8, 9]), SubOptions::default()))
        );
        assert_eq!(
            parse_reply(b"OK UNSUB").ok(),
            Some(Reply::Unsub(CodeSet::empty(), SubOptions::default()))
        );
        assert!(matches!(
            parse_reply(b"ERR reserved code 2"),
            Err(HubError::Refused(reason)) if reason == "reserved code 2"
        ));
        assert!(matches!(parse_reply(b"ERR"), Err(HubError::Refused(reason)) if reason.is_empty()));
        assert!(matches!(
            parse_reply(b"OKAY"),
            Err(HubError::UnexpectedReply(text)) if text == "OKAY"
        ));
        assert!(matches!(
            parse_reply(b"OK \xff"),
            Err(HubError::UnexpectedReply(text)) if text == "OK \u{fffd}"
        ));
        assert!(matches!(
            parse_reply(b"OK SUB 2"),
            Err(HubError::UnexpectedReply(text)) if text == "OK SUB 2"
        ));
    }

    /// Decodes everything `codec` yields from `buf`.
    fn drain(codec: &mut ClientCodec, buf: &mut BytesMut) -> Vec<Incoming> {
        let mut out = Vec::new();
        while let Ok(Some(item)) = codec.decode(buf) {
            out.push(item);
        }
        out
    }

    #[test]
    fn a_frame_started_whole_is_restarted_as_parts() {
        let status = Status::new(5).unwrap_or(Status::PING);
        let frame = Frame::builder(status)
            .file("f", vec![7u8; 1000])
            .message("m")
            .build();
        let wire = frame.to_wire().unwrap_or_default();
        let mut codec = ClientCodec::new(TejCodec::default());
        let mut buf = BytesMut::from(&wire[..500]);
        assert!(drain(&mut codec, &mut buf).is_empty());
        assert!(codec.frames.is_mid_frame());

        codec.mode = Mode::Parts;
        buf.extend_from_slice(&wire[500..]);
        let parts: Vec<Part> = drain(&mut codec, &mut buf)
            .into_iter()
            .filter_map(|item| match item {
                Incoming::Part(part) => Some(part),
                Incoming::Frame(_) => None,
            })
            .collect();
        let data: usize = parts
            .iter()
            .map(|part| match part {
                Part::FileData(chunk) => chunk.len(),
                _ => 0,
            })
            .sum();
        assert!(matches!(parts.first(), Some(Part::Head { files: 1, .. })));
        assert_eq!(parts.last(), Some(&Part::End));
        assert_eq!(data, 1000);
        assert!(!codec.relayed_mid_frame());
    }

    #[test]
    fn control_frames_among_parts_come_out_whole() {
        let status = Status::new(5).unwrap_or(Status::PING);
        let mut buf = BytesMut::new();
        for frame in [
            Frame::message(status, "a"),
            Frame::ping(),
            Frame::message(CONTROL, "ERR bye"),
        ] {
            buf.extend_from_slice(&frame.to_wire().unwrap_or_default());
        }
        let mut codec = ClientCodec::new(TejCodec::default());
        codec.mode = Mode::Parts;
        // Fed one byte at a time: the control frame is collected across calls.
        let mut fed = BytesMut::new();
        let mut items = Vec::new();
        for byte in buf.iter() {
            fed.extend_from_slice(&[*byte]);
            items.extend(drain(&mut codec, &mut fed));
        }
        let frames: Vec<&Frame> = items
            .iter()
            .filter_map(|item| match item {
                Incoming::Frame(frame) => Some(frame),
                Incoming::Part(_) => None,
            })
            .collect();
        assert_eq!(
            frames,
            [&Frame::ping(), &Frame::message(CONTROL, "ERR bye")]
        );
        let parts = items.len() - frames.len();
        // Head, MessageStart, MessageData("a"), End.
        assert_eq!(parts, 4);
    }

    #[test]
    fn error_texts() {
        let closed = HubError::Closed {
            reason: Some("slow consumer".into()),
        };
        assert_eq!(
            closed.to_string(),
            "hub closed the connection: slow consumer"
        );
        assert_eq!(
            HubError::Closed { reason: None }.to_string(),
            "hub closed the connection"
        );
        let io = HubError::from(CodecError::Io(io::ErrorKind::BrokenPipe.into()));
        assert!(matches!(io, HubError::Io(_)));
        let codec = HubError::from(CodecError::Truncated { received: 3 });
        assert!(matches!(
            codec,
            HubError::Codec(CodecError::Truncated { received: 3 })
        ));
    }
}
