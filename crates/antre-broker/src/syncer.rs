//! Group commit: one thread makes the appends of many publishes durable with
//! one fsync per dirty queue, then releases their confirms together.
//!
//! Publishers never wait on the disk themselves. A channel that needs its
//! persistent publishes confirmed sends a request naming the queues it wrote
//! to; the syncer takes every request that arrived while the previous round
//! was fsyncing, starts a sync on each queue (a short step under the queue's
//! lock: hand buffered records to the kernel), runs the fsyncs with no lock
//! held, so publishers go on appending to the next round, and finally tells
//! each channel, in request order, that its publishes are on disk. At about
//! 0.3 ms per fsync, confirmed throughput is bounded by how many publishes
//! arrive per round, not by fsyncs per second.
//!
//! Between requests, the syncer also sweeps, on a short interval, the stores
//! that became dirty since the last sweep, so persistent messages published
//! without confirms and acks reach the disk within that interval. A store
//! puts itself on that list when it goes from clean to dirty, so a sweep
//! costs nothing for the (possibly many thousands of) idle queues.

use std::collections::HashSet;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::durable::{same, Durable};
use crate::metrics::BrokerMetrics;
use crate::queue::DeliverySink;
use crate::replicated::Commit;

struct Request {
    queues: Vec<Arc<dyn Durable>>,
    sink: Arc<dyn DeliverySink>,
    token: u64,
}

/// What the sync thread receives: a request, or news that a replicated
/// write (a quorum queue's entry) was committed or failed.
enum Msg {
    Request(Request),
    Poke,
}

/// Handle to the broker's sync thread; cheap to clone.
#[derive(Clone)]
pub struct Syncer {
    tx: mpsc::Sender<Msg>,
    /// Stores that became dirty since the last sweep.
    dirty: Arc<Mutex<Vec<Weak<dyn Durable>>>>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer").finish_non_exhaustive()
    }
}

impl Syncer {
    /// Starts the sync thread, sweeping durable queues every `interval`.
    /// The thread ends when the last handle is dropped.
    pub fn start(interval: Duration, metrics: Arc<BrokerMetrics>) -> std::io::Result<Syncer> {
        let (tx, rx) = mpsc::channel();
        let dirty: Arc<Mutex<Vec<Weak<dyn Durable>>>> = Arc::default();
        let swept = Arc::clone(&dirty);
        thread::Builder::new()
            .name("antre-syncer".into())
            .spawn(move || run(rx, swept, interval, &metrics))?;
        Ok(Syncer { tx, dirty })
    }

    /// Includes a store in the periodic sweep whenever it has something to
    /// sync: it reports itself when it goes from clean to dirty.
    pub fn register(&self, durable: Arc<dyn Durable>) {
        let weak = Arc::downgrade(&durable);
        let dirty = Arc::clone(&self.dirty);
        durable.watch(Arc::new(move || dirty.lock().push(weak.clone())));
    }

    /// Asks for everything appended so far to `queues` to be made durable;
    /// `sink.synced(token, ok)` is called when it is. Requests complete in
    /// the order they were made.
    pub fn request(&self, queues: Vec<Arc<dyn Durable>>, sink: Arc<dyn DeliverySink>, token: u64) {
        let request = Request {
            queues,
            sink,
            token,
        };
        if let Err(mpsc::SendError(Msg::Request(r))) = self.tx.send(Msg::Request(request)) {
            // The broker is shutting down; nothing can be promised any more.
            r.sink.synced(r.token, false);
        }
    }

    /// Wakes the sync thread: a replicated write it may be waiting for
    /// (see [`crate::replicated::Commit`]) was committed or failed.
    pub fn poke(&self) {
        let _ = self.tx.send(Msg::Poke);
    }
}

/// Whether a request can be answered now, and how: None while one of its
/// replicated writes waits for its commit.
fn settled(r: &Request) -> Option<bool> {
    let mut ok = true;
    for q in &r.queues {
        match q.commit() {
            Commit::Local => {}
            Commit::Pending => return None,
            Commit::Done(done) => ok &= done,
        }
    }
    Some(ok)
}

fn run(
    rx: mpsc::Receiver<Msg>,
    dirty: Arc<Mutex<Vec<Weak<dyn Durable>>>>,
    interval: Duration,
    metrics: &BrokerMetrics,
) {
    let mut last_sweep = Instant::now();
    // Requests whose local stores are synced but whose replicated writes
    // wait for their commit. A channel's requests complete in order, so a
    // later request of the same channel waits behind them too; other
    // channels' requests do not.
    let mut waiting: Vec<(Request, bool)> = Vec::new();
    loop {
        let mut requests = Vec::new();
        match rx.recv_timeout(interval) {
            Ok(Msg::Request(r)) => requests.push(r),
            Ok(Msg::Poke) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(m) = rx.try_recv() {
            if let Msg::Request(r) = m {
                requests.push(r);
            }
        }
        // Each store once, however many requests name it: a set, since a
        // sweep after a burst across many queues can name thousands.
        let mut seen = HashSet::new();
        let mut queues: Vec<Arc<dyn Durable>> = Vec::new();
        let mut add = |q: Arc<dyn Durable>| {
            if seen.insert(Arc::as_ptr(&q) as *const () as usize) {
                queues.push(q);
            }
        };
        for r in &requests {
            r.queues.iter().for_each(|q| add(Arc::clone(q)));
        }
        if last_sweep.elapsed() >= interval {
            last_sweep = Instant::now();
            let swept = std::mem::take(&mut *dirty.lock());
            swept.iter().filter_map(Weak::upgrade).for_each(&mut add);
        }
        let started = Instant::now();
        let failed = fsync_round(&queues);
        if !queues.is_empty() {
            metrics.fsync_seconds.observe(started.elapsed());
        }
        for r in requests {
            let local_ok = !r
                .queues
                .iter()
                .any(|q| q.commit() == Commit::Local && failed.iter().any(|f| same(f, q)));
            waiting.push((r, local_ok));
        }
        answer_ready(&mut waiting);
    }
}

/// Answers the waiting requests whose replicated writes are done, keeping
/// each channel's requests in order.
fn answer_ready(waiting: &mut Vec<(Request, bool)>) {
    let mut blocked: Vec<*const ()> = Vec::new();
    let mut still = Vec::new();
    for (r, local_ok) in waiting.drain(..) {
        let sink = Arc::as_ptr(&r.sink) as *const ();
        let state = if blocked.contains(&sink) {
            None
        } else {
            settled(&r)
        };
        match state {
            Some(ok) => r.sink.synced(r.token, ok && local_ok),
            None => {
                blocked.push(sink);
                still.push((r, local_ok));
            }
        }
    }
    *waiting = still;
}

/// How long a caller that syncs in its own thread waits for replicated
/// writes (quorum queues) to be committed.
const COMMIT_WAIT: Duration = Duration::from_secs(10);

/// Syncs the queues in the caller's thread, waiting (bounded) for the
/// replicated ones to be committed; returns those that failed.
pub(crate) fn sync_round(queues: &[Arc<dyn Durable>]) -> Vec<Arc<dyn Durable>> {
    let mut failed = fsync_round(queues);
    let deadline = Instant::now() + COMMIT_WAIT;
    for q in queues {
        loop {
            match q.commit() {
                Commit::Local | Commit::Done(true) => break,
                Commit::Done(false) => {
                    failed.push(Arc::clone(q));
                    break;
                }
                Commit::Pending if Instant::now() >= deadline => {
                    failed.push(Arc::clone(q));
                    break;
                }
                Commit::Pending => thread::sleep(Duration::from_millis(1)),
            }
        }
    }
    failed
}

/// Syncs the local stores; returns those whose sync failed.
pub(crate) fn fsync_round(queues: &[Arc<dyn Durable>]) -> Vec<Arc<dyn Durable>> {
    let mut failed = Vec::new();
    let mut started = Vec::with_capacity(queues.len());
    for q in queues {
        match q.begin_sync() {
            Some(Ok(pending)) => started.push((q, pending)),
            Some(Err(e)) => {
                tracing::error!(store = q.label(), "store sync failed: {e}");
                failed.push(Arc::clone(q));
            }
            None => {}
        }
    }
    // The fsyncs, with no queue locked.
    let results: Vec<_> = started
        .into_iter()
        .map(|(q, pending)| {
            let result = pending.run();
            (q, pending, result)
        })
        .collect();
    for (q, pending, result) in results {
        if let Err(e) = q.finish_sync(pending, result) {
            tracing::error!(store = q.label(), "store sync failed: {e}");
            failed.push(Arc::clone(q));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::tests::CollectSink;
    use crate::replicated::PendingCommit;

    fn wait_for(sink: &CollectSink, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.synced.lock().len() < n {
            assert!(Instant::now() < deadline, "no answer");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn replicated_writes_hold_their_channel_only_until_committed() {
        let syncer = Syncer::start(Duration::from_millis(5), Arc::default()).expect("syncer");
        let batch = PendingCommit::new(Some(syncer.clone()));
        let a = Arc::new(CollectSink::default());
        let b = Arc::new(CollectSink::default());
        let durable = || vec![Arc::clone(&batch) as Arc<dyn Durable>];
        syncer.request(durable(), Arc::clone(&a) as Arc<dyn DeliverySink>, 1);
        // A later request of the same channel waits behind it...
        syncer.request(Vec::new(), Arc::clone(&a) as Arc<dyn DeliverySink>, 2);
        // ...another channel's does not.
        syncer.request(Vec::new(), Arc::clone(&b) as Arc<dyn DeliverySink>, 3);
        wait_for(&b, 1);
        assert!(a.synced.lock().is_empty());
        batch.complete(true);
        wait_for(&a, 2);
        assert_eq!(*a.synced.lock(), [(1, true), (2, true)]);
        let failed = PendingCommit::new(Some(syncer.clone()));
        failed.complete(false);
        syncer.request(
            vec![failed as Arc<dyn Durable>],
            Arc::clone(&a) as Arc<dyn DeliverySink>,
            4,
        );
        wait_for(&a, 3);
        assert_eq!(a.synced.lock()[2], (4, false));
    }
}
