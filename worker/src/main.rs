//! The `worker` binary: config, telemetry, then [`worker::run`] until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;

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
        match worker::start(config).await {
            Ok(workers) => {
                workers.run(ops::shutdown_signal()).await;
                ExitCode::SUCCESS
            }
            // Nothing ran: the configuration cannot work as it is.
            Err(error) => {
                eprintln!("worker: {error}");
                ExitCode::from(2)
            }
        }
    })
}
