//! The core's benchmarks; one JSON line per case (the format `bench/run.sh` collects). Run with
//! `cargo bench -p polybus --bench pubsub`. `POLYBUS_BENCH_CASE` picks one workload:
//!
//! - none, `publish`, `batch`, `peer`: events per second from publish to handler on `memory://`,
//!   64-byte payloads, one publisher, one subscriber (`publish` awaited per event, then
//!   `publish_batch`), beside a bounded tokio channel between two tasks (the peer);
//!   `POLYBUS_BENCH_EVENTS` events (default 2,000,000).
//! - `broker`: `publish_batch` on each URL of `POLYBUS_BENCH_URL` (comma-separated, for example
//!   `nats://127.0.0.1:4222,jetstream://127.0.0.1:4222,redis://127.0.0.1:6390`): chunks of 4096,
//!   one subscriber, a fresh prefix, after an unreported warm-up round of a quarter,
//!   `POLYBUS_BENCH_BROKER_EVENTS` events (default 200,000) of `POLYBUS_BENCH_SIZE` bytes
//!   (default 64). Beside it, the client crate under that backend used directly, plain and with
//!   the same wire polybus sends (the CloudEvents headers or stream fields): async-nats on
//!   `nats://` (published without waiting, flushed per chunk) and its JetStream context on
//!   `jetstream://` (a chunk of publishes, then their PubAcks; a pull consumer acknowledging each
//!   message), redis-rs on `redis://` (pipelined XADD per chunk; XREADGROUP of up to a chunk and
//!   one XACK of what it read), rdkafka on `kafka://` (an idempotent producer, acks=all, a chunk
//!   of sends then their deliveries; a consumer group reading the topic from the start).
//! - `single`: durable publish one at a time on each `jetstream://`, `redis://` and `kafka://`
//!   URL: `POLYBUS_BENCH_SINGLE_EVENTS` events (default 3,000), each confirmed before the next,
//!   one subscriber; beside the same clients used directly one at a time.
//! - `fanout`: on each URL, one topic with 10 subscriptions each handling every event (events
//!   per second counts deliveries), then a group of 4 sharing them.
//! - `latency`: the latency from publish to handler at a fixed rate below saturation on each URL:
//!   `POLYBUS_BENCH_LATENCY_RATE` events a second (default 5,000) for
//!   `POLYBUS_BENCH_LATENCY_SECONDS` (default 4) after a second of warm-up, each publish awaited
//!   (a durable broker's confirmation included), the percentiles of the time from just before
//!   each publish to its handler. A `nats://` URL is also measured with async-nats used
//!   directly, the same way.
//!
//! Every throughput line also carries the process's CPU time per event during the measured run
//! (`cpu_us_per_event`, user and system, every thread of the process: the client's side of the
//! work; the brokers run elsewhere) and its peak resident memory during it (`rss_mb`).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use futures::StreamExt;
use polybus::{Bus, Event, Message, SubscribeOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokio::sync::Notify;

/// Chunk of the pipelined broker cases.
const CHUNK: u64 = 4096;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The payload of the broker cases: `POLYBUS_BENCH_SIZE` bytes (default 64).
fn payload() -> bytes::Bytes {
    bytes::Bytes::from(vec![7u8; env("POLYBUS_BENCH_SIZE", 64) as usize])
}

fn scheme(url: &str) -> &str {
    &url[..url.find("://").map_or(0, |i| i + 3)]
}

/// The time, CPU and peak memory of one measured run.
struct Meter {
    start: Instant,
    cpu: f64,
}

impl Meter {
    /// Starts the clock; resets the process's peak resident set (`clear_refs` 5).
    fn start() -> Meter {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Meter {
            start: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Prints the run's line when it has a name (a warm-up round has none).
    fn report(&self, name: Option<&str>, n: u64, size: usize) {
        let Some(name) = name else { return };
        let secs = self.seconds();
        let cpu_us = (cpu_seconds() - self.cpu) * 1e6 / n as f64;
        println!(
            "{{\"lang\":\"rust\",\"case\":\"{name}\",\"events\":{n},\"size\":{size},\"seconds\":{secs:.4},\"events_per_sec\":{:.0},\"cpu_us_per_event\":{cpu_us:.2},\"rss_mb\":{:.1}}}",
            n as f64 / secs,
            peak_rss_mb()
        );
    }
}

/// User and system CPU time of the whole process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The peak resident set since the last reset (`VmHWM`), in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A handler's countdown: `done` fires when `expect` events were handled in all.
struct Countdown {
    seen: AtomicU64,
    expect: u64,
    done: Notify,
}

impl Countdown {
    fn new(expect: u64) -> Arc<Self> {
        Arc::new(Countdown {
            seen: AtomicU64::new(0),
            expect,
            done: Notify::new(),
        })
    }

    fn one(&self) {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.expect {
            self.done.notify_one();
        }
    }

    /// A polybus handler counting down.
    fn handler(
        self: &Arc<Self>,
    ) -> impl Fn(Event) -> std::future::Ready<Result<(), polybus::Error>> + Send + Sync + 'static
    {
        let c = self.clone();
        move |_e: Event| {
            c.one();
            std::future::ready(Ok(()))
        }
    }

    async fn wait(&self) {
        self.done.notified().await;
    }
}

async fn polybus_case(name: &str, n: u64, batch: bool) {
    let bus = Bus::connect("memory://").await.unwrap();
    let count = Countdown::new(n);
    let _sub = bus
        .subscribe("bench.events", SubscribeOptions::new(), count.handler())
        .await
        .unwrap();
    let payload = bytes::Bytes::from(vec![7u8; 64]);
    let meter = Meter::start();
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
    count.wait().await;
    meter.report(Some(name), n, 64);
    bus.close().await.unwrap();
}

/// The peer: a bounded tokio channel between two tasks, the floor of any in-process bus.
async fn channel_case(n: u64) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1024);
    let payload = bytes::Bytes::from(vec![7u8; 64]);
    let meter = Meter::start();
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
    meter.report(Some("rust tokio::mpsc (peer)"), n, 64);
}

/// A bus on `url` with a fresh prefix (Redis streams untrimmed, so a lagging reader loses none).
async fn fresh_bus(url: &str) -> Bus {
    let prefix = format!("bench{}", uuid::Uuid::new_v4().simple());
    let mut config = polybus::Config::new(url).prefix(prefix);
    config.redis.max_len = 0;
    Bus::connect(config).await.unwrap()
}

/// How a broker case publishes: chunks of `publish_batch`, or one awaited `publish` at a time.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Pipelined,
    OneAtATime,
}

/// A broker: one subscriber; from the first publish to the last event handled.
async fn broker_case(url: &str, n: u64, mode: Mode, name: Option<&str>) {
    let bus = fresh_bus(url).await;
    let count = Countdown::new(n);
    let _sub = bus
        .subscribe("bench.events", SubscribeOptions::new(), count.handler())
        .await
        .unwrap();
    let payload = payload();
    let meter = Meter::start();
    let mut sent = 0;
    while sent < n {
        if mode == Mode::OneAtATime {
            bus.publish(Message::new("bench.events", payload.clone()))
                .await
                .unwrap();
            sent += 1;
            continue;
        }
        let k = CHUNK.min(n - sent);
        bus.publish_batch((0..k).map(|_| Message::new("bench.events", payload.clone())))
            .await
            .unwrap();
        sent += k;
    }
    count.wait().await;
    meter.report(name, n, payload.len());
    bus.close().await.unwrap();
}

/// Fan-out: 10 subscriptions of one topic, each handling every one of `n / 10` events, then a
/// group of 4 sharing `n`; events per second counts deliveries.
async fn fanout_case(url: &str, n: u64, report_it: bool) {
    let scheme = scheme(url);
    // A new group per run: a Kafka group left behind by an earlier run cannot delay it.
    let group_name = format!("bench{}", uuid::Uuid::new_v4().simple());
    for (subs, group) in [(10u64, None), (4, Some(group_name.as_str()))] {
        let bus = fresh_bus(url).await;
        let published = if group.is_some() {
            n
        } else {
            (n / subs).max(1)
        };
        let deliveries = if group.is_some() { n } else { published * subs };
        let count = Countdown::new(deliveries);
        let mut handles = Vec::new();
        for _ in 0..subs {
            let mut opts = SubscribeOptions::new();
            if let Some(g) = group {
                opts = opts.group(g);
            }
            handles.push(
                bus.subscribe("bench.events", opts, count.handler())
                    .await
                    .unwrap(),
            );
        }
        let payload = payload();
        let meter = Meter::start();
        let mut sent = 0;
        while sent < published {
            let k = CHUNK.min(published - sent);
            bus.publish_batch((0..k).map(|_| Message::new("bench.events", payload.clone())))
                .await
                .unwrap();
            sent += k;
        }
        count.wait().await;
        let name = match group {
            None => format!("rust {scheme} fan-out to 10"),
            Some(_) => format!("rust {scheme} group of 4"),
        };
        meter.report(
            report_it.then_some(name.as_str()),
            deliveries,
            payload.len(),
        );
        drop(handles);
        bus.close().await.unwrap();
    }
}

/// The CloudEvents attributes polybus's wire carries (binary content mode), a fresh id each.
fn ce_attributes() -> [(&'static str, String); 4] {
    [
        ("specversion", "1.0".to_string()),
        ("id", uuid::Uuid::new_v4().hyphenated().to_string()),
        ("type", "bench.events".to_string()),
        ("time", "2026-12-07T13:30:00.123456Z".to_string()),
    ]
}

/// The same attributes as NATS headers (`ce-<name>`).
fn ce_nats_headers() -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    for (name, value) in ce_attributes() {
        h.insert(format!("ce-{name}").as_str(), value.as_str());
    }
    h
}

/// The NATS peer: async-nats directly, the way its documentation has a fast publisher (publish
/// without waiting, a flush per chunk) and one subscriber reading its stream; from the first
/// publish to the last message received. With `headers`, each message also carries the
/// CloudEvents headers polybus's wire does: the same client's cost of the same wire.
async fn nats_peer_case(url: &str, n: u64, headers: bool, name: Option<&str>) {
    let server = url.trim_start_matches("nats://");
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(512 * 1024)
        .connect(server)
        .await
        .unwrap();
    let subject = format!("bench{}.events", uuid::Uuid::new_v4().simple());
    let mut sub = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let payload = payload();
    let meter = Meter::start();
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            sub.next().await.unwrap();
            got += 1;
        }
    });
    let mut sent = 0;
    while sent < n {
        let k = CHUNK.min(n - sent);
        for _ in 0..k {
            if headers {
                client
                    .publish_with_headers(subject.clone(), ce_nats_headers(), payload.clone())
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
    meter.report(name, n, payload.len());
}

/// The JetStream peer: async-nats's JetStream context on a fresh stream. Pipelined: a chunk of
/// publishes, then their PubAcks; one at a time: each PubAck awaited before the next publish.
/// A pull consumer (explicit acks, 4,096 pending) acknowledges each message. With `headers`,
/// each message carries the `ce-` headers and `Nats-Msg-Id` (the event id), as polybus's do.
async fn jetstream_peer_case(url: &str, n: u64, mode: Mode, headers: bool, name: Option<&str>) {
    use async_nats::jetstream::{self, consumer::pull};
    let client = async_nats::connect(url.trim_start_matches("jetstream://"))
        .await
        .unwrap();
    let js = jetstream::new(client);
    let base = format!("bench{}", uuid::Uuid::new_v4().simple());
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: base.to_uppercase(),
            subjects: vec![format!("{base}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 4096,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(CHUNK as usize)
        .messages()
        .await
        .unwrap();
    let subject = format!("{base}.events");
    let payload = payload();
    let meter = Meter::start();
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            messages.next().await.unwrap().unwrap().ack().await.unwrap();
            got += 1;
        }
    });
    let publish = |js: &jetstream::Context| {
        let (js, subject, payload) = (js.clone(), subject.clone(), payload.clone());
        async move {
            if headers {
                let mut h = ce_nats_headers();
                let id = h.get("ce-id").unwrap().to_string();
                h.insert("Nats-Msg-Id", id.as_str());
                js.publish_with_headers(subject, h, payload).await.unwrap()
            } else {
                js.publish(subject, payload).await.unwrap()
            }
        }
    };
    let mut sent = 0;
    while sent < n {
        if mode == Mode::OneAtATime {
            publish(&js).await.await.unwrap();
            sent += 1;
            continue;
        }
        let k = CHUNK.min(n - sent);
        let mut acks = Vec::with_capacity(k as usize);
        for _ in 0..k {
            acks.push(publish(&js).await);
        }
        for ack in acks {
            ack.await.unwrap();
        }
        sent += k;
    }
    reader.await.unwrap();
    meter.report(name, n, payload.len());
    js.delete_stream(base.to_uppercase()).await.unwrap();
}

/// The Redis peer: redis-rs on a fresh stream and group. Pipelined: a chunk of XADDs in one
/// round trip; one at a time: each XADD awaited. The reader takes up to a chunk per XREADGROUP
/// and acknowledges what it read with one XACK. With `fields`, each entry carries polybus's
/// five fields (`payload` and the `ce_` attributes) instead of one.
async fn redis_peer_case(url: &str, n: u64, mode: Mode, fields: bool, name: Option<&str>) {
    use redis::{streams::StreamReadOptions, streams::StreamReadReply, AsyncCommands};
    let client = redis::Client::open(url).unwrap();
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    let mut reader_conn = client.get_multiplexed_async_connection().await.unwrap();
    // A chunk of 64 KiB entries is a 256 MiB pipeline: more than the default half second.
    for conn in [&mut publisher, &mut reader_conn] {
        conn.set_response_timeout(std::time::Duration::from_secs(60));
    }
    let stream = format!("bench{}:events", uuid::Uuid::new_v4().simple());
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("bench")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut publisher)
        .await
        .unwrap();
    let payload = payload();
    let xadd = |pipe: &mut redis::Pipeline| {
        let cmd = pipe.cmd("XADD").arg(&stream).arg("*");
        if fields {
            cmd.arg("payload").arg(&payload[..]);
            for (name, value) in ce_attributes() {
                cmd.arg(format!("ce_{name}")).arg(value);
            }
        } else {
            cmd.arg("data").arg(&payload[..]);
        }
        cmd.ignore();
    };
    let meter = Meter::start();
    let key = stream.clone();
    let reader = tokio::spawn(async move {
        let opts = StreamReadOptions::default()
            .group("bench", "c")
            .count(CHUNK as usize)
            .block(1000);
        let mut got = 0;
        while got < n {
            let reply: Option<StreamReadReply> = reader_conn
                .xread_options(&[&key], &[">"], &opts)
                .await
                .unwrap();
            let ids: Vec<String> = reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .map(|e| e.id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            let _: u64 = reader_conn.xack(&key, "bench", &ids).await.unwrap();
            got += ids.len() as u64;
        }
    });
    let mut sent = 0;
    while sent < n {
        let k = if mode == Mode::OneAtATime {
            1
        } else {
            CHUNK.min(n - sent)
        };
        let mut pipe = redis::pipe();
        for _ in 0..k {
            xadd(&mut pipe);
        }
        let _: () = pipe.query_async(&mut publisher).await.unwrap();
        sent += k;
    }
    reader.await.unwrap();
    meter.report(name, n, payload.len());
    let _: u64 = publisher.del(&stream).await.unwrap();
}

/// The Kafka peer: rdkafka directly (idempotent producer with acks=all, a consumer group reading
/// a fresh one-partition topic from the start). Pipelined: a chunk of sends, then their
/// deliveries; one at a time: each delivery awaited. With `headers`, each record carries the
/// `ce_` headers polybus's records do.
async fn kafka_peer_case(url: &str, n: u64, mode: Mode, headers: bool, name: Option<&str>) {
    use rdkafka::{
        admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
        consumer::{Consumer, StreamConsumer},
        message::{Header, OwnedHeaders},
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
    let payload = payload();
    let meter = Meter::start();
    let reader = async {
        let mut got = 0;
        while got < n {
            consumer.recv().await.unwrap();
            got += 1;
        }
    };
    let writer = async {
        let window = if mode == Mode::OneAtATime {
            1
        } else {
            CHUNK as usize
        };
        let mut pending = Vec::with_capacity(window);
        for _ in 0..n {
            let mut record = FutureRecord::<(), [u8]>::to(&topic).payload(&payload[..]);
            if headers {
                let mut h = OwnedHeaders::new_with_capacity(4);
                for (name, value) in ce_attributes() {
                    h = h.insert(Header {
                        key: &format!("ce_{name}"),
                        value: Some(&value),
                    });
                }
                record = record.headers(h);
            }
            match producer.send_result(record) {
                Ok(f) => pending.push(f),
                Err((e, _)) => panic!("{e}"),
            }
            if pending.len() == window {
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
    meter.report(name, n, payload.len());
}

/// The client crate under `url`'s backend used directly, plain and (pipelined only) on
/// polybus's wire, each after an unreported warm-up of a quarter.
async fn peer_cases(url: &str, n: u64, mode: Mode) {
    let single = mode == Mode::OneAtATime;
    // The one-at-a-time rows compare the round trips, on the plain wire only.
    let wires: &[bool] = if single { &[false] } else { &[false, true] };
    for &wire in wires {
        let Some(name) = peer_name(scheme(url), single, wire) else {
            continue;
        };
        for (count, name) in [((n / 4).max(1), None), (n, Some(name))] {
            match scheme(url) {
                "nats://" => nats_peer_case(url, count, wire, name).await,
                "jetstream://" => jetstream_peer_case(url, count, mode, wire, name).await,
                "redis://" => redis_peer_case(url, count, mode, wire, name).await,
                "kafka://" => kafka_peer_case(url, count, mode, wire, name).await,
                _ => {}
            }
        }
    }
}

/// The row of a Rust peer: its backend, whether it publishes one at a time, whether it sends
/// polybus's wire.
fn peer_name(scheme: &str, single: bool, wire: bool) -> Option<&'static str> {
    Some(match (scheme, single, wire) {
        ("nats://", false, false) => "nats:// async-nats used directly (peer)",
        ("nats://", false, true) => "nats:// async-nats with the ce- headers (peer)",
        ("jetstream://", false, false) => "jetstream:// async-nats jetstream (peer)",
        ("jetstream://", false, true) => {
            "jetstream:// async-nats jetstream with the ce- headers (peer)"
        }
        ("jetstream://", true, _) => {
            "jetstream:// async-nats jetstream publish one at a time (peer)"
        }
        ("redis://", false, false) => "redis:// redis-rs pipelined (peer)",
        ("redis://", false, true) => "redis:// redis-rs pipelined with the ce_ fields (peer)",
        ("redis://", true, _) => "redis:// redis-rs XADD one at a time (peer)",
        ("kafka://", false, false) => "kafka:// rdkafka used directly (peer)",
        ("kafka://", false, true) => "kafka:// rdkafka with the ce_ headers (peer)",
        ("kafka://", true, _) => "kafka:// rdkafka send one at a time (peer)",
        _ => return None,
    })
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

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and test listing: nothing to do
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = env("POLYBUS_BENCH_EVENTS", 2_000_000);
    let only = std::env::var("POLYBUS_BENCH_CASE").ok();
    let run = |case: &str| only.as_deref().is_none_or(|o| o == case);
    let urls = std::env::var("POLYBUS_BENCH_URL").unwrap_or_default();
    let urls: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let durable = |u: &&&str| ["jetstream://", "redis://", "kafka://"].contains(&scheme(u));
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
        let k = env("POLYBUS_BENCH_BROKER_EVENTS", 200_000);
        match only.as_deref() {
            Some("broker") => {
                for url in &urls {
                    let name = format!("rust {} publish_batch", scheme(url));
                    broker_case(url, (k / 4).max(1), Mode::Pipelined, None).await;
                    broker_case(url, k, Mode::Pipelined, Some(&name)).await;
                    peer_cases(url, k, Mode::Pipelined).await;
                }
            }
            Some("single") => {
                let k = env("POLYBUS_BENCH_SINGLE_EVENTS", 3_000);
                for url in urls.iter().filter(durable) {
                    let name = format!("rust {} publish one at a time", scheme(url));
                    broker_case(url, (k / 4).max(1), Mode::OneAtATime, None).await;
                    broker_case(url, k, Mode::OneAtATime, Some(&name)).await;
                    peer_cases(url, k, Mode::OneAtATime).await;
                }
            }
            Some("fanout") => {
                for url in &urls {
                    fanout_case(url, (k / 4).max(1), false).await;
                    fanout_case(url, k, true).await;
                }
            }
            Some("latency") => {
                let (rate, seconds) = (
                    env("POLYBUS_BENCH_LATENCY_RATE", 5_000),
                    env("POLYBUS_BENCH_LATENCY_SECONDS", 4),
                );
                for url in &urls {
                    latency_case(url, rate, seconds).await;
                    if url.starts_with("nats://") {
                        latency_nats_peer(url, rate, seconds).await;
                    }
                }
            }
            _ => {}
        }
    });
}
