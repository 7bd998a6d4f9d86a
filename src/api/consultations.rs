//! `/api/consultations`: the teleconsultation workflow over REST (JSON), written to the record as
//! FHIR transactions under the caller's access policy (see [`crate::telehealth`]).
//!
//! - `POST /api/consultations`: a station asks (`telehealth::Ask`); 201 with the consultation.
//! - `GET /api/consultations?station=|hospital=|doctor=|patient=&state=&date=`: a list.
//! - `GET /api/consultations/{id}`: one.
//! - `POST /api/consultations/{id}/accept` (`{"doctor": "Practitioner/7"}`),
//!   `/decline` (`{"reason": ...}`): the hospital answers.
//! - `POST /api/consultations/{id}/start`, `/end` (`telehealth::Conclusion`): the doctor holds it.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::access::{read_visible, scope, search_readable};
use super::error::ApiError;
use super::negotiate::Ctx;
use super::operations::query;
use super::rest::{fhir_for, read_body};
use super::{AppState, Interaction};
use crate::auth::Role;
use crate::auth::scopes::Perm;
use crate::error::Error;
use crate::fhir::bundle::{self, BundleOptions};
use crate::fhir::datetime::{now_millis, parse_instant};
use crate::fhir::outcome::Issue;
use crate::telehealth::{self, Ask, Conclusion, join};

pub(crate) fn json_reply(status: StatusCode, v: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(v.to_string())
}

/// A JSON body of type `T`; 400 naming what is wrong.
async fn json_body<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    ctx: &Ctx,
) -> Result<T, ApiError> {
    let body = read_body(req, payload, state.max_body, ctx).await?;
    serde_json::from_slice(&body).map_err(|e| {
        ctx.error(Error::invalid(
            "structure",
            format!("the body is not what this endpoint takes: {e}"),
        ))
    })
}

fn invalid(problems: Vec<(&'static str, String)>, ctx: &Ctx) -> Result<(), ApiError> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(ctx.error(Error::Invalid(
        problems
            .into_iter()
            .map(|(at, msg)| Issue::error("value", msg).at(at))
            .collect(),
    )))
}

/// Runs a transaction Bundle as the caller; its response entries.
async fn transaction(state: &AppState, ctx: &Ctx, tx: Value) -> Result<Vec<Value>, ApiError> {
    let opts = BundleOptions {
        base: ctx.base().to_string(),
        representation: true,
        once: None,
    };
    let again = tx.clone();
    let out = bundle::process(&fhir_for(state, ctx), tx, || Ok(again.clone()), &opts)
        .await
        .map_err(|e| ctx.error(e))?;
    let v: Value = serde_json::from_str(&out).map_err(|_| {
        ctx.error(Error::invalid(
            "exception",
            "the transaction answered unreadably",
        ))
    })?;
    Ok(v["entry"].as_array().cloned().unwrap_or_default())
}

/// A PUT entry pinned to the version it was read at (a concurrent change makes it 412).
fn put(ty: &str, id: &str, version: i64, resource: Value) -> Value {
    let request = json!({"method": "PUT", "url": format!("{ty}/{id}"),
        "ifMatch": format!("W/\"{version}\"")});
    json!({"resource": resource, "request": request})
}

/// A resource the caller may read, with its version (404 otherwise, as for an unknown id).
async fn load(
    state: &AppState,
    ctx: &Ctx,
    ty: &'static str,
    id: &str,
) -> Result<(Value, i64), ApiError> {
    scope(ctx, ty, Perm::Read)?;
    let stored = read_visible(&state.fhir, ctx, ty, id).await?;
    let v = serde_json::from_str(&stored.body).map_err(|_| {
        ctx.error(Error::invalid(
            "exception",
            "a stored resource is unreadable",
        ))
    })?;
    Ok((v, stored.version))
}

/// A consultation: its Appointment and the ServiceRequest it is based on.
struct Loaded {
    id: String,
    appointment: Value,
    appointment_version: i64,
    request: Value,
    request_id: String,
    request_version: i64,
}

async fn consultation(state: &AppState, ctx: &Ctx, id: &str) -> Result<Loaded, ApiError> {
    let (appointment, appointment_version) = load(state, ctx, "Appointment", id).await?;
    let not_one = || {
        ctx.error(Error::NotFound(format!(
            "Appointment/{id} is not a teleconsultation"
        )))
    };
    let request_id = appointment
        .pointer("/basedOn/0/reference")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("ServiceRequest/"))
        .ok_or_else(not_one)?
        .to_string();
    let (request, request_version) = load(state, ctx, "ServiceRequest", &request_id).await?;
    if request
        .pointer("/code/coding/0/code")
        .and_then(Value::as_str)
        != Some(telehealth::TELECONSULTATION)
    {
        return Err(not_one());
    }
    Ok(Loaded {
        id: id.to_string(),
        appointment,
        appointment_version,
        request,
        request_id,
        request_version,
    })
}

/// The caller's organization and person, when signed in.
fn caller(ctx: &Ctx) -> (Option<String>, Option<String>, Option<Role>) {
    match &ctx.guard {
        Some(g) => (
            g.principal.organization.clone(),
            g.principal.fhir_user.clone(),
            Some(g.principal.role),
        ),
        None => (None, None, None),
    }
}

/// `POST /api/consultations`: a station asks a hospital.
pub async fn ask(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let mut a: Ask = json_body(&req, payload, &state, &ctx).await?;
            invalid(telehealth::check_ask(&a), &ctx)?;
            let (org, me, role) = caller(&ctx);
            let station = match role {
                None => a.station.clone(),
                Some(Role::Practitioner | Role::System) => org.clone(),
                Some(r) => {
                    return Err(ctx.error(Error::Forbidden(format!(
                        "a {} does not ask for consultations",
                        r.name()
                    ))));
                }
            };
            let Some(station) = station else {
                return Err(ctx.error(Error::invalid_at(
                    "required",
                    "name the asking station: station = Organization/id",
                    "station",
                )));
            };
            if role == Some(Role::Practitioner) {
                a.requester = me.filter(|m| m.starts_with("Practitioner/"));
            }
            if a.hospital == station {
                return Err(ctx.error(Error::invalid_at(
                    "value",
                    "a station asks another facility, not itself",
                    "hospital",
                )));
            }
            // The patient must be one the station may already see (one it has seen: the request
            // would otherwise make them its patient), and the hospital must exist.
            let patient = a.patient.trim_start_matches("Patient/");
            load(&state, &ctx, "Patient", patient).await?;
            let hospital = a.hospital.trim_start_matches("Organization/");
            load(&state, &ctx, "Organization", hospital).await?;
            let start = parse_instant(&a.start).map(|d| d.range().0).unwrap_or(0);
            let out =
                transaction(&state, &ctx, telehealth::ask_bundle(&a, &station, start)).await?;
            let appointment = out
                .get(1)
                .map(|e| e["resource"].clone())
                .unwrap_or_default();
            let request = out.first().map(|e| e["resource"].clone());
            let id = appointment["id"].as_str().unwrap_or("").to_string();
            Ok(json_reply(
                StatusCode::CREATED,
                &telehealth::summary(&id, &appointment, request.as_ref()),
            ))
        })
        .await
}

/// `GET /api/consultations/{id}`.
pub async fn show(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let c = consultation(&state, &ctx, &path).await?;
            Ok(json_reply(
                StatusCode::OK,
                &telehealth::summary(&c.id, &c.appointment, Some(&c.request)),
            ))
        })
        .await
}

/// `GET /api/consultations?station=|hospital=|doctor=|patient=&state=&date=`: at most 200,
/// by start time.
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            scope(&ctx, "Appointment", Perm::Search)?;
            let mut pairs: Vec<(String, String)> = vec![
                ("service-category".into(), telehealth::CATEGORY.into()),
                ("_include".into(), "Appointment:based-on".into()),
                ("_sort".into(), "date".into()),
                ("_count".into(), "200".into()),
            ];
            let mut whose = false;
            for (name, param) in [
                ("station", "based-on:ServiceRequest.requester"),
                ("hospital", "based-on:ServiceRequest.performer"),
                ("doctor", "practitioner"),
                ("patient", "patient"),
            ] {
                if let Some(v) = query(&req, name) {
                    pairs.push((param.into(), v));
                    whose = true;
                }
            }
            if !whose {
                return Err(ctx.error(Error::invalid(
                    "required",
                    "say whose consultations: station=, hospital=, doctor= or patient=",
                )));
            }
            if let Some(s) = query(&req, "state") {
                let code = match s.as_str() {
                    "requested" => "proposed",
                    "accepted" => "booked",
                    "in-progress" => "arrived",
                    "finished" => "fulfilled",
                    "declined" => "cancelled",
                    _ => {
                        return Err(ctx.error(Error::invalid_at(
                            "value",
                            format!(
                                "state is requested, accepted, in-progress, finished or \
                                 declined, not '{s}'"
                            ),
                            "state",
                        )));
                    }
                };
                pairs.push(("status".into(), code.into()));
            }
            if let Some(d) = query(&req, "date") {
                pairs.push(("date".into(), d));
            }
            let spec = crate::fhir::search::query::parse(Some("Appointment"), &pairs, true)
                .map_err(|e| ctx.error(e))?;
            let page = search_readable(state.fhir.store(), ctx.guard.as_ref(), spec)
                .await
                .map_err(|e| ctx.error(e))?;
            let requests: Vec<(String, Value)> = page
                .included
                .iter()
                .filter_map(|f| {
                    let v: Value = serde_json::from_str(&f.body).ok()?;
                    Some((format!("ServiceRequest/{}", f.res_id), v))
                })
                .collect();
            let list: Vec<Value> = page
                .matches
                .iter()
                .filter_map(|f| {
                    let a: Value = serde_json::from_str(&f.body).ok()?;
                    let based = a.pointer("/basedOn/0/reference").and_then(Value::as_str);
                    let based = based.unwrap_or("");
                    let request = requests.iter().find(|(r, _)| r == based).map(|(_, v)| v);
                    Some(telehealth::summary(&f.res_id, &a, request))
                })
                .collect();
            Ok(json_reply(StatusCode::OK, &json!({"consultations": list})))
        })
        .await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Accept {
    #[serde(default)]
    doctor: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Invite {
    /// Let the patient join the video.
    #[serde(default)]
    patient: bool,
    /// Add an observer (`Practitioner/id`): receives, never publishes.
    #[serde(default)]
    observer: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Decline {
    reason: String,
}

fn conflict(ctx: &Ctx, msg: String) -> ApiError {
    ctx.error(Error::Conflict(msg))
}

/// Whether the caller acts for the hospital asked (or runs without auth).
fn for_hospital(ctx: &Ctx, c: &Loaded) -> Result<(), ApiError> {
    let (org, _, role) = caller(ctx);
    let hospital = c
        .request
        .pointer("/performer/0/reference")
        .and_then(Value::as_str);
    match role {
        None => Ok(()),
        Some(Role::Practitioner | Role::System)
            if org.as_deref() == hospital && hospital.is_some() =>
        {
            Ok(())
        }
        _ => Err(ctx.error(Error::Forbidden(
            "only the hospital asked answers a consultation request".into(),
        ))),
    }
}

/// Whether the caller is the assigned doctor, or their hospital's system.
fn for_doctor(ctx: &Ctx, c: &Loaded) -> Result<String, ApiError> {
    let doctor = telehealth::doctor_of(&c.appointment).map(str::to_string);
    let (_, me, role) = caller(ctx);
    let Some(doctor) = doctor else {
        return Err(conflict(ctx, "no doctor is assigned yet".into()));
    };
    match role {
        None => Ok(doctor),
        Some(Role::Practitioner) if me.as_deref() == Some(doctor.as_str()) => Ok(doctor),
        Some(Role::System) => for_hospital(ctx, c).map(|()| doctor),
        _ => Err(ctx.error(Error::Forbidden(
            "only the assigned doctor holds the consultation".into(),
        ))),
    }
}

/// `POST /api/consultations/{id}/{action}`: accept, decline, start, end.
pub async fn act(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let (id, action) = path.into_inner();
            let mut c = consultation(&state, &ctx, &id).await?;
            if action == "join" {
                return join(&state, &ctx, &c);
            }
            let mut request_changed = true;
            let mut entries = match action.as_str() {
                "accept" => {
                    for_hospital(&ctx, &c)?;
                    must_be(&ctx, &c, "requested", &action)?;
                    let body: Accept = json_body(&req, payload, &state, &ctx).await?;
                    accept(&state, &ctx, &mut c, body).await?
                }
                "decline" => {
                    for_hospital(&ctx, &c)?;
                    must_be(&ctx, &c, "requested", &action)?;
                    let body: Decline = json_body(&req, payload, &state, &ctx).await?;
                    if body.reason.trim().is_empty() {
                        return Err(ctx.error(Error::invalid_at(
                            "required",
                            "a refusal gives its reason",
                            "reason",
                        )));
                    }
                    telehealth::decline(&mut c.appointment, &mut c.request, &body.reason);
                    Vec::new()
                }
                "invite" => {
                    for_doctor(&ctx, &c)?;
                    let state_now = telehealth::state_of(&c.appointment);
                    if !matches!(state_now, "accepted" | "in-progress") {
                        return Err(conflict(
                            &ctx,
                            format!("the consultation is {state_now}: nobody is invited now"),
                        ));
                    }
                    let body: Invite = json_body(&req, payload, &state, &ctx).await?;
                    if body.patient {
                        join::invite_patient(&mut c.appointment);
                    }
                    if let Some(o) = &body.observer {
                        let oid = o.strip_prefix("Practitioner/").ok_or_else(|| {
                            ctx.error(Error::invalid_at(
                                "value",
                                "an observer is a Practitioner",
                                "observer",
                            ))
                        })?;
                        load(&state, &ctx, "Practitioner", oid).await?;
                        join::add_observer(&mut c.appointment, o);
                    }
                    request_changed = false;
                    Vec::new()
                }
                "start" => {
                    request_changed = false;
                    for_doctor(&ctx, &c)?;
                    must_be(&ctx, &c, "accepted", &action)?;
                    let request_ref = format!("ServiceRequest/{}", c.request_id);
                    let encounter =
                        telehealth::start(&mut c.appointment, &c.id, &request_ref, now_millis());
                    vec![post(encounter)]
                }
                "end" => {
                    let doctor = for_doctor(&ctx, &c)?;
                    must_be(&ctx, &c, "in-progress", &action)?;
                    let body: Conclusion = json_body(&req, payload, &state, &ctx).await?;
                    invalid(telehealth::check_conclusion(&body), &ctx)?;
                    end(&state, &ctx, &mut c, &doctor, &body).await?
                }
                other => {
                    return Err(ctx.error(Error::NotFound(format!(
                        "'{other}' is not a consultation action (accept, decline, invite, join, \
                         start, end)"
                    ))));
                }
            };
            entries.push(put(
                "Appointment",
                &c.id,
                c.appointment_version,
                c.appointment,
            ));
            if request_changed {
                entries.push(put(
                    "ServiceRequest",
                    &c.request_id,
                    c.request_version,
                    c.request,
                ));
            }
            let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            let out = transaction(&state, &ctx, tx).await?;
            if action == "end" {
                // The record says it is over: so is the call.
                let (rooms, id) = (state.rooms.clone(), id.clone());
                let _ = crate::telehealth::room::runtime()
                    .spawn(async move { rooms.end(&id, "the consultation was finished").await })
                    .await;
            }
            Ok(json_reply(
                StatusCode::OK,
                &answered(&id, &c.request_id, &out),
            ))
        })
        .await
}

/// `POST .../join`: a join token for the caller, if they may enter the room (403 otherwise),
/// while the consultation is accepted or being held (409 otherwise).
fn join(state: &AppState, ctx: &Ctx, c: &Loaded) -> Result<HttpResponse, ApiError> {
    let now_state = telehealth::state_of(&c.appointment);
    if !matches!(now_state, "accepted" | "in-progress") {
        return Err(conflict(
            ctx,
            format!("the consultation is {now_state}: its room is closed"),
        ));
    }
    let (org, me, _) = caller(ctx);
    let Some(me) = me else {
        return Err(ctx.error(Error::Forbidden(
            "joining takes a signed-in person (fhirUser)".into(),
        )));
    };
    let who = join::Who {
        fhir_user: Some(&me),
        organization: org.as_deref(),
    };
    let Some(role) = join::role_of(&c.appointment, &c.request, &who) else {
        return Err(ctx.error(Error::Forbidden(
            "only the assigned doctor, the asking station's staff, the invited patient and \
             observers the doctor added may join"
                .into(),
        )));
    };
    let now = u64::try_from(now_millis() / 1000).unwrap_or(0);
    let (token, claims) = join::mint(
        &state.join_keys,
        join::ISSUER,
        &c.id,
        &me,
        role,
        now,
        state.join_ttl,
    )
    .map_err(|e| ctx.error(Error::invalid("exception", e)))?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"token": token, "role": claims.role, "participant": claims.sub,
            "expiresAt": claims.exp, "signal": format!("/api/consultations/{}/signal", c.id)}),
    ))
}

/// 409 unless the consultation is in state `want`.
fn must_be(ctx: &Ctx, c: &Loaded, want: &str, action: &str) -> Result<(), ApiError> {
    let current = telehealth::state_of(&c.appointment);
    if current == want {
        return Ok(());
    }
    Err(conflict(
        ctx,
        format!("the consultation is {current}: it cannot {action} now (it must be {want})"),
    ))
}

fn post(resource: Value) -> Value {
    let ty = resource["resourceType"].as_str().unwrap_or("").to_string();
    json!({"resource": resource, "request": {"method": "POST", "url": ty}})
}

/// Accepting: the doctor named (or the practitioner accepting), who must exist.
async fn accept(
    state: &AppState,
    ctx: &Ctx,
    c: &mut Loaded,
    body: Accept,
) -> Result<Vec<Value>, ApiError> {
    let (_, me, role) = caller(ctx);
    let me = if role == Some(Role::Practitioner) {
        me
    } else {
        None
    };
    let doctor = body
        .doctor
        .or(me)
        .filter(|d| d.starts_with("Practitioner/"))
        .ok_or_else(|| {
            ctx.error(Error::invalid_at(
                "required",
                "name the doctor: doctor = Practitioner/id",
                "doctor",
            ))
        })?;
    let id = doctor.trim_start_matches("Practitioner/");
    load(state, ctx, "Practitioner", id).await?;
    telehealth::accept(&mut c.appointment, &mut c.request, &doctor);
    Ok(Vec::new())
}

/// Ending: the Encounter that holds it finished, the conclusion and any referral.
async fn end(
    state: &AppState,
    ctx: &Ctx,
    c: &mut Loaded,
    doctor: &str,
    body: &Conclusion,
) -> Result<Vec<Value>, ApiError> {
    let encounter_id = held_in(state, ctx, &c.id).await?;
    let (mut encounter, version) = load(state, ctx, "Encounter", &encounter_id).await?;
    let made = telehealth::end(
        &mut encounter,
        &mut c.request,
        &mut c.appointment,
        doctor,
        body,
        now_millis(),
    );
    let mut entries = vec![put("Encounter", &encounter_id, version, encounter)];
    entries.extend(made.into_iter().map(post));
    Ok(entries)
}

/// The consultation after an action, with what the action made.
fn answered(id: &str, request_id: &str, out: &[Value]) -> Value {
    let resources = || out.iter().map(|e| &e["resource"]);
    let appointment = resources()
        .find(|r| r["resourceType"] == "Appointment")
        .cloned()
        .unwrap_or_default();
    let request = resources().find(|r| r["id"] == request_id);
    let mut summary = telehealth::summary(id, &appointment, request);
    for r in resources() {
        let (Some(ty), Some(rid)) = (r["resourceType"].as_str(), r["id"].as_str()) else {
            continue;
        };
        let key = match ty {
            "Encounter" => "encounter",
            "ClinicalImpression" => "conclusion",
            "ServiceRequest" if rid != request_id => "referral",
            _ => continue,
        };
        summary[key] = json!(format!("{ty}/{rid}"));
    }
    summary
}

/// The Encounter holding a consultation: the one of class VR that names its Appointment.
async fn held_in(state: &AppState, ctx: &Ctx, id: &str) -> Result<String, ApiError> {
    let pairs = vec![
        ("appointment".to_string(), format!("Appointment/{id}")),
        ("class".to_string(), format!("{}|VR", telehealth::ACT_CODE)),
        ("status".to_string(), "in-progress".to_string()),
    ];
    let spec = crate::fhir::search::query::parse(Some("Encounter"), &pairs, true)
        .map_err(|e| ctx.error(e))?;
    let page = crate::fhir::search::run(state.fhir.store(), spec)
        .await
        .map_err(|e| ctx.error(e))?;
    page.matches
        .first()
        .map(|f| f.res_id.clone())
        .ok_or_else(|| {
            ctx.error(Error::Conflict(format!(
                "no Encounter is holding consultation {id}"
            )))
        })
}
