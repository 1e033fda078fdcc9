//! Helpers shared by the broker test files.
#![allow(dead_code)] // each test file uses its own subset

use std::{path::PathBuf, process::Command, time::Duration};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `n` seconds, multiplied by `POLYBUS_TEST_TIMEOUT_SCALE` (default 1).
pub fn secs(n: u64) -> Duration {
    let scale: f64 = std::env::var("POLYBUS_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(n as f64 * scale)
}

/// Runs the broker harness (`tests/harness/brokers.sh`); panics with its output when it fails.
pub fn harness(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(root().join("tests/harness/brokers.sh"))
        .args(args)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "brokers.sh {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Publishes `0, 1, 2, …` on `topic` in chunks of `chunk` while the harness restarts `broker`:
/// a chunk starts before the restart, the restart runs while publishes are in flight, and two
/// more chunks follow it. A publish that is not confirmed is published again (at least once).
/// Returns how many distinct events were published, and panics unless at least one chunk was
/// in flight while the broker restarted (the test would otherwise restart between batches).
pub async fn publish_across_restart(
    bus: &polybus::Bus,
    topic: &str,
    broker: &'static str,
    chunk: usize,
) -> usize {
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc,
    };
    // 0 before the restart, 1 while it runs, 2 after it.
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(0usize);
    let publisher = {
        let (bus, topic) = (bus.clone(), topic.to_owned());
        let (phase, stop, during) = (phase.clone(), stop.clone(), during.clone());
        tokio::spawn(async move {
            let mut next = 0;
            while !stop.load(SeqCst) {
                let started = phase.load(SeqCst);
                publish_chunk(&bus, &topic, next..next + chunk).await;
                // In flight during the restart: started before it ended, ended after it began.
                if started <= 1 && phase.load(SeqCst) >= 1 {
                    during.fetch_add(1, SeqCst);
                }
                next += chunk;
                done_tx.send_replace(next);
            }
            next
        })
    };
    // One chunk confirmed: the stream flows. Then the restart, with a chunk in flight.
    let flowing = done_rx.wait_for(|&n| n >= chunk);
    tokio::time::timeout(secs(60), flowing)
        .await
        .expect("the first chunk was confirmed")
        .unwrap();
    phase.store(1, SeqCst);
    tokio::task::spawn_blocking(move || harness(&["restart", broker]))
        .await
        .unwrap();
    phase.store(2, SeqCst);
    let target = *done_rx.borrow() + 2 * chunk;
    let after = done_rx.wait_for(|&n| n >= target);
    tokio::time::timeout(secs(120), after)
        .await
        .expect("publishing went on after the restart")
        .unwrap();
    stop.store(true, SeqCst);
    let published = publisher.await.unwrap();
    assert!(
        during.load(SeqCst) > 0,
        "no publish was in flight while {broker} restarted"
    );
    published
}

/// Publishes `range` pipelined, then publishes again each one that was not confirmed.
async fn publish_chunk(bus: &polybus::Bus, topic: &str, range: std::ops::Range<usize>) {
    use polybus::{ErrorKind, Message};
    let mut pending = Vec::new();
    for i in range {
        let started = bus.publish_nowait(Message::new(topic, i.to_string()));
        pending.push((i, started));
    }
    for (i, started) in pending {
        let outcome = match started {
            Ok(None) => Ok(()),
            Ok(Some(p)) => p.wait().await,
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            assert!(
                matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
                "{e}"
            );
            // Until the broker is back: at least once.
            let deadline = std::time::Instant::now() + secs(120);
            loop {
                match bus.publish(Message::new(topic, i.to_string())).await {
                    Ok(()) => break,
                    Err(e) if std::time::Instant::now() < deadline => {
                        assert!(
                            matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
                            "{e}"
                        );
                        // A pause between attempts while the broker is down (not a sync).
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("publish {i}: {e}"),
                }
            }
        }
    }
}
