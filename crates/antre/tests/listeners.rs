//! Listener addresses: a list of addresses is served on each (the default
//! is both loopback addresses, so a client resolving `localhost` to ::1
//! first, as Node.js does, connects), and a port in use is a one-line error
//! that says how to pick another, with no backtrace even when
//! RUST_BACKTRACE is set.

use crate::common;

use std::process::Command;

use common::TestBroker;
use lapin::{Connection, ConnectionProperties};

fn ipv6_loopback_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_addresses_serves_amqp_and_http_on_both_loopbacks() {
    if !ipv6_loopback_available() {
        eprintln!("skipping: this machine has no IPv6 loopback");
        return;
    }
    let b = TestBroker::start_with(|c| {
        c.amqp_listen = Some("127.0.0.1:0,[::1]:0".into());
        c.http_listen = Some("127.0.0.1:0, [::1]:0".into());
    })
    .await;
    let amqp = &b.server.amqp_addrs;
    assert_eq!(amqp.len(), 2, "{amqp:?}");
    assert!(amqp[0].is_ipv4() && amqp[1].is_ipv6(), "{amqp:?}");
    assert_eq!(amqp[0].port(), amqp[1].port(), "one port for the list");

    // guest may log in over ::1, a loopback address.
    let uri = format!("amqp://guest:guest@[::1]:{}/%2f", amqp[1].port());
    let conn = common::within("connect over ::1", async {
        Connection::connect(&uri, ConnectionProperties::default())
            .await
            .expect("lapin connects over ::1")
    })
    .await;
    conn.create_channel().await.expect("a channel over ::1");

    let http = &b.server.http_addrs;
    assert_eq!(http.len(), 2, "{http:?}");
    let url = format!("http://[::1]:{}/api/overview", http[1].port());
    let auth = common::basic_auth("guest", "guest");
    let overview: serde_json::Value = tokio::task::spawn_blocking(move || {
        ureq::get(&url)
            .set("Authorization", &auth)
            .call()
            .expect("the API answers over ::1")
            .into_json()
            .expect("JSON")
    })
    .await
    .unwrap();
    let listeners = overview["listeners"].as_array().unwrap();
    let amqp_ips: Vec<&str> = listeners
        .iter()
        .filter(|l| l["protocol"] == "amqp")
        .map(|l| l["ip_address"].as_str().unwrap())
        .collect();
    assert_eq!(amqp_ips, ["127.0.0.1", "::1"], "{overview}");
    assert_eq!(overview["object_totals"]["connections"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_says_which_setting_picks_another_without_a_backtrace() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_antre"));
    cmd.args(["--amqp-listen", &addr.to_string(), "--http-listen", "off"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1");
    let out = common::within(
        "antre to refuse",
        tokio::task::spawn_blocking(move || cmd.output().expect("run antre")),
    )
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("in use"), "{err}");
    assert!(
        err.contains(&format!("--amqp-listen 127.0.0.1:{}", addr.port() + 1)),
        "{err}"
    );
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    drop(taken);
}
