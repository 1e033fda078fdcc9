//! The one error type of polybus and the status table every front end maps onto.

use std::fmt;

/// A boxed error kept as the cause of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A `Result` whose error is a polybus [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! error_kinds {
    ($( $(#[$doc:meta])* $variant:ident = $code:expr, $name:literal, $text:literal; )*) => {
        /// What went wrong, as one fixed set shared by every front end.
        ///
        /// Each kind has a stable numeric [`code`](ErrorKind::code) and C name
        /// ([`name`](ErrorKind::name), for example `POLYBUS_ERR_CLOSED`): the C status, the Go
        /// `Status`, the Python exception's `.code` and the Node error's `code` all come from
        /// this table.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorKind {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorKind {
            /// Every kind, in table order.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$variant),*];

            /// The stable numeric status code (negative; the C `polybus_status_t` value).
            pub const fn code(self) -> i32 {
                match self { $(ErrorKind::$variant => $code,)* }
            }

            /// The C name of the status, for example `"POLYBUS_ERR_CLOSED"`.
            pub const fn name(self) -> &'static str {
                match self { $(ErrorKind::$variant => $name,)* }
            }

            /// A short lower-case description of the kind.
            pub const fn description(self) -> &'static str {
                match self { $(ErrorKind::$variant => $text,)* }
            }

            /// The kind whose [`code`](ErrorKind::code) is `code`, if any.
            pub fn from_code(code: i32) -> Option<ErrorKind> {
                match code { $($code => Some(ErrorKind::$variant),)* _ => None }
            }
        }
    };
}

error_kinds! {
    /// An argument was missing or out of range (a NULL handle, a zero concurrency, bad UTF-8).
    InvalidArgument = -1, "POLYBUS_ERR_INVALID_ARGUMENT", "invalid argument";
    /// The configuration could not be parsed or names an unknown setting.
    InvalidConfig = -2, "POLYBUS_ERR_INVALID_CONFIG", "invalid config";
    /// A topic is not a valid polybus topic.
    InvalidTopic = -3, "POLYBUS_ERR_INVALID_TOPIC", "invalid topic";
    /// A subscription pattern is not valid.
    InvalidPattern = -4, "POLYBUS_ERR_INVALID_PATTERN", "invalid pattern";
    /// The bus or subscription was closed.
    Closed = -5, "POLYBUS_ERR_CLOSED", "closed";
    /// The backend cannot honour the requested option or pattern.
    Unsupported = -6, "POLYBUS_ERR_UNSUPPORTED", "unsupported";
    /// An operation did not finish in time.
    Timeout = -7, "POLYBUS_ERR_TIMEOUT", "timed out";
    /// The broker could not be reached or the connection was lost.
    Connection = -8, "POLYBUS_ERR_CONNECTION", "connection failed";
    /// A payload or message exceeds the configured limit.
    TooLarge = -9, "POLYBUS_ERR_TOO_LARGE", "message too large";
    /// The broker rejected the credentials.
    Auth = -10, "POLYBUS_ERR_AUTH", "authentication failed";
    /// The broker returned an error.
    Backend = -11, "POLYBUS_ERR_BACKEND", "backend error";
    /// A payload could not be encoded or decoded (for example as JSON).
    Payload = -12, "POLYBUS_ERR_PAYLOAD", "payload error";
    /// A handler failed (returned an error, raised, rejected or panicked).
    Handler = -13, "POLYBUS_ERR_HANDLER", "handler failed";
    /// A panic was caught at the API boundary.
    Panic = -14, "POLYBUS_ERR_PANIC", "panic";
    /// The library and its front end were built for different ABI versions.
    AbiMismatch = -15, "POLYBUS_ERR_ABI_MISMATCH", "abi version mismatch";
    /// The caller cancelled the call (a Go context, a Node AbortSignal, a C cancel handle).
    Cancelled = -16, "POLYBUS_ERR_CANCELLED", "cancelled";
    /// An internal invariant was broken; please report it.
    Internal = -100, "POLYBUS_ERR_INTERNAL", "internal error";
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// The error of every fallible polybus operation: a kind plus a message and an optional cause.
///
/// Display shows `kind: message`, for example
/// `invalid topic: "orders..created": empty token at position 2`.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
    published: Option<usize>,
}

impl Error {
    /// A new error of `kind` with a human-readable `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
            published: None,
        }
    }

    /// A new error of `kind` caused by `source`; the message is the source's text.
    pub fn with_source(kind: ErrorKind, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        Error {
            kind,
            message: source.to_string(),
            source: Some(source),
            published: None,
        }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// For the error of a batch publish: how many events, from the first, were published
    /// before the failure (the failed event is the next one). `None` for other errors.
    pub fn published(&self) -> Option<usize> {
        self.published
    }

    pub(crate) fn with_published(mut self, n: usize) -> Self {
        self.published = Some(n);
        self
    }

    /// `Closed` with a message naming what was closed.
    pub(crate) fn closed(what: &str) -> Self {
        Error::new(ErrorKind::Closed, format!("{what} is closed"))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("published", &self.published)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.message)
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error::new(kind, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for k in ErrorKind::ALL {
            assert!(seen.insert(k.code()), "duplicate code {}", k.code());
            assert_eq!(ErrorKind::from_code(k.code()), Some(*k));
            assert!(k.name().starts_with("POLYBUS_ERR_"));
        }
        assert_eq!(ErrorKind::from_code(0), None);
    }

    #[test]
    fn display_is_kind_then_message() {
        let e = Error::new(ErrorKind::InvalidTopic, "\"a..b\": empty token");
        assert_eq!(e.to_string(), "invalid topic: \"a..b\": empty token");
        assert_eq!(Error::from(ErrorKind::Closed).to_string(), "closed");
    }
}
