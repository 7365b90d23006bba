//! What wxpipe's binaries share for operators.
//!
//! - [`init_logs`]: `tracing` to stdout, JSON when `LOG_FORMAT=json`.
//! - [`prometheus`]: the process's metrics recorder, rendered at `GET /metrics`.
//! - [`hash_openid`]: OpenIDs appear in logs only hashed.
//! - [`shutdown_signal`]: SIGINT or SIGTERM.
//! - [`instance_id`]: this process's name in claims, locks and leases.
//! - [`settings`]: the settings both binaries share, and the typed config error.
//! - [`config_file`]: the config file both binaries read, and what `validate` prints.
//! - [`cli`]: the steps both binaries' `main` share (start, refusal, `validate`'s verdict).
//! - [`admin`]: a small HTTP server for `/healthz`, `/readyz` and `/metrics`.
//!
//! It knows how to run a binary, not what the binaries do: it must never depend on the
//! ingress, the workers or the store.

use sha1::{Digest, Sha1};
use tracing_subscriber::EnvFilter;

pub mod admin;
pub mod cli;
pub mod config_file;
mod process;
pub mod settings;
mod telemetry;

pub use telemetry::{dependency_up, prometheus, render, Kind, Metric, METRICS};

/// Installs the log subscriber: human-readable lines, or one JSON object per line when
/// `LOG_FORMAT=json`; the level from `RUST_LOG` (default `info`).
pub fn init_logs() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// An OpenID as it may appear in logs: the first 12 hex digits of its SHA-1, enough to follow
/// one user through the logs without naming them.
pub fn hash_openid(openid: &str) -> String {
    hex::encode(&Sha1::digest(openid.as_bytes())[..6])
}

/// An event id as it may appear in logs: the OpenID in it (`{account}:{openid}:…`) hashed.
pub fn redact_id(id: &str) -> String {
    match schemas::EventId::split_user(id) {
        Some((account, openid, rest)) => format!("{account}:#{}:{rest}", hash_openid(openid)),
        None => format!("#{}", hash_openid(id)),
    }
}

/// A name for this process, unique across restarts and hosts' process ids: in claims,
/// locks and leases, so only their holder releases them.
pub fn instance_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{}.{}",
        std::process::id(),
        now.as_secs(),
        now.subsec_nanos()
    )
}

/// The binaries' Tokio runtime; when it cannot start, says so and gives the exit code.
pub fn runtime(binary: &str) -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    tokio::runtime::Runtime::new().map_err(|error| {
        eprintln!("{binary}: cannot start the runtime: {error}");
        std::process::ExitCode::FAILURE
    })
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openids_are_hashed_stably_and_not_kept() {
        let hashed = hash_openid("oMgHVjngRipVsoxg6TuX3vz6glDg");
        assert_eq!(hashed.len(), 12);
        assert_eq!(hashed, hash_openid("oMgHVjngRipVsoxg6TuX3vz6glDg"));
        assert_ne!(hashed, hash_openid("oMgHVjngRipVsoxg6TuX3vz6glDh"));
        assert!(!hashed.contains("oMg"));
    }

    #[test]
    fn ids_keep_everything_but_the_openid() {
        let id = "gh_1:oSecretUser:1700000000:event.click:kabc";
        let redacted = redact_id(id);
        assert!(!redacted.contains("oSecretUser"), "{redacted}");
        assert_eq!(
            redacted,
            format!(
                "gh_1:#{}:1700000000:event.click:kabc",
                hash_openid("oSecretUser")
            )
        );
        assert!(!redact_id("oSecretUser").contains("oSecret"));
    }

    #[test]
    fn metrics_render_in_prometheus_text_format() {
        let handle = prometheus();
        metrics::counter!("ops_test_total", "label" => "x").increment(2);
        let text = handle.render();
        assert!(text.contains("ops_test_total{label=\"x\"} 2"), "{text}");
    }
}
