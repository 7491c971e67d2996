//! `cargo run -p antre-examples --bin shop-events -- --url amqp://guest:guest@127.0.0.1:5672/%2f`

#[tokio::main]
async fn main() -> std::process::ExitCode {
    antre_examples::support::main(
        "E-commerce events routed by a topic exchange: order.* and user.updated",
        |url| async move { antre_examples::shop_events::run(&url).await },
    )
    .await
}
