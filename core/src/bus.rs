//! The bus: connect, publish, subscribe, close.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use futures::{stream::FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    backend::{self, Backend, Publishing},
    cancel::Cancel,
    config::Config,
    connection::ConnectionState,
    dispatch::{self, Counters, Executor, Handler, Stats, SubControl},
    error::{Error, ErrorKind, Result},
    message::Message,
    subscription::{BatchSubscription, DeliveryQueue, SubscribeOptions, Subscription},
    topic::Pattern,
};

/// A connection to an event bus. Cheap to clone; every clone is the same bus.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> polybus::Result<()> {
/// use polybus::{Bus, Event, Message, SubscribeOptions};
///
/// let bus = Bus::connect("memory://").await?;
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let _sub = bus
///     .subscribe("orders.*", SubscribeOptions::new(), move |e: Event| {
///         let tx = tx.clone();
///         async move { tx.send(e.payload().clone()).map_err(|_| "receiver gone") }
///     })
///     .await?;
/// bus.publish(Message::new("orders.created", "hello")).await?;
/// assert_eq!(rx.recv().await.unwrap(), "hello");
/// bus.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("url", &self.inner.shared.config.url)
            .finish()
    }
}

struct BusInner {
    shared: Arc<BusShared>,
    subscriptions: Mutex<Vec<Weak<SubControl>>>,
}

/// What a bus's subscriptions share with it.
pub(crate) struct BusShared {
    pub(crate) config: Config,
    pub(crate) backend: Box<dyn Backend>,
    pub(crate) counters: Counters,
    pub(crate) runtime: tokio::runtime::Handle,
    closed: AtomicBool,
    /// Publishes waiting for the backend, finished by [`slow_lane`].
    slow: mpsc::UnboundedSender<Waiting>,
    /// Publishes in the slow lane whose place in the order is not fixed yet: while there are
    /// any, later publishes queue behind them.
    slow_pending: AtomicUsize,
    state: watch::Sender<ConnectionState>,
}

/// A publish the backend has not accepted yet (a subscriber's queue is full, a broker has not
/// acknowledged). Returned by [`Bus::publish_nowait`]; wait on it with
/// [`wait`](PendingPublish::wait) or [`wait_blocking`](PendingPublish::wait_blocking).
///
/// It makes progress whether or not it is waited on, in publish order: publishes started after
/// it on the same bus wait their turn behind it, so events keep their order even when many are
/// in flight.
#[must_use = "the outcome of the publish is only known once waited on"]
pub struct PendingPublish {
    inner: Option<Pending>,
}

enum Pending {
    /// Finished by the bus's slow lane, which replies.
    Reply(oneshot::Receiver<Result<()>>),
    /// Handed to the transport already (its order is fixed): only the broker's confirmation
    /// is left, awaited by whoever waits on it, with no other task or channel in between.
    Submitted {
        fut: PublishFut,
        deadline: tokio::time::Instant,
        shared: Weak<BusShared>,
    },
}

impl std::fmt::Debug for PendingPublish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.inner {
            Some(Pending::Reply(_)) => "waiting its turn",
            Some(Pending::Submitted { .. }) => "waiting for the confirmation",
            None => "finished",
        };
        f.debug_struct("PendingPublish")
            .field("state", &state)
            .finish()
    }
}

impl PendingPublish {
    /// Waits until the backend accepts the event (at most `publish_timeout_ms` after the
    /// publish started).
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`], [`ErrorKind::Closed`], and backend errors.
    pub async fn wait(mut self) -> Result<()> {
        let result = match &mut self.inner {
            Some(Pending::Reply(rx)) => rx.await.unwrap_or_else(|_| Err(Error::closed("bus"))),
            Some(Pending::Submitted {
                fut,
                deadline,
                shared,
            }) => confirm(shared, fut, *deadline).await,
            None => Err(Error::closed("bus")),
        };
        // Finished: nothing is left for `drop` to see through.
        self.inner = None;
        result
    }

    /// Blocks the calling thread until the backend accepts the event. Must not be called from
    /// asynchronous code (a tokio worker); front ends call it from their own threads.
    ///
    /// # Errors
    /// As [`wait`](PendingPublish::wait).
    pub fn wait_blocking(self) -> Result<()> {
        futures::executor::block_on(self.wait())
    }
}

impl Drop for PendingPublish {
    /// A confirmation nobody waits for any more is still seen through in the background (it
    /// counts in the bus's stats when it comes).
    fn drop(&mut self) {
        if let Some(Pending::Submitted {
            mut fut,
            deadline,
            shared,
        }) = self.inner.take()
        {
            if let Some(bus) = shared.upgrade() {
                bus.runtime.spawn(async move {
                    let _ = confirm(&shared, &mut fut, deadline).await;
                });
            }
        }
    }
}

/// Polls a future inside a runtime's context, from whatever thread or executor polls it.
struct InRuntime<'a, F> {
    runtime: &'a tokio::runtime::Handle,
    fut: &'a mut F,
}

impl<F: std::future::Future + Unpin> std::future::Future for InRuntime<'_, F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let _runtime = self.runtime.enter();
        std::pin::Pin::new(&mut *self.fut).poll(cx)
    }
}

/// Waits for a submitted publish's confirmation until `deadline`, and counts it. The caller
/// may wait from any executor or thread: the confirmation and the deadline's timer are polled
/// inside the bus's runtime (a backend's future may set timers of its own), and the timer is
/// only set when the confirmation is not there already.
async fn confirm(
    shared: &Weak<BusShared>,
    fut: &mut PublishFut,
    deadline: tokio::time::Instant,
) -> Result<()> {
    let Some(runtime) = shared.upgrade().map(|bus| bus.runtime.clone()) else {
        return Err(Error::closed("bus"));
    };
    let mut fut = InRuntime {
        runtime: &runtime,
        fut,
    };
    let result = match futures::FutureExt::now_or_never(&mut fut) {
        Some(r) => Some(r),
        None => {
            let sleep = {
                let _runtime = runtime.enter();
                tokio::time::sleep_until(deadline)
            };
            tokio::select! {
                biased;
                r = &mut fut => Some(r),
                () = sleep => None,
            }
        }
    };
    let Some(bus) = shared.upgrade() else {
        return Err(Error::closed("bus"));
    };
    let result = result.unwrap_or_else(|| Err(bus.publish_timed_out()));
    if result.is_ok() {
        bus.counters.published.fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// What a cancelled publish leaves behind.
const MAY_STILL_BE_PUBLISHED: &str = "; the event may still be published";
/// What a cancelled batch publish leaves behind.
const MAY_STILL_BE_PUBLISHED_BATCH: &str =
    "; it and the events started after it may still be published";
/// What a cancelled close leaves behind.
const DRAIN_GOES_ON: &str = "; the bus is closed and its drain goes on in the background";

/// A publish waiting in the bus's slow lane.
struct Waiting {
    work: Work,
    deadline: tokio::time::Instant,
    reply: oneshot::Sender<Result<()>>,
}

type PublishFut = crate::backend::BoxFut<'static, Result<()>>;

enum Work {
    /// The backend started it and must finish it before later publishes start.
    Started(PublishFut),
    /// Not handed to the backend yet: an earlier publish was still waiting.
    Queued(Arc<Message>),
}

/// Waits for one publish to finish (within its deadline), counts it and replies.
async fn finish(
    shared: Weak<BusShared>,
    mut fut: PublishFut,
    deadline: tokio::time::Instant,
    reply: oneshot::Sender<Result<()>>,
) {
    let _ = reply.send(confirm(&shared, &mut fut, deadline).await);
}

/// Finishes waiting publishes whose order is not fixed yet (`Started`, `Queued`), one at a
/// time, in the order they started, so none overtakes another. A queued publish that the
/// transport takes at once (its order is fixed then) only awaits its confirmation, beside the
/// others, so a broker's acknowledgements overlap instead of costing a round trip each.
/// Publishes that were handed to the transport at once never come here: their callers await
/// the confirmation themselves ([`PendingPublish`]).
async fn slow_lane(weak: Weak<BusShared>, mut rx: mpsc::UnboundedReceiver<Waiting>) {
    let mut confirming = FuturesUnordered::new();
    loop {
        let w = tokio::select! {
            biased;
            Some(()) = confirming.next(), if !confirming.is_empty() => continue,
            w = rx.recv() => w,
        };
        let Some(w) = w else { break };
        let Some(shared) = weak.upgrade() else {
            let _ = w.reply.send(Err(Error::closed("bus")));
            continue;
        };
        let fut = match w.work {
            Work::Started(fut) => fut,
            Work::Queued(m) => match shared.backend.publish(m) {
                Publishing::Done(r) => Box::pin(std::future::ready(r)),
                Publishing::Pending(fut) => fut,
                Publishing::Submitted(fut) => {
                    shared.slow_pending.fetch_sub(1, Ordering::AcqRel);
                    confirming.push(finish(weak.clone(), fut, w.deadline, w.reply));
                    continue;
                }
            },
        };
        drop(shared);
        // Later publishes wait for this one; confirmations already in flight keep flowing (a
        // backend may need them to free room for this one).
        let mut this = Box::pin(finish(weak.clone(), fut, w.deadline, w.reply));
        loop {
            tokio::select! {
                biased;
                () = &mut this => break,
                Some(()) = confirming.next(), if !confirming.is_empty() => {}
            }
        }
        if let Some(shared) = weak.upgrade() {
            shared.slow_pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
    while confirming.next().await.is_some() {}
}

impl BusShared {
    /// Validates and hands a message to the backend; `Some` when it has to be waited on.
    fn start_publish(self: &Arc<Self>, mut message: Message) -> Result<Option<PendingPublish>> {
        // Front ends call this from their own threads; backends may need the runtime's timers.
        let _runtime = self.runtime.enter();
        let source = (!self.config.name.is_empty()).then_some(self.config.name.as_str());
        message.prepare(source, self.config.max_payload)?;
        let message = Arc::new(message);
        if self.slow_pending.load(Ordering::Acquire) > 0 {
            return Ok(Some(self.wait_turn(Work::Queued(message))));
        }
        match self.backend.publish(message) {
            Publishing::Done(r) => {
                r?;
                self.counters.published.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Publishing::Pending(fut) => Ok(Some(self.wait_turn(Work::Started(fut)))),
            Publishing::Submitted(fut) => Ok(Some(PendingPublish {
                inner: Some(Pending::Submitted {
                    fut,
                    deadline: self.publish_deadline(),
                    shared: Arc::downgrade(self),
                }),
            })),
        }
    }

    fn publish_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Config::duration(self.config.publish_timeout_ms)
    }

    fn publish_timed_out(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "publish was not accepted within {} ms (a subscriber's queue stayed full, or \
                 the broker did not confirm it)",
                self.config.publish_timeout_ms
            ),
        )
    }

    fn wait_turn(&self, work: Work) -> PendingPublish {
        self.slow_pending.fetch_add(1, Ordering::AcqRel);
        let (reply, rx) = oneshot::channel();
        let deadline = self.publish_deadline();
        if let Err(mpsc::error::SendError(w)) = self.slow.send(Waiting {
            work,
            deadline,
            reply,
        }) {
            self.slow_pending.fetch_sub(1, Ordering::AcqRel);
            let _ = w.reply.send(Err(Error::closed("bus")));
        }
        PendingPublish {
            inner: Some(Pending::Reply(rx)),
        }
    }

    pub(crate) fn close_timeout(&self) -> Duration {
        Config::duration(self.config.close_timeout_ms)
    }

    /// Publishes without checking whether the bus is closed (dead letters during a drain).
    pub(crate) async fn publish_internal(self: &Arc<Self>, message: Message) -> Result<()> {
        match self.start_publish(message)? {
            None => Ok(()),
            Some(p) => p.wait().await,
        }
    }
}

/// Anything that can be turned into a [`Config`]: a URL or JSON string, or a `Config`.
pub trait IntoConfig {
    /// Converts into a config.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] when the text cannot be parsed.
    fn into_config(self) -> Result<Config>;
}

impl IntoConfig for Config {
    fn into_config(self) -> Result<Config> {
        self.validate()?;
        Ok(self)
    }
}
impl IntoConfig for &str {
    fn into_config(self) -> Result<Config> {
        Config::parse(self)
    }
}
impl IntoConfig for String {
    fn into_config(self) -> Result<Config> {
        Config::parse(&self)
    }
}
impl IntoConfig for &String {
    fn into_config(self) -> Result<Config> {
        Config::parse(self)
    }
}

impl Bus {
    /// Connects to the bus described by `config` (a URL such as `"memory://"`, a JSON object,
    /// or a [`Config`]). Must be called within a tokio runtime; the bus's tasks run on it.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for a bad config, [`ErrorKind::Timeout`] when connecting
    /// takes longer than `connect_timeout_ms`, [`ErrorKind::Connection`] and
    /// [`ErrorKind::Auth`] from the broker.
    pub async fn connect(config: impl IntoConfig) -> Result<Bus> {
        let config = config.into_config()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::InvalidArgument,
                "Bus::connect must run inside a tokio runtime",
            )
        })?;
        let limit = Config::duration(config.connect_timeout_ms);
        let (state, _) = watch::channel(ConnectionState::Connected);
        let backend = tokio::time::timeout(limit, backend::open(&config, &state))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "connecting to {:?} took longer than {} ms",
                        config.url,
                        limit.as_millis()
                    ),
                )
            })??;
        let (slow, slow_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(BusShared {
            config,
            backend,
            counters: Counters::default(),
            runtime: runtime.clone(),
            closed: AtomicBool::new(false),
            slow,
            slow_pending: AtomicUsize::new(0),
            state,
        });
        runtime.spawn(slow_lane(Arc::downgrade(&shared), slow_rx));
        Ok(Bus {
            inner: Arc::new(BusInner {
                shared,
                subscriptions: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The configuration the bus was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// Whether [`close`](Bus::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed.load(Ordering::Acquire)
    }

    /// The state of the connection to the broker (`memory://` is always connected until
    /// closed).
    pub fn connection_state(&self) -> ConnectionState {
        *self.inner.shared.state.borrow()
    }

    /// A receiver that is told of every change of the connection state; `changed().await`
    /// waits for the next one. The last state is [`ConnectionState::Closed`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> polybus::Result<()> {
    /// use polybus::{Bus, ConnectionState};
    /// let bus = Bus::connect("memory://").await?;
    /// let mut state = bus.watch_connection_state();
    /// let closer = bus.clone();
    /// tokio::spawn(async move { closer.close().await });
    /// let last = state.wait_for(|s| *s == ConnectionState::Closed).await.map(|s| *s);
    /// assert_eq!(last.ok(), Some(ConnectionState::Closed));
    /// # Ok(()) }
    /// ```
    pub fn watch_connection_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.shared.state.subscribe()
    }

    /// The bus's counters.
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.shared.counters.snapshot();
        stats.dropped += self.inner.shared.backend.dropped();
        stats
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::closed("bus"));
        }
        Ok(())
    }

    /// Publishes one event and returns once the backend has accepted it (memory: queued to
    /// every matching subscription, waiting while a queue is full).
    ///
    /// # Errors
    /// [`ErrorKind::Closed`], [`ErrorKind::InvalidTopic`], [`ErrorKind::TooLarge`],
    /// [`ErrorKind::InvalidArgument`] (a bad header or key), [`ErrorKind::Timeout`] when not
    /// accepted within `publish_timeout_ms`, and backend errors.
    pub async fn publish(&self, message: Message) -> Result<()> {
        self.check_open()?;
        self.inner.shared.publish_internal(message).await
    }

    /// [`publish`](Bus::publish), giving up the wait when `cancel` fires (see [`Cancel`] for
    /// what a cancelled publish leaves behind: the event may still be published).
    ///
    /// # Errors
    /// As [`publish`](Bus::publish); [`ErrorKind::Cancelled`], or [`ErrorKind::Timeout`] when
    /// `cancel`'s deadline passed.
    pub async fn publish_until(&self, message: Message, cancel: &Cancel) -> Result<()> {
        // The same order as every call: a closed bus first, then a fired cancel.
        self.check_open()?;
        cancel.check("publish")?;
        match self.publish_nowait(message)? {
            None => Ok(()),
            Some(p) => {
                cancel
                    .guard_noting("publish", MAY_STILL_BE_PUBLISHED, p.wait())
                    .await
            }
        }
    }

    /// Starts publishing without waiting: `Ok(None)` when the backend accepted the event at
    /// once, `Ok(Some(pending))` when it must be waited on. Front ends use it to avoid blocking
    /// (and, in Python, releasing the interpreter) on the common path.
    ///
    /// # Errors
    /// As [`publish`](Bus::publish), for what can be checked before waiting.
    pub fn publish_nowait(&self, message: Message) -> Result<Option<PendingPublish>> {
        self.check_open()?;
        self.inner.shared.start_publish(message)
    }

    /// Publishes and blocks the calling thread until the backend accepts the event. Must not
    /// be called from asynchronous code.
    ///
    /// # Errors
    /// As [`publish`](Bus::publish).
    pub fn publish_blocking(&self, message: Message) -> Result<()> {
        match self.publish_nowait(message)? {
            None => Ok(()),
            Some(p) => p.wait_blocking(),
        }
    }

    /// Publishes many events in order and returns once all are accepted: the pipelined path,
    /// the one every front end uses for its batch publish and its un-awaited publishes. As many
    /// publishes as the backend allows ([`publish_window`]) are in flight at once, each
    /// started in order; the confirmations are awaited together, so a broker's round trip is
    /// paid once per window, not once per event.
    ///
    /// Returns how many were published (all of them). It stops starting publishes at the
    /// first failure; the error names the failed event's index and
    /// [`Error::published`] says how many events before it were published (events after a
    /// failure the broker reports only in its confirmation may have been published too).
    ///
    /// # Errors
    /// As [`publish`](Bus::publish), with the index of the failed event in the message.
    ///
    /// [`publish_window`]: crate::Bus::publish_window
    pub async fn publish_batch(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<usize> {
        self.publish_batch_inner(messages, None).await
    }

    /// [`publish_batch`](Bus::publish_batch), starting no further events and giving up the
    /// wait when `cancel` fires. [`Error::published`] says how many were confirmed before it
    /// gave up; events started after those may still be published (see [`Cancel`]).
    ///
    /// # Errors
    /// As [`publish_batch`](Bus::publish_batch); [`ErrorKind::Cancelled`], or
    /// [`ErrorKind::Timeout`] when `cancel`'s deadline passed.
    pub async fn publish_batch_until(
        &self,
        messages: impl IntoIterator<Item = Message>,
        cancel: &Cancel,
    ) -> Result<usize> {
        self.publish_batch_inner(messages, Some(cancel)).await
    }

    async fn publish_batch_inner(
        &self,
        messages: impl IntoIterator<Item = Message>,
        cancel: Option<&Cancel>,
    ) -> Result<usize> {
        self.check_open()?;
        // Waits for one confirmation, or for the cancel.
        let confirmed = |p: PendingPublish| async move {
            match cancel {
                None => p.wait().await,
                Some(c) => {
                    c.guard_noting("publish", MAY_STILL_BE_PUBLISHED_BATCH, p.wait())
                        .await
                }
            }
        };
        let mut pending: std::collections::VecDeque<(usize, PendingPublish)> = Default::default();
        // The failure with the lowest index is the one reported.
        let mut failed: Option<(usize, Error)> = None;
        let mut note = |i: usize, e: Error| {
            if failed.as_ref().is_none_or(|(j, _)| i < *j) {
                failed = Some((i, e));
            }
        };
        let window = self.publish_window();
        let mut count = 0;
        for (i, m) in messages.into_iter().enumerate() {
            count = i + 1;
            if pending.len() >= window {
                if let Some((j, p)) = pending.pop_front() {
                    if let Err(e) = confirmed(p).await {
                        note(j, e);
                        break;
                    }
                }
            }
            if let Some(Err(e)) = cancel.map(|c| c.check("publish")) {
                note(i, e);
                break;
            }
            match self.inner.shared.start_publish(m) {
                Ok(None) => {}
                Ok(Some(p)) => pending.push_back((i, p)),
                Err(e) => {
                    note(i, e);
                    break;
                }
            }
        }
        for (j, p) in pending {
            if let Err(e) = confirmed(p).await {
                let given_up = cancel.is_some_and(Cancel::is_over);
                note(j, e);
                if given_up {
                    break;
                }
            }
        }
        match failed {
            None => Ok(count),
            Some((i, e)) => Err(Error::new(
                e.kind(),
                format!("event {i} of the batch: {}", e.message()),
            )
            .with_published(i)),
        }
    }

    /// [`publish_batch`](Bus::publish_batch), blocking the calling thread (never a tokio
    /// worker): what the C, Go and Python front ends call.
    ///
    /// # Errors
    /// As [`publish_batch`](Bus::publish_batch).
    pub fn publish_batch_blocking(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<usize> {
        let runtime = self.inner.shared.runtime.clone();
        runtime.block_on(self.publish_batch(messages))
    }

    /// How many publishes the backend allows in flight at once (its confirmation window):
    /// what [`publish_batch`](Bus::publish_batch) keeps in flight.
    pub fn publish_window(&self) -> usize {
        self.inner.shared.backend.publish_window().max(1)
    }

    async fn open_subscription(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        executor: Executor,
    ) -> Result<Arc<SubControl>> {
        self.check_open()?;
        let parsed = Pattern::parse(pattern)?;
        options.validate()?;
        if let Some(dl) = options
            .dead_letter
            .as_deref()
            .filter(|dl| parsed.matches(dl))
        {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "dead_letter topic {dl:?} matches the subscription's own pattern {pattern:?}: \
                     failed events would come back to the handler that failed them"
                ),
            ));
        }
        let shared = &self.inner.shared;
        let (source, unsubscribe) = shared.backend.subscribe(&parsed, &options).await?;
        let control = dispatch::start(
            shared.clone(),
            pattern.to_owned(),
            options,
            source,
            unsubscribe,
            executor,
        );
        let mut subs = self.inner.subscriptions.lock();
        // Forget ended subscriptions only when the list would grow: amortised O(1) per
        // subscribe, so subscribing 10,000 times does not rescan the list 10,000 times.
        if subs.len() == subs.capacity() {
            subs.retain(|w| w.strong_count() > 0);
        }
        subs.push(Arc::downgrade(&control));
        drop(subs);
        // Closed while subscribing: do not leave it running.
        if self.is_closed() {
            control.stop();
            return Err(Error::closed("bus"));
        }
        Ok(control)
    }

    /// Subscribes `handler` to `pattern` (`*` matches one token, `>` the rest).
    ///
    /// The handler runs on the bus's tokio runtime. `Ok(())` acknowledges; an error or a panic
    /// is a nack: the event is retried with backoff up to `max_attempts`, then dead-lettered.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`], [`ErrorKind::InvalidPattern`], [`ErrorKind::InvalidArgument`]
    /// for bad options, [`ErrorKind::Unsupported`] when the backend cannot honour an option.
    pub async fn subscribe(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        handler: impl Handler,
    ) -> Result<Subscription> {
        let control = self
            .open_subscription(pattern, options, Executor::Native(Arc::new(handler)))
            .await?;
        Ok(Subscription { control })
    }

    /// Subscribes to `pattern` and returns batches to pull instead of calling a handler, from
    /// a queue of its own; see [`BatchSubscription`].
    ///
    /// # Errors
    /// As [`subscribe`](Bus::subscribe).
    pub async fn subscribe_batches(
        &self,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<BatchSubscription> {
        let queue = DeliveryQueue::new();
        let sub = self.subscribe_to_queue(pattern, options, &queue, 0).await;
        // The subscription's lanes hold the only senders: the queue ends with it.
        queue.close();
        sub
    }

    /// Subscribes to `pattern` and sends its batches, marked with `token`, to `queue`, which
    /// any number of subscriptions (of any bus) may share; see [`DeliveryQueue`].
    ///
    /// # Errors
    /// As [`subscribe`](Bus::subscribe); [`ErrorKind::Closed`] when `queue` is closed.
    pub async fn subscribe_to_queue(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        queue: &DeliveryQueue,
        token: u64,
    ) -> Result<BatchSubscription> {
        let tx = queue.sender()?;
        let control = self
            .open_subscription(pattern, options, Executor::Remote(tx, token))
            .await?;
        Ok(BatchSubscription {
            control,
            queue: queue.clone(),
            token,
        })
    }

    /// Closes the bus: new publishes and subscribes fail with [`ErrorKind::Closed`], every
    /// subscription stops receiving, queued and in-flight events are handled (bounded by
    /// `close_timeout_ms`), then the connection is released. Idempotent: a second close, or
    /// one racing the first, returns once the first is over. Called from inside one of the
    /// bus's own handlers (which it would wait for), it closes the bus and returns at once; the
    /// drain finishes in the background.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] when handlers did not finish in time (the rest is abandoned and
    /// counted as dropped).
    pub async fn close(&self) -> Result<()> {
        if self.in_own_handler() {
            drop(self.close_in_background());
            return Ok(());
        }
        self.close_inner().await
    }

    /// Whether the caller is one of this bus's native handlers: a close there would wait for
    /// itself, so it closes the bus at once and leaves the drain to the background.
    fn in_own_handler(&self) -> bool {
        dispatch::in_handler_of_bus(dispatch::bus_id(&self.inner.shared))
    }

    /// [`close`](Bus::close), giving up the wait when `cancel` fires: the bus is closed at
    /// once either way, and its drain goes on in the background (bounded by
    /// `close_timeout_ms`), as a cancelled close does in every front end.
    ///
    /// # Errors
    /// As [`close`](Bus::close); [`ErrorKind::Cancelled`], or [`ErrorKind::Timeout`] when
    /// `cancel`'s deadline passed.
    pub async fn close_until(&self, cancel: &Cancel) -> Result<()> {
        let closing = self.close_in_background();
        if self.in_own_handler() {
            return Ok(());
        }
        cancel
            .guard_task("close", DRAIN_GOES_ON, closing, || Error::closed("bus"))
            .await
    }

    /// Closes the bus without waiting: publishes and subscribes fail with
    /// [`ErrorKind::Closed`] and every subscription stops receiving before this returns; the
    /// drain and the release of the connection go on in the background (bounded by
    /// `close_timeout_ms`). What a front end calls when the caller is one of the bus's own
    /// handlers (a close that waited would wait for itself). The handle tells how it ended.
    pub fn close_in_background(&self) -> tokio::task::JoinHandle<Result<()>> {
        let begun = self.begin_close();
        let bus = self.clone();
        self.inner
            .shared
            .runtime
            .spawn(async move { bus.finish_close(begun).await })
    }

    async fn close_inner(&self) -> Result<()> {
        let begun = self.begin_close();
        self.finish_close(begun).await
    }

    /// Marks the bus closed and stops its subscriptions: `None` when another close did.
    fn begin_close(&self) -> Option<Vec<Arc<SubControl>>> {
        if self.inner.shared.closed.swap(true, Ordering::AcqRel) {
            return None;
        }
        let subs: Vec<Arc<SubControl>> = self
            .inner
            .subscriptions
            .lock()
            .drain(..)
            .filter_map(|w| w.upgrade())
            .collect();
        for s in &subs {
            s.stop();
        }
        Some(subs)
    }

    /// Drains the subscriptions [`begin_close`](Bus::begin_close) stopped and releases the
    /// connection; when another close began, waits until it is over.
    async fn finish_close(&self, begun: Option<Vec<Arc<SubControl>>>) -> Result<()> {
        let shared = &self.inner.shared;
        let Some(subs) = begun else {
            // Closed by another caller: return once that close is over, so that after any
            // close returns, every handler is done. Bounded, in case the first close was
            // dropped half-way by its caller.
            let mut state = shared.state.subscribe();
            let over = state.wait_for(|s| *s == ConnectionState::Closed);
            let _ =
                tokio::time::timeout(shared.close_timeout() + Duration::from_secs(1), over).await;
            return Ok(());
        };
        let limit = shared.close_timeout();
        let results = futures::future::join_all(subs.iter().map(|s| s.close_within(limit))).await;
        let backend = shared.backend.close().await;
        shared.state.send_replace(ConnectionState::Closed);
        results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))?;
        backend
    }
}

impl Drop for BusInner {
    fn drop(&mut self) {
        for s in self
            .subscriptions
            .get_mut()
            .drain(..)
            .filter_map(|w| w.upgrade())
        {
            s.stop();
        }
    }
}
