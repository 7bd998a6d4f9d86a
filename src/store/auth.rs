//! Accounts, OAuth clients, sign-in sessions and refresh tokens; and the care relationships
//! the access policy asks about (which organizations look after which patient).

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::StoreError;
use super::schema::{auth_assertion, auth_client, auth_refresh, auth_session, auth_user};
use super::session::Session;

type Result<T> = std::result::Result<T, StoreError>;

/// A person who signs in.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = auth_user)]
pub struct UserRow {
    pub username: String,
    pub role: String,
    pub fhir_user: Option<String>,
    pub organization: Option<String>,
    pub password_hash: String,
    pub disabled: bool,
    pub created: i64,
}

/// A hospital system.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = auth_client)]
pub struct ClientRow {
    pub client_id: String,
    pub name: String,
    pub organization: Option<String>,
    pub secret_hash: Option<String>,
    pub public_key: Option<String>,
    pub scopes: String,
    pub disabled: bool,
    pub created: i64,
}

/// A sign-in: the tokens it issued live while it does.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = auth_session)]
pub struct SessionRow {
    pub sid: String,
    pub subject: String,
    pub client_id: String,
    pub scopes: String,
    pub created: i64,
    pub expires: i64,
    pub revoked: bool,
}

/// What presenting a refresh token found.
#[derive(Debug)]
pub enum Refresh {
    /// Unused and live: now used; the session to continue.
    Fresh(SessionRow),
    /// Already used: the session it belongs to has been revoked (the token was copied).
    Reused,
    /// Unknown, expired, or of a revoked session.
    Invalid,
}

/// Where a patient and an organization meet in the record: the resource types whose two
/// reference parameters tie a patient to the organization caring for them.
const CARE_LINKS: &[(&str, &str, &str)] = &[
    ("Encounter", "patient", "service-provider"),
    ("EpisodeOfCare", "patient", "organization"),
    ("CareTeam", "patient", "participant"),
    ("ServiceRequest", "patient", "performer"),
    ("ServiceRequest", "patient", "requester"),
];

fn is_unique_violation(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = BigInt)]
    #[allow(dead_code)]
    one: i64,
}

impl Session<'_> {
    pub fn user(&mut self, username: &str) -> Result<Option<UserRow>> {
        Ok(auth_user::table
            .filter(auth_user::username.eq(username))
            .first::<UserRow>(self.db_mut())
            .optional()?)
    }

    /// Adds a user; false if the username is taken.
    pub fn insert_user(&mut self, u: &UserRow) -> Result<bool> {
        match diesel::insert_into(auth_user::table)
            .values(u)
            .execute(self.db_mut())
        {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets a user's password hash and ends their sessions; false if there is no such user.
    pub fn set_password(&mut self, username: &str, hash: &str) -> Result<bool> {
        let n = diesel::update(auth_user::table.filter(auth_user::username.eq(username)))
            .set(auth_user::password_hash.eq(hash))
            .execute(self.db_mut())?;
        self.revoke_sessions_of(username)?;
        Ok(n > 0)
    }

    /// Disables (or enables) an account; disabling ends its sessions.
    pub fn set_user_disabled(&mut self, username: &str, disabled: bool) -> Result<bool> {
        let n = diesel::update(auth_user::table.filter(auth_user::username.eq(username)))
            .set(auth_user::disabled.eq(disabled))
            .execute(self.db_mut())?;
        if disabled {
            self.revoke_sessions_of(username)?;
        }
        Ok(n > 0)
    }

    pub fn client(&mut self, client_id: &str) -> Result<Option<ClientRow>> {
        Ok(auth_client::table
            .filter(auth_client::client_id.eq(client_id))
            .first::<ClientRow>(self.db_mut())
            .optional()?)
    }

    /// Adds a client; false if the id is taken.
    pub fn insert_client(&mut self, c: &ClientRow) -> Result<bool> {
        match diesel::insert_into(auth_client::table)
            .values(c)
            .execute(self.db_mut())
        {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Disables (or enables) a client; disabling ends its sessions.
    pub fn set_client_disabled(&mut self, client_id: &str, disabled: bool) -> Result<bool> {
        let n = diesel::update(auth_client::table.filter(auth_client::client_id.eq(client_id)))
            .set(auth_client::disabled.eq(disabled))
            .execute(self.db_mut())?;
        if disabled {
            self.revoke_sessions_of(client_id)?;
        }
        Ok(n > 0)
    }

    pub fn insert_session(&mut self, row: &SessionRow) -> Result<()> {
        diesel::insert_into(auth_session::table)
            .values(row)
            .execute(self.db_mut())?;
        Ok(())
    }

    /// Whether the session is live (known, not revoked, not expired).
    pub fn session_live(&mut self, sid: &str, now: i64) -> Result<bool> {
        let row: Option<(bool, i64)> = auth_session::table
            .filter(auth_session::sid.eq(sid))
            .select((auth_session::revoked, auth_session::expires))
            .first(self.db_mut())
            .optional()?;
        Ok(row.is_some_and(|(revoked, expires)| !revoked && expires > now))
    }

    /// Revokes one session; false if it was not live.
    pub fn revoke_session(&mut self, sid: &str) -> Result<bool> {
        let n = diesel::update(
            auth_session::table
                .filter(auth_session::sid.eq(sid))
                .filter(auth_session::revoked.eq(false)),
        )
        .set(auth_session::revoked.eq(true))
        .execute(self.db_mut())?;
        Ok(n > 0)
    }

    pub fn revoke_sessions_of(&mut self, subject: &str) -> Result<()> {
        diesel::update(
            auth_session::table
                .filter(auth_session::subject.eq(subject))
                .filter(auth_session::revoked.eq(false)),
        )
        .set(auth_session::revoked.eq(true))
        .execute(self.db_mut())?;
        Ok(())
    }

    pub fn insert_refresh(&mut self, token_hash: &str, sid: &str, expires: i64) -> Result<()> {
        diesel::insert_into(auth_refresh::table)
            .values((
                auth_refresh::token_hash.eq(token_hash),
                auth_refresh::sid.eq(sid),
                auth_refresh::expires.eq(expires),
                auth_refresh::used.eq(false),
            ))
            .execute(self.db_mut())?;
        Ok(())
    }

    /// Uses a refresh token (once): a second use revokes its session.
    pub fn take_refresh(&mut self, token_hash: &str, now: i64) -> Result<Refresh> {
        let row: Option<(String, i64, bool)> = auth_refresh::table
            .filter(auth_refresh::token_hash.eq(token_hash))
            .select((auth_refresh::sid, auth_refresh::expires, auth_refresh::used))
            .first(self.db_mut())
            .optional()?;
        let Some((sid, expires, used)) = row else {
            return Ok(Refresh::Invalid);
        };
        if used {
            self.revoke_session(&sid)?;
            return Ok(Refresh::Reused);
        }
        // Marked used only if still unused: of two racing uses, one wins.
        let n = diesel::update(
            auth_refresh::table
                .filter(auth_refresh::token_hash.eq(token_hash))
                .filter(auth_refresh::used.eq(false)),
        )
        .set(auth_refresh::used.eq(true))
        .execute(self.db_mut())?;
        if n == 0 {
            self.revoke_session(&sid)?;
            return Ok(Refresh::Reused);
        }
        if expires <= now {
            return Ok(Refresh::Invalid);
        }
        let session: Option<SessionRow> = auth_session::table
            .filter(auth_session::sid.eq(&sid))
            .first(self.db_mut())
            .optional()?;
        Ok(match session {
            Some(s) if !s.revoked && s.expires > now => Refresh::Fresh(s),
            _ => Refresh::Invalid,
        })
    }

    /// The session a refresh token belongs to (for revocation), used or not.
    pub fn refresh_session(&mut self, token_hash: &str) -> Result<Option<String>> {
        Ok(auth_refresh::table
            .filter(auth_refresh::token_hash.eq(token_hash))
            .select(auth_refresh::sid)
            .first(self.db_mut())
            .optional()?)
    }

    /// Records a client assertion's `jti`; false if it was seen before (a replay).
    pub fn record_assertion(
        &mut self,
        client_id: &str,
        jti: &str,
        expires: i64,
        now: i64,
    ) -> Result<bool> {
        diesel::delete(auth_assertion::table.filter(auth_assertion::expires.lt(now)))
            .execute(self.db_mut())?;
        match diesel::insert_into(auth_assertion::table)
            .values((
                auth_assertion::client_id.eq(client_id),
                auth_assertion::jti.eq(jti),
                auth_assertion::expires.eq(expires),
            ))
            .execute(self.db_mut())
        {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the record ties `Patient/id` to `organization` (`Organization/x`): the patient's
    /// own managing organization or general practitioner, or a live encounter, episode of care,
    /// care team or referral between them.
    pub fn cares_for(&mut self, patient_id: &str, organization: &str) -> Result<bool> {
        let patient = format!("Patient/{patient_id}");
        // Each branch starts from the patient (their own record, or the references to them)
        // and only then asks, resource by resource, whether the organization is named there: an
        // organization is referred to by every record it holds, a patient by their own only.
        // The check is a scalar subquery with LIMIT 1 so that no planner turns it into a join
        // walking all of a hospital's references (PostgreSQL without statistics did: 560 ms
        // against 0.07 ms at 300,000 encounters).
        let mut sql = String::new();
        for param in ["organization", "general-practitioner"] {
            sql.push_str(&format!(
                "SELECT CAST(1 AS BIGINT) AS one FROM resource_version rv \
                 WHERE rv.res_type = 'Patient' AND rv.res_id = $1 AND rv.is_current AND NOT rv.deleted \
                 AND (SELECT 1 FROM ix_reference o WHERE o.res_type = 'Patient' AND o.param = '{param}' \
                 AND o.target = $2 AND o.resource_pk = rv.pk LIMIT 1) IS NOT NULL UNION ALL "
            ));
        }
        for (i, (ty, p, o)) in CARE_LINKS.iter().enumerate() {
            if i > 0 {
                sql.push_str(" UNION ALL ");
            }
            sql.push_str(&format!(
                "SELECT CAST(1 AS BIGINT) AS one FROM ix_reference p \
                 WHERE p.res_type = '{ty}' AND p.param = '{p}' AND p.target = $3 \
                 AND (SELECT 1 FROM ix_reference o WHERE o.res_type = '{ty}' AND o.param = '{o}' \
                 AND o.target = $2 AND o.resource_pk = p.resource_pk LIMIT 1) IS NOT NULL"
            ));
        }
        sql.push_str(" LIMIT 1");
        if self.backend() == super::Backend::Sqlite {
            sql = sql.replace('$', "?");
        }
        let rows: Vec<One> = diesel::sql_query(sql)
            .bind::<Text, _>(patient_id)
            .bind::<Text, _>(organization)
            .bind::<Text, _>(&patient)
            .load(self.db_mut())?;
        Ok(!rows.is_empty())
    }
}
