//! The `meta` table's heartbeat: the daemon's own account of itself under the key `daemon`,
//! written by `status::beat` and read by `purgewatch status` (an unprivileged reader of the
//! database). The value is JSON, so a field added later is read by an older `status` too.
//!
//! (The table's other keys: `instance` and `first_started:SITE` in [`super`], the alerts'
//! cursor beside the alerts.)

use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{cached, StoreError};

/// Stores `beat`, over the last one.
pub fn set_heartbeat(conn: &Connection, beat: &impl Serialize) -> Result<(), StoreError> {
    let json = serde_json::to_string(beat).unwrap_or_default();
    cached(
        conn,
        "INSERT INTO meta (key, value) VALUES ('daemon', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![json],
    )?;
    Ok(())
}

/// The last heartbeat stored; `None` when there is none, or it cannot be read as a `T`.
pub fn heartbeat<T: DeserializeOwned>(conn: &Connection) -> Result<Option<T>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'daemon'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_read_back_and_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = super::super::Store::open(&dir.path().join("pw.db")).expect("open");
        let c = store.lock();
        assert_eq!(heartbeat::<Vec<u32>>(&c).expect("read"), None);
        set_heartbeat(&c, &vec![1u32]).expect("write");
        set_heartbeat(&c, &vec![2u32]).expect("write");
        assert_eq!(heartbeat::<Vec<u32>>(&c).expect("read"), Some(vec![2]));
        // Not a `T`: as if there were none.
        assert_eq!(heartbeat::<String>(&c).expect("read"), None);
    }
}
