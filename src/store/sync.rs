//! What a commune node keeps about its sync with upstream: cursors, the link between each
//! resource's local and upstream versions, and the conflicts left for the station to review.

use diesel::prelude::*;

use super::StoreError;
use super::schema::{resource_version as rv, sync_conflict, sync_link, sync_state};
use super::session::Session;

type Result<T> = std::result::Result<T, StoreError>;

/// A sync cursor or figure as stored: (txid, pk, value).
pub type SyncState = (Option<i64>, Option<i64>, Option<String>);

/// Which local version is which upstream version of a resource both sides hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub local_version: i64,
    pub upstream_version: i64,
}

/// A conflict for the station to review.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = sync_conflict)]
pub struct ConflictRow {
    pub seq: i64,
    pub res_type: String,
    pub res_id: String,
    pub local_version: i64,
    pub upstream_version: Option<i64>,
    pub kind: String,
    pub detail: String,
    pub at: i64,
    pub resolved: Option<i64>,
}

impl Session<'_> {
    /// A sync cursor or figure: (txid, pk, value); None if never set.
    pub fn sync_get(&mut self, name: &str) -> Result<Option<SyncState>> {
        Ok(sync_state::table
            .filter(sync_state::name.eq(name))
            .select((sync_state::txid, sync_state::pk, sync_state::value))
            .first(self.db_mut())
            .optional()?)
    }

    pub fn sync_set(
        &mut self,
        name: &str,
        txid: Option<i64>,
        pk: Option<i64>,
        value: Option<&str>,
    ) -> Result<()> {
        let n = diesel::update(sync_state::table.filter(sync_state::name.eq(name)))
            .set((
                sync_state::txid.eq(txid),
                sync_state::pk.eq(pk),
                sync_state::value.eq(value),
            ))
            .execute(self.db_mut())?;
        if n == 0 {
            diesel::insert_into(sync_state::table)
                .values((
                    sync_state::name.eq(name),
                    sync_state::txid.eq(txid),
                    sync_state::pk.eq(pk),
                    sync_state::value.eq(value),
                ))
                .execute(self.db_mut())?;
        }
        Ok(())
    }

    /// The links of the resources of `ty` among `ids` (absent: never synced).
    pub fn links(&mut self, ty: &str, ids: &[&str]) -> Result<Vec<(String, Link)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, i64, i64)> = sync_link::table
            .filter(sync_link::res_type.eq(ty))
            .filter(sync_link::res_id.eq_any(ids))
            .select((
                sync_link::res_id,
                sync_link::local_version,
                sync_link::upstream_version,
            ))
            .load(self.db_mut())?;
        Ok(rows
            .into_iter()
            .map(|(id, l, u)| {
                (
                    id,
                    Link {
                        local_version: l,
                        upstream_version: u,
                    },
                )
            })
            .collect())
    }

    pub fn link(&mut self, ty: &str, id: &str) -> Result<Option<Link>> {
        Ok(self.links(ty, &[id])?.into_iter().next().map(|(_, l)| l))
    }

    pub fn set_link(&mut self, ty: &str, id: &str, link: Link) -> Result<()> {
        let n = diesel::update(
            sync_link::table
                .filter(sync_link::res_type.eq(ty))
                .filter(sync_link::res_id.eq(id)),
        )
        .set((
            sync_link::local_version.eq(link.local_version),
            sync_link::upstream_version.eq(link.upstream_version),
        ))
        .execute(self.db_mut())?;
        if n == 0 {
            diesel::insert_into(sync_link::table)
                .values((
                    sync_link::res_type.eq(ty),
                    sync_link::res_id.eq(id),
                    sync_link::local_version.eq(link.local_version),
                    sync_link::upstream_version.eq(link.upstream_version),
                ))
                .execute(self.db_mut())?;
        }
        Ok(())
    }

    /// How many resources changed here after `(txid, pk)` whose current version is not yet
    /// upstream's (the push queue).
    pub fn unpushed(&mut self, (txid, pk): (i64, i64)) -> Result<i64> {
        let synced = sync_link::table
            .filter(sync_link::res_type.eq(rv::res_type))
            .filter(sync_link::res_id.eq(rv::res_id))
            .filter(sync_link::local_version.ge(rv::version));
        Ok(rv::table
            .filter(rv::is_current)
            .filter(rv::txid.ge(txid))
            .filter(rv::txid.gt(txid).or(rv::pk.gt(pk)))
            .filter(diesel::dsl::not(diesel::dsl::exists(synced)))
            .count()
            .get_result(self.db_mut())?)
    }

    /// Records a conflict; returns its number.
    #[allow(clippy::too_many_arguments)]
    pub fn add_conflict(
        &mut self,
        ty: &str,
        id: &str,
        local_version: i64,
        upstream_version: Option<i64>,
        kind: &str,
        detail: &str,
        at: i64,
    ) -> Result<i64> {
        Ok(diesel::insert_into(sync_conflict::table)
            .values((
                sync_conflict::res_type.eq(ty),
                sync_conflict::res_id.eq(id),
                sync_conflict::local_version.eq(local_version),
                sync_conflict::upstream_version.eq(upstream_version),
                sync_conflict::kind.eq(kind),
                sync_conflict::detail.eq(detail),
                sync_conflict::at.eq(at),
            ))
            .returning(sync_conflict::seq)
            .get_result(self.db_mut())?)
    }

    /// Conflicts, oldest first: the open ones only, or all.
    pub fn conflicts(&mut self, open_only: bool, limit: i64) -> Result<Vec<ConflictRow>> {
        let mut q = sync_conflict::table
            .select(ConflictRow::as_select())
            .order(sync_conflict::seq)
            .limit(limit)
            .into_boxed();
        if open_only {
            q = q.filter(sync_conflict::resolved.is_null());
        }
        Ok(q.load(self.db_mut())?)
    }

    pub fn open_conflicts(&mut self) -> Result<i64> {
        Ok(sync_conflict::table
            .filter(sync_conflict::resolved.is_null())
            .count()
            .get_result(self.db_mut())?)
    }

    pub fn conflict(&mut self, seq: i64) -> Result<Option<ConflictRow>> {
        Ok(sync_conflict::table
            .filter(sync_conflict::seq.eq(seq))
            .select(ConflictRow::as_select())
            .first(self.db_mut())
            .optional()?)
    }

    /// Marks a conflict reviewed; false if there is no open one of that number.
    pub fn resolve_conflict(&mut self, seq: i64, at: i64) -> Result<bool> {
        let n = diesel::update(
            sync_conflict::table
                .filter(sync_conflict::seq.eq(seq))
                .filter(sync_conflict::resolved.is_null()),
        )
        .set(sync_conflict::resolved.eq(Some(at)))
        .execute(self.db_mut())?;
        Ok(n == 1)
    }
}
