//! Small helpers the three examples share: the command line, connecting,
//! confirmed publishing, reading headers, and a checklist that turns the
//! example's expectations into an exit code.

use std::fmt::Write as _;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};

/// The broker antre starts with by default (`cargo run --release -p antre`).
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Every example takes the same single option.
#[derive(Debug, clap::Parser)]
#[command(about = None)]
pub struct Args {
    /// AMQP URL of a running antre (or any AMQP 0-9-1 broker).
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_URL)]
    pub url: String,
}

/// What each binary's `main` does: parse the command line, run the scenario
/// and turn its verdict into the process's exit code (0: every check held).
pub async fn main<F, Fut>(about: &'static str, run: F) -> ExitCode
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    use clap::{CommandFactory as _, FromArgMatches as _};
    let matches = Args::command().about(about).get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    match run(args.url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nFAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The longest any single step may take before the example gives up: a
/// guard against hanging on a broker that never answers.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `fut`, failing with `what` if it takes longer than [`STEP_TIMEOUT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .with_context(|| format!("timed out after {STEP_TIMEOUT:?} waiting for {what}"))
}

/// Polls `done` every 20 ms until it holds, failing after [`STEP_TIMEOUT`].
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    within(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    // The connection name shows up in the broker's logs.
    let mut props = ConnectionProperties::default();
    props
        .client_properties
        .insert("connection_name".into(), AMQPValue::LongString(name.into()));
    within("the connection", Connection::connect(url, props))
        .await?
        .with_context(|| format!("connecting to {url} (is antre running?)"))
}

/// A channel in confirm mode: every publish on it is answered by the broker
/// with an ack once the message is safely queued (or a nack if it is not).
pub async fn confirm_channel(conn: &Connection) -> anyhow::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Waits for the broker's answer to a publish and insists it is an ack.
/// Returns the confirmation so callers can look for a `basic.return`.
pub async fn expect_ack(
    what: &str,
    confirm: lapin::publisher_confirm::PublisherConfirm,
) -> anyhow::Result<Confirmation> {
    let confirmation = within(what, confirm).await??;
    if !confirmation.is_ack() {
        bail!("the broker refused {what}: {confirmation:?}");
    }
    Ok(confirmation)
}

/// Messages ready in a queue, read with a passive declare.
pub async fn ready_count(ch: &Channel, queue: &str) -> anyhow::Result<u32> {
    let q = ch
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("passive declare of {queue}"))?;
    Ok(q.message_count())
}

/// A field table from `(name, value)` pairs.
pub fn table<const N: usize>(entries: [(&str, AMQPValue); N]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    t
}

pub fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// A header of a delivery, if it is there.
pub fn header<'a>(props: &'a lapin::BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

/// An integer header, whatever integer width the sender chose.
pub fn int_header(props: &lapin::BasicProperties, name: &str) -> Option<i64> {
    as_i64(header(props, name)?)
}

pub fn as_i64(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => *n as i64,
        AMQPValue::ShortShortUInt(n) => *n as i64,
        AMQPValue::ShortInt(n) => *n as i64,
        AMQPValue::ShortUInt(n) => *n as i64,
        AMQPValue::LongInt(n) => *n as i64,
        AMQPValue::LongUInt(n) => *n as i64,
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::Timestamp(n) => *n as i64,
        _ => return None,
    })
}

/// A string field, whether sent as a long or a short string.
pub fn as_str(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A header value printed the way a person wants to read it.
pub fn show(v: &AMQPValue) -> String {
    if let Some(s) = as_str(v) {
        return s;
    }
    if let Some(n) = as_i64(v) {
        return n.to_string();
    }
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::FieldArray(a) => {
            let items: Vec<String> = a.as_slice().iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        AMQPValue::FieldTable(t) => {
            let mut out = String::from("{");
            for (i, (k, v)) in t.inner().iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(out, "{sep}{}: {}", k.as_str(), show(v));
            }
            out.push('}');
            out
        }
        other => format!("{other:?}"),
    }
}

/// The example's verdict: each expectation is printed as it is checked and
/// the run fails if any did not hold.
#[derive(Debug, Default)]
pub struct Checklist {
    failed: Vec<String>,
}

impl Checklist {
    pub fn new() -> Checklist {
        println!("\nChecking the outcome:");
        Checklist::default()
    }

    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        println!("  [{}] {what}", if ok { "ok" } else { "FAIL" });
        if !ok {
            self.failed.push(what);
        }
    }

    /// Checks `actual == expected`, showing both when they differ.
    pub fn equal<T: PartialEq + std::fmt::Debug>(
        &mut self,
        actual: T,
        expected: T,
        what: impl Into<String>,
    ) {
        let what = what.into();
        if actual == expected {
            self.check(true, what);
        } else {
            self.check(
                false,
                format!("{what}\n         expected {expected:?}\n         got      {actual:?}"),
            );
        }
    }

    pub fn verdict(self) -> anyhow::Result<()> {
        if self.failed.is_empty() {
            println!("\nAll checks passed.");
            Ok(())
        } else {
            bail!(
                "{} check(s) failed:\n  - {}",
                self.failed.len(),
                self.failed.join("\n  - ")
            )
        }
    }
}
