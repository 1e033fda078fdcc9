//! Subscription options and handles.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    dispatch::SubControl,
    error::{Error, ErrorKind, Result},
    event::Event,
};

/// Where a new subscription starts, on backends that keep history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Only events published after the subscription was made (the default).
    #[default]
    New,
    /// Every event the backend still holds.
    Earliest,
}

impl Start {
    /// `"new"` or `"earliest"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Start::New => "new",
            Start::Earliest => "earliest",
        }
    }
}

/// How a subscription receives and acknowledges events.
///
/// The JSON and keyword forms in the other languages use the same names
/// (`group`, `concurrency`, `max_attempts`, `dead_letter`, `start`, `backoff_initial_ms`,
/// `backoff_max_ms`, `queue_size`, `batch_size`).
///
/// # Examples
/// ```
/// use polybus::SubscribeOptions;
/// let o = SubscribeOptions::new().group("billing").concurrency(8).dead_letter("orders.dead");
/// assert_eq!(o.concurrency, 8);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscribeOptions {
    /// Competing consumers: each event goes to one member of the group. `None` broadcasts.
    pub group: Option<String>,
    /// Handlers in flight at once. Events with the same key never overlap and keep their order.
    pub concurrency: u32,
    /// Deliveries of one event before it is dead-lettered (or dropped). At least 1.
    pub max_attempts: u32,
    /// Topic that receives events that failed `max_attempts` times.
    pub dead_letter: Option<String>,
    /// Where to start on backends that keep history.
    pub start: Start,
    /// First retry delay in milliseconds; it doubles on each further attempt.
    pub backoff_initial_ms: u64,
    /// Largest retry delay in milliseconds.
    pub backoff_max_ms: u64,
    /// Events buffered for this subscription before publishers wait (backpressure).
    pub queue_size: u32,
    /// Most events handed to a handler thread at once (front ends pull in batches).
    pub batch_size: u32,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            group: None,
            concurrency: 1,
            max_attempts: 5,
            dead_letter: None,
            start: Start::New,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
            queue_size: 1024,
            batch_size: 256,
        }
    }
}

impl SubscribeOptions {
    /// The defaults: broadcast, concurrency 1, 5 attempts, no dead letter, start new.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the JSON form; missing fields take their defaults.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming the bad field.
    pub fn from_json(text: &str) -> Result<Self> {
        let o: SubscribeOptions = serde_json::from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("subscribe options: {e}"),
            )
        })?;
        o.validate()?;
        Ok(o)
    }

    /// Joins the competing-consumer group `name`.
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.group = Some(name.into());
        self
    }

    /// Sets how many handlers may run at once.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// Sets how many deliveries an event gets before it is dead-lettered.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sends events that exhaust their attempts to `topic`.
    pub fn dead_letter(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter = Some(topic.into());
        self
    }

    /// Sets where the subscription starts.
    pub fn start(mut self, start: Start) -> Self {
        self.start = start;
        self
    }

    /// Sets the retry backoff: the first delay and the cap.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial_ms = initial.as_millis() as u64;
        self.backoff_max_ms = max.as_millis() as u64;
        self
    }

    /// Sets how many events are buffered before publishers wait.
    pub fn queue_size(mut self, n: u32) -> Self {
        self.queue_size = n;
        self
    }

    /// Sets the largest batch handed to a front end at once.
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n;
        self
    }

    /// Checks every option.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming the option, [`ErrorKind::InvalidTopic`] for a bad
    /// dead-letter topic.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorKind::InvalidArgument, m));
        if self.concurrency == 0 || self.concurrency > 4096 {
            return bad(format!(
                "concurrency must be 1..=4096, got {}",
                self.concurrency
            ));
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1".into());
        }
        if self.queue_size == 0 {
            return bad("queue_size must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return bad(format!(
                "backoff_max_ms ({}) is less than backoff_initial_ms ({})",
                self.backoff_max_ms, self.backoff_initial_ms
            ));
        }
        if let Some(g) = &self.group {
            if g.is_empty()
                || !g
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return bad(format!(
                    "group {g:?} is invalid (use ASCII letters, digits, '_' and '-')"
                ));
            }
        }
        if let Some(dl) = &self.dead_letter {
            crate::topic::validate_topic(dl).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidTopic,
                    format!("dead_letter: {}", e.message()),
                )
            })?;
        }
        Ok(())
    }

    /// The delay before delivery attempt `attempt + 1`, after attempt `attempt` failed.
    pub fn backoff_for(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(30);
        let ms = self
            .backoff_initial_ms
            .saturating_mul(1u64 << shift)
            .min(self.backoff_max_ms);
        Duration::from_millis(ms)
    }
}

/// What a handler made of one event (the core's reading of a [`Batch`]'s completion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Handled: acknowledge it.
    Ack,
    /// Failed with a reason: retry after backoff, or dead-letter after `max_attempts`.
    Nack(String),
    /// Not run (an earlier event of its batch failed): deliver it again, same attempt.
    Skipped,
}

/// A running subscription with a handler. Dropping it unsubscribes without waiting;
/// [`close`](Subscription::close) unsubscribes and waits for in-flight handlers.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) control: Arc<SubControl>,
}

impl Subscription {
    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.control.pattern
    }

    /// Stops receiving, lets in-flight and already-queued events finish (bounded by the bus's
    /// `close_timeout_ms`), then returns. Idempotent. Called from inside one of its own
    /// handlers (which it would wait for), it stops the subscription and returns at once; the
    /// drain finishes in the background.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] when handlers did not finish in time.
    pub async fn close(&self) -> Result<()> {
        self.control.close().await
    }

    /// Whether the subscription has been closed.
    pub fn is_closed(&self) -> bool {
        self.control.is_stopping()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.control.stop();
    }
}

/// A subscription whose events are pulled in batches by the caller instead of pushed to a
/// handler. The C, Go, Python and Node front ends use it: their handlers run on threads the
/// language owns.
///
/// Its batches go to a [`DeliveryQueue`]: its own (made by [`Bus::subscribe_batches`]), or one
/// that many subscriptions share (made by [`Bus::subscribe_to_queue`]), so that a small fixed
/// set of threads serves every subscription of a bus. Each [`Batch`] comes from one *lane*:
/// its events must be handled in order, stopping at the first failure. Batches may be handled
/// concurrently; the core never has two batches of one lane out at once, so events with the
/// same key never overlap.
///
/// [`Bus::subscribe_batches`]: crate::Bus::subscribe_batches
/// [`Bus::subscribe_to_queue`]: crate::Bus::subscribe_to_queue
#[derive(Debug)]
pub struct BatchSubscription {
    pub(crate) control: Arc<SubControl>,
    pub(crate) queue: DeliveryQueue,
    pub(crate) token: u64,
}

impl BatchSubscription {
    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.control.pattern
    }

    /// The token its batches carry ([`Batch::token`]).
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The queue its batches go to.
    pub fn queue(&self) -> &DeliveryQueue {
        &self.queue
    }

    /// The next batch of its queue, or `None` once the queue is closed and drained. With a
    /// shared queue this may be a batch of another subscription.
    pub async fn next_batch(&self) -> Option<Batch> {
        self.queue.next().await
    }

    /// The next batch of its queue if one is ready now.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] once the queue is closed and drained.
    pub fn try_next_batch(&self) -> Result<Option<Batch>> {
        self.queue.try_next()
    }

    /// Waits up to `timeout` for a batch of its queue, blocking the calling thread (which must
    /// not be a tokio worker).
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] once the queue is closed and drained.
    pub fn next_batch_blocking(&self, timeout: Duration) -> Result<Option<Batch>> {
        self.queue.next_blocking(Some(timeout))
    }

    /// Stops receiving and waits until the outstanding batches are completed (bounded by
    /// the bus's `close_timeout_ms`). Keep pulling and completing while this runs.
    ///
    /// This is the one meaning of close and unsubscribe in every front end. Called from inside
    /// one of the subscription's own handlers it would wait for itself: front ends call
    /// [`stop`](BatchSubscription::stop) there instead (stop now, drain in the background).
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] when batches were not completed in time.
    pub async fn close(&self) -> Result<()> {
        self.control.close().await
    }

    /// [`close`](BatchSubscription::close), blocking the calling thread (which must not be a
    /// tokio worker).
    ///
    /// # Errors
    /// As [`close`](BatchSubscription::close).
    pub fn close_blocking(&self) -> Result<()> {
        self.control.close_blocking()
    }

    /// [`close`](BatchSubscription::close), giving up the wait when `cancel` fires: the
    /// subscription stops at once either way, and its drain goes on in the background (bounded
    /// by `close_timeout_ms`).
    ///
    /// # Errors
    /// As [`close`](BatchSubscription::close); [`ErrorKind::Cancelled`], or
    /// [`ErrorKind::Timeout`] when `cancel`'s deadline passed.
    pub async fn close_until(&self, cancel: &crate::Cancel) -> Result<()> {
        self.control.stop();
        let control = self.control.clone();
        let closing = self
            .control
            .runtime
            .spawn(async move { control.close().await });
        cancel
            .guard_task(
                "close",
                "; the subscription is closed and its drain goes on in the background",
                closing,
                || crate::Error::closed("subscription"),
            )
            .await
    }

    /// Stops receiving without waiting; queued and in-flight batches still drain.
    pub fn stop(&self) {
        self.control.stop();
    }

    /// Waits until every batch of the subscription is completed (after a stop or close).
    pub async fn drained(&self) {
        self.control.drained().await
    }

    /// Whether the subscription has been closed.
    pub fn is_closed(&self) -> bool {
        self.control.is_stopping()
    }

    /// Whether every batch of the subscription has been completed after it was stopped.
    pub fn is_drained(&self) -> bool {
        self.control.is_drained()
    }
}

impl Drop for BatchSubscription {
    fn drop(&mut self) {
        self.control.stop();
    }
}

/// A queue of batches fed by any number of [`BatchSubscription`]s and drained by the front
/// end's threads, woken when a batch arrives (no polling). A front end makes one per bus (or
/// per language runtime), so the threads it needs do not grow with its subscriptions: 10,000
/// subscriptions are served by the same few threads as one.
///
/// Every batch carries the [`token`](Batch::token) its subscription was made with, for the
/// front end to find the handler. Cheap to clone; every clone is the same queue.
#[derive(Debug, Clone)]
pub struct DeliveryQueue {
    inner: Arc<QueueInner>,
}

#[derive(Debug)]
struct QueueInner {
    /// Kept until [`DeliveryQueue::close`]; the lanes of each subscription hold clones, so the
    /// queue ends when it is closed and every subscription feeding it has ended.
    tx: parking_lot::Mutex<Option<flume::Sender<Batch>>>,
    rx: flume::Receiver<Batch>,
}

impl Default for DeliveryQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl DeliveryQueue {
    /// A new, open queue. It holds at most one batch per lane of the subscriptions feeding it
    /// (each lane waits for its batch's completion), so it needs no bound of its own.
    pub fn new() -> Self {
        let (tx, rx) = flume::unbounded();
        DeliveryQueue {
            inner: Arc::new(QueueInner {
                tx: parking_lot::Mutex::new(Some(tx)),
                rx,
            }),
        }
    }

    pub(crate) fn sender(&self) -> Result<flume::Sender<Batch>> {
        self.inner
            .tx
            .lock()
            .clone()
            .ok_or_else(|| Error::closed("delivery queue"))
    }

    /// No new subscriptions may feed it; once those feeding it have ended and their batches
    /// are taken, the pulls return [`ErrorKind::Closed`] (or `None`), which ends the threads
    /// serving it. Idempotent.
    pub fn close(&self) {
        self.inner.tx.lock().take();
    }

    /// Batches waiting to be taken.
    pub fn len(&self) -> usize {
        self.inner.rx.len()
    }

    /// Whether no batch is waiting.
    pub fn is_empty(&self) -> bool {
        self.inner.rx.is_empty()
    }

    /// The next batch, or `None` once the queue is closed and drained.
    pub async fn next(&self) -> Option<Batch> {
        self.inner.rx.recv_async().await.ok()
    }

    /// The next batch if one is ready now.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] once the queue is closed and drained.
    pub fn try_next(&self) -> Result<Option<Batch>> {
        match self.inner.rx.try_recv() {
            Ok(b) => Ok(Some(b)),
            Err(flume::TryRecvError::Empty) => Ok(None),
            Err(flume::TryRecvError::Disconnected) => Err(Error::closed("delivery queue")),
        }
    }

    /// Blocks the calling thread (never a tokio worker) until a batch comes, at most `timeout`
    /// (`None`: until a batch comes or the queue ends). `Ok(None)` when the time ran out.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] once the queue is closed and drained.
    pub fn next_blocking(&self, timeout: Option<Duration>) -> Result<Option<Batch>> {
        let got = match timeout {
            Some(t) => self.inner.rx.recv_timeout(t),
            None => self
                .inner
                .rx
                .recv()
                .map_err(|_| flume::RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(b) => Ok(Some(b)),
            Err(flume::RecvTimeoutError::Timeout) => Ok(None),
            Err(flume::RecvTimeoutError::Disconnected) => Err(Error::closed("delivery queue")),
        }
    }
}

/// What a front end made of one batch: the first `handled` events succeeded, then `failure`
/// (the reason the next one failed), if any. The core expands it: events before `handled`
/// are acknowledged, the failed one is retried or dead-lettered, and every later one was not
/// run and is delivered again with the same attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Completion {
    pub(crate) handled: usize,
    pub(crate) failure: Option<String>,
    /// The front end can never run this subscription's handlers again (see
    /// [`Batch::release`]): nothing of the batch ran.
    pub(crate) released: bool,
}

impl Completion {
    /// One outcome per event of a batch of `n`.
    pub(crate) fn outcomes(&self, n: usize) -> Vec<Outcome> {
        let handled = self.handled.min(n);
        let mut out = vec![Outcome::Ack; handled];
        if handled < n {
            if let Some(reason) = &self.failure {
                out.push(Outcome::Nack(reason.clone()));
            }
        }
        out.resize(n, Outcome::Skipped);
        out
    }
}

/// Events of one lane to handle in order; report with [`Batch::complete`].
///
/// Handle the events in order and stop at the first failure; report how many succeeded and
/// why the next one failed. Dropping a batch without completing it fails its first event
/// (the one a front end that gave up was handling) and delivers the rest again.
#[derive(Debug)]
pub struct Batch {
    pub(crate) events: Vec<Event>,
    pub(crate) reply: Option<tokio::sync::oneshot::Sender<Completion>>,
    pub(crate) lane: u32,
    pub(crate) token: u64,
}

impl Batch {
    /// The events, in the order they must be handled.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The lane this batch belongs to.
    pub fn lane(&self) -> u32 {
        self.lane
    }

    /// The token of the subscription it belongs to (see [`DeliveryQueue`]).
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Reports the batch: the first `handled` events succeeded; `failure`, if any, is why the
    /// next one failed (it is retried with backoff, or dead-lettered after `max_attempts`).
    /// Events after that were not run: the core delivers them again, same attempt. `handled`
    /// past the end counts as every event.
    pub fn complete(mut self, handled: usize, failure: Option<String>) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(Completion {
                handled,
                failure,
                released: false,
            });
        }
    }

    /// Gives the batch back unhandled because the front end can never run this subscription's
    /// handlers again: the event loop they ran on is closed, the runtime that hosted them is
    /// going away. No attempt is counted; the lane stops taking events, and what it held is
    /// counted as dropped and left unacknowledged, so a broker with acknowledgements delivers it
    /// again to the group's other members (after its ack wait or claim time). On `memory://`
    /// nothing delivers them again: they are lost, and the lane logs an error saying so.
    pub fn release(mut self) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(Completion {
                released: true,
                ..Completion::default()
            });
        }
    }

    /// Reports every event as handled.
    pub fn ack_all(self) {
        let n = self.events.len();
        self.complete(n, None);
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(Completion {
                handled: 0,
                failure: Some("the batch was dropped without a result".into()),
                released: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_validate_and_backoff() {
        SubscribeOptions::new().validate().unwrap();
        for bad in [
            SubscribeOptions::new().concurrency(0),
            SubscribeOptions::new().max_attempts(0),
            SubscribeOptions::new().group("a b"),
            SubscribeOptions::new().queue_size(0),
        ] {
            assert_eq!(
                bad.validate().unwrap_err().kind(),
                ErrorKind::InvalidArgument
            );
        }
        let e = SubscribeOptions::new()
            .dead_letter("a..b")
            .validate()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidTopic);
        let o =
            SubscribeOptions::new().backoff(Duration::from_millis(10), Duration::from_millis(50));
        assert_eq!(o.backoff_for(1), Duration::from_millis(10));
        assert_eq!(o.backoff_for(2), Duration::from_millis(20));
        assert_eq!(o.backoff_for(3), Duration::from_millis(40));
        assert_eq!(o.backoff_for(4), Duration::from_millis(50));
        assert_eq!(o.backoff_for(100), Duration::from_millis(50));
        let c = Completion {
            handled: 1,
            failure: Some("boom".into()),
            released: false,
        };
        assert_eq!(
            c.outcomes(4),
            vec![
                Outcome::Ack,
                Outcome::Nack("boom".into()),
                Outcome::Skipped,
                Outcome::Skipped
            ]
        );
        let skip = Completion {
            handled: 2,
            failure: None,
            released: false,
        };
        assert_eq!(skip.outcomes(3)[2], Outcome::Skipped);
        let all = Completion {
            handled: 9,
            failure: Some("late".into()),
            released: false,
        };
        assert_eq!(all.outcomes(2), vec![Outcome::Ack, Outcome::Ack]);
        let j = SubscribeOptions::from_json(r#"{"group":"g","concurrency":4}"#).unwrap();
        assert_eq!(j.group.as_deref(), Some("g"));
        assert_eq!(j.max_attempts, 5);
        assert!(SubscribeOptions::from_json(r#"{"grup":"g"}"#).is_err());
    }
}
