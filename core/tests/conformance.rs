//! The conformance scenarios of `tests/conformance/` run through the Rust API.
//!
//! Test names are `<backend>/<scenario id>`; see `tests/conformance/SCHEMA.md`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, OnceLock, Weak,
    },
    time::{Duration, Instant},
};

use libtest_mimic::{Arguments, Failed, Trial};
use parking_lot::Mutex;
use polybus::{Bus, Config, Event, Message, Start, SubscribeOptions, Subscription};
use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance")
}

fn scale() -> f64 {
    std::env::var("POLYBUS_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

#[derive(Debug, Clone)]
struct Invocation {
    topic: String,
    payload: String,
    key: Option<String>,
    headers: BTreeMap<String, String>,
    id: String,
    event_type: String,
    attempt: u32,
    json: Option<Value>,
    ok: Option<bool>,
    /// When it started (monotonic), for `min_retry_gaps_ms`.
    started: Instant,
}

#[derive(Default)]
struct Recording {
    /// In the order they started; `ok` is set when one finishes.
    invocations: Mutex<Vec<Invocation>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    keys_in_flight: Mutex<HashSet<String>>,
    overlap: AtomicBool,
    /// How the `unsubscribe_self` / `close_bus` call ended: `Ok`, or the error's C name.
    self_close: Mutex<Option<Result<(), String>>>,
    /// The finished invocations each call of the latest `close` step saw as it returned.
    at_close: Mutex<Option<Vec<usize>>>,
    changed: tokio::sync::Notify,
}

impl Recording {
    /// Finished invocations (`succeeded`: successful ones).
    fn count(&self, succeeded: bool) -> usize {
        let inv = self.invocations.lock();
        if succeeded {
            inv.iter().filter(|i| i.ok == Some(true)).count()
        } else {
            inv.iter().filter(|i| i.ok.is_some()).count()
        }
    }

    /// Started, finished and successful invocations, for a wait that ran out.
    fn seen(&self) -> (usize, usize, usize) {
        let inv = self.invocations.lock();
        (
            inv.len(),
            inv.iter().filter(|i| i.ok.is_some()).count(),
            inv.iter().filter(|i| i.ok == Some(true)).count(),
        )
    }
}

struct Behaviour {
    fail_times: u32,
    fail_always: bool,
    panic: bool,
    delay: Duration,
    unsubscribe_self: bool,
    close_bus: bool,
    /// The handler's own subscription, once `subscribe` returned it.
    sub: OnceLock<Weak<Subscription>>,
    bus: Bus,
}

/// The `unsubscribe_self` / `close_bus` call of a handler's first invocation.
async fn close_from_handler(b: &Behaviour) -> Result<(), String> {
    let result = if b.unsubscribe_self {
        match b.sub.get().and_then(Weak::upgrade) {
            Some(sub) => sub.close().await,
            None => return Err("the handler ran before subscribe returned".into()),
        }
    } else {
        b.bus.close().await
    };
    result.map_err(|e| format!("{} ({e})", e.kind().name()))
}

async fn handle(rec: Arc<Recording>, b: Arc<Behaviour>, e: Event) -> Result<(), String> {
    let idx = {
        let mut inv = rec.invocations.lock();
        inv.push(Invocation {
            topic: e.topic().to_owned(),
            payload: String::from_utf8_lossy(e.payload()).into_owned(),
            key: e.key().map(str::to_owned),
            headers: e.headers().clone(),
            id: e.id().to_owned(),
            event_type: e.event_type().to_owned(),
            attempt: e.attempt(),
            json: e.json::<Value>().ok(),
            ok: None,
            started: Instant::now(),
        });
        inv.len() - 1
    };
    let now = rec.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    rec.peak.fetch_max(now, Ordering::SeqCst);
    if let Some(k) = e.key() {
        if !rec.keys_in_flight.lock().insert(k.to_owned()) {
            rec.overlap.store(true, Ordering::SeqCst);
        }
    }
    if idx == 0 && (b.unsubscribe_self || b.close_bus) {
        let result = close_from_handler(&b).await;
        *rec.self_close.lock() = Some(result);
    }
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    let fail = b.fail_always || e.attempt() <= b.fail_times;
    if let Some(k) = e.key() {
        rec.keys_in_flight.lock().remove(k);
    }
    rec.in_flight.fetch_sub(1, Ordering::SeqCst);
    rec.invocations.lock()[idx].ok = Some(!fail);
    rec.changed.notify_waiters();
    if fail && b.panic {
        panic!("scenario handler panics on attempt {}", e.attempt());
    }
    if fail {
        return Err(format!("scenario handler fails attempt {}", e.attempt()));
    }
    Ok(())
}

struct Run {
    bus: Bus,
    recs: HashMap<String, Arc<Recording>>,
    subs: HashMap<String, Arc<Subscription>>,
    /// The harness's name for the backend's broker (`restart_broker`); `None` for memory.
    broker: Option<String>,
    /// The bus configuration, for a `child` step's bus.
    config: Value,
}

fn expect_code(step: &Value, result: Result<(), polybus::Error>) -> Result<(), String> {
    match (step.get("expect_error").and_then(Value::as_str), result) {
        (None, Ok(())) => Ok(()),
        (None, Err(e)) => Err(format!("step {step} failed: {e}")),
        (Some(code), Ok(())) => Err(format!("step {step} succeeded; expected {code}")),
        (Some(code), Err(e)) if e.kind().name() == code => {
            if e.message().is_empty() {
                return Err(format!("error {code} has no message"));
            }
            Ok(())
        }
        (Some(code), Err(e)) => Err(format!(
            "step {step}: expected {code}, got {} ({e})",
            e.kind().name()
        )),
    }
}

fn options(v: Option<&Value>) -> SubscribeOptions {
    let mut o = SubscribeOptions::new();
    let Some(v) = v else { return o };
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    if let Some(g) = v.get("group").and_then(Value::as_str) {
        o = o.group(g);
    }
    if let Some(n) = u("concurrency") {
        o = o.concurrency(n as u32);
    }
    if let Some(n) = u("max_attempts") {
        o = o.max_attempts(n as u32);
    }
    if let Some(d) = v.get("dead_letter").and_then(Value::as_str) {
        o = o.dead_letter(d);
    }
    if let Some(s) = v.get("start").and_then(Value::as_str) {
        o = o.start(if s == "earliest" {
            Start::Earliest
        } else {
            Start::New
        });
    }
    if let Some(n) = u("backoff_initial_ms") {
        o.backoff_initial_ms = n;
    }
    if let Some(n) = u("backoff_max_ms") {
        o.backoff_max_ms = n;
    }
    if let Some(n) = u("queue_size") {
        o = o.queue_size(n as u32);
    }
    if let Some(n) = u("batch_size") {
        o = o.batch_size(n as u32);
    }
    o
}

fn messages(step: &Value) -> Vec<Message> {
    let count = step.get("count").and_then(Value::as_u64).unwrap_or(1) as usize;
    let topic = step["topic"].as_str().unwrap_or_default();
    let keys: Vec<&str> = step
        .get("keys")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    (0..count)
        .map(|i| {
            let mut m = if let Some(j) = step.get("json") {
                Message::json(topic, j).expect("scenario JSON encodes")
            } else if let Some(n) = step.get("payload_size").and_then(Value::as_u64) {
                Message::new(topic, vec![b'x'; n as usize])
            } else {
                let p = step["payload"]
                    .as_str()
                    .unwrap_or_default()
                    .replace("{i}", &i.to_string());
                Message::new(topic, p)
            };
            if !keys.is_empty() {
                m = m.key(keys[i % keys.len()]);
            } else if let Some(k) = step.get("key").and_then(Value::as_str) {
                m = m.key(k);
            }
            if let Some(h) = step.get("headers").and_then(Value::as_object) {
                for (k, v) in h {
                    m = m.header(k, v.as_str().unwrap_or_default());
                }
            }
            if let Some(id) = step.get("id").and_then(Value::as_str) {
                m = m.id(id);
            }
            if let Some(t) = step.get("type").and_then(Value::as_str) {
                m = m.event_type(t);
            }
            m
        })
        .collect()
}

fn names(step: &Value) -> Vec<String> {
    if let Some(a) = step.get("names").and_then(Value::as_array) {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    } else {
        vec![step["name"].as_str().unwrap_or_default().to_owned()]
    }
}

impl Run {
    fn rec(&self, name: &str) -> Result<&Arc<Recording>, String> {
        self.recs
            .get(name)
            .ok_or_else(|| format!("no handler named {name:?}"))
    }

    async fn step(&mut self, step: &Value) -> Result<(), String> {
        let op = step["op"].as_str().unwrap_or_default();
        check_step(step)?;
        match op {
            "subscribe" => {
                let name = step["name"].as_str().unwrap_or_default().to_owned();
                let h = step.get("handler").cloned().unwrap_or(json!({}));
                let flag = |k: &str| h.get(k).and_then(Value::as_bool).unwrap_or(false);
                let behaviour = Arc::new(Behaviour {
                    fail_times: h.get("fail_times").and_then(Value::as_u64).unwrap_or(0) as u32,
                    fail_always: h
                        .get("fail_always")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    panic: h.get("fail_with").and_then(Value::as_str) == Some("panic"),
                    delay: Duration::from_millis(
                        h.get("delay_ms").and_then(Value::as_u64).unwrap_or(0),
                    ),
                    unsubscribe_self: flag("unsubscribe_self"),
                    close_bus: flag("close_bus"),
                    sub: OnceLock::new(),
                    bus: self.bus.clone(),
                });
                let rec = Arc::new(Recording::default());
                let r = rec.clone();
                let b = behaviour.clone();
                let pattern = step["pattern"].as_str().unwrap_or_default();
                let result = self
                    .bus
                    .subscribe(pattern, options(step.get("options")), move |e: Event| {
                        handle(r.clone(), b.clone(), e)
                    })
                    .await;
                match result {
                    Ok(sub) => {
                        let sub = Arc::new(sub);
                        let _ = behaviour.sub.set(Arc::downgrade(&sub));
                        self.subs.insert(name.clone(), sub);
                        self.recs.insert(name, rec);
                        expect_code(step, Ok(()))
                    }
                    Err(e) => expect_code(step, Err(e)),
                }
            }
            "publish" => {
                // One deadline for all the step's calls.
                let cancel = step
                    .get("deadline_ms")
                    .and_then(Value::as_u64)
                    .map(|ms| polybus::Cancel::with_timeout(Duration::from_millis(ms)));
                let mut result = Ok(());
                let mut published = 0;
                for m in messages(step) {
                    result = match &cancel {
                        Some(c) => self.bus.publish_until(m, c).await,
                        None => self.bus.publish(m).await,
                    };
                    if result.is_err() {
                        break;
                    }
                    published += 1;
                }
                expect_code(step, result)?;
                match step.get("published_at_most").and_then(Value::as_u64) {
                    Some(n) if published > n => Err(format!(
                        "{published} publishes returned success before the failing one, \
                         expected at most {n}"
                    )),
                    _ => Ok(()),
                }
            }
            "wait" => {
                let names = names(step);
                let u = |k: &str| step.get(k).and_then(Value::as_u64).map(|n| n as usize);
                let (target, what) = match (u("succeeded"), u("distinct_succeeded")) {
                    (Some(n), _) => (n, Count::Succeeded),
                    (_, Some(n)) => (n, Count::DistinctSucceeded),
                    _ => (u("count").unwrap_or(0), Count::Finished),
                };
                let ms = step
                    .get("timeout_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(10_000);
                let deadline = tokio::time::Instant::now()
                    + Duration::from_millis((ms as f64 * scale()) as u64);
                let recs: Vec<Arc<Recording>> = names
                    .iter()
                    .map(|n| self.rec(n).cloned())
                    .collect::<Result<_, _>>()?;
                loop {
                    let waits: Vec<_> = recs.iter().map(|r| r.changed.notified()).collect();
                    let mut waits: Vec<_> = waits.into_iter().map(Box::pin).collect();
                    for w in &mut waits {
                        w.as_mut().enable();
                    }
                    let have = what.of(&recs);
                    if have >= target {
                        return Ok(());
                    }
                    let any = futures::future::select_all(waits);
                    if tokio::time::timeout_at(deadline, any).await.is_err() {
                        let (started, finished, ok) = recs
                            .iter()
                            .map(|r| r.seen())
                            .fold((0, 0, 0), |a, s| (a.0 + s.0, a.1 + s.1, a.2 + s.2));
                        return Err(format!(
                            "timed out after {ms} ms waiting for {names:?} to reach {target} {}; \
                             saw {started} started, {finished} finished, {ok} succeeded, {} \
                             distinct payloads succeeded",
                            what.name(),
                            Count::DistinctSucceeded.of(&recs),
                        ));
                    }
                }
            }
            "unsubscribe" => {
                let name = step["name"].as_str().unwrap_or_default();
                let sub = self
                    .subs
                    .get(name)
                    .ok_or_else(|| format!("no subscription {name:?}"))?;
                expect_code(step, sub.close().await)
            }
            "close" => {
                let n = step.get("concurrent").and_then(Value::as_u64).unwrap_or(1);
                let recs: Vec<Arc<Recording>> = self.recs.values().cloned().collect();
                for r in &recs {
                    *r.at_close.lock() = Some(Vec::new());
                }
                // Each call on a task of its own, started together; each notes what had
                // finished as it returned.
                let calls: Vec<_> = (0..n)
                    .map(|_| {
                        let bus = self.bus.clone();
                        let recs = recs.clone();
                        tokio::spawn(async move {
                            let result = bus.close().await;
                            for r in &recs {
                                let done = r.count(false);
                                r.at_close.lock().get_or_insert_with(Vec::new).push(done);
                            }
                            result
                        })
                    })
                    .collect();
                for (i, call) in futures::future::join_all(calls)
                    .await
                    .into_iter()
                    .enumerate()
                {
                    let result = call.map_err(|e| format!("close call {i} panicked: {e}"))?;
                    expect_code(step, result).map_err(|e| format!("close call {i}: {e}"))?;
                }
                Ok(())
            }
            "expect" => self.expect(step),
            "expect_total" => {
                let mut ok = 0;
                let mut seen = HashSet::new();
                for n in names(step) {
                    for i in self
                        .rec(&n)?
                        .invocations
                        .lock()
                        .iter()
                        .filter(|i| i.ok == Some(true))
                    {
                        ok += 1;
                        if step.get("distinct_payloads") == Some(&Value::Bool(true))
                            && !seen.insert(i.payload.clone())
                        {
                            return Err(format!("payload {:?} succeeded twice", i.payload));
                        }
                    }
                }
                if let Some(n) = step.get("succeeded").and_then(Value::as_u64) {
                    if ok != n as usize {
                        return Err(format!("expected {n} successes in total, got {ok}"));
                    }
                }
                if let Some(want) = step.get("succeeded_set").and_then(Value::as_array) {
                    let want: std::collections::BTreeSet<String> = want
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    let mut got = std::collections::BTreeSet::new();
                    for n in names(step) {
                        let inv = self.rec(&n)?.invocations.lock();
                        got.extend(
                            inv.iter()
                                .filter(|i| i.ok == Some(true))
                                .map(|i| i.payload.clone()),
                        );
                    }
                    if got != want {
                        let missing: Vec<_> = want.difference(&got).collect();
                        let extra: Vec<_> = got.difference(&want).collect();
                        return Err(format!(
                            "succeeded_set: missing {missing:?}, not expected {extra:?}"
                        ));
                    }
                }
                Ok(())
            }
            "restart_broker" => {
                let broker = self
                    .broker
                    .as_deref()
                    .ok_or("restart_broker: the backend has no broker")?;
                let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
                let out = tokio::process::Command::new("bash")
                    .arg("tests/harness/brokers.sh")
                    .args(["restart", broker])
                    .current_dir(&harness)
                    .output()
                    .await
                    .map_err(|e| format!("restart_broker: bash: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "restart_broker: brokers.sh restart {broker} ended {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                Ok(())
            }
            "child" => {
                let name = step["name"].as_str().unwrap_or_default().to_owned();
                let rec = run_child(&self.config, step).await?;
                self.recs.insert(name, rec);
                Ok(())
            }
            "expect_stats" => {
                let stats = serde_json::to_value(self.bus.stats()).map_err(|e| e.to_string())?;
                for (k, v) in step.as_object().into_iter().flatten() {
                    if k == "op" {
                        continue;
                    }
                    if stats.get(k) != Some(v) {
                        return Err(format!(
                            "stats.{k}: expected {v}, got {:?} ({stats})",
                            stats.get(k)
                        ));
                    }
                }
                Ok(())
            }
            other => Err(format!("unknown op {other:?}")),
        }
    }

    fn expect(&self, step: &Value) -> Result<(), String> {
        let name = step["name"].as_str().unwrap_or_default();
        let rec = self.rec(name)?;
        let inv = rec.invocations.lock().clone();
        let fail = |what: String| Err(format!("{name}: {what}"));
        let strs = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        };
        if let Some(n) = step.get("count").and_then(Value::as_u64) {
            if inv.len() != n as usize {
                return fail(format!("expected {n} invocations, got {}", inv.len()));
            }
        }
        if let Some(n) = step.get("succeeded").and_then(Value::as_u64) {
            let ok = inv.iter().filter(|i| i.ok == Some(true)).count();
            if ok != n as usize {
                return fail(format!("expected {n} successes, got {ok}"));
            }
        }
        if let Some(p) = step.get("payloads") {
            let got: Vec<String> = inv.iter().map(|i| i.payload.clone()).collect();
            if got != strs(p) {
                return fail(format!("payloads {got:?}, expected {:?}", strs(p)));
            }
        }
        if let Some(p) = step.get("payloads_unordered") {
            let mut got: Vec<String> = inv.iter().map(|i| i.payload.clone()).collect();
            let mut want = strs(p);
            got.sort();
            want.sort();
            if got != want {
                return fail(format!("payloads {got:?}, expected {want:?} in any order"));
            }
        }
        if let Some(p) = step.get("payloads_prefix") {
            let got: Vec<String> = inv.iter().map(|i| i.payload.clone()).collect();
            let want = strs(p);
            if got.len() > want.len() || got[..] != want[..got.len()] {
                return fail(format!("payloads {got:?}, expected a prefix of {want:?}"));
            }
        }
        if let Some(p) = step.get("topics") {
            let got: Vec<String> = inv.iter().map(|i| i.topic.clone()).collect();
            if got != strs(p) {
                return fail(format!("topics {got:?}, expected {:?}", strs(p)));
            }
        }
        if let Some(a) = step.get("attempts") {
            let got: Vec<u64> = inv.iter().map(|i| i.attempt as u64).collect();
            let want: Vec<u64> = a
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .collect();
            if got != want {
                return fail(format!("attempts {got:?}, expected {want:?}"));
            }
        }
        if let Some(k) = step.get("key") {
            let want = k.as_str();
            if let Some(i) = inv.iter().find(|i| i.key.as_deref() != want) {
                return fail(format!("key {:?}, expected {want:?}", i.key));
            }
        }
        for (field, get) in [
            (
                "id",
                (|i: &Invocation| i.id.clone()) as fn(&Invocation) -> String,
            ),
            ("type", |i: &Invocation| i.event_type.clone()),
        ] {
            if let Some(want) = step.get(field).and_then(Value::as_str) {
                if let Some(i) = inv.iter().find(|i| get(i) != want) {
                    return fail(format!("{field} {:?}, expected {want:?}", get(i)));
                }
            }
        }
        if let Some(h) = step.get("headers").and_then(Value::as_object) {
            for i in &inv {
                for (k, v) in h {
                    let got = i.headers.get(k);
                    let ok = match (v.as_str(), got) {
                        (Some("*"), Some(g)) => !g.is_empty(),
                        (Some(w), Some(g)) => w == g,
                        _ => false,
                    };
                    if !ok {
                        return fail(format!("header {k}: {got:?}, expected {v}"));
                    }
                }
            }
        }
        if let Some(j) = step.get("json") {
            if let Some(i) = inv.iter().find(|i| i.json.as_ref() != Some(j)) {
                return fail(format!("json {:?}, expected {j}", i.json));
            }
        }
        if step.get("key_order") == Some(&Value::Bool(true)) {
            // Unkeyed invocations are not checked (SCHEMA.md).
            let mut last: HashMap<&str, i64> = HashMap::new();
            for i in inv.iter().filter(|i| i.ok == Some(true)) {
                let Some(key) = i.key.as_deref() else {
                    continue;
                };
                let n = integer(&i.payload).ok_or_else(|| {
                    format!("key_order: payload {:?} is not an integer", i.payload)
                })?;
                if let Some(prev) = last.insert(key, n) {
                    if n <= prev {
                        return fail(format!("key {key:?}: {n} handled after {prev}"));
                    }
                }
            }
        }
        if step.get("no_overlap_per_key") == Some(&Value::Bool(true))
            && rec.overlap.load(Ordering::SeqCst)
        {
            return fail("two invocations with the same key overlapped".into());
        }
        let peak = rec.peak.load(Ordering::SeqCst) as u64;
        if let Some(n) = step.get("max_in_flight").and_then(Value::as_u64) {
            if peak > n {
                return fail(format!("peak in flight {peak} > {n}"));
            }
        }
        if let Some(n) = step.get("min_peak_in_flight").and_then(Value::as_u64) {
            if peak < n {
                return fail(format!("peak in flight {peak} < {n}"));
            }
        }
        if let Some(want) = step.get("self_close_ok").and_then(Value::as_bool) {
            match &*rec.self_close.lock() {
                None => return fail("the handler never made its close call".into()),
                Some(r) if r.is_ok() != want => {
                    return fail(format!(
                        "the handler's close call ended {r:?}, expected ok={want}"
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(g) = step.get("min_retry_gaps_ms") {
            check_retry_gaps(&inv, g).map_err(|e| format!("{name}: min_retry_gaps_ms: {e}"))?;
        }
        if let Some(n) = step.get("finished_at_close").and_then(Value::as_u64) {
            match &*rec.at_close.lock() {
                None => return fail("finished_at_close: no close step ran".into()),
                Some(seen) if seen.iter().any(|&s| s != n as usize) => {
                    return fail(format!(
                        "finished_at_close: the close calls saw {seen:?} finished invocations as \
                         they returned, expected {n} for each"
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// What a `wait` counts across its handlers.
#[derive(Clone, Copy)]
enum Count {
    Finished,
    Succeeded,
    DistinctSucceeded,
}

impl Count {
    fn of(self, recs: &[Arc<Recording>]) -> usize {
        match self {
            Count::Finished => recs.iter().map(|r| r.count(false)).sum(),
            Count::Succeeded => recs.iter().map(|r| r.count(true)).sum(),
            Count::DistinctSucceeded => {
                let mut seen = HashSet::new();
                for r in recs {
                    let inv = r.invocations.lock();
                    seen.extend(
                        inv.iter()
                            .filter(|i| i.ok == Some(true))
                            .map(|i| i.payload.clone()),
                    );
                }
                seen.len()
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Count::Finished => "finished invocations",
            Count::Succeeded => "successes",
            Count::DistinctSucceeded => "distinct successful payloads",
        }
    }
}

/// The environment variable that makes this test binary a `child` step's child (SCHEMA.md,
/// "Child processes").
const CHILD_ENV: &str = "POLYBUS_CONFORMANCE_CHILD";

/// A `child` step: runs this binary as the child, waits for it to exit (status 0 required),
/// and returns its lines as a recording.
async fn run_child(config: &Value, step: &Value) -> Result<Arc<Recording>, String> {
    let spec = json!({
        "config": config,
        "pattern": step["pattern"],
        "options": step.get("options").cloned().unwrap_or(json!({})),
        "handler": step.get("handler").cloned().unwrap_or(json!({})),
        "publish": step["publish"],
        "exit_after": step["exit_after"],
    });
    let exe = std::env::current_exe().map_err(|e| format!("child: {e}"))?;
    let child = tokio::process::Command::new(exe)
        .env(CHILD_ENV, spec.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("child: cannot start: {e}"))?;
    let ms = step
        .get("timeout_ms")
        .and_then(Value::as_u64)
        .unwrap_or(10_000);
    let limit = Duration::from_millis((ms as f64 * scale()) as u64);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("child: did not exit within {ms} ms"))?
        .map_err(|e| format!("child: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("child: ended {}; its stderr: {stderr}", out.status));
    }
    let rec = Arc::new(Recording::default());
    {
        let mut inv = rec.invocations.lock();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| format!("child: line {line:?} is not JSON: {e}"))?;
            let (Some(payload), Some(ok), 2) = (
                v.get("payload").and_then(Value::as_str),
                v.get("succeeded").and_then(Value::as_bool),
                v.as_object().map_or(0, |o| o.len()),
            ) else {
                return Err(format!("child: line {line:?} is not a finished invocation"));
            };
            inv.push(Invocation {
                topic: String::new(),
                payload: payload.to_owned(),
                key: None,
                headers: BTreeMap::new(),
                id: String::new(),
                event_type: String::new(),
                attempt: 0,
                json: None,
                ok: Some(ok),
                started: Instant::now(),
            });
        }
    }
    Ok(rec)
}

/// The child of a `child` step: subscribes, publishes, waits for `exit_after` finished
/// invocations, then returns from `main` without closing anything (the bus and the
/// subscription are dropped as `main` returns, as in any Rust program that ends so).
fn child_main(spec: &str) -> i32 {
    use std::io::Write;
    let spec: Value = match serde_json::from_str(spec) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("child: {CHILD_ENV} is not JSON: {e}");
            return 2;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async move {
        let config = match Config::parse(&spec["config"].to_string()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("child: config: {e}");
                return 2;
            }
        };
        let bus = match Bus::connect(config).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("child: connect: {e}");
                return 2;
            }
        };
        let delay = Duration::from_millis(spec["handler"]["delay_ms"].as_u64().unwrap_or(0));
        let finished = Arc::new((AtomicUsize::new(0), tokio::sync::Notify::new()));
        let f = finished.clone();
        let sub = bus
            .subscribe(
                spec["pattern"].as_str().unwrap_or_default(),
                options(spec.get("options")),
                move |e: Event| {
                    let f = f.clone();
                    async move {
                        tokio::time::sleep(delay).await;
                        let line = json!({
                            "payload": String::from_utf8_lossy(e.payload()),
                            "succeeded": true,
                        });
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                        drop(out);
                        f.0.fetch_add(1, Ordering::SeqCst);
                        f.1.notify_waiters();
                        Ok::<(), String>(())
                    }
                },
            )
            .await;
        let sub = match sub {
            Ok(s) => s,
            Err(e) => {
                eprintln!("child: subscribe: {e}");
                return 2;
            }
        };
        for m in messages(&spec["publish"]) {
            if let Err(e) = bus.publish(m).await {
                eprintln!("child: publish: {e}");
                return 2;
            }
        }
        let want = spec["exit_after"].as_u64().unwrap_or(0) as usize;
        let reached = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let n = finished.1.notified();
                if finished.0.load(Ordering::SeqCst) >= want {
                    return;
                }
                n.await;
            }
        })
        .await;
        if reached.is_err() {
            eprintln!(
                "child: {} of {want} invocations finished within 10 s",
                finished.0.load(Ordering::SeqCst)
            );
            return 3;
        }
        // Leaves without closing: `sub` and `bus` are dropped here.
        drop((sub, bus));
        0
    })
}

/// `min_retry_gaps_ms`: for every event (by payload), the k-th gap between the starts of its
/// consecutive invocations is at least `want[k]` ms (the last entry for gaps past the list).
fn check_retry_gaps(inv: &[Invocation], want: &Value) -> Result<(), String> {
    let want: Vec<u64> = want
        .as_array()
        .filter(|a| !a.is_empty())
        .and_then(|a| a.iter().map(Value::as_u64).collect())
        .ok_or_else(|| format!("{want} is not a non-empty list of non-negative integers"))?;
    let mut by_payload: BTreeMap<&str, Vec<&Invocation>> = BTreeMap::new();
    for i in inv {
        by_payload.entry(i.payload.as_str()).or_default().push(i);
    }
    let mut gaps = 0;
    for (payload, calls) in &by_payload {
        let ms: Vec<f64> = calls
            .windows(2)
            .map(|w| w[1].started.duration_since(w[0].started).as_secs_f64() * 1000.0)
            .collect();
        for (k, gap) in ms.iter().enumerate() {
            gaps += 1;
            let min = want[k.min(want.len() - 1)];
            if *gap < min as f64 {
                return Err(format!(
                    "payload {payload:?}: attempt {} started {gap:.1} ms after attempt {}, \
                     expected at least {min} ms (gaps {ms:.1?} ms)",
                    calls[k + 1].attempt,
                    calls[k].attempt
                ));
            }
        }
    }
    if gaps == 0 {
        return Err("no event had a second invocation".into());
    }
    Ok(())
}

/// A payload read as a decimal integer (`-?[0-9]+`, nothing else), for `key_order`.
fn integer(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The fields each kind of step may have (SCHEMA.md); anything else is an error, the same
/// strict reading as the Go, Python and Node runners.
const STEP_FIELDS: &[(&str, &[&str])] = &[
    (
        "subscribe",
        &["name", "pattern", "options", "handler", "expect_error"],
    ),
    (
        "publish",
        &[
            "topic",
            "payload",
            "json",
            "payload_size",
            "count",
            "keys",
            "key",
            "headers",
            "id",
            "type",
            "deadline_ms",
            "expect_error",
            "published_at_most",
        ],
    ),
    (
        "wait",
        &[
            "name",
            "names",
            "count",
            "succeeded",
            "distinct_succeeded",
            "timeout_ms",
        ],
    ),
    ("restart_broker", &[]),
    (
        "child",
        &[
            "name",
            "pattern",
            "options",
            "handler",
            "publish",
            "exit_after",
            "timeout_ms",
        ],
    ),
    ("unsubscribe", &["name", "expect_error"]),
    ("close", &["concurrent", "expect_error"]),
    (
        "expect",
        &[
            "name",
            "count",
            "succeeded",
            "payloads",
            "payloads_unordered",
            "attempts",
            "topics",
            "key",
            "id",
            "type",
            "headers",
            "json",
            "key_order",
            "no_overlap_per_key",
            "max_in_flight",
            "min_peak_in_flight",
            "payloads_prefix",
            "self_close_ok",
            "finished_at_close",
            "min_retry_gaps_ms",
        ],
    ),
    (
        "expect_total",
        &["names", "succeeded", "distinct_payloads", "succeeded_set"],
    ),
    (
        "expect_stats",
        &[
            "published",
            "delivered",
            "acked",
            "failed",
            "retried",
            "dead_lettered",
            "dropped",
        ],
    ),
];
const OPTION_FIELDS: &[&str] = &[
    "group",
    "concurrency",
    "max_attempts",
    "dead_letter",
    "start",
    "backoff_initial_ms",
    "backoff_max_ms",
    "queue_size",
    "batch_size",
];
const HANDLER_FIELDS: &[&str] = &[
    "fail_times",
    "fail_always",
    "fail_with",
    "delay_ms",
    "unsubscribe_self",
    "close_bus",
];
const SCENARIO_FIELDS: &[&str] = &["id", "description", "requires", "config", "steps", "slow"];

fn check_fields(what: &str, v: &Value, allowed: &[&str]) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{what} is not an object"))?;
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{what} has an unknown field {k:?}")),
        None => Ok(()),
    }
}

fn check_step(step: &Value) -> Result<(), String> {
    let op = step["op"].as_str().unwrap_or_default();
    let (_, fields) = STEP_FIELDS
        .iter()
        .find(|(o, _)| *o == op)
        .ok_or_else(|| format!("unknown step op {op:?}"))?;
    let with_op: Vec<&str> = fields.iter().copied().chain(["op"]).collect();
    check_fields(&format!("step {op:?}"), step, &with_op)?;
    if let Some(o) = step.get("options") {
        check_fields("subscribe options", o, OPTION_FIELDS)?;
    }
    if let Some(h) = step.get("handler") {
        // A child's handler only works for a while (SCHEMA.md, "Child processes").
        let allowed: &[&str] = if op == "child" {
            &["delay_ms"]
        } else {
            HANDLER_FIELDS
        };
        check_fields("handler", h, allowed)?;
        let on = |k: &str| h.get(k) == Some(&Value::Bool(true));
        if on("unsubscribe_self") && on("close_bus") {
            return Err("a handler has at most one of unsubscribe_self and close_bus".into());
        }
    }
    if let Some(n) = step.get("concurrent") {
        if n.as_u64().is_none_or(|n| n < 1) {
            return Err(format!("concurrent {n} is not a positive integer"));
        }
    }
    if op == "child" {
        check_fields(
            "child publish",
            &step["publish"],
            &["topic", "payload", "count"],
        )?;
        for k in ["name", "pattern"] {
            if !step[k].is_string() {
                return Err(format!("a child step needs a string {k:?}"));
            }
        }
        if !step["exit_after"].is_u64() {
            return Err("a child step needs a non-negative integer \"exit_after\"".into());
        }
    }
    if step.get("published_at_most").is_some() && step.get("expect_error").is_none() {
        return Err("published_at_most goes only with expect_error".into());
    }
    if op == "wait" {
        let counts = ["count", "succeeded", "distinct_succeeded"]
            .iter()
            .filter(|k| step.get(**k).is_some())
            .count();
        if counts != 1 {
            return Err(
                "a wait step needs exactly one of \"count\", \"succeeded\" and \
                 \"distinct_succeeded\""
                    .into(),
            );
        }
        if step.get("name").is_none() == step.get("names").is_none() {
            return Err("a wait step needs exactly one of \"name\" and \"names\"".into());
        }
    }
    Ok(())
}

/// The strict reading of SCHEMA.md, before the scenario runs or is skipped: its fields, every
/// step's, and the capabilities it requires.
fn check_scenario(scenario: &Value, features: &Value) -> Result<(), String> {
    check_fields("scenario", scenario, SCENARIO_FIELDS)?;
    check_requires(scenario, features)?;
    for (n, step) in scenario["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        check_step(step).map_err(|e| format!("step {}: {e}", n + 1))?;
    }
    Ok(())
}

/// Every name in `requires` (with or without `!`) must be a capability of every backend.
fn check_requires(scenario: &Value, features: &Value) -> Result<(), String> {
    for r in scenario["requires"].as_array().into_iter().flatten() {
        let name = r
            .as_str()
            .ok_or_else(|| format!("requires entry {r} is not a string"))?;
        let cap = name.strip_prefix('!').unwrap_or(name);
        let known = features
            .as_object()
            .into_iter()
            .flatten()
            .all(|(_, f)| cap != "url" && f.get(cap).is_some_and(Value::is_boolean));
        if !known {
            return Err(format!(
                "requires names {name:?}, not a capability of features.json"
            ));
        }
    }
    Ok(())
}

async fn run_scenario(url: String, broker: Option<String>, scenario: Value) -> Result<(), String> {
    let mut cfg = json!({"url": url, "prefix": format!("t.{}", uuid_hex())});
    if let Some(extra) = scenario.get("config").and_then(Value::as_object) {
        for (k, v) in extra {
            cfg[k] = v.clone();
        }
    }
    let config = Config::parse(&cfg.to_string()).map_err(|e| e.to_string())?;
    let bus = Bus::connect(config)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let mut run = Run {
        bus: bus.clone(),
        recs: HashMap::new(),
        subs: HashMap::new(),
        broker,
        config: cfg,
    };
    for (n, step) in scenario["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        run.step(step)
            .await
            .map_err(|e| format!("step {} ({}): {e}", n + 1, step["op"]))?;
    }
    let _ = bus.close().await;
    Ok(())
}

fn uuid_hex() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: AtomicUsize = AtomicUsize::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}{:x}",
        t,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Scenarios run side by side, except one that restarts the broker: it runs alone (the others
/// hold this for reading, it for writing).
static EXCLUSIVE: parking_lot::RwLock<()> = parking_lot::RwLock::new(());

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        std::process::exit(child_main(&spec));
    }
    // Scenario handlers panic on purpose (a panic is a nack); keep their noise out of the log.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or("");
        if !msg.starts_with("scenario handler panics") {
            default_hook(info);
        }
    }));
    let args = Arguments::from_args();
    let features: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("features.json")).unwrap())
            .unwrap();
    let only: Option<Vec<String>> = std::env::var("POLYBUS_TEST_BACKENDS").ok().map(|s| {
        s.split(',')
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty())
            .collect()
    });
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("scenarios"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let slow = std::env::var("POLYBUS_TEST_SLOW").is_ok_and(|v| v == "1");
    let mut trials = Vec::new();
    for (backend, feats) in features.as_object().unwrap() {
        if only.as_ref().is_some_and(|o| !o.contains(backend)) {
            continue;
        }
        let env = format!("POLYBUS_TEST_{}_URL", backend.to_uppercase());
        let url = std::env::var(&env).unwrap_or_else(|_| feats["url"].as_str().unwrap().to_owned());
        for f in &files {
            let scenario: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let id = scenario["id"].as_str().unwrap().to_owned();
            let name = format!("{backend}/{id}");
            if let Err(e) = check_scenario(&scenario, &features) {
                trials.push(Trial::test(name, move || Err(Failed::from(e))));
                continue;
            }
            let missing = scenario["requires"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|r| {
                    let r = r.as_str()?;
                    let (want, feat) = r.strip_prefix('!').map_or((true, r), |f| (false, f));
                    let has = feats.get(feat).and_then(Value::as_bool).unwrap_or(false);
                    (has != want).then(|| {
                        if want {
                            format!("backend lacks \"{feat}\"")
                        } else {
                            format!("backend has \"{feat}\"")
                        }
                    })
                });
            let is_slow = scenario.get("slow") == Some(&Value::Bool(true)) && !slow;
            let url = url.clone();
            let broker = feats["broker"].as_str().map(str::to_owned);
            let skip = missing.clone();
            let restarts = scenario["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["op"] == "restart_broker");
            let trial = Trial::test(name, move || {
                let (_shared, _alone) = if restarts {
                    (None, Some(EXCLUSIVE.write()))
                } else {
                    (Some(EXCLUSIVE.read()), None)
                };
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| Failed::from(e.to_string()))?;
                rt.block_on(run_scenario(url, broker, scenario))
                    .map_err(Failed::from)
            });
            trials.push(match skip {
                // Shown as `[skipped: backend lacks "groups"] memory/003-group ... ignored`.
                Some(reason) => trial
                    .with_kind(format!("skipped: {reason}"))
                    .with_ignored_flag(true),
                None if is_slow => trial
                    .with_kind("slow: set POLYBUS_TEST_SLOW=1")
                    .with_ignored_flag(true),
                None => trial,
            });
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
