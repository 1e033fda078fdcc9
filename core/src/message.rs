//! The published message.

use std::{collections::BTreeMap, time::SystemTime};

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};

/// The header that says how the payload is encoded.
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// The `content-type` of a payload encoded as JSON from a value.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Headers: string names to string values, kept sorted by name.
pub type Headers = BTreeMap<String, String>;

/// An event to publish: a topic, an opaque payload and metadata.
///
/// `id` defaults to a new UUIDv7 and `time` to now, both filled in at publish time. `key` is
/// the ordering key: events with the same key are handled in publish order and never
/// concurrently (on Kafka it is also the partition key).
///
/// # Examples
/// ```
/// use polybus::Message;
/// let m = Message::new("orders.created", &b"{\"id\":1}"[..])
///     .key("order-1")
///     .header("tenant", "acme");
/// assert_eq!(m.topic(), "orders.created");
/// assert_eq!(m.key_str(), Some("order-1"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) key: Option<String>,
    pub(crate) headers: Headers,
    pub(crate) id: crate::id::EventId,
    pub(crate) event_type: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) time: Option<SystemTime>,
}

impl Message {
    /// A message for `topic` carrying `payload`.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            key: None,
            headers: Headers::new(),
            id: crate::id::EventId::Unset,
            event_type: None,
            source: None,
            time: None,
        }
    }

    /// A message whose payload is `value` encoded as JSON.
    ///
    /// # Errors
    /// [`ErrorKind::Payload`] when `value` cannot be encoded.
    pub fn json<T: serde::Serialize + ?Sized>(topic: impl Into<String>, value: &T) -> Result<Self> {
        let bytes = serde_json::to_vec(value).map_err(|e| {
            Error::new(
                ErrorKind::Payload,
                format!("cannot encode payload as JSON: {e}"),
            )
        })?;
        Ok(Message::new(topic, bytes).json_encoded())
    }

    /// Marks the payload as JSON text encoded from a value: the one rule every front end
    /// follows when it encodes a non-bytes payload (Go `json.Marshal`, Python `json.dumps`,
    /// Node `JSON.stringify`). Sets the `content-type` header to [`CONTENT_TYPE_JSON`] unless
    /// a `content-type` header is already set, so every language puts the same event on the
    /// wire.
    pub fn json_encoded(mut self) -> Self {
        if !self.headers.contains_key(HEADER_CONTENT_TYPE) {
            self.headers
                .insert(HEADER_CONTENT_TYPE.into(), CONTENT_TYPE_JSON.into());
        }
        self
    }

    /// Sets the ordering key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header (replacing one of the same name).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Replaces all headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the event id (default: a new UUIDv7 at publish time).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        let id: String = id.into();
        self.id = if id.is_empty() {
            crate::id::EventId::Unset
        } else {
            crate::id::EventId::Custom(id.into_boxed_str())
        };
        self
    }

    /// Sets the event type (CloudEvents `type`; default: the topic).
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Sets the event time (default: now, at publish time).
    pub fn time(mut self, time: SystemTime) -> Self {
        self.time = Some(time);
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The ordering key, if any.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The event id, empty until published unless set with [`id`](Message::id).
    pub fn id_str(&self) -> &str {
        self.id.as_str()
    }

    /// The headers.
    pub fn header_map(&self) -> &Headers {
        &self.headers
    }

    /// Validates the message and fills in the defaults (`id`, `time`, `source`).
    pub(crate) fn prepare(&mut self, source: Option<&str>, max_payload: usize) -> Result<()> {
        crate::topic::validate_topic(&self.topic)?;
        if self.payload.len() > max_payload {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "payload of {} bytes on topic {:?} exceeds max_payload of {} bytes",
                    self.payload.len(),
                    self.topic,
                    max_payload
                ),
            ));
        }
        if let Some(k) = &self.key {
            if k.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "key is empty (omit it instead)",
                ));
            }
        }
        for (name, value) in &self.headers {
            validate_header(name, value)?;
        }
        let time = *self.time.get_or_insert_with(SystemTime::now);
        if self.id == crate::id::EventId::Unset {
            self.id = crate::id::new_v7(time);
        }
        if self.source.is_none() {
            self.source = source.map(str::to_owned);
        }
        Ok(())
    }
}

/// Checks that a header can travel on every backend.
pub(crate) fn validate_header(name: &str, value: &str) -> Result<()> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("header name {name:?} is invalid (use visible ASCII without ':')"),
        ));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("header {name:?} has a value with CR, LF or NUL"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_encoded_sets_the_content_type_once() {
        let m = Message::new("a.b", "{}").json_encoded();
        assert_eq!(
            m.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        let kept = Message::new("a.b", "{}")
            .header("content-type", "application/cloudevents+json")
            .json_encoded();
        assert_eq!(
            kept.headers.get("content-type").map(String::as_str),
            Some("application/cloudevents+json")
        );
        let j = Message::json("a.b", &serde_json::json!({"x": 1})).unwrap();
        assert_eq!(j.payload(), &b"{\"x\":1}"[..]);
        assert_eq!(j.headers, m.headers);
    }

    #[test]
    fn prepare_fills_defaults_and_validates() {
        let mut m = Message::new("a.b", "x");
        m.prepare(Some("svc"), 10).unwrap();
        assert_eq!(m.id.as_str().len(), 36);
        assert!(m.time.is_some());
        assert_eq!(m.source.as_deref(), Some("svc"));

        let mut big = Message::new("a.b", vec![0u8; 11]);
        assert_eq!(
            big.prepare(None, 10).unwrap_err().kind(),
            ErrorKind::TooLarge
        );
        let mut bad = Message::new("a..b", "x");
        assert_eq!(
            bad.prepare(None, 10).unwrap_err().kind(),
            ErrorKind::InvalidTopic
        );
        let mut hdr = Message::new("a.b", "x").header("bad name", "v");
        assert_eq!(
            hdr.prepare(None, 10).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let mut key = Message::new("a.b", "x").key("");
        assert_eq!(
            key.prepare(None, 10).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
