//! The [`Handler`] trait: the callbacks a client or server connection calls, in the style of the
//! reference's `ResponseCallback` (`connected`, `received`, `ping_received`, `disconnected`).

use std::future::{ready, Future};

use crate::connection::{Disconnect, Sender};
use crate::frame::Frame;

/// Callbacks for one connection, called one at a time in the order events happen.
///
/// Each callback gets the connection's [`Sender`] to answer with; clone it to send from other
/// tasks. While a callback runs, the connection reads nothing more (the peer is pushed back by
/// TCP), so hand long work to another task.
///
/// # Examples
/// ```
/// use tej::{Frame, Handler, Sender};
///
/// /// Sends every frame back to where it came from.
/// struct Echo;
///
/// impl Handler for Echo {
///     async fn received(&mut self, frame: Frame, sender: &Sender) {
///         let _ = sender.send(frame).await;
///     }
/// }
/// ```
pub trait Handler: Send + 'static {
    /// The connection is up; called before any frame is delivered.
    fn connected(&mut self, sender: &Sender) -> impl Future<Output = ()> + Send {
        let _ = sender;
        ready(())
    }

    /// A frame other than a ping arrived.
    fn received(&mut self, frame: Frame, sender: &Sender) -> impl Future<Output = ()> + Send;

    /// A ping frame (status 2) arrived. It never reaches [`received`](Handler::received).
    fn ping_received(&mut self, frame: Frame, sender: &Sender) -> impl Future<Output = ()> + Send {
        let _ = (frame, sender);
        ready(())
    }

    /// The connection ended; called once, last.
    fn disconnected(&mut self, reason: &Disconnect) -> impl Future<Output = ()> + Send {
        let _ = reason;
        ready(())
    }
}
