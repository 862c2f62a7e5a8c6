//! UTC calendar text from `SystemTime`, without a date crate: one civil-date conversion
//! for every timestamp the gateway writes (the admin API and audit log, SIPREC metadata,
//! certificate expiry in reload results).
//!
//! Owns: [`Utc`] and its formats. Must not: read the clock (times come in).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// An instant split into UTC calendar fields (proleptic Gregorian; times before 1970 too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

impl Utc {
    /// `t` in UTC; an instant before the epoch rounds its fraction down like after it.
    pub fn of(t: SystemTime) -> Utc {
        let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                d.subsec_nanos(),
            ),
            Err(e) => {
                let d = e.duration();
                let mut s = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                let mut n = d.subsec_nanos();
                if n > 0 {
                    s -= 1;
                    n = 1_000_000_000 - n;
                }
                (s, n)
            }
        };
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        // In [0, 86399]: the casts cannot truncate.
        let rem = secs.rem_euclid(86_400) as u32;
        Utc {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
            millis: nanos / 1_000_000,
        }
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339 §5.6, whole seconds).
    pub fn rfc3339_secs(self) -> impl fmt::Display {
        Rfc3339 {
            t: self,
            millis: false,
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339 §5.6, milliseconds).
    pub fn rfc3339_millis(self) -> impl fmt::Display {
        Rfc3339 {
            t: self,
            millis: true,
        }
    }
}

struct Rfc3339 {
    t: Utc,
    millis: bool,
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.t;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        )?;
        if self.millis {
            write!(f, ".{:03}", t.millis)?;
        }
        f.write_str("Z")
    }
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339 §5.6, UTC). Years past 9999 get more
/// digits (outside RFC 3339, never met in practice).
pub fn rfc3339(t: SystemTime) -> String {
    Utc::of(t).rfc3339_millis().to_string()
}

/// Year, month, day of the proleptic Gregorian calendar for days since 1970-01-01
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era.saturating_mul(400) + i64::from(m <= 2);
    // Both are in range by construction (see the bracketed bounds).
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // `date -u -d @1700000000`: Tue Nov 14 22:13:20 UTC 2023
        assert_eq!(rfc3339(at(1_700_000_000, 123)), "2023-11-14T22:13:20.123Z");
        // Leap day: 2024-02-29T12:00:00Z = 1709208000
        assert_eq!(rfc3339(at(1_709_208_000, 0)), "2024-02-29T12:00:00.000Z");
        // 2000-03-01T00:00:00Z = 951868800 (day after a 400-year leap day)
        assert_eq!(rfc3339(at(951_868_800, 999)), "2000-03-01T00:00:00.999Z");
        // End of a year.
        assert_eq!(rfc3339(at(1_704_067_199, 0)), "2023-12-31T23:59:59.000Z");
        // Before the epoch: -1.5 s.
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(rfc3339(before), "1969-12-31T23:59:58.500Z");
        assert_eq!(
            Utc::of(at(1_709_208_000, 250)).rfc3339_secs().to_string(),
            "2024-02-29T12:00:00Z"
        );
    }
}
