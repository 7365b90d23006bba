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
    // The config file is fed as environment variables: before any thread starts.
    let file = match ops::config_file::load(&worker::config::variables()) {
        Ok(file) => file,
        Err(message) => {
            eprintln!("worker: {message}");
            return ExitCode::from(2);
        }
    };
    ops::init_logs();
    let (mut config, matches) = worker::Config::from_command_line(&file);
    let problems = config.resolve_files();
    if let Some(Command::Validate { connect, .. }) = config.command {
        return validate(&config, &file, &matches, problems, connect);
    }
    if let Some(problem) = problems.first() {
        eprintln!("worker: {problem}");
        return ExitCode::from(2);
    }
    if config.brokers().is_none() {
        eprintln!("worker: {NO_BROKERS}");
        return ExitCode::from(2);
    }
    if let Err(error) = config.validate() {
        eprintln!("worker: invalid configuration: {error}");
        return ExitCode::from(2);
    }
    if config.shared.memory_with_kafka() {
        tracing::warn!(
            "REDIS_URL=memory:// with KAFKA_BROKERS: bindings, locations and welcome claims live \
             in this process only and are lost on exit"
        );
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("worker: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
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
    config: &worker::Config,
    file: &ops::config_file::FileSettings,
    matches: &clap::ArgMatches,
    mut problems: Vec<String>,
    connect: bool,
) -> ExitCode {
    ops::config_file::print_report(&worker::config::command(), matches, file);
    println!(
        "roles: {}",
        config
            .roles()
            .iter()
            .map(|role| role.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    if config.brokers().is_none() {
        problems.push(NO_BROKERS.to_owned());
    }
    if config.shared.memory_with_kafka() {
        println!("WARN REDIS_URL=memory:// with KAFKA_BROKERS: effects live in this process only");
    }
    ops::settings::Shared::check_apart(
        config,
        |config| &mut config.shared,
        worker::Config::problems,
        &mut problems,
    );
    if let Err(problem) = worker::accounts::Senders::load(&config.shared) {
        problems.push(problem);
    }
    if let Err(code) = ops::config_file::print_problems(&problems) {
        return code;
    }
    println!("configuration: ok");
    if !connect {
        return ExitCode::SUCCESS;
    }
    let Some(brokers) = config.brokers() else {
        return ExitCode::from(2);
    };
    let runtime = match ops::runtime("worker") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let reached = runtime.block_on(async {
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
    });
    if reached {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
