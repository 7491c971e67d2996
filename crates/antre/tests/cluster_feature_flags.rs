//! Feature flags in a rolling upgrade: a metadata command newer than some
//! member's version is not logged until every member supports its flag,
//! and a node lacking a flag the cluster enabled is refused as a member.
//! A node started with `ANTRE_TEST_WITHOUT_FEATURE_FLAGS` acts as the
//! older version.

use crate::harness;

use harness::{TestCluster, SECRET};
use serde_json::Value;

const FLAG: &str = "maintenance_mode_status";

/// Every flag this build knows, by name.
fn all_flags() -> Vec<&'static str> {
    antre_broker::feature_flags::FEATURE_FLAGS
        .iter()
        .map(|f| f.name)
        .collect()
}

/// Acts as a version of antre without feature flags (the first clustered
/// release): without [`FLAG`] and every later one.
fn older(c: &mut TestCluster, i: usize) {
    c.nodes[i].env = vec![(
        "ANTRE_TEST_WITHOUT_FEATURE_FLAGS".into(),
        all_flags().join(","),
    )];
}

/// [`FLAG`]'s row of node `i`'s `/api/feature-flags`.
async fn flag_on(c: &TestCluster, i: usize) -> Value {
    c.feature_flag(i, FLAG)
        .await
        .unwrap_or_else(|| panic!("n{} lists no {FLAG}", i + 1))
}

async fn until_enabled(c: &TestCluster, nodes: &[usize]) {
    for &i in nodes {
        c.until(&format!("{FLAG} enabled as n{} sees it", i + 1), || async {
            flag_on(c, i).await["state"] == "enabled"
        })
        .await;
    }
}

/// Whether node `i` shows node `of` recorded as drained.
async fn recorded_drained(c: &TestCluster, i: usize, of: &str) -> bool {
    c.nodes(i)
        .await
        .iter()
        .any(|n| n["name"] == of && n["maintenance_recorded"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_command_waits_until_the_last_member_is_upgraded() {
    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    older(&mut c, 2);
    c.launch().await;
    c.until_leader(&[0, 1, 2]).await;
    c.until("n3 holding the flag back, as n1 sees it", || async {
        let f = flag_on(&c, 0).await;
        let waiting = f["waiting_for"].as_array().cloned().unwrap_or_default();
        f["state"] == "unavailable"
            && waiting.len() == 1
            && waiting[0]["node"] == "n3"
            && waiting[0]["reason"] == "does not support it"
    })
    .await;

    // Each node's entry says which flags its version supports.
    let nodes = c.nodes(0).await;
    let flags_of = |name: &str| {
        let n = nodes.iter().find(|n| n["name"] == name).expect("listed");
        assert!(n["version"].is_string(), "{n}");
        n["feature_flags"].clone()
    };
    assert_eq!(flags_of("n1"), serde_json::json!(all_flags()));
    assert_eq!(flags_of("n3"), serde_json::json!([]));

    // A drain is not recorded: n3's version could not read the record.
    let (status, answer) = c.api(0, "POST", "/api/maintenance/drain", None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["recorded"], false, "{answer}");
    let (ok, out, err) = c.cli(0, &["cluster", "feature-flags"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(FLAG)
            && out.contains("unavailable")
            && out.contains("n3 (does not support it)"),
        "{out}"
    );
    let (status, answer) = c.api(0, "POST", "/api/maintenance/revive", None).await;
    assert_eq!(status, 200, "{answer}");
    assert!(!recorded_drained(&c, 1, "n1").await);
    assert_eq!(flag_on(&c, 1).await["state"], "unavailable");

    // n3 upgraded: the flag is enabled on every node, and a drain is
    // recorded again.
    c.kill(2);
    c.nodes[2].env.clear();
    c.spawn(2);
    c.wait_http(2).await;
    until_enabled(&c, &[0, 1, 2]).await;
    let (status, answer) = c.api(0, "POST", "/api/maintenance/drain", None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["recorded"], true, "{answer}");
    c.until("n1 recorded as drained on n2 and n3", || async {
        recorded_drained(&c, 1, "n1").await && recorded_drained(&c, 2, "n1").await
    })
    .await;
    let (status, answer) = c.api(0, "POST", "/api/maintenance/revive", None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["recorded"], true, "{answer}");

    // Enabled flags survive a restart (the entry is not applied again).
    c.kill(1);
    c.spawn(1);
    c.wait_http(1).await;
    assert_eq!(flag_on(&c, 1).await["state"], "enabled");
}

/// How many voters node `i` lists.
async fn voters(c: &TestCluster, i: usize) -> usize {
    c.nodes(i)
        .await
        .iter()
        .filter(|n| n["cluster_member"] == "voter")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_an_enabled_flag_is_refused_as_a_member() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until_leader(&[0, 1, 2]).await;
    until_enabled(&c, &[0]).await;

    let n4 = c.plan_joiner(0);
    older(&mut c, n4);
    c.spawn(n4);
    c.wait_http(n4).await;
    c.until("n4's join refused", || async {
        c.nodes[n4].logged("does not support the feature flags this cluster enabled")
    })
    .await;
    assert_eq!(voters(&c, 0).await, 3);

    // The same node upgraded joins.
    c.kill(n4);
    c.nodes[n4].env.clear();
    c.spawn(n4);
    c.wait_http(n4).await;
    c.until("n4 a member, as n1 sees it", || async {
        voters(&c, 0).await == 4
    })
    .await;
    until_enabled(&c, &[n4]).await;
}
