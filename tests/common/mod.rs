//! Helpers shared by the socket tests: a [`Handler`] that forwards every event into a channel
//! (optionally echoing frames), a server started on `127.0.0.1:0`, and timeouts so that no test
//! can hang.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tej_hub::{
    Client, CodecError, Connection, ConnectionConfig, Disconnect, Frame, Handler, Sender, Server,
    Status,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long any single wait in these tests may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// One callback of a [`Handler`], as seen by [`Forward`].
#[derive(Debug)]
pub enum Event {
    /// `connected` ran.
    Connected,
    /// `received` ran with this frame.
    Received(Frame),
    /// `ping_received` ran with this frame.
    Ping(Frame),
    /// `disconnected` ran with (a copy of) this reason.
    Disconnected(Disconnect),
}

/// A handler that sends every event, tagged with its connection's peer address, into a channel;
/// with `echo`, it also sends every received (non-ping) frame back.
pub struct Forward {
    peer: SocketAddr,
    events: mpsc::UnboundedSender<(SocketAddr, Event)>,
    echo: bool,
}

impl Forward {
    /// A forwarding handler for the connection to `peer`.
    pub fn new(
        peer: SocketAddr,
        events: mpsc::UnboundedSender<(SocketAddr, Event)>,
        echo: bool,
    ) -> Forward {
        Forward { peer, events, echo }
    }

    fn emit(&self, event: Event) {
        // The test may have stopped listening; that is its business.
        let _ = self.events.send((self.peer, event));
    }
}

impl Handler for Forward {
    async fn connected(&mut self, _sender: &Sender) {
        self.emit(Event::Connected);
    }

    async fn received(&mut self, frame: Frame, sender: &Sender) {
        if self.echo {
            let _ = sender.send(frame.clone()).await;
        }
        self.emit(Event::Received(frame));
    }

    async fn ping_received(&mut self, frame: Frame, _sender: &Sender) {
        self.emit(Event::Ping(frame));
    }

    async fn disconnected(&mut self, reason: &Disconnect) {
        self.emit(Event::Disconnected(copy_disconnect(reason)));
    }
}

/// A copy of `reason` (neither `Disconnect` nor `CodecError` is `Clone`: they may hold an
/// `io::Error`). Every variant and number is kept; an I/O error keeps its kind and text.
pub fn copy_disconnect(reason: &Disconnect) -> Disconnect {
    match reason {
        Disconnect::PeerClosed => Disconnect::PeerClosed,
        Disconnect::Closed => Disconnect::Closed,
        Disconnect::IdleTimeout(after) => Disconnect::IdleTimeout(*after),
        Disconnect::Protocol(error) => Disconnect::Protocol(copy_codec_error(error)),
        Disconnect::Io(error) => Disconnect::Io(error.clone()),
        other => Disconnect::Io(io::Error::other(other.to_string()).into()),
    }
}

fn copy_codec_error(error: &CodecError) -> CodecError {
    match error {
        CodecError::InvalidStatusByte { byte } => CodecError::InvalidStatusByte { byte: *byte },
        CodecError::FrameTooLarge { len, max } => CodecError::FrameTooLarge {
            len: *len,
            max: *max,
        },
        CodecError::TooManyFiles { count, max } => CodecError::TooManyFiles {
            count: *count,
            max: *max,
        },
        CodecError::MessageTooLarge { len, max } => CodecError::MessageTooLarge {
            len: *len,
            max: *max,
        },
        CodecError::FileNameNotUtf8 { index } => CodecError::FileNameNotUtf8 { index: *index },
        CodecError::FileNameTooLong { len } => CodecError::FileNameTooLong { len: *len },
        CodecError::Truncated { received } => CodecError::Truncated {
            received: *received,
        },
        CodecError::Io(error) => CodecError::Io(io::Error::new(error.kind(), error.to_string())),
        other => CodecError::Io(io::Error::other(other.to_string())),
    }
}

/// A [`Forward`] handler for a client connected to `server`, and the receiver of its events.
pub fn forwarder(
    server: SocketAddr,
    echo: bool,
) -> (Forward, mpsc::UnboundedReceiver<(SocketAddr, Event)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Forward::new(server, tx, echo), rx)
}

/// The next event a [`forwarder`] reported, or `None` once its handler is gone.
pub async fn next_client_event(
    events: &mut mpsc::UnboundedReceiver<(SocketAddr, Event)>,
) -> Option<Event> {
    within(PATIENCE, "a client event", events.recv())
        .await
        .map(|(_, event)| event)
}

/// A client connected to `server` with `config`, running a [`forwarder`] (no echo), and the
/// receiver of its events.
pub async fn spawn_client(
    server: SocketAddr,
    config: ConnectionConfig,
) -> (Connection, mpsc::UnboundedReceiver<(SocketAddr, Event)>) {
    let (handler, events) = forwarder(server, false);
    let connection = Client::connect(server)
        .await
        .expect("connect")
        .with_config(config)
        .spawn(handler);
    (connection, events)
}

/// Expects the next event of a [`forwarder`] to be `connected`.
pub async fn expect_client_connected(events: &mut mpsc::UnboundedReceiver<(SocketAddr, Event)>) {
    assert!(matches!(
        next_client_event(events).await,
        Some(Event::Connected)
    ));
}

/// Closes a running client and waits for it to end; returns why it ended.
pub async fn close_client(connection: Connection) -> Disconnect {
    connection.sender().close().await;
    within(PATIENCE, "the client to end", connection.join()).await
}

/// A server running [`Forward`] handlers in a background task.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every handler event, tagged with the peer address of its connection.
    pub events: mpsc::UnboundedReceiver<(SocketAddr, Event)>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Starts a server with `config` on `127.0.0.1:0`; with `echo`, its handlers send every frame
/// back.
pub async fn start_server(config: ConnectionConfig, echo: bool) -> TestServer {
    let server = Server::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
        .with_config(config);
    let addr = server.local_addr().expect("bound address");
    let (tx, events) = mpsc::unbounded_channel();
    let (shutdown, stop) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_until(
        move |peer| Forward::new(peer, tx.clone(), echo),
        async move {
            let _ = stop.await;
        },
    ));
    TestServer {
        addr,
        events,
        shutdown: Some(shutdown),
        task,
    }
}

impl TestServer {
    /// The next event from any connection.
    pub async fn next_event(&mut self) -> (SocketAddr, Event) {
        within(PATIENCE, "a server event", self.events.recv())
            .await
            .expect("the server's handlers are gone")
    }

    /// The next event from the connection whose peer is `peer`, skipping other connections'.
    pub async fn next_event_from(&mut self, peer: SocketAddr) -> Event {
        loop {
            let (from, event) = self.next_event().await;
            if from == peer {
                return event;
            }
        }
    }

    /// The next event from the connection of `peer` that is not `connected`.
    pub async fn next_after_connect(&mut self, peer: SocketAddr) -> Event {
        match self.next_event_from(peer).await {
            Event::Connected => self.next_event_from(peer).await,
            other => panic!("expected `connected` first from {peer}, got {other:?}"),
        }
    }

    /// Fires the shutdown signal and waits for `serve_until` to return.
    pub async fn shut_down(mut self) -> mpsc::UnboundedReceiver<(SocketAddr, Event)> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        within(PATIENCE, "serve_until to return", self.task)
            .await
            .expect("server task panicked");
        self.events
    }
}

/// `future`'s output, or a panic naming `what` after `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// A status code for tests (any code `0..=127`).
pub fn status(code: u8) -> Status {
    Status::new(code).expect("test status codes are at most 127")
}

/// Reads from `stream` until the peer closes it (EOF or a reset), discarding data; panics if
/// that does not happen within `limit`.
pub async fn expect_closed(stream: &mut TcpStream, limit: Duration) {
    let mut scratch = [0u8; 4096];
    within(limit, "the server to close the socket", async {
        loop {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
}
