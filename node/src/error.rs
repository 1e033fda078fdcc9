//! Errors as JavaScript sees them: `err.code` is the C name of the core's status and
//! `err.message` the core's text for the error (its `Display`: `kind: detail`), the same text
//! every language shows.

use napi::{
    bindgen_prelude::{JsObjectValue, JsValue},
    sys, Env, JsError, Status,
};
use napi_derive::napi;
use polybus::ErrorKind;

/// The `code` of a thrown or rejected error: the core's C status name, for example
/// `POLYBUS_ERR_CLOSED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolybusCode(pub(crate) ErrorKind);

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
    let code = PolybusCode::from(e.status);
    from_core(polybus::Error::new(code.0, e.reason.clone()))
}

/// The core error an error of this module reads as: its kind, and its detail (the message
/// without the `kind: ` that `from_core` put in front).
pub fn to_core(e: &Error) -> polybus::Error {
    let kind = e.status.0;
    let detail = e
        .reason
        .strip_prefix(kind.description())
        .and_then(|r| r.strip_prefix(": "))
        .unwrap_or(&e.reason);
    polybus::Error::new(kind, detail)
}

/// An error of `kind` with `detail`, reading as the core's error of that kind does.
pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Error {
    from_core(polybus::Error::new(kind, detail))
}

/// Builds the JavaScript error object for a core error, for rejecting a promise on the
/// JavaScript thread. An error of a batch publish carries `published`: how many events, from
/// the first, were published before the failure (`published` overrides the core's count).
pub fn rejection(env: &Env, e: polybus::Error, published: Option<usize>) -> sys::napi_value {
    let published = published.or(e.published());
    let value = JsError::from(from_core(e)).into_unknown(*env);
    if let Some(n) = published {
        if let Ok(mut object) = value.coerce_to_object() {
            // Counts stay far below 2^53.
            let _ = object.set_named_property("published", n as f64);
        }
    }
    value.raw()
}

/// The core's text for an error of `code` (a status name such as `POLYBUS_ERR_PAYLOAD`) with
/// `detail`: what `index.js` uses as the message of the errors it raises itself, so they read
/// as the core's do (`payload error: ...`).
#[napi(catch_unwind)]
pub fn error_message(code: String, detail: String) -> String {
    let kind = ErrorKind::ALL
        .iter()
        .copied()
        .find(|k| k.name() == code)
        .unwrap_or(ErrorKind::Internal);
    polybus::Error::new(kind, detail).to_string()
}
