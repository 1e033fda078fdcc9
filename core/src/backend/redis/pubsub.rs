//! `redis+pubsub://`: Redis Pub/Sub (at most once).
//!
//! An event is `PUBLISH <prefix>.<topic> <envelope>`, the envelope being a CloudEvents JSON
//! structured-mode event (Pub/Sub has no headers): the payload is `data` when it is JSON
//! (kept byte for byte), else `data_base64`. A literal pattern is a `SUBSCRIBE` of its
//! channel; a wildcard pattern a `PSUBSCRIBE` of a glob (`*` for each `*` and for `>`), which
//! also matches across dots, so every message is checked against the real pattern before it
//! is delivered. Each subscription has a connection of its own; no groups, no history.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use ::redis::{aio::PubSub, Cmd, Msg};
use base64::Engine as _;
use futures::{FutureExt, StreamExt};
use serde_json::{value::RawValue, Map, Value};
use tokio::sync::watch;

use super::{redis_error, Shared, DRAIN_LIMIT};
use crate::{
    backend::{
        cetime::{format_time, parse_time},
        ChannelSource, Delivery, Source, Subscribed, Unsubscribe,
    },
    error::{Error, ErrorKind, Result},
    event::Event,
    id::EventId,
    message::Message,
    subscription::{Start, SubscribeOptions},
    topic::{validate_topic, Pattern},
};

/// The user headers of an event, as one extension attribute (a JSON object of strings).
pub(crate) const HEADERS_ATTRIBUTE: &str = "polybusheaders";

/// The `PUBLISH` of a message.
pub(super) fn publish(shared: &Shared, m: &Message) -> Cmd {
    let mut c = ::redis::cmd("PUBLISH");
    c.arg(shared.key(&m.topic)).arg(encode(m));
    c
}

/// Whether `payload` can be the envelope's `data` as is: JSON, without surrounding
/// whitespace (which a JSON value would not keep).
fn is_json(payload: &[u8]) -> bool {
    let trimmed = payload.trim_ascii();
    !payload.is_empty()
        && trimmed.len() == payload.len()
        && serde_json::from_slice::<&RawValue>(payload).is_ok()
}

/// The CloudEvents JSON envelope of a message.
pub(crate) fn encode(m: &Message) -> Vec<u8> {
    let mut attrs = Map::new();
    attrs.insert("specversion".into(), "1.0".into());
    attrs.insert("id".into(), m.id.as_str().into());
    attrs.insert(
        "type".into(),
        m.event_type.as_deref().unwrap_or(&m.topic).into(),
    );
    if let Some(s) = &m.source {
        attrs.insert("source".into(), s.as_str().into());
    }
    if let Some(t) = m.time {
        attrs.insert("time".into(), format_time(t).into());
    }
    if let Some(k) = &m.key {
        attrs.insert("partitionkey".into(), k.as_str().into());
    }
    let mut headers = Map::new();
    for (k, v) in &m.headers {
        if k == "content-type" {
            attrs.insert("datacontenttype".into(), v.as_str().into());
        } else {
            headers.insert(k.clone(), v.as_str().into());
        }
    }
    if !headers.is_empty() {
        attrs.insert(HEADERS_ATTRIBUTE.into(), Value::Object(headers));
    }
    let mut out = serde_json::to_vec(&Value::Object(attrs)).unwrap_or_else(|_| b"{}".to_vec());
    out.pop(); // the closing brace
    if is_json(&m.payload) {
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(&m.payload);
    } else {
        out.extend_from_slice(b",\"data_base64\":\"");
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(&m.payload)
                .as_bytes(),
        );
        out.push(b'"');
    }
    out.push(b'}');
    out
}

#[derive(serde::Deserialize)]
struct Data<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// A message from what arrived on a channel: a CloudEvents JSON envelope (from polybus or any
/// CloudEvents producer), or anything else, delivered as the payload with no metadata.
pub(crate) fn decode(topic: &str, body: &[u8]) -> Message {
    let plain = || {
        let mut m = Message::new(topic, body.to_vec());
        m.time = Some(SystemTime::now());
        m
    };
    let Ok(Value::Object(attrs)) = serde_json::from_slice::<Value>(body) else {
        return plain();
    };
    if !attrs.get("specversion").is_some_and(Value::is_string) {
        return plain();
    }
    let payload: Vec<u8> = if let Some(Value::String(b64)) = attrs.get("data_base64") {
        match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(p) => p,
            Err(_) => return plain(),
        }
    } else {
        match serde_json::from_slice::<Data<'_>>(body) {
            Ok(Data { data: Some(raw) }) => raw.get().as_bytes().to_vec(),
            Ok(Data { data: None }) => Vec::new(),
            Err(_) => return plain(),
        }
    };
    let mut m = Message::new(topic, payload);
    for (name, value) in attrs {
        let text = match &value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => String::new(),
        };
        match name.as_str() {
            "specversion" | "data" | "data_base64" => {}
            "id" if !text.is_empty() => m.id = EventId::Custom(text.into()),
            "id" => {}
            "type" => {
                if text != topic {
                    m.event_type = Some(text);
                }
            }
            "source" => m.source = Some(text),
            "time" => m.time = parse_time(&text),
            "partitionkey" if !text.is_empty() => m.key = Some(text),
            "partitionkey" => {}
            "datacontenttype" => {
                m.headers.insert("content-type".into(), text);
            }
            HEADERS_ATTRIBUTE => {
                if let Value::Object(h) = value {
                    for (k, v) in h {
                        if let Value::String(v) = v {
                            m.headers.insert(k, v);
                        }
                    }
                }
            }
            // Other CloudEvents extension attributes become headers.
            other => {
                if !matches!(value, Value::Object(_) | Value::Array(_) | Value::Null) {
                    m.headers.insert(other.to_owned(), text);
                }
            }
        }
    }
    if m.time.is_none() {
        m.time = Some(SystemTime::now());
    }
    m
}

/// The Redis glob of a wildcard pattern: `*` and `>` both become `*`. Tokens hold only
/// letters, digits, `_` and `-`, none of them special in a glob. The glob over-matches (`*`
/// crosses dots), so messages are checked against the pattern as well.
pub(crate) fn glob(wire_prefix: &str, pattern: &str) -> String {
    let mut g = String::from(wire_prefix);
    for (i, tok) in pattern.split('.').enumerate() {
        if i > 0 {
            g.push('.');
        }
        g.push_str(match tok {
            "*" | ">" => "*",
            t => t,
        });
    }
    g
}

/// Stops a pump.
struct StopPump(watch::Sender<bool>);

impl Unsubscribe for StopPump {
    fn unsubscribe(&self) {
        self.0.send_replace(true);
    }
}

/// One subscription's channel or glob.
struct Target {
    shared: Arc<Shared>,
    pattern: Pattern,
    channel: String,
    glob: bool,
}

impl Target {
    async fn connect(&self) -> Result<PubSub> {
        let what = format!(
            "subscribing to {:?} on {}",
            self.channel, self.shared.shown_url
        );
        let open = async {
            let client = self.shared.single_client().ok_or_else(|| {
                ::redis::RedisError::from((
                    ::redis::ErrorKind::Client,
                    "Pub/Sub mode needs one server, not a cluster",
                ))
            })?;
            let mut ps = client.get_async_pubsub().await?;
            if self.glob {
                ps.psubscribe(&self.channel).await?;
            } else {
                ps.subscribe(&self.channel).await?;
            }
            Ok::<_, ::redis::RedisError>(ps)
        };
        match tokio::time::timeout(
            self.shared.connect_timeout + self.shared.command_timeout,
            open,
        )
        .await
        {
            Ok(Ok(ps)) => Ok(ps),
            Ok(Err(e)) => Err(redis_error(&what, &e)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("{what}: no answer in time"),
            )),
        }
    }

    fn delivery(&self, msg: &Msg) -> Option<Delivery> {
        let topic = msg
            .get_channel_name()
            .strip_prefix(self.shared.wire_prefix.as_str())?;
        if validate_topic(topic).is_err() || !self.pattern.matches(topic) {
            return None;
        }
        Some(Delivery {
            event: Event::new(Arc::new(decode(topic, msg.get_payload_bytes())), 1),
            acker: None,
        })
    }
}

/// Subscribes to a channel or a glob.
pub(super) async fn subscribe(
    shared: &Arc<Shared>,
    pattern: &Pattern,
    options: &SubscribeOptions,
) -> Result<Subscribed> {
    if options.start == Start::Earliest {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "Redis Pub/Sub keeps no history: start \"earliest\" is not supported (use redis:// \
             for Streams)",
        ));
    }
    if let Some(g) = &options.group {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "group {g:?}: Redis Pub/Sub has no consumer groups (every subscriber gets every \
                 event); use redis:// for Streams consumer groups"
            ),
        ));
    }
    let target = Target {
        shared: shared.clone(),
        pattern: pattern.clone(),
        channel: if pattern.is_wildcard() {
            glob(&shared.wire_prefix, pattern.as_str())
        } else {
            shared.key(pattern.as_str())
        },
        glob: pattern.is_wildcard(),
    };
    let ps = target.connect().await?;
    let (tx, rx) = flume::bounded(options.queue_size as usize);
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(pump(target, ps, tx, stop));
    Ok((
        Box::new(ChannelSource::new(rx)) as Box<dyn Source>,
        Box::new(StopPump(stop_tx)) as Box<dyn Unsubscribe>,
    ))
}

async fn pump(
    target: Target,
    ps: PubSub,
    tx: flume::Sender<Delivery>,
    mut stop: watch::Receiver<bool>,
) {
    let (mut sink, mut stream) = ps.split();
    let mut failures = 0u32;
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            m = stream.next() => m,
        };
        match msg {
            Some(msg) => {
                let Some(d) = target.delivery(&msg) else {
                    continue;
                };
                // Handed over even when stopping: it was routed here before the stop.
                if tx.send_async(d).await.is_err() {
                    return;
                }
            }
            None => {
                // The connection was lost: subscribe again (what was published meanwhile is
                // lost: Pub/Sub is at most once).
                target.shared.state.send_if_modified(|s| {
                    let changed = *s == crate::connection::ConnectionState::Connected;
                    if changed {
                        *s = crate::connection::ConnectionState::Disconnected;
                    }
                    changed
                });
                loop {
                    let pause = Duration::from_millis((100u64 << failures.min(5)).min(2_000));
                    tokio::select! {
                        biased;
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    failures += 1;
                    match target.connect().await {
                        Ok(ps) => {
                            (sink, stream) = ps.split();
                            target.shared.note(None);
                            failures = 0;
                            break;
                        }
                        Err(e) => tracing::debug!(error = %e, "Redis Pub/Sub resubscribe failed"),
                    }
                }
            }
        }
    }
    // Stopped: a PING answered after every message the server routed here before it, so
    // what was published before the unsubscribe (or close) is handed over.
    let drained = async {
        // In subscribed mode the answer is `["pong", ""]`; only its arrival matters.
        let _ = sink.ping::<::redis::Value>().await;
        while let Some(Some(msg)) = stream.next().now_or_never() {
            if let Some(d) = target.delivery(&msg) {
                if tx.send_async(d).await.is_err() {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_LIMIT, drained).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_json_and_binary() {
        for payload in [
            &b"{\"a\": [1, 2]}"[..],
            b"42",
            b"hello",
            b"\x00\xff",
            b"",
            b" 1",
        ] {
            let mut m = Message::new("orders.created", payload.to_vec())
                .key("k")
                .header("tenant", "acme")
                .header("content-type", "application/json")
                .id("evt-1")
                .event_type("order.created");
            m.prepare(Some("svc"), 1 << 20).unwrap();
            let wire = encode(&m);
            let v: Value = serde_json::from_slice(&wire).unwrap();
            assert_eq!(v["specversion"], "1.0");
            let back = decode("orders.created", &wire);
            assert_eq!(
                back.payload.as_ref(),
                payload,
                "{}",
                String::from_utf8_lossy(&wire)
            );
            assert_eq!(back.id.as_str(), "evt-1");
            assert_eq!(back.key.as_deref(), Some("k"));
            assert_eq!(back.source.as_deref(), Some("svc"));
            assert_eq!(back.event_type.as_deref(), Some("order.created"));
            assert_eq!(back.headers, m.headers);
            assert_eq!(back.time.map(format_time), m.time.map(format_time));
        }
        assert!(encode(&Message::new("a", "{\"x\":1}")).ends_with(b",\"data\":{\"x\":1}}"));
        let plain = decode("a", b"not an envelope");
        assert_eq!(plain.payload.as_ref(), b"not an envelope");
        assert_eq!(plain.id.as_str(), "");
    }

    #[test]
    fn globs_over_match_and_are_filtered() {
        assert_eq!(glob("app.", "orders.*"), "app.orders.*");
        assert_eq!(glob("app.", "orders.>"), "app.orders.*");
        assert_eq!(glob("app.", "*.created"), "app.*.created");
        // `app.orders.*` also matches `app.orders.created.eu`: the pattern decides.
        let p = Pattern::parse("orders.*").unwrap();
        assert!(!p.matches("orders.created.eu"));
    }
}
