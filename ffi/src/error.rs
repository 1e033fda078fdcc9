//! The caller-provided error out-parameter.

use std::ffi::c_char;

use polybus_core::Error;

use crate::status::polybus_status_t;

/// Bytes in polybus_error_t::message, including the terminating NUL.
pub const POLYBUS_ERROR_MESSAGE_SIZE: usize = 512;

/// @brief Error detail, written by a failing call into a struct the caller owns.
///
/// Pass a pointer as the last argument of any fallible call, or NULL to ignore details. It is
/// written only when the call fails: `code` is the returned status and `message` a
/// NUL-terminated UTF-8 text (truncated to fit) naming what was wrong. There is no thread-local
/// "last error": the detail is always in the struct passed to the call that failed.
#[repr(C)]
pub struct polybus_error_t {
    /// The status the call returned.
    pub code: polybus_status_t,
    /// What went wrong, NUL-terminated.
    pub message: [c_char; POLYBUS_ERROR_MESSAGE_SIZE],
}

pub(crate) fn write(err: *mut polybus_error_t, code: polybus_status_t, message: &str) {
    if err.is_null() {
        return;
    }
    // SAFETY: the caller passes a valid, writable polybus_error_t or NULL (checked above).
    let err = unsafe { &mut *err };
    err.code = code;
    let mut n = message.len().min(POLYBUS_ERROR_MESSAGE_SIZE - 1);
    while !message.is_char_boundary(n) {
        n -= 1;
    }
    for (dst, src) in err.message.iter_mut().zip(message.as_bytes()[..n].iter()) {
        *dst = *src as c_char;
    }
    err.message[n] = 0;
}

pub(crate) fn report(err: *mut polybus_error_t, e: &Error) -> polybus_status_t {
    let code = polybus_status_t::from_kind(e.kind());
    write(err, code, &e.to_string());
    code
}

pub(crate) fn report_panic(
    err: *mut polybus_error_t,
    panic: &(dyn std::any::Any + Send),
) -> polybus_status_t {
    let msg = format!("panic: {}", polybus_core::dispatch::panic_message(panic));
    write(err, polybus_status_t::POLYBUS_ERR_PANIC, &msg);
    polybus_status_t::POLYBUS_ERR_PANIC
}
