//! TLS for clients, with rustls (no OpenSSL): [`ClientTls`] says whom to trust (a CA file, or the
//! platform's roots) and which certificate to present, if any; [`Client::connect_tls`] and
//! [`HubClient::connect_with`](crate::hub::HubClient::connect_with) use it. [`MaybeTls`] is a
//! stream that is either, for code that serves both kinds of hub.
//!
//! [`Client::connect_tls`]: crate::Client::connect_tls

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Why a client's TLS settings could not be used, or its handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {problem}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The platform's root certificates could not be loaded.
    #[error("no platform root certificates: {0}")]
    PlatformRoots(String),
    /// rustls refused a certificate or the key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The server name is not a DNS name or an IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

/// Whom a client trusts, and what it presents.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl ClientTls {
    /// Trusts the CA certificates in the PEM file `ca`.
    ///
    /// # Errors
    /// [`ClientTlsError::Pem`] or [`ClientTlsError::Rustls`].
    pub fn with_ca_file(ca: &Path) -> Result<ClientTls, ClientTlsError> {
        let mut roots = RootCertStore::empty();
        for certificate in pem_certificates(ca)? {
            roots.add(certificate)?;
        }
        Ok(ClientTls::trusting(roots, None)?)
    }

    /// Trusts the platform's root certificates.
    ///
    /// # Errors
    /// [`ClientTlsError::PlatformRoots`] when none can be loaded.
    pub fn with_platform_roots() -> Result<ClientTls, ClientTlsError> {
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
            return Err(ClientTlsError::PlatformRoots(errors.join("; ")));
        }
        Ok(ClientTls::trusting(roots, None)?)
    }

    /// Trusts the CA certificates in `ca` and presents the certificate chain `cert` with its key
    /// `key` (PEM files) to servers that ask for one.
    ///
    /// # Errors
    /// [`ClientTlsError::Pem`] or [`ClientTlsError::Rustls`].
    pub fn with_client_cert(
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<ClientTls, ClientTlsError> {
        let mut roots = RootCertStore::empty();
        for certificate in pem_certificates(ca)? {
            roots.add(certificate)?;
        }
        let chain = pem_certificates(cert)?;
        let key = read_private_key(key).map_err(|problem| ClientTlsError::Pem {
            path: key.to_owned(),
            problem,
        })?;
        Ok(ClientTls::trusting(roots, Some((chain, key)))?)
    }

    fn trusting(
        roots: RootCertStore,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<ClientTls, rustls::Error> {
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// Runs the handshake on `stream` for `server_name` (a DNS name or an IP address, checked
    /// against the server's certificate).
    ///
    /// # Errors
    /// [`ClientTlsError::ServerName`]; the handshake's I/O error.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        server_name: &str,
    ) -> io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                ClientTlsError::ServerName(server_name.to_owned()),
            )
        })?;
        TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
    }
}

fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientTlsError> {
    read_certificates(path).map_err(|problem| ClientTlsError::Pem {
        path: path.to_owned(),
        problem,
    })
}

/// The certificates in the PEM file at `path` (at least one), or what is wrong with it.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|error| error.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())?;
    if chain.is_empty() {
        return Err("no certificate".into());
    }
    Ok(chain)
}

/// The private key in the PEM file at `path`, or what is wrong with it.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| format!("no private key: {error}"))
}

/// A TCP stream, with or without TLS.
#[derive(Debug)]
pub enum MaybeTls {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(stream) => stream.is_write_vectored(),
            MaybeTls::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_flush(cx),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
