//! Keeping the store's figures and size in hand: the `counters` table that metrics read
//! instead of scanning, and the purge of finished jobs after their retention.
//!
//! Every write that moves parts between states goes through `changes::save_counts`, which
//! calls [`moved`] with the job's counts before and after; inserts call [`added`] and the
//! purge [`removed`]. All of it runs in the write's own savepoint, so the counters can
//! never disagree with the rows (the store tests check that after every change).

use rusqlite::{params, Connection};

use super::rows::{self, int};
use super::{JobState, PartCounts, PartState, StoreError};

/// The states of a finished job, which the purge may delete.
pub(super) const FINAL: &str =
    "'succeeded', 'partially_failed', 'failed', 'cancelled', 'uncertain'";

/// Adds `delta` to the count of `kind` (`jobs` or `parts`) in `state`.
fn bump(conn: &Connection, kind: &str, state: &str, delta: i64) -> Result<(), StoreError> {
    if delta == 0 {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO counters (kind, state, n) VALUES (?1, ?2, ?3)
         ON CONFLICT (kind, state) DO UPDATE SET n = n + ?3",
    )?
    .execute(params![kind, state, delta])?;
    Ok(())
}

/// The part counts of `c` by state.
fn by_state(c: &PartCounts) -> [(PartState, u64); 6] {
    [
        (PartState::Queued, c.queued),
        (PartState::InFlight, c.in_flight),
        (PartState::Succeeded, c.succeeded),
        (PartState::Failed, c.failed),
        (PartState::Cancelled, c.cancelled),
        (PartState::Uncertain, c.uncertain),
    ]
}

/// A new job in `state` with `parts` queued parts.
pub(super) fn added(conn: &Connection, state: JobState, parts: u64) -> Result<(), StoreError> {
    bump(conn, "jobs", state.as_str(), 1)?;
    bump(conn, "parts", PartState::Queued.as_str(), int(parts)?)
}

/// A job's parts went from `before` to `after`, the job from `from` to `to`.
pub(super) fn moved(
    conn: &Connection,
    before: &PartCounts,
    after: &PartCounts,
    from: JobState,
    to: JobState,
) -> Result<(), StoreError> {
    for (kind, state, delta) in deltas(before, after, from, to)? {
        bump(conn, kind, state, delta)?;
    }
    Ok(())
}

/// How the counters move when a job's parts go from `before` to `after` and the job from
/// `from` to `to`: `(kind, state, delta)`, zero deltas left out. Pure, for every backend.
pub(super) fn deltas(
    before: &PartCounts,
    after: &PartCounts,
    from: JobState,
    to: JobState,
) -> Result<Vec<(&'static str, &'static str, i64)>, StoreError> {
    let mut out = Vec::new();
    for ((state, was), (_, is)) in by_state(before).into_iter().zip(by_state(after)) {
        let delta = int(is)? - int(was)?;
        if delta != 0 {
            out.push(("parts", state.as_str(), delta));
        }
    }
    if from != to {
        out.push(("jobs", from.as_str(), -1));
        out.push(("jobs", to.as_str(), 1));
    }
    Ok(out)
}

/// The counters of a job's parts by state, as `(state, count)` (for a deleted job's
/// counts to be taken away, by any backend).
pub(super) fn part_counts(c: &PartCounts) -> [(PartState, u64); 6] {
    by_state(c)
}

/// A job in `state` with `counts` was deleted.
fn removed(conn: &Connection, state: JobState, counts: &PartCounts) -> Result<(), StoreError> {
    bump(conn, "jobs", state.as_str(), -1)?;
    for (state, n) in by_state(counts) {
        bump(conn, "parts", state.as_str(), -int(n)?)?;
    }
    Ok(())
}

/// Whether a job in `state` is finished.
pub(super) fn is_final(state: JobState) -> bool {
    !matches!(state, JobState::Queued | JobState::InProgress)
}

/// Deletes at most `limit` finished jobs last changed before `before` (unix ms), oldest
/// first, with their parts, bodies and idempotency keys. Returns how many.
pub(super) fn purge_finished(
    conn: &Connection,
    before: i64,
    limit: u32,
) -> Result<usize, StoreError> {
    let mut found = conn.prepare_cached(&format!(
        "SELECT no, id, state, n_queued, n_in_flight, n_succeeded, n_failed, n_cancelled,
             attempts, n_uncertain
         FROM jobs WHERE state IN ({FINAL}) AND updated_at < ?1
         ORDER BY updated_at LIMIT ?2"
    ))?;
    let jobs: Vec<(i64, String, JobState, PartCounts)> = found
        .query_map(params![before, limit], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, rows::counts(row, 3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (no, id, state, counts) in &jobs {
        conn.prepare_cached("DELETE FROM parts WHERE job_no = ?1")?
            .execute([no])?;
        conn.prepare_cached("DELETE FROM bodies WHERE job_no = ?1")?
            .execute([no])?;
        conn.prepare_cached("DELETE FROM idempotency WHERE job_id = ?1")?
            .execute([id])?;
        conn.prepare_cached("DELETE FROM jobs WHERE no = ?1")?
            .execute([no])?;
        removed(conn, *state, counts)?;
    }
    Ok(jobs.len())
}

/// Jobs and parts by state (every state listed, 0 where none).
type ByState = (Vec<(JobState, u64)>, Vec<(PartState, u64)>);

/// Jobs and parts by state, from the counters.
pub(super) fn counts(conn: &Connection) -> Result<ByState, StoreError> {
    let mut jobs: Vec<(JobState, u64)> = JobState::ALL.iter().map(|&s| (s, 0)).collect();
    let mut parts: Vec<(PartState, u64)> = PartState::ALL.iter().map(|&s| (s, 0)).collect();
    let mut stmt = conn.prepare_cached("SELECT kind, state, n FROM counters")?;
    let mut found = stmt.query([])?;
    while let Some(row) = found.next()? {
        let (kind, state): (String, String) = (row.get(0)?, row.get(1)?);
        let n = rows::uint(row, 2)?;
        if kind == "jobs" {
            if let Some(slot) = jobs.iter_mut().find(|(s, _)| s.as_str() == state) {
                slot.1 = n;
            }
        } else if let Some(slot) = parts.iter_mut().find(|(s, _)| s.as_str() == state) {
            slot.1 = n;
        }
    }
    Ok((jobs, parts))
}
