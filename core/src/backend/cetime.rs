//! The CloudEvents attribute names and `time` values (RFC 3339 in UTC), shared by the broker
//! backends, and the URL-credential decoding they share.

/// The names of the CloudEvents attributes polybus carries, in one transport's spelling.
pub(crate) struct CeNames {
    pub(crate) specversion: &'static str,
    pub(crate) id: &'static str,
    pub(crate) event_type: &'static str,
    pub(crate) source: &'static str,
    pub(crate) time: &'static str,
    /// The ordering key: the CloudEvents partitioning extension.
    pub(crate) partitionkey: &'static str,
}

/// The spelling of the NATS binding (`ce-` headers).
pub(crate) const CE_DASHED: CeNames = CeNames {
    specversion: "ce-specversion",
    id: "ce-id",
    event_type: "ce-type",
    source: "ce-source",
    time: "ce-time",
    partitionkey: "ce-partitionkey",
};

/// The spelling of the Kafka binding (`ce_` headers), also used for Redis Streams fields.
pub(crate) const CE_UNDERSCORED: CeNames = CeNames {
    specversion: "ce_specversion",
    id: "ce_id",
    event_type: "ce_type",
    source: "ce_source",
    time: "ce_time",
    partitionkey: "ce_partitionkey",
};

/// Decodes the `%XX` escapes of a URL's user or password (invalid UTF-8 is replaced).
#[cfg(any(feature = "nats", feature = "redis"))]
pub(crate) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// RFC 3339 in UTC with microseconds: `2024-05-01T12:00:00.123456Z`.
pub(crate) fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, mo, da) = civil_from_days(days);
    let (h, mi, se, us) = (sod / 3600, sod / 60 % 60, sod % 60, d.subsec_micros());
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{mo:02}-{da:02}T{h:02}:{mi:02}:{se:02}.{us:06}Z");
    }
    // Every event carries its time: written digit by digit, not through `format!`.
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y as u64);
    put(5, 2, mo as u64);
    put(8, 2, da as u64);
    put(11, 2, h as u64);
    put(14, 2, mi as u64);
    put(17, 2, se as u64);
    put(20, 6, u64::from(us));
    String::from_utf8_lossy(&b).into_owned()
}

/// Parses RFC 3339 (`Z` or a numeric offset, any fraction); `None` when it is not.
pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        for _ in (i - start).min(9)..9 {
            nanos *= 10;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' => 0,
        b'+' | b'-' => {
            let sign = if b[i] == b'-' { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos as u32))
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "nats", feature = "redis"))]
    #[test]
    fn percent_decode_handles_escapes_and_multibyte_text() {
        assert_eq!(percent_decode("p%40ss"), "p@ss");
        // A multi-byte character right after '%' once panicked a hand-written decoder.
        assert_eq!(percent_decode("a%é1"), "a%é1");
        assert_eq!(percent_decode("%é"), "%é");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn time_round_trips() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(parse_time(&format_time(t)), Some(t));
        assert_eq!(format_time(t), "2023-11-14T22:13:20.123456Z");
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let late = UNIX_EPOCH + Duration::from_secs(253_402_300_799) + Duration::from_micros(7);
        assert_eq!(format_time(late), "9999-12-31T23:59:59.000007Z");
    }
}
