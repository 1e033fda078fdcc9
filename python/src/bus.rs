//! The bus: connect, publish, subscribe, close.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Condvar, Mutex,
};

use polybus::{ErrorKind, Headers, Message, SubscribeOptions};
use pyo3::{
    prelude::*,
    sync::PyOnceLock,
    types::{PyCFunction, PyDict, PyTuple},
};

use crate::{
    block_on, config, dispatch_module,
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
/// `jetstream` (dicts).
///
/// Every bus that is still open at interpreter exit is closed then (see `polybus._dispatch`).
#[pyfunction]
pub(crate) fn connect<'py>(
    py: Python<'py>,
    config: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, Bus>> {
    let config = config::from_py(config)?;
    let inner = block_on(py, polybus::Bus::connect(config))?.map_err(to_py)?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let bus = Bound::new(
        py,
        Bus {
            inner,
            closed: AtomicBool::new(false),
            dispatcher: Py::new(py, Dispatcher::new(id))?,
            closing: Gate::default(),
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
    /// Held by a close that waits, so that a second one waits for the first.
    closing: Gate,
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

    /// Publishes `messages` in order through the core's pipelined publish.
    fn publish_messages(&self, py: Python<'_>, messages: Vec<Message>) -> PyResult<usize> {
        let result = if on_main_thread(py) {
            // Sliced, so that Ctrl-C interrupts a batch waiting on backpressure.
            let bus = self.inner.clone();
            block_on(py, async move { bus.publish_batch(messages).await })?
        } else {
            py.detach(|| self.inner.publish_batch_blocking(messages))
        };
        result.map_err(to_py)
    }
}

#[pymethods]
impl Bus {
    /// Publishes one event and returns once the backend has accepted it.
    #[pyo3(signature = (topic, payload, *, key=None, headers=None, id=None, r#type=None, time=None))]
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
    ) -> PyResult<()> {
        self.check_open(py)?;
        let meta = Meta {
            key,
            headers,
            id,
            event_type: r#type,
            time: time.as_ref().map(message::event_time).transpose()?,
        };
        match self
            .inner
            .publish_nowait(message::build(topic, payload, meta)?)
        {
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

    /// Publishes many events in order, pipelined; returns how many were published.
    fn publish_batch(&self, py: Python<'_>, events: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.check_open(py)?;
        let messages = message::from_items(events)?;
        self.publish_messages(py, messages)
    }

    /// The same as `publish_batch`.
    fn publish_many(&self, py: Python<'_>, events: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.publish_batch(py, events)
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
    fn close(&self, py: Python<'_>) -> PyResult<()> {
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
        let _closing = self.closing.enter(py);
        let closed = block_on(py, async move { bus.close().await })?;
        if closed
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::Timeout)
        {
            dispatcher.abandon();
        }
        dispatcher.join(py)?;
        closed.map_err(to_py)
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
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

/// A section one thread at a time may be in, entered with the interpreter released.
#[derive(Default)]
struct Gate {
    busy: Mutex<bool>,
    left: Condvar,
}

impl Gate {
    fn enter(&self, py: Python<'_>) -> GateGuard<'_> {
        py.detach(|| {
            let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
            while *busy {
                busy = self.left.wait(busy).unwrap_or_else(|e| e.into_inner());
            }
            *busy = true;
        });
        GateGuard(self)
    }
}

struct GateGuard<'a>(&'a Gate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.0.left.notify_all();
    }
}

/// A publish the backend has not accepted yet (used by `polybus.aio`).
#[pyclass(frozen, module = "polybus", name = "_PendingPublish")]
pub(crate) struct PendingPublish {
    inner: Mutex<Option<polybus::PendingPublish>>,
}

#[pymethods]
impl PendingPublish {
    /// Blocks until the backend accepts the event (releasing the interpreter). Once only.
    fn wait(&self, py: Python<'_>) -> PyResult<()> {
        let pending = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        match pending {
            Some(p) => block_on(py, p.wait())?.map_err(to_py),
            None => Ok(()),
        }
    }
}
