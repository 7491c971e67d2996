//! RabbitMQ's stream protocol (port 5552 in RabbitMQ) on its own listener,
//! `--stream-listen` (off by default; the flag alone means
//! 127.0.0.1:5552). It shares everything with AMQP 0-9-1: the streams (a
//! stream written by either protocol reads with the other), the users and
//! their permissions, the group commit. The frames are
//! `antre_stream_proto::frame`; this module only runs connections.

mod admin;
mod connection;
mod sac;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use antre_broker::cluster::MetaCommand;
use antre_broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use connection::{Connection, FRAME_MAX};
pub use sac::Groups;

/// What ends a stream connection besides its client: the server's
/// shutdown, and the node being drained (see [`crate::maintenance`]).
#[derive(Debug, Clone)]
pub struct Stop {
    /// Changes when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// True once the node is drained.
    pub drained: watch::Receiver<bool>,
}

/// The address `--stream-listen` without a value means.
pub const DEFAULT_STREAM_LISTEN: &str = "127.0.0.1:5552";

/// The stream listener's setting, for errors and hints.
pub const LISTENER: crate::listen::ListenerKind = crate::listen::ListenerKind {
    protocol: "stream",
    flag: "--stream-listen",
    env: "ANTRE_STREAM_LISTEN",
    rabbitmq_port: 5552,
};

/// On a cluster node: records in the metadata group where this node's
/// stream listener is (`listener`; None: it has none, and a stale address
/// recorded by an earlier run is cleared), so that every node's metadata
/// command can send clients to it (the leader of a stream for publishing,
/// a replica for reading). Proposed again every second until the group
/// has it (a node starting before its cluster has a leader). An
/// unspecified address (all interfaces) is advertised with the node's
/// cluster address instead.
pub fn record_listener(broker: &Arc<Broker>, listener: Option<SocketAddr>, cluster_host: IpAddr) {
    let Some(node) = broker.node_name().map(str::to_owned) else {
        return;
    };
    let address = listener.map(|l| {
        let ip = if l.ip().is_unspecified() {
            cluster_host
        } else {
            l.ip()
        };
        SocketAddr::new(ip, l.port()).to_string()
    });
    let broker = Arc::clone(broker);
    tokio::spawn(async move {
        while broker.listener(&node, LISTENER.protocol) != address {
            let command = MetaCommand::SetListener {
                node: node.clone(),
                protocol: LISTENER.protocol.to_owned(),
                address: address.clone(),
            };
            let b = Arc::clone(&broker);
            let proposed = tokio::task::spawn_blocking(move || b.change_meta(command)).await;
            match proposed {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!("recording the stream listener: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(_) => return,
            }
        }
    });
}

/// Accepts stream-protocol connections on `listener` until shutdown, then
/// waits for their tasks (each sends a close first).
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    groups: Arc<Groups>,
    maintenance: Arc<crate::maintenance::Maintenance>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("stream listener accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if maintenance.draining() {
                    // Closed at once: the client goes to another node.
                    tracing::debug!(%peer, "stream client refused: the node is drained");
                    continue;
                }
                let _ = socket.set_nodelay(true);
                let Ok(local) = socket.local_addr() else { continue };
                let broker = Arc::clone(&broker);
                let groups = Arc::clone(&groups);
                let stop = Stop {
                    shutdown: shutdown.clone(),
                    drained: maintenance.watch(),
                };
                tasks.spawn(Connection::run(socket, broker, groups, peer, local, stop));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    while tasks.join_next().await.is_some() {}
}
