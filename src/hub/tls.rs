//! TLS on the hub's listener, with rustls (no OpenSSL): `tls-cert` and `tls-key` make the listener
//! TLS-only; `tls-client-ca` requires client certificates signed by that CA, and with
//! `tls-map-user` a certificate's subject CN names the user (one of `[[users]]`), so no `AUTH` is
//! needed.
//!
//! The handshake runs in the accepted connection's own task on its worker, never in the accept
//! loop, bounded by `auth-timeout`. A client that speaks plain TEJ to the TLS port, or fails the
//! handshake, is logged and closed; nobody else notices. After the handshake a *bridge* task joins
//! the TLS stream to one end of a local socket pair and the session runs on the other end as on any
//! socket ([`Transport::Bridged`]), so the relay's write-through path is the same for every
//! connection; a TLS connection pays one local copy each way for it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::hub::config::HubConfig;
use crate::hub::delivery::relay::CHUNK;
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

    /// Runs the handshake on `stream` within `timeout` and starts the connection's bridge on the
    /// current task's runtime. Returns the session's end, and with `tls-map-user` the name in the
    /// client certificate's CN.
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
        let (session_end, bridge_end) = UnixStream::pair().map_err(TlsError::Handshake)?;
        actix_rt::spawn(bridge(tls, bridge_end));
        Ok((Transport::Bridged(session_end), user))
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

/// Joins a client's TLS stream to the session's end of a local socket pair until the session's
/// side ends (it always does once the client's side has ended, and it shuts the socket when the
/// session closes).
async fn bridge(tls: TlsStream<TcpStream>, local: UnixStream) {
    let (tls_read, mut tls_write) = tokio::io::split(tls);
    let (local_read, mut local_write) = local.into_split();
    let upstream = async move {
        let mut from_client = BufReader::with_capacity(CHUNK, tls_read);
        let _ = tokio::io::copy_buf(&mut from_client, &mut local_write).await;
        // The client is done: so is the session's input.
        let _ = local_write.shutdown().await;
        std::future::pending::<()>().await;
    };
    let downstream = async move {
        let mut from_session = BufReader::with_capacity(CHUNK, local_read);
        let _ = tokio::io::copy_buf(&mut from_session, &mut tls_write).await;
        // close_notify, then the end of the TCP stream.
        let _ = tls_write.shutdown().await;
    };
    tokio::select! {
        () = downstream => {}
        () = upstream => {}
    }
}
