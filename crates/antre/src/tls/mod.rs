//! TLS for the amqps and https listeners, with rustls.
//!
//! One certificate and key (PEM) serve both listeners. With a CA file,
//! amqps asks clients for a certificate and verifies it against that CA
//! (and with verify_peer refuses clients without one), which is what SASL
//! EXTERNAL logs in with; https never asks, so a browser needs none.
//!
//! The configurations live in a [`TlsCertificates`] that every accept
//! consults, so a reload (SIGHUP, or a change of the files noticed by
//! [`TlsCertificates::watch`]) applies to the next connection while the
//! open ones keep the session they have. A reload that fails keeps the
//! certificates in use and says why.
//!
//! - [`load`]: reading the files, with errors that name the file;
//! - [`info`]: a session's protocol, cipher and client certificate, named
//!   as RabbitMQ names them.
//!
//! The https listener runs each handshake in its connection's task
//! (`crate::http::serve`), as the amqps listener does.

pub mod info;
mod load;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub use info::{PeerCertificate, TlsInfo};
pub use load::{validities, TlsError, Validity};

/// How long a client has to finish the TLS handshake (RabbitMQ's
/// `ssl_handshake_timeout` default); the AMQP handshake's own limit starts
/// after it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the certificate, key and CA are, and how clients are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// PEM CA certificates that client certificates are verified against;
    /// without it, amqps asks clients for none.
    pub ca: Option<PathBuf>,
    /// Refuse amqps clients that present no certificate (needs `ca`).
    pub verify_peer: bool,
}

/// The cluster link's TLS (mutual, against the cluster's CA; see
/// docs/clustering.md): the files are read and checked as the listeners'
/// are.
pub fn cluster_link(
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> Result<antre_cluster::stream::LinkTls, TlsError> {
    load::load_cluster(cert, key, ca, unix_now())
}

/// The files of the cluster link's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTlsFiles {
    /// This node's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The cluster's CA (several, while a CA is replaced).
    pub ca: PathBuf,
}

impl ClusterTlsFiles {
    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        [&self.cert, &self.key, &self.ca]
            .into_iter()
            .map(|path| stamp(path))
            .collect()
    }
}

/// Checks the cluster link's files every `interval` and, when one
/// changed, loads them into `link` for the connections made from then on
/// (a renewed certificate, a CA file that now holds the next CA too), as
/// the listeners' certificates are reloaded; files that cannot be used
/// are logged once per change and the link keeps what it has.
pub async fn watch_cluster_link(
    files: ClusterTlsFiles,
    link: antre_cluster::stream::LinkTls,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen = files.stamps();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = files.stamps();
        if now == seen {
            continue;
        }
        seen = now;
        match cluster_link(&files.cert, &files.key, &files.ca) {
            Ok(fresh) => {
                link.replace(&fresh);
                tracing::info!(
                    cert = %files.cert.display(),
                    ca = %files.ca.display(),
                    "cluster link TLS files reloaded: new connections use them"
                );
            }
            Err(e) => tracing::error!(
                "cluster link TLS files changed but cannot be used, keeping the current ones: {e}"
            ),
        }
    }
}

/// Which listener a handshake is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProtocol {
    /// amqps: client certificates verified when a CA is set.
    Amqp,
    /// https: no client certificates.
    Http,
}

/// The certificates in use, swapped whole by a reload.
#[derive(Debug)]
pub struct TlsCertificates {
    settings: TlsSettings,
    current: RwLock<Arc<load::Loaded>>,
    /// Size and modification time of each file as last read, so the
    /// watcher reloads only when one changed.
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl TlsCertificates {
    /// Reads and checks the files.
    pub fn load(settings: TlsSettings) -> Result<TlsCertificates, TlsError> {
        let stamps = stamps(&settings);
        let loaded = load::load(&settings, unix_now())?;
        tracing::info!(
            cert = %settings.cert.display(),
            "TLS certificate {}",
            loaded.summary
        );
        Ok(TlsCertificates {
            settings,
            current: RwLock::new(Arc::new(loaded)),
            stamps: Mutex::new(stamps),
        })
    }

    /// The settings it was loaded with.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Whether amqps clients may present a certificate that is verified
    /// (a CA is set): where SASL EXTERNAL is offered.
    pub fn verifies_clients(&self) -> bool {
        self.settings.ca.is_some()
    }

    /// Reads the files again; on success, connections accepted from now on
    /// use them. On failure the certificates in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.stamps.lock() = stamps(&self.settings);
        let loaded = load::load(&self.settings, unix_now())?;
        tracing::info!(
            cert = %self.settings.cert.display(),
            "TLS certificate reloaded: {}",
            loaded.summary
        );
        *self.current.write() = Arc::new(loaded);
        Ok(())
    }

    /// Reloads if a file's size or modification time changed since it was
    /// last read; returns whether it tried.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        if *self.stamps.lock() == stamps(&self.settings) {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Checks the files every `interval` and reloads when one changed,
    /// until `shutdown`. A failed reload is logged once per change of the
    /// files: a half-written file is retried when its writer finishes.
    pub async fn watch(self: Arc<Self>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(e) = self.reload_if_changed() {
                        tracing::error!("TLS certificate files changed but cannot be used, keeping the current ones: {e}");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Runs the server side of the TLS handshake on an accepted socket,
    /// with the certificates in use now, within [`HANDSHAKE_TIMEOUT`].
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        protocol: TlsProtocol,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let config = {
            let current = self.current.read();
            match protocol {
                TlsProtocol::Amqp => Arc::clone(&current.amqp),
                TlsProtocol::Http => Arc::clone(&current.http),
            }
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

fn stamps(settings: &TlsSettings) -> Vec<Option<(SystemTime, u64)>> {
    [
        Some(&settings.cert),
        Some(&settings.key),
        settings.ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| stamp(path))
    .collect()
}

/// A file's modification time and size, which a reload compares.
fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
