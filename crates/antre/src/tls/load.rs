//! Reading the PEM files and building rustls configurations from them,
//! with the checks that turn a bad file into a message naming the file and
//! what is wrong with it: unreadable, not PEM, no certificate, no key, a
//! key that is not the certificate's, a certificate expired or not valid
//! yet, a CA file rustls cannot use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::info::{rfc3339, subject_string};
use super::TlsSettings;

/// Why the certificates could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read TLS {what} file {path}: {source}")]
    Read {
        /// "certificate", "key" or "CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid PEM.
    #[error("TLS {what} file {path} is not valid PEM: {detail}")]
    Pem {
        /// "certificate", "key" or "CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// The file has no section of the kind needed.
    #[error("TLS {what} file {path} has no {expected}")]
    Missing {
        /// "certificate", "key" or "CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for.
        expected: &'static str,
    },
    /// A certificate is not DER that X.509 parsing accepts.
    #[error("TLS {what} file {path}: certificate {index} cannot be parsed: {detail}")]
    BadCertificate {
        /// "certificate" or "CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its position in the file, from 1.
        index: usize,
        /// What the parser said.
        detail: String,
    },
    /// A certificate's validity period has ended.
    #[error("TLS {what} file {path}: certificate '{subject}' expired on {not_after}")]
    Expired {
        /// "certificate" or "CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its subject.
        subject: String,
        /// When it stopped being valid (RFC 3339).
        not_after: String,
    },
    /// A certificate's validity period has not started.
    #[error("TLS {what} file {path}: certificate '{subject}' is not valid until {not_before}")]
    NotYetValid {
        /// "certificate" or "CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its subject.
        subject: String,
        /// When it becomes valid (RFC 3339).
        not_before: String,
    },
    /// The private key does not belong to the certificate.
    #[error("TLS key file {key} does not match the certificate in {cert} (the key's public key is not the certificate's)")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the certificate and key for another reason (an
    /// unsupported key type, say).
    #[error("TLS certificate {cert} and key {key} cannot be used: {source}")]
    Unusable {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The cluster link's certificate, key and CA cannot be used together.
    #[error("cluster TLS certificate {cert} and key {key} cannot be used: {detail}")]
    Cluster {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        detail: String,
    },
    /// The CA file cannot be used to verify clients.
    #[error("TLS CA file {path} cannot be used to verify client certificates: {detail}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        detail: String,
    },
}

/// Reads the certificate, key and CA of the cluster link (mutual TLS
/// between cluster nodes), with the same checks as the listeners'.
pub(super) fn load_cluster(
    cert: &Path,
    key: &Path,
    ca: &Path,
    now: i64,
) -> Result<antre_cluster::stream::LinkTls, TlsError> {
    let chain = read_certificates(cert, "certificate")?;
    check_validity(&chain, cert, "certificate", now)?;
    let private = read_key(key)?;
    let cas = read_certificates(ca, "CA")?;
    check_validity(&cas, ca, "CA", now)?;
    let mut roots = RootCertStore::empty();
    for c in cas {
        roots.add(c).map_err(|e| TlsError::BadCa {
            path: ca.to_owned(),
            detail: e.to_string(),
        })?;
    }
    antre_cluster::stream::LinkTls::new(chain, private, roots).map_err(|e| TlsError::Cluster {
        cert: cert.to_owned(),
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

/// What a successful load produced: one configuration per protocol, and a
/// description of the server certificate for the log.
#[derive(Debug)]
pub(super) struct Loaded {
    /// For amqps: client certificates requested (and required with
    /// verify_peer) when a CA is set.
    pub amqp: Arc<ServerConfig>,
    /// For https: no client certificates, so browsers need none; ALPN
    /// http/1.1, the only HTTP version the management listener speaks.
    pub http: Arc<ServerConfig>,
    /// Subject and expiry of the server certificate.
    pub summary: String,
}

/// Reads the files named by `settings` and builds the configurations.
pub(super) fn load(settings: &TlsSettings, now: i64) -> Result<Loaded, TlsError> {
    let chain = read_certificates(&settings.cert, "certificate")?;
    let summary = check_validity(&chain, &settings.cert, "certificate", now)?;
    let key = read_key(&settings.key)?;
    let roots = match &settings.ca {
        Some(ca) => {
            let cas = read_certificates(ca, "CA")?;
            check_validity(&cas, ca, "CA", now)?;
            let mut roots = RootCertStore::empty();
            for cert in cas {
                roots.add(cert).map_err(|e| TlsError::BadCa {
                    path: ca.clone(),
                    detail: e.to_string(),
                })?;
            }
            Some(roots)
        }
        None => None,
    };
    let provider = Arc::new(ring::default_provider());
    // rustls speaks only TLS 1.2 and 1.3, with forward-secret AEAD suites:
    // the modern defaults the issue asks for, with nothing to turn off.
    let versions = rustls::ALL_VERSIONS;
    let builder = || {
        ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| unusable(settings, e))
    };
    let amqp_auth = match (&roots, &settings.ca) {
        (Some(roots), Some(ca)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots.clone()),
                Arc::clone(&provider),
            );
            let verifier = if settings.verify_peer {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| TlsError::BadCa {
                path: ca.clone(),
                detail: e.to_string(),
            })?;
            builder()?.with_client_cert_verifier(verifier)
        }
        _ => builder()?.with_no_client_auth(),
    };
    let amqp = amqp_auth
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| certificate_error(settings, e))?;
    let mut http = builder()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| certificate_error(settings, e))?;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        amqp: Arc::new(amqp),
        http: Arc::new(http),
        summary,
    })
}

fn unusable(settings: &TlsSettings, source: rustls::Error) -> TlsError {
    TlsError::Unusable {
        cert: settings.cert.clone(),
        key: settings.key.clone(),
        source,
    }
}

fn certificate_error(settings: &TlsSettings, e: rustls::Error) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::Mismatch {
                cert: settings.cert.clone(),
                key: settings.key.clone(),
            }
        }
        e => unusable(settings, e),
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, what: &'static str, e: pem::Error) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

/// Every certificate of a PEM file, in order (the leaf first for a chain).
fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, what, e))?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            what,
            path: path.to_owned(),
            expected: "PEM certificate (-----BEGIN CERTIFICATE-----)",
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(path, "key")?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::Missing {
            what: "key",
            path: path.to_owned(),
            expected:
                "PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
        },
        e => pem_error(path, "key", e),
    })
}

/// Refuses a certificate outside its validity period at `now` (Unix
/// seconds); describes the first one for the log. rustls checks a client's
/// certificates at each handshake but never our own, so an expired server
/// certificate would otherwise start fine and fail every client.
fn check_validity(
    certs: &[CertificateDer<'_>],
    path: &Path,
    what: &'static str,
    now: i64,
) -> Result<String, TlsError> {
    let mut summary = String::new();
    for (i, der) in certs.iter().enumerate() {
        let cert = parse(der, path, what, i)?;
        let subject = subject_string(cert.subject());
        let validity = cert.validity();
        if now > validity.not_after.timestamp() {
            return Err(TlsError::Expired {
                what,
                path: path.to_owned(),
                subject,
                not_after: rfc3339(&validity.not_after),
            });
        }
        if now < validity.not_before.timestamp() {
            return Err(TlsError::NotYetValid {
                what,
                path: path.to_owned(),
                subject,
                not_before: rfc3339(&validity.not_before),
            });
        }
        if i == 0 {
            summary = format!("'{subject}', valid until {}", rfc3339(&validity.not_after));
        }
    }
    Ok(summary)
}

/// One certificate's validity period, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// When it starts being valid.
    pub not_before: i64,
    /// When it stops.
    pub not_after: i64,
}

/// The validity period of every certificate in the PEM file at `path`
/// (`what` names it in errors: "certificate", "CA"), read afresh: the
/// certificate-expiration health check reads the files as they are now,
/// as RabbitMQ's does, so a renewed file passes before the next reload.
pub fn validities(path: &Path, what: &'static str) -> Result<Vec<Validity>, TlsError> {
    read_certificates(path, what)?
        .iter()
        .enumerate()
        .map(|(i, der)| {
            let cert = parse(der, path, what, i)?;
            let validity = cert.validity();
            Ok(Validity {
                not_before: validity.not_before.timestamp(),
                not_after: validity.not_after.timestamp(),
            })
        })
        .collect()
}

/// The `i`th certificate (from 0) of file `path`, parsed.
fn parse<'a>(
    der: &'a CertificateDer<'_>,
    path: &Path,
    what: &'static str,
    i: usize,
) -> Result<x509_parser::certificate::X509Certificate<'a>, TlsError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| TlsError::BadCertificate {
            what,
            path: path.to_owned(),
            index: i + 1,
            detail: e.to_string(),
        })
}
