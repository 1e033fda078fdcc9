//! `kafka://host:9092[,host:9092...]`: Apache Kafka over librdkafka, at least once.
//!
//! - Topic `orders.created` is the Kafka topic `<prefix>.orders.created` (just the topic
//!   without a prefix). Topics are created through the admin API (`kafka.partitions`,
//!   `kafka.replication_factor`) the first time the bus publishes to one or subscribes to it;
//!   a topic that exists already is used as it is.
//! - `publish`: one idempotent producer per bus (`enable.idempotence`, `acks=all`); the event
//!   key is the Kafka message key (one key stays in one partition, in order), the metadata
//!   travels in `ce_` headers (CloudEvents Kafka binding, binary mode), the payload is the value.
//!   A publish is handed to the producer at once (its order is fixed) and resolves on the
//!   delivery report, so many deliveries are in flight together.
//! - A `group` is the Kafka consumer group of that name; a broadcast subscription is a group of
//!   its own, `polybus-b-<uuid>`, deleted when the subscription ends. Each subscription is one
//!   consumer (`cooperative-sticky` assignment) polled by a thread of its own.
//! - Offsets are committed only for handled events: per partition the consumer tracks the
//!   offsets handed to the dispatcher and not yet settled, and stores the *frontier* (the lowest
//!   unsettled offset, or the next one when none is unsettled), so a commit never passes an
//!   event still in flight, whatever `concurrency` is. Stored offsets are committed every
//!   `kafka.commit_interval_ms`, on revocation and when the subscription ends.
//! - `start: new` positions a group that has no committed offset at the end of each existing
//!   partition (a commit before joining); partitions that appear later (a topic created after
//!   the subscription, matched by a wildcard) are read from their start. `start: earliest`
//!   reads a new group from the start. A group with committed offsets resumes where it was.
//! - Wildcard patterns are regex subscriptions (`orders.*` is `^orders\.[^.]+$`), refreshed every
//!   `kafka.metadata_refresh_ms`. Events of several partitions read together are merged by
//!   their timestamps, so one publisher's events across topics keep their order where the
//!   broker hands them over together; a key's order *across topics* is best effort.
//! - Backpressure: when the subscription's queue is full the consumer pauses its partitions
//!   (and keeps polling, so the group's heartbeats and rebalances go on) and resumes them
//!   once there is room.
//! - `attempt` starts at 1 for every delivery from the broker (Kafka keeps no delivery count);
//!   local retries count on from it.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use parking_lot::{Mutex, RwLock};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::ClientContext,
    config::{ClientConfig, RDKafkaLogLevel},
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::{KafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, Header, Headers, Message as _, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
    topic_partition_list::{Offset, TopicPartitionList},
};
use tokio::sync::watch;

use crate::{
    backend::{
        cetime::{format_time, parse_time, CE_UNDERSCORED},
        Acker, Backend, BoxFut, ChannelSource, Delivery, Publishing, Source, Subscribed,
        Unsubscribe,
    },
    config::Config,
    connection::ConnectionState,
    error::{Error, ErrorKind, Result},
    event::Event,
    id::EventId,
    message::Message,
    subscription::{Start, SubscribeOptions},
    topic::Pattern,
};

/// Header names of the wire format (`docs/wire-format.md`): the CloudEvents Kafka binding.
pub(crate) const CE_SPECVERSION: &str = CE_UNDERSCORED.specversion;
pub(crate) const CE_ID: &str = CE_UNDERSCORED.id;
pub(crate) const CE_TYPE: &str = CE_UNDERSCORED.event_type;
pub(crate) const CE_SOURCE: &str = CE_UNDERSCORED.source;
pub(crate) const CE_TIME: &str = CE_UNDERSCORED.time;
/// Read (a key of a plain client's record that has none), never written: the key is the
/// record key.
pub(crate) const CE_PARTITIONKEY: &str = CE_UNDERSCORED.partitionkey;

/// The longest Kafka topic name.
const MAX_KAFKA_TOPIC: usize = 249;
/// How long a stopping subscription keeps reading what was published before it stopped.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// One poll's wait in the consumer thread.
const POLL: Duration = Duration::from_millis(50);
/// How long records of newly assigned partitions are held so that partitions assigned together
/// are merged by event time (their first fetches complete at different moments).
const SETTLE: Duration = Duration::from_millis(200);
/// How long the handed-over queue must stay full before the partitions are paused. Pausing
/// makes librdkafka drop what it prefetched and fetch it again after resuming (measured: a
/// stall of about 0.7 s), so a burst that the handlers absorb within this time never pauses;
/// meanwhile the thread stops polling, and the queue stays bounded.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// What every client of the bus shares: connection-state reporting and the last error seen.
#[derive(Clone)]
struct Ctx {
    state: watch::Sender<ConnectionState>,
    last_error: Arc<Mutex<Option<(RDKafkaErrorCode, String)>>>,
}

impl Ctx {
    fn connected(&self) {
        self.state.send_if_modified(|s| {
            if *s == ConnectionState::Disconnected {
                *s = ConnectionState::Connected;
                true
            } else {
                false
            }
        });
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "polybus::kafka", fac, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "polybus::kafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "polybus::kafka", fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "polybus::kafka", fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        tracing::debug!(target: "polybus::kafka", %error, reason, "librdkafka error");
        if let Some(code) = code {
            if code == RDKafkaErrorCode::AllBrokersDown {
                self.state.send_if_modified(|s| {
                    if *s == ConnectionState::Connected {
                        *s = ConnectionState::Disconnected;
                        true
                    } else {
                        false
                    }
                });
            }
            let mut last = self.last_error.lock();
            // "All brokers are down" follows the reason they are (refused credentials, a
            // refused connection): keep the reason.
            if code != RDKafkaErrorCode::AllBrokersDown || last.is_none() {
                *last = Some((code, reason.to_owned()));
            }
        }
    }
}

impl ConsumerContext for Ctx {}

/// `kafka://`.
pub(crate) struct KafkaBackend {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: crate::config::KafkaConfig,
    /// The settings of every client: servers, client id, security, raw properties.
    base: ClientConfig,
    ctx: Ctx,
    producer: FutureProducer<Ctx>,
    admin: AdminClient<Ctx>,
    /// The prefix and a dot (empty without a prefix).
    wire_prefix: String,
    /// Topics known to exist.
    created: RwLock<HashSet<String>>,
    servers: String,
    timeout: Duration,
    publish_timeout: Duration,
    close_timeout: Duration,
}

/// The bootstrap servers of a `kafka://` URL.
fn servers(url: &str) -> Result<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let rest = rest.trim_end_matches('/');
    let hosts: Vec<&str> = rest.split(',').map(str::trim).collect();
    if rest.is_empty() || hosts.iter().any(|h| h.is_empty() || h.contains('/')) {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("url {url:?}: expected kafka://host:port[,host:port...]"),
        ));
    }
    Ok(hosts.join(","))
}

/// The client settings every producer, consumer and admin client of the bus starts from.
fn base_config(config: &Config, servers: &str) -> ClientConfig {
    let k = &config.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers);
    let client_id = k.client_id.clone().unwrap_or_else(|| {
        if config.name.is_empty() {
            "polybus".to_owned()
        } else {
            config.name.clone()
        }
    });
    c.set("client.id", client_id);
    c.set(
        "socket.connection.setup.timeout.ms",
        config.connect_timeout_ms.max(1000).to_string(),
    );
    let tls = k.tls_ca.is_some() || k.tls_cert.is_some();
    let sasl = k.username.is_some();
    let protocol = k.security_protocol.clone().unwrap_or_else(|| {
        match (sasl, tls) {
            (true, true) => "sasl_ssl",
            (true, false) => "sasl_plaintext",
            (false, true) => "ssl",
            (false, false) => "plaintext",
        }
        .to_owned()
    });
    c.set("security.protocol", protocol);
    if let (Some(u), Some(p)) = (&k.username, &k.password) {
        c.set(
            "sasl.mechanism",
            k.sasl_mechanism.as_deref().unwrap_or("PLAIN"),
        );
        c.set("sasl.username", u);
        c.set("sasl.password", p);
    }
    if let Some(ca) = &k.tls_ca {
        c.set("ssl.ca.location", ca);
    }
    if let (Some(cert), Some(key)) = (&k.tls_cert, &k.tls_key) {
        c.set("ssl.certificate.location", cert);
        c.set("ssl.key.location", key);
    }
    c.set_log_level(RDKafkaLogLevel::Warning);
    for (name, value) in &k.properties {
        c.set(name, value);
    }
    c
}

/// An error of a client operation, by librdkafka's code.
fn kafka_error(what: &str, e: &KafkaError) -> Error {
    let kind = match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => ErrorKind::TooLarge,
        Some(
            RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed,
        ) => ErrorKind::Auth,
        Some(
            RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut,
        ) => ErrorKind::Connection,
        Some(RDKafkaErrorCode::InvalidTopic) => ErrorKind::InvalidTopic,
        _ => ErrorKind::Backend,
    };
    Error::new(kind, format!("kafka: {what}: {e}"))
}

impl Shared {
    fn wire(&self, topic: &str) -> String {
        let mut s = String::with_capacity(self.wire_prefix.len() + topic.len());
        s.push_str(&self.wire_prefix);
        s.push_str(topic);
        s
    }

    fn check_name(&self, wire: &str, kind: ErrorKind) -> Result<()> {
        if wire.len() > MAX_KAFKA_TOPIC {
            return Err(Error::new(
                kind,
                format!(
                    "{wire:?}: Kafka topic names are at most {MAX_KAFKA_TOPIC} characters \
                     (prefix included)"
                ),
            ));
        }
        Ok(())
    }

    /// The error of a connection that failed: the last error librdkafka reported (wrong
    /// credentials, a refused connection) says more than a timeout.
    fn failure(&self, what: &str, e: &KafkaError) -> Error {
        if let Some((code, reason)) = self.ctx.last_error.lock().clone() {
            let kind = match code {
                RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
                    ErrorKind::Auth
                }
                _ => ErrorKind::Connection,
            };
            if kind == ErrorKind::Auth
                || matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::OperationTimedOut
                            | RDKafkaErrorCode::AllBrokersDown
                            | RDKafkaErrorCode::BrokerTransportFailure
                    )
                )
            {
                return Error::new(kind, format!("kafka: {what} ({}): {reason}", self.servers));
            }
        }
        kafka_error(&format!("{what} ({})", self.servers), e)
    }

    /// Creates `topic` unless it is known to exist.
    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        if self.created.read().contains(topic) {
            return Ok(());
        }
        let new = NewTopic::new(
            topic,
            self.cfg.partitions,
            TopicReplication::Fixed(self.cfg.replication_factor),
        );
        // Creating a topic can take a while on a busy broker: as long as a publish may.
        let opts = AdminOptions::new()
            .request_timeout(Some(self.publish_timeout))
            .operation_timeout(Some(self.publish_timeout));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| self.failure(&format!("creating topic {topic:?}"), &e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    let kind = match code {
                        RDKafkaErrorCode::InvalidTopic => ErrorKind::InvalidTopic,
                        RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed => ErrorKind::Auth,
                        RDKafkaErrorCode::InvalidReplicationFactor
                        | RDKafkaErrorCode::InvalidPartitions => ErrorKind::InvalidConfig,
                        _ => ErrorKind::Backend,
                    };
                    return Err(Error::new(
                        kind,
                        format!("kafka: creating topic {t:?}: {code}"),
                    ));
                }
            }
        }
        self.created.write().insert(topic.to_owned());
        Ok(())
    }

    /// Hands a message to the producer; the future resolves on its delivery report.
    fn enqueue(
        self: &Arc<Self>,
        m: &Message,
        topic: &str,
    ) -> std::result::Result<BoxFut<'static, Result<()>>, KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 5);
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k.as_str(),
                value: Some(v.as_bytes()),
            });
        }
        let time = m.time.map(format_time);
        let attrs = [
            (CE_SPECVERSION, Some("1.0")),
            (CE_ID, Some(m.id.as_str())),
            (
                CE_TYPE,
                Some(m.event_type.as_deref().unwrap_or(m.topic.as_str())),
            ),
            (CE_SOURCE, m.source.as_deref()),
            (CE_TIME, time.as_deref()),
        ];
        for (k, v) in attrs {
            if let Some(v) = v {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
        }
        let millis = m
            .time
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64);
        let mut record = FutureRecord::<str, [u8]>::to(topic)
            .payload(m.payload.as_ref())
            .headers(headers);
        if let Some(k) = &m.key {
            record = record.key(k.as_str());
        }
        if let Some(ms) = millis {
            record = record.timestamp(ms);
        }
        let delivery = self.producer.send_result(record).map_err(|(e, _)| e)?;
        let shared = self.clone();
        let topic = topic.to_owned();
        Ok(Box::pin(async move {
            match delivery.await {
                Ok(Ok(_)) => {
                    shared.ctx.connected();
                    Ok(())
                }
                Ok(Err((e, _))) => Err(kafka_error(&format!("publish on {topic:?}"), &e)),
                Err(_) => Err(Error::new(
                    ErrorKind::Closed,
                    format!("kafka: publish on {topic:?}: the producer was closed"),
                )),
            }
        }))
    }

    /// Publishes once the producer's queue has room, within `publish_timeout`.
    async fn enqueue_when_room(self: Arc<Self>, m: Arc<Message>, topic: String) -> Result<()> {
        let deadline = Instant::now() + self.publish_timeout;
        loop {
            match self.enqueue(&m, &topic) {
                Ok(delivery) => return delivery.await,
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    if Instant::now() >= deadline {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "kafka: publish on {topic:?}: the producer queue stayed full \
                                 for {} ms",
                                self.publish_timeout.as_millis()
                            ),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => return Err(kafka_error(&format!("publish on {topic:?}"), &e)),
            }
        }
    }
}

impl KafkaBackend {
    pub(crate) async fn open(
        config: &Config,
        state: &watch::Sender<ConnectionState>,
    ) -> Result<Self> {
        let servers = servers(&config.url)?;
        let base = base_config(config, &servers);
        let k = &config.kafka;
        let ctx = Ctx {
            state: state.clone(),
            last_error: Arc::new(Mutex::new(None)),
        };
        let creating = |e: KafkaError| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("kafka: cannot create the client: {e}"),
            )
        };
        let mut pc = base.clone();
        pc.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", k.linger_ms.to_string())
            .set("compression.type", k.compression.as_str())
            .set(
                "message.timeout.ms",
                config.publish_timeout_ms.max(1).to_string(),
            )
            .set(
                "message.max.bytes",
                (config.max_payload + 64 * 1024).to_string(),
            );
        for (name, value) in &k.properties {
            pc.set(name, value);
        }
        let producer: FutureProducer<Ctx> =
            pc.create_with_context(ctx.clone()).map_err(creating)?;
        let admin: AdminClient<Ctx> = base.create_with_context(ctx.clone()).map_err(creating)?;
        let wire_prefix = if config.prefix.is_empty() {
            String::new()
        } else {
            format!("{}.", config.prefix)
        };
        let shared = Arc::new(Shared {
            cfg: k.clone(),
            base,
            ctx,
            producer,
            admin,
            wire_prefix,
            created: RwLock::new(HashSet::new()),
            servers,
            timeout: Config::duration(config.connect_timeout_ms.max(1)),
            publish_timeout: Config::duration(config.publish_timeout_ms.max(1)),
            close_timeout: Config::duration(config.close_timeout_ms),
        });
        // One metadata round trip proves the servers answer (and accept the credentials)
        // within the connect timeout.
        let probe = shared.clone();
        tokio::task::spawn_blocking(move || {
            // Until a little before the bus's own connect timeout, so the error says why; in
            // short slices, so that a failure librdkafka will only retry (an untrusted
            // certificate, refused credentials) ends the wait at once instead of at the end.
            let deadline = std::time::Instant::now() + probe.timeout.mul_f64(0.9);
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let slice = left.min(Duration::from_millis(500));
                match probe.producer.client().fetch_metadata(None, slice) {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        let hopeless = matches!(
                            probe.ctx.last_error.lock().as_ref().map(|(code, _)| *code),
                            Some(
                                RDKafkaErrorCode::SSL
                                    | RDKafkaErrorCode::Authentication
                                    | RDKafkaErrorCode::SaslAuthenticationFailed
                            )
                        );
                        if hopeless || left <= slice {
                            return Err(probe.failure("connecting", &e));
                        }
                    }
                }
            }
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("kafka: connect task: {e}")))??;
        Ok(KafkaBackend { shared })
    }
}

impl Backend for KafkaBackend {
    fn publish(&self, message: Arc<Message>) -> Publishing {
        let s = &self.shared;
        let topic = s.wire(&message.topic);
        if let Err(e) = s.check_name(&topic, ErrorKind::InvalidTopic) {
            return Publishing::Done(Err(e));
        }
        if !s.created.read().contains(&topic) {
            let s = s.clone();
            return Publishing::Pending(Box::pin(async move {
                s.ensure_topic(&topic).await?;
                s.enqueue_when_room(message, topic).await
            }));
        }
        match s.enqueue(&message, &topic) {
            Ok(delivery) => Publishing::Submitted(delivery),
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                Publishing::Pending(Box::pin(s.clone().enqueue_when_room(message, topic)))
            }
            Err(e) => Publishing::Done(Err(kafka_error(&format!("publish on {topic:?}"), &e))),
        }
    }

    fn subscribe<'a>(
        &'a self,
        pattern: &'a Pattern,
        options: &'a SubscribeOptions,
    ) -> BoxFut<'a, Result<Subscribed>> {
        Box::pin(subscribe(&self.shared, pattern, options))
    }

    /// librdkafka queues up to 100,000 records; a wide window lets its batches fill.
    fn publish_window(&self) -> usize {
        16_384
    }

    fn close(&self) -> BoxFut<'_, Result<()>> {
        Box::pin(async move {
            let s = self.shared.clone();
            let timeout = s.close_timeout;
            tokio::task::spawn_blocking(move || s.producer.flush(timeout))
                .await
                .map_err(|e| Error::new(ErrorKind::Internal, format!("kafka: flush task: {e}")))?
                .map_err(|e| kafka_error("flushing the producer on close", &e))
        })
    }
}

/// The regex subscription of a wildcard pattern: `orders.*` is `^orders\.[^.]+$`, `orders.>`
/// is `^orders\..+$`.
fn regex(wire_prefix: &str, pattern: &str) -> String {
    let mut r = String::from("^");
    for c in wire_prefix.chars() {
        if c == '.' {
            r.push_str("\\.");
        } else {
            r.push(c);
        }
    }
    for (i, tok) in pattern.split('.').enumerate() {
        if i > 0 {
            r.push_str("\\.");
        }
        match tok {
            "*" => r.push_str("[^.]+"),
            ">" => r.push_str(".+"),
            t => r.push_str(t),
        }
    }
    r.push('$');
    r
}

/// The settling state of one assigned partition.
#[derive(Default)]
struct Part {
    /// Offsets handed to the dispatcher and not settled yet.
    inflight: BTreeSet<i64>,
    /// The offset after the highest one handed over.
    next: i64,
    /// The frontier: the offset the next commit may carry.
    stored: i64,
    /// The frontier moved since it was last handed to librdkafka.
    dirty: bool,
}

type PartKey = (Arc<str>, i32);

/// The frontier of every partition this consumer has handed events from.
#[derive(Default)]
struct Tracker {
    parts: Mutex<HashMap<PartKey, Part>>,
}

impl Tracker {
    fn handed(&self, key: &PartKey, offset: i64) {
        let mut parts = self.parts.lock();
        let p = parts.entry(key.clone()).or_insert_with(|| Part {
            next: offset,
            stored: offset,
            ..Part::default()
        });
        p.inflight.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// Settles one offset; the new frontier when it moved.
    fn settle(&self, key: &PartKey, offset: i64) -> Option<i64> {
        let mut parts = self.parts.lock();
        let p = parts.get_mut(key)?;
        p.inflight.remove(&offset);
        let frontier = p.inflight.first().copied().unwrap_or(p.next);
        if frontier > p.stored {
            p.stored = frontier;
            p.dirty = true;
            Some(frontier)
        } else {
            None
        }
    }

    /// The frontiers that moved since the last call (`only`: of these partitions).
    fn take_moved(&self, only: Option<&TopicPartitionList>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((t, n), p) in self.parts.lock().iter_mut() {
            if !p.dirty || only.is_some_and(|o| o.find_partition(t, *n).is_none()) {
                continue;
            }
            p.dirty = false;
            let _ = tpl.add_partition_offset(t, *n, Offset::Offset(p.stored));
        }
        tpl
    }

    fn forget(&self, topic: &str, partition: i32) {
        self.parts
            .lock()
            .retain(|(t, p), _| !(&**t == topic && *p == partition));
    }

    fn unsettled(&self) -> usize {
        self.parts.lock().values().map(|p| p.inflight.len()).sum()
    }
}

/// The consumer's context: tracks revocations and assignments.
struct SubCtx {
    base: Ctx,
    tracker: Arc<Tracker>,
    /// Set once the first assignment (possibly empty) arrived.
    assigned: watch::Sender<bool>,
    /// Partitions revoked during the last poll, so queued events of them are dropped.
    revoked: Mutex<Vec<(String, i32)>>,
    /// Until when records are held after an assignment (see [`SETTLE`]).
    settle_until: Mutex<Option<Instant>>,
}

impl ClientContext for SubCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.base.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason)
    }
}

impl ConsumerContext for SubCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // What was handled on these partitions is stored now, so the commit made on
            // revocation carries it.
            store(consumer, self.tracker.take_moved(Some(tpl)));
            let mut revoked = self.revoked.lock();
            for e in tpl.elements() {
                // Acks of these partitions' events can no longer be stored: the new owner
                // starts from the last commit (at least once).
                self.tracker.forget(e.topic(), e.partition());
                revoked.push((e.topic().to_owned(), e.partition()));
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::debug!(target: "polybus::kafka", partitions = tpl.count(), "assigned");
                // One partition has nothing to be merged with: no need to hold its records.
                if tpl.count() > 1 {
                    *self.settle_until.lock() = Some(Instant::now() + SETTLE);
                }
                self.assigned.send_replace(true);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(target: "polybus::kafka", error = %e, "rebalance failed");
            }
        }
    }
}

/// One subscription's consumer, shared by its thread and the ackers of its events.
struct Sub {
    consumer: BaseConsumer<SubCtx>,
    tracker: Arc<Tracker>,
}

impl Sub {
    /// Settles one record. Its partition's frontier is handed to librdkafka by the consumer
    /// thread (at every poll, before a revocation and at the end), not per event.
    fn settle(&self, topic: &Arc<str>, partition: i32, offset: i64) {
        self.tracker.settle(&(topic.clone(), partition), offset);
    }

    /// Hands the frontiers that moved to librdkafka for the next commit.
    fn store_moved(&self) {
        store(&self.consumer, self.tracker.take_moved(None));
    }
}

/// Stores offsets for the next commit.
fn store(consumer: &BaseConsumer<SubCtx>, tpl: TopicPartitionList) {
    if tpl.count() == 0 {
        return;
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // A partition was revoked meanwhile: its new owner handles it again.
        tracing::debug!(target: "polybus::kafka", error = %e, "offsets not stored");
    }
}

/// Settles one record: moves its partition's frontier.
struct KafkaAcker {
    sub: Arc<Sub>,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
}

impl Acker for KafkaAcker {
    fn ack(self: Box<Self>) -> BoxFut<'static, Result<()>> {
        self.sub.settle(&self.topic, self.partition, self.offset);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Stops a consumer thread.
struct StopThread(Arc<AtomicBool>);

impl Unsubscribe for StopThread {
    fn unsubscribe(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A delivery with where it came from.
struct Handed {
    part: PartKey,
    /// The event time in microseconds, the merge order of several partitions.
    micros: i64,
    delivery: Delivery,
}

async fn subscribe(
    shared: &Arc<Shared>,
    pattern: &Pattern,
    options: &SubscribeOptions,
) -> Result<Subscribed> {
    let wildcard = pattern.is_wildcard();
    let topic = shared.wire(pattern.as_str());
    let subscription = if wildcard {
        regex(&shared.wire_prefix, pattern.as_str())
    } else {
        shared.check_name(&topic, ErrorKind::InvalidPattern)?;
        shared.ensure_topic(&topic).await?;
        topic.clone()
    };
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    let (group, broadcast) = match &options.group {
        Some(g) => (g.clone(), false),
        None => (format!("polybus-b-{uuid}"), true),
    };
    let mut cc = shared.base.clone();
    cc.set("group.id", &group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            shared.cfg.commit_interval_ms.to_string(),
        )
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            shared.cfg.session_timeout_ms.to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (shared.cfg.session_timeout_ms / 3)
                .clamp(1, 3000)
                .to_string(),
        )
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100");
    if wildcard {
        cc.set(
            "topic.metadata.refresh.interval.ms",
            shared.cfg.metadata_refresh_ms.to_string(),
        );
    }
    for (name, value) in &shared.cfg.properties {
        cc.set(name, value);
    }
    let tracker = Arc::new(Tracker::default());
    let (assigned_tx, mut assigned) = watch::channel(false);
    let ctx = SubCtx {
        base: shared.ctx.clone(),
        tracker: tracker.clone(),
        assigned: assigned_tx,
        revoked: Mutex::new(Vec::new()),
        settle_until: Mutex::new(None),
    };
    let consumer: BaseConsumer<SubCtx> = cc.create_with_context(ctx).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("kafka: cannot create a consumer: {e}"),
        )
    })?;
    let sub = Arc::new(Sub { consumer, tracker });
    // Whether a partition exists yet: a wildcard that matches no topic has nothing to wait for.
    let any_partition = {
        let (sub, shared, pattern) = (sub.clone(), shared.clone(), pattern.clone());
        let (start, subscription) = (options.start, subscription.clone());
        tokio::task::spawn_blocking(move || {
            let covered = covered(&sub, &shared, &pattern)?;
            let any = covered.count() > 0;
            if start == Start::New && any {
                position_at_end(&sub, &shared, covered, broadcast)?;
            }
            sub.consumer
                .subscribe(&[subscription.as_str()])
                .map_err(|e| kafka_error(&format!("subscribing to {subscription:?}"), &e))?;
            Ok::<_, Error>(any)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("kafka: subscribe task: {e}")))??
    };
    let (tx, rx) = flume::bounded(options.queue_size.max(1) as usize);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = Thread {
        sub: sub.clone(),
        shared: shared.clone(),
        wire_prefix: shared.wire_prefix.clone(),
        tx,
        stop: stop.clone(),
        limit: options.queue_size.max(1) as usize,
        broadcast: broadcast.then_some(group),
        runtime: tokio::runtime::Handle::current(),
    };
    std::thread::Builder::new()
        .name("polybus-kafka".into())
        .spawn(move || thread.run())
        .map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("kafka: cannot start a consumer thread: {e}"),
            )
        })?;
    // The subscription is in place once the group assigned this member its partitions (none
    // when the group has more members than partitions, or no topic matches a wildcard yet).
    let wait = shared.timeout.max(Duration::from_secs(30));
    if any_partition
        && tokio::time::timeout(wait, assigned.wait_for(|a| *a))
            .await
            .is_err()
    {
        stop.store(true, Ordering::Release);
        let reason = shared
            .ctx
            .last_error
            .lock()
            .clone()
            .map(|(_, r)| format!(": {r}"))
            .unwrap_or_default();
        return Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "kafka: subscribing to {pattern}: the group {:?} assigned no partitions within \
                 {} ms{reason}",
                options.group.as_deref().unwrap_or("(broadcast)"),
                wait.as_millis(),
                pattern = pattern.as_str(),
            ),
        ));
    }
    Ok((
        Box::new(ChannelSource::new(rx)) as Box<dyn Source>,
        Box::new(StopThread(stop)) as Box<dyn Unsubscribe>,
    ))
}

/// The existing partitions a subscription covers.
fn covered(sub: &Sub, shared: &Shared, pattern: &Pattern) -> Result<TopicPartitionList> {
    let topic = (!pattern.is_wildcard()).then(|| shared.wire(pattern.as_str()));
    let md = sub
        .consumer
        .fetch_metadata(topic.as_deref(), shared.timeout)
        .map_err(|e| shared.failure("reading metadata", &e))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        let Some(name) = t.name().strip_prefix(shared.wire_prefix.as_str()) else {
            continue;
        };
        if t.error().is_some() || name.starts_with("__") || !pattern.matches(name) {
            continue;
        }
        for p in t.partitions() {
            tpl.add_partition(t.name(), p.id());
        }
    }
    Ok(tpl)
}

/// `start: new`: commits the end of every existing partition the subscription covers for which
/// the group has no committed offset, so the group starts there, while partitions that appear
/// later start at their beginning (`auto.offset.reset=earliest`).
fn position_at_end(
    sub: &Sub,
    shared: &Shared,
    tpl: TopicPartitionList,
    broadcast: bool,
) -> Result<()> {
    let c = &sub.consumer;
    let timeout = shared.timeout;
    // A topic created a moment ago may not have a leader everywhere yet, and a broker that
    // just (re)started may not have loaded its groups: those answers are retried until the
    // connect timeout, as librdkafka does for its own requests.
    let deadline = std::time::Instant::now() + timeout;
    let committed = if broadcast {
        tpl
    } else {
        retry_transient(deadline, || c.committed_offsets(tpl.clone(), timeout))
            .map_err(|e| shared.failure("reading the group's committed offsets", &e))?
    };
    let mut init = TopicPartitionList::new();
    for e in committed.elements() {
        if matches!(e.offset(), Offset::Offset(_)) {
            continue;
        }
        let (_, high) = retry_transient(deadline, || {
            c.fetch_watermarks(e.topic(), e.partition(), timeout)
        })
        .map_err(|err| shared.failure(&format!("reading the end of {:?}", e.topic()), &err))?;
        let _ = init.add_partition_offset(e.topic(), e.partition(), Offset::Offset(high));
    }
    if init.count() > 0 {
        if let Err(e) = c.commit(&init, CommitMode::Sync) {
            // Members of the group are active: the group has positions of its own.
            tracing::debug!(target: "polybus::kafka", error = %e,
                "the group's start positions were not committed");
        }
    }
    Ok(())
}

/// Runs `op` until it succeeds, fails otherwise than transiently, or `deadline` passes. The
/// transient answers are those of a partition without a leader yet and of a group coordinator
/// that is moving or still loading (right after a broker starts). Runs on a blocking thread.
fn retry_transient<T>(
    deadline: std::time::Instant,
    mut op: impl FnMut() -> rdkafka::error::KafkaResult<T>,
) -> rdkafka::error::KafkaResult<T> {
    loop {
        match op() {
            Err(err)
                if std::time::Instant::now() < deadline
                    && matches!(
                        err.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::NotLeaderForPartition
                                | RDKafkaErrorCode::LeaderNotAvailable
                                | RDKafkaErrorCode::UnknownTopicOrPartition
                                | RDKafkaErrorCode::UnknownLeaderEpoch
                                | RDKafkaErrorCode::FencedLeaderEpoch
                                | RDKafkaErrorCode::NotCoordinator
                                | RDKafkaErrorCode::CoordinatorNotAvailable
                                | RDKafkaErrorCode::CoordinatorLoadInProgress
                        )
                    ) =>
            {
                // A pause before asking again.
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// The consumer thread of one subscription.
struct Thread {
    sub: Arc<Sub>,
    shared: Arc<Shared>,
    wire_prefix: String,
    tx: flume::Sender<Delivery>,
    stop: Arc<AtomicBool>,
    limit: usize,
    /// The group to delete at the end (a broadcast subscription's own).
    broadcast: Option<String>,
    runtime: tokio::runtime::Handle,
}

impl Thread {
    fn run(self) {
        let mut pending: VecDeque<Handed> = VecDeque::new();
        let mut holding: Vec<Handed> = Vec::new();
        let mut paused = false;
        let mut full_since: Option<Instant> = None;
        let mut topics: HashMap<String, Arc<str>> = HashMap::new();
        while !self.stop.load(Ordering::Acquire) {
            self.sub.store_moved();
            if !self.hand_over(&mut pending, POLL) {
                return self.finish();
            }
            let full = pending.len() >= self.limit;
            if !full {
                full_since = None;
                if paused {
                    self.set_paused(false);
                    paused = false;
                }
            } else if paused {
                // Partitions assigned while paused are paused too.
                self.set_paused(true);
            } else if full_since.get_or_insert_with(Instant::now).elapsed() >= PAUSE_AFTER {
                // The handlers have fallen behind for a while: pause, and keep polling so the
                // group's protocol (rebalances, the poll interval) goes on.
                self.set_paused(true);
                paused = true;
            } else {
                // Full for a moment: take nothing more until the handlers catch up.
                continue;
            }
            let wait = if !pending.is_empty() {
                Duration::ZERO
            } else if !holding.is_empty() {
                Duration::from_millis(10)
            } else {
                POLL
            };
            self.poll(wait, &mut pending, &mut holding, &mut topics, false);
        }
        // Stopped: hand over what was published before the stop (up to the partitions' ends as
        // they are now), bounded in time.
        let deadline = Instant::now() + DRAIN_LIMIT;
        if paused {
            self.set_paused(false);
        }
        let ends = self.ends(deadline);
        while Instant::now() < deadline && !self.reached(&ends) {
            self.poll(POLL, &mut pending, &mut holding, &mut topics, true);
        }
        self.poll(
            Duration::ZERO,
            &mut pending,
            &mut holding,
            &mut topics,
            true,
        );
        while !pending.is_empty() && Instant::now() < deadline {
            if !self.hand_over(&mut pending, POLL) {
                break;
            }
        }
        pending.clear();
        self.finish();
    }

    /// Sends queued deliveries while the subscription's queue has room, waiting up to `wait`
    /// for room for the first. `false` when the subscription is gone.
    fn hand_over(&self, pending: &mut VecDeque<Handed>, wait: Duration) -> bool {
        let mut waited = false;
        while let Some(h) = pending.pop_front() {
            let d = h.delivery;
            let r = if waited {
                self.tx.try_send(d).map_err(|e| match e {
                    flume::TrySendError::Full(d) => Some(d),
                    flume::TrySendError::Disconnected(_) => None,
                })
            } else {
                waited = true;
                self.tx.send_timeout(d, wait).map_err(|e| match e {
                    flume::SendTimeoutError::Timeout(d) => Some(d),
                    flume::SendTimeoutError::Disconnected(_) => None,
                })
            };
            match r {
                Ok(()) => {}
                Err(Some(d)) => {
                    pending.push_front(Handed { delivery: d, ..h });
                    return true;
                }
                Err(None) => return false,
            }
        }
        true
    }

    fn set_paused(&self, pause: bool) {
        let c = &self.sub.consumer;
        let Ok(assignment) = c.assignment() else {
            return;
        };
        let r = if pause {
            c.pause(&assignment)
        } else {
            c.resume(&assignment)
        };
        if let Err(e) = r {
            tracing::debug!(target: "polybus::kafka", error = %e, pause, "pause/resume failed");
        }
    }

    /// Polls once (waiting up to `wait`), then takes whatever else is ready, merging several
    /// partitions' records by event time. Right after an assignment records are held in
    /// `holding` for [`SETTLE`] (unless `now`), so partitions assigned together merge.
    fn poll(
        &self,
        wait: Duration,
        pending: &mut VecDeque<Handed>,
        holding: &mut Vec<Handed>,
        topics: &mut HashMap<String, Arc<str>>,
        now: bool,
    ) {
        let c = &self.sub.consumer;
        let mut got: Vec<Handed> = Vec::new();
        let mut next = c.poll(wait);
        while let Some(r) = next {
            match r {
                Ok(m) => {
                    self.shared.ctx.connected();
                    got.push(self.handed(&m, topics));
                }
                Err(e) => {
                    tracing::debug!(target: "polybus::kafka", error = %e, "consumer error");
                }
            }
            if got.len() >= 1024 {
                break;
            }
            next = c.poll(Duration::ZERO);
        }
        holding.extend(got);
        // Drop what was queued from partitions revoked meanwhile: their new owner has them.
        let revoked = std::mem::take(&mut *c.context().revoked.lock());
        if !revoked.is_empty() {
            let keep = |h: &Handed| {
                !revoked
                    .iter()
                    .any(|(t, p)| *t == *h.part.0 && *p == h.part.1)
            };
            pending.retain(keep);
            holding.retain(keep);
        }
        let settling = c
            .context()
            .settle_until
            .lock()
            .is_some_and(|t| Instant::now() < t);
        if (now || !settling) && !holding.is_empty() {
            merge_into(std::mem::take(holding), pending);
        }
    }

    fn handed(&self, m: &BorrowedMessage<'_>, topics: &mut HashMap<String, Arc<str>>) -> Handed {
        let wire = m.topic();
        let topic = match topics.get(wire) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = wire.into();
                topics.insert(wire.to_owned(), t.clone());
                t
            }
        };
        let millis = m.timestamp().to_millis().unwrap_or(0);
        let message = decode(
            wire.strip_prefix(self.wire_prefix.as_str()).unwrap_or(wire),
            m,
            millis,
        );
        let micros = message
            .time
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(millis.saturating_mul(1000), |d| d.as_micros() as i64);
        let part = (topic.clone(), m.partition());
        self.sub.tracker.handed(&part, m.offset());
        let acker = KafkaAcker {
            sub: self.sub.clone(),
            topic,
            partition: m.partition(),
            offset: m.offset(),
        };
        Handed {
            part,
            micros,
            delivery: Delivery {
                event: Event::new(Arc::new(message), 1),
                acker: Some(Box::new(acker)),
            },
        }
    }

    /// The end offset of every assigned partition now.
    fn ends(&self, deadline: Instant) -> Vec<(String, i32, i64)> {
        let c = &self.sub.consumer;
        let Ok(assignment) = c.assignment() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in assignment.elements() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok((_, high)) = c.fetch_watermarks(e.topic(), e.partition(), left) {
                out.push((e.topic().to_owned(), e.partition(), high));
            }
        }
        out
    }

    /// Whether the consumer has read every partition up to `ends`.
    fn reached(&self, ends: &[(String, i32, i64)]) -> bool {
        let Ok(position) = self.sub.consumer.position() else {
            return true;
        };
        ends.iter().all(|(t, p, end)| {
            // Nothing to read, or read up to the end.
            if *end == 0 {
                return true;
            }
            match position.find_partition(t, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o >= *end,
                // Not positioned yet: nothing was read; the committed position decides.
                _ => self
                    .sub
                    .consumer
                    .committed_offsets(
                        {
                            let mut tpl = TopicPartitionList::new();
                            tpl.add_partition(t, *p);
                            tpl
                        },
                        Duration::from_millis(500),
                    )
                    .ok()
                    .and_then(|c| c.find_partition(t, *p).map(|e| e.offset()))
                    .is_some_and(|o| matches!(o, Offset::Offset(o) if o >= *end)),
            }
        })
    }

    /// Waits (bounded) until every handed event is settled, commits, leaves the group.
    fn finish(self) {
        let Thread {
            sub,
            shared,
            tx,
            broadcast,
            runtime,
            ..
        } = self;
        drop(tx);
        let c = &sub.consumer;
        if let Ok(a) = c.assignment() {
            let _ = c.pause(&a);
        }
        let deadline = Instant::now() + shared.close_timeout + Duration::from_secs(1);
        // Events still held by the dispatcher hold the consumer too.
        while sub.tracker.unsettled() > 0
            && Arc::strong_count(&sub) > 1
            && Instant::now() < deadline
        {
            sub.store_moved();
            let _ = c.poll(POLL);
        }
        sub.store_moved();
        if let Err(e) = c.commit_consumer_state(CommitMode::Sync) {
            if e.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                tracing::debug!(target: "polybus::kafka", error = %e, "final commit failed");
            }
        }
        c.unsubscribe();
        // The consumer leaves the group when the last holder lets it go (now, unless an
        // event of it outlived the close timeout).
        let last = Arc::into_inner(sub);
        let closed = last.is_some();
        drop(last);
        if let (Some(group), true) = (broadcast, closed) {
            runtime.spawn(async move {
                let opts = AdminOptions::new().request_timeout(Some(shared.timeout));
                if let Err(e) = shared.admin.delete_groups(&[group.as_str()], &opts).await {
                    tracing::debug!(target: "polybus::kafka", group, error = %e,
                        "broadcast group not deleted");
                }
            });
        }
    }
}

/// Appends `got` to `pending`, merging the partitions' records by timestamp (each partition
/// keeps its own order).
fn merge_into(got: Vec<Handed>, pending: &mut VecDeque<Handed>) {
    let mut queues: Vec<(PartKey, VecDeque<Handed>)> = Vec::new();
    for h in got {
        match queues.iter_mut().find(|(k, _)| *k == h.part) {
            Some((_, q)) => q.push_back(h),
            None => queues.push((h.part.clone(), VecDeque::from([h]))),
        }
    }
    if queues.len() <= 1 {
        pending.extend(queues.into_iter().flat_map(|(_, q)| q));
        return;
    }
    loop {
        let next = queues
            .iter()
            .enumerate()
            .filter_map(|(i, (_, q))| q.front().map(|h| (h.micros, i)))
            .min();
        let Some((_, i)) = next else { return };
        if let Some(h) = queues[i].1.pop_front() {
            pending.push_back(h);
        }
    }
}

/// A message from a record. Records of plain producers are delivered too: the key is the
/// record key (else `ce_partitionkey`), without `ce_id` the id is empty, without `ce_time` the
/// time is the record's timestamp; headers outside the format are the event's headers.
fn decode(topic: &str, m: &BorrowedMessage<'_>, millis: i64) -> Message {
    let payload = bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default());
    let mut msg = Message::new(topic, payload);
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    if let Some(k) = m.key() {
        if !k.is_empty() {
            msg.key = Some(text(k));
        }
    }
    if let Some(headers) = m.headers() {
        for h in headers.iter() {
            let value = text(h.value.unwrap_or_default());
            match h.key {
                CE_ID => {
                    if !value.is_empty() {
                        msg.id = EventId::Custom(value.into());
                    }
                }
                CE_TYPE => {
                    if value != topic {
                        msg.event_type = Some(value);
                    }
                }
                CE_SOURCE => msg.source = Some(value),
                CE_TIME => msg.time = parse_time(&value),
                CE_PARTITIONKEY => {
                    if msg.key.is_none() && !value.is_empty() {
                        msg.key = Some(value);
                    }
                }
                CE_SPECVERSION => {}
                other => {
                    msg.headers.insert(other.to_owned(), value);
                }
            }
        }
    }
    if msg.time.is_none() {
        msg.time = Some(if millis > 0 {
            UNIX_EPOCH + Duration::from_millis(millis as u64)
        } else {
            SystemTime::now()
        });
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_anchored_regexes() {
        assert_eq!(regex("", "orders.*"), "^orders\\.[^.]+$");
        assert_eq!(regex("app.", "orders.>"), "^app\\.orders\\..+$");
        assert_eq!(regex("", "*.created"), "^[^.]+\\.created$");
    }

    #[test]
    fn urls_list_the_bootstrap_servers() {
        assert_eq!(servers("kafka://a:9092, b:9092").unwrap(), "a:9092,b:9092");
        assert_eq!(
            servers("kafka://127.0.0.1:9092/").unwrap(),
            "127.0.0.1:9092"
        );
        assert!(servers("kafka://").is_err());
        assert!(servers("kafka://a:1,,b:2").is_err());
    }

    #[test]
    fn the_frontier_never_passes_an_unsettled_offset() {
        let t = Tracker::default();
        let k: PartKey = ("t".into(), 0);
        for o in 10..15 {
            t.handed(&k, o);
        }
        assert_eq!(t.settle(&k, 11), None, "10 is still in flight");
        assert_eq!(t.settle(&k, 12), None);
        assert_eq!(t.settle(&k, 10), Some(13), "10..=12 settled: next is 13");
        assert_eq!(t.settle(&k, 14), None, "13 is still in flight");
        assert_eq!(t.settle(&k, 13), Some(15));
        assert_eq!(t.unsettled(), 0);
        t.forget("t", 0);
        assert_eq!(t.settle(&k, 15), None, "a revoked partition stores nothing");
    }
}
