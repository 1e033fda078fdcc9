//! # polybus
//!
//! One event bus, written once in Rust and used natively from Rust, C, Go, Python and Node.
//!
//! Publish events to dot-separated topics (`orders.created`) and subscribe handlers to
//! patterns (`orders.*`, `orders.>`). Every subscription is a broadcast unless it joins a
//! `group`, whose members compete for events. A handler's result is the acknowledgement: an
//! error or a panic is a nack, and the event is retried with exponential backoff up to
//! `max_attempts`, then published to the `dead_letter` topic. Events with the same `key` are
//! handled in publish order and never concurrently, whatever the `concurrency`.
//!
//! | backend | URL | guarantee |
//! |---|---|---|
//! | in process | `memory://` | in process, backpressure, nothing dropped |
//! | NATS core | `nats://host:4222` | at most once |
//! | NATS JetStream | `jetstream://host:4222` | at least once |
//! | Redis Streams | `redis://host:6379` (`rediss://` with TLS) | at least once |
//! | Redis Pub/Sub | `redis+pubsub://host:6379` | at most once |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> polybus::Result<()> {
//! use polybus::{Bus, Event, Message, SubscribeOptions};
//!
//! let bus = Bus::connect("memory://").await?;
//! let sub = bus
//!     .subscribe("orders.>", SubscribeOptions::new().concurrency(4), |e: Event| async move {
//!         println!("{} {}", e.topic(), String::from_utf8_lossy(e.payload()));
//!         Ok::<(), polybus::Error>(())
//!     })
//!     .await?;
//! bus.publish(Message::new("orders.created", "{\"id\":1}").key("order-1")).await?;
//! sub.close().await?;
//! bus.close().await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs, unreachable_pub, rustdoc::broken_intra_doc_links)]

mod backend;
mod bus;
mod cancel;
mod config;
mod connection;
pub mod dispatch;
mod error;
mod event;
mod id;
mod message;
#[cfg(feature = "global-runtime")]
pub mod runtime;
mod subscription;
mod topic;

pub use bus::{Bus, IntoConfig, PendingPublish};
pub use cancel::Cancel;
pub use config::{Config, JetStreamConfig, KafkaConfig, NatsConfig, RedisConfig};
pub use connection::ConnectionState;
pub use dispatch::{Handler, Stats};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use event::Event;
pub use message::{Headers, Message, CONTENT_TYPE_JSON, HEADER_CONTENT_TYPE};
pub use subscription::{
    Batch, BatchSubscription, DeliveryQueue, Start, SubscribeOptions, Subscription,
};
pub use topic::{validate_topic, Pattern, MAX_TOPIC_LEN};

/// The version of this crate.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
