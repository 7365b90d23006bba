//! The `ingest` binary: config, telemetry, the embedded broker when no Kafka is configured,
//! then [`ingest::run`].

use std::process::ExitCode;

use clap::Parser;
use ingest::embedded::Embedded;
use ingest::Config;

fn main() -> ExitCode {
    ops::init_logs();
    let mut config = Config::parse();
    if let Err(message) = config.validate() {
        eprintln!("ingest: {message}");
        return ExitCode::from(2);
    }
    // The mock cluster is not Send: it lives here, on the main thread, for the whole run.
    let _embedded = match config.kafka_brokers {
        Some(_) => None,
        None => match Embedded::start(1, &config.topic_prefix, config.embedded_partitions) {
            Ok(embedded) => {
                tracing::warn!(
                    brokers = %embedded.bootstrap_servers(),
                    "EMBEDDED MODE: in-process Kafka broker and memory:// storage, for trying \
                     wxpipe out only: it keeps a few MB per partition and loses everything on \
                     exit. Set KAFKA_BROKERS and REDIS_URL for real use."
                );
                config.kafka_brokers = Some(embedded.bootstrap_servers());
                config.run_workers = true;
                Some(embedded)
            }
            Err(error) => {
                eprintln!("ingest: cannot start the embedded broker: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ingest: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("ingest: cannot listen on {}: {error}", config.listen);
                return ExitCode::FAILURE;
            }
        };
        match ingest::run(listener, config, ops::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("ingest: {error}");
                ExitCode::FAILURE
            }
        }
    })
}
