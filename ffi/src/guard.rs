//! `ffi_guard!`: every export runs inside `catch_unwind`, and errors become a status plus an
//! optional message in the caller's `polybus_error_t`.

/// Runs `$body` (a block returning `Result<polybus_status_t, polybus_core::Error>`), catching
/// panics; on failure writes the error into `$err` (may be NULL) and returns its status.
macro_rules! ffi_guard {
    ($err:expr, $body:block) => {{
        let err: *mut $crate::error::polybus_error_t = $err;
        let run =
            || -> ::std::result::Result<$crate::status::polybus_status_t, ::polybus_core::Error> {
                $body
            };
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(run)) {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => $crate::error::report(err, &e),
            Err(panic) => $crate::error::report_panic(err, &*panic),
        }
    }};
}
