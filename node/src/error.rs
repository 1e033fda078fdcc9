//! Errors as JavaScript sees them: `err.code` is the C name of the core's status.

use napi::{Env, JsError, Status};
use polybus::ErrorKind;

/// The `code` of a thrown or rejected error: the core's C status name, for example
/// `POLYBUS_ERR_CLOSED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolybusCode(ErrorKind);

impl AsRef<str> for PolybusCode {
    fn as_ref(&self) -> &str {
        self.0.name()
    }
}

impl From<Status> for PolybusCode {
    /// A failed conversion of a JavaScript argument is an invalid argument; anything else the
    /// Node-API layer reports is internal.
    fn from(status: Status) -> Self {
        PolybusCode(match status {
            Status::InvalidArg
            | Status::ObjectExpected
            | Status::StringExpected
            | Status::NameExpected
            | Status::FunctionExpected
            | Status::NumberExpected
            | Status::BooleanExpected
            | Status::ArrayExpected
            | Status::BigintExpected
            | Status::DateExpected
            | Status::ArrayBufferExpected => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        })
    }
}

/// The error type of every export.
pub type Error = napi::Error<PolybusCode>;

/// The result type of every export.
pub type Result<T> = std::result::Result<T, Error>;

/// Converts a core error, keeping its kind as the code and its text as the message.
pub fn from_core(e: polybus::Error) -> Error {
    Error::new(PolybusCode(e.kind()), e.to_string())
}

/// Converts a Node-API error, for example a failed argument conversion.
pub fn from_napi(e: napi::Error) -> Error {
    Error::new(PolybusCode::from(e.status), e.reason.clone())
}

/// An error of `kind` with `message`.
pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(PolybusCode(kind), message.into())
}

/// Builds the JavaScript error object for a core error, for rejecting a promise from the
/// JavaScript thread.
pub fn rejection(env: &Env, e: polybus::Error) -> napi::Error {
    napi::Error::from(JsError::from(from_core(e)).into_unknown(*env))
}
