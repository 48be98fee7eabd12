//! One TEJ connection driven by a [`Handler`]: the reader loop that calls it, the single writer
//! task that owns the socket's write half, the [`Sender`] handle that feeds it, keep-alive pings
//! and the idle timeout. Shared by [`Client`](crate::Client) and [`Server`](crate::Server).
//!
//! Every frame a connection sends goes through one bounded queue to one writer, so frames sent
//! from many tasks never interleave on the wire, a full queue pushes back on the senders, and a
//! failed write is reported to whoever waits for it instead of being lost.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::codec::{CodecError, FrameBuf, Limits, TejCodec};
use crate::frame::Frame;
use crate::handler::Handler;

/// Settings of one connection, client or server side.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    /// Limits on frames read and written.
    pub limits: Limits,
    /// Send an empty ping frame (status 2) at this interval, like the reference's `Ping` thread.
    /// `None` (the default) sends none.
    pub ping_interval: Option<Duration>,
    /// Close the connection when nothing at all has arrived for this long, like the reference's
    /// socket timeout. `None` (the default) waits forever.
    pub idle_timeout: Option<Duration>,
    /// Frames that may wait for the writer before [`Sender::send`] waits too. Default 256.
    pub send_queue: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            limits: Limits::default(),
            ping_interval: None,
            idle_timeout: None,
            send_queue: 256,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Disconnect {
    /// The peer closed the connection between frames.
    #[error("peer closed the connection")]
    PeerClosed,
    /// This side closed it ([`Sender::close`] or a server shutdown).
    #[error("closed locally")]
    Closed,
    /// Nothing arrived for the configured idle timeout.
    #[error("nothing received for {0:?}")]
    IdleTimeout(Duration),
    /// The peer broke the protocol (bad status byte, a limit exceeded, a frame cut short...).
    #[error("protocol error: {0}")]
    Protocol(CodecError),
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(Arc<io::Error>),
}

impl From<CodecError> for Disconnect {
    fn from(error: CodecError) -> Self {
        match error {
            CodecError::Io(error) => Disconnect::Io(Arc::new(error)),
            other => Disconnect::Protocol(other),
        }
    }
}

/// Why a frame could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed (or closing); the frame was not sent.
    #[error("connection is closed")]
    Closed,
    /// The frame breaks the connection's limits; nothing was sent.
    #[error("frame not sent: {0}")]
    Invalid(CodecError),
    /// The socket write failed; the connection is now closed.
    #[error("write failed: {0}")]
    Io(Arc<io::Error>),
}

/// A request to the writer task.
enum Outbound {
    /// Write the frame; report the outcome if someone waits for it.
    Frame(Frame, Option<oneshot::Sender<Result<(), SendError>>>),
    /// Report once everything queued before has been written.
    Flush(oneshot::Sender<Result<(), SendError>>),
    /// Write everything queued before, then close the write side.
    Close,
}

/// A cloneable handle that sends frames on one connection.
///
/// Safe to use from many tasks at once: each frame is written whole, in the order the queue
/// accepted it.
#[derive(Clone, Debug)]
pub struct Sender {
    queue: mpsc::Sender<Outbound>,
    limits: Limits,
    peer: SocketAddr,
}

impl Sender {
    /// The remote address of this connection.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    fn check(&self, frame: &Frame) -> Result<(), SendError> {
        self.limits.check(frame).map_err(SendError::Invalid)
    }

    async fn enqueue(&self, item: Outbound) -> Result<(), SendError> {
        self.queue.send(item).await.map_err(|_| SendError::Closed)
    }

    /// Sends `frame` and waits until it has been written to the socket.
    ///
    /// # Errors
    /// [`SendError::Invalid`] if the frame breaks the limits, [`SendError::Closed`] if the
    /// connection is closed, [`SendError::Io`] if the write failed.
    pub async fn send(&self, frame: Frame) -> Result<(), SendError> {
        self.check(&frame)?;
        let (done, outcome) = oneshot::channel();
        self.enqueue(Outbound::Frame(frame, Some(done))).await?;
        outcome.await.unwrap_or(Err(SendError::Closed))
    }

    /// Queues `frame` without waiting for the write; waits only while the queue is full.
    /// A later [`flush`](Sender::flush) reports whether it was written.
    ///
    /// # Errors
    /// [`SendError::Invalid`] if the frame breaks the limits, [`SendError::Closed`] if the
    /// connection is closed.
    pub async fn feed(&self, frame: Frame) -> Result<(), SendError> {
        self.check(&frame)?;
        self.enqueue(Outbound::Frame(frame, None)).await
    }

    /// Waits until every frame queued before this call has been written.
    ///
    /// # Errors
    /// [`SendError::Closed`] or [`SendError::Io`] when the connection closed or failed first.
    pub async fn flush(&self) -> Result<(), SendError> {
        let (done, outcome) = oneshot::channel();
        self.enqueue(Outbound::Flush(done)).await?;
        outcome.await.unwrap_or(Err(SendError::Closed))
    }

    /// Closes the connection once every frame queued before has been written.
    pub async fn close(&self) {
        // Already closed is fine: that is what was asked for.
        let _ = self.enqueue(Outbound::Close).await;
    }
}

/// The handle of a connection running in its own task.
#[derive(Debug)]
pub struct Connection {
    sender: Sender,
    task: tokio::task::JoinHandle<Disconnect>,
}

impl Connection {
    /// Runs `handler` over `stream` in a new task.
    pub(crate) fn spawn<S, H>(
        stream: S,
        peer: SocketAddr,
        config: ConnectionConfig,
        handler: H,
    ) -> Connection
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
        H: Handler,
    {
        let (driver, sender) = Driver::new(stream, peer, config, CancellationToken::new());
        let task = tokio::spawn(driver.run(handler));
        Connection { sender, task }
    }

    /// A handle for sending frames on this connection.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// Waits for the connection to end and says why.
    pub async fn join(self) -> Disconnect {
        match self.task.await {
            Ok(reason) => reason,
            Err(join) => Disconnect::Io(Arc::new(io::Error::other(join))),
        }
    }
}

/// A read half that remembers when it last delivered bytes, for the idle timeout.
struct ActivityReader<R> {
    inner: R,
    last_read: Instant,
}

impl<R: AsyncRead + Unpin> AsyncRead for ActivityReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last_read = Instant::now();
        }
        polled
    }
}

/// Everything one connection runs: reader loop, writer task, timers.
pub(crate) struct Driver<S> {
    read: ReadSide<S>,
    write: tokio::io::WriteHalf<S>,
    outbound: mpsc::Receiver<Outbound>,
}

/// The reading half of a connection and what its loop needs.
struct ReadSide<S> {
    frames: FramedRead<ActivityReader<tokio::io::ReadHalf<S>>, TejCodec>,
    sender: Sender,
    config: ConnectionConfig,
    /// Cancelled when the connection must end: by the writer on failure or close, by the
    /// reader when the peer goes, or from outside (server shutdown).
    stop: CancellationToken,
}

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    /// A connection over `stream`; `stop` ends it from outside.
    pub(crate) fn new(
        stream: S,
        peer: SocketAddr,
        config: ConnectionConfig,
        stop: CancellationToken,
    ) -> (Driver<S>, Sender) {
        let (read, write) = tokio::io::split(stream);
        let (queue, outbound) = mpsc::channel(config.send_queue.max(1));
        let sender = Sender {
            queue,
            limits: config.limits,
            peer,
        };
        let frames = FramedRead::new(
            ActivityReader {
                inner: read,
                last_read: Instant::now(),
            },
            TejCodec::new(config.limits),
        );
        let read = ReadSide {
            frames,
            sender: sender.clone(),
            config,
            stop,
        };
        (
            Driver {
                read,
                write,
                outbound,
            },
            sender,
        )
    }

    /// Runs the connection to its end, calling `handler` for each event.
    pub(crate) async fn run<H: Handler>(self, mut handler: H) -> Disconnect {
        let Driver {
            mut read,
            write,
            outbound,
        } = self;
        let writer = tokio::spawn(write_loop(
            write,
            outbound,
            TejCodec::new(read.config.limits),
            read.stop.clone(),
        ));
        handler.connected(&read.sender).await;
        let reason = read.run(&mut handler).await;
        read.stop.cancel();
        let reason = match writer.await {
            // A write failure is the real cause when the reader only saw its consequence.
            Ok(Err(error)) if matches!(reason, Disconnect::Closed) => Disconnect::Io(error),
            _ => reason,
        };
        debug!(peer = %read.sender.peer, %reason, "connection ended");
        handler.disconnected(&reason).await;
        reason
    }
}

impl<S: AsyncRead> ReadSide<S> {
    async fn run<H: Handler>(&mut self, handler: &mut H) -> Disconnect {
        let idle = self.config.idle_timeout;
        let ping_every = self.config.ping_interval.unwrap_or(FOREVER);
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        // Built once: re-creating them for every frame costs a timer registration and a waiter
        // on the cancellation token each time (a third of a small frame's cost, measured).
        let cancelled = self.stop.cancelled();
        tokio::pin!(cancelled);
        let idle_sleep = tokio::time::sleep(idle.unwrap_or(FOREVER));
        tokio::pin!(idle_sleep);
        loop {
            tokio::select! {
                biased;
                () = &mut cancelled => return Disconnect::Closed,
                next = self.frames.next() => match next {
                    Some(Ok(frame)) if frame.is_ping() => handler.ping_received(frame, &self.sender).await,
                    Some(Ok(frame)) => handler.received(frame, &self.sender).await,
                    Some(Err(error)) => return error.into(),
                    // The writer stops us before it sends our FIN: an EOF after that is the
                    // peer answering our close.
                    None if self.stop.is_cancelled() => return Disconnect::Closed,
                    None => return Disconnect::PeerClosed,
                },
                () = &mut idle_sleep, if idle.is_some() => {
                    let limit = idle.unwrap_or_default();
                    let since = self.frames.get_ref().last_read.elapsed();
                    if since >= limit {
                        return Disconnect::IdleTimeout(limit);
                    }
                    idle_sleep.as_mut().reset(Instant::now() + (limit - since));
                }
                _ = ping.tick(), if self.config.ping_interval.is_some() => {
                    // A full queue means frames are flowing: no keep-alive needed then.
                    let _ = self.sender.queue.try_send(Outbound::Frame(Frame::ping(), None));
                }
            }
        }
    }
}

/// A timer period that never fires in practice (Instant arithmetic must not overflow).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Largest batch of queued frames written with one vectored write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Most requests taken from the queue in one go.
const WRITE_BATCH_FRAMES: usize = 256;

/// The one owner of a connection's write half: drains the queue in batches, writes them whole,
/// and reports each outcome.
async fn write_loop<W: AsyncWrite>(
    write: W,
    mut outbound: mpsc::Receiver<Outbound>,
    codec: TejCodec,
    stop: CancellationToken,
) -> Result<(), Arc<io::Error>> {
    tokio::pin!(write);
    let mut buf = FrameBuf::new();
    let mut waiting: Vec<oneshot::Sender<Result<(), SendError>>> = Vec::new();
    let mut batch: Vec<Outbound> = Vec::new();
    let result = loop {
        // Many requests per wake-up: one channel operation per batch, not per frame.
        let received = tokio::select! {
            received = outbound.recv_many(&mut batch, WRITE_BATCH_FRAMES) => received,
            () = stop.cancelled() => 0,
        };
        if received == 0 {
            break Ok(());
        }
        let mut closing = false;
        loop {
            for item in batch.drain(..) {
                match item {
                    Outbound::Frame(frame, done) => match buf.push(&codec, &frame) {
                        Ok(()) => waiting.extend(done),
                        // Checked by the sender already; reported, never written half.
                        Err(error) => {
                            if let Some(done) = done {
                                let _ = done.send(Err(SendError::Invalid(error)));
                            }
                        }
                    },
                    Outbound::Flush(done) => waiting.push(done),
                    Outbound::Close => {
                        // What was queued after the close is dropped: its senders hear Closed.
                        closing = true;
                        break;
                    }
                }
            }
            if closing || buf.remaining() >= WRITE_BATCH_BYTES {
                break;
            }
            match outbound.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            written = write.write_all_buf(&mut buf) => written,
            // The connection is ending for another reason; that reason is the one to report.
            () = stop.cancelled() => break Ok(()),
        };
        if let Err(error) = written {
            let error = Arc::new(error);
            for done in waiting.drain(..) {
                let _ = done.send(Err(SendError::Io(error.clone())));
            }
            break Err(error);
        }
        for done in waiting.drain(..) {
            let _ = done.send(Ok(()));
        }
        if closing {
            // Stop the reader before the peer can see our FIN and hang up in turn: the
            // connection ends because this side closed it, not because the peer did.
            stop.cancel();
            break write.shutdown().await.map_err(Arc::new);
        }
    };
    stop.cancel();
    if let Err(error) = &result {
        debug!(%error, "write failed");
    }
    result
}
