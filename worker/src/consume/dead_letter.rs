//! Dead-lettering: a record no effect can take is written to its role's dead-letter topic,
//! with what failed and where it was, before its offset may be stored. A write Kafka refuses is
//! tried again for as long as it takes (readiness says so); a record is never dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use super::backoff::{backoff, sleep_unless_stopping};
use crate::config::Role;
use tokio::sync::watch;

/// The header `worker redrive` adds to a record it moves back: the role whose dead letter it
/// was. Every other role reading the topic skips the record, so it reaches that role only.
pub const REDRIVE_ROLE_HEADER: &str = "wxpipe_redrive_role";

/// The role a redriven record was moved back for, when that is not `role` (which skips it).
pub(crate) fn redriven_for_another(message: &impl Message, role: Role) -> Option<String> {
    let headers = message.headers()?;
    let target = headers
        .iter()
        .find(|h| h.key == REDRIVE_ROLE_HEADER)?
        .value
        .map(String::from_utf8_lossy)?;
    (target != role.name()).then(|| target.into_owned())
}

/// The headers a dead letter adds to its record's own (what failed, and where the record was),
/// and the one `worker redrive` adds (the role it moved the record back for). Each drops them
/// all before adding its own, so a record dead-lettered and redriven again carries one of each.
pub const DEAD_LETTER_HEADERS: [&str; 5] = [
    "error",
    "source_topic",
    "source_partition",
    "source_offset",
    REDRIVE_ROLE_HEADER,
];

/// A record of a role: (role, topic, partition, offset).
type Source = (&'static str, String, i32, i64);

/// Records whose dead-letter write is failing now, by role and source (two roles read
/// `event.subscribe`), as (role, topic, partition, offset): each
/// holds its partition back (its offset must not be committed before), so readiness reports
/// them, never a silent stall.
#[derive(Debug, Default)]
pub struct DeadLetterState {
    /// Why each record's dead-letter write failed last.
    failing: Mutex<BTreeMap<Source, String>>,
}

impl DeadLetterState {
    /// Why dead-lettering is stuck, if it is.
    pub fn stuck(&self) -> Option<String> {
        let failing = self.failing.lock().expect("dead letters lock");
        let ((role, topic, partition, offset), error) = failing.iter().next()?;
        Some(format!(
            "dead-letter writes failing for {} record(s), e.g. {role} {topic}/{partition}@{offset}: {error}",
            failing.len()
        ))
    }

    fn failed(&self, source: Source, error: String) -> bool {
        self.failing
            .lock()
            .expect("dead letters lock")
            .insert(source, error)
            .is_none()
    }

    fn written(&self, source: &Source) {
        self.failing
            .lock()
            .expect("dead letters lock")
            .remove(source);
    }
}

/// A role's dead-letter writer.
pub(super) struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    /// Shared by every role, and read by the readiness check.
    state: Arc<DeadLetterState>,
}

impl DeadLetters {
    pub(super) fn new(
        producer: FutureProducer,
        topic: String,
        state: Arc<DeadLetterState>,
    ) -> Self {
        DeadLetters {
            producer,
            topic,
            state,
        }
    }

    /// Writes the record to the role's dead-letter topic, with the error in a header; keeps
    /// trying until Kafka takes it, since its offset must not be stored before (`false`: the
    /// worker stopped first).
    pub(super) async fn write(
        &self,
        role: &'static str,
        message: &OwnedMessage,
        reason: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        tracing::error!(role, topic = message.topic(), partition = message.partition(),
            offset = message.offset(), %reason, "record dead-lettered");
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        // The record's own headers (its CloudEvents attributes) first, then the dead letter's.
        let mut headers = OwnedHeaders::new();
        if let Some(own) = message.headers() {
            for header in own.iter() {
                if !DEAD_LETTER_HEADERS.contains(&header.key) {
                    headers = headers.insert(header);
                }
            }
        }
        let headers = headers
            .insert(Header {
                key: "error",
                value: Some(reason),
            })
            .insert(Header {
                key: "source_topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "source_partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "source_offset",
                value: Some(&offset),
            });
        let source = (
            role,
            message.topic().to_owned(),
            message.partition(),
            message.offset(),
        );
        let mut attempt = 0;
        loop {
            let mut record = FutureRecord::to(&self.topic)
                .payload(message.payload().unwrap_or_default())
                .headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            match self.producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    if attempt > 0 {
                        tracing::info!(
                            role,
                            "dead-letter write succeeded after failing: the partition moves on"
                        );
                    }
                    self.state.written(&source);
                    return true;
                }
                Err((error, _)) => {
                    attempt += 1;
                    metrics::counter!("wxpipe_worker_dead_letter_failures_total", "role" => role)
                        .increment(1);
                    if self.state.failed(source.clone(), error.to_string()) {
                        tracing::error!(role, topic = %self.topic, %error,
                            "dead-letter write failed: this record's partition waits until it succeeds (readiness says so)");
                    } else {
                        tracing::warn!(role, %error, attempt, "dead-letter write failed again: retrying");
                    }
                    if !sleep_unless_stopping(backoff(attempt), shutdown).await {
                        self.state.written(&source);
                        return false;
                    }
                }
            }
        }
    }
}
