//! TLS on the hub's listener, with rustls (no OpenSSL): `tls-cert` and `tls-key` make the listener
//! TLS-only; `tls-client-ca` requires client certificates signed by that CA, and with
//! `tls-map-user` a certificate's subject CN names the user (one of `[[users]]`), so no `AUTH` is
//! needed.
//!
//! The handshake runs in the accepted connection's own task on its worker, never in the accept
//! loop, bounded by `auth-timeout`. A client that speaks plain TEJ to the TLS port, or fails the
//! handshake, is logged and closed; nobody else notices. After the handshake the connection is a
//! `TlsSocket`: the client's socket with the `rustls::ServerConnection` beside it, and the
//! session runs on it directly (`Transport::Tls`) — one descriptor, no task and no copy between.
//!
//! The rustls state is shared by the session's reader (which decrypts) and the subscriber's
//! outbox (which seals pieces into records), so it has a lock of its own. Lock order: the outbox's
//! lock, then this one — **outbox → tls, never the reverse**; nothing is locked while it is held.
//! Records must reach the socket in the order they were sealed: a publisher seals only while the
//! outbox's queue is empty (under the outbox lock), the writer only the queue's front, and the
//! reader seals nothing — what rustls has to send on its own (a key update) goes out with the next
//! sealed piece. Kernel TLS (the `tls` ULP) would be the next step on kernels that have it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::net::Shutdown;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use socket2::SockRef;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::hub::config::HubConfig;
use crate::hub::delivery::transport::Transport;
use crate::tls::{read_certificates, read_private_key};

/// Why TLS could not be set up, or a connection's handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {problem}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// `tls-cert` without `tls-key`, or the other way round, or `tls-map-user` without a client
    /// CA.
    #[error("{0}")]
    Incomplete(&'static str),
    /// rustls refused the certificates or the key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA cannot verify client certificates.
    #[error("client CA: {0}")]
    ClientCa(String),
    /// The handshake failed (a plain-text client, a certificate the CA did not sign, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// The handshake did not finish within `auth-timeout`.
    #[error("TLS handshake not finished in {0:?}")]
    Timeout(Duration),
    /// With `tls-map-user`, the client certificate has no subject CN.
    #[error("the client certificate has no subject common name")]
    NoCommonName,
}

/// The TLS side of the listener.
pub(crate) struct TlsListener {
    acceptor: TlsAcceptor,
    map_user: bool,
}

impl TlsListener {
    /// The listener's TLS settings; `None` when `tls-cert` is not set (plain TCP).
    ///
    /// # Errors
    /// [`TlsError`] for unreadable or unusable PEM files and incomplete settings.
    pub(crate) fn from_config(config: &HubConfig) -> Result<Option<TlsListener>, TlsError> {
        let (cert, key) = match (&config.tls_cert, &config.tls_key) {
            (None, None) if config.tls_client_ca.is_none() && !config.tls_map_user => {
                return Ok(None)
            }
            (Some(cert), Some(key)) => (cert, key),
            _ => {
                return Err(TlsError::Incomplete(
                    "tls-cert and tls-key go together (and tls-client-ca needs them)",
                ))
            }
        };
        if config.tls_map_user && config.tls_client_ca.is_none() {
            return Err(TlsError::Incomplete("tls-map-user needs tls-client-ca"));
        }
        let chain = certificates(cert)?;
        let key = read_private_key(key).map_err(|problem| TlsError::Pem {
            path: key.clone(),
            problem,
        })?;
        let builder = ServerConfig::builder();
        let builder = match &config.tls_client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for certificate in certificates(ca)? {
                    roots.add(certificate)?;
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|error| TlsError::ClientCa(error.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let server = builder.with_single_cert(chain, key)?;
        Ok(Some(TlsListener {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            map_user: config.tls_map_user,
        }))
    }

    /// Runs the handshake on `stream` within `timeout`. Returns the session's transport, and with
    /// `tls-map-user` the name in the client certificate's CN.
    ///
    /// # Errors
    /// [`TlsError::Handshake`], [`TlsError::Timeout`], [`TlsError::NoCommonName`].
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<(Transport, Option<String>), TlsError> {
        let tls = tokio::time::timeout(timeout, self.acceptor.accept(stream))
            .await
            .map_err(|_| TlsError::Timeout(timeout))?
            .map_err(TlsError::Handshake)?;
        let user = if self.map_user {
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .ok_or(TlsError::NoCommonName)?;
            Some(common_name(certificate).ok_or(TlsError::NoCommonName)?)
        } else {
            None
        };
        let (socket, conn) = tls.into_inner();
        let socket = tokio::time::timeout(timeout, TlsSocket::new(socket, conn))
            .await
            .map_err(|_| TlsError::Timeout(timeout))?
            .map_err(TlsError::Handshake)?;
        Ok((Transport::Tls(Arc::new(socket)), user))
    }
}

/// The certificates of a PEM file.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_certificates(path).map_err(|problem| TlsError::Pem {
        path: path.to_owned(),
        problem,
    })
}

/// The subject CN of a DER certificate.
fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

/// A TLS connection after its handshake: the client's socket and the rustls state beside it,
/// shared by the session's reader and its outbox (see the module documentation for who locks what).
#[derive(Debug)]
pub(crate) struct TlsSocket {
    socket: TcpStream,
    conn: Mutex<ServerConnection>,
}

/// Reads from a non-blocking socket for rustls: `WouldBlock` clears the socket's readiness.
struct SocketReader<'a>(&'a TcpStream);

impl io::Read for SocketReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl TlsSocket {
    /// The socket and the rustls state of a connection whose handshake is done; what the
    /// handshake left to send is sent first.
    async fn new(socket: TcpStream, mut conn: ServerConnection) -> io::Result<TlsSocket> {
        while conn.wants_write() {
            let mut out = Vec::new();
            conn.write_tls(&mut out)?;
            let mut out = &out[..];
            while !out.is_empty() {
                socket.writable().await?;
                match socket.try_write(out) {
                    Ok(written) => out = &out[written..],
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(TlsSocket {
            socket,
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        // rustls does not panic while we hold the lock; if it did, the connection would fail on
        // its next record anyway.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client's socket (writes of sealed records, readiness).
    pub(crate) fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// `Ready` when there is plaintext (or the end) to read, or bytes on the socket.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let buffered = match self.lock().process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            // The next read reports it.
            Err(_) => true,
        };
        if buffered {
            return Poll::Ready(Ok(()));
        }
        self.socket.poll_read_ready(cx)
    }

    /// Reads plaintext into `buf`, pulling records from the socket as needed, as much as has
    /// arrived (a plain socket's read returns all the kernel holds: the relay then forwards large
    /// pieces, not one record at a time). The end of the client's stream, with or without
    /// close_notify, is the end of the session's input.
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut read_some = false;
        loop {
            {
                let mut conn = self.lock();
                loop {
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    // Records read but not yet decrypted first, then the socket.
                    let state = match conn.process_new_packets() {
                        Ok(state) => state,
                        Err(_) if read_some => return Poll::Ready(Ok(())),
                        Err(error) => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                error,
                            )))
                        }
                    };
                    let available = state.plaintext_bytes_to_read();
                    if available > 0 || state.peer_has_closed() {
                        // Only what is there: the session's buffer may be a large one.
                        let into = buf.initialize_unfilled_to(available.min(buf.remaining()));
                        match io::Read::read(&mut conn.reader(), into) {
                            // The end (close_notify).
                            Ok(0) => return Poll::Ready(Ok(())),
                            Ok(read) => {
                                buf.advance(read);
                                read_some = true;
                                continue;
                            }
                            Err(_) if read_some => return Poll::Ready(Ok(())),
                            Err(error) => return Poll::Ready(Err(error)),
                        }
                    }
                    match conn.read_tls(&mut SocketReader(&self.socket)) {
                        // The end without close_notify: the end all the same.
                        Ok(0) => return Poll::Ready(Ok(())),
                        Ok(_) => continue,
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) if read_some => return Poll::Ready(Ok(())),
                        Err(error) => return Poll::Ready(Err(error)),
                    }
                }
            }
            if read_some {
                return Poll::Ready(Ok(()));
            }
            ready!(self.socket.poll_read_ready(cx))?;
        }
    }

    /// Encrypts `plain` into records, with whatever else rustls has to send before them (a key
    /// update). The caller writes the records to the socket in the order it sealed them.
    ///
    /// # Errors
    /// rustls's, if the connection can take no more plaintext.
    pub(crate) fn seal(&self, plain: &[u8]) -> io::Result<Bytes> {
        let mut sealed = Vec::with_capacity(plain.len() + plain.len() / 512 + RECORD_OVERHEAD);
        let mut conn = self.lock();
        let mut rest = plain;
        loop {
            // At most rustls's buffer limit per call; drained at once, so nothing stays in it.
            let taken = io::Write::write(&mut conn.writer(), rest)?;
            while conn.wants_write() {
                conn.write_tls(&mut sealed)?;
            }
            rest = &rest[taken..];
            if rest.is_empty() {
                return Ok(Bytes::from(sealed));
            }
            if taken == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
    }

    /// Sends close_notify (as far as the socket takes it now) and ends the stream towards the
    /// client.
    pub(crate) fn shutdown(&self) -> io::Result<()> {
        let mut notify = Vec::new();
        {
            let mut conn = self.lock();
            conn.send_close_notify();
            while conn.wants_write() {
                conn.write_tls(&mut notify)?;
            }
        }
        let _ = self.socket.try_write(&notify);
        SockRef::from(&self.socket).shutdown(Shutdown::Write)
    }
}

/// Room for the framing of the last record, and a key update before it.
const RECORD_OVERHEAD: usize = 128;
