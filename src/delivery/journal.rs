//! `journal.db`: the delivery tracker's and the support journal's own SQLite file in the
//! data dir, apart from the job store (which may be PostgreSQL). WAL mode, so
//! `sluice support` reads it while `serve` writes.
//!
//! - **One writer thread.** Every change is an [`Op`] on a bounded channel to one thread
//!   that owns the writing connection; it takes every op waiting, applies them in one
//!   transaction and answers those that asked. Senders never block: when the channel is
//!   full an op is dropped and counted (the journal must never slow a send).
//! - **Readers** share one read-only connection behind a mutex, used from blocking threads.
//! - **Bounded.** [`Op::Purge`] deletes events, finished messages and campaigns older than
//!   the retention, and the oldest events past `max_events`.
//!
//! The file holds client API keys (to keep looking messages up after a restart) like the
//! job store does: it is created with mode 0600 in the 0700 data dir. Request bodies are
//! stored sanitized only (`sanitize.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::policy::{Counters, Observed};

/// The journal's file name in the data dir.
pub const FILE: &str = "journal.db";
/// Ops waiting for the writer at most; more are dropped.
const CAPACITY: usize = 65_536;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Open {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("journal: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the journal is closed")]
    Closed,
}

/// What happened to a request, as journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The client's send, accepted as a job.
    Send,
    /// One attempt to the API and its answer.
    Attempt,
    /// A wait sluice made before the next attempt.
    Wait,
    /// The part's final state.
    Final,
}

/// One journal event, to write.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub request_id: String,
    pub owner: String,
    pub job_id: Option<String>,
    pub at: i64,
    pub kind: Option<Kind>,
    pub part: Option<u32>,
    pub attempt: Option<u32>,
    pub method: Option<String>,
    pub path: Option<String>,
    /// The raw body (sanitized by the writer) and its recipients pointer, for a send.
    pub body: Option<(bytes::Bytes, Option<String>)>,
    pub status: Option<u16>,
    /// The API's answer body, for an error answer.
    pub answer: Option<String>,
    /// An error, a reason, a state, in words.
    pub note: Option<String>,
    pub wait_ms: Option<i64>,
}

/// One journal event, as read back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventRow {
    pub owner: String,
    pub job_id: Option<String>,
    pub at: i64,
    pub kind: String,
    pub part: Option<u32>,
    pub attempt: Option<u32>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub body: Option<String>,
    pub status: Option<u16>,
    pub answer: Option<String>,
    pub note: Option<String>,
    pub wait_ms: Option<i64>,
}

/// A single send followed until it is delivered or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub job_id: String,
    pub owner: String,
    pub request_id: Option<String>,
    /// The key to look it up with; `None`: sluice's own. Never shown.
    pub api_key: Option<Vec<u8>>,
    /// The messages query, filled in.
    pub lookup: String,
    pub message_id: Option<String>,
    pub channel: Option<String>,
    pub accepted_at: i64,
    pub polls: u32,
    pub next_poll_at: i64,
}

/// A campaign followed by its counters, for bulk jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub owner: String,
    pub campaign_id: String,
    pub api_key: Option<Vec<u8>>,
    /// The campaign's GET path, filled in.
    pub path: String,
    pub channel: Option<String>,
    pub accepted_at: i64,
    pub polls: u32,
    pub next_poll_at: i64,
}

/// What an accepted send will be followed by, known when the job is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A single send: the messages query, filled in.
    Message { lookup: String },
    /// A bulk send: its campaign and the campaign's GET path, filled in.
    Campaign { campaign_id: String, path: String },
}

/// A part of a job the API accepted: start (or resume) following what the job expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub job_id: String,
    pub owner: String,
    pub request_id: Option<String>,
    /// The key to look it up with; `None`: sluice's own. Never shown.
    pub api_key: Option<Vec<u8>>,
    /// The `messageId` of the API's answer to a single send.
    pub message_id: Option<String>,
    pub at: i64,
    pub next_poll_at: i64,
}

/// A change for the writer.
pub enum Op {
    Event(Event),
    Expect {
        job_id: String,
        expect: Expect,
        channel: Option<String>,
        at: i64,
    },
    Accepted(Accepted),
    /// A message looked up: its status; `next_poll_at` `None` when it is final (or given
    /// up). Answers whether it became final with this op.
    Seen {
        job_id: String,
        seen: Option<Observed>,
        at: i64,
        next_poll_at: Option<i64>,
        reply: Option<oneshot::Sender<bool>>,
    },
    CampaignSeen {
        owner: String,
        campaign_id: String,
        counters: Option<Counters>,
        at: i64,
        next_poll_at: Option<i64>,
    },
    Purge {
        before: i64,
        max_events: u64,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// Answers once every op sent before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Campaign counters summed over the campaigns followed, for the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    pub active: u64,
    pub finished: u64,
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub sms_fallback_delivered: u64,
}

/// The writer's channel and a reader; share it behind an `Arc`.
pub struct Journal {
    tx: SyncSender<Op>,
    reader: Mutex<Connection>,
    dropped: std::sync::atomic::AtomicU64,
}

// === impl Journal ===

impl Journal {
    /// Opens (creating) `journal.db` in `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> Result<Arc<Self>, JournalError> {
        let path = dir.join(FILE);
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| JournalError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.into()))?;
        create_private(&path).map_err(|e| fail(e.into()))?;
        let writer = Connection::open(&path).map_err(|e| fail(e.into()))?;
        writer.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(fail(
                format!("SQLite would not use WAL (journal_mode {mode})").into(),
            ));
        }
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        writer.execute_batch(SCHEMA)?;
        let reader = open_reader(&path)?;
        let (tx, rx) = mpsc::sync_channel(CAPACITY);
        std::thread::Builder::new()
            .name("sluice-journal".into())
            .spawn(move || write_loop(writer, rx))
            .map_err(|e| fail(e.into()))?;
        Ok(Arc::new(Self {
            tx,
            reader: Mutex::new(reader),
            dropped: Default::default(),
        }))
    }

    /// Hands an op to the writer; never blocks: false when it was dropped (the channel
    /// full, or the writer gone).
    pub fn send(&self, op: Op) -> bool {
        match self.tx.try_send(op) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                let n = self
                    .dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped = n + 1,
                        "the journal's writer is behind; entries dropped"
                    );
                }
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Waits until every op sent so far is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Flush(tx));
        let _ = rx.await;
    }

    /// Runs `f` on the reader connection, off the runtime.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, JournalError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = me.reader.lock().map_err(|_| JournalError::Closed)?;
            f(&conn).map_err(JournalError::from)
        })
        .await
        .map_err(|_| JournalError::Closed)?
    }
}

/// Opens `journal.db` in `dir` for reading only (`sluice support`, while `serve` runs).
pub fn open_reader_in(dir: &Path) -> Result<Connection, JournalError> {
    let path = dir.join(FILE);
    if !path.exists() {
        return Err(JournalError::Open {
            path,
            source: "no journal here (is this sluice's data dir?)".into(),
        });
    }
    open_reader(&path)
}

fn open_reader(path: &Path) -> Result<Connection, JournalError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        options.open(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    options.open(path)?;
    Ok(())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, owner TEXT NOT NULL, job_id TEXT,
    at INTEGER NOT NULL, kind TEXT NOT NULL, part INTEGER, attempt INTEGER, method TEXT,
    path TEXT, body TEXT, status INTEGER, answer TEXT, note TEXT, wait_ms INTEGER);
CREATE INDEX IF NOT EXISTS events_request ON events(request_id, id);
CREATE INDEX IF NOT EXISTS events_at ON events(at);
CREATE TABLE IF NOT EXISTS messages (
    job_id TEXT PRIMARY KEY, owner TEXT NOT NULL, request_id TEXT, api_key BLOB,
    lookup TEXT NOT NULL, message_id TEXT, channel TEXT, accepted_at INTEGER NOT NULL,
    polls INTEGER NOT NULL DEFAULT 0, next_poll_at INTEGER, status TEXT NOT NULL DEFAULT 'Pending',
    code INTEGER, error TEXT, via_fallback INTEGER, checked_at INTEGER, final_at INTEGER,
    updated_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS messages_due ON messages(next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_updated ON messages(updated_at);
CREATE TABLE IF NOT EXISTS campaigns (
    owner TEXT NOT NULL, campaign_id TEXT NOT NULL, api_key BLOB, path TEXT NOT NULL,
    channel TEXT, status TEXT, sent INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, fallback INTEGER NOT NULL DEFAULT 0,
    accepted_at INTEGER NOT NULL, polls INTEGER NOT NULL DEFAULT 0, next_poll_at INTEGER,
    checked_at INTEGER, updated_at INTEGER NOT NULL, PRIMARY KEY (owner, campaign_id));
CREATE INDEX IF NOT EXISTS campaigns_due ON campaigns(next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS expected (
    job_id TEXT PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, campaign_id TEXT,
    channel TEXT, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS job_campaigns (
    job_id TEXT PRIMARY KEY, owner TEXT NOT NULL, campaign_id TEXT NOT NULL, at INTEGER NOT NULL);
";

// === the writer ===

fn write_loop(mut conn: Connection, rx: Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
            if ops.len() >= 4096 {
                break;
            }
        }
        let mut replies: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
        let result = conn.transaction().and_then(|tx| {
            for op in ops {
                apply(&tx, op, &mut replies)?;
            }
            tx.commit()
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot write the journal");
        }
        for reply in replies {
            reply();
        }
    }
}

fn apply(
    c: &Connection,
    op: Op,
    replies: &mut Vec<Box<dyn FnOnce() + Send>>,
) -> rusqlite::Result<()> {
    match op {
        Op::Event(e) => {
            let body = e
                .body
                .map(|(bytes, pointer)| super::sanitize::body(&bytes, pointer.as_deref()));
            let kind = match e.kind.unwrap_or(Kind::Attempt) {
                Kind::Send => "send",
                Kind::Attempt => "attempt",
                Kind::Wait => "wait",
                Kind::Final => "final",
            };
            c.prepare_cached(
                "INSERT INTO events (request_id, owner, job_id, at, kind, part, attempt, method,
                 path, body, status, answer, note, wait_ms) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)",
            )?
            .execute(params![
                e.request_id, e.owner, e.job_id, e.at, kind, e.part, e.attempt, e.method,
                e.path, body, e.status, e.answer, e.note, e.wait_ms
            ])?;
        }
        Op::Expect {
            job_id,
            expect,
            channel,
            at,
        } => {
            let (kind, target, campaign) = match expect {
                Expect::Message { lookup } => ("message", lookup, None),
                Expect::Campaign { campaign_id, path } => ("campaign", path, Some(campaign_id)),
            };
            c.prepare_cached(
                "INSERT OR REPLACE INTO expected (job_id, kind, target, campaign_id, channel, at)
                 VALUES (?1,?2,?3,?4,?5,?6)",
            )?
            .execute(params![job_id, kind, target, campaign, channel, at])?;
        }
        Op::Accepted(a) => accept(c, &a)?,
        Op::Seen {
            job_id,
            seen,
            at,
            next_poll_at,
            reply,
        } => {
            let was_final: Option<Option<i64>> = c
                .prepare_cached("SELECT final_at FROM messages WHERE job_id = ?1")?
                .query_row([&job_id], |r| r.get(0))
                .optional()?;
            let final_now = next_poll_at.is_none();
            let became = final_now && matches!(was_final, Some(None));
            match &seen {
                Some(o) => c
                    .prepare_cached(
                        "UPDATE messages SET status=?2, code=?3, error=?4, via_fallback=?5,
                     message_id=coalesce(message_id, ?6), channel=coalesce(?7, channel),
                     polls=polls+1, checked_at=?8, next_poll_at=?9,
                     final_at=CASE WHEN ?9 IS NULL THEN coalesce(final_at, ?8) END, updated_at=?8
                     WHERE job_id=?1",
                    )?
                    .execute(params![
                        job_id,
                        o.status,
                        o.code,
                        o.error,
                        o.via_fallback,
                        o.message_id,
                        o.channel,
                        at,
                        next_poll_at
                    ])?,
                None => c
                    .prepare_cached(
                        "UPDATE messages SET polls=polls+1, checked_at=?2, next_poll_at=?3,
                     final_at=CASE WHEN ?3 IS NULL THEN coalesce(final_at, ?2) END, updated_at=?2
                     WHERE job_id=?1",
                    )?
                    .execute(params![job_id, at, next_poll_at])?,
            };
            if let Some(reply) = reply {
                replies.push(Box::new(move || {
                    let _ = reply.send(became);
                }));
            }
        }
        Op::CampaignSeen {
            owner,
            campaign_id,
            counters,
            at,
            next_poll_at,
        } => {
            match counters {
                Some(k) => c.prepare_cached(
                    "UPDATE campaigns SET status=?3, channel=coalesce(?4, channel), sent=?5,
                     delivered=?6, failed=?7, fallback=?8, polls=polls+1, checked_at=?9,
                     next_poll_at=?10, updated_at=?9 WHERE owner=?1 AND campaign_id=?2",
                )?
                .execute(params![
                    owner, campaign_id, k.status, k.channel, k.sent_count as i64,
                    k.delivered_count as i64, k.failed_count as i64,
                    k.sms_fallback_delivered_count as i64, at, next_poll_at
                ])?,
                None => c.prepare_cached(
                    "UPDATE campaigns SET polls=polls+1, checked_at=?3, next_poll_at=?4, updated_at=?3
                     WHERE owner=?1 AND campaign_id=?2",
                )?
                .execute(params![owner, campaign_id, at, next_poll_at])?,
            };
        }
        Op::Purge {
            before,
            max_events,
            reply,
        } => {
            let result = purge(c, before, max_events).map_err(|e| e.to_string());
            replies.push(Box::new(move || {
                let _ = reply.send(result);
            }));
        }
        Op::Flush(reply) => replies.push(Box::new(move || {
            let _ = reply.send(());
        })),
    }
    Ok(())
}

/// Starts following what an accepted part's job expects (nothing if it expects nothing).
fn accept(c: &Connection, a: &Accepted) -> rusqlite::Result<()> {
    let expected: Option<(String, String, Option<String>, Option<String>)> = c
        .prepare_cached(
            "SELECT kind, target, campaign_id, channel FROM expected WHERE job_id = ?1",
        )?
        .query_row([&a.job_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    match expected {
        None => {}
        Some((kind, lookup, _, channel)) if kind == "message" => {
            c.prepare_cached(
                "INSERT INTO messages (job_id, owner, request_id, api_key, lookup, message_id, channel,
                 accepted_at, polls, next_poll_at, status, updated_at)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,0,?9,'Pending',?8)
                 ON CONFLICT(job_id) DO UPDATE SET api_key=excluded.api_key,
                 message_id=excluded.message_id, accepted_at=excluded.accepted_at, polls=0,
                 next_poll_at=excluded.next_poll_at, status='Pending', code=NULL, error=NULL,
                 via_fallback=NULL, checked_at=NULL, final_at=NULL, updated_at=excluded.updated_at",
            )?
            .execute(params![
                a.job_id, a.owner, a.request_id, a.api_key, lookup, a.message_id, channel, a.at,
                a.next_poll_at
            ])?;
        }
        Some((_, path, campaign, channel)) => {
            let campaign = campaign.unwrap_or_default();
            c.prepare_cached(
                "INSERT INTO campaigns (owner, campaign_id, api_key, path, channel, accepted_at,
                 polls, next_poll_at, updated_at) VALUES (?1,?2,?3,?4,?5,?6,0,?7,?6)
                 ON CONFLICT(owner, campaign_id) DO UPDATE SET api_key=excluded.api_key,
                 path=excluded.path, accepted_at=excluded.accepted_at, polls=0,
                 next_poll_at=excluded.next_poll_at, updated_at=excluded.updated_at",
            )?
            .execute(params![
                a.owner,
                campaign,
                a.api_key,
                path,
                channel,
                a.at,
                a.next_poll_at
            ])?;
            c.prepare_cached(
                "INSERT OR REPLACE INTO job_campaigns (job_id, owner, campaign_id, at) VALUES (?1,?2,?3,?4)",
            )?
            .execute(params![a.job_id, a.owner, campaign, a.at])?;
        }
    }
    Ok(())
}

fn purge(c: &Connection, before: i64, max_events: u64) -> rusqlite::Result<usize> {
    let mut n = c.execute("DELETE FROM events WHERE at < ?1", [before])?;
    let count: i64 = c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    let over = count - max_events as i64;
    if over > 0 {
        n += c.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?1)",
            [over],
        )?;
    }
    n += c.execute(
        "DELETE FROM messages WHERE updated_at < ?1 AND (next_poll_at IS NULL OR accepted_at < ?1)",
        [before],
    )?;
    n += c.execute("DELETE FROM campaigns WHERE updated_at < ?1", [before])?;
    n += c.execute("DELETE FROM job_campaigns WHERE at < ?1", [before])?;
    n += c.execute("DELETE FROM expected WHERE at < ?1", [before])?;
    Ok(n)
}

// === reads ===

/// Every event of `request_id` (of `owner` when given), oldest first.
pub fn events(
    c: &Connection,
    request_id: &str,
    owner: Option<&str>,
) -> rusqlite::Result<Vec<EventRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT owner, job_id, at, kind, part, attempt, method, path, body, status, answer, note, wait_ms
         FROM events WHERE request_id = ?1 AND (?2 IS NULL OR owner = ?2) ORDER BY id",
    )?;
    let rows = stmt.query_map(params![request_id, owner], |r| {
        Ok(EventRow {
            owner: r.get(0)?,
            job_id: r.get(1)?,
            at: r.get(2)?,
            kind: r.get(3)?,
            part: r.get(4)?,
            attempt: r.get(5)?,
            method: r.get(6)?,
            path: r.get(7)?,
            body: r.get(8)?,
            status: r.get(9)?,
            answer: r.get(10)?,
            note: r.get(11)?,
            wait_ms: r.get(12)?,
        })
    })?;
    rows.collect()
}

/// Single sends due for a lookup at `now`, soonest first.
pub fn due_messages(c: &Connection, now: i64, limit: u32) -> rusqlite::Result<Vec<Tracked>> {
    let mut stmt = c.prepare_cached(
        "SELECT job_id, owner, request_id, api_key, lookup, message_id, channel, accepted_at, polls,
         next_poll_at FROM messages WHERE next_poll_at IS NOT NULL AND next_poll_at <= ?1
         ORDER BY next_poll_at LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now, limit], |r| {
        Ok(Tracked {
            job_id: r.get(0)?,
            owner: r.get(1)?,
            request_id: r.get(2)?,
            api_key: r.get(3)?,
            lookup: r.get(4)?,
            message_id: r.get(5)?,
            channel: r.get(6)?,
            accepted_at: r.get(7)?,
            polls: r.get(8)?,
            next_poll_at: r.get(9)?,
        })
    })?;
    rows.collect()
}

/// Campaigns due for a look at `now`, soonest first.
pub fn due_campaigns(c: &Connection, now: i64, limit: u32) -> rusqlite::Result<Vec<Campaign>> {
    let mut stmt = c.prepare_cached(
        "SELECT owner, campaign_id, api_key, path, channel, accepted_at, polls, next_poll_at
         FROM campaigns WHERE next_poll_at IS NOT NULL AND next_poll_at <= ?1
         ORDER BY next_poll_at LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now, limit], |r| {
        Ok(Campaign {
            owner: r.get(0)?,
            campaign_id: r.get(1)?,
            api_key: r.get(2)?,
            path: r.get(3)?,
            channel: r.get(4)?,
            accepted_at: r.get(5)?,
            polls: r.get(6)?,
            next_poll_at: r.get(7)?,
        })
    })?;
    rows.collect()
}

/// The soonest time anything is due, if anything is followed.
pub fn next_due(c: &Connection) -> rusqlite::Result<Option<i64>> {
    c.query_row(
        "SELECT min(t) FROM (SELECT min(next_poll_at) AS t FROM messages
         UNION ALL SELECT min(next_poll_at) FROM campaigns)",
        [],
        |r| r.get(0),
    )
}

/// The campaign counters summed, for the gauges.
pub fn sums(c: &Connection) -> rusqlite::Result<Sums> {
    c.query_row(
        "SELECT count(*) FILTER (WHERE next_poll_at IS NOT NULL), count(*) FILTER (WHERE next_poll_at IS NULL),
         coalesce(sum(sent),0), coalesce(sum(delivered),0), coalesce(sum(failed),0), coalesce(sum(fallback),0)
         FROM campaigns",
        [],
        |r| {
            Ok(Sums {
                active: count(r, 0)?,
                finished: count(r, 1)?,
                sent: count(r, 2)?,
                delivered: count(r, 3)?,
                failed: count(r, 4)?,
                sms_fallback_delivered: count(r, 5)?,
            })
        },
    )
}

/// A count column (never negative).
fn count(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(r.get::<_, i64>(i)?.max(0) as u64)
}

/// The `delivery` JSON of each of `jobs` that has one.
pub fn views(
    c: &Connection,
    jobs: &[String],
) -> rusqlite::Result<HashMap<String, serde_json::Value>> {
    let mut out = HashMap::new();
    let mut single = c.prepare_cached(
        "SELECT status, code, error, via_fallback, message_id, channel, checked_at, final_at, next_poll_at
         FROM messages WHERE job_id = ?1",
    )?;
    let mut bulk = c.prepare_cached(
        "SELECT c.campaign_id, c.status, c.sent, c.delivered, c.failed, c.fallback, c.checked_at, c.next_poll_at
         FROM job_campaigns j JOIN campaigns c ON c.owner = j.owner AND c.campaign_id = j.campaign_id
         WHERE j.job_id = ?1",
    )?;
    for job in jobs {
        let view = single
            .query_row([job], |r| {
                Ok(super::view::single(super::view::Message {
                    status: r.get(0)?,
                    code: r.get(1)?,
                    error: r.get(2)?,
                    via_fallback: r.get(3)?,
                    message_id: r.get(4)?,
                    channel: r.get(5)?,
                    checked_at: r.get(6)?,
                    final_at: r.get(7)?,
                    next_poll_at: r.get(8)?,
                }))
            })
            .optional()?;
        let view = match view {
            Some(v) => Some(v),
            None => bulk
                .query_row([job], |r| {
                    let counters = Counters {
                        status: r.get(1)?,
                        channel: None,
                        sent_count: count(r, 2)?,
                        delivered_count: count(r, 3)?,
                        failed_count: count(r, 4)?,
                        sms_fallback_delivered_count: count(r, 5)?,
                    };
                    let id: String = r.get(0)?;
                    Ok(super::view::campaign(
                        &id,
                        &counters,
                        r.get(6)?,
                        r.get::<_, Option<i64>>(7)?.is_none(),
                    ))
                })
                .optional()?,
        };
        if let Some(v) = view {
            out.insert(job.clone(), v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_kept_sanitized_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        for (i, at) in [(0u32, 1_000i64), (1, 2_000), (2, 3_000)] {
            j.send(Op::Event(Event {
                request_id: "r1".into(),
                owner: "o".into(),
                at,
                kind: Some(Kind::Send),
                attempt: Some(i),
                body: Some((r#"{"phoneNumber":"38970123456"}"#.into(), None)),
                ..Event::default()
            }));
        }
        j.flush().await;
        let rows = j.read(|c| events(c, "r1", Some("o"))).await.unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0].body.as_deref(),
            Some(r#"{"phoneNumber":"********456"}"#)
        );
        assert!(j
            .read(|c| events(c, "r1", Some("other")))
            .await
            .unwrap()
            .is_empty());
        let (tx, rx) = oneshot::channel();
        j.send(Op::Purge {
            before: 1_500,
            max_events: 1,
            reply: tx,
        });
        assert_eq!(rx.await.unwrap(), Ok(2));
        let left = j.read(|c| events(c, "r1", None)).await.unwrap();
        assert_eq!(left.iter().map(|r| r.at).collect::<Vec<_>>(), [3_000]);
        // A second reader, as `sluice support` opens it, while the writer is open.
        let other = open_reader_in(dir.path()).unwrap();
        assert_eq!(events(&other, "r1", None).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_message_becomes_final_once() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.send(Op::Expect {
            job_id: "j".into(),
            expect: Expect::Message {
                lookup: "/m".into(),
            },
            channel: Some("Viber".into()),
            at: 5,
        });
        j.send(Op::Accepted(Accepted {
            job_id: "j".into(),
            owner: "o".into(),
            request_id: None,
            api_key: Some(b"k".to_vec()),
            message_id: Some("m".into()),
            at: 10,
            next_poll_at: 20,
        }));
        j.flush().await;
        assert_eq!(j.read(|c| due_messages(c, 19, 10)).await.unwrap().len(), 0);
        let due = j.read(|c| due_messages(c, 20, 10)).await.unwrap();
        assert_eq!(due[0].api_key.as_deref(), Some(&b"k"[..]));
        let failed = Observed {
            status: "Failed".into(),
            code: Some(9),
            error: Some("NOT_VIBER_USER".into()),
            via_fallback: Some(false),
            channel: Some("Viber".into()),
            message_id: Some("m".into()),
        };
        for expect in [true, false] {
            let (tx, rx) = oneshot::channel();
            j.send(Op::Seen {
                job_id: "j".into(),
                seen: Some(failed.clone()),
                at: 30,
                next_poll_at: None,
                reply: Some(tx),
            });
            assert_eq!(rx.await.unwrap(), expect);
        }
        let views = j
            .read(|c| views(c, &["j".to_string(), "x".to_string()]))
            .await
            .unwrap();
        assert_eq!(views.len(), 1);
        assert_eq!(views["j"]["status"], "Failed");
        assert_eq!(views["j"]["code"], 9);
        assert_eq!(j.read(next_due).await.unwrap(), None);
    }
}
