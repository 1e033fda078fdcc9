//! The status codes (one table with the core's `ErrorKind`).

use std::ffi::c_char;

use polybus_core::ErrorKind;

/// The version of the C ABI described by this header. Bumped on any incompatible change;
/// compare it with polybus_abi_version() at load time.
pub const POLYBUS_ABI_VERSION: u32 = 2;

/// @brief The result of every fallible call.
///
/// 0 is success, negative values are errors, positive values are non-error outcomes. Values are
/// never renumbered. polybus_status_name() and polybus_status_str() describe any value.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum polybus_status_t {
    /// Success.
    POLYBUS_OK = 0,
    /// A pull timed out with no events (not an error).
    POLYBUS_NO_EVENTS = 1,
    /// An argument was NULL, out of range or not UTF-8.
    POLYBUS_ERR_INVALID_ARGUMENT = -1,
    /// The configuration could not be parsed or names an unknown setting.
    POLYBUS_ERR_INVALID_CONFIG = -2,
    /// A topic is not valid (see polybus_open() for the rules).
    POLYBUS_ERR_INVALID_TOPIC = -3,
    /// A subscription pattern is not valid.
    POLYBUS_ERR_INVALID_PATTERN = -4,
    /// The bus or subscription is closed.
    POLYBUS_ERR_CLOSED = -5,
    /// The backend cannot honour an option or pattern.
    POLYBUS_ERR_UNSUPPORTED = -6,
    /// An operation did not finish in time.
    POLYBUS_ERR_TIMEOUT = -7,
    /// The broker could not be reached or the connection was lost.
    POLYBUS_ERR_CONNECTION = -8,
    /// A payload exceeds max_payload.
    POLYBUS_ERR_TOO_LARGE = -9,
    /// The broker rejected the credentials.
    POLYBUS_ERR_AUTH = -10,
    /// The broker returned an error.
    POLYBUS_ERR_BACKEND = -11,
    /// A payload could not be encoded or decoded.
    POLYBUS_ERR_PAYLOAD = -12,
    /// A handler failed.
    POLYBUS_ERR_HANDLER = -13,
    /// A panic inside polybus was caught at the boundary (please report it).
    POLYBUS_ERR_PANIC = -14,
    /// The library and its caller were built for different ABI versions.
    POLYBUS_ERR_ABI_MISMATCH = -15,
    /// The caller cancelled the call (a fired polybus_cancel_t).
    POLYBUS_ERR_CANCELLED = -16,
    /// An internal invariant was broken (please report it).
    POLYBUS_ERR_INTERNAL = -100,
}

impl polybus_status_t {
    pub(crate) fn from_kind(kind: ErrorKind) -> Self {
        use polybus_status_t::*;
        match kind {
            ErrorKind::InvalidArgument => POLYBUS_ERR_INVALID_ARGUMENT,
            ErrorKind::InvalidConfig => POLYBUS_ERR_INVALID_CONFIG,
            ErrorKind::InvalidTopic => POLYBUS_ERR_INVALID_TOPIC,
            ErrorKind::InvalidPattern => POLYBUS_ERR_INVALID_PATTERN,
            ErrorKind::Closed => POLYBUS_ERR_CLOSED,
            ErrorKind::Unsupported => POLYBUS_ERR_UNSUPPORTED,
            ErrorKind::Timeout => POLYBUS_ERR_TIMEOUT,
            ErrorKind::Connection => POLYBUS_ERR_CONNECTION,
            ErrorKind::TooLarge => POLYBUS_ERR_TOO_LARGE,
            ErrorKind::Auth => POLYBUS_ERR_AUTH,
            ErrorKind::Backend => POLYBUS_ERR_BACKEND,
            ErrorKind::Payload => POLYBUS_ERR_PAYLOAD,
            ErrorKind::Handler => POLYBUS_ERR_HANDLER,
            ErrorKind::Panic => POLYBUS_ERR_PANIC,
            ErrorKind::AbiMismatch => POLYBUS_ERR_ABI_MISMATCH,
            ErrorKind::Cancelled => POLYBUS_ERR_CANCELLED,
            _ => POLYBUS_ERR_INTERNAL,
        }
    }
}

fn static_cstr(s: &'static str) -> *const c_char {
    // Every name and description is interned once, NUL-terminated, for the process lifetime.
    use std::{collections::HashMap, ffi::CString, sync::Mutex};
    static INTERNED: Mutex<Option<HashMap<&'static str, CString>>> = Mutex::new(None);
    let mut map = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    map.entry(s)
        .or_insert_with(|| CString::new(s).unwrap_or_default())
        .as_ptr()
}

fn describe(status: i32) -> (&'static str, &'static str) {
    match status {
        0 => ("POLYBUS_OK", "success"),
        1 => ("POLYBUS_NO_EVENTS", "no events"),
        code => match ErrorKind::from_code(code) {
            Some(k) => (k.name(), k.description()),
            None => ("POLYBUS_UNKNOWN_STATUS", "unknown status"),
        },
    }
}

/// @brief The C name of a status, e.g. "POLYBUS_ERR_CLOSED".
///
/// @param status Any value; unknown ones give "POLYBUS_UNKNOWN_STATUS".
/// @return A static NUL-terminated string; never NULL, never to be freed.
#[no_mangle]
pub extern "C" fn polybus_status_name(status: i32) -> *const c_char {
    std::panic::catch_unwind(|| static_cstr(describe(status).0))
        .unwrap_or(c"POLYBUS_UNKNOWN_STATUS".as_ptr())
}

/// @brief A short lower-case description of a status, e.g. "closed".
///
/// @param status Any value; unknown ones give "unknown status".
/// @return A static NUL-terminated string; never NULL, never to be freed.
#[no_mangle]
pub extern "C" fn polybus_status_str(status: i32) -> *const c_char {
    std::panic::catch_unwind(|| static_cstr(describe(status).1))
        .unwrap_or(c"unknown status".as_ptr())
}

/// @brief The ABI version of the loaded library; compare with POLYBUS_ABI_VERSION.
#[no_mangle]
pub extern "C" fn polybus_abi_version() -> u32 {
    POLYBUS_ABI_VERSION
}

/// @brief The library version, e.g. "0.1.0".
///
/// @return A static NUL-terminated string; never to be freed.
#[no_mangle]
pub extern "C" fn polybus_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_the_same_code_and_name() {
        for k in ErrorKind::ALL {
            let s = polybus_status_t::from_kind(*k);
            assert_eq!(s as i32, k.code(), "{k:?}");
            assert_eq!(format!("{s:?}"), k.name());
        }
    }
}
