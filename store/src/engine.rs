//! The engines a `REDIS_URL` names, and how wxpipe talks to Redis: one multiplexed
//! connection that connects lazily and reconnects by itself (so a process starts, and
//! recovers, while Redis is down), and a timeout on every call.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::StoreError;

/// Where the state lives.
#[derive(Debug, Clone)]
pub enum Engine {
    /// One process's memory: the embedded default and tests. Each store opened on it has
    /// its own state.
    Memory,
    /// A Redis server, shared by every process.
    Redis(Redis),
}

impl Engine {
    /// The engine a URL names: `memory://`, or `redis://`, `rediss://`, `redis+unix://`.
    /// Connects lazily, so this succeeds while Redis is down.
    pub fn open(url: &str, timeout: Duration) -> Result<Engine, StoreError> {
        if url.starts_with("memory://") {
            Ok(Engine::Memory)
        } else if ["redis://", "rediss://", "redis+unix://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            Ok(Engine::Redis(Redis::connect(url, timeout)?))
        } else {
            Err(StoreError::Scheme(url.to_owned()))
        }
    }

    /// Whether the engine answers now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Engine::Memory => Ok(()),
            Engine::Redis(redis) => redis.ping().await,
        }
    }
}

/// A lazily connecting, self-healing multiplexed connection, and the bound of every call.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Redis {
    fn connect(url: &str, timeout: Duration) -> Result<Redis, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Redis { conn, timeout })
    }

    /// A handle on the shared connection.
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let ping = redis::cmd("PING");
        self.bounded(ping.query_async::<String>(&mut self.conn()))
            .await
            .map(drop)
    }

    /// A call bounded by the engine's timeout.
    pub(crate) async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Timeout),
        }
    }
}
