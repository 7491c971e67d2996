//! A fault injector between cluster nodes: one TCP proxy per directed
//! link (n1→n2 is the proxy n1 dials to reach n2), inside the test
//! process, each controllable while connections run:
//!
//! - **cut**: its connections are dropped and new ones closed at once
//!   (the dialling node sees its peer gone);
//! - **reset**: the connections open now are dropped, new ones pass (a
//!   peer that closed its connections, or a middlebox that dropped them);
//! - **hold** one direction: bytes are read but not forwarded until the
//!   hold ends (a blackhole that TCP would retransmit through: what a
//!   dropped route does to a connection that outlives it);
//! - **delay** one direction: each chunk is forwarded its delay after it
//!   arrived (latency, not a throughput cap);
//! - **rate** one direction: each connection forwards at most so many
//!   bytes a second (a slow link; a connection's bytes do not slow its
//!   neighbours').
//!
//! A node's peer list names the proxies as its peers' addresses, so every
//! node has its own route to each other node.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

/// What happens to the bytes of one direction of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Forwarded at once.
    Pass,
    /// Kept until the flow changes.
    Hold,
    /// Forwarded this long after they arrived.
    Delay(Duration),
    /// Forwarded at most this many bytes a second, per connection.
    Rate(u64),
}

/// The state of one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// Connections dropped, new ones closed.
    pub cut: bool,
    /// From the dialling node to its peer.
    pub up: Flow,
    /// From the peer back to the dialling node.
    pub down: Flow,
}

impl LinkState {
    /// Everything passes.
    pub const PASS: LinkState = LinkState {
        cut: false,
        up: Flow::Pass,
        down: Flow::Pass,
    };
}

/// One directed link's proxy.
pub struct Proxy {
    /// Where it listens.
    pub port: u16,
    state: Arc<watch::Sender<LinkState>>,
    resets: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy to `target` (a port on 127.0.0.1), passing everything.
    pub async fn start(target: u16) -> Proxy {
        // A port a node was planned onto (not bound yet) is not taken:
        // keep the next one instead.
        let (listener, port) = loop {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
            let port = listener.local_addr().expect("proxy addr").port();
            if crate::harness::claim_port(port) {
                break (listener, port);
            }
        };
        let state = Arc::new(watch::Sender::new(LinkState::PASS));
        let resets = Arc::new(Notify::new());
        let task = tokio::spawn(accept(
            listener,
            target,
            Arc::clone(&state),
            Arc::clone(&resets),
        ));
        Proxy {
            port,
            state,
            resets,
            task,
        }
    }

    /// Drops the connections open now; new ones pass.
    pub fn reset(&self) {
        self.resets.notify_waiters();
    }

    /// Sets its state; cutting drops its connections at once.
    pub fn set(&self, state: LinkState) {
        self.state.send_replace(state);
    }

    /// Its state.
    pub fn get(&self) -> LinkState {
        *self.state.borrow()
    }
}

async fn accept(
    listener: TcpListener,
    target: u16,
    state: Arc<watch::Sender<LinkState>>,
    resets: Arc<Notify>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if state.borrow().cut {
            drop(inbound);
            continue;
        }
        let state = state.subscribe();
        let resets = Arc::clone(&resets);
        tokio::spawn(async move {
            // Registered now: a reset from here on drops the connection.
            let reset = resets.notified();
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_r, in_w) = inbound.into_split();
            let (out_r, out_w) = outbound.into_split();
            let mut cut = state.clone();
            tokio::select! {
                _ = pump(in_r, out_w, state.clone(), |s| s.up) => {}
                _ = pump(out_r, in_w, state, |s| s.down) => {}
                _ = cut.wait_for(|s| s.cut) => {}
                () = reset => {}
            }
            // Returning drops both sockets: the connection is gone.
        });
    }
}

/// Copies one direction, reading continuously and forwarding each chunk
/// as its flow allows. Ends when either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: watch::Receiver<LinkState>,
    flow: fn(&LinkState) -> Flow,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut state = state;
        // When the bytes forwarded so far would have passed a rate cap.
        let mut free_at = Instant::now();
        while let Some((at, chunk)) = rx.recv().await {
            loop {
                let f = flow(&state.borrow_and_update());
                match f {
                    Flow::Pass => break,
                    Flow::Rate(per_sec) => {
                        let took =
                            Duration::from_secs_f64(chunk.len() as f64 / per_sec.max(1) as f64);
                        let due = free_at.max(Instant::now()) + took;
                        tokio::select! {
                            _ = tokio::time::sleep_until(due) => {
                                free_at = due;
                                break;
                            }
                            r = state.changed() => if r.is_err() { return },
                        }
                    }
                    Flow::Delay(d) => {
                        // Re-read the flow if it changes meanwhile (a
                        // delay turned into a hold, say).
                        tokio::select! {
                            _ = tokio::time::sleep_until(at + d) => break,
                            r = state.changed() => if r.is_err() { return },
                        }
                    }
                    Flow::Hold => {
                        if state.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
            // A cut ends the connection, but the task noticing it may run
            // after this one: no byte passes once the link is cut (under
            // load, a publish made after a leader was isolated reached a
            // follower and was committed by the majority).
            if state.borrow().cut || to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    // The writer ends when the reader's channel closes and is drained.
    tokio::join!(reader, writer);
}

/// A proxy for every ordered pair of nodes.
pub struct Mesh {
    links: HashMap<(usize, usize), Proxy>,
    n: usize,
}

impl Mesh {
    /// Proxies between nodes whose cluster listeners are `ports`.
    pub async fn new(ports: &[u16]) -> Mesh {
        let mut links = HashMap::new();
        for from in 0..ports.len() {
            for (to, &port) in ports.iter().enumerate() {
                if from != to {
                    links.insert((from, to), Proxy::start(port).await);
                }
            }
        }
        Mesh {
            links,
            n: ports.len(),
        }
    }

    /// Proxies between the nodes of `c`, planned and not started yet,
    /// each node's peer list set to reach the others through them.
    pub async fn between(c: &mut crate::harness::TestCluster) -> Mesh {
        let ports: Vec<u16> = c.nodes.iter().map(|n| n.cluster_port).collect();
        let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
        let mesh = Mesh::new(&ports).await;
        for (i, n) in c.nodes.iter_mut().enumerate() {
            n.peers = Some(mesh.peers_of(i, &names, ports[i]));
        }
        mesh
    }

    /// Node `from`'s peer list: itself at its own listener, the others
    /// through its proxies.
    pub fn peers_of(&self, from: usize, names: &[String], own_port: u16) -> String {
        (0..self.n)
            .map(|to| {
                let port = if to == from {
                    own_port
                } else {
                    self.links[&(from, to)].port
                };
                format!("{}=127.0.0.1:{port}", names[to])
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The proxy `from` dials to reach `to`.
    pub fn link(&self, from: usize, to: usize) -> &Proxy {
        &self.links[&(from, to)]
    }

    /// Sets the proxy `from`→`to`.
    pub fn set(&self, from: usize, to: usize, state: LinkState) {
        self.link(from, to).set(state);
    }

    /// Drops the connections `from` opened to `to`; new ones pass.
    pub fn reset(&self, from: usize, to: usize) {
        self.link(from, to).reset();
    }

    /// `from` can no longer dial `to` (`to` may still dial `from`).
    pub fn cut_one_way(&self, from: usize, to: usize) {
        self.set(
            from,
            to,
            LinkState {
                cut: true,
                ..LinkState::PASS
            },
        );
    }

    /// Neither of `a` and `b` reaches the other.
    pub fn cut(&self, a: usize, b: usize) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Node `i` is cut off from every other node.
    pub fn isolate(&self, i: usize) {
        for j in (0..self.n).filter(|&j| j != i) {
            self.cut(i, j);
        }
    }

    /// Every byte to and from node `i` is held: its links accept
    /// connections and take bytes, and forward nothing.
    pub fn blackhole(&self, i: usize) {
        let held = LinkState {
            cut: false,
            up: Flow::Hold,
            down: Flow::Hold,
        };
        for j in (0..self.n).filter(|&j| j != i) {
            self.set(i, j, held);
            self.set(j, i, held);
        }
    }

    /// Every byte between `a` and `b`, both ways on both links, arrives
    /// `d` late.
    pub fn delay(&self, a: usize, b: usize, d: Duration) {
        let slow = LinkState {
            cut: false,
            up: Flow::Delay(d),
            down: Flow::Delay(d),
        };
        self.set(a, b, slow);
        self.set(b, a, slow);
    }

    /// Everything passes again.
    pub fn heal(&self) {
        for p in self.links.values() {
            p.set(LinkState::PASS);
        }
    }
}
