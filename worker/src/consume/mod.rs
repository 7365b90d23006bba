//! The at-least-once consumer loop of one role.
//!
//! ```text
//! recv ─▶ parse ─▶ Effects::apply ─┬─ Done / Skipped ─────────────────────────────────▶ done
//!          │                       ├─ Wait (an outage) ─▶ capped backoff, while it lasts ─┘
//!          │                       ├─ Held (its account refused) ─▶ its account's probes ─┘
//!          │                       ├─ Retry (unexplained) ─▶ up to max_attempts ─▶ DLQ ─▶ done
//!          └─ not an Event ────────┴─ Poison ───────────────────────────────────▶ DLQ ─▶ done
//! done ─▶ OffsetTracker ─▶ store the offset below which everything is done ─▶ auto-commit
//! ```
//!
//! Records are handled concurrently (up to `WORKER_CONCURRENCY`), in any order: every effect
//! is idempotent and last-write-wins, so order does not matter, and an offset is stored only
//! once every record before it is done. A worker killed at any point loses nothing: what was
//! not stored is redelivered. A role pauses its partitions while it is full or while a record
//! waits for a dependency, and keeps polling, so the group keeps it. A record whose account the
//! API refuses holds only that account's records ([`crate::holds`]): the role reads on.
//!
//! The unbind role holds each unsubscribe until the group has applied every subscribe that was
//! already in the log when it arrived (`Gate`): a re-follow then wins over the older
//! unsubscribe, whatever the lag between the two topics.
//!
//! One file per concern:
//!
//! | file | owns |
//! |---|---|
//! | `role.rs` | the loop: permits, records, their tasks, retries, the final commit |
//! | `offsets.rs` | the offset tracker: what is in flight, what may be stored |
//! | `context.rs` | librdkafka's callbacks: lag, assignments and revocations |
//! | `flow.rs` | pausing and resuming partitions, and what is waiting |
//! | `gate.rs` | the unbind role's unsubscribes, held behind the subscribes |
//! | `dead_letter.rs` | dead-letter writes, and the redrive header |
//! | `backoff.rs` | how long to wait before trying again |
//! | `settings.rs` | the consumers' and the dead-letter producer's settings |

mod backoff;
mod context;
mod dead_letter;
mod flow;
mod gate;
mod offsets;
mod role;
mod settings;

pub(crate) use backoff::backoff;
pub use context::RoleContext;
pub use dead_letter::{DeadLetterState, DEAD_LETTER_HEADERS, REDRIVE_ROLE_HEADER};
pub use flow::WaitState;
pub use offsets::{Offsets, Place};
pub use role::RoleConsumer;
pub use settings::ConsumerSettings;
