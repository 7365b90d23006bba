//! What reached Kafka: end offsets (cheap, and right even when the broker keeps only a little
//! of each log, like the embedded one) and, for runs small enough, a read-back of every id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// End offsets of every partition of every wxpipe topic under a prefix.
pub fn end_offsets(brokers: &str, prefix: &str) -> HashMap<(String, i32), (i64, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("a consumer");
    let mut offsets = HashMap::new();
    for topic in schemas::Topic::all().map(|t| t.name(prefix)) {
        let Ok(metadata) = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) else {
            continue;
        };
        for t in metadata.topics() {
            for p in t.partitions() {
                if let Ok(watermarks) =
                    consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(5))
                {
                    offsets.insert((topic.clone(), p.id()), watermarks);
                }
            }
        }
    }
    offsets
}

/// Records written between two snapshots of end offsets.
pub fn written(
    before: &HashMap<(String, i32), (i64, i64)>,
    after: &HashMap<(String, i32), (i64, i64)>,
) -> i64 {
    after
        .iter()
        .map(|(tp, (_, high))| high - before.get(tp).map_or(0, |(_, h)| *h))
        .sum()
}

/// Records written between two snapshots to the topics whose names start with `topics`.
pub fn written_on(
    before: &HashMap<(String, i32), (i64, i64)>,
    after: &HashMap<(String, i32), (i64, i64)>,
    topics: &str,
) -> i64 {
    let only = |offsets: &HashMap<(String, i32), (i64, i64)>| {
        offsets
            .iter()
            .filter(|((topic, _), _)| topic.starts_with(topics))
            .map(|(tp, o)| (tp.clone(), *o))
            .collect::<HashMap<_, _>>()
    };
    written(&only(before), &only(after))
}

/// Waits until the end offsets stop moving (or `within` passes).
pub fn settled(
    brokers: &str,
    prefix: &str,
    within: Duration,
) -> HashMap<(String, i32), (i64, i64)> {
    let deadline = Instant::now() + within;
    let mut last = end_offsets(brokers, prefix);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = end_offsets(brokers, prefix);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// The `id` of every record written between two snapshots; `None` where the broker no longer
/// holds part of it.
pub fn read_ids(
    brokers: &str,
    before: &HashMap<(String, i32), (i64, i64)>,
    after: &HashMap<(String, i32), (i64, i64)>,
) -> Option<Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "wxload-readback")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut assignment = TopicPartitionList::new();
    let mut expected = 0;
    for ((topic, partition), (low, high)) in after {
        let from = before
            .get(&(topic.clone(), *partition))
            .map_or(0, |(_, h)| *h);
        if *high > from {
            if *low > from {
                return None;
            }
            assignment
                .add_partition_offset(topic, *partition, Offset::Offset(from))
                .ok()?;
            expected += high - from;
        }
    }
    if expected == 0 {
        return Some(Vec::new());
    }
    consumer.assign(&assignment).ok()?;
    let mut ids = Vec::with_capacity(expected as usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (ids.len() as i64) < expected && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let within = after
                .get(&(message.topic().to_owned(), message.partition()))
                .is_some_and(|(_, high)| message.offset() < *high);
            if !within {
                continue;
            }
            let id = message
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .and_then(|v| v["id"].as_str().map(str::to_owned))
                .unwrap_or_default();
            ids.push(id);
        }
    }
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_on_counts_only_the_topics_named() {
        let offsets = |entries: &[(&str, i32, i64)]| {
            entries
                .iter()
                .map(|(t, p, high)| (((*t).to_owned(), *p), (0, *high)))
                .collect::<HashMap<_, _>>()
        };
        let before = offsets(&[
            ("w.component.authorized", 0, 2),
            ("w.event.subscribe", 0, 5),
        ]);
        let after = offsets(&[
            ("w.component.authorized", 0, 5),
            ("w.component.authorized", 1, 1),
            ("w.component.component_verify_ticket", 0, 2),
            ("w.event.subscribe", 0, 9),
            ("wx.component.authorized", 0, 7),
        ]);
        assert_eq!(written_on(&before, &after, "w.component."), 3 + 1 + 2);
        assert_eq!(written(&before, &after), 3 + 1 + 2 + 4 + 7);
    }
}
