//! Subscriptions and the dispatcher threads that serve them.
//!
//! Every subscription of a bus feeds one [`DeliveryQueue`], marked with a token of its own.
//! A small fixed pool of Python-owned dispatcher threads (`threading.Thread`, daemon) per bus
//! waits on that queue detached from the interpreter (woken by the core when a batch arrives,
//! no polling), finds the batch's subscription by its token and runs its handler attached to
//! the interpreter. The pool grows to the largest `concurrency` a subscription of the bus asked
//! for (at least two threads), whatever the number of subscriptions. A coroutine handler's
//! batch is handed to its event loop as one coroutine, which does not hold a thread.
//!
//! A batch is completed by how far its handler got: the first `handled` events succeeded, then
//! the reason the next one failed, if any. The core decides the rest (retries, skips, dead
//! letters).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use polybus::{BatchSubscription, Cancel, DeliveryQueue, ErrorKind, Start, SubscribeOptions};
use pyo3::{intern, prelude::*, sync::PyOnceLock, types::PyDict};

use crate::{
    block_on,
    cancel::{self, gave_up, PyCancel},
    dispatch_module,
    error::{new_error, to_py},
    event::Event,
    SIGNAL_CHECK_INTERVAL,
};

/// Source of subscription tokens (unique in the process).
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// The fewest dispatcher threads a bus with subscriptions has, so that one slow handler does
/// not hold up every other subscription.
const MIN_THREADS: usize = 2;

/// Builds the core's options from `subscribe`'s keyword arguments.
#[allow(clippy::too_many_arguments)]
pub(crate) fn options(
    py: Python<'_>,
    group: Option<String>,
    concurrency: u32,
    max_attempts: u32,
    dead_letter: Option<String>,
    start: &str,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    queue_size: u32,
    batch_size: u32,
) -> PyResult<SubscribeOptions> {
    let start = match start {
        "new" => Start::New,
        "earliest" => Start::Earliest,
        other => {
            return Err(new_error(
                py,
                ErrorKind::InvalidArgument,
                format!("start must be \"new\" or \"earliest\", got {other:?}"),
            ))
        }
    };
    Ok(SubscribeOptions {
        group,
        concurrency,
        max_attempts,
        dead_letter,
        start,
        backoff_initial_ms,
        backoff_max_ms,
        queue_size,
        batch_size,
    })
}

/// Locks a mutex, ignoring poisoning (the data are plain maps and lists).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the dispatcher threads and the subscriptions of one bus share.
#[derive(Default)]
struct Routes {
    /// Token -> subscription, for every subscription that may still deliver a batch.
    by_token: Mutex<HashMap<u64, Py<Subscription>>>,
    /// Tokens of subscriptions stopped from inside a handler, removed once drained.
    stopping: Mutex<Vec<u64>>,
}

impl Routes {
    fn get(&self, py: Python<'_>, token: u64) -> Option<Py<Subscription>> {
        lock(&self.by_token).get(&token).map(|s| s.clone_ref(py))
    }

    fn remove(&self, token: u64) -> Option<Py<Subscription>> {
        lock(&self.by_token).remove(&token)
    }

    /// Forgets the subscriptions stopped from inside a handler that have drained since.
    fn sweep(&self) {
        let drained: Vec<u64> = {
            let map = lock(&self.by_token);
            let mut stopping = lock(&self.stopping);
            let (gone, left): (Vec<u64>, Vec<u64>) = stopping.drain(..).partition(|t| {
                map.get(t)
                    .is_none_or(|s| s.get().inner.get().is_none_or(|i| i.is_drained()))
            });
            *stopping = left;
            gone
        };
        // Dropped outside the lock: dropping a subscription may run Python code.
        let removed: Vec<_> = drained.into_iter().filter_map(|t| self.remove(t)).collect();
        drop(removed);
    }

    /// Every subscription, for `Bus.close` to tell whether it is called from a handler.
    fn all(&self, py: Python<'_>) -> Vec<Py<Subscription>> {
        lock(&self.by_token)
            .values()
            .map(|s| s.clone_ref(py))
            .collect()
    }

    fn clear(&self) {
        let all = std::mem::take(&mut *lock(&self.by_token));
        lock(&self.stopping).clear();
        drop(all);
    }
}

/// The deliveries of one bus: the queue its subscriptions feed and the threads serving it
/// (internal). Made by `connect`; the threads start with the first subscription.
#[pyclass(frozen, module = "polybus", name = "_Dispatcher")]
pub(crate) struct Dispatcher {
    queue: DeliveryQueue,
    routes: Arc<Routes>,
    threads: Mutex<Vec<Py<PyAny>>>,
    bus_id: u64,
    /// Set when the bus's close timed out: the core has given up on the batches still queued,
    /// so the threads hand them back without running their handlers.
    abandoned: AtomicBool,
}

impl Dispatcher {
    pub(crate) fn new(bus_id: u64) -> Self {
        Dispatcher {
            queue: DeliveryQueue::new(),
            routes: Arc::default(),
            threads: Mutex::new(Vec::new()),
            bus_id,
            abandoned: AtomicBool::new(false),
        }
    }

    /// Subscribes `handler` through `bus`, feeding this dispatcher's queue, and grows the pool
    /// to the subscription's concurrency.
    pub(crate) fn subscribe<'py>(
        slf: &Bound<'py, Self>,
        bus: &polybus::Bus,
        pattern: &str,
        options: SubscribeOptions,
        handler: &Bound<'py, PyAny>,
        event_loop: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Subscription>> {
        let py = slf.py();
        let this = slf.get();
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let threads = if event_loop.is_some() {
            1
        } else {
            options.concurrency as usize
        };
        let sub = Bound::new(
            py,
            Subscription {
                inner: OnceLock::new(),
                token,
                pattern: pattern.to_owned(),
                bus_id: this.bus_id,
                handler: handler.clone().unbind(),
                event_loop: event_loop.map(Bound::unbind),
                routes: this.routes.clone(),
            },
        )?;
        this.routes.sweep();
        // Routed before the core can deliver a batch of it.
        lock(&this.routes.by_token).insert(token, sub.clone().unbind());
        let queue = this.queue.clone();
        let bus = bus.clone();
        let subscribed = block_on(py, async move {
            bus.subscribe_to_queue(pattern, options, &queue, token)
                .await
        })
        .and_then(|r| r.map_err(to_py));
        let inner = match subscribed {
            Ok(inner) => inner,
            Err(e) => {
                let removed = this.routes.remove(token);
                drop(removed);
                return Err(e);
            }
        };
        let _ = sub.get().inner.set(inner);
        if let Err(e) = Dispatcher::grow(slf, threads.max(MIN_THREADS)) {
            sub.get().stop();
            return Err(e);
        }
        Ok(sub)
    }

    /// Starts dispatcher threads until there are `wanted`.
    fn grow(slf: &Bound<'_, Self>, wanted: usize) -> PyResult<()> {
        static THREAD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let py = slf.py();
        let this = slf.get();
        let mut threads = lock(&this.threads);
        if threads.len() >= wanted {
            return Ok(());
        }
        let thread_class = THREAD.import(py, "threading", "Thread")?;
        let target = slf.getattr(intern!(py, "_serve"))?;
        while threads.len() < wanted {
            let kwargs = PyDict::new(py);
            kwargs.set_item("target", &target)?;
            kwargs.set_item(
                "name",
                format!("polybus-dispatch-{}-{}", this.bus_id, threads.len()),
            )?;
            kwargs.set_item("daemon", true)?;
            let thread = thread_class.call((), Some(&kwargs))?;
            thread.call_method0(intern!(py, "start"))?;
            threads.push(thread.unbind());
        }
        Ok(())
    }

    /// No new subscription may feed the queue; the threads end once every subscription has
    /// drained.
    pub(crate) fn close_queue(&self) {
        self.queue.close();
    }

    /// The close timed out: batches still queued are handed back without running handlers.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    /// Whether `caller` runs in a handler of this bus or on a loop its coroutine handlers need.
    pub(crate) fn serves(&self, py: Python<'_>, caller: &Caller<'_>) -> bool {
        caller.in_handler_of(self.bus_id)
            || self
                .routes
                .all(py)
                .iter()
                .any(|s| caller.inside(s.bind(py)))
    }

    /// Waits for the dispatcher threads to end, except the calling one. Call after the queue
    /// is closed (they end once every subscription has drained).
    ///
    /// With `cancel`, gives up when it fires and keeps the threads still running for a later
    /// join; returns whether every thread ended. The threads end as soon as the core's drain
    /// is done, so they are only still running here when it is not (a close given up on
    /// earlier drains in the background) or when a handler outlived it (the core gave up on it
    /// after `close_timeout_ms`): only those cases wait in slices, each at most
    /// [`SIGNAL_CHECK_INTERVAL`], looking at `cancel` between them.
    pub(crate) fn join(&self, py: Python<'_>, cancel: Option<&Cancel>) -> PyResult<bool> {
        static CURRENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let threads = std::mem::take(&mut *lock(&self.threads));
        let current = CURRENT.import(py, "threading", "current_thread")?.call0()?;
        let mut left = Vec::new();
        for thread in threads {
            if thread.is(&current) {
                continue;
            }
            let Some(c) = cancel else {
                thread.call_method0(py, intern!(py, "join"))?;
                continue;
            };
            let t = thread.bind(py);
            loop {
                if c.check("").is_err() {
                    left.push(thread);
                    break;
                }
                let slice = c.deadline().map_or(SIGNAL_CHECK_INTERVAL, |d| {
                    d.saturating_duration_since(std::time::Instant::now())
                        .min(SIGNAL_CHECK_INTERVAL)
                });
                t.call_method1(intern!(py, "join"), (slice.as_secs_f64(),))?;
                if !t.call_method0(intern!(py, "is_alive"))?.is_truthy()? {
                    break;
                }
            }
        }
        let joined = left.is_empty();
        lock(&self.threads).extend(left);
        Ok(joined)
    }
}

#[pymethods]
impl Dispatcher {
    /// The body of a dispatcher thread: take batches until the queue is closed and drained.
    fn _serve(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let dispatch = dispatch_module(py)?;
        let current = dispatch.getattr(intern!(py, "current"))?;
        let schedule = dispatch.getattr(intern!(py, "schedule"))?;
        loop {
            // No timeout: Python delivers signals to the main thread only, so nothing but a
            // batch or the end of the queue needs to wake this one.
            let batch = match py.detach(|| this.queue.next_blocking(None)) {
                Ok(Some(batch)) => batch,
                Ok(None) => continue,
                // Closed, and every subscription feeding it has ended.
                Err(_) => break,
            };
            if this.abandoned.load(Ordering::Acquire) {
                batch.complete(0, None);
                continue;
            }
            let Some(sub) = this.routes.get(py, batch.token()) else {
                // Not routed (cannot happen while the bus lives): deliver it again.
                batch.complete(0, None);
                continue;
            };
            let sub = sub.into_bound(py);
            if let Err(e) = current.call_method1(intern!(py, "set"), (&sub,)) {
                e.write_unraisable(py, None);
            }
            let s = sub.get();
            match &s.event_loop {
                None => run(py, &s.pattern, s.handler.bind(py), batch),
                Some(event_loop) => {
                    let batch = Batch {
                        inner: Mutex::new(Some(batch)),
                    };
                    if let Err(e) = schedule.call1((event_loop, &s.handler, batch, &sub)) {
                        e.write_unraisable(py, Some(&sub));
                    }
                }
            }
        }
        // Nothing can come any more: let the handlers go.
        this.routes.clear();
        Ok(())
    }
}

/// A running subscription: a pattern and a handler, served by its bus's dispatcher threads.
///
/// Close it with `close()` (or `unsubscribe()`, or a `with` block): it stops receiving, lets
/// queued and in-flight events finish, then returns. A subscription that is not closed runs
/// until its bus is closed, whether or not the Python object is kept.
#[pyclass(frozen, module = "polybus")]
pub(crate) struct Subscription {
    /// Set once the core has subscribed (before the object is handed out).
    inner: OnceLock<BatchSubscription>,
    token: u64,
    pattern: String,
    bus_id: u64,
    handler: Py<PyAny>,
    event_loop: Option<Py<PyAny>>,
    routes: Arc<Routes>,
}

impl Subscription {
    /// Closes, giving up the wait when `cancel` fires: the core stops the subscription at once
    /// either way and drains it in the background; its route goes once it has drained.
    fn close_until(slf: &Bound<'_, Self>, cancel: Option<&Cancel>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(inner) = this.inner.get() else {
            return Ok(());
        };
        if Caller::here(py)?.inside(slf) {
            this.stop();
            return Ok(());
        }
        // The dispatcher threads keep completing its batches while this waits.
        let closed = match cancel {
            None => block_on(py, inner.close())?,
            Some(c) => block_on(py, inner.close_until(c))?,
        };
        if gave_up(&closed, cancel) {
            // Still draining: the dispatcher threads must find it until it is done.
            this.stop();
        } else {
            let removed = this.routes.remove(this.token);
            drop(removed);
        }
        closed.map_err(to_py)
    }

    /// Whether it has been closed (by itself or by its bus).
    fn is_closed(&self) -> bool {
        self.inner.get().is_none_or(|i| i.is_closed())
    }

    /// Stops receiving without waiting; its route goes once it has drained.
    fn stop(&self) {
        if let Some(inner) = self.inner.get() {
            inner.stop();
        }
        lock(&self.routes.stopping).push(self.token);
    }

    /// Whether `event_loop` is the loop this subscription's coroutine handlers run on.
    fn runs_on(&self, event_loop: &Bound<'_, PyAny>) -> bool {
        self.event_loop.as_ref().is_some_and(|l| l.is(event_loop))
    }
}

/// Where the calling code runs, to tell whether waiting for a drain would wait on itself.
pub(crate) struct Caller<'py> {
    /// The subscription whose handler is running in this thread or task, if any.
    subscription: Option<Bound<'py, Subscription>>,
    /// The asyncio loop running in this thread, if any.
    event_loop: Option<Bound<'py, PyAny>>,
}

impl<'py> Caller<'py> {
    /// Looks at the calling thread.
    pub(crate) fn here(py: Python<'py>) -> PyResult<Self> {
        static RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let current = dispatch_module(py)?.getattr(intern!(py, "current"))?;
        let subscription = current.call_method1(intern!(py, "get"), (py.None(),))?;
        let event_loop = RUNNING_LOOP
            .import(py, "asyncio", "get_running_loop")?
            .call0()
            .ok();
        Ok(Caller {
            subscription: subscription.cast_into().ok(),
            event_loop,
        })
    }

    /// Whether the caller is one of `sub`'s handlers, or blocking the loop they need.
    pub(crate) fn inside(&self, sub: &Bound<'py, Subscription>) -> bool {
        self.subscription.as_ref().is_some_and(|s| s.is(sub))
            || self
                .event_loop
                .as_ref()
                .is_some_and(|l| sub.get().runs_on(l))
    }

    /// Whether the caller is a handler of a subscription of bus `bus_id`.
    pub(crate) fn in_handler_of(&self, bus_id: u64) -> bool {
        self.subscription
            .as_ref()
            .is_some_and(|s| s.get().bus_id == bus_id)
    }
}

#[pymethods]
impl Subscription {
    /// The pattern subscribed to.
    #[getter]
    fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether the subscription has been closed (by itself or by its bus).
    #[getter]
    fn closed(&self) -> bool {
        self.is_closed()
    }

    /// Stops receiving, lets queued and in-flight events finish, then returns. Idempotent.
    /// `timeout` (seconds) gives up the wait when it passes; the subscription is closed anyway.
    ///
    /// Called from one of the subscription's own handlers (or from the event loop its
    /// coroutine handlers run on) it stops the subscription without waiting for the drain.
    #[pyo3(signature = (*, timeout=None))]
    fn close(slf: &Bound<'_, Self>, timeout: Option<f64>) -> PyResult<()> {
        let cancel = cancel::from_timeout(slf.py(), timeout)?;
        Subscription::close_until(slf, cancel.as_ref())
    }

    /// The same as `close()`.
    #[pyo3(signature = (*, timeout=None))]
    fn unsubscribe(slf: &Bound<'_, Self>, timeout: Option<f64>) -> PyResult<()> {
        Subscription::close(slf, timeout)
    }

    /// `close`, guarded by a cancel handle of `polybus.aio` (internal).
    fn _close(slf: &Bound<'_, Self>, cancel: &Bound<'_, PyCancel>) -> PyResult<()> {
        Subscription::close_until(slf, Some(&cancel.get().inner))
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(slf: &Bound<'_, Self>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        Subscription::close_until(slf, None)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "Subscription(pattern={:?}, closed={})",
            self.pattern,
            crate::py_bool(self.is_closed())
        )
    }
}

/// Runs a plain handler over one batch, in order, stopping at the first failure, and reports
/// how far it got.
fn run(py: Python<'_>, pattern: &str, handler: &Bound<'_, PyAny>, batch: polybus::Batch) {
    let mut failed = None;
    for (i, event) in batch.events().iter().enumerate() {
        let reason = match Bound::new(py, Event::new(event.clone())) {
            Ok(event) => match handler.call1((&event,)) {
                Ok(r) if r.is_none() => None,
                Ok(r) => returned(py, pattern, &event, r),
                Err(err) => Some(failure(py, pattern, &event, err)),
            },
            Err(err) => Some(err.to_string()),
        };
        if let Some(reason) = reason {
            failed = Some((i, reason));
            break;
        }
    }
    match failed {
        None => batch.ack_all(),
        Some((i, reason)) => batch.complete(i, Some(reason)),
    }
}

/// The failure of a plain handler that returned something, if any: an awaitable means an
/// async handler that was not recognised as one, which cannot be run here.
fn returned(
    py: Python<'_>,
    pattern: &str,
    event: &Bound<'_, Event>,
    value: Bound<'_, PyAny>,
) -> Option<String> {
    if !value.hasattr(intern!(py, "__await__")).unwrap_or(false) {
        return None;
    }
    let _ = value.call_method0(intern!(py, "close"));
    let err = pyo3::exceptions::PyTypeError::new_err(
        "the handler returned an awaitable; pass an `async def` function to run it on an event loop",
    );
    Some(failure(py, pattern, event, err))
}

/// Logs a handler failure to the `polybus` logger and returns the nack reason.
fn failure(py: Python<'_>, pattern: &str, event: &Bound<'_, Event>, err: PyErr) -> String {
    let logged = dispatch_module(py).and_then(|d| {
        d.getattr(intern!(py, "log_failure"))?
            .call1((pattern, event, err.value(py)))?
            .extract()
    });
    logged.unwrap_or_else(|_| err.to_string())
}

/// One lane's events, handed to the event loop as one coroutine (see `polybus._dispatch`).
#[pyclass(frozen, module = "polybus", name = "_Batch")]
pub(crate) struct Batch {
    inner: Mutex<Option<polybus::Batch>>,
}

#[pymethods]
impl Batch {
    /// The events, in the order they must be handled.
    fn events(&self, py: Python<'_>) -> PyResult<Vec<Py<Event>>> {
        let guard = lock(&self.inner);
        let events = guard.as_ref().map(|b| b.events()).unwrap_or_default();
        events
            .iter()
            .map(|e| Py::new(py, Event::new(e.clone())))
            .collect()
    }

    /// Reports how far the handler got: the first `handled` events succeeded; `reason`, if
    /// given, is why the next one failed. The core delivers the rest again. Once only.
    #[pyo3(signature = (handled, reason=None))]
    fn complete(&self, handled: usize, reason: Option<String>) {
        if let Some(batch) = lock(&self.inner).take() {
            batch.complete(handled, reason);
        }
    }

    /// Reports every event as handled. Once only.
    fn ack_all(&self) {
        if let Some(batch) = lock(&self.inner).take() {
            batch.ack_all();
        }
    }

    /// Gives the batch back unhandled: the subscription's event loop is closed, so its
    /// handlers can never run again (the core's `Batch::release`). Once only.
    fn release(&self) {
        if let Some(batch) = lock(&self.inner).take() {
            batch.release();
        }
    }
}
