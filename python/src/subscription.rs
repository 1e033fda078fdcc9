//! Subscriptions: the Python-owned dispatcher threads that pull batches and run handlers.
//!
//! Each subscription pulls [`polybus::Batch`]es from a [`BatchSubscription`]. A plain handler
//! runs on `concurrency` dispatcher threads (`threading.Thread`, daemon), each of which waits
//! for a batch detached from the interpreter and runs the batch's handlers attached to it. A
//! coroutine handler gets one dispatcher thread that hands each batch to the user's event loop
//! as one coroutine. Either way a batch is handled in order and stops at its first failure
//! (that event is nacked, the rest skipped); the core does every retry.

use std::sync::Mutex;

use polybus::{BatchSubscription, ErrorKind, Outcome, Start, SubscribeOptions};
use pyo3::{
    intern,
    prelude::*,
    sync::PyOnceLock,
    types::{PyDict, PyTuple},
};

use crate::{
    block_on, dispatch_module,
    error::{new_error, to_py},
    event::Event,
    SIGNAL_CHECK_INTERVAL,
};

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

/// A running subscription: a pattern, a handler and the threads that run it.
///
/// Close it with `close()` (or `unsubscribe()`, or a `with` block): it stops receiving, lets
/// queued and in-flight events finish, then returns. A subscription that is not closed runs
/// until its bus is closed, whether or not the Python object is kept.
#[pyclass(frozen, module = "polybus")]
pub(crate) struct Subscription {
    inner: BatchSubscription,
    pattern: String,
    bus_id: u64,
    event_loop: Option<Py<PyAny>>,
    threads: Mutex<Vec<Py<PyAny>>>,
}

impl Subscription {
    /// Wraps `inner` and starts its dispatcher threads.
    pub(crate) fn start<'py>(
        py: Python<'py>,
        inner: BatchSubscription,
        bus_id: u64,
        handler: &Bound<'py, PyAny>,
        event_loop: Option<Bound<'py, PyAny>>,
        concurrency: u32,
    ) -> PyResult<Bound<'py, Subscription>> {
        static THREAD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let threads = if event_loop.is_some() { 1 } else { concurrency };
        let pattern = inner.pattern().to_owned();
        let sub = Bound::new(
            py,
            Subscription {
                inner,
                pattern,
                bus_id,
                event_loop: event_loop.as_ref().map(|l| l.clone().unbind()),
                threads: Mutex::new(Vec::new()),
            },
        )?;
        let thread_class = THREAD.import(py, "threading", "Thread")?;
        let target = sub.getattr(intern!(py, "_serve"))?;
        let args = PyTuple::new(py, [handler.clone(), event_loop.into_pyobject(py)?])?;
        let mut started = Vec::with_capacity(threads as usize);
        for i in 0..threads {
            let kwargs = PyDict::new(py);
            kwargs.set_item("target", &target)?;
            kwargs.set_item("args", &args)?;
            kwargs.set_item("name", format!("polybus {} #{i}", sub.get().pattern))?;
            kwargs.set_item("daemon", true)?;
            let thread = thread_class.call((), Some(&kwargs))?;
            if let Err(e) = thread.call_method0(intern!(py, "start")) {
                sub.get().inner.stop();
                return Err(e);
            }
            started.push(thread.unbind());
        }
        *lock(&sub.get().threads) = started;
        Ok(sub)
    }

    /// Whether it has been closed (by itself or by its bus).
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Whether `event_loop` is the loop this subscription's coroutine handlers run on.
    pub(crate) fn runs_on(&self, event_loop: &Bound<'_, PyAny>) -> bool {
        self.event_loop.as_ref().is_some_and(|l| l.is(event_loop))
    }

    /// Waits for the dispatcher threads to end, except the calling one.
    pub(crate) fn join(&self, py: Python<'_>) -> PyResult<()> {
        static CURRENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let threads = std::mem::take(&mut *lock(&self.threads));
        let current = CURRENT.import(py, "threading", "current_thread")?.call0()?;
        for thread in threads {
            if !thread.is(&current) {
                thread.call_method0(py, intern!(py, "join"))?;
            }
        }
        Ok(())
    }
}

/// Locks a mutex, ignoring poisoning (the data is a plain list).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        self.inner.is_closed()
    }

    /// Stops receiving, lets queued and in-flight events finish, then returns. Idempotent.
    ///
    /// Called from one of the subscription's own handlers (or from the event loop its
    /// coroutine handlers run on) it stops the subscription without waiting for the drain.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if Caller::here(py)?.inside(slf) {
            this.inner.stop();
            return Ok(());
        }
        block_on(py, this.inner.close())?.map_err(to_py)?;
        this.join(py)
    }

    /// The same as `close()`.
    fn unsubscribe(slf: &Bound<'_, Self>) -> PyResult<()> {
        Subscription::close(slf)
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(slf: &Bound<'_, Self>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        Subscription::close(slf)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "Subscription(pattern={:?}, closed={})",
            self.pattern,
            crate::py_bool(self.inner.is_closed())
        )
    }

    /// The body of a dispatcher thread: pull batches until the subscription is drained.
    fn _serve(
        slf: &Bound<'_, Self>,
        handler: &Bound<'_, PyAny>,
        event_loop: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let dispatch = dispatch_module(py)?;
        dispatch
            .getattr(intern!(py, "current"))?
            .call_method1(intern!(py, "set"), (slf,))?;
        let this = slf.get();
        loop {
            match py.detach(|| this.inner.next_batch_blocking(SIGNAL_CHECK_INTERVAL)) {
                Ok(None) => {}
                Ok(Some(batch)) => match event_loop {
                    None => run(py, &this.pattern, handler, batch),
                    Some(l) => {
                        let batch = Batch {
                            inner: Mutex::new(Some(batch)),
                        };
                        dispatch
                            .getattr(intern!(py, "schedule"))?
                            .call1((l, handler, batch, slf))?;
                    }
                },
                // Closed and drained.
                Err(_) => return Ok(()),
            }
        }
    }
}

/// Runs a plain handler over one batch, in order, stopping at the first failure.
fn run(py: Python<'_>, pattern: &str, handler: &Bound<'_, PyAny>, batch: polybus::Batch) {
    let n = batch.events().len();
    let mut outcomes = Vec::with_capacity(n);
    for event in batch.events() {
        let outcome = match Bound::new(py, Event::new(event.clone())) {
            Ok(event) => match handler.call1((&event,)) {
                Ok(r) if r.is_none() => Outcome::Ack,
                Ok(r) => returned(py, pattern, &event, r),
                Err(err) => Outcome::Nack(failure(py, pattern, &event, err)),
            },
            Err(err) => Outcome::Nack(err.to_string()),
        };
        let failed = outcome != Outcome::Ack;
        outcomes.push(outcome);
        if failed {
            break;
        }
    }
    outcomes.resize(n, Outcome::Skipped);
    batch.complete(outcomes);
}

/// The outcome of a plain handler that returned something: an awaitable means an async
/// handler that was not recognised as one, which cannot be run here.
fn returned(
    py: Python<'_>,
    pattern: &str,
    event: &Bound<'_, Event>,
    value: Bound<'_, PyAny>,
) -> Outcome {
    if !value.hasattr(intern!(py, "__await__")).unwrap_or(false) {
        return Outcome::Ack;
    }
    let _ = value.call_method0(intern!(py, "close"));
    let err = pyo3::exceptions::PyTypeError::new_err(
        "the handler returned an awaitable; pass an `async def` function to run it on an event loop",
    );
    Outcome::Nack(failure(py, pattern, event, err))
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

    /// Reports the outcome: every event acked, or those before `failed` acked, the one at
    /// `failed` nacked with `reason` and the rest skipped.
    #[pyo3(signature = (failed, reason))]
    fn complete(&self, failed: Option<usize>, reason: String) {
        let Some(batch) = lock(&self.inner).take() else {
            return;
        };
        let n = batch.events().len();
        let outcomes = match failed {
            None => vec![Outcome::Ack; n],
            Some(i) => {
                let mut o = vec![Outcome::Ack; i.min(n)];
                o.push(Outcome::Nack(reason));
                o.resize(n, Outcome::Skipped);
                o
            }
        };
        batch.complete(outcomes);
    }
}
