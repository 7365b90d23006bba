//! The segment log's handle: what the ingress and the replay ask of the spool. Appends go to the
//! writer thread ([`super::writer`]), which answers each only once it is fsync'd; the segments'
//! format is [`super::segment`]'s, and what a crash left is recovered at open
//! ([`super::recovery`]). While the spool holds anything, new pushes are spooled too, so
//! records reach Kafka in the order they were answered.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::recovery::recover;
use super::segment::{sync_dir, SpoolError, SpoolRecord};
use super::writer::{write_loop, Command, Shared};

/// Held (flock) by the one process using the directory.
const LOCK: &str = "spool.lock";

/// Whether the spool holds records not yet on Kafka, and appends under way.
#[derive(Debug, Default)]
struct Backlog {
    active: bool,
    appending: usize,
    /// The replay is taking the last of the backlog: new pushes wait for it (briefly) instead
    /// of appending, so that under steady load the spool gets empty and pushes go straight to
    /// Kafka again.
    draining: bool,
}

/// Below this, the replay drains: new pushes wait for the last round instead of appending.
const DRAIN_BELOW: u64 = 4 << 20;

/// An append under way: counted in the backlog until dropped, however the append ends (a
/// push whose client hung up drops it at its await), so the spool can tell it is drained.
struct Appending<'a>(&'a Mutex<Backlog>);

impl<'a> Appending<'a> {
    fn enter(backlog: &'a Mutex<Backlog>) -> Self {
        let mut state = backlog.lock().expect("backlog lock");
        state.active = true;
        state.appending += 1;
        Appending(backlog)
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("backlog lock").appending -= 1;
    }
}

/// The spool. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    backlog: Mutex<Backlog>,
    writer: Mutex<mpsc::Sender<Command>>,
    /// Ids that Kafka took after all (a produce that outlived its deadline, then was spooled):
    /// the replay skips them. Lost on a crash, which costs only a copy with the same id.
    delivered: Mutex<std::collections::HashSet<String>>,
    /// Wakes pushes waiting for a drain (see [`Spool::wait_drained`]).
    drained: tokio::sync::Notify,
    /// Committed segment lengths, and spooled events whose first produce is still pending in
    /// librdkafka (bounded by its `message.timeout.ms`): the replay waits for those, so it
    /// knows which to skip.
    shared: Arc<Shared>,
    /// `spool.lock`, locked for as long as this spool lives.
    _lock: File,
    /// A probe write is running (see [`Spool::probe_bounded`]).
    probing: AtomicBool,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, cutting off any torn tail left by a crash.
    ///
    /// Only one process may use a directory (a second would replay and delete the segment
    /// the first still appends to), so it holds `spool.lock`. A disk that fails while the
    /// spool opens (read-only after an error, an unreadable segment) does not stop the start:
    /// the writer never appends to an old segment, reading stops where the cut would be, and
    /// an unreadable segment is set aside by the replay.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Arc<Spool>, SpoolError> {
        fs::create_dir_all(dir)?;
        // Read-only when the disk is (a lock works on either).
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .or_else(|_| File::open(dir.join(LOCK)))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked(dir.to_owned()))
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(error.into()),
        }
        let shared = Arc::new(Shared::default());
        let (bytes, next_seq) = recover(dir, &shared)?;
        let (tx, rx) = mpsc::channel();
        let spool = Arc::new(Spool {
            dir: dir.to_owned(),
            max_bytes,
            backlog: Mutex::new(Backlog {
                active: bytes > 0,
                appending: 0,
                draining: false,
            }),
            drained: tokio::sync::Notify::new(),
            writer: Mutex::new(tx),
            delivered: Mutex::default(),
            shared: Arc::clone(&shared),
            _lock: lock,
            probing: AtomicBool::new(false),
        });
        let writer_dir = dir.to_owned();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write_loop(&writer_dir, next_seq, &rx, &shared))?;
        metrics::gauge!("wxpipe_spool_bytes").set(bytes as f64);
        if bytes > 0 {
            tracing::warn!(
                bytes,
                "spool holds records from an earlier run: replaying them to Kafka"
            );
        }
        Ok(spool)
    }

    /// Notes a spooled event whose first produce has not reported yet.
    pub fn outcome_pending(&self) {
        self.shared.unknown.fetch_add(1, Ordering::SeqCst);
    }

    /// Records how that first produce ended: when Kafka took it, the replay skips the event.
    pub fn outcome_known(&self, id: &str, delivered: bool) {
        if delivered {
            self.delivered
                .lock()
                .expect("delivered lock")
                .insert(id.to_owned());
        }
        self.shared.unknown.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether pushes must go through the spool now (it holds records not yet on Kafka).
    pub fn active(&self) -> bool {
        self.backlog.lock().expect("backlog lock").active
    }

    /// While the replay drains the last of the backlog, waits (until `by` at most) for it to
    /// finish: `true` when the spool is empty and a push may go straight to Kafka, its order
    /// kept (everything spooled before it is on Kafka).
    pub async fn wait_drained(&self, by: std::time::Instant) -> bool {
        let drained = self.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        {
            let backlog = self.backlog.lock().expect("backlog lock");
            if !backlog.active {
                return true;
            }
            if !backlog.draining {
                return false;
            }
        }
        let _ = tokio::time::timeout_at(by.into(), drained).await;
        !self.active()
    }

    /// The round ended early: pushes append again instead of waiting for a drain.
    pub(super) fn stop_draining(&self) {
        self.backlog.lock().expect("backlog lock").draining = false;
        self.drained.notify_waiters();
    }

    /// Whether the spool can take a push now, as far as it knows: below its limit, and its
    /// last write did not fail.
    pub fn writable(&self) -> bool {
        self.bytes() < self.max_bytes && !self.shared.failing.load(Ordering::SeqCst)
    }

    /// Marks the disk as failing (an append did not finish in time): readiness probes it
    /// again before it counts on the spool.
    pub fn mark_stalled(&self) {
        self.shared.failing.store(true, Ordering::SeqCst);
    }

    /// The size limit.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// Appends a record and waits for its fsync.
    pub async fn append(&self, record: &SpoolRecord) -> Result<(), SpoolError> {
        let framed = record.encode()?;
        let len = framed.len() as u64;
        let bytes = &self.shared.bytes;
        if bytes.fetch_add(len, Ordering::SeqCst) + len > self.max_bytes {
            bytes.fetch_sub(len, Ordering::SeqCst);
            return Err(SpoolError::Full(self.max_bytes));
        }
        let _appending = Appending::enter(&self.backlog);
        let (tx, rx) = oneshot::channel();
        let sent = self
            .writer
            .lock()
            .expect("writer lock")
            .send(Command::Append(framed, tx));
        let result = match sent {
            // A failed write's reservation is given back by the writer.
            Ok(()) => rx.await.unwrap_or(Err(SpoolError::Closed)),
            Err(_) => {
                bytes.fetch_sub(len, Ordering::SeqCst);
                Err(SpoolError::Closed)
            }
        };
        metrics::gauge!("wxpipe_spool_bytes").set(self.bytes() as f64);
        result
    }

    /// Starts a new segment if the current one holds anything: the sealed ones, in order.
    pub(super) async fn seal(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .writer
            .lock()
            .expect("writer lock")
            .send(Command::Seal(tx));
        match sent {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err(io::Error::other("spool writer stopped"))),
            Err(_) => Err(io::Error::other("spool writer stopped")),
        }
    }

    /// A segment gone from the spool: its committed bytes leave the count.
    pub(super) fn forget_segment(&self, seq: u64) {
        let committed = self
            .shared
            .committed
            .lock()
            .expect("committed lock")
            .remove(&seq)
            .unwrap_or(0);
        let _ = self
            .shared
            .bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                Some(held.saturating_sub(committed))
            });
        metrics::gauge!("wxpipe_spool_bytes").set(self.bytes() as f64);
    }

    /// Replaces a sealed segment by `records`, what is left of it for Kafka, in place so that
    /// they keep their turn (before every later segment, in their order): written beside it,
    /// fsync'd, renamed over it. A crash leaves the one or the other, so at worst records
    /// Kafka has are sent again with their ids.
    pub(super) fn rewrite_segment(
        &self,
        seq: u64,
        path: &Path,
        records: &[SpoolRecord],
    ) -> Result<(), SpoolError> {
        let mut data = Vec::new();
        for record in records {
            data.extend_from_slice(&record.encode()?);
        }
        let beside = path.with_extension("seg.rewrite");
        // A rewrite that fails (a full disk) does not leave its part taking room.
        let written = File::create(&beside)
            .and_then(|mut file| file.write_all(&data).and_then(|()| file.sync_data()))
            .and_then(|()| fs::rename(&beside, path));
        if let Err(error) = written {
            let _ = fs::remove_file(&beside);
            return Err(error.into());
        }
        sync_dir(&self.dir)?;
        let len = data.len() as u64;
        let before = self
            .shared
            .committed
            .lock()
            .expect("committed lock")
            .insert(seq, len)
            // Not counted (its only commit failed): nothing to give back.
            .unwrap_or(0);
        let _ = self
            .shared
            .bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                Some((held + len).saturating_sub(before))
            });
        metrics::gauge!("wxpipe_spool_bytes").set(self.bytes() as f64);
        Ok(())
    }

    /// Whether the disk failed or hung and no probe write has succeeded since.
    pub fn failing(&self) -> bool {
        self.shared.failing.load(Ordering::SeqCst)
    }

    /// Starts a probe write on a thread of its own, unless one is still running (a hung disk
    /// must not pile up threads): its outcome, or `None`.
    pub fn start_probe(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<bool>> {
        if self.probing.swap(true, Ordering::SeqCst) {
            return None;
        }
        let spool = Arc::clone(self);
        Some(tokio::task::spawn_blocking(move || {
            let written = spool.probe();
            spool.probing.store(false, Ordering::SeqCst);
            written
        }))
    }

    /// [`Spool::start_probe`], waiting at most `within` for it: a hung disk must not hang
    /// readiness. `false` while an earlier probe still hangs.
    pub async fn probe_bounded(self: &Arc<Self>, within: Duration) -> bool {
        let Some(probe) = self.start_probe() else {
            return false;
        };
        matches!(tokio::time::timeout(within, probe).await, Ok(Ok(true)))
    }

    /// Whether the spool's disk takes a write now: a probe file written and fsync'd. Clears
    /// the mark a failed write left, once the disk is back.
    pub fn probe(&self) -> bool {
        let path = self.dir.join("probe");
        let written = File::create(&path)
            .and_then(|mut f| f.write_all(b"probe").and_then(|()| f.sync_data()))
            .is_ok();
        let _ = fs::remove_file(&path);
        if written {
            self.shared.failing.store(false, Ordering::SeqCst);
        }
        written
    }

    /// Whether a spooled event's first produce has not reported yet: the replay waits, so
    /// it knows which records to skip.
    pub(super) fn outcomes_pending(&self) -> bool {
        self.shared.unknown.load(Ordering::SeqCst) > 0
    }

    /// A segment's records less those Kafka took after all (each skipped once), and the ids
    /// skipped.
    pub(super) fn not_delivered(
        &self,
        records: Vec<SpoolRecord>,
    ) -> (Vec<SpoolRecord>, Vec<String>) {
        let mut delivered = self.delivered.lock().expect("delivered lock");
        let (skipped, records): (Vec<_>, Vec<_>) =
            records.into_iter().partition(|r| delivered.remove(&r.id));
        (records, skipped.into_iter().map(|r| r.id).collect())
    }

    /// Ids Kafka has whose records are still in a segment (its rewrite or removal failed): the
    /// replay skips them, so a disk that refuses the rewrite does not make every round send
    /// them again.
    pub(super) fn taken_by_kafka(&self, ids: impl IntoIterator<Item = String>) {
        self.delivered.lock().expect("delivered lock").extend(ids);
    }

    /// The directory, for files kept aside next to the segments.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Ends a replay round that went through every sealed segment: the spool is drained
    /// when nothing is left on disk and no append is under way.
    pub(super) fn round_replayed(&self) {
        let _ = sync_dir(&self.dir);
        let mut backlog = self.backlog.lock().expect("backlog lock");
        if backlog.appending == 0 && self.bytes() == 0 {
            backlog.active = false;
            backlog.draining = false;
            self.drained.notify_waiters();
            tracing::info!("spool drained: pushes go straight to Kafka again");
        } else if self.bytes() < DRAIN_BELOW && !backlog.draining {
            // Little is left: new pushes wait for the next round instead of appending.
            backlog.draining = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::spool::segment::{read_segment, segments};
    use crate::spool::writer::{commit, Current};

    fn record(i: usize) -> SpoolRecord {
        SpoolRecord {
            topic: "wechat.event.subscribe".into(),
            key: format!("o{i}"),
            id: format!("gh:o{i}:1:event.subscribe"),
            value: format!("{{\"id\":\"{i}\"}}").into_bytes(),
        }
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wxpipe-spool-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A spool of 1 MiB in a directory of its own.
    fn fresh() -> (PathBuf, Arc<Spool>) {
        let dir = temp_dir();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        (dir, spool)
    }

    async fn append(spool: &Spool, records: std::ops::Range<usize>) {
        for i in records {
            spool.append(&record(i)).await.unwrap();
        }
    }

    /// The directory of a spool that took `records` and was closed.
    async fn closed_with(records: std::ops::Range<usize>) -> PathBuf {
        let (dir, spool) = fresh();
        append(&spool, records).await;
        dir
    }

    /// What a crash or a failed write leaves at a segment's end.
    fn append_bytes(path: &Path, bytes: &[u8]) {
        OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    fn all_records(dir: &Path) -> Vec<SpoolRecord> {
        segments(dir)
            .unwrap()
            .iter()
            .flat_map(|(_, p)| read_segment(p).unwrap().0)
            .collect()
    }

    #[tokio::test]
    async fn records_survive_a_restart_in_order() {
        let (dir, spool) = fresh();
        assert!(!spool.active());
        append(&spool, 0..50).await;
        assert!(spool.active());
        drop(spool);
        let reopened = Spool::open(&dir, 1 << 20).unwrap();
        assert!(reopened.active(), "a spool with records replays on start");
        assert_eq!(all_records(&dir), (0..50).map(record).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_rewritten_segment_keeps_its_turn_and_gives_back_its_bytes() {
        let (dir, spool) = fresh();
        append(&spool, 0..10).await;
        let sealed = spool.seal().await.unwrap();
        append(&spool, 10..15).await;
        let full = spool.bytes();
        let (seq, path) = &sealed[0];
        let left: Vec<SpoolRecord> = [3, 7].map(record).to_vec();
        spool.rewrite_segment(*seq, path, &left).unwrap();
        let gone: u64 = (0..10)
            .filter(|i| ![3, 7].contains(i))
            .map(|i| record(i).encode().unwrap().len() as u64)
            .sum();
        assert_eq!(spool.bytes(), full - gone);
        drop(spool);
        let expected: Vec<SpoolRecord> = [3, 7].into_iter().chain(10..15).map(record).collect();
        assert_eq!(
            all_records(&dir),
            expected,
            "before every later segment, in order"
        );
        // A rewrite a crash cut short leaves nothing behind once the spool opens.
        let stray = path.with_extension("seg.rewrite");
        fs::write(&stray, b"cut short").unwrap();
        let reopened = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(
            reopened.bytes(),
            full - gone,
            "the same count after a restart"
        );
        assert!(!stray.exists());
    }

    #[tokio::test]
    async fn a_rewritten_segment_whose_commit_failed_counts_what_it_holds_now() {
        // A segment whose only commit failed (written, then its fsync failed) and that could
        // not be cut back keeps its records (answered 503, replayed: a copy at worst) but was
        // never counted: the writer gave its bytes back. Rewritten with what Kafka left, it
        // holds bytes that its removal later subtracts, so the rewrite must count them.
        let (_dir, spool) = fresh();
        spool.append(&record(0)).await.unwrap();
        spool.seal().await.unwrap();
        append(&spool, 1..4).await;
        let sealed = spool.seal().await.unwrap();
        let (seq, path) = sealed.last().unwrap().clone();
        assert_eq!(seq, 1);
        // The state such a failed commit leaves: no committed length, its bytes given back.
        let len = spool.shared.committed.lock().unwrap().remove(&seq).unwrap();
        spool.shared.bytes.fetch_sub(len, Ordering::SeqCst);
        let first = record(0).encode().unwrap().len() as u64;
        assert_eq!(spool.bytes(), first);
        spool.rewrite_segment(seq, &path, &[record(2)]).unwrap();
        fs::remove_file(&path).unwrap();
        spool.forget_segment(seq);
        assert_eq!(
            spool.bytes(),
            first,
            "the first segment's bytes still counted"
        );
    }

    #[tokio::test]
    async fn one_process_at_a_time_uses_a_spool_directory() {
        let dir = temp_dir();
        let first = Spool::open(&dir, 1 << 20).unwrap();
        assert!(matches!(
            Spool::open(&dir, 1 << 20),
            Err(SpoolError::Locked(_))
        ));
        drop(first);
        Spool::open(&dir, 1 << 20).unwrap();
    }

    #[tokio::test]
    async fn an_unreadable_segment_does_not_stop_the_start() {
        let (dir, spool) = fresh();
        spool.append(&record(1)).await.unwrap();
        drop(spool);
        // A segment that cannot be read (here a directory where a file should be).
        fs::create_dir(dir.join(format!("{:016x}.seg", 0x100))).unwrap();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(&record(2)).await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_appends_all_land() {
        let (dir, spool) = fresh();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let spool = Arc::clone(&spool);
                tokio::spawn(async move { spool.append(&record(i)).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let mut keys: Vec<String> = all_records(&dir).into_iter().map(|r| r.key).collect();
        keys.sort();
        assert_eq!(keys.len(), 64);
        keys.dedup();
        assert_eq!(keys.len(), 64);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_a_bad_checksum_ends_the_valid_part() {
        let dir = closed_with(0..3).await;
        let (_, path) = segments(&dir).unwrap().pop().unwrap();
        // A crash mid-append: half a record at the end.
        let mut torn = record(3).encode().unwrap();
        torn.truncate(torn.len() / 2);
        append_bytes(&path, &torn);
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(all_records(&dir), (0..3).map(record).collect::<Vec<_>>());
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            spool.bytes(),
            "torn bytes cut off"
        );
        drop(spool);
        // A flipped byte in the last record: its checksum fails, and it is cut off too.
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 2;
        data[last] ^= 0xff;
        fs::write(&path, &data).unwrap();
        let _spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(all_records(&dir), (0..2).map(record).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_full_spool_refuses() {
        let dir = temp_dir();
        let one = record(0).encode().unwrap().len() as u64;
        let spool = Spool::open(&dir, one * 3).unwrap();
        append(&spool, 0..3).await;
        assert!(matches!(
            spool.append(&record(3)).await,
            Err(SpoolError::Full(_))
        ));
        assert_eq!(spool.bytes(), one * 3);
    }

    #[tokio::test]
    async fn a_segment_with_a_pending_first_produce_is_not_sealed() {
        // The replay checks for pending outcomes, then seals: a push that times out in
        // between must not land in the sealed segment, or it is replayed and then lands twice.
        let (_dir, spool) = fresh();
        spool.append(&record(0)).await.unwrap();
        spool.outcome_pending();
        spool.append(&record(1)).await.unwrap();
        assert!(spool.seal().await.unwrap().is_empty(), "held while pending");
        spool.outcome_known(&record(1).id, true);
        let sealed = spool.seal().await.unwrap();
        assert_eq!(sealed.len(), 1);
        assert_eq!(read_segment(&sealed[0].1).unwrap().0.len(), 2);
    }

    #[tokio::test]
    async fn a_failed_write_seals_its_segment_and_later_appends_survive_a_restart() {
        // A record written halfway (the disk filled up) must not make the reader stop before
        // records appended after it.
        let (dir, spool) = fresh();
        spool.append(&record(0)).await.unwrap();
        let (_, first) = segments(&dir).unwrap().pop().unwrap();
        // The half-written record a failed write leaves behind, then the writer's commit of
        // that batch with the write's error injected.
        let mut torn = record(9).encode().unwrap();
        torn.truncate(5);
        append_bytes(&first, &torn);
        let mut current = Current {
            seq: 0,
            file: None,
            written: fs::metadata(&first).unwrap().len(),
            committed: record(0).encode().unwrap().len() as u64,
        };
        let shared = Shared::default();
        let (tx, _rx) = oneshot::channel();
        let mut result = Err(io::Error::other("injected: no space left on device"));
        assert!(commit(&dir, &mut current, &mut vec![(tx, 0)], &mut result, &shared).is_err());
        assert_eq!(
            current.seq, 1,
            "sealed: the next append starts a new segment"
        );
        assert_eq!(
            fs::metadata(&first).unwrap().len(),
            record(0).encode().unwrap().len() as u64,
            "cut back to what was committed"
        );
        drop(spool);
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(&record(1)).await.unwrap();
        drop(spool);
        let _reopened = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(all_records(&dir), vec![record(0), record(1)]);
    }

    #[test]
    fn a_stalled_disk_counts_as_failing_until_a_probe_write_succeeds() {
        let (dir, spool) = fresh();
        assert!(spool.writable());
        spool.mark_stalled();
        assert!(!spool.writable(), "readiness no longer counts on it");
        assert!(spool.probe(), "the disk takes a write");
        assert!(spool.writable());
        assert!(!dir.join("probe").exists(), "the probe file is removed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_disk_never_hangs_a_probe_nor_piles_up_probes() {
        let (dir, spool) = fresh();
        spool.mark_stalled();
        // A FIFO where the probe file goes: opening it to write blocks, as a hung disk does.
        let fifo = dir.join("probe");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let started = std::time::Instant::now();
        assert!(!spool.probe_bounded(Duration::from_millis(300)).await);
        assert!(
            !spool.probe_bounded(Duration::from_secs(10)).await,
            "a second probe while the first hangs"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(spool.failing());
        // The disk answers again: the hung probe ends, and the next one clears the failure.
        tokio::task::spawn_blocking(move || {
            let mut data = Vec::new();
            let _ = File::open(&fifo).and_then(|mut f| f.read_to_end(&mut data));
        })
        .await
        .unwrap();
        let mut cleared = false;
        for _ in 0..50 {
            if spool.probe_bounded(Duration::from_secs(1)).await {
                cleared = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(cleared && !spool.failing());
    }
}
