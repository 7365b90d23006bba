//! The local spool: where a push goes when Kafka cannot take it within the ack deadline, so
//! an outage longer than WeChat's retries (about 15 s) loses nothing. A spooled push is
//! answered 200 only once it is fsync'd; a background task replays the spool to Kafka, in
//! order and with the same ids, once Kafka takes writes again.
//!
//! ```text
//! {dir}/{seq:016x}.seg  = record*
//! record                = len:u32 LE ‖ crc32(body):u32 LE ‖ body
//! body                  = topic_len:u16 LE ‖ topic ‖ key_len:u16 LE ‖ key ‖ id_len:u16 LE ‖ id ‖ value
//! ```
//!
//! One writer thread appends and fsyncs, committing every append that arrived meanwhile with
//! one fsync. While the spool holds anything, new pushes are spooled too, so records reach
//! Kafka in the order they were answered. On start, a torn tail (a record cut short by a crash,
//! or with a bad checksum) is cut off: it was never answered 200.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::publish::Publisher;

/// A segment is sealed for replay past this size.
const SEGMENT_BYTES: u64 = 8 << 20;
const HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full ({0} bytes)")]
    Full(u64),
    #[error("spool I/O: {0}")]
    Io(#[from] io::Error),
    #[error("spool writer stopped")]
    Closed,
    #[error("record field over 64 KiB")]
    TooLarge,
}

/// One spooled Kafka record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub topic: String,
    pub key: String,
    /// The event id, so a copy that Kafka took after all is not replayed again.
    pub id: String,
    pub value: Vec<u8>,
}

impl SpoolRecord {
    fn encode(&self) -> Result<Vec<u8>, SpoolError> {
        let mut body = Vec::with_capacity(
            6 + self.topic.len() + self.key.len() + self.id.len() + self.value.len(),
        );
        for field in [&self.topic, &self.key, &self.id] {
            let len = u16::try_from(field.len()).map_err(|_| SpoolError::TooLarge)?;
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(field.as_bytes());
        }
        body.extend_from_slice(&self.value);
        let mut framed = Vec::with_capacity(HEADER + body.len());
        framed.extend_from_slice(&(body.len() as u32).to_le_bytes());
        framed.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        framed.extend_from_slice(&body);
        Ok(framed)
    }

    fn decode(body: &[u8]) -> Option<SpoolRecord> {
        let mut rest = body;
        let mut field = || {
            let (len, tail) = rest.split_first_chunk::<2>()?;
            let (value, tail) = tail.split_at_checked(u16::from_le_bytes(*len) as usize)?;
            rest = tail;
            String::from_utf8(value.to_vec()).ok()
        };
        let (topic, key, id) = (field()?, field()?, field()?);
        Some(SpoolRecord {
            topic,
            key,
            id,
            value: rest.to_vec(),
        })
    }
}

/// Reads a segment's valid records and the length they span; what follows is torn.
pub fn read_segment(path: &Path) -> io::Result<(Vec<SpoolRecord>, u64)> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(header) = data.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(body) = data.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(record) = SpoolRecord::decode(body) else {
            break;
        };
        records.push(record);
        at += HEADER + len;
    }
    Ok((records, at as u64))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.seg"))
}

fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| u64::from_str_radix(n, 16).ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

enum Command {
    Append(Vec<u8>, oneshot::Sender<Result<(), SpoolError>>),
    /// Start a new segment if the current one holds anything; reply with the sealed ones.
    Seal(oneshot::Sender<io::Result<Vec<(u64, PathBuf)>>>),
}

/// Whether the spool holds records not yet on Kafka, and appends under way.
#[derive(Debug, Default)]
struct Backlog {
    active: bool,
    appending: usize,
}

/// The spool. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    bytes: AtomicU64,
    backlog: Mutex<Backlog>,
    writer: Mutex<mpsc::Sender<Command>>,
    /// Ids that Kafka took after all (a produce that outlived its deadline, then was spooled):
    /// the replay skips them. Lost on a crash, which costs only a copy with the same id.
    delivered: Mutex<std::collections::HashSet<String>>,
    /// Spooled events whose first produce is still pending in librdkafka (bounded by its
    /// `message.timeout.ms`); the replay waits for them, so it knows which to skip.
    unknown: AtomicU64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, cutting off any torn tail left by a crash.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Arc<Spool>, SpoolError> {
        fs::create_dir_all(dir)?;
        let mut bytes = 0;
        let mut next_seq = 0;
        for (seq, path) in segments(dir)? {
            let (records, valid) = read_segment(&path)?;
            let len = fs::metadata(&path)?.len();
            if valid < len {
                tracing::warn!(segment = %path.display(), cut = len - valid, "spool: cutting off a torn tail");
                OpenOptions::new().write(true).open(&path)?.set_len(valid)?;
            }
            if records.is_empty() {
                fs::remove_file(&path)?;
            } else {
                bytes += valid;
            }
            next_seq = seq + 1;
        }
        sync_dir(dir)?;
        let (tx, rx) = mpsc::channel();
        let spool = Arc::new(Spool {
            dir: dir.to_owned(),
            max_bytes,
            bytes: AtomicU64::new(bytes),
            backlog: Mutex::new(Backlog {
                active: bytes > 0,
                appending: 0,
            }),
            writer: Mutex::new(tx),
            delivered: Mutex::default(),
            unknown: AtomicU64::new(0),
        });
        let writer_dir = dir.to_owned();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write_loop(&writer_dir, next_seq, &rx))?;
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
        self.unknown.fetch_add(1, Ordering::SeqCst);
    }

    /// Records how that first produce ended: when Kafka took it, the replay skips the event.
    pub fn outcome_known(&self, id: &str, delivered: bool) {
        if delivered {
            self.delivered
                .lock()
                .expect("delivered lock")
                .insert(id.to_owned());
        }
        self.unknown.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether pushes must go through the spool now (it holds records not yet on Kafka).
    pub fn active(&self) -> bool {
        self.backlog.lock().expect("backlog lock").active
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Appends a record and waits for its fsync.
    pub async fn append(&self, record: &SpoolRecord) -> Result<(), SpoolError> {
        let framed = record.encode()?;
        let len = framed.len() as u64;
        if self.bytes.fetch_add(len, Ordering::SeqCst) + len > self.max_bytes {
            self.bytes.fetch_sub(len, Ordering::SeqCst);
            return Err(SpoolError::Full(self.max_bytes));
        }
        {
            let mut backlog = self.backlog.lock().expect("backlog lock");
            backlog.active = true;
            backlog.appending += 1;
        }
        let (tx, rx) = oneshot::channel();
        let sent = self
            .writer
            .lock()
            .expect("writer lock")
            .send(Command::Append(framed, tx));
        let result = match sent {
            Ok(()) => rx.await.unwrap_or(Err(SpoolError::Closed)),
            Err(_) => Err(SpoolError::Closed),
        };
        self.backlog.lock().expect("backlog lock").appending -= 1;
        if result.is_err() {
            self.bytes.fetch_sub(len, Ordering::SeqCst);
        }
        metrics::gauge!("wxpipe_spool_bytes").set(self.bytes() as f64);
        result
    }

    async fn seal(&self) -> io::Result<Vec<(u64, PathBuf)>> {
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

    /// Replays the spool to Kafka until `stop` turns true: each sealed segment in order, every
    /// record acknowledged before the segment is deleted. A record is re-sent after a failure
    /// or a crash mid-segment: a second copy with the same id, never a loss.
    pub async fn replay(
        self: Arc<Self>,
        publisher: Arc<Publisher>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(200);
        loop {
            if *stop.borrow() {
                return;
            }
            if !self.active() || self.unknown.load(Ordering::SeqCst) > 0 {
                let _ = tokio::time::timeout(Duration::from_millis(100), stop.changed()).await;
                continue;
            }
            match self.replay_sealed(&publisher).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(error) => {
                    tracing::warn!(%error, "spool replay: Kafka not taking writes yet");
                    let _ = tokio::time::timeout(backoff, stop.changed()).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn replay_sealed(&self, publisher: &Publisher) -> Result<(), String> {
        let sealed = self.seal().await.map_err(|e| e.to_string())?;
        for (_, path) in &sealed {
            let (records, valid) = read_segment(path).map_err(|e| e.to_string())?;
            let records: Vec<SpoolRecord> = {
                let mut delivered = self.delivered.lock().expect("delivered lock");
                records
                    .into_iter()
                    .filter(|r| !delivered.remove(&r.id))
                    .collect()
            };
            for chunk in records.chunks(512) {
                let deliveries: Vec<_> = chunk
                    .iter()
                    .map(|r| publisher.enqueue_named(&r.topic, &r.key, &r.value))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
                for delivery in deliveries {
                    Publisher::delivered(delivery)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                metrics::counter!("wxpipe_spool_records_total", "op" => "replayed")
                    .increment(chunk.len() as u64);
            }
            fs::remove_file(path).map_err(|e| e.to_string())?;
            self.bytes
                .fetch_sub(valid.min(self.bytes()), Ordering::SeqCst);
            metrics::gauge!("wxpipe_spool_bytes").set(self.bytes() as f64);
            tracing::info!(records = records.len(), "spool: segment replayed to Kafka");
        }
        let _ = sync_dir(&self.dir);
        // Drained when nothing is left on disk and no append is under way.
        let mut backlog = self.backlog.lock().expect("backlog lock");
        if backlog.appending == 0 && self.bytes() == 0 {
            backlog.active = false;
            tracing::info!("spool drained: pushes go straight to Kafka again");
        }
        Ok(())
    }
}

/// The writer thread: appends, one fsync per batch of appends, and sealing.
fn write_loop(dir: &Path, mut seq: u64, commands: &mpsc::Receiver<Command>) {
    let open = |seq: u64| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, seq))
    };
    let mut file: Option<File> = None;
    let mut written = 0u64;
    while let Ok(first) = commands.recv() {
        let mut batch = vec![first];
        batch.extend(commands.try_iter().take(1023));
        let mut waiting = Vec::new();
        let mut result: io::Result<()> = Ok(());
        for command in batch {
            match command {
                Command::Append(framed, reply) => {
                    if result.is_ok() {
                        result = (|| {
                            if file.is_none() {
                                file = Some(open(seq)?);
                                sync_dir(dir)?;
                            }
                            file.as_mut().expect("open").write_all(&framed)?;
                            written += framed.len() as u64;
                            Ok(())
                        })();
                    }
                    waiting.push(reply);
                }
                Command::Seal(reply) => {
                    // Commit what this batch wrote before sealing it.
                    let sealed = commit(&mut file, &mut waiting, &mut result).and_then(|()| {
                        if written > 0 || file.is_some() {
                            file = None;
                            written = 0;
                            seq += 1;
                        }
                        Ok(segments(dir)?
                            .into_iter()
                            .filter(|(s, _)| *s < seq)
                            .collect())
                    });
                    let _ = reply.send(sealed);
                }
            }
        }
        let _ = commit(&mut file, &mut waiting, &mut result);
        if written >= SEGMENT_BYTES {
            file = None;
            written = 0;
            seq += 1;
        }
    }
}

/// fsyncs what was written and answers every append waiting on it.
fn commit(
    file: &mut Option<File>,
    waiting: &mut Vec<oneshot::Sender<Result<(), SpoolError>>>,
    result: &mut io::Result<()>,
) -> io::Result<()> {
    if waiting.is_empty() {
        return Ok(());
    }
    if result.is_ok() {
        if let Some(f) = file.as_mut() {
            *result = f.sync_data();
        }
    }
    let outcome = match result {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    };
    for reply in waiting.drain(..) {
        let _ = reply.send(match &outcome {
            Ok(()) => Ok(()),
            Err(e) => Err(SpoolError::Io(io::Error::new(e.kind(), e.to_string()))),
        });
    }
    if outcome.is_err() {
        // A failed write may have left a partial record: start a fresh segment.
        *file = None;
    }
    let done = outcome.map(drop);
    *result = Ok(());
    done
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn all_records(dir: &Path) -> Vec<SpoolRecord> {
        segments(dir)
            .unwrap()
            .iter()
            .flat_map(|(_, p)| read_segment(p).unwrap().0)
            .collect()
    }

    #[tokio::test]
    async fn records_survive_a_restart_in_order() {
        let dir = temp_dir();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert!(!spool.active());
        for i in 0..50 {
            spool.append(&record(i)).await.unwrap();
        }
        assert!(spool.active());
        drop(spool);
        let reopened = Spool::open(&dir, 1 << 20).unwrap();
        assert!(reopened.active(), "a spool with records replays on start");
        assert_eq!(all_records(&dir), (0..50).map(record).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn concurrent_appends_all_land() {
        let dir = temp_dir();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
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
        let dir = temp_dir();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        for i in 0..3 {
            spool.append(&record(i)).await.unwrap();
        }
        drop(spool);
        let (_, path) = segments(&dir).unwrap().pop().unwrap();
        // A crash mid-append: half a record at the end.
        let mut torn = record(3).encode().unwrap();
        torn.truncate(torn.len() / 2);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn)
            .unwrap();
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
        for i in 0..3 {
            spool.append(&record(i)).await.unwrap();
        }
        assert!(matches!(
            spool.append(&record(3)).await,
            Err(SpoolError::Full(_))
        ));
        assert_eq!(spool.bytes(), one * 3);
    }

    #[test]
    fn encoding_round_trips() {
        let r = SpoolRecord {
            topic: "t".into(),
            key: "中文".into(),
            id: "i".into(),
            value: vec![0, 1, 2, 255],
        };
        let framed = r.encode().unwrap();
        assert_eq!(SpoolRecord::decode(&framed[HEADER..]), Some(r));
        assert_eq!(SpoolRecord::decode(&[5, 0, b'a']), None);
        assert_eq!(
            SpoolRecord::decode(&[1, 0, b'a', 1, 0, b'b']),
            None,
            "no id"
        );
    }
}
