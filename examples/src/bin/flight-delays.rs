//! `cargo run -p antre-examples --bin flight-delays -- --url amqp://guest:guest@127.0.0.1:5672/%2f`

#[tokio::main]
async fn main() -> std::process::ExitCode {
    antre_examples::support::main(
        "Flight-delay notices fanned out to five teams through a fanout exchange",
        |url| async move { antre_examples::flight_delays::run(&url).await },
    )
    .await
}
