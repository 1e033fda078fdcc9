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

    /// When it was published, in seconds since the Unix epoch (as `time.time()`).
    #[getter]
    fn time(&self) -> f64 {
        self.inner
            .time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
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
