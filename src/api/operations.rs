//! FHIR operations on resources: `$validate` (R4 Resource-validate), `Patient/$match` (R4
//! Patient-match) and `Patient/$merge` (the R5 Patient-merge parameters, as HAPI takes them).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::error::{ApiError, outcome_response};
use super::negotiate::{Ctx, body_format};
use super::rest::{bundle_response, read_body, resource_type};
use super::{AppState, Interaction};
use crate::error::Error;
use crate::fhir::format::{parse_resource, parse_value, render};
use crate::fhir::outcome::{Issue, Severity};
use crate::fhir::validate;

/// The `name`d parameter of a Parameters resource.
fn param<'v>(params: &'v Value, name: &str) -> Option<&'v Value> {
    params
        .get("parameter")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
}

/// A parameter's primitive value, whatever its `value[x]` type.
pub(crate) fn param_str<'v>(params: &'v Value, name: &str) -> Option<&'v str> {
    let p = param(params, name)?.as_object()?;
    p.iter()
        .find(|(k, _)| k.starts_with("value"))
        .and_then(|(_, v)| v.as_str())
}

fn param_bool(params: &Value, name: &str) -> Option<bool> {
    let p = param(params, name)?.as_object()?;
    p.get("valueBoolean").and_then(Value::as_bool)
}

/// A query parameter of the request.
pub(crate) fn query(req: &HttpRequest, name: &str) -> Option<String> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A 200 OperationOutcome; "all OK" when there is nothing to say.
fn outcome(issues: Vec<Issue>, ctx: &Ctx) -> HttpResponse {
    let issues = if issues.is_empty() {
        vec![Issue::information("No issues detected during validation")]
    } else {
        issues
    };
    outcome_response(StatusCode::OK, &issues, ctx.format)
}

/// The body of an operation: Parameters (returned as such), or a bare resource; checked against
/// R4 unless `validate_only` (then only parsed: `$validate` reports the problems itself).
async fn operation_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    ctx: &Ctx,
    validate_only: bool,
) -> Result<Option<Result<Value, Vec<Issue>>>, ApiError> {
    let body = read_body(req, payload, state.max_body, ctx).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let fmt = body_format(req, &body, ctx.format)?;
    Ok(Some(if validate_only {
        parse_value(&body, fmt)
    } else {
        parse_resource(&body, fmt).map(|(v, _)| v)
    }))
}

/// The body an operation cannot do without, a valid resource (of type `ty`, when given); else
/// 400 saying what to send.
pub(crate) async fn required_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    ctx: &Ctx,
    ty: Option<&str>,
    what: &str,
) -> Result<Value, ApiError> {
    match operation_body(req, payload, state, ctx, false).await? {
        Some(Ok(v))
            if ty.is_none_or(|t| v.get("resourceType").and_then(Value::as_str) == Some(t)) =>
        {
            Ok(v)
        }
        Some(Err(issues)) => Err(ctx.error(Error::Invalid(issues))),
        _ => Err(ctx.error(Error::invalid("required", what.to_string()))),
    }
}

/// `POST [type]/$validate` and `POST|GET [type]/[id]/$validate`: every issue of the resource
/// (its R4 structure, the Vietnamese identifier rules, the profiles it claims and the compulsory
/// ones, and the `profile` asked for), as an OperationOutcome with status 200: the validation
/// ran. `mode=create` also says whether a create would make a second record of a citizen.
pub async fn validate_type(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    validate(req, path.into_inner(), None, payload, state).await
}

pub async fn validate_instance(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (ty, id) = path.into_inner();
    validate(req, ty, Some(id), payload, state).await
}

async fn validate(
    req: HttpRequest,
    ty: String,
    id: Option<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let ty = resource_type(&ty, &ctx)?;
            let body = operation_body(&req, payload, &state, &ctx, true).await?;
            let mut profile = query(&req, "profile");
            let mut mode = query(&req, "mode");
            let resource = match body {
                // Structural problems are the answer, not a failure to validate.
                Some(Err(issues)) => return Ok(outcome(issues, &ctx)),
                Some(Ok(v))
                    if v.get("resourceType").and_then(Value::as_str) == Some("Parameters") =>
                {
                    profile = profile.or_else(|| param_str(&v, "profile").map(str::to_string));
                    mode = mode.or_else(|| param_str(&v, "mode").map(str::to_string));
                    match param(&v, "resource").and_then(|p| p.get("resource")) {
                        Some(r) => Some(r.clone()),
                        None if mode.as_deref() == Some("delete") => None,
                        None => {
                            return Err(ctx.error(Error::invalid_at(
                                "required",
                                "the Parameters carry no 'resource' to validate",
                                "Parameters.parameter",
                            )));
                        }
                    }
                }
                Some(Ok(v)) => Some(v),
                None => None,
            };
            let resource = match (resource, &id) {
                (Some(r), _) => r,
                // The stored resource, validated as it is now.
                (None, Some(id)) => {
                    super::access::scope(&ctx, ty, crate::auth::scopes::Perm::Read)?;
                    let stored = state
                        .fhir
                        .read(ty, id.clone())
                        .await
                        .map_err(|e| ctx.error(e))?;
                    super::access::must_read(state.fhir.store(), &ctx, ty, id, &stored.body)
                        .await?;
                    serde_json::from_str(&stored.body)
                        .map_err(|e| ctx.error(Error::invalid("exception", e.to_string())))?
                }
                (None, None) => {
                    return Err(ctx.error(Error::invalid(
                        "required",
                        "send the resource to validate (or Parameters with a 'resource')",
                    )));
                }
            };
            let body_ty = resource
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("");
            if body_ty != ty {
                return Err(ctx.error(Error::invalid_at(
                    "invalid",
                    format!("the resource is a {body_ty}, but the URL is for {ty}"),
                    format!("{body_ty}.resourceType"),
                )));
            }
            if let Some(p) = &profile
                && state.fhir.conformance().registry().profile(p).is_none()
            {
                return Err(ctx.error(Error::NotFound(format!(
                    "the profile {p} is not known to this server"
                ))));
            }
            // The resource inside Parameters is validated on its own, so that locations read
            // `Patient.name`, not `Parameters.parameter[0].resource.name`.
            let mut issues = match validate::resource(&resource) {
                Ok(_) => Vec::new(),
                Err(i) => i,
            };
            issues.extend(
                state
                    .fhir
                    .conformance()
                    .check(ty, &resource, ty, profile.as_deref()),
            );
            match (mode.as_deref(), &id) {
                (Some("create"), _) => {
                    issues.extend(
                        state
                            .fhir
                            .would_duplicate(ty, &resource)
                            .await
                            .map_err(|e| ctx.error(e))?,
                    );
                }
                (Some("update"), Some(id))
                    if resource.get("id").and_then(Value::as_str) != Some(id.as_str()) =>
                {
                    issues.push(
                        Issue::error(
                            "invalid",
                            format!("an update of {ty}/{id} must carry that id"),
                        )
                        .at(format!("{ty}.id")),
                    );
                }
                (None | Some("update" | "delete" | "profile"), _) => {}
                (Some(other), _) => {
                    return Err(ctx.error(Error::invalid(
                        "invalid",
                        format!("mode '{other}' is not one of create, update, delete, profile"),
                    )));
                }
            }
            // Errors first, as validators list them.
            issues.sort_by_key(|i| match i.severity {
                Severity::Fatal | Severity::Error => 0,
                Severity::Warning => 1,
                Severity::Information => 2,
            });
            Ok(outcome(issues, &ctx))
        })
        .await
}

/// `POST Patient/$match`: the records that may be the person, best first, as a searchset with
/// `search.score` and the `match-grade` extension.
pub async fn match_patient(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let params = required_body(
                &req,
                payload,
                &state,
                &ctx,
                None,
                "send Parameters with the Patient to match as 'resource'",
            )
            .await?;
            let input = match params.get("resourceType").and_then(Value::as_str) {
                Some("Parameters") => param(&params, "resource")
                    .and_then(|p| p.get("resource"))
                    .cloned(),
                Some("Patient") => Some(params.clone()),
                _ => None,
            };
            let Some(input) = input.filter(|r| r.get("resourceType") == Some(&json!("Patient")))
            else {
                return Err(ctx.error(Error::invalid_at(
                    "required",
                    "the 'resource' parameter must hold the Patient to match",
                    "Parameters.parameter",
                )));
            };
            let count = param(&params, "count")
                .and_then(|p| p.get("valueInteger"))
                .and_then(Value::as_u64)
                .unwrap_or(10)
                .clamp(1, 100) as usize;
            let only_certain = param_bool(&params, "onlyCertainMatches").unwrap_or(false);
            super::access::scope(&ctx, "Patient", crate::auth::scopes::Perm::Search)?;
            let mut matches = state
                .fhir
                .match_patient(input, count, only_certain)
                .await
                .map_err(|e| ctx.error(e))?;
            if ctx.guard.is_some() {
                let items = matches
                    .iter()
                    .map(|m| ("Patient".to_string(), m.stored.body.clone()))
                    .collect();
                let ok = super::access::readable(state.fhir.store(), ctx.guard.as_ref(), items)
                    .await
                    .map_err(|e| ctx.error(e))?;
                let mut i = 0;
                matches.retain(|_| {
                    i += 1;
                    ok[i - 1]
                });
            }
            let base = ctx.base();
            let entries: Vec<Value> = matches
                .iter()
                .map(|m| {
                    let resource: Value =
                        serde_json::from_str(&m.stored.body).unwrap_or(Value::Null);
                    json!({
                        "fullUrl": format!("{base}/Patient/{}", m.stored.id),
                        "resource": resource,
                        "search": {
                            "extension": [{
                                "url": "http://hl7.org/fhir/StructureDefinition/match-grade",
                                "valueCode": m.grade.code()
                            }],
                            "mode": "match",
                            "score": m.score
                        }
                    })
                })
                .collect();
            let bundle = json!({
                "resourceType": "Bundle",
                "id": uuid::Uuid::new_v4().to_string(),
                "type": "searchset",
                "total": entries.len(),
                "entry": entries
            });
            bundle_response(bundle.to_string(), &ctx)
        })
        .await
}

/// A Patient named by a `Reference` parameter (`Patient/123`) or, with `-identifier`, by an
/// identifier (`system|value`) that exactly one live Patient carries.
async fn patient_param(
    state: &AppState,
    params: &Value,
    name: &str,
    ctx: &Ctx,
) -> Result<String, ApiError> {
    if let Some(r) = param(params, name)
        .and_then(|p| p.get("valueReference"))
        .and_then(|r| r.get("reference"))
        .and_then(Value::as_str)
    {
        let base = ctx.base();
        let local = r
            .strip_prefix(base)
            .map_or(r, |r| r.trim_start_matches('/'));
        return match local.split_once('/') {
            Some(("Patient", id)) if !id.is_empty() && !id.contains('/') => Ok(id.to_string()),
            _ => Err(ctx.error(Error::invalid_at(
                "invalid",
                format!("'{r}' is not a reference to a Patient of this server"),
                "Parameters.parameter",
            ))),
        };
    }
    let ident = param(params, &format!("{name}-identifier"))
        .and_then(|p| p.get("valueIdentifier"))
        .and_then(|i| {
            Some(format!(
                "{}|{}",
                i.get("system").and_then(Value::as_str).unwrap_or(""),
                i.get("value").and_then(Value::as_str)?
            ))
        });
    let Some(ident) = ident else {
        return Err(ctx.error(Error::invalid_at(
            "required",
            format!("give '{name}' (a Reference) or '{name}-identifier'"),
            "Parameters.parameter",
        )));
    };
    let condition = crate::fhir::condition::Condition::parse(&format!(
        "identifier={}",
        form_urlencoded::byte_serialize(ident.as_bytes()).collect::<String>()
    ))
    .map_err(|e| ctx.error(e))?;
    let found = state
        .fhir
        .find("Patient", condition, 2)
        .await
        .map_err(|e| ctx.error(e))?;
    // Patients the caller may not see carry nothing, as far as they can tell.
    let seen = super::access::readable(
        state.fhir.store(),
        ctx.guard.as_ref(),
        found
            .iter()
            .map(|p| ("Patient".to_string(), p.body.clone()))
            .collect(),
    )
    .await
    .map_err(|e| ctx.error(e))?;
    let found: Vec<_> = found
        .into_iter()
        .zip(seen)
        .filter(|(_, ok)| *ok)
        .map(|(p, _)| p)
        .collect();
    match found.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(ctx.error(Error::NotFound(format!(
            "no Patient carries the {name}-identifier"
        )))),
        _ => Err(ctx.error(Error::PreconditionFailed(format!(
            "more than one Patient carries the {name}-identifier"
        )))),
    }
}

/// `POST Patient/$merge`: `source-patient` is folded into `target-patient` (see `fhir::mpi`).
/// Answers Parameters with the input, an OperationOutcome and the resulting target.
pub async fn merge(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let params = required_body(
                &req,
                payload,
                &state,
                &ctx,
                Some("Parameters"),
                "send Parameters with 'source-patient' and 'target-patient'",
            )
            .await?;
            let source = patient_param(&state, &params, "source-patient", &ctx).await?;
            let target = patient_param(&state, &params, "target-patient", &ctx).await?;
            let preview = param_bool(&params, "preview").unwrap_or(false);
            if let Some(g) = ctx.guard.clone() {
                g.scope("Patient", crate::auth::scopes::Perm::Update).map_err(|e| ctx.error(e))?;
                let (s1, t1) = (source.clone(), target.clone());
                state
                    .fhir
                    .store()
                    .read(move |s| {
                        use crate::fhir::interactions::Gate;
                        g.before_change(s, "Patient", &s1)?;
                        g.before_change(s, "Patient", &t1)
                    })
                    .await
                    .map_err(|e: Error| ctx.error(e))?;
            }
            let merged = state
                .fhir
                .merge_patients(source.clone(), target.clone(), preview)
                .await
                .map_err(|e| ctx.error(e))?;
            let msg = if preview {
                format!(
                    "Preview: merging Patient/{source} into Patient/{target} would move {} references",
                    merged.moved.len()
                )
            } else {
                format!(
                    "Patient/{source} was merged into Patient/{target}; {} resources now refer to the target (AuditEvent/{})",
                    merged.moved.len(),
                    merged.audit.as_deref().unwrap_or("")
                )
            };
            let target_json: Value =
                serde_json::from_str(&merged.target.body).unwrap_or(Value::Null);
            let out = json!({
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "input", "resource": params},
                    {"name": "outcome", "resource": crate::fhir::outcome::to_value(&[Issue::information(msg)])},
                    {"name": "result", "resource": target_json}
                ]
            });
            let body = render(out.to_string(), ctx.format, ctx.pretty)
                .map_err(|i| ctx.error(Error::Invalid(vec![i])))?;
            Ok(HttpResponse::Ok().content_type(ctx.format.mime()).body(body))
        })
        .await
}
