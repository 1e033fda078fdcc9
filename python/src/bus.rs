//! The bus: connect, publish, subscribe, close.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Mutex,
};

use polybus::{Cancel, ErrorKind, Headers, Message, SubscribeOptions};
use pyo3::{
    prelude::*,
    sync::PyOnceLock,
    types::{PyCFunction, PyDict, PyTuple},
};

use crate::{
    block_on,
    cancel::{self, gave_up, PyCancel},
    config, dispatch_module,
    error::{new_error, to_py},
    message::{self, Meta},
    on_main_thread, py_bool,
    state::StateWatch,
    subscription::{self, Caller, Dispatcher, Subscription},
};

/// Source of bus ids, which tell a handler's own bus from the others.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Connects to the bus described by `config`: a URL (`"memory://"`), a JSON object as text,
/// or a dict with the fields `url`, `prefix`, `name`, `connect_timeout_ms`,
/// `publish_timeout_ms`, `close_timeout_ms`, `max_payload` and the sections `nats` and
/// `jetstream` (dicts). `timeout` (seconds) gives up the wait when it passes.
///
/// Every bus that is still open at interpreter exit is closed then (see `polybus._dispatch`).
#[pyfunction]
#[pyo3(signature = (config, *, timeout=None))]
pub(crate) fn connect<'py>(
    py: Python<'py>,
    config: &Bound<'py, PyAny>,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, Bus>> {
    let cancel = cancel::from_timeout(py, timeout)?;
    connect_until(py, config, cancel.as_ref())
}

/// `connect`, guarded by a cancel handle of `polybus.aio` (internal).
#[pyfunction]
#[pyo3(name = "_connect")]
pub(crate) fn connect_cancellable<'py>(
    py: Python<'py>,
    config: &Bound<'py, PyAny>,
    cancel: &Bound<'py, PyCancel>,
) -> PyResult<Bound<'py, Bus>> {
    connect_until(py, config, Some(&cancel.get().inner))
}

/// Connects, giving up when `cancel` fires (the core leaves nothing open then).
fn connect_until<'py>(
    py: Python<'py>,
    config: &Bound<'py, PyAny>,
    cancel: Option<&Cancel>,
) -> PyResult<Bound<'py, Bus>> {
    let config = config::from_py(config)?;
    let connecting = polybus::Bus::connect(config);
    let connected = match cancel {
        None => block_on(py, connecting)?,
        Some(c) => block_on(py, c.guard("connect", connecting))?,
    };
    let inner = connected.map_err(to_py)?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let bus = Bound::new(
        py,
        Bus {
            inner,
            closed: AtomicBool::new(false),
            dispatcher: Py::new(py, Dispatcher::new(id))?,
            closing: tokio::sync::Mutex::new(()),
        },
    )?;
    dispatch_module(py)?.getattr("track")?.call1((&bus,))?;
    Ok(bus)
}

/// A connection to an event bus.
///
/// Handlers run on dispatcher threads owned by Python (plain functions) or on the event loop
/// that was running when they subscribed (coroutine functions). A handler that returns acks
/// the event; one that raises nacks it, and the core retries it with backoff. After `close()`
/// every call but `stats()` and `close()` raises `ClosedError`.
#[pyclass(frozen, weakref, module = "polybus")]
pub(crate) struct Bus {
    inner: polybus::Bus,
    closed: AtomicBool,
    /// The delivery queue of every subscription and the threads serving it.
    dispatcher: Py<Dispatcher>,
    /// Held by a close that waits, so that a second one waits for the first (locked inside
    /// the wait, so a timeout, a cancel or Ctrl-C ends waiting for it too).
    closing: tokio::sync::Mutex<()>,
}

impl Drop for Bus {
    fn drop(&mut self) {
        // Dropped without close: the core stops the subscriptions; once they drain, the
        // dispatcher threads end.
        self.dispatcher.get().close_queue();
    }
}

impl Bus {
    fn check_open(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(new_error(py, ErrorKind::Closed, "bus is closed"));
        }
        Ok(())
    }

    /// Subscribes `handler` and starts its dispatcher threads.
    fn open_subscription<'py>(
        slf: &Bound<'py, Self>,
        pattern: &str,
        handler: &Bound<'py, PyAny>,
        options: SubscribeOptions,
        event_loop: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Subscription>> {
        static RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let py = slf.py();
        let this = slf.get();
        this.check_open(py)?;
        if !handler.is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "handler must be callable, not {}",
                handler.get_type().name()?
            )));
        }
        let is_async = dispatch_module(py)?
            .getattr("is_async")?
            .call1((handler,))?
            .is_truthy()?;
        let event_loop = match (is_async, event_loop) {
            (false, _) => None,
            (true, Some(l)) => Some(l),
            (true, None) => Some(
                RUNNING_LOOP
                    .import(py, "asyncio", "get_running_loop")?
                    .call0()
                    .map_err(|_| {
                        new_error(
                            py,
                            ErrorKind::InvalidArgument,
                            "a coroutine handler needs an event loop: subscribe from a coroutine, \
                         pass loop=..., or use polybus.aio",
                        )
                    })?,
            ),
        };
        Dispatcher::subscribe(
            this.dispatcher.bind(py),
            &this.inner,
            pattern,
            options,
            handler,
            event_loop,
        )
    }

    /// Publishes `messages` in order through the core's pipelined publish, giving up when
    /// `cancel` fires.
    fn publish_messages(
        &self,
        py: Python<'_>,
        messages: Vec<Message>,
        cancel: Option<&Cancel>,
    ) -> PyResult<usize> {
        let bus = self.inner.clone();
        let result = match cancel {
            Some(c) => block_on(
                py,
                async move { bus.publish_batch_until(messages, c).await },
            )?,
            // Sliced, so that Ctrl-C interrupts a batch waiting on backpressure.
            None if on_main_thread(py) => {
                block_on(py, async move { bus.publish_batch(messages).await })?
            }
            None => py.detach(|| bus.publish_batch_blocking(messages)),
        };
        result.map_err(to_py)
    }

    /// Closes the bus, giving up the wait when `cancel` fires: the core closes it at once
    /// either way and drains in the background; the dispatcher threads end once the drain is
    /// done, and a later `close()` (or the one at exit) waits for them.
    fn close_until(&self, py: Python<'_>, cancel: Option<&Cancel>) -> PyResult<()> {
        self.closed.store(true, Ordering::Release);
        let dispatcher = self.dispatcher.get();
        // No new subscription feeds the queue; the threads end once every one has drained.
        dispatcher.close_queue();
        let bus = self.inner.clone();
        if dispatcher.serves(py, &Caller::here(py)?) {
            // Waiting here would wait on the handler that is calling: let the drain finish in
            // the background (its outcome is in the stats and the log).
            polybus::runtime::global().spawn(async move {
                let _ = bus.close().await;
            });
            return Ok(());
        }
        // A second close (at exit, say) waits for the first one's drain.
        let gate = &self.closing;
        let (closed, entered) = block_on(py, async move {
            let entered = match cancel {
                None => Some(gate.lock().await),
                Some(c) => c.guard("close", async { Ok(gate.lock().await) }).await.ok(),
            };
            let closed = match cancel {
                None => bus.close().await,
                // Fired while waiting for the gate: this fails at once, in the core's words.
                Some(c) => bus.close_until(c).await,
            };
            (closed, entered)
        })?;
        if entered.is_none() || gave_up(&closed, cancel) {
            return closed.map_err(to_py);
        }
        if closed
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::Timeout)
        {
            dispatcher.abandon();
        }
        let joined = dispatcher.join(py, cancel)?;
        drop(entered);
        match (closed, cancel) {
            (Err(e), _) => Err(to_py(e)),
            // Threads still run (the drain of a close given up on earlier, or a handler the
            // core gave up on): fail as the cancel says, in the core's words.
            (Ok(()), Some(c)) if !joined => block_on(py, self.inner.close_until(c))?.map_err(to_py),
            (Ok(()), _) => Ok(()),
        }
    }
}

#[pymethods]
impl Bus {
    /// Publishes one event and returns once the backend has accepted it; `timeout` (seconds)
    /// gives up the wait when it passes.
    #[pyo3(signature = (
        topic, payload, *, key=None, headers=None, id=None, r#type=None, time=None, timeout=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        py: Python<'_>,
        topic: String,
        payload: &Bound<'_, PyAny>,
        key: Option<String>,
        headers: Option<Headers>,
        id: Option<String>,
        r#type: Option<String>,
        time: Option<Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        self.check_open(py)?;
        let cancel = cancel::from_timeout(py, timeout)?;
        let meta = Meta {
            key,
            headers,
            id,
            event_type: r#type,
            time: time.as_ref().map(message::event_time).transpose()?,
        };
        let message = message::build(topic, payload, meta)?;
        if let Some(c) = cancel {
            return block_on(py, self.inner.publish_until(message, &c))?.map_err(to_py);
        }
        match self.inner.publish_nowait(message) {
            Ok(None) => Ok(()),
            Ok(Some(pending)) => block_on(py, pending.wait())?.map_err(to_py),
            Err(e) => Err(to_py(e)),
        }
    }

    /// Starts a publish without waiting: None when the backend accepted it, else a pending
    /// publish to wait on (the asyncio front end waits on it off the event loop).
    #[pyo3(signature = (topic, payload, *, key=None, headers=None, id=None, r#type=None, time=None))]
    #[allow(clippy::too_many_arguments)]
    fn _publish_nowait(
        &self,
        py: Python<'_>,
        topic: String,
        payload: &Bound<'_, PyAny>,
        key: Option<String>,
        headers: Option<Headers>,
        id: Option<String>,
        r#type: Option<String>,
        time: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Option<PendingPublish>> {
        self.check_open(py)?;
        let meta = Meta {
            key,
            headers,
            id,
            event_type: r#type,
            time: time.as_ref().map(message::event_time).transpose()?,
        };
        let pending = self
            .inner
            .publish_nowait(message::build(topic, payload, meta)?)
            .map_err(to_py)?;
        Ok(pending.map(|p| PendingPublish {
            inner: Mutex::new(Some(p)),
        }))
    }

    /// Publishes many events in order, pipelined; returns how many were published. `timeout`
    /// (seconds) gives up when it passes.
    #[pyo3(signature = (events, *, timeout=None))]
    fn publish_batch(
        &self,
        py: Python<'_>,
        events: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<usize> {
        self.check_open(py)?;
        let cancel = cancel::from_timeout(py, timeout)?;
        let messages = message::from_items(events)?;
        self.publish_messages(py, messages, cancel.as_ref())
    }

    /// The same as `publish_batch`.
    #[pyo3(signature = (events, *, timeout=None))]
    fn publish_many(
        &self,
        py: Python<'_>,
        events: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<usize> {
        self.publish_batch(py, events, timeout)
    }

    /// `publish_batch`, guarded by a cancel handle of `polybus.aio` (internal).
    fn _publish_batch(
        &self,
        py: Python<'_>,
        events: &Bound<'_, PyAny>,
        cancel: &Bound<'_, PyCancel>,
    ) -> PyResult<usize> {
        self.check_open(py)?;
        let messages = message::from_items(events)?;
        self.publish_messages(py, messages, Some(&cancel.get().inner))
    }

    /// Subscribes `handler` to `pattern` (`*` matches one token, `>` the rest).
    #[pyo3(signature = (
        pattern, handler, *, group=None, concurrency=1, max_attempts=5, dead_letter=None,
        start="new", backoff_initial_ms=100, backoff_max_ms=10_000, queue_size=1024,
        batch_size=256, r#loop=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn subscribe<'py>(
        slf: &Bound<'py, Self>,
        pattern: &str,
        handler: &Bound<'py, PyAny>,
        group: Option<String>,
        concurrency: u32,
        max_attempts: u32,
        dead_letter: Option<String>,
        start: &str,
        backoff_initial_ms: u64,
        backoff_max_ms: u64,
        queue_size: u32,
        batch_size: u32,
        r#loop: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Subscription>> {
        let options = subscription::options(
            slf.py(),
            group,
            concurrency,
            max_attempts,
            dead_letter,
            start,
            backoff_initial_ms,
            backoff_max_ms,
            queue_size,
            batch_size,
        )?;
        Bus::open_subscription(slf, pattern, handler, options, r#loop)
    }

    /// A decorator that subscribes the decorated handler and returns it unchanged.
    #[pyo3(signature = (
        pattern, *, group=None, concurrency=1, max_attempts=5, dead_letter=None,
        start="new", backoff_initial_ms=100, backoff_max_ms=10_000, queue_size=1024,
        batch_size=256, r#loop=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn on<'py>(
        slf: &Bound<'py, Self>,
        pattern: String,
        group: Option<String>,
        concurrency: u32,
        max_attempts: u32,
        dead_letter: Option<String>,
        start: &str,
        backoff_initial_ms: u64,
        backoff_max_ms: u64,
        queue_size: u32,
        batch_size: u32,
        r#loop: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCFunction>> {
        let py = slf.py();
        slf.get().check_open(py)?;
        let options = subscription::options(
            py,
            group,
            concurrency,
            max_attempts,
            dead_letter,
            start,
            backoff_initial_ms,
            backoff_max_ms,
            queue_size,
            batch_size,
        )?;
        let bus = slf.clone().unbind();
        let event_loop = r#loop.map(Bound::unbind);
        PyCFunction::new_closure(
            py,
            Some(c"on"),
            Some(c"Subscribes the decorated handler and returns it."),
            move |args: &Bound<'_, PyTuple>,
                  _kwargs: Option<&Bound<'_, PyDict>>|
                  -> PyResult<Py<PyAny>> {
                let py = args.py();
                let (handler,): (Bound<'_, PyAny>,) = args.extract()?;
                let event_loop = event_loop.as_ref().map(|l| l.bind(py).clone());
                Bus::open_subscription(
                    bus.bind(py),
                    &pattern,
                    &handler,
                    options.clone(),
                    event_loop,
                )?;
                Ok(handler.unbind())
            },
        )
    }

    /// The bus's counters since it was opened.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let dict = PyDict::new(py);
        dict.set_item("published", s.published)?;
        dict.set_item("delivered", s.delivered)?;
        dict.set_item("acked", s.acked)?;
        dict.set_item("failed", s.failed)?;
        dict.set_item("retried", s.retried)?;
        dict.set_item("dead_lettered", s.dead_lettered)?;
        dict.set_item("dropped", s.dropped)?;
        Ok(dict)
    }

    /// The state of the connection to the broker: `"connected"`, `"disconnected"` (the client
    /// is reconnecting) or `"closed"`. `memory://` is connected until closed.
    #[getter]
    fn connection_state(&self) -> &'static str {
        self.inner.connection_state().as_str()
    }

    /// Calls `callback(state)` on a Python-owned daemon thread whenever the connection state
    /// changes; the last call is `"closed"`, after which the thread ends. Returns `callback`,
    /// so this works as a decorator.
    fn on_connection_state<'py>(
        &self,
        py: Python<'py>,
        callback: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.check_open(py)?;
        if !callback.is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "callback must be callable, not {}",
                callback.get_type().name()?
            )));
        }
        let watch = StateWatch::new(self.inner.watch_connection_state());
        dispatch_module(py)?
            .getattr("watch_connection_state")?
            .call1((watch, &callback))?;
        Ok(callback)
    }

    /// Whether `close()` has been called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the bus: stops new publishes and subscribes, lets every subscription's queued and
    /// in-flight events finish (bounded by `close_timeout_ms`), then releases the connection.
    /// Idempotent. Called from a handler of this bus, it closes without waiting for the drain.
    /// `timeout` (seconds) gives up the wait when it passes; the bus is closed anyway.
    #[pyo3(signature = (*, timeout=None))]
    fn close(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let cancel = cancel::from_timeout(py, timeout)?;
        self.close_until(py, cancel.as_ref())
    }

    /// `close`, guarded by a cancel handle of `polybus.aio` (internal).
    fn _close(&self, py: Python<'_>, cancel: &Bound<'_, PyCancel>) -> PyResult<()> {
        self.close_until(py, Some(&cancel.get().inner))
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close_until(py, None)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "Bus(url={:?}, closed={})",
            self.inner.config().url,
            py_bool(self.closed())
        )
    }
}

/// A publish the backend has not accepted yet (used by `polybus.aio`).
#[pyclass(frozen, module = "polybus", name = "_PendingPublish")]
pub(crate) struct PendingPublish {
    inner: Mutex<Option<polybus::PendingPublish>>,
}

#[pymethods]
impl PendingPublish {
    /// Blocks until the backend accepts the event (releasing the interpreter), or until
    /// `cancel` fires (the event may still be published then). Once only.
    #[pyo3(signature = (cancel=None))]
    fn wait(&self, py: Python<'_>, cancel: Option<&Bound<'_, PyCancel>>) -> PyResult<()> {
        let pending = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(p) = pending else {
            return Ok(());
        };
        match cancel {
            None => block_on(py, p.wait())?.map_err(to_py),
            Some(c) => block_on(py, c.get().inner.guard("publish", p.wait()))?.map_err(to_py),
        }
    }
}
