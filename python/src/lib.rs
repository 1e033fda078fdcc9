//! Python bindings of polybus: the native module `polybus._polybus`.
//!
//! The boundary follows the project's design: publishing is a plain call that only releases
//! the interpreter when the backend makes it wait, and a batch publish is one call of the
//! core's pipelined publish; every subscription of a bus feeds one delivery queue, pulled in
//! batches by a small fixed pool of Python-owned dispatcher threads, which release the
//! interpreter while they wait and hold it while they run handlers. Nothing here ever attaches
//! to the interpreter from a tokio worker. Open buses are closed at interpreter exit. A call
//! that waits can give up: its `timeout=`, or a cancelled `polybus.aio` task, fires a core
//! `Cancel` (see `cancel.rs`), and the core decides what the call leaves behind.
//! Retries, ordering and dead-lettering are the core's; this crate only converts types, runs
//! handlers and maps errors.

use std::{future::Future, time::Duration};

use pyo3::{prelude::*, sync::PyOnceLock, types::PyModule};

mod bus;
mod cancel;
mod config;
mod error;
mod event;
mod message;
mod state;
mod subscription;

/// Events are allocated by publishing threads and freed by dispatching ones; mimalloc handles
/// that pattern far better than the system allocator (malloc and free were a quarter of the
/// samples of a publish benchmark on glibc). It serves only this module's own allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The longest a blocking call on the main thread waits before it looks for signals, so Ctrl-C
/// interrupts it.
pub(crate) const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Whether the calling thread is the interpreter's main thread, the only one Python runs signal
/// handlers on (so the only one a wait must wake up for).
pub(crate) fn on_main_thread(py: Python<'_>) -> bool {
    static MAIN_THREAD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static GET_IDENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let main = MAIN_THREAD
        .import(py, "threading", "main_thread")
        .and_then(|f| f.call0())
        .and_then(|t| t.getattr("ident"));
    let here = GET_IDENT
        .import(py, "threading", "get_ident")
        .and_then(|f| f.call0());
    match (main, here) {
        (Ok(main), Ok(here)) => main.eq(here).unwrap_or(true),
        _ => true,
    }
}

/// Runs `fut` to completion on the process-wide runtime, detached from the interpreter.
///
/// On the main thread the wait is cut into slices of [`SIGNAL_CHECK_INTERVAL`]; between slices
/// the thread attaches and checks for signals, so a `KeyboardInterrupt` ends the wait (the
/// future is dropped). Other threads never receive signals in Python: they wait in one piece,
/// woken only by the future (no polling).
pub(crate) fn block_on<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let runtime = polybus::runtime::global();
    if !on_main_thread(py) {
        return Ok(py.detach(|| runtime.block_on(fut)));
    }
    let mut fut = std::pin::pin!(fut);
    loop {
        let slice = py.detach(|| {
            runtime.block_on(async {
                tokio::time::timeout(SIGNAL_CHECK_INTERVAL, fut.as_mut())
                    .await
                    .ok()
            })
        });
        if let Some(out) = slice {
            return Ok(out);
        }
        py.check_signals()?;
    }
}

/// How Python spells a boolean, for `__repr__`.
pub(crate) fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// The Python helper module `polybus._dispatch` (coroutine handlers, logging, the current
/// subscription).
pub(crate) fn dispatch_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("polybus._dispatch")?.unbind())
        })
        .map(|m| m.bind(py))
}

/// The native module.
#[pymodule]
mod _polybus {
    #[pymodule_export]
    use crate::bus::{connect, connect_cancellable, Bus, PendingPublish};
    #[pymodule_export]
    use crate::cancel::PyCancel;
    #[pymodule_export]
    use crate::event::Event;
    #[pymodule_export]
    use crate::state::StateWatch;
    #[pymodule_export]
    use crate::subscription::{Batch, Dispatcher, Subscription};
    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::error::register(m)?;
        m.add("__version__", polybus::VERSION)
    }
}
