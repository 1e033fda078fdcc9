//! Dispatch: lanes, acknowledgement, retries with backoff, dead-lettering.
//!
//! Written once for every backend and every front end. A subscription with `concurrency = N`
//! has N *lanes*. Keyed events always go to the lane chosen by their key, so one key is handled
//! by one lane, in order; unkeyed events go to the least busy lane. A lane takes up to
//! `batch_size` events, hands them to the executor (a Rust handler, or a front end pulling
//! batches), and reads back how far it got (the first events handled, then a failure): acked events are settled at the broker;
//! a failed event is retried after the backoff with `attempt + 1` ahead of everything after it
//! in its lane, and after `max_attempts` it is published to `dead_letter` (with the reason and
//! the attempt count in headers) or dropped with an error log and a counter.

use std::{
    collections::VecDeque,
    future::Future,
    hash::{Hash, Hasher},
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{
    backend::{ChannelSource, Delivery, Next, Source, Unsubscribe},
    bus::BusShared,
    error::{BoxError, Error, ErrorKind, Result},
    event::Event,
    message::Message,
    subscription::{Batch, Completion, Outcome, SubscribeOptions},
};

/// Header carrying why an event was dead-lettered.
pub const HEADER_DEAD_LETTER_REASON: &str = "polybus-dead-letter-reason";
/// Header carrying how many attempts a dead-lettered event had.
pub const HEADER_DEAD_LETTER_ATTEMPTS: &str = "polybus-dead-letter-attempts";
/// Header carrying the topic a dead-lettered event was published on.
pub const HEADER_DEAD_LETTER_TOPIC: &str = "polybus-dead-letter-topic";
/// Header carrying the id of the event that was dead-lettered.
pub const HEADER_DEAD_LETTER_ID: &str = "polybus-dead-letter-id";

/// A Rust event handler. Implemented for every
/// `Fn(Event) -> impl Future<Output = Result<(), E>>` with `E: Into<BoxError>`.
///
/// Returning `Ok(())` acknowledges the event; an error (or a panic) is a nack.
pub trait Handler: Send + Sync + 'static {
    /// Handles one event.
    fn call(&self, event: Event) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
}

impl<F, Fut, E> Handler for F
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn call(&self, event: Event) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> {
        let fut = (self)(event);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

/// How often an idle lane yields before it parks waiting for events.
const SPIN_YIELDS: usize = 256;

/// Counters of a bus, cumulative since it was opened. Publishers and subscribers update
/// different counters from different threads: each sits on its own cache line.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: Padded,
    pub(crate) delivered: Padded,
    pub(crate) acked: Padded,
    pub(crate) failed: Padded,
    pub(crate) retried: Padded,
    pub(crate) dead_lettered: Padded,
    pub(crate) dropped: Padded,
}

/// An atomic counter alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded(AtomicU64);

impl std::ops::Deref for Padded {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// A snapshot of a bus's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Events accepted by `publish`.
    pub published: u64,
    /// Handler invocations (every attempt counts).
    pub delivered: u64,
    /// Events acknowledged after their handler succeeded.
    pub acked: u64,
    /// Handler failures (errors, exceptions, rejections, panics).
    pub failed: u64,
    /// Retries scheduled after a failure.
    pub retried: u64,
    /// Events published to a dead-letter topic after `max_attempts`.
    pub dead_lettered: u64,
    /// Events given up on: `max_attempts` reached with no dead-letter topic, a dead-letter
    /// publish that failed, events abandoned when `close` timed out, or events the broker's
    /// client dropped because a subscription fell too far behind (NATS: a slow consumer).
    pub dropped: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            published: g(&self.published),
            delivered: g(&self.delivered),
            acked: g(&self.acked),
            failed: g(&self.failed),
            retried: g(&self.retried),
            dead_lettered: g(&self.dead_lettered),
            dropped: g(&self.dropped),
        }
    }
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

tokio::task_local! {
    /// While a native (Rust) handler runs: the ids of its subscription and of its bus, so that
    /// a close called from inside it stops instead of waiting for itself.
    static IN_HANDLER: (u64, usize);
}

/// The id of the bus of `shared` (its address, stable while it lives).
pub(crate) fn bus_id(shared: &Arc<BusShared>) -> usize {
    Arc::as_ptr(shared) as usize
}

/// Whether the caller is a native handler of the bus `bus`.
pub(crate) fn in_handler_of_bus(bus: usize) -> bool {
    IN_HANDLER.try_with(|&(_, b)| b == bus).unwrap_or(false)
}

static NEXT_SUB_ID: AtomicU64 = AtomicU64::new(1);

/// Shared control of one running subscription: stop, drain, abort.
pub(crate) struct SubControl {
    /// Unique in the process: tells a subscription's own handlers from others.
    id: u64,
    pub(crate) pattern: String,
    stopping: AtomicBool,
    unsubscribe: Mutex<Option<Box<dyn Unsubscribe>>>,
    done: watch::Receiver<()>,
    abort: watch::Sender<bool>,
    close_timeout: Duration,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for SubControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubControl")
            .field("pattern", &self.pattern)
            .field("stopping", &self.stopping)
            .finish()
    }
}

impl SubControl {
    /// Stops new deliveries; queued and in-flight events still drain.
    pub(crate) fn stop(&self) {
        if !self.stopping.swap(true, Ordering::AcqRel) {
            if let Some(u) = self.unsubscribe.lock().take() {
                u.unsubscribe();
            }
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Whether every task of the subscription has finished.
    pub(crate) fn is_drained(&self) -> bool {
        self.done.has_changed().is_err()
    }

    /// [`close`](SubControl::close) from a thread outside the runtime.
    pub(crate) fn close_blocking(&self) -> Result<()> {
        self.stop();
        if self.is_drained() {
            return Ok(());
        }
        self.runtime.block_on(self.close_within(self.close_timeout))
    }

    /// Waits until every task of the subscription has finished.
    pub(crate) async fn drained(&self) {
        let mut rx = self.done.clone();
        while rx.changed().await.is_ok() {}
    }

    /// Abandons whatever is still queued or in flight.
    pub(crate) fn abort(&self) {
        self.abort.send_replace(true);
    }

    /// Stops, drains within the close timeout, aborts on timeout. Called from inside one of
    /// its own native handlers (it would wait for itself), it only stops: the drain finishes
    /// in the background.
    pub(crate) async fn close(&self) -> Result<()> {
        self.stop();
        if IN_HANDLER
            .try_with(|&(sub, _)| sub == self.id)
            .unwrap_or(false)
        {
            return Ok(());
        }
        self.close_within(self.close_timeout).await
    }

    pub(crate) async fn close_within(&self, limit: Duration) -> Result<()> {
        if tokio::time::timeout(limit, self.drained()).await.is_ok() {
            return Ok(());
        }
        self.abort();
        // Aborting is prompt: lanes only wait on the abort signal now.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.drained()).await;
        Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "subscription {:?}: handlers did not finish within {} ms; the rest was abandoned",
                self.pattern,
                limit.as_millis()
            ),
        ))
    }
}

/// Who runs the handler.
#[derive(Clone)]
pub(crate) enum Executor {
    /// A Rust handler, run on the lane's task.
    Native(Arc<dyn Handler>),
    /// A front end pulling batches from a queue; the batches carry the token.
    Remote(flume::Sender<Batch>, u64),
}

/// Everything a lane needs.
struct LaneCtx {
    /// The subscription's id ([`SubControl`]).
    sub: u64,
    shared: Arc<BusShared>,
    options: SubscribeOptions,
    executor: Executor,
    abort: watch::Receiver<bool>,
    _done: watch::Sender<()>,
}

/// Starts the tasks of a subscription over `source`.
pub(crate) fn start(
    shared: Arc<BusShared>,
    pattern: String,
    options: SubscribeOptions,
    source: Box<dyn Source>,
    unsubscribe: Box<dyn Unsubscribe>,
    executor: Executor,
) -> Arc<SubControl> {
    let (done_tx, done_rx) = watch::channel(());
    let (abort_tx, abort_rx) = watch::channel(false);
    let id = NEXT_SUB_ID.fetch_add(1, Ordering::Relaxed);
    let control = Arc::new(SubControl {
        id,
        pattern,
        stopping: AtomicBool::new(false),
        unsubscribe: Mutex::new(Some(unsubscribe)),
        done: done_rx,
        abort: abort_tx,
        close_timeout: shared.close_timeout(),
        runtime: shared.runtime.clone(),
    });
    let handle = shared.runtime.clone();
    let n = options.concurrency as usize;
    let ctx = Arc::new(LaneCtx {
        sub: id,
        shared,
        options,
        executor,
        abort: abort_rx,
        _done: done_tx,
    });
    if n == 1 {
        handle.spawn(lane(0, source, None, ctx));
    } else {
        let cap = ctx.options.batch_size as usize;
        let loads: Arc<[AtomicUsize]> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let mut lanes = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = flume::bounded(cap);
            lanes.push(tx);
            let load = Some((loads.clone(), i));
            handle.spawn(lane(
                i as u32,
                Box::new(ChannelSource::new(rx)),
                load,
                ctx.clone(),
            ));
        }
        handle.spawn(route(source, lanes, loads, ctx));
    }
    control
}

/// Waits for `fut`, or returns `None` once the subscription is aborted.
async fn unless_aborted<F: Future>(abort: &watch::Receiver<bool>, fut: F) -> Option<F::Output> {
    let mut abort = abort.clone();
    if *abort.borrow() {
        return None;
    }
    tokio::select! {
        biased;
        out = fut => Some(out),
        _ = abort.wait_for(|a| *a) => None,
    }
}

/// Spreads deliveries over lanes: by key, else to the least busy lane.
async fn route(
    mut source: Box<dyn Source>,
    lanes: Vec<flume::Sender<Delivery>>,
    loads: Arc<[AtomicUsize]>,
    ctx: Arc<LaneCtx>,
) {
    let mut rr = 0usize;
    loop {
        let Some(Some(d)) = unless_aborted(&ctx.abort, Next(source.as_mut())).await else {
            break;
        };
        let i = match d.event.key() {
            Some(k) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                k.hash(&mut h);
                (h.finish() % lanes.len() as u64) as usize
            }
            None => {
                // The least loaded lane (queued plus in flight), ties broken round-robin.
                rr = rr.wrapping_add(1);
                let n = lanes.len();
                (0..n)
                    .map(|j| (rr + j) % n)
                    .min_by_key(|i| loads[*i].load(Ordering::Relaxed))
                    .unwrap_or(0)
            }
        };
        loads[i].fetch_add(1, Ordering::Relaxed);
        if unless_aborted(&ctx.abort, lanes[i].send_async(d))
            .await
            .is_none()
        {
            add(&ctx.shared.counters.dropped, 1);
            break;
        }
    }
}

async fn lane(
    lane: u32,
    mut source: Box<dyn Source>,
    load: Option<(Arc<[AtomicUsize]>, usize)>,
    ctx: Arc<LaneCtx>,
) {
    let max = ctx.options.batch_size as usize;
    let mut pending: VecDeque<Delivery> = VecDeque::new();
    loop {
        let mut batch: Vec<Delivery> = Vec::with_capacity(max.min(64));
        while batch.len() < max {
            match pending.pop_front() {
                Some(d) => batch.push(d),
                None => break,
            }
        }
        if batch.is_empty() {
            // Under a steady stream the next event is usually a moment away: yielding a few
            // times is far cheaper than parking the thread and being woken per event.
            for _ in 0..SPIN_YIELDS {
                if let Some(d) = source.try_next() {
                    batch.push(d);
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        if batch.is_empty() {
            match unless_aborted(&ctx.abort, Next(source.as_mut())).await {
                Some(Some(d)) => batch.push(d),
                _ => break,
            }
        }
        while batch.len() < max {
            match source.try_next() {
                Some(d) => batch.push(d),
                None => break,
            }
        }
        let every = progress_interval(batch.iter().chain(pending.iter()));
        let run = with_progress(
            execute(&ctx, lane, &batch),
            every,
            batch.iter().chain(pending.iter()),
        );
        let Some(Some(outcomes)) = unless_aborted(&ctx.abort, run).await else {
            // Aborted, or the front end let go of the subscription: nothing will handle these.
            add(&ctx.shared.counters.dropped, batch.len() as u64);
            break;
        };
        let mut requeue: Vec<Delivery> = Vec::new();
        let mut backoff: Option<Duration> = None;
        let mut acks: Vec<Delivery> = Vec::new();
        for (i, mut d) in batch.into_iter().enumerate() {
            let outcome = outcomes
                .get(i)
                .cloned()
                .unwrap_or_else(|| Outcome::Nack("the handler reported no result".into()));
            match outcome {
                Outcome::Ack => acks.push(d),
                Outcome::Skipped => requeue.push(d),
                Outcome::Nack(reason) => {
                    add(&ctx.shared.counters.failed, 1);
                    if d.event.attempt >= ctx.options.max_attempts {
                        give_up(&ctx, d, &reason).await;
                        if let Some((loads, i)) = &load {
                            loads[*i].fetch_sub(1, Ordering::Relaxed);
                        }
                    } else {
                        tracing::debug!(
                            topic = d.event.topic(), id = d.event.id(), attempt = d.event.attempt,
                            reason = %reason, "handler failed; will retry"
                        );
                        add(&ctx.shared.counters.retried, 1);
                        let delay = ctx.options.backoff_for(d.event.attempt);
                        backoff = Some(backoff.map_or(delay, |b| b.max(delay)));
                        d.event.attempt += 1;
                        requeue.push(d);
                    }
                }
            }
        }
        // The batch's acknowledgements go out together, started in order: a broker that
        // answers each (Redis XACK, a JetStream ack) gets them pipelined, one round trip (and,
        // for Redis, one disk sync) for the batch instead of one per event.
        let acked = acks.len();
        futures::future::join_all(acks.into_iter().map(settle)).await;
        if let Some((loads, i)) = &load {
            loads[*i].fetch_sub(acked, Ordering::Relaxed);
        }
        add(&ctx.shared.counters.acked, acked as u64);
        for d in requeue.into_iter().rev() {
            pending.push_front(d);
        }
        if let Some(delay) = backoff {
            // The broker must not redeliver what waits for its retry: tell it before the
            // backoff, and again during a long one.
            let every = progress_interval(pending.iter());
            if let Some(every) = every {
                // Bounded like every report: a broker that does not answer delays nothing.
                let sends = progress_reports(pending.iter());
                let _ = tokio::time::timeout(every, report_progress(sends)).await;
            }
            let sleep = with_progress(tokio::time::sleep(delay), every, pending.iter());
            if unless_aborted(&ctx.abort, sleep).await.is_none() {
                break;
            }
        }
    }
    let left = pending.len() as u64;
    if left > 0 {
        add(&ctx.shared.counters.dropped, left);
        tracing::error!(
            lane,
            left,
            "subscription aborted with events still to handle"
        );
    }
}

/// The shortest progress interval among `deliveries`' ackers.
fn progress_interval<'a>(deliveries: impl Iterator<Item = &'a Delivery>) -> Option<Duration> {
    deliveries
        .filter_map(|d| d.acker.as_ref()?.progress_interval())
        .min()
}

/// The reports telling the broker that `deliveries` are still being worked on.
fn progress_reports<'a>(
    deliveries: impl Iterator<Item = &'a Delivery>,
) -> Vec<crate::backend::BoxFut<'static, Result<()>>> {
    deliveries
        .filter_map(|d| d.acker.as_ref()?.progress())
        .collect()
}

/// Sends progress reports (see [`progress_reports`]).
async fn report_progress(sends: Vec<crate::backend::BoxFut<'static, Result<()>>>) {
    for r in futures::future::join_all(sends).await {
        if let Err(e) = r {
            tracing::debug!(error = %e, "progress report failed");
        }
    }
}

/// Runs `fut`, reporting progress on `deliveries` every `every` until it finishes. A report
/// runs beside `fut`, never in its way: a broker that does not answer (one restarting) delays
/// the next report, not the handler. Each report is given up after `every`, so the next one
/// goes out on a connection that may have come back.
async fn with_progress<'a, F: Future>(
    fut: F,
    every: Option<Duration>,
    deliveries: impl Iterator<Item = &'a Delivery> + Clone,
) -> F::Output {
    use futures::future::FusedFuture;
    let Some(every) = every else {
        return fut.await;
    };
    let mut fut = std::pin::pin!(fut);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let report = futures::future::Fuse::terminated();
    let mut report = std::pin::pin!(report);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            () = &mut report, if !report.is_terminated() => {}
            _ = tick.tick(), if report.is_terminated() => {
                let sends = progress_reports(deliveries.clone());
                report.set(
                    async move {
                        if tokio::time::timeout(every, report_progress(sends)).await.is_err() {
                            tracing::debug!("a progress report got no answer in time");
                        }
                    }
                    .boxed()
                    .fuse(),
                );
            }
        }
    }
}

/// Runs a batch; `None` when the front end pulling batches is gone.
async fn execute(ctx: &LaneCtx, lane: u32, batch: &[Delivery]) -> Option<Vec<Outcome>> {
    match &ctx.executor {
        Executor::Native(handler) => {
            let mut out = Vec::with_capacity(batch.len());
            let mut failed = false;
            for d in batch {
                if failed {
                    out.push(Outcome::Skipped);
                    continue;
                }
                let me = (ctx.sub, bus_id(&ctx.shared));
                let result = IN_HANDLER
                    .scope(
                        me,
                        AssertUnwindSafe(handler.call(d.event.clone())).catch_unwind(),
                    )
                    .await;
                let outcome = match result {
                    Ok(Ok(())) => Outcome::Ack,
                    Ok(Err(err)) => Outcome::Nack(err.to_string()),
                    Err(panic) => {
                        Outcome::Nack(format!("handler panicked: {}", panic_message(&panic)))
                    }
                };
                failed = outcome != Outcome::Ack;
                out.push(outcome);
            }
            let ran = out.iter().filter(|o| **o != Outcome::Skipped).count();
            add(&ctx.shared.counters.delivered, ran as u64);
            Some(out)
        }
        Executor::Remote(tx, token) => {
            let n = batch.len();
            let events: Vec<Event> = batch.iter().map(|d| d.event.clone()).collect();
            let (reply, rx) = tokio::sync::oneshot::channel();
            let batch = Batch {
                events,
                reply: Some(reply),
                lane,
                token: *token,
            };
            tx.send_async(batch).await.ok()?;
            let completion = rx.await.unwrap_or(Completion {
                handled: 0,
                failure: Some("the batch was dropped without a result".into()),
                released: false,
            });
            if completion.released {
                tracing::error!(
                    lane,
                    events = n,
                    "the front end can no longer run this subscription's handlers; its lane \
                     stops, leaving its events unacknowledged"
                );
                return None;
            }
            let ran = completion.handled.min(n) + usize::from(completion.failure.is_some());
            add(&ctx.shared.counters.delivered, ran.min(n) as u64);
            Some(completion.outcomes(n))
        }
    }
}

/// The text of a caught panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

async fn settle(d: Delivery) {
    if let Some(acker) = d.acker {
        if let Err(e) = acker.ack().await {
            tracing::warn!(topic = d.event.topic(), id = d.event.id(), error = %e, "ack failed");
        }
    }
}

async fn give_up(ctx: &LaneCtx, d: Delivery, reason: &str) {
    let e = &d.event;
    match &ctx.options.dead_letter {
        Some(topic) => {
            let mut m: Message = (*e.message).clone();
            m.topic = topic.clone();
            m.id = crate::id::EventId::Unset;
            m.time = None;
            m.headers
                .insert(HEADER_DEAD_LETTER_REASON.into(), sanitize(reason));
            m.headers
                .insert(HEADER_DEAD_LETTER_ATTEMPTS.into(), e.attempt.to_string());
            m.headers
                .insert(HEADER_DEAD_LETTER_TOPIC.into(), e.topic().to_owned());
            m.headers
                .insert(HEADER_DEAD_LETTER_ID.into(), e.id().to_owned());
            match ctx.shared.publish_internal(m).await {
                Ok(()) => add(&ctx.shared.counters.dead_lettered, 1),
                Err(err) => {
                    add(&ctx.shared.counters.dropped, 1);
                    tracing::error!(
                        topic = e.topic(), id = e.id(), dead_letter = %topic, error = %err,
                        "dead-letter publish failed; event dropped"
                    );
                }
            }
        }
        None => {
            add(&ctx.shared.counters.dropped, 1);
            tracing::error!(
                topic = e.topic(),
                id = e.id(),
                attempts = e.attempt,
                reason,
                "event failed max_attempts times and no dead_letter topic is set; dropped"
            );
        }
    }
    settle(d).await;
}

/// Header values cannot hold line breaks.
fn sanitize(reason: &str) -> String {
    let s: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > 1024 {
        let mut end = 1024;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    } else {
        s
    }
}
