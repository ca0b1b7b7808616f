//! The writer thread: one connection, every change, group commit.
//!
//! [`run`] owns the only writing connection. It blocks for one op, then takes every other
//! op already waiting (up to [`MAX_BATCH`]), and runs them all in one `BEGIN IMMEDIATE` ..
//! `COMMIT`, each inside `SAVEPOINT op`: an op that fails is rolled back to its savepoint
//! alone and answered with its error, the others are kept. After the commit returns, each
//! op is answered. If the transaction as a whole fails (the commit, or a disk error that
//! made SQLite abort it), nothing of it is saved and every op that had succeeded is
//! answered [`StoreError::Write`].
//!
//! The changes themselves are in [`super::changes`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::StoreError;

/// The most ops committed in one transaction, to bound an op's wait behind others.
const MAX_BATCH: usize = 4096;

/// A write waiting for the writer thread, with the channel its answer goes to.
pub(super) trait Op: Send {
    /// Runs the write on `conn`, inside the batch's transaction, and keeps its result.
    fn run(&mut self, conn: &Connection) -> Outcome;
    /// Sends the kept result, or the batch's error if the transaction was lost.
    fn answer(self: Box<Self>, lost: Option<&Arc<rusqlite::Error>>);
}

/// How an op went.
pub(super) enum Outcome {
    Done,
    /// Refused for its own reasons (not found, wrong state, invalid, a constraint).
    Refused,
    /// The disk failed.
    Failed(Arc<rusqlite::Error>),
}

/// An [`Op`] made of a closure and a oneshot channel.
struct Task<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

/// Wraps `work` and the channel for its answer as an op for the writer.
pub(super) fn op<T, F>(work: F, reply: oneshot::Sender<Result<T, StoreError>>) -> Box<dyn Op>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    Box::new(Task {
        work: Some(work),
        result: None,
        reply,
    })
}

/// The writer thread's loop; returns when every sender is gone and the queue is empty.
pub(super) fn run(conn: Connection, ops: mpsc::Receiver<Box<dyn Op>>, writable: Arc<AtomicBool>) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let lost = match run_batch(&conn, &mut batch) {
            Ok(true) => {
                writable.store(false, Ordering::Release);
                None
            }
            Ok(false) => {
                if !writable.swap(true, Ordering::AcqRel) {
                    tracing::info!("the job store can be written again");
                }
                None
            }
            Err(e) => {
                tracing::error!(error = %e, ops = batch.len(), "job store commit failed; nothing of it was saved");
                writable.store(false, Ordering::Release);
                if !conn.is_autocommit() {
                    if let Err(e) = conn.execute_batch("ROLLBACK") {
                        tracing::error!(error = %e, "job store rollback failed");
                    }
                }
                Some(e)
            }
        };
        for op in batch {
            op.answer(lost.as_ref());
        }
    }
}

/// Runs `batch` in one transaction and commits it. `Ok(true)`: committed, but some op
/// failed for the disk's sake. `Err`: nothing was committed.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn Op>]) -> Result<bool, Arc<rusqlite::Error>> {
    let exec = |sql: &str| -> Result<(), Arc<rusqlite::Error>> {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map_err(Arc::new)?;
        Ok(())
    };
    exec("BEGIN IMMEDIATE")?;
    let mut disk_failed = false;
    for op in batch.iter_mut() {
        exec("SAVEPOINT op")?;
        match op.run(conn) {
            Outcome::Done => exec("RELEASE op")?,
            outcome => {
                if let Outcome::Failed(e) = &outcome {
                    tracing::error!(error = %e, "job store write failed; the store is not writable");
                    disk_failed = true;
                }
                if conn.is_autocommit() {
                    // SQLite rolled the whole transaction back (it does so on some I/O
                    // errors): the ops before this one are lost too.
                    return Err(match outcome {
                        Outcome::Failed(e) => e,
                        _ => Arc::new(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                            Some("the transaction was rolled back".into()),
                        )),
                    });
                }
                exec("ROLLBACK TO op")?;
                exec("RELEASE op")?;
            }
        }
    }
    exec("COMMIT")?;
    Ok(disk_failed)
}

// === impl Task ===

impl<T, F> Op for Task<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> Outcome {
        let Some(work) = self.work.take() else {
            return Outcome::Refused;
        };
        let result = work(conn).map_err(|e| match e {
            StoreError::Sqlite(e) if is_disk_failure(&e) => StoreError::Write(Arc::new(e)),
            other => other,
        });
        let outcome = match &result {
            Ok(_) => Outcome::Done,
            Err(StoreError::Write(e)) => Outcome::Failed(Arc::clone(e)),
            Err(_) => Outcome::Refused,
        };
        self.result = Some(result);
        outcome
    }

    fn answer(self: Box<Self>, lost: Option<&Arc<rusqlite::Error>>) {
        let result = match (self.result, lost) {
            (Some(Err(e)), _) => Err(e),
            (_, Some(e)) => Err(StoreError::Write(Arc::clone(e))),
            (Some(ok), None) => ok,
            (None, None) => Err(StoreError::Closed),
        };
        // The caller may have stopped waiting; the change stands either way.
        let _ = self.reply.send(result);
    }
}

/// Whether an error means the disk or the file failed, rather than the op being refused.
fn is_disk_failure(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(
            InternalMalfunction
                | PermissionDenied
                | DatabaseBusy
                | DatabaseLocked
                | OutOfMemory
                | ReadOnly
                | SystemIoFailure
                | DatabaseCorrupt
                | DiskFull
                | CannotOpen
                | FileLockingProtocolFailed
                | NoLargeFileSupport
                | NotADatabase
        )
    )
}
