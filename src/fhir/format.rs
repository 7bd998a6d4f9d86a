//! FHIR JSON and XML in and out, through fhirbolt's R4 model.
//!
//! In: bytes → `serde_json::Value` (XML goes through fhirbolt's typed model first) → our validator
//! (locations for every problem) → later, `to_stored_json`, which passes the value through
//! fhirbolt's typed model once more, so what is stored is exactly what fhirbolt accepts and
//! serialises, in canonical element order. Out: JSON is served as stored; XML is rendered from it.

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::Value;

use super::links::for_each_xhtml;
use super::outcome::Issue;
use super::validate;

/// A wire format of FHIR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    pub fn mime(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json; charset=utf-8",
            Format::Xml => "application/fhir+xml; charset=utf-8",
        }
    }

    /// The format a MIME type or `_format` value names (R4 §3.1.0.1.10), if it names one.
    pub fn from_mime(s: &str) -> Option<Format> {
        let essence = s
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/fhir+json"
            | "application/json"
            | "application/json+fhir"
            | "json"
            | "text/json" => Some(Format::Json),
            "application/fhir+xml"
            | "application/xml"
            | "application/xml+fhir"
            | "xml"
            | "text/xml" => Some(Format::Xml),
            _ => None,
        }
    }
}

fn strict() -> Option<DeserializationConfig> {
    Some(DeserializationConfig {
        mode: DeserializationMode::Strict,
    })
}

/// Parses and validates a resource. Returns it as FHIR JSON with its type, or every problem found.
pub fn parse_resource(bytes: &[u8], format: Format) -> Result<(Value, &'static str), Vec<Issue>> {
    let value = parse_value(bytes, format)?;
    let ty = validate::resource(&value)?;
    Ok((value, ty))
}

/// Parses a body into FHIR JSON without validating it (for `$validate`, which reports every
/// issue instead of stopping at the first kind).
pub fn parse_value(bytes: &[u8], format: Format) -> Result<Value, Vec<Issue>> {
    match format {
        Format::Json => parse_json(bytes),
        Format::Xml => parse_xml(bytes),
    }
}

fn parse_json(bytes: &[u8]) -> Result<Value, Vec<Issue>> {
    serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "the JSON ends too early",
            _ => "the body is not valid JSON",
        };
        vec![Issue::error(
            "structure",
            format!(
                "{what}: {} (line {}, column {})",
                json_reason(&e),
                e.line(),
                e.column()
            ),
        )]
    })
}

/// serde_json's message without its trailing position (given separately).
fn json_reason(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn parse_xml(bytes: &[u8]) -> Result<Value, Vec<Issue>> {
    let divs = super::xml_check::check(bytes)?;
    let resource: Resource = fhirbolt::xml::from_slice(bytes, strict()).map_err(|e| {
        vec![Issue::error(
            "structure",
            format!("the body is not valid FHIR XML: {e}"),
        )]
    })?;
    let mut value = fhirbolt::json::to_json_value(resource, None).map_err(|e| {
        vec![Issue::error(
            "structure",
            format!("cannot convert the XML resource: {e}"),
        )]
    })?;
    // Narratives exactly as the client wrote them (fhirbolt trims the whitespace inside).
    if !divs.is_empty() {
        for_each_xhtml(&mut value, &mut |path, div| {
            if let Some(raw) = divs.get(path) {
                *div = raw.clone();
            }
        });
    }
    Ok(value)
}

/// Turns a validated resource into the JSON the server stores and serves: through fhirbolt's
/// typed model, in canonical element order. `location` names the resource in messages.
pub fn to_stored_json(value: Value, location: &str) -> Result<String, Issue> {
    let resource: Resource = fhirbolt::json::from_json_value(value, strict()).map_err(|e| {
        Issue::error(
            "structure",
            format!("the resource does not fit the FHIR R4 model: {e}"),
        )
        .at(location)
    })?;
    fhirbolt::json::to_string(&resource, None)
        .map_err(|e| Issue::error("exception", format!("cannot serialise the resource: {e}")))
}

/// Renders stored FHIR JSON in the requested format.
pub fn render(json: String, format: Format, pretty: bool) -> Result<Vec<u8>, Issue> {
    match (format, pretty) {
        (Format::Json, false) => Ok(json.into_bytes()),
        (Format::Json, true) => {
            let v: Value = serde_json::from_str(&json).map_err(|e| {
                Issue::error("exception", format!("stored JSON is unreadable: {e}"))
            })?;
            serde_json::to_vec_pretty(&v).map_err(|e| Issue::error("exception", e.to_string()))
        }
        (Format::Xml, _) => to_xml(&json),
    }
}

const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// FHIR XML of stored JSON. fhirbolt re-indents narratives and trims their text, which loses
/// spaces between inline elements ("<b>name</b>: Peter" becomes "<b>name</b>:Peter"), so each
/// `div` goes through fhirbolt as a marker and is put back verbatim afterwards.
fn to_xml(json: &str) -> Result<Vec<u8>, Issue> {
    let mut value: Value = serde_json::from_str(json)
        .map_err(|e| Issue::error("exception", format!("stored JSON does not parse: {e}")))?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut divs = Vec::new();
    for_each_xhtml(&mut value, &mut |_, div| {
        let marker = format!("<div xmlns=\"{XHTML_NS}\">{token}-{}</div>", divs.len());
        divs.push(std::mem::replace(div, marker));
    });
    let resource: Resource = fhirbolt::json::from_json_value(value, None).map_err(|e| {
        Issue::error(
            "exception",
            format!("stored JSON does not fit the model: {e}"),
        )
    })?;
    let xml = fhirbolt::xml::to_vec(&resource, None)
        .map_err(|e| Issue::error("exception", format!("cannot write XML: {e}")))?;
    if divs.is_empty() {
        return Ok(xml);
    }
    let mut xml = String::from_utf8(xml).map_err(|e| Issue::error("exception", e.to_string()))?;
    for (i, div) in divs.iter().enumerate().rev() {
        let marker = format!("{token}-{i}<");
        let located = xml.find(&marker).and_then(|at| {
            let start = xml[..at].rfind("<div")?;
            let end = at + xml[at..].find("</div>")? + "</div>".len();
            Some((start, end))
        });
        if let Some((start, end)) = located {
            xml.replace_range(start..end, &with_xhtml_namespace(div));
        }
    }
    Ok(xml.into_bytes())
}

/// A narrative's root `div` must be in the XHTML namespace in XML; JSON often leaves it out.
fn with_xhtml_namespace(div: &str) -> std::borrow::Cow<'_, str> {
    let start_tag = div.split('>').next().unwrap_or("");
    if div.starts_with("<div") && !start_tag.contains("xmlns") {
        std::borrow::Cow::Owned(format!("<div xmlns=\"{XHTML_NS}\"{}", &div[4..]))
    } else {
        std::borrow::Cow::Borrowed(div)
    }
}

/// The span of a stored body's `meta.versionId` and `meta.lastUpdated` (written first in `meta`,
/// which comes right after `id`, in the canonical JSON the store keeps).
fn stamp_span(body: &str) -> Option<(usize, usize)> {
    const META: &str = "\"meta\":{";
    const LAST: &str = "\"lastUpdated\":\"";
    let start = body.find("\"meta\":{\"versionId\":\"")? + META.len();
    let lu = start + body[start..].find(LAST)? + LAST.len();
    let end = lu + body[lu..].find('"')? + 1;
    Some((start, end))
}

/// Whether two stored bodies say the same apart from their version and time.
pub fn same_content(a: &str, b: &str) -> bool {
    match (stamp_span(a), stamp_span(b)) {
        (Some((a0, a1)), Some((b0, b1))) => a[..a0] == b[..b0] && a[a1..] == b[b1..],
        _ => a == b,
    }
}

/// A body with another version and time.
pub fn restamp(body: &str, version: i64, at: i64) -> Option<String> {
    let (start, end) = stamp_span(body)?;
    Some(format!(
        "{}\"versionId\":\"{version}\",\"lastUpdated\":\"{}\"{}",
        &body[..start],
        super::datetime::format_instant(at),
        &body[end..]
    ))
}
