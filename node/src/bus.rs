//! The bus: publish, subscribe, close, stats.

use std::{
    collections::HashMap,
    future::Future,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use napi::{
    bindgen_prelude::{Array, Either, FromNapiValue, Object, Uint8ArraySlice},
    threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode},
    Env, Status,
};
use napi_derive::napi;
use polybus::{ConnectionState, ErrorKind, Message, SubscribeOptions};

use crate::{
    cancel::Cancel,
    error,
    promise::{self, Outcome},
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

/// The options of an event of `publishBatch`, as `index.js` passes them.
#[napi(object)]
pub struct PublishMeta {
    /// The ordering key.
    pub key: Option<String>,
    /// Header names to values.
    pub headers: Option<HashMap<String, String>>,
    /// The event id (default: a new UUIDv7).
    pub id: Option<String>,
    /// The event type (default: the topic).
    #[napi(js_name = "type")]
    pub event_type: Option<String>,
    /// The event time in milliseconds since the Unix epoch (default: now); a fraction keeps
    /// sub-millisecond precision.
    pub time: Option<f64>,
}

/// The JavaScript function told of connection state changes: weak (it never keeps the process
/// alive), called with the state alone (no error argument).
pub type StateCallback = ThreadsafeFunction<String, (), String, Status, false, true>;

/// A payload as `index.js` passes it: bytes or text.
type Payload<'a> = Either<&'a [u8], String>;

/// The largest time a JavaScript `Date` holds, in milliseconds since the Unix epoch.
const MAX_DATE_MS: f64 = 8.64e15;

/// Builds the core message for `topic` and `payload`; `json` marks a payload that JavaScript
/// encoded from a value (`JSON.stringify`): the core's JSON rule applies
/// (`Message::json_encoded`).
fn message(
    topic: String,
    payload: Payload<'_>,
    json: bool,
    meta: Option<PublishMeta>,
) -> error::Result<Message> {
    let payload = match payload {
        Either::A(bytes) => bytes.to_vec(),
        Either::B(text) => text.into_bytes(),
    };
    let mut message = Message::new(topic, payload);
    if let Some(meta) = meta {
        for (name, value) in meta.headers.into_iter().flatten() {
            message = message.header(name, value);
        }
        if let Some(key) = meta.key {
            message = message.key(key);
        }
        if let Some(id) = meta.id {
            message = message.id(id);
        }
        if let Some(t) = meta.event_type {
            message = message.event_type(t);
        }
        if let Some(ms) = meta.time {
            message = message.time(time_from_ms(ms)?);
        }
    }
    if json {
        message = message.json_encoded();
    }
    Ok(message)
}

/// Milliseconds since the Unix epoch as a time. Whole milliseconds convert exactly (the
/// fraction, if any, is kept to the nanosecond), so an event's time reads back as the same
/// `Date`.
fn time_from_ms(ms: f64) -> error::Result<SystemTime> {
    if ms < 0.0 {
        return Err(error::new(
            ErrorKind::InvalidArgument,
            format!("time {ms} ms is before 1970"),
        ));
    }
    if ms.is_nan() || ms > MAX_DATE_MS {
        return Err(error::new(
            ErrorKind::InvalidArgument,
            format!("time {ms} ms is not a valid date"),
        ));
    }
    let whole = ms.trunc();
    let nanos = ((ms - whole) * 1e6).round() as u64;
    Ok(UNIX_EPOCH + Duration::from_millis(whole as u64) + Duration::from_nanos(nanos))
}

/// Element `index` of `array`, which the caller knows exists.
fn element<T: FromNapiValue>(array: &Array<'_>, index: u32) -> error::Result<T> {
    array
        .get(index)
        .map_err(error::from_napi)?
        .ok_or_else(|| error::new(ErrorKind::InvalidArgument, "the arrays differ in length"))
}

impl Bus {
    pub(crate) fn new(inner: polybus::Bus) -> Self {
        Bus { inner }
    }

    /// Hands `message` to the core: `None` when the backend accepted it at once, else a
    /// promise settled once it is accepted. The wait is watched on the JavaScript thread (see
    /// [`promise::watch`]): nothing is spawned per pending publish.
    fn start<'env>(&self, env: &'env Env, message: Message) -> error::Result<Option<Object<'env>>> {
        match self
            .inner
            .publish_nowait(message)
            .map_err(error::from_core)?
        {
            None => Ok(None),
            Some(pending) => promise::watch(env, pending.wait()),
        }
    }

    /// [`start`](Bus::start) through the core's `publish_until`, which gives up the wait when
    /// `cancel` fires. Its first step runs here and now: an event the backend accepts at once
    /// settles without a promise, as without a cancel.
    fn start_until<'env>(
        &self,
        env: &'env Env,
        message: Message,
        cancel: &Cancel,
    ) -> error::Result<Option<Object<'env>>> {
        let bus = self.inner.clone();
        let cancel = cancel.inner.clone();
        promise::watch(
            env,
            async move { bus.publish_until(message, &cancel).await },
        )
    }
}

#[napi]
impl Bus {
    /// Starts publishing one event of bytes or text without options: the common case, kept to
    /// the fewest arguments. Returns `null` when the backend accepted it at once, or a promise
    /// settled once it is accepted (a subscriber's queue is full, a broker has not acknowledged
    /// yet). Publishes are accepted in call order, whether or not the promises are awaited.
    ///
    /// Throws `POLYBUS_ERR_CLOSED`, `POLYBUS_ERR_INVALID_TOPIC`, `POLYBUS_ERR_TOO_LARGE`.
    #[napi(catch_unwind, ts_return_type = "Promise<void> | null")]
    pub fn publish<'env>(
        &self,
        env: &'env Env,
        topic: String,
        #[napi(ts_arg_type = "Uint8Array | string")] payload: Payload<'_>,
    ) -> error::Result<Option<Object<'env>>> {
        self.start(env, message(topic, payload, false, None)?)
    }

    /// `publish` with a JSON flag and options, each passed as its own argument (cheaper to
    /// convert than an object): `json` marks a payload that is JSON text, `time` is in
    /// milliseconds since the Unix epoch (a fraction keeps sub-millisecond precision), and
    /// `cancel`, if given, stops the wait when it fires (the core's `publish_until`: the event
    /// may still be published).
    ///
    /// Throws as `publish` does, and `POLYBUS_ERR_INVALID_ARGUMENT` for a bad header, key or
    /// time; rejects with `POLYBUS_ERR_CANCELLED` when `cancel` fires first.
    #[allow(clippy::too_many_arguments)]
    #[napi(catch_unwind, ts_return_type = "Promise<void> | null")]
    pub fn publish_with<'env>(
        &self,
        env: &'env Env,
        topic: String,
        #[napi(ts_arg_type = "Uint8Array | string")] payload: Payload<'_>,
        json: bool,
        key: Option<String>,
        headers: Option<HashMap<String, String>>,
        id: Option<String>,
        event_type: Option<String>,
        time: Option<f64>,
        cancel: Option<&Cancel>,
    ) -> error::Result<Option<Object<'env>>> {
        let meta = PublishMeta {
            key,
            headers,
            id,
            event_type,
            time,
        };
        let message = message(topic, payload, json, Some(meta))?;
        match cancel {
            None => self.start(env, message),
            Some(cancel) => self.start_until(env, message, cancel),
        }
    }

    /// Publishes the events of the parallel arrays `topics` (`undefined` repeats the topic of
    /// the event before, converted once), `payloads` (bytes or text), `json` (1 for a payload
    /// JavaScript encoded from a value; `null` for none) and `metas` (a `PublishMeta` or
    /// `undefined` per event, the array ending at the last event with options; `null` for
    /// none) in order, through the core's pipelined `publish_batch` (`publish_batch_until`
    /// with `cancel`, which stops it when it fires). Resolves with how many were published
    /// (all of them).
    ///
    /// Rejects as `publish` does, the message naming the failed event's index and the error's
    /// `published` saying how many events, from the first, were published before it. An event
    /// that cannot be converted fails the batch the same way, after the events before it.
    /// Rejects with `POLYBUS_ERR_CANCELLED` when `cancel` fires first.
    #[napi(catch_unwind, ts_return_type = "Promise<number>")]
    pub fn publish_batch<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "Array<string | undefined>")] topics: Array<'env>,
        #[napi(ts_arg_type = "Array<Uint8Array | string>")] payloads: Array<'env>,
        json: Option<Uint8ArraySlice<'env>>,
        #[napi(ts_arg_type = "Array<PublishMeta | undefined> | null")] metas: Option<Array<'env>>,
        cancel: Option<&Cancel>,
    ) -> error::Result<Object<'env>> {
        let n = topics.len();
        if payloads.len() != n {
            return Err(error::new(
                ErrorKind::InvalidArgument,
                "the arrays differ in length",
            ));
        }
        let mut topic = String::new();
        let mut read = |i: u32| -> error::Result<Message> {
            if let Some(t) = element::<Option<String>>(&topics, i)? {
                topic = t;
            }
            let json = json
                .as_ref()
                .is_some_and(|flags| flags.get(i as usize) == Some(&1));
            let meta = match &metas {
                Some(metas) if i < metas.len() => metas
                    .get::<Option<PublishMeta>>(i)
                    .map_err(error::from_napi)?
                    .flatten(),
                _ => None,
            };
            message(topic.clone(), element(&payloads, i)?, json, meta)
        };
        // Converted here, on the JavaScript thread; published on the runtime.
        let mut messages = Vec::with_capacity(n as usize);
        let mut failed = None;
        for i in 0..n {
            match read(i) {
                Ok(m) => messages.push(m),
                Err(e) => {
                    failed = Some((i as usize, e));
                    break;
                }
            }
        }
        let bus = self.inner.clone();
        let cancel = cancel.map(|c| c.inner.clone());
        promise::settle(env, async move {
            let published = match &cancel {
                None => bus.publish_batch(messages).await,
                Some(cancel) => bus.publish_batch_until(messages, cancel).await,
            };
            match published {
                Err(e) => Outcome::Failed(e, None),
                Ok(count) => match failed {
                    None => Outcome::of(Ok(count as f64)),
                    Some((i, e)) => {
                        let e = error::to_core(&e);
                        let detail = format!("event {i} of the batch: {}", e.message());
                        Outcome::Failed(polybus::Error::new(e.kind(), detail), Some(i))
                    }
                },
            }
        })
    }

    /// Closes the bus without waiting, from inside one of its own handlers (waiting would
    /// wait for the handler itself): publishes and subscribes fail with `POLYBUS_ERR_CLOSED`
    /// and every subscription stops receiving before it returns; queued and in-flight events
    /// are handled and the connection released in the background.
    #[napi(catch_unwind)]
    pub fn close_now(&self) {
        let bus = self.inner.clone();
        let runtime = polybus::runtime::global();
        let _context = runtime.enter();
        let mut close = Box::pin(async move {
            let _ = bus.close().await;
        });
        // The first poll marks the bus closed and stops its subscriptions, here and now; the
        // drain that follows runs on the runtime.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if close.as_mut().poll(&mut cx).is_pending() {
            runtime.spawn(close);
        }
    }

    /// Subscribes to `pattern` with `options` in the core's JSON form
    /// (`{"group": ..., "concurrency": ..., "max_attempts": ...}`).
    ///
    /// `onBatch` is called on the JavaScript thread with each batch of events; it must handle
    /// them in order and report with `batch.complete`. Returns the subscription when the
    /// backend made it at once (`memory://`), else a promise of it: the core's subscribe starts
    /// here and now, and what it waits for runs on the runtime. Throws (or rejects) with
    /// `POLYBUS_ERR_CLOSED`, `POLYBUS_ERR_INVALID_PATTERN`, `POLYBUS_ERR_INVALID_ARGUMENT`,
    /// `POLYBUS_ERR_INVALID_TOPIC` (a bad dead-letter topic) or `POLYBUS_ERR_UNSUPPORTED`.
    #[napi(catch_unwind, ts_return_type = "Subscription | Promise<Subscription>")]
    pub fn subscribe<'env>(
        &self,
        env: &'env Env,
        pattern: String,
        options: String,
        #[napi(ts_arg_type = "(batch: EventBatch) => void")] on_batch: BatchCallback,
    ) -> error::Result<Either<Subscription, Object<'env>>> {
        let options = SubscribeOptions::from_json(&options).map_err(error::from_core)?;
        let bus = self.inner.clone();
        promise::now_or_promise(env, async move {
            let subscription = bus.subscribe_batches(&pattern, options).await?;
            Ok(Subscription::start(subscription, on_batch))
        })
    }

    /// Closes the bus: new publishes and subscribes fail with `POLYBUS_ERR_CLOSED`, queued and
    /// in-flight events are handled (keep handling batches meanwhile), then the connection is
    /// released. Idempotent. Rejects with `POLYBUS_ERR_TIMEOUT` when handlers did not finish
    /// within `close_timeout_ms`. With `cancel` (the core's `close_until`) it rejects with
    /// `POLYBUS_ERR_CANCELLED` when `cancel` fires first: the bus is closed either way, and the
    /// drain goes on in the background.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn close<'env>(
        &self,
        env: &'env Env,
        cancel: Option<&Cancel>,
    ) -> error::Result<Object<'env>> {
        let bus = self.inner.clone();
        match cancel {
            None => promise::unit_promise(env, async move { bus.close().await }),
            Some(cancel) => {
                let cancel = cancel.inner.clone();
                promise::unit_promise(env, async move { bus.close_until(&cancel).await })
            }
        }
    }

    /// The state of the connection to the broker: `"connected"`, `"disconnected"` (the client
    /// is reconnecting) or `"closed"`.
    #[napi(
        getter,
        catch_unwind,
        ts_return_type = "'connected' | 'disconnected' | 'closed'"
    )]
    pub fn connection_state(&self) -> &'static str {
        self.inner.connection_state().as_str()
    }

    /// Calls `callback` on the JavaScript thread with each new connection state, the last
    /// being `"closed"`. The callback does not keep the process alive.
    ///
    /// Throws `POLYBUS_ERR_CLOSED` when the bus is closed.
    #[napi(catch_unwind)]
    pub fn on_connection_state_change(
        &self,
        #[napi(ts_arg_type = "(state: 'connected' | 'disconnected' | 'closed') => void")]
        callback: StateCallback,
    ) -> error::Result<()> {
        if self.inner.is_closed() {
            return Err(error::new(ErrorKind::Closed, "bus is closed"));
        }
        let mut rx = self.inner.watch_connection_state();
        let mut last = *rx.borrow_and_update();
        if last == ConnectionState::Closed {
            // Closed since the check above: report it once.
            callback.call("closed".to_owned(), ThreadsafeFunctionCallMode::NonBlocking);
            return Ok(());
        }
        polybus::runtime::global().spawn(async move {
            loop {
                // A closed channel means the bus is gone: its last state was final.
                let state = match rx.changed().await {
                    Ok(()) => *rx.borrow_and_update(),
                    Err(_) => ConnectionState::Closed,
                };
                if state == last {
                    continue; // changed and changed back before we looked
                }
                last = state;
                let status = callback.call(
                    state.as_str().to_owned(),
                    ThreadsafeFunctionCallMode::NonBlocking,
                );
                if state == ConnectionState::Closed || status != Status::Ok {
                    break;
                }
            }
        });
        Ok(())
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
