//! Every change the PostgreSQL store makes, each in its own transaction: the same rules as
//! the SQLite store's `changes.rs`, with the job row locked (`FOR UPDATE`) while its parts
//! change, counters moved in the same transaction, and news sent with `pg_notify`.

use super::reads::part_state;
use super::{pg_error, Postgres};
use crate::queue::store::changes::{check_new_job, check_split};
use crate::queue::store::housekeeping::{deltas, is_final, part_counts, FINAL};
use crate::queue::store::rows::encode_headers;
use crate::queue::store::{
    derive_state, IdempotencyRecord, Inserted, JobState, KeyRecord, NewJob, NewPart, PartCounts,
    PartState, Retry, StoreError, StoredResponse,
};

/// The job row, as the changes need it (locked).
struct JobRow {
    no: i64,
    owner: String,
    counts: PartCounts,
    before: PartCounts,
    state: JobState,
    bulk: bool,
    cancelled: bool,
}

/// The part row, as the changes need it.
struct PartRow {
    owner_no: i64,
    items: std::ops::Range<u64>,
    bytes: std::ops::Range<u64>,
    state: PartState,
    attempts: u32,
    last_status: Option<i64>,
    last_error: Option<String>,
}

pub(super) type Tx<'a> = deadpool_postgres::Transaction<'a>;

// === impl Postgres ===

impl Postgres {
    /// Runs `work` in a transaction on a pooled connection, committed if it succeeds.
    pub(super) async fn write<T>(
        &self,
        work: impl for<'t> FnOnce(
            &'t Tx<'t>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 't>,
        >,
    ) -> Result<T, StoreError> {
        let mut client = self.client().await?;
        let result = async {
            let tx = client.transaction().await.map_err(pg_error)?;
            let value = work(&tx).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(value)
        }
        .await;
        self.note(result)
    }

    pub async fn insert_job(&self, job: NewJob) -> Result<Inserted, StoreError> {
        let recipients = check_new_job(&job)?;
        self.write(move |tx| Box::pin(insert_job(tx, job, recipients)))
            .await
    }

    pub async fn mark_in_flight(&self, job: &str, seq: u32, now: i64) -> Result<(), StoreError> {
        let job = job.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let (mut j, part) = job_and_part(tx, &job, seq).await?;
                if !part.state.is_open() {
                    return Err(StoreError::WrongState(part.state));
                }
                tx.execute(
                    &prep(
                        tx,
                        "UPDATE parts SET state = 'in_flight', attempts = attempts + 1,
                         next_attempt_at = NULL, updated_at = $3, sent_at = $3
                     WHERE job_no = $1 AND seq = $2",
                    )
                    .await?,
                    &[&j.no, &i64::from(seq), &now],
                )
                .await
                .map_err(pg_error)?;
                j.counts.shift(part.state, PartState::InFlight, 1);
                j.counts.attempts += 1;
                save_counts(tx, &j, now).await
            })
        })
        .await
    }

    pub async fn schedule_retry(
        &self,
        job: &str,
        seq: u32,
        retry: Retry,
        now: i64,
    ) -> Result<PartState, StoreError> {
        let job = job.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let (mut j, part) = job_and_part(tx, &job, seq).await?;
                if part.state != PartState::InFlight {
                    return Err(StoreError::WrongState(part.state));
                }
                let to = if j.cancelled {
                    PartState::Cancelled
                } else {
                    PartState::Queued
                };
                let attempts = if retry.count_attempt {
                    part.attempts
                } else {
                    part.attempts.saturating_sub(1)
                };
                tx.execute(&prep(tx, "UPDATE parts SET state = $3, attempts = $4, last_status = $5, last_error = $6,
                         next_attempt_at = $7, updated_at = $8, reconcile_from = $9,
                         blind_resends = $10, lease_owner = NULL, lease_until = NULL
                     WHERE job_no = $1 AND seq = $2").await?,
                    &[
                        &j.no,
                        &i64::from(seq),
                        &to.as_str(),
                        &i64::from(attempts),
                        &retry.last_status.map(i64::from),
                        &retry.last_error,
                        &(to == PartState::Queued).then_some(retry.next_attempt_at),
                        &now,
                        &retry.reconcile_from,
                        &i64::from(retry.blind_resends),
                    ],
                )
                .await
                .map_err(pg_error)?;
                j.counts.shift(part.state, to, 1);
                j.counts.attempts = j
                    .counts
                    .attempts
                    .saturating_sub(u64::from(part.attempts - attempts));
                save_counts(tx, &j, now).await?;
                if to == PartState::Cancelled {
                    notify(tx, "sluice_jobs", &job).await?;
                }
                Ok(to)
            })
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn postpone(
        &self,
        job: &str,
        seq: u32,
        next_attempt_at: i64,
        reconcile_from: Option<i64>,
        blind_resends: u32,
        now: i64,
    ) -> Result<PartState, StoreError> {
        let job = job.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let (mut j, part) = job_and_part(tx, &job, seq).await?;
                if !part.state.is_open() {
                    return Err(StoreError::WrongState(part.state));
                }
                let to = if j.cancelled {
                    PartState::Cancelled
                } else {
                    PartState::Queued
                };
                tx.execute(
                    &prep(
                        tx,
                        "UPDATE parts SET state = $3, next_attempt_at = $4, updated_at = $5,
                         reconcile_from = $6, blind_resends = $7, lease_owner = NULL,
                         lease_until = NULL
                     WHERE job_no = $1 AND seq = $2",
                    )
                    .await?,
                    &[
                        &j.no,
                        &i64::from(seq),
                        &to.as_str(),
                        &(to == PartState::Queued).then_some(next_attempt_at),
                        &now,
                        &reconcile_from,
                        &i64::from(blind_resends),
                    ],
                )
                .await
                .map_err(pg_error)?;
                j.counts.shift(part.state, to, 1);
                save_counts(tx, &j, now).await?;
                Ok(to)
            })
        })
        .await
    }

    pub async fn note_reconcile(
        &self,
        job: &str,
        seq: u32,
        reconcile_from: Option<i64>,
        blind_resends: u32,
    ) -> Result<(), StoreError> {
        let job = job.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let (j, part) = job_and_part(tx, &job, seq).await?;
                if !part.state.is_open() {
                    return Err(StoreError::WrongState(part.state));
                }
                tx.execute(
                    &prep(
                        tx,
                        "UPDATE parts SET reconcile_from = $3, blind_resends = $4
                     WHERE job_no = $1 AND seq = $2",
                    )
                    .await?,
                    &[
                        &j.no,
                        &i64::from(seq),
                        &reconcile_from,
                        &i64::from(blind_resends),
                    ],
                )
                .await
                .map_err(pg_error)?;
                Ok(())
            })
        })
        .await
    }

    pub async fn finish_part(
        &self,
        job: &str,
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
        let job = job.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let (mut j, part) = job_and_part(tx, &job, seq).await?;
                if !part.state.is_open() {
                    return Err(StoreError::WrongState(part.state));
                }
                let (status, headers, body) = match &response {
                    Some(r) => (
                        Some(i64::from(r.status)),
                        Some(encode_headers(&r.headers)?),
                        Some(r.body.clone()),
                    ),
                    None => (None, None, None),
                };
                tx.execute(
                    &prep(
                        tx,
                        "UPDATE parts SET state = $3, last_status = COALESCE($4, last_status),
                         last_error = $5, next_attempt_at = NULL, updated_at = $6,
                         resp_status = $4, resp_headers = $7, resp_body = $8,
                         reconcile_from = NULL, lease_owner = NULL, lease_until = NULL
                     WHERE job_no = $1 AND seq = $2",
                    )
                    .await?,
                    &[
                        &j.no,
                        &i64::from(seq),
                        &state.as_str(),
                        &status,
                        &last_error,
                        &now,
                        &headers,
                        &body,
                    ],
                )
                .await
                .map_err(pg_error)?;
                j.counts.shift(part.state, state, 1);
                save_counts(tx, &j, now).await?;
                notify(tx, "sluice_jobs", &job).await
            })
        })
        .await
    }

    pub async fn split_part(
        &self,
        job: &str,
        seq: u32,
        into: Vec<NewPart>,
        now: i64,
    ) -> Result<Vec<u32>, StoreError> {
        let job = job.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let mut j = load_job(tx, &job, None)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                if !j.bulk {
                    return Err(StoreError::Invalid(
                        "a job without a recipients array cannot be split".into(),
                    ));
                }
                let part = load_part(tx, j.no, seq).await?;
                if !part.state.is_open() {
                    return Err(StoreError::WrongState(part.state));
                }
                check_split(&part.items, &part.bytes, &into)?;
                let max: i64 = tx
                    .query_one(
                        &prep(tx, "SELECT MAX(seq) FROM parts WHERE job_no = $1").await?,
                        &[&j.no],
                    )
                    .await
                    .map_err(pg_error)?
                    .get(0);
                let first = u32::try_from(max + 1).map_err(|_| {
                    StoreError::Invalid("the job has run out of part numbers".into())
                })?;
                let count = into.len() as u32;
                tx.execute(
                    &prep(tx, "DELETE FROM parts WHERE job_no = $1 AND seq = $2").await?,
                    &[&j.no, &i64::from(seq)],
                )
                .await
                .map_err(pg_error)?;
                let state = if j.cancelled {
                    PartState::Cancelled
                } else {
                    PartState::Queued
                };
                let seqs: Vec<u32> = (first..first + count).collect();
                let insert = tx
                    .prepare(
                        "INSERT INTO parts (job_no, seq, item_start, item_end, byte_start,
                             byte_end, state, attempts, last_status, last_error, updated_at,
                             owner_no)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    )
                    .await
                    .map_err(pg_error)?;
                for (&new, piece) in seqs.iter().zip(&into) {
                    tx.execute(
                        &insert,
                        &[
                            &j.no,
                            &i64::from(new),
                            &(piece.items.start as i64),
                            &(piece.items.end as i64),
                            &(piece.bytes.start as i64),
                            &(piece.bytes.end as i64),
                            &state.as_str(),
                            &i64::from(part.attempts),
                            &part.last_status,
                            &part.last_error,
                            &now,
                            &part.owner_no,
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                }
                let n = u64::from(count);
                let from = j.counts.get_mut(part.state);
                *from = from.saturating_sub(1);
                *j.counts.get_mut(state) += n;
                j.counts.attempts += (n - 1) * u64::from(part.attempts);
                save_counts(tx, &j, now).await?;
                notify(tx, "sluice_work", &j.owner).await?;
                Ok(seqs)
            })
        })
        .await
    }

    pub async fn cancel_job(
        &self,
        job: &str,
        owner: &str,
        now: i64,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let (job, owner) = (job.to_owned(), owner.to_owned());
        self.write(move |tx| {
            Box::pin(async move {
                let Some(mut j) = load_job(tx, &job, Some(&owner)).await? else {
                    return Ok(None);
                };
                let row = tx
                    .query_one(&prep(tx, "SELECT COUNT(*), COALESCE(SUM(item_end - item_start), 0)::BIGINT,
                             COALESCE(SUM(byte_end - byte_start), 0)::BIGINT
                         FROM parts WHERE job_no = $1 AND state = 'queued'").await?,
                        &[&j.no],
                    )
                    .await
                    .map_err(pg_error)?;
                let (parts, recipients, bytes): (i64, i64, i64) =
                    (row.get(0), row.get(1), row.get(2));
                tx.execute(&prep(tx, "UPDATE parts SET state = 'cancelled', next_attempt_at = NULL, updated_at = $2,
                         lease_owner = NULL, lease_until = NULL
                     WHERE job_no = $1 AND state = 'queued'").await?,
                    &[&j.no, &now],
                )
                .await
                .map_err(pg_error)?;
                tx.execute(&prep(tx, "UPDATE jobs SET cancelled_at = $2 WHERE no = $1").await?,
                    &[&j.no, &now],
                )
                .await
                .map_err(pg_error)?;
                j.counts.shift(
                    PartState::Queued,
                    PartState::Cancelled,
                    parts.unsigned_abs(),
                );
                save_counts(tx, &j, now).await?;
                notify(tx, "sluice_jobs", &job).await?;
                Ok(Some((recipients.unsigned_abs(), bytes.unsigned_abs())))
            })
        })
        .await
    }

    pub async fn retry_failed(
        &self,
        job: &str,
        owner: &str,
        api_key: Option<Vec<u8>>,
        now: i64,
    ) -> Result<Option<Vec<u32>>, StoreError> {
        let (job, owner) = (job.to_owned(), owner.to_owned());
        self.write(move |tx| {
            Box::pin(async move {
                let Some(mut j) = load_job(tx, &job, Some(&owner)).await? else {
                    return Ok(None);
                };
                tx.execute(
                    &prep(tx, "UPDATE jobs SET api_key = $2 WHERE no = $1").await?,
                    &[&j.no, &api_key],
                )
                .await
                .map_err(pg_error)?;
                let rows = tx
                    .query(
                        &prep(
                            tx,
                            "SELECT seq, attempts FROM parts WHERE job_no = $1 AND state = 'failed'
                         ORDER BY seq",
                        )
                        .await?,
                        &[&j.no],
                    )
                    .await
                    .map_err(pg_error)?;
                let seqs: Vec<u32> = rows.iter().map(|r| r.get::<_, i64>(0) as u32).collect();
                let attempts: u64 = rows.iter().map(|r| r.get::<_, i64>(1) as u64).sum();
                tx.execute(
                    &prep(
                        tx,
                        "UPDATE parts SET state = 'queued', attempts = 0, next_attempt_at = NULL,
                         updated_at = $2, resp_status = NULL, resp_headers = NULL,
                         resp_body = NULL, lease_owner = NULL, lease_until = NULL
                     WHERE job_no = $1 AND state = 'failed'",
                    )
                    .await?,
                    &[&j.no, &now],
                )
                .await
                .map_err(pg_error)?;
                tx.execute(
                    &prep(tx, "UPDATE jobs SET cancelled_at = NULL WHERE no = $1").await?,
                    &[&j.no],
                )
                .await
                .map_err(pg_error)?;
                j.counts
                    .shift(PartState::Failed, PartState::Queued, seqs.len() as u64);
                j.counts.attempts = j.counts.attempts.saturating_sub(attempts);
                save_counts(tx, &j, now).await?;
                notify(tx, "sluice_work", &j.owner).await?;
                Ok(Some(seqs))
            })
        })
        .await
    }

    pub async fn purge_finished(&self, before: i64, limit: u32) -> Result<usize, StoreError> {
        self.write(move |tx| {
            Box::pin(async move {
                let rows = tx
                    .query(
                        &prep(
                            tx,
                            &format!(
                            "SELECT no, id, state, n_queued, n_in_flight, n_succeeded, n_failed,
                                 n_cancelled, attempts, n_uncertain
                             FROM jobs WHERE state IN ({FINAL}) AND updated_at < $1
                             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED"
                        ),
                        )
                        .await?,
                        &[&before, &i64::from(limit)],
                    )
                    .await
                    .map_err(pg_error)?;
                let mut gone = std::collections::BTreeMap::<(&str, &str), i64>::new();
                for row in &rows {
                    let (no, id): (i64, String) = (row.get(0), row.get(1));
                    let state = job_state(row.get(2))?;
                    let counts = counts(row, 3);
                    tx.execute(
                        &prep(tx, "DELETE FROM parts WHERE job_no = $1").await?,
                        &[&no],
                    )
                    .await
                    .map_err(pg_error)?;
                    tx.execute(
                        &prep(tx, "DELETE FROM bodies WHERE job_no = $1").await?,
                        &[&no],
                    )
                    .await
                    .map_err(pg_error)?;
                    tx.execute(
                        &prep(tx, "DELETE FROM idempotency WHERE job_id = $1").await?,
                        &[&id],
                    )
                    .await
                    .map_err(pg_error)?;
                    tx.execute(&prep(tx, "DELETE FROM jobs WHERE no = $1").await?, &[&no])
                        .await
                        .map_err(pg_error)?;
                    *gone.entry(("jobs", state.as_str())).or_default() -= 1;
                    for (s, n) in part_counts(&counts) {
                        *gone.entry(("parts", s.as_str())).or_default() -= n as i64;
                    }
                }
                // In one fixed order, after the deletes (see `save_counts`).
                for ((kind, state), delta) in gone {
                    bump(tx, kind, state, delta, 0).await?;
                }
                Ok(rows.len())
            })
        })
        .await
    }

    pub async fn purge_idempotency(&self, before: i64, limit: u32) -> Result<usize, StoreError> {
        self.write(move |tx| {
            Box::pin(async move {
                let n = tx
                    .execute(
                        &prep(
                            tx,
                            "DELETE FROM idempotency WHERE (owner, key) IN (
                             SELECT owner, key FROM idempotency WHERE created_at < $1
                             ORDER BY created_at LIMIT $2)",
                        )
                        .await?,
                        &[&before, &i64::from(limit)],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(n as usize)
            })
        })
        .await
    }

    /// Records what was learned about a key and tells every instance (a new 429 also ends
    /// any probe of the key).
    pub async fn save_key(&self, key: KeyRecord) -> Result<(), StoreError> {
        self.write(move |tx| {
            Box::pin(async move {
                let (status, headers, body) = match &key.last_429 {
                    Some(r) => (
                        Some(i64::from(r.status)),
                        Some(encode_headers(&r.headers)?),
                        Some(r.body.clone()),
                    ),
                    None => (None, None, None),
                };
                tx.execute(
                    &prep(
                        tx,
                        "INSERT INTO key_state (key, cooling_until, max_allowed, available,
                         updated_at, last_status, last_headers, last_body)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (key) DO UPDATE SET cooling_until = $2, max_allowed = $3,
                         available = $4, updated_at = $5, last_status = $6, last_headers = $7,
                         last_body = $8, probe_owner = NULL, probe_until = NULL",
                    )
                    .await?,
                    &[
                        &key.key,
                        &key.cooling_until,
                        &key.max_allowed.map(|v| v as i64),
                        &key.available.map(|v| v as i64),
                        &key.updated_at,
                        &status,
                        &headers,
                        &body,
                    ],
                )
                .await
                .map_err(pg_error)?;
                notify(tx, "sluice_keys", &key.key).await
            })
        })
        .await
    }
}

async fn insert_job(tx: &Tx<'_>, job: NewJob, recipients: u64) -> Result<Inserted, StoreError> {
    if let Some(new) = &job.idempotency {
        let found = tx
            .query_opt(
                &prep(
                    tx,
                    "SELECT job_id, body_hash, created_at FROM idempotency
                 WHERE owner = $1 AND key = $2 FOR UPDATE",
                )
                .await?,
                &[&job.owner, &new.key],
            )
            .await
            .map_err(pg_error)?;
        match found {
            Some(row) if row.get::<_, i64>(2) >= new.not_before => {
                return Ok(Inserted::Existing(IdempotencyRecord {
                    job_id: row.get(0),
                    body_hash: row.get(1),
                    created_at: row.get(2),
                }));
            }
            _ => {}
        }
        let claimed = tx
            .execute(
                &prep(
                    tx,
                    "INSERT INTO idempotency (owner, key, job_id, body_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (owner, key) DO UPDATE SET job_id = $3, body_hash = $4,
                     created_at = $5 WHERE idempotency.created_at < $6",
                )
                .await?,
                &[
                    &job.owner,
                    &new.key,
                    &job.id,
                    &new.body_hash,
                    &job.now_ms,
                    &new.not_before,
                ],
            )
            .await
            .map_err(pg_error)?;
        if claimed == 0 {
            // Another instance claimed it between the two statements.
            let row = tx
                .query_one(
                    &prep(
                        tx,
                        "SELECT job_id, body_hash, created_at FROM idempotency
                     WHERE owner = $1 AND key = $2",
                    )
                    .await?,
                    &[&job.owner, &new.key],
                )
                .await
                .map_err(pg_error)?;
            return Ok(Inserted::Existing(IdempotencyRecord {
                job_id: row.get(0),
                body_hash: row.get(1),
                created_at: row.get(2),
            }));
        }
    }
    let counts = PartCounts {
        queued: job.parts.len() as u64,
        ..PartCounts::default()
    };
    let state = derive_state(&counts);
    let no: i64 = tx
        .query_one(
            &prep(
                tx,
                "INSERT INTO jobs (id, owner, route, method, path, state, recipients, n_queued,
                 n_in_flight, n_succeeded, n_failed, n_cancelled, attempts, created_at,
                 updated_at, array_start, array_end, skipped, headers, api_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, 0, 0, 0, $9, $9, $10, $11, $12, $13,
                 $14)
             RETURNING no",
            )
            .await?,
            &[
                &job.id,
                &job.owner,
                &job.route,
                &job.method,
                &job.path,
                &state.as_str(),
                &(recipients as i64),
                &(counts.queued as i64),
                &job.now_ms,
                &job.array.as_ref().map(|a| a.start as i64),
                &job.array.as_ref().map(|a| a.end as i64),
                &job.skipped,
                &encode_headers(&job.headers)?,
                &job.api_key,
            ],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    tx.execute(
        &prep(tx, "INSERT INTO bodies (job_no, body) VALUES ($1, $2)").await?,
        &[&no, &&job.body[..]],
    )
    .await
    .map_err(pg_error)?;
    tx.execute(
        &prep(
            tx,
            "INSERT INTO owners (key) VALUES ($1) ON CONFLICT (key) DO NOTHING",
        )
        .await?,
        &[&job.owner],
    )
    .await
    .map_err(pg_error)?;
    let owner_no: i64 = tx
        .query_one(
            &prep(tx, "SELECT no FROM owners WHERE key = $1").await?,
            &[&job.owner],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    let column =
        |f: fn(&NewPart) -> u64| -> Vec<i64> { job.parts.iter().map(|p| f(p) as i64).collect() };
    let seqs: Vec<i64> = (0..job.parts.len() as i64).collect();
    tx.execute(
        &prep(
            tx,
            "INSERT INTO parts (job_no, seq, item_start, item_end, byte_start, byte_end, state,
             attempts, updated_at, owner_no)
         SELECT $1, s, a, b, c, d, 'queued', 0, $2, $3
         FROM UNNEST($4::BIGINT[], $5::BIGINT[], $6::BIGINT[], $7::BIGINT[], $8::BIGINT[])
             AS t(s, a, b, c, d)",
        )
        .await?,
        &[
            &no,
            &job.now_ms,
            &owner_no,
            &seqs,
            &column(|p| p.items.start),
            &column(|p| p.items.end),
            &column(|p| p.bytes.start),
            &column(|p| p.bytes.end),
        ],
    )
    .await
    .map_err(pg_error)?;
    let shard = shard_of(no);
    bump(tx, "jobs", state.as_str(), 1, shard).await?;
    bump(
        tx,
        "parts",
        PartState::Queued.as_str(),
        counts.queued as i64,
        shard,
    )
    .await?;
    notify(tx, "sluice_work", &job.owner).await?;
    Ok(Inserted::New)
}

/// The job with this id (and this owner, if given), locked for the transaction.
async fn load_job(
    tx: &Tx<'_>,
    id: &str,
    owner: Option<&str>,
) -> Result<Option<JobRow>, StoreError> {
    let row = tx
        .query_opt(&prep(tx, "SELECT no, owner, state, n_queued, n_in_flight, n_succeeded, n_failed, n_cancelled,
                 attempts, n_uncertain, array_start IS NOT NULL, cancelled_at IS NOT NULL
             FROM jobs WHERE id = $1 FOR UPDATE").await?,
            &[&id],
        )
        .await
        .map_err(pg_error)?;
    let Some(row) = row else { return Ok(None) };
    let job_owner: String = row.get(1);
    if owner.is_some_and(|o| o != job_owner) {
        return Ok(None);
    }
    Ok(Some(JobRow {
        no: row.get(0),
        owner: job_owner,
        state: job_state(row.get(2))?,
        counts: counts(&row, 3),
        before: counts(&row, 3),
        bulk: row.get(10),
        cancelled: row.get(11),
    }))
}

async fn load_part(tx: &Tx<'_>, no: i64, seq: u32) -> Result<PartRow, StoreError> {
    let row = tx
        .query_opt(
            &prep(
                tx,
                "SELECT item_start, item_end, byte_start, byte_end, state, attempts, last_status,
                 last_error, owner_no
             FROM parts WHERE job_no = $1 AND seq = $2",
            )
            .await?,
            &[&no, &i64::from(seq)],
        )
        .await
        .map_err(pg_error)?
        .ok_or(StoreError::NotFound)?;
    let u = |i: usize| row.get::<_, i64>(i) as u64;
    Ok(PartRow {
        items: u(0)..u(1),
        bytes: u(2)..u(3),
        state: part_state(row.get(4))?,
        attempts: row.get::<_, i64>(5) as u32,
        last_status: row.get(6),
        last_error: row.get(7),
        owner_no: row.get(8),
    })
}

/// The job (locked) and one of its parts, as every change of one part needs them.
async fn job_and_part(tx: &Tx<'_>, job: &str, seq: u32) -> Result<(JobRow, PartRow), StoreError> {
    let j = load_job(tx, job, None).await?.ok_or(StoreError::NotFound)?;
    let part = load_part(tx, j.no, seq).await?;
    Ok((j, part))
}

/// Writes the job's counts and state, moves the counters, clears a finished job's key.
async fn save_counts(tx: &Tx<'_>, job: &JobRow, now: i64) -> Result<(), StoreError> {
    let c = &job.counts;
    let state = derive_state(c);
    let n = |v: u64| v as i64;
    tx.execute(
        &prep(
            tx,
            "UPDATE jobs SET n_queued = $2, n_in_flight = $3, n_succeeded = $4, n_failed = $5,
             n_cancelled = $6, attempts = $7, state = $8, updated_at = $9, n_uncertain = $10
         WHERE no = $1",
        )
        .await?,
        &[
            &job.no,
            &n(c.queued),
            &n(c.in_flight),
            &n(c.succeeded),
            &n(c.failed),
            &n(c.cancelled),
            &n(c.attempts),
            &state.as_str(),
            &now,
            &n(c.uncertain),
        ],
    )
    .await
    .map_err(pg_error)?;
    let mut moves = deltas(&job.before, c, job.state, state)?;
    // A fixed order of counter rows, so that concurrent transactions never deadlock.
    moves.sort();
    for (kind, s, delta) in moves {
        bump(tx, kind, s, delta, shard_of(job.no)).await?;
    }
    if is_final(state) && !is_final(job.state) {
        tx.execute(
            &prep(tx, "UPDATE jobs SET api_key = NULL WHERE no = $1").await?,
            &[&job.no],
        )
        .await
        .map_err(pg_error)?;
    }
    Ok(())
}

/// Counter rows are kept in [`SHARDS`] shards, a job's changes always in the same one
/// (`job_no % SHARDS`), so that concurrent transactions of different jobs do not queue on
/// one row until each other's commit; the figures are their sums.
const SHARDS: i64 = 16;

fn shard_of(job_no: i64) -> i16 {
    (job_no.rem_euclid(SHARDS)) as i16
}

async fn bump(
    tx: &Tx<'_>,
    kind: &str,
    state: &str,
    delta: i64,
    shard: i16,
) -> Result<(), StoreError> {
    if delta == 0 {
        return Ok(());
    }
    tx.execute(
        &prep(
            tx,
            "INSERT INTO counters (kind, state, shard, n) VALUES ($1, $2, $3, $4)
         ON CONFLICT (kind, state, shard) DO UPDATE SET n = counters.n + EXCLUDED.n",
        )
        .await?,
        &[&kind, &state, &shard, &delta],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// A statement prepared once per connection (deadpool's statement cache), so that each
/// later use is one round trip instead of two (prepare, then execute).
pub(super) async fn prep(tx: &Tx<'_>, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
    tx.prepare_cached(sql).await.map_err(pg_error)
}

pub(super) async fn notify(tx: &Tx<'_>, channel: &str, payload: &str) -> Result<(), StoreError> {
    // The payload leads with the database's clock (unix ms), so listeners can tell how
    // late the news reached them.
    tx.execute(&prep(tx, "SELECT pg_notify($1, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT || ':' || $2)").await?,
        &[&channel, &payload],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

fn counts(row: &tokio_postgres::Row, at: usize) -> PartCounts {
    let u = |i: usize| row.get::<_, i64>(at + i) as u64;
    PartCounts {
        queued: u(0),
        in_flight: u(1),
        succeeded: u(2),
        failed: u(3),
        cancelled: u(4),
        attempts: u(5),
        uncertain: u(6),
    }
}

fn job_state(name: &str) -> Result<JobState, StoreError> {
    JobState::parse(name).ok_or_else(|| StoreError::Invalid(format!("unknown job state {name:?}")))
}
