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
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::cluster::Clustered;
use crate::redis_url::{parts, Parts};
use crate::sentinel::Sentineled;
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

    /// The `redis` crate's Sentinel client finds the primary, one client per sentinel so that
    /// they are asked all at once (see [`Sentineled`]); a connection that fails (the primary
    /// is gone) or is refused writes (it was demoted) is dropped, and the next call asks the
    /// sentinels again.
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
        let sentinels = parts
            .node_urls(false)
            .into_iter()
            .map(|url| {
                SentinelClient::build(
                    vec![url],
                    master,
                    Some(node.clone()),
                    SentinelServerType::Master,
                )
            })
            .collect::<redis::RedisResult<Vec<_>>>()?;
        Ok(Conn::Sentinel(Arc::new(Sentineled::new(
            sentinels, timeout,
        ))))
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::cluster::KEPT_CHECKS;

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

    /// One command of a RESP array of bulk strings at the start of `buf`, and its length.
    fn command(buf: &[u8]) -> Option<(Vec<String>, usize)> {
        let line = |at: usize| {
            let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
            let text = std::str::from_utf8(&buf[at + 1..end]).ok()?;
            Some((text.parse::<usize>().ok()?, end + 2))
        };
        let (n, mut at) = line(0)?;
        let mut words = Vec::with_capacity(n);
        for _ in 0..n {
            let (len, start) = line(at)?;
            let word = buf.get(start..start + len)?;
            words.push(String::from_utf8_lossy(word).to_uppercase());
            at = start + len + 2;
        }
        (at <= buf.len()).then_some((words, at))
    }

    /// A fake cluster node. With `beside`, it serves slots 8192-16383, says the node at
    /// `beside` serves 0-8191, answers the client's set-up, `CLUSTER SLOTS` and `PING`, and
    /// sends any other command (the tests' `{k}`, slot 7629) to `beside` with `MOVED`.
    /// Without, it serves every slot, and on each connection answers the set-up and then
    /// nothing from the first other command on: a hung node, and from the caller's side a
    /// wedged connection.
    async fn fake_node(beside: Option<u16>) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let range = |from: u16, to: u16, port: u16| {
            let id = format!("{port:0>40}");
            format!("*3\r\n:{from}\r\n:{to}\r\n*3\r\n$9\r\n127.0.0.1\r\n:{port}\r\n$40\r\n{id}\r\n")
        };
        let (slots, moved) = match beside {
            Some(other) => (
                format!(
                    "*2\r\n{}{}",
                    range(0, 8191, other),
                    range(8192, 16383, addr.port())
                ),
                Some(format!("-MOVED 7629 127.0.0.1:{other}\r\n")),
            ),
            None => (format!("*1\r\n{}", range(0, 16383, addr.port())), None),
        };
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (slots, moved) = (slots.clone(), moved.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut hung = false;
                    while let Ok(n @ 1..) = socket.read(&mut chunk).await {
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some((words, used)) = command(&buf) {
                            buf.drain(..used);
                            let reply = match words.first().map(String::as_str) {
                                _ if hung => continue,
                                Some("PING") => "+PONG\r\n",
                                Some("CLUSTER") => slots.as_str(),
                                Some("CLIENT" | "READONLY" | "SELECT") => "+OK\r\n",
                                _ => match &moved {
                                    Some(moved) => moved.as_str(),
                                    None => {
                                        hung = true;
                                        continue;
                                    }
                                },
                            };
                            let _ = socket.write_all(reply.as_bytes()).await;
                        }
                    }
                });
            }
        });
        addr
    }

    /// A cluster engine on the fake node at `addr`, with a 100 ms timeout (so a patience of
    /// 2 s).
    struct Fixture {
        redis: Redis,
        clustered: Arc<Clustered>,
    }

    impl Fixture {
        fn on(addr: std::net::SocketAddr) -> Fixture {
            let url = format!("redis+cluster://{addr}");
            let Engine::Redis(redis) = Engine::open(&url, Duration::from_millis(100)).unwrap()
            else {
                panic!("a Redis engine")
            };
            let Conn::Cluster(clustered) = redis.conn() else {
                panic!("a cluster connection")
            };
            Fixture { redis, clustered }
        }

        /// Calls for `duration`, each timing out.
        async fn unanswered_calls(&self, duration: Duration) {
            let start = Instant::now();
            while start.elapsed() < duration {
                let get = redis::cmd("GET").arg("{k}").to_owned();
                let mut conn = self.redis.conn();
                let result = self
                    .redis
                    .bounded(get.query_async::<Option<String>>(&mut conn));
                assert!(result.await.is_err(), "nothing answers a GET");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        /// (replacements, checks whose PING passed in a row, whether a check ran).
        fn state(&self) -> (u64, u32, bool) {
            self.clustered.health()
        }
    }

    /// Calls unanswered for the patience (2 s here) start a check; when not even a `PING`
    /// is answered (within the patience), the connection is replaced, once.
    #[tokio::test]
    async fn a_cluster_connection_nobody_answers_is_replaced() {
        let fixture = Fixture::on(fake_node(None).await);
        fixture.unanswered_calls(Duration::from_millis(1700)).await;
        assert_eq!(fixture.state(), (0, 0, false), "not before the patience");
        fixture.unanswered_calls(Duration::from_millis(1300)).await;
        // The check's PING waits for up to the patience.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(fixture.state(), (1, 0, true), "replaced once");
    }

    /// While the node of a key is down (a failover under way) and another answers a `PING`,
    /// the connection is checked and kept; when calls still go unanswered after
    /// `KEPT_CHECKS` such checks (a dead host the crate keeps routing to), it is replaced.
    #[tokio::test]
    async fn a_cluster_connection_that_answers_a_ping_is_kept_a_while() {
        let dead = testkit::free_port();
        let fixture = Fixture::on(fake_node(Some(dead)).await);
        fixture.unanswered_calls(Duration::from_millis(3000)).await;
        assert_eq!(fixture.state(), (0, 1, true), "checked and kept");
        fixture.unanswered_calls(Duration::from_millis(5000)).await;
        assert_eq!(
            fixture.state(),
            (1, 0, true),
            "replaced after {KEPT_CHECKS} checks"
        );
    }
}
