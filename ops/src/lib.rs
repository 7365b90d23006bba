//! What wxpipe's binaries share for operators.
//!
//! - [`init_logs`]: `tracing` to stdout, JSON when `LOG_FORMAT=json`.
//! - [`prometheus`]: the process's metrics recorder, rendered at `GET /metrics`.
//! - [`hash_openid`]: OpenIDs appear in logs only hashed.
//! - [`shutdown_signal`]: SIGINT or SIGTERM.
//! - [`admin`]: a small HTTP server for `/healthz`, `/readyz` and `/metrics`.
//! - [`redis`]: the Redis connection policy (lazy, reconnecting, every call bounded).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sha1::{Digest, Sha1};
use tracing_subscriber::EnvFilter;

pub mod admin;
pub mod redis;

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

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The metrics recorder of this process, installed on first use. Latencies are histograms
/// with buckets fit for milliseconds-to-seconds.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0,
            30.0, 60.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test process): metrics then go there.
        let _ = metrics::set_global_recorder(recorder);
        // The recorder keeps every histogram sample until it is drained, which a scrape does;
        // with no Prometheus scraping, memory would grow with every push. Drain it here too.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            });
        handle
    })
}

/// An OpenID as it may appear in logs: the first 12 hex digits of its SHA-1, enough to follow
/// one user through the logs without naming them.
pub fn hash_openid(openid: &str) -> String {
    hex::encode(&Sha1::digest(openid.as_bytes())[..6])
}

/// An event id as it may appear in logs: the OpenID in it (`{account}:{openid}:…`) hashed.
pub fn redact_id(id: &str) -> String {
    let mut parts = id.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(account), Some(openid), Some(rest)) => {
            format!("{account}:#{}:{rest}", hash_openid(openid))
        }
        _ => format!("#{}", hash_openid(id)),
    }
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
