//! The HTTP and HTTPS listeners' accept loop and connections.
//!
//! `axum::serve` has no cap on connections and no timeout (hyper's header
//! timeout needs a timer it does not set), so 20,000 idle sockets could
//! exhaust the broker's file descriptors. This loop is the same hyper
//! HTTP/1 connection with antre's bounds around it:
//! - every connection takes a slot of the node's socket budget and of the
//!   HTTP cap ([`crate::sockets`]); when either is full, the longest-idle
//!   connection is closed to make room, so a bystander's `/healthz` is
//!   answered however many idle sockets a misbehaving client holds;
//! - a request's head must arrive within `http_header_timeout` of its
//!   first byte (slowloris);
//! - a connection with no request in progress and no bytes moving for
//!   `http_idle_timeout` is closed;
//! - an https connection's TLS handshake runs in the connection's own task
//!   (with the TLS handshake timeout), so a client that connects and says
//!   nothing delays no one else, and it too can be closed to make room.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::{router, HttpState};
use crate::sockets::{Phase, SocketKind, SocketSlot};
use crate::tls::{TlsCertificates, TlsProtocol};

/// How long shutdown waits for requests in progress to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The timeouts of one connection.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header: Duration,
    idle: Duration,
}

/// Serves HTTP, or HTTPS with `tls`, until `shutdown` fires, then lets
/// requests in progress finish (for a few seconds at most).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsCertificates>>,
    state: HttpState,
    mut shutdown: watch::Receiver<bool>,
) {
    let timeouts = Timeouts {
        header: state.config.http_header_timeout,
        idle: state.config.http_idle_timeout,
    };
    let sockets = Arc::clone(&state.sockets);
    let app = router(state);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = sockets.admit(SocketKind::Http, peer) else {
                        continue; // dropping the stream closes it
                    };
                    let _ = stream.set_nodelay(true);
                    let conn = Accepted { stream, peer, slot: Arc::new(slot), app: app.clone() };
                    connections.spawn(conn.serve(tls.clone(), timeouts, shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving
                    // the connections we have.
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, drained).await;
}

/// An accepted HTTP connection.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<SocketSlot>,
    app: Router,
}

impl Accepted {
    async fn serve(
        self,
        tls: Option<Arc<TlsCertificates>>,
        timeouts: Timeouts,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Accepted {
            stream,
            peer,
            slot,
            app,
        } = self;
        match tls {
            None => run(stream, peer, slot, app, timeouts, shutdown).await,
            Some(certs) => {
                let stream = tokio::select! {
                    handshake = certs.handshake(stream, TlsProtocol::Http) => match handshake {
                        Ok(stream) => stream,
                        Err(e) => {
                            tracing::debug!(%peer, "HTTPS handshake failed: {e}");
                            return;
                        }
                    },
                    _ = slot.evicted() => return,
                    _ = shutdown.changed() => return,
                };
                run(stream, peer, slot, app, timeouts, shutdown).await;
            }
        }
    }
}

/// Serves one connection until it ends, times out, is closed to make room
/// or the server shuts down.
async fn run<S>(
    stream: S,
    peer: SocketAddr,
    slot: Arc<SocketSlot>,
    app: Router,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched {
        inner: stream,
        slot: Arc::clone(&slot),
    });
    let request_slot = Arc::clone(&slot);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        request_slot.busy();
        let slot = Arc::clone(&request_slot);
        let app = app.clone();
        async move {
            let mut request = request.map(axum::body::Body::new);
            // What axum's into_make_service_with_connect_info would add:
            // the auth layer checks loopback-only users with it.
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = app.oneshot(request).await;
            slot.idle();
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let (phase, since) = slot.phase();
        let deadline = match phase {
            Phase::Idle => since + timeouts.idle,
            Phase::ReadingHead => since + timeouts.header,
            // Looked at again once the request is done.
            Phase::Busy => std::time::Instant::now() + timeouts.header.min(timeouts.idle),
        };
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(%peer, "HTTP connection ended: {e}");
                }
                return;
            }
            _ = slot.evicted() => {
                tracing::debug!(%peer, "closing an idle HTTP connection to make room");
                return;
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let (phase, since) = slot.phase();
                let limit = match phase {
                    Phase::Idle => Some((timeouts.idle, "idle")),
                    Phase::ReadingHead => Some((timeouts.header, "request header")),
                    Phase::Busy => None,
                };
                if let Some((limit, what)) = limit {
                    if since.elapsed() >= limit {
                        tracing::debug!(%peer, "closing HTTP connection: {what} timeout");
                        return;
                    }
                }
            }
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A connection's byte stream, telling its slot when a request's first
/// bytes arrive (the header timeout starts) and when bytes move (an idle
/// connection writing a long response is not idle).
struct Watched<S> {
    inner: S,
    slot: Arc<SocketSlot>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.slot.reading();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.slot.touch();
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.slot.touch();
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
