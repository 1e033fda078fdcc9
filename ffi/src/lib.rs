//! The C ABI of polybus: `extern "C"` functions over the core, no logic of their own.
//!
//! The header `include/polybus.h` is generated from these sources by cbindgen
//! (`make header`); the doc comments here are the C manual.
#![allow(non_camel_case_types)]
// Every export's safety contract (which pointers may be NULL, what is borrowed or consumed, how
// long views live) is stated in its doc comment and in the header's preamble, in C terms.
#![allow(clippy::missing_safety_doc)]
#![deny(unreachable_pub)]

#[macro_use]
mod guard;
mod bus;
mod cancel;
mod connection;
mod error;
mod status;
mod subscription;
mod types;

pub use bus::*;
pub use cancel::*;
pub use connection::*;
pub use error::*;
pub use status::*;
pub use subscription::*;
pub use types::*;

/// Events are allocated by publishing threads and freed by dispatching ones; mimalloc handles
/// that pattern far better than the system allocator. It serves only this library's own
/// allocations.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
