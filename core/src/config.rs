//! Bus configuration: one JSON-serialisable structure, the same in every language.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// The configuration of a [`Bus`](crate::Bus).
///
/// The JSON form (used by C, Go, Python and Node) has the same field names:
///
/// ```json
/// {"url": "memory://", "prefix": "app", "name": "billing", "max_payload": 1048576}
/// ```
///
/// A bare URL string is enough for the common case: [`Config::parse`] accepts either.
///
/// # Examples
/// ```
/// use polybus::Config;
/// let cfg = Config::new("memory://").name("billing").prefix("app");
/// assert_eq!(cfg.url, "memory://");
/// let same = Config::parse(r#"{"url":"memory://","name":"billing","prefix":"app"}"#).unwrap();
/// assert_eq!(cfg, same);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where to connect: `memory://` (private), `memory://NAME` (shared in the process by name),
    /// `nats://host:4222` (NATS core), `jetstream://host:4222` (NATS JetStream),
    /// `redis://[user:password@]host:6379[/db]` (Redis Streams; `rediss://` with TLS),
    /// `redis+pubsub://host:6379` (Redis Pub/Sub; `rediss+pubsub://` with TLS),
    /// `redis+cluster://host:7000,host:7001` (Redis Streams on a Redis Cluster; `rediss+cluster://`
    /// with TLS), `kafka://host:9092,host:9092` (Apache Kafka).
    pub url: String,
    /// Namespace for topics on the broker (like `due`'s `due:eventbus`); empty for none.
    pub prefix: String,
    /// The service name, sent as each event's `source`.
    pub name: String,
    /// How long connecting may take, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long `publish` may wait for the backend to accept an event (backpressure), in ms.
    pub publish_timeout_ms: u64,
    /// How long `close` waits for in-flight and queued events to be handled, in milliseconds.
    pub close_timeout_ms: u64,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
    /// Connection settings for `nats://` and `jetstream://`: credentials, TLS, client name.
    pub nats: NatsConfig,
    /// Stream and consumer settings for `jetstream://`.
    pub jetstream: JetStreamConfig,
    /// Connection, TLS and stream settings for `redis://` and `redis+pubsub://`.
    pub redis: RedisConfig,
    /// Client, security, topic and consumer settings for `kafka://`.
    pub kafka: KafkaConfig,
}

/// Settings for `kafka://host:9092[,host:9092...]` (the `kafka` section of [`Config`]).
///
/// The URL lists the bootstrap servers. Topics are created through the admin API the first
/// time the bus publishes to or subscribes to them, with `partitions` and `replication_factor`.
/// Anything not covered here can be set as a raw librdkafka property in `properties` (applied
/// last, to the producer, the consumers and the admin client alike).
///
/// # Examples
/// ```
/// use polybus::Config;
/// let cfg = Config::parse(
///     r#"{"url":"kafka://127.0.0.1:9092","kafka":{"sasl_mechanism":"SCRAM-SHA-256",
///         "username":"svc","password":"secret","partitions":6,
///         "properties":{"fetch.wait.max.ms":"50"}}}"#,
/// )
/// .unwrap();
/// assert_eq!(cfg.kafka.partitions, 6);
/// assert_eq!(cfg.kafka.compression, "none");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// The client id the brokers see (default: the bus `name`, else `polybus`).
    pub client_id: Option<String>,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (default: `sasl_ssl` with credentials
    /// and a TLS file, `sasl_plaintext` with credentials, `ssl` with a TLS file, else
    /// `plaintext`).
    pub security_protocol: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (default `PLAIN` when a username is set).
    pub sasl_mechanism: Option<String>,
    /// SASL user name (with `password`).
    pub username: Option<String>,
    /// SASL password (with `username`).
    pub password: Option<String>,
    /// Path of a PEM file of CA certificates to trust (TLS).
    pub tls_ca: Option<String>,
    /// Path of the PEM client certificate (with `tls_key`; TLS).
    pub tls_cert: Option<String>,
    /// Path of the PEM client private key (with `tls_cert`; TLS).
    pub tls_key: Option<String>,
    /// Partitions of the topics the bus creates (default 1, which keeps every event of a topic
    /// in publish order; raise it to spread a group's work, order then holds per key).
    pub partitions: i32,
    /// Replicas of the topics the bus creates (default 1).
    pub replication_factor: i32,
    /// Producer compression: `none` (default), `gzip`, `snappy` or `lz4`.
    pub compression: String,
    /// How long the producer waits to fill a batch, in ms (default 0: lowest latency; raise it
    /// for throughput).
    pub linger_ms: u64,
    /// How long the group coordinator waits for a silent consumer before giving its
    /// partitions to other members, in ms (default 45000).
    pub session_timeout_ms: u64,
    /// How often the offsets of handled events are committed, in ms (default 1000). Offsets are
    /// also committed when a subscription ends and when partitions are revoked.
    pub commit_interval_ms: u64,
    /// How often a wildcard subscription looks for new topics that match, in ms (default 1000).
    pub metadata_refresh_ms: u64,
    /// Raw librdkafka properties, applied last (for example `{"fetch.wait.max.ms": "50"}`).
    pub properties: std::collections::BTreeMap<String, String>,
}

impl KafkaConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorKind::InvalidConfig, m));
        if let Some(p) = &self.security_protocol {
            if !matches!(
                p.as_str(),
                "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl"
            ) {
                return bad(format!(
                    "kafka.security_protocol {p:?}: expected \"plaintext\", \"ssl\", \
                     \"sasl_plaintext\" or \"sasl_ssl\""
                ));
            }
        }
        if let Some(m) = &self.sasl_mechanism {
            if !matches!(m.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") {
                return bad(format!(
                    "kafka.sasl_mechanism {m:?}: expected \"PLAIN\", \"SCRAM-SHA-256\" or \
                     \"SCRAM-SHA-512\""
                ));
            }
        }
        if self.username.is_some() != self.password.is_some() {
            return bad("kafka: username and password go together".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("kafka: tls_cert and tls_key go together".into());
        }
        if !matches!(
            self.compression.as_str(),
            "none" | "gzip" | "snappy" | "lz4"
        ) {
            return bad(format!(
                "kafka.compression {:?}: expected \"none\", \"gzip\", \"snappy\" or \"lz4\"",
                self.compression
            ));
        }
        if self.partitions < 1 || self.replication_factor < 1 {
            return bad("kafka: partitions and replication_factor must be at least 1".into());
        }
        if self.session_timeout_ms < 1
            || self.commit_interval_ms < 1
            || self.metadata_refresh_ms < 1
        {
            return bad(
                "kafka: session_timeout_ms, commit_interval_ms and metadata_refresh_ms must be \
                 at least 1"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            client_id: None,
            security_protocol: None,
            sasl_mechanism: None,
            username: None,
            password: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            partitions: 1,
            replication_factor: 1,
            compression: "none".to_owned(),
            linger_ms: 0,
            session_timeout_ms: 45_000,
            commit_interval_ms: 1_000,
            metadata_refresh_ms: 1_000,
            properties: Default::default(),
        }
    }
}

/// Settings for `redis://` (Streams) and `redis+pubsub://` (Pub/Sub): the `redis` section of
/// [`Config`], with the names Redis users know (`addrs`, `db`, `username`, `password`, the TLS
/// files, `max_retries`).
///
/// Credentials and the database can also travel in the URL:
/// `redis://user:password@host:6379/2`; a setting here wins over the URL. `rediss://` (or any
/// TLS file) connects with TLS.
///
/// # Examples
/// ```
/// use polybus::Config;
/// let cfg = Config::parse(
///     r#"{"url":"redis://127.0.0.1:6379","redis":{"username":"svc","password":"secret","db":2}}"#,
/// )
/// .unwrap();
/// assert_eq!(cfg.redis.db, Some(2));
/// assert_eq!(cfg.redis.max_len, 100_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Servers as `host:port`, tried in order when connecting (the first that answers is
    /// used); default: the URL's hosts. With `redis+cluster://` they are the cluster's seed
    /// nodes.
    pub addrs: Vec<String>,
    /// The database number (default: the URL's path, else 0).
    pub db: Option<i64>,
    /// ACL user name (default: the URL's, else none: the `default` user).
    pub username: Option<String>,
    /// Password (default: the URL's, else none).
    pub password: Option<String>,
    /// Path of a PEM file of CA certificates to trust (TLS).
    pub tls_ca: Option<String>,
    /// Path of the PEM client certificate (with `tls_key`; TLS).
    pub tls_cert: Option<String>,
    /// Path of the PEM client private key (with `tls_cert`; TLS).
    pub tls_key: Option<String>,
    /// How long one command may take before it fails with a timeout, in ms (default 5000).
    pub command_timeout_ms: u64,
    /// Attempts to re-establish a lost connection before a command fails (default 3).
    /// Commands themselves are never retried by the backend: a publish is reported once.
    pub max_retries: usize,
    /// Approximate length each topic's stream is trimmed to on publish (`XADD MAXLEN ~`);
    /// 0 keeps everything (default 100000). Streams only.
    pub max_len: u64,
    /// How long an event may stay delivered but unacknowledged before another member of the
    /// group reclaims it (`XAUTOCLAIM`), in ms (default 30000). While a handler runs or a
    /// retry waits, polybus keeps the event claimed. Streams only.
    pub claim_idle_ms: u64,
    /// How long one blocking read waits for new events, in ms (default 1000). Streams only.
    pub block_ms: u64,
    /// How often a wildcard subscription looks for new streams whose topic matches
    /// (`SCAN ... TYPE stream`), in ms (default 1000). Streams only.
    pub scan_interval_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            addrs: Vec::new(),
            db: None,
            username: None,
            password: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            command_timeout_ms: 5_000,
            max_retries: 3,
            max_len: 100_000,
            claim_idle_ms: 30_000,
            block_ms: 1_000,
            scan_interval_ms: 1_000,
        }
    }
}

/// Connection settings for `nats://` and `jetstream://` (the `nats` section of [`Config`]).
///
/// Credentials can also travel in the URL: `nats://user:password@host:4222` or
/// `nats://token@host:4222`. Several servers are separated by commas:
/// `nats://a:4222,b:4222`.
///
/// # Examples
/// ```
/// use polybus::Config;
/// let cfg = Config::parse(
///     r#"{"url":"nats://127.0.0.1:4222","nats":{"user":"svc","password":"secret"}}"#,
/// )
/// .unwrap();
/// assert_eq!(cfg.nats.user.as_deref(), Some("svc"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<String>,
    /// Authentication token.
    pub token: Option<String>,
    /// NKey seed (`SU...`).
    pub nkey_seed: Option<String>,
    /// Path of a `.creds` file (JWT and NKey seed).
    pub creds_file: Option<String>,
    /// Path of a PEM file of CA certificates to trust.
    pub tls_ca: Option<String>,
    /// Path of the PEM client certificate (with `tls_key`).
    pub tls_cert: Option<String>,
    /// Path of the PEM client private key (with `tls_cert`).
    pub tls_key: Option<String>,
    /// Refuse to connect without TLS.
    pub tls_required: bool,
    /// The connection name shown by the server (default: the bus `name`).
    pub connection_name: Option<String>,
    /// Messages one subscription may hold in the client while its handlers are behind
    /// (default 524,288, nats.go's pending limit). Past it the client drops messages (a slow
    /// consumer): each counts in `stats().dropped` and is logged as a warning.
    pub pending_limit: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            creds_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            connection_name: None,
            pending_limit: 512 * 1024,
        }
    }
}

/// Stream and consumer settings for `jetstream://` (the `jetstream` section of [`Config`]).
///
/// The stream is bound if it exists and created otherwise. By default it is named
/// `POLYBUS_<PREFIX>` and covers `<prefix>.>`; JetStream needs a prefix, so with an empty
/// `prefix` the bus uses `polybus`.
///
/// # Examples
/// ```
/// use polybus::Config;
/// let cfg = Config::parse(
///     r#"{"url":"jetstream://127.0.0.1:4222","prefix":"app","jetstream":{"max_age_ms":3600000}}"#,
/// )
/// .unwrap();
/// assert_eq!(cfg.jetstream.max_age_ms, 3_600_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The stream name (default: `POLYBUS_` and the prefix in upper case, dots as `_`).
    pub stream: Option<String>,
    /// The subjects the stream covers when it is created (default: `<prefix>.>`).
    pub subjects: Vec<String>,
    /// Retention when the stream is created: `limits` (default), `interest` or `workqueue`.
    pub retention: String,
    /// Storage when the stream is created: `file` (default) or `memory`.
    pub storage: String,
    /// Oldest event kept, in milliseconds; 0 keeps events for ever (the default).
    pub max_age_ms: u64,
    /// Largest stream size in bytes; -1 is unlimited (the default).
    pub max_bytes: i64,
    /// Stream replicas (default 1).
    pub replicas: usize,
    /// How long the broker waits for an ack before redelivering, in ms (default 30000). While
    /// a handler runs or a retry waits, polybus tells the broker it is still working.
    pub ack_wait_ms: u64,
    /// Events delivered but not yet acknowledged, per consumer (default 1024).
    pub max_ack_pending: i64,
    /// Broker deliveries of one event before the broker gives up on it: a safety net for
    /// events that crash their consumer, beyond the local `max_attempts` (default 20; -1 for
    /// no limit).
    pub max_deliver: i64,
    /// How long a consumer of a broadcast subscription survives its subscriber going away
    /// without unsubscribing (a crash), in ms (default 3600000).
    pub inactive_threshold_ms: u64,
    /// Publish acknowledgements awaited at once per bus (default 4096; the client allows 5000).
    pub max_pending_publishes: usize,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            stream: None,
            subjects: Vec::new(),
            retention: "limits".to_owned(),
            storage: "file".to_owned(),
            max_age_ms: 0,
            max_bytes: -1,
            replicas: 1,
            ack_wait_ms: 30_000,
            max_ack_pending: 1024,
            max_deliver: 20,
            inactive_threshold_ms: 3_600_000,
            max_pending_publishes: 4096,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: "memory://".to_owned(),
            prefix: String::new(),
            name: String::new(),
            connect_timeout_ms: 5_000,
            publish_timeout_ms: 30_000,
            close_timeout_ms: 30_000,
            max_payload: 1024 * 1024,
            nats: NatsConfig::default(),
            jetstream: JetStreamConfig::default(),
            redis: RedisConfig::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

/// The URL schemes of this build.
const SCHEMES: &[&str] = &[
    #[cfg(feature = "memory")]
    "memory",
    #[cfg(feature = "nats")]
    "nats",
    #[cfg(feature = "jetstream")]
    "jetstream",
    #[cfg(feature = "redis")]
    "redis",
    #[cfg(feature = "redis")]
    "rediss",
    #[cfg(feature = "redis")]
    "redis+pubsub",
    #[cfg(feature = "redis")]
    "rediss+pubsub",
    #[cfg(feature = "redis")]
    "redis+cluster",
    #[cfg(feature = "redis")]
    "rediss+cluster",
    #[cfg(feature = "kafka")]
    "kafka",
];

impl Config {
    /// A configuration with `url` and every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Config {
            url: url.into(),
            ..Config::default()
        }
    }

    /// Parses a bare URL or a JSON object.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] naming what is wrong (bad JSON, an unknown field, a bad URL).
    pub fn parse(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        let cfg = if trimmed.starts_with('{') {
            serde_json::from_str::<Config>(trimmed)
                .map_err(|e| Error::new(ErrorKind::InvalidConfig, format!("config JSON: {e}")))?
        } else {
            Config::new(trimmed)
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets the service name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the topic prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the largest payload accepted, in bytes.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets how long connecting may take.
    ///
    /// ```
    /// let cfg = polybus::Config::new("nats://127.0.0.1:4222")
    ///     .connect_timeout(std::time::Duration::from_secs(2));
    /// assert_eq!(cfg.connect_timeout_ms, 2000);
    /// ```
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout_ms = d.as_millis() as u64;
        self
    }

    /// Sets the `nats` section (credentials, TLS, client name).
    ///
    /// ```
    /// use polybus::{Config, NatsConfig};
    /// let cfg = Config::new("nats://127.0.0.1:4222").nats(NatsConfig {
    ///     token: Some("s3cret".into()),
    ///     ..NatsConfig::default()
    /// });
    /// assert_eq!(cfg.nats.token.as_deref(), Some("s3cret"));
    /// ```
    pub fn nats(mut self, nats: NatsConfig) -> Self {
        self.nats = nats;
        self
    }

    /// Sets the `jetstream` section (stream and consumer settings).
    ///
    /// ```
    /// use polybus::{Config, JetStreamConfig};
    /// let cfg = Config::new("jetstream://127.0.0.1:4222").jetstream(JetStreamConfig {
    ///     ack_wait_ms: 60_000,
    ///     ..JetStreamConfig::default()
    /// });
    /// assert_eq!(cfg.jetstream.ack_wait_ms, 60_000);
    /// ```
    pub fn jetstream(mut self, jetstream: JetStreamConfig) -> Self {
        self.jetstream = jetstream;
        self
    }

    /// Sets the `redis` section (servers, credentials, TLS, stream settings).
    ///
    /// ```
    /// use polybus::{Config, RedisConfig};
    /// let cfg = Config::new("redis://127.0.0.1:6379").redis(RedisConfig {
    ///     claim_idle_ms: 60_000,
    ///     ..RedisConfig::default()
    /// });
    /// assert_eq!(cfg.redis.claim_idle_ms, 60_000);
    /// ```
    pub fn redis(mut self, redis: RedisConfig) -> Self {
        self.redis = redis;
        self
    }

    /// Sets the `kafka` section (client, security, topic and consumer settings).
    ///
    /// ```
    /// use polybus::{Config, KafkaConfig};
    /// let cfg = Config::new("kafka://127.0.0.1:9092").kafka(KafkaConfig {
    ///     partitions: 6,
    ///     ..KafkaConfig::default()
    /// });
    /// assert_eq!(cfg.kafka.partitions, 6);
    /// ```
    pub fn kafka(mut self, kafka: KafkaConfig) -> Self {
        self.kafka = kafka;
        self
    }

    /// Sets how long `publish` may wait under backpressure.
    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.publish_timeout_ms = d.as_millis() as u64;
        self
    }

    /// Sets how long `close` waits for handlers to finish.
    pub fn close_timeout(mut self, d: Duration) -> Self {
        self.close_timeout_ms = d.as_millis() as u64;
        self
    }

    /// The URL scheme, for example `"memory"`.
    pub fn scheme(&self) -> Result<&str> {
        match self.url.split_once("://") {
            Some((scheme, _)) if !scheme.is_empty() => Ok(scheme),
            _ => Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "url {:?} has no scheme (expected e.g. \"memory://\")",
                    self.url
                ),
            )),
        }
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        let scheme = self.scheme()?;
        if !SCHEMES.contains(&scheme) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "url {:?}: unknown scheme {scheme:?} (this build supports: {})",
                    self.url,
                    SCHEMES.join(", ")
                ),
            ));
        }
        let js = &self.jetstream;
        if !matches!(js.retention.as_str(), "limits" | "interest" | "workqueue") {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "jetstream.retention {:?}: expected \"limits\", \"interest\" or \"workqueue\"",
                    js.retention
                ),
            ));
        }
        if !matches!(js.storage.as_str(), "file" | "memory") {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "jetstream.storage {:?}: expected \"file\" or \"memory\"",
                    js.storage
                ),
            ));
        }
        if js.ack_wait_ms < 1000 || js.max_ack_pending == 0 || js.max_pending_publishes == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "jetstream: ack_wait_ms must be at least 1000, max_ack_pending and \
                 max_pending_publishes at least 1",
            ));
        }
        if self.nats.tls_cert.is_some() != self.nats.tls_key.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "nats: tls_cert and tls_key go together",
            ));
        }
        if !(1..=1 << 24).contains(&self.nats.pending_limit) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "nats.pending_limit {}: must be 1..=16777216 messages",
                    self.nats.pending_limit
                ),
            ));
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "nats: user and password go together",
            ));
        }
        let r = &self.redis;
        if r.tls_cert.is_some() != r.tls_key.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "redis: tls_cert and tls_key go together",
            ));
        }
        if r.command_timeout_ms == 0 || r.block_ms == 0 || r.claim_idle_ms < 100 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "redis: command_timeout_ms and block_ms must be at least 1, claim_idle_ms at \
                 least 100",
            ));
        }
        if r.db.is_some_and(|d| d < 0) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "redis.db must not be negative",
            ));
        }
        self.kafka.validate()?;
        if !self.prefix.is_empty() {
            crate::topic::validate_topic(&self.prefix).map_err(|e| {
                Error::new(ErrorKind::InvalidConfig, format!("prefix: {}", e.message()))
            })?;
        }
        if self.max_payload == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_payload must be at least 1",
            ));
        }
        Ok(())
    }

    pub(crate) fn duration(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_url_and_json() {
        assert_eq!(Config::parse("memory://").unwrap(), Config::default());
        let c = Config::parse(r#"{"url":"memory://x","max_payload":10}"#).unwrap();
        assert_eq!(c.max_payload, 10);
        let e = Config::parse(r#"{"url":"memory://","colour":1}"#).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("colour"), "{e}");
        assert_eq!(
            Config::parse("{nope").unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
        assert_eq!(
            Config::parse("localhost").unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
        assert_eq!(
            Config::parse("foo://x").unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
        let e = Config::parse(r#"{"prefix":"a..b"}"#).unwrap_err();
        assert!(e.to_string().contains("prefix"), "{e}");
    }

    #[test]
    fn nats_pending_limit_defaults_and_is_checked() {
        assert_eq!(Config::default().nats.pending_limit, 512 * 1024);
        let c = Config::parse(r#"{"url":"nats://h:4222","nats":{"pending_limit":64}}"#).unwrap();
        assert_eq!(c.nats.pending_limit, 64);
        let e = Config::parse(r#"{"url":"nats://h:4222","nats":{"pending_limit":0}}"#).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("nats.pending_limit"), "{e}");
    }
}
