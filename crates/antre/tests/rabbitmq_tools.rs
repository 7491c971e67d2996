//! RabbitMQ's own management tools against antre: Debian's rabbitmqadmin
//! 3.10 (a single Python script) and pyrabbit2 from PyPI, run as a user
//! would run them. Without a tool the test says so and passes, except
//! under CI (`CI=true`), where .ci/run installs both and a missing one
//! fails.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::{within, TestBroker};
use serde_json::Value;

/// Says a tool is missing: a failure under CI, a note otherwise.
fn missing(what: &str) {
    assert!(
        !common::under_ci(),
        "CI=true but {what} is missing: .ci/run installs it"
    );
    eprintln!("skipping: {what} is not installed (.ci/run installs it)");
}

/// The rabbitmqadmin script: `$RABBITMQADMIN`, or `rabbitmqadmin` on PATH.
fn rabbitmqadmin_script() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RABBITMQADMIN") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join("rabbitmqadmin"))
        .find(|p| p.is_file())
}

/// Runs a command off the async workers; returns (success, stdout, stderr).
async fn run(mut cmd: Command) -> (bool, String, String) {
    let out = within(
        "a tool",
        tokio::task::spawn_blocking(move || cmd.output().expect("run the tool")),
    )
    .await
    .expect("tool task");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Admin {
    script: PathBuf,
    port: u16,
}

impl Admin {
    /// `rabbitmqadmin ARGS` against the broker, as guest; fails the test
    /// with the tool's message if it fails.
    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.try_run(args).await;
        assert!(ok, "rabbitmqadmin {args:?} failed: {err}{out}");
        out
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-f", "raw_json"];
        all.extend_from_slice(args);
        let out = self.ok(&all).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    async fn try_run(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new("python3");
        cmd.arg(&self.script)
            .args(["-H", "127.0.0.1", "-P", &self.port.to_string()])
            .args(["-u", "guest", "-p", "guest"])
            .args(args);
        run(cmd).await
    }
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect()
}

/// The name of the one AMQP connection, once the broker lists it.
async fn connection_name(b: &TestBroker) -> String {
    within("the connection to be listed", async {
        loop {
            let (_, conns) = b.api("GET", "/api/connections", None).await;
            if let Some(name) = conns[0]["name"].as_str() {
                return name.to_owned();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

async fn wait_closed(conn: &lapin::Connection) {
    within("the connection to be closed", async {
        while conn.status().connected() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmqadmin_manages_users_and_permissions() {
    let Some(script) = rabbitmqadmin_script() else {
        return missing("rabbitmqadmin");
    };
    let b = TestBroker::start().await;
    let admin = Admin {
        script,
        port: b.server.http_addr.expect("HTTP on").port(),
    };
    admin.ok(&["declare", "vhost", "name=eu"]).await;
    admin
        .ok(&[
            "declare",
            "user",
            "name=ops",
            "password=s3cret",
            "tags=monitoring,management",
        ])
        .await;
    admin
        .ok(&["declare", "user", "name=app", "password=app", "tags="])
        .await;
    let users = admin.json(&["list", "users"]).await;
    assert_eq!(names(&users), ["app", "guest", "ops"]);
    let ops = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "ops")
        .unwrap();
    assert_eq!(ops["tags"], serde_json::json!(["monitoring", "management"]));
    admin
        .ok(&[
            "declare",
            "permission",
            "vhost=eu",
            "user=ops",
            "configure=^ops",
            "write=.*",
            "read=.*",
        ])
        .await;
    let permissions = admin.json(&["list", "permissions"]).await;
    let theirs: Vec<(&str, &str, &str)> = permissions
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let field = |k: &str| p[k].as_str().unwrap_or_default();
            (field("user"), field("vhost"), field("configure"))
        })
        .collect();
    assert!(theirs.contains(&("ops", "eu", "^ops")), "{permissions}");
    let table = admin.ok(&["list", "permissions", "user", "vhost"]).await;
    assert!(
        table.contains("| ops ") && table.contains("| eu "),
        "{table}"
    );
    let (status, me) = b
        .api_as(("ops", "s3cret"), "GET", "/api/whoami", None)
        .await;
    assert_eq!(status, 200, "{me}");

    admin
        .ok(&["delete", "permission", "vhost=eu", "user=ops"])
        .await;
    let (status, _) = b.api("GET", "/api/permissions/eu/ops", None).await;
    assert_eq!(status, 404);
    admin.ok(&["delete", "user", "name=ops"]).await;
    let users = admin.json(&["list", "users"]).await;
    assert_eq!(names(&users), ["app", "guest"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmqadmin_manages_antre() {
    let Some(script) = rabbitmqadmin_script() else {
        return missing("rabbitmqadmin");
    };
    let b = TestBroker::start().await;
    let admin = Admin {
        script,
        port: b.server.http_addr.expect("HTTP on").port(),
    };

    // declare queue/exchange failed: rabbitmqadmin sends "durable": "true".
    admin
        .ok(&["declare", "exchange", "name=admin.x", "type=direct"])
        .await;
    admin
        .ok(&["declare", "queue", "name=admin.q", "durable=false"])
        .await;
    admin
        .ok(&[
            "declare",
            "queue",
            "name=admin.limited",
            r#"arguments={"x-max-length": 2}"#,
        ])
        .await;
    admin
        .ok(&[
            "declare",
            "binding",
            "source=admin.x",
            "destination=admin.q",
            "routing_key=k",
        ])
        .await;
    let queues = admin.json(&["list", "queues"]).await;
    assert_eq!(names(&queues), ["admin.limited", "admin.q"]);
    let (_, q) = b.api("GET", "/api/queues/%2F/admin.q", None).await;
    assert_eq!(q["durable"], false);
    let (_, q) = b.api("GET", "/api/queues/%2F/admin.limited", None).await;
    assert_eq!(q["arguments"]["x-max-length"], 2);
    let exchanges = admin.json(&["list", "exchanges", "name", "type"]).await;
    assert!(
        exchanges
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "admin.x" && x["type"] == "direct"),
        "{exchanges}"
    );
    let bindings = admin.json(&["list", "bindings"]).await;
    assert!(
        bindings
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["source"] == "admin.x" && b["routing_key"] == "k"),
        "{bindings}"
    );
    let sorted = admin
        .json(&["list", "exchanges", "--sort", "name", "--sort-reverse"])
        .await;
    assert_eq!(names(&sorted)[0], "amq.topic", "{sorted}");

    // publish, then get (which failed: "count": "1").
    for body in ["one", "two", "three"] {
        admin
            .ok(&[
                "publish",
                "exchange=admin.x",
                "routing_key=k",
                &format!("payload={body}"),
                r#"properties={"delivery_mode": 2, "headers": {"n": 1}}"#,
            ])
            .await;
    }
    let got = admin.json(&["get", "queue=admin.q"]).await;
    assert_eq!(got[0]["payload"], "one", "{got}");
    let got = admin
        .json(&[
            "get",
            "queue=admin.q",
            "count=2",
            "ackmode=ack_requeue_false",
        ])
        .await;
    assert_eq!(got[0]["payload"], "one");
    assert_eq!(got[0]["redelivered"], true, "requeued by the first get");
    assert_eq!(got[1]["payload"], "two");
    assert_eq!(got[0]["properties"]["headers"]["n"], 1);
    let table = admin.ok(&["list", "queues"]).await;
    assert!(
        table.contains("| admin.q ") && table.contains("messages"),
        "{table}"
    );
    admin.ok(&["purge", "queue", "name=admin.q"]).await;
    let (_, q) = b.api("GET", "/api/queues/%2F/admin.q", None).await;
    assert_eq!(q["messages"], 0);

    // Every listing antre has, with a connection and a consumer to list.
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let _consumer = ch
        .basic_consume(
            "admin.limited",
            "admin-consumer",
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let name = connection_name(&b).await;
    for kind in [
        "connections",
        "channels",
        "consumers",
        "users",
        "vhosts",
        "nodes",
        "parameters",
        "vhost_limits",
    ] {
        let listed = admin.json(&["list", kind]).await;
        assert!(listed.is_array(), "{kind}: {listed}");
    }
    let consumers = admin.json(&["list", "consumers"]).await;
    assert_eq!(
        consumers[0]["consumer_tag"], "admin-consumer",
        "{consumers}"
    );
    let overview = admin.json(&["show", "overview"]).await;
    assert_eq!(overview[0]["object_totals"]["consumers"], 1, "{overview}");
    admin
        .ok(&["close", "connection", &format!("name={name}")])
        .await;
    wait_closed(&conn).await;

    // export from this broker, import into a fresh one.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("defs.json");
    let file = file.to_str().unwrap();
    admin.ok(&["export", file]).await;
    let other = TestBroker::start().await;
    let other_admin = Admin {
        script: admin.script.clone(),
        port: other.server.http_addr.unwrap().port(),
    };
    other_admin.ok(&["import", file]).await;
    let (_, queues) = other.api("GET", "/api/queues", None).await;
    assert_eq!(names(&queues), ["admin.limited"], "durable queues move");
    let (status, _) = other.api("GET", "/api/exchanges/%2F/admin.x", None).await;
    assert_eq!(status, 200, "the exchange came along");

    admin
        .ok(&[
            "delete",
            "binding",
            "source=admin.x",
            "destination_type=queue",
            "destination=admin.q",
            "properties_key=k",
        ])
        .await;
    admin.ok(&["delete", "queue", "name=admin.q"]).await;
    admin.ok(&["delete", "exchange", "name=admin.x"]).await;
    let queues = admin.json(&["list", "queues"]).await;
    assert_eq!(names(&queues), ["admin.limited"]);
    admin.ok(&["declare", "vhost", "name=admin-vhost"]).await;
    let vhosts = admin.json(&["list", "vhosts"]).await;
    assert_eq!(names(&vhosts), ["/", "admin-vhost"]);
    admin
        .ok(&["-V", "admin-vhost", "declare", "queue", "name=inside"])
        .await;
    let inside = admin.json(&["-V", "admin-vhost", "list", "queues"]).await;
    assert_eq!(names(&inside), ["inside"]);
    admin.ok(&["delete", "vhost", "name=admin-vhost"]).await;
    let (ok, _, err) = admin
        .try_run(&["declare", "queue", "name=bad", "durable=yes"])
        .await;
    assert!(!ok && err.contains("true or false"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyrabbit2_manages_antre() {
    let probe = run({
        let mut c = Command::new("python3");
        c.args(["-c", "import pyrabbit2"]);
        c
    })
    .await;
    if !probe.0 {
        return missing("pyrabbit2 (pip install pyrabbit2)");
    }
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let _channel = conn.create_channel().await.unwrap();
    let name = connection_name(&b).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/pyrabbit2_session.py"
    );
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(b.server.http_addr.unwrap().to_string())
        .arg(&name);
    let (ok, out, err) = run(cmd).await;
    assert!(ok, "pyrabbit2 session failed:\n{out}\n{err}");
    assert!(out.contains("pyrabbit2: ok"), "{out}");
    wait_closed(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmqadmin_declares_lists_and_deletes_policies() {
    let Some(script) = rabbitmqadmin_script() else {
        return missing("rabbitmqadmin");
    };
    let b = TestBroker::start().await;
    let admin = Admin {
        script,
        port: b.server.http_addr.expect("HTTP on").port(),
    };
    admin
        .ok(&["declare", "queue", "name=orders.eu", "durable=true"])
        .await;
    admin
        .ok(&[
            "declare",
            "policy",
            "name=orders-limit",
            "pattern=^orders\\.",
            r#"definition={"max-length": 100, "overflow": "reject-publish"}"#,
            "priority=7",
            "apply-to=queues",
        ])
        .await;
    admin
        .ok(&[
            "declare",
            "operator_policy",
            "name=cap",
            "pattern=.*",
            r#"definition={"max-length": 10}"#,
        ])
        .await;
    let policies = admin.json(&["list", "policies"]).await;
    assert_eq!(names(&policies), ["orders-limit"]);
    assert_eq!(policies[0]["pattern"], "^orders\\.");
    assert_eq!(policies[0]["priority"], 7);
    assert_eq!(policies[0]["apply-to"], "queues");
    assert_eq!(
        policies[0]["definition"],
        serde_json::json!({"max-length": 100, "overflow": "reject-publish"})
    );
    let ops = admin.json(&["list", "operator_policies"]).await;
    assert_eq!(names(&ops), ["cap"]);
    let (_, q) = b.api("GET", "/api/queues/%2F/orders.eu", None).await;
    assert_eq!(q["policy"], "orders-limit");
    assert_eq!(q["operator_policy"], "cap");
    assert_eq!(
        q["effective_policy_definition"],
        serde_json::json!({"max-length": 10, "overflow": "reject-publish"})
    );
    // A refused policy: the tool shows RabbitMQ's text.
    let (ok, out, err) = admin
        .try_run(&[
            "declare",
            "policy",
            "name=bad",
            "pattern=.*",
            r#"definition={"max-length": -1}"#,
        ])
        .await;
    assert!(!ok);
    assert!(
        format!("{out}{err}").contains("-1 is not a valid maximum length"),
        "{out}{err}"
    );
    admin.ok(&["delete", "policy", "name=orders-limit"]).await;
    admin.ok(&["delete", "operator_policy", "name=cap"]).await;
    assert_eq!(
        admin.json(&["list", "policies"]).await,
        serde_json::json!([])
    );
    let (_, q) = b.api("GET", "/api/queues/%2F/orders.eu", None).await;
    assert_eq!(q["effective_policy_definition"], serde_json::json!({}));
}
