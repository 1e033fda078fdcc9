//! Events per second from publish to handler on `memory://`: 64-byte payloads, one publisher,
//! one subscriber, one process. Prints one JSON line per case. Run with
//! `cargo bench -p polybus --bench pubsub` (`POLYBUS_BENCH_EVENTS` sets the count).
//!
//! With `POLYBUS_BENCH_KAFKA_URL` (`kafka://host:port`) it also measures `kafka://` beside
//! librdkafka used directly (rdkafka's producer and consumer, the same settings):
//! `POLYBUS_BENCH_KAFKA_EVENTS` events (default 200,000), each published and handled once.
//!
//! With `POLYBUS_BENCH_URL` (one URL or several, comma-separated, for example
//! `jetstream://127.0.0.1:4222,redis://127.0.0.1:6390`) it measures `publish_batch` on each
//! broker the way the Python and Node benches do (chunks of 4096, one subscriber, a fresh
//! prefix, after an unreported warm-up round of a quarter), `POLYBUS_BENCH_BROKER_EVENTS`
//! events each (default 200,000): the core's own figure beside theirs. A `nats://` URL among
//! them is also measured with async-nats used directly: the client
//! crate the core is built on, publishing the same 64-byte payloads in chunks of 4096 (each
//! chunk flushed) to one subscriber, the floor the core adds to; and once more with the
//! CloudEvents headers polybus's wire carries, the floor of that wire.
//!
//! With `POLYBUS_BENCH_CASE=latency` and `POLYBUS_BENCH_URL`, it measures the latency from
//! publish to handler at a fixed rate below saturation on each broker (and `memory://`):
//! `POLYBUS_BENCH_LATENCY_RATE` events a second (default 5,000) for
//! `POLYBUS_BENCH_LATENCY_SECONDS` (default 4) after a second of warm-up, each publish
//! awaited (a durable broker's confirmation included), the percentiles of the time from just
//! before each publish to its handler. A `nats://` URL is also measured with async-nats used
//! directly, the same way.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use polybus::{Bus, Event, Message, SubscribeOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokio::sync::Notify;

fn events() -> u64 {
    std::env::var("POLYBUS_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000)
}

async fn polybus_case(name: &str, n: u64, batch: bool) {
    let bus = Bus::connect("memory://").await.unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (s, d) = (seen.clone(), done.clone());
    let _sub = bus
        .subscribe("bench.events", SubscribeOptions::new(), move |_e: Event| {
            if s.fetch_add(1, Ordering::Relaxed) + 1 == n {
                d.notify_one();
            }
            std::future::ready(Ok::<(), polybus::Error>(()))
        })
        .await
        .unwrap();
    let payload = bytes::Bytes::from(vec![7u8; 64]);
    let start = Instant::now();
    if batch {
        let chunk = 1024;
        let mut sent = 0;
        while sent < n {
            let k = chunk.min(n - sent);
            bus.publish_batch((0..k).map(|_| Message::new("bench.events", payload.clone())))
                .await
                .unwrap();
            sent += k;
        }
    } else {
        for _ in 0..n {
            bus.publish(Message::new("bench.events", payload.clone()))
                .await
                .unwrap();
        }
    }
    done.notified().await;
    report(name, n, start.elapsed().as_secs_f64());
    bus.close().await.unwrap();
}

/// The peer: a bounded tokio channel between two tasks, the floor of any in-process bus.
async fn channel_case(n: u64) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1024);
    let payload = bytes::Bytes::from(vec![7u8; 64]);
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut got = 0;
        while rx.recv().await.is_some() {
            got += 1;
            if got == n {
                break;
            }
        }
    });
    for _ in 0..n {
        tx.send(payload.clone()).await.unwrap();
    }
    consumer.await.unwrap();
    report("rust tokio::mpsc (peer)", n, start.elapsed().as_secs_f64());
}

/// A broker: pipelined publishes (`publish_batch`), one subscriber; from the first publish to
/// the last event handled. Reported as `rust <scheme>:// publish_batch` when `report` is set.
async fn broker_case(url: &str, n: u64, report_it: bool) {
    let prefix = format!("bench{}", uuid::Uuid::new_v4().simple());
    let mut config = polybus::Config::new(url).prefix(prefix);
    // Redis streams keep every event (no trimming), so a subscriber that lags loses none.
    config.redis.max_len = 0;
    let bus = Bus::connect(config).await.unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (s, d) = (seen.clone(), done.clone());
    let _sub = bus
        .subscribe("bench.events", SubscribeOptions::new(), move |_e: Event| {
            if s.fetch_add(1, Ordering::Relaxed) + 1 == n {
                d.notify_one();
            }
            std::future::ready(Ok::<(), polybus::Error>(()))
        })
        .await
        .unwrap();
    let payload = bytes::Bytes::from(vec![7u8; 64]);
    let start = Instant::now();
    let chunk = 4096;
    let mut sent = 0;
    while sent < n {
        let k = chunk.min(n - sent);
        bus.publish_batch((0..k).map(|_| Message::new("bench.events", payload.clone())))
            .await
            .unwrap();
        sent += k;
    }
    done.notified().await;
    let secs = start.elapsed().as_secs_f64();
    if report_it {
        let scheme = &url[..url.find("://").map_or(0, |i| i + 3)];
        report(&format!("rust {scheme} publish_batch"), n, secs);
    }
    bus.close().await.unwrap();
}

/// The NATS peer: async-nats directly, the way its documentation has a fast publisher (publish
/// without waiting, a flush per chunk) and one subscriber reading its stream; from the first
/// publish to the last message received. Reported as `nats:// async-nats used directly (peer)`
/// when `report_it`; with `with_headers`, each message also carries the CloudEvents headers
/// polybus's wire does (a fresh id per event), reported as `nats:// async-nats with the ce-
/// headers (peer)`: the same client's cost of the same wire.
async fn nats_peer_case(url: &str, n: u64, with_headers: bool, report_it: bool) {
    use futures::StreamExt;
    let server = url.trim_start_matches("nats://");
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(512 * 1024)
        .connect(server)
        .await
        .unwrap();
    let subject = format!("bench{}.events", uuid::Uuid::new_v4().simple());
    let mut sub = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let payload = bytes::Bytes::from(vec![7u8; 64]);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            sub.next().await.unwrap();
            got += 1;
        }
    });
    let chunk = 4096;
    let mut sent = 0;
    while sent < n {
        let k = chunk.min(n - sent);
        for _ in 0..k {
            if with_headers {
                // The CloudEvents attributes polybus's wire carries (binary content mode).
                let mut h = async_nats::HeaderMap::new();
                h.insert("ce-specversion", "1.0");
                h.insert(
                    "ce-id",
                    uuid::Uuid::new_v4().hyphenated().to_string().as_str(),
                );
                h.insert("ce-type", "bench.events");
                h.insert("ce-time", "2026-12-07T13:30:00.123456Z");
                client
                    .publish_with_headers(subject.clone(), h, payload.clone())
                    .await
                    .unwrap();
            } else {
                client
                    .publish(subject.clone(), payload.clone())
                    .await
                    .unwrap();
            }
        }
        client.flush().await.unwrap();
        sent += k;
    }
    reader.await.unwrap();
    if report_it {
        let name = if with_headers {
            "nats:// async-nats with the ce- headers (peer)"
        } else {
            "nats:// async-nats used directly (peer)"
        };
        report(name, n, start.elapsed().as_secs_f64());
    }
}

/// The peer: rdkafka directly (idempotent producer with acks=all, a consumer group reading
/// from the start), with 64-byte values and the same CloudEvents-free records.
async fn kafka_rdkafka_case(url: &str, n: u64, name: Option<&str>) {
    use rdkafka::{
        admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
        consumer::{Consumer, StreamConsumer},
        producer::{FutureProducer, FutureRecord},
        ClientConfig,
    };
    let servers = url.trim_start_matches("kafka://");
    let topic = format!("bench{}.events", uuid::Uuid::new_v4().simple());
    let mut base = ClientConfig::new();
    base.set("bootstrap.servers", servers);
    let admin: AdminClient<_> = base.create().unwrap();
    admin
        .create_topics(
            [&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let producer: FutureProducer = base
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let consumer: StreamConsumer = base
        .clone()
        .set("group.id", format!("{topic}-g"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let payload = vec![7u8; 64];
    let start = Instant::now();
    let reader = async {
        let mut got = 0;
        while got < n {
            consumer.recv().await.unwrap();
            got += 1;
        }
    };
    let writer = async {
        let mut pending = Vec::with_capacity(4096);
        for _ in 0..n {
            let record = FutureRecord::<(), [u8]>::to(&topic).payload(&payload);
            match producer.send_result(record) {
                Ok(f) => pending.push(f),
                Err((e, _)) => panic!("{e}"),
            }
            if pending.len() == 4096 {
                for f in pending.drain(..) {
                    f.await.unwrap().unwrap();
                }
            }
        }
        for f in pending {
            f.await.unwrap().unwrap();
        }
    };
    tokio::join!(reader, writer);
    if let Some(name) = name {
        report(name, n, start.elapsed().as_secs_f64());
    }
}

/// Publish-to-handler latency at a fixed rate: each payload carries the moment (ns since
/// `base`) just before its publish; the handler records how long it took to arrive.
struct Latency {
    base: Instant,
    samples: parking_lot::Mutex<Vec<u64>>,
    seen: AtomicU64,
    done: Notify,
    expect: u64,
}

impl Latency {
    fn new(expect: u64) -> Arc<Self> {
        Arc::new(Latency {
            base: Instant::now(),
            samples: parking_lot::Mutex::new(Vec::with_capacity(expect as usize)),
            seen: AtomicU64::new(0),
            done: Notify::new(),
            expect,
        })
    }

    fn payload(&self) -> bytes::Bytes {
        let mut p = vec![7u8; 64];
        p[..8].copy_from_slice(&(self.base.elapsed().as_nanos() as u64).to_le_bytes());
        bytes::Bytes::from(p)
    }

    fn arrived(&self, payload: &[u8]) {
        let sent = u64::from_le_bytes(payload[..8].try_into().unwrap());
        let now = self.base.elapsed().as_nanos() as u64;
        self.samples.lock().push(now.saturating_sub(sent));
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.expect {
            self.done.notify_one();
        }
    }

    /// Publishes `expect` events at `rate` a second with `send`, then reports the percentiles
    /// of those after the first `warm` (unreported).
    async fn run<F, Fut>(&self, name: &str, rate: u64, warm: u64, mut send: F)
    where
        F: FnMut(bytes::Bytes) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let start = tokio::time::Instant::now();
        let gap = std::time::Duration::from_nanos(1_000_000_000 / rate.max(1));
        for i in 0..self.expect {
            tokio::time::sleep_until(start + gap * i as u32).await;
            send(self.payload()).await;
        }
        let wait = tokio::time::timeout(std::time::Duration::from_secs(30), self.done.notified());
        if wait.await.is_err() {
            eprintln!(
                "{name}: only {} of {} events arrived",
                self.seen.load(Ordering::Relaxed),
                self.expect
            );
            return;
        }
        let mut all = std::mem::take(&mut *self.samples.lock());
        // Arrival order is publish order here; the warm-up round is left out.
        let mut v = all.split_off((warm as usize).min(all.len()));
        v.sort_unstable();
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0;
        println!(
            "{{\"lang\":\"rust\",\"case\":\"{name}\",\"events\":{},\"rate\":{rate},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1}}}",
            v.len(),
            at(0.5),
            at(0.99),
            at(0.999),
            *v.last().unwrap() as f64 / 1000.0
        );
    }
}

/// polybus: `publish` awaited per event, one subscriber.
async fn latency_case(url: &str, rate: u64, seconds: u64) {
    let warm = rate;
    let lat = Latency::new(warm + rate * seconds);
    let mut config =
        polybus::Config::new(url).prefix(format!("bench{}", uuid::Uuid::new_v4().simple()));
    config.redis.max_len = 0;
    let bus = Bus::connect(config).await.unwrap();
    let l = lat.clone();
    let _sub = bus
        .subscribe("bench.latency", SubscribeOptions::new(), move |e: Event| {
            l.arrived(e.payload());
            std::future::ready(Ok::<(), polybus::Error>(()))
        })
        .await
        .unwrap();
    let scheme = &url[..url.find("://").map_or(0, |i| i + 3)];
    let name = format!("{scheme} latency rust");
    lat.run(&name, rate, warm, |p| {
        let bus = bus.clone();
        async move { bus.publish(Message::new("bench.latency", p)).await.unwrap() }
    })
    .await;
    bus.close().await.unwrap();
}

/// async-nats used directly: each message published and flushed, one subscriber.
async fn latency_nats_peer(url: &str, rate: u64, seconds: u64) {
    let warm = rate;
    let lat = Latency::new(warm + rate * seconds);
    let client = async_nats::connect(url.trim_start_matches("nats://"))
        .await
        .unwrap();
    let subject = format!("bench{}.latency", uuid::Uuid::new_v4().simple());
    let mut sub = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let l = lat.clone();
    let reader = tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(m) = sub.next().await {
            l.arrived(&m.payload);
        }
    });
    lat.run(
        "nats:// latency async-nats used directly (peer)",
        rate,
        warm,
        |p| {
            let (client, subject) = (client.clone(), subject.clone());
            async move {
                client.publish(subject, p).await.unwrap();
                client.flush().await.unwrap();
            }
        },
    )
    .await;
    reader.abort();
}

fn report(name: &str, n: u64, secs: f64) {
    println!(
        "{{\"lang\":\"rust\",\"case\":\"{name}\",\"events\":{n},\"seconds\":{secs:.4},\"events_per_sec\":{:.0}}}",
        n as f64 / secs
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and test listing: nothing to do
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = events();
    // POLYBUS_BENCH_CASE=publish|batch|peer|broker|kafka|kafka-peer runs one case.
    let only = std::env::var("POLYBUS_BENCH_CASE").ok();
    let run = |case: &str| only.as_deref().is_none_or(|o| o == case);
    rt.block_on(async {
        if run("publish") {
            polybus_case("rust publish", n, false).await;
        }
        if run("batch") {
            polybus_case("rust publish_batch", n, true).await;
        }
        if run("peer") {
            channel_case(n).await;
        }
        if let Some(urls) = std::env::var("POLYBUS_BENCH_URL")
            .ok()
            .filter(|_| run("broker"))
        {
            let k: u64 = std::env::var("POLYBUS_BENCH_BROKER_EVENTS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200_000);
            for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                broker_case(url, (k / 4).max(1), false).await;
                broker_case(url, k, true).await;
                if url.starts_with("nats://") {
                    for headers in [false, true] {
                        nats_peer_case(url, (k / 4).max(1), headers, false).await;
                        nats_peer_case(url, k, headers, true).await;
                    }
                }
            }
        }
        if let Some(urls) = std::env::var("POLYBUS_BENCH_URL")
            .ok()
            .filter(|_| only.as_deref() == Some("latency"))
        {
            let env = |k: &str, d: u64| {
                std::env::var(k)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(d)
            };
            let (rate, seconds) = (
                env("POLYBUS_BENCH_LATENCY_RATE", 5_000),
                env("POLYBUS_BENCH_LATENCY_SECONDS", 4),
            );
            for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                latency_case(url, rate, seconds).await;
                if url.starts_with("nats://") {
                    latency_nats_peer(url, rate, seconds).await;
                }
            }
        }
        if let Ok(url) = std::env::var("POLYBUS_BENCH_KAFKA_URL") {
            let k = std::env::var("POLYBUS_BENCH_KAFKA_EVENTS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200_000);
            // A first, unreported round warms the broker's JIT, so neither case pays for it.
            kafka_rdkafka_case(&url, k / 2, None).await;
            if run("kafka") {
                broker_case(&url, k, true).await;
            }
            if run("kafka-peer") {
                kafka_rdkafka_case(&url, k, Some("kafka:// rdkafka used directly (peer)")).await;
            }
        }
    });
}
