//! FHIR dates and times: parsing with their precision, and the instant ranges they stand for.
//!
//! R4 §2.24.0.1: `date` is `YYYY`, `YYYY-MM` or `YYYY-MM-DD`; `dateTime` adds an optional time,
//! which then needs a timezone; `instant` always has seconds and a timezone. A value of lower
//! precision stands for the whole period it names (`2024` is all of 2024), which is how `_since`,
//! `_at` and date search compare. Times are kept as milliseconds since the Unix epoch (UTC).

/// A parsed FHIR date, dateTime or instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: i32,
    pub month: Option<u8>,
    pub day: Option<u8>,
    /// Hour, minute, second, milliseconds and the timezone offset in minutes.
    pub time: Option<TimeOfDay>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millis: u16,
    /// Digits of the fraction given (0 when none): the precision of the value.
    pub fraction_digits: u8,
    pub offset_minutes: i16,
}

/// Why a date or time is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid;

pub fn parse_date(s: &str) -> Result<DateTime, Invalid> {
    let d = parse_date_time(s)?;
    if d.time.is_some() {
        Err(Invalid)
    } else {
        Ok(d)
    }
}

pub fn parse_instant(s: &str) -> Result<DateTime, Invalid> {
    let d = parse_date_time(s)?;
    if d.time.is_some() {
        Ok(d)
    } else {
        Err(Invalid)
    }
}

/// `YYYY(-MM(-DD(Thh:mm:ss(.f+)?(Z|(+|-)hh:mm))?)?)?`
pub fn parse_date_time(s: &str) -> Result<DateTime, Invalid> {
    let b = s.as_bytes();
    let year = digits(b, 0, 4)? as i32;
    if year == 0 {
        return Err(Invalid);
    }
    let mut d = DateTime {
        year,
        month: None,
        day: None,
        time: None,
    };
    if b.len() == 4 {
        return Ok(d);
    }
    expect(b, 4, b'-')?;
    let month = digits(b, 5, 2)? as u8;
    if !(1..=12).contains(&month) {
        return Err(Invalid);
    }
    d.month = Some(month);
    if b.len() == 7 {
        return Ok(d);
    }
    expect(b, 7, b'-')?;
    let day = digits(b, 8, 2)? as u8;
    if day == 0 || day > days_in_month(year, month) {
        return Err(Invalid);
    }
    d.day = Some(day);
    if b.len() == 10 {
        return Ok(d);
    }
    expect(b, 10, b'T')?;
    let (mut t, end) = time_at(b, 11)?;
    t.offset_minutes = offset_at(b, end)?;
    d.time = Some(t);
    Ok(d)
}

/// A `time`: `hh:mm:ss(.f+)?`, no timezone.
pub fn parse_time(s: &str) -> Result<TimeOfDay, Invalid> {
    let b = s.as_bytes();
    let (t, end) = time_at(b, 0)?;
    if end == b.len() { Ok(t) } else { Err(Invalid) }
}

fn time_at(b: &[u8], at: usize) -> Result<(TimeOfDay, usize), Invalid> {
    let hour = digits(b, at, 2)? as u8;
    expect(b, at + 2, b':')?;
    let minute = digits(b, at + 3, 2)? as u8;
    expect(b, at + 5, b':')?;
    let second = digits(b, at + 6, 2)? as u8;
    // 60 allows a leap second, as the R4 regular expression does.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(Invalid);
    }
    let mut end = at + 8;
    let mut millis = 0u32;
    let mut fraction_digits = 0u8;
    if b.get(end) == Some(&b'.') {
        end += 1;
        let start = end;
        while end < b.len() && b[end].is_ascii_digit() {
            if end - start < 3 {
                millis = millis * 10 + u32::from(b[end] - b'0');
            }
            end += 1;
        }
        let n = end - start;
        if n == 0 {
            return Err(Invalid);
        }
        for _ in n..3 {
            millis *= 10;
        }
        fraction_digits = n.min(9) as u8;
    }
    let t = TimeOfDay {
        hour,
        minute,
        second,
        millis: millis as u16,
        fraction_digits,
        offset_minutes: 0,
    };
    Ok((t, end))
}

/// `Z` or `(+|-)hh:mm` (hh ≤ 14), ending the string.
fn offset_at(b: &[u8], at: usize) -> Result<i16, Invalid> {
    match b.get(at) {
        Some(b'Z') if b.len() == at + 1 => Ok(0),
        Some(&sign @ (b'+' | b'-')) if b.len() == at + 6 => {
            let h = digits(b, at + 1, 2)? as i16;
            expect(b, at + 3, b':')?;
            let m = digits(b, at + 4, 2)? as i16;
            if h > 14 || m > 59 || (h == 14 && m != 0) {
                return Err(Invalid);
            }
            let off = h * 60 + m;
            Ok(if sign == b'-' { -off } else { off })
        }
        _ => Err(Invalid),
    }
}

fn digits(b: &[u8], at: usize, n: usize) -> Result<u32, Invalid> {
    let s = b.get(at..at + n).ok_or(Invalid)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return Err(Invalid);
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Ok(v)
}

fn expect(b: &[u8], at: usize, c: u8) -> Result<(), Invalid> {
    if b.get(at) == Some(&c) {
        Ok(())
    } else {
        Err(Invalid)
    }
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u8) -> u8 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

const DAY_MS: i64 = 86_400_000;

impl DateTime {
    /// The half-open range `[low, high)` of epoch milliseconds the value stands for. A date
    /// without a timezone is taken in UTC (R4 leaves it to the server; HAPI does the same).
    pub fn range(&self) -> (i64, i64) {
        match (self.month, self.day, self.time) {
            (None, _, _) => (
                days_from_civil(self.year, 1, 1) * DAY_MS,
                days_from_civil(self.year + 1, 1, 1) * DAY_MS,
            ),
            (Some(m), None, _) => {
                let (ny, nm) = if m == 12 {
                    (self.year + 1, 1)
                } else {
                    (self.year, m + 1)
                };
                (
                    days_from_civil(self.year, m, 1) * DAY_MS,
                    days_from_civil(ny, nm, 1) * DAY_MS,
                )
            }
            (Some(m), Some(d), None) => {
                let low = days_from_civil(self.year, m, d) * DAY_MS;
                (low, low + DAY_MS)
            }
            (Some(m), Some(d), Some(t)) => {
                let secs =
                    i64::from(t.hour) * 3600 + i64::from(t.minute) * 60 + i64::from(t.second)
                        - i64::from(t.offset_minutes) * 60;
                let low =
                    days_from_civil(self.year, m, d) * DAY_MS + secs * 1000 + i64::from(t.millis);
                // Seconds precision covers the whole second; any fraction is taken to the millisecond.
                let width = if t.fraction_digits == 0 { 1000 } else { 1 };
                (low, low + width)
            }
        }
    }
}

/// Formats epoch milliseconds as a FHIR `instant` in UTC with millisecond precision.
pub fn format_instant(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    let (h, rem) = (rem / 3_600_000, rem % 3_600_000);
    let (mi, rem) = (rem / 60_000, rem % 60_000);
    let (s, milli) = (rem / 1000, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// The current time in epoch milliseconds.
pub fn now_millis() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_every_precision_are_ranges() {
        let year = parse_date_time("2024").unwrap().range();
        assert_eq!(format_instant(year.0), "2024-01-01T00:00:00.000Z");
        assert_eq!(format_instant(year.1), "2025-01-01T00:00:00.000Z");
        let month = parse_date_time("2024-12").unwrap().range();
        assert_eq!(format_instant(month.1), "2025-01-01T00:00:00.000Z");
        let t = parse_date_time("2024-03-01T07:30:00+07:00")
            .unwrap()
            .range();
        assert_eq!(format_instant(t.0), "2024-03-01T00:30:00.000Z");
        assert_eq!(t.1 - t.0, 1000);
        let f = parse_date_time("2024-03-01T00:00:00.25Z").unwrap().range();
        assert_eq!(format_instant(f.0), "2024-03-01T00:00:00.250Z");
    }

    #[test]
    fn invalid_dates_are_refused() {
        for s in [
            "24",
            "2024-13",
            "2023-02-29",
            "2024-01-01T10:00",
            "2024-01-01T10:00:00",
            "2024-01-01T10:00:00+15:00",
            "2024-01-01T10:00:00.Z",
            "2024-1-01",
            "0000",
        ] {
            assert!(parse_date_time(s).is_err(), "{s}");
        }
    }

    #[test]
    fn instants_round_trip_through_epoch_millis() {
        for ms in [0i64, 1_700_000_000_123, -86_400_001, 951_782_400_000] {
            let s = format_instant(ms);
            assert_eq!(parse_instant(&s).unwrap().range().0, ms, "{s}");
        }
    }
}
