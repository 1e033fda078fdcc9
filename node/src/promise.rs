//! Promises settled from polybus's runtime, many per call into JavaScript.
//!
//! napi's own deferred makes a threadsafe function per promise and settles each promise with its
//! own call into JavaScript; with thousands of publishes pending at once, those calls (and a
//! task spawned per publish to wait for it) cost more than the publishes. Here each JavaScript
//! thread (the main thread, a worker) has one threadsafe function, and one queue that the
//! runtime's threads fill:
//!
//! - [`promise`] runs a call on the runtime and queues its outcome when it finishes;
//! - [`watch`] keeps a cheap wait (a pending publish: a reply from the core) on the JavaScript
//!   thread, polled there, and queues only its wake-up.
//!
//! The first entry queued since the last call into JavaScript schedules the next one, and that
//! call settles every promise queued by then. Each promise still gets its own value or its own
//! error. Like napi's deferreds, the function keeps the event loop alive while a promise is
//! unsettled, and no longer.

use std::{
    cell::{Cell, RefCell},
    ffi::c_void,
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    ptr,
    rc::Rc,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Wake, Waker},
};

use napi::{
    bindgen_prelude::{Either, JsValue, Object, ToNapiValue},
    sys, Env, JsError,
};
use polybus::ErrorKind;

use crate::error;

/// How a promise ends.
pub enum Outcome {
    /// Resolved with `undefined`.
    Done,
    /// Rejected with the core's error; `published`, if set, overrides the error's count (see
    /// [`error::rejection`]).
    Failed(polybus::Error, Option<usize>),
    /// Resolved with a value converted on the JavaScript thread.
    Value(Box<dyn FnOnce(sys::napi_env) -> napi::Result<sys::napi_value> + Send>),
}

impl Outcome {
    /// The outcome of a call of the core that resolves with `T`.
    pub fn of<T: ToNapiValue + Send + 'static>(result: polybus::Result<T>) -> Self {
        match result {
            // SAFETY: the closure runs on the JavaScript thread, with its env.
            Ok(value) => {
                Outcome::Value(Box::new(move |env| unsafe { T::to_napi_value(env, value) }))
            }
            Err(e) => Outcome::Failed(e, None),
        }
    }

    /// The outcome of a call of the core that resolves with nothing.
    pub fn of_unit(result: polybus::Result<()>) -> Self {
        match result {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e, None),
        }
    }
}

/// Runs `fut` on polybus's runtime and returns a promise settled with its result: resolved
/// with the value, or rejected with an error whose `code` is the core's status name.
pub fn promise<T, F>(env: &Env, fut: F) -> error::Result<Object<'_>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = polybus::Result<T>> + Send + 'static,
{
    settle(env, async move { Outcome::of(fut.await) })
}

/// [`promise`] for a call that resolves with nothing (a close): no conversion to box.
pub fn unit_promise<F>(env: &Env, fut: F) -> error::Result<Object<'_>>
where
    F: Future<Output = polybus::Result<()>> + Send + 'static,
{
    settle(env, async move { Outcome::of_unit(fut.await) })
}

/// Runs `fut` on polybus's runtime and returns a promise that ends as `fut`'s outcome says.
pub fn settle<F>(env: &Env, fut: F) -> error::Result<Object<'_>>
where
    F: Future<Output = Outcome> + Send + 'static,
{
    let local = local(env)?;
    let (deferred, promise) = local.create_promise(env)?;
    let ticket = Ticket {
        deferred: Some(deferred),
        shared: local.shared.clone(),
    };
    polybus::runtime::global().spawn(async move {
        let outcome = fut.await;
        ticket.settle(outcome);
    });
    Ok(Object::from_raw(env.raw(), promise))
}

/// Polls `fut` once here, on the JavaScript thread (inside the runtime's context): its value when
/// it finished at once, else a promise settled once the rest of it, run on polybus's runtime,
/// finishes (as [`promise`]); an error at once is returned as the error. For calls that often
/// need no wait (a subscribe on `memory://`): no round trip through the runtime's threads, which
/// costs more than the call when they are awaited one after the other.
pub fn now_or_promise<T, F>(env: &Env, fut: F) -> error::Result<Either<T, Object<'_>>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = polybus::Result<T>> + Send + 'static,
{
    let mut fut = Box::pin(fut);
    let first = {
        let _context = polybus::runtime::global().enter();
        // A future polled again (by the task `promise` spawns) registers that task's waker:
        // the no-op one of this first poll is never needed.
        fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    };
    match first {
        Poll::Ready(Ok(value)) => Ok(Either::A(value)),
        Poll::Ready(Err(e)) => Err(error::from_core(e)),
        Poll::Pending => promise(env, fut).map(Either::B),
    }
}

/// Polls `fut` here, on the JavaScript thread, and again each time it wakes, until it finishes:
/// for waits that need no thread of their own, such as a publish's reply from the core (no task
/// is spawned, nothing is woken on the runtime). Returns `None` when `fut` finished at once with
/// success, else a promise settled with its result; an error at once is returned as the error.
///
/// `fut` must not need a runtime thread to make progress (it is polled only when woken, on the
/// JavaScript thread, inside the runtime's context).
pub fn watch<'env, F>(env: &'env Env, fut: F) -> error::Result<Option<Object<'env>>>
where
    F: Future<Output = polybus::Result<()>> + 'static,
{
    let local = local(env)?;
    let mut fut: Pin<Box<dyn Future<Output = polybus::Result<()>>>> = Box::pin(fut);
    let (key, waker) = local.watched.borrow_mut().vacant(&local.shared);
    let first = {
        let _context = polybus::runtime::global().enter();
        fut.as_mut().poll(&mut Context::from_waker(&waker))
    };
    match first {
        Poll::Ready(Ok(())) => Ok(None),
        Poll::Ready(Err(e)) => Err(error::from_core(e)),
        Poll::Pending => {
            let (deferred, promise) = local.create_promise(env)?;
            local
                .watched
                .borrow_mut()
                .insert(key, Watched { deferred, fut });
            Ok(Some(Object::from_raw(env.raw(), promise)))
        }
    }
}

/// A promise's deferred. Only the JavaScript thread that made it may settle it; other threads
/// merely carry it.
struct Deferred(sys::napi_deferred);

// SAFETY: the pointer is opaque to every thread but the JavaScript thread that made it, the
// only one that settles it (in `call_js`).
unsafe impl Send for Deferred {}

/// The thread's threadsafe function.
#[derive(Clone, Copy)]
struct Tsfn(sys::napi_threadsafe_function);

// SAFETY: calling a threadsafe function from any thread is what it is for; `Queue::tsfn` makes
// sure no call is made once the environment has started tearing it down.
unsafe impl Send for Tsfn {}

/// What the runtime's threads and the JavaScript thread share.
struct Shared {
    queue: Mutex<Queue>,
}

struct Queue {
    /// `None` once the environment is torn down: entries are then dropped, as their promises
    /// are gone. Calls are made under the lock, so the teardown hook never frees the function
    /// while one is under way.
    tsfn: Option<Tsfn>,
    /// Outcomes of calls run on the runtime, in the order the calls finished.
    ready: Vec<(Deferred, Outcome)>,
    /// Watched waits that woke up (keys into `Local::watched`), in the order they woke.
    woken: Vec<usize>,
    /// Whether a call into JavaScript is scheduled that will handle `ready` and `woken`.
    scheduled: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an entry with `add`, scheduling a call into JavaScript unless one is scheduled
    /// already. Returns the entry back when the environment is gone.
    fn push<T>(&self, entry: T, add: impl FnOnce(&mut Queue, T)) -> Option<T> {
        let mut queue = self.lock();
        let Some(tsfn) = queue.tsfn else {
            return Some(entry);
        };
        add(&mut queue, entry);
        if !queue.scheduled {
            // SAFETY: `tsfn` is live while it is in the queue and the lock is held.
            let status = unsafe {
                sys::napi_call_threadsafe_function(
                    tsfn.0,
                    ptr::null_mut(),
                    sys::ThreadsafeFunctionCallMode::nonblocking,
                )
            };
            // Fails only while the environment tears down.
            queue.scheduled = status == sys::Status::napi_ok;
        }
        None
    }
}

/// Wakes a watched wait: queues its key for the JavaScript thread to poll it.
struct WatchWaker {
    key: usize,
    shared: Arc<Shared>,
}

impl Wake for WatchWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared
            .push(self.key, |queue, key| queue.woken.push(key));
    }
}

/// A wait polled on the JavaScript thread, and the promise it settles.
struct Watched {
    deferred: Deferred,
    fut: Pin<Box<dyn Future<Output = polybus::Result<()>>>>,
}

/// A place for a watched wait, with the waker of whatever wait holds it.
struct Slot {
    watched: Option<Watched>,
    waker: Waker,
}

/// The watched waits of a thread. A slot, and its waker, is reused once its wait finished, so
/// a late wake-up may poll another wait for nothing: harmless, a poll that finds it pending.
#[derive(Default)]
struct Slab {
    slots: Vec<Slot>,
    /// Vacant slots; the last is the one the next wait takes.
    free: Vec<usize>,
}

impl Slab {
    /// The key of the slot the next `insert` fills, and its waker (made with the slot).
    fn vacant(&mut self, shared: &Arc<Shared>) -> (usize, Waker) {
        if let Some(&key) = self.free.last() {
            return (key, self.slots[key].waker.clone());
        }
        let key = self.slots.len();
        let waker = Waker::from(Arc::new(WatchWaker {
            key,
            shared: shared.clone(),
        }));
        self.slots.push(Slot {
            watched: None,
            waker: waker.clone(),
        });
        self.free.push(key);
        (key, waker)
    }

    /// Fills the slot `vacant` just gave.
    fn insert(&mut self, key: usize, watched: Watched) {
        debug_assert_eq!(self.free.last(), Some(&key));
        self.free.pop();
        self.slots[key].watched = Some(watched);
    }

    fn remove(&mut self, key: usize) -> Option<Watched> {
        let watched = self.slots.get_mut(key)?.watched.take()?;
        self.free.push(key);
        Some(watched)
    }
}

/// The JavaScript thread's side: the shared queue, the function (to ref and unref it), the
/// watched waits and how many promises are unsettled.
struct Local {
    shared: Arc<Shared>,
    tsfn: Tsfn,
    watched: RefCell<Slab>,
    unsettled: Cell<usize>,
}

impl Local {
    /// Makes a promise on the JavaScript thread of `env`, which keeps the process alive until
    /// it is settled.
    fn create_promise(&self, env: &Env) -> error::Result<(Deferred, sys::napi_value)> {
        let mut deferred = ptr::null_mut();
        let mut promise = ptr::null_mut();
        // SAFETY: on the JavaScript thread, with its env.
        check(unsafe { sys::napi_create_promise(env.raw(), &mut deferred, &mut promise) })?;
        let unsettled = self.unsettled.get();
        if unsettled == 0 {
            // SAFETY: the function is live while `LOCAL` holds it; on its thread.
            unsafe { sys::napi_ref_threadsafe_function(env.raw(), self.tsfn.0) };
        }
        self.unsettled.set(unsettled + 1);
        Ok((Deferred(deferred), promise))
    }

    /// Counts `n` promises settled; with none left, the process may exit.
    fn settled(&self, env: sys::napi_env, n: usize) {
        let left = self.unsettled.get().saturating_sub(n);
        self.unsettled.set(left);
        if left == 0 && n > 0 {
            // SAFETY: the function is live while `LOCAL` holds it; on its thread.
            unsafe { sys::napi_unref_threadsafe_function(env, self.tsfn.0) };
        }
    }
}

thread_local! {
    /// The settler of the environment running on this thread, made on first use.
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

/// A promise to settle from the runtime. Dropped unsettled (the call's task panicked or was
/// dropped), it rejects its promise with `POLYBUS_ERR_PANIC` rather than leave it pending,
/// keeping the process alive for ever.
struct Ticket {
    deferred: Option<Deferred>,
    shared: Arc<Shared>,
}

impl Ticket {
    fn settle(mut self, outcome: Outcome) {
        if let Some(deferred) = self.deferred.take() {
            self.shared
                .push((deferred, outcome), |queue, entry| queue.ready.push(entry));
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(deferred) = self.deferred.take() {
            let e = polybus::Error::new(ErrorKind::Panic, "the call stopped before it finished");
            self.shared
                .push((deferred, Outcome::Failed(e, None)), |queue, entry| {
                    queue.ready.push(entry)
                });
        }
    }
}

fn check(status: sys::napi_status) -> error::Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        let status = napi::Status::from(status);
        Err(error::from_napi(napi::Error::new(
            status,
            format!("Node-API call failed: {status}"),
        )))
    }
}

/// The settler of `env`'s thread, made on first use.
fn local(env: &Env) -> error::Result<Rc<Local>> {
    if let Some(local) = LOCAL.with(|l| l.borrow().clone()) {
        return Ok(local);
    }
    let raw = env.raw();
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            tsfn: None,
            ready: Vec::new(),
            woken: Vec::new(),
            scheduled: false,
        }),
    });
    let mut name = ptr::null_mut();
    let text = "polybus.settle";
    // SAFETY: on the JavaScript thread, with its env.
    check(unsafe {
        sys::napi_create_string_utf8(raw, text.as_ptr().cast(), text.len() as isize, &mut name)
    })?;
    // The function's context: a reference the finalizer gives back.
    let context = Arc::into_raw(shared.clone()) as *mut c_void;
    let mut tsfn = ptr::null_mut();
    // SAFETY: no JavaScript function (`call_js` does the work); unbounded queue; one thread
    // count, held for the life of the environment.
    let status = unsafe {
        sys::napi_create_threadsafe_function(
            raw,
            ptr::null_mut(),
            ptr::null_mut(),
            name,
            0,
            1,
            context,
            Some(finalize),
            context,
            Some(call_js),
            &mut tsfn,
        )
    };
    if let Err(e) = check(status) {
        // SAFETY: the reference made above, not handed to napi.
        drop(unsafe { Arc::from_raw(context as *const Shared) });
        return Err(e);
    }
    // Referenced only while a promise is unsettled.
    // SAFETY: just made, on its thread.
    unsafe { sys::napi_unref_threadsafe_function(raw, tsfn) };
    shared.lock().tsfn = Some(Tsfn(tsfn));
    // Registered after the function, so it runs before Node finalizes the function at teardown
    // (cleanup hooks run in reverse order); it holds its own reference.
    let hook = Arc::into_raw(shared.clone()) as *mut c_void;
    // SAFETY: on the JavaScript thread, with its env.
    if let Err(e) = check(unsafe { sys::napi_add_env_cleanup_hook(raw, Some(teardown), hook) }) {
        shared.lock().tsfn = None;
        // SAFETY: the function was made above; the reference was not handed to napi.
        unsafe {
            sys::napi_release_threadsafe_function(tsfn, sys::ThreadsafeFunctionReleaseMode::abort);
            drop(Arc::from_raw(hook as *const Shared));
        }
        return Err(e);
    }
    let local = Rc::new(Local {
        shared,
        tsfn: Tsfn(tsfn),
        watched: RefCell::default(),
        unsettled: Cell::new(0),
    });
    LOCAL.with(|l| *l.borrow_mut() = Some(local.clone()));
    Ok(local)
}

/// The environment tears down: no call into JavaScript is made from now on, and queued
/// entries and watched waits are dropped (their promises are gone).
unsafe extern "C" fn teardown(arg: *mut c_void) {
    // SAFETY: the reference `local` handed to the hook.
    let shared = unsafe { Arc::from_raw(arg as *const Shared) };
    let (tsfn, ready) = {
        let mut queue = shared.lock();
        queue.woken.clear();
        (queue.tsfn.take(), std::mem::take(&mut queue.ready))
    };
    drop(ready);
    if let Some(tsfn) = tsfn {
        // SAFETY: taken out of the queue under its lock: no other thread calls it any more.
        unsafe {
            sys::napi_release_threadsafe_function(tsfn.0, sys::ThreadsafeFunctionReleaseMode::abort)
        };
    }
    let local = LOCAL.try_with(|l| l.borrow_mut().take()).ok().flatten();
    if let Some(local) = local {
        let watched = std::mem::take(&mut *local.watched.borrow_mut());
        drop(watched);
    }
}

/// Node is done with the function: gives back the reference its context held.
unsafe extern "C" fn finalize(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: the reference `local` handed to the function.
    drop(unsafe { Arc::from_raw(data as *const Shared) });
}

/// Settles every promise whose outcome is queued, and polls the watched waits that woke: on
/// the JavaScript thread, once per scheduled call.
unsafe extern "C" fn call_js(
    env: sys::napi_env,
    _callback: sys::napi_value,
    context: *mut c_void,
    _data: *mut c_void,
) {
    if env.is_null() {
        return; // the environment tears down
    }
    // SAFETY: the context outlives the function, whose finalizer gives it back.
    let shared = unsafe { &*(context as *const Shared) };
    let (ready, woken) = {
        let mut queue = shared.lock();
        queue.scheduled = false;
        (
            std::mem::take(&mut queue.ready),
            std::mem::take(&mut queue.woken),
        )
    };
    let Some(local) = LOCAL.try_with(|l| l.borrow().clone()).ok().flatten() else {
        return;
    };
    let mut settled = 0;
    for (deferred, outcome) in ready {
        // SAFETY: on the JavaScript thread, with its env; each deferred settled once.
        unsafe { settle_one(env, deferred, outcome) };
        settled += 1;
    }
    if !woken.is_empty() {
        let _context = polybus::runtime::global().enter();
        for key in woken {
            let mut watched = local.watched.borrow_mut();
            let Some(slot) = watched.slots.get_mut(key) else {
                continue;
            };
            let Some(entry) = slot.watched.as_mut() else {
                continue; // finished already: a late wake-up
            };
            let mut cx = Context::from_waker(&slot.waker);
            let polled = catch_unwind(AssertUnwindSafe(|| entry.fut.as_mut().poll(&mut cx)));
            let outcome = match polled {
                Ok(Poll::Pending) => continue,
                Ok(Poll::Ready(result)) => Outcome::of_unit(result),
                Err(_) => Outcome::Failed(
                    polybus::Error::new(ErrorKind::Panic, "the wait panicked"),
                    None,
                ),
            };
            let Some(entry) = watched.remove(key) else {
                continue;
            };
            // Settling runs no JavaScript (reactions are queued as microtasks), but the waker
            // and future are dropped before, outside the borrow, to be safe.
            drop(watched);
            let Watched { deferred, .. } = entry;
            // SAFETY: on the JavaScript thread, with its env; each deferred settled once.
            unsafe { settle_one(env, deferred, outcome) };
            settled += 1;
        }
    }
    local.settled(env, settled);
}

/// Resolves or rejects one promise, in a handle scope of its own.
///
/// # Safety
/// On the JavaScript thread of `env`; `deferred` is unsettled and was made on `env`.
unsafe fn settle_one(env: sys::napi_env, deferred: Deferred, outcome: Outcome) {
    let mut scope = ptr::null_mut();
    // SAFETY: as the caller promises.
    unsafe {
        let opened = sys::napi_open_handle_scope(env, &mut scope) == sys::Status::napi_ok;
        let js_env = Env::from_raw(env);
        let settle = catch_unwind(AssertUnwindSafe(|| match outcome {
            Outcome::Done => {
                let mut undefined = ptr::null_mut();
                sys::napi_get_undefined(env, &mut undefined);
                (true, undefined)
            }
            Outcome::Failed(e, published) => (false, error::rejection(&js_env, e, published)),
            Outcome::Value(convert) => match convert(env) {
                Ok(value) => (true, value),
                Err(e) => (
                    false,
                    JsError::from(error::from_napi(e))
                        .into_unknown(js_env)
                        .raw(),
                ),
            },
        }));
        let (ok, value) = settle.unwrap_or_else(|_| {
            let e = polybus::Error::new(ErrorKind::Panic, "settling the promise panicked");
            (false, error::rejection(&js_env, e, None))
        });
        if ok {
            sys::napi_resolve_deferred(env, deferred.0, value);
        } else {
            sys::napi_reject_deferred(env, deferred.0, value);
        }
        if opened {
            sys::napi_close_handle_scope(env, scope);
        }
    }
}
