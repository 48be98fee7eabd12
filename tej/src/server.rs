//! [`Server`]: accepts TEJ connections and runs one [`Handler`] per connection, each in its own
//! task, until an optional shutdown signal.

use std::future::{pending, Future};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use crate::connection::{ConnectionConfig, Driver};
use crate::handler::Handler;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A bound TEJ server, not yet serving.
///
/// # Examples
/// ```no_run
/// use tej::{Frame, Handler, Sender, Server};
///
/// struct Echo;
/// impl Handler for Echo {
///     async fn received(&mut self, frame: Frame, sender: &Sender) {
///         let _ = sender.send(frame).await;
///     }
/// }
///
/// # async fn run() -> std::io::Result<()> {
/// let server = Server::bind("127.0.0.1:0").await?;
/// println!("listening on {}", server.local_addr()?);
/// server.serve(|_peer| Echo).await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    config: ConnectionConfig,
}

impl Server {
    /// Binds a listener on `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Server> {
        Ok(Server::from_listener(TcpListener::bind(addr).await?))
    }

    /// Serves on an already bound listener.
    pub fn from_listener(listener: TcpListener) -> Server {
        Server {
            listener,
            config: ConnectionConfig::default(),
        }
    }

    /// Uses `config` (limits, keep-alive ping, idle timeout) for every accepted connection.
    pub fn with_config(mut self, config: ConnectionConfig) -> Server {
        self.config = config;
        self
    }

    /// The address the server listens on.
    ///
    /// # Errors
    /// When the socket cannot say.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections forever, running `factory(peer)`'s handler on each.
    pub async fn serve<F, H>(self, factory: F)
    where
        F: FnMut(SocketAddr) -> H,
        H: Handler,
    {
        self.serve_until(factory, pending()).await;
    }

    /// Accepts connections until `shutdown` completes, then closes every connection and returns
    /// once they have all ended (each handler's `disconnected` has run).
    pub async fn serve_until<F, H>(self, mut factory: F, shutdown: impl Future<Output = ()>)
    where
        F: FnMut(SocketAddr) -> H,
        H: Handler,
    {
        let stop = CancellationToken::new();
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if let Err(error) = stream.set_nodelay(true) {
                            debug!(%peer, %error, "set_nodelay failed");
                        }
                        let handler = factory(peer);
                        let (driver, _sender) =
                            Driver::new(stream, peer, self.config.clone(), stop.child_token());
                        let span = info_span!("connection", %peer);
                        connections.spawn(driver.run(handler).instrument(span));
                    }
                    Err(error) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                    }
                },
                // Reap finished connections so the set does not grow with the server's age.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        stop.cancel();
        while connections.join_next().await.is_some() {}
    }
}
