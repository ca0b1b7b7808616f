//! The scheduler: takes due parts from the store into memory, a bounded number per owner
//! (API key) at a time, and lets at most `per_key` of an owner's parts be worked on at once.
//!
//! The store is the queue. Memory holds, per owner, at most `hold` parts (`Store::claim`
//! marks them taken by this run), so a backlog of millions of parts costs what `hold`
//! parts cost, and a restart reads nothing but the list of owners with work. A part leaves
//! memory when its turn ends: final, or put back in the store with the time it is due
//! again (`settle`), after which the scheduler is woken ([`Wake`]) and takes it in again
//! when that time comes. An owner whose key is cooling down after a 429 is not taken from
//! (unless the API reported room), so its backlog waits on disk, not in memory, and never
//! crowds other owners out: each owner has its own allowance. An owner's bulk parts go one
//! at a time and in order (each learns from the answer to the one before), its single
//! sends up to `per_key` at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::shared::{Core, Wake};
use super::store::Dispatchable;
use crate::clock::now_ms;
use crate::keys::apikey::KeyId;
use crate::routes::RouteKind;

/// Parts taken from the store per claim at most.
const BATCH: usize = 256;

/// How much of an owner the scheduler keeps in memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Allowance {
    /// Parts of one owner worked on at once.
    pub per_key: usize,
    /// Parts of one owner in memory at once (worked on, or waiting for their turn).
    pub hold: usize,
}

/// One owner's parts in memory.
struct Owner {
    no: i64,
    key: Option<KeyId>,
    /// Parts in memory: active plus parked.
    held: usize,
    active: usize,
    parked: VecDeque<Dispatchable>,
    /// Bulk parts go one at a time, in order (each learns from the answer to the one
    /// before: a 429's room and maxAllowed), so the others wait here.
    bulk_active: bool,
    bulk_parked: VecDeque<Dispatchable>,
    /// When its next part in the store is due (unix ms); `None`: nothing there.
    due: Option<i64>,
}

/// Tells the scheduler that a part's turn ended, however it ended (a panic included).
struct Done {
    owner: i64,
    bulk: bool,
    tx: mpsc::UnboundedSender<(i64, bool)>,
}

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.tx.send((self.owner, self.bulk));
    }
}

/// The scheduler loop; ends when the queue shuts down.
pub(super) async fn schedule(
    inner: Arc<Core>,
    mut wakes: mpsc::UnboundedReceiver<Wake>,
    allowance: Allowance,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(i64, bool)>();
    let mut owners: HashMap<i64, Owner> = HashMap::new();
    let mut numbers: HashMap<String, i64> = HashMap::new();
    match inner.store.open_owners().await {
        Ok(open) => {
            for (no, key) in open {
                owners.insert(no, Owner::new(no, &key, Some(0)));
                numbers.insert(key, no);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot list the owners with work; they are found as they are woken")
        }
    }
    let spawn = |part: Dispatchable, bulk: bool| {
        start(&inner, part, bulk, &done_tx, &tasks, &shutdown);
    };
    loop {
        let now = now_ms();
        let mut next: Option<i64> = None;
        for owner in owners.values_mut() {
            owner.take_in(&inner, now, allowance, &spawn).await;
            if let Some(at) = owner.wake_at(&inner, now, allowance) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        owners.retain(|_, o| o.held > 0 || o.due.is_some());
        let held: usize = owners.values().map(|o| o.held).sum();
        inner
            .in_memory
            .store(held, std::sync::atomic::Ordering::Relaxed);
        numbers.retain(|_, no| owners.contains_key(no));
        let sleep = next.map(|at| Duration::from_millis((at - now_ms()).max(0) as u64));
        tokio::select! {
            wake = wakes.recv() => match wake {
                Some(Wake::Due { owner, at }) => {
                    let no = match numbers.get(&owner) {
                        Some(no) => Some(*no),
                        None => inner.store.owner_no(&owner).await.ok().flatten(),
                    };
                    if let Some(no) = no {
                        numbers.insert(owner.clone(), no);
                        let o = owners.entry(no).or_insert_with(|| Owner::new(no, &owner, None));
                        o.due = Some(o.due.map_or(at, |d| d.min(at)));
                    }
                }
                None => return,
            },
            Some((no, bulk)) = done_rx.recv() => {
                if let Some(owner) = owners.get_mut(&no) {
                    owner.ended(bulk, &spawn);
                }
            }
            () = tokio::time::sleep(sleep.unwrap_or_default()), if sleep.is_some() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Spawns the worker task for `part`; its end is reported on `done`. At shutdown the
/// worker stops wherever it waits: every step it takes is committed before the next, so
/// the part is found where it was at the next start (one in flight is looked up first).
fn start(
    inner: &Arc<Core>,
    part: Dispatchable,
    bulk: bool,
    done: &mpsc::UnboundedSender<(i64, bool)>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let guard = Done {
        owner: part.owner_no,
        bulk,
        tx: done.clone(),
    };
    let inner = inner.clone();
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        let _done = guard;
        tokio::select! {
            () = inner.run(part) => {}
            () = shutdown.cancelled() => {}
        }
    });
}

// === impl Owner ===

impl Owner {
    fn new(no: i64, key: &str, due: Option<i64>) -> Self {
        Self {
            no,
            key: KeyId::from_full(key),
            held: 0,
            active: 0,
            parked: VecDeque::new(),
            bulk_active: false,
            bulk_parked: VecDeque::new(),
            due,
        }
    }

    /// The owner's key is cooling down with no room to use: nothing to take now.
    fn cooling(&self, inner: &Core) -> Option<Duration> {
        let key = self.key.as_ref()?;
        let left = inner.keys.cooldowns.remaining(key)?;
        (!inner.keys.has_room(key)).then_some(left)
    }

    /// Takes in the owner's due parts, up to its allowance, and starts what may start.
    async fn take_in(
        &mut self,
        inner: &Core,
        now: i64,
        allowance: Allowance,
        spawn: &impl Fn(Dispatchable, bool),
    ) {
        // Taken in batches: only once half the allowance is free (or nothing is held).
        while self.due.is_some_and(|d| d <= now)
            && (self.held == 0 || self.held <= allowance.hold / 2)
            && self.cooling(inner).is_none()
        {
            let want = (allowance.hold - self.held).min(BATCH);
            let claiming = tokio::time::Instant::now();
            let claimed = inner.store.claim(self.no, now, want as u32).await;
            inner
                .metrics
                .store
                .claim_duration
                .observe(claiming.elapsed().as_secs_f64());
            let parts = match claimed {
                Ok(parts) => parts,
                Err(e) => {
                    tracing::error!(error = %e, "cannot take parts from the store; trying again in 1 s");
                    self.due = Some(now + 1_000);
                    return;
                }
            };
            let got = parts.len();
            if got == 0 {
                self.due = inner.store.next_due(self.no).await.unwrap_or(None);
                self.due = self
                    .due
                    .filter(|&d| d > now)
                    .or(Some(now + 1_000).filter(|_| self.due.is_some()));
                return;
            }
            self.held += got;
            for part in parts {
                if inner.route(&part.route).kind == RouteKind::Bulk {
                    self.bulk_parked.push_back(part);
                } else if self.active < allowance.per_key {
                    self.active += 1;
                    spawn(part, false);
                } else {
                    self.parked.push_back(part);
                }
            }
            self.next_bulk(spawn);
            if got < want {
                self.due = match inner.store.next_due(self.no).await {
                    Ok(due) => due,
                    Err(_) => Some(now + 1_000),
                };
            }
        }
    }

    /// A part's turn ended: the next waiting one of its kind takes its place.
    fn ended(&mut self, bulk: bool, spawn: &impl Fn(Dispatchable, bool)) {
        self.held = self.held.saturating_sub(1);
        if bulk {
            self.bulk_active = false;
            self.next_bulk(spawn);
        } else {
            self.active = self.active.saturating_sub(1);
            if let Some(part) = self.parked.pop_front() {
                self.active += 1;
                spawn(part, false);
            }
        }
    }

    /// Starts the next bulk part, in order, if none is being worked on.
    fn next_bulk(&mut self, spawn: &impl Fn(Dispatchable, bool)) {
        if !self.bulk_active {
            if let Some(part) = self.bulk_parked.pop_front() {
                self.bulk_active = true;
                spawn(part, true);
            }
        }
    }

    /// When the scheduler should look at this owner again on its own (news wakes it
    /// sooner); `None`: only news will.
    fn wake_at(&self, inner: &Core, now: i64, allowance: Allowance) -> Option<i64> {
        if self.held > 0 && self.held > allowance.hold / 2 {
            return None;
        }
        let due = self.due?;
        match self.cooling(inner) {
            Some(left) => Some(due.max(now + left.as_millis() as i64)),
            None => Some(due),
        }
    }
}
