//! The engines a `REDIS_URL` names, and how wxpipe talks to Redis: connections that connect
//! lazily and reconnect by themselves (so a process starts, and recovers, while Redis is
//! down), and a timeout on every call.
//!
//! | URL | engine |
//! |---|---|
//! | `memory://` | one process's memory |
//! | `redis://host:port`, `rediss://…` (TLS), `redis+unix:///path` | one Redis server |
//! | `redis+cluster://host:port,host:port,…`, `rediss+cluster://…` | a Redis Cluster (the seeds) |
//! | `redis+sentinel://host:port,host:port,…/MASTER`, `rediss+sentinel://…` | the primary the sentinels name |
//!
//! Credentials go before the hosts (`redis+cluster://user:password@host:port,…`) and apply to
//! every node (for Sentinel, to the primary, not the sentinels).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::StoreError;

/// Where the state lives.
#[derive(Debug, Clone)]
pub enum Engine {
    /// One process's memory: the embedded default and tests. Each store opened on it has
    /// its own state.
    Memory,
    /// Redis: one server, a cluster, or the primary of a Sentinel set.
    Redis(Redis),
}

/// How Redis is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Single,
    Cluster,
    Sentinel,
}

impl Engine {
    /// The engine a URL names (see the module's table). Connects lazily, so this succeeds
    /// while Redis is down.
    pub fn open(url: &str, timeout: Duration) -> Result<Engine, StoreError> {
        let scheme = url.split("://").next().unwrap_or_default();
        let redis = match scheme {
            "memory" => return Ok(Engine::Memory),
            "redis" | "rediss" | "redis+unix" => (Redis::single(url, timeout)?, Mode::Single),
            "redis+cluster" | "rediss+cluster" => (Redis::cluster(url, timeout)?, Mode::Cluster),
            "redis+sentinel" | "rediss+sentinel" => {
                (Redis::sentinel(url, timeout)?, Mode::Sentinel)
            }
            _ => return Err(StoreError::Scheme(url.to_owned())),
        };
        let (conn, mode) = redis;
        Ok(Engine::Redis(Redis {
            conn,
            mode,
            timeout,
        }))
    }

    /// Whether the engine answers now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Engine::Memory => Ok(()),
            Engine::Redis(redis) => redis.ping().await,
        }
    }

    /// The start-up check of a binary: the engine's mode is the server's, and `round_trip`
    /// (a real claim and release through the store the binary uses) passes. A configuration
    /// that cannot work is an error; Redis being down is not (the process starts degraded
    /// and recovers with Redis), though the check waits a little for a cluster to connect.
    pub async fn check_at_start<F, R>(&self, round_trip: F) -> Result<(), StoreError>
    where
        F: Fn() -> R,
        R: Future<Output = Result<(), StoreError>>,
    {
        let mut tries = 0;
        loop {
            let result = match self {
                Engine::Memory => round_trip().await,
                Engine::Redis(redis) => match redis.check_mode().await {
                    Ok(()) => round_trip().await,
                    Err(error) => Err(error),
                },
            };
            match result {
                Err(error) if error.is_auth() => return Err(error),
                Err(error) if error.is_outage() && tries < 4 => tries += 1,
                Err(error) if error.is_outage() => return Ok(()),
                other => return other,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub fn mode(&self) -> Option<Mode> {
        match self {
            Engine::Memory => None,
            Engine::Redis(redis) => Some(redis.mode),
        }
    }
}

/// A connection to Redis however deployed, and the bound of every call.
#[derive(Clone)]
pub struct Redis {
    conn: Conn,
    mode: Mode,
    timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("mode", &self.mode)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The URL's parts: `scheme://[userinfo@]host:port,host:port[/path]`.
struct Parts<'a> {
    tls: bool,
    userinfo: Option<&'a str>,
    hosts: Vec<&'a str>,
    path: &'a str,
}

fn parts(url: &str) -> Parts<'_> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    Parts {
        tls: scheme.starts_with("rediss"),
        userinfo,
        hosts: hosts.split(',').filter(|h| !h.is_empty()).collect(),
        path,
    }
}

impl Parts<'_> {
    /// `redis[s]://[userinfo@]host` for each host.
    fn node_urls(&self, with_userinfo: bool) -> Vec<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let userinfo = match (with_userinfo, self.userinfo) {
            (true, Some(userinfo)) => format!("{userinfo}@"),
            _ => String::new(),
        };
        self.hosts
            .iter()
            .map(|host| format!("{scheme}://{userinfo}{host}"))
            .collect()
    }

    fn invalid(url: &str, why: &str) -> StoreError {
        StoreError::Redis(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "invalid REDIS_URL",
            format!("{why}: {}", redact(url)),
        )))
    }
}

/// A URL without its password, for errors and logs.
fn redact(url: &str) -> String {
    match parts(url).userinfo {
        Some(userinfo) => url.replacen(userinfo, "…", 1),
        None => url.to_owned(),
    }
}

impl Redis {
    fn single(url: &str, timeout: Duration) -> Result<Conn, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
            client, config,
        )?))
    }

    /// The `redis` crate's cluster client: it learns the slots from the seeds in the
    /// background, follows `MOVED` and `ASK`, and refreshes the topology after a failover.
    fn cluster(url: &str, timeout: Duration) -> Result<Conn, StoreError> {
        let parts = parts(url);
        if parts.hosts.is_empty() {
            return Err(Parts::invalid(url, "no seed node"));
        }
        let client = redis::cluster::ClusterClientBuilder::new(parts.node_urls(true))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2)
            .build()?;
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        Ok(Conn::Cluster(Arc::new(Clustered::new(
            client, config, timeout,
        ))))
    }

    /// The `redis` crate's Sentinel client finds the primary; a connection that fails (the
    /// primary is gone) or is refused writes (it was demoted) is dropped, and the next call
    /// asks the sentinels again.
    fn sentinel(url: &str, timeout: Duration) -> Result<Conn, StoreError> {
        let parts = parts(url);
        let master = parts.path.trim_matches('/');
        if parts.hosts.is_empty() || master.is_empty() {
            return Err(Parts::invalid(url, "expected sentinels and a master name"));
        }
        let mut node = SentinelNodeConnectionInfo::default();
        if parts.tls {
            node = node.set_tls_mode(redis::TlsMode::Secure);
        }
        if let Some(userinfo) = parts.userinfo {
            let info = redis::IntoConnectionInfo::into_connection_info(format!(
                "redis://{userinfo}@localhost"
            ))?;
            node = node.set_redis_connection_info(info.redis_settings().clone());
        }
        let client = SentinelClient::build(
            parts.node_urls(false),
            master,
            Some(node),
            SentinelServerType::Master,
        )?;
        Ok(Conn::Sentinel(Arc::new(Sentineled {
            client: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            timeout,
        })))
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Refuses `redis://` to a cluster node (most keys would answer `MOVED`), and
    /// `redis+cluster://` to a server without cluster support (which the cluster client would
    /// use as one node until a script had to be loaded again).
    async fn check_mode(&self) -> Result<(), StoreError> {
        match self.mode {
            Mode::Sentinel => Ok(()),
            Mode::Single => {
                let info = redis::cmd("INFO").arg("cluster").to_owned();
                let info: String = self.bounded(info.query_async(&mut self.conn())).await?;
                if info.contains("cluster_enabled:1") {
                    return Err(StoreError::WrongMode(
                        "REDIS_URL is redis:// but the server is a Redis Cluster node: use redis+cluster://host:port,…",
                    ));
                }
                Ok(())
            }
            Mode::Cluster => {
                let info = redis::cmd("CLUSTER").arg("INFO").to_owned();
                match self.bounded(info.query_async::<String>(&mut self.conn())).await {
                    Err(StoreError::Redis(error))
                        if error.to_string().contains("cluster support disabled") =>
                    {
                        Err(StoreError::WrongMode(
                            "REDIS_URL is redis+cluster:// but the server has no cluster support: use redis://host:port",
                        ))
                    }
                    other => other.map(drop),
                }
            }
        }
    }

    /// A handle on the shared connection.
    pub(crate) fn conn(&self) -> Conn {
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

/// One of the connections above, as one `ConnectionLike`.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<Clustered>),
    Sentinel(Arc<Sentineled>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => {
                Box::pin(conn.call(move |mut c| async move { c.req_packed_command(cmd).await }))
            }
            Conn::Sentinel(conn) => {
                Box::pin(conn.call(move |mut c| async move { c.req_packed_command(cmd).await }))
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Conn::Cluster(conn) => {
                Box::pin(conn.call(move |mut c| async move {
                    c.req_packed_commands(cmd, offset, count).await
                }))
            }
            Conn::Sentinel(conn) => {
                Box::pin(conn.call(move |mut c| async move {
                    c.req_packed_commands(cmd, offset, count).await
                }))
            }
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// A Redis Cluster connection, replaced by a fresh one when no call has been answered for
/// a while.
///
/// The `redis` crate (1.8) can wedge its cluster connection for good when a node dies: a
/// background repair of the dead node's connection queues for the connection map's lock,
/// then the slot refresh the same failure starts waits behind it, and the repair is never
/// polled while a refresh runs. Every call then times out, on every slot, long after the
/// cluster has failed over. Seen in about one failover in three on a loaded machine
/// (`worker/tests/redis_deployments.rs`). A fresh connection learns the new topology from
/// the seeds; the wedged one's task and sockets are left behind, once per wedge.
pub(crate) struct Clustered {
    client: redis::cluster::ClusterClient,
    config: redis::cluster::ClusterConfig,
    /// How long calls may go unanswered before the connection is replaced, and how often
    /// it may be replaced.
    patience: Duration,
    state: Mutex<ClusterState>,
}

struct ClusterState {
    conn: ClusterConnection,
    /// Since when calls have gone unanswered (no reply, refused, timed out), if they have.
    unanswered_since: Option<Instant>,
    replaced_at: Instant,
    replacements: u64,
}

impl Clustered {
    fn new(
        client: redis::cluster::ClusterClient,
        config: redis::cluster::ClusterConfig,
        timeout: Duration,
    ) -> Clustered {
        let conn = client.get_pending_async_connection_with_config(config.clone());
        Clustered {
            client,
            config,
            patience: (timeout * 4).max(Duration::from_secs(2)),
            state: Mutex::new(ClusterState {
                conn,
                unanswered_since: None,
                replaced_at: Instant::now(),
                replacements: 0,
            }),
        }
    }

    /// The connection to use now: a fresh one when calls have gone unanswered for longer
    /// than the patience.
    fn connection(&self) -> ClusterConnection {
        let mut state = self.state.lock().expect("cluster lock");
        let now = Instant::now();
        let stuck = state
            .unanswered_since
            .is_some_and(|since| now.duration_since(since) >= self.patience);
        if stuck && now.duration_since(state.replaced_at) >= self.patience {
            tracing::warn!(
                "no Redis Cluster node has answered for {:?}: reconnecting from the seed nodes",
                self.patience
            );
            metrics::counter!("wxpipe_redis_cluster_reconnects_total").increment(1);
            state.conn = self
                .client
                .get_pending_async_connection_with_config(self.config.clone());
            state.unanswered_since = None;
            state.replaced_at = now;
            state.replacements += 1;
        }
        state.conn.clone()
    }

    /// Runs `call` on the connection, noting whether a node answered it. A call dropped
    /// before it completes (the caller's timeout) counts as unanswered.
    async fn call<T, R>(&self, call: impl FnOnce(ClusterConnection) -> R) -> redis::RedisResult<T>
    where
        R: Future<Output = redis::RedisResult<T>>,
    {
        let mut pending = Unanswered(Some(self));
        let result = call(self.connection()).await;
        let answered = match &result {
            Ok(_) => true,
            Err(error) => {
                !(error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || error.kind() == redis::ErrorKind::ClusterConnectionNotFound)
            }
        };
        if answered {
            pending.0 = None;
            self.state.lock().expect("cluster lock").unanswered_since = None;
        }
        result
    }
}

/// Marks the cluster connection unanswered unless disarmed.
struct Unanswered<'a>(Option<&'a Clustered>);

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(clustered) = self.0 {
            let mut state = clustered.state.lock().expect("cluster lock");
            state.unanswered_since.get_or_insert_with(Instant::now);
        }
    }
}

/// The primary of a Sentinel set: connected on first use, forgotten when it fails.
pub(crate) struct Sentineled {
    client: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

impl Sentineled {
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.current.lock().expect("sentinel lock").clone() {
            return Ok(conn);
        }
        let mut client = self.client.lock().await;
        if let Some(conn) = self.current.lock().expect("sentinel lock").clone() {
            return Ok(conn);
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = client.get_async_connection_with_config(&config).await?;
        *self.current.lock().expect("sentinel lock") = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection after an error that says the primary is not there or not the
    /// primary any more.
    fn settle<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(error) = &result {
            if error.is_io_error()
                || error.is_connection_dropped()
                || error.is_connection_refusal()
                || error.is_timeout()
                || error.code() == Some("READONLY")
            {
                self.current.lock().expect("sentinel lock").take();
            }
        }
        result
    }

    /// Runs `call` on the primary's connection.
    async fn call<T, R>(
        &self,
        call: impl FnOnce(MultiplexedConnection) -> R,
    ) -> redis::RedisResult<T>
    where
        R: Future<Output = redis::RedisResult<T>>,
    {
        let result = call(self.connection().await?).await;
        self.settle(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_parts() {
        let p = parts("rediss+cluster://u:secret@a:1,b:2");
        assert!(p.tls);
        assert_eq!(p.userinfo, Some("u:secret"));
        assert_eq!(
            p.node_urls(true),
            ["rediss://u:secret@a:1", "rediss://u:secret@b:2"]
        );
        let p = parts("redis+sentinel://a:1,b:2/wxpipe");
        assert_eq!((p.hosts.len(), p.path), (2, "wxpipe"));
        assert_eq!(p.node_urls(true), ["redis://a:1", "redis://b:2"]);
        assert!(!redact("redis+cluster://u:secret@a:1").contains("secret"));
    }

    #[tokio::test]
    async fn every_scheme_opens_lazily() {
        let timeout = Duration::from_millis(100);
        for url in [
            "memory://",
            "redis://127.0.0.1:1/",
            "redis+cluster://127.0.0.1:1,127.0.0.1:2",
            "redis+sentinel://127.0.0.1:1/wxpipe",
        ] {
            let engine = Engine::open(url, timeout).unwrap_or_else(|e| panic!("{url}: {e}"));
            if url != "memory://" {
                assert!(engine.ping().await.is_err(), "{url}: nothing listens");
            }
        }
        assert!(Engine::open("redis+sentinel://127.0.0.1:1", timeout).is_err());
        assert!(Engine::open("postgres://x", timeout).is_err());
    }

    /// A node that takes connections and never answers stands for a wedged cluster
    /// connection: calls time out, and after the patience the connection is replaced, once
    /// per patience.
    #[tokio::test]
    async fn a_cluster_connection_nobody_answers_is_replaced() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let url = format!("redis+cluster://{addr}");
        let Engine::Redis(redis) = Engine::open(&url, Duration::from_millis(100)).unwrap() else {
            panic!("a Redis engine")
        };
        let Conn::Cluster(clustered) = redis.conn() else {
            panic!("a cluster connection")
        };
        let replacements = || clustered.state.lock().unwrap().replacements;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1900) {
            assert!(redis.ping().await.is_err(), "nothing answers");
        }
        assert_eq!(replacements(), 0, "not before the patience (2 s)");
        while start.elapsed() < Duration::from_millis(3000) {
            assert!(redis.ping().await.is_err(), "nothing answers");
        }
        assert_eq!(replacements(), 1, "once per patience");
    }
}
