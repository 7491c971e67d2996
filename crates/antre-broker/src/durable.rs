//! Anything that writes to a message store and takes part in group commit:
//! queues, and the logs of deduplicating and delaying exchanges.

use antre_store::{PendingSync, StoreError};

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
}

/// Whether two durables are the same object (data pointers only: vtable
/// pointers of one type may differ between codegen units).
pub fn same(a: &std::sync::Arc<dyn Durable>, b: &std::sync::Arc<dyn Durable>) -> bool {
    std::ptr::addr_eq(std::sync::Arc::as_ptr(a), std::sync::Arc::as_ptr(b))
}
