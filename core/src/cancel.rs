//! Giving up a wait: the one cancellation rule every front end maps its own onto (a Go
//! `context.Context`, a Node `AbortSignal`, a C cancel handle).

use std::{
    fmt,
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::{Error, ErrorKind, Result};

/// A way to stop waiting on a call: fired by [`cancel`](Cancel::cancel) from any thread, or by
/// its deadline. One `Cancel` may guard any number of calls (a request's whole lifetime, say);
/// cheap to clone, every clone is the same handle.
///
/// What a cancelled call leaves behind is the core's rule, the same in every language:
///
/// - connecting stops and nothing is left open;
/// - a publish stops being waited on, but an event already handed to the bus may still be
///   published (its order is fixed once started): the error says so;
/// - a batch publish starts no further events and reports how many were confirmed before it
///   gave up ([`Error::published`]);
/// - a close stops being waited on; the bus (or subscription) is closed at once and its drain
///   goes on in the background, bounded by `close_timeout_ms`, as without a cancel.
///
/// A fired cancel fails the call with [`ErrorKind::Cancelled`]; a passed deadline with
/// [`ErrorKind::Timeout`].
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    fired: AtomicBool,
    /// Fired by [`Cancel::expire`]: the caller's own deadline passed, which its clock (a Go
    /// context, a Node `AbortSignal.timeout`) measured rather than this handle's.
    expired: AtomicBool,
    notify: Notify,
    deadline: Option<Instant>,
}

impl fmt::Debug for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancel")
            .field("fired", &self.inner.fired.load(Ordering::Relaxed))
            .field("deadline", &self.inner.deadline)
            .finish()
    }
}

impl Cancel {
    /// A handle with no deadline: only [`cancel`](Cancel::cancel) fires it.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle that also fires at `deadline`.
    pub fn with_deadline(deadline: Instant) -> Self {
        Cancel {
            inner: Arc::new(Inner {
                deadline: Some(deadline),
                ..Inner::default()
            }),
        }
    }

    /// A handle that also fires `timeout` from now (a timeout too large to represent means
    /// no deadline).
    pub fn with_timeout(timeout: Duration) -> Self {
        match Instant::now().checked_add(timeout) {
            Some(d) => Self::with_deadline(d),
            None => Self::new(),
        }
    }

    /// Fires the handle: every call it guards stops waiting. Idempotent; any thread.
    pub fn cancel(&self) {
        if !self.inner.fired.swap(true, Ordering::AcqRel) {
            self.inner.notify.notify_waiters();
        }
    }

    /// Fires the handle as a passed deadline: every call it guards stops waiting and fails
    /// with [`ErrorKind::Timeout`], as when the handle's own deadline passes. For a front end
    /// whose caller keeps the deadline on its own clock (a Go `context.Context` whose deadline
    /// was exceeded, a Node `AbortSignal.timeout`). Idempotent; any thread; after
    /// [`cancel`](Cancel::cancel) it changes nothing (the first firing decides).
    pub fn expire(&self) {
        if !self.inner.fired.load(Ordering::Acquire) {
            self.inner.expired.store(true, Ordering::Release);
        }
        self.cancel();
    }

    /// Whether [`cancel`](Cancel::cancel) (or [`expire`](Cancel::expire)) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.fired.load(Ordering::Acquire)
    }

    /// The deadline, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// The error a call guarded by this handle fails with now, if it must stop: cancelled, or
    /// the deadline passed.
    ///
    /// # Errors
    /// [`ErrorKind::Cancelled`] or [`ErrorKind::Timeout`].
    pub fn check(&self, what: &str) -> Result<()> {
        self.check_noting(what, "")
    }

    fn check_noting(&self, what: &str, note: &str) -> Result<()> {
        if self.is_cancelled() {
            return Err(self.fired_error(what, note));
        }
        if self.deadline_passed() {
            return Err(deadline_passed(what, note));
        }
        Ok(())
    }

    /// Whether a call guarded by this handle must stop now (fired, or the deadline passed).
    pub(crate) fn is_over(&self) -> bool {
        self.is_cancelled() || self.deadline_passed()
    }

    /// The error of a fired handle: a timeout when [`expire`](Cancel::expire) fired it.
    fn fired_error(&self, what: &str, note: &str) -> Error {
        if self.inner.expired.load(Ordering::Acquire) {
            deadline_passed(what, note)
        } else {
            cancelled(what, note)
        }
    }

    fn deadline_passed(&self) -> bool {
        self.inner.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Resolves, with the error to report, once the handle fires or its deadline passes.
    pub async fn fired(&self, what: &str) -> Error {
        self.fired_noting(what, "").await
    }

    async fn fired_noting(&self, what: &str, note: &str) -> Error {
        let notified = self.inner.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a cancel in between is not missed.
        notified.as_mut().enable();
        if let Err(e) = self.check_noting(what, note) {
            return e;
        }
        match self.inner.deadline {
            Some(d) => {
                tokio::select! {
                    _ = notified => self.fired_error(what, note),
                    _ = tokio::time::sleep_until(d.into()) => deadline_passed(what, note),
                }
            }
            None => {
                notified.await;
                self.fired_error(what, note)
            }
        }
    }

    /// Runs `fut` until it finishes or the handle fires, whichever comes first; `fut` is
    /// dropped when the handle fires. `what` names the call in the error ("connect").
    ///
    /// # Errors
    /// `fut`'s error, [`ErrorKind::Cancelled`] or [`ErrorKind::Timeout`].
    pub async fn guard<T>(&self, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        self.guard_noting(what, "", fut).await
    }

    /// [`guard`](Cancel::guard), with `note` (what the caller should know was left behind)
    /// added to the error.
    pub(crate) async fn guard_noting<T>(
        &self,
        what: &str,
        note: &str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.check_noting(what, note)?;
        tokio::select! {
            biased;
            r = fut => r,
            e = self.fired_noting(what, note) => Err(e),
        }
    }

    /// [`guard_noting`](Cancel::guard_noting) for a spawned task (a close whose drain goes on
    /// when the wait is given up): its result, or `gone()` when the task did not finish (the
    /// runtime shut down under it).
    pub(crate) async fn guard_task<T>(
        &self,
        what: &str,
        note: &str,
        task: tokio::task::JoinHandle<Result<T>>,
        gone: impl FnOnce() -> Error,
    ) -> Result<T> {
        self.guard_noting(what, note, async {
            task.await.unwrap_or_else(|_| Err(gone()))
        })
        .await
    }
}

fn cancelled(what: &str, note: &str) -> Error {
    Error::new(ErrorKind::Cancelled, format!("{what}{note}"))
}

fn deadline_passed(what: &str, note: &str) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("{what}: the caller's deadline passed{note}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fired_handle_stops_a_pending_wait() {
        let c = Cancel::new();
        let c2 = c.clone();
        let t =
            tokio::spawn(
                async move { c2.guard("wait", std::future::pending::<Result<()>>()).await },
            );
        tokio::task::yield_now().await;
        c.cancel();
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
        assert_eq!(e.to_string(), "cancelled: wait");
    }

    #[tokio::test]
    async fn a_deadline_stops_a_pending_wait_as_a_timeout() {
        let c = Cancel::with_timeout(Duration::from_millis(20));
        let e = c
            .guard("wait", std::future::pending::<Result<()>>())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.message().contains("deadline"), "{e}");
    }

    #[tokio::test]
    async fn an_expired_handle_stops_a_pending_wait_as_a_timeout() {
        let c = Cancel::new();
        let c2 = c.clone();
        let t =
            tokio::spawn(
                async move { c2.guard("wait", std::future::pending::<Result<()>>()).await },
            );
        tokio::task::yield_now().await;
        c.expire();
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(
            e.to_string(),
            "timed out: wait: the caller's deadline passed"
        );
        // The first firing decides: a cancel after it leaves the timeout.
        c.cancel();
        assert_eq!(c.check("x").unwrap_err().kind(), ErrorKind::Timeout);
        let d = Cancel::new();
        d.cancel();
        d.expire();
        assert_eq!(d.check("x").unwrap_err().kind(), ErrorKind::Cancelled);
    }

    #[tokio::test]
    async fn a_finished_future_wins_and_a_fired_handle_fails_at_once() {
        let c = Cancel::new();
        assert_eq!(c.guard("x", async { Ok(7) }).await.unwrap(), 7);
        c.cancel();
        c.cancel();
        assert!(c.is_cancelled());
        let e = c.guard("x", async { Ok(7) }).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
    }

    #[test]
    fn a_huge_timeout_means_no_deadline() {
        assert!(Cancel::with_timeout(Duration::MAX).deadline().is_none());
    }
}
