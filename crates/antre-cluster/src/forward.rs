//! Forwarding: a client on any node publishes to and consumes from queues
//! another node owns ([`antre_broker::remote`] is the broker's side).
//!
//! **The data link.** Each node that forwards to an owner dials it once
//! more, besides the metadata link: one connection per (forwarding node,
//! owner), authenticated as every cluster connection, then switched to the
//! binary frames of [`crate::data_wire`] with a [`Request::DataLink`]. It is
//! full duplex: the forwarding node writes publish batches and proxy
//! channel methods, the owner writes batch answers, method answers and
//! pushes (deliveries, cancels) whenever they happen. A dedicated
//! connection rather than long polls on the request/response link: the
//! owner's deliveries go out the moment its queue dispatches, the order
//! of everything sent one way is the connection's, and a broken connection
//! is one event both sides act on. Each side has a writer task that takes
//! every frame queued since its last write and writes them together, so a
//! busy channel's publishes travel many per write, pipelined, never one
//! round trip per message.
//!
//! **On the owner** each connection runs one task that owns the proxy
//! channels (real [`Channel`]s, with a [`DeliverySink`] that feeds that task)
//! and enqueues forwarded publishes with
//! [`antre_broker::vhost::Vhost::publish_forwarded`]; a batch with
//! persistent messages for durable queues is answered after the syncer
//! synced them. When the connection drops, every proxy channel is closed:
//! its consumers are cancelled and its unacked deliveries requeued, as for
//! a client connection that went away.
//!
//! **On the forwarding node**, when the connection drops (or cannot be
//! made), every publish batch waiting for an answer fails (its publishes
//! are nacked: they are not known to be stored) unless its queues are all
//! quorum queues, which take it again from their next leader, once
//! (`Forwarder::send_again`); every waiting call fails,
//! and every forwarded consumer is cancelled (the client gets basic.cancel
//! if it announced `consumer_cancel_notify`, as RabbitMQ cancels consumers
//! of a classic queue whose node went down). The next use dials again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use antre_amqp::Method;
use antre_broker::channel::{Channel, ChannelContext, Outgoing};
use antre_broker::error::BrokerError;
use antre_broker::queue::{Delivery, DeliverySink};
use antre_broker::remote::{
    error_from_reply, RemoteChannel, RemoteDelivery, RemoteDone, RemotePublish, RemoteQueues,
    RemoteResult,
};
use antre_broker::Broker;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::stream::BoxStream;
use tokio::sync::mpsc;

use crate::auth;
use crate::data_wire::{DataFrame, MAX_DATA_FRAME};
use crate::feature_flags::FlagSeen;
use crate::network::Link;
use crate::state_machine::MetaProgress;
use crate::wire::{write_frame, Request};

mod parked;

/// How long a failed link stays failed before the next use dials again.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// A write gathers queued frames up to about this many bytes.
const WRITE_BATCH: usize = 1 << 20;
/// What a forwarded message costs in a link's buffer besides its body.
const PUBLISH_OVERHEAD: u64 = 256;
/// Delivery bytes a proxy channel may have pushed that the forwarding
/// node's session has not taken yet (as a connection's output window).
const PUSH_WINDOW: u64 = 1 << 20;
/// The forwarding node gives room back in steps of this many bytes.
const CREDIT_STEP: u64 = 64 << 10;
/// A batch sent again waits this long before it goes to the node it was
/// sent to (rather than the next leader): a link that died is redialled
/// after [`RETRY_AFTER`], a new leader takes up its queue once it applied
/// its log.
const RETRY_SAME: Duration = Duration::from_millis(100);
/// Queues of a vhost past which the numbering of forwarded messages
/// forgets the deleted ones (see [`Forwarder::number`]).
const SEQ_QUEUES: usize = 4096;

/// This node's forwarder: the [`RemoteQueues`] the broker holds.
pub struct Forwarder {
    link: Arc<Link>,
    /// Where a node is, by name: this node's list, else the membership
    /// (set once the cluster runs; see [`Forwarder::set_address_book`]).
    addresses: std::sync::OnceLock<NodeAddresses>,
    broker: Weak<Broker>,
    links: Mutex<HashMap<String, Arc<DataLink>>>,
    next: AtomicU64,
    runtime: tokio::runtime::Handle,
    /// How far this node applied the metadata: each publish batch says so
    /// (see [`crate::state_machine::MetaProgress`]).
    progress: Arc<MetaProgress>,
    /// Batches held for their quorum queues' next leader (see
    /// [`parked`]).
    parked: Mutex<parked::ParkedPublishes>,
    /// This node's run (drawn when it starts) and its next number for a
    /// message to each queue (vhost, name): what makes a message sent
    /// again to a quorum queue's next leader stored once
    /// ([`antre_broker::replicated::Source`]).
    run: u64,
    seqs: Mutex<HashMap<String, Numbers>>,
    /// Whether every member reads forwarded messages' numbers and skips a
    /// quorum queue's message sent again.
    dedupe: FlagSeen,
    /// Whether every member reads the metadata index in forwarded frames.
    metadata_index: FlagSeen,
    this: Weak<Forwarder>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

/// Looks up where a node is by its name.
pub type NodeAddresses = Box<dyn Fn(&str) -> Option<std::net::SocketAddr> + Send + Sync>;

/// A vhost's queues' next numbers for forwarded messages (see
/// [`Forwarder::number`]).
#[derive(Default)]
struct Numbers {
    next: HashMap<String, u64>,
    /// How many queues it may name before the deleted ones are dropped.
    prune_at: usize,
}

/// What a forwarding node keeps of one data connection.
struct DataLink {
    owner: String,
    /// Where its unanswered batches go to be sent again when it dies.
    forwarder: Weak<Forwarder>,
    tx: mpsc::UnboundedSender<Bytes>,
    state: Mutex<LinkState>,
    /// Bytes of forwarded publishes the owner has not answered yet (its
    /// buffer: queued here, in the sockets, or in the owner's hands).
    /// Past [`crate::ClusterConfig::forward_buffer`], the publishers that
    /// forward to this owner are blocked (see [`RemoteQueues::congested`]).
    unanswered: AtomicU64,
}

/// A publish batch the owner has not answered yet.
struct Pending {
    /// Messages in it.
    n: usize,
    /// Taken when the batch is answered, or failed on its timeout (then
    /// the entry stays, counting its bytes, until the owner answers or
    /// the link drops).
    done: Option<RemoteDone>,
    bytes: u64,
    sent: std::time::Instant,
    /// The batch as it was sent, when its messages carry their numbers
    /// (see [`Forwarder::send_again`]).
    resend: Option<Resend>,
}

/// A batch that may be sent again: its frame as it went out, read back
/// only if it is. Keeping the frame (which the link's writer held
/// anyway) rather than the messages lets each message go once it is
/// sent, and asks whether its queues are replicated only if it is sent
/// again: kept until the answer (and that asked for every batch), the
/// messages cost publishes through another node to 10 quorum queues 4%
/// of their rate and 6% more CPU per message; the frame, no difference
/// beyond the runs' spread (BENCHMARKS.md).
struct Resend {
    frame: Bytes,
    /// When it fails after all: its first sending's time (or when it was
    /// first held) and the forwarding timeout; sending it again does not
    /// move it.
    deadline: std::time::Instant,
}

impl Resend {
    /// The batch's vhost and messages, if every queue they name is a
    /// quorum queue (a classic queue's node that is gone has its queue
    /// with it, and a copy sent again to a classic queue or a stream would
    /// be stored twice).
    fn batch(&self, broker: Option<&Broker>) -> Option<Again> {
        let DataFrame::Publish {
            vhost, items, run, ..
        } = DataFrame::decode(self.frame.slice(4..)).ok()?
        else {
            return None;
        };
        let v = broker?.vhost(&vhost)?;
        parked::deduplicated(&v, &items).then_some(Again {
            vhost,
            batch: items,
            deadline: self.deadline,
            run: run?,
        })
    }
}

/// A batch to send again.
struct Again {
    vhost: String,
    /// The messages, with their numbers.
    batch: Vec<RemotePublish>,
    deadline: std::time::Instant,
    /// The run its numbers are of.
    run: u64,
}

#[derive(Default)]
struct LinkState {
    dead: Option<String>,
    died_at: Option<std::time::Instant>,
    publishes: HashMap<u64, Pending>,
    calls: HashMap<u64, std::sync::mpsc::Sender<Result<Vec<Outgoing>, BrokerError>>>,
    channels: HashMap<u64, Weak<ProxyHandle>>,
}

impl Forwarder {
    /// A forwarder over `link` for `broker`; call from the runtime.
    pub fn new(
        link: Arc<Link>,
        broker: &Arc<Broker>,
        progress: Arc<MetaProgress>,
    ) -> Arc<Forwarder> {
        Arc::new_cyclic(|this| Forwarder {
            link,
            addresses: std::sync::OnceLock::new(),
            broker: Arc::downgrade(broker),
            links: Mutex::default(),
            next: AtomicU64::new(1),
            runtime: tokio::runtime::Handle::current(),
            progress,
            parked: Mutex::default(),
            run: rand::random(),
            seqs: Mutex::default(),
            dedupe: FlagSeen::new(antre_broker::feature_flags::FORWARDED_PUBLISH_DEDUPE),
            metadata_index: FlagSeen::new(antre_broker::feature_flags::FORWARDED_METADATA_INDEX),
            this: Weak::clone(this),
        })
    }

    /// Gives each message of `batch` (for queues of `vhost`) that has none
    /// this run's next number in each of its queues. Every queue, classic
    /// ones too: whether a queue is replicated is asked only if the batch
    /// is to be sent again, not for every batch sent.
    fn number(&self, vhost: &str, batch: &mut [RemotePublish]) {
        let mut seqs = self.seqs.lock();
        if !seqs.contains_key(vhost) {
            seqs.insert(vhost.to_owned(), Numbers::default());
        }
        let Some(numbers) = seqs.get_mut(vhost) else {
            return;
        };
        if numbers.next.len() >= numbers.prune_at.max(SEQ_QUEUES) {
            // Queues deleted since start over (a queue declared again is a
            // new group, which knows no number yet); the rest is looked
            // at again once as many more came.
            if let Some(v) = self.broker.upgrade().and_then(|b| b.vhost(vhost)) {
                numbers.next.retain(|q, _| v.has_queue(q));
            }
            numbers.prune_at = 2 * numbers.next.len();
        }
        let next = &mut numbers.next;
        for p in batch.iter_mut().filter(|p| p.seqs.is_empty()) {
            p.seqs = p
                .queues
                .iter()
                .map(|q| {
                    let n = match next.get_mut(q) {
                        Some(n) => n,
                        None => next.entry(q.clone()).or_insert(0),
                    };
                    *n += 1;
                    *n
                })
                .collect();
        }
    }

    /// Sends again batches `gone` did not answer before its link died,
    /// or answered as not stored (it no longer led their queues, or not
    /// yet): to their queues' next leader once it is known, or to `gone`
    /// again after [`RETRY_SAME`] (its link back, or its leadership taken
    /// up). Each carries this run's numbers, so its queues skip what they
    /// stored already. Each goes among the held batches by when it was
    /// first sent: after those that came before it (other batches sent
    /// again), before those held since (which came after it).
    fn send_again(&self, gone: &str, batches: Vec<(Again, RemoteDone)>) {
        if batches.is_empty() {
            return;
        }
        let messages: usize = batches.iter().map(|(r, _)| r.batch.len()).sum();
        if let Some(b) = self.broker.upgrade() {
            b.metrics.forwards_sent_again.add(messages as u64);
        }
        tracing::info!(
            node = gone,
            messages,
            "forwarded publishes cluster node '{gone}' did not store (or may not have): sending them again to their queues' leader"
        );
        let mut held = self.parked.lock();
        let same_after = std::time::Instant::now() + RETRY_SAME;
        for (r, done) in batches {
            held.insert_by_age(parked::Parked {
                vhost: r.vhost,
                batch: r.batch,
                done,
                gone: gone.to_owned(),
                same_after: Some(same_after),
                deadline: r.deadline,
                run: r.run,
            });
        }
        self.start_releasing(&mut held);
    }

    /// Whether the cluster enabled `quorum_queue_forwarded_publish_dedupe`:
    /// messages carry their numbers, and a quorum queue skips one it has.
    pub(crate) fn dedupes(&self) -> bool {
        self.dedupe.enabled(&self.broker)
    }

    /// Sends on to the next leader of its quorum queue a `batch` this node
    /// took while it led the queue, and may have stored or not (its entry
    /// was not committed in this node's term): see
    /// [`crate::queue_group`]'s `Replica::send_on`. Its messages carry
    /// the replica's `run` and numbers, so the queue skips one it has. It
    /// is held until the next leader is known, as a forwarded batch whose
    /// leader went; or put in the queue here, if this node leads it again.
    pub(crate) fn send_on(
        &self,
        vhost: &str,
        run: u64,
        batch: Vec<RemotePublish>,
        done: RemoteDone,
    ) {
        if let Some(b) = self.broker.upgrade() {
            b.metrics.forwards_sent_again.add(batch.len() as u64);
        }
        // Publishes that come after the step-down, before the next leader
        // is known, are sent on one by one: logged once a second.
        let due = self.parked.lock().sent_on.count(batch.len());
        if let Some(messages) = due {
            tracing::info!(
                vhost,
                messages,
                "publishes to a quorum queue this node no longer leads, not committed in its term: sending them on to its next leader"
            );
        }
        self.hold("", vhost, batch, done, run);
    }

    /// Waits (up to `within`) until no held batch names queue `name` of
    /// `vhost`, which this node has just taken over: until then, its
    /// clients' publishes to the queue are held behind those batches
    /// (the vhost still names the former leader, so they come here), and
    /// only after go to the queue directly. Before, they went to it at
    /// once, ahead of the batches its former leader had answered "not
    /// stored", which the release task put in the queue up to a poll
    /// later: 13 pairs of a publisher's messages out of order in one run
    /// of the drained leader's test.
    pub(crate) async fn released(&self, vhost: &str, name: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.parked.lock().holds(vhost, name) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(parked::POLL).await;
        }
    }

    /// Starts the task that releases held batches, unless it runs.
    fn start_releasing(&self, held: &mut parked::ParkedPublishes) {
        if !std::mem::replace(&mut held.releasing, true) {
            self.runtime.spawn(release_parked(Weak::clone(&self.this)));
        }
    }

    /// Holds `batch`, which could not be sent to `gone` (its link is
    /// dead), until its quorum queues' next leader is known: see
    /// [`parked`]. Fails it at once if one of its queues is not
    /// replicated.
    fn park(&self, gone: &str, vhost: &str, batch: Vec<RemotePublish>, done: RemoteDone) {
        let replicated = self
            .broker
            .upgrade()
            .and_then(|b| b.vhost(vhost))
            .is_some_and(|v| parked::replicated(&v, &batch));
        if !replicated {
            let n = batch.len();
            done(vec![RemoteResult::Failed; n]);
            return;
        }
        self.hold(gone, vhost, batch, done, self.run);
    }

    /// Holds `batch` behind the batches held already (see [`Self::park`]),
    /// its messages numbered in `run` (if they are).
    fn hold(&self, gone: &str, vhost: &str, batch: Vec<RemotePublish>, done: RemoteDone, run: u64) {
        let timeout = self.link.config.forward_timeout;
        let mut held = self.parked.lock();
        held.push_back(parked::Parked::new(vhost, batch, done, gone, timeout, run));
        self.start_releasing(&mut held);
    }

    /// Sends or releases the oldest held batch if its queues' leader is
    /// known (or its time is up); returns whether it did, or None once
    /// none is held.
    fn release_one(&self) -> Option<bool> {
        let broker = self.broker.upgrade();
        // Not held while the vhost is read: every forwarded publish takes
        // it, and one made under a lock of the vhost would wait for this
        // task while it waits for that lock.
        let now = std::time::Instant::now();
        let (vhost, queues, gone, deadline) = {
            let mut held = self.parked.lock();
            let Some(head) = held.front() else {
                held.releasing = false;
                return None;
            };
            let queues: Vec<String> = head.batch.iter().flat_map(|p| p.queues.clone()).collect();
            // Sent again: to the node it was sent to as well, after a
            // pause.
            let gone = match head.same_after {
                Some(t) if now >= t => String::new(),
                _ => head.gone.clone(),
            };
            (head.vhost.clone(), queues, gone, head.deadline)
        };
        let v = broker.as_ref().and_then(|b| b.vhost(&vhost));
        let target = v.as_ref().map_or(parked::Target::Unknown, |v| {
            parked::target(v, &queues, &gone)
        });
        if target == parked::Target::Unknown && now < deadline {
            return Some(false);
        }
        // Only this task takes held batches: the head is the one above.
        let p = self.parked.lock().pop_front()?;
        match (target, broker, v) {
            (parked::Target::Here, Some(broker), Some(v)) => {
                parked::publish_here(&broker, &v, p.run, p.batch, p.done);
            }
            (parked::Target::Node(node), _, _) => {
                let sent = self.send(&node, &p.vhost, p.batch, p.done, Some((p.deadline, p.run)));
                if let Err((batch, done)) = sent {
                    // Its next leader's link is dead too: held again, first.
                    self.parked.lock().push_front(parked::Parked {
                        batch,
                        done,
                        gone: node.to_string(),
                        same_after: p.same_after.map(|_| now + RETRY_SAME),
                        ..p
                    });
                    return Some(false);
                }
            }
            _ => {
                let n = p.batch.len();
                (p.done)(vec![RemoteResult::Failed; n]);
            }
        }
        Some(true)
    }

    /// How far this node applied the metadata log (what its data link's
    /// owner side waits on).
    pub(crate) fn progress(&self) -> Arc<MetaProgress> {
        Arc::clone(&self.progress)
    }

    /// Gives the forwarder where the nodes are. A node that joined later is
    /// in no peer list but its own: looked up in the list alone, it was
    /// never forwarded to ("no cluster node named 'n4'"), and every
    /// publish to its queues through another node was nacked.
    pub fn set_address_book(&self, book: NodeAddresses) {
        let _ = self.addresses.set(book);
    }

    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The live data link to `owner`, dialled if there is none.
    fn link_to(&self, owner: &str) -> Arc<DataLink> {
        let mut links = self.links.lock();
        if let Some(l) = links.get(owner) {
            let st = l.state.lock();
            // A link that just failed stays (dead) for a moment: what is
            // sent to it fails at once instead of dialling a down node
            // for every batch.
            let retry = st.died_at.is_some_and(|t| t.elapsed() >= RETRY_AFTER);
            if st.dead.is_none() || !retry {
                return Arc::clone(l);
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(DataLink {
            owner: owner.to_owned(),
            forwarder: Weak::clone(&self.this),
            tx,
            state: Mutex::default(),
            unanswered: AtomicU64::new(0),
        });
        links.insert(owner.to_owned(), Arc::clone(&link));
        let cfg = self.link.config.clone();
        let weak = Arc::downgrade(&link);
        let addr = self.addresses.get().and_then(|book| book(owner));
        self.runtime
            .spawn(expire_publishes(Weak::clone(&weak), cfg.forward_timeout));
        self.runtime.spawn(async move {
            let why = match dial(&cfg, addr, &weak).await {
                Ok(stream) => run_client(stream, rx, &weak).await,
                Err(e) => e,
            };
            if let Some(link) = weak.upgrade() {
                link.fail(&why);
            }
        });
        link
    }

    /// The broker, for the owner's side of the links.
    pub(crate) fn broker(&self) -> Weak<Broker> {
        Weak::clone(&self.broker)
    }

    /// Closes every data link (the node stops).
    pub fn shutdown(&self) {
        for (_, l) in self.links.lock().drain() {
            l.fail("this node is stopping");
        }
    }
}

/// Fails (nacks) the publishes of `link` its owner has not answered
/// within `timeout`: a paused or overloaded owner must not make publishers
/// wait forever. Their bytes stay counted until the owner answers or the
/// link drops, so publishers stay blocked while the owner is stuck.
async fn expire_publishes(link: Weak<DataLink>, timeout: Duration) {
    let tick = (timeout / 4).clamp(Duration::from_millis(20), Duration::from_millis(500));
    loop {
        tokio::time::sleep(tick).await;
        let Some(link) = link.upgrade() else {
            return;
        };
        let expired: Vec<(usize, RemoteDone)> = {
            let mut st = link.state.lock();
            if st.dead.is_some() {
                return;
            }
            st.publishes
                .values_mut()
                .filter(|p| p.done.is_some() && p.sent.elapsed() >= timeout)
                .filter_map(|p| Some((p.n, p.done.take()?)))
                .collect()
        };
        if expired.is_empty() {
            continue;
        }
        let messages: usize = expired.iter().map(|(n, _)| n).sum();
        tracing::warn!(
            node = link.owner,
            messages,
            "cluster node '{}' did not answer forwarded publishes within {timeout:?}: nacking them",
            link.owner
        );
        for (n, done) in expired {
            done(vec![RemoteResult::Failed; n]);
        }
    }
}

async fn dial(
    cfg: &crate::ClusterConfig,
    addr: Option<std::net::SocketAddr>,
    link: &Weak<DataLink>,
) -> Result<BoxStream, String> {
    let owner = link.upgrade().map(|l| l.owner.clone()).ok_or("gone")?;
    let addr = addr.ok_or_else(|| format!("no address known for cluster node '{owner}'"))?;
    let s = crate::network::dial(addr).await?;
    // With TLS on the link, the data link is TLS too, like every
    // connection between nodes.
    let mut s: BoxStream = match &cfg.tls {
        Some(tls) => tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, tls.connect(s))
            .await
            .map_err(|_| "TLS handshake timed out".to_owned())?
            .map_err(|e| format!("TLS: {e}"))?,
        None => Box::new(s),
    };
    tokio::time::timeout(
        auth::HANDSHAKE_TIMEOUT,
        auth::client(&mut s, &cfg.node_name, &owner, cfg.keys()),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    write_frame(&mut s, &Request::DataLink)
        .await
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Writes every frame queued on `rx`, batching what is queued together.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64 << 10);
    while let Some(first) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        w.write_all(&buf).await?;
    }
    Ok(())
}

/// Reads one data frame.
async fn read_data_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<DataFrame> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_DATA_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("data frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    DataFrame::decode(Bytes::from(body))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The forwarding side of a connection: writes what is queued, reads the
/// owner's answers and pushes. Returns why it ended.
async fn run_client<S>(
    stream: S,
    rx: mpsc::UnboundedReceiver<Bytes>,
    link: &Weak<DataLink>,
) -> String
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let mut writer = tokio::spawn(write_loop(w, rx));
    let mut r = tokio::io::BufReader::with_capacity(64 << 10, r);
    loop {
        tokio::select! {
            frame = read_data_frame(&mut r) => match frame {
                Ok(frame) => {
                    let Some(l) = link.upgrade() else {
                        writer.abort();
                        return "gone".into();
                    };
                    l.on_frame(frame);
                }
                Err(e) => {
                    writer.abort();
                    return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        "the connection was closed".into()
                    } else {
                        e.to_string()
                    };
                }
            },
            done = &mut writer => {
                return match done {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the link was closed".into(),
                };
            }
        }
    }
}

impl DataLink {
    fn send(&self, frame: &DataFrame) -> bool {
        self.tx.send(frame.encode()).is_ok()
    }

    /// The connection ended: fail everything waiting on it.
    fn fail(&self, why: &str) {
        let (publishes, channels) = {
            let mut st = self.state.lock();
            if st.dead.is_some() {
                return;
            }
            tracing::info!(
                node = self.owner,
                "data link to cluster node {} lost: {why}",
                self.owner
            );
            st.dead = Some(why.to_owned());
            st.died_at = Some(std::time::Instant::now());
            st.calls.clear();
            (
                std::mem::take(&mut st.publishes),
                std::mem::take(&mut st.channels),
            )
        };
        self.unanswered.store(0, Ordering::Release);
        let mut publishes: Vec<_> = publishes.into_iter().collect();
        publishes.sort_unstable_by_key(|(id, _)| *id);
        let forwarder = self.forwarder.upgrade();
        let broker = forwarder.as_ref().and_then(|f| f.broker.upgrade());
        let mut again = Vec::new();
        for (_, p) in publishes {
            let Some(done) = p.done else {
                continue;
            };
            match p.resend.and_then(|r| r.batch(broker.as_deref())) {
                Some(batch) => again.push((batch, done)),
                None => done(vec![RemoteResult::Failed; p.n]),
            }
        }
        if let Some(f) = forwarder {
            f.send_again(&self.owner, again);
        }
        for (_, ch) in channels {
            if let Some(ch) = ch.upgrade() {
                ch.lost();
            }
        }
    }

    /// Answers a batch with the owner's `results`, but for the messages it
    /// did not store because it no longer leads their queues (a rebalance,
    /// a lost election): with `resend`, those are sent again to the next
    /// leader, and answered with its results.
    fn answered(&self, mut results: Vec<RemoteResult>, done: RemoteDone, resend: Option<Resend>) {
        let failed: Vec<usize> = (0..results.len())
            .filter(|&i| results[i] == RemoteResult::Failed)
            .collect();
        let forwarder = self.forwarder.upgrade();
        let (false, Some(r), Some(forwarder)) = (failed.is_empty(), resend, forwarder) else {
            return done(results);
        };
        let broker = forwarder.broker.upgrade();
        let Some(mut again) = r.batch(broker.as_deref()) else {
            return done(results);
        };
        if again.batch.len() != results.len() {
            return done(results);
        }
        let mut batch: Vec<Option<RemotePublish>> = again.batch.into_iter().map(Some).collect();
        again.batch = failed.iter().filter_map(|&i| batch[i].take()).collect();
        let merged: RemoteDone = Box::new(move |later: Vec<RemoteResult>| {
            for (&i, r) in failed.iter().zip(later) {
                results[i] = r;
            }
            done(results);
        });
        forwarder.send_again(&self.owner, vec![(again, merged)]);
    }

    fn unreachable(&self) -> BrokerError {
        let why = self.state.lock().dead.clone().unwrap_or_default();
        BrokerError::NotFound(format!(
            "the queue's cluster node '{}' is unreachable: {why}",
            self.owner
        ))
    }

    fn on_frame(&self, frame: DataFrame) {
        match frame {
            DataFrame::Published { batch, results } => {
                let pending = self.state.lock().publishes.remove(&batch);
                if let Some(p) = pending {
                    let _ =
                        self.unanswered
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                                Some(v.saturating_sub(p.bytes))
                            });
                    if let Some(done) = p.done {
                        self.answered(results, done, p.resend);
                    }
                }
            }
            DataFrame::Reply { req, result } => {
                let tx = self.state.lock().calls.remove(&req);
                if let Some(tx) = tx {
                    let _ = tx.send(result.map_err(|(code, text)| error_from_reply(code, &text)));
                }
            }
            DataFrame::Push { ch, out } => {
                let ch = self.state.lock().channels.get(&ch).and_then(Weak::upgrade);
                if let Some(ch) = ch {
                    ch.on_push(out);
                }
            }
            other => tracing::debug!("unexpected data frame from the owner: {other:?}"),
        }
    }
}

impl Forwarder {
    /// Sends `batch` to `owner`, or gives it back if the link to `owner`
    /// is dead (nothing was sent). A batch sent before, or held, keeps its
    /// deadline for a sending again, and the run its messages were
    /// numbered in.
    fn send(
        &self,
        owner: &str,
        vhost: &str,
        batch: Vec<RemotePublish>,
        done: RemoteDone,
        held: Option<(std::time::Instant, u64)>,
    ) -> Result<(), (Vec<RemotePublish>, RemoteDone)> {
        let link = self.link_to(owner);
        let id = self.next_id();
        let n = batch.len();
        let bytes = batch
            .iter()
            .map(|p| p.message.body.len() as u64 + PUBLISH_OVERHEAD)
            .sum();
        let mut batch = batch;
        let numbered = self.dedupes();
        if numbered {
            self.number(vhost, &mut batch);
        }
        // Read after routing: at least the entry that showed this node
        // the queues. Encoded before the frame is kept; sent after it is,
        // so that its answer finds it.
        let frame = DataFrame::Publish {
            batch: id,
            vhost: vhost.to_owned(),
            items: batch,
            applied: self
                .metadata_index
                .enabled(&self.broker)
                .then(|| self.progress.seen()),
            run: numbered.then_some(held.map_or(self.run, |(_, run)| run)),
        };
        let encoded = frame.encode();
        let DataFrame::Publish { items: batch, .. } = frame else {
            unreachable!("built as a publish above")
        };
        {
            let mut st = link.state.lock();
            if st.dead.is_some() {
                return Err((batch, done));
            }
            st.publishes.insert(
                id,
                Pending {
                    n,
                    done: Some(done),
                    bytes,
                    sent: std::time::Instant::now(),
                    resend: numbered.then(|| Resend {
                        frame: encoded.clone(),
                        deadline: held.map_or_else(
                            || std::time::Instant::now() + self.link.config.forward_timeout,
                            |(deadline, _)| deadline,
                        ),
                    }),
                },
            );
            link.unanswered.fetch_add(bytes, Ordering::AcqRel);
        }
        if link.tx.send(encoded).is_err() {
            link.fail("the link was closed");
        }
        Ok(())
    }
}

/// Puts forwarded messages (each with the queues it was routed to) in this
/// node's queues of `v`: each one's result, and what must be synced
/// before they are answered.
fn put_forwarded(
    v: &antre_broker::Vhost,
    run: Option<u64>,
    items: impl IntoIterator<Item = RemotePublish>,
) -> (
    Vec<RemoteResult>,
    Vec<Arc<dyn antre_broker::durable::Durable>>,
) {
    let mut stored = Vec::new();
    let results = items
        .into_iter()
        .map(|p| {
            let sources = run.filter(|_| !p.seqs.is_empty()).map(|r| (r, &p.seqs[..]));
            match v.publish_forwarded(p.message, &p.queues, sources) {
                Ok(o) => {
                    let result = o.forwarded_result();
                    for s in o.stored {
                        antre_broker::durable::add_once(&mut stored, s);
                    }
                    result
                }
                Err(e) => {
                    tracing::warn!(vhost = v.name, "forwarded publish failed: {e}");
                    RemoteResult::Failed
                }
            }
        })
        .collect();
    (results, stored)
}

/// Releases held batches in order, as their queues' next leaders become
/// known, until none is held.
async fn release_parked(forwarder: Weak<Forwarder>) {
    loop {
        let released = match forwarder.upgrade() {
            Some(f) => f.release_one(),
            None => return,
        };
        match released {
            None => return,
            Some(true) => {}
            Some(false) => tokio::time::sleep(parked::POLL).await,
        }
    }
}

impl RemoteQueues for Forwarder {
    fn publish(&self, owner: &str, vhost: &str, batch: Vec<RemotePublish>, done: RemoteDone) {
        // Behind a held batch to the same queues: after it, in order.
        let (batch, done) = {
            let mut held = self.parked.lock();
            let timeout = self.link.config.forward_timeout;
            match held.hold_behind(vhost, batch, done, timeout, self.run) {
                Ok(()) => return self.start_releasing(&mut held),
                Err(back) => back,
            }
        };
        if let Err((batch, done)) = self.send(owner, vhost, batch, done, None) {
            self.park(owner, vhost, batch, done);
        }
    }

    fn congested(&self, owner: &str) -> bool {
        let limit = self.link.config.forward_buffer;
        self.links
            .lock()
            .get(owner)
            .is_some_and(|l| l.unanswered.load(Ordering::Acquire) > limit)
    }

    fn open_channel(
        &self,
        owner: &str,
        vhost: &str,
        user: &str,
        sink: Arc<dyn DeliverySink>,
    ) -> Arc<dyn RemoteChannel> {
        let link = self.link_to(owner);
        let ch = self.next_id();
        let handle = Arc::new(ProxyHandle {
            link: Arc::clone(&link),
            ch,
            sink,
            consumers: Mutex::default(),
            dead: AtomicBool::new(false),
            this: Mutex::new(Weak::new()),
            next_req: AtomicU64::new(1),
            timeout: self.link.config.change_timeout,
            untaken: AtomicU64::new(0),
            applied: self
                .metadata_index
                .enabled(&self.broker)
                .then(|| Arc::clone(&self.progress)),
        });
        *handle.this.lock() = Arc::downgrade(&handle);
        let registered = {
            let mut st = link.state.lock();
            if st.dead.is_none() {
                st.channels.insert(ch, Arc::downgrade(&handle));
                true
            } else {
                false
            }
        };
        if !registered
            || !link.send(&DataFrame::Open {
                ch,
                vhost: vhost.to_owned(),
                user: user.to_owned(),
            })
        {
            handle.dead.store(true, Ordering::Release);
        }
        handle
    }
}

/// A proxy channel on an owner, as the forwarding node holds it.
struct ProxyHandle {
    link: Arc<DataLink>,
    ch: u64,
    sink: Arc<dyn DeliverySink>,
    /// The consumers it holds, to cancel if the link drops.
    consumers: Mutex<HashSet<String>>,
    dead: AtomicBool,
    this: Mutex<Weak<ProxyHandle>>,
    next_req: AtomicU64,
    timeout: Duration,
    /// Delivery bytes the session took and the owner was not told of.
    untaken: AtomicU64,
    /// How far this node applied the metadata, named in each call (once
    /// the cluster enabled the flag for it when the channel opened).
    applied: Option<Arc<MetaProgress>>,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("owner", &self.link.owner)
            .field("ch", &self.ch)
            .finish()
    }
}

impl ProxyHandle {
    /// The link dropped: the owner cancelled this channel's consumers.
    fn lost(&self) {
        self.dead.store(true, Ordering::Release);
        let tags: Vec<String> = self.consumers.lock().drain().collect();
        for tag in tags {
            self.sink.cancel(&tag);
        }
    }

    fn on_push(&self, out: Vec<Outgoing>) {
        let Some(me) = self.this.lock().upgrade() else {
            return;
        };
        for item in out {
            match item {
                Outgoing::Content(Method::BasicDeliver(d), message) => {
                    let delivery = RemoteDelivery {
                        channel: Arc::clone(&me) as Arc<dyn RemoteChannel>,
                        consumer_tag: d.consumer_tag,
                        remote_tag: d.delivery_tag,
                        redelivered: d.redelivered,
                        message,
                    };
                    if let Err(back) = self.sink.deliver_remote(delivery) {
                        Channel::refuse_remote(&back);
                    }
                }
                Outgoing::Method(Method::BasicCancel(c)) => {
                    self.consumers.lock().remove(&c.consumer_tag);
                    self.sink.cancel(&c.consumer_tag);
                }
                _ => {}
            }
        }
    }

    fn wait(
        &self,
        rx: std::sync::mpsc::Receiver<Result<Vec<Outgoing>, BrokerError>>,
    ) -> Result<Vec<Outgoing>, BrokerError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let recv = || rx.recv_timeout(self.timeout);
        let got = match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(recv)
            }
            Ok(_) => {
                return Err(BrokerError::Internal(
                    "forwarding cannot wait on a single-threaded runtime".into(),
                ))
            }
            Err(_) => recv(),
        };
        match got {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(BrokerError::NotFound(format!(
                "the queue's cluster node '{}' did not answer within {:?}",
                self.link.owner, self.timeout
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(self.link.unreachable()),
        }
    }
}

impl RemoteChannel for ProxyHandle {
    fn call(&self, method: Method) -> Result<Vec<Outgoing>, BrokerError> {
        if self.dead.load(Ordering::Acquire) {
            return Err(self.link.unreachable());
        }
        let consume_tag = match &method {
            Method::BasicConsume(c) => Some(c.consumer_tag.clone()),
            _ => None,
        };
        let req = self.next_req.fetch_add(1, Ordering::Relaxed) << 20 | (self.ch & 0xfffff);
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut st = self.link.state.lock();
            if st.dead.is_some() {
                drop(st);
                return Err(self.link.unreachable());
            }
            st.calls.insert(req, tx);
        }
        if let Some(tag) = &consume_tag {
            self.consumers.lock().insert(tag.clone());
        }
        let sent = self.link.send(&DataFrame::Call {
            ch: self.ch,
            req,
            method,
            applied: self.applied.as_ref().map(|p| p.seen()),
        });
        let result = if sent {
            self.wait(rx)
        } else {
            Err(self.link.unreachable())
        };
        self.link.state.lock().calls.remove(&req);
        if let (Err(_), Some(tag)) = (&result, &consume_tag) {
            self.consumers.lock().remove(tag);
        }
        result
    }

    fn cast(&self, methods: Vec<Method>) {
        if self.dead.load(Ordering::Acquire) {
            return;
        }
        for method in methods {
            if let Method::BasicCancel(c) = &method {
                self.consumers.lock().remove(&c.consumer_tag);
            }
            self.link.send(&DataFrame::Call {
                ch: self.ch,
                req: 0,
                method,
                applied: None,
            });
        }
    }

    fn is_open(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
    }

    fn taken(&self, bytes: u64) {
        let total = self.untaken.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if total < CREDIT_STEP || self.dead.load(Ordering::Acquire) {
            return;
        }
        let bytes = self.untaken.swap(0, Ordering::AcqRel);
        if bytes > 0 {
            self.link.send(&DataFrame::Credit { ch: self.ch, bytes });
        }
    }

    fn close(&self) {
        self.link.state.lock().channels.remove(&self.ch);
        if !self.dead.swap(true, Ordering::AcqRel) {
            self.link.send(&DataFrame::Close { ch: self.ch });
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if !self.dead.load(Ordering::Acquire) {
            self.link.send(&DataFrame::Close { ch: self.ch });
        }
    }
}

// ---- the owner's side ----

/// What reaches the owner's task for one connection.
#[derive(Debug)]
enum Event {
    Frame(DataFrame),
    Deliver(u64, Delivery),
    Cancel(u64, String),
    Synced(u64, u64, bool),
    /// A stream one of the proxy channel's consumers waits on has a new
    /// chunk.
    StreamReady(u64),
    Ended(String),
}

/// The delivery bytes a proxy channel pushed and the forwarding node's
/// session has not taken yet (see [`PUSH_WINDOW`]).
#[derive(Debug, Default)]
struct PushWindow {
    in_flight: AtomicU64,
    /// A queue found the window full: the next credit kicks the queues.
    starved: AtomicBool,
}

impl PushWindow {
    fn room(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) < PUSH_WINDOW
    }

    /// Gives `bytes` back; returns whether a queue waits for room.
    fn credit(&self, bytes: u64) -> bool {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(bytes))
            });
        self.starved.swap(false, Ordering::AcqRel)
    }
}

/// The sink of a proxy channel (`ch`), or of forwarded publishes (`ch` 0).
#[derive(Debug)]
struct ProxySink {
    ch: u64,
    tx: mpsc::UnboundedSender<Event>,
    window: Arc<PushWindow>,
}

impl DeliverySink for ProxySink {
    fn deliver(&self, delivery: Delivery) -> Result<(), Box<Delivery>> {
        let cost =
            delivery.entry.message.body.len() as u64 + antre_broker::queue::DELIVERY_OVERHEAD;
        self.window.in_flight.fetch_add(cost, Ordering::AcqRel);
        match self.tx.send(Event::Deliver(self.ch, delivery)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(Event::Deliver(_, d))) => {
                self.window.credit(cost);
                Err(Box::new(d))
            }
            Err(_) => Ok(()),
        }
    }

    fn has_room(&self) -> bool {
        if self.window.room() {
            return true;
        }
        self.window.starved.store(true, Ordering::Release);
        // A credit may have come between the two loads: look again, so it
        // cannot strand the queue.
        self.window.room()
    }
    fn cancel(&self, consumer_tag: &str) {
        let _ = self
            .tx
            .send(Event::Cancel(self.ch, consumer_tag.to_owned()));
    }
    fn synced(&self, token: u64, ok: bool) {
        let _ = self.tx.send(Event::Synced(self.ch, token, ok));
    }
}

/// Serves a data connection from `peer` on this (owning) node, until it
/// ends; then closes its proxy channels (requeueing what they delivered
/// and nobody settled).
pub async fn serve<S>(
    stream: S,
    peer: String,
    broker: Weak<Broker>,
    progress: Arc<MetaProgress>,
    wait: Duration,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(write_loop(w, out_rx));
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let reader_tx = ev_tx.clone();
    let reader = tokio::spawn(async move {
        let mut r = tokio::io::BufReader::with_capacity(64 << 10, r);
        loop {
            match read_data_frame(&mut r).await {
                Ok(f) => {
                    if reader_tx.send(Event::Frame(f)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = reader_tx.send(Event::Ended(e.to_string()));
                    return;
                }
            }
        }
    });
    let mut owner = Owner {
        broker,
        peer: Arc::from(peer.as_str()),
        channels: HashMap::new(),
        windows: HashMap::new(),
        batches: HashMap::new(),
        next_token: 1,
        out: out_tx,
        events: ev_tx,
    };
    while let Some(event) = ev_rx.recv().await {
        if let Event::Ended(why) = &event {
            tracing::debug!(peer, "data link from {peer} ended: {why}");
            break;
        }
        if owner.out.is_closed() {
            break;
        }
        // A queue declared a moment ago may be known to the forwarding
        // node and not yet here: "no such queue" would be taken for
        // unroutable, and confirmed (for a consume, get or passive
        // declare, answered 404). Later frames of this link wait too,
        // which keeps its order.
        if let Event::Frame(frame) = &event {
            if let Some(index) = owner.behind(frame, progress.done()) {
                catch_up(&progress, index, wait, &peer).await;
            }
            owner.taken_over(frame).await;
        }
        owner.on_event(event);
    }
    reader.abort();
    writer.abort();
    for ch in owner.channels.keys().copied().collect::<Vec<_>>() {
        owner.close(ch);
    }
    // Deliveries already on their way to the closed channels go back.
    ev_rx.close();
    while let Ok(event) = ev_rx.try_recv() {
        if let Event::Deliver(_, d) = event {
            let queue = Arc::clone(&d.queue);
            queue.return_undelivered(d);
        }
    }
}

/// How long a forwarded publish waits for a takeover of its quorum queue
/// under way here (see [`Owner::taken_over`]). One usually takes a few
/// milliseconds: the new leader applies its log and hears from a majority
/// once; past this, the publish is answered "not yet" and sent again.
const TAKEOVER_WAIT: Duration = Duration::from_secs(1);

/// Waits (up to `wait`) until this node applied the metadata entry at
/// `index`, which a forwarded frame from `peer` names.
async fn catch_up(progress: &MetaProgress, index: u64, wait: Duration, peer: &str) {
    let deadline = tokio::time::Instant::now() + wait;
    if !progress.reached(index, deadline).await {
        tracing::warn!(
            peer,
            index,
            "a forwarded frame names metadata this node has not applied yet"
        );
    }
}

struct Owner {
    broker: Weak<Broker>,
    /// The forwarding node.
    peer: Arc<str>,
    channels: HashMap<u64, Channel>,
    /// Each proxy channel's push window.
    windows: HashMap<u64, Arc<PushWindow>>,
    /// Publish batches waiting for the syncer: the forwarder's number and
    /// the results, by sync token.
    batches: HashMap<u64, (u64, Vec<RemoteResult>)>,
    next_token: u64,
    out: mpsc::UnboundedSender<Bytes>,
    events: mpsc::UnboundedSender<Event>,
}

impl Owner {
    /// The metadata entry `frame` names, if this node has applied only up
    /// to `done` and lacks a queue (or the vhost) the frame names.
    fn behind(&self, frame: &DataFrame, done: u64) -> Option<u64> {
        let (index, misses) = match frame {
            DataFrame::Publish {
                vhost,
                items,
                applied: Some(index),
                ..
            } if done < *index => (*index, self.misses(vhost, items)),
            DataFrame::Call {
                ch,
                method,
                applied: Some(index),
                ..
            } if done < *index => (*index, self.call_misses(*ch, method)),
            _ => return None,
        };
        misses.then_some(index)
    }

    /// Waits (up to [`TAKEOVER_WAIT`]) while this node takes over a quorum
    /// queue a forwarded publish names: it was elected its leader, the
    /// forwarding node heard so and sent the publish here, and its engine
    /// is not serving yet. Answered "not yet" at once, the publish went
    /// back to be sent again after a pause, and the publishes behind it on
    /// this link, which came once the takeover was done, were stored
    /// ahead of it: a publisher's messages out of order (4 pairs in one
    /// run of the forwarding failover test, 1 in 4 runs of three copies at
    /// once). Later frames of the link wait too, which keeps its order.
    async fn taken_over(&self, frame: &DataFrame) {
        let DataFrame::Publish { vhost, items, .. } = frame else {
            return;
        };
        let Some(v) = self.broker.upgrade().and_then(|b| b.vhost(vhost)) else {
            return;
        };
        let mut names: Vec<&String> = items.iter().flat_map(|p| &p.queues).collect();
        names.sort_unstable();
        names.dedup();
        let takeovers: Vec<_> = names
            .into_iter()
            .filter_map(|q| v.queue_info(q)?.replica()?.taking_over())
            .collect();
        if takeovers.is_empty() {
            return;
        }
        let all = async {
            for t in takeovers {
                t.await;
            }
        };
        let _ = tokio::time::timeout(TAKEOVER_WAIT, all).await;
    }

    /// Whether this node lacks the vhost or one of the queues that
    /// forwarded messages name.
    fn misses(&self, vhost: &str, items: &[RemotePublish]) -> bool {
        let Some(v) = self.broker.upgrade().and_then(|b| b.vhost(vhost)) else {
            return true;
        };
        items
            .iter()
            .flat_map(|p| &p.queues)
            .any(|q| !v.has_queue(q))
    }

    /// Whether a call on proxy channel `ch` names a queue this node lacks.
    fn call_misses(&self, ch: u64, method: &Method) -> bool {
        let queue = match method {
            Method::BasicConsume(m) => &m.queue,
            Method::BasicGet(m) => &m.queue,
            Method::QueueDeclare(m) => &m.queue,
            Method::QueuePurge(m) => &m.queue,
            _ => return false,
        };
        self.channels
            .get(&ch)
            .is_some_and(|c| !c.vhost().has_queue(queue))
    }

    fn send(&self, frame: &DataFrame) {
        let _ = self.out.send(frame.encode());
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Frame(frame) => self.on_frame(frame),
            Event::Deliver(ch, d) => match self.channels.get_mut(&ch) {
                Some(channel) => {
                    let cost =
                        d.entry.message.body.len() as u64 + antre_broker::queue::DELIVERY_OVERHEAD;
                    let mut out = Vec::new();
                    channel.deliver(d, &mut out);
                    let pushed = out
                        .iter()
                        .any(|o| matches!(o, Outgoing::Content(Method::BasicDeliver(_), _)));
                    if !pushed {
                        // It went back to its queue (its consumer was
                        // cancelled): its room in the window is free.
                        if let Some(w) = self.windows.get(&ch) {
                            w.credit(cost);
                        }
                    }
                    self.push(ch, out);
                }
                None => {
                    let queue = Arc::clone(&d.queue);
                    queue.return_undelivered(d);
                }
            },
            Event::Cancel(ch, tag) => {
                if let Some(channel) = self.channels.get_mut(&ch) {
                    if channel.consumer_cancelled(&tag) {
                        let cancel = antre_amqp::method::BasicCancel {
                            consumer_tag: tag,
                            nowait: true,
                        };
                        self.push(ch, vec![Outgoing::Method(cancel.into())]);
                    }
                }
            }
            Event::Synced(0, token, ok) => {
                if let Some((batch, mut results)) = self.batches.remove(&token) {
                    if !ok {
                        results.iter_mut().for_each(|r| *r = RemoteResult::Failed);
                    }
                    self.send(&DataFrame::Published { batch, results });
                }
            }
            Event::Synced(ch, token, ok) => {
                if let Some(channel) = self.channels.get_mut(&ch) {
                    let mut out = Vec::new();
                    if let Err(e) = channel.on_synced(token, ok, &mut out) {
                        tracing::warn!("forwarded channel: {e}");
                    }
                    self.push(ch, out);
                }
            }
            Event::StreamReady(ch) => {
                if let Some(channel) = self.channels.get_mut(&ch) {
                    let mut out = Vec::new();
                    channel.stream_ready(&mut out);
                    self.push(ch, out);
                }
            }
            Event::Ended(_) => {}
        }
    }

    fn push(&self, ch: u64, out: Vec<Outgoing>) {
        if !out.is_empty() {
            self.send(&DataFrame::Push { ch, out });
        }
    }

    fn on_frame(&mut self, frame: DataFrame) {
        match frame {
            DataFrame::Publish {
                batch,
                vhost,
                items,
                run,
                ..
            } => self.publish(batch, &vhost, run, items),
            DataFrame::Open { ch, vhost, user } => self.open(ch, &vhost, &user),
            DataFrame::Call {
                ch, req, method, ..
            } => self.call(ch, req, method),
            DataFrame::Close { ch } => self.close(ch),
            DataFrame::Credit { ch, bytes } => {
                let starved = self.windows.get(&ch).is_some_and(|w| w.credit(bytes));
                if let (true, Some(channel)) = (starved, self.channels.get(&ch)) {
                    channel.resume_deliveries();
                }
            }
            other => tracing::debug!("unexpected data frame from a forwarding node: {other:?}"),
        }
    }

    fn publish(&mut self, batch: u64, vhost: &str, run: Option<u64>, items: Vec<RemotePublish>) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let Some(v) = broker.vhost(vhost) else {
            let results = vec![RemoteResult::Gone; items.len()];
            self.send(&DataFrame::Published { batch, results });
            return;
        };
        let (results, stored) = put_forwarded(&v, run, items);
        match broker.syncer() {
            Some(syncer) if !stored.is_empty() => {
                let token = self.next_token;
                self.next_token += 1;
                self.batches.insert(token, (batch, results));
                let sink = Arc::new(ProxySink {
                    ch: 0,
                    tx: self.events.clone(),
                    window: Arc::default(),
                });
                syncer.request(stored, sink, token);
            }
            _ => self.send(&DataFrame::Published { batch, results }),
        }
    }

    /// Closes proxy channel `ch` (the forwarding node closed it, or the
    /// link ended): its consumers are cancelled, what it delivered and
    /// nobody settled goes back, and it is no one's channel any more.
    fn close(&mut self, ch: u64) {
        self.windows.remove(&ch);
        if let Some(mut channel) = self.channels.remove(&ch) {
            channel.close();
            if let Some(broker) = self.broker.upgrade() {
                broker.set_forwarded_from(channel.connection(), None);
            }
        }
    }

    fn open(&mut self, ch: u64, vhost: &str, user: &str) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let Some(v) = broker.vhost(vhost) else {
            return;
        };
        let connection = broker.next_id();
        let from = antre_broker::broker::ForwardedFrom {
            node: Arc::clone(&self.peer),
            user: Arc::from(user),
        };
        broker.set_forwarded_from(connection, Some(from));
        let ctx = ChannelContext {
            connection,
            broker: Arc::clone(&broker),
            vhost: v,
            user: Arc::from(user),
            max_message_size: u64::MAX,
        };
        let window = Arc::new(PushWindow::default());
        let sink = Arc::new(ProxySink {
            ch,
            tx: self.events.clone(),
            window: Arc::clone(&window),
        });
        let mut channel = Channel::new(1, ctx, sink);
        channel.answer_at_once();
        let events = self.events.clone();
        channel.set_stream_waker(antre_broker::stream::StreamWaker::new(move || {
            let _ = events.send(Event::StreamReady(ch));
        }));
        self.channels.insert(ch, channel);
        self.windows.insert(ch, window);
    }

    fn call(&mut self, ch: u64, req: u64, method: Method) {
        let mut out = Vec::new();
        let result = match self.channels.get_mut(&ch) {
            Some(channel) => channel.handle(method, &mut out),
            None => Err(BrokerError::NotFound(
                "no such vhost on the queue's node".into(),
            )),
        };
        if req == 0 {
            if let Err(e) = result {
                tracing::debug!("forwarded method failed: {e}");
            }
            self.push(ch, out);
            return;
        }
        // A stream consumer's first deliveries come with its consume (an
        // ack's, with the ack): they go as pushes, which the forwarding
        // node hands its consumers, ahead of the answer it waits for.
        let (deliveries, out): (Vec<Outgoing>, Vec<Outgoing>) = out
            .into_iter()
            .partition(|o| matches!(o, Outgoing::Content(Method::BasicDeliver(_), _)));
        self.push(ch, deliveries);
        let result = match result {
            Ok(()) => Ok(out),
            Err(e) => Err((e.reply_code(), e.to_string())),
        };
        self.send(&DataFrame::Reply { req, result });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use antre_amqp::method::{BasicConsume, QueueDeclare};
    use antre_amqp::BasicProperties;
    use antre_broker::message::Message;

    /// One side of a data link, as the forwarding node drives it.
    struct Forwarding<S> {
        stream: S,
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> Forwarding<S> {
        async fn send(&mut self, frame: DataFrame) {
            self.stream.write_all(&frame.encode()).await.unwrap();
        }

        /// Asserts that the owner sends nothing for a while.
        async fn silent(&mut self, why: &str) {
            let sent = tokio::time::timeout(
                Duration::from_millis(200),
                read_data_frame(&mut self.stream),
            )
            .await;
            assert!(sent.is_err(), "{why}");
        }

        /// The next frame the owner sends, within a few seconds.
        async fn next(&mut self) -> DataFrame {
            tokio::time::timeout(Duration::from_secs(5), read_data_frame(&mut self.stream))
                .await
                .expect("the owner sent nothing")
                .unwrap()
        }

        async fn call(&mut self, req: u64, method: Method) -> Vec<Outgoing> {
            self.send(DataFrame::Call {
                ch: 1,
                req,
                method,
                applied: None,
            })
            .await;
            loop {
                if let DataFrame::Reply { req: r, result } = self.next().await {
                    assert_eq!(r, req);
                    return result.unwrap();
                }
            }
        }
    }

    /// A proxy channel that changed durable definitions (or, while the
    /// change count was the vhost's, merely ran while another connection
    /// changed them) held its later output for a sync that nothing on the owner
    /// ever requested: its consumer's deliveries were counted unacked and
    /// never pushed, and the forwarded consumer starved for good (seen in
    /// the nemesis test, a consumer through a follower while a third client
    /// declared queues).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proxy_channel_answers_and_delivers_after_a_definitions_change() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Arc::new(
            Broker::open(
                &dir.path().join("broker"),
                antre_broker::StorageOptions::default(),
            )
            .unwrap(),
        );
        let (here, there) = tokio::io::duplex(1 << 20);
        let progress = Arc::new(MetaProgress::new(0));
        tokio::spawn(serve(
            there,
            "n9".into(),
            Arc::downgrade(&broker),
            progress,
            Duration::from_secs(5),
        ));
        let mut f = Forwarding { stream: here };
        f.send(DataFrame::Open {
            ch: 1,
            vhost: "/".into(),
            user: "guest".into(),
        })
        .await;

        let declared = f
            .call(
                1,
                QueueDeclare {
                    ticket: 0,
                    queue: "q".into(),
                    passive: false,
                    durable: true,
                    exclusive: false,
                    auto_delete: false,
                    nowait: false,
                    arguments: Default::default(),
                }
                .into(),
            )
            .await;
        assert!(
            matches!(&declared[..], [Outgoing::Method(Method::QueueDeclareOk(_))]),
            "{declared:?}"
        );
        f.call(
            2,
            BasicConsume {
                ticket: 0,
                queue: "q".into(),
                consumer_tag: "c".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: Default::default(),
            }
            .into(),
        )
        .await;
        let m = Message::new(
            String::new(),
            "q".into(),
            BasicProperties::default(),
            Bytes::from_static(b"paid"),
        );
        f.send(DataFrame::Publish {
            batch: 1,
            vhost: "/".into(),
            items: vec![RemotePublish {
                queues: vec!["q".into()],
                message: Arc::new(m),
                seqs: Vec::new(),
            }],
            applied: None,
            run: None,
        })
        .await;
        loop {
            if let DataFrame::Push { ch, out } = f.next().await {
                assert_eq!(ch, 1);
                assert!(
                    matches!(&out[..], [Outgoing::Content(Method::BasicDeliver(d), m)]
                        if d.consumer_tag == "c" && &m.body[..] == b"paid"),
                    "{out:?}"
                );
                return;
            }
        }
    }

    /// An owner's side of a data link whose node applied the metadata up
    /// to entry `index`, and the forwarding side driving it.
    fn owner_at(
        index: u64,
    ) -> (
        Arc<Broker>,
        Arc<MetaProgress>,
        Forwarding<tokio::io::DuplexStream>,
    ) {
        let broker = Arc::new(Broker::new());
        let progress = Arc::new(MetaProgress::new(index));
        let (here, there) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(
            there,
            "n9".into(),
            Arc::downgrade(&broker),
            Arc::clone(&progress),
            Duration::from_secs(30),
        ));
        (broker, progress, Forwarding { stream: here })
    }

    /// Declares queue `q` in `/`, as the metadata entry the tests wait for
    /// does; the vhost.
    fn declare_q(broker: &Broker) -> Arc<antre_broker::vhost::Vhost> {
        let v = broker.vhost("/").unwrap();
        v.declare_queue(
            antre_broker::vhost::QueueDeclaration {
                name: "q".into(),
                durable: false,
                exclusive: false,
                auto_delete: false,
                arguments: Default::default(),
            },
            false,
            0,
        )
        .unwrap();
        v
    }

    /// A forwarded publish to a queue declared a moment ago reached its
    /// owner before the owner applied the declare: it answered "no such
    /// queue", which the forwarding node took for unroutable and confirmed
    /// (a message lost, found by `publishes_right_after_a_quorum_declare_are_all_kept`).
    /// An owner behind the index the publish names now waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_naming_metadata_not_applied_here_waits_for_it() {
        let (broker, progress, mut f) = owner_at(3);
        let message = |body: &'static [u8]| {
            Arc::new(Message::new(
                String::new(),
                "q".into(),
                BasicProperties::default(),
                Bytes::from_static(body),
            ))
        };
        // Naming what this node applied already: "no such queue" at once.
        f.send(DataFrame::Publish {
            batch: 1,
            vhost: "/".into(),
            items: vec![RemotePublish {
                queues: vec!["q".into()],
                message: message(b"early"),
                seqs: Vec::new(),
            }],
            applied: Some(3),
            run: None,
        })
        .await;
        let DataFrame::Published { batch: 1, results } = f.next().await else {
            panic!("not the first batch's answer")
        };
        assert_eq!(results, [RemoteResult::Gone]);
        // Naming entry 4, which declares the queue: answered once applied.
        f.send(DataFrame::Publish {
            batch: 2,
            vhost: "/".into(),
            items: vec![RemotePublish {
                queues: vec!["q".into()],
                message: message(b"paid"),
                seqs: Vec::new(),
            }],
            applied: Some(4),
            run: None,
        })
        .await;
        f.silent("answered before the declare was applied").await;
        let v = declare_q(&broker);
        progress.applied(4);
        let DataFrame::Published { batch: 2, results } = f.next().await else {
            panic!("not the second batch's answer")
        };
        assert_eq!(results, [RemoteResult::Accepted]);
        assert_eq!(v.queue_info("q").unwrap().counts().ready, 1);
    }

    /// The same for a call: a consume (or get, purge, passive declare) of
    /// a queue declared a moment ago, through a node that applied the
    /// declare first, got 404 from an owner that had not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_naming_metadata_not_applied_here_waits_for_it() {
        let (broker, progress, mut f) = owner_at(3);
        f.send(DataFrame::Open {
            ch: 1,
            vhost: "/".into(),
            user: "guest".into(),
        })
        .await;
        let passive = QueueDeclare {
            ticket: 0,
            queue: "q".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Default::default(),
        };
        f.send(DataFrame::Call {
            ch: 1,
            req: 1,
            method: passive.into(),
            applied: Some(4),
        })
        .await;
        f.silent("answered before the declare was applied").await;
        declare_q(&broker);
        progress.applied(4);
        loop {
            if let DataFrame::Reply { req: 1, result } = f.next().await {
                let out = result.expect("the passive declare succeeds");
                assert!(matches!(
                    &out[..],
                    [Outgoing::Method(Method::QueueDeclareOk(ok))] if ok.queue == "q"
                ));
                return;
            }
        }
    }

    /// A quorum queue's replica that takes the queue over until told it
    /// is done, and records whether it led when each message came.
    #[derive(Debug, Default)]
    struct Electing {
        led: tokio::sync::watch::Sender<bool>,
        enqueued: Mutex<Vec<(String, bool)>>,
    }

    impl antre_broker::replicated::QueueReplica for Electing {
        fn enqueue(
            &self,
            message: &Arc<Message>,
            _source: Option<antre_broker::replicated::Source>,
        ) -> Result<Arc<dyn antre_broker::durable::Durable>, BrokerError> {
            let body = String::from_utf8_lossy(&message.body).into_owned();
            let led = *self.led.borrow();
            self.enqueued.lock().push((body, led));
            Ok(antre_broker::replicated::PendingCommit::done(None, led))
        }
        fn settle(&self, _id: u64) {}
        fn returned(&self, _id: u64) {}
        fn dead_lettered(&self, _id: u64, _reason: antre_broker::queue::DeathReason) {}
        fn in_flight(&self, _from_id: u64) -> (u64, u64) {
            (0, 0)
        }
        fn leads(&self) -> bool {
            *self.led.borrow()
        }
        fn taking_over(&self) -> Option<antre_broker::replicated::TakeOver> {
            let mut rx = self.led.subscribe();
            if *rx.borrow_and_update() {
                return None;
            }
            Some(Box::pin(async move {
                let _ = rx.wait_for(|led| *led).await;
            }))
        }
        fn may_deliver(&self) -> bool {
            true
        }
        fn await_location(&self) -> bool {
            true
        }
        fn report_consumers(
            &self,
            _report: antre_broker::stream::sac::Report,
            answer: antre_broker::replicated::SacAnswer,
        ) {
            answer(Err("a queue".into()));
        }
    }

    /// A publish forwarded to a quorum queue's new leader while it still
    /// takes the queue over waits for it, and the publishes behind it on
    /// the link too: before, the first was answered "not yet" (to be sent
    /// again after a pause) and the ones behind it, taken once the
    /// takeover was done, were stored ahead of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_reaching_a_leader_taking_over_waits_for_it() {
        let (broker, _progress, mut f) = owner_at(0);
        let v = declare_q(&broker);
        let replica = Arc::new(Electing::default());
        let q = v.queue_info("q").expect("queue");
        assert!(q.set_replica(Arc::clone(&replica) as _));
        for (batch, body) in [(1, "first"), (2, "second")] {
            let message = Message::new(
                String::new(),
                "q".into(),
                BasicProperties::default(),
                Bytes::from(body),
            );
            f.send(DataFrame::Publish {
                batch,
                vhost: "/".into(),
                items: vec![RemotePublish {
                    queues: vec!["q".into()],
                    message: Arc::new(message),
                    seqs: Vec::new(),
                }],
                applied: None,
                run: None,
            })
            .await;
        }
        f.silent("answered while the queue was being taken over")
            .await;
        replica.led.send_replace(true);
        for expected in [1, 2] {
            let DataFrame::Published { batch, .. } = f.next().await else {
                panic!("not a batch's answer")
            };
            assert_eq!(batch, expected);
        }
        let enqueued = replica.enqueued.lock().clone();
        assert_eq!(
            enqueued,
            [("first".to_owned(), true), ("second".to_owned(), true)]
        );
    }

    /// While this node takes a quorum queue over, the vhost still names
    /// the former leader; the batches held for the queue (answered "not
    /// stored" by that leader) are put in it here all the same, before
    /// this node's clients' publishes go to it directly. Before, a held
    /// batch waited for the vhost to change, and went to the queue after
    /// the publishes made since, which overtook it; and a forwarded
    /// publish was answered "not here" until then.
    #[test]
    fn a_queue_this_node_takes_over_takes_its_held_batches() {
        let broker = Broker::new();
        let v = declare_q(&broker);
        let replica = Arc::new(Electing::default());
        let q = v.queue_info("q").expect("queue");
        assert!(q.set_replica(Arc::clone(&replica) as _));
        v.set_remote_owner("q", Some("n1"));
        let queues = vec!["q".to_owned()];
        assert_eq!(parked::target(&v, &queues, "n1"), parked::Target::Unknown);
        replica.led.send_replace(true);
        assert_eq!(parked::target(&v, &queues, "n1"), parked::Target::Here);
        let message = Message::new(
            String::new(),
            "q".into(),
            BasicProperties::default(),
            Bytes::from_static(b"held"),
        );
        let held = RemotePublish {
            queues,
            message: Arc::new(message),
            seqs: Vec::new(),
        };
        let (results, _) = put_forwarded(&v, None, vec![held]);
        assert_eq!(results, [RemoteResult::Accepted]);
        assert_eq!(*replica.enqueued.lock(), [("held".to_owned(), true)]);
    }
}
