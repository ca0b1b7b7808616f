//! What sluice knows about each API key, shared by the pass-through proxy and the queue.
//!
//! One 429 pauses the whole key, whichever path saw it: both paths gate their attempts
//! on the same [`Cooldowns`], remember the same last 429 (replayed to clients whose
//! deadline passes), and the same `maxAllowed` (the queue cuts parts to it).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderMap, StatusCode};

use crate::apikey::KeyId;
use crate::capacity::{self, Capacity};
use crate::metrics::Metrics;
use crate::retry::{self, Cooldowns, RetryPolicy, Wait};

/// How long after a 429 a key counts as capacity-limited.
pub const LIMITED_WINDOW: Duration = Duration::from_secs(60);

/// Per-key cooldowns and capacity, shared behind an `Arc`.
pub struct KeyState {
    pub cooldowns: Cooldowns<KeyId>,
    last_429: DashMap<KeyId, Stored>,
    /// When each key last saw a 429 (tokio time).
    limited_at: DashMap<KeyId, Instant>,
    max_allowed: DashMap<KeyId, u64>,
    policy: RetryPolicy,
    metrics: Arc<Metrics>,
}

/// A buffered upstream answer (a 429 kept for replay).
#[derive(Debug, Clone)]
pub struct Stored {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

// === impl KeyState ===

impl KeyState {
    pub fn new(policy: RetryPolicy, metrics: Arc<Metrics>) -> Self {
        Self {
            cooldowns: Cooldowns::new(),
            last_429: DashMap::new(),
            limited_at: DashMap::new(),
            max_allowed: DashMap::new(),
            policy,
            metrics,
        }
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Records a 429 seen on `route`: counts it, reads its hint and capacity, remembers
    /// both for the key, and returns how long to wait (the caller records the wait in
    /// `sluice_retry_wait_seconds` when it does retry). The caller reports the wait to its
    /// cooldown permit (or to [`Cooldowns::on_rate_limited`] when it held none).
    pub fn observe_429(
        &self,
        key: Option<KeyId>,
        route: &str,
        stored: &Stored,
    ) -> (Wait, Capacity) {
        let m = &self.metrics;
        m.upstream_rate_limited.with_label_values(&[route]).inc();
        let hint = retry::hint_from(
            &stored.headers,
            &stored.body,
            SystemTime::now(),
            self.policy.max_retry_after,
        );
        if hint.is_some_and(|h| h.capped) {
            m.hints_capped.inc();
        }
        let wait = self.policy.wait(hint, 0, &mut rand::rng());
        let cap = Capacity::parse(&stored.body);
        tracing::info!(
            route,
            status = 429,
            source = wait.source.as_str(),
            wait_ms = wait.duration.as_millis() as u64,
            max_allowed = cap.max_allowed,
            available_capacity = cap.available_capacity,
            "rate limited by the API"
        );
        if let Some(id) = key {
            let label = id.to_string();
            if self.cooldowns.remaining(&id).is_none() {
                m.cooldowns_started.with_label_values(&[&label]).inc();
            }
            capacity::record(m, &label, &stored.body);
            if let Some(max) = cap.max_allowed.filter(|&m| m > 0) {
                self.max_allowed.insert(id, max);
            }
            self.last_429.insert(id, stored.clone());
            self.limited_at.insert(id, Instant::now());
        }
        (wait, cap)
    }

    /// Whether the key met a 429 within the last [`LIMITED_WINDOW`]: its capacity is
    /// tight, so the queue sends its parts one at a time instead of in parallel.
    pub fn recently_limited(&self, key: &KeyId) -> bool {
        self.limited_at
            .get(key)
            .is_some_and(|at| at.elapsed() < LIMITED_WINDOW)
    }

    /// The key's last 429, if any.
    pub fn last_429(&self, key: &KeyId) -> Option<Stored> {
        self.last_429.get(key).map(|s| s.clone())
    }

    /// The `maxAllowed` the API last reported for the key.
    pub fn max_allowed(&self, key: &KeyId) -> Option<u64> {
        self.max_allowed.get(key).map(|m| *m)
    }

    /// Refreshes the cooldown gauge (called at scrape time).
    pub fn export_cooldowns(&self) {
        let gauge = &self.metrics.cooldown_remaining;
        gauge.reset();
        self.cooldowns.for_each_remaining(|key, left| {
            gauge
                .with_label_values(&[&key.to_string()])
                .set(left.as_secs_f64());
        });
    }
}
