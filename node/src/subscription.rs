//! Subscriptions: a task pulls the core's batches and hands each to JavaScript in one call.
//!
//! The call goes through a threadsafe function that is bounded and, like a socket in nats.js
//! or ioredis, referenced: a live subscription keeps Node's event loop alive, so a
//! consumer-only service does not exit with accepted events unhandled. `unref()` opts out
//! (`ref()` opts back in). The task ends, and the function is released (so the process may
//! exit), once the subscription is stopped and drained: by its own `close`, or its bus's.
//!
//! The core never has more than `concurrency` batches of one subscription outstanding,
//! because each lane waits for its batch's completion before it hands out the next; that is
//! the backpressure, and the queue bound (the core's largest `concurrency`) is never reached.

use std::sync::{Arc, Mutex};

use napi::{
    bindgen_prelude::Object,
    threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode},
    Env, Status,
};
use napi_derive::napi;
use polybus::BatchSubscription;

use crate::{cancel::Cancel, error, event::EventBatch, promise};

/// The most batches queued towards JavaScript for one subscription: the core's largest
/// `concurrency`, since each lane has at most one batch out.
const MAX_QUEUED_BATCHES: usize = 4096;

/// The JavaScript function that receives a subscription's batches: referenced (it keeps the
/// process alive until released or unref'd), called with the batch alone (no error
/// argument), bounded.
pub type BatchCallback =
    ThreadsafeFunction<EventBatch, (), EventBatch, Status, false, false, MAX_QUEUED_BATCHES>;

/// The callback, shared by the pulling task (which calls it and releases it at the end) and
/// the subscription object (which refs and unrefs it); `None` once released.
type SharedCallback = Arc<Mutex<Option<BatchCallback>>>;

/// A running subscription, made by `Bus.subscribe`.
#[napi]
pub struct Subscription {
    inner: Arc<BatchSubscription>,
    callback: SharedCallback,
}

impl Subscription {
    /// Starts the task that pulls `subscription`'s batches and calls `on_batch` with each,
    /// until the subscription is closed and drained; then `on_batch` is released.
    pub(crate) fn start(subscription: BatchSubscription, on_batch: BatchCallback) -> Self {
        let inner = Arc::new(subscription);
        let callback: SharedCallback = Arc::new(Mutex::new(Some(on_batch)));
        let puller = inner.clone();
        let shared = callback.clone();
        polybus::runtime::global().spawn(async move {
            while let Some(batch) = puller.next_batch().await {
                let guard = shared.lock().unwrap_or_else(|e| e.into_inner());
                let Some(on_batch) = guard.as_ref() else {
                    break;
                };
                // Fails only once Node is shutting down; the batch is then dropped, which the
                // core counts as a failed delivery. Never blocks: the queue bound is never
                // reached (see the module's documentation).
                if on_batch.call(EventBatch::new(batch), ThreadsafeFunctionCallMode::Blocking)
                    != Status::Ok
                {
                    break;
                }
            }
            // Released here: the process no longer waits for this subscription.
            shared.lock().unwrap_or_else(|e| e.into_inner()).take();
        });
        Subscription { inner, callback }
    }
}

#[napi]
impl Subscription {
    /// The pattern subscribed to.
    #[napi(getter, catch_unwind)]
    pub fn pattern(&self) -> String {
        self.inner.pattern().to_owned()
    }

    /// Whether the subscription has been closed.
    #[napi(getter, catch_unwind)]
    pub fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Stops receiving without waiting; queued and in-flight events are still handled. What
    /// `index.js` calls when `close` comes from inside one of the subscription's own handlers
    /// (waiting would wait for itself). Idempotent.
    #[napi(catch_unwind)]
    pub fn stop(&self) {
        self.inner.stop();
    }

    /// Stops receiving and resolves once queued and in-flight events are handled (keep
    /// handling batches meanwhile). Idempotent. Rejects with `POLYBUS_ERR_TIMEOUT` when they
    /// were not handled within the bus's `close_timeout_ms`. With `cancel` (the core's
    /// `close_until`) it rejects with `POLYBUS_ERR_CANCELLED` when `cancel` fires first: the
    /// subscription is stopped either way, and the drain goes on in the background.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn close<'env>(
        &self,
        env: &'env Env,
        cancel: Option<&Cancel>,
    ) -> error::Result<Object<'env>> {
        let inner = self.inner.clone();
        match cancel {
            None => promise::unit_promise(env, async move { inner.close().await }),
            Some(cancel) => {
                let cancel = cancel.inner.clone();
                promise::unit_promise(env, async move { inner.close_until(&cancel).await })
            }
        }
    }

    /// Makes the subscription keep the process alive again (the default). No effect once it
    /// has ended.
    #[napi(js_name = "ref", catch_unwind)]
    #[allow(deprecated)] // napi's replacement (cloning) cannot turn a released reference back on
    pub fn refer(&self, env: Env) -> error::Result<()> {
        if let Some(f) = self
            .callback
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            f.refer(&env).map_err(error::from_napi)?;
        }
        Ok(())
    }

    /// Lets the process exit while the subscription is live (its events are then handled
    /// only while something else keeps the process running).
    #[napi(catch_unwind)]
    #[allow(deprecated)]
    pub fn unref(&self, env: Env) -> error::Result<()> {
        if let Some(f) = self
            .callback
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            f.unref(&env).map_err(error::from_napi)?;
        }
        Ok(())
    }
}
