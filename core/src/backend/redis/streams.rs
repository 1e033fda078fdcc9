//! `redis://`: one Redis stream per topic, consumer groups, acknowledgement after the handler.
//!
//! - `publish`: `XADD <prefix>.<topic> MAXLEN ~ <redis.max_len> * payload <bytes> ce_id ...`;
//!   the reply (the entry id) is the acceptance.
//! - A `group` is the Redis consumer group of that name on the topic's stream, created (with
//!   `MKSTREAM`) at `$` (`start: new`) or `0` (`earliest`) when it does not exist; an existing
//!   group resumes where it was. Each subscription is one consumer, `<name>-<uuid>`.
//! - A broadcast subscription is a consumer group of its own, `polybus-b-<uuid>`, destroyed
//!   when the subscription ends and its last event is settled.
//! - A pump task reads with `XREADGROUP ... BLOCK <redis.block_ms> STREAMS key >` on a
//!   connection of its own, as far as the subscription's queue has room. Acks (`XACK`) go over
//!   the bus's shared connection after the handler succeeded (or the event was dead-lettered).
//! - Every `claim_idle_ms / 2` the pump reclaims events left pending longer than
//!   `redis.claim_idle_ms` by any consumer of the group (`XAUTOCLAIM`): a member that died
//!   leaves its events to the others. `attempt` of a reclaimed event is its delivery count
//!   (`XPENDING`). While the dispatcher holds an event (a slow handler, a retry waiting for its
//!   backoff) it refreshes the claim every third of `claim_idle_ms` (`XCLAIM ... JUSTID` to
//!   itself), so a live member's events are not taken away.
//! - A wildcard pattern reads every stream `<prefix>.<topic>` whose topic matches: the streams
//!   are found with `SCAN ... TYPE stream` when subscribing and again every
//!   `redis.scan_interval_ms` (a stream found later is read from its start: it appeared after
//!   the subscription). Events of several streams read together are merged by entry id, then
//!   event time, so one publisher's events keep their order; a key's order *across topics* is
//!   best effort (an event on a stream not yet found can be handled after a later event of the
//!   same key on a known stream).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ::redis::{
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
    Cmd, RedisError, Value,
};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{redis_error, Conn, Shared, DRAIN_LIMIT};
use crate::backend::cetime::CE_UNDERSCORED;
use crate::{
    backend::{
        cetime::{format_time, parse_time},
        Acker, BoxFut, ChannelSource, Delivery, Source, Subscribed, Unsubscribe,
    },
    error::{Error, ErrorKind, Result},
    event::Event,
    id::EventId,
    message::Message,
    subscription::{Start, SubscribeOptions},
    topic::Pattern,
};

/// Stream fields of the wire format (`docs/wire-format.md`).
pub(crate) const F_PAYLOAD: &str = "payload";
pub(crate) const F_SPECVERSION: &str = CE_UNDERSCORED.specversion;
pub(crate) const F_ID: &str = CE_UNDERSCORED.id;
pub(crate) const F_TYPE: &str = CE_UNDERSCORED.event_type;
pub(crate) const F_SOURCE: &str = CE_UNDERSCORED.source;
pub(crate) const F_TIME: &str = CE_UNDERSCORED.time;
pub(crate) const F_PARTITIONKEY: &str = CE_UNDERSCORED.partitionkey;
/// The prefix of user header fields: header `tenant` is the field `h:tenant`.
pub(crate) const HEADER_PREFIX: &str = "h:";

/// The `XADD` of a message.
pub(super) fn xadd(shared: &Shared, m: &Message) -> Cmd {
    let mut c = ::redis::cmd("XADD");
    c.arg(shared.key(&m.topic));
    if shared.cfg.max_len > 0 {
        c.arg("MAXLEN").arg("~").arg(shared.cfg.max_len);
    }
    c.arg("*").arg(F_PAYLOAD).arg(m.payload.as_ref());
    c.arg(F_SPECVERSION).arg("1.0");
    c.arg(F_ID).arg(m.id.as_str());
    c.arg(F_TYPE)
        .arg(m.event_type.as_deref().unwrap_or(&m.topic));
    if let Some(s) = &m.source {
        c.arg(F_SOURCE).arg(s.as_str());
    }
    if let Some(t) = m.time {
        c.arg(F_TIME).arg(format_time(t));
    }
    if let Some(k) = &m.key {
        c.arg(F_PARTITIONKEY).arg(k.as_str());
    }
    for (k, v) in &m.headers {
        c.arg(format!("{HEADER_PREFIX}{k}")).arg(v.as_str());
    }
    c
}

/// A message from a stream entry. Entries written by plain clients are delivered too: without
/// `payload` the payload is empty, without `ce_id` the id is empty, without `ce_time` the time
/// is the entry id's; fields outside the format become headers under their own names.
pub(crate) fn decode(topic: &str, entry_id: &str, fields: Vec<(Vec<u8>, Vec<u8>)>) -> Message {
    let mut m = Message::new(topic, bytes::Bytes::new());
    let text = |v: Vec<u8>| {
        String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    };
    for (name, value) in fields {
        let name = text(name);
        match name.as_str() {
            F_PAYLOAD => m.payload = value.into(),
            F_ID => {
                let v = text(value);
                if !v.is_empty() {
                    m.id = EventId::Custom(v.into());
                }
            }
            F_TYPE => {
                let v = text(value);
                if v != topic {
                    m.event_type = Some(v);
                }
            }
            F_SOURCE => m.source = Some(text(value)),
            F_TIME => m.time = parse_time(&text(value)),
            F_PARTITIONKEY => {
                let v = text(value);
                if !v.is_empty() {
                    m.key = Some(v);
                }
            }
            F_SPECVERSION => {}
            other => {
                let h = other.strip_prefix(HEADER_PREFIX).unwrap_or(other);
                m.headers.insert(h.to_owned(), text(value));
            }
        }
    }
    if m.time.is_none() {
        let ms = entry_id
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<u64>().ok())
            .unwrap_or(0);
        m.time = Some(if ms == 0 {
            SystemTime::now()
        } else {
            UNIX_EPOCH + Duration::from_millis(ms)
        });
    }
    m
}

/// The bytes of a string-like reply value.
fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

fn text_of(v: Value) -> Option<String> {
    bytes_of(v).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The items of an array (or the flattened pairs of a map).
fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// The fields of a stream entry, names and values.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One stream entry: its id and fields (`None` when the entry was deleted).
type Entry = (String, Option<Fields>);

/// Parses `[[id, [field, value, ...]], ...]`.
fn entries(v: Value) -> Vec<Entry> {
    items(v)
        .into_iter()
        .filter_map(|e| {
            let mut parts = items(e).into_iter();
            let id = text_of(parts.next()?)?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(f) => {
                    let mut flat = items(f).into_iter();
                    let mut out = Vec::new();
                    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                        out.push((bytes_of(k)?, bytes_of(v)?));
                    }
                    Some(out)
                }
            };
            Some((id, fields))
        })
        .collect()
}

/// Parses an `XREADGROUP` reply: `[[key, entries], ...]` (or a map); nil is none.
fn read_reply(v: Value) -> Vec<(String, Vec<Entry>)> {
    let mut out = Vec::new();
    let flat = items(v);
    // RESP2: [[key, entries], ...]; RESP3 maps were flattened to key, entries, ...
    if flat.first().is_some_and(|f| matches!(f, Value::Array(_))) {
        for s in flat {
            let mut kv = items(s).into_iter();
            if let (Some(k), Some(e)) = (kv.next(), kv.next()) {
                if let Some(k) = text_of(k) {
                    out.push((k, entries(e)));
                }
            }
        }
    } else {
        let mut it = flat.into_iter();
        while let (Some(k), Some(e)) = (it.next(), it.next()) {
            if let Some(k) = text_of(k) {
                out.push((k, entries(e)));
            }
        }
    }
    out
}

/// The order of an entry among several streams' entries: its id (milliseconds, sequence),
/// then its event time (RFC 3339 in UTC sorts as text).
fn merge_key(id: &str, fields: &Option<Vec<(Vec<u8>, Vec<u8>)>>) -> (u64, Vec<u8>, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let time = fields
        .as_ref()
        .and_then(|f| f.iter().find(|(k, _)| k == F_TIME.as_bytes()))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    (ms.parse().unwrap_or(0), time, seq.parse().unwrap_or(0))
}

/// Merges several streams' entries into one sequence, keeping each stream's own order.
fn merge(mut streams: Vec<(String, Vec<Entry>)>) -> Vec<(String, Entry)> {
    if streams.len() == 1 {
        let (k, e) = streams.pop().unwrap_or_default();
        return e.into_iter().map(|e| (k.clone(), e)).collect();
    }
    let mut queues: Vec<(String, std::collections::VecDeque<Entry>)> =
        streams.into_iter().map(|(k, e)| (k, e.into())).collect();
    let mut out = Vec::new();
    loop {
        let next = queues
            .iter()
            .enumerate()
            .filter_map(|(i, (_, q))| q.front().map(|(id, f)| (merge_key(id, f), i)))
            .min();
        let Some((_, i)) = next else { return out };
        if let Some(e) = queues[i].1.pop_front() {
            out.push((queues[i].0.clone(), e));
        }
    }
}

fn is_code(e: &RedisError, code: &str) -> bool {
    e.code() == Some(code) || e.to_string().contains(code)
}

/// One subscription's consumer; dropped when the pump and every acker are done, which
/// removes a broadcast group (or an idle consumer of a group) from the server.
struct Consumer {
    shared: Arc<Shared>,
    pattern: Pattern,
    /// The `SCAN` glob of a wildcard pattern; `None` for one topic.
    glob: Option<String>,
    group: String,
    name: String,
    start: Start,
    broadcast: bool,
    claim_idle: Duration,
    /// The streams read so far, each with its group.
    keys: Mutex<Vec<Arc<str>>>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let keys = std::mem::take(self.keys.get_mut());
        for key in keys {
            self.cleanup(key.to_string());
        }
    }
}

impl Consumer {
    /// Removes this subscription's trace from one stream, in the background.
    fn cleanup(&self, key: String) {
        let mut conn = self.shared.conn();
        let (group, name, broadcast) = (self.group.clone(), self.name.clone(), self.broadcast);
        self.shared.spawn_cleanup(async move {
            if broadcast {
                let _: std::result::Result<Value, _> = ::redis::cmd("XGROUP")
                    .arg("DESTROY")
                    .arg(&key)
                    .arg(&group)
                    .query_async(&mut conn)
                    .await;
                return;
            }
            // A consumer with pending events is kept: deleting it would drop them from the
            // group's pending list, and no other member could reclaim them.
            let pending: ::redis::RedisResult<Value> = ::redis::cmd("XPENDING")
                .arg(&key)
                .arg(&group)
                .arg("-")
                .arg("+")
                .arg(1)
                .arg(&name)
                .query_async(&mut conn)
                .await;
            if matches!(pending, Ok(ref v) if items(v.clone()).is_empty()) {
                let _: std::result::Result<Value, _> = ::redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&key)
                    .arg(&group)
                    .arg(&name)
                    .query_async(&mut conn)
                    .await;
            }
        });
    }

    fn topic_of<'k>(&self, key: &'k str) -> &'k str {
        key.strip_prefix(self.shared.wire_prefix.as_str())
            .unwrap_or(key)
    }

    fn keys(&self) -> Vec<Arc<str>> {
        self.keys.lock().clone()
    }

    /// Finds the streams to read: the topic's (created if missing), or, for a wildcard, the
    /// streams whose topic matches that are not read yet. Streams found after the first
    /// search are read from their start; the first search starts where `start` says.
    async fn discover(&self, conn: &mut Conn, first: bool) -> Result<()> {
        let Some(glob) = &self.glob else {
            if first {
                let key = self.shared.key(self.pattern.as_str());
                self.ensure_group(conn, &key, self.start, true).await?;
                self.keys.lock().push(key.into());
            }
            return Ok(());
        };
        let mut found = Vec::new();
        let nodes = match conn {
            // Every primary holds its own part of the keyspace.
            Conn::Cluster(c, _) => primaries(c)
                .await
                .map_err(|e| redis_error("listing the cluster's primaries", &e))?
                .into_iter()
                .map(Some)
                .collect(),
            _ => vec![None],
        };
        for node in nodes {
            let mut cursor = 0u64;
            loop {
                let mut scan = ::redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(glob)
                    .arg("COUNT")
                    .arg(1000)
                    .arg("TYPE")
                    .arg("stream");
                let reply = match (&node, &mut *conn) {
                    (Some((host, port)), Conn::Cluster(c, _)) => {
                        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        c.route_command(scan, route)
                            .await
                            .and_then(|v| ::redis::from_redis_value(v).map_err(Into::into))
                    }
                    _ => scan.query_async(&mut *conn).await,
                };
                let (next, keys): (u64, Vec<String>) = reply
                    .map_err(|e| redis_error(&format!("SCAN for streams matching {glob:?}"), &e))?;
                found.extend(keys);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        found.sort();
        found.dedup();
        let known = self.keys();
        for key in found {
            let topic = self.topic_of(&key);
            if known.iter().any(|k| **k == *key)
                || crate::topic::validate_topic(topic).is_err()
                || !self.pattern.matches(topic)
            {
                continue;
            }
            let start = if first { self.start } else { Start::Earliest };
            self.ensure_group(conn, &key, start, false).await?;
            self.keys.lock().push(key.into());
        }
        Ok(())
    }

    /// Creates the group on `key` if it does not exist (a group that exists resumes where it
    /// was).
    async fn ensure_group(
        &self,
        conn: &mut Conn,
        key: &str,
        start: Start,
        mkstream: bool,
    ) -> Result<()> {
        let start = match start {
            Start::Earliest => "0",
            Start::New => "$",
        };
        let mut cmd = ::redis::cmd("XGROUP");
        cmd.arg("CREATE").arg(key).arg(&self.group).arg(start);
        if mkstream {
            cmd.arg("MKSTREAM");
        }
        let r: ::redis::RedisResult<Value> = cmd.query_async(conn).await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, "BUSYGROUP") => Ok(()),
            Err(e) if is_code(&e, "WRONGTYPE") => Err(Error::new(
                ErrorKind::Backend,
                format!(
                    "the key {key:?} exists and is not a stream: topic {:?} cannot be read \
                     from it",
                    self.topic_of(key)
                ),
            )),
            Err(e) => Err(redis_error(
                &format!("creating consumer group {:?} on {key:?}", self.group),
                &e,
            )),
        }
    }

    /// Makes the groups again after they were lost (a server restarted without its data, an
    /// operator deleted them): existing ones are kept as they are.
    async fn ensure_groups(&self, conn: &mut Conn) -> Result<()> {
        for key in self.keys() {
            let start = if self.glob.is_some() {
                Start::Earliest
            } else {
                self.start
            };
            self.ensure_group(conn, &key, start, self.glob.is_none())
                .await?;
        }
        Ok(())
    }

    fn delivery(
        self: &Arc<Self>,
        key: Arc<str>,
        id: String,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        attempt: u32,
    ) -> Delivery {
        let message = decode(self.topic_of(&key), &id, fields);
        Delivery {
            event: Event::new(Arc::new(message), attempt.max(1)),
            acker: Some(Box::new(StreamAcker {
                consumer: self.clone(),
                key,
                id,
            })),
        }
    }

    /// The deliveries of an `XREADGROUP` reply, merged across streams.
    fn deliveries(self: &Arc<Self>, v: Value) -> Vec<Delivery> {
        let keys = self.keys();
        merge(read_reply(v))
            .into_iter()
            .filter_map(|(k, (id, fields))| {
                let key = keys.iter().find(|x| ***x == *k).cloned()?;
                Some(self.delivery(key, id, fields?, 1))
            })
            .collect()
    }

    /// New events for this consumer on every stream, as one `XREADGROUP` reply. On a cluster
    /// the streams of a wildcard live in different slots, which one command cannot span: each
    /// is read without blocking, and when all were empty the read pauses (at most 100 ms).
    async fn read(
        &self,
        conn: &mut Conn,
        keys: &[Arc<str>],
        count: usize,
        block: Option<Duration>,
    ) -> ::redis::RedisResult<Value> {
        if !conn.is_cluster() || keys.len() <= 1 {
            return self.read_cmd(keys, count, block).query_async(conn).await;
        }
        let mut out = Vec::new();
        for k in keys {
            let v: Value = self
                .read_cmd(std::slice::from_ref(k), count, None)
                .query_async(&mut *conn)
                .await?;
            out.extend(items(v));
        }
        if out.is_empty() {
            if let Some(b) = block {
                tokio::time::sleep(b.min(Duration::from_millis(100))).await;
            }
            return Ok(Value::Nil);
        }
        Ok(Value::Array(out))
    }

    /// `XREADGROUP ... >`: new events for this consumer on every stream.
    fn read_cmd(&self, keys: &[Arc<str>], count: usize, block: Option<Duration>) -> Cmd {
        let mut c = ::redis::cmd("XREADGROUP");
        c.arg("GROUP")
            .arg(&self.group)
            .arg(&self.name)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(b) = block {
            c.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        c.arg("STREAMS");
        for k in keys {
            c.arg(&**k);
        }
        for _ in keys {
            c.arg(">");
        }
        c
    }

    /// Claims what other consumers (or this one) left pending too long, with attempts from
    /// the delivery counts.
    async fn reclaim(
        self: &Arc<Self>,
        conn: &mut Conn,
        room: usize,
    ) -> ::redis::RedisResult<Vec<Delivery>> {
        let mut out = Vec::new();
        for key in self.keys() {
            if out.len() >= room {
                break;
            }
            out.extend(self.reclaim_from(conn, key, room - out.len()).await?);
        }
        Ok(out)
    }

    async fn reclaim_from(
        self: &Arc<Self>,
        conn: &mut Conn,
        key: Arc<str>,
        room: usize,
    ) -> ::redis::RedisResult<Vec<Delivery>> {
        let mut out = Vec::new();
        let mut cursor = "0-0".to_owned();
        loop {
            let v: Value = ::redis::cmd("XAUTOCLAIM")
                .arg(&*key)
                .arg(&self.group)
                .arg(&self.name)
                .arg(self.claim_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(room.max(1))
                .query_async(conn)
                .await?;
            let mut parts = items(v).into_iter();
            let next = parts
                .next()
                .and_then(text_of)
                .unwrap_or_else(|| "0-0".into());
            let claimed: Vec<(String, Fields)> = parts
                .next()
                .map(entries)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(id, f)| Some((id, f?)))
                .collect();
            let deleted = parts.next().map(items).unwrap_or_default();
            if !deleted.is_empty() {
                tracing::warn!(stream = %key, group = %self.group, count = deleted.len(),
                    "events were trimmed from the stream before they were acknowledged \
                     (raise redis.max_len)");
            }
            if !claimed.is_empty() {
                let counts = self.delivery_counts(conn, &key, &claimed).await;
                for (id, fields) in claimed {
                    let attempt = counts.get(&id).copied().unwrap_or(2);
                    tracing::debug!(stream = %key, id = %id, attempt,
                        "reclaimed an event left pending too long");
                    out.push(self.delivery(key.clone(), id, fields, attempt));
                }
            }
            if next == "0-0" || out.len() >= room {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Delivery counts of claimed entries (`XPENDING` over their id range, for this consumer).
    async fn delivery_counts(
        &self,
        conn: &mut Conn,
        key: &str,
        claimed: &[(String, Fields)],
    ) -> HashMap<String, u32> {
        let (Some(first), Some(last)) = (claimed.first(), claimed.last()) else {
            return HashMap::new();
        };
        let r: ::redis::RedisResult<Value> = ::redis::cmd("XPENDING")
            .arg(key)
            .arg(&self.group)
            .arg(&first.0)
            .arg(&last.0)
            .arg(claimed.len().max(1) * 2)
            .arg(&self.name)
            .query_async(conn)
            .await;
        let Ok(v) = r else { return HashMap::new() };
        items(v)
            .into_iter()
            .filter_map(|row| {
                let mut f = items(row).into_iter();
                let id = text_of(f.next()?)?;
                let (_consumer, _idle) = (f.next(), f.next());
                let count = match f.next()? {
                    Value::Int(n) => n,
                    other => text_of(other)?.parse().ok()?,
                };
                Some((id, u32::try_from(count).unwrap_or(u32::MAX)))
            })
            .collect()
    }

    /// Wakes the pump's blocked read (`CLIENT UNBLOCK`): it returns at once with nothing
    /// consumed. Without the permission the read ends by its own timeout.
    async fn unblock(&self, client_id: Option<i64>) {
        let Some(id) = client_id else { return };
        let mut conn = self.shared.conn();
        let _: std::result::Result<Value, _> = ::redis::cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(id)
            .query_async(&mut conn)
            .await;
    }
}

/// Settles one entry: `XACK`, or refreshes its claim while it is still worked on.
struct StreamAcker {
    consumer: Arc<Consumer>,
    key: Arc<str>,
    id: String,
}

impl Acker for StreamAcker {
    fn ack(self: Box<Self>) -> BoxFut<'static, Result<()>> {
        Box::pin(async move {
            let c = &self.consumer;
            let mut conn = c.shared.conn();
            let r: ::redis::RedisResult<Value> = ::redis::cmd("XACK")
                .arg(&*self.key)
                .arg(&c.group)
                .arg(&self.id)
                .query_async(&mut conn)
                .await;
            c.shared.note(r.as_ref().err());
            r.map(|_| ())
                .map_err(|e| redis_error(&format!("XACK {} on {:?}", self.id, self.key), &e))
        })
    }

    fn progress(&self) -> Option<BoxFut<'static, Result<()>>> {
        let c = self.consumer.clone();
        let id = self.id.clone();
        let key = self.key.clone();
        Some(Box::pin(async move {
            let mut conn = c.shared.conn();
            let r: ::redis::RedisResult<Value> = ::redis::cmd("XCLAIM")
                .arg(&*key)
                .arg(&c.group)
                .arg(&c.name)
                .arg(0)
                .arg(&id)
                .arg("JUSTID")
                .query_async(&mut conn)
                .await;
            r.map(|_| ())
                .map_err(|e| redis_error(&format!("XCLAIM {id} on {key:?}"), &e))
        }))
    }

    fn progress_interval(&self) -> Option<Duration> {
        Some(self.consumer.claim_idle / 3)
    }
}

/// Stops a pump.
struct StopPump(watch::Sender<bool>);

impl Unsubscribe for StopPump {
    fn unsubscribe(&self) {
        self.0.send_replace(true);
    }
}

/// Subscribes to one topic's stream.
pub(super) async fn subscribe(
    shared: &Arc<Shared>,
    pattern: &Pattern,
    options: &SubscribeOptions,
) -> Result<Subscribed> {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    let (group, broadcast) = match &options.group {
        Some(g) => (g.clone(), false),
        None => (format!("polybus-b-{uuid}"), true),
    };
    let consumer = Arc::new(Consumer {
        pattern: pattern.clone(),
        glob: pattern
            .is_wildcard()
            .then(|| super::pubsub::glob(&shared.wire_prefix, pattern.as_str())),
        group,
        name: format!("{}-{uuid}", shared.name),
        start: options.start,
        broadcast,
        claim_idle: Duration::from_millis(shared.cfg.claim_idle_ms),
        keys: Mutex::new(Vec::new()),
        shared: shared.clone(),
    });
    let block = Duration::from_millis(shared.cfg.block_ms);
    let mut conn = shared.dedicated(block).await?;
    consumer.discover(&mut conn, true).await?;
    let client_id = client_id(&mut conn).await;
    let (tx, rx) = flume::bounded(options.queue_size as usize);
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(pump(consumer, conn, client_id, tx, stop));
    Ok((
        Box::new(ChannelSource::new(rx)) as Box<dyn Source>,
        Box::new(StopPump(stop_tx)) as Box<dyn Unsubscribe>,
    ))
}

async fn client_id(conn: &mut Conn) -> Option<i64> {
    // On a cluster a blocked read sits on the node of its key; it ends within `block_ms`.
    if conn.is_cluster() {
        return None;
    }
    ::redis::cmd("CLIENT")
        .arg("ID")
        .query_async::<i64>(conn)
        .await
        .ok()
}

/// Free places in the subscription's queue (at least 1: the send then waits for room).
fn room(tx: &flume::Sender<Delivery>) -> usize {
    let cap = tx.capacity().unwrap_or(1024);
    cap.saturating_sub(tx.len()).clamp(1, 1024)
}

/// Moves entries from the streams to the subscription's queue until stopped, then hands over
/// what the group still holds for it (bounded in time).
async fn pump(
    consumer: Arc<Consumer>,
    conn: Conn,
    mut client_id: Option<i64>,
    tx: flume::Sender<Delivery>,
    mut stop: watch::Receiver<bool>,
) {
    let shared = consumer.shared.clone();
    let block = Duration::from_millis(shared.cfg.block_ms);
    let claim_every = (consumer.claim_idle / 2).max(Duration::from_millis(50));
    let scan_every = Duration::from_millis(shared.cfg.scan_interval_ms.max(10));
    let mut last_claim = tokio::time::Instant::now();
    let mut last_scan = tokio::time::Instant::now();
    let mut conn = Some(conn);
    let mut failures = 0u32;
    'run: loop {
        if *stop.borrow() {
            break;
        }
        let Some(c) = conn.as_mut() else {
            // The connection was lost: connect again, after a pause growing to 2 s.
            let pause = Duration::from_millis((100u64 << failures.min(5)).min(2_000));
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(pause) => {}
            }
            failures += 1;
            match shared.dedicated(block).await {
                Ok(mut c) => match consumer.ensure_groups(&mut c).await {
                    Ok(()) => {
                        client_id = self::client_id(&mut c).await;
                        conn = Some(c);
                        failures = 0;
                    }
                    Err(e) => tracing::debug!(pattern = %consumer.pattern, error = %e,
                        "reconnected, but the consumer groups could not be ensured; retrying"),
                },
                Err(e) => tracing::debug!(pattern = %consumer.pattern, error = %e,
                    "Redis reconnect failed; retrying"),
            }
            continue;
        };
        if consumer.glob.is_some() && last_scan.elapsed() >= scan_every {
            last_scan = tokio::time::Instant::now();
            if let Err(e) = consumer.discover(c, false).await {
                tracing::debug!(pattern = %consumer.pattern, error = %e, "stream discovery failed");
                conn = None;
                continue;
            }
        }
        if last_claim.elapsed() >= claim_every {
            last_claim = tokio::time::Instant::now();
            match consumer.reclaim(c, room(&tx)).await {
                Ok(ds) => {
                    for d in ds {
                        if tx.send_async(d).await.is_err() {
                            break 'run;
                        }
                    }
                }
                Err(e) => {
                    shared.note(Some(&e));
                    if is_code(&e, "NOGROUP") {
                        let _ = consumer.ensure_groups(c).await;
                    } else {
                        tracing::debug!(pattern = %consumer.pattern, error = %e,
                            "XAUTOCLAIM failed");
                        conn = None;
                    }
                    continue;
                }
            }
        }
        let keys = consumer.keys();
        let mut wait = block.min(claim_every);
        if consumer.glob.is_some() {
            wait = wait.min(scan_every);
        }
        if keys.is_empty() {
            // No stream matches yet: look again after a while.
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let mut stopped = false;
        let result = {
            let mut read = std::pin::pin!(consumer.read(c, &keys, room(&tx), Some(wait)));
            let first = tokio::select! {
                biased;
                r = &mut read => Some(r),
                _ = stop.wait_for(|s| *s) => None,
            };
            match first {
                Some(r) => r,
                None => {
                    stopped = true;
                    consumer.unblock(client_id).await;
                    read.await
                }
            }
        };
        match result {
            Ok(v) => {
                shared.note(None);
                for d in consumer.deliveries(v) {
                    if tx.send_async(d).await.is_err() {
                        break 'run;
                    }
                }
            }
            Err(e) if is_code(&e, "NOGROUP") => {
                // A group (or a stream) was deleted: make it again.
                tracing::warn!(pattern = %consumer.pattern, group = %consumer.group,
                    "consumer group lost; recreating it");
                if let Err(e) = consumer.ensure_groups(c).await {
                    tracing::warn!(error = %e, "cannot recreate the consumer group");
                    conn = None;
                }
            }
            Err(e) => {
                shared.note(Some(&e));
                tracing::debug!(pattern = %consumer.pattern, error = %e,
                    "XREADGROUP failed; reconnecting");
                conn = None;
            }
        }
        if stopped {
            break;
        }
    }
    // Stopped: hand over what the group holds for new readers now (the events published
    // before an unsubscribe or a close), bounded in time.
    if let Some(c) = conn.as_mut() {
        let drained = async {
            if consumer.glob.is_some() {
                let _ = consumer.discover(c, false).await;
            }
            let keys = consumer.keys();
            if keys.is_empty() {
                return;
            }
            loop {
                let r = consumer.read(c, &keys, room(&tx), None).await;
                let Ok(v) = r else { return };
                let got = consumer.deliveries(v);
                if got.is_empty() {
                    return;
                }
                for d in got {
                    if tx.send_async(d).await.is_err() {
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_LIMIT, drained).await;
    }
}

/// The addresses of a cluster's primaries (`CLUSTER NODES`).
async fn primaries(
    c: &mut ::redis::cluster_async::ClusterConnection,
) -> ::redis::RedisResult<Vec<(String, u16)>> {
    let text: String = ::redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
    Ok(parse_primaries(&text))
}

/// `<id> <host:port@cport[,hostname]> <flags> ...` lines; primaries have the flag `master`.
fn parse_primaries(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_id, addr, flags) = (f.next()?, f.next()?, f.next()?);
            if !flags.split(',').any(|x| x == "master") || flags.contains("fail") {
                return None;
            }
            let hp = addr.split(['@', ',']).next()?;
            let (h, p) = hp.rsplit_once(':')?;
            Some((h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_with_and_without_metadata() {
        let f = |pairs: &[(&str, &[u8])]| {
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
                .collect::<Vec<_>>()
        };
        let m = decode(
            "orders.created",
            "1714564800000-0",
            f(&[
                ("payload", b"\x00\xff"),
                ("ce_id", b"evt-1"),
                ("ce_type", b"order.created"),
                ("ce_partitionkey", b"k"),
                ("h:tenant", b"acme"),
                ("plain", b"field"),
            ]),
        );
        assert_eq!(m.payload.as_ref(), b"\x00\xff");
        assert_eq!(m.id.as_str(), "evt-1");
        assert_eq!(m.event_type.as_deref(), Some("order.created"));
        assert_eq!(m.key.as_deref(), Some("k"));
        assert_eq!(m.headers["tenant"], "acme");
        assert_eq!(m.headers["plain"], "field");
        assert_eq!(
            m.time,
            Some(UNIX_EPOCH + Duration::from_millis(1_714_564_800_000))
        );
    }

    #[test]
    fn read_replies_parse_in_resp2_and_resp3_shapes() {
        let entry = Value::Array(vec![
            Value::BulkString(b"1-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"payload".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"k".to_vec()),
            Value::Array(vec![entry.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(
            Value::BulkString(b"k".to_vec()),
            Value::Array(vec![entry]),
        )]);
        for v in [resp2, resp3] {
            let got = read_reply(v);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, "k");
            assert_eq!(got[0].1[0].0, "1-0");
        }
        assert!(read_reply(Value::Nil).is_empty());
    }

    #[test]
    fn cluster_nodes_list_their_primaries() {
        let text = "a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\n\
                    b2 127.0.0.1:7002@17002,host master - 0 1 2 connected 5461-10922\n\
                    c3 127.0.0.1:7004@17004 slave a1 0 1 1 connected\n\
                    d4 127.0.0.1:7003@17003 master,fail - 0 1 3 disconnected\n";
        assert_eq!(
            parse_primaries(text),
            [
                ("127.0.0.1".to_owned(), 7001),
                ("127.0.0.1".to_owned(), 7002)
            ]
        );
    }
}
