//! The change sequence as Subscriptions read it, the lease of the process that reads it, and
//! the queue of notifications it leaves to deliver.

use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::schema::{resource_version as rv, sub_queue, sub_state};
use super::session::Session;
use super::{Db, Store, StoreError};

type Result<T> = std::result::Result<T, StoreError>;

/// One committed version, as the change sequence lists it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = rv)]
pub struct ChangeRow {
    pub pk: i64,
    pub txid: i64,
    pub res_type: String,
    pub res_id: String,
    pub version: i64,
    pub deleted: bool,
    pub last_updated: i64,
}

/// A notification waiting for delivery.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sub_queue)]
pub struct QueuedRow {
    pub seq: i64,
    pub sub_id: String,
    pub res_type: String,
    pub res_id: String,
    pub version: i64,
    pub at: i64,
}

const MATCHER: &str = "matcher";

/// The PostgreSQL channel of Subscription websocket notifications.
const CHANNEL: &str = "yba_subscription";

impl Store {
    /// PostgreSQL: hands each payload sent with [`Session::notify_listeners`] (by any process)
    /// to `on`, on a connection of its own, reconnecting after a failure, for as long as `alive`
    /// says. Blocks: run it on a thread of its own. Returns at once on SQLite.
    pub fn listen(&self, alive: impl Fn() -> bool, mut on: impl FnMut(&str)) {
        use diesel::{Connection, PgConnection};
        const POLL: std::time::Duration = std::time::Duration::from_millis(10);
        const RETRY: std::time::Duration = std::time::Duration::from_secs(1);
        if self.backend != super::Backend::Postgres {
            return;
        }
        while alive() {
            let conn = PgConnection::establish(&self.reader.url)
                .map_err(|e| e.to_string())
                .and_then(|mut c| {
                    diesel::sql_query(format!("LISTEN {CHANNEL}"))
                        .execute(&mut c)
                        .map_err(|e| e.to_string())?;
                    Ok(c)
                });
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for Subscription notifications");
                    std::thread::sleep(RETRY);
                    continue;
                }
            };
            'polling: while alive() {
                for n in conn.notifications_iter() {
                    match n {
                        Ok(n) => on(&n.payload),
                        Err(e) => {
                            tracing::warn!(error = %e, "the LISTEN connection failed");
                            break 'polling;
                        }
                    }
                }
                std::thread::sleep(POLL);
            }
        }
    }
}

impl Session<'_> {
    /// Takes or renews the matcher's lease for `holder` until `until`; false if another
    /// process holds it.
    pub fn take_lease(&mut self, holder: &str, now: i64, until: i64) -> Result<bool> {
        let n = diesel::update(
            sub_state::table.filter(sub_state::name.eq(MATCHER)).filter(
                sub_state::holder
                    .eq(holder)
                    .or(sub_state::lease_until.lt(now)),
            ),
        )
        .set((
            sub_state::holder.eq(holder),
            sub_state::lease_until.eq(until),
        ))
        .execute(self.db_mut())?;
        Ok(n == 1)
    }

    /// Where the matcher has read the change sequence up to: (txid, pk), set to the end of the
    /// sequence the first time (a new server notifies of what is written from then on).
    pub fn feed_cursor(&mut self) -> Result<(i64, i64)> {
        let (txid, pk): (Option<i64>, Option<i64>) = sub_state::table
            .filter(sub_state::name.eq(MATCHER))
            .select((sub_state::txid, sub_state::pk))
            .first(self.db_mut())?;
        if let (Some(t), Some(p)) = (txid, pk) {
            return Ok((t, p));
        }
        let (t, p): (Option<i64>, Option<i64>) = rv::table
            .select((diesel::dsl::max(rv::txid), diesel::dsl::max(rv::pk)))
            .first(self.db_mut())?;
        let cursor = (t.unwrap_or(0), p.unwrap_or(0));
        self.set_cursor(cursor)?;
        Ok(cursor)
    }

    pub fn set_cursor(&mut self, (txid, pk): (i64, i64)) -> Result<()> {
        diesel::update(sub_state::table.filter(sub_state::name.eq(MATCHER)))
            .set((sub_state::txid.eq(txid), sub_state::pk.eq(pk)))
            .execute(self.db_mut())?;
        Ok(())
    }

    /// The change numbers below which every transaction has ended (PostgreSQL numbers a change
    /// when it is written, not when it commits: a reader that went past a number still being
    /// written would never see it). SQLite numbers changes in commit order: no bound.
    pub fn change_bound(&mut self) -> Result<i64> {
        match self.db_mut() {
            Db::Postgres(c) => Ok(diesel::select(sql::<BigInt>(
                "pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            ))
            .get_result(c)?),
            Db::Sqlite(_) => Ok(i64::MAX),
        }
    }

    /// Committed versions after `cursor` and below `bound`, in change order.
    pub fn changes_after(
        &mut self,
        (txid, pk): (i64, i64),
        bound: i64,
        limit: i64,
    ) -> Result<Vec<ChangeRow>> {
        // `txid >= t` on its own, so that both planners scan the txid index from the cursor.
        Ok(rv::table
            .filter(rv::txid.ge(txid))
            .filter(rv::txid.gt(txid).or(rv::pk.gt(pk)))
            .filter(rv::txid.lt(bound))
            .order((rv::txid, rv::pk))
            .limit(limit)
            .select(ChangeRow::as_select())
            .load(self.db_mut())?)
    }

    /// Queues notifications: (subscription, type, id, version, written at).
    pub fn enqueue(&mut self, rows: &[(String, String, String, i64, i64)]) -> Result<()> {
        for (sub, ty, id, version, at) in rows {
            diesel::insert_into(sub_queue::table)
                .values((
                    sub_queue::sub_id.eq(sub),
                    sub_queue::res_type.eq(ty),
                    sub_queue::res_id.eq(id),
                    sub_queue::version.eq(version),
                    sub_queue::at.eq(at),
                ))
                .execute(self.db_mut())?;
        }
        Ok(())
    }

    /// The oldest notification waiting for a Subscription.
    pub fn queue_head(&mut self, sub: &str) -> Result<Option<QueuedRow>> {
        Ok(sub_queue::table
            .filter(sub_queue::sub_id.eq(sub))
            .order(sub_queue::seq)
            .select(QueuedRow::as_select())
            .first(self.db_mut())
            .optional()?)
    }

    pub fn dequeue(&mut self, seq: i64) -> Result<()> {
        diesel::delete(sub_queue::table.filter(sub_queue::seq.eq(seq))).execute(self.db_mut())?;
        Ok(())
    }

    /// The Subscriptions with notifications waiting.
    pub fn queued_subscriptions(&mut self) -> Result<Vec<String>> {
        Ok(sub_queue::table
            .select(sub_queue::sub_id)
            .distinct()
            .load(self.db_mut())?)
    }

    /// Drops the notifications of a Subscription that is gone or off.
    pub fn drop_queue(&mut self, sub: &str) -> Result<()> {
        diesel::delete(sub_queue::table.filter(sub_queue::sub_id.eq(sub)))
            .execute(self.db_mut())?;
        Ok(())
    }

    /// Tells every process listening on PostgreSQL (`LISTEN yba_subscription`) of `payload`;
    /// false on SQLite, which has one process and no one to tell.
    pub fn notify_listeners(&mut self, payload: &str) -> Result<bool> {
        match self.db_mut() {
            Db::Postgres(c) => {
                diesel::sql_query(format!("SELECT pg_notify('{CHANNEL}', $1)"))
                    .bind::<Text, _>(payload)
                    .execute(c)?;
                Ok(true)
            }
            Db::Sqlite(_) => Ok(false),
        }
    }
}
