//! RFC 3339 timestamps for JSON, written without `fmt`: chrono's own
//! `Serialize` goes through `Display` and costs ~190 ns a value, ten times a
//! plain string, which made timestamps a third of a 1,000-sandbox page's
//! encoding time. The output is byte for byte chrono's (`AutoSi` fractions,
//! `Z`); years outside 0..=9999 and leap seconds are left to chrono.

use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use serde::Serializer;

/// `2026-12-04T17:28:09.439620Z`, or `None` when chrono must write it.
fn write(t: &DateTime<Utc>, buf: &mut [u8; 32]) -> Option<usize> {
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let put = |buf: &mut [u8; 32], at: usize, value: u32, digits: usize| {
        let mut v = value;
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
            v /= 10;
        }
    };
    put(buf, 0, year.unsigned_abs(), 4);
    buf[4] = b'-';
    put(buf, 5, t.month(), 2);
    buf[7] = b'-';
    put(buf, 8, t.day(), 2);
    buf[10] = b'T';
    put(buf, 11, t.hour(), 2);
    buf[13] = b':';
    put(buf, 14, t.minute(), 2);
    buf[16] = b':';
    put(buf, 17, t.second(), 2);
    let mut end = 19;
    let fraction = match nanos {
        0 => None,
        n if n % 1_000_000 == 0 => Some((n / 1_000_000, 3)),
        n if n % 1_000 == 0 => Some((n / 1_000, 6)),
        n => Some((n, 9)),
    };
    if let Some((value, digits)) = fraction {
        buf[end] = b'.';
        put(buf, end + 1, value, digits);
        end += 1 + digits;
    }
    buf[end] = b'Z';
    Some(end + 1)
}

pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 32];
    match write(t, &mut buf) {
        Some(n) => s.serialize_str(std::str::from_utf8(&buf[..n]).unwrap_or_default()),
        None => serde::Serialize::serialize(t, s),
    }
}

/// For `Option<DateTime<Utc>>` fields.
pub mod option {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    #[allow(clippy::ref_option)] // serde's `serialize_with` hands us `&Option<T>`
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::serialize(t, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone as _, Utc};

    fn ours(t: &DateTime<Utc>) -> String {
        let mut out = Vec::new();
        super::serialize(t, &mut serde_json::Serializer::new(&mut out)).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_exactly_what_chrono_writes() {
        let base = Utc.with_ymd_and_hms(2026, 12, 4, 17, 28, 9).unwrap();
        let mut cases = vec![
            base,
            Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(-5, 3, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(12_000, 3, 1, 0, 0, 0).unwrap(),
        ];
        for nanos in [1, 7, 999, 1_000, 120_000, 1_000_000, 439_620_000, 439_620_001, 999_999_999] {
            cases.push(base + chrono::Duration::nanoseconds(nanos));
        }
        for i in 0..2_000 {
            cases.push(base + chrono::Duration::microseconds(i * 1_237_117) + chrono::Duration::days(i * 37));
        }
        for t in &cases {
            assert_eq!(ours(t), serde_json::to_string(t).unwrap(), "{t:?}");
        }
    }
}
