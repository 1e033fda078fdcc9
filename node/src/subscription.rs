//! Subscriptions: a task pulls the core's batches and hands each to JavaScript in one call.
//!
//! The call goes through a threadsafe function that is weak (it does not keep Node's event
//! loop alive, so a script exits when the user is done) and bounded. The core never has more
//! than `concurrency` batches of one subscription outstanding, because each lane waits for its
//! batch's outcomes before it hands out the next; that is the backpressure, and the queue bound
//! (the core's largest `concurrency`) is never reached.

use std::sync::Arc;

use napi::{
    bindgen_prelude::Object,
    threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode},
    Env, Status,
};
use napi_derive::napi;
use polybus::BatchSubscription;

use crate::{error, event::EventBatch};

/// The most batches queued towards JavaScript for one subscription: the core's largest
/// `concurrency`, since each lane has at most one batch out.
const MAX_QUEUED_BATCHES: usize = 4096;

/// The JavaScript function that receives a subscription's batches: weak, called with the batch
/// alone (no error argument), bounded.
pub type BatchCallback =
    ThreadsafeFunction<EventBatch, (), EventBatch, Status, false, true, MAX_QUEUED_BATCHES>;

/// A running subscription, made by `Bus.subscribe`.
#[napi]
pub struct Subscription {
    inner: Arc<BatchSubscription>,
}

impl Subscription {
    /// Starts the task that pulls `subscription`'s batches and calls `on_batch` with each,
    /// until the subscription is closed and drained.
    pub(crate) fn start(subscription: BatchSubscription, on_batch: BatchCallback) -> Self {
        let inner = Arc::new(subscription);
        let puller = inner.clone();
        polybus::runtime::global().spawn(async move {
            while let Some(batch) = puller.next_batch().await {
                // Fails only once Node is shutting down; the batch is then dropped, which the
                // core counts as failed deliveries.
                if on_batch.call(EventBatch::new(batch), ThreadsafeFunctionCallMode::Blocking)
                    != Status::Ok
                {
                    break;
                }
            }
        });
        Subscription { inner }
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

    /// Stops receiving without waiting; events already queued are still handled.
    #[napi(catch_unwind)]
    pub fn unsubscribe(&self) {
        self.inner.stop();
    }

    /// Stops receiving and resolves once queued and in-flight events are handled (keep
    /// handling batches meanwhile). Idempotent. Rejects with `POLYBUS_ERR_TIMEOUT` when they
    /// were not handled within the bus's `close_timeout_ms`.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> error::Result<Object<'env>> {
        let inner = self.inner.clone();
        crate::promise(env, async move { inner.close().await })
    }
}
