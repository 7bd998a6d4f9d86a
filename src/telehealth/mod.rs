//! Teleconsultations: a commune station asks a hospital for a specialist's opinion by video.
//!
//! Everything a consultation is lives in the record as ordinary FHIR (no table of its own), so
//! that it is searchable, versioned and under the access policy like any other record:
//! - the request is a `ServiceRequest` (category telemedicine consultation; `requester` the
//!   station, `performer` the hospital and, once assigned, the doctor) and an `Appointment`
//!   (`basedOn` it, with the patient, the health worker who asked and later the doctor) whose
//!   id is the consultation's;
//! - the Appointment's status is the consultation's: `proposed` (asked), `booked` (accepted, a
//!   doctor assigned), `cancelled` (declined, with the reason), `arrived` (being held),
//!   `fulfilled` (ended);
//! - holding it is an `Encounter` with class `VR` (virtual), `in-progress` then `finished` with
//!   the real period;
//! - the doctor's conclusion is a `ClinicalImpression` of the Encounter (Luật Khám bệnh, chữa
//!   bệnh 2023 Điều 64: a consultation's conclusion is written and kept in the record), and a
//!   referral is a new `ServiceRequest` (category patient referral) `basedOn` the request.
//!
//! This module builds those resources; `api::consultations` writes them as transactions.

pub mod ice;
pub mod join;
pub mod keyframe;
pub mod quality;
pub mod room;
pub mod sfu;
pub mod signal;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::fhir::datetime::format_instant;

pub const SNOMED: &str = "http://snomed.info/sct";
/// Telemedicine consultation with patient (procedure).
pub const TELECONSULTATION: &str = "448337001";
/// The search token of teleconsultation Appointments (`service-category`).
pub const CATEGORY: &str = "http://snomed.info/sct|448337001";
/// Patient referral (procedure).
pub const REFERRAL: &str = "3457005";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const PARTICIPATION_TYPE: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
/// Where a consultation's outcome is coded (`ClinicalImpression.finding`).
pub const OUTCOME: &str = "https://yba.vn/fhir/CodeSystem/consultation-outcome";

/// What a station sends to ask for a consultation.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ask {
    /// `Patient/id`.
    pub patient: String,
    /// `Organization/id` of the hospital asked.
    pub hospital: String,
    /// Why: the clinical question.
    pub reason: String,
    /// The specialty asked for, as text (e.g. "Tim mạch").
    #[serde(default)]
    pub specialty: Option<String>,
    /// `routine` | `urgent` | `asap` | `stat` (FHIR request priority).
    #[serde(default = "routine")]
    pub urgency: String,
    /// Proposed start (FHIR instant, with a time zone).
    pub start: String,
    /// Minutes planned (default 30).
    #[serde(default = "half_hour")]
    pub minutes: i64,
    /// `Organization/id` of the station (default: the caller's organization).
    #[serde(default)]
    pub station: Option<String>,
    /// `Practitioner/id` of the health worker asking (default: the caller, if a practitioner).
    #[serde(default)]
    pub requester: Option<String>,
}

fn routine() -> String {
    "routine".into()
}

fn half_hour() -> i64 {
    30
}

/// The checks on an [`Ask`] that need nothing but itself; each problem with its field.
pub fn check_ask(a: &Ask) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !a.patient.starts_with("Patient/") {
        out.push((
            "patient",
            "patient is a reference to a Patient (Patient/id)".into(),
        ));
    }
    if !a.hospital.starts_with("Organization/") {
        out.push((
            "hospital",
            "hospital is a reference to an Organization (Organization/id)".into(),
        ));
    }
    if a.reason.trim().is_empty() {
        out.push((
            "reason",
            "a consultation states its clinical question".into(),
        ));
    }
    if !matches!(a.urgency.as_str(), "routine" | "urgent" | "asap" | "stat") {
        out.push((
            "urgency",
            format!(
                "urgency is routine, urgent, asap or stat, not '{}'",
                a.urgency
            ),
        ));
    }
    if crate::fhir::datetime::parse_instant(&a.start).is_err() {
        out.push((
            "start",
            format!(
                "start is an instant with a time zone (2026-11-25T09:00:00+07:00), not '{}'",
                a.start
            ),
        ));
    }
    if !(5..=240).contains(&a.minutes) {
        out.push((
            "minutes",
            "a consultation is planned for 5 to 240 minutes".into(),
        ));
    }
    out
}

/// The transaction that asks: the ServiceRequest and the Appointment based on it.
pub fn ask_bundle(a: &Ask, station: &str, start_ms: i64) -> Value {
    let end = format_instant(start_ms + a.minutes * 60_000);
    let concept = json!({"coding": [{"system": SNOMED, "code": TELECONSULTATION,
        "display": "Telemedicine consultation with patient"}], "text": "Hội chẩn từ xa"});
    // The station asks (requester) and the hospital performs: both organizations then care
    // for the patient in the access policy's sense. The health worker who asked is a
    // participant of the Appointment.
    let sr = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "category": [concept], "code": concept, "priority": a.urgency,
        "subject": {"reference": a.patient},
        "requester": {"reference": station},
        "performer": [{"reference": a.hospital}],
        "reasonCode": [{"text": a.reason}],
        "occurrenceDateTime": a.start});
    let mut appt = json!({"resourceType": "Appointment", "status": "proposed",
        "serviceCategory": [concept],
        "reasonCode": [{"text": a.reason}],
        "priority": priority_number(&a.urgency),
        "basedOn": [{"reference": "urn:uuid:consultation-request"}],
        "start": a.start, "end": end, "minutesDuration": a.minutes,
        // The patient joins the video once the doctor invites them (`join::invite_patient`).
        "participant": [{"actor": {"reference": a.patient}, "status": "needs-action", "required": "required"}]});
    if let (Some(r), Some(p)) = (&a.requester, appt["participant"].as_array_mut()) {
        p.push(json!({"actor": {"reference": r}, "status": "accepted", "required": "required"}));
    }
    if let Some(s) = &a.specialty {
        appt["specialty"] = json!([{"text": s}]);
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:consultation-request", "resource": sr,
         "request": {"method": "POST", "url": "ServiceRequest"}},
        {"resource": appt, "request": {"method": "POST", "url": "Appointment"}}]})
}

/// FHIR's Appointment.priority is a number (0 undefined, 1 highest).
fn priority_number(urgency: &str) -> u32 {
    match urgency {
        "stat" => 1,
        "asap" => 2,
        "urgent" => 3,
        _ => 5,
    }
}

/// The consultation's state, from its Appointment.
pub fn state_of(appointment: &Value) -> &'static str {
    match appointment.get("status").and_then(Value::as_str) {
        Some("proposed" | "pending") => "requested",
        Some("booked") => "accepted",
        Some("arrived" | "checked-in") => "in-progress",
        Some("fulfilled") => "finished",
        Some("cancelled" | "noshow" | "entered-in-error") => "declined",
        _ => "unknown",
    }
}

/// The participants of an Appointment.
fn participants(appointment: &Value) -> impl Iterator<Item = &Value> {
    appointment
        .get("participant")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// A participant's actor (`Practitioner/7`).
fn actor(p: &Value) -> Option<&str> {
    p.pointer("/actor/reference").and_then(Value::as_str)
}

/// Whether a participant has the type `system|code`.
fn has_type(p: &Value, system: &str, code: &str) -> bool {
    p.get("type")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(crate::fhir::codings)
        .any(|c| c == (system, code))
}

/// The assigned doctor (`Practitioner/id`), if any: the consultant among the participants.
pub fn doctor_of(appointment: &Value) -> Option<&str> {
    participants(appointment)
        .filter(|p| has_type(p, PARTICIPATION_TYPE, "CON"))
        .filter_map(actor)
        .find(|r| r.starts_with("Practitioner/"))
}

/// Accepting: the doctor joins the Appointment (as consultant) and the request's performers.
pub fn accept(appointment: &mut Value, request: &mut Value, doctor: &str) {
    appointment["status"] = json!("booked");
    if let Some(p) = appointment["participant"].as_array_mut() {
        p.push(json!({"actor": {"reference": doctor}, "status": "accepted", "required": "required",
            "type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": "CON", "display": "consultant"}]}]}));
    }
    if let Some(p) = request["performer"].as_array_mut() {
        p.push(json!({"reference": doctor}));
    }
}

/// Declining: the Appointment is cancelled with the reason; the request is revoked.
pub fn decline(appointment: &mut Value, request: &mut Value, reason: &str) {
    appointment["status"] = json!("cancelled");
    appointment["cancelationReason"] = json!({"text": reason});
    request["status"] = json!("revoked");
    request["note"] = json!([{"text": format!("Từ chối: {reason}")}]);
}

/// Starting: the Encounter (class VR) of everyone the Appointment names; the Appointment
/// `arrived`.
pub fn start(appointment: &mut Value, appointment_id: &str, request_ref: &str, now: i64) -> Value {
    appointment["status"] = json!("arrived");
    let mut people = Vec::new();
    let mut subject = Value::Null;
    for p in participants(appointment) {
        let Some(r) = actor(p) else {
            continue;
        };
        if r.starts_with("Patient/") {
            subject = json!({"reference": r});
        } else if r.starts_with("Practitioner/") {
            let mut part = json!({"individual": {"reference": r}});
            if let Some(t) = p.get("type") {
                part["type"] = t.clone();
            }
            people.push(part);
        }
    }
    json!({"resourceType": "Encounter", "status": "in-progress",
        "class": {"system": ACT_CODE, "code": "VR", "display": "virtual"},
        "type": [{"coding": [{"system": SNOMED, "code": TELECONSULTATION}], "text": "Hội chẩn từ xa"}],
        "subject": subject,
        "participant": people,
        "appointment": [{"reference": format!("Appointment/{appointment_id}")}],
        "basedOn": [{"reference": request_ref}],
        "period": {"start": format_instant(now)}})
}

/// What the doctor concluded and decided.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Conclusion {
    /// The written conclusion (kết luận hội chẩn).
    pub conclusion: String,
    /// `local` (treat at the station), `refer` (send the patient), `prescribe` (an
    /// e-prescription follows, issued with `$prescribe` and this Encounter).
    pub outcome: String,
    /// For `refer`: `Organization/id` the patient is referred to (default: the hospital).
    #[serde(default)]
    pub refer_to: Option<String>,
}

pub fn check_conclusion(c: &Conclusion) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if c.conclusion.trim().is_empty() {
        out.push((
            "conclusion",
            "a consultation's conclusion is written down (Luật KCB 2023 Điều 64)".into(),
        ));
    }
    if !matches!(c.outcome.as_str(), "local" | "refer" | "prescribe") {
        out.push((
            "outcome",
            format!("outcome is local, refer or prescribe, not '{}'", c.outcome),
        ));
    }
    out
}

/// Ending: the Encounter finished with its real end, the conclusion, the Appointment fulfilled,
/// the request completed, and for `refer` the referral.
pub fn end(
    encounter: &mut Value,
    request: &mut Value,
    appointment: &mut Value,
    doctor: &str,
    c: &Conclusion,
    now: i64,
) -> Vec<Value> {
    let reference = |v: &Value| {
        format!(
            "{}/{}",
            v["resourceType"].as_str().unwrap_or(""),
            v["id"].as_str().unwrap_or("")
        )
    };
    let (encounter_ref, request_ref) = (reference(encounter), reference(request));
    encounter["status"] = json!("finished");
    encounter["period"]["end"] = json!(format_instant(now));
    appointment["status"] = json!("fulfilled");
    request["status"] = json!("completed");
    let subject = encounter["subject"].clone();
    let display = match c.outcome.as_str() {
        "local" => "Điều trị tại tuyến xã",
        "refer" => "Chuyển tuyến",
        _ => "Kê đơn",
    };
    let mut out = vec![
        json!({"resourceType": "ClinicalImpression", "status": "completed",
        "code": {"coding": [{"system": SNOMED, "code": TELECONSULTATION}], "text": "Kết luận hội chẩn từ xa"},
        "subject": subject, "encounter": {"reference": &encounter_ref},
        "effectiveDateTime": format_instant(now), "date": format_instant(now),
        "assessor": {"reference": doctor},
        "summary": c.conclusion,
        "finding": [{"itemCodeableConcept": {"coding": [{"system": OUTCOME, "code": c.outcome, "display": display}]}}]}),
    ];
    if c.outcome == "refer" {
        let to = c
            .refer_to
            .clone()
            .or_else(|| {
                request
                    .pointer("/performer/0/reference")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default();
        out.push(json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "category": [{"coding": [{"system": SNOMED, "code": REFERRAL, "display": "Patient referral"}]}],
            "code": {"coding": [{"system": SNOMED, "code": REFERRAL}], "text": "Chuyển tuyến"},
            "subject": subject, "encounter": {"reference": encounter_ref},
            "basedOn": [{"reference": request_ref}],
            "requester": {"reference": doctor},
            "performer": [{"reference": to}],
            "reasonCode": [{"text": c.conclusion}],
            "authoredOn": format_instant(now)}));
    }
    out
}

/// The consultation as the REST API shows it.
pub fn summary(id: &str, appointment: &Value, request: Option<&Value>) -> Value {
    let r = |p: &str| {
        request
            .and_then(|v| v.pointer(p))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let patient = participants(appointment)
        .filter_map(actor)
        .find(|r| r.starts_with("Patient/"));
    json!({
        "id": id,
        "state": state_of(appointment),
        "patient": patient,
        "doctor": doctor_of(appointment),
        "hospital": r("/performer/0/reference"),
        "station": r("/requester/reference"),
        "urgency": r("/priority"),
        "reason": appointment.pointer("/reasonCode/0/text"),
        "start": appointment.get("start"),
        "end": appointment.get("end"),
        "declined": appointment.pointer("/cancelationReason/text"),
        "appointment": format!("Appointment/{id}"),
        "serviceRequest": appointment.pointer("/basedOn/0/reference"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked() -> Ask {
        serde_json::from_value(
            json!({"patient": "Patient/p1", "hospital": "Organization/bv",
            "reason": "Khó thở", "start": "2026-11-25T09:00:00+07:00",
            "requester": "Practitioner/yt"}),
        )
        .expect("an Ask")
    }

    #[test]
    fn a_consultation_goes_through_its_states() {
        let a = asked();
        assert!(check_ask(&a).is_empty());
        assert_eq!(a.urgency, "routine");
        assert_eq!(CATEGORY, format!("{SNOMED}|{TELECONSULTATION}"));
        let tx = ask_bundle(&a, "Organization/tram", 0);
        let (sr, mut appt) = (
            tx["entry"][0]["resource"].clone(),
            tx["entry"][1]["resource"].clone(),
        );
        assert_eq!(sr["requester"]["reference"], "Organization/tram");
        assert_eq!(sr["performer"][0]["reference"], "Organization/bv");
        assert_eq!(appt["basedOn"][0]["reference"], tx["entry"][0]["fullUrl"]);
        assert_eq!(state_of(&appt), "requested");
        // The health worker who asked is a participant, not the consultant.
        assert_eq!(doctor_of(&appt), None);
        let mut sr = sr;
        accept(&mut appt, &mut sr, "Practitioner/bs");
        assert_eq!(
            (state_of(&appt), doctor_of(&appt)),
            ("accepted", Some("Practitioner/bs"))
        );
        sr["id"] = json!("sr1");
        let mut enc = start(&mut appt, "a1", "ServiceRequest/sr1", 0);
        assert_eq!(state_of(&appt), "in-progress");
        assert_eq!(enc["class"]["code"], "VR");
        assert_eq!(enc["participant"].as_array().map(Vec::len), Some(2));
        enc["id"] = json!("e1");
        let c = Conclusion {
            conclusion: "Chuyển tuyến".into(),
            outcome: "refer".into(),
            refer_to: None,
        };
        let made = end(&mut enc, &mut sr, &mut appt, "Practitioner/bs", &c, 60_000);
        assert_eq!(state_of(&appt), "finished");
        assert_eq!(made[0]["encounter"]["reference"], "Encounter/e1");
        assert_eq!(made[1]["basedOn"][0]["reference"], "ServiceRequest/sr1");
        assert_eq!(made[1]["performer"][0]["reference"], "Organization/bv");
    }

    #[test]
    fn bad_requests_name_their_fields() {
        let mut a = asked();
        a.reason = " ".into();
        a.urgency = "soon".into();
        a.start = "2026-11-25".into();
        a.minutes = 1;
        let fields: Vec<&str> = check_ask(&a).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["reason", "urgency", "start", "minutes"]);
    }
}
