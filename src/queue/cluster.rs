//! The queue's side of a cluster: several instances sharing one PostgreSQL store.
//!
//! The store does the sharing (leases, the cluster probe, the room a 429 reported, news
//! by `NOTIFY`); this module makes the dispatcher act on it:
//! - **one cooldown per key**: a 429 seen by any instance is saved and announced; every
//!   instance reads the key again and cools down with it ([`apply`]). When the cooldown
//!   ends, each instance's first waiting part would be its probe: only the one whose
//!   [`Core::cluster_probe`] wins the store's probe goes; the others wait for its result
//!   (announced when it is not refused, [`Core::permit_succeeded`]);
//! - **room split, not multiplied**: a send that fits in the room a 429 reported also
//!   takes it from the store ([`Core::take_room`]), so N instances share it; and an
//!   owner's bulk parts go one at a time across the cluster ([`Core::bulk_turn`]), each
//!   learning from the answer to the one before, as they do in one instance;
//! - **news**: new work wakes the scheduler for its owner, a finished part wakes the
//!   clients waiting for its job on this instance;
//! - **leases**: renewed every third of their length while the instance lives (with the
//!   list of owners with work, so parts left by a killed instance are found), released
//!   at shutdown; the back-pressure figures are the cluster's, read on the same tick.
//!
//! With the SQLite store none of this runs and the methods below are the local ones.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::shared::Core;
use super::store::pg::{BulkTurn, Heard, Notice, Postgres};
use crate::clock::now_ms;
use crate::keys::apikey::KeyId;
use crate::retry::Permit;

// === impl Core ===

impl Core {
    /// During a cooldown: whether `n` recipients may go at once on the room the key's last
    /// 429 reported (taken here, and from the cluster's share when there is one).
    pub(super) async fn take_room(&self, key: &KeyId, n: u64) -> bool {
        if !self.keys.take_room(key, n) {
            return false;
        }
        match self.store.cluster() {
            None => true,
            Some(c) => c.take_room(&key.full(), n, now_ms()).await.unwrap_or(false),
        }
    }

    /// A permit from the key's cooldown. A probe permit, in a cluster, must also win the
    /// cluster's probe of the key: if another instance is probing, this one waits (its
    /// gate cools for a lease period, or until that probe's result is heard) and `None`
    /// is returned: acquire again. A database error lets the probe go: the store's next
    /// step will fail and be tried again anyway.
    pub(super) async fn cluster_probe(&self, permit: Permit, key: &KeyId) -> Option<Permit> {
        let Some(c) = self.store.cluster().filter(|_| permit.is_probe()) else {
            return Some(permit);
        };
        let now = now_ms();
        let lease = millis(self.settings.lease);
        match c.take_probe(&key.full(), now, now + lease).await {
            Ok(Some(until)) => {
                // Heard of sooner if that probe is not refused (see `apply`).
                self.deferred.insert(*key, ());
                let wait = Duration::from_millis((until - now).clamp(1, lease) as u64);
                self.keys.cooldowns.reset(key, Some(wait));
                drop(permit);
                None
            }
            Ok(None) | Err(_) => {
                self.deferred.remove(key);
                Some(permit)
            }
        }
    }

    /// Waits for the owner's bulk turn (in a cluster; at once otherwise): true when it is
    /// this instance's, false when the key cooled down again meanwhile (the caller waits
    /// for that, then asks again). A database error lets the part go: the store's next
    /// step fails and is tried again anyway.
    pub(super) async fn bulk_turn(&self, owner_no: i64, key: &KeyId) -> bool {
        let Some(c) = self.store.cluster() else {
            return true;
        };
        let lease = millis(self.settings.lease);
        loop {
            let ended = self.turns.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let now = now_ms();
            match c.take_bulk_turn(owner_no, now, now + lease).await {
                Ok(BulkTurn::Mine) | Err(_) => return true,
                Ok(BulkTurn::Held(until)) => {
                    let wait = Duration::from_millis((until - now).clamp(1, lease) as u64);
                    tokio::select! {
                        () = &mut ended => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                Ok(BulkTurn::Cooling(until)) => {
                    let wait = Duration::from_millis((until - now).max(1) as u64);
                    self.keys.cooldowns.on_rate_limited(key, wait);
                    return false;
                }
            }
        }
    }

    /// Ends this instance's bulk turn of the owner, if it held it.
    pub(super) async fn end_bulk_turn(&self, owner_no: i64) {
        if let Some(c) = self.store.cluster() {
            if let Err(e) = c.end_bulk_turn(owner_no).await {
                tracing::warn!(error = %e, "cannot end the bulk turn; it expires with the lease");
            }
        }
    }

    /// Reports an answer other than a 429 to the cooldown permit a send held: a probe's
    /// success opens the key here, and in a cluster for every instance.
    pub(super) async fn permit_succeeded(&self, permit: Option<Permit>, key: &KeyId) {
        let Some(p) = permit else { return };
        let probe = p.is_probe();
        p.succeeded();
        if let Some(c) = self.store.cluster().filter(|_| probe) {
            if let Err(e) = c.probe_done(&key.full()).await {
                tracing::warn!(key = %key, error = %e, "cannot tell the cluster that the key's cooldown is over");
            }
        }
    }
}

/// Runs while the queue does, with a PostgreSQL store: acts on the other instances' news,
/// renews this instance's leases and finds work left by others; at shutdown gives the
/// leases up.
pub(super) async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    let Some(c) = core.store.cluster() else {
        return;
    };
    let mut news = c.listen();
    let mut tick = tokio::time::interval((core.settings.lease / 3).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            heard = news.recv() => match heard {
                Some(heard) => apply(&core, c, heard).await,
                None => return,
            },
            _ = tick.tick() => renew(&core, c).await,
            () = shutdown.cancelled() => break,
        }
    }
    match c.release_leases().await {
        Ok(n) => tracing::info!(parts = n, "leases given up for the other instances"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot give the leases up; the other instances take the parts when they expire")
        }
    }
}

/// Acts on one piece of news.
async fn apply(core: &Core, c: &Postgres, heard: Heard) {
    if heard.sent_at > 0 {
        let lag = (now_ms() - heard.sent_at).max(0);
        core.metrics.store.notify_lag.observe(lag as f64 / 1000.0);
    }
    match heard.notice {
        Notice::Work(owner) => {
            core.turns.notify_waiters();
            core.wake(&owner, 0);
        }
        Notice::Job(job) => core.notify(&job),
        Notice::Key(full) => {
            let Some(id) = KeyId::from_full(&full) else {
                return;
            };
            let record = match c.key(&full).await {
                Ok(Some(record)) => record,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(key = %id, error = %e, "cannot read what another instance learned about a key");
                    return;
                }
            };
            // Waiting for another instance's probe: its result replaces that wait (the
            // key opens, or cools down for as long as its 429 said), in one step.
            let now = now_ms();
            if core.deferred.remove(&id).is_some() {
                let left = record
                    .cooling_until
                    .filter(|&u| u > now)
                    .map(|u| Duration::from_millis((u - now) as u64));
                core.keys.cooldowns.reset(&id, left);
            }
            core.keys.restore(id, super::learned(record), now);
            core.wake(&full, 0);
        }
    }
}

/// One tick: leases renewed, owners with work (left by any instance) woken, the
/// cluster's back-pressure figures read.
async fn renew(core: &Core, c: &Postgres) {
    let now = now_ms();
    if let Err(e) = c.renew_leases(now).await {
        tracing::warn!(error = %e, "cannot renew the leases; other instances may take these parts over");
        return;
    }
    match c.open_owners().await {
        Ok(owners) => {
            for (_, owner) in owners {
                core.wake(&owner, 0);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list the owners with work"),
    }
    if let Ok((recipients, bytes)) = c.backlog().await {
        core.set_backlog(recipients, bytes);
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
