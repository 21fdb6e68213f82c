//! TLS for `NBD_OPT_STARTTLS`, with QEMU's x509 credentials layout and rustls.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::{io_error, Error, Result};
use crate::transport::Transport;

/// TLS client credentials and the name the server's certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) that signed the server's certificate.
    pub ca_cert: PathBuf,
    /// PEM client certificate chain, for servers that verify their peers
    /// (`tls-creds-x509,...,verify-peer=on`, QEMU's default).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    /// The DNS name or IP address the server's certificate must be valid for.
    pub server_name: String,
}

impl TlsConfig {
    /// QEMU's x509 credentials layout: `DIR/ca-cert.pem`, and `DIR/client-cert.pem` with
    /// `DIR/client-key.pem` when both exist.
    pub fn from_qemu_dir(dir: &Path, server_name: &str) -> TlsConfig {
        let cert = dir.join("client-cert.pem");
        let key = dir.join("client-key.pem");
        let pair = cert.exists() && key.exists();
        TlsConfig {
            ca_cert: dir.join("ca-cert.pem"),
            client_cert: pair.then_some(cert),
            client_key: pair.then_some(key),
            server_name: server_name.to_string(),
        }
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        let cas = load_certs(&self.ca_cert)?;
        for ca in cas {
            roots.add(ca).map_err(|e| {
                Error::Tls(format!(
                    "CA certificate in {} is not usable: {e}",
                    self.ca_cert.display()
                ))
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(format!("TLS setup: {e}")))?
            .with_root_certificates(roots);
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs(cert)?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    Error::Tls(format!(
                        "cannot read a private key from {}: {e}",
                        key.display()
                    ))
                })?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    Error::Tls(format!(
                        "client certificate {} and key {} do not go together: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(Error::Tls(
                    "a client certificate needs its key and a key its certificate".into(),
                ))
            }
        };
        Ok(Arc::new(config))
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Tls(format!("cannot read {}: {e}", path.display())))?;
    let certs: Vec<_> = iter
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Tls(format!("bad PEM certificate in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// A TLS session over another transport.
pub(crate) struct TlsStream {
    tls: rustls::StreamOwned<rustls::ClientConnection, Box<dyn Transport>>,
}

impl TlsStream {
    /// Runs the TLS handshake over `sock` (right after the server's STARTTLS ACK).
    pub(crate) fn handshake(
        sock: Box<dyn Transport>,
        config: &TlsConfig,
        timeout: Option<Duration>,
    ) -> Result<TlsStream> {
        let cfg = config.client_config()?;
        let name = ServerName::try_from(config.server_name.clone()).map_err(|e| {
            Error::Tls(format!(
                "{:?} is not a valid TLS server name: {e}",
                config.server_name
            ))
        })?;
        let conn = rustls::ClientConnection::new(cfg, name)
            .map_err(|e| Error::Tls(format!("TLS setup: {e}")))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                return Err(handshake_error(e, &config.server_name, timeout));
            }
        }
        Ok(TlsStream { tls })
    }
}

fn handshake_error(e: io::Error, server: &str, timeout: Option<Duration>) -> Error {
    let during = format!("the TLS handshake with {server}");
    if e.kind() == io::ErrorKind::InvalidData {
        // rustls reports certificate and protocol failures this way.
        return Error::Tls(format!("{during} failed: {e}"));
    }
    match io_error(&during, e, timeout) {
        Error::Closed { .. } => Error::Tls(format!(
            "{during} failed: the server closed the connection (does it require a client certificate, or reject ours?)"
        )),
        other => other,
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tls.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tls.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tls.flush()
    }
}

impl Transport for TlsStream {
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.tls.sock.set_timeout(timeout)
    }

    fn shutdown(&mut self) {
        self.tls.conn.send_close_notify();
        let _ = self.tls.flush();
        self.tls.sock.shutdown();
    }
}
