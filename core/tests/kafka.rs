//! `kafka://` against a real Apache Kafka broker (KRaft) started by the broker harness
//! (`tests/harness/kafka.sh`, through `brokers.sh`). These tests fail, never skip, when the
//! broker is missing: start it with `eval "$(bash tests/harness/brokers.sh start kafka)"`. The
//! restart test restarts the shared broker, so it holds the broker lock exclusively.
#![cfg(feature = "kafka")]

mod common;

use common::{root, secs};

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use polybus::{Bus, Config, ErrorKind, Event, KafkaConfig, Message, SubscribeOptions};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    topic_partition_list::{Offset, TopicPartitionList},
    ClientConfig,
};

/// Tests that restart the shared broker take it exclusively; the others share it.
static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn kafka_url() -> String {
    std::env::var("POLYBUS_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

fn sasl_url() -> String {
    std::env::var("POLYBUS_TEST_KAFKA_SASL_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9093".into())
}

fn bootstrap() -> String {
    kafka_url().trim_start_matches("kafka://").to_owned()
}

fn unique(tag: &str) -> String {
    format!("t{tag}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn config(prefix: &str, kafka: KafkaConfig) -> Config {
    Config::new(kafka_url()).prefix(prefix).kafka(kafka)
}

/// Runs the plain Kafka client of the harness (`tests/harness/kafka/Interop.java`, kafka-clients
/// from the broker's own jars).
fn interop(args: &[&str]) -> String {
    let libs = std::env::var("POLYBUS_KAFKA_LIBS")
        .unwrap_or_else(|_| root().join("build/kafka/libs").display().to_string());
    let out = Command::new("bash")
        .arg(root().join("tests/harness/kafka/interop.sh"))
        .args(args)
        .env("POLYBUS_KAFKA_LIBS", libs)
        .output()
        .expect("the interop client runs");
    assert!(
        out.status.success(),
        "Interop {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Collects events.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Event>>>);

impl Seen {
    fn handler(&self) -> impl Fn(Event) -> futures::future::Ready<Result<(), String>> + Clone {
        let me = self.clone();
        move |e: Event| {
            me.0.lock().push(e);
            futures::future::ready(Ok(()))
        }
    }

    fn payloads(&self) -> HashSet<String> {
        self.0
            .lock()
            .iter()
            .map(|e| String::from_utf8_lossy(e.payload()).into_owned())
            .collect()
    }

    async fn wait(&self, n: usize, limit: Duration) -> Vec<Event> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.0.lock().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_distinct(&self, n: usize, limit: Duration) -> HashSet<String> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.payloads();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The offsets a group committed on partition 0 of `topic`.
fn committed(group: &str, topic: &str) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
    match got.find_partition(topic, 0)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

fn missing(seen: &HashSet<String>, n: usize) -> Vec<usize> {
    (0..n).filter(|i| !seen.contains(&i.to_string())).collect()
}

#[tokio::test]
async fn sasl_plain_and_scram_work_and_a_wrong_password_is_an_auth_error() {
    let _shared = BROKER.read().await;
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let kafka = |password: &str| KafkaConfig {
            sasl_mechanism: Some(mechanism.into()),
            username: Some("polybus".into()),
            password: Some(password.into()),
            ..KafkaConfig::default()
        };
        let cfg = |password: &str| {
            Config::new(sasl_url())
                .connect_timeout(Duration::from_secs(5))
                .kafka(kafka(password))
        };
        let e = Bus::connect(cfg("wrong")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Auth, "{mechanism}: {e}");
        assert!(
            e.to_string().to_lowercase().contains("authentication"),
            "{mechanism}: {e}"
        );
        assert!(
            !e.to_string().contains("wrong"),
            "the password is not shown: {e}"
        );

        let bus = Bus::connect(cfg("secret").prefix(unique("sasl")))
            .await
            .unwrap();
        let seen = Seen::default();
        let _sub = bus
            .subscribe("sasl.ok", SubscribeOptions::new(), seen.handler())
            .await
            .unwrap();
        bus.publish(Message::new("sasl.ok", mechanism))
            .await
            .unwrap();
        let got = seen.wait(1, secs(15)).await;
        assert_eq!(got.len(), 1, "{mechanism}");
        assert_eq!(got[0].payload().as_ref(), mechanism.as_bytes());
        bus.close().await.unwrap();
    }
    // The SASL listener without credentials: a clear error, in bounded time.
    let started = Instant::now();
    let e = Bus::connect(Config::new(sasl_url()).connect_timeout(Duration::from_secs(3)))
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Connection | ErrorKind::Auth),
        "{e}"
    );
    // Generous for a loaded runner; a connect that ignored the timeout would still fail it.
    assert!(started.elapsed() < Duration::from_secs(11), "{e}");
}

#[tokio::test]
async fn tls_with_the_harness_ca_works_and_an_untrusted_broker_is_refused() {
    let _shared = BROKER.read().await;
    let url = std::env::var("POLYBUS_TEST_KAFKA_SSL_URL")
        .unwrap_or_else(|_| "kafka://127.0.0.1:9095".into());
    let dir = std::env::var("POLYBUS_TEST_KAFKA_TLS_DIR")
        .unwrap_or_else(|_| root().join("build/brokers/kafka/tls").display().to_string());
    for client_cert in [false, true] {
        let kafka = KafkaConfig {
            tls_ca: Some(format!("{dir}/ca.crt")),
            tls_cert: client_cert.then(|| format!("{dir}/client.crt")),
            tls_key: client_cert.then(|| format!("{dir}/client.key")),
            ..KafkaConfig::default()
        };
        let bus = Bus::connect(Config::new(&url).prefix(unique("tls")).kafka(kafka))
            .await
            .unwrap();
        let seen = Seen::default();
        let _sub = bus
            .subscribe("tls.ok", SubscribeOptions::new(), seen.handler())
            .await
            .unwrap();
        bus.publish(Message::new("tls.ok", "over tls"))
            .await
            .unwrap();
        let got = seen.wait(1, secs(15)).await;
        assert_eq!(got.len(), 1, "client certificate: {client_cert}");
        assert_eq!(got[0].payload().as_ref(), b"over tls");
        bus.close().await.unwrap();
    }
    // Without the CA the broker's certificate is not trusted: a clear error naming SSL, well
    // within a connect timeout generous enough for a loaded machine (3 s was not: the bus's
    // own timeout fired first, before librdkafka's handshake error, on a busy 2-core runner).
    let e = Bus::connect(
        Config::new(&url)
            .connect_timeout(Duration::from_secs(20))
            .kafka(KafkaConfig {
                security_protocol: Some("ssl".into()),
                ..KafkaConfig::default()
            }),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{e}"
    );
    assert!(
        e.to_string().contains("SSL") || e.to_string().contains("ssl"),
        "{e}"
    );
}

#[tokio::test]
async fn an_unreachable_broker_fails_clearly_within_the_connect_timeout() {
    let started = Instant::now();
    let cfg = Config::new("kafka://127.0.0.1:1").connect_timeout(Duration::from_secs(2));
    let e = Bus::connect(cfg).await.unwrap_err();
    // Connection when librdkafka's refusal arrives first; on a loaded runner the bus's own
    // timeout may come first: both name the server.
    assert!(
        matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{e}"
    );
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    // Generous for a loaded runner; a connect that ignored the timeout would still fail it.
    assert!(started.elapsed() < Duration::from_secs(9), "{e}");
}

#[tokio::test]
async fn bad_config_and_topic_names_are_clear_errors() {
    let _shared = BROKER.read().await;
    let e = Config::parse(r#"{"url":"kafka://127.0.0.1:9092","kafka":{"compression":"brotli"}}"#)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("kafka.compression"), "{e}");
    // A URL without servers is refused when connecting.
    let e = Bus::connect(Config::new("kafka://")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    // Kafka topic names are at most 249 characters, prefix included.
    let bus = Bus::connect(config(&"p".repeat(200), KafkaConfig::default()))
        .await
        .unwrap();
    let long = "t".repeat(60);
    let e = bus
        .publish(Message::new(long.as_str(), "x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidTopic, "{e}");
    assert!(e.to_string().contains("249"), "{e}");
    bus.close().await.unwrap();
}

#[tokio::test]
async fn topics_are_created_with_the_configured_partitions_and_keys_keep_their_order() {
    let _shared = BROKER.read().await;
    let prefix = unique("parts");
    let bus = Bus::connect(config(
        &prefix,
        KafkaConfig {
            partitions: 4,
            ..KafkaConfig::default()
        },
    ))
    .await
    .unwrap();
    let seen = Seen::default();
    let _sub = bus
        .subscribe(
            "orders.created",
            SubscribeOptions::new().concurrency(8),
            seen.handler(),
        )
        .await
        .unwrap();
    let md: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let topic = format!("{prefix}.orders.created");
    let meta = md
        .fetch_metadata(Some(&topic), Duration::from_secs(5))
        .unwrap();
    assert_eq!(meta.topics()[0].partitions().len(), 4);
    let keys = ["a", "b", "c", "d", "e", "f"];
    let mut pending = Vec::new();
    for i in 0..300 {
        pending.push(
            bus.publish_nowait(Message::new("orders.created", i.to_string()).key(keys[i % 6]))
                .unwrap(),
        );
    }
    for p in pending.into_iter().flatten() {
        p.wait().await.unwrap();
    }
    let got = seen.wait(300, secs(20)).await;
    assert_eq!(got.len(), 300);
    let mut per_key: HashMap<String, Vec<usize>> = HashMap::new();
    for e in &got {
        per_key
            .entry(e.key().unwrap().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(e.payload()).parse().unwrap());
    }
    for (k, v) in per_key {
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(v, sorted, "key {k} out of order");
    }
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_commit_never_passes_an_event_still_in_flight() {
    let _shared = BROKER.read().await;
    let prefix = unique("frontier");
    let group = unique("g");
    let bus = Bus::connect(config(
        &prefix,
        KafkaConfig {
            commit_interval_ms: 100,
            ..KafkaConfig::default()
        },
    ))
    .await
    .unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let done = Seen::default();
    let handler = {
        let (release, done) = (release.clone(), done.clone());
        move |e: Event| {
            let (release, done) = (release.clone(), done.clone());
            async move {
                if e.payload().as_ref() == b"5" {
                    release.notified().await;
                }
                done.0.lock().push(e);
                Ok::<(), String>(())
            }
        }
    };
    let _sub = bus
        .subscribe(
            "jobs",
            // One event per batch: each is settled as soon as its handler returns.
            SubscribeOptions::new()
                .group(group.clone())
                .concurrency(4)
                .batch_size(1),
            handler,
        )
        .await
        .unwrap();
    // One at a time: each event after #5 finds the other lanes idle, so it passes #5.
    for i in 0..20usize {
        bus.publish(Message::new("jobs", i.to_string()))
            .await
            .unwrap();
        if i != 5 {
            let want = if i < 5 { i + 1 } else { i };
            assert_eq!(done.wait(want, secs(20)).await.len(), want, "event {i}");
        }
    }
    let topic = format!("{prefix}.jobs");
    // Events after #5 are handled, #5 is not: the commit stops at #5's offset (5).
    let deadline = Instant::now() + secs(10);
    while committed(&group, &topic) != Some(5) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(committed(&group, &topic), Some(5));
    // ... and stays there over several commit intervals.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(committed(&group, &topic), Some(5));
    release.notify_one();
    assert_eq!(done.wait(20, secs(10)).await.len(), 20);
    let deadline = Instant::now() + secs(10);
    while committed(&group, &topic) != Some(20) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(committed(&group, &topic), Some(20));
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_group_member_leaving_mid_stream_loses_no_event() {
    let _shared = BROKER.read().await;
    let prefix = unique("leave");
    let kafka = KafkaConfig {
        partitions: 4,
        commit_interval_ms: 200,
        ..KafkaConfig::default()
    };
    let bus_a = Bus::connect(config(&prefix, kafka.clone())).await.unwrap();
    let bus_b = Bus::connect(config(&prefix, kafka)).await.unwrap();
    let seen = Seen::default();
    // Events handled by member a (0) and member b (1).
    let by_member: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
    let slow = |member: usize| {
        let (seen, by_member) = (seen.clone(), by_member.clone());
        move |e: Event| {
            let (seen, by_member) = (seen.clone(), by_member.clone());
            async move {
                // The workload of a slow handler (not a synchronisation).
                tokio::time::sleep(Duration::from_millis(2)).await;
                by_member[member].fetch_add(1, Ordering::SeqCst);
                seen.0.lock().push(e);
                Ok::<(), String>(())
            }
        }
    };
    let opts = || SubscribeOptions::new().group("workers").concurrency(2);
    let sub_a = bus_a.subscribe("work", opts(), slow(0)).await.unwrap();
    let _sub_b = bus_b.subscribe("work", opts(), slow(1)).await.unwrap();
    let n = 2000;
    for i in 0..n {
        bus_a
            .publish_nowait(Message::new("work", i.to_string()).key(format!("k{}", i % 64)))
            .unwrap();
        if i == n / 4 {
            // Member a leaves while events are in flight.
            let seen = seen.clone();
            let deadline = Instant::now() + secs(10);
            let shared = || seen.0.lock().len() >= n / 8 && by_member[0].load(Ordering::SeqCst) > 0;
            while !shared() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The precondition: the group was sharing the work, and a had some of it.
            assert!(
                seen.0.lock().len() >= n / 8,
                "the group did not start in time"
            );
            assert!(
                by_member[0].load(Ordering::SeqCst) > 0,
                "member a handled nothing before leaving"
            );
            sub_a.close().await.unwrap();
        }
    }
    let got = seen.wait_distinct(n, secs(60)).await;
    assert!(missing(&got, n).is_empty(), "lost: {:?}", missing(&got, n));
    let after_leave = by_member[1].load(Ordering::SeqCst);
    assert!(after_leave > 0, "member b took over nothing");
    bus_a.close().await.unwrap();
    bus_b.close().await.unwrap();
}

#[tokio::test]
async fn a_broker_restart_mid_stream_loses_no_event() {
    let _exclusive = BROKER.write().await;
    let prefix = unique("restart");
    let bus = Bus::connect(
        config(&prefix, KafkaConfig::default()).publish_timeout(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let seen = Seen::default();
    let _sub = bus
        .subscribe(
            "orders.created",
            SubscribeOptions::new().group("billing"),
            seen.handler(),
        )
        .await
        .unwrap();
    let n = common::publish_across_restart(&bus, "orders.created", "kafka", 2_000).await;
    let got = seen.wait_distinct(n, secs(90)).await;
    let lost = missing(&got, n);
    assert!(
        lost.is_empty(),
        "lost across the restart: {} events, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_plain_kafka_client_reads_and_writes_polybus_events() {
    let _shared = BROKER.read().await;
    let prefix = unique("interop");
    let bus = Bus::connect(config(&prefix, KafkaConfig::default()).name("interop-test"))
        .await
        .unwrap();
    // polybus -> plain consumer: the payload byte for byte, the key, the ce_ headers.
    let payload: Vec<u8> = (0u8..=255).collect();
    bus.publish(
        Message::new("orders.created", payload.clone())
            .key("order-7")
            .header("tenant", "acme")
            .id("evt-1")
            .event_type("order.created"),
    )
    .await
    .unwrap();
    let topic = format!("{prefix}.orders.created");
    let out = interop(&["consume", &bootstrap(), &topic, "1", "20000"]);
    let rec: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(rec["value_hex"], hex.as_str());
    assert_eq!(rec["key"], "order-7");
    let h = &rec["headers"];
    assert_eq!(h["ce_id"], "evt-1");
    assert_eq!(h["ce_type"], "order.created");
    assert_eq!(h["ce_specversion"], "1.0");
    assert_eq!(h["ce_source"], "interop-test");
    assert!(h["ce_time"].as_str().unwrap().ends_with('Z'), "{h}");
    assert_eq!(h["tenant"], "acme");

    // plain producer -> polybus handler.
    let seen = Seen::default();
    let _sub = bus
        .subscribe("plain.in", SubscribeOptions::new(), seen.handler())
        .await
        .unwrap();
    let plain = format!("{prefix}.plain.in");
    interop(&[
        "produce",
        &bootstrap(),
        &plain,
        "k-1",
        "00ff10",
        "ce_id=plain-1",
        "ce_type=plain.type",
        "origin=java",
    ]);
    let got = seen.wait(1, secs(15)).await;
    assert_eq!(got.len(), 1);
    let e = &got[0];
    assert_eq!(e.payload().as_ref(), &[0x00, 0xff, 0x10]);
    assert_eq!(e.key(), Some("k-1"));
    assert_eq!(e.id(), "plain-1");
    assert_eq!(e.event_type(), "plain.type");
    assert_eq!(e.topic(), "plain.in");
    assert_eq!(e.headers()["origin"], "java");
    bus.close().await.unwrap();
}
