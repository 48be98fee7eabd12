//! [`HubClient`]: the client side of a tej-hub over one TEJ connection — control commands matched
//! with their replies, publications, and the relayed frames, none of which is lost while a command
//! waits for its reply. [`HubError`] says what went wrong.
//!
//! The hub answers control commands (status 127) in the order they were sent, but its replies and
//! the frames it relays share one socket: a relayed frame may arrive before the reply a command is
//! waiting for. The client keeps such frames, in order, and hands them out from
//! [`HubClient::next_frame`] before reading the socket again.

use std::collections::VecDeque;
use std::io;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::Framed;

use crate::codec::{CodecError, TejCodec};
use crate::frame::{Frame, Status};
use crate::hub::control::{CodeSet, CONTROL};

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
    /// The hub answered the command with `ERR <reason>`; the connection stays open.
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
/// recognised as stale and skipped. [`next_frame`](Self::next_frame) is cancel safe: no frame is
/// lost.
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
pub struct HubClient {
    framed: Framed<TcpStream, TejCodec>,
    /// Relayed frames read while a command waited for its reply, oldest first.
    relayed: VecDeque<Frame>,
    /// Replies the hub still owes: commands handed to the codec whose reply has not been read.
    /// More than one only after a command call was cancelled while waiting.
    owed: usize,
}

impl HubClient {
    /// Connects to the hub at `addr`, with the default codec [`Limits`](crate::Limits) (64 MiB
    /// frames, as the hub's default).
    ///
    /// # Errors
    /// [`HubError::Io`]: the connect error.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<HubClient, HubError> {
        let framed = crate::client::Client::connect(addr).await?.into_framed();
        Ok(HubClient::from_framed(framed))
    }

    /// A hub client over a connection already set up, e.g. from
    /// [`Client::into_framed`](crate::Client::into_framed) with other limits. Nothing must have
    /// been sent on it that the hub still answers.
    pub fn from_framed(framed: Framed<TcpStream, TejCodec>) -> HubClient {
        HubClient {
            framed,
            relayed: VecDeque::new(),
            owed: 0,
        }
    }

    /// Relayed frames received and not yet returned by [`next_frame`](Self::next_frame).
    pub fn buffered(&self) -> usize {
        self.relayed.len()
    }

    /// Subscribes to `codes` (`SUB <codes>`: numbers, ranges `a-b`, separated by spaces or commas,
    /// or `*` for every relayable code) and returns the set the hub acknowledged.
    ///
    /// # Errors
    /// [`HubError::Refused`] with the hub's reason (bad list, reserved code 2 or 127); the
    /// connection stays usable. Otherwise as [`command`](Self::command), and
    /// [`HubError::UnexpectedReply`] when the acknowledgement is not `OK SUB <list>`.
    pub async fn subscribe(&mut self, codes: &str) -> Result<CodeSet, HubError> {
        let reply = self.command(&format!("SUB {codes}")).await?;
        ack_codes("SUB", &reply)
    }

    /// Unsubscribes from `codes` (`UNSUB <codes>`, same list syntax as
    /// [`subscribe`](Self::subscribe)) and returns the set the hub acknowledged.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe), with `OK UNSUB <list>` expected.
    pub async fn unsubscribe(&mut self, codes: &str) -> Result<CodeSet, HubError> {
        let reply = self.command(&format!("UNSUB {codes}")).await?;
        ack_codes("UNSUB", &reply)
    }

    /// Whether this connection receives its own publications on codes it subscribes to
    /// (`ECHO on|off`; off when connected).
    ///
    /// # Errors
    /// As [`command`](Self::command), and [`HubError::UnexpectedReply`] when the acknowledgement
    /// is not `OK ECHO on|off` as asked.
    pub async fn set_echo(&mut self, on: bool) -> Result<(), HubError> {
        let text = if on { "ECHO on" } else { "ECHO off" };
        let reply = self.command(text).await?;
        if reply == text {
            Ok(())
        } else {
            Err(HubError::UnexpectedReply(format!("OK {reply}")))
        }
    }

    /// The hub's view of this session (`INFO`): a JSON object with the hub version, session id,
    /// peer, subscriptions, echo, limits and counters.
    ///
    /// # Errors
    /// As [`command`](Self::command), and [`HubError::UnexpectedReply`] when the reply is not
    /// `OK INFO <json>`.
    pub async fn info(&mut self) -> Result<serde_json::Value, HubError> {
        let reply = self.command("INFO").await?;
        reply
            .strip_prefix("INFO ")
            .and_then(|json| serde_json::from_str(json).ok())
            .ok_or_else(|| HubError::UnexpectedReply(format!("OK {reply}")))
    }

    /// Sends the control command `text` as is and waits for its reply; returns the text after
    /// `OK ` (empty for a bare `OK`).
    ///
    /// # Errors
    /// - [`HubError::Refused`]: the hub answered `ERR <reason>`; the connection stays usable.
    /// - [`HubError::Closed`]: the connection ended before the reply.
    /// - [`HubError::UnexpectedReply`]: the reply is neither `OK ...` nor `ERR ...`.
    /// - [`HubError::Io`], [`HubError::Codec`]: the socket failed or the hub broke the protocol.
    pub async fn command(&mut self, text: &str) -> Result<String, HubError> {
        self.framed
            .feed(Frame::message(CONTROL, text.to_owned()))
            .await?;
        // The frame is in the codec's buffer now: it will reach the hub with the next flush, even
        // if this call is cancelled, so its reply is owed from here on.
        self.owed += 1;
        SinkExt::<Frame>::flush(&mut self.framed).await?;
        loop {
            let Some(frame) = self.framed.next().await.transpose()? else {
                return Err(HubError::Closed { reason: None });
            };
            if frame.status == CONTROL {
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
        if let Some(frame) = self.relayed.pop_front() {
            return Ok(Some(frame));
        }
        // A command cancelled between handing its frame to the codec and flushing it.
        if !self.framed.write_buffer().is_empty() {
            SinkExt::<Frame>::flush(&mut self.framed).await?;
        }
        loop {
            let Some(frame) = self.framed.next().await.transpose()? else {
                return Ok(None);
            };
            if frame.status == CONTROL {
                if self.owed > 0 {
                    // The reply to a command whose call was cancelled.
                    self.owed -= 1;
                    continue;
                }
                return Err(match parse_reply(&frame.message) {
                    Err(HubError::Refused(reason)) => HubError::Closed {
                        reason: Some(reason),
                    },
                    Ok(text) => HubError::UnexpectedReply(format!("OK {text}")),
                    Err(error) => error,
                });
            }
            if frame.status != Status::PING {
                return Ok(Some(frame));
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
                Some(Ok(frame)) => frame,
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

/// The text after `OK ` of a control reply, or the error it stands for.
fn parse_reply(message: &[u8]) -> Result<String, HubError> {
    let Ok(text) = std::str::from_utf8(message) else {
        return Err(HubError::UnexpectedReply(
            String::from_utf8_lossy(message).into_owned(),
        ));
    };
    match text.split_once(' ').unwrap_or((text, "")) {
        ("OK", rest) => Ok(rest.to_owned()),
        ("ERR", reason) => Err(HubError::Refused(reason.to_owned())),
        _ => Err(HubError::UnexpectedReply(text.to_owned())),
    }
}

/// The code list of the acknowledgement `<word> <list>` (`<word>` alone for an empty list).
fn ack_codes(word: &str, reply: &str) -> Result<CodeSet, HubError> {
    let unexpected = || HubError::UnexpectedReply(format!("OK {reply}"));
    let (head, list) = reply.split_once(' ').unwrap_or((reply, ""));
    if head != word {
        return Err(unexpected());
    }
    if list.is_empty() {
        return Ok(CodeSet::empty());
    }
    list.parse().map_err(|_| unexpected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply(b"OK SUB 5").ok(), Some("SUB 5".to_owned()));
        assert_eq!(parse_reply(b"OK").ok(), Some(String::new()));
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
    }

    #[test]
    fn acks() {
        let set = |codes: &[u8]| codes.iter().filter_map(|c| Status::new(*c)).collect();
        assert_eq!(ack_codes("SUB", "SUB 5,7-9").ok(), Some(set(&[5, 7, 8, 9])));
        assert_eq!(ack_codes("UNSUB", "UNSUB").ok(), Some(CodeSet::empty()));
        assert!(matches!(
            ack_codes("SUB", "UNSUB 5"),
            Err(HubError::UnexpectedReply(text)) if text == "OK UNSUB 5"
        ));
        assert!(matches!(
            ack_codes("SUB", "SUB 2"),
            Err(HubError::UnexpectedReply(_))
        ));
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
