//! Partial dates, date-times and times as FHIRPath sees them: each value has a precision, and
//! comparing values of different precision may be indeterminate (empty).

use std::cmp::Ordering;
use std::fmt;

/// How much of a date/time value is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

/// A date, date-time or time (which one is told by the `Item` variant holding it). Fields
/// beyond `precision` are zero; a time uses only the time fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temporal {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// Fraction of the second in nanoseconds (meaningful at `Millisecond` precision).
    pub nanos: u32,
    /// Digits written for the fraction (1 to 9), for display.
    pub frac_digits: u8,
    pub precision: Precision,
    /// Offset from UTC in minutes, if the value has a timezone.
    pub tz: Option<i16>,
}

impl Temporal {
    fn empty(precision: Precision) -> Temporal {
        Temporal {
            year: 0,
            month: 0,
            day: 0,
            hour: 0,
            minute: 0,
            second: 0,
            nanos: 0,
            frac_digits: 0,
            precision,
            tz: None,
        }
    }

    /// The current instant, in UTC with millisecond precision.
    pub fn now() -> Temporal {
        let (secs, nanos) = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
        {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(_) => (0, 0),
        };
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        Temporal {
            year: y,
            month: m,
            day: d,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            nanos: nanos / 1_000_000 * 1_000_000,
            frac_digits: 3,
            precision: Precision::Millisecond,
            tz: Some(0),
        }
    }

    /// The same value cut to `p` (no effect if already coarser).
    pub fn truncated(mut self, p: Precision) -> Temporal {
        if p >= self.precision {
            return self;
        }
        self.precision = p;
        if p < Precision::Millisecond {
            self.nanos = 0;
            self.frac_digits = 0;
        }
        if p < Precision::Second {
            self.second = 0;
        }
        if p < Precision::Minute {
            self.minute = 0;
        }
        if p < Precision::Hour {
            self.hour = 0;
            self.tz = None;
        }
        if p < Precision::Day {
            self.day = 0;
        }
        if p < Precision::Month {
            self.month = 0;
        }
        self
    }

    /// Parses a date or date-time: `YYYY[-MM[-DD]][T[hh[:mm[:ss[.f+]]]][Z|±hh:mm]]`. Returns the
    /// value and whether a `T` was present. Stricter FHIR rules (seconds and timezone required
    /// with a time) are not enforced: FHIRPath literals allow partial times.
    pub fn parse_date_time(s: &str) -> Option<(Temporal, bool)> {
        let b = s.as_bytes();
        let mut t = Temporal::empty(Precision::Year);
        let mut i = 0;
        t.year = digits(b, &mut i, 4)? as i32;
        if peek(b, i) == Some(b'-') {
            i += 1;
            t.month = digits(b, &mut i, 2)? as u8;
            if !(1..=12).contains(&t.month) {
                return None;
            }
            t.precision = Precision::Month;
            if peek(b, i) == Some(b'-') {
                i += 1;
                t.day = digits(b, &mut i, 2)? as u8;
                if t.day == 0 || t.day > days_in_month(t.year, t.month) {
                    return None;
                }
                t.precision = Precision::Day;
            }
        }
        let mut has_t = false;
        if peek(b, i) == Some(b'T') {
            has_t = true;
            i += 1;
            if i < b.len() && b[i].is_ascii_digit() {
                if t.precision != Precision::Day {
                    return None;
                }
                parse_time_fields(b, &mut i, &mut t)?;
                if i < b.len() {
                    t.tz = Some(parse_tz(b, &mut i)?);
                }
            }
        }
        if i != b.len() {
            return None;
        }
        Some((t, has_t))
    }

    /// Parses a time `hh[:mm[:ss[.f+]]]` (no timezone).
    pub fn parse_time(s: &str) -> Option<Temporal> {
        let b = s.as_bytes();
        let mut t = Temporal::empty(Precision::Hour);
        let mut i = 0;
        parse_time_fields(b, &mut i, &mut t)?;
        if i != b.len() {
            return None;
        }
        Some(t)
    }

    /// Minutes since the epoch of the date and time fields, shifted to UTC by the timezone.
    fn utc_minutes(&self) -> i64 {
        let days = days_from_civil(self.year, self.month.max(1), self.day.max(1));
        days * 1440 + self.hour as i64 * 60 + self.minute as i64 - self.tz.unwrap_or(0) as i64
    }

    fn set_from_minutes(&mut self, minutes: i64) {
        let days = minutes.div_euclid(1440);
        let rem = minutes.rem_euclid(1440);
        let (y, m, d) = civil_from_days(days);
        self.year = y;
        self.month = m;
        self.day = d;
        self.hour = (rem / 60) as u8;
        self.minute = (rem % 60) as u8;
    }

    /// The value shifted to UTC (when it has a time and a timezone).
    fn to_utc(self) -> Temporal {
        match self.tz {
            Some(off) if off != 0 && self.precision >= Precision::Hour => {
                let mut t = self;
                t.set_from_minutes(self.utc_minutes());
                t.tz = Some(0);
                t
            }
            _ => self,
        }
    }

    /// FHIRPath comparison. `None` when the values differ in precision and agree up to the
    /// coarser one (the result is unknown). Seconds and milliseconds count as one precision.
    pub fn compare(&self, other: &Temporal) -> Option<Ordering> {
        let with_time = self.precision >= Precision::Hour && other.precision >= Precision::Hour;
        if with_time && self.tz.is_some() != other.tz.is_some() {
            // One local and one zoned time: the order is unknown without a default timezone.
            return None;
        }
        let (a, b) = if with_time && self.tz.is_some() {
            (self.to_utc(), other.to_utc())
        } else {
            (*self, *other)
        };
        let pa = merged(a.precision);
        let pb = merged(b.precision);
        let common = pa.min(pb);
        let fields: [(Precision, i64, i64); 6] = [
            (Precision::Year, a.year as i64, b.year as i64),
            (Precision::Month, a.month as i64, b.month as i64),
            (Precision::Day, a.day as i64, b.day as i64),
            (Precision::Hour, a.hour as i64, b.hour as i64),
            (Precision::Minute, a.minute as i64, b.minute as i64),
            (
                Precision::Second,
                a.second as i64 * 1_000_000_000 + a.nanos as i64,
                b.second as i64 * 1_000_000_000 + b.nanos as i64,
            ),
        ];
        for (p, x, y) in fields {
            if p > common {
                break;
            }
            // Times have no date fields (all zero on both sides), so those compare equal.
            match x.cmp(&y) {
                Ordering::Equal => {}
                o => return Some(o),
            }
        }
        if pa == pb {
            Some(Ordering::Equal)
        } else {
            None
        }
    }

    /// Adds an amount of a calendar unit (`year`, `month`, `week`, `day`, `hour`, `minute`,
    /// `second`, `millisecond`). Amounts finer than the value's precision are converted to its
    /// precision and truncated. `None` on overflow or an unknown unit.
    pub fn add_duration(&self, amount: f64, unit: &str) -> Option<Temporal> {
        let mut t = *self;
        let unit = calendar_unit(unit)?;
        let is_time = t.year == 0 && t.month == 0 && t.day == 0 && t.precision >= Precision::Hour;
        match unit {
            CalUnit::Year | CalUnit::Month => {
                if is_time {
                    return None;
                }
                let months = if unit == CalUnit::Year {
                    amount.trunc() as i64 * 12
                } else {
                    amount.trunc() as i64
                };
                let months = if t.precision == Precision::Year {
                    months / 12 * 12
                } else {
                    months
                };
                let total = t.year as i64 * 12 + (t.month.max(1) as i64 - 1) + months;
                let year = i32::try_from(total.div_euclid(12)).ok()?;
                if !(1..=9999).contains(&year) {
                    return None;
                }
                t.year = year;
                if t.precision >= Precision::Month {
                    t.month = (total.rem_euclid(12) + 1) as u8;
                }
                if t.precision >= Precision::Day {
                    t.day = t.day.min(days_in_month(t.year, t.month));
                }
                Some(t)
            }
            _ => {
                let nanos_per = match unit {
                    CalUnit::Week => 7 * 86_400_000_000_000i128,
                    CalUnit::Day => 86_400_000_000_000,
                    CalUnit::Hour => 3_600_000_000_000,
                    CalUnit::Minute => 60_000_000_000,
                    CalUnit::Second => 1_000_000_000,
                    _ => 1_000_000,
                };
                let delta = (amount * nanos_per as f64) as i128;
                if t.precision < Precision::Day {
                    // A year or month value: whole years (365 days) or months (30 days) only.
                    let days = delta / 86_400_000_000_000;
                    let months = if t.precision == Precision::Month {
                        days / 30
                    } else {
                        days / 365 * 12
                    };
                    return t.add_duration(months as f64, "month");
                }
                let unit_nanos: i128 = match merged(t.precision) {
                    Precision::Day => 86_400_000_000_000,
                    Precision::Hour => 3_600_000_000_000,
                    Precision::Minute => 60_000_000_000,
                    _ => 1,
                };
                let delta = delta / unit_nanos * unit_nanos;
                let day_nanos: i128 = 86_400_000_000_000;
                let base_days = if is_time {
                    0
                } else {
                    days_from_civil(t.year, t.month, t.day) as i128
                };
                let tod = t.hour as i128 * 3_600_000_000_000
                    + t.minute as i128 * 60_000_000_000
                    + t.second as i128 * 1_000_000_000
                    + t.nanos as i128;
                let total = base_days.checked_mul(day_nanos)?.checked_add(tod)? + delta;
                let days = total.div_euclid(day_nanos);
                let rem = total.rem_euclid(day_nanos);
                if !is_time {
                    let (y, m, d) = civil_from_days(i64::try_from(days).ok()?);
                    if !(1..=9999).contains(&y) {
                        return None;
                    }
                    t.year = y;
                    t.month = m;
                    t.day = d;
                }
                if t.precision >= Precision::Hour {
                    t.hour = (rem / 3_600_000_000_000) as u8;
                    t.minute = (rem / 60_000_000_000 % 60) as u8;
                    t.second = (rem / 1_000_000_000 % 60) as u8;
                    t.nanos = (rem % 1_000_000_000) as u32;
                    if t.nanos != 0 && t.precision < Precision::Millisecond {
                        t.precision = Precision::Millisecond;
                        t.frac_digits = 3;
                    }
                }
                Some(t)
            }
        }
    }

    /// Writes the date part (`YYYY[-MM[-DD]]`).
    pub fn fmt_date(&self, f: &mut impl fmt::Write) -> fmt::Result {
        write!(f, "{:04}", self.year)?;
        if self.precision >= Precision::Month {
            write!(f, "-{:02}", self.month)?;
        }
        if self.precision >= Precision::Day {
            write!(f, "-{:02}", self.day)?;
        }
        Ok(())
    }

    /// Writes the time part (`hh[:mm[:ss[.fff]]]`).
    pub fn fmt_time(&self, f: &mut impl fmt::Write) -> fmt::Result {
        write!(f, "{:02}", self.hour)?;
        if self.precision >= Precision::Minute {
            write!(f, ":{:02}", self.minute)?;
        }
        if self.precision >= Precision::Second {
            write!(f, ":{:02}", self.second)?;
        }
        if self.precision >= Precision::Millisecond {
            let digits = self.frac_digits.clamp(1, 9) as usize;
            let frac = format!("{:09}", self.nanos);
            write!(f, ".{}", &frac[..digits.clamp(3, 9)])?;
        }
        Ok(())
    }

    /// Writes the timezone (`Z` or `±hh:mm`), if any.
    pub fn fmt_tz(&self, f: &mut impl fmt::Write) -> fmt::Result {
        match self.tz {
            None => Ok(()),
            Some(0) => f.write_str("Z"),
            Some(m) => {
                let sign = if m < 0 { '-' } else { '+' };
                let m = m.unsigned_abs();
                write!(f, "{sign}{:02}:{:02}", m / 60, m % 60)
            }
        }
    }

    /// Writes a date-time (`YYYY-MM-DDThh:mm:ss.fff+hh:mm`, as far as known).
    pub fn fmt_date_time(&self, f: &mut impl fmt::Write) -> fmt::Result {
        self.fmt_date(f)?;
        if self.precision >= Precision::Hour {
            f.write_char('T')?;
            self.fmt_time(f)?;
            self.fmt_tz(f)?;
        }
        Ok(())
    }
}

fn merged(p: Precision) -> Precision {
    if p == Precision::Millisecond {
        Precision::Second
    } else {
        p
    }
}

fn peek(b: &[u8], i: usize) -> Option<u8> {
    b.get(i).copied()
}

fn digits(b: &[u8], i: &mut usize, n: usize) -> Option<u32> {
    let s = b.get(*i..*i + n)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    *i += n;
    Some(v)
}

fn parse_time_fields(b: &[u8], i: &mut usize, t: &mut Temporal) -> Option<()> {
    t.hour = digits(b, i, 2)? as u8;
    if t.hour > 23 {
        return None;
    }
    t.precision = Precision::Hour;
    if peek(b, *i) == Some(b':') {
        *i += 1;
        t.minute = digits(b, i, 2)? as u8;
        if t.minute > 59 {
            return None;
        }
        t.precision = Precision::Minute;
        if peek(b, *i) == Some(b':') {
            *i += 1;
            t.second = digits(b, i, 2)? as u8;
            if t.second > 59 {
                return None;
            }
            t.precision = Precision::Second;
            if peek(b, *i) == Some(b'.') && b.get(*i + 1).is_some_and(|c| c.is_ascii_digit()) {
                *i += 1;
                let mut n = 0u32;
                let mut count = 0u8;
                while let Some(c) = peek(b, *i).filter(|c| c.is_ascii_digit()) {
                    if count < 9 {
                        n = n * 10 + (c - b'0') as u32;
                        count += 1;
                    }
                    *i += 1;
                }
                for _ in count..9 {
                    n *= 10;
                }
                t.nanos = n;
                t.frac_digits = count;
                t.precision = Precision::Millisecond;
            }
        }
    }
    Some(())
}

fn parse_tz(b: &[u8], i: &mut usize) -> Option<i16> {
    match peek(b, *i)? {
        b'Z' => {
            *i += 1;
            Some(0)
        }
        s @ (b'+' | b'-') => {
            *i += 1;
            let h = digits(b, i, 2)?;
            if peek(b, *i) != Some(b':') {
                return None;
            }
            *i += 1;
            let m = digits(b, i, 2)?;
            if h > 14 || m > 59 {
                return None;
            }
            let v = (h * 60 + m) as i16;
            Some(if s == b'-' { -v } else { v })
        }
        _ => None,
    }
}

/// Whether `year` is a leap year in the proleptic Gregorian calendar.
pub fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// The number of days of a month (1-12).
pub fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let y = y as i64 - if m <= 2 { 1 } else { 0 };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = if m <= 2 { y + 1 } else { y };
    (y.clamp(i32::MIN as i64, i32::MAX as i64) as i32, m, d)
}

/// A calendar duration unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalUnit {
    Year,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

/// The calendar unit of a FHIRPath calendar keyword (`year`, `months`...) or of the UCUM
/// definite-duration code (`a`, `mo`, `wk`, `d`, `h`, `min`, `s`, `ms`).
pub fn calendar_unit(unit: &str) -> Option<CalUnit> {
    Some(match unit {
        "year" | "years" | "a" => CalUnit::Year,
        "month" | "months" | "mo" => CalUnit::Month,
        "week" | "weeks" | "wk" => CalUnit::Week,
        "day" | "days" | "d" => CalUnit::Day,
        "hour" | "hours" | "h" => CalUnit::Hour,
        "minute" | "minutes" | "min" => CalUnit::Minute,
        "second" | "seconds" | "s" => CalUnit::Second,
        "millisecond" | "milliseconds" | "ms" => CalUnit::Millisecond,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> Temporal {
        Temporal::parse_date_time(s).expect("valid").0
    }

    #[test]
    fn parse() {
        assert_eq!(dt("2015").precision, Precision::Year);
        assert_eq!(dt("2015-02-04T14:34:28.123+10:00").tz, Some(600));
        assert!(Temporal::parse_date_time("2015-13").is_none());
        assert!(Temporal::parse_date_time("2015-02-30").is_none());
        assert!(Temporal::parse_date_time("2015-02-04T25:00").is_none());
        assert!(Temporal::parse_date_time("2015-02-04Tx").is_none());
        assert_eq!(
            Temporal::parse_time("14:34").map(|t| t.precision),
            Some(Precision::Minute)
        );
    }

    #[test]
    fn compare() {
        assert_eq!(dt("2015").compare(&dt("2016")), Some(Ordering::Less));
        assert_eq!(dt("2015").compare(&dt("2015-02")), None);
        assert_eq!(
            dt("2015-02-04T14:00:00Z").compare(&dt("2015-02-05T00:00:00+10:00")),
            Some(Ordering::Equal)
        );
        assert_eq!(
            dt("2012-04-15T15:00:00").compare(&dt("2012-04-15T15:00:00.000")),
            Some(Ordering::Equal)
        );
    }

    #[test]
    fn add() {
        let t = dt("2014-01-31").add_duration(1.0, "month").expect("ok");
        assert_eq!((t.month, t.day), (2, 28));
        let t = dt("2014-12-31T23:30:00Z")
            .add_duration(45.0, "minutes")
            .expect("ok");
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute),
            (2015, 1, 1, 0, 15)
        );
        let mut s = String::new();
        let _ = t.fmt_date_time(&mut s);
        assert_eq!(s, "2015-01-01T00:15:00Z");
    }
}
