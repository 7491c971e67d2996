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
//! a burst of declares costs each member a round trip or two, over a
//! connection of its own (not the one proposals to the leader take).
//!
//! Bounded: a member that does not say so within [`WITHIN`] (paused, cut
//! off, overloaded) is not waited for again until it has answered in time
//! once more, so a stalled member slows one change, not every one until
//! it counts as down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Cluster;
use crate::wire::{Request, Response};

/// How long a change's answer waits for the other members. Two seconds:
/// half a second let a member that was only slow (three test clusters
/// at once on two cores) become a straggler, and a publish through it
/// right after a bind was returned; a paused member costs one change
/// this long.
pub(crate) const WITHIN: Duration = Duration::from_secs(2);

/// What this node knows of the other members' applied metadata.
#[derive(Default)]
pub(crate) struct Members {
    by_name: parking_lot::Mutex<HashMap<String, Arc<Member>>>,
}

#[derive(Default)]
struct Member {
    /// Held while a request to the member is on its way.
    asked: Arc<tokio::sync::Mutex<Asked>>,
    /// The last wait for it timed out: not waited for until it answers in
    /// time again.
    straggling: AtomicBool,
}

/// What a request to a member needs and gave.
#[derive(Default)]
struct Asked {
    /// The highest index the member said it applied.
    confirmed: u64,
    /// The connection the requests go over, once dialled.
    conn: Option<crate::network::Connection>,
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
        if !self.flag_enabled(antre_broker::feature_flags::METADATA_APPLIED_EVERYWHERE) {
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
            if let (Some(node), Ok(mut asked)) =
                (self.arc(), Arc::clone(&member.asked).try_lock_owned())
            {
                self.runtime.spawn(async move {
                    let index = node.state_machine.progress.done();
                    if node.says_applied(&mut asked, &name, index, deadline).await {
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
        let Ok(mut asked) = tokio::time::timeout_at(deadline, member.asked.lock()).await else {
            return false;
        };
        if asked.confirmed >= index {
            return true;
        }
        let ask = self.state_machine.progress.done().max(index);
        self.says_applied(&mut asked, name, ask, deadline).await
    }

    /// Whether member `name` says it applied the metadata up to `index`
    /// by `deadline` (recorded in `asked` if it does).
    async fn says_applied(
        &self,
        asked: &mut Asked,
        name: &str,
        index: u64,
        deadline: Instant,
    ) -> bool {
        let conn = match asked.conn.as_mut() {
            Some(conn) => conn,
            None => {
                let Some(addr) = self.addr_of(crate::node_id_of(name)) else {
                    return false;
                };
                let conn = crate::network::Connection::new(Arc::clone(&self.link), name, addr);
                asked.conn.insert(conn)
            }
        };
        let ttl = deadline.saturating_duration_since(Instant::now());
        let answer = conn.call(&Request::Applied { index }, ttl).await;
        let ok = matches!(answer, Ok(Response::Applied(true)));
        if ok {
            asked.confirmed = asked.confirmed.max(index);
        }
        ok
    }
}
