//! The `quota` table: the local counter of each quota and period, and the count object as this database
//! last read or wrote it (its count and ETag). The rules that use them live in
//! `quota::ledger`.

use rusqlite::{params, Connection, OptionalExtension};

use super::{cached, now_text, StoreError};

/// The local quota counter of one period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counter {
    pub count: u32,
    pub remote_count: Option<u32>,
    pub remote_etag: Option<String>,
}

/// The counter of quota `quota` (its name) in `period`.
pub fn get(conn: &Connection, quota: &str, period: &str) -> Result<Counter, StoreError> {
    Ok(conn
        .query_row(
            "SELECT count, remote_count, remote_etag FROM quota WHERE quota = ?1 AND period = ?2",
            [quota, period],
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

pub fn set(conn: &Connection, quota: &str, period: &str, c: &Counter) -> Result<(), StoreError> {
    cached(
        conn,
        "INSERT INTO quota (quota, period, count, remote_count, remote_etag, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (quota, period) DO UPDATE SET count = excluded.count,
             remote_count = excluded.remote_count, remote_etag = excluded.remote_etag,
             updated_at = excluded.updated_at",
        params![
            quota,
            period,
            c.count,
            c.remote_count,
            c.remote_etag,
            now_text()
        ],
    )?;
    Ok(())
}
