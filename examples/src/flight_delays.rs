//! Airline delay notifications: publish/subscribe with a fanout exchange.
//!
//! Operations control publishes each delay notice once, to the exchange
//! `flight.delays`. It does not know who listens: every team binds its own
//! queue to the exchange and the broker gives each queue a copy. A sixth
//! team could start listening tomorrow without any change to the publisher.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde::{Deserialize, Serialize};

use crate::support::{confirm_channel, connect, expect_ack, wait_until, within, Checklist};

/// The fanout exchange delay notices go to.
pub const EXCHANGE: &str = "flight.delays";

/// The subscribers: each team's service has its own queue,
/// `flight.delays.<team>`.
pub const TEAMS: [&str; 5] = [
    "ground-crew",
    "baggage",
    "cabin-crew",
    "pilots",
    "airport-ops",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DelayNotice {
    notice: String,
    flight: String,
    from: String,
    to: String,
    gate: String,
    /// Scheduled departure, minutes after midnight (local time).
    scheduled: u16,
    delay_minutes: u16,
    reason: String,
    checked_bags: u16,
}

impl DelayNotice {
    fn departs(&self) -> u16 {
        self.scheduled + self.delay_minutes
    }
}

fn notices() -> Vec<DelayNotice> {
    let n = |notice: &str,
             flight: &str,
             (from, to): (&str, &str),
             gate: &str,
             scheduled: u16,
             delay_minutes: u16,
             reason: &str,
             checked_bags: u16| DelayNotice {
        notice: notice.into(),
        flight: flight.into(),
        from: from.into(),
        to: to.into(),
        gate: gate.into(),
        scheduled,
        delay_minutes,
        reason: reason.into(),
        checked_bags,
    };
    vec![
        n(
            "N-01",
            "GA-404",
            ("CGK", "DPS"),
            "C3",
            14 * 60 + 50,
            45,
            "thunderstorm over Jakarta",
            142,
        ),
        n(
            "N-02",
            "QG-118",
            ("CGK", "SUB"),
            "A7",
            15 * 60 + 10,
            20,
            "late inbound aircraft",
            96,
        ),
        n(
            "N-03",
            "ID-6271",
            ("CGK", "KNO"),
            "B2",
            16 * 60,
            90,
            "technical check (hydraulics)",
            158,
        ),
        n(
            "N-04",
            "GA-404",
            ("CGK", "DPS"),
            "C5",
            14 * 60 + 50,
            70,
            "thunderstorm; gate changed",
            142,
        ),
    ]
}

/// What each team does with a notice: the same message, five readings.
fn react(team: &str, n: &DelayNotice) -> String {
    let f = &n.flight;
    match team {
        "ground-crew" => format!(
            "{f}: move pushback and tug to {} at gate {}",
            hhmm(n.departs()),
            n.gate
        ),
        "baggage" => format!(
            "{f}: hold {} bags at the make-up belt until {}",
            n.checked_bags,
            hhmm(n.departs() - 30)
        ),
        "cabin-crew" => format!(
            "{f}: boarding moves to {}, crew briefing at {}",
            hhmm(n.departs() - 40),
            hhmm(n.departs() - 70)
        ),
        "pilots" => format!(
            "{f}: new off-block {}, refile the {}→{} flight plan ({})",
            hhmm(n.departs()),
            n.from,
            n.to,
            n.reason
        ),
        "airport-ops" => format!(
            "{f}: gate {} busy until {}, update the departure boards (+{} min)",
            n.gate,
            hhmm(n.departs() + 20),
            n.delay_minutes
        ),
        _ => format!("{f}: noted"),
    }
}

fn hhmm(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60 % 24, minutes % 60)
}

/// Team → the notice ids it received, in order.
type Received = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

/// Runs the scenario against the broker at `url`; `Ok` when every team got
/// every notice exactly once, in order.
pub async fn run(url: &str) -> anyhow::Result<()> {
    println!("Flight-delay notices: one publisher, a fanout exchange, five subscribers.\n");

    let control = connect(url, "ops-control").await?;
    let ch = confirm_channel(&control).await?;
    ch.exchange_delete(EXCHANGE, ExchangeDeleteOptions::default())
        .await?;
    ch.exchange_declare(
        EXCHANGE,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;

    // Each team is its own service with its own connection and queue. The
    // queues are exclusive: they live as long as the team's connection.
    let received: Received = Arc::default();
    let mut teams = Vec::new();
    for team in TEAMS {
        let conn = connect(url, team).await?;
        let sub = conn.create_channel().await?;
        let queue = format!("{EXCHANGE}.{team}");
        sub.queue_declare(
            &queue,
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        // A fanout exchange ignores the routing key: bind with "".
        sub.queue_bind(
            &queue,
            EXCHANGE,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        println!("  {team:<12} subscribed: queue `{queue}` bound to `{EXCHANGE}`");
        let task = tokio::spawn(subscriber(team, sub.clone(), queue, received.clone()));
        teams.push((conn, task));
    }
    println!();

    // The publisher sends each notice once. `mandatory` makes the broker
    // return a notice nobody is subscribed to instead of dropping it.
    let all = notices();
    for n in &all {
        println!(
            "ops-control: {} {} {}→{} delayed {} min, departs {} ({})",
            n.notice,
            n.flight,
            n.from,
            n.to,
            n.delay_minutes,
            hhmm(n.departs()),
            n.reason
        );
        let confirm = ch
            .basic_publish(
                EXCHANGE,
                "",
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &serde_json::to_vec(n)?,
                BasicProperties::default()
                    .with_message_id(n.notice.as_str().into())
                    .with_content_type("application/json".into()),
            )
            .await?;
        let confirmation = expect_ack(&format!("notice {}", n.notice), confirm).await?;
        anyhow::ensure!(
            confirmation.take_message().is_none(),
            "notice {} was returned: no subscriber",
            n.notice
        );
        // Pause so the output reads as a timeline of notices.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let expected: Vec<String> = all.iter().map(|n| n.notice.clone()).collect();
    let outcome = wait_until("every team to receive every notice", || {
        let r = received.lock().unwrap();
        TEAMS
            .iter()
            .all(|t| r.get(*t).map_or(0, Vec::len) >= expected.len())
    })
    .await;
    // A moment for any extra copy to arrive and be counted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Err(e) = &outcome {
        println!("  {e:#}");
    }

    let mut c = Checklist::new();
    let received = received.lock().unwrap().clone();
    for team in TEAMS {
        c.equal(
            received.get(team).cloned().unwrap_or_default(),
            expected.clone(),
            format!("{team} got every notice once, in order"),
        );
    }
    for (conn, task) in teams {
        task.abort();
        let _ = within("a subscriber to disconnect", conn.close(200, "done")).await;
    }
    ch.exchange_delete(EXCHANGE, ExchangeDeleteOptions::default())
        .await?;
    let _ = control.close(200, "done").await;
    c.verdict()
}

/// One team's service: prints its reaction to each notice and acks it.
async fn subscriber(
    team: &'static str,
    ch: Channel,
    queue: String,
    received: Received,
) -> anyhow::Result<()> {
    let mut notices = ch
        .basic_consume(
            &queue,
            team,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = notices.next().await {
        let delivery = delivery?;
        let notice: DelayNotice = serde_json::from_slice(&delivery.data)?;
        println!("  {team:<12} {}", react(team, &notice));
        received
            .lock()
            .unwrap()
            .entry(team.to_owned())
            .or_default()
            .push(notice.notice);
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
