//! A tiny RFC 3339 formatter, so `sentAt` needs no date-time dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length in bytes of every string [`rfc3339_millis`] returns (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
///
/// The batch builder relies on it being constant to account for the envelope exactly.
pub const RFC3339_MILLIS_LEN: usize = 24;

/// Formats `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, millisecond precision).
///
/// Times before 1970 are clamped to the epoch and years past 9999 to 9999-12-31T23:59:59.999Z,
/// so the output always has [`RFC3339_MILLIS_LEN`] bytes; neither can happen with a sane clock.
pub fn rfc3339_millis(t: SystemTime) -> String {
    // 253402300799 = 9999-12-31T23:59:59Z.
    const MAX_SECS: u64 = 253_402_300_799;
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = if since.as_secs() > MAX_SECS {
        (MAX_SECS, 999)
    } else {
        (since.as_secs(), since.subsec_millis())
    };
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// Howard Hinnant's `civil_from_days`, restricted to non-negative day counts.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> String {
        rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
    }

    #[test]
    fn known_instants() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day in a century leap year) 12:34:56.789
        assert_eq!(at(951_827_696, 789), "2000-02-29T12:34:56.789Z");
        // 2026-01-01T10:00:05.123Z
        assert_eq!(at(1_767_261_605, 123), "2026-01-01T10:00:05.123Z");
        // 2100-03-01 (2100 is not a leap year)
        assert_eq!(at(4_107_542_400, 1), "2100-03-01T00:00:00.001Z");
        assert_eq!(at(253_402_300_799, 999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn length_is_constant_even_when_clamped() {
        assert_eq!(at(0, 0).len(), RFC3339_MILLIS_LEN);
        assert_eq!(rfc3339_millis(SystemTime::now()).len(), RFC3339_MILLIS_LEN);
        let before_epoch = UNIX_EPOCH.checked_sub(Duration::from_secs(10)).unwrap();
        assert_eq!(rfc3339_millis(before_epoch), "1970-01-01T00:00:00.000Z");
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339_millis(far), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn every_day_of_a_leap_and_common_year_round_trips() {
        // Walk 2023-01-01 .. 2025-01-01 and check month/day progress strictly.
        let start = 19_358; // 2023-01-01
        let mut prev = civil_from_days(start - 1);
        for d in start..start + 731 {
            let cur = civil_from_days(d);
            let next_day = (prev.0, prev.1, prev.2 + 1);
            let next_month = (prev.0, prev.1 + 1, 1);
            let next_year = (prev.0 + 1, 1, 1);
            assert!(
                cur == next_day || cur == next_month || cur == next_year,
                "{prev:?} -> {cur:?}"
            );
            prev = cur;
        }
        assert_eq!(civil_from_days(start + 365 + 59), (2024, 2, 29));
    }
}
