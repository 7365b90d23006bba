//! The local spool: where a push goes when Kafka cannot take it within the ack deadline, so
//! an outage longer than WeChat's retries (about 15 s) loses nothing. A spooled push is
//! answered 200 only once it is fsync'd; a background task replays the spool to Kafka, in
//! order and with the same ids, once Kafka takes writes again.
//!
//! - `log`: the segment log, what a 200 rests on: its format, the writer that fsyncs, and
//!   the recovery of what a crash left.
//! - `replay`: takes sealed segments to Kafka and deletes each once all of it is acknowledged.

mod log;
mod replay;

pub use self::log::{read_segment, Spool, SpoolError, SpoolRecord};
pub use self::replay::{replay, ReplayError};
