//! The tool's own ceiling: the same producer and consumer loops as a real
//! run, against the in-process [`FakeServer`], which costs little per message.
//!
//! Both share the machine's cores, so the figures are a lower bound on
//! what the tool can do; a broker that reaches them is not being measured
//! fairly, and one far below them is.

use anyhow::Result;

use crate::fake::FakeServer;
use crate::run::{run, Report, RunArgs};

/// One line of the self-test: what was measured and the run's report.
pub struct Ceiling {
    /// What the case exercises.
    pub case: &'static str,
    /// The report of the run against the fake server.
    pub report: Report,
}

/// Measures publish, confirmed publish and consume ceilings for `size`-byte
/// bodies, `seconds` each.
pub async fn measure(size: usize, seconds: f64) -> Result<Vec<Ceiling>> {
    let server = FakeServer::start(size)?;
    let base = || {
        let mut a = RunArgs::with_uri(&server.url());
        a.size = size;
        a.duration = seconds;
        a.quiet = true;
        a.drain_timeout = 0.0;
        a
    };
    let mut cases = Vec::new();
    let mut a = base();
    a.consumers = 0;
    a.label = format!("publish {size} B");
    cases.push(("publish, 1 producer", a));
    let mut a = base();
    a.consumers = 0;
    a.confirm = Some(1000);
    a.label = format!("publish+confirm {size} B");
    cases.push(("publish with confirms (window 1000)", a));
    let mut a = base();
    a.producers = 0;
    a.label = format!("consume {size} B");
    cases.push(("consume, 1 consumer, prefetch 1000, ack every 100", a));
    let mut a = base();
    a.label = format!("both {size} B");
    cases.push(("publish and consume at once", a));
    let mut out = Vec::new();
    for (case, args) in cases {
        let report = run(&args).await?;
        out.push(Ceiling { case, report });
    }
    Ok(out)
}
