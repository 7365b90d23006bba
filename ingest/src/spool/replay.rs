//! The replay: sealed segments to Kafka, oldest first, each deleted only once Kafka has
//! acknowledged all of it. A record is re-sent after a crash mid-segment: a second copy with
//! the same id, never a loss.
//!
//! A record Kafka does not take now (its partition has no leader or too few in-sync replicas,
//! its topic is missing, Kafka refuses it for its setup, Kafka is down) does not end the
//! round: it stays in its segment, which is rewritten in place with only what Kafka has not
//! acknowledged, and the rest moves on. So one sick partition or topic holds back only its own
//! records, and nothing Kafka acknowledged is sent again. The records left keep their turn:
//! within a round, a record whose key (its user) has an earlier record left is left too, and
//! the next round sends them again oldest first.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::log::Spool;
use super::segment::{read_segment, SpoolError, SpoolRecord};
use crate::cloudevents::CloudEvent;
use crate::publish::{PublishError, Publisher};

/// Records Kafka refused for good, kept for a person (not a segment: never replayed).
const REJECTED: &str = "rejected.seg.kept";

/// Records handed to the producer at once; their outcomes are awaited before the next ones,
/// so a record waits behind an earlier one of its key that Kafka did not take.
const BATCH: usize = 2048;

/// Past this many keys with a record left, a round ends early (each key costs a hash): the
/// rest is sent next round.
const MAX_KEYS_LEFT: usize = 1 << 18;

/// Why a replay round stopped early; the replay backs off, then tries again.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Seal(io::Error),
    #[error("rewriting a segment with the records left: {0}")]
    Rewrite(SpoolError),
    #[error(transparent)]
    Remove(io::Error),
    #[error("{left} record(s) left in the spool for the next round; the first: {first}")]
    Left { left: u64, first: PublishError },
}

/// Replays the spool to Kafka until `stop` turns true.
pub async fn replay(spool: Arc<Spool>, publisher: Arc<Publisher>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            return;
        }
        if !spool.active() || spool.outcomes_pending() {
            let _ = tokio::time::timeout(Duration::from_millis(100), stop.changed()).await;
            continue;
        }
        match replay_sealed(&spool, &publisher, &stop).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(error) => {
                spool.stop_draining();
                tracing::warn!(%error, "spool replay: Kafka not taking every record yet");
                let _ = tokio::time::timeout(backoff, stop.changed()).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// What a round left in the spool: how many records, the first one's error, and the keys
/// (hashed, per topic) that later records of the round wait behind.
#[derive(Default)]
struct Left {
    records: u64,
    first: Option<PublishError>,
    keys: HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
}

impl Left {
    fn key(&self, record: &SpoolRecord) -> u64 {
        self.hasher.hash_one((&record.topic, &record.key))
    }

    /// Whether an earlier record of this record's key was left this round (a hash collision
    /// only leaves one more record for the next round).
    fn waits(&self, record: &SpoolRecord) -> bool {
        !self.keys.is_empty() && self.keys.contains(&self.key(record))
    }

    fn leave(&mut self, record: &SpoolRecord, error: Option<PublishError>) {
        self.records += 1;
        self.keys.insert(self.key(record));
        if self.first.is_none() {
            self.first = error;
        }
    }
}

/// One round: seals the segment being written, then replays every sealed one in order.
async fn replay_sealed(
    spool: &Spool,
    publisher: &Publisher,
    stop: &watch::Receiver<bool>,
) -> Result<(), ReplayError> {
    let sealed = spool.seal().await.map_err(ReplayError::Seal)?;
    let mut left = Left::default();
    for (seq, path) in &sealed {
        if *stop.borrow() || left.keys.len() > MAX_KEYS_LEFT {
            break;
        }
        // A segment cut short by a write error may hold records past what was committed
        // (answered 503): they are replayed too, a copy with the same id at worst.
        let (records, skipped) = match read_segment(path) {
            Ok((records, _)) => spool.not_delivered(records),
            Err(error) => {
                set_aside(path, &error);
                spool.forget_segment(*seq);
                continue;
            }
        };
        let before = left.records;
        let rest = replay_records(spool, publisher, &records, &mut left, stop).await?;
        // If the segment cannot be removed or rewritten (a full or failing disk), what Kafka
        // has (or refused for good) stays in it: skipped by the next rounds of this process,
        // not sent again each round.
        let taken = || {
            let left: HashSet<&str> = rest.iter().map(|r| r.id.as_str()).collect();
            records
                .iter()
                .filter(|r| !left.contains(r.id.as_str()))
                .map(|r| r.id.clone())
                .chain(skipped.iter().cloned())
                .collect::<Vec<_>>()
        };
        if rest.is_empty() {
            if let Err(error) = fs::remove_file(path) {
                spool.taken_by_kafka(taken());
                return Err(ReplayError::Remove(error));
            }
            spool.forget_segment(*seq);
            tracing::info!(records = records.len(), "spool: segment replayed to Kafka");
        } else if rest.len() < records.len() + skipped.len() {
            // What Kafka has leaves the segment, so it is never sent again.
            if let Err(error) = spool.rewrite_segment(*seq, path, &rest) {
                spool.taken_by_kafka(taken());
                return Err(ReplayError::Rewrite(error));
            }
            tracing::info!(
                records = records.len(),
                left = left.records - before,
                "spool: segment partly replayed to Kafka; the rest stays in it"
            );
        }
    }
    if *stop.borrow() {
        return Ok(());
    }
    if left.records > 0 {
        metrics::counter!("wxpipe_spool_records_total", "op" => "held").increment(left.records);
        return Err(ReplayError::Left {
            left: left.records,
            first: left.first.unwrap_or(PublishError::Canceled),
        });
    }
    spool.round_replayed();
    Ok(())
}

/// Sends a segment's records and waits for each outcome: the records Kafka did not take, in
/// their order, to stay in the segment.
///
/// On `stop` it waits no more (with Kafka down each batch waits out librdkafka's delivery
/// timeout, so a segment would hold up a shutdown for many of them): the records not sent
/// and those whose outcome is still unknown stay, a copy with the same id at worst.
async fn replay_records(
    spool: &Spool,
    publisher: &Publisher,
    records: &[SpoolRecord],
    left: &mut Left,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<SpoolRecord>, ReplayError> {
    let mut stop = stop.clone();
    let mut rest = Vec::new();
    for (n, batch) in records.chunks(BATCH).enumerate() {
        if *stop.borrow() {
            rest.extend_from_slice(&records[n * BATCH..]);
            break;
        }
        // An error at enqueue is handled as the record's outcome, like a delivery's.
        let deliveries: Vec<_> = batch
            .iter()
            .map(|r| {
                (!left.waits(r))
                    .then(|| publisher.enqueue_named(&r.topic, &r.key, &r.value, headers(r)))
            })
            .collect();
        let mut replayed = 0;
        for (record, delivery) in batch.iter().zip(deliveries) {
            let outcome = match delivery {
                // Behind an earlier record of its key that Kafka did not take.
                None => {
                    left.leave(record, None);
                    rest.push(record.clone());
                    continue;
                }
                Some(Ok(delivery)) => tokio::select! {
                    outcome = Publisher::delivered(delivery) => outcome,
                    Ok(_) = stop.wait_for(|stop| *stop) => Err(PublishError::Canceled),
                },
                Some(Err(error)) => Err(error),
            };
            match outcome {
                Ok(()) => replayed += 1,
                // Kafka will never take it as it is (too large, not authorised): keep
                // it for a person instead of blocking every record behind it.
                // If the disk will not keep it (full), it stays in its segment like a record
                // Kafka did not take now, and the rest of the segment moves on: ending the
                // round here sent what Kafka took of the segment again every round.
                Err(error) if error.is_permanent() => {
                    if let Err(kept) = keep_rejected(spool.dir(), record, &error.to_string()) {
                        tracing::error!(error = %kept, id = %ops::redact_id(&record.id),
                            "spool: a record Kafka refused for good could not be kept aside; it stays in the spool");
                        left.leave(record, Some(error));
                        rest.push(record.clone());
                    }
                }
                // Not now: its partition or topic is sick, Kafka is down, or Kafka refuses
                // it for its setup (often one topic's ACL), which passes once a person
                // fixes it. It stays, and is tried again next round.
                Err(error) => {
                    left.leave(record, Some(error));
                    rest.push(record.clone());
                }
            }
        }
        metrics::counter!("wxpipe_spool_records_total", "op" => "replayed").increment(replayed);
    }
    Ok(rest)
}

/// A spooled record's headers, the same as when it was first produced: the spool keeps the
/// value only (its format predates the headers), and the value is the event they describe.
fn headers(record: &SpoolRecord) -> rdkafka::message::OwnedHeaders {
    match CloudEvent::of_value(&record.value) {
        Some(ce) => ce.headers(&record.id),
        None => {
            tracing::warn!(id = %ops::redact_id(&record.id), "spool: a record that is not a wxpipe event is replayed without CloudEvents headers");
            rdkafka::message::OwnedHeaders::new()
        }
    }
}

/// Sets an unreadable (EIO) segment aside for a person, so the rest can drain. Under a name
/// no earlier one has (sequence numbers restart with an empty directory), and if even the
/// rename fails the replay passes it by this round rather than stall behind it.
fn set_aside(path: &Path, error: &io::Error) {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let aside = path.with_extension(format!("seg.{stamp}.unreadable"));
    tracing::error!(%error, segment = %path.display(), aside = %aside.display(),
        "spool: a segment cannot be read; set aside, the replay goes on");
    if let Err(error) = fs::rename(path, &aside) {
        tracing::error!(%error, segment = %path.display(), "spool: an unreadable segment could not be set aside; the replay passes it by");
    }
}

/// Keeps a record Kafka refused for good in `rejected.seg.kept` (the spool's own format, for
/// a person to inspect or re-send), fsync'd, before the segment holding it is deleted.
fn keep_rejected(dir: &Path, record: &SpoolRecord, error: &str) -> Result<(), SpoolError> {
    tracing::error!(%error, id = %ops::redact_id(&record.id), file = %dir.join(REJECTED).display(),
        "spool: Kafka refused a record for good; kept aside, the replay goes on");
    metrics::counter!("wxpipe_spool_records_total", "op" => "rejected").increment(1);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(REJECTED))?;
    file.write_all(&record.encode()?)?;
    file.sync_data()?;
    Ok(())
}
