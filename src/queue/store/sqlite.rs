//! The SQLite backend of the job store (the default): one file in the data dir, one
//! writer thread with group commit, readers on their own connections. The store's module
//! documentation describes what it owns and why; this file holds its methods.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use bytes::Bytes;
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{
    changes, housekeeping, idempotency, reader, schema, writer, Dispatchable, IdempotencyRecord,
    Inserted, JobRecord, JobState, KeyRecord, NewJob, NewPart, PartState, Retry, StoreError,
    StoreStats, StoredResponse, Synchronous, DB_FILE,
};

/// The job store: a handle on the writer thread and a pool of read connections.
///
/// Share it behind an `Arc`. Dropping it lets the writer finish the ops already sent, then
/// waits for the thread to close the database.
pub struct Sqlite {
    /// Ops for the writer thread; `None` only while dropping.
    writer: Option<mpsc::Sender<Box<dyn writer::Op>>>,
    thread: Option<JoinHandle<()>>,
    readers: Arc<reader::Readers>,
    /// False from a failed write until a later commit succeeds; see [`Store::is_writable`].
    writable: Arc<AtomicBool>,
    /// The data dir's lock, held for the store's life: one sluice per data dir.
    _lock: std::fs::File,
    /// This start's run number (random), see [`Store::claim`].
    run: i64,
}

// === impl Sqlite ===

impl Sqlite {
    /// Opens (or creates) `dir/sluice.db`: creates the dir (mode 0700) and the file (mode
    /// 0600), locks the dir (`sluice.lock`: a second sluice on the same dir gets
    /// [`StoreError::InUse`]), turns on WAL, sets `synchronous`, creates or migrates the
    /// schema, and writes a row as a test. A store that cannot be opened fails here, loudly;
    /// one that opens but cannot be written to (a full disk) opens not writable
    /// ([`Store::is_writable`]), so sends are refused until space returns while the rest of
    /// sluice serves.
    pub fn open(dir: &Path, sync: Synchronous) -> Result<Sqlite, StoreError> {
        let path = dir.join(DB_FILE);
        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let lock = schema::lock_dir(dir).map_err(|e| match e {
            schema::LockError::InUse(pid) => StoreError::InUse {
                dir: dir.to_owned(),
                pid,
            },
            schema::LockError::Io(e) => open_error(e),
        })?;
        let (conn, writable) = schema::open_writer(dir, &path, sync).map_err(open_error)?;
        let readers = Arc::new(reader::Readers::new(path.clone()));
        readers.warm().map_err(|e| open_error(Box::new(e)))?;
        let writable = Arc::new(AtomicBool::new(writable));
        let (ops, queue) = mpsc::channel();
        let flag = Arc::clone(&writable);
        let thread = std::thread::Builder::new()
            .name("sluice-store".into())
            .spawn(move || writer::run(conn, queue, flag))
            .map_err(|e| open_error(Box::new(e)))?;
        Ok(Sqlite {
            writer: Some(ops),
            thread: Some(thread),
            readers,
            writable,
            _lock: lock,
            run: rand::random::<i64>() & i64::MAX,
        })
    }

    /// Stores a new job, all its parts `Queued`, and claims its idempotency key (if any)
    /// in the same savepoint. Resolves once it is committed. When the key is already
    /// claimed by a mapping made since its `not_before`, nothing is stored and that
    /// mapping is returned ([`Inserted::Existing`]).
    pub async fn insert_job(&self, job: NewJob) -> Result<Inserted, StoreError> {
        self.write(move |c| changes::insert_job(c, &job)).await
    }

    /// The job `owner`'s `key` was claimed for, if the claim was made since `not_before`
    /// (unix ms); older claims have expired.
    pub async fn idempotent_job(
        &self,
        owner: &str,
        key: &str,
        not_before: i64,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let (owner, key) = (owner.to_owned(), key.to_owned());
        self.read(move |c| idempotency::lookup(c, &owner, &key, not_before))
            .await
    }

    /// Deletes at most `limit` expired idempotency mappings (made before `before`, unix
    /// ms), oldest first; returns how many were deleted.
    pub async fn purge_idempotency(&self, before: i64, limit: u32) -> Result<usize, StoreError> {
        self.write(move |c| idempotency::purge(c, before, limit))
            .await
    }

    /// The part is being sent: `attempts += 1`, state `InFlight`, `sent_at = now_ms`.
    /// Applies to a `Queued` part, or an `InFlight` one being sent again after a restart;
    /// otherwise
    /// [`StoreError::WrongState`] (e.g. cancelled meanwhile: do not send it).
    pub async fn mark_in_flight(&self, job: &str, seq: u32, now_ms: i64) -> Result<(), StoreError> {
        let job = job.to_owned();
        self.write(move |c| changes::mark_in_flight(c, &job, seq, now_ms))
            .await
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
        let job = job.to_owned();
        self.write(move |c| changes::schedule_retry(c, &job, seq, retry, now_ms))
            .await
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
        let job = job.to_owned();
        self.write(move |c| {
            changes::postpone(
                c,
                &job,
                seq,
                next_attempt_at,
                reconcile_from,
                blind_resends,
                now_ms,
            )
        })
        .await
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
        let job = job.to_owned();
        self.write(move |c| changes::note_reconcile(c, &job, seq, reconcile_from, blind_resends))
            .await
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
        let job = job.to_owned();
        self.write(move |c| changes::finish_part(c, &job, seq, state, response, last_error, now_ms))
            .await
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
        let job = job.to_owned();
        self.write(move |c| changes::split_part(c, &job, seq, &into, now_ms))
            .await
    }

    /// Cancels the job's `Queued` parts (parts in flight finish, and are not retried).
    /// Returns the recipients and bytes cancelled, or `None` if `owner` has no such job.
    pub async fn cancel_job(
        &self,
        job: &str,
        owner: &str,
        now_ms: i64,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let (job, owner) = (job.to_owned(), owner.to_owned());
        self.write(move |c| changes::cancel_job(c, &job, &owner, now_ms))
            .await
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
        let (job, owner) = (job.to_owned(), owner.to_owned());
        self.write(move |c| changes::retry_failed(c, &job, &owner, api_key, now_ms))
            .await
    }

    /// Deletes at most `limit` finished jobs last changed before `before` (unix ms), oldest
    /// first, with their parts, bodies and idempotency keys. Returns how many.
    pub async fn purge_finished(&self, before: i64, limit: u32) -> Result<usize, StoreError> {
        self.write(move |c| housekeeping::purge_finished(c, before, limit))
            .await
    }

    /// Records what was learned about a key (replacing what was kept before).
    pub async fn save_key(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.write(move |c| changes::save_key(c, &record)).await
    }

    /// Every key's learned state, for the start.
    pub async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(reader::keys).await
    }

    /// The job with its parts, or `None` if `owner` has no such job.
    pub async fn job(&self, id: &str, owner: &str) -> Result<Option<JobRecord>, StoreError> {
        let (id, owner) = (id.to_owned(), owner.to_owned());
        self.read(move |c| reader::job(c, &id, &owner)).await
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
        let owner = owner.to_owned();
        self.read(move |c| reader::list_jobs(c, &owner, state, limit, before.as_ref()))
            .await
    }

    /// This start's run number: parts it takes into memory are marked with it.
    pub fn run(&self) -> i64 {
        self.run
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
        let run = self.run;
        self.write(move |c| changes::claim(c, owner_no, now_ms, run, limit))
            .await
    }

    /// When the owner's next part that this run has not taken is due (unix ms, 0 for
    /// now), if it has one.
    pub async fn next_due(&self, owner_no: i64) -> Result<Option<i64>, StoreError> {
        let run = self.run;
        self.read(move |c| reader::next_due(c, owner_no, run)).await
    }

    /// The owners (numbers and keys) that have parts still to send.
    pub async fn open_owners(&self) -> Result<Vec<(i64, String)>, StoreError> {
        self.read(reader::open_owners).await
    }

    /// The number of the owner `key` (a [`crate::keys::apikey::KeyId::full`]), if it has jobs.
    pub async fn owner_no(&self, key: &str) -> Result<Option<i64>, StoreError> {
        let key = key.to_owned();
        self.read(move |c| reader::owner_no(c, &key)).await
    }

    /// Recipients and bytes in open parts, for the back-pressure figures at start.
    pub async fn backlog(&self) -> Result<(u64, u64), StoreError> {
        self.read(reader::backlog).await
    }

    /// Every `Queued` or `InFlight` part, oldest job first (an `InFlight` part was in
    /// flight at a crash and is sent again). Loads them all: for tests and tools; the
    /// dispatcher pages with [`Store::claim`].
    pub async fn unfinished(&self) -> Result<Vec<Dispatchable>, StoreError> {
        self.read(reader::unfinished).await
    }

    /// The given parts of a job, those of them that are `Queued` or `InFlight`, in the
    /// order given (e.g. after [`Store::split_part`] or [`Store::retry_failed`]).
    pub async fn dispatchable(
        &self,
        job: &str,
        seqs: &[u32],
    ) -> Result<Vec<Dispatchable>, StoreError> {
        let (job, seqs) = (job.to_owned(), seqs.to_vec());
        self.read(move |c| reader::dispatchable(c, &job, &seqs))
            .await
    }

    /// The request body for a part. For a bulk job: the body with its recipients array
    /// replaced by `[` + `body[bytes]` + `]`, built in one allocation of the exact size
    /// from only the byte ranges it needs. For a single send: the whole body (`bytes` is
    /// not used).
    pub async fn part_body(&self, job: &str, bytes: Range<u64>) -> Result<Bytes, StoreError> {
        let job = job.to_owned();
        self.read(move |c| reader::part_body(c, &job, bytes)).await
    }

    /// Figures for metrics; see [`StoreStats`]. Counts scan the jobs and parts indexes, so
    /// call it at scrape intervals, not per request.
    pub async fn stats(&self, now_ms: i64) -> Result<StoreStats, StoreError> {
        let path = self.readers.path().to_owned();
        self.read(move |c| reader::stats(c, &path, now_ms)).await
    }

    /// False after a write failed for the disk's sake (full, I/O error, read-only), until a
    /// later commit succeeds: for `/readyz`. Every such failure is also logged and returned
    /// to the caller as [`StoreError::Write`].
    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Sends `work` to the writer thread and waits for its commit.
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let ops = self.writer.as_ref().ok_or(StoreError::Closed)?;
        ops.send(writer::op(work, reply))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `work` on a read connection on tokio's blocking pool.
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        match tokio::task::spawn_blocking(move || readers.run(work)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it has committed what was sent.
        drop(self.writer.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the job store's writer thread panicked");
            }
        }
    }
}
