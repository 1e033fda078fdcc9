//! The state of a bus's connection to its broker: read it, or wait for it to change.

use std::{sync::mpsc, time::Duration};

use polybus_core::{runtime, ConnectionState, Error, ErrorKind};

use crate::{
    bus::{bus_ref, null, polybus_t},
    error::polybus_error_t,
    status::polybus_status_t::{self, POLYBUS_NO_EVENTS, POLYBUS_OK},
};

/// Connection state: connected, publishes reach the broker (`memory://` always is, until
/// closed).
pub const POLYBUS_STATE_CONNECTED: i32 = 0;
/// Connection state: the connection was lost and polybus is reconnecting; subscriptions survive
/// it. Publishes may wait or fail meanwhile.
pub const POLYBUS_STATE_DISCONNECTED: i32 = 1;
/// Connection state: the bus was closed. Final: it never changes again.
pub const POLYBUS_STATE_CLOSED: i32 = 2;

fn state_code(state: ConnectionState) -> i32 {
    match state {
        ConnectionState::Connected => POLYBUS_STATE_CONNECTED,
        ConnectionState::Closed => POLYBUS_STATE_CLOSED,
        // Disconnected, and any state a later core adds: not connected, not closed.
        _ => POLYBUS_STATE_DISCONNECTED,
    }
}

/// @brief Reads the state of the bus's connection to its broker.
///
/// @param bus *borrowed* A bus (open or closed: a closed bus reports POLYBUS_STATE_CLOSED).
/// @param out *out* POLYBUS_STATE_CONNECTED, POLYBUS_STATE_DISCONNECTED or POLYBUS_STATE_CLOSED.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL).
/// @remark Never blocks. Any thread, including a polybus callback.
/// @sa polybus_connection_state_wait
#[no_mangle]
pub unsafe extern "C" fn polybus_connection_state(
    bus: *const polybus_t,
    out: *mut i32,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        let bus = bus_ref(bus)?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        *out = state_code(bus.connection_state());
        Ok(POLYBUS_OK)
    })
}

/// @brief Waits until the connection state differs from `known`, then reports it.
///
/// Loop on it to follow the connection: pass the state last seen as `known`. States are not
/// queued: a change and its reversal within one wait may go unseen, but the state returned is
/// always the current one. POLYBUS_STATE_CLOSED is final, so once the bus is closed a wait with
/// `known` = POLYBUS_STATE_CLOSED returns POLYBUS_NO_EVENTS at once.
///
/// @param bus *borrowed* A bus (open or closed).
/// @param known POLYBUS_STATE_CONNECTED, POLYBUS_STATE_DISCONNECTED or POLYBUS_STATE_CLOSED:
///        the state the caller knows of.
/// @param timeout_ms How long to wait: 0 returns at once, a negative value waits until the
///        state changes.
/// @param out *out* The new state, on POLYBUS_OK.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK (the state differs from `known`; `*out` holds it), POLYBUS_NO_EVENTS
///         (timed out, or the bus is closed and `known` is POLYBUS_STATE_CLOSED),
///         POLYBUS_ERR_INVALID_ARGUMENT (NULL, or `known` is not a POLYBUS_STATE_* value).
/// @remark Blocks up to `timeout_ms`; the waiting happens on polybus's runtime. Any thread may
///         call it, several at once; from a polybus callback, keep the timeout short (the
///         callback's subscription waits meanwhile).
/// @sa polybus_connection_state
#[no_mangle]
pub unsafe extern "C" fn polybus_connection_state_wait(
    bus: *const polybus_t,
    known: i32,
    timeout_ms: i32,
    out: *mut i32,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        let bus = bus_ref(bus)?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        if !(POLYBUS_STATE_CONNECTED..=POLYBUS_STATE_CLOSED).contains(&known) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("known must be a POLYBUS_STATE_* value, got {known}"),
            ));
        }
        let mut watch = bus.watch_connection_state();
        let now = state_code(*watch.borrow_and_update());
        if now != known {
            *out = now;
            return Ok(POLYBUS_OK);
        }
        if timeout_ms == 0 || now == POLYBUS_STATE_CLOSED {
            return Ok(POLYBUS_NO_EVENTS);
        }
        // The runtime watches; this thread waits on a plain channel, bounded by the timeout.
        let (tx, changed) = mpsc::sync_channel(1);
        let task = runtime::global().spawn(async move {
            while watch.changed().await.is_ok() {
                let state = state_code(*watch.borrow_and_update());
                if state != known {
                    let _ = tx.send(state);
                    return;
                }
            }
            // The bus is gone: the state cannot change any more; dropping `tx` ends the wait.
        });
        let got = if timeout_ms < 0 {
            changed.recv().ok()
        } else {
            changed
                .recv_timeout(Duration::from_millis(timeout_ms as u64))
                .ok()
        };
        task.abort();
        match got {
            Some(state) => {
                *out = state;
                Ok(POLYBUS_OK)
            }
            None => Ok(POLYBUS_NO_EVENTS),
        }
    })
}
