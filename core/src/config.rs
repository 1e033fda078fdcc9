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
    /// Where to connect: `memory://` (private), `memory://NAME` (shared in the process by name).
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
        }
    }
}

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
        if !matches!(scheme, "memory") {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "url {:?}: unknown scheme {scheme:?} (this build supports: memory)",
                    self.url
                ),
            ));
        }
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
}
