//! A prescription in the field layout of the national e-prescription system's `gui-don-thuoc`
//! request (QĐ 808/QĐ-BYT; `../shared/domain/VIETNAM.md` §3): snake_case JSON, values as
//! strings, one payload per prescription code. Rendering only: the facility forwards it.

use serde_json::{Map, Value, json};

use crate::fhir::identifier_value;
use crate::fhir::vn_rules::{CITIZEN_ID, PASSPORT_NUMBER};

/// What a prescription is rendered from: its lines and the resources they reference.
pub struct Parts<'a> {
    pub code: &'a str,
    pub kind: char,
    pub lines: &'a [Value],
    pub patient: Option<&'a Value>,
    pub practitioner: Option<&'a Value>,
    /// Conditions the lines reference (their ICD-10 codes join the reasonCodes).
    pub conditions: &'a [Value],
}

fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or("").to_string()
}

/// `dd/MM/yyyy` of a FHIR date.
fn vn_date(d: &str) -> String {
    match (d.get(0..4), d.get(5..7), d.get(8..10)) {
        (Some(y), Some(m), Some(day)) => format!("{day}/{m}/{y}"),
        _ => d.to_string(),
    }
}

/// `yyyy-MM-dd HH:mm:ss` of a FHIR dateTime (its own clock time, as written).
fn vn_date_time(d: &str) -> String {
    match (d.get(0..10), d.get(11..19)) {
        (Some(day), Some(time)) => format!("{day} {time}"),
        _ => d
            .get(0..10)
            .map_or_else(String::new, |day| format!("{day} 00:00:00")),
    }
}

fn name_of(r: Option<&Value>) -> String {
    let Some(n) = r.and_then(|r| r.pointer("/name/0")) else {
        return String::new();
    };
    if let Some(t) = n.get("text").and_then(Value::as_str) {
        return t.to_string();
    }
    let mut parts: Vec<&str> = Vec::new();
    parts.extend(n.get("family").and_then(Value::as_str));
    parts.extend(
        n.get("given")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str),
    );
    parts.join(" ")
}

fn concept_text(c: &Value) -> String {
    c.get("text")
        .and_then(Value::as_str)
        .or_else(|| c.pointer("/coding/0/display").and_then(Value::as_str))
        .unwrap_or("")
        .to_string()
}

fn diagnoses(parts: &Parts<'_>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let concepts = parts
        .lines
        .iter()
        .flat_map(|l| {
            l.get("reasonCode")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .chain(parts.conditions.iter().filter_map(|c| c.get("code")));
    for c in concepts {
        for coding in c
            .get("coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let system = coding.get("system").and_then(Value::as_str).unwrap_or("");
            if !super::is_icd10(system) {
                continue;
            }
            let code = text(coding.get("code"));
            if out.iter().any(|d| d["ma_chan_doan"] == code.as_str()) {
                continue;
            }
            let name = coding
                .get("display")
                .and_then(Value::as_str)
                .map_or_else(|| concept_text(c), str::to_string);
            out.push(json!({"ma_chan_doan": code, "ten_chan_doan": name, "ket_luan": name}));
        }
    }
    out
}

fn line(l: &Value) -> Value {
    let med = l
        .get("medicationCodeableConcept")
        .cloned()
        .unwrap_or(Value::Null);
    let quantity = l.pointer("/dispenseRequest/quantity");
    let q = quantity
        .and_then(|q| q.get("value"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    json!({
        "ma_thuoc": text(med.pointer("/coding/0/code")),
        "biet_duoc": text(med.pointer("/coding/0/display")),
        "ten_thuoc": concept_text(&med),
        "don_vi_tinh": text(quantity.and_then(|q| q.get("unit"))),
        // TT 26/2025 Phụ lục I: a quantity under ten is written with a leading zero ("05").
        "so_luong": if q < 10.0 && q.fract() == 0.0 { format!("{:02}", q as i64) } else { q.to_string() },
        "cach_dung": text(l.pointer("/dosageInstruction/0/text")),
    })
}

/// The `gui-don-thuoc` payload of one prescription.
pub fn gui_don_thuoc(parts: &Parts<'_>) -> Value {
    let patient = parts.patient;
    let id_number = patient
        .and_then(|p| {
            identifier_value(p, CITIZEN_ID).or_else(|| identifier_value(p, PASSPORT_NUMBER))
        })
        .unwrap_or_default();
    let first = parts.lines.first().cloned().unwrap_or(Value::Null);
    let advice: Vec<String> = parts
        .lines
        .iter()
        .flat_map(|l| {
            l.get("note")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|n| n.get("text").and_then(Value::as_str).map(str::to_string))
        .collect();
    let mut m = Map::new();
    m.insert("loai_don_thuoc".into(), json!(parts.kind.to_string()));
    m.insert("ma_don_thuoc".into(), json!(parts.code));
    m.insert("ho_ten_benh_nhan".into(), json!(name_of(patient)));
    m.insert(
        "ngay_sinh_benh_nhan".into(),
        json!(vn_date(&text(patient.and_then(|p| p.get("birthDate"))))),
    );
    m.insert(
        "gioi_tinh".into(),
        json!(match patient
            .and_then(|p| p.get("gender"))
            .and_then(Value::as_str)
        {
            Some("male") => "1",
            Some("female") => "2",
            _ => "3",
        }),
    );
    m.insert(
        "dia_chi".into(),
        json!(text(patient.and_then(|p| p.pointer("/address/0/text")))),
    );
    m.insert("ma_dinh_danh_y_te".into(), json!(id_number));
    m.insert("chan_doan".into(), Value::Array(diagnoses(parts)));
    m.insert("hinh_thuc_dieu_tri".into(), json!("1"));
    m.insert(
        "thong_tin_don_thuoc".into(),
        Value::Array(parts.lines.iter().map(line).collect()),
    );
    m.insert("loi_dan".into(), json!(advice.join("; ")));
    m.insert(
        "so_dien_thoai_nguoi_kham_benh".into(),
        json!(text(patient.and_then(|p| p.pointer("/telecom/0/value")))),
    );
    m.insert(
        "ngay_gio_ke_don".into(),
        json!(vn_date_time(&text(first.get("authoredOn")))),
    );
    m.insert("ho_ten_bac_si".into(), json!(name_of(parts.practitioner)));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_national_layout() {
        let patient = json!({"resourceType": "Patient", "name": [{"family": "Nguyễn", "given": ["Văn", "An"]}],
            "gender": "male", "birthDate": "1990-03-07",
            "identifier": [{"system": CITIZEN_ID, "value": "001090000001"}]});
        let line1 = json!({"resourceType": "MedicationRequest", "authoredOn": "2026-11-24T09:30:00+07:00",
            "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "J06.9", "display": "Viêm họng cấp"}]}],
            "medicationCodeableConcept": {"coding": [{"code": "40.152", "display": "Amoxicillin 500mg"}], "text": "Amoxicillin 500mg"},
            "dosageInstruction": [{"text": "Uống 1 viên x 3 lần/ngày"}],
            "dispenseRequest": {"quantity": {"value": 5, "unit": "viên"}},
            "note": [{"text": "Tái khám sau 5 ngày"}]});
        let v = gui_don_thuoc(&Parts {
            code: "01001ABC1234-c",
            kind: 'c',
            lines: &[line1],
            patient: Some(&patient),
            practitioner: None,
            conditions: &[],
        });
        assert_eq!(v["loai_don_thuoc"], "c");
        assert_eq!(v["ho_ten_benh_nhan"], "Nguyễn Văn An");
        assert_eq!(v["ngay_sinh_benh_nhan"], "07/03/1990");
        assert_eq!(v["ma_dinh_danh_y_te"], "001090000001");
        assert_eq!(v["chan_doan"][0]["ma_chan_doan"], "J06.9");
        assert_eq!(v["thong_tin_don_thuoc"][0]["so_luong"], "05");
        assert_eq!(
            v["thong_tin_don_thuoc"][0]["ten_thuoc"],
            "Amoxicillin 500mg"
        );
        assert_eq!(v["ngay_gio_ke_don"], "2026-11-24 09:30:00");
        assert_eq!(v["loi_dan"], "Tái khám sau 5 ngày");
    }
}
