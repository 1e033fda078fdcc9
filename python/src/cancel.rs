//! Giving up a wait: the `timeout=` of the blocking calls and the cancel handle of `polybus.aio`.
//!
//! Both map onto the core's [`Cancel`], which decides everything else: when a call stops
//! waiting, what it leaves behind (a publish may still be published, a batch reports
//! `published`, a close closes anyway and drains in the background) and the error it raises
//! (`PolybusTimeoutError` when the caller's deadline passed, `CancelledError` when fired).

use std::time::Duration;

use polybus::{Cancel, ErrorKind};
use pyo3::prelude::*;

use crate::error::new_error;

/// The core's cancel handle for a `timeout=` in seconds: None means no deadline, a value too
/// large to represent means none either (the core's rule); 0 has passed already.
pub(crate) fn from_timeout(py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Cancel>> {
    let Some(seconds) = timeout else {
        return Ok(None);
    };
    if seconds.is_nan() || seconds < 0.0 {
        return Err(new_error(
            py,
            ErrorKind::InvalidArgument,
            format!("timeout must be None or a number of seconds >= 0, got {seconds}"),
        ));
    }
    Ok(Some(match Duration::try_from_secs_f64(seconds) {
        Ok(d) => Cancel::with_timeout(d),
        // Too large for a Duration (infinity, say).
        Err(_) => Cancel::new(),
    }))
}

/// Whether `result`, the outcome of a call guarded by `cancel`, is the call giving up because
/// the handle fired (or its deadline passed), rather than the call's own outcome.
pub(crate) fn gave_up<T>(result: &polybus::Result<T>, cancel: Option<&Cancel>) -> bool {
    match (result, cancel) {
        (Err(e), Some(c)) => e.kind() == ErrorKind::Cancelled || c.check("").is_err(),
        _ => false,
    }
}

/// A core cancel handle (internal): `polybus.aio` passes one to each native call it awaits off
/// the event loop and fires it when the awaiting task is cancelled, so the native wait ends at
/// once instead of holding a thread until its own timeout.
#[pyclass(frozen, module = "polybus", name = "_Cancel")]
pub(crate) struct PyCancel {
    pub(crate) inner: Cancel,
}

#[pymethods]
impl PyCancel {
    #[new]
    fn new() -> Self {
        PyCancel {
            inner: Cancel::new(),
        }
    }

    /// Fires the handle: the calls it guards stop waiting. Idempotent; any thread; never blocks.
    fn cancel(&self) {
        self.inner.cancel();
    }

    /// Whether `cancel()` was called.
    #[getter]
    fn cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }
}
