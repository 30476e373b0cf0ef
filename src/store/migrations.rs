//! The schema, one entry a version, applied in order by `PRAGMA user_version` ([`migrate`]);
//! and what a new database gets once (its instance id, incremental vacuum). Append-only: a new
//! version adds an entry, never edits one (`migrations_twice_are_a_no_op`).

use rusqlite::{params, Connection, TransactionBehavior};

use super::cached;

/// The schema, one entry per version (see [`migrate`]).
pub(super) const MIGRATIONS: &[&str] = &[
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
    r#"
-- 11: `purgewatch takeover` (init::takeover): the notification entries it removed from an origin
-- bucket (the old Lambda's trigger), as JSON, so `--undo` puts back exactly those.
CREATE TABLE takeovers (
    id          INTEGER PRIMARY KEY,
    site        TEXT NOT NULL,
    bucket      TEXT NOT NULL,
    removed     TEXT NOT NULL,              -- JSON array of init::discover::Trigger
    taken_at    TEXT NOT NULL,
    undone_at   TEXT
);
"#,
    // One row per distribution a granted purge goes to (`store/invalidations.rs`), keyed by the
    // grant's CallerReference (`requests.caller_reference`, shared by the requests of one sync).
    r#"
CREATE TABLE invalidations (
    grant_ref        TEXT NOT NULL,
    distribution_id  TEXT NOT NULL,
    site             TEXT NOT NULL,
    position         INTEGER NOT NULL,       -- the distribution's place in the config
    caller_reference TEXT NOT NULL,          -- stored before its CreateInvalidation
    paths            INTEGER NOT NULL,       -- paths sent (each wildcard one, as AWS bills)
    state            TEXT NOT NULL,          -- sending | busy | in_progress | completed | failed
    invalidation_id  TEXT,
    detail           TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (grant_ref, distribution_id)
);
CREATE INDEX invalidations_by_update ON invalidations (updated_at);
"#,
];

/// Runs the `migrations` a database has not had yet, in one transaction, and records how many
/// it has had in `PRAGMA user_version`. `first` runs once, in the same transaction, when the
/// database is new. Append-only: a new version adds an entry, never edits one.
pub(super) fn migrate(
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
pub(super) fn incremental_vacuum(conn: &Connection) -> rusqlite::Result<()> {
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
pub(super) fn new_instance(conn: &Connection) -> rusqlite::Result<()> {
    let id = format!("{:08x}", fastrand::u32(..));
    cached(
        conn,
        "INSERT INTO meta (key, value) VALUES ('instance', ?1)",
        params![id],
    )?;
    Ok(())
}
