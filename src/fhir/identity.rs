//! One citizen, one record: no two active Patients carry the same citizen ID (the personal
//! identification number of Luật Căn cước 26/2023/QH15 Đ12, the person's medical ID since
//! NĐ 102/2025 Đ6). One person's history scattered over two records is dangerous, so a write that
//! would make a second active holder is refused (409) and a conditional create returns the holder.
//!
//! Not a `UNIQUE` constraint: a number can be cancelled and re-established (NĐ 70/2024 Đ11 k7)
//! and a merged or retired record keeps its identifiers, so the rule holds among *active*
//! Patients only (those whose `active` is not false). Writers that claim a citizen ID lock it
//! (PostgreSQL advisory lock; SQLite's one writer serialises them anyway) before they look for a
//! holder, so two hospitals pushing the same person at the same moment cannot both create.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde_json::Value;

use super::outcome::Issue;
use super::vn_rules::CITIZEN_ID;
use crate::error::{Error, Result};
use crate::store::{IndexRows, Session, fnv1a};

/// The citizen IDs a version of `ty` claims: those of an active Patient, from its index rows.
pub fn claims<'r>(ty: &str, rows: &'r IndexRows) -> Vec<&'r str> {
    if ty != "Patient" {
        return Vec::new();
    }
    claimed(
        rows.tokens
            .iter()
            .filter(|t| t.param == "active" || t.system == CITIZEN_ID)
            .map(|t| (t.param, t.code.as_str())),
    )
}

/// What a Patient's previous version claimed, from its `(param, code)` token rows as
/// `Session::retire_returning` gives them.
pub fn prior_claims(rows: Vec<(String, String)>) -> Vec<String> {
    claimed(rows.iter().map(|(p, c)| (p.as_str(), c.as_str())))
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// The rule of both: the `identifier` codes of a Patient (given `(param, code)` of its `active`
/// tokens and its citizen-ID `identifier` tokens), none if it is inactive.
fn claimed<'r>(pairs: impl Iterator<Item = (&'r str, &'r str)> + Clone) -> Vec<&'r str> {
    if pairs.clone().any(|(p, c)| p == "active" && c == "false") {
        return Vec::new();
    }
    pairs
        .filter(|(p, _)| *p == "identifier")
        .map(|(_, c)| c)
        .collect()
}

/// One version about to be written that may claim citizen IDs.
pub(crate) struct Claim<'a> {
    pub ty: &'a str,
    pub id: &'a str,
    pub rows: &'a IndexRows,
    /// The stored JSON, to point at the identifier in an error.
    pub body: &'a str,
    /// The transaction entry it comes from, if any (for the error's location).
    pub entry: Option<usize>,
    /// Citizen IDs already known to be this resource's to claim, not looked up again: its
    /// previous version's (see [`prior_claims`]; an update that keeps them claims nothing new),
    /// or those just checked under their lock by a conditional create.
    pub settled: &'a [String],
}

/// A citizen ID held by another active Patient.
pub(crate) struct Held {
    /// Which claim (index into the slice given to [`holders`]).
    pub claim: usize,
    pub cccd: String,
    /// The id of the Patient that holds it.
    pub holder: String,
}

/// Locks the citizen IDs the claims make and returns the first that another active Patient
/// holds, or that two of the claims make for different resources.
pub(crate) fn holders(s: &mut Session<'_>, claims_: &[Claim<'_>]) -> Result<Option<Held>> {
    look_up(s, claims_, true)
}

/// As [`holders`], without locking: for a read-only look (`$validate` with `mode=create`).
pub(crate) fn holders_unlocked(s: &mut Session<'_>, claims_: &[Claim<'_>]) -> Result<Option<Held>> {
    look_up(s, claims_, false)
}

fn look_up(s: &mut Session<'_>, claims_: &[Claim<'_>], lock: bool) -> Result<Option<Held>> {
    let wanted = wanted(claims_);
    if wanted.is_empty() {
        return Ok(None);
    }
    if lock {
        let mut keys: Vec<i64> = wanted.iter().map(|(_, v)| lock_key(v)).collect();
        s.lock_keys(&mut keys)?;
    }
    find_holders(s, claims_, &wanted)
}

/// Each citizen ID the claims make, with the index of its claim.
fn wanted<'c>(claims_: &'c [Claim<'_>]) -> Vec<(usize, &'c str)> {
    let mut out = Vec::new();
    for (i, c) in claims_.iter().enumerate() {
        for cccd in claims(c.ty, c.rows) {
            if !c.settled.iter().any(|p| p == cccd) {
                out.push((i, cccd));
            }
        }
    }
    out
}

fn find_holders(
    s: &mut Session<'_>,
    claims_: &[Claim<'_>],
    wanted: &[(usize, &str)],
) -> Result<Option<Held>> {
    // The same person twice in one request (a transaction that creates two records for them).
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(wanted.len());
    for &(i, v) in wanted {
        match first.entry(v) {
            Entry::Vacant(e) => {
                e.insert(i);
            }
            Entry::Occupied(e) if claims_[*e.get()].id != claims_[i].id => {
                return Ok(Some(Held {
                    claim: i,
                    cccd: v.to_string(),
                    holder: claims_[*e.get()].id.to_string(),
                }));
            }
            Entry::Occupied(_) => {}
        }
    }
    for (v, i) in first {
        let held = s.active_token_holders("Patient", "identifier", CITIZEN_ID, v)?;
        if let Some(holder) = held.into_iter().find(|h| h != claims_[i].id) {
            return Ok(Some(Held {
                claim: i,
                cccd: v.to_string(),
                holder,
            }));
        }
    }
    Ok(None)
}

/// Refuses the claims if any citizen ID in them is held by another active Patient: 409 with an
/// OperationOutcome naming the holder, at the identifier's place.
pub(crate) fn check(s: &mut Session<'_>, claims_: &[Claim<'_>]) -> Result<()> {
    match holders(s, claims_)? {
        None => Ok(()),
        Some(h) => Err(duplicate(&claims_[h.claim], &h)),
    }
}

pub(crate) fn duplicate(c: &Claim<'_>, h: &Held) -> Error {
    let at = serde_json::from_str::<Value>(c.body)
        .ok()
        .and_then(|v| {
            v.get("identifier")?.as_array()?.iter().position(|i| {
                i.get("system").and_then(Value::as_str) == Some(CITIZEN_ID)
                    && i.get("value").and_then(Value::as_str) == Some(h.cccd.as_str())
            })
        })
        .map_or_else(
            || ".identifier".to_string(),
            |i| format!(".identifier[{i}]"),
        );
    let at = match c.entry {
        Some(e) => format!("Bundle.entry[{e}].resource{at}"),
        None => format!("{}{at}", c.ty),
    };
    Error::Duplicate(vec![
        Issue::error(
            "duplicate",
            format!(
                "Patient/{} already holds this citizen ID: one citizen, one record. Update that \
                 Patient, or create this one conditionally (If-None-Exist: identifier={CITIZEN_ID}|{}) \
                 to be given it",
                h.holder, h.cccd
            ),
        )
        .at(at),
    ])
}

/// The lock a writer takes before it claims the citizen ID `cccd`.
pub(crate) fn lock_key(cccd: &str) -> i64 {
    fnv1a(&[CITIZEN_ID.as_bytes(), b"|", cccd.as_bytes()])
}
