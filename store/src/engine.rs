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

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::watch;

use crate::error::no_reply;
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
        Ok(Conn::Sentinel(Arc::new(Sentineled {
            sentinels: Arc::new(tokio::sync::Mutex::new(sentinels)),
            current: Arc::default(),
            timeout,
            lookup: Mutex::new(None),
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

/// A Redis Cluster connection, replaced by a fresh one when it has stopped answering
/// altogether.
///
/// The `redis` crate's (1.8) cluster connection can wedge for good during a slot refresh
/// (after a node dies, or on `MOVED`): a lock request of its own task that takes the lock
/// while the task is out of tokio's cooperative budget holds it without being polled
/// again, and the refresh waits for it forever. Every call then times out, on every slot,
/// long after the cluster has failed over. Seen in about one failover in three on a loaded
/// machine (`worker/tests/redis_deployments.rs`).
///
/// When calls have gone unanswered for the patience, one `PING` to any node tells a wedge
/// (no answer) from a failover in progress (the live nodes answer). A wedge replaces the
/// connection with one that learns the topology from the seeds again; so do calls still
/// unanswered after [`KEPT_CHECKS`] checks in a row whose `PING` passed: the crate does
/// not refresh its slots when a dead node times out instead of refusing (a host gone, not
/// a process), and would route to it for good. The old connection's task ends with its
/// last clone.
pub(crate) struct Clustered {
    client: redis::cluster::ClusterClient,
    config: redis::cluster::ClusterConfig,
    /// How long calls may go unanswered before the connection is checked, and how often it
    /// may be checked.
    patience: Duration,
    state: Mutex<ClusterState>,
}

/// Checks whose `PING` passed while calls went on going unanswered, after which the
/// connection is replaced anyway.
const KEPT_CHECKS: u32 = 3;

struct ClusterState {
    conn: ClusterConnection,
    /// When the oldest call still unanswered (no reply, refused, timed out) was sent.
    unanswered_since: Option<Instant>,
    /// When the last call a node answered was sent: an older call's failure is stale.
    answered_sent: Option<Instant>,
    checked_at: Option<Instant>,
    /// Checks in a row whose `PING` passed.
    kept: u32,
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
                answered_sent: None,
                checked_at: None,
                kept: 0,
                replacements: 0,
            }),
        }
    }

    /// The connection to use now. When calls have gone unanswered for the patience, starts
    /// a check of it in the background (a caller's own timeout must not cut the check short).
    fn connection(self: &Arc<Self>) -> ClusterConnection {
        let mut state = self.state.lock().expect("cluster lock");
        let now = Instant::now();
        let waited = |since: Option<Instant>| {
            since.is_none_or(|since| now.duration_since(since) >= self.patience)
        };
        if state.unanswered_since.is_some()
            && waited(state.unanswered_since)
            && waited(state.checked_at)
        {
            state.checked_at = Some(now);
            tokio::spawn(Arc::clone(self).check(state.conn.clone()));
        }
        state.conn.clone()
    }

    /// Replaces `conn` unless a node answers a `PING` through it (given the patience: a
    /// slot refresh holds every call back for a while, a wedge for good), or after
    /// [`KEPT_CHECKS`] such answers in a row.
    async fn check(self: Arc<Self>, mut conn: ClusterConnection) {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let ping = conn.route_command(
            redis::cmd("PING"),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        );
        let answered = matches!(tokio::time::timeout(self.patience, ping).await, Ok(Ok(_)));
        let mut state = self.state.lock().expect("cluster lock");
        state.unanswered_since = None;
        state.checked_at = Some(Instant::now());
        if answered {
            state.kept += 1;
            if state.kept < KEPT_CHECKS {
                return;
            }
        }
        let why = if answered {
            "calls still go unanswered though a node answers a PING"
        } else {
            "no node answers, not even a PING"
        };
        tracing::warn!("Redis Cluster: {why}: reconnecting from the seed nodes");
        metrics::counter!("wxpipe_redis_cluster_reconnects_total").increment(1);
        state.conn = self
            .client
            .get_pending_async_connection_with_config(self.config.clone());
        state.kept = 0;
        state.replacements += 1;
    }

    /// Runs `call` on the connection, noting whether a node answered it. A call dropped
    /// before it completes (the caller's timeout) counts as unanswered.
    async fn call<T, R>(
        self: &Arc<Self>,
        call: impl FnOnce(ClusterConnection) -> R,
    ) -> redis::RedisResult<T>
    where
        R: Future<Output = redis::RedisResult<T>>,
    {
        let mut pending = Unanswered {
            clustered: Some(self),
            sent: Instant::now(),
        };
        let result = call(self.connection()).await;
        let answered = match &result {
            Ok(_) => true,
            Err(error) => {
                !(no_reply(error) || error.kind() == redis::ErrorKind::ClusterConnectionNotFound)
            }
        };
        if answered {
            pending.clustered = None;
            let mut state = self.state.lock().expect("cluster lock");
            state.unanswered_since = None;
            state.kept = 0;
            let newest = state
                .answered_sent
                .map_or(pending.sent, |at| at.max(pending.sent));
            state.answered_sent = Some(newest);
        }
        result
    }
}

/// Marks a cluster call sent at `sent` unanswered unless disarmed.
struct Unanswered<'a> {
    clustered: Option<&'a Clustered>,
    sent: Instant,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(clustered) = self.clustered {
            let mut state = clustered.state.lock().expect("cluster lock");
            if state.answered_sent.is_some_and(|at| at > self.sent) {
                return; // a later call was answered
            }
            let since = state.unanswered_since.get_or_insert(self.sent);
            *since = (*since).min(self.sent);
        }
    }
}

/// The primary of a Sentinel set: connected on first use, forgotten when it fails.
///
/// Every sentinel is asked at once and the first primary found (named by a sentinel, its
/// `ROLE` checked by the crate, connected) wins. The crate's own client, given them all, takes
/// their answers in list order, with its own timeouts (longer than a call's bound) on each:
/// a first-listed sentinel whose host is gone without a reset held up every lookup, so a
/// failover was never followed.
pub(crate) struct Sentineled {
    /// One client per sentinel of `REDIS_URL`, in its order.
    sentinels: Arc<tokio::sync::Mutex<Vec<SentinelClient>>>,
    current: Arc<Mutex<Option<MultiplexedConnection>>>,
    timeout: Duration,
    /// The lookup under way, if any: it runs in a task of its own, shared by every caller, so
    /// a caller whose bound runs out stops waiting for it but never cuts it. A lookup takes
    /// several round trips; cut at each call's bound, one slower than a call would never end.
    lookup: Mutex<Option<watch::Receiver<Option<Looked>>>>,
}

/// A finished lookup: the primary's connection, or why there is none.
type Looked = Result<MultiplexedConnection, LookupFailure>;

/// Why a lookup found no primary, kept to be handed to every caller that waited for it
/// (`RedisError` is not `Clone`).
#[derive(Debug, Clone)]
struct LookupFailure {
    kind: redis::ErrorKind,
    text: String,
    /// No sentinel (or primary) replied: an outage, as the callers must see it.
    no_reply: bool,
}

impl LookupFailure {
    fn of(error: &redis::RedisError) -> Self {
        LookupFailure {
            kind: error.kind(),
            text: error.to_string(),
            no_reply: no_reply(error),
        }
    }

    fn error(&self) -> redis::RedisError {
        if self.no_reply {
            std::io::Error::new(std::io::ErrorKind::TimedOut, self.text.clone()).into()
        } else {
            (self.kind, "Sentinel lookup", self.text.clone()).into()
        }
    }
}

/// The longest one lookup may take, whatever the callers' bounds: the crate's own timeouts end
/// each of its steps long before this.
const LOOKUP_BOUND: Duration = Duration::from_secs(30);

impl Sentineled {
    /// The primary's connection: the current one, or the outcome of the lookup under way (one
    /// is started when none is).
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.current.lock().expect("sentinel lock").clone() {
            return Ok(conn);
        }
        let mut outcome = {
            let mut lookup = self.lookup.lock().expect("sentinel lock");
            match lookup.as_ref().filter(|running| running.borrow().is_none()) {
                Some(running) => running.clone(),
                None => {
                    let (done, outcome) = watch::channel(None);
                    tokio::spawn(Self::look_up(
                        Arc::clone(&self.sentinels),
                        Arc::clone(&self.current),
                        self.timeout,
                        done,
                    ));
                    *lookup = Some(outcome.clone());
                    outcome
                }
            }
        };
        let looked = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::Io, "the Sentinel lookup ended"))
            })?
            .clone()
            .expect("waited for a finished lookup");
        looked.map_err(|failure| failure.error())
    }

    /// Asks every sentinel at once; the first primary found (its role checked by the crate)
    /// wins, and becomes the current connection.
    async fn look_up(
        sentinels: Arc<tokio::sync::Mutex<Vec<SentinelClient>>>,
        current: Arc<Mutex<Option<MultiplexedConnection>>>,
        timeout: Duration,
        done: watch::Sender<Option<Looked>>,
    ) {
        let looked = tokio::time::timeout(LOOKUP_BOUND, async {
            let mut sentinels = sentinels.lock().await;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            // The lookups still running when one succeeds are dropped: the crate caches only
            // a sentinel connection it has verified, so that is safe.
            let mut lookups: FuturesUnordered<_> = sentinels
                .iter_mut()
                .map(|sentinel| sentinel.get_async_connection_with_config(&config))
                .collect();
            // As the crate does: an error met on a named primary says more than "not found".
            let (mut about_primary, mut last) = (None, None);
            while let Some(lookup) = lookups.next().await {
                match lookup {
                    Ok(conn) => return Ok(conn),
                    Err(error)
                        if error.kind() != redis::ErrorKind::MasterNameNotFoundBySentinel =>
                    {
                        about_primary = Some(error);
                    }
                    Err(error) => last = Some(error),
                }
            }
            let error = about_primary
                .or(last)
                .expect("a Sentinel URL names at least one sentinel");
            Err(LookupFailure::of(&error))
        })
        .await
        .unwrap_or_else(|_| {
            Err(LookupFailure {
                kind: redis::ErrorKind::Io,
                text: format!("no sentinel led to the primary within {LOOKUP_BOUND:?}"),
                no_reply: true,
            })
        });
        if let Ok(conn) = &looked {
            *current.lock().expect("sentinel lock") = Some(conn.clone());
        }
        let _ = done.send(Some(looked));
    }

    /// Forgets the connection after an error that says the primary is not there or not the
    /// primary any more.
    fn settle<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(error) = &result {
            if no_reply(error) || error.code() == Some("READONLY") {
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
            let state = self.clustered.state.lock().unwrap();
            (state.replacements, state.kept, state.checked_at.is_some())
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
