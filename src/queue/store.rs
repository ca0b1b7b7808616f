//! The durable job store: every send that sluice has answered "accepted" lives here until
//! each of its parts is delivered or has a recorded final reason, across `kill -9` and
//! restarts.
//!
//! It is one SQLite file, `sluice.db` (in WAL mode), in the data dir. What it owns, and why
//! it is built this way:
//!
//! - **One writer thread, group commit.** Every change is an op sent over a channel to one
//!   `std::thread` that owns the only writing connection. The thread takes *every* op that
//!   is waiting, runs them all in one transaction (each in its own savepoint, so an op that
//!   is refused, say a part in the wrong state, does not undo the others), commits once,
//!   and only then answers each op. A commit costs one fsync whether it holds one job or
//!   five hundred, so under load the accept path pays a fraction of an fsync per job. An
//!   `async fn` that writes resolves only after its commit returned: "accepted" is said
//!   only about a job that is on disk. (An op whose caller stopped waiting is still
//!   committed.)
//! - **Readers on their own connections.** Reads take a connection from a small pool and
//!   run on tokio's blocking threads. In WAL mode they see the last commit and never block
//!   the writer.
//! - **The body is stored once; parts are ranges.** A bulk send to a million recipients is
//!   kept as the client's body, byte for byte (table `bodies`). A part is a range of item
//!   indices plus the byte range of those elements in the body; [`Store::part_body`]
//!   builds the request for a part from just the bytes it needs, read through SQLite's
//!   incremental BLOB I/O, so sending a 50,000-recipient part never loads the whole body.
//! - **Idempotency keys are claimed with their job.** A job that carries a client's
//!   `Idempotency-Key` ([`NewJob::idempotency`]) claims `(owner, key)` in the same savepoint
//!   as its rows; when a live claim already exists, nothing is written and the existing
//!   job is named instead ([`Inserted::Existing`]). The writer runs one op at a time, so
//!   of two concurrent sends with one key exactly one makes a job.
//! - **Job state is derived.** A job's state follows from how many of its parts are in each
//!   state ([`derive_state`]). The counts and the derived state are kept on the job row and
//!   updated in the same transaction as every part change, so listing jobs by state is an
//!   indexed query and never disagrees with the parts.
//!
//! Durability: with [`Synchronous::Full`] each commit is fsynced before any op in it is
//! answered, so an accepted job survives a power loss. With [`Synchronous::Normal`] (WAL)
//! a process crash still loses nothing, but a power loss or OS crash may lose the last
//! commits.
//!
//! **Security: the data dir holds client API keys at rest.** A job sent with a client's own
//! key keeps that key (column `jobs.api_key`) so that retries after a restart can use it.
//! The store creates the data dir with mode 0700 and the database file with mode 0600
//! (SQLite gives its `-wal` and `-shm` files the database file's mode), and warns if an
//! existing data dir is open to other users. Keys are never logged; records read back for
//! clients ([`JobRecord`]) do not include them; only [`Dispatchable`] (for the sender) does.
//!
//! All timestamps are unix milliseconds passed in by the caller, so tests control time.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

mod changes;
mod housekeeping;
mod idempotency;
pub mod pg;
mod reader;
mod rows;
mod schema;
mod sqlite;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_idempotency;

pub use schema::DB_FILE;
use sqlite::Sqlite;

/// How hard SQLite works to make a commit survive a power loss (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every commit is fsynced before it is acknowledged: nothing accepted is ever lost.
    #[default]
    Full,
    /// Commits are fsynced at checkpoints only: safe against process crashes, but a power
    /// loss may lose the last commits. Faster on slow disks.
    Normal,
}

/// The job store, whichever backend holds it. Share it behind an `Arc`.
pub struct Store {
    backend: Backend,
}

/// Where the jobs live.
enum Backend {
    /// One SQLite file in the data dir (the default).
    Sqlite(Sqlite),
    /// A PostgreSQL database shared by many instances.
    Postgres(Box<pg::Postgres>),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another sluice holds the data dir (it has its lock file locked).
    #[error("the data dir {dir} is in use by pid {pid}: one sluice per data dir (stop it, or give this one its own --data-dir)")]
    InUse { dir: PathBuf, pid: String },
    /// The store could not be opened: the data dir or file cannot be created or written,
    /// the file is not a database, or it was written by a newer sluice.
    #[error("cannot open the job store at {path}: {source}")]
    Open {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// SQLite refused a statement for a reason that is not the disk's (a duplicate job id,
    /// a value too big, an unreadable row).
    #[error("job store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Writing to the disk failed (disk full, I/O error, read-only file...). The change was
    /// not saved, and [`Store::is_writable`] is false until a later commit succeeds. Every
    /// op committed in the same transaction gets the same error.
    #[error("job store: writing failed: {0}")]
    Write(Arc<rusqlite::Error>),
    /// The writer thread or a reader is gone (the store is shutting down, or a lock was
    /// poisoned by a panic).
    #[error("the job store is closed")]
    Closed,
    /// No such job, or no such part in it.
    #[error("no such job or part")]
    NotFound,
    /// The part is in a state that the change does not apply to (say, it was cancelled
    /// while waiting to be sent). Nothing was changed.
    #[error("the part is {0:?}, which this change does not apply to")]
    WrongState(PartState),
    /// PostgreSQL refused a statement or could not be reached.
    #[error("job store (PostgreSQL): {0}")]
    Database(String),
    /// The request itself is malformed (parts that overlap, a split that does not cover
    /// the part, a range outside the body...). Holds the reason.
    #[error("invalid job store request: {0}")]
    Invalid(String),
}

/// A job to store, as the accept path built it.
pub struct NewJob {
    /// 32 random hex characters, made by the caller.
    pub id: String,
    /// [`crate::keys::apikey::KeyId::full`] of the key that created the job, `""` when none.
    pub owner: String,
    /// The key to send with; `None` means the proxy's own key. Stored as a BLOB, never
    /// logged.
    pub api_key: Option<Vec<u8>>,
    /// Name of the route the job came in on.
    pub route: String,
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// Headers to forward with every part.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The client's body, stored once.
    pub body: Bytes,
    /// Byte range of the recipients array in `body`, brackets included; `None` for a
    /// single send (sent as the whole body).
    pub array: Option<Range<u64>>,
    /// The parts, in order of their items; at least one.
    pub parts: Vec<NewPart>,
    /// JSON text kept as is (reserved: recipients skipped by validation).
    pub skipped: Option<String>,
    /// The client's `Idempotency-Key` for this job, claimed with it.
    pub idempotency: Option<NewIdempotency>,
    /// When the job was accepted (unix ms): its `created_at` and `updated_at`.
    pub now_ms: i64,
}

/// A client's `Idempotency-Key`, to be claimed for a new job by its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIdempotency {
    pub key: String,
    /// SHA-256 of the request the key came with.
    pub body_hash: Vec<u8>,
    /// Claims made before this time (unix ms) have expired: they are ignored, and this
    /// one replaces them.
    pub not_before: i64,
}

/// A client's `Idempotency-Key` as stored: the job it made and the request's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub job_id: String,
    pub body_hash: Vec<u8>,
    pub created_at: i64,
}

/// What [`Store::insert_job`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The job is stored (with its idempotency key, if it had one).
    New,
    /// The job's idempotency key is already claimed by a live mapping: nothing was
    /// stored; this is the job that has it.
    Existing(IdempotencyRecord),
}

/// What [`Store::schedule_retry`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
    /// Whether the attempt just made counts against `queue.max_attempts`.
    pub count_attempt: bool,
    /// See [`Dispatchable::reconcile_from`].
    pub reconcile_from: Option<i64>,
    pub blind_resends: u32,
}

/// One part of a [`NewJob`], or one piece of a split part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPart {
    /// Indices of the recipients in this part (non-empty).
    pub items: Range<u64>,
    /// For a bulk job, the byte range in the body from the part's first element's first
    /// byte to its last element's last byte; for a single send, `0..body.len()`.
    pub bytes: Range<u64>,
}

/// Where a part is in its life. `Succeeded`, `Failed` and `Cancelled` are final (until
/// [`Store::retry_failed`] queues failed parts again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartState {
    /// Waiting to be sent (maybe not before its `next_attempt_at`).
    Queued,
    /// Handed to the sender. Found in this state at startup, it was in flight at a crash
    /// and is sent again.
    InFlight,
    Succeeded,
    Failed,
    Cancelled,
    /// Final: the API may or may not have accepted the part. Its answer was lost (a timeout
    /// or a broken connection after the request was written), the API's messages could not
    /// be looked up to tell, and the one resend allowed in that case met the same fate.
    /// Not called failed: sending it again might deliver its recipients twice.
    Uncertain,
}

/// A job's state, derived from its parts by [`derive_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Nothing has been attempted yet.
    Queued,
    /// Some parts are still to be sent, and something was attempted or finished.
    InProgress,
    /// Every part succeeded.
    Succeeded,
    /// Every part is final; some succeeded and some failed or were cancelled.
    PartiallyFailed,
    /// Every part is final and none succeeded (but not all were cancelled).
    Failed,
    /// Every part was cancelled.
    Cancelled,
    /// Every part is final, none failed, and the fate of some is unknown
    /// ([`PartState::Uncertain`]).
    Uncertain,
}

/// How many of a job's parts are in each state, and their attempts added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PartCounts {
    pub queued: u64,
    pub in_flight: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub uncertain: u64,
    /// The sum of every part's `attempts`.
    pub attempts: u64,
}

/// A stored part, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    /// The part's number within its job. Unique and never reused, but not in item order
    /// after a split.
    pub seq: u32,
    pub items: Range<u64>,
    pub bytes: Range<u64>,
    pub state: PartState,
    /// Sends that counted (a 429 does not).
    pub attempts: u32,
    /// HTTP status of the last answer, if one came.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, in words.
    pub last_error: Option<String>,
    /// Not to be sent before this time (unix ms).
    pub next_attempt_at: Option<i64>,
    /// The upstream's final answer, once the part is finished.
    pub response: Option<StoredResponse>,
}

/// The upstream's final answer for a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// A stored job, as shown to its owner. Holds no API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: String,
    pub owner: String,
    pub route: String,
    pub method: String,
    pub path: String,
    pub state: JobState,
    /// Recipients in all parts.
    pub recipients: u64,
    /// Parts per state, for progress without reading the parts.
    pub counts: PartCounts,
    pub created_at: i64,
    pub updated_at: i64,
    pub skipped: Option<String>,
    /// Ordered by `items.start`.
    pub parts: Vec<PartRecord>,
}

/// Everything the sender needs to send one part (its body comes from
/// [`Store::part_body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatchable {
    pub job_id: String,
    pub seq: u32,
    pub owner: String,
    /// The key to send with; `None`: the proxy's own. Never log it.
    pub api_key: Option<Vec<u8>>,
    pub route: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub items: Range<u64>,
    pub bytes: Range<u64>,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    /// The job's `created_at`, for fair ordering.
    pub created_at: i64,
    /// Set while the part's fate is unknown: the start (unix ms) of the first attempt whose
    /// answer was lost, or of the attempt in flight when sluice stopped. Before sending
    /// again, the dispatcher looks for a send made since then.
    pub reconcile_from: Option<i64>,
    /// Resends made because that lookup could not answer (at most one is made).
    pub blind_resends: u32,
    /// Why the last attempt failed, in words.
    pub last_error: Option<String>,
    /// The part is its job's only one (it was never split): it goes up under the client's
    /// own `Idempotency-Key` unchanged.
    pub sole: bool,
    /// The job's row number and its owner's number (see [`Store::claim`]).
    pub job_no: i64,
    pub owner_no: i64,
}

/// What sluice learned about one API key, kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// [`crate::keys::apikey::KeyId::full`] of the key.
    pub key: String,
    /// The key's cooldown ends at this time (unix ms); `None` when it is not cooling down.
    pub cooling_until: Option<i64>,
    /// The `maxAllowed` of the key's last 429.
    pub max_allowed: Option<u64>,
    /// The `availableCapacity` of the key's last 429.
    pub available: Option<u64>,
    /// The key's last 429, replayed to pass-through clients whose deadline passes.
    pub last_429: Option<StoredResponse>,
    pub updated_at: i64,
}

/// Figures for metrics. Every state is listed, with 0 where there is none.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreStats {
    pub jobs: Vec<(JobState, u64)>,
    pub parts: Vec<(PartState, u64)>,
    /// Recipients in parts that are `Queued` or `InFlight`.
    pub recipients_queued: u64,
    /// Age in seconds of the oldest job that has a `Queued` or `InFlight` part, from its
    /// `created_at`; `None` when nothing is waiting.
    pub oldest_queued_secs: Option<f64>,
    /// Size of the database file plus its WAL file.
    pub db_bytes: u64,
}

/// A job's state from its part counts.
///
/// While any part is `Queued` or `InFlight`: `Queued` if nothing was ever attempted (every
/// part has 0 attempts and none is final), else `InProgress`. Once all are final: all
/// succeeded → `Succeeded`; all cancelled → `Cancelled`; none succeeded → `Failed`; some
/// succeeded and some failed or were cancelled → `PartiallyFailed`; some uncertain and
/// none failed → `Uncertain`.
pub fn derive_state(counts: &PartCounts) -> JobState {
    let finished = counts.succeeded + counts.failed + counts.cancelled + counts.uncertain;
    if counts.queued + counts.in_flight > 0 {
        return if counts.attempts == 0 && finished == 0 {
            JobState::Queued
        } else {
            JobState::InProgress
        };
    }
    if counts.succeeded == finished {
        JobState::Succeeded
    } else if counts.cancelled == finished {
        JobState::Cancelled
    } else if counts.uncertain > 0 && counts.failed == 0 {
        JobState::Uncertain
    } else if counts.succeeded == 0 {
        JobState::Failed
    } else {
        JobState::PartiallyFailed
    }
}

// === impl Dispatchable ===

impl Dispatchable {
    /// A one-recipient part of job `j` on route `bulk`, never attempted: for tests.
    #[cfg(test)]
    pub(crate) fn sample() -> Self {
        Self {
            job_id: "j".into(),
            seq: 0,
            owner: String::new(),
            api_key: None,
            route: "bulk".into(),
            method: "POST".into(),
            path: "/".into(),
            headers: Vec::new(),
            items: 0..1,
            bytes: 0..1,
            attempts: 0,
            next_attempt_at: None,
            created_at: 0,
            reconcile_from: None,
            blind_resends: 0,
            last_error: None,
            sole: true,
            job_no: 1,
            owner_no: 1,
        }
    }

    /// The client's request id, kept with the job's headers.
    pub fn request_id(&self) -> Option<String> {
        self.headers
            .iter()
            .find(|(name, _)| name == crate::edge::request_id::HEADER)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

// === impl StoredResponse ===

impl StoredResponse {
    /// An HTTP answer, to be stored.
    pub fn of(status: http::StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Self {
        Self {
            status: status.as_u16(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
        }
    }

    /// The stored headers as a header map (any that are no longer valid are left out).
    pub fn header_map(&self) -> http::HeaderMap {
        let mut map = http::HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(value),
            ) {
                map.append(n, v);
            }
        }
        map
    }
}

// === impl Synchronous ===

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

// === impl Store ===

impl Store {
    /// Opens (or creates) the SQLite store in `dir` (see [`Sqlite::open`]).
    pub fn open(dir: &Path, sync: Synchronous) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Sqlite(Sqlite::open(dir, sync)?),
        })
    }

    /// Opens the PostgreSQL store (see [`pg`]): for many instances sharing one queue.
    pub async fn open_postgres(options: &pg::PgOptions) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Postgres(Box::new(pg::Postgres::open(options).await?)),
        })
    }

    /// The PostgreSQL store, when this is one: what only a cluster needs (leases, the
    /// cluster probe of a key, notifications).
    pub fn cluster(&self) -> Option<&pg::Postgres> {
        match &self.backend {
            Backend::Postgres(p) => Some(p),
            Backend::Sqlite(_) => None,
        }
    }

    /// The SQLite backend, for tests that reach below the store's API.
    #[cfg(test)]
    pub(crate) fn sqlite(&self) -> &Sqlite {
        match &self.backend {
            Backend::Sqlite(s) => s,
            Backend::Postgres(_) => panic!("not a SQLite store"),
        }
    }

    /// Stores a new job, all its parts `Queued`, and claims its idempotency key (if any)
    /// in the same savepoint. Resolves once it is committed. When the key is already
    /// claimed by a mapping made since its `not_before`, nothing is stored and that
    /// mapping is returned ([`Inserted::Existing`]).
    pub async fn insert_job(&self, job: NewJob) -> Result<Inserted, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.insert_job(job).await,
            Backend::Postgres(p) => p.insert_job(job).await,
        }
    }

    /// The job `owner`'s `key` was claimed for, if the claim was made since `not_before`
    /// (unix ms); older claims have expired.
    pub async fn idempotent_job(
        &self,
        owner: &str,
        key: &str,
        not_before: i64,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.idempotent_job(owner, key, not_before).await,
            Backend::Postgres(p) => p.idempotent_job(owner, key, not_before).await,
        }
    }

    /// Deletes at most `limit` expired idempotency mappings (made before `before`, unix
    /// ms), oldest first; returns how many were deleted.
    pub async fn purge_idempotency(&self, before: i64, limit: u32) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.purge_idempotency(before, limit).await,
            Backend::Postgres(p) => p.purge_idempotency(before, limit).await,
        }
    }

    /// The part is being sent: `attempts += 1`, state `InFlight`, `sent_at = now_ms`.
    /// Applies to a `Queued` part, or an `InFlight` one being sent again after a restart;
    /// otherwise
    /// [`StoreError::WrongState`] (e.g. cancelled meanwhile: do not send it).
    pub async fn mark_in_flight(&self, job: &str, seq: u32, now_ms: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.mark_in_flight(job, seq, now_ms).await,
            Backend::Postgres(p) => p.mark_in_flight(job, seq, now_ms).await,
        }
    }

    /// An `InFlight` part goes back to `Queued`, not to be sent before
    /// `retry.next_attempt_at`. `retry.count_attempt: false` (a 429, an unreachable API)
    /// takes back the attempt that [`Store::mark_in_flight`] counted. `reconcile_from` and
    /// `blind_resends` are written as given. If the job was cancelled meanwhile, the part
    /// becomes `Cancelled` instead. Returns the part's new state.
    pub async fn schedule_retry(
        &self,
        job: &str,
        seq: u32,
        retry: Retry,
        now_ms: i64,
    ) -> Result<PartState, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.schedule_retry(job, seq, retry, now_ms).await,
            Backend::Postgres(p) => p.schedule_retry(job, seq, retry, now_ms).await,
        }
    }

    /// A `Queued` (or `InFlight`, after a restart) part that was not sent this turn is
    /// `Queued` again, not to be sent before `next_attempt_at`, with `reconcile_from` and
    /// `blind_resends` as given. Attempts are unchanged.
    pub async fn postpone(
        &self,
        job: &str,
        seq: u32,
        next_attempt_at: i64,
        reconcile_from: Option<i64>,
        blind_resends: u32,
        now_ms: i64,
    ) -> Result<PartState, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                s.postpone(
                    job,
                    seq,
                    next_attempt_at,
                    reconcile_from,
                    blind_resends,
                    now_ms,
                )
                .await
            }
            Backend::Postgres(p) => {
                p.postpone(
                    job,
                    seq,
                    next_attempt_at,
                    reconcile_from,
                    blind_resends,
                    now_ms,
                )
                .await
            }
        }
    }

    /// Records what a lookup decided for an open part about to be sent: `reconcile_from`
    /// (cleared when the API showed the send was not accepted) and `blind_resends`.
    pub async fn note_reconcile(
        &self,
        job: &str,
        seq: u32,
        reconcile_from: Option<i64>,
        blind_resends: u32,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                s.note_reconcile(job, seq, reconcile_from, blind_resends)
                    .await
            }
            Backend::Postgres(p) => {
                p.note_reconcile(job, seq, reconcile_from, blind_resends)
                    .await
            }
        }
    }

    /// A `Queued` or `InFlight` part is final: `state` is `Succeeded`, `Failed` or
    /// `Uncertain` (else [`StoreError::Invalid`]), with the upstream's answer if one came.
    pub async fn finish_part(
        &self,
        job: &str,
        seq: u32,
        state: PartState,
        response: Option<StoredResponse>,
        last_error: Option<String>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                s.finish_part(job, seq, state, response, last_error, now_ms)
                    .await
            }
            Backend::Postgres(p) => {
                p.finish_part(job, seq, state, response, last_error, now_ms)
                    .await
            }
        }
    }

    /// Replaces a `Queued` or `InFlight` part of a bulk job by smaller `Queued` parts,
    /// which keep its attempts and last error. Their items must cover the old part's
    /// exactly, in order, and their bytes lie within its bytes. Returns the new parts'
    /// seqs, in the order given. If the job was cancelled meanwhile, they are `Cancelled`.
    pub async fn split_part(
        &self,
        job: &str,
        seq: u32,
        into: Vec<NewPart>,
        now_ms: i64,
    ) -> Result<Vec<u32>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.split_part(job, seq, into, now_ms).await,
            Backend::Postgres(p) => p.split_part(job, seq, into, now_ms).await,
        }
    }

    /// Cancels the job's `Queued` parts (parts in flight finish, and are not retried).
    /// Returns the recipients and bytes cancelled, or `None` if `owner` has no such job.
    pub async fn cancel_job(
        &self,
        job: &str,
        owner: &str,
        now_ms: i64,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.cancel_job(job, owner, now_ms).await,
            Backend::Postgres(p) => p.cancel_job(job, owner, now_ms).await,
        }
    }

    /// Queues the job's `Failed` parts again (attempts 0, no wait, stored answer cleared),
    /// to be sent with `api_key` (the key of the request asking; `None`: the proxy's own).
    /// This also lifts an earlier [`Store::cancel_job`], so parts sent from now on are
    /// retried as usual; cancelled parts stay cancelled. Returns the re-queued parts' seqs,
    /// or `None` if `owner` has no such job.
    pub async fn retry_failed(
        &self,
        job: &str,
        owner: &str,
        api_key: Option<Vec<u8>>,
        now_ms: i64,
    ) -> Result<Option<Vec<u32>>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.retry_failed(job, owner, api_key, now_ms).await,
            Backend::Postgres(p) => p.retry_failed(job, owner, api_key, now_ms).await,
        }
    }

    /// Deletes at most `limit` finished jobs last changed before `before` (unix ms), oldest
    /// first, with their parts, bodies and idempotency keys. Returns how many.
    pub async fn purge_finished(&self, before: i64, limit: u32) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.purge_finished(before, limit).await,
            Backend::Postgres(p) => p.purge_finished(before, limit).await,
        }
    }

    /// Records what was learned about a key (replacing what was kept before).
    pub async fn save_key(&self, record: KeyRecord) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.save_key(record).await,
            Backend::Postgres(p) => p.save_key(record).await,
        }
    }

    /// Every key's learned state, for the start.
    pub async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.keys().await,
            Backend::Postgres(p) => p.keys().await,
        }
    }

    /// The job with its parts, or `None` if `owner` has no such job.
    pub async fn job(&self, id: &str, owner: &str) -> Result<Option<JobRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.job(id, owner).await,
            Backend::Postgres(p) => p.job(id, owner).await,
        }
    }

    /// The owner's jobs, newest first, at most `limit`, optionally in one state, and only
    /// those before `before` = `(created_at, id)` of the last job of the previous page.
    /// Each comes with its parts, as [`Store::job`] reads them.
    pub async fn list_jobs(
        &self,
        owner: &str,
        state: Option<JobState>,
        limit: u32,
        before: Option<(i64, String)>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.list_jobs(owner, state, limit, before).await,
            Backend::Postgres(p) => p.list_jobs(owner, state, limit, before).await,
        }
    }

    /// This start's run number: parts it takes into memory are marked with it.
    pub fn run(&self) -> i64 {
        match &self.backend {
            Backend::Sqlite(s) => s.run(),
            Backend::Postgres(p) => p.run(),
        }
    }

    /// Takes at most `limit` of the owner's due parts (`next_attempt_at` unset or not after
    /// `now_ms`) that this run has not taken yet, oldest due first, and marks them taken. A
    /// part goes back to being takeable when it is put back in the queue
    /// ([`Store::schedule_retry`], [`Store::postpone`]); at the next start everything is.
    /// A part found `InFlight` was in flight when sluice stopped (see
    /// [`Dispatchable::reconcile_from`]).
    pub async fn claim(
        &self,
        owner_no: i64,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<Dispatchable>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.claim(owner_no, now_ms, limit).await,
            Backend::Postgres(p) => p.claim(owner_no, now_ms, limit).await,
        }
    }

    /// When the owner's next part that this run has not taken is due (unix ms, 0 for
    /// now), if it has one.
    pub async fn next_due(&self, owner_no: i64) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.next_due(owner_no).await,
            Backend::Postgres(p) => p.next_due(owner_no, crate::clock::now_ms()).await,
        }
    }

    /// The owners (numbers and keys) that have parts still to send.
    pub async fn open_owners(&self) -> Result<Vec<(i64, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.open_owners().await,
            Backend::Postgres(p) => p.open_owners().await,
        }
    }

    /// The number of the owner `key` (a [`crate::keys::apikey::KeyId::full`]), if it has jobs.
    pub async fn owner_no(&self, key: &str) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.owner_no(key).await,
            Backend::Postgres(p) => p.owner_no(key).await,
        }
    }

    /// Recipients and bytes in open parts, for the back-pressure figures at start.
    pub async fn backlog(&self) -> Result<(u64, u64), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.backlog().await,
            Backend::Postgres(p) => p.backlog().await,
        }
    }

    /// Every `Queued` or `InFlight` part, oldest job first (an `InFlight` part was in
    /// flight at a crash and is sent again). Loads them all: for tests and tools; the
    /// dispatcher pages with [`Store::claim`].
    pub async fn unfinished(&self) -> Result<Vec<Dispatchable>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.unfinished().await,
            Backend::Postgres(p) => p.unfinished().await,
        }
    }

    /// The given parts of a job, those of them that are `Queued` or `InFlight`, in the
    /// order given (e.g. after [`Store::split_part`] or [`Store::retry_failed`]).
    pub async fn dispatchable(
        &self,
        job: &str,
        seqs: &[u32],
    ) -> Result<Vec<Dispatchable>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.dispatchable(job, seqs).await,
            Backend::Postgres(p) => p.dispatchable(job, seqs).await,
        }
    }

    /// The request body for a part. For a bulk job: the body with its recipients array
    /// replaced by `[` + `body[bytes]` + `]`, built in one allocation of the exact size
    /// from only the byte ranges it needs. For a single send: the whole body (`bytes` is
    /// not used).
    pub async fn part_body(&self, job: &str, bytes: Range<u64>) -> Result<Bytes, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.part_body(job, bytes).await,
            Backend::Postgres(p) => p.part_body(job, bytes).await,
        }
    }

    /// Figures for metrics; see [`StoreStats`]. Counts scan the jobs and parts indexes, so
    /// call it at scrape intervals, not per request.
    pub async fn stats(&self, now_ms: i64) -> Result<StoreStats, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.stats(now_ms).await,
            Backend::Postgres(p) => p.stats(now_ms).await,
        }
    }

    /// False after a write failed for the disk's sake (full, I/O error, read-only), until a
    /// later commit succeeds: for `/readyz`. Every such failure is also logged and returned
    /// to the caller as [`StoreError::Write`].
    pub fn is_writable(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(s) => s.is_writable(),
            Backend::Postgres(p) => p.is_writable(),
        }
    }
}
