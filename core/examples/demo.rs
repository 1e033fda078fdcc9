//! The Rust demo: a subscriber and a publisher on one bus (`POLYBUS_URL`, default `memory://`).

use std::time::{Duration, SystemTime};

use polybus::{Bus, Event, Message, SubscribeOptions};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Payload {
    message: String,
}

fn now() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let (s, us) = (d.as_secs(), d.subsec_micros());
    format!(
        "{:02}:{:02}:{:02}.{us:06}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}

#[tokio::main]
async fn main() -> polybus::Result<()> {
    let url = std::env::var("POLYBUS_URL").unwrap_or_else(|_| "memory://".into());
    let bus = Bus::connect(url.as_str()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sub = bus
        .subscribe("message", SubscribeOptions::new(), move |evt: Event| {
            let tx = tx.clone();
            async move {
                let payload: Payload = evt.json()?;
                println!(
                    "INFO[{}] rust   evt id: {}, topic: {}, payload message: {}",
                    now(),
                    evt.id(),
                    evt.topic(),
                    payload.message
                );
                let _ = tx.send(());
                Ok::<(), polybus::Error>(())
            }
        })
        .await?;
    for _ in 0..3 {
        bus.publish(Message::json(
            "message",
            &Payload {
                message: "hello world".into(),
            },
        )?)
        .await?;
    }
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| {
                polybus::Error::new(
                    polybus::ErrorKind::Timeout,
                    "the demo events did not arrive",
                )
            })?;
    }
    sub.close().await?;
    bus.close().await
}
