//! Lexical rules of the R4 primitive types (FHIR R4 §2.24.0.1, "Primitive Types").
//!
//! fhirbolt stores most primitives as plain strings and accepts `"birthDate": "not-a-date"`, so
//! every primitive value is checked here against the regular expression of its definition. The
//! checks are hand-written (no regex engine): they run on every element of every write.

use super::datetime;
use super::schema::Primitive;

/// Why a JSON value is not a valid instance of a primitive type.
pub type Problem = String;

/// Checks a JSON value against a primitive type: the JSON type first (boolean, number or string),
/// then the lexical form.
pub fn check(p: Primitive, value: &serde_json::Value) -> Result<(), Problem> {
    use serde_json::Value;
    match p {
        Primitive::Boolean => match value {
            Value::Bool(_) => Ok(()),
            _ => Err(format!(
                "expected a JSON boolean for type boolean, found {}",
                kind(value)
            )),
        },
        Primitive::Integer | Primitive::UnsignedInt | Primitive::PositiveInt => match value {
            Value::Number(n) => check_integer(p, &n.to_string()),
            _ => Err(format!(
                "expected a JSON number for type {}, found {}",
                p.name(),
                kind(value)
            )),
        },
        Primitive::Decimal => match value {
            Value::Number(n) => check_decimal(&n.to_string()),
            _ => Err(format!(
                "expected a JSON number for type decimal, found {}",
                kind(value)
            )),
        },
        _ => match value {
            Value::String(s) => check_str(p, s),
            _ => Err(format!(
                "expected a JSON string for type {}, found {}",
                p.name(),
                kind(value)
            )),
        },
    }
}

/// Checks the text of a primitive as XML carries it (a `value` attribute): booleans and numbers
/// are text there too.
pub fn check_text(p: Primitive, s: &str) -> Result<(), Problem> {
    match p {
        Primitive::Boolean if s == "true" || s == "false" => Ok(()),
        Primitive::Boolean => Err(format!(
            "'{}' is not a valid boolean (true or false)",
            excerpt(s)
        )),
        Primitive::Integer | Primitive::UnsignedInt | Primitive::PositiveInt => check_integer(p, s),
        Primitive::Decimal => check_decimal(s),
        _ => check_str(p, s),
    }
}

/// A short name of a JSON value's kind, for messages.
pub fn kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_integer(p: Primitive, s: &str) -> Result<(), Problem> {
    let bad = || Err(format!("'{s}' is not a valid {}", p.name()));
    let digits = match p {
        Primitive::Integer => s.strip_prefix('-').unwrap_or(s),
        Primitive::PositiveInt => s.strip_prefix('+').unwrap_or(s),
        _ => s,
    };
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return bad();
    }
    // All three are 32-bit signed in FHIR (R4 §2.24.0.1: integer range -2,147,483,648..2,147,483,647).
    let n: i64 = match s.trim_start_matches('+').parse() {
        Ok(n) => n,
        Err(_) => return bad(),
    };
    let ok = match p {
        Primitive::Integer => (i32::MIN as i64..=i32::MAX as i64).contains(&n),
        Primitive::UnsignedInt => (0..=i32::MAX as i64).contains(&n),
        _ => (1..=i32::MAX as i64).contains(&n),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{s} is out of range for {}", p.name()))
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn check_decimal(s: &str) -> Result<(), Problem> {
    let b = s.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_len = i - int_start;
    let mut ok = int_len > 0 && !(int_len > 1 && b[int_start] == b'0');
    if ok && i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        ok = i > f;
    }
    if ok && i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        ok = i > e;
    }
    if ok && i == b.len() {
        Ok(())
    } else {
        Err(format!("'{s}' is not a valid decimal"))
    }
}

fn check_str(p: Primitive, s: &str) -> Result<(), Problem> {
    let invalid = || Err(format!("'{}' is not a valid {}", excerpt(s), p.name()));
    // R4 JSON §2.6.2: string values are never empty; leave the property out instead.
    if s.is_empty() {
        return Err(format!(
            "empty string is not a valid {} (omit the element instead)",
            p.name()
        ));
    }
    let ok = match p {
        Primitive::String | Primitive::Markdown => true,
        Primitive::Xhtml => {
            return is_xhtml_div(s)
                .map_err(|why| format!("the narrative is not a well-formed XHTML div: {why}"));
        }
        Primitive::Code => is_code(s),
        Primitive::Id => {
            s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
        Primitive::Uri | Primitive::Url | Primitive::Canonical => {
            !s.chars().any(char::is_whitespace)
        }
        Primitive::Oid => is_oid(s),
        Primitive::Uuid => is_uuid_urn(s),
        Primitive::Base64Binary => is_base64(s),
        Primitive::Date => datetime::parse_date(s).is_ok(),
        Primitive::DateTime => datetime::parse_date_time(s).is_ok(),
        Primitive::Instant => datetime::parse_instant(s).is_ok(),
        Primitive::Time => datetime::parse_time(s).is_ok(),
        Primitive::Boolean
        | Primitive::Integer
        | Primitive::UnsignedInt
        | Primitive::PositiveInt
        | Primitive::Decimal => {
            return Err(format!(
                "expected a JSON {} for type {}, found a string",
                if p == Primitive::Boolean {
                    "boolean"
                } else {
                    "number"
                },
                p.name()
            ));
        }
    };
    if ok { Ok(()) } else { invalid() }
}

/// A narrative: one well-formed XHTML `div` element (R4 §2.4.0: the XHTML content of Narrative).
fn is_xhtml_div(s: &str) -> Result<(), String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(s);
    reader.check_end_names(true);
    let mut depth = 0usize;
    let mut roots = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if depth == 0 {
                    roots += 1;
                    if e.local_name().as_ref() != b"div" {
                        return Err("the root element must be div".into());
                    }
                }
                depth += 1;
            }
            Ok(Event::Empty(e)) => {
                if depth == 0 {
                    roots += 1;
                    if e.local_name().as_ref() != b"div" {
                        return Err("the root element must be div".into());
                    }
                }
            }
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Text(t)) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => {
                return Err("text outside the div".into());
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    match (roots, depth) {
        (1, 0) => Ok(()),
        (0, _) => Err("no div element".into()),
        (_, 0) => Err("more than one root element".into()),
        _ => Err("an element is not closed".into()),
    }
}

/// `[^\s]+(\s[^\s]+)*`: no leading, trailing or doubled whitespace.
fn is_code(s: &str) -> bool {
    let mut prev_space = true;
    for c in s.chars() {
        let space = c.is_whitespace();
        if space && prev_space {
            return false;
        }
        prev_space = space;
    }
    !prev_space
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut parts = rest.split('.');
    let first_ok = matches!(parts.next(), Some("0" | "1" | "2"));
    let mut n = 0;
    for p in parts {
        n += 1;
        if p.is_empty()
            || !p.bytes().all(|b| b.is_ascii_digit())
            || (p.len() > 1 && p.starts_with('0'))
        {
            return false;
        }
    }
    first_ok && n > 0
}

/// `urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`
pub fn is_uuid_urn(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`: groups of four base64 characters, whitespace allowed between.
fn is_base64(s: &str) -> bool {
    let mut n = 0usize;
    for b in s.bytes() {
        if b.is_ascii_whitespace() {
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=') {
            return false;
        }
        n += 1;
    }
    n > 0 && n.is_multiple_of(4)
}

/// At most 40 characters of a value, for messages (values may be personal data: keep them short).
fn excerpt(s: &str) -> String {
    if s.chars().count() <= 40 {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(40).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn primitives_follow_the_r4_regular_expressions() {
        let cases: &[(Primitive, serde_json::Value, bool)] = &[
            (Primitive::Boolean, json!(true), true),
            (Primitive::Boolean, json!("true"), false),
            (Primitive::Integer, json!(-12), true),
            (Primitive::Integer, json!(2147483648u64), false),
            (Primitive::Integer, json!(1.5), false),
            (Primitive::UnsignedInt, json!(0), true),
            (Primitive::UnsignedInt, json!(-1), false),
            (Primitive::PositiveInt, json!(0), false),
            (Primitive::PositiveInt, json!(7), true),
            (Primitive::Decimal, json!(1.50), true),
            (Primitive::Decimal, json!("1.5"), false),
            (Primitive::Code, json!("final"), true),
            (Primitive::Code, json!(" final"), false),
            (Primitive::Code, json!("a  b"), false),
            (Primitive::Id, json!("abc-1.2"), true),
            (Primitive::Id, json!("abc_1"), false),
            (Primitive::Id, json!("a".repeat(65)), false),
            (Primitive::Uri, json!("http://x.org/a"), true),
            (Primitive::Uri, json!("http://x.org/a b"), false),
            (Primitive::Oid, json!("urn:oid:1.2.3"), true),
            (Primitive::Oid, json!("urn:oid:1.02"), false),
            (
                Primitive::Uuid,
                json!("urn:uuid:c757873d-ec9a-4326-a141-556f43239520"),
                true,
            ),
            (
                Primitive::Uuid,
                json!("urn:uuid:C757873D-ec9a-4326-a141-556f43239520"),
                false,
            ),
            (Primitive::Base64Binary, json!("aGVsbG8="), true),
            (Primitive::Base64Binary, json!("aGVsbG8"), false),
            (Primitive::Date, json!("2024-02-29"), true),
            (Primitive::Date, json!("2023-02-29"), false),
            (Primitive::Date, json!("not-a-date"), false),
            (
                Primitive::DateTime,
                json!("2024-01-01T10:00:00+07:00"),
                true,
            ),
            (Primitive::DateTime, json!("2024-01-01T10:00:00"), false),
            (Primitive::Instant, json!("2024-01-01T10:00:00.123Z"), true),
            (Primitive::Instant, json!("2024-01-01"), false),
            (Primitive::Time, json!("23:59:60"), true),
            (Primitive::Time, json!("24:00:00"), false),
            (Primitive::String, json!(""), false),
            (Primitive::String, json!("Nguyễn Văn A"), true),
            (
                Primitive::Xhtml,
                json!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>a <b>b</b></p></div>"),
                true,
            ),
            (Primitive::Xhtml, json!("<div><p>unclosed</div>"), false),
            (Primitive::Xhtml, json!("<p>not a div</p>"), false),
        ];
        for (p, v, ok) in cases {
            assert_eq!(check(*p, v).is_ok(), *ok, "{p:?} {v}");
        }
    }
}
