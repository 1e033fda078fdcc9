//! Events per second from publish to handler on `memory://`: 64-byte payloads, one publisher,
//! one subscriber, one process. Prints one JSON line per case. Run with
//! `cargo bench -p polybus --bench pubsub` (`POLYBUS_BENCH_EVENTS` sets the count).

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
    // POLYBUS_BENCH_CASE=publish|batch|peer runs one case (for profiling).
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
    });
}
