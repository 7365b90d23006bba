//! wxpipe's state: the ingress's dedup claims and the workers' effects, in Redis (shared by
//! every process) or in one process's memory (the embedded default and tests).
//!
//! - [`Engine`]: what a `REDIS_URL` names, and the connection policy (lazy, reconnecting,
//!   every call bounded); `redis_url`: the URL's parts; `cluster`: a Cluster connection
//!   replaced when it wedges; `sentinel`: the primary of a Sentinel set, every sentinel asked
//!   at once.
//! - [`lease`]: the one claim / confirm / renew / release primitive behind dedup claims,
//!   welcome sends and the token fetch lock.
//! - [`dedup`]: the ingress's claims, with group commit on Redis.
//! - [`effects`]: one narrow trait per worker effect (subscriptions, locations, welcome
//!   sends, the token cache).
//! - [`component`]: an Open Platform component's tickets and authorizers, which the ingress
//!   and the `component` worker share.
//!
//! Every trait runs the same test suite on every engine (`store/tests/`). This crate knows
//! nothing of HTTP, Kafka or WeChat's protocol, and must never depend on `ingest` or
//! `worker`.

mod cluster;
pub mod component;
pub mod dedup;
pub mod effects;
mod engine;
mod error;
mod fut;
mod keys;
pub mod lease;
mod memory;
mod redis_url;
mod sentinel;

pub use engine::Engine;
pub use error::StoreError;
pub use fut::{BoxFuture, Fut};
pub use lease::Lease;

use keys::Keys;
