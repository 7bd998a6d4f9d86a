//! OperationOutcome: how every error (and some successes) is told to the client.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// One problem, with its place in the resource as a FHIRPath expression when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    /// A code of the R4 `issue-type` value set (`structure`, `value`, `required`, `not-found`, ...).
    pub code: &'static str,
    pub diagnostics: String,
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: &'static str, diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn information(diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Information,
            code: "informational",
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    /// The same issue as a warning (a problem the server worked around).
    pub fn warning(mut self) -> Issue {
        self.severity = Severity::Warning;
        self
    }

    pub fn at(mut self, expression: impl Into<String>) -> Issue {
        self.expression = Some(expression.into());
        self
    }
}

#[derive(Serialize)]
struct IssueJson<'a> {
    severity: Severity,
    code: &'a str,
    diagnostics: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<[&'a str; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expression: Option<[&'a str; 1]>,
}

#[derive(Serialize)]
struct OutcomeJson<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    issue: Vec<IssueJson<'a>>,
}

/// The OperationOutcome of some issues, as FHIR JSON. `location` repeats the FHIRPath of
/// `expression`: R4 defines `location` as XPath, but clients written for HAPI read it.
pub fn to_json(issues: &[Issue]) -> Vec<u8> {
    let outcome = OutcomeJson {
        resource_type: "OperationOutcome",
        issue: issues
            .iter()
            .map(|i| IssueJson {
                severity: i.severity,
                code: i.code,
                diagnostics: &i.diagnostics,
                location: i.expression.as_deref().map(|e| [e]),
                expression: i.expression.as_deref().map(|e| [e]),
            })
            .collect(),
    };
    serde_json::to_vec(&outcome).unwrap_or_default()
}

/// The OperationOutcome of some issues, as a JSON value (for Bundle response entries).
pub fn to_value(issues: &[Issue]) -> serde_json::Value {
    serde_json::from_slice(&to_json(issues)).unwrap_or(serde_json::Value::Null)
}
