//! The listening side of the cluster link: authenticates each connecting
//! node, then answers its requests in order (Raft RPCs, and changes a
//! follower forwards to this node as leader).

use std::sync::{Arc, Weak};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::auth;
use crate::node::Cluster;
use crate::wire::{read_frame, write_frame, Request, Response};

/// Accepts cluster connections until the listener fails or the node is
/// gone.
pub async fn serve(listener: TcpListener, node: Weak<Cluster>, stop: watch::Receiver<bool>) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("cluster listener: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(n) = node.upgrade() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            // A node that stops closes its peers' connections at once, so
            // they see it gone before they send anything more on them.
            tokio::select! {
                r = serve_peer(stream, addr, n) => if let Err(e) = r {
                    tracing::debug!(%addr, "cluster connection ended: {e}");
                },
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

async fn serve_peer(
    mut stream: TcpStream,
    addr: std::net::SocketAddr,
    node: Arc<Cluster>,
) -> std::io::Result<()> {
    let cfg = &node.link.config;
    let names: Vec<String> = cfg.peers.iter().map(|p| p.name.clone()).collect();
    let handshake = auth::server(&mut stream, &cfg.node_name, &names, &cfg.secret);
    let peer = match tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(peer)) => peer,
        Ok(Err(refusal)) => {
            let name = refusal.node.unwrap_or_else(|| "?".into());
            let refused = !matches!(refusal.error, auth::AuthError::Io(_));
            if names.contains(&name) {
                node.link
                    .failed(&name, addr, &refusal.error.to_string(), refused);
            } else {
                tracing::warn!(%addr, "cluster peer {name} at {addr} refused: {}", refusal.error);
            }
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(%addr, "cluster peer at {addr}: handshake timed out");
            return Ok(());
        }
    };
    node.link.contact(&peer);
    // Drop the strong reference while waiting for requests, so a node
    // that shuts down is not kept alive by its peers' connections.
    let weak = Arc::downgrade(&node);
    drop(node);
    loop {
        let request: Request = read_frame(&mut stream).await?;
        let Some(node) = weak.upgrade() else {
            return Ok(());
        };
        node.link.contact(&peer);
        let response = match request {
            Request::Append(rpc) => Response::Append(node.raft.append_entries(rpc).await),
            Request::Vote(rpc) => Response::Vote(node.raft.vote(rpc).await),
            Request::Snapshot(rpc) => Response::Snapshot(node.raft.install_snapshot(rpc).await),
            Request::Propose(p) => {
                let deadline = tokio::time::Instant::now() + node.link.config.change_timeout;
                Response::Propose(node.commit_as_leader(p, deadline).await)
            }
            Request::Ping => Response::Pong,
            Request::DataLink => {
                let broker = node.forwarder.broker();
                drop(node);
                crate::forward::serve(stream, peer, broker).await;
                return Ok(());
            }
        };
        drop(node);
        write_frame(&mut stream, &response).await?;
    }
}
