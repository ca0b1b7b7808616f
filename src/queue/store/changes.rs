//! Every change the store makes, each run by the writer thread inside its own savepoint.
//!
//! A change reads the job row (its `no` and part counts) and the part, checks the part's
//! state, writes the part, and writes the job's new counts and derived state with
//! [`save_counts`]. Counts move with the parts in the same savepoint, so they never
//! disagree with the `parts` table.

use rusqlite::{params, Connection, OptionalExtension};

use super::housekeeping;
use super::rows::{self, int};
use super::{
    derive_state, idempotency, Dispatchable, Inserted, JobState, KeyRecord, NewJob, NewPart,
    PartCounts, PartState, Retry, StoreError, StoredResponse,
};

/// The job row, as the changes need it.
struct JobRow {
    no: i64,
    counts: PartCounts,
    /// The counts as loaded, to move the store's counters by the difference.
    before: PartCounts,
    state: JobState,
    bulk: bool,
    cancelled: bool,
}

/// A part's ranges, for [`check_split`].
struct PartRange<'a> {
    items: &'a std::ops::Range<u64>,
    bytes: &'a std::ops::Range<u64>,
}

/// The part row, as the changes need it.
struct PartRow {
    owner_no: i64,
    items: std::ops::Range<u64>,
    bytes: std::ops::Range<u64>,
    state: PartState,
    attempts: u32,
    last_status: Option<u16>,
    last_error: Option<String>,
}

// === the changes ===

/// [`super::Store::insert_job`]: checks the job's shape, claims its idempotency key (or
/// names the job that holds it, writing nothing), then writes the job row, the body and
/// one `Queued` row per part (seqs 0, 1, ...).
pub(super) fn insert_job(conn: &Connection, job: &NewJob) -> Result<Inserted, StoreError> {
    let recipients = check_new_job(job)?;
    if let Some(new) = &job.idempotency {
        if let Some(existing) = idempotency::claim(conn, &job.owner, new, &job.id, job.now_ms)? {
            return Ok(Inserted::Existing(existing));
        }
    }
    let counts = PartCounts {
        queued: job.parts.len() as u64,
        ..PartCounts::default()
    };
    let array = match &job.array {
        Some(a) => (Some(int(a.start)?), Some(int(a.end)?)),
        None => (None, None),
    };
    conn.prepare_cached(
        "INSERT INTO jobs (id, owner, route, method, path, state, recipients,
             n_queued, n_in_flight, n_succeeded, n_failed, n_cancelled, attempts,
             created_at, updated_at, array_start, array_end, skipped, headers, api_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, 0, 0, 0, ?9, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        job.id,
        job.owner,
        job.route,
        job.method,
        job.path,
        derive_state(&counts),
        int(recipients)?,
        int(counts.queued)?,
        job.now_ms,
        array.0,
        array.1,
        job.skipped,
        rows::encode_headers(&job.headers)?,
        job.api_key,
    ])?;
    let no = conn.last_insert_rowid();
    conn.prepare_cached("INSERT INTO bodies (job_no, body) VALUES (?1, ?2)")?
        .execute(params![no, &job.body[..]])?;
    let owner_no = owner_no(conn, &job.owner)?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO parts (job_no, seq, item_start, item_end, byte_start, byte_end, state,
             attempts, updated_at, owner_no)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', 0, ?7, ?8)",
    )?;
    for (seq, part) in (0u32..).zip(&job.parts) {
        insert.execute(params![
            no,
            seq,
            int(part.items.start)?,
            int(part.items.end)?,
            int(part.bytes.start)?,
            int(part.bytes.end)?,
            job.now_ms,
            owner_no,
        ])?;
    }
    housekeeping::added(conn, derive_state(&counts), counts.queued)?;
    Ok(Inserted::New)
}

/// [`super::Store::mark_in_flight`].
pub(super) fn mark_in_flight(
    conn: &Connection,
    id: &str,
    seq: u32,
    now: i64,
) -> Result<(), StoreError> {
    let mut job = load_job(conn, id, None)?.ok_or(StoreError::NotFound)?;
    let part = load_part(conn, job.no, seq)?;
    if !part.state.is_open() {
        return Err(StoreError::WrongState(part.state));
    }
    conn.prepare_cached(
        "UPDATE parts SET state = 'in_flight', attempts = attempts + 1, next_attempt_at = NULL,
             updated_at = ?3, sent_at = ?3
         WHERE job_no = ?1 AND seq = ?2",
    )?
    .execute(params![job.no, seq, now])?;
    job.counts.shift(part.state, PartState::InFlight, 1);
    job.counts.attempts += 1;
    save_counts(conn, &job, now)
}

/// [`super::Store::schedule_retry`].
pub(super) fn schedule_retry(
    conn: &Connection,
    id: &str,
    seq: u32,
    retry: Retry,
    now: i64,
) -> Result<PartState, StoreError> {
    let mut job = load_job(conn, id, None)?.ok_or(StoreError::NotFound)?;
    let part = load_part(conn, job.no, seq)?;
    if part.state != PartState::InFlight {
        return Err(StoreError::WrongState(part.state));
    }
    let to = if job.cancelled {
        PartState::Cancelled
    } else {
        PartState::Queued
    };
    let attempts = if retry.count_attempt {
        part.attempts
    } else {
        part.attempts.saturating_sub(1)
    };
    conn.prepare_cached(
        "UPDATE parts SET state = ?3, attempts = ?4, last_status = ?5, last_error = ?6,
             next_attempt_at = ?7, updated_at = ?8, reconcile_from = ?9, blind_resends = ?10,
             claimed_by = NULL
         WHERE job_no = ?1 AND seq = ?2",
    )?
    .execute(params![
        job.no,
        seq,
        to,
        attempts,
        retry.last_status,
        retry.last_error,
        (to == PartState::Queued).then_some(retry.next_attempt_at),
        now,
        retry.reconcile_from,
        retry.blind_resends,
    ])?;
    job.counts.shift(part.state, to, 1);
    job.counts.attempts = job
        .counts
        .attempts
        .saturating_sub(u64::from(part.attempts - attempts));
    save_counts(conn, &job, now)?;
    Ok(to)
}

/// [`super::Store::postpone`].
pub(super) fn postpone(
    conn: &Connection,
    id: &str,
    seq: u32,
    next_attempt_at: i64,
    reconcile_from: Option<i64>,
    blind_resends: u32,
    now: i64,
) -> Result<PartState, StoreError> {
    let mut job = load_job(conn, id, None)?.ok_or(StoreError::NotFound)?;
    let part = load_part(conn, job.no, seq)?;
    if !part.state.is_open() {
        return Err(StoreError::WrongState(part.state));
    }
    let to = if job.cancelled {
        PartState::Cancelled
    } else {
        PartState::Queued
    };
    conn.prepare_cached(
        "UPDATE parts SET state = ?3, next_attempt_at = ?4, updated_at = ?5,
             reconcile_from = ?6, blind_resends = ?7, claimed_by = NULL
         WHERE job_no = ?1 AND seq = ?2",
    )?
    .execute(params![
        job.no,
        seq,
        to,
        (to == PartState::Queued).then_some(next_attempt_at),
        now,
        reconcile_from,
        blind_resends,
    ])?;
    job.counts.shift(part.state, to, 1);
    save_counts(conn, &job, now)?;
    Ok(to)
}

/// [`super::Store::note_reconcile`].
pub(super) fn note_reconcile(
    conn: &Connection,
    id: &str,
    seq: u32,
    reconcile_from: Option<i64>,
    blind_resends: u32,
) -> Result<(), StoreError> {
    let job = load_job(conn, id, None)?.ok_or(StoreError::NotFound)?;
    let part = load_part(conn, job.no, seq)?;
    if !part.state.is_open() {
        return Err(StoreError::WrongState(part.state));
    }
    conn.prepare_cached(
        "UPDATE parts SET reconcile_from = ?3, blind_resends = ?4 WHERE job_no = ?1 AND seq = ?2",
    )?
    .execute(params![job.no, seq, reconcile_from, blind_resends])?;
    Ok(())
}

/// [`super::Store::finish_part`]. `last_status` becomes the response's status, if any.
pub(super) fn finish_part(
    conn: &Connection,
    id: &str,
    seq: u32,
    state: PartState,
    response: Option<StoredResponse>,
    last_error: Option<String>,
    now: i64,
) -> Result<(), StoreError> {
    if !matches!(
        state,
        PartState::Succeeded | PartState::Failed | PartState::Uncertain
    ) {
        return Err(StoreError::Invalid(format!(
            "a part finishes as succeeded, failed or uncertain, not {state:?}"
        )));
    }
    let mut job = load_job(conn, id, None)?.ok_or(StoreError::NotFound)?;
    let part = load_part(conn, job.no, seq)?;
    if !part.state.is_open() {
        return Err(StoreError::WrongState(part.state));
    }
    let (status, headers, body) = match &response {
        Some(r) => (
            Some(r.status),
            Some(rows::encode_headers(&r.headers)?),
            Some(&r.body[..]),
        ),
        None => (None, None, None),
    };
    conn.prepare_cached(
        "UPDATE parts SET state = ?3, last_status = COALESCE(?4, last_status),
             last_error = ?5, next_attempt_at = NULL, updated_at = ?6,
             resp_status = ?4, resp_headers = ?7, resp_body = ?8, reconcile_from = NULL
         WHERE job_no = ?1 AND seq = ?2",
    )?
    .execute(params![
        job.no, seq, state, status, last_error, now, headers, body
    ])?;
    job.counts.shift(part.state, state, 1);
    save_counts(conn, &job, now)
}

/// [`super::Store::split_part`]. New seqs follow the job's highest seq, so a seq is never
/// reused; the old row is deleted.
pub(super) fn split_part(
    conn: &Connection,
    id: &str,
    seq: u32,
    into: &[NewPart],
    now: i64,
) -> Result<Vec<u32>, StoreError> {
    let mut job = load_job(conn, id, None)?.ok_or(StoreError::NotFound)?;
    if !job.bulk {
        return Err(StoreError::Invalid(
            "a job without a recipients array cannot be split".into(),
        ));
    }
    let part = load_part(conn, job.no, seq)?;
    if !part.state.is_open() {
        return Err(StoreError::WrongState(part.state));
    }
    check_split(&part.items, &part.bytes, into)?;
    let max: u32 = conn
        .prepare_cached("SELECT MAX(seq) FROM parts WHERE job_no = ?1")?
        .query_row([job.no], |row| row.get(0))?;
    let count =
        u32::try_from(into.len()).map_err(|_| StoreError::Invalid("too many pieces".into()))?;
    let first = max
        .checked_add(1)
        .filter(|f| f.checked_add(count).is_some())
        .ok_or_else(|| StoreError::Invalid("the job has run out of part numbers".into()))?;
    conn.prepare_cached("DELETE FROM parts WHERE job_no = ?1 AND seq = ?2")?
        .execute(params![job.no, seq])?;
    let state = if job.cancelled {
        PartState::Cancelled
    } else {
        PartState::Queued
    };
    let mut insert = conn.prepare_cached(
        "INSERT INTO parts (job_no, seq, item_start, item_end, byte_start, byte_end, state,
             attempts, last_status, last_error, updated_at, owner_no)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    let seqs: Vec<u32> = (first..first + count).collect();
    for (&new, piece) in seqs.iter().zip(into) {
        insert.execute(params![
            job.no,
            new,
            int(piece.items.start)?,
            int(piece.items.end)?,
            int(piece.bytes.start)?,
            int(piece.bytes.end)?,
            state,
            part.attempts,
            part.last_status,
            part.last_error,
            now,
            part.owner_no,
        ])?;
    }
    let n = u64::from(count);
    let from = job.counts.get_mut(part.state);
    *from = from.saturating_sub(1);
    *job.counts.get_mut(state) += n;
    job.counts.attempts += (n - 1) * u64::from(part.attempts);
    save_counts(conn, &job, now)?;
    Ok(seqs)
}

/// [`super::Store::cancel_job`]. Also marks the job cancelled (`cancelled_at`), which
/// [`schedule_retry`] and [`split_part`] honour for parts that were in flight.
pub(super) fn cancel_job(
    conn: &Connection,
    id: &str,
    owner: &str,
    now: i64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let Some(mut job) = load_job(conn, id, Some(owner))? else {
        return Ok(None);
    };
    let (parts, recipients, bytes): (i64, i64, i64) = conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(item_end - item_start), 0),
                 COALESCE(SUM(byte_end - byte_start), 0) FROM parts
             WHERE job_no = ?1 AND state = 'queued'",
        )?
        .query_row([job.no], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
    conn.prepare_cached(
        "UPDATE parts SET state = 'cancelled', next_attempt_at = NULL, updated_at = ?2
         WHERE job_no = ?1 AND state = 'queued'",
    )?
    .execute(params![job.no, now])?;
    conn.prepare_cached("UPDATE jobs SET cancelled_at = ?2 WHERE no = ?1")?
        .execute(params![job.no, now])?;
    job.counts.shift(
        PartState::Queued,
        PartState::Cancelled,
        parts.unsigned_abs(),
    );
    save_counts(conn, &job, now)?;
    Ok(Some((recipients.unsigned_abs(), bytes.unsigned_abs())))
}

/// [`super::Store::retry_failed`].
pub(super) fn retry_failed(
    conn: &Connection,
    id: &str,
    owner: &str,
    api_key: Option<Vec<u8>>,
    now: i64,
) -> Result<Option<Vec<u32>>, StoreError> {
    let Some(mut job) = load_job(conn, id, Some(owner))? else {
        return Ok(None);
    };
    // The key was cleared when the job finished; the owner's request brings it back.
    conn.prepare_cached("UPDATE jobs SET api_key = ?2 WHERE no = ?1")?
        .execute(params![job.no, api_key])?;
    let mut seqs = Vec::new();
    let mut attempts = 0u64;
    {
        let mut failed = conn.prepare_cached(
            "SELECT seq, attempts FROM parts WHERE job_no = ?1 AND state = 'failed' ORDER BY seq",
        )?;
        let mut rows = failed.query([job.no])?;
        while let Some(row) = rows.next()? {
            seqs.push(row.get::<_, u32>(0)?);
            attempts += u64::from(row.get::<_, u32>(1)?);
        }
    }
    conn.prepare_cached(
        "UPDATE parts SET state = 'queued', attempts = 0, next_attempt_at = NULL, updated_at = ?2,
             resp_status = NULL, resp_headers = NULL, resp_body = NULL, claimed_by = NULL
         WHERE job_no = ?1 AND state = 'failed'",
    )?
    .execute(params![job.no, now])?;
    conn.prepare_cached("UPDATE jobs SET cancelled_at = NULL WHERE no = ?1")?
        .execute([job.no])?;
    job.counts
        .shift(PartState::Failed, PartState::Queued, seqs.len() as u64);
    job.counts.attempts = job.counts.attempts.saturating_sub(attempts);
    save_counts(conn, &job, now)?;
    Ok(Some(seqs))
}

/// [`super::Store::save_key`].
pub(super) fn save_key(conn: &Connection, key: &KeyRecord) -> Result<(), StoreError> {
    let (status, headers, body) = match &key.last_429 {
        Some(r) => (
            Some(r.status),
            Some(rows::encode_headers(&r.headers)?),
            Some(&r.body[..]),
        ),
        None => (None, None, None),
    };
    let opt = |v: Option<u64>| v.map(int).transpose();
    conn.prepare_cached(
        "INSERT INTO key_state (key, cooling_until, max_allowed, available, updated_at,
             last_status, last_headers, last_body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (key) DO UPDATE SET cooling_until = ?2, max_allowed = ?3, available = ?4,
             updated_at = ?5, last_status = ?6, last_headers = ?7, last_body = ?8",
    )?
    .execute(params![
        key.key,
        key.cooling_until,
        opt(key.max_allowed)?,
        opt(key.available)?,
        key.updated_at,
        status,
        headers,
        body,
    ])?;
    Ok(())
}

/// [`super::Store::claim`]: an owner's due parts not yet taken by this run, oldest due
/// first, marked taken.
pub(super) fn claim(
    conn: &Connection,
    owner_no: i64,
    now: i64,
    run: i64,
    limit: u32,
) -> Result<Vec<Dispatchable>, StoreError> {
    let parts = super::reader::due(conn, owner_no, now, run, limit)?;
    let mut mark =
        conn.prepare_cached("UPDATE parts SET claimed_by = ?3 WHERE job_no = ?1 AND seq = ?2")?;
    for part in &parts {
        mark.execute(params![part.job_no, part.seq, run])?;
    }
    Ok(parts)
}

/// The number of `owner` in `owners`, made if it has none.
fn owner_no(conn: &Connection, owner: &str) -> Result<i64, StoreError> {
    conn.prepare_cached("INSERT OR IGNORE INTO owners (key) VALUES (?1)")?
        .execute([owner])?;
    let no = conn
        .prepare_cached("SELECT no FROM owners WHERE key = ?1")?
        .query_row([owner], |row| row.get(0))?;
    Ok(no)
}

// === helpers ===

/// The job with this id (and this owner, if given), or `None`.
fn load_job(
    conn: &Connection,
    id: &str,
    owner: Option<&str>,
) -> Result<Option<JobRow>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT no, owner, state, n_queued, n_in_flight, n_succeeded, n_failed, n_cancelled,
                 attempts, n_uncertain, array_start IS NOT NULL, cancelled_at IS NOT NULL
             FROM jobs WHERE id = ?1",
        )?
        .query_row([id], |row| {
            Ok((
                row.get::<_, String>(1)?,
                JobRow {
                    no: row.get(0)?,
                    state: row.get(2)?,
                    counts: rows::counts(row, 3)?,
                    before: rows::counts(row, 3)?,
                    bulk: row.get(10)?,
                    cancelled: row.get(11)?,
                },
            ))
        })
        .optional()?;
    Ok(row
        .filter(|(o, _)| owner.is_none_or(|owner| owner == o))
        .map(|(_, job)| job))
}

/// Part `seq` of job `no`, or [`StoreError::NotFound`].
fn load_part(conn: &Connection, no: i64, seq: u32) -> Result<PartRow, StoreError> {
    conn.prepare_cached(
        "SELECT item_start, item_end, byte_start, byte_end, state, attempts, last_status, last_error,
             owner_no
         FROM parts WHERE job_no = ?1 AND seq = ?2",
    )?
    .query_row(params![no, seq], |row| {
        Ok(PartRow {
            owner_no: row.get(8)?,
            items: rows::range(row, 0)?,
            bytes: rows::range(row, 2)?,
            state: row.get(4)?,
            attempts: row.get(5)?,
            last_status: row.get(6)?,
            last_error: row.get(7)?,
        })
    })
    .optional()?
    .ok_or(StoreError::NotFound)
}

/// Writes the job's counts, its state derived from them (if it changed) and `updated_at`.
fn save_counts(conn: &Connection, job: &JobRow, now: i64) -> Result<(), StoreError> {
    let c = &job.counts;
    let state = derive_state(c);
    if state != job.state {
        tracing::debug!(
            no = job.no,
            from = job.state.as_str(),
            to = state.as_str(),
            "job state"
        );
    }
    conn.prepare_cached(
        "UPDATE jobs SET n_queued = ?2, n_in_flight = ?3, n_succeeded = ?4, n_failed = ?5,
             n_cancelled = ?6, attempts = ?7, state = ?8, updated_at = ?9, n_uncertain = ?10
         WHERE no = ?1",
    )?
    .execute(params![
        job.no,
        int(c.queued)?,
        int(c.in_flight)?,
        int(c.succeeded)?,
        int(c.failed)?,
        int(c.cancelled)?,
        int(c.attempts)?,
        state,
        now,
        int(c.uncertain)?,
    ])?;
    housekeeping::moved(conn, &job.before, c, job.state, state)?;
    // A finished job no longer needs its client's key (a replay brings it again).
    if housekeeping::is_final(state) && !housekeeping::is_final(job.state) {
        conn.prepare_cached("UPDATE jobs SET api_key = NULL WHERE no = ?1")?
            .execute([job.no])?;
    }
    Ok(())
}

/// Checks a new job's shape; returns its number of recipients.
pub(super) fn check_new_job(job: &NewJob) -> Result<u64, StoreError> {
    let invalid = |why: String| Err(StoreError::Invalid(why));
    let len = job.body.len() as u64;
    if job.id.is_empty() {
        return invalid("the job has no id".into());
    }
    if job.parts.is_empty() {
        return invalid("the job has no parts".into());
    }
    let inside = match &job.array {
        Some(a) => {
            let brackets = a.start < a.end
                && a.end <= len
                && job.body.get(a.start as usize) == Some(&b'[')
                && job.body.get(a.end as usize - 1) == Some(&b']');
            if !brackets {
                return invalid(format!("{a:?} is not a JSON array in the body"));
            }
            a.start + 1..a.end - 1
        }
        None if job.parts.len() == 1 && job.parts[0].bytes == (0..len) => 0..len,
        None => return invalid("a single send has one part, of the whole body".into()),
    };
    let mut recipients = 0;
    let (mut items_end, mut bytes_end) = (0, inside.start);
    for (i, part) in job.parts.iter().enumerate() {
        let (items, bytes) = (&part.items, &part.bytes);
        if items.is_empty() || (i > 0 && items.start < items_end) {
            return invalid(format!(
                "part {i}'s items {items:?} are empty or overlap the part before"
            ));
        }
        let empty = bytes.start > bytes.end || (job.array.is_some() && bytes.is_empty());
        if empty || bytes.start < bytes_end || bytes.end > inside.end {
            return invalid(format!(
                "part {i}'s bytes {bytes:?} are empty, out of order or outside {inside:?}"
            ));
        }
        (items_end, bytes_end) = (items.end, bytes.end);
        recipients += items.end - items.start;
    }
    Ok(recipients)
}

/// Checks that `into` covers a part's `items` exactly, in order, each piece non-empty,
/// with bytes in order within the part's `bytes`.
pub(super) fn check_split(
    items: &std::ops::Range<u64>,
    bytes: &std::ops::Range<u64>,
    into: &[NewPart],
) -> Result<(), StoreError> {
    let part = PartRange { items, bytes };
    let (mut item, mut byte) = (part.items.start, part.bytes.start);
    for (i, piece) in into.iter().enumerate() {
        if piece.items.start != item || piece.items.is_empty() {
            return Err(StoreError::Invalid(format!(
                "piece {i} has items {:?}; expected a non-empty range from {item}",
                piece.items
            )));
        }
        if piece.bytes.start < byte || piece.bytes.is_empty() || piece.bytes.end > part.bytes.end {
            return Err(StoreError::Invalid(format!(
                "piece {i}'s bytes {:?} are empty, out of order or outside the part's {:?}",
                piece.bytes, part.bytes
            )));
        }
        (item, byte) = (piece.items.end, piece.bytes.end);
    }
    if item != part.items.end {
        return Err(StoreError::Invalid(format!(
            "the pieces cover items {:?}..{item}, not the part's {:?}",
            part.items.start, part.items
        )));
    }
    Ok(())
}
