//! A connection's busy mark: the accept loop closes only idle connections when it needs room,
//! and a request being answered marks its connection busy until its answer is written.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Marks a connection busy while it has a complete request being answered.
#[derive(Debug, Default)]
pub struct Busy {
    /// Requests being answered, or [`CLOSING`] once the limit chose this connection.
    requests: AtomicUsize,
    /// Closes the connection when the limit needs its place.
    pub(crate) close: Notify,
}

/// The state of a connection the limit is closing: it can no longer be marked busy.
const CLOSING: usize = usize::MAX;

/// Holds a connection busy until dropped.
#[derive(Debug)]
pub struct BusyGuard<'a>(Option<&'a Busy>);

impl Busy {
    /// Marks the connection busy, unless the limit is closing it already (then the request
    /// is still answered if the connection lasts, but nothing holds it open).
    pub fn mark(&self) -> BusyGuard<'_> {
        let marked = self
            .requests
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n != CLOSING).then_some(n + 1)
            })
            .is_ok();
        BusyGuard(marked.then_some(self))
    }

    /// Claims an idle connection for closing; fails when it is busy (atomically with `mark`).
    pub(crate) fn close_if_idle(&self) -> bool {
        self.requests
            .compare_exchange(0, CLOSING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        if let Some(busy) = self.0 {
            busy.requests.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
