//! The Raft runtime: the threads a node's Raft groups run on, apart from
//! the broker's.
//!
//! Every Raft core (the metadata group's and each quorum queue group's),
//! its state machine worker and replication tasks, the log and snapshot
//! writes they make, and the cluster listener answering peers' Raft
//! requests run on a tokio runtime of their own, with [`THREADS`] worker
//! threads named `antre-raft`. The broker's runtime (AMQP connections,
//! channels, queues, HTTP) may have thousands of ready tasks under load;
//! a Raft task queued behind them was late enough for a heartbeat or the
//! answer to an append to miss its deadline (openraft 0.9 gives an append
//! the heartbeat interval, 100 ms for a quorum queue, to be answered) and
//! a group changed leader under a benchmark. On threads of their own, the
//! Raft tasks compete with the broker's threads for the CPU through the
//! operating system's scheduler, which runs a thread that wakes up after
//! sleeping (a heartbeat timer, an arriving request) promptly, however
//! many broker tasks are ready.
//!
//! What a Raft task hands the broker (a quorum queue's applied messages,
//! a metadata change) is done on the Raft thread, as before; forwarded
//! publishes and deliveries (a data link, [`crate::forward`]) go back to
//! the broker's runtime as soon as the link is recognised.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::runtime::{Builder, Handle, Runtime};

use crate::ClusterError;

/// Worker threads of the Raft runtime. Raft work is small next to the
/// broker's (encoding entries, an fsync per append, a few frames per
/// heartbeat); two threads keep one free while the other writes.
pub const THREADS: usize = 2;

/// A node's Raft runtime; dropping it stops its threads without waiting
/// (it may be dropped from async code, where a runtime may not block).
pub struct RaftRuntime {
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
}

impl std::fmt::Debug for RaftRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftRuntime").finish_non_exhaustive()
    }
}

impl RaftRuntime {
    /// Starts the runtime of node `node` (its name goes in the threads'
    /// names for debugging, truncated: Linux keeps 15 bytes).
    pub fn start(node: &str) -> Result<Arc<RaftRuntime>, ClusterError> {
        let name: String = format!("antre-raft-{node}").chars().take(15).collect();
        let runtime = Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Raft(format!("cannot start the Raft runtime: {e}")))?;
        let handle = runtime.handle().clone();
        Ok(Arc::new(RaftRuntime {
            runtime: Mutex::new(Some(runtime)),
            handle,
        }))
    }

    /// Where to spawn Raft work.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the threads (tasks still running are dropped at their next
    /// await); later spawns are dropped at once.
    pub fn stop(&self) {
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Aborts a task when dropped: a task spawned on another runtime on
/// behalf of a future ends with it.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn raft_tasks_run_on_named_threads_and_the_runtime_drops_in_async_code() {
        let rt = RaftRuntime::start("n1-with-a-long-name").unwrap();
        let name = rt
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("antre-raft-n1-w"));
        // Dropping it here, inside a runtime, must not panic.
        drop(rt);
    }
}
