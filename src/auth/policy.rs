//! The access policy: the one place that decides who may read and write which record.
//!
//! - A **patient** reads their own compartment (their Patient, and every resource the R4 Patient
//!   CompartmentDefinition links to it, their AuditEvents and Consents included) and writes
//!   only their own Consents.
//! - A **practitioner** or **hospital system** reads and writes the records of patients their
//!   organization cares for: the patient's managing organization or general practitioner, or an
//!   encounter, episode of care, care team or referral between them; or whom a patient's
//!   Consent lets the organization see. A practitioner may reach anyone else by **break-glass**
//!   (the `X-Break-Glass` header with a reason): allowed, flagged, audited. A patient's Consent
//!   may deny an organization the whole record, some resource types, or resources carrying a
//!   security label (such as HIV results); each decision cites the Consent it used.
//! - A **pharmacist** reads prescriptions and writes dispenses (narrowed by the e-prescription
//!   issue).
//! - An **admin** manages users, clients and the server's definitions, not clinical data; they
//!   also review the audit trail.
//!
//! Directory resources (organizations, practitioners, locations, medications) and definitions
//! (profiles, value sets) hold no patient's data: every signed-in party reads them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use serde_json::Value;

use super::scopes::Perm;
use super::{Principal, Role};
use crate::error::{Error, Result};
use crate::fhir::interactions::{Change, Gate};
use crate::store::Session;

/// Who's-who resources: no patient's data.
pub const DIRECTORY: &[&str] = &[
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "OrganizationAffiliation",
    "Location",
    "HealthcareService",
    "Endpoint",
    "Medication",
    "MedicationKnowledge",
    "Substance",
];

/// The server's definitions: written by admins, read by all.
pub const DEFINITIONS: &[&str] = &[
    "StructureDefinition",
    "ValueSet",
    "CodeSystem",
    "NamingSystem",
    "SearchParameter",
    "CapabilityStatement",
    "OperationDefinition",
    "ConceptMap",
    "CompartmentDefinition",
    "ImplementationGuide",
    "StructureMap",
    "TerminologyCapabilities",
];

/// What a patient's record allows an organization, worked out once per request.
#[derive(Debug, Clone, Default)]
struct Decision {
    allowed: bool,
    /// Allowed only because of break-glass.
    break_glass: bool,
    /// Consents that decided it (permit or deny).
    consents: Vec<String>,
    /// Resource types a Consent withholds: (type, consent id).
    deny_types: Vec<(String, String)>,
    /// Security labels a Consent withholds: (system, code, consent id).
    deny_labels: Vec<(String, String, String)>,
}

#[derive(Debug, Default)]
struct State {
    decisions: HashMap<String, Decision>,
    /// Patients created by this request (their writer may go on writing about them).
    created: HashSet<String>,
    /// Patients whose data the request touched, for the audit record.
    patients: BTreeSet<String>,
    /// Consents the decisions relied on.
    consents: BTreeSet<String>,
    break_glass_used: bool,
    /// The first few resources read or written.
    resources: Vec<String>,
}

/// The policy applied to one request's principal.
#[derive(Debug)]
pub struct Guard {
    pub principal: Principal,
    state: Mutex<State>,
}

/// What the audit record needs from a guarded request.
#[derive(Debug, Default, Clone)]
pub struct Touched {
    pub resources: Vec<String>,
    pub patients: Vec<String>,
    pub consents: Vec<String>,
    pub break_glass: bool,
}

fn is_shared(ty: &str) -> bool {
    DIRECTORY.contains(&ty) || DEFINITIONS.contains(&ty)
}

/// The patients a resource is about: a Patient itself, or the patients its compartment
/// parameters point at (for types outside the compartment, any reference to a Patient).
fn linked_patients_of(ty: &str, value: &Value) -> Vec<String> {
    if ty == "Patient" {
        return value
            .get("id")
            .and_then(Value::as_str)
            .map(|id| vec![id.to_string()])
            .unwrap_or_default();
    }
    let links = crate::fhir::compartment::links("Patient", &[ty.to_string()]);
    let params: Option<&Vec<String>> = links.first().map(|(_, p)| p);
    let rows = crate::fhir::search::extract::index_rows(ty, value);
    let mut out: Vec<String> = rows
        .references
        .iter()
        .filter(|r| params.is_none_or(|ps| ps.iter().any(|p| p == r.param)))
        .filter_map(|r| r.target.strip_prefix("Patient/"))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

fn labels_of(value: &Value) -> Vec<(String, String)> {
    codings(value.pointer("/meta/security"))
}

/// `(system, code)` of an array of Codings.
fn codings(array: Option<&Value>) -> Vec<(String, String)> {
    let text = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    array
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| (text(c, "system"), text(c, "code")))
                .collect()
        })
        .unwrap_or_default()
}

impl Guard {
    pub fn new(principal: Principal) -> Guard {
        Guard {
            principal,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the request touched so far (for its audit record).
    pub fn touched(&self) -> Touched {
        let st = self.state();
        Touched {
            resources: st.resources.clone(),
            patients: st.patients.iter().cloned().collect(),
            consents: st.consents.iter().cloned().collect(),
            break_glass: st.break_glass_used,
        }
    }

    /// Notes patients the request named (a compartment, `$everything`), for the audit record.
    pub fn note_patient(&self, id: &str) {
        self.state().patients.insert(id.to_string());
    }

    /// Whether the token's scopes allow `perm` on `ty` (403 otherwise).
    pub fn scope(&self, ty: &str, perm: Perm) -> Result<()> {
        if ty == "AuditEvent" && matches!(perm, Perm::Create | Perm::Update | Perm::Delete) {
            return Err(Error::Forbidden(
                "AuditEvents are written by the server alone and are never changed".into(),
            ));
        }
        if self
            .principal
            .scopes
            .allows(self.principal.role.context(), ty, perm)
        {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "the access token's scopes do not allow '{}' on {ty} (granted: {})",
                perm.letter(),
                self.principal.scopes
            )))
        }
    }

    /// Whether the principal may run a search of these types with these parameters at all: a
    /// pharmacist finds a prescription by its code, and never lists prescriptions.
    pub fn may_search(&self, types: &[String], params: &[(String, String)]) -> Result<()> {
        if self.principal.role == Role::Pharmacist
            && (types.is_empty() || types.iter().any(|t| t == "MedicationRequest"))
            && !params.iter().any(|(k, v)| {
                matches!(k.as_str(), "identifier" | "group-identifier" | "_id") && !v.is_empty()
            })
        {
            return Err(Error::Forbidden(
                "a pharmacist looks a prescription up by its code: MedicationRequest?group-identifier=[code]"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether the principal may read this version (by its body). Readers of what they may not
    /// see are told it is not there.
    pub fn may_read(&self, s: &mut Session<'_>, ty: &str, body: &str) -> Result<bool> {
        if body.is_empty() {
            // A deletion carries nothing to read.
            return Ok(true);
        }
        let Ok(value) = serde_json::from_str::<Value>(body) else {
            return Ok(false);
        };
        self.may_read_value(s, ty, &value)
    }

    fn may_read_value(&self, s: &mut Session<'_>, ty: &str, value: &Value) -> Result<bool> {
        let ok = self.decide_read(s, ty, value)?;
        if ok {
            self.note_resource(ty, value);
        }
        Ok(ok)
    }

    fn note_resource(&self, ty: &str, value: &Value) {
        if let Some(id) = value.get("id").and_then(Value::as_str) {
            let mut st = self.state();
            if st.resources.len() < super::audit::MAX_RESOURCES {
                st.resources.push(format!("{ty}/{id}"));
            }
        }
    }

    fn decide_read(&self, s: &mut Session<'_>, ty: &str, value: &Value) -> Result<bool> {
        let p = &self.principal;
        if is_shared(ty) {
            return Ok(true);
        }
        if ty == "Subscription" {
            // A Subscription holds its endpoint's secret, and its notifications carry whatever
            // matches: an administrator's to read and write.
            return Ok(p.role == Role::Admin);
        }
        if ty == "AuditEvent" {
            return Ok(match p.role {
                Role::Admin => true,
                Role::Patient => self.own(ty, value),
                _ => false,
            });
        }
        match p.role {
            Role::Admin => Ok(false),
            Role::Patient => Ok(self.own(ty, value)),
            Role::Pharmacist => Ok(matches!(ty, "MedicationRequest" | "MedicationDispense")),
            Role::Practitioner | Role::System => self.org_may_see(s, ty, value),
        }
    }

    /// Whether a resource is in the signed-in patient's compartment.
    fn own(&self, ty: &str, value: &Value) -> bool {
        let Some(me) = self.principal.patient.as_deref() else {
            return false;
        };
        let linked = linked_patients_of(ty, value);
        if linked.iter().any(|p| p == me) {
            self.state().patients.insert(me.to_string());
            true
        } else {
            false
        }
    }

    fn org_may_see(&self, s: &mut Session<'_>, ty: &str, value: &Value) -> Result<bool> {
        let linked = linked_patients_of(ty, value);
        if linked.is_empty() {
            return Ok(true);
        }
        let labels = labels_of(value);
        for patient in &linked {
            let d = self.decision(s, patient, false)?;
            if !d.allowed {
                return Ok(false);
            }
            if !d.break_glass {
                let withheld = d
                    .deny_types
                    .iter()
                    .find(|(t, _)| t == ty)
                    .map(|(_, c)| c)
                    .or_else(|| {
                        d.deny_labels
                            .iter()
                            .find(|(sys, code, _)| {
                                labels.iter().any(|(ls, lc)| ls == sys && lc == code)
                            })
                            .map(|(_, _, c)| c)
                    });
                if let Some(consent) = withheld {
                    let mut st = self.state();
                    st.consents.insert(consent.clone());
                    if self.breaks_glass() {
                        // An emergency overrides the patient's withholding: flagged.
                        st.break_glass_used = true;
                        continue;
                    }
                    return Ok(false);
                }
            }
        }
        let mut st = self.state();
        for patient in linked {
            st.patients.insert(patient);
        }
        Ok(true)
    }

    /// Whether what this request wrote (an encounter at the caller's organization, say) ties
    /// the caller to the patients of a resource it could not see before: asked afresh. A
    /// commune node links its patient to the citizen's existing record so, in one transaction
    /// with its encounter.
    fn ties_now(&self, s: &mut Session<'_>, ty: &str, value: &Value) -> Result<bool> {
        let linked = linked_patients_of(ty, value);
        if linked.is_empty() {
            return Ok(false);
        }
        for patient in &linked {
            if !self.decision(s, patient, true)?.allowed {
                return Ok(false);
            }
        }
        self.may_read_value(s, ty, value)
    }

    /// Whether the request is a practitioner's break-glass (an emergency, with a reason).
    fn breaks_glass(&self) -> bool {
        self.principal.role == Role::Practitioner && self.principal.break_glass.is_some()
    }

    /// What the patient's record allows the principal's organization. `fresh` asks again
    /// rather than trusting an earlier answer (a write may just have made the relationship).
    fn decision(&self, s: &mut Session<'_>, patient: &str, fresh: bool) -> Result<Decision> {
        if !fresh && let Some(d) = self.state().decisions.get(patient) {
            return Ok(d.clone());
        }
        let mut d = Decision::default();
        if let Some(org) = self.principal.organization.as_deref() {
            let consents = s.referencing(
                "Consent",
                Some("patient"),
                &[format!("Patient/{patient}")],
                100,
            )?;
            let mut denied_all = None;
            let mut permit = None;
            for c in consents {
                let Ok(v) = serde_json::from_str::<Value>(&c.body) else {
                    continue;
                };
                if v.get("status").and_then(Value::as_str) != Some("active") {
                    continue;
                }
                if let Some(root) = v.get("provision") {
                    consent_rules(
                        root,
                        None,
                        org,
                        &c.res_id,
                        &mut d,
                        &mut denied_all,
                        &mut permit,
                    );
                }
            }
            let cares = s.cares_for(patient, org)?;
            d.allowed = denied_all.is_none() && (cares || permit.is_some());
            d.consents.extend(denied_all.into_iter().chain(permit));
        }
        if !d.allowed && self.breaks_glass() {
            d.allowed = true;
            d.break_glass = true;
        }
        let mut st = self.state();
        if d.allowed {
            st.consents.extend(d.consents.iter().cloned());
            st.break_glass_used |= d.break_glass;
        }
        st.decisions.insert(patient.to_string(), d.clone());
        Ok(d)
    }

    /// Whether the principal may write this version of `ty` (its body as stored).
    fn may_write(&self, s: &mut Session<'_>, ty: &str, value: &Value, created: bool) -> Result<()> {
        let p = &self.principal;
        let refuse = |why: String| Err(Error::Forbidden(why));
        if ty == "AuditEvent" {
            return refuse(
                "AuditEvents are written by the server alone and are never changed".into(),
            );
        }
        if DEFINITIONS.contains(&ty) || ty == "Subscription" {
            return if p.role == Role::Admin {
                Ok(())
            } else {
                refuse(format!(
                    "only an administrator may change the server's definitions ({ty})"
                ))
            };
        }
        if DIRECTORY.contains(&ty) {
            return match p.role {
                Role::Admin | Role::System | Role::Practitioner => Ok(()),
                _ => refuse(format!("a {} may not change {ty} resources", p.role.name())),
            };
        }
        match p.role {
            Role::Admin => {
                refuse("an administrator manages users and clients, not clinical records".into())
            }
            Role::Patient => {
                let me = p.patient.as_deref().unwrap_or("");
                let linked = linked_patients_of(ty, value);
                if ty == "Consent" && !linked.is_empty() && linked.iter().all(|l| l == me) {
                    self.state().patients.insert(me.to_string());
                    Ok(())
                } else if ty == "Consent" {
                    refuse("a patient may write only their own Consents (Consent.patient must be them)".into())
                } else {
                    refuse(format!("a patient writes Consents only, not {ty}"))
                }
            }
            Role::Pharmacist => {
                if ty == "MedicationDispense" {
                    Ok(())
                } else {
                    refuse(format!(
                        "a pharmacist writes MedicationDispense only, not {ty}"
                    ))
                }
            }
            Role::Practitioner | Role::System => {
                if ty == "Patient" && created {
                    // Registration: the new record is the writer's to go on with.
                    if let Some(id) = value.get("id").and_then(Value::as_str) {
                        let mut st = self.state();
                        st.created.insert(id.to_string());
                        st.patients.insert(id.to_string());
                    }
                    return Ok(());
                }
                for patient in linked_patients_of(ty, value) {
                    if self.state().created.contains(&patient) {
                        continue;
                    }
                    let cached = self.decision(s, &patient, false)?;
                    let d = if cached.allowed {
                        cached
                    } else {
                        self.decision(s, &patient, true)?
                    };
                    if !d.allowed {
                        return refuse(format!(
                            "Patient/{patient} is not in the care of {}: no encounter, episode of care, care team, referral or consent ties them{}",
                            p.organization
                                .as_deref()
                                .unwrap_or("the caller's organization"),
                            if p.role == Role::Practitioner {
                                " (in an emergency, send X-Break-Glass with a reason)"
                            } else {
                                ""
                            }
                        ));
                    }
                    if !d.break_glass
                        && !self.breaks_glass()
                        && d.deny_types.iter().any(|(t, _)| t == ty)
                    {
                        return refuse(format!(
                            "Patient/{patient}'s consent withholds {ty} from this organization"
                        ));
                    }
                    self.state().patients.insert(patient);
                }
                Ok(())
            }
        }
    }
}

/// Reads a Consent provision (and its nested exceptions) as it applies to `org`.
fn consent_rules(
    node: &Value,
    inherited: Option<&str>,
    org: &str,
    consent_id: &str,
    d: &mut Decision,
    denied_all: &mut Option<String>,
    permit: &mut Option<String>,
) {
    let kind = node.get("type").and_then(Value::as_str).or(inherited);
    let actors: Vec<&str> = node
        .get("actor")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.pointer("/reference/reference").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let in_force = node
        .pointer("/period/end")
        .and_then(Value::as_str)
        .and_then(|e| crate::fhir::datetime::parse_date_time(e).ok())
        .is_none_or(|end| end.range().1 > crate::fhir::datetime::now_millis());
    // A provision without actors applies to everyone; with actors, to them only.
    let applies = in_force && (actors.is_empty() || actors.contains(&org));
    if applies {
        let types: Vec<String> = node
            .get("class")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.get("code").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let labels = codings(node.get("securityLabel"));
        match kind {
            // A blanket deny of everyone is the patient's default stance, not a ban on the
            // organizations caring for them; a blanket deny naming this organization is.
            Some("deny") if types.is_empty() && labels.is_empty() && !actors.is_empty() => {
                *denied_all = Some(consent_id.to_string());
            }
            Some("deny") if types.is_empty() && labels.is_empty() => {}
            Some("deny") => {
                d.deny_types
                    .extend(types.into_iter().map(|t| (t, consent_id.to_string())));
                d.deny_labels.extend(
                    labels
                        .into_iter()
                        .map(|(s, c)| (s, c, consent_id.to_string())),
                );
            }
            Some("permit") if !actors.is_empty() => *permit = Some(consent_id.to_string()),
            _ => {}
        }
    }
    if let Some(children) = node.get("provision").and_then(Value::as_array) {
        for child in children {
            consent_rules(child, kind, org, consent_id, d, denied_all, permit);
        }
    }
}

impl Gate for Guard {
    fn before_change(&self, s: &mut Session<'_>, ty: &str, id: &str) -> Result<()> {
        let Some(current) = s.current(ty, id)? else {
            return Ok(());
        };
        if current.deleted {
            return Ok(());
        }
        let Ok(value) = serde_json::from_str::<Value>(&current.body) else {
            return Ok(());
        };
        if !self.may_read_value(s, ty, &value)? {
            return Err(Error::NotFound(format!(
                "no {ty} with this id is known to this caller"
            )));
        }
        self.may_write(s, ty, &value, false)
    }

    fn sees(&self, s: &mut Session<'_>, ty: &str, id: &str) -> Result<bool> {
        match s.current(ty, id)? {
            Some(current) if !current.deleted => self.may_read(s, ty, &current.body),
            _ => Ok(true),
        }
    }

    fn after_write(&self, s: &mut Session<'_>, written: &[Change<'_>]) -> Result<()> {
        // New patients first: later entries of the same Bundle may be about them.
        let mut order: Vec<&Change<'_>> = written.iter().collect();
        order.sort_by_key(|c| !(c.ty == "Patient" && c.created));
        for c in order {
            let Ok(value) = serde_json::from_str::<Value>(c.body) else {
                continue;
            };
            if !c.created
                && !self.may_read_value(s, c.ty, &value)?
                && !self.ties_now(s, c.ty, &value)?
            {
                // A conditional create that found what the caller may not see (and that the
                // rest of the request gave the caller no care of).
                return Err(Error::Forbidden(format!(
                    "the {} the request names belongs to a record this caller may not see",
                    c.ty
                )));
            }
            self.may_write(s, c.ty, &value, c.created)?;
            self.note_resource(c.ty, &value);
        }
        Ok(())
    }
}
