//! The transport trait every backend implements, and the backends.
//!
//! A backend moves events; it does not decide what to do with them. Acknowledgement policy,
//! retries with backoff, dead-lettering, per-key ordering and concurrency live in
//! [`dispatch`](crate::dispatch) and are the same for every backend. A backend supplies:
//!
//! - `publish`: hand one event to the transport and resolve once the transport has *accepted*
//!   it (memory: queued to every matching subscription; JetStream: PubAck; Redis: the XADD or
//!   PUBLISH reply; Kafka: delivery report);
//! - `subscribe`: a [`Source`] of [`Delivery`]s for a pattern, honouring `group` (competing
//!   consumers: a NATS queue group, a JetStream durable, a Redis or Kafka consumer group) and
//!   `start`, or rejecting what it cannot honour with [`ErrorKind::Unsupported`];
//! - per delivery, an optional [`Acker`]: at-least-once transports acknowledge only after the
//!   handler succeeded (or the event was dead-lettered), and may report progress while a slow
//!   handler or a retry backoff runs so the broker does not redeliver meanwhile.
//!
//! [`ErrorKind::Unsupported`]: crate::ErrorKind::Unsupported

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::watch;

use crate::{
    config::Config,
    connection::ConnectionState,
    error::{Error, ErrorKind, Result},
    event::Event,
    message::Message,
    subscription::SubscribeOptions,
    topic::Pattern,
};

#[cfg(any(feature = "nats", feature = "redis", feature = "kafka"))]
pub(crate) mod cetime;
#[cfg(feature = "jetstream")]
pub(crate) mod jetstream;
#[cfg(feature = "kafka")]
pub(crate) mod kafka;
#[cfg(feature = "memory")]
pub(crate) mod memory;
#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(feature = "redis")]
pub(crate) mod redis;

/// A boxed, sendable future.
pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The result of starting a publish.
pub(crate) enum Publishing {
    /// Accepted (or refused) already.
    Done(Result<()>),
    /// Not accepted yet and its place in the order is not fixed: publishes started after it on
    /// the same bus must wait until it completes (memory: a subscriber's queue is full).
    Pending(BoxFut<'static, Result<()>>),
    /// Handed to the transport, so its order is fixed; only the broker's confirmation is
    /// awaited (JetStream: the PubAck). Later publishes may start at once, so many
    /// confirmations overlap.
    #[cfg_attr(
        not(any(feature = "jetstream", feature = "redis", feature = "kafka")),
        allow(dead_code)
    )]
    Submitted(BoxFut<'static, Result<()>>),
}

/// One event handed to the dispatcher, with the means to settle it at the broker.
pub(crate) struct Delivery {
    pub(crate) event: Event,
    pub(crate) acker: Option<Box<dyn Acker>>,
}

/// Settles one delivery at the broker (at-least-once backends).
pub(crate) trait Acker: Send + Sync + 'static {
    /// The event was handled (or dead-lettered): the broker may forget it.
    fn ack(self: Box<Self>) -> BoxFut<'static, Result<()>>;

    /// The event is still held by the dispatcher (a slow handler, a retry waiting for its
    /// backoff): asks the broker not to redeliver it yet. `None` when there is nothing to send.
    fn progress(&self) -> Option<BoxFut<'static, Result<()>>> {
        None
    }

    /// How often [`progress`](Acker::progress) should be called while the dispatcher holds the
    /// event; `None` for never.
    fn progress_interval(&self) -> Option<Duration> {
        None
    }
}

/// A stream of deliveries for one subscription (or one lane of it).
pub(crate) trait Source: Send + 'static {
    /// The next delivery; `None` when the subscription has ended and everything was drained.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>>;
    /// A delivery if one is ready now, without waiting.
    fn try_next(&mut self) -> Option<Delivery>;
}

/// Stops a backend subscription: no new deliveries; the source drains, then ends.
pub(crate) trait Unsubscribe: Send + Sync + 'static {
    fn unsubscribe(&self);
}

/// What a backend subscription gives the dispatcher: its deliveries and the means to stop them.
pub(crate) type Subscribed = (Box<dyn Source>, Box<dyn Unsubscribe>);

/// A transport.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Starts publishing one prepared message.
    fn publish(&self, message: Arc<Message>) -> Publishing;

    /// Subscribes to `pattern`.
    fn subscribe<'a>(
        &'a self,
        pattern: &'a Pattern,
        options: &'a SubscribeOptions,
    ) -> BoxFut<'a, Result<Subscribed>>;

    /// Releases the connection. Subscriptions are already closed when this runs.
    fn close(&self) -> BoxFut<'_, Result<()>>;

    /// How many publishes of one `publish_batch` may await their confirmation at once.
    fn publish_window(&self) -> usize {
        1024
    }

    /// Events the transport's client dropped before the bus saw them (a NATS subscription
    /// past its capacity): counted in [`Stats::dropped`](crate::Stats::dropped).
    fn dropped(&self) -> u64 {
        0
    }
}

/// Future adapter: the next delivery of a source.
pub(crate) struct Next<'a>(pub(crate) &'a mut dyn Source);

impl Future for Next<'_> {
    type Output = Option<Delivery>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_next(cx)
    }
}

/// A source over a bounded channel (the memory backend and the per-lane queues use it).
///
/// It takes whatever is queued in one go (one lock per batch, not per event).
pub(crate) struct ChannelSource {
    rx: flume::Receiver<Delivery>,
    stream: flume::r#async::RecvStream<'static, Delivery>,
    ready: std::collections::VecDeque<Delivery>,
}

impl ChannelSource {
    pub(crate) fn new(rx: flume::Receiver<Delivery>) -> Self {
        ChannelSource {
            stream: rx.clone().into_stream(),
            rx,
            ready: Default::default(),
        }
    }
}

impl Source for ChannelSource {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        if let Some(d) = self.ready.pop_front() {
            return Poll::Ready(Some(d));
        }
        futures::Stream::poll_next(Pin::new(&mut self.stream), cx)
    }

    fn try_next(&mut self) -> Option<Delivery> {
        if self.ready.is_empty() {
            self.ready.extend(self.rx.drain());
        }
        self.ready.pop_front()
    }
}

/// Opens the backend named by `config.url`. Broker backends report their connection state on
/// `state`; it starts as `Connected`.
pub(crate) async fn open(
    config: &Config,
    state: &watch::Sender<ConnectionState>,
) -> Result<Box<dyn Backend>> {
    let _ = state;
    match config.scheme()? {
        #[cfg(feature = "memory")]
        "memory" => Ok(Box::new(memory::MemoryBackend::open(config)?)),
        #[cfg(feature = "nats")]
        "nats" => Ok(Box::new(nats::NatsBackend::open(config, state).await?)),
        #[cfg(feature = "jetstream")]
        "jetstream" => Ok(Box::new(
            jetstream::JetStreamBackend::open(config, state).await?,
        )),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Box::new(
            redis::RedisBackend::open(config, state, redis::Mode::Streams).await?,
        )),
        #[cfg(feature = "redis")]
        "redis+cluster" | "rediss+cluster" => Ok(Box::new(
            redis::RedisBackend::open(config, state, redis::Mode::ClusterStreams).await?,
        )),
        #[cfg(feature = "redis")]
        "redis+pubsub" | "rediss+pubsub" => Ok(Box::new(
            redis::RedisBackend::open(config, state, redis::Mode::PubSub).await?,
        )),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Box::new(kafka::KafkaBackend::open(config, state).await?)),
        other => Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "url {:?}: scheme {other:?} is not supported by this build",
                config.url
            ),
        )),
    }
}
