//! The `worker` binary: config, telemetry, then [`worker::run`] until SIGINT or SIGTERM; or
//! one of its commands (`worker rebuild`, `worker redrive`) to its end.

use std::process::ExitCode;

use worker::config::Command;

/// Each record allocates its parse, its keys and its futures on one thread and frees them on
/// another; mimalloc's per-thread heaps take that at a fraction of glibc's cost (a fifth of
/// the worker's CPU went to glibc's malloc and free in `perf`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut started = match ops::cli::start(
        "worker",
        &worker::config::variables(),
        worker::Config::from_command_line,
    ) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let problems = started.config.resolve_files();
    if let Some(Command::Validate { connect, .. }) = started.config.command {
        return validate(&started, problems, connect);
    }
    let config = started.config;
    if let Some(problem) = problems.first() {
        return ops::cli::refuse("worker", problem);
    }
    if config.brokers().is_none() {
        return ops::cli::refuse("worker", &NO_BROKERS);
    }
    if let Err(error) = config.validate() {
        return ops::cli::refuse("worker", &format_args!("invalid configuration: {error}"));
    }
    if config.shared.memory_with_kafka() {
        tracing::warn!(
            "REDIS_URL=memory:// with KAFKA_BROKERS: bindings, locations and welcome claims live \
             in this process only and are lost on exit"
        );
    }
    let runtime = match ops::runtime("worker") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let (name, done) = match &config.command {
            None => {
                return match worker::start(config).await {
                    Ok(workers) => {
                        workers.run(ops::shutdown_signal()).await;
                        ExitCode::SUCCESS
                    }
                    // Nothing ran: the configuration cannot work as it is.
                    Err(error) => {
                        eprintln!("worker: {error}");
                        ExitCode::from(2)
                    }
                };
            }
            Some(Command::Rebuild { roles }) => (
                "rebuild",
                worker::replay::rebuild(&config, roles).await.map(drop),
            ),
            Some(Command::Redrive { role }) => (
                "redrive",
                worker::replay::redrive(&config, *role).await.map(drop),
            ),
            Some(Command::Validate { .. }) => unreachable!("handled before the runtime"),
        };
        match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("worker {name}: {error}");
                ExitCode::from(if error.is_config() { 2 } else { 1 })
            }
        }
    })
}

const NO_BROKERS: &str =
    "KAFKA_BROKERS is required (the embedded default runs the workers inside `ingest`)";

/// `worker validate [--connect]`: the resolved configuration, its problems, and with
/// `--connect` what Kafka and Redis answer. Exit 0, 2 on a problem, 1 when one is unreachable.
fn validate(
    started: &ops::cli::Started<worker::Config>,
    mut problems: Vec<String>,
    connect: bool,
) -> ExitCode {
    let config = &started.config;
    if config.brokers().is_none() {
        problems.push(NO_BROKERS.to_owned());
    }
    let command = worker::config::command();
    started.report(
        &command,
        |c| &mut c.shared,
        worker::Config::problems,
        &mut problems,
    );
    println!(
        "roles: {}",
        config
            .roles()
            .iter()
            .map(|role| role.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    if config.shared.memory_with_kafka() {
        println!("WARN REDIS_URL=memory:// with KAFKA_BROKERS: effects live in this process only");
    }
    if let Err(problem) = worker::accounts::Senders::load(&config.shared) {
        problems.push(problem);
    }
    ops::cli::conclude("worker", &problems, connect, || async {
        // A problem above without them: never reached.
        let Some(brokers) = config.brokers() else {
            return false;
        };
        let kafka = worker::check::kafka(
            brokers,
            &[
                &config.shared.kafka_config,
                &config.settings.kafka_consumer_config,
            ],
        )
        .await;
        let redis = match config
            .shared
            .store_url()
            .map_err(|e| e.to_string())
            .and_then(|url| {
                store::Engine::open(url, config.shared.redis_timeout()).map_err(|e| e.to_string())
            }) {
            Ok(engine) => {
                let stores = store::effects::EffectStores::open(&engine, &config.shared.key_prefix);
                worker::check::redis(&engine, || stores.round_trip()).await
            }
            Err(error) => Err(error),
        };
        worker::check::say(kafka, redis)
    })
}
