//! Join tokens: who may enter a consultation's room, and as what. Minted by the REST API for a
//! signed-in participant, presented to the signaling socket; short-lived (two minutes: enough to
//! open the socket) and bound to one consultation, one participant and one role.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{actor, has_type, participants};
use crate::auth::token::{Keys, random_token};

/// The audience of join tokens (never accepted as access tokens, nor the reverse).
pub const AUDIENCE: &str = "yba-signal";
/// The issuer of join tokens (this server, whatever host it was reached by).
pub const ISSUER: &str = "yba";
/// Seconds a join token lives by default (`YBA_JOIN_TOKEN_TTL`).
pub const TTL: u64 = 120;
/// Where observers are marked among an Appointment's participants.
pub const ROLE_SYSTEM: &str = "https://yba.vn/fhir/CodeSystem/consultation-role";

/// What a participant may do in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinRole {
    /// The doctor: publishes, admits, mutes, removes, ends.
    Moderator,
    /// The station's staff and the invited patient: publish and receive.
    Publisher,
    /// Observers: receive only.
    Subscriber,
}

/// What a join token carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinClaims {
    pub iss: String,
    pub aud: String,
    /// The participant: `Practitioner/7`, `Patient/3`.
    pub sub: String,
    /// The consultation (its Appointment id).
    pub cid: String,
    pub role: JoinRole,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

/// Who asks to join, as the access token says.
#[derive(Debug, Clone, Default)]
pub struct Who<'a> {
    /// `Practitioner/7`, `Patient/3`.
    pub fhir_user: Option<&'a str>,
    /// `Organization/9` the practitioner works for.
    pub organization: Option<&'a str>,
}

/// The role `who` may join the consultation in, if any: the assigned doctor moderates; the
/// asking station's staff and the patient, once invited, publish; observers added by the
/// doctor receive.
pub fn role_of(appointment: &Value, request: &Value, who: &Who<'_>) -> Option<JoinRole> {
    let me = who.fhir_user?;
    if super::doctor_of(appointment) == Some(me) {
        return Some(JoinRole::Moderator);
    }
    for p in participants(appointment).filter(|p| actor(p) == Some(me)) {
        if has_type(p, ROLE_SYSTEM, "observer") {
            return Some(JoinRole::Subscriber);
        }
        if me.starts_with("Patient/") {
            return (p.get("status").and_then(Value::as_str) == Some("accepted"))
                .then_some(JoinRole::Publisher);
        }
    }
    let station = request
        .pointer("/requester/reference")
        .and_then(Value::as_str);
    (me.starts_with("Practitioner/") && station.is_some() && who.organization == station)
        .then_some(JoinRole::Publisher)
}

/// Invites the patient: their participation becomes `accepted`.
pub fn invite_patient(appointment: &mut Value) -> bool {
    let mut done = false;
    if let Some(ps) = appointment
        .get_mut("participant")
        .and_then(Value::as_array_mut)
    {
        for p in ps
            .iter_mut()
            .filter(|p| actor(p).is_some_and(|a| a.starts_with("Patient/")))
        {
            p["status"] = Value::from("accepted");
            done = true;
        }
    }
    done
}

/// Adds an observer (a practitioner who receives but does not publish).
pub fn add_observer(appointment: &mut Value, practitioner: &str) {
    if participants(appointment).any(|p| actor(p) == Some(practitioner)) {
        return;
    }
    if let Some(ps) = appointment
        .get_mut("participant")
        .and_then(Value::as_array_mut)
    {
        ps.push(serde_json::json!({"actor": {"reference": practitioner}, "status": "accepted",
            "required": "information-only",
            "type": [{"coding": [{"system": ROLE_SYSTEM, "code": "observer", "display": "Observer"}]}]}));
    }
}

/// Mints a join token.
pub fn mint(
    keys: &Keys,
    issuer: &str,
    consultation: &str,
    participant: &str,
    role: JoinRole,
    now_secs: u64,
    ttl: u64,
) -> Result<(String, JoinClaims), String> {
    let claims = JoinClaims {
        iss: issuer.to_string(),
        aud: AUDIENCE.to_string(),
        sub: participant.to_string(),
        cid: consultation.to_string(),
        role,
        iat: now_secs,
        exp: now_secs + ttl,
        jti: random_token(),
    };
    keys.sign_claims(&claims).map(|t| (t, claims))
}

/// Checks a join token for a consultation: ours, live, for this room.
pub fn verify(
    keys: &Keys,
    issuer: &str,
    token: &str,
    consultation: &str,
) -> Result<JoinClaims, &'static str> {
    let c: JoinClaims = keys
        .verify_claims(token, issuer, AUDIENCE)
        .map_err(|e| match e {
            crate::auth::token::TokenError::Expired => "the join token has expired",
            _ => "the join token is not valid",
        })?;
    if c.cid != consultation {
        return Err("the join token is for another consultation");
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn consultation() -> (Value, Value) {
        let appt = json!({"participant": [
            {"actor": {"reference": "Patient/p"}, "status": "needs-action"},
            {"actor": {"reference": "Practitioner/yt"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/bs"}, "status": "accepted",
             "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "CON"}]}]}]});
        let sr = json!({"requester": {"reference": "Organization/tram"}});
        (appt, sr)
    }

    fn who<'a>(u: &'a str, org: Option<&'a str>) -> Who<'a> {
        Who {
            fhir_user: Some(u),
            organization: org,
        }
    }

    #[test]
    fn roles_follow_the_appointment() {
        let (mut appt, sr) = consultation();
        assert_eq!(
            role_of(&appt, &sr, &who("Practitioner/bs", None)),
            Some(JoinRole::Moderator)
        );
        assert_eq!(
            role_of(
                &appt,
                &sr,
                &who("Practitioner/other", Some("Organization/tram"))
            ),
            Some(JoinRole::Publisher)
        );
        assert_eq!(
            role_of(&appt, &sr, &who("Practitioner/x", Some("Organization/bv"))),
            None
        );
        assert_eq!(role_of(&appt, &sr, &who("Patient/p", None)), None);
        assert_eq!(role_of(&appt, &sr, &who("Patient/q", None)), None);
        assert!(invite_patient(&mut appt));
        assert_eq!(
            role_of(&appt, &sr, &who("Patient/p", None)),
            Some(JoinRole::Publisher)
        );
        add_observer(&mut appt, "Practitioner/sv");
        add_observer(&mut appt, "Practitioner/sv");
        assert_eq!(appt["participant"].as_array().map(Vec::len), Some(4));
        assert_eq!(
            role_of(&appt, &sr, &who("Practitioner/sv", None)),
            Some(JoinRole::Subscriber)
        );
        assert_eq!(role_of(&appt, &sr, &Who::default()), None);
    }

    #[test]
    fn tokens_are_bound_to_their_room_and_expire() {
        let keys = Keys::parse(None).expect("keys");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (t, _) = mint(
            &keys,
            "iss",
            "c1",
            "Practitioner/bs",
            JoinRole::Moderator,
            now,
            TTL,
        )
        .expect("minted");
        let c = verify(&keys, "iss", &t, "c1").expect("valid");
        assert_eq!(
            (c.sub.as_str(), c.role),
            ("Practitioner/bs", JoinRole::Moderator)
        );
        assert!(verify(&keys, "iss", &t, "c2").is_err());
        assert!(verify(&keys, "other-iss", &t, "c1").is_err());
        assert!(verify(&Keys::parse(None).expect("keys"), "iss", &t, "c1").is_err());
        let (old, _) = mint(
            &keys,
            "iss",
            "c1",
            "Practitioner/bs",
            JoinRole::Moderator,
            now - 3600,
            TTL,
        )
        .expect("minted");
        assert_eq!(
            verify(&keys, "iss", &old, "c1"),
            Err("the join token has expired")
        );
        // Not an access token, and an access token is not a join token.
        assert!(keys.verify(&t, "iss").is_err());
    }
}
