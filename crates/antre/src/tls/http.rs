//! The https listener: TCP connections that have finished their TLS
//! handshake, as an [`axum::serve::Listener`].
//!
//! Implementing axum's listener keeps one serving path, `axum::serve` with
//! its graceful shutdown, for http and https alike, and the https
//! handshake uses the same reloadable certificates as amqps. (axum-server
//! would bring a second HTTP server stack and its own certificate holder.)
//! Handshakes run in their own tasks, so a client that connects and says
//! nothing delays no one else; each has [`super::HANDSHAKE_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::server::TlsStream;

use super::{TlsCertificates, TlsProtocol};

/// Handshaken connections waiting for axum to take them.
const READY_BACKLOG: usize = 64;

/// A TCP listener whose connections are handed on after their TLS
/// handshake.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp`; stops at `shutdown` or when dropped.
    pub fn new(
        tcp: TcpListener,
        certs: Arc<TlsCertificates>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_BACKLOG);
        let accepting = tokio::spawn(accept_loop(tcp, certs, tx, shutdown));
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Ends the accept loop and, with its JoinSet, every handshake.
        self.accepting.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    certs: Arc<TlsCertificates>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let certs = Arc::clone(&certs);
                    let ready = ready.clone();
                    handshakes.spawn(async move {
                        match certs.handshake(stream, TlsProtocol::Http).await {
                            Ok(tls) => {
                                let _ = ready.send((tls, peer)).await;
                            }
                            Err(e) => tracing::debug!(%peer, "HTTPS handshake failed: {e}"),
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like, as axum's own
                    // TCP listener does: wait a moment and go on.
                    tracing::warn!("HTTPS accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            _ = shutdown.changed() => return,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
