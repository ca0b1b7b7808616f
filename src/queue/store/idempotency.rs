//! The `idempotency` table: which job a client's `Idempotency-Key` made, per owner.
//!
//! A mapping is claimed inside the insert of its job ([`claim`], called by
//! `changes::insert_job` in the job's savepoint), read by the accept path before it builds
//! a job ([`lookup`]), and deleted once expired ([`purge`], a bounded batch at a time,
//! oldest first through the `created_at` index). Expiry is the caller's: each call says
//! before which time a mapping no longer counts.

use rusqlite::{params, Connection, OptionalExtension};

use super::{IdempotencyRecord, NewIdempotency, StoreError};

/// Claims `new.key` for job `job_id` of `owner`. When a mapping made since
/// `new.not_before` already holds the key, nothing is written and it is returned; an
/// expired one is replaced.
pub(super) fn claim(
    conn: &Connection,
    owner: &str,
    new: &NewIdempotency,
    job_id: &str,
    now: i64,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    if let Some(live) = lookup(conn, owner, &new.key, new.not_before)? {
        return Ok(Some(live));
    }
    conn.prepare_cached(
        "INSERT INTO idempotency (owner, key, job_id, body_hash, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (owner, key) DO UPDATE SET job_id = ?3, body_hash = ?4, created_at = ?5",
    )?
    .execute(params![owner, new.key, job_id, new.body_hash, now])?;
    Ok(None)
}

/// The mapping of `owner`'s `key`, unless it was made before `not_before`.
pub(super) fn lookup(
    conn: &Connection,
    owner: &str,
    key: &str,
    not_before: i64,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let found = conn
        .prepare_cached(
            "SELECT job_id, body_hash, created_at FROM idempotency
             WHERE owner = ?1 AND key = ?2 AND created_at >= ?3",
        )?
        .query_row(params![owner, key, not_before], |row| {
            Ok(IdempotencyRecord {
                job_id: row.get(0)?,
                body_hash: row.get(1)?,
                created_at: row.get(2)?,
            })
        })
        .optional()?;
    Ok(found)
}

/// Deletes at most `limit` mappings made before `before`, oldest first.
pub(super) fn purge(conn: &Connection, before: i64, limit: u32) -> Result<usize, StoreError> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM idempotency WHERE rowid IN (
                 SELECT rowid FROM idempotency WHERE created_at < ?1
                 ORDER BY created_at LIMIT ?2)",
        )?
        .execute(params![before, limit])?;
    Ok(deleted)
}
