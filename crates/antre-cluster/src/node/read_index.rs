//! A node that finds no queue by a publish's name catches up with the
//! metadata leader first.
//!
//! A declare is answered once the metadata leader committed and applied
//! it and the declaring node applied it too; the other nodes apply it a
//! moment later. A client that declared a queue through one node and at
//! once published to it through another (two connections of one service
//! behind a load balancer, or two services) found no such queue there in 2
//! to 6 publishes of 200 on an idle cluster of this machine: the publish
//! was unroutable, so returned if mandatory, and otherwise dropped and
//! confirmed. RabbitMQ 3.10 commits a declare on every running node
//! before it answers, so it never does this.
//!
//! Now such a publish (to the default exchange, naming a queue this node
//! does not know) asks the metadata leader how far it applied the
//! metadata, waits (bounded) until this node applied as much, and routes
//! again. What a client was told is declared is then known here. One
//! request at a time: callers that came while one was on its way wait for
//! the next, which started after they came, so a burst of such publishes
//! costs a round trip or two, not one each. The leader itself needs no
//! request: a declare through any node is answered only once the leader
//! applied it.

use std::time::Duration;

use tokio::time::Instant;

use super::Cluster;
use crate::wire::{Request, Response};

/// The last catch-up: when it started and whether it succeeded.
#[derive(Default)]
pub(crate) struct CatchUp {
    running: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

/// How long a catch-up may take: a publish waits for it.
const WITHIN: Duration = Duration::from_secs(1);

impl Cluster {
    /// The leader's answer to [`Request::ReadIndex`]: what its state
    /// machine applied (openraft's metrics may show it a moment later).
    pub(crate) fn read_index(&self) -> Result<u64, String> {
        if self.raft.metrics().borrow().current_leader != Some(self.id()) {
            return Err("not the metadata leader".into());
        }
        Ok(self.state_machine.progress.done())
    }

    /// Applies here what the metadata leader applied when this was asked
    /// (see the module docs): whether something new may be known now.
    pub(crate) async fn catch_up_async(&self) -> bool {
        if !self.flag_enabled(antre_broker::feature_flags::METADATA_READ_INDEX) {
            return false;
        }
        let asked = Instant::now();
        let mut last = self.catch_up.running.lock().await;
        if let Some((started, caught_up)) = *last {
            if started >= asked {
                return caught_up;
            }
        }
        let started = Instant::now();
        let caught_up = self.catch_up_once(started + WITHIN).await;
        *last = Some((started, caught_up));
        caught_up
    }

    async fn catch_up_once(&self, deadline: Instant) -> bool {
        let leader = self.raft.metrics().borrow().current_leader;
        let Some(leader) = leader.filter(|&l| l != self.id()) else {
            // The leader (or none known): nothing to catch up with.
            return false;
        };
        match self
            .forward_request(leader, &Request::ReadIndex, deadline)
            .await
        {
            Ok(Response::ReadIndex(Ok(index))) => {
                self.state_machine.progress.reached(index, deadline).await
            }
            Ok(other) => {
                tracing::debug!("the metadata leader did not give its index: {other:?}");
                false
            }
            Err(e) => {
                tracing::debug!("the metadata leader did not give its index: {e}");
                false
            }
        }
    }
}
