//! The primary of a Sentinel set, found by asking every sentinel at once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::sentinel::SentinelClient;
use tokio::sync::watch;

use crate::error::no_reply;

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
    pub(crate) fn new(sentinels: Vec<SentinelClient>, timeout: Duration) -> Self {
        Sentineled {
            sentinels: Arc::new(tokio::sync::Mutex::new(sentinels)),
            current: Arc::default(),
            timeout,
            lookup: Mutex::new(None),
        }
    }

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
    pub(crate) async fn call<T, R>(
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
