//! Behaviour of the bus beyond the shared conformance scenarios.

use std::{sync::Arc, time::Duration};

use polybus::{
    Batch, BatchSubscription, Bus, Config, DeliveryQueue, ErrorKind, Event, Message,
    SubscribeOptions,
};
use tokio::sync::{mpsc, Semaphore};

const WAIT: Duration = Duration::from_secs(10);

async fn next(sub: &BatchSubscription) -> Batch {
    let batch = tokio::time::timeout(WAIT, sub.next_batch())
        .await
        .expect("timed out");
    batch.expect("subscription ended")
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out")
        .expect("channel closed")
}

/// A subscriber to `topic` whose queue holds one event and whose handler reports each payload,
/// then waits for a permit of the gate: the test decides when handlers finish.
async fn gated_subscriber(
    bus: &Bus,
    topic: &str,
) -> (
    polybus::Subscription,
    Arc<Semaphore>,
    mpsc::UnboundedReceiver<bytes::Bytes>,
) {
    let gate = Arc::new(Semaphore::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let g = gate.clone();
    let sub = bus
        .subscribe(
            topic,
            SubscribeOptions::new().queue_size(1).batch_size(1),
            move |e: Event| {
                let (g, tx) = (g.clone(), tx.clone());
                async move {
                    tx.send(e.payload().clone()).unwrap();
                    g.acquire().await.unwrap().forget();
                    Ok::<_, polybus::Error>(())
                }
            },
        )
        .await
        .unwrap();
    (sub, gate, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_makes_the_publisher_wait_and_nothing_is_lost() {
    let bus = Bus::connect("memory://").await.unwrap();
    let (_sub, gate, mut rx) = gated_subscriber(&bus, "a.b").await;
    bus.publish(Message::new("a.b", "1")).await.unwrap();
    assert_eq!(recv(&mut rx).await, "1"); // the handler holds event 1
    assert!(bus
        .publish_nowait(Message::new("a.b", "2"))
        .unwrap()
        .is_none()); // queued
    let pending = bus.publish_nowait(Message::new("a.b", "3")).unwrap();
    let pending = pending.expect("a full queue must make the publisher wait");
    gate.add_permits(3);
    pending.wait().await.unwrap();
    assert_eq!(recv(&mut rx).await, "2");
    assert_eq!(recv(&mut rx).await, "3");
    bus.close().await.unwrap();
    assert_eq!(bus.stats().published, 3);
    assert_eq!(bus.stats().acked, 3);
}

#[tokio::test]
async fn publish_times_out_when_a_queue_stays_full() {
    let cfg = Config::new("memory://").publish_timeout(Duration::from_millis(50));
    let bus = Bus::connect(cfg).await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let _sub = bus
        .subscribe(
            "a.b",
            SubscribeOptions::new().queue_size(1).batch_size(1),
            move |_e: Event| {
                let g = g.clone();
                async move {
                    g.acquire().await.unwrap().forget();
                    Ok::<_, polybus::Error>(())
                }
            },
        )
        .await
        .unwrap();
    let mut err = None;
    for i in 0..4 {
        if let Err(e) = bus.publish(Message::new("a.b", format!("{i}"))).await {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("the publisher must time out");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.to_string().contains("50 ms"), "{err}");
    gate.add_permits(10);
}

#[tokio::test]
async fn close_gives_up_on_a_stuck_handler_within_the_timeout() {
    let cfg = Config::new("memory://").close_timeout(Duration::from_millis(100));
    let bus = Bus::connect(cfg).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .subscribe("a.b", SubscribeOptions::new(), move |_e: Event| {
            let tx = tx.clone();
            async move {
                tx.send(()).unwrap();
                std::future::pending::<()>().await;
                Ok::<_, polybus::Error>(())
            }
        })
        .await
        .unwrap();
    bus.publish(Message::new("a.b", "x")).await.unwrap();
    recv(&mut rx).await;
    let err = bus.close().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(bus.stats().dropped, 1);
    assert_eq!(
        bus.publish(Message::new("a.b", "y"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Closed
    );
}

#[tokio::test]
async fn named_memory_buses_are_shared_and_prefixes_isolate() {
    let a = Bus::connect("memory://shared-test").await.unwrap();
    let b = Bus::connect("memory://shared-test").await.unwrap();
    let other = Bus::connect(Config::new("memory://shared-test").prefix("other"))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tx2 = tx.clone();
    let _s1 = b
        .subscribe("x.y", SubscribeOptions::new(), move |e: Event| {
            let tx = tx.clone();
            async move { tx.send(("b", e.payload().clone())).map_err(|_| "gone") }
        })
        .await
        .unwrap();
    let _s2 = other
        .subscribe("x.y", SubscribeOptions::new(), move |e: Event| {
            let tx = tx2.clone();
            async move { tx.send(("other", e.payload().clone())).map_err(|_| "gone") }
        })
        .await
        .unwrap();
    a.publish(Message::new("x.y", "from a")).await.unwrap();
    other
        .publish(Message::new("x.y", "from other"))
        .await
        .unwrap();
    let mut got = vec![recv(&mut rx).await, recv(&mut rx).await];
    got.sort();
    assert_eq!(
        got,
        vec![("b", "from a".into()), ("other", "from other".into())]
    );
    for bus in [a, b, other] {
        bus.close().await.unwrap();
    }
    assert!(rx.try_recv().is_err(), "no cross-talk between prefixes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_hands_each_key_to_one_member() {
    let bus = Bus::connect("memory://").await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut subs = Vec::new();
    for member in 0..3 {
        let tx = tx.clone();
        subs.push(
            bus.subscribe(
                "k.v",
                SubscribeOptions::new().group("g"),
                move |e: Event| {
                    let tx = tx.clone();
                    async move {
                        tx.send((member, e.key().unwrap().to_owned()))
                            .map_err(|_| "gone")
                    }
                },
            )
            .await
            .unwrap(),
        );
    }
    for i in 0..60 {
        bus.publish(Message::new("k.v", "x").key(format!("key{}", i % 6)))
            .await
            .unwrap();
    }
    let mut owner = std::collections::HashMap::new();
    for _ in 0..60 {
        let (member, key) = recv(&mut rx).await;
        assert_eq!(
            *owner.entry(key.clone()).or_insert(member),
            member,
            "{key} moved members"
        );
    }
    bus.close().await.unwrap();
}

#[tokio::test]
async fn batch_outcomes_retry_the_failed_event_before_the_skipped_ones() {
    let bus = Bus::connect("memory://").await.unwrap();
    let opts = SubscribeOptions::new().backoff(Duration::from_millis(1), Duration::from_millis(1));
    let sub = bus.subscribe_batches("a.*", opts).await.unwrap();
    // Hold the lane on event 0 while 1..=3 queue up, so they come as one batch.
    bus.publish(Message::new("a.b", "0")).await.unwrap();
    let held = next(&sub).await;
    bus.publish_batch((1..4).map(|i| Message::new("a.b", format!("{i}"))))
        .await
        .unwrap();
    held.ack_all();
    let batch = next(&sub).await;
    assert_eq!(batch.events().len(), 3);
    let first = batch.events()[0].payload().clone();
    // One handled, the next failed: the core fails that one and skips the rest.
    batch.complete(1, Some("boom".into()));
    let again = next(&sub).await;
    let got: Vec<(String, u32)> = again
        .events()
        .iter()
        .map(|e| {
            (
                String::from_utf8_lossy(e.payload()).into_owned(),
                e.attempt(),
            )
        })
        .collect();
    assert_eq!(first, "1");
    assert_eq!(got, vec![("2".to_owned(), 2), ("3".to_owned(), 1)]);
    let n = again.events().len();
    again.complete(n, None);
    let stats = bus.stats();
    assert_eq!((stats.failed, stats.retried), (1, 1));
    drop(sub);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_dropped_batch_counts_as_failed_and_is_redelivered() {
    let bus = Bus::connect("memory://").await.unwrap();
    let opts = SubscribeOptions::new().backoff(Duration::from_millis(1), Duration::from_millis(1));
    let sub = bus.subscribe_batches("a.b", opts).await.unwrap();
    bus.publish(Message::new("a.b", "x")).await.unwrap();
    let batch = next(&sub).await;
    assert_eq!(batch.events()[0].attempt(), 1);
    drop(batch);
    let batch = next(&sub).await;
    assert_eq!(batch.events()[0].attempt(), 2);
    batch.ack_all();
    drop(sub);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_released_batch_stops_its_lane_without_an_attempt() {
    let bus = Bus::connect("memory://").await.unwrap();
    let opts = SubscribeOptions::new().backoff(Duration::from_millis(1), Duration::from_millis(1));
    let sub = bus.subscribe_batches("a.b", opts).await.unwrap();
    bus.publish(Message::new("a.b", "x")).await.unwrap();
    let batch = next(&sub).await;
    assert_eq!(batch.events().len(), 1);
    batch.release();
    // The lane reads the release, counts what it held as dropped and stops: no failure, no
    // retry, no second delivery of the event.
    let deadline = tokio::time::Instant::now() + WAIT;
    while bus.stats().dropped < 1 && tokio::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    let stats = bus.stats();
    assert_eq!(
        (stats.dropped, stats.failed, stats.retried, stats.acked),
        (1, 0, 0, 0)
    );
    drop(sub);
    tokio::time::timeout(WAIT, bus.close())
        .await
        .expect("close hung after a release")
        .unwrap();
}

#[tokio::test]
async fn a_batch_stopped_without_a_failure_redelivers_the_rest_with_the_same_attempt() {
    let bus = Bus::connect("memory://").await.unwrap();
    let sub = bus
        .subscribe_batches("a.b", SubscribeOptions::new())
        .await
        .unwrap();
    bus.publish(Message::new("a.b", "0")).await.unwrap();
    let held = next(&sub).await;
    bus.publish_batch((1..4).map(|i| Message::new("a.b", format!("{i}"))))
        .await
        .unwrap();
    held.ack_all();
    let batch = next(&sub).await;
    assert_eq!(batch.events().len(), 3);
    batch.complete(1, None);
    let again = next(&sub).await;
    let attempts: Vec<u32> = again.events().iter().map(|e| e.attempt()).collect();
    assert_eq!(attempts, vec![1, 1]);
    again.ack_all();
    // The lane counts the acknowledgements once it has read the completion.
    let deadline = tokio::time::Instant::now() + WAIT;
    while bus.stats().acked < 4 && tokio::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    let stats = bus.stats();
    assert_eq!((stats.failed, stats.retried, stats.acked), (0, 0, 4));
    drop(sub);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn many_subscriptions_share_one_delivery_queue() {
    let bus = Bus::connect("memory://").await.unwrap();
    let queue = DeliveryQueue::new();
    let mut subs = Vec::new();
    for i in 0..200u64 {
        let sub = bus
            .subscribe_to_queue(&format!("t.s{i}"), SubscribeOptions::new(), &queue, i)
            .await
            .unwrap();
        assert_eq!(sub.token(), i);
        subs.push(sub);
    }
    bus.publish_batch((0..200).map(|i| Message::new(format!("t.s{i}"), format!("{i}"))))
        .await
        .unwrap();
    let mut seen = [false; 200];
    for _ in 0..200 {
        let batch = tokio::time::timeout(WAIT, queue.next())
            .await
            .expect("timed out")
            .expect("queue ended");
        let token = batch.token() as usize;
        assert_eq!(batch.events()[0].payload(), &format!("{token}"));
        assert!(!seen[token], "token {token} twice");
        seen[token] = true;
        batch.ack_all();
    }
    queue.close();
    // Closed, but subscriptions still feed it: it is not over yet.
    assert!(queue.try_next().unwrap().is_none());
    bus.close().await.unwrap();
    for s in &subs {
        assert!(s.is_drained());
    }
    drop(subs);
    assert_eq!(queue.try_next().unwrap_err().kind(), ErrorKind::Closed);
    assert!(queue.next().await.is_none());
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes() {
    let bus = Bus::connect("memory://").await.unwrap();
    let sub = bus
        .subscribe_batches("a.b", SubscribeOptions::new())
        .await
        .unwrap();
    drop(sub);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _other = bus
        .subscribe("a.b", SubscribeOptions::new(), move |e: Event| {
            let tx = tx.clone();
            async move { tx.send(e.payload().clone()).map_err(|_| "gone") }
        })
        .await
        .unwrap();
    // With the dropped subscription still registered this would wait on its full queue.
    for i in 0..2000 {
        bus.publish(Message::new("a.b", format!("{i}")))
            .await
            .unwrap();
    }
    for _ in 0..2000 {
        recv(&mut rx).await;
    }
    bus.close().await.unwrap();
}

#[tokio::test]
async fn subscription_close_drains_and_is_idempotent() {
    let bus = Bus::connect("memory://").await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = bus
        .subscribe("a.b", SubscribeOptions::new(), move |e: Event| {
            let tx = tx.clone();
            async move { tx.send(e.payload().clone()).map_err(|_| "gone") }
        })
        .await
        .unwrap();
    for i in 0..50 {
        bus.publish(Message::new("a.b", format!("{i}")))
            .await
            .unwrap();
    }
    sub.close().await.unwrap();
    sub.close().await.unwrap();
    assert!(sub.is_closed());
    for i in 0..50 {
        assert_eq!(rx.try_recv().unwrap(), format!("{i}"));
    }
    bus.publish(Message::new("a.b", "after")).await.unwrap();
    assert_eq!(bus.stats().acked, 50);
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_that_wait_keep_their_order() {
    let bus = Bus::connect("memory://").await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let g = gate.clone();
    let _sub = bus
        .subscribe(
            "a.b",
            SubscribeOptions::new().queue_size(1).batch_size(1),
            move |e: Event| {
                let (g, tx) = (g.clone(), tx.clone());
                async move {
                    g.acquire().await.unwrap().forget();
                    tx.send(String::from_utf8_lossy(e.payload()).into_owned())
                        .unwrap();
                    Ok::<_, polybus::Error>(())
                }
            },
        )
        .await
        .unwrap();
    // Fill the queue, then start many publishes without waiting on them.
    let mut pending = Vec::new();
    for i in 0..20 {
        if let Some(p) = bus
            .publish_nowait(Message::new("a.b", format!("{i}")))
            .unwrap()
        {
            pending.push(p);
        }
    }
    assert!(
        pending.len() >= 15,
        "the queue of one must make most publishes wait"
    );
    let waits = tokio::spawn(async move {
        // Wait on the last first: order must not depend on who waits first.
        for p in pending.into_iter().rev() {
            p.wait().await.unwrap();
        }
    });
    gate.add_permits(20);
    let got: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(recv(&mut rx).await);
        }
        v
    };
    waits.await.unwrap();
    assert_eq!(got, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    bus.close().await.unwrap();
}

/// Exact topics, wildcards and groups together, at a scale where scanning every route per new
/// topic showed (10,000 subscriptions to 10,000 topics): each event reaches exactly the
/// subscriptions whose pattern matches, and an unsubscribed one gets nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_exact_topics_each_reach_their_own_subscribers() {
    const N: usize = 10_000;
    let bus = Bus::connect("memory://").await.unwrap();
    let queue = DeliveryQueue::new();
    let mut subs = Vec::with_capacity(N);
    for i in 0..N {
        let topic = format!("scale.t{i}");
        subs.push(
            bus.subscribe_to_queue(&topic, SubscribeOptions::new(), &queue, i as u64)
                .await
                .unwrap(),
        );
    }
    let wild = bus
        .subscribe_to_queue("scale.*", SubscribeOptions::new(), &queue, N as u64)
        .await
        .unwrap();
    let opts = || SubscribeOptions::new().group("g");
    let g1 = bus
        .subscribe_to_queue("scale.t7", opts(), &queue, N as u64 + 1)
        .await
        .unwrap();
    let g2 = bus
        .subscribe_to_queue("scale.t7", opts(), &queue, N as u64 + 1)
        .await
        .unwrap();
    // Unsubscribed before publishing: never served again.
    subs[3].stop();
    // The shared queue is bounded: consume while publishing.
    let b = bus.clone();
    let publishing = tokio::spawn(async move {
        b.publish_batch((0..N).map(|i| Message::new(format!("scale.t{i}"), i.to_string())))
            .await
    });
    let mut per_token = vec![0usize; N + 2];
    let expected = (N - 1) + N + 1; // exact (one stopped), wildcard, one group member
    for _ in 0..expected {
        let b = tokio::time::timeout(WAIT, queue.next())
            .await
            .expect("timed out")
            .expect("queue ended");
        for e in b.events() {
            let t = b.token() as usize;
            if t < N {
                assert_eq!(
                    e.topic(),
                    format!("scale.t{t}"),
                    "an event for another topic"
                );
            }
            per_token[t] += 1;
        }
        let n = b.events().len();
        b.complete(n, None);
        if per_token.iter().sum::<usize>() >= expected {
            break;
        }
    }
    assert_eq!(publishing.await.unwrap().unwrap(), N);
    assert_eq!(per_token[3], 0, "an unsubscribed topic was served");
    assert!(per_token[..N]
        .iter()
        .enumerate()
        .all(|(i, &c)| c == usize::from(i != 3)));
    assert_eq!(
        per_token[N], N,
        "the wildcard subscription sees every topic"
    );
    assert_eq!(per_token[N + 1], 1, "the group gets scale.t7 once");
    drop((g1, g2, wild));
    bus.close().await.unwrap();
}

/// A closed bus and a fired cancel together: every call reports the bus closed (one order of
/// checks for all of them).
#[tokio::test]
async fn a_closed_bus_is_reported_before_a_fired_cancel() {
    use polybus::Cancel;
    let bus = Bus::connect(Config::new("memory://")).await.unwrap();
    bus.close().await.unwrap();
    let cancel = Cancel::new();
    cancel.cancel();
    let e = bus
        .publish_until(Message::new("c.x", "0"), &cancel)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    let e = bus
        .publish_batch_until([Message::new("c.x", "0")], &cancel)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
}

/// A fired [`Cancel`] stops a publish held back by a full queue, a batch publish (reporting
/// what was confirmed) and a close waiting for a handler; the bus is closed anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_waits_and_leaves_what_the_core_says() {
    use polybus::Cancel;
    let bus = Bus::connect(Config::new("memory://").publish_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    let (_sub, gate, mut rx) = gated_subscriber(&bus, "c.x").await;
    bus.publish(Message::new("c.x", "0")).await.unwrap();
    assert_eq!(recv(&mut rx).await, "0"); // held by the handler
    bus.publish(Message::new("c.x", "1")).await.unwrap(); // queued: the queue is full

    // A deadline: the publish starts, waits, and gives up; the event may still come.
    let e = bus
        .publish_until(
            Message::new("c.x", "2"),
            &Cancel::with_timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("may still be published"), "{e}");
    // Fired from another task, before or during the wait: cancelled either way.
    let cancel = Cancel::new();
    let c = cancel.clone();
    let b = bus.clone();
    let waiting = tokio::spawn(async move { b.publish_until(Message::new("c.x", "2b"), &c).await });
    cancel.cancel();
    let e = waiting.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert!(e.to_string().starts_with("cancelled: publish"), "{e}");

    let deadline = Cancel::with_timeout(Duration::from_millis(50));
    let e = bus
        .publish_batch_until(
            (3..10).map(|i| Message::new("c.x", i.to_string())),
            &deadline,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("deadline"), "{e}");
    assert_eq!(e.published(), Some(0), "{e}");

    let e = bus
        .close_until(&Cancel::with_timeout(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("drain goes on"), "{e}");
    let e = bus.publish(Message::new("c.x", "late")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed);
    // Released, the handler drains what was accepted (2 may still come: it was started).
    gate.add_permits(100);
    assert_eq!(recv(&mut rx).await, "1");
    bus.close().await.unwrap();
    assert!(bus.is_closed());
}
