//! The PostgreSQL schema and its migrations.
//!
//! Migrations are versioned (`sluice_migrations`), run at start in one transaction under an
//! advisory lock (so instances starting together do not race), and idempotent. The tables
//! mirror the SQLite store's, with the additions a cluster needs: `parts.lease_owner` and
//! `lease_until` (an instance holds a part only while it renews its lease; a killed
//! instance's parts are taken by others once the lease expires) and the cluster probe of a
//! key in `key_state` (after a cooldown, one instance of the cluster sends the probe);
//! version 2 adds the bulk turn of an owner (`owners.bulk_owner`, `bulk_until`: one
//! instance at a time sends an owner's bulk parts, each learning from the answer before);
//! version 3 shards the counters (see `writes::bump`).

use tokio_postgres::Client;

use super::pg_error;
use crate::queue::store::StoreError;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 3] = [
    "
CREATE TABLE IF NOT EXISTS jobs (
    no           BIGSERIAL PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    owner        TEXT NOT NULL,
    route        TEXT NOT NULL,
    method       TEXT NOT NULL,
    path         TEXT NOT NULL,
    state        TEXT NOT NULL,
    recipients   BIGINT NOT NULL,
    n_queued     BIGINT NOT NULL,
    n_in_flight  BIGINT NOT NULL,
    n_succeeded  BIGINT NOT NULL,
    n_failed     BIGINT NOT NULL,
    n_cancelled  BIGINT NOT NULL,
    attempts     BIGINT NOT NULL,
    n_uncertain  BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    cancelled_at BIGINT,
    array_start  BIGINT,
    array_end    BIGINT,
    skipped      TEXT,
    headers      BYTEA NOT NULL,
    api_key      BYTEA
);
CREATE INDEX IF NOT EXISTS jobs_owner_created ON jobs (owner, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_owner_state_created ON jobs (owner, state, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_state_updated ON jobs (state, updated_at);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at);
CREATE TABLE IF NOT EXISTS bodies (
    job_no BIGINT PRIMARY KEY,
    body   BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS owners (
    no  BIGSERIAL PRIMARY KEY,
    key TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS parts (
    job_no          BIGINT NOT NULL,
    seq             BIGINT NOT NULL,
    item_start      BIGINT NOT NULL,
    item_end        BIGINT NOT NULL,
    byte_start      BIGINT NOT NULL,
    byte_end        BIGINT NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    last_status     BIGINT,
    last_error      TEXT,
    next_attempt_at BIGINT,
    updated_at      BIGINT NOT NULL,
    resp_status     BIGINT,
    resp_headers    BYTEA,
    resp_body       BYTEA,
    sent_at         BIGINT,
    reconcile_from  BIGINT,
    blind_resends   BIGINT NOT NULL DEFAULT 0,
    owner_no        BIGINT NOT NULL,
    lease_owner     BIGINT,
    lease_until     BIGINT,
    PRIMARY KEY (job_no, seq)
);
CREATE INDEX IF NOT EXISTS parts_state ON parts (state, job_no);
CREATE INDEX IF NOT EXISTS parts_due
    ON parts (owner_no, (COALESCE(next_attempt_at, 0)), job_no, item_start)
    WHERE state IN ('queued', 'in_flight');
CREATE INDEX IF NOT EXISTS parts_lease ON parts (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (
    kind  TEXT NOT NULL,
    state TEXT NOT NULL,
    n     BIGINT NOT NULL,
    PRIMARY KEY (kind, state)
);
CREATE TABLE IF NOT EXISTS key_state (
    key           TEXT PRIMARY KEY,
    cooling_until BIGINT,
    max_allowed   BIGINT,
    available     BIGINT,
    updated_at    BIGINT NOT NULL,
    last_status   BIGINT,
    last_headers  BYTEA,
    last_body     BYTEA,
    probe_owner   BIGINT,
    probe_until   BIGINT
);
CREATE TABLE IF NOT EXISTS idempotency (
    owner      TEXT NOT NULL,
    key        TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    body_hash  BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created_at);
",
    "
-- 2: the bulk turn of an owner: one instance of the cluster sends its bulk parts at a time.
ALTER TABLE owners ADD COLUMN IF NOT EXISTS bulk_owner BIGINT;
ALTER TABLE owners ADD COLUMN IF NOT EXISTS bulk_until BIGINT;
",
    "
-- 3: counters in shards (a job's changes in shard job_no % 16), so that transactions of
-- different jobs do not wait on one row for each other's commit.
ALTER TABLE counters ADD COLUMN IF NOT EXISTS shard SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE counters DROP CONSTRAINT IF EXISTS counters_pkey;
ALTER TABLE counters ADD PRIMARY KEY (kind, state, shard);
",
];

/// Brings the schema up to date (see the module documentation).
pub(super) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('sluice-migrations'))",
        &[],
    )
    .await
    .map_err(pg_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS sluice_migrations (version BIGINT PRIMARY KEY)")
        .await
        .map_err(pg_error)?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM sluice_migrations",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    let known = MIGRATIONS.len() as i64;
    if found > known {
        return Err(StoreError::Invalid(format!(
            "the database has schema version {found}, newer than this sluice knows ({known}); \
             it was written by a newer sluice"
        )));
    }
    for (i, script) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(script).await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO sluice_migrations (version) VALUES ($1)",
            &[&(i as i64 + 1)],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(())
}
