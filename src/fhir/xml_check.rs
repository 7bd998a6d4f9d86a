//! Structural check of FHIR XML against the R4 element table, with FHIRPath locations.
//!
//! fhirbolt parses XML into the typed model, but its errors have no location ("unknown field
//! `foo`") and it accepts some malformed documents (an unclosed root element). This walk runs
//! first and reports unknown or repeated elements, invalid primitive values, missing required
//! elements and malformed XML where they are, as `Patient.name[0].given[1]`.

use std::collections::HashMap;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::outcome::Issue;
use super::primitive;
use super::schema::{R4, TypeDef, TypeRef};

const FHIR_NS: &str = "http://hl7.org/fhir";
const MAX_ISSUES: usize = 50;

/// Checks a FHIR XML document. Returns the narratives (`div`s) exactly as written, by their
/// FHIRPath (fhirbolt trims whitespace inside them, which changes the text), or every problem.
pub fn check(bytes: &[u8]) -> Result<HashMap<String, String>, Vec<Issue>> {
    let mut c = Checker {
        bytes,
        reader: Reader::from_reader(bytes),
        issues: Vec::new(),
        divs: HashMap::new(),
        event_start: 0,
    };
    c.reader.trim_text(true).check_end_names(true);
    c.document();
    if c.issues.is_empty() {
        Ok(c.divs)
    } else {
        Err(c.issues)
    }
}

struct Checker<'a> {
    bytes: &'a [u8],
    reader: Reader<&'a [u8]>,
    issues: Vec<Issue>,
    divs: HashMap<String, String>,
    /// Where the last event read began (before any whitespace trimmed ahead of it).
    event_start: usize,
}

/// How an element ended: with children (`Start`) or self-closed (`Empty`).
enum Open<'a> {
    Start(BytesStart<'a>),
    Empty(BytesStart<'a>),
}

impl<'a> Checker<'a> {
    fn issue(&mut self, code: &'static str, msg: String, at: &str) {
        if self.issues.len() < MAX_ISSUES {
            let i = Issue::error(code, msg);
            self.issues.push(if at.is_empty() { i } else { i.at(at) });
        }
    }

    fn next(&mut self) -> Result<Event<'a>, ()> {
        loop {
            self.event_start = self.reader.buffer_position();
            match self.reader.read_event() {
                Ok(Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_)) => {
                    continue;
                }
                Ok(e) => return Ok(e),
                Err(e) => {
                    let pos = self.reader.buffer_position();
                    self.issue(
                        "structure",
                        format!("the body is not well-formed XML: {e} (byte {pos})"),
                        "",
                    );
                    return Err(());
                }
            }
        }
    }

    fn document(&mut self) {
        let root = match self.next() {
            Ok(Event::Start(e)) => Open::Start(e),
            Ok(Event::Empty(e)) => Open::Empty(e),
            Ok(Event::Eof) => return self.issue("structure", "the body is empty".into(), ""),
            Ok(_) => {
                return self.issue(
                    "structure",
                    "the body does not start with a resource element".into(),
                    "",
                );
            }
            Err(()) => return,
        };
        let start = match &root {
            Open::Start(e) | Open::Empty(e) => e.clone(),
        };
        let ns = start
            .attributes()
            .flatten()
            .find(|a| a.key.as_ref() == b"xmlns")
            .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()));
        if ns.as_deref() != Some(FHIR_NS) {
            self.issue(
                "structure",
                format!("the resource element must be in the FHIR namespace {FHIR_NS}"),
                "",
            );
        }
        if self.resource(root, String::new()).is_err() {
            return;
        }
        match self.next() {
            Ok(Event::Eof) => {}
            Ok(_) => self.issue("structure", "content after the resource element".into(), ""),
            Err(()) => {}
        }
    }

    /// A resource element (the root, or inside `contained`/`resource`). `path` is where it sits;
    /// empty for the root, whose path starts with its type.
    fn resource(&mut self, open: Open<'a>, path: String) -> Result<(), ()> {
        let start = match &open {
            Open::Start(e) | Open::Empty(e) => e,
        };
        let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
        let Some(ty) = R4.resource_type(&name) else {
            self.issue(
                "not-supported",
                format!("'{name}' is not a FHIR R4 resource type"),
                &path,
            );
            return self.skip(open);
        };
        let path = if path.is_empty() {
            ty.to_string()
        } else {
            path
        };
        match (R4.type_def(ty), open) {
            (Some(def), Open::Start(_)) => self.children(def, &path, HashMap::new()),
            (Some(def), Open::Empty(_)) => {
                self.required(def, &HashMap::new(), &path);
                Ok(())
            }
            (None, open) => self.skip(open),
        }
    }

    /// The children of a complex element, up to its end tag.
    /// `seen` starts with the element's attributes (`id`, and `url` of an extension, are
    /// attributes in FHIR XML).
    fn children(
        &mut self,
        def: &TypeDef,
        path: &str,
        mut seen: HashMap<String, usize>,
    ) -> Result<(), ()> {
        loop {
            let open = match self.next()? {
                Event::End(_) => break,
                Event::Eof => {
                    self.issue(
                        "structure",
                        "the XML ends before the element is closed".into(),
                        path,
                    );
                    return Err(());
                }
                Event::Text(_) | Event::CData(_) => {
                    self.issue(
                        "structure",
                        "text is not allowed here: FHIR values go in value attributes".into(),
                        path,
                    );
                    continue;
                }
                Event::Start(e) => Open::Start(e),
                Event::Empty(e) => Open::Empty(e),
                _ => continue,
            };
            let start = match &open {
                Open::Start(e) | Open::Empty(e) => e.clone(),
            };
            let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
            let Some(el) = def.elements.get(name.as_str()) else {
                self.issue(
                    "structure",
                    format!("unknown element '{name}'"),
                    &format!("{path}.{name}"),
                );
                self.skip(open)?;
                continue;
            };
            let n = seen.entry(name.clone()).or_insert(0);
            *n += 1;
            let index = *n - 1;
            let mut child = format!("{path}.{}", el.name);
            if name.len() > el.name.len() {
                let suffix = &name[el.name.len()..];
                let suffix = match el.ty {
                    // Primitive type names start lower-case: valueString is ofType(string).
                    TypeRef::Primitive(p) => p.name().to_string(),
                    _ => suffix.to_string(),
                };
                child.push_str(&format!(".ofType({suffix})"));
            }
            if el.many {
                child.push_str(&format!("[{index}]"));
            } else if index > 0 {
                self.issue(
                    "structure",
                    format!("'{name}' is a single element but appears more than once"),
                    &child,
                );
            }
            match el.ty {
                TypeRef::Primitive(p) => {
                    if p == super::schema::Primitive::Xhtml {
                        let start_at = self.event_start;
                        self.skip(open)?;
                        let raw = &self.bytes[start_at..self.reader.buffer_position()];
                        let raw = String::from_utf8_lossy(raw);
                        match raw.find('<') {
                            Some(i) => {
                                self.divs.insert(child, raw[i..].to_string());
                            }
                            None => {
                                self.issue("structure", "the narrative is not XHTML".into(), &child)
                            }
                        }
                        continue;
                    }
                    let value = start
                        .attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == b"value")
                        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()));
                    if let Some(v) = value
                        && let Err(problem) = primitive::check_text(p, &v)
                    {
                        self.issue("value", problem, &child);
                    }
                    if let Open::Start(_) = open
                        && let Some(d) = R4.type_def("Element")
                    {
                        self.children(d, &child, HashMap::new())?;
                    }
                }
                TypeRef::Complex(k) => match (open, R4.type_def(k)) {
                    (Open::Start(_), Some(d)) => {
                        self.children(d, &child, attribute_names(&start))?
                    }
                    (Open::Empty(_), Some(d)) => self.required(d, &attribute_names(&start), &child),
                    (open, None) => self.skip(open)?,
                },
                TypeRef::Resource => self.inner_resource(open, child)?,
            }
        }
        self.required(def, &seen, path);
        Ok(())
    }

    /// `<contained><Patient>..</Patient></contained>`: one resource element inside.
    fn inner_resource(&mut self, open: Open<'a>, path: String) -> Result<(), ()> {
        if let Open::Empty(_) = open {
            self.issue(
                "structure",
                "expected a resource inside this element".into(),
                &path,
            );
            return Ok(());
        }
        let inner = match self.next()? {
            Event::Start(e) => Open::Start(e),
            Event::Empty(e) => Open::Empty(e),
            _ => {
                self.issue(
                    "structure",
                    "expected a resource inside this element".into(),
                    &path,
                );
                return Err(());
            }
        };
        self.resource(inner, path.clone())?;
        match self.next()? {
            Event::End(_) => Ok(()),
            _ => {
                self.issue(
                    "structure",
                    "only one resource may be inside this element".into(),
                    &path,
                );
                Err(())
            }
        }
    }

    fn required(&mut self, def: &TypeDef, seen: &HashMap<String, usize>, path: &str) {
        for (name, props) in &def.required {
            if !props.iter().any(|p| seen.contains_key(*p)) {
                self.issue(
                    "required",
                    format!("required element '{name}' is missing"),
                    &format!("{path}.{name}"),
                );
            }
        }
    }

    /// Skips an element and everything inside it.
    fn skip(&mut self, open: Open<'a>) -> Result<(), ()> {
        if let Open::Empty(_) = open {
            return Ok(());
        }
        let mut depth = 1usize;
        while depth > 0 {
            match self.next()? {
                Event::Start(_) => depth += 1,
                Event::End(_) => depth -= 1,
                Event::Eof => {
                    self.issue(
                        "structure",
                        "the XML ends before an element is closed".into(),
                        "",
                    );
                    return Err(());
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The names of an element's attributes other than namespace declarations.
fn attribute_names(start: &BytesStart<'_>) -> HashMap<String, usize> {
    start
        .attributes()
        .flatten()
        .filter(|a| !a.key.as_ref().starts_with(b"xmlns"))
        .map(|a| (String::from_utf8_lossy(a.key.as_ref()).into_owned(), 1))
        .collect()
}
