//! `jetstream://`: NATS JetStream (at least once).
//!
//! One stream holds the bus's events: `jetstream.stream` (default `POLYBUS_<PREFIX>`) over
//! `jetstream.subjects` (default `<prefix>.>`), bound when it exists and created otherwise.
//! JetStream needs a prefix (a stream over `>` would capture every subject of the server), so
//! a bus with an empty `prefix` uses `polybus`.
//!
//! - `publish` resolves on the PubAck. `Nats-Msg-Id` is the event id, so a publish retried
//!   with the same id inside the stream's duplicate window is stored once. The publish is
//!   handed to the connection at once and only the PubAck is awaited, so many are in flight
//!   ([`Publishing::Submitted`]); `jetstream.max_pending_publishes` bounds them.
//! - A group is a durable pull consumer named after the group and the pattern
//!   (`polybus_<group>_<hash>`), with the pattern as its filter subject: every member of the
//!   group, in any process, pulls from it. `start` applies when the durable is created.
//! - A broadcast subscription gets its own uniquely named consumer, deleted on unsubscribe
//!   (and by the server after `jetstream.inactive_threshold_ms` if its process died).
//! - Acks are explicit, after the handler succeeded or the event was dead-lettered. While the
//!   dispatcher holds an event (a long handler, a retry waiting for its backoff) it sends
//!   "in progress" (`+WPI`) every third of `ack_wait`, so the broker does not redeliver it.
//!   Failed handlers are retried locally by the dispatcher, never by a nak: a nak with delay
//!   would let later events of the same key overtake the failed one. The broker redelivers
//!   only what was not acked in time (a crash), and `attempt` then comes from its delivery
//!   count. `jetstream.max_deliver` is a safety net for events that crash their consumer.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    context::PublishErrorKind,
    stream::{RetentionPolicy, StorageType},
};
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::{
    nats::{decode, encode_headers, Connection, StopPump, DRAIN_LIMIT},
    Acker, Backend, BoxFut, ChannelSource, Delivery, Publishing, Source, Subscribed, Unsubscribe,
};
use crate::{
    config::{Config, JetStreamConfig},
    connection::ConnectionState,
    error::{Error, ErrorKind, Result},
    event::Event,
    message::Message,
    subscription::{Start, SubscribeOptions},
    topic::Pattern,
};

/// The prefix of a bus whose `prefix` is empty.
pub(crate) const DEFAULT_PREFIX: &str = "polybus";

/// `jetstream://`.
pub(crate) struct JetStreamBackend {
    conn: Arc<Connection>,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    stream_name: String,
    cfg: JetStreamConfig,
    close_timeout: Duration,
}

fn backend_error(what: String, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Backend, format!("{what}: {e}"))
}

impl JetStreamBackend {
    pub(crate) async fn open(
        config: &Config,
        state: &watch::Sender<ConnectionState>,
    ) -> Result<Self> {
        let conn = Arc::new(Connection::open(config, state, DEFAULT_PREFIX).await?);
        let cfg = config.jetstream.clone();
        let js = jetstream::context::ContextBuilder::new()
            .timeout(Config::duration(config.publish_timeout_ms.max(1)))
            .max_ack_inflight(cfg.max_pending_publishes)
            .build(conn.client.clone());
        let prefix = conn.wire_prefix.trim_end_matches('.').to_owned();
        let stream_name = cfg
            .stream
            .clone()
            .unwrap_or_else(|| format!("POLYBUS_{}", prefix.to_uppercase().replace('.', "_")));
        let subjects = if cfg.subjects.is_empty() {
            vec![format!("{prefix}.>")]
        } else {
            cfg.subjects.clone()
        };
        let stream_config = jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: subjects.clone(),
            retention: match cfg.retention.as_str() {
                "interest" => RetentionPolicy::Interest,
                "workqueue" => RetentionPolicy::WorkQueue,
                _ => RetentionPolicy::Limits,
            },
            storage: match cfg.storage.as_str() {
                "memory" => StorageType::Memory,
                _ => StorageType::File,
            },
            max_age: Config::duration(cfg.max_age_ms),
            max_bytes: cfg.max_bytes,
            num_replicas: cfg.replicas.max(1),
            ..Default::default()
        };
        let stream = js.get_or_create_stream(stream_config).await.map_err(|e| {
            let text = e.to_string();
            let hint = if text.contains("no responders") || text.contains("timed out") {
                " (is JetStream enabled on the server? nats-server needs -js)"
            } else if text.contains("overlap") {
                " (another stream covers these subjects: set jetstream.stream to bind it)"
            } else {
                ""
            };
            backend_error(
                format!(
                    "stream {stream_name:?} over {subjects:?} on {}{hint}",
                    conn.shown_url
                ),
                e,
            )
        })?;
        Ok(JetStreamBackend {
            conn,
            js,
            stream,
            stream_name,
            cfg,
            close_timeout: Config::duration(config.close_timeout_ms),
        })
    }

    async fn consumer(&self, name: &str, config: pull::Config) -> Result<PullConsumer> {
        let filter = config.filter_subject.clone();
        self.stream
            .get_or_create_consumer(name, config)
            .await
            .map_err(|e| {
                let text = e.to_string();
                let kind = if text.contains("filter subject") || text.contains("subset") {
                    ErrorKind::Unsupported
                } else {
                    ErrorKind::Backend
                };
                Error::new(
                    kind,
                    format!(
                        "consumer {name:?} for {filter:?} on stream {:?}: {e}",
                        self.stream_name
                    ),
                )
            })
    }
}

fn publish_error(topic: &str, e: jetstream::context::PublishError) -> Error {
    let kind = match e.kind() {
        PublishErrorKind::TimedOut => ErrorKind::Timeout,
        PublishErrorKind::BrokenPipe => ErrorKind::Connection,
        PublishErrorKind::StreamNotFound => ErrorKind::Backend,
        _ => ErrorKind::Backend,
    };
    Error::new(kind, format!("publish on {topic:?}: {e}"))
}

/// A durable consumer name for a group and filter: `polybus_<group>_<hash of the filter>`.
fn group_consumer_name(group: &str, filter: &str) -> String {
    // FNV-1a: stable across processes and versions, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in filter.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let g: String = group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("polybus_{g}_{h:016x}")
}

impl Backend for JetStreamBackend {
    fn publish(&self, message: Arc<Message>) -> Publishing {
        let subject = self.conn.subject(&message.topic);
        let headers = encode_headers(&message, true);
        let js = self.js.clone();
        let payload = message.payload.clone();
        let mut submit =
            Box::pin(async move { js.publish_with_headers(subject, headers, payload).await });
        match (&mut submit).now_or_never() {
            Some(Ok(ack)) => Publishing::Submitted(Box::pin(async move {
                ack.await
                    .map(|_| ())
                    .map_err(|e| publish_error(&message.topic, e))
            })),
            Some(Err(e)) => Publishing::Done(Err(publish_error(&message.topic, e))),
            // Too many PubAcks outstanding, or the connection's queue is full: later publishes
            // wait behind this one.
            None => Publishing::Pending(Box::pin(async move {
                let ack = submit.await.map_err(|e| publish_error(&message.topic, e))?;
                ack.await
                    .map(|_| ())
                    .map_err(|e| publish_error(&message.topic, e))
            })),
        }
    }

    fn subscribe<'a>(
        &'a self,
        pattern: &'a Pattern,
        options: &'a SubscribeOptions,
    ) -> BoxFut<'a, Result<Subscribed>> {
        Box::pin(async move {
            let filter = self.conn.subject(pattern.as_str());
            let (name, broadcast) = match &options.group {
                Some(g) => (group_consumer_name(g, &filter), false),
                None => (format!("polybus_b_{}", uuid::Uuid::new_v4().simple()), true),
            };
            let config = pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!(
                    "polybus {} {}",
                    options.group.as_deref().unwrap_or("(broadcast)"),
                    pattern.as_str()
                )),
                deliver_policy: match options.start {
                    Start::Earliest => DeliverPolicy::All,
                    Start::New => DeliverPolicy::New,
                },
                ack_policy: AckPolicy::Explicit,
                ack_wait: Config::duration(self.cfg.ack_wait_ms),
                max_deliver: self.cfg.max_deliver,
                filter_subject: filter.clone(),
                max_ack_pending: self.cfg.max_ack_pending,
                inactive_threshold: if broadcast {
                    Config::duration(self.cfg.inactive_threshold_ms)
                } else {
                    Duration::ZERO
                },
                ..Default::default()
            };
            let consumer = self.consumer(&name, config.clone()).await?;
            let batch = (options.queue_size as usize)
                .min(self.cfg.max_ack_pending.max(1) as usize)
                .clamp(1, 1024);
            let messages = consumer
                .stream()
                .max_messages_per_batch(batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(|e| backend_error(format!("pulling from consumer {name:?}"), e))?;
            let (tx, rx) = flume::bounded(options.queue_size as usize);
            let (stop_tx, stop) = watch::channel(false);
            let pump = Pump {
                stream: self.stream.clone(),
                client: self.conn.client.clone(),
                conn: self.conn.clone(),
                name,
                config,
                batch,
                broadcast,
                progress_every: Config::duration(self.cfg.ack_wait_ms / 3),
            };
            tokio::spawn(pump.run(consumer, messages, tx, stop));
            Ok((
                Box::new(ChannelSource::new(rx)) as Box<dyn Source>,
                Box::new(StopPump(stop_tx)) as Box<dyn Unsubscribe>,
            ))
        })
    }

    fn close(&self) -> BoxFut<'_, Result<()>> {
        Box::pin(
            self.conn
                .close(self.close_timeout.min(Duration::from_secs(5))),
        )
    }
}

/// Moves messages from a pull consumer to a subscription's queue.
struct Pump {
    stream: jetstream::stream::Stream,
    client: async_nats::Client,
    conn: Arc<Connection>,
    name: String,
    config: pull::Config,
    batch: usize,
    broadcast: bool,
    progress_every: Duration,
}

impl Pump {
    async fn messages(&self) -> Option<(PullConsumer, pull::Stream)> {
        let consumer = self
            .stream
            .get_or_create_consumer(&self.name, self.config.clone())
            .await
            .ok()?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .ok()?;
        Some((consumer, messages))
    }

    /// The delivery of one message.
    fn delivery(&self, msg: jetstream::Message, last_seq: &mut u64) -> Delivery {
        let (attempt, published) = match msg.info() {
            Ok(info) => {
                *last_seq = (*last_seq).max(info.stream_sequence);
                (
                    u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
                    SystemTime::from(info.published),
                )
            }
            Err(_) => (1, SystemTime::now()),
        };
        let m = msg.message;
        let message = decode(
            self.conn.topic(m.subject.as_str()),
            m.headers.as_ref(),
            m.payload,
            published,
        );
        let acker = m.reply.map(|reply| {
            Box::new(JetStreamAcker {
                client: self.client.clone(),
                reply,
                every: self.progress_every,
            }) as Box<dyn Acker>
        });
        Delivery {
            event: Event::new(Arc::new(message), attempt),
            acker,
        }
    }

    async fn run(
        self,
        consumer: PullConsumer,
        messages: pull::Stream,
        tx: flume::Sender<Delivery>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut current = Some((consumer, messages));
        let mut last_seq = 0u64;
        loop {
            let Some((_, messages)) = current.as_mut() else {
                // The consumer went away (deleted by an operator, lost by the server): make it
                // again, after a pause.
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                current = self.messages().await;
                continue;
            };
            let next = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                m = messages.next() => m,
            };
            let msg = match next {
                None => {
                    current = None;
                    continue;
                }
                Some(Err(e)) => {
                    if self.lost(&e) {
                        current = None;
                    }
                    continue;
                }
                Some(Ok(msg)) => msg,
            };
            let d = self.delivery(msg, &mut last_seq);
            // Never drop a delivery in hand: the lanes keep draining while stopping.
            if tx.send_async(d).await.is_err() {
                break;
            }
        }
        // Stopped: hand over what the stream held for this consumer when it stopped (the
        // events published before an unsubscribe or a close), bounded in time; the rest stays
        // with a group's durable consumer for its other members or its next run.
        if let Some((consumer, messages)) = current.as_mut() {
            let drained = async {
                loop {
                    let Ok(info) = consumer.get_info().await else {
                        return;
                    };
                    if info.num_pending == 0 && last_seq >= info.delivered.stream_sequence {
                        return;
                    }
                    match tokio::time::timeout(Duration::from_millis(200), messages.next()).await {
                        Ok(Some(Ok(msg))) => {
                            let d = self.delivery(msg, &mut last_seq);
                            if tx.send_async(d).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Ok(Some(Err(e))) => {
                            if self.lost(&e) {
                                return;
                            }
                        }
                        // Nothing left for this consumer, and nothing more arrives for this member
                        // (the rest went to other members of its group).
                        Err(_) if info.num_pending == 0 => return,
                        Err(_) => {}
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_LIMIT, drained).await;
        }
        drop(current);
        // Dropping the pull stream unsubscribes its inbox from a task of the client's: let that
        // go out, then make a round trip, so the server has forgotten this member's waiting
        // pull request before the unsubscribe returns. Otherwise an event published right
        // after could be handed to that request, reach nobody, and wait out `ack_wait` before
        // another member gets it.
        tokio::task::yield_now().await;
        crate::backend::nats::round_trip(&self.client).await;
        drop(tx);
        if self.broadcast {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                self.stream.delete_consumer(&self.name),
            )
            .await;
        }
    }

    /// Logs a pull error; true when the consumer is gone and must be made again.
    fn lost(&self, e: &pull::MessagesError) -> bool {
        use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
        match e.kind() {
            K::ConsumerDeleted | K::NoResponders | K::PushBasedConsumer => {
                tracing::warn!(consumer = %self.name, error = %e,
                    "JetStream consumer lost; recreating it");
                true
            }
            _ => {
                tracing::debug!(consumer = %self.name, error = %e,
                    "JetStream pull error (retrying)");
                false
            }
        }
    }
}

/// Acknowledges one JetStream delivery by replying to its ack subject.
struct JetStreamAcker {
    client: async_nats::Client,
    reply: async_nats::Subject,
    every: Duration,
}

impl Acker for JetStreamAcker {
    fn ack(self: Box<Self>) -> BoxFut<'static, Result<()>> {
        Box::pin(async move {
            self.client
                .publish(self.reply, bytes::Bytes::from_static(b"+ACK"))
                .await
                .map_err(|e| Error::new(ErrorKind::Connection, format!("ack: {e}")))
        })
    }

    fn progress(&self) -> Option<BoxFut<'static, Result<()>>> {
        let client = self.client.clone();
        let reply = self.reply.clone();
        Some(Box::pin(async move {
            client
                .publish(reply, bytes::Bytes::from_static(b"+WPI"))
                .await
                .map_err(|e| Error::new(ErrorKind::Connection, format!("progress: {e}")))
        }))
    }

    fn progress_interval(&self) -> Option<Duration> {
        Some(self.every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_stable_and_valid() {
        let a = group_consumer_name("billing", "app.orders.*");
        assert_eq!(a, group_consumer_name("billing", "app.orders.*"));
        assert_ne!(a, group_consumer_name("billing", "app.orders.>"));
        assert!(a.starts_with("polybus_billing_"));
        assert!(!a.contains(['.', '*', '>', ' ']));
    }
}
