//! Delivered events, handed to JavaScript one batch at a time.
//!
//! JavaScript reads an event's fields lazily through the batch (`batch.topic(i)`), so a handler
//! pays only for the fields it uses, and the events stay readable after the batch is completed.

use std::collections::HashMap;

use napi::{bindgen_prelude::BufferSlice, Env};
use napi_derive::napi;
use polybus::{Batch, ErrorKind, Event};

use crate::error;

/// Events of one lane, to handle in order and report with `complete`.
#[napi]
pub struct EventBatch {
    events: Vec<Event>,
    batch: Option<Batch>,
}

impl EventBatch {
    pub(crate) fn new(batch: Batch) -> Self {
        EventBatch {
            events: batch.events().to_vec(),
            batch: Some(batch),
        }
    }

    fn event(&self, index: u32) -> error::Result<&Event> {
        self.events.get(index as usize).ok_or_else(|| {
            error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "event {index} is out of range (the batch has {})",
                    self.events.len()
                ),
            )
        })
    }
}

#[napi]
impl EventBatch {
    /// How many events the batch holds.
    #[napi(getter, catch_unwind)]
    pub fn length(&self) -> u32 {
        self.events.len() as u32
    }

    /// Reports how far the handlers got: the first `handled` events succeeded; `failure`, if
    /// given, is why the next one failed. The core decides the rest (acks, the retry or
    /// dead letter of the failed one, redelivery of those not run). Throws
    /// `POLYBUS_ERR_INVALID_ARGUMENT` when the batch was already completed.
    #[napi(catch_unwind)]
    pub fn complete(&mut self, handled: u32, failure: Option<String>) -> error::Result<()> {
        let batch = self.batch.take().ok_or_else(|| {
            error::new(
                ErrorKind::InvalidArgument,
                "the batch was already completed",
            )
        })?;
        match failure {
            None if handled as usize >= self.events.len() => batch.ack_all(),
            failure => batch.complete(handled as usize, failure),
        }
        Ok(())
    }

    /// The topic of event `index`.
    #[napi(catch_unwind)]
    pub fn topic(&self, index: u32) -> error::Result<String> {
        Ok(self.event(index)?.topic().to_owned())
    }

    /// A copy of the payload of event `index`.
    #[napi(catch_unwind)]
    pub fn payload<'env>(&self, env: &'env Env, index: u32) -> error::Result<BufferSlice<'env>> {
        BufferSlice::copy_from(env, self.event(index)?.payload()).map_err(error::from_napi)
    }

    /// The ordering key of event `index`, or `null`.
    #[napi(catch_unwind)]
    pub fn key(&self, index: u32) -> error::Result<Option<String>> {
        Ok(self.event(index)?.key().map(str::to_owned))
    }

    /// The headers of event `index`.
    #[napi(catch_unwind)]
    pub fn headers(&self, index: u32) -> error::Result<HashMap<String, String>> {
        Ok(self
            .event(index)?
            .headers()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    /// The id of event `index`.
    #[napi(catch_unwind)]
    pub fn id(&self, index: u32) -> error::Result<String> {
        Ok(self.event(index)?.id().to_owned())
    }

    /// The type of event `index` (the topic unless the publisher set one).
    #[napi(js_name = "type", catch_unwind)]
    pub fn event_type(&self, index: u32) -> error::Result<String> {
        Ok(self.event(index)?.event_type().to_owned())
    }

    /// The publishing service's name for event `index`, or `null`.
    #[napi(catch_unwind)]
    pub fn source(&self, index: u32) -> error::Result<Option<String>> {
        Ok(self.event(index)?.source().map(str::to_owned))
    }

    /// When event `index` was published (or the time its publisher set), in milliseconds since
    /// the Unix epoch. Whole milliseconds are exact, so a publisher's `Date` reads back equal.
    #[napi(catch_unwind)]
    pub fn time(&self, index: u32) -> error::Result<f64> {
        let since = self
            .event(index)?
            .time()
            .duration_since(std::time::UNIX_EPOCH);
        Ok(since.map_or(0.0, |d| {
            d.as_millis() as f64 + f64::from(d.subsec_nanos() % 1_000_000) / 1e6
        }))
    }

    /// The delivery attempt of event `index`: 1 on first delivery.
    #[napi(catch_unwind)]
    pub fn attempt(&self, index: u32) -> error::Result<u32> {
        Ok(self.event(index)?.attempt())
    }
}
