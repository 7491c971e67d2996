//! The web UI in a real browser: headless Chromium driven over WebDriver
//! (chromedriver) loads the UI from a real broker, logs in, checks what it
//! renders, uses a form, and saves screenshots that must be real PNGs.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them). Without them the test says so and passes, except under CI
//! (`CI=true`), where it fails.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::TestBroker;
use serde_json::{json, Value};

fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// chromedriver, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(program: &PathBuf) -> Driver {
        // chromedriver cannot pick its own port and report it: ask the OS
        // for a free one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        // It prints "... started successfully on port N" when it listens.
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.expect("chromedriver output");
            if line.contains("started successfully") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.url);
        let req = ureq::request(method, &url).timeout(Duration::from_secs(60));
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                panic!(
                    "WebDriver {method} {path}: {code} {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        };
        let v: Value = resp.into_json().expect("WebDriver JSON");
        v["value"].clone()
    }
}

struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Finds an element by XPath, waiting (the implicit wait) until it shows.
    fn find(&self, xpath: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "xpath", "value": xpath })),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {xpath}: {v}"))
            .to_owned()
    }

    fn click(&self, xpath: &str) {
        let el = self.find(xpath);
        self.call("POST", &format!("/element/{el}/click"), Some(json!({})));
    }

    fn type_into(&self, xpath: &str, text: &str) {
        let el = self.find(xpath);
        self.call("POST", &format!("/element/{el}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn displayed(&self, xpath: &str) -> bool {
        let el = self.find(xpath);
        self.call("GET", &format!("/element/{el}/displayed"), None) == json!(true)
    }

    fn text(&self, xpath: &str) -> String {
        let el = self.find(xpath);
        self.call("GET", &format!("/element/{el}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Saves a screenshot and checks it is a PNG of the window's size with
    /// real content (not a blank page).
    fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 screenshot"))
            .expect("valid base64");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&png[12..16], b"IHDR");
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert!(width >= 800 && height >= 600, "{width}x{height}");
        assert!(
            png.len() > 20_000,
            "a rendered page compresses to more than a blank one: {} bytes",
            png.len()
        );
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, &png).expect("write screenshot");
        println!("screenshot: {}", path.display());
        path
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_works_in_headless_chromium() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let driver_bin = find_program("ANTRE_CHROMEDRIVER", &["chromedriver"]);
    let chromium = find_program("ANTRE_CHROMIUM", &["chromium", "chromium-browser"]);
    let (Some(driver_bin), Some(chromium)) = (driver_bin, chromium) else {
        assert!(
            !ci,
            "CI=true but chromium/chromedriver are missing: .ci/run installs them"
        );
        eprintln!(
            "SKIPPED the_ui_works_in_headless_chromium: chromium and chromedriver are not \
             installed (apt-get install chromium chromium-driver)"
        );
        return;
    };

    let b = TestBroker::start_with(|c| c.rate_interval = Duration::from_millis(200)).await;
    b.api("PUT", "/api/queues/%2F/browser-orders", None).await;
    for i in 0..3 {
        let (_, r) = b
            .api(
                "POST",
                "/api/exchanges/%2F/amq.default/publish",
                Some(json!({ "routing_key": "browser-orders", "payload": format!("order {i}") })),
            )
            .await;
        assert_eq!(r["routed"], true);
    }
    let ui = b.http_url();
    let run = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let driver = Driver::start(&driver_bin);
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1100"],
            },
            "timeouts": { "implicit": 15000, "pageLoad": 30000, "script": 30000 },
        } } });
        let created = driver.call("POST", "/session", Some(caps));
        let session = Session {
            driver: &driver,
            id: created["sessionId"]
                .as_str()
                .expect("session id")
                .to_owned(),
        };

        session.go(&format!("{ui}/"));
        session.type_into("//input[@id='login-user']", "guest");
        session.type_into("//input[@id='login-password']", "guest");
        session.click("//button[@id='login-submit']");
        // The overview shows the broker's numbers.
        session.find("//div[@id='total-ready' and text()='3']");
        session.find("//div[@id='total-queues' and text()='1']");
        session.find("//div[contains(@class,'chart')]//*[local-name()='svg']");
        assert!(session.text("//div[@id='page']//h1").contains("antre"));
        assert!(
            !session.displayed("//form[@id='login']"),
            "the login form is gone once logged in"
        );
        let overview = session.screenshot("antre-ui-overview.png");

        // The queue list shows the queue; its page gets a message.
        session.go(&format!("{ui}/#/queues"));
        session.click("//a[text()='browser-orders']");
        session.find("//div[@id='queue-ready' and text()='3']");
        session.click("//button[text()='Get messages']");
        session.find("//pre[text()='order 0']");
        session.screenshot("antre-ui-queue.png");

        // A stream declared from the queue form is listed as one, and its
        // page shows offsets instead of ready/unacked.
        session.go(&format!("{ui}/#/queues"));
        let add_queue = "//form[h2[text()='Add a queue']]";
        session.type_into(&format!("{add_queue}//input[@name='name']"), "browser-log");
        session.type_into(
            &format!("{add_queue}//input[@name='arguments']"),
            r#"{"x-queue-type": "stream"}"#,
        );
        session.click(&format!("{add_queue}//button"));
        session.find("//a[text()='browser-log']/../following-sibling::td[text()='stream']");
        session.click("//a[text()='browser-log']");
        session.find("//h1[starts-with(text(),'Stream browser-log')]");
        session.find("//div[@id='stream-messages' and text()='0']");
        session.find("//div[@id='stream-last' and text()='-']");

        // Exchanges and connections pages render.
        session.go(&format!("{ui}/#/exchanges"));
        session.find("//a[text()='amq.topic']");
        session.go(&format!("{ui}/#/connections"));
        session.find("//h1[starts-with(text(),'Connections')]");

        // The Admin area: add a user, give it permissions, see both listed.
        session.click("//a[@id='nav-admin']");
        session.find("//h2[starts-with(text(),'Users')]");
        session.find("//td[text()='guest']");
        let add_user = "//form[h2[text()='Add a user']]";
        session.type_into(&format!("{add_user}//input[@name='name']"), "browser-ops");
        session.type_into(&format!("{add_user}//input[@name='password']"), "s3cret");
        session.type_into(&format!("{add_user}//input[@name='tags']"), "management");
        session.click(&format!("{add_user}//button"));
        session.find("//td[text()='browser-ops']/following-sibling::td[text()='management']");
        let set = "//form[h2[text()='Set permissions']]";
        session.click(&format!(
            "{set}//select[@name='user']/option[text()='browser-ops']"
        ));
        session.type_into(&format!("{set}//input[@name='configure']"), "^ops");
        session.click(&format!("{set}//button"));
        session.find("//td[text()='browser-ops']/following-sibling::td[text()='^ops']");
        session.screenshot("antre-ui-admin.png");

        // A management user has no Admin tab.
        session.click("//button[text()='Log out']");
        session.type_into("//input[@id='login-user']", "browser-ops");
        session.type_into("//input[@id='login-password']", "s3cret");
        session.click("//button[@id='login-submit']");
        session.find("//span[@id='whoami' and contains(text(),'browser-ops (management)')]");
        assert!(!session.displayed("//a[@id='nav-admin']"));

        session.call("DELETE", "", None);
        println!("browser test took {:?}", started.elapsed());
        overview
    });
    let overview = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("browser test finishes in 2 minutes")
        .expect("browser test");
    assert!(overview.exists());
}
