//! The only module that knows SQL: connections and pools for SQLite and PostgreSQL, the schema,
//! migrations (embedded, run on start), and the queries of the record store.
//!
//! One code path serves both engines through diesel's `MultiConnection`; where they differ (the
//! change sequence, write locking, pragmas) the difference is a `match` on [`Backend`] here.
//! SQLite has one writer: writes go through a single connection behind a mutex, reads through a
//! pool. PostgreSQL uses one pool for both.

mod auth;
mod bulk;
mod changes;
mod prescribing;
mod schema;
mod search;
mod session;
mod sync;
mod writer;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::{Connection, PgConnection, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub use auth::{ClientRow, Refresh, SessionRow, UserRow};
pub use bulk::JobRow;
pub use changes::{ChangeRow, QueuedRow};
pub use prescribing::{RxLine, RxRow};
pub use search::{
    Cond, Filter, Found, IndexTable, Prefix, SearchQuery, SortBy, SortKey, SortValue,
};
pub use session::{
    CompositeRow, DateRow, HistoryQuery, HistoryScope, IndexRows, Method, NewVersion, NumberRow,
    QuantityRow, ReferenceRow, Session, StringRow, TokenRow, UriRow, VersionRow, fnv1a,
};
pub use sync::{ConflictRow, Link};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// A connection to either engine.
#[derive(diesel::MultiConnection)]
pub enum Db {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another transaction changed the same rows first; the caller may retry.
    #[error("a concurrent write changed the same resource")]
    Conflict,
    #[error("database error: {0}")]
    Db(diesel::result::Error),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database migration failed: {0}")]
    Migration(String),
    /// A search ran past its time limit and was cancelled.
    #[error("the search ran longer than {0} ms")]
    TooCostly(u64),
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::DatabaseErrorKind as K;
        use diesel::result::Error as E;
        match e {
            E::DatabaseError(K::UniqueViolation | K::SerializationFailure, _) => {
                StoreError::Conflict
            }
            E::DatabaseError(K::ClosedConnection | K::UnableToSendCommand, info) => {
                StoreError::Unavailable(info.message().to_string())
            }
            // SQLite reports a lock it could not get within busy_timeout, and PostgreSQL a
            // deadlock between two transactions, as unknown errors: both are worth a retry.
            E::DatabaseError(_, ref info) if info.message().contains("statement timeout") => {
                StoreError::TooCostly(STATEMENT_TIMEOUT_MS.load(Ordering::Relaxed))
            }
            E::DatabaseError(K::Unknown, ref info)
                if info.message().contains("locked")
                    || info.message().contains("deadlock detected") =>
            {
                StoreError::Conflict
            }
            other => StoreError::Db(other),
        }
    }
}

impl From<diesel::r2d2::PoolError> for StoreError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.db`, a bare path, or `postgres://user@host/db`.
    pub url: String,
    /// Connections in the pool (readers on SQLite, all connections on PostgreSQL).
    pub pool_size: u32,
    /// SQLite `synchronous`: FULL makes every commit durable against power loss.
    pub sqlite_synchronous: String,
    /// Longest a statement (in practice, a search) may run on PostgreSQL (0: no limit).
    pub search_timeout_ms: u64,
}

/// The record store: a pool of connections and, on SQLite, the one writer thread.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    pool: Pool<ConnectionManager<Db>>,
    /// SQLite: the queue of the writer thread (group commit, see `writer`).
    writer: Option<std::sync::mpsc::Sender<writer::Job>>,
    /// What a thread needs to open its own reader connection.
    reader: std::sync::Arc<ThreadReader>,
    /// Told after every committed write (the Subscription matcher waits on it).
    changed: std::sync::Arc<tokio::sync::Notify>,
}

/// Opens per-thread reader connections (one per HTTP worker thread, see `read_point`).
struct ThreadReader {
    id: u64,
    backend: Backend,
    url: String,
    synchronous: String,
}

static STORE_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's SQLite reader connection of each open store, by store id.
    static READERS: RefCell<HashMap<u64, Db>> = RefCell::new(HashMap::new());
}

#[derive(Debug)]
struct SqlitePragmas {
    synchronous: String,
}

impl CustomizeConnection<Db, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut Db) -> Result<(), diesel::r2d2::Error> {
        sqlite_pragmas(conn, &self.synchronous).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// PostgreSQL session settings of every pooled connection: no statement runs longer than the
/// search time limit (`YBA_SEARCH_TIMEOUT`). Searches are what can run long; no write of this
/// server's comes near it. A statement stopped by it is [`StoreError::TooCostly`].
#[derive(Debug)]
struct PgSettings {
    statement_timeout_ms: u64,
}

impl CustomizeConnection<Db, diesel::r2d2::Error> for PgSettings {
    fn on_acquire(&self, conn: &mut Db) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "SET statement_timeout = {}",
            self.statement_timeout_ms
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The statement time limit in force (for the message of [`StoreError::TooCostly`]).
static STATEMENT_TIMEOUT_MS: AtomicU64 = AtomicU64::new(0);

fn sqlite_pragmas(conn: &mut Db, synchronous: &str) -> diesel::QueryResult<()> {
    // WAL lets readers run beside the writer; busy_timeout waits for a lock instead of failing.
    conn.batch_execute(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
         PRAGMA synchronous = {synchronous}; PRAGMA cache_size = -8000; PRAGMA temp_store = MEMORY; \
         PRAGMA mmap_size = 268435456;"
    ))
}

impl Store {
    /// Opens (creating it if need be) the database at `config.url` and runs pending migrations.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let (backend, url) = parse_url(&config.url)?;
        let synchronous = match config.sqlite_synchronous.to_ascii_uppercase().as_str() {
            s @ ("OFF" | "NORMAL" | "FULL" | "EXTRA") => s.to_string(),
            other => {
                return Err(StoreError::Unavailable(format!(
                    "unknown SQLite synchronous mode {other}"
                )));
            }
        };
        let store = match backend {
            Backend::Sqlite => {
                if let Some(dir) = std::path::Path::new(&url).parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let mut writer = Db::establish(&url).map_err(|e| {
                    StoreError::Unavailable(format!("cannot open SQLite file {url}: {e}"))
                })?;
                sqlite_pragmas(&mut writer, &synchronous)?;
                run_migrations(&mut writer, backend)?;
                let mut checkpoints = Db::establish(&url).map_err(|e| {
                    StoreError::Unavailable(format!("cannot open SQLite file {url}: {e}"))
                })?;
                sqlite_pragmas(&mut checkpoints, &synchronous)?;
                let pool = Pool::builder()
                    .max_size(config.pool_size.max(1))
                    .min_idle(Some(1))
                    .connection_customizer(Box::new(SqlitePragmas {
                        synchronous: synchronous.clone(),
                    }))
                    .build(ConnectionManager::new(url.clone()))?;
                let reader = ThreadReader {
                    id: STORE_IDS.fetch_add(1, Ordering::Relaxed),
                    backend,
                    url,
                    synchronous,
                };
                Store {
                    backend,
                    pool,
                    writer: Some(writer::spawn(writer, checkpoints)),
                    reader: std::sync::Arc::new(reader),
                    changed: Default::default(),
                }
            }
            Backend::Postgres => {
                STATEMENT_TIMEOUT_MS.store(config.search_timeout_ms, Ordering::Relaxed);
                let pool = Pool::builder()
                    .max_size(config.pool_size.max(1))
                    .min_idle(Some(2.min(config.pool_size)))
                    .connection_timeout(Duration::from_secs(10))
                    .test_on_check_out(false)
                    .connection_customizer(Box::new(PgSettings {
                        statement_timeout_ms: config.search_timeout_ms,
                    }))
                    .build(ConnectionManager::new(url.clone()))?;
                let mut conn = pool.get()?;
                // Migrations may build indexes for longer than a search may run.
                conn.batch_execute("SET statement_timeout = 0")?;
                run_migrations(&mut conn, backend)?;
                conn.batch_execute(&format!(
                    "SET statement_timeout = {}",
                    config.search_timeout_ms
                ))?;
                let reader = ThreadReader {
                    id: STORE_IDS.fetch_add(1, Ordering::Relaxed),
                    backend,
                    url,
                    synchronous,
                };
                Store {
                    backend,
                    pool,
                    writer: None,
                    reader: std::sync::Arc::new(reader),
                    changed: Default::default(),
                }
            }
        };
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Notified after each write this process commits.
    pub fn changes(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// Runs read-only work on a pooled connection, off the async workers.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Session<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let backend = self.backend;
        blocking(move || {
            let mut conn = pool.get().map_err(StoreError::from)?;
            f(&mut Session::new(&mut conn, backend, None))
        })
        .await
    }

    /// Runs a point read (a few rows by key) inline, on this thread's own connection. A point
    /// read takes microseconds on SQLite and one round trip on PostgreSQL; handing it to the
    /// blocking pool and back cost more than the query itself (measured: the thread hops were a
    /// third of a read's time). Longer reads use `read`, which does not hold up the HTTP worker.
    pub async fn read_point<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Session<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let reader = &self.reader;
        READERS.with(|readers| {
            let mut readers = readers.borrow_mut();
            let conn = match readers.entry(reader.id) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let mut db = Db::establish(&reader.url)
                        .map_err(|e| StoreError::Unavailable(format!("cannot connect: {e}")))?;
                    if reader.backend == Backend::Sqlite {
                        sqlite_pragmas(&mut db, &reader.synchronous).map_err(StoreError::from)?;
                    }
                    v.insert(db)
                }
            };
            let result = f(&mut Session::new(conn, reader.backend, None));
            // After a failure, a connection that no longer answers is dropped (a restarted
            // PostgreSQL, say); the next read opens a new one.
            if result.is_err() && Session::new(conn, reader.backend, None).ping().is_err() {
                readers.remove(&reader.id);
            }
            result
        })
    }

    /// Runs `f` in one database transaction: committed if it returns `Ok`, rolled back otherwise.
    /// A [`StoreError::Conflict`] means a concurrent write won; the caller decides whether to retry.
    /// On SQLite, writes queue for the writer thread, which commits them in groups.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Session<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let backend = self.backend;
        match &self.writer {
            Some(queue) => {
                let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, E>>();
                let job: writer::Job = Box::new(move |s: &mut Session<'_>| {
                    let result = f(s);
                    writer::Done {
                        ok: result.is_ok(),
                        notify: Box::new(move |commit_error| {
                            let result = match (result, commit_error) {
                                (Ok(_), Some(e)) => Err(E::from(e)),
                                (r, _) => r,
                            };
                            let _ = tx.send(result);
                        }),
                    }
                });
                if queue.send(job).is_err() {
                    return Err(
                        StoreError::Unavailable("the SQLite writer has stopped".into()).into(),
                    );
                }
                match rx.await {
                    Ok(r) => {
                        if r.is_ok() {
                            self.changed.notify_one();
                        }
                        r
                    }
                    Err(_) => Err(StoreError::Unavailable(
                        "the write failed in the SQLite writer".into(),
                    )
                    .into()),
                }
            }
            None => {
                let pool = self.pool.clone();
                let r = blocking(move || {
                    let mut conn: PooledConnection<_> = pool.get().map_err(StoreError::from)?;
                    postgres_write(&mut conn, backend, f)
                })
                .await;
                if r.is_ok() {
                    self.changed.notify_one();
                }
                r
            }
        }
    }

    /// After a bulk load: PostgreSQL's planner statistics brought up to date, so that searches
    /// over what was loaded are planned on its real sizes (autovacuum would get there later).
    /// SQLite plans without statistics unless asked; nothing to do there.
    pub async fn analyze(&self) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        self.read(|s| {
            s.db_mut().batch_execute(&format!(
                "SET statement_timeout = 0; ANALYZE resource_version, ix_token, ix_string, \
                 ix_reference, ix_date, ix_number, ix_quantity, ix_uri, ix_composite; \
                 SET statement_timeout = {}",
                STATEMENT_TIMEOUT_MS.load(Ordering::Relaxed)
            ))?;
            Ok(())
        })
        .await
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|s| s.ping()).await
    }
}

fn postgres_write<T, E, F>(db: &mut Db, backend: Backend, f: F) -> Result<T, E>
where
    F: FnOnce(&mut Session<'_>) -> Result<T, E>,
    E: From<StoreError>,
{
    let mut outcome: Option<Result<T, E>> = None;
    let r = db.transaction::<(), diesel::result::Error, _>(|db| {
        let r = f(&mut Session::new(db, backend, None));
        let failed = r.is_err();
        outcome = Some(r);
        if failed {
            Err(diesel::result::Error::RollbackTransaction)
        } else {
            Ok(())
        }
    });
    match (r, outcome) {
        (Ok(()), Some(v)) => v,
        (Err(diesel::result::Error::RollbackTransaction), Some(v)) => v,
        (Err(e), _) => Err(StoreError::from(e).into()),
        (Ok(()), None) => {
            Err(StoreError::Unavailable("transaction produced no result".into()).into())
        }
    }
}

async fn blocking<T, E, F>(f: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Unavailable(format!("database task failed: {e}")).into()),
    }
}

fn run_migrations(conn: &mut Db, backend: Backend) -> Result<(), StoreError> {
    let migrations = match backend {
        Backend::Sqlite => SQLITE_MIGRATIONS,
        Backend::Postgres => POSTGRES_MIGRATIONS,
    };
    conn.run_pending_migrations(migrations)
        .map(|_| ())
        .map_err(|e| StoreError::Migration(e.to_string()))
}

/// Runs pending migrations and returns (for `yba migrate`).
pub fn migrate(config: &StoreConfig) -> Result<Backend, StoreError> {
    Store::open(config).map(|s| s.backend)
}

/// Splits a DATABASE_URL into the engine and the string its driver takes.
fn parse_url(url: &str) -> Result<(Backend, String), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok((Backend::Postgres, url.to_string()))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        Ok((Backend::Sqlite, path.to_string()))
    } else if let Some(path) = url.strip_prefix("sqlite:") {
        Ok((Backend::Sqlite, path.to_string()))
    } else if url.contains("://") {
        Err(StoreError::Unavailable(format!(
            "DATABASE_URL must start with sqlite:// or postgres://, got {}",
            url.split("://").next().unwrap_or("")
        )))
    } else {
        Ok((Backend::Sqlite, url.to_string()))
    }
}
