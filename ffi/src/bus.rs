//! The bus handle: open, publish, stats, close, free.

use std::ffi::c_char;

use polybus_core::{runtime, Bus, Config, Error, ErrorKind};

use crate::{
    cancel::{cancel_ref, polybus_cancel_t},
    error::polybus_error_t,
    status::polybus_status_t::{self, POLYBUS_OK},
    subscription::{on_dispatcher_thread, Callbacks},
    types::{cstr, polybus_message_t},
};

/// @brief An open bus (opaque). Made by polybus_open(), released by polybus_free().
pub struct polybus_t {
    pub(crate) bus: Bus,
    /// The bus's callback subscriptions and their dispatcher threads.
    pub(crate) callbacks: std::sync::Arc<Callbacks>,
}

/// @brief A bus's counters, cumulative since it was opened.
#[repr(C)]
#[derive(Default)]
pub struct polybus_stats_t {
    /// Events accepted by publish.
    pub published: u64,
    /// Handler invocations (every attempt counts).
    pub delivered: u64,
    /// Events acknowledged after their handler succeeded.
    pub acked: u64,
    /// Handler failures.
    pub failed: u64,
    /// Retries scheduled after a failure.
    pub retried: u64,
    /// Events published to a dead-letter topic.
    pub dead_lettered: u64,
    /// Events given up on (no dead-letter topic, a failed dead-letter publish, or abandoned
    /// when close timed out).
    pub dropped: u64,
}

pub(crate) fn null(what: &str) -> Error {
    Error::new(ErrorKind::InvalidArgument, format!("{what} is NULL"))
}

/// SAFETY: `bus` is NULL or a live handle from polybus_open().
pub(crate) unsafe fn bus_ref<'a>(bus: *const polybus_t) -> Result<&'a Bus, Error> {
    bus.as_ref().map(|b| &b.bus).ok_or_else(|| null("bus"))
}

/// @brief Opens a bus.
///
/// @param config *borrowed* A URL ("memory://", "memory://NAME", "nats://host:4222",
///        "jetstream://host:4222", "redis://host:6379", "redis+pubsub://host:6379",
///        "kafka://host:9092,host:9092") or a JSON object with the fields `url`, `prefix`,
///        `name`, `connect_timeout_ms`, `publish_timeout_ms`, `close_timeout_ms`, `max_payload`
///        and the sections `nats` (credentials, TLS, client name), `jetstream` (stream and
///        consumer settings), `redis` (servers, credentials, TLS, stream settings) and `kafka`
///        (client id, SASL, TLS, topic and consumer settings, raw librdkafka properties);
///        NUL-terminated UTF-8.
/// @param cancel *borrowed, optional* Stops the wait for the connection when fired (see
///        polybus_cancel_t); NULL for none.
/// @param out *out* The new handle; set to NULL on failure.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL), POLYBUS_ERR_INVALID_CONFIG,
///         POLYBUS_ERR_TIMEOUT, POLYBUS_ERR_CONNECTION, POLYBUS_ERR_AUTH,
///         POLYBUS_ERR_CANCELLED.
/// @remark Blocks until connected, at most `connect_timeout_ms` (default 5000). Once open, a
///         broker connection that drops is re-established automatically (see
///         polybus_connection_state()).
///
/// Topics are dot-separated tokens of ASCII letters, digits, '_' and '-', at most 249 bytes
/// ("orders.created"). Patterns may also use '*' for one token and, last, '>' for the rest.
/// @sa polybus_close, polybus_free, polybus_connection_state
#[no_mangle]
pub unsafe extern "C" fn polybus_open(
    config: *const c_char,
    cancel: *const polybus_cancel_t,
    out: *mut *mut polybus_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        let config = Config::parse(cstr(config, "config")?)?;
        let connect = Bus::connect(config);
        let bus = match cancel_ref(cancel) {
            Some(c) => runtime::global().block_on(c.guard("connect", connect)),
            None => runtime::global().block_on(connect),
        }?;
        *out = Box::into_raw(Box::new(polybus_t {
            bus,
            callbacks: Callbacks::new(),
        }));
        Ok(POLYBUS_OK)
    })
}

/// @brief Publishes one event and waits until the backend accepts it.
///
/// @param bus *borrowed* An open bus.
/// @param message *borrowed* The event; copied before the call returns.
/// @param cancel *borrowed, optional* Stops the wait when fired (the event may still be
///        published; see polybus_cancel_t); NULL for none.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL, bad UTF-8, bad header or key),
///         POLYBUS_ERR_INVALID_TOPIC, POLYBUS_ERR_TOO_LARGE, POLYBUS_ERR_CLOSED,
///         POLYBUS_ERR_TIMEOUT, POLYBUS_ERR_CANCELLED, backend errors.
/// @remark Blocks while a subscriber's queue is full (backpressure), at most
///         `publish_timeout_ms`. Do not call it from a polybus callback on a subscription that
///         may be the one waiting.
/// @sa polybus_publish_batch
#[no_mangle]
pub unsafe extern "C" fn polybus_publish(
    bus: *const polybus_t,
    message: *const polybus_message_t,
    cancel: *const polybus_cancel_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        let bus = bus_ref(bus)?;
        let m = message
            .as_ref()
            .ok_or_else(|| null("message"))?
            .to_message()?;
        match cancel_ref(cancel) {
            Some(c) => runtime::global().block_on(bus.publish_until(m, c))?,
            None => bus.publish_blocking(m)?,
        }
        Ok(POLYBUS_OK)
    })
}

/// @brief Publishes many events in order and waits until all are accepted (the pipelined path).
///
/// As many events as the backend allows are in flight at once, started in order, and their
/// confirmations are awaited together (the core's publish_batch, the same in every language).
///
/// @param bus *borrowed* An open bus.
/// @param messages *borrowed* An array of `len` events.
/// @param len Number of events.
/// @param cancel *borrowed, optional* Stops starting events and waiting when fired (see
///        polybus_cancel_t); NULL for none.
/// @param published *out, optional* How many were accepted: all of them on success; on failure
///        the events before the failing one.
/// @param err *out, optional* Error detail on failure, naming the failing index.
/// @return As polybus_publish().
#[no_mangle]
pub unsafe extern "C" fn polybus_publish_batch(
    bus: *const polybus_t,
    messages: *const polybus_message_t,
    len: usize,
    cancel: *const polybus_cancel_t,
    published: *mut usize,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        if !published.is_null() {
            *published = 0;
        }
        let bus = bus_ref(bus)?;
        if len == 0 {
            return Ok(POLYBUS_OK);
        }
        if messages.is_null() {
            return Err(null("messages"));
        }
        let views = std::slice::from_raw_parts(messages, len);
        // A message that cannot be converted ends the batch there, as a refused publish does.
        let mut bad: Option<(usize, Error)> = None;
        let converted = views
            .iter()
            .enumerate()
            .map_while(|(i, m)| match m.to_message() {
                Ok(m) => Some(m),
                Err(e) => {
                    bad = Some((i, e));
                    None
                }
            });
        let result = match cancel_ref(cancel) {
            Some(c) => runtime::global().block_on(bus.publish_batch_until(converted, c)),
            None => bus.publish_batch_blocking(converted),
        };
        let (count, result) = match (result, bad) {
            (Err(e), _) => (e.published().unwrap_or(0), Err(e)),
            (Ok(n), None) => (n, Ok(POLYBUS_OK)),
            (Ok(n), Some((i, e))) => (
                n.min(i),
                Err(Error::new(
                    e.kind(),
                    format!("event {i} of the batch: {}", e.message()),
                )),
            ),
        };
        if !published.is_null() {
            *published = count;
        }
        result
    })
}

/// @brief Reads the bus's counters.
///
/// @param bus *borrowed* A bus (open or closed).
/// @param out *out* The counters.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL).
#[no_mangle]
pub unsafe extern "C" fn polybus_stats(
    bus: *const polybus_t,
    out: *mut polybus_stats_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        let bus = bus_ref(bus)?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        let s = bus.stats();
        *out = polybus_stats_t {
            published: s.published,
            delivered: s.delivered,
            acked: s.acked,
            failed: s.failed,
            retried: s.retried,
            dead_lettered: s.dead_lettered,
            dropped: s.dropped,
        };
        Ok(POLYBUS_OK)
    })
}

/// @brief Closes the bus: publishes and subscribes fail with POLYBUS_ERR_CLOSED from now on,
/// every subscription stops receiving, queued and in-flight events are handled, then the
/// connection is released. Idempotent.
///
/// @param bus *borrowed* The bus; still to be released with polybus_free().
/// @param cancel *borrowed, optional* Stops the wait when fired: the bus is closed either way
///        and the drain goes on in the background (see polybus_cancel_t); NULL for none.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL), POLYBUS_ERR_TIMEOUT (handlers did
///         not finish within `close_timeout_ms`; the rest was abandoned and counted as dropped),
///         POLYBUS_ERR_CANCELLED.
/// @remark Blocks until drained, at most `close_timeout_ms` (default 30000). Callback
///         subscriptions keep running their callbacks meanwhile. Called from inside a callback
///         it does not wait (it would wait for itself): the drain finishes in the background.
#[no_mangle]
pub unsafe extern "C" fn polybus_close(
    bus: *const polybus_t,
    cancel: *const polybus_cancel_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        let b = bus.as_ref().ok_or_else(|| null("bus"))?;
        b.callbacks.close();
        let bus = b.bus.clone();
        if on_dispatcher_thread() {
            // Closed before this returns; the drain goes on in the background.
            drop(bus.close_in_background());
        } else if let Some(c) = cancel_ref(cancel) {
            runtime::global().block_on(bus.close_until(c))?;
        } else {
            runtime::global().block_on(bus.close())?;
        }
        Ok(POLYBUS_OK)
    })
}

/// @brief Releases a bus handle, closing it first if needed. NULL is a no-op.
///
/// @param bus *consumed* The handle; invalid after the call. Subscriptions made from it stay
///        valid handles (closed) until freed.
/// @remark May block like polybus_close().
#[no_mangle]
pub unsafe extern "C" fn polybus_free(bus: *mut polybus_t) {
    if bus.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let b = Box::from_raw(bus);
        if !b.bus.is_closed() {
            let _ = polybus_close(&*b, std::ptr::null(), std::ptr::null_mut());
        }
        drop(b);
    }));
}
