//! wxpipe's state: the ingress's dedup claims and the workers' effects, in Redis (shared by
//! every process) or in one process's memory (the embedded default and tests).
//!
//! - [`Engine`]: what a `REDIS_URL` names, and the connection policy (lazy, reconnecting,
//!   every call bounded).
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

use std::future::Future;
use std::pin::Pin;

pub mod component;
pub mod dedup;
pub mod effects;
mod engine;
mod error;
mod keys;
pub mod lease;
mod memory;

pub use engine::Engine;
pub use error::StoreError;
pub use lease::Lease;

use keys::Keys;

/// What the stores' trait methods return, so they work behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store call's outcome.
pub type Fut<'a, T> = BoxFuture<'a, Result<T, StoreError>>;
