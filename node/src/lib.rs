//! Node bindings of polybus.
//!
//! The native half of the `polybus` npm package: `index.js` is the public surface and calls
//! these exports. Asynchronous work runs on polybus's process-wide tokio runtime; promises are
//! settled back on the JavaScript thread, many per call (see [`promise`]). A subscription hands
//! its events to JavaScript in batches, one threadsafe-function call per batch (see
//! [`subscription`]). A call given an `AbortSignal` waits through the core's cancellable form
//! (see [`cancel`]).
#![deny(missing_docs)]
// Under cfg(test) napi compiles out the registration of the exports, so what only they use
// would be reported as dead code (the crate has no unit tests; test/ tests the module).
#![cfg_attr(test, allow(dead_code))]

mod bus;
mod cancel;
mod config;
mod error;
mod event;
mod promise;
mod subscription;

/// Events are allocated by publishing threads and freed by dispatching ones; mimalloc handles
/// that pattern far better than the system allocator (malloc and free were a quarter of the
/// samples of a publish benchmark on glibc). It serves only this module's own allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
