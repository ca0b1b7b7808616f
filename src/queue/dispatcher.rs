//! The handle the rest of sluice holds on the dispatcher: it starts the scheduler, is told
//! of new work ([`Dispatcher::wake`]), keeps the back-pressure figures (with atomic
//! reservations), and lets a waiting client watch its job.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::{Quota, RateLimiter};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::scheduler::{schedule, Allowance};
use super::shared::{Backlog, Core, DispatchSettings};
use super::store::Store;
use crate::keys::keystate::KeyState;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// Handle to the dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Core>,
}

/// Back-pressure room taken for a send (see [`Dispatcher::reserve`]).
pub struct Reservation<'a> {
    dispatcher: &'a Dispatcher,
    recipients: u64,
    bytes: u64,
    kept: bool,
}

/// One watcher of a job's progress (see [`Dispatcher::watch`]); the last one dropped
/// stops the dispatcher keeping a notifier for the job.
pub struct Watch {
    inner: Arc<Core>,
    job: String,
    notify: Option<Arc<Notify>>,
}

// === impl Dispatcher ===

impl Dispatcher {
    /// Starts the scheduler, which takes parts from the store as they are due; new ones
    /// are announced with [`Dispatcher::wake`].
    pub fn start(
        store: Arc<Store>,
        upstream: Upstream,
        keys: Arc<KeyState>,
        metrics: Arc<Metrics>,
        settings: DispatchSettings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let (wakes, rx) = mpsc::unbounded_channel();
        let limiter = |per_sec: u32| {
            NonZeroU32::new(per_sec).map(|n| RateLimiter::keyed(Quota::per_second(n)))
        };
        let inner = Arc::new(Core {
            routes: settings
                .routes
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
            slots: Semaphore::new(settings.concurrency),
            requests: limiter(settings.requests_per_sec),
            recipients: limiter(settings.recipients_per_sec)
                .map(|l| (l, settings.recipients_per_sec)),
            store,
            upstream,
            keys,
            metrics,
            settings,
            wakes,
            waiters: DashMap::new(),
            in_memory: std::sync::atomic::AtomicUsize::new(0),
            backlog: Backlog::default(),
            deferred: DashMap::new(),
            turns: Notify::new(),
        });
        let allowance = Allowance {
            per_key: inner.settings.concurrency,
            hold: inner.settings.concurrency * 2,
        };
        tasks.spawn(super::cluster::run(inner.clone(), shutdown.clone()));
        tasks.spawn(schedule(
            inner.clone(),
            rx,
            allowance,
            shutdown,
            tasks.clone(),
        ));
        Self { inner }
    }

    /// Tells the scheduler that `owner` (a [`KeyId::full`]) has parts due now.
    pub fn wake(&self, owner: &str) {
        self.inner.wake(owner, 0);
    }

    /// Takes recipients and bytes that will not be sent (cancelled) out of the backlog.
    pub fn release_backlog(&self, recipients: u64, bytes: u64) {
        self.inner.remove_backlog(recipients, bytes);
    }

    /// Adds newly accepted work to the back-pressure figures.
    pub fn add_backlog(&self, recipients: u64, bytes: u64) {
        self.inner
            .backlog
            .recipients
            .fetch_add(recipients, Ordering::Relaxed);
        self.inner.backlog.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Takes back-pressure room for a send of `recipients` and `bytes`, if the backlog stays
    /// within the limits with it; in one atomic step per figure, so concurrent sends cannot
    /// all pass the same check. `Err` with the backlog as it is when there is no room. The
    /// room is given back unless [`Reservation::keep`] is called (the send was stored).
    pub fn reserve(
        &self,
        recipients: u64,
        bytes: u64,
        max_recipients: u64,
        max_bytes: u64,
    ) -> Result<Reservation<'_>, (u64, u64)> {
        let b = &self.inner.backlog;
        let take = |a: &AtomicU64, n: u64, max: u64| {
            a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                v.checked_add(n).filter(|&total| total <= max)
            })
        };
        if take(&b.recipients, recipients, max_recipients).is_err() {
            return Err(self.backlog());
        }
        if take(&b.bytes, bytes, max_bytes).is_err() {
            self.inner.remove_backlog(recipients, 0);
            return Err(self.backlog());
        }
        Ok(Reservation {
            dispatcher: self,
            recipients,
            bytes,
            kept: false,
        })
    }

    pub fn backlog(&self) -> (u64, u64) {
        let b = &self.inner.backlog;
        (
            b.recipients.load(Ordering::Relaxed),
            b.bytes.load(Ordering::Relaxed),
        )
    }

    /// Drops per-key state idle for `idle` (see [`KeyState::evict_idle`]).
    pub fn evict_idle(&self, idle: Duration) -> usize {
        self.inner.evict_idle();
        self.inner.keys.evict_idle(idle)
    }

    /// Entries of per-request and per-key state held in memory, by kind, for the state
    /// gauge: jobs with a client waiting, keys with a cooldown gate, parts taken from the
    /// store into memory, keys in the rate limiters.
    pub fn state_sizes(&self) -> [(&'static str, usize); 4] {
        let i = &self.inner;
        [
            ("waiters", i.waiters.len()),
            ("cooldown_gates", i.keys.tracked()),
            ("parts_in_memory", i.in_memory.load(Ordering::Relaxed)),
            (
                "rate_limiter_keys",
                i.requests.as_ref().map_or(0, |l| l.len())
                    + i.recipients.as_ref().map_or(0, |(l, _)| l.len()),
            ),
        ]
    }

    /// Whether the API is unreachable (an outage: the upstream breaker is open).
    pub fn upstream_down(&self) -> bool {
        self.inner.upstream.breaker().is_open()
    }

    /// A notifier that fires whenever a part of `job` reaches a final state, for as long
    /// as the returned [`Watch`] lives. Several may watch one job (a send and its
    /// idempotent repeats): each is woken.
    pub fn watch(&self, job: &str) -> Watch {
        let notify = self
            .inner
            .waiters
            .entry(job.to_string())
            .or_default()
            .clone();
        Watch {
            inner: self.inner.clone(),
            job: job.to_string(),
            notify: Some(notify),
        }
    }
}

// === impl Reservation ===

impl Reservation<'_> {
    /// The send was stored: its room stays taken until its parts are final.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.dispatcher
                .inner
                .remove_backlog(self.recipients, self.bytes);
        }
    }
}

// === impl Watch ===

impl Watch {
    pub fn notify(&self) -> &Notify {
        // Only `drop` takes it.
        self.notify
            .as_deref()
            .expect("a live watch has its notifier")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        drop(self.notify.take());
        // The map's clone is the last one: no one else watches. (A watcher arriving now
        // either made its clone first, or finds the entry gone and makes a new one.)
        self.inner
            .waiters
            .remove_if(&self.job, |_, n| Arc::strong_count(n) == 1);
    }
}
