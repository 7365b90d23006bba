//! How wxpipe talks to Redis, in every crate: one multiplexed connection that connects lazily
//! and reconnects by itself (so a process starts, and recovers, while Redis is down), and a
//! timeout on every call.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// KEYS: key. ARGV: expected value. Deletes the key only if it still holds the value (a
/// claim or lock released only by its holder).
pub const DELETE_IF: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A lazily connecting, self-healing multiplexed connection.
pub fn connect(url: &str, timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// What the stores' trait methods return, so they work behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a store call failed, for every store engine of every crate.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("store call timed out")]
    Timeout,
    /// A batched call failed; every op in the batch gets its reason.
    #[error("batched store call failed: {0}")]
    Batch(String),
    /// The task that sends batched calls is gone (the process is stopping).
    #[error("store closed")]
    Closed,
    #[error("unknown store URL scheme in {0:?} (expected redis:// or memory://)")]
    Scheme(String),
}

impl StoreError {
    /// Whether the failure is Redis being unreachable, slow, loading, failing over, out of
    /// memory or refusing our credentials: it concerns every call, not the data of one, and
    /// passes when Redis is back. Anything else (a wrong type at a key, a script error) is
    /// about the call itself.
    pub fn is_outage(&self) -> bool {
        let error = match self {
            StoreError::Timeout | StoreError::Batch(_) | StoreError::Closed => return true,
            StoreError::Scheme(_) => return false,
            StoreError::Redis(error) => error,
        };
        if error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
        {
            return true;
        }
        const OUTAGES: [&str; 12] = [
            "LOADING",
            "TRYAGAIN",
            "CLUSTERDOWN",
            "MASTERDOWN",
            "READONLY",
            "OOM",
            "BUSY",
            "NOAUTH",
            "WRONGPASS",
            "NOPERM",
            // RDB snapshots failing (a full disk), too few replicas for min-replicas-to-write.
            "MISCONF",
            "NOREPLICAS",
        ];
        if error.kind() == redis::ErrorKind::AuthenticationFailed
            || error.code().is_some_and(|code| OUTAGES.contains(&code))
        {
            return true;
        }
        // A plain ERR that concerns the server, or an outage raised inside a script, which
        // older servers wrap as "ERR Error running script … -OOM …".
        let detail = error.detail().unwrap_or_default();
        detail.contains("max number of clients")
            || OUTAGES
                .iter()
                .any(|code| detail.contains(&format!("-{code} ")) || detail.starts_with(code))
    }
}

/// A call bounded by `timeout`.
pub async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout),
    }
}
