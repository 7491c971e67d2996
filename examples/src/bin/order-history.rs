//! `cargo run -p antre-examples --bin order-history -- --url amqp://guest:guest@127.0.0.1:5672/%2f`

#[tokio::main]
async fn main() -> std::process::ExitCode {
    antre_examples::support::main(
        "Order events kept in a stream, replayed from the start by a new analytics service",
        |url| async move { antre_examples::order_history::run(&url).await },
    )
    .await
}
