//! Giving up a wait: the `AbortSignal` of a call reaches the core as a [`polybus::Cancel`].
//!
//! `index.js` makes a `Cancel` per call that has a signal, fires it from the signal's `abort`
//! event and passes it to the native call, which waits through the core's `*_until` form. What
//! a cancelled call leaves behind is the core's rule (see [`polybus::Cancel`]).

use napi_derive::napi;

/// A handle that stops the calls it is passed to from waiting: `cancel()` makes them reject
/// with `POLYBUS_ERR_CANCELLED`.
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

    /// Fires the handle: the calls it guards stop waiting. Idempotent.
    #[napi(catch_unwind)]
    pub fn cancel(&self) {
        self.inner.cancel();
    }
}
