//! E-commerce events: publish/subscribe routed by topic.
//!
//! The order and user services publish events to the topic exchange
//! `shop.events` with routing keys `<entity>.<event>`. Each downstream
//! service binds its queue with the patterns it cares about — `*` matches
//! exactly one word, `#` zero or more — and receives only those events:
//!
//! - email, inventory and shipping bind `order.*`;
//! - cart and orders bind `user.updated`.
//!
//! The publishers know none of this: adding a service is a new binding.

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

/// The topic exchange every event goes to.
pub const EXCHANGE: &str = "shop.events";

/// Each service and the binding patterns of its queue `shop.<service>`.
pub const SERVICES: [(&str, &[&str]); 5] = [
    ("email", &["order.*"]),
    ("inventory", &["order.*"]),
    ("shipping", &["order.*"]),
    ("cart", &["user.updated"]),
    ("orders", &["user.updated"]),
];

const ORDER_SERVICES: &[&str] = &["email", "inventory", "shipping"];
const USER_SERVICES: &[&str] = &["cart", "orders"];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    id: String,
    /// The order or user the event is about.
    subject: String,
    /// A line of detail, as a real event would carry fields.
    detail: String,
}

/// The events of the run: `(routing key, event, services that must get it)`.
/// The third column is the expectation the run is checked against, written
/// out by hand rather than computed, so it documents the routing too.
fn events() -> Vec<(&'static str, Event, &'static [&'static str])> {
    let e = |id: &str, subject: &str, detail: &str| Event {
        id: id.into(),
        subject: subject.into(),
        detail: detail.into(),
    };
    vec![
        (
            "order.created",
            e(
                "E-01",
                "o-5001",
                "Budi (u-77): 2× Kopi Gayo 250 g, 1× French press",
            ),
            ORDER_SERVICES,
        ),
        (
            "user.updated",
            e("E-02", "u-77", "Budi moved to Jl. Dago 12, Bandung"),
            USER_SERVICES,
        ),
        (
            "order.paid",
            e("E-03", "o-5001", "Rp 415.000 via QRIS"),
            ORDER_SERVICES,
        ),
        (
            "order.created",
            e("E-04", "o-5002", "Sari (u-81): 1× Batik shirt, size M"),
            ORDER_SERVICES,
        ),
        // No binding matches `user.created`: the broker returns it to the
        // publisher (it is published `mandatory`).
        ("user.created", e("E-05", "u-82", "Rina signed up"), &[]),
        (
            "order.cancelled",
            e("E-06", "o-5002", "Sari cancelled before payment"),
            ORDER_SERVICES,
        ),
        (
            "user.updated",
            e("E-07", "u-81", "Sari changed her phone number"),
            USER_SERVICES,
        ),
    ]
}

/// What a service does with an event it received.
fn react(service: &str, key: &str, e: &Event) -> String {
    let s = &e.subject;
    match (service, key) {
        ("email", "order.created") => format!("mail 'We got your order {s}' ({})", e.detail),
        ("email", "order.paid") => format!("mail the receipt for {s} ({})", e.detail),
        ("email", "order.cancelled") => format!("mail 'Order {s} cancelled'"),
        ("inventory", "order.created") => format!("reserve stock for {s}"),
        ("inventory", "order.paid") => format!("commit the reservation for {s}"),
        ("inventory", "order.cancelled") => format!("release the reservation for {s}"),
        ("shipping", "order.created") => format!("plan {s}, to ship once paid"),
        ("shipping", "order.paid") => format!("book a courier pickup for {s}"),
        ("shipping", "order.cancelled") => format!("drop {s} from the plan"),
        ("cart", "user.updated") => format!("refresh the cached profile of {s} ({})", e.detail),
        ("orders", "user.updated") => format!("update {s} on open orders ({})", e.detail),
        _ => format!("{key} {s}: ignored"),
    }
}

/// Service → `(routing key, event id)` received, in order.
type Received = Arc<Mutex<BTreeMap<String, Vec<(String, String)>>>>;

/// Runs the scenario against the broker at `url`; `Ok` when every service
/// got exactly the events its bindings select, in order, and the event no
/// one subscribed to came back to its publisher.
pub async fn run(url: &str) -> anyhow::Result<()> {
    println!("E-commerce events: a topic exchange routing order.* and user.updated.\n");

    let publisher = connect(url, "order-and-user-services").await?;
    let ch = confirm_channel(&publisher).await?;
    ch.exchange_delete(EXCHANGE, ExchangeDeleteOptions::default())
        .await?;
    ch.exchange_declare(
        EXCHANGE,
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;

    let received: Received = Arc::default();
    let mut services = Vec::new();
    for (service, patterns) in SERVICES {
        let conn = connect(url, service).await?;
        let sub = conn.create_channel().await?;
        let queue = format!("shop.{service}");
        sub.queue_declare(
            &queue,
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        for pattern in patterns {
            sub.queue_bind(
                &queue,
                EXCHANGE,
                pattern,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        println!(
            "  {service:<10} subscribed: queue `{queue}` bound with {}",
            patterns.join(", ")
        );
        let task = tokio::spawn(service_task(service, sub, queue, received.clone()));
        services.push((conn, task));
    }
    println!();

    let all = events();
    let mut returned = Vec::new();
    for (key, event, _) in &all {
        println!(
            "publish {key:<16} {} {}: {}",
            event.id, event.subject, event.detail
        );
        let confirm = ch
            .basic_publish(
                EXCHANGE,
                key,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &serde_json::to_vec(event)?,
                BasicProperties::default()
                    .with_message_id(event.id.as_str().into())
                    .with_content_type("application/json".into())
                    .with_type((*key).into()),
            )
            .await?;
        // An unroutable mandatory message is returned and then confirmed.
        if let Some(back) = expect_ack(&format!("event {}", event.id), confirm)
            .await?
            .take_message()
        {
            println!(
                "  returned to the publisher: {} {} (no service subscribes to {key})",
                back.reply_code, back.reply_text
            );
            returned.push(event.id.clone());
        }
        // Pause so the output reads as a timeline of events.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let expected: BTreeMap<&str, Vec<(String, String)>> = SERVICES
        .iter()
        .map(|(service, _)| {
            let mine = all
                .iter()
                .filter(|(_, _, audience)| audience.contains(service))
                .map(|(key, e, _)| (key.to_string(), e.id.clone()))
                .collect();
            (*service, mine)
        })
        .collect();
    let outcome = wait_until("every service to receive its events", || {
        let r = received.lock().unwrap();
        expected
            .iter()
            .all(|(s, want)| r.get(*s).map_or(0, Vec::len) >= want.len())
    })
    .await;
    // A moment for any event routed where it should not be to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Err(e) = &outcome {
        println!("  {e:#}");
    }

    let mut c = Checklist::new();
    let received = received.lock().unwrap().clone();
    for (service, patterns) in SERVICES {
        let want = &expected[service];
        let ids: Vec<&str> = want.iter().map(|(_, id)| id.as_str()).collect();
        c.equal(
            received.get(service).cloned().unwrap_or_default(),
            want.clone(),
            format!(
                "{service} ({}) got exactly {}",
                patterns.join(", "),
                ids.join(" ")
            ),
        );
    }
    let unrouted: Vec<String> = all
        .iter()
        .filter(|(_, _, audience)| audience.is_empty())
        .map(|(_, e, _)| e.id.clone())
        .collect();
    c.equal(
        returned,
        unrouted,
        "the event no one subscribes to was returned to its publisher",
    );

    for (conn, task) in services {
        task.abort();
        let _ = within("a service to disconnect", conn.close(200, "done")).await;
    }
    ch.exchange_delete(EXCHANGE, ExchangeDeleteOptions::default())
        .await?;
    let _ = publisher.close(200, "done").await;
    c.verdict()
}

/// One downstream service: prints what it does with each event and acks it.
async fn service_task(
    service: &'static str,
    ch: Channel,
    queue: String,
    received: Received,
) -> anyhow::Result<()> {
    let mut events = ch
        .basic_consume(
            &queue,
            service,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = events.next().await {
        let delivery = delivery?;
        let key = delivery.routing_key.as_str().to_owned();
        let event: Event = serde_json::from_slice(&delivery.data)?;
        println!("  {service:<10} {key:<16} {}", react(service, &key, &event));
        received
            .lock()
            .unwrap()
            .entry(service.to_owned())
            .or_default()
            .push((key, event.id));
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
