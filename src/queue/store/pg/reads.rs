//! The PostgreSQL store's reads, each on a pooled connection: jobs for the jobs API, what
//! is due for the scheduler, a part's body, figures for metrics.

use std::ops::Range;

use bytes::Bytes;
use tokio_postgres::Row;

use super::{pg_error, Postgres};
use crate::queue::store::rows::decode_headers;
use crate::queue::store::{
    Dispatchable, IdempotencyRecord, JobRecord, JobState, KeyRecord, PartCounts, PartRecord,
    PartState, StoreError, StoreStats, StoredResponse,
};

/// The columns [`dispatchable`] reads, from `parts p JOIN jobs j`.
pub(super) const DISPATCH: &str = "j.id, p.seq, j.owner, j.api_key, j.route, j.method, j.path,
    j.headers, p.item_start, p.item_end, p.byte_start, p.byte_end, p.attempts,
    p.next_attempt_at, j.created_at,
    CASE WHEN p.state = 'in_flight' THEN COALESCE(p.reconcile_from, p.sent_at)
         ELSE p.reconcile_from END AS reconcile,
    p.blind_resends, p.last_error,
    j.n_queued + j.n_in_flight + j.n_succeeded + j.n_failed + j.n_cancelled + j.n_uncertain = 1
        AS sole,
    p.job_no, p.owner_no";

const JOB: &str = "j.no, j.id, j.owner, j.route, j.method, j.path, j.state, j.recipients,
    j.n_queued, j.n_in_flight, j.n_succeeded, j.n_failed, j.n_cancelled, j.attempts,
    j.n_uncertain, j.created_at, j.updated_at, j.skipped";

const PART: &str = "seq, item_start, item_end, byte_start, byte_end, state, attempts,
    last_status, last_error, next_attempt_at, resp_status, resp_headers, resp_body, job_no";

// === impl Postgres ===

impl Postgres {
    pub(super) async fn read<T>(
        &self,
        work: impl for<'c> FnOnce(
            &'c deadpool_postgres::ClientWrapper,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'c>,
        >,
    ) -> Result<T, StoreError> {
        let client = self.client().await?;
        let result = work(&client).await;
        self.note(result)
    }

    pub async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(|c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        &prep_read(
                            c,
                            "SELECT key, cooling_until, max_allowed, available, updated_at,
                             last_status, last_headers, last_body FROM key_state",
                        )
                        .await?,
                        &[],
                    )
                    .await
                    .map_err(pg_error)?;
                rows.iter().map(key_record).collect()
            })
        })
        .await
    }

    pub async fn job(&self, id: &str, owner: &str) -> Result<Option<JobRecord>, StoreError> {
        let (id, owner) = (id.to_owned(), owner.to_owned());
        self.read(move |c| {
            Box::pin(async move {
                let Some(row) = c
                    .query_opt(
                        &prep_read(
                            c,
                            &format!("SELECT {JOB} FROM jobs j WHERE j.id = $1 AND j.owner = $2"),
                        )
                        .await?,
                        &[&id, &owner],
                    )
                    .await
                    .map_err(pg_error)?
                else {
                    return Ok(None);
                };
                let (no, mut job) = job_record(&row)?;
                let parts = c
                    .query(
                        &prep_read(
                            c,
                            &format!(
                                "SELECT {PART} FROM parts WHERE job_no = $1 ORDER BY item_start"
                            ),
                        )
                        .await?,
                        &[&no],
                    )
                    .await
                    .map_err(pg_error)?;
                job.parts = parts.iter().map(part_record).collect::<Result<_, _>>()?;
                Ok(Some(job))
            })
        })
        .await
    }

    pub async fn list_jobs(
        &self,
        owner: &str,
        state: Option<JobState>,
        limit: u32,
        before: Option<(i64, String)>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let owner = owner.to_owned();
        self.read(move |c| {
            Box::pin(async move {
                let state = state.map(JobState::as_str);
                let (at, id) = before.unzip();
                let rows = c
                    .query(
                        &format!(
                            "SELECT {JOB} FROM jobs j WHERE j.owner = $1
                               AND ($2::TEXT IS NULL OR j.state = $2)
                               AND ($3::BIGINT IS NULL OR (j.created_at, j.id) < ($3, $4))
                             ORDER BY j.created_at DESC, j.id DESC LIMIT $5"
                        ),
                        &[&owner, &state, &at, &id, &i64::from(limit)],
                    )
                    .await
                    .map_err(pg_error)?;
                let mut jobs = Vec::with_capacity(rows.len());
                let mut nos = Vec::with_capacity(rows.len());
                for row in &rows {
                    let (no, job) = job_record(row)?;
                    nos.push(no);
                    jobs.push(job);
                }
                let parts = c
                    .query(
                        &prep_read(
                            c,
                            &format!(
                                "SELECT {PART} FROM parts WHERE job_no = ANY($1)
                             ORDER BY job_no, item_start"
                            ),
                        )
                        .await?,
                        &[&nos],
                    )
                    .await
                    .map_err(pg_error)?;
                for row in &parts {
                    let no: i64 = row.get("job_no");
                    if let Some(i) = nos.iter().position(|n| *n == no) {
                        jobs[i].parts.push(part_record(row)?);
                    }
                }
                Ok(jobs)
            })
        })
        .await
    }

    pub async fn next_due(&self, owner_no: i64, now: i64) -> Result<Option<i64>, StoreError> {
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_one(&prep_read(c, "SELECT MIN(GREATEST(COALESCE(next_attempt_at, 0), COALESCE(lease_until, 0)))
                         FROM parts WHERE owner_no = $1 AND state IN ('queued', 'in_flight')
                           AND (lease_until IS NULL OR lease_until < $2)").await?,
                        &[&owner_no, &now],
                    )
                    .await
                    .map_err(pg_error)?;
                let due: Option<i64> = row.get(0);
                if due.is_some() {
                    return Ok(due);
                }
                // Everything is leased: it is due again when a lease runs out (if its
                // instance has died by then).
                let row = c
                    .query_one(&prep_read(c, "SELECT MIN(lease_until) FROM parts
                         WHERE owner_no = $1 AND state IN ('queued', 'in_flight')").await?,
                        &[&owner_no],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(row.get(0))
            })
        })
        .await
    }

    pub async fn open_owners(&self) -> Result<Vec<(i64, String)>, StoreError> {
        self.read(|c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        &prep_read(
                            c,
                            "SELECT o.no, o.key FROM owners o
                         WHERE EXISTS (SELECT 1 FROM parts p WHERE p.owner_no = o.no
                                       AND p.state IN ('queued', 'in_flight'))",
                        )
                        .await?,
                        &[],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })
        .await
    }

    pub async fn owner_no(&self, key: &str) -> Result<Option<i64>, StoreError> {
        let key = key.to_owned();
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        &prep_read(c, "SELECT no FROM owners WHERE key = $1").await?,
                        &[&key],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(row.map(|r| r.get(0)))
            })
        })
        .await
    }

    pub async fn backlog(&self) -> Result<(u64, u64), StoreError> {
        self.read(|c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        &prep_read(
                            c,
                            "SELECT COALESCE(SUM(item_end - item_start), 0)::BIGINT,
                             COALESCE(SUM(byte_end - byte_start), 0)::BIGINT
                         FROM parts WHERE state IN ('queued', 'in_flight')",
                        )
                        .await?,
                        &[],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
            })
        })
        .await
    }

    pub async fn unfinished(&self) -> Result<Vec<Dispatchable>, StoreError> {
        self.read(|c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        &prep_read(
                            c,
                            &format!(
                                "SELECT {DISPATCH} FROM parts p JOIN jobs j ON j.no = p.job_no
                             WHERE p.state IN ('queued', 'in_flight')
                             ORDER BY j.created_at, j.no, p.item_start"
                            ),
                        )
                        .await?,
                        &[],
                    )
                    .await
                    .map_err(pg_error)?;
                rows.iter().map(dispatchable).collect()
            })
        })
        .await
    }

    pub async fn dispatchable(
        &self,
        job: &str,
        seqs: &[u32],
    ) -> Result<Vec<Dispatchable>, StoreError> {
        let job = job.to_owned();
        let seqs: Vec<i64> = seqs.iter().map(|s| i64::from(*s)).collect();
        self.read(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        &prep_read(
                            c,
                            &format!(
                                "SELECT {DISPATCH} FROM parts p JOIN jobs j ON j.no = p.job_no
                             WHERE j.id = $1 AND p.seq = ANY($2)
                               AND p.state IN ('queued', 'in_flight')"
                            ),
                        )
                        .await?,
                        &[&job, &seqs],
                    )
                    .await
                    .map_err(pg_error)?;
                rows.iter().map(dispatchable).collect()
            })
        })
        .await
    }

    /// A part's request body, built from three substrings of the stored body (see the
    /// SQLite store's `part_body`).
    pub async fn part_body(&self, job: &str, bytes: Range<u64>) -> Result<Bytes, StoreError> {
        let job = job.to_owned();
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(&prep_read(c, "SELECT j.array_start, j.array_end, length(b.body)::BIGINT FROM jobs j
                         JOIN bodies b ON b.job_no = j.no WHERE j.id = $1").await?,
                        &[&job],
                    )
                    .await
                    .map_err(pg_error)?
                    .ok_or(StoreError::NotFound)?;
                let (start, end, len): (Option<i64>, Option<i64>, i64) =
                    (row.get(0), row.get(1), row.get(2));
                let (Some(start), Some(end)) = (start, end) else {
                    let row = c
                        .query_one(&prep_read(c, "SELECT b.body FROM bodies b JOIN jobs j ON j.no = b.job_no
                             WHERE j.id = $1").await?,
                            &[&job],
                        )
                        .await
                        .map_err(pg_error)?;
                    return Ok(Bytes::from(row.get::<_, Vec<u8>>(0)));
                };
                let (from, to) = (bytes.start as i64, bytes.end as i64);
                if !(start < from && from <= to && to < end && end <= len) {
                    return Err(StoreError::Invalid(format!(
                        "bytes {bytes:?} are not inside the recipients array {start}..{end} of a \
                         {len}-byte body"
                    )));
                }
                // SQL substrings count from 1, in INT (a BYTEA is at most 1 GiB).
                let int = |v: i64| {
                    i32::try_from(v).map_err(|_| StoreError::Invalid(format!("offset {v}")))
                };
                let (head, at, n, rest) =
                    (int(start)?, int(from + 1)?, int(to - from)?, int(end + 1)?);
                let row = c
                    .query_one(&prep_read(c, "SELECT substring(b.body FROM 1 FOR $2), substring(b.body FROM $3 FOR $4),
                             substring(b.body FROM $5)
                         FROM bodies b JOIN jobs j ON j.no = b.job_no WHERE j.id = $1").await?,
                        &[&job, &head, &at, &n, &rest],
                    )
                    .await
                    .map_err(pg_error)?;
                let (head, middle, tail): (Vec<u8>, Vec<u8>, Vec<u8>) =
                    (row.get(0), row.get(1), row.get(2));
                let mut out = Vec::with_capacity(head.len() + middle.len() + tail.len() + 2);
                out.extend_from_slice(&head);
                out.push(b'[');
                out.extend_from_slice(&middle);
                out.push(b']');
                out.extend_from_slice(&tail);
                Ok(Bytes::from(out))
            })
        })
        .await
    }

    pub async fn stats(&self, now: i64) -> Result<StoreStats, StoreError> {
        self.read(move |c| {
            Box::pin(async move {
                let mut jobs: Vec<(JobState, u64)> =
                    JobState::ALL.iter().map(|&s| (s, 0)).collect();
                let mut parts: Vec<(PartState, u64)> =
                    PartState::ALL.iter().map(|&s| (s, 0)).collect();
                for row in c
                    .query(&prep_read(c, "SELECT kind, state, SUM(n)::BIGINT FROM counters GROUP BY kind, state").await?,
                        &[],
                    )
                    .await
                    .map_err(pg_error)?
                {
                    let (kind, state, n): (String, String, i64) =
                        (row.get(0), row.get(1), row.get(2));
                    if kind == "jobs" {
                        if let Some(slot) = jobs.iter_mut().find(|(s, _)| s.as_str() == state) {
                            slot.1 = n.max(0) as u64;
                        }
                    } else if let Some(slot) = parts.iter_mut().find(|(s, _)| s.as_str() == state) {
                        slot.1 = n.max(0) as u64;
                    }
                }
                let row = c
                    .query_one(&prep_read(c, "SELECT (SELECT COALESCE(SUM(item_end - item_start), 0)::BIGINT FROM parts
                                 WHERE state IN ('queued', 'in_flight')),
                                (SELECT MIN(created_at) FROM jobs
                                 WHERE state IN ('queued', 'in_progress')),
                                pg_database_size(current_database())").await?,
                        &[],
                    )
                    .await
                    .map_err(pg_error)?;
                let (queued, oldest, size): (i64, Option<i64>, i64) =
                    (row.get(0), row.get(1), row.get(2));
                Ok(StoreStats {
                    jobs,
                    parts,
                    recipients_queued: queued as u64,
                    oldest_queued_secs: oldest
                        .map(|t| now.saturating_sub(t).max(0) as f64 / 1000.0),
                    db_bytes: size as u64,
                })
            })
        })
        .await
    }

    pub async fn idempotent_job(
        &self,
        owner: &str,
        key: &str,
        not_before: i64,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let (owner, key) = (owner.to_owned(), key.to_owned());
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        &prep_read(
                            c,
                            "SELECT job_id, body_hash, created_at FROM idempotency
                         WHERE owner = $1 AND key = $2 AND created_at >= $3",
                        )
                        .await?,
                        &[&owner, &key, &not_before],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(row.map(|r| IdempotencyRecord {
                    job_id: r.get(0),
                    body_hash: r.get(1),
                    created_at: r.get(2),
                }))
            })
        })
        .await
    }
}

/// A part as the dispatcher needs it, from [`DISPATCH`] columns.
pub(super) fn dispatchable(row: &Row) -> Result<Dispatchable, StoreError> {
    let u = |i: usize| row.get::<_, i64>(i) as u64;
    Ok(Dispatchable {
        job_id: row.get(0),
        seq: row.get::<_, i64>(1) as u32,
        owner: row.get(2),
        api_key: row.get(3),
        route: row.get(4),
        method: row.get(5),
        path: row.get(6),
        headers: headers(row.get(7))?,
        items: u(8)..u(9),
        bytes: u(10)..u(11),
        attempts: row.get::<_, i64>(12) as u32,
        next_attempt_at: row.get(13),
        created_at: row.get(14),
        reconcile_from: row.get(15),
        blind_resends: row.get::<_, i64>(16) as u32,
        last_error: row.get(17),
        sole: row.get(18),
        job_no: row.get(19),
        owner_no: row.get(20),
    })
}

pub(super) fn part_state(name: &str) -> Result<PartState, StoreError> {
    PartState::ALL
        .into_iter()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| StoreError::Invalid(format!("unknown part state {name:?}")))
}

fn headers(blob: Option<Vec<u8>>) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    match blob {
        Some(b) => decode_headers(&b).map_err(|why| StoreError::Invalid(why.to_string())),
        None => Ok(Vec::new()),
    }
}

fn job_record(row: &Row) -> Result<(i64, JobRecord), StoreError> {
    let u = |i: usize| row.get::<_, i64>(i) as u64;
    let state: String = row.get(6);
    Ok((
        row.get(0),
        JobRecord {
            id: row.get(1),
            owner: row.get(2),
            route: row.get(3),
            method: row.get(4),
            path: row.get(5),
            state: JobState::parse(&state)
                .ok_or_else(|| StoreError::Invalid(format!("unknown job state {state:?}")))?,
            recipients: u(7),
            counts: PartCounts {
                queued: u(8),
                in_flight: u(9),
                succeeded: u(10),
                failed: u(11),
                cancelled: u(12),
                attempts: u(13),
                uncertain: u(14),
            },
            created_at: row.get(15),
            updated_at: row.get(16),
            skipped: row.get(17),
            parts: Vec::new(),
        },
    ))
}

fn part_record(row: &Row) -> Result<PartRecord, StoreError> {
    let u = |i: usize| row.get::<_, i64>(i) as u64;
    let response = match row.get::<_, Option<i64>>(10) {
        Some(status) => Some(StoredResponse {
            status: status as u16,
            headers: headers(row.get(11))?,
            body: row.get::<_, Option<Vec<u8>>>(12).unwrap_or_default(),
        }),
        None => None,
    };
    Ok(PartRecord {
        seq: row.get::<_, i64>(0) as u32,
        items: u(1)..u(2),
        bytes: u(3)..u(4),
        state: part_state(row.get(5))?,
        attempts: row.get::<_, i64>(6) as u32,
        last_status: row.get::<_, Option<i64>>(7).map(|s| s as u16),
        last_error: row.get(8),
        next_attempt_at: row.get(9),
        response,
    })
}

/// A statement prepared once per connection (see `writes::prep`).
pub(super) async fn prep_read(
    c: &deadpool_postgres::ClientWrapper,
    sql: &str,
) -> Result<tokio_postgres::Statement, StoreError> {
    c.prepare_cached(sql).await.map_err(pg_error)
}

pub(super) fn key_record(row: &Row) -> Result<KeyRecord, StoreError> {
    let last_429 = match row.get::<_, Option<i64>>(5) {
        Some(status) => Some(StoredResponse {
            status: status as u16,
            headers: headers(row.get(6))?,
            body: row.get::<_, Option<Vec<u8>>>(7).unwrap_or_default(),
        }),
        None => None,
    };
    Ok(KeyRecord {
        key: row.get(0),
        cooling_until: row.get(1),
        max_allowed: row.get::<_, Option<i64>>(2).map(|v| v as u64),
        available: row.get::<_, Option<i64>>(3).map(|v| v as u64),
        updated_at: row.get(4),
        last_429,
    })
}
