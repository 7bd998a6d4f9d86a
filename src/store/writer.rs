//! The SQLite writer: one thread, one connection, group commit.
//!
//! SQLite has one writer at a time, and with `synchronous = FULL` every commit waits for the disk.
//! Writes therefore queue here, and the thread runs whatever has queued up in one transaction,
//! each write inside its own savepoint: a write that fails is rolled back alone, the others
//! commit together with one sync, and every caller hears back only after that commit.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::thread;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};

use super::{Db, Session, StoreError, session};

/// What a write leaves for after the commit: whether it succeeded, and how to tell its caller
/// (with the commit's error, if the commit failed).
pub(super) struct Done {
    pub ok: bool,
    pub notify: Box<dyn FnOnce(Option<StoreError>) + Send>,
}

pub(super) type Job = Box<dyn FnOnce(&mut Session<'_>) -> Done + Send>;

/// Writes run in one transaction at most this many at a time.
const MAX_GROUP: usize = 64;

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Starts the writer thread on `db`; jobs sent to the returned channel run there. `checkpoints`
/// is a second connection: WAL checkpoints (copying committed pages into the database file, with
/// its fsync) run on it in a thread of their own instead of inside a writer's commit.
pub(super) fn spawn(mut db: Db, mut checkpoints: Db) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    let (alive, stopped) = mpsc::channel::<()>();
    // The writer's own automatic checkpoints only as a safety net (100k pages, ~400 MB of WAL).
    let _ = db.batch_execute("PRAGMA wal_autocheckpoint = 100000");
    thread::Builder::new()
        .name("yba-sqlite-ckpt".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                if let Err(e) = checkpoints.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
                    tracing::warn!(error = %e, "SQLite checkpoint failed");
                }
            }
            let _ = checkpoints.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)");
        })
        .expect("the SQLite checkpoint thread starts");
    thread::Builder::new()
        .name("yba-sqlite-writer".into())
        .spawn(move || {
            let _alive = alive;
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(j) => group.push(j),
                        Err(_) => break,
                    }
                }
                run_group(&mut db, group);
            }
        })
        .expect("the SQLite writer thread starts");
    tx
}

fn run_group(db: &mut Db, group: Vec<Job>) {
    let Db::Sqlite(conn) = db else { return };
    // BEGIN IMMEDIATE takes the write lock at once, so a transaction never fails half-way on
    // upgrading a read lock when another process writes the same file.
    if let Err(e) = AnsiTransactionManager::begin_transaction_sql(conn, "BEGIN IMMEDIATE") {
        // The jobs are dropped unrun: their callers hear that the writer failed.
        tracing::error!(error = %e, "SQLite: cannot begin a write transaction");
        return;
    }
    let (txid, last_pk) =
        match session::next_sqlite_txid(db).and_then(|t| Ok((t, session::last_sqlite_pk(db)?))) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "SQLite: cannot read the change sequence");
                rollback(db);
                return;
            }
        };
    let last_pk = std::cell::Cell::new(last_pk);
    let mut done = Vec::with_capacity(group.len());
    for job in group {
        if let Err(e) = db.batch_execute("SAVEPOINT w") {
            tracing::error!(error = %e, "SQLite: cannot open a savepoint");
            continue;
        }
        // A panic in one write must not take the writer down: its savepoint is rolled back
        // and its caller hears that the write failed.
        match catch_unwind(AssertUnwindSafe(|| {
            job(&mut Session::sqlite_writer(db, txid, &last_pk))
        })) {
            Ok(d) => {
                let end = if d.ok {
                    "RELEASE w"
                } else {
                    "ROLLBACK TO w; RELEASE w"
                };
                let _ = db.batch_execute(end);
                done.push(d);
            }
            Err(_) => {
                tracing::error!("a write panicked; rolled back");
                let _ = db.batch_execute("ROLLBACK TO w; RELEASE w");
            }
        }
    }
    let Db::Sqlite(conn) = db else { return };
    let commit = AnsiTransactionManager::commit_transaction(conn)
        .map_err(StoreError::from)
        .err();
    if commit.is_some() {
        rollback(db);
    }
    for d in done {
        (d.notify)(commit.as_ref().map(clone_error));
    }
}

fn rollback(db: &mut Db) {
    if let Db::Sqlite(conn) = db {
        let _ = AnsiTransactionManager::rollback_transaction(conn);
    }
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict => StoreError::Conflict,
        other => StoreError::Unavailable(other.to_string()),
    }
}
