//! The one place where errors become HTTP: a status code and an OperationOutcome in the
//! negotiated format.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::error::Error;
use crate::fhir::Format;
use crate::fhir::format::render;
use crate::fhir::outcome::{self, Issue};

/// An error answer: status, issues, and the format to tell them in.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub issues: Vec<Issue>,
    pub format: Format,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status)
    }
}

impl ApiError {
    pub fn new(
        status: u16,
        code: &'static str,
        msg: impl Into<String>,
        format: Format,
    ) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            issues: vec![Issue::error(code, msg)],
            format,
        }
    }

    /// The same error, its first issue placed at a FHIRPath location.
    pub fn at(mut self, expression: impl Into<String>) -> ApiError {
        if let Some(i) = self.issues.first_mut() {
            i.expression = Some(expression.into());
        }
        self
    }

    pub fn from_error(e: Error, format: Format) -> ApiError {
        let status = e.status();
        if status >= 500 {
            // The detail (a database message) goes to the log; the client gets a plain outcome.
            tracing::error!(error = %e, "request failed");
        }
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            issues: e.issues(),
            format,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        outcome_response(self.status, &self.issues, self.format)
    }
}

/// An OperationOutcome response.
pub fn outcome_response(status: StatusCode, issues: &[Issue], format: Format) -> HttpResponse {
    let json = outcome::to_json(issues);
    let (body, format) = match format {
        Format::Json => (json, Format::Json),
        Format::Xml => match String::from_utf8(json.clone())
            .ok()
            .map(|j| render(j, Format::Xml, false))
        {
            Some(Ok(xml)) => (xml, Format::Xml),
            _ => (json, Format::Json),
        },
    };
    HttpResponse::build(status)
        .content_type(format.mime())
        .body(body)
}
