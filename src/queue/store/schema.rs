//! Opening the database: the data dir and file modes, pragmas, the schema and its
//! migrations, and the write test that makes an unwritable store fail at open.

use std::error::Error;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::Synchronous;

/// The database file's name in the data dir.
pub const DB_FILE: &str = "sluice.db";

/// The schema version this code writes (`PRAGMA user_version`). Each version's script is
/// in [`MIGRATIONS`]; a database at version N runs the scripts after N, in order.
pub(super) const VERSION: i64 = 5;

/// How long a connection waits for a lock before failing with SQLITE_BUSY. Only the
/// writer writes, so this covers checkpoints and other processes opening the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection (every statement the store uses fits).
const STATEMENT_CACHE: usize = 64;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
///
/// Version 1. `jobs.state` is derived from the `n_*` part counts and `attempts` (the sum of
/// the parts' attempts), which are kept in step with `parts` by every write. The body has
/// its own table so that job rows stay small for listing, and so that its rowid (the job's
/// `no`) can be opened for incremental BLOB reads. States are stored as their snake_case
/// names, readable with the `sqlite3` shell.
///
/// Version 2 (resilience). `parts.sent_at` is when the part's last attempt began;
/// `parts.reconcile_from` is set while the part's fate is unknown (an attempt timed out or
/// lost its connection after the request was written, or sluice was killed with it in
/// flight): before it is sent again, the API's messages are looked up for a send made since
/// then. `parts.blind_resends` counts resends made when that lookup could not answer (at
/// most one). `jobs.n_uncertain` counts parts whose fate stayed unknown. `key_state` keeps
/// what sluice learned about each API key (by fingerprint) across restarts: the end of its
/// cooldown, the API's `maxAllowed`, the room the last 429 reported, and that 429 itself.
///
/// Version 3 (idempotency at the door). `idempotency` maps a client's `Idempotency-Key`,
/// per owner (the key's fingerprint), to the job it created, with the SHA-256 of the
/// request (method, path and decoded body) and when it was made. A row is written in the
/// same savepoint as its job, so neither exists without the other. Rows older than
/// `queue.idempotency_ttl_secs` are ignored and purged, oldest first (`idempotency_created`).
///
/// Version 5 (a queue that lives on disk). The dispatcher no longer loads every open part:
/// it pages due parts in, per owner (API key), a bounded number at a time. `owners` numbers
/// the owners; `parts.owner_no` and the partial index `parts_due` find an owner's due parts
/// in order; `parts.claimed_by` holds the run (a random number per start) that took a part
/// into memory, so the same run does not take it twice, and a new run takes everything.
///
/// Version 4 (bounded state). `counters` keeps how many jobs and parts are in each state,
/// moved by every write in the same transaction, so metrics never scan the tables.
/// `jobs_state_updated` finds finished jobs to purge after `queue.retention_secs`, and
/// `jobs_state_created` the oldest waiting job. A finished job's API key is cleared (it is
/// needed only to send; a replay of a failed part takes it from the request again).
const MIGRATIONS: [&str; VERSION as usize] = [
    "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value
);
CREATE TABLE IF NOT EXISTS jobs (
    no           INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    owner        TEXT NOT NULL,
    route        TEXT NOT NULL,
    method       TEXT NOT NULL,
    path         TEXT NOT NULL,
    state        TEXT NOT NULL,
    recipients   INTEGER NOT NULL,
    n_queued     INTEGER NOT NULL,
    n_in_flight  INTEGER NOT NULL,
    n_succeeded  INTEGER NOT NULL,
    n_failed     INTEGER NOT NULL,
    n_cancelled  INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    cancelled_at INTEGER,
    array_start  INTEGER,
    array_end    INTEGER,
    skipped      TEXT,
    headers      BLOB NOT NULL,
    api_key      BLOB
);
CREATE INDEX IF NOT EXISTS jobs_owner_created ON jobs (owner, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_owner_state_created ON jobs (owner, state, created_at, id);
CREATE TABLE IF NOT EXISTS bodies (
    job_no INTEGER PRIMARY KEY,
    body   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    job_no          INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    item_start      INTEGER NOT NULL,
    item_end        INTEGER NOT NULL,
    byte_start      INTEGER NOT NULL,
    byte_end        INTEGER NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    next_attempt_at INTEGER,
    updated_at      INTEGER NOT NULL,
    resp_status     INTEGER,
    resp_headers    BLOB,
    resp_body       BLOB,
    PRIMARY KEY (job_no, seq)
);
CREATE INDEX IF NOT EXISTS parts_state ON parts (state, job_no);
",
    "
ALTER TABLE parts ADD COLUMN sent_at INTEGER;
ALTER TABLE parts ADD COLUMN reconcile_from INTEGER;
ALTER TABLE parts ADD COLUMN blind_resends INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN n_uncertain INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS key_state (
    key           TEXT PRIMARY KEY,
    cooling_until INTEGER,
    max_allowed   INTEGER,
    available     INTEGER,
    updated_at    INTEGER NOT NULL,
    last_status   INTEGER,
    last_headers  BLOB,
    last_body     BLOB
);
",
    "
CREATE TABLE IF NOT EXISTS idempotency (
    owner      TEXT NOT NULL,
    key        TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    body_hash  BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created_at);
", "
CREATE TABLE IF NOT EXISTS counters (
    kind  TEXT NOT NULL,
    state TEXT NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (kind, state)
);
INSERT OR REPLACE INTO counters (kind, state, n) SELECT 'jobs', state, COUNT(*) FROM jobs GROUP BY state;
INSERT OR REPLACE INTO counters (kind, state, n) SELECT 'parts', state, COUNT(*) FROM parts GROUP BY state;
CREATE INDEX IF NOT EXISTS jobs_state_updated ON jobs (state, updated_at);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at);
UPDATE jobs SET api_key = NULL
 WHERE state IN ('succeeded', 'partially_failed', 'failed', 'cancelled', 'uncertain');
", "
CREATE TABLE IF NOT EXISTS owners (
    no  INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE
);
INSERT OR IGNORE INTO owners (key) SELECT DISTINCT owner FROM jobs;
ALTER TABLE parts ADD COLUMN owner_no INTEGER NOT NULL DEFAULT 0;
UPDATE parts SET owner_no = (
    SELECT o.no FROM jobs j JOIN owners o ON o.key = j.owner WHERE j.no = parts.job_no);
ALTER TABLE parts ADD COLUMN claimed_by INTEGER;
CREATE INDEX IF NOT EXISTS parts_due
    ON parts (owner_no, COALESCE(next_attempt_at, 0), job_no, item_start)
    WHERE state IN ('queued', 'in_flight');
",
];

type BoxError = Box<dyn Error + Send + Sync>;

/// The lock file in the data dir; it holds the pid of the sluice that locked it.
pub const LOCK_FILE: &str = "sluice.lock";

/// Why the data dir could not be locked.
pub(super) enum LockError {
    /// Another process holds it; its pid as written in the lock file.
    InUse(String),
    Io(BoxError),
}

/// Creates the data dir if needed and takes its exclusive lock (`flock`), released when
/// the returned file is closed (at exit, whatever the exit). Writes this process's pid in
/// it for the message another instance shows.
pub(super) fn lock_dir(dir: &Path) -> Result<std::fs::File, LockError> {
    use std::io::{Read, Seek, Write};
    create_private_dir(dir).map_err(LockError::Io)?;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| LockError::Io(format!("cannot open {}: {e}", path.display()).into()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::InUse(if pid.is_empty() {
                "unknown".into()
            } else {
                pid.into()
            }));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(LockError::Io(
                format!("cannot lock {}: {e}", path.display()).into(),
            ))
        }
    }
    // The pid is a courtesy for the message; a full disk must not stop the start.
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()))
        .and_then(|()| file.flush());
    Ok(file)
}

/// Opens the writing connection, creating the file if needed; the flag says whether a
/// test write succeeded (false on a full disk: the store opens, not writable).
pub(super) fn open_writer(
    dir: &Path,
    path: &Path,
    sync: Synchronous,
) -> Result<(Connection, bool), BoxError> {
    create_private_file(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("SQLite would not use WAL mode (journal_mode is {mode:?})").into());
    }
    conn.pragma_update(None, "synchronous", sync.pragma())?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    migrate(&conn)?;
    let writable = match write_test(&conn) {
        Ok(()) => true,
        Err(e) if is_disk_error(&e) => {
            tracing::error!(error = %e, dir = %dir.display(), "the job store cannot be written (is the disk full?); sends are refused until it can, the rest of sluice serves");
            false
        }
        Err(e) => return Err(format!("the write test failed: {e}").into()),
    };
    Ok((conn, writable))
}

/// Whether SQLite failed for the disk's sake (full, I/O error), not the database's.
fn is_disk_error(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure)
    )
}

/// Opens a connection for reads only.
pub(super) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Brings the schema to [`VERSION`] in one transaction; refuses a newer database.
fn migrate(conn: &Connection) -> Result<(), BoxError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > VERSION {
        return Err(format!(
            "the database has schema version {found}, newer than this sluice knows ({VERSION}); \
             it was written by a newer sluice"
        )
        .into());
    }
    let Ok(from) = usize::try_from(found) else {
        return Err(format!("the database has a negative schema version ({found})").into());
    };
    if from == MIGRATIONS.len() {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    for script in &MIGRATIONS[from..] {
        tx.execute_batch(script)?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Writes (and commits) a row, so that a file SQLite opened but cannot write is known now.
fn write_test(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('opens', 1)
         ON CONFLICT (key) DO UPDATE SET value = value + 1",
        [],
    )?;
    Ok(())
}

/// Creates the data dir (and its parents) with mode 0700; warns if it already exists and
/// other users may enter it.
fn create_private_dir(dir: &Path) -> Result<(), BoxError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        let existed = dir.is_dir();
        builder
            .create(dir)
            .map_err(|e| format!("cannot create the data dir {}: {e}", dir.display()))?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if existed && mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{:o}", mode & 0o777),
                "the data dir holds client API keys but other users may read it; chmod 700 it"
            );
        }
    }
    #[cfg(not(unix))]
    builder
        .create(dir)
        .map_err(|e| format!("cannot create the data dir {}: {e}", dir.display()))?;
    Ok(())
}

/// Creates the database file with mode 0600 before SQLite does (SQLite would use 0644
/// less the umask), and tightens the mode of an existing one.
fn create_private_file(path: &Path) -> Result<(), BoxError> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        options
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    Ok(())
}
