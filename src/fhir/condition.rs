//! Search criteria of conditional interactions (`If-None-Exist`, conditional update and delete,
//! conditional references in transactions). Until full search arrives, `identifier` and `_id`.

use crate::error::{Error, Result};
use crate::store::Session;

/// A parsed condition: every clause must hold (repeated parameters AND, commas OR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    clauses: Vec<Clause>,
    /// The normalised text, for locking concurrent writers that test the same condition.
    key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Clause {
    /// `identifier=[system]|value`, any of them. `None` system: any system.
    Identifier(Vec<(Option<String>, String)>),
    /// `_id=a,b`.
    Id(Vec<String>),
}

impl Condition {
    /// Parses a query string (`identifier=http://x|123&_id=a`).
    pub fn parse(query: &str) -> Result<Condition> {
        let mut clauses = Vec::new();
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if pairs.is_empty() {
            return Err(Error::invalid(
                "invalid",
                "the condition has no search parameters",
            ));
        }
        pairs.sort();
        for (name, value) in &pairs {
            if value.is_empty() {
                return Err(Error::invalid(
                    "invalid",
                    format!("search parameter '{name}' has no value"),
                ));
            }
            match name.as_str() {
                "identifier" => {
                    let mut any = Vec::new();
                    for v in split_or(value) {
                        any.push(match v.split_once('|') {
                            Some((_, "")) => {
                                return Err(Error::NotImplemented(
                                    "identifier=system| (any value of a system) arrives with search".into(),
                                ));
                            }
                            Some((sys, code)) => (Some(sys.to_string()), code.to_string()),
                            None => (None, v),
                        });
                    }
                    clauses.push(Clause::Identifier(any));
                }
                "_id" => clauses.push(Clause::Id(split_or(value))),
                other => {
                    return Err(Error::invalid(
                        "not-supported",
                        format!(
                            "search parameter '{other}' is not supported in conditions yet (supported: identifier, _id)"
                        ),
                    ));
                }
            }
        }
        let key = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        Ok(Condition { clauses, key })
    }

    /// Ids of the live resources of `ty` that meet the condition (at most `limit`).
    pub fn matches(&self, s: &mut Session<'_>, ty: &str, limit: i64) -> Result<Vec<String>> {
        let mut result: Option<Vec<String>> = None;
        for clause in &self.clauses {
            let mut ids: Vec<String> = Vec::new();
            match clause {
                Clause::Identifier(any) => {
                    for (system, code) in any {
                        ids.extend(s.find_by_token(
                            ty,
                            "identifier",
                            system.as_deref(),
                            code,
                            limit + 1,
                        )?);
                    }
                }
                Clause::Id(list) => {
                    let refs: Vec<&str> = list.iter().map(String::as_str).collect();
                    ids.extend(s.live_ids(ty, &refs)?);
                }
            }
            ids.sort();
            ids.dedup();
            result = Some(match result {
                None => ids,
                Some(prev) => prev
                    .into_iter()
                    .filter(|i| ids.binary_search(i).is_ok())
                    .collect(),
            });
        }
        let mut ids = result.unwrap_or_default();
        ids.truncate(limit as usize);
        Ok(ids)
    }

    /// A 64-bit key (FNV-1a of type and condition), stable across processes and versions.
    pub fn lock_key(&self, ty: &str) -> i64 {
        crate::store::fnv1a(&[ty.as_bytes(), b"?", self.key.as_bytes()])
    }
}

/// Splits a value on commas not escaped with a backslash (R4 §3.1.1.5.7).
fn split_or(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|s| !s.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_identifier_and_id() {
        let c = Condition::parse("identifier=http://x%7C123,456&_id=a").unwrap();
        assert_eq!(c.clauses.len(), 2);
        assert!(c.clauses.contains(&Clause::Identifier(vec![
            (Some("http://x".into()), "123".into()),
            (None, "456".into())
        ])));
        assert!(Condition::parse("name=x").is_err());
        assert!(Condition::parse("").is_err());
        assert_eq!(
            Condition::parse("_id=a&identifier=b")
                .unwrap()
                .lock_key("Patient"),
            Condition::parse("identifier=b&_id=a")
                .unwrap()
                .lock_key("Patient")
        );
    }
}
