//! The Vietnamese identifier rules (`crate::vn`) applied to resources on write: a citizen ID, a
//! health-insurance card code, a facility code, a licence to practise or an e-prescription code
//! that is not well-formed is refused with its FHIRPath location (whatever the resource type), a
//! Patient's citizen ID must agree with its birth date and gender (TT 07/2016/TT-BCA Đ7), and an
//! adult VN Patient must be identified.

use serde_json::{Map, Value};

use super::outcome::Issue;
use crate::vn::{BhytNumber, Cccd, FacilityCode, PractitionerLicence, PrescriptionCode, Sex};

/// The VN Core identifier system of personal identification numbers.
pub const CITIZEN_ID: &str = "http://fhir.ehealth.gov.vn/core/sid/citizen_id";
/// The VN Core identifier system of health-insurance card codes.
pub const INSURANCE_NUMBER: &str = "http://fhir.ehealth.gov.vn/core/sid/insurance_number";
/// The VN Core identifier system of passport numbers.
pub const PASSPORT_NUMBER: &str = "http://fhir.ehealth.gov.vn/core/sid/passport_number";

/// The VN Core identifier system of health-facility codes (MA_CSKCB).
pub const PROVIDER_CODE: &str = "http://fhir.ehealth.gov.vn/core/sid/provider-code";
/// The VN Core identifier system of practitioners' licences to practise.
pub const PRACTITIONER_LICENCE: &str =
    "http://fhir.ehealth.gov.vn/core/sid/provider-medical-license-number";
/// Our identifier system of e-prescription codes (`MedicationRequest.groupIdentifier`).
pub const PRESCRIPTION_CODE: &str = "https://yba.vn/fhir/sid/prescription-code";

/// The errors of the resource `obj` at FHIRPath `at` (`Patient`, `Bundle.entry[0].resource`):
/// every `identifier` (and `groupIdentifier`) in one of the systems above must be well-formed.
pub fn check(obj: &Map<String, Value>, at: &str) -> Vec<Issue> {
    let mut out = Vec::new();
    if let Some(Value::Array(ids)) = obj.get("identifier") {
        for (i, id) in ids.iter().enumerate() {
            check_identifier(id, || format!("{at}.identifier[{i}].value"), &mut out);
        }
    }
    if let Some(id) = obj.get("groupIdentifier") {
        check_identifier(id, || format!("{at}.groupIdentifier.value"), &mut out);
    }
    out
}

fn check_identifier(id: &Value, here: impl Fn() -> String, out: &mut Vec<Issue>) {
    let (Some(system), Some(value)) = (
        id.get("system").and_then(Value::as_str),
        id.get("value").and_then(Value::as_str),
    ) else {
        return;
    };
    let parsed = match system {
        CITIZEN_ID => Cccd::parse(value).map(|_| ()),
        INSURANCE_NUMBER => BhytNumber::parse(value).map(|_| ()),
        PROVIDER_CODE => FacilityCode::parse(value).map(|_| ()),
        PRACTITIONER_LICENCE => PractitionerLicence::parse(value).map(|_| ()),
        PRESCRIPTION_CODE => PrescriptionCode::parse(value).map(|_| ()),
        _ => return,
    };
    if let Err(e) = parsed {
        out.push(Issue::error("value", e.0).at(here()));
    }
}

/// A Patient's citizen IDs against its birth date and gender (TT 07/2016/TT-BCA Đ7): the
/// number encodes the birth year and sex. A disagreement is an error, or a warning when
/// `lenient` (legacy imports, where a recorded sex may have been corrected since). IDs that do
/// not parse are `check`'s business.
pub fn agreement(obj: &Map<String, Value>, at: &str, lenient: bool) -> Vec<Issue> {
    let Some(Value::Array(ids)) = obj.get("identifier") else {
        return Vec::new();
    };
    let year = obj
        .get("birthDate")
        .and_then(Value::as_str)
        .and_then(|d| d.get(..4))
        .and_then(|y| y.parse::<i32>().ok());
    let sex = match obj.get("gender").and_then(Value::as_str) {
        Some("male") => Some(Sex::Male),
        Some("female") => Some(Sex::Female),
        _ => None,
    };
    let mut out = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if id.get("system").and_then(Value::as_str) != Some(CITIZEN_ID) {
            continue;
        }
        let Some(Ok(c)) = id.get("value").and_then(Value::as_str).map(Cccd::parse) else {
            continue;
        };
        for note in c.check(year, sex, lenient) {
            let issue =
                Issue::error("value", note.message).at(format!("{at}.identifier[{i}].value"));
            out.push(if note.error { issue } else { issue.warning() });
        }
    }
    out
}

/// The VN Patient profile's rule that cardinality cannot say: an adult (18 or over, Bộ luật Dân
/// sự 2015 Đ20) is identified by a citizen ID (every citizen has one from birth registration,
/// Luật Căn cước 26/2023/QH15 Đ12), or, for a foreigner, by a passport number. `today` is
/// `YYYY-MM-DD`.
pub fn adult_identified(obj: &Map<String, Value>, at: &str, today: &str) -> Option<Issue> {
    let birth = obj.get("birthDate").and_then(Value::as_str)?;
    let (by, bmd) = (
        birth.get(..4)?.parse::<i32>().ok()?,
        birth.get(4..).unwrap_or(""),
    );
    let (ty, tmd) = (
        today.get(..4)?.parse::<i32>().ok()?,
        today.get(4..).unwrap_or(""),
    );
    // A birth date of year or year-month precision counts as its earliest day.
    let age = ty - by - i32::from(tmd < bmd);
    if age < 18 {
        return None;
    }
    let identified = obj
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|i| {
            matches!(
                i.get("system").and_then(Value::as_str),
                Some(CITIZEN_ID | PASSPORT_NUMBER)
            ) && i.get("value").is_some()
        });
    (!identified).then(|| {
        Issue::error(
            "required",
            format!(
                "an adult patient (aged {age}) must carry a citizen ID ({CITIZEN_ID}) or, \
                 for a foreigner, a passport number ({PASSPORT_NUMBER})"
            ),
        )
        .at(format!("{at}.identifier"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our NamingSystems (`fhir-profiles/vn/naming-systems.json`) are valid R4 and name the
    /// systems the rules above check.
    #[test]
    fn naming_systems_are_valid_and_name_the_checked_systems() {
        let bundle: Value =
            serde_json::from_str(include_str!("../../fhir-profiles/vn/naming-systems.json"))
                .expect("JSON");
        assert_eq!(super::super::validate::resource(&bundle), Ok("Bundle"));
        let ids: Vec<&str> = bundle["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| {
                assert_eq!(e["resource"]["resourceType"], "NamingSystem");
                e["resource"]["uniqueId"][0]["value"]
                    .as_str()
                    .expect("uniqueId")
            })
            .collect();
        assert!(
            ids.contains(&CITIZEN_ID) && ids.contains(&INSURANCE_NUMBER),
            "{ids:?}"
        );
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }
}
