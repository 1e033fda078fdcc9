//! `nats://` and `jetstream://` against a real nats-server started by the broker harness
//! (`tests/harness/brokers.sh`). These tests fail, never skip, when the broker is missing:
//! start it with `eval "$(bash tests/harness/brokers.sh start nats)"`. The authentication
//! tests start a second server (`nats-auth`) through the harness themselves, and the failure
//! tests restart the shared server through it, so they hold the broker lock exclusively.
#![cfg(all(feature = "nats", feature = "jetstream"))]

mod common;

use common::{harness, secs};

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use parking_lot::Mutex;
use polybus::{
    Bus, Config, ConnectionState, ErrorKind, Event, JetStreamConfig, Message, NatsConfig,
    SubscribeOptions,
};

/// Tests that restart the shared broker take it exclusively; the others share it.
static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn nats_url() -> String {
    url("POLYBUS_TEST_NATS_URL", "nats://127.0.0.1:4222")
}

fn js_url() -> String {
    url("POLYBUS_TEST_JETSTREAM_URL", "jetstream://127.0.0.1:4222")
}

/// The address of the shared server for a plain client.
fn plain_addr() -> String {
    nats_url().replacen("nats://", "", 1)
}

fn unique(tag: &str) -> String {
    format!("t.{tag}{}", uuid_like())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{t:x}{:x}{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect(cfg: Config) -> Bus {
    let url = cfg.url.clone();
    Bus::connect(cfg).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to {url}: {e}\nstart the broker with: \
             eval \"$(bash tests/harness/brokers.sh start nats)\""
        )
    })
}

/// Collects events delivered to a handler.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<Event>>,
    changed: tokio::sync::Notify,
}

impl Seen {
    fn handler(
        self: &Arc<Self>,
    ) -> impl Fn(Event) -> futures::future::Ready<Result<(), polybus::Error>> + Send + Sync + 'static
    {
        let me = self.clone();
        move |e: Event| {
            me.events.lock().push(e);
            me.changed.notify_waiters();
            futures::future::ready(Ok(()))
        }
    }

    async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let ev = self.events.lock();
                if ev.len() >= n {
                    return ev.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let have = self.events.lock().len();
                panic!("timed out waiting for {n} events; have {have}");
            }
        }
    }
}

#[tokio::test]
async fn wrong_credentials_fail_with_auth_within_the_connect_timeout() {
    let out = harness(&["start", "nats-auth"]);
    let base = out
        .lines()
        .find_map(|l| l.strip_prefix("export POLYBUS_TEST_NATS_AUTH_URL="))
        .expect("the harness prints the URL")
        .to_owned();
    let hostport = base.replacen("nats://", "", 1);
    let limit = Duration::from_secs(3);

    let start = Instant::now();
    let cfg = Config::new(format!("nats://polybus:wrong@{hostport}")).connect_timeout(limit);
    let e = Bus::connect(cfg)
        .await
        .expect_err("wrong password must fail");
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.message().contains(&hostport), "names the server: {e}");
    assert!(!e.to_string().contains("wrong"), "hides the password: {e}");
    // Generous for a loaded runner; a connect that ignored the timeout would still fail it.
    assert!(
        start.elapsed() < limit * 2 + Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );

    // No credentials at all.
    let e = Bus::connect(Config::new(base.clone()).connect_timeout(limit))
        .await
        .expect_err("no credentials must fail");
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");

    // The right ones, in the URL and in the `nats` section.
    let bus = connect(Config::new(format!("nats://polybus:secret@{hostport}"))).await;
    bus.close().await.unwrap();
    let bus = connect(Config::new(base).nats(NatsConfig {
        user: Some("polybus".into()),
        password: Some("secret".into()),
        ..NatsConfig::default()
    }))
    .await;
    assert_eq!(bus.connection_state(), ConnectionState::Connected);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn unreachable_server_fails_clearly_within_the_connect_timeout() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let limit = Duration::from_secs(2);
    for url in [
        format!("nats://127.0.0.1:{port}"),
        format!("jetstream://127.0.0.1:{port}"),
        // A non-routable address: nothing answers, so the connect timeout decides.
        "nats://10.255.255.1:4222".to_owned(),
    ] {
        let start = Instant::now();
        let e = Bus::connect(Config::new(url.clone()).connect_timeout(limit))
            .await
            .expect_err("nothing listens there");
        assert!(
            matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
            "{url}: {e}"
        );
        let host = url.split("://").nth(1).unwrap();
        assert!(e.message().contains(host), "names the server: {e}");
        // Generous for a loaded runner; a connect that ignored the timeout would still fail it.
        assert!(
            start.elapsed() < limit * 2 + Duration::from_secs(5),
            "{url}: took {:?}",
            start.elapsed()
        );
    }
}

#[tokio::test]
async fn a_polybus_event_reads_as_a_plain_nats_message() {
    let _shared = BROKER.read().await;
    let prefix = unique("interop");
    let plain = async_nats::connect(plain_addr())
        .await
        .expect("plain client");
    let mut sub = plain
        .subscribe(format!("{prefix}.orders.created"))
        .await
        .unwrap();
    plain.flush().await.unwrap();
    let bus = connect(Config::new(nats_url()).prefix(&prefix).name("billing")).await;
    let payload: Vec<u8> = vec![0, 159, 146, 150, b'{', 255, b'\n'];
    bus.publish(
        Message::new("orders.created", payload.clone())
            .key("order-1")
            .header("tenant", "acme")
            .id("evt-1")
            .event_type("order.created"),
    )
    .await
    .unwrap();
    let m = tokio::time::timeout(secs(5), sub.next())
        .await
        .expect("the plain subscriber gets it")
        .unwrap();
    assert_eq!(&m.payload[..], &payload[..], "the payload is untouched");
    let h = m.headers.expect("headers");
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
    assert_eq!(get("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(get("ce-id").as_deref(), Some("evt-1"));
    assert_eq!(get("ce-type").as_deref(), Some("order.created"));
    assert_eq!(get("ce-source").as_deref(), Some("billing"));
    assert_eq!(get("ce-partitionkey").as_deref(), Some("order-1"));
    assert_eq!(get("tenant").as_deref(), Some("acme"));
    let time = get("ce-time").expect("ce-time");
    assert!(time.ends_with('Z') && time.len() >= 20, "{time}");
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_slow_consumer_drop_is_counted_not_silent() {
    let _shared = BROKER.read().await;
    let prefix = unique("slow");
    let mut cfg = Config::new(nats_url()).prefix(&prefix);
    cfg.nats.pending_limit = 4;
    let bus = connect(cfg).await;
    // A handler held at a gate: its queue (1) and the client's 4 pending messages fill up, and
    // the client drops the rest.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (g, h) = (gate.clone(), handled.clone());
    let _sub = bus
        .subscribe(
            "slow.events",
            SubscribeOptions::new().queue_size(1),
            move |_e: Event| {
                let (g, h) = (g.clone(), h.clone());
                async move {
                    g.acquire().await.expect("gate").forget();
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<(), polybus::Error>(())
                }
            },
        )
        .await
        .unwrap();
    let n = 200;
    bus.publish_batch((0..n).map(|i| Message::new("slow.events", format!("{i}"))))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + secs(10);
    while bus.stats().dropped == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dropped = bus.stats().dropped;
    assert!(
        dropped >= 1,
        "the client's drops are counted in stats().dropped"
    );
    gate.add_permits(n);
    bus.close().await.unwrap();
    let handled = handled.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        handled < n,
        "{handled} of {n} handled, though the client dropped some"
    );
    assert!(
        handled as u64 + dropped <= n as u64,
        "{handled} handled + {dropped} dropped"
    );
}

#[tokio::test]
async fn a_plain_nats_message_reaches_a_polybus_handler() {
    let _shared = BROKER.read().await;
    let prefix = unique("interop");
    let bus = connect(Config::new(nats_url()).prefix(&prefix)).await;
    let seen = Arc::new(Seen::default());
    let _sub = bus
        .subscribe("orders.*", SubscribeOptions::new(), seen.handler())
        .await
        .unwrap();
    let plain = async_nats::connect(plain_addr())
        .await
        .expect("plain client");
    plain
        .publish(format!("{prefix}.orders.created"), "plain".into())
        .await
        .unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("ce-id", "from-sdk");
    h.insert("ce-type", "order.created");
    h.insert("ce-specversion", "1.0");
    h.insert("ce-partitionkey", "k9");
    h.insert("tenant", "acme");
    plain
        .publish_with_headers(format!("{prefix}.orders.paid"), h, "ce".into())
        .await
        .unwrap();
    plain.flush().await.unwrap();
    let ev = seen.wait_for(2, secs(5)).await;
    assert_eq!(ev[0].topic(), "orders.created");
    assert_eq!(&ev[0].payload()[..], b"plain");
    assert_eq!(ev[0].attempt(), 1);
    assert_eq!(ev[0].id(), "", "no ce-id: no id");
    assert_eq!(ev[0].event_type(), "orders.created");
    assert_eq!(ev[1].topic(), "orders.paid");
    assert_eq!(ev[1].id(), "from-sdk");
    assert_eq!(ev[1].event_type(), "order.created");
    assert_eq!(ev[1].key(), Some("k9"));
    assert_eq!(
        ev[1].headers().get("tenant").map(String::as_str),
        Some("acme")
    );
    assert!(!ev[1].headers().contains_key("ce-id"));
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_plain_jetstream_publish_reaches_a_polybus_group() {
    let _shared = BROKER.read().await;
    let prefix = unique("jsinterop");
    let bus = connect(Config::new(js_url()).prefix(&prefix)).await;
    let seen = Arc::new(Seen::default());
    let _sub = bus
        .subscribe(
            "orders.>",
            SubscribeOptions::new().group("billing"),
            seen.handler(),
        )
        .await
        .unwrap();
    let plain = async_nats::connect(plain_addr())
        .await
        .expect("plain client");
    let js = async_nats::jetstream::new(plain);
    js.publish(format!("{prefix}.orders.created"), "plain".into())
        .await
        .unwrap()
        .await
        .expect("the stream polybus made covers the prefix");
    let ev = seen.wait_for(1, secs(5)).await;
    assert_eq!(ev[0].topic(), "orders.created");
    assert_eq!(&ev[0].payload()[..], b"plain");
    assert_eq!(ev[0].attempt(), 1);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn jetstream_start_earliest_replays_and_ids_deduplicate() {
    let _shared = BROKER.read().await;
    let prefix = unique("replay");
    let bus = connect(Config::new(js_url()).prefix(&prefix)).await;
    for i in 0..3 {
        bus.publish(Message::new("orders.created", format!("{i}")).id(format!("id-{i}")))
            .await
            .unwrap();
    }
    // The same id again: JetStream stores it once.
    bus.publish(Message::new("orders.created", "again").id("id-0"))
        .await
        .unwrap();
    let seen = Arc::new(Seen::default());
    let _sub = bus
        .subscribe(
            "orders.created",
            SubscribeOptions::new().start(polybus::Start::Earliest),
            seen.handler(),
        )
        .await
        .unwrap();
    let ev = seen.wait_for(3, secs(5)).await;
    let payloads: Vec<_> = ev.iter().map(|e| e.payload().clone()).collect();
    assert_eq!(payloads, ["0", "1", "2"]);
    assert_eq!(ev[0].id(), "id-0");
    bus.close().await.unwrap();
    assert_eq!(seen.events.lock().len(), 3, "the duplicate was not stored");
}

#[tokio::test]
async fn jetstream_progress_keeps_a_slow_handler_from_redelivery() {
    let _shared = BROKER.read().await;
    let prefix = unique("slow");
    let cfg = Config::new(js_url())
        .prefix(&prefix)
        .jetstream(JetStreamConfig {
            ack_wait_ms: 1000,
            ..JetStreamConfig::default()
        });
    let bus = connect(cfg).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let finished = Arc::new(tokio::sync::Notify::new());
    let (c, f) = (calls.clone(), finished.clone());
    let _sub = bus
        .subscribe(
            "jobs.run",
            SubscribeOptions::new().group("workers"),
            move |e: Event| {
                let (c, f) = (c.clone(), f.clone());
                async move {
                    c.lock().push(e.attempt());
                    // Three ack_waits long (the workload): without progress reports the broker
                    // redelivers meanwhile, and the redelivery waits in the queue behind it.
                    tokio::time::sleep(Duration::from_millis(3000)).await;
                    f.notify_one();
                    Ok::<(), polybus::Error>(())
                }
            },
        )
        .await
        .unwrap();
    bus.publish(Message::new("jobs.run", "x")).await.unwrap();
    tokio::time::timeout(secs(20), finished.notified())
        .await
        .expect("the handler finished");
    // Close drains the queue: a redelivery that arrived while the handler ran is handled here.
    bus.close().await.unwrap();
    assert_eq!(*calls.lock(), [1], "handled once, never redelivered");
}

#[tokio::test]
async fn jetstream_redelivery_after_a_crash_counts_the_attempt() {
    let _shared = BROKER.read().await;
    let prefix = unique("crash");
    let cfg = Config::new(js_url())
        .prefix(&prefix)
        .close_timeout(Duration::from_millis(200))
        .jetstream(JetStreamConfig {
            ack_wait_ms: 1000,
            ..JetStreamConfig::default()
        });
    // The first consumer takes the event and never finishes it (a hung or crashed process):
    // close gives up on it without an ack.
    let first = connect(cfg.clone()).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    let _hung = first
        .subscribe(
            "jobs.run",
            SubscribeOptions::new().group("workers"),
            move |_e: Event| {
                s.notify_one();
                futures::future::pending::<Result<(), polybus::Error>>()
            },
        )
        .await
        .unwrap();
    first.publish(Message::new("jobs.run", "x")).await.unwrap();
    tokio::time::timeout(secs(5), started.notified())
        .await
        .expect("the first consumer got it");
    let e = first.close().await.expect_err("the hung handler times out");
    assert_eq!(e.kind(), ErrorKind::Timeout);

    let second = connect(cfg).await;
    let seen = Arc::new(Seen::default());
    let _sub = second
        .subscribe(
            "jobs.run",
            SubscribeOptions::new().group("workers"),
            seen.handler(),
        )
        .await
        .unwrap();
    let ev = seen.wait_for(1, secs(10)).await;
    assert_eq!(&ev[0].payload()[..], b"x");
    assert_eq!(ev[0].attempt(), 2, "the broker's delivery count");
    second.close().await.unwrap();
}

#[tokio::test]
async fn jetstream_publishes_are_pipelined() {
    let _shared = BROKER.read().await;
    let prefix = unique("pipe");
    let bus = connect(Config::new(js_url()).prefix(&prefix)).await;
    let n = 8000;
    let start = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n {
        if let Some(p) = bus
            .publish_nowait(Message::new("bench.run", format!("{i}")))
            .unwrap()
        {
            pending.push(p);
        }
    }
    for p in pending {
        p.wait().await.unwrap();
    }
    let took = start.elapsed();
    assert_eq!(bus.stats().published, n);
    // The structure, not a stopwatch (the speed is make bench's): many confirmations are
    // awaited at once, and every publish was confirmed.
    assert!(bus.publish_window() > 1, "window {}", bus.publish_window());
    eprintln!("{n} JetStream publishes in {took:?}");
    bus.close().await.unwrap();
}

#[tokio::test]
async fn failures_survive_a_server_restart() {
    let _exclusive = BROKER.write().await;
    nats_subscriptions_resume_and_the_state_is_observed().await;
    jetstream_loses_nothing_across_a_kill_and_restart().await;
}

async fn nats_subscriptions_resume_and_the_state_is_observed() {
    let prefix = unique("restart");
    let bus = connect(Config::new(nats_url()).prefix(&prefix)).await;
    assert_eq!(bus.connection_state(), ConnectionState::Connected);
    let mut state = bus.watch_connection_state();
    let seen = Arc::new(Seen::default());
    let _sub = bus
        .subscribe("orders.*", SubscribeOptions::new(), seen.handler())
        .await
        .unwrap();
    bus.publish(Message::new("orders.created", "before"))
        .await
        .unwrap();
    seen.wait_for(1, secs(5)).await;

    let observed = Arc::new(Mutex::new(Vec::new()));
    let o = observed.clone();
    let mut s2 = state.clone();
    let watcher = tokio::spawn(async move {
        while s2.changed().await.is_ok() {
            let now = *s2.borrow_and_update();
            o.lock().push(now);
            if now == ConnectionState::Closed {
                break;
            }
        }
    });
    harness(&["restart", "nats"]);
    tokio::time::timeout(
        secs(20),
        state.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await
    .expect("reconnects")
    .unwrap();
    // At most once: keep publishing until the resumed subscription gets one.
    let deadline = Instant::now() + secs(20);
    while seen.events.lock().len() < 2 {
        assert!(Instant::now() < deadline, "the subscription did not resume");
        bus.publish(Message::new("orders.created", "after"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bus.close().await.unwrap();
    let _ = tokio::time::timeout(secs(5), watcher).await;
    let observed = observed.lock().clone();
    assert!(
        observed.contains(&ConnectionState::Disconnected),
        "{observed:?}"
    );
    assert!(
        observed.contains(&ConnectionState::Connected),
        "{observed:?}"
    );
    assert_eq!(
        observed.last(),
        Some(&ConnectionState::Closed),
        "{observed:?}"
    );
    assert_eq!(bus.connection_state(), ConnectionState::Closed);
}

async fn jetstream_loses_nothing_across_a_kill_and_restart() {
    let prefix = unique("durable");
    let cfg = Config::new(js_url())
        .prefix(&prefix)
        .jetstream(JetStreamConfig {
            ack_wait_ms: 3000,
            ..JetStreamConfig::default()
        });
    let bus = connect(cfg).await;
    let n = 10_000usize;
    let handled = Arc::new(Mutex::new(HashSet::new()));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (h, c) = (handled.clone(), calls.clone());
    let _sub = bus
        .subscribe(
            "jobs.>",
            SubscribeOptions::new().group("workers").concurrency(4),
            move |e: Event| {
                let (h, c) = (h.clone(), c.clone());
                async move {
                    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // A little work, so the restart lands mid-stream.
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    h.lock()
                        .insert(String::from_utf8_lossy(e.payload()).into_owned());
                    Ok::<(), polybus::Error>(())
                }
            },
        )
        .await
        .unwrap();
    bus.publish_batch((0..n).map(|i| Message::new("jobs.run", format!("{i}"))))
        .await
        .unwrap();
    let deadline = Instant::now() + secs(60);
    while handled.lock().len() < n / 4 {
        assert!(Instant::now() < deadline, "handling did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_kill = handled.lock().len();
    harness(&["restart", "nats"]);
    let deadline = Instant::now() + secs(120);
    loop {
        let have = handled.lock().len();
        if have == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {n} events handled after the restart (killed at {at_kill})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "killed after {at_kill} of {n}; {} handler calls for {n} events",
        calls.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(at_kill < n, "the restart happened mid-stream");
    bus.close().await.unwrap();
}

/// A JetStream publish waited on from a thread of the caller's own (the way the C, Go and
/// Python front ends wait) is confirmed: its PubAck, whose client sets timers of its own, is
/// polled inside the bus's runtime.
#[tokio::test]
async fn a_jetstream_publish_waited_on_from_a_plain_thread_is_confirmed() {
    let _shared = BROKER.read().await;
    let prefix = unique("thread");
    let bus = connect(Config::new(js_url()).prefix(&prefix)).await;
    let publisher = bus.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread outside every runtime; the test's own runtime goes on meanwhile.
    std::thread::spawn(move || {
        let r = publisher
            .publish_blocking(Message::new("orders.created", "one"))
            .and_then(|()| {
                publisher.publish_batch_blocking(
                    (0..100).map(|i| Message::new("orders.created", format!("{i}"))),
                )
            });
        let _ = tx.send(r);
    });
    let published = tokio::time::timeout(secs(30), rx)
        .await
        .expect("the publishes did not finish within 30 s")
        .expect("the publishing thread panicked");
    assert_eq!(published.unwrap(), 100);
    assert_eq!(bus.stats().published, 101);
    bus.close().await.unwrap();
}
