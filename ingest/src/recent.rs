//! The in-process fallback for (timestamp, nonce) bindings: while the dedup store cannot
//! answer, a plaintext push's binding is checked against the bindings this instance saw
//! recently, so a captured query cannot carry another body just because Redis is down.
//!
//! Bounded: at most [`RecentNonces::CAPACITY`] bindings, the oldest forgotten first, each for
//! the nonce TTL. Per instance: a replay sent to another instance, or after the binding was
//! forgotten, is not caught while Redis is down (the README says so).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What checking a binding found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// First seen here, or seen with the same body: a WeChat retry.
    Fresh,
    /// Seen here with another body: a replay.
    Replayed,
}

#[derive(Debug, Default)]
struct Inner {
    /// Hash of (account, timestamp, nonce) → (hash of the body digest, expiry).
    seen: HashMap<u64, (u64, Instant)>,
    /// Each key of `seen` once, in the order first seen, for eviction.
    order: VecDeque<u64>,
}

/// Recent (account, timestamp, nonce) → body bindings of this instance.
#[derive(Debug)]
pub struct RecentNonces {
    ttl: Duration,
    capacity: usize,
    /// Keyed per process, so no one can aim for collisions.
    hasher: RandomState,
    inner: Mutex<Inner>,
}

impl RecentNonces {
    /// Bindings kept at most: 32 bytes or so each.
    pub const CAPACITY: usize = 1 << 17;

    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, Self::CAPACITY)
    }

    pub fn with_capacity(ttl: Duration, capacity: usize) -> Self {
        RecentNonces {
            ttl,
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            inner: Mutex::default(),
        }
    }

    /// Records the binding of (account, timestamp, nonce) to `body_digest`, unless that triple
    /// is bound to another body already, which is a replay.
    pub fn bind(&self, account: &str, timestamp: &str, nonce: &str, body_digest: &str) -> Binding {
        let key = self.hasher.hash_one((account, timestamp, nonce));
        let body = self.hasher.hash_one(body_digest);
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("recent nonces lock");
        match inner.seen.get(&key) {
            Some(&(seen, expires)) if expires > now => {
                return if seen == body {
                    Binding::Fresh
                } else {
                    Binding::Replayed
                };
            }
            Some(_) => {
                // Expired: bound anew below; its old place in `order` only evicts it early.
            }
            None => inner.order.push_back(key),
        }
        inner.seen.insert(key, (body, now + self.ttl));
        while inner.seen.len() > self.capacity {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.seen.remove(&oldest);
        }
        Binding::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_triple_keeps_its_first_body() {
        let recent = RecentNonces::new(Duration::from_secs(60));
        assert_eq!(recent.bind("a", "1", "n", "body1"), Binding::Fresh);
        assert_eq!(
            recent.bind("a", "1", "n", "body1"),
            Binding::Fresh,
            "a retry"
        );
        assert_eq!(recent.bind("a", "1", "n", "body2"), Binding::Replayed);
        // Another account, timestamp or nonce is another triple.
        assert_eq!(recent.bind("b", "1", "n", "body2"), Binding::Fresh);
        assert_eq!(recent.bind("a", "2", "n", "body2"), Binding::Fresh);
        assert_eq!(recent.bind("a", "1", "m", "body2"), Binding::Fresh);
    }

    #[test]
    fn bindings_expire_and_the_oldest_are_forgotten_first() {
        let recent = RecentNonces::with_capacity(Duration::from_millis(50), 2);
        assert_eq!(recent.bind("a", "1", "n", "x"), Binding::Fresh);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(recent.bind("a", "1", "n", "y"), Binding::Fresh, "expired");

        let recent = RecentNonces::with_capacity(Duration::from_secs(60), 2);
        recent.bind("a", "1", "n1", "x");
        recent.bind("a", "1", "n2", "x");
        recent.bind("a", "1", "n3", "x");
        assert_eq!(recent.bind("a", "1", "n3", "y"), Binding::Replayed);
        assert_eq!(recent.bind("a", "1", "n2", "y"), Binding::Replayed);
        assert_eq!(recent.bind("a", "1", "n1", "y"), Binding::Fresh, "evicted");
        assert!(recent.inner.lock().unwrap().seen.len() <= 2);
    }
}
