//! SQLite plumbing: the one connection, its threads, and migrations by `PRAGMA user_version`.
//! The tables' own code lives beside it, one module each: [`requests`] (the request state
//! machine, its events and the history), [`markers`], [`changes`], [`counters`] (the local
//! quota counter).
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
//! Migrations are append-only; `migrations_twice_are_a_no_op` runs them twice.

pub mod alerts;
pub mod changes;
pub mod counters;
pub mod counts;
pub mod events;
pub mod markers;
pub mod meta;
pub mod prune;
pub mod requests;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
/// The connection [`Store::call`] lends, for the neighbours that pass it to the functions here.
pub use rusqlite::Connection;
use rusqlite::{params, TransactionBehavior};

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

/// The schema, one entry per version (see [`migrate`]).
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE requests (
    id               INTEGER PRIMARY KEY,
    origin           TEXT NOT NULL,          -- watch | scan | manual
    marker           TEXT NOT NULL,          -- first marker, relative to watch.root
    status           TEXT NOT NULL,
    detected_at      TEXT NOT NULL,          -- RFC 3339, UTC
    updated_at       TEXT NOT NULL,
    finished_at      TEXT,
    verified_at      TEXT,                   -- S3 held every marker's bytes
    generation       INTEGER NOT NULL DEFAULT 0, -- bumped by each marker write merged in
    period           TEXT,                   -- quota period the slot was taken from
    granted_at       TEXT,
    caller_reference TEXT,
    invalidation_id  TEXT,
    paths            TEXT NOT NULL,          -- JSON array of invalidation paths
    detail           TEXT                    -- why, in words
);
CREATE INDEX requests_status ON requests(status);
CREATE TABLE request_markers (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    rel        TEXT NOT NULL,
    md5        TEXT NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    PRIMARY KEY (request_id, rel)
);
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    request_id  INTEGER NOT NULL REFERENCES requests(id),
    at          TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX events_request ON events(request_id);
CREATE TABLE quota (
    period       TEXT PRIMARY KEY,           -- YYYY-MM-DD or YYYY-MM in quota.timezone
    count        INTEGER NOT NULL,           -- slots used, max(local, count object)
    remote_count INTEGER,                    -- the count object's body when last read or written
    remote_etag  TEXT,
    updated_at   TEXT NOT NULL
);
CREATE TABLE markers (
    rel      TEXT PRIMARY KEY,               -- last state of each marker seen, for catch-up scans
    md5      TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    seen_at  TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE changes (
    id         INTEGER PRIMARY KEY,
    rel        TEXT NOT NULL,                -- path relative to watch.root
    deleted    INTEGER NOT NULL,             -- the last event: 1 removed/moved away, 0 written
    first_seen TEXT NOT NULL,
    last_seen  TEXT NOT NULL,
    request_id INTEGER REFERENCES requests(id) -- NULL: the open set, owned by the next request
);
CREATE UNIQUE INDEX changes_open ON changes(rel) WHERE request_id IS NULL;
CREATE INDEX changes_request ON changes(request_id);
ALTER TABLE requests ADD COLUMN changes_unknown TEXT; -- why the change set is incomplete
ALTER TABLE requests ADD COLUMN path_count INTEGER;
"#,
    r#"
-- A slot journaled before the count object is written (see pipeline::try_grant).
ALTER TABLE requests ADD COLUMN reserved_period TEXT;
ALTER TABLE requests ADD COLUMN reserved_slot INTEGER;
"#,
    r#"
-- The checksums S3 reports for most uploads (base64, as S3 sends them), beside the MD5.
ALTER TABLE request_markers ADD COLUMN crc32 TEXT;
ALTER TABLE request_markers ADD COLUMN crc64nvme TEXT;
-- The object each marker was last verified against: the same bytes again are not a new upload.
ALTER TABLE markers ADD COLUMN verified_etag TEXT;
ALTER TABLE markers ADD COLUMN verified_last_modified INTEGER;
ALTER TABLE markers ADD COLUMN verified_version TEXT;
-- How the origin check proved each request ("crc64nvme", "md5", "size+time").
ALTER TABLE requests ADD COLUMN verified_by TEXT;
"#,
    r#"
-- The status names the stage that holds the request: verified (or manual) requests wait for a
-- quota slot in a status of their own.
UPDATE requests SET status = 'waiting_for_quota'
WHERE status = 'waiting_for_origin' AND (verified_at IS NOT NULL OR origin = 'manual');
"#,
    r#"
-- A request's change set (one row per path, the last event wins) read in index order.
CREATE INDEX changes_request_rel ON changes(request_id, rel, id);
DROP INDEX changes_request;
"#,
    r#"
-- Bounded state (store::prune): ended requests are found by when they ended, and keep how many
-- changes they had once the change rows are gone.
CREATE INDEX requests_finished ON requests(finished_at);
ALTER TABLE requests ADD COLUMN change_count INTEGER;
UPDATE requests SET change_count = (SELECT count(DISTINCT rel) FROM changes WHERE request_id = requests.id);
"#,
    r#"
-- Several sites ([[site]] in the config): requests, changes and markers belong to a site, the
-- local counters to a quota (sites may share one). Rows from before are the site and the quota
-- named `default`, which is what a single-site config is.
ALTER TABLE requests ADD COLUMN site TEXT NOT NULL DEFAULT 'default';
CREATE INDEX requests_site_status ON requests(site, status);
ALTER TABLE changes ADD COLUMN site TEXT NOT NULL DEFAULT 'default';
DROP INDEX changes_open;
CREATE UNIQUE INDEX changes_open ON changes(site, rel) WHERE request_id IS NULL;
CREATE TABLE markers_by_site (
    site     TEXT NOT NULL,
    rel      TEXT NOT NULL,
    md5      TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    seen_at  TEXT NOT NULL,
    verified_etag TEXT,
    verified_last_modified INTEGER,
    verified_version TEXT,
    PRIMARY KEY (site, rel)
);
INSERT INTO markers_by_site
    SELECT 'default', rel, md5, size, mtime_ns, seen_at, verified_etag, verified_last_modified,
           verified_version FROM markers;
DROP TABLE markers;
ALTER TABLE markers_by_site RENAME TO markers;
CREATE TABLE quota_by_name (
    quota        TEXT NOT NULL,              -- the quota's name: default, or [quotas.NAME]
    period       TEXT NOT NULL,
    count        INTEGER NOT NULL,
    remote_count INTEGER,
    remote_etag  TEXT,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (quota, period)
);
INSERT INTO quota_by_name
    SELECT 'default', period, count, remote_count, remote_etag, updated_at FROM quota;
DROP TABLE quota;
ALTER TABLE quota_by_name RENAME TO quota;
UPDATE meta SET key = 'changes_unknown:default' WHERE key = 'changes_unknown';
UPDATE meta SET key = 'first_started:default' WHERE key = 'first_started';
"#,
    r#"
-- 9: the marker is read once. The bytes of a marker small enough to be a path list, as hashed
-- at intake (NULL: too big to be one, or stored before this version); and a failed request's
-- count of the unusable writes of its marker folded into it (a flood is one row).
ALTER TABLE request_markers ADD COLUMN body BLOB;
ALTER TABLE requests ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- 10: alert deliveries are data (store::alerts): one row per attempt to deliver an alert (the
-- event of a move to a status in `[notify] on`) to a target. The notes earlier versions wrote
-- instead ("alert on completed to webhook: delivered (HTTP 200)") become rows, tied to the
-- event of that status; the notes stay, for people.
CREATE TABLE alert_deliveries (
    id         INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL REFERENCES requests(id) ON DELETE CASCADE,
    event_id   INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    target     TEXT NOT NULL CHECK (target IN ('webhook', 'sns')),
    attempt    INTEGER NOT NULL,             -- 1, 2, … per event and target, across restarts
    outcome    TEXT NOT NULL CHECK (outcome IN ('delivered', 'failed', 'gave_up')),
    detail     TEXT,                         -- the proof (HTTP 200, MessageId …) or why not
    at         TEXT NOT NULL,
    UNIQUE (event_id, target, attempt)
);
CREATE INDEX alert_deliveries_request ON alert_deliveries(request_id);
WITH notes AS (
    SELECT id, request_id, at, substr(detail, 10) AS s FROM events
    WHERE from_status = to_status AND detail LIKE 'alert on % to %: %'
), split AS (
    SELECT id, request_id, at, substr(s, 1, instr(s, ' to ') - 1) AS status,
           substr(s, instr(s, ' to ') + 4) AS rest
    FROM notes
), parsed AS (
    SELECT id, request_id, at, status, lower(substr(rest, 1, instr(rest, ': ') - 1)) AS target,
           substr(rest, instr(rest, ': ') + 2) AS said
    FROM split
), tied AS (
    SELECT p.*, (SELECT max(e.id) FROM events e
                 WHERE e.request_id = p.request_id AND e.id < p.id AND e.to_status = p.status
                   AND (e.from_status IS NULL OR e.from_status <> e.to_status)) AS event_id
    FROM parsed p
)
INSERT INTO alert_deliveries (request_id, event_id, target, attempt, outcome, detail, at)
SELECT request_id, event_id, target,
       row_number() OVER (PARTITION BY event_id, target ORDER BY id),
       CASE WHEN said LIKE 'delivered%' THEN 'delivered'
            WHEN said LIKE 'gave up%' THEN 'gave_up'
            ELSE 'failed' END,
       said, at
FROM tied
WHERE event_id IS NOT NULL AND target IN ('webhook', 'sns')
ORDER BY id;
"#,
];

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

/// Runs the `migrations` a database has not had yet, in one transaction, and records how many
/// it has had in `PRAGMA user_version`. `first` runs once, in the same transaction, when the
/// database is new. Append-only: a new version adds an entry, never edits one.
fn migrate(
    conn: &mut Connection,
    migrations: &[&str],
    first: impl FnOnce(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for sql in migrations.iter().skip(version) {
        tx.execute_batch(sql)?;
    }
    if version == 0 {
        first(&tx)?;
    }
    if version < migrations.len() {
        tx.pragma_update(None, "user_version", migrations.len())?;
    }
    tx.commit()
}

/// Pages freed by pruning go back to the file system (`PRAGMA incremental_vacuum`): a new
/// database starts so; an older one is converted once, by a VACUUM.
fn incremental_vacuum(conn: &Connection) -> rusqlite::Result<()> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    conn.pragma_update(None, "auto_vacuum", INCREMENTAL)?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if tables > 0 {
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}

/// A new database's random id, part of every CallerReference.
fn new_instance(conn: &Connection) -> rusqlite::Result<()> {
    let id = format!("{:08x}", fastrand::u32(..));
    cached(
        conn,
        "INSERT INTO meta (key, value) VALUES ('instance', ?1)",
        params![id],
    )?;
    Ok(())
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
