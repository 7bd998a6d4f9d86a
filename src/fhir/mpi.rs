//! The master patient index: `Patient/$match` (R4 §patient-operation-match) finds the records
//! of a person, and `Patient/$merge` folds a duplicate record into the one that stays.
//!
//! Matching, strongest first: the citizen ID (one per person, for life: Luật Căn cước
//! 26/2023/QH15 Đ12) or a passport number is *certain*; the health-insurance card code is
//! *certain* too (its last ten digits are the person's lifetime social-insurance number,
//! QĐ 1351/QĐ-BHXH). Without a shared identifier, name, birth date, gender and address are
//! weighed: all of them agreeing is *probable*, name and birth date *possible*. Two records with
//! different citizen IDs are never the same person (*certainly-not*, left out).
//!
//! Merging moves every reference to the source onto the target, marks the source inactive with a
//! `replaced-by` link (R4 Patient.link), gives the target the source's identifiers and a
//! `replaces` link, and records an AuditEvent, all in one transaction.

use serde_json::{Value, json};

use super::datetime::{format_instant, now_millis};
use super::identity;
use super::interactions::{Fhir, Stored, insert, new_id, prepare, retry, update_in};
use super::links::{LinkKind, for_each_link};
use super::outcome::Issue;
use super::search::normalize::normalize;
use super::search::query::criterion;
use super::vn_rules::{CITIZEN_ID, INSURANCE_NUMBER, PASSPORT_NUMBER};
use crate::error::{Error, Result};
use crate::store::{Method, SearchQuery, Session};

/// How sure a match is (R4 `match-grade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grade {
    Certain,
    Probable,
    Possible,
}

impl Grade {
    pub fn code(self) -> &'static str {
        match self {
            Grade::Certain => "certain",
            Grade::Probable => "probable",
            Grade::Possible => "possible",
        }
    }
}

/// One record that may be the person.
#[derive(Debug, Clone)]
pub struct Match {
    pub stored: Stored,
    /// 0..1, as `Bundle.entry.search.score`.
    pub score: f64,
    pub grade: Grade,
}

/// Identifier systems that name one person for life.
const PERSONAL: [&str; 3] = [CITIZEN_ID, PASSPORT_NUMBER, INSURANCE_NUMBER];

fn identifiers(p: &Value) -> impl Iterator<Item = (&str, &str)> {
    p.get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Some((
                i.get("system").and_then(Value::as_str)?,
                i.get("value").and_then(Value::as_str)?,
            ))
        })
}

fn citizen_id(p: &Value) -> Option<&str> {
    identifiers(p)
        .find(|(s, _)| *s == CITIZEN_ID)
        .map(|(_, v)| v)
}

/// `family` and `given` of the first name, normalised (diacritics folded).
fn name_of(p: &Value) -> Option<(String, String)> {
    let n = p.get("name")?.as_array()?.first()?;
    let family = n.get("family").and_then(Value::as_str).map(normalize);
    let given: Vec<String> = n
        .get("given")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(normalize)
        .collect();
    match family {
        Some(f) => Some((f, given.join(" "))),
        None => n
            .get("text")
            .and_then(Value::as_str)
            .map(|t| (normalize(t), String::new())),
    }
}

/// The normalised words of every address.
fn address_words(p: &Value) -> Vec<String> {
    let mut words = Vec::new();
    for a in p
        .get("address")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut parts: Vec<&str> = ["text", "city", "district", "state"]
            .iter()
            .filter_map(|k| a.get(*k).and_then(Value::as_str))
            .collect();
        parts.extend(
            a.get("line")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        );
        for part in parts {
            let n = normalize(part);
            if !n.is_empty() {
                words.push(n);
            }
        }
    }
    words
}

/// How well a stored record matches the input; None when it is certainly not the person.
fn score(input: &Value, candidate: &Value) -> Option<(f64, Grade)> {
    let (ci, cc) = (citizen_id(input), citizen_id(candidate));
    if let (Some(a), Some(b)) = (ci, cc)
        && a != b
    {
        return None;
    }
    let mine: Vec<(&str, &str)> = identifiers(input)
        .filter(|(s, _)| PERSONAL.contains(s))
        .collect();
    if identifiers(candidate).any(|id| mine.contains(&id)) {
        return Some((1.0, Grade::Certain));
    }
    let mut score = 0.0;
    let names = (name_of(input), name_of(candidate));
    let same_name = match &names {
        (Some((f1, g1)), Some((f2, g2))) => f1 == f2 && (g1.is_empty() || g1 == g2),
        _ => false,
    };
    if same_name {
        score += 0.4;
    }
    // The same value of a string element in both, the input having one.
    let same = |k: &str| {
        let v = input.get(k).and_then(Value::as_str);
        v.is_some() && v == candidate.get(k).and_then(Value::as_str)
    };
    let same_birth = same("birthDate");
    if same_birth {
        score += 0.3;
    }
    if same("gender") {
        score += 0.1;
    }
    let (a, b) = (address_words(input), address_words(candidate));
    if a.iter().any(|w| {
        b.iter()
            .any(|x| x.contains(w.as_str()) || w.contains(x.as_str()))
    }) {
        score += 0.2;
    }
    if !(same_name && same_birth) {
        return None;
    }
    let grade = if score >= 0.9 {
        Grade::Probable
    } else {
        Grade::Possible
    };
    Some((score, grade))
}

fn search_patients(s: &mut Session<'_>, pairs: &[(&str, &str)], limit: i64) -> Result<Vec<Stored>> {
    let mut filters = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        filters.push(criterion("Patient", name, value)?);
    }
    let rows = s.search(&SearchQuery::unsorted(
        vec!["Patient".into()],
        filters,
        limit,
    ))?;
    Ok(rows
        .into_iter()
        .map(|r| Stored {
            pk: r.pk,
            ty: r.res_type,
            id: r.res_id,
            version: r.version,
            last_updated: r.last_updated,
            deleted: false,
            method: Method::Update,
            body: r.body,
        })
        .collect())
}

/// Whether a Patient was merged into another (has a `replaced-by` link).
fn merged_away(p: &Value) -> bool {
    p.get("link")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|l| l.get("type").and_then(Value::as_str) == Some("replaced-by"))
}

impl Fhir {
    /// `Patient/$match`: the records that may be the person `input`, best first.
    pub async fn match_patient(
        &self,
        input: Value,
        count: usize,
        only_certain: bool,
    ) -> Result<Vec<Match>> {
        self.store()
            .read(move |s| {
                let mut found: Vec<Stored> = Vec::new();
                for (system, value) in identifiers(&input).filter(|(s, _)| PERSONAL.contains(s)) {
                    let token = format!("{system}|{value}");
                    found.extend(search_patients(s, &[("identifier", &token)], 20)?);
                }
                if let (Some((family, _)), Some(birth)) = (
                    name_of(&input),
                    input.get("birthDate").and_then(Value::as_str),
                ) {
                    found.extend(search_patients(
                        s,
                        &[("family", family.as_str()), ("birthdate", birth)],
                        200,
                    )?);
                }
                let mut out: Vec<Match> = Vec::new();
                for stored in found {
                    if out.iter().any(|m| m.stored.id == stored.id) {
                        continue;
                    }
                    let Ok(body) = serde_json::from_str::<Value>(&stored.body) else {
                        continue;
                    };
                    if merged_away(&body) {
                        continue;
                    }
                    if let Some((score, grade)) = score(&input, &body)
                        && (!only_certain || grade == Grade::Certain)
                    {
                        out.push(Match {
                            stored,
                            score,
                            grade,
                        });
                    }
                }
                out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.grade.cmp(&b.grade)));
                out.truncate(count);
                Ok(out)
            })
            .await
    }

    /// `$validate` with `mode=create`: whether creating `value` would make a second record of a
    /// citizen (the issue a create would be refused with).
    pub async fn would_duplicate(&self, ty: &'static str, value: &Value) -> Result<Vec<Issue>> {
        if ty != "Patient" {
            return Ok(Vec::new());
        }
        let rows = super::search::extract::index_rows(ty, value);
        let body = value.to_string();
        self.store()
            .read(move |s| {
                let claim = [identity::Claim {
                    ty,
                    id: "",
                    rows: &rows,
                    body: &body,
                    entry: None,
                    settled: &[],
                }];
                Ok(match identity::holders_unlocked(s, &claim)? {
                    Some(h) => match identity::duplicate(&claim[0], &h) {
                        Error::Duplicate(issues) => issues,
                        _ => Vec::new(),
                    },
                    None => Vec::new(),
                })
            })
            .await
    }

    /// `Patient/$merge`: folds the record `source` into `target`. With `preview`, nothing is
    /// written and the result says what would be.
    pub async fn merge_patients(
        &self,
        source: String,
        target: String,
        preview: bool,
    ) -> Result<Merged> {
        if source == target {
            return Err(Error::invalid(
                "invalid",
                "the source and target of a merge are the same Patient",
            ));
        }
        let fhir = self.clone();
        retry(|| {
            let (source, target, fhir) = (source.clone(), target.clone(), fhir.clone());
            self.store()
                .write(move |s| merge_in(s, &fhir, &source, &target, preview))
        })
        .await
    }
}

/// What a merge did (or, in a preview, would do).
#[derive(Debug, Clone)]
pub struct Merged {
    /// The target as it is after the merge (before it, in a preview).
    pub target: Stored,
    /// The resources whose references moved from the source to the target.
    pub moved: Vec<(String, String)>,
    /// The AuditEvent that records the merge (none in a preview).
    pub audit: Option<String>,
}

fn live_patient(s: &mut Session<'_>, id: &str, role: &str) -> Result<(Stored, Value)> {
    s.lock_resource("Patient", id)?;
    match s.current("Patient", id)? {
        Some(r) if !r.deleted => {
            let v = serde_json::from_str(&r.body)
                .map_err(|e| Error::invalid("exception", format!("stored JSON unreadable: {e}")))?;
            Ok((r.into(), v))
        }
        Some(_) => Err(Error::Gone(format!("the {role} Patient/{id} was deleted"))),
        None => Err(Error::NotFound(format!(
            "the {role} Patient/{id} is not known"
        ))),
    }
}

fn merge_in(
    s: &mut Session<'_>,
    fhir: &Fhir,
    source_id: &str,
    target_id: &str,
    preview: bool,
) -> Result<Merged> {
    let now = now_millis();
    // Locked in a fixed order, so two merges of the same pair cannot deadlock.
    let (first, second) = if source_id < target_id {
        (source_id, target_id)
    } else {
        (target_id, source_id)
    };
    let a = live_patient(
        s,
        first,
        if first == source_id {
            "source"
        } else {
            "target"
        },
    )?;
    let b = live_patient(
        s,
        second,
        if second == source_id {
            "source"
        } else {
            "target"
        },
    )?;
    let ((_, mut src), (tgt_stored, mut tgt)) = if first == source_id { (a, b) } else { (b, a) };
    if merged_away(&src) {
        return Err(Error::Conflict(format!(
            "Patient/{source_id} was already merged into another record"
        )));
    }
    if merged_away(&tgt) {
        return Err(Error::Conflict(format!(
            "Patient/{target_id} was merged into another record; merge into that one"
        )));
    }
    if let (Some(a), Some(b)) = (citizen_id(&src), citizen_id(&tgt))
        && a != b
    {
        return Err(Error::Conflict(
            "the source and target carry different citizen IDs: they are two people".into(),
        ));
    }
    let from = format!("Patient/{source_id}");
    let to = format!("Patient/{target_id}");
    let moved: Vec<(String, String)> = s
        .referrers(&from)?
        .into_iter()
        .filter(|(t, i)| !(t == "Patient" && (i == source_id || i == target_id)))
        .collect();
    if preview {
        return Ok(Merged {
            target: tgt_stored,
            moved,
            audit: None,
        });
    }
    // 1. Every reference to the source now points at the target.
    for (ty, id) in &moved {
        let Some(cur) = s.current(ty, id)? else {
            continue;
        };
        let Ok(mut doc) = serde_json::from_str::<Value>(&cur.body) else {
            continue;
        };
        for_each_link(&mut doc, &mut |kind, link| {
            if kind == LinkKind::Reference && *link == from {
                link.clone_from(&to);
            }
        });
        update_in(s, ty, id, doc, Some(cur.version), Method::Update, now)?;
    }
    // 2. The source steps down: inactive, replaced by the target.
    src["active"] = Value::Bool(false);
    push(
        &mut src,
        "link",
        json!({"other": {"reference": to}, "type": "replaced-by"}),
    );
    update_in(
        s,
        "Patient",
        source_id,
        src.clone(),
        None,
        Method::Update,
        now,
    )?;
    // 3. The target takes the source's identifiers and a link back to it.
    let have: Vec<(String, String)> = identifiers(&tgt)
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    for id in src
        .get("identifier")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let key = (
            id.get("system")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            id.get("value")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        );
        if !have.contains(&key) {
            push(&mut tgt, "identifier", id);
        }
    }
    push(
        &mut tgt,
        "link",
        json!({"other": {"reference": from}, "type": "replaces"}),
    );
    fhir.admit("Patient", &tgt, "Patient")?;
    let written = update_in(s, "Patient", target_id, tgt, None, Method::Update, now)?;
    // 4. The record of the merge (ISO 21089 lifecycle event "merge").
    let audit_id = new_id();
    let audit = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110",
                 "display": "Patient Record"},
        "subtype": [{"system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle",
                     "code": "merge", "display": "Merge Record Lifecycle Event"}],
        "action": "U",
        "recorded": format_instant(now),
        "outcome": "0",
        "outcomeDesc": format!("{from} merged into {to}; {} resources moved", moved.len()),
        "agent": [{"requestor": true, "who": {"display": "yba Patient/$merge"}}],
        "source": {"observer": {"display": "yba"}},
        "entity": [
            {"what": {"reference": from}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}, "description": "source"},
            {"what": {"reference": to}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}, "description": "target"}
        ]
    });
    let (body, rows) = prepare(audit, "AuditEvent", &audit_id, 1, now, "AuditEvent")?;
    insert(
        s,
        "AuditEvent",
        audit_id.clone(),
        1,
        Method::Create,
        now,
        body,
        rows,
        &[],
    )?;
    Ok(Merged {
        target: written.stored,
        moved,
        audit: Some(audit_id),
    })
}

fn push(doc: &mut Value, key: &str, item: Value) {
    if let Value::Object(o) = doc {
        match o.get_mut(key) {
            Some(Value::Array(a)) => a.push(item),
            _ => {
                o.insert(key.to_string(), Value::Array(vec![item]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grades() {
        let p = json!({"identifier": [{"system": CITIZEN_ID, "value": "001090000001"}],
            "name": [{"family": "Nguyễn", "given": ["Văn", "An"]}], "gender": "male",
            "birthDate": "1990-04-30", "address": [{"city": "Hà Nội"}]});
        assert_eq!(score(&p, &p).map(|s| s.1), Some(Grade::Certain));
        let mut other_id = p.clone();
        other_id["identifier"][0]["value"] = json!("001090000002");
        assert_eq!(score(&p, &other_id), None);
        let demo = json!({"name": [{"family": "Nguyen", "given": ["Van", "An"]}], "gender": "male",
            "birthDate": "1990-04-30", "address": [{"city": "Ha Noi"}]});
        assert_eq!(score(&demo, &p).map(|s| s.1), Some(Grade::Probable));
        let mut moved = demo.clone();
        moved["address"] = json!([{"city": "Đà Nẵng"}]);
        assert_eq!(score(&moved, &p).map(|s| s.1), Some(Grade::Possible));
        let mut born_later = demo.clone();
        born_later["birthDate"] = json!("1991-04-30");
        assert_eq!(score(&born_later, &p), None);
    }
}
