//! The free-disk alarm: below a configurable amount of free space, publishers
//! are blocked (connection.blocked) until space returns, so a full disk never
//! fails a write of a message the broker already accepted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Watches free space on the data directory's file system.
#[derive(Debug, Clone)]
pub struct DiskAlarm {
    limit: Arc<AtomicU64>,
    raised: watch::Receiver<bool>,
}

impl DiskAlarm {
    /// Starts checking `dir` every `interval` against `limit` bytes free.
    /// The task ends when `shutdown` fires.
    pub fn start(
        dir: PathBuf,
        limit: u64,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> DiskAlarm {
        let limit = Arc::new(AtomicU64::new(limit));
        let (tx, raised) = watch::channel(false);
        let task_limit = Arc::clone(&limit);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let free = match fs4::available_space(&dir) {
                    Ok(free) => free,
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), "cannot read free disk space: {e}");
                        continue;
                    }
                };
                let limit = task_limit.load(Ordering::Relaxed);
                let low = free < limit;
                if low != *tx.borrow() {
                    if low {
                        tracing::warn!(
                            free,
                            limit,
                            "disk alarm raised: free space below the limit, blocking publishers"
                        );
                    } else {
                        tracing::info!(free, limit, "disk alarm cleared: unblocking publishers");
                    }
                    let _ = tx.send(low);
                }
            }
        });
        DiskAlarm { limit, raised }
    }

    /// Changes the limit (the next check applies it).
    pub fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// Whether the alarm is raised now, and a way to wait for changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.raised.clone()
    }
}
