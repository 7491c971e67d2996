//! Anything that writes to a message store and takes part in group commit:
//! queues, and the logs of deduplicating and delaying exchanges.

use antre_store::{DirtyHook, PendingSync, QueueStore, StoreError};

/// A participant in the syncer's group commit.
pub trait Durable: Send + Sync + std::fmt::Debug {
    /// A name for logs.
    fn label(&self) -> &str;
    /// Starts a sync: hands appends to the kernel, returns the fsyncs owed
    /// (None when there is no store).
    fn begin_sync(&self) -> Option<Result<PendingSync, StoreError>>;
    /// Completes a sync started with [`Durable::begin_sync`].
    fn finish_sync(
        &self,
        pending: PendingSync,
        result: Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Whether a sync would write anything.
    fn is_dirty(&self) -> bool;
    /// Calls `hook` whenever it goes from having nothing to sync to having
    /// something, so the syncer visits only the stores that need it.
    fn watch(&self, hook: DirtyHook);
    /// A publisher's batch of writes ended and nobody waits for a sync (no
    /// confirms): a store that holds writes back for the next sync (a
    /// stream's open chunk) lets readers see them now.
    fn flush(&self) {}
    /// Whether this is a replicated write waiting for its commit (see
    /// [`crate::replicated`]) rather than a local store: the syncer then
    /// waits for [`crate::replicated::Commit::Done`] instead of an fsync.
    fn commit(&self) -> crate::replicated::Commit {
        crate::replicated::Commit::Local
    }
}

/// Whether two durables are the same object (data pointers only: vtable
/// pointers of one type may differ between codegen units).
pub fn same(a: &std::sync::Arc<dyn Durable>, b: &std::sync::Arc<dyn Durable>) -> bool {
    std::ptr::addr_eq(std::sync::Arc::as_ptr(a), std::sync::Arc::as_ptr(b))
}

/// Adds `durable` to `list` unless it is there already (a batch names each
/// store once, however many messages it wrote there).
pub fn add_once(list: &mut Vec<std::sync::Arc<dyn Durable>>, durable: std::sync::Arc<dyn Durable>) {
    if !list.iter().any(|d| same(d, &durable)) {
        list.push(durable);
    }
}

/// Something that owns one store behind its own lock, beside other state:
/// the logs of deduplicating and delaying exchanges. Implementing this one
/// accessor gives it group commit ([`Durable`]) and its store's life cycle.
pub trait OwnsStore: Send + Sync + std::fmt::Debug {
    /// A name for logs.
    fn store_label(&self) -> &str;

    /// Runs `f` on the store slot, under the owner's lock (`None` once the
    /// store was closed or deleted).
    fn with_store<R>(&self, f: impl FnOnce(&mut Option<QueueStore>) -> R) -> R;

    /// Removes the store from disk (its owner was deleted).
    fn delete_store(&self) {
        if let Some(store) = self.with_store(Option::take) {
            if let Err(e) = store.delete_all() {
                tracing::warn!("could not remove {}: {e}", self.store_label());
            }
        }
    }

    /// Flushes and closes the store (clean shutdown).
    fn close_store(&self) {
        if let Some(store) = self.with_store(Option::take) {
            if let Err(e) = store.close() {
                tracing::error!("closing {}: {e}", self.store_label());
            }
        }
    }
}

impl<T: OwnsStore> Durable for T {
    fn label(&self) -> &str {
        self.store_label()
    }

    fn begin_sync(&self) -> Option<Result<PendingSync, StoreError>> {
        self.with_store(|s| s.as_mut().map(QueueStore::begin_sync))
    }

    fn finish_sync(
        &self,
        pending: PendingSync,
        result: Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.with_store(|s| match s.as_mut() {
            Some(store) => store.finish_sync(pending, result),
            None => Ok(()),
        })
    }

    fn is_dirty(&self) -> bool {
        self.with_store(|s| s.as_ref().is_some_and(QueueStore::is_dirty))
    }

    fn watch(&self, hook: DirtyHook) {
        self.with_store(|s| {
            if let Some(store) = s.as_mut() {
                store.set_on_dirty(hook);
            }
        });
    }
}
