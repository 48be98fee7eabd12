//! The byte stream a session runs on: the client's TCP socket, or — for a TLS connection — one end
//! of a local socket pair whose other end the connection's TLS bridge (`tls.rs`) joins to the
//! client's TLS stream. Both take non-blocking writes from any thread (the outbox writes through
//! from publishers' threads) and report readiness, which is all a session needs.

use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// A session's stream.
#[derive(Debug)]
pub(crate) enum Transport {
    /// The client's socket.
    Tcp(TcpStream),
    /// The hub's end of a TLS connection's bridge.
    Bridged(UnixStream),
}

/// The read half of a [`Transport`].
#[derive(Debug)]
pub(crate) enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Bridged(unix::OwnedReadHalf),
}

/// The write half of a [`Transport`].
#[derive(Debug)]
pub(crate) enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Bridged(unix::OwnedWriteHalf),
}

impl Transport {
    /// Splits the stream for the session's reader and its outbox.
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Transport::Tcp(stream) => {
                let (read, write) = stream.into_split();
                (ReadHalf::Tcp(read), WriteHalf::Tcp(write))
            }
            Transport::Bridged(stream) => {
                let (read, write) = stream.into_split();
                (ReadHalf::Bridged(read), WriteHalf::Bridged(write))
            }
        }
    }
}

impl ReadHalf {
    /// `Ready` when there are bytes (or the end) to read.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ReadHalf::Tcp(half) => half.as_ref().poll_read_ready(cx),
            ReadHalf::Bridged(half) => half.as_ref().poll_read_ready(cx),
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
            ReadHalf::Bridged(half) => Pin::new(half).poll_read(cx, buf),
        }
    }
}

impl WriteHalf {
    /// Writes what the socket takes now, from any thread.
    pub(crate) fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(half) => half.try_write(bytes),
            WriteHalf::Bridged(half) => half.try_write(bytes),
        }
    }

    /// As [`try_write`](Self::try_write), from several buffers.
    pub(crate) fn try_write_vectored(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(half) => half.try_write_vectored(slices),
            WriteHalf::Bridged(half) => half.try_write_vectored(slices),
        }
    }

    /// Completes when the socket may take bytes again.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(half) => half.writable().await,
            WriteHalf::Bridged(half) => half.writable().await,
        }
    }

    /// Ends the stream towards the peer (whoever still holds the socket).
    pub(crate) fn shutdown(&self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(half) => SockRef::from(half.as_ref()).shutdown(Shutdown::Write),
            WriteHalf::Bridged(half) => SockRef::from(half.as_ref()).shutdown(Shutdown::Write),
        }
    }
}
