//! Giving up a wait: the `AbortSignal` of a call reaches the core as a [`polybus::Cancel`].
//!
//! `index.js` makes a `Cancel` per call that has a signal, fires it when the signal aborts
//! (before the call starts, for a signal that has already aborted) and passes it to the native
//! call, which waits through the core's `*_until` form. Whether the call fails, and what a
//! cancelled call leaves behind, is the core's rule (see [`polybus::Cancel`]): the core checks
//! a fired handle at the start of every call.

use napi_derive::napi;

/// A handle that stops the calls it is passed to from waiting: `cancel()` makes them reject
/// with `POLYBUS_ERR_CANCELLED`, `expire()` with `POLYBUS_ERR_TIMEOUT`.
#[napi]
#[derive(Default)]
pub struct Cancel {
    pub(crate) inner: polybus::Cancel,
}

#[napi]
impl Cancel {
    /// A handle that has not fired.
    #[napi(constructor, catch_unwind)]
    pub fn new() -> Self {
        Cancel::default()
    }

    /// Fires the handle: the calls it guards stop waiting and fail with
    /// `POLYBUS_ERR_CANCELLED`. Idempotent; after `expire()` it changes nothing (the first
    /// firing decides).
    #[napi(catch_unwind)]
    pub fn cancel(&self) {
        self.inner.cancel();
    }

    /// Fires the handle as a passed deadline (the core's `Cancel::expire`): the calls it
    /// guards stop waiting and fail with `POLYBUS_ERR_TIMEOUT`, as when a deadline of the core
    /// passes. What `index.js` calls when the signal's deadline passed on Node's clock
    /// (`AbortSignal.timeout`). Idempotent; after `cancel()` it changes nothing.
    #[napi(catch_unwind)]
    pub fn expire(&self) {
        self.inner.expire();
    }
}
