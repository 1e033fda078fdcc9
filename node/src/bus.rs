//! The bus: publish, subscribe, close, stats.

use std::collections::HashMap;

use napi::{
    bindgen_prelude::{Either, Object},
    Env,
};
use napi_derive::napi;
use polybus::{Message, SubscribeOptions};

use crate::{
    error,
    subscription::{BatchCallback, Subscription},
};

/// A connection to an event bus, made by `connect`.
#[napi]
pub struct Bus {
    inner: polybus::Bus,
}

/// A bus's counters, cumulative since it was opened.
#[napi(object)]
pub struct Stats {
    /// Events accepted by `publish`.
    pub published: i64,
    /// Handler invocations (every attempt counts).
    pub delivered: i64,
    /// Events acknowledged after their handler succeeded.
    pub acked: i64,
    /// Handler failures (exceptions, rejections).
    pub failed: i64,
    /// Retries scheduled after a failure.
    pub retried: i64,
    /// Events published to a dead-letter topic after `maxAttempts`.
    pub dead_lettered: i64,
    /// Events given up on.
    pub dropped: i64,
}

impl Bus {
    pub(crate) fn new(inner: polybus::Bus) -> Self {
        Bus { inner }
    }
}

#[napi]
impl Bus {
    /// Starts publishing one event. Returns `null` when the backend accepted it at once, or a
    /// promise settled once it is accepted (a subscriber's queue is full, a broker has not
    /// acknowledged yet).
    ///
    /// `payload` is bytes or text; `json` marks text that is JSON (adds the
    /// `content-type: application/json` header, as the core's `Message::json` does).
    ///
    /// Throws `POLYBUS_ERR_CLOSED`, `POLYBUS_ERR_INVALID_TOPIC`, `POLYBUS_ERR_TOO_LARGE`,
    /// `POLYBUS_ERR_INVALID_ARGUMENT` (a bad header or key).
    #[allow(clippy::too_many_arguments)]
    #[napi(catch_unwind, ts_return_type = "Promise<void> | null")]
    pub fn publish<'env>(
        &self,
        env: &'env Env,
        topic: String,
        payload: Either<&[u8], String>,
        json: bool,
        key: Option<String>,
        headers: Option<HashMap<String, String>>,
        id: Option<String>,
        event_type: Option<String>,
    ) -> error::Result<Option<Object<'env>>> {
        let payload = match payload {
            Either::A(bytes) => bytes.to_vec(),
            Either::B(text) => text.into_bytes(),
        };
        let mut message = Message::new(topic, payload);
        if json {
            message = message.header("content-type", "application/json");
        }
        for (name, value) in headers.into_iter().flatten() {
            message = message.header(name, value);
        }
        if let Some(key) = key {
            message = message.key(key);
        }
        if let Some(id) = id {
            message = message.id(id);
        }
        if let Some(t) = event_type {
            message = message.event_type(t);
        }
        match self
            .inner
            .publish_nowait(message)
            .map_err(error::from_core)?
        {
            None => Ok(None),
            Some(pending) => crate::promise(env, pending.wait()).map(Some),
        }
    }

    /// Subscribes to `pattern` with `options` in the core's JSON form
    /// (`{"group": ..., "concurrency": ..., "max_attempts": ...}`).
    ///
    /// `onBatch` is called on the JavaScript thread with each batch of events; it must handle
    /// them in order and report with `batch.complete`. Resolves with the subscription; rejects
    /// with `POLYBUS_ERR_CLOSED`, `POLYBUS_ERR_INVALID_PATTERN`, `POLYBUS_ERR_INVALID_ARGUMENT`,
    /// `POLYBUS_ERR_INVALID_TOPIC` (a bad dead-letter topic) or `POLYBUS_ERR_UNSUPPORTED`.
    #[napi(catch_unwind, ts_return_type = "Promise<Subscription>")]
    pub fn subscribe<'env>(
        &self,
        env: &'env Env,
        pattern: String,
        options: String,
        #[napi(ts_arg_type = "(batch: EventBatch) => void")] on_batch: BatchCallback,
    ) -> error::Result<Object<'env>> {
        let options = SubscribeOptions::from_json(&options).map_err(error::from_core)?;
        let bus = self.inner.clone();
        crate::promise(env, async move {
            let subscription = bus.subscribe_batches(&pattern, options).await?;
            Ok(Subscription::start(subscription, on_batch))
        })
    }

    /// Closes the bus: new publishes and subscribes fail with `POLYBUS_ERR_CLOSED`, queued and
    /// in-flight events are handled (keep handling batches meanwhile), then the connection is
    /// released. Idempotent. Rejects with `POLYBUS_ERR_TIMEOUT` when handlers did not finish
    /// within `close_timeout_ms`.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> error::Result<Object<'env>> {
        let bus = self.inner.clone();
        crate::promise(env, async move { bus.close().await })
    }

    /// Whether `close` has been called.
    #[napi(getter, catch_unwind)]
    pub fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The bus's counters.
    #[napi(catch_unwind)]
    pub fn stats(&self) -> Stats {
        let s = self.inner.stats();
        // Counters stay far below 2^53, the largest integer a JavaScript number holds exactly.
        Stats {
            published: s.published as i64,
            delivered: s.delivered as i64,
            acked: s.acked as i64,
            failed: s.failed as i64,
            retried: s.retried as i64,
            dead_lettered: s.dead_lettered as i64,
            dropped: s.dropped as i64,
        }
    }
}
