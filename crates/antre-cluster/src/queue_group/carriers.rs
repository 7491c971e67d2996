//! Small calls to one member that wait a moment for others going there
//! and travel with them in one message: the idle groups' heartbeats
//! ([`super::heartbeats`]) and the stream members' reports to the
//! streams' leaders ([`super::consumers`]).
//!
//! Each is small and periodic, one per group (or stream) and member:
//! hundreds of groups made thousands of requests a second over the link,
//! each a frame, a write and a read on both ends and a wake-up of the
//! connection's task. A carrier per member (and address) takes what
//! arrives within a tenth of the earliest call's time (at most
//! [`GATHER_AT_MOST`]), sends it as one request and hands each call its
//! own answer. Calls answered together come back together, so periodic
//! callers that once shared a message keep sharing one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::network::{CallError, Connection, Link};
use crate::wire::{Request, Response};
use crate::NodeId;

/// The longest a call waits for others to go with.
const GATHER_AT_MOST: Duration = Duration::from_millis(10);
/// The most calls in one message.
const BATCH_MAX: usize = 2048;
/// How long a member's carrier waits for a call before it ends: a member
/// that left the cluster, or that nothing goes to any more, keeps no task.
/// The next call starts a new one.
const CARRIER_IDLE: Duration = Duration::from_secs(30);

/// A kind of call that travels in batches.
pub(crate) trait Batch: Sized + Send + 'static {
    /// One call's answer.
    type Answer: Send + 'static;
    /// How long the call may wait for its answer, gathering included.
    fn ttl(&self) -> Duration;
    /// The request carrying `calls`, to be answered within `ttl`.
    fn request(calls: Vec<Self>, ttl: Duration) -> Request;
    /// Each call's answer, in order, from the member's `response`; `None`
    /// for a response of the wrong kind.
    fn answers(response: Response) -> Option<Vec<Result<Self::Answer, CallError>>>;
}

/// One call on its way.
struct Pending<B: Batch> {
    call: B,
    answer: oneshot::Sender<Result<B::Answer, CallError>>,
}

/// Where each member's carrier takes calls, by member and address.
type Registry<B> = Mutex<HashMap<(NodeId, SocketAddr), mpsc::UnboundedSender<Pending<B>>>>;

/// The node's carriers of one kind of call, one task per member.
pub(crate) struct Carriers<B: Batch> {
    to: Arc<Registry<B>>,
    idle: Duration,
}

impl<B: Batch> Default for Carriers<B> {
    fn default() -> Carriers<B> {
        Carriers::with_idle(CARRIER_IDLE)
    }
}

impl<B: Batch> Carriers<B> {
    /// Carriers that end after `idle` without a call.
    pub(super) fn with_idle(idle: Duration) -> Carriers<B> {
        Carriers {
            to: Arc::default(),
            idle,
        }
    }

    /// The members' carriers running now.
    #[cfg(test)]
    pub(super) fn carriers(&self) -> usize {
        self.to.lock().len()
    }

    /// Sends `call` to `target` (named `name`, at `addr`) with the others
    /// going there; its answer, within the call's time.
    pub(crate) async fn send(
        &self,
        link: &Arc<Link>,
        target: NodeId,
        (name, addr): (String, SocketAddr),
        call: B,
    ) -> Result<B::Answer, CallError> {
        let (answer, answered) = oneshot::channel();
        {
            let mut to = self.to.lock();
            if !to.contains_key(&(target, addr)) {
                // The member moved: its carrier to the old address ends
                // once its channel, dropped here, is drained.
                to.retain(|&(node, _), _| node != target);
            }
            let queue = to.entry((target, addr)).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let carrier = Carrier {
                    registry: Arc::downgrade(&self.to),
                    key: (target, addr),
                    idle: self.idle,
                };
                tokio::spawn(carrier.run(rx, Connection::new(Arc::clone(link), &name, addr)));
                tx
            });
            // Cannot fail: a carrier ends only after taking its sender out
            // of the registry, under this lock.
            let _ = queue.send(Pending { call, answer });
        }
        answered
            .await
            .unwrap_or_else(|_| Err(CallError::Network("the call was not sent".into())))
    }
}

/// The task that carries the calls to one member.
struct Carrier<B: Batch> {
    registry: Weak<Registry<B>>,
    key: (NodeId, SocketAddr),
    idle: Duration,
}

impl<B: Batch> Carrier<B> {
    /// The next call, or `None` once the carrier should end: its sender
    /// was dropped (the member moved, the node stops), or nothing came for
    /// `idle`, and then it takes itself out of the registry.
    async fn next(&self, calls: &mut mpsc::UnboundedReceiver<Pending<B>>) -> Option<Pending<B>> {
        if let Ok(call) = tokio::time::timeout(self.idle, calls.recv()).await {
            return call;
        }
        let registry = self.registry.upgrade()?;
        let mut to = registry.lock();
        // Senders send under this lock: nothing can arrive between this
        // look and the removal.
        match calls.try_recv() {
            Ok(call) => Some(call),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                // The sender lives, and only the registry holds it, under
                // this carrier's key.
                to.remove(&self.key);
                None
            }
        }
    }

    /// Sends the calls to the member as they come, a batch at a time.
    async fn run(self, mut calls: mpsc::UnboundedReceiver<Pending<B>>, mut conn: Connection) {
        while let Some(first) = self.next(&mut calls).await {
            let started = tokio::time::Instant::now();
            tokio::time::sleep((first.call.ttl() / 10).min(GATHER_AT_MOST)).await;
            let mut batch = vec![first];
            while batch.len() < BATCH_MAX {
                match calls.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            // A caller that gave up waits no more.
            batch.retain(|c| !c.answer.is_closed());
            let Some(ttl) = batch.iter().map(|c| c.call.ttl()).min() else {
                continue;
            };
            let ttl = ttl.saturating_sub(started.elapsed());
            let n = batch.len();
            let mut answers = Vec::with_capacity(n);
            let mut sent = Vec::with_capacity(n);
            for c in batch {
                answers.push(c.answer);
                sent.push(c.call);
            }
            let each = match conn.call(&B::request(sent, ttl), ttl).await {
                Ok(response) => B::answers(response)
                    .filter(|each| each.len() == n)
                    .unwrap_or_else(|| {
                        (0..n)
                            .map(|_| Err(CallError::Network("answer of the wrong kind".into())))
                            .collect()
                    }),
                Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
            };
            for (answer, r) in answers.into_iter().zip(each) {
                let _ = answer.send(r);
            }
        }
    }
}

/// The member's side of a batch: every call handled side by side, each
/// answered within half of the sender's `within` (the rest is for the
/// answer's way back) or, if not done by then, with what its `late`
/// gives, so that a slow one holds up no other call's answer.
pub(super) async fn answer_each<F, L>(
    within: Duration,
    calls: impl IntoIterator<Item = (F, L)>,
) -> Vec<F::Output>
where
    F: std::future::Future,
    L: FnOnce() -> F::Output,
{
    let deadline = tokio::time::Instant::now() + within / 2;
    let each = calls.into_iter().map(|(call, late)| async move {
        tokio::time::timeout_at(deadline, call)
            .await
            .unwrap_or_else(|_| late())
    });
    futures::future::join_all(each).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterConfig;

    /// A call that is answered as it went.
    struct Echo;

    impl Batch for Echo {
        type Answer = ();
        fn ttl(&self) -> Duration {
            Duration::from_secs(1)
        }
        fn request(_: Vec<Echo>, _: Duration) -> Request {
            Request::Ping
        }
        fn answers(_: Response) -> Option<Vec<Result<(), CallError>>> {
            Some(vec![Ok(())])
        }
    }

    fn link() -> Arc<Link> {
        Arc::new(Link::new(ClusterConfig::for_test(
            "n1",
            "n1=127.0.0.1:1,n2=127.0.0.1:2",
        )))
    }

    /// An address nothing listens on: a call sent there fails at once.
    async fn closed_port() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// A call to n2 at `addr`; how it failed.
    async fn call(carriers: &Carriers<Echo>, link: &Arc<Link>, addr: SocketAddr) -> String {
        match carriers.send(link, 2, ("n2".into(), addr), Echo).await {
            Ok(()) => "answered".into(),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn a_member_that_moved_keeps_one_carrier() {
        let (link, carriers) = (link(), Carriers::default());
        call(&carriers, &link, closed_port().await).await;
        call(&carriers, &link, closed_port().await).await;
        // Before: one carrier per address n2 ever had, each for good.
        assert_eq!(carriers.carriers(), 1);
    }

    #[tokio::test]
    async fn an_idle_carrier_ends_and_the_next_call_starts_another() {
        let (link, carriers) = (link(), Carriers::with_idle(Duration::from_millis(20)));
        let addr = closed_port().await;
        call(&carriers, &link, addr).await;
        tokio::time::timeout(Duration::from_secs(10), async {
            while carriers.carriers() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the idle carrier ended");
        // Sent, and failed as a closed port fails, not for want of a carrier.
        let answer = call(&carriers, &link, addr).await;
        assert!(!answer.contains("not sent"), "{answer}");
    }
}
