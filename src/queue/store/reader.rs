//! Reads: a small pool of read connections, and the queries behind the store's read
//! methods. Each runs on a tokio blocking thread (see `Store::read`); queries that read
//! more than one statement do so in one read transaction, so they see one commit.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, ToSql};

use super::rows::{self, int};
use super::{
    schema, Dispatchable, JobRecord, JobState, KeyRecord, PartRecord, StoreError, StoreStats,
    StoredResponse,
};

/// Idle read connections kept for reuse; more are opened when needed and closed after.
const MAX_IDLE: usize = 4;

/// Read connections to the database file.
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// The columns [`job_from_row`] reads, from `jobs j`.
const JOB_COLUMNS: &str = "j.id, j.owner, j.route, j.method, j.path, j.state, j.recipients,
    j.n_queued, j.n_in_flight, j.n_succeeded, j.n_failed, j.n_cancelled, j.attempts,
    j.n_uncertain, j.created_at, j.updated_at, j.skipped";

/// The columns [`part_from_row`] reads, from `parts`.
const PART_COLUMNS: &str = "seq, item_start, item_end, byte_start, byte_end, state, attempts,
    last_status, last_error, next_attempt_at, resp_status, resp_headers, resp_body";

/// The columns [`dispatchable_from_row`] reads, from `parts p JOIN jobs j`.
/// A part found `in_flight` was being sent when sluice stopped: its fate is unknown from
/// the start of that attempt (`sent_at`).
const DISPATCH_COLUMNS: &str = "j.id, p.seq, j.owner, j.api_key, j.route, j.method, j.path,
    j.headers, p.item_start, p.item_end, p.byte_start, p.byte_end, p.attempts,
    p.next_attempt_at, j.created_at,
    CASE WHEN p.state = 'in_flight' THEN COALESCE(p.reconcile_from, p.sent_at)
         ELSE p.reconcile_from END,
    p.blind_resends, p.last_error,
    j.n_queued + j.n_in_flight + j.n_succeeded + j.n_failed + j.n_cancelled + j.n_uncertain = 1,
    p.job_no, p.owner_no";

// === impl Readers ===

impl Readers {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The database file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens one connection now, so that a file readers cannot open fails at open.
    pub(super) fn warm(&self) -> rusqlite::Result<()> {
        let conn = schema::open_reader(&self.path)?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        Ok(())
    }

    /// Runs `work` on an idle connection, or a new one; keeps it for reuse afterwards.
    pub(super) fn run<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().map_err(|_| StoreError::Closed)?.pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => schema::open_reader(&self.path)?,
        };
        let result = work(&conn);
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        result
    }
}

// === the reads ===

pub(super) fn job(
    conn: &Connection,
    id: &str,
    owner: &str,
) -> Result<Option<JobRecord>, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let found = tx
        .prepare_cached(&format!(
            "SELECT j.no, {JOB_COLUMNS} FROM jobs j WHERE j.id = ?1 AND j.owner = ?2"
        ))?
        .query_row(params![id, owner], |row| {
            Ok((row.get::<_, i64>(0)?, job_from_row(row, 1)?))
        })
        .optional()?;
    let Some((no, mut job)) = found else {
        return Ok(None);
    };
    let mut parts = tx.prepare_cached(&format!(
        "SELECT {PART_COLUMNS} FROM parts WHERE job_no = ?1 ORDER BY item_start"
    ))?;
    job.parts = parts
        .query_map([no], part_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(job))
}

/// A page of the owner's jobs, each with its parts (read in one more query for the whole
/// page, in the same read transaction), so a listed job is the same as [`job`] shows it.
pub(super) fn list_jobs(
    conn: &Connection,
    owner: &str,
    state: Option<JobState>,
    limit: u32,
    before: Option<&(i64, String)>,
) -> Result<Vec<JobRecord>, StoreError> {
    let mut page = String::from("FROM jobs j WHERE j.owner = ?");
    let mut args: Vec<&dyn ToSql> = vec![&owner];
    if let Some(state) = &state {
        page.push_str(" AND j.state = ?");
        args.push(state);
    }
    if let Some((created_at, id)) = before {
        page.push_str(" AND (j.created_at, j.id) < (?, ?)");
        args.extend([created_at as &dyn ToSql, id]);
    }
    page.push_str(" ORDER BY j.created_at DESC, j.id DESC LIMIT ?");
    args.push(&limit);
    let tx = conn.unchecked_transaction()?;
    let mut jobs: Vec<(i64, JobRecord)> = tx
        .prepare_cached(&format!("SELECT j.no, {JOB_COLUMNS} {page}"))?
        .query_map(params_from_iter(&args), |row| {
            Ok((row.get(0)?, job_from_row(row, 1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let at: std::collections::HashMap<i64, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, (no, _))| (*no, i))
        .collect();
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {PART_COLUMNS}, job_no FROM parts
         WHERE job_no IN (SELECT j.no {page}) ORDER BY job_no, item_start"
    ))?;
    let mut found = stmt.query(params_from_iter(&args))?;
    while let Some(row) = found.next()? {
        let no: i64 = row.get(13)?;
        if let Some(&i) = at.get(&no) {
            jobs[i].1.parts.push(part_from_row(row)?);
        }
    }
    Ok(jobs.into_iter().map(|(_, job)| job).collect())
}

pub(super) fn unfinished(conn: &Connection) -> Result<Vec<Dispatchable>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DISPATCH_COLUMNS} FROM parts p JOIN jobs j ON j.no = p.job_no
         WHERE p.state IN ('queued', 'in_flight')
         ORDER BY j.created_at, j.no, p.item_start"
    ))?;
    let parts = stmt
        .query_map([], dispatchable_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(parts)
}

/// An owner's due parts (`next_attempt_at` unset or not after `now`) not taken by run
/// `run`, in the order they are due: at most `limit`, through the `parts_due` index.
pub(super) fn due(
    conn: &Connection,
    owner_no: i64,
    now: i64,
    run: i64,
    limit: u32,
) -> Result<Vec<Dispatchable>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DISPATCH_COLUMNS} FROM parts p JOIN jobs j ON j.no = p.job_no
         WHERE p.owner_no = ?1 AND p.state IN ('queued', 'in_flight')
           AND COALESCE(p.next_attempt_at, 0) <= ?2
           AND (p.claimed_by IS NULL OR p.claimed_by <> ?3)
         ORDER BY p.owner_no, COALESCE(p.next_attempt_at, 0), p.job_no, p.item_start
         LIMIT ?4"
    ))?;
    let parts = stmt
        .query_map(params![owner_no, now, run, limit], dispatchable_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(parts)
}

/// When the owner's next part not taken by run `run` is due (unix ms; 0: now), if any.
pub(super) fn next_due(
    conn: &Connection,
    owner_no: i64,
    run: i64,
) -> Result<Option<i64>, StoreError> {
    let due = conn
        .prepare_cached(
            "SELECT COALESCE(p.next_attempt_at, 0) FROM parts p
             WHERE p.owner_no = ?1 AND p.state IN ('queued', 'in_flight')
               AND (p.claimed_by IS NULL OR p.claimed_by <> ?2)
             ORDER BY p.owner_no, COALESCE(p.next_attempt_at, 0), p.job_no, p.item_start
             LIMIT 1",
        )?
        .query_row(params![owner_no, run], |row| row.get(0))
        .optional()?;
    Ok(due)
}

/// The owners with open parts: their numbers and keys (`KeyId::full`).
pub(super) fn open_owners(conn: &Connection) -> Result<Vec<(i64, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.no, o.key FROM owners o
         WHERE EXISTS (SELECT 1 FROM parts p WHERE p.owner_no = o.no
                       AND p.state IN ('queued', 'in_flight'))",
    )?;
    let owners = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(owners)
}

/// The number of the owner `key`, if it has one.
pub(super) fn owner_no(conn: &Connection, key: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT no FROM owners WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?)
}

/// Recipients and bytes in open parts: the back-pressure figures at start.
pub(super) fn backlog(conn: &Connection) -> Result<(u64, u64), StoreError> {
    let figures = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(item_end - item_start), 0), COALESCE(SUM(byte_end - byte_start), 0)
             FROM parts WHERE state IN ('queued', 'in_flight')",
        )?
        .query_row([], |row| Ok((rows::uint(row, 0)?, rows::uint(row, 1)?)))?;
    Ok(figures)
}

pub(super) fn dispatchable(
    conn: &Connection,
    job: &str,
    seqs: &[u32],
) -> Result<Vec<Dispatchable>, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {DISPATCH_COLUMNS} FROM parts p JOIN jobs j ON j.no = p.job_no
         WHERE j.id = ?1 AND p.seq = ?2 AND p.state IN ('queued', 'in_flight')"
    ))?;
    let mut out = Vec::with_capacity(seqs.len());
    for &seq in seqs {
        if let Some(part) = stmt
            .query_row(params![job, seq], dispatchable_from_row)
            .optional()?
        {
            out.push(part);
        }
    }
    Ok(out)
}

pub(super) fn keys(conn: &Connection) -> Result<Vec<KeyRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, cooling_until, max_allowed, available, updated_at, last_status,
             last_headers, last_body
         FROM key_state",
    )?;
    let keys = stmt
        .query_map([], key_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(keys)
}

pub(super) fn part_body(
    conn: &Connection,
    job: &str,
    bytes: Range<u64>,
) -> Result<Bytes, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let (no, array_start, array_end): (i64, Option<i64>, Option<i64>) = tx
        .prepare_cached("SELECT no, array_start, array_end FROM jobs WHERE id = ?1")?
        .query_row([job], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?
        .ok_or(StoreError::NotFound)?;
    let blob = tx.blob_open("main", "bodies", "body", no, true)?;
    let len = blob.len();
    let (Some(start), Some(end)) = (array_start, array_end) else {
        let mut out = vec![0; len];
        blob.read_at_exact(&mut out, 0)?;
        return Ok(Bytes::from(out));
    };
    let offset = |v: i64| {
        usize::try_from(v).map_err(|_| StoreError::Invalid(format!("offset {v} out of range")))
    };
    let array = offset(start)?..offset(end)?;
    let elements = offset(int(bytes.start)?)?..offset(int(bytes.end)?)?;
    if !(array.start < elements.start
        && elements.start <= elements.end
        && elements.end < array.end
        && array.end <= len)
    {
        return Err(StoreError::Invalid(format!(
            "bytes {elements:?} are not inside the recipients array {array:?} of a {len}-byte body"
        )));
    }
    // head | '[' | elements | ']' | tail, in one allocation of the exact size.
    let middle = array.start + 1..array.start + 1 + elements.len();
    let mut out = vec![0; middle.end + 1 + (len - array.end)];
    blob.read_at_exact(&mut out[..array.start], 0)?;
    out[array.start] = b'[';
    blob.read_at_exact(&mut out[middle.clone()], elements.start)?;
    out[middle.end] = b']';
    blob.read_at_exact(&mut out[middle.end + 1..], array.end)?;
    Ok(Bytes::from(out))
}

pub(super) fn stats(conn: &Connection, path: &Path, now: i64) -> Result<StoreStats, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let (jobs, parts) = super::housekeeping::counts(&tx)?;
    let (recipients_queued, oldest): (u64, Option<i64>) = tx
        .prepare_cached(
            "SELECT (SELECT COALESCE(SUM(item_end - item_start), 0) FROM parts
                     WHERE state IN ('queued', 'in_flight')),
                    (SELECT MIN(created_at) FROM jobs WHERE state IN ('queued', 'in_progress'))",
        )?
        .query_row([], |row| Ok((rows::uint(row, 0)?, row.get(1)?)))?;
    let file_len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    Ok(StoreStats {
        jobs,
        parts,
        recipients_queued,
        oldest_queued_secs: oldest.map(|t| now.saturating_sub(t).max(0) as f64 / 1000.0),
        db_bytes: file_len(path) + file_len(Path::new(&wal)),
    })
}

// === rows ===

fn job_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: row.get(at)?,
        owner: row.get(at + 1)?,
        route: row.get(at + 2)?,
        method: row.get(at + 3)?,
        path: row.get(at + 4)?,
        state: row.get(at + 5)?,
        recipients: rows::uint(row, at + 6)?,
        counts: rows::counts(row, at + 7)?,
        created_at: row.get(at + 14)?,
        updated_at: row.get(at + 15)?,
        skipped: row.get(at + 16)?,
        parts: Vec::new(),
    })
}

fn part_from_row(row: &Row<'_>) -> rusqlite::Result<PartRecord> {
    let response = match row.get::<_, Option<u16>>(10)? {
        Some(status) => Some(StoredResponse {
            status,
            headers: rows::headers(row, 11)?,
            body: row.get::<_, Option<Vec<u8>>>(12)?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(PartRecord {
        seq: row.get(0)?,
        items: rows::range(row, 1)?,
        bytes: rows::range(row, 3)?,
        state: row.get(5)?,
        attempts: row.get(6)?,
        last_status: row.get(7)?,
        last_error: row.get(8)?,
        next_attempt_at: row.get(9)?,
        response,
    })
}

fn dispatchable_from_row(row: &Row<'_>) -> rusqlite::Result<Dispatchable> {
    Ok(Dispatchable {
        job_id: row.get(0)?,
        seq: row.get(1)?,
        owner: row.get(2)?,
        api_key: row.get(3)?,
        route: row.get(4)?,
        method: row.get(5)?,
        path: row.get(6)?,
        headers: rows::headers(row, 7)?,
        items: rows::range(row, 8)?,
        bytes: rows::range(row, 10)?,
        attempts: row.get(12)?,
        next_attempt_at: row.get(13)?,
        created_at: row.get(14)?,
        reconcile_from: row.get(15)?,
        blind_resends: row.get(16)?,
        last_error: row.get(17)?,
        sole: row.get(18)?,
        job_no: row.get(19)?,
        owner_no: row.get(20)?,
    })
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let opt = |idx| -> rusqlite::Result<Option<u64>> {
        match row.get::<_, Option<i64>>(idx)? {
            Some(_) => rows::uint(row, idx).map(Some),
            None => Ok(None),
        }
    };
    let last_429 = match row.get::<_, Option<u16>>(5)? {
        Some(status) => Some(StoredResponse {
            status,
            headers: rows::headers(row, 6)?,
            body: row.get::<_, Option<Vec<u8>>>(7)?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(KeyRecord {
        key: row.get(0)?,
        cooling_until: row.get(1)?,
        max_allowed: opt(2)?,
        available: opt(3)?,
        updated_at: row.get(4)?,
        last_429,
    })
}
