//! Writing response Bundles (history, searchset, transaction-response, batch-response) as FHIR
//! JSON. Stored resources are spliced in as they are: they are already the JSON we serve.

use serde_json::Value;

use super::datetime::format_instant;

/// One entry of a response Bundle.
#[derive(Debug, Default)]
pub struct EntryOut {
    pub full_url: Option<String>,
    /// Stored FHIR JSON of the resource, spliced in verbatim.
    pub resource: Option<String>,
    /// A resource built here (an OperationOutcome).
    pub resource_value: Option<Value>,
    pub search_mode: Option<&'static str>,
    pub request: Option<(&'static str, String)>,
    pub response: Option<ResponseOut>,
}

#[derive(Debug, Default)]
pub struct ResponseOut {
    pub status: String,
    pub location: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<i64>,
    pub outcome: Option<Value>,
}

/// A Bundle of the given type as FHIR JSON.
pub fn bundle_json(
    kind: &str,
    total: Option<i64>,
    links: &[(&str, String)],
    entries: &[EntryOut],
) -> String {
    let mut out = String::with_capacity(
        256 + entries
            .iter()
            .map(|e| e.resource.as_ref().map_or(64, |r| r.len() + 128))
            .sum::<usize>(),
    );
    out.push_str(r#"{"resourceType":"Bundle","id":"#);
    push_json_str(&mut out, &uuid::Uuid::new_v4().to_string());
    out.push_str(r#","meta":{"lastUpdated":"#);
    push_json_str(&mut out, &format_instant(super::datetime::now_millis()));
    out.push_str(r#"},"type":"#);
    push_json_str(&mut out, kind);
    if let Some(t) = total {
        out.push_str(&format!(r#","total":{t}"#));
    }
    if !links.is_empty() {
        out.push_str(r#","link":["#);
        for (i, (rel, url)) in links.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(r#"{"relation":"#);
            push_json_str(&mut out, rel);
            out.push_str(r#","url":"#);
            push_json_str(&mut out, url);
            out.push('}');
        }
        out.push(']');
    }
    if !entries.is_empty() {
        out.push_str(r#","entry":["#);
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_entry(&mut out, e);
        }
        out.push(']');
    }
    out.push('}');
    out
}

fn push_entry(out: &mut String, e: &EntryOut) {
    out.push('{');
    let mut first = true;
    let mut field = |out: &mut String, name: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
    };
    if let Some(u) = &e.full_url {
        field(out, "fullUrl");
        push_json_str(out, u);
    }
    if let Some(r) = &e.resource {
        field(out, "resource");
        out.push_str(r);
    } else if let Some(v) = &e.resource_value {
        field(out, "resource");
        out.push_str(&v.to_string());
    }
    if let Some(mode) = e.search_mode {
        field(out, "search");
        out.push_str(r#"{"mode":"#);
        push_json_str(out, mode);
        out.push('}');
    }
    if let Some((method, url)) = &e.request {
        field(out, "request");
        out.push_str(r#"{"method":"#);
        push_json_str(out, method);
        out.push_str(r#","url":"#);
        push_json_str(out, url);
        out.push('}');
    }
    if let Some(r) = &e.response {
        field(out, "response");
        out.push_str(r#"{"status":"#);
        push_json_str(out, &r.status);
        if let Some(l) = &r.location {
            out.push_str(r#","location":"#);
            push_json_str(out, l);
        }
        if let Some(t) = &r.etag {
            out.push_str(r#","etag":"#);
            push_json_str(out, t);
        }
        if let Some(m) = r.last_modified {
            out.push_str(r#","lastModified":"#);
            push_json_str(out, &format_instant(m));
        }
        if let Some(o) = &r.outcome {
            out.push_str(r#","outcome":"#);
            out.push_str(&o.to_string());
        }
        out.push('}');
    }
    out.push('}');
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json escapes exactly as JSON requires; writing into a String cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}
