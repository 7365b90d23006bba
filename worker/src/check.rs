//! What `ingest validate --connect` and `worker validate --connect` reach: Kafka's metadata,
//! and Redis through the binary's own start-up round trip.

use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

/// Kafka's answer to a metadata request, with the clients' settings: its brokers and topics.
pub async fn kafka(brokers: &str, layers: &[&[String]]) -> Result<String, String> {
    let consumer: BaseConsumer = crate::kafka::client_config(brokers, &[], layers)
        .create()
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, Duration::from_secs(10)))
        .await
        .map_err(|e| e.to_string())?
        .map(|metadata| {
            format!(
                "{} broker(s), {} topic(s)",
                metadata.brokers().len(),
                metadata.topics().len()
            )
        })
        .map_err(|e| format!("cannot reach {brokers}: {e}"))
}

/// The start-up check ([`store::Engine::check_at_start`]), then a ping and the round trip
/// again: the start-up check lets an outage pass (a binary starts degraded), this says so.
pub async fn redis<F, R>(engine: &store::Engine, round_trip: F) -> Result<String, String>
where
    F: Fn() -> R,
    R: Future<Output = Result<(), store::StoreError>>,
{
    engine
        .check_at_start(&round_trip)
        .await
        .map_err(|e| e.to_string())?;
    engine
        .ping()
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    round_trip()
        .await
        .map_err(|e| format!("the start-up round trip failed: {e}"))?;
    Ok(match engine.mode() {
        None => "memory:// (this process only)".to_owned(),
        Some(mode) => format!("{mode:?} Redis, round trip passed"),
    })
}

/// Prints the answers; whether both were reached.
pub fn say(kafka: Result<String, String>, redis: Result<String, String>) -> bool {
    let mut reached = true;
    for (name, answer) in [("kafka", kafka), ("redis", redis)] {
        match answer {
            Ok(answer) => println!("{name}: ok: {answer}"),
            Err(error) => {
                reached = false;
                println!("{name}: UNREACHABLE: {error}");
            }
        }
    }
    reached
}
