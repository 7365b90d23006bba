//! The local spool: where a push goes when Kafka cannot take it within the ack deadline, so
//! an outage longer than WeChat's retries (about 15 s) loses nothing. A spooled push is
//! answered 200 only once it is fsync'd; a background task replays the spool to Kafka, in
//! order and with the same ids, once Kafka takes writes again.
//!
//! - `log`: the segment log's handle, what a 200 rests on; `segment`: the record format and
//!   the segment files; `writer`: the thread that appends and fsyncs; `recovery`: what a crash
//!   left, made whole at start.
//! - `replay`: takes sealed segments to Kafka and deletes each once all of it is acknowledged.

mod log;
mod recovery;
mod replay;
mod segment;
mod writer;

pub use self::log::Spool;
pub use self::replay::{replay, ReplayError};
pub use self::segment::{read_segment, SpoolError, SpoolRecord};
