//! [`Client`]: connects to a TEJ server — over TCP, or TLS with [`Client::connect_tls`] — and runs
//! a [`Handler`] over the connection, or hands the stream over as a `Framed` stream and sink.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::codec::TejCodec;
use crate::connection::{Connection, ConnectionConfig, Disconnect, Driver};
use crate::handler::Handler;
use crate::tls::ClientTls;

/// A connected TEJ client, not yet running.
///
/// # Examples
/// ```no_run
/// use tej::{Client, Frame, Handler, Sender, Status};
///
/// struct Print;
/// impl Handler for Print {
///     async fn received(&mut self, frame: Frame, _: &Sender) {
///         println!("{} {:?}", frame.status, frame.message);
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let connection = Client::connect("127.0.0.1:8000").await?.spawn(Print);
/// connection.sender().send(Frame::message(Status::new(0).unwrap(), "hi")).await?;
/// connection.sender().close().await;
/// connection.join().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client<S = TcpStream> {
    stream: S,
    peer: SocketAddr,
    config: ConnectionConfig,
}

impl Client {
    /// Connects to `addr` with the default [`ConnectionConfig`].
    ///
    /// # Errors
    /// The connect error.
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        // Frames are written whole by one writer; Nagle would only add latency.
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        Ok(Client {
            stream,
            peer,
            config: ConnectionConfig::default(),
        })
    }

    /// Connects to `addr` and runs the TLS handshake for `server_name` (checked against the
    /// server's certificate) with `tls`.
    ///
    /// # Errors
    /// The connect error, or the handshake's.
    ///
    /// # Examples
    /// ```no_run
    /// use tej::{Client, ClientTls};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let tls = ClientTls::with_ca_file("ca.pem".as_ref())?;
    /// let framed = Client::connect_tls("127.0.0.1:8000", "localhost", &tls).await?.into_framed();
    /// # Ok(()) }
    /// ```
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        server_name: &str,
        tls: &ClientTls,
    ) -> io::Result<Client<TlsStream<TcpStream>>> {
        let Client {
            stream,
            peer,
            config,
        } = Client::connect(addr).await?;
        let stream = tls.handshake(stream, server_name).await?;
        Ok(Client {
            stream,
            peer,
            config,
        })
    }
}

impl<S> Client<S>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    /// A client over `stream`, already connected to `peer` (e.g. through a proxy or a TLS
    /// library of your own).
    pub fn from_stream(stream: S, peer: SocketAddr) -> Client<S> {
        Client {
            stream,
            peer,
            config: ConnectionConfig::default(),
        }
    }

    /// Uses `config` (limits, keep-alive ping, idle timeout) for this connection.
    pub fn with_config(mut self, config: ConnectionConfig) -> Client<S> {
        self.config = config;
        self
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The plain `Stream`/`Sink` of frames over this stream, with this client's limits.
    pub fn into_framed(self) -> Framed<S, TejCodec> {
        Framed::new(self.stream, TejCodec::new(self.config.limits))
    }

    /// Runs `handler` in a new task; the returned [`Connection`] sends frames and waits for the
    /// end.
    pub fn spawn<H: Handler>(self, handler: H) -> Connection {
        Connection::spawn(self.stream, self.peer, self.config, handler)
    }

    /// Runs `handler` on the current task until the connection ends, and says why it ended.
    pub async fn run<H: Handler>(self, handler: H) -> Disconnect {
        let (driver, _sender) = Driver::new(
            self.stream,
            self.peer,
            self.config,
            CancellationToken::new(),
        );
        driver.run(handler).await
    }
}
