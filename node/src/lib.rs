//! Node bindings of polybus.
//!
//! The native half of the `polybus` npm package: `index.js` is the public surface and calls
//! these exports. Asynchronous work runs on polybus's process-wide tokio runtime; each promise
//! is settled back on the JavaScript thread. A subscription hands its events to JavaScript in
//! batches, one threadsafe-function call per batch (see [`subscription`]).
#![deny(missing_docs)]
// Under cfg(test) napi compiles out the registration of the exports, so what only they use
// would be reported as dead code (the crate has no unit tests; test/ tests the module).
#![cfg_attr(test, allow(dead_code))]

use std::future::Future;

use napi::{
    bindgen_prelude::{Object, ToNapiValue},
    Env,
};

mod bus;
mod config;
mod error;
mod event;
mod subscription;

/// Runs `fut` on polybus's runtime and returns a promise settled with its result: resolved
/// with the value, or rejected with an error whose `code` is the core's status name.
fn promise<T, F>(env: &Env, fut: F) -> error::Result<Object<'_>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = polybus::Result<T>> + Send + 'static,
{
    let (deferred, promise) = env.create_deferred().map_err(error::from_napi)?;
    polybus::runtime::global().spawn(async move {
        let result = fut.await;
        deferred.resolve(move |env| result.map_err(|e| error::rejection(&env, e, None)));
    });
    Ok(promise)
}
