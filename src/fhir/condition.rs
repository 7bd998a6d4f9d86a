//! Search criteria of conditional interactions (`If-None-Exist`, conditional update and delete,
//! conditional references in transactions): any search criteria (R4 §3.1.0.8-10), checked
//! strictly, since a condition that silently ignored a parameter would match too much.

use crate::error::{Error, Result};
use crate::fhir::schema::R4;
use crate::fhir::search::query;
use crate::store::{SearchQuery, Session};

/// A parsed condition: every clause must hold (repeated parameters AND, commas OR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pairs: Vec<(String, String)>,
    /// The normalised text, for locking concurrent writers that test the same condition.
    key: String,
}

impl Condition {
    /// Parses a query string (`identifier=http://x|123&_id=a`).
    pub fn parse(query: &str) -> Result<Condition> {
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .filter(|(k, _)| k != "_format" && k != "_pretty")
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
        }
        let key = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        Ok(Condition { pairs, key })
    }

    /// Ids of the live resources of `ty` that meet the condition (at most `limit`).
    pub fn matches(&self, s: &mut Session<'_>, ty: &str, limit: i64) -> Result<Vec<String>> {
        let Some(ty) = R4.resource_type(ty) else {
            return Err(Error::NotFound(format!("'{ty}' is not a resource type")));
        };
        let spec = query::parse(Some(ty), &self.pairs, true)?;
        let rows = s.search(&SearchQuery::unsorted(spec.types, spec.filters, limit))?;
        Ok(rows.into_iter().map(|r| r.res_id).collect())
    }

    /// A 64-bit key (FNV-1a of type and condition), stable across processes and versions.
    pub fn lock_key(&self, ty: &str) -> i64 {
        crate::store::fnv1a(&[ty.as_bytes(), b"?", self.key.as_bytes()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_and_lock_on_their_normal_form() {
        assert!(Condition::parse("").is_err());
        assert!(Condition::parse("identifier=").is_err());
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
