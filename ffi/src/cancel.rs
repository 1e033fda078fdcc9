//! Cancel handles: how a C caller (or a Go context, through it) stops a blocking call.

use std::time::Duration;

use polybus_core::Cancel;

use crate::{
    bus::null,
    error::polybus_error_t,
    status::polybus_status_t::{self, POLYBUS_OK},
};

/// @brief A cancel handle (opaque): fired by polybus_cancel() from any thread, or by its
/// deadline. Made by polybus_cancel_new(), released by polybus_cancel_free().
///
/// Pass it to the calls that block (polybus_open(), polybus_publish(),
/// polybus_publish_batch(), polybus_close(), polybus_subscription_close()); NULL there means
/// no cancel. One handle may guard any number of calls, on any threads. When it fires, the
/// calls it guards stop waiting and return POLYBUS_ERR_CANCELLED (POLYBUS_ERR_TIMEOUT when its
/// deadline passed), and leave behind the same as in every language:
/// - polybus_open(): nothing is left open;
/// - polybus_publish(): the event may still be published (its place in the order was fixed);
/// - polybus_publish_batch(): no further events are started; `published` counts those
///   confirmed before it gave up; events started after them may still be published;
/// - polybus_close(), polybus_subscription_close(): closed at once either way; the drain goes on
///   in the background, bounded by `close_timeout_ms`.
pub struct polybus_cancel_t {
    pub(crate) cancel: Cancel,
}

/// The core's handle behind `cancel`, if there is one.
///
/// SAFETY: `cancel` is NULL or a live handle from polybus_cancel_new().
pub(crate) unsafe fn cancel_ref<'a>(cancel: *const polybus_cancel_t) -> Option<&'a Cancel> {
    cancel.as_ref().map(|c| &c.cancel)
}

/// @brief Makes a cancel handle.
///
/// @param timeout_ms A deadline this many milliseconds from now, after which the handle counts
///        as fired (calls fail with POLYBUS_ERR_TIMEOUT); negative for no deadline.
/// @param out *out* The new handle; set to NULL on failure.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL `out`).
/// @sa polybus_cancel, polybus_cancel_free
#[no_mangle]
pub unsafe extern "C" fn polybus_cancel_new(
    timeout_ms: i64,
    out: *mut *mut polybus_cancel_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        if out.is_null() {
            return Err(null("out"));
        }
        let cancel = match u64::try_from(timeout_ms) {
            Ok(ms) => Cancel::with_timeout(Duration::from_millis(ms)),
            Err(_) => Cancel::new(),
        };
        *out = Box::into_raw(Box::new(polybus_cancel_t { cancel }));
        Ok(POLYBUS_OK)
    })
}

/// @brief Fires a cancel handle: every call it guards stops waiting and returns
/// POLYBUS_ERR_CANCELLED, and so does every later call given it. Idempotent; any thread,
/// including a polybus callback. NULL is a no-op.
///
/// @param cancel *borrowed* The handle.
#[no_mangle]
pub unsafe extern "C" fn polybus_cancel(cancel: *const polybus_cancel_t) {
    if let Some(c) = cancel_ref(cancel) {
        c.cancel();
    }
}

/// @brief Fires a cancel handle as a passed deadline: every call it guards stops waiting and
/// returns POLYBUS_ERR_TIMEOUT, as when the deadline given to polybus_cancel_new() passes. For
/// a caller whose deadline lives on its own clock (a language runtime's context or timer).
/// Idempotent; any thread, including a polybus callback; after polybus_cancel() it changes
/// nothing (the first firing decides). NULL is a no-op.
///
/// @param cancel *borrowed* The handle.
/// @sa polybus_cancel
#[no_mangle]
pub unsafe extern "C" fn polybus_cancel_expire(cancel: *const polybus_cancel_t) {
    if let Some(c) = cancel_ref(cancel) {
        c.expire();
    }
}

/// @brief Releases a cancel handle. NULL is a no-op.
///
/// @param cancel *consumed* The handle; no call it guards may still be running.
#[no_mangle]
pub unsafe extern "C" fn polybus_cancel_free(cancel: *mut polybus_cancel_t) {
    if !cancel.is_null() {
        drop(Box::from_raw(cancel));
    }
}
