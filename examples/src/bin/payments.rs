//! `cargo run -p antre-examples --bin payments -- --url amqp://guest:guest@127.0.0.1:5672/%2f`

#[tokio::main]
async fn main() -> std::process::ExitCode {
    antre_examples::support::main(
        "Payment processing: dedup, confirms, manual acks, delayed retries, a dead-letter queue",
        |url| async move { antre_examples::payments::run(&url).await },
    )
    .await
}
