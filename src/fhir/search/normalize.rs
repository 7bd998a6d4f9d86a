//! String search normalisation: lower case, diacritics folded, so that `name=nguyen` finds
//! "Nguyễn" and `name=DUC` finds "Đức" (R4 §3.1.1.5.3: string search is case- and
//! accent-insensitive).

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Longest normalised or exact value kept in the index, in bytes (longer values are cut at a
/// character boundary: a search matches on the first part of a long text).
pub const MAX_INDEXED: usize = 512;

/// Folds a string for the index and for search values: NFD, combining marks dropped (Vietnamese
/// tone marks and the circumflex, breve and horn of â ă ê ô ơ ư), `đ` to `d`, lower case,
/// runs of white space to one space, trimmed.
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.nfd() {
        if is_combining_mark(c) {
            continue;
        }
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        match c {
            'đ' | 'Đ' => out.push('d'),
            c if c.is_ascii() => out.push(c.to_ascii_lowercase()),
            c => out.extend(c.to_lowercase()),
        }
        if out.len() >= MAX_INDEXED {
            break;
        }
    }
    truncate(out)
}

/// Cuts a value to [`MAX_INDEXED`] bytes at a character boundary.
pub fn truncate(mut s: String) -> String {
    if s.len() > MAX_INDEXED {
        let mut end = MAX_INDEXED;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_vietnamese() {
        assert_eq!(normalize("Nguyễn Văn An"), "nguyen van an");
        assert_eq!(normalize("Đặng Thị Ngọc Ánh"), "dang thi ngoc anh");
        assert_eq!(normalize("Trương Ưng Ơn"), "truong ung on");
        assert_eq!(normalize("  Lê   Đức\tThọ "), "le duc tho");
        // Precomposed and decomposed input fold the same.
        assert_eq!(normalize("Nguye\u{302}\u{303}n"), "nguyen");
    }

    #[test]
    fn cuts_long_values_on_a_boundary() {
        let long = "ễ".repeat(400);
        let n = normalize(&long);
        assert!(n.len() <= MAX_INDEXED);
        let t = truncate("ễ".repeat(400));
        assert!(t.len() <= MAX_INDEXED && t.is_char_boundary(t.len()));
    }
}
