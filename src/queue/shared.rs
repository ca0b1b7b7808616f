//! The dispatcher's shared state: what every step of sending a part reads (the store,
//! the upstream client, what is known of each key, the settings) and the small helpers
//! they share. The steps live apart: `scheduler` (when a part may go), `dispatch` (one
//! part's turn and its send), `settle` (what each answer leads to), `reconcile` (lost
//! answers); [`super::dispatcher`] is the handle the rest of sluice holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::DefaultKeyedRateLimiter;
use http::HeaderValue;
use tokio::sync::{mpsc, Notify, Semaphore};

use super::store::{Dispatchable, Store};
use crate::edge::health::Health;
use crate::keys::apikey::{ApiKey, KeyId};
use crate::keys::keystate::KeyState;
use crate::metrics::Metrics;
use crate::routes::{Route, RouteKind};
use crate::upstream::Upstream;

/// News for the scheduler.
pub(super) enum Wake {
    /// The owner (a `KeyId::full`) has parts due at `at` (unix ms; 0 for now).
    Due { owner: String, at: i64 },
}

/// Settings of the dispatcher.
pub struct DispatchSettings {
    pub routes: Vec<Route>,
    pub own_key: Option<ApiKey>,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub max_age: Duration,
    pub requests_per_sec: u32,
    pub recipients_per_sec: u32,
    /// How long after a lost answer the send is looked up.
    pub reconcile_delay: Duration,
    /// How far the API's clock may run behind sluice's (for lookups).
    pub clock_skew: Duration,
    /// Told whether each attempt reached the API (for `/readyz`).
    pub health: Arc<Health>,
    /// With a shared store: how long a lease (and a cluster probe) lasts.
    pub lease: Duration,
    /// Told of every attempt, wait and end (the support journal) and of every accepted
    /// part (delivery tracking).
    pub delivery: crate::delivery::Delivery,
}

/// Recipients and bytes accepted and not yet final: the back-pressure figures.
#[derive(Debug, Default)]
pub struct Backlog {
    pub recipients: AtomicU64,
    pub bytes: AtomicU64,
}

pub(super) struct Core {
    pub(super) store: Arc<Store>,
    pub(super) upstream: Upstream,
    pub(super) keys: Arc<KeyState>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) settings: DispatchSettings,
    pub(super) routes: HashMap<String, Route>,
    pub(super) slots: Semaphore,
    pub(super) wakes: mpsc::UnboundedSender<Wake>,
    pub(super) waiters: DashMap<String, Arc<Notify>>,
    /// Parts the scheduler holds in memory (for the state gauge).
    pub(super) in_memory: std::sync::atomic::AtomicUsize,
    pub(super) backlog: Backlog,
    pub(super) requests: Option<DefaultKeyedRateLimiter<KeyId>>,
    pub(super) recipients: Option<(DefaultKeyedRateLimiter<KeyId>, u32)>,
    /// Keys whose cooldown is over but whose cluster probe another instance sends: their
    /// gate opens when its result is heard (see `cluster`).
    pub(super) deferred: DashMap<KeyId, ()>,
    /// Woken by every piece of news of new work (a bulk turn ended on another instance).
    pub(super) turns: Notify,
}

// === impl Core ===

impl Core {
    /// Tells the scheduler that `owner` has parts due at `at` (unix ms; 0 for now). The
    /// receiver lives as long as the scheduler; after shutdown the parts stay queued on
    /// disk and are taken at the next start.
    pub(super) fn wake(&self, owner: &str, at: i64) {
        let _ = self.wakes.send(Wake::Due {
            owner: owner.to_string(),
            at,
        });
    }

    /// Sets the back-pressure figures (to the cluster's, read from the shared store).
    pub(super) fn set_backlog(&self, recipients: u64, bytes: u64) {
        self.backlog.recipients.store(recipients, Ordering::Relaxed);
        self.backlog.bytes.store(bytes, Ordering::Relaxed);
    }

    pub(super) fn remove_backlog(&self, recipients: u64, bytes: u64) {
        let b = &self.backlog;
        let sub = |a: &AtomicU64, n: u64| {
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&b.recipients, recipients);
        sub(&b.bytes, bytes);
    }

    /// Drops per-key state that nothing uses: the rate limiters' cells of keys not seen
    /// lately.
    pub(super) fn evict_idle(&self) {
        if let Some(limiter) = &self.requests {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some((limiter, _)) = &self.recipients {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    pub(super) fn notify(&self, job: &str) {
        if let Some(n) = self.waiters.get(job) {
            n.notify_waiters();
        }
    }

    /// The route a part was accepted under (or a plain single route, when the
    /// configuration no longer has it: the part is then sent whole).
    pub(super) fn route(&self, name: &str) -> Route {
        self.routes.get(name).cloned().unwrap_or_else(|| Route {
            name: name.to_string(),
            method: "POST".into(),
            path: String::new(),
            kind: RouteKind::Single,
            recipients_pointer: String::new(),
            max_recipients_per_request: u64::MAX,
            validation: crate::validate::Mode::Off,
            invalid_recipients: crate::validate::InvalidRecipients::Reject,
            lookup: Some(String::new()),
        })
    }

    /// The key to send with: the one stored with the job, else the proxy's own.
    pub(super) fn key_for(&self, part: &Dispatchable) -> Option<(HeaderValue, KeyId)> {
        match &part.api_key {
            Some(bytes) => {
                let mut value = HeaderValue::from_bytes(bytes).ok()?;
                value.set_sensitive(true);
                Some((value, KeyId::of(bytes)))
            }
            None => self
                .settings
                .own_key
                .as_ref()
                .map(|k| (k.header_value(), k.id())),
        }
    }
}
