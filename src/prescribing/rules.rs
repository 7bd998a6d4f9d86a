//! The legal limits of an e-prescription (Circular 26/2025/TT-BYT), as pure functions over what
//! the issuing step read from the request. Every issue names the article it applies.

use crate::fhir::outcome::Issue;
use crate::vn::PrescriptionKind;

/// Articles cited in the issues.
pub const DURATION_ORDINARY: &str = "TT 26/2025/TT-BYT Điều 6 khoản 8";
pub const DURATION_NARCOTIC: &str = "TT 26/2025/TT-BYT Điều 7";
pub const DURATION_PSYCHOTROPIC: &str = "TT 26/2025/TT-BYT Điều 8";
pub const NARCOTIC_FACILITY: &str =
    "TT 26/2025/TT-BYT Điều 7 (đơn thuốc gây nghiện: cơ sở có giường bệnh)";
pub const REQUIRED_FIELDS: &str = "TT 26/2025/TT-BYT Phụ lục I (nội dung đơn thuốc)";
pub const VALIDITY: &str = "TT 26/2025/TT-BYT Điều 12 khoản 9 điểm b";

/// One line (drug) of a prescription, as far as the rules need it.
#[derive(Debug, Clone, Default)]
pub struct Line {
    /// FHIRPath of the MedicationRequest (`Bundle.entry[2].resource`).
    pub at: String,
    /// Days of supply (`dispenseRequest.expectedSupplyDuration`).
    pub days: Option<f64>,
    /// Days between dispenses (`dispenseRequest.dispenseInterval`), for phased narcotics.
    pub interval_days: Option<f64>,
}

/// What the diagnoses say about the limits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Diagnoses {
    /// A disease of the chronic-disease list (Phụ lục VII).
    pub chronic: bool,
    /// Cancer or AIDS (longer narcotic prescriptions, in phases).
    pub cancer_or_aids: bool,
}

impl Diagnoses {
    /// Classifies ICD-10 codes.
    pub fn of<'a>(codes: impl IntoIterator<Item = &'a str>) -> Diagnoses {
        let mut d = Diagnoses::default();
        for c in codes {
            d.chronic |= is_chronic(c);
            d.cancer_or_aids |= is_cancer_or_aids(c);
        }
        d
    }
}

/// ICD-10 blocks of the chronic diseases that may be prescribed for up to 90 days (TT 26/2025
/// Phụ lục VII). The annex lists 252 diseases; this is the subset of its most prescribed
/// blocks, each as `(first, last)` three-character categories inclusive.
const CHRONIC: &[(&str, &str)] = &[
    ("B18", "B18"), // chronic viral hepatitis
    ("B20", "B24"), // HIV disease
    ("C00", "D09"), // malignant neoplasms, in situ
    ("E03", "E07"), // thyroid disorders
    ("E10", "E14"), // diabetes mellitus
    ("E78", "E78"), // lipid disorders
    ("F20", "F29"), // schizophrenia and delusional disorders
    ("F31", "F33"), // bipolar and depressive disorders
    ("G20", "G20"), // Parkinson's disease
    ("G40", "G40"), // epilepsy
    ("I10", "I15"), // hypertensive diseases
    ("I20", "I25"), // ischaemic heart diseases
    ("I48", "I48"), // atrial fibrillation
    ("I50", "I50"), // heart failure
    ("J44", "J45"), // COPD, asthma
    ("K73", "K74"), // chronic hepatitis, cirrhosis
    ("M05", "M06"), // rheumatoid arthritis
    ("M81", "M81"), // osteoporosis
    ("N18", "N18"), // chronic kidney disease
];

fn category(code: &str) -> &str {
    code.get(..3).unwrap_or(code)
}

fn in_blocks(code: &str, blocks: &[(&str, &str)]) -> bool {
    let c = category(code.trim()).to_ascii_uppercase();
    c.len() == 3
        && blocks
            .iter()
            .any(|(lo, hi)| *lo <= c.as_str() && c.as_str() <= *hi)
}

pub fn is_chronic(code: &str) -> bool {
    in_blocks(code, CHRONIC)
}

/// Cancer (C00–C97) or AIDS (B20–B24): narcotics up to 30 days in phases (Điều 7).
pub fn is_cancer_or_aids(code: &str) -> bool {
    in_blocks(code, &[("C00", "C97"), ("B20", "B24")])
}

fn too_long(line: &Line, max: f64, what: &str, article: &str) -> Option<Issue> {
    let days = line.days?;
    (days > max).then(|| {
        Issue::error(
            "business-rule",
            format!("{what}: at most {max} days of supply, not {days} ({article})"),
        )
        .at(format!(
            "{}.dispenseRequest.expectedSupplyDuration",
            line.at
        ))
    })
}

/// The duration and facility rules for the lines of one prescription of `kind`.
pub fn check(kind: PrescriptionKind, lines: &[Line], dx: Diagnoses, has_beds: bool) -> Vec<Issue> {
    let mut out = Vec::new();
    match kind {
        PrescriptionKind::Ordinary | PrescriptionKind::Traditional | PrescriptionKind::Herbal => {
            let (max, what) = if dx.chronic {
                (
                    90.0,
                    "an ordinary prescription for a listed chronic disease",
                )
            } else {
                (30.0, "an ordinary prescription")
            };
            out.extend(
                lines
                    .iter()
                    .filter_map(|l| too_long(l, max, what, DURATION_ORDINARY)),
            );
        }
        PrescriptionKind::Narcotic => {
            if !has_beds {
                out.push(Issue::error(
                    "business-rule",
                    format!(
                        "narcotic medicines are prescribed only at facilities with inpatient \
                         beds ({NARCOTIC_FACILITY})"
                    ),
                ));
            }
            for l in lines {
                if dx.cancer_or_aids {
                    out.extend(too_long(
                        l,
                        30.0,
                        "a narcotic prescription for cancer or AIDS",
                        DURATION_NARCOTIC,
                    ));
                    // Over ten days, it is dispensed in phases of at most ten days each.
                    if l.days.is_some_and(|d| d > 10.0)
                        && !l.interval_days.is_some_and(|i| i > 0.0 && i <= 10.0)
                    {
                        out.push(
                            Issue::error(
                                "business-rule",
                                format!(
                                    "a narcotic prescription over 10 days is dispensed in phases \
                                     of at most 10 days: set dispenseRequest.dispenseInterval \
                                     ({DURATION_NARCOTIC})"
                                ),
                            )
                            .at(format!("{}.dispenseRequest.dispenseInterval", l.at)),
                        );
                    }
                } else {
                    out.extend(too_long(
                        l,
                        7.0,
                        "a narcotic prescription for acute care",
                        DURATION_NARCOTIC,
                    ));
                }
            }
        }
        PrescriptionKind::Psychotropic => {
            let (max, what) = if dx.chronic {
                (30.0, "a psychotropic prescription for a chronic disease")
            } else {
                (10.0, "a psychotropic prescription for acute care")
            };
            out.extend(
                lines
                    .iter()
                    .filter_map(|l| too_long(l, max, what, DURATION_PSYCHOTROPIC)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(days: f64) -> Line {
        Line {
            at: "MedicationRequest".into(),
            days: Some(days),
            interval_days: None,
        }
    }

    #[test]
    fn durations_follow_the_circular() {
        use PrescriptionKind::*;
        let acute = Diagnoses::of(["J06.9"]);
        let chronic = Diagnoses::of(["I10"]);
        let cancer = Diagnoses::of(["C34.1"]);
        // (kind, days, diagnoses, beds, allowed)
        let cases = [
            (Ordinary, 30.0, acute, false, true),
            (Ordinary, 31.0, acute, false, false),
            (Ordinary, 90.0, chronic, false, true),
            (Ordinary, 91.0, chronic, false, false),
            (Narcotic, 7.0, acute, true, true),
            (Narcotic, 8.0, acute, true, false),
            (Narcotic, 5.0, acute, false, false),
            (Narcotic, 10.0, cancer, true, true),
            (Psychotropic, 10.0, acute, false, true),
            (Psychotropic, 11.0, acute, false, false),
            (Psychotropic, 30.0, chronic, false, true),
            (Psychotropic, 31.0, chronic, false, false),
            (Traditional, 30.0, acute, false, true),
        ];
        for (kind, days, dx, beds, ok) in cases {
            let issues = check(kind, &[line(days)], dx, beds);
            assert_eq!(
                issues.is_empty(),
                ok,
                "{kind:?} {days} {dx:?} {beds}: {issues:?}"
            );
            for i in &issues {
                assert!(i.diagnostics.contains("TT 26/2025/TT-BYT"), "{i:?}");
            }
        }
        // Cancer narcotics: 30 days in phases of at most 10.
        let mut l = line(30.0);
        assert_eq!(check(Narcotic, &[l.clone()], cancer, true).len(), 1);
        l.interval_days = Some(10.0);
        assert!(check(Narcotic, &[l.clone()], cancer, true).is_empty());
        l.days = Some(31.0);
        assert_eq!(check(Narcotic, &[l], cancer, true).len(), 1);
    }

    #[test]
    fn diagnoses_are_classified_by_icd10_block() {
        assert!(is_chronic("E11.9") && is_chronic("i10") && is_chronic("C50"));
        assert!(!is_chronic("J06.9") && !is_chronic("") && !is_chronic("E1"));
        assert!(is_cancer_or_aids("B20.0") && is_cancer_or_aids("C97"));
        assert!(!is_cancer_or_aids("D10") && !is_cancer_or_aids("B25"));
    }
}
