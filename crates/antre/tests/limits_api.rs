//! `/api/vhost-limits` and `/api/user-limits`, their runtime-parameter
//! form, definitions, and the limits enforced on real clients: the shapes,
//! texts and codes are RabbitMQ 3.10.8's (recorded by hand against a live
//! node).

use crate::common;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::json;

#[tokio::test]
async fn vhost_limits_are_set_listed_and_cleared_as_in_rabbitmq() {
    let broker = TestBroker::start().await;
    let (status, body) = broker.api("GET", "/api/vhost-limits", None).await;
    assert_eq!((status, body), (200, json!([])));
    let set = |path: &'static str, value: serde_json::Value| {
        broker.api("PUT", path, Some(json!({ "value": value })))
    };
    assert_eq!(
        set("/api/vhost-limits/%2F/max-connections", json!(2))
            .await
            .0,
        204
    );
    assert_eq!(
        set("/api/vhost-limits/%2F/max-queues", json!(-1)).await.0,
        204
    );
    let expected = json!([{"vhost": "/", "value": {"max-connections": 2, "max-queues": -1}}]);
    assert_eq!(
        broker.api("GET", "/api/vhost-limits", None).await.1,
        expected
    );
    assert_eq!(
        broker.api("GET", "/api/vhost-limits/%2F", None).await.1,
        expected
    );
    let (_, parameters) = broker
        .api("GET", "/api/parameters/vhost-limits", None)
        .await;
    assert_eq!(
        parameters,
        json!([{
            "value": {"max-connections": 2, "max-queues": -1},
            "vhost": "/",
            "component": "vhost-limits",
            "name": "limits"
        }])
    );

    let (status, body) = set("/api/vhost-limits/%2F/max-bogus", json!(5)).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["reason"],
        "Validation failed\n\nUnrecognised terms [{<<\"max-bogus\">>,5}] in limits\n"
    );
    let (status, body) = set("/api/vhost-limits/%2F/max-queues", json!("x")).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["reason"],
        "Validation failed\n\nmax-queues should be a number, actually was <<\"x\">>\n"
    );
    let (status, body) = broker
        .api(
            "PUT",
            "/api/vhost-limits/%2F/max-queues",
            Some(json!({"val": 1})),
        )
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("[{key_missing,value}]"))
    );
    let (status, body) = set("/api/vhost-limits/nope/max-queues", json!(1)).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (404, Some("vhost_not_found"))
    );
    assert_eq!(
        broker.api("GET", "/api/vhost-limits/nope", None).await.0,
        404
    );

    let delete = |path| broker.api("DELETE", path, None);
    assert_eq!(delete("/api/vhost-limits/%2F/max-queues").await.0, 204);
    assert_eq!(
        delete("/api/vhost-limits/%2F/max-queues").await.0,
        204,
        "unset: fine"
    );
    assert_eq!(
        broker.api("GET", "/api/vhost-limits/%2F", None).await.1,
        json!([{"vhost": "/", "value": {"max-connections": 2}}])
    );
    assert_eq!(delete("/api/vhost-limits/%2F/max-connections").await.0, 204);
    assert_eq!(
        broker.api("GET", "/api/vhost-limits", None).await.1,
        json!([])
    );
    assert_eq!(
        broker.api("GET", "/api/vhost-limits/%2F", None).await.1,
        json!([])
    );

    // rabbitmqctl set_vhost_limits sets the whole parameter at once.
    let (status, _) = broker
        .api(
            "PUT",
            "/api/parameters/vhost-limits/%2F/limits",
            Some(json!({"value": {"max-queues": 6}})),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        broker
            .api("GET", "/api/parameters/vhost-limits/%2F/limits", None)
            .await
            .1["value"],
        json!({"max-queues": 6})
    );
    let (status, body) = broker
        .api(
            "PUT",
            "/api/parameters/vhost-limits/%2F/limits",
            Some(json!({"value": 5})),
        )
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("Validation failed\n\nlimits not a list 5\n"))
    );
    assert_eq!(
        delete("/api/parameters/vhost-limits/%2F/limits").await.0,
        204
    );
    assert_eq!(
        broker.api("GET", "/api/vhost-limits", None).await.1,
        json!([])
    );
}

#[tokio::test]
async fn user_limits_are_set_listed_shown_on_the_user_and_cleared() {
    let broker = TestBroker::start().await;
    let bob = json!({"password": "bob", "tags": ""});
    assert_eq!(broker.api("PUT", "/api/users/bob", Some(bob)).await.0, 201);
    assert_eq!(
        broker.api("GET", "/api/user-limits", None).await.1,
        json!([])
    );
    let set = |path: &'static str, value: serde_json::Value| {
        broker.api("PUT", path, Some(json!({ "value": value })))
    };
    assert_eq!(
        set("/api/user-limits/bob/max-channels", json!(2)).await.0,
        204
    );
    assert_eq!(
        set("/api/user-limits/bob/max-connections", json!(-1))
            .await
            .0,
        204
    );
    let expected = json!([{"user": "bob", "value": {"max-channels": 2, "max-connections": -1}}]);
    assert_eq!(
        broker.api("GET", "/api/user-limits", None).await.1,
        expected
    );
    assert_eq!(
        broker.api("GET", "/api/user-limits/bob", None).await.1,
        expected
    );
    assert_eq!(
        broker.api("GET", "/api/users/bob", None).await.1["limits"],
        json!({"max-channels": 2, "max-connections": -1})
    );
    assert_eq!(
        broker.api("GET", "/api/user-limits/guest", None).await.1,
        json!([])
    );
    assert_eq!(
        broker.api("GET", "/api/user-limits/nobody", None).await.0,
        404
    );

    let (status, body) = set("/api/user-limits/bob/max-bogus", json!(2)).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (
            400,
            Some("Unrecognised terms [{<<\"max-bogus\">>,2}] in user-limits")
        )
    );
    let (status, body) = set("/api/user-limits/bob/max-connections", json!("2")).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (
            400,
            Some("max-connections should be a number, actually was <<\"2\">>")
        )
    );
    assert_eq!(
        set("/api/user-limits/nobody/max-channels", json!(2))
            .await
            .0,
        400
    );

    assert_eq!(
        broker
            .api("DELETE", "/api/user-limits/bob/max-connections", None)
            .await
            .0,
        204
    );
    assert_eq!(
        broker.api("GET", "/api/user-limits/bob", None).await.1,
        json!([{"user": "bob", "value": {"max-channels": 2}}])
    );
    // Deleting the user deletes their limits.
    assert_eq!(broker.api("DELETE", "/api/users/bob", None).await.0, 204);
    assert_eq!(
        broker.api("GET", "/api/user-limits", None).await.1,
        json!([])
    );
}

#[tokio::test]
async fn only_administrators_change_limits() {
    let broker = TestBroker::start().await;
    let monitor = json!({"password": "m", "tags": "monitoring"});
    broker.api("PUT", "/api/users/mon", Some(monitor)).await;
    let body = Some(json!({"value": 1}));
    for path in [
        "/api/vhost-limits/%2F/max-queues",
        "/api/user-limits/guest/max-channels",
    ] {
        let (status, _) = broker.api_as(("mon", "m"), "PUT", path, body.clone()).await;
        assert_eq!(status, 401, "{path}");
    }
    assert_eq!(
        broker
            .api_as(("mon", "m"), "GET", "/api/vhost-limits", None)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn limits_are_exported_imported_and_survive_a_restart() {
    let broker = TestBroker::start().await;
    broker
        .api(
            "PUT",
            "/api/users/bob",
            Some(json!({"password": "bob", "tags": ""})),
        )
        .await;
    let set =
        |path: &'static str, value: i64| broker.api("PUT", path, Some(json!({ "value": value })));
    set("/api/vhost-limits/%2F/max-queues", 10).await;
    set("/api/user-limits/bob/max-channels", 3).await;
    let (_, defs) = broker.api("GET", "/api/definitions", None).await;
    assert_eq!(
        defs["parameters"],
        json!([{"value": {"max-queues": 10}, "vhost": "/", "component": "vhost-limits", "name": "limits"}])
    );
    let bob = defs["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "bob")
        .unwrap();
    assert_eq!(bob["limits"], json!({"max-channels": 3}));

    let broker = broker.restart().await;
    assert_eq!(
        broker.api("GET", "/api/vhost-limits", None).await.1,
        json!([{"vhost": "/", "value": {"max-queues": 10}}])
    );
    assert_eq!(
        broker.api("GET", "/api/user-limits/bob", None).await.1,
        json!([{"user": "bob", "value": {"max-channels": 3}}])
    );

    // Into a fresh broker: a file as RabbitMQ 3.10 writes it, plus a vhost
    // with limits in RabbitMQ 3.13's place for them.
    let fresh = TestBroker::start().await;
    let mut file = defs.clone();
    file["vhosts"] = json!([{"name": "/"}, {"name": "eu", "limits": {"max-connections": 4}}]);
    let (status, body) = fresh.api("POST", "/api/definitions", Some(file)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        fresh.api("GET", "/api/vhost-limits", None).await.1,
        json!([
            {"vhost": "/", "value": {"max-queues": 10}},
            {"vhost": "eu", "value": {"max-connections": 4}}
        ])
    );
    assert_eq!(
        fresh.api("GET", "/api/users/bob", None).await.1["limits"],
        json!({"max-channels": 3})
    );
}

#[tokio::test]
async fn an_import_past_max_queues_is_refused_before_anything_changes() {
    let broker = TestBroker::start().await;
    broker
        .api(
            "PUT",
            "/api/vhost-limits/%2F/max-queues",
            Some(json!({"value": 2})),
        )
        .await;
    broker
        .api("PUT", "/api/queues/%2F/existing", Some(json!({})))
        .await;
    let queue = |name: &str| json!({"name": name, "vhost": "/", "durable": true});
    let file = json!({"queues": [queue("existing"), queue("a"), queue("b")]});
    let (status, body) = broker.api("POST", "/api/definitions", Some(file)).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["reason"],
        "Adding 2 queue(s) to virtual host \"/\" would exceed the limit of 2 queue(s).\n\n\
         This virtual host currently has 1 queue(s) defined.\n\nImport aborted!"
    );
    assert_eq!(broker.api("GET", "/api/queues/%2F/a", None).await.0, 404);
}

/// A vhost at its max-queues refuses the next declare with 406 (the
/// channel closes), redeclares still work, and another vhost is fine.
#[tokio::test]
async fn a_vhost_at_max_queues_refuses_the_next_declare_while_another_vhost_is_fine() {
    let broker = TestBroker::start().await;
    broker.api("PUT", "/api/vhosts/other", None).await;
    broker
        .api(
            "PUT",
            "/api/vhost-limits/%2F/max-queues",
            Some(json!({"value": 2})),
        )
        .await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "one").await;
    declare(&ch, "two").await;
    declare(&ch, "one").await;
    let err = ch
        .queue_declare(
            "three",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("the third queue is over the limit");
    assert_eq!(reply_code(&err), Some(406), "{err}");
    assert!(
        err.to_string()
            .contains("cannot declare queue 'three': queue limit in vhost '/' (2) is reached"),
        "{err}"
    );
    // The connection stays: only the channel closed.
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(ready_count(&ch, "one").await, 0);

    let other = lapin::Connection::connect(
        &format!("amqp://guest:guest@{}/other", broker.addr()),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let och = other.create_channel().await.unwrap();
    for name in ["one", "two", "three"] {
        declare(&och, name).await;
    }
    // The same refusal over the management API.
    let (status, body) = broker
        .api("PUT", "/api/queues/%2F/three", Some(json!({})))
        .await;
    assert_eq!(status, 400, "{body}");
}

/// A vhost at its max-connections refuses the next connection.open with
/// 530; the connection that is in keeps publishing.
#[tokio::test]
async fn a_vhost_at_max_connections_refuses_the_next_client_and_keeps_the_first() {
    let broker = TestBroker::start().await;
    broker
        .api(
            "PUT",
            "/api/vhost-limits/%2F/max-connections",
            Some(json!({"value": 1})),
        )
        .await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "kept").await;
    let refused = RawClient::open_as(broker.addr(), "guest", "guest", "/")
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.reply_code, 530);
    assert_eq!(
        refused.reply_text.as_str(),
        "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (1) is reached"
    );
    publish_confirmed(&ch, "", "kept", b"still served").await;
    assert_eq!(ready_count(&ch, "kept").await, 1);
}

/// A user at their max-channels: the next channel.open, on any of their
/// connections, closes that connection with 530; other users are fine.
#[tokio::test]
async fn a_user_at_max_channels_cannot_open_another() {
    let broker = TestBroker::start().await;
    broker
        .api(
            "PUT",
            "/api/users/bob",
            Some(json!({"password": "bob", "tags": ""})),
        )
        .await;
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    broker
        .api("PUT", "/api/permissions/%2F/bob", Some(all))
        .await;
    broker
        .api(
            "PUT",
            "/api/user-limits/bob/max-channels",
            Some(json!({"value": 1})),
        )
        .await;
    let mut bob = RawClient::open_as(broker.addr(), "bob", "bob", "/")
        .await
        .unwrap();
    bob.open_channel(1).await;
    let mut again = RawClient::open_as(broker.addr(), "bob", "bob", "/")
        .await
        .unwrap();
    again
        .send(1, antre_amqp::method::ChannelOpen::default())
        .await;
    let close = again.expect_connection_close(530).await;
    assert_eq!(
        close.reply_text.as_str(),
        "NOT_ALLOWED - number of channels opened for user 'bob' has reached the maximum allowed user limit of (1)"
    );
    let guest = broker.lapin().await;
    guest.create_channel().await.expect("guest has no limit");
}
