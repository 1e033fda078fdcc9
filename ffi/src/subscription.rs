//! Subscriptions: callback handlers on polybus dispatcher threads, and the batched pull API
//! the language bindings use.

use std::{
    cell::Cell,
    ffi::{c_char, c_void},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use polybus_core::{
    runtime, Batch, BatchSubscription, Error, ErrorKind, Outcome, Start, SubscribeOptions,
};

use crate::{
    bus::{bus_ref, null, polybus_t},
    error::polybus_error_t,
    status::polybus_status_t::{self, POLYBUS_NO_EVENTS, POLYBUS_OK},
    types::{cstr, cstr_opt, polybus_event_t, EventView},
};

/// `start` value: only events published after subscribing (the default).
pub const POLYBUS_START_NEW: i32 = 0;
/// `start` value: every event the backend still holds.
pub const POLYBUS_START_EARLIEST: i32 = 1;

/// Result code for polybus_batch_ack(): the event was handled.
pub const POLYBUS_RESULT_ACK: i32 = 0;
/// Result code for polybus_batch_ack(): the handler failed; retry or dead-letter it.
pub const POLYBUS_RESULT_NACK: i32 = 1;
/// Result code for polybus_batch_ack(): the event was not run; deliver it again.
pub const POLYBUS_RESULT_SKIPPED: i32 = 2;

/// @brief How a subscription receives and acknowledges events.
///
/// Initialise with polybus_subscribe_options_default(), then change what you need; passing
/// NULL instead means the defaults. Strings are borrowed for the call only.
#[repr(C)]
pub struct polybus_subscribe_options_t {
    /// Competing-consumer group (each event to one member), or NULL to broadcast.
    pub group: *const c_char,
    /// Handlers in flight at once (default 1). One key never runs twice at once.
    pub concurrency: u32,
    /// Deliveries of one event before it is dead-lettered or dropped (default 5).
    pub max_attempts: u32,
    /// Topic for events that exhausted their attempts, or NULL.
    pub dead_letter: *const c_char,
    /// POLYBUS_START_NEW (default) or POLYBUS_START_EARLIEST.
    pub start: i32,
    /// First retry delay in ms, doubled per attempt (default 100).
    pub backoff_initial_ms: u64,
    /// Largest retry delay in ms (default 10000).
    pub backoff_max_ms: u64,
    /// Events buffered before publishers wait (default 1024).
    pub queue_size: u32,
    /// Most events per batch (default 256).
    pub batch_size: u32,
}

/// @brief Fills `out` with the default options.
#[no_mangle]
pub unsafe extern "C" fn polybus_subscribe_options_default(out: *mut polybus_subscribe_options_t) {
    if let Some(out) = out.as_mut() {
        let d = SubscribeOptions::default();
        *out = polybus_subscribe_options_t {
            group: std::ptr::null(),
            concurrency: d.concurrency,
            max_attempts: d.max_attempts,
            dead_letter: std::ptr::null(),
            start: POLYBUS_START_NEW,
            backoff_initial_ms: d.backoff_initial_ms,
            backoff_max_ms: d.backoff_max_ms,
            queue_size: d.queue_size,
            batch_size: d.batch_size,
        };
    }
}

unsafe fn options(opts: *const polybus_subscribe_options_t) -> Result<SubscribeOptions, Error> {
    let Some(o) = opts.as_ref() else {
        return Ok(SubscribeOptions::default());
    };
    let start = match o.start {
        POLYBUS_START_NEW => Start::New,
        POLYBUS_START_EARLIEST => Start::Earliest,
        other => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("start must be POLYBUS_START_NEW or POLYBUS_START_EARLIEST, got {other}"),
            ))
        }
    };
    Ok(SubscribeOptions {
        group: cstr_opt(o.group, "group")?.map(str::to_owned),
        concurrency: o.concurrency,
        max_attempts: o.max_attempts,
        dead_letter: cstr_opt(o.dead_letter, "dead_letter")?.map(str::to_owned),
        start,
        backoff_initial_ms: o.backoff_initial_ms,
        backoff_max_ms: o.backoff_max_ms,
        queue_size: o.queue_size,
        batch_size: o.batch_size,
    })
}

/// @brief A callback handler: `{context, call, drop}`.
///
/// - `call(event, context)` handles one event and returns 0 to acknowledge it, anything else
///   to fail it (it is then retried with backoff up to `max_attempts`, then dead-lettered).
///   The event and everything it points to are valid until `call` returns.
/// - `drop(context)`, if not NULL, runs exactly once, after the last `call` has returned;
///   `call` never runs once `drop` has started. polybus_subscribe() takes the handler even when
///   it fails, and then calls `drop` before returning.
/// - At most `concurrency` calls run at once, never two with the same key, and events with the
///   same key are called in publish order.
///
/// @warning `call` and `drop` run on polybus dispatcher threads (named "polybus-dispatch"),
///          never on the caller's thread and never on the runtime's worker threads.
#[repr(C)]
pub struct polybus_handler_t {
    /// Passed back to `call` and `drop`.
    pub context: *mut c_void,
    /// Handles one event; 0 acknowledges.
    pub call:
        Option<unsafe extern "C" fn(event: *const polybus_event_t, context: *mut c_void) -> i32>,
    /// Releases `context`; may be NULL.
    pub drop: Option<unsafe extern "C" fn(context: *mut c_void)>,
}

/// The handler, owned by the dispatcher threads; `drop` runs when the last one lets go.
struct Handler {
    context: *mut c_void,
    call: unsafe extern "C" fn(*const polybus_event_t, *mut c_void) -> i32,
    drop: Option<unsafe extern "C" fn(*mut c_void)>,
}

// SAFETY: the C contract above makes the context usable from polybus threads.
unsafe impl Send for Handler {}
unsafe impl Sync for Handler {}

impl Drop for Handler {
    fn drop(&mut self) {
        if let Some(d) = self.drop {
            // SAFETY: called once, after every call has returned (the last Arc is gone).
            unsafe { d(self.context) };
        }
    }
}

thread_local! {
    static ON_DISPATCHER: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is a polybus dispatcher thread (running callbacks).
pub(crate) fn on_dispatcher_thread() -> bool {
    ON_DISPATCHER.with(Cell::get)
}

/// @brief A subscription (opaque): made by polybus_subscribe() or polybus_subscribe_pull(),
/// released by polybus_subscription_free().
pub struct polybus_subscription_t {
    sub: Arc<BatchSubscription>,
    threads: Vec<JoinHandle<()>>,
}

/// Handles one batch in order with `handler`, stopping at the first failure.
fn run_batch(batch: Batch, handler: &Handler) {
    let mut outcomes = Vec::with_capacity(batch.events().len());
    let mut failed = false;
    for e in batch.events() {
        if failed {
            outcomes.push(Outcome::Skipped);
            continue;
        }
        let view = EventView::new(e);
        // SAFETY: `call` is a valid function per polybus_subscribe's contract.
        let rc = unsafe { (handler.call)(&view.event, handler.context) };
        if rc == 0 {
            outcomes.push(Outcome::Ack);
        } else {
            failed = true;
            outcomes.push(Outcome::Nack(format!("handler returned {rc}")));
        }
    }
    batch.complete(outcomes);
}

fn dispatch_loop(sub: Arc<BatchSubscription>, handler: Arc<Handler>) {
    ON_DISPATCHER.with(|d| d.set(true));
    loop {
        match sub.next_batch_blocking(Duration::from_millis(100)) {
            Ok(Some(batch)) => {
                let handler = &*handler;
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_batch(batch, handler)
                }))
                .is_err()
                {
                    // run_batch itself has no panicking path; keep serving regardless.
                    continue;
                }
            }
            Ok(None) => continue,
            Err(_) => break,
        }
    }
}

unsafe fn open_batches(
    bus: *const polybus_t,
    pattern: *const c_char,
    opts: *const polybus_subscribe_options_t,
) -> Result<BatchSubscription, Error> {
    let bus = bus_ref(bus)?;
    let pattern = cstr(pattern, "pattern")?;
    let options = options(opts)?;
    runtime::global().block_on(bus.subscribe_batches(pattern, options))
}

/// @brief Subscribes a callback handler to a pattern.
///
/// @param bus *borrowed* An open bus.
/// @param pattern *borrowed* A topic pattern ("orders.*", "orders.>"), NUL-terminated.
/// @param opts *borrowed, optional* Options; NULL for the defaults.
/// @param handler *consumed* The callbacks; `drop` runs even when this call fails.
/// @param out *out* The subscription; NULL on failure.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL, bad option), POLYBUS_ERR_INVALID_PATTERN,
///         POLYBUS_ERR_INVALID_TOPIC (bad dead_letter), POLYBUS_ERR_CLOSED,
///         POLYBUS_ERR_UNSUPPORTED (the backend cannot honour an option).
/// @warning The callbacks run on polybus dispatcher threads; see polybus_handler_t.
/// @sa polybus_subscription_close, polybus_subscription_free
#[no_mangle]
pub unsafe extern "C" fn polybus_subscribe(
    bus: *const polybus_t,
    pattern: *const c_char,
    opts: *const polybus_subscribe_options_t,
    handler: polybus_handler_t,
    out: *mut *mut polybus_subscription_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    // Take ownership first so `drop` runs on every failure path.
    let owned = handler.call.map(|call| {
        Arc::new(Handler {
            context: handler.context,
            call,
            drop: handler.drop,
        })
    });
    let status = ffi_guard!(err, {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        let Some(h) = owned.clone() else {
            return Err(null("handler.call"));
        };
        let sub = Arc::new(open_batches(bus, pattern, opts)?);
        let n = opts.as_ref().map_or(1, |o| o.concurrency.max(1)) as usize;
        let mut threads = Vec::with_capacity(n);
        for _ in 0..n {
            let (sub, h) = (sub.clone(), h.clone());
            let t = std::thread::Builder::new()
                .name("polybus-dispatch".into())
                .spawn(move || dispatch_loop(sub, h))
                .map_err(|e| Error::with_source(ErrorKind::Internal, e))?;
            threads.push(t);
        }
        *out = Box::into_raw(Box::new(polybus_subscription_t { sub, threads }));
        Ok(POLYBUS_OK)
    });
    // On failure the dispatcher threads never started: the last reference goes here and
    // `drop` runs. Without `call` there is nothing owning the context but `drop` itself.
    match owned {
        Some(h) => drop(h),
        None => {
            if let Some(d) = handler.drop {
                d(handler.context);
            }
        }
    }
    status
}

/// @brief Subscribes without a callback: events are pulled in batches with
/// polybus_subscription_next_batch(). This is what the Go, Python and Node bindings use.
///
/// @param bus *borrowed* An open bus.
/// @param pattern *borrowed* A topic pattern, NUL-terminated.
/// @param opts *borrowed, optional* Options; NULL for the defaults.
/// @param out *out* The subscription; NULL on failure.
/// @param err *out, optional* Error detail on failure.
/// @return As polybus_subscribe().
#[no_mangle]
pub unsafe extern "C" fn polybus_subscribe_pull(
    bus: *const polybus_t,
    pattern: *const c_char,
    opts: *const polybus_subscribe_options_t,
    out: *mut *mut polybus_subscription_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        let sub = Arc::new(open_batches(bus, pattern, opts)?);
        *out = Box::into_raw(Box::new(polybus_subscription_t {
            sub,
            threads: Vec::new(),
        }));
        Ok(POLYBUS_OK)
    })
}

/// @brief A pulled batch (opaque); acknowledge it with polybus_batch_ack() or release it with
/// polybus_batch_free().
pub struct polybus_batch_t {
    batch: Batch,
    events: Vec<polybus_event_t>,
    _views: Vec<EventView>,
}

/// @brief The events of one pulled batch.
///
/// The events belong to one *lane*: handle them in order and stop at the first failure
/// (report it as POLYBUS_RESULT_NACK and the rest as POLYBUS_RESULT_SKIPPED). Different
/// batches may be handled concurrently. The views are valid until the batch is acknowledged
/// or freed.
#[repr(C)]
pub struct polybus_event_batch_t {
    /// The handle to acknowledge.
    pub batch: *mut polybus_batch_t,
    /// The events, `len` of them.
    pub events: *const polybus_event_t,
    /// Number of events (at least 1).
    pub len: usize,
    /// The lane the batch belongs to.
    pub lane: u32,
}

/// @brief The outcome of one event of a batch.
#[repr(C)]
pub struct polybus_result_t {
    /// POLYBUS_RESULT_ACK, POLYBUS_RESULT_NACK or POLYBUS_RESULT_SKIPPED.
    pub code: i32,
    /// Why it failed (NUL-terminated, borrowed for the call), or NULL.
    pub reason: *const c_char,
}

/// @brief Pulls the next batch of events.
///
/// @param sub *borrowed* A subscription from polybus_subscribe_pull().
/// @param timeout_ms How long to wait: 0 returns at once, a negative value waits until a batch
///        comes or the subscription ends.
/// @param out *out* The batch, on POLYBUS_OK.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK (a batch), POLYBUS_NO_EVENTS (timed out),
///         POLYBUS_ERR_CLOSED (closed and drained: stop pulling),
///         POLYBUS_ERR_INVALID_ARGUMENT (NULL, or a callback subscription).
/// @remark Blocks up to `timeout_ms`. Several threads may pull from one subscription.
#[no_mangle]
pub unsafe extern "C" fn polybus_subscription_next_batch(
    sub: *const polybus_subscription_t,
    timeout_ms: i32,
    out: *mut polybus_event_batch_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        let s = sub.as_ref().ok_or_else(|| null("subscription"))?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        if !s.threads.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a callback subscription cannot be pulled (use polybus_subscribe_pull)",
            ));
        }
        let got = match timeout_ms {
            0 => s.sub.try_next_batch()?,
            t if t < 0 => runtime_free_wait(&s.sub)?,
            t => s.sub.next_batch_blocking(Duration::from_millis(t as u64))?,
        };
        let Some(batch) = got else {
            return Ok(POLYBUS_NO_EVENTS);
        };
        let views: Vec<EventView> = batch.events().iter().map(EventView::new).collect();
        let events: Vec<polybus_event_t> = views.iter().map(|v| v.event).collect();
        let lane = batch.lane();
        let boxed = Box::new(polybus_batch_t {
            batch,
            events,
            _views: views,
        });
        out.len = boxed.events.len();
        out.events = boxed.events.as_ptr();
        out.lane = lane;
        out.batch = Box::into_raw(boxed);
        Ok(POLYBUS_OK)
    })
}

fn runtime_free_wait(sub: &BatchSubscription) -> Result<Option<Batch>, Error> {
    loop {
        if let Some(b) = sub.next_batch_blocking(Duration::from_secs(3600))? {
            return Ok(Some(b));
        }
    }
}

/// @brief Reports the outcome of every event of a batch and releases it.
///
/// @param batch *consumed* The batch from polybus_subscription_next_batch(); invalid after.
/// @param results *borrowed, optional* One result per event, in order; NULL acknowledges all.
/// @param len Number of results; missing ones count as failures.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL batch, an unknown result code: the
///         batch is still consumed, and the unknown ones count as failures).
#[no_mangle]
pub unsafe extern "C" fn polybus_batch_ack(
    batch: *mut polybus_batch_t,
    results: *const polybus_result_t,
    len: usize,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        if batch.is_null() {
            return Err(null("batch"));
        }
        let boxed = Box::from_raw(batch);
        let n = boxed.events.len();
        let mut bad = None;
        let outcomes: Vec<Outcome> = if results.is_null() {
            vec![Outcome::Ack; n]
        } else {
            std::slice::from_raw_parts(results, len.min(n))
                .iter()
                .map(|r| match r.code {
                    POLYBUS_RESULT_ACK => Outcome::Ack,
                    POLYBUS_RESULT_SKIPPED => Outcome::Skipped,
                    code => {
                        let reason = cstr_opt(r.reason, "reason")
                            .ok()
                            .flatten()
                            .unwrap_or("handler failed");
                        if code != POLYBUS_RESULT_NACK {
                            bad = Some(code);
                        }
                        Outcome::Nack(reason.to_owned())
                    }
                })
                .collect()
        };
        boxed.batch.complete(outcomes);
        if let Some(code) = bad {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("unknown result code {code}"),
            ));
        }
        Ok(POLYBUS_OK)
    })
}

/// @brief Releases a batch without results: every event counts as failed. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn polybus_batch_free(batch: *mut polybus_batch_t) {
    if !batch.is_null() {
        let _ =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(Box::from_raw(batch))));
    }
}

/// @brief Unsubscribes: no new events; queued and in-flight ones are handled first. Idempotent.
///
/// @param sub *borrowed* The subscription; still to be released with polybus_subscription_free().
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL), POLYBUS_ERR_TIMEOUT (not drained
///         within the bus's `close_timeout_ms`).
/// @remark Blocks until drained. For a callback subscription, every `call` has returned and
///         `drop` has run when it returns, unless called from inside one of its callbacks (then
///         it does not wait). For a pull subscription, keep pulling and acknowledging from
///         another thread until next_batch returns POLYBUS_ERR_CLOSED.
#[no_mangle]
pub unsafe extern "C" fn polybus_subscription_close(
    sub: *mut polybus_subscription_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        let s = sub.as_mut().ok_or_else(|| null("subscription"))?;
        if on_dispatcher_thread() {
            s.sub.stop();
            return Ok(POLYBUS_OK);
        }
        let result = runtime::global().block_on(s.sub.close());
        for t in s.threads.drain(..) {
            let _ = t.join();
        }
        result?;
        Ok(POLYBUS_OK)
    })
}

/// @brief Releases a subscription, closing it first if needed. NULL is a no-op.
///
/// @param sub *consumed* The subscription; invalid after the call.
/// @remark May block like polybus_subscription_close().
#[no_mangle]
pub unsafe extern "C" fn polybus_subscription_free(sub: *mut polybus_subscription_t) {
    if sub.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut s = Box::from_raw(sub);
        if !s.threads.is_empty() && !on_dispatcher_thread() {
            let _ = polybus_subscription_close(&mut *s, std::ptr::null_mut());
        } else {
            s.sub.stop();
        }
        drop(s);
    }));
}
