//! What only a cluster of instances needs from the PostgreSQL store: leases on parts
//! ([`Postgres::claim`] with `FOR UPDATE SKIP LOCKED`, renewed while the instance lives,
//! released when it stops), one probe of a cooled-down key for the whole cluster, and the
//! room a 429 reported, shared out between instances instead of used by each.

use std::sync::atomic::Ordering;

use super::reads::{dispatchable, key_record, DISPATCH};
use super::writes::{notify, prep};
use super::{pg_error, Postgres};
use crate::queue::store::{Dispatchable, KeyRecord, StoreError};

/// The answer to [`Postgres::take_bulk_turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkTurn {
    /// This instance may send the owner's next bulk part (until the turn is ended).
    Mine,
    /// Another instance is sending one, at the latest until this time (unix ms).
    Held(i64),
    /// The owner's key cools down until this time (a turn's part was refused).
    Cooling(i64),
}

/// Whose turn it is (a bulk turn, or a key's probe): another instance's while it holds it
/// (`owner`, until `held`), nobody's while the key cools down (until `cooling`), else
/// this instance's (`me`). Times are unix ms.
fn turn(
    owner: Option<i64>,
    held: Option<i64>,
    cooling: Option<i64>,
    me: i64,
    now: i64,
) -> BulkTurn {
    if let Some(held) = held.filter(|&h| h > now && owner.is_some_and(|o| o != me)) {
        return BulkTurn::Held(held);
    }
    match cooling.filter(|&c| c > now) {
        Some(cooling) => BulkTurn::Cooling(cooling),
        None => BulkTurn::Mine,
    }
}

// === impl Postgres ===

impl Postgres {
    /// Extends the lease of every part this instance holds.
    pub async fn renew_leases(&self, now_ms: i64) -> Result<u64, StoreError> {
        let (me, until) = (self.instance, now_ms + self.lease_ms);
        let c = self.client().await?;
        let n = async {
            let n = c
                .execute(
                    "UPDATE parts SET lease_until = $2 WHERE lease_owner = $1
                       AND state IN ('queued', 'in_flight')",
                    &[&me, &until],
                )
                .await?;
            c.execute(
                "UPDATE owners SET bulk_until = $2 WHERE bulk_owner = $1",
                &[&me, &until],
            )
            .await?;
            Ok(n)
        }
        .await
        .map_err(pg_error);
        self.note(n)
    }

    /// Takes the owner's bulk turn until `until`, unless another instance holds it or the
    /// owner's key is cooling down for the cluster.
    pub async fn take_bulk_turn(
        &self,
        owner_no: i64,
        now: i64,
        until: i64,
    ) -> Result<BulkTurn, StoreError> {
        let me = self.instance;
        self.write(move |tx| {
            Box::pin(async move {
                let row = tx
                    .query_opt(
                        &prep(
                            tx,
                            "SELECT o.bulk_owner, o.bulk_until, k.cooling_until FROM owners o
                         LEFT JOIN key_state k ON k.key = o.key WHERE o.no = $1 FOR UPDATE OF o",
                        )
                        .await?,
                        &[&owner_no],
                    )
                    .await
                    .map_err(pg_error)?;
                let Some(row) = row else {
                    return Ok(BulkTurn::Mine);
                };
                let turn = turn(row.get(0), row.get(1), row.get(2), me, now);
                if turn != BulkTurn::Mine {
                    return Ok(turn);
                }
                tx.execute(
                    &prep(
                        tx,
                        "UPDATE owners SET bulk_owner = $2, bulk_until = $3 WHERE no = $1",
                    )
                    .await?,
                    &[&owner_no, &me, &until],
                )
                .await
                .map_err(pg_error)?;
                Ok(BulkTurn::Mine)
            })
        })
        .await
    }

    /// Ends this instance's bulk turn of the owner (if it holds it) and tells the others.
    pub async fn end_bulk_turn(&self, owner_no: i64) -> Result<(), StoreError> {
        let me = self.instance;
        self.write(move |tx| {
            Box::pin(async move {
                let row = tx
                    .query_opt(
                        &prep(
                            tx,
                            "UPDATE owners SET bulk_owner = NULL, bulk_until = NULL
                         WHERE no = $1 AND bulk_owner = $2 RETURNING key",
                        )
                        .await?,
                        &[&owner_no, &me],
                    )
                    .await
                    .map_err(pg_error)?;
                match row {
                    Some(row) => notify(tx, "sluice_work", &row.get::<_, String>(0)).await,
                    None => Ok(()),
                }
            })
        })
        .await
    }

    /// Gives up every lease this instance holds (at shutdown), so that the others take its
    /// parts at once instead of after the lease expires.
    pub async fn release_leases(&self) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let n = async {
            let n = c
                .execute(
                    "UPDATE parts SET lease_owner = NULL, lease_until = NULL
                     WHERE lease_owner = $1",
                    &[&self.instance],
                )
                .await?;
            c.execute(
                "UPDATE owners SET bulk_owner = NULL, bulk_until = NULL WHERE bulk_owner = $1",
                &[&self.instance],
            )
            .await?;
            Ok(n)
        }
        .await
        .map_err(pg_error);
        self.note(n)
    }

    /// What the cluster knows of one key (a `KeyId::full`).
    pub async fn key(&self, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        let key = key.to_owned();
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT key, cooling_until, max_allowed, available, updated_at,
                             last_status, last_headers, last_body FROM key_state WHERE key = $1",
                        &[&key],
                    )
                    .await
                    .map_err(pg_error)?;
                row.as_ref().map(key_record).transpose()
            })
        })
        .await
    }

    /// Takes room for `n` recipients from what the key's last 429 reported, for the
    /// whole cluster: true if the cooldown still runs and that much is left (it is then
    /// taken), false otherwise (the send waits for the cooldown's probe).
    pub async fn take_room(&self, key: &str, n: u64, now: i64) -> Result<bool, StoreError> {
        let (key, n) = (key.to_owned(), n as i64);
        self.write(move |tx| {
            Box::pin(async move {
                let taken = tx
                    .execute(
                        &prep(
                            tx,
                            "UPDATE key_state SET available = available - $2
                         WHERE key = $1 AND available >= $2 AND cooling_until > $3",
                        )
                        .await?,
                        &[&key, &n, &now],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(taken > 0)
            })
        })
        .await
    }

    /// Makes this instance the key's probe for the cluster until `until`, if no other
    /// instance is probing it and its cooldown is over for the cluster: `None`. Else
    /// `Some` time (unix ms) to wait until: the end of the other's probe, or of the new
    /// cooldown its refusal started.
    pub async fn take_probe(
        &self,
        key: &str,
        now: i64,
        until: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (key, me) = (key.to_owned(), self.instance);
        self.write(move |tx| {
            Box::pin(async move {
                let row = tx
                    .query_opt(
                        &prep(
                            tx,
                            "SELECT probe_owner, probe_until, cooling_until FROM key_state
                         WHERE key = $1 FOR UPDATE",
                        )
                        .await?,
                        &[&key],
                    )
                    .await
                    .map_err(pg_error)?;
                let Some(row) = row else { return Ok(None) };
                // Another instance's probe is out, or it was refused and a new cooldown
                // runs: wait for that.
                match turn(row.get(0), row.get(1), row.get(2), me, now) {
                    BulkTurn::Mine => {}
                    BulkTurn::Held(until) | BulkTurn::Cooling(until) => return Ok(Some(until)),
                }
                tx.execute(
                    &prep(
                        tx,
                        "UPDATE key_state SET probe_owner = $2, probe_until = $3 WHERE key = $1",
                    )
                    .await?,
                    &[&key, &me, &until],
                )
                .await
                .map_err(pg_error)?;
                Ok(None)
            })
        })
        .await
    }

    /// The key's probe was not refused: its cooldown is over for the whole cluster.
    pub async fn probe_done(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let n = tx
                    .execute(
                        &prep(
                            tx,
                            "UPDATE key_state SET cooling_until = NULL, available = NULL,
                             probe_owner = NULL, probe_until = NULL
                         WHERE key = $1 AND (cooling_until IS NOT NULL OR probe_owner IS NOT NULL)",
                        )
                        .await?,
                        &[&key],
                    )
                    .await
                    .map_err(pg_error)?;
                if n > 0 {
                    notify(tx, "sluice_keys", &key).await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Takes at most `limit` of the owner's due parts that no live instance holds, marks
    /// them leased to this instance, and counts the ones taken over from an expired lease.
    pub async fn claim(
        &self,
        owner_no: i64,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Dispatchable>, StoreError> {
        let (me, until) = (self.instance, now + self.lease_ms);
        let taken = self
            .write(move |tx| {
                Box::pin(async move {
                    let rows = tx
                        .query(
                            &format!(
                                "WITH picked AS (
                                     SELECT p.job_no, p.seq, p.lease_owner AS before FROM parts p
                                     WHERE p.owner_no = $1 AND p.state IN ('queued', 'in_flight')
                                       AND COALESCE(p.next_attempt_at, 0) <= $2
                                       AND (p.lease_until IS NULL OR p.lease_until < $2)
                                     ORDER BY p.owner_no, COALESCE(p.next_attempt_at, 0), p.job_no,
                                         p.item_start
                                     LIMIT $3 FOR UPDATE OF p SKIP LOCKED),
                                 leased AS (
                                     UPDATE parts p SET lease_owner = $4, lease_until = $5
                                     FROM picked WHERE p.job_no = picked.job_no
                                       AND p.seq = picked.seq
                                     RETURNING p.job_no, p.seq, picked.before)
                                 SELECT {DISPATCH}, leased.before
                                 FROM leased JOIN parts p ON p.job_no = leased.job_no
                                     AND p.seq = leased.seq
                                 JOIN jobs j ON j.no = p.job_no
                                 ORDER BY COALESCE(p.next_attempt_at, 0), p.job_no, p.item_start"
                            ),
                            &[&owner_no, &now, &i64::from(limit), &me, &until],
                        )
                        .await
                        .map_err(pg_error)?;
                    let mut parts = Vec::with_capacity(rows.len());
                    let mut takeovers = 0;
                    for row in &rows {
                        let before: Option<i64> = row.get("before");
                        if before.is_some_and(|b| b != me) {
                            takeovers += 1;
                        }
                        parts.push(dispatchable(row)?);
                    }
                    Ok((parts, takeovers))
                })
            })
            .await?;
        let (parts, takeovers) = taken;
        if takeovers > 0 {
            self.takeovers.fetch_add(takeovers, Ordering::Relaxed);
            tracing::warn!(
                parts = takeovers,
                "took over parts whose instance's lease expired"
            );
        }
        Ok(parts)
    }
}
