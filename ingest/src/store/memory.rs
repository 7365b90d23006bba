//! The `memory://` engine: the same protocol in one process's memory, for the embedded
//! default and tests. Expired entries are swept as the map grows, so memory stays bounded
//! by the traffic of one TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{
    dedup_key, nonce_key, pending, BoxFuture, Claim, ClaimRequest, DedupStore, StoreError, DONE,
};

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, (String, Instant)>,
    /// The map's size after the last sweep; the next sweep runs when it has doubled.
    swept_at: usize,
}

impl Entries {
    fn get(&self, key: &str, now: Instant) -> Option<&str> {
        self.map
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| value.as_str())
    }

    fn set(&mut self, key: String, value: String, ttl: Duration, now: Instant) {
        self.map.insert(key, (value, now + ttl));
        if self.map.len() >= 2 * self.swept_at.max(1024) {
            self.map.retain(|_, (_, expires)| *expires > now);
            self.swept_at = self.map.len();
        }
    }
}

#[derive(Debug)]
pub struct MemoryStore {
    prefix: String,
    entries: Mutex<Entries>,
}

impl MemoryStore {
    pub fn new(prefix: &str) -> Self {
        MemoryStore {
            prefix: prefix.to_owned(),
            entries: Mutex::default(),
        }
    }

    fn claim_now(&self, req: &ClaimRequest<'_>) -> Claim {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("memory store lock");
        if let Some(nonce) = &req.nonce {
            let key = nonce_key(&self.prefix, nonce);
            match entries.get(&key, now) {
                None => entries.set(key, nonce.body_digest.to_owned(), nonce.ttl, now),
                Some(seen) if seen != nonce.body_digest => return Claim::Replayed,
                Some(_) => {}
            }
        }
        let key = dedup_key(&self.prefix, req.id);
        match entries.get(&key, now) {
            None => {
                entries.set(key, pending(req.token), req.lease, now);
                Claim::Claimed
            }
            Some(DONE) => Claim::Done,
            Some(_) => Claim::InFlight,
        }
    }
}

impl DedupStore for MemoryStore {
    fn claim<'a>(&'a self, req: ClaimRequest<'a>) -> BoxFuture<'a, Result<Claim, StoreError>> {
        let claim = self.claim_now(&req);
        Box::pin(async move { Ok(claim) })
    }

    fn confirm<'a>(&'a self, id: &'a str, ttl: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut entries = self.entries.lock().expect("memory store lock");
        entries.set(
            dedup_key(&self.prefix, id),
            DONE.to_owned(),
            ttl,
            Instant::now(),
        );
        Box::pin(async { Ok(()) })
    }

    fn release<'a>(&'a self, id: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = dedup_key(&self.prefix, id);
        let mut entries = self.entries.lock().expect("memory store lock");
        if entries.get(&key, Instant::now()) == Some(pending(token).as_str()) {
            entries.map.remove(&key);
        }
        Box::pin(async { Ok(()) })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}
