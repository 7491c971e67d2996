//! A change a client made is answered once every running member applied
//! it.
//!
//! A metadata change is committed once a majority logged it, and a node
//! applies it when it learns of the commit: the leader and the proposing
//! node before the client's answer, the others a moment later. A client
//! told that its binding, user or permission exists could still find it
//! missing through another node: a publish there through the new binding
//! was unroutable (returned if mandatory, otherwise dropped and
//! confirmed), a login of the new user refused. The read index
//! ([`super::read_index`]) covers a queue or exchange that is not found;
//! a binding cannot be caught up that way, since an exchange that routes
//! nowhere is common. RabbitMQ 3.10 commits a change on every running node
//! before it answers; so does antre now: the proposing node asks each
//! other running member to say once it applied as much as this node has,
//! and answers the client after the last one did.
//!
//! One request per member at a time: the changes answered meanwhile wait
//! for the next, which asks for everything this node applied by then, so
//! a burst of declares costs each member a round trip or two, over one
//! connection. Bounded: a member that does not say so within [`WITHIN`]
//! (paused, cut off, overloaded) is not waited for again until it has
//! answered in time once more, so a stalled member slows one change, not
//! every one until it counts as down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Cluster;
use crate::wire::{Request, Response};

/// How long a change's answer waits for the other members.
pub(crate) const WITHIN: Duration = Duration::from_millis(500);

/// What this node knows of the other members' applied metadata.
#[derive(Default)]
pub(crate) struct Members {
    by_name: parking_lot::Mutex<HashMap<String, Arc<Member>>>,
}

#[derive(Default)]
struct Member {
    /// The highest index the member said it applied; held while a
    /// request to it is on its way.
    confirmed: Arc<tokio::sync::Mutex<u64>>,
    /// The last wait for it timed out: not waited for until it answers in
    /// time again.
    straggling: AtomicBool,
}

impl Members {
    fn member(&self, name: &str) -> Arc<Member> {
        Arc::clone(self.by_name.lock().entry(name.to_owned()).or_default())
    }
}

impl Cluster {
    /// A member's answer to [`Request::Applied`]: whether it applied the
    /// metadata up to `index` within [`WITHIN`].
    pub(crate) async fn applied_to(&self, index: u64) -> bool {
        self.state_machine
            .progress
            .reached(index, Instant::now() + WITHIN)
            .await
    }

    /// Waits until every other running member applied what this node has
    /// applied (see the module docs). Nothing to wait for on a single
    /// node, or before every member knows the request.
    pub(crate) async fn applied_everywhere(&self) {
        let flag = antre_broker::feature_flags::METADATA_APPLIED_EVERYWHERE;
        if !self.broker().is_some_and(|b| b.feature_flag_enabled(flag)) {
            return;
        }
        let index = self.state_machine.progress.done();
        let me = self.link.config.node_name.clone();
        let deadline = Instant::now() + WITHIN;
        let mut waits = Vec::new();
        for name in antre_broker::cluster::MetadataLog::nodes(self) {
            if name == me {
                continue;
            }
            let member = self.applied_members.member(&name);
            if !member.straggling.load(Ordering::Acquire) {
                waits.push(async move {
                    if !self.member_applied(&member, &name, index, deadline).await {
                        tracing::debug!(
                            "cluster node '{name}' did not apply metadata index {index} within {WITHIN:?}: not waited for until it does"
                        );
                        member.straggling.store(true, Ordering::Release);
                    }
                });
                continue;
            }
            // Asked all the same, unless a request is on its way, without
            // waiting: an answer in time ends its straggling.
            let this = self.this.get().and_then(std::sync::Weak::upgrade);
            if let (Some(node), Ok(mut confirmed)) =
                (this, Arc::clone(&member.confirmed).try_lock_owned())
            {
                self.runtime.spawn(async move {
                    let index = node.state_machine.progress.done();
                    if node.says_applied(&name, index, deadline).await {
                        *confirmed = index;
                        member.straggling.store(false, Ordering::Release);
                    }
                });
            }
        }
        futures::future::join_all(waits).await;
    }

    /// Whether `member` applied the metadata up to `index` by `deadline`:
    /// it said so already, or says so to the next request, which asks
    /// for all that this node applied by then.
    async fn member_applied(
        &self,
        member: &Member,
        name: &str,
        index: u64,
        deadline: Instant,
    ) -> bool {
        let Ok(mut confirmed) = tokio::time::timeout_at(deadline, member.confirmed.lock()).await
        else {
            return false;
        };
        if *confirmed >= index {
            return true;
        }
        let ask = self.state_machine.progress.done().max(index);
        let ok = self.says_applied(name, ask, deadline).await;
        if ok {
            *confirmed = ask;
        }
        ok
    }

    /// Whether member `name` says it applied the metadata up to `index`
    /// by `deadline`.
    async fn says_applied(&self, name: &str, index: u64, deadline: Instant) -> bool {
        let request = Request::Applied { index };
        let answer = self
            .forward_request(crate::node_id_of(name), &request, deadline)
            .await;
        matches!(answer, Ok(Response::Applied(true)))
    }
}
