//! One error type for every engine and store.

/// Why a store call failed, for every store engine of every crate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("store call timed out")]
    Timeout,
    /// The URL's mode is not the server's.
    #[error("{0}")]
    WrongMode(&'static str),
    /// An op of a batch failed on its own (Redis refused it), or the batch could not be
    /// queued; `outage` says whether it concerns every call.
    #[error("batched store call failed: {reason}")]
    Batch { reason: String, outage: bool },
    /// The task that sends batched calls is gone (the process is stopping).
    #[error("store closed")]
    Closed,
    #[error("unknown store URL scheme in {0:?} (expected redis://, rediss://, redis+unix://, redis+cluster://, redis+sentinel:// or memory://)")]
    Scheme(String),
}

impl StoreError {
    pub(crate) fn batch(reason: &str, outage: bool) -> StoreError {
        StoreError::Batch {
            reason: reason.to_owned(),
            outage,
        }
    }

    /// Whether Redis refused our credentials or permissions: an outage while running (they
    /// may be rotated back), but at start-up a configuration that cannot work.
    pub fn is_auth(&self) -> bool {
        let StoreError::Redis(error) = self else {
            return false;
        };
        error.kind() == redis::ErrorKind::AuthenticationFailed
            || error
                .code()
                .is_some_and(|code| ["NOAUTH", "WRONGPASS", "NOPERM"].contains(&code))
    }

    /// A short name of the failure for metrics: `outage`, or what Redis said (`CROSSSLOT`,
    /// `MOVED`, `NOSCRIPT`, …), or `refused`.
    pub fn kind(&self) -> &'static str {
        const CODES: [&str; 6] = [
            "CROSSSLOT",
            "MOVED",
            "ASK",
            "NOSCRIPT",
            "WRONGTYPE",
            "READONLY",
        ];
        if let StoreError::Redis(error) = self {
            if let Some(code) = error.code().and_then(|c| CODES.iter().find(|k| **k == c)) {
                return code;
            }
        }
        if self.is_outage() {
            "outage"
        } else {
            "refused"
        }
    }

    /// Whether the failure is Redis being unreachable, slow, loading, failing over, out of
    /// memory or refusing our credentials: it concerns every call, not the data of one, and
    /// passes when Redis is back. Anything else (a wrong type at a key, a script error) is
    /// about the call itself.
    pub fn is_outage(&self) -> bool {
        let error = match self {
            StoreError::Timeout | StoreError::Closed => return true,
            StoreError::Batch { outage, .. } => return *outage,
            StoreError::Scheme(_) | StoreError::WrongMode(_) => return false,
            StoreError::Redis(error) => error,
        };
        if no_reply(error) {
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
        // No node of a cluster reachable, no primary known to the sentinels now.
        let unreachable = [
            redis::ErrorKind::ClusterConnectionNotFound,
            redis::ErrorKind::MasterNameNotFoundBySentinel,
            redis::ErrorKind::NoValidReplicasFoundBySentinel,
        ];
        if unreachable.contains(&error.kind())
            || error.kind() == redis::ErrorKind::AuthenticationFailed
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

/// Whether a call got no reply from a server: it could not connect, was cut off or timed
/// out.
pub(crate) fn no_reply(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}
