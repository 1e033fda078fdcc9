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
