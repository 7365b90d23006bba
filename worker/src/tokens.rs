//! The shared token cache with a short memory of its own in front: a welcome send would
//! otherwise read its account's token from Redis every time, a third of the role's round
//! trips to Redis.
//!
//! What it remembers is what this process last read or wrote, for [`MEMO_FOR`] at most, so a
//! token another process replaced is used that long at most; WeChat keeps accepting a token for
//! minutes after its cache entry's TTL (the cache's [expiry margin](crate::api)), and one it
//! refuses is dropped here and in Redis before the refresh, so the refresh never finds it
//! here again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use store::effects::TokenCache;
use store::Fut;

/// How long a token read or written here is used without asking the shared cache again.
pub const MEMO_FOR: Duration = Duration::from_secs(1);

/// Entries past which the stale ones are swept at the next write (a component may speak for
/// thousands of authorizers).
const SWEEP_AT: usize = 1024;

/// A [`TokenCache`] that remembers its answers for [`MEMO_FOR`].
#[derive(Debug)]
pub struct MemoTokens {
    shared: Arc<dyn TokenCache>,
    memo: Mutex<Memo>,
    memo_for: Duration,
}

/// What [`MemoTokens`] remembers, and what it needs to know whether it may.
#[derive(Debug)]
struct Memo {
    tokens: HashMap<String, (String, Instant)>,
    /// Counts the writes and drops: a read from the shared cache that one overtook is not
    /// remembered (it may be the token just dropped).
    changes: u64,
    /// The size at which the next write sweeps.
    sweep_at: usize,
}

impl MemoTokens {
    pub fn over(shared: Arc<dyn TokenCache>) -> Self {
        Self::remembering(shared, MEMO_FOR)
    }

    /// With a memory of `memo_for` (tests).
    pub fn remembering(shared: Arc<dyn TokenCache>, memo_for: Duration) -> Self {
        MemoTokens {
            shared,
            memo: Mutex::new(Memo {
                tokens: HashMap::new(),
                changes: 0,
                sweep_at: SWEEP_AT,
            }),
            memo_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.memo.lock().expect("token memo lock")
    }

    /// `name`'s token if remembered, else the change number a read of the shared cache
    /// starts from.
    fn recall(&self, name: &str) -> Result<String, u64> {
        let memo = self.lock();
        memo.tokens
            .get(name)
            .filter(|(_, at)| at.elapsed() < self.memo_for)
            .map(|(token, _)| token.clone())
            .ok_or(memo.changes)
    }

    /// Remembers `name`'s token (forgets it for `None`), unless a write or drop came after
    /// change number `seen`.
    fn note(&self, name: &str, token: Option<&str>, seen: u64) {
        let mut memo = self.lock();
        if memo.changes != seen {
            return;
        }
        let Some(token) = token else {
            memo.tokens.remove(name);
            return;
        };
        if memo.tokens.len() >= memo.sweep_at {
            memo.tokens
                .retain(|_, (_, at)| at.elapsed() < self.memo_for);
            // Swept again only once it has doubled: sweeping stays a fraction of the writes
            // however many names are active at once.
            memo.sweep_at = (2 * memo.tokens.len()).max(SWEEP_AT);
        }
        let at = Instant::now();
        memo.tokens.insert(name.to_owned(), (token.to_owned(), at));
    }

    /// Forgets `name`'s token if it is `token` (any token when `None`); reads under way are
    /// not remembered. Returns the change's number.
    fn forget(&self, name: &str, token: Option<&str>) -> u64 {
        let mut memo = self.lock();
        if memo
            .tokens
            .get(name)
            .is_some_and(|(kept, _)| token.is_none_or(|token| kept == token))
        {
            memo.tokens.remove(name);
        }
        memo.changes += 1;
        memo.changes
    }
}

impl TokenCache for MemoTokens {
    fn token<'a>(&'a self, appid: &'a str) -> Fut<'a, Option<String>> {
        Box::pin(async move {
            let seen = match self.recall(appid) {
                Ok(token) => return Ok(Some(token)),
                Err(seen) => seen,
            };
            let token = self.shared.token(appid).await?;
            self.note(appid, token.as_deref(), seen);
            Ok(token)
        })
    }

    fn set_token<'a>(&'a self, appid: &'a str, token: &'a str, ttl: Duration) -> Fut<'a, ()> {
        Box::pin(async move {
            // Forgotten first: were the write's answer lost, the old token is not kept.
            let seen = self.forget(appid, None);
            self.shared.set_token(appid, token, ttl).await?;
            self.note(appid, Some(token), seen);
            Ok(())
        })
    }

    fn drop_token<'a>(&'a self, appid: &'a str, token: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            // Forgotten before and after the delete, whatever Redis answers: a read that
            // reached Redis before the delete, and noted it meanwhile, is forgotten too, so
            // the refresh that follows never finds it here.
            self.forget(appid, Some(token));
            let dropped = self.shared.drop_token(appid, token).await;
            self.forget(appid, Some(token));
            dropped
        })
    }

    fn lock_token<'a>(&'a self, appid: &'a str, owner: &'a str, ttl: Duration) -> Fut<'a, bool> {
        self.shared.lock_token(appid, owner, ttl)
    }

    fn unlock_token<'a>(&'a self, appid: &'a str, owner: &'a str) -> Fut<'a, ()> {
        self.shared.unlock_token(appid, owner)
    }
}

/// A fetch lock an attempt may hold: released in a task of its own if the attempt is dropped
/// before it releases it (only this attempt's holder is deleted, so a lock it never got is
/// left alone).
pub(crate) struct HeldLock<'a> {
    pub store: Arc<dyn TokenCache>,
    pub appid: &'a str,
    pub holder: &'a str,
    pub armed: bool,
}

impl Drop for HeldLock<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, appid, holder) = (
            Arc::clone(&self.store),
            self.appid.to_owned(),
            self.holder.to_owned(),
        );
        runtime.spawn(async move {
            if let Err(error) = store.unlock_token(&appid, &holder).await {
                tracing::warn!(%appid, %error,
                    "token fetch lock of a cut fetch not released: other processes wait for its lease to run out");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<dyn TokenCache> {
        let engine = store::Engine::open("memory://", Duration::from_secs(1)).expect("memory");
        store::effects::EffectStores::open(&engine, "t").tokens
    }

    const TTL: Duration = Duration::from_secs(600);

    #[tokio::test]
    async fn a_token_is_read_from_the_shared_cache_once_per_memo() {
        let cache = shared();
        cache.set_token("wx", "T1", TTL).await.unwrap();
        let memo = MemoTokens::remembering(Arc::clone(&cache), Duration::from_millis(300));
        assert_eq!(memo.token("wx").await.unwrap().as_deref(), Some("T1"));
        // Another process replaces it: this one keeps its memory for the memo's time only.
        cache.set_token("wx", "T2", TTL).await.unwrap();
        assert_eq!(memo.token("wx").await.unwrap().as_deref(), Some("T1"));
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(memo.token("wx").await.unwrap().as_deref(), Some("T2"));
        // Nothing cached is not remembered as a token.
        assert_eq!(memo.token("other").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_dropped_token_is_never_served_from_memory() {
        let cache = shared();
        let memo = MemoTokens::remembering(Arc::clone(&cache), Duration::from_secs(60));
        memo.set_token("wx", "T1", TTL).await.unwrap();
        assert_eq!(
            cache.token("wx").await.unwrap().as_deref(),
            Some("T1"),
            "written through"
        );
        assert_eq!(memo.token("wx").await.unwrap().as_deref(), Some("T1"));
        // WeChat refused it; another process had already cached a new one.
        cache.set_token("wx", "T2", TTL).await.unwrap();
        memo.drop_token("wx", "T1").await.unwrap();
        assert_eq!(memo.token("wx").await.unwrap().as_deref(), Some("T2"));
        // Dropping a token that is not the remembered one keeps the remembered one.
        memo.drop_token("wx", "T0").await.unwrap();
        cache.set_token("wx", "T3", TTL).await.unwrap();
        assert_eq!(memo.token("wx").await.unwrap().as_deref(), Some("T2"));
    }

    /// A shared cache whose reads (answered late) or drops (applied late) wait for the
    /// test's word.
    #[derive(Debug)]
    struct Stalled {
        inner: Arc<dyn TokenCache>,
        go: tokio::sync::Semaphore,
        stall_drops: bool,
    }

    impl Stalled {
        fn new(inner: &Arc<dyn TokenCache>, stall_drops: bool) -> Arc<Self> {
            Arc::new(Stalled {
                inner: Arc::clone(inner),
                go: tokio::sync::Semaphore::new(0),
                stall_drops,
            })
        }

        async fn wait(&self) {
            self.go.acquire().await.expect("open").forget();
        }
    }

    impl TokenCache for Stalled {
        fn token<'a>(&'a self, appid: &'a str) -> Fut<'a, Option<String>> {
            Box::pin(async move {
                let token = self.inner.token(appid).await;
                if !self.stall_drops {
                    self.wait().await;
                }
                token
            })
        }
        fn set_token<'a>(&'a self, appid: &'a str, token: &'a str, ttl: Duration) -> Fut<'a, ()> {
            self.inner.set_token(appid, token, ttl)
        }
        fn drop_token<'a>(&'a self, appid: &'a str, token: &'a str) -> Fut<'a, ()> {
            Box::pin(async move {
                if self.stall_drops {
                    self.wait().await;
                }
                self.inner.drop_token(appid, token).await
            })
        }
        fn lock_token<'a>(
            &'a self,
            appid: &'a str,
            owner: &'a str,
            ttl: Duration,
        ) -> Fut<'a, bool> {
            self.inner.lock_token(appid, owner, ttl)
        }
        fn unlock_token<'a>(&'a self, appid: &'a str, owner: &'a str) -> Fut<'a, ()> {
            self.inner.unlock_token(appid, owner)
        }
    }

    /// A memo over a [`Stalled`] cache that holds `OLD`.
    async fn over_stalled(
        stall_drops: bool,
    ) -> (Arc<dyn TokenCache>, Arc<Stalled>, Arc<MemoTokens>) {
        let cache = shared();
        cache.set_token("wx", "OLD", TTL).await.unwrap();
        let stalled = Stalled::new(&cache, stall_drops);
        let memo = Arc::new(MemoTokens::remembering(
            Arc::clone(&stalled) as Arc<dyn TokenCache>,
            Duration::from_secs(60),
        ));
        (cache, stalled, memo)
    }

    #[tokio::test]
    async fn a_read_a_drop_overtook_is_not_remembered() {
        let (_, stalled, memo) = over_stalled(false).await;
        // A send reads OLD, and its answer is late...
        let late = tokio::spawn({
            let memo = Arc::clone(&memo);
            async move { memo.token("wx").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...while another send finds OLD refused, drops it, and a new one is cached.
        memo.drop_token("wx", "OLD").await.unwrap();
        memo.set_token("wx", "NEW", TTL).await.unwrap();
        stalled.go.add_permits(1);
        assert_eq!(late.await.unwrap().unwrap().as_deref(), Some("OLD"));
        // The late read is not what the next send gets.
        assert_eq!(memo.token("wx").await.unwrap().as_deref(), Some("NEW"));
    }

    #[tokio::test]
    async fn a_read_that_reached_redis_before_a_drop_is_not_remembered() {
        let (cache, stalled, memo) = over_stalled(true).await;
        // A send found OLD refused: its drop is on its way to Redis...
        let dropping = tokio::spawn({
            let memo = Arc::clone(&memo);
            async move { memo.drop_token("wx", "OLD").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...when another send reads the cache, before the delete lands.
        assert_eq!(memo.token("wx").await.unwrap().as_deref(), Some("OLD"));
        stalled.go.add_permits(1);
        dropping.await.unwrap().unwrap();
        // Another process cached a new token: the refused one is not what comes next.
        cache.set_token("wx", "NEW", TTL).await.unwrap();
        assert_eq!(memo.token("wx").await.unwrap().as_deref(), Some("NEW"));
    }
}
