//! The delivered event, as handlers see it.

use std::time::UNIX_EPOCH;

use polybus::ErrorKind;
use pyo3::{
    prelude::*,
    sync::PyOnceLock,
    types::{PyBytes, PyDict},
};

use crate::error::new_error;

/// An event delivered to a handler: the published message plus the delivery attempt.
///
/// Fields are read from the core's event when accessed, so an event costs one small object
/// until its handler looks inside.
#[pyclass(frozen, module = "polybus")]
pub(crate) struct Event {
    inner: polybus::Event,
}

impl Event {
    /// Wraps a core event.
    pub(crate) fn new(inner: polybus::Event) -> Self {
        Event { inner }
    }
}

#[pymethods]
impl Event {
    /// The topic it was published on (without the bus prefix).
    #[getter]
    fn topic(&self) -> &str {
        self.inner.topic()
    }

    /// The payload, untouched.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.payload())
    }

    /// The ordering key, or None.
    #[getter]
    fn key(&self) -> Option<&str> {
        self.inner.key()
    }

    /// The headers, as a new dict.
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in self.inner.headers() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }

    /// The event id (a UUIDv7 unless the publisher set one).
    #[getter]
    fn id(&self) -> &str {
        self.inner.id()
    }

    /// The event type (defaults to the topic).
    #[getter(r#type)]
    fn event_type(&self) -> &str {
        self.inner.event_type()
    }

    /// The publishing service's name (its bus `name`), or None.
    #[getter]
    fn source(&self) -> Option<&str> {
        self.inner.source()
    }

    /// When it was published (or the time its publisher set), as a timezone-aware UTC
    /// `datetime.datetime`, to the nearest microsecond.
    #[getter]
    fn time<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        static EPOCH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static TIMEDELTA: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let epoch = EPOCH.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            let datetime = py.import("datetime")?;
            let utc = datetime.getattr("timezone")?.getattr("utc")?;
            Ok(datetime
                .getattr("datetime")?
                .call((1970, 1, 1, 0, 0, 0, 0, utc), None)?
                .unbind())
        })?;
        let since = self
            .inner
            .time()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // To the nearest microsecond, as `datetime.fromtimestamp` rounds a float, passed as
        // timedelta(days, seconds, microseconds) integers, so no float rounds them again.
        let micros = (since.as_nanos() + 500) / 1000;
        let secs = micros / 1_000_000;
        let delta = TIMEDELTA.import(py, "datetime", "timedelta")?.call1((
            (secs / 86_400) as u64,
            (secs % 86_400) as u64,
            (micros % 1_000_000) as u64,
        ))?;
        epoch.bind(py).add(delta)
    }

    /// The delivery attempt: 1 on first delivery, 2 on the first retry, and so on.
    #[getter]
    fn attempt(&self) -> u32 {
        self.inner.attempt()
    }

    /// Decodes the payload as JSON.
    fn json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let loads = LOADS.import(py, "json", "loads")?;
        loads
            .call1((PyBytes::new(py, self.inner.payload()),))
            .map_err(|cause| {
                let err = new_error(
                    py,
                    ErrorKind::Payload,
                    format!(
                        "payload of event {} on {:?} is not JSON: {cause}",
                        self.inner.id(),
                        self.inner.topic()
                    ),
                );
                err.set_cause(py, Some(cause));
                err
            })
    }

    fn __repr__(&self) -> String {
        format!(
            "Event(topic={:?}, id={:?}, attempt={}, payload=<{} bytes>)",
            self.inner.topic(),
            self.inner.id(),
            self.inner.attempt(),
            self.inner.payload().len()
        )
    }
}
