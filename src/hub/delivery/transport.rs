//! The byte stream a session runs on: the client's TCP socket, plain or with TLS. Both take
//! non-blocking writes from any thread (the outbox writes through from publishers' threads) and
//! report readiness, which is all a session needs.
//!
//! A TLS connection is its socket and the rustls state beside it ([`TlsSocket`]): the session's
//! reader pulls records from the socket and decrypts them; the outbox encrypts ([`WriteHalf::seal`])
//! and writes the records as it writes plain bytes, and queues what the socket does not take, so
//! its back-pressure counts the client's bytes as it does for a plain connection. The rustls state
//! has a lock of its own, taken briefly by the reader and under the subscriber's outbox lock by
//! whoever seals: the order is outbox → tls, never the reverse (docs/architecture.md).

use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use socket2::SockRef;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{tcp, TcpStream};

use crate::hub::tls::TlsSocket;

/// A session's stream.
#[derive(Debug)]
pub(crate) enum Transport {
    /// The client's socket.
    Tcp(TcpStream),
    /// The client's socket with its TLS state.
    Tls(Arc<TlsSocket>),
}

/// The read half of a [`Transport`].
#[derive(Debug)]
pub(crate) enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Tls(Arc<TlsSocket>),
}

/// The write half of a [`Transport`].
#[derive(Debug)]
pub(crate) enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Tls(Arc<TlsSocket>),
}

impl Transport {
    /// Splits the stream for the session's reader and its outbox.
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Transport::Tcp(stream) => {
                let (read, write) = stream.into_split();
                (ReadHalf::Tcp(read), WriteHalf::Tcp(write))
            }
            Transport::Tls(tls) => (ReadHalf::Tls(tls.clone()), WriteHalf::Tls(tls)),
        }
    }
}

impl ReadHalf {
    /// `Ready` when there are bytes (or the end) to read.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ReadHalf::Tcp(half) => half.as_ref().poll_read_ready(cx),
            ReadHalf::Tls(tls) => tls.poll_read_ready(cx),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(half) => Pin::new(half).poll_read(cx, buf),
            ReadHalf::Tls(tls) => tls.poll_read(cx, buf),
        }
    }
}

impl WriteHalf {
    /// Whether bytes must be [sealed](Self::seal) before they go to the socket.
    pub(crate) fn seals(&self) -> bool {
        matches!(self, WriteHalf::Tls(_))
    }

    /// The bytes to put on the socket for `bytes`: the same bytes on a plain connection, TLS
    /// records on a TLS one. Called under the subscriber's outbox lock, or by its writer while
    /// the outbox's queue is not empty, so records are sealed in the order they are written.
    ///
    /// # Errors
    /// rustls's, if the TLS connection can take no more.
    pub(crate) fn seal(&self, bytes: &Bytes) -> io::Result<Bytes> {
        match self {
            WriteHalf::Tcp(_) => Ok(bytes.clone()),
            WriteHalf::Tls(tls) => tls.seal(bytes),
        }
    }

    fn socket(&self) -> &TcpStream {
        match self {
            WriteHalf::Tcp(half) => half.as_ref(),
            WriteHalf::Tls(tls) => tls.socket(),
        }
    }

    /// Writes what the socket takes now, from any thread.
    pub(crate) fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        self.socket().try_write(bytes)
    }

    /// As [`try_write`](Self::try_write), from several buffers.
    pub(crate) fn try_write_vectored(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        self.socket().try_write_vectored(slices)
    }

    /// Sends `count` bytes of `file` from `offset` with `sendfile` (the kernel copies from its
    /// page cache to the socket), what the socket takes now, from any thread. Plain TCP only:
    /// TLS must encrypt in user space.
    ///
    /// # Errors
    /// `Unsupported` on TLS; `WouldBlock` when the socket takes nothing now; the kernel's error.
    pub(crate) fn try_send_file(
        &self,
        file: &std::fs::File,
        offset: u64,
        count: usize,
    ) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(half) => {
                let socket: &TcpStream = half.as_ref();
                socket.try_io(tokio::io::Interest::WRITABLE, || {
                    let mut at = offset;
                    rustix::fs::sendfile(socket, file, Some(&mut at), count)
                        .map_err(io::Error::from)
                })
            }
            WriteHalf::Tls(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// Completes when the socket may take bytes again.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.socket().writable().await
    }

    /// Ends the stream towards the peer (whoever still holds the socket); on TLS, close_notify
    /// first.
    pub(crate) fn shutdown(&self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(half) => SockRef::from(half.as_ref()).shutdown(Shutdown::Write),
            WriteHalf::Tls(tls) => tls.shutdown(),
        }
    }
}
