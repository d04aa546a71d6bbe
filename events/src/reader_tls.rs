//! TLS for a consumer's own reader connections, set up as redis-rs sets up its connections (rustls;
//! the system's roots, or the endpoint's authority in their place; its client certificate), so
//! that the readers trust and present exactly what the consumer's other connections do.

use std::sync::Arc;

use redis::{RedisResult, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How to open TLS to one server.
#[derive(Clone)]
pub(crate) struct ReaderTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ReaderTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ReaderTls {
    /// TLS to `host`, trusting and presenting what `certificates` say (the system's roots and no
    /// client certificate without them).
    pub(crate) fn new(host: &str, certificates: Option<&TlsCertificates>) -> RedisResult<Self> {
        let roots = match certificates.and_then(|certificates| certificates.root_cert.as_ref()) {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for certificate in CertificateDer::pem_slice_iter(pem) {
                    roots.add(certificate.map_err(invalid)?)?;
                }
                roots
            }
            None => system_roots()?,
        };
        let config = ClientConfig::builder().with_root_certificates(roots);
        let client = certificates.and_then(|certificates| certificates.client_tls.as_ref());
        let config = match client {
            Some(client) => {
                let chain = CertificateDer::pem_slice_iter(&client.client_cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(invalid)?;
                let key = PrivateKeyDer::from_pem_slice(&client.client_key).map_err(invalid)?;
                config.with_client_auth_cert(chain, key)?
            }
            None => config.with_no_client_auth(),
        };
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: ServerName::try_from(host.to_owned()).map_err(invalid)?,
        })
    }

    /// Opens TLS over `stream`.
    pub(crate) async fn connect(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector
            .connect(self.server_name.clone(), stream)
            .await
    }
}

/// The system's trusted roots; an error when any of them cannot be read, as redis-rs has it.
fn system_roots() -> RedisResult<RootCertStore> {
    let mut loaded = rustls_native_certs::load_native_certs();
    if let Some(error) = loaded.errors.pop() {
        return Err(invalid(error));
    }
    let mut roots = RootCertStore::empty();
    for certificate in loaded.certs {
        roots.add(certificate)?;
    }
    Ok(roots)
}

/// A certificate, key or name that could not be used, as a redis-rs error.
fn invalid(error: impl std::fmt::Display) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "the reader's TLS settings",
        error.to_string(),
    ))
}
