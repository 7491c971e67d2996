//! Which feature flags each member supports, enabling a flag once all do,
//! and refusing a new member that lacks an enabled one (see
//! [`antre_broker::feature_flags`] for what a flag guards).
//!
//! A member says which flags it supports in its answer to
//! [`Request::NodeInfo`] (field `feature_flags`): that request exists in
//! every clustered version, and an older version's answer simply lacks the
//! field, so it supports none. The metadata leader asks every member while
//! a flag this node knows is not enabled yet, and proposes
//! [`MetaCommand::EnableFeatureFlag`] once every member lists it. A member
//! that does not answer (down, cut off) holds the flag back, as RabbitMQ
//! enables a flag only with every node running. The leader does not add
//! a member meanwhile (`Cluster::flag_changes`): one added between the
//! question and the entry could not read the entry.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use antre_broker::cluster::MetaCommand;
use antre_broker::feature_flags::{FeatureFlag, FEATURE_FLAGS};
use antre_broker::Broker;

use crate::membership::MembershipError;
use crate::network::Connection;
use crate::node::Cluster;
use crate::wire::{Request, Response};

/// A feature flag asked about for every batch, channel or publish:
/// remembered once the cluster enabled it (a flag is never disabled), so
/// that the broker's set of enabled flags is read only until then.
pub(crate) struct FlagSeen {
    name: &'static str,
    on: AtomicBool,
}

impl FlagSeen {
    pub(crate) fn new(name: &'static str) -> FlagSeen {
        FlagSeen {
            name,
            on: AtomicBool::new(false),
        }
    }

    /// Whether the cluster enabled the flag.
    pub(crate) fn enabled(&self, broker: &Weak<Broker>) -> bool {
        self.on.load(Ordering::Relaxed) || broker.upgrade().is_some_and(|b| self.enabled_in(&b))
    }

    /// Whether the cluster of `broker` enabled the flag.
    pub(crate) fn enabled_in(&self, broker: &Broker) -> bool {
        if self.on.load(Ordering::Relaxed) {
            return true;
        }
        let on = broker.feature_flag_enabled(self.name);
        if on {
            self.on.store(true, Ordering::Relaxed);
        }
        on
    }
}

/// How often the metadata leader looks for a flag to enable while one is
/// not enabled yet.
const ENABLE_CHECK: Duration = Duration::from_secs(2);

/// How long a member may take to say which flags it supports.
const ASK_TTL: Duration = Duration::from_secs(2);

/// The field of a `NodeInfo` answer that lists the flags.
pub const NODE_INFO_FIELD: &str = "feature_flags";

/// A flag as `GET /api/feature-flags` and `antre cluster feature-flags`
/// show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagState {
    /// Its name.
    pub name: String,
    /// What it starts (empty for a flag this version does not know).
    pub desc: String,
    /// Whether the cluster enabled it.
    pub enabled: bool,
    /// Whether this node's version knows it.
    pub known: bool,
    /// For a flag not enabled: the members holding it back, each with why
    /// (it does not support the flag, or did not answer).
    pub waiting_for: Vec<(String, String)>,
}

impl FlagState {
    /// A flag this version knows, enabled or not, nothing known yet of
    /// who holds it back.
    pub fn known(flag: &FeatureFlag, enabled: bool) -> FlagState {
        FlagState {
            name: flag.name.to_owned(),
            desc: flag.desc.to_owned(),
            enabled,
            known: true,
            waiting_for: Vec::new(),
        }
    }
}

/// Which flags one member supports, or why it could not say.
type Support = Result<BTreeSet<String>, String>;

/// The flags a `NodeInfo` answer lists (none, from an older version).
fn listed(info: &serde_json::Value) -> BTreeSet<String> {
    info.get(NODE_INFO_FIELD)
        .and_then(|v| v.as_array())
        .map(|flags| {
            flags
                .iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Cluster {
    /// The flags this node supports: every flag its version knows, less
    /// those its settings hold back (`without_feature_flags`).
    pub fn supported_feature_flags(&self) -> Vec<&'static str> {
        let without = &self.link.config.without_feature_flags;
        FEATURE_FLAGS
            .iter()
            .map(|f| f.name)
            .filter(|name| !without.iter().any(|w| w == name))
            .collect()
    }

    /// Every member's supported flags, by name (this node's own without
    /// asking).
    async fn members_support(&self) -> Vec<(String, Support)> {
        let me = self.link.config.node_name.clone();
        let asks = self.members().into_iter().map(|m| {
            let me = me.clone();
            async move {
                if m.name == me {
                    let own = self.supported_feature_flags();
                    return (m.name, Ok(own.into_iter().map(str::to_owned).collect()));
                }
                let answer = self.node_info(&m.name, ASK_TTL).await;
                (
                    m.name,
                    answer.map(|info| listed(&info)).map_err(|e| e.to_string()),
                )
            }
        });
        futures::future::join_all(asks).await
    }

    /// The flags this version knows and those the cluster enabled, with
    /// who holds back each one not enabled (the members are asked only if
    /// one is not).
    pub async fn feature_flags(&self) -> Vec<FlagState> {
        let enabled: BTreeSet<String> = self
            .broker()
            .map(|b| b.enabled_feature_flags().into_iter().collect())
            .unwrap_or_default();
        let mut flags: Vec<FlagState> = FEATURE_FLAGS
            .iter()
            .map(|f| FlagState::known(f, enabled.contains(f.name)))
            .collect();
        for name in &enabled {
            if !flags.iter().any(|f| &f.name == name) {
                flags.push(FlagState {
                    name: name.clone(),
                    desc: String::new(),
                    enabled: true,
                    known: false,
                    waiting_for: Vec::new(),
                });
            }
        }
        if flags.iter().all(|f| f.enabled) {
            return flags;
        }
        let support = self.members_support().await;
        for flag in flags.iter_mut().filter(|f| !f.enabled) {
            flag.waiting_for = holding_back(&support, &flag.name);
        }
        flags
    }

    /// Refuses to add `name` (at `addr`) as a member if it lacks a flag
    /// the cluster enabled: its version could not read the entries that
    /// need it.
    pub(crate) async fn check_joiner_flags(
        &self,
        name: &str,
        addr: SocketAddr,
    ) -> Result<(), MembershipError> {
        let enabled = self
            .broker()
            .map(|b| b.enabled_feature_flags())
            .unwrap_or_default();
        if enabled.is_empty() {
            return Ok(());
        }
        let mut conn = Connection::new(Arc::clone(&self.link), name, addr);
        let supported = match conn.call(&Request::NodeInfo, ASK_TTL).await {
            Ok(Response::NodeInfo(info)) => listed(&info),
            Ok(_) => {
                return Err(MembershipError::Unavailable(format!(
                    "node '{name}' answered which feature flags it supports with the wrong kind of answer"
                )))
            }
            Err(e) => {
                return Err(MembershipError::Unavailable(format!(
                    "cannot ask node '{name}' which feature flags it supports: {e}"
                )))
            }
        };
        let missing: Vec<String> = enabled
            .into_iter()
            .filter(|f| !supported.contains(f))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(MembershipError::Invalid(format!(
            "node '{name}' does not support the feature flags this cluster enabled ({}): it runs an older version of antre; upgrade it before it joins",
            missing.join(", ")
        )))
    }
}

/// The members that hold flag `name` back, each with why.
fn holding_back(support: &[(String, Support)], name: &str) -> Vec<(String, String)> {
    support
        .iter()
        .filter_map(|(node, s)| match s {
            Ok(flags) if flags.contains(name) => None,
            Ok(_) => Some((node.clone(), "does not support it".to_owned())),
            Err(e) => Some((node.clone(), format!("did not answer: {e}"))),
        })
        .collect()
}

/// On every node, while it runs: when it leads the metadata group and a
/// flag it knows is not enabled, asks the members which they support and
/// proposes enabling each flag all of them support.
pub(crate) async fn enable_when_supported(node: Weak<Cluster>) {
    let mut metrics = match node.upgrade() {
        Some(n) => n.raft.metrics(),
        None => return,
    };
    let mut led_by = None;
    loop {
        // Looks again every ENABLE_CHECK, and as soon as this node is
        // elected: a new cluster enables its flags at its first election.
        let deadline = tokio::time::Instant::now() + ENABLE_CHECK;
        loop {
            let now_led_by = metrics.borrow_and_update().current_leader;
            if now_led_by != led_by {
                led_by = now_led_by;
                break;
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return,
                Err(_) => break,
            }
        }
        let Some(n) = node.upgrade() else { return };
        if n.stopped.load(Ordering::Relaxed) {
            return;
        }
        let Some(broker) = n.broker() else { return };
        if led_by != Some(n.id()) {
            continue;
        }
        let enabled = broker.enabled_feature_flags();
        let pending: Vec<&'static str> = n
            .supported_feature_flags()
            .into_iter()
            .filter(|f| !enabled.iter().any(|e| e == f))
            .collect();
        if pending.is_empty() {
            continue;
        }
        let _flags = n.flag_changes.lock().await;
        let support = n.members_support().await;
        for flag in pending {
            let holding = holding_back(&support, flag);
            if !holding.is_empty() {
                tracing::debug!("feature flag {flag} waits for {holding:?}");
                continue;
            }
            let command = MetaCommand::EnableFeatureFlag {
                name: flag.to_owned(),
            };
            match n.propose_async(command).await {
                Ok(_) => tracing::info!("feature flag {flag} enabled: every member supports it"),
                Err(e) => tracing::warn!("enabling feature flag {flag}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_without_the_field_supports_nothing() {
        let old = serde_json::json!({"name": "n1", "mem_used": 1});
        assert!(listed(&old).is_empty());
        let new = serde_json::json!({NODE_INFO_FIELD: ["a", "b", 3]});
        assert_eq!(listed(&new), BTreeSet::from(["a".into(), "b".into()]));
    }

    #[test]
    fn a_flag_waits_for_every_member_that_lacks_it_or_is_silent() {
        let support = vec![
            ("n1".to_owned(), Ok(BTreeSet::from(["f".to_owned()]))),
            ("n2".to_owned(), Ok(BTreeSet::new())),
            ("n3".to_owned(), Err("timed out".to_owned())),
        ];
        assert_eq!(
            holding_back(&support, "f"),
            [
                ("n2".to_owned(), "does not support it".to_owned()),
                ("n3".to_owned(), "did not answer: timed out".to_owned()),
            ]
        );
        assert!(holding_back(&support[..1], "f").is_empty());
    }
}
