//! Tokens of the FHIRPath grammar (N1), with their byte offsets in the source.

use super::ParseError;

/// One token. Keywords (`and`, `div`, `true`...) are plain identifiers here; the parser tells
/// them apart, because `as`, `is`, `contains` and `in` are also valid identifiers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An identifier, or a keyword.
    Ident(String),
    /// A backtick-delimited identifier (never a keyword).
    Delimited(String),
    /// A string literal, escapes resolved.
    Str(String),
    /// An integer or decimal literal, as written.
    Number(String),
    /// A long integer literal (`123L`), without the suffix.
    Long(String),
    /// A date / date-time literal, without the `@`.
    DateTime(String),
    /// A time literal, without the `@T`.
    Time(String),
    /// `%name`, `%`name`` or `%'name'`.
    Constant(String),
    /// `$this`, `$index`, `$total`, without the `$`.
    Special(String),
    /// Punctuation and operators.
    Sym(&'static str),
    /// The end of the source.
    Eof,
}

/// A token and where it starts.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: usize,
}

const SYMBOLS: [&str; 22] = [
    "<=", ">=", "!=", "!~", ".", "[", "]", "(", ")", "{", "}", ",", "+", "-", "*", "/", "&", "|",
    "<", ">", "=", "~",
];

/// Splits `src` into tokens; comments and whitespace are dropped.
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let start = i;
            i += 2;
            loop {
                if i + 1 >= b.len() {
                    return Err(ParseError::new(src, start, "unterminated comment"));
                }
                if b[i] == b'*' && b[i + 1] == b'/' {
                    i += 2;
                    break;
                }
                i += 1;
            }
            continue;
        }
        let start = i;
        let tok = if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            Tok::Ident(src[start..i].to_string())
        } else if c == b'`' {
            let (s, next) = quoted(src, i, b'`')?;
            i = next;
            Tok::Delimited(s)
        } else if c == b'\'' {
            let (s, next) = quoted(src, i, b'\'')?;
            i = next;
            Tok::Str(s)
        } else if c.is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                Tok::Number(src[start..i].to_string())
            } else if b.get(i) == Some(&b'L') {
                i += 1;
                Tok::Long(src[start..i - 1].to_string())
            } else {
                Tok::Number(src[start..i].to_string())
            }
        } else if c == b'@' {
            i += 1;
            if b.get(i) == Some(&b'T') {
                i += 1;
                let s = i;
                i = scan_datetime_chars(b, i);
                Tok::Time(src[s..i].to_string())
            } else {
                let s = i;
                i = scan_datetime_chars(b, i);
                if i == s {
                    return Err(ParseError::new(src, start, "expected a date after '@'"));
                }
                Tok::DateTime(src[s..i].to_string())
            }
        } else if c == b'%' {
            i += 1;
            match b.get(i) {
                Some(b'`') => {
                    let (s, next) = quoted(src, i, b'`')?;
                    i = next;
                    Tok::Constant(s)
                }
                Some(b'\'') => {
                    let (s, next) = quoted(src, i, b'\'')?;
                    i = next;
                    Tok::Constant(s)
                }
                Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                    let s = i;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                    Tok::Constant(src[s..i].to_string())
                }
                _ => {
                    return Err(ParseError::new(
                        src,
                        start,
                        "expected a constant name after '%'",
                    ));
                }
            }
        } else if c == b'$' {
            i += 1;
            let s = i;
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let name = &src[s..i];
            if !matches!(name, "this" | "index" | "total") {
                return Err(ParseError::new(
                    src,
                    start,
                    format!("unknown special variable '${name}'"),
                ));
            }
            Tok::Special(name.to_string())
        } else if let Some(sym) = SYMBOLS.iter().find(|s| b[i..].starts_with(s.as_bytes())) {
            i += sym.len();
            Tok::Sym(sym)
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            return Err(ParseError::new(
                src,
                start,
                format!("unexpected character '{ch}'"),
            ));
        };
        out.push(Token { tok, pos: start });
    }
    out.push(Token {
        tok: Tok::Eof,
        pos: src.len(),
    });
    Ok(out)
}

/// The characters a date/time literal may contain; the literal is validated afterwards.
fn scan_datetime_chars(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        let c = b[i];
        let ok = c.is_ascii_digit()
            || c == b'-'
            || c == b':'
            || c == b'T'
            || c == b'Z'
            || c == b'+'
            // A '.' only as a fraction of seconds, not as an invocation (`@2015T.is(...)`).
            || (c == b'.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit()));
        if !ok {
            break;
        }
        // A '-' or '+' must be followed by a digit, else it is an operator (`@2015 - 1 year`).
        if (c == b'-' || c == b'+') && !b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
            break;
        }
        i += 1;
    }
    i
}

/// Reads a quoted string or delimited identifier starting at `start` (the opening quote).
fn quoted(src: &str, start: usize, quote: u8) -> Result<(String, usize), ParseError> {
    let b = src.as_bytes();
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = b.get(i) else {
            let what = if quote == b'`' {
                "unterminated delimited identifier"
            } else {
                "unterminated string"
            };
            return Err(ParseError::new(src, start, what));
        };
        if c == quote {
            return Ok((out, i + 1));
        }
        if c == b'\\' {
            let Some(&e) = b.get(i + 1) else {
                return Err(ParseError::new(src, i, "unterminated escape"));
            };
            match e {
                b'\'' | b'"' | b'`' | b'\\' | b'/' => out.push(e as char),
                b'f' => out.push('\u{000C}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let hex = src
                        .get(i + 2..i + 6)
                        .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                        .ok_or_else(|| {
                            ParseError::new(src, i, "expected 4 hex digits after \\u")
                        })?;
                    let code = u32::from_str_radix(hex, 16)
                        .map_err(|_| ParseError::new(src, i, "invalid \\u escape"))?;
                    let mut consumed = 6;
                    let ch = if (0xD800..0xDC00).contains(&code) {
                        // A surrogate pair written as two escapes.
                        let low = src
                            .get(i + 6..i + 12)
                            .and_then(|s| s.strip_prefix("\\u"))
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                            .filter(|l| (0xDC00..0xE000).contains(l));
                        match low {
                            Some(l) => {
                                consumed = 12;
                                char::from_u32(0x10000 + ((code - 0xD800) << 10) + (l - 0xDC00))
                            }
                            None => None,
                        }
                    } else {
                        char::from_u32(code)
                    };
                    let ch = ch.ok_or_else(|| ParseError::new(src, i, "invalid \\u escape"))?;
                    out.push(ch);
                    i += consumed;
                    continue;
                }
                _ => {
                    return Err(ParseError::new(
                        src,
                        i,
                        format!("invalid escape '\\{}'", e as char),
                    ));
                }
            }
            i += 2;
            continue;
        }
        // Copy one (possibly multi-byte) character.
        let ch_len = src[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&src[i..i + ch_len]);
        i += ch_len;
    }
}
