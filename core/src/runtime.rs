//! The process-wide runtime the C, Go, Python and Node front ends run the core on.

use std::sync::OnceLock;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The shared multi-threaded tokio runtime (threads named `polybus-rt`), started on first use.
///
/// # Panics
/// If the operating system refuses to start its threads.
pub fn global() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 8);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("polybus-rt")
            .enable_all()
            .build()
            .expect("polybus: cannot start the tokio runtime")
    })
}
