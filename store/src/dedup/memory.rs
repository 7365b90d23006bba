//! The dedup store in one process's memory, for the embedded default and tests.

use std::sync::Mutex;
use std::time::Duration;

use super::store::{Claim, ClaimRequest, DedupStore};
use crate::fut::Fut;
use crate::lease::{Lease, DEDUP};
use crate::memory::TtlMap;
use crate::Keys;

#[derive(Debug)]
pub(super) struct MemoryDedup {
    keys: Keys,
    entries: Mutex<TtlMap>,
}

impl MemoryDedup {
    pub fn new(keys: Keys) -> Self {
        MemoryDedup {
            keys,
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, TtlMap> {
        self.entries.lock().expect("memory store lock")
    }

    fn claim_now(&self, req: &ClaimRequest<'_>) -> Claim {
        let mut entries = self.entries();
        if let Some(n) = &req.nonce {
            let key = self.keys.nonce(n.account, n.timestamp, n.nonce);
            match entries.get(&key) {
                None => entries.set(key, n.body_digest.to_owned(), n.ttl),
                Some(seen) if seen != n.body_digest => return Claim::Replayed,
                Some(_) => {}
            }
        }
        let key = self.keys.dedup(req.id);
        Claim::from(entries.claim(key, DEDUP.holder(req.token), req.lease, DEDUP.done))
    }
}

impl From<Lease> for Claim {
    fn from(lease: Lease) -> Claim {
        match lease {
            Lease::Claimed => Claim::Claimed,
            Lease::Done => Claim::Done,
            Lease::Held => Claim::InFlight,
        }
    }
}

impl DedupStore for MemoryDedup {
    fn claim<'a>(&'a self, req: ClaimRequest<'a>) -> Fut<'a, Claim> {
        let claim = self.claim_now(&req);
        Box::pin(async move { Ok(claim) })
    }

    fn confirm<'a>(&'a self, id: &'a str, ttl: Duration) -> Fut<'a, ()> {
        self.entries()
            .set(self.keys.dedup(id), DEDUP.done.to_owned(), ttl);
        Box::pin(async { Ok(()) })
    }

    fn release<'a>(&'a self, id: &'a str, token: &'a str) -> Fut<'a, ()> {
        self.entries()
            .delete_if(&self.keys.dedup(id), &DEDUP.holder(token));
        Box::pin(async { Ok(()) })
    }

    fn ping(&self) -> Fut<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}
