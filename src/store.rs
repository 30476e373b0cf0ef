//! SQLite: migrations by `PRAGMA user_version`, the request state machine, and history queries.
//!
//! The database is the daemon's memory and the operator's audit log at once: a request is stored
//! before anything else happens, every transition appends a row to `events`, and on restart the
//! pipeline resumes from `requests.status`. WAL mode lets `sqlite3` and `purgewatch history` read
//! while the daemon writes; the busy timeout lets a `purgewatch purge` and the daemon take turns.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

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
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// How long a write waits for another process's write lock (`purgewatch purge`, a sibling).
const BUSY_TIMEOUT: Duration = Duration::from_secs(90);

/// Where a request stands. Stored as its snake_case name so `sqlite3` users read it directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    WaitingForOrigin,
    OriginTimeout,
    QuotaExhausted,
    Deferred,
    Invalidating,
    Invalidated,
    Completed,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::WaitingForOrigin => "waiting_for_origin",
            Status::OriginTimeout => "origin_timeout",
            Status::QuotaExhausted => "quota_exhausted",
            Status::Deferred => "deferred",
            Status::Invalidating => "invalidating",
            Status::Invalidated => "invalidated",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "waiting_for_origin" => Status::WaitingForOrigin,
            "origin_timeout" => Status::OriginTimeout,
            "quota_exhausted" => Status::QuotaExhausted,
            "deferred" => Status::Deferred,
            "invalidating" => Status::Invalidating,
            "invalidated" => Status::Invalidated,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            _ => return None,
        })
    }

    /// Ends the request: `finished_at` is set when a request enters one of these.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::OriginTimeout | Status::QuotaExhausted | Status::Completed | Status::Failed
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a request came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A marker write seen by the watcher.
    Watch,
    /// A marker found changed by a scan (start-up catch-up or after lost events).
    Scan,
    /// `purgewatch purge`: no origin wait.
    Manual,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Watch => "watch",
            Source::Scan => "scan",
            Source::Manual => "manual",
        }
    }
}

/// A marker as the local disk holds it: what S3 must hold before the request may proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerSeen {
    /// Path relative to the watch root, '/'-separated.
    pub rel: String,
    pub sums: crate::origin::Sums,
    pub size: u64,
    pub mtime_ns: i64,
    /// The S3 object an earlier write of this marker was verified against: the same bytes
    /// uploaded again are only a new upload if the object is another one.
    pub prior: Option<ObjectId>,
}

/// One upload of an S3 object, as far as HeadObject can tell uploads apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectId {
    pub etag: String,
    /// Whole seconds since the epoch.
    pub last_modified: i64,
    /// Set on versioned buckets only.
    pub version: Option<String>,
}

/// One request as `purgewatch history` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub id: i64,
    /// How many paths the invalidation carries (each wildcard counts as one, as AWS bills).
    pub path_count: Option<i64>,
    pub paths: Vec<String>,
    pub marker: String,
    pub origin: String,
    pub status: String,
    pub detected_at: String,
    pub finished_at: Option<String>,
    pub invalidation_id: Option<String>,
    pub period: Option<String>,
    pub caller_reference: Option<String>,
    pub detail: Option<String>,
}

/// A request the pipeline must carry on with after a restart.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub marker: String,
    pub status: Status,
    pub source: String,
    pub verified: bool,
    pub period: Option<String>,
    pub caller_reference: Option<String>,
    pub invalidation_id: Option<String>,
    pub granted_at: Option<String>,
}

/// The local quota counter of one period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counter {
    pub count: u32,
    pub remote_count: Option<u32>,
    pub remote_etag: Option<String>,
}

impl Counter {
    /// The count object as this database last read or wrote it, when that would grant a slot.
    /// The grant's write is conditional on this ETag, so a count object changed since (another
    /// server, the old Lambda, an operator) fails the write and is read again: the GET before
    /// each grant is saved, not the check. An exhausted count is always read again, in case it
    /// was reset.
    pub fn known_remote(&self, max: u32) -> Option<crate::quota::Remote> {
        let (count, etag) = (self.remote_count?, self.remote_etag.clone()?);
        (count < max).then_some(crate::quota::Remote {
            count,
            etag: Some(etag),
            writer: None,
        })
    }
}

pub fn now_text() -> String {
    ts(Utc::now())
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Append-only: a new version adds an entry, never edits one.
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
];

/// One connection, shared; calls run on blocking threads (see [`Store::call`]).
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
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
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            migrate(&mut conn)?;
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
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
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

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        if i == 0 {
            let id = format!("{:08x}", fastrand::u32(..));
            cached(
                &tx,
                "INSERT INTO meta (key, value) VALUES ('instance', ?1)",
                params![id],
            )?;
        }
    }
    if version < MIGRATIONS.len() {
        tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    }
    tx.commit()
}

// ---- request transitions (each call is one transaction) ------------------------------------

/// Stores a new request with its first marker (none for a manual request) and its first event.
pub fn insert_request(
    conn: &mut Connection,
    source: Source,
    marker: Option<&MarkerSeen>,
    paths: &[String],
    detail: &str,
) -> Result<i64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_text();
    let paths_json = serde_json::to_string(paths).unwrap_or_else(|_| "[]".into());
    cached(
        &tx,
        "INSERT INTO requests (origin, marker, status, detected_at, updated_at, paths, detail)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)",
        params![
            source.as_str(),
            marker.map(|m| m.rel.as_str()).unwrap_or(""),
            Status::WaitingForOrigin.as_str(),
            now,
            paths_json,
            detail
        ],
    )?;
    let id = tx.last_insert_rowid();
    if let Some(m) = marker {
        upsert_request_marker(&tx, id, m)?;
        // In the same transaction: a marker remembered without its request (the disk filled
        // between the two) would look unchanged at the next start and never be purged.
        remember_marker(&tx, m)?;
    }
    claim_changes(&tx, id)?;
    cached(&tx,
        "INSERT INTO events (request_id, at, from_status, to_status, detail) VALUES (?1, ?2, NULL, ?3, ?4)",
        params![id, now, Status::WaitingForOrigin.as_str(), detail],
    )?;
    tx.commit()?;
    Ok(id)
}

/// Stores a request that cannot go anywhere (an unreadable marker), already `failed`.
pub fn insert_failed(
    conn: &mut Connection,
    source: Source,
    rel: &str,
    detail: &str,
) -> Result<i64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_text();
    cached(&tx,
        "INSERT INTO requests (origin, marker, status, detected_at, updated_at, finished_at, paths, detail)
         VALUES (?1, ?2, 'failed', ?3, ?3, ?3, '[]', ?4)",
        params![source.as_str(), rel, now, detail],
    )?;
    let id = tx.last_insert_rowid();
    cached(&tx,
        "INSERT INTO events (request_id, at, from_status, to_status, detail) VALUES (?1, ?2, NULL, 'failed', ?3)",
        params![id, now, detail],
    )?;
    tx.commit()?;
    Ok(id)
}

fn upsert_request_marker(
    conn: &Connection,
    request_id: i64,
    m: &MarkerSeen,
) -> rusqlite::Result<usize> {
    cached(
        conn,
        "INSERT INTO request_markers (request_id, rel, md5, size, mtime_ns, crc32, crc64nvme)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (request_id, rel) DO UPDATE SET md5 = excluded.md5, size = excluded.size,
             mtime_ns = excluded.mtime_ns, crc32 = excluded.crc32, crc64nvme = excluded.crc64nvme",
        params![
            request_id,
            m.rel,
            m.sums.md5,
            m.size as i64,
            m.mtime_ns,
            m.sums.crc32,
            m.sums.crc64nvme
        ],
    )
}

/// Folds a marker write into a request that is still waiting for the origin (and not verified):
/// the newest bytes replace the wait. Returns false when the request has moved on.
pub fn merge_marker(conn: &mut Connection, id: i64, m: &MarkerSeen) -> Result<bool, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let n = cached(
        &tx,
        "UPDATE requests SET generation = generation + 1, updated_at = ?2
         WHERE id = ?1 AND status = 'waiting_for_origin' AND verified_at IS NULL",
        params![id, now_text()],
    )?;
    if n == 0 {
        return Ok(false);
    }
    upsert_request_marker(&tx, id, m)?;
    remember_marker(&tx, m)?;
    claim_changes(&tx, id)?;
    tx.commit()?;
    Ok(true)
}

/// The markers a request waits for, and the generation they belong to.
pub fn request_markers(conn: &Connection, id: i64) -> Result<(i64, Vec<MarkerSeen>), StoreError> {
    let generation: i64 =
        conn.query_row("SELECT generation FROM requests WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
    let mut stmt = conn.prepare_cached(
        "SELECT r.rel, r.md5, r.size, r.mtime_ns, r.crc32, r.crc64nvme,
                m.verified_etag, m.verified_last_modified, m.verified_version
         FROM request_markers r LEFT JOIN markers m ON m.rel = r.rel
         WHERE r.request_id = ?1 ORDER BY r.rel",
    )?;
    let markers = stmt
        .query_map([id], |r| {
            let etag: Option<String> = r.get(6)?;
            let last_modified: Option<i64> = r.get(7)?;
            Ok(MarkerSeen {
                rel: r.get(0)?,
                sums: crate::origin::Sums {
                    md5: r.get(1)?,
                    // Rows from before migration 4 have none: such a marker is proven by MD5.
                    crc32: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    crc64nvme: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                },
                size: r.get::<_, i64>(2)? as u64,
                mtime_ns: r.get(3)?,
                prior: etag
                    .zip(last_modified)
                    .map(|(etag, last_modified)| ObjectId {
                        etag,
                        last_modified,
                        version: r.get(8).ok().flatten(),
                    }),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((generation, markers))
}

/// Marks the markers of `generation` as held by S3, in the `objects` (per marker) proven `by`
/// ("crc64nvme, md5"). False when a newer write came in meanwhile.
pub fn mark_verified(
    conn: &mut Connection,
    id: i64,
    generation: i64,
    by: &str,
    objects: &[(String, ObjectId)],
    detail: &str,
) -> Result<bool, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_text();
    let n = cached(
        &tx,
        "UPDATE requests SET verified_at = ?3, updated_at = ?3, detail = ?4, verified_by = ?5
         WHERE id = ?1 AND generation = ?2 AND verified_at IS NULL",
        params![id, generation, now, detail, by],
    )?;
    if n == 1 {
        for (rel, o) in objects {
            cached(
                &tx,
                "UPDATE markers SET verified_etag = ?2, verified_last_modified = ?3,
                     verified_version = ?4 WHERE rel = ?1",
                params![rel, o.etag, o.last_modified, o.version],
            )?;
        }
        cached(
            &tx,
            "INSERT INTO events (request_id, at, from_status, to_status, detail)
             VALUES (?1, ?2, 'waiting_for_origin', 'waiting_for_origin', ?3)",
            params![id, now, detail],
        )?;
    }
    tx.commit()?;
    Ok(n == 1)
}

/// Moves a request to `to`, with an event row; sets `finished_at` on final states.
pub fn transition(conn: &Connection, id: i64, to: Status, detail: &str) -> Result<(), StoreError> {
    let now = now_text();
    let from: Option<String> = conn
        .query_row("SELECT status FROM requests WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    cached(
        conn,
        "UPDATE requests SET status = ?2, updated_at = ?3, detail = ?4,
             finished_at = CASE WHEN ?5 THEN ?3 ELSE finished_at END
         WHERE id = ?1",
        params![id, to.as_str(), now, detail, to.is_final()],
    )?;
    cached(conn,
        "INSERT INTO events (request_id, at, from_status, to_status, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, now, from, to.as_str(), detail],
    )?;
    Ok(())
}

/// Records something that happened to a request without changing its status (a retry, say).
pub fn note(conn: &Connection, id: i64, detail: &str) -> Result<(), StoreError> {
    let now = now_text();
    cached(
        conn,
        "INSERT INTO events (request_id, at, from_status, to_status, detail)
         SELECT id, ?2, status, status, ?3 FROM requests WHERE id = ?1",
        params![id, now, detail],
    )?;
    cached(
        conn,
        "UPDATE requests SET detail = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, detail, now],
    )?;
    Ok(())
}

pub fn set_invalidation_id(
    conn: &mut Connection,
    ids: &[i64],
    invalidation_id: &str,
    detail: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for &id in ids {
        cached(
            &tx,
            "UPDATE requests SET invalidation_id = ?2 WHERE id = ?1",
            params![id, invalidation_id],
        )?;
        transition(&tx, id, Status::Invalidated, detail)?;
    }
    tx.commit()?;
    Ok(())
}

pub fn paths_of(conn: &Connection, id: i64) -> Result<Vec<String>, StoreError> {
    let json: String = conn.query_row("SELECT paths FROM requests WHERE id = ?1", [id], |r| {
        r.get(0)
    })?;
    Ok(serde_json::from_str(&json).unwrap_or_default())
}

/// Requests that have not ended, oldest first.
pub fn pending(conn: &Connection) -> Result<Vec<Pending>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, status, origin, verified_at IS NOT NULL, period, caller_reference,
                invalidation_id, granted_at, marker
         FROM requests WHERE status IN ('waiting_for_origin', 'deferred', 'invalidating', 'invalidated')
         ORDER BY id",
    )?;
    let rows = stmt
        .query_map([], |r| {
            let status: String = r.get(1)?;
            Ok(Pending {
                id: r.get(0)?,
                status: Status::parse(&status).unwrap_or(Status::Failed),
                source: r.get(2)?,
                verified: r.get(3)?,
                period: r.get(4)?,
                caller_reference: r.get(5)?,
                invalidation_id: r.get(6)?,
                granted_at: r.get(7)?,
                marker: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub fn pending_one(conn: &Connection, id: i64) -> Result<Option<Pending>, StoreError> {
    Ok(pending(conn)?.into_iter().find(|p| p.id == id))
}

/// Deferred requests whose period has passed, oldest first.
pub fn deferred_before(conn: &Connection, period: &str) -> Result<Vec<i64>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT id FROM requests WHERE status = 'deferred' AND period < ?1 ORDER BY id")?;
    let ids = stmt
        .query_map([period], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(ids)
}

pub fn history(conn: &Connection, limit: u32) -> Result<Vec<HistoryRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, marker, origin, status, detected_at, finished_at, invalidation_id, period,
                caller_reference, detail, path_count, paths
         FROM requests ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt
        .query_map([limit], |r| {
            Ok(HistoryRow {
                id: r.get(0)?,
                marker: r.get(1)?,
                origin: r.get(2)?,
                status: r.get(3)?,
                detected_at: r.get(4)?,
                finished_at: r.get(5)?,
                invalidation_id: r.get(6)?,
                period: r.get(7)?,
                caller_reference: r.get(8)?,
                detail: r.get(9)?,
                path_count: r.get(10)?,
                paths: serde_json::from_str(&r.get::<_, String>(11)?).unwrap_or_default(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub fn counter(conn: &Connection, period: &str) -> Result<Counter, StoreError> {
    Ok(conn
        .query_row(
            "SELECT count, remote_count, remote_etag FROM quota WHERE period = ?1",
            [period],
            |r| {
                Ok(Counter {
                    count: r.get(0)?,
                    remote_count: r.get(1)?,
                    remote_etag: r.get(2)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

pub fn set_counter(conn: &Connection, period: &str, c: &Counter) -> Result<(), StoreError> {
    cached(
        conn,
        "INSERT INTO quota (period, count, remote_count, remote_etag, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (period) DO UPDATE SET count = excluded.count,
             remote_count = excluded.remote_count, remote_etag = excluded.remote_etag,
             updated_at = excluded.updated_at",
        params![period, c.count, c.remote_count, c.remote_etag, now_text()],
    )?;
    Ok(())
}

/// Records the grant of a slot on a request: the period, its CallerReference, status `invalidating`.
pub fn grant(
    conn: &Connection,
    ids: &[i64],
    period: &str,
    caller_reference: &str,
    detail: &str,
) -> Result<(), StoreError> {
    for &id in ids {
        cached(
            conn,
            "UPDATE requests SET period = ?2, caller_reference = ?3, granted_at = ?4 WHERE id = ?1",
            params![id, period, caller_reference, now_text()],
        )?;
        transition(conn, id, Status::Invalidating, detail)?;
    }
    Ok(())
}

pub fn set_period(conn: &Connection, id: i64, period: &str) -> Result<(), StoreError> {
    cached(
        conn,
        "UPDATE requests SET period = ?2 WHERE id = ?1",
        params![id, period],
    )?;
    Ok(())
}

/// Last state of every marker seen, for catch-up scans.
pub fn known_markers(
    conn: &Connection,
) -> Result<std::collections::HashMap<String, (u64, i64)>, StoreError> {
    let mut stmt = conn.prepare("SELECT rel, size, mtime_ns FROM markers")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get::<_, i64>(1)? as u64, r.get(2)?),
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

pub fn remember_marker(conn: &Connection, m: &MarkerSeen) -> Result<(), StoreError> {
    cached(
        conn,
        "INSERT INTO markers (rel, md5, size, mtime_ns, seen_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (rel) DO UPDATE SET md5 = excluded.md5, size = excluded.size,
             mtime_ns = excluded.mtime_ns, seen_at = excluded.seen_at",
        params![m.rel, m.sums.md5, m.size as i64, m.mtime_ns, now_text()],
    )?;
    Ok(())
}

/// True on the very first start of a daemon on this database (and records that it started).
pub fn first_start(conn: &Connection) -> Result<bool, StoreError> {
    let n = cached(
        conn,
        "INSERT INTO meta (key, value) VALUES ('first_started', ?1) ON CONFLICT (key) DO NOTHING",
        [now_text()],
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

    #[test]
    fn a_merge_after_verification_starts_a_new_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("pw.db")).expect("open");
        let mut c = s.lock();
        let m = MarkerSeen {
            rel: ".purge".into(),
            sums: Default::default(),
            size: 1,
            mtime_ns: 1,
            prior: None,
        };
        let id = insert_request(&mut c, Source::Watch, Some(&m), &["/*".into()], "seen")
            .expect("insert");
        assert!(merge_marker(&mut c, id, &m).expect("merge"));
        let (generation, markers) = request_markers(&c, id).expect("markers");
        assert_eq!((generation, markers.len()), (1, 1));
        // A stale generation must not verify: the newer write has not been checked yet.
        assert!(!mark_verified(&mut c, id, 0, "md5", &[], "ok").expect("verify"));
        assert!(mark_verified(&mut c, id, 1, "md5", &[], "ok").expect("verify"));
        assert!(!merge_marker(&mut c, id, &m).expect("merge"));
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
                insert_request(c, Source::Watch, None, &["/*".into()], "seen")
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

// ---- change tracking ---------------------------------------------------------------------

/// One path's net change since it was first seen in the open set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSeen {
    pub rel: String,
    pub deleted: bool,
    pub first_seen: String,
    pub last_seen: String,
}

/// Adds a batch to the open set in one transaction (one commit, not one per event).
pub fn record_changes(conn: &mut Connection, batch: &[ChangeSeen]) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO changes (rel, deleted, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (rel) WHERE request_id IS NULL
             DO UPDATE SET deleted = excluded.deleted, last_seen = excluded.last_seen",
        )?;
        for c in batch {
            stmt.execute(params![c.rel, c.deleted, c.first_seen, c.last_seen])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Notes that the open set misses changes (events lost, daemon down); the next request says so.
pub fn changes_unknown(conn: &Connection, why: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('changes_unknown', ?1) ON CONFLICT (key) DO NOTHING",
        [why],
    )?;
    Ok(())
}

/// The open set becomes the request's, with the note of what it may miss.
fn claim_changes(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE changes SET request_id = ?1 WHERE request_id IS NULL",
        [id],
    )?;
    conn.execute(
        "UPDATE requests SET changes_unknown = coalesce(changes_unknown,
             (SELECT value FROM meta WHERE key = 'changes_unknown')) WHERE id = ?1",
        [id],
    )?;
    conn.execute("DELETE FROM meta WHERE key = 'changes_unknown'", [])?;
    Ok(())
}

/// (path relative to the root, deleted) pairs.
pub type ChangeList = Vec<(String, bool)>;

/// A request's changes, one per path (the last event wins), and why the set may be incomplete.
pub fn request_changes(
    conn: &Connection,
    id: i64,
) -> Result<(ChangeList, Option<String>), StoreError> {
    let unknown: Option<String> = conn.query_row(
        "SELECT changes_unknown FROM requests WHERE id = ?1",
        [id],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare(
        "SELECT rel, deleted FROM changes WHERE request_id = ?1 AND id IN
             (SELECT max(id) FROM changes WHERE request_id = ?1 GROUP BY rel)
         ORDER BY rel",
    )?;
    let rows = stmt
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((rows, unknown))
}

/// Sets the paths the invalidation of these requests will carry.
pub fn set_paths(
    conn: &mut Connection,
    ids: &[i64],
    paths: &[String],
    detail: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let json = serde_json::to_string(paths).unwrap_or_else(|_| "[]".into());
    for &id in ids {
        tx.execute(
            "UPDATE requests SET paths = ?2, path_count = ?3 WHERE id = ?1",
            params![id, json, paths.len() as i64],
        )?;
        note(&tx, id, detail)?;
    }
    tx.commit()?;
    Ok(())
}

/// Paths sent to CloudFront in invalidations granted since `since` (UTC, RFC 3339 prefix), each
/// invalidation once: what AWS bills past the free 1,000 a month.
pub fn paths_since(conn: &Connection, since: &str) -> Result<u64, StoreError> {
    let n: Option<i64> = conn.query_row(
        "SELECT sum(n) FROM (SELECT max(coalesce(path_count, json_array_length(paths))) AS n
             FROM requests WHERE invalidation_id IS NOT NULL AND granted_at >= ?1
             GROUP BY invalidation_id)",
        [since],
        |r| r.get(0),
    )?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// Of `ids`, those a grant may still move on (waiting or deferred), in order.
pub fn grantable(conn: &Connection, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
    let mut live = Vec::new();
    for &id in ids {
        let status: String =
            conn.query_row("SELECT status FROM requests WHERE id = ?1", [id], |r| {
                r.get(0)
            })?;
        if status == "waiting_for_origin" || status == "deferred" {
            live.push(id);
        }
    }
    Ok(live)
}

/// Journals the slot a request is about to write into the count object, and the
/// CallerReference that write names (a restart must recognise it by that name).
pub fn reserve(
    conn: &Connection,
    id: i64,
    period: &str,
    slot: u32,
    caller_reference: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE requests SET reserved_period = ?2, reserved_slot = ?3, caller_reference = ?4
         WHERE id = ?1",
        params![id, period, slot, caller_reference],
    )?;
    Ok(())
}

/// The slot journalled on a request, and its CallerReference once one was made.
pub type Reservation = (Option<(String, u32)>, Option<String>);

pub fn reservation(conn: &Connection, id: i64) -> Result<Reservation, StoreError> {
    Ok(conn.query_row(
        "SELECT reserved_period, reserved_slot, caller_reference FROM requests WHERE id = ?1",
        [id],
        |r| {
            let p: Option<String> = r.get(0)?;
            let s: Option<u32> = r.get(1)?;
            Ok((p.zip(s), r.get(2)?))
        },
    )?)
}
