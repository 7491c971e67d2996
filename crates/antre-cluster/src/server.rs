//! The listening side of the cluster link: authenticates each connecting
//! node, then answers its requests in order (Raft RPCs, and changes a
//! follower forwards to this node as leader).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::auth;
use crate::node::Cluster;
use crate::raft_runtime::AbortOnDrop;
use crate::stream::BoxStream;
use crate::wire::{read_request, write_frame, Request, Response};

/// [`serve`] for a listener bound on another runtime: it is registered
/// with the runtime this runs on (the node's Raft runtime).
pub async fn serve_std(
    listener: std::net::TcpListener,
    node: Weak<Cluster>,
    stop: watch::Receiver<bool>,
) {
    match TcpListener::from_std(listener) {
        Ok(l) => serve(l, node, stop).await,
        Err(e) => tracing::error!("cluster listener: {e}"),
    }
}

/// Connections still in their handshake, at most, from one address and
/// from all: whoever reaches the cluster port can open connections
/// without the secret, and each holds a descriptor and a task for up to
/// [`auth::HANDSHAKE_TIMEOUT`]. Past either bound a new connection is
/// closed at once (a member dialling then backs off and dials again), so
/// one address cannot take every slot nor the node's descriptors.
/// Authenticated connections are not counted. A member may well dial
/// hundreds at once: it keeps a connection per Raft group it replicates
/// to, and after a partition heals every group dials again.
const HANDSHAKES_PER_ADDRESS: usize = 256;
const HANDSHAKES: usize = 1024;

/// The handshakes under way, by peer address.
#[derive(Default)]
struct Handshakes {
    by_ip: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// When a refusal was last logged (one line a second at most).
    logged: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// A handshake's slot, given back when dropped.
struct Slot {
    handshakes: Arc<Handshakes>,
    ip: std::net::IpAddr,
}

impl Handshakes {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Slot> {
        let mut by_ip = self.by_ip.lock();
        let all: usize = by_ip.values().sum();
        let here = by_ip.entry(ip).or_default();
        if *here >= HANDSHAKES_PER_ADDRESS || all >= HANDSHAKES {
            drop(by_ip);
            let mut logged = self.logged.lock();
            if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *logged = Some(std::time::Instant::now());
                tracing::warn!(
                    %ip,
                    "cluster listener: too many connections still in their handshake \
                     ({HANDSHAKES_PER_ADDRESS} per address, {HANDSHAKES} in all): closing new ones"
                );
            }
            return None;
        }
        *here += 1;
        Some(Slot {
            handshakes: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_ip = self.handshakes.by_ip.lock();
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Accepts cluster connections until the listener fails or the node is
/// gone.
pub async fn serve(listener: TcpListener, node: Weak<Cluster>, stop: watch::Receiver<bool>) {
    let handshakes = Arc::new(Handshakes::default());
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("cluster listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(n) = node.upgrade() else {
            return;
        };
        let Some(slot) = handshakes.take(addr.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            // A node that stops closes its peers' connections at once, so
            // they see it gone before they send anything more on them.
            tokio::select! {
                r = serve_peer(stream, addr, n, slot) => if let Err(e) = r {
                    tracing::debug!(%addr, "cluster connection ended: {e}");
                },
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

async fn serve_peer(
    tcp: TcpStream,
    addr: std::net::SocketAddr,
    node: Arc<Cluster>,
    handshake_slot: Slot,
) -> std::io::Result<()> {
    let cfg = &node.link.config;
    let mut stream: BoxStream = match &cfg.tls {
        Some(tls) => match tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // The peer's name is not known yet: the log names its address.
                tracing::warn!(%addr, "cluster peer at {addr} refused: {e}");
                return Ok(());
            }
            Err(_) => {
                tracing::warn!(%addr, "cluster peer at {addr}: TLS handshake timed out");
                return Ok(());
            }
        },
        None => Box::new(tcp),
    };
    // Any node proving the secret is let in, so that a node outside the
    // membership can ask to join; what a non-member may ask is limited
    // below (see `allowed`).
    let names = node.accepted_names().unwrap_or_default();
    let handshake = auth::server(&mut stream, &cfg.node_name, &[], cfg.keys());
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
    drop(handshake_slot);
    node.link.contact(&peer);
    // Drop the strong reference while waiting for requests, so a node
    // that shuts down is not kept alive by its peers' connections.
    let weak = Arc::downgrade(&node);
    drop(node);
    // Whether the connection carried more than pings. The end of one that
    // carried only pings says nothing about its peer: it is the peer's
    // probe of this node, or the pool's spare it never used. Probing back
    // each time made two nodes that each led a group the other followed
    // probe each other in an endless loop, a core between them, as soon
    // as one connection between them closed.
    let mut worked = false;
    loop {
        let request: Request = match read_request(&mut stream).await {
            Ok(r) => r,
            Err(e) => {
                // The peer closed its connection, perhaps because it died:
                // find out, for a fast failover of what it led.
                if let Some(node) = weak.upgrade().filter(|_| worked) {
                    crate::failover::link_closed(&node, &peer);
                }
                return Err(e);
            }
        };
        worked |= !matches!(request, Request::Ping);
        let Some(node) = weak.upgrade() else {
            return Ok(());
        };
        if !allowed(&node, &peer, &request) {
            tracing::warn!(%addr, "cluster peer {peer} at {addr} refused: node '{peer}' is not a member of the cluster of '{}'", node.link.config.node_name);
            return Ok(());
        }
        node.link.received(&peer);
        if let Request::QueueAppend { rpc, .. } = &request {
            if rpc.entries.is_empty() {
                node.link.heartbeats_from(&peer, 1);
            }
        }
        let response = match request {
            Request::Append(rpc) => Response::Append(node.raft.append_entries(rpc).await),
            Request::Vote(rpc) => Response::Vote(node.raft.vote(rpc).await),
            Request::Snapshot(rpc) => Response::Snapshot(node.raft.install_snapshot(rpc).await),
            Request::Propose(p) => {
                let deadline = tokio::time::Instant::now() + node.link.config.change_timeout;
                Response::Propose(node.commit_as_leader(p, deadline).await)
            }
            Request::Ping => Response::Pong,
            Request::ReadIndex => Response::ReadIndex(node.read_index()),
            Request::Applied { index } => Response::Applied(node.applied_to(index).await),
            r @ (Request::NodeInfo
            | Request::Listing { .. }
            | Request::QueueAction { .. }
            | Request::CloseConnection { .. }) => {
                // Rendering a listing of thousands of connections is work
                // for the blocking pool, not for the Raft runtime's
                // workers, whose heartbeats must not wait behind it.
                let node = Arc::clone(&node);
                tokio::task::spawn_blocking(move || node.local_management(r))
                    .await
                    .unwrap_or_else(|e| {
                        // An answer of another kind: the asker takes it as
                        // none (as from a member that did not answer).
                        tracing::warn!("a management request failed: {e}");
                        Response::Pong
                    })
            }
            Request::PreVote {
                group,
                dead,
                last_log,
            } => Response::PreVote(node.grants_pre_vote(group.as_deref(), dead, last_log).await),
            Request::Members(change) => {
                // Membership changes are rare and may wait for a new
                // node to catch up: served on a task of their own would
                // reorder answers, so this connection waits (the joining
                // node and forwarding followers use their own).
                Response::Members(node.change_members(change).await)
            }
            Request::QueueHeartbeats { within_ms, beats } => {
                node.link.heartbeats_from(&peer, beats.len());
                node.queue_groups
                    .serve_heartbeats(beats, Duration::from_millis(within_ms))
                    .await
            }
            Request::QueueLeases(leases) => {
                node.link.leases_from(&peer, leases.len());
                let from = crate::config::node_id_of(&peer);
                Response::QueueLeases(node.queue_groups.serve_leases(from, leases))
            }
            queue @ (Request::QueueAppend { .. }
            | Request::QueueVote { .. }
            | Request::QueueSnapshot { .. }) => node.queue_groups.serve(queue).await,
            Request::QueueMembers { group, op } => {
                // A new member may take a while to catch up: this
                // connection waits, as for the metadata membership.
                let deadline =
                    tokio::time::Instant::now() + crate::queue_group::members::CHANGE_TIMEOUT;
                Response::QueueMembers(node.queue_groups.group_op(&group, op, deadline).await)
            }
            Request::StreamConsumers { within_ms, reports } => {
                node.queue_groups
                    .serve_reports(reports, Duration::from_millis(within_ms))
                    .await
            }
            Request::DataLink => {
                let broker = node.forwarder.broker();
                let progress = node.forwarder.progress();
                let wait = node.link.config.change_timeout;
                // Forwarded publishes and deliveries are the broker's work:
                // they run on its runtime, not the Raft runtime this
                // connection was accepted on (and end with this future,
                // when the node stops).
                let runtime = node.runtime.clone();
                drop(node);
                let mut task = AbortOnDrop(
                    runtime.spawn(crate::forward::serve(stream, peer, broker, progress, wait)),
                );
                let _ = (&mut task.0).await;
                return Ok(());
            }
        };
        drop(node);
        write_frame(&mut stream, &response).await?;
    }
}

/// What a node may ask: a member anything; a node outside the membership
/// (one asking to join, or one removed that does not know it yet) only to
/// be added itself, and pings. So a removed node cannot disturb the group
/// with votes or appends. A node that has no membership yet (it waits to
/// join) takes requests from anyone knowing the secret: the leader adding
/// it is not in its peer list.
fn allowed(node: &Cluster, peer: &str, request: &Request) -> bool {
    match request {
        Request::Ping => true,
        Request::Members(crate::MemberChange::Add(m)) if m.name == peer => true,
        // A leader removing itself leads until its removal is committed,
        // which needs this node's answers: refused as soon as this node
        // had the new membership in its log, it could never commit it (seen
        // in CI: the forget hung until the others elected anew).
        _ if node.raft.metrics().borrow().current_leader == Some(crate::node_id_of(peer)) => true,
        _ => node
            .accepted_names()
            .is_none_or(|names| names.iter().any(|n| n == peer)),
    }
}
