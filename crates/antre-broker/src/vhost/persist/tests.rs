//! The definitions log: crashes between switches, compaction.

use super::*;
use crate::clock::ManualClock;
use crate::metrics::BrokerMetrics;
use crate::syncer::Syncer;
use crate::vhost::{QueueDeclaration, Vhost};

fn storage(dir: &Path) -> VhostStorage {
    let syncer =
        Syncer::start(std::time::Duration::from_millis(50), Arc::default()).expect("syncer");
    VhostStorage {
        dir: dir.to_path_buf(),
        store_options: antre_store::StoreOptions::default(),
        paging: crate::queue::Paging {
            memory: crate::queue::MessageMemory::new(u64::MAX),
            scratch_dir: dir.join("scratch"),
            store_options: antre_store::StoreOptions::default(),
            alarms: Arc::default(),
            page_entries: crate::queue::PAGE_ENTRIES,
        },
        syncer,
    }
}

fn open(dir: &Path) -> Vhost {
    let clock = Arc::new(ManualClock::at(1)) as Arc<dyn Clock>;
    Vhost::open("/", storage(dir), clock, Arc::<BrokerMetrics>::default()).expect("opens")
}

fn declare(v: &Vhost, name: &str) {
    let d = QueueDeclaration {
        name: name.into(),
        durable: true,
        exclusive: false,
        auto_delete: false,
        arguments: Default::default(),
    };
    v.declare_queue(d, false, 1).expect("declared");
}

fn names(v: &Vhost) -> Vec<String> {
    let mut names: Vec<String> = v.queues().iter().map(|q| q.name.clone()).collect();
    names.sort();
    names
}

/// A crash after appends moved to a new log but before the snapshot
/// that would fold the old one: start-up replays both, in order.
#[test]
fn a_crash_between_switching_logs_and_the_snapshot_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let v = open(dir.path());
        declare(&v, "before-switch");
        let defs = v.definitions.as_ref().unwrap();
        defs.switch_log().unwrap();
        declare(&v, "after-switch");
        v.close();
    }
    assert_eq!(log_generations(dir.path()), [1, 2]);
    let v = open(dir.path());
    assert_eq!(names(&v), ["after-switch", "before-switch"]);
    // Folded at start-up: the next log (3) appears with its first record.
    assert!(log_generations(dir.path()).is_empty());
    declare(&v, "after-restart");
    assert_eq!(log_generations(dir.path()), [3]);
}

/// The timer's compaction, on its own thread, folds what preceded its
/// switch of logs into the snapshot, and everything before and after it
/// comes back.
#[test]
fn compaction_by_the_timer_keeps_every_change() {
    let dir = tempfile::tempdir().unwrap();
    {
        let v = open(dir.path());
        declare(&v, "a");
        let defs = v.definitions.as_ref().unwrap();
        defs.compaction_due.store(true, Ordering::Relaxed);
        v.tick(1);
        assert!(!defs.compaction_due.load(Ordering::Relaxed));
        while defs.compacting.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        let snapshot = std::fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap();
        let snapshot: Snapshot = serde_json::from_slice(&snapshot).unwrap();
        assert_eq!(snapshot.log_generation, 2);
        let queues: Vec<&str> = snapshot
            .definitions
            .queues
            .iter()
            .map(|q| q.name.as_str())
            .collect();
        assert_eq!(queues, ["a"]);
        assert!(
            log_generations(dir.path()).is_empty(),
            "the old log is gone"
        );
        declare(&v, "b");
        assert_eq!(log_generations(dir.path()), [2]);
        v.delete_queue("a", false, false, 1).unwrap();
        v.close();
    }
    let v = open(dir.path());
    assert_eq!(names(&v), ["b"]);
}

/// Policies are durable definitions: logged, folded into snapshots, and
/// applied to the queues recovered with them.
#[test]
fn policies_survive_a_restart_and_apply_to_recovered_queues() {
    use crate::policy::{Policy, PolicyKind};
    let set = |v: &Vhost, kind, name: &str, body: serde_json::Value| {
        let p = Policy::parse(kind, "/", name, body.as_object().unwrap()).unwrap();
        v.set_policy(p).unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let v = open(dir.path());
        declare(&v, "jobs");
        set(
            &v,
            PolicyKind::Policy,
            "ttl",
            serde_json::json!({
                "pattern": "^jobs$", "priority": 2, "definition": {"message-ttl": 1000}
            }),
        );
        set(
            &v,
            PolicyKind::Policy,
            "gone",
            serde_json::json!({
                "pattern": ".*", "definition": {"max-length": 1}
            }),
        );
        set(
            &v,
            PolicyKind::Operator,
            "cap",
            serde_json::json!({
                "pattern": ".*", "definition": {"max-length": 7}
            }),
        );
        v.delete_policy(PolicyKind::Policy, "gone").unwrap();
        v.close();
    }
    for round in 0..2 {
        // The second round reads the snapshot written at the first start.
        let v = open(dir.path());
        let names: Vec<String> = v
            .policies(PolicyKind::Policy)
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(names, ["ttl"], "round {round}");
        assert_eq!(v.policies(PolicyKind::Operator).len(), 1);
        let q = v.queue("jobs", 1).unwrap();
        assert_eq!(q.args().message_ttl, Some(1000));
        assert_eq!(q.args().max_length, Some(7));
        assert_eq!(q.policy().operator_name(), Some("cap"));
        let defs = v.definitions();
        assert_eq!(defs.policies.len(), 1);
        assert_eq!(defs.operator_policies[0].name, "cap");
        v.close();
    }
}

/// Only a change this thread made counts as the caller's: a channel's
/// answer waits for a sync when its own handler changed definitions, not
/// when another connection's did at the same moment (a vhost-wide count
/// made it wait too, and a cluster's proxy channel, which nothing syncs,
/// wait for good).
#[test]
fn a_change_counts_for_the_thread_that_made_it_only() {
    let dir = tempfile::tempdir().unwrap();
    let v = Arc::new(open(dir.path()));
    let before = v.definitions_changed();
    let other = Arc::clone(&v);
    std::thread::spawn(move || declare(&other, "elsewhere"))
        .join()
        .unwrap();
    assert_eq!(names(&v), ["elsewhere"]);
    assert_eq!(v.definitions_changed(), before, "another thread's change");
    declare(&v, "here");
    assert!(v.definitions_changed() > before, "this thread's change");
}
