//! AMQP over TLS (amqps) and HTTPS with certificates made in each test:
//! lapin and a raw rustls client connect, SASL EXTERNAL logs in as a client
//! certificate's CN, client certificates are verified against the CA,
//! certificates reload without a restart while open connections stay, and
//! a bad certificate stops the start with a message naming the file.
//! pika's half is in tls_pika.rs.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use antre_amqp::{decode_frame, Frame, Method, PROTOCOL_HEADER};
use bytes::BytesMut;
use common::pki::{self, Ca, Leaf, TlsFiles};
use common::{within, TestBroker};
use lapin::options::*;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A broker serving amqp and http as usual plus amqps and https with
/// `files`; `client_ca` verifies client certificates against the CA file.
async fn tls_broker(files: &TlsFiles, client_ca: bool, verify_peer: bool) -> TestBroker {
    let settings = files.settings(client_ca, verify_peer);
    TestBroker::start_with(|c| {
        c.amqps_listen = Some("127.0.0.1:0".into());
        c.https_listen = Some("127.0.0.1:0".into());
        c.tls = Some(settings);
        c.tls_reload_interval = Duration::ZERO;
    })
    .await
}

fn amqps_addr(b: &TestBroker) -> SocketAddr {
    b.server.amqps_addr.expect("amqps is on")
}

/// lapin over amqps, trusting `ca`, with a client certificate if given;
/// EXTERNAL logs in with it, otherwise guest/guest with PLAIN.
async fn lapin_tls(
    addr: SocketAddr,
    ca: &Ca,
    identity: Option<&Leaf>,
    external: bool,
) -> lapin::Result<Connection> {
    // lapin's TLS connector asks rustls for the process's provider; with
    // more than one compiled in (the stream client's tokio-rustls brings
    // aws-lc-rs) none is chosen, so name ring, which antre uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let uri = if external {
        format!("amqps://{addr}/%2f?auth_mechanism=external")
    } else {
        format!("amqps://guest:guest@{addr}/%2f")
    };
    let tls = OwnedTLSConfig {
        identity: identity.map(|leaf| OwnedIdentity {
            der: leaf.pkcs12(),
            password: "pw".into(),
        }),
        cert_chain: Some(ca.pem.clone()),
    };
    within(
        "a lapin connection",
        Connection::connect_with_config(&uri, ConnectionProperties::default(), tls),
    )
    .await
}

/// Declares a queue, publishes to it and gets the message back.
async fn round_trip(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(queue, QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
    common::publish_confirmed(&ch, "", queue, b"over tls").await;
    let got = ch
        .basic_get(queue, BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(got.delivery.data, b"over tls");
    ch.close(200, "bye").await.expect("close channel");
}

/// Sends the protocol header and reads the server's first frame: the
/// mechanisms of connection.start, or the error that ended the connection
/// (a refused client certificate shows here under TLS 1.3).
async fn mechanisms<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> std::io::Result<String> {
    stream.write_all(&PROTOCOL_HEADER).await?;
    stream.flush().await?;
    let mut buf = BytesMut::new();
    loop {
        if let Some(frame) = decode_frame(&mut buf, 1 << 20).expect("a valid frame") {
            let Frame::Method {
                method: Method::ConnectionStart(start),
                ..
            } = frame
            else {
                panic!("expected connection.start, got {frame:?}");
            };
            return Ok(String::from_utf8_lossy(&start.mechanisms).into_owned());
        }
        if within("a frame", stream.read_buf(&mut buf)).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// The connection objects of the management API.
async fn connections(b: &TestBroker) -> Vec<Value> {
    let (status, list) = b.api("GET", "/api/connections", None).await;
    assert_eq!(status, 200);
    list.as_array().expect("a list").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_over_amqps_and_the_api_shows_the_tls_session() {
    let ca = Ca::new("antre test CA");
    let files = TlsFiles::new(&ca.server("antre"), &ca);
    let b = tls_broker(&files, false, false).await;
    let tls = lapin_tls(amqps_addr(&b), &ca, None, false)
        .await
        .expect("lapin connects over TLS");
    round_trip(&tls, "tls-q").await;
    let plain = b.lapin().await;
    let conns = within("both connections listed", async {
        loop {
            let conns = connections(&b).await;
            if conns.len() == 2 {
                return conns;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (secure, clear): (Vec<&Value>, Vec<&Value>) = conns.iter().partition(|c| c["ssl"] == true);
    let (secure, clear) = (secure[0], clear[0]);
    assert_eq!(secure["port"], amqps_addr(&b).port());
    assert_eq!(secure["ssl_protocol"], "tlsv1.3");
    assert_eq!(secure["ssl_cipher"], "aes_256_gcm");
    assert_eq!(secure["ssl_key_exchange"], "any");
    assert_eq!(secure["ssl_hash"], "aead");
    assert_eq!(
        secure["peer_cert_subject"],
        Value::Null,
        "no client certificate"
    );
    assert_eq!(secure["auth_mechanism"], "PLAIN");
    assert_eq!(clear["ssl"], false);
    for field in [
        "ssl_protocol",
        "ssl_cipher",
        "peer_cert_subject",
        "peer_cert_issuer",
    ] {
        assert_eq!(clear[field], Value::Null, "{field} of a plain connection");
    }
    let (_, overview) = b.api("GET", "/api/overview", None).await;
    let protocols: Vec<&str> = overview["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(protocols, ["amqp", "amqp/ssl", "http", "https"]);
    tls.close(200, "bye").await.unwrap();
    plain.close(200, "bye").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_logs_in_as_the_client_certificate_common_name() {
    let ca = Ca::new("antre test CA");
    let files = TlsFiles::new(&ca.server("antre"), &ca);
    let b = tls_broker(&files, true, true).await;
    let client = ca.client("guest");
    let conn = lapin_tls(amqps_addr(&b), &ca, Some(&client), true)
        .await
        .expect("EXTERNAL login as the certificate's CN");
    round_trip(&conn, "external-q").await;
    let conns = connections(&b).await;
    let c = &conns[0];
    assert_eq!(c["user"], "guest");
    assert_eq!(c["auth_mechanism"], "EXTERNAL");
    assert_eq!(c["peer_cert_subject"], "CN=guest,O=acme");
    assert_eq!(c["peer_cert_issuer"], "CN=antre test CA");
    assert_eq!(
        c["peer_cert_validity"],
        "1975-01-01T00:00:00Z - 4096-01-01T00:00:00Z"
    );
    conn.close(200, "bye").await.unwrap();

    // A certificate whose CN is no user: the TLS handshake passes, the
    // login does not.
    let stranger = ca.client("nobody");
    let refused = lapin_tls(amqps_addr(&b), &ca, Some(&stranger), true).await;
    let err = refused.expect_err("no such user");
    assert!(format!("{err}").contains("ACCESS_REFUSED"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_is_offered_only_where_client_certificates_are_verified() {
    let ca = Ca::new("antre test CA");
    let files = TlsFiles::new(&ca.server("antre"), &ca);
    let client = ca.client("guest");

    // No CA: client certificates are not asked for, EXTERNAL not offered.
    let b = tls_broker(&files, false, false).await;
    let mut s = pki::connect(amqps_addr(&b), pki::client_config(&ca, None))
        .await
        .unwrap();
    assert_eq!(mechanisms(&mut s).await.unwrap(), "PLAIN AMQPLAIN");
    let mut raw = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    assert_eq!(mechanisms(&mut raw).await.unwrap(), "PLAIN AMQPLAIN");
    b.server.shutdown().await;

    // A CA without verify_peer: a certificate is optional; EXTERNAL is
    // offered either way (and refused without one), as RabbitMQ does.
    let b = tls_broker(&files, true, false).await;
    for identity in [None, Some(&client)] {
        let mut s = pki::connect(amqps_addr(&b), pki::client_config(&ca, identity))
            .await
            .unwrap();
        assert_eq!(mechanisms(&mut s).await.unwrap(), "PLAIN AMQPLAIN EXTERNAL");
    }
    let mut raw = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    assert_eq!(
        mechanisms(&mut raw).await.unwrap(),
        "PLAIN AMQPLAIN",
        "plain AMQP"
    );
    let no_cert = lapin_tls(amqps_addr(&b), &ca, None, true).await;
    let err = no_cert.expect_err("EXTERNAL without a certificate");
    assert!(format!("{err}").contains("ACCESS_REFUSED"), "{err}");
    let with_password = lapin_tls(amqps_addr(&b), &ca, None, false)
        .await
        .expect("PLAIN still works without a certificate");
    with_password.close(200, "bye").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_peer_refuses_clients_without_a_certificate_from_the_ca() {
    let ca = Ca::new("antre test CA");
    let other = Ca::new("some other CA");
    let files = TlsFiles::new(&ca.server("antre"), &ca);
    let b = tls_broker(&files, true, true).await;
    let addr = amqps_addr(&b);

    let good = ca.client("guest");
    let mut s = pki::connect(addr, pki::client_config(&ca, Some(&good)))
        .await
        .unwrap();
    assert!(
        mechanisms(&mut s).await.is_ok(),
        "a certificate from the CA"
    );

    let forged = other.client("guest");
    for (what, identity) in [("no certificate", None), ("another CA's", Some(&forged))] {
        let attempt = async {
            let mut s = pki::connect(addr, pki::client_config(&ca, identity)).await?;
            mechanisms(&mut s).await
        };
        let result = attempt.await;
        assert!(result.is_err(), "{what}: refused, got {result:?}");
    }
    let refused = lapin_tls(addr, &ca, Some(&forged), true).await;
    assert!(refused.is_err(), "lapin with another CA's certificate");

    // The client checks us too: a client trusting another CA refuses.
    let distrust = pki::connect(addr, pki::client_config(&other, Some(&good))).await;
    assert!(distrust.is_err(), "our certificate is not from their CA");
    let refused = lapin_tls(addr, &other, Some(&good), true).await;
    assert!(refused.is_err(), "lapin trusting another CA");

    // HTTPS asks for no client certificate, even with verify_peer.
    let (status, _) = https_get(b.server.https_addr.unwrap(), &ca, "/api/overview").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_is_accepted() {
    let ca = Ca::new("antre test CA");
    let files = TlsFiles::new(&ca.server("antre"), &ca);
    let b = tls_broker(&files, false, false).await;
    let config = pki::client_config_with(&ca, None, &[&rustls::version::TLS12]);
    let mut s = pki::connect(amqps_addr(&b), config).await.unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(mechanisms(&mut s).await.unwrap(), "PLAIN AMQPLAIN");
}

/// GET over HTTPS as guest; the status and the JSON body.
async fn https_get(addr: SocketAddr, ca: &Ca, path: &str) -> (u16, Value) {
    let mut s = pki::connect(addr, pki::client_config(ca, None))
        .await
        .expect("HTTPS handshake");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        common::basic_auth("guest", "guest")
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // The server closes after the response; whether it sends close_notify
    // first is not what this test is about.
    let _ = within("the response", s.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_is_served_over_https() {
    let ca = Ca::new("antre test CA");
    let files = TlsFiles::new(&ca.server("antre"), &ca);
    let b = TestBroker::start_with(|c| {
        c.http_listen = None;
        c.https_listen = Some("127.0.0.1:0".into());
        c.tls = Some(files.settings(false, false));
    })
    .await;
    assert_eq!(b.server.http_addr, None, "plain HTTP is off");
    let addr = b.server.https_addr.expect("https is on");
    let (status, overview) = https_get(addr, &ca, "/api/overview").await;
    assert_eq!(status, 200);
    assert_eq!(overview["listeners"][1]["protocol"], "https");
    assert_eq!(overview["listeners"][1]["port"], addr.port());
    let (status, _) = https_get(addr, &ca, "/api/whoami").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_amqp_can_be_turned_off() {
    let ca = Ca::new("antre test CA");
    let files = TlsFiles::new(&ca.server("antre"), &ca);
    let b = TestBroker::start_with(|c| {
        c.amqp_listen = None;
        c.amqps_listen = Some("127.0.0.1:0".into());
        c.tls = Some(files.settings(false, false));
    })
    .await;
    assert_eq!(b.server.amqp_addr, None);
    let conn = lapin_tls(amqps_addr(&b), &ca, None, false).await.unwrap();
    round_trip(&conn, "only-tls").await;
    conn.close(200, "bye").await.unwrap();
}

/// The certificate a new amqps connection is served.
async fn served_certificate(addr: SocketAddr, ca: &Ca) -> Vec<u8> {
    let s = pki::connect(addr, pki::client_config(ca, None))
        .await
        .expect("TLS handshake");
    pki::server_certificate(&s).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_new_connections_the_new_certificate_and_keeps_open_ones() {
    let ca = Ca::new("antre test CA");
    let first = ca.server("antre-1");
    let files = TlsFiles::new(&first, &ca);
    let b = tls_broker(&files, false, false).await;
    let addr = amqps_addr(&b);
    assert_eq!(served_certificate(addr, &ca).await, first.der.to_vec());
    let open = lapin_tls(addr, &ca, None, false).await.unwrap();

    let second = ca.server("antre-2");
    files.replace(&second, &ca);
    assert_eq!(
        served_certificate(addr, &ca).await,
        first.der.to_vec(),
        "nothing changes before the reload"
    );
    b.server.reload_tls().expect("the new files load");
    assert_eq!(served_certificate(addr, &ca).await, second.der.to_vec());
    round_trip(&open, "still-up").await;

    // A reload that fails keeps the certificates in use, and says which
    // file is wrong.
    pki::write_atomically(&files.key, &ca.server("antre-3").key_pem);
    let err = b
        .server
        .reload_tls()
        .expect_err("a key of another certificate");
    let text = err.to_string();
    assert!(text.contains(&files.key.display().to_string()), "{text}");
    assert!(text.contains("does not match"), "{text}");
    assert_eq!(served_certificate(addr, &ca).await, second.der.to_vec());
    round_trip(&open, "still-up").await;
    open.close(200, "bye").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_reloaded_without_a_signal() {
    let ca = Ca::new("antre test CA");
    let first = ca.server("antre-1");
    let files = TlsFiles::new(&first, &ca);
    let b = TestBroker::start_with(|c| {
        c.amqps_listen = Some("127.0.0.1:0".into());
        c.tls = Some(files.settings(false, false));
        c.tls_reload_interval = Duration::from_millis(50);
    })
    .await;
    let addr = amqps_addr(&b);
    assert_eq!(served_certificate(addr, &ca).await, first.der.to_vec());
    let second = ca.server("antre-2");
    files.replace(&second, &ca);
    within("the new certificate", async {
        while served_certificate(addr, &ca).await != second.der.to_vec() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Starts a broker with `files` and returns the start-up error.
async fn start_error(files: &TlsFiles, client_ca: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = antre::Config {
        amqp_listen: Some("127.0.0.1:0".into()),
        amqps_listen: Some("127.0.0.1:0".into()),
        http_listen: None,
        tls: Some(files.settings(client_ca, false)),
        data_dir: dir.path().to_path_buf(),
        ..antre::Config::default()
    };
    match antre::start(config).await {
        Ok(server) => {
            server.shutdown().await;
            panic!("the broker started")
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_stop_the_start_with_the_file_and_the_problem() {
    let ca = Ca::new("antre test CA");
    let good = ca.server("antre");
    let files = TlsFiles::new(&good, &ca);
    let cert = files.cert.display().to_string();
    let key = files.key.display().to_string();
    let ca_file = files.ca.display().to_string();

    let expired = ca.leaf("old", rcgen::ExtendedKeyUsagePurpose::ServerAuth, |p| {
        p.not_after = rcgen::date_time_ymd(2020, 1, 1);
    });
    let future = ca.leaf("new", rcgen::ExtendedKeyUsagePurpose::ServerAuth, |p| {
        p.not_before = rcgen::date_time_ymd(2100, 1, 1);
    });
    let other_key = ca.server("other").key_pem;
    type Break<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Break, Vec<String>)> = vec![
        (
            "expired",
            Box::new(|| files.replace(&expired, &ca)),
            vec![
                cert.clone(),
                "'CN=old' expired on 2020-01-01T00:00:00Z".into(),
            ],
        ),
        (
            "not yet valid",
            Box::new(|| files.replace(&future, &ca)),
            vec![cert.clone(), "not valid until 2100-01-01T00:00:00Z".into()],
        ),
        (
            "mismatched key",
            Box::new(|| {
                files.replace(&good, &ca);
                pki::write_atomically(&files.key, &other_key);
            }),
            vec![key.clone(), cert.clone(), "does not match".into()],
        ),
        (
            "missing certificate",
            Box::new(|| std::fs::remove_file(&files.cert).unwrap()),
            vec![cert.clone(), "cannot read TLS certificate file".into()],
        ),
        (
            "a key file without a key",
            Box::new(|| {
                files.replace(&good, &ca);
                pki::write_atomically(&files.key, &good.cert_pem);
            }),
            vec![key.clone(), "has no PEM private key".into()],
        ),
        (
            "not PEM",
            Box::new(|| {
                pki::write_atomically(&files.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n")
            }),
            vec![cert.clone(), "not valid PEM".into()],
        ),
        (
            "an empty CA file",
            Box::new(|| {
                files.replace(&good, &ca);
                pki::write_atomically(&files.ca, "");
            }),
            vec![ca_file.clone(), "has no PEM certificate".into()],
        ),
    ];
    for (what, break_it, needles) in cases {
        break_it();
        let err = start_error(&files, true).await;
        for needle in needles {
            assert!(err.contains(&needle), "{what}: '{needle}' not in: {err}");
        }
    }
}

/// The real binary: SIGHUP reloads the certificates; an expired one stops
/// the start with exit code 1 and a one-line error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_and_refuses_an_expired_certificate() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let ca = Ca::new("antre test CA");
    let first = ca.server("antre-1");
    let files = TlsFiles::new(&first, &ca);
    let data = tempfile::tempdir().unwrap();
    let args = |data: &std::path::Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_antre"));
        cmd.args(["serve", "--amqp-listen", "off", "--http-listen", "off"])
            .args([
                "--amqps-listen",
                "127.0.0.1:0",
                "--tls-reload-interval",
                "0",
            ])
            .arg("--tls-cert")
            .arg(&files.cert)
            .arg("--tls-key")
            .arg(&files.key)
            .arg("--data-dir")
            .arg(data)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    let mut child = args(data.path()).spawn().expect("spawn antre");
    let stderr = child.stderr.take().unwrap();
    let found = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().expect("a log line").expect("readable");
            if let Some(at) = line.find("listening on amqps://") {
                break line[at + "listening on amqps://".len()..].trim().to_owned();
            }
        };
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        addr
    });
    let addr: SocketAddr = within("the amqps listener", found)
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(served_certificate(addr, &ca).await, first.der.to_vec());
    let second = ca.server("antre-2");
    files.replace(&second, &ca);
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    within("the reload", async {
        while served_certificate(addr, &ca).await != second.der.to_vec() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let exit = within(
        "a clean stop",
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        exit.success(),
        "SIGHUP did not end it; SIGTERM stops it cleanly"
    );

    let expired = ca.leaf("old", rcgen::ExtendedKeyUsagePurpose::ServerAuth, |p| {
        p.not_after = rcgen::date_time_ymd(2020, 1, 1);
    });
    files.replace(&expired, &ca);
    let other = tempfile::tempdir().unwrap();
    let mut cmd = args(other.path());
    let out = within(
        "the failed start",
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: TLS certificate file"), "{stderr}");
    assert!(last.contains("expired on 2020-01-01T00:00:00Z"), "{stderr}");
}

/// Regression: `/api/health/checks/certificate-expiration/{within}/
/// {unit}`, which monitoring asks to learn of a certificate about to
/// expire before clients do, answered 404. As RabbitMQ's: 503 listing the
/// TLS listeners (amqps, https) whose certificate or CA file holds a
/// certificate expiring within that time, with when; 200 otherwise. The
/// files are read as they are at each check, so a renewed certificate
/// passes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_expiration_check_names_the_listeners_of_an_expiring_certificate() {
    let ca = Ca::new("antre test CA");
    let ten_days = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let short = ca.leaf("antre", rcgen::ExtendedKeyUsagePurpose::ServerAuth, |p| {
        p.not_after = ten_days;
    });
    let files = TlsFiles::new(&short, &ca);
    let b = tls_broker(&files, true, false).await;
    let check = |within: &'static str| {
        let b = &b;
        async move {
            let path = format!("/api/health/checks/certificate-expiration/{within}");
            b.api("GET", &path, None).await
        }
    };
    let ok = serde_json::json!({"status": "ok"});
    assert_eq!(check("1/weeks").await, (200, ok.clone()));
    let (status, body) = check("2/weeks").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "Certificates expiring");
    let expired = body["expired"].as_array().expect("expired");
    let protocols: Vec<&str> = expired
        .iter()
        .filter_map(|l| l["protocol"].as_str())
        .collect();
    assert_eq!(protocols, ["amqp/ssl", "https"], "{body}");
    let amqps = &expired[0];
    assert_eq!(amqps["port"], amqps_addr(&b).port());
    assert_eq!(amqps["certfile"], files.cert.display().to_string());
    assert_eq!(amqps["cacertfile"], files.ca.display().to_string());
    let when = format!(
        "{}-{:02}-{:02} {}:",
        ten_days.year(),
        u8::from(ten_days.month()),
        ten_days.day(),
        ten_days.hour()
    );
    let ends = amqps["certfile_expires_on"].as_array().expect("expires on");
    assert_eq!(ends.len(), 1, "{body}");
    assert!(
        ends[0].as_str().is_some_and(|t| t.starts_with(&when)),
        "{body}"
    );
    assert_eq!(amqps["cacertfile_expires_on"], serde_json::json!([]));

    // With a CA to verify client certificates, the node offers EXTERNAL.
    let (_, nodes) = b.api("GET", "/api/nodes", None).await;
    let external = nodes[0]["auth_mechanisms"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "EXTERNAL")
        .cloned();
    assert_eq!(
        external.map(|m| m["enabled"].clone()),
        Some(Value::Bool(true))
    );

    // Renewed in place: the next check reads the new file.
    files.replace(&ca.server("antre"), &ca);
    assert_eq!(check("2/weeks").await, (200, ok));
}
