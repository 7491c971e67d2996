//! Waiting for a stream-protocol publish confirm as long as a test waits
//! for anything else.
//!
//! `rabbitmq-stream-client`'s `send_with_confirm` gives up after one
//! second, whatever timeout the caller wraps it in: less than an fsync or
//! a new leader may take on a loaded machine, while the broker still
//! confirms the message after it (a cluster test failed in CI on that).
//! An application that needs the confirm waits for it, as these helpers
//! do: they send with a callback and wait for its answer.

use std::future::Ready;
use std::time::Duration;

use rabbitmq_stream_client::error::ProducerPublishError;
use rabbitmq_stream_client::types::Message;
use rabbitmq_stream_client::{ConfirmationStatus, Dedup, NoDedup, Producer};
use tokio::sync::oneshot;

/// What the broker answered for one message sent.
pub type Answer = Result<ConfirmationStatus, ProducerPublishError>;

/// A callback for a producer's `send` and where its answer arrives.
fn on_answer() -> (
    impl FnOnce(Answer) -> Ready<()> + Send + Sync + 'static,
    oneshot::Receiver<Answer>,
) {
    let (tx, rx) = oneshot::channel();
    let callback = move |a: Answer| {
        let _ = tx.send(a);
        std::future::ready(())
    };
    (callback, rx)
}

/// The answer `on_answer`'s callback receives, within `wait`.
async fn answered(answer: oneshot::Receiver<Answer>, wait: Duration) -> ConfirmationStatus {
    tokio::time::timeout(wait, answer)
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
    let (callback, answer) = on_answer();
    producer.send(m, callback).await.expect("sent");
    answered(answer, wait).await
}

/// [`answer_of`] for a named (deduplicating) producer.
pub async fn answer_of_named(
    producer: &mut Producer<Dedup>,
    m: Message,
    wait: Duration,
) -> ConfirmationStatus {
    let (callback, answer) = on_answer();
    producer.send(m, callback).await.expect("sent");
    answered(answer, wait).await
}
