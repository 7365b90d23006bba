//! Flow control: whether a role's partitions are paused. All of them while a record waits for
//! a dependency or every permit is taken; the unsubscribes while the gate holds as many as it
//! may. It decides and applies pauses only; it never drops, reorders or stores a record.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::TopicPartitionList;

/// Unsubscribes the gate holds, per unit of concurrency, before it pauses their partitions.
const GATE_DEPTH: usize = 4;

/// Which of a role's partitions stay paused: read by the rebalance callbacks, which pause
/// partitions assigned while the role is paused, and free revoked ones of the pause (a paused
/// partition stays paused in librdkafka until it is resumed, even after it moved away and back).
#[derive(Debug, Default)]
pub(super) struct PauseFlags {
    /// Every partition: a record waits for a dependency, or the role is full.
    pub(super) all: AtomicBool,
    /// The gated topic's partitions: the gate holds as much as it may.
    pub(super) gated: AtomicBool,
    pub(super) gated_topic: Option<String>,
    /// Held while partitions are paused or resumed, by the role and by the rebalance callback,
    /// so the flags each read are the ones the last of them applies.
    pub(super) applying: Mutex<()>,
}

impl PauseFlags {
    /// (every partition, the gated topic's) paused now.
    pub(super) fn get(&self) -> (bool, bool) {
        (self.all.load(SeqCst), self.gated.load(SeqCst))
    }

    /// The partitions of `list` to keep paused now.
    pub(super) fn to_pause(&self, list: &TopicPartitionList) -> TopicPartitionList {
        let (all, gated) = self.get();
        let mut paused = TopicPartitionList::new();
        for element in list.elements() {
            let held = self.gated_topic.as_deref() == Some(element.topic());
            if all || (gated && held) {
                paused.add_partition(element.topic(), element.partition());
            }
        }
        paused
    }
}

/// What decides whether a role's partitions are paused.
#[derive(Debug, Default)]
pub(super) struct Flow {
    /// Records being handled.
    pub(super) in_flight: usize,
    /// Of those, records waiting for a dependency.
    pub(super) waiting: usize,
    /// Unsubscribes held by the gate.
    pub(super) gated: usize,
    /// No permit came free for a whole poll interval: every record in hand is stuck (waiting,
    /// or its dead-letter write failing), and the role reads no further until one is done.
    pub(super) full: bool,
}

/// Records held back for a dependency, by role, for readiness and the logs.
#[derive(Debug, Default)]
pub struct WaitState {
    roles: Mutex<BTreeMap<&'static str, RoleWait>>,
}

#[derive(Debug)]
struct RoleWait {
    records: usize,
    since: Instant,
    reason: String,
}

impl WaitState {
    /// Why a role is waiting, if one is.
    pub fn waiting(&self) -> Option<String> {
        let roles = self.roles.lock().expect("waits lock");
        let (role, wait) = roles.iter().next()?;
        Some(format!(
            "the {role} role has waited {} s for a dependency ({} record(s)): {}",
            wait.since.elapsed().as_secs(),
            wait.records,
            wait.reason
        ))
    }

    pub(super) fn enter(&self, role: &'static str, reason: &str) {
        let mut roles = self.roles.lock().expect("waits lock");
        let wait = roles.entry(role).or_insert_with(|| RoleWait {
            records: 0,
            since: Instant::now(),
            reason: String::new(),
        });
        wait.records += 1;
        reason.clone_into(&mut wait.reason);
    }

    pub(super) fn still(&self, role: &'static str, reason: &str) {
        if let Some(wait) = self.roles.lock().expect("waits lock").get_mut(role) {
            reason.clone_into(&mut wait.reason);
        }
    }

    pub(super) fn leave(&self, role: &'static str) {
        let mut roles = self.roles.lock().expect("waits lock");
        if let Some(wait) = roles.get_mut(role) {
            wait.records -= 1;
            if wait.records == 0 {
                roles.remove(role);
            }
        }
    }
}

/// A role's flow counters and its pauses, which follow them.
pub(super) struct FlowControl {
    role: &'static str,
    /// Records handled at once.
    concurrency: usize,
    flow: Mutex<Flow>,
    pause: Arc<PauseFlags>,
    /// `wxpipe_worker_waiting_records`.
    waiting: metrics::Gauge,
}

impl FlowControl {
    pub(super) fn new(role: &'static str, concurrency: usize, pause: Arc<PauseFlags>) -> Self {
        let waiting = metrics::gauge!("wxpipe_worker_waiting_records", "role" => role);
        waiting.set(0.0);
        FlowControl {
            role,
            concurrency,
            flow: Mutex::default(),
            pause,
            waiting,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.flow.lock().expect("flow lock")
    }

    /// Records being handled.
    pub(super) fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Whether the role was last found full.
    pub(super) fn full(&self) -> bool {
        self.lock().full
    }

    /// Changes the flow counters, then pauses or resumes partitions to match: all of them
    /// while a record waits for a dependency; the unsubscribes while the gate is full.
    pub(super) fn update<K: ConsumerContext>(
        &self,
        consumer: &impl Consumer<K>,
        change: impl FnOnce(&mut Flow),
    ) {
        // The flags change only under this lock, so they are what it last decided.
        let mut flow = self.lock();
        change(&mut flow);
        let (paused_all, paused_gated) = self.pause.get();
        let all = flow.waiting > 0 || flow.full;
        let gated = flow.gated >= self.concurrency * GATE_DEPTH
            || (paused_gated && flow.gated > self.concurrency * GATE_DEPTH / 2);
        self.waiting.set(flow.waiting as f64);
        if (all, gated) == (paused_all, paused_gated) {
            return;
        }
        if all != paused_all {
            tracing::debug!(
                role = self.role,
                paused = all,
                "partitions paused or resumed"
            );
        }
        self.pause.all.store(all, SeqCst);
        self.pause.gated.store(gated, SeqCst);
        self.apply(consumer, true);
    }

    /// Pauses (and, with `resume`, resumes) the assigned partitions as the flags say. Pausing
    /// again is harmless, and covers partitions assigned since; a resume drops what was
    /// fetched ahead, so it is sent only when the state changes.
    pub(super) fn apply<K: ConsumerContext>(&self, consumer: &impl Consumer<K>, resume: bool) {
        if self.pause.get() == (false, false) && !resume {
            return;
        }
        let _applying = self.pause.applying.lock().expect("pause lock");
        let Ok(assignment) = consumer.assignment() else {
            return;
        };
        let paused = self.pause.to_pause(&assignment);
        let mut resumed = TopicPartitionList::new();
        for element in assignment.elements() {
            if paused
                .find_partition(element.topic(), element.partition())
                .is_none()
            {
                resumed.add_partition(element.topic(), element.partition());
            }
        }
        if paused.count() > 0 {
            if let Err(error) = consumer.pause(&paused) {
                tracing::debug!(%error, "pause failed");
            }
        }
        if resume && resumed.count() > 0 {
            if let Err(error) = consumer.resume(&resumed) {
                tracing::debug!(%error, "resume failed");
            }
        }
    }
}
