//! The `ingest` binary: config, telemetry, the embedded broker when no Kafka is configured,
//! then [`ingest::run`].

use std::process::ExitCode;

use clap::Parser;
use ingest::config::Command;
use ingest::embedded::Embedded;
use ingest::topics::Created;
use ingest::Config;

/// A push allocates a few dozen small, short-lived buffers on one thread and frees them on
/// another; mimalloc's per-thread heaps take that at a fraction of glibc's cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ops::init_logs();
    let mut config = Config::parse();
    if let Some(Command::Topics {
        partitions,
        replication_factor,
        rebuild_retention_ms,
        retention_ms,
    }) = config.command.clone()
    {
        let layout = ingest::topics::Layout {
            partitions,
            replication: replication_factor,
            rebuild_retention_ms,
            retention_ms,
        };
        return create_topics(&config, &layout);
    }
    if let Err(message) = config.validate() {
        eprintln!("ingest: {message}");
        return ExitCode::from(2);
    }
    // The mock cluster is not Send: it lives here, on the main thread, for the whole run.
    let _embedded = match config.shared.kafka_brokers {
        Some(_) => None,
        None => match Embedded::start(1, &config.shared.topic_prefix, config.embedded_partitions) {
            Ok(embedded) => {
                tracing::warn!(
                    brokers = %embedded.bootstrap_servers(),
                    "EMBEDDED MODE: in-process Kafka broker and memory:// storage, for trying \
                     wxpipe out only: it keeps a few MB per partition and loses everything on \
                     exit. Set KAFKA_BROKERS and REDIS_URL for real use."
                );
                config.shared.kafka_brokers = Some(embedded.bootstrap_servers());
                config.run_workers = true;
                Some(embedded)
            }
            Err(error) => {
                eprintln!("ingest: cannot start the embedded broker: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime = match ops::runtime("ingest") {
        Ok(runtime) => runtime,
        Err(code) => return code,
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
            // A configuration that cannot work: exit 2, as for the settings clap refuses.
            Err(
                error @ (ingest::StartError::Config(_)
                | ingest::StartError::Store(_)
                | ingest::StartError::Workers(_)),
            ) => {
                eprintln!("ingest: {error}");
                ExitCode::from(2)
            }
            Err(error) => {
                eprintln!("ingest: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `ingest topics`: creates every topic, prints one line per topic, exits non-zero if any failed.
fn create_topics(config: &Config, layout: &ingest::topics::Layout) -> ExitCode {
    let Some(brokers) = &config.shared.kafka_brokers else {
        eprintln!("ingest topics: KAFKA_BROKERS is required");
        return ExitCode::from(2);
    };
    let runtime = match ops::runtime("ingest") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let results = runtime.block_on(ingest::topics::create_all(
        brokers,
        &config.shared.topic_prefix,
        layout,
        &[&config.shared.kafka_config, &config.kafka_producer_config],
    ));
    match results {
        Ok((replication, results)) => {
            if layout.replication.is_none() && replication < 3 {
                println!(
                    "replicas: {replication} (the cluster has fewer than 3 brokers): a broker's \
                     loss loses acknowledged records; use 3 brokers in production"
                );
            }
            let mut failed = false;
            for (topic, created) in results {
                match created {
                    Created::Created => println!("created {topic}"),
                    Created::Exists => println!("exists  {topic}"),
                    Created::Failed(reason) => {
                        failed = true;
                        println!("FAILED  {topic}: {reason}");
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("ingest topics: {error}");
            ExitCode::FAILURE
        }
    }
}
