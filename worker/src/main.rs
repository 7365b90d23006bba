//! The `worker` binary: Kafka consumers that act on wxpipe's events (unbinding, welcome
//! messages, location storage). Not built yet: see the workers issue.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("worker: not implemented yet; the ingress publishes the events it will consume");
    ExitCode::from(2)
}
