//! The futures the stores' trait methods return, boxed so that the traits work behind `dyn`.

use std::future::Future;
use std::pin::Pin;

use crate::StoreError;

/// What the stores' trait methods return, so they work behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store call's outcome.
pub type Fut<'a, T> = BoxFuture<'a, Result<T, StoreError>>;
