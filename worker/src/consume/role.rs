//! The consumer loop of one role: a permit, then a record, handled in a task of its own until
//! its effect is done, skipped or dead-lettered; only then is its offset handed to the tracker.
//! It never stores an offset for a record it did not finish, and never reads past its permits.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use schemas::Event;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::backoff::{backoff, sleep_unless_stopping};
use super::context::RoleContext;
use super::dead_letter::{redriven_for_another, DeadLetters};
use super::flow::{Flow, FlowControl, PauseFlags, WaitState};
use super::gate::Gate;
use super::offsets::{Offsets, Place};
use super::settings::ConsumerSettings;
use crate::config::Role;
use crate::effects::{Effects, Outcome};
use crate::holds::{AccountHolds, Tried, Turn};

/// How long a stopping worker waits for its final commit and group leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A role polls at least this often, paused or not: the group drops a member that stops
/// polling for `max.poll.interval.ms`.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Records held for their account, per unit of concurrency, that give their permits back:
/// past that, they fill the role as an outage would, and it stops reading.
const HELD_PER_PERMIT: usize = 64;

/// One role's consumer and everything its tasks share.
pub struct RoleConsumer {
    pub role: Role,
    consumer: Arc<StreamConsumer<RoleContext>>,
    dead_letters: DeadLetters,
    effects: Arc<Effects>,
    offsets: Arc<Offsets>,
    max_attempts: u32,
    waits: Arc<WaitState>,
    /// One per record being handled: the role reads no further ahead than this.
    permits: Arc<Semaphore>,
    flow: FlowControl,
    /// The unbind role's unsubscribes, held until the subscribes before them are applied.
    gate: Option<Gate>,
    /// Accounts the API refuses, each holding its own records.
    holds: AccountHolds,
    metrics: RoleMetrics,
}

/// A record waiting for a dependency: its role stays paused until every such record is done.
struct Waiting<'a> {
    consumer: &'a RoleConsumer,
}

impl<'a> Waiting<'a> {
    fn enter(consumer: &'a RoleConsumer, reason: &str) -> Self {
        let role = consumer.role.name();
        tracing::warn!(role, %reason, "a dependency is failing: the record waits and the role pauses until it answers");
        consumer.waits.enter(role, reason);
        consumer.update_flow(|flow| flow.waiting += 1);
        Waiting { consumer }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let role = self.consumer.role.name();
        self.consumer.waits.leave(role);
        self.consumer.update_flow(|flow| flow.waiting -= 1);
    }
}

/// A record its account's hold keeps (see [`crate::holds`]): its permit goes back to the role
/// while it waits, unless the role holds too many already, and is taken again before each try
/// but its account's probe, so held records never try more at once than the role's concurrency
/// (when the hold opens, all of them would otherwise send together). The probe goes without
/// one (one per held account): past the cap, a record waiting for the probe may hold the
/// role's last permit.
struct Held<'a> {
    consumer: &'a RoleConsumer,
    account: &'a str,
    /// Under the cap when it was held: it gives its permit back whenever it waits.
    gives_back: bool,
    /// Its permit is given back now: it takes one before it tries again.
    given: bool,
    left: bool,
}

impl<'a> Held<'a> {
    fn new(consumer: &'a RoleConsumer, account: &'a str, gives_back: bool) -> Self {
        let mut held = Held {
            consumer,
            account,
            gives_back,
            given: false,
            left: false,
        };
        held.give_back();
        held
    }

    /// A record the API refused for its account.
    fn enter(consumer: &'a RoleConsumer, account: &'a str, reason: &str) -> Self {
        Self::new(consumer, account, consumer.holds.enter(account, reason))
    }

    /// A record that found its account held before it tried: it waits as a held record
    /// (its permit back to the role), not on the role's permit. `None`: the hold ended.
    fn join(consumer: &'a RoleConsumer, account: &'a str) -> Option<Self> {
        Some(Self::new(consumer, account, consumer.holds.join(account)?))
    }

    fn give_back(&mut self) {
        if self.gives_back && !self.given {
            self.consumer.permits.add_permits(1);
            self.given = true;
        }
    }

    /// Takes a permit again before a try (the one given back is another record's now);
    /// false when the worker stops first.
    async fn retake(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        if !self.given {
            return true;
        }
        tokio::select! {
            permit = Arc::clone(&self.consumer.permits).acquire_owned() => {
                permit.expect("semaphore open").forget();
                self.given = false;
                true
            }
            _ = shutdown.wait_for(|stop| *stop) => false,
        }
    }

    /// The record goes on, or is left to another member: it leaves the hold, and takes back
    /// the permit it gave (a probe tried without it), unless the worker stops first.
    async fn leave(mut self, shutdown: &mut watch::Receiver<bool>) {
        self.left = true;
        self.consumer.holds.leave(self.account);
        self.retake(shutdown).await;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.left {
            self.consumer.holds.leave(self.account);
        }
    }
}

impl std::fmt::Debug for RoleConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleConsumer")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The per-record series of a role, looked up once: a lookup hashes the labels into the
/// registry, which every record would pay two or three times.
struct RoleMetrics {
    /// `wxpipe_worker_events_total` by [`Outcome::LABELS`].
    events: [metrics::Counter; Outcome::LABELS.len()],
    effect_seconds: metrics::Histogram,
}

impl RoleMetrics {
    fn event(&self, outcome: &Outcome) -> &metrics::Counter {
        let at = Outcome::LABELS
            .iter()
            .position(|label| *label == outcome.label())
            .expect("every label is listed");
        &self.events[at]
    }
}

/// The role's series whose labels are known before its first record, at zero: an alert on
/// their increase sees the first dead letter, and dashboards show the role from start.
fn zero_series(role: Role) -> RoleMetrics {
    let role = role.name();
    let events = Outcome::LABELS.map(|outcome| {
        let counter =
            metrics::counter!("wxpipe_worker_events_total", "role" => role, "outcome" => outcome);
        counter.increment(0);
        counter
    });
    metrics::counter!("wxpipe_worker_dead_letter_failures_total", "role" => role).increment(0);
    let _ = metrics::histogram!("wxpipe_worker_dependency_wait_seconds", "role" => role);
    RoleMetrics {
        events,
        effect_seconds: metrics::histogram!("wxpipe_worker_effect_seconds", "role" => role),
    }
}

/// Polls a future once: its output if it is ready now, else `Pending` (the future stays
/// usable, its waker registered).
async fn poll_once<F: std::future::Future>(
    mut future: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await
}

impl RoleConsumer {
    pub fn new(
        role: Role,
        settings: &ConsumerSettings,
        effects: Arc<Effects>,
    ) -> Result<Self, KafkaError> {
        let topics = role.topics_with(&settings.topic_prefix, settings.release_check);
        let metrics = zero_series(role);
        let pause = Arc::new(PauseFlags {
            gated_topic: (role == Role::Unbind).then(|| topics[1].clone()),
            ..PauseFlags::default()
        });
        let offsets = Arc::default();
        let consumer: StreamConsumer<RoleContext> = settings
            .consumer_config(&role.group())
            .create_with_context(RoleContext {
                role: role.name(),
                pause: Arc::clone(&pause),
                offsets: Arc::clone(&offsets),
            })?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        let dlq: FutureProducer = settings.dead_letter_config().create()?;
        let gate = (role == Role::Unbind).then(|| Gate::new(topics[0].clone(), topics[1].clone()));
        Ok(RoleConsumer {
            role,
            consumer: Arc::new(consumer),
            dead_letters: DeadLetters::new(
                dlq,
                role.dlq_topic(&settings.topic_prefix),
                Arc::clone(&settings.dead_letters),
            ),
            effects,
            offsets,
            max_attempts: settings.max_attempts,
            waits: Arc::clone(&settings.waits),
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            flow: FlowControl::new(role.name(), settings.concurrency, pause),
            gate,
            holds: AccountHolds::new(role.name(), settings.concurrency * HELD_PER_PERMIT),
            metrics,
        })
    }

    /// Consumes until `shutdown` turns true, then lets in-flight work finish (within `grace`)
    /// and commits what is done.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        tracing::info!(role = self.role.name(), group = %self.role.group(), "worker consuming");
        let gate = self
            .gate
            .is_some()
            .then(|| tokio::spawn(Arc::clone(&self).run_gate(shutdown.clone())));
        loop {
            // A permit, then a record; the group drops a member that stops polling, so a role
            // whose permits are all held (records waiting for a dependency) still polls, its
            // partitions paused.
            // A permit free now takes the fast path, which arms no timer: a timer armed and
            // dropped twice a record was the loop's largest cost, and one loop feeds the
            // whole role.
            if *shutdown.borrow() {
                break;
            }
            let permit = match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    permit = Arc::clone(&self.permits).acquire_owned() => Some(permit.expect("semaphore open")),
                    () = tokio::time::sleep(POLL_EVERY) => None,
                },
            };
            let full = permit.is_none();
            if full != self.flow.full() {
                self.update_flow(|flow| flow.full = full);
            }
            // Likewise a record already fetched: the timer is armed only when none is.
            let recv = self.consumer.recv();
            tokio::pin!(recv);
            let message = match poll_once(recv.as_mut()).await {
                Poll::Ready(message) => message,
                Poll::Pending => tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    message = &mut recv => message,
                    () = tokio::time::sleep(POLL_EVERY) => {
                        // Partitions assigned since the pause are paused too.
                        self.flow.apply(&*self.consumer, false);
                        continue;
                    }
                },
            };
            let message = match message {
                Ok(message) => message.detach(),
                Err(error) => {
                    tracing::warn!(role = self.role.name(), %error, "consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let assignment =
                self.offsets
                    .begin((message.topic(), message.partition(), message.offset()));
            match &self.gate {
                Some(gate) if message.topic() == gate.unsubscribe_topic => {
                    gate.hold((message, assignment));
                    self.update_flow(|flow| flow.gated += 1);
                }
                // Without a permit (read by a keep-alive poll), it waits for one in its task.
                _ => self.spawn_record((message, assignment), permit, shutdown.clone()),
            }
        }
        if let Some(gate) = gate {
            let _ = gate.await;
        }
        // Drain: in-flight records finish, or stop where they wait, within the grace.
        let drained = tokio::time::timeout(grace, async {
            while self.flow.in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                role = self.role.name(),
                "shutdown grace ran out: unfinished records will be redelivered"
            );
        }
        let role = self.role.name();
        match tokio::time::timeout(CLOSE_TIMEOUT, self.close()).await {
            Ok(Ok(())) => tracing::info!(role, "worker stopped"),
            Ok(Err(error)) => tracing::warn!(role, %error, "final commit failed: records since the last commit will be redelivered"),
            Err(_) => tracing::warn!(role, "Kafka did not answer the final commit in time: records since the last commit will be redelivered"),
        }
    }

    /// Handles a record in a task of its own, under a permit; stores its offset when it is
    /// done (not when the worker stopped it halfway).
    fn spawn_record(
        self: &Arc<Self>,
        (message, assignment): (OwnedMessage, u64),
        permit: Option<OwnedSemaphorePermit>,
        shutdown: watch::Receiver<bool>,
    ) {
        self.update_flow(|flow| flow.in_flight += 1);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _permit = match permit {
                Some(permit) => permit,
                None => Arc::clone(&this.permits)
                    .acquire_owned()
                    .await
                    .expect("semaphore open"),
            };
            if this.handle(&message, assignment, shutdown).await {
                let place = (message.topic(), message.partition(), message.offset());
                this.done(place, assignment);
            }
            this.update_flow(|flow| flow.in_flight -= 1);
        });
    }

    /// Changes the flow counters; the pauses follow.
    fn update_flow(&self, change: impl FnOnce(&mut Flow)) {
        self.flow.update(&*self.consumer, change);
    }

    /// Hands the gate's released unsubscribes, batch by batch, to their tasks.
    async fn run_gate(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let gate = self.gate.as_ref().expect("the unbind role has a gate");
        while let Some(batch) = gate
            .release(&self.consumer, &self.offsets, &mut shutdown)
            .await
        {
            let released = batch.len();
            for held in batch {
                self.spawn_record(held, None, shutdown.clone());
            }
            self.update_flow(|flow| flow.gated -= released);
        }
    }

    /// Commits what is done and closes the consumer (leaving the group, so its partitions move
    /// at once). Both block while Kafka is unreachable (librdkafka's synchronous commit has no
    /// timeout), so they run on a thread of their own, which the caller may stop waiting for.
    async fn close(self: Arc<Self>) -> Result<(), KafkaError> {
        let (closed, outcome) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("consumer-close".into())
            .spawn(move || {
                // Nothing stored since the last commit is not a failure.
                let committed = match self.consumer.commit_consumer_state(CommitMode::Sync) {
                    Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
                    other => other,
                };
                drop(self);
                let _ = closed.send(committed);
            });
        if let Err(error) = thread {
            tracing::warn!(%error, "no thread for the final commit");
            return Err(KafkaError::Canceled);
        }
        outcome.await.unwrap_or(Err(KafkaError::Canceled))
    }

    /// One record, to its end: effect done or skipped, or dead-lettered (`true`); or left
    /// for redelivery because the worker is stopping, or because its partition was revoked while
    /// its account's hold kept it (`false`).
    pub async fn handle(
        &self,
        message: &OwnedMessage,
        assignment: u64,
        mut shutdown: watch::Receiver<bool>,
    ) -> bool {
        let started = Instant::now();
        let payload = message.payload().unwrap_or_default();
        let outcome = match redriven_for_another(message, self.role) {
            Some(other) => Outcome::Skipped(format!("redriven for the {other} role")),
            None => match Event::from_json(payload) {
                Err(error) => Outcome::Poison(format!("not a wxpipe event: {error}")),
                Ok(event) => match self
                    .apply_with_retries(&event, (message, assignment), &mut shutdown)
                    .await
                {
                    Some(outcome) => outcome,
                    None => return false,
                },
            },
        };
        match &outcome {
            Outcome::Done => {}
            Outcome::Skipped(reason) | Outcome::TooOld(reason) | Outcome::Unknown(reason) => {
                tracing::debug!(role = self.role.name(), %reason, "skipped")
            }
            Outcome::Wait(reason)
            | Outcome::Held(reason)
            | Outcome::Retry(reason)
            | Outcome::Poison(reason) => {
                if !self
                    .dead_letters
                    .write(self.role.name(), message, reason, &mut shutdown)
                    .await
                {
                    return false;
                }
            }
        }
        self.metrics.event(&outcome).increment(1);
        self.metrics
            .effect_seconds
            .record(started.elapsed().as_secs_f64());
        true
    }

    /// The effect, tried until it is done or known to fail: an outage is waited out however
    /// long it lasts (the role paused meanwhile); an unexplained failure is tried
    /// `max_attempts` times. `None` when the worker stops first, or when the partition of a
    /// record its account's hold keeps is revoked.
    async fn apply_with_retries(
        &self,
        event: &Event,
        (message, assignment): (&OwnedMessage, u64),
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Outcome> {
        let role = self.role.name();
        if *shutdown.borrow() {
            // Stopping: nothing new starts (above all no welcome send), it is redelivered.
            return None;
        }
        let mut attempt = 1;
        let mut waits = 0;
        let mut waiting: Option<Waiting<'_>> = None;
        let mut held: Option<Held<'_>> = None;
        loop {
            // A record of an account the API refuses waits its account's turn, as one of
            // its held records (its permit given back), and takes a permit before it tries.
            let probe = loop {
                let at = match self.holds.turn(&event.account) {
                    Turn::Go => break false,
                    Turn::Probe => break true,
                    Turn::WaitUntil(at) => at,
                };
                match &mut held {
                    None => held = Held::join(self, &event.account),
                    Some(held) => held.give_back(),
                }
                // Waiting for its account's probe, not for a dependency: a dependency wait
                // pauses the whole role (the next probe finds out if the outage lasts).
                if waiting.take().is_some() {
                    waits = 0;
                }
                // Its partition was revoked: the record is its new owner's now. It leaves the
                // hold here (a hold may last days), and is not done here.
                let place = (message.topic(), message.partition(), message.offset());
                if !self.offsets.owns(place, assignment) {
                    tracing::info!(role, account = %event.account, "a held record's partition was revoked: left to its new owner");
                    if let Some(held) = held.take() {
                        held.leave(shutdown).await;
                    }
                    return None;
                }
                let pause = at.saturating_duration_since(Instant::now());
                if !sleep_unless_stopping(pause, shutdown).await {
                    return None;
                }
            };
            // Not the probe: past the cap a held record keeps its permit while it waits for
            // the probe, and may hold the role's last one.
            if let Some(held) = held.as_mut().filter(|_| !probe) {
                if !held.retake(shutdown).await {
                    return None;
                }
            }
            let outcome = self.effects.apply(self.role, event).await;
            let refused = match &outcome {
                Outcome::Held(reason) => Some(reason.as_str()),
                _ => None,
            };
            if let Some(reason) = refused {
                // The API answered: no longer a dependency wait (which pauses the whole role,
                // and would for as long as the account's hold lasts), a hold of its account.
                if waiting.take().is_some() {
                    waits = 0;
                }
                match &mut held {
                    None => held = Some(Held::enter(self, &event.account, reason)),
                    Some(held) => held.give_back(),
                }
            }
            let tried = match (&outcome, refused) {
                (_, Some(reason)) => Tried::Refused(reason),
                (Outcome::Wait(_) | Outcome::Retry(_), None) => Tried::Unsettled,
                _ => Tried::Passed,
            };
            self.holds.tried(&event.account, probe, tried);
            let pause = match outcome {
                Outcome::Held(_) => continue,
                Outcome::Wait(ref reason) => {
                    match &waiting {
                        Some(_) => self.waits.still(role, reason),
                        None => waiting = Some(Waiting::enter(self, reason)),
                    }
                    waits += 1;
                    let pause = backoff(waits);
                    // Its sum is the time spent waiting.
                    metrics::histogram!("wxpipe_worker_dependency_wait_seconds", "role" => role)
                        .record(pause.as_secs_f64());
                    pause
                }
                Outcome::Retry(ref reason) if attempt < self.max_attempts => {
                    tracing::debug!(role, id = %ops::redact_id(&event.id), attempt, %reason, "effect failed: retrying");
                    attempt += 1;
                    backoff(attempt - 1)
                }
                outcome => {
                    if waiting.is_some() {
                        tracing::info!(role, "the dependency answers again: the record moved on");
                    }
                    if let Some(held) = held.take() {
                        held.leave(shutdown).await;
                    }
                    return Some(outcome);
                }
            };
            if !sleep_unless_stopping(pause, shutdown).await {
                return None;
            }
        }
    }

    /// Stores the offset a record done lets the partition move to, if any.
    fn done(&self, place: Place<'_>, assignment: u64) {
        let (topic, partition, _) = place;
        let stored = self.offsets.finish(place, assignment, |next| {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(topic, partition, Offset::Offset(next))?;
            self.consumer.store_offsets(&list)
        });
        // Not expected (a revoked partition is forgotten first, and no store is tried): the
        // next record done stores again, and the group redelivers what was not committed.
        if let Err(error) = stored {
            tracing::warn!(role = self.role.name(), %error, topic, partition, "offset not stored");
        }
    }
}
