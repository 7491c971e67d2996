//! pika (Python) over amqps, as its users configure it:
//! `ssl_options=pika.SSLOptions(ssl.create_default_context(cafile=...))`,
//! with `ExternalCredentials` for SASL EXTERNAL. Without pika the test
//! says so and passes, except under CI (`CI=true`), where .ci/run installs
//! it and a missing one fails.

use crate::common;

use std::time::Duration;

use common::pki::{Ca, TlsFiles};
use common::TestBroker;
use serde_json::Value;

/// Runs each scenario against the amqps port and prints one JSON object
/// per scenario: what happened, and the error if one was raised.
const SCRIPT: &str = r#"
import json, ssl, sys
import pika

port, ca, client_cert, client_key, other_ca = sys.argv[1:6]

def context(cafile, cert=None):
    ctx = ssl.create_default_context(cafile=cafile)
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx

def attempt(name, ctx, credentials):
    params = pika.ConnectionParameters(
        "127.0.0.1", int(port), "/", credentials,
        ssl_options=pika.SSLOptions(ctx, "localhost"),
        connection_attempts=1, socket_timeout=10)
    try:
        conn = pika.BlockingConnection(params)
    except Exception as e:
        print(json.dumps({"scenario": name, "ok": False, "error": f"{type(e).__name__}: {e}"}))
        return
    ch = conn.channel()
    ch.queue_declare(name)
    ch.basic_publish("", name, b"hello over tls")
    body = None
    for _ in range(100):
        _, _, body = ch.basic_get(name, auto_ack=True)
        if body is not None:
            break
    conn.close()
    print(json.dumps({"scenario": name, "ok": True, "body": body.decode() if body else None}))

mine = (client_cert, client_key)
attempt("plain-login", context(ca, mine), pika.PlainCredentials("guest", "guest"))
attempt("external", context(ca, mine), pika.credentials.ExternalCredentials())
attempt("no-client-cert", context(ca), pika.PlainCredentials("guest", "guest"))
attempt("untrusted-server", context(other_ca, mine), pika.PlainCredentials("guest", "guest"))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_connects_over_tls_and_logs_in_with_external() {
    if !common::python::module_or_skip("pika") {
        return;
    }
    let ca = Ca::new("antre test CA");
    let other = Ca::new("some other CA");
    let files = TlsFiles::new(&ca.server("antre"), &ca);
    let client = ca.client("guest");
    let client_cert = files.dir.path().join("client.pem");
    let client_key = files.dir.path().join("client.key");
    let other_ca = files.dir.path().join("other-ca.pem");
    std::fs::write(&client_cert, &client.cert_pem).unwrap();
    std::fs::write(&client_key, &client.key_pem).unwrap();
    std::fs::write(&other_ca, &other.pem).unwrap();
    let settings = files.settings(true, true);
    let b = TestBroker::start_with(|c| {
        c.amqps_listen = Some("127.0.0.1:0".into());
        c.tls = Some(settings);
        c.tls_reload_interval = Duration::ZERO;
    })
    .await;
    let port = b.server.amqps_addr.unwrap().port().to_string();
    let files_args =
        [&files.ca, &client_cert, &client_key, &other_ca].map(|p| p.display().to_string());
    let args = ["-c".to_owned(), SCRIPT.to_owned(), port]
        .into_iter()
        .chain(files_args)
        .collect();
    let out = common::python::run("pika", args, common::WAIT).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}{stdout}");
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let result = |name: &str| {
        results
            .iter()
            .find(|r| r["scenario"] == name)
            .unwrap_or_else(|| panic!("no result for {name}: {stdout}{stderr}"))
            .clone()
    };
    for name in ["plain-login", "external"] {
        let r = result(name);
        assert_eq!(r["ok"], true, "{name}: {r}");
        assert_eq!(r["body"], "hello over tls", "{name}");
    }
    // verify_peer: without a client certificate the handshake fails.
    assert_eq!(result("no-client-cert")["ok"], false);
    // pika checks our certificate against its CA.
    let untrusted = result("untrusted-server");
    assert_eq!(untrusted["ok"], false);
    assert!(
        untrusted["error"]
            .as_str()
            .unwrap()
            .contains("CERTIFICATE_VERIFY_FAILED"),
        "{untrusted}"
    );
}
