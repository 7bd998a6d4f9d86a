//! Vietnamese identifiers as validated types: constructing one validates it. Each rule names
//! its legal source; the sources and their status are collected in `../shared/domain/VIETNAM.md`.
//!
//! A value that breaks a rule of form (length, characters, a field out of its range) is an
//! [`IdError`]; a value that is well-formed but unusual (a province code outside the official
//! table, which may be a registration abroad) parses, and says so through a [`Note`].

use std::fmt;

/// A problem with an identifier's form: what is wrong, for an OperationOutcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError(pub String);

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdError {}

/// Something worth a warning about a well-formed identifier, or an error when checked against
/// the rest of the record (see [`Cccd::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Whether it refuses the record (an error) or only warns.
    pub error: bool,
    pub message: String,
}

impl Note {
    fn warning(message: impl Into<String>) -> Note {
        Note {
            error: false,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    Male,
    Female,
}

/// The provinces of birth registration and their codes, as the first three digits of a personal
/// identification number: TT 07/2016/TT-BCA Phụ lục I (unchanged by TT 59/2021/TT-BCA). These
/// are the 63 provinces before the 2025 merger; numbers issued keep their codes after it
/// (the 34 provinces of 01/07/2025 are mapped separately, CV 915/CTK-CSCL).
pub const PROVINCES: &[(&str, &str)] = &[
    ("001", "Hà Nội"),
    ("002", "Hà Giang"),
    ("004", "Cao Bằng"),
    ("006", "Bắc Kạn"),
    ("008", "Tuyên Quang"),
    ("010", "Lào Cai"),
    ("011", "Điện Biên"),
    ("012", "Lai Châu"),
    ("014", "Sơn La"),
    ("015", "Yên Bái"),
    ("017", "Hòa Bình"),
    ("019", "Thái Nguyên"),
    ("020", "Lạng Sơn"),
    ("022", "Quảng Ninh"),
    ("024", "Bắc Giang"),
    ("025", "Phú Thọ"),
    ("026", "Vĩnh Phúc"),
    ("027", "Bắc Ninh"),
    ("030", "Hải Dương"),
    ("031", "Hải Phòng"),
    ("033", "Hưng Yên"),
    ("034", "Thái Bình"),
    ("035", "Hà Nam"),
    ("036", "Nam Định"),
    ("037", "Ninh Bình"),
    ("038", "Thanh Hóa"),
    ("040", "Nghệ An"),
    ("042", "Hà Tĩnh"),
    ("044", "Quảng Bình"),
    ("045", "Quảng Trị"),
    ("046", "Thừa Thiên Huế"),
    ("048", "Đà Nẵng"),
    ("049", "Quảng Nam"),
    ("051", "Quảng Ngãi"),
    ("052", "Bình Định"),
    ("054", "Phú Yên"),
    ("056", "Khánh Hòa"),
    ("058", "Ninh Thuận"),
    ("060", "Bình Thuận"),
    ("062", "Kon Tum"),
    ("064", "Gia Lai"),
    ("066", "Đắk Lắk"),
    ("067", "Đắk Nông"),
    ("068", "Lâm Đồng"),
    ("070", "Bình Phước"),
    ("072", "Tây Ninh"),
    ("074", "Bình Dương"),
    ("075", "Đồng Nai"),
    ("077", "Bà Rịa – Vũng Tàu"),
    ("079", "Thành phố Hồ Chí Minh"),
    ("080", "Long An"),
    ("082", "Tiền Giang"),
    ("083", "Bến Tre"),
    ("084", "Trà Vinh"),
    ("086", "Vĩnh Long"),
    ("087", "Đồng Tháp"),
    ("089", "An Giang"),
    ("091", "Kiên Giang"),
    ("092", "Cần Thơ"),
    ("093", "Hậu Giang"),
    ("094", "Sóc Trăng"),
    ("095", "Bạc Liêu"),
    ("096", "Cà Mau"),
];

/// The province registered under a three-digit code.
pub fn province(code: &str) -> Option<&'static str> {
    PROVINCES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, name)| *name)
}

/// A personal identification number (số định danh cá nhân, the number of the citizen
/// identity card, CCCD): `PPP G YY RRRRRR` (NĐ 137/2015/NĐ-CP Đ13; TT 07/2016/TT-BCA; Luật Căn
/// cước 26/2023/QH15 Đ12). Since 01/07/2025 it is also a person's medical identifier (NĐ
/// 102/2025/NĐ-CP Đ6).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cccd(String);

impl Cccd {
    /// Parses a number: twelve digits, spaces ignored (a 9-digit CMND is another identifier).
    /// There is no check digit (NĐ 137/2015 Đ13), so the form is all a program can check;
    /// whether the number exists is for the population database (NĐ 69/2024/NĐ-CP Đ18 k4).
    pub fn parse(s: &str) -> Result<Cccd, IdError> {
        let digits: String = s.chars().filter(|c| *c != ' ').collect();
        if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError(format!(
                "'{s}' is not a personal identification number: it has 12 digits (PPP G YY RRRRRR)"
            )));
        }
        Ok(Cccd(digits))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The three-digit code of the province of birth registration.
    pub fn province_code(&self) -> &str {
        &self.0[..3]
    }

    /// The province of birth registration; None for a code outside the official table.
    pub fn province(&self) -> Option<&'static str> {
        province(self.province_code())
    }

    fn gender_digit(&self) -> u32 {
        u32::from(self.0.as_bytes()[3] - b'0')
    }

    /// The year of birth the number encodes: century from the gender digit (0/1 1900s, 2/3
    /// 2000s, 4/5 2100s, ...) and its last two digits (TT 07/2016/TT-BCA Đ7).
    pub fn birth_year(&self) -> i32 {
        let yy: i32 = self.0[4..6].parse().unwrap_or(0);
        1900 + 100 * (self.gender_digit() / 2) as i32 + yy
    }

    /// The sex the number encodes: an even gender digit is male, an odd one female
    /// (TT 07/2016/TT-BCA Đ7).
    pub fn sex(&self) -> Sex {
        if self.gender_digit().is_multiple_of(2) {
            Sex::Male
        } else {
            Sex::Female
        }
    }

    /// What is unusual about the number by itself: a province code outside the official table
    /// (perhaps a registration abroad: a warning, never a refusal), or a century of birth still
    /// to come.
    pub fn notes(&self) -> Vec<Note> {
        let mut out = Vec::new();
        if self.province().is_none() {
            out.push(Note::warning(format!(
                "province code {} is not in the official table (TT 07/2016/TT-BCA Phụ lục I); a registration abroad?",
                self.province_code()
            )));
        }
        if self.gender_digit() > 3 {
            out.push(Note::warning(format!(
                "the number encodes a birth in {}, not yet possible",
                self.birth_year()
            )));
        }
        out
    }

    /// The number checked against the record it identifies: its encoded birth year and sex must
    /// agree with `Patient.birthDate` and `Patient.gender` where they are given (TT 07/2016
    /// Đ7). A disagreement is an error, or a warning when `lenient` (legacy imports, where a
    /// recorded sex may have been corrected since).
    pub fn check(&self, birth_year: Option<i32>, sex: Option<Sex>, lenient: bool) -> Vec<Note> {
        let mut out = self.notes();
        if let Some(y) = birth_year
            && y != self.birth_year()
        {
            out.push(Note {
                error: !lenient,
                message: format!(
                    "the personal identification number encodes birth year {}, the record says {y}",
                    self.birth_year()
                ),
            });
        }
        if let Some(s) = sex
            && s != self.sex()
        {
            let says = |s: Sex| if s == Sex::Male { "male" } else { "female" };
            out.push(Note {
                error: !lenient,
                message: format!(
                    "the personal identification number encodes sex {}, the record says {}",
                    says(self.sex()),
                    says(s)
                ),
            });
        }
        out
    }
}

impl fmt::Display for Cccd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Beneficiary groups of the health-insurance card code (QĐ 1351/QĐ-BHXH, 16/11/2015): the
/// first two letters of the code.
#[rustfmt::skip]
pub const BHYT_GROUPS: &[&str] = &[
    // Employers and employees contribute.
    "DN", "HX", "CH", "NN", "TK", "HC", "XK",
    // Paid by the social-insurance fund.
    "HT", "TB", "NO", "CT", "XB", "TN", "CS",
    // Paid by the state budget.
    "QN", "CA", "CY", "XN", "MS", "CC", "CK", "CB", "KC", "HD", "TE", "BT", "HN", "DT", "DK", "XD",
    "TS", "TC", "TQ", "TV", "TA", "TY", "HG", "LS", "PV",
    // Subsidised by the state budget.
    "CN", "HS", "SV", "GB",
    // Households.
    "GD",
];

/// A health-insurance card code (mã thẻ BHYT): `AA L PP NNNNNNNNNN` — beneficiary group,
/// benefit level 1–5, province, and the 10-digit lifetime social-insurance number
/// (QĐ 1351/QĐ-BHXH, 16/11/2015).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BhytNumber(String);

impl BhytNumber {
    /// Parses a card code (spaces ignored, letters of any case).
    pub fn parse(s: &str) -> Result<BhytNumber, IdError> {
        let code: String = s
            .chars()
            .filter(|c| *c != ' ')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let b = code.as_bytes();
        let well_formed = b.len() == 15
            && b[..2].iter().all(u8::is_ascii_uppercase)
            && b[2..].iter().all(u8::is_ascii_digit);
        if !well_formed {
            return Err(IdError(format!(
                "'{s}' is not a health-insurance card code: two letters, the benefit level, two digits of province and the 10-digit social-insurance number (e.g. HS4010123456789)"
            )));
        }
        if !BHYT_GROUPS.contains(&&code[..2]) {
            return Err(IdError(format!(
                "'{}' is not a beneficiary group of QĐ 1351/QĐ-BHXH",
                &code[..2]
            )));
        }
        if !(b'1'..=b'5').contains(&b[2]) {
            return Err(IdError(format!(
                "benefit level {} is not one of 1–5 (QĐ 1351/QĐ-BHXH)",
                b[2] as char
            )));
        }
        Ok(BhytNumber(code))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn group(&self) -> &str {
        &self.0[..2]
    }

    pub fn benefit_level(&self) -> u8 {
        self.0.as_bytes()[2] - b'0'
    }

    /// The two-digit province code of the issuing office.
    pub fn province_code(&self) -> &str {
        &self.0[3..5]
    }

    /// The lifetime social-insurance number (mã số BHXH).
    pub fn social_insurance_number(&self) -> &str {
        &self.0[5..]
    }

    /// A province code outside the official table is a warning (the card may still be valid).
    pub fn notes(&self) -> Vec<Note> {
        if province(&format!("0{}", self.province_code())).is_some() {
            Vec::new()
        } else {
            vec![Note::warning(format!(
                "province code {} of the card is not in the official table",
                self.province_code()
            ))]
        }
    }
}

impl fmt::Display for BhytNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A health facility's code (mã cơ sở khám chữa bệnh, `MA_CSKCB`): five characters (QĐ
/// 130/QĐ-BYT, XML table 1). How codes are assigned (QĐ 384/QĐ-BYT 2019) is not checked: codes
/// seen start with a province code, which is not a published rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FacilityCode(String);

impl FacilityCode {
    pub fn parse(s: &str) -> Result<FacilityCode, IdError> {
        let code = s.trim();
        if code.len() == 5 && code.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(FacilityCode(code.to_ascii_uppercase()))
        } else {
            Err(IdError(format!(
                "'{s}' is not a facility code: five letters or digits (MA_CSKCB, QĐ 130/QĐ-BYT)"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FacilityCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A practitioner's licence to practise (chứng chỉ hành nghề, CCHN, under Luật KCB 40/2009;
/// giấy phép hành nghề, GPHN, under Luật KCB 15/2023/QH15 Đ30 from 01/01/2024), as written on the
/// licence: a serial number, the issuing authority's code, and the kind, `000123/HNO-CCHN` or
/// `001234/BYT-GPHN`. The layout is what licences show, not a published rule **[?]**, so only
/// what no licence can look like is refused (empty, blanks inside, more than 30 characters, no
/// digit, characters other than letters, digits, `/`, `-` and `.`); [`PractitionerLicence::kind`]
/// says whether the usual layout was recognised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PractitionerLicence(String);

/// The kind of a licence to practise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LicenceKind {
    /// Chứng chỉ hành nghề (before 2024).
    Certificate,
    /// Giấy phép hành nghề (Luật KCB 2023).
    Licence,
}

impl PractitionerLicence {
    pub fn parse(s: &str) -> Result<PractitionerLicence, IdError> {
        let v = s.trim();
        let ok = !v.is_empty()
            && v.len() <= 30
            && v.bytes().any(|b| b.is_ascii_digit())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.'));
        if ok {
            Ok(PractitionerLicence(v.to_ascii_uppercase()))
        } else {
            Err(IdError(format!(
                "'{s}' is not a licence to practise: up to 30 letters, digits, '/', '-' or '.', \
                 such as 000123/HNO-CCHN or 001234/BYT-GPHN"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The kind, when the number has the usual `serial/AUTHORITY-KIND` layout.
    pub fn kind(&self) -> Option<LicenceKind> {
        let (serial, rest) = self.0.split_once('/')?;
        if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        match rest.rsplit_once('-')? {
            (auth, "CCHN") if !auth.is_empty() => Some(LicenceKind::Certificate),
            (auth, "GPHN") if !auth.is_empty() => Some(LicenceKind::Licence),
            _ => None,
        }
    }
}

/// What an e-prescription holds, from the last character of its code (TT 26/2025/TT-BYT Phụ lục
/// I, note 1; TT 55/2025 for traditional medicine; the national system's `loai_don_thuoc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrescriptionKind {
    /// `c`: ordinary medicines.
    Ordinary,
    /// `n`: narcotic medicines (a separate form, 3 copies).
    Narcotic,
    /// `h`: psychotropic medicines and precursors.
    Psychotropic,
    /// `y`: traditional medicine (the national system's code).
    Traditional,
    /// `t`: herbal decoction (TT 55/2025).
    Herbal,
}

impl PrescriptionKind {
    /// The letter that ends the code (the national system's `loai_don_thuoc`).
    pub fn letter(self) -> char {
        match self {
            PrescriptionKind::Ordinary => 'c',
            PrescriptionKind::Narcotic => 'n',
            PrescriptionKind::Psychotropic => 'h',
            PrescriptionKind::Traditional => 'y',
            PrescriptionKind::Herbal => 't',
        }
    }
}

/// An e-prescription code (mã đơn thuốc), `xxxxxyyyyyyy-z`: the 5-character facility code, 7
/// random letters or digits unique within the facility, a hyphen, and the kind (TT 26/2025/TT-BYT
/// Phụ lục I note 1). Codes are written in either case; they are kept in the national system's
/// form, the facility and random part in upper case and the kind in lower case (`25366VMA336R-c`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrescriptionCode(String);

impl PrescriptionCode {
    pub fn parse(s: &str) -> Result<PrescriptionCode, IdError> {
        let v = s.trim().to_ascii_uppercase();
        let bad = |why: &str| {
            IdError(format!(
                "'{s}' is not an e-prescription code ({why}): 5-character facility code, 7 \
                 letters or digits, '-', and C, N, H, Y or T (TT 26/2025/TT-BYT)"
            ))
        };
        if v.len() != 14 || !v.is_ascii() {
            return Err(bad("14 characters"));
        }
        let (body, kind) = v.split_at(12);
        if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad("letters and digits before the hyphen"));
        }
        if !matches!(kind, "-C" | "-N" | "-H" | "-Y" | "-T") {
            return Err(bad("unknown kind"));
        }
        Ok(PrescriptionCode(format!(
            "{body}{}",
            kind.to_ascii_lowercase()
        )))
    }

    /// A new code: the facility's, 7 random letters or digits, and the kind's letter.
    pub fn new(
        facility: &FacilityCode,
        kind: PrescriptionKind,
        random: &[u8; 7],
    ) -> PrescriptionCode {
        const ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut s = String::with_capacity(14);
        s.push_str(facility.as_str());
        s.extend(random.iter().map(|b| ALPHABET[*b as usize % 36] as char));
        s.push('-');
        s.push(kind.letter());
        PrescriptionCode(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The facility that issued it.
    pub fn facility(&self) -> FacilityCode {
        FacilityCode(self.0[..5].to_string())
    }

    pub fn kind(&self) -> PrescriptionKind {
        match self.0.as_bytes()[13] {
            b'n' => PrescriptionKind::Narcotic,
            b'h' => PrescriptionKind::Psychotropic,
            b'y' => PrescriptionKind::Traditional,
            b't' => PrescriptionKind::Herbal,
            _ => PrescriptionKind::Ordinary,
        }
    }
}

impl fmt::Display for PrescriptionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citizen_ids_parse_and_explain_themselves() {
        // (input, province, birth year, sex)
        let valid = [
            ("001090000001", Some("Hà Nội"), 1990, Sex::Male),
            (
                "079185000002",
                Some("Thành phố Hồ Chí Minh"),
                1985,
                Sex::Female,
            ),
            ("001 2 05 123456", Some("Hà Nội"), 2005, Sex::Male),
            ("096301000123", Some("Cà Mau"), 2001, Sex::Female),
            ("046099999999", Some("Thừa Thiên Huế"), 1999, Sex::Male),
            // A code outside the table parses (registered abroad?), with a warning.
            ("003090000001", None, 1990, Sex::Male),
        ];
        for (input, prov, year, sex) in valid {
            let c = Cccd::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(c.province(), prov, "{input}");
            assert_eq!(c.birth_year(), year, "{input}");
            assert_eq!(c.sex(), sex, "{input}");
            assert_eq!(c.notes().len(), usize::from(prov.is_none()), "{input}");
            assert_eq!(c.as_str().len(), 12);
        }
        for bad in [
            "",
            "00109000000",
            "0010900000011",
            "00109000000A",
            "001-090-000001",
            "０01090000001",
            "123456789",
        ] {
            assert!(Cccd::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn citizen_ids_agree_with_birth_year_and_sex() {
        let c = Cccd::parse("001090000001").unwrap();
        assert!(c.check(Some(1990), Some(Sex::Male), false).is_empty());
        assert!(c.check(None, None, false).is_empty());
        let year = c.check(Some(1991), None, false);
        assert_eq!(year.len(), 1);
        assert!(year[0].error);
        assert!(year[0].message.contains("1990"), "{}", year[0].message);
        let sex = c.check(None, Some(Sex::Female), false);
        assert!(sex[0].error && sex[0].message.contains("male"));
        // Legacy imports: the same disagreements warn.
        assert!(
            c.check(Some(1991), Some(Sex::Female), true)
                .iter()
                .all(|n| !n.error)
        );
        // A birth in the 2100s is not yet possible.
        assert!(!Cccd::parse("001490000001").unwrap().notes().is_empty());
    }

    #[test]
    fn health_insurance_card_codes() {
        let card = BhytNumber::parse("hs4 01 0123456789").unwrap();
        assert_eq!(card.as_str(), "HS4010123456789");
        assert_eq!(card.group(), "HS");
        assert_eq!(card.benefit_level(), 4);
        assert_eq!(card.province_code(), "01");
        assert_eq!(card.social_insurance_number(), "0123456789");
        assert!(card.notes().is_empty());
        assert!(
            BhytNumber::parse("TE1790123456789")
                .unwrap()
                .notes()
                .is_empty()
        );
        assert_eq!(
            BhytNumber::parse("DN3990123456789").unwrap().notes().len(),
            1
        );
        for bad in [
            "ZZ4010123456789", // no such group
            "HS6010123456789", // level 6
            "HS0010123456789", // level 0
            "HS401012345678",  // 14 characters
            "HS40101234567890",
            "H54010123456789",
            "HS4O10123456789", // letter O for zero
        ] {
            assert!(BhytNumber::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn facility_codes() {
        assert_eq!(FacilityCode::parse("01001").unwrap().as_str(), "01001");
        assert_eq!(FacilityCode::parse(" 25366 ").unwrap().as_str(), "25366");
        assert_eq!(FacilityCode::parse("79a01").unwrap().as_str(), "79A01");
        for bad in ["", "0100", "010011", "01-01", "01 01"] {
            assert!(FacilityCode::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn the_province_table_has_the_63_official_codes() {
        assert_eq!(PROVINCES.len(), 63);
        let mut codes: Vec<&str> = PROVINCES.iter().map(|(c, _)| *c).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), 63);
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 3 && c.as_bytes()[0] == b'0')
        );
        assert_eq!(province("092"), Some("Cần Thơ"));
        assert_eq!(province("003"), None);
    }

    #[test]
    fn practitioner_licences() {
        // (input, kind)
        let valid = [
            ("000123/HNO-CCHN", Some(LicenceKind::Certificate)),
            ("001234/byt-gphn", Some(LicenceKind::Licence)),
            (" 0045/HCM-GPHN ", Some(LicenceKind::Licence)),
            ("12345", None),
            ("BS-2020.77", None),
        ];
        for (input, kind) in valid {
            let l = PractitionerLicence::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(l.kind(), kind, "{input}");
        }
        for bad in [
            "",
            "   ",
            "ABC/DEF-CCHN",
            "0001 23/HNO-CCHN",
            "0001_23",
            &"1".repeat(31),
        ] {
            assert!(PractitionerLicence::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn prescription_codes() {
        // (input, facility, kind)
        let valid = [
            ("25366VMA336R-c", "25366", PrescriptionKind::Ordinary),
            ("01001abc1234-N", "01001", PrescriptionKind::Narcotic),
            ("79001ZZZZZZZ-h", "79001", PrescriptionKind::Psychotropic),
            ("79001ZZZZZZ1-Y", "79001", PrescriptionKind::Traditional),
            ("79001ZZZZZZ2-t", "79001", PrescriptionKind::Herbal),
        ];
        for (input, facility, kind) in valid {
            let c = PrescriptionCode::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(c.facility().as_str(), facility, "{input}");
            assert_eq!(c.kind(), kind, "{input}");
            let (body, kind) = input.split_at(12);
            assert_eq!(
                c.as_str(),
                format!("{}{}", body.to_ascii_uppercase(), kind.to_ascii_lowercase())
            );
            assert_eq!(PrescriptionCode::parse(c.as_str()), Ok(c.clone()));
        }
        for bad in [
            "",
            "25366VMA336R",
            "25366VMA336R-X",
            "25366VMA336-c",
            "25366VMA336RR-c",
            "25366VMA336R_c",
            "25366VMA 36R-c",
            "25366VMẠ336R-c",
        ] {
            assert!(PrescriptionCode::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
