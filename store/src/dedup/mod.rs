//! The ingress's dedup store: a [lease](crate::lease) on each event id, and (timestamp,
//! nonce) bindings, behind one small trait with an implementation per engine.
//!
//! The claim protocol, which never turns a failure into a lost event:
//!
//! ```text
//! claim(id)  ── SET id pending:<token> NX PX lease ──▶ Claimed ─▶ publish ─┬─ durable ─▶ confirm: SET id done PX ttl ─▶ 200
//!            │                                                             └─ failed  ─▶ release (if still ours)    ─▶ 503
//!            ├─▶ Done      (a retry of a durable event)              ─▶ 200, nothing published
//!            └─▶ InFlight  (an attempt is still publishing)          ─▶ 503, WeChat retries
//! ```
//!
//! A process that dies holding a claim loses nothing: the lease runs out before WeChat's next
//! retry, which then claims and publishes.

use std::sync::Arc;

use crate::{Engine, Keys};

mod memory;
mod redis;
mod store;

pub use store::{Claim, ClaimRequest, DedupStore, NonceBinding};

/// The dedup store on `engine`, with keys under `prefix`. On Redis it spawns the task that
/// sends batches, so it must be called within a Tokio runtime; the task ends when the store
/// is dropped.
pub fn open(engine: &Engine, prefix: &str) -> Arc<dyn DedupStore> {
    let keys = Keys::new(prefix);
    match engine {
        Engine::Memory => Arc::new(memory::MemoryDedup::new(keys)),
        Engine::Redis(redis) => Arc::new(redis::RedisDedup::new(redis.clone(), keys)),
    }
}
