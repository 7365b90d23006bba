//! The `worker` binary: config, telemetry, then [`worker::run`] until SIGINT or SIGTERM; or
//! one of its commands (`worker rebuild`, `worker redrive`) to its end.

use std::process::ExitCode;

use clap::Parser;
use worker::config::Command;

fn main() -> ExitCode {
    ops::init_logs();
    let config = worker::Config::parse();
    if config.brokers().is_none() {
        eprintln!("worker: KAFKA_BROKERS is required (the embedded default runs the workers inside `ingest`)");
        return ExitCode::from(2);
    }
    if let Err(error) = config.validate() {
        eprintln!("worker: invalid configuration: {error}");
        return ExitCode::from(2);
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
