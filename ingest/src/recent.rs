//! This instance's memory of (timestamp, nonce) bindings, checked whatever the dedup store
//! says: a captured query cannot carry another body because Redis is down, or because Redis
//! came back without the binding made while it was down.
//!
//! A fixed table on the hot path (one lock, one or two cache lines a push, no allocation): a
//! binding lives for the nonce TTL in one of two slots its key hashes to, and a new binding
//! takes the slot whose binding expires first. Bounded, so per instance and best effort: a
//! replay sent to another instance, or after its binding was pushed out by
//! [`RecentNonces::CAPACITY`]-odd later plaintext pushes, is not caught here (the README says so).

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

/// One binding: hash of (account, timestamp, nonce), the body digest's first 8 bytes, and
/// when it expires (milliseconds since the table was made; 0: empty).
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    key: u64,
    body: u64,
    expires: u64,
}

/// Recent (account, timestamp, nonce) → body bindings of this instance.
#[derive(Debug)]
pub struct RecentNonces {
    ttl_ms: u64,
    born: Instant,
    /// Keyed per process, so no one can aim for collisions.
    hasher: RandomState,
    slots: Mutex<Vec<Slot>>,
}

impl RecentNonces {
    /// Bindings kept at most: 24 bytes each, 1.5 MB in all.
    pub const CAPACITY: usize = 1 << 16;

    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, Self::CAPACITY)
    }

    /// `capacity` is rounded up to a power of two, at least 2.
    pub fn with_capacity(ttl: Duration, capacity: usize) -> Self {
        RecentNonces {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            born: Instant::now(),
            hasher: RandomState::new(),
            slots: Mutex::new(vec![Slot::default(); capacity.max(2).next_power_of_two()]),
        }
    }

    /// Records the binding of (account, timestamp, nonce) to a body's SHA-1, unless that
    /// triple is bound to another body already, which is a replay.
    pub fn bind(
        &self,
        account: &str,
        timestamp: &str,
        nonce: &str,
        body_sha1: &[u8; 20],
    ) -> Binding {
        let key = self.hasher.hash_one((account, timestamp, nonce));
        let body = u64::from_le_bytes(body_sha1[..8].try_into().expect("8 bytes"));
        // Never 0, which marks an empty slot.
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let mut slots = self.slots.lock().expect("recent nonces lock");
        let mask = slots.len() - 1;
        let first = (key as usize) & mask & !1;
        let pair = [first, first + 1];
        let live = |slot: &Slot| slot.expires > now;
        if let Some(&at) = pair
            .iter()
            .find(|&&i| live(&slots[i]) && slots[i].key == key)
        {
            return if slots[at].body == body {
                Binding::Fresh
            } else {
                Binding::Replayed
            };
        }
        let at = if slots[first].expires <= slots[first + 1].expires {
            first
        } else {
            first + 1
        };
        slots[at] = Slot {
            key,
            body,
            expires: now.saturating_add(self.ttl_ms),
        };
        Binding::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_triple_keeps_its_first_body() {
        let recent = RecentNonces::new(Duration::from_secs(60));
        assert_eq!(recent.bind("a", "1", "n", &[1; 20]), Binding::Fresh);
        assert_eq!(
            recent.bind("a", "1", "n", &[1; 20]),
            Binding::Fresh,
            "a retry"
        );
        assert_eq!(recent.bind("a", "1", "n", &[2; 20]), Binding::Replayed);
        // Another account, timestamp or nonce is another triple.
        assert_eq!(recent.bind("b", "1", "n", &[2; 20]), Binding::Fresh);
        assert_eq!(recent.bind("a", "2", "n", &[2; 20]), Binding::Fresh);
        assert_eq!(recent.bind("a", "1", "m", &[2; 20]), Binding::Fresh);
    }

    #[test]
    fn bindings_expire_and_the_table_stays_bounded() {
        let recent = RecentNonces::with_capacity(Duration::from_millis(50), 2);
        assert_eq!(recent.bind("a", "1", "n", &[7; 20]), Binding::Fresh);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(
            recent.bind("a", "1", "n", &[8; 20]),
            Binding::Fresh,
            "expired"
        );

        // Two slots: a third binding pushes out the one that expires first.
        let recent = RecentNonces::with_capacity(Duration::from_secs(60), 2);
        recent.bind("a", "1", "n1", &[7; 20]);
        std::thread::sleep(Duration::from_millis(5));
        recent.bind("a", "1", "n2", &[7; 20]);
        std::thread::sleep(Duration::from_millis(5));
        recent.bind("a", "1", "n3", &[7; 20]);
        assert_eq!(recent.bind("a", "1", "n3", &[8; 20]), Binding::Replayed);
        assert_eq!(recent.bind("a", "1", "n2", &[8; 20]), Binding::Replayed);
        assert_eq!(recent.slots.lock().unwrap().len(), 2);

        // Many bindings in a table 32 times as large: nearly all are still known (a
        // binding is pushed out only when two others share its pair of slots).
        let recent = RecentNonces::with_capacity(Duration::from_secs(60), 1 << 15);
        for n in 0..1000 {
            recent.bind("a", "1", &n.to_string(), &[7; 20]);
        }
        let known = (0..1000)
            .filter(|n| recent.bind("a", "1", &n.to_string(), &[8; 20]) == Binding::Replayed)
            .count();
        assert!(known > 990, "{known}");
    }
}
