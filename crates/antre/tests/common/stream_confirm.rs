//! Waiting for a stream-protocol publish confirm as long as a test waits
//! for anything else.
//!
//! `rabbitmq-stream-client`'s `send_with_confirm` gives up after one
//! second, whatever timeout the caller wraps it in: less than an fsync or
//! a new leader may take on a loaded machine, while the broker still
//! confirms the message after it (a cluster test failed in CI on that).
//! An application that needs the confirm waits for it, as these helpers
//! do: they send with a callback and wait for its answer.

use std::future::{Future, Ready};
use std::time::Duration;

use rabbitmq_stream_client::error::ProducerPublishError;
use rabbitmq_stream_client::types::Message;
use rabbitmq_stream_client::{ConfirmationStatus, Dedup, NoDedup, Producer};
use tokio::sync::oneshot;

/// What the broker answered for one message sent.
pub type Answer = Result<ConfirmationStatus, ProducerPublishError>;

/// The callback a producer's `send` is given: it passes the answer on.
type Callback = Box<dyn FnOnce(Answer) -> Ready<()> + Send + Sync>;

/// Runs `send` with a callback and waits up to `wait` for its answer
/// (the client's two producer types each have their own `send`).
async fn sent_and_answered<Fut>(
    send: impl FnOnce(Callback) -> Fut,
    wait: Duration,
) -> ConfirmationStatus
where
    Fut: Future<Output = Result<(), ProducerPublishError>>,
{
    let (tx, rx) = oneshot::channel();
    let callback: Callback = Box::new(move |a| {
        let _ = tx.send(a);
        std::future::ready(())
    });
    send(callback).await.expect("sent");
    tokio::time::timeout(wait, rx)
        .await
        .expect("an answer in time")
        .expect("an answer")
        .expect("a confirm or nack")
}

/// Sends `m` and waits up to `wait` for the broker's confirm or nack.
pub async fn answer_of(
    producer: &Producer<NoDedup>,
    m: Message,
    wait: Duration,
) -> ConfirmationStatus {
    sent_and_answered(|callback| producer.send(m, callback), wait).await
}

/// [`answer_of`] for a named (deduplicating) producer.
pub async fn answer_of_named(
    producer: &mut Producer<Dedup>,
    m: Message,
    wait: Duration,
) -> ConfirmationStatus {
    sent_and_answered(|callback| producer.send(m, callback), wait).await
}
