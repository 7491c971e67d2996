//! Where a vhost keeps things on disk: the stores of its durable queues and
//! of its delaying and deduplicating exchanges, under one directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use antre_store::StoreOptions;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::durable::Durable;
use crate::error::{exchange_ref, BrokerError};
use crate::exchange::dedup::DedupCache;
use crate::exchange::delayed::DelayedMessages;
use crate::exchange::{Exchange, ExchangeType};
use crate::queue::{Paging, Queue, QueueOptions};
use crate::stream::Stream;
use crate::syncer::Syncer;

use super::ExchangeDeclaration;

/// Where a vhost keeps its definitions and its durable queues' messages.
#[derive(Debug, Clone)]
pub struct VhostStorage {
    /// The vhost's directory: `definitions.json`, `queues/`, `exchanges/`.
    pub dir: PathBuf,
    /// Options for each queue's store.
    pub store_options: StoreOptions,
    /// The node's message budget and where queues page beyond it.
    pub paging: Paging,
    /// The broker's group-commit thread.
    pub syncer: Syncer,
}

/// A directory name for a vhost or queue name: names may hold any character,
/// so they are hashed (as RabbitMQ does) rather than used as paths.
pub fn dir_name(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn internal(path: &Path, what: &str, e: std::io::Error) -> BrokerError {
    BrokerError::Internal(format!("{what} {}: {e}", path.display()))
}

impl super::Vhost {
    /// How the vhost's queues page (none for an in-memory vhost).
    pub(super) fn paging(&self) -> Option<Paging> {
        self.storage.as_ref().map(|s| s.paging.clone())
    }
}

impl VhostStorage {
    fn queue_dir(&self, queue: &str) -> PathBuf {
        self.dir.join("queues").join(dir_name(queue))
    }

    /// Opens a durable queue's store, recovering its messages; `fresh`
    /// first clears what a deleted namesake may have left behind (a crash
    /// between deleting a queue and saving the definitions), so it cannot
    /// resurrect that queue's messages.
    pub(super) fn open_queue(
        &self,
        vhost: &str,
        name: &str,
        options: QueueOptions,
        clock: Arc<dyn Clock>,
        fresh: bool,
    ) -> Result<Arc<Queue>, BrokerError> {
        let dir = self.queue_dir(name);
        if fresh && dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| internal(&dir, "remove stale queue directory", e))?;
        }
        let q = Queue::open_durable(
            vhost,
            name,
            options,
            clock,
            &dir,
            self.store_options.clone(),
            Some(self.paging.clone()),
        )?;
        self.syncer.register(Arc::clone(&q) as Arc<dyn Durable>);
        Ok(q)
    }
}

impl VhostStorage {
    /// Opens a stream's log under `streams/`, recovering it; `fresh`
    /// clears what a deleted namesake may have left.
    pub(super) fn open_stream(
        &self,
        vhost: &str,
        name: &str,
        arguments: antre_amqp::FieldTable,
        clock: Arc<dyn Clock>,
        fresh: bool,
    ) -> Result<Arc<Stream>, BrokerError> {
        let dir = self.dir.join("streams").join(dir_name(name));
        if fresh && dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| internal(&dir, "remove stale stream directory", e))?;
        }
        let stream = Stream::open(vhost, name, arguments, &dir, clock)?;
        self.syncer
            .register(Arc::clone(&stream) as Arc<dyn Durable>);
        Ok(stream)
    }
}

/// Builds an exchange from its declaration, with the stores its type needs:
/// on disk under the vhost's `exchanges/` for a durable exchange of a
/// persistent vhost (`fresh` clears what a deleted namesake left there).
pub(super) fn build_exchange(
    vhost: &str,
    storage: Option<&VhostStorage>,
    d: ExchangeDeclaration,
    fresh: bool,
) -> Result<Exchange, BrokerError> {
    let t = ExchangeType::parse(&d.kind, &d.arguments)?;
    let dir = storage
        .filter(|_| d.durable)
        .map(|s| (s, s.dir.join("exchanges").join(dir_name(&d.name))));
    if let Some((_, dir)) = &dir {
        if fresh && dir.exists() {
            std::fs::remove_dir_all(dir)
                .map_err(|e| internal(dir, "remove stale exchange directory", e))?;
        }
    }
    let label = exchange_ref(vhost, &d.name);
    let dedup = match (t.dedup, &dir) {
        (false, _) => None,
        (true, None) => Some(Arc::new(DedupCache::new(vhost, &d.name, &d.arguments)?)),
        (true, Some((s, dir))) => {
            let cache = Arc::new(DedupCache::open_durable(
                vhost,
                &d.name,
                &d.arguments,
                &dir.join("dedup"),
                s.store_options.clone(),
            )?);
            s.syncer.register(Arc::clone(&cache) as Arc<dyn Durable>);
            Some(cache)
        }
    };
    let delayed = match (t.delayed, &dir) {
        (false, _) => None,
        (true, None) => Some(Arc::new(DelayedMessages::new(format!(
            "schedule of {label}"
        )))),
        (true, Some((s, dir))) => {
            let schedule = Arc::new(DelayedMessages::open_durable(
                format!("schedule of {label}"),
                &dir.join("delayed"),
                s.store_options.clone(),
                s.paging.memory.limit(),
            )?);
            s.syncer.register(Arc::clone(&schedule) as Arc<dyn Durable>);
            Some(schedule)
        }
    };
    Ok(Exchange {
        name: d.name,
        type_name: d.kind,
        kind: t.routing,
        durable: d.durable,
        auto_delete: d.auto_delete,
        internal: d.internal,
        arguments: d.arguments,
        bindings: Default::default(),
        dedup,
        delayed,
        policy: Default::default(),
    })
}

/// Deletes store directories the definitions do not mention: left by a
/// crash between creating a store and saving its definition.
pub(super) fn remove_orphan_dirs(dir: &Path, kept: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !kept.contains(&name) {
            tracing::warn!(dir = %entry.path().display(), "removing a store with no definition");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
