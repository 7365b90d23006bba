//! How long a role waits before it tries again, and a sleep that ends when the worker stops.

use std::time::Duration;

use tokio::sync::watch;

/// Back-off before attempt `n` (1-based) of a failing effect.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

/// Sleeps for `pause`, or returns `false` at once when the worker is stopping.
pub(super) async fn sleep_unless_stopping(
    pause: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => true,
        _ = shutdown.wait_for(|stop| *stop) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) < backoff(2));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }
}
