//! The byte stream under the cluster link: plain TCP, or TLS (rustls)
//! with both sides presenting a certificate signed by the cluster's CA.
//!
//! Everything above (the HMAC handshake of [`crate::auth`], the frames of
//! [`crate::wire`]) sees a [`LinkStream`] and does not know which one it
//! has, so code added over the link works the same with and without TLS.
//!
//! With TLS, each side verifies the other's certificate chain against the
//! CA, not a host name: the CA is the cluster's own, any certificate it
//! signed belongs to a cluster node, and which node it is the HMAC
//! handshake proves inside the encrypted stream (a node's name is checked
//! there, against its peer list and the membership). So certificates need
//! no subject alternative name matching the address peers dial, which may
//! be a proxy, a NAT or a load balancer's.

use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::ClusterError;

/// A connection between two nodes, encrypted or not.
pub trait LinkStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> LinkStream for T {}

/// A boxed [`LinkStream`].
pub type BoxStream = Box<dyn LinkStream>;

/// The TLS settings of the link: one configuration to accept peers, one
/// to dial them. Both demand and verify the other side's certificate.
///
/// Clones share one configuration, which [`LinkTls::replace`] swaps for
/// the connections made afterwards (renewed certificates, another CA).
#[derive(Clone)]
pub struct LinkTls {
    configs: Arc<parking_lot::RwLock<Configs>>,
}

/// The rustls configurations of both sides of the link.
#[derive(Clone)]
struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkTls")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl LinkTls {
    /// Mutual TLS with this node's certificate `chain` and `key`; peers
    /// must present certificates that `roots` (the cluster's CA) signed.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: RootCertStore,
    ) -> Result<LinkTls, ClusterError> {
        let bad = |e: &dyn std::fmt::Display| ClusterError::Config(format!("cluster TLS: {e}"));
        let roots = Arc::new(roots);
        let clients = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|e| bad(&e))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad(&e))?;
        let servers = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| bad(&e))?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(servers)))
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad(&e))?;
        Ok(LinkTls {
            configs: Arc::new(parking_lot::RwLock::new(Configs {
                server: Arc::new(server),
                client: Arc::new(client),
            })),
        })
    }

    /// Makes this link (and its clones) use `other`'s certificates and CA
    /// for the connections it makes and accepts from now on; those open
    /// keep theirs.
    pub fn replace(&self, other: &LinkTls) {
        let configs = other.configs.read().clone();
        *self.configs.write() = configs;
    }

    /// Wraps a dialled connection (TLS client side).
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<BoxStream> {
        // The name is not checked (see the module docs); rustls needs one
        // for SNI, which nothing reads.
        let name = ServerName::try_from("antre-cluster").map_err(std::io::Error::other)?;
        let client = Arc::clone(&self.configs.read().client);
        let stream = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(tls_reason)?;
        Ok(Box::new(stream))
    }

    /// Wraps an accepted connection (TLS server side).
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<BoxStream> {
        let server = Arc::clone(&self.configs.read().server);
        let stream = tokio_rustls::TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(tls_reason)?;
        Ok(Box::new(stream))
    }
}

/// rustls's errors say what failed ("invalid peer certificate:
/// UnknownIssuer"); prefix them so a log line says it is TLS.
fn tls_reason(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("TLS: {e}"))
}

/// Verifies a server's chain against the CA, not its name.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // webpki checks the name last, after the chain, the validity
            // period and the key usage: this error means all of those held.
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Whether an idle connection is still usable: nothing to read (a closed
/// or misbehaving peer makes it readable). Polls once, without waiting.
pub fn idle_and_open(stream: &mut BoxStream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    matches!(
        std::pin::Pin::new(stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn an_idle_stream_is_open_until_the_peer_writes_or_closes() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a: BoxStream = Box::new(a);
        assert!(idle_and_open(&mut a));
        b.write_all(b"x").await.unwrap();
        assert!(!idle_and_open(&mut a), "unexpected bytes make it unusable");
        let (a, b) = tokio::io::duplex(64);
        let mut a: BoxStream = Box::new(a);
        drop(b);
        assert!(!idle_and_open(&mut a), "a closed peer makes it unusable");
    }
}
