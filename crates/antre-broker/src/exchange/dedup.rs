//! Exchange-level deduplication, compatible with the
//! rabbitmq-message-deduplication plugin: a message whose key was seen
//! within the cache's window is not routed (a publisher that retries after a
//! lost confirm gets its ack without a second copy going out).
//!
//! The key is the `x-deduplication-header` header or, antre's addition, the
//! `message-id` property when the header is absent. The window is bounded by
//! `x-cache-size` entries (oldest evicted first) and `x-cache-ttl` ms (per
//! message: the `x-cache-ttl` header). On a durable exchange the cache is
//! logged to a store, so the window survives a restart; a publish's confirm
//! waits for its cache entry to be on disk, like its message.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use antre_amqp::{FieldTable, FieldValue};
use antre_store::{QueueStore, SegmentPosition, StoreOptions};
use parking_lot::Mutex;

use crate::error::{exchange_ref, BrokerError};

#[derive(Debug)]
struct Seen {
    expires_at: Option<u64>,
    pos: Option<SegmentPosition>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Seen>,
    /// Keys in insertion order, for size eviction and expiry.
    order: VecDeque<String>,
    store: Option<QueueStore>,
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some(seen) = self.entries.remove(key) {
            if let (Some(pos), Some(store)) = (seen.pos, self.store.as_mut()) {
                if let Err(e) = store.ack(pos) {
                    tracing::warn!(%pos, "could not drop dedup cache entry from its log: {e}");
                }
            }
        }
    }
}

/// The deduplication cache of one exchange.
#[derive(Debug)]
pub struct DedupCache {
    label: String,
    size: Option<usize>,
    ttl: Option<u64>,
    inner: Mutex<Inner>,
}

/// An integer argument, also accepted as a numeric string (the plugin's own
/// examples pass `x-cache-size` as a string).
fn int_arg(args: &FieldTable, key: &str, what: &str) -> Result<Option<u64>, BrokerError> {
    let Some(v) = args.get(key) else {
        return Ok(None);
    };
    let n = v
        .as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
    match n {
        Some(n) if n > 0 => Ok(Some(n as u64)),
        _ => Err(BrokerError::PreconditionFailed(format!(
            "invalid arg '{key}' for {what}: must be a positive integer"
        ))),
    }
}

impl DedupCache {
    /// A cache configured by an exchange's arguments, in memory only.
    pub fn new(vhost: &str, exchange: &str, args: &FieldTable) -> Result<DedupCache, BrokerError> {
        let what = exchange_ref(vhost, exchange);
        Ok(DedupCache {
            label: format!("dedup cache of {what}"),
            size: int_arg(args, "x-cache-size", &what)?.map(|n| n as usize),
            ttl: int_arg(args, "x-cache-ttl", &what)?,
            inner: Mutex::default(),
        })
    }

    /// A cache logged in `dir`, recovering the entries an earlier run left.
    pub fn open_durable(
        vhost: &str,
        exchange: &str,
        args: &FieldTable,
        dir: &Path,
        options: StoreOptions,
    ) -> Result<DedupCache, BrokerError> {
        let cache = DedupCache::new(vhost, exchange, args)?;
        let mut recovered = Vec::new();
        let (store, _) = QueueStore::open(dir, options, |pos, payload| {
            if payload.len() >= 8 {
                let mut at = [0u8; 8];
                at.copy_from_slice(&payload[..8]);
                let expires_at = Some(u64::from_le_bytes(at)).filter(|t| *t != 0);
                let key = String::from_utf8_lossy(&payload[8..]).into_owned();
                recovered.push((
                    key,
                    Seen {
                        expires_at,
                        pos: Some(pos),
                    },
                ));
            }
        })
        .map_err(|e| BrokerError::Internal(format!("opening {}: {e}", cache.label)))?;
        {
            let mut inner = cache.inner.lock();
            inner.store = Some(store);
            for (key, seen) in recovered {
                inner.remove(&key);
                inner.order.push_back(key.clone());
                inner.entries.insert(key, seen);
            }
        }
        Ok(cache)
    }

    /// Whether `message`'s key was seen in the window; if not, records it.
    /// Returns (duplicate, written to the log). Messages without a key are
    /// never duplicates.
    pub fn check(
        &self,
        message: &crate::message::Message,
        now: u64,
    ) -> Result<(bool, bool), BrokerError> {
        let Some(key) = message.dedup_key() else {
            return Ok((false, false));
        };
        let ttl = message
            .properties
            .headers
            .as_ref()
            .and_then(|h| h.get("x-cache-ttl"))
            .and_then(FieldValue::as_i64)
            .and_then(|t| u64::try_from(t).ok())
            .or(self.ttl);
        let mut inner = self.inner.lock();
        // Expired entries at the front go first.
        while let Some(front) = inner.order.front().cloned() {
            let expired = inner
                .entries
                .get(&front)
                .is_none_or(|s| s.expires_at.is_some_and(|at| at <= now));
            if !expired {
                break;
            }
            inner.order.pop_front();
            inner.remove(&front);
        }
        if let Some(seen) = inner.entries.get(&key) {
            if seen.expires_at.is_none_or(|at| at > now) {
                return Ok((true, false));
            }
            inner.remove(&key);
        }
        if let Some(size) = self.size {
            while inner.entries.len() >= size {
                let Some(oldest) = inner.order.pop_front() else {
                    break;
                };
                inner.remove(&oldest);
            }
        }
        let expires_at = ttl.map(|t| now.saturating_add(t));
        let pos = match inner.store.as_mut() {
            Some(store) => {
                let mut record = expires_at.unwrap_or(0).to_le_bytes().to_vec();
                record.extend_from_slice(key.as_bytes());
                Some(
                    store
                        .append(&record)
                        .map_err(|e| BrokerError::Internal(format!("{}: {e}", self.label)))?,
                )
            }
            None => None,
        };
        inner.order.push_back(key.clone());
        inner.entries.insert(key, Seen { expires_at, pos });
        Ok((false, pos.is_some()))
    }

    /// Entries in the cache.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::durable::OwnsStore for DedupCache {
    fn store_label(&self) -> &str {
        &self.label
    }

    fn with_store<R>(&self, f: impl FnOnce(&mut Option<QueueStore>) -> R) -> R {
        f(&mut self.inner.lock().store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::OwnsStore;
    use crate::message::Message;
    use antre_amqp::BasicProperties;

    fn keyed(key: &str, ttl: Option<i64>) -> Message {
        let mut headers: FieldTable = [("x-deduplication-header", FieldValue::string(key))]
            .into_iter()
            .collect();
        if let Some(t) = ttl {
            headers.insert("x-cache-ttl", FieldValue::I64(t));
        }
        Message::new(
            "x".into(),
            String::new(),
            BasicProperties {
                headers: Some(headers),
                ..Default::default()
            },
            bytes::Bytes::new(),
        )
    }

    fn cache(args: &[(&str, FieldValue)]) -> DedupCache {
        DedupCache::new("/", "x", &args.iter().cloned().collect()).unwrap()
    }

    #[test]
    fn duplicates_within_the_ttl_are_caught() {
        let c = cache(&[("x-cache-ttl", FieldValue::I32(1000))]);
        assert_eq!(c.check(&keyed("a", None), 0).unwrap(), (false, false));
        assert!(c.check(&keyed("a", None), 999).unwrap().0);
        assert!(
            !c.check(&keyed("a", None), 1000).unwrap().0,
            "expired, so new again"
        );
        // Per-message TTL overrides the exchange's.
        assert!(!c.check(&keyed("b", Some(10)), 0).unwrap().0);
        assert!(!c.check(&keyed("b", None), 10).unwrap().0);
    }

    #[test]
    fn size_evicts_the_oldest_and_strings_are_accepted() {
        let c = cache(&[("x-cache-size", FieldValue::string("2"))]);
        for k in ["a", "b", "c"] {
            assert!(!c.check(&keyed(k, None), 0).unwrap().0);
        }
        assert_eq!(c.len(), 2);
        assert!(!c.check(&keyed("a", None), 0).unwrap().0, "a was evicted");
        assert!(c.check(&keyed("c", None), 0).unwrap().0);
        assert!(DedupCache::new(
            "/",
            "x",
            &[("x-cache-size", FieldValue::string("many"))]
                .into_iter()
                .collect()
        )
        .is_err());
    }

    #[test]
    fn the_window_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let args = FieldTable::new();
        {
            let c = DedupCache::open_durable("/", "x", &args, dir.path(), StoreOptions::default())
                .unwrap();
            assert_eq!(c.check(&keyed("pay-1", None), 0).unwrap(), (false, true));
            c.close_store();
        }
        let c =
            DedupCache::open_durable("/", "x", &args, dir.path(), StoreOptions::default()).unwrap();
        assert!(c.check(&keyed("pay-1", None), 0).unwrap().0);
    }
}
