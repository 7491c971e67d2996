//! The management API's access rules per tag, its users and permissions
//! endpoints, the loopback-only rule for `guest`, and definitions with
//! users and permissions. Reasons and status codes were checked against
//! RabbitMQ 3.10.8's management plugin on a side port.

use crate::common;

use common::{RawClient, TestBroker};
use serde_json::{json, Value};

async fn user(b: &TestBroker, name: &str, tags: &str) {
    let body = json!({ "password": format!("{name}pw"), "tags": tags });
    let (status, reply) = b
        .api("PUT", &format!("/api/users/{name}"), Some(body))
        .await;
    assert_eq!(status, 201, "{reply}");
}

async fn permit(b: &TestBroker, vhost: &str, name: &str, configure: &str, write: &str, read: &str) {
    let body = json!({ "configure": configure, "write": write, "read": read });
    let path = format!("/api/permissions/{vhost}/{name}");
    let (status, reply) = b.api("PUT", &path, Some(body)).await;
    assert!(status == 201 || status == 204, "{reply}");
}

async fn as_user(
    b: &TestBroker,
    name: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let password = format!("{name}pw");
    b.api_as((name, &password), method, path, body).await
}

fn names(list: &Value, field: &str) -> Vec<String> {
    let mut out: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|i| i[field].as_str().unwrap_or_default().to_owned())
        .collect();
    out.sort();
    out
}

fn not_authorised(reason: &str) -> (u16, Value) {
    (401, json!({ "error": "not_authorised", "reason": reason }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_each_tag_sees_and_may_change() {
    let b = TestBroker::start().await;
    b.api("PUT", "/api/vhosts/other", None).await;
    b.api("PUT", "/api/queues/%2F/wq", None).await;
    b.api("PUT", "/api/queues/other/oq", None).await;
    user(&b, "plain", "").await;
    permit(&b, "%2F", "plain", ".*", ".*", ".*").await;
    user(&b, "mgmt", "management").await;
    permit(&b, "%2F", "mgmt", "^cfg", "^cfg", "^cfg").await;
    user(&b, "mon", "monitoring").await;
    user(&b, "pol", "policymaker").await;

    let not_mgmt = not_authorised("Not management user");
    assert_eq!(
        as_user(&b, "plain", "GET", "/api/overview", None).await,
        not_mgmt
    );
    let (status, me) = as_user(&b, "mgmt", "GET", "/api/whoami", None).await;
    assert_eq!(
        (status, me),
        (200, json!({ "name": "mgmt", "tags": ["management"] }))
    );

    for path in [
        "/api/users",
        "/api/permissions",
        "/api/users/mgmt/permissions",
        "/api/definitions",
        "/api/vhosts/other",
        "/api/topic-permissions",
    ] {
        for who in ["mgmt", "mon", "pol"] {
            let got = as_user(&b, who, "GET", path, None).await;
            assert_eq!(
                got,
                not_authorised("Not administrator user"),
                "{who} {path}"
            );
        }
    }
    let not_monitor = not_authorised("Not monitor user");
    assert_eq!(
        as_user(&b, "mgmt", "GET", "/api/nodes", None).await,
        not_monitor
    );
    assert_eq!(as_user(&b, "mon", "GET", "/api/nodes", None).await.0, 200);

    // Listings: a management user sees its vhosts; a monitor sees every
    // vhost's name, but objects only where it has permissions.
    let (_, vhosts) = as_user(&b, "mgmt", "GET", "/api/vhosts", None).await;
    assert_eq!(names(&vhosts, "name"), ["/"]);
    let (_, vhosts) = as_user(&b, "mon", "GET", "/api/vhosts", None).await;
    assert_eq!(names(&vhosts, "name"), ["/", "other"]);
    let (_, queues) = as_user(&b, "mgmt", "GET", "/api/queues", None).await;
    assert_eq!(names(&queues, "name"), ["wq"]);
    let (_, queues) = as_user(&b, "mon", "GET", "/api/queues", None).await;
    assert!(names(&queues, "name").is_empty(), "{queues}");
    let (_, queues) = b.api("GET", "/api/queues", None).await;
    assert_eq!(names(&queues, "name"), ["oq", "wq"]);
    let not_vhost = not_authorised("User not authorised to access virtual host");
    assert_eq!(
        as_user(&b, "mgmt", "GET", "/api/queues/other", None).await,
        not_vhost
    );
    assert_eq!(
        as_user(&b, "mgmt", "GET", "/api/exchanges/other", None).await,
        not_vhost
    );

    // Changes follow the user's AMQP permissions.
    let refused = not_authorised("Access refused.");
    assert_eq!(
        as_user(&b, "mgmt", "PUT", "/api/queues/%2F/q", None).await,
        refused
    );
    assert_eq!(
        as_user(&b, "mgmt", "PUT", "/api/queues/%2F/cfg.q", None)
            .await
            .0,
        201
    );
    assert_eq!(
        as_user(&b, "mgmt", "DELETE", "/api/queues/%2F/wq", None).await,
        refused
    );
    assert_eq!(
        as_user(&b, "mgmt", "DELETE", "/api/queues/%2F/wq/contents", None).await,
        refused
    );
    let typed = json!({ "type": "direct" });
    assert_eq!(
        as_user(
            &b,
            "mgmt",
            "PUT",
            "/api/exchanges/%2F/x",
            Some(typed.clone())
        )
        .await,
        refused
    );
    assert_eq!(
        as_user(&b, "mgmt", "PUT", "/api/exchanges/%2F/cfg.x", Some(typed))
            .await
            .0,
        201
    );
    let bind = as_user(
        &b,
        "mgmt",
        "POST",
        "/api/bindings/%2F/e/amq.direct/q/cfg.q",
        Some(json!({})),
    )
    .await;
    assert_eq!(bind, refused);
    let get = json!({ "count": 1, "ackmode": "ack_requeue_true", "encoding": "auto" });
    let got = as_user(&b, "mgmt", "POST", "/api/queues/%2F/wq/get", Some(get)).await;
    assert_eq!(
        got,
        not_authorised(
            "ACCESS_REFUSED - access to queue 'wq' in vhost '/' refused for user 'mgmt'"
        )
    );
    let message = json!({ "routing_key": "k", "payload": "x", "payload_encoding": "string", "properties": {} });
    let published = as_user(
        &b,
        "mgmt",
        "POST",
        "/api/exchanges/%2F/amq.direct/publish",
        Some(message),
    )
    .await;
    assert_eq!(
        published,
        (
            400,
            json!({ "error": "bad_request", "reason": "403 ACCESS_REFUSED - access to exchange 'amq.direct' in vhost '/' refused for user 'mgmt'" })
        )
    );

    // Connections: a management user sees and closes only its own; a
    // monitor sees all.
    let _guest = RawClient::open_as(b.addr(), "guest", "guest", "/")
        .await
        .unwrap();
    let _mine = RawClient::open_as(b.addr(), "mgmt", "mgmtpw", "/")
        .await
        .unwrap();
    let all = common::within("both connections listed", async {
        loop {
            let (_, all) = b.api("GET", "/api/connections", None).await;
            if all.as_array().is_some_and(|a| a.len() == 2) {
                return all;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let (_, visible) = as_user(&b, "mgmt", "GET", "/api/connections", None).await;
    assert_eq!(names(&visible, "user"), ["mgmt"]);
    let (_, visible) = as_user(&b, "mon", "GET", "/api/connections", None).await;
    assert_eq!(names(&visible, "user"), ["guest", "mgmt"]);
    let guests = all
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["user"] == "guest")
        .unwrap();
    let path = format!(
        "/api/connections/{}",
        guests["name"]
            .as_str()
            .unwrap()
            .replace(' ', "%20")
            .replace('>', "%3E")
    );
    let not_object = not_authorised("User not authorised to access object");
    assert_eq!(as_user(&b, "mgmt", "GET", &path, None).await, not_object);
    assert_eq!(as_user(&b, "mon", "GET", &path, None).await.0, 200);
    assert_eq!(as_user(&b, "mon", "DELETE", &path, None).await, not_object);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_permissions_endpoints_have_rabbitmqs_shape() {
    let b = TestBroker::start().await;
    let (status, body) = b
        .api("PUT", "/api/users/x", Some(json!({ "password": "p" })))
        .await;
    assert_eq!(
        (status, body["reason"].clone()),
        (400, json!("tags_not_present"))
    );
    let both = json!({ "password": "p", "password_hash": "qBOK", "tags": "" });
    let (status, body) = b.api("PUT", "/api/users/x", Some(both)).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (400, json!("both_password_and_password_hash_are_provided"))
    );
    // A hash made by RabbitMQ 3.10.8 for the password "bobpw".
    let hashed = json!({
        "password_hash": "qBOKyyEgGOln0IOsL+VJWaLlEA3wqkrY50y7EGPxMdHUjRo7",
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": "monitoring,management",
    });
    assert_eq!(b.api("PUT", "/api/users/bob", Some(hashed)).await.0, 201);
    let (status, bob) = b.api("GET", "/api/users/bob", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        bob,
        json!({
            "name": "bob",
            "password_hash": "qBOKyyEgGOln0IOsL+VJWaLlEA3wqkrY50y7EGPxMdHUjRo7",
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": ["monitoring", "management"],
            "limits": {},
        })
    );
    assert_eq!(
        b.api_as(("bob", "bobpw"), "GET", "/api/whoami", None)
            .await
            .0,
        200
    );
    let (_, without) = b.api("GET", "/api/users/without-permissions", None).await;
    assert_eq!(names(&without, "name"), ["bob"]);

    let unknown = (
        400,
        json!({ "error": "bad_request", "reason": "vhost_or_user_not_found" }),
    );
    let perms = json!({ "configure": ".*", "write": ".*", "read": ".*" });
    assert_eq!(
        b.api("PUT", "/api/permissions/%2F/nobody", Some(perms.clone()))
            .await,
        unknown
    );
    assert_eq!(
        b.api("PUT", "/api/permissions/nope/bob", Some(perms.clone()))
            .await,
        unknown
    );
    let partial = b
        .api(
            "PUT",
            "/api/permissions/%2F/bob",
            Some(json!({ "configure": ".*" })),
        )
        .await;
    assert_eq!(
        partial,
        (
            400,
            json!({ "error": "bad_request", "reason": "[{key_missing,write},{key_missing,read}]" })
        )
    );
    let bad = json!({ "configure": "(", "write": "", "read": "" });
    assert_eq!(
        b.api("PUT", "/api/permissions/%2F/bob", Some(bad)).await.0,
        400
    );
    assert_eq!(b.api("GET", "/api/permissions/%2F/bob", None).await.0, 404);
    assert_eq!(
        b.api("PUT", "/api/permissions/%2F/bob", Some(perms.clone()))
            .await
            .0,
        201
    );
    assert_eq!(
        b.api("PUT", "/api/permissions/%2F/bob", Some(perms))
            .await
            .0,
        204
    );
    let expected =
        json!({ "user": "bob", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*" });
    assert_eq!(
        b.api("GET", "/api/permissions/%2F/bob", None).await,
        (200, expected.clone())
    );
    assert_eq!(
        b.api("GET", "/api/users/bob/permissions", None).await.1,
        json!([expected])
    );
    let (_, of_vhost) = b.api("GET", "/api/vhosts/%2F/permissions", None).await;
    assert_eq!(names(&of_vhost, "user"), ["bob", "guest"]);
    let (_, all) = b.api("GET", "/api/permissions", None).await;
    assert_eq!(names(&all, "user"), ["bob", "guest"]);
    assert_eq!(
        b.api("DELETE", "/api/permissions/%2F/bob", None).await.0,
        204
    );
    assert_eq!(
        b.api("DELETE", "/api/permissions/%2F/bob", None).await.0,
        404
    );

    // A vhost created over the API gives its creator every permission.
    assert_eq!(b.api("PUT", "/api/vhosts/fresh", None).await.0, 201);
    let (status, _) = b.api("GET", "/api/permissions/fresh/guest", None).await;
    assert_eq!(status, 200);

    let bulk = json!({ "users": ["bob"] });
    assert_eq!(
        b.api("POST", "/api/users/bulk-delete", Some(bulk)).await.0,
        204
    );
    assert_eq!(b.api("GET", "/api/users/bob", None).await.0, 404);
    assert_eq!(b.api("DELETE", "/api/users/bob", None).await.0, 404);
}

/// The machine's address on its default route, if it has one: connecting
/// through it is connecting from a non-loopback address. (A UDP connect
/// only picks the route; nothing is sent.)
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.254.254.254:1").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Issue #11: re-creating or re-passwording guest over the API dropped its
/// loopback-only rule. It is now the `loopback_users` setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_stays_loopback_only_when_re_created_or_re_passworded() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped: this machine has no non-loopback address to connect from");
        return;
    };
    let b = TestBroker::start_with(|c| c.amqp_listen = Some("0.0.0.0:0".into())).await;
    let remote = std::net::SocketAddr::new(ip, b.addr().port());
    let login = |password: &'static str| async move {
        RawClient::open_as(remote, "guest", password, "/")
            .await
            .map(drop)
            .map_err(|c| (c.reply_code, c.reply_text))
    };
    let refused = Err((
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
            .to_owned(),
    ));
    assert_eq!(login("guest").await, refused);
    let again = json!({ "password": "guest", "tags": "administrator" });
    assert_eq!(b.api("PUT", "/api/users/guest", Some(again)).await.0, 204);
    assert_eq!(login("guest").await, refused, "re-created");
    let repassword = json!({ "password": "other", "tags": "administrator" });
    b.api("PUT", "/api/users/guest", Some(repassword)).await;
    assert_eq!(login("other").await, refused, "re-passworded");
    assert!(
        RawClient::open_as(b.addr(), "guest", "other", "/")
            .await
            .is_ok(),
        "still welcome from loopback"
    );

    let open = TestBroker::start_with(|c| {
        c.amqp_listen = Some("0.0.0.0:0".into());
        c.loopback_users = Vec::new();
    })
    .await;
    let remote = std::net::SocketAddr::new(ip, open.addr().port());
    assert!(
        RawClient::open_as(remote, "guest", "guest", "/")
            .await
            .is_ok(),
        "loopback_users = [] lets guest in from anywhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_carry_users_and_permissions_and_they_survive_a_restart() {
    let a = TestBroker::start().await;
    a.api("PUT", "/api/vhosts/eu", None).await;
    user(&a, "bob", "management").await;
    permit(&a, "eu", "bob", "^c", "^w", "^r").await;
    let topic = json!({ "exchange": "amq.topic", "write": "^a", "read": "^b" });
    a.api("PUT", "/api/topic-permissions/eu/bob", Some(topic))
        .await;
    let (_, exported) = a.api("GET", "/api/definitions", None).await;
    assert_eq!(names(&exported["users"], "name"), ["bob", "guest"]);
    let bob = exported["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "bob")
        .unwrap()
        .clone();
    assert_eq!(bob["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert_eq!(bob["tags"], json!(["management"]));
    assert!(exported["permissions"].as_array().unwrap().contains(
        &json!({ "user": "bob", "vhost": "eu", "configure": "^c", "write": "^w", "read": "^r" })
    ));
    assert_eq!(
        exported["topic_permissions"],
        json!([{ "user": "bob", "vhost": "eu", "exchange": "amq.topic", "write": "^a", "read": "^b" }])
    );

    let b = TestBroker::start().await;
    let (status, body) = b
        .api("POST", "/api/definitions", Some(exported.clone()))
        .await;
    assert_eq!(status, 201, "{body}");
    let b = b.restart().await;
    assert!(
        RawClient::open_as(b.addr(), "bob", "bobpw", "eu")
            .await
            .is_ok(),
        "same password"
    );
    let (_, again) = b.api("GET", "/api/definitions", None).await;
    for section in ["users", "permissions", "topic_permissions", "vhosts"] {
        assert_eq!(again[section], exported[section], "{section}");
    }
}
