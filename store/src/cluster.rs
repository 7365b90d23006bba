//! A Redis Cluster connection that is replaced when it stops answering altogether.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::cluster_async::ClusterConnection;

use crate::error::no_reply;

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
pub(crate) const KEPT_CHECKS: u32 = 3;

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
    pub(crate) fn new(
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
    pub(crate) async fn call<T, R>(
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

#[cfg(test)]
impl Clustered {
    /// (replacements, checks whose `PING` passed in a row, whether a check ran).
    pub(crate) fn health(&self) -> (u64, u32, bool) {
        let state = self.state.lock().expect("cluster lock");
        (state.replacements, state.kept, state.checked_at.is_some())
    }
}
