//! The delivered event.

use std::{sync::Arc, time::SystemTime};

use bytes::Bytes;

use crate::{
    error::{Error, ErrorKind, Result},
    message::{Headers, Message},
};

/// An event delivered to a handler: the published [`Message`] plus the delivery attempt.
///
/// Cloning is cheap (the message is shared).
#[derive(Debug, Clone)]
pub struct Event {
    pub(crate) message: Arc<Message>,
    pub(crate) attempt: u32,
}

impl Event {
    pub(crate) fn new(message: Arc<Message>, attempt: u32) -> Self {
        Event { message, attempt }
    }

    /// The topic it was published on (without the bus prefix).
    pub fn topic(&self) -> &str {
        &self.message.topic
    }

    /// The payload, untouched.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The ordering key, if one was set.
    pub fn key(&self) -> Option<&str> {
        self.message.key.as_deref()
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.message.headers
    }

    /// The event id (a UUIDv7 unless the publisher set one).
    pub fn id(&self) -> &str {
        self.message.id.as_str()
    }

    /// The event type (defaults to the topic).
    pub fn event_type(&self) -> &str {
        self.message
            .event_type
            .as_deref()
            .unwrap_or(&self.message.topic)
    }

    /// The publishing service's name (the bus `name`), if it had one.
    pub fn source(&self) -> Option<&str> {
        self.message.source.as_deref()
    }

    /// When it was published.
    pub fn time(&self) -> SystemTime {
        self.message.time.unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The delivery attempt: 1 on first delivery, 2 on the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The message this event carries.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Decodes the payload as JSON.
    ///
    /// # Errors
    /// [`ErrorKind::Payload`] when the payload is not valid JSON for `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.message.payload).map_err(|e| {
            Error::new(
                ErrorKind::Payload,
                format!(
                    "payload of event {} on {:?} is not the expected JSON: {e}",
                    self.id(),
                    self.topic()
                ),
            )
        })
    }
}
