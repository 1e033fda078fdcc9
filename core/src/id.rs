//! Event ids: UUIDv7 (RFC 9562) from a per-thread generator.
//!
//! A time-ordered id per event must be cheap: the system random source costs a system call,
//! so each thread seeds a small generator from it once and draws from that.

use std::{cell::Cell, time::SystemTime};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    let u = uuid::Uuid::new_v4(); // one call to the system random source per thread
    b.copy_from_slice(&u.as_bytes()[..8]);
    u64::from_le_bytes(b) | 1
}

/// The next 64 random bits (wyrand).
fn next() -> u64 {
    STATE.with(|s| {
        let v = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(v);
        let t = (v as u128).wrapping_mul((v ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// An event id: a generated UUIDv7 kept inline (no allocation), or the publisher's own text.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum EventId {
    /// Not set yet: generated at publish time.
    Unset,
    /// A generated UUIDv7 in its 36-character text form.
    Uuid([u8; uuid::fmt::Hyphenated::LENGTH]),
    /// Set by the publisher.
    Custom(Box<str>),
}

impl EventId {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            EventId::Unset => "",
            // The buffer holds lower-case hex digits and dashes only.
            EventId::Uuid(b) => std::str::from_utf8(b).unwrap_or(""),
            EventId::Custom(s) => s,
        }
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A new UUIDv7 for an event published at `time`.
pub(crate) fn new_v7(time: SystemTime) -> EventId {
    let ms = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let (a, b) = (next(), next());
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..8].copy_from_slice(&((a as u16 & 0x0fff) | 0x7000).to_be_bytes());
    bytes[8..]
        .copy_from_slice(&((b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000).to_be_bytes());
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::from_bytes(bytes)
        .hyphenated()
        .encode_lower(&mut buf);
    EventId::Uuid(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_unique_and_time_ordered() {
        let t0 = SystemTime::now();
        let a = new_v7(t0).as_str().to_owned();
        let b = new_v7(t0 + std::time::Duration::from_millis(2))
            .as_str()
            .to_owned();
        let ua = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(ua.get_version_num(), 7);
        assert_eq!(ua.get_variant(), uuid::Variant::RFC4122);
        assert!(a < b, "{a} < {b}");
        let set: std::collections::HashSet<String> = (0..10_000)
            .map(|_| new_v7(t0).as_str().to_owned())
            .collect();
        assert_eq!(set.len(), 10_000);
    }
}
