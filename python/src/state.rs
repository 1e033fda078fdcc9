//! The connection state and its change notification.
//!
//! `Bus.on_connection_state` starts a Python-owned daemon thread (`polybus._dispatch`) that
//! loops on [`StateWatch::next`]: it waits for the core's watch channel detached from the
//! interpreter (woken by a change, no polling) and runs the callback attached. No tokio thread
//! ever touches the interpreter.

use std::sync::Mutex;

use polybus::ConnectionState;
use pyo3::prelude::*;
use tokio::sync::watch;

use crate::block_on;

/// The receiving end of one `on_connection_state` registration (internal).
#[pyclass(frozen, module = "polybus", name = "_StateWatch")]
pub(crate) struct StateWatch {
    inner: Mutex<Watch>,
}

struct Watch {
    /// None once `closed` has been reported (or the bus is gone).
    rx: Option<watch::Receiver<ConnectionState>>,
    /// The state last reported (or seen at registration); None reports the current one next.
    last: Option<ConnectionState>,
}

impl StateWatch {
    /// Watches `rx` from its current state on. A bus already closed reports `closed` once.
    pub(crate) fn new(mut rx: watch::Receiver<ConnectionState>) -> Self {
        let now = *rx.borrow_and_update();
        let last = if now == ConnectionState::Closed {
            rx.mark_changed();
            None
        } else {
            Some(now)
        };
        StateWatch {
            inner: Mutex::new(Watch { rx: Some(rx), last }),
        }
    }
}

#[pymethods]
impl StateWatch {
    /// Blocks, with the interpreter released, until the state changes, and returns the new
    /// state; None once `closed` has been returned. Ctrl-C interrupts it (on the main thread).
    fn next(&self, py: Python<'_>) -> PyResult<Option<&'static str>> {
        // The receiver is taken out while waiting: no lock is held while detached.
        let taken = {
            let mut watch = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            watch.rx.take().map(|rx| (rx, watch.last))
        };
        let Some((mut rx, mut last)) = taken else {
            return Ok(None);
        };
        loop {
            let next = block_on(py, async {
                rx.changed().await.ok()?;
                Some(*rx.borrow_and_update())
            });
            let next = match next {
                Ok(next) => next,
                Err(interrupted) => {
                    self.put_back(Some(rx), last);
                    return Err(interrupted);
                }
            };
            // A closed channel means the bus is gone: its last state was final.
            let state = next.unwrap_or(ConnectionState::Closed);
            if last == Some(state) {
                // Changed and changed back before we looked (never `closed`, which is final).
                continue;
            }
            let done = state == ConnectionState::Closed;
            last = Some(state);
            self.put_back((!done).then_some(rx), last);
            return Ok(Some(state.as_str()));
        }
    }
}

impl StateWatch {
    fn put_back(
        &self,
        rx: Option<watch::Receiver<ConnectionState>>,
        last: Option<ConnectionState>,
    ) {
        let mut watch = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        watch.rx = rx;
        watch.last = last;
    }
}
