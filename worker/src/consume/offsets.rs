//! The offset tracker: which records of each assigned partition are in flight, and the offset
//! below which every record is done, the only one a role may store. It never stores past a
//! record in flight, never moves a partition's offset back, and forgets a partition the group
//! revokes before librdkafka lets it go, so no store for it is tried after.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use rdkafka::TopicPartitionList;

/// A role's offsets: the tracker behind its lock, shared by the role's tasks and its rebalance
/// callback. A store happens under the lock: two tasks finishing at once would otherwise store
/// in either order, and a lower offset stored last would stick, since the tracker, taking the
/// higher one as stored, never stores again below it.
#[derive(Debug, Default)]
pub struct Offsets(Mutex<OffsetTracker>);

impl Offsets {
    fn lock(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        self.0.lock().expect("offsets lock")
    }

    /// Marks a record in flight; returns the assignment it was begun under, for `finish`.
    pub fn begin(&self, place: Place<'_>) -> u64 {
        self.lock().begin(place)
    }

    /// Marks a record done and, when the offset below which every record of its partition is
    /// done moved forward, hands that offset to `store`, under the lock; it counts as stored
    /// only once `store` succeeds. A record begun under an earlier assignment of its
    /// partition changes nothing: the partition was revoked since, and its owner now stores.
    pub fn finish<E>(
        &self,
        place: Place<'_>,
        assignment: u64,
        store: impl FnOnce(i64) -> Result<(), E>,
    ) -> Result<Option<i64>, E> {
        self.lock().complete(place, assignment, store)
    }

    /// Forgets partitions the group takes away (before librdkafka lets them go, so no store
    /// for them is tried after). A partition that comes back starts afresh from the group's
    /// committed offset: every record it had in flight is delivered again under the new
    /// assignment, and holds it back there.
    pub fn revoked(&self, list: &TopicPartitionList) {
        let mut tracker = self.lock();
        for element in list.elements() {
            tracker
                .partitions
                .remove(&(element.topic().to_owned(), element.partition()));
        }
    }

    /// Whether the partition of a record begun under `assignment` is still this process's,
    /// under that assignment (not revoked since).
    pub fn owns(&self, (topic, partition, _): Place<'_>, assignment: u64) -> bool {
        self.lock()
            .partitions
            .get(&(topic.to_owned(), partition))
            .is_some_and(|state| state.assignment == assignment)
    }

    /// The offset below which every record of a partition is done, as far as this process
    /// knows (it has the partition, and has handled records of it).
    pub fn done_below(&self, topic: &str, partition: i32) -> Option<i64> {
        self.lock().done_below(topic, partition)
    }
}

/// Offsets in flight per partition, and the offset it is safe to store.
#[derive(Debug, Default)]
struct OffsetTracker {
    partitions: HashMap<(String, i32), PartitionState>,
    /// Numbers the partitions' assignments, so a record begun under an earlier one is known.
    assignments: u64,
}

#[derive(Debug)]
struct PartitionState {
    /// The assignment of the partition its records were begun under.
    assignment: u64,
    in_flight: BTreeSet<i64>,
    /// The highest offset done so far (at first, the one before where the group resumed).
    max_done: i64,
    /// The last offset handed to `store_offsets` (the next one to consume); at first, where
    /// the group resumed: nothing below needs storing.
    stored: i64,
}

/// A record's place: topic, partition, offset.
pub type Place<'a> = (&'a str, i32, i64);

impl OffsetTracker {
    fn begin(&mut self, (topic, partition, offset): Place<'_>) -> u64 {
        let state = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| {
                self.assignments += 1;
                PartitionState {
                    assignment: self.assignments,
                    in_flight: BTreeSet::new(),
                    max_done: offset - 1,
                    stored: offset,
                }
            });
        state.in_flight.insert(offset);
        state.assignment
    }

    /// See [`Offsets::finish`].
    fn complete<E>(
        &mut self,
        (topic, partition, offset): Place<'_>,
        assignment: u64,
        store: impl FnOnce(i64) -> Result<(), E>,
    ) -> Result<Option<i64>, E> {
        let Some(state) = self
            .partitions
            .get_mut(&(topic.to_owned(), partition))
            .filter(|state| state.assignment == assignment)
        else {
            return Ok(None);
        };
        state.in_flight.remove(&offset);
        state.max_done = state.max_done.max(offset);
        let next = match state.in_flight.first() {
            Some(lowest) => *lowest,
            None => state.max_done + 1,
        };
        if state.stored >= next {
            return Ok(None);
        }
        store(next)?;
        state.stored = next;
        Ok(Some(next))
    }

    fn done_below(&self, topic: &str, partition: i32) -> Option<i64> {
        let state = self.partitions.get(&(topic.to_owned(), partition))?;
        match state.in_flight.first() {
            Some(lowest) => Some(*lowest),
            None => Some(state.stored.max(state.max_done + 1)),
        }
    }

    /// Records in flight, all partitions.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `complete`, storing nothing: the offset it would store.
    fn complete(t: &mut OffsetTracker, place: Place<'_>, assignment: u64) -> Option<i64> {
        t.complete::<()>(place, assignment, |_| Ok(())).unwrap()
    }

    #[test]
    fn offsets_are_stored_only_below_the_lowest_in_flight() {
        let mut t = OffsetTracker::default();
        let a = t.begin(("a", 0, 10));
        for offset in 11..15 {
            assert_eq!(t.begin(("a", 0, offset)), a, "one assignment");
        }
        assert_eq!(
            complete(&mut t, ("a", 0, 12), a),
            None,
            "10 and 11 are still in flight"
        );
        assert_eq!(complete(&mut t, ("a", 0, 11), a), None);
        assert_eq!(
            complete(&mut t, ("a", 0, 10), a),
            Some(13),
            "10..=12 done: next is 13"
        );
        assert_eq!(
            complete(&mut t, ("a", 0, 14), a),
            None,
            "13 still in flight"
        );
        assert_eq!(complete(&mut t, ("a", 0, 13), a), Some(15));
        assert_eq!(t.in_flight(), 0);
        // Partitions are independent.
        let a1 = t.begin(("a", 1, 0));
        let b = t.begin(("b", 0, 7));
        assert_eq!(complete(&mut t, ("b", 0, 7), b), Some(8));
        assert_eq!(complete(&mut t, ("a", 1, 0), a1), Some(1));
        // An offset never moves back.
        t.begin(("a", 0, 3));
        assert_eq!(complete(&mut t, ("a", 0, 3), a), None);
        // A partition this process never began is not stored.
        assert_eq!(complete(&mut t, ("c", 0, 1), a), None);
    }

    #[test]
    fn a_failed_store_is_tried_again() {
        let mut t = OffsetTracker::default();
        let a = t.begin(("a", 0, 0));
        for offset in 1..3 {
            t.begin(("a", 0, offset));
        }
        let failed = t.complete(("a", 0, 0), a, |_| Err("not assigned"));
        assert_eq!(failed, Err("not assigned"));
        // Not counted as stored: a second copy of the record (delivered again) stores it.
        t.begin(("a", 0, 0));
        assert_eq!(complete(&mut t, ("a", 0, 0), a), Some(1));
        assert_eq!(complete(&mut t, ("a", 0, 1), a), Some(2));
        assert_eq!(complete(&mut t, ("a", 0, 2), a), Some(3));
    }

    #[test]
    fn a_revoked_partition_starts_afresh_and_its_old_records_store_nothing() {
        let offsets = Offsets::default();
        let finish =
            |place, assignment| offsets.finish::<()>(place, assignment, |_| Ok(())).unwrap();
        let revoke = || {
            let mut list = TopicPartitionList::new();
            list.add_partition("a", 0);
            offsets.revoked(&list);
        };
        let old = offsets.begin(("a", 0, 10));
        for offset in 11..100 {
            offsets.begin(("a", 0, offset));
        }
        for offset in 11..100 {
            finish(("a", 0, offset), old);
        }
        // Revoked with 10 in flight, assigned back at the committed 10 (the commit of the
        // revocation failed): 10 is delivered again, and 11.. after it.
        revoke();
        let new = offsets.begin(("a", 0, 10));
        assert_ne!(new, old);
        // The first copy of 10 ends now: it stores nothing, it belongs to the old assignment.
        assert_eq!(finish(("a", 0, 10), old), None);
        assert_eq!(
            offsets.done_below("a", 0),
            Some(10),
            "the new copy of 10 holds it"
        );
        offsets.begin(("a", 0, 11));
        assert_eq!(finish(("a", 0, 10), new), Some(11));
        assert_eq!(finish(("a", 0, 11), new), Some(12));
        // Revoked again and assigned back at 0 (the topic made again): the old highest done
        // (99) is forgotten, and a late copy from before stores nothing.
        revoke();
        assert_eq!(offsets.done_below("a", 0), None, "not known here now");
        let fresh = offsets.begin(("a", 0, 0));
        for offset in 1..5 {
            offsets.begin(("a", 0, offset));
        }
        assert_eq!(finish(("a", 0, 40), new), None);
        for offset in 0..5 {
            assert_eq!(finish(("a", 0, offset), fresh), Some(offset + 1));
        }
    }

    /// Tasks finishing at once (through `Offsets::finish`, as `RoleConsumer::done` does)
    /// store a partition's offsets in increasing order, ending with the last: the live
    /// worker once left a lower offset stored last, and the partition uncommitted for good.
    #[test]
    fn concurrent_completions_store_in_order() {
        const RECORDS: i64 = 500;
        for round in 0..10 {
            let offsets = Offsets::default();
            let assignment = offsets.begin(("a", 0, 0));
            for offset in 1..RECORDS {
                offsets.begin(("a", 0, offset));
            }
            let stored = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for thread in 0..8 {
                    let (offsets, stored) = (&offsets, &stored);
                    scope.spawn(move || {
                        for offset in (thread..RECORDS).step_by(8) {
                            let _ = offsets.finish::<()>(("a", 0, offset), assignment, |next| {
                                // librdkafka's store takes a moment, in which another task
                                // may finish.
                                std::thread::sleep(Duration::from_micros(offset as u64 * 7 % 50));
                                stored.lock().unwrap().push(next);
                                Ok(())
                            });
                        }
                    });
                }
            });
            let stored = stored.into_inner().unwrap();
            let back = stored.windows(2).find(|w| w[0] >= w[1]);
            assert_eq!(back, None, "round {round}: a store went back");
            assert_eq!(stored.last(), Some(&RECORDS), "round {round}");
        }
    }
}
