//! What a job argument may be: [`JobArg`], and [`Timestamp`], the lossless
//! point in time that stands in for date types that JSON would mangle.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A type that may be a job argument: a simple value that JSON keeps exactly.
///
/// Implemented for the std primitives, `String`, `Vec`, `Option`, `Box`,
/// maps with `String` keys, [`Timestamp`] and [`JobId`](crate::JobId). A
/// database record, a connection or a `chrono::DateTime` is not: pass its id
/// and load fresh data inside the job. A type defined in your crate may opt
/// in when it is plain data:
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, PartialEq, Debug)]
/// struct Cents(u64);
/// impl jobs_core::JobArg for Cents {}
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a job argument",
    label = "not a simple value",
    note = "pass an id or a simple value (a number of up to 64 bits, String, Vec, Option, a map with String keys) and load fresh data inside the job; for a point in time pass a jobs_core::Timestamp (`Timestamp::from(system_time)`)",
    note = "a plain-data type of your own crate can opt in with `impl jobs_core::JobArg for MyType {{}}`; a type from another crate cannot (Rust's orphan rule): wrap it in a type of yours, or pass its parts as simple values"
)]
pub trait JobArg: Serialize + DeserializeOwned + Send + 'static {
    /// What in this value JSON cannot carry, checked on every enqueue, in
    /// release builds too: a NaN or infinite float (JSON would write `null`,
    /// and the job would fail to decode it when it runs). The std types check
    /// their floats; a type that opts in checks nothing unless it says so.
    fn not_json(&self) -> Option<String> {
        None
    }
}

macro_rules! job_arg {
    ($($ty:ty),* $(,)?) => { $(impl JobArg for $ty {})* };
}

job_arg!(bool, char, u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, String);

macro_rules! float_arg {
    ($($ty:ty),*) => {
        $(impl JobArg for $ty {
            fn not_json(&self) -> Option<String> {
                (!self.is_finite()).then(|| format!("{self} is not a number JSON can carry"))
            }
        })*
    };
}

float_arg!(f32, f64);

impl<T: JobArg> JobArg for Vec<T> {
    fn not_json(&self) -> Option<String> {
        self.iter().find_map(T::not_json)
    }
}

impl<T: JobArg> JobArg for Option<T> {
    fn not_json(&self) -> Option<String> {
        self.as_ref().and_then(T::not_json)
    }
}

impl<T: JobArg> JobArg for Box<T> {
    fn not_json(&self) -> Option<String> {
        T::not_json(self)
    }
}

impl<T: JobArg> JobArg for BTreeMap<String, T> {
    fn not_json(&self) -> Option<String> {
        self.values().find_map(T::not_json)
    }
}

impl<T: JobArg, S> JobArg for HashMap<String, T, S>
where
    S: std::hash::BuildHasher + Default + Send + 'static,
{
    fn not_json(&self) -> Option<String> {
        self.values().find_map(T::not_json)
    }
}

/// A point in time with nanosecond precision, carried as an RFC 3339 string
/// in UTC (`"2026-11-23T15:12:22.123456789Z"`), so any language can read it
/// and a `SystemTime` survives the trip unchanged.
///
/// ```
/// use std::time::SystemTime;
/// use jobs_core::Timestamp;
///
/// let now = SystemTime::now();
/// let ts = Timestamp::from(now);
/// let json = serde_json::to_string(&ts).unwrap();
/// let back: Timestamp = serde_json::from_str(&json).unwrap();
/// assert_eq!(SystemTime::from(back), now);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp {
    secs: i64,
    nanos: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        SystemTime::now().into()
    }

    /// Seconds and nanoseconds since the Unix epoch (seconds may be negative).
    pub fn from_unix(secs: i64, nanos: u32) -> Option<Self> {
        (nanos < 1_000_000_000).then_some(Self { secs, nanos })
    }

    /// Whole seconds since the Unix epoch.
    pub fn unix_seconds(&self) -> i64 {
        self.secs
    }

    /// The sub-second part in nanoseconds.
    pub fn subsec_nanos(&self) -> u32 {
        self.nanos
    }

    /// Parses RFC 3339 (`Z` or a `±hh:mm` offset, up to nine fraction digits).
    pub fn parse(text: &str) -> Result<Self, String> {
        parse_rfc3339(text).ok_or_else(|| format!("`{text}` is not an RFC 3339 timestamp like 2026-11-23T15:12:22.5Z"))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Self { secs: after.as_secs() as i64, nanos: after.subsec_nanos() },
            Err(before) => {
                let before = before.duration();
                let (secs, nanos) = (before.as_secs() as i64, before.subsec_nanos());
                if nanos == 0 {
                    Self { secs: -secs, nanos: 0 }
                } else {
                    Self { secs: -secs - 1, nanos: 1_000_000_000 - nanos }
                }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(ts: Timestamp) -> Self {
        if ts.secs >= 0 {
            UNIX_EPOCH + Duration::new(ts.secs as u64, ts.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(ts.secs.unsigned_abs()) + Duration::from_nanos(u64::from(ts.nanos))
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.secs.div_euclid(86_400);
        let rem = self.secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(f, "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)?;
        if self.nanos != 0 {
            let digits = format!("{:09}", self.nanos);
            write!(f, ".{}", digits.trim_end_matches('0'))?;
        }
        f.write_str("Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JobArg for Timestamp {}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01; the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let bytes = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    if !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let value: u32 = fraction[..digits].parse().ok()?;
        nanos = value * 10u32.pow(9 - digits as u32);
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let tail = rest.get(1..)?;
            if tail.len() != 5 || tail.as_bytes()[2] != b':' {
                return None;
            }
            let (h, m): (i64, i64) = (tail[..2].parse().ok()?, tail[3..].parse().ok()?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(Timestamp { secs, nanos })
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_time_round_trips_through_json_with_nanoseconds() {
        for time in [
            UNIX_EPOCH + Duration::new(1_732_300_000, 123_456_789),
            UNIX_EPOCH + Duration::new(0, 1),
            UNIX_EPOCH - Duration::new(86_400 * 365 * 30, 5),
            UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_999),
        ] {
            let json = serde_json::to_string(&Timestamp::from(time)).unwrap();
            let back: Timestamp = serde_json::from_str(&json).unwrap();
            assert_eq!(SystemTime::from(back), time, "{json}");
        }
    }

    /// A default JSON cannot hold (`default = f64::NAN`) is refused when it
    /// is needed, with the reason, instead of being stored as `null`.
    #[test]
    fn a_default_that_json_cannot_hold_is_refused() {
        let refused = crate::__private::default_json(f64::NAN).unwrap_err();
        assert!(refused.contains("NaN") && refused.contains("finite"), "{refused}");
        assert_eq!(crate::__private::default_json(1.5), Ok(serde_json::json!(1.5)));
    }

    #[test]
    fn formats_utc_rfc3339() {
        let ts = Timestamp::from_unix(1_732_300_000, 120_000_000).unwrap();
        assert_eq!(ts.to_string(), "2024-11-22T18:26:40.12Z");
        assert_eq!(Timestamp::from_unix(0, 0).unwrap().to_string(), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn parses_offsets_and_rejects_nonsense() {
        let a = Timestamp::parse("2024-11-22T20:26:40+02:00").unwrap();
        assert_eq!(a.unix_seconds(), 1_732_300_000);
        for bad in [
            "",
            "2024-13-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-11-22 20:26:40",
            "2024-11-22T20:26:40.Z",
            "yesterday",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }
}
