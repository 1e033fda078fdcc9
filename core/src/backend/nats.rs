//! `nats://`: NATS core publish and subscribe (at most once).
//!
//! The wire subject is `prefix.topic` (just `topic` without a prefix); patterns map to NATS
//! wildcards as they are (`*`, `>`). A subscription without a group is a plain NATS
//! subscription; a group is a NATS queue group of the same name. Metadata travels in NATS
//! headers following the CloudEvents NATS binding (see `docs/wire-format.md`); the payload is
//! the message body, untouched. NATS core keeps no history (`start: earliest` is rejected) and
//! has no acknowledgement: a failed handler is still retried by the dispatcher, but an event in
//! flight when the process stops is lost. The client reconnects by itself and subscriptions
//! survive a server restart; events published while a subscriber is disconnected are lost.
//!
//! This module also holds what `jetstream://` shares with it: connecting, the header mapping
//! and subject naming.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use async_nats::{header::HeaderMap, ConnectErrorKind, ConnectOptions};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

pub(crate) use super::cetime::{format_time, parse_time};
use super::cetime::{percent_decode, CE_DASHED};
use super::{
    Backend, BoxFut, ChannelSource, Delivery, Publishing, Source, Subscribed, Unsubscribe,
};
use crate::{
    config::Config,
    connection::ConnectionState,
    error::{Error, ErrorKind, Result},
    event::Event,
    id::EventId,
    message::Message,
    subscription::{Start, SubscribeOptions},
    topic::Pattern,
};

/// CloudEvents attribute headers (binary content mode, NATS binding).
pub(crate) const CE_ID: &str = CE_DASHED.id;
pub(crate) const CE_TYPE: &str = CE_DASHED.event_type;
pub(crate) const CE_SOURCE: &str = CE_DASHED.source;
pub(crate) const CE_TIME: &str = CE_DASHED.time;
pub(crate) const CE_SPECVERSION: &str = CE_DASHED.specversion;
/// The ordering key: the CloudEvents partitioning extension.
pub(crate) const CE_PARTITIONKEY: &str = CE_DASHED.partitionkey;
/// JetStream's de-duplication header.
pub(crate) const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// How long a stopped subscription waits for what the server already routed to it.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The connection to a NATS server shared by `nats://` and `jetstream://`.
pub(crate) struct Connection {
    pub(crate) client: async_nats::Client,
    /// Messages the client dropped for a slow consumer (see `open`).
    pub(crate) dropped: Arc<AtomicU64>,
    /// The prefix and a dot (empty without a prefix).
    pub(crate) wire_prefix: String,
    /// The URL with any password hidden, for messages.
    pub(crate) shown_url: String,
}

impl Connection {
    /// Connects as `config` says; `default_prefix` is used when `config.prefix` is empty.
    pub(crate) async fn open(
        config: &Config,
        state: &watch::Sender<ConnectionState>,
        default_prefix: &str,
    ) -> Result<Connection> {
        let target = Target::parse(&config.url)?;
        let shown_url = target.shown.clone();
        let mut opts = ConnectOptions::new()
            .connection_timeout(Config::duration(config.connect_timeout_ms.max(1)))
            // What a subscription may hold before the client drops messages (`pending_limit`,
            // 512 Ki by default as in nats.go and nats-py; async-nats keeps 65,536): a burst
            // that outruns the handlers for a moment must not be lost on the way in.
            .subscription_capacity(config.nats.pending_limit)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(2_000))
            });
        let name = config
            .nats
            .connection_name
            .clone()
            .unwrap_or_else(|| config.name.clone());
        if !name.is_empty() {
            opts = opts.name(name);
        }
        let n = &config.nats;
        let (user, password, token) = (
            n.user.clone().or(target.user.clone()),
            n.password.clone().or(target.password.clone()),
            n.token.clone().or(target.token.clone()),
        );
        if let (Some(u), Some(p)) = (user, password) {
            opts = opts.user_and_password(u, p);
        } else if let Some(t) = token {
            opts = opts.token(t);
        }
        if let Some(seed) = &n.nkey_seed {
            opts = opts.nkey(seed.clone());
        }
        if let Some(path) = &n.creds_file {
            opts = opts.credentials_file(path).await.map_err(|e| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("nats.creds_file {path:?}: {e}"),
                )
            })?;
        }
        if let Some(ca) = &n.tls_ca {
            opts = opts.add_root_certificates(ca.into());
        }
        if let (Some(cert), Some(key)) = (&n.tls_cert, &n.tls_key) {
            opts = opts.add_client_certificate(cert.into(), key.into());
        }
        if n.tls_required {
            opts = opts.require_tls(true);
        }
        let events = state.clone();
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        let limit = config.nats.pending_limit;
        opts = opts.event_callback(move |event| {
            let events = events.clone();
            let lost = lost.clone();
            async move {
                let next = match event {
                    async_nats::Event::Connected => ConnectionState::Connected,
                    async_nats::Event::Disconnected => ConnectionState::Disconnected,
                    async_nats::Event::Closed => ConnectionState::Closed,
                    async_nats::Event::SlowConsumer(sid) => {
                        // The client dropped a message of a subscription that held
                        // `pending_limit` messages already (one event per message): never
                        // silent. Counted in stats().dropped; logged at the 1st, 2nd, 4th,
                        // 8th... drop, so a storm of them does not flood the log.
                        let n = lost.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(target: "polybus::nats", subscription = sid,
                                pending_limit = limit, dropped = n,
                                "slow consumer: the NATS client dropped messages of a \
                                 subscription whose handlers fell behind");
                        }
                        return;
                    }
                    other => {
                        tracing::debug!(event = %other, "nats connection event");
                        return;
                    }
                };
                // `Closed` is the bus's to announce, once the subscriptions drained.
                events.send_if_modified(|s| {
                    let changed = *s != next && *s != ConnectionState::Closed;
                    if changed && next != ConnectionState::Closed {
                        *s = next;
                    }
                    changed && next != ConnectionState::Closed
                });
            }
        });
        let client = opts.connect(target.servers.as_slice()).await.map_err(|e| {
            let kind = match e.kind() {
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    ErrorKind::Auth
                }
                ConnectErrorKind::TimedOut => ErrorKind::Timeout,
                ConnectErrorKind::ServerParse => ErrorKind::InvalidConfig,
                _ => ErrorKind::Connection,
            };
            let what = match kind {
                ErrorKind::Auth => "the server rejected the credentials",
                ErrorKind::Timeout => "the server did not answer in time",
                _ => "the server could not be reached",
            };
            Error::new(kind, format!("cannot connect to {shown_url}: {what} ({e})"))
        })?;
        let prefix = if config.prefix.is_empty() {
            default_prefix
        } else {
            config.prefix.as_str()
        };
        let wire_prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}.")
        };
        Ok(Connection {
            client,
            dropped,
            wire_prefix,
            shown_url,
        })
    }

    /// The wire subject of a topic or pattern.
    pub(crate) fn subject(&self, topic: &str) -> String {
        let mut s = String::with_capacity(self.wire_prefix.len() + topic.len());
        s.push_str(&self.wire_prefix);
        s.push_str(topic);
        s
    }

    /// The topic of a wire subject (the prefix stripped).
    pub(crate) fn topic<'a>(&self, subject: &'a str) -> &'a str {
        subject.strip_prefix(&self.wire_prefix).unwrap_or(subject)
    }

    /// Flushes what was written and closes the connection (bounded).
    pub(crate) async fn close(&self, limit: Duration) -> Result<()> {
        let _ = tokio::time::timeout(limit, self.client.flush()).await;
        let _ = tokio::time::timeout(limit, self.client.drain()).await;
        Ok(())
    }
}

/// The servers of a `nats://` or `jetstream://` URL and the credentials it carries.
struct Target {
    servers: Vec<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    shown: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target> {
        let bad = |why: &str| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("url {:?}: {why}", redact(url)),
            )
        };
        let rest = url
            .split_once("://")
            .map(|(_, r)| r)
            .ok_or_else(|| bad("no scheme"))?;
        let rest = rest.trim_end_matches('/');
        let mut t = Target {
            servers: Vec::new(),
            user: None,
            password: None,
            token: None,
            shown: redact(url),
        };
        for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let part = part.split_once("://").map_or(part, |(_, r)| r);
            let host = match part.rsplit_once('@') {
                Some((auth, host)) => {
                    match auth.split_once(':') {
                        Some((u, p)) => {
                            t.user = Some(percent_decode(u));
                            t.password = Some(percent_decode(p));
                        }
                        None => t.token = Some(percent_decode(auth)),
                    }
                    host
                }
                None => part,
            };
            if host.is_empty() || host.contains(['/', '?', '#']) {
                return Err(bad("expected host:port[,host:port...]"));
            }
            let host = if host.contains(':') {
                host.to_owned()
            } else {
                format!("{host}:4222")
            };
            t.servers.push(format!("nats://{host}"));
        }
        if t.servers.is_empty() {
            return Err(bad("no server given (expected e.g. nats://127.0.0.1:4222)"));
        }
        Ok(t)
    }
}

/// The URL with any password or token replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let parts: Vec<String> = rest
        .split(',')
        .map(|p| match p.rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((u, _)) => format!("{u}:***@{host}"),
                None => format!("***@{host}"),
            },
            None => p.to_owned(),
        })
        .collect();
    format!("{scheme}://{}", parts.join(","))
}

/// The NATS headers of a message: the user's headers, then the CloudEvents attributes.
pub(crate) fn encode_headers(m: &Message, msg_id: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in &m.headers {
        h.insert(k.as_str(), v.as_str());
    }
    h.insert(CE_SPECVERSION, "1.0");
    h.insert(CE_ID, m.id.as_str());
    h.insert(CE_TYPE, m.event_type.as_deref().unwrap_or(&m.topic));
    if let Some(s) = &m.source {
        h.insert(CE_SOURCE, s.as_str());
    }
    if let Some(t) = m.time {
        h.insert(CE_TIME, format_time(t));
    }
    if let Some(k) = &m.key {
        h.insert(CE_PARTITIONKEY, k.as_str());
    }
    if msg_id {
        h.insert(NATS_MSG_ID, m.id.as_str());
    }
    h
}

/// A message from a NATS message. Events from plain NATS publishers (no `ce-` headers) have an
/// empty id (or JetStream's `Nats-Msg-Id`), the topic as their type, and `fallback_time`.
pub(crate) fn decode(
    topic: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    fallback_time: SystemTime,
) -> Message {
    let mut m = Message::new(topic, payload);
    let mut msg_id = None;
    if let Some(h) = headers {
        for (name, values) in h.iter() {
            let Some(value) = values.last() else { continue };
            let value = value.as_str();
            match name.as_ref() {
                CE_ID if !value.is_empty() => m.id = EventId::Custom(value.into()),
                CE_TYPE => {
                    if value != topic {
                        m.event_type = Some(value.to_owned());
                    }
                }
                CE_SOURCE => m.source = Some(value.to_owned()),
                CE_TIME => m.time = parse_time(value),
                CE_PARTITIONKEY if !value.is_empty() => m.key = Some(value.to_owned()),
                CE_SPECVERSION | CE_ID | CE_PARTITIONKEY => {}
                NATS_MSG_ID => msg_id = Some(value.to_owned()),
                other => {
                    m.headers.insert(other.to_owned(), value.to_owned());
                }
            }
        }
    }
    if m.id == EventId::Unset {
        if let Some(id) = msg_id {
            m.id = EventId::Custom(id.into());
        }
    }
    if m.time.is_none() {
        m.time = Some(fallback_time);
    }
    m
}

/// Maps a publish error of the client.
pub(crate) fn publish_error(topic: &str, e: async_nats::PublishError) -> Error {
    let kind = match e.kind() {
        async_nats::client::PublishErrorKind::MaxPayloadExceeded => ErrorKind::TooLarge,
        async_nats::client::PublishErrorKind::BadSubject => ErrorKind::InvalidTopic,
        _ => ErrorKind::Connection,
    };
    Error::new(kind, format!("publish on {topic:?}: {e}"))
}

/// A round trip to the server: once it returns, the server has handled every command this
/// connection sent before (a subscribe, publishes), and the client has handed this connection's
/// subscriptions every message the server routed to them before its answer. A flush alone only
/// empties the socket buffer, so a request nobody answers makes the round trip: the server's
/// "no responders" reply comes back in order on the same connection.
pub(crate) async fn round_trip(client: &async_nats::Client) {
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(client.new_inbox(), bytes::Bytes::new()),
    )
    .await;
}

/// Stops a subscription's pump task.
pub(crate) struct StopPump(pub(crate) watch::Sender<bool>);

impl Unsubscribe for StopPump {
    fn unsubscribe(&self) {
        self.0.send_replace(true);
    }
}

/// An event of a NATS message, for the dispatcher.
fn deliver(conn: &Connection, msg: async_nats::Message) -> Delivery {
    let m = decode(
        conn.topic(msg.subject.as_str()),
        msg.headers.as_ref(),
        msg.payload,
        SystemTime::now(),
    );
    Delivery {
        event: Event::new(Arc::new(m), 1),
        acker: None,
    }
}

/// Where a `nats://` subscription's events come from: the client's subscription itself while
/// it is live (the dispatcher reads it directly, no task in between), then, once stopped, the
/// queue its drain fills.
enum SourceState {
    Live(async_nats::Subscriber),
    Draining(ChannelSource),
}

/// What a [`NatsSource`] shares with its [`StopSource`].
struct SourceShared {
    state: parking_lot::Mutex<SourceState>,
    /// The dispatcher waiting on a live subscription, woken when it is stopped.
    waker: futures::task::AtomicWaker,
    conn: Arc<Connection>,
    queue_size: usize,
    runtime: tokio::runtime::Handle,
}

/// The deliveries of a `nats://` subscription.
struct NatsSource(Arc<SourceShared>);

impl Source for NatsSource {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let shared = &*self.0;
        let mut state = shared.state.lock();
        match &mut *state {
            SourceState::Live(sub) => {
                shared.waker.register(cx.waker());
                match futures::Stream::poll_next(Pin::new(sub), cx) {
                    Poll::Ready(Some(msg)) => Poll::Ready(Some(deliver(&shared.conn, msg))),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
            SourceState::Draining(rest) => rest.poll_next(cx),
        }
    }

    fn try_next(&mut self) -> Option<Delivery> {
        let shared = &*self.0;
        let mut state = shared.state.lock();
        match &mut *state {
            SourceState::Live(sub) => match sub.next().now_or_never() {
                Some(Some(msg)) => Some(deliver(&shared.conn, msg)),
                _ => None,
            },
            SourceState::Draining(rest) => rest.try_next(),
        }
    }
}

/// Stops a `nats://` subscription at once: the client's subscription moves to a drain task
/// and the source reads what the drain hands over, then ends.
struct StopSource(Arc<SourceShared>);

impl Unsubscribe for StopSource {
    fn unsubscribe(&self) {
        let shared = &*self.0;
        let (tx, rx) = flume::bounded(shared.queue_size);
        let sub = {
            let mut state = shared.state.lock();
            if matches!(&*state, SourceState::Draining(_)) {
                return;
            }
            match std::mem::replace(&mut *state, SourceState::Draining(ChannelSource::new(rx))) {
                SourceState::Live(sub) => sub,
                SourceState::Draining(_) => unreachable!("checked above"),
            }
        };
        shared.waker.wake();
        let conn = shared.conn.clone();
        shared.runtime.spawn(async move {
            let mut sub = sub;
            // Unsubscribe with a round trip first, so events the server routed to this
            // subscription before (among them everything this connection published before the
            // stop) are still handed over: the server answers only after it has sent this
            // connection every message it routed before, and the client hands those to the
            // subscription before the answer. Unsubscribing before that could drop messages
            // still on the wire. Then the rest drains and the source ends.
            let drained = async {
                round_trip(&conn.client).await;
                if sub.drain().await.is_err() {
                    return;
                }
                while let Some(msg) = sub.next().await {
                    if tx.send_async(deliver(&conn, msg)).await.is_err() {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_LIMIT, drained).await;
        });
    }
}

/// `nats://`.
pub(crate) struct NatsBackend {
    conn: Arc<Connection>,
    close_timeout: Duration,
}

impl NatsBackend {
    pub(crate) async fn open(
        config: &Config,
        state: &watch::Sender<ConnectionState>,
    ) -> Result<Self> {
        Ok(NatsBackend {
            conn: Arc::new(Connection::open(config, state, "").await?),
            close_timeout: Config::duration(config.close_timeout_ms),
        })
    }
}

impl Backend for NatsBackend {
    fn publish(&self, message: Arc<Message>) -> Publishing {
        let subject = self.conn.subject(&message.topic);
        let headers = encode_headers(&message, false);
        // The connection, not a clone of its client (a client clone is a dozen reference
        // counts to take and drop per event).
        let conn = self.conn.clone();
        let mut fut = Box::pin(async move {
            conn.client
                .publish_with_headers(subject, headers, message.payload.clone())
                .await
                .map_err(|e| publish_error(&message.topic, e))
        });
        // Written to the client's queue at once in the common case; otherwise it is waited on
        // (and later publishes queue behind it, keeping the order).
        match (&mut fut).now_or_never() {
            Some(r) => Publishing::Done(r),
            None => Publishing::Pending(fut),
        }
    }

    fn subscribe<'a>(
        &'a self,
        pattern: &'a Pattern,
        options: &'a SubscribeOptions,
    ) -> BoxFut<'a, Result<Subscribed>> {
        Box::pin(async move {
            if options.start == Start::Earliest {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "NATS core keeps no history: start \"earliest\" is not supported (use \
                     jetstream://)",
                ));
            }
            let subject = self.conn.subject(pattern.as_str());
            let client = &self.conn.client;
            let sub = match &options.group {
                None => client.subscribe(subject.clone()).await,
                Some(g) => client.queue_subscribe(subject.clone(), g.clone()).await,
            }
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connection,
                    format!("subscribe to {subject:?} on {}: {e}", self.conn.shown_url),
                )
            })?;
            // Make sure the server knows the subscription before events are published (by this
            // or any other connection).
            round_trip(client).await;
            let shared = Arc::new(SourceShared {
                state: parking_lot::Mutex::new(SourceState::Live(sub)),
                waker: futures::task::AtomicWaker::new(),
                conn: self.conn.clone(),
                queue_size: options.queue_size as usize,
                runtime: tokio::runtime::Handle::current(),
            });
            Ok((
                Box::new(NatsSource(shared.clone())) as Box<dyn Source>,
                Box::new(StopSource(shared)) as Box<dyn Unsubscribe>,
            ))
        })
    }

    fn close(&self) -> BoxFut<'_, Result<()>> {
        Box::pin(
            self.conn
                .close(self.close_timeout.min(Duration::from_secs(5))),
        )
    }

    fn dropped(&self) -> u64 {
        self.conn.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn time_round_trips() {
        let t = UNIX_EPOCH + Duration::new(1_714_564_800, 123_456_000);
        let s = format_time(t);
        assert_eq!(s, "2024-05-01T12:00:00.123456Z");
        assert_eq!(parse_time(&s), Some(t));
        assert_eq!(
            parse_time("2024-05-01T14:00:00+02:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1_714_564_800))
        );
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn url_credentials_are_parsed_and_hidden() {
        let t = Target::parse("nats://svc:p%40ss@127.0.0.1:4222,other").unwrap();
        assert_eq!(t.servers, ["nats://127.0.0.1:4222", "nats://other:4222"]);
        assert_eq!(t.user.as_deref(), Some("svc"));
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert_eq!(t.shown, "nats://svc:***@127.0.0.1:4222,other");
        let t = Target::parse("jetstream://tok@h:1").unwrap();
        assert_eq!(t.token.as_deref(), Some("tok"));
        assert!(Target::parse("nats://").is_err());
    }

    #[test]
    fn headers_round_trip() {
        let mut m = Message::new("orders.created", "x")
            .key("k")
            .header("tenant", "acme")
            .id("evt-1")
            .event_type("order.created");
        m.prepare(Some("svc"), 100).unwrap();
        let h = encode_headers(&m, true);
        assert_eq!(h.get(CE_SPECVERSION).map(|v| v.as_str()), Some("1.0"));
        let back = decode("orders.created", Some(&h), m.payload.clone(), UNIX_EPOCH);
        assert_eq!(back.id.as_str(), "evt-1");
        assert_eq!(back.key.as_deref(), Some("k"));
        assert_eq!(back.event_type.as_deref(), Some("order.created"));
        assert_eq!(back.source.as_deref(), Some("svc"));
        assert_eq!(back.headers.len(), 1);
        assert_eq!(back.headers["tenant"], "acme");
        assert_eq!(
            back.time.map(format_time),
            m.time.map(format_time),
            "time keeps microseconds"
        );
    }
}
