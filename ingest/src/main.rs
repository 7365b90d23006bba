//! The `ingest` binary: config, telemetry, the embedded broker when no Kafka is configured,
//! then [`ingest::run`].

use std::process::ExitCode;

use ingest::config::Command;
use ingest::embedded::Embedded;
use ingest::topics::Created;
use ingest::Config;

/// A push allocates a few dozen small, short-lived buffers on one thread and frees them on
/// another; mimalloc's per-thread heaps take that at a fraction of glibc's cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut started = match ops::cli::start(
        "ingest",
        &ingest::config::variables(),
        Config::from_command_line,
    ) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let problems = started.config.resolve_files();
    if let Some(Command::Validate { connect }) = started.config.command {
        return validate(&started, problems, connect);
    }
    let mut config = started.config;
    if let Some(problem) = problems.first() {
        return ops::cli::refuse("ingest", problem);
    }
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
        return ops::cli::refuse("ingest", &message);
    }
    if config.shared.memory_with_kafka() {
        tracing::warn!(
            "REDIS_URL=memory:// with KAFKA_BROKERS: each process dedups alone (a retry that \
             reaches another replica is published twice) and forgets on exit"
        );
    }
    if config.shared.kafka_brokers.is_none() {
        // The embedded default: nothing to share claims with.
        config
            .shared
            .redis_url
            .get_or_insert_with(|| ops::settings::MEMORY.to_owned());
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

/// `ingest validate [--connect]`: the resolved configuration, its problems, and with
/// `--connect` what Kafka and Redis answer. Exit 0, 2 on a problem, 1 when one is unreachable.
fn validate(
    started: &ops::cli::Started<Config>,
    mut problems: Vec<String>,
    connect: bool,
) -> ExitCode {
    let config = &started.config;
    let command = ingest::config::command();
    started.report(&command, |c| &mut c.shared, Config::problems, &mut problems);
    let embedded = config.shared.kafka_brokers.is_none();
    if embedded {
        println!("note: no KAFKA_BROKERS: the embedded default (in-process broker and workers, memory://)");
    }
    if config.shared.memory_with_kafka() {
        println!("WARN REDIS_URL=memory:// with KAFKA_BROKERS: each process dedups alone");
    }
    if let Err(problem) = ingest::accounts::Accounts::load(config) {
        problems.push(problem);
    }
    problems.dedup();
    ops::cli::conclude("ingest", &problems, connect, || async {
        let kafka = match &config.shared.kafka_brokers {
            None => Ok("the embedded broker (nothing to reach)".to_owned()),
            Some(brokers) => {
                worker::check::kafka(
                    brokers,
                    &[&config.shared.kafka_config, &config.kafka_producer_config],
                )
                .await
            }
        };
        let url = config
            .shared
            .redis_url
            .as_deref()
            .unwrap_or(ops::settings::MEMORY);
        let redis = match store::Engine::open(url, config.shared.redis_timeout()) {
            Ok(engine) => {
                let dedup = store::dedup::open(&engine, &config.shared.key_prefix);
                worker::check::redis(&engine, || dedup.round_trip()).await
            }
            Err(error) => Err(error.to_string()),
        };
        worker::check::say(kafka, redis)
    })
}
