//! `redis://` and `redis+pubsub://` against real redis-server processes started by the broker
//! harness (`tests/harness/brokers.sh`). These tests fail, never skip, when the broker is
//! missing: start it with `eval "$(bash tests/harness/brokers.sh start redis)"`. The
//! authentication test starts the `redis-acl` server through the harness itself; the restart
//! test restarts the shared server, so it holds the broker lock exclusively.
#![cfg(feature = "redis")]

mod common;

use common::{harness, secs};

use std::{
    collections::HashSet,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use polybus::{Bus, Config, ErrorKind, Event, Message, RedisConfig, SubscribeOptions};

/// Tests that restart the shared broker take it exclusively; the others share it.
static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn redis_url() -> String {
    std::env::var("POLYBUS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".into())
}

/// `host` and `port` of the shared server, for redis-cli.
fn cli_addr() -> (String, String) {
    let url = redis_url();
    let hp = url.rsplit('@').next().unwrap_or(&url);
    let hp = hp.trim_start_matches("redis://").trim_end_matches('/');
    let (h, p) = hp.split_once(':').unwrap_or((hp, "6379"));
    (h.to_owned(), p.to_owned())
}

fn redis_cli(args: &[&str]) -> Vec<u8> {
    let (h, p) = cli_addr();
    let out = Command::new("redis-cli")
        .args(["-h", &h, "-p", &p, "--raw"])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn unique(tag: &str) -> String {
    format!(
        "t.{tag}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn config(prefix: &str, redis: RedisConfig) -> Config {
    Config::new(redis_url()).prefix(prefix).redis(redis)
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
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_and_the_right_one_works() {
    let _shared = BROKER.read().await;
    let out = harness(&["start", "redis-acl"]);
    let base = out
        .lines()
        .find_map(|l| l.strip_prefix("export POLYBUS_TEST_REDIS_ACL_URL="))
        .expect("the harness prints the ACL server's URL")
        .to_owned();
    let wrong = base.replacen("redis://", "redis://polybus:wrong@", 1);
    let e = Bus::connect(Config::new(&wrong)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("credentials"), "{e}");
    assert!(
        !e.to_string().contains("wrong"),
        "the password is not shown: {e}"
    );
    // No credentials at all: the default user is disabled.
    let e = Bus::connect(Config::new(&base)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");

    let cfg = Config::new(&base).prefix(unique("acl")).redis(RedisConfig {
        username: Some("polybus".into()),
        password: Some("secret".into()),
        ..RedisConfig::default()
    });
    let bus = Bus::connect(cfg).await.unwrap();
    let seen = Seen::default();
    let _sub = bus
        .subscribe("acl.ok", SubscribeOptions::new(), seen.handler())
        .await
        .unwrap();
    bus.publish(Message::new("acl.ok", "hi")).await.unwrap();
    assert_eq!(seen.wait(1, secs(10)).await.len(), 1);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn tls_with_the_harness_ca_works_and_an_untrusted_server_is_refused() {
    let out = harness(&["start", "redis-tls"]);
    let var = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("the harness prints {name}"))
            .to_owned()
    };
    let (url, dir) = (
        var("POLYBUS_TEST_REDIS_TLS_URL"),
        var("POLYBUS_TEST_REDIS_TLS_DIR"),
    );
    let file = |f: &str| Some(format!("{dir}/{f}"));
    // Server authentication with the CA, then mutual TLS with a client certificate.
    for client_cert in [false, true] {
        let redis = RedisConfig {
            tls_ca: file("ca.crt"),
            tls_cert: client_cert.then(|| format!("{dir}/client.crt")),
            tls_key: client_cert.then(|| format!("{dir}/client.key")),
            ..RedisConfig::default()
        };
        let bus = Bus::connect(Config::new(&url).prefix(unique("tls")).redis(redis))
            .await
            .unwrap();
        let seen = Seen::default();
        let _sub = bus
            .subscribe("tls.ok", SubscribeOptions::new(), seen.handler())
            .await
            .unwrap();
        bus.publish(Message::new("tls.ok", "secret payload"))
            .await
            .unwrap();
        let got = seen.wait(1, secs(10)).await;
        assert_eq!(got.len(), 1, "client certificate: {client_cert}");
        assert_eq!(got[0].payload().as_ref(), b"secret payload");
        bus.close().await.unwrap();
    }
    // Without the CA the server's certificate is not trusted: a clear error, not a hang.
    let started = Instant::now();
    let e = Bus::connect(Config::new(&url).connect_timeout(Duration::from_secs(3)))
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{e}"
    );
    // Generous for a loaded runner; a connect that ignored the timeout would still fail it.
    assert!(started.elapsed() < Duration::from_secs(11), "{e}");
    // A plain connection to the TLS port fails too.
    let plain = url.replacen("rediss://", "redis://", 1);
    let e = Bus::connect(Config::new(&plain).connect_timeout(Duration::from_secs(3)))
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{e}"
    );
}

/// The node (port) of the cluster that holds `key`: the one that answers `EXISTS` without
/// redirecting.
fn cluster_node_of(ports: &[String], key: &str) -> Option<String> {
    ports.iter().find_map(|p| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", p, "--raw", "EXISTS", key])
            .output()
            .ok()?;
        (String::from_utf8_lossy(&out.stdout).trim() == "1").then(|| p.clone())
    })
}

/// Starts the harness's cluster (if it is not running): its URL and its nodes' ports.
fn start_cluster() -> (String, Vec<String>) {
    let out = harness(&["start", "redis-cluster"]);
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("export POLYBUS_TEST_REDIS_CLUSTER_URL="))
        .expect("the harness prints the cluster's URL")
        .to_owned();
    let ports: Vec<String> = url
        .trim_start_matches("redis+cluster://")
        .split(',')
        .map(|hp| hp.rsplit(':').next().unwrap().to_owned())
        .collect();
    (url, ports)
}

#[tokio::test]
async fn a_redis_cluster_carries_wildcards_across_nodes_and_shares_a_group() {
    let (url, ports) = start_cluster();
    let prefix = unique("cluster");
    let cfg = || Config::new(&url).prefix(&prefix);
    let a = Bus::connect(cfg()).await.unwrap();
    let b = Bus::connect(cfg()).await.unwrap();
    // A wildcard subscriber, and a group of two members on the same pattern.
    let all = Seen::default();
    let _all = a
        .subscribe("w.*", SubscribeOptions::new(), all.handler())
        .await
        .unwrap();
    let (ga, gb) = (Seen::default(), Seen::default());
    let opts = || SubscribeOptions::new().group("workers");
    let _ga = a.subscribe("w.*", opts(), ga.handler()).await.unwrap();
    let _gb = b.subscribe("w.*", opts(), gb.handler()).await.unwrap();
    let topics: Vec<String> = (0..12).map(|i| format!("w.t{i}")).collect();
    for round in 0..10 {
        for t in &topics {
            a.publish(Message::new(t.as_str(), format!("{t}/{round}")))
                .await
                .unwrap();
        }
    }
    // The streams live on more than one node.
    let nodes: HashSet<String> = topics
        .iter()
        .filter_map(|t| cluster_node_of(&ports, &format!("{prefix}.{t}")))
        .collect();
    assert!(nodes.len() >= 2, "all streams on {nodes:?}");
    let got = all.wait(120, secs(20)).await;
    assert_eq!(got.len(), 120);
    for t in &topics {
        let rounds: Vec<String> = got
            .iter()
            .filter(|e| e.topic() == t)
            .map(|e| String::from_utf8_lossy(e.payload()).into_owned())
            .collect();
        let want: Vec<String> = (0..10).map(|r| format!("{t}/{r}")).collect();
        assert_eq!(rounds, want, "{t} out of order");
    }
    // The group handles each event once, between its members.
    let deadline = Instant::now() + secs(20);
    while ga.0.lock().len() + gb.0.lock().len() < 120 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let handled: Vec<String> =
        ga.0.lock()
            .iter()
            .chain(gb.0.lock().iter())
            .map(|e| String::from_utf8_lossy(e.payload()).into_owned())
            .collect();
    assert_eq!(handled.len(), 120);
    assert_eq!(
        handled.iter().collect::<HashSet<_>>().len(),
        120,
        "handled twice"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A pipelined batch on a cluster is stored in publish order, per stream (once it was not:
/// XRANGE showed `0, 26, 27, ...`).
#[tokio::test]
async fn a_batch_on_a_redis_cluster_is_stored_in_publish_order() {
    let (url, ports) = start_cluster();
    let prefix = unique("clusterorder");
    let bus = Bus::connect(Config::new(&url).prefix(&prefix))
        .await
        .unwrap();
    let topics = ["o.a", "o.b", "o.c"];
    let n = 1000;
    let published = bus
        .publish_batch((0..n).map(|i| Message::new(topics[i % 3], format!("{i}"))))
        .await
        .unwrap();
    assert_eq!(published, n);
    for t in topics {
        let key = format!("{prefix}.{t}");
        let port = cluster_node_of(&ports, &key).expect("the stream exists");
        let out = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "--raw",
                "XRANGE",
                &key,
                "-",
                "+",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        // Each entry: id, then field/value pairs; the payload follows the "payload" field.
        let got: Vec<usize> = lines
            .windows(2)
            .filter(|w| w[0] == "payload")
            .map(|w| w[1].parse().unwrap())
            .collect();
        let want: Vec<usize> = (0..n).filter(|i| topics[i % 3] == t).collect();
        assert_eq!(got, want, "{t} stored out of order");
    }
    bus.close().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_fails_clearly_within_the_connect_timeout() {
    let started = Instant::now();
    let cfg = Config::new("redis://127.0.0.1:1").connect_timeout(Duration::from_secs(2));
    let e = Bus::connect(cfg).await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{e}"
    );
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    // Generous for a loaded runner; a connect that ignored the timeout would still fail it.
    assert!(started.elapsed() < Duration::from_secs(9), "{e}");
}

#[tokio::test]
async fn wildcards_on_streams_find_new_topics() {
    let _shared = BROKER.read().await;
    let prefix = unique("wild");
    let bus = Bus::connect(config(
        &prefix,
        RedisConfig {
            scan_interval_ms: 100,
            ..RedisConfig::default()
        },
    ))
    .await
    .unwrap();
    let seen = Seen::default();
    let _sub = bus
        .subscribe("orders.*", SubscribeOptions::new(), seen.handler())
        .await
        .unwrap();
    for t in ["orders.created", "orders.created.eu", "orders.paid"] {
        bus.publish(Message::new(t, t)).await.unwrap();
    }
    let got = seen.wait(2, secs(10)).await;
    let mut topics: Vec<String> = got.iter().map(|e| e.topic().to_owned()).collect();
    topics.sort();
    assert_eq!(topics, ["orders.created", "orders.paid"]);
    bus.close().await.unwrap();
}

#[test]
fn a_dead_group_member_s_events_are_reclaimed_by_another() {
    let prefix = unique("claim");
    let redis = RedisConfig {
        claim_idle_ms: 1_000,
        block_ms: 200,
        ..RedisConfig::default()
    };
    let opts = SubscribeOptions::new().group("workers");
    // Member A, in a "process" of its own: it takes the event and never finishes it.
    let dying = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (took_tx, took_rx) = std::sync::mpsc::channel::<String>();
    let bus_a = dying.block_on(async {
        let bus = Bus::connect(config(&prefix, redis.clone())).await.unwrap();
        let took = Mutex::new(took_tx);
        let sub = bus
            .subscribe("jobs.run", opts.clone(), move |e: Event| {
                let _ = took.lock().send(e.id().to_owned());
                futures::future::pending::<Result<(), String>>()
            })
            .await
            .unwrap();
        bus.publish(Message::new("jobs.run", "work").id("job-1"))
            .await
            .unwrap();
        (bus, sub)
    });
    assert_eq!(took_rx.recv_timeout(secs(10)).unwrap(), "job-1");
    // A dies: its tasks and connections are gone, its event stays pending on the server.
    drop(bus_a);
    dying.shutdown_background();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _shared = BROKER.read().await;
        let bus = Bus::connect(config(&prefix, redis)).await.unwrap();
        let seen = Seen::default();
        let _sub = bus
            .subscribe("jobs.run", opts, seen.handler())
            .await
            .unwrap();
        let got = seen.wait(1, secs(15)).await;
        assert_eq!(
            got.len(),
            1,
            "member B reclaims the event after claim_idle_ms"
        );
        assert_eq!(got[0].id(), "job-1");
        assert_eq!(got[0].attempt(), 2, "the broker's delivery count");
        bus.close().await.unwrap();
        // Acknowledged: nothing is pending in the group any more.
        let key = format!("{prefix}.jobs.run");
        let pending = redis_cli(&["XPENDING", &key, "workers"]);
        assert!(
            String::from_utf8_lossy(&pending).starts_with('0'),
            "{}",
            String::from_utf8_lossy(&pending)
        );
    });
}

#[tokio::test]
async fn a_server_restart_mid_stream_loses_no_event() {
    let _exclusive = BROKER.write().await;
    let prefix = unique("restart");
    let bus = Bus::connect(config(&prefix, RedisConfig::default()))
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
    let n = common::publish_across_restart(&bus, "orders.created", "redis", 50).await;
    let deadline = Instant::now() + secs(30);
    let distinct = loop {
        let got: HashSet<String> = seen
            .0
            .lock()
            .iter()
            .map(|e| String::from_utf8_lossy(e.payload()).into_owned())
            .collect();
        if got.len() >= n || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let missing: Vec<usize> = (0..n)
        .filter(|i| !distinct.contains(&i.to_string()))
        .collect();
    assert!(missing.is_empty(), "lost across the restart: {missing:?}");
    bus.close().await.unwrap();
}

#[tokio::test]
async fn plain_clients_read_and_write_the_documented_stream_fields() {
    let _shared = BROKER.read().await;
    let prefix = unique("wire");
    let bus = Bus::connect(config(&prefix, RedisConfig::default()).name("svc"))
        .await
        .unwrap();
    let seen = Seen::default();
    let _sub = bus
        .subscribe("orders.created", SubscribeOptions::new(), seen.handler())
        .await
        .unwrap();
    let key = format!("{prefix}.orders.created");

    // redis-cli writes an event in the documented format.
    redis_cli(&[
        "XADD",
        &key,
        "*",
        "payload",
        "{\"id\":7}",
        "ce_specversion",
        "1.0",
        "ce_id",
        "from-cli",
        "ce_type",
        "order.created",
        "ce_source",
        "cli",
        "ce_time",
        "2024-05-01T12:00:00.123456Z",
        "ce_partitionkey",
        "order-7",
        "h:tenant",
        "acme",
    ]);
    let got = seen.wait(1, secs(10)).await;
    assert_eq!(got.len(), 1);
    let e = &got[0];
    assert_eq!(e.payload().as_ref(), b"{\"id\":7}");
    assert_eq!(e.id(), "from-cli");
    assert_eq!(e.event_type(), "order.created");
    assert_eq!(e.source(), Some("cli"));
    assert_eq!(e.key(), Some("order-7"));
    assert_eq!(e.headers().get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(
        e.time(),
        std::time::UNIX_EPOCH + Duration::new(1_714_564_800, 123_456_000)
    );
    assert_eq!(e.attempt(), 1);

    // polybus writes an event redis-cli reads, the payload byte for byte.
    let payload = "{\"total\": 12.5, \"note\": \"d\u{e9}j\u{e0} vu\"}";
    bus.publish(
        Message::new("orders.created", payload)
            .key("order-8")
            .id("from-polybus")
            .header("tenant", "acme"),
    )
    .await
    .unwrap();
    let out = redis_cli(&["XRANGE", &key, "-", "+"]);
    let lines: Vec<&[u8]> = out.split(|b| *b == b'\n').collect();
    let field = |name: &str, skip: usize| -> Vec<u8> {
        let mut found = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == name.as_bytes())
            .map(|(i, _)| lines[i + 1].to_vec());
        found.nth(skip).unwrap_or_default()
    };
    assert_eq!(field("payload", 1), payload.as_bytes());
    assert_eq!(field("ce_id", 1), b"from-polybus");
    assert_eq!(field("ce_partitionkey", 1), b"order-8");
    assert_eq!(field("ce_source", 1), b"svc");
    assert_eq!(field("ce_type", 1), b"orders.created");
    assert_eq!(field("h:tenant", 1), b"acme");
    bus.close().await.unwrap();
}

#[tokio::test]
async fn pubsub_envelopes_are_cloudevents_json() {
    let _shared = BROKER.read().await;
    let prefix = unique("ps");
    let url = redis_url().replacen("redis://", "redis+pubsub://", 1);
    let bus = Bus::connect(Config::new(url).prefix(&prefix))
        .await
        .unwrap();
    let seen = Seen::default();
    let _sub = bus
        .subscribe("orders.>", SubscribeOptions::new(), seen.handler())
        .await
        .unwrap();
    // A plain client publishes a structured-mode CloudEvent with a binary payload.
    let (h, p) = cli_addr();
    let out = Command::new("redis-cli")
        .args(["-h", &h, "-p", &p, "PUBLISH"])
        .arg(format!("{prefix}.orders.eu.created"))
        .arg(r#"{"specversion":"1.0","id":"x1","type":"t","source":"cli","data_base64":"AP8="}"#)
        .output()
        .unwrap();
    assert!(out.status.success());
    bus.publish(Message::new("orders.paid", "{\"ok\":true}"))
        .await
        .unwrap();
    let got = seen.wait(2, secs(10)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].topic(), "orders.eu.created");
    assert_eq!(got[0].payload().as_ref(), b"\x00\xff");
    assert_eq!(got[0].id(), "x1");
    assert_eq!(got[1].payload().as_ref(), b"{\"ok\":true}");
    // Groups do not exist in Pub/Sub: refused at subscribe time.
    let e = bus
        .subscribe(
            "orders.paid",
            SubscribeOptions::new().group("g"),
            seen.handler(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    bus.close().await.unwrap();
}

/// A publish the transport took at once is confirmed by whoever waits on it; one nobody waits
/// for any more (its `PendingPublish` dropped) is still seen through and counted, and stored.
#[tokio::test]
async fn a_dropped_pending_publish_is_still_confirmed_and_counted() {
    let _shared = BROKER.read().await;
    let prefix = unique("drop");
    let bus = Bus::connect(config(&prefix, RedisConfig::default()))
        .await
        .unwrap();
    let seen = Seen::default();
    let _sub = bus
        .subscribe("orders.created", SubscribeOptions::new(), seen.handler())
        .await
        .unwrap();
    let waited = bus
        .publish_nowait(Message::new("orders.created", "waited"))
        .unwrap()
        .expect("a Redis Streams publish waits for its XADD reply");
    let dropped = bus
        .publish_nowait(Message::new("orders.created", "dropped"))
        .unwrap()
        .expect("a Redis Streams publish waits for its XADD reply");
    drop(dropped);
    waited.wait().await.unwrap();
    let got = seen.wait(2, secs(10)).await;
    let mut payloads: Vec<String> = got
        .iter()
        .map(|e| String::from_utf8_lossy(e.payload()).into_owned())
        .collect();
    payloads.sort();
    assert_eq!(payloads, ["dropped", "waited"]);
    let deadline = Instant::now() + secs(10);
    while bus.stats().published < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        bus.stats().published,
        2,
        "the dropped publish is counted once confirmed"
    );
    bus.close().await.unwrap();
}
