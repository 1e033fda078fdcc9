//! Subscriptions: callback handlers on polybus dispatcher threads, and the batched pull API
//! (delivery queues) the language bindings use.

use std::{
    cell::Cell,
    collections::HashMap,
    ffi::{c_char, c_void},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use polybus_core::{
    runtime, Batch, BatchSubscription, DeliveryQueue, Error, ErrorKind, Start, SubscribeOptions,
};

use crate::{
    bus::{bus_ref, null, polybus_t},
    cancel::{cancel_ref, polybus_cancel_t},
    error::polybus_error_t,
    status::polybus_status_t::{self, POLYBUS_NO_EVENTS, POLYBUS_OK},
    types::{cstr, cstr_opt, polybus_event_t, EventView},
};

/// `start` value: only events published after subscribing (the default).
pub const POLYBUS_START_NEW: i32 = 0;
/// `start` value: every event the backend still holds.
pub const POLYBUS_START_EARLIEST: i32 = 1;

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

/// The callback subscriptions of one bus: one delivery queue that all of them feed, served by
/// a pool of dispatcher threads that grows to the largest `concurrency` asked for (so 10,000
/// subscriptions of concurrency 1 share the same few threads).
/// The tokens whose handler a background thread is to release, and those it released (its
/// `drop` has run) that the subscription's own close or free has not seen yet.
#[derive(Default)]
struct Background {
    pending: std::collections::HashSet<u64>,
    released: std::collections::HashSet<u64>,
}

pub(crate) struct Callbacks {
    queue: DeliveryQueue,
    handlers: Mutex<HashMap<u64, Arc<Handler>>>,
    /// Handlers released in the background (after a close made inside a callback).
    background: Mutex<Background>,
    background_cv: parking_lot::Condvar,
    next_token: AtomicU64,
    threads: AtomicUsize,
}

impl Callbacks {
    pub(crate) fn new() -> Arc<Callbacks> {
        Arc::new(Callbacks {
            queue: DeliveryQueue::new(),
            handlers: Mutex::new(HashMap::new()),
            background: Mutex::new(Background::default()),
            background_cv: parking_lot::Condvar::new(),
            next_token: AtomicU64::new(1),
            threads: AtomicUsize::new(0),
        })
    }

    /// No new callback subscriptions; the threads end once the subscriptions have drained.
    pub(crate) fn close(&self) {
        self.queue.close();
    }

    /// Starts dispatcher threads until there are at least `n`.
    fn grow(self: &Arc<Self>, n: usize) -> Result<(), Error> {
        loop {
            let have = self.threads.load(Ordering::Acquire);
            if have >= n {
                return Ok(());
            }
            if self
                .threads
                .compare_exchange(have, have + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let this = self.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("polybus-dispatch".into())
                .spawn(move || this.serve())
            {
                self.threads.fetch_sub(1, Ordering::AcqRel);
                return Err(Error::with_source(ErrorKind::Internal, e));
            }
        }
    }

    /// The body of a dispatcher thread: woken by the core when a batch arrives.
    fn serve(&self) {
        ON_DISPATCHER.with(|d| d.set(true));
        while let Ok(Some(batch)) = self.queue.next_blocking(None) {
            let handler = self.handlers.lock().get(&batch.token()).cloned();
            match handler {
                Some(h) => {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_batch(batch, h)
                    }));
                }
                // Its subscription was released: dropping the batch hands the events back.
                None => drop(batch),
            }
        }
        self.threads.fetch_sub(1, Ordering::AcqRel);
    }

    /// Lets go of a subscription's handler (its `drop` runs: no call holds it once the
    /// subscription has drained). The background release of a close made inside a callback.
    fn release(&self, token: u64) {
        let h = self.handlers.lock().remove(&token);
        let had = h.is_some();
        drop(h);
        let mut bg = self.background.lock();
        bg.pending.remove(&token);
        if had {
            bg.released.insert(token);
        }
        self.background_cv.notify_all();
    }

    /// Lets go of a subscription's handler for its own close or free; when a background
    /// release has taken it, waits (at most `limit`) until its `drop` has run, so that `drop`
    /// has run whenever the close returns.
    fn release_and_wait(&self, token: u64, limit: Duration) {
        let h = self.handlers.lock().remove(&token);
        if h.is_some() {
            drop(h);
            return;
        }
        let deadline = std::time::Instant::now() + limit;
        let mut bg = self.background.lock();
        loop {
            if bg.released.remove(&token) || !bg.pending.contains(&token) {
                return;
            }
            if self.background_cv.wait_until(&mut bg, deadline).timed_out() {
                return;
            }
        }
    }
}

/// @brief A subscription (opaque): made by polybus_subscribe(), polybus_subscribe_pull() or
/// polybus_subscribe_queue(), released by polybus_subscription_free().
pub struct polybus_subscription_t {
    sub: Arc<BatchSubscription>,
    /// For a callback subscription: the bus's callbacks, which hold its handler.
    callbacks: Option<Arc<Callbacks>>,
}

/// Runs `handler` over one batch in order, stopping at the first failure, and tells the core
/// how far it got.
fn run_batch(batch: Batch, handler: Arc<Handler>) {
    let mut handled = batch.events().len();
    let mut failure = None;
    for (i, e) in batch.events().iter().enumerate() {
        let view = EventView::new(e);
        // SAFETY: `call` is a valid function per polybus_subscribe's contract.
        let rc = unsafe { (handler.call)(&view.event, handler.context) };
        if rc != 0 {
            (handled, failure) = (i, Some(format!("handler returned {rc}")));
            break;
        }
    }
    // Let go of the handler before completing: once the last batch is complete, a close may
    // release the subscription's handler, and its `drop` must run there (before the close
    // returns), not later here.
    drop(handler);
    batch.complete(handled, failure);
}

unsafe fn subscribe_with(
    bus: *const polybus_t,
    pattern: *const c_char,
    opts: *const polybus_subscribe_options_t,
    queue: Option<&DeliveryQueue>,
    token: u64,
) -> Result<BatchSubscription, Error> {
    let bus = bus_ref(bus)?;
    let pattern = cstr(pattern, "pattern")?;
    let options = options(opts)?;
    runtime::global().block_on(async {
        match queue {
            Some(q) => bus.subscribe_to_queue(pattern, options, q, token).await,
            None => bus.subscribe_batches(pattern, options).await,
        }
    })
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
/// @remark The callback subscriptions of one bus share a pool of dispatcher threads, as many
///         as the largest `concurrency` asked for: thousands of subscriptions cost no more
///         threads than one.
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
        let b = bus.as_ref().ok_or_else(|| null("bus"))?;
        let callbacks = b.callbacks.clone();
        let token = callbacks.next_token.fetch_add(1, Ordering::Relaxed);
        // Registered before subscribing, so the first batch finds it.
        callbacks.handlers.lock().insert(token, h);
        let concurrency = opts.as_ref().map_or(1, |o| o.concurrency.max(1)) as usize;
        let made = subscribe_with(bus, pattern, opts, Some(&callbacks.queue), token)
            .and_then(|sub| callbacks.grow(concurrency.min(4096)).map(|()| sub));
        let sub = match made {
            Ok(sub) => sub,
            Err(e) => {
                callbacks.handlers.lock().remove(&token);
                return Err(e);
            }
        };
        *out = Box::into_raw(Box::new(polybus_subscription_t {
            sub: Arc::new(sub),
            callbacks: Some(callbacks),
        }));
        Ok(POLYBUS_OK)
    });
    // On failure the handler was never registered (or was removed): the last reference goes
    // here and `drop` runs. Without `call` there is nothing owning the context but `drop`.
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

/// @brief Subscribes without a callback: events are pulled in batches from a queue of the
/// subscription's own with polybus_subscription_next_batch().
///
/// @param bus *borrowed* An open bus.
/// @param pattern *borrowed* A topic pattern, NUL-terminated.
/// @param opts *borrowed, optional* Options; NULL for the defaults.
/// @param out *out* The subscription; NULL on failure.
/// @param err *out, optional* Error detail on failure.
/// @return As polybus_subscribe().
/// @sa polybus_subscribe_queue, to serve many subscriptions from one queue.
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
        let sub = Arc::new(subscribe_with(bus, pattern, opts, None, 0)?);
        *out = Box::into_raw(Box::new(polybus_subscription_t {
            sub,
            callbacks: None,
        }));
        Ok(POLYBUS_OK)
    })
}

/// @brief A delivery queue (opaque): many subscriptions feed it, a few threads drain it with
/// polybus_queue_next_batch(). Made by polybus_queue_new(), released by polybus_queue_free().
///
/// This is how the Go, Python and Node bindings serve every subscription of a bus with a
/// small fixed set of threads, woken when a batch arrives (no polling).
pub struct polybus_queue_t {
    queue: DeliveryQueue,
}

/// @brief Makes a delivery queue.
///
/// @param out *out* The queue.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL).
#[no_mangle]
pub unsafe extern "C" fn polybus_queue_new(
    out: *mut *mut polybus_queue_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        *out = Box::into_raw(Box::new(polybus_queue_t {
            queue: DeliveryQueue::new(),
        }));
        Ok(POLYBUS_OK)
    })
}

/// @brief Closes a queue to new subscriptions. Once the subscriptions feeding it have ended
/// (closed, or their bus closed) and their batches are taken, polybus_queue_next_batch()
/// returns POLYBUS_ERR_CLOSED, which ends the threads serving it. Idempotent; NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn polybus_queue_close(queue: *const polybus_queue_t) {
    if let Some(q) = queue.as_ref() {
        q.queue.close();
    }
}

/// @brief Releases a queue (closing it first). NULL is a no-op.
///
/// @param queue *consumed* The queue; no thread may be waiting in polybus_queue_next_batch().
#[no_mangle]
pub unsafe extern "C" fn polybus_queue_free(queue: *mut polybus_queue_t) {
    if !queue.is_null() {
        let q = Box::from_raw(queue);
        q.queue.close();
        drop(q);
    }
}

/// @brief Subscribes without a callback, sending the batches to a shared queue.
///
/// @param bus *borrowed* An open bus.
/// @param pattern *borrowed* A topic pattern, NUL-terminated.
/// @param opts *borrowed, optional* Options; NULL for the defaults.
/// @param queue *borrowed* The queue; it must outlive the subscription.
/// @param token Carried by every batch of this subscription (polybus_event_batch_t.token), for
///        the caller to find its handler.
/// @param out *out* The subscription; NULL on failure.
/// @param err *out, optional* Error detail on failure.
/// @return As polybus_subscribe(); POLYBUS_ERR_CLOSED also when the queue is closed.
#[no_mangle]
pub unsafe extern "C" fn polybus_subscribe_queue(
    bus: *const polybus_t,
    pattern: *const c_char,
    opts: *const polybus_subscribe_options_t,
    queue: *const polybus_queue_t,
    token: u64,
    out: *mut *mut polybus_subscription_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        let q = queue.as_ref().ok_or_else(|| null("queue"))?;
        let sub = Arc::new(subscribe_with(bus, pattern, opts, Some(&q.queue), token)?);
        *out = Box::into_raw(Box::new(polybus_subscription_t {
            sub,
            callbacks: None,
        }));
        Ok(POLYBUS_OK)
    })
}

/// @brief A pulled batch (opaque); report it with polybus_batch_complete() or release it with
/// polybus_batch_free().
pub struct polybus_batch_t {
    batch: Batch,
    events: Vec<polybus_event_t>,
    _views: Vec<EventView>,
}

/// @brief The events of one pulled batch.
///
/// The events belong to one *lane*: handle them in order and stop at the first failure, then
/// report how far you got with polybus_batch_complete(). Different batches may be handled
/// concurrently. The views are valid until the batch is completed or freed.
#[repr(C)]
pub struct polybus_event_batch_t {
    /// The handle to complete.
    pub batch: *mut polybus_batch_t,
    /// The events, `len` of them.
    pub events: *const polybus_event_t,
    /// Number of events (at least 1).
    pub len: usize,
    /// The lane the batch belongs to.
    pub lane: u32,
    /// The token of the subscription it belongs to (polybus_subscribe_queue()); 0 for
    /// polybus_subscribe_pull().
    pub token: u64,
}

fn pull(
    queue: &DeliveryQueue,
    timeout_ms: i32,
    out: &mut polybus_event_batch_t,
) -> Result<polybus_status_t, Error> {
    let got = match timeout_ms {
        0 => queue.try_next()?,
        t if t < 0 => queue.next_blocking(None)?,
        t => queue.next_blocking(Some(Duration::from_millis(t as u64)))?,
    };
    let Some(batch) = got else {
        return Ok(POLYBUS_NO_EVENTS);
    };
    let views: Vec<EventView> = batch.events().iter().map(EventView::new).collect();
    let events: Vec<polybus_event_t> = views.iter().map(|v| v.event).collect();
    let (lane, token) = (batch.lane(), batch.token());
    let boxed = Box::new(polybus_batch_t {
        batch,
        events,
        _views: views,
    });
    out.len = boxed.events.len();
    out.events = boxed.events.as_ptr();
    out.lane = lane;
    out.token = token;
    out.batch = Box::into_raw(boxed);
    Ok(POLYBUS_OK)
}

/// @brief Pulls the next batch of a subscription made by polybus_subscribe_pull().
///
/// @param sub *borrowed* A subscription from polybus_subscribe_pull().
/// @param timeout_ms How long to wait: 0 returns at once, a negative value waits until a batch
///        comes or the subscription ends.
/// @param out *out* The batch, on POLYBUS_OK.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK (a batch), POLYBUS_NO_EVENTS (timed out),
///         POLYBUS_ERR_CLOSED (closed and drained: stop pulling),
///         POLYBUS_ERR_INVALID_ARGUMENT (NULL, or a callback subscription).
/// @remark Blocks up to `timeout_ms`, woken as soon as a batch comes. Several threads may pull
///         from one subscription.
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
        if s.callbacks.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a callback subscription cannot be pulled (use polybus_subscribe_pull)",
            ));
        }
        pull(s.sub.queue(), timeout_ms, out)
    })
}

/// @brief Pulls the next batch of any subscription feeding a queue.
///
/// @param queue *borrowed* The queue.
/// @param timeout_ms How long to wait: 0 returns at once, a negative value waits until a batch
///        comes or the queue ends.
/// @param out *out* The batch, on POLYBUS_OK; its `token` names the subscription.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK (a batch), POLYBUS_NO_EVENTS (timed out), POLYBUS_ERR_CLOSED (the queue
///         is closed and every subscription feeding it has drained: stop pulling),
///         POLYBUS_ERR_INVALID_ARGUMENT (NULL).
/// @remark Blocks up to `timeout_ms`, woken as soon as a batch comes (no polling).
#[no_mangle]
pub unsafe extern "C" fn polybus_queue_next_batch(
    queue: *const polybus_queue_t,
    timeout_ms: i32,
    out: *mut polybus_event_batch_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        let q = queue.as_ref().ok_or_else(|| null("queue"))?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        pull(&q.queue, timeout_ms, out)
    })
}

/// @brief Reports how a batch went and releases it: the first `handled` events succeeded, and
/// `reason`, if not NULL, is why the next one failed.
///
/// The core does the rest, the same for every language: events before `handled` are
/// acknowledged; the failed one is retried with backoff (or dead-lettered after
/// `max_attempts`, with `reason` in a header); every event after it was not run and is
/// delivered again with the same attempt. With `reason` NULL and `handled` short of the
/// batch's length, the events from `handled` on are delivered again, none counted as failed.
///
/// @param batch *consumed* The batch from a next_batch call; invalid after.
/// @param handled How many events, from the first, succeeded (`len` or more: all of them).
/// @param reason *borrowed, optional* NUL-terminated UTF-8 (invalid bytes are replaced).
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL batch).
#[no_mangle]
pub unsafe extern "C" fn polybus_batch_complete(
    batch: *mut polybus_batch_t,
    handled: usize,
    reason: *const c_char,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        if batch.is_null() {
            return Err(null("batch"));
        }
        let boxed = Box::from_raw(batch);
        let reason = (!reason.is_null()).then(|| {
            std::ffi::CStr::from_ptr(reason)
                .to_string_lossy()
                .into_owned()
        });
        boxed.batch.complete(handled, reason);
        Ok(POLYBUS_OK)
    })
}

/// @brief Releases a batch without a result: its first event counts as failed, the rest are
/// delivered again. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn polybus_batch_free(batch: *mut polybus_batch_t) {
    if !batch.is_null() {
        let _ =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(Box::from_raw(batch))));
    }
}

/// @brief Unsubscribes: no new events; queued and in-flight ones are handled first. Idempotent.
/// This is the one meaning of unsubscribe in every front end.
///
/// @param sub *borrowed* The subscription; still to be released with polybus_subscription_free().
/// @param cancel *borrowed, optional* Stops the wait when fired: the subscription is closed
///        either way and the drain goes on in the background (see polybus_cancel_t); NULL for
///        none.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL), POLYBUS_ERR_TIMEOUT (not drained
///         within the bus's `close_timeout_ms`), POLYBUS_ERR_CANCELLED.
/// @remark Blocks until drained. For a callback subscription, every `call` has returned and
///         `drop` has run when it returns, unless called from inside a callback of the bus:
///         then it stops the subscription and returns at once (it would wait for itself), and
///         the drain finishes in the background. For a pull subscription, keep pulling and
///         completing from another thread until next_batch returns POLYBUS_ERR_CLOSED.
#[no_mangle]
pub unsafe extern "C" fn polybus_subscription_close(
    sub: *mut polybus_subscription_t,
    cancel: *const polybus_cancel_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        let s = sub.as_mut().ok_or_else(|| null("subscription"))?;
        if on_dispatcher_thread() {
            s.sub.stop();
            if let Some(cb) = &s.callbacks {
                release_when_drained(cb.clone(), s.sub.clone());
            }
            return Ok(POLYBUS_OK);
        }
        let result = match cancel_ref(cancel) {
            Some(c) => runtime::global().block_on(s.sub.close_until(c)),
            None => s.sub.close_blocking(),
        };
        if let Some(cb) = &s.callbacks {
            if s.sub.is_drained() {
                // A close made inside a callback may be releasing it right now: wait for it.
                cb.release_and_wait(s.sub.token(), Duration::from_secs(10));
            } else {
                // Cancelled: the drain goes on; the handler is released once it is over.
                release_when_drained(cb.clone(), s.sub.clone());
            }
        }
        result?;
        Ok(POLYBUS_OK)
    })
}

/// @brief Stops a subscription without waiting: no new events; queued and in-flight ones are
/// still handled in the background. What a binding calls when the caller is one of the
/// subscription's own handlers (closing would wait for itself). Idempotent.
///
/// @param sub *borrowed* The subscription.
/// @param err *out, optional* Error detail on failure.
/// @return POLYBUS_OK, POLYBUS_ERR_INVALID_ARGUMENT (NULL).
#[no_mangle]
pub unsafe extern "C" fn polybus_subscription_stop(
    sub: *const polybus_subscription_t,
    err: *mut polybus_error_t,
) -> polybus_status_t {
    ffi_guard!(err, {
        let s = sub.as_ref().ok_or_else(|| null("subscription"))?;
        s.sub.stop();
        if let Some(cb) = &s.callbacks {
            release_when_drained(cb.clone(), s.sub.clone());
        }
        Ok(POLYBUS_OK)
    })
}

/// Lets go of a callback subscription's handler once it has drained, from a short-lived thread
/// (its `drop` must not run on a runtime worker, nor wait on the dispatcher calling close).
fn release_when_drained(callbacks: Arc<Callbacks>, sub: Arc<BatchSubscription>) {
    callbacks.background.lock().pending.insert(sub.token());
    let cb = callbacks.clone();
    let token = sub.token();
    let spawned = std::thread::Builder::new()
        .name("polybus-dispatch".into())
        .spawn(move || {
            runtime::global().block_on(sub.drained());
            callbacks.release(sub.token());
        });
    if spawned.is_err() {
        cb.background.lock().pending.remove(&token);
        tracing::warn!(
            "cannot start a thread to release a handler; it is kept until the bus is freed"
        );
    }
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
        if s.callbacks.is_some() {
            let _ = polybus_subscription_close(&mut *s, std::ptr::null(), std::ptr::null_mut());
        } else {
            // Nobody may be pulling any more: waiting for a drain could only time out.
            s.sub.stop();
        }
        drop(s);
    }));
}
