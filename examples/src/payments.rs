//! Payment processing: point-to-point messaging where every payment must be
//! charged exactly once, even when the publisher and the workers fail.
//!
//! What can go wrong, and what in the broker handles it:
//!
//! - the publisher crashes after the broker confirmed a payment but before
//!   it recorded that, so it publishes the payment again on restart:
//!   **publisher confirms** tell it what is safe, and the queue's
//!   **deduplication** (`x-message-deduplication`, keyed by `message-id`)
//!   drops the second copy;
//! - a worker dies holding a payment: **manual acks** mean the broker still
//!   owns the payment and gives it to another worker, marked redelivered;
//! - the card gateway times out: the worker puts the payment in a **retry
//!   queue** whose `x-message-ttl` holds it for a moment before its
//!   dead-letter exchange routes it back to the work queue;
//! - the issuer keeps failing: after the last attempt the worker rejects the
//!   payment and the broker **dead-letters** it to `payments.dead`, with an
//!   `x-death` header telling where it has been, for a person to look at.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde::{Deserialize, Serialize};

use crate::support::{
    as_i64, as_str, confirm_channel, connect, expect_ack, header, int_header, ready_count, show,
    string, table, wait_until, Checklist,
};

/// Where checkout publishes payments (direct).
pub const EXCHANGE: &str = "payments";
/// The work queue the payment workers compete on.
pub const QUEUE: &str = "payments";
/// Payments waiting out their retry delay.
pub const RETRY_QUEUE: &str = "payments.retry";
/// Where the work queue dead-letters payments that failed for good (fanout).
pub const DEAD_EXCHANGE: &str = "payments.dlx";
/// Failed payments, for a person to look at.
pub const DEAD_QUEUE: &str = "payments.dead";
const ROUTING_KEY: &str = "payment";

/// How long a failed payment waits before its next attempt. Real systems
/// wait seconds to minutes; a few hundred ms keeps the example fast.
const RETRY_DELAY_MS: i64 = 300;
/// Attempts before a payment is given up on.
const MAX_ATTEMPTS: i64 = 3;
/// Redeliveries (a worker died holding the payment) before the broker
/// itself parks the payment in the dead-letter queue, so one payment that
/// crashes every worker cannot take the whole service down.
const DELIVERY_LIMIT: i64 = 5;

/// Our own header: which attempt a delivery is (absent on the first).
const ATTEMPT_HEADER: &str = "x-attempt";
const LAST_ERROR_HEADER: &str = "x-last-error";

/// Sandbox card numbers, in the style of payment providers' test cards.
const CARD_OK: &str = "4242 4242 4242 4242";
/// The issuer is down: every attempt fails.
const CARD_ISSUER_DOWN: &str = "4000 0000 0000 0119";
/// The gateway times out on the first attempt only.
const CARD_SLOW_ONCE: &str = "4000 0000 0000 3220";

/// The payment the publisher's crash happens on (it is published twice).
const PUBLISHER_CRASHES_AFTER: &str = "p-1002";
/// The payment a worker dies holding (it is delivered twice).
const WORKER_CRASHES_ON: &str = "p-1003";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payment {
    id: String,
    payer: String,
    merchant: String,
    amount_idr: u64,
    card: String,
}

impl Payment {
    fn new(id: &str, payer: &str, merchant: &str, amount_idr: u64, card: &str) -> Payment {
        Payment {
            id: id.into(),
            payer: payer.into(),
            merchant: merchant.into(),
            amount_idr,
            card: card.into(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} → {}, {} IDR",
            self.payer,
            self.merchant,
            thousands(self.amount_idr)
        )
    }
}

fn batch() -> Vec<Payment> {
    vec![
        Payment::new("p-1001", "Ayu", "Kopi Kenangan", 45_000, CARD_OK),
        Payment::new("p-1002", "Budi", "Tokopedia", 1_250_000, CARD_OK),
        Payment::new("p-1003", "Citra", "Garuda Indonesia", 2_300_000, CARD_OK),
        Payment::new("p-1004", "Dewi", "PLN", 350_000, CARD_ISSUER_DOWN),
        Payment::new("p-1005", "Eko", "Grab", 78_000, CARD_SLOW_ONCE),
        Payment::new("p-1006", "Fajar", "Shopee", 560_000, CARD_OK),
    ]
}

/// The card gateway, simulated.
fn charge(p: &Payment, attempt: i64) -> Result<String, String> {
    match p.card.as_str() {
        CARD_ISSUER_DOWN => Err("issuer unavailable (ISO 8583 response 91)".into()),
        CARD_SLOW_ONCE if attempt == 1 => Err("gateway timed out".into()),
        _ => Ok(format!("AUTH-{}", &p.id[2..])),
    }
}

/// What the workers and the dead-letter desk did, for the final checks.
#[derive(Debug, Default)]
struct Ledger {
    /// Payment id → the attempts on which it was charged (must be one).
    charges: BTreeMap<String, Vec<i64>>,
    /// Payments that reached a worker marked redelivered, with their
    /// `x-delivery-count`.
    redelivered: Vec<(String, Option<i64>)>,
    /// Payment id → the attempts that failed.
    failures: BTreeMap<String, Vec<i64>>,
    /// Payments that arrived in the dead-letter queue.
    dead: Vec<DeadPayment>,
    /// The crash still to happen.
    crash_armed: bool,
}

#[derive(Debug)]
struct DeadPayment {
    id: String,
    /// `(queue, reason, count)` of each `x-death` entry.
    deaths: Vec<(String, String, i64)>,
}

type Shared = Arc<Mutex<Ledger>>;

/// Runs the whole scenario against the broker at `url`; `Ok` when every
/// payment ended where it should.
pub async fn run(url: &str) -> anyhow::Result<()> {
    println!("Payment processing: a durable queue with deduplication, publisher confirms,");
    println!("manual acks, delayed retries and a dead-letter queue.\n");

    let setup_conn = connect(url, "payments-setup").await?;
    let setup = setup_conn.create_channel().await?;
    reset(&setup).await?;
    declare_topology(&setup).await?;

    // 1. Checkout publishes the day's payments. Nothing consumes yet: the
    //    payments wait, durably, in the queue.
    println!("Checkout publishes {} payments:", batch().len());
    let mut outbox: Vec<(Payment, bool)> = batch().into_iter().map(|p| (p, false)).collect();
    let crashed = publish_outbox(url, &mut outbox, Some(PUBLISHER_CRASHES_AFTER)).await?;
    anyhow::ensure!(crashed, "the simulated publisher crash did not happen");
    println!("  checkout restarts and publishes every payment its outbox still lists as unsent");
    publish_outbox(url, &mut outbox, None).await?;
    let all_sent = outbox.iter().all(|(_, sent)| *sent);
    let queued = ready_count(&setup, QUEUE).await?;
    println!(
        "  `{QUEUE}` holds {queued} payments after {} publishes\n",
        batch().len() + 1
    );

    // 2. Two workers compete for payments, one at a time each, acking only
    //    after the charge went through. One of them dies mid-payment.
    println!("Workers start ({MAX_ATTEMPTS} attempts per payment, {RETRY_DELAY_MS} ms apart):");
    let ledger: Shared = Arc::new(Mutex::new(Ledger {
        crash_armed: true,
        ..Default::default()
    }));
    let work_conn = connect(url, "payments-workers").await?;
    let mut tasks = Vec::new();
    for name in ["worker-1", "worker-2"] {
        let ch = confirm_channel(&work_conn).await?;
        tasks.push(tokio::spawn(worker(name, ch, ledger.clone())));
    }
    let desk = work_conn.create_channel().await?;
    tasks.push(tokio::spawn(dead_letter_desk(desk, ledger.clone())));

    let expected_charged = batch().len() - 1;
    let outcome = wait_until("every payment to be charged or dead-lettered", || {
        let l = ledger.lock().unwrap();
        l.charges.len() >= expected_charged && !l.dead.is_empty()
    })
    .await;
    // Long enough for a stray retry or duplicate to surface and be counted.
    tokio::time::sleep(Duration::from_millis(2 * RETRY_DELAY_MS as u64)).await;
    for t in &tasks {
        if t.is_finished() {
            // A worker task only ends early with an error (or its crash).
            continue;
        }
        t.abort();
    }
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            println!("  a consumer task failed: {e:#}");
        }
    }
    if let Err(e) = outcome {
        println!("  {e:#}");
    }

    let depths = [
        (QUEUE, ready_count(&setup, QUEUE).await?),
        (RETRY_QUEUE, ready_count(&setup, RETRY_QUEUE).await?),
        (DEAD_QUEUE, ready_count(&setup, DEAD_QUEUE).await?),
    ];
    let _ = work_conn.close(200, "done").await;
    verify(&ledger.lock().unwrap(), all_sent, queued, &depths)?;

    // Leave the broker as we found it.
    reset(&setup).await?;
    let _ = setup_conn.close(200, "done").await;
    Ok(())
}

/// Deletes what a previous run left behind, so every run starts clean (and
/// so changed arguments never clash with an old declaration).
async fn reset(ch: &Channel) -> anyhow::Result<()> {
    for q in [QUEUE, RETRY_QUEUE, DEAD_QUEUE] {
        ch.queue_delete(q, QueueDeleteOptions::default()).await?;
    }
    for x in [EXCHANGE, DEAD_EXCHANGE] {
        ch.exchange_delete(x, ExchangeDeleteOptions::default())
            .await?;
    }
    Ok(())
}

async fn declare_topology(ch: &Channel) -> anyhow::Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        EXCHANGE,
        ExchangeKind::Direct,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        DEAD_EXCHANGE,
        ExchangeKind::Fanout,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;

    // The work queue: durable (payments survive a broker restart),
    // deduplicated by message-id, dead-lettering to payments.dlx.
    ch.queue_declare(
        QUEUE,
        durable_queue,
        table([
            ("x-message-deduplication", AMQPValue::Boolean(true)),
            ("x-dead-letter-exchange", string(DEAD_EXCHANGE)),
            ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
        ]),
    )
    .await
    .context("declaring the work queue")?;
    ch.queue_bind(
        QUEUE,
        EXCHANGE,
        ROUTING_KEY,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    // The retry queue has no consumer. A payment waits here for its TTL,
    // then expires and is dead-lettered back to the work queue.
    ch.queue_declare(
        RETRY_QUEUE,
        durable_queue,
        table([
            ("x-message-ttl", AMQPValue::LongLongInt(RETRY_DELAY_MS)),
            ("x-dead-letter-exchange", string(EXCHANGE)),
            ("x-dead-letter-routing-key", string(ROUTING_KEY)),
        ]),
    )
    .await
    .context("declaring the retry queue")?;

    ch.queue_declare(DEAD_QUEUE, durable_queue, FieldTable::default())
        .await?;
    ch.queue_bind(
        DEAD_QUEUE,
        DEAD_EXCHANGE,
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Publishes every unsent payment of the outbox, marking each sent once the
/// broker confirmed it. With `crash_after`, the publisher "crashes" right
/// after that payment's confirm arrives, before it can mark it sent, and
/// returns `true`.
async fn publish_outbox(
    url: &str,
    outbox: &mut [(Payment, bool)],
    crash_after: Option<&str>,
) -> anyhow::Result<bool> {
    let conn = connect(url, "checkout").await?;
    let ch = confirm_channel(&conn).await?;
    for (payment, sent) in outbox.iter_mut().filter(|(_, sent)| !*sent) {
        let body = serde_json::to_vec(&payment)?;
        let props = BasicProperties::default()
            // The idempotency key the queue deduplicates on.
            .with_message_id(payment.id.as_str().into())
            .with_delivery_mode(2) // persistent
            .with_content_type("application/json".into())
            .with_app_id("checkout".into());
        let confirm = ch
            .basic_publish(
                EXCHANGE,
                ROUTING_KEY,
                BasicPublishOptions {
                    // No queue bound would be a bug: have it returned.
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                props,
            )
            .await?;
        let confirmation = expect_ack(&format!("payment {}", payment.id), confirm).await?;
        anyhow::ensure!(
            confirmation.take_message().is_none(),
            "payment {} was returned unroutable",
            payment.id
        );
        println!(
            "  checkout: {} ({}) confirmed by the broker",
            payment.id,
            payment.describe()
        );
        if crash_after == Some(payment.id.as_str()) {
            println!(
                "  checkout: crashes before recording that {} was sent!",
                payment.id
            );
            drop(conn);
            return Ok(true);
        }
        *sent = true;
    }
    let _ = conn.close(200, "done").await;
    Ok(false)
}

/// A payment worker: takes one payment at a time and acks it only when it
/// is finished with it, one way or the other.
async fn worker(name: &'static str, ch: Channel, ledger: Shared) -> anyhow::Result<()> {
    // One unacked payment at a time: a worker that dies holds at most one.
    ch.basic_qos(1, BasicQosOptions::default()).await?;
    let mut payments = ch
        .basic_consume(
            QUEUE,
            name,
            BasicConsumeOptions::default(), // no_ack: false, i.e. manual acks
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = payments.next().await {
        let delivery = delivery?;
        let Ok(payment) = serde_json::from_slice::<Payment>(&delivery.data) else {
            // Retrying cannot fix a malformed message: dead-letter it now.
            println!("  {name}: unreadable message, rejecting it");
            delivery
                .nack(BasicNackOptions {
                    requeue: false,
                    multiple: false,
                })
                .await?;
            continue;
        };
        let id = payment.id.clone();
        let attempt = int_header(&delivery.properties, ATTEMPT_HEADER).unwrap_or(1);
        if delivery.redelivered {
            let count = int_header(&delivery.properties, "x-delivery-count");
            println!(
                "  {name}: {id} arrives again, marked redelivered (x-delivery-count = {})",
                count.map_or("absent".into(), |n| n.to_string())
            );
            ledger.lock().unwrap().redelivered.push((id.clone(), count));
        }

        let crash = {
            let mut l = ledger.lock().unwrap();
            let crash = l.crash_armed && id == WORKER_CRASHES_ON;
            l.crash_armed &= !crash;
            crash
        };
        if crash {
            // Dying without an ack: the broker still owns the payment and
            // hands it to the other worker.
            println!("  {name}: takes {id} and dies before charging it (no ack)");
            let _ = ch.close(200, "worker crashed").await;
            return Ok(());
        }

        match charge(&payment, attempt) {
            Ok(auth) => {
                println!(
                    "  {name}: charged {id} ({}) on attempt {attempt}: {auth}",
                    payment.describe()
                );
                ledger
                    .lock()
                    .unwrap()
                    .charges
                    .entry(id)
                    .or_default()
                    .push(attempt);
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Err(why) if attempt < MAX_ATTEMPTS => {
                println!(
                    "  {name}: {id} attempt {attempt} failed ({why}); retry in {RETRY_DELAY_MS} ms"
                );
                ledger
                    .lock()
                    .unwrap()
                    .failures
                    .entry(id.clone())
                    .or_default()
                    .push(attempt);
                // Queue the next attempt first and ack this one only once the
                // broker confirmed it: a crash in between leaves the payment
                // queued twice, never zero times (deduplication drops the copy
                // if the original is still queued when the copy comes back).
                let mut headers = delivery.properties.headers().clone().unwrap_or_default();
                headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(attempt + 1));
                headers.insert(LAST_ERROR_HEADER.into(), string(&why));
                let props = delivery.properties.clone().with_headers(headers);
                let confirm = ch
                    .basic_publish(
                        "",
                        RETRY_QUEUE,
                        BasicPublishOptions::default(),
                        &delivery.data,
                        props,
                    )
                    .await?;
                expect_ack(&format!("the retry of {id}"), confirm).await?;
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Err(why) => {
                println!(
                    "  {name}: {id} attempt {attempt} failed ({why}); giving up, rejecting it"
                );
                ledger
                    .lock()
                    .unwrap()
                    .failures
                    .entry(id)
                    .or_default()
                    .push(attempt);
                // requeue=false: the broker dead-letters it to payments.dlx.
                delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        multiple: false,
                    })
                    .await?;
            }
        }
    }
    Ok(())
}

/// The operations desk: reads the dead-letter queue and shows why each
/// payment is there.
async fn dead_letter_desk(ch: Channel, ledger: Shared) -> anyhow::Result<()> {
    let mut dead = ch
        .basic_consume(
            DEAD_QUEUE,
            "ops-desk",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = dead.next().await {
        let delivery = delivery?;
        let props = &delivery.properties;
        let id = props
            .message_id()
            .as_ref()
            .map_or("?".into(), |m| m.as_str().to_owned());
        let last_error = header(props, LAST_ERROR_HEADER)
            .and_then(as_str)
            .unwrap_or_default();
        println!("  ops-desk: {id} is in {DEAD_QUEUE} (last error: {last_error}); x-death:");
        let mut deaths = Vec::new();
        match header(props, "x-death") {
            Some(AMQPValue::FieldArray(entries)) => {
                for entry in entries.as_slice() {
                    let Some(t) = entry.as_field_table() else {
                        continue;
                    };
                    let field = |k: &str| t.inner().get(k);
                    let shown = |k: &str| field(k).map_or("-".into(), show);
                    println!(
                        "      queue={} reason={} count={} exchange='{}' routing-keys={} time={}",
                        shown("queue"),
                        shown("reason"),
                        shown("count"),
                        shown("exchange"),
                        shown("routing-keys"),
                        shown("time"),
                    );
                    deaths.push((
                        field("queue").and_then(as_str).unwrap_or_default(),
                        field("reason").and_then(as_str).unwrap_or_default(),
                        field("count").and_then(as_i64).unwrap_or(0),
                    ));
                }
            }
            other => println!("      (no x-death array: {other:?})"),
        }
        ledger.lock().unwrap().dead.push(DeadPayment { id, deaths });
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

fn verify(l: &Ledger, all_sent: bool, queued: u32, depths: &[(&str, u32)]) -> anyhow::Result<()> {
    let mut c = Checklist::new();
    let payments = batch();
    c.check(all_sent, "checkout got a confirm for every payment");
    c.equal(
        queued as usize,
        payments.len(),
        "the payment published twice was queued once (deduplicated by message-id)",
    );
    for p in &payments {
        let charged = l.charges.get(&p.id).cloned().unwrap_or_default();
        if p.card == CARD_ISSUER_DOWN {
            c.equal(charged, vec![], format!("{} was never charged", p.id));
        } else {
            c.equal(
                charged.len(),
                1,
                format!("{} was charged exactly once", p.id),
            );
        }
    }
    c.equal(
        l.redelivered
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        vec![WORKER_CRASHES_ON],
        "only the payment a worker died holding was redelivered",
    );
    c.equal(
        l.charges.get("p-1005").cloned().unwrap_or_default(),
        vec![2],
        "p-1005 went through on its second attempt, after a delayed retry",
    );
    c.equal(
        l.failures.get("p-1004").cloned().unwrap_or_default(),
        (1..=MAX_ATTEMPTS).collect::<Vec<_>>(),
        format!("p-1004 was attempted {MAX_ATTEMPTS} times"),
    );
    c.equal(
        l.dead.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        vec!["p-1004"],
        format!("only p-1004 reached {DEAD_QUEUE}"),
    );
    if let Some(d) = l.dead.first() {
        let has = |queue: &str, reason: &str, count: i64| {
            d.deaths
                .iter()
                .any(|(q, r, n)| q == queue && r == reason && *n == count)
        };
        c.check(
            has(QUEUE, "rejected", 1),
            format!("its x-death records it was rejected from `{QUEUE}` once"),
        );
        c.check(
            has(RETRY_QUEUE, "expired", MAX_ATTEMPTS - 1),
            format!(
                "its x-death records {} delays in `{RETRY_QUEUE}` (reason expired)",
                MAX_ATTEMPTS - 1
            ),
        );
    }
    for (queue, depth) in depths {
        c.equal(*depth, 0, format!("`{queue}` is empty at the end"));
    }
    c.verdict()
}

/// 1250000 → "1.250.000", as amounts in rupiah are written.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('.');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::thousands(45_000), "45.000");
        assert_eq!(super::thousands(1_250_000), "1.250.000");
        assert_eq!(super::thousands(7), "7");
    }
}
