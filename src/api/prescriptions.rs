//! E-prescription operations: `MedicationRequest/$prescribe` (issue), `$cancel`, `$status`
//! (what is left to dispense) and `$national-export` (the national system's `gui-don-thuoc`
//! layout). The rules themselves are in [`crate::prescribing`].

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::access::{read_visible, scope};
use super::error::ApiError;
use super::negotiate::Ctx;
use super::operations::{param_str, query, required_body};
use super::rest::bundle_response;
use super::{AppState, Interaction};
use crate::auth::Role;
use crate::auth::scopes::Perm;
use crate::error::Error;
use crate::fhir::Fhir;
use crate::fhir::bundle::{self, BundleOptions};
use crate::fhir::datetime::{format_instant, now_millis};
use crate::fhir::format::render;
use crate::fhir::interactions::Gate;
use crate::prescribing::{self, Issuer, Rules};
use crate::store::{RxLine, RxRow};
use crate::vn::PrescriptionCode;

/// The record store for this request: its access policy, inside the e-prescription rules,
/// which accept the codes this request issued.
pub fn fhir_issuing(state: &AppState, ctx: &Ctx, codes: Vec<String>) -> Fhir {
    let inner: Option<Arc<dyn Gate>> = ctx.guard.clone().map(|g| g as Arc<dyn Gate>);
    state.fhir.gated(Arc::new(Rules {
        inner,
        issued: codes.into_iter().collect(),
        now: now_millis(),
    }))
}

/// Who issues: refused before anything is read for those who never prescribe.
pub fn issuer(state: &AppState, ctx: &Ctx) -> Result<Issuer, ApiError> {
    let mut who = Issuer {
        now: now_millis(),
        valid_days: state.rx_valid_days,
        ..Default::default()
    };
    if let Some(g) = &ctx.guard {
        let p = &g.principal;
        match p.role {
            Role::Practitioner => {
                who.practitioner = p
                    .fhir_user
                    .clone()
                    .filter(|u| u.starts_with("Practitioner/"));
            }
            Role::System => {}
            _ => {
                return Err(ctx.error(Error::Forbidden(format!(
                    "a {} does not issue prescriptions",
                    p.role.name()
                ))));
            }
        }
        who.organization = p.organization.clone();
    }
    Ok(who)
}

/// Issues the e-prescription lines of Bundle entries (a transaction's, or one resource's).
pub async fn issue_entries(
    state: &AppState,
    ctx: &Ctx,
    entries: &mut [Value],
    at: &dyn Fn(usize) -> String,
    all: bool,
) -> Result<Vec<String>, ApiError> {
    if !all
        && !entries
            .iter()
            .any(|e| e.get("resource").is_some_and(prescribing::is_line))
    {
        return Ok(Vec::new());
    }
    let who = issuer(state, ctx)?;
    prescribing::issue(&state.fhir, entries, at, &who, all)
        .await
        .map_err(|e| ctx.error(e))
}

/// `POST MedicationRequest/$prescribe`: a Bundle (collection or transaction) of the
/// prescription's MedicationRequests, with the Conditions they cite if new; every
/// MedicationRequest is a line. Answers the transaction-response, codes in the lines.
pub async fn prescribe(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            scope(&ctx, "MedicationRequest", Perm::Create)?;
            let mut value = required_body(
                &req,
                payload,
                &state,
                &ctx,
                Some("Bundle"),
                "$prescribe takes a Bundle of the prescription's MedicationRequests",
            )
            .await?;
            let mut entries = match value.get_mut("entry").map(Value::take) {
                Some(Value::Array(a)) if !a.is_empty() => a,
                _ => {
                    return Err(ctx.error(Error::invalid_at(
                        "required",
                        "$prescribe needs at least one MedicationRequest",
                        "Bundle.entry",
                    )));
                }
            };
            for e in entries.iter_mut() {
                let rt = e
                    .pointer("/resource/resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                e["request"] = json!({"method": "POST", "url": rt});
            }
            let codes = issue_entries(
                &state,
                &ctx,
                &mut entries,
                &|i| format!("Bundle.entry[{i}].resource"),
                true,
            )
            .await?;
            let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            let opts = BundleOptions {
                base: ctx.base().to_string(),
                representation: true,
                once: None,
            };
            let fhir = fhir_issuing(&state, &ctx, codes);
            let again = tx.clone();
            let json = bundle::process(&fhir, tx, || Ok(again.clone()), &opts)
                .await
                .map_err(|e| ctx.error(e))?;
            bundle_response(json, &ctx)
        })
        .await
}

fn code_of(raw: Option<String>, ctx: &Ctx) -> Result<String, ApiError> {
    let raw = raw.ok_or_else(|| {
        ctx.error(Error::invalid(
            "required",
            "name the prescription: code=[e-prescription code]",
        ))
    })?;
    PrescriptionCode::parse(&raw)
        .map(|c| c.to_string())
        .map_err(|e| ctx.error(Error::invalid("value", e.0)))
}

/// A prescription and its lines, if the caller may read it (else 404, as for an unknown code).
async fn readable_prescription(
    state: &AppState,
    ctx: &Ctx,
    code: &str,
) -> Result<(RxRow, Vec<RxLine>), ApiError> {
    let c = code.to_string();
    let (rx, lines) = state
        .fhir
        .store()
        .read(move |s| -> Result<_, Error> { Ok((s.prescription(&c)?, s.prescription_lines(&c)?)) })
        .await
        .map_err(|e| ctx.error(e))?;
    let unknown = || {
        ctx.error(Error::NotFound(format!(
            "no e-prescription has the code {code}"
        )))
    };
    let (Some(rx), Some(first)) = (rx, lines.first()) else {
        return Err(unknown());
    };
    scope(ctx, "MedicationRequest", Perm::Read)?;
    read_visible(&state.fhir, ctx, "MedicationRequest", &first.request_id)
        .await
        .map_err(|_| unknown())?;
    Ok((rx, lines))
}

/// A 200 Parameters resource, in the negotiated format.
fn parameters(params: Vec<Value>, ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    let body = json!({"resourceType": "Parameters", "parameter": params}).to_string();
    let out =
        render(body, ctx.format, ctx.pretty).map_err(|i| ctx.error(Error::Invalid(vec![i])))?;
    Ok(HttpResponse::Ok().content_type(ctx.format.mime()).body(out))
}

/// `GET MedicationRequest/$status?code=...`: where a prescription stands (active, expired,
/// cancelled, replaced, completed) and, per line, what was prescribed, dispensed and is left.
pub async fn status(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let code = code_of(query(&req, "code"), &ctx)?;
            let (rx, lines) = readable_prescription(&state, &ctx, &code).await?;
            let mut params = vec![
                json!({"name": "code", "valueString": rx.code}),
                json!({"name": "status", "valueCode": prescribing::status_of(&rx, now_millis())}),
                json!({"name": "issued", "valueInstant": format_instant(rx.issued)}),
                json!({"name": "validUntil", "valueInstant": format_instant(rx.valid_until)}),
            ];
            if let Some(r) = &rx.replaced_by {
                params.push(json!({"name": "replacedBy", "valueString": r}));
            }
            if let Some(r) = &rx.reason {
                params.push(json!({"name": "reason", "valueString": r}));
            }
            for l in &lines {
                params.push(json!({"name": "line", "part": [
                    {"name": "request", "valueReference": {"reference": format!("MedicationRequest/{}", l.request_id)}},
                    {"name": "prescribed", "valueDecimal": l.quantity},
                    {"name": "dispensed", "valueDecimal": l.dispensed},
                    {"name": "remaining", "valueDecimal": (l.quantity - l.dispensed).max(0.0)},
                ]}));
            }
            let body = json!({"resourceType": "Parameters", "parameter": params}).to_string();
            let out = render(body, ctx.format, ctx.pretty).map_err(|i| ctx.error(Error::Invalid(vec![i])))?;
            Ok(HttpResponse::Ok().content_type(ctx.format.mime()).body(out))
        })
        .await
}

/// `POST MedicationRequest/$cancel` with Parameters `code` and `reason`: the prescriber (or
/// their facility's system) withdraws a prescription that is still active.
pub async fn cancel(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            scope(&ctx, "MedicationRequest", Perm::Update)?;
            let params = required_body(
                &req,
                payload,
                &state,
                &ctx,
                Some("Parameters"),
                "$cancel takes Parameters with 'code' and 'reason'",
            )
            .await?;
            let param = |name: &str| param_str(&params, name).map(str::to_string);
            let code = code_of(param("code"), &ctx)?;
            let reason = param("reason")
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| {
                    ctx.error(Error::invalid_at(
                        "required",
                        "a cancellation states its reason",
                        "Parameters.parameter.where(name = 'reason')",
                    ))
                })?;
            let (rx, _) = readable_prescription(&state, &ctx, &code).await?;
            if let Some(g) = &ctx.guard {
                let p = &g.principal;
                let mine = match p.role {
                    Role::Practitioner => p.fhir_user.as_deref() == Some(rx.prescriber.as_str()),
                    Role::System => {
                        facility_of(&state, p.organization.as_deref())
                            .await
                            .as_deref()
                            == Some(rx.facility.as_str())
                    }
                    _ => false,
                };
                if !mine {
                    return Err(ctx.error(Error::Forbidden(
                        "only the prescriber, or their facility's system, cancels a prescription"
                            .into(),
                    )));
                }
            }
            let now = now_millis();
            let (c, r) = (code.clone(), reason.clone());
            state
                .fhir
                .store()
                .write(move |s| prescribing::withdraw(s, &c, "cancelled", None, Some(&r), now))
                .await
                .map_err(|e| ctx.error(e))?;
            parameters(
                vec![
                    json!({"name": "code", "valueString": code}),
                    json!({"name": "status", "valueCode": "cancelled"}),
                    json!({"name": "reason", "valueString": reason}),
                ],
                &ctx,
            )
        })
        .await
}

/// The facility code of an organization (`Organization/id`).
async fn facility_of(state: &AppState, org: Option<&str>) -> Option<String> {
    let org = read_json(state, "Organization", org).await?;
    crate::fhir::identifier_value(&org, crate::fhir::vn_rules::PROVIDER_CODE).map(str::to_string)
}

/// A resource by reference (`Type/id`), as JSON; None if it is not there. (Not through the
/// access policy: callers have passed it, or read directory resources.)
async fn read_json(state: &AppState, ty: &'static str, reference: Option<&str>) -> Option<Value> {
    let id = reference?.strip_prefix(ty)?.strip_prefix('/')?.to_string();
    let stored = state.fhir.read(ty, id).await.ok()?;
    serde_json::from_str(&stored.body).ok()
}

/// `GET MedicationRequest/$national-export?code=...`: the prescription in the national
/// e-prescription system's `gui-don-thuoc` layout, for the facility to forward.
pub async fn national_export(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let code = code_of(query(&req, "code"), &ctx)?;
            // The payload carries the patient's identity: it is for the prescribing facility
            // (and the patient), not for pharmacies, which dispense by code.
            if ctx
                .guard
                .as_ref()
                .is_some_and(|g| g.principal.role == Role::Pharmacist)
            {
                return Err(ctx.error(Error::Forbidden(
                    "the national-system payload is the prescribing facility's to forward".into(),
                )));
            }
            let (rx, lines) = readable_prescription(&state, &ctx, &code).await?;
            let mut mrs = Vec::new();
            for l in &lines {
                if let Some(v) = read_json(
                    &state,
                    "MedicationRequest",
                    Some(&format!("MedicationRequest/{}", l.request_id)),
                )
                .await
                {
                    mrs.push(v);
                }
            }
            let patient =
                read_json(&state, "Patient", Some(&format!("Patient/{}", rx.patient))).await;
            let practitioner = read_json(&state, "Practitioner", Some(&rx.prescriber)).await;
            let mut conditions = Vec::new();
            for m in &mrs {
                for r in m
                    .get("reasonReference")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(c) = read_json(
                        &state,
                        "Condition",
                        r.get("reference").and_then(Value::as_str),
                    )
                    .await
                    {
                        conditions.push(c);
                    }
                }
            }
            let kind = rx.kind.chars().next().unwrap_or('c');
            let payload = prescribing::export::gui_don_thuoc(&prescribing::export::Parts {
                code: &rx.code,
                kind,
                lines: &mrs,
                patient: patient.as_ref(),
                practitioner: practitioner.as_ref(),
                conditions: &conditions,
            });
            Ok(HttpResponse::Ok()
                .content_type("application/json")
                .body(payload.to_string()))
        })
        .await
}
