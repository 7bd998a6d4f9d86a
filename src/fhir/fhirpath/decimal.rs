//! A small exact decimal for FHIRPath `Decimal` values: an `i128` mantissa and a decimal scale.
//!
//! FHIR decimals are exact (the lexical text is significant), so floating point would lose
//! information that comparison, equality and arithmetic on search values need. The range
//! (about 38 significant digits) is larger than the 28 digits FHIRPath requires; an operation
//! whose result does not fit returns `None`, which the evaluator turns into an error.

use std::cmp::Ordering;
use std::fmt;

/// The largest scale kept; results of division and multiplication are rounded to it.
const MAX_SCALE: u32 = 28;

/// An exact decimal number: `mantissa × 10^-scale`.
#[derive(Debug, Clone, Copy)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

impl Decimal {
    /// A decimal from an integer.
    pub fn from_i64(v: i64) -> Decimal {
        Decimal {
            mantissa: v as i128,
            scale: 0,
        }
    }

    /// Builds `mantissa × 10^-scale`.
    pub fn new(mantissa: i128, scale: u32) -> Decimal {
        Decimal { mantissa, scale }
    }

    /// Parses FHIR / FHIRPath / JSON decimal text: an optional sign, digits, an optional
    /// fraction and an optional exponent (`1.50`, `-0.5`, `1e3`, `2.5E-2`).
    pub fn parse(s: &str) -> Option<Decimal> {
        let b = s.as_bytes();
        let mut i = 0;
        let neg = match b.first() {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let mut mantissa: i128 = 0;
        let mut scale: i64 = 0;
        let mut digits = 0usize;
        let mut seen_dot = false;
        let mut dropped = false;
        while i < b.len() {
            let c = b[i];
            if c.is_ascii_digit() {
                digits += 1;
                match mantissa
                    .checked_mul(10)
                    .and_then(|m| m.checked_add((c - b'0') as i128))
                {
                    Some(m) if !dropped => {
                        mantissa = m;
                        if seen_dot {
                            scale += 1;
                        }
                    }
                    _ => {
                        // Too many digits: keep the leading ones (the value is truncated).
                        dropped = true;
                        if !seen_dot {
                            scale -= 1;
                        }
                    }
                }
            } else if c == b'.' && !seen_dot {
                seen_dot = true;
            } else {
                break;
            }
            i += 1;
        }
        if digits == 0 {
            return None;
        }
        if i < b.len() {
            if b[i] != b'e' && b[i] != b'E' {
                return None;
            }
            let exp: i64 = s.get(i + 1..)?.parse().ok()?;
            if !(-400..=400).contains(&exp) {
                return None;
            }
            scale -= exp;
        }
        if neg {
            mantissa = -mantissa;
        }
        let mut d = Decimal { mantissa, scale: 0 };
        if scale >= 0 {
            d.scale = scale as u32;
            if d.scale > 60 {
                return d.rescale(MAX_SCALE);
            }
            Some(d)
        } else {
            let f = pow10((-scale) as u32)?;
            d.mantissa = d.mantissa.checked_mul(f)?;
            Some(d)
        }
    }

    /// The number of digits after the decimal point.
    pub fn scale(self) -> u32 {
        self.scale
    }

    /// The value as an integer, if it has no fractional part and fits.
    pub fn to_i64(self) -> Option<i64> {
        let n = self.normalized();
        if n.scale != 0 {
            return None;
        }
        i64::try_from(n.mantissa).ok()
    }

    /// An approximation as `f64` (for `sqrt`, `ln` and friends).
    pub fn to_f64(self) -> f64 {
        self.to_string().parse().unwrap_or(f64::NAN)
    }

    /// The decimal nearest to a finite `f64`, rounded to `MAX_SCALE` digits at most.
    pub fn from_f64(v: f64) -> Option<Decimal> {
        if !v.is_finite() {
            return None;
        }
        let d = Decimal::parse(&format!("{v:.15e}"))?;
        Some(d.normalized())
    }

    /// The same value with trailing fractional zeros removed.
    pub fn normalized(self) -> Decimal {
        let mut d = self;
        while d.scale > 0 && d.mantissa % 10 == 0 {
            d.mantissa /= 10;
            d.scale -= 1;
        }
        d
    }

    /// Rounds (half away from zero) or extends to exactly `scale` fractional digits.
    pub fn rescale(self, scale: u32) -> Option<Decimal> {
        match scale.cmp(&self.scale) {
            Ordering::Equal => Some(self),
            Ordering::Greater => Some(Decimal {
                mantissa: self.mantissa.checked_mul(pow10(scale - self.scale)?)?,
                scale,
            }),
            Ordering::Less => {
                let diff = self.scale - scale;
                let Some(f) = pow10(diff) else {
                    return Some(Decimal::new(0, scale));
                };
                let q = self.mantissa / f;
                let r = self.mantissa % f;
                let q = if r.abs() * 2 >= f {
                    q + self.mantissa.signum()
                } else {
                    q
                };
                Some(Decimal { mantissa: q, scale })
            }
        }
    }

    /// Drops the fractional digits beyond `scale` (toward zero).
    pub fn truncate_to(self, scale: u32) -> Decimal {
        if scale >= self.scale {
            return self;
        }
        match pow10(self.scale - scale) {
            Some(f) => Decimal {
                mantissa: self.mantissa / f,
                scale,
            },
            None => Decimal::new(0, scale),
        }
    }

    /// The largest integer not greater than the value.
    pub fn floor(self) -> Decimal {
        let t = self.truncate_to(0);
        if self.mantissa < 0 && t.cmp_value(self) != Ordering::Equal {
            Decimal::new(t.mantissa - 1, 0)
        } else {
            t
        }
    }

    /// The smallest integer not less than the value.
    pub fn ceiling(self) -> Decimal {
        let t = self.truncate_to(0);
        if self.mantissa > 0 && t.cmp_value(self) != Ordering::Equal {
            Decimal::new(t.mantissa + 1, 0)
        } else {
            t
        }
    }

    /// Whether the value is zero.
    pub fn is_zero(self) -> bool {
        self.mantissa == 0
    }

    /// Whether the value is below zero.
    pub fn is_negative(self) -> bool {
        self.mantissa < 0
    }

    /// The absolute value.
    pub fn abs(self) -> Decimal {
        Decimal {
            mantissa: self.mantissa.abs(),
            scale: self.scale,
        }
    }

    /// The negated value.
    pub fn negated(self) -> Decimal {
        Decimal {
            mantissa: -self.mantissa,
            scale: self.scale,
        }
    }

    fn align(a: Decimal, b: Decimal) -> Option<(i128, i128, u32)> {
        let s = a.scale.max(b.scale);
        let a2 = a.mantissa.checked_mul(pow10(s - a.scale)?)?;
        let b2 = b.mantissa.checked_mul(pow10(s - b.scale)?)?;
        Some((a2, b2, s))
    }

    /// Exact sum.
    pub fn checked_add(self, o: Decimal) -> Option<Decimal> {
        let (a, b, s) = Decimal::align(self, o)?;
        Some(Decimal::new(a.checked_add(b)?, s))
    }

    /// Exact difference.
    pub fn checked_sub(self, o: Decimal) -> Option<Decimal> {
        self.checked_add(o.negated())
    }

    /// Product, rounded to `MAX_SCALE` fractional digits.
    pub fn checked_mul(self, o: Decimal) -> Option<Decimal> {
        let mut a = self.normalized();
        let mut b = o.normalized();
        loop {
            if let Some(m) = a.mantissa.checked_mul(b.mantissa) {
                let d = Decimal::new(m, a.scale + b.scale);
                return if d.scale > MAX_SCALE {
                    d.rescale(MAX_SCALE)
                } else {
                    Some(d)
                };
            }
            // Lose precision from the operand with the most fractional digits.
            if a.scale >= b.scale && a.scale > 0 {
                a = a.rescale(a.scale - 1)?;
            } else if b.scale > 0 {
                b = b.rescale(b.scale - 1)?;
            } else {
                return None;
            }
        }
    }

    /// Quotient with up to `MAX_SCALE` fractional digits (trailing zeros removed); `None` when
    /// dividing by zero or on overflow.
    pub fn checked_div(self, o: Decimal) -> Option<Decimal> {
        if o.mantissa == 0 {
            return None;
        }
        let a = self.normalized();
        let b = o.normalized();
        // result = a.m × 10^k / b.m, with scale a.s - b.s + k; k as large as fits.
        let mut k = (MAX_SCALE as i64 - (a.scale as i64 - b.scale as i64)).max(0);
        let num = loop {
            if let Some(n) = pow10(k as u32).and_then(|f| a.mantissa.checked_mul(f)) {
                break n;
            }
            if k == 0 {
                return None;
            }
            k -= 1;
        };
        let mut q = num / b.mantissa;
        let r = num % b.mantissa;
        if r.unsigned_abs().saturating_mul(2) >= b.mantissa.unsigned_abs() {
            q += if (num < 0) == (b.mantissa < 0) { 1 } else { -1 };
        }
        let scale = a.scale as i64 - b.scale as i64 + k;
        if scale < 0 {
            let f = pow10((-scale) as u32)?;
            return Some(Decimal::new(q.checked_mul(f)?, 0));
        }
        let d = Decimal::new(q, scale as u32);
        let d = if d.scale > MAX_SCALE {
            d.rescale(MAX_SCALE)?
        } else {
            d
        };
        Some(d.normalized())
    }

    /// Truncated division (`div`): the integer part of the quotient.
    pub fn div_trunc(self, o: Decimal) -> Option<Decimal> {
        let (a, b, _) = Decimal::align(self, o)?;
        if b == 0 {
            return None;
        }
        Some(Decimal::new(a / b, 0))
    }

    /// Remainder of truncated division (`mod`).
    pub fn checked_rem(self, o: Decimal) -> Option<Decimal> {
        let (a, b, s) = Decimal::align(self, o)?;
        if b == 0 {
            return None;
        }
        Some(Decimal::new(a % b, s))
    }

    /// Numeric comparison (trailing zeros are insignificant).
    pub fn cmp_value(self, o: Decimal) -> Ordering {
        match Decimal::align(self, o) {
            Some((a, b, _)) => a.cmp(&b),
            // Alignment overflows only when the scales differ wildly: compare as floats.
            None => self
                .to_f64()
                .partial_cmp(&o.to_f64())
                .unwrap_or(Ordering::Equal),
        }
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.mantissa < 0;
        let digits = self.mantissa.unsigned_abs().to_string();
        let scale = self.scale as usize;
        if neg {
            f.write_str("-")?;
        }
        if scale == 0 {
            return f.write_str(&digits);
        }
        if digits.len() > scale {
            let (int, frac) = digits.split_at(digits.len() - scale);
            write!(f, "{int}.{frac}")
        } else {
            write!(f, "0.{}{digits}", "0".repeat(scale - digits.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).expect("valid decimal")
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(d("1.50").to_string(), "1.50");
        assert_eq!(d("-0.05").to_string(), "-0.05");
        assert_eq!(d("1e3").to_string(), "1000");
        assert_eq!(d("2.5E-2").to_string(), "0.025");
        assert!(Decimal::parse("abc").is_none());
        assert!(Decimal::parse("1.2.3").is_none());
        assert!(Decimal::parse("").is_none());
        assert!(Decimal::parse("1e999999").is_none());
    }

    #[test]
    fn arithmetic() {
        assert_eq!(
            d("0.1").checked_add(d("0.2")).map(|x| x.to_string()),
            Some("0.3".into())
        );
        assert_eq!(
            d("1")
                .checked_div(d("3"))
                .map(|x| x.to_string())
                .map(|s| s.len()),
            Some(30)
        );
        assert_eq!(
            d("10").checked_div(d("4")).map(|x| x.to_string()),
            Some("2.5".into())
        );
        assert_eq!(
            d("5.5").div_trunc(d("0.7")).map(|x| x.to_string()),
            Some("7".into())
        );
        assert_eq!(
            d("5.5").checked_rem(d("0.7")).map(|x| x.to_string()),
            Some("0.6".into())
        );
        assert!(d("1").checked_div(d("0")).is_none());
        assert_eq!(
            d("1.25").rescale(1).map(|x| x.to_string()),
            Some("1.3".into())
        );
        assert_eq!(d("-1.5").floor().to_string(), "-2");
        assert_eq!(d("1.1").ceiling().to_string(), "2");
        assert_eq!(d("1.0").cmp_value(d("1")), Ordering::Equal);
    }
}
