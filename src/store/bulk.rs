//! What bulk work keeps in the database: the current versions of many resources at once (for
//! imports), the marks of imported Bundles, and asynchronous bulk jobs.

use diesel::prelude::*;

use super::schema::{bulk_file, bulk_job, import_mark, resource_version as rv};
use super::session::{Session, VersionRow};
use super::{Db, StoreError};

type Result<T> = std::result::Result<T, StoreError>;

/// An asynchronous bulk job (`$import`, `$export`).
#[derive(Debug, Clone, Queryable, Insertable, Selectable)]
#[diesel(table_name = bulk_job)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub owner: String,
    pub status: String,
    pub request: String,
    pub progress: String,
    pub created: i64,
    pub updated: i64,
    pub result: Option<String>,
}

impl Session<'_> {
    /// The current versions (tombstones included) of the resources of `ty` among `ids`, in one
    /// query; resources that do not exist are simply absent.
    pub fn current_rows(&mut self, ty: &str, ids: &[&str]) -> Result<Vec<VersionRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(rv::table
            .filter(rv::res_type.eq(ty))
            .filter(rv::res_id.eq_any(ids))
            .filter(rv::is_current)
            .select(VersionRow::as_select())
            .load(self.db_mut())?)
    }

    /// Whether an import mark is set.
    pub fn is_marked(&mut self, key: &str) -> Result<bool> {
        let n: i64 = import_mark::table
            .filter(import_mark::key.eq(key))
            .count()
            .get_result(self.db_mut())?;
        Ok(n > 0)
    }

    /// Sets an import mark; false if it was set already (by a concurrent import).
    pub fn mark(&mut self, key: &str, at: i64) -> Result<bool> {
        let row = (import_mark::key.eq(key), import_mark::at.eq(at));
        // `ON CONFLICT DO NOTHING` is spelled for each engine: the multi-backend has no upsert.
        let n = match self.db_mut() {
            Db::Postgres(c) => diesel::insert_into(import_mark::table)
                .values(row)
                .on_conflict_do_nothing()
                .execute(c)?,
            Db::Sqlite(c) => diesel::insert_into(import_mark::table)
                .values(row)
                .on_conflict_do_nothing()
                .execute(c)?,
        };
        Ok(n == 1)
    }

    pub fn insert_job(&mut self, job: &JobRow) -> Result<()> {
        diesel::insert_into(bulk_job::table)
            .values(job.clone())
            .execute(self.db_mut())?;
        Ok(())
    }

    pub fn job(&mut self, id: &str) -> Result<Option<JobRow>> {
        Ok(bulk_job::table
            .filter(bulk_job::id.eq(id))
            .select(JobRow::as_select())
            .first(self.db_mut())
            .optional()?)
    }

    /// Records a running job's progress; false if the job is gone or no longer running (it
    /// was deleted: the worker stops).
    pub fn job_progress(&mut self, id: &str, progress: &str, at: i64) -> Result<bool> {
        let n = diesel::update(
            bulk_job::table
                .filter(bulk_job::id.eq(id))
                .filter(bulk_job::status.eq_any(["queued", "running"])),
        )
        .set((
            bulk_job::status.eq("running"),
            bulk_job::progress.eq(progress),
            bulk_job::updated.eq(at),
        ))
        .execute(self.db_mut())?;
        Ok(n == 1)
    }

    /// Ends a job with its status and result, unless it was cancelled meanwhile.
    pub fn finish_job(&mut self, id: &str, status: &str, result: &str, at: i64) -> Result<bool> {
        let n = diesel::update(
            bulk_job::table
                .filter(bulk_job::id.eq(id))
                .filter(bulk_job::status.eq_any(["queued", "running"])),
        )
        .set((
            bulk_job::status.eq(status),
            bulk_job::result.eq(Some(result)),
            bulk_job::updated.eq(at),
        ))
        .execute(self.db_mut())?;
        Ok(n == 1)
    }

    /// Deletes a job (its outputs go with it); false if there was none.
    pub fn delete_job(&mut self, id: &str) -> Result<bool> {
        diesel::delete(bulk_file::table.filter(bulk_file::job_id.eq(id))).execute(self.db_mut())?;
        let n =
            diesel::delete(bulk_job::table.filter(bulk_job::id.eq(id))).execute(self.db_mut())?;
        Ok(n == 1)
    }

    /// Adds a part (a page of NDJSON) to a job's output.
    pub fn insert_part(
        &mut self,
        job: &str,
        seq: i64,
        res_type: &str,
        count: i64,
        body: &str,
    ) -> Result<()> {
        diesel::insert_into(bulk_file::table)
            .values((
                bulk_file::job_id.eq(job),
                bulk_file::seq.eq(seq),
                bulk_file::res_type.eq(res_type),
                bulk_file::count.eq(count),
                bulk_file::body.eq(body),
            ))
            .execute(self.db_mut())?;
        Ok(())
    }

    /// The next part of a job's file of `res_type` after part `after`: (seq, body).
    pub fn next_part(
        &mut self,
        job: &str,
        res_type: &str,
        after: i64,
    ) -> Result<Option<(i64, String)>> {
        Ok(bulk_file::table
            .filter(bulk_file::job_id.eq(job))
            .filter(bulk_file::res_type.eq(res_type))
            .filter(bulk_file::seq.gt(after))
            .order(bulk_file::seq)
            .select((bulk_file::seq, bulk_file::body))
            .first(self.db_mut())
            .optional()?)
    }

    /// Deletes finished jobs (and their output) last changed before `before`.
    pub fn purge_jobs(&mut self, before: i64) -> Result<usize> {
        let old: Vec<String> = bulk_job::table
            .filter(bulk_job::status.eq_any(["done", "failed"]))
            .filter(bulk_job::updated.lt(before))
            .select(bulk_job::id)
            .load(self.db_mut())?;
        for id in &old {
            self.delete_job(id)?;
        }
        Ok(old.len())
    }

    /// Jobs left running by a process that stopped (not updated since `stale_before`): failed,
    /// so that their owners hear of it instead of polling for ever.
    pub fn fail_stale_jobs(&mut self, stale_before: i64, result: &str, at: i64) -> Result<usize> {
        Ok(diesel::update(
            bulk_job::table
                .filter(bulk_job::status.eq_any(["queued", "running"]))
                .filter(bulk_job::updated.lt(stale_before)),
        )
        .set((
            bulk_job::status.eq("failed"),
            bulk_job::result.eq(Some(result)),
            bulk_job::updated.eq(at),
        ))
        .execute(self.db_mut())?)
    }
}
