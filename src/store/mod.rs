//! SQLite plumbing: the one connection and its threads; every SQL statement of the daemon is in
//! this folder (`tests/it/tidy.rs` keeps it so). Beside it, one module a table or a reader:
//! [`migrations`] (the schema), [`status`] (the state machine's states), [`requests`] (the
//! requests, their events and the history), [`markers`], [`changes`], [`counters`] (the local
//! quota counter), [`meta`] (the heartbeat), [`alerts`] (the alert outbox and its deliveries),
//! [`events`] and [`counts`] (what the metrics read), [`prune`].
//!
//! The database is the daemon's memory and the operator's audit log at once: a request is stored
//! before anything else happens, every transition appends a row to `events`, and on restart the
//! pipeline resumes from `requests.status`.
//!
//! ## Locking
//! WAL mode lets `sqlite3` and `purgewatch history` read while the daemon writes; the busy
//! timeout lets a `purgewatch purge` and the daemon take turns. One connection per process,
//! behind a mutex; every call runs on a blocking thread ([`Store::call`]) or, when nothing holds
//! it, at once ([`Store::quick`]).
//!
//! ## Compatibility
//! Migrations ([`migrations`]) are append-only; `migrations_twice_are_a_no_op` runs them twice.

pub mod alerts;
pub mod changes;
pub mod counters;
pub mod counts;
pub mod events;
pub mod invalidations;
pub mod markers;
pub mod meta;
mod migrations;
pub mod prune;
pub mod requests;
pub mod status;
pub mod takeovers;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
/// The connection [`Store::call`] lends, for the neighbours that pass it to the functions here.
pub use rusqlite::Connection;

use migrations::{incremental_vacuum, migrate, new_instance, MIGRATIONS};

pub use changes::ChangeSeen;
pub use counters::Counter;
pub use requests::{HistoryRow, Pending};
pub use status::{Source, Status};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database {path}: cannot create its folder: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A status this version does not know (a newer version wrote it, or a hand edit).
    #[error("database: request {id} has the unknown status {status:?}")]
    UnknownStatus { id: i64, status: String },
    /// A `-wal` without its `-shm`: a reader would have to create it, as its own user.
    #[error(
        "database {path}: its -wal is there without its -shm; run this as the daemon's user (or \
         start the daemon) rather than create it as this user"
    )]
    NeedsShm { path: PathBuf },
    /// A transition the state machine does not allow: a bug, never a retry.
    #[error("database: request {id} cannot go from {from} to {to}")]
    Transition { id: i64, from: Status, to: Status },
}

/// What the WAL file is cut back to once checkpointed (SQLite's `journal_size_limit`).
const WAL_LIMIT: i64 = 4 << 20;

/// How long a write waits for another process's write lock (`purgewatch purge`, a sibling).
const BUSY_TIMEOUT: Duration = Duration::from_secs(90);

pub fn now_text() -> String {
    ts(Utc::now())
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One connection, shared; calls run on blocking threads (see [`Store::call`]).
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: path.to_owned(),
                source,
            })?;
        }
        let open = |path: &Path| -> rusqlite::Result<Connection> {
            let mut conn = Connection::open(path)?;
            // Longer than one count-bucket call (60 s), which may run while the write lock is held.
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.set_prepared_statement_cache_capacity(64);
            // Before WAL: switching to WAL writes the header, after which a new database's
            // auto_vacuum can no longer be set without a VACUUM.
            incremental_vacuum(&conn)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            // One big transaction (a deploy of 200,000 changes claimed by its request) grows
            // the WAL to tens of MB; without a limit the file keeps that size for good.
            conn.pragma_update(None, "journal_size_limit", WAL_LIMIT)?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            migrate(&mut conn, MIGRATIONS, new_instance)?;
            // A read-only file or file system shows here, with the path, not at the first purge.
            cached(
                &conn,
                "UPDATE meta SET value = value WHERE key = 'instance'",
                [],
            )?;
            Ok(conn)
        };
        // Switching a new database to WAL takes an exclusive lock that SQLite's busy handler does
        // not wait for: a daemon and a `purgewatch purge` opening it at once may see "database is
        // locked". Bounded retries (5 s in all) get past that first moment.
        let mut tries = 0;
        let conn = loop {
            match open(path) {
                Ok(c) => break c,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && tries < 100 =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(StoreError::Open {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        };
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Opens an existing database for reading only (`check`, `history`, `status`, `quota`):
    /// nothing is created, migrated or written, and no file is left beside it. `Ok(None)` when
    /// there is no database yet (the daemon has not run).
    ///
    /// WAL: a reader that finds no `-wal` would create the `-wal` and `-shm` as its own user
    /// and leave them (root's, after `sudo purgewatch status`, which the service's user then
    /// cannot write). So without a `-wal` every committed page is in the file itself, read as
    /// `immutable` (no lock, no file made); with the daemon's `-wal` and `-shm` present, a
    /// plain read-only connection shares them (SQLite reads a `-shm` it may not write).
    pub fn open_read_only(path: &Path) -> Result<Option<ReadOnly>, StoreError> {
        let err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        let beside = |ext: &str| {
            let mut p = path.as_os_str().to_owned();
            p.push(ext);
            PathBuf::from(p).exists()
        };
        let (wal, shm) = (beside("-wal"), beside("-shm"));
        if wal && !shm {
            // A reader would have to make the -shm: as this user, the daemon's for good.
            return Err(StoreError::NeedsShm {
                path: path.to_owned(),
            });
        }
        let uri = format!(
            "file:{}?mode=ro{}",
            uri_path(path),
            if wal { "" } else { "&immutable=1" }
        );
        use rusqlite::OpenFlags;
        let conn = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        let version: usize = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        Ok(Some(ReadOnly {
            store: Store {
                conn: Arc::new(Mutex::new(conn)),
            },
            version,
            current: MIGRATIONS.len(),
        }))
    }

    /// The connection, for callers already on a blocking thread.
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` at once on this thread when that cannot wait: the connection is free (no other
    /// call holds it) and SQLite's write lock is not held by another process (busy timeout 0
    /// for this call). `None` when either is taken: use [`Store::call`]. For short writes on the
    /// hot path, where two hand-offs to the blocking pool would cost more than the write.
    /// A busy `f` is run again elsewhere: it must have written nothing when it fails busy (one
    /// transaction per write, and no fallible step after its last one).
    pub fn try_now<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        let mut conn = match self.conn.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        if conn.busy_timeout(Duration::ZERO).is_err() {
            return None;
        }
        let r = f(&mut conn);
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
        match r {
            Err(StoreError::Sql(rusqlite::Error::SqliteFailure(e, _)))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                None
            }
            r => Some(r),
        }
    }

    /// Runs `f` at once when the database is free ([`Store::try_now`]), else on a blocking
    /// thread ([`Store::call`]). For the short steps of a request's way to CloudFront: each
    /// hand-off to the blocking pool costs two thread wake-ups. `f` may run twice, so it must
    /// follow `try_now`'s rule (one transaction per write).
    pub async fn quick<T, F>(&self, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        match self.try_now(&mut f) {
            Some(r) => r,
            None => self.call(f).await,
        }
    }

    /// Runs `f` with the connection on a blocking thread, so SQLite never stalls the runtime.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&mut store.lock()))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// A random id of this database, part of every CallerReference: a new database must never
    /// reuse an old reference (CloudFront would answer with the old invalidation and purge nothing).
    pub fn instance_id(conn: &Connection) -> Result<String, StoreError> {
        Ok(
            conn.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
                r.get(0)
            })?,
        )
    }
}

/// A database opened by [`Store::open_read_only`], with its schema version beside this
/// binary's: a reader never migrates, the daemon does at its next start.
pub struct ReadOnly {
    pub store: Store,
    /// `PRAGMA user_version`: how many migrations the database has had.
    pub version: usize,
    /// How many this binary knows.
    pub current: usize,
}

impl ReadOnly {
    /// What to tell the operator about the schema, when it is not this binary's.
    pub fn schema_note(&self) -> Option<String> {
        use std::cmp::Ordering::*;
        match self.version.cmp(&self.current) {
            Equal => None,
            Less => Some(format!(
                "the database is from an older version (schema {} of {}); it is upgraded when \
                 the daemon starts",
                self.version, self.current
            )),
            Greater => Some(format!(
                "the database is from a newer version of purgewatch (schema {} of {})",
                self.version, self.current
            )),
        }
    }
}

/// `path` for a `file:` URI, every byte but the plainest escaped (`?` and `#` would end it).
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// True on the very first start of a daemon on this database (and records that it started).
pub fn first_start(conn: &Connection, site: &str) -> Result<bool, StoreError> {
    let n = cached(
        conn,
        "INSERT INTO meta (key, value) VALUES ('first_started:' || ?2, ?1)
         ON CONFLICT (key) DO NOTHING",
        [now_text(), site.to_owned()],
    )?;
    Ok(n == 1)
}

/// Executes `sql` through the connection's statement cache: the hot statements (a marker
/// write stores a request in five) are parsed once, not on every call.
fn cached<P: rusqlite::Params>(conn: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_twice_are_a_no_op() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw.db");
        let id1 = {
            let s = Store::open(&path).expect("open");
            let c = s.lock();
            Store::instance_id(&c).expect("id")
        };
        let s = Store::open(&path).expect("reopen");
        let c = s.lock();
        assert_eq!(Store::instance_id(&c).expect("id"), id1);
        let v: usize = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, MIGRATIONS.len());
    }

    /// A database of the single-site daemon (schema 7) keeps its history, markers, count and
    /// open changes as the site and quota `default`.
    #[test]
    fn a_single_site_database_becomes_the_site_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw.db");
        {
            let mut c = Connection::open(&path).expect("open");
            migrate(&mut c, &MIGRATIONS[..7], |_| Ok(())).expect("schema 7");
            c.execute_batch(
                "INSERT INTO requests (id, origin, marker, status, detected_at, updated_at, paths)
                     VALUES (1, 'watch', '.purge', 'completed', 't', 't', '[]');
                 INSERT INTO markers (rel, md5, size, mtime_ns, seen_at, verified_etag)
                     VALUES ('.purge', 'm', 1, 2, 't', 'e');
                 INSERT INTO quota (period, count, updated_at) VALUES ('2026-12-02', 7, 't');
                 INSERT INTO changes (rel, deleted, first_seen, last_seen)
                     VALUES ('a.html', 0, 't', 't');
                 INSERT INTO meta (key, value) VALUES ('first_started', 't');",
            )
            .expect("old rows");
        }
        let s = Store::open(&path).expect("migrate");
        let c = s.lock();
        let site: String = c
            .query_row("SELECT site FROM requests WHERE id = 1", [], |r| r.get(0))
            .expect("request");
        assert_eq!(site, "default");
        assert_eq!(
            counters::get(&c, "default", "2026-12-02")
                .expect("count")
                .count,
            7
        );
        assert!(markers::known(&c, "default")
            .expect("known")
            .contains_key(".purge"));
        assert!(markers::known(&c, "blog").expect("known").is_empty());
        assert_eq!(
            changes::open_paths(&c, "default").expect("open"),
            ["a.html"]
        );
        assert!(
            !first_start(&c, "default").expect("first"),
            "started before"
        );
        assert!(
            first_start(&c, "blog").expect("first"),
            "a new site's first start"
        );
    }

    // Pruning handed no page back when auto_vacuum was set after the switch to WAL (a new
    // database stayed at NONE), and its vacuum loop spun: the mode must hold for new and old
    // databases alike.
    #[test]
    fn new_and_old_databases_vacuum_incrementally() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| -> i64 {
            Connection::open(p)
                .expect("open")
                .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
                .expect("pragma")
        };
        let new = dir.path().join("new.db");
        drop(Store::open(&new).expect("open"));
        assert_eq!(mode(&new), 2);
        let old = dir.path().join("old.db");
        {
            let c = Connection::open(&old).expect("create");
            c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
                .expect("an old database");
        }
        assert_eq!(mode(&old), 0);
        drop(Store::open(&old).expect("open"));
        assert_eq!(mode(&old), 2);
    }

    // `sudo purgewatch check` before the first start made a root-owned database; a read-only
    // open by root of a stopped daemon's database left root's -wal and -shm beside it.
    #[test]
    fn a_reader_creates_migrates_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state dir?#%/pw.db");
        assert!(Store::open_read_only(&path).expect("no database").is_none());
        assert!(!path.parent().expect("dir").exists(), "nothing created");
        drop(Store::open(&path).expect("the daemon's first start"));
        let files = || {
            let mut v: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
                .expect("ls")
                .map(|e| e.expect("entry").file_name())
                .collect();
            v.sort();
            v
        };
        let before = files();
        assert_eq!(before, ["pw.db"]);
        {
            let c = Connection::open(&path).expect("open");
            c.pragma_update(None, "user_version", MIGRATIONS.len() - 1)
                .expect("an older schema");
        }
        let r = Store::open_read_only(&path).expect("open").expect("exists");
        assert_eq!(r.version, MIGRATIONS.len() - 1);
        assert!(r
            .schema_note()
            .is_some_and(|n| n.contains("from an older version")));
        let c = r.store.lock();
        let n: i64 = c
            .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
            .expect("read");
        assert_eq!(n, 0);
        assert!(c.execute_batch("DELETE FROM meta").is_err(), "read only");
        drop(c);
        drop(r);
        assert_eq!(files(), before, "nothing left beside it");
        // With the daemon's connection open, the reader shares its -wal and -shm.
        Connection::open(&path)
            .expect("open")
            .pragma_update(None, "user_version", MIGRATIONS.len())
            .expect("the version back (the last migration is not idempotent)");
        let daemon = Store::open(&path).expect("the daemon");
        let r = Store::open_read_only(&path).expect("open").expect("exists");
        assert_eq!(r.version, MIGRATIONS.len());
        assert!(r.schema_note().is_none());
        drop((r, daemon));
        assert_eq!(files(), before);
    }

    // Without the limit the WAL stayed at 20 MB after the checkpoint.
    #[test]
    fn the_wal_shrinks_back_after_a_big_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw.db");
        let s = Store::open(&path).expect("open");
        let wal = || std::fs::metadata(dir.path().join("pw.db-wal")).map_or(0, |m| m.len());
        let c = s.lock();
        c.execute_batch(
            "CREATE TABLE big (x BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO big SELECT randomblob(4000) FROM n;",
        )
        .expect("20 MB in one transaction");
        assert!(wal() > 3 * WAL_LIMIT as u64, "the WAL grew: {}", wal());
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .expect("checkpoint");
        c.execute_batch("INSERT INTO big VALUES (x'01')")
            .expect("write");
        assert!(wal() <= WAL_LIMIT as u64, "the WAL stayed at {}", wal());
    }

    /// `Store::quick` with SQLite's write lock held by another process (the CLI, `sqlite3`):
    /// the attempt on the pipeline's thread fails busy having written nothing, and the write
    /// is made once, on the blocking pool, when the lock is released.
    #[test]
    fn a_write_the_hot_path_finds_busy_is_made_once_when_the_lock_is_free() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw.db");
        let s = Store::open(&path).expect("open");
        let other = Connection::open(&path).expect("second connection");
        other.execute_batch("BEGIN IMMEDIATE").expect("write lock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        let attempts = Arc::new(AtomicUsize::new(0));
        let a = attempts.clone();
        let task = rt.spawn(async move {
            s.quick(move |c| {
                a.fetch_add(1, Ordering::SeqCst);
                requests::insert(c, "default", Source::Watch, None, &["/*".into()], "seen")
            })
            .await
        });
        // The second attempt is the blocking pool's, waiting in SQLite's busy handler.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while attempts.load(Ordering::SeqCst) < 2 {
            assert!(std::time::Instant::now() < deadline, "no second attempt");
            std::thread::sleep(Duration::from_millis(1));
        }
        let count = |c: &Connection| -> i64 {
            c.query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
                .expect("count")
        };
        assert_eq!(count(&other), 0, "the busy attempt wrote nothing");
        other.execute_batch("COMMIT").expect("release");
        let id = rt.block_on(task).expect("task").expect("written");
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert_eq!(count(&other), 1);
        let status: String = other
            .query_row("SELECT status FROM requests WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .expect("row");
        assert_eq!(status, "waiting_for_origin");
    }
}
