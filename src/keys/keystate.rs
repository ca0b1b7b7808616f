//! What sluice knows about each API key, shared by the pass-through proxy and the queue.
//!
//! One 429 pauses the whole key, whichever path saw it: both paths gate their attempts
//! on the same [`Cooldowns`], remember the same last 429 (replayed to clients whose
//! deadline passes), the same `maxAllowed` (the queue cuts parts to it) and the same
//! *room*: the `availableCapacity` a 429 reported, which sends may use at once, during the
//! cooldown, up to that many recipients.
//!
//! What is learned survives a restart: every 429 names its key on a channel that the queue
//! drains into its store ([`KeyState::saved`]), and the queue loads it back at start
//! ([`KeyState::restore`]), so a restarted sluice does not send into a key it knows is full.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderMap, StatusCode};

use crate::keys::apikey::KeyId;
use crate::keys::capacity::{self, Capacity};
use crate::metrics::Metrics;
use crate::retry::{self, Cooldowns, RetryPolicy, Wait};

/// Per-key cooldowns and capacity, shared behind an `Arc`.
pub struct KeyState {
    pub cooldowns: Cooldowns<KeyId>,
    last_429: DashMap<KeyId, Stored>,
    max_allowed: DashMap<KeyId, u64>,
    /// The room the key's last 429 reported, usable until its cooldown ends.
    room: DashMap<KeyId, Room>,
    policy: RetryPolicy,
    metrics: Arc<Metrics>,
    /// Where keys whose state changed are announced, to be saved.
    changed: OnceLock<mpsc::UnboundedSender<KeyId>>,
}

/// A buffered upstream answer (a 429 kept for replay).
#[derive(Debug, Clone)]
pub struct Stored {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What is known of one key, to keep across a restart (times are unix ms).
#[derive(Debug, Clone)]
pub struct Learned {
    pub cooling_until: Option<i64>,
    pub max_allowed: Option<u64>,
    /// The room the last 429 reported, while it may still be used.
    pub available: Option<u64>,
    pub last_429: Option<Stored>,
}

/// Recipients the API said it had room for, and until when that may be used.
#[derive(Debug, Clone, Copy)]
struct Room {
    recipients: u64,
    until: Instant,
}

// === impl KeyState ===

impl KeyState {
    pub fn new(policy: RetryPolicy, metrics: Arc<Metrics>) -> Self {
        Self {
            cooldowns: Cooldowns::new(),
            last_429: DashMap::new(),
            max_allowed: DashMap::new(),
            room: DashMap::new(),
            policy,
            metrics,
            changed: OnceLock::new(),
        }
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Records a 429 seen on `route`: counts it, reads its hint and capacity, remembers
    /// them for the key, and returns how long to wait (the caller records the wait in
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
            let room = Room {
                recipients: cap.available_capacity.unwrap_or(0),
                until: Instant::now() + wait.duration,
            };
            self.room.insert(id, room);
            self.last_429.insert(id, stored.clone());
            if let Some(tx) = self.changed.get() {
                // The saver ends only with the queue; a key lost then is relearned.
                let _ = tx.send(id);
            }
        }
        (wait, cap)
    }

    /// Takes room for `n` recipients from what the key's last 429 reported, if the key is
    /// cooling down and that much is left: such a send may go at once, the API said it
    /// would take it. False otherwise (the send waits for the cooldown as usual).
    pub fn take_room(&self, key: &KeyId, n: u64) -> bool {
        if self.cooldowns.remaining(key).is_none() {
            return false;
        }
        let Some(mut room) = self.room.get_mut(key) else {
            return false;
        };
        if room.until <= Instant::now() || room.recipients < n {
            return false;
        }
        room.recipients -= n;
        true
    }

    /// Whether the key's last 429 reported room that may still be used.
    pub fn has_room(&self, key: &KeyId) -> bool {
        self.room
            .get(key)
            .is_some_and(|r| r.recipients > 0 && r.until > Instant::now())
    }

    /// The key's last 429, if any.
    pub fn last_429(&self, key: &KeyId) -> Option<Stored> {
        self.last_429.get(key).map(|s| s.clone())
    }

    /// The `maxAllowed` the API last reported for the key.
    pub fn max_allowed(&self, key: &KeyId) -> Option<u64> {
        self.max_allowed.get(key).map(|m| *m)
    }

    /// Keys whose learned state changed are sent on the returned channel from now on (one
    /// receiver: the queue, which saves them).
    pub fn saved(&self) -> Option<mpsc::UnboundedReceiver<KeyId>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.changed.set(tx).ok().map(|()| rx)
    }

    /// What is known of `key`, to be saved; `now_ms` is the wall clock (unix ms).
    pub fn record(&self, key: &KeyId, now_ms: i64) -> Learned {
        Learned {
            cooling_until: self
                .cooldowns
                .remaining(key)
                .map(|left| now_ms.saturating_add(left.as_millis() as i64)),
            max_allowed: self.max_allowed(key),
            available: self
                .room
                .get(key)
                .filter(|r| r.until > Instant::now())
                .map(|r| r.recipients),
            last_429: self.last_429(key),
        }
    }

    /// Brings back what a previous run learned about `key`: its cooldown (what is left of
    /// it by `now_ms`), its `maxAllowed` and its last 429.
    pub fn restore(&self, id: KeyId, learned: Learned, now_ms: i64) {
        if let Some(max) = learned.max_allowed.filter(|&m| m > 0) {
            self.max_allowed.insert(id, max);
        }
        if let Some(stored) = learned.last_429 {
            self.last_429.insert(id, stored);
        }
        if let Some(until) = learned.cooling_until.filter(|&u| u > now_ms) {
            let left = Duration::from_millis((until - now_ms) as u64);
            if let Some(recipients) = learned.available {
                let until = Instant::now() + left;
                self.room.insert(id, Room { recipients, until });
            }
            self.cooldowns.on_rate_limited(&id, left);
            tracing::info!(key = %id, wait_ms = left.as_millis() as u64, "key cooling down (learned before a restart, or by another instance)");
        }
    }

    /// Drops what is known of keys idle for `idle` (their cooldown long over, no request
    /// waiting) and their metric series; `maxAllowed` stays (one number per real key, and
    /// saved in the store anyway). Returns how many keys were dropped.
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let gone = self.cooldowns.evict_idle(idle);
        let now = Instant::now();
        self.room.retain(|_, r| r.until > now);
        for id in &gone {
            self.last_429.remove(id);
            let label = id.to_string();
            let m = &self.metrics;
            let _ = m.cooldowns_started.remove_label_values(&[&label]);
            for field in ["current_pending", "max_allowed", "available_capacity"] {
                let _ = m.capacity.remove_label_values(&[&label, field]);
            }
        }
        gone.len()
    }

    /// Keys with per-key state in memory (a cooldown gate), for the state gauge.
    pub fn tracked(&self) -> usize {
        self.cooldowns.len()
    }

    /// Refreshes the cooldown gauge (called at scrape time).
    /// Every key that met a 429 (and is not yet forgotten) has a series: its time left, 0
    /// once its cooldown is over.
    pub fn export_cooldowns(&self) {
        let gauge = &self.metrics.cooldown_remaining;
        gauge.reset();
        for key in self.cooldowns.keys() {
            let left = self.cooldowns.remaining(&key).unwrap_or_default();
            gauge
                .with_label_values(&[&key.to_string()])
                .set(left.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> KeyState {
        KeyState::new(RetryPolicy::default(), Arc::new(Metrics::new()))
    }

    fn a_429(available: u64, retry_after: u64) -> Stored {
        let body = format!(
            r#"{{"error":"Rate limit exceeded","message":"m","currentPending":49000,"requestedCount":5000,"maxAllowed":50000,"availableCapacity":{available},"retryAfterSeconds":{retry_after}}}"#
        );
        Stored {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers: HeaderMap::new(),
            body: Bytes::from(body),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn room_from_a_429_is_shared_out_until_the_cooldown_ends() {
        let keys = state();
        let id = KeyId::of(b"k");
        assert!(!keys.take_room(&id, 1), "no 429, no room");
        let (wait, _) = keys.observe_429(Some(id), "single", &a_429(3, 2));
        keys.cooldowns.on_rate_limited(&id, wait.duration);
        assert!(keys.take_room(&id, 2));
        assert!(!keys.take_room(&id, 2), "only 1 left");
        assert!(keys.take_room(&id, 1));
        assert!(!keys.take_room(&id, 1));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!keys.take_room(&id, 1), "the cooldown is over");
    }

    #[tokio::test(start_paused = true)]
    async fn what_was_learned_survives_a_record_and_restore() {
        let keys = state();
        let mut changed = keys.saved().expect("the first receiver");
        assert!(keys.saved().is_none(), "only one");
        let id = KeyId::of(b"k");
        let (wait, _) = keys.observe_429(Some(id), "bulk", &a_429(0, 30));
        keys.cooldowns.on_rate_limited(&id, wait.duration);
        assert_eq!(changed.try_recv().ok(), Some(id));
        let now = 1_000_000;
        let record = keys.record(&id, now);
        assert_eq!(record.max_allowed, Some(50_000));
        let until = record.cooling_until.expect("cooling");
        assert!(until >= now + 30_000, "{until}");

        // A new process, 10 s later by the wall clock.
        let fresh = state();
        fresh.restore(id, record.clone(), now + 10_000);
        assert_eq!(fresh.max_allowed(&id), Some(50_000));
        assert_eq!(
            fresh.last_429(&id).map(|s| s.status),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
        let left = fresh.cooldowns.remaining(&id).expect("still cooling");
        assert!(
            left >= Duration::from_secs(20) && left <= Duration::from_secs(21),
            "{left:?}"
        );
        // A cooldown already over by then is not brought back.
        let late = state();
        late.restore(id, record, until + 1);
        assert!(late.cooldowns.remaining(&id).is_none());
    }
}
