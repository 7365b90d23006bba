//! The memory engine's one data structure: string values with an expiry, and the lease steps
//! on them. Expired entries are swept as the map grows, so memory stays bounded by the
//! traffic of one TTL.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::lease::Lease;

#[derive(Debug, Default)]
pub(crate) struct TtlMap {
    map: HashMap<String, (String, Instant)>,
    /// The map's size after the last sweep; the next sweep runs when it has doubled.
    swept_at: usize,
}

impl TtlMap {
    pub fn get(&self, key: &str) -> Option<&str> {
        let now = Instant::now();
        self.map
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| value.as_str())
    }

    pub fn set(&mut self, key: String, value: String, ttl: Duration) {
        let now = Instant::now();
        // As in Redis, a century at most: `now + ttl` would panic for a huge TTL.
        let ttl = ttl.min(Duration::from_millis(crate::lease::MAX_MS));
        self.map.insert(key, (value, now + ttl));
        if self.map.len() >= 2 * self.swept_at.max(1024) {
            self.map.retain(|_, (_, expires)| *expires > now);
            self.swept_at = self.map.len();
        }
    }

    /// Deletes `key` only while it still holds `value`.
    pub fn delete_if(&mut self, key: &str, value: &str) {
        if self.get(key) == Some(value) {
            self.map.remove(key);
        }
    }

    /// The lease steps of [`crate::lease`].
    pub fn claim(&mut self, key: String, holder: String, lease: Duration, done: &str) -> Lease {
        match self.get(&key) {
            None => {
                self.set(key, holder, lease);
                Lease::Claimed
            }
            Some(value) if value == done => Lease::Done,
            Some(_) => Lease::Held,
        }
    }

    pub fn renew(&mut self, key: String, holder: String, lease: Duration) -> bool {
        let ours = self.get(&key) == Some(holder.as_str());
        if ours {
            self.set(key, holder, lease);
        }
        ours
    }
}
