//! E-prescriptions (đơn thuốc điện tử, Circular 26/2025/TT-BYT): issued once, immutable,
//! dispensed once.
//!
//! A prescription is the set of `MedicationRequest`s that share a `groupIdentifier` in the
//! system [`PRESCRIPTION_CODE`]: one per drug, one patient, one prescriber, one kind (ordinary,
//! narcotic, psychotropic, traditional). Issuing ([`issue`], run by `$prescribe`, by a plain
//! `POST MedicationRequest` and by transactions for lines that carry that system without a
//! value) checks the law and assigns the 14-character code; the writes then go through
//! [`Rules`], a [`Gate`] that, inside the write's database transaction, records the
//! prescription, refuses any change to an issued one, and takes each `MedicationDispense` from
//! what is left to dispense with one conditional `UPDATE` (no double dispensing, also under
//! concurrency).

pub mod export;
pub mod rules;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::fhir::datetime::format_instant;
use crate::fhir::interactions::{Change, Fhir, Gate, update_in};
use crate::fhir::outcome::Issue;
use crate::fhir::schema::R4;
use crate::fhir::vn_rules::{
    CITIZEN_ID, PASSPORT_NUMBER, PRACTITIONER_LICENCE, PRESCRIPTION_CODE, PROVIDER_CODE,
};
use crate::fhir::{codings, identifier_value as identifier};
use crate::store::{Method, RxLine, RxRow, Session};
use crate::vn::{Cccd, FacilityCode, PractitionerLicence, PrescriptionCode, PrescriptionKind};

/// Our classes of medicines (`MedicationRequest.category`): `narcotic`, `psychotropic`,
/// `precursor`, `traditional`, `herbal`, `ordinary`.
pub const DRUG_CLASS: &str = "https://yba.vn/fhir/CodeSystem/drug-class";
/// WHO ATC, from which the class is inferred when no category says it.
pub const ATC: &str = "http://www.whocc.no/atc";
/// How many inpatient beds a facility has (`Organization.extension`, valueInteger).
pub const INPATIENT_BEDS: &str = "https://yba.vn/fhir/StructureDefinition/inpatient-beds";
/// The level of a facility (`Organization.type`); commune stations have no inpatient beds unless
/// [`INPATIENT_BEDS`] says otherwise.
pub const FACILITY_LEVEL: &str = "https://yba.vn/fhir/CodeSystem/facility-level";
/// Days a prescription may be dispensed after issue (TT 26/2025/TT-BYT Điều 12 khoản 9 điểm b).
pub const DEFAULT_VALID_DAYS: i64 = 5;
const DAY_MS: i64 = 86_400_000;

/// Who is issuing, as the access policy knows them.
#[derive(Debug, Clone, Default)]
pub struct Issuer {
    /// `Organization/id` the caller acts for: the prescribing facility.
    pub organization: Option<String>,
    /// `Practitioner/id` of a signed-in practitioner: they sign only their own prescriptions.
    pub practitioner: Option<String>,
    pub now: i64,
    pub valid_days: i64,
}

/// Whether a resource is a MedicationRequest that is, or asks to be, an e-prescription line.
pub fn is_line(r: &Value) -> bool {
    r.get("resourceType").and_then(Value::as_str) == Some("MedicationRequest")
        && r.pointer("/groupIdentifier/system").and_then(Value::as_str) == Some(PRESCRIPTION_CODE)
}

/// The class of a line's medicine: the category, or the ATC code.
pub fn kind_of(r: &Value) -> PrescriptionKind {
    let categories = r.get("category").and_then(Value::as_array);
    for (system, code) in categories.into_iter().flatten().flat_map(codings) {
        if system == DRUG_CLASS {
            return match code {
                "narcotic" => PrescriptionKind::Narcotic,
                "psychotropic" | "precursor" => PrescriptionKind::Psychotropic,
                "traditional" => PrescriptionKind::Traditional,
                "herbal" => PrescriptionKind::Herbal,
                _ => PrescriptionKind::Ordinary,
            };
        }
    }
    for (system, code) in r
        .get("medicationCodeableConcept")
        .into_iter()
        .flat_map(codings)
    {
        if system == ATC {
            let c = code.to_ascii_uppercase();
            // Opioids (N02A) and opioid anaesthetics (N01AH) are narcotics; barbiturates,
            // benzodiazepines, z-drugs and stimulants are psychotropics.
            if c.starts_with("N02A") || c.starts_with("N01AH") {
                return PrescriptionKind::Narcotic;
            }
            if [
                "N03AA", "N03AE", "N05BA", "N05CA", "N05CD", "N05CF", "N06BA",
            ]
            .iter()
            .any(|p| c.starts_with(p))
            {
                return PrescriptionKind::Psychotropic;
            }
        }
    }
    PrescriptionKind::Ordinary
}

/// Whether a code system is ICD-10 (the WHO's, HL7's or the Vietnamese edition's URL).
pub(crate) fn is_icd10(system: &str) -> bool {
    system.contains("icd-10") || system.contains("icd10")
}

fn text_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn days_of(d: &Value) -> Option<f64> {
    let v = d.get("value")?.as_f64()?;
    let unit = d
        .get("code")
        .or_else(|| d.get("unit"))
        .and_then(Value::as_str)
        .unwrap_or("d");
    Some(match unit {
        "d" | "day" | "days" | "ngày" => v,
        "wk" | "week" | "weeks" => v * 7.0,
        "mo" | "month" | "months" => v * 30.0,
        "h" | "hour" | "hours" => v / 24.0,
        _ => return None,
    })
}

/// ICD-10 codes of CodeableConcepts.
fn icd10_codes<'v>(concepts: impl Iterator<Item = &'v Value>, out: &mut Vec<String>) {
    for c in concepts {
        out.extend(
            codings(c)
                .filter(|(system, _)| is_icd10(system))
                .map(|(_, code)| code.to_string()),
        );
    }
}

/// Resolves the references an issue needs: to entries of the same Bundle by `fullUrl`, or to
/// the store by `Type/id` (each read once).
struct Resolver<'a> {
    fhir: &'a Fhir,
    entries: &'a [Value],
    by_url: HashMap<&'a str, usize>,
    cache: HashMap<String, Option<Value>>,
}

impl<'a> Resolver<'a> {
    fn new(fhir: &'a Fhir, entries: &'a [Value]) -> Resolver<'a> {
        let by_url = entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((text_at(e, "/fullUrl")?, i)))
            .collect();
        Resolver {
            fhir,
            entries,
            by_url,
            cache: HashMap::new(),
        }
    }

    /// The resource of the Bundle's entry with this `fullUrl`.
    fn bundled(&self, reference: &str) -> Option<&'a Value> {
        self.by_url
            .get(reference)
            .and_then(|&i| self.entries[i].get("resource"))
    }

    async fn get(&mut self, reference: Option<&str>) -> Result<Option<Value>> {
        let Some(r) = reference else { return Ok(None) };
        if let Some(v) = self.bundled(r) {
            return Ok(Some(v.clone()));
        }
        if let Some(v) = self.cache.get(r) {
            return Ok(v.clone());
        }
        let found = match r.rsplit_once('/') {
            Some((head, id)) => {
                let ty_name = head.rsplit('/').next().unwrap_or(head);
                match R4.resource_type(ty_name) {
                    Some(ty) => match self.fhir.read(ty, id.to_string()).await {
                        Ok(stored) => serde_json::from_str(&stored.body).ok(),
                        Err(Error::NotFound(_) | Error::Gone(_)) => None,
                        Err(e) => return Err(e),
                    },
                    None => None,
                }
            }
            None => None,
        };
        self.cache.insert(r.to_string(), found.clone());
        Ok(found)
    }
}

/// One prescription being issued: the lines (entry indexes) of one patient, prescriber and kind.
struct Group {
    kind: PrescriptionKind,
    lines: Vec<usize>,
}

/// Issues the e-prescription lines among `entries` (Bundle entries: `fullUrl`, `resource`,
/// `request`): checks the law, then assigns each prescription its code, its validity for
/// dispensing and the defaults of an order. `all` makes every MedicationRequest a line
/// (`$prescribe`). Returns the codes assigned, for [`Rules`].
pub async fn issue(
    fhir: &Fhir,
    entries: &mut [Value],
    at: &dyn Fn(usize) -> String,
    who: &Issuer,
    all: bool,
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for (i, e) in entries.iter_mut().enumerate() {
        let method = text_at(e, "/request/method").unwrap_or("POST").to_string();
        let Some(r) = e.get_mut("resource") else {
            continue;
        };
        if r.get("resourceType").and_then(Value::as_str) != Some("MedicationRequest") {
            continue;
        }
        if all {
            match r.get("groupIdentifier") {
                None => r["groupIdentifier"] = json!({"system": PRESCRIPTION_CODE}),
                Some(_) if is_line(r) => {}
                Some(_) => {
                    return Err(Error::Unprocessable(vec![
                        Issue::error(
                            "business-rule",
                            format!(
                                "an e-prescription line's groupIdentifier is its prescription \
                                 code ({PRESCRIPTION_CODE}), which the server assigns: carry \
                                 your own identifier in identifier"
                            ),
                        )
                        .at(format!("{}.groupIdentifier", at(i))),
                    ]));
                }
            }
        }
        if is_line(r) && method == "POST" {
            lines.push(i);
        }
    }
    if lines.is_empty() {
        return Ok(Vec::new());
    }
    let mut issues: Vec<Issue> = Vec::new();
    // Read only from here to the assignment of codes.
    let view: &[Value] = entries;
    let mut resolver = Resolver::new(fhir, view);
    // One prescription per patient, prescriber and kind (the national system takes one
    // prescription per kind: TT 26/2025 Phụ lục I note 1).
    let mut groups: Vec<((String, String, char), Group)> = Vec::new();
    for &i in &lines {
        if let Some(v) = view[i].pointer("/resource/groupIdentifier/value") {
            let here = format!("{}.groupIdentifier.value", at(i));
            return Err(match PrescriptionCode::parse(v.as_str().unwrap_or("")) {
                Err(e) => Error::invalid_at("value", e.0, here),
                Ok(_) => Error::Unprocessable(vec![
                    Issue::error(
                        "business-rule",
                        "the server assigns e-prescription codes (TT 26/2025/TT-BYT Phụ lục I): \
                         leave groupIdentifier.value out",
                    )
                    .at(here),
                ]),
            });
        }
    }
    for &i in &lines {
        let r = &entries[i]["resource"];
        let kind = kind_of(r);
        let key = (
            text_at(r, "/subject/reference").unwrap_or("").to_string(),
            text_at(r, "/requester/reference").unwrap_or("").to_string(),
            kind.letter(),
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.lines.push(i),
            None => groups.push((
                key,
                Group {
                    kind,
                    lines: vec![i],
                },
            )),
        }
    }
    let mut codes = Vec::new();
    let mut assigned: Vec<(Vec<usize>, String)> = Vec::new();
    for ((subject, requester, _), g) in &groups {
        let first = at(g.lines[0]);
        let first_r = &view[g.lines[0]]["resource"];
        // The patient: a Patient of the Bundle or of the record. Who they are (a valid citizen
        // ID or passport) is checked once the access policy has let the write through (in
        // `Rules`), so that a refusal says nothing of a record the caller may not see.
        let in_bundle = resolver.bundled(subject);
        let is_patient = match in_bundle {
            Some(p) => p.get("resourceType").and_then(Value::as_str) == Some("Patient"),
            None => local_id(subject, "Patient").is_some_and(|id| !id.is_empty()),
        };
        if !is_patient {
            issues.push(
                Issue::error(
                    "required",
                    "an e-prescription names its patient: subject must reference a Patient",
                )
                .at(format!("{first}.subject")),
            );
        }
        // The prescriber: a licensed practitioner (Luật Khám bệnh, chữa bệnh 2023; Phụ lục I).
        let requester_r = resolver
            .get(Some(requester.as_str()).filter(|x| !x.is_empty()))
            .await?;
        let (practitioner_ref, role_org) = match requester_r.as_ref() {
            Some(r) if text_at(r, "/resourceType") == Some("PractitionerRole") => (
                text_at(r, "/practitioner/reference").map(str::to_string),
                text_at(r, "/organization/reference").map(str::to_string),
            ),
            Some(r) if text_at(r, "/resourceType") == Some("Practitioner") => {
                (Some(requester.clone()), None)
            }
            _ => (None, None),
        };
        if let (Some(me), Some(p)) = (&who.practitioner, &practitioner_ref)
            && me != p
        {
            return Err(Error::Forbidden(
                "a practitioner signs only their own prescriptions: requester must be you".into(),
            ));
        }
        let practitioner = resolver.get(practitioner_ref.as_deref()).await?;
        let licensed = practitioner.as_ref().is_some_and(|p| {
            identifier(p, PRACTITIONER_LICENCE)
                .is_some_and(|v| PractitionerLicence::parse(v).is_ok())
        });
        if !licensed {
            issues.push(
                Issue::error(
                    "business-rule",
                    format!(
                        "the prescriber must be a Practitioner with a licence to practise \
                         (identifier {PRACTITIONER_LICENCE}) ({})",
                        rules::REQUIRED_FIELDS
                    ),
                )
                .at(format!("{first}.requester")),
            );
        }
        // The facility: the caller's organization, the requester role's, or the encounter's.
        let mut facility_ref = who.organization.clone().or(role_org);
        if facility_ref.is_none() {
            let enc = resolver
                .get(text_at(first_r, "/encounter/reference"))
                .await?;
            facility_ref =
                enc.and_then(|e| text_at(&e, "/serviceProvider/reference").map(str::to_string));
        }
        let org = resolver.get(facility_ref.as_deref()).await?;
        let facility = org
            .as_ref()
            .and_then(|o| identifier(o, PROVIDER_CODE))
            .and_then(|c| FacilityCode::parse(c).ok());
        let has_beds = org.as_ref().is_some_and(has_inpatient_beds);
        if facility.is_none() {
            issues.push(
                Issue::error(
                    "business-rule",
                    format!(
                        "the prescribing facility must be an Organization with a facility code \
                         (identifier {PROVIDER_CODE}): the caller's organization, the requester's \
                         PractitionerRole.organization or the encounter's serviceProvider ({})",
                        rules::REQUIRED_FIELDS
                    ),
                )
                .at(format!("{first}.requester")),
            );
        }
        // The diagnosis (ICD-10), on any line.
        let mut dx = Vec::new();
        let mut rule_lines = Vec::new();
        for &i in &g.lines {
            let r = &view[i]["resource"];
            let here = at(i);
            icd10_codes(
                r.get("reasonCode")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
                &mut dx,
            );
            for rr in r
                .get("reasonReference")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(c) = resolver.get(text_at(rr, "/reference")).await? {
                    icd10_codes(c.get("code").into_iter(), &mut dx);
                }
            }
            issues.extend(required_fields(r, &here));
            rule_lines.push(rules::Line {
                at: here,
                days: r
                    .pointer("/dispenseRequest/expectedSupplyDuration")
                    .and_then(days_of),
                interval_days: r
                    .pointer("/dispenseRequest/dispenseInterval")
                    .and_then(days_of),
            });
        }
        if dx.is_empty() {
            issues.push(
                Issue::error(
                    "business-rule",
                    format!(
                        "an e-prescription states its diagnosis as an ICD-10 code, in reasonCode or \
                         a reasonReference to a Condition ({})",
                        rules::REQUIRED_FIELDS
                    ),
                )
                .at(format!("{first}.reasonCode")),
            );
        }
        issues.extend(rules::check(
            g.kind,
            &rule_lines,
            rules::Diagnoses::of(dx.iter().map(String::as_str)),
            has_beds,
        ));
        if let Some(f) = facility {
            let random: [u8; 16] = *uuid::Uuid::new_v4().as_bytes();
            let mut seven = [0u8; 7];
            seven.copy_from_slice(&random[..7]);
            let code = PrescriptionCode::new(&f, g.kind, &seven).to_string();
            assigned.push((g.lines.clone(), code.clone()));
            codes.push(code);
        }
    }
    if !issues.is_empty() {
        return Err(Error::Unprocessable(issues));
    }
    let start = format_instant(who.now);
    let end = format_instant(who.now + who.valid_days * DAY_MS);
    for (idx, code) in assigned {
        for i in idx {
            let r = &mut entries[i]["resource"];
            r["groupIdentifier"] = json!({"system": PRESCRIPTION_CODE, "value": code});
            if r.get("status").is_none() {
                r["status"] = json!("active");
            }
            if r.get("authoredOn").is_none() {
                r["authoredOn"] = json!(start);
            }
            // Valid for dispensing from issue for the configured days (Điều 12 khoản 9 điểm b).
            r["dispenseRequest"]["validityPeriod"] = json!({"start": start, "end": end});
        }
    }
    Ok(codes)
}

fn has_inpatient_beds(org: &Value) -> bool {
    if let Some(n) = org
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(INPATIENT_BEDS))
        .and_then(|e| e.get("valueInteger"))
        .and_then(Value::as_i64)
    {
        return n > 0;
    }
    org.get("type")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|t| {
            t.get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .any(|c| {
            c.get("system").and_then(Value::as_str) == Some(FACILITY_LEVEL)
                && matches!(
                    c.get("code").and_then(Value::as_str),
                    Some("district" | "provincial" | "central")
                )
        })
}

/// The name of a coded medicine: its text, or a coding's display.
fn concept_name(c: &Value) -> &str {
    c.get("text")
        .and_then(Value::as_str)
        .or_else(|| {
            c.get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find_map(|x| x.get("display").and_then(Value::as_str))
        })
        .unwrap_or("")
}

/// The per-drug content a prescription must state (TT 26/2025/TT-BYT Phụ lục I).
fn required_fields(r: &Value, at: &str) -> Vec<Issue> {
    let mut out = Vec::new();
    let mut need = |ok: bool, path: &str, what: &str| {
        if !ok {
            out.push(
                Issue::error(
                    "required",
                    format!(
                        "an e-prescription line states {what} ({})",
                        rules::REQUIRED_FIELDS
                    ),
                )
                .at(format!("{at}.{path}")),
            );
        }
    };
    let named = r.get("medicationReference").is_some()
        || r.get("medicationCodeableConcept")
            .is_some_and(|m| !concept_name(m).trim().is_empty());
    need(
        named,
        "medication",
        "the medicine by name and strength (active ingredient, or brand for combinations)",
    );
    let dosage = r.pointer("/dosageInstruction/0");
    need(dosage.is_some(), "dosageInstruction", "how to take it");
    if let Some(d) = dosage {
        need(
            d.get("text").is_some() || d.pointer("/doseAndRate/0").is_some(),
            "dosageInstruction[0].doseAndRate",
            "the dose",
        );
        need(
            d.get("text").is_some() || d.pointer("/timing/repeat").is_some(),
            "dosageInstruction[0].timing",
            "how often and when",
        );
        need(
            d.get("route").is_some(),
            "dosageInstruction[0].route",
            "the route",
        );
    }
    need(
        r.pointer("/dispenseRequest/quantity/value")
            .and_then(Value::as_f64)
            .is_some_and(|q| q > 0.0),
        "dispenseRequest.quantity",
        "the quantity to dispense",
    );
    need(
        r.pointer("/dispenseRequest/expectedSupplyDuration")
            .and_then(days_of)
            .is_some_and(|d| d > 0.0),
        "dispenseRequest.expectedSupplyDuration",
        "the days of supply (in days, weeks or months)",
    );
    if r.get("intent")
        .and_then(Value::as_str)
        .is_some_and(|i| i != "order")
    {
        out.push(
            Issue::error(
                "business-rule",
                "an e-prescription line is an order (intent = order)",
            )
            .at(format!("{at}.intent")),
        );
    }
    out
}

/// The e-prescription rules of writes, in the write's database transaction, after the access
/// policy (`inner`). Made per request with the codes that request issued.
pub struct Rules {
    pub inner: Option<Arc<dyn Gate>>,
    pub issued: HashSet<String>,
    pub now: i64,
}

fn immutable() -> Error {
    Error::Unprocessable(vec![Issue::error(
        "business-rule",
        "an issued e-prescription is immutable: a correction is a new prescription that replaces \
         it (priorPrescription), and $cancel withdraws it (QĐ 425/QĐ-BYT Điều 9 khoản 3 điểm c)",
    )])
}

fn rule(msg: impl Into<String>) -> Error {
    Error::Unprocessable(vec![Issue::error("business-rule", msg)])
}

fn local_id<'a>(reference: &'a str, ty: &str) -> Option<&'a str> {
    let (head, id) = reference.rsplit_once('/')?;
    (head == ty || head.ends_with(&format!("/{ty}"))).then_some(id)
}

impl Gate for Rules {
    fn before_change(&self, s: &mut Session<'_>, ty: &str, id: &str) -> Result<()> {
        if let Some(g) = &self.inner {
            g.before_change(s, ty, id)?;
        }
        match ty {
            "MedicationRequest" if s.prescription_line(id)?.is_some() => Err(immutable()),
            "MedicationDispense" => {
                // A dispense against a prescription is a sale reported: it stands.
                if let Some(cur) = s.current(ty, id)?
                    && let Ok(v) = serde_json::from_str::<Value>(&cur.body)
                {
                    for a in authorizing(&v) {
                        if s.prescription_line(a)?.is_some() {
                            return Err(rule(
                                "a dispense against an e-prescription is final: it may not be \
                                 changed or deleted",
                            ));
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn after_write(&self, s: &mut Session<'_>, written: &[Change<'_>]) -> Result<()> {
        if let Some(g) = &self.inner {
            g.after_write(s, written)?;
        }
        let mut new: Vec<(String, RxRow, Vec<RxLine>, Option<String>)> = Vec::new();
        for c in written {
            match c.ty {
                "MedicationRequest" => {
                    let v: Value = serde_json::from_str(c.body).unwrap_or(Value::Null);
                    if !is_line(&v) {
                        continue;
                    }
                    let code = s_own(&v, "/groupIdentifier/value");
                    if !c.created && s.prescription_line(c.id)?.is_some() {
                        // A conditional create that found a line already issued: it stands.
                        continue;
                    }
                    if !c.created || !self.issued.contains(&code) {
                        return Err(rule(
                            "e-prescriptions are issued with POST (or $prescribe), the server \
                             assigning the code: a MedicationRequest may not claim a code",
                        ));
                    }
                    let line = RxLine {
                        request_id: c.id.to_string(),
                        code: code.clone(),
                        quantity: v
                            .pointer("/dispenseRequest/quantity/value")
                            .and_then(Value::as_f64)
                            .unwrap_or(0.0),
                        dispensed: 0.0,
                    };
                    let prior = text_at(&v, "/priorPrescription/reference")
                        .and_then(|r| local_id(r, "MedicationRequest"))
                        .map(str::to_string);
                    match new.iter_mut().find(|(k, ..)| *k == code) {
                        Some((_, _, lines, p)) => {
                            lines.push(line);
                            if p.is_none() {
                                *p = prior;
                            }
                        }
                        None => {
                            let pc = PrescriptionCode::parse(&code).map_err(|e| rule(e.0))?;
                            let valid_until = text_at(&v, "/dispenseRequest/validityPeriod/end")
                                .and_then(|e| crate::fhir::datetime::parse_instant(e).ok())
                                .map_or(self.now, |d| d.range().0);
                            let row = RxRow {
                                code: code.clone(),
                                facility: pc.facility().as_str().to_string(),
                                kind: pc.kind().letter().to_string(),
                                patient: text_at(&v, "/subject/reference")
                                    .and_then(|r| local_id(r, "Patient"))
                                    .unwrap_or("")
                                    .to_string(),
                                prescriber: s_own(&v, "/requester/reference"),
                                issued: self.now,
                                valid_until,
                                status: "active".into(),
                                replaced_by: None,
                                reason: None,
                            };
                            new.push((code, row, vec![line], prior));
                        }
                    }
                }
                "MedicationDispense" if c.created => {
                    let v: Value = serde_json::from_str(c.body).unwrap_or(Value::Null);
                    dispense(s, &v, self.now)?;
                }
                _ => {}
            }
        }
        for (code, row, lines, prior) in new {
            identified(s, &row.patient)?;
            if !s.insert_prescription(&row, &lines)? {
                return Err(Error::Conflict(format!(
                    "the e-prescription code {code} is taken; send the request again"
                )));
            }
            if let Some(old_line) = prior {
                let Some(old) = s.prescription_line(&old_line)? else {
                    return Err(rule(
                        "priorPrescription must name a line of an issued e-prescription",
                    ));
                };
                let Some(old_rx) = s.prescription(&old.code)? else {
                    return Err(rule("priorPrescription names an unknown e-prescription"));
                };
                if old_rx.patient != row.patient || old_rx.facility != row.facility {
                    return Err(rule(
                        "a replacement e-prescription is for the same patient, from the same \
                         facility, as the one it replaces (QĐ 425/QĐ-BYT Điều 9 khoản 3 điểm c)",
                    ));
                }
                // What a pharmacy has handed over is not prescribed again by a correction.
                if s.prescription_lines(&old.code)?
                    .iter()
                    .any(|l| l.dispensed > 0.0)
                {
                    return Err(rule(format!(
                        "the e-prescription {} has been dispensed in part: it cannot be replaced; \
                         cancel it ($cancel stops what is left) and issue a new prescription for \
                         what the patient still needs",
                        old.code
                    )));
                }
                withdraw(s, &old.code, "replaced", Some(&code), None, self.now)?;
            }
        }
        Ok(())
    }

    fn sees(&self, s: &mut Session<'_>, ty: &str, id: &str) -> Result<bool> {
        match &self.inner {
            Some(g) => g.sees(s, ty, id),
            None => Ok(true),
        }
    }
}

/// The patient of an e-prescription is identified by a valid citizen ID or a passport number
/// (TT 26/2025/TT-BYT Phụ lục I).
fn identified(s: &mut Session<'_>, patient: &str) -> Result<()> {
    let p: Value = match s.current("Patient", patient)? {
        Some(cur) if !cur.body.is_empty() => serde_json::from_str(&cur.body).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let cccd = identifier(&p, CITIZEN_ID).is_some_and(|v| Cccd::parse(v).is_ok());
    let passport = identifier(&p, PASSPORT_NUMBER).is_some_and(|v| !v.trim().is_empty());
    if cccd || passport {
        return Ok(());
    }
    Err(Error::Unprocessable(vec![
        Issue::error(
            "business-rule",
            format!(
                "the patient of an e-prescription is identified by a valid citizen ID or a \
                 passport number ({})",
                rules::REQUIRED_FIELDS
            ),
        )
        .at("MedicationRequest.subject"),
    ]))
}

fn s_own(v: &Value, ptr: &str) -> String {
    text_at(v, ptr).unwrap_or("").to_string()
}

fn authorizing(v: &Value) -> Vec<&str> {
    v.get("authorizingPrescription")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("reference").and_then(Value::as_str))
        .filter_map(|r| local_id(r, "MedicationRequest"))
        .collect()
}

/// Ends an active prescription (`cancelled` or `replaced`): its lines get a new version with
/// status `cancelled`, so that the record shows it. Refused unless it is active.
pub fn withdraw(
    s: &mut Session<'_>,
    code: &str,
    to: &str,
    replaced_by: Option<&str>,
    reason: Option<&str>,
    now: i64,
) -> Result<()> {
    let Some(rx) = s.prescription(code)? else {
        return Err(Error::NotFound(format!(
            "no e-prescription has the code {code}"
        )));
    };
    if !s.set_prescription_status(code, "active", to, replaced_by, reason)? {
        return Err(rule(format!(
            "the e-prescription {code} is {}, not active: it can no longer be {to}",
            rx.status
        )));
    }
    let why = match (replaced_by, reason) {
        (Some(n), _) => format!("replaced by {n}"),
        (None, Some(r)) => r.to_string(),
        (None, None) => to.to_string(),
    };
    set_lines_status(s, code, "cancelled", Some(&why), now)
}

/// Gives every line of a prescription a new version with `status` (and `statusReason`), so that
/// the record shows what became of it. The server's own writes: the lines are otherwise
/// immutable.
fn set_lines_status(
    s: &mut Session<'_>,
    code: &str,
    status: &str,
    why: Option<&str>,
    now: i64,
) -> Result<()> {
    for line in s.prescription_lines(code)? {
        let Some(cur) = s.current("MedicationRequest", &line.request_id)? else {
            continue;
        };
        let mut v: Value = serde_json::from_str(&cur.body).unwrap_or(Value::Null);
        if !v.is_object() {
            continue;
        }
        v["status"] = json!(status);
        if let Some(w) = why {
            v["statusReason"] = json!({"text": w});
        }
        update_in(
            s,
            "MedicationRequest",
            &line.request_id,
            v,
            None,
            Method::Update,
            now,
        )?;
    }
    Ok(())
}

/// Takes a new MedicationDispense from its prescription line: only while the prescription is
/// active and valid, never above what is left (TT 26/2025 Điều 12; GPP).
fn dispense(s: &mut Session<'_>, md: &Value, now: i64) -> Result<()> {
    let mut lines = Vec::new();
    for id in authorizing(md) {
        if let Some(l) = s.prescription_line(id)? {
            lines.push(l);
        }
    }
    let line = match lines.as_slice() {
        [] => return Ok(()),
        [one] => one.clone(),
        _ => {
            return Err(rule(
                "a dispense takes from one e-prescription line: one MedicationDispense per drug",
            ));
        }
    };
    let status = text_at(md, "/status").unwrap_or("");
    if !matches!(status, "completed" | "in-progress") {
        // Preparation, declined, cancelled...: nothing handed over.
        return Ok(());
    }
    let Some(rx) = s.prescription(&line.code)? else {
        return Ok(());
    };
    match rx.status.as_str() {
        "active" => {}
        "completed" => {
            return Err(Error::Conflict(format!(
                "the e-prescription {} has been dispensed in full",
                rx.code
            )));
        }
        other => {
            return Err(rule(format!(
                "the e-prescription {} is {other}: it may not be dispensed (QĐ 425/QĐ-BYT Điều 9 \
                 khoản 3 điểm b)",
                rx.code
            )));
        }
    }
    if now > rx.valid_until {
        return Err(rule(format!(
            "the e-prescription {} expired for dispensing at {} ({})",
            rx.code,
            format_instant(rx.valid_until),
            rules::VALIDITY
        )));
    }
    let subject = text_at(md, "/subject/reference").and_then(|r| local_id(r, "Patient"));
    if subject.is_some_and(|p| p != rx.patient) {
        return Err(rule(
            "the dispense's subject is not the prescription's patient",
        ));
    }
    let Some(q) = md
        .pointer("/quantity/value")
        .and_then(Value::as_f64)
        .filter(|q| *q > 0.0)
    else {
        return Err(Error::Unprocessable(vec![
            Issue::error("required", "a dispense states the quantity handed over")
                .at("MedicationDispense.quantity"),
        ]));
    };
    substitution_recorded(s, md, &line.request_id)?;
    if !s.take_from_line(&line.request_id, q)? {
        let left = s
            .prescription_line(&line.request_id)?
            .map_or(0.0, |l| l.quantity - l.dispensed);
        return Err(Error::Conflict(format!(
            "only {left} of this line of e-prescription {} is left to dispense, not {q}",
            rx.code
        )));
    }
    let all_done = s
        .prescription_lines(&rx.code)?
        .iter()
        .all(|l| l.dispensed + 1e-9 >= l.quantity);
    if all_done && s.set_prescription_status(&rx.code, "active", "completed", None, None)? {
        // Dispensed in full: the lines are completed (R4 MedicationRequest.status).
        set_lines_status(s, &rx.code, "completed", None, now)?;
    }
    Ok(())
}

/// A dispense counts in the prescription's unit, and a dispense of another medicine than
/// prescribed says it was a substitution (GPP; QĐ 425 Điều 9 khoản 3 điểm b: same ingredient,
/// route and strength, recorded).
fn substitution_recorded(s: &mut Session<'_>, md: &Value, request_id: &str) -> Result<()> {
    let Some(cur) = s.current("MedicationRequest", request_id)? else {
        return Ok(());
    };
    let mr: Value = serde_json::from_str(&cur.body).unwrap_or(Value::Null);
    // Quantities are counted in the prescription's unit.
    let unit = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(|q| q.get("code").or_else(|| q.get("unit")))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if let (Some(asked), Some(given)) = (
        unit(&mr, "/dispenseRequest/quantity"),
        unit(md, "/quantity"),
    ) && asked != given
    {
        return Err(Error::Unprocessable(vec![
            Issue::error(
                "business-rule",
                format!(
                    "the prescription counts this medicine in '{asked}', not '{given}': state the \
                     quantity dispensed in the prescription's unit"
                ),
            )
            .at("MedicationDispense.quantity"),
        ]));
    }
    let Some(given) = md.get("medicationCodeableConcept") else {
        return Ok(());
    };
    let Some(asked) = mr.get("medicationCodeableConcept") else {
        return Ok(());
    };
    let codes = |c| -> HashSet<(&str, &str)> { codings(c).collect() };
    let (a, b) = (codes(asked), codes(given));
    let same = if a.is_empty() || b.is_empty() {
        asked.get("text") == given.get("text")
    } else {
        !a.is_disjoint(&b)
    };
    let substituted = md
        .pointer("/substitution/wasSubstituted")
        .and_then(Value::as_bool)
        == Some(true);
    if !same && !substituted {
        return Err(Error::Unprocessable(vec![
            Issue::error(
                "business-rule",
                "the medicine dispensed is not the one prescribed: record the substitution \
                 (substitution.wasSubstituted, type and reason; same ingredient, route and \
                 strength) (QĐ 425/QĐ-BYT Điều 9 khoản 3 điểm b)",
            )
            .at("MedicationDispense.substitution"),
        ]));
    }
    Ok(())
}

/// Where a prescription stands, for pharmacies and prescribers.
pub fn status_of(rx: &RxRow, now: i64) -> &str {
    if rx.status == "active" && now > rx.valid_until {
        "expired"
    } else {
        &rx.status
    }
}

/// Search parameters with e-prescription codes in their canonical form, so that a code is found
/// in whichever case it is written (`group-identifier=25366vma336r-C`).
pub fn canonical_codes(mut pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    for (k, v) in pairs.iter_mut() {
        // `group-identifier` holds only prescription codes; an `identifier` is one only when
        // its system says so (another system's identifier is compared as written).
        let bare_is_code = match k.as_str() {
            "group-identifier" => true,
            "identifier" => false,
            _ => continue,
        };
        let canon: Vec<String> = v
            .split(',')
            .map(|one| {
                let (system, value) = match one.split_once('|') {
                    Some((s, v)) => (Some(s), v),
                    None => (None, one),
                };
                match (system, PrescriptionCode::parse(value)) {
                    (None, Ok(c)) if bare_is_code => c.to_string(),
                    (Some(s), Ok(c)) if s == PRESCRIPTION_CODE => format!("{s}|{c}"),
                    _ => one.to_string(),
                }
            })
            .collect();
        *v = canon.join(",");
    }
    pairs
}
