//! The replay: sealed segments to Kafka, oldest first, each deleted only once Kafka has
//! acknowledged all of it. A record is re-sent after a failure or a crash mid-segment: a
//! second copy with the same id, never a loss.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::log::{read_segment, Spool, SpoolError, SpoolRecord};
use crate::cloudevents::CloudEvent;
use crate::publish::{PublishError, Publisher};

/// Records Kafka refused for good, kept for a person (not a segment: never replayed).
const REJECTED: &str = "rejected.seg.kept";

/// Why a replay round stopped early; the replay backs off, then tries again.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Seal(io::Error),
    #[error(transparent)]
    Kafka(#[from] PublishError),
    #[error("keeping a rejected record: {0}")]
    KeepRejected(SpoolError),
    #[error("holding a refused record: {0}")]
    HoldRefused(SpoolError),
    #[error(transparent)]
    Remove(io::Error),
    #[error("{0} record(s) held in the spool: Kafka refuses them for its setup")]
    Held(u64),
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
                tracing::warn!(%error, "spool replay: Kafka not taking writes yet");
                let _ = tokio::time::timeout(backoff, stop.changed()).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
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
    for (seq, path) in &sealed {
        if *stop.borrow() {
            return Ok(());
        }
        // A segment cut short by a write error may hold records past what was committed
        // (answered 503): they are replayed too, a copy with the same id at worst.
        let records = match read_segment(path) {
            Ok((records, _)) => spool.not_delivered(records),
            Err(error) => {
                set_aside(path, &error);
                spool.forget_segment(*seq);
                continue;
            }
        };
        let held = replay_records(spool, publisher, &records).await?;
        fs::remove_file(path).map_err(ReplayError::Remove)?;
        spool.forget_segment(*seq);
        tracing::info!(
            records = records.len(),
            held,
            "spool: segment replayed to Kafka"
        );
        if held > 0 {
            metrics::counter!("wxpipe_spool_records_total", "op" => "held").increment(held);
            // Back off before trying them again.
            return Err(ReplayError::Held(held));
        }
    }
    spool.round_replayed();
    Ok(())
}

/// Sends a segment's records and waits for each outcome: the number held back in the spool
/// because Kafka refuses them for its setup.
async fn replay_records(
    spool: &Spool,
    publisher: &Publisher,
    records: &[SpoolRecord],
) -> Result<u64, ReplayError> {
    let mut held = 0;
    for chunk in records.chunks(512) {
        // An error at enqueue is handled as the record's outcome, like a delivery's:
        // returning at once would re-send, next round, the records already enqueued.
        let deliveries: Vec<_> = chunk
            .iter()
            .map(|r| publisher.enqueue_named(&r.topic, &r.key, &r.value, headers(r)))
            .collect();
        for (record, delivery) in chunk.iter().zip(deliveries) {
            let outcome = match delivery {
                Ok(delivery) => Publisher::delivered(delivery).await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => {}
                // Kafka will never take it as it is (too large, not authorised): keep
                // it for a person instead of blocking every record behind it.
                Err(error) if error.is_permanent() => {
                    keep_rejected(spool.dir(), record, &error.to_string())
                        .map_err(ReplayError::KeepRejected)?;
                }
                // Refused for Kafka's setup (often one topic's ACL): the record goes
                // back into the spool (fsync'd, a later segment) so this segment, and
                // the other topics, move on; it is tried again until the setup is
                // fixed.
                Err(error) if error.is_refused() => {
                    spool
                        .append(record)
                        .await
                        .map_err(ReplayError::HoldRefused)?;
                    held += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
        metrics::counter!("wxpipe_spool_records_total", "op" => "replayed")
            .increment(chunk.len() as u64);
    }
    Ok(held)
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
