//! `memory://`: the in-process backend.
//!
//! `memory://` is private to its [`Bus`](crate::Bus); `memory://NAME` is shared by every bus in
//! the process that opens the same name and prefix. Each subscription has a bounded queue of
//! `queue_size` events: `publish` resolves once the event is queued to every matching
//! subscription and waits (up to `publish_timeout_ms`) while a queue is full, so a slow handler
//! slows its publishers and nothing is dropped. A group spreads events over its members: keyed
//! events go to the member chosen by the key (so one key is handled by one member, in order),
//! the others to the next member with room. There is no history, so `start: earliest` is
//! rejected.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hash, Hasher},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Weak,
    },
};

use parking_lot::{Mutex, RwLock};

use super::{
    Backend, BoxFut, ChannelSource, Delivery, Publishing, Source, Subscribed, Unsubscribe,
};
use crate::{
    config::Config,
    error::{Error, ErrorKind, Result},
    event::Event,
    message::Message,
    subscription::{Start, SubscribeOptions},
    topic::Pattern,
};

const CACHE_LIMIT: usize = 4096;

static SHARED: Mutex<Option<HashMap<String, Weak<Broker>>>> = Mutex::new(None);

pub(crate) struct MemoryBackend {
    broker: Arc<Broker>,
}

impl MemoryBackend {
    pub(crate) fn open(config: &Config) -> Result<Self> {
        let name = config.url.strip_prefix("memory://").unwrap_or_default();
        if name.contains(['/', '?', '#', '@']) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("url {:?}: a memory bus name is a plain word", config.url),
            ));
        }
        let broker = if name.is_empty() {
            Arc::new(Broker::default())
        } else {
            let key = format!("{name}\u{0}{}", config.prefix);
            let mut shared = SHARED.lock();
            let map = shared.get_or_insert_with(HashMap::new);
            map.retain(|_, b| b.strong_count() > 0);
            match map.get(&key).and_then(Weak::upgrade) {
                Some(b) => b,
                None => {
                    let b = Arc::new(Broker::default());
                    map.insert(key, Arc::downgrade(&b));
                    b
                }
            }
        };
        Ok(MemoryBackend { broker })
    }
}

#[derive(Default)]
struct Broker {
    table: RwLock<Table>,
    next_id: AtomicU64,
}

/// Who receives what. Exact topics are indexed by name, so a topic's targets are found
/// without looking at every subscription (10,000 subscriptions to 10,000 topics cost one hash
/// lookup per new topic, not 10,000 pattern matches); only wildcard patterns are scanned.
#[derive(Default)]
struct Table {
    exact: HashMap<String, Vec<Route>, BuildHasherDefault<FxHasher>>,
    wild: Vec<Route>,
    cache: RwLock<HashMap<String, Arc<[Target]>, BuildHasherDefault<FxHasher>>>,
}

struct Route {
    pattern: Pattern,
    group: Option<String>,
    target: Target,
}

#[derive(Clone)]
enum Target {
    One(u64, flume::Sender<Delivery>),
    Group(Arc<Group>),
}

#[derive(Default)]
struct Group {
    members: RwLock<Vec<(u64, flume::Sender<Delivery>)>>,
    next: AtomicUsize,
}

impl Table {
    fn targets(&self, topic: &str) -> Arc<[Target]> {
        if let Some(t) = self.cache.read().get(topic) {
            return t.clone();
        }
        let t: Arc<[Target]> = self
            .exact
            .get(topic)
            .into_iter()
            .flatten()
            .chain(self.wild.iter().filter(|r| r.pattern.matches(topic)))
            .map(|r| r.target.clone())
            .collect();
        let mut cache = self.cache.write();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(topic.to_owned(), t.clone());
        t
    }

    /// The routes a pattern's subscriptions go to.
    fn routes_of(&mut self, pattern: &Pattern) -> &mut Vec<Route> {
        if pattern.is_wildcard() {
            &mut self.wild
        } else {
            self.exact.entry(pattern.as_str().to_owned()).or_default()
        }
    }

    /// Forgets the cached targets a change of `pattern`'s routes affects.
    fn changed(&mut self, pattern: &Pattern) {
        let cache = self.cache.get_mut();
        if pattern.is_wildcard() {
            cache.clear();
        } else {
            cache.remove(pattern.as_str());
        }
    }
}

/// A fast non-cryptographic hasher for the topic cache (keys are local topic names).
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn key_hash(key: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() as usize
}

impl Group {
    /// Picks the member for a delivery: by key, or the next one with room.
    fn send(&self, d: Delivery) -> Option<(flume::Sender<Delivery>, Delivery)> {
        let members = self.members.read();
        let n = members.len();
        if n == 0 {
            return None;
        }
        if let Some(k) = d.event.key() {
            let tx = &members[key_hash(k) % n].1;
            return match tx.try_send(d) {
                Ok(()) => None,
                Err(flume::TrySendError::Full(d)) => Some((tx.clone(), d)),
                Err(flume::TrySendError::Disconnected(_)) => None,
            };
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut d = d;
        for i in 0..n {
            let tx = &members[(start + i) % n].1;
            match tx.try_send(d) {
                Ok(()) => return None,
                Err(flume::TrySendError::Full(back))
                | Err(flume::TrySendError::Disconnected(back)) => d = back,
            }
        }
        Some((members[start % n].1.clone(), d))
    }
}

impl Backend for MemoryBackend {
    fn publish(&self, message: Arc<Message>) -> Publishing {
        let targets = self.broker.table.read().targets(&message.topic);
        let mut waiting: Vec<(flume::Sender<Delivery>, Delivery)> = Vec::new();
        for t in targets.iter() {
            let d = Delivery {
                event: Event::new(message.clone(), 1),
                acker: None,
            };
            match t {
                Target::One(_, tx) => match tx.try_send(d) {
                    Ok(()) | Err(flume::TrySendError::Disconnected(_)) => {}
                    Err(flume::TrySendError::Full(d)) => waiting.push((tx.clone(), d)),
                },
                Target::Group(g) => {
                    if let Some(w) = g.send(d) {
                        waiting.push(w);
                    }
                }
            }
        }
        if waiting.is_empty() {
            return Publishing::Done(Ok(()));
        }
        Publishing::Pending(Box::pin(async move {
            for (tx, d) in waiting {
                // A closed queue means the subscription went away meanwhile: nothing to deliver.
                let _ = tx.send_async(d).await;
            }
            Ok(())
        }))
    }

    fn subscribe<'a>(
        &'a self,
        pattern: &'a Pattern,
        options: &'a SubscribeOptions,
    ) -> BoxFut<'a, Result<Subscribed>> {
        Box::pin(async move {
            if options.start == Start::Earliest {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "the memory backend keeps no history: start \"earliest\" is not supported",
                ));
            }
            let (tx, rx) = flume::bounded(options.queue_size as usize);
            let id = self.broker.next_id.fetch_add(1, Ordering::Relaxed);
            let mut table = self.broker.table.write();
            let routes = table.routes_of(pattern);
            match &options.group {
                None => routes.push(Route {
                    pattern: pattern.clone(),
                    group: None,
                    target: Target::One(id, tx),
                }),
                Some(g) => {
                    let existing = routes.iter().find_map(|r| match &r.target {
                        Target::Group(grp)
                            if r.group.as_deref() == Some(g) && r.pattern == *pattern =>
                        {
                            Some(grp.clone())
                        }
                        _ => None,
                    });
                    match existing {
                        Some(grp) => grp.members.write().push((id, tx)),
                        None => {
                            let grp = Arc::new(Group::default());
                            grp.members.write().push((id, tx));
                            routes.push(Route {
                                pattern: pattern.clone(),
                                group: Some(g.clone()),
                                target: Target::Group(grp),
                            });
                        }
                    }
                }
            }
            table.changed(pattern);
            let unsub = MemoryUnsubscribe {
                broker: Arc::downgrade(&self.broker),
                pattern: pattern.clone(),
                id,
            };
            Ok((
                Box::new(ChannelSource::new(rx)) as Box<dyn Source>,
                Box::new(unsub) as _,
            ))
        })
    }

    fn close(&self) -> BoxFut<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

struct MemoryUnsubscribe {
    broker: Weak<Broker>,
    pattern: Pattern,
    id: u64,
}

impl Unsubscribe for MemoryUnsubscribe {
    fn unsubscribe(&self) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let mut table = broker.table.write();
        let id = self.id;
        let routes = table.routes_of(&self.pattern);
        routes.retain(|r| match &r.target {
            Target::One(rid, _) => *rid != id,
            Target::Group(g) => {
                let mut m = g.members.write();
                m.retain(|(mid, _)| *mid != id);
                !m.is_empty()
            }
        });
        if routes.is_empty() && !self.pattern.is_wildcard() {
            table.exact.remove(self.pattern.as_str());
        }
        table.changed(&self.pattern);
    }
}
